//! The terminal step of the request path: forward the request to a target
//! of the route's upstream and stream the answer back.
//!
//! - Headers: hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every
//!   field it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//!   `Transfer-Encoding`, `Upgrade`, plus `Proxy-Authorization` and
//!   `Expect`) are removed both ways; `X-Forwarded-For/-Proto/-Host` and
//!   `Forwarded` (RFC 7239) are appended; `x-request-id`, `traceparent` and
//!   `x-api-version` are set. `Host` is the target's address unless the
//!   route preserves the client's.
//! - Bodies stream both ways; the request body is capped by the route's
//!   limit (413) and both directions are cut after the idle timeout.
//! - `Expect: 100-continue` is answered by the gateway when the body is
//!   first read, so a request refused before proxying never sends its body.
//! - WebSocket (HTTP/1.1 `Upgrade`) is tunnelled after the upstream's 101.
//! - Timeouts: connect (504 `upstream_connect_timeout`), request, to the
//!   response head (504 `upstream_timeout`); a refused connection is 502. A
//!   client that stalls its request body past the idle timeout gets 408, one
//!   that breaks it 400 (it is usually gone by then).
//! - Retries: only idempotent methods, only after failures that happened
//!   before the upstream answered (connect errors, resets), only while the
//!   request body was not streamed, on another target when there is one,
//!   and only within the upstream's retry budget. (A pooled connection found
//!   closed under a request that was not sent yet is replaced by the client
//!   itself, without an attempt or the budget: see [`client`].)
//! - Connections: the pool's [`client::Client`] sends the request in origin
//!   form; the HTTP/1.1 connection it used rides with the response body's
//!   [`pool::InFlight`] guard and is reused only if that body ends cleanly.

pub mod client;
pub mod fallback;
pub mod fetch;
pub mod fields;
pub mod h1;
pub mod health;
pub mod pool;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use raft::model::HashKey;
use tracing::Instrument;

use crate::Shared;
use crate::body::{
    Body, BufferedPrefix, ClientBody, ClientFault, Fault, FromUpstream, Inbound, MinRate, Replay,
    UpstreamBody,
};
use crate::error::{Error, Kind};
use crate::pipeline::{Request, RequestCx, Response, ServedBy};
use crate::text::Peer;
pub use fields::UpstreamFields;
pub(crate) use fields::upstream_headers;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The `close` connection option (RFC 9112 §9.6) as a field name: a field
/// of that name goes no further than a `Connection` that lists it.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// The proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    min_body_rate: Option<MinRate>,
    /// This node's region, the value of `x-meridian-region`.
    region: HeaderValue,
}

impl Proxy {
    /// A proxy using the node's shared services.
    pub fn new(shared: Arc<Shared>) -> Self {
        let config = &shared.config;
        let min_body_rate = config.limits.min_body_rate.map(|bytes_per_second| MinRate {
            bytes_per_second,
            grace: config.timeouts.body_rate_grace,
        });
        let region = region_value(&config.region);
        Self {
            shared,
            min_body_rate,
            region,
        }
    }

    /// Counts a request body the client sent too slowly.
    fn slow_body(&self, reason: &'static str) {
        self.shared
            .metrics
            .counter(
                "meridian_slow_request_bodies_total",
                &[("reason", reason.to_owned())],
            )
            .increment(1);
    }

