//! The keep-alive client of a pool: carries requests to the pool's targets
//! over connections it keeps per target, built directly on hyper's
//! connection API (`hyper::client::conn`). Between a request and its
//! connection there is one short mutex section per target, no per-request
//! task and no hashed pool key.
//!
//! - **HTTP/1.1** (`protocol: http1`): each target ([`Endpoint`]) keeps a
//!   stack of idle connections, at most `pool.max_idle_per_target`. A
//!   request takes the most recently used one; the connection comes back
//!   ([`Client::release`]) only when the response body has ended cleanly,
//!   which the response body's [`InFlight`](super::pool::InFlight) guard
//!   decides, and only if it is then idle (not still sending a request body
//!   after an early response). A connection whose response was cut short or
//!   failed, or that was upgraded (101), is closed instead ([`Conn`] closes
//!   it on drop).
//! - **HTTP/2** (`protocol: h2`): one multiplexed connection per target,
//!   shared by every request, replaced when it closes. Concurrent requests
//!   that find none wait for one connect rather than each opening their own.
//! - **Connecting**: every endpoint has one socket address; names were
//!   resolved before, in the background ([`crate::dns::discovery`]), so a
//!   request never waits for DNS. The TCP connect is bounded by
//!   `timeouts.connect`; sockets get `TCP_NODELAY` and keep-alive probes
//!   after 60 s.
//! - **Stale connections**: a pooled connection may have been closed by the
//!   target while it sat idle. Closed ones are skipped at checkout. When the
//!   close races the request and hyper hands the request back unsent, it is
//!   sent once more on a new connection, transparently: nothing reached the
//!   target, so the proxy's retries and retry budget are not involved
//!   (hyper-util's `retry_canceled_requests` does the same). A request that
//!   was written before the connection failed is not resent here; it is an
//!   `upstream_protocol_error`, which the proxy may retry.
//! - **Idle timeout**: a connection idle for `pool.idle_timeout` is dropped
//!   when a checkout or a return meets it, so it is never used again. The
//!   pool's reaper task also sweeps the stacks every idle timeout (at most
//!   once a second), so that idle connections of a target that gets no more
//!   traffic are closed within about twice the timeout, not left to the
//!   target.
//! - **Tasks**: each connection is driven by its own task on the node's
//!   `TaskTracker`, as are hyper's HTTP/2 stream tasks. At shutdown the
//!   reaper empties the stacks and the shared HTTP/2 slots and the client
//!   refuses returns, so every connection task ends with its last exchange
//!   and the tracker can be awaited.
//!
//! The request URI given to [`Client::send`] is in origin form
//! (`/path?query`), with `Host` set: that is what HTTP/1.1 sends. For h2 the
//! client adds the scheme and the target's authority.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::TokioIo;
use raft::model::{self, UpstreamProtocol};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::h1;
use super::pool::Pool;
use crate::body::{FromUpstream, UpstreamBody};
use crate::error::Kind;
use crate::sync::lock;

/// Keep-alive probes start after this much silence on an upstream socket.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The reaper sweeps no more often than this.
const MIN_REAP_PERIOD: Duration = Duration::from_secs(1);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The TCP connect took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address tried last.
        addr: SocketAddr,
        /// The time it was given.
        timeout: Duration,
    },
    /// The HTTP/2 handshake failed.
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The exchange failed after the connection was established.
    #[error("upstream exchange failed: {0}")]
    Send(#[source] hyper::Error),
    /// The fast path's exchange failed after the connection was established.
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] io::Error),
    /// No response head came before the request's deadline.
    #[error("no response head within the request timeout")]
    Timeout,
    /// The request URI cannot be made absolute for h2 (a bug in the caller).
    #[error("request URI cannot be made absolute: {0}")]
    Uri(#[source] http::uri::InvalidUriParts),
}

