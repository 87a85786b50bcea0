//! `auth`: who is calling. Runs after `route`, for every request.
//!
//! First it deletes every identity header the client sent (`x-consumer-*`,
//! `x-auth-*`), so nothing a client sends can pass for verified identity.
//! Then, on a route with `auth`, it admits a caller that presents one of the
//! route's credentials and records the [`Principal`]; the proxy sends it
//! upstream as `x-consumer-id` / `x-consumer-name`. `mtls` admits a
//! connection with a verified client certificate (see `crate::tls`).
//! Otherwise: 401 with the
//! JSON error and `WWW-Authenticate`.
//!
//! API keys look like `mk_<id>_<secret>`. The replicated state holds, per
//! key id, only `HMAC-SHA-256(cluster key, "<id>:<secret>")`; a lookup is
//! one map access by id and one HMAC, whatever the number of keys. A key
//! is live while its consumer exists in the configuration, it has not
//! expired and it has not been revoked. The key itself is not forwarded.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use raft::model::{AuthMethod, Revocation};

use super::{Flow, Request, RequestCx, Stage};
use crate::cluster::{Cluster, now_ms};
use crate::error::{Error, Kind};
use crate::pki;

/// The header API keys travel in.
pub static API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Sent upstream: the consumer's id.
pub static CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
/// Sent upstream: the consumer's name.
pub static CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The consumer's id.
    pub consumer_id: HeaderValue,
    /// The consumer's name.
    pub consumer_name: HeaderValue,
    /// The credential that admitted it (e.g. the API key id).
    pub credential: String,
}

/// A new API key: what the caller sees once, and what is replicated.
pub struct NewKey {
    /// Key id (public).
    pub id: String,
    /// The whole key, shown once.
    pub key: String,
    /// The replicated hash.
    pub hash: String,
}

/// Makes a new API key hashed under `cluster_key`.
pub fn new_key(cluster_key: &[u8]) -> NewKey {
    let random = pki::secret();
    let id = pki::hex(&random[..6]);
    let secret = pki::hex(&random[6..22]);
    NewKey {
        key: format!("mk_{id}_{secret}"),
        hash: key_hash(cluster_key, &id, &secret),
        id,
    }
}

fn key_hash(cluster_key: &[u8], id: &str, secret: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cluster_key);
    pki::hex(aws_lc_rs::hmac::sign(&key, format!("{id}:{secret}").as_bytes()).as_ref())
}

/// Why a credential was refused (the `code` of the 401).
fn refuse(code: &'static str, message: &'static str) -> Error {
    Error::new(Kind::Unauthorized { code, message })
}

