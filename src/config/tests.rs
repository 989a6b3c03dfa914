use super::*;
use std::path::Path;

const MINIMAL: &str = r#"
[pools.blue]
backends = ["127.0.0.1:8001", "127.0.0.1:8002"]
[pools.green]
backends = ["127.0.0.1:9001"]
"#;

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.pools[0].name, "blue");
    assert_eq!(c.pools[1].backends, vec!["127.0.0.1:9001".parse().unwrap()]);
    assert_eq!(c.routing.initial_primary, 0);
    assert_eq!(c.routing.sticky, Sticky::Cookie);
    assert_eq!(c.health.rise, 2);
    assert_eq!(c.health.fall, 3);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(10));
    assert!(c.server.threads >= 1);
    assert!(!c.log.access);
    assert_eq!(c.header_timeout, Duration::from_secs(30));
    assert!(
        c.trusted_proxies.is_empty(),
        "no client is trusted by default"
    );
}

#[test]
fn trusted_proxies_are_networks_or_addresses() {
    let text = format!(
        "{MINIMAL}[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\", \"10.1.2.3/16\"]\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    // A lone address is that one host; host bits in a network are dropped.
    assert_eq!(
        nets,
        ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "10.1.0.0/16"]
    );

    let text = format!("{MINIMAL}[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n");
    let errs = Config::parse(&text, "t.toml").unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].location, Some((7, 34)));
    assert!(
        errs[0]
            .message
            .contains("`lb.internal` is not an IP address or network"),
        "{}",
        errs[0]
    );
}

#[test]
fn the_header_timeout_is_a_positive_duration() {
    let c = Config::parse(
        &format!("{MINIMAL}[listen]\nheader_timeout = \"10s\"\n"),
        "t.toml",
    );
    assert_eq!(c.unwrap().header_timeout, Duration::from_secs(10));
    let errs = rendered(&format!("{MINIMAL}[listen]\nheader_timeout = \"0s\"\n"));
    assert_eq!(
        errs,
        ["f.toml:7:18: listen header_timeout must be greater than zero"]
    );
}

#[test]
fn three_mistakes_give_three_located_errors() {
    let text = r#"[listen]
http = ["0.0.0.0:8080"]

[pools.blue]
backends = ["10.0.0.1:80", "not-an-address"]
[pools.green]
backends = ["10.0.1.1:80"]

[routing]
initial_primary = "purple"

[upstream]
connect_timeout = "soon"
"#;
    let errs = Config::parse(text, "bad.toml").unwrap_err().0;
    let rendered: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 3, "{rendered:#?}");
    assert!(rendered[0].starts_with("bad.toml:5:28: pool `blue` backend `not-an-address`"));
    assert!(rendered[1].starts_with("bad.toml:10:19: initial_primary `purple` is not a pool"));
    assert!(rendered[1].contains("blue, green"));
    assert!(rendered[2].starts_with("bad.toml:13:19: upstream connect_timeout `soon`"));
}

#[test]
fn unknown_keys_are_errors_with_a_location() {
    let text = format!("{MINIMAL}\n[routing]\nstickyness = \"ip\"\n");
    let errs = Config::parse(&text, "t.toml").unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].location, Some((8, 1)));
    assert!(
        errs[0].message == "unknown key `stickyness` in [routing]; did you mean `sticky`?",
        "{}",
        errs[0]
    );
}

#[test]
fn syntax_errors_have_a_location() {
    let errs = Config::parse("[pools.blue\n", "t.toml").unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].location.is_some());
}

#[test]
fn pool_count_and_names_are_checked() {
    let one = "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n";
    let e = Config::parse(one, "t").unwrap_err().0;
    assert!(e[0].message.contains("exactly two pools"), "{}", e[0]);

    let bad = "[pools.Blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = []\n";
    let e = Config::parse(bad, "t").unwrap_err().0;
    let all: String = e.iter().map(|e| e.to_string() + "\n").collect();
    assert!(all.contains("pool name `Blue` is not valid"), "{all}");
    assert!(all.contains("pool `green` has no backends"), "{all}");
}

