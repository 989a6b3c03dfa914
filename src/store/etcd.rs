//! The fleet store: one routing state for every instance of a fleet, in etcd.
//!
//! Keys, under `/switchyard/<fleet>/`:
//! - `state`: the [`StateFile`] document. A change is a transaction that writes it only if its
//!   modification revision is still the one this instance last saw, so of two changes made at
//!   once through two instances exactly one wins; the other is refused (409
//!   `generation_mismatch`), as a stale `if_generation` is.
//! - `history/<generation>-<ms>-<instance>`: one history entry per change, written by the instance
//!   that made it (which is also the one that notifies the webhooks), readable by all.
//! - `applied/<instance>`: `{generation, applied_at}`, what each instance serves now, bound to the
//!   instance's lease so that a dead instance drops out within the lease's TTL.
//! - `leader`: the instance that runs the guard and the rollouts for the fleet, bound to its
//!   lease: created only if absent, so one instance holds it; when that instance dies its lease
//!   ends, the key goes, and the next instance to renew its own lease takes it (within the TTL).
//!   A running rollout is part of `state`, so the new leader continues it.
//! - `figures/<instance>`: what each instance saw of the change being judged (requests, errors,
//!   latency histogram), on its lease; the leader judges the sum, so a canary at 1 % across five
//!   proxies is judged on all of its traffic.
//!
//! Every instance watches the prefix and applies each new `state` through the admin handler
//! (`admin::fleet`), the instance that made the change included (for it the change is already in
//! place). If etcd cannot be reached the instance keeps serving the last state it applied —
//! also kept in its own `state.json`, so a restart without etcd comes up on it — refuses changes
//! (503 `state_backend_unavailable`) and catches up when etcd is back: a fresh read, then a watch
//! from that revision (which also covers a watch whose revision was compacted away).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::gateway::{Endpoints, EtcdError, Event, Gateway};
use super::{FileStore, FleetMember, FleetStatus, JudgedFigures, Store};
use crate::config::EtcdConfig;
use crate::state::{self, HistoryEntry, Loaded, StateFile, StoreError};

/// What an instance publishes under `applied/<instance>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    /// RFC 3339.
    pub applied_at: String,
    /// The same instant in milliseconds since the Unix epoch, for "how long ago".
    pub applied_at_ms: u64,
    pub pid: u32,
}

/// The keys of one fleet.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    state: String,
    history: String,
    applied: String,
    leader: String,
    figures: String,
}

impl Keys {
    fn new(fleet: &str) -> Keys {
        let prefix = format!("/switchyard/{fleet}/");
        Keys {
            state: format!("{prefix}state"),
            history: format!("{prefix}history/"),
            applied: format!("{prefix}applied/"),
            leader: format!("{prefix}leader"),
            figures: format!("{prefix}figures/"),
            prefix,
        }
    }
}

/// What the background tasks and the blocking calls share.
struct Shared {
    gateway: Gateway,
    keys: Keys,
    instance: String,
    lease_ttl: Duration,
    /// Whether the last call to etcd worked, and why not.
    up: AtomicBool,
    error: Mutex<Option<String>>,
    /// The state document's generation and modification revision as last seen (read, written
    /// or watched): a change compares against this revision.
    seen: Mutex<(u64, i64)>,
    /// The newest state document from etcd, for the admin handler to apply.
    latest: tokio::sync::watch::Sender<Option<StateFile>>,
    /// Every live instance's `applied` key.
    members: Mutex<BTreeMap<String, Applied>>,
    /// This instance's lease (0: none yet) and what it last applied (re-published on a new
    /// lease).
    lease: AtomicI64,
    applied: Mutex<Option<Applied>>,
    /// Who holds the `leader` key, as last seen.
    leader: Mutex<Option<String>>,
    /// Every live instance's figures for the guard (`figures/<instance>`), and when this
    /// instance last published its own (ms).
    figures: Mutex<BTreeMap<String, JudgedFigures>>,
    figures_sent: AtomicU64,
}

