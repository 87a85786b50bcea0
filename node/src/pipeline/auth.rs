//! `auth`: who is calling. Runs after `route`, for every request.
//!
//! First it deletes every identity header the client sent (`x-consumer-*`,
//! `x-auth-*`, `x-client-cert-*`), so nothing a client sends can pass for
//! verified identity.
//! Then, on a route with `auth`, it tries the route's methods in order and
//! admits the caller on the first that accepts its credential, recording
//! the [`Principal`]; the proxy writes its identity headers last, after
//! hop-by-hop stripping. A route's `scopes` must all be carried by the
//! caller's token (403 `insufficient_scope` otherwise).
//!
//! - `api_key`: the key in the configured header (`X-API-Key`), or in the
//!   configured query parameter (opt-in); see [`api_key`]. The key is
//!   removed from the request before it is forwarded.
//! - `jwt`: `Authorization: Bearer <JWT>` from a configured issuer; see [`jwt`].
//! - `introspection`: `Authorization: Bearer <token>` checked with an
//!   RFC 7662 endpoint; see [`introspect`].
//! - `mtls`: a client certificate verified in the TLS handshake (see
//!   `crate::tls`); the caller is the consumer whose name or id equals the
//!   certificate's identity, else the identity itself (`x-auth-sub`). A
//!   certificate whose serial is revoked in the replicated state
//!   (`meridian revoke cert`) is refused.
//!
//! Refusals: 401 with the JSON error and one `WWW-Authenticate` challenge
//! per method of the route (`ApiKey header="…"`, `Bearer realm="meridian"`
//! with `error="invalid_token"` when a token was refused); 403 for missing
//! scopes; 503 `auth_unavailable` with `Retry-After` when the identity
//! provider cannot be asked (never a 500, never an admission). Every
//! refusal is counted by reason in `meridian_auth_failures_total`.
//! Revocations (`meridian revoke jwt --jti/--sub`, key revocations) are
//! checked on every request, cached token or not.

pub mod api_key;
pub mod cache;
pub mod introspect;
pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use raft::model::{AuthMethod, ClaimNames, GatewayConfig, Revocation};

pub use self::api_key::{NewKey, new_key};
use super::route::Route;
use super::{Flow, Request, RequestCx, Stage, Step, ready, wait};
use crate::Shared;
use crate::cluster::{Cluster, now_ms};
use crate::error::{Error, Kind};

/// Sent upstream: the consumer's id.
pub static CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
/// Sent upstream: the consumer's name.
pub static CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
/// Sent upstream: the consumer's plan.
pub static CONSUMER_PLAN: HeaderName = HeaderName::from_static("x-consumer-plan");
/// Sent upstream: the method that admitted the caller.
pub static AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
/// Sent upstream: the token's subject.
pub static AUTH_SUB: HeaderName = HeaderName::from_static("x-auth-sub");
/// Sent upstream: the token's scopes, space-separated.
pub static AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
/// Sent upstream: the token's roles, comma-separated.
pub static AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
/// Sent upstream: the token's tenant.
pub static AUTH_TENANT: HeaderName = HeaderName::from_static("x-auth-tenant");
/// Sent upstream: the token's issuer.
pub static AUTH_ISSUER: HeaderName = HeaderName::from_static("x-auth-issuer");
/// Sent upstream: the OAuth client the token was issued to.
pub static AUTH_CLIENT_ID: HeaderName = HeaderName::from_static("x-auth-client-id");

/// Longest bearer token looked at for any issuer (issuers set a lower
/// `max_token_bytes`); checked before the token is parsed at all.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Longest token sent to an introspection endpoint.
const MAX_OPAQUE_TOKEN_BYTES: usize = 16 * 1024;

/// Realm named in `Bearer` challenges.
const REALM: &str = "meridian";

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credential is wrong; `code` names why (401).
    Invalid {
        /// Machine-readable reason (metric label and JSON `code`).
        code: &'static str,
        /// Explanation for the client.
        message: &'static str,
    },
    /// The token names a key its issuer does not publish (yet).
    UnknownKey,
    /// The issuer's keys were never fetched.
    NoKeys,
    /// The identity provider cannot be asked (503).
    Unavailable(&'static str),
}

