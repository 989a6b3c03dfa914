//! The admin API on the wire: HTTP/1.1 + JSON over the unix socket and, optionally, TCP.
//!
//! This layer only moves bytes: it authenticates, bounds and parses the request into an
//! [`AdminCommand`], runs [`Admin::handle`] off the executor (changes fsync), and renders the
//! answer. Every error leaves as `{"error": "<sentence>", "code": "<code>"}` with its status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use pingora::server::{ListenFds, ShutdownWatch};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Admin, AdminCommand, AdminError, ChangeOpts, Reply, DEFAULT_HISTORY_LIMIT};
use crate::httpd::{self, HandOver, Peer};
use crate::upgrade::{HandedOver, UpgradeError, UpgradeRequest, Upgrader};

/// Longest rollout step accepted.
const MAX_ROLLOUT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Largest admin request body; anything bigger is refused with 413.
pub const MAX_BODY: usize = 64 * 1024;
/// A client that does not send its whole body within this is answered 408.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Request header naming the person or system behind a change, recorded in history.
pub const ACTOR_HEADER: &str = "x-switchyard-actor";
/// Longest actor name kept from the header.
const MAX_ACTOR_LEN: usize = 128;

/// What a token may do: `read` calls GET endpoints only (dashboards, monitoring, `ctl status`),
/// `write` calls everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
}

/// One token file line: the token's name, its scope and the secret.
///
/// `NAME:SCOPE:TOKEN` (SCOPE `read` or `write`), `NAME:TOKEN` (write, as before scopes existed) or
/// a bare `TOKEN` (named `admin`, write). The scope goes in the middle so that every older line
/// keeps its meaning, except a `NAME:TOKEN` whose token itself starts with `read:` or `write:`.
pub fn parse_token_line(line: &str) -> (String, Scope, String) {
    let Some((name, rest)) = line
        .split_once(':')
        .filter(|(n, t)| !n.is_empty() && !t.is_empty())
    else {
        return ("admin".to_string(), Scope::Write, line.to_string());
    };
    let (scope, token) = match rest.split_once(':') {
        Some(("read", tok)) if !tok.is_empty() => (Scope::Read, tok),
        Some(("write", tok)) if !tok.is_empty() => (Scope::Write, tok),
        _ => (Scope::Write, rest),
    };
    (name.trim().to_string(), scope, token.trim().to_string())
}

/// Bearer tokens for the TCP admin API, each with a name recorded as the actor and a scope.
#[derive(Clone)]
pub struct Tokens(Vec<(String, Scope, Vec<u8>)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        let names: Vec<&str> = self.0.iter().map(|(n, _, _)| n.as_str()).collect();
        write!(f, "Tokens({names:?})")
    }
}

/// Why the token file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin token file {path}: {source}; create it (e.g. `openssl rand -hex 32 > {path}`) or remove [admin] listen")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file {0} has no token; put one token per line, optionally as NAME:TOKEN or NAME:read:TOKEN")]
    Empty(PathBuf),
}

impl Tokens {
    /// Reads a token file: one token per line (see [`parse_token_line`]); blank lines and `#`
    /// comments are ignored.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let tokens: Vec<(String, Scope, Vec<u8>)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, scope, token) = parse_token_line(l);
                (name, scope, token.into_bytes())
            })
            .collect();
        if tokens.is_empty() {
            return Err(TokenError::Empty(path.to_path_buf()));
        }
        Ok(Tokens(tokens))
    }

    /// The name and scope of the token `presented` matches. Every token is compared in constant
    /// time, and all of them are compared, so timing reveals neither a prefix nor which matched.
    pub fn check(&self, presented: &[u8]) -> Option<(&str, Scope)> {
        let mut found = None;
        for (name, scope, token) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some((name.as_str(), *scope));
            }
        }
        found
    }
}