    /// Forwards `req` along `route`, the one the `route` stage chose: to a
    /// local target, or, when the upstream has a `fallback` and no local
    /// target can take it, to another region's gateway ([`fallback`]).
    ///
    /// The pipeline lends `route` out of `cx` (`cx.route` is `None`
    /// meanwhile): cloning its `Arc` would be two atomic operations a
    /// request. Nothing on the way reads `cx.route`.
    pub async fn forward(
        &self,
        route: Option<&crate::pipeline::route::Route>,
        cx: &mut RequestCx,
        mut req: Box<Request>,
    ) -> Result<Box<Response>, Error> {
        let Some(route) = route else {
            return Err(Kind::NoRoute.into());
        };
        let pool = &route.upstream;
        let timeouts = pool.definition().timeouts;
        let limit = route
            .max_body
            .unwrap_or(self.shared.config.limits.max_body_bytes);
        let replaced = req
            .extensions()
            .get::<BufferedPrefix>()
            .is_some_and(|prefix| prefix.complete);
        // A body that came with the head (the fast path) is its own length,
        // and such a request is never an upgrade: those go to hyper.
        let (declared, hyper) = match req.body() {
            Inbound::Buffered(data) => (data.as_ref().map(|data| data.len() as u64), false),
            Inbound::Hyper(_) => (content_length(req.headers()), true),
        };
        if !replaced && declared.is_some_and(|len| len > limit) {
            return Err(Kind::PayloadTooLarge { limit }.into());
        }
        let upgrade = hyper && is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
        // The parts are taken out of the box, which is not moved whole.
        let prefix = req.extensions_mut().remove::<BufferedPrefix>();
        let hash = pool
            .hash_key()
            .and_then(|key| request_hash(key, Some(cx.client_ip), req.headers()));
        let body = std::mem::replace(req.body_mut(), Inbound::Buffered(None));
        let payload = Payload::new(prefix, body);
        let path_and_query = match req.uri().path_and_query() {
            // Neither rewritten nor changed by normalising: the client's,
            // shared rather than copied and checked again. (Moved out of
            // the URI instead, it cost about 100 instructions more than the
            // share's two atomic operations: `Uri::into_parts`.)
            Some(original) if cx.rewritten.is_none() && original.path() == cx.path => {
                original.clone()
            }
            _ => path_and_query(cx.upstream_path(), req.uri().query())?,
        };
        let preserve_host = route.preserve_host && cx.authority.is_some();
        let mut out = Outgoing {
            fields: UpstreamFields::new(
                cx,
                std::mem::take(req.headers_mut()),
                upgrade,
                preserve_host,
            ),
            path_and_query,
            method: std::mem::take(req.method_mut()),
            preserve_host,
            payload,
            limit,
            // A body a transform replaced was held to the limit before.
            body_limit: if replaced { u64::MAX } else { limit },
            hash,
            idle: timeouts.idle,
            raw_response: true,
        };
        drop(req);
        let attempts = if is_idempotent(&out.method) && !upgrade {
            1 + pool.definition().retries.attempts
        } else {
            1
        };
        // Upgrades are not forwarded to other regions.
        let fallback = pool
            .definition()
            .fallback
            .as_ref()
            .filter(|_| !upgrade && self.shared.cluster.regions().is_some());
        let mut fell_back = false;
        if let Some(fallback) = fallback
            && pool.away.stays_away(pool, fallback.return_after)
        {
            fell_back = true;
            match Box::pin(self.fall_back(cx, pool, fallback, &mut out)).await {
                Ok(response) => return Ok(response),
                // The local targets are the last resort.
                Err(_) if out.resendable() => {}
                Err(error) => return Err(error.into_error()),
            }
        }
        let mut served = Served::default();
        let result = self.send_local(pool, &mut out, attempts, &mut served).await;
        cx.target = served.target.map(ServedBy::Target);
        cx.upstream_latency = served.latency;
        match result {
            Ok((response, in_flight)) => {
                let mut response =
                    self.respond(*response, client_upgrade, Some(in_flight), timeouts.idle);
                crate::body::set_field(
                    &mut response,
                    fallback::X_MERIDIAN_REGION.clone(),
                    self.region.clone(),
                );
                Ok(response)
            }
            Err(error)
                if let Some(fallback) = fallback
                    && !fell_back
                    && (error.retryable() || matches!(error.kind(), Kind::NoHealthyUpstream))
                    && out.resendable() =>
            {
                pool.away.leave(pool);
                match Box::pin(self.fall_back(cx, pool, fallback, &mut out)).await {
                    Ok(response) => Ok(response),
                    Err(fallback_error) if fallback_error.is_no_region() => Err(error),
                    Err(fallback_error) => Err(fallback_error.into_error()),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Sends `out` to a target of `pool`, retrying idempotent requests on
    /// failures before an answer (see the module documentation). `served`
    /// records the last target tried and the answer's latency. `out` stays
    /// complete, for a fallback after the last attempt.
    pub(crate) async fn send_local(
        &self,
        pool: &Arc<pool::Pool>,
        out: &mut Outgoing,
        attempts: u32,
        served: &mut Served,
    ) -> Result<(Box<http::Response<FromUpstream>>, pool::InFlight), Error> {
        let timeouts = pool.definition().timeouts;
        let set = pool.targets();
        let mut tried: Vec<usize> = Vec::with_capacity(attempts as usize);
        let mut last_error = None;
        for attempt in 0..attempts {
            if attempt > 0 && (!out.resendable() || !pool.try_retry()) {
                break;
            }
            let index = match pool.pick(&set, out.hash, &tried) {
                Some(index) => index,
                // Every healthy target was tried: try them again in turn.
                None if !tried.is_empty() => match pool.pick(&set, out.hash, &[]) {
                    Some(index) => index,
                    None => break,
                },
                None => {
                    pool.metrics.error("no_healthy_upstream");
                    return Err(Kind::NoHealthyUpstream.into());
                }
            };
            tried.push(index);
            let target = &set[index];
            // The attempt's own field is `Host`; the rest is shared by every
            // attempt and borrowed, not copied.
            let host = (!out.preserve_host).then(|| target.authority.as_str());
            let result = match out.whole() {
                Some(body) if pool.client.sends_whole() => {
                    let head = h1::RequestHead {
                        method: &out.method,
                        target: out.path_and_query.as_str(),
                        host,
                        fields: None,
                        common: Some(&out.fields),
                        raw_response: out.raw_response,
                    };
                    pool.exchange_whole(&set, index, &head, body, timeouts.request)
                        .await
                }
                _ => {
                    let mut request = http::Request::new(out.body(self.min_body_rate));
                    *request.method_mut() = out.method.clone();
                    *request.uri_mut() = Uri::from(out.path_and_query.clone());
                    if let Some(host) = host.and_then(|host| HeaderValue::from_str(host).ok()) {
                        request.headers_mut().insert(header::HOST, host);
                    }
                    Box::pin(pool.exchange(
                        &set,
                        index,
                        request,
                        Some(&out.fields),
                        timeouts.request,
                    ))
                    .await
                }
            };
            served.target = Some(target.peer);
            let error = match result {
                Ok((response, in_flight, latency)) => {
                    served.latency = Some(latency);
                    let failed = response.status().is_server_error();
                    if failed {
                        pool.metrics.error("status_5xx");
                    }
                    pool.record(&set, index, !failed);
                    return Ok((response, in_flight));
                }
                Err(pool::Failed::Send(error)) => match self.client_fault(out, error) {
                    Ok(error) => error,
                    Err(fault) => return Err(fault),
                },
                Err(pool::Failed::Timeout) => Error::new(Kind::UpstreamTimeout),
            };
            pool.metrics.error(error.code());
            pool.record(&set, index, false);
            let retryable = error.retryable();
            last_error = Some(error);
            if !retryable {
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| Error::new(Kind::NoHealthyUpstream)))
    }

    /// A failed exchange as the data plane's error: `Err` when the client's
    /// body was at fault (too large, stalled, too slow, broken), which ends
    /// the request whatever else could be tried.
    fn client_fault(&self, out: &Outgoing, error: client::Error) -> Result<Error, Error> {
        let fault = match &out.payload {
            Payload::Streamed(_, fault) => fault.get(),
            Payload::Empty | Payload::Whole(_) => None,
        };
        match fault {
            Some(Fault::TooLarge) => Err(Kind::PayloadTooLarge { limit: out.limit }.into()),
            Some(Fault::Stalled) => {
                self.slow_body("stalled");
                Err(Kind::ClientTimeout.into())
            }
            Some(Fault::TooSlow) => {
                self.slow_body("too_slow");
                let min_rate = self.min_body_rate.map_or(0, |r| r.bytes_per_second);
                Err(Kind::ClientTooSlow { min_rate }.into())
            }
            Some(Fault::Broken) => Err(Error::with_source(Kind::ClientAborted, error)),
            None => Ok(classify(error)),
        }
    }

    /// The upstream's response on its way to the client: hop-by-hop fields
    /// removed, the body streamed (and `in_flight` held until it ends), or
    /// the tunnel started after a 101. Boxed here, where it is made: it
    /// goes back through the request's async layers as a pointer rather
    /// than 256 bytes copied into each.
    fn respond(
        &self,
        mut response: http::Response<FromUpstream>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        in_flight: Option<pool::InFlight>,
        idle: std::time::Duration,
    ) -> Box<Response> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client) = client_upgrade
        {
            let upstream = hyper::upgrade::on(&mut response);
            let span = tracing::info_span!("tunnel");
            self.shared
                .tasks
                .spawn(tunnel(client, upstream, in_flight).instrument(span));
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Box::new(http::Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, incoming) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let mut body = Body::stream(incoming, idle);
        if let Some(in_flight) = in_flight {
            body.hold(in_flight);
        }
        Box::new(http::Response::from_parts(parts, body))
    }
}

/// `region` as a field value that every response shares without a
/// reference count (two atomic operations a request): a static string.
/// Each distinct name is interned, leaked once for the process, which
/// serves one region (a few in tests).
fn region_value(region: &str) -> HeaderValue {
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    // What `from_static` takes: visible ASCII, spaces and tabs.
    if !region
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return HeaderValue::from_static("unknown");
    }
    let mut interned = crate::sync::lock(&INTERNED);
    let name = match interned.iter().find(|name| **name == region) {
        Some(name) => *name,
        None => {
            let name: &'static str = Box::leak(region.into());
            interned.push(name);
            name
        }
    };
    HeaderValue::from_static(name)
}

/// A request made ready for upstreams: what every attempt sends, to a local
/// target or to another region's gateway.
pub(crate) struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    /// Everything but `Host`, which each attempt sets.
    fields: UpstreamFields,
    /// Keep the client's `Host` (in `headers`) instead of the target's.
    preserve_host: bool,
    /// The client's body.
    payload: Payload,
    /// The route's body limit (for the 413's message).
    limit: u64,
    /// The limit the body is held to on the way.
    body_limit: u64,
    hash: Option<u64>,
    idle: std::time::Duration,
    /// A fast-path response may keep its fields raw (`h1::RawFields`): the
    /// pipeline's requests, whose responses reach everything that reads
    /// their fields through `body::fields_mut`.
    raw_response: bool,
}

impl Outgoing {
    /// Whether the request may still be sent (again): it has no body, or
    /// its body was not streamed to an earlier attempt.
    fn resendable(&self) -> bool {
        match &self.payload {
            Payload::Streamed(replay, _) => !replay.consumed(),
            Payload::Empty | Payload::Whole(_) => true,
        }
    }