impl Refusal {
    /// An invalid credential.
    pub fn invalid(code: &'static str, message: &'static str) -> Self {
        Self::Invalid { code, message }
    }
}

/// What a verified token says about its bearer.
#[derive(Debug)]
pub struct Identity {
    /// `jwt` or `introspection`.
    pub method: AuthMethod,
    /// The subject claim.
    pub subject: Option<String>,
    /// `jti`.
    pub jti: Option<String>,
    /// `iat`, in Unix ms.
    pub issued_at: Option<u64>,
    /// `exp`, in Unix ms.
    pub expires_at: Option<u64>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// A consumer named by the configured consumer claim.
    pub consumer: Option<String>,
    /// Every claim of the verified token (JWT payload or introspection
    /// answer), for `{jwt.claims.<name>}` templates; empty for `mtls`.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `x-auth-*` headers, ready to send.
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn claim_list(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        serde_json::Value::Array(items) => items.iter().filter_map(claim_text).collect(),
        _ => Vec::new(),
    }
}

fn seconds_ms(value: Option<&serde_json::Value>) -> Option<u64> {
    let value = value?;
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .map(|s| s.saturating_mul(1000))
}

impl Identity {
    /// A claim as text: strings as they are, numbers and booleans printed,
    /// arrays of those joined with `,`; `None` for objects, `null` and
    /// absent claims.
    pub fn claim(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self.claims.get(name)? {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            serde_json::Value::Array(items) => {
                let mut out = String::new();
                for item in items {
                    let text = match item {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        serde_json::Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    if !out.is_empty() {
                        out.push(',');
                    }
                    out.push_str(&text);
                }
                Some(Cow::Owned(out))
            }
            serde_json::Value::Null | serde_json::Value::Object(_) => None,
        }
    }

    /// Reads the identity from verified claims (a JWT payload or an
    /// introspection answer). Claims that cannot be a header value refuse
    /// the token rather than being dropped silently.
    pub fn from_claims(
        method: AuthMethod,
        claims: &serde_json::Map<String, serde_json::Value>,
        names: &ClaimNames,
        issuer: Option<&str>,
    ) -> Result<Self, Refusal> {
        let bad = || {
            Refusal::invalid(
                "invalid_claims",
                "the token's claims cannot be sent upstream",
            )
        };
        let mut headers = Vec::with_capacity(6);
        let mut push = |name: &HeaderName, value: &str| -> Result<(), Refusal> {
            if !value.is_empty() {
                headers.push((
                    name.clone(),
                    HeaderValue::from_str(value).map_err(|_| bad())?,
                ));
            }
            Ok(())
        };
        let subject = claims.get(&names.subject).and_then(claim_text);
        if let Some(subject) = &subject {
            push(&AUTH_SUB, subject)?;
        }
        let scopes = claims
            .get(&names.scopes)
            .map(claim_list)
            .unwrap_or_default();
        push(&AUTH_SCOPES, &scopes.join(" "))?;
        let roles = claims.get(&names.roles).map(claim_list).unwrap_or_default();
        push(&AUTH_ROLES, &roles.join(","))?;
        if let Some(tenant) = claims.get(&names.tenant).and_then(claim_text) {
            push(&AUTH_TENANT, &tenant)?;
        }
        let issuer = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .or(issuer)
            .unwrap_or_default();
        push(&AUTH_ISSUER, issuer)?;
        if let Some(client) = claims.get("client_id").and_then(|v| v.as_str()) {
            push(&AUTH_CLIENT_ID, client)?;
        }
        Ok(Self {
            method,
            subject,
            jti: claims.get("jti").and_then(claim_text),
            issued_at: seconds_ms(claims.get("iat")),
            expires_at: seconds_ms(claims.get("exp")),
            scopes,
            consumer: names
                .consumer
                .as_ref()
                .and_then(|claim| claims.get(claim))
                .and_then(claim_text),
            claims: claims.clone(),
            headers,
        })
    }
}

/// A consumer as sent upstream.
#[derive(Debug)]
pub struct Consumer {
    /// Its name.
    pub name: String,
    /// Its id (`x-consumer-id`; the name unless set).
    pub id: String,
    /// Its plan.
    pub plan: Option<String>,
    /// `x-consumer-id`, `x-consumer-name` and `x-consumer-plan`.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Consumer {
    /// The consumer `model` as sent upstream.
    pub fn new(model: &raft::model::Consumer) -> Self {
        let mut headers = Vec::with_capacity(3);
        for (name, value) in [
            (&CONSUMER_ID, Some(model.id())),
            (&CONSUMER_NAME, Some(model.name.as_str())),
            (&CONSUMER_PLAN, model.plan.as_deref()),
        ] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.push((name.clone(), value));
            }
        }
        Self {
            name: model.name.clone(),
            id: model.id().to_owned(),
            plan: model.plan.clone(),
            headers,
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The method that admitted it.
    pub method: AuthMethod,
    /// The API key id, for `api_key`.
    pub key_id: Option<Arc<str>>,
    /// The consumer, when the credential belongs to (or names) one.
    pub consumer: Option<Arc<Consumer>>,
    /// The token's identity, for `jwt` and `introspection`.
    pub identity: Option<Arc<Identity>>,
}

impl Principal {
    /// The consumer's name, if any.
    pub fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_ref().map(|c| c.name.as_str())
    }

