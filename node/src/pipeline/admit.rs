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
//! - a missing, repeated or malformed `Host`, an absolute-form target whose authority
//!   differs from `Host`, or a scheme other than http(s) (400);
//! - a path that does not normalise (400; see [`crate::normalize`]).
//!
//! Hyper itself answers 400 to what it cannot parse (bad request lines,
//! invalid header bytes) and 431 to heads beyond its buffer, which is sized
//! above the configured limit so that this stage gives the JSON answer.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Version};

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

    fn check(&self, cx: &mut RequestCx, req: &Request, fields: &Fields<'_>) -> Result<(), Error> {
        let uri = req.uri();
        let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        if target_len > self.max_uri_bytes {
            return Err(Kind::UriTooLong {
                limit: self.max_uri_bytes,
            }
            .into());
        }
        if fields.bytes > self.max_header_bytes || req.headers().len() > self.max_headers {
            return Err(Kind::HeadersTooLarge {
                limit: self.max_header_bytes,
            }
            .into());
        }
        if req.extensions().get::<AmbiguousFraming>().is_some()
            || (fields.transfer_encoding && fields.content_length.is_some())
        {
            return Err(Error::bad_request(
                "ambiguous_framing",
                "Content-Length and Transfer-Encoding must not both be sent",
            ));
        }
        if let Some(length) = fields.content_length
            && (fields.lengths_differ
                || length
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
        if fields.hosts > 1 {
            return Err(Error::bad_request(
                "invalid_host",
                "a request carries one Host header (RFC 9112 §3.2)",
            ));
        }

        let host_header = fields.host;
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

/// What `admit` reads of the request's fields, found in one pass over them
/// rather than one hash lookup each.
#[derive(Default)]
struct Fields<'a> {
    /// Their size as counted against `limits.max-header-bytes`.
    bytes: usize,
    host: Option<&'a HeaderValue>,
    hosts: usize,
    request_id: Option<&'a HeaderValue>,
    traceparent: Option<&'a HeaderValue>,
    transfer_encoding: bool,
    content_length: Option<&'a HeaderValue>,
    /// Several `Content-Length` fields that do not all agree.
    lengths_differ: bool,
}

impl<'a> Fields<'a> {
    fn read(headers: &'a HeaderMap) -> Self {
        let mut fields = Fields::default();
        for (name, value) in headers {
            fields.bytes += name.as_str().len() + value.len() + 4;
            if name == HOST {
                fields.host.get_or_insert(value);
                fields.hosts += 1;
            } else if name == CONTENT_LENGTH {
                let first = *fields.content_length.get_or_insert(value);
                fields.lengths_differ |= first != value;
            } else if name == TRANSFER_ENCODING {
                fields.transfer_encoding = true;
            } else if name == trace::X_REQUEST_ID {
                fields.request_id.get_or_insert(value);
            } else if name == trace::TRACEPARENT {
                fields.traceparent.get_or_insert(value);
            }
        }
        fields
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
        && !is_port(port)
    {
        return Err(invalid());
    }
    if host.is_empty() || host.len() > 255 {
        return Err(invalid());
    }
    // A bracketed IPv6 literal was checked above; a name is looked up a
    // byte at a time in `HOST_BYTES`.
    if host[0] != b'[' && !host.iter().all(|&b| HOST_BYTES[usize::from(b)]) {
        return Err(invalid());
    }
    let end = host
        .iter()
        .rposition(|&b| b != b'.')
        .map_or(0, |last| last + 1);
    let host = std::str::from_utf8(&host[..end]).map_err(|_| invalid())?;
    Ok(host.to_ascii_lowercase())
}

/// The bytes a host name may hold: letters, digits, `-`, `.` and `_`.
const HOST_BYTES: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        allowed[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    allowed
};

/// A port number: 1 to 5 digits, at most 65535.
fn is_port(text: &[u8]) -> bool {
    text.len() <= 5 && crate::text::digits(text).is_some_and(|n| n <= u64::from(u16::MAX))
}

impl Stage for Admit {
    fn name(&self) -> &'static str {
        "admit"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        let fields = Fields::read(req.headers());
        cx.request_id = trace::request_id(fields.request_id);
        cx.trace = trace::Context::continue_or_start(fields.traceparent);
        cx.traceparent = cx.trace.traceparent();
        ready(self.check(cx, req, &fields).map(|()| Flow::Continue))
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
        assert_eq!(parse_host(b"a:65535").unwrap(), "a");
        assert_eq!(parse_host(b"a:0").unwrap(), "a");
        for bad in [
            &b""[..],
            b"a b",
            b"a:b",
            b"[zz]:1",
            b"[::1]x",
            b"a:99999",
            b"a:65536",
            b"a:",
            b"a:+1",
            b"a:1x",
            b"a/b",
            b"\xff",
            b"a]b",
            b"[::1]]",
            b"a:b:c",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }
}
