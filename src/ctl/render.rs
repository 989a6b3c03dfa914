//! ctl's human-readable output: one sentence or table per answer, from the admin API's JSON.
//! (`--json` prints the answer itself; see the parent module.)

use serde_json::{json, Value};

use super::Verb;
use crate::state::format_percent;

pub(super) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

pub(super) fn render(verb: &Verb, a: &Value) -> String {
    match verb {
        Verb::Status => render_status(a),
        Verb::History { .. } => render_history(a),
        Verb::Report { .. } => render_report(a),
        Verb::Reload { .. } => render_reload(a),
        Verb::PreviewCookie { pool } => format!(
            "{cookie}\n\nRequests carrying this cookie go to {pool} whatever the weights. In the \
             browser's console on your site:\n  document.cookie = \"{cookie}; path=/\"\nWith curl: \
             curl -b '{cookie}' ...\nDelete the cookie to leave the preview.",
            cookie = s(&a["cookie"])
        ),
        Verb::Watch { .. } | Verb::WaitDrained { .. } | Verb::WaitReady { .. } => render_status(a),
        Verb::Faults { .. } => faults_line(a).unwrap_or_else(|| "no faults injected".into()),
        Verb::Shadow { .. } => render_shadow(a),
        _ => render_change(a),
    }
}

/// `ctl reload`: what changed, one line per pool and setting.
fn render_reload(a: &Value) -> String {
    if a["changed"] != json!(true) {
        return format!("configuration reloaded: {}", s(&a["summary"]));
    }
    let mut out = format!(
        "configuration reloaded in {} µs: {}",
        a["applied_us"].as_u64().unwrap_or(0),
        s(&a["summary"])
    );
    for (pool, m) in a["pools"].as_object().into_iter().flatten() {
        let list = |k: &str| {
            m[k].as_array()
                .into_iter()
                .flatten()
                .map(|v| s(v).to_string())
                .collect::<Vec<_>>()
        };
        let (added, removed) = (list("added"), list("removed"));
        if !added.is_empty() {
            out.push_str(&format!(
                "\n  {pool}: added {} (new backends take traffic once healthy)",
                added.join(", ")
            ));
        }
        if !removed.is_empty() {
            out.push_str(&format!(
                "\n  {pool}: removed {} (no new requests; requests in flight finish)",
                removed.join(", ")
            ));
        }
    }
    for set in a["settings"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {}: {} → {}",
            s(&set["key"]),
            s(&set["from"]),
            s(&set["to"])
        ));
    }
    let checked: Vec<&str> = a["checked_first"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    if !checked.is_empty() {
        out.push_str(&format!(
            "\n  checked before the swap: {}",
            checked.join(", ")
        ));
    }
    if let Some(w) = a["warning"].as_str() {
        out.push_str(&format!("\nwarning: {w}"));
    }
    out
}

pub(super) fn routing_line(a: &Value) -> String {
    let bp = a["canary_bp"].as_u64().unwrap_or(0) as u32;
    let failover = a["failover"].as_array().and_then(|f| {
        f.iter().find(|f| f["from"] == a["primary"]).map(|f| {
            format!(
                "{} serving {}'s traffic (failover)",
                s(&f["to"]),
                s(&f["from"])
            )
        })
    });
    if let Some(line) = failover {
        line
    } else if bp == 0 {
        format!("{} is live", s(&a["primary"]))
    } else {
        format!(
            "{} is live, {} gets {} of new traffic",
            s(&a["primary"]),
            s(&a["canary_pool"]),
            format_percent(bp)
        )
    }
}

/// The rollout line of status and change output, if one runs.
fn rollout_line(a: &Value) -> Option<String> {
    let r = a.get("rollout").filter(|r| !r.is_null())?;
    let steps: Vec<String> = r["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|v| format!("{}", v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    let state = if r["paused"] == Value::Bool(true) {
        "PAUSED".to_string()
    } else if let Some(why) = r["holding"].as_str() {
        format!("holding: {why}")
    } else {
        format!(
            "next step in {:.0}s",
            r["next_step_in_s"].as_f64().unwrap_or(0.0)
        )
    };
    Some(format!(
        "rollout to {}: step {} of {} ({}%) [{}%], {state}",
        s(&r["to"]),
        r["step"].as_u64().unwrap_or(0),
        r["of"].as_u64().unwrap_or(0),
        r["percent"].as_f64().unwrap_or(0.0),
        steps.join(", ")
    ))
}

