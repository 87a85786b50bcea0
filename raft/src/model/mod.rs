//! The replicated model: the cluster-wide gateway configuration, as users
//! write it in `gateway.yaml` (JSON is accepted too, YAML being a superset
//! of it), and the [`State`] every node derives from the raft log.
//!
//! The types here are the serde shape of the document. [`GatewayConfig::parse`]
//! reads a document and checks every rule in [`validate`], returning *all*
//! violations at once, each naming the key, the offending value and the rule.
//! A node compiles a validated configuration into the immutable snapshot its
//! data plane reads.

pub mod aggregate;
pub mod graphql;
pub mod grpc;
pub mod limit;
pub mod pattern;
pub mod policy;
mod size;
pub mod state;
pub mod transform;
pub mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::aggregate::Aggregate;
pub use self::graphql::Graphql;
pub use self::grpc::Grpc;
pub use self::limit::{Limit, RateLimitSettings};
pub use self::policy::Policies;
pub use self::size::ByteSize;
pub use self::state::{Command, Member, NodeId, Outcome, Request, Revocation, State};
pub use self::transform::Transform;
pub use self::validate::{ConfigError, ConfigErrors};

/// The whole gateway configuration document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Named pools of backend targets.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, matched by the documented priority (see [`Route`]).
    pub routes: Vec<Route>,
    /// API versioning schemes, by API name.
    pub versioning: BTreeMap<String, Versioning>,
    /// The clients the gateway knows (API keys belong to consumers).
    pub consumers: Vec<Consumer>,
    /// Edge policies for every route (see [`policy`] for precedence).
    pub policies: Policies,
    /// Named plans consumers subscribe to.
    pub plans: BTreeMap<String, Plan>,
    /// How credentials are read and verified (API keys, JWT issuers,
    /// introspection endpoints).
    pub auth: AuthConfig,
    /// Which rate-limit headers responses carry.
    #[serde(skip_serializing_if = "RateLimitSettings::is_default")]
    pub rate_limit: RateLimitSettings,
}

/// A client of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Unique name (sent upstream as `x-consumer-name`).
    pub name: String,
    /// Stable id sent upstream as `x-consumer-id` (defaults to the name).
    #[serde(default)]
    pub id: Option<String>,
    /// The plan the consumer is on (sent upstream as `x-consumer-plan`).
    #[serde(default)]
    pub plan: Option<String>,
}

impl Consumer {
    /// The id sent upstream.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }
}

/// A way a route authenticates callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `X-API-Key: <key>` naming a live key of a known consumer.
    ApiKey,
    /// A client certificate verified in the TLS handshake (mTLS); the
    /// identity comes from its SAN URI, else SAN DNS, else subject CN.
    Mtls,
    /// `Authorization: Bearer <JWT>` signed by a key of a configured issuer.
    Jwt,
    /// `Authorization: Bearer <opaque token>` checked with an RFC 7662
    /// introspection endpoint.
    Introspection,
}

impl AuthMethod {
    /// The name used in configuration, logs and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// A plan consumers subscribe to: its name is sent upstream, and its limits
/// and quotas apply to each of its consumers on every route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// Free text for operators.
    pub description: Option<String>,
    /// Rate limits and quotas (see [`limit`]); keyed by consumer unless
    /// a limit says otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
}

/// The `auth` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Where API keys are read from.
    pub api_key: ApiKeyConfig,
    /// JWT issuers, each with its JWKS.
    pub jwt: Vec<JwtIssuer>,
    /// RFC 7662 introspection endpoints for opaque tokens.
    pub introspection: Vec<Introspection>,
}

/// Where API keys are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    /// The request header holding the key.
    pub header: String,
    /// A query parameter holding the key (off unless set); it is removed
    /// from the URL sent upstream.
    pub query: Option<String>,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            header: "X-API-Key".into(),
            query: None,
        }
    }
}