#[test]
fn duplicates_and_ranges_are_checked() {
    let text = r#"
[pools.blue]
backends = ["127.0.0.1:1", "127.0.0.1:1"]
[pools.green]
backends = ["127.0.0.1:2"]
[health]
rise = 0
min_healthy = 2
[guard]
max_error_ratio = 5.0
[admin]
listen = "127.0.0.1:9902"
[routing]
sticky = "session"
"#;
    let e = Config::parse(text, "t").unwrap_err().0;
    let all: String = e.iter().map(|e| e.to_string() + "\n").collect();
    for needle in [
        "lists backend 127.0.0.1:1 twice",
        "health rise must be at least 1",
        "min_healthy = 2 but a pool has only 1 backends",
        "max_error_ratio 5 must be between 0 and 1",
        "token_file is not",
        "sticky `session` is not one of",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(e.len(), 6, "{all}");
}

#[test]
fn listeners_need_their_own_ports() {
    let text = format!(
        "{MINIMAL}\n[listen]\nhttp = [\"0.0.0.0:8080\"]\n[metrics]\nlisten = \"127.0.0.1:8080\"\n"
    );
    let e = Config::parse(&text, "t").unwrap_err().0;
    assert!(e[0].message.contains("use the same port"), "{}", e[0]);
    let text = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9101\"\n");
    assert!(Config::parse(&text, "t").is_ok());
}

#[test]
fn durations_are_bounded() {
    let text = format!("{MINIMAL}\n[guard]\nwatch_after_flip = \"100000d\"\n");
    let e = Config::parse(&text, "t").unwrap_err().0;
    assert!(e[0].message.contains("longer than 7 days"), "{}", e[0]);
}

#[test]
fn sticky_modes_parse() {
    for (s, want) in [
        ("cookie", Sticky::Cookie),
        ("ip", Sticky::Ip),
        ("none", Sticky::None),
        (
            "header:X-User-Id",
            Sticky::Header(http::HeaderName::from_static("x-user-id")),
        ),
    ] {
        let text = format!("{MINIMAL}\n[routing]\nsticky = \"{s}\"\n");
        assert_eq!(Config::parse(&text, "t").unwrap().routing.sticky, want);
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../config/switchyard.toml");
    if let Err(e) = Config::parse(text, "config/switchyard.toml") {
        panic!("{e}");
    }
}

/// Every error rendered, one per line, in the order reported.
fn rendered(text: &str) -> Vec<String> {
    match Config::parse(text, "f.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn an_unknown_key_does_not_hide_the_other_errors() {
    let text = r#"[pools.blue]
backends = ["10.0.0.1:80", "10.0.0.2"]
[pools.green]
backends = ["10.0.1.1:80"]

[health]
interval = 2
[routing]
stickyness = "ip"
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:2:28: pool `blue` backend `10.0.0.2` is neither an IP:port address nor a \
             host:port name; write e.g. 10.0.0.1:8000, [::1]:8000 or app-green.internal:8000",
            "f.toml:7:12: [health] interval must be a duration string such as \"2s\", not an integer",
            "f.toml:9:1: unknown key `stickyness` in [routing]; did you mean `sticky`?",
        ]
    );
}

