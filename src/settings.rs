//! What the request path reads from the configuration besides the pools.
//!
//! These settings are part of each [`RoutingTable`](crate::routing::RoutingTable), not fields of
//! the proxy: a reload swaps them in the same atomic store as the pools' membership, and a request
//! keeps the table it loaded for its whole life, so it sees the old configuration or the new one,
//! never a mix, and the request path takes no lock to read them.

use crate::config::{Config, Sticky, UpstreamConfig};
use crate::preview::PreviewKey;

/// The request path's view of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// `routing.response_header`: add `x-switchyard-pool` to responses.
    pub response_header: bool,
    /// `log.access`: one line per request.
    pub access_log: bool,
    pub upstream: UpstreamConfig,
    pub sticky: Sticky,
    /// The preview secret, when `routing.preview_token_file` is set.
    pub preview: Option<PreviewKey>,
    /// `[listen] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ProxySettings {
    /// Settings from `config`; `preview` is the loaded preview token, if configured.
    pub fn from_config(config: &Config, preview: Option<PreviewKey>) -> ProxySettings {
        ProxySettings {
            response_header: config.routing.response_header,
            access_log: config.log.access,
            upstream: config.upstream.clone(),
            sticky: config.routing.sticky.clone(),
            preview,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }
}
