//! `admit`: the first stage. It names the request (request id, trace
//! context), refuses what is malformed or too large, and normalises the host
//! and path that every later stage uses.
//!
//! Refused here, never forwarded:
//! - a request target longer than `limits.max-uri-bytes` (414);
//! - header fields larger in total than `limits.max-header-bytes`, or more of
//!   them than `limits.max-headers` (431);
//! - `Content-Length` together with `Transfer-Encoding`, or several
//!   `Content-Length` values (400, RFC 9112 §6.3: ambiguous framing);
//! - a missing or malformed `Host`, an absolute-form target whose authority
//!   differs from `Host`, or a scheme other than http(s) (400);
//! - a path that does not normalise (400; see [`crate::normalize`]).
//!
//! Hyper itself answers 400 to what it cannot parse (bad request lines,
//! invalid header bytes) and 431 to heads beyond its buffer, which is sized
//! above the configured limit so that this stage gives the JSON answer.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Version};

use super::{Flow, Request, RequestCx, Stage, Step, ready};
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::server::AmbiguousFraming;
use crate::{normalize, trace};

/// The `admit` stage.
pub struct Admit {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_headers: usize,
}

impl Admit {
    /// The stage with the node's limits.
    pub fn new(config: &Config) -> Self {
        Self {
            max_uri_bytes: config.limits.max_uri_bytes,
            max_header_bytes: config.limits.max_header_bytes,
            max_headers: config.limits.max_headers,
        }
    }

    fn check(&self, cx: &mut RequestCx, req: &Request) -> Result<(), Error> {
        let uri = req.uri();
        let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        if target_len > self.max_uri_bytes {
            return Err(Kind::UriTooLong {
                limit: self.max_uri_bytes,
            }
            .into());
        }
        let headers = req.headers();
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes || headers.len() > self.max_headers {
            return Err(Kind::HeadersTooLarge {
                limit: self.max_header_bytes,
            }
            .into());
        }
        if req.extensions().get::<AmbiguousFraming>().is_some()
            || (headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH))
        {
            return Err(Error::bad_request(
                "ambiguous_framing",
                "Content-Length and Transfer-Encoding must not both be sent",
            ));
        }
        let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next()
            && (lengths.any(|other| other != first)
                || first
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none())
        {
            return Err(Error::bad_request(
                "ambiguous_framing",
                "Content-Length must be one non-negative integer",
            ));
        }

        let host_header = headers.get(HOST);
        let authority = match (uri.authority(), req.version()) {
            (Some(authority), Version::HTTP_2 | Version::HTTP_3) => {
                HeaderValue::from_str(authority.as_str()).ok()
            }
            (Some(authority), _) => {
                // Absolute-form (RFC 9112 §3.2.2): the target's authority
                // wins, and a differing Host is refused as ambiguous.
                if !matches!(uri.scheme_str(), Some("http" | "https")) {
                    return Err(Error::bad_request(
                        "invalid_target",
                        "absolute-form targets must use http or https",
                    ));
                }
                if let Some(host) = host_header
                    && !host
                        .as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Err(Error::bad_request(
                        "host_mismatch",
                        "the Host header differs from the request target's authority",
                    ));
                }
                HeaderValue::from_str(authority.as_str()).ok()
            }
            (None, _) => host_header.cloned(),
        };
        match &authority {
            Some(value) => cx.host = parse_host(value.as_bytes())?,
            None if req.version() == Version::HTTP_11 => {
                return Err(Error::bad_request(
                    "missing_host",
                    "HTTP/1.1 requests need a Host header",
                ));
            }
            None => {}
        }
        cx.authority = authority;

        cx.path = match normalize::path(uri.path()) {
            Ok(path) => path.into_owned(),
            Err(error) => return Err(Error::bad_request("invalid_path", error.to_string())),
        };
        Ok(())
    }
}

/// Lowercase host without port from an authority (`Host` value).
fn parse_host(authority: &[u8]) -> Result<String, Error> {
    let invalid =
        || Error::bad_request("invalid_host", "the Host header is not a valid host[:port]");
    let (host, port) = if let Some(rest) = authority.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b']').ok_or_else(invalid)?;
        std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(invalid)?;
        let after = &rest[end + 1..];
        if !after.is_empty() && !after.starts_with(b":") {
            return Err(invalid());
        }
        (&authority[..end + 2], after.get(1..))
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_none()
    {
        return Err(invalid());
    }
    if host.is_empty() || host.len() > 255 {
        return Err(invalid());
    }
    // One pass: check and lowercase (a bracketed IPv6 literal was checked above).
    let mut out = String::with_capacity(host.len());
    for &b in host {
        let allowed = b.is_ascii_alphanumeric()
            || b == b'-'
            || b == b'.'
            || b == b'_'
            || (host[0] == b'[' && (b == b'[' || b == b']' || b == b':'));
        if !allowed {
            return Err(invalid());
        }
        out.push(char::from(b.to_ascii_lowercase()));
    }
    out.truncate(out.trim_end_matches('.').len());
    Ok(out)
}

impl Stage for Admit {
    fn name(&self) -> &'static str {
        "admit"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        cx.request_id = trace::request_id(req.headers().get(&trace::X_REQUEST_ID));
        cx.trace = trace::Context::continue_or_start(req.headers().get(&trace::TRACEPARENT));
        cx.traceparent = cx.trace.traceparent();
        ready(self.check(cx, req).map(|()| Flow::Continue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host(b"API.Example.com:8080").unwrap(),
            "api.example.com"
        );
        assert_eq!(parse_host(b"example.com.").unwrap(), "example.com");
        assert_eq!(parse_host(b"[::1]:80").unwrap(), "[::1]");
        assert_eq!(parse_host(b"127.0.0.1").unwrap(), "127.0.0.1");
        for bad in [
            &b""[..],
            b"a b",
            b"a:b",
            b"[zz]:1",
            b"[::1]x",
            b"a:99999",
            b"a/b",
            b"\xff",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }
}
