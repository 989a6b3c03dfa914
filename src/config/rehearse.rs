//! The checks on `[faults]` and `[shadow]`: how failure is rehearsed (see `crate::faults` and
//! `crate::shadow`). Kept apart from `validate` so that file stays about routing and serving.

use toml::Spanned;

use super::raw;
use super::validate::Errors;
use super::{defaults, CompareBody, FaultsConfig, ShadowConfig, MAX_DURATION};

/// Methods `[shadow] methods` defaults to: they change nothing, so a copy is harmless.
const SAFE_METHODS: [http::Method; 2] = [http::Method::GET, http::Method::HEAD];

/// Bounds on the shadow queue and concurrency: a copy is a luxury, never a memory risk.
const MAX_SHADOW_QUEUE: usize = 100_000;
const MAX_SHADOW_CONCURRENCY: usize = 1_024;
/// Largest `max_body`: 16 MiB (held twice per copy, times the queue).
const MAX_SHADOW_BODY: usize = 16 * 1024 * 1024;
/// Most route patterns: the report keeps a table per route.
const MAX_ROUTES: usize = 64;

pub(super) fn validate(
    faults: Option<raw::Faults>,
    shadow: Option<raw::Shadow>,
    errs: &mut Errors<'_>,
) -> (FaultsConfig, ShadowConfig) {
    let f = faults.unwrap_or_default();
    let faults = FaultsConfig {
        max_duration: f
            .max_duration
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "faults max_duration"))
            .unwrap_or(defaults::FAULTS_MAX_DURATION),
    };

    let s = shadow.unwrap_or_default();
    let mut bounded = |v: Option<&Spanned<usize>>, what: &str, max: usize, default: usize| match v {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > max => {
            errs.at(n, format!("{what} must be between 1 and {max}"));
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    };
    let queue = bounded(
        s.queue.as_ref(),
        "shadow queue",
        MAX_SHADOW_QUEUE,
        defaults::SHADOW_QUEUE,
    );
    let concurrency = bounded(
        s.concurrency.as_ref(),
        "shadow concurrency",
        MAX_SHADOW_CONCURRENCY,
        defaults::SHADOW_CONCURRENCY,
    );
    let max_body = bounded(
        s.max_body.as_ref(),
        "shadow max_body",
        MAX_SHADOW_BODY,
        defaults::SHADOW_MAX_BODY,
    );
    let methods = match &s.methods {
        None => SAFE_METHODS.to_vec(),
        Some(list) => {
            if list.get_ref().is_empty() {
                errs.at(
                    list,
                    "shadow methods is empty; list at least one, e.g. [\"GET\", \"HEAD\"]".into(),
                );
            }
            list.get_ref()
                .iter()
                .filter_map(|m| {
                    let upper = m.get_ref().to_ascii_uppercase();
                    match http::Method::from_bytes(upper.as_bytes()) {
                        Ok(method) if upper.bytes().all(|b| b.is_ascii_uppercase()) => Some(method),
                        _ => {
                            errs.at(
                                m,
                                format!(
                                    "shadow method `{}` is not an HTTP method such as \"GET\"",
                                    m.get_ref()
                                ),
                            );
                            None
                        }
                    }
                })
                .collect()
        }
    };
    let compare_body = match &s.compare_body {
        None => CompareBody::None,
        Some(c) => match c.get_ref().as_str() {
            "none" => CompareBody::None,
            "exact" => CompareBody::Exact,
            "json" => CompareBody::Json,
            other => {
                errs.at(
                    c,
                    format!("shadow compare_body `{other}` is not \"none\", \"exact\" or \"json\""),
                );
                CompareBody::None
            }
        },
    };
    let ignore_fields: Vec<String> = s.ignore_fields.as_ref().map_or_else(Vec::new, |l| {
        l.get_ref().iter().map(|f| f.get_ref().clone()).collect()
    });
    if let Some(l) = &s.ignore_fields {
        if !ignore_fields.is_empty() && compare_body != CompareBody::Json {
            errs.at(
                l,
                "shadow ignore_fields only applies with compare_body = \"json\"; set it, or \
                 remove ignore_fields"
                    .into(),
            );
        }
    }
    let mut routes = Vec::new();
    if let Some(list) = &s.routes {
        if list.get_ref().len() > MAX_ROUTES {
            errs.at(
                list,
                format!("shadow routes lists more than {MAX_ROUTES} patterns; group them"),
            );
        }
        for r in list.get_ref() {
            let p = r.get_ref();
            let ok = p.starts_with('/')
                && !p.contains(['?', '#', ' '])
                && p.split('/').enumerate().all(|(i, seg)| {
                    !seg.contains('*')
                        || seg == "*"
                        || (seg == "**" && i == p.split('/').count() - 1)
                });
            if ok {
                routes.push(p.clone());
            } else {
                errs.at(
                    r,
                    format!(
                        "shadow route `{p}` is not a path pattern: start with `/`, use `*` for \
                         one whole segment and `**` only at the end, e.g. \"/api/users/*\""
                    ),
                );
            }
        }
    }
    let max_mismatch_ratio = match &s.max_mismatch_ratio {
        Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
            errs.at(
                r,
                format!(
                    "shadow max_mismatch_ratio {} must be between 0 and 1 (0.01 means 1 %)",
                    r.get_ref()
                ),
            );
            None
        }
        Some(r) => Some(*r.get_ref()),
        None => None,
    };
    let shadow = ShadowConfig {
        queue,
        concurrency,
        max_body,
        methods,
        timeout: s
            .timeout
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "shadow timeout"))
            .unwrap_or(defaults::SHADOW_TIMEOUT),
        max_duration: s
            .max_duration
            .as_ref()
            .and_then(|d| errs.positive_duration(d, "shadow max_duration"))
            .unwrap_or(defaults::SHADOW_MAX_DURATION)
            .min(MAX_DURATION),
        compare_body,
        ignore_fields,
        routes,
        max_mismatch_ratio,
        min_compared: s.min_compared.unwrap_or(defaults::SHADOW_MIN_COMPARED),
    };
    (faults, shadow)
}