impl Error {
    /// The data-plane kind: a failed connect is `UpstreamConnect` (502), a
    /// slow one `UpstreamConnectTimeout` (504), anything later
    /// `UpstreamProtocol` (502); all three are retryable.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Connect { source, .. } if source.kind() == io::ErrorKind::TimedOut => {
                Kind::UpstreamConnectTimeout
            }
            Error::Connect { .. } => Kind::UpstreamConnect,
            Error::ConnectTimeout { .. } => Kind::UpstreamConnectTimeout,
            Error::Handshake(_) | Error::Send(_) | Error::Exchange(_) => Kind::UpstreamProtocol,
            Error::Timeout => Kind::UpstreamTimeout,
            Error::Uri(_) => Kind::Internal,
        }
    }
}

// === impl Endpoint ===

/// The connections to one target.
pub struct Endpoint {
    authority: Authority,
    /// The address connected to.
    addr: SocketAddr,
    /// HTTP/1.1: idle connections, the most recently used on top.
    idle: Mutex<Vec<Idle>>,
    /// HTTP/1.1, fast path: idle connections, the most recently used on top.
    raw: Mutex<Vec<RawIdle>>,
    /// HTTP/2: the shared connection.
    shared: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// HTTP/2: held while a shared connection is being opened.
    connecting: tokio::sync::Mutex<()>,
}

/// An idle connection, kept until `expires` (its return plus the idle
/// timeout: comparing instants is cheaper than subtracting them).
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    expires: Instant,
}

/// An idle connection of the raw client (see [`Idle`]).
struct RawIdle {
    conn: h1::Connection,
    expires: Instant,
}

impl Endpoint {
    /// The connections to the target at `addr`, known as `authority` (none
    /// open yet).
    pub fn new(authority: &Authority, addr: SocketAddr) -> Self {
        Self {
            authority: authority.clone(),
            addr,
            idle: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The socket address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Idle HTTP/1.1 connections kept for this target.
    pub fn idle(&self) -> usize {
        lock(&self.idle).len() + lock(&self.raw).len()
    }

    /// The shared HTTP/2 connection, if one is open.
    fn shared(&self) -> Option<http2::SendRequest<UpstreamBody>> {
        lock(&self.shared)
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }
}

/// An HTTP/1.1 connection lent to one exchange. Hand it back with
/// [`Client::release`] once the response body has ended cleanly; dropping
/// it closes the connection after the exchange.
pub enum Conn {
    /// Driven by hyper's connection task.
    Hyper(http1::SendRequest<UpstreamBody>),
    /// The fast path's, which the response body hands back when it ends.
    Raw(h1::Connection),
}

/// Spawns hyper's background futures (HTTP/2 connections and streams) on
/// the node's task tracker.
#[derive(Clone)]
struct Spawn(TaskTracker);

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future.instrument(tracing::Span::current()));
    }
}

// === impl Client ===

/// The longest idle timeout kept (see [`Client::new`]).
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Sends requests to the targets of one upstream.
pub struct Client {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    h1: http1::Builder,
    h2: http2::Builder<Spawn>,
    tasks: TaskTracker,
    /// Set at shutdown: no connection is kept any more.
    closing: AtomicBool,
}