    /// Scopes the caller holds (API keys hold none).
    pub fn scopes(&self) -> &[String] {
        self.identity.as_ref().map_or(&[], |i| i.scopes.as_slice())
    }

    /// Writes the identity headers (DESIGN §2) into `headers`, replacing
    /// any of the same name.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(
            AUTH_METHOD.clone(),
            HeaderValue::from_static(self.method.as_str()),
        );
        if let Some(consumer) = &self.consumer {
            for (name, value) in &consumer.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(identity) = &self.identity {
            for (name, value) in &identity.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// The auth part of a compiled snapshot: consumers by name, the API key's
/// location and the issuers and endpoints (kept across snapshots while
/// their configuration is unchanged, caches and keys included).
pub struct Runtime {
    /// Header holding API keys.
    pub api_key_header: HeaderName,
    /// Query parameter holding API keys (opt-in).
    pub api_key_query: Option<String>,
    api_key_challenge: HeaderValue,
    consumers: HashMap<String, Arc<Consumer>>,
    /// JWT issuers, in configuration order.
    pub issuers: Vec<Arc<jwt::Issuer>>,
    /// Introspection endpoints, in configuration order.
    pub endpoints: Vec<Arc<introspect::Endpoint>>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            api_key_header: HeaderName::from_static("x-api-key"),
            api_key_query: None,
            api_key_challenge: HeaderValue::from_static("ApiKey header=\"X-API-Key\""),
            consumers: HashMap::new(),
            issuers: Vec::new(),
            endpoints: Vec::new(),
        }
    }
}

impl Runtime {
    /// Compiles the auth part of `config`, reusing `previous`'s issuers and
    /// endpoints whose definition did not change; new issuers get their
    /// JWKS refresh task.
    pub fn compile(config: &GatewayConfig, previous: &Runtime, shared: &Shared) -> Self {
        let auth = &config.auth;
        let consumers = config
            .consumers
            .iter()
            .map(|c| {
                let consumer = Consumer::new(c);
                (c.name.clone(), Arc::new(consumer))
            })
            .collect();
        let issuers = auth
            .jwt
            .iter()
            .map(
                |definition| match previous.issuers.iter().find(|i| i.config == *definition) {
                    Some(issuer) => issuer.clone(),
                    None => {
                        let issuer = Arc::new(jwt::Issuer::new(definition, &shared.metrics));
                        jwt::spawn_refresh(&issuer, &shared.tasks, &shared.shutdown);
                        issuer
                    }
                },
            )
            .collect();
        let endpoints = auth
            .introspection
            .iter()
            .map(
                |definition| match previous.endpoints.iter().find(|e| e.config == *definition) {
                    Some(endpoint) => endpoint.clone(),
                    None => Arc::new(introspect::Endpoint::new(definition, &shared.metrics)),
                },
            )
            .collect();
        let header = &auth.api_key.header;
        Self {
            api_key_header: HeaderName::from_bytes(header.as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static("x-api-key")),
            api_key_query: auth.api_key.query.clone(),
            api_key_challenge: HeaderValue::from_str(&format!("ApiKey header=\"{header}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("ApiKey")),
            consumers,
            issuers,
            endpoints,
        }
    }

    /// The consumer named `name`.
    pub fn consumer(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(name)
    }

    /// The issuer of `token`: the only one, or the one its `iss` names.
    pub fn issuer_for(&self, token: &str) -> Option<&Arc<jwt::Issuer>> {
        if self.issuers.len() == 1 {
            return self.issuers.first();
        }
        #[derive(serde::Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
        let payload = token.split('.').nth(1)?;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .ok()?;
        let iss = serde_json::from_slice::<Peek>(&bytes).ok()?.iss?;
        self.issuers.iter().find(|i| i.config.issuer == iss)
    }
}

/// The credential of `method` a request carries.
enum Presented<'a> {
    None,
    Some(&'a str),
    /// Present but not text.
    Garbled,
}

fn bearer(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(text) = value.to_str() else {
        return Presented::Garbled;
    };
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Presented::Garbled
            } else {
                Presented::Some(token)
            }
        }
        _ => Presented::None,
    }
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// `uri` without the query parameter `name`.
fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

