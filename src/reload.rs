//! What a configuration reload changes: the difference between the configuration in force and a
//! new one, in words an operator reads in a reply, a log line, history and chat.
//!
//! Pure: [`Plan::between`] compares two validated configurations and sorts every difference into
//! what can change in place (pool members, health, upstream timeouts, guard, webhooks, routing
//! options, access log) and what cannot (listeners, the admin socket, the state directory, pool
//! names, worker threads). The admin handler (`admin::reload`) refuses a plan with any of the
//! latter and applies the rest as one atomic step.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Sticky, POOL_COUNT};

/// The members a pool gains and loses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl Membership {
    /// What turns the members `old` into `new`.
    pub fn between(old: &[SocketAddr], new: &[SocketAddr]) -> Membership {
        Membership {
            added: new.iter().filter(|a| !old.contains(a)).copied().collect(),
            removed: old.iter().filter(|a| !new.contains(a)).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// One setting that differs: its key as written in the file, and both values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.key, self.from, self.to)
    }
}

/// Everything a new configuration changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per pool, in configuration order.
    pub members: [Membership; POOL_COUNT],
    /// Settings that change in place.
    pub settings: Vec<Setting>,
    /// Settings that differ but cannot change without an upgrade or a restart.
    pub restart: Vec<Setting>,
}

