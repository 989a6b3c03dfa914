//! What the routing state and its history look like when stored: the `state.json` document
//! ([`StateFile`]), one history line ([`HistoryEntry`]), what a store found at start-up
//! ([`Loaded`]) and the words used to describe a state. Where they are stored is
//! [`crate::store`]'s business.

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::rollout::RolloutFile;
use crate::routing::{PoolId, RouteState};

/// Bumped if the file format changes incompatibly.
pub const STATE_VERSION: u32 = 1;

/// The routing state as stored: pools by name, so a file stays meaningful if pools are reordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoute {
    pub primary: String,
    pub canary_bp: u32,
    pub generation: u64,
}

/// Contents of `state.json`.
///
/// Unknown fields are ignored rather than refused, so a file written by a newer switchyard of the
/// same `version` still loads after a downgrade instead of being moved aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub route: StoredRoute,
    /// RFC 3339 time of the last change.
    pub since: String,
    /// The state before the last change: what `rollback` returns to.
    pub previous: Option<StoredRoute>,
    /// Seed of the sticky-key hash: kept so users keep their canary bucket across restarts.
    #[serde(default)]
    pub salt: Option<u64>,
    /// A progressive rollout in progress.
    #[serde(default)]
    pub rollout: Option<RolloutFile>,
    /// What the guard is watching, so a restart or an upgrade keeps watching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchFile>,
}

/// The guard's watch as kept in `state.json`: wall-clock times, since the process that reads it
/// back is another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchFile {
    pub pool: String,
    /// `flip` or `canary`.
    pub kind: String,
    /// When the change was made (milliseconds since the Unix epoch).
    pub since_ms: u64,
    /// When a flip stops being watched (none for a canary).
    pub until_ms: Option<u64>,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub ts: String,
    pub generation: u64,
    pub action: String,
    pub from: String,
    pub to: String,
    pub actor: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub result: String,
    /// The change skipped the health gate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// What set the change off: `manual`, or `guard` for an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Extra figures (e.g. what the guard measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// What the change did to errors and latency (`impact.jsonl`, joined when history is read;
    /// never written into `history.jsonl`, which stays append-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<crate::impact::Impact>,
}

/// What start-up found in the state directory.
#[derive(Debug)]
// Read once at start-up and after a hand-over: its size does not matter, boxing would only add
// noise to the code that takes it apart.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// No state file: start from the configuration.
    Missing,
    /// A valid state file for these pools.
    Valid {
        state: RouteState,
        previous: Option<RouteState>,
        since: String,
        salt: Option<u64>,
        rollout: Option<RolloutFile>,
        watch: Option<WatchFile>,
    },
    /// A state file that names pools the configuration does not have; ignored.
    Mismatch { file_pools: String },
    /// An unreadable file, moved aside to `moved_to`.
    Corrupt { error: String, moved_to: PathBuf },
}

/// Why the state could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
        /// The new file was already renamed into place; only the directory fsync failed. The
        /// new state is what a restart will read (barring a power loss), so it must not be
        /// undone.
        committed: bool,
    },
    /// A shared store's compare-and-set lost: another instance changed the state first.
    #[error("another instance changed the state first (it is at generation {current})")]
    Conflict { current: u64 },
    /// A shared store cannot be reached; nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// The new state is in place even though the call failed (see [`StoreError::File`]).
    pub fn committed(&self) -> bool {
        matches!(
            self,
            StoreError::File {
                committed: true,
                ..
            }
        )
    }
}

/// Reads a stored state document (`state.json`, or a fleet's state key) and checks it against
/// the configured pool names; `Err` says why it is unusable.
pub fn check(text: &str, pool_names: &[String]) -> Result<Loaded, String> {
    let file: StateFile =
        serde_json::from_str(text).map_err(|e| format!("it is not valid state JSON: {e}"))?;
    if file.version != STATE_VERSION {
        return Err(format!(
            "it has version {}, this switchyard writes version {STATE_VERSION}",
            file.version
        ));
    }
    if file.route.canary_bp > crate::config::MAX_BP {
        return Err(format!("canary_bp {} is above 10000", file.route.canary_bp));
    }
    let find = |r: &StoredRoute| pool_names.iter().position(|n| *n == r.primary);
    let Some(primary) = find(&file.route) else {
        return Ok(Loaded::Mismatch {
            file_pools: file.route.primary.clone(),
        });
    };
    let previous = file.previous.as_ref().and_then(|p| {
        find(p).map(|primary| RouteState {
            primary,
            canary_bp: p.canary_bp.min(crate::config::MAX_BP),
            generation: p.generation,
        })
    });
    Ok(Loaded::Valid {
        state: RouteState {
            primary,
            canary_bp: file.route.canary_bp,
            generation: file.route.generation,
        },
        previous,
        since: file.since,
        salt: file.salt,
        rollout: file.rollout,
        watch: file.watch,
    })
}

/// Now, as RFC 3339 with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A route as stored, with pool names.
pub fn stored(state: &RouteState, names: &[String]) -> StoredRoute {
    StoredRoute {
        primary: names[state.primary].clone(),
        canary_bp: state.canary_bp,
        generation: state.generation,
    }
}

/// A short human description of a routing state: `blue`, or `blue + green 5%`.
pub fn describe(state: &RouteState, names: &[String]) -> String {
    if state.canary_bp == 0 {
        names[state.primary].clone()
    } else {
        let canary: PoolId = state.canary_pool();
        format!(
            "{} + {} {}",
            names[state.primary],
            names[canary],
            format_percent(state.canary_bp)
        )
    }
}

/// Basis points as a percentage: `5%`, `0.25%`, `0.01%`.
pub fn format_percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{}%", bp / 100)
    } else if bp.is_multiple_of(10) {
        format!("{}.{}%", bp / 100, (bp % 100) / 10)
    } else {
        format!("{}.{:02}%", bp / 100, bp % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(format_percent(500), "5%");
        assert_eq!(format_percent(25), "0.25%");
        assert_eq!(format_percent(1), "0.01%");
        assert_eq!(format_percent(1050), "10.5%");
        assert_eq!(format_percent(10_000), "100%");
    }
}
