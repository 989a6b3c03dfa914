//! How switchyard talks to one pool's backends: HTTP/1.1, h2c or h2, with or without TLS, and
//! against which CAs a backend's certificate is verified.
//!
//! Built from the configuration when the pools are (start, reload) and kept in the request
//! settings, so a request reads it with the routing table it loaded and the CA file is read once,
//! not per connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{PoolConfig, UpstreamProtocol};

/// Most h2 streams switchyard opens on one upstream connection. pingora's default is 1, which
/// would open an h2 connection per concurrent request and undo the point of h2; 100 is the
/// usual server limit (`SETTINGS_MAX_CONCURRENT_STREAMS`), and pingora opens another
/// connection when a backend allows fewer.
pub const MAX_H2_STREAMS: usize = 100;

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)", path.display())]
    Empty { path: PathBuf },
    #[error("{} is not valid PEM, or a certificate in it does not parse: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
}

/// The CAs of a `ca_file`, as pingora takes them.
pub type CaList = Arc<CaType>;

/// Reads a PEM bundle of CA certificates; every one must parse.
pub fn load_ca(path: &Path) -> Result<CaList, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let ders = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if ders.is_empty() {
        return Err(CaError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut list = Vec::with_capacity(ders.len());
    for der in ders {
        // Parsed here first: pingora's wrapper panics on a certificate that does not parse.
        X509Certificate::from_der(&der).map_err(|e| CaError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        list.push(WrappedX509::new(der.to_vec(), |raw: &Vec<u8>| {
            X509Certificate::from_der(raw).expect("parsed just above").1
        }));
    }
    Ok(Arc::from(list.into_boxed_slice()))
}

/// One pool's transport to its backends.
#[derive(Debug, Clone)]
pub struct Transport {
    pub protocol: UpstreamProtocol,
    pub tls: bool,
    /// The name sent as SNI and verified; `None`: each backend's IP address.
    pub sni: Option<String>,
    pub ca: Option<CaList>,
    /// The `ca_file` it came from, to compare configurations.
    pub ca_file: Option<PathBuf>,
    /// The health checker's TLS client (same roots, ALPN by protocol), built once.
    health_tls: Option<Arc<rustls::ClientConfig>>,
}

impl PartialEq for Transport {
    fn eq(&self, other: &Transport) -> bool {
        self.protocol == other.protocol
            && self.tls == other.tls
            && self.sni == other.sni
            && self.ca_file == other.ca_file
    }
}

impl Transport {
    /// Plain HTTP/1.1: the transport of a pool that says nothing else.
    pub fn http1() -> Transport {
        Transport {
            protocol: UpstreamProtocol::Http1,
            tls: false,
            sni: None,
            ca: None,
            ca_file: None,
            health_tls: None,
        }
    }

    /// The TLS client the health checker uses for this pool (`None`: plain TCP).
    pub fn health_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.health_tls.clone()
    }

    /// The transport `pool` asks for, reading its `ca_file`.
    ///
    /// The file was checked with the configuration ([`crate::config::Config::load`], at start
    /// and at every reload); should it have become unreadable since, this fails closed: the
    /// pool verifies against no CA at all (every TLS connection to it fails, and says why in
    /// the log) rather than against the system roots.
    pub fn from_config(pool: &PoolConfig) -> Transport {
        let ca = pool.ca_file.as_deref().map(|path| {
            load_ca(path).unwrap_or_else(|e| {
                tracing::error!(pool = %pool.name, "{e}; TLS to this pool will fail");
                Arc::from(Vec::new().into_boxed_slice())
            })
        });
        // A pool of backend names is verified against its (first) name; one of addresses
        // against each address (an IP subject alternative name).
        let sni = pool
            .sni
            .clone()
            .or_else(|| pool.names.first().map(|n| n.host.clone()));
        let health_tls = pool
            .tls
            .then(|| health_client(pool.protocol, ca.as_deref()));
        Transport {
            protocol: pool.protocol,
            tls: pool.tls,
            sni,
            ca,
            ca_file: pool.ca_file.clone(),
            health_tls,
        }
    }

    /// The server name for a backend at `addr`.
    pub fn server_name(&self, addr: SocketAddr) -> String {
        self.sni.clone().unwrap_or_else(|| addr.ip().to_string())
    }

    /// A pingora peer for the backend at `addr`, with this transport.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let sni = if self.tls {
            self.server_name(addr)
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        let opts = &mut peer.options;
        match self.protocol {
            UpstreamProtocol::Http1 => opts.set_http_version(1, 1),
            // Prior knowledge over plain TCP, ALPN `h2` only over TLS: a backend that is
            // declared h2 and answers otherwise is an error, not a silent downgrade.
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                opts.set_http_version(2, 2);
                opts.max_h2_streams = MAX_H2_STREAMS;
            }
        }
        if self.tls {
            opts.verify_cert = true;
            opts.verify_hostname = true;
            opts.ca = self.ca.clone();
        }
        peer
    }
}

/// A rustls client verifying against `ca` (else the system roots, as pingora's connector does),
/// offering the ALPN protocol `protocol` speaks.
fn health_client(protocol: UpstreamProtocol, ca: Option<&CaType>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(list) => {
            for c in list {
                let _ = roots.add(CertificateDer::from(c));
            }
        }
        None => {
            if let Ok(native) = pingora::tls::load_native_certs() {
                roots.add_parsable_certificates(native);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => vec![b"h2".to_vec()],
    };
    Arc::new(config)
}
