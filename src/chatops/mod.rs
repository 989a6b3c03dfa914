//! Deploys from chat: Slack-style slash commands (`/deploy status|flip|rollback|canary`).
//!
//! The platform POSTs a form to `[chatops] listen`, signed with the app's signing secret:
//! `X-Slack-Request-Timestamp` and `X-Slack-Signature: v0=hex(HMAC-SHA256(secret,
//! "v0:{timestamp}:{body}"))`. A request is acted on only when
//! - its signature matches (compared in constant time),
//! - its timestamp is within five minutes of now (a captured request cannot be used later),
//! - it has not been seen before (a captured request cannot be replayed within those minutes),
//! - and its `user_id` is listed in `[chatops.users]`, whose name becomes the actor in history
//!   (`chat:alice`).
//!
//! Anything else is refused before the admin handler is reached, so the state is untouched,
//! and counted by reason (`switchyard_chatops_refused_total`). This module is the pure part:
//! checking a request and parsing a command; [`service`] is the listener.

pub mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::admin::{AdminCommand, ChangeOpts};

/// How far a request's timestamp may be from now (Slack's own recommendation).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The request headers the platform signs with.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const SIGNATURE_HEADER: &str = "x-slack-signature";

/// The app's signing secret. Never printed.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {source}; put the chat app's signing secret in it (one line)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is empty; put the chat app's signing secret in it (one line)")]
    Empty(PathBuf),
}

