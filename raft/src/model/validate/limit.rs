//! Rules for rate limits (see [`crate::model::limit`]):
//! - names are identifiers, unique within their plan or route;
//! - a key has at least one part, none twice, header parts name headers;
//! - each algorithm gets exactly its parameters: `rate` (+ `burst`) for
//!   `token_bucket`, `limit` + `per` for the window algorithms, `rate` +
//!   `queue` (+ `max_wait`) for `leaky_bucket`;
//! - rates are 1 to 1,000,000 requests per second at most, over a positive
//!   period; bursts and window limits are 1 to 1,000,000,000; periods are
//!   whole milliseconds, at least 1ms; `month` only for `fixed_window`;
//! - `sliding_window_log` keeps one timestamp per admitted request, so its
//!   `limit` is at most 10,000;
//! - `scope: redis` only for `token_bucket`, `sliding_window_counter` and
//!   `fixed_window` (the others keep state per request or per waiter);
//! - `leaky_bucket` queues at most 100,000 requests, waits a positive time,
//!   belongs to a route (it smooths the traffic a backend sees), and a route
//!   has at most one.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Checker, is_identifier};
use crate::model::limit::{Algorithm, KeyPart, Limit, Period, Rate, Scope};
use crate::model::pattern;

/// The largest rate a limit may have, per second.
const MAX_RATE_PER_SECOND: u128 = 1_000_000;
/// The largest `burst` and window `limit`.
const MAX_COUNT: u64 = 1_000_000_000;
/// The largest `limit` of a `sliding_window_log` (8 bytes per request and key).
pub const MAX_LOG_LIMIT: u64 = 10_000;
/// The longest leaky-bucket queue.
const MAX_QUEUE: u32 = 100_000;

/// What a list of limits belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Plan,
    Route,
}

pub(super) fn check(c: &mut Checker, key: &str, limits: &[Limit], owner: Owner) {
    let mut names = BTreeSet::new();
    let mut leaky = 0;
    for (i, limit) in limits.iter().enumerate() {
        let key = format!("{key}.limits[{i}]");
        if let Some(name) = &limit.name {
            if !is_identifier(name) {
                c.fail(
                    format!("{key}.name"),
                    name,
                    "must be a name of letters, digits, '-', '_' and '.'",
                );
            }
            if !names.insert(name.as_str()) {
                c.fail(
                    format!("{key}.name"),
                    name,
                    "must be unique among the limits of its plan or route",
                );
            }
        }
        check_key(c, &key, limit);
        if limit.scope != Scope::Local
            && matches!(
                limit.algorithm,
                Algorithm::SlidingWindowLog | Algorithm::LeakyBucket
            )
        {
            c.fail(
                format!("{key}.scope"),
                limit.scope.as_str(),
                format!(
                    "is for token_bucket, sliding_window_counter and fixed_window; {} stays local",
                    limit.algorithm.as_str()
                ),
            );
        }
        check_parameters(c, &key, limit);
        if limit.algorithm == Algorithm::LeakyBucket {
            leaky += 1;
            if owner == Owner::Plan {
                c.fail(
                    format!("{key}.algorithm"),
                    "leaky_bucket",
                    "belongs on a route (it smooths what one backend receives), not on a plan",
                );
            } else if leaky > 1 {
                c.fail(
                    format!("{key}.algorithm"),
                    "leaky_bucket",
                    "may appear once per route (a request waits in one queue)",
                );
            }
        }
    }
}