impl Client {
    /// A client for `definition`; connection tasks go on `tasks`.
    pub fn new(definition: &model::Upstream, tasks: &TaskTracker) -> Self {
        Self {
            protocol: definition.protocol,
            connect_timeout: definition.timeouts.connect,
            max_idle: definition.pool.max_idle_per_target,
            // Bounded so that adding it to an instant cannot overflow: a
            // century is as good as never.
            idle_timeout: definition.pool.idle_timeout.min(CENTURY),
            h1: http1::Builder::new(),
            h2: http2::Builder::new(Spawn(tasks.clone())),
            tasks: tasks.clone(),
            closing: AtomicBool::new(false),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set), with the `common`
    /// fields after its own, to `endpoint`. `common` holds what every
    /// attempt of a proxied request sends, borrowed so that an attempt does
    /// not copy it: the fast path writes it straight to the connection, and
    /// only hyper's paths merge it into the request. The [`Conn`] is the
    /// HTTP/1.1 connection to hand back once the response body has ended;
    /// there is none for h2, or after an upgrade.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` stores the request twice (argument and local): 20% larger"
    )]
    pub fn send<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        mut request: Request<UpstreamBody>,
        common: Option<&'a super::UpstreamFields>,
    ) -> impl Future<Output = Result<Answer, Error>> + Send + 'a {
        // Every proxied request carries this future (inside its timeout)
        // until the response head: one block, with the request stored once
        // and the cold paths (connect, resend) boxed, keeps it small.
        async move {
            if self.protocol == UpstreamProtocol::Http1 && whole(&request, common) {
                return Box::pin(self.send_raw(endpoint, request, common)).await;
            }
            if let Some(fields) = common {
                fields.append_to(request.headers_mut());
            }
            match self.protocol {
                UpstreamProtocol::Http1 => {
                    let (mut sender, pooled) = match self.checkout(endpoint).await {
                        Some(sender) => (sender, true),
                        None => (Box::pin(self.connect_h1(endpoint)).await?, false),
                    };
                    // No await inside the match: its temporaries would
                    // stay in the future.
                    let resend = match sender.try_send_request(request).await {
                        Ok(response) => return Ok(lend(sender, response)),
                        Err(error) => Box::pin(self.resend_h1(endpoint, error, pooled)),
                    };
                    let (sender, response) = resend.await?;
                    Ok(lend(sender, response))
                }
                UpstreamProtocol::H2 => {
                    absolute(&mut request, &endpoint.authority)?;
                    let (mut sender, shared) = match endpoint.shared() {
                        Some(sender) => (sender, true),
                        None => (Box::pin(self.connect_h2(endpoint)).await?, false),
                    };
                    let resend = match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok((Box::new(response.map(FromUpstream::Hyper)), None));
                        }
                        Err(error) => Box::pin(self.resend_h2(endpoint, error, shared)),
                    };
                    Ok((Box::new(resend.await?.map(FromUpstream::Hyper)), None))
                }
            }
        }
    }

    /// Sends `request`, whose body is complete (or absent), on the fast
    /// path (see [`Client::send_whole`]).
    async fn send_raw(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
        common: Option<&super::UpstreamFields>,
    ) -> Result<Answer, Error> {
        let body = match request.body() {
            UpstreamBody::Full(data) => data.as_ref(),
            UpstreamBody::Empty | UpstreamBody::Client(_) => None,
        };
        self.send_whole(endpoint, &h1::RequestHead::of(&request, common), body, None)
            .await
    }

    /// Sends `head` with a complete (or no) `body` on the fast path: on an
    /// idle connection of the target's, or a new one. A request that failed
    /// before any answer on a pooled connection (the target closed it as
    /// the request left) is sent once more on a new connection when that
    /// cannot repeat anything: it was not written whole, or it is
    /// idempotent. Only for HTTP/1.1 upstreams ([`Client::sends_whole`]).
    ///
    /// With a `deadline`, no response head by then is [`Error::Timeout`]
    /// (connecting included); without one the caller bounds the wait.
    pub async fn send_whole(
        &self,
        endpoint: &Endpoint,
        head: &h1::RequestHead<'_>,
        body: Option<&Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let (conn, pooled) = match self.pop_raw(endpoint) {
            Some(conn) => (conn, true),
            None => (self.connect_raw(endpoint, deadline).await?, false),
        };
        let failed = match conn.exchange(head, body, deadline).await {
            Ok(response) => return Ok((Box::new(response.map(FromUpstream::Raw)), None)),
            Err(failed) => failed,
        };
        let resend =
            pooled && failed.unanswered && (!failed.sent || super::is_idempotent(head.method));
        if failed.timed_out || !resend {
            return Err(exchange_error(failed));
        }
        tracing::debug!(target = %endpoint.authority, error = %failed.error, "pooled connection closed; sending on a new one");
        let conn = self.connect_raw(endpoint, deadline).await?;
        let response = conn
            .exchange(head, body, deadline)
            .await
            .map_err(exchange_error)?;
        Ok((Box::new(response.map(FromUpstream::Raw)), None))
    }

    /// A new fast-path connection to `endpoint`, by `deadline` if there is
    /// one. Connecting is the cold path: boxed, so that the future every
    /// proxied request carries to its response head stays small.
    async fn connect_raw(
        &self,
        endpoint: &Endpoint,
        deadline: Option<Instant>,
    ) -> Result<h1::Connection, Error> {
        let connect = Box::pin(self.connect(endpoint));
        let stream = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, connect)
                .await
                .map_err(|_| Error::Timeout)??,
            None => connect.await?,
        };
        Ok(h1::Connection::new(stream))
    }

    /// Whether requests with a complete body may go by
    /// [`Client::send_whole`]: the upstream speaks HTTP/1.1.
    pub fn sends_whole(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1
    }

    /// An idle fast-path connection that is still usable, if there is one.
    fn pop_raw(&self, endpoint: &Endpoint) -> Option<h1::Connection> {
        self.take_idle(
            &endpoint.raw,
            |entry| entry.expires,
            |entry| entry.conn.usable(),
        )
        .map(|entry| entry.conn)
    }

    /// The most recently used entry of an idle stack that is still `alive`;
    /// entries past the idle timeout (and all below them) are dropped.
    fn take_idle<T>(
        &self,
        stack: &Mutex<Vec<T>>,
        expires: impl Fn(&T) -> Instant,
        alive: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let now = crate::clock::now();
        let mut idle = lock(stack);
        while let Some(entry) = idle.pop() {
            if now >= expires(&entry) {
                // Every entry below has been idle for longer still.
                idle.clear();
                return None;
            }
            if alive(&entry) {
                return Some(entry);
            }
        }
        None
    }

    /// Sends a request that a pooled connection handed back unsent on a new
    /// connection; any other failure is final.
    async fn resend_h1(
        &self,
        endpoint: &Endpoint,
        mut error: TrySendError<Request<UpstreamBody>>,
        pooled: bool,
    ) -> Result<(http1::SendRequest<UpstreamBody>, Response<Incoming>), Error> {
        let request = match error.take_message() {
            Some(request) if pooled => request,
            _ => return Err(Error::Send(error.into_error())),
        };
        tracing::debug!(target = %endpoint.authority, error = %error.error(), "pooled connection closed; sending on a new one");
        let mut sender = self.connect_h1(endpoint).await?;
        let response = sender.send_request(request).await.map_err(Error::Send)?;
        Ok((sender, response))
    }

    /// A pooled connection ready for a request, if there is one.
    async fn checkout(&self, endpoint: &Endpoint) -> Option<http1::SendRequest<UpstreamBody>> {
        loop {
            let mut sender = self.pop(endpoint)?;
            // Ready unless it closed since: only idle connections are pooled.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn pop(&self, endpoint: &Endpoint) -> Option<http1::SendRequest<UpstreamBody>> {
        self.take_idle(
            &endpoint.idle,
            |entry| entry.expires,
            |entry| !entry.sender.is_closed(),
        )
        .map(|entry| entry.sender)
    }

    /// Takes back a connection whose response body ended cleanly; it is
    /// closed instead when the stack is full or the node is shutting down.
    ///
    /// Only a connection that is waiting for its next request is kept. One
    /// that is not is closed, or still sending a request body after an early
    /// response; a checkout must not wait for it.
    pub fn release(&self, endpoint: &Endpoint, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let now = crate::clock::now();
        let expires = now + self.idle_timeout;
        match conn {
            Conn::Hyper(sender) if sender.is_ready() => {
                let entry = Idle { sender, expires };
                self.keep(&endpoint.idle, entry, now, |entry| entry.expires);
            }
            Conn::Hyper(_) => {}
            Conn::Raw(conn) => {
                let entry = RawIdle { conn, expires };
                self.keep(&endpoint.raw, entry, now, |entry| entry.expires);
            }
        }
    }

    /// Pushes `entry` on an idle stack unless it is full or the node is
    /// shutting down, dropping entries idle for too long first.
    fn keep<T>(
        &self,
        stack: &Mutex<Vec<T>>,
        entry: T,
        now: Instant,
        expires: impl Fn(&T) -> Instant,
    ) {
        let mut idle = lock(stack);
        // Read under the lock, so that a return cannot slip in after the
        // shutdown sweep emptied the stack.
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        if idle.first().is_some_and(|oldest| now >= expires(oldest)) {
            idle.retain(|entry| now < expires(entry));
        }
        if idle.len() < self.max_idle {
            idle.push(entry);
        }
    }

    /// As [`Client::resend_h1`], for the shared h2 connection.
    async fn resend_h2(
        &self,
        endpoint: &Endpoint,
        mut error: TrySendError<Request<UpstreamBody>>,
        shared: bool,
    ) -> Result<Response<Incoming>, Error> {
        let request = match error.take_message() {
            Some(request) if shared => request,
            _ => return Err(Error::Send(error.into_error())),
        };
        tracing::debug!(target = %endpoint.authority, error = %error.error(), "shared connection closed; sending on a new one");
        let mut sender = self.connect_h2(endpoint).await?;
        sender.send_request(request).await.map_err(Error::Send)
    }

    async fn connect_h1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<UpstreamBody>, Error> {
        let stream = self.connect(endpoint).await?;
        let (sender, connection) = self
            .h1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Error::Handshake)?;
        // Upgrades hand the socket to the WebSocket tunnel.
        self.spawn(endpoint, connection.with_upgrades());
        Ok(sender)
    }

    /// The shared h2 connection, opened by the first request that needs it.
    async fn connect_h2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<UpstreamBody>, Error> {
        let _connecting = endpoint.connecting.lock().await;
        if let Some(sender) = endpoint.shared() {
            return Ok(sender);
        }
        let stream = self.connect(endpoint).await?;
        let (sender, connection) = self
            .h2
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Error::Handshake)?;
        self.spawn(endpoint, connection);
        let mut shared = lock(&endpoint.shared);
        if !self.closing.load(Ordering::Acquire) {
            *shared = Some(sender.clone());
        }
        Ok(sender)
    }

    fn spawn<F>(&self, endpoint: &Endpoint, connection: F)
    where
        F: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let span = tracing::debug_span!("upstream_connection", target = %endpoint.authority);
        self.tasks.spawn(
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream connection failed");
                }
            }
            .instrument(span),
        );
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, Error> {
        connect(endpoint.addr, self.connect_timeout).await
    }

    /// Closes every idle connection and keeps none from now on (shutdown).
    fn close(&self, endpoints: &[&Endpoint]) {
        self.closing.store(true, Ordering::Release);
        for endpoint in endpoints {
            let idle = std::mem::take(&mut *lock(&endpoint.idle));
            let raw = std::mem::take(&mut *lock(&endpoint.raw));
            let shared = lock(&endpoint.shared).take();
            drop((idle, raw, shared));
        }
    }

    /// Closes the connections idle for longer than the idle timeout.
    fn evict(&self, endpoint: &Endpoint, now: Instant) {
        let mut idle = lock(&endpoint.idle);
        idle.retain(|entry| now < entry.expires && !entry.sender.is_closed());
        drop(idle);
        lock(&endpoint.raw).retain(|entry| now < entry.expires && entry.conn.usable());
    }
}

