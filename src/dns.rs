//! Backends from DNS: a pool member written as `host:port` stands for every A and AAAA record of
//! the name.
//!
//! Names are resolved in the background, at start and then every `[dns] refresh` (sooner when a
//! record's TTL is shorter, never more often than [`TTL_FLOOR`]), and never on the request path:
//! pingora's `HttpPeer` panics on a lookup failure (pingora#921), and a lookup per request would
//! put the resolver's latency in front of every client.
//!
//! This module only resolves and remembers; it does not change pools. When a name's set of
//! addresses changes, the watcher calls back into the admin handler, which applies the new members
//! through the same code as a configuration reload (kept backends keep their health and pooled
//! connections, new ones start unhealthy, removed ones finish what is in flight, and the health
//! gate keeps a serving pool at `min_healthy`).
//!
//! A failed lookup (timeout, SERVFAIL, NXDOMAIN) or an empty answer keeps the last good set: a
//! resolver outage must not empty a pool. It is logged once per episode and counted in
//! `switchyard_dns_failures_total{name}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Config, DnsConfig, DnsName};
use crate::metrics::Metrics;

/// The shortest time between two lookups of one name, whatever its TTL says (a TTL of 0 would
/// otherwise mean a lookup loop).
pub const TTL_FLOOR: Duration = Duration::from_secs(1);
/// How long one lookup may take, all attempts included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a name gave no usable addresses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    Failed(String),
    #[error("no A or AAAA record")]
    Empty,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One successful lookup.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
    /// The records' remaining lifetime.
    pub ttl: Duration,
}

/// A resolver for backend names, built from `[dns]`.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The system's resolvers (`/etc/resolv.conf`), or `servers` when given (UDP, and TCP for
    /// truncated answers). No cache: every refresh asks the server, so a changed record is seen
    /// at the next refresh rather than when a cached TTL runs out.
    pub fn new(config: &DnsConfig) -> Result<Resolver, LookupError> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                LookupError::Failed(format!(
                    "cannot read the system's resolver configuration: {e}; set [dns] servers"
                ))
            })?
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in &config.servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = LOOKUP_TIMEOUT / 2;
        opts.attempts = 2;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are written fully qualified or relative to the search list as the system's
        // resolver would take them; a single-label name is not expanded with search domains.
        opts.ndots = 1;
        Ok(Resolver {
            inner: builder.build(),
        })
    }

    /// Every A and AAAA record of `name`, with its port.
    pub async fn lookup(&self, name: &DnsName) -> Result<Answer, LookupError> {
        let query = format!("{}.", name.host);
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.inner.lookup_ip(query.as_str()))
            .await
            .map_err(|_| LookupError::Timeout(LOOKUP_TIMEOUT))?;
        let found = match lookup {
            Ok(found) => found,
            Err(e) if e.is_no_records_found() => return Err(LookupError::Empty),
            Err(e) => return Err(LookupError::Failed(e.to_string())),
        };
        let ttl = found
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let addrs: BTreeSet<SocketAddr> = found
            .iter()
            .map(|ip| SocketAddr::new(ip, name.port))
            .collect();
        if addrs.is_empty() {
            return Err(LookupError::Empty);
        }
        Ok(Answer {
            addrs: addrs.into_iter().collect(),
            ttl,
        })
    }
}

/// What is known of one name.
#[derive(Debug, Clone)]
struct Entry {
    /// The last good set (empty until the first good lookup).
    addrs: Vec<SocketAddr>,
    resolved_at: Option<SystemTime>,
    next: Instant,
    /// The current failure episode, if the last lookup failed.
    error: Option<String>,
}

/// Lookups of several names, each with its outcome.
pub type Lookups = Vec<(DnsName, Result<Answer, LookupError>)>;

/// A name as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NameStatus {
    pub name: String,
    pub backends: Vec<String>,
    /// RFC 3339; none before the first good lookup.
    pub resolved_at: Option<String>,
    pub next_refresh_in_s: f64,
    /// Why the last lookup failed (the set shown is the last good one).
    pub error: Option<String>,
}

