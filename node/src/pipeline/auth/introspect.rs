//! OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens.
//!
//! - **Call.** `POST <endpoint>` with HTTP Basic `client_id:client_secret`
//!   and the form body `token=…&token_type_hint=access_token`, bounded by
//!   `timeout`. A 200 JSON answer with `"active": true` admits; `scope`,
//!   `client_id`, `sub`, `exp`, `iat`, `jti` and the configured claims are
//!   used. Anything else (`active` false or absent) refuses, and so does an
//!   active answer whose `aud` names none of the endpoint's `audiences`
//!   (when it lists any).
//! - **Caches.** Active answers are reused for `ttl`, never past the
//!   token's `exp`; inactive ones for `negative_ttl`. Both live in one
//!   bounded map keyed by SHA-256 of the token (the token is never kept).
//! - **Single-flight.** Concurrent requests carrying the same uncached
//!   token share one call: the first starts it, the others wait for its
//!   answer.
//! - **Failures.** An endpoint that errs, times out or answers garbage is
//!   not cached; the request gets 503 `auth_unavailable` with
//!   `Retry-After`, never a 500 and never an admission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::Full;
use metrics::Counter;
use raft::model::{AuthMethod, Introspection};
use tokio::sync::OnceCell;

use super::cache::{Digest, TtlCache, digest};
use super::jwks::{self, HttpClient};
use super::{Identity, Refusal};
use crate::metrics::Metrics;

/// A cached answer: the identity of an active token, or `None`.
type Answer = Option<Arc<Identity>>;
/// An answer being fetched, shared by the requests waiting for it.
type Flight = Arc<OnceCell<Result<Answer, String>>>;

/// One configured introspection endpoint.
pub struct Endpoint {
    /// The configuration it was built from.
    pub config: Introspection,
    uri: Option<Uri>,
    authorization: HeaderValue,
    client: HttpClient,
    cache: TtlCache<Answer>,
    in_flight: Mutex<HashMap<Digest, Flight>>,
    active: Counter,
    inactive: Counter,
    errors: Counter,
}

impl Endpoint {
    /// An endpoint with empty caches.
    pub fn new(config: &Introspection, metrics: &Metrics) -> Self {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(&config.client_secret)
        ));
        let calls = |result: &str| {
            let counter = metrics.counter(
                "meridian_introspection_calls_total",
                &[
                    ("endpoint", config.name.clone()),
                    ("result", result.to_owned()),
                ],
            );
            counter.increment(0);
            counter
        };
        Self {
            uri: config.endpoint.parse().ok(),
            authorization: HeaderValue::from_str(&format!("Basic {credentials}"))
                .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
            client: jwks::client(),
            cache: TtlCache::new(
                config.cache_entries,
                format!("introspection:{}", config.name),
                metrics,
            ),
            in_flight: Mutex::new(HashMap::new()),
            active: calls("active"),
            inactive: calls("inactive"),
            errors: calls("error"),
            config: config.clone(),
        }
    }

    /// The identity of `token` at `now` (Unix ms), from the cache or one
    /// (shared) introspection call.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Arc<Identity>, Refusal> {
        let hash = digest(token);
        let answer = match self.cache.get(&hash, now) {
            Some(answer) => answer,
            None => {
                let flight = {
                    let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    in_flight.entry(hash).or_default().clone()
                };
                // Leaves the map when this request is done or dropped.
                let _guard = FlightGuard {
                    endpoint: self,
                    hash,
                    flight: flight.clone(),
                };
                let result = flight
                    .get_or_init(|| async {
                        let result = self.call(token, now).await;
                        if let Ok(answer) = &result {
                            let expires = match answer {
                                Some(identity) => {
                                    let ttl = now + self.config.ttl.as_millis() as u64;
                                    identity.expires_at.map_or(ttl, |exp| exp.min(ttl))
                                }
                                None => now + self.config.negative_ttl.as_millis() as u64,
                            };
                            self.cache.insert(hash, answer.clone(), expires, now);
                        }
                        result
                    })
                    .await
                    .clone();
                result
                    .map_err(|_| Refusal::Unavailable("the token introspection endpoint failed"))?
            }
        };
        match answer {
            Some(identity) if identity.expires_at.is_none_or(|exp| exp > now) => Ok(identity),
            Some(_) => Err(Refusal::invalid("token_expired", "the token has expired")),
            None => Err(Refusal::invalid(
                "inactive_token",
                "the token is not active",
            )),
        }
    }

    async fn call(&self, token: &str, now: u64) -> Result<Answer, String> {
        let result = self.exchange(token, now).await;
        match &result {
            Ok(Some(_)) => self.active.increment(1),
            Ok(None) => self.inactive.increment(1),
            Err(error) => {
                self.errors.increment(1);
                tracing::warn!(endpoint = %self.config.name, %error, "token introspection failed");
            }
        }
        result
    }

    async fn exchange(&self, token: &str, now: u64) -> Result<Answer, String> {
        let Some(uri) = &self.uri else {
            return Err("invalid endpoint".into());
        };
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let request = Request::post(uri.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let (_, body) = jwks::call(&self.client, request, self.config.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| format!("not a JSON object: {e}"))?;
        if claims.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Ok(None);
        }
        if !self.config.audiences.is_empty() && !names_audience(&claims, &self.config.audiences) {
            tracing::debug!(endpoint = %self.config.name, "active token for another audience");
            return Ok(None);
        }
        let identity = Identity::from_claims(
            AuthMethod::Introspection,
            &claims,
            &self.config.claims,
            None,
        )
        .map_err(|_| "the answer's claims cannot be sent as headers".to_owned())?;
        if identity.expires_at.is_some_and(|exp| exp <= now) {
            return Ok(None);
        }
        Ok(Some(Arc::new(identity)))
    }
}

/// Whether the answer's `aud` (a string or a list of strings) names one of
/// `audiences`.
fn names_audience(
    claims: &serde_json::Map<String, serde_json::Value>,
    audiences: &[String],
) -> bool {
    let wanted = |aud: &serde_json::Value| {
        aud.as_str()
            .is_some_and(|a| audiences.iter().any(|w| w == a))
    };
    match claims.get("aud") {
        Some(serde_json::Value::Array(list)) => list.iter().any(wanted),
        Some(single) => wanted(single),
        None => false,
    }
}

/// Removes a finished (or abandoned) call from the in-flight map.
struct FlightGuard<'a> {
    endpoint: &'a Endpoint,
    hash: Digest,
    flight: Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .endpoint
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if in_flight
            .get(&self.hash)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            in_flight.remove(&self.hash);
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, FORM).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d+é"), "a%20b%26c%3Dd%2B%C3%A9");
        assert_eq!(form_encode("abc-._~"), "abc-._~");
    }
}
