//! `observe`: runs for every request, answered by a stage, the proxy or an
//! error alike. It returns the request id and trace context to the client,
//! and when the response body is finished (or abandoned) it counts the
//! request, records its duration and writes its access-log line.
//!
//! Access-log fields: `ts`, `request_id`, `trace_id`, `client` (the peer),
//! `client_ip` (the resolved client, see `ip`), `proto`,
//! `method`, `host`, `path` (normalised), `upstream_path`, `status`, `route`,
//! `consumer`, `api_version`, `upstream`, `target`, `upstream_ms`, `duration_ms`,
//! `bytes_out`, `complete` (false when the body was cut short), `error`.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Version};

use super::{RequestCx, Response};
use crate::{Shared, trace};

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
    headers.insert(trace::X_REQUEST_ID.clone(), cx.request_id.clone());
    headers.insert(trace::TRACEPARENT.clone(), cx.traceparent.clone());
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
            shared.access_log.write(|line| {
                line.timestamp("ts", SystemTime::now());
                line.str("request_id", cx.request_id.to_str().unwrap_or_default());
                let trace_id = cx.trace.trace_id().hex();
                line.str(
                    "trace_id",
                    std::str::from_utf8(&trace_id).unwrap_or_default(),
                );
                line.addr("client", cx.client);
                line.ip("client_ip", cx.client_ip);
                line.str("proto", proto(version));
                line.str("method", method.as_str());
                line.str("host", &cx.host);
                line.str("path", &cx.path);
                if !cx.upstream_path.is_empty() {
                    line.str("upstream_path", &cx.upstream_path);
                }
                line.u64("status", u64::from(status.as_u16()));
                line.str(
                    "route",
                    cx.route.as_ref().map_or("none", |r| r.name.as_str()),
                );
                if let Some(consumer) = cx.principal.as_ref().and_then(|p| p.consumer_name()) {
                    line.str("consumer", consumer);
                }
                if let Some(version) = cx.api.as_ref().and_then(|a| a.version.to_str().ok()) {
                    line.str("api_version", version);
                }
                if let Some(route) = &cx.route {
                    line.str("upstream", route.upstream.name());
                }
                if let Some(target) = &cx.target {
                    line.str("target", target);
                }
                if let Some(latency) = cx.upstream_latency {
                    line.millis("upstream_ms", latency);
                }
                line.millis("duration_ms", elapsed);
                line.u64("bytes_out", bytes_out);
                line.bool("complete", complete);
                if let Some(error) = cx.error {
                    line.str("error", error);
                }
            });
        }));
}
