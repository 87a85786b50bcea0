//! Listeners: accept TCP connections and serve HTTP/1.1 and HTTP/2 (h2c,
//! prior knowledge) on them.
//!
//! - On the proxy listeners a connection starts on the HTTP/1.1 fast path
//!   (`fast.rs`), which serves plain requests itself and hands the
//!   connection to hyper at the first one it does not take (HTTP/2,
//!   upgrades, chunked or large bodies, anything malformed). The admin
//!   listener uses hyper only.
//! - A listener defers accepting a connection until its first bytes have
//!   come (`TCP_DEFER_ACCEPT`, `timeouts.defer-accept`, `defer.rs`): the
//!   first read of an accepted connection then finds its request, and a
//!   connection that sends nothing costs no task until the kernel gives up
//!   waiting and hands it over anyway.
//! - Connections are capped by a semaphore (`limits.max-connections`):
//!   at the cap the listener stops accepting until one closes, and accept
//!   errors (e.g. `EMFILE`) back off instead of spinning.
//! - hyper's header-read timeout runs on a tokio timer (without a timer it
//!   does nothing); for HTTP/1.1 it also bounds the wait for the next
//!   request on a kept-alive connection.
//! - A connection with no request in flight and none started for
//!   `timeouts.idle` is closed gracefully (this covers HTTP/2, whose idle
//!   connections hyper keeps forever).
//! - A connection that has not sent a complete first request head within
//!   `timeouts.header-read` is closed, whatever its protocol (hyper's own
//!   timer covers only HTTP/1.1 heads, not the protocol detection nor
//!   HTTP/2's preface and first HEADERS).
//! - A connection asked to close (idle, shutdown) that has not finished
//!   within `timeouts.header-read` more is closed at once.
//! - Writes that make no progress for `timeouts.write-idle` fail and end
//!   the connection (`stall.rs`: slow-read clients).
//! - Requests above `limits.max-in-flight` are shed with 503, and a
//!   connection cancelling too many requests is closed (`guard.rs`).
//! - HTTP/2 floods are bounded by h2 and the settings below: see
//!   docs/hardening.md for what each frame flood runs into.
//! - Requests whose head carried both `Content-Length` and
//!   `Transfer-Encoding` are marked for `admit` to refuse (see `framing.rs`).
//! - With `Settings::tls`, each connection first completes a TLS handshake
//!   (bounded by the header-read timeout, see `crate::tls`); its requests
//!   then carry an `Arc<TlsInfo>` extension.
//! - Shutdown: stop accepting, ask every connection to finish its in-flight
//!   requests (`graceful_shutdown`; an idle one closes at once), and after
//!   the grace period close what is left. Connections learn both from the
//!   listener's `Stopping` (`stopping.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::stopping::{Stopping, Watch};

use crate::body::{Body, Inbound};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::text::Peer;

mod defer;
mod fast;
mod framing;
mod guard;
mod stall;
mod stopping;

use self::guard::{Closed, Counters, Load, Resets};

pub use self::framing::AmbiguousFraming;
pub(crate) use self::framing::scan_in_pieces;
pub(crate) use self::guard::Permit;

/// Settings of one listener.
pub struct Settings {
    /// Name for logs.
    pub name: &'static str,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Header-read (and HTTP/1.1 keep-alive wait) timeout.
    pub header_read: Duration,
    /// Close connections idle this long.
    pub idle: Duration,
    /// hyper's HTTP/1 read buffer cap; heads beyond it get hyper's own 431.
    pub max_buf: usize,
    /// hyper's header-count cap.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// Connection series, if the listener has them.
    pub metrics: Option<(Gauge, Counter)>,
    /// Close a connection whose writes make no progress this long.
    pub write_idle: Duration,
    /// Requests in flight on the listener before new ones are shed (503).
    pub max_in_flight: Option<usize>,
    /// Client-cancelled requests per connection within 10 s before it is closed.
    pub max_reset_streams: u32,
    /// TLS termination, for the HTTPS listener.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Serve plain HTTP/1.1 requests on the fast path (`fast.rs`).
    pub fast: bool,
    counters: Counters,
}

impl Settings {
    /// Settings for the proxy listener, from the node configuration. hyper's
    /// limits sit above the configured ones so that `admit` answers with the
    /// JSON error.
    pub fn proxy(config: &Config, metrics: &Metrics) -> Self {
        Self {
            name: "proxy",
            max_connections: config.limits.max_connections,
            header_read: config.timeouts.header_read,
            idle: config.timeouts.idle,
            max_buf: (config.limits.max_header_bytes + config.limits.max_uri_bytes) * 2 + 16 * 1024,
            max_headers: config.limits.max_headers * 2,
            max_streams: config.limits.max_concurrent_streams,
            metrics: Some((
                metrics.open_connections.clone(),
                metrics.connections_total.clone(),
            )),
            write_idle: config.timeouts.write_idle,
            max_in_flight: Some(config.limits.max_in_flight),
            max_reset_streams: config.limits.max_reset_streams,
            tls: None,
            fast: true,
            counters: Counters::new(Some(metrics), "proxy"),
        }
    }

