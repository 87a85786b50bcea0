//! Cross-region fallback: when an upstream has no local target that can
//! take a request, the request goes to the gateway of another region, which
//! proxies it to its own targets of the same upstream.
//!
//! - **When.** An upstream with `fallback: [REGION, …]` falls back when no
//!   local target is available (all failing their active check, ejected,
//!   or none: `region_targets` may give a region none), or when the local
//!   attempts failed before an answer (refused, reset, connect timeout) and
//!   the request can still be sent: it has no body, or its body was not
//!   streamed yet. A request whose body went to one place is never sent to
//!   another.
//! - **Where.** The fallback regions in order, this node's own skipped. In
//!   each, a node is picked at random among those whose health report (by
//!   gossip, [`crate::regions`]) is fresh, ready, and has an available
//!   target of the upstream. A region that cannot take the request (no such
//!   node, the node unreachable, or it answers that it found no target)
//!   passes it to the next while the request can still be sent.
//! - **How.** Over the peer plane: one QUIC stream per request, opened with
//!   [`crate::peer::FORWARD`] and carrying one HTTP/1.1 exchange, bodies
//!   streamed both ways. The stream is mutually authenticated with the
//!   cluster's certificates, so the request is trusted as coming from a
//!   peer: it carries the headers the origin would have sent its own
//!   targets (the caller's principal, `X-Forwarded-For`, `x-request-id`,
//!   `traceparent`) and the serving gateway only proxies it. It runs no
//!   stage of its own pipeline: no authentication again, no rate limit
//!   counted twice, no transform applied twice.
//! - **No loops.** A forwarded request is served from the receiving node's
//!   local targets or fails there; it is never forwarded again.
//! - **Which region served.** Every proxied response carries
//!   `x-meridian-region` (the region whose target answered).
//! - **Hysteresis.** Once an upstream's traffic left the region, requests
//!   keep going to the fallback first until the local targets have been
//!   available for `return_after` without a break ([`Away`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::header::{self, HeaderName};
use hyper_util::rt::{TokioIo, TokioTimer};
use raft::model::{NodeId, RegionFallback};
use tokio::time::Instant;

use super::pool::Pool;
use super::{Outgoing, Proxy, Served, X_FORWARDED_FOR};
use crate::app::Gateway;
use crate::body::FromUpstream;
use crate::error::{Error, Kind};
use crate::peer::{ForwardStream, Forwarder};
use crate::pipeline::{Request, RequestCx, Response, ServedBy};
use crate::pki::PeerIdentity;
use crate::snapshot::Snapshot;
use crate::trace::X_REQUEST_ID;

/// The region whose target answered (every proxied response).
pub static X_MERIDIAN_REGION: HeaderName = HeaderName::from_static("x-meridian-region");
/// Forwarded request: the upstream to serve it from.
static FORWARD_UPSTREAM: HeaderName = HeaderName::from_static("x-meridian-forward-upstream");
/// Forwarded request: `preserve` keeps the client's `Host`.
static FORWARD_HOST: HeaderName = HeaderName::from_static("x-meridian-forward-host");
/// Forwarded request: the region it comes from.
static FORWARDED_FROM: HeaderName = HeaderName::from_static("x-meridian-forwarded-from");
/// Answer to a forwarded request: the serving gateway found no target to
/// answer (the error's code); the origin may try the next region.
static FORWARD_FAILED: HeaderName = HeaderName::from_static("x-meridian-forward-failed");

/// Longest a forwarded request head may take to arrive.
const HEADER_READ: Duration = Duration::from_secs(10);

/// Largest forwarded request head.
const MAX_HEAD: usize = 256 << 10;

/// Whether an upstream's traffic is away from this region, and since when
/// its local targets have been available again (the hysteresis of the
/// return). Times are milliseconds on the pool's clock plus one, 0 for
/// "not".
pub struct Away {
    since: AtomicU64,
    local_ok: AtomicU64,
    active: metrics::Gauge,
}

impl Away {
    /// Home, with `meridian_fallback_active{upstream}` to report the state.
    pub fn new(active: metrics::Gauge) -> Self {
        active.set(0.0);
        Self {
            since: AtomicU64::new(0),
            local_ok: AtomicU64::new(0),
            active,
        }
    }

    /// Whether a request should go to the fallback first: the traffic left
    /// and the local targets have not been available for `return_after`
    /// yet. Comes home (and says so) once they have.
    pub fn stays_away(&self, pool: &Pool, return_after: Duration) -> bool {
        if self.since.load(Ordering::Relaxed) == 0 {
            return false;
        }
        if pool.available_targets() == 0 {
            self.local_ok.store(0, Ordering::Relaxed);
            return true;
        }
        let now = pool.now_ms() + 1;
        let ok = match self
            .local_ok
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => now,
            Err(since) => since,
        };
        if now.saturating_sub(ok) < return_after.as_millis() as u64 {
            return true;
        }
        if self.since.swap(0, Ordering::Relaxed) != 0 {
            self.active.set(0.0);
            tracing::info!(
                upstream = pool.name(),
                "local targets are back; traffic returns"
            );
        }
        self.local_ok.store(0, Ordering::Relaxed);
        false
    }

    /// Records that the upstream's traffic leaves the region.
    pub fn leave(&self, pool: &Pool) {
        self.local_ok.store(0, Ordering::Relaxed);
        if self.since.swap(pool.now_ms() + 1, Ordering::Relaxed) == 0 {
            self.active.set(1.0);
            tracing::warn!(
                upstream = pool.name(),
                "no local target can take requests; falling back to other regions"
            );
        }
    }
}

