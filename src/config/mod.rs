//! Configuration: a TOML file turned into a validated [`Config`].
//!
//! Loading happens in stages, as in linkerd2-proxy and sozu, and every stage but the first keeps
//! going after a problem, so an operator fixes a file in one pass:
//! 1. The text is parsed into a TOML tree that remembers where each key and value is. Only a syntax
//!    error stops here: without a tree there is nothing else to check.
//! 2. `raw` reads the tree key by key into structs that mirror the file, reporting unknown keys
//!    (with the keys the section does take) and values of the wrong type (naming the key).
//! 3. `validate` turns the mirror into a [`Config`] that has no "maybe" left in it: addresses,
//!    durations, ranges, duplicates, cross-references.
//! 4. [`Config::load`] (used by `check`, `serve` and a reload alike) also reads the side files the
//!    server will read, the admin tokens and the preview token, with the server's own parsers.
//!    [`Config::parse`] touches no file system.
//!
//! Every error is located (`file:line:col`) where the file allows, and they are reported in file
//! order.
//!
//! Layout: this module holds the types and the entry points; `raw.rs` the file's shape,
//! `validate.rs` the checks on its values.

mod raw;
mod rehearse;
mod state_backend;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use validate::Errors;

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
    /// Addresses the proxy listens on for client traffic in plain HTTP.
    pub listen: Vec<SocketAddr>,
    /// `[listen] https`: addresses the proxy listens on with TLS (ALPN `h2`, `http/1.1`).
    pub https: Vec<SocketAddr>,
    /// `[listen] h2c`: HTTP/2 with prior knowledge on the plain listeners (HTTP/1.1 still works
    /// there: the connection's first bytes tell them apart).
    pub h2c: bool,
    /// `[listen] redirect_to_https`: the plain listeners answer every request with a 308 to the
    /// same URL over https.
    pub redirect_to_https: bool,
    /// `[[tls.certificate]]`, in file order; the entry served when SNI matches none is marked.
    pub tls: Vec<CertificateConfig>,
    /// Clients (a TLS terminator, a load balancer) whose `X-Forwarded-Proto` is passed on; from
    /// anyone else it is replaced with `http`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a client has to send a whole request head once it has started; past it the
    /// request is answered 408 and the connection closed.
    pub header_timeout: Duration,
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
    pub dns: DnsConfig,
    pub faults: FaultsConfig,
    pub shadow: ShadowConfig,
    /// `[chatops]`: slash commands from a chat platform (chatops.rs); off when absent.
    pub chatops: Option<ChatopsConfig>,
}

/// `[chatops]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatopsConfig {
    /// Where the chat platform POSTs slash commands.
    pub listen: SocketAddr,
    /// The platform's signing secret (one line), read at start.
    pub signing_secret_file: PathBuf,
    /// Chat user id → the name recorded as the actor; nobody else may run a command.
    pub users: std::collections::BTreeMap<String, String>,
}

/// One `[[tls.certificate]]`: the files, read and checked by [`crate::tls`].
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// Served when the client's SNI matches no entry (exactly one entry is the default: the
    /// marked one, else the first).
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// The admin unix socket; always on, created mode 0600.
    pub socket: PathBuf,
    /// Optional TCP admin listener; only with a token file.
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// `[admin] socket_group`: the socket is then mode 0660 and owned by this group (its gid),
    /// so the members of a deploy group can use `ctl` without sudo.
    pub socket_group: Option<SocketGroup>,
}

/// A group the admin socket is shared with, resolved when the config is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` turns the endpoint off.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Holds `state.json` and `history.jsonl` (with etcd: this instance's copy of the last
    /// state it applied, for a start without etcd).
    pub dir: PathBuf,
    /// Where the routing state is shared: this instance's files, or a fleet's etcd.
    pub backend: StateBackend,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StateBackend {
    /// `state.json` and `history.jsonl` in `dir`: one instance.
    File,
    /// One routing state for a fleet of instances, in etcd (`store::etcd`).
    Etcd(Box<EtcdConfig>),
}

