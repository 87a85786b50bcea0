//! `aggregate`: response composition (issue 8, point 3). On a route with an
//! `aggregate` block this terminal stage answers the request itself, after
//! `auth`, `limit` and `transform` ran: it calls every part concurrently and
//! merges their JSON into one object. See docs/aggregate.md.
//!
//! - Each part is one `GET` to a target of its upstream's pool, through the
//!   pool's client (its connections, its health and outlier records), with
//!   the headers the proxy would send (the client's end-to-end fields, the
//!   `X-Forwarded-*` set, `x-request-id`, `traceparent` and the verified
//!   identity), minus the body and content-negotiation fields, plus
//!   `Accept: application/json`. No retries: the part's `timeout` bounds
//!   the whole exchange, head and body.
//! - The path is the part's template with `{param}` values captured from
//!   the request path by the route's pattern, percent-encoded except for
//!   unreserved characters (and existing `%` escapes); the client's query
//!   string is not passed on.
//! - A part fails when it cannot be sent (no healthy target, connect error),
//!   times out, answers a non-2xx status, a body over its limit, or a body
//!   that is not JSON. `on_error: fail` turns the whole answer into a 502
//!   `aggregate_part_failed` naming the part; `omit` leaves the key out and
//!   `marker` sets it to `{"error": {"code", "status"}}`; both name the
//!   part in `x-aggregate-partial`. Failures are counted in
//!   `meridian_aggregate_part_failures_total{route,part}`.
//! - The answer is `200 application/json`, keys in the order of the block.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use metrics::Counter;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use raft::model;
use raft::model::aggregate::{Aggregate, OnError, PathPiece, PathTemplate};
use raft::model::pattern::{PathPattern, Segment};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{Flow, Request, RequestCx, Stage};
use crate::body::{Body, UpstreamBody};
use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::proxy::{self, pool::Pool};

/// The header naming the parts that failed and were omitted or marked.
pub static X_AGGREGATE_PARTIAL: HeaderName = HeaderName::from_static("x-aggregate-partial");

/// Characters of a captured value that are escaped in a part's path.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'%');

/// Client fields not sent with a part: the part has no body and its answer
/// must be plain JSON.
const NOT_FORWARDED: &[HeaderName] = &[
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

// === impl PartError ===

/// Why one part failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// Machine-readable reason, e.g. `upstream_status`.
    pub code: &'static str,
    /// The upstream's status when it answered one, otherwise the status the
    /// gateway uses for the failure (502, or 504 for a timeout).
    pub status: u16,
}

impl PartError {
    fn new(code: &'static str, status: StatusCode) -> Self {
        Self {
            code,
            status: status.as_u16(),
        }
    }

    /// The value a `marker` part takes in the merged object.
    pub fn marker(&self) -> Value {
        serde_json::json!({ "error": { "code": self.code, "status": self.status } })
    }
}

// === impl RouteAggregate ===

/// One compiled part.
struct Part {
    name: String,
    pool: Arc<Pool>,
    path: PathTemplate,
    timeout: Duration,
    on_error: OnError,
    max_body: u64,
    failures: Counter,
}

/// A route's compiled `aggregate` block.
pub struct RouteAggregate {
    /// The route's path pattern, to capture `{param}` values.
    pattern: Vec<Segment>,
    parts: Vec<Part>,
    route: String,
}

impl RouteAggregate {
    /// Compiles a validated block; `None` when an upstream is missing
    /// (validation rules that out).
    pub fn compile(
        aggregate: &Aggregate,
        route: &model::Route,
        upstreams: &HashMap<String, Arc<Pool>>,
        metrics: &Metrics,
    ) -> Option<Self> {
        let m = &route.matcher;
        let pattern = m
            .path
            .as_deref()
            .or(m.path_prefix.as_deref())
            .and_then(|p| PathPattern::parse(p).ok())
            .map(|p| p.segments)
            .unwrap_or_default();
        let mut parts = Vec::with_capacity(aggregate.parts.len());
        for (name, part) in &aggregate.parts {
            let pool = upstreams.get(&part.upstream)?.clone();
            parts.push(Part {
                name: name.clone(),
                timeout: part.timeout.unwrap_or(pool.definition().timeouts.request),
                pool,
                path: PathTemplate::parse(&part.path).ok()?,
                on_error: part.on_error,
                max_body: aggregate.max_body_bytes(part),
                failures: metrics.counter(
                    "meridian_aggregate_part_failures_total",
                    &[("route", route.name.clone()), ("part", name.clone())],
                ),
            });
        }
        Some(Self {
            pattern,
            parts,
            route: route.name.clone(),
        })
    }

    /// The `{param}` values of `path` under the route's pattern.
    pub fn capture<'p>(&self, path: &'p str) -> Vec<(&str, &'p str)> {
        let mut values = Vec::new();
        let Some(rest) = path.strip_prefix('/') else {
            return values;
        };
        for (segment, value) in self.pattern.iter().zip(rest.split('/')) {
            if let Segment::Param(name) = segment {
                values.push((name.as_str(), value));
            }
        }
        values
    }
}

/// Renders a part's path with the captured values.
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

// === calling a part ===

