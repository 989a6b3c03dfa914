//! The file's shape: the parsed TOML tree read, key by key, into structs that mirror the sections.
//!
//! Each key is read by a getter that knows what the key expects. A value of the wrong type is
//! reported (naming the key, what it takes and what it got) and left out; a key no getter asked for
//! is reported as unknown, with the keys its section does take. Neither stops the reading, so every
//! problem with the file's shape is reported together with what [`super::validate`] finds in the
//! values. (serde's `deny_unknown_fields` and typed fields stop at the first such problem.)
//!
//! Nothing here is trusted: a present value has the right TOML type and nothing more.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml_edit::{Item, TableLike, Value};

use super::validate::Errors;

const ADDRESS: &str = "an IP:port string such as \"127.0.0.1:8080\"";
const ADDRESSES: (&str, &str) = (
    "a list of IP:port strings such as [\"127.0.0.1:8080\"]",
    ADDRESS,
);
const DURATION: &str = "a duration string such as \"2s\"";
const PATH: &str = "a path string";
const BOOL: &str = "true or false";

pub struct File {
    pub listen: Option<Listen>,
    pub admin: Option<Admin>,
    pub metrics: Option<Metrics>,
    pub state: Option<State>,
    pub pools: Option<BTreeMap<String, Pool>>,
    pub health: Option<Health>,
    pub routing: Option<Routing>,
    pub upstream: Option<Upstream>,
    pub guard: Option<Guard>,
    pub notify: Option<Notify>,
    pub shutdown: Option<Shutdown>,
    pub server: Option<Server>,
    pub log: Option<Log>,
    pub dns: Option<Dns>,
    pub tls: Option<Tls>,
    pub chatops: Option<Chatops>,
    pub faults: Option<Faults>,
    pub shadow: Option<Shadow>,
}

#[derive(Default)]
pub struct Listen {
    pub http: Option<Spanned<Vec<Spanned<String>>>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub header_timeout: Option<Spanned<String>>,
    pub https: Option<Spanned<Vec<Spanned<String>>>>,
    pub h2c: Option<bool>,
    pub redirect_to_https: Option<Spanned<bool>>,
}

#[derive(Default)]
pub struct Tls {
    pub certificate: Vec<Certificate>,
}

pub struct Certificate {
    /// Where the entry starts, for errors about the entry as a whole.
    pub span: Option<Range<usize>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub default: Option<Spanned<bool>>,
}