/// Serves the admin API on its sockets until shutdown, or until a binary upgrade has handed
/// them to the new process.
///
/// A pingora [`Service`](pingora::services::Service) rather than a background service so that
/// its sockets are in pingora's fd table and go to the new process with the proxy's listeners
/// (next-steps §1.3 (A)): `ctl status` never meets "connection refused" during an upgrade.
pub struct AdminService {
    pub admin: Arc<Admin>,
    endpoints: Vec<(HandOver, Option<Tokens>)>,
    handed_over: HandedOver,
    upgrader: Option<Arc<Upgrader>>,
}

impl AdminService {
    /// `endpoints` pairs each socket with the tokens it requires (`None`: the unix socket, where
    /// file permissions are the boundary). Without an `upgrader`, `POST /v1/upgrade` answers 501.
    pub fn new(
        admin: Arc<Admin>,
        endpoints: Vec<(HandOver, Option<Tokens>)>,
        handed_over: HandedOver,
        upgrader: Option<Arc<Upgrader>>,
    ) -> AdminService {
        AdminService {
            admin,
            endpoints,
            handed_over,
            upgrader,
        }
    }
}

#[async_trait]
impl pingora::services::Service for AdminService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let stop = self.handed_over.stop_accepting(shutdown.clone());
        let mut tasks = Vec::new();
        for (endpoint, tokens) in &mut self.endpoints {
            let listener = match endpoint.open(fds.as_ref()) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(
                        "ADMIN API UNAVAILABLE: {e}; restart switchyard to get it back"
                    );
                    continue;
                }
            };
            let admin = self.admin.clone();
            let tokens = tokens.clone();
            let upgrader = self.upgrader.clone();
            tasks.push(tokio::spawn(httpd::serve(
                listener,
                move |req, peer| {
                    respond(admin.clone(), tokens.clone(), upgrader.clone(), req, peer)
                },
                stop.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        httpd::hold_until_shutdown(&mut shutdown).await;
    }

    fn name(&self) -> &str {
        "admin"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(
            self.endpoints
                .iter()
                .map(|(e, _)| e.key().to_string())
                .collect(),
        )
    }
}

/// Handles one HTTP request end to end.
pub async fn respond(
    admin: Arc<Admin>,
    tokens: Option<Tokens>,
    upgrader: Option<Arc<Upgrader>>,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/v1/upgrade" {
        return upgrade(upgrader, tokens, req, peer).await;
    }
    match route(admin, tokens, req, peer).await {
        Ok(reply) => httpd::json(200, to_json(&reply)),
        Err(e) => error_response(&e),
    }
}

/// `POST /v1/upgrade {"binary"?, "timeout"?}`: hands this process's sockets to a new binary
/// (upgrade.rs). Answers once the new process is about to take over; `ctl upgrade` then waits
/// for it to answer `status`.
async fn upgrade(
    upgrader: Option<Arc<Upgrader>>,
    tokens: Option<Tokens>,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<Full<Bytes>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        binary: Option<std::path::PathBuf>,
        /// e.g. "60s".
        timeout: Option<String>,
    }
    let parsed = async {
        let actor = authenticate(tokens.as_ref(), &req, &peer)?;
        if req.method() != Method::POST {
            return Err(AdminError::MethodNotAllowed {
                path: "/v1/upgrade".into(),
                method: req.method().to_string(),
                allowed: "POST",
            });
        }
        let body: Body = parse(&read_body(req).await?)?;
        let timeout = match body.timeout {
            None => None,
            Some(t) => Some(
                humantime::parse_duration(&t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!(
                            "upgrade timeout `{t}` is not a positive duration; write e.g. \"60s\""
                        ))
                    })?,
            ),
        };
        Ok((
            actor,
            UpgradeRequest {
                binary: body.binary,
                timeout,
            },
        ))
    }
    .await;
    let (actor, request) = match parsed {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let Some(upgrader) = upgrader else {
        return upgrade_error(&UpgradeError::Unavailable);
    };
    tracing::info!(actor = %actor, "binary upgrade requested");
    match upgrader.upgrade(request).await {
        Ok(started) => httpd::json(200, to_json(&started)),
        Err(e) => upgrade_error(&e),
    }
}