fn unauthenticated(
    code: &'static str,
    message: &'static str,
    challenges: Vec<HeaderValue>,
) -> Error {
    Error::new(Kind::Unauthenticated {
        code,
        message,
        challenges,
    })
}

/// The `auth` stage.
pub struct Auth {
    cluster: Arc<Cluster>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// How an attempt ended.
enum Outcome {
    Admitted(Principal),
    Refused(Refusal),
    Absent,
}

impl Auth {
    /// The stage, reading keys and revocations from the cluster's applied state.
    pub fn new(cluster: Arc<Cluster>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { cluster, metrics }
    }

    fn api_key(&self, runtime: &Runtime, req: &Request, now: u64) -> (Outcome, bool) {
        let (presented, from_query) = match req.headers().get(&runtime.api_key_header) {
            Some(value) => (value.to_str().ok(), false),
            None => match &runtime.api_key_query {
                Some(name) => match query_param(req.uri(), name) {
                    Some(value) => (Some(value), true),
                    None => return (Outcome::Absent, false),
                },
                None => return (Outcome::Absent, false),
            },
        };
        let Some(presented) = presented else {
            return (
                Outcome::Refused(Refusal::invalid(
                    "invalid_credentials",
                    "the API key is not valid",
                )),
                from_query,
            );
        };
        let applied = self.cluster.applied();
        let outcome = match api_key::verify(
            presented,
            &self.cluster.identity.cluster_key,
            &applied.state,
            now,
        ) {
            Ok((id, consumer)) => match runtime.consumer(consumer) {
                Some(consumer) => Outcome::Admitted(Principal {
                    method: AuthMethod::ApiKey,
                    key_id: Some(Arc::from(id)),
                    consumer: Some(consumer.clone()),
                    identity: None,
                }),
                None => Outcome::Refused(Refusal::invalid(
                    "invalid_credentials",
                    "the API key is not valid",
                )),
            },
            Err(refusal) => Outcome::Refused(refusal),
        };
        (outcome, from_query)
    }

    /// Admits a connection's verified client certificate unless its serial
    /// was revoked.
    fn mtls(&self, runtime: &Runtime, cx: &RequestCx, now: u64) -> Outcome {
        let Some(cert) = cx.tls.as_ref().and_then(|tls| tls.client.as_ref()) else {
            return Outcome::Absent;
        };
        if self
            .cluster
            .applied()
            .state
            .is_certificate_revoked(&cert.serial, now)
        {
            return Outcome::Refused(Refusal::invalid(
                "certificate_revoked",
                "the client certificate has been revoked",
            ));
        }
        let consumer = runtime.consumer(&cert.identity).cloned().or_else(|| {
            runtime
                .consumers
                .values()
                .find(|c| c.id == cert.identity)
                .cloned()
        });
        let Ok(subject) = HeaderValue::from_str(&cert.identity) else {
            return Outcome::Refused(Refusal::invalid(
                "invalid_credentials",
                "the client certificate identity is not usable",
            ));
        };
        Outcome::Admitted(Principal {
            method: AuthMethod::Mtls,
            key_id: None,
            consumer,
            identity: Some(Arc::new(Identity {
                method: AuthMethod::Mtls,
                subject: Some(cert.identity.clone()),
                jti: None,
                issued_at: None,
                expires_at: None,
                scopes: Vec::new(),
                consumer: None,
                claims: serde_json::Map::new(),
                headers: vec![(AUTH_SUB.clone(), subject)],
            })),
        })
    }

