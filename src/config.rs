//! Configuration: a TOML file turned into a validated [`Config`].
//!
//! Loading happens in two stages, as in linkerd2-proxy and sozu. First the text is deserialised into
//! `raw` structs that mirror the file exactly (`deny_unknown_fields`, values that need checking kept
//! as [`Spanned`] strings so every later error can point at its line). Then [`validate`] turns the
//! mirror into a [`Config`] that has no "maybe" left in it, collecting *every* problem instead of
//! stopping at the first, so an operator fixes a file in one pass.
//!
//! A syntax error, a wrong type or an unknown key stops the first stage, and serde can only report
//! that one; everything the file gets wrong beyond its shape is reported together.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Where `switchyard serve` and `check` look when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/switchyard/switchyard.toml";

/// The number of pools: blue/green means exactly two colours.
pub const POOL_COUNT: usize = 2;

/// The longest duration any setting accepts: far beyond any sane value, and small enough that
/// deadlines computed from it never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most basis points a canary can have: 10 000 bp = 100 %.
pub const MAX_BP: u32 = 10_000;

/// A validated configuration. Every field is usable as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Addresses the proxy listens on for client traffic.
    pub listen: Vec<SocketAddr>,
    /// Clients (a TLS terminator, a load balancer) whose `X-Forwarded-Proto` is passed on; from
    /// anyone else it is replaced with `http`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub state: StateConfig,
    /// Exactly two pools, sorted by name so that pool indices are stable across restarts.
    pub pools: [PoolConfig; POOL_COUNT],
    pub health: HealthConfig,
    pub routing: RoutingConfig,
    pub upstream: UpstreamConfig,
    pub guard: GuardConfig,
    pub notify: Vec<WebhookConfig>,
    pub shutdown: ShutdownConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// The admin unix socket; always on, created mode 0600.
    pub socket: PathBuf,
    /// Optional TCP admin listener; only with a token file.
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` turns the endpoint off.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Holds `state.json` and `history.jsonl`.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// With checks off, every backend is taken as healthy (for setups where something else
    /// checks the backends); with checks on (the default), backends start unhealthy.
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub min_healthy: usize,
}

/// How a request is keyed for sticky canary assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The `sy_uid` cookie, set by the proxy when absent.
    Cookie,
    /// The value of a request header (e.g. a user id set by an auth layer).
    Header(http::HeaderName),
    /// The client IP address.
    Ip,
    /// No stickiness: the split is per request.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Index into [`Config::pools`] of the primary pool used when no state file exists.
    pub initial_primary: usize,
    pub sticky: Sticky,
    pub response_header: bool,
    pub preview_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub enabled: bool,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_ratio: f64,
    pub max_p99: Option<Duration>,
    pub watch_after_flip: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Slack,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: http::Uri,
    pub format: WebhookFormat,
    pub events: Vec<String>,
    /// Time limit of one delivery attempt.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Proxy worker threads; 0 in the file means one per core, resolved here.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// One line per request (pool, backend, status, duration). Off by default: at full load it
    /// costs more than the proxying itself, and metrics already carry the aggregate.
    pub access: bool,
}

/// Notification event names a webhook may subscribe to.
pub const EVENT_KINDS: &[&str] = &["flip", "canary", "promote", "rollback", "guard", "rollout"];

/// One problem in a configuration file, with its location when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when the problem can be pinned to a place in the file.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &name),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: name,
                location: None,
                message: format!("cannot read the config file: {e}"),
            }])),
        }
    }

    /// Parses and validates `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let raw: raw::File = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                location: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            }])
        })?;
        validate(raw, text, file)
    }

    /// A one-line description, printed by `check` and at start-up.
    pub fn summary(&self) -> String {
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| format!("{} ({} backends)", p.name, p.backends.len()))
            .collect();
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        format!(
            "listen {}; pools {}; initial primary {}; admin {}",
            listen.join(", "),
            pools.join(" and "),
            self.pools[self.routing.initial_primary].name,
            self.admin.socket.display()
        )
    }

    /// The index of the pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Collects errors against one file.
