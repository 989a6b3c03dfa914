//! Deploy notifications: every change, POSTed to the team's chat and tools.
//!
//! A change never waits for a notification. [`Notifier::send`] puts the event on a bounded queue
//! and returns at once; a background task delivers it to every webhook whose `events` match, with
//! a timeout per attempt and three attempts with backoff. A full queue or a hook that keeps
//! failing is logged and counted (`switchyard_notify_failures_total`), and the change stands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{WebhookConfig, WebhookFormat};
use crate::metrics::Metrics;
use crate::state::HistoryEntry;

/// Events waiting for delivery; beyond this a burst of changes drops notifications (counted)
/// rather than holding memory or the change path.
const QUEUE: usize = 1024;
/// Attempts per event and hook, and the wait before the second and third.
const ATTEMPTS: u32 = 3;
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// One notification: the history entry of a change, and the kind a webhook subscribes to.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `flip`, `canary`, `promote`, `rollback`, `guard` or `rollout`.
    pub event: String,
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// The host that made the change, so a fleet's messages can be told apart.
    pub host: String,
}

impl Event {
    pub fn new(event: &str, entry: HistoryEntry) -> Event {
        Event {
            event: event.to_string(),
            entry,
            host: hostname(),
        }
    }

    /// Whether a hook subscribed to `events` wants this one. A guard rollback is also a
    /// rollback; a rollout's own flips and promotions are rollout events.
    pub fn matches(&self, events: &[String]) -> bool {
        events
            .iter()
            .any(|e| *e == self.event || (e == "rollback" && self.event == "guard"))
    }

    /// The one-glance sentence for a chat channel.
    pub fn text(&self) -> String {
        let e = &self.entry;
        let by = match &e.reason {
            Some(r) => format!("by {}: '{r}'", e.actor),
            None => format!("by {}", e.actor),
        };
        let forced = if e.forced {
            " [forced past the health gate]"
        } else {
            ""
        };
        let what = match self.event.as_str() {
            "guard" => format!(
                ":rotating_light: guard rolled back: {} (was {}){}",
                e.to,
                e.from,
                e.detail
                    .as_ref()
                    .and_then(|d| d.get("summary"))
                    .and_then(|s| s.as_str())
                    .map(|s| format!(" — {s}"))
                    .unwrap_or_default()
            ),
            "rollback" => format!("rolled back: {} (was {})", e.to, e.from),
            "impact" => format!(
                ":bar_chart: {} {} → {}{}: {}",
                e.action,
                e.from,
                e.to,
                e.reason
                    .as_ref()
                    .map(|r| format!(" ('{r}')"))
                    .unwrap_or_default(),
                e.impact
                    .as_ref()
                    .map(|i| i.summary())
                    .unwrap_or_else(|| "no figures".into())
            ),
            "reload" => {
                let summary = e
                    .detail
                    .as_ref()
                    .and_then(|d| d.get("summary"))
                    .and_then(|s| s.as_str())
                    .unwrap_or("");
                if e.result == "ok" {
                    format!(":gear: configuration reloaded: {summary}; {} is live", e.to)
                } else {
                    format!(":warning: configuration reload refused, nothing changed: {summary}")
                }
            }
            "faults" | "shadow" => format!(
                "{}: {}",
                if self.event == "faults" {
                    ":boom: fault injection"
                } else {
                    ":busts_in_silhouette: shadow traffic"
                },
                e.detail
                    .as_ref()
                    .and_then(|d| d.get("summary"))
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
            ),
            "rollout" => format!(
                "rollout{}: {} (was {})",
                e.detail
                    .as_ref()
                    .and_then(|d| d.get("step"))
                    .and_then(|s| s.as_str())
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default(),
                e.to,
                e.from
            ),
            _ => format!("{} (was {})", live_sentence(&e.to), e.from),
        };
        format!(
            "{what}{forced} — {by} — gen {} on {}",
            e.generation, self.host
        )
    }
}

/// `blue` → "blue is live"; `blue + green 5%` → "blue is live, green gets 5%".
fn live_sentence(route: &str) -> String {
    match route.split_once(" + ") {
        Some((primary, canary)) => match canary.rsplit_once(' ') {
            Some((pool, pct)) => format!("{primary} is live, {pool} gets {pct}"),
            None => format!("{primary} is live, {canary}"),
        },
        None => format!("{route} is live"),
    }
}

/// This machine's name, read once (gethostname(2): works under systemd's `ProcSubset=pid`,
/// which hides /proc/sys).
fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        gethostname::gethostname()
            .into_string()
            .unwrap_or_else(|_| "switchyard".into())
    })
    .clone()
}

/// The sending side, held by the admin handler.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Event>,
    /// The webhooks in force; a reload replaces them, and the next event goes to the new ones.
    hooks: Arc<ArcSwap<Vec<WebhookConfig>>>,
    metrics: Arc<Metrics>,
    /// Events queued or being delivered; shutdown waits (briefly) for this to reach zero.
    pending: Arc<AtomicUsize>,
}

