//! A small client of the admin API, for the commands that talk to a
//! running node. Target: `--admin URL` or `MERIDIAN_ADMIN` (default
//! `http://127.0.0.1:9080`); bearer token: `MERIDIAN_TOKEN`.

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where and how to reach the admin API.
#[derive(clap::Args, Clone)]
pub(crate) struct Target {
    /// Admin API base URL.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN",
        default_value = "http://127.0.0.1:9080",
        global = true
    )]
    admin: String,
    /// Admin bearer token.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl Target {
    /// Sends `method path` with an optional body; returns the JSON answer,
    /// or an error carrying the API's message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("invalid admin URL {url}"))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.admin))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        if status != StatusCode::OK {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}
