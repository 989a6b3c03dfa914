//! Preview: trying the idle colour in production before it takes traffic.
//!
//! A request that names a pool in `x-switchyard-pool` and carries the preview token in
//! `x-switchyard-preview-token` goes to that pool whatever the weights, even at 0 %. That suits
//! curl, smoke tests and API clients. A browser cannot add headers, so it uses a cookie instead:
//! `sy_preview=<pool>.<signature>`, where the signature is HMAC-SHA256 of the pool name keyed by
//! the token. `switchyard ctl preview-cookie green` asks the admin API for one. The cookie names
//! one pool, cannot be turned into the token, and stops working when the token file changes.
//!
//! Tokens and signatures are compared in constant time. Without a valid token the header is
//! ignored (and counted); both headers are always stripped before a request is forwarded.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The cookie a browser carries to preview a pool.
pub const PREVIEW_COOKIE: &str = "sy_preview";

/// Why the preview token file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("cannot read the preview token file {path}: {source}; create it (e.g. `openssl rand -hex 32 > {path}`) or remove routing.preview_token_file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the preview token file {0} is empty; put one token in it")]
    Empty(PathBuf),
}

/// The preview secret.
#[derive(Clone)]
pub struct PreviewKey {
    token: Vec<u8>,
}

impl std::fmt::Debug for PreviewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreviewKey(..)")
    }
}

/// Two keys are equal when their tokens are: a reload compares them to tell whether the token
/// file was rotated (which invalidates every preview cookie).
impl PartialEq for PreviewKey {
    fn eq(&self, other: &PreviewKey) -> bool {
        bool::from(self.token.as_slice().ct_eq(&other.token))
    }
}

type HmacSha256 = Hmac<Sha256>;

impl PreviewKey {
    /// Reads the token: the file's first non-empty line, trimmed.
    pub fn load(path: &Path) -> Result<PreviewKey, PreviewError> {
        let text = std::fs::read_to_string(path).map_err(|source| PreviewError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| PreviewError::Empty(path.to_path_buf()))?;
        Ok(PreviewKey::new(token.as_bytes()))
    }

    pub fn new(token: &[u8]) -> PreviewKey {
        PreviewKey {
            token: token.to_vec(),
        }
    }

    /// Whether `presented` is the token (constant time).
    pub fn check_token(&self, presented: &[u8]) -> bool {
        !presented.is_empty() && bool::from(self.token.as_slice().ct_eq(presented))
    }

    fn mac(&self, pool: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.token).expect("HMAC takes any key length");
        mac.update(b"switchyard-preview:");
        mac.update(pool.as_bytes());
        mac
    }

    /// The `sy_preview` cookie value for `pool`.
    pub fn cookie_value(&self, pool: &str) -> String {
        let sig = self.mac(pool).finalize().into_bytes();
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        format!("{pool}.{hex}")
    }

    /// The pool a `sy_preview` cookie value names, if its signature is valid.
    pub fn check_cookie<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (pool, hex) = value.rsplit_once('.')?;
        if hex.len() != 64 {
            return None;
        }
        let mut sig = [0u8; 32];
        for (i, byte) in sig.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        self.mac(pool).verify_slice(&sig).ok().map(|_| pool)
    }
}

/// The value of cookie `name` in a `Cookie` header value, if present.
pub fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header
        .split(|&b| b == b';')
        .map(|c| c.trim_ascii())
        .find_map(|c| c.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let k = PreviewKey::new(b"s3cret");
        assert!(k.check_token(b"s3cret"));
        assert!(!k.check_token(b"s3cre"));
        assert!(!k.check_token(b"s3cret!"));
        assert!(!k.check_token(b""));
    }

    #[test]
    fn cookies_are_signed_per_pool() {
        let k = PreviewKey::new(b"s3cret");
        let v = k.cookie_value("green");
        assert_eq!(k.check_cookie(&v), Some("green"));
        let forged = v.replacen("green", "blue", 1);
        assert_eq!(k.check_cookie(&forged), None, "a signature is for one pool");
        assert_eq!(PreviewKey::new(b"other").check_cookie(&v), None);
        assert_eq!(k.check_cookie("green.zz"), None);
        assert_eq!(k.check_cookie("green"), None);
    }

    #[test]
    fn cookie_values_are_found() {
        let h = b"a=1; sy_uid=abc123;sy_preview=green.ff ; z=";
        assert_eq!(cookie(h, "sy_uid"), Some(&b"abc123"[..]));
        assert_eq!(cookie(h, "sy_preview"), Some(&b"green.ff"[..]));
        assert_eq!(cookie(h, "z"), Some(&b""[..]));
        assert_eq!(cookie(h, "sy"), None);
    }
}
