//! Validation of a [`GatewayConfig`]. Every rule produces a [`ConfigError`]
//! that names the key, the value and the rule; all violations are collected.
//!
//! The rules:
//! - upstream names are identifiers; every upstream has at least one target,
//!   each `host:port` with a port in 1..=65535, none twice;
//! - timeouts, health-check intervals and thresholds are positive, a health
//!   check's timeout does not exceed its interval, ejection percentages are
//!   at most 100, retries at most 10;
//! - route names are unique identifiers; a route names an existing upstream;
//!   `path` and `path_prefix` are exclusive and are valid patterns; hosts are
//!   DNS names or `*.` wildcards; methods are uppercase tokens; header names
//!   are tokens; regular expressions compile; `version` needs `api`, and both
//!   name a declared API and one of its supported versions;
//! - rewrites: prefixes start with `/`, regex replacements only name groups
//!   the pattern has;
//! - consumers: unique identifier names and ids, a `plan` names a declared plan;
//! - plans: identifier names;
//! - rate limits of plans and routes: see the `validate::limit` module;
//! - auth: the API key header is a header name, the query parameter is not
//!   empty; JWT issuers and introspection endpoints have unique identifier
//!   names and `http(s)://` URLs; issuers are unique, name at least one
//!   audience and only asymmetric algorithms (never `none`, never `HS*`);
//!   the leeway is at most 5 minutes; JWKS refresh bounds are positive and
//!   ordered (`min_refresh <= max_refresh <= max_stale`); token and cache
//!   sizes are bounded; claim names are not empty; an introspection
//!   endpoint has a client id, non-empty `audiences` entries, `0 < negative_ttl <= ttl` and a timeout;
//! - routes: `jwt` / `introspection` need a configured issuer / endpoint;
//!   `scopes` are scope tokens and need a token method (`jwt` or
//!   `introspection`);
//! - versioning: at least one source, a non-empty supported list holding the
//!   default, the fallback and every deprecated version; dates are RFC 3339;
//! - policies (global and per route): addresses and CIDRs parse, `trusted_proxies`
//!   only globally, WAF, CORS and header settings are well-formed (the full
//!   list is in the `validate::policy` module and docs/policies.md);
//! - transforms (per route): header names, templates, JSON pointers, XML
//!   names and limits (the full list is in the `validate::transform`
//!   module and docs/transform.md);
//! - aggregations (per route): parts, their upstreams, path templates and
//!   their parameters, timeouts and limits (the full list is in the
//!   `validate::aggregate` module and docs/aggregate.md);
//! - GraphQL endpoints (per route): types and their references, upstreams,
//!   path templates and their placeholders, limits (the full list is in
//!   the `validate::graphql` module and docs/graphql.md).
//! - gRPC transcoding (per route): the descriptor set, the service, its
//!   methods' `google.api.http` rules and an h2 upstream (the full list is
//!   in the `validate::grpc` module and docs/grpc.md).

use std::collections::BTreeSet;
use std::fmt;

use regex::Regex;

use super::pattern::{self, HostPattern, PathPattern};
use super::*;

mod aggregate;
mod graphql;
mod grpc;
mod limit;
mod policy;
mod transform;

pub use self::transform::is_xml_name;

pub use self::limit::MAX_LOG_LIMIT;

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `routes[2].match.path`.
    pub key: String,
    /// The offending value, as written.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl ConfigError {
    /// A document that could not be parsed at all.
    pub fn syntax(message: String) -> Self {
        Self {
            key: String::new(),
            value: String::new(),
            rule: message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.rule)
        } else {
            write!(f, "{} ({}) {}", self.key, self.value, self.rule)
        }
    }
}

