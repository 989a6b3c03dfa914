//! Applying a configuration reload (SIGHUP, `POST /v1/reload`, `ctl reload`).
//!
//! A reload re-reads the file with exactly the code `switchyard check` runs ([`Config::load`]),
//! works out what changes ([`Plan`]), refuses anything that cannot change in place, checks the new
//! backends a serving pool needs, and then, under the change lock, swaps the pools' members and
//! the request settings in one atomic store. A request sees the old configuration or the new one;
//! a refused reload changes nothing at all.
//!
//! Reloads serialise on their own mutex, so the (possibly seconds long) check of new backends does
//! not hold up flips or the guard; the change lock is taken only for the swap, and the health gate
//! is checked again there, against the state as it is at that moment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Admin, AdminError, Reply};
use crate::config::{Config, HealthConfig, POOL_COUNT};
use crate::dns::{Lookups, Names};
use crate::health::{self, WarmUp};
use crate::pools::{Backend, Pool};
use crate::preview::PreviewKey;
use crate::reload::{Membership, Plan, Setting};
use crate::routing::{RouteState, RoutingTable};
use crate::settings::ProxySettings;
use crate::state::{self, HistoryEntry};

/// The history action and notification event of a reload.
pub const RELOAD: &str = "reload";

/// The answer to a reload.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    /// False when the file asks for what is already in force (nothing was touched).
    pub changed: bool,
    /// One line, e.g. `green: +10.0.1.5:8000 −10.0.1.1:8000; guard.max_error_ratio 0.05 → 0.02`.
    pub summary: String,
    /// Members added and removed, per pool that changed.
    pub pools: BTreeMap<String, Membership>,
    /// Settings changed in place.
    pub settings: Vec<Setting>,
    /// New backends that were checked before the swap because a serving pool needed them.
    pub checked_first: Vec<SocketAddr>,
    /// The routing generation; a reload does not change it, so `if_generation` scripts are not
    /// disturbed by a config change.
    pub generation: u64,
    /// Microseconds from the command to the swap (including any check of new backends).
    pub applied_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// How long new backends get to pass their checks before a reload that needs them gives up:
/// `rise` checks take `(rise − 1) × interval` after the first; two spare intervals and one
/// check's timeout absorb jitter and a slow first connection.
fn warm_up_bound(h: &HealthConfig) -> Duration {
    h.interval * (h.rise + 1) + h.timeout
}

impl Admin {
    /// Reloads the configuration file on behalf of `actor`. Blocking (it may check new backends
    /// for a few seconds, and it writes history): call it off the async executor.
    pub fn reload(&self, actor: &str, reason: Option<String>) -> Result<Reply, AdminError> {
        let received = Instant::now();
        let _one_at_a_time = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload(received, actor, reason.clone());
        match &result {
            Ok(_) => self.metrics.record_reload("ok"),
            Err(e) => {
                self.metrics.record_reload("error");
                tracing::warn!(actor, "configuration reload refused, nothing changed: {e}");
                if !matches!(
                    e,
                    AdminError::Conflict {
                        code: "no_config_file",
                        ..
                    }
                ) {
                    self.record_refused_reload(actor, reason, e);
                }
            }
        }
        result
    }