/// A JWT issuer whose signing keys are published as a JWKS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// Name used in metrics and logs.
    pub name: String,
    /// The exact `iss` claim of its tokens.
    pub issuer: String,
    /// `http(s)://` URL of the issuer's JWK set.
    pub jwks_uri: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (e.g. `RS256`, `ES256`, `EdDSA`).
    #[serde(default = "JwtIssuer::default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde", default = "JwtIssuer::default_leeway")]
    pub leeway: Duration,
    /// How the JWK set is cached and refreshed.
    #[serde(default)]
    pub jwks: JwksCache,
    /// Which claims carry the identity sent upstream.
    #[serde(default)]
    pub claims: ClaimNames,
    /// Longest token accepted, in bytes.
    #[serde(default = "JwtIssuer::default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (so a repeated token skips the signature).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

impl JwtIssuer {
    fn default_algorithms() -> Vec<String> {
        vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
    }
    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_token_bytes() -> usize {
        8 * 1024
    }
}

fn default_cache_entries() -> usize {
    10_000
}

/// How a JWK set is cached. The refresh interval is the JWKS response's
/// `Cache-Control: max-age`, clamped to `[min_refresh, max_refresh]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksCache {
    /// Shortest time between two scheduled fetches.
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// Longest time between two scheduled fetches (also used without max-age).
    #[serde(with = "humantime_serde")]
    pub max_refresh: Duration,
    /// Keys are kept this long after the last successful fetch while the
    /// endpoint fails; after that the issuer's tokens are refused (503).
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// Shortest time between two fetches triggered by an unknown `kid`.
    #[serde(with = "humantime_serde")]
    pub unknown_kid_interval: Duration,
    /// Limit of one fetch.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for JwksCache {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            max_stale: Duration::from_secs(24 * 3600),
            unknown_kid_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Claim names mapped to identity headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// `x-auth-sub`.
    pub subject: String,
    /// `x-auth-scopes` (a space-separated string or an array).
    pub scopes: String,
    /// `x-auth-roles` (an array or a string).
    pub roles: String,
    /// `x-auth-tenant`.
    pub tenant: String,
    /// A claim naming a configured consumer; when it does, the consumer's
    /// headers are sent too.
    pub consumer: Option<String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            scopes: "scope".into(),
            roles: "roles".into(),
            tenant: "tenant".into(),
            consumer: None,
        }
    }
}

/// An RFC 7662 token introspection endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// Name used in metrics and logs.
    pub name: String,
    /// `http(s)://` URL of the endpoint.
    pub endpoint: String,
    /// The gateway's client id (HTTP Basic user).
    pub client_id: String,
    /// The gateway's client secret (HTTP Basic password).
    pub client_secret: String,
    /// When set, an active answer's `aud` (a string or a list) must name
    /// one of these; otherwise the token is refused like an inactive one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// How long an active answer is reused (never past the token's `exp`).
    #[serde(with = "humantime_serde", default = "Introspection::default_ttl")]
    pub ttl: Duration,
    /// How long an inactive answer is reused.
    #[serde(
        with = "humantime_serde",
        default = "Introspection::default_negative_ttl"
    )]
    pub negative_ttl: Duration,
    /// Limit of one introspection call.
    #[serde(with = "humantime_serde", default = "Introspection::default_timeout")]
    pub timeout: Duration,
    /// Answers remembered.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Which claims of the answer carry the identity sent upstream.
    #[serde(default)]
    pub claims: ClaimNames,
}

/// What the admin API shows instead of a secret. A configuration written
/// back with it keeps the secret in force (see [`GatewayConfig::restore_secrets`]).
pub const REDACTED: &str = "<redacted>";

impl GatewayConfig {
    /// A copy without secrets (introspection client secrets become
    /// [`REDACTED`]), for reading the configuration back.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for endpoint in &mut copy.auth.introspection {
            endpoint.client_secret = REDACTED.to_owned();
        }
        copy
    }

    /// Puts back the secrets of `current` where this configuration says
    /// [`REDACTED`] for an endpoint of the same name, so a configuration
    /// read back, edited and written again keeps its secrets. A redacted
    /// secret with no endpoint of that name in `current` stays as written
    /// (and is then an ordinary, wrong, secret).
    pub fn restore_secrets(&mut self, current: &GatewayConfig) {
        for endpoint in &mut self.auth.introspection {
            if endpoint.client_secret == REDACTED
                && let Some(previous) = current
                    .auth
                    .introspection
                    .iter()
                    .find(|p| p.name == endpoint.name)
            {
                endpoint.client_secret = previous.client_secret.clone();
            }
        }
    }
}