/// Every rule a document breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects violations while walking the document.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn fail(&mut self, key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        });
    }

    fn positive(&mut self, key: String, value: std::time::Duration) {
        if value.is_zero() {
            self.fail(
                key,
                humantime::format_duration(value),
                "must be greater than zero",
            );
        }
    }

    /// `low` (at `low_key`) must not exceed `high` (at `high_key`); the
    /// error names the first key.
    fn not_above(
        &mut self,
        (low_key, low): (String, std::time::Duration),
        (high_key, high): (String, std::time::Duration),
    ) {
        if low > high {
            self.fail(
                low_key,
                humantime::format_duration(low),
                format!(
                    "must not exceed {high_key} ({})",
                    humantime::format_duration(high)
                ),
            );
        }
    }
}

pub(super) fn check(config: &GatewayConfig) -> Result<(), ConfigErrors> {
    let mut c = Checker::default();
    for (name, upstream) in &config.upstreams {
        check_upstream(&mut c, name, upstream);
    }
    let mut names = BTreeSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !names.insert(route.name.as_str()) {
            c.fail(
                format!("{key}.name"),
                &route.name,
                "must be unique among routes",
            );
        }
        check_route(&mut c, &key, route, config);
    }
    for (name, versioning) in &config.versioning {
        check_versioning(&mut c, name, versioning);
    }
    policy::check(&mut c, "policies", &config.policies, true);
    let mut consumers = BTreeSet::new();
    for (i, consumer) in config.consumers.iter().enumerate() {
        if !is_identifier(&consumer.name) {
            c.fail(
                format!("consumers[{i}].name"),
                &consumer.name,
                "must be a name of letters, digits, '-', '_' and '.'",
            );
        }
        if !consumers.insert(consumer.name.as_str()) {
            c.fail(
                format!("consumers[{i}].name"),
                &consumer.name,
                "must be unique among consumers",
            );
        }
        if let Some(id) = &consumer.id
            && !is_identifier(id)
        {
            c.fail(
                format!("consumers[{i}].id"),
                id,
                "must be letters, digits, '-', '_' and '.'",
            );
        }
        if let Some(plan) = &consumer.plan
            && !config.plans.contains_key(plan)
        {
            c.fail(
                format!("consumers[{i}].plan"),
                plan,
                "must name a plan declared under `plans`",
            );
        }
    }
    for (name, plan) in &config.plans {
        if !is_identifier(name) {
            c.fail(
                format!("plans.{name}"),
                name,
                "must be a name of letters, digits, '-', '_' and '.'",
            );
        }
        limit::check(
            &mut c,
            &format!("plans.{name}"),
            &plan.limits,
            limit::Owner::Plan,
        );
    }
    check_auth(&mut c, &config.auth);
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
}

