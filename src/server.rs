//! Assembles a running switchyard from a validated [`Config`]: the pingora server, the proxy
//! service, and the background services around it.
//!
//! Everything that can fail at start-up is done in [`Switchyard::build`], before pingora runs, so a
//! busy port or an unusable directory ends the process with one clear message and a non-zero exit
//! (pingora alone panics in the service task and keeps running without the listener, pingora#667).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::http::{AdminService, TokenError, Tokens};
use crate::admin::{Admin, AdminParts, FleetService, GuardService};
use crate::chatops::service::{Chatops, ChatopsService};
use crate::config::Config;
use crate::dns::{self, Names};
use crate::health::{HealthChecker, HealthControl};
use crate::httpd::{HandOver, Kind, Listener, UnixBindError};
use crate::memory::Trimming;
use crate::metrics::{Metrics, MetricsService};
use crate::notify::Notifier;
use crate::page::StatusPage;
use crate::preview::{PreviewError, PreviewKey};
use crate::proxy::Proxy;
use crate::routing::Switchboard;
use crate::state::StoreError;
use crate::upgrade::{HandOverTrigger, NotWarm, PhaseWatch, Upgrader};

/// Why switchyard could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr}: {source}; is another process using it? \
         (`ss -ltnp 'sport = :{port}'` shows which) — change [listen] or stop that process",
        port = addr.port()
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot create directory {path}: {source}; create it or point the config elsewhere")]
    Dir { path: PathBuf, source: io::Error },
    #[error("admin API: {0}")]
    AdminSocket(#[from] UnixBindError),
    #[error(
        "cannot listen on {addr} for the admin API: {source}; change [admin] listen or stop \
         the process using it"
    )]
    AdminListen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Tokens(#[from] TokenError),
    #[error(
        "cannot listen on {addr} for metrics: {source}; change [metrics] listen or stop the \
         process using it"
    )]
    MetricsListen { addr: SocketAddr, source: io::Error },
    #[error(
        "cannot listen on {addr} for chat commands: {source}; change [chatops] listen or stop \
         the process using it"
    )]
    ChatopsListen { addr: SocketAddr, source: io::Error },
    #[error("chat commands: {0}")]
    ChatSecret(#[from] crate::chatops::SecretError),
    #[error("the state directory is not usable: {0}")]
    State(#[from] StoreError),
    #[error("{0}")]
    Preview(#[from] PreviewError),
    /// `serve --upgrade`: the backends did not pass their checks in time (upgrade.rs).
    #[error("{0}")]
    NotWarm(#[from] NotWarm),
    #[error("cannot warm up the backends: {0}")]
    Runtime(io::Error),
    #[error("[[tls.certificate]]: {0}")]
    Tls(#[from] crate::tls::CertError),
}

/// Read buffer per client connection: none. pingora's default is 64 KiB, held for as long as the
/// connection lives, idle or not (1 000 idle keep-alive clients: 64 MiB in buffers alone), and
/// it only adds a copy: pingora reads a request head into its own buffer (4 KiB, grown as
/// needed) and a body into its body buffer (64 KiB, bypassing a smaller read buffer anyway).
/// Without it (and with the keep-alive wait patch, patches/README.md) an idle keep-alive client
/// costs ~9 KiB; with 16 KiB it cost ~39 KiB.
const CLIENT_READ_BUFFER: usize = 0;
/// pingora's default write buffer (one MSS).
const CLIENT_WRITE_BUFFER: usize = pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// Requests served on one client connection before it is closed (nginx's `keepalive_requests`;
/// pingora's default is no limit), so per-connection memory is returned now and then.
const KEEPALIVE_REQUESTS: u32 = 1000;

/// How long an HTTP/2 client connection with no open stream is kept (pingora keeps it forever
/// by default, pingora#563); the same as an idle HTTP/1.1 keep-alive connection.
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(crate::proxy::CLIENT_KEEPALIVE_SECS);

/// How the process behaves around the server; the binary and the tests differ here.
#[derive(Debug, Clone)]
pub struct RunMode {
    /// After SIGTERM, exit as soon as no request is in flight instead of sleeping out the whole
    /// grace period (pingora always sleeps it in full). Only for a process of its own.
    pub exit_when_drained: bool,
    /// Check shortly after start that every proxy listener accepts connections, and exit(1) if
    /// one does not. Only for a process of its own.
    pub probe_listeners: bool,
    /// How `ctl upgrade` makes the signal watch hand the sockets over
    /// ([`ProcessSignals::hand_over_trigger`]); with the config file's path, it makes upgrades
    /// available. `None` (embedded, demo): `POST /v1/upgrade` answers 501.
    pub hand_over: Option<HandOverTrigger>,
    /// This is the new process of an upgrade (`serve --upgrade`): take the listening sockets
    /// from the old one instead of binding them, after warming the backends up (upgrade.rs).
    pub upgrade: bool,
}

impl RunMode {
    /// The mode of `switchyard serve` and `demo`.
    pub fn process() -> RunMode {
        RunMode {
            exit_when_drained: true,
            probe_listeners: true,
            hand_over: None,
            upgrade: false,
        }
    }

    /// The mode of an in-process server in tests.
    pub fn embedded() -> RunMode {
        RunMode {
            exit_when_drained: false,
            probe_listeners: false,
            hand_over: None,
            upgrade: false,
        }
    }
}

/// A built, not yet running, switchyard.
pub struct Switchyard {
    server: Server,
    switchboard: Arc<Switchboard>,
    admin: Arc<Admin>,
    config: Arc<Config>,
}

impl Switchyard {
    /// Checks the environment and builds every service. Nothing listens until [`Switchyard::run`].
    /// `config_path` is the file `config` came from, which a reload re-reads (`None` for a
    /// built-in configuration, which cannot be reloaded).
    pub fn build(
        config: Config,
        config_path: Option<PathBuf>,
        mode: RunMode,
    ) -> Result<Switchyard, StartError> {
        // In an upgrade every listening socket comes from the old process (upgrade.rs): none is
        // bound, or checked by binding, here.
        let fresh = !mode.upgrade;
        if fresh {
            for &addr in config.listen.iter().chain(&config.https) {
                // Fail now on a busy port rather than inside pingora's service task.
                std::net::TcpListener::bind(addr)
                    .map_err(|source| StartError::Bind { addr, source })?;
            }
        }
        let socket = &config.admin.socket;
        let group = config.admin.socket_group.as_ref().map(|g| g.gid);
        let prebound = fresh
            .then(|| Listener::bind_unix(socket, group))
            .transpose()?;
        let unix = HandOver::new(Kind::Unix(socket.clone()), prebound).with_group(group);
        let mut admin_endpoints = vec![(unix, None)];
        if let Some(addr) = config.admin.listen {
            let path = config
                .admin
                .token_file
                .as_ref()
                .expect("validated: admin.listen requires token_file");
            let tokens = Tokens::load(path)?;
            let prebound = fresh
                .then(|| Listener::bind_tcp(addr))
                .transpose()
                .map_err(|source| StartError::AdminListen { addr, source })?;
            admin_endpoints.push((HandOver::new(Kind::Tcp(addr), prebound), Some(tokens)));
        }
        let metrics_endpoint = match config.metrics.listen {
            Some(addr) => {
                let prebound = fresh
                    .then(|| Listener::bind_tcp(addr))
                    .transpose()
                    .map_err(|source| StartError::MetricsListen { addr, source })?;
                Some(HandOver::new(Kind::Tcp(addr), prebound))
            }
            None => None,
        };
        let chatops_endpoint = match &config.chatops {
            Some(c) => {
                let secret = crate::chatops::SigningSecret::load(&c.signing_secret_file)?;
                let prebound = fresh
                    .then(|| Listener::bind_tcp(c.listen))
                    .transpose()
                    .map_err(|source| StartError::ChatopsListen {
                        addr: c.listen,
                        source,
                    })?;
                Some((HandOver::new(Kind::Tcp(c.listen), prebound), secret))
            }
            None => None,
        };
        let run_dir = config
            .admin
            .socket
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        create_dir(&config.state.dir)?;
        // Read and checked here, not by pingora (which panics in its service task on a bad file).
        let now = std::time::SystemTime::now();
        let certs = crate::tls::Certificates::load(&config.tls, now)?;
        for warning in certs.warnings(now) {
            tracing::warn!("{warning}");
        }
        let tls = crate::tls::CertStore::new(certs);

        let metrics = Arc::new(Metrics::new(&config));
        metrics.watch_certificates(tls.clone());
        let preview = match &config.routing.preview_token_file {
            Some(path) => Some(PreviewKey::load(path)?),
            None => None,
        };
        let (notifier, delivery) = Notifier::new(config.notify.clone(), metrics.clone());
        let health = HealthControl::new(config.health.clone());
        let dns = Names::new(&config, metrics.clone());
        resolve_at_start(&config, &dns);
        let faults = crate::faults::Faults::new();
        let (shadow, shadow_queue) = crate::shadow::Shadow::new(&config.shadow, metrics.clone());
        let (switchboard, admin) = Admin::start(
            &config,
            AdminParts {
                metrics: metrics.clone(),
                preview,
                notifier: notifier.clone(),
                health: health.clone(),
                dns: dns.clone(),
                config_path: config_path.clone(),
                tls: tls.clone(),
                faults: faults.clone(),
                shadow: shadow.clone(),
            },
        )?;
        let admin = Arc::new(admin);
        admin.refresh_report_metrics();

        let mut conf = ServerConf {
            threads: config.server.threads,
            grace_period_seconds: Some(config.shutdown.grace_period.as_secs_f64().ceil() as u64),
            graceful_shutdown_timeout_seconds: Some(1),
            // Keep pingora's own files out of world-writable /tmp (reliability-anchors B3).
            pid_file: run_dir.join("switchyard.pid").display().to_string(),
            upgrade_sock: run_dir.join("upgrade.sock").display().to_string(),
            // With one worker there is nobody to steal from: pingora's per-thread (current-thread)
            // runtime does the same work without the multi-thread scheduler's bookkeeping
            // (~1.4 k fewer instructions per proxied request, benches/RESULTS.md).
            work_stealing: config.server.threads > 1,
            // Timeouts of a second or more (the upstream read/write/idle and connect timeouts)
            // on tokio's timer wheel rather than pingora's shared timer map: O(1) to arm and to
            // cancel, and a cancelled timer is gone at once instead of staying in the map until
            // its deadline (~1.9 k fewer instructions per request). Shorter ones stay on
            // pingora's timer.
            fast_timeout_to_tokio_threshold_seconds: Some(0),
            // `[upstream] idle_close = "on_reuse"` (the default): pooled upstream connections
            // are checked when taken for reuse (past the idle timeout: closed; closed by the
            // backend: dropped, the next one tried) instead of each being watched by a task
            // spawned when it is released, once per request on a keep-alive connection
            // (pingora patch 13). See `config::IdleClose` for what that costs.
            upstream_keepalive_idle_check_at_reuse: config.upstream.idle_close
                == crate::config::IdleClose::OnReuse,
            ..ServerConf::default()
        };
        conf.daemon = false;
        let upgrade_sock = PathBuf::from(&conf.upgrade_sock);
        if mode.upgrade && config.health.enabled {
            // Before asking for the sockets: after that there is no way back for the old process.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartError::Runtime)?;
            let bound = crate::upgrade::warm_up_bound();
            rt.block_on(crate::upgrade::warm_up(&switchboard, &config.health, bound))?;
        }
        let opt = Opt {
            upgrade: mode.upgrade,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        // With `upgrade`, this waits on upgrade.sock for the old process's sockets (pingora exits
        // the process if they do not come).
        server.bootstrap();
        if mode.upgrade {
            admin.adopt_saved_state();
            crate::logging::to_stdout();
            tracing::info!(
                "took over the listening sockets from pid {}",
                std::env::var(crate::upgrade::ENV_FROM).unwrap_or_else(|_| "?".into())
            );
        }
        let (phase_watch, handed_over) = PhaseWatch::new(server.watch_execution_phase());
        add_background(&mut server, "upgrade phase", phase_watch);

        let proxy = Proxy::new(
            switchboard.clone(),
            metrics.clone(),
            faults,
            shadow.clone(),
            config.server.header_case,
        );
        let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
        {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.keepalive_request_limit = Some(KEEPALIVE_REQUESTS);
            // The request-head limits apply while the head is read, before any filter runs
            // (pingora patches, patches/README.md): a head trickled past the deadline gets 408,
            // one too large or with too many fields 431, a request line with a space in the
            // target 400 (rather than being rewritten and forwarded).
            options.h1_header_timeout = Some(config.header_timeout);
            options.h1_max_header_bytes = Some(crate::proxy::MAX_HEADER_BYTES);
            options.h1_max_headers = Some(crate::proxy::MAX_HEADERS);
            options.h1_refuse_unparsable_request_line = true;
            // `[server] header_case` (pingora patch 12): names in pingora's canonical spelling
            // unless asked to keep their case; the response side is set on each peer (`Proxy::upstream_peer`).
            options.h1_discard_header_case = !config.server.header_case.preserve();
            // HTTP/2: by ALPN on the https listeners always; with prior knowledge on the plain
            // ones when `[listen] h2c` (an HTTP/1.1 client there still works: pingora looks for
            // the h2 preface first). An idle h2 connection is closed after a while, and
            // shutdown sends GOAWAY and lets open streams finish (within the grace period).
            options.h2c = config.h2c;
            options.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
            app.server_options = Some(options);
        }
        let mut proxy_service = Service::new("proxy".to_string(), Trimming::new(app));
        for addr in &config.listen {
            let listener = ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::new(
                CLIENT_READ_BUFFER,
                CLIENT_WRITE_BUFFER,
            ));
            proxy_service.endpoints().add_listener(listener);
        }
        let counter = metrics.clone();
        let on_failure: Arc<dyn Fn(&'static str) + Send + Sync> =
            Arc::new(move |reason| counter.record_tls_handshake_failure(reason));
        for addr in &config.https {
            let listener = ListenerConfig::tcp(addr.to_string())
                .tls(tls.listener_settings(on_failure.clone()))
                .l4_buffer(L4BufferSettings::new(
                    CLIENT_READ_BUFFER,
                    CLIENT_WRITE_BUFFER,
                ));
            proxy_service.endpoints().add_listener(listener);
        }
        server.add_service(proxy_service);
        let upgrader = match (&config_path, &mode.hand_over) {
            (Some(path), Some(trigger)) => {
                let mut keys: Vec<String> = config
                    .listen
                    .iter()
                    .chain(&config.https)
                    .map(|a| a.to_string())
                    .collect();
                keys.extend(admin_endpoints.iter().map(|(e, _)| e.key().to_string()));
                keys.extend(metrics_endpoint.iter().map(|e| e.key().to_string()));
                keys.extend(chatops_endpoint.iter().map(|(e, _)| e.key().to_string()));
                Some(Arc::new(Upgrader::new(
                    admin.clone(),
                    path.clone(),
                    upgrade_sock,
                    keys,
                    trigger.clone(),
                )))
            }
            _ => None,
        };
        server.add_service(AdminService::new(
            admin.clone(),
            admin_endpoints,
            handed_over.clone(),
            upgrader,
        ));
        add_background(&mut server, "guard", GuardService::new(admin.clone()));
        if let Some(fleet) = FleetService::new(admin.clone()) {
            add_background(&mut server, "fleet", fleet);
        }
        add_background(&mut server, "notifications", delivery);
        let copies = crate::shadow::worker::ShadowService::new(
            shadow,
            switchboard.clone(),
            shadow_queue,
            config.shadow.concurrency,
            config.upstream.connect_timeout,
        );
        add_background(&mut server, "shadow traffic", copies);
        let checker = HealthChecker::new(switchboard.clone(), health);
        add_background(&mut server, "health checks", checker);
        let applier = admin.clone();
        let watcher = dns::Watcher::new(dns, Arc::new(move || applier.apply_dns()));
        add_background(&mut server, "dns", watcher);
        if let (Some((endpoint, secret)), Some(c)) = (chatops_endpoint, &config.chatops) {
            let chatops = Chatops::new(admin.clone(), metrics.clone(), secret, c);
            server.add_service(ChatopsService::new(chatops, endpoint, handed_over.clone()));
        }
        if let Some(endpoint) = metrics_endpoint {
            let page = Arc::new(StatusPage::new(admin.clone(), metrics.clone()));
            server.add_service(
                MetricsService::new(metrics.clone(), switchboard.clone(), endpoint, handed_over)
                    .with_pages(page),
            );
        }

        if mode.exit_when_drained {
            let drain = DrainWatcher {
                switchboard: switchboard.clone(),
                grace: config.shutdown.grace_period,
                notifier: notifier.clone(),
            };
            add_background(&mut server, "drain", drain);
        }
        if mode.probe_listeners {
            add_background(
                &mut server,
                "listener probe",
                ListenerProbe {
                    addrs: config.listen.iter().chain(&config.https).copied().collect(),
                    switchboard: switchboard.clone(),
                    health: config.health.clone(),
                    upgrade: mode.upgrade,
                },
            );
        }

        Ok(Switchyard {
            server,
            switchboard,
            admin,
            config: Arc::new(config),
        })
    }

    /// The admin handler (changes, reloads, status).
    pub fn admin(&self) -> Arc<Admin> {
        self.admin.clone()
    }

    /// Reloads the configuration whenever `signals` receives SIGHUP.
    pub fn reload_on(&mut self, signals: &ProcessSignals) {
        let reloader = SighupReload {
            admin: self.admin.clone(),
            hup: signals.hup.clone(),
        };
        self.add_background("SIGHUP reload", reloader);
    }

    /// The routing state shared by the proxy and the admin API.
    pub fn switchboard(&self) -> Arc<Switchboard> {
        self.switchboard.clone()
    }

    /// The configuration this instance runs.
    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// Adds a background service (e.g. the demo backends) to run alongside the proxy.
    pub fn add_background<T>(&mut self, name: &str, task: T)
    where
        T: BackgroundService + Send + Sync + 'static,
    {
        add_background(&mut self.server, name, task);
    }

    /// Runs until the shutdown signal; returns once the runtimes have stopped.
    pub fn run(self, args: RunArgs) {
        let c = &self.config;
        let proxy = c
            .listen
            .iter()
            .map(|a| a.to_string())
            .chain(c.https.iter().map(|a| format!("{a} (https)")))
            .collect::<Vec<_>>()
            .join(", ");
        let off = || "off".to_string();
        let admin_listen = c.admin.listen.map_or_else(off, |a| a.to_string());
        let metrics_listen = c.metrics.listen.map_or_else(off, |a| a.to_string());
        // Every address this process answers on, as fields too (a JSON log carries them as keys).
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            proxy = %proxy,
            admin_socket = %c.admin.socket.display(),
            admin_listen = %admin_listen,
            metrics_listen = %metrics_listen,
            "switchyard {} listening on {proxy} (proxy), {} (admin socket), {admin_listen} (admin \
             API), {metrics_listen} (metrics); primary pool {}",
            env!("CARGO_PKG_VERSION"),
            c.admin.socket.display(),
            self.switchboard.pool_names()[self.switchboard.state().primary],
        );
        self.server.run(args);
    }
}

/// Process signals, caught from the moment this is created.
///
/// pingora installs its own handlers only once its main loop runs, after the services have
/// started, so a SIGTERM that arrives in between would kill the process with the default action
/// (reliability-anchors B2). These handlers are registered before anything starts; a signal that
/// arrives early is kept and acted on when the server is ready for it.
pub struct ProcessSignals {
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Stop>>,
    tx: tokio::sync::mpsc::UnboundedSender<Stop>,
    /// SIGHUP: reload the configuration. A permit is kept until the reloader takes it, so a
    /// SIGHUP during start-up is acted on once the server runs (and several in a row are one).
    hup: Arc<tokio::sync::Notify>,
}

/// What ends the server: a signal, or `ctl upgrade` handing the sockets over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(i32),
    HandOver,
}

impl ProcessSignals {
    /// Registers SIGTERM (graceful shutdown), SIGINT (quick shutdown), SIGQUIT (graceful
    /// shutdown too) and SIGHUP (reload the configuration, see [`Switchyard::reload_on`]; its
    /// default action would kill the process).
    ///
    /// SIGQUIT, pingora's upgrade signal, stays a graceful *terminate*: pingora hands the sockets
    /// over on it whether or not a new process is waiting for them, and then stops accepting,
    /// so a stray `kill -QUIT` would be an outage. `switchyard ctl upgrade` is the way to hand
    /// over: it starts the new process, waits until it is warm and listening for the sockets,
    /// and only then hands over ([`ProcessSignals::hand_over_trigger`], upgrade.rs).
    pub fn install() -> io::Result<ProcessSignals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP])?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let upgrade_tx = tx.clone();
        let hup = Arc::new(tokio::sync::Notify::new());
        let on_hup = hup.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        on_hup.notify_one();
                        continue;
                    }
                    if tx.send(Stop::Signal(sig)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(ProcessSignals {
            rx: tokio::sync::Mutex::new(rx),
            tx: upgrade_tx,
            hup,
        })
    }

    /// What `ctl upgrade` fires to make the server hand its sockets over (pingora's
    /// `GracefulUpgrade`) once the new process waits for them.
    pub fn hand_over_trigger(&self) -> HandOverTrigger {
        let tx = self.tx.clone();
        HandOverTrigger::new(move || tx.send(Stop::HandOver).is_ok())
    }

    /// Run arguments for [`Switchyard::run`] that act on these signals.
    pub fn run_args(self) -> RunArgs {
        RunArgs {
            shutdown_signal: Box::new(self),
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for ProcessSignals {
    async fn recv(&self) -> ShutdownSignal {
        use signal_hook::consts::SIGINT;
        match self.rx.lock().await.recv().await {
            Some(Stop::Signal(SIGINT)) => ShutdownSignal::FastShutdown,
            Some(Stop::HandOver) => ShutdownSignal::GracefulUpgrade,
            _ => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// Reloads the configuration on SIGHUP, as `POST /v1/reload` does (the outcome is logged, counted
/// and recorded in history; there is nobody to answer).
struct SighupReload {
    admin: Arc<Admin>,
    hup: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.hup.notified() => {}
            }
            tracing::info!("SIGHUP received: reloading the configuration");
            let admin = self.admin.clone();
            let done =
                tokio::task::spawn_blocking(move || admin.reload("signal:SIGHUP", None)).await;
            if let Ok(Ok(crate::admin::Reply::Reload(r))) = done {
                if !r.changed {
                    tracing::info!("SIGHUP reload: {}", r.summary);
                }
            }
        }
    }
}

/// Stops an embedded switchyard (in tests, benches, or another program) when triggered, with
/// pingora's quick shutdown.
#[derive(Clone, Default)]
pub struct ShutdownTrigger(Arc<tokio::sync::Notify>);

impl ShutdownTrigger {
    pub fn new() -> ShutdownTrigger {
        ShutdownTrigger::default()
    }

    /// Asks the server to stop; [`Switchyard::run`] then returns.
    pub fn trigger(&self) {
        self.0.notify_one();
    }

    /// Run arguments that wait for [`ShutdownTrigger::trigger`].
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            shutdown_signal: Box::new(self.clone()),
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownTrigger {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

fn add_background<T>(server: &mut Server, name: &str, task: T)
where
    T: BackgroundService + Send + Sync + 'static,
{
    let mut svc = background_service(name, task);
    svc.threads = Some(1);
    server.add_service(svc);
}

/// Resolves the backend names once before the pools are built, so that they start whole rather
/// than fill in a refresh later. Bounded by the lookup timeout; a name that fails here is logged
/// and left to the watcher's retries (the process starts anyway: DNS may be back in a moment).
fn resolve_at_start(config: &Config, names: &dns::Names) {
    let pending = names.unknown(config);
    if pending.is_empty() {
        return;
    }
    // On a thread of its own: `build` may be called from inside a runtime (tests, embedders).
    let dns_config = config.dns.clone();
    let found = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(dns::Names::lookup_all(&dns_config, pending)))
            })
            .join()
    });
    match found {
        Ok(Ok(found)) => {
            names.record(found);
        }
        _ => tracing::warn!("cannot resolve backend names at start; the watcher will retry"),
    }
}

