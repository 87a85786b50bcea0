//! Bodies that cross the gateway, streamed both ways in constant memory.
//!
//! - [`Body`] is what clients receive: a small complete body (errors, admin
//!   answers) or an upstream's body streamed through, with an idle timeout
//!   and a hook that runs when the response is finished (the access log and
//!   latency metrics), whether it completed or was abandoned. A streamed
//!   body holds the upstream request's [`InFlight`] guard: when the upstream
//!   body ends cleanly the guard gives its connection back to the pool; when
//!   it fails or is abandoned the connection is closed. A body can also be
//!   produced by the gateway as it goes ([`Body::produced`]: the JSON of a
//!   transcoded gRPC stream).
//! - [`UpstreamBody`] is what upstreams receive: nothing, or the client's
//!   body streamed through under the route's size limit and idle timeout.
//!   The client's body sits in a [`Replay`] slot until the first attempt
//!   reads from it, so a failed attempt that never touched the body can be
//!   retried, and one that did cannot.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::proxy::client::Conn;
use crate::proxy::h1::{RawBody, RawFields};
use crate::proxy::pool::InFlight;
use crate::server::Permit;

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent more than the route allows.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// No data moved for the idle timeout.
    #[error("body stalled for longer than the idle timeout ({0:?})")]
    Idle(Duration),
    /// The client sent slower than the minimum rate (bytes per second).
    #[error("request body slower than the minimum of {0} bytes/s")]
    TooSlow(u64),
    /// The peer reset or broke the stream.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The upstream broke the stream or its framing (fast path).
    #[error("upstream body failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs once when a response body is finished: with the bytes sent and
/// whether the body ended cleanly. A closure is one; so is the pipeline's
/// request context, whose own box serves, so ending a request needs no
/// allocation of its own.
pub trait OnEnd: Send {
    /// The body is finished (`clean`) or dropped after `sent` bytes.
    fn end(self: Box<Self>, sent: u64, clean: bool);
}

impl<F: FnOnce(u64, bool) + Send> OnEnd for F {
    fn end(self: Box<Self>, sent: u64, clean: bool) {
        self(sent, clean);
    }
}

/// Re-armable idle timer; allocated only when a body first has to wait.
struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// Data moved: the next wait starts a fresh period.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// The body is waiting: `Ready` when it has waited too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = crate::clock::now() + self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx)
    }
}

/// The one frame of a complete body held as `Option<Bytes>` (`None` once
/// taken).
fn whole_frame<E>(data: &mut Option<Bytes>) -> Option<Result<Frame<Bytes>, E>> {
    data.take().map(|data| Ok(Frame::data(data)))
}

/// The exact size of a complete body held as `Option<Bytes>`.
fn whole_size(data: &Option<Bytes>) -> SizeHint {
    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
}

// === impl Body ===

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(FromUpstream, IdleTimer),
    /// A body the gateway produces as it goes (transcoded gRPC streams).
    Produced(UnsyncBoxBody<Bytes, BodyError>),
}