impl Introspection {
    fn default_ttl() -> Duration {
        Duration::from_secs(60)
    }
    fn default_negative_ttl() -> Duration {
        Duration::from_secs(10)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(2)
    }
}

impl GatewayConfig {
    /// Parses a YAML (or JSON) document and validates it.
    ///
    /// Syntax and type errors are reported with their location; semantic
    /// errors are collected so that every one of them is reported at once.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let config: GatewayConfig = if text.trim().is_empty() {
            GatewayConfig::default()
        } else {
            serde_saphyr::from_str(text)
                .map_err(|error| ConfigErrors(vec![ConfigError::syntax(error.to_string())]))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every semantic rule; see [`validate`] for the list.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        validate::check(self)
    }
}

// === upstreams ===

/// A named pool of backend targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Each target: `ip:port`, `host:port` (A/AAAA records) or `srv:NAME`
    /// (SRV records).
    pub targets: Vec<String>,
    /// The protocol spoken to the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How a target is picked for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Connect, request and idle timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Active HTTP health checks (off when absent).
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Passive outlier ejection on consecutive failures.
    #[serde(default)]
    pub outlier: Outlier,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retries: Retries,
    /// Keep-alive connection pool settings.
    #[serde(default)]
    pub pool: PoolSettings,
    /// Targets for the nodes of one region, used there instead of
    /// `targets` (a region listed with `[]` has no local backends and is
    /// served through `fallback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub region_targets: BTreeMap<String, Vec<String>>,
    /// Other regions whose gateways serve the upstream's requests when this
    /// region has no available target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<RegionFallback>,
}

impl Upstream {
    /// The targets of the nodes in `region`.
    pub fn targets_in(&self, region: &str) -> &[String] {
        self.region_targets.get(region).unwrap_or(&self.targets)
    }

    /// The definition as the nodes of `region` use it: their targets under
    /// `targets`, no per-region lists.
    pub fn for_region(&self, region: &str) -> Upstream {
        Upstream {
            targets: self.targets_in(region).to_vec(),
            region_targets: BTreeMap::new(),
            ..self.clone()
        }
    }
}

/// Cross-region fallback of an upstream: written as a list of regions
/// (`fallback: [us-east, ap-south]`) or in full
/// (`fallback: { regions: [us-east], return_after: 30s }`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionFallback {
    /// The regions tried in order; this node's own region is skipped.
    pub regions: Vec<String>,
    /// How long the local targets must stay available before traffic
    /// that went to another region comes back (hysteresis).
    #[serde(with = "humantime_serde")]
    pub return_after: Duration,
}

impl RegionFallback {
    /// The default of `return_after`.
    pub const RETURN_AFTER: Duration = Duration::from_secs(10);
}

impl<'de> Deserialize<'de> for RegionFallback {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            regions: Vec<String>,
            #[serde(with = "humantime_serde", default = "return_after")]
            return_after: Duration,
        }
        fn return_after() -> Duration {
            RegionFallback::RETURN_AFTER
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Regions(Vec<String>),
            Full(Full),
        }
        match Shape::deserialize(deserializer) {
            Ok(Shape::Regions(regions)) => Ok(Self {
                regions,
                return_after: Self::RETURN_AFTER,
            }),
            Ok(Shape::Full(full)) => Ok(Self {
                regions: full.regions,
                return_after: full.return_after,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "fallback is a list of regions, or { regions: [REGION, ...], return_after: DURATION }",
            )),
        }
    }
}

/// The protocol the gateway speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2,
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The less loaded of two random targets (power of two choices).
    LeastRequest,
    /// A consistent-hash ring keyed by a request attribute.
    ConsistentHash(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The value of a request header.
    Header(String),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Timeouts towards an upstream. Each maps to its own status code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Establishing a TCP connection (504 when exceeded).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to receiving the response head (504).
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// Longest silence while streaming a body in either direction; the
    /// stream is aborted when exceeded.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// An active HTTP health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path requested with `GET`.
    pub path: String,
    /// Time between two checks of one target.
    #[serde(with = "humantime_serde", default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// A check that takes longer has failed.
    #[serde(with = "humantime_serde", default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy target healthy.
    #[serde(default = "HealthCheck::default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a healthy target unhealthy.
    #[serde(default = "HealthCheck::default_threshold")]
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_threshold() -> u32 {
        2
    }
}

