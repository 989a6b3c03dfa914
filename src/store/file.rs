//! The file store: `state.json` (the live routing) and `history.jsonl` (the audit trail) in the
//! state directory.
//!
//! A change is acknowledged only once `state.json` has been written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced: after a crash or `kill -9` the file holds
//! either the old state or the new one, never a torn mix. History is append-only JSON lines, one per
//! change, each fsynced; it is the record of who changed what, when and why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Store;
use crate::state::{self, HistoryEntry, Loaded, StateFile, StoreError};

const STATE_FILE: &str = "state.json";
const HISTORY_FILE: &str = "history.jsonl";

/// The state directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: &Path) -> FileStore {
        FileStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
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
}

impl Store for FileStore {
    fn state_location(&self) -> String {
        self.state_path().display().to_string()
    }

    fn history_location(&self) -> String {
        self.history_path().display().to_string()
    }

    /// Reads `state.json`, checking it against the configured pool names. A corrupt file is
    /// moved aside (never deleted: an operator may want to read it).
    fn load(&self, pool_names: &[String]) -> Loaded {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.move_aside(format!("cannot read it: {e}")),
        };
        match state::check(&text, pool_names) {
            Ok(loaded) => loaded,
            Err(why) => self.move_aside(why),
        }
    }

    /// Writes `state.json` durably ([`write_durably`]).
    fn save(&self, file: &StateFile, _base: u64) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(file).expect("state serialises");
        json.push(b'\n');
        write_durably(&self.dir, STATE_FILE, &json)
    }

    /// Appends one entry to `history.jsonl` and fsyncs it.
    fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let path = self.history_path();
        let err = |source| StoreError::File {
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
    fn read_history(&self, limit: usize) -> io::Result<Vec<HistoryEntry>> {
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
}

/// Writes `name` in `dir` durably (temp file, fsync, rename, fsync of the directory): after a
/// crash it holds the old contents or the new, never a mix. Used for `state.json` and for the
/// per-instance files beside it (`faults.json`).
pub fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let err = |source| StoreError::File {
        path: path.clone(),
        source,
        committed: false,
    };
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, &path).map_err(err)?;
    sync_dir(dir, &path)
}

/// Removes `name` from `dir` durably (absent already is fine).
pub fn remove_durably(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::File {
            path,
            source,
            committed: false,
        }),
    }
}

/// The directory's fsync, after `path` in it changed: a failure leaves the change in place.
fn sync_dir(dir: &Path, path: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::File {
            path: path.to_path_buf(),
            source,
            committed: true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{now_rfc3339, StoredRoute, STATE_VERSION};

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
        let store = FileStore::new(dir.path());
        assert!(matches!(store.load(&names()), Loaded::Missing));
        store.save(&file("green", 7), 0).unwrap();
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
        let store = FileStore::new(dir.path());
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
        let store = FileStore::new(dir.path());
        store.save(&file("purple", 3), 0).unwrap();
        assert!(matches!(store.load(&names()), Loaded::Mismatch { .. }));
        assert!(
            store.state_path().exists(),
            "a mismatched file is left in place"
        );
    }

    #[test]
    fn history_reads_newest_first_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
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
                    impact: None,
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
}