fn upgrade_error(e: &UpgradeError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": e.to_string(), "code": e.code() });
    httpd::json(e.status(), to_json(&body))
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("replies serialise");
    out.push(b'\n');
    out
}

/// Renders an error as `{"error", "code"}` with its status.
pub fn error_response(e: &AdminError) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({ "error": e.to_string(), "code": e.code() });
    if let AdminError::Unprocessable { details, .. } = e {
        body["errors"] = serde_json::json!(details);
    }
    let mut resp = httpd::json(e.status(), to_json(&body));
    match e {
        AdminError::MethodNotAllowed { allowed, .. } => {
            resp.headers_mut()
                .insert("allow", hyper::header::HeaderValue::from_static(allowed));
        }
        AdminError::Unauthorized => {
            resp.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Bearer realm=\"switchyard\""),
            );
        }
        _ => {}
    }
    resp
}

/// Turns a request's body and query into a command.
type ParseFn = fn(&[u8], &str) -> Result<AdminCommand, AdminError>;

async fn route(
    admin: Arc<Admin>,
    tokens: Option<Tokens>,
    req: Request<Incoming>,
    peer: Peer,
) -> Result<Reply, AdminError> {
    let path = req.uri().path().to_string();
    // Liveness for load balancers and monitors, which hold no token: it reveals nothing.
    if path == "/v1/health" && req.method() == Method::GET {
        return Ok(Reply::Health { ok: true });
    }
    let actor = authenticate(tokens.as_ref(), &req, &peer)?;
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();

    let (needs, make): (Method, ParseFn) = match path.as_str() {
        "/v1/status" => (Method::GET, |_, _| Ok(AdminCommand::Status)),
        "/v1/health" => (Method::GET, |_, _| Ok(AdminCommand::Health)),
        "/v1/history" => (Method::GET, |_, q| history(q)),
        "/v1/report" => (Method::GET, |_, q| report(q)),
        "/v1/flip" => (Method::POST, |b, _| flip(b)),
        "/v1/canary" => (Method::POST, |b, _| canary(b)),
        "/v1/promote" => (Method::POST, |b, _| {
            Ok(AdminCommand::Promote { change: opts(b)? })
        }),
        "/v1/rollback" => (Method::POST, |b, _| {
            Ok(AdminCommand::Rollback { change: opts(b)? })
        }),
        "/v1/reload" => (Method::POST, |b, _| reload(b)),
        "/v1/preview-cookie" => (Method::POST, |b, _| preview_cookie(b)),
        "/v1/rollout" => (Method::POST, |b, _| rollout(b)),
        "/v1/rollout/pause" => (Method::POST, |b, _| {
            Ok(AdminCommand::RolloutPause { change: opts(b)? })
        }),
        "/v1/rollout/resume" => (Method::POST, |b, _| {
            Ok(AdminCommand::RolloutResume { change: opts(b)? })
        }),
        "/v1/rollout/abort" => (Method::POST, |b, _| {
            Ok(AdminCommand::RolloutAbort { change: opts(b)? })
        }),
        "/v1/faults" => (Method::POST, |b, _| faults(b)),
        "/v1/faults/clear" => (Method::POST, |b, _| {
            Ok(AdminCommand::FaultsClear { change: opts(b)? })
        }),
        "/v1/shadow" if method == Method::POST => (Method::POST, |b, _| shadow(b)),
        "/v1/shadow" => (Method::GET, |_, _| Ok(AdminCommand::ShadowReport)),
        "/v1/shadow/stop" => (Method::POST, |b, _| {
            Ok(AdminCommand::ShadowStop { change: opts(b)? })
        }),
        _ => return Err(AdminError::NotFound(path)),
    };
    if method != needs {
        return Err(AdminError::MethodNotAllowed {
            path,
            method: method.to_string(),
            allowed: if needs == Method::GET { "GET" } else { "POST" },
        });
    }
    let body = read_body(req).await?;
    let cmd = make(&body, &query)?;
    tokio::task::spawn_blocking(move || admin.handle(cmd, &actor))
        .await
        .map_err(|e| AdminError::Internal(format!("admin handler failed: {e}")))?
}