fn check_upstream(c: &mut Checker, name: &str, upstream: &Upstream) {
    let key = format!("upstreams.{name}");
    if !is_identifier(name) {
        c.fail(
            &key,
            name,
            "must be a name of letters, digits, '-', '_' and '.'",
        );
    }
    if upstream.targets.is_empty() && upstream.region_targets.values().all(Vec::is_empty) {
        c.fail(
            format!("{key}.targets"),
            "[]",
            "must list at least one target (here or under region_targets)",
        );
    }
    check_targets(c, &format!("{key}.targets"), &upstream.targets);
    for (region, targets) in &upstream.region_targets {
        let region_key = format!("{key}.region_targets.{region}");
        if !is_region_name(region) {
            c.fail(
                &region_key,
                region,
                "must be a region name of letters, digits, '-' and '_'",
            );
        }
        check_targets(c, &region_key, targets);
    }
    if let Some(fallback) = &upstream.fallback {
        let fkey = format!("{key}.fallback");
        if fallback.regions.is_empty() {
            c.fail(
                format!("{fkey}.regions"),
                "[]",
                "must list at least one region",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, region) in fallback.regions.iter().enumerate() {
            let region_key = format!("{fkey}.regions[{i}]");
            if !is_region_name(region) {
                c.fail(
                    &region_key,
                    region,
                    "must be a region name of letters, digits, '-' and '_'",
                );
            }
            if !seen.insert(region) {
                c.fail(&region_key, region, "must not be listed twice");
            }
        }
        c.positive(format!("{fkey}.return_after"), fallback.return_after);
    }
    let t = &upstream.timeouts;
    c.positive(format!("{key}.timeouts.connect"), t.connect);
    c.positive(format!("{key}.timeouts.request"), t.request);
    c.positive(format!("{key}.timeouts.idle"), t.idle);
    if let Some(health) = &upstream.health {
        let hkey = format!("{key}.health");
        if !health.path.starts_with('/') {
            c.fail(format!("{hkey}.path"), &health.path, "must start with '/'");
        }
        c.positive(format!("{hkey}.interval"), health.interval);
        c.positive(format!("{hkey}.timeout"), health.timeout);
        c.not_above(
            (format!("{hkey}.timeout"), health.timeout),
            (format!("{hkey}.interval"), health.interval),
        );
        if health.healthy_threshold == 0 {
            c.fail(format!("{hkey}.healthy_threshold"), 0, "must be at least 1");
        }
        if health.unhealthy_threshold == 0 {
            c.fail(
                format!("{hkey}.unhealthy_threshold"),
                0,
                "must be at least 1",
            );
        }
    }
    if upstream.outlier.max_ejection_percent > 100 {
        c.fail(
            format!("{key}.outlier.max_ejection_percent"),
            upstream.outlier.max_ejection_percent,
            "must be at most 100",
        );
    }
    if upstream.outlier.consecutive_failures > 0 {
        c.positive(
            format!("{key}.outlier.base_ejection"),
            upstream.outlier.base_ejection,
        );
    }
    if upstream.retries.attempts > 10 {
        c.fail(
            format!("{key}.retries.attempts"),
            upstream.retries.attempts,
            "must be at most 10",
        );
    }
    c.positive(
        format!("{key}.pool.idle_timeout"),
        upstream.pool.idle_timeout,
    );
}

/// Checks a list of targets: each an `ip:port`, `host:port` or `srv:NAME`,
/// none twice.
fn check_targets(c: &mut Checker, key: &str, targets: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, target) in targets.iter().enumerate() {
        let target_key = format!("{key}[{i}]");
        if let Some(name) = target.strip_prefix("srv:") {
            if let Err(rule) = check_srv_name(name) {
                c.fail(&target_key, target, rule);
            }
        } else if let Err(rule) = parse_target(target) {
            c.fail(&target_key, target, rule);
        }
        if !seen.insert(target.to_ascii_lowercase()) {
            c.fail(&target_key, target, "must not be listed twice");
        }
    }
}

/// Region names, as `region` in node.toml: letters, digits, '-' and '_'.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks the name of an `srv:` target, e.g. `_http._tcp.users.internal`:
/// dot-separated labels of 1 to 63 letters, digits, `-` and `_`, at most 253
/// characters, an optional final dot.
pub fn check_srv_name(name: &str) -> Result<(), &'static str> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err("must be srv: followed by a DNS name of at most 253 characters");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !bare.split('.').all(label_ok) {
        return Err("must be srv: followed by a DNS name (labels of letters, digits, '-', '_')");
    }
    Ok(())
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn parse_target(target: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err("must be [ipv6]:port");
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("must be [ipv6]:port with a valid IPv6 address");
        }
        (host, port)
    } else {
        let Some((host, port)) = target.rsplit_once(':') else {
            return Err("must be host:port");
        };
        if host.is_empty() || host.contains(':') || HostPattern::parse(host).is_err() {
            return Err("must be host:port with a DNS name or IPv4 address as host");
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host, port)),
        _ => Err("must end with a port in 1..=65535"),
    }
}

