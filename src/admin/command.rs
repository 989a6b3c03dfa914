//! The admin API's vocabulary: the commands it takes, the answers it gives and the errors it
//! refuses with (each with its HTTP status and stable code). Pure data; the handler is in the
//! parent module, the wire format in [`super::http`].

use std::time::Duration;

use serde::Serialize;

use super::{Reloaded, Status};
use crate::state::{HistoryEntry, StoredRoute};

/// Default and largest `GET /v1/history?limit=`.
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// One admin request, parsed and typed.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminCommand {
    Status,
    Health,
    History {
        limit: usize,
    },
    Flip {
        to: String,
        change: ChangeOpts,
    },
    Canary {
        pool: String,
        bp: u32,
        change: ChangeOpts,
    },
    Promote {
        change: ChangeOpts,
    },
    Rollback {
        change: ChangeOpts,
    },
    /// Re-read the configuration file and apply what changed.
    Reload {
        reason: Option<String>,
    },
    /// A signed `sy_preview` cookie that lets a browser preview `pool`.
    PreviewCookie {
        pool: String,
    },
    /// Start a progressive rollout to `to`: canary weights `steps` (percent), `interval` each.
    Rollout {
        to: String,
        steps: Vec<f64>,
        interval: Duration,
        change: ChangeOpts,
    },
    RolloutPause {
        change: ChangeOpts,
    },
    RolloutResume {
        change: ChangeOpts,
    },
    /// Stop the rollout and send the canary's traffic back (canary 0).
    RolloutAbort {
        change: ChangeOpts,
    },
    /// The delivery report (report.rs) over the last `since`.
    Report {
        since: Duration,
    },
    /// Inject faults into `pool`'s requests for a while (`crate::faults`).
    Faults {
        pool: String,
        faults: crate::faults::FaultRequest,
        change: ChangeOpts,
    },
    FaultsClear {
        change: ChangeOpts,
    },
    /// Copy `bp` of the live colour's requests to `pool` for a while (`crate::shadow`).
    Shadow {
        pool: String,
        bp: u32,
        duration: Option<Duration>,
        change: ChangeOpts,
    },
    ShadowStop {
        change: ChangeOpts,
    },
    /// The latest shadow session's report.
    ShadowReport,
}

/// Options every change accepts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeOpts {
    /// Skip the health gate (recorded in history).
    pub force: bool,
    pub reason: Option<String>,
    /// Refuse unless the current generation is this one (optimistic concurrency for scripts).
    pub if_generation: Option<u64>,
}

/// Why an admin request was refused or failed. Rendered once, as `{"error", "code"}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unauthorized: send `Authorization: Bearer <token>` with a token from the admin token file"
    )]
    Unauthorized,
    /// A `read` token asked for a change.
    #[error("forbidden: the token `{token}` may only read (GET); use a token with write scope (a `NAME:TOKEN` line) to make changes")]
    Forbidden { token: String },
    #[error("no such endpoint {0}; see GET /v1/status, POST /v1/flip, /v1/canary, /v1/promote, /v1/rollback, GET /v1/history")]
    NotFound(String),
    #[error("unknown pool `{name}`; the pools are {known}")]
    UnknownPool { name: String, known: String },
    #[error("{path} needs {allowed}, not {method}")]
    MethodNotAllowed {
        path: String,
        method: String,
        allowed: &'static str,
    },
    #[error("request body is over the {limit} byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Timeout(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request was understood but its content cannot be applied (a reload's file has
    /// errors, or changes what cannot change in place); `details` lists each problem.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        details: Vec<String>,
    },
    #[error("{0}")]
    NotImplemented(String),
    /// A dependency the change needs is down (the fleet's state store); retry later.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::Unauthorized => 401,
            AdminError::Forbidden { .. } => 403,
            AdminError::NotFound(_) | AdminError::UnknownPool { .. } => 404,
            AdminError::MethodNotAllowed { .. } => 405,
            AdminError::Conflict { .. } => 409,
            AdminError::PayloadTooLarge { .. } => 413,
            AdminError::Unprocessable { .. } => 422,
            AdminError::Timeout(_) => 408,
            AdminError::Internal(_) => 500,
            AdminError::NotImplemented(_) => 501,
            AdminError::Unavailable { .. } => 503,
        }
    }

    /// The stable, machine-readable code scripts match on.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Unauthorized => "unauthorized",
            AdminError::Forbidden { .. } => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::UnknownPool { .. } => "unknown_pool",
            AdminError::MethodNotAllowed { .. } => "method_not_allowed",
            AdminError::PayloadTooLarge { .. } => "payload_too_large",
            AdminError::Timeout(_) => "timeout",
            AdminError::Conflict { code, .. }
            | AdminError::Unprocessable { code, .. }
            | AdminError::Unavailable { code, .. } => code,
            AdminError::NotImplemented(_) => "not_implemented",
            AdminError::Internal(_) => "internal",
        }
    }
}

/// A successful answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Preview(PreviewCookie),
    Shadow(super::ShadowReport),
    Status(Status),
    Change(Change),
    Reload(Reloaded),
    History(Vec<HistoryEntry>),
    Report(crate::report::Report),
    Health { ok: bool },
}

/// The answer to `POST /v1/preview-cookie`.
#[derive(Debug, Serialize)]
pub struct PreviewCookie {
    pub pool: String,
    /// `sy_preview=<pool>.<signature>`, ready for a `Cookie` header or `document.cookie`.
    pub cookie: String,
}

/// The answer to a change: the new status, what it replaced, and how fast it was applied.
#[derive(Debug, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub status: Status,
    pub previous: StoredRoute,
    /// Microseconds from receiving the command to the atomic swap.
    pub applied_us: u64,
    /// False when the command asked for the state that was already live (nothing was written).
    pub changed: bool,
    /// Set when the change is durable but its history line could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}
