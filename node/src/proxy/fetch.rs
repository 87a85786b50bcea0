//! One `GET` of a JSON document from an upstream pool, for the terminal
//! stages that compose an answer from upstream calls instead of proxying
//! (`aggregate`, `graphql`).
//!
//! - The call goes to a target of the upstream's pool, through the pool's
//!   client (its connections, its health and outlier records), with the
//!   headers the proxy would send (the client's end-to-end fields, the
//!   `X-Forwarded-*` set, `x-request-id`, `traceparent` and the verified
//!   identity), minus the body and content-negotiation fields, plus
//!   `Accept: application/json` ([`headers`]). No retries: the call's
//!   `timeout` bounds the whole exchange, head and body.
//! - Paths are [`PathTemplate`]s rendered with percent-encoded values
//!   ([`render`]): a value cannot add path segments or query parameters.
//! - A call fails ([`FetchError`]) when it cannot be sent (no healthy
//!   target, connect error), times out, answers a non-2xx status, a body
//!   over its limit, or a body that is not JSON. Failures are counted in the
//!   upstream's own series, and a 5xx, timeout or connection failure counts
//!   against the target for outlier ejection.

use super::content_length;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use raft::model::aggregate::{PathPiece, PathTemplate};
use serde_json::Value;
use tokio::time::Instant;

use super::pool::Pool;
use crate::body::UpstreamBody;
use crate::error::Error;
use crate::pipeline::RequestCx;

/// Characters of a substituted value that are escaped in a path.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'%');

/// Client fields not sent with a call the gateway makes itself (a fetch
/// here, a transcoded gRPC call): the gateway writes the body and its type,
/// and reads an answer it must understand, whole.
pub(crate) const NOT_FORWARDED: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT_ENCODING,
    header::ACCEPT,
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

// === impl FetchError ===

/// Why one call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// Machine-readable reason, e.g. `upstream_status`.
    pub code: &'static str,
    /// The upstream's status when it answered one, otherwise the status the
    /// gateway uses for the failure (502, or 504 for a timeout).
    pub status: u16,
}

impl FetchError {
    /// A failure with `code`, reported as `status`.
    pub fn new(code: &'static str, status: StatusCode) -> Self {
        Self {
            code,
            status: status.as_u16(),
        }
    }
}

// === impl Fetch ===

/// Where and how one kind of call is made: the pool, the time allowed and
/// the largest body read.
pub struct Fetch {
    /// The upstream's pool.
    pub pool: Arc<Pool>,
    /// Time allowed for the whole exchange, head and body.
    pub timeout: Duration,
    /// Largest response body read, in bytes.
    pub max_body: u64,
}

impl Fetch {
    /// A call to `pool`; `timeout` defaults to the upstream's
    /// `timeouts.request`.
    pub fn new(pool: Arc<Pool>, timeout: Option<Duration>, max_body: u64) -> Self {
        Self {
            timeout: timeout.unwrap_or(pool.definition().timeouts.request),
            pool,
            max_body,
        }
    }

    /// Sends `GET path` with `headers` and parses the JSON answer, within
    /// the timeout.
    pub async fn get_json(
        &self,
        path: PathAndQuery,
        mut headers: HeaderMap,
    ) -> Result<Value, FetchError> {
        let pool = &self.pool;
        let set = pool.targets();
        let Some(index) = pool.pick(&set, None, &[]) else {
            pool.metrics.error("no_healthy_upstream");
            return Err(FetchError::new(
                "no_healthy_upstream",
                StatusCode::BAD_GATEWAY,
            ));
        };
        let target = &set[index];
        if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        let mut request = http::Request::new(UpstreamBody::Empty);
        *request.method_mut() = Method::GET;
        *request.uri_mut() = Uri::from(path);
        *request.headers_mut() = headers;
        let started = Instant::now();
        let mut in_flight = pool.begin(&set, index, started);
        let max_body = self.max_body;
        let exchange = async {
            let (response, conn) = pool
                .client
                .send(&target.endpoint, request, None)
                .await
                .map_err(|error| {
                    let code = Error::new(error.kind()).code();
                    FetchError::new(code, StatusCode::BAD_GATEWAY)
                })?;
            in_flight.keep(conn);
            pool.metrics.latency.record(started.elapsed());
            let status = response.status();
            if status.is_server_error() {
                pool.metrics.error("status_5xx");
            }
            pool.record(&set, index, !status.is_server_error());
            if !status.is_success() {
                return Err(FetchError::new("upstream_status", status));
            }
            let (parts, mut body) = response.into_parts();
            let too_large = || FetchError::new("upstream_body_too_large", StatusCode::BAD_GATEWAY);
            if content_length(&parts.headers).is_some_and(|len| len > max_body) {
                return Err(too_large());
            }
            let mut data = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    FetchError::new("upstream_protocol_error", StatusCode::BAD_GATEWAY)
                })?;
                if let Ok(chunk) = frame.into_data() {
                    if (data.len() + chunk.len()) as u64 > max_body {
                        return Err(too_large());
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            if let Some(conn) = body.take_reusable() {
                in_flight.keep(Some(conn));
            }
            Ok(data)
        };
        let data = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(data)) => data,
            Ok(Err(error)) => {
                in_flight.discard();
                if error.code != "upstream_status" {
                    pool.metrics.error(error.code);
                }
                if !matches!(error.code, "upstream_status" | "upstream_body_too_large") {
                    pool.record(&set, index, false);
                }
                return Err(error);
            }
            Err(_elapsed) => {
                in_flight.discard();
                pool.metrics.error("upstream_timeout");
                pool.record(&set, index, false);
                return Err(FetchError::new(
                    "upstream_timeout",
                    StatusCode::GATEWAY_TIMEOUT,
                ));
            }
        };
        // The body ended cleanly: the connection can serve another request.
        in_flight.release();
        serde_json::from_slice(&data)
            .map_err(|_| FetchError::new("upstream_invalid_json", StatusCode::BAD_GATEWAY))
    }
}

/// The headers every call made for the request in `cx` is sent with.
pub fn headers(cx: &RequestCx, client: &HeaderMap) -> HeaderMap {
    let mut headers = super::upstream_headers(cx, client, false);
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

/// Renders `template` with `values` (looked up by placeholder name),
/// percent-encoding each value except unreserved characters and existing
/// `%` escapes. `None` when a placeholder has no value.
pub fn render(template: &PathTemplate, values: &[(&str, &str)]) -> Option<PathAndQuery> {
    let mut out = String::with_capacity(64);
    for piece in &template.0 {
        match piece {
            PathPiece::Literal(text) => out.push_str(text),
            PathPiece::Param(name) => {
                let (_, value) = values.iter().find(|(n, _)| n == name)?;
                out.extend(utf8_percent_encode(value, ESCAPED));
            }
        }
    }
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(out)).ok()
}