fn check_route(c: &mut Checker, key: &str, route: &Route, config: &GatewayConfig) {
    if !is_identifier(&route.name) {
        c.fail(
            format!("{key}.name"),
            &route.name,
            "must be a name of letters, digits, '-', '_' and '.'",
        );
    }
    if !config.upstreams.contains_key(&route.upstream) {
        c.fail(
            format!("{key}.upstream"),
            &route.upstream,
            "must name a declared upstream",
        );
    }
    let m = &route.matcher;
    let mkey = format!("{key}.match");
    check_hosts(c, &format!("{mkey}.hosts"), &m.hosts);
    for (i, method) in m.methods.iter().enumerate() {
        if !pattern::is_method(method) {
            c.fail(
                format!("{mkey}.methods[{i}]"),
                method,
                "must be an uppercase HTTP method",
            );
        }
    }
    if m.path.is_some() && m.path_prefix.is_some() {
        c.fail(
            format!("{mkey}.path_prefix"),
            m.path_prefix.as_deref().unwrap_or_default(),
            "cannot be combined with match.path",
        );
    }
    for (field, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(value) = value
            && let Err(rule) = PathPattern::parse(value)
        {
            c.fail(format!("{mkey}.{field}"), value, rule);
        }
    }
    for (name, rule) in &m.headers {
        if !pattern::is_header_name(name) {
            c.fail(
                format!("{mkey}.headers"),
                name,
                "must be a valid header name",
            );
        }
        check_value_match(c, &format!("{mkey}.headers.{name}"), rule);
    }
    for (name, rule) in &m.query {
        if name.is_empty() {
            c.fail(
                format!("{mkey}.query"),
                name,
                "must be a non-empty parameter name",
            );
        }
        check_value_match(c, &format!("{mkey}.query.{name}"), rule);
    }
    match (&route.api, &route.version) {
        (None, Some(version)) => c.fail(
            format!("{key}.version"),
            version,
            "requires `api` naming a versioned API",
        ),
        (Some(api), version) => match config.versioning.get(api) {
            None => c.fail(
                format!("{key}.api"),
                api,
                "must name an API declared under `versioning`",
            ),
            Some(versioning) => {
                if let Some(version) = version
                    && !versioning.supported.contains(version)
                {
                    c.fail(
                        format!("{key}.version"),
                        version,
                        format!("must be one of versioning.{api}.supported"),
                    );
                }
            }
        },
        (None, None) => {}
    }
    if let Some(rewrite) = &route.rewrite {
        check_rewrite(c, &format!("{key}.rewrite"), rewrite);
    }
    if route.max_body == Some(ByteSize(0)) {
        c.fail(format!("{key}.max_body"), 0, "must be greater than zero");
    }
    policy::check(c, &format!("{key}.policies"), &route.policies, false);
    transform::check(c, &format!("{key}.transform"), &route.transform);
    aggregate::check(c, key, route, config);
    graphql::check(c, key, route, config);
    grpc::check(c, key, route, config);
    for (i, method) in route.auth.iter().enumerate() {
        match method {
            AuthMethod::Jwt if config.auth.jwt.is_empty() => c.fail(
                format!("{key}.auth[{i}]"),
                "jwt",
                "needs at least one issuer under auth.jwt",
            ),
            AuthMethod::Introspection if config.auth.introspection.is_empty() => c.fail(
                format!("{key}.auth[{i}]"),
                "introspection",
                "needs at least one endpoint under auth.introspection",
            ),
            _ => {}
        }
    }
    for (i, scope) in route.scopes.iter().enumerate() {
        if !is_scope(scope) {
            c.fail(
                format!("{key}.scopes[{i}]"),
                scope,
                "must be a scope token (printable ASCII, no spaces, quotes or backslashes)",
            );
        }
    }
    if !route.scopes.is_empty()
        && !route
            .auth
            .iter()
            .any(|m| matches!(m, AuthMethod::Jwt | AuthMethod::Introspection))
    {
        c.fail(
            format!("{key}.scopes"),
            route.scopes.join(" "),
            "needs `auth` to list jwt or introspection (only tokens carry scopes)",
        );
    }
    limit::check(c, key, &route.limits, limit::Owner::Route);
}

/// RFC 6749 §3.3 scope-token characters.
fn is_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 256
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The JWS algorithms an issuer may allow: asymmetric ones only.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    !authority.is_empty()
        && !authority.contains('@')
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b))
}