    /// The body, when the fast path can send the request: it is complete
    /// (or absent) and the request is no upgrade.
    fn whole(&self) -> Option<Option<&Bytes>> {
        match &self.payload {
            _ if self.fields.upgrade() => None,
            Payload::Empty => Some(None),
            Payload::Whole(data) => Some(Some(data)),
            Payload::Streamed(..) => None,
        }
    }

    /// The body of one attempt.
    fn body(&self, min_rate: Option<MinRate>) -> UpstreamBody {
        match &self.payload {
            Payload::Empty => UpstreamBody::Empty,
            Payload::Whole(data) => UpstreamBody::Full(Some(data.clone())),
            Payload::Streamed(replay, fault) => UpstreamBody::Client(
                ClientBody::new(replay.clone(), self.body_limit, self.idle, fault.clone())
                    .min_rate(min_rate),
            ),
        }
    }
}

/// A client's request body as the attempts send it.
pub(crate) enum Payload {
    /// None.
    Empty,
    /// Complete: it came with the request head (the fast path), and every
    /// attempt sends it whole.
    Whole(Bytes),
    /// Streamed from the client by the first attempt that takes it, and
    /// what went wrong with it on the way, if anything did.
    Streamed(Replay, Arc<ClientFault>),
}

impl Payload {
    /// The payload of `body`, after the `prefix` a stage read of it.
    pub(crate) fn new(prefix: Option<BufferedPrefix>, body: Inbound) -> Self {
        match (prefix, body) {
            (Some(prefix), body) if !prefix.is_empty() => {
                Payload::streamed(Replay::with_prefix(prefix.into_frames(), body))
            }
            (_, Inbound::Buffered(None)) => Payload::Empty,
            (_, Inbound::Buffered(Some(data))) => Payload::Whole(data),
            (_, body) if http_body::Body::is_end_stream(&body) => Payload::Empty,
            (_, body) => Payload::streamed(Replay::new(body)),
        }
    }

