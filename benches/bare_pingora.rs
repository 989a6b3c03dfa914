//! The framework's floor: the smallest pingora proxy that forwards to one fixed peer. The load
//! comparison (`benches/compare.sh`) runs it next to switchyard, so switchyard's own overhead over
//! pingora is visible.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM [THREADS] [tuned|patched]`, e.g. `bare_pingora
//! 127.0.0.1:6188 127.0.0.1:8000 1`. With `tuned`, it runs with the two `ServerConf` settings
//! switchyard chooses (no work stealing for one thread, timeouts on tokio's timer), so the
//! comparison can show switchyard's own code apart from the settings. `patched` adds the opt-in
//! settings of the carried pingora patches that switchyard turns on (patches/README.md: headers
//! read without their names' case, idle upstream connections checked at reuse).

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use std::time::Duration;

/// The same allocator as switchyard's binary, so the comparison isolates switchyard's own code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: std::net::SocketAddr,
    patched: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.discard_h1_header_case = self.patched;
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => (l.clone(), u.parse().expect("UPSTREAM is IP:port")),
        _ => panic!("usage: bare_pingora LISTEN UPSTREAM [THREADS] [tuned|patched]"),
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let mut conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mode = args.get(4).map(String::as_str);
    let patched = mode == Some("patched");
    if mode == Some("tuned") || patched {
        conf.work_stealing = threads > 1;
        conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    }
    conf.upstream_keepalive_idle_check_at_reuse = patched;
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare { upstream, patched });
    if patched {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h1_discard_header_case = true;
        svc.app_logic_mut().expect("a proxy app").server_options = Some(options);
    }
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
