//! Rules of a `policies` block (global or per route):
//! - `trusted_proxies` only in the global block; every entry, and every
//!   `ip.allow` / `ip.deny` entry, is an IPv4/IPv6 address or CIDR;
//! - `waf.body_limit` is at most 1 MiB; `waf.headers` are header names;
//!   `waf.disabled_rules` name known rules;
//! - `cors.allow_origins` is non-empty; each is `*`, `scheme://host[:port]`
//!   or `scheme://*.suffix[:port]`; `*` origins and `*` headers are refused
//!   together with `allow_credentials`; methods are uppercase tokens; header
//!   names are tokens; `max_age` at most 24 h;
//! - `headers.set` and `headers.remove` name valid headers, set values are
//!   valid header values.

use super::super::pattern;
use super::super::policy::{Cidr, KNOWN_WAF_RULES, MAX_WAF_BODY, Policies};
use super::Checker;

pub(super) fn check(c: &mut Checker, key: &str, policies: &Policies, global: bool) {
    if !global && !policies.trusted_proxies.is_empty() {
        c.fail(
            format!("{key}.trusted_proxies"),
            policies.trusted_proxies.join(", "),
            "is only allowed in the global policies block",
        );
    }
    cidrs(
        c,
        &format!("{key}.trusted_proxies"),
        &policies.trusted_proxies,
    );
    if let Some(ip) = &policies.ip {
        cidrs(c, &format!("{key}.ip.allow"), &ip.allow);
        cidrs(c, &format!("{key}.ip.deny"), &ip.deny);
    }
    if let Some(waf) = &policies.waf {
        let wkey = format!("{key}.waf");
        if waf.body_limit.bytes() > MAX_WAF_BODY {
            c.fail(
                format!("{wkey}.body_limit"),
                waf.body_limit,
                "must be at most 1MiB",
            );
        }
        header_names(c, &format!("{wkey}.headers"), &waf.headers);
        for (i, rule) in waf.disabled_rules.iter().enumerate() {
            if !KNOWN_WAF_RULES.contains(&rule.as_str()) {
                c.fail(
                    format!("{wkey}.disabled_rules[{i}]"),
                    rule,
                    format!("must be a known rule id: {}", KNOWN_WAF_RULES.join(", ")),
                );
            }
        }
    }
    if let Some(cors) = &policies.cors {
        let ckey = format!("{key}.cors");
        if cors.allow_origins.is_empty() {
            c.fail(
                format!("{ckey}.allow_origins"),
                "[]",
                "must list at least one origin",
            );
        }
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            let okey = format!("{ckey}.allow_origins[{i}]");
            if origin == "*" {
                if cors.allow_credentials {
                    c.fail(
                        okey,
                        origin,
                        "cannot be `*` when allow_credentials is true (list the origins)",
                    );
                }
            } else if let Err(rule) = check_origin(origin) {
                c.fail(okey, origin, rule);
            }
        }
        for (i, method) in cors.allow_methods.iter().enumerate() {
            if !pattern::is_method(method) {
                c.fail(
                    format!("{ckey}.allow_methods[{i}]"),
                    method,
                    "must be an uppercase HTTP method",
                );
            }
        }
        for (i, name) in cors.allow_headers.iter().enumerate() {
            if name == "*" {
                if cors.allow_credentials {
                    c.fail(
                        format!("{ckey}.allow_headers[{i}]"),
                        name,
                        "cannot be `*` when allow_credentials is true (list the headers)",
                    );
                }
            } else if !pattern::is_header_name(name) {
                c.fail(
                    format!("{ckey}.allow_headers[{i}]"),
                    name,
                    "must be a valid header name",
                );
            }
        }
        header_names(c, &format!("{ckey}.expose_headers"), &cors.expose_headers);
        if let Some(max_age) = cors.max_age
            && max_age.as_secs() > 86_400
        {
            c.fail(
                format!("{ckey}.max_age"),
                humantime::format_duration(max_age),
                "must be at most 24h",
            );
        }
    }
    if let Some(headers) = &policies.headers {
        let hkey = format!("{key}.headers");
        for (name, value) in &headers.set {
            if !pattern::is_header_name(name) {
                c.fail(format!("{hkey}.set"), name, "must be a valid header name");
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                c.fail(
                    format!("{hkey}.set.{name}"),
                    value.escape_debug(),
                    "must be a valid header value (no control characters)",
                );
            }
        }
        header_names(c, &format!("{hkey}.remove"), &headers.remove);
    }
}

fn cidrs(c: &mut Checker, key: &str, list: &[String]) {
    for (i, entry) in list.iter().enumerate() {
        if let Err(rule) = Cidr::parse(entry) {
            c.fail(format!("{key}[{i}]"), entry, rule);
        }
    }
}

fn header_names(c: &mut Checker, key: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        if !pattern::is_header_name(name) {
            c.fail(format!("{key}[{i}]"), name, "must be a valid header name");
        }
    }
}

/// `scheme://host[:port]` or `scheme://*.suffix[:port]`, lowercase, no path.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    const RULE: &str =
        "must be `*`, scheme://host[:port] or scheme://*.domain[:port], lowercase, without a path";
    let (scheme, rest) = origin.split_once("://").ok_or(RULE)?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return Err(RULE);
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (address, after) = v6.split_once(']').ok_or(RULE)?;
        address.parse::<std::net::Ipv6Addr>().map_err(|_| RULE)?;
        ("", after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(RULE);
    }
    if rest.starts_with('[') {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if valid { Ok(()) } else { Err(RULE) }
}

