//! The checks on `[state]`'s backend: the local files, or etcd for a fleet (`crate::store`).
//! Kept apart from `validate` so that file stays about routing and serving.

use std::time::Duration;

use toml::Spanned;

use super::validate::Errors;
use super::*;

/// `[state] backend` and, for etcd, where it is and who this instance is.
pub(super) fn state_backend(errs: &mut Errors<'_>, raw: raw::State) -> StateBackend {
    let etcd_keys = [
        ("endpoints", raw.endpoints.as_ref().map(|e| e.span())),
        ("fleet", raw.fleet.as_ref().map(|e| e.span())),
        ("instance", raw.instance.as_ref().map(|e| e.span())),
        ("lease_ttl", raw.lease_ttl.as_ref().map(|e| e.span())),
        ("timeout", raw.timeout.as_ref().map(|e| e.span())),
        ("user", raw.user.as_ref().map(|e| e.span())),
        (
            "password_file",
            raw.password_file.as_ref().map(|e| e.span()),
        ),
        ("ca_file", raw.ca_file.as_ref().map(|e| e.span())),
        ("cert_file", raw.cert_file.as_ref().map(|e| e.span())),
        ("key_file", raw.key_file.as_ref().map(|e| e.span())),
    ];
    match raw.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("file") => {
            for (key, span) in etcd_keys {
                if let Some(span) = span {
                    errs.at_span(
                        Some(span),
                        format!(
                            "[state] {key} is an etcd setting, but the state backend is the \
                             file; add backend = \"etcd\" or remove {key}"
                        ),
                    );
                }
            }
            return StateBackend::File;
        }
        Some("etcd") => {}
        Some(other) => {
            let b = raw.backend.as_ref().expect("matched");
            errs.at(
                b,
                format!("[state] backend `{other}` is not known; write \"file\" or \"etcd\""),
            );
            return StateBackend::File;
        }
    }
    let backend = raw.backend.as_ref().expect("etcd");
    let mut endpoints = Vec::new();
    match &raw.endpoints {
        None => errs.at(
            backend,
            "[state] backend = \"etcd\" needs endpoints, e.g. endpoints = \
             [\"http://127.0.0.1:2379\"]"
                .into(),
        ),
        Some(list) => {
            for e in list.get_ref() {
                let url = e.get_ref().trim_end_matches('/');
                if url.starts_with("http://") || url.starts_with("https://") {
                    endpoints.push(url.to_string());
                } else {
                    errs.at(
                        e,
                        format!(
                            "[state] endpoint `{}` is not an http:// or https:// URL; write e.g. \
                             \"http://10.0.0.1:2379\"",
                            e.get_ref()
                        ),
                    );
                }
            }
            if list.get_ref().is_empty() {
                errs.at(
                    list,
                    "[state] endpoints is empty; name at least one etcd".into(),
                );
            }
        }
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let fleet = match &raw.fleet {
        Some(f) if name_ok(f.get_ref()) => f.get_ref().clone(),
        Some(f) => {
            errs.at(
                f,
                format!(
                    "[state] fleet `{}` must be letters, digits, `-`, `_` or `.` (it is part of \
                     the etcd keys)",
                    f.get_ref()
                ),
            );
            String::new()
        }
        None => {
            errs.at(
                backend,
                "[state] backend = \"etcd\" needs a fleet name, e.g. fleet = \"prod\" (every \
                 instance of one fleet uses the same name)"
                    .into(),
            );
            String::new()
        }
    };
    let instance = match &raw.instance {
        Some(i) if name_ok(i.get_ref()) => i.get_ref().clone(),
        Some(i) => {
            errs.at(
                i,
                format!(
                    "[state] instance `{}` must be letters, digits, `-`, `_` or `.`",
                    i.get_ref()
                ),
            );
            String::new()
        }
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    let lease_ttl = match &raw.lease_ttl {
        None => defaults::LEASE_TTL,
        Some(t) => match errs.positive_duration(t, "[state] lease_ttl") {
            Some(d) if d < Duration::from_secs(2) => {
                errs.at(
                    t,
                    "[state] lease_ttl must be at least 2s (etcd leases count in seconds)".into(),
                );
                d
            }
            Some(d) => d,
            None => defaults::LEASE_TTL,
        },
    };
    let timeout = raw
        .timeout
        .as_ref()
        .and_then(|t| errs.positive_duration(t, "[state] timeout"))
        .unwrap_or(defaults::ETCD_TIMEOUT);
    if let (Some(p), None) = (&raw.password_file, &raw.user) {
        errs.at(p, "[state] password_file needs a user".into());
    }
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        let (given, missing) = if raw.cert_file.is_some() {
            (raw.cert_file.as_ref(), "key_file")
        } else {
            (raw.key_file.as_ref(), "cert_file")
        };
        errs.at(
            given.expect("one is set"),
            format!(
                "[state] a client certificate needs both cert_file and key_file; add {missing}"
            ),
        );
    }
    let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| PathBuf::from(p.get_ref()));
    StateBackend::Etcd(Box::new(EtcdConfig {
        endpoints,
        fleet,
        instance,
        lease_ttl,
        timeout,
        user: raw.user.as_ref().map(|u| u.get_ref().clone()),
        password_file: path(&raw.password_file),
        ca_file: path(&raw.ca_file),
        cert_file: path(&raw.cert_file),
        key_file: path(&raw.key_file),
    }))
}