    fn try_reload(
        &self,
        received: Instant,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Reply, AdminError> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| AdminError::Conflict {
                code: "no_config_file",
                message: "this switchyard was started from a built-in configuration (the demo), \
                          not a file; there is nothing to reload"
                    .into(),
            })?;
        let new = Config::load(&path).map_err(|errors| AdminError::Unprocessable {
            code: "invalid_config",
            message: format!(
                "{}: {} error(s); nothing was changed (run `switchyard check -c {}` after fixing)",
                path.display(),
                errors.0.len(),
                path.display()
            ),
            details: errors.0.iter().map(ToString::to_string).collect(),
        })?;
        let old = self.config();
        // Names this process has not resolved yet (new to the file) are looked up now, so the
        // reply shows their addresses; the rest keep what the watcher last found.
        let fresh = run_async(Names::lookup_all(&new.dns, self.dns.unknown(&new)));
        let current = self.switchboard.load_full();
        let old_members: [Vec<SocketAddr>; POOL_COUNT] =
            std::array::from_fn(|i| current.pools[i].addrs());
        let new_members = members_with(&new, &self.dns, &fresh);
        let mut plan = Plan::between(&old, &new, &old_members, &new_members);
        if !plan.restart.is_empty() {
            let (restart, upgrade): (Vec<&Setting>, Vec<&Setting>) = plan
                .restart
                .iter()
                .partition(|s| crate::reload::restart_only(&s.key));
            let keys = |v: &[&Setting]| {
                v.iter()
                    .map(|s| s.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let how = match (upgrade.is_empty(), restart.is_empty()) {
                (false, true) => format!(
                    "{} cannot change in place: apply it with `switchyard ctl upgrade` (the same \
                     binary is fine) or a restart",
                    keys(&upgrade)
                ),
                _ => format!(
                    "{} cannot change without a restart (an upgrade keeps the socket, state \
                     directory and pools it has){}",
                    keys(&restart),
                    if upgrade.is_empty() {
                        String::new()
                    } else {
                        format!("; {} would also need an upgrade or restart", keys(&upgrade))
                    }
                ),
            };
            return Err(AdminError::Unprocessable {
                code: "restart_required",
                message: format!("{how}; nothing was changed"),
                details: plan.restart.iter().map(ToString::to_string).collect(),
            });
        }
        // The token file is read again even when its path is the same: rotating the token in
        // place is a reason to reload.
        let preview = match &new.routing.preview_token_file {
            Some(p) => Some(PreviewKey::load(p).map_err(|e| AdminError::Unprocessable {
                code: "invalid_config",
                message: format!("{e}; nothing was changed"),
                details: vec![e.to_string()],
            })?),
            None => None,
        };
        // Certificates are read again even when the list is the same: renewing a file in place
        // is the usual reason to reload. Read in full before anything changes.
        let now = std::time::SystemTime::now();
        let certs = crate::tls::Certificates::load(&new.tls, now).map_err(|e| {
            AdminError::Unprocessable {
                code: "invalid_config",
                message: format!("{e}; nothing was changed"),
                details: vec![e.to_string()],
            }
        })?;
        for warning in certs.warnings(now) {
            tracing::warn!("{warning}");
        }
        let renewed = certs.fingerprints() != self.tls.load().fingerprints();
        if renewed && old.tls == new.tls {
            plan.note("tls.certificate", "(old files)", "(renewed files)");
        }
        if preview.is_some()
            && preview != current.settings.preview
            && old.routing.preview_token_file == new.routing.preview_token_file
        {
            plan.note("routing.preview_token", "(old token)", "(new token)");
        }
        let names: Vec<String> = new.pools.iter().map(|p| p.name.clone()).collect();
        if plan.is_empty() {
            return Ok(Reply::Reload(Reloaded {
                changed: false,
                summary: "no change: the file matches the configuration in force".into(),
                pools: BTreeMap::new(),
                settings: Vec::new(),
                checked_first: Vec::new(),
                generation: current.state.generation,
                applied_us: 0,
                warning: None,
            }));
        }

        let ready = self.check_new_backends(&current, &plan, &new)?;

        let ledger = self.lock_ledger();
        let table = self.swap_members(
            &new,
            &new_members,
            &ready,
            ProxySettings::from_config(&new, preview),
        )?;
        let summary = plan.summary(&names);
        let applied_us = received.elapsed().as_micros() as u64;
        if renewed || old.tls != new.tls {
            // New handshakes from now on; open connections keep what they were served.
            self.tls.store(certs);
        }
        self.notifier.set_hooks(new.notify.clone());
        self.dns.set(&new);
        self.dns.record(fresh);
        self.config.store(Arc::new(new));

        let st = table.state;
        let changes: Vec<String> = plan.settings.iter().map(ToString::to_string).collect();
        let pool_changes: BTreeMap<String, Membership> = names
            .iter()
            .zip(&plan.members)
            .filter(|(_, m)| !m.is_empty())
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        let entry = reload_entry(
            &st,
            &names,
            actor,
            reason,
            "ok",
            serde_json::json!({
                "summary": summary,
                "pools": pool_changes,
                "settings": changes,
                "file": self.config_path.as_ref().map(|p| p.display().to_string()),
            }),
        );
        tracing::info!(
            actor,
            "configuration reloaded in {applied_us} us: {summary}"
        );
        self.metrics.record_change(RELOAD);
        let warning = self.record(entry, RELOAD);
        drop(ledger);
        Ok(Reply::Reload(Reloaded {
            changed: true,
            summary,
            checked_first: ready.keys().copied().collect(),
            pools: pool_changes,
            settings: plan.settings,
            generation: st.generation,
            applied_us,
            warning,
        }))
    }

    /// Applies what the backend names resolve to now, through the same checks and swap as a
    /// reload (the DNS watcher calls this after each round of lookups). A change the health gate
    /// refuses is logged and tried again after the next lookups; the pools stay as they are.
    pub fn apply_dns(&self) {
        let _one_at_a_time = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.config();
        let current = self.switchboard.load_full();
        let old_members: [Vec<SocketAddr>; POOL_COUNT] =
            std::array::from_fn(|i| current.pools[i].addrs());
        let new_members = members_with(&config, &self.dns, &Vec::new());
        if old_members == new_members {
            return;
        }
        let plan = Plan {
            members: std::array::from_fn(|i| Membership::between(&old_members[i], &new_members[i])),
            ..Plan::default()
        };
        let summary = plan.summary(&self.names);
        let applied = self
            .check_new_backends(&current, &plan, &config)
            .and_then(|ready| {
                let _ledger = self.lock_ledger();
                let settings = (*self.switchboard.load().settings).clone();
                self.swap_members(&config, &new_members, &ready, settings)
            });
        let mut held = self.dns_held.lock().unwrap_or_else(|p| p.into_inner());
        match applied {
            Ok(_) => {
                *held = None;
                tracing::info!("backend names changed the pools: {summary}");
            }
            // Once per held-back change, not at every lookup while it waits.
            Err(e) if held.as_deref() != Some(summary.as_str()) => {
                tracing::warn!(
                    "backend names would change the pools ({summary}), but not now: {e}; \
                     trying again after each lookup"
                );
                *held = Some(summary);
            }
            Err(_) => {}
        }
    }

    /// Swaps in pools with `members` (keeping the backends both have, taking `ready` ones
    /// checked beforehand) and `settings`, after the health gate; the caller holds the change
    /// lock. Returns the table that was replaced.
    fn swap_members(
        &self,
        config: &Config,
        members: &[Vec<SocketAddr>; POOL_COUNT],
        ready: &HashMap<SocketAddr, Arc<Backend>>,
        settings: ProxySettings,
    ) -> Result<Arc<RoutingTable>, AdminError> {
        self.refuse_while_upgrading()?;
        let table = self.switchboard.load_full();
        let pools: [Pool; POOL_COUNT] = std::array::from_fn(|i| {
            table.pools[i].with_members(&members[i], ready, !config.health.enabled)
        });
        if config.health.enabled {
            reload_gate(&table, &pools, config.health.min_healthy)?;
        }
        self.switchboard.store_config(pools, settings);
        self.health.update(config.health.clone());
        Ok(table)
    }

    /// Checks, before the swap, the new backends that a pool serving traffic needs to keep
    /// `min_healthy` healthy members; returns them (healthy) so the swap adds these very
    /// backends. Refuses with `target_not_ready` when they do not pass in time.
    fn check_new_backends(
        &self,
        current: &RoutingTable,
        plan: &Plan,
        new: &Config,
    ) -> Result<HashMap<SocketAddr, Arc<Backend>>, AdminError> {
        let mut ready = HashMap::new();
        if !new.health.enabled {
            return Ok(ready);
        }
        let need = new.health.min_healthy;
        let st = current.state;
        for (id, pool) in current.pools.iter().enumerate() {
            let serving = id == st.primary || (id == st.canary_pool() && st.canary_bp > 0);
            let added = &plan.members[id].added;
            if !serving || added.is_empty() {
                continue;
            }
            let kept_healthy = new.pools[id]
                .backends
                .iter()
                .filter(|a| pool.backend(**a).is_some_and(|b| b.is_healthy()))
                .count();
            if kept_healthy >= need {
                continue;
            }
            let fresh: Vec<Arc<Backend>> = added
                .iter()
                .map(|a| Arc::new(Backend::new(*a, false)))
                .collect();
            let wanted = (need - kept_healthy).min(fresh.len());
            let bound = warm_up_bound(&new.health);
            tracing::info!(
                "reload: {} keeps {kept_healthy} healthy backend(s) of the {need} it needs; \
                 checking {} new one(s) first (up to {bound:?})",
                pool.name,
                fresh.len()
            );
            let WarmUp { passed, failed } = run_async(health::warm_up(
                &fresh,
                &crate::tls::upstream::Transport::from_config(&new.pools[id]),
                &new.health,
                wanted,
                bound,
            ));
            let after = kept_healthy + passed;
            if after < need && after < pool.healthy_count() {
                return Err(AdminError::Conflict {
                    code: "target_not_ready",
                    message: format!(
                        "{} serves traffic and would have {after} healthy backend(s), {need} \
                         needed: new backend(s) did not pass {} check(s) within {bound:?}: {}; \
                         nothing was changed",
                        pool.name,
                        new.health.rise,
                        failed
                            .iter()
                            .map(|(a, why)| format!("{a} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            ready.extend(
                fresh
                    .into_iter()
                    .filter(|b| b.is_healthy())
                    .map(|b| (b.addr, b)),
            );
        }
        Ok(ready)
    }

    /// Records a refused reload in history and tells the webhooks (nothing changed, but the team
    /// should know that a config on disk is not the one in force).
    fn record_refused_reload(&self, actor: &str, reason: Option<String>, e: &AdminError) {
        let st = self.switchboard.state();
        let names = self.switchboard.pool_names();
        let details = match e {
            AdminError::Unprocessable { details, .. } => details.clone(),
            _ => Vec::new(),
        };
        let entry = reload_entry(
            &st,
            &names,
            actor,
            reason,
            e.code(),
            serde_json::json!({ "summary": e.to_string(), "errors": details }),
        );
        // Taken briefly so the history line does not interleave with a change's.
        let _ledger = self.lock_ledger();
        self.record(entry, RELOAD);
    }
}

/// The history line of a reload: the routing is as it was, so `from` and `to` are the same, and
/// `detail` says what changed (or why nothing did).
fn reload_entry(
    st: &RouteState,
    names: &[String],
    actor: &str,
    reason: Option<String>,
    result: &str,
    detail: serde_json::Value,
) -> HistoryEntry {
    HistoryEntry {
        ts: state::now_rfc3339(),
        generation: st.generation,
        action: RELOAD.into(),
        from: state::describe(st, names),
        to: state::describe(st, names),
        actor: actor.to_string(),
        reason,
        result: result.to_string(),
        forced: false,
        trigger: None,
        detail: Some(detail),
        impact: None,
    }
}

/// Each pool's members under `config`: the addresses it lists, then what its names resolve to,
/// taking `fresh` lookups for names not resolved before.
pub(super) fn members_with(
    config: &Config,
    dns: &Names,
    fresh: &Lookups,
) -> [Vec<SocketAddr>; POOL_COUNT] {
    std::array::from_fn(|i| {
        let pool = &config.pools[i];
        let mut out = pool.backends.clone();
        for name in &pool.names {
            let found = fresh
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, a)| a.as_ref().ok())
                .map_or_else(|| dns.addrs(name), |a| a.addrs.clone());
            for addr in found {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        out
    })
}

/// Refuses new pools that would leave a pool serving traffic below `min_healthy` healthy
/// members when it is not already there (a reload never makes a serving pool less able to
/// serve; it may fix one that is short).
fn reload_gate(
    table: &RoutingTable,
    pools: &[Pool; POOL_COUNT],
    need: usize,
) -> Result<(), AdminError> {
    let st = table.state;
    for (id, new) in pools.iter().enumerate() {
        let serving = id == st.primary || (id == st.canary_pool() && st.canary_bp > 0);
        if !serving {
            continue;
        }
        let (before, after) = (table.pools[id].healthy_count(), new.healthy_count());
        if after < need && after < before {
            return Err(AdminError::Conflict {
                code: "target_not_ready",
                message: format!(
                    "{} serves traffic and would keep {after} healthy backend(s) of {} ({need} \
                     needed, {before} now); add healthy backends or keep some of the current \
                     ones; nothing was changed",
                    new.name,
                    new.backends.len()
                ),
            });
        }
    }
    Ok(())
}

/// Runs `fut` to completion from blocking code: on the current runtime's handle when called from
/// one of its blocking threads (the admin API), else on a small runtime of its own (SIGHUP, tests).
fn run_async<F: std::future::Future>(fut: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        // Never called on a runtime worker: the admin API runs handlers with `spawn_blocking`.
        Ok(handle) => handle.block_on(fut),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(fut),
    }
}