#[test]
fn an_unknown_key_far_from_any_valid_one_lists_the_section_s_keys() {
    let text = format!("{MINIMAL}[upstream]\nretries = 3\n[pools.blue.extra]\n");
    let errs = rendered(&text);
    assert_eq!(
        errs[0],
        "f.toml:7:1: unknown key `retries` in [upstream]; the keys are `connect_timeout`, \
         `read_timeout`, `write_timeout`, `idle_timeout`, `idle_close`"
    );
    assert_eq!(
        errs[1],
        "f.toml:8:13: unknown key `extra` in [pools.blue]; the keys are `backends`, `protocol`, `tls`, `sni`, `ca_file`"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn unknown_sections_and_top_level_keys_are_named() {
    let text = format!("interval = \"2s\"\n{MINIMAL}[healthcheck]\npath = \"/\"\n");
    let errs = rendered(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "f.toml:1:1: unknown key `interval` at the top level (settings go in a section); \
             the sections are [listen], [admin],"
        ),
        "{}",
        errs[0]
    );
    assert_eq!(
        errs[1],
        "f.toml:7:2: unknown section [healthcheck]; did you mean [health]?"
    );
}

#[test]
fn wrong_types_name_the_key_and_do_not_stop_the_rest() {
    let text = r#"listen = "0.0.0.0:8080"
[pools.blue]
backends = ["10.0.0.1:80", 8000]
[pools.green]
backends = "10.0.1.1:80"
[health]
enabled = "yes"
rise = "2"
fall = -1
timeout = 1.5
[upstream]
read_timeout = 30
[guard]
max_error_ratio = "5%"
max_p99 = "soon"
[[notify.webhook]]
url = "http://chat.example/h"
events = "flip"
[server]
threads = true
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:1:10: `listen` must be a section ([listen] and the keys below it), not a string",
            "f.toml:3:28: [pools.blue] backends entry must be an IP:port or host:port string \
             such as \"10.0.0.1:8000\", not an integer",
            "f.toml:5:12: [pools.green] backends must be a list of IP:port or host:port strings \
             such as [\"10.0.0.1:8000\", \"app.internal:8000\"], not a string",
            "f.toml:7:11: [health] enabled must be true or false, not a string",
            "f.toml:8:8: [health] rise must be a whole number such as 2, not a string",
            "f.toml:9:8: [health] fall must be a whole number such as 3, not -1",
            "f.toml:10:11: [health] timeout must be a duration string such as \"2s\", not a float",
            "f.toml:12:16: [upstream] read_timeout must be a duration string such as \"2s\", not an \
             integer",
            "f.toml:14:19: [guard] max_error_ratio must be a number such as 0.05, not a string",
            "f.toml:15:11: guard max_p99 `soon` is not a duration (expected number at 0); write \
             e.g. \"250ms\", \"2s\" or \"5m\"",
            "f.toml:18:10: [[notify.webhook]] events must be a list of event names such as \
             [\"flip\", \"rollback\"], not a string",
            "f.toml:20:11: [server] threads must be a whole number (0 = one per core), not a boolean",
        ]
    );
}

#[test]
fn every_duration_key_names_itself_when_given_a_number() {
    for (section, key) in [
        ("listen", "header_timeout"),
        ("health", "interval"),
        ("health", "timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "read_timeout"),
        ("upstream", "write_timeout"),
        ("upstream", "idle_timeout"),
        ("guard", "window"),
        ("guard", "max_p99"),
        ("guard", "watch_after_flip"),
        ("shutdown", "grace_period"),
    ] {
        let text = format!("{MINIMAL}[{section}]\n{key} = 5\n");
        assert_eq!(
            rendered(&text),
            [format!(
                "f.toml:7:{}: [{section}] {key} must be a duration string such as \"2s\", not an \
                 integer",
                key.len() + 4
            )]
        );
    }
    let text = format!("{MINIMAL}[[notify.webhook]]\nurl = \"http://h.example/\"\ntimeout = 5\n");
    assert_eq!(
        rendered(&text),
        ["f.toml:8:11: [[notify.webhook]] timeout must be a duration string such as \"2s\", not \
          an integer"]
    );
}

#[test]
fn inline_tables_and_dotted_keys_are_read_like_sections() {
    let text = r#"pools = { blue = { backends = ["127.0.0.1:1"] }, green = { backends = ["127.0.0.1:2"] } }
health.interval = "3s"
notify = { webhook = [{ url = "http://chat.example/h", format = "json" }] }
"#;
    let c = Config::parse(text, "f.toml").unwrap();
    assert_eq!(c.health.interval, Duration::from_secs(3));
    assert_eq!(c.notify.len(), 1);
    assert_eq!(c.notify[0].format, WebhookFormat::Json);

    let text = r#"pools = { blue = { backends = ["127.0.0.1:1"] }, green = { backends = ["127.0.0.1:2"], x = 1 } }
health.bogus = 1
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:1:88: unknown key `x` in [pools.green]; the keys are `backends`, `protocol`, `tls`, `sni`, `ca_file`",
            "f.toml:2:8: unknown key `bogus` in [health]; the keys are `enabled`, `path`, \
             `interval`, `timeout`, `rise`, `fall`, `min_healthy`",
        ]
    );
}