/// Passive outlier ejection: a target that fails `consecutive_failures`
/// times in a row (connect errors, timeouts, 5xx) is taken out of rotation
/// for `base_ejection` × the number of times it was ejected before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outlier {
    /// Failures in a row that eject a target; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Ejection time for a first ejection.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// At most this share of the targets is ejected at once.
    pub max_ejection_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// Retries of idempotent requests whose body was not streamed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Further attempts after the first; 0 disables retries.
    pub attempts: u32,
    /// Retries may add at most this percentage to the upstream's request rate…
    pub budget_percent: u32,
    /// …but this many retries per second are always allowed.
    pub min_per_second: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            min_per_second: 10,
        }
    }
}

/// Keep-alive pool towards one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Idle connections kept per target.
    pub max_idle_per_target: usize,
    /// An idle pooled connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_target: 256,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

// === routes ===

/// A route: what requests it matches, how their path is rewritten and which
/// upstream serves them.
///
/// When several routes match a request, the winner is decided, in order, by:
/// 1. the higher `priority`;
/// 2. the more specific host: an exact host, then wildcards with the longer
///    suffix first, then routes without hosts;
/// 3. the more specific path: exact paths before prefixes; then more path
///    segments; then more literal (non-`{param}`) segments;
/// 4. more conditions (a method list, each header and query condition);
/// 5. the order of declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Explicit precedence; higher wins. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// The conditions a request must meet.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// The versioned API this route belongs to.
    #[serde(default)]
    pub api: Option<String>,
    /// The API version this route serves (requires `api`).
    #[serde(default)]
    pub version: Option<String>,
    /// How the path is rewritten before it is sent upstream.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// The upstream that serves the route. On a route with `aggregate` or
    /// `graphql` it is not called (each part names its own upstream); it must still be
    /// declared, and its idle timeout bounds reading a request body that a
    /// `transform` buffers.
    pub upstream: String,
    /// Send the client's `Host` upstream instead of the target's address.
    #[serde(default)]
    pub preserve_host: bool,
    /// Largest request body accepted on this route (defaults to the node's limit).
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// Credentials the route requires; any one of them admits (none: public).
    #[serde(default)]
    pub auth: Vec<AuthMethod>,
    /// TLS requirements of the route (redirect to HTTPS, client certificate).
    #[serde(default, skip_serializing_if = "RouteTls::is_default")]
    pub tls: RouteTls,
    /// Edge policies of this route (see [`policy`] for precedence).
    #[serde(default)]
    pub policies: Policies,
    /// Scopes the caller's token must all carry (403 `insufficient_scope`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Rate limits of this route, on top of the caller's plan (see [`limit`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// Header and body transformations (see [`transform`]).
    #[serde(default, skip_serializing_if = "Transform::is_empty")]
    pub transform: Transform,
    /// Response composition (see [`aggregate`]): the gateway answers from
    /// several upstream calls instead of proxying to `upstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    /// A GraphQL endpoint (see [`graphql`]): the gateway answers GraphQL
    /// queries by calling upstreams instead of proxying to `upstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<Graphql>,
    /// gRPC-JSON transcoding (see [`grpc`]): REST calls become calls of a
    /// gRPC service on `upstream`, which must speak h2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
}

/// A route's TLS requirements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteTls {
    /// On the plain-HTTP listener, answer 308 with the `https://` URL.
    pub redirect_https: bool,
    /// Whether a verified client certificate is required (403 without).
    pub client_cert: ClientCert,
}

impl RouteTls {
    /// Whether nothing is asked for (not written out when serialising).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a route requires a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCert {
    /// The listener's `tls.client-auth.mode` decides.
    #[default]
    Optional,
    /// A verified client certificate is required on this route.
    Required,
}