    /// Settings for the HTTPS proxy listener: the proxy's, with TLS and
    /// its own connection series.
    pub fn proxy_tls(config: &Config, metrics: &Metrics, tls: Arc<crate::tls::Tls>) -> Self {
        Self {
            name: "proxy-tls",
            metrics: Some((
                metrics.open_connections_tls.clone(),
                metrics.connections_total_tls.clone(),
            )),
            tls: Some(tls),
            counters: Counters::new(Some(metrics), "proxy-tls"),
            ..Self::proxy(config, metrics)
        }
    }

    /// Settings for the admin listener (HTTPS with `tls`).
    pub fn admin(config: &Config, tls: Option<Arc<crate::tls::Tls>>) -> Self {
        Self {
            name: "admin",
            max_connections: 256,
            header_read: config.timeouts.header_read,
            idle: config.timeouts.idle,
            max_buf: 64 * 1024,
            max_headers: 100,
            max_streams: 64,
            metrics: None,
            write_idle: config.timeouts.write_idle,
            max_in_flight: None,
            max_reset_streams: config.limits.max_reset_streams,
            tls,
            fast: false,
            counters: Counters::new(None, "admin"),
        }
    }
}

/// Per-connection activity, read by the idle watchdog.
#[derive(Default)]
struct Activity {
    in_flight: AtomicU32,
    started: AtomicU64,
}

/// What every connection of a listener shares.
struct Shared {
    fast: bool,
    /// The longest request head served (`max_buf`).
    max_head: usize,
    idle: Duration,
    header_read: Duration,
    write_idle: Duration,
    max_reset_streams: u32,
    load: Option<Arc<Load>>,
    counters: Counters,
}

/// Binds a listener with a large backlog and `SO_REUSEADDR`, which hands
/// over a connection only once it has sent something or `defer_accept`
/// (whole seconds; zero: at once) has passed.
pub fn bind(address: SocketAddr, defer_accept: Duration) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    defer::set(&socket, defer_accept)?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What a listener answers its requests with.
///
/// The answer may borrow the handler: the fast path lends its handler to
/// every request of a connection (a closure that owns a handle on the
/// gateway would clone it, two atomic operations, for each); hyper's path
/// clones the handler for each request, as its service must own it.
/// Closures that return an owned future are handlers as they are.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers `request` from `peer`.
    fn call(
        &self,
        request: Box<hyper::Request<Inbound>>,
        peer: Peer,
    ) -> impl Future<Output = Box<hyper::Response<Body>>> + Send + '_;
}

impl<H, F> Handler for H
where
    H: Fn(Box<hyper::Request<Inbound>>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Box<hyper::Response<Body>>> + Send + 'static,
{
    fn call(
        &self,
        request: Box<hyper::Request<Inbound>>,
        peer: Peer,
    ) -> impl Future<Output = Box<hyper::Response<Body>>> + Send + '_ {
        self(request, peer)
    }
}

