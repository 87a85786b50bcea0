//! JWT issuers: their JWK sets, kept fresh by a background task, and the
//! verification of one token.
//!
//! - **Keys.** Each issuer's [`KeySet`] is swapped atomically. The refresh
//!   task fetches the JWKS at start, then again after the answer's
//!   `Cache-Control: max-age` clamped to `[jwks.min_refresh,
//!   jwks.max_refresh]` (`max_refresh` without one). A failed fetch keeps
//!   the last good keys and is retried after `min_refresh`; keys are
//!   dropped only when no fetch succeeded for `jwks.max_stale` (then the
//!   issuer's tokens get 503 `auth_unavailable`).
//! - **Unknown `kid`.** A token naming a key the set does not have causes
//!   one fetch, shared by every request waiting for it (single-flight: all
//!   fetches hold one async mutex) and at most one per
//!   `jwks.unknown_kid_interval`, so a key rotation at the IdP is picked up
//!   at once and a flood of made-up `kid`s costs nothing upstream.
//! - **Verification.** The algorithm is the key's (see [`super::jwks`]);
//!   the token's `alg` must be one of them and in the allow-list. `jku`,
//!   `x5u`, `jwk` and `x5c` headers are ignored, never fetched. `exp` is
//!   required; `exp`, `nbf` (with `leeway`), `iss` and `aud` are checked by
//!   jsonwebtoken with the aws-lc-rs backend.
//! - **Verified-token cache.** Keyed by SHA-256 of the token, bounded
//!   (`cache_entries`), an entry never outlives the token's `exp` nor the
//!   key that verified it. Revocations are checked by the stage on every
//!   request, cached or not.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use jsonwebtoken::{Algorithm, Validation};
use metrics::{Counter, Gauge};
use raft::model::{AuthMethod, JwtIssuer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cache::{TtlCache, digest};
use super::jwks::{self, HttpClient, Key, KeySet};
use super::{Identity, Refusal};
use crate::metrics::Metrics;

/// The keys in force and when they were fetched.
struct Keys {
    set: KeySet,
    /// Last successful fetch; `None` before the first.
    fetched: Option<Instant>,
}

/// State of the fetches, behind the single-flight mutex.
struct Fetches {
    /// When the last fetch was attempted.
    last_attempt: Option<Instant>,
}

/// A verified token as cached: its identity and the key that verified it.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    key: Arc<Key>,
}

/// One configured issuer.
pub struct Issuer {
    /// The configuration it was built from.
    pub config: JwtIssuer,
    uri: Option<Uri>,
    allowed: Vec<Algorithm>,
    validation: Validation,
    keys: ArcSwap<Keys>,
    fetches: tokio::sync::Mutex<Fetches>,
    cache: TtlCache<Verified>,
    client: HttpClient,
    fetch_ok: Counter,
    fetch_failed: Counter,
    key_count: Gauge,
    stale: Gauge,
    /// Cancelled when the issuer is dropped from the configuration.
    stop: CancellationToken,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Issuer {
    /// An issuer without keys; [`spawn_refresh`] or [`Issuer::install`] fills it.
    pub fn new(config: &JwtIssuer, metrics: &Metrics) -> Self {
        let allowed: Vec<Algorithm> = config
            .algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let name = config.name.clone();
        let fetches = |result: &str| {
            metrics.counter(
                "meridian_jwks_fetches_total",
                &[("issuer", name.clone()), ("result", result.to_owned())],
            )
        };
        let fetch_ok = fetches("ok");
        let fetch_failed = fetches("error");
        fetch_ok.increment(0);
        fetch_failed.increment(0);
        Self {
            uri: config.jwks_uri.parse().ok(),
            allowed,
            validation,
            keys: ArcSwap::from_pointee(Keys {
                set: KeySet::default(),
                fetched: None,
            }),
            fetches: tokio::sync::Mutex::new(Fetches { last_attempt: None }),
            cache: TtlCache::new(
                config.cache_entries,
                format!("jwt:{}", config.name),
                metrics,
            ),
            client: jwks::client(),
            fetch_ok,
            fetch_failed,
            key_count: metrics.gauge("meridian_jwks_keys", &[("issuer", name.clone())]),
            stale: metrics.gauge("meridian_jwks_consecutive_failures", &[("issuer", name)]),
            stop: CancellationToken::new(),
            config: config.clone(),
        }
    }

    /// Installs a JWK set document as the keys in force.
    pub fn install(&self, body: &[u8]) -> Result<usize, String> {
        let set = KeySet::parse(body, &self.allowed, &self.validation)?;
        let count = set.keys.len();
        if set.skipped > 0 {
            tracing::debug!(issuer = %self.config.name, skipped = set.skipped, "JWKS keys skipped");
        }
        self.keys.store(Arc::new(Keys {
            set,
            fetched: Some(Instant::now()),
        }));
        self.key_count.set(count as f64);
        Ok(count)
    }

    /// Fetches the JWKS now (the caller holds the single-flight lock).
    /// Returns the refresh interval the answer asks for.
    async fn fetch(&self, fetches: &mut Fetches) -> Result<Duration, String> {
        fetches.last_attempt = Some(Instant::now());
        let Some(uri) = &self.uri else {
            return Err("invalid jwks_uri".into());
        };
        let result = jwks::fetch(&self.client, uri, self.config.jwks.timeout)
            .await
            .map_err(|e| e.to_string())
            .and_then(|(body, max_age)| self.install(&body).map(|_| max_age));
        match result {
            Ok(max_age) => {
                self.fetch_ok.increment(1);
                self.stale.set(0.0);
                Ok(refresh_interval(max_age, &self.config.jwks))
            }
            Err(error) => {
                self.fetch_failed.increment(1);
                self.stale.increment(1.0);
                tracing::warn!(issuer = %self.config.name, %error, "JWKS fetch failed; keeping the last good keys");
                Err(error)
            }
        }
    }

    /// One scheduled refresh; returns when the next one is due.
    async fn refresh(&self) -> Duration {
        let mut fetches = self.fetches.lock().await;
        self.fetch(&mut fetches)
            .await
            .unwrap_or(self.config.jwks.min_refresh)
    }

    /// Called when a token names a key the set lacks (or before the first
    /// fetch): fetches once, unless another request just did or is doing so.
    pub async fn refetch_for(&self, kid: Option<&str>) {
        let seen = self.keys.load().fetched;
        let mut fetches = self.fetches.lock().await;
        // Someone fetched while we waited: use their answer.
        if self.keys.load().fetched != seen {
            return;
        }
        if kid.is_some_and(|kid| self.keys.load().set.get(kid).is_some()) {
            return;
        }
        let recent = fetches
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.config.jwks.unknown_kid_interval);
        if !recent {
            let _ = self.fetch(&mut fetches).await;
        }
    }

