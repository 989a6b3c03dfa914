//! Where the routing state and its history are kept, behind one interface: the controller
//! (`crate::admin`) decides a change and hands the new [`StateFile`] to a [`Store`], which decides
//! what "durable" means — fsync and rename for a file ([`mod@file`]).
//!
//! The controller does not know which store it has; a change is acknowledged once `save`
//! returns.

pub mod file;

use std::io;

use crate::state::{HistoryEntry, Loaded, StateFile, StoreError};

pub use file::FileStore;

/// The routing state's home: load at start, save on every change, and the history beside it.
///
/// Calls block (a file store fsyncs): call them off the async executor, as the admin handler
/// does.
pub trait Store: Send + Sync {
    /// Where the routing state lives, for log lines and error messages.
    fn state_location(&self) -> String;
    /// Where history lives, for error messages.
    fn history_location(&self) -> String;
    /// The saved state, checked against the configured pool names.
    fn load(&self, pool_names: &[String]) -> Loaded;
    /// Makes `file` the durable state; the change may be acknowledged once this returns `Ok`.
    fn save(&self, file: &StateFile) -> Result<(), StoreError>;
    /// Records one change in history.
    fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError>;
    /// The newest `limit` history entries, newest first.
    fn read_history(&self, limit: usize) -> io::Result<Vec<HistoryEntry>>;
    /// The generation of the newest history entry (0 when there is none), so generations keep
    /// counting when the state itself is lost.
    fn last_generation(&self) -> u64 {
        self.read_history(1)
            .ok()
            .and_then(|h| h.first().map(|e| e.generation))
            .unwrap_or(0)
    }
}