    /// Admits a verified token unless it was revoked.
    fn token_principal(&self, runtime: &Runtime, identity: Arc<Identity>, now: u64) -> Outcome {
        let applied = self.cluster.applied();
        let state = &applied.state;
        if !state.revocations.is_empty() {
            let by_jti = identity
                .jti
                .as_ref()
                .is_some_and(|jti| state.is_revoked(&Revocation::JwtId(jti.clone()), now));
            let by_subject = identity
                .subject
                .as_ref()
                .is_some_and(|sub| state.is_subject_revoked(sub, identity.issued_at, now));
            if by_jti || by_subject {
                return Outcome::Refused(Refusal::invalid(
                    "token_revoked",
                    "the token has been revoked",
                ));
            }
        }
        Outcome::Admitted(Principal {
            method: identity.method,
            key_id: None,
            consumer: identity
                .consumer
                .as_deref()
                .and_then(|name| runtime.consumer(name))
                .cloned(),
            identity: Some(identity),
        })
    }

    async fn jwt(&self, runtime: &Runtime, token: &str, now: u64) -> Outcome {
        if token.len() > MAX_TOKEN_BYTES {
            return Outcome::Refused(Refusal::invalid(
                "token_too_large",
                "the token is too large",
            ));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Outcome::Refused(Refusal::invalid(
                "malformed_token",
                "the token is not a valid JWT",
            ));
        }
        let Some(issuer) = runtime.issuer_for(token) else {
            return Outcome::Refused(Refusal::invalid(
                "invalid_issuer",
                "the token's issuer is not accepted",
            ));
        };
        match issuer.verify(token, now).await {
            Ok(identity) => self.token_principal(runtime, identity, now),
            Err(Refusal::UnknownKey) => Outcome::Refused(Refusal::invalid(
                "unknown_key",
                "the token's signing key is not known",
            )),
            Err(refusal) => Outcome::Refused(refusal),
        }
    }

    async fn introspect(&self, runtime: &Runtime, token: &str, now: u64) -> Outcome {
        if token.len() > MAX_OPAQUE_TOKEN_BYTES {
            return Outcome::Refused(Refusal::invalid(
                "token_too_large",
                "the token is too large",
            ));
        }
        let mut last = Outcome::Absent;
        for endpoint in &runtime.endpoints {
            match endpoint.verify(token, now).await {
                Ok(identity) => return self.token_principal(runtime, identity, now),
                Err(refusal) => last = Outcome::Refused(refusal),
            }
        }
        last
    }

    fn refuse(&self, error: Error) -> Result<Flow, Error> {
        self.metrics.auth_failure(error.code());
        Err(error)
    }