struct Errors<'a> {
    text: &'a str,
    file: &'a str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: String) {
        let location = Some(line_col(self.text, spanned.span().start));
        self.list.push(ConfigError {
            file: self.file.to_string(),
            location,
            message,
        });
    }

    fn general(&mut self, message: String) {
        self.list.push(ConfigError {
            file: self.file.to_string(),
            location: None,
            message,
        });
    }

    /// A network (`10.0.0.0/8`) or a single address (`192.0.2.7`, taken as `/32` or `/128`).
    fn network(&mut self, s: &Spanned<String>) -> Option<ipnet::IpNet> {
        let text = s.get_ref().trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| text.parse::<std::net::IpAddr>().ok().map(Into::into));
        if parsed.is_none() {
            self.at(
                s,
                format!(
                    "[listen] trusted_proxies entry `{text}` is not an IP address or network \
                     (write e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)"
                ),
            );
        }
        parsed.map(|n| n.trunc())
    }

    fn addr(&mut self, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is not an IP:port address (hostnames are not resolved; \
                         write e.g. 127.0.0.1:8000 or [::1]:8000)",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is longer than 7 days; no setting needs that",
                        s.get_ref()
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is not a duration ({e}); write e.g. \"250ms\", \"2s\" or \"5m\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn positive_duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        let d = self.duration(s, what)?;
        if d.is_zero() {
            self.at(s, format!("{what} must be greater than zero"));
            return None;
        }
        Some(d)
    }
}

/// Whether `name` is a valid pool name: `[a-z][a-z0-9-]{0,31}`.
pub fn valid_pool_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

