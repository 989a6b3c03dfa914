//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`), on the HTTP client switchyard already has.
//!
//! Why not a gRPC crate: `etcd-client` (tonic) runs `protoc` in its build script, so every build —
//! a user's `cargo install` included — would need Debian's protobuf-compiler, and it would add
//! tonic and prost to a build that is already long. The gateway is part of every etcd since 3.4
//! and speaks the same API: keys and values in base64, 64-bit integers as strings, a watch as a
//! stream of JSON objects.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, TLS failure).
    #[error("cannot reach etcd at {endpoints}: {detail}")]
    Unreachable { endpoints: String, detail: String },
    /// etcd answered with an error.
    #[error("etcd refused {call}: {detail}")]
    Refused { call: String, detail: String },
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URLs such as `http://10.0.0.1:2379`.
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM files: the CA that signed etcd's certificate; a client certificate and key.
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// How long one call may take before the endpoint counts as unreachable.
    pub timeout: Duration,
}

/// One key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One event from a watch.
#[derive(Debug, Clone)]
pub enum Event {
    Put(Kv),
    Delete(String),
}

/// One message of a watch stream.
#[derive(Debug, Default)]
pub struct WatchMessage {
    pub events: Vec<Event>,
    /// Set when the watch was cancelled because the revision asked for is compacted.
    pub compact_revision: i64,
    pub canceled: bool,
}

pub struct Gateway {
    http: reqwest::Client,
    /// No overall timeout: a watch stays open.
    streaming: reqwest::Client,
    endpoints: Endpoints,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    /// The auth token (user/password set).
    token: Mutex<Option<String>>,
}

/// The end of the range of keys that start with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Kv {
    let bytes = |f: &str| {
        v[f].as_str()
            .and_then(|s| B64.decode(s).ok())
            .unwrap_or_default()
    };
    Kv {
        key: String::from_utf8_lossy(&bytes("key")).into_owned(),
        value: bytes("value"),
        mod_revision: int(&v["mod_revision"]),
    }
}