/// Who is making the request: `uid:N` on the unix socket, `token:NAME` on TCP, followed by the
/// `X-Switchyard-Actor` header when given.
fn authenticate(
    tokens: Option<&Tokens>,
    req: &Request<Incoming>,
    peer: &Peer,
) -> Result<String, AdminError> {
    let mut actor = match tokens {
        Some(tokens) => {
            let presented = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .ok_or(AdminError::Unauthorized)?;
            let (name, scope) = tokens.check(presented).ok_or(AdminError::Unauthorized)?;
            // Anything but a read is a change (or the upgrade): a read token may not.
            if scope == Scope::Read && req.method() != Method::GET && req.method() != Method::HEAD {
                return Err(AdminError::Forbidden {
                    token: name.to_string(),
                });
            }
            format!("token:{name}")
        }
        None => match peer.uid {
            Some(uid) => format!("uid:{uid}"),
            None => "unknown".to_string(),
        },
    };
    if let Some(who) = req
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let who: String = who
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_ACTOR_LEN)
            .collect();
        if !who.trim().is_empty() {
            actor = format!("{actor} ({})", who.trim());
        }
    }
    Ok(actor)
}

pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let too_large = AdminError::PayloadTooLarge { limit: MAX_BODY };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large);
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(AdminError::Timeout(format!(
            "the request body did not arrive within {BODY_TIMEOUT:?}"
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Ok(Err(e)) => Err(AdminError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// Parses a JSON body; an empty body is `{}`.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        AdminError::BadRequest(format!(
            "the request body is not valid JSON for this call: {e}"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    #[serde(default)]
    force: bool,
    reason: Option<String>,
    if_generation: Option<u64>,
}

impl From<ChangeBody> for ChangeOpts {
    fn from(b: ChangeBody) -> ChangeOpts {
        ChangeOpts {
            force: b.force,
            reason: b.reason.filter(|r| !r.trim().is_empty()),
            if_generation: b.if_generation,
        }
    }
}

fn opts(body: &[u8]) -> Result<ChangeOpts, AdminError> {
    parse::<ChangeBody>(body).map(Into::into)
}

fn flip(body: &[u8]) -> Result<AdminCommand, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flip {
        to: String,
        #[serde(default)]
        force: bool,
        reason: Option<String>,
        if_generation: Option<u64>,
    }
    let f: Flip = parse(body)?;
    Ok(AdminCommand::Flip {
        to: f.to,
        change: ChangeBody {
            force: f.force,
            reason: f.reason,
            if_generation: f.if_generation,
        }
        .into(),
    })
}

fn canary(body: &[u8]) -> Result<AdminCommand, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Canary {
        pool: String,
        percent: Option<f64>,
        bp: Option<u32>,
        #[serde(default)]
        force: bool,
        reason: Option<String>,
        if_generation: Option<u64>,
    }
    let c: Canary = parse(body)?;
    let bp =
        match (c.percent, c.bp) {
            (Some(p), None) => percent_to_bp(p)?,
            (None, Some(bp)) => bp,
            _ => return Err(AdminError::BadRequest(
                "give the canary weight as exactly one of `percent` (e.g. 0.25) or `bp` (e.g. 25)"
                    .into(),
            )),
        };
    Ok(AdminCommand::Canary {
        pool: c.pool,
        bp,
        change: ChangeBody {
            force: c.force,
            reason: c.reason,
            if_generation: c.if_generation,
        }
        .into(),
    })
}

/// A percentage with at most two decimals (0.01 % = 1 bp) as basis points.
pub fn percent_to_bp(p: f64) -> Result<u32, AdminError> {
    let bp = p * 100.0;
    if !p.is_finite() || !(0.0..=100.0).contains(&p) || (bp - bp.round()).abs() > 1e-6 {
        return Err(AdminError::BadRequest(format!(
            "canary percent {p} must be between 0 and 100 with at most two decimals (0.01 is the smallest step)"
        )));
    }
    Ok(bp.round() as u32)
}

fn rollout(body: &[u8]) -> Result<AdminCommand, AdminError> {
    /// `"60s"` or a number of seconds.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Interval {
        Text(String),
        Seconds(f64),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rollout {
        to: String,
        steps: Vec<f64>,
        interval: Interval,
        #[serde(default)]
        force: bool,
        reason: Option<String>,
        if_generation: Option<u64>,
    }
    let r: Rollout = parse(body)?;
    let interval = match r.interval {
        Interval::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            AdminError::BadRequest(format!(
                "rollout interval `{t}` is not a duration ({e}); write e.g. \"60s\" or \"5m\""
            ))
        })?,
        Interval::Seconds(s) => std::time::Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "rollout interval {s} must be a positive number of seconds"
                ))
            })?,
    };
    if interval > MAX_ROLLOUT_INTERVAL {
        return Err(AdminError::BadRequest(format!(
            "rollout interval {interval:?} is longer than a day; use shorter steps (pause holds a \
             step as long as you like)"
        )));
    }
    Ok(AdminCommand::Rollout {
        to: r.to,
        steps: r.steps,
        interval,
        change: ChangeBody {
            force: r.force,
            reason: r.reason,
            if_generation: r.if_generation,
        }
        .into(),
    })
}