/// The etcd store of one instance.
pub struct EtcdStore {
    shared: Arc<Shared>,
    /// This instance's own copy of the state it applied last (`state.json`), for a start while
    /// etcd is down.
    cache: FileStore,
    /// The store's own runtime: the watch and the lease run on it, and the admin handler's
    /// blocking calls wait on it, whichever runtime (or none) they are called from.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How often an instance publishes its guard figures, and how old another's may be to count.
const FIGURES_EVERY_MS: u64 = 250;
const FIGURES_FRESH_MS: u64 = 2_000;

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn mark(&self, result: Result<(), &EtcdError>) {
        match result {
            Ok(()) => {
                if !self.up.swap(true, Ordering::SeqCst) {
                    tracing::info!("etcd is reachable again");
                }
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                if self.up.swap(false, Ordering::SeqCst) {
                    tracing::error!(
                        "STATE BACKEND DOWN: {e}; serving the last applied state, refusing changes"
                    );
                }
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }

    fn unavailable(&self, e: &EtcdError) -> StoreError {
        self.mark(Err(e));
        StoreError::Unavailable(e.to_string())
    }

    fn note_state(&self, value: &[u8], mod_revision: i64) -> Option<StateFile> {
        let file: StateFile = serde_json::from_slice(value).ok()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if mod_revision >= seen.1 {
            *seen = (file.route.generation, mod_revision);
        }
        Some(file)
    }

    /// Publishes what this instance has applied, under its lease.
    async fn publish(&self) -> Result<(), EtcdError> {
        let Some(applied) = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let lease = self.lease.load(Ordering::SeqCst);
        if lease == 0 {
            return Ok(());
        }
        let key = format!("{}{}", self.keys.applied, self.instance);
        let value = serde_json::to_vec(&applied).expect("serialises");
        self.gateway.put(&key, &value, lease).await.map(|_| ())
    }

    /// Keeps this instance's lease alive (granting a new one when it lapsed) and its `applied`
    /// key published.
    async fn lease_loop(self: Arc<Self>) {
        let ttl = self.lease_ttl.as_secs().max(2);
        let every = Duration::from_millis(ttl * 1000 / 3);
        loop {
            let lease = self.lease.load(Ordering::SeqCst);
            let result = if lease == 0 {
                match self.gateway.grant(ttl).await {
                    Ok(id) => {
                        self.lease.store(id, Ordering::SeqCst);
                        self.publish().await
                    }
                    Err(e) => Err(e),
                }
            } else {
                match self.gateway.keep_alive(lease).await {
                    Ok(left) if left > 0 => Ok(()),
                    Ok(_) => {
                        // The lease ran out while etcd was away: a new one, and publish again.
                        tracing::warn!("the etcd lease lapsed; granting a new one");
                        self.lease.store(0, Ordering::SeqCst);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            let result = match result {
                Ok(()) => self.campaign().await,
                Err(e) => Err(e),
            };
            self.mark(result.as_ref().map(|_| ()));
            tokio::time::sleep(every).await;
        }
    }

    /// Takes the `leader` key if nobody holds it (bound to this instance's lease).
    async fn campaign(&self) -> Result<(), EtcdError> {
        let lease = self.lease.load(Ordering::SeqCst);
        let held = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if lease == 0 || held {
            return Ok(());
        }
        let won = self
            .gateway
            .compare_and_put(&self.keys.leader, 0, self.instance.as_bytes(), lease)
            .await?;
        let holder = match won {
            Ok(_) => {
                tracing::info!("this instance now leads the fleet (guard and rollouts)");
                Some(self.instance.clone())
            }
            Err(current) => current.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        };
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = holder;
        Ok(())
    }

    /// Reads the fleet's keys, then follows them; on any failure starts over from a fresh read
    /// (so a compacted watch revision costs one read, not a gap).
    async fn watch_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow().await {
                Ok(()) => {}
                Err(e) => {
                    self.mark(Err(&e));
                    tracing::debug!("etcd watch: {e}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn follow(&self) -> Result<(), EtcdError> {
        let (revision, kvs) = self
            .gateway
            .range(&self.keys.prefix, true, 0, false)
            .await?;
        self.mark(Ok(()));
        let mut members = BTreeMap::new();
        if !kvs.iter().any(|kv| kv.key == self.keys.leader) {
            *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        for kv in &kvs {
            self.take(&kv.key, Some((&kv.value, kv.mod_revision)), &mut members);
        }
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
        let mut watcher = self.gateway.watch(&self.keys.prefix, revision + 1).await?;
        while let Some(msg) = watcher.next().await? {
            if msg.canceled || msg.compact_revision > 0 {
                tracing::warn!(
                    "the etcd watch was cancelled (compacted at revision {}); reading the fleet \
                     state again",
                    msg.compact_revision
                );
                return Ok(());
            }
            let mut members = self
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for ev in msg.events {
                match ev {
                    Event::Put(kv) => {
                        self.take(&kv.key, Some((&kv.value, kv.mod_revision)), &mut members)
                    }
                    Event::Delete(key) => self.take(&key, None, &mut members),
                }
            }
            *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
        }
        Ok(())
    }

    /// One key read or watched.
    fn take(
        &self,
        key: &str,
        value: Option<(&[u8], i64)>,
        members: &mut BTreeMap<String, Applied>,
    ) {
        if key == self.keys.leader {
            *self.leader.lock().unwrap_or_else(|p| p.into_inner()) =
                value.map(|(v, _)| String::from_utf8_lossy(v).into_owned());
        } else if key == self.keys.state {
            if let Some(file) = value.and_then(|(v, rev)| self.note_state(v, rev)) {
                self.latest.send_replace(Some(file));
            }
        } else if let Some(instance) = key.strip_prefix(&self.keys.figures) {
            let mut all = self.figures.lock().unwrap_or_else(|p| p.into_inner());
            match value.and_then(|(v, _)| serde_json::from_slice::<JudgedFigures>(v).ok()) {
                Some(f) => {
                    all.insert(instance.to_string(), f);
                }
                None => {
                    all.remove(instance);
                }
            }
        } else if let Some(instance) = key.strip_prefix(&self.keys.applied) {
            match value.and_then(|(v, _)| serde_json::from_slice::<Applied>(v).ok()) {
                Some(a) => {
                    members.insert(instance.to_string(), a);
                }
                None => {
                    members.remove(instance);
                }
            }
        }
    }
}

impl EtcdStore {
    /// Sets up the store for `config` (nothing is asked of etcd yet: a start while etcd is down
    /// comes up on `state.json`) and starts following the fleet.
    pub fn start(config: &EtcdConfig, state_dir: &Path) -> Result<EtcdStore, String> {
        let password = match &config.password_file {
            None => None,
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        format!("cannot read the etcd password file {}: {e}", p.display())
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
        };
        let gateway = Gateway::new(Endpoints {
            urls: config.endpoints.clone(),
            user: config.user.clone(),
            password,
            ca_file: config.ca_file.clone(),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            timeout: config.timeout,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the etcd client's threads: {e}"))?;
        let shared = Arc::new(Shared {
            gateway,
            keys: Keys::new(&config.fleet),
            instance: config.instance.clone(),
            lease_ttl: config.lease_ttl,
            up: AtomicBool::new(true),
            error: Mutex::new(None),
            seen: Mutex::new((0, 0)),
            latest: tokio::sync::watch::channel(None).0,
            members: Mutex::new(BTreeMap::new()),
            lease: AtomicI64::new(0),
            applied: Mutex::new(None),
            leader: Mutex::new(None),
            figures: Mutex::new(BTreeMap::new()),
            figures_sent: AtomicU64::new(0),
        });
        runtime.spawn(shared.clone().lease_loop());
        runtime.spawn(shared.clone().watch_loop());
        Ok(EtcdStore {
            shared,
            cache: FileStore::new(state_dir),
            runtime: Some(runtime),
        })
    }

    /// Runs `f` on the store's runtime and waits for it (the admin handler's calls block).
    fn block<F>(&self, f: impl FnOnce(Arc<Shared>) -> F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.shared.clone());
        self.runtime
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv()
            .expect("the etcd runtime runs until the store is dropped")
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Allowed from inside another runtime, unlike a plain drop.
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn state_location(&self) -> String {
        format!(
            "etcd key {} ({})",
            self.shared.keys.state,
            self.shared.gateway.endpoint_list()
        )
    }

    fn history_location(&self) -> String {
        format!("etcd keys {}*", self.shared.keys.history)
    }

    /// The fleet's state from etcd; with etcd down, this instance's last applied state from
    /// `state.json`, said loudly.
    fn load(&self, pool_names: &[String]) -> Loaded {
        let key = self.shared.keys.state.clone();
        let got = self.block(|s| async move { s.gateway.range(&key, false, 0, false).await });
        match got {
            Ok((_, kvs)) => {
                self.shared.mark(Ok(()));
                let Some(kv) = kvs.into_iter().next() else {
                    return Loaded::Missing;
                };
                self.shared.note_state(&kv.value, kv.mod_revision);
                let text = String::from_utf8_lossy(&kv.value);
                match state::check(&text, pool_names) {
                    Ok(loaded) => loaded,
                    Err(why) => {
                        // Never moved aside or overwritten silently: the fleet shares it.
                        tracing::error!(
                            "the fleet's state in etcd ({key}) is unusable: {why}; starting from \
                             this instance's state.json",
                            key = self.shared.keys.state
                        );
                        self.cache.load(pool_names)
                    }
                }
            }
            Err(e) => {
                self.shared.mark(Err(&e));
                tracing::error!(
                    "ETCD UNREACHABLE AT START ({e}): serving this instance's last applied state \
                     from {} until etcd is back; changes are refused until then",
                    self.cache.state_path().display()
                );
                self.cache.load(pool_names)
            }
        }
    }

    fn save(&self, file: &StateFile, base: u64) -> Result<(), StoreError> {
        let (seen_generation, seen_revision) =
            *self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        // The watch brought a newer state than the one the change was made from: it lost.
        if seen_revision > 0 && base != seen_generation {
            return Err(StoreError::Conflict {
                current: seen_generation,
            });
        }
        let value = serde_json::to_vec_pretty(file).expect("state serialises");
        let key = self.shared.keys.state.clone();
        let v = value.clone();
        let result = self.block(move |s| async move {
            s.gateway.compare_and_put(&key, seen_revision, &v, 0).await
        });
        match result {
            Err(e) => Err(self.shared.unavailable(&e)),
            Ok(Err(current)) => {
                self.shared.mark(Ok(()));
                let current = current
                    .and_then(|kv| self.shared.note_state(&kv.value, kv.mod_revision))
                    .map_or(seen_generation, |f| f.route.generation);
                Err(StoreError::Conflict { current })
            }
            Ok(Ok(revision)) => {
                self.shared.mark(Ok(()));
                self.shared.note_state(&value, revision);
                // This instance's copy, for a start without etcd; the change stands either way.
                if let Err(e) = self.cache.save(file, 0) {
                    tracing::warn!("cannot keep a local copy of the fleet state: {e}");
                }
                Ok(())
            }
        }
    }

    fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let key = format!(
            "{}{:020}-{:013}-{}",
            self.shared.keys.history,
            entry.generation,
            unix_ms(),
            self.shared.instance
        );
        let value = serde_json::to_vec(entry).expect("history serialises");
        self.block(move |s| async move { s.gateway.put(&key, &value, 0).await })
            .map(|_| ())
            .map_err(|e| self.shared.unavailable(&e))
    }

    fn read_history(&self, limit: usize) -> io::Result<Vec<HistoryEntry>> {
        let key = self.shared.keys.history.clone();
        // 0 is "no limit" to etcd (e.g. the delivery report reads all of it).
        let limit = i64::try_from(limit).unwrap_or(0);
        let (_, kvs) = self
            .block(move |s| async move { s.gateway.range(&key, true, limit, true).await })
            .map_err(|e| io::Error::other(self.shared.unavailable(&e).to_string()))?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<Option<StateFile>>> {
        Some(self.shared.latest.subscribe())
    }

    fn applied(&self, file: &StateFile) {
        let applied = Applied {
            generation: file.route.generation,
            applied_at: state::now_rfc3339(),
            applied_at_ms: unix_ms(),
            pid: std::process::id(),
        };
        *self
            .shared
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(applied);
        if let Err(e) = self.cache.save(file, 0) {
            tracing::warn!("cannot keep a local copy of the fleet state: {e}");
        }
        let shared = self.shared.clone();
        self.runtime
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let result = shared.publish().await;
                if let Err(e) = &result {
                    tracing::warn!("cannot publish the applied generation: {e}");
                }
            });
    }

    fn fleet(&self) -> Option<FleetStatus> {
        let now = unix_ms();
        let members = self
            .shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, a)| FleetMember {
                instance: name.clone(),
                generation: a.generation,
                applied_at: a.applied_at.clone(),
                ago_s: now.saturating_sub(a.applied_at_ms) as f64 / 1000.0,
                pid: a.pid,
            })
            .collect();
        Some(FleetStatus {
            backend: "etcd",
            up: self.shared.up.load(Ordering::SeqCst),
            error: self
                .shared
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            instance: self.shared.instance.clone(),
            leader: self
                .shared
                .leader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            key: self.shared.keys.state.clone(),
            members,
        })
    }

    fn backend_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    fn publish_figures(&self, figures: &JudgedFigures) {
        // Four times a second is plenty for a judgement over seconds, and spares etcd.
        let last = self.shared.figures_sent.load(Ordering::Relaxed);
        if figures.at_ms < last + FIGURES_EVERY_MS {
            return;
        }
        self.shared
            .figures_sent
            .store(figures.at_ms, Ordering::Relaxed);
        let lease = self.shared.lease.load(Ordering::SeqCst);
        if lease == 0 {
            return;
        }
        let key = format!("{}{}", self.shared.keys.figures, self.shared.instance);
        let value = serde_json::to_vec(figures).expect("serialises");
        let shared = self.shared.clone();
        self.runtime
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let _ = shared.gateway.put(&key, &value, lease).await;
            });
    }

    fn fleet_figures(&self) -> Vec<JudgedFigures> {
        let now = unix_ms();
        self.shared
            .figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(name, f)| {
                **name != self.shared.instance && now.saturating_sub(f.at_ms) <= FIGURES_FRESH_MS
            })
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Only while etcd answers: an instance cut off from etcd may have lost the lead already.
    fn leads(&self) -> bool {
        self.backend_up()
            && self
                .shared
                .leader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(self.shared.instance.as_str())
    }
}
