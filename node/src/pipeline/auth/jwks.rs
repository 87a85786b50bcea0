//! JWK sets: fetching one over HTTP(S), turning it into verification keys,
//! and the HTTP client the auth stage uses for its identity providers.
//!
//! A key's algorithms come from the key itself, never from a token: the
//! JWK's `alg` when present, otherwise its type and curve (`EC P-256` →
//! ES256, `EC P-384` → ES384, `OKP Ed25519` → EdDSA, `RSA` → the RS*/PS*
//! family), intersected with the issuer's allow-list. Symmetric (`oct`)
//! keys, encryption keys (`use: enc`), RSA keys under 2048 bits and keys of
//! unknown types are skipped, each counted in the set's `skipped`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The client used for JWKS and introspection calls (HTTP and HTTPS with
/// the system's roots).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest JWKS or introspection answer read.
pub const MAX_BODY: usize = 256 * 1024;
/// Most keys kept from one JWK set.
pub const MAX_KEYS: usize = 64;

/// The shared client, made on first use.
pub fn client() -> HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = hyper_rustls::HttpsConnectorBuilder::new();
            let builder = match builder.with_provider_and_native_roots(provider.clone()) {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(%error, "no system CA roots: https identity providers will fail");
                    let config = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .expect("aws-lc-rs supports the default protocol versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
                }
            };
            let connector = builder.https_or_http().enable_http1().build();
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(8)
                .build(connector)
        })
        .clone()
}

/// Why a call to an identity provider failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("request failed: {0}")]
    Request(String),
    /// An answer other than 200.
    #[error("answered {0}")]
    Status(StatusCode),
    /// A body that is too large or not what was expected.
    #[error("bad answer: {0}")]
    Body(String),
}

/// Sends `request` and reads a 200 answer's body (at most [`MAX_BODY`]).
pub async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(HeaderMap, Bytes), FetchError> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        Ok((parts.headers, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// Fetches the JWK set at `uri`; returns the body and its `max-age`.
pub async fn fetch(
    client: &HttpClient,
    uri: &Uri,
    timeout: Duration,
) -> Result<(Bytes, Option<Duration>), FetchError> {
    let request = Request::get(uri.clone())
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .body(Full::default())
        .map_err(|e| FetchError::Request(e.to_string()))?;
    let (headers, body) = call(client, request, timeout).await?;
    Ok((body, max_age(&headers)))
}

/// `Cache-Control: max-age=N` of an answer (`no-store`/`no-cache` count as 0).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            return seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    None
}

/// One verification key of an issuer.
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The algorithms this key verifies (from the key, within the allow-list).
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub key: DecodingKey,
    /// Claim checks with `algorithms` filled in.
    pub validation: Validation,
}

/// The keys of one JWK set.
#[derive(Default)]
pub struct KeySet {
    /// Keys in the order of the set.
    pub keys: Vec<Arc<Key>>,
    /// Index of `keys` by `kid`.
    pub by_kid: HashMap<String, usize>,
    /// JWKs that were skipped (unsupported, symmetric, weak, malformed).
    pub skipped: usize,
}

impl KeySet {
    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// Parses a JWK set document. `validation` is the issuer's claim
    /// checks; `allowed` its algorithm allow-list.
    pub fn parse(
        body: &[u8],
        allowed: &[Algorithm],
        validation: &Validation,
    ) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut set = KeySet::default();
        for value in document.keys {
            if set.keys.len() == MAX_KEYS {
                set.skipped += 1;
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                set.skipped += 1;
                continue;
            };
            match key_from_jwk(&jwk, allowed, validation) {
                Some(key) => {
                    if let Some(kid) = &key.kid {
                        if set.by_kid.contains_key(kid) {
                            set.skipped += 1;
                            continue;
                        }
                        set.by_kid.insert(kid.clone(), set.keys.len());
                    }
                    set.keys.push(Arc::new(key));
                }
                None => set.skipped += 1,
            }
        }
        Ok(set)
    }
}

const RSA_FAMILY: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn key_from_jwk(jwk: &Jwk, allowed: &[Algorithm], validation: &Validation) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(Algorithm::from_str(&format!("{alg:?}")).ok()?),
    };
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let bits = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                rsa.n.trim_end_matches('='),
            )
            .ok()?
            .iter()
            .skip_while(|b| **b == 0)
            .count()
                * 8;
            if bits < 2048 {
                return None;
            }
            RSA_FAMILY.to_vec()
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys never verify tokens of a JWKS issuer.
        _ => return None,
    };
    if matches!(
        jwk.common.key_algorithm,
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512)
    ) {
        return None;
    }
    let algorithms: Vec<Algorithm> = family
        .into_iter()
        .filter(|alg| declared.is_none_or(|d| d == *alg))
        .filter(|alg| allowed.contains(alg))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let mut validation = validation.clone();
    validation.algorithms = algorithms.clone();
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
        validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value, allowed: &[Algorithm]) -> KeySet {
        KeySet::parse(
            json.to_string().as_bytes(),
            allowed,
            &Validation::new(Algorithm::ES256),
        )
        .unwrap()
    }

    #[test]
    fn algorithms_come_from_the_key() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let set = parse(
            serde_json::json!({"keys": [ec.clone()]}),
            &[Algorithm::ES256],
        );
        assert_eq!(set.get("e").unwrap().algorithms, [Algorithm::ES256]);
        // Not allowed by the issuer: skipped.
        let set = parse(serde_json::json!({"keys": [ec]}), &[Algorithm::RS256]);
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped, 1);
    }

    #[test]
    fn symmetric_weak_and_encryption_keys_are_skipped() {
        let set = parse(
            serde_json::json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "small"},
                {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc",
                 "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty": "weird"},
                "not an object"
            ]}),
            &[Algorithm::RS256, Algorithm::ES256],
        );
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped, 5);
    }

    #[test]
    fn max_age_is_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(600)));
        headers.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
        headers.clear();
        assert_eq!(max_age(&headers), None);
    }
}