/// A duration given as `"10m"` in a request body.
fn body_duration(what: &str, text: Option<String>) -> Result<Option<Duration>, AdminError> {
    text.map(|t| {
        humantime::parse_duration(&t).map_err(|e| {
            AdminError::BadRequest(format!(
                "{what} `{t}` is not a duration ({e}); write e.g. \"200ms\", \"30s\" or \"10m\""
            ))
        })
    })
    .transpose()
}

/// A share in percent (two decimals at most) as basis points; 0 when absent.
fn share(what: &str, p: Option<f64>) -> Result<u32, AdminError> {
    p.map_or(Ok(0), |p| {
        percent_to_bp(p).map_err(|_| {
            AdminError::BadRequest(format!(
                "{what} {p} must be a percentage between 0 and 100 with at most two decimals"
            ))
        })
    })
}

fn faults(body: &[u8]) -> Result<AdminCommand, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Faults {
        pool: String,
        abort_percent: Option<f64>,
        status: Option<u16>,
        delay: Option<String>,
        delay_percent: Option<f64>,
        #[serde(rename = "for")]
        duration: Option<String>,
        #[serde(default)]
        force: bool,
        reason: Option<String>,
        if_generation: Option<u64>,
    }
    let f: Faults = parse(body)?;
    Ok(AdminCommand::Faults {
        pool: f.pool,
        faults: crate::faults::FaultRequest {
            abort_bp: share("abort_percent", f.abort_percent)?,
            status: f.status,
            delay_bp: share("delay_percent", f.delay_percent)?,
            delay: body_duration("delay", f.delay)?,
            duration: body_duration("for", f.duration)?,
        },
        change: ChangeBody {
            force: f.force,
            reason: f.reason,
            if_generation: f.if_generation,
        }
        .into(),
    })
}

fn shadow(body: &[u8]) -> Result<AdminCommand, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shadow {
        pool: String,
        percent: f64,
        #[serde(rename = "for")]
        duration: Option<String>,
        reason: Option<String>,
        if_generation: Option<u64>,
    }
    let s: Shadow = parse(body)?;
    Ok(AdminCommand::Shadow {
        pool: s.pool,
        bp: share("percent", Some(s.percent))?,
        duration: body_duration("for", s.duration)?,
        change: ChangeBody {
            force: false,
            reason: s.reason,
            if_generation: s.if_generation,
        }
        .into(),
    })
}

