//! TLS at the edge: the certificates served on the `[listen] https` listeners, chosen by SNI,
//! and swapped by a reload for the handshakes that follow.
//!
//! Certificates are read and checked here ([`cert`]) at `check`, at start and at reload, so a bad
//! file is a located configuration error and never pingora's panic in the service task. pingora
//! gets a [`Resolver`] instead of file paths: one object for the life of the listener, whose
//! content is an immutable [`Certificates`] behind an `ArcSwap`. A reload builds a new set and
//! stores it; a handshake loads whichever set is in force when its ClientHello arrives, and a
//! connection already open keeps the certificate it was served.
//!
//! Protocols: TLS 1.2 and 1.3 with rustls's ring suites, which are all AEAD with forward secrecy
//! (TLS 1.3: AES-128/256-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE with the same), i.e. Mozilla's
//! "intermediate" list; ALPN offers `h2` then `http/1.1`.

pub mod cert;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertificateConfig;
pub use cert::{CertError, Loaded};

/// The certificates in force: every entry, and the name lookups over them.
#[derive(Debug, Default)]
pub struct Certificates {
    pub entries: Vec<Loaded>,
    /// Exact host name → entry.
    exact: HashMap<String, usize>,
    /// `*.example.com` → entry, keyed by `example.com`.
    wildcard: HashMap<String, usize>,
    /// Served when no name matches, or the client sent no SNI.
    default: usize,
}

impl Certificates {
    /// Reads and checks every entry of `[[tls.certificate]]` as of `now`. A name in two entries
    /// goes to the first.
    pub fn load(config: &[CertificateConfig], now: SystemTime) -> Result<Certificates, CertError> {
        let entries = config
            .iter()
            .map(|c| cert::load(&c.cert, &c.key, now))
            .collect::<Result<Vec<_>, _>>()?;
        let default = config.iter().position(|c| c.default).unwrap_or(0);
        Ok(Certificates::from_entries(entries, default))
    }

    fn from_entries(entries: Vec<Loaded>, default: usize) -> Certificates {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for name in &e.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Certificates {
            entries,
            exact,
            wildcard,
            default,
        }
    }

    /// The entry for a ClientHello naming `server_name`: an exact name, else a wildcard for its
    /// parent (`*.example.com` covers `a.example.com`, not `a.b.example.com`), else the default.
    pub fn choose(&self, server_name: Option<&str>) -> Option<&Loaded> {
        let idx = server_name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|n| {
                self.exact.get(&n).copied().or_else(|| {
                    n.split_once('.')
                        .and_then(|(_, parent)| self.wildcard.get(parent).copied())
                })
            })
            .unwrap_or(self.default);
        self.entries.get(idx)
    }

    /// Expiry warnings for every entry within [`cert::EXPIRY_WARNING`] of its end.
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| e.expiry_warning(now))
            .collect()
    }

    /// One fingerprint per entry, in order: equal iff the same files with the same content.
    pub fn fingerprints(&self) -> Vec<[u8; 32]> {
        self.entries.iter().map(|e| e.fingerprint).collect()
    }
}

/// The certificates in force, shared by every TLS listener, the reload and the metrics.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<Certificates>,
}

impl CertStore {
    pub fn new(certs: Certificates) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(certs),
        })
    }

    /// The set in force.
    pub fn load(&self) -> Arc<Certificates> {
        self.current.load_full()
    }

    /// Serves `certs` to every handshake from now on; open connections are not touched.
    pub fn store(&self, certs: Certificates) {
        self.current.store(Arc::new(certs));
    }

    /// pingora's TLS settings for one `[listen] https` address: this store as the certificate
    /// resolver, ALPN `h2` and `http/1.1`; `on_failure` is told the [`failure_reason`] of every
    /// handshake that fails.
    pub fn listener_settings(
        self: &Arc<Self>,
        on_failure: Arc<dyn Fn(&'static str) + Send + Sync>,
    ) -> TlsSettings {
        // The paths are not used once a resolver is set (and nothing is read from them).
        let mut settings = TlsSettings::intermediate("", "").expect("no files are read here");
        settings.set_cert_resolver(Arc::new(Resolver(self.clone())));
        settings.enable_h2();
        settings.set_handshake_error_callback(Arc::new(move |e: &pingora::Error| {
            on_failure(failure_reason(e))
        }));
        settings
    }
}

