//! What the request path reads from the configuration besides the pools.
//!
//! These settings are part of each [`RoutingTable`](crate::routing::RoutingTable), not fields of
//! the proxy: a reload swaps them in the same atomic store as the pools' membership, and a request
//! keeps the table it loaded for its whole life, so it sees the old configuration or the new one,
//! never a mix, and the request path takes no lock to read them.

use crate::config::{Config, Sticky, UpstreamConfig, POOL_COUNT};
use crate::preview::PreviewKey;
use crate::tls::upstream::Transport;

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
    /// How each pool's backends are spoken to (protocol, TLS), in pool order.
    pub transports: [Transport; POOL_COUNT],
    /// `[listen] redirect_to_https`: the port of the first https listener, which plain
    /// requests are redirected to.
    pub redirect_https_port: Option<u16>,
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
            transports: std::array::from_fn(|i| Transport::from_config(&config.pools[i])),
            redirect_https_port: config
                .redirect_to_https
                .then(|| config.https.first().map(|a| a.port()))
                .flatten(),
        }
    }
}