impl std::fmt::Display for StateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateBackend::File => write!(f, "file"),
            StateBackend::Etcd(e) => write!(f, "etcd {} fleet {}", e.endpoints.join(","), e.fleet),
        }
    }
}

/// `[state] backend = "etcd"`.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379`; tried in turn.
    pub endpoints: Vec<String>,
    /// The fleet's name: its keys live under `/switchyard/<fleet>/`.
    pub fleet: String,
    /// This instance's name in the fleet (default: the host name).
    pub instance: String,
    /// How long a silent instance stays in the fleet (its lease); also how fast a new leader
    /// takes over.
    pub lease_ttl: Duration,
    /// How long one call to etcd may take before etcd counts as down.
    pub timeout: Duration,
    pub user: Option<String>,
    /// A file holding the user's password (first line).
    pub password_file: Option<PathBuf>,
    /// PEM: the CA of etcd's certificate; a client certificate and its key.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// The backends written as IP:port.
    pub backends: Vec<SocketAddr>,
    /// The backends written as host:port: every A and AAAA record of the name is a backend,
    /// resolved in the background (see `dns`).
    pub names: Vec<DnsName>,
    /// How switchyard talks to the backends (and checks their health).
    pub protocol: UpstreamProtocol,
    /// `tls = true`: TLS to the backends, verified against the system roots or `ca_file`.
    pub tls: bool,
    /// The name sent as SNI and verified in the backends' certificates; default: the pool's
    /// first backend name (`host:port`), else each backend's IP address.
    pub sni: Option<String>,
    /// A PEM bundle of the CAs the backends' certificates are verified against, instead of the
    /// system roots.
    pub ca_file: Option<PathBuf>,
}

/// `[pools.<name>] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (gRPC backends without TLS).
    H2c,
    /// HTTP/2 over TLS, by ALPN (needs `tls = true`).
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// A backend entry that names a host rather than an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl DnsName {
    /// `host:port` where host is a DNS name (not an IP address: those parse as addresses).
    pub fn parse(text: &str) -> Option<DnsName> {
        let (host, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let labels: Vec<&str> = host.split('.').collect();
        // All-numeric last label: a mistyped IP address, not a name.
        let numeric_tld = labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if host.len() > 253 || numeric_tld || !labels.iter().all(|l| label_ok(l)) {
            return None;
        }
        Some(DnsName {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// `[faults]`: fault injection (`ctl faults`, see `crate::faults`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultsConfig {
    /// The longest a fault set may last: every set expires, this bounds how late.
    pub max_duration: Duration,
}

/// `[shadow]`: shadow traffic and its diff (`ctl shadow`, see `crate::shadow`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Copies waiting to be sent; when full, new copies are dropped and counted. Fixed at start.
    pub queue: usize,
    /// Copies in flight to the shadow colour at once. Fixed at start.
    pub concurrency: usize,
    /// Largest request or response body kept for a copy: a request whose body is larger is not
    /// mirrored, a response body beyond it is not compared.
    pub max_body: usize,
    /// Methods mirrored: GET and HEAD by default, since a copy of a POST may do things twice.
    pub methods: Vec<http::Method>,
    /// How long a copy may take before it counts as failed.
    pub timeout: Duration,
    /// The longest a shadow session may last.
    pub max_duration: Duration,
    pub compare_body: CompareBody,
    /// JSON fields ignored by `compare_body = "json"`, at any depth (timestamps, ids).
    pub ignore_fields: Vec<String>,
    /// Route patterns the report groups by (`/api/users/*`: `*` is one path segment, a trailing
    /// `**` the rest); a path matching none is grouped by its first segment.
    pub routes: Vec<String>,
    /// With a ratio set, a flip (or canary) to the shadowed colour is refused while its
    /// mismatch ratio is above it (unless forced).
    pub max_mismatch_ratio: Option<f64>,
    /// Pairs compared before the mismatch ratio is judged.
    pub min_compared: u64,
}

/// How response bodies are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareBody {
    /// Status class and latency only.
    None,
    /// Byte for byte.
    Exact,
    /// As JSON values, without the `ignore_fields`; a body that is not JSON is compared exactly.
    Json,
}

/// `[dns]`: how backend names are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Resolvers to ask instead of the system's (`/etc/resolv.conf`); UDP with TCP fallback.
    pub servers: Vec<SocketAddr>,
    /// How often every name is resolved again (sooner when a record's TTL is shorter).
    pub refresh: Duration,
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
    /// When a pooled connection idle past `idle_timeout` is closed: see [`IdleClose`].
    pub idle_close: IdleClose,
}

