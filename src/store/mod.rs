//! Where the routing state and its history are kept, behind one interface: the controller
//! (`crate::admin`) decides a change and hands the new [`StateFile`] to a [`Store`], which decides
//! what "durable" means — fsync and rename for a file ([`mod@file`]).
//!
//! The controller does not know which store it has; a change is acknowledged once `save`
//! returns. A store shared by a fleet ([`etcd`]) also hands over the changes other instances
//! make ([`Store::changes`]), learns what this instance applied ([`Store::applied`]) and says
//! who else is in the fleet ([`Store::fleet`]).

pub mod etcd;
pub mod file;
mod gateway;

use std::io;

use serde::{Deserialize, Serialize};

use crate::config::{StateBackend, StateConfig};
use crate::metrics::Tally;
use crate::state::{HistoryEntry, Loaded, StateFile, StoreError};

pub use etcd::EtcdStore;
pub use file::FileStore;

/// The store `[state]` asks for.
pub fn open(config: &StateConfig) -> Result<Box<dyn Store>, String> {
    Ok(match &config.backend {
        StateBackend::File => Box::new(FileStore::new(&config.dir)),
        StateBackend::Etcd(etcd) => Box::new(EtcdStore::start(etcd, &config.dir)?),
    })
}

/// The fleet as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetStatus {
    pub backend: &'static str,
    /// Whether the state store answers; when not, `error` says why.
    pub up: bool,
    pub error: Option<String>,
    /// This instance's name.
    pub instance: String,
    /// The instance that runs the guard and rollouts for the fleet.
    pub leader: Option<String>,
    /// Where the fleet's state lives.
    pub key: String,
    /// Every live instance (its lease is alive) and what it applied.
    pub members: Vec<FleetMember>,
}

/// What one instance saw of the change the guard judges, published for the fleet's leader to
/// sum: the watched pool and the other one over the watch's span, and the rollout's target over
/// its step's span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgedFigures {
    /// The state generation these figures belong to: figures of another change are not summed.
    pub generation: u64,
    /// When they were taken (milliseconds since the Unix epoch): old ones are not summed.
    pub at_ms: u64,
    pub watched: Option<Tally>,
    pub other: Option<Tally>,
    pub step: Option<Tally>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetMember {
    pub instance: String,
    pub generation: u64,
    pub applied_at: String,
    /// Seconds since it applied that generation.
    pub ago_s: f64,
    pub pid: u32,
}

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
    /// `base` is the generation the change was made from: a shared store refuses the change
    /// ([`StoreError::Conflict`]) when another instance has moved the state on since.
    fn save(&self, file: &StateFile, base: u64) -> Result<(), StoreError>;
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

    /// A shared store's stream of the newest state (any instance's change); none for a file.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<Option<StateFile>>> {
        None
    }

    /// This instance now serves `file` (a shared store publishes it and keeps a local copy).
    fn applied(&self, _file: &StateFile) {}

    /// The fleet, for `status`; none for a single instance.
    fn fleet(&self) -> Option<FleetStatus> {
        None
    }

    /// Whether changes can be made durable now.
    fn backend_up(&self) -> bool {
        true
    }

    /// Publishes this instance's figures for the change being judged (a fleet's leader sums
    /// them); nothing for a single instance.
    fn publish_figures(&self, _figures: &JudgedFigures) {}

    /// The other live instances' published figures.
    fn fleet_figures(&self) -> Vec<JudgedFigures> {
        Vec::new()
    }

    /// Whether this instance runs the guard and rollouts (always, alone; in a fleet, the one
    /// instance that holds the lead).
    fn leads(&self) -> bool {
        true
    }
}