fn validate(raw: raw::File, text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut errs = Errors {
        text,
        file,
        list: Vec::new(),
    };

    // [listen]
    let listen_raw = raw.listen.unwrap_or_default();
    let listen: Vec<SocketAddr> = match &listen_raw.http {
        Some(list) => list
            .iter()
            .filter_map(|a| errs.addr(a, "listen address"))
            .collect(),
        None => vec![defaults::LISTEN.parse().expect("valid default")],
    };
    if listen_raw.http.as_ref().is_some_and(|l| l.is_empty()) {
        errs.general(
            "[listen] http is empty; give at least one address such as \"0.0.0.0:8080\"".into(),
        );
    }
    for (i, a) in listen.iter().enumerate() {
        if listen[..i].contains(a) {
            errs.general(format!("[listen] http lists {a} twice"));
        }
    }
    let trusted_proxies: Vec<ipnet::IpNet> = listen_raw
        .trusted_proxies
        .iter()
        .flatten()
        .filter_map(|n| errs.network(n))
        .collect();

    // [admin]
    let admin_raw = raw.admin.unwrap_or_default();
    let admin_listen = admin_raw
        .listen
        .as_ref()
        .and_then(|a| errs.addr(a, "admin listen address"));
    if let (Some(l), None) = (&admin_raw.listen, &admin_raw.token_file) {
        errs.at(
            l,
            "[admin] listen is set but token_file is not; the TCP admin API needs a bearer token \
             (add token_file = \"/etc/switchyard/admin.token\")"
                .into(),
        );
    }
    let admin = AdminConfig {
        socket: admin_raw
            .socket
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(defaults::ADMIN_SOCKET)),
        listen: admin_listen,
        token_file: admin_raw.token_file.map(PathBuf::from),
    };

    // [metrics]
    let metrics = match raw.metrics {
        Some(m) => MetricsConfig {
            listen: m
                .listen
                .as_ref()
                .and_then(|a| errs.addr(a, "metrics listen address")),
        },
        None => MetricsConfig {
            listen: Some(defaults::METRICS_LISTEN.parse().expect("valid default")),
        },
    };

    // [state]
    let state = StateConfig {
        dir: raw
            .state
            .and_then(|s| s.dir)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
    };

    // [pools.*]
    let mut pools = Vec::new();
    match &raw.pools {
        None => errs.general(
            "no [pools] section; define exactly two pools, e.g. [pools.blue] and [pools.green]"
                .into(),
        ),
        Some(map) => {
            if map.len() != POOL_COUNT {
                let names: Vec<&str> = map.keys().map(String::as_str).collect();
                errs.general(format!(
                    "exactly two pools are needed, found {} ({}); define e.g. [pools.blue] and [pools.green]",
                    map.len(),
                    names.join(", ")
                ));
            }
            for (name, pool) in map {
                if !valid_pool_name(name) {
                    errs.at(
                        &pool.backends,
                        format!(
                            "pool name `{name}` is not valid: use a lowercase letter followed by up \
                             to 31 lowercase letters, digits or '-'"
                        ),
                    );
                }
                if pool.backends.get_ref().is_empty() {
                    errs.at(
                        &pool.backends,
                        format!("pool `{name}` has no backends; list at least one IP:port"),
                    );
                }
                let mut backends: Vec<SocketAddr> = Vec::new();
                for b in pool.backends.get_ref() {
                    if let Some(addr) = errs.addr(b, &format!("pool `{name}` backend")) {
                        if backends.contains(&addr) {
                            errs.at(b, format!("pool `{name}` lists backend {addr} twice"));
                        } else {
                            backends.push(addr);
                        }
                    }
                }
                pools.push(PoolConfig {
                    name: name.clone(),
                    backends,
                });
            }
        }
    }

    // [health]
    let h = raw.health.unwrap_or_default();
    let health = HealthConfig {
        enabled: h.enabled.unwrap_or(true),
        path: h
            .path
            .as_ref()
            .map_or(defaults::HEALTH_PATH.to_string(), |p| {
                if !p.get_ref().starts_with('/') {
                    errs.at(
                        p,
                        format!("health path `{}` must start with '/'", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }),
        interval: h
            .interval
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "health interval"))
            .unwrap_or(defaults::HEALTH_INTERVAL),
        timeout: h
            .timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "health timeout"))
            .unwrap_or(defaults::HEALTH_TIMEOUT),
        rise: positive_u32(
            &mut errs,
            h.rise.as_ref(),
            "health rise",
            defaults::HEALTH_RISE,
        ),
        fall: positive_u32(
            &mut errs,
            h.fall.as_ref(),
            "health fall",
            defaults::HEALTH_FALL,
        ),
        min_healthy: h
            .min_healthy
            .as_ref()
            .map_or(defaults::MIN_HEALTHY, |m| *m.get_ref()),
    };
    if let Some(mh) = &h.min_healthy {
        if let Some(smallest) = pools.iter().map(|p| p.backends.len()).min() {
            if health.min_healthy > smallest && smallest > 0 {
                errs.at(
                    mh,
                    format!(
                        "health min_healthy = {} but a pool has only {smallest} backends, so it \
                         could never be ready; lower min_healthy or add backends",
                        health.min_healthy
                    ),
                );
            }
        }
    }

    // [routing]
    let r = raw.routing.unwrap_or_default();
    let initial_primary = match &r.initial_primary {
        Some(p) => match pools.iter().position(|pool| &pool.name == p.get_ref()) {
            Some(i) => i,
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                errs.at(
                    p,
                    format!(
                        "initial_primary `{}` is not a pool; choose one of: {}",
                        p.get_ref(),
                        names.join(", ")
                    ),
                );
                0
            }
        },
        None => 0,
    };
    let sticky = match &r.sticky {
        None => Sticky::Cookie,
        Some(s) => match s.get_ref().as_str() {
            "cookie" => Sticky::Cookie,
            "ip" => Sticky::Ip,
            "none" => Sticky::None,
            other => match other.strip_prefix("header:") {
                Some(h) => match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    Ok(name) => Sticky::Header(name),
                    Err(_) => {
                        errs.at(
                            s,
                            format!("sticky header name `{h}` is not a valid header name"),
                        );
                        Sticky::Cookie
                    }
                },
                None => {
                    errs.at(
                        s,
                        format!(
                            "sticky `{other}` is not one of \"cookie\", \"header:<name>\", \"ip\", \"none\""
                        ),
                    );
                    Sticky::Cookie
                }
            },
        },
    };
    let routing = RoutingConfig {
        initial_primary,
        sticky,
        response_header: r.response_header.unwrap_or(true),
        preview_token_file: r.preview_token_file.map(PathBuf::from),
    };

    // [upstream]
    let u = raw.upstream.unwrap_or_default();
    let upstream = UpstreamConfig {
        connect_timeout: u
            .connect_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream connect_timeout"))
            .unwrap_or(defaults::CONNECT_TIMEOUT),
        read_timeout: u
            .read_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream read_timeout"))
            .unwrap_or(defaults::READ_TIMEOUT),
        write_timeout: u
            .write_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream write_timeout"))
            .unwrap_or(defaults::WRITE_TIMEOUT),
        idle_timeout: u
            .idle_timeout
            .as_ref()
            .and_then(|d| errs.duration(d, "upstream idle_timeout"))
            .unwrap_or(defaults::IDLE_TIMEOUT),
    };

    // [guard]
    let g = raw.guard.unwrap_or_default();
    let max_error_ratio = match &g.max_error_ratio {
        Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
            errs.at(
                r,
                format!(
                    "guard max_error_ratio {} must be between 0 and 1 (0.05 means 5 %)",
                    r.get_ref()
                ),
            );
            defaults::MAX_ERROR_RATIO
        }
        Some(r) => *r.get_ref(),
        None => defaults::MAX_ERROR_RATIO,
    };
    let guard = GuardConfig {
        enabled: g.enabled.unwrap_or(true),
        window: g
            .window
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "guard window"))
            .unwrap_or(defaults::GUARD_WINDOW),
        min_requests: g.min_requests.unwrap_or(defaults::MIN_REQUESTS),
        max_error_ratio,
        max_p99: g
            .max_p99
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "guard max_p99")),
        watch_after_flip: g
            .watch_after_flip
            .as_ref()
            .and_then(|d| errs.duration(d, "guard watch_after_flip"))
            .unwrap_or(defaults::WATCH_AFTER_FLIP),
    };

    // [[notify.webhook]]
    let mut notify = Vec::new();
    for w in raw.notify.map(|n| n.webhook).unwrap_or_default() {
        let url = match w.url.get_ref().parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() =>
            {
                Some(u)
            }
            _ => {
                errs.at(
                    &w.url,
                    format!(
                        "webhook url `{}` is not an http:// or https:// URL",
                        w.url.get_ref()
                    ),
                );
                None
            }
        };
        let format = match w.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("slack") => WebhookFormat::Slack,
            Some("json") => WebhookFormat::Json,
            Some(other) => {
                if let Some(f) = &w.format {
                    errs.at(
                        f,
                        format!("webhook format `{other}` is not \"slack\" or \"json\""),
                    );
                }
                WebhookFormat::Slack
            }
        };
        let events: Vec<String> = match &w.events {
            None => EVENT_KINDS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                for e in list.get_ref() {
                    if !EVENT_KINDS.contains(&e.as_str()) {
                        errs.at(
                            list,
                            format!(
                                "webhook event `{e}` is not one of: {}",
                                EVENT_KINDS.join(", ")
                            ),
                        );
                    }
                }
                list.get_ref().clone()
            }
        };
        let timeout = w
            .timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "webhook timeout"))
            .unwrap_or(defaults::WEBHOOK_TIMEOUT);
        if let Some(url) = url {
            notify.push(WebhookConfig {
                url,
                format,
                events,
                timeout,
            });
        }
    }

    // [shutdown], [server], [log]
    let shutdown = ShutdownConfig {
        grace_period: raw
            .shutdown
            .and_then(|s| s.grace_period)
            .as_ref()
            .and_then(|d| errs.duration(d, "shutdown grace_period"))
            .unwrap_or(defaults::GRACE_PERIOD),
    };
    let threads = raw.server.and_then(|s| s.threads).unwrap_or(0);
    let server = ServerConfig {
        threads: if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        },
    };
    let log = LogConfig {
        access: raw.log.and_then(|l| l.access).unwrap_or(false),
    };

    // Every listener needs its own port: a shared one would let a start-up check pass against
    // the wrong service.
    let mut taken: Vec<(SocketAddr, &str)> = listen.iter().map(|a| (*a, "[listen] http")).collect();
    taken.extend(admin.listen.map(|a| (a, "[admin] listen")));
    taken.extend(metrics.listen.map(|a| (a, "[metrics] listen")));
    for (i, (a, what)) in taken.iter().enumerate() {
        for (b, other) in &taken[..i] {
            let overlap = a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
            if overlap && what != other {
                errs.general(format!(
                    "{what} {a} and {other} {b} use the same port; give each listener its own"
                ));
            }
        }
    }

    if !errs.list.is_empty() {
        return Err(ConfigErrors(errs.list));
    }
    let pools: [PoolConfig; POOL_COUNT] = match pools.try_into() {
        Ok(p) => p,
        Err(_) => unreachable!("pool count was checked above"),
    };
    Ok(Config {
        listen,
        trusted_proxies,
        admin,
        metrics,
        state,
        pools,
        health,
        routing,
        upstream,
        guard,
        notify,
        shutdown,
        server,
        log,
    })
}