/// A response body sent to a client.
pub struct Body {
    kind: Kind,
    sent: u64,
    on_end: Option<Box<dyn OnEnd>>,
    held: Option<InFlight>,
    permit: Option<Permit>,
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Self::from_kind(Kind::Empty)
    }

    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::from_kind(Kind::Full(Some(data.into())))
    }

    /// An upstream's body, aborted when it stalls for `idle`.
    pub fn stream(incoming: FromUpstream, idle: Duration) -> Self {
        Self::from_kind(Kind::Stream(incoming, IdleTimer::new(idle)))
    }

    /// A body the gateway writes as it goes; it enforces its own timeouts.
    pub fn produced(body: impl HttpBody<Data = Bytes, Error = BodyError> + Send + 'static) -> Self {
        Self::from_kind(Kind::Produced(UnsyncBoxBody::new(body)))
    }

    fn from_kind(kind: Kind) -> Self {
        Self {
            kind,
            sent: 0,
            on_end: None,
            held: None,
            permit: None,
        }
    }

    /// Keeps the upstream request counted as in flight until the body ends,
    /// and its connection until the body says whether it can be reused.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.held = Some(in_flight);
    }

    /// Keeps the listener's in-flight `permit` until the body is dropped.
    pub(crate) fn keep(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }

    /// Runs `on_end` once the body is finished or dropped.
    pub fn on_end(&mut self, on_end: Box<dyn OnEnd>) {
        self.on_end = Some(on_end);
    }

    /// The upstream response's fields, when the fast path left them raw
    /// (see [`fields_mut`]).
    pub fn raw_fields(&self) -> Option<&RawFields> {
        match &self.kind {
            Kind::Stream(FromUpstream::Raw(raw), _) => raw.raw_fields(),
            _ => None,
        }
    }

    /// The fast path's upstream body, which holds the raw fields.
    fn raw_mut(&mut self) -> Option<&mut RawBody> {
        match &mut self.kind {
            Kind::Stream(FromUpstream::Raw(raw), _) => Some(raw),
            _ => None,
        }
    }

    /// The bytes of a complete body (for tests and admin answers).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(data) => data.as_ref(),
            _ => None,
        }
    }

    /// The body ended cleanly: the upstream request ends, and its
    /// connection goes back to the pool (from the body itself, on the fast
    /// path).
    fn release(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        if let Kind::Stream(upstream, _) = &mut self.kind
            && let Some(conn) = upstream.take_reusable()
        {
            held.keep(Some(conn));
        }
        held.release();
    }

    fn finish(&mut self, clean: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end.end(self.sent, clean);
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // hyper stops polling once a length-delimited body is written, so a
        // stream whose upstream side reached its end counts as complete.
        let clean = match &self.kind {
            Kind::Stream(incoming, _) => incoming.is_end_stream(),
            Kind::Produced(body) => body.is_end_stream(),
            _ => true,
        };
        if clean {
            self.release();
        }
        self.finish(clean);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => None,
            Kind::Full(data) => whole_frame(data),
            Kind::Stream(incoming, idle) => match Pin::new(&mut *incoming).poll_frame(cx) {
                Poll::Ready(frame) => {
                    idle.progress();
                    frame
                }
                Poll::Pending => {
                    ready!(idle.poll_expired(cx));
                    Some(Err(BodyError::Idle(idle.limit)))
                }
            },
            Kind::Produced(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Some(Err(_)) => {
                if let Some(held) = &mut this.held {
                    held.discard();
                }
                this.finish(false);
            }
            None => {
                this.release();
                this.kind = Kind::Empty;
                this.finish(true);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) => data.is_none(),
            Kind::Stream(incoming, _) => incoming.is_end_stream(),
            Kind::Produced(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => whole_size(data),
            Kind::Stream(incoming, _) => incoming.size_hint(),
            Kind::Produced(body) => body.size_hint(),
        }
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::full(text)
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::full(text)
    }
}

/// The response's fields, complete: those the upstream sent that the fast
/// path left raw are parsed into the map first (a field the gateway set
/// already replaces the upstream's of the same name). Everything but the
/// fast path's own writer reads and changes a proxied response's fields
/// through this, not through `headers_mut`.
pub fn fields_mut(response: &mut http::Response<Body>) -> &mut http::HeaderMap {
    if response.body().raw_fields().is_some() {
        // Out and back: the map and the body are both the response's.
        let mut map = std::mem::take(response.headers_mut());
        if let Some(raw) = response.body_mut().raw_mut() {
            raw.fields_into(&mut map);
        }
        *response.headers_mut() = map;
    }
    response.headers_mut()
}

/// Sets `name` on `response` as `HeaderMap::insert` would. While the
/// upstream's fields are raw and the map is empty, the field is kept beside
/// them, and the fast path writes both without building a map.
pub fn set_field(
    response: &mut http::Response<Body>,
    name: http::HeaderName,
    value: http::HeaderValue,
) {
    let (name, value) = if response.headers().is_empty()
        && let Some(raw) = response.body_mut().raw_mut()
    {
        match raw.set_field(name, value) {
            Ok(()) => return,
            Err(field) => field,
        }
    } else {
        (name, value)
    };
    response.headers_mut().insert(name, value);
}

// === impl FromUpstream ===

/// An upstream's response body: read by hyper's client, or by the fast
/// path's own exchange ([`crate::proxy::h1`]), which holds the connection
/// until the body ends.
pub enum FromUpstream {
    /// From hyper's client (HTTP/2, upgrades, streamed request bodies).
    Hyper(Incoming),
    /// From the fast path.
    Raw(RawBody),
}

impl FromUpstream {
    /// The connection the body was read from, once it ended cleanly and
    /// can be reused (fast path only: hyper's stay with their sender).
    pub fn take_reusable(&mut self) -> Option<Conn> {
        match self {
            FromUpstream::Hyper(_) => None,
            FromUpstream::Raw(body) => body.take_reusable().map(Conn::Raw),
        }
    }
}

