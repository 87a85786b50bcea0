//! A small HTTP/1.1 client for the harness: the load generator, the admin
//! calls and the probes all use it. Every call has a deadline.
//!
//! It dials from the test process's own network namespace, or, made with
//! [`Client::with_dialer`], from a region's namespace
//! ([`crate::netns::Dialer`]), or, made with [`Client::routed`], from the
//! namespace that holds the address it calls: the calls are the same
//! either way.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::netns::Dialer;

/// Connection deadline, as for loopback calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call has no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset, closed early).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The request could not be built.
    #[error("invalid request {0}")]
    Invalid(String),
}

/// An answer: status, headers and body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body, whole.
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Inner,
    bearer: Option<std::sync::Arc<str>>,
}

/// The pool, by where it dials from.
#[derive(Clone, Debug)]
enum Inner {
    /// The test process's own namespace.
    Here(Hyper<HttpConnector, Full<Bytes>>),
    /// A network namespace, or one per destination.
    Namespace(Hyper<NamespaceConnector, Full<Bytes>>),
}

/// Dials every connection through a [`Dialer`] ([`Dialer::connect`]): the
/// one routed for the destination's IP address, or the default.
#[derive(Clone, Debug)]
struct NamespaceConnector {
    default: Dialer,
    routes: Arc<BTreeMap<IpAddr, Dialer>>,
}

// === impl Client ===

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with idle connections kept for a few seconds.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let inner = Hyper::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build(connector);
        Self {
            inner: Inner::Here(inner),
            bearer: None,
        }
    }

    /// A client like [`Client::new`] that makes its connections through
    /// `dialer`: from a region's network namespace, or (with
    /// [`Dialer::Here`]) from this process's, which is [`Client::new`].
    pub fn with_dialer(dialer: Dialer) -> Self {
        if dialer == Dialer::Here {
            return Self::new();
        }
        Self::connector(NamespaceConnector {
            default: dialer,
            routes: Arc::default(),
        })
    }

    /// A client like [`Client::new`] that dials each address in `routes`
    /// through its dialer (e.g. a region's node from inside that region),
    /// and any other address from this process's namespace.
    pub fn routed(routes: BTreeMap<IpAddr, Dialer>) -> Self {
        Self::connector(NamespaceConnector {
            default: Dialer::Here,
            routes: Arc::new(routes),
        })
    }

    fn connector(connector: NamespaceConnector) -> Self {
        let inner = Hyper::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build(connector);
        Self {
            inner: Inner::Namespace(inner),
            bearer: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` on every
    /// call (for admin APIs with `admin.token`; never for the data plane).
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token.map(Into::into);
        self
    }

    /// Sends `method path` to `addr` with `headers` and `body`, within `timeout`.
    pub async fn call(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        if matches!(self.inner, Inner::Here(_)) && crate::netns::refused_here(addr.ip()) {
            // Never out of the machine by the default route.
            return Err(CallError::Invalid(crate::netns::outside(addr).to_string()));
        }
        let url = format!("http://{addr}{path}");
        let mut builder = Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = &self.bearer {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::Invalid(format!("{url}: {e}")))?;
        let exchange = async {
            let response = match &self.inner {
                Inner::Here(hyper) => hyper.request(request).await,
                Inner::Namespace(hyper) => hyper.request(request).await,
            }
            .map_err(|e| CallError::Connect(error_chain(&e)))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Connect(error_chain(&e)))?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }

    /// `GET path` on `addr`, answered as JSON (a body that is not JSON
    /// becomes a JSON string).
    pub async fn get_json(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Value), CallError> {
        let answer = self
            .call(Method::GET, addr, path, &[], None, timeout)
            .await?;
        Ok((answer.status, answer.json()))
    }
}

// === impl Answer ===

impl Answer {
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    /// The API's error message, or the body.
    pub fn message(&self) -> String {
        let value = self.json();
        value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string())
    }
}

// === impl NamespaceConnector ===

impl tower_service::Service<Uri> for NamespaceConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The harness always calls IP addresses.
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let addr: SocketAddr = match authority.parse() {
                Ok(addr) => addr,
                Err(_) => format!("{authority}:80").parse().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{uri} has no IP address and port to dial"),
                    )
                })?,
            };
            let dialer = this.routes.get(&addr.ip()).unwrap_or(&this.default);
            let stream = dialer.connect(addr, CONNECT_TIMEOUT).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