/// Why a fallback did not produce a response.
pub(crate) enum FallbackError {
    /// No fallback region had a node that could take the request.
    NoRegion,
    /// The last region tried failed so.
    Failed(Error),
}

impl FallbackError {
    pub(crate) fn is_no_region(&self) -> bool {
        matches!(self, FallbackError::NoRegion)
    }

    pub(crate) fn into_error(self) -> Error {
        match self {
            FallbackError::NoRegion => Error::new(Kind::NoHealthyUpstream),
            FallbackError::Failed(error) => error,
        }
    }
}

impl Proxy {
    /// Sends `out` to the first fallback region that can take it (see the
    /// module documentation).
    pub(crate) async fn fall_back(
        &self,
        cx: &mut RequestCx,
        pool: &Arc<Pool>,
        fallback: &RegionFallback,
        out: &mut Outgoing,
    ) -> Result<Box<Response>, FallbackError> {
        let cluster = &self.shared.cluster;
        let Some(view) = cluster.regions() else {
            return Err(FallbackError::NoRegion);
        };
        let regions = view.all();
        let applied = cluster.applied();
        let mut last = None;
        for region in fallback
            .regions
            .iter()
            .filter(|r| *r != view.local_region())
        {
            let Some(state) = regions.get(region) else {
                continue;
            };
            let candidates: Vec<NodeId> = state
                .nodes
                .iter()
                .filter(|(_, node)| {
                    node.fresh
                        && node.report.ready
                        && node
                            .report
                            .upstreams
                            .get(pool.name())
                            .is_some_and(|u| u.available > 0)
                })
                .map(|(id, _)| *id)
                .collect();
            let Some(node) = fastrand::choice(&candidates).copied() else {
                continue;
            };
            let Some(member) = applied.state.members.get(&node) else {
                continue;
            };
            let started = Instant::now();
            let outcome = self.forward_to(pool, node, &member.peer, region, out).await;
            let label = if outcome.is_ok() { "served" } else { "failed" };
            self.shared
                .metrics
                .counter(
                    "meridian_fallback_requests_total",
                    &[
                        ("upstream", pool.name().to_owned()),
                        ("region", region.clone()),
                        ("outcome", label.to_owned()),
                    ],
                )
                .increment(1);
            cx.target = Some(ServedBy::Region(format!("{region}/node-{node}")));
            match outcome {
                Ok(response) => {
                    cx.upstream_latency = Some(started.elapsed());
                    return Ok(response);
                }
                Err(error) => {
                    tracing::debug!(%error, region, node, "fallback region failed");
                    last = Some(error);
                    if !out.resendable() {
                        break;
                    }
                }
            }
        }
        Err(last.map_or(FallbackError::NoRegion, FallbackError::Failed))
    }

