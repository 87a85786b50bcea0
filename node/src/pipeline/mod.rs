//! The request path: an ordered list of stages, then the proxy, then
//! `observe`, which always runs.
//!
//! ```text
//! headers -> admit -> ip (global) -> version -> route -> ip (route) -> tls -> cors -> waf
//!   -> auth -> limit -> transform -> aggregate -> graphql -> grpc -> [proxy]
//!   -> on_response hooks
//!   in reverse order (transform's first, headers' last) -> observe
//! ```
//! Each stage's `on_request` runs in order until one answers the request
//! itself (`Flow::Respond`) or fails; the proxy forwards what got through.
//! `aggregate` is terminal on routes that compose their answer from several
//! upstream calls: it always answers, so the proxy never runs for them;
//! `graphql` likewise on routes that answer GraphQL queries from upstream
//! calls, and so is `grpc` on routes that transcode REST calls to a gRPC service.
//! Then the `on_response` hooks of the stages that ran are called in reverse
//! order, and `observe` stamps the request id and trace context, counts the
//! request and schedules its access-log line. The order is written once, in
//! [`build`].
//!
//! Stages talk only through [`RequestCx`]. They read the configuration from
//! the immutable [`Snapshot`] the request was started with, so a reload never
//! changes the rules under a request in flight, and nothing here awaits the
//! control plane.

pub mod admit;
pub mod aggregate;
pub mod auth;
pub mod cors;
pub mod graphql;
pub mod grpc;
pub mod headers;
pub mod ip;
pub mod limit;
pub mod observe;
pub mod policy;
pub mod route;
pub mod transform;
pub mod version;
pub mod waf;

use std::future::{Future, Ready};
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::{BoxFuture, Either};

use http::HeaderValue;
use tokio::time::Instant;

use crate::body::{Body, Inbound};
use crate::error::Error;
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::text::Peer;
use crate::{Shared, trace};

/// A client request as it enters the pipeline.
pub type Request = http::Request<Inbound>;
/// A response on its way to the client.
pub type Response = http::Response<Body>;

/// What a stage decided.
pub enum Flow {
    /// Hand the request to the next stage.
    Continue,
    /// Answer now; later stages and the proxy are skipped. Boxed so the
    /// common `Continue` stays one word.
    Respond(Box<Response>),
}

/// What a stage's hook returns: the outcome it reached at once, or, for work
/// that has to wait (a request body, a token endpoint, a rate-limit queue, an
/// upstream call), a boxed future. Most hooks on most requests decide without
/// waiting, so the common case costs neither an allocation nor a poll of its
/// own.
pub type Step<'a, T> = Either<Ready<Result<T, Error>>, BoxFuture<'a, Result<T, Error>>>;

/// A hook's outcome, reached without waiting.
pub fn ready<'a, T>(result: Result<T, Error>) -> Step<'a, T> {
    Either::Left(std::future::ready(result))
}

/// A hook's outcome, once `work` has waited for what it needs.
pub fn wait<'a, T>(work: impl Future<Output = Result<T, Error>> + Send + 'a) -> Step<'a, T> {
    Either::Right(Box::pin(work))
}

/// A hook's outcome if it was reached at once, else the work to wait for:
/// the pipeline takes a ready outcome without polling, and keeps only the
/// boxed work across its `.await`.
fn settled<T>(step: Step<'_, T>) -> Result<Result<T, Error>, BoxFuture<'_, Result<T, Error>>> {
    match step {
        Either::Left(ready) => Ok(ready.into_inner()),
        Either::Right(work) => Err(work),
    }
}

/// One step of the request path.
pub trait Stage: Send + Sync + 'static {
    /// Name used in logs.
    fn name(&self) -> &'static str;

    /// Inspects or changes the request on its way in.
    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow>;

    /// Inspects or changes the response on its way out. Called only for a
    /// stage whose [`Stage::responds`] says so; the response's fields are
    /// complete in its map by then (see [`crate::body::fields_mut`]).
    fn on_response<'a>(&'a self, _cx: &'a mut RequestCx, _rsp: &'a mut Response) -> Step<'a, ()> {
        ready(Ok(()))
    }

    /// Whether the stage has an [`Stage::on_response`]. A proxied response
    /// that no such stage acts on goes out with the upstream's fields as
    /// they came, never parsed into a map.
    fn responds(&self) -> bool {
        false
    }

    /// Whether the stage can do anything for requests on `route` under
    /// `snapshot`, with either hook. The pipeline skips both hooks of a
    /// stage that cannot, once the route is known (stages that run before
    /// routing always run). Asked once per route.
    fn acts_on(&self, _route: &route::Route, _snapshot: &Snapshot) -> bool {
        true
    }
}

