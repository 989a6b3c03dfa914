//! `switchyard ctl`: the admin client for people and deploy scripts.
//!
//! Exit codes are the contract scripts rely on: 0 done, 1 refused by the proxy (the answer's
//! `code` says why) or a wait that timed out, 2 a usage error, 3 the proxy could not be reached or
//! did not accept the credentials. Human-readable output by default; with `--json` one JSON
//! document on stdout whatever happened: the answer on success, `{"error", "code", ...}` on any
//! failure (the sentence also goes to stderr), floats rounded ([`round_floats`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::admin::http::ACTOR_HEADER;
use crate::config::defaults::ADMIN_SOCKET;
use crate::state::format_percent;

mod render;

use render::{render, render_watch, routing_line, s};

/// How long ctl waits for the proxy before giving up.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin unix socket [default: $SWITCHYARD_SOCKET, else /run/switchyard/admin.sock].
    #[arg(long, global = true, conflicts_with = "url")]
    pub socket: Option<PathBuf>,
    /// The TCP admin API instead of the socket, e.g. http://127.0.0.1:9902 [default:
    /// $SWITCHYARD_URL].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// File holding the bearer token for the TCP admin API (a line of the token file); without
    /// it, the token is $SWITCHYARD_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the proxy's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making the change, recorded in history (default: $SWITCHYARD_ACTOR, $SUDO_USER or
    /// $USER).
    #[arg(long, global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Show the live pool, the canary weight, and each pool's backends.
    Status,
    /// Send all traffic to POOL.
    Flip {
        pool: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send PERCENT of new traffic (e.g. 5, 0.25, 0.01) to POOL, the non-primary pool.
    Canary {
        pool: String,
        percent: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Make the canary pool primary, at 100 %.
    Promote {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Go back to the state before the last change.
    Rollback {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Walk POOL's canary weight up STEPS, INTERVAL at each, judged by the guard; promote at the
    /// end, roll back on a breach.
    Rollout {
        pool: String,
        /// Canary weights in percent, increasing.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<f64>,
        /// How long each step is held and watched.
        #[arg(long, default_value = "60s")]
        interval: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Hold the rollout at its current step.
    Pause {
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout.
    Resume {
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop the rollout and send its traffic back (canary 0).
    Abort {
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show the latest changes, newest first, each with its impact (errors and latency of the
    /// colour that gained traffic and of the one that lost it, before and after).
    History {
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
    /// The delivery report from history: deploys per day, change failure rate, time to
    /// restore, lead time between deploys.
    Report {
        /// The period to cover, e.g. 30d, 7d, 12h.
        #[arg(long, default_value = "30d")]
        since: String,
    },
    /// Re-read the configuration file and apply what changed, in place; prints what changed.
    /// Refused (exit 1, nothing changed) when the file has errors, changes a key that needs a
    /// restart, or would leave a pool that serves traffic short of healthy backends.
    Reload {
        /// Why, for the history and the team.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Wait until POOL (default: every pool that gets traffic) has `health.min_healthy` healthy
    /// backends. Exit 0 when ready, 1 on timeout.
    WaitReady {
        pool: Option<String>,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print a signed cookie that lets a browser preview POOL (needs routing.preview_token_file).
    PreviewCookie { pool: String },
    /// Watch both colours side by side, refreshed every second: rate, errors, p50/p99,
    /// in-flight, healthy backends, weights. Ctrl-C to stop.
    Watch {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Wait until POOL has no request in flight and gets no new traffic, so the old colour can
    /// be stopped. Exit 0 when drained, 1 on timeout.
    WaitDrained {
        pool: String,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Rehearse failure: make POOL (the canary or idle colour) answer a share of its requests
    /// with an error and/or delay a share, for a while (`faults green --abort 5% --status 503
    /// --delay 200ms@10% --for 10m`). `faults clear` stops it. Refused on the live pool unless
    /// --force.
    Faults {
        /// The pool, or `clear`.
        pool: String,
        /// Share of the pool's requests answered at once with --status, e.g. 5%.
        #[arg(long)]
        abort: Option<String>,
        /// Status of an aborted request [default: 503].
        #[arg(long)]
        status: Option<u16>,
        /// Delay and share, e.g. 200ms@10% (200ms alone delays every request).
        #[arg(long)]
        delay: Option<String>,
        /// How long the faults last (at most faults.max_duration) [default: 10m].
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Inject on the live pool too.
        #[arg(long)]
        force: bool,
        /// Why, for the history and the team.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Copy PERCENT of the live colour's requests (GET and HEAD by default) to POOL, the idle
    /// colour, and compare the answers (`shadow green 10% --for 30m`); `shadow report` shows the
    /// comparison by route, `shadow stop` ends the copying (the report stays).
    Shadow {
        /// The pool receiving copies, or `report` or `stop`.
        pool: String,
        percent: Option<String>,
        /// How long to copy (at most shadow.max_duration) [default: 30m].
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Why, for the history and the team.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Replace the running binary without dropping a connection: the proxy starts BINARY (default:
    /// where the running one was installed) on the same config, lets it warm its backends up and
    /// hands it the listening sockets. Exit 0 once the new process answers, 1 if it failed (the
    /// old one then serves on, unchanged).
    Upgrade {
        /// The new binary (absolute path, or relative to here).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Bound on the whole upgrade (check, warm-up, hand-over, first answer).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Options every change takes.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Change even if the target pool is not ready (recorded as forced).
    #[arg(long)]
    pub force: bool,
    /// Why, for the history and the team.
    #[arg(long)]
    pub reason: Option<String>,
    /// Refuse unless the state is still at this generation.
    #[arg(long)]
    pub if_generation: Option<u64>,
    /// flip, canary, rollout: wait up to this long for the target pool to be ready instead of
    /// being refused because it is not (yet).
    #[arg(long, value_parser = parse_duration)]
    pub wait_ready: Option<Duration>,
    /// In a fleet (`[state] backend = "etcd"`): after the change, wait up to this long for every
    /// live instance to apply it; exit 1 naming those that did not.
    #[arg(long, value_parser = parse_duration)]
    pub wait_fleet: Option<Duration>,
}

impl ChangeArgs {
    /// The request body: these options plus `fields`.
    fn body(&self, mut fields: Value) -> Value {
        fields["force"] = json!(self.force);
        fields["reason"] = json!(self.reason);
        fields["if_generation"] = json!(self.if_generation);
        fields
    }
}

/// Exit code: the proxy refused (any 4xx or 5xx answer but 401/403), or a wait timed out.
const EXIT_REFUSED: u8 = 1;
/// Exit code: the command line (or the environment) is wrong.
const EXIT_USAGE: u8 = 2;
/// Exit code: the proxy could not be reached, did not answer, or refused the credentials.
const EXIT_UNREACHABLE: u8 = 3;

/// A failed ctl run: the exit code, the sentence for people, and the JSON document for
/// `--json` (always with `error` and `code`).
struct Failure {
    exit: u8,
    message: String,
    json: Value,
}

impl Failure {
    /// A failure ctl itself detected; `code` is a stable word scripts may match on.
    fn new(exit: u8, code: &str, message: String) -> Failure {
        let sentence = message
            .strip_prefix("error: ")
            .unwrap_or(&message)
            .to_string();
        Failure {
            exit,
            json: json!({ "error": sentence, "code": code }),
            message,
        }
    }
}

fn usage(message: String) -> Failure {
    Failure::new(EXIT_USAGE, "usage", message)
}

fn unreachable(message: String) -> Failure {
    Failure::new(EXIT_UNREACHABLE, "unreachable", message)
}

/// Where the admin API is: `--socket`/`--url`, else `$SWITCHYARD_SOCKET`/`$SWITCHYARD_URL`, else
/// the default socket.
enum Target {
    Socket(PathBuf),
    Url(String),
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn target(args: &CtlArgs) -> Result<Target, Failure> {
    if let Some(s) = &args.socket {
        return Ok(Target::Socket(s.clone()));
    }
    if let Some(u) = &args.url {
        return Ok(Target::Url(u.clone()));
    }
    match (env("SWITCHYARD_SOCKET"), env("SWITCHYARD_URL")) {
        (Some(_), Some(_)) => Err(usage(
            "error: both SWITCHYARD_SOCKET and SWITCHYARD_URL are set; unset one, or choose with \
             --socket or --url"
                .into(),
        )),
        (Some(s), None) => Ok(Target::Socket(PathBuf::from(s))),
        (None, Some(u)) => Ok(Target::Url(u)),
        (None, None) => Ok(Target::Socket(PathBuf::from(ADMIN_SOCKET))),
    }
}

/// The bearer token for the TCP admin API: `--token-file`, else `$SWITCHYARD_TOKEN`.
fn token(args: &CtlArgs, url: &str) -> Result<String, Failure> {
    if let Some(f) = &args.token_file {
        return read_token(f);
    }
    env("SWITCHYARD_TOKEN")
        .map(|t| t.trim().to_string())
        .ok_or_else(|| {
            usage(format!(
                "error: the TCP admin API at {url} needs a token: pass --token-file FILE or set \
                 SWITCHYARD_TOKEN"
            ))
        })
}

/// Rounds every non-integer number in `v` to 3 decimals, or 3 significant digits when smaller
/// (0.000123): enough for rates, ratios and milliseconds, without binary noise such as
/// `0.30000000000000004` for scripts to trip on. Integers (counts, generations) are untouched.
pub fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f != 0.0) {
                let magnitude = f.abs().log10().floor() as i32;
                let decimals = 3.max(2 - magnitude).min(15);
                let scale = 10f64.powi(decimals);
                if let Some(r) = serde_json::Number::from_f64((f * scale).round() / scale) {
                    *n = r;
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// A routing state as history describes it (`blue`, `blue + green 5%`), as fields:
/// `{primary, canary_pool, canary_bp}`; `None` for anything else (e.g. a reload's `?`).
pub fn parse_route(text: &str) -> Option<Value> {
    let valid = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    match text.split_once(" + ") {
        None => valid(text).then(|| json!({"primary": text, "canary_pool": null, "canary_bp": 0})),
        Some((primary, canary)) => {
            let (pool, pct) = canary.rsplit_once(' ')?;
            let pct: f64 = pct.strip_suffix('%')?.parse().ok()?;
            (valid(primary) && valid(pool)).then(|| {
                json!({"primary": primary, "canary_pool": pool,
                       "canary_bp": (pct * 100.0).round() as u64})
            })
        }
    }
}

/// `ctl history --json`: each entry's `from`/`to` become `{primary, canary_pool, canary_bp}`
/// (null when the entry is not a routing change), the sentence stays in `from_text`/`to_text`.
fn structure_history(v: &mut Value) {
    for e in v.as_array_mut().into_iter().flatten() {
        for (key, text_key) in [("from", "from_text"), ("to", "to_text")] {
            if let Some(text) = e[key].as_str().map(str::to_string) {
                e[key] = parse_route(&text).unwrap_or(Value::Null);
                e[text_key] = json!(text);
            }
        }
    }
}

/// The `--json` document of a success.
fn json_out(mut v: Value) -> String {
    round_floats(&mut v);
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Runs one ctl command.
pub fn run(args: CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match rt.block_on(execute(&args)) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("{}", f.message);
            if args.json {
                println!("{}", json_out(f.json));
            }
            ExitCode::from(f.exit)
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 500ms, 2s, 5m"))
}

async fn execute(args: &CtlArgs) -> Result<String, Failure> {
    match &args.verb {
        Verb::Watch { interval, count } => return watch(args, *interval, *count).await,
        Verb::WaitDrained { pool, timeout } => return wait_drained(args, pool, *timeout).await,
        Verb::Upgrade { binary, timeout } => {
            return upgrade(args, binary.as_deref(), *timeout).await
        }
        Verb::WaitReady { pool, timeout } => {
            return wait_ready(args, pool.as_deref(), *timeout).await
        }
        Verb::Flip { pool, change }
        | Verb::Canary { pool, change, .. }
        | Verb::Rollout { pool, change, .. } => {
            if let Some(within) = change.wait_ready {
                wait_ready(args, Some(pool), within).await?;
            }
        }
        _ => {}
    }
    let (method, path, body) = request_for(&args.verb)?;
    let mut answer = call(args, method, &path, body).await?;
    let wait_fleet = match &args.verb {
        Verb::Flip { change, .. }
        | Verb::Canary { change, .. }
        | Verb::Promote { change }
        | Verb::Rollback { change }
        | Verb::Rollout { change, .. } => change.wait_fleet,
        _ => None,
    };
    let mut fleet_line = None;
    if let Some(within) = wait_fleet {
        let generation = answer["generation"].as_u64().unwrap_or(0);
        let waited = wait_fleet_applied(args, generation, within).await?;
        fleet_line = Some(format!(
            "fleet: all {} instances serve generation {generation} ({} ms after the answer)",
            waited["instances"].as_array().map_or(0, Vec::len),
            waited["waited_ms"]
        ));
        answer["fleet_applied"] = waited;
    }
    if args.json {
        if let Verb::History { .. } = args.verb {
            structure_history(&mut answer);
        }
        return Ok(json_out(answer));
    }
    let out = render(&args.verb, &answer);
    Ok(match fleet_line {
        Some(line) => format!("{}\n{line}", out.trim_end()),
        None => out,
    })
}

/// How often `--wait-fleet` looks.
const FLEET_POLL: Duration = Duration::from_millis(20);

/// `--wait-fleet`: returns once every live instance of the fleet serves `generation` (or a
/// newer one), with who and how long it took; fails naming the stragglers.
async fn wait_fleet_applied(
    args: &CtlArgs,
    generation: u64,
    timeout: Duration,
) -> Result<Value, Failure> {
    let start = std::time::Instant::now();
    loop {
        let a = status(args).await?;
        let Some(members) = a["fleet"]["members"].as_array().cloned() else {
            return Err(Failure::new(
                EXIT_REFUSED,
                "not_a_fleet",
                "--wait-fleet needs a fleet, and this proxy keeps its state on its own \
                 ([state] backend = \"file\"); the change itself is made"
                    .into(),
            ));
        };
        let behind: Vec<String> = members
            .iter()
            .filter(|m| m["generation"].as_u64().unwrap_or(0) < generation)
            .map(|m| {
                format!(
                    "{} (at generation {})",
                    m["instance"].as_str().unwrap_or("?"),
                    m["generation"]
                )
            })
            .collect();
        if behind.is_empty() && !members.is_empty() {
            return Ok(json!({
                "generation": generation,
                "instances": members.iter().map(|m| m["instance"].clone()).collect::<Vec<_>>(),
                "waited_ms": start.elapsed().as_millis() as u64,
            }));
        }
        if start.elapsed() >= timeout {
            let mut f = Failure::new(
                EXIT_REFUSED,
                "fleet_not_applied",
                format!(
                    "the change (generation {generation}) is made, but not every instance \
                     applied it within {timeout:?}: {}",
                    if behind.is_empty() {
                        "no instance reports to the fleet".to_string()
                    } else {
                        behind.join(", ")
                    }
                ),
            );
            f.json["stragglers"] = json!(behind);
            return Err(f);
        }
        tokio::time::sleep(FLEET_POLL).await;
    }
}

fn request_for(verb: &Verb) -> Result<(&'static str, String, Option<Value>), Failure> {
    let post = |path: &str, body: Value| ("POST", path.to_string(), Some(body));
    Ok(match verb {
        Verb::Status => ("GET", "/v1/status".into(), None),
        Verb::Flip { pool, change } => post("/v1/flip", change.body(json!({ "to": pool }))),
        Verb::Canary {
            pool,
            percent,
            change,
        } => {
            let p: f64 = percent.trim_end_matches('%').parse().map_err(|_| {
                usage(format!(
                    "error: canary percent `{percent}` is not a number; write e.g. 5, 0.25 or 0.01"
                ))
            })?;
            post(
                "/v1/canary",
                change.body(json!({ "pool": pool, "percent": p })),
            )
        }
        Verb::Promote { change } => post("/v1/promote", change.body(json!({}))),
        Verb::Rollback { change } => post("/v1/rollback", change.body(json!({}))),
        Verb::Rollout {
            pool,
            steps,
            interval,
            change,
        } => post(
            "/v1/rollout",
            change.body(json!({ "to": pool, "steps": steps, "interval": interval })),
        ),
        Verb::Pause { reason } => post("/v1/rollout/pause", json!({ "reason": reason })),
        Verb::Resume { reason } => post("/v1/rollout/resume", json!({ "reason": reason })),
        Verb::Abort { reason } => post("/v1/rollout/abort", json!({ "reason": reason })),
        Verb::History { n } => ("GET", format!("/v1/history?limit={n}"), None),
        Verb::Report { since } => {
            humantime::parse_duration(since).map_err(|e| {
                usage(format!(
                    "error: --since `{since}` is not a duration ({e}); write e.g. 30d, 7d or 12h"
                ))
            })?;
            ("GET", format!("/v1/report?since={since}"), None)
        }
        Verb::Reload { reason } => post("/v1/reload", json!({ "reason": reason })),
        Verb::PreviewCookie { pool } => post("/v1/preview-cookie", json!({ "pool": pool })),
        Verb::Faults {
            pool,
            reason,
            force,
            ..
        } if pool == "clear" => post(
            "/v1/faults/clear",
            json!({ "reason": reason, "force": force }),
        ),
        Verb::Faults {
            pool,
            abort,
            status,
            delay,
            duration,
            force,
            reason,
        } => {
            let abort = abort
                .as_deref()
                .map(|a| percent_arg("--abort", a))
                .transpose()?;
            let (delay, delay_percent) = match delay.as_deref() {
                None => (None, None),
                Some(d) => {
                    let (time, share) = d.split_once('@').unwrap_or((d, "100%"));
                    parse_duration(time).map_err(|e| usage(format!("error: --delay: {e}")))?;
                    (Some(time.to_string()), Some(percent_arg("--delay", share)?))
                }
            };
            post(
                "/v1/faults",
                json!({
                    "pool": pool,
                    "abort_percent": abort,
                    "status": status,
                    "delay": delay,
                    "delay_percent": delay_percent,
                    "for": duration.map(|d| humantime::format_duration(d).to_string()),
                    "force": force,
                    "reason": reason,
                }),
            )
        }
        Verb::Shadow { pool, .. } if pool == "report" => ("GET", "/v1/shadow".into(), None),
        Verb::Shadow { pool, reason, .. } if pool == "stop" => {
            post("/v1/shadow/stop", json!({ "reason": reason }))
        }
        Verb::Shadow {
            pool,
            percent,
            duration,
            reason,
        } => {
            let percent = percent.as_deref().ok_or_else(|| {
                usage(format!(
                    "error: say how much of the live traffic to copy: `shadow {pool} 10%`"
                ))
            })?;
            post(
                "/v1/shadow",
                json!({
                    "pool": pool,
                    "percent": percent_arg("shadow percent", percent)?,
                    "for": duration.map(|d| humantime::format_duration(d).to_string()),
                    "reason": reason,
                }),
            )
        }
        Verb::Watch { .. }
        | Verb::WaitDrained { .. }
        | Verb::WaitReady { .. }
        | Verb::Upgrade { .. } => ("GET", "/v1/status".into(), None),
    })
}

/// `5%` or `5` as a number of percent.
fn percent_arg(what: &str, text: &str) -> Result<f64, Failure> {
    text.trim()
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p: &f64| p.is_finite())
        .ok_or_else(|| {
            usage(format!(
                "error: {what} `{text}` is not a percentage; write e.g. 5%, 0.25% or 20"
            ))
        })
}

fn actor(args: &CtlArgs) -> Option<String> {
    args.actor.clone().or_else(|| {
        ["SWITCHYARD_ACTOR", "SUDO_USER", "USER"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    })
}

/// Sends one request to the admin API and returns its JSON answer, or a failure with exit code 1
/// (the proxy refused), 2 (bad --url) or 3 (unreachable, not switchyard, or unauthorised).
async fn call(
    args: &CtlArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    call_within(args, method, path, body, TIMEOUT).await
}

/// [`call`] with its own bound on the answer (an upgrade may take longer than [`TIMEOUT`]).
async fn call_within(
    args: &CtlArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    within: Duration,
) -> Result<Value, Failure> {
    let (io, host, token): (Box<dyn Io>, String, Option<String>) = match target(args)? {
        Target::Url(url) => {
            let uri: hyper::Uri = url.parse().map_err(|_| {
                usage(format!(
                    "error: --url `{url}` is not a URL like http://127.0.0.1:9902"
                ))
            })?;
            if uri.scheme_str() != Some("http") {
                return Err(usage(format!(
                    "error: --url `{url}`: only http:// is supported; keep the TCP admin API on loopback or a management network"
                )));
            }
            let authority = uri
                .authority()
                .ok_or_else(|| usage(format!("error: --url `{url}` has no host:port")))?
                .to_string();
            let token = token(args, &url)?;
            let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&authority))
                .await
                .map_err(|_| unreachable(format!("error: timed out connecting to {authority}")))?
                .map_err(|e| {
                    unreachable(format!(
                        "error: cannot reach switchyard at {authority}: {e}; is it running with [admin] listen = \"{authority}\"?"
                    ))
                })?;
            (Box::new(stream), authority, Some(token))
        }
        Target::Socket(socket) => {
            let stream = tokio::net::UnixStream::connect(&socket).await.map_err(|e| {
                unreachable(format!(
                    "error: cannot reach switchyard at {}: {e}; is switchyard running? (looked for {}; use --socket PATH or SWITCHYARD_SOCKET to point elsewhere)",
                    socket.display(),
                    socket.display()
                ))
            })?;
            (Box::new(stream), "localhost".into(), None)
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| unreachable(format!("error: cannot talk HTTP to the admin API: {e}")))?;
    tokio::spawn(conn);

    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(a) = actor(args) {
        req = req.header(ACTOR_HEADER, a);
    }
    let body = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")))
        .unwrap_or_default();
    let req = req
        .body(Full::new(body))
        .map_err(|e| usage(format!("error: bad request: {e}")))?;

    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| {
            unreachable(format!(
                "error: no answer from the admin API within {within:?}"
            ))
        })?
        .map_err(|e| unreachable(format!("error: the admin API connection failed: {e}")))?;
    let answer: Value = serde_json::from_slice(&bytes).map_err(|_| {
        unreachable(format!(
            "error: the admin API answered {status} with something that is not JSON; is this a switchyard admin endpoint?"
        ))
    })?;
    if status >= 400 {
        let msg = answer["error"].as_str().unwrap_or("refused");
        let code = answer["code"].as_str().unwrap_or("unknown");
        let mut message = format!("refused ({status} {code}): {msg}");
        for e in answer["errors"].as_array().into_iter().flatten() {
            message.push_str(&format!("\n  {}", e.as_str().unwrap_or("?")));
        }
        let mut json = answer.clone();
        if !json.is_object() {
            json = json!({ "error": msg, "code": code });
        }
        json["http_status"] = json!(status);
        // Credentials are not a refusal of this change: the script cannot get in at all.
        let exit = if status == 401 {
            EXIT_UNREACHABLE
        } else {
            EXIT_REFUSED
        };
        return Err(Failure {
            exit,
            message,
            json,
        });
    }
    Ok(answer)
}

/// A stream the HTTP client can run over.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

fn read_token(path: &PathBuf) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "error: cannot read token file {}: {e}",
            path.display()
        ))
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| usage(format!("error: token file {} has no token", path.display())))?;
    Ok(crate::admin::http::parse_token_line(line).2)
}

async fn status(args: &CtlArgs) -> Result<Value, Failure> {
    call(args, "GET", "/v1/status", None).await
}

/// `ctl watch`: the two colours side by side, refreshed every `interval`.
async fn watch(args: &CtlArgs, interval: Duration, count: u64) -> Result<String, Failure> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let mut n = 0u64;
    loop {
        let a = status(args).await?;
        let frame = if args.json {
            // One compact document per line (NDJSON), for `jq` or a log.
            let mut a = a;
            round_floats(&mut a);
            serde_json::to_string(&a).unwrap_or_default()
        } else {
            render_watch(&a)
        };
        let mut out = std::io::stdout().lock();
        if tty && !args.json {
            // Clear the screen and go home, like `watch(1)`.
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(out, "{frame}");
        if !tty && !args.json {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        n += 1;
        if count > 0 && n >= count {
            return Ok(String::new());
        }
        tokio::time::sleep(interval).await;
    }
}

/// How often `wait-ready` looks.
const READY_POLL: Duration = Duration::from_millis(100);

/// `ctl wait-ready [POOL]`: exit 0 once POOL (default: every pool that gets traffic) is ready.
async fn wait_ready(
    args: &CtlArgs,
    pool: Option<&str>,
    timeout: Duration,
) -> Result<String, Failure> {
    let start = std::time::Instant::now();
    loop {
        let a = status(args).await?;
        let pools = a["pools"].as_object().cloned().unwrap_or_default();
        let wanted: Vec<(String, Value)> = match pool {
            Some(p) => match pools.get(p) {
                Some(v) => vec![(p.to_string(), v.clone())],
                None => {
                    let known: Vec<&String> = pools.keys().collect();
                    return Err(usage(format!(
                        "error: unknown pool `{p}`; the pools are {known:?}"
                    )));
                }
            },
            None => pools
                .into_iter()
                .filter(|(_, v)| v["weight_bp"].as_u64().unwrap_or(0) > 0)
                .collect(),
        };
        let short: Vec<String> = wanted
            .iter()
            .filter(|(_, v)| v["ready"] != json!(true))
            .map(|(n, v)| {
                format!(
                    "{n} has {} of {} backends healthy",
                    v["healthy"].as_u64().unwrap_or(0),
                    v["backends"].as_array().map_or(0, Vec::len)
                )
            })
            .collect();
        if short.is_empty() {
            let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
            return Ok(if args.json {
                json_out(json!({
                    "ready": names,
                    "waited_ms": start.elapsed().as_millis() as u64,
                }))
            } else {
                format!("ready: {}", names.join(", "))
            });
        }
        if start.elapsed() >= timeout {
            let mut f = Failure::new(
                EXIT_REFUSED,
                "not_ready",
                format!(
                    "not ready within {timeout:?}: {}; check the backends' health endpoints \
                     (`switchyard ctl status` shows each backend)",
                    short.join("; ")
                ),
            );
            f.json["pools"] = wanted
                .iter()
                .map(|(n, v)| {
                    let counts = json!({
                        "ready": v["ready"] == json!(true),
                        "healthy": v["healthy"].as_u64().unwrap_or(0),
                        "backends": v["backends"].as_array().map_or(0, Vec::len),
                    });
                    (n.clone(), counts)
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            return Err(f);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// How often `wait-drained` looks, and how long a pool must stay quiet to count as drained.
const DRAIN_POLL: Duration = Duration::from_millis(200);
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// `ctl wait-drained POOL`: exit 0 once POOL has nothing in flight and no new traffic.
async fn wait_drained(args: &CtlArgs, pool: &str, timeout: Duration) -> Result<String, Failure> {
    let start = std::time::Instant::now();
    let mut quiet_since: Option<(std::time::Instant, u64)> = None;
    loop {
        let a = status(args).await?;
        let p = &a["pools"][pool];
        if p.is_null() {
            let known: Vec<&String> = a["pools"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            return Err(usage(format!(
                "error: unknown pool `{pool}`; the pools are {known:?}"
            )));
        }
        let weight = p["weight_bp"].as_u64().unwrap_or(0);
        if weight > 0 {
            let mut f = Failure::new(
                EXIT_REFUSED,
                "still_serving",
                format!(
                    "{pool} still gets {} of new traffic; flip away from it (or set its canary to 0) before waiting for it to drain",
                    format_percent(weight as u32)
                ),
            );
            f.json["pool"] = json!(pool);
            f.json["weight_bp"] = json!(weight);
            return Err(f);
        }
        let inflight = p["inflight"].as_u64().unwrap_or(0);
        let served = p["served"].as_u64().unwrap_or(0);
        quiet_since = match quiet_since {
            Some((t, s)) if inflight == 0 && s == served => Some((t, s)),
            _ if inflight == 0 => Some((std::time::Instant::now(), served)),
            _ => None,
        };
        if let Some((t, _)) = quiet_since {
            if t.elapsed() >= DRAIN_QUIET {
                return Ok(if args.json {
                    json_out(json!({
                        "pool": pool,
                        "drained": true,
                        "waited_ms": start.elapsed().as_millis() as u64,
                    }))
                } else {
                    format!(
                        "{pool} is drained: nothing in flight, no new requests for {DRAIN_QUIET:?}"
                    )
                });
            }
        }
        if start.elapsed() >= timeout {
            let mut f = Failure::new(
                EXIT_REFUSED,
                "not_drained",
                format!(
                    "{pool} did not drain within {timeout:?}: {inflight} request(s) still in flight; \
                     long requests or WebSockets may need more time (--timeout)"
                ),
            );
            f.json["pool"] = json!(pool);
            f.json["inflight"] = json!(inflight);
            return Err(f);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// How often `ctl upgrade` asks whether the new process answers.
const UPGRADE_POLL: Duration = Duration::from_millis(100);

/// `ctl upgrade`: asks the proxy to hand over to a new binary, then waits until the admin socket
/// answers from the new process, at the generation the old one froze.
async fn upgrade(
    args: &CtlArgs,
    binary: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<String, Failure> {
    let begun = std::time::Instant::now();
    let binary = match binary {
        Some(b) => Some(
            std::path::absolute(b)
                .map_err(|e| usage(format!("error: --binary {}: {e}", b.display())))?,
        ),
        None => None,
    };
    let before = status(args).await?;
    let body = json!({
        "binary": binary,
        "timeout": format!("{}ms", timeout.as_millis()),
    });
    // The proxy answers once the new process is about to take the sockets; allow it the whole
    // timeout and a little more, so its own timeout error is the one reported.
    let started = call_within(
        args,
        "POST",
        "/v1/upgrade",
        Some(body),
        timeout + Duration::from_secs(5),
    )
    .await?;
    let new_pid = started["new_pid"].as_u64().unwrap_or(0);
    let generation = started["generation"].as_u64().unwrap_or(0);
    let answered = loop {
        // Errors here are transient at most (the socket itself is never closed in between).
        if let Ok(st) = status(args).await {
            if st["pid"].as_u64() == Some(new_pid) {
                break st;
            }
        }
        if begun.elapsed() >= timeout {
            return Err(Failure::new(
                EXIT_REFUSED,
                "new_process_not_answering",
                format!(
                    "the sockets were handed to pid {new_pid}, but it did not answer on the admin \
                     socket within {timeout:?}; check its log (e.g. `journalctl -u switchyard`)"
                ),
            ));
        }
        tokio::time::sleep(UPGRADE_POLL).await;
    };
    let now_gen = answered["generation"].as_u64().unwrap_or(0);
    if now_gen != generation {
        return Err(Failure::new(
            EXIT_REFUSED,
            "generation_mismatch",
            format!(
                "the new process (pid {new_pid}) answers at generation {now_gen}, but the old \
                 one froze at {generation}; check `switchyard ctl history`"
            ),
        ));
    }
    let took = begun.elapsed();
    if args.json {
        let mut out = started.clone();
        out["serving_after_ms"] = json!(took.as_millis() as u64);
        out["status"] = answered;
        return Ok(json_out(out));
    }
    Ok(format!(
        "upgraded: pid {} -> {new_pid}, {} -> {}, generation {generation} ({}); the new process \
         answered after {:.1} s. The old one finishes its requests in flight and exits.",
        started["old_pid"],
        before["version"]
            .as_str()
            .map_or("?".to_string(), |v| format!("switchyard {v}")),
        s(&started["version"]),
        routing_line(&answered),
        took.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_rounded_and_integers_kept() {
        let mut v = json!({
            "rps": 149.73333333333332,
            "error_ratio": 0.30000000000000004,
            "small": 0.000123456,
            "p99_ms": 4.4399999,
            "zero": 0.0,
            "served": 12345678901u64,
            "list": [1.23456, {"x": -7.65432}],
        });
        round_floats(&mut v);
        assert_eq!(
            v.to_string(),
            r#"{"error_ratio":0.3,"list":[1.235,{"x":-7.654}],"p99_ms":4.44,"rps":149.733,"served":12345678901,"small":0.000123,"zero":0.0}"#
        );
    }

    #[test]
    fn history_routes_parse_into_fields() {
        assert_eq!(
            parse_route("blue"),
            Some(json!({"primary": "blue", "canary_pool": null, "canary_bp": 0}))
        );
        assert_eq!(
            parse_route("blue + green 0.25%"),
            Some(json!({"primary": "blue", "canary_pool": "green", "canary_bp": 25}))
        );
        assert_eq!(
            parse_route("a + b 100%"),
            Some(json!({"primary": "a", "canary_pool": "b", "canary_bp": 10000}))
        );
        assert_eq!(parse_route("?"), None);
        assert_eq!(parse_route("blue + green"), None);
        assert_eq!(parse_route(""), None);
    }
}