#[test]
fn required_keys_are_reported_at_their_table() {
    let text = r#"[pools.blue]
[pools.green]
backends = ["127.0.0.1:2"]
[[notify.webhook]]
format = "json"
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:1:1: [pools.blue] has no `backends`; add e.g. backends = [\"10.0.0.1:8000\"]",
            "f.toml:4:1: [[notify.webhook]] has no `url`; add e.g. url = \
             \"https://chat.example/hooks/deploys\"",
        ]
    );
}

#[test]
fn a_backend_in_both_pools_is_reported_where_it_is_listed_second() {
    // green comes first in the file, so the repeat is in blue although blue sorts first.
    let text = r#"[pools.green]
backends = ["10.0.0.1:80", "10.0.0.2:80"]
[pools.blue]
backends = ["10.0.0.3:80", "10.0.0.2:80"]
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:4:28: backend 10.0.0.2:80 is in pool `blue` and already in pool `green` (line \
          2); a backend belongs to one pool, or a flip would not move traffic off it"
        ]
    );
    // Twice in one pool is its own error, not also a cross-pool one.
    let text = "[pools.blue]\nbackends = [\"10.0.0.1:80\", \"10.0.0.1:80\"]\n\
                [pools.green]\nbackends = [\"10.0.0.2:80\"]\n";
    assert_eq!(
        rendered(text),
        ["f.toml:2:28: pool `blue` lists backend 10.0.0.1:80 twice"]
    );
}

#[test]
fn errors_come_in_file_order_with_unlocated_ones_last() {
    // validate works section by section, not in file order: [upstream] is checked after
    // [pools] and [listen], and the pool count has no single place.
    let text = r#"[upstream]
connect_timeout = "soon"
[pools.blue]
backends = ["x"]
[listen]
http = ["0.0.0.0:8080", "0.0.0.0:8080"]
"#;
    let errs = rendered(text);
    let places: Vec<&str> = errs
        .iter()
        .map(|e| e.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        places,
        ["f.toml:2:19:", "f.toml:4:13:", "f.toml:6:25:", "f.toml:"],
        "{errs:#?}"
    );
    assert!(errs[3].contains("exactly two pools"), "{errs:#?}");
}

/// A config with a TCP admin listener and a preview token, naming the two files given.
fn with_side_files(tokens: &Path, preview: &Path) -> String {
    format!(
        "{MINIMAL}[admin]\nlisten = \"127.0.0.1:9902\"\ntoken_file = \"{}\"\n\
         [routing]\npreview_token_file = \"{}\"\n",
        tokens.display(),
        preview.display()
    )
}

fn load(dir: &Path, text: &str) -> Result<Config, Vec<String>> {
    let path = dir.join("f.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| {
        e.0.iter()
            .map(|e| e.to_string().replace(&format!("{}/", dir.display()), ""))
            .collect()
    })
}