/// The response and, unless it was upgraded (the connection then belongs
/// to the tunnel), the connection to give back when its body ends.
fn lend(sender: http1::SendRequest<UpstreamBody>, response: Response<Incoming>) -> Answer {
    let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
    (
        Box::new(response.map(FromUpstream::Hyper)),
        reusable.then_some(Conn::Hyper(sender)),
    )
}

/// Whether the fast path can send `request`: its body is complete (or
/// absent), and it is no upgrade. Streamed bodies and upgrades go to hyper.
fn whole(request: &Request<UpstreamBody>, common: Option<&super::UpstreamFields>) -> bool {
    !request.headers().contains_key(http::header::UPGRADE)
        && !common.is_some_and(super::UpstreamFields::upgrade)
        && !matches!(request.body(), UpstreamBody::Client(_))
}

/// An upstream's response, boxed where it is made (it goes back through
/// the pool's and the proxy's async layers as a pointer), and the
/// connection to give back once its body ended, when it is not in the body.
pub type Answer = (Box<Response<FromUpstream>>, Option<Conn>);

/// Gives `request` the scheme and `authority` h2 needs in its URI.
fn absolute(request: &mut Request<UpstreamBody>, authority: &Authority) -> Result<(), Error> {
    if request.uri().authority().is_none() {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        *request.uri_mut() = Uri::from_parts(parts).map_err(Error::Uri)?;
    }
    Ok(())
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        Err(_elapsed) => return Err(Error::ConnectTimeout { addr, timeout }),
    };
    stream
        .set_nodelay(true)
        .map_err(|source| Error::Connect { addr, source })?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, %addr, "cannot enable TCP keep-alive");
    }
    Ok(stream)
}

