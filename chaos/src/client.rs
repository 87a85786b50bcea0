//! A small HTTP/1.1 client for the harness: the load generator, the admin
//! calls and the probes all use it. Every call has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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
    inner: Hyper<HttpConnector, Full<Bytes>>,
    bearer: Option<std::sync::Arc<str>>,
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
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let inner = Hyper::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build(connector);
        Self {
            inner,
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
            let response = self
                .inner
                .request(request)
                .await
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
