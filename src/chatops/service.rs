//! The `[chatops] listen` endpoint: checks each slash command (see the parent module), runs it
//! through the admin handler as the chat user, and answers in the channel with the same line the
//! webhooks send.
//!
//! A pingora `Service` like the metrics listener, so its socket goes to the new process on
//! `ctl upgrade`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use pingora::server::{ListenFds, ShutdownWatch};

use super::{parse, verify, ChatCommand, Refusal, Seen, SigningSecret, SlashCommand};
use crate::admin::{http::read_body, Admin, AdminCommand, Reply};
use crate::config::ChatopsConfig;
use crate::httpd::{self, HandOver};
use crate::metrics::Metrics;
use crate::notify::Event;
use crate::upgrade::HandedOver;

/// Everything a request needs.
pub struct Chatops {
    admin: Arc<Admin>,
    metrics: Arc<Metrics>,
    secret: SigningSecret,
    users: std::collections::BTreeMap<String, String>,
    seen: Seen,
}

impl Chatops {
    pub fn new(
        admin: Arc<Admin>,
        metrics: Arc<Metrics>,
        secret: SigningSecret,
        config: &ChatopsConfig,
    ) -> Chatops {
        Chatops {
            admin,
            metrics,
            secret,
            users: config.users.clone(),
            seen: Seen::default(),
        }
    }

    /// Handles one request end to end.
    async fn respond(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::POST {
            return httpd::text(405, "POST a slash command here\n");
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (ts, sig) = (
            header(super::TIMESTAMP_HEADER),
            header(super::SIGNATURE_HEADER),
        );
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(e) => return httpd::text(e.status(), format!("{e}\n")),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Err(r) = verify(
            &self.secret,
            &self.seen,
            ts.as_deref(),
            sig.as_deref(),
            &body,
            now,
        ) {
            // Nothing about the request is trusted yet: answer without detail.
            return self.refuse(&r, 401);
        }
        tokio::task::spawn_blocking(move || self.run(&body))
            .await
            .unwrap_or_else(|e| httpd::text(500, format!("chat command failed: {e}\n")))
    }

    fn refuse(&self, r: &Refusal, status: u16) -> Response<Full<Bytes>> {
        self.metrics.record_chatops_refusal(r.reason());
        tracing::warn!("chat request refused: {r}");
        if status == 200 {
            ephemeral(&r.to_string())
        } else {
            httpd::text(status, format!("{r}\n"))
        }
    }

    /// Runs a verified command (blocking: changes fsync).
    fn run(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let form: SlashCommand = match serde_urlencoded::from_bytes(body) {
            Ok(f) => f,
            Err(e) => {
                return self.refuse(
                    &Refusal::BadCommand(format!("not a slash command form: {e}")),
                    200,
                )
            }
        };
        let Some(name) = self.users.get(&form.user_id) else {
            let who = if form.user_name.is_empty() {
                form.user_id.clone()
            } else {
                format!("{} ({})", form.user_name, form.user_id)
            };
            return self.refuse(&Refusal::UnknownUser(who), 200);
        };
        let actor = format!("chat:{name}");
        let cmd = match parse(&form.text) {
            Ok(c) => c,
            Err(r) => return self.refuse(&r, 200),
        };
        match cmd {
            ChatCommand::Status => {
                self.metrics.record_chatops("status");
                match self.admin.handle(AdminCommand::Status, &actor) {
                    Ok(Reply::Status(s)) => in_channel(&status_line(&s)),
                    Ok(_) => ephemeral("unexpected reply"),
                    Err(e) => ephemeral(&e.to_string()),
                }
            }
            ChatCommand::Admin { name, cmd } => match self.admin.handle(cmd, &actor) {
                Ok(Reply::Change(c)) => {
                    self.metrics.record_chatops(name);
                    if !c.changed {
                        return in_channel(&format!(
                            "nothing to change: {} is already live (generation {})",
                            crate::page::route_line(&c.status),
                            c.status.generation
                        ));
                    }
                    // The history entry of this change, rendered as the webhooks render it.
                    let entry = self
                        .admin
                        .handle(AdminCommand::History { limit: 5 }, &actor)
                        .ok()
                        .and_then(|r| match r {
                            Reply::History(h) => h
                                .into_iter()
                                .find(|e| e.generation == c.status.generation && e.actor == actor),
                            _ => None,
                        });
                    let event = if name == "rollback" { "rollback" } else { name };
                    match entry {
                        Some(e) => in_channel(&Event::new(event, e).text()),
                        None => in_channel(&format!(
                            "{} is live (generation {})",
                            crate::page::route_line(&c.status),
                            c.status.generation
                        )),
                    }
                }
                Ok(_) => ephemeral("unexpected reply"),
                Err(e) => {
                    self.metrics.record_chatops_refusal("refused");
                    ephemeral(&format!("refused, nothing changed: {e}"))
                }
            },
        }
    }
}

/// `blue is live (generation 4); pipeline clear` and what is in progress.
fn status_line(s: &crate::admin::Status) -> String {
    let p = crate::page::pipeline(s);
    format!(
        "{} is live (generation {}); {}",
        crate::page::route_line(s),
        s.generation,
        if p.clear {
            "pipeline clear".to_string()
        } else {
            format!("in progress: {}", p.in_progress.join("; "))
        }
    )
}

/// An answer the whole channel sees.
fn in_channel(text: &str) -> Response<Full<Bytes>> {
    slack(text, "in_channel")
}

/// An answer only the user who typed the command sees.
fn ephemeral(text: &str) -> Response<Full<Bytes>> {
    slack(text, "ephemeral")
}

fn slack(text: &str, kind: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "response_type": kind, "text": text });
    httpd::json(200, serde_json::to_vec(&body).expect("serialises"))
}

/// The chat listener as a pingora service.
pub struct ChatopsService {
    chatops: Arc<Chatops>,
    endpoint: HandOver,
    handed_over: HandedOver,
}

impl ChatopsService {
    pub fn new(chatops: Chatops, endpoint: HandOver, handed_over: HandedOver) -> Self {
        ChatopsService {
            chatops: Arc::new(chatops),
            endpoint,
            handed_over,
        }
    }
}

#[async_trait]
impl pingora::services::Service for ChatopsService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let stop = self.handed_over.stop_accepting(shutdown.clone());
        let listener = match self.endpoint.open(fds.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("CHAT COMMANDS UNAVAILABLE: {e}; restart switchyard");
                return;
            }
        };
        let chatops = self.chatops.clone();
        httpd::serve(
            listener,
            move |req, _peer| chatops.clone().respond(req),
            stop,
        )
        .await;
        httpd::hold_until_shutdown(&mut shutdown).await;
    }

    fn name(&self) -> &str {
        "chatops"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.endpoint.key().to_string()])
    }
}
