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

use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use metrics::Counter;
use raft::model;
use raft::model::aggregate::{Aggregate, OnError, PathTemplate};
use raft::model::pattern::{PathPattern, Segment};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{Flow, Request, RequestCx, Stage, Step, ready, wait};
use crate::body::Body;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::proxy::fetch::{self, Fetch};
use crate::proxy::pool::Pool;

pub use crate::proxy::fetch::{FetchError as PartError, render};

/// The header naming the parts that failed and were omitted or marked.
pub static X_AGGREGATE_PARTIAL: HeaderName = HeaderName::from_static("x-aggregate-partial");

/// The value a `marker` part takes in the merged object.
pub fn marker(error: &PartError) -> Value {
    serde_json::json!({ "error": { "code": error.code, "status": error.status } })
}

// === impl RouteAggregate ===

/// One compiled part.
struct Part {
    name: String,
    fetch: Fetch,
    path: PathTemplate,
    on_error: OnError,
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
                fetch: Fetch::new(pool, part.timeout, aggregate.max_body_bytes(part)),
                path: PathTemplate::parse(&part.path).ok()?,
                on_error: part.on_error,
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
                object.insert(name.to_owned(), marker(&error));
                partial.push(name);
            }
        }
    }
    Ok((object, partial))
}

// === impl AggregateStage ===

/// The `aggregate` stage.
pub struct AggregateStage;

impl Stage for AggregateStage {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        match cx.route_with(|route| route.aggregate.as_ref()) {
            Some((_, aggregate)) => wait(self.compose(aggregate, cx, req)),
            None => ready(Ok(Flow::Continue)),
        }
    }

    fn acts_on(&self, route: &super::route::Route, _: &crate::snapshot::Snapshot) -> bool {
        route.aggregate.is_some()
    }
}

impl AggregateStage {
    async fn compose(
        &self,
        aggregate: Arc<RouteAggregate>,
        cx: &mut RequestCx,
        req: &mut Request,
    ) -> Result<Flow, Error> {
        let headers = fetch::headers(cx, req.headers());
        let values = aggregate.capture(&cx.path);
        let started = Instant::now();
        let calls = aggregate.parts.iter().map(|part| {
            let path = render(&part.path, &values);
            let headers = headers.clone();
            async move {
                match path {
                    Some(path) => part.fetch.get_json(path, headers).await,
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