/// A JWT issuer's or introspection endpoint's name: an identifier, unique
/// among both (metrics and logs name them).
fn check_provider_name<'a>(
    c: &mut Checker,
    key: &str,
    name: &'a str,
    names: &mut BTreeSet<&'a str>,
) {
    if !is_identifier(name) {
        c.fail(
            format!("{key}.name"),
            name,
            "must be a name of letters, digits, '-', '_' and '.'",
        );
    }
    if !names.insert(name) {
        c.fail(
            format!("{key}.name"),
            name,
            "must be unique among auth.jwt and auth.introspection",
        );
    }
}

fn check_claims(c: &mut Checker, key: &str, claims: &ClaimNames) {
    for (field, value) in [
        ("subject", &claims.subject),
        ("scopes", &claims.scopes),
        ("roles", &claims.roles),
        ("tenant", &claims.tenant),
    ] {
        if value.is_empty() {
            c.fail(format!("{key}.{field}"), "\"\"", "must name a claim");
        }
    }
    if claims.consumer.as_deref() == Some("") {
        c.fail(format!("{key}.consumer"), "\"\"", "must name a claim");
    }
}

fn check_cache_entries(c: &mut Checker, key: String, entries: usize) {
    if entries == 0 || entries > 1_000_000 {
        c.fail(key, entries, "must be in 1..=1000000");
    }
}

fn check_auth(c: &mut Checker, auth: &AuthConfig) {
    if !pattern::is_header_name(&auth.api_key.header) {
        c.fail(
            "auth.api_key.header",
            &auth.api_key.header,
            "must be a valid header name",
        );
    }
    if let Some(query) = &auth.api_key.query
        && (query.is_empty() || query.contains(['&', '=', '#']))
    {
        c.fail(
            "auth.api_key.query",
            query,
            "must be a parameter name without '&', '=' or '#'",
        );
    }
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for (i, jwt) in auth.jwt.iter().enumerate() {
        let key = format!("auth.jwt[{i}]");
        check_provider_name(c, &key, &jwt.name, &mut names);
        if jwt.issuer.is_empty() {
            c.fail(format!("{key}.issuer"), "\"\"", "must not be empty");
        } else if !issuers.insert(jwt.issuer.as_str()) {
            c.fail(
                format!("{key}.issuer"),
                &jwt.issuer,
                "must be unique among auth.jwt",
            );
        }
        if !is_http_url(&jwt.jwks_uri) {
            c.fail(
                format!("{key}.jwks_uri"),
                &jwt.jwks_uri,
                "must be an http:// or https:// URL",
            );
        }
        if jwt.audiences.is_empty() {
            c.fail(
                format!("{key}.audiences"),
                "[]",
                "must list at least one audience (tokens minted for other services must not pass)",
            );
        }
        if jwt.audiences.iter().any(String::is_empty) {
            c.fail(format!("{key}.audiences"), "\"\"", "must not be empty");
        }
        if jwt.algorithms.is_empty() {
            c.fail(
                format!("{key}.algorithms"),
                "[]",
                "must list at least one algorithm",
            );
        }
        for (j, algorithm) in jwt.algorithms.iter().enumerate() {
            let akey = format!("{key}.algorithms[{j}]");
            if algorithm.eq_ignore_ascii_case("none") {
                c.fail(akey, algorithm, "must never be none (unsigned tokens)");
            } else if algorithm.to_ascii_uppercase().starts_with("HS") {
                c.fail(
                    akey,
                    algorithm,
                    "is not allowed with a JWKS issuer (HS* would verify with a shared secret, or with the public key)",
                );
            } else if !JWT_ALGORITHMS.contains(&algorithm.as_str()) {
                c.fail(
                    akey,
                    algorithm,
                    format!("must be one of {}", JWT_ALGORITHMS.join(", ")),
                );
            }
        }
        if jwt.leeway > std::time::Duration::from_secs(300) {
            c.fail(
                format!("{key}.leeway"),
                humantime::format_duration(jwt.leeway),
                "must be at most 5m",
            );
        }
        let j = &jwt.jwks;
        c.positive(format!("{key}.jwks.min_refresh"), j.min_refresh);
        c.positive(format!("{key}.jwks.timeout"), j.timeout);
        c.not_above(
            (format!("{key}.jwks.min_refresh"), j.min_refresh),
            (format!("{key}.jwks.max_refresh"), j.max_refresh),
        );
        if j.max_stale < j.max_refresh {
            c.fail(
                format!("{key}.jwks.max_stale"),
                humantime::format_duration(j.max_stale),
                format!(
                    "must be at least {key}.jwks.max_refresh ({})",
                    humantime::format_duration(j.max_refresh)
                ),
            );
        }
        if jwt.max_token_bytes < 256 || jwt.max_token_bytes > 64 * 1024 {
            c.fail(
                format!("{key}.max_token_bytes"),
                jwt.max_token_bytes,
                "must be in 256..=65536",
            );
        }
        check_cache_entries(c, format!("{key}.cache_entries"), jwt.cache_entries);
        check_claims(c, &format!("{key}.claims"), &jwt.claims);
    }
    for (i, endpoint) in auth.introspection.iter().enumerate() {
        let key = format!("auth.introspection[{i}]");
        check_provider_name(c, &key, &endpoint.name, &mut names);
        if !is_http_url(&endpoint.endpoint) {
            c.fail(
                format!("{key}.endpoint"),
                &endpoint.endpoint,
                "must be an http:// or https:// URL",
            );
        }
        if endpoint.client_id.is_empty() || endpoint.client_id.contains(':') {
            c.fail(
                format!("{key}.client_id"),
                &endpoint.client_id,
                "must be a non-empty client id without ':'",
            );
        }
        for (i, audience) in endpoint.audiences.iter().enumerate() {
            if audience.is_empty() {
                c.fail(format!("{key}.audiences[{i}]"), "", "must not be empty");
            }
        }
        c.positive(format!("{key}.ttl"), endpoint.ttl);
        c.positive(format!("{key}.negative_ttl"), endpoint.negative_ttl);
        c.positive(format!("{key}.timeout"), endpoint.timeout);
        c.not_above(
            (format!("{key}.negative_ttl"), endpoint.negative_ttl),
            (format!("{key}.ttl"), endpoint.ttl),
        );
        check_cache_entries(c, format!("{key}.cache_entries"), endpoint.cache_entries);
        check_claims(c, &format!("{key}.claims"), &endpoint.claims);
    }
}

