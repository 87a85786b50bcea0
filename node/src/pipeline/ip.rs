//! `ip`: who the client is, and whether its address may pass.
//!
//! The client address is the socket peer, unless the global
//! `policies.trusted_proxies` lists CIDRs: then, when the peer is one of
//! them, `X-Forwarded-For` is walked from the right (every header line, in
//! order), skipping addresses that are trusted proxies too; the first
//! untrusted address is the client. A client that is not a trusted proxy
//! cannot change its address by sending `X-Forwarded-For`; neither can one
//! that writes a forged address at the left of the list, since the walk
//! stops at the first untrusted hop from the right. An entry that is not an
//! address stops the walk: the client is then the last trusted hop seen. The
//! resolved address is [`RequestCx::client_ip`], which later stages (and
//! the access log) use.
//!
//! Lists: deny wins over allow; a non-empty allow list admits only the
//! addresses it covers. The stage runs twice: [`Ip::global`] right after
//! `admit`, with the global lists, and [`Ip::route`] after `route`, with the
//! route's own lists; a request must pass both. A refusal is 403
//! `ip_denied`, counted in `meridian_ip_denied_total{scope, rule}` (`rule` is
//! `deny` or `allow`).
//!
//! Lookups are binary searches over sorted, merged address ranges, so the
//! cost grows with the logarithm of the list length.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use raft::model::policy::{Cidr, IpPolicy};

use super::{Flow, Request, RequestCx, Stage, Step, ready};
use crate::error::{Error, Kind};
use crate::metrics::Metrics;

/// A set of addresses: sorted, non-overlapping ranges per family.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// The set covered by validated CIDRs (invalid entries are skipped).
    pub fn new<'a>(cidrs: impl IntoIterator<Item = &'a String>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for cidr in cidrs.into_iter().filter_map(|c| Cidr::parse(c).ok()) {
            let (lo, hi) = cidr.range();
            match cidr.address {
                // The range of an IPv4 CIDR fits in 32 bits.
                IpAddr::V4(_) => v4.push((lo as u32, hi as u32)),
                IpAddr::V6(_) => v6.push((lo, hi)),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is covered; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => covered(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => covered(&self.v6, u128::from(v6)),
        }
    }
}

/// Sorts ranges and merges overlapping or adjacent ones.
fn merge<T: Ord + Copy + Into<u128>>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last)
                if Into::<u128>::into(lo) <= Into::<u128>::into(last.1).saturating_add(1) =>
            {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

fn covered<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    // The last range starting at or before `value`.
    let index = ranges.partition_point(|(lo, _)| *lo <= value);
    index > 0 && ranges[index - 1].1 >= value
}

/// Compiled allow and deny lists.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow: IpSet,
    deny: IpSet,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is on the deny list.
    Deny,
    /// An allow list exists and does not cover it.
    Allow,
}

impl IpRules {
    /// Compiles a validated policy.
    pub fn new(policy: &IpPolicy) -> Self {
        Self {
            allow: IpSet::new(&policy.allow),
            deny: IpSet::new(&policy.deny),
        }
    }

    /// `Ok` when `ip` may pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.deny.contains(ip) {
            return Err(Refusal::Deny);
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(Refusal::Allow);
        }
        Ok(())
    }
}

/// The client's address: the peer, or the first untrusted hop of
/// `X-Forwarded-For` counted from the right when the peer is trusted.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &IpSet) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    // Bounded by the header limits of `admit`.
    for line in lines.iter().rev() {
        for entry in line.rsplit(|b| *b == b',') {
            let Some(hop) = parse_hop(entry) else {
                return client;
            };
            client = hop;
            if !trusted.contains(hop) {
                return hop;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, `v4:port` or `[v6]:port`.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    text.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// Which lists an [`Ip`] stage applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Global,
    Route,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Route => "route",
        }
    }
}

/// The `ip` stage.
pub struct Ip {
    scope: Scope,
    metrics: Arc<Metrics>,
}

impl Ip {
    /// Resolves the client address and applies the global lists.
    pub fn global(metrics: &Arc<Metrics>) -> Self {
        Self {
            scope: Scope::Global,
            metrics: metrics.clone(),
        }
    }

    /// Applies the lists of the chosen route.
    pub fn route(metrics: &Arc<Metrics>) -> Self {
        Self {
            scope: Scope::Route,
            metrics: metrics.clone(),
        }
    }

