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
//! - consumers: unique identifier names and ids;
//! - versioning: at least one source, a non-empty supported list holding the
//!   default, the fallback and every deprecated version; dates are RFC 3339;
//! - policies (global and per route): addresses and CIDRs parse, `trusted_proxies`
//!   only globally, WAF, CORS and header settings are well-formed (the full
//!   list is in the `validate::policy` module and docs/policies.md).

use std::collections::BTreeSet;
use std::fmt;

use regex::Regex;

use super::pattern::{self, HostPattern, PathPattern};
use super::*;

mod policy;

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
    }
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
    if upstream.targets.is_empty() {
        c.fail(
            format!("{key}.targets"),
            "[]",
            "must list at least one target",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, target) in upstream.targets.iter().enumerate() {
        let target_key = format!("{key}.targets[{i}]");
        if let Err(rule) = parse_target(target) {
            c.fail(&target_key, target, rule);
        }
        if !seen.insert(target.to_ascii_lowercase()) {
            c.fail(&target_key, target, "must not be listed twice");
        }
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
        if health.timeout > health.interval {
            c.fail(
                format!("{hkey}.timeout"),
                humantime::format_duration(health.timeout),
                format!(
                    "must not exceed {hkey}.interval ({})",
                    humantime::format_duration(health.interval)
                ),
            );
        }
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