/// The `auth` stage.
pub struct Auth {
    cluster: Arc<Cluster>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Auth {
    /// The stage, reading keys from the cluster's applied state.
    pub fn new(cluster: Arc<Cluster>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { cluster, metrics }
    }

    fn api_key(&self, cx: &RequestCx, req: &Request) -> Result<Principal, Error> {
        let Some(value) = req.headers().get(&API_KEY) else {
            return Err(refuse(
                "missing_credentials",
                "this route needs an API key in X-API-Key",
            ));
        };
        let invalid = || refuse("invalid_credentials", "the API key is not valid");
        let text = value.to_str().map_err(|_| invalid())?;
        let (id, secret) = text
            .strip_prefix("mk_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(invalid)?;
        let applied = self.cluster.applied();
        let record = applied.state.keys.get(id).ok_or_else(invalid)?;
        let presented = pki::unhex(&key_hash(&self.cluster.identity.cluster_key, id, secret));
        let stored = pki::unhex(&record.hash);
        let matches = match (presented, stored) {
            (Some(presented), Some(stored)) => {
                aws_lc_rs::constant_time::verify_slices_are_equal(&presented, &stored).is_ok()
            }
            _ => false,
        };
        if !matches {
            return Err(invalid());
        }
        let now = now_ms();
        if record.expires_at.is_some_and(|expires| expires <= now) {
            return Err(refuse("expired_credentials", "the API key has expired"));
        }
        if applied
            .state
            .is_revoked(&Revocation::ApiKey(id.to_owned()), now)
        {
            return Err(refuse(
                "revoked_credentials",
                "the API key has been revoked",
            ));
        }
        let consumer = cx
            .snapshot
            .config
            .consumers
            .iter()
            .find(|c| c.name == record.consumer)
            .ok_or_else(invalid)?;
        Ok(Principal {
            consumer_id: HeaderValue::from_str(consumer.id()).map_err(|_| invalid())?,
            consumer_name: HeaderValue::from_str(&consumer.name).map_err(|_| invalid())?,
            credential: id.to_owned(),
        })
    }
}

/// The caller of a connection with a verified client certificate: the
/// consumer whose name or id equals the certificate's identity, else the
/// identity itself as id and name.
fn mtls(cx: &RequestCx) -> Result<Principal, Error> {
    let Some(cert) = cx.tls.as_ref().and_then(|tls| tls.client.as_ref()) else {
        return Err(refuse(
            "missing_client_certificate",
            "this route needs a verified client certificate",
        ));
    };
    let invalid = || {
        refuse(
            "invalid_credentials",
            "the client certificate identity is not usable",
        )
    };
    let (id, name) = match cx
        .snapshot
        .config
        .consumers
        .iter()
        .find(|c| c.name == cert.identity || c.id() == cert.identity)
    {
        Some(consumer) => (consumer.id(), consumer.name.as_str()),
        None => (cert.identity.as_str(), cert.identity.as_str()),
    };
    Ok(Principal {
        consumer_id: HeaderValue::from_str(id).map_err(|_| invalid())?,
        consumer_name: HeaderValue::from_str(name).map_err(|_| invalid())?,
        credential: format!("mtls:{}", cert.serial),
    })
}

/// Removes identity headers a client may have sent (`x-consumer-*`,
/// `x-auth-*`, `x-client-cert-*`).
fn strip_identity(headers: &mut http::HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("x-consumer-")
                || name.starts_with("x-auth-")
                || name.starts_with("x-client-cert-")
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

#[async_trait::async_trait]
impl Stage for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    async fn on_request(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        strip_identity(req.headers_mut());
        let Some(route) = cx.route.clone() else {
            return Ok(Flow::Continue);
        };
        if route.auth.is_empty() {
            return Ok(Flow::Continue);
        }
        let mut refusal = None;
        for method in &route.auth {
            let attempt = match method {
                AuthMethod::ApiKey => self.api_key(cx, req),
                AuthMethod::Mtls => mtls(cx),
            };
            match attempt {
                Ok(principal) => {
                    req.headers_mut().remove(&API_KEY);
                    cx.principal = Some(principal);
                    return Ok(Flow::Continue);
                }
                Err(error) => refusal = Some(error),
            }
        }
        let error = refusal
            .unwrap_or_else(|| refuse("missing_credentials", "this route needs credentials"));
        self.metrics.auth_failure(error.code());
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_with_the_cluster_key() {
        let cluster_key = pki::secret();
        let key = new_key(&cluster_key);
        let (id, secret) = key
            .key
            .strip_prefix("mk_")
            .unwrap()
            .split_once('_')
            .unwrap();
        assert_eq!(id, key.id);
        assert_eq!(key_hash(&cluster_key, id, secret), key.hash);
        assert_ne!(key_hash(&pki::secret(), id, secret), key.hash);
        assert_eq!(key.key.len(), 3 + 12 + 1 + 32);
    }

    #[test]
    fn client_identity_headers_are_removed() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-consumer-id", HeaderValue::from_static("admin"));
        headers.insert("x-consumer-name", HeaderValue::from_static("admin"));
        headers.insert("x-auth-sub", HeaderValue::from_static("root"));
        headers.insert("x-client-cert-subject", HeaderValue::from_static("CN=root"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        strip_identity(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-other"));
    }
}