fn check_hosts(c: &mut Checker, key: &str, hosts: &[String]) {
    for (i, host) in hosts.iter().enumerate() {
        if let Err(rule) = HostPattern::parse(host) {
            c.fail(format!("{key}[{i}]"), host, rule);
        }
    }
}

fn check_value_match(c: &mut Checker, key: &str, rule: &ValueMatch) {
    if let ValueMatch::Rule(ValueRule::Regex(pattern)) = rule
        && let Err(error) = Regex::new(pattern)
    {
        c.fail(
            format!("{key}.regex"),
            pattern,
            format!("must be a valid regular expression: {error}"),
        );
    }
}

fn check_rewrite(c: &mut Checker, key: &str, rewrite: &Rewrite) {
    let prefix = |c: &mut Checker, field: &str, value: &str| {
        if !value.starts_with('/') {
            c.fail(format!("{key}.{field}"), value, "must start with '/'");
        }
    };
    match rewrite {
        Rewrite::StripPrefix(value) => prefix(c, "strip_prefix", value),
        Rewrite::ReplacePrefix { from, to } => {
            prefix(c, "replace_prefix.from", from);
            prefix(c, "replace_prefix.to", to);
        }
        Rewrite::Regex {
            pattern,
            replacement,
        } => match Regex::new(pattern) {
            Err(error) => c.fail(
                format!("{key}.regex.pattern"),
                pattern,
                format!("must be a valid regular expression: {error}"),
            ),
            Ok(regex) => {
                for group in replacement_groups(replacement) {
                    let known = match group.parse::<usize>() {
                        Ok(index) => index < regex.captures_len(),
                        Err(_) => regex.capture_names().flatten().any(|n| n == group),
                    };
                    if !known {
                        c.fail(
                            format!("{key}.regex.replacement"),
                            replacement,
                            format!("refers to ${group}, a group the pattern does not have"),
                        );
                    }
                }
                if !replacement.starts_with('/') && !replacement.starts_with('$') {
                    c.fail(
                        format!("{key}.regex.replacement"),
                        replacement,
                        "must start with '/'",
                    );
                }
            }
        },
    }
}

