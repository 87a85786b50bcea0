//! `observe`: runs for every request, answered by a stage, the proxy or an
//! error alike. It returns the request id and trace context to the client,
//! and when the response body is finished (or abandoned) it counts the
//! request, records its duration and writes its access-log line.
//!
//! Access-log fields: `ts`, `request_id`, `trace_id`, `client`, `proto`,
//! `method`, `host`, `path` (normalised), `upstream_path`, `status`, `route`,
//! `api_version`, `upstream`, `target`, `upstream_ms`, `duration_ms`,
//! `bytes_out`, `complete` (false when the body was cut short), `error`.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Version};
use serde::Serialize;

use super::{RequestCx, Response};
use crate::Shared;

#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "display")]
    ts: humantime::Rfc3339Timestamp,
    request_id: &'a str,
    #[serde(serialize_with = "display")]
    trace_id: crate::trace::TraceId,
    client: std::net::SocketAddr,
    proto: &'static str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    upstream_path: &'a str,
    status: u16,
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    duration_ms: f64,
    bytes_out: u64,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Serialises a value through its `Display`, without an intermediate string.
fn display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Stamps the response and arranges for the request to be counted and
/// logged when its body ends.
pub fn finish(
    shared: &Arc<Shared>,
    cx: RequestCx,
    method: &Method,
    version: Version,
    response: &mut Response,
) {
    let headers = response.headers_mut();
    headers.insert("x-request-id", cx.request_id.clone());
    headers.insert("traceparent", cx.trace.traceparent());
    let status = response.status();
    if cx.route.is_none()
        && let Some(code) = cx.error
    {
        shared.metrics.client_error(code);
    }
    let shared = shared.clone();
    let method = method.clone();
    response
        .body_mut()
        .on_end(Box::new(move |bytes_out, complete| {
            let elapsed = cx.started.elapsed();
            let metrics = match &cx.route {
                Some(route) => &route.metrics,
                None => &cx.snapshot.unrouted,
            };
            metrics.request(&shared.metrics, &method, status);
            metrics.duration.record(elapsed.as_secs_f64());
            if !shared.access_log.enabled() {
                return;
            }
            let millis = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
            let line = Line {
                ts: humantime::format_rfc3339_millis(SystemTime::now()),
                request_id: cx.request_id.to_str().unwrap_or_default(),
                trace_id: cx.trace.trace_id(),
                client: cx.client,
                proto: proto(version),
                method: method.as_str(),
                host: &cx.host,
                path: &cx.path,
                upstream_path: &cx.upstream_path,
                status: status.as_u16(),
                route: cx.route.as_ref().map_or("none", |r| r.name.as_str()),
                api_version: cx.api.as_ref().and_then(|a| a.version.to_str().ok()),
                upstream: cx.route.as_ref().map(|r| r.upstream.name()),
                target: cx.target.as_deref(),
                upstream_ms: cx.upstream_latency.map(millis),
                duration_ms: millis(elapsed),
                bytes_out,
                complete,
                error: cx.error,
            };
            shared.access_log.write(&line);
        }));
}