#[cfg(test)]
mod tests {
    use super::super::super::GatewayConfig;

    fn errors(yaml: &str) -> Vec<(String, String)> {
        match GatewayConfig::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.into_iter().map(|e| (e.key, e.rule)).collect(),
        }
    }

    fn one(yaml: &str, key: &str, rule_part: &str) {
        let errors = errors(yaml);
        assert!(
            errors
                .iter()
                .any(|(k, r)| k == key && r.contains(rule_part)),
            "expected {key}: …{rule_part}… in {errors:?}"
        );
    }

    const ROUTE: &str =
        "upstreams: { u: { targets: [\"127.0.0.1:1\"] } }\nroutes:\n  - name: r\n    upstream: u\n";

    #[test]
    fn a_full_block_is_accepted() {
        let yaml = r#"
upstreams: { u: { targets: ["127.0.0.1:1"] } }
policies:
  trusted_proxies: [10.0.0.0/8, "::1"]
  ip: { allow: [192.0.2.0/24, "2001:db8::/32", 198.51.100.7], deny: [192.0.2.9] }
  waf: { mode: detect, body_limit: 16KiB, headers: [X-Search], disabled_rules: [scanner-agent] }
  cors:
    allow_origins: ["https://app.example.com", "https://*.example.com", "http://localhost:3000"]
    allow_methods: [GET, POST, DELETE]
    allow_headers: [Content-Type, Authorization]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 10m
  headers: { set: { Content-Security-Policy: "default-src 'self'", X-Frame-Options: "" }, remove: [X-Debug-Token] }
routes:
  - name: r
    upstream: u
    policies: { waf: { mode: "off" }, ip: { deny: ["::/0"] } }
"#;
        assert_eq!(errors(yaml), Vec::new());
    }

    #[test]
    fn trusted_proxies_are_global_only() {
        one(
            &format!("{ROUTE}    policies: {{ trusted_proxies: [10.0.0.0/8] }}\n"),
            "routes[0].policies.trusted_proxies",
            "only allowed in the global",
        );
    }

    #[test]
    fn cidrs_must_parse() {
        one(
            "policies: { trusted_proxies: [10.0.0.0/33] }",
            "policies.trusted_proxies[0]",
            "prefix length",
        );
        one(
            "policies: { ip: { allow: [example.com] } }",
            "policies.ip.allow[0]",
            "IPv4 or IPv6",
        );
        one(
            &format!("{ROUTE}    policies: {{ ip: {{ deny: [\"1.2.3.4/x\"] }} }}\n"),
            "routes[0].policies.ip.deny[0]",
            "prefix length",
        );
    }

    #[test]
    fn waf_rules() {
        one(
            "policies: { waf: { body_limit: 2MiB } }",
            "policies.waf.body_limit",
            "at most 1MiB",
        );
        one(
            "policies: { waf: { headers: [\"bad header\"] } }",
            "policies.waf.headers[0]",
            "header name",
        );
        one(
            "policies: { waf: { disabled_rules: [sqli-nope] } }",
            "policies.waf.disabled_rules[0]",
            "known rule id",
        );
        assert!(!errors("policies: { waf: { mode: sometimes } }").is_empty());
    }

    #[test]
    fn cors_rules() {
        one(
            "policies: { cors: { allow_origins: [] } }",
            "policies.cors.allow_origins",
            "at least one",
        );
        one(
            "policies: { cors: { allow_origins: [\"*\"], allow_credentials: true } }",
            "policies.cors.allow_origins[0]",
            "allow_credentials",
        );
        one(
            "policies: { cors: { allow_origins: [\"https://a.com\"], allow_headers: [\"*\"], allow_credentials: true } }",
            "policies.cors.allow_headers[0]",
            "allow_credentials",
        );
        for bad in [
            "example.com",
            "https://a.com/path",
            "https://*.*.com",
            "https://a*.com",
            "https://A.com",
            "https://a.com:99999",
            "https://",
        ] {
            one(
                &format!("policies: {{ cors: {{ allow_origins: [\"{bad}\"] }} }}"),
                "policies.cors.allow_origins[0]",
                "scheme://host",
            );
        }
        one(
            "policies: { cors: { allow_origins: [\"https://a.com\"], allow_methods: [get] } }",
            "policies.cors.allow_methods[0]",
            "uppercase",
        );
        one(
            "policies: { cors: { allow_origins: [\"https://a.com\"], allow_headers: [\"a b\"] } }",
            "policies.cors.allow_headers[0]",
            "header name",
        );
        one(
            "policies: { cors: { allow_origins: [\"https://a.com\"], expose_headers: [\"a:b\"] } }",
            "policies.cors.expose_headers[0]",
            "header name",
        );
        one(
            "policies: { cors: { allow_origins: [\"https://a.com\"], max_age: 2d } }",
            "policies.cors.max_age",
            "at most 24h",
        );
    }

    #[test]
    fn header_rules() {
        one(
            "policies: { headers: { set: { \"a b\": x } } }",
            "policies.headers.set",
            "header name",
        );
        one(
            "policies: { headers: { set: { X-A: \"a\\nb\" } } }",
            "policies.headers.set.X-A",
            "control characters",
        );
        one(
            "policies: { headers: { remove: [\"\"] } }",
            "policies.headers.remove[0]",
            "header name",
        );
    }
}