/// The conditions of a route. Every present condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// `api.example.com` or `*.example.com` (any depth of subdomain).
    pub hosts: Vec<String>,
    /// Allowed methods; any method when empty.
    pub methods: Vec<String>,
    /// The exact path; segments may be `{param}`.
    pub path: Option<String>,
    /// A path prefix on segment boundaries; segments may be `{param}`.
    pub path_prefix: Option<String>,
    /// Header conditions, by header name.
    pub headers: BTreeMap<String, ValueMatch>,
    /// Query parameter conditions, by parameter name.
    pub query: BTreeMap<String, ValueMatch>,
}

/// A condition on a header or query parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueMatch {
    /// The value equals this string.
    Exact(String),
    /// A richer condition.
    Rule(ValueRule),
}

/// The richer value conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ValueRule {
    /// The value is present (`true`) or absent (`false`).
    Present(bool),
    /// The value starts with this string.
    Prefix(String),
    /// The value matches this regular expression (anchored).
    Regex(String),
}

/// A path rewrite, applied to the normalised path after routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Rewrite {
    /// Remove this prefix (on a segment boundary).
    StripPrefix(String),
    /// Replace a prefix with another.
    ReplacePrefix {
        /// The prefix to replace.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// Replace the whole path when it matches `pattern`; `replacement` may
    /// use `$1` or `${name}` captures.
    Regex {
        /// The regular expression.
        pattern: String,
        /// The new path.
        replacement: String,
    },
}

// === versioning ===

/// How an API's version is read from requests and what happens to versions
/// it does not support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versioning {
    /// Which requests belong to this API.
    #[serde(rename = "match", default)]
    pub scope: ApiScope,
    /// Where the version is read from, first match wins.
    pub from: Vec<VersionSource>,
    /// The supported versions.
    pub supported: Vec<String>,
    /// The version used when a request names none.
    pub default: String,
    /// What happens to a request naming an unsupported version.
    #[serde(default)]
    pub unknown: UnknownVersion,
    /// Supported but deprecated versions, with their dates.
    #[serde(default)]
    pub deprecated: BTreeMap<String, Deprecation>,
}

/// The requests an API covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiScope {
    /// Hosts, as in route matches; any host when empty.
    pub hosts: Vec<String>,
    /// Path prefix of the API; the path version segment (`v2`) follows it.
    pub path_prefix: Option<String>,
}

/// A place a version is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// The path segment after the API's prefix, written `v<version>`.
    Path,
    /// A request header holding the bare version, e.g. `X-API-Version: 2`.
    Header(String),
    /// `Accept: application/vnd.<vendor>.v<version>+json`; the vendor is
    /// given here.
    Accept(String),
    /// A query parameter.
    Query(String),
}

/// The policy for versions an API does not support.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownVersion {
    /// 400 with the supported versions listed in `X-API-Supported-Versions`.
    #[default]
    Reject,
    /// Serve another version and say so with `Deprecation` / `Sunset`.
    Fallback(Fallback),
}

/// Where an unsupported version is served instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// The supported version that serves the request.
    pub version: String,
    /// RFC 3339 date sent in `Deprecation`; `@0` when absent.
    #[serde(default)]
    pub since: Option<String>,
    /// RFC 3339 date sent in `Sunset`.
    #[serde(default)]
    pub sunset: Option<String>,
    /// A link to migration documentation.
    #[serde(default)]
    pub link: Option<String>,
}

impl Fallback {
    /// The deprecation information the fallback responses carry.
    pub fn deprecation(&self) -> Deprecation {
        Deprecation {
            since: self.since.clone(),
            sunset: self.sunset.clone(),
            link: self.link.clone(),
        }
    }
}

/// `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) information.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deprecation {
    /// RFC 3339 date the version was deprecated; `Deprecation: @0` when absent.
    pub since: Option<String>,
    /// RFC 3339 date after which the version may stop being served.
    pub sunset: Option<String>,
    /// A link to migration documentation (`Link: <…>; rel="deprecation"`).
    pub link: Option<String>,
}

#[cfg(test)]
mod tests;