/// `[upstream] idle_close`: when a pooled upstream connection that has been idle longer than
/// `idle_timeout` is closed. Either way it is never reused after that.
///
/// `on_reuse` (the default): when the pool next looks at it (the next request for that backend)
/// or evicts it. Nothing watches an idle connection, which saves a task spawned and woken for
/// every request (~4 % of switchyard's instructions per request; pingora patch 13), but one the
/// backend closed waits in CLOSE_WAIT until then, and a backend without an idle timeout of its
/// own keeps it open until then (at most the pool's 128 connections per worker). `on_timeout`:
/// a task per pooled connection closes it when `idle_timeout` passes (pingora's default), for
/// backends that hold a thread per open connection and never time one out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleClose {
    #[default]
    OnReuse,
    OnTimeout,
}

impl IdleClose {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleClose::OnReuse => "on_reuse",
            IdleClose::OnTimeout => "on_timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub enabled: bool,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_ratio: f64,
    pub max_p99: Option<Duration>,
    pub watch_after_flip: Duration,
    /// The guard judges a colour only after watching it this long (besides `min_requests`):
    /// a burst of requests in the first second after a change is not enough evidence.
    pub min_duration: Duration,
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
    /// How HTTP/1 header field names are passed on: see [`HeaderCase`].
    pub header_case: HeaderCase,
}

/// `[server] header_case`: whether HTTP/1 header names keep the case the client (for requests)
/// or the backend (for responses) wrote them in.
///
/// `canonical` (the default) reads headers without keeping the original case, so names are
/// passed on in one spelling whatever the sender wrote: a dozen common standard names
/// title-cased as pingora writes them (`Host`, `Content-Type`, `Content-Length`, `Date`,
/// `Connection`, `Server`, `Set-Cookie`, ...), every other name lowercase, much as HAProxy and
/// Envoy normalise names by default (and HTTP/2 always does). Names are case-insensitive
/// (RFC 9110 §5.1), and keeping their case costs a second map of every header per request:
/// about 8.5 k of the ~99 k instructions switchyard spent per proxied request (pingora patch 12,
/// benches/RESULTS.md). `preserve` keeps it, as nginx does, for an application that (wrongly)
/// compares names case-sensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCase {
    #[default]
    Canonical,
    Preserve,
}

impl HeaderCase {
    pub fn preserve(self) -> bool {
        self == HeaderCase::Preserve
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HeaderCase::Canonical => "canonical",
            HeaderCase::Preserve => "preserve",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// One line per request (pool, backend, status, duration). Off by default: at full load it
    /// costs more than the proxying itself, and metrics already carry the aggregate.
    pub access: bool,
    /// `text` (one human line per event) or `json` (one JSON object per line, for shippers).
    pub format: LogFormat,
    /// Whether each line carries a timestamp; off under journald, which adds its own.
    pub timestamps: bool,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access: false,
            format: LogFormat::Text,
            timestamps: true,
        }
    }
}