impl Notifier {
    /// A notifier for `hooks`, and the background service that delivers for it (it idles while
    /// there are no hooks: a reload may add some).
    pub fn new(hooks: Vec<WebhookConfig>, metrics: Arc<Metrics>) -> (Notifier, Delivery) {
        let pending = Arc::new(AtomicUsize::new(0));
        let hooks = Arc::new(ArcSwap::from_pointee(hooks));
        let (tx, rx) = mpsc::channel(QUEUE);
        let delivery = Delivery {
            hooks: hooks.clone(),
            rx: Mutex::new(Some(rx)),
            metrics: metrics.clone(),
            pending: pending.clone(),
        };
        let n = Notifier {
            tx,
            hooks,
            metrics,
            pending,
        };
        (n, delivery)
    }

    /// Replaces the webhooks (a reload). Events already queued go to the new ones.
    pub fn set_hooks(&self, hooks: Vec<WebhookConfig>) {
        self.hooks.store(Arc::new(hooks));
    }

    /// Queues `event` for delivery; never blocks.
    pub fn send(&self, event: Event) {
        if self.hooks.load().is_empty() {
            return;
        }
        let tx = &self.tx;
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = tx.try_send(event) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics.notify_failures.inc();
            tracing::warn!("notification dropped: {e}");
        }
    }

    /// Events not yet delivered (or given up on).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// The background task that delivers queued events.
pub struct Delivery {
    hooks: Arc<ArcSwap<Vec<WebhookConfig>>>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
}

#[async_trait]
impl BackgroundService for Delivery {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let client = match reqwest::Client::builder()
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("notifications are off: cannot build an HTTP client: {e}");
                return;
            }
        };
        // Keeps delivering after the shutdown broadcast: the process exits once requests have
        // drained and the queue is empty (or a short deadline passes), so the last changes before
        // a restart still reach the team.
        loop {
            let Some(event) = rx.recv().await else {
                return;
            };
            // Hooks are served concurrently, so one that hangs does not hold up the others;
            // events are delivered in order (the next waits for this one's attempts).
            let mut sends = tokio::task::JoinSet::new();
            let hooks = self.hooks.load_full();
            for hook in hooks.iter().filter(|h| event.matches(&h.events)) {
                let (client, hook, event, metrics) = (
                    client.clone(),
                    hook.clone(),
                    event.clone(),
                    self.metrics.clone(),
                );
                sends.spawn(async move { deliver(&client, &hook, &event, &metrics).await });
            }
            while sends.join_next().await.is_some() {}
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The body a hook receives.
pub fn body(hook: &WebhookConfig, event: &Event) -> Vec<u8> {
    match hook.format {
        WebhookFormat::Json => serde_json::to_vec(event).expect("events serialise"),
        WebhookFormat::Slack => {
            serde_json::to_vec(&serde_json::json!({ "text": event.text() })).expect("json")
        }
    }
}

async fn deliver(client: &reqwest::Client, hook: &WebhookConfig, event: &Event, metrics: &Metrics) {
    let payload = body(hook, event);
    let url = hook.url.to_string();
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[(attempt - 1) as usize]).await;
        }
        let sent = client
            .post(&url)
            .timeout(hook.timeout)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) if e.is_timeout() => last = format!("no answer within {:?}", hook.timeout),
            Err(e) => last = e.to_string(),
        }
    }
    metrics.notify_failures.inc();
    tracing::warn!(
        hook = %redact(&url),
        event = %event.event,
        generation = event.entry.generation,
        "notification not delivered after {ATTEMPTS} attempts: {last}"
    );
}

/// A webhook URL for logs: chat webhook paths are secrets, so only scheme and host are shown.
fn redact(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}/…",
            u.scheme_str().unwrap_or("http"),
            u.authority().map(|a| a.as_str()).unwrap_or("?")
        ),
        Err(_) => "<webhook>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, from: &str, to: &str) -> HistoryEntry {
        HistoryEntry {
            ts: "2026-11-27T10:00:00.000Z".into(),
            generation: 42,
            action: action.into(),
            from: from.into(),
            to: to.into(),
            actor: "uid:1000".into(),
            reason: Some("release 2026.11.27".into()),
            result: "ok".into(),
            forced: false,
            trigger: None,
            detail: None,
            impact: None,
        }
    }

    #[test]
    fn a_flip_reads_in_one_glance() {
        let mut e = Event::new("flip", entry("flip", "blue", "green"));
        e.host = "edge-1".into();
        assert_eq!(
            e.text(),
            "green is live (was blue) — by uid:1000: 'release 2026.11.27' — gen 42 on edge-1"
        );
        let c = Event::new("canary", entry("canary", "blue", "blue + green 5%"));
        assert!(
            c.text()
                .starts_with("blue is live, green gets 5% (was blue)"),
            "{}",
            c.text()
        );
    }

    #[test]
    fn hooks_get_the_events_they_asked_for() {
        let guard = Event::new("guard", entry("rollback", "blue + green 5%", "blue"));
        assert!(guard.matches(&["guard".into()]));
        assert!(guard.matches(&["rollback".into()]));
        assert!(!guard.matches(&["flip".into(), "canary".into()]));
    }

    #[test]
    fn urls_are_redacted_in_logs() {
        assert_eq!(
            redact("https://hooks.example.com/services/T0/B0/secret"),
            "https://hooks.example.com/…"
        );
    }
}
