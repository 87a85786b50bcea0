use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use raft::model::RateLimitSettings;

use super::*;
use crate::ratelimit::clock::{Clock, SECOND};
use crate::ratelimit::leaky_bucket::Runtime;
use crate::ratelimit::token_bucket::TokenBucket;

fn ip_key(ip: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_ip(&mut out, ip.parse::<IpAddr>().expect("ip"));
    out
}

#[test]
fn ipv6_clients_count_by_their_64_and_mapped_v4_as_v4() {
    assert_eq!(ip_key("2001:db8:1:2::1"), ip_key("2001:db8:1:2:ffff::9"));
    assert_ne!(ip_key("2001:db8:1:2::1"), ip_key("2001:db8:1:3::1"));
    assert_eq!(ip_key("::ffff:192.0.2.7"), ip_key("192.0.2.7"));
    assert_ne!(ip_key("192.0.2.7"), ip_key("192.0.2.8"));
}

#[test]
fn key_parts_are_length_prefixed() {
    // ("ab", "c") and ("a", "bc") must not make the same key.
    let mut first = Vec::new();
    push(&mut first, b'h', b"ab");
    push(&mut first, b'h', b"c");
    let mut second = Vec::new();
    push(&mut second, b'h', b"a");
    push(&mut second, b'h', b"bc");
    assert_ne!(first, second);
}

fn limit(name: &str, burst: u64) -> Arc<Limit> {
    let runtime = Runtime {
        clock: Clock::system(),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let limiter = Arc::new(Limiter::new(
        Spec::TokenBucket(TokenBucket::new(SECOND, burst)),
        64,
        runtime,
    ));
    Arc::new(Limit::new(
        name.into(),
        format!("plan:gold/{name}"),
        vec![KeyPart::Consumer],
        limiter,
    ))
}

#[test]
fn headers_list_every_limit_and_the_tightest_in_legacy_form() {
    let report = Report {
        items: vec![
            Item {
                limit: limit("burst", 10),
                remaining: 7,
                reset: 2_500_000_000,
            },
            Item {
                limit: limit("daily", 1000),
                remaining: 3,
                reset: 3600 * SECOND,
            },
        ],
    };
    let mut headers = HeaderMap::new();
    report.write(
        &RateLimitSettings {
            ietf_headers: true,
            legacy_headers: true,
        },
        &mut headers,
    );
    assert_eq!(
        headers["ratelimit-policy"],
        "\"burst\";q=10;w=10, \"daily\";q=1000;w=1000"
    );
    assert_eq!(
        headers["ratelimit"],
        "\"burst\";r=7;t=3, \"daily\";r=3;t=3600"
    );
    assert_eq!(headers["x-ratelimit-limit"], "1000");
    assert_eq!(headers["x-ratelimit-remaining"], "3");
    assert_eq!(headers["x-ratelimit-reset"], "3600");

    let mut headers = HeaderMap::new();
    report.write(&RateLimitSettings::default(), &mut headers);
    assert!(headers.contains_key("ratelimit"));
    assert!(
        !headers.contains_key("x-ratelimit-limit"),
        "legacy is opt-in"
    );
}