    /// One forwarded exchange with node `node` of `region`, at `address`.
    async fn forward_to(
        &self,
        pool: &Pool,
        node: NodeId,
        address: &str,
        region: &str,
        out: &mut Outgoing,
    ) -> Result<Box<Response>, Error> {
        let timeouts = pool.definition().timeouts;
        let plane = &self.shared.cluster.plane;
        let stream = tokio::time::timeout(timeouts.connect, plane.open_forward(node, address))
            .await
            .map_err(|_| Error::new(Kind::UpstreamConnectTimeout))?
            .map_err(|error| Error::with_source(Kind::UpstreamConnect, error))?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| Error::with_source(Kind::UpstreamProtocol, error))?;
        self.shared.tasks.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "forwarded exchange ended");
            }
        });
        let mut request = http::Request::new(out.body(self.min_body_rate));
        *request.method_mut() = out.method.clone();
        *request.uri_mut() = http::Uri::from(out.path_and_query.clone());
        let mut headers = out.fields.to_map();
        headers.insert(
            FORWARD_UPSTREAM.clone(),
            HeaderValue::from_str(pool.name()).map_err(|_| Error::new(Kind::Internal))?,
        );
        headers.remove(&FORWARD_HOST);
        if out.preserve_host {
            headers.insert(FORWARD_HOST.clone(), HeaderValue::from_static("preserve"));
        } else if let Ok(host) = HeaderValue::from_str(pool.name()) {
            headers.insert(header::HOST, host);
        }
        headers.insert(FORWARDED_FROM.clone(), self.region.clone());
        *request.headers_mut() = headers;
        let answer = tokio::time::timeout(timeouts.request, sender.send_request(request))
            .await
            .map_err(|_| Error::new(Kind::UpstreamTimeout))?;
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                return Err(
                    match self.client_fault(out, super::client::Error::Send(error)) {
                        Ok(error) | Err(error) => error,
                    },
                );
            }
        };
        if let Some(code) = response.headers().get(&FORWARD_FAILED) {
            return Err(Error::new(remote_failure(code.as_bytes())));
        }
        let mut response =
            self.respond(response.map(FromUpstream::Hyper), None, None, timeouts.idle);
        if !response.headers().contains_key(&X_MERIDIAN_REGION)
            && let Ok(region) = HeaderValue::from_str(region)
        {
            response
                .headers_mut()
                .insert(X_MERIDIAN_REGION.clone(), region);
        }
        Ok(response)
    }

    /// Serves a request another region's node forwarded: proxied to a local
    /// target of the upstream it names, never forwarded again.
    pub async fn serve_forwarded(
        &self,
        snapshot: &Snapshot,
        from: &PeerIdentity,
        req: Request,
    ) -> Response {
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let pool = req
            .headers()
            .get(&FORWARD_UPSTREAM)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| snapshot.pools.get(name))
            .cloned();
        let Some(pool) = pool else {
            return self.forward_failed(Error::new(Kind::NoHealthyUpstream), &request_id);
        };
        self.shared
            .metrics
            .counter(
                "meridian_fallback_served_total",
                &[
                    ("upstream", pool.name().to_owned()),
                    ("from", from.region.clone()),
                ],
            )
            .increment(1);
        let preserve_host = req
            .headers()
            .get(&FORWARD_HOST)
            .is_some_and(|v| v == "preserve");
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        for name in [&FORWARD_UPSTREAM, &FORWARD_HOST, &FORWARDED_FROM] {
            headers.remove(name);
        }
        super::strip_hop_by_hop(&mut headers, false);
        let hash = pool
            .hash_key()
            .and_then(|key| super::request_hash(key, forwarded_client(&headers), &headers));
        let limit = self.shared.config.limits.max_body_bytes;
        let idle = pool.definition().timeouts.idle;
        let mut out = Outgoing {
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            fields: super::UpstreamFields::verbatim(headers),
            preserve_host,
            payload: super::Payload::new(None, body),
            limit,
            body_limit: limit,
            hash,
            idle,
            // Served to the other region through hyper, which needs a map.
            raw_response: false,
        };
        let attempts = if super::is_idempotent(&out.method) {
            1 + pool.definition().retries.attempts
        } else {
            1
        };
        let mut served = Served::default();
        match self
            .send_local(&pool, &mut out, attempts, &mut served)
            .await
        {
            Ok((response, in_flight)) => {
                let mut response = self.respond(*response, None, Some(in_flight), idle);
                response
                    .headers_mut()
                    .insert(X_MERIDIAN_REGION.clone(), self.region.clone());
                *response
            }
            Err(error) => self.forward_failed(error, &request_id),
        }
    }

    /// The JSON error for a forwarded request this node could not serve,
    /// marked so the origin can try the next region.
    fn forward_failed(&self, error: Error, request_id: &str) -> Response {
        let mut response = error.to_response(request_id);
        response.headers_mut().insert(
            FORWARD_FAILED.clone(),
            HeaderValue::from_static(error.code()),
        );
        response
            .headers_mut()
            .insert(X_MERIDIAN_REGION.clone(), self.region.clone());
        response
    }
}

/// The error a serving gateway reported in `x-meridian-forward-failed`.
fn remote_failure(code: &[u8]) -> Kind {
    match code {
        b"upstream_timeout" => Kind::UpstreamTimeout,
        b"upstream_connect_timeout" => Kind::UpstreamConnectTimeout,
        b"no_healthy_upstream" => Kind::NoHealthyUpstream,
        _ => Kind::UpstreamConnect,
    }
}

/// The client's address as the origin appended it to `X-Forwarded-For`.
fn forwarded_client(headers: &http::HeaderMap) -> Option<IpAddr> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Serves the forwarded exchanges a node's peers open (see
/// [`crate::peer::Forwarder`]), holding the gateway weakly.
pub struct ForwardService(pub std::sync::Weak<Gateway>);

#[async_trait::async_trait]
impl Forwarder for ForwardService {
    async fn serve(&self, peer: PeerIdentity, stream: ForwardStream) {
        let Some(gateway) = self.0.upgrade() else {
            return;
        };
        let peer = Arc::new(peer);
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                let peer = peer.clone();
                let req = req.map(crate::body::Inbound::Hyper);
                async move { Ok::<_, Infallible>(gateway.serve_forwarded(&peer, req).await) }
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ)
            .keep_alive(false)
            .max_buf_size(MAX_HEAD);
        if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(%error, "forwarded exchange failed");
        }
    }
}