/// Serves `listener` with `handler` until `shutdown`, then drains for up to
/// `grace` before closing what is left.
pub async fn serve<H>(
    listener: TcpListener,
    settings: Settings,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
) where
    H: Handler,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read)
        .keep_alive(true)
        .max_buf_size(settings.max_buf.max(8192))
        .max_headers(settings.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_streams)
        .max_header_list_size(settings.max_buf as u32)
        // Rapid reset: streams the client resets before hyper accepted
        // them; above this h2 sends GOAWAY(ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(20)
        // Streams h2 itself had to reset because of client errors.
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let shared = Arc::new(Shared {
        fast: settings.fast,
        max_head: settings.max_buf.max(8192),
        idle: settings.idle,
        header_read: settings.header_read,
        write_idle: settings.write_idle,
        max_reset_streams: settings.max_reset_streams,
        load: settings
            .max_in_flight
            .map(|max| Load::new(max, settings.counters.clone())),
        counters: settings.counters.clone(),
    });
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let stopping = Arc::new(Stopping::default());
    let connections = TaskTracker::new();
    // One wait for the whole loop: a fresh one per connection would join
    // and leave the token's waiters each time.
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    loop {
        // Waited for only at the connection limit.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                () = &mut cancelled => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            },
        };
        // The accept first: a poll of the shutdown's wait takes two locks,
        // and a connection ready to accept needs none. The wait is polled
        // whenever no connection is waiting.
        let (stream, peer) = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, listener = settings.name, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut cancelled => break,
        };
        if let Some((open, total)) = &settings.metrics {
            open.increment(1.0);
            total.increment(1);
        }
        let open = settings.metrics.as_ref().map(|(open, _)| open.clone());
        let mut serving = Serving {
            builder: builder.clone(),
            tls: None,
            peer: Peer::new(peer),
            handler: handler.clone(),
            shared: shared.clone(),
            stopping: stopping.watch(),
        };
        let tls = settings.tls.clone();
        // Boxed: a connection's future is several kilobytes (the request
        // path's futures live in it), and tokio moves a task's future
        // whole as it spawns and finishes it; a box moves as a pointer
        // (made in place, `crate::boxed`).
        // Polled through the clock's cache: the request path reads the time
        // once per poll of its connection's task.
        connections.spawn(crate::clock::Polled::new(Box::into_pin(crate::boxed(move || async move {
            match tls {
                // Nagle's algorithm is turned off when a write could wait
                // for it (`stall::Segments`).
                None => serve_connection(stream, serving).await,
                // Boxed too: the handshake and the TLS stream would
                // otherwise size every connection's task.
                Some(tls) => {
                    let _ = stream.set_nodelay(true);
                    Box::into_pin(crate::boxed(move || async move {
                        let handshake = tokio::select! {
                            accepted = tls.accept(stream, serving.shared.header_read) => accepted.ok(),
                            () = serving.stopping.draining() => None,
                        };
                        if let Some((stream, info)) = handshake {
                            serving.tls = Some(info);
                            serve_connection(stream, serving).await;
                        }
                    }))
                    .await;
                }
            }
            drop(permit);
            if let Some(open) = open {
                open.decrement(1.0);
            }
        }))));
        // One accept per turn of the scheduler, as nginx's default
        // (`multi_accept off`): the new connection's task reads its
        // request and sends it upstream before the next accept, rather
        // than every waiting connection being accepted first and served
        // after. The accept comes back after the next poll of the I/O
        // driver, so established connections' events keep their turn too.
        tokio::task::yield_now().await;
    }
    drop(listener);
    stopping.drain();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = settings.name,
            remaining = connections.len(),
            "grace period over; closing connections"
        );
        stopping.force();
        connections.wait().await;
    }
}

/// What serving one connection needs besides its stream.
struct Serving<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// The TLS session, once the handshake is done.
    tls: Option<Arc<crate::tls::TlsInfo>>,
    peer: Peer,
    handler: H,
    shared: Arc<Shared>,
    /// The listener's shutdown, as this connection sees it.
    stopping: Watch,
}

async fn serve_connection<H, S>(stream: S, serving: Serving<H>)
where
    H: Handler,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + stall::Segments + Unpin + Send + 'static,
{
    let shared = &serving.shared;
    let mut io = stall::WriteIdle::new(
        stream,
        shared.write_idle,
        shared.counters.write_idle.clone(),
    );
    let read = if shared.fast {
        let http1 = fast::Http1::new(
            &mut io,
            &serving.peer,
            serving.tls.clone(),
            &serving.handler,
            shared,
            &serving.stopping,
        );
        let end = tokio::select! {
            biased;
            end = http1.run() => end,
            () = serving.stopping.forced() => return,
        };
        match end {
            fast::End::Closed => return,
            fast::End::HandOver(bytes) => bytes,
        }
    } else {
        Bytes::new()
    };
    // HTTP/2 and hyper's writes may come in parts.
    stall::Segments::no_delay(&mut io);
    // Boxed, as TLS is: most connections never get here.
    Box::into_pin(crate::boxed(move || {
        serve_hyper(fast::Rewind::new(read, io), serving)
    }))
    .await;
}