/// Why a client's TLS handshake failed, as a metric label (a closed set):
/// - `not_tls`: what arrived is not a TLS ClientHello (plain HTTP on the https port, a scanner);
/// - `incompatible`: no TLS version, cipher suite or signature scheme in common (an old client);
/// - `no_alpn`: the client insists on an application protocol other than h2 or http/1.1;
/// - `certificate_rejected`: the client refused the certificate (unknown CA, wrong name,
///   expired), by an alert;
/// - `alert`: any other alert from the client;
/// - `closed`: the client went away mid-handshake;
/// - `other`: anything else.
///
/// pingora keeps only the text of the rustls error (its context string), not the error itself,
/// so the reason is read from rustls's wording (its `Display`; the unit test below builds each
/// case from rustls's own errors, so a change of wording fails it).
pub fn failure_reason(e: &pingora::Error) -> &'static str {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    if has("received corrupt message")
        || has("received unexpected message")
        || has("received unexpected handshake message")
    {
        "not_tls"
    } else if has("peer is incompatible") {
        "incompatible"
    } else if has("peer doesn't support any known protocol") {
        "no_alpn"
    } else if let Some(alert) = text.split("received fatal alert: ").nth(1) {
        const REJECTED: &[&str] = &[
            "BadCertificate",
            "UnknownCA",
            "CertificateUnknown",
            "CertificateExpired",
            "UnsupportedCertificate",
            "CertificateRevoked",
            "AccessDenied",
        ];
        if REJECTED.iter().any(|r| alert.starts_with(r)) {
            "certificate_rejected"
        } else {
            "alert"
        }
    } else if has("eof") || has("reset by peer") || has("Broken pipe") {
        "closed"
    } else {
        "other"
    }
}

/// The reasons [`failure_reason`] gives, for metrics resolved up front.
pub const FAILURE_REASONS: &[&str] = &[
    "not_tls",
    "incompatible",
    "no_alpn",
    "certificate_rejected",
    "alert",
    "closed",
    "other",
];

/// What rustls asks for a certificate on each handshake.
#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.0.current.load();
        certs.choose(hello.server_name()).map(|e| e.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> Loaded {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        cert::load(&c, &k, SystemTime::now()).unwrap()
    }

    #[test]
    fn handshake_failures_are_sorted_by_reason() {
        use rustls::{AlertDescription as A, Error as E};
        // As pingora reports them: the io error's text in the context of its own error.
        let reason = |cause: &dyn std::fmt::Display| {
            let e = pingora::Error::explain(
                pingora::ErrorType::TLSHandshakeFailure,
                format!("tls connect error: {cause}"),
            );
            failure_reason(&e)
        };
        let io = |e: E| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            reason(&io(E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            "not_tls"
        );
        assert_eq!(
            reason(&io(E::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))),
            "incompatible"
        );
        assert_eq!(reason(&io(E::NoApplicationProtocol)), "no_alpn");
        for a in [A::UnknownCA, A::BadCertificate, A::CertificateExpired] {
            assert_eq!(reason(&io(E::AlertReceived(a))), "certificate_rejected");
        }
        assert_eq!(reason(&io(E::AlertReceived(A::HandshakeFailure))), "alert");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(reason(&eof), "closed");
        assert_eq!(reason(&"something else"), "other");
        for r in [
            "not_tls",
            "incompatible",
            "no_alpn",
            "certificate_rejected",
            "alert",
            "closed",
            "other",
        ] {
            assert!(FAILURE_REASONS.contains(&r));
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let certs = Certificates::from_entries(
            vec![
                entry(&["shop.example"]),
                entry(&["*.api.example", "api.example"]),
                entry(&["admin.api.example"]),
            ],
            0,
        );
        let pick = |n: Option<&str>| certs.choose(n).unwrap().name().to_string();
        assert_eq!(pick(Some("shop.example")), "shop.example");
        assert_eq!(pick(Some("SHOP.example.")), "shop.example");
        assert_eq!(pick(Some("api.example")), "*.api.example");
        assert_eq!(pick(Some("v1.api.example")), "*.api.example");
        assert_eq!(pick(Some("admin.api.example")), "admin.api.example");
        // A wildcard covers one label only.
        assert_eq!(pick(Some("a.v1.api.example")), "shop.example");
        assert_eq!(pick(Some("other.example")), "shop.example");
        assert_eq!(pick(None), "shop.example");
        let with_default = Certificates::from_entries(certs.entries, 2);
        assert_eq!(
            with_default.choose(None).unwrap().name(),
            "admin.api.example"
        );
    }
}