fn positive_u32(errs: &mut Errors<'_>, v: Option<&Spanned<u32>>, what: &str, default: u32) -> u32 {
    match v {
        Some(n) if *n.get_ref() == 0 => {
            errs.at(n, format!("{what} must be at least 1"));
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    }
}

/// Defaults for everything the file may leave out, each with the reason it is what it is.
pub mod defaults {
    use std::time::Duration;

    /// Loopback, so an unconfigured proxy is not exposed by accident.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// Under systemd's `RuntimeDirectory=switchyard`.
    pub const ADMIN_SOCKET: &str = "/run/switchyard/admin.sock";
    /// Loopback: metrics reveal traffic shape and should not be public by default.
    pub const METRICS_LISTEN: &str = "127.0.0.1:9901";
    /// Under systemd's `StateDirectory=switchyard`.
    pub const STATE_DIR: &str = "/var/lib/switchyard";
    pub const HEALTH_PATH: &str = "/healthz";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    /// HAProxy's defaults: two passes to trust a backend, three failures to drop it.
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 3;
    pub const MIN_HEALTHY: usize = 1;
    /// A dead backend must fail fast; a live one on a LAN connects in well under a second.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    /// Pooled upstream connections live this long when idle; keep it below the backends' own
    /// keep-alive timeout to avoid reusing a connection the backend is closing.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const GUARD_WINDOW: Duration = Duration::from_secs(30);
    pub const MIN_REQUESTS: u64 = 50;
    pub const MAX_ERROR_RATIO: f64 = 0.05;
    pub const WATCH_AFTER_FLIP: Duration = Duration::from_secs(300);
    /// A chat webhook answers in well under a second; five covers a slow day without letting a
    /// dead hook hold up the next notification for long.
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    /// Long enough for ordinary requests to finish, short enough for a deploy to move on.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
}

/// The serde mirror of the file. Nothing here is trusted; [`validate`] checks it all.
mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub listen: Option<Listen>,
        pub admin: Option<Admin>,
        pub metrics: Option<Metrics>,
        pub state: Option<State>,
        pub pools: Option<BTreeMap<String, Pool>>,
        pub health: Option<Health>,
        pub routing: Option<Routing>,
        pub upstream: Option<Upstream>,
        pub guard: Option<Guard>,
        pub notify: Option<Notify>,
        pub shutdown: Option<Shutdown>,
        pub server: Option<Server>,
        pub log: Option<Log>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Listen {
        pub http: Option<Vec<Spanned<String>>>,
        pub trusted_proxies: Option<Vec<Spanned<String>>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub socket: Option<String>,
        pub listen: Option<Spanned<String>>,
        pub token_file: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Metrics {
        pub listen: Option<Spanned<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct State {
        pub dir: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        pub backends: Spanned<Vec<Spanned<String>>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub enabled: Option<bool>,
        pub path: Option<Spanned<String>>,
        pub interval: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub rise: Option<Spanned<u32>>,
        pub fall: Option<Spanned<u32>>,
        pub min_healthy: Option<Spanned<usize>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Routing {
        pub initial_primary: Option<Spanned<String>>,
        pub sticky: Option<Spanned<String>>,
        pub response_header: Option<bool>,
        pub preview_token_file: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub connect_timeout: Option<Spanned<String>>,
        pub read_timeout: Option<Spanned<String>>,
        pub write_timeout: Option<Spanned<String>>,
        pub idle_timeout: Option<Spanned<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Guard {
        pub enabled: Option<bool>,
        pub window: Option<Spanned<String>>,
        pub min_requests: Option<u64>,
        pub max_error_ratio: Option<Spanned<f64>>,
        pub max_p99: Option<Spanned<String>>,
        pub watch_after_flip: Option<Spanned<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Notify {
        #[serde(default)]
        pub webhook: Vec<Webhook>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Webhook {
        pub url: Spanned<String>,
        pub format: Option<Spanned<String>>,
        pub events: Option<Spanned<Vec<String>>>,
        pub timeout: Option<Spanned<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Shutdown {
        pub grace_period: Option<Spanned<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub threads: Option<usize>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub access: Option<bool>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let text =
            format!("{MINIMAL}[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n");
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
            errs[0].message.contains("unknown field `stickyness`"),
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
        let text = include_str!("../config/switchyard.toml");
        if let Err(e) = Config::parse(text, "config/switchyard.toml") {
            panic!("{e}");
        }
    }
}