/// The names of every pool, what they resolved to, and when to look again. Shared by the watcher
/// (which resolves), the admin handler (which builds pools from it) and status.
pub struct Names {
    /// `[dns]` in force. Each round of lookups builds its resolver from it (and from
    /// /etc/resolv.conf as it is then), so nothing is tied to one runtime or to stale settings.
    config: ArcSwap<DnsConfig>,
    entries: Mutex<BTreeMap<DnsName, Entry>>,
    wake: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl Names {
    /// The names of `config`'s pools, none resolved yet.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Names> {
        let names = Arc::new(Names {
            config: ArcSwap::from_pointee(config.dns.clone()),
            entries: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            metrics,
        });
        names.set(config);
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DnsName, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a new configuration: keeps what is known of names still listed, adds new ones
    /// (due at once), forgets the rest, and takes new `[dns]` settings.
    pub fn set(&self, config: &Config) {
        self.config.store(Arc::new(config.dns.clone()));
        let wanted: BTreeSet<&DnsName> = config.pools.iter().flat_map(|p| &p.names).collect();
        let mut entries = self.lock();
        entries.retain(|n, _| wanted.contains(n));
        for name in wanted {
            entries.entry(name.clone()).or_insert_with(|| {
                self.metrics.dns_names(&name.to_string());
                Entry {
                    addrs: Vec::new(),
                    resolved_at: None,
                    next: Instant::now(),
                    error: None,
                }
            });
        }
        drop(entries);
        self.wake.notify_one();
    }

    /// The last good addresses of `name` (none if it never resolved or is not a listed name).
    pub fn addrs(&self, name: &DnsName) -> Vec<SocketAddr> {
        self.lock()
            .get(name)
            .map_or_else(Vec::new, |e| e.addrs.clone())
    }

    /// The names listed in `config` that have not resolved yet here (new to this process).
    pub fn unknown(&self, config: &Config) -> Vec<DnsName> {
        let entries = self.lock();
        config
            .pools
            .iter()
            .flat_map(|p| &p.names)
            .filter(|n| entries.get(n).is_none_or(|e| e.resolved_at.is_none()))
            .cloned()
            .collect()
    }

    /// Looks up `names` with the resolvers of `config`, concurrently.
    pub async fn lookup_all(config: &DnsConfig, names: Vec<DnsName>) -> Lookups {
        if names.is_empty() {
            return Vec::new();
        }
        let resolver = match Resolver::new(config) {
            Ok(r) => r,
            Err(e) => return names.into_iter().map(|n| (n, Err(e.clone()))).collect(),
        };
        let lookups = names.into_iter().map(|name| {
            let resolver = resolver.clone();
            async move {
                let answer = resolver.lookup(&name).await;
                (name, answer)
            }
        });
        join_all(lookups).await
    }

    /// Looks up `due` and records the outcome; true when a set changed.
    async fn resolve(&self, due: Vec<DnsName>) -> bool {
        let config = self.config.load_full();
        let results = Names::lookup_all(&config, due).await;
        self.record(results)
    }

    /// Records lookups (of names still listed); true when a set changed.
    pub fn record(&self, results: Lookups) -> bool {
        let refresh = self.config.load().refresh;
        let mut changed = false;
        let mut entries = self.lock();
        for (name, answer) in results {
            let Some(entry) = entries.get_mut(&name) else {
                continue; // dropped by a reload meanwhile
            };
            let label = name.to_string();
            match answer {
                Ok(answer) => {
                    if entry.error.take().is_some() {
                        tracing::info!(name = %label, "backend name resolves again: {:?}", answer.addrs);
                    }
                    if entry.addrs != answer.addrs {
                        if entry.resolved_at.is_some() {
                            self.metrics.dns_changes.with_label_values(&[&label]).inc();
                        }
                        tracing::info!(
                            name = %label,
                            "backend name resolved to {} address(es): {:?}",
                            answer.addrs.len(),
                            answer.addrs
                        );
                        entry.addrs = answer.addrs;
                        changed = true;
                    }
                    entry.resolved_at = Some(SystemTime::now());
                    entry.next = Instant::now() + refresh.min(answer.ttl).max(TTL_FLOOR);
                }
                Err(e) => self.fail(&name, entry, &e, refresh),
            }
        }
        changed
    }

    /// Records a failed lookup: the last good set stays; one WARN per episode.
    fn fail(&self, name: &DnsName, entry: &mut Entry, e: &LookupError, refresh: Duration) {
        let label = name.to_string();
        self.metrics.dns_failures.with_label_values(&[&label]).inc();
        if entry.error.is_none() {
            tracing::warn!(
                name = %label,
                "cannot resolve backend name: {e}; keeping its last {} address(es) and retrying \
                 every {refresh:?}",
                entry.addrs.len()
            );
        }
        entry.error = Some(e.to_string());
        entry.next = Instant::now() + refresh.max(TTL_FLOOR);
    }

    /// Every name, for `status`.
    pub fn status(&self) -> Vec<NameStatus> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(name, e)| NameStatus {
                name: name.to_string(),
                backends: e.addrs.iter().map(ToString::to_string).collect(),
                resolved_at: e
                    .resolved_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                next_refresh_in_s: e.next.saturating_duration_since(now).as_secs_f64(),
                error: e.error.clone(),
            })
            .collect()
    }

    fn due(&self) -> (Vec<DnsName>, Option<Instant>) {
        let now = Instant::now();
        let entries = self.lock();
        let due = entries
            .iter()
            .filter(|(_, e)| e.next <= now)
            .map(|(n, _)| n.clone())
            .collect();
        (due, entries.values().map(|e| e.next).min())
    }
}

/// Runs the lookups concurrently (without pulling in the `futures` crate for one function).
async fn join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Re-resolves names when they are due and hands changes to `apply` (the admin handler's
/// membership change, run off the executor: it may check new backends for a few seconds).
pub struct Watcher {
    names: Arc<Names>,
    apply: Arc<dyn Fn() + Send + Sync>,
}

impl Watcher {
    pub fn new(names: Arc<Names>, apply: Arc<dyn Fn() + Send + Sync>) -> Watcher {
        Watcher { names, apply }
    }
}

/// When nothing is due (no names), how long the watcher sleeps before looking again.
const IDLE: Duration = Duration::from_secs(3600);

#[async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let (due, next) = self.names.due();
            if !due.is_empty() {
                self.names.resolve(due).await;
                // Also when nothing changed: a change the health gate held back last time is
                // tried again. Applying the members already in force does nothing.
                let apply = self.apply.clone();
                let _ = tokio::task::spawn_blocking(move || apply()).await;
            }
            let (_, next_after) = self.names.due();
            let wake_at = next_after.or(next).unwrap_or_else(|| Instant::now() + IDLE);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.names.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }
}
