//! Listeners: accept TCP connections and serve HTTP/1.1 and HTTP/2 (h2c,
//! prior knowledge) on them with hyper.
//!
//! - Connections are capped by a semaphore (`limits.max-connections`):
//!   at the cap the listener stops accepting until one closes, and accept
//!   errors (e.g. `EMFILE`) back off instead of spinning.
//! - hyper's header-read timeout runs on a tokio timer (without a timer it
//!   does nothing); for HTTP/1.1 it also bounds the wait for the next
//!   request on a kept-alive connection.
//! - A connection with no request in flight and none started for
//!   `timeouts.idle` is closed gracefully (this covers HTTP/2, whose idle
//!   connections hyper keeps forever).
//! - Requests whose head carried both `Content-Length` and
//!   `Transfer-Encoding` are marked for `admit` to refuse (see `framing.rs`).
//! - With `Settings::tls`, each connection first completes a TLS handshake
//!   (bounded by the header-read timeout, see `crate::tls`); its requests
//!   then carry an `Arc<TlsInfo>` extension.
//! - Shutdown: stop accepting, ask every connection to finish its in-flight
//!   requests (`graceful_shutdown`), and after the grace period close what
//!   is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::Config;

mod framing;

pub use self::framing::AmbiguousFraming;

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
    /// TLS termination, for the HTTPS listener.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Settings {
    /// Settings for the proxy listener, from the node configuration. hyper's
    /// limits sit above the configured ones so that `admit` answers with the
    /// JSON error.
    pub fn proxy(config: &Config, metrics: (Gauge, Counter)) -> Self {
        Self {
            name: "proxy",
            max_connections: config.limits.max_connections,
            header_read: config.timeouts.header_read,
            idle: config.timeouts.idle,
            max_buf: (config.limits.max_header_bytes + config.limits.max_uri_bytes) * 2 + 16 * 1024,
            max_headers: config.limits.max_headers * 2,
            max_streams: config.limits.max_concurrent_streams,
            metrics: Some(metrics),
            tls: None,
        }
    }

    /// Settings for the admin listener.
    pub fn admin(config: &Config) -> Self {
        Self {
            name: "admin",
            max_connections: 256,
            header_read: config.timeouts.header_read,
            idle: config.timeouts.idle,
            max_buf: 64 * 1024,
            max_headers: 100,
            max_streams: 64,
            metrics: None,
            tls: None,
        }
    }
}

/// Per-connection activity, read by the idle watchdog.
#[derive(Default)]
struct Activity {
    in_flight: AtomicU32,
    started: AtomicU64,
}

/// Binds a listener with a large backlog and `SO_REUSEADDR`.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves `listener` with `handler` until `shutdown`, then drains for up to
/// `grace` before closing what is left.
pub async fn serve<H, F>(
    listener: TcpListener,
    settings: Settings,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
) where
    H: Fn(hyper::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
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
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let force = CancellationToken::new();
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, listener = settings.name, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Some((open, total)) = &settings.metrics {
            open.increment(1.0);
            total.increment(1);
        }
        let open = settings.metrics.as_ref().map(|(open, _)| open.clone());
        let (builder, handler, idle) = (builder.clone(), handler.clone(), settings.idle);
        let (shutdown, force) = (shutdown.clone(), force.clone());
        let tls = settings.tls.clone();
        let header_read = settings.header_read;
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    serve_connection(builder, stream, None, peer, handler, idle, shutdown, force)
                        .await;
                }
                Some(tls) => {
                    let handshake = tokio::select! {
                        accepted = tls.accept(stream, header_read) => accepted.ok(),
                        () = shutdown.cancelled() => None,
                    };
                    if let Some((stream, info)) = handshake {
                        serve_connection(
                            builder,
                            stream,
                            Some(info),
                            peer,
                            handler,
                            idle,
                            shutdown,
                            force,
                        )
                        .await;
                    }
                }
            }
            drop(permit);
            if let Some(open) = open {
                open.decrement(1.0);
            }
        });
    }
    drop(listener);
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
        force.cancel();
        connections.wait().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<H, F, S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: S,
    tls: Option<Arc<crate::tls::TlsInfo>>,
    peer: SocketAddr,
    handler: H,
    idle: Duration,
    shutdown: CancellationToken,
    force: CancellationToken,
) where
    H: Fn(hyper::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let framing = Arc::new(framing::Flag::default());
    let service = {
        let activity = activity.clone();
        let framing = framing.clone();
        service_fn(move |mut request: hyper::Request<Incoming>| {
            if framing.take() {
                request.extensions_mut().insert(AmbiguousFraming);
            }
            if let Some(tls) = &tls {
                request.extensions_mut().insert(tls.clone());
            }
            let handler = handler.clone();
            let activity = activity.clone();
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            activity.started.fetch_add(1, Ordering::Relaxed);
            async move {
                let response = handler(request, peer).await;
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(
        TokioIo::new(framing::Watched::new(stream, framing)),
        service,
    );
    tokio::pin!(connection);
    let mut draining = false;
    let mut seen = 0;
    let watchdog = tokio::time::sleep(idle);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = &mut watchdog, if !draining => {
                let started = activity.started.load(Ordering::Relaxed);
                if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                } else {
                    seen = started;
                    watchdog.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            () = force.cancelled() => return,
        }
    }
}