impl HttpBody for FromUpstream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            FromUpstream::Hyper(incoming) => {
                Pin::new(incoming).poll_frame(cx).map_err(BodyError::from)
            }
            FromUpstream::Raw(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FromUpstream::Hyper(incoming) => incoming.is_end_stream(),
            FromUpstream::Raw(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FromUpstream::Hyper(incoming) => incoming.size_hint(),
            FromUpstream::Raw(body) => body.size_hint(),
        }
    }
}

// === impl Inbound ===

/// A client's request body as the listener received it: streamed by hyper,
/// or already read whole with its head by the HTTP/1.1 fast path
/// ([`crate::server`]).
pub enum Inbound {
    /// Read by hyper as the stages and the proxy poll it.
    Hyper(Incoming),
    /// Complete (possibly empty): it arrived with the request head.
    Buffered(Option<Bytes>),
}

impl HttpBody for Inbound {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Inbound::Hyper(incoming) => Pin::new(incoming).poll_frame(cx),
            Inbound::Buffered(data) => Poll::Ready(whole_frame(data)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(incoming) => incoming.is_end_stream(),
            Inbound::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(incoming) => incoming.size_hint(),
            Inbound::Buffered(data) => whole_size(data),
        }
    }
}

// === impl Replay ===

/// The start of a request body that a stage (the WAF) already read; stored
/// in the request's extensions, it is sent upstream before the rest.
#[derive(Clone, Default)]
pub struct BufferedPrefix {
    /// Data frames, as received.
    pub data: Vec<Bytes>,
    /// Trailers, if the body ended with them.
    pub trailers: Option<http::HeaderMap>,
    /// The data is the whole body, already held to the route's limit (a
    /// transform replaced it): the proxy sends it without a second check.
    pub complete: bool,
}

impl BufferedPrefix {
    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    /// The frames to send first.
    pub fn into_frames(self) -> VecDeque<Frame<Bytes>> {
        self.data
            .into_iter()
            .map(Frame::data)
            .chain(self.trailers.map(Frame::trailers))
            .collect()
    }
}

/// A client body: frames already read, then the rest still to come.
struct Source {
    prefix: VecDeque<Frame<Bytes>>,
    incoming: Inbound,
}

/// Holds a client's request body until one upstream attempt starts reading it.
#[derive(Clone)]
pub struct Replay {
    slot: Arc<Mutex<Option<Source>>>,
    size: SizeHint,
}

impl Replay {
    /// Parks `incoming` for the first attempt.
    pub fn new(incoming: Inbound) -> Self {
        Self::with_prefix(VecDeque::new(), incoming)
    }

    /// Parks `prefix`, then `incoming`, for the first attempt.
    pub fn with_prefix(prefix: VecDeque<Frame<Bytes>>, incoming: Inbound) -> Self {
        let buffered: u64 = prefix
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = incoming.size_hint();
        let mut size = SizeHint::new();
        size.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            size.set_upper(upper + buffered);
        }
        Self {
            size,
            slot: Arc::new(Mutex::new(Some(Source { prefix, incoming }))),
        }
    }

    /// Whether an attempt has started streaming the body, after which no
    /// other attempt can send it.
    pub fn consumed(&self) -> bool {
        self.slot.lock().map_or(true, |slot| slot.is_none())
    }

    fn take(&self) -> Option<Source> {
        self.slot.lock().ok().and_then(|mut slot| slot.take())
    }
}

// === impl UpstreamBody ===

/// A request body sent to an upstream.
pub enum UpstreamBody {
    /// No body.
    Empty,
    /// A complete body (health checks).
    Full(Option<Bytes>),
    /// The client's body, streamed.
    Client(ClientBody),
}

/// How the client's side of a request body ended, when it ended badly.
/// Shared between the body (which sets it) and the proxy (which turns an
/// upstream failure caused by it into the client's error).
#[derive(Default)]
pub struct ClientFault(std::sync::atomic::AtomicU8);

/// What the client did wrong while sending a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// More than the route's limit.
    TooLarge,
    /// Stopped sending for longer than the idle timeout.
    Stalled,
    /// Sent slower than the minimum body rate.
    TooSlow,
    /// Reset or broke the stream.
    Broken,
}

impl ClientFault {
    fn set(&self, fault: Fault) {
        let code = match fault {
            Fault::TooLarge => 1,
            Fault::Stalled => 2,
            Fault::Broken => 3,
            Fault::TooSlow => 4,
        };
        self.0.store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fault, if the client's body failed.
    pub fn get(&self) -> Option<Fault> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(Fault::TooLarge),
            2 => Some(Fault::Stalled),
            3 => Some(Fault::Broken),
            4 => Some(Fault::TooSlow),
            _ => None,
        }
    }
}