    /// Tries the route's methods in order until one admits the caller.
    async fn authenticate(
        &self,
        route: Arc<Route>,
        cx: &mut RequestCx,
        req: &mut Request,
    ) -> Result<Flow, Error> {
        let snapshot = cx.snapshot.clone();
        let runtime = &snapshot.auth;
        let now = now_ms();
        let mut refusal: Option<Refusal> = None;
        let mut token_refused = false;
        let mut admitted = None;
        for method in &route.auth {
            let outcome = match method {
                AuthMethod::ApiKey => {
                    let (outcome, from_query) = self.api_key(runtime, req, now);
                    if let Outcome::Admitted(_) = outcome {
                        admitted = Some(from_query);
                    }
                    outcome
                }
                AuthMethod::Mtls => self.mtls(runtime, cx, now),
                AuthMethod::Jwt | AuthMethod::Introspection => match bearer(req.headers()) {
                    Presented::None => Outcome::Absent,
                    Presented::Garbled => Outcome::Refused(Refusal::invalid(
                        "malformed_token",
                        "the Authorization header is not a bearer token",
                    )),
                    Presented::Some(token) => {
                        let token = token.to_owned();
                        if *method == AuthMethod::Jwt {
                            self.jwt(runtime, &token, now).await
                        } else {
                            self.introspect(runtime, &token, now).await
                        }
                    }
                },
            };
            match outcome {
                Outcome::Admitted(principal) => {
                    cx.principal = Some(principal);
                    break;
                }
                Outcome::Refused(r) => {
                    if matches!(method, AuthMethod::Jwt | AuthMethod::Introspection) {
                        token_refused = true;
                    }
                    // An unavailable provider outranks a refusal: the
                    // credential may well be good.
                    // A later method's verdict beats "not a JWT" (an
                    // opaque token refused by introspection).
                    let replace = match (&refusal, &r) {
                        (None, _) => true,
                        (Some(Refusal::Unavailable(_)), _) => false,
                        (Some(_), Refusal::Unavailable(_)) => true,
                        (
                            Some(Refusal::Invalid {
                                code: "malformed_token",
                                ..
                            }),
                            Refusal::Invalid { .. },
                        ) => true,
                        _ => false,
                    };
                    if replace {
                        refusal = Some(r);
                    }
                }
                Outcome::Absent => {}
            }
        }
        let Some(principal) = &cx.principal else {
            let error = match refusal {
                Some(Refusal::Unavailable(message)) => {
                    Error::new(Kind::AuthUnavailable { message })
                }
                other => {
                    let (code, message) = match other {
                        Some(Refusal::Invalid { code, message }) => (code, message),
                        Some(Refusal::UnknownKey) => {
                            ("unknown_key", "the token's signing key is not known")
                        }
                        _ if route.auth == [AuthMethod::Mtls] => (
                            "missing_client_certificate",
                            "this route needs a verified client certificate",
                        ),
                        _ => ("missing_credentials", "this route needs credentials"),
                    };
                    let mut challenges = Vec::with_capacity(2);
                    if route.auth.contains(&AuthMethod::ApiKey) {
                        challenges.push(runtime.api_key_challenge.clone());
                    }
                    if route
                        .auth
                        .iter()
                        .any(|m| matches!(m, AuthMethod::Jwt | AuthMethod::Introspection))
                    {
                        let challenge = if token_refused {
                            format!(
                                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{message}\""
                            )
                        } else {
                            format!("Bearer realm=\"{REALM}\"")
                        };
                        if let Ok(value) = HeaderValue::from_str(&challenge) {
                            challenges.push(value);
                        }
                    }
                    unauthenticated(code, message, challenges)
                }
            };
            return self.refuse(error);
        };
        if !route.scopes.is_empty() {
            let held = principal.scopes();
            if !route.scopes.iter().all(|s| held.contains(s)) {
                cx.principal = None;
                return self.refuse(Error::new(Kind::InsufficientScope {
                    scope: route.scopes.join(" "),
                }));
            }
        }
        match admitted {
            Some(false) => {
                req.headers_mut().remove(&runtime.api_key_header);
            }
            Some(true) => {
                if let Some(name) = &runtime.api_key_query
                    && let Some(uri) = without_param(req.uri(), name)
                {
                    *req.uri_mut() = uri;
                }
            }
            None => {}
        }
        Ok(Flow::Continue)
    }
}

/// Removes identity headers a client may have sent.
fn strip_identity(headers: &mut HeaderMap) {
    crate::proxy::remove_fields(headers, |name| {
        let name = name.as_str();
        name.starts_with("x-consumer-")
            || name.starts_with("x-auth-")
            || name.starts_with("x-client-cert-")
    });
}

impl Stage for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        strip_identity(req.headers_mut());
        match cx
            .route
            .as_ref()
            .filter(|route| !route.auth.is_empty())
            .cloned()
        {
            Some(route) => wait(self.authenticate(route, cx, req)),
            None => ready(Ok(Flow::Continue)),
        }
    }
}

#[cfg(test)]
mod tests;