fn check_key(c: &mut Checker, key: &str, limit: &Limit) {
    let parts = &limit.key.0;
    let described = || {
        parts
            .iter()
            .map(KeyPart::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if parts.is_empty() {
        c.fail(format!("{key}.key"), "[]", "must name at least one part");
    }
    let mut seen = BTreeSet::new();
    for part in parts {
        let name = part.describe().to_ascii_lowercase();
        if !seen.insert(name) {
            c.fail(format!("{key}.key"), described(), "must not repeat a part");
        }
        if let KeyPart::Header(header) = part
            && !pattern::is_header_name(header)
        {
            c.fail(format!("{key}.key.header"), header, "must be a header name");
        }
    }
}

fn check_parameters(c: &mut Checker, key: &str, limit: &Limit) {
    let algorithm = limit.algorithm.as_str();
    let forbid = |c: &mut Checker, field: &str, present: bool, value: String| {
        if present {
            c.fail(
                format!("{key}.{field}"),
                value,
                format!("does not apply to {algorithm}"),
            );
        }
    };
    let require = |c: &mut Checker, field: &str, present: bool| {
        if !present {
            c.fail(
                format!("{key}.{field}"),
                "(missing)",
                format!("is required by {algorithm}"),
            );
        }
    };
    let show = |v: Option<String>| v.unwrap_or_default();
    match limit.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            require(c, "rate", limit.rate.is_some());
            forbid(
                c,
                "limit",
                limit.limit.is_some(),
                show(limit.limit.map(|v| v.to_string())),
            );
            forbid(
                c,
                "per",
                limit.per.is_some(),
                show(limit.per.map(|v| v.to_string())),
            );
        }
        Algorithm::SlidingWindowLog | Algorithm::SlidingWindowCounter | Algorithm::FixedWindow => {
            require(c, "limit", limit.limit.is_some());
            require(c, "per", limit.per.is_some());
            forbid(
                c,
                "rate",
                limit.rate.is_some(),
                show(limit.rate.map(|v| v.to_string())),
            );
        }
    }
    if limit.algorithm != Algorithm::TokenBucket {
        forbid(
            c,
            "burst",
            limit.burst.is_some(),
            show(limit.burst.map(|v| v.to_string())),
        );
    }
    if limit.algorithm == Algorithm::LeakyBucket {
        require(c, "queue", limit.queue.is_some());
    } else {
        forbid(
            c,
            "queue",
            limit.queue.is_some(),
            show(limit.queue.map(|v| v.to_string())),
        );
        forbid(
            c,
            "max_wait",
            limit.max_wait.is_some(),
            show(
                limit
                    .max_wait
                    .map(|v| humantime::format_duration(v).to_string()),
            ),
        );
    }
    if let Some(rate) = limit.rate {
        check_rate(c, &format!("{key}.rate"), rate);
    }
    if let Some(burst) = limit.burst {
        check_count(c, &format!("{key}.burst"), burst, MAX_COUNT);
    }
    if let Some(count) = limit.limit {
        let max = if limit.algorithm == Algorithm::SlidingWindowLog {
            MAX_LOG_LIMIT
        } else {
            MAX_COUNT
        };
        check_count(c, &format!("{key}.limit"), count, max);
    }
    if let Some(per) = limit.per {
        match per {
            Period::Month if limit.algorithm != Algorithm::FixedWindow => c.fail(
                format!("{key}.per"),
                per,
                "`month` is a calendar window: only fixed_window has one",
            ),
            Period::Month => {}
            Period::Fixed(d) => check_period(c, &format!("{key}.per"), d),
        }
    }
    if let Some(queue) = limit.queue
        && !(1..=MAX_QUEUE).contains(&queue)
    {
        c.fail(
            format!("{key}.queue"),
            queue,
            format!("must be between 1 and {MAX_QUEUE}"),
        );
    }
    if let Some(wait) = limit.max_wait {
        c.positive(format!("{key}.max_wait"), wait);
    }
}

fn check_rate(c: &mut Checker, key: &str, rate: Rate) {
    if rate.count == 0 {
        c.fail(key, rate, "must admit at least one request per period");
        return;
    }
    if rate.per.is_zero() {
        c.fail(key, rate, "must have a period greater than zero");
        return;
    }
    // count / per <= MAX per second  <=>  count * 1e9 <= MAX * per_nanos
    if u128::from(rate.count) * 1_000_000_000 > MAX_RATE_PER_SECOND * rate.per.as_nanos() {
        c.fail(
            key,
            rate,
            format!("must not exceed {MAX_RATE_PER_SECOND} requests per second"),
        );
    }
}

fn check_count(c: &mut Checker, key: &str, count: u64, max: u64) {
    if !(1..=max).contains(&count) {
        c.fail(key, count, format!("must be between 1 and {max}"));
    }
}

fn check_period(c: &mut Checker, key: &str, period: Duration) {
    if period < Duration::from_millis(1) || !period.subsec_nanos().is_multiple_of(1_000_000) {
        c.fail(
            key,
            humantime::format_duration(period),
            "must be a whole number of milliseconds, at least 1ms",
        );
    }
}