/// The minimum rate a client must send its body at (`limits.min-body-rate`).
///
/// Only the time the gateway spends waiting on the client counts (not the
/// time the upstream takes to accept the bytes): the body fails once that
/// waiting time exceeds `grace + bytes_received / min_rate`. A client that
/// pauses for a while and then catches up is fine; one that dribbles a byte
/// now and then falls behind and gets 408.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// Waiting time always allowed.
    pub grace: Duration,
}

struct RateTimer {
    rate: MinRate,
    waited: Duration,
    waiting_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl RateTimer {
    fn new(rate: MinRate) -> Self {
        Self {
            rate,
            waited: Duration::ZERO,
            waiting_since: None,
            sleep: None,
        }
    }

    fn progress(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// The body is waiting on the client: `Ready` when it is behind the rate.
    fn poll_behind(&mut self, read: u64, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let allowed = self.rate.grace
            + Duration::from_secs_f64(read as f64 / self.rate.bytes_per_second as f64);
        let waited = self.waited + now.duration_since(since);
        let Some(left) = allowed.checked_sub(waited).filter(|left| !left.is_zero()) else {
            return Poll::Ready(());
        };
        let deadline = now + left;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().reset(deadline);
        sleep.as_mut().poll(cx)
    }
}

/// The client's body on its way upstream, under a size limit, an idle
/// timeout and a minimum rate.
pub struct ClientBody {
    replay: Replay,
    prefix: VecDeque<Frame<Bytes>>,
    incoming: Option<Inbound>,
    read: u64,
    limit: u64,
    fault: Arc<ClientFault>,
    idle: IdleTimer,
    rate: Option<RateTimer>,
}

impl ClientBody {
    /// Streams the body parked in `replay` once polled; a failure on the
    /// client's side is recorded in `fault`.
    pub fn new(replay: Replay, limit: u64, idle: Duration, fault: Arc<ClientFault>) -> Self {
        Self {
            replay,
            prefix: VecDeque::new(),
            incoming: None,
            read: 0,
            limit,
            fault,
            idle: IdleTimer::new(idle),
            rate: None,
        }
    }

    /// Also fails the body when the client sends slower than `rate`.
    pub fn min_rate(mut self, rate: Option<MinRate>) -> Self {
        self.rate = rate.map(RateTimer::new);
        self
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let body = match self.get_mut() {
            UpstreamBody::Empty => return Poll::Ready(None),
            UpstreamBody::Full(data) => {
                return Poll::Ready(whole_frame(data));
            }
            UpstreamBody::Client(body) => body,
        };
        if body.incoming.is_none() {
            match body.replay.take() {
                Some(source) => {
                    body.prefix = source.prefix;
                    body.incoming = Some(source.incoming);
                }
                None => return Poll::Ready(None),
            }
        }
        let Some(incoming) = body.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match body.prefix.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(incoming).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                body.idle.progress();
                if let Some(rate) = &mut body.rate {
                    rate.progress();
                }
                if let Some(data) = frame.data_ref() {
                    body.read += data.len() as u64;
                    if body.read > body.limit {
                        body.fault.set(Fault::TooLarge);
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: body.limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                body.fault.set(Fault::Broken);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some(rate) = &mut body.rate
                    && rate.poll_behind(body.read, cx).is_ready()
                {
                    body.fault.set(Fault::TooSlow);
                    return Poll::Ready(Some(Err(BodyError::TooSlow(rate.rate.bytes_per_second))));
                }
                ready!(body.idle.poll_expired(cx));
                body.fault.set(Fault::Stalled);
                Poll::Ready(Some(Err(BodyError::Idle(body.idle.limit))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(data) => data.is_none(),
            UpstreamBody::Client(body) => {
                body.prefix.is_empty() && body.incoming.as_ref().is_some_and(|i| i.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(data) => whole_size(data),
            UpstreamBody::Client(body) => match &body.incoming {
                Some(incoming) if body.prefix.is_empty() => incoming.size_hint(),
                Some(_) => SizeHint::default(),
                None => body.replay.size,
            },
        }
    }
}

/// The next frame of a client's request body, waiting at most `idle` for
/// it: `None` at the end, 408 when the client stalls, 400 when it breaks
/// the body off. Stages that buffer a body read it with this.
pub async fn next_request_frame(
    body: &mut Inbound,
    idle: Duration,
) -> Result<Option<Frame<Bytes>>, crate::error::Error> {
    use crate::error::{Error, Kind};
    let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(idle, next).await {
        Err(_elapsed) => Err(Kind::ClientTimeout.into()),
        Ok(None) => Ok(None),
        Ok(Some(Err(error))) => Err(Error::with_source(Kind::ClientAborted, error)),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
    }
}