/// What served a proxied request (the access log's `target`).
#[derive(Debug, Clone)]
pub enum ServedBy {
    /// A target of the route's upstream: the address connected to,
    /// formatted once with the target (a copy, not a reference count).
    Target(Peer),
    /// Another region's gateway: `{region}/node-{id}`.
    Region(String),
}

/// Per-request state shared by the stages.
pub struct RequestCx {
    /// The configuration this request is served under.
    pub snapshot: Arc<Snapshot>,
    /// When the request head was received.
    pub started: Instant,
    /// The client's address (the connection's peer).
    pub client: Peer,
    /// The request's method.
    pub method: http::Method,
    /// The client's IP: the peer's, or the one `X-Forwarded-For` names when
    /// the peer is a trusted proxy (see [`ip`]). Use this, not `client`, to
    /// decide by client address.
    pub client_ip: IpAddr,
    /// What the `cors` stage decided.
    pub cors: Option<cors::Decision>,
    /// `x-request-id`: kept from the client when sane, otherwise generated.
    pub request_id: HeaderValue,
    /// W3C trace context; the span id is the gateway's own.
    pub trace: trace::Context,
    /// `trace` as a `traceparent` value, formatted once; the response
    /// takes it (`observe::finish`).
    pub traceparent: HeaderValue,
    /// The request's host, lowercase and without port.
    pub host: String,
    /// The request's authority as the client sent it (for `X-Forwarded-Host`).
    pub authority: Option<HeaderValue>,
    /// The normalised path; the only path used after `admit`.
    pub path: String,
    /// The route chosen by the `route` stage.
    pub route: Option<Arc<route::Route>>,
    /// The path the route's rewrite made of `path`, to send upstream
    /// (`None`: the route sends `path` as it is).
    pub rewritten: Option<String>,
    /// The API and version chosen by the `version` stage.
    pub api: Option<version::Selected>,
    /// The verified caller, when the route authenticates.
    pub principal: Option<auth::Principal>,
    /// What served the request, for the access log's `target`.
    pub target: Option<ServedBy>,
    /// Time the upstream took to answer with a response head.
    pub upstream_latency: Option<std::time::Duration>,
    /// The error code when the gateway answered with an error.
    pub error: Option<&'static str>,
    /// The TLS connection the request came on (`None`: plain HTTP).
    pub tls: Option<Arc<crate::tls::TlsInfo>>,
    /// The connection closes after this response (a cut-short or slow body).
    pub close: bool,
    /// What the rate limits said, for the response headers.
    pub rate_limit: Option<Box<limit::Report>>,
    /// Set when the response is ready: what its end needs (see `observe`).
    ending: Option<observe::Ending>,
}

impl RequestCx {
    /// A context for a request from `client`.
    pub fn new(snapshot: Arc<Snapshot>, client: Peer) -> Self {
        Self {
            snapshot,
            started: crate::clock::now(),
            client,
            method: http::Method::GET,
            client_ip: client.addr().ip().to_canonical(),
            cors: None,
            request_id: HeaderValue::from_static(""),
            trace: trace::Context::default(),
            traceparent: HeaderValue::from_static(""),
            host: String::new(),
            authority: None,
            path: String::new(),
            route: None,
            rewritten: None,
            api: None,
            principal: None,
            target: None,
            upstream_latency: None,
            error: None,
            tls: None,
            close: false,
            rate_limit: None,
            ending: None,
        }
    }

    /// The route and one of its blocks (`transform`, `aggregate`, …), when
    /// the request has a route with that block: what a stage that acts only
    /// on such routes hands to its work.
    pub fn route_with<T>(
        &self,
        block: impl FnOnce(&route::Route) -> Option<&Arc<T>>,
    ) -> Option<(Arc<route::Route>, Arc<T>)> {
        let route = self.route.as_ref()?;
        Some((route.clone(), block(route)?.clone()))
    }

    /// The path sent upstream: the rewritten one, or the normalised path.
    pub fn upstream_path(&self) -> &str {
        self.rewritten.as_deref().unwrap_or(&self.path)
    }

    /// Turns `error` into the client's response, remembering its code.
    pub fn fail(&mut self, error: Error) -> Response {
        if error.side() != crate::error::Side::Client {
            tracing::warn!(
                %error,
                request_id = ?self.request_id,
                route = self.route.as_ref().map_or("none", |r| r.name.as_str()),
                "request failed"
            );
        }
        self.error = Some(error.code());
        self.close |= error.closes_connection();
        error.to_response(self.request_id.to_str().unwrap_or_default())
    }
}

/// The ordered stages plus the proxy.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    /// The stages that have an `on_response`, a bit each.
    responders: u64,
    proxy: Proxy,
    shared: Arc<Shared>,
}

