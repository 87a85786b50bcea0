//! Edge policies: IP allow/deny lists, the WAF, CORS and security response
//! headers. The same [`Policies`] block is written globally (`policies:` at
//! the top of `gateway.yaml`) and per route (`routes[].policies`).
//!
//! Precedence:
//! - `ip`: both lists apply — a request must pass the global lists *and* the
//!   route's;
//! - `waf`, `cors`, `headers`: the route's block, when present, replaces the
//!   global one as a whole (so a route can turn the WAF `off` or to `detect`);
//! - `trusted_proxies` is global only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// The policy block, global or per route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// Proxies whose `X-Forwarded-For` is believed (global only); empty:
    /// the client is the socket peer.
    pub trusted_proxies: Vec<String>,
    /// IP allow/deny lists.
    pub ip: Option<IpPolicy>,
    /// Request inspection.
    pub waf: Option<WafPolicy>,
    /// CORS answered at the gateway.
    pub cors: Option<CorsPolicy>,
    /// Security response headers and removal of internal ones.
    pub headers: Option<HeadersPolicy>,
}

/// Allow and deny lists of CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or bare
/// addresses. Deny wins over allow; a non-empty allow list admits only the
/// addresses it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpPolicy {
    /// Only these may pass (when non-empty).
    pub allow: Vec<String>,
    /// These never pass.
    pub deny: Vec<String>,
}

/// What the WAF does with a request that matches a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafMode {
    /// Refuse it (403 `waf_blocked`).
    #[default]
    Block,
    /// Log and count it, then forward it.
    Detect,
    /// Do not inspect.
    Off,
}

/// Request inspection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WafPolicy {
    /// `block`, `detect` or `off`.
    pub mode: WafMode,
    /// How much of a urlencoded, JSON or text body is inspected; 0 turns
    /// body inspection off.
    pub body_limit: ByteSize,
    /// Headers inspected besides `User-Agent`, `Referer` and `Cookie`.
    pub headers: Vec<String>,
    /// Rule ids not applied.
    pub disabled_rules: Vec<String>,
}

impl Default for WafPolicy {
    fn default() -> Self {
        Self {
            mode: WafMode::Block,
            body_limit: ByteSize(8 << 10),
            headers: Vec::new(),
            disabled_rules: Vec::new(),
        }
    }
}

/// Every WAF rule id the node knows (`node`'s rule table has exactly these;
/// a test there checks).
pub const KNOWN_WAF_RULES: &[&str] = &[
    "sqli-union",
    "sqli-tautology",
    "sqli-comment",
    "sqli-stacked",
    "sqli-function",
    "xss-script",
    "xss-handler",
    "xss-scheme",
    "xss-tag",
    "traversal-dotdot",
    "traversal-file",
    "traversal-null",
    "cmdi-chain",
    "cmdi-subshell",
    "scanner-agent",
];

/// Upper bound of `waf.body_limit`.
pub const MAX_WAF_BODY: u64 = 1 << 20;

/// CORS answered by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsPolicy {
    /// Exact origins (`https://app.example.com`), patterns with one
    /// leading-label wildcard (`https://*.example.com`), or `*` (not with
    /// credentials).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive); `*`
    /// allows any (not with credentials).
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
}

impl Default for CorsPolicy {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_methods: ["GET", "HEAD", "POST"].map(String::from).to_vec(),
            allow_headers: Vec::new(),
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: None,
        }
    }
}

/// Security headers added to responses and internal headers removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersPolicy {
    /// Start from the default set (see [`DEFAULT_SECURITY_HEADERS`]).
    pub defaults: bool,
    /// Headers set on every response, overriding a default or an upstream's
    /// value; an empty value removes the header instead.
    pub set: BTreeMap<String, String>,
    /// Upstream headers removed besides `Server` and `X-Powered-By`.
    pub remove: Vec<String>,
}

impl Default for HeadersPolicy {
    fn default() -> Self {
        Self {
            defaults: true,
            set: BTreeMap::new(),
            remove: Vec::new(),
        }
    }
}

/// The headers a `headers` block with `defaults: true` sets.
pub const DEFAULT_SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "permissions-policy",
        "camera=(), geolocation=(), microphone=(), payment=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Upstream headers every `headers` block removes.
pub const INTERNAL_HEADERS: &[&str] = &["server", "x-powered-by"];

/// A network written `address/prefix` or a bare address (a host network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address as written (host bits may be set; they are ignored).
    pub address: IpAddr,
    /// Prefix length: up to 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7` or `::1`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| "must be an IPv4 or IPv6 address or CIDR such as 10.0.0.0/8")?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                // Canonical digits only: no sign, no leading zero.
                Ok(length) if length <= max && length.to_string() == prefix => length,
                _ => return Err("must have a prefix length of 0..=32 (IPv4) or 0..=128 (IPv6)"),
            },
        };
        Ok(Self { address, prefix })
    }

    /// The first and last address covered, as integers (IPv4 addresses in
    /// the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let (value, bits) = match self.address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let host_bits = bits - u32::from(self.prefix);
        let mask = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        (value & !mask, value | mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let range = |t: &str| Cidr::parse(t).unwrap().range();
        assert_eq!(range("10.0.0.0/8"), (0x0a00_0000, 0x0aff_ffff));
        assert_eq!(range("10.1.2.3/8"), (0x0a00_0000, 0x0aff_ffff));
        assert_eq!(range("192.0.2.7"), (0xc000_0207, 0xc000_0207));
        assert_eq!(range("0.0.0.0/0"), (0, 0xffff_ffff));
        assert_eq!(range("::/0"), (0, u128::MAX));
        assert_eq!(range("::1"), (1, 1));
        let (lo, hi) = range("2001:db8::/32");
        assert_eq!(lo, 0x2001_0db8 << 96);
        assert_eq!(hi, (0x2001_0db8 << 96) | (u128::MAX >> 32));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "x",
            "1.2.3.4/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