fn reload(body: &[u8]) -> Result<AdminCommand, AdminError> {
    Ok(AdminCommand::Reload {
        reason: opts(body)?.reason,
    })
}

fn preview_cookie(body: &[u8]) -> Result<AdminCommand, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Preview {
        pool: String,
    }
    let p: Preview = parse(body)?;
    Ok(AdminCommand::PreviewCookie { pool: p.pool })
}

/// `GET /v1/report?since=30d`.
fn report(query: &str) -> Result<AdminCommand, AdminError> {
    let mut since = crate::report::DEFAULT_SINCE;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) => {
                since = humantime::parse_duration(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!(
                            "since `{v}` is not a positive duration; use e.g. since=30d or \
                             since=12h"
                        ))
                    })?;
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{pair}`; report takes only since=DURATION"
                )))
            }
        }
    }
    Ok(AdminCommand::Report { since })
}

fn history(query: &str) -> Result<AdminCommand, AdminError> {
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => {
                limit = v.parse().map_err(|_| {
                    AdminError::BadRequest(format!("limit `{v}` is not a whole number"))
                })?;
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{pair}`; history takes only limit=N"
                )))
            }
        }
    }
    Ok(AdminCommand::History { limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_convert_exactly() {
        assert_eq!(percent_to_bp(5.0).unwrap(), 500);
        assert_eq!(percent_to_bp(0.25).unwrap(), 25);
        assert_eq!(percent_to_bp(0.01).unwrap(), 1);
        assert_eq!(percent_to_bp(100.0).unwrap(), 10_000);
        assert!(percent_to_bp(0.005).is_err());
        assert!(percent_to_bp(101.0).is_err());
        assert!(percent_to_bp(-1.0).is_err());
        assert!(percent_to_bp(f64::NAN).is_err());
    }

    #[test]
    fn bodies_parse_into_commands() {
        assert_eq!(
            flip(br#"{"to":"green","reason":"release 42","if_generation":3}"#).unwrap(),
            AdminCommand::Flip {
                to: "green".into(),
                change: ChangeOpts {
                    force: false,
                    reason: Some("release 42".into()),
                    if_generation: Some(3),
                }
            }
        );
        assert!(matches!(
            canary(br#"{"pool":"green","percent":0.25}"#).unwrap(),
            AdminCommand::Canary { bp: 25, .. }
        ));
        assert!(matches!(
            canary(br#"{"pool":"green","bp":7}"#).unwrap(),
            AdminCommand::Canary { bp: 7, .. }
        ));
        assert_eq!(canary(br#"{"pool":"green"}"#).unwrap_err().status(), 400);
        assert_eq!(flip(br#"{"to":"green""#).unwrap_err().code(), "bad_request");
        assert_eq!(opts(b"").unwrap(), ChangeOpts::default());
        assert!(history("limit=5").is_ok());
        assert!(history("limit=x").is_err());
    }

    #[test]
    fn tokens_are_named_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(
            &p,
            "# deployers\nci:abc123\nsecond-token\ngrafana:read:r34d\nbot:write:w:1\n",
        )
        .unwrap();
        let t = Tokens::load(&p).unwrap();
        assert_eq!(t.check(b"abc123"), Some(("ci", Scope::Write)));
        assert_eq!(t.check(b"second-token"), Some(("admin", Scope::Write)));
        assert_eq!(t.check(b"r34d"), Some(("grafana", Scope::Read)));
        assert_eq!(t.check(b"w:1"), Some(("bot", Scope::Write)));
        // Not a scope: the old meaning (everything after the first colon) holds.
        assert_eq!(
            parse_token_line("ci:other:x"),
            ("ci".into(), Scope::Write, "other:x".into())
        );
        assert_eq!(t.check(b"abc12"), None);
        assert_eq!(t.check(b""), None);
        assert!(!format!("{t:?}").contains("abc123"));
        std::fs::write(&p, "\n# nothing\n").unwrap();
        assert!(Tokens::load(&p).is_err());
    }
}