/// The headers every part is sent with.
fn part_headers(cx: &RequestCx, client: &HeaderMap) -> HeaderMap {
    let mut headers = proxy::upstream_headers(cx, client, false);
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

/// Calls one part and parses its JSON, within its timeout.
async fn call(part: &Part, path: PathAndQuery, mut headers: HeaderMap) -> Result<Value, PartError> {
    let pool = &part.pool;
    let set = pool.targets();
    let Some(index) = pool.pick(&set, None, &[]) else {
        pool.metrics.error("no_healthy_upstream");
        return Err(PartError::new(
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
    let mut in_flight = pool.begin(&set, index);
    let started = Instant::now();
    let exchange = async {
        let (response, conn) =
            pool.client
                .send(&target.endpoint, request)
                .await
                .map_err(|error| {
                    let code = Error::new(error.kind()).code();
                    PartError::new(code, StatusCode::BAD_GATEWAY)
                })?;
        in_flight.keep(conn);
        pool.metrics.latency.record(started.elapsed().as_secs_f64());
        let status = response.status();
        if status.is_server_error() {
            pool.metrics.error("status_5xx");
        }
        pool.record(&set, index, !status.is_server_error());
        if !status.is_success() {
            return Err(PartError::new("upstream_status", status));
        }
        let (parts, mut body) = response.into_parts();
        if content_length(&parts.headers).is_some_and(|len| len > part.max_body) {
            return Err(PartError::new(
                "upstream_body_too_large",
                StatusCode::BAD_GATEWAY,
            ));
        }
        let mut data = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| PartError::new("upstream_protocol_error", StatusCode::BAD_GATEWAY))?;
            if let Ok(chunk) = frame.into_data() {
                if (data.len() + chunk.len()) as u64 > part.max_body {
                    return Err(PartError::new(
                        "upstream_body_too_large",
                        StatusCode::BAD_GATEWAY,
                    ));
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok(data)
    };
    let data = match tokio::time::timeout(part.timeout, exchange).await {
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
            return Err(PartError::new(
                "upstream_timeout",
                StatusCode::GATEWAY_TIMEOUT,
            ));
        }
    };
    // The body ended cleanly: the connection can serve another request.
    in_flight.release();
    serde_json::from_slice(&data)
        .map_err(|_| PartError::new("upstream_invalid_json", StatusCode::BAD_GATEWAY))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Merges the parts' outcomes, in the block's order: the answer, or the
/// error of the first failed part whose policy is `fail`.
pub fn merge<'a>(
    outcomes: impl IntoIterator<Item = (&'a str, OnError, Result<Value, PartError>)>,
) -> Result<(Map<String, Value>, Vec<&'a str>), (&'a str, PartError)> {
    let mut object = Map::new();
    let mut partial = Vec::new();
    for (name, on_error, outcome) in outcomes {
        match (outcome, on_error) {
            (Ok(value), _) => {
                object.insert(name.to_owned(), value);
            }
            (Err(error), OnError::Fail) => return Err((name, error)),
            (Err(_), OnError::Omit) => partial.push(name),
            (Err(error), OnError::Marker) => {
                object.insert(name.to_owned(), error.marker());
                partial.push(name);
            }
        }
    }
    Ok((object, partial))
}

// === impl AggregateStage ===

/// The `aggregate` stage.
pub struct AggregateStage;

#[async_trait::async_trait]
impl Stage for AggregateStage {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    async fn on_request(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        let Some(route) = cx.route.clone() else {
            return Ok(Flow::Continue);
        };
        let Some(aggregate) = route.aggregate.as_deref() else {
            return Ok(Flow::Continue);
        };
        let headers = part_headers(cx, req.headers());
        let values = aggregate.capture(&cx.path);
        let started = Instant::now();
        let calls = aggregate.parts.iter().map(|part| {
            let path = render(&part.path, &values);
            let headers = headers.clone();
            async move {
                match path {
                    Some(path) => call(part, path, headers).await,
                    None => Err(PartError::new("invalid_part_path", StatusCode::BAD_GATEWAY)),
                }
            }
        });
        let outcomes = futures_util::future::join_all(calls).await;
        cx.upstream_latency = Some(started.elapsed());
        for (part, outcome) in aggregate.parts.iter().zip(&outcomes) {
            if let Err(error) = outcome {
                tracing::debug!(
                    route = %aggregate.route,
                    part = %part.name,
                    code = error.code,
                    status = error.status,
                    "aggregate part failed"
                );
                part.failures.increment(1);
            }
        }
        let merged = merge(
            aggregate
                .parts
                .iter()
                .zip(outcomes)
                .map(|(part, outcome)| (part.name.as_str(), part.on_error, outcome)),
        );
        let (object, partial) = match merged {
            Ok(merged) => merged,
            Err((name, error)) => {
                return Err(Kind::UpstreamBody {
                    code: "aggregate_part_failed",
                    message: Cow::Owned(format!(
                        "aggregate part {name:?} failed: {} (status {})",
                        error.code, error.status
                    )),
                }
                .into());
            }
        };
        let body =
            serde_json::to_vec(&Value::Object(object)).map_err(|_| Error::new(Kind::Internal))?;
        let mut response = http::Response::new(Body::full(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !partial.is_empty()
            && let Ok(value) = HeaderValue::from_str(&partial.join(", "))
        {
            headers.insert(X_AGGREGATE_PARTIAL.clone(), value);
        }
        Ok(Flow::Respond(Box::new(response)))
    }
}

#[cfg(test)]
mod tests;