#[derive(Default)]
pub struct Admin {
    pub socket: Option<String>,
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Metrics {
    pub listen: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct State {
    pub dir: Option<String>,
    pub backend: Option<Spanned<String>>,
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    pub fleet: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
    pub lease_ttl: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

pub struct Pool {
    /// Where the pool's table starts, for errors about the pool as a whole.
    pub span: Option<Range<usize>>,
    pub backends: Option<Spanned<Vec<Spanned<String>>>>,
    pub protocol: Option<Spanned<String>>,
    pub tls: Option<Spanned<bool>>,
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Health {
    pub enabled: Option<bool>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub min_healthy: Option<Spanned<usize>>,
}

#[derive(Default)]
pub struct Routing {
    pub initial_primary: Option<Spanned<String>>,
    pub sticky: Option<Spanned<String>>,
    pub response_header: Option<bool>,
    pub preview_token_file: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Upstream {
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub write_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub idle_close: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Guard {
    pub enabled: Option<bool>,
    pub window: Option<Spanned<String>>,
    pub min_requests: Option<u64>,
    pub max_error_ratio: Option<Spanned<f64>>,
    pub max_p99: Option<Spanned<String>>,
    pub watch_after_flip: Option<Spanned<String>>,
    pub min_duration: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Notify {
    pub webhook: Vec<Webhook>,
}

pub struct Webhook {
    pub url: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub events: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Shutdown {
    pub grace_period: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Server {
    pub threads: Option<usize>,
    pub header_case: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Log {
    pub access: Option<bool>,
    pub format: Option<Spanned<String>>,
    pub timestamps: Option<bool>,
}

#[derive(Default)]
pub struct Chatops {
    pub listen: Option<Spanned<String>>,
    pub signing_secret_file: Option<Spanned<String>>,
    /// Chat user id → the name history records.
    pub users: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Default)]
pub struct Faults {
    pub max_duration: Option<Spanned<String>>,
}

#[derive(Default)]
pub struct Shadow {
    pub queue: Option<Spanned<usize>>,
    pub concurrency: Option<Spanned<usize>>,
    pub max_body: Option<Spanned<usize>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<String>>,
    pub max_duration: Option<Spanned<String>>,
    pub compare_body: Option<Spanned<String>>,
    pub ignore_fields: Option<Spanned<Vec<Spanned<String>>>>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_mismatch_ratio: Option<Spanned<f64>>,
    pub min_compared: Option<u64>,
}

#[derive(Default)]
pub struct Dns {
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub refresh: Option<Spanned<String>>,
}

/// Reads the document's root table; every problem with its shape goes to `errs`.
pub fn read(root: &toml_edit::Table, errs: &mut Errors<'_>) -> File {
    let mut r = Section::root(root);
    let file = File {
        listen: r.section(errs, "listen", |s, errs| Listen {
            http: s.strings(errs, "http", ADDRESSES),
            trusted_proxies: s.strings(
                errs,
                "trusted_proxies",
                (
                    "a list of address or network strings such as [\"10.0.0.0/8\"]",
                    "an IP address or network string such as \"10.0.0.0/8\"",
                ),
            ),
            header_timeout: s.string(errs, "header_timeout", DURATION),
            https: s.strings(errs, "https", ADDRESSES),
            h2c: s.bool(errs, "h2c"),
            redirect_to_https: s.spanned_bool(errs, "redirect_to_https"),
        }),
        admin: r.section(errs, "admin", |s, errs| Admin {
            socket: s.string(errs, "socket", PATH).map(Spanned::into_inner),
            listen: s.string(errs, "listen", ADDRESS),
            token_file: s.string(errs, "token_file", PATH),
            socket_group: s.string(errs, "socket_group", "a group name such as \"deploy\""),
        }),
        metrics: r.section(errs, "metrics", |s, errs| Metrics {
            listen: s.string(errs, "listen", ADDRESS),
        }),
        state: r.section(errs, "state", |s, errs| State {
            dir: s.string(errs, "dir", PATH).map(Spanned::into_inner),
            backend: s.string(errs, "backend", "\"file\" or \"etcd\""),
            endpoints: s.strings(
                errs,
                "endpoints",
                (
                    "a list of etcd URLs such as [\"http://10.0.0.1:2379\"]",
                    "an etcd URL such as \"http://10.0.0.1:2379\"",
                ),
            ),
            fleet: s.string(errs, "fleet", "a fleet name such as \"prod\""),
            instance: s.string(errs, "instance", "an instance name such as \"proxy-1\""),
            lease_ttl: s.string(errs, "lease_ttl", DURATION),
            timeout: s.string(errs, "timeout", DURATION),
            user: s.string(errs, "user", "an etcd user name"),
            password_file: s.string(errs, "password_file", PATH),
            ca_file: s.string(errs, "ca_file", PATH),
            cert_file: s.string(errs, "cert_file", PATH),
            key_file: s.string(errs, "key_file", PATH),
        }),
        pools: r.section(errs, "pools", |s, errs| {
            s.tables_by_name(
                errs,
                "a table such as [pools.blue] with a backends list",
                |p, errs| {
                    p.require(errs, "backends", "backends = [\"10.0.0.1:8000\"]");
                    Pool {
                        span: p.span.clone(),
                        backends: p.strings(
                            errs,
                            "backends",
                            (
                                "a list of IP:port or host:port strings such as \
                                 [\"10.0.0.1:8000\", \"app.internal:8000\"]",
                                "an IP:port or host:port string such as \"10.0.0.1:8000\"",
                            ),
                        ),
                        protocol: p.string(errs, "protocol", "\"http1\", \"h2c\" or \"h2\""),
                        tls: p.spanned_bool(errs, "tls"),
                        sni: p.string(errs, "sni", "a host name string such as \"app.internal\""),
                        ca_file: p.string(errs, "ca_file", PATH),
                    }
                },
            )
        }),
        health: r.section(errs, "health", |s, errs| Health {
            enabled: s.bool(errs, "enabled"),
            path: s.string(errs, "path", "a URL path string such as \"/healthz\""),
            interval: s.string(errs, "interval", DURATION),
            timeout: s.string(errs, "timeout", DURATION),
            rise: s.uint(errs, "rise", "a whole number such as 2"),
            fall: s.uint(errs, "fall", "a whole number such as 3"),
            min_healthy: s.uint(errs, "min_healthy", "a whole number such as 1"),
        }),
        routing: r.section(errs, "routing", |s, errs| Routing {
            initial_primary: s.string(errs, "initial_primary", "a pool name string"),
            sticky: s.string(
                errs,
                "sticky",
                "a string: \"cookie\", \"header:<name>\", \"ip\" or \"none\"",
            ),
            response_header: s.bool(errs, "response_header"),
            preview_token_file: s.string(errs, "preview_token_file", PATH),
        }),
        upstream: r.section(errs, "upstream", |s, errs| Upstream {
            connect_timeout: s.string(errs, "connect_timeout", DURATION),
            read_timeout: s.string(errs, "read_timeout", DURATION),
            write_timeout: s.string(errs, "write_timeout", DURATION),
            idle_timeout: s.string(errs, "idle_timeout", DURATION),
            idle_close: s.string(errs, "idle_close", "\"on_reuse\" or \"on_timeout\""),
        }),
        guard: r.section(errs, "guard", |s, errs| Guard {
            enabled: s.bool(errs, "enabled"),
            window: s.string(errs, "window", DURATION),
            min_requests: s
                .uint(errs, "min_requests", "a whole number such as 50")
                .map(Spanned::into_inner),
            max_error_ratio: s.float(errs, "max_error_ratio", "a number such as 0.05"),
            max_p99: s.string(errs, "max_p99", DURATION),
            watch_after_flip: s.string(errs, "watch_after_flip", DURATION),
            min_duration: s.string(errs, "min_duration", DURATION),
        }),
        notify: r.section(errs, "notify", |s, errs| Notify {
            webhook: s.array_of_tables(errs, "webhook", |w, errs| {
                w.require(errs, "url", "url = \"https://chat.example/hooks/deploys\"");
                Webhook {
                    url: w.string(
                        errs,
                        "url",
                        "a URL string such as \"https://chat.example/hook\"",
                    ),
                    format: w.string(errs, "format", "a string: \"slack\" or \"json\""),
                    events: w.strings(
                        errs,
                        "events",
                        (
                            "a list of event names such as [\"flip\", \"rollback\"]",
                            "an event name string such as \"flip\"",
                        ),
                    ),
                    timeout: w.string(errs, "timeout", DURATION),
                }
            }),
        }),
        shutdown: r.section(errs, "shutdown", |s, errs| Shutdown {
            grace_period: s.string(errs, "grace_period", DURATION),
        }),
        server: r.section(errs, "server", |s, errs| Server {
            threads: s
                .uint(errs, "threads", "a whole number (0 = one per core)")
                .map(Spanned::into_inner),
            header_case: s.string(errs, "header_case", "\"canonical\" or \"preserve\""),
        }),
        log: r.section(errs, "log", |s, errs| Log {
            access: s.bool(errs, "access"),
            format: s.string(errs, "format", "\"text\" or \"json\""),
            timestamps: s.bool(errs, "timestamps"),
        }),
        dns: r.section(errs, "dns", |s, errs| Dns {
            servers: s.strings(errs, "servers", ADDRESSES),
            refresh: s.string(errs, "refresh", DURATION),
        }),
        tls: r.section(errs, "tls", |s, errs| Tls {
            certificate: s.array_of_tables(errs, "certificate", |c, errs| {
                c.require(errs, "cert", "cert = \"/etc/switchyard/tls/shop.pem\"");
                c.require(errs, "key", "key = \"/etc/switchyard/tls/shop.key\"");
                Certificate {
                    span: c.span.clone(),
                    cert: c.string(errs, "cert", PATH),
                    key: c.string(errs, "key", PATH),
                    default: c.spanned_bool(errs, "default"),
                }
            }),
        }),
        chatops: r.section(errs, "chatops", |s, errs| {
            s.require(errs, "listen", "listen = \"127.0.0.1:9092\"");
            s.require(
                errs,
                "signing_secret_file",
                "signing_secret_file = \"/etc/switchyard/slack-signing-secret\"",
            );
            Chatops {
                listen: s.string(errs, "listen", ADDRESS),
                signing_secret_file: s.string(errs, "signing_secret_file", PATH),
                users: s.section(errs, "users", |u, errs| {
                    u.strings_by_name(errs, "a name string such as \"alice\"")
                }),
            }
        }),
        faults: r.section(errs, "faults", |s, errs| Faults {
            max_duration: s.string(errs, "max_duration", DURATION),
        }),
        shadow: r.section(errs, "shadow", |s, errs| Shadow {
            queue: s.uint(errs, "queue", "a whole number such as 1024"),
            concurrency: s.uint(errs, "concurrency", "a whole number such as 16"),
            max_body: s.uint(errs, "max_body", "a number of bytes such as 65536"),
            methods: s.strings(
                errs,
                "methods",
                (
                    "a list of HTTP methods such as [\"GET\", \"HEAD\"]",
                    "an HTTP method string such as \"GET\"",
                ),
            ),
            timeout: s.string(errs, "timeout", DURATION),
            max_duration: s.string(errs, "max_duration", DURATION),
            compare_body: s.string(
                errs,
                "compare_body",
                "a string: \"none\", \"exact\" or \"json\"",
            ),
            ignore_fields: s.strings(
                errs,
                "ignore_fields",
                (
                    "a list of JSON field names such as [\"ts\", \"request_id\"]",
                    "a JSON field name string such as \"ts\"",
                ),
            ),
            routes: s.strings(
                errs,
                "routes",
                (
                    "a list of path patterns such as [\"/api/users/*\"]",
                    "a path pattern string such as \"/api/users/*\"",
                ),
            ),
            max_mismatch_ratio: s.float(errs, "max_mismatch_ratio", "a number such as 0.01"),
            min_compared: s
                .uint(errs, "min_compared", "a whole number such as 100")
                .map(Spanned::into_inner),
        }),
    };
    r.finish(errs);
    file
}

/// One table of the file being read: it remembers the keys asked for, so that [`Section::finish`]
/// can report the rest as unknown.
struct Section<'t> {
    /// The dotted path (`health`, `pools.blue`, `notify.webhook`); empty for the root.
    path: String,
    /// How messages name it: `[health]`, `[pools.blue]`, `[[notify.webhook]]`.
    name: String,
    table: &'t dyn TableLike,
    span: Option<Range<usize>>,
    known: Vec<&'static str>,
    /// Every key is a name the file chooses (`[pools.<name>]`), so none is unknown.
    open: bool,
}

impl<'t> Section<'t> {
    fn root(table: &'t toml_edit::Table) -> Section<'t> {
        Section {
            path: String::new(),
            name: "the top level".into(),
            table,
            span: None,
            known: Vec::new(),
            open: false,
        }
    }

    fn child(
        &self,
        key: &str,
        table: &'t dyn TableLike,
        span: Option<Range<usize>>,
    ) -> Section<'t> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Section {
            name: format!("[{path}]"),
            path,
            table,
            span,
            known: Vec::new(),
            open: false,
        }
    }

    /// The item under `key`, if any, and where it is; marks `key` as one this section takes.
    fn get(&mut self, key: &'static str) -> Option<(&'t Item, Option<Range<usize>>)> {
        self.known.push(key);
        let (k, item) = self.table.get_key_value(key)?;
        Some((item, item.span().or_else(|| k.span())))
    }

    /// Reports `key` missing; `example` shows a line that would add it.
    fn require(&self, errs: &mut Errors<'_>, key: &str, example: &str) {
        if !self.table.contains_key(key) {
            errs.at_span(
                self.span.clone(),
                format!("{} has no `{key}`; add e.g. {example}", self.name),
            );
        }
    }

    fn wrong_type(
        &self,
        errs: &mut Errors<'_>,
        span: Option<Range<usize>>,
        what: &str,
        expect: &str,
        found: &str,
    ) {
        let message = if self.path.is_empty() {
            format!("`{what}` must be {expect}, not {found}")
        } else {
            format!("{} {what} must be {expect}, not {found}", self.name)
        };
        errs.at_span(span, message);
    }

    fn string(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        expect: &str,
    ) -> Option<Spanned<String>> {
        let (item, span) = self.get(key)?;
        match item.as_value() {
            Some(Value::String(s)) => Some(spanned(span, s.value().clone())),
            _ => {
                self.wrong_type(errs, span, key, expect, found(item));
                None
            }
        }
    }

    /// An array of strings; entries of another type are reported and left out.
    fn strings(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        (list_expect, expect): (&str, &str),
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let (item, span) = self.get(key)?;
        let Some(Value::Array(array)) = item.as_value() else {
            self.wrong_type(errs, span, key, list_expect, found(item));
            return None;
        };
        let mut list = Vec::new();
        for v in array.iter() {
            match v {
                Value::String(s) => list.push(spanned(v.span(), s.value().clone())),
                other => self.wrong_type(
                    errs,
                    other.span(),
                    &format!("{key} entry"),
                    expect,
                    found_value(other),
                ),
            }
        }
        Some(spanned(span, list))
    }

    fn bool(&mut self, errs: &mut Errors<'_>, key: &'static str) -> Option<bool> {
        let (item, span) = self.get(key)?;
        match item.as_value() {
            Some(Value::Boolean(b)) => Some(*b.value()),
            _ => {
                self.wrong_type(errs, span, key, BOOL, found(item));
                None
            }
        }
    }

    /// A boolean, with where it is.
    fn spanned_bool(&mut self, errs: &mut Errors<'_>, key: &'static str) -> Option<Spanned<bool>> {
        let (item, span) = self.get(key)?;
        match item.as_value() {
            Some(Value::Boolean(b)) => Some(spanned(span, *b.value())),
            _ => {
                self.wrong_type(errs, span, key, BOOL, found(item));
                None
            }
        }
    }

    /// A non-negative integer that fits `T`.
    fn uint<T: TryFrom<i64>>(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        expect: &str,
    ) -> Option<Spanned<T>> {
        let (item, span) = self.get(key)?;
        match item.as_value() {
            Some(Value::Integer(i)) => match T::try_from(*i.value()) {
                Ok(n) => Some(spanned(span, n)),
                Err(_) => {
                    let found = i.value().to_string();
                    self.wrong_type(errs, span, key, expect, &found);
                    None
                }
            },
            _ => {
                self.wrong_type(errs, span, key, expect, found(item));
                None
            }
        }
    }

    /// A number; an integer is taken as one (`max_error_ratio = 0`).
    fn float(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        expect: &str,
    ) -> Option<Spanned<f64>> {
        let (item, span) = self.get(key)?;
        match item.as_value() {
            Some(Value::Float(f)) => Some(spanned(span, *f.value())),
            Some(Value::Integer(i)) => Some(spanned(span, *i.value() as f64)),
            _ => {
                self.wrong_type(errs, span, key, expect, found(item));
                None
            }
        }
    }

    /// The sub-table `key` read by `read`, then checked for unknown keys.
    fn section<T>(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        read: impl FnOnce(&mut Section<'t>, &mut Errors<'_>) -> T,
    ) -> Option<T> {
        let (item, span) = self.get(key)?;
        let Some(table) = item.as_table_like() else {
            let expect = format!("a section ([{key}] and the keys below it)");
            self.wrong_type(errs, span, key, &expect, found(item));
            return None;
        };
        let mut s = self.child(key, table, span);
        let value = read(&mut s, errs);
        s.finish(errs);
        Some(value)
    }

    /// Every entry of this table as a named sub-table (`[pools.<name>]`): any name is taken.
    fn tables_by_name<T>(
        &mut self,
        errs: &mut Errors<'_>,
        expect: &str,
        mut read: impl FnMut(&mut Section<'t>, &mut Errors<'_>) -> T,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let table = self.table;
        for (name, item) in table.iter() {
            let span = item
                .span()
                .or_else(|| table.key(name).and_then(|k| k.span()));
            match item.as_table_like() {
                Some(t) => {
                    let mut s = self.child(name, t, span);
                    let value = read(&mut s, errs);
                    s.finish(errs);
                    out.insert(name.to_string(), value);
                }
                None => self.wrong_type(errs, span, name, expect, found(item)),
            }
        }
        // Every name is a pool name: none is unknown.
        self.open = true;
        out
    }

    /// Every entry of this table as a string named by its key (`[chatops.users]`): any name is
    /// taken.
    fn strings_by_name(
        &mut self,
        errs: &mut Errors<'_>,
        expect: &str,
    ) -> BTreeMap<String, Spanned<String>> {
        let mut out = BTreeMap::new();
        let table = self.table;
        for (name, item) in table.iter() {
            let span = item
                .span()
                .or_else(|| table.key(name).and_then(|k| k.span()));
            match item.as_value() {
                Some(Value::String(v)) => {
                    out.insert(name.to_string(), spanned(span, v.value().clone()));
                }
                _ => self.wrong_type(errs, span, name, expect, found(item)),
            }
        }
        self.open = true;
        out
    }

    /// `[[key]]` tables, or an inline array of inline tables.
    fn array_of_tables<T>(
        &mut self,
        errs: &mut Errors<'_>,
        key: &'static str,
        mut read: impl FnMut(&mut Section<'t>, &mut Errors<'_>) -> T,
    ) -> Vec<T> {
        let Some((item, span)) = self.get(key) else {
            return Vec::new();
        };
        let tables: Vec<(&'t dyn TableLike, Option<Range<usize>>)> = match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
            Item::Value(Value::Array(a)) if a.iter().all(|v| v.as_inline_table().is_some()) => a
                .iter()
                .filter_map(|v| Some((v.as_inline_table()? as &dyn TableLike, v.span())))
                .collect(),
            other => {
                let expect = format!("one or more [[{}.{key}]] tables", self.path);
                self.wrong_type(errs, span, key, &expect, found(other));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (table, span) in tables {
            let mut s = self.child(key, table, span);
            s.name = format!("[[{}]]", s.path);
            out.push(read(&mut s, errs));
            s.finish(errs);
        }
        out
    }

    /// Reports every key of this table that no getter asked for.
    fn finish(self, errs: &mut Errors<'_>) {
        if self.open {
            return;
        }
        for (key, item) in self.table.iter() {
            if self.known.contains(&key) {
                continue;
            }
            let span = self
                .table
                .key(key)
                .and_then(|k| k.span())
                .or_else(|| item.span())
                .or_else(|| self.span.clone());
            errs.at_span(span, self.unknown(key, item));
        }
    }

    fn unknown(&self, key: &str, item: &Item) -> String {
        let (what, shown, list): (&str, String, Vec<String>) = if self.path.is_empty() {
            let shown = if item.is_table_like() {
                format!("section [{key}]")
            } else {
                format!("key `{key}` at the top level (settings go in a section)")
            };
            let list = self.known.iter().map(|k| format!("[{k}]")).collect();
            ("section", shown, list)
        } else {
            let shown = format!("key `{key}` in {}", self.name);
            let list = self.known.iter().map(|k| format!("`{k}`")).collect();
            ("key", shown, list)
        };
        match closest(key, &self.known) {
            Some(i) => format!("unknown {shown}; did you mean {}?", list[i]),
            None if list.is_empty() => format!("unknown {shown}"),
            None if list.len() == 1 => format!("unknown {shown}; the only {what} is {}", list[0]),
            None => format!("unknown {shown}; the {what}s are {}", list.join(", ")),
        }
    }
}

fn spanned<T>(span: Option<Range<usize>>, value: T) -> Spanned<T> {
    Spanned::new(span.unwrap_or(0..0), value)
}

/// What a wrong value is, in words.
fn found(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => found_value(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn found_value(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The index of the candidate `key` most likely is a misspelling of, if any is close enough.
fn closest(key: &str, candidates: &[&str]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (edit_distance(key, c), i, c))
        .filter(|(d, _, c)| 2 * d <= key.len().max(c.len()))
        .min_by_key(|(d, i, _)| (*d, *i))
        .map(|(_, i, _)| i)
}

/// Levenshtein distance, by chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}
