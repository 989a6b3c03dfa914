//! Durable state: `state.json` (the live routing) and `history.jsonl` (the audit trail).
//!
//! A change is acknowledged only once `state.json` has been written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced: after a crash or `kill -9` the file holds
//! either the old state or the new one, never a torn mix. History is append-only JSON lines, one per
//! change, each fsynced; it is the record of who changed what, when and why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::rollout::RolloutFile;
use crate::routing::{PoolId, RouteState};

const STATE_FILE: &str = "state.json";
const HISTORY_FILE: &str = "history.jsonl";
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
#[error("cannot write {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
    /// The new file was already renamed into place; only the directory fsync failed. The new
    /// state is what a restart will read (barring a power loss), so it must not be undone.
    pub committed: bool,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// Now, as RFC 3339 with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    /// Reads `state.json`, checking it against the configured pool names. A corrupt file is
    /// moved aside (never deleted: an operator may want to read it).
    pub fn load(&self, pool_names: &[String]) -> Loaded {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.move_aside(format!("cannot read it: {e}")),
        };
        let file: StateFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => return self.move_aside(format!("it is not valid state JSON: {e}")),
        };
        if file.version != STATE_VERSION {
            return self.move_aside(format!(
                "it has version {}, this switchyard writes version {STATE_VERSION}",
                file.version
            ));
        }
        if file.route.canary_bp > crate::config::MAX_BP {
            return self.move_aside(format!("canary_bp {} is above 10000", file.route.canary_bp));
        }
        let find = |r: &StoredRoute| pool_names.iter().position(|n| *n == r.primary);
        let Some(primary) = find(&file.route) else {
            return Loaded::Mismatch {
                file_pools: file.route.primary.clone(),
            };
        };
        let previous = file.previous.as_ref().and_then(|p| {
            find(p).map(|primary| RouteState {
                primary,
                canary_bp: p.canary_bp.min(crate::config::MAX_BP),
                generation: p.generation,
            })
        });
        Loaded::Valid {
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
        }
    }

    fn move_aside(&self, error: String) -> Loaded {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "");
        let moved_to = self.dir.join(format!("{STATE_FILE}.corrupt-{stamp}"));
        if let Err(e) = fs::rename(self.state_path(), &moved_to) {
            return Loaded::Corrupt {
                error: format!("{error}; moving it aside also failed: {e}"),
                moved_to,
            };
        }
        Loaded::Corrupt { error, moved_to }
    }

    /// Writes `state.json` durably: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, file: &StateFile) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(file).expect("state serialises");
        json.push(b'\n');
        self.write_file(STATE_FILE, &json)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` in the state directory durably (temp file, fsync, rename, fsync of the
    /// directory): after a crash it holds the old contents or the new, never a mix.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let err = |source| StoreError {
            path: path.clone(),
            source,
            committed: false,
        };
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(contents).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        self.sync_dir(&path)
    }

    /// Removes `name` from the state directory durably (absent already is fine).
    pub fn remove_file(&self, name: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError {
                path,
                source,
                committed: false,
            }),
        }
    }

    fn sync_dir(&self, path: &Path) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError {
                path: path.to_path_buf(),
                source,
                committed: true,
            })
    }

    /// Appends one entry to `history.jsonl` and fsyncs it.
    pub fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let path = self.history_path();
        let err = |source| StoreError {
            path: path.clone(),
            source,
            committed: false,
        };
        let mut line = serde_json::to_vec(entry).expect("history serialises");
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        // A crash mid-append can leave a line without its newline; start a fresh line so the torn
        // one does not swallow this entry too.
        let len = f.metadata().map_err(err)?.len();
        if len > 0 {
            use std::os::unix::fs::FileExt;
            let mut last = [0u8; 1];
            f.read_exact_at(&mut last, len - 1).map_err(err)?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        f.write_all(&line).map_err(err)?;
        f.sync_data().map_err(err)?;
        Ok(())
    }

    /// The newest `limit` history entries, newest first. Lines that do not parse (e.g. a line
    /// torn by a crash mid-append) are skipped.
    ///
    /// Lines are split on raw bytes, so even a line torn mid-character is skipped alone rather
    /// than hiding everything after it.
    pub fn read_history(&self, limit: usize) -> io::Result<Vec<HistoryEntry>> {
        let bytes = match fs::read(self.history_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(bytes
            .split(|&b| b == b'\n')
            .rev()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .take(limit)
            .collect())
    }

    /// The generation of the newest history entry (0 when there is none).
    pub fn last_generation(&self) -> u64 {
        self.read_history(1)
            .ok()
            .and_then(|h| h.first().map(|e| e.generation))
            .unwrap_or(0)
    }
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

    fn names() -> Vec<String> {
        vec!["blue".into(), "green".into()]
    }

    fn file(primary: &str, generation: u64) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            route: StoredRoute {
                primary: primary.into(),
                canary_bp: 0,
                generation,
            },
            since: now_rfc3339(),
            previous: None,
            salt: Some(7),
            rollout: None,
            watch: None,
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert!(matches!(store.load(&names()), Loaded::Missing));
        store.save(&file("green", 7)).unwrap();
        match store.load(&names()) {
            Loaded::Valid { state, .. } => {
                assert_eq!(state.primary, 1);
                assert_eq!(state.generation, 7);
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_truncated_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        fs::write(store.state_path(), "{\"version\": 1, \"route\": {\"prim").unwrap();
        match store.load(&names()) {
            Loaded::Corrupt { moved_to, .. } => {
                assert!(moved_to.exists());
                assert!(!store.state_path().exists());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_pools_are_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        store.save(&file("purple", 3)).unwrap();
        assert!(matches!(store.load(&names()), Loaded::Mismatch { .. }));
        assert!(
            store.state_path().exists(),
            "a mismatched file is left in place"
        );
    }

    #[test]
    fn history_reads_newest_first_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        for g in 1..=5 {
            store
                .append_history(&HistoryEntry {
                    ts: now_rfc3339(),
                    generation: g,
                    action: "flip".into(),
                    from: "blue".into(),
                    to: "green".into(),
                    actor: "uid:0".into(),
                    reason: None,
                    result: "ok".into(),
                    forced: false,
                    trigger: None,
                    detail: None,
                })
                .unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.history_path())
            .unwrap();
        f.write_all(b"{\"ts\": \"torn").unwrap();
        let h = store.read_history(3).unwrap();
        assert_eq!(
            h.iter().map(|e| e.generation).collect::<Vec<_>>(),
            [5, 4, 3]
        );
        // The next entry after a torn line still lands on a line of its own.
        let mut next = h[0].clone();
        next.generation = 6;
        store.append_history(&next).unwrap();
        let h = store.read_history(10).unwrap();
        assert_eq!(
            h.iter().map(|e| e.generation).collect::<Vec<_>>(),
            [6, 5, 4, 3, 2, 1]
        );
    }

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(format_percent(500), "5%");
        assert_eq!(format_percent(25), "0.25%");
        assert_eq!(format_percent(1), "0.01%");
        assert_eq!(format_percent(1050), "10.5%");
        assert_eq!(format_percent(10_000), "100%");
    }
}