/// Serves the rest of a connection with hyper (HTTP/2, upgrades, and what
/// the fast path handed over), starting with the bytes `io` rewinds.
async fn serve_hyper<H, S>(io: fast::Rewind<stall::WriteIdle<S>>, serving: Serving<H>)
where
    H: Handler,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        builder,
        tls,
        peer,
        handler,
        shared,
        stopping,
    } = serving;
    let activity = Arc::new(Activity::default());
    let framing = Arc::new(framing::Flag::default());
    let resets = Resets::new(shared.max_reset_streams);
    let pace = Arc::new(stall::Pace::default());
    let service = {
        let pace = pace.clone();
        let activity = activity.clone();
        let framing = framing.clone();
        let resets = resets.clone();
        let handler = handler.clone();
        let shared = shared.clone();
        service_fn(move |request: hyper::Request<Incoming>| {
            activity.started.fetch_add(1, Ordering::Relaxed);
            let mut request = request.map(Inbound::Hyper);
            if framing.take() {
                request.extensions_mut().insert(AmbiguousFraming);
            }
            if let Some(tls) = &tls {
                request.extensions_mut().insert(tls.clone());
            }
            let handler = handler.clone();
            let shared = shared.clone();
            let activity = activity.clone();
            let pace = pace.clone();
            let watch = resets.watch();
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut response = respond(&handler, &shared, Box::new(request), peer).await;
                // hyper writes the map: the upstream's raw fields go in it.
                crate::body::fields_mut(&mut response);
                watch.done();
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>((*response).map(|body| stall::Paced::new(body, pace)))
            }
        })
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(framing::Watched::new(io, framing)), service);
    tokio::pin!(connection);
    let (idle, header_read) = (shared.idle, shared.header_read);
    let mut draining = false;
    let mut seen = 0;
    let watchdog = tokio::time::sleep(idle);
    tokio::pin!(watchdog);
    // Checks that response bodies hyper is holding back keep moving.
    let write_idle = shared.write_idle;
    let pacing = tokio::time::sleep(write_idle);
    tokio::pin!(pacing);
    let mut paced_at = None;
    let first_request = tokio::time::sleep(header_read);
    tokio::pin!(first_request);
    let mut waiting_first = true;
    // Armed when the connection is asked to close.
    let drain = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drain);
    let close = |why| {
        shared.counters.closed(why);
        tracing::debug!(%peer, reason = ?why, "connection closed by the gateway");
    };
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        shared.counters.closed(Closed::HeaderTimeout);
                    }
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = stopping.draining(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = &mut first_request, if waiting_first => {
                waiting_first = false;
                if activity.started.load(Ordering::Relaxed) == 0 {
                    return close(Closed::HeaderTimeout);
                }
            }
            () = resets.tripped.cancelled(), if !draining => {
                shared.counters.closed(Closed::RapidReset);
                tracing::debug!(%peer, "too many cancelled requests; closing the connection");
                connection.as_mut().graceful_shutdown();
                draining = true;
                drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            () = &mut watchdog, if !draining => {
                let started = activity.started.load(Ordering::Relaxed);
                if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                    drain.as_mut().reset(tokio::time::Instant::now() + header_read);
                } else {
                    seen = started;
                    watchdog.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            () = &mut pacing => {
                let now = pace.stalled_at();
                if now.is_some() && now == paced_at {
                    shared.counters.write_idle.increment(1);
                    tracing::debug!(%peer, "response bodies held back for timeouts.write-idle; closing");
                    return;
                }
                paced_at = now;
                pacing.as_mut().reset(tokio::time::Instant::now() + write_idle);
            }
            () = &mut drain, if draining => return close(Closed::DrainTimeout),
            () = stopping.forced() => return,
        }
    }
}

/// Runs `handler` on `request` unless the listener is overloaded (then the
/// answer is the shed response); the request counts as in flight until the
/// response body is finished.
async fn respond<H>(
    handler: &H,
    shared: &Shared,
    request: Box<hyper::Request<Inbound>>,
    peer: Peer,
) -> Box<hyper::Response<Body>>
where
    H: Handler,
{
    let admit = |load: &Arc<Load>| Load::admit(load.clone(), request.headers());
    let permit = match shared.load.as_ref().map(admit).transpose() {
        Ok(permit) => permit,
        Err(shed) => return shed,
    };
    let mut response = handler.call(request, peer).await;
    if let Some(permit) = permit {
        response.body_mut().keep(permit);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// The accept loop takes a waiting connection before it looks at the
    /// shutdown; a listener that always has one waiting still stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooded_listener_still_stops() {
        // Not deferred: the flood's connections send nothing.
        let listener = bind("127.0.0.1:0".parse().unwrap(), Duration::ZERO).unwrap();
        let address = listener.local_addr().unwrap();
        let config = crate::config::RawConfig::parse("id = 1\n")
            .unwrap()
            .validate()
            .unwrap();
        let handler = |_request: Box<hyper::Request<Inbound>>, _peer: Peer| async move {
            Box::new(hyper::Response::new(Body::empty()))
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Settings::admin(&config, None),
            handler,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        // Connections from a thread of their own, one after the other,
        // until the test ends or 20,000 were made.
        let flooding = Arc::new(AtomicBool::new(true));
        let made = Arc::new(AtomicU64::new(0));
        let flood = std::thread::spawn({
            let (flooding, made) = (flooding.clone(), made.clone());
            move || {
                while flooding.load(Ordering::Relaxed) && made.load(Ordering::Relaxed) < 20_000 {
                    if std::net::TcpStream::connect(address).is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        for _ in 0..2_000 {
            if made.load(Ordering::Relaxed) >= 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            made.load(Ordering::Relaxed) >= 500,
            "the flood did not start"
        );
        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
        flooding.store(false, Ordering::Relaxed);
        flood.join().unwrap();
        assert!(
            stopped.is_ok(),
            "the listener did not stop within 10 s of the shutdown"
        );
    }
}
