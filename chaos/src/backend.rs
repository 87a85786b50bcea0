//! Demo backends for a loopback run: one HTTP echo service per region that
//! a fault can take down or slow down.
//!
//! A [`Backend`] answers every request with `200 {"service":"echo",
//! "region":…,"path":…}` (and `/health` with `{"status":"ok"}`), over
//! HTTP/1.1. [`Backend::set`] switches its [`Mode`]:
//!
//! - `Down` closes the listener and every open connection, so the gateway
//!   sees refused connections, as after a crash;
//! - `Slow(d)` waits `d` before each answer;
//! - `Up` binds the same address again.
//!
//! A backend listens in the test process's own network namespace, or (made
//! with [`Backend::start_in`]) in a region's namespace, where it also binds
//! again when it comes back up.
//!
//! Tasks run on the backend's own tracker and stop when it is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::netns::Dialer;

/// What a backend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers at once.
    Up,
    /// Refuses connections.
    Down,
    /// Answers after this delay.
    Slow(Duration),
}

/// A running demo backend. Dropping it stops it.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    token: CancellationToken,
    tracker: TaskTracker,
}

// === impl Backend ===

impl Backend {
    /// Starts the echo service of `region` on `listen` (port 0 picks one).
    pub async fn start(listen: SocketAddr, region: &str) -> std::io::Result<Self> {
        Self::serve(&Dialer::Here, listen, region, None).await
    }

    /// Starts the echo service of `region` on `listen`, bound where
    /// `dialer` makes sockets (a region's network namespace).
    pub async fn start_in(
        dialer: &Dialer,
        listen: SocketAddr,
        region: &str,
    ) -> std::io::Result<Self> {
        Self::serve(dialer, listen, region, None).await
    }

    /// Starts a server that answers `document` on every path (a JWKS
    /// endpoint), with the same modes.
    pub async fn document(
        listen: SocketAddr,
        document: serde_json::Value,
    ) -> std::io::Result<Self> {
        Self::serve(&Dialer::Here, listen, "-", Some(Arc::new(document))).await
    }

    /// [`Backend::document`], bound where `dialer` makes sockets.
    pub async fn document_in(
        dialer: &Dialer,
        listen: SocketAddr,
        document: serde_json::Value,
    ) -> std::io::Result<Self> {
        Self::serve(dialer, listen, "-", Some(Arc::new(document))).await
    }

    async fn serve(
        dialer: &Dialer,
        listen: SocketAddr,
        region: &str,
        document: Option<Arc<serde_json::Value>>,
    ) -> std::io::Result<Self> {
        let listener = dialer.bind_tcp(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Up);
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let region: Arc<str> = region.into();
        tracker.spawn(
            supervise(
                listener,
                (dialer.clone(), addr),
                mode.subscribe(),
                (region.clone(), document),
                token.clone(),
                tracker.clone(),
            )
            .instrument(tracing::debug_span!("chaos-backend", %region, %addr)),
        );
        Ok(Self {
            addr,
            mode,
            token,
            tracker,
        })
    }

    /// The address it serves on (stable across down and up).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Stops the backend and waits for its tasks.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Serves while up; closes everything while down; binds again when up.
async fn supervise(
    listener: TcpListener,
    (dialer, addr): (Dialer, SocketAddr),
    mut mode: watch::Receiver<Mode>,
    (region, document): (Arc<str>, Option<Arc<serde_json::Value>>),
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Down {
            listener = None;
            tokio::select! {
                () = token.cancelled() => return,
                changed = mode.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let bound = match listener.take() {
            Some(l) => l,
            None => match dialer.bind_tcp(addr).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(%error, %addr, "cannot bind the backend again; retrying");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        // Connections of this up period stop when the backend goes down.
        let epoch = token.child_token();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                changed = mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *mode.borrow() == Mode::Down {
                        epoch.cancel();
                        break;
                    }
                }
                accepted = bound.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (region, epoch, mode) = (region.clone(), epoch.clone(), mode.clone());
                    let document = document.clone();
                    tracker.spawn(async move {
                        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (region, mode, document) = (region.clone(), mode.clone(), document.clone());
                            async move {
                                Ok::<_, Infallible>(answer(&req, &region, &mode, document.as_deref()).await)
                            }
                        });
                        let connection = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = connection => {}
                            () = epoch.cancelled() => {}
                        }
                    });
                }
            }
        }
    }
}

async fn answer<B>(
    req: &http::Request<B>,
    region: &str,
    mode: &watch::Receiver<Mode>,
    document: Option<&serde_json::Value>,
) -> Response<Full<Bytes>> {
    let slow = match *mode.borrow() {
        Mode::Slow(delay) => Some(delay),
        _ => None,
    };
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    let body = if let Some(document) = document {
        document.clone()
    } else if req.uri().path() == "/health" {
        serde_json::json!({"status": "ok"})
    } else {
        serde_json::json!({"service": "echo", "region": region, "path": req.uri().path()})
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;