/// Notification event names a webhook may subscribe to.
pub const EVENT_KINDS: &[&str] = &[
    "flip", "canary", "promote", "rollback", "guard", "rollout", "reload", "impact", "faults",
    "shadow",
];

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
    /// Reads and validates the file at `path`, and checks the side files it names (token files)
    /// exactly as the server will read them.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    file: name,
                    location: None,
                    message: format!("cannot read the config file: {e}"),
                }]))
            }
        };
        let mut errs = Errors::new(&text, &name);
        let config = stages(&mut errs);
        // Checked even when the file has other errors: everything is reported in one pass.
        for side in std::mem::take(&mut errs.side_files) {
            if let Some(message) = side.check() {
                errs.list.push(ConfigError {
                    file: name.clone(),
                    location: side.location,
                    message,
                });
            }
        }
        finish(config, errs.list)
    }

    /// Parses and validates `text`; `file` names it in error messages. Side files are not read.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::new(text, file);
        let config = stages(&mut errs);
        finish(config, errs.list)
    }

    /// A one-line description, printed by `check` and at start-up.
    pub fn summary(&self) -> String {
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| format!("{} ({} backends)", p.name, p.backends.len()))
            .collect();
        let mut listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        listen.extend(self.https.iter().map(|a| format!("{a} (https)")));
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

/// Parses, reads and validates `errs`'s text: the configuration, or `None` with the errors in `errs`.
fn stages(errs: &mut Errors<'_>) -> Option<Config> {
    let doc = match toml_edit::ImDocument::parse(errs.text()) {
        Ok(doc) => doc,
        Err(e) => {
            errs.at_span(e.span(), e.message().trim().to_string());
            return None;
        }
    };
    let raw = raw::read(doc.as_table(), errs);
    validate::validate(raw, errs)
}

/// The configuration, or every error in file order (by line, then column; unlocated ones last).
fn finish(config: Option<Config>, mut list: Vec<ConfigError>) -> Result<Config, ConfigErrors> {
    match config {
        Some(config) if list.is_empty() => Ok(config),
        _ => {
            debug_assert!(!list.is_empty(), "no configuration and no error");
            list.sort_by_key(|e| e.location.unwrap_or((usize::MAX, usize::MAX)));
            Err(ConfigErrors(list))
        }
    }
}

/// Which file the server reads besides the configuration, and so which parser checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SideFileKind {
    /// `[admin] token_file`, read by [`crate::admin::http::Tokens::load`].
    AdminTokens,
    /// `[routing] preview_token_file`, read by [`crate::preview::PreviewKey::load`].
    PreviewToken,
    /// `[[tls.certificate]] cert` (with its `key`), read by [`crate::tls::cert::load`].
    Certificate { key: PathBuf },
    /// `[pools.<name>] ca_file`, read by [`crate::tls::upstream::load_ca`].
    CaFile,
    /// `[chatops] signing_secret_file`, read by [`crate::chatops::SigningSecret::load`].
    ChatSecret,
}

/// A file a configuration names that the server will read at start-up (and at a reload).
#[derive(Debug, Clone)]
struct SideFile {
    kind: SideFileKind,
    path: PathBuf,
    /// Where the key naming it is.
    location: Option<(usize, usize)>,
}