    /// Resolves the client's address (global scope) and applies the allow and deny lists.
    fn check(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        // Borrowed, not cloned: an `Arc` clone and drop are two atomic
        // operations on every request.
        let policies = &cx.snapshot.policies;
        let rules = match self.scope {
            Scope::Global => {
                cx.client_ip =
                    client_ip(cx.client.addr(), req.headers(), &policies.trusted_proxies);
                policies.global_ip.as_ref()
            }
            Scope::Route => policies.route_ip(cx.route.as_deref()),
        };
        let Some(rules) = rules else {
            return Ok(Flow::Continue);
        };
        match rules.check(cx.client_ip) {
            Ok(()) => Ok(Flow::Continue),
            Err(refusal) => {
                let rule = match refusal {
                    Refusal::Deny => "deny",
                    Refusal::Allow => "allow",
                };
                self.metrics
                    .counter(
                        "meridian_ip_denied_total",
                        &[
                            ("scope", self.scope.label().to_owned()),
                            ("rule", rule.to_owned()),
                        ],
                    )
                    .increment(1);
                Err(Kind::Forbidden {
                    code: "ip_denied",
                    message: "the client address is not allowed".into(),
                }
                .into())
            }
        }
    }
}

impl Stage for Ip {
    fn name(&self) -> &'static str {
        "ip"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        ready(self.check(cx, req))
    }

    fn acts_on(&self, route: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Route => snapshot.policies.route_ip(Some(route)).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> IpSet {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        IpSet::new(&owned)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sets_match_cidrs_and_bare_addresses() {
        let s = set(&[
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::1",
            "10.1.0.0/16",
            "11.0.0.0/8",
        ]);
        assert_eq!(s.v4.len(), 2, "10/8, 10.1/16 and 11/8 merge: {:?}", s.v4);
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "11.3.3.3",
            "192.0.2.7",
            "2001:db8::1",
            "2001:db8:ffff::",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(s.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "12.0.0.0",
            "192.0.2.6",
            "192.0.2.8",
            "2001:db9::",
            "::2",
            "127.0.0.1",
        ] {
            assert!(!s.contains(ip(outside)), "{outside}");
        }
        assert!(set(&["0.0.0.0/0"]).contains(ip("255.255.255.255")));
        assert!(set(&["::/0"]).contains(ip("ffff::1")));
        assert!(
            !set(&["::/0"]).contains(ip("1.2.3.4")),
            "families are apart"
        );
        assert!(!set(&[]).contains(ip("1.2.3.4")));
    }

    #[test]
    fn many_ranges_stay_correct() {
        let list: Vec<String> = (0..10_000u32)
            .map(|i| format!("{}/32", std::net::Ipv4Addr::from(i * 4)))
            .collect();
        let s = IpSet::new(&list);
        assert_eq!(s.v4.len(), 10_000);
        assert!(s.contains(IpAddr::from(std::net::Ipv4Addr::from(4 * 777))));
        assert!(!s.contains(IpAddr::from(std::net::Ipv4Addr::from(4 * 777 + 1))));
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let rules = IpRules::new(&IpPolicy {
            allow: vec!["10.0.0.0/8".into()],
            deny: vec!["10.0.0.5".into()],
        });
        assert_eq!(rules.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(rules.check(ip("10.0.0.5")), Err(Refusal::Deny));
        assert_eq!(rules.check(ip("8.8.8.8")), Err(Refusal::Allow));
        let deny_only = IpRules::new(&IpPolicy {
            allow: vec![],
            deny: vec!["2001:db8::/32".into()],
        });
        assert_eq!(deny_only.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(deny_only.check(ip("2001:db8::9")), Err(Refusal::Deny));
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right() {
        let trusted = set(&["10.0.0.0/8"]);
        let peer = |s: &str| SocketAddr::new(ip(s), 1234);
        let xff = |lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", line.parse().unwrap());
            }
            headers
        };
        // No trusted proxies: XFF is ignored.
        assert_eq!(
            client_ip(peer("203.0.113.9"), &xff(&["1.1.1.1"]), &IpSet::default()),
            ip("203.0.113.9")
        );
        // Untrusted peer: XFF is ignored.
        assert_eq!(
            client_ip(peer("203.0.113.9"), &xff(&["1.1.1.1"]), &trusted),
            ip("203.0.113.9")
        );
        // Trusted peer: the first untrusted from the right; a forged left entry loses.
        assert_eq!(
            client_ip(
                peer("10.0.0.1"),
                &xff(&["6.6.6.6, 198.51.100.2, 10.0.0.2"]),
                &trusted
            ),
            ip("198.51.100.2")
        );
        assert_eq!(
            client_ip(
                peer("10.0.0.1"),
                &xff(&["6.6.6.6", "198.51.100.2:443", "10.0.0.2"]),
                &trusted
            ),
            ip("198.51.100.2")
        );
        assert_eq!(
            client_ip(peer("10.0.0.1"), &xff(&["[2001:db8::7]:80"]), &trusted),
            ip("2001:db8::7")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(
                peer("10.0.0.1"),
                &xff(&["1.1.1.1, junk, 10.0.0.3"]),
                &trusted
            ),
            ip("10.0.0.3")
        );
        // Everything trusted: the leftmost; no header: the peer.
        assert_eq!(
            client_ip(peer("10.0.0.1"), &xff(&["10.0.0.9, 10.0.0.2"]), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(peer("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