/// The guard line of status output.
fn guard_line(a: &Value) -> Option<String> {
    let g = a.get("guard").filter(|g| !g.is_null())?;
    if g["enabled"] != Value::Bool(true) {
        return Some("guard: off".into());
    }
    let w = &g["watching"];
    if w.is_null() {
        return Some("guard: idle (nothing new to watch)".into());
    }
    let j = &g["judgement"];
    let verdict = match j["verdict"].as_str() {
        Some("waiting") => format!(
            "waiting for {} requests ({} so far)",
            g["min_requests"].as_u64().unwrap_or(0),
            j["requests"].as_u64().unwrap_or(0)
        ),
        Some(v) => format!(
            "{v}: {:.2}% errors (max {:.2}%), p99 {} over {} requests",
            j["error_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            g["max_error_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            j["p99_ms"]
                .as_f64()
                .map_or("-".into(), |m| format!("{m:.1}ms")),
            j["requests"].as_u64().unwrap_or(0)
        ),
        None => "not judged yet".into(),
    };
    Some(format!(
        "guard: watching {} ({}) for {:.0}s — {verdict}",
        s(&w["pool"]),
        s(&w["kind"]),
        w["for_s"].as_f64().unwrap_or(0.0)
    ))
}

fn render_change(a: &Value) -> String {
    let gen = a["generation"].as_u64().unwrap_or(0);
    if a["changed"] == Value::Bool(false) {
        return format!("nothing to change: {} (generation {gen})", routing_line(a));
    }
    let prev = &a["previous"];
    let prev_bp = prev["canary_bp"].as_u64().unwrap_or(0) as u32;
    let was = if prev_bp == 0 {
        s(&prev["primary"]).to_string()
    } else {
        format!(
            "{} + canary {}",
            s(&prev["primary"]),
            format_percent(prev_bp)
        )
    };
    let mut out = format!(
        "{} (was {was}) — generation {gen}, applied in {} µs",
        routing_line(a),
        a["applied_us"].as_u64().unwrap_or(0)
    );
    if let Some(r) = rollout_line(a) {
        out.push_str(&format!("\n{r}"));
    }
    if let Some(w) = a["warning"].as_str() {
        out.push_str(&format!("\nwarning: {w}"));
    }
    out
}

/// The fault line of status output, if a fault set is in force.
pub(super) fn faults_line(a: &Value) -> Option<String> {
    let f = a.get("faults").filter(|f| !f.is_null())?;
    Some(format!(
        "FAULTS: {} — {:.0}s left, {} aborted, {} delayed (by {}{}{})",
        s(&f["summary"]),
        f["ends_in_s"].as_f64().unwrap_or(0.0),
        f["aborted"].as_u64().unwrap_or(0),
        f["delayed"].as_u64().unwrap_or(0),
        s(&f["actor"]),
        f["reason"]
            .as_str()
            .map(|r| format!(": '{r}'"))
            .unwrap_or_default(),
        if f["forced"] == Value::Bool(true) {
            ", forced on the live pool"
        } else {
            ""
        }
    ))
}

/// The shadow line of status output, if a session has run.
fn shadow_line(a: &Value) -> Option<String> {
    let sh = a.get("shadow").filter(|v| !v.is_null())?;
    let state = if sh["active"] == Value::Bool(true) {
        format!(
            "copying {}% of {}'s traffic to {} ({:.0}s left)",
            sh["percent"].as_f64().unwrap_or(0.0),
            s(&sh["live"]),
            s(&sh["pool"]),
            sh["ends_in_s"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!("ended (copies to {})", s(&sh["pool"]))
    };
    Some(format!(
        "shadow: {state}: {} mirrored, {} failed, {} dropped, {:.2}% mismatched",
        sh["mirrored"].as_u64().unwrap_or(0),
        sh["failed"].as_u64().unwrap_or(0),
        sh["dropped"].as_u64().unwrap_or(0),
        sh["mismatch_ratio"].as_f64().unwrap_or(0.0) * 100.0
    ))
}

/// `ctl shadow report` (and the answer to `shadow` and `shadow stop`): totals, then a table by
/// route, then the sample mismatches.
fn render_shadow(a: &Value) -> String {
    if a["pool"].is_null() {
        return "no shadow session has run; start one with `switchyard ctl shadow POOL PERCENT`"
            .into();
    }
    let state = if a["active"] == Value::Bool(true) {
        format!(
            "copying {}% of {}'s {} requests to {} ({:.0}s left)",
            a["percent"].as_f64().unwrap_or(0.0),
            s(&a["live"]),
            a["methods"]
                .as_array()
                .map(|m| m.iter().map(s).collect::<Vec<_>>().join("/"))
                .unwrap_or_default(),
            s(&a["pool"]),
            a["ends_in_s"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!(
            "ended ({}) at {}: copies of {}'s traffic to {}",
            s(&a["ended_because"]),
            s(&a["ended"]),
            s(&a["live"]),
            s(&a["pool"])
        )
    };
    let gate = match a["max_mismatch_ratio"].as_f64() {
        Some(m) => format!(
            "; flips to {} refused above {:.2}% (from {} pairs)",
            s(&a["pool"]),
            m * 100.0,
            a["min_compared"].as_u64().unwrap_or(0)
        ),
        None => String::new(),
    };
    let n = |k: &str| a[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "shadow: {state}\n{} mirrored, {} failed, {} dropped, {} too large; {} status and {} \
         body mismatches ({:.2}%, bodies compared: {}){gate}\n",
        n("mirrored"),
        n("failed"),
        n("dropped"),
        n("too_large"),
        n("status_mismatches"),
        n("body_mismatches"),
        a["mismatch_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        s(&a["compare_body"])
    );
    let routes = a["routes"].as_array().cloned().unwrap_or_default();
    if routes.is_empty() {
        return out.trim_end().to_string();
    }
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |m| format!("{m:.1}ms"));
    out.push_str(&format!(
        "\n{:<28} {:>8} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
        "ROUTE",
        "MIRRORED",
        "FAILED",
        "STATUS",
        "BODY",
        "LIVE P50",
        "LIVE P99",
        "SHADOW P50",
        "SHADOW P99"
    ));
    for r in &routes {
        out.push_str(&format!(
            "{:<28} {:>8} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
            s(&r["route"]),
            r["mirrored"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            r["status_mismatches"].as_u64().unwrap_or(0),
            r["body_mismatches"].as_u64().unwrap_or(0),
            ms(&r["live_p50_ms"]),
            ms(&r["live_p99_ms"]),
            ms(&r["shadow_p50_ms"]),
            ms(&r["shadow_p99_ms"])
        ));
    }
    for r in &routes {
        for x in r["samples"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n{} mismatch on {} {}: live {} vs. shadow {}{}\n  live:   {}\n  shadow: {}",
                s(&x["kind"]),
                s(&x["method"]),
                s(&x["path"]),
                x["live_status"].as_u64().unwrap_or(0),
                x["shadow_status"].as_u64().unwrap_or(0),
                x["first_difference"]
                    .as_str()
                    .map(|d| format!(", first difference at {d}"))
                    .unwrap_or_default(),
                s(&x["live_body"]).trim_end(),
                s(&x["shadow_body"]).trim_end()
            ));
        }
    }
    out.trim_end().to_string()
}

fn render_status(a: &Value) -> String {
    let mut head = routing_line(a);
    for line in [
        rollout_line(a),
        guard_line(a),
        faults_line(a),
        shadow_line(a),
    ]
    .into_iter()
    .flatten()
    {
        head.push('\n');
        head.push_str(&line);
    }
    let mut out = format!(
        "{}\ngeneration {} since {}\n\n{:<12} {:<7} {:<6} {:<8} {:<9} {:<8} {:<8} {}\n",
        head,
        a["generation"].as_u64().unwrap_or(0),
        s(&a["since"]),
        "POOL",
        "WEIGHT",
        "READY",
        "HEALTHY",
        "RATE",
        "ERRORS",
        "P99",
        "INFLIGHT"
    );
    if let Some(pools) = a["pools"].as_object() {
        for (name, p) in pools {
            let backends = p["backends"].as_array().cloned().unwrap_or_default();
            out.push_str(&format!(
                "{:<12} {:<7} {:<6} {:<8} {:<9} {:<8} {:<8} {}\n",
                name,
                format_percent(p["weight_bp"].as_u64().unwrap_or(0) as u32),
                if p["ready"] == Value::Bool(true) {
                    "yes"
                } else {
                    "NO"
                },
                format!("{}/{}", p["healthy"].as_u64().unwrap_or(0), backends.len()),
                format!("{:.1}/s", p["rps"].as_f64().unwrap_or(0.0)),
                format!("{:.2}%", p["error_ratio"].as_f64().unwrap_or(0.0) * 100.0),
                p["p99_ms"]
                    .as_f64()
                    .map_or("-".into(), |m| format!("{m:.1}ms")),
                p["inflight"].as_u64().unwrap_or(0)
            ));
            for b in backends {
                let h = if b["healthy"] == Value::Bool(true) {
                    "healthy"
                } else {
                    "UNHEALTHY"
                };
                out.push_str(&format!("  {:<24} {h}\n", s(&b["addr"])));
            }
        }
    }
    if let Some(fleet) = a.get("fleet").filter(|f| f.is_object()) {
        out.push_str(&fleet_section(a, fleet));
    }
    out.trim_end().to_string()
}

/// The fleet under `status`: the store's health, then each live instance and what it serves.
fn fleet_section(a: &Value, fleet: &Value) -> String {
    let generation = a["generation"].as_u64().unwrap_or(0);
    let mut out = if fleet["up"] == Value::Bool(true) {
        format!(
            "\nfleet ({} at {}; this is {}; guard and rollouts led by {})\n",
            s(&fleet["backend"]),
            s(&fleet["key"]),
            s(&fleet["instance"]),
            fleet["leader"].as_str().unwrap_or("nobody yet")
        )
    } else {
        format!(
            "\nfleet: STATE BACKEND DOWN ({}): serving the last state, changes are refused\n",
            s(&fleet["error"])
        )
    };
    out.push_str(&format!(
        "{:<24} {:<11} {}\n",
        "INSTANCE", "GENERATION", "APPLIED"
    ));
    for m in fleet["members"].as_array().cloned().unwrap_or_default() {
        let g = m["generation"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<24} {:<11} {:.1}s ago{}\n",
            s(&m["instance"]),
            g,
            m["ago_s"].as_f64().unwrap_or(0.0),
            if g < generation { "  BEHIND" } else { "" }
        ));
    }
    out
}

fn render_history(a: &Value) -> String {
    let Some(entries) = a.as_array() else {
        return String::new();
    };
    if entries.is_empty() {
        return "no changes recorded yet".into();
    }
    entries
        .iter()
        .map(|e| {
            // A reload leaves the routing as it was: its line says what it changed instead.
            let what = if e["action"] == "reload" {
                let summary = s(&e["detail"]["summary"]);
                match s(&e["result"]) {
                    "ok" => format!("config: {summary}"),
                    code => format!("REFUSED ({code}), nothing changed: {summary}"),
                }
            } else {
                format!("{} -> {}", s(&e["from"]), s(&e["to"]))
            };
            let mut line = format!(
                "{}  gen {:<4} {:<9} {what}  by {}",
                s(&e["ts"]),
                e["generation"].as_u64().unwrap_or(0),
                s(&e["action"]),
                s(&e["actor"]),
            );
            if e["forced"] == Value::Bool(true) {
                line.push_str("  [forced]");
            }
            if e["trigger"] == "guard" {
                line.push_str("  [GUARD]");
            }
            let keys: &[&str] = if e["action"] == "reload" {
                &[]
            } else {
                &["step", "summary"]
            };
            for key in keys {
                if let Some(d) = e["detail"][key].as_str() {
                    line.push_str(&format!("  ({d})"));
                }
            }
            if let Some(r) = e["reason"].as_str() {
                line.push_str(&format!("  \"{r}\""));
            }
            if let Ok(i) = serde_json::from_value::<crate::impact::Impact>(e["impact"].clone()) {
                line.push_str(&format!("  | impact: {}", i.summary()));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `ctl report`: the DORA figures, one per line.
fn render_report(a: &Value) -> String {
    let Ok(r) = serde_json::from_value::<crate::report::Report>(a.clone()) else {
        return a.to_string();
    };
    let dur = |secs: f64| {
        humantime::format_duration(std::time::Duration::from_secs(secs.round() as u64)).to_string()
    };
    let spread = |sp: &Option<crate::report::Spread>| match sp {
        Some(x) => format!(
            "median {}, mean {}, max {} (over {})",
            dur(x.median),
            dur(x.mean),
            dur(x.max),
            x.count
        ),
        None => "none".to_string(),
    };
    format!(
        "delivery report {} .. {} ({} days)
         deploys:              {} ({:.2} per day)
         change failure rate:  {} ({} of {} deploys rolled back within {})
         rollbacks:            {} by hand, {} by the guard
         time to restore:      {}
         lead time (between deploys): {}",
        r.since,
        r.until,
        r.days,
        r.deploys,
        r.deploys_per_day,
        r.change_failure_rate
            .map_or("-".to_string(), |c| format!("{:.1}%", c * 100.0)),
        r.failed_deploys,
        r.deploys,
        dur(r.failure_window_s as f64),
        r.rollbacks.manual,
        r.rollbacks.guard,
        spread(&r.time_to_restore_s),
        spread(&r.lead_time_s),
    )
}

pub(super) fn render_watch(a: &Value) -> String {
    let pools: Vec<(&String, &Value)> = a["pools"]
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut out = format!(
        "switchyard — {} — generation {} — {now}\n\n{:<12}",
        routing_line(a),
        a["generation"].as_u64().unwrap_or(0),
        ""
    );
    for line in [
        rollout_line(a),
        guard_line(a),
        faults_line(a),
        shadow_line(a),
    ]
    .into_iter()
    .flatten()
    {
        out.insert_str(out.find("\n\n").unwrap_or(out.len()), &format!("\n{line}"));
    }
    for (name, _) in &pools {
        let mark = if a["primary"].as_str() == Some(name.as_str()) {
            " (live)"
        } else {
            ""
        };
        out.push_str(&format!("{:<18}", format!("{name}{mark}")));
    }
    out.push('\n');
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |m| format!("{m:.1} ms"));
    let rows: [(&str, &Cell<'_>); 7] = [
        ("weight", &|p| {
            format_percent(p["weight_bp"].as_u64().unwrap_or(0) as u32)
        }),
        ("healthy", &|p| {
            let total = p["backends"].as_array().map_or(0, |b| b.len());
            let ready = if p["ready"] == Value::Bool(true) {
                ""
            } else {
                " NOT READY"
            };
            format!("{}/{total}{ready}", p["healthy"].as_u64().unwrap_or(0))
        }),
        ("rate", &|p| {
            format!("{:.1}/s", p["rps"].as_f64().unwrap_or(0.0))
        }),
        ("errors", &|p| {
            format!("{:.2}%", p["error_ratio"].as_f64().unwrap_or(0.0) * 100.0)
        }),
        ("p50", &|p| ms(&p["p50_ms"])),
        ("p99", &|p| ms(&p["p99_ms"])),
        ("in flight", &|p| {
            p["inflight"].as_u64().unwrap_or(0).to_string()
        }),
    ];
    for (label, f) in rows {
        out.push_str(&format!("{label:<12}"));
        for (_, p) in &pools {
            out.push_str(&format!("{:<18}", f(p)));
        }
        out.push('\n');
    }
    let window = pools
        .first()
        .and_then(|(_, p)| p["window_s"].as_u64())
        .unwrap_or(10);
    out.push_str(&format!(
        "\n(rate, errors and latency over the last {window} s)"
    ));
    out
}

/// One row of `watch`: renders a pool's cell.
type Cell<'a> = dyn Fn(&Value) -> String + 'a;
