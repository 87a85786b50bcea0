//! Rules of a route's `aggregate` block:
//! - it has 1..=16 parts; part names are identifiers (letters, digits,
//!   `-`, `_`, `.`), as they become keys of the merged object;
//! - each part names a declared upstream;
//! - each part path is a template: starts with `/`, balanced braces,
//!   URI characters only, and every `{name}` is a parameter of the route's
//!   `match.path` or `match.path_prefix`;
//! - a part's timeout is in (0, 60s];
//! - `max_body` (of the block and of a part) is in 1..=16MiB.

use super::super::ByteSize;
use super::super::Route;
use super::super::aggregate::{Aggregate, MAX_PART_BODY, MAX_PARTS, MAX_TIMEOUT, PathTemplate};
use super::super::pattern::{PathPattern, Segment};
use super::{Checker, GatewayConfig, is_identifier};

pub(super) fn check(c: &mut Checker, key: &str, route: &Route, config: &GatewayConfig) {
    let Some(aggregate) = &route.aggregate else {
        return;
    };
    let key = format!("{key}.aggregate");
    if aggregate.parts.is_empty() || aggregate.parts.len() > MAX_PARTS {
        c.fail(
            format!("{key}.parts"),
            aggregate.parts.len(),
            format!("must hold 1..={MAX_PARTS} parts"),
        );
    }
    let params = route_params(route);
    max_body(c, format!("{key}.max_body"), aggregate.max_body);
    check_parts(c, &key, aggregate, &params, config);
}

fn check_parts(
    c: &mut Checker,
    key: &str,
    aggregate: &Aggregate,
    params: &[String],
    config: &GatewayConfig,
) {
    for (name, part) in &aggregate.parts {
        let pkey = format!("{key}.parts.{name}");
        if !is_identifier(name) {
            c.fail(
                format!("{key}.parts"),
                name,
                "must be a name of letters, digits, '-', '_' and '.'",
            );
        }
        if !config.upstreams.contains_key(&part.upstream) {
            c.fail(
                format!("{pkey}.upstream"),
                &part.upstream,
                "must name a declared upstream",
            );
        }
        match PathTemplate::parse(&part.path) {
            Err(rule) => c.fail(format!("{pkey}.path"), &part.path, rule),
            Ok(template) => {
                for param in template.params() {
                    if !params.iter().any(|p| p == param) {
                        c.fail(
                            format!("{pkey}.path"),
                            &part.path,
                            format!(
                                "uses {{{param}}}, which is not a parameter of the route's match.path or match.path_prefix"
                            ),
                        );
                    }
                }
            }
        }
        if let Some(timeout) = part.timeout
            && (timeout.is_zero() || timeout > MAX_TIMEOUT)
        {
            c.fail(
                format!("{pkey}.timeout"),
                humantime::format_duration(timeout),
                format!(
                    "must be in (0, {}]",
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            );
        }
        max_body(c, format!("{pkey}.max_body"), part.max_body);
    }
}

fn max_body(c: &mut Checker, key: String, size: Option<ByteSize>) {
    if let Some(size) = size
        && (size.bytes() == 0 || size.bytes() > MAX_PART_BODY)
    {
        c.fail(
            key,
            size,
            format!("must be in 1..={}", ByteSize(MAX_PART_BODY)),
        );
    }
}

/// The parameter names of the route's path pattern (none without one, or
/// when it is invalid, which is reported on its own).
fn route_params(route: &Route) -> Vec<String> {
    let m = &route.matcher;
    m.path
        .as_deref()
        .or(m.path_prefix.as_deref())
        .and_then(|p| PathPattern::parse(p).ok())
        .map(|p| {
            p.segments
                .into_iter()
                .filter_map(|s| match s {
                    Segment::Param(name) => Some(name),
                    Segment::Literal(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