impl Gateway {
    pub fn new(endpoints: Endpoints) -> Result<Gateway, String> {
        let build = |timeout: Option<Duration>| -> Result<reqwest::Client, String> {
            let mut b = reqwest::Client::builder().connect_timeout(endpoints.timeout);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            if let Some(ca) = &endpoints.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read the etcd CA file {}: {e}", ca.display()))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| format!("the etcd CA file {} is not PEM: {e}", ca.display()))?;
                b = b.add_root_certificate(cert);
            }
            if let (Some(cert), Some(key)) = (&endpoints.cert_file, &endpoints.key_file) {
                let mut pem = std::fs::read(cert)
                    .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| format!("cannot read {}: {e}", key.display()))?,
                );
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!(
                        "the etcd client certificate {} and key {} are not usable: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                b = b.identity(id);
            }
            b.build()
                .map_err(|e| format!("cannot build the etcd client: {e}"))
        };
        Ok(Gateway {
            http: build(Some(endpoints.timeout))?,
            streaming: build(None)?,
            endpoints,
            current: AtomicUsize::new(0),
            token: Mutex::new(None),
        })
    }

    /// The endpoints, for messages.
    pub fn endpoint_list(&self) -> String {
        self.urls()
    }

    fn urls(&self) -> String {
        self.endpoints.urls.join(", ")
    }

    /// The endpoints in the order to try: the one that answered last first.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.urls.len();
        let first = self.current.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(|i| (first + i) % n).collect()
    }

    async fn authenticate(&self, client: &reqwest::Client, url: &str) -> Result<(), EtcdError> {
        let (Some(user), Some(password)) = (&self.endpoints.user, &self.endpoints.password) else {
            return Ok(());
        };
        let resp = client
            .post(format!("{url}/v3/auth/authenticate"))
            .body(json!({"name": user, "password": password}).to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body: Value =
            serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
        match body["token"].as_str() {
            Some(t) if status.is_success() => {
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.to_string());
                Ok(())
            }
            _ => Err(EtcdError::Refused {
                call: "authenticate".into(),
                detail: format!("user {user}: {}", error_text(&body, status)),
            }),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> EtcdError {
        EtcdError::Unreachable {
            endpoints: self.urls(),
            detail: e.to_string(),
        }
    }

    /// Sends one request to the first endpoint that answers; returns the response.
    async fn send(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, EtcdError> {
        let mut last = String::from("no endpoints");
        for i in self.order() {
            let url = &self.endpoints.urls[i];
            for attempt in 0..2 {
                let needs_token = self.endpoints.user.is_some()
                    && self
                        .token
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_none();
                if needs_token {
                    if let Err(e) = self.authenticate(client, url).await {
                        last = e.to_string();
                        break;
                    }
                }
                let mut req = client.post(format!("{url}{path}")).body(body.to_string());
                if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    req = req.header("Authorization", t);
                }
                match req.send().await {
                    Ok(resp)
                        if attempt == 0
                            && self.endpoints.user.is_some()
                            && resp.status() == reqwest::StatusCode::UNAUTHORIZED =>
                    {
                        // An expired token: authenticate again once.
                        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    Ok(resp) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(resp);
                    }
                    Err(e) => {
                        last = format!("{url}: {e}");
                        break;
                    }
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.urls(),
            detail: last,
        })
    }

    /// One unary call: the JSON answer, or why not.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let resp = self.send(&self.http, path, &body).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() || value.get("error").is_some() && value.get("result").is_none() {
            return Err(EtcdError::Refused {
                call: path.to_string(),
                detail: error_text(&value, status),
            });
        }
        Ok(value)
    }

    /// The keys from `key` (with `prefix`: every key under it), and the store's revision.
    pub async fn range(
        &self,
        key: &str,
        prefix: bool,
        limit: i64,
        descending: bool,
    ) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()) });
        if prefix {
            body["range_end"] = json!(b64(&prefix_end(key)));
        }
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        if descending {
            body["sort_order"] = json!("DESCEND");
            body["sort_target"] = json!("KEY");
        }
        let v = self.call("/v3/kv/range", body).await?;
        let kvs = v["kvs"]
            .as_array()
            .map(|a| a.iter().map(kv).collect())
            .unwrap_or_default();
        Ok((int(&v["header"]["revision"]), kvs))
    }

    /// Writes `key` (bound to `lease` when non-zero); returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", body).await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Writes `key` only if its modification revision is still `mod_revision` (0: only if it
    /// does not exist), bound to `lease` when non-zero.
    /// `Ok(Ok(revision))` when written; `Ok(Err(current))` when someone else wrote first.
    pub async fn compare_and_put(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<Result<i64, Option<Kv>>, EtcdError> {
        let compare = if mod_revision == 0 {
            json!({"key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        } else {
            json!({"key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string()})
        };
        let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        let success = [json!({ "request_put": put })];
        let body = json!({
            "compare": [compare],
            "success": success,
            "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
        });
        let v = self.call("/v3/kv/txn", body).await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Ok(int(&v["header"]["revision"])));
        }
        // A lost comparison omits `succeeded` (false is proto3's default) and carries the
        // failure branch: the key as it is now.
        let current = v["responses"][0]["response_range"]["kvs"]
            .as_array()
            .and_then(|a| a.first())
            .map(kv);
        Ok(Err(current))
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Refused {
                call: "lease grant".into(),
                detail: v.to_string(),
            }),
            id => Ok(id),
        }
    }

    /// Renews a lease; the TTL left (0: the lease is gone and must be granted again).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Opens a watch on every key under `prefix` from `start_revision`.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watcher, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }});
        let resp = self.send(&self.streaming, "/v3/watch", &body).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap_or_default())
                .unwrap_or(Value::Null);
            return Err(EtcdError::Refused {
                call: "watch".into(),
                detail: error_text(&v, status),
            });
        }
        Ok(Watcher {
            resp,
            buf: Vec::new(),
        })
    }
}

fn error_text(v: &Value, status: reqwest::StatusCode) -> String {
    v["error"]
        .as_str()
        .or(v["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"))
}

/// An open watch: messages as etcd sends them.
pub struct Watcher {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watcher {
    /// The next message; `Ok(None)` when etcd closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        loop {
            // The gateway writes one JSON object per message, each followed by a newline.
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(e) = v.get("error") {
                    return Err(EtcdError::Refused {
                        call: "watch".into(),
                        detail: e.to_string(),
                    });
                }
                let r = &v["result"];
                let events = r["events"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| match e["type"].as_str() {
                                Some("DELETE") => Event::Delete(kv(&e["kv"]).key),
                                _ => Event::Put(kv(&e["kv"])),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Some(WatchMessage {
                    events,
                    compact_revision: int(&r["compact_revision"]),
                    canceled: r["canceled"].as_bool().unwrap_or(false),
                }));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(EtcdError::Unreachable {
                        endpoints: "the watch stream".into(),
                        detail: e.to_string(),
                    })
                }
            }
        }
    }
}