    /// Verifies `token` with the keys in force, at `now` (Unix ms). Never
    /// fetches: an unknown key is [`Refusal::UnknownKey`], which the caller
    /// may answer with [`Issuer::refetch_for`] and a second call.
    pub fn check(&self, token: &str, now: u64) -> Result<Arc<Identity>, Refusal> {
        if token.len() > self.config.max_token_bytes {
            return Err(Refusal::invalid(
                "token_too_large",
                "the token is too large",
            ));
        }
        let keys = self.keys.load();
        if let Some(fetched) = keys.fetched
            && fetched.elapsed() > self.config.jwks.max_stale
        {
            return Err(Refusal::Unavailable("the issuer's keys are stale"));
        }
        let hash = digest(token);
        if let Some(hit) = self.cache.get(&hash, now) {
            // The key that verified it must still be published.
            let current = match &hit.key.kid {
                Some(kid) => keys.set.get(kid).is_some_and(|k| Arc::ptr_eq(k, &hit.key)),
                None => keys.set.keys.iter().any(|k| Arc::ptr_eq(k, &hit.key)),
            };
            if current {
                return Ok(hit.identity);
            }
            self.cache.remove(&hash);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::invalid("malformed_token", "the token is not a valid JWT"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(Refusal::invalid(
                "algorithm_not_allowed",
                "the token's algorithm is not allowed",
            ));
        }
        let key = match header.kid.as_deref() {
            Some(kid) => keys.set.get(kid).cloned(),
            None => {
                let mut compatible = keys
                    .set
                    .keys
                    .iter()
                    .filter(|k| k.algorithms.contains(&header.alg));
                match (compatible.next(), compatible.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        };
        let Some(key) = key else {
            if keys.fetched.is_none() {
                return Err(Refusal::NoKeys);
            }
            return Err(Refusal::UnknownKey);
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(Refusal::invalid(
                "algorithm_mismatch",
                "the token's algorithm does not match its key",
            ));
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &key.validation,
        )
        .map_err(|e| refusal(e.kind()))?;
        let identity = Arc::new(Identity::from_claims(
            AuthMethod::Jwt,
            &data.claims,
            &self.config.claims,
            Some(self.config.issuer.as_str()),
        )?);
        if let Some(exp) = identity.expires_at {
            self.cache.insert(
                hash,
                Verified {
                    identity: identity.clone(),
                    key,
                },
                exp,
                now,
            );
        }
        Ok(identity)
    }

    /// [`Issuer::check`], fetching the JWKS once when the key is unknown.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Arc<Identity>, Refusal> {
        match self.check(token, now) {
            Err(Refusal::UnknownKey | Refusal::NoKeys) => {
                let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
                self.refetch_for(kid.as_deref()).await;
                match self.check(token, now) {
                    Err(Refusal::NoKeys) => Err(Refusal::Unavailable(
                        "the issuer's keys could not be fetched",
                    )),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Number of verified tokens remembered.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// When to fetch again after an answer with `max_age`: the answer's
/// lifetime within the configured bounds, `max_refresh` without one.
fn refresh_interval(max_age: Option<Duration>, bounds: &raft::model::JwksCache) -> Duration {
    max_age
        .unwrap_or(bounds.max_refresh)
        .clamp(bounds.min_refresh, bounds.max_refresh)
}

fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind as E;
    match kind {
        E::ExpiredSignature => Refusal::invalid("token_expired", "the token has expired"),
        E::ImmatureSignature => {
            Refusal::invalid("token_not_yet_valid", "the token is not valid yet")
        }
        E::InvalidIssuer => {
            Refusal::invalid("invalid_issuer", "the token's issuer is not accepted")
        }
        E::InvalidAudience => Refusal::invalid(
            "invalid_audience",
            "the token is not meant for this audience",
        ),
        E::InvalidSignature => {
            Refusal::invalid("invalid_signature", "the token's signature is not valid")
        }
        E::MissingRequiredClaim(_) | E::InvalidClaimFormat(_) => Refusal::invalid(
            "invalid_claims",
            "the token lacks a required claim (exp, iss, aud)",
        ),
        E::InvalidAlgorithm => Refusal::invalid(
            "algorithm_mismatch",
            "the token's algorithm does not match its key",
        ),
        _ => Refusal::invalid("malformed_token", "the token is not a valid JWT"),
    }
}

/// Starts the refresh task of `issuer`: it ends when the node shuts down or
/// the issuer leaves the configuration.
pub fn spawn_refresh(issuer: &Arc<Issuer>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let span = tracing::info_span!("jwks", issuer = %issuer.config.name);
    let weak: Weak<Issuer> = Arc::downgrade(issuer);
    let stop = issuer.stop.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(
        async move {
            loop {
                let Some(issuer) = weak.upgrade() else { return };
                let next = tokio::select! {
                    next = issuer.refresh() => next,
                    () = stop.cancelled() => return,
                    () = shutdown.cancelled() => return,
                };
                drop(issuer);
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = stop.cancelled() => return,
                    () = shutdown.cancelled() => return,
                }
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_clamped_to_the_refresh_bounds() {
        let bounds = raft::model::JwksCache {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            ..Default::default()
        };
        let at = |s| refresh_interval(Some(Duration::from_secs(s)), &bounds);
        assert_eq!(
            at(0),
            Duration::from_secs(60),
            "no-store does not hammer the IdP"
        );
        assert_eq!(at(600), Duration::from_secs(600));
        assert_eq!(at(86_400), Duration::from_secs(3600));
        assert_eq!(refresh_interval(None, &bounds), Duration::from_secs(3600));
    }

    fn issuer(algorithms: &str) -> Issuer {
        let yaml = format!(
            "auth:\n  jwt:\n    - {{ name: t, issuer: \"https://i/\", jwks_uri: \"http://127.0.0.1:1/\", audiences: [api], algorithms: [{algorithms}] }}\n"
        );
        let config = raft::model::GatewayConfig::parse(&yaml).unwrap();
        Issuer::new(&config.auth.jwt[0], &Metrics::new())
    }

    #[test]
    fn without_keys_tokens_wait_for_a_fetch_and_oversized_ones_are_refused() {
        let issuer = issuer("ES256");
        let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert_eq!(issuer.check(token, 0).unwrap_err(), Refusal::NoKeys);
        issuer.install(br#"{"keys": []}"#).unwrap();
        assert_eq!(issuer.check(token, 0).unwrap_err(), Refusal::UnknownKey);
        let huge = "a".repeat(9000);
        assert!(matches!(
            issuer.check(&huge, 0),
            Err(Refusal::Invalid {
                code: "token_too_large",
                ..
            })
        ));
        // Not in the allow-list: refused before any key lookup.
        let rs = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert!(matches!(
            issuer.check(rs, 0),
            Err(Refusal::Invalid {
                code: "algorithm_not_allowed",
                ..
            })
        ));
        assert!(
            issuer.install(b"not json").is_err(),
            "a bad document keeps the old keys"
        );
    }
}