/// Writes the order of the request path, once.
///
/// # Panics
///
/// If there are more stages than a route's stage mask has bits (64): a
/// change to this list, not to any input.
pub fn build(shared: &Arc<Shared>) -> Pipeline {
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(headers::SecurityHeaders),
        Box::new(admit::Admit::new(&shared.config)),
        Box::new(ip::Ip::global(&shared.metrics)),
        Box::new(version::Version),
        Box::new(route::RouteStage),
        Box::new(ip::Ip::route(&shared.metrics)),
        Box::new(crate::tls::stage::TlsStage::new(
            &shared.config,
            &shared.metrics,
        )),
        Box::new(cors::CorsStage::new(&shared.metrics)),
        Box::new(waf::WafStage::new(&shared.metrics)),
        Box::new(auth::Auth::new(
            shared.cluster.clone(),
            shared.metrics.clone(),
        )),
        Box::new(limit::LimitStage::new(&shared.ratelimit)),
        Box::new(transform::TransformStage::new(&shared.config)),
        Box::new(aggregate::AggregateStage),
        Box::new(graphql::GraphqlStage),
        Box::new(grpc::GrpcStage::new(&shared.config)),
    ];
    assert!(stages.len() <= 64, "a route's stage mask has 64 bits");
    let responders = stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| stage.responds())
        .fold(0, |mask, (i, _)| mask | 1 << i);
    Pipeline {
        stages,
        responders,
        proxy: Proxy::new(shared.clone()),
        shared: shared.clone(),
    }
}

/// The bits of the first `n` stages.
fn first(n: usize) -> u64 {
    1u64.checked_shl(n as u32).map_or(u64::MAX, |bit| bit - 1)
}

impl Pipeline {
    /// The stages that act on `route`, a bit each (see [`Stage::acts_on`]).
    fn active_stages(&self, route: &route::Route, snapshot: &Snapshot) -> u64 {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, stage)| stage.acts_on(route, snapshot))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// The terminal step (which also serves requests forwarded by other
    /// regions).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Serves one request under `snapshot`.
    pub async fn handle(
        &self,
        snapshot: Arc<Snapshot>,
        client: Peer,
        mut req: Box<Request>,
    ) -> Box<Response> {
        // Boxed: it goes to the response body's end, and the request's
        // future stays small to move.
        let mut cx = crate::boxed(|| RequestCx::new(snapshot, client));
        cx.tls = req.extensions().get::<Arc<crate::tls::TlsInfo>>().cloned();
        cx.method = req.method().clone();
        let version = req.version();
        // The stages past the last one that ran have no part in the answer.
        let mut ran = 0;
        let mut answer = None;
        // Every stage runs until the route is known; then only those that
        // act on it. Their bits are visited, not every stage's.
        let mut active = u64::MAX;
        let mut pending = first(self.stages.len());
        while pending != 0 {
            let i = pending.trailing_zeros() as usize;
            pending &= pending - 1;
            let stage = &self.stages[i];
            ran = i + 1;
            let outcome = match settled(stage.on_request(&mut cx, &mut req)) {
                Ok(outcome) => outcome,
                Err(work) => work.await,
            };
            match outcome {
                Ok(Flow::Continue) => {
                    if active == u64::MAX
                        && let Some(route) = &cx.route
                    {
                        active = route.active_stages(|| self.active_stages(route, &cx.snapshot));
                        pending &= active;
                    }
                }
                Ok(Flow::Respond(response)) => {
                    answer = Some(response);
                    break;
                }
                Err(error) => {
                    answer = Some(Box::new(cx.fail(error)));
                    break;
                }
            }
        }
        let mut response = match answer {
            Some(response) => response,
            None => {
                // Lent to the proxy and put back (a forward dropped before
                // its end drops `cx` with it).
                let route = cx.route.take();
                let forwarded = self.proxy.forward(route.as_deref(), &mut cx, req).await;
                cx.route = route;
                match forwarded {
                    Ok(response) => response,
                    Err(error) => Box::new(cx.fail(error)),
                }
            }
        };
        // The stages that ran and have an `on_response`, last first.
        let mut responding = active & self.responders & first(ran);
        if responding != 0 {
            crate::body::fields_mut(&mut response);
        }
        while responding != 0 {
            let i = 63 - responding.leading_zeros() as usize;
            responding &= !(1 << i);
            let stage = &self.stages[i];
            let outcome = match settled(stage.on_response(&mut cx, &mut response)) {
                Ok(outcome) => outcome,
                Err(work) => work.await,
            };
            if let Err(error) = outcome {
                *response = cx.fail(error);
            }
        }
        if cx.close && version <= http::Version::HTTP_11 {
            crate::body::set_field(
                &mut response,
                http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        observe::finish(&self.shared, cx, version, &mut response);
        response
    }
}