/// The capture groups a replacement string refers to (`$1`, `${name}`).
fn replacement_groups(replacement: &str) -> Vec<&str> {
    let mut groups = Vec::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(braced) = rest.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                groups.push(&braced[..end]);
                rest = &braced[end + 1..];
            }
        } else if rest.starts_with('$') {
            rest = &rest[1..];
        } else {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                groups.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    groups
}

fn is_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 32
        && version
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
}

fn check_versioning(c: &mut Checker, api: &str, versioning: &Versioning) {
    let key = format!("versioning.{api}");
    if !is_identifier(api) {
        c.fail(
            &key,
            api,
            "must be a name of letters, digits, '-', '_' and '.'",
        );
    }
    check_hosts(c, &format!("{key}.match.hosts"), &versioning.scope.hosts);
    if let Some(prefix) = &versioning.scope.path_prefix
        && let Err(rule) = PathPattern::parse(prefix)
    {
        c.fail(format!("{key}.match.path_prefix"), prefix, rule);
    }
    if versioning.from.is_empty() {
        c.fail(
            format!("{key}.from"),
            "[]",
            "must list at least one version source",
        );
    }
    for (i, source) in versioning.from.iter().enumerate() {
        match source {
            VersionSource::Header(name) if !pattern::is_header_name(name) => c.fail(
                format!("{key}.from[{i}].header"),
                name,
                "must be a valid header name",
            ),
            VersionSource::Query(name) if name.is_empty() => c.fail(
                format!("{key}.from[{i}].query"),
                name,
                "must be a parameter name",
            ),
            VersionSource::Accept(vendor) if !is_identifier(vendor) => c.fail(
                format!("{key}.from[{i}].accept"),
                vendor,
                "must be a vendor name of letters, digits, '-', '_' and '.'",
            ),
            _ => {}
        }
    }
    if versioning.supported.is_empty() {
        c.fail(
            format!("{key}.supported"),
            "[]",
            "must list at least one version",
        );
    }
    for (i, version) in versioning.supported.iter().enumerate() {
        if !is_version(version) {
            c.fail(
                format!("{key}.supported[{i}]"),
                version,
                "must be a version of letters, digits, '.', '_' and '-'",
            );
        }
    }
    let supported = |c: &mut Checker, field: String, version: &str| {
        if !versioning.supported.iter().any(|v| v == version) {
            c.fail(field, version, format!("must be one of {key}.supported"));
        }
    };
    supported(c, format!("{key}.default"), &versioning.default);
    if let UnknownVersion::Fallback(fallback) = &versioning.unknown {
        supported(
            c,
            format!("{key}.unknown.fallback.version"),
            &fallback.version,
        );
        check_deprecation(
            c,
            &format!("{key}.unknown.fallback"),
            &fallback.deprecation(),
        );
    }
    for (version, deprecation) in &versioning.deprecated {
        supported(c, format!("{key}.deprecated"), version);
        check_deprecation(c, &format!("{key}.deprecated.{version}"), deprecation);
    }
}

fn check_deprecation(c: &mut Checker, key: &str, deprecation: &Deprecation) {
    for (field, value) in [
        ("since", &deprecation.since),
        ("sunset", &deprecation.sunset),
    ] {
        if let Some(value) = value
            && humantime::parse_rfc3339_weak(value).is_err()
        {
            c.fail(
                format!("{key}.{field}"),
                value,
                "must be an RFC 3339 date such as 2027-01-31T00:00:00Z",
            );
        }
    }
}