impl Plan {
    /// The plan that turns `old` into `new`, whose pools have the members `old_members` and
    /// `new_members` (the addresses each file lists plus what its backend names resolve to).
    pub fn between(
        old: &Config,
        new: &Config,
        old_members: &[Vec<SocketAddr>; POOL_COUNT],
        new_members: &[Vec<SocketAddr>; POOL_COUNT],
    ) -> Plan {
        let mut plan = Plan::default();
        for (i, (o, n)) in old.pools.iter().zip(&new.pools).enumerate() {
            if o.name != n.name {
                plan.restart.push(setting(
                    &format!("pools.{}", o.name),
                    &o.name,
                    &format!("pools.{}", n.name),
                ));
                continue;
            }
            plan.members[i] = Membership::between(&old_members[i], &new_members[i]);
            if o.names != n.names {
                plan.settings.push(setting(
                    &format!("pools.{}.backends (names)", n.name),
                    &list(&o.names),
                    &list(&n.names),
                ));
            }
        }

        let mut d = Differ { plan: &mut plan };
        // Bound once, handed to pingora and the kernel: an upgrade (or restart) moves them.
        d.restart("listen.http", &addrs(&old.listen), &addrs(&new.listen));
        d.restart("listen.https", &addrs(&old.https), &addrs(&new.https));
        // Part of the listeners' HTTP options, fixed when the service is built.
        d.restart("listen.h2c", &old.h2c, &new.h2c);
        d.set(
            "listen.redirect_to_https",
            &old.redirect_to_https,
            &new.redirect_to_https,
        );
        // Certificate files: a new file list is read and swapped in (new handshakes only); a
        // renewed file under the same name is noted by the reload, which compares contents.
        let certs = |c: &Config| {
            let files: Vec<String> = c
                .tls
                .iter()
                .map(|t| {
                    let mark = if t.default { " (default)" } else { "" };
                    format!("{}{mark}", t.cert.display())
                })
                .collect();
            format!("[{}]", files.join(", "))
        };
        d.set("tls.certificate", &certs(old), &certs(new));
        for (o, n) in old.pools.iter().zip(&new.pools) {
            if o.name != n.name {
                continue;
            }
            let key = |k: &str| format!("pools.{}.{k}", n.name);
            d.set(&key("protocol"), &o.protocol.as_str(), &n.protocol.as_str());
            d.set(&key("tls"), &o.tls, &n.tls);
            d.set(&key("sni"), &opt(&o.sni), &opt(&n.sni));
            d.set(
                &key("ca_file"),
                &opt_path(&o.ca_file),
                &opt_path(&n.ca_file),
            );
        }
        d.restart(
            "admin.socket",
            &old.admin.socket.display(),
            &new.admin.socket.display(),
        );
        d.restart(
            "admin.listen",
            &opt(&old.admin.listen),
            &opt(&new.admin.listen),
        );
        d.restart(
            "admin.token_file",
            &opt_path(&old.admin.token_file),
            &opt_path(&new.admin.token_file),
        );
        // The socket's group is set when it is bound; an upgrade hands the bound socket on.
        d.restart(
            "admin.socket_group",
            &old.admin
                .socket_group
                .as_ref()
                .map_or("none", |g| g.name.as_str()),
            &new.admin
                .socket_group
                .as_ref()
                .map_or("none", |g| g.name.as_str()),
        );
        // The log subscriber is installed once per process; a new process (upgrade) reads these.
        d.restart(
            "log.format",
            &format!("{:?}", old.log.format).to_lowercase(),
            &format!("{:?}", new.log.format).to_lowercase(),
        );
        d.restart("log.timestamps", &old.log.timestamps, &new.log.timestamps);
        d.restart(
            "metrics.listen",
            &opt(&old.metrics.listen),
            &opt(&new.metrics.listen),
        );
        d.restart(
            "state.dir",
            &old.state.dir.display(),
            &new.state.dir.display(),
        );
        d.restart("state.backend", &old.state.backend, &new.state.backend);
        d.restart("server.threads", &old.server.threads, &new.server.threads);
        // Both halves are set at start: the listeners' server options and the proxy's peers.
        d.restart(
            "server.header_case",
            &old.server.header_case.as_str(),
            &new.server.header_case.as_str(),
        );
        // The connection pool is made at start (pingora's ServerConf).
        d.restart(
            "upstream.idle_close",
            &old.upstream.idle_close.as_str(),
            &new.upstream.idle_close.as_str(),
        );
        // The chat listener, its secret and its users are taken at start (chatops.rs).
        let chat = |c: &Option<crate::config::ChatopsConfig>| match c {
            None => "off".to_string(),
            Some(c) => format!(
                "listen {}, signing_secret_file {}, users {}",
                c.listen,
                c.signing_secret_file.display(),
                c.users
                    .iter()
                    .map(|(id, name)| format!("{id}={name}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        };
        d.restart("chatops", &chat(&old.chatops), &chat(&new.chatops));
        d.restart(
            "listen.header_timeout",
            &dur(old.header_timeout),
            &dur(new.header_timeout),
        );
        d.restart(
            "shutdown.grace_period",
            &dur(old.shutdown.grace_period),
            &dur(new.shutdown.grace_period),
        );

        let (o, n) = (&old.health, &new.health);
        d.set("health.enabled", &o.enabled, &n.enabled);
        d.set("health.path", &o.path, &n.path);
        d.set("health.interval", &dur(o.interval), &dur(n.interval));
        d.set("health.timeout", &dur(o.timeout), &dur(n.timeout));
        d.set("health.rise", &o.rise, &n.rise);
        d.set("health.fall", &o.fall, &n.fall);
        d.set("health.min_healthy", &o.min_healthy, &n.min_healthy);

        let (o, n) = (&old.upstream, &new.upstream);
        for (key, a, b) in [
            (
                "upstream.connect_timeout",
                o.connect_timeout,
                n.connect_timeout,
            ),
            ("upstream.read_timeout", o.read_timeout, n.read_timeout),
            ("upstream.write_timeout", o.write_timeout, n.write_timeout),
            ("upstream.idle_timeout", o.idle_timeout, n.idle_timeout),
        ] {
            d.set(key, &dur(a), &dur(b));
        }

        let (o, n) = (&old.guard, &new.guard);
        d.set("guard.enabled", &o.enabled, &n.enabled);
        d.set("guard.window", &dur(o.window), &dur(n.window));
        d.set("guard.min_requests", &o.min_requests, &n.min_requests);
        d.set(
            "guard.max_error_ratio",
            &o.max_error_ratio,
            &n.max_error_ratio,
        );
        d.set(
            "guard.max_p99",
            &o.max_p99.map_or("none".into(), dur),
            &n.max_p99.map_or("none".into(), dur),
        );
        d.set(
            "guard.watch_after_flip",
            &dur(o.watch_after_flip),
            &dur(n.watch_after_flip),
        );

        let (o, n) = (&old.routing, &new.routing);
        d.set("routing.sticky", &sticky(&o.sticky), &sticky(&n.sticky));
        d.set(
            "routing.response_header",
            &o.response_header,
            &n.response_header,
        );
        d.set(
            "routing.preview_token_file",
            &opt_path(&o.preview_token_file),
            &opt_path(&n.preview_token_file),
        );
        d.set(
            "routing.initial_primary",
            &old.pools[o.initial_primary].name,
            &new.pools[n.initial_primary].name,
        );
        d.set(
            "listen.trusted_proxies",
            &list(&old.trusted_proxies),
            &list(&new.trusted_proxies),
        );
        d.set("log.access", &old.log.access, &new.log.access);
        d.set("notify.webhook", &hooks(old), &hooks(new));
        d.set(
            "dns.servers",
            &list(&old.dns.servers),
            &list(&new.dns.servers),
        );
        d.set("dns.refresh", &dur(old.dns.refresh), &dur(new.dns.refresh));
        d.set(
            "faults.max_duration",
            &dur(old.faults.max_duration),
            &dur(new.faults.max_duration),
        );
        // The queue and the worker's slots are made once; the rest applies to the next session.
        let (o, n) = (&old.shadow, &new.shadow);
        d.restart("shadow.queue", &o.queue, &n.queue);
        d.restart("shadow.concurrency", &o.concurrency, &n.concurrency);
        let session = |c: &crate::config::ShadowConfig| {
            format!(
                "methods {:?}, max_body {}, timeout {}, max_duration {}, compare_body {:?}, \
                 ignore_fields {:?}, routes {:?}, max_mismatch_ratio {:?}, min_compared {}",
                c.methods
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                c.max_body,
                dur(c.timeout),
                dur(c.max_duration),
                c.compare_body,
                c.ignore_fields,
                c.routes,
                c.max_mismatch_ratio,
                c.min_compared
            )
        };
        d.set("shadow", &session(o), &session(n));
        plan
    }

    /// Nothing changes.
    pub fn is_empty(&self) -> bool {
        self.members.iter().all(Membership::is_empty)
            && self.settings.is_empty()
            && self.restart.is_empty()
    }

    /// Adds a change that the files alone do not show (a rotated token file).
    pub fn note(&mut self, key: &str, from: &str, to: &str) {
        self.settings.push(setting(key, from, to));
    }

    /// One line: `green: +10.0.1.5:8000 −10.0.1.1:8000; guard.max_error_ratio 0.05 → 0.02`.
    pub fn summary(&self, names: &[String]) -> String {
        let mut parts = Vec::new();
        for (name, m) in names.iter().zip(&self.members) {
            if m.is_empty() {
                continue;
            }
            let added = m.added.iter().map(|a| format!("+{a}"));
            let removed = m.removed.iter().map(|a| format!("−{a}"));
            parts.push(format!(
                "{name}: {}",
                added.chain(removed).collect::<Vec<_>>().join(" ")
            ));
        }
        parts.extend(self.settings.iter().map(Setting::to_string));
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Whether a key that cannot change in place cannot change through a binary upgrade either: the
/// new process takes over the old one's admin socket, state directory and pools.
pub fn restart_only(key: &str) -> bool {
    key == "admin.socket"
        || key == "admin.socket_group"
        || key == "state.dir"
        || key == "state.backend"
        || key.starts_with("pools.")
}

/// Sorts differences into the plan.
struct Differ<'a> {
    plan: &'a mut Plan,
}

impl Differ<'_> {
    fn set(&mut self, key: &str, old: &dyn Display, new: &dyn Display) {
        let (from, to) = (old.to_string(), new.to_string());
        if from != to {
            self.plan.settings.push(setting(key, &from, &to));
        }
    }

    fn restart(&mut self, key: &str, old: &dyn Display, new: &dyn Display) {
        let (from, to) = (old.to_string(), new.to_string());
        if from != to {
            self.plan.restart.push(setting(key, &from, &to));
        }
    }
}

fn setting(key: &str, from: &str, to: &str) -> Setting {
    Setting {
        key: key.into(),
        from: from.into(),
        to: to.into(),
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn addrs(a: &[SocketAddr]) -> String {
    list(a)
}

fn list<T: Display>(items: &[T]) -> String {
    let s: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[{}]", s.join(", "))
}

fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("none".into(), T::to_string)
}

fn opt_path(v: &Option<std::path::PathBuf>) -> String {
    v.as_deref()
        .map_or("none".into(), |p: &Path| p.display().to_string())
}

fn sticky(s: &Sticky) -> String {
    match s {
        Sticky::Cookie => "cookie".into(),
        Sticky::Header(h) => format!("header:{h}"),
        Sticky::Ip => "ip".into(),
        Sticky::None => "none".into(),
    }
}

/// The webhooks as one comparable line (URLs, formats and events; no secrets live in them).
fn hooks(c: &Config) -> String {
    let hooks: Vec<String> = c
        .notify
        .iter()
        .map(|h| {
            format!(
                "{} ({:?}, {}, {})",
                h.url,
                h.format,
                h.events.join("+"),
                dur(h.timeout)
            )
            .to_lowercase()
        })
        .collect();
    format!("[{}]", hooks.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(old: &Config, new: &Config) -> Plan {
        let members = |c: &Config| [c.pools[0].backends.clone(), c.pools[1].backends.clone()];
        Plan::between(old, new, &members(old), &members(new))
    }

    fn config(extra: &str, green: &str) -> Config {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:8001\"]\n[pools.green]\nbackends = [{green}]\n{extra}"
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = config("", "\"127.0.0.1:9001\"");
        let plan = plan(&c, &c.clone());
        assert!(plan.is_empty());
        assert_eq!(plan.summary(&["blue".into(), "green".into()]), "no change");
    }

    #[test]
    fn members_and_settings_are_described_in_one_line() {
        let old = config(
            "[guard]\nmax_error_ratio = 0.05\n",
            "\"127.0.0.1:9001\", \"127.0.0.1:9002\"",
        );
        let new = config(
            "[guard]\nmax_error_ratio = 0.02\n",
            "\"127.0.0.1:9002\", \"127.0.0.1:9005\"",
        );
        let plan = plan(&old, &new);
        assert!(plan.restart.is_empty());
        assert_eq!(plan.members[0], Membership::default());
        assert_eq!(plan.members[1].added, ["127.0.0.1:9005".parse().unwrap()]);
        assert_eq!(plan.members[1].removed, ["127.0.0.1:9001".parse().unwrap()]);
        assert_eq!(
            plan.summary(&["blue".into(), "green".into()]),
            "green: +127.0.0.1:9005 −127.0.0.1:9001; guard.max_error_ratio 0.05 → 0.02"
        );
    }

    #[test]
    fn listeners_and_directories_need_a_restart() {
        let old = config("", "\"127.0.0.1:9001\"");
        let new = config(
            "[listen]\nhttp = [\"127.0.0.1:8181\"]\n[state]\ndir = \"/tmp/elsewhere\"\n",
            "\"127.0.0.1:9001\"",
        );
        let plan = plan(&old, &new);
        let keys: Vec<&str> = plan.restart.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["listen.http", "state.dir"]);
        assert!(plan.settings.is_empty());
    }

    #[test]
    fn header_case_and_idle_close_need_an_upgrade() {
        let old = config("", "\"127.0.0.1:9001\"");
        let new = config(
            "[server]\nheader_case = \"preserve\"\n[upstream]\nidle_close = \"on_timeout\"\n",
            "\"127.0.0.1:9001\"",
        );
        let plan = plan(&old, &new);
        let keys: Vec<&str> = plan.restart.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["server.header_case", "upstream.idle_close"]);
        assert!(!restart_only("server.header_case"), "an upgrade applies it");
        assert!(
            !restart_only("upstream.idle_close"),
            "an upgrade applies it"
        );
        assert!(plan.settings.is_empty());
    }

    #[test]
    fn a_renamed_pool_needs_a_restart() {
        let old = config("", "\"127.0.0.1:9001\"");
        let text = "[pools.blue]\nbackends = [\"127.0.0.1:8001\"]\n[pools.teal]\nbackends = [\"127.0.0.1:9001\"]\n";
        let new = Config::parse(text, "t.toml").unwrap();
        let plan = plan(&old, &new);
        assert_eq!(plan.restart[0].key, "pools.green");
        assert_eq!(plan.restart[0].to, "pools.teal");
    }

    #[test]
    fn every_in_place_section_is_compared() {
        let old = config("", "\"127.0.0.1:9001\"");
        let new = config(
            "[health]\ninterval = \"1s\"\nrise = 3\n[upstream]\nread_timeout = \"5s\"\n\
             [routing]\nsticky = \"ip\"\nresponse_header = false\n[log]\naccess = true\n\
             [[notify.webhook]]\nurl = \"http://127.0.0.1:1/hook\"\n",
            "\"127.0.0.1:9001\"",
        );
        let plan = plan(&old, &new);
        let keys: Vec<&str> = plan.settings.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "health.interval",
                "health.rise",
                "upstream.read_timeout",
                "routing.sticky",
                "routing.response_header",
                "log.access",
                "notify.webhook"
            ]
        );
        assert!(plan.restart.is_empty());
    }
}