/// The reaper of `pool`: every idle timeout (at most once a second) it
/// closes the connections idle for longer; at shutdown it closes every idle
/// connection and stops the pool from keeping any. Ends with the pool.
pub(super) async fn reap(pool: Weak<Pool>, period: Duration, shutdown: CancellationToken) {
    let period = period.max(MIN_REAP_PERIOD);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let closing = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = interval.tick() => false,
        };
        let Some(pool) = pool.upgrade() else { return };
        let set = pool.targets();
        let endpoints: Vec<&Endpoint> = set.iter().map(|t| &t.endpoint).collect();
        if closing {
            pool.client.close(&endpoints);
            return;
        }
        let now = Instant::now();
        for endpoint in endpoints {
            pool.client.evict(endpoint, now);
        }
    }
}

/// A failed fast-path exchange as the client's error: a timeout, or the
/// exchange's own error.
fn exchange_error(failed: h1::Failed) -> Error {
    if failed.timed_out {
        Error::Timeout
    } else {
        Error::Exchange(failed.error)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    use bytes::Bytes;
    use http::header;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::metrics::Metrics;

    /// A raw HTTP/1.1 upstream that answers every request `200 ok` with
    /// keep-alive, and counts what happens to its connections.
    struct Upstream {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        /// Connections the gateway closed.
        closed: Arc<AtomicUsize>,
        /// Request lines received, in order.
        requests: Arc<Mutex<Vec<String>>>,
        /// Cancelled to close every open connection; replaced afterwards.
        closer: Arc<Mutex<CancellationToken>>,
        stop: CancellationToken,
    }

    #[derive(Clone, Copy, Default)]
    struct Behaviour {
        /// Close each connection right after its response, as a server
        /// whose keep-alive timeout expires does (without `Connection: close`).
        close_after_response: bool,
        /// Wait this long before answering.
        delay: Duration,
    }

    impl Upstream {
        async fn start(behaviour: Behaviour) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream = Self {
                addr: listener.local_addr().unwrap(),
                connections: Arc::default(),
                closed: Arc::default(),
                requests: Arc::default(),
                closer: Arc::default(),
                stop: CancellationToken::new(),
            };
            let (connections, closed, requests, closer, stop) = (
                upstream.connections.clone(),
                upstream.closed.clone(),
                upstream.requests.clone(),
                upstream.closer.clone(),
                upstream.stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted.unwrap().0,
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let close = lock(&closer).clone();
                    let (closed, requests) = (closed.clone(), requests.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            peer_closed = serve(stream, behaviour, &requests) => if peer_closed {
                                closed.fetch_add(1, Ordering::SeqCst);
                            },
                            () = close.cancelled() => {}
                        }
                    });
                }
            });
            upstream
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn closed(&self) -> usize {
            self.closed.load(Ordering::SeqCst)
        }

        fn requests(&self) -> Vec<String> {
            lock(&self.requests).clone()
        }

        /// Closes every connection open now.
        fn close_open(&self) {
            std::mem::take(&mut *lock(&self.closer)).cancel();
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.stop.cancel();
            lock(&self.closer).cancel();
        }
    }

    /// Serves one connection; true when the gateway closed it.
    async fn serve(
        mut stream: TcpStream,
        behaviour: Behaviour,
        requests: &Mutex<Vec<String>>,
    ) -> bool {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let end = loop {
                if let Some(at) = memchr::memmem::find(&buffer, b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end);
            lock(requests).push(head.lines().next().unwrap_or_default().to_owned());
            tokio::time::sleep(behaviour.delay).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() || behaviour.close_after_response {
                return false;
            }
        }
    }

    fn pool(addr: SocketAddr, extra: &str) -> (Arc<Pool>, TaskTracker, CancellationToken) {
        let doc = format!("upstreams:\n  u: {{ targets: [\"{addr}\"]{extra} }}\n");
        let upstream = model::GatewayConfig::parse(&doc).expect("valid").upstreams["u"].clone();
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let pool = Pool::new("u", &upstream, &Metrics::new(), &tasks, &shutdown, None);
        (pool, tasks, shutdown)
    }

    fn get() -> Request<UpstreamBody> {
        Request::get("/a?b=c")
            .header(header::HOST, "upstream.test")
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    /// The body of `response`, read to its end, and the connection to give
    /// back (the fast path's comes out of the body).
    async fn read(
        response: Box<Response<FromUpstream>>,
        conn: Option<Conn>,
    ) -> (Bytes, Option<Conn>) {
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(chunk) = frame.unwrap().into_data() {
                data.extend_from_slice(&chunk);
            }
        }
        (Bytes::from(data), conn.or_else(|| body.take_reusable()))
    }

    /// One request, its body read to the end, its connection given back.
    async fn exchange(pool: &Pool) -> Result<Bytes, Error> {
        let set = pool.targets();
        let endpoint = &set[0].endpoint;
        let (response, conn) = pool.client.send(endpoint, get(), None).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let (body, conn) = read(response, conn).await;
        if let Some(conn) = conn {
            pool.client.release(endpoint, conn);
        }
        Ok(body)
    }

    async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection_in_origin_form() {
        let upstream = Upstream::start(Behaviour::default()).await;
        let (pool, _tasks, _shutdown) = pool(upstream.addr, "");
        for _ in 0..20 {
            assert_eq!(exchange(&pool).await.unwrap(), "ok");
        }
        assert_eq!(upstream.connections(), 1);
        assert_eq!(pool.targets()[0].endpoint.idle(), 1);
        assert!(
            upstream
                .requests()
                .iter()
                .all(|line| line == "GET /a?b=c HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_queued_request_is_replaced_transparently() {
        let upstream = Upstream::start(Behaviour::default()).await;
        let (pool, _tasks, _shutdown) = pool(upstream.addr, "");
        let set = pool.targets();
        let endpoint = &set[0].endpoint;
        // A pooled connection whose task has not run since the upstream
        // closed it: the request is queued on it before it notices.
        let stream = TcpStream::connect(upstream.addr).await.unwrap();
        let (sender, connection) = http1::handshake::<_, UpstreamBody>(TokioIo::new(stream))
            .await
            .unwrap();
        let mut connection = Box::pin(connection);
        // One poll: the connection asks for its first request.
        let polled = std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(upstream.connections(), 1);
        upstream.close_open();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_closed() && sender.is_ready());
        lock(&endpoint.idle).push(Idle {
            sender,
            expires: Instant::now() + Duration::from_secs(60),
        });
        tokio::spawn(connection);

        assert_eq!(exchange(&pool).await.unwrap(), "ok");
        assert_eq!(upstream.connections(), 2, "a new connection");
        assert_eq!(
            upstream.requests().len(),
            1,
            "the closed connection carried nothing"
        );
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_while_idle_are_skipped() {
        let upstream = Upstream::start(Behaviour {
            close_after_response: true,
            ..Behaviour::default()
        })
        .await;
        let (pool, _tasks, _shutdown) = pool(upstream.addr, "");
        for _ in 0..5 {
            assert_eq!(exchange(&pool).await.unwrap(), "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(upstream.connections(), 5);
        assert_eq!(upstream.requests().len(), 5);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_target() {
        let upstream = Upstream::start(Behaviour {
            delay: Duration::from_millis(100),
            ..Behaviour::default()
        })
        .await;
        let (pool, _tasks, _shutdown) = pool(upstream.addr, ", pool: { max_idle_per_target: 2 }");
        let concurrent = (0..5).map(|_| exchange(&pool));
        for body in futures_util::future::join_all(concurrent).await {
            assert_eq!(body.unwrap(), "ok");
        }
        assert_eq!(upstream.connections(), 5);
        assert_eq!(pool.targets()[0].endpoint.idle(), 2);
        assert!(
            eventually(|| upstream.closed() == 3).await,
            "the surplus is closed"
        );
        for _ in 0..4 {
            exchange(&pool).await.unwrap();
        }
        assert_eq!(upstream.connections(), 5, "the kept ones are reused");
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let upstream = Upstream::start(Behaviour::default()).await;
        let (pool, _tasks, _shutdown) = pool(upstream.addr, ", pool: { idle_timeout: 200ms }");
        exchange(&pool).await.unwrap();
        exchange(&pool).await.unwrap();
        assert_eq!(upstream.connections(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange(&pool).await.unwrap();
        assert_eq!(upstream.connections(), 2, "the idle one was not reused");
        assert!(eventually(|| upstream.closed() == 1).await);
        // With no more traffic, the reaper closes the last one.
        assert!(eventually(|| upstream.closed() == 2).await);
        assert_eq!(pool.targets()[0].endpoint.idle(), 0);
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_lets_the_tasks_end() {
        let upstream = Upstream::start(Behaviour::default()).await;
        let (pool, tasks, shutdown) = pool(upstream.addr, "");
        let set = pool.targets();
        let endpoint = &set[0].endpoint;
        exchange(&pool).await.unwrap();
        let (response, conn) = pool.client.send(endpoint, get(), None).await.unwrap();
        let (_, conn) = read(response, conn).await;
        let other = {
            let (response, conn) = pool.client.send(endpoint, get(), None).await.unwrap();
            read(response, conn).await.1
        };
        assert_eq!(upstream.connections(), 2);
        pool.client.release(endpoint, conn.unwrap());
        assert_eq!(endpoint.idle(), 1);

        shutdown.cancel();
        assert!(eventually(|| endpoint.idle() == 0).await);
        pool.client.release(endpoint, other.unwrap());
        assert_eq!(endpoint.idle(), 0, "no connection is kept after shutdown");
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the reaper and every connection task end");
        assert!(eventually(|| upstream.closed() == 2).await);
    }

    #[tokio::test]
    async fn connect_failures_keep_their_kinds() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (pool, _tasks, _shutdown) = pool(addr, "");
        let error = exchange(&pool).await.unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        assert_eq!(error.kind(), Kind::UpstreamConnect);
        let timeout = Error::ConnectTimeout {
            addr,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.kind(), Kind::UpstreamConnectTimeout);
    }

    /// An h2c upstream answering `ok`; `closer` closes its open connections.
    async fn h2_upstream(
        connections: Arc<AtomicUsize>,
        closer: Arc<Mutex<CancellationToken>>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let close = lock(&closer).clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let authority = request.uri().authority().map(ToString::to_string);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                authority.unwrap_or_default(),
                            ))))
                        });
                    let connection = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = close.cancelled() => {}
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn h2_shares_one_connection_and_replaces_it_when_closed() {
        let connections = Arc::new(AtomicUsize::new(0));
        let closer = Arc::new(Mutex::new(CancellationToken::new()));
        let addr = h2_upstream(connections.clone(), closer.clone()).await;
        let (pool, _tasks, _shutdown) = pool(addr, ", protocol: h2");
        let set = pool.targets();
        let endpoint = &set[0].endpoint;
        let send = || async {
            let (response, conn) = pool.client.send(endpoint, get(), None).await.unwrap();
            assert!(conn.is_none(), "nothing to give back");
            assert_eq!(response.version(), http::Version::HTTP_2);
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let bodies = futures_util::future::join_all((0..10).map(|_| send())).await;
        for body in bodies {
            assert_eq!(
                body,
                addr.to_string(),
                "absolute form, the target's authority"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "multiplexed");

        std::mem::take(&mut *lock(&closer)).cancel();
        assert!(eventually(|| endpoint.shared().is_none()).await);
        assert_eq!(send().await, addr.to_string());
        assert_eq!(connections.load(Ordering::SeqCst), 2, "replaced");
    }
}
