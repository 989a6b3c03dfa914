//! One certificate entry (`[[tls.certificate]]`): a PEM chain and its key, read and checked by
//! switchyard itself before anything of it reaches rustls or pingora.
//!
//! pingora's own loader panics on a file it cannot use, inside the service task, which leaves a
//! process running without its listener (pingora#667). Here every problem is an error that says
//! which file and what to do: the files are read, every certificate of the chain parses (leaf
//! first, each issued by the next), the key parses and is the leaf's, and the leaf is valid now.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate this close to its end gets a warning at `check`, start and reload (Let's
/// Encrypt renews at 30 days left; 14 leaves two weeks to notice a renewal that failed).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why a certificate entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block, leaf first)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("certificate {} of {} does not parse: {reason}", index + 1, path.display())]
    Parse {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error(
        "the chain in {} is out of order: certificate {} is not issued by certificate {}; put \
         the leaf first, then each issuer",
        path.display(), index + 1, index + 2
    )]
    Order { path: PathBuf, index: usize },
    #[error(
        "{} holds no private key (expected a -----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY \
         block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the key in {} cannot be used: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the key in {} does not belong to the certificate in {}; give the key the \
         certificate was issued for",
        key.display(), cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} expired on {not_after}; renew it", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("the certificate in {} is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error(
        "the certificate in {} names no host (no DNS subject alternative name or common name)",
        path.display()
    )]
    NoNames { path: PathBuf },
}

/// A usable certificate entry.
#[derive(Debug)]
pub struct Loaded {
    pub cert_path: PathBuf,
    /// The host names the leaf is for, lowercase (`*.example.com` for a wildcard); the DNS
    /// subject alternative names, or the common name when it has none.
    pub names: Vec<String>,
    /// The leaf's end of validity.
    pub not_after: SystemTime,
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the chain and key, to tell a renewed file from the same one.
    pub fingerprint: [u8; 32],
}

impl Loaded {
    /// The name the entry is known by in metrics and messages: its first host name.
    pub fn name(&self) -> &str {
        &self.names[0]
    }

    /// Time left until the leaf expires (zero once it has).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// A warning when the leaf expires within [`EXPIRY_WARNING`].
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let left = self.remaining(now);
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "the certificate for {} in {} expires in {} days ({}); renew it",
                self.name(),
                self.cert_path.display(),
                left.as_secs() / 86_400,
                humantime::format_rfc3339_seconds(self.not_after)
            )
        })
    }
}

/// Reads and checks the chain at `cert` and the key at `key`, as of `now`.
pub fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<Loaded, CertError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let mut parsed = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        let (_, x509) = X509Certificate::from_der(der).map_err(|e| CertError::Parse {
            path: cert.to_path_buf(),
            index,
            reason: e.to_string(),
        })?;
        parsed.push(x509);
    }
    for (index, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(CertError::Order {
                path: cert.to_path_buf(),
                index,
            });
        }
    }
    let leaf = &parsed[0];
    let names = host_names(leaf);
    if names.is_empty() {
        return Err(CertError::NoNames {
            path: cert.to_path_buf(),
        });
    }
    let validity = leaf.validity();
    let unix = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let not_before = unix(validity.not_before.timestamp());
    let not_after = unix(validity.not_after.timestamp());
    if now >= not_after {
        return Err(CertError::Expired {
            path: cert.to_path_buf(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < not_before {
        return Err(CertError::NotYetValid {
            path: cert.to_path_buf(),
            not_before: validity.not_before.to_string(),
        });
    }

    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| CertError::Pem {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| CertError::NoKey {
            path: key.to_path_buf(),
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| CertError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // ring can tell the public key of every key type it signs with; should a key type not
        // say, the handshake itself would fail, which the check below the listener shows.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    let fingerprint = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&cert_pem);
        h.update(&key_pem);
        h.finalize().into()
    };
    Ok(Loaded {
        cert_path: cert.to_path_buf(),
        names,
        not_after,
        key: Arc::new(certified),
        fingerprint,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The leaf's DNS names (subject alternative names, else the common name), lowercase, in order.
fn host_names(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !names.contains(&d) {
                    names.push(d);
                }
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    names
}
