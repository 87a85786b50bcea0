//! `MockUpstream`: a real HTTP server on 127.0.0.1:0 (HTTP/1.1 and h2c)
//! that records every request it receives and answers as told.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// A response body a mock can stream.
pub type MockBody = BoxBody<Bytes, std::io::Error>;
/// What a mock answers.
pub type MockResponse = Response<MockBody>;
/// A request as the mock's handler sees it (body already counted).
pub struct Seen {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes received.
    pub body_len: u64,
    /// The body received (its first MiB).
    pub body: Bytes,
    /// HTTP version.
    pub version: http::Version,
    /// When the request head arrived.
    pub received: tokio::time::Instant,
}

/// How much of a request body the mock keeps.
const KEPT_BODY: usize = 1 << 20;

type Handler =
    Arc<dyn Fn(Arc<Seen>) -> Pin<Box<dyn Future<Output = MockResponse> + Send>> + Send + Sync>;

/// A mock upstream.
pub struct MockUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub seen: Arc<Mutex<Vec<Arc<Seen>>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> MockBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> MockResponse {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

impl MockUpstream {
    /// An upstream answering with `echo` JSON naming it `name`.
    pub async fn echo(name: &str) -> Self {
        let name = name.to_owned();
        Self::start(move |seen| {
            let name = name.clone();
            async move { json(StatusCode::OK, echo_json(&name, &seen)) }
        })
        .await
    }

    /// An echo upstream named `name` on `addr` (an address a stopped mock
    /// had: the backend comes back).
    pub async fn echo_at(name: &str, addr: SocketAddr) -> Self {
        let name = name.to_owned();
        Self::start_at(addr, move |seen| {
            let name = name.clone();
            async move { json(StatusCode::OK, echo_json(&name, &seen)) }
        })
        .await
    }

    /// An upstream answering with `handler`; requests whose `Upgrade` asks
    /// for a WebSocket are accepted and echoed.
    pub async fn start<H, F>(handler: H) -> Self
    where
        H: Fn(Arc<Seen>) -> F + Send + Sync + 'static,
        F: Future<Output = MockResponse> + Send + 'static,
    {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), handler).await
    }

    /// [`MockUpstream::start`] on `addr`.
    pub async fn start_at<H, F>(addr: SocketAddr, handler: H) -> Self
    where
        H: Fn(Arc<Seen>) -> F + Send + Sync + 'static,
        F: Future<Output = MockResponse> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = TcpListener::bind(addr).await.expect("bind mock");
        let addr = listener.local_addr().expect("bound");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mock = Self {
            addr,
            seen: seen.clone(),
            connections: connections.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let seen = seen.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(serve(req, handler, seen).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        mock
    }

    /// `host:port` of the mock.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// The last request received.
    pub fn last(&self) -> Arc<Seen> {
        self.seen
            .lock()
            .expect("not poisoned")
            .last()
            .cloned()
            .expect("a request was received")
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

async fn serve(
    mut req: Request<Incoming>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Arc<Seen>>>>,
) -> MockResponse {
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() || socket.send(message).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        headers.insert(
            "sec-websocket-accept",
            header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64"),
        );
        return response;
    }
    let received = tokio::time::Instant::now();
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_default();
    let version = req.version();
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                    let room = KEPT_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Err(_) => break,
        }
    }
    let request = Arc::new(Seen {
        method,
        uri,
        headers: parts.headers,
        body_len,
        body: Bytes::from(kept),
        version,
        received,
    });
    seen.lock().expect("not poisoned").push(request.clone());
    handler(request).await
}

/// The JSON an echo mock answers with.
pub fn echo_json(name: &str, seen: &Seen) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = seen
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    serde_json::json!({
        "upstream": name,
        "method": seen.method.as_str(),
        "uri": seen.uri,
        "headers": headers,
        "body_len": seen.body_len,
    })
}
