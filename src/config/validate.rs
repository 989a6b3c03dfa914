//! The values: [`validate`] turns the file's [`raw`] mirror into a [`Config`] that has no "maybe"
//! left in it, collecting every problem (a bad address, a duration out of range, a backend in both
//! pools, ...) instead of stopping at the first, and noting the side files [`Config::load`] checks.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::*;

/// Collects errors against one file, and the side files it names.
pub(super) struct Errors<'a> {
    text: &'a str,
    file: &'a str,
    pub list: Vec<ConfigError>,
    pub side_files: Vec<SideFile>,
}

impl<'a> Errors<'a> {
    pub fn new(text: &'a str, file: &'a str) -> Errors<'a> {
        Errors {
            text,
            file,
            list: Vec::new(),
            side_files: Vec::new(),
        }
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The 1-based line and column of `span`'s start.
    pub fn location(&self, span: &Range<usize>) -> (usize, usize) {
        line_col(self.text, span.start)
    }

    pub(super) fn at<T>(&mut self, spanned: &Spanned<T>, message: String) {
        self.at_span(Some(spanned.span()), message);
    }

    /// An error at `span`, or unlocated without one.
    pub fn at_span(&mut self, span: Option<Range<usize>>, message: String) {
        let location = span.map(|s| self.location(&s));
        self.list.push(ConfigError {
            file: self.file.to_string(),
            location,
            message,
        });
    }

    /// Notes a file the server will read, named at `path`, for [`Config::load`] to check.
    fn side_file(&mut self, kind: SideFileKind, path: &Spanned<String>) {
        self.side_files.push(SideFile {
            kind,
            path: PathBuf::from(path.get_ref()),
            location: Some(self.location(&path.span())),
        });
    }

    fn general(&mut self, message: String) {
        self.list.push(ConfigError {
            file: self.file.to_string(),
            location: None,
            message,
        });
    }

