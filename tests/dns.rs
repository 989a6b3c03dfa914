//! Backends from DNS, against a real authoritative DNS server on a loopback port: a name's records
//! are its pool's members, a record added is a backend that takes traffic only once healthy, a
//! record removed under load drops nothing, and a resolver outage or an empty answer keeps the
//! last good set.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{DnsServer, Mode};
use common::*;
use serde_json::json;

const NAME: &str = "app-green.switchyard.test";

/// Upstreams on 127.0.0.2, .3, ... sharing one port, as a DNS name's instances would.
async fn instances(n: u8) -> (u16, Vec<Upstream>) {
    'again: loop {
        let first = Upstream::start_at("g2", "127.0.0.2:0".parse().unwrap()).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for i in 3..(2 + n) {
            let addr = SocketAddr::from(([127, 0, 0, i], port));
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'again;
            }
            all.push(Upstream::start_at(&format!("g{i}"), addr).await);
        }
        return (port, all);
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    admin(&proxy.socket(), "GET", "/v1/status", None).await.1
}

fn green_backends(st: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = st["pools"]["green"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

async fn wait_members(proxy: &Proxy, want: &[SocketAddr]) -> Instant {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    wait_for("green's members to follow DNS", READY_DEADLINE, || {
        let socket = proxy.socket();
        let want = want.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (green_backends(&st) == want).then(Instant::now)
        }
    })
    .await
}

async fn failures(proxy: &Proxy) -> f64 {
    let s = scrape(proxy).await;
    let name = format!("{NAME}:");
    s.samples
        .iter()
        .filter(|x| x.metric == "switchyard_dns_failures_total")
        .filter(|x| x.labels.get("name").is_some_and(|n| n.starts_with(&name)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_follows_its_dns_name_and_keeps_it_through_an_outage() {
    let dns = DnsServer::start().await;
    let (port, g) = instances(3).await;
    dns.set(NAME, &[ip(2), ip(3)], 30);
    let blue = Upstream::start("blue").await;
    let toml = format!(
        "[dns]\nservers = [\"{}\"]\nrefresh = \"300ms\"\n\n\
         [pools.blue]\nbackends = [\"{}\"]\n\n[pools.green]\nbackends = [\"{NAME}:{port}\"]\n",
        dns.addr, blue.addr
    );
    let proxy = Proxy::start(&toml).await;

    // Two A records: two backends, from the first moment.
    let st = status(&proxy).await;
    assert_eq!(
        green_backends(&st),
        [g[0].addr.to_string(), g[1].addr.to_string()]
    );
    let names = &st["pools"]["green"]["dns"];
    assert_eq!(names[0]["name"], format!("{NAME}:{port}"));
    assert!(names[0]["resolved_at"].is_string(), "{names}");
    proxy.flip("green").await;

    // Steady load on green from here on.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (addr, stop) = (proxy.addr, stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut codes = std::collections::BTreeMap::<u16, usize>::new();
            while !stop.load(Ordering::SeqCst) {
                let code = c.get("/").await.map_or(0, |r| r.status);
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
    }

    // A record added: a third backend, unhealthy until its check passes, traffic only then.
    let added_at = Instant::now();
    dns.set(NAME, &[ip(2), ip(3), ip(4)], 30);
    wait_members(&proxy, &[g[0].addr, g[1].addr, g[2].addr]).await;
    wait_for("the new instance to take traffic", READY_DEADLINE, || {
        let n = g[2].hits();
        async move { (n > 20).then_some(()) }
    })
    .await;
    let first_check = *g[2]
        .checks_passed()
        .iter()
        .find(|t| **t >= added_at)
        .expect("the new instance was checked");
    let first_request = g[2].arrivals()[0];
    assert!(
        first_request > first_check,
        "the new instance served a request before its first health check passed"
    );

    // A record removed under load: it gets no new request once the pool has let it go.
    dns.set(NAME, &[ip(2), ip(4)], 30);
    let removed_at = wait_members(&proxy, &[g[0].addr, g[2].addr]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = g[1].arrivals().iter().filter(|t| **t > removed_at).count();
    assert!(
        late <= 2,
        "{late} requests reached the removed instance (2 clients)"
    );

    // An empty answer, SERVFAIL, then no server at all: the last good set stays and is served.
    for mode in [Mode::Empty, Mode::ServFail] {
        let before = failures(&proxy).await;
        dns.mode(mode);
        wait_for("the failure to be counted", READY_DEADLINE, || {
            let p = &proxy;
            async move { (failures(p).await >= before + 2.0).then_some(()) }
        })
        .await;
        assert_eq!(
            green_backends(&status(&proxy).await),
            [g[0].addr.to_string(), g[2].addr.to_string()],
            "{mode:?} emptied the pool"
        );
        dns.mode(Mode::Records);
    }
    let before = failures(&proxy).await;
    dns.stop();
    wait_for("the outage to be counted", READY_DEADLINE, || {
        let p = &proxy;
        async move { (failures(p).await >= before + 2.0).then_some(()) }
    })
    .await;
    let st = status(&proxy).await;
    assert_eq!(
        green_backends(&st),
        [g[0].addr.to_string(), g[2].addr.to_string()]
    );
    assert!(
        st["pools"]["green"]["dns"][0]["error"].is_string(),
        "status says why: {}",
        st["pools"]["green"]["dns"]
    );

    stop.store(true, Ordering::SeqCst);
    let mut total = std::collections::BTreeMap::<u16, usize>::new();
    for l in load {
        for (code, n) in l.await.unwrap() {
            *total.entry(code).or_default() += n;
        }
    }
    assert_eq!(
        total.keys().copied().collect::<Vec<_>>(),
        [200],
        "every request answered 200 through additions, removals and the outage: {total:?}"
    );
    assert!(total[&200] > 200, "{total:?}");
    assert_eq!(blue.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_is_honoured_and_dns_never_empties_the_live_pool() {
    let dns = DnsServer::start().await;
    let (port, g) = instances(2).await;
    dns.set(NAME, &[ip(2)], 1);
    let blue = Upstream::start("blue").await;
    // Refresh every 30 s: only the 1 s TTL can make the change below show within seconds.
    let toml = format!(
        "[dns]\nservers = [\"{}\"]\nrefresh = \"30s\"\n\n\
         [pools.blue]\nbackends = [\"{}\"]\n\n[pools.green]\nbackends = [\"{NAME}:{port}\"]\n",
        dns.addr, blue.addr
    );
    let proxy = Proxy::start(&toml).await;
    proxy.flip("green").await;

    dns.set(NAME, &[ip(2), ip(3)], 1);
    let t = Instant::now();
    wait_members(&proxy, &[g[0].addr, g[1].addr]).await;
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "the 1 s TTL was not honoured: {:?}",
        t.elapsed()
    );

    // DNS moves green to an address whose instance fails its checks: the live pool would be
    // left with no healthy backend, so the change waits and green keeps serving.
    let dead = ip(9);
    dns.set(NAME, &[dead], 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = status(&proxy).await;
    assert_eq!(
        green_backends(&st),
        [g[0].addr.to_string(), g[1].addr.to_string()],
        "the live pool was emptied by DNS"
    );
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_names_that_do_not_resolve_and_a_reload_adds_a_name() {
    let dns = DnsServer::start().await;
    let (port, g) = instances(2).await;
    dns.set(NAME, &[ip(2), ip(3)], 30);
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;

    // `check`: a name that does not resolve is a warning, and the file is fine (exit 0).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("check.toml");
    std::fs::write(
        &file,
        format!(
            "[dns]\nservers = [\"{}\"]\n[pools.blue]\nbackends = [\"{}\"]\n\
             [pools.green]\nbackends = [\"missing.switchyard.test:80\", \"{NAME}:{port}\"]\n",
            dns.addr, blue.addr
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: backend name missing.switchyard.test:80 does not resolve now"),
        "{stderr}"
    );
    assert!(!stderr.contains(NAME), "{NAME} resolves: {stderr}");

    // A reload that adds the name: its addresses join green at once (looked up by the reload).
    let base = format!("[dns]\nservers = [\"{}\"]\n\n", dns.addr);
    let proxy = Proxy::start(&(base.clone() + &pools_toml(&[blue.addr], &[green.addr]))).await;
    let toml = format!(
        "{base}[pools.blue]\nbackends = [\"{}\"]\n\n[pools.green]\nbackends = [\"{}\", \"{NAME}:{port}\"]\n",
        blue.addr, green.addr
    );
    proxy.write_config(&toml);
    let (code, body) = admin(&proxy.socket(), "POST", "/v1/reload", Some(json!({}))).await;
    assert_eq!(code, 200, "{body}");
    let mut added: Vec<String> = body["pools"]["green"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    added.sort();
    assert_eq!(added, [g[0].addr.to_string(), g[1].addr.to_string()]);
    assert!(
        body["summary"].as_str().unwrap().contains(&format!(
            "pools.green.backends (names) [] → [{NAME}:{port}]"
        )),
        "{body}"
    );
}