fn create_dir(path: &std::path::Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|source| StartError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

/// After the shutdown broadcast, exits the process as soon as no request is in flight, or when the
/// grace period is over, whichever is first.
struct DrainWatcher {
    switchboard: Arc<Switchboard>,
    grace: Duration,
    notifier: Notifier,
}

/// After the requests, how long shutdown waits for queued notifications at most.
const NOTIFY_FLUSH: Duration = Duration::from_secs(3);

/// How often the drain watcher looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let deadline = Instant::now() + self.grace;
        let inflight = || {
            let t = self.switchboard.load();
            t.pools.iter().map(|p| p.inflight()).sum::<usize>()
        };
        tracing::info!(
            "shutting down: no longer accepting; {} request(s) in flight, grace period {:?}",
            inflight(),
            self.grace
        );
        loop {
            let n = inflight();
            if n == 0 {
                self.flush_notifications().await;
                tracing::info!("all requests finished; exiting");
                std::process::exit(0);
            }
            if Instant::now() >= deadline {
                tracing::warn!("grace period over with {n} request(s) still in flight; exiting");
                self.flush_notifications().await;
                std::process::exit(0);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

impl DrainWatcher {
    /// Gives queued notifications a moment to go out, so the last change before a restart is
    /// still announced.
    async fn flush_notifications(&self) {
        let until = Instant::now() + NOTIFY_FLUSH;
        while self.notifier.pending() > 0 && Instant::now() < until {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = self.notifier.pending();
        if left > 0 {
            tracing::warn!("exiting with {left} notification(s) undelivered");
        }
    }
}

/// Checks that every proxy listener accepts connections shortly after start, then tells systemd
/// the service is ready (`Type=notify`).
struct ListenerProbe {
    addrs: Vec<SocketAddr>,
    switchboard: Arc<Switchboard>,
    health: crate::config::HealthConfig,
    /// The new process of an upgrade: warm already, and the service's main process from now on.
    upgrade: bool,
}

/// How long the listeners get to come up before the process gives up.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

#[async_trait]
impl BackgroundService for ListenerProbe {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = Instant::now() + PROBE_DEADLINE;
        for &addr in &self.addrs {
            // A wildcard address is probed through loopback.
            let target = match addr {
                SocketAddr::V4(a) if a.ip().is_unspecified() => {
                    SocketAddr::from(([127, 0, 0, 1], a.port()))
                }
                SocketAddr::V6(a) if a.ip().is_unspecified() => {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
                }
                a => a,
            };
            loop {
                if tokio::net::TcpStream::connect(target).await.is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::error!(
                        "listener {addr} did not come up within {PROBE_DEADLINE:?}; exiting"
                    );
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.notify_ready().await;
    }
}

impl ListenerProbe {
    /// READY=1 once the listeners are up and the first health round is done: when every pool
    /// with traffic has `min_healthy` healthy, or when the checker has had the time to get there
    /// (a proxy whose backends are down is still up, and says so in `status`). After an upgrade
    /// the backends are warm already, and MAINPID moves systemd's attention to this process.
    async fn notify_ready(&self) {
        if !self.upgrade && self.health.enabled {
            let first_round = self.health.interval * self.health.rise + self.health.timeout;
            let until = Instant::now() + first_round + Duration::from_secs(1);
            while Instant::now() < until {
                let t = self.switchboard.load();
                let mut live = vec![t.state.primary];
                if t.state.canary_bp > 0 {
                    live.push(t.state.canary_pool());
                }
                if live
                    .iter()
                    .all(|&id| t.pool(id).healthy_count() >= self.health.min_healthy)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let main_pid = self.upgrade.then(std::process::id);
        match crate::sd_notify::ready(main_pid) {
            Ok(true) => tracing::info!("told systemd the service is ready"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}"),
        }
    }
}