    /// A network (`10.0.0.0/8`) or a single address (`192.0.2.7`, taken as `/32` or `/128`).
    fn network(&mut self, s: &Spanned<String>) -> Option<ipnet::IpNet> {
        let text = s.get_ref().trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| text.parse::<std::net::IpAddr>().ok().map(Into::into));
        if parsed.is_none() {
            self.at(
                s,
                format!(
                    "[listen] trusted_proxies entry `{text}` is not an IP address or network \
                     (write e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)"
                ),
            );
        }
        parsed.map(|n| n.trunc())
    }

    fn addr(&mut self, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is not an IP:port address (hostnames are not resolved; \
                         write e.g. 127.0.0.1:8000 or [::1]:8000)",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A setting with a closed set of values: the one `s` names, the default when it is absent,
    /// and when it names none of them an error listing them (and the default, so every other
    /// error is still found).
    pub(super) fn one_of<T: Copy + Default>(
        &mut self,
        s: Option<&Spanned<String>>,
        what: &str,
        choices: &[(&str, T)],
    ) -> T {
        let Some(s) = s else {
            return T::default();
        };
        if let Some((_, v)) = choices
            .iter()
            .find(|(name, _)| *name == s.get_ref().as_str())
        {
            return *v;
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.at(
            s,
            format!(
                "{what} `{}` is not one of {}",
                s.get_ref(),
                names.join(", ")
            ),
        );
        T::default()
    }

    pub(super) fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is longer than 7 days; no setting needs that",
                        s.get_ref()
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    s,
                    format!(
                        "{what} `{}` is not a duration ({e}); write e.g. \"250ms\", \"2s\" or \"5m\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        s: &Spanned<String>,
        what: &str,
    ) -> Option<Duration> {
        let d = self.duration(s, what)?;
        if d.is_zero() {
            self.at(s, format!("{what} must be greater than zero"));
            return None;
        }
        Some(d)
    }
}

/// The configuration `raw` describes, or `None` when `errs` has gained or already had an error.
pub(super) fn validate(raw: raw::File, errs: &mut Errors<'_>) -> Option<Config> {
    // [listen]
    let listen_raw = raw.listen.unwrap_or_default();
    let mut listen: Vec<SocketAddr> = Vec::new();
    match &listen_raw.http {
        Some(list) => {
            // An https-only proxy says `http = []`.
            let https_listed = listen_raw
                .https
                .as_ref()
                .is_some_and(|l| !l.get_ref().is_empty());
            if list.get_ref().is_empty() && !https_listed {
                errs.at(
                    list,
                    "[listen] http is empty; give at least one address such as \"0.0.0.0:8080\" \
                     (or an https listener)"
                        .into(),
                );
            }
            for s in list.get_ref() {
                if let Some(a) = errs.addr(s, "listen address") {
                    if listen.contains(&a) {
                        errs.at(s, format!("[listen] http lists {a} twice"));
                    } else {
                        listen.push(a);
                    }
                }
            }
        }
        None => listen.push(defaults::LISTEN.parse().expect("valid default")),
    }
    let mut https: Vec<SocketAddr> = Vec::new();
    for s in listen_raw.https.iter().flat_map(|l| l.get_ref()) {
        if let Some(a) = errs.addr(s, "https listen address") {
            if https.contains(&a) || listen.contains(&a) {
                errs.at(s, format!("[listen] lists {a} twice"));
            } else {
                https.push(a);
            }
        }
    }
    let h2c = listen_raw.h2c.unwrap_or(false);
    let redirect_to_https = listen_raw
        .redirect_to_https
        .as_ref()
        .is_some_and(|r| *r.get_ref());
    if let Some(r) = listen_raw
        .redirect_to_https
        .as_ref()
        .filter(|r| *r.get_ref())
    {
        if https.is_empty() {
            errs.at(
                r,
                "[listen] redirect_to_https is set but there is no https listener to send                  clients to; add https = [\"0.0.0.0:443\"]"
                    .into(),
            );
        }
    }

    // [[tls.certificate]]
    let tls_raw = raw.tls.unwrap_or_default();
    let mut tls = Vec::new();
    let mut first_default: Option<usize> = None;
    for c in &tls_raw.certificate {
        // A missing cert or key was reported as the file was read.
        let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
            continue;
        };
        let default = c.default.as_ref().is_some_and(|d| *d.get_ref());
        if let Some(d) = c.default.as_ref().filter(|d| *d.get_ref()) {
            match first_default {
                Some(line) => errs.at(
                    d,
                    format!(
                        "two [[tls.certificate]] entries are the default (the other on line \
                         {line}); mark only one"
                    ),
                ),
                None => first_default = Some(errs.location(&d.span()).0),
            }
        }
        errs.side_file(
            SideFileKind::Certificate {
                key: PathBuf::from(key.get_ref()),
            },
            cert,
        );
        tls.push(CertificateConfig {
            cert: PathBuf::from(cert.get_ref()),
            key: PathBuf::from(key.get_ref()),
            default,
        });
    }
    match (&listen_raw.https, tls_raw.certificate.is_empty()) {
        (Some(list), true) if !list.get_ref().is_empty() => errs.at(
            list,
            "[listen] https needs at least one certificate; add a [[tls.certificate]] with \
             cert = \"/etc/switchyard/tls/site.pem\" and key = \"/etc/switchyard/tls/site.key\""
                .into(),
        ),
        (_, false) if https.is_empty() && listen_raw.https.is_none() => errs.at_span(
            tls_raw.certificate[0].span.clone(),
            "[[tls.certificate]] is given but [listen] has no https listener to serve it \
                 on; add https = [\"0.0.0.0:443\"]"
                .into(),
        ),
        _ => {}
    }
    let trusted_proxies: Vec<ipnet::IpNet> = listen_raw
        .trusted_proxies
        .iter()
        .flat_map(|l| l.get_ref())
        .filter_map(|n| errs.network(n))
        .collect();
    let header_timeout = listen_raw
        .header_timeout
        .as_ref()
        .and_then(|d| errs.positive_duration(d, "listen header_timeout"))
        .unwrap_or(defaults::HEADER_TIMEOUT);

    // [admin]
    let admin_raw = raw.admin.unwrap_or_default();
    let admin_listen = admin_raw
        .listen
        .as_ref()
        .and_then(|a| errs.addr(a, "admin listen address"));
    if let (Some(l), None) = (&admin_raw.listen, &admin_raw.token_file) {
        errs.at(
            l,
            "[admin] listen is set but token_file is not; the TCP admin API needs a bearer token \
             (add token_file = \"/etc/switchyard/admin.token\")"
                .into(),
        );
    }
    let admin = AdminConfig {
        socket: admin_raw
            .socket
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(defaults::ADMIN_SOCKET)),
        listen: admin_listen,
        token_file: admin_raw
            .token_file
            .as_ref()
            .map(|f| PathBuf::from(f.get_ref())),
        socket_group: admin_raw.socket_group.as_ref().and_then(|g| {
            let name = g.get_ref().trim();
            match crate::httpd::group_id(name) {
                Some(gid) => Some(SocketGroup {
                    name: name.to_string(),
                    gid,
                }),
                None => {
                    errs.at(
                        g,
                        format!(
                            "[admin] socket_group: no group `{name}` in /etc/group; create it \
                             (`groupadd {name}`), name another group, or give a numeric gid"
                        ),
                    );
                    None
                }
            }
        }),
    };
    // The server reads the tokens only for the TCP listener; without one the file is not used.
    if let (Some(_), Some(f)) = (&admin.listen, &admin_raw.token_file) {
        errs.side_file(SideFileKind::AdminTokens, f);
    }

    // [metrics]
    let metrics = match raw.metrics {
        Some(m) => MetricsConfig {
            listen: m
                .listen
                .as_ref()
                .and_then(|a| errs.addr(a, "metrics listen address")),
        },
        None => MetricsConfig {
            listen: Some(defaults::METRICS_LISTEN.parse().expect("valid default")),
        },
    };

    // [state]
    let raw_state = raw.state.unwrap_or_default();
    let state = StateConfig {
        dir: raw_state
            .dir
            .clone()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
        backend: super::state_backend::state_backend(errs, raw_state),
    };

    // [pools.*]
    let mut pools = Vec::new();
    match &raw.pools {
        None => errs.general(
            "no [pools] section; define exactly two pools, e.g. [pools.blue] and [pools.green]"
                .into(),
        ),
        Some(map) => {
            if map.len() != POOL_COUNT {
                let names: Vec<&str> = map.keys().map(String::as_str).collect();
                errs.general(format!(
                    "exactly two pools are needed, found {} ({}); define e.g. [pools.blue] and [pools.green]",
                    map.len(),
                    names.join(", ")
                ));
            }
            // Every backend with the pool it is in, to find one listed in both pools.
            let mut everywhere: Vec<(SocketAddr, &str, &Spanned<String>)> = Vec::new();
            let mut everywhere_names: Vec<(DnsName, &str, &Spanned<String>)> = Vec::new();
            for (name, pool) in map {
                if !valid_pool_name(name) {
                    errs.at_span(
                        pool.span.clone(),
                        format!(
                            "pool name `{name}` is not valid: use a lowercase letter followed by up \
                             to 31 lowercase letters, digits or '-'"
                        ),
                    );
                }
                // A missing or mistyped list was reported as the file was read.
                let listed: &[Spanned<String>] =
                    pool.backends.as_ref().map_or(&[], |b| b.get_ref());
                if let Some(b) = pool.backends.as_ref().filter(|b| b.get_ref().is_empty()) {
                    errs.at(
                        b,
                        format!("pool `{name}` has no backends; list at least one IP:port"),
                    );
                }
                let mut backends: Vec<SocketAddr> = Vec::new();
                let mut names: Vec<DnsName> = Vec::new();
                for b in listed {
                    let text = b.get_ref();
                    match (text.parse::<SocketAddr>(), DnsName::parse(text)) {
                        (Ok(addr), _) => {
                            if backends.contains(&addr) {
                                errs.at(b, format!("pool `{name}` lists backend {addr} twice"));
                            } else {
                                backends.push(addr);
                                everywhere.push((addr, name, b));
                            }
                        }
                        (Err(_), Some(dns)) => {
                            if names.contains(&dns) {
                                errs.at(b, format!("pool `{name}` lists backend {dns} twice"));
                            } else if let Some((_, other, at)) =
                                everywhere_names.iter().find(|(n, _, _)| *n == dns)
                            {
                                let (line, _) = errs.location(&at.span());
                                errs.at(
                                    b,
                                    format!(
                                        "backend {dns} is in pool `{name}` and already in pool \
                                         `{other}` (line {line}); a backend belongs to one pool"
                                    ),
                                );
                            } else {
                                everywhere_names.push((dns.clone(), name, b));
                                names.push(dns);
                            }
                        }
                        (Err(_), None) => errs.at(
                            b,
                            format!(
                                "pool `{name}` backend `{text}` is neither an IP:port address nor \
                                 a host:port name; write e.g. 10.0.0.1:8000, [::1]:8000 or \
                                 app-green.internal:8000"
                            ),
                        ),
                    }
                }
                let protocol = match pool.protocol.as_ref() {
                    None => UpstreamProtocol::Http1,
                    Some(p) => match p.get_ref().as_str() {
                        "http1" => UpstreamProtocol::Http1,
                        "h2c" => UpstreamProtocol::H2c,
                        "h2" => UpstreamProtocol::H2,
                        other => {
                            errs.at(
                                p,
                                format!(
                                    "pool `{name}` protocol `{other}` is not one of \"http1\", \
                                     \"h2c\" (HTTP/2 over plain TCP), \"h2\" (HTTP/2 over TLS)"
                                ),
                            );
                            UpstreamProtocol::Http1
                        }
                    },
                };
                let tls = pool.tls.as_ref().is_some_and(|t| *t.get_ref());
                match (protocol, tls, pool.protocol.as_ref()) {
                    (UpstreamProtocol::H2, false, Some(p)) => errs.at(
                        p,
                        format!(
                            "pool `{name}` protocol \"h2\" is HTTP/2 over TLS: add tls = true, \
                             or use \"h2c\" for HTTP/2 over plain TCP"
                        ),
                    ),
                    (UpstreamProtocol::H2c, true, Some(p)) => errs.at(
                        p,
                        format!(
                            "pool `{name}` protocol \"h2c\" is HTTP/2 over plain TCP and \
                             cannot go with tls = true; use \"h2\" for HTTP/2 over TLS"
                        ),
                    ),
                    _ => {}
                }
                for (key, v) in [
                    ("sni", pool.sni.as_ref()),
                    ("ca_file", pool.ca_file.as_ref()),
                ] {
                    if let (Some(v), false) = (v, tls) {
                        errs.at(
                            v,
                            format!(
                                "pool `{name}` sets {key} but not tls = true; {key} is only \
                                 used for TLS to the backends"
                            ),
                        );
                    }
                }
                let sni = pool.sni.as_ref().and_then(|s| {
                    let text = s.get_ref().trim();
                    let ok = DnsName::parse(&format!("{text}:1")).is_some()
                        || text.parse::<std::net::IpAddr>().is_ok();
                    if !ok {
                        errs.at(
                            s,
                            format!("pool `{name}` sni `{text}` is not a host name or IP address"),
                        );
                    }
                    ok.then(|| text.to_ascii_lowercase())
                });
                if let Some(f) = &pool.ca_file {
                    errs.side_file(SideFileKind::CaFile, f);
                }
                pools.push(PoolConfig {
                    name: name.clone(),
                    backends,
                    names,
                    protocol,
                    tls,
                    sni,
                    ca_file: pool.ca_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
                });
            }
            // A backend in both colours would keep taking traffic after a flip away from it, and
            // its health and metrics could not be told apart. Reported where the file lists it
            // second.
            everywhere.sort_by_key(|(_, _, b)| b.span().start);
            for (i, (addr, name, b)) in everywhere.iter().enumerate() {
                if let Some((_, first, at)) = everywhere[..i]
                    .iter()
                    .find(|(a, other, _)| a == addr && other != name)
                {
                    let (line, _) = errs.location(&at.span());
                    errs.at(
                        b,
                        format!(
                            "backend {addr} is in pool `{name}` and already in pool `{first}` \
                             (line {line}); a backend belongs to one pool, or a flip would not \
                             move traffic off it"
                        ),
                    );
                }
            }
        }
    }

    // [health]
    let h = raw.health.unwrap_or_default();
    let health = HealthConfig {
        enabled: h.enabled.unwrap_or(true),
        path: h
            .path
            .as_ref()
            .map_or(defaults::HEALTH_PATH.to_string(), |p| {
                if !p.get_ref().starts_with('/') {
                    errs.at(
                        p,
                        format!("health path `{}` must start with '/'", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }),
        interval: h
            .interval
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "health interval"))
            .unwrap_or(defaults::HEALTH_INTERVAL),
        timeout: h
            .timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "health timeout"))
            .unwrap_or(defaults::HEALTH_TIMEOUT),
        rise: positive_u32(errs, h.rise.as_ref(), "health rise", defaults::HEALTH_RISE),
        fall: positive_u32(errs, h.fall.as_ref(), "health fall", defaults::HEALTH_FALL),
        min_healthy: h
            .min_healthy
            .as_ref()
            .map_or(defaults::MIN_HEALTHY, |m| *m.get_ref()),
    };
    if let Some(mh) = &h.min_healthy {
        // A pool with backend names has as many backends as its names resolve to: unknown here.
        let fixed = pools.iter().filter(|p| p.names.is_empty());
        if let Some(smallest) = fixed.map(|p| p.backends.len()).min() {
            if health.min_healthy > smallest && smallest > 0 {
                errs.at(
                    mh,
                    format!(
                        "health min_healthy = {} but a pool has only {smallest} backends, so it \
                         could never be ready; lower min_healthy or add backends",
                        health.min_healthy
                    ),
                );
            }
        }
    }

    // [routing]
    let r = raw.routing.unwrap_or_default();
    let initial_primary = match &r.initial_primary {
        Some(p) => match pools.iter().position(|pool| &pool.name == p.get_ref()) {
            Some(i) => i,
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                errs.at(
                    p,
                    format!(
                        "initial_primary `{}` is not a pool; choose one of: {}",
                        p.get_ref(),
                        names.join(", ")
                    ),
                );
                0
            }
        },
        None => 0,
    };
    let sticky = match &r.sticky {
        None => Sticky::Cookie,
        Some(s) => match s.get_ref().as_str() {
            "cookie" => Sticky::Cookie,
            "ip" => Sticky::Ip,
            "none" => Sticky::None,
            other => match other.strip_prefix("header:") {
                Some(h) => match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    Ok(name) => Sticky::Header(name),
                    Err(_) => {
                        errs.at(
                            s,
                            format!("sticky header name `{h}` is not a valid header name"),
                        );
                        Sticky::Cookie
                    }
                },
                None => {
                    errs.at(
                        s,
                        format!(
                            "sticky `{other}` is not one of \"cookie\", \"header:<name>\", \"ip\", \"none\""
                        ),
                    );
                    Sticky::Cookie
                }
            },
        },
    };
    let routing = RoutingConfig {
        initial_primary,
        sticky,
        response_header: r.response_header.unwrap_or(true),
        preview_token_file: r
            .preview_token_file
            .as_ref()
            .map(|f| PathBuf::from(f.get_ref())),
    };
    if let Some(f) = &r.preview_token_file {
        errs.side_file(SideFileKind::PreviewToken, f);
    }

    // [upstream]
    let u = raw.upstream.unwrap_or_default();
    let upstream = UpstreamConfig {
        connect_timeout: u
            .connect_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream connect_timeout"))
            .unwrap_or(defaults::CONNECT_TIMEOUT),
        read_timeout: u
            .read_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream read_timeout"))
            .unwrap_or(defaults::READ_TIMEOUT),
        write_timeout: u
            .write_timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "upstream write_timeout"))
            .unwrap_or(defaults::WRITE_TIMEOUT),
        idle_timeout: u
            .idle_timeout
            .as_ref()
            .and_then(|d| errs.duration(d, "upstream idle_timeout"))
            .unwrap_or(defaults::IDLE_TIMEOUT),
        idle_close: errs.one_of(
            u.idle_close.as_ref(),
            "[upstream] idle_close",
            &[
                ("on_reuse", IdleClose::OnReuse),
                ("on_timeout", IdleClose::OnTimeout),
            ],
        ),
    };

    // [guard]
    let g = raw.guard.unwrap_or_default();
    let max_error_ratio = match &g.max_error_ratio {
        Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
            errs.at(
                r,
                format!(
                    "guard max_error_ratio {} must be between 0 and 1 (0.05 means 5 %)",
                    r.get_ref()
                ),
            );
            defaults::MAX_ERROR_RATIO
        }
        Some(r) => *r.get_ref(),
        None => defaults::MAX_ERROR_RATIO,
    };
    let guard = GuardConfig {
        enabled: g.enabled.unwrap_or(true),
        window: g
            .window
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "guard window"))
            .unwrap_or(defaults::GUARD_WINDOW),
        min_requests: g.min_requests.unwrap_or(defaults::MIN_REQUESTS),
        max_error_ratio,
        max_p99: g
            .max_p99
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "guard max_p99")),
        watch_after_flip: g
            .watch_after_flip
            .as_ref()
            .and_then(|d| errs.duration(d, "guard watch_after_flip"))
            .unwrap_or(defaults::WATCH_AFTER_FLIP),
        min_duration: g
            .min_duration
            .as_ref()
            .and_then(|d| errs.duration(d, "guard min_duration"))
            .unwrap_or(defaults::GUARD_MIN_DURATION),
    };

    // [[notify.webhook]]
    let mut notify = Vec::new();
    for w in raw.notify.map(|n| n.webhook).unwrap_or_default() {
        // A missing url was reported as the file was read.
        let url = w
            .url
            .as_ref()
            .and_then(|url| match url.get_ref().parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http") | Some("https"))
                        && u.host().is_some() =>
                {
                    Some(u)
                }
                _ => {
                    errs.at(
                        url,
                        format!(
                            "webhook url `{}` is not an http:// or https:// URL",
                            url.get_ref()
                        ),
                    );
                    None
                }
            });
        let format = match w.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("slack") => WebhookFormat::Slack,
            Some("json") => WebhookFormat::Json,
            Some(other) => {
                if let Some(f) = &w.format {
                    errs.at(
                        f,
                        format!("webhook format `{other}` is not \"slack\" or \"json\""),
                    );
                }
                WebhookFormat::Slack
            }
        };
        let events: Vec<String> = match &w.events {
            None => EVENT_KINDS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                for e in list.get_ref() {
                    if !EVENT_KINDS.contains(&e.get_ref().as_str()) {
                        errs.at(
                            e,
                            format!(
                                "webhook event `{}` is not one of: {}",
                                e.get_ref(),
                                EVENT_KINDS.join(", ")
                            ),
                        );
                    }
                }
                list.get_ref().iter().map(|e| e.get_ref().clone()).collect()
            }
        };
        let timeout = w
            .timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "webhook timeout"))
            .unwrap_or(defaults::WEBHOOK_TIMEOUT);
        if let Some(url) = url {
            notify.push(WebhookConfig {
                url,
                format,
                events,
                timeout,
            });
        }
    }

    // [shutdown], [server], [log]
    let shutdown = ShutdownConfig {
        grace_period: raw
            .shutdown
            .and_then(|s| s.grace_period)
            .as_ref()
            .and_then(|d| errs.duration(d, "shutdown grace_period"))
            .unwrap_or(defaults::GRACE_PERIOD),
    };
    let server_raw = raw.server.unwrap_or_default();
    let threads = server_raw.threads.unwrap_or(0);
    let header_case = errs.one_of(
        server_raw.header_case.as_ref(),
        "[server] header_case",
        &[
            ("canonical", HeaderCase::Canonical),
            ("preserve", HeaderCase::Preserve),
        ],
    );
    let server = ServerConfig {
        threads: if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        },
        header_case,
    };
    let log_raw = raw.log.unwrap_or_default();
    let log = LogConfig {
        access: log_raw.access.unwrap_or(false),
        format: errs.one_of(
            log_raw.format.as_ref(),
            "[log] format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        ),
        timestamps: log_raw.timestamps.unwrap_or(true),
    };
    let d = raw.dns.unwrap_or_default();
    let dns = DnsConfig {
        servers: d.servers.as_ref().map_or_else(Vec::new, |list| {
            list.get_ref()
                .iter()
                .filter_map(|s| errs.addr(s, "[dns] servers entry"))
                .collect()
        }),
        refresh: d
            .refresh
            .as_ref()
            .and_then(|r| errs.positive_duration(r, "dns refresh"))
            .unwrap_or(defaults::DNS_REFRESH),
    };

    // [chatops]
    let chatops = raw.chatops.and_then(|c| {
        if let Some(f) = &c.signing_secret_file {
            errs.side_file(SideFileKind::ChatSecret, f);
        }
        let users: std::collections::BTreeMap<String, String> = c
            .users
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, name)| {
                let n = name.get_ref().trim().to_string();
                if n.is_empty() || n.chars().any(char::is_control) {
                    errs.at(
                        &name,
                        format!("[chatops.users] {id}: the name must be non-empty text"),
                    );
                    return None;
                }
                Some((id, n))
            })
            .collect();
        Some(ChatopsConfig {
            listen: c
                .listen
                .as_ref()
                .and_then(|a| errs.addr(a, "chatops listen address"))?,
            signing_secret_file: PathBuf::from(c.signing_secret_file?.into_inner()),
            users,
        })
    });
    let (faults, shadow) = super::rehearse::validate(raw.faults, raw.shadow, errs);

    // Every listener needs its own port: a shared one would let a start-up check pass against
    // the wrong service.
    let mut taken: Vec<(SocketAddr, &str)> = listen.iter().map(|a| (*a, "[listen] http")).collect();
    taken.extend(https.iter().map(|a| (*a, "[listen] https")));
    taken.extend(admin.listen.map(|a| (a, "[admin] listen")));
    taken.extend(metrics.listen.map(|a| (a, "[metrics] listen")));
    taken.extend(chatops.as_ref().map(|c| (c.listen, "[chatops] listen")));
    for (i, (a, what)) in taken.iter().enumerate() {
        for (b, other) in &taken[..i] {
            let overlap = a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
            if overlap && what != other {
                errs.general(format!(
                    "{what} {a} and {other} {b} use the same port; give each listener its own"
                ));
            }
        }
    }

    if !errs.list.is_empty() {
        return None;
    }
    let pools: [PoolConfig; POOL_COUNT] = match pools.try_into() {
        Ok(p) => p,
        Err(_) => unreachable!("pool count was checked above"),
    };
    Some(Config {
        listen,
        https,
        h2c,
        redirect_to_https,
        tls,
        trusted_proxies,
        header_timeout,
        admin,
        metrics,
        state,
        pools,
        health,
        routing,
        upstream,
        guard,
        notify,
        shutdown,
        server,
        log,
        dns,
        chatops,
        faults,
        shadow,
    })
}

fn positive_u32(errs: &mut Errors<'_>, v: Option<&Spanned<u32>>, what: &str, default: u32) -> u32 {
    match v {
        Some(n) if *n.get_ref() == 0 => {
            errs.at(n, format!("{what} must be at least 1"));
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    }
}