impl SideFile {
    /// Why the server would refuse the file, if it would. The server's own loaders are used, so
    /// the rules cannot drift apart.
    fn check(&self) -> Option<String> {
        match self.kind {
            SideFileKind::AdminTokens => crate::admin::http::Tokens::load(&self.path)
                .err()
                .map(|e| format!("[admin] token_file: {e}")),
            SideFileKind::PreviewToken => crate::preview::PreviewKey::load(&self.path)
                .err()
                .map(|e| format!("[routing] preview_token_file: {e}")),
            SideFileKind::Certificate { ref key } => {
                crate::tls::cert::load(&self.path, key, std::time::SystemTime::now())
                    .err()
                    .map(|e| format!("[[tls.certificate]]: {e}"))
            }
            SideFileKind::CaFile => crate::tls::upstream::load_ca(&self.path)
                .err()
                .map(|e| format!("ca_file: {e}")),
            SideFileKind::ChatSecret => crate::chatops::SigningSecret::load(&self.path)
                .err()
                .map(|e| format!("[chatops] signing_secret_file: {e}")),
        }
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

/// Whether `name` is a valid pool name: `[a-z][a-z0-9-]{0,31}`.
pub fn valid_pool_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

/// Defaults for everything the file may leave out, each with the reason it is what it is.
pub mod defaults {
    use std::time::Duration;

    /// Loopback, so an unconfigured proxy is not exposed by accident.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// Half nginx's `client_header_timeout` (60 s), three times HAProxy's usual
    /// `timeout http-request` (10 s): a real client sends its head in one packet or a few
    /// round trips, while a client trickling it is cut well before it can pile up.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Under systemd's `RuntimeDirectory=switchyard`.
    pub const ADMIN_SOCKET: &str = "/run/switchyard/admin.sock";
    /// Loopback: metrics reveal traffic shape and should not be public by default.
    pub const METRICS_LISTEN: &str = "127.0.0.1:9901";
    /// Under systemd's `StateDirectory=switchyard`.
    pub const STATE_DIR: &str = "/var/lib/switchyard";
    /// A dead instance leaves the fleet, and a new leader takes over, within this.
    pub const LEASE_TTL: Duration = Duration::from_secs(10);
    /// One call to etcd; past it etcd counts as down and changes are refused (503).
    pub const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// Pooled upstream connections live this long when idle. It must stay below the backends'
    /// own keep-alive timeout, or a pooled connection is reused just as the backend closes it:
    /// a GET is retried, a POST gets 502. Common app servers keep idle connections 2 s
    /// (gunicorn) or 5 s (Node.js, uvicorn); 1 s is half the shortest, so the backend's close
    /// never meets a reuse, while a busy backend's connections, reused within milliseconds, are
    /// kept all the same. Set it higher only for backends known to keep connections longer.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const GUARD_WINDOW: Duration = Duration::from_secs(30);
    pub const MIN_REQUESTS: u64 = 50;
    pub const MAX_ERROR_RATIO: f64 = 0.05;
    pub const WATCH_AFTER_FLIP: Duration = Duration::from_secs(300);
    /// The guard watches a new colour for 10 s before judging it: several health-check intervals
    /// and long enough that a cold start (empty connection pools, caches warming) is not judged
    /// on its first burst, short enough that a real breach costs at most ~10 s of errors at the
    /// new colour's share. Set it lower (even "0s") where traffic is high and steady.
    pub const GUARD_MIN_DURATION: Duration = Duration::from_secs(10);
    /// A chat webhook answers in well under a second; five covers a slow day without letting a
    /// dead hook hold up the next notification for long.
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    /// Re-resolve backend names every 5 s: an autoscaled instance is in the pool within seconds,
    /// and a few queries per name per minute cost a resolver nothing.
    pub const DNS_REFRESH: Duration = Duration::from_secs(5);
    /// Long enough for ordinary requests to finish, short enough for a deploy to move on.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
    /// A fault set lasts an hour at most unless the config allows more: a forgotten one ends
    /// the same day.
    pub const FAULTS_MAX_DURATION: Duration = Duration::from_secs(3600);
    /// 1 024 copies waiting (at most 1 024 × 2 × `max_body` held) before copies are dropped.
    pub const SHADOW_QUEUE: usize = 1024;
    /// 16 copies in flight: enough for a few thousand copies a second to a backend answering
    /// in a few milliseconds, few enough not to flood an idle colour that is still warming.
    pub const SHADOW_CONCURRENCY: usize = 16;
    /// 64 KiB: API answers fit, downloads are not held in memory twice.
    pub const SHADOW_MAX_BODY: usize = 64 * 1024;
    pub const SHADOW_TIMEOUT: Duration = Duration::from_secs(5);
    /// A day: shadowing is safe to leave on for a release's soak, not forever.
    pub const SHADOW_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
    pub const SHADOW_MIN_COMPARED: u64 = 100;
}