impl SigningSecret {
    /// Reads the secret: the file's first non-blank line, trimmed.
    pub fn load(path: &Path) -> Result<SigningSecret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        match line {
            Some(l) => Ok(SigningSecret(l.as_bytes().to_vec())),
            None => Err(SecretError::Empty(path.to_path_buf())),
        }
    }

    pub fn from_bytes(secret: &[u8]) -> SigningSecret {
        SigningSecret(secret.to_vec())
    }

    /// `v0=<hex>`: the signature the platform sends for `body` at `timestamp`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(3 + out.len() * 2);
        s.push_str("v0=");
        for b in out {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Why a request was refused; the label of `switchyard_chatops_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing or wrong request signature")]
    BadSignature,
    #[error("the request's timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("this request was already received")]
    Replayed,
    #[error("chat user {0} is not allowed to deploy; ask an admin to add you to [chatops.users]")]
    UnknownUser(String),
    #[error("{0}")]
    BadCommand(String),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad_signature",
            Refusal::StaleTimestamp => "stale_timestamp",
            Refusal::Replayed => "replayed",
            Refusal::UnknownUser(_) => "unknown_user",
            Refusal::BadCommand(_) => "bad_command",
        }
    }
}

/// Signatures seen within the replay window.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<String, i64>>);

/// Checks a request's timestamp (`now` in Unix seconds), signature and novelty. The signature
/// is checked before the request is remembered, so forged requests cannot fill the memory.
pub fn verify(
    secret: &SigningSecret,
    seen: &Seen,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(Refusal::BadSignature);
    };
    let at: i64 = ts.trim().parse().map_err(|_| Refusal::BadSignature)?;
    let expected = secret.sign(ts, body);
    // Lengths are public (always v0= and 64 hex digits); the bytes are compared in constant time.
    if !bool::from(expected.as_bytes().ct_eq(sig.trim().as_bytes())) {
        return Err(Refusal::BadSignature);
    }
    if (now - at).unsigned_abs() > REPLAY_WINDOW.as_secs() {
        return Err(Refusal::StaleTimestamp);
    }
    let mut seen = seen.0.lock().unwrap_or_else(|p| p.into_inner());
    let window = REPLAY_WINDOW.as_secs() as i64;
    seen.retain(|_, t| (now - *t).abs() <= window);
    if seen.insert(expected, at).is_some() {
        return Err(Refusal::Replayed);
    }
    Ok(())
}

/// The fields of a slash command's form that matter here.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SlashCommand {
    pub user_id: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub text: String,
}

/// What a chat command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatCommand {
    Status,
    Admin {
        name: &'static str,
        cmd: AdminCommand,
    },
}

/// What `/deploy` takes.
pub const USAGE: &str = "usage: /deploy status | /deploy flip POOL [because REASON] | \
                         /deploy rollback [because REASON] | /deploy canary POOL PERCENT [because REASON]";

/// Parses the text after `/deploy`.
pub fn parse(text: &str) -> Result<ChatCommand, Refusal> {
    let text = text.trim();
    // The reason: everything after "because" (or after a colon), as typed.
    let (head, reason) = match text
        .split_once(" because ")
        .or_else(|| text.split_once(": "))
    {
        Some((h, r)) => (
            h.trim(),
            Some(r.trim().to_string()).filter(|r| !r.is_empty()),
        ),
        None => (text, None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    let change = ChangeOpts {
        reason,
        ..ChangeOpts::default()
    };
    let bad = |why: &str| Refusal::BadCommand(format!("{why}; {USAGE}"));
    match words.as_slice() {
        ["status"] | [] => Ok(ChatCommand::Status),
        ["flip", pool] => Ok(ChatCommand::Admin {
            name: "flip",
            cmd: AdminCommand::Flip {
                to: pool.to_string(),
                change,
            },
        }),
        ["rollback"] => Ok(ChatCommand::Admin {
            name: "rollback",
            cmd: AdminCommand::Rollback { change },
        }),
        ["canary", pool, pct] => {
            let p: f64 = pct
                .trim_end_matches('%')
                .parse()
                .map_err(|_| bad(&format!("`{pct}` is not a percentage")))?;
            let bp = crate::admin::http::percent_to_bp(p)
                .map_err(|e| Refusal::BadCommand(e.to_string()))?;
            Ok(ChatCommand::Admin {
                name: "canary",
                cmd: AdminCommand::Canary {
                    pool: pool.to_string(),
                    bp,
                    change,
                },
            })
        }
        [cmd @ ("status" | "flip" | "rollback" | "canary"), ..] => {
            Err(bad(&format!("wrong arguments for `{cmd}`")))
        }
        [other, ..] => Err(bad(&format!("`{other}` is not a command I know"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_signed_fresh_request_passes_once() {
        let secret = SigningSecret::from_bytes(b"8f742231b10e8888abcd99yyyzzz85a5");
        let seen = Seen::default();
        let body = b"user_id=U1&command=%2Fdeploy&text=status";
        let ts = NOW.to_string();
        let sig = secret.sign(&ts, body);
        assert!(sig.starts_with("v0=") && sig.len() == 3 + 64, "{sig}");
        assert_eq!(
            verify(&secret, &seen, Some(&ts), Some(&sig), body, NOW),
            Ok(())
        );
        assert_eq!(
            verify(&secret, &seen, Some(&ts), Some(&sig), body, NOW + 1),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn the_documented_slack_example_verifies() {
        // From Slack's "Verifying requests" guide.
        let secret = SigningSecret::from_bytes(b"8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            secret.sign("1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn forged_stale_and_unsigned_requests_are_refused() {
        let secret = SigningSecret::from_bytes(b"s3cret");
        let seen = Seen::default();
        let body = b"user_id=U1&text=flip+green";
        let ts = NOW.to_string();
        let other = SigningSecret::from_bytes(b"other").sign(&ts, body);
        assert_eq!(
            verify(&secret, &seen, Some(&ts), Some(&other), body, NOW),
            Err(Refusal::BadSignature)
        );
        // The signature is over the body: a changed body fails.
        let sig = secret.sign(&ts, body);
        assert_eq!(
            verify(
                &secret,
                &seen,
                Some(&ts),
                Some(&sig),
                b"user_id=U1&text=flip+blue",
                NOW
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(&secret, &seen, None, Some(&sig), body, NOW),
            Err(Refusal::BadSignature)
        );
        let old = (NOW - 301).to_string();
        let sig = secret.sign(&old, body);
        assert_eq!(
            verify(&secret, &seen, Some(&old), Some(&sig), body, NOW),
            Err(Refusal::StaleTimestamp)
        );
        let ahead = (NOW + 301).to_string();
        let sig = secret.sign(&ahead, body);
        assert_eq!(
            verify(&secret, &seen, Some(&ahead), Some(&sig), body, NOW),
            Err(Refusal::StaleTimestamp)
        );
    }

    #[test]
    fn commands_parse_with_their_reasons() {
        assert_eq!(parse("status"), Ok(ChatCommand::Status));
        assert_eq!(
            parse("flip green because release 42"),
            Ok(ChatCommand::Admin {
                name: "flip",
                cmd: AdminCommand::Flip {
                    to: "green".into(),
                    change: ChangeOpts {
                        reason: Some("release 42".into()),
                        ..ChangeOpts::default()
                    }
                }
            })
        );
        assert_eq!(
            parse("canary green 5"),
            Ok(ChatCommand::Admin {
                name: "canary",
                cmd: AdminCommand::Canary {
                    pool: "green".into(),
                    bp: 500,
                    change: ChangeOpts::default()
                }
            })
        );
        assert!(matches!(
            parse("rollback because p99"),
            Ok(ChatCommand::Admin {
                name: "rollback",
                ..
            })
        ));
        assert_eq!(parse("explode").unwrap_err().reason(), "bad_command");
        assert_eq!(
            parse("canary green lots").unwrap_err().reason(),
            "bad_command"
        );
        assert_eq!(parse("flip").unwrap_err().reason(), "bad_command");
    }
}