    fn streamed(replay: Replay) -> Self {
        Payload::Streamed(replay, Arc::default())
    }
}

/// Which target served, and how fast it answered.
#[derive(Default)]
pub(crate) struct Served {
    target: Option<Peer>,
    latency: Option<std::time::Duration>,
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: Option<pool::InFlight>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(error) => tracing::debug!(%error, "tunnel ended"),
    }
}

/// A client failure as the data plane's error (see [`client::Error::kind`]).
fn classify(error: client::Error) -> Error {
    Error::with_source(error.kind(), error)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The `Content-Length` a message declares, if any and valid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `name` is listed in the `Connection` header(s).
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_upgrade(req: &Request) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Fields that describe one hop, never forwarded (RFC 9110 §7.6.1, plus
/// the proxy credentials the gateway consumes).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// [`is_hop_by_hop`] for a name as it came, in any case.
fn is_hop_by_hop_name(name: &[u8]) -> bool {
    // By length first: most names have none of these lengths.
    let hop: &[u8] = match name.len() {
        2 => b"te",
        7 if name[0].eq_ignore_ascii_case(&b't') => b"trailer",
        7 => b"upgrade",
        10 if name[0].eq_ignore_ascii_case(&b'c') => b"connection",
        10 => b"keep-alive",
        16 => b"proxy-connection",
        17 => b"transfer-encoding",
        18 => b"proxy-authenticate",
        19 => b"proxy-authorization",
        _ => return false,
    };
    crate::text::eq_ignore_ascii_case(name, hop)
}

/// Field names listed in `Connection`, which are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(listed_names)
        .collect()
}

/// The field names one `Connection` value lists. The two options clients
/// send most come as constants: `HeaderName::from_bytes` allocates a name
/// that is no standard one.
///
/// Split as bytes: a token that is no field name (obs-text included) is
/// skipped, the others are still listed.
fn listed_names(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    crate::text::list_items(value.as_bytes()).filter_map(|t| {
        if crate::text::eq_ignore_ascii_case(t, b"close") {
            Some(CLOSE.clone())
        } else if crate::text::eq_ignore_ascii_case(t, b"keep-alive") {
            Some(KEEP_ALIVE.clone())
        } else {
            HeaderName::from_bytes(t).ok()
        }
    })
}

/// Whether `TE` asks for trailers (the only TE value forwarded, for gRPC).
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get(header::TE).is_some_and(asks_for_trailers)
}