#[test]
fn load_checks_the_side_files_the_way_the_server_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin.token");
    let preview = dir.path().join("preview.token");
    std::fs::write(&tokens, "# deploy bot\nci:abc123\n").unwrap();
    std::fs::write(&preview, "\n  s3cret  \n").unwrap();
    let text = with_side_files(&tokens, &preview);
    let c = load(dir.path(), &text).unwrap();
    assert_eq!(
        c.routing.preview_token_file.as_deref(),
        Some(preview.as_path())
    );

    // Missing, empty, a directory: each located at the key that names it.
    std::fs::remove_file(&preview).unwrap();
    std::fs::write(&tokens, "# only a comment\n\n").unwrap();
    let errs = load(dir.path(), &text).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "f.toml:8:14: [admin] token_file: admin token file admin.token has no token"
        ),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with(
            "f.toml:10:22: [routing] preview_token_file: cannot read the preview token file \
             preview.token: No such file or directory"
        ),
        "{errs:#?}"
    );

    // (Tests may run as root, who reads any mode: a directory is unreadable for everyone.)
    std::fs::write(&preview, "\n   \n").unwrap();
    let text = with_side_files(dir.path(), &preview);
    let errs = load(dir.path(), &text).unwrap_err();
    assert!(
        errs[0].contains("[admin] token_file: cannot read admin token file")
            && errs[0].contains("Is a directory"),
        "{errs:#?}"
    );
    assert!(
        errs[1].contains("[routing] preview_token_file: the preview token file")
            && errs[1].contains("is empty"),
        "{errs:#?}"
    );

    // parse never touches the file system.
    assert!(Config::parse(&text, "f.toml").is_ok());
}

#[test]
fn side_files_are_checked_alongside_other_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}[routing]\npreview_token_file = \"{}/nope\"\n[health]\ninterval = 2\n",
        dir.path().display()
    );
    let errs = load(dir.path(), &text).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("f.toml:7:22: [routing] preview_token_file"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("f.toml:9:12: [health] interval"),
        "{errs:#?}"
    );
}

#[test]
fn an_admin_token_file_without_the_tcp_listener_is_not_read() {
    // serve reads it only for [admin] listen, so check must not refuse what serve accepts.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}[admin]\ntoken_file = \"{}/nope\"\n",
        dir.path().display()
    );
    assert!(load(dir.path(), &text).is_ok());
}

