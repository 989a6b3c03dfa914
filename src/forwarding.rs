//! What switchyard changes in the messages it forwards, and nothing more: the routing headers are
//! stripped from requests, `X-Forwarded-For` and `X-Forwarded-Proto` are set on them, a repeated
//! `Content-Length` goes on as one line, and responses name the pool that served them.
//!
//! These edits run on every request, so they are written against pingora's header types with
//! their cost in mind (see `benches/request_path.rs`, group "forwarding").

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::proxy::{POOL_HEADER, PREVIEW_TOKEN_HEADER};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static POOL_HEADER_NAME: HeaderName = HeaderName::from_static(POOL_HEADER);
static PREVIEW_TOKEN_NAME: HeaderName = HeaderName::from_static(PREVIEW_TOKEN_HEADER);

/// Edits the request about to go upstream: strips the routing headers (ours, never the
/// application's, so a preview token cannot leak to a backend or its logs), appends the client to
/// `X-Forwarded-For` and sets `X-Forwarded-Proto` to the scheme it came in on (`https` when
/// `tls`, the client connection being TLS, else `http`). A
/// `trusted` client (a TLS terminator in front of switchyard, `[listen] trusted_proxies`) knows
/// the scheme the request really came in on, so its `X-Forwarded-Proto` is passed on; anyone
/// else's is replaced, as it could be forged.
pub fn upstream_request(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    trusted: bool,
    tls: bool,
) -> Result<()> {
    // One lookup each: pingora touches its case map only when there was something to remove.
    for name in [&POOL_HEADER_NAME, &PREVIEW_TOKEN_NAME] {
        req.remove_header(name);
    }
    if let Some(ip) = client {
        // Every earlier hop, from however many header lines, then this client.
        let mut earlier = req.headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        let value = if earlier.peek().is_none() {
            let mut buf = IpBuf::new();
            HeaderValue::from_bytes(buf.format(ip))
        } else {
            let mut v = Vec::with_capacity(64);
            for prev in earlier {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(IpBuf::new().format(ip));
            HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
        };
        if let Ok(xff) = value {
            if req.has_case() {
                // `[server] header_case = "preserve"`: as static bytes, spelled as they go on
                // the wire (from a `HeaderName` pingora would copy the name once more for its
                // case map).
                req.insert_header(bytes::Bytes::from_static(b"X-Forwarded-For"), xff)?;
            } else {
                // No case map: the `HeaderName` as it is, nothing parsed (pingora patch 17).
                req.insert_header(&X_FORWARDED_FOR, xff)?;
            }
        }
    }
    // Identical `Content-Length` lines (differing ones were refused before): one goes on, as
    // RFC 9110 §8.6 allows, so the next hop cannot read them differently.
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (lengths.next(), lengths.next()) {
        let first = first.clone();
        req.insert_header(http::header::CONTENT_LENGTH, first)?;
    }
    if !(trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        if req.has_case() {
            req.insert_header(bytes::Bytes::from_static(b"X-Forwarded-Proto"), proto)?;
        } else {
            req.insert_header(&X_FORWARDED_PROTO, proto)?;
        }
    }
    Ok(())
}

/// Names the pool that served the response (`x-switchyard-pool`); `pool` is the header value,
/// built once per pool.
pub fn mark_response(resp: &mut ResponseHeader, pool: &HeaderValue) -> Result<()> {
    if resp.has_case() {
        resp.insert_header(
            bytes::Bytes::from_static(POOL_HEADER.as_bytes()),
            pool.clone(),
        )
    } else {
        resp.insert_header(&POOL_HEADER_NAME, pool.clone())
    }
}

/// An IP address in text, without `fmt`: IPv4 (every request from a v4 client) is written by
/// hand, IPv6 through `Display` into the same stack buffer.
struct IpBuf {
    buf: [u8; 45],
}

impl IpBuf {
    fn new() -> IpBuf {
        IpBuf { buf: [0; 45] }
    }

    fn format(&mut self, ip: IpAddr) -> &[u8] {
        match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf[n] = b'.';
                        n += 1;
                    }
                    let digits = [octet / 100, octet / 10 % 10, octet % 10];
                    let skip = if octet >= 100 {
                        0
                    } else if octet >= 10 {
                        1
                    } else {
                        2
                    };
                    for d in &digits[skip..] {
                        self.buf[n] = b'0' + d;
                        n += 1;
                    }
                }
                &self.buf[..n]
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
                // The longest IPv6 text (an IPv4-mapped address in full) is 45 bytes.
                let _ = write!(cursor, "{v6}");
                let n = cursor.position() as usize;
                &self.buf[..n]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let ips: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.0.2.255",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for ip in ips {
            assert_eq!(IpBuf::new().format(ip), ip.to_string().as_bytes(), "{ip}");
        }
        // Every octet value, in every position.
        for o in 0..=255u8 {
            let ip = IpAddr::from([o, 255 - o, o / 2, o.wrapping_mul(7)]);
            assert_eq!(IpBuf::new().format(ip), ip.to_string().as_bytes());
        }
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn wire(r: &RequestHeader) -> String {
        let mut buf = bytes::BytesMut::new();
        r.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn request_edits() {
        let client = Some(IpAddr::from([192, 0, 2, 7]));
        let mut r = request(&[
            ("Host", "a"),
            ("X-Switchyard-Pool", "green"),
            ("x-switchyard-preview-token", "secret"),
            ("X-Forwarded-Proto", "https"),
        ]);
        upstream_request(&mut r, client, false, false).unwrap();
        assert_eq!(
            wire(&r),
            "Host: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 192.0.2.7\r\n"
        );

        // Earlier hops, from two header lines, come first, in order.
        let mut r = request(&[
            ("X-Forwarded-For", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2, 10.0.0.1"),
        ]);
        upstream_request(&mut r, client, false, false).unwrap();
        let xff: Vec<_> = r.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["203.0.113.1, 198.51.100.2, 10.0.0.1, 192.0.2.7"]);

        // No client address (a Unix socket): nothing to append, the rest still done.
        let mut r = request(&[("X-Switchyard-Pool", "green")]);
        upstream_request(&mut r, None, false, false).unwrap();
        assert_eq!(wire(&r), "X-Forwarded-Proto: http\r\n");
    }

    #[test]
    fn repeated_content_length_goes_on_as_one_line() {
        let mut r = request(&[
            ("Host", "a"),
            ("Content-Length", "5"),
            ("content-length", "5"),
        ]);
        upstream_request(&mut r, None, false, false).unwrap();
        assert_eq!(
            wire(&r),
            "Host: a\r\nContent-Length: 5\r\nX-Forwarded-Proto: http\r\n"
        );
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarded_proto() {
        let lb = Some(IpAddr::from([10, 0, 0, 5]));
        let mut r = request(&[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "203.0.113.1"),
        ]);
        upstream_request(&mut r, lb, true, false).unwrap();
        assert_eq!(
            wire(&r),
            "X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.1, 10.0.0.5\r\n"
        );
        // Trusted but silent about the scheme: it came in as http.
        let mut r = request(&[("Host", "a")]);
        upstream_request(&mut r, lb, true, false).unwrap();
        assert_eq!(
            wire(&r),
            "Host: a\r\nX-Forwarded-For: 10.0.0.5\r\nX-Forwarded-Proto: http\r\n"
        );
    }

    #[test]
    fn a_tls_client_is_forwarded_as_https_and_cannot_forge_http() {
        let client = Some(IpAddr::from([192, 0, 2, 7]));
        let mut r = request(&[("X-Forwarded-Proto", "http")]);
        upstream_request(&mut r, client, false, true).unwrap();
        assert_eq!(
            wire(&r),
            "X-Forwarded-Proto: https\r\nX-Forwarded-For: 192.0.2.7\r\n"
        );
    }

    #[test]
    fn responses_name_the_pool() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("X-Switchyard-Pool", "forged").unwrap();
        mark_response(&mut r, &HeaderValue::from_static("blue")).unwrap();
        let values: Vec<_> = r.headers.get_all(POOL_HEADER).iter().collect();
        assert_eq!(values, ["blue"]);
    }
}