/// Whether one `TE` value lists `trailers`.
fn asks_for_trailers(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
    })
}

/// Removes hop-by-hop fields in place; `upgrade` keeps `Upgrade` and sets
/// `Connection: upgrade`. Most responses carry none, so the map is scanned
/// once before anything is removed.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let trailers = wants_trailers(headers);
    for name in connection_listed(headers) {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    remove_fields(headers, is_hop_by_hop);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(value) = upgrade_value {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes every field whose name matches; allocates only when one does.
pub(crate) fn remove_fields(headers: &mut HeaderMap, matches: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&matches) {
        return;
    }
    let present: Vec<HeaderName> = headers.keys().filter(|n| matches(n)).cloned().collect();
    for name in present {
        headers.remove(&name);
    }
}

/// The origin-form target sent upstream: the rewritten path and the
/// client's query.
fn path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, Error> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(text)).map_err(|_| {
        Error::bad_request("invalid_path", "the upstream path is not a valid URI path")
    })
}

/// The consistent-hash key of a request, if present.
fn request_hash(
    key: &HashKey,
    client: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Option<u64> {
    match key {
        HashKey::ClientIp => client.map(pool::hash_ip),
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| pool::hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| pool::hash(v.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_values_are_interned_and_only_visible_ascii() {
        let first = region_value("eu-west");
        let again = region_value(&String::from("eu-west"));
        assert_eq!(first, "eu-west");
        assert_eq!(
            first.as_bytes().as_ptr(),
            again.as_bytes().as_ptr(),
            "one copy"
        );
        assert_eq!(region_value("us east\t2"), "us east\t2");
        assert_eq!(region_value("zürich"), "unknown");
        assert_eq!(region_value("a\nb"), "unknown");
    }

    #[test]
    fn hop_by_hop_names_read_alike_as_bytes_and_as_names() {
        let names = [
            "connection",
            "Connection",
            "KEEP-ALIVE",
            "keep-alive",
            "te",
            "TE",
            "trailer",
            "Trailer",
            "upgrade",
            "Upgrade",
            "transfer-encoding",
            "Transfer-Encoding",
            "proxy-connection",
            "proxy-authenticate",
            "Proxy-Authorization",
            // Same lengths, other names.
            "tk",
            "warning",
            "trailers",
            "content-md",
            "x-upgrade",
            "x-keepalive1",
            "content-location",
            "x-transfer-encode",
            "x-proxy-authentica",
            "x-proxy-authorizati",
            "date",
            "content-length",
            "server",
        ];
        for name in names {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(
                is_hop_by_hop_name(name.as_bytes()),
                is_hop_by_hop(&parsed),
                "{name}"
            );
        }
    }

    #[test]
    fn connection_lists_names_around_a_token_that_is_none() {
        let value =
            HeaderValue::from_bytes(b" Close ,x-a, x-\xe9t\xe9 ,,\tKeep-Alive,X-B").unwrap();
        let listed: Vec<HeaderName> = listed_names(&value).collect();
        assert_eq!(
            listed,
            [
                CLOSE.clone(),
                "x-a".parse().unwrap(),
                KEEP_ALIVE.clone(),
                "x-b".parse().unwrap()
            ]
        );
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = headers.clone();
        strip_hop_by_hop(&mut plain, false);
        let mut names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(plain[header::TE], "trailers");
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn idempotency() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