#[test]
fn backends_may_be_dns_names() {
    let text = r#"[pools.blue]
backends = ["10.0.0.1:80", "App-Blue.internal:8000"]
[pools.green]
backends = ["app-green.internal.:8000", "app_bad:80", "x.y:0", "app-blue.internal:8000"]
[dns]
servers = ["127.0.0.1:5353"]
refresh = "1s"
"#;
    assert_eq!(
        rendered(text),
        [
            "f.toml:4:41: pool `green` backend `app_bad:80` is neither an IP:port address nor a \
             host:port name; write e.g. 10.0.0.1:8000, [::1]:8000 or app-green.internal:8000",
            "f.toml:4:55: pool `green` backend `x.y:0` is neither an IP:port address nor a \
             host:port name; write e.g. 10.0.0.1:8000, [::1]:8000 or app-green.internal:8000",
            "f.toml:4:64: backend app-blue.internal:8000 is in pool `green` and already in pool \
             `blue` (line 2); a backend belongs to one pool",
        ]
    );
    let ok = text.replace(
        ", \"app_bad:80\", \"x.y:0\", \"app-blue.internal:8000\"",
        "",
    );
    let c = Config::parse(&ok, "f.toml").unwrap();
    assert_eq!(c.pools[0].backends, ["10.0.0.1:80".parse().unwrap()]);
    assert_eq!(c.pools[0].names[0].to_string(), "app-blue.internal:8000");
    assert_eq!(c.pools[1].names[0].host, "app-green.internal");
    assert_eq!(c.dns.servers, ["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(c.dns.refresh, Duration::from_secs(1));
}

#[test]
fn the_state_backend_is_the_file_unless_etcd_is_asked_for() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.state.backend, StateBackend::File);
    let text = format!(
        "{MINIMAL}[state]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379/\"]\n\
         fleet = \"prod\"\ninstance = \"proxy-1\"\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let StateBackend::Etcd(e) = &c.state.backend else {
        panic!("{:?}", c.state.backend)
    };
    assert_eq!(e.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!((e.fleet.as_str(), e.instance.as_str()), ("prod", "proxy-1"));
    assert_eq!(e.lease_ttl, defaults::LEASE_TTL);
}

#[test]
fn etcd_settings_are_checked_and_located() {
    let text = format!(
        "{MINIMAL}[state]\nbackend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n\
         lease_ttl = \"1s\"\ncert_file = \"/c.pem\"\n"
    );
    let errs = Config::parse(&text, "t.toml").unwrap_err();
    let text_of = errs.to_string();
    for want in [
        "t.toml:8:14: [state] endpoint `127.0.0.1:2379` is not an http:// or https:// URL",
        "t.toml:7:11: [state] backend = \"etcd\" needs a fleet name",
        "t.toml:9:13: [state] lease_ttl must be at least 2s",
        "t.toml:10:13: [state] a client certificate needs both cert_file and key_file; add key_file",
    ] {
        assert!(text_of.contains(want), "missing {want:?} in:\n{text_of}");
    }
    // An etcd setting without the etcd backend is a mistake, not silently ignored.
    let text = format!("{MINIMAL}[state]\nfleet = \"prod\"\n");
    let errs = Config::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(
        errs.contains("t.toml:7:9: [state] fleet is an etcd setting"),
        "{errs}"
    );
}

#[test]
fn tls_listeners_certificates_and_pool_protocols_are_read() {
    let text = r#"
[listen]
https = ["0.0.0.0:8443"]
h2c = true
redirect_to_https = true

[[tls.certificate]]
cert = "/etc/sy/a.pem"
key = "/etc/sy/a.key"

[[tls.certificate]]
cert = "/etc/sy/b.pem"
key = "/etc/sy/b.key"
default = true

[pools.blue]
backends = ["127.0.0.1:8001"]
protocol = "h2c"
[pools.green]
backends = ["app.internal:8443"]
protocol = "h2"
tls = true
ca_file = "/etc/sy/ca.pem"
"#;
    let c = Config::parse(text, "t.toml").unwrap();
    assert_eq!(c.https, vec!["0.0.0.0:8443".parse().unwrap()]);
    assert!(c.h2c && c.redirect_to_https);
    assert_eq!(c.tls.len(), 2);
    assert!(!c.tls[0].default && c.tls[1].default);
    assert_eq!(c.pools[0].protocol, UpstreamProtocol::H2c);
    assert!(!c.pools[0].tls);
    assert_eq!(c.pools[1].protocol, UpstreamProtocol::H2);
    assert!(c.pools[1].tls);
    assert_eq!(c.pools[1].ca_file, Some(PathBuf::from("/etc/sy/ca.pem")));
    // https only.
    let c = Config::parse(
        &text.replace("[listen]\n", "[listen]\nhttp = []\n"),
        "t.toml",
    )
    .unwrap();
    assert!(c.listen.is_empty());
    // The defaults: plain HTTP/1.1 everywhere, no TLS.
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert!(c.https.is_empty() && c.tls.is_empty() && !c.h2c && !c.redirect_to_https);
    assert_eq!(c.pools[0].protocol, UpstreamProtocol::Http1);
}

#[test]
fn tls_settings_that_cannot_work_are_located_errors() {
    let errs = |text: &str| -> Vec<String> {
        Config::parse(text, "t.toml")
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let e = errs(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{MINIMAL}"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:2:9: [listen] https needs at least one certificate"),
        "{e:?}"
    );
    let e = errs(&format!(
        "[[tls.certificate]]\ncert = \"a.pem\"\nkey = \"a.key\"\n{MINIMAL}"
    ));
    assert!(e[0].contains("[listen] has no https listener"), "{e:?}");
    let e = errs(&format!("[listen]\nredirect_to_https = true\n{MINIMAL}"));
    assert!(
        e[0].starts_with("t.toml:2:21: [listen] redirect_to_https is set but there is no https"),
        "{e:?}"
    );
    let e = errs(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n\
         [[tls.certificate]]\ncert = \"a.pem\"\nkey = \"a.key\"\ndefault = true\n\
         [[tls.certificate]]\ncert = \"b.pem\"\nkey = \"b.key\"\ndefault = true\n{MINIMAL}"
    ));
    assert_eq!(
        e,
        [
            "t.toml:10:11: two [[tls.certificate]] entries are the default (the other on line 6); \
          mark only one"
        ]
    );
    let e = errs(
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\n\
         [pools.green]\nbackends = [\"127.0.0.1:2\"]\nprotocol = \"h2c\"\ntls = true\n\
         [pools.red]\n",
    );
    assert!(
        e.iter().any(|e| e.starts_with(
            "t.toml:3:12: pool `blue` protocol \"h2\" is HTTP/2 over TLS: add tls = true"
        )),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e
            .starts_with("t.toml:6:12: pool `green` protocol \"h2c\" is HTTP/2 over plain TCP")),
        "{e:?}"
    );
    let e = errs(
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\nprotocol = \"grpc\"\nca_file = \"ca.pem\"\n\
         [pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
    );
    assert!(
        e[0].starts_with("t.toml:3:12: pool `blue` protocol `grpc` is not one of"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("t.toml:4:11: pool `blue` sets ca_file but not tls = true"),
        "{e:?}"
    );
}

#[test]
fn rehearsal_sections_default_safely_and_locate_their_errors() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.faults.max_duration, Duration::from_secs(3600));
    assert_eq!(c.shadow.methods, [http::Method::GET, http::Method::HEAD]);
    assert_eq!(c.shadow.compare_body, CompareBody::None);
    assert_eq!(c.shadow.max_mismatch_ratio, None);

    let text = format!(
        "{MINIMAL}[faults]\nmax_duration = \"2h\"\n[shadow]\nmethods = [\"get\", \"POST\"]\n\
         compare_body = \"json\"\nignore_fields = [\"ts\"]\nroutes = [\"/api/*/x\", \"/s/**\"]\n\
         max_mismatch_ratio = 0.01\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(c.faults.max_duration, Duration::from_secs(7200));
    assert_eq!(c.shadow.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(c.shadow.routes, ["/api/*/x", "/s/**"]);
    assert_eq!(c.shadow.max_mismatch_ratio, Some(0.01));

    let text = format!(
        "{MINIMAL}[shadow]\nqueue = 0\ncompare_body = \"diffy\"\nroutes = [\"api/*\", \"/a/**/b\"]\n\
         max_mismatch_ratio = 2\nignore_fields = [\"ts\"]\nspeed = 1\n"
    );
    let errs = Config::parse(&text, "t.toml").unwrap_err().0;
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 7, "{lines:#?}");
    assert!(
        lines[0].starts_with("t.toml:7:9: shadow queue must be between 1"),
        "{lines:#?}"
    );
    assert!(lines[1].contains("compare_body `diffy`"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("route `api/*`")));
    assert!(lines.iter().any(|l| l.contains("route `/a/**/b`")));
    assert!(lines.iter().any(|l| l.contains("max_mismatch_ratio 2")));
    assert!(lines
        .iter()
        .any(|l| l.contains("ignore_fields only applies")));
    assert!(lines.iter().any(|l| l.contains("speed")), "{lines:#?}");
}

#[test]
fn header_case_defaults_to_canonical_and_locates_a_bad_value() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.server.header_case, HeaderCase::Canonical);
    let c = Config::parse(
        &format!("{MINIMAL}[server]\nheader_case = \"preserve\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.server.header_case, HeaderCase::Preserve);
    let e = Config::parse(
        &format!("{MINIMAL}[server]\nheader_case = \"Title\"\n"),
        "t.toml",
    )
    .unwrap_err()
    .0;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        e[0].to_string(),
        "t.toml:7:15: [server] header_case `Title` is not one of \"canonical\", \"preserve\""
    );
}

#[test]
fn idle_close_defaults_to_on_reuse_and_locates_a_bad_value() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.upstream.idle_close, IdleClose::OnReuse);
    let c = Config::parse(
        &format!("{MINIMAL}[upstream]\nidle_close = \"on_timeout\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.upstream.idle_close, IdleClose::OnTimeout);
    let e = Config::parse(
        &format!("{MINIMAL}[upstream]\nidle_close = \"never\"\n"),
        "t.toml",
    )
    .unwrap_err()
    .0;
    assert_eq!(
        e.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["t.toml:7:14: [upstream] idle_close `never` is not one of \"on_reuse\", \"on_timeout\""]
    );
}
