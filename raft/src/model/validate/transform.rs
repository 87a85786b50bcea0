//! Rules of a route's `transform` block:
//! - header names (`remove`, both sides of `rename`, `set`, `add`) are valid
//!   header names, and none is a header the gateway manages (hop-by-hop
//!   fields, `Host`, `Content-Length`; on requests also `X-Request-Id`,
//!   `traceparent`, `X-Forwarded-*`, `Forwarded`) or, on requests, an
//!   identity header (`x-consumer-*`, `x-auth-*`, `x-client-cert-*`, written
//!   only by `auth`);
//! - a rename does not rename a header to itself;
//! - `set` and `add` values are templates: balanced braces, known variables,
//!   no control characters;
//! - a body transform converts, filters or moves something; pointers are
//!   RFC 6901 pointers naming a member (not the whole document); `move`
//!   pointers have no `*` and `to` does not lie inside `from`;
//!   `xml_root` is an XML name and is only given with `json_to_xml`;
//!   `max_depth` is in 1..=128; `response.max_body` is in 1..=64MiB.

use std::collections::BTreeMap;

use super::super::ByteSize;
use super::super::pattern;
use super::super::transform::{
    BodyTransform, Convert, HeaderOps, MAX_DEPTH, MAX_RESPONSE_BODY, Pointer, Template, Transform,
};
use super::Checker;

/// Headers the gateway writes itself, in either direction.
const MANAGED: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "host",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// Headers the proxy writes on every upstream request.
const MANAGED_REQUEST: &[&str] = &[
    "x-request-id",
    "traceparent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Prefixes of the identity headers only `auth` writes.
const IDENTITY_PREFIXES: &[&str] = &["x-consumer-", "x-auth-", "x-client-cert-"];

pub(super) fn check(c: &mut Checker, key: &str, transform: &Transform) {
    let request = &transform.request;
    headers(c, &format!("{key}.request.headers"), &request.headers, true);
    if let Some(body) = &request.body {
        check_body(c, &format!("{key}.request.body"), body);
    }
    let response = &transform.response;
    headers(
        c,
        &format!("{key}.response.headers"),
        &response.headers,
        false,
    );
    if let Some(body) = &response.body {
        check_body(c, &format!("{key}.response.body"), body);
    }
    if let Some(size) = response.max_body
        && (size.bytes() == 0 || size.bytes() > MAX_RESPONSE_BODY)
    {
        c.fail(
            format!("{key}.response.max_body"),
            size,
            format!("must be in 1..={}", ByteSize(MAX_RESPONSE_BODY)),
        );
    }
}

fn header_name(c: &mut Checker, key: String, name: &str, request: bool) {
    if !pattern::is_header_name(name) {
        c.fail(key, name, "must be a valid header name");
        return;
    }
    let lower = name.to_ascii_lowercase();
    if MANAGED.contains(&lower.as_str()) || (request && MANAGED_REQUEST.contains(&lower.as_str())) {
        c.fail(
            key,
            name,
            "is managed by the gateway and cannot be transformed",
        );
    } else if request && IDENTITY_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        c.fail(
            key,
            name,
            "carries verified identity and is written only by the auth stage",
        );
    }
}

fn templates(c: &mut Checker, key: &str, values: &BTreeMap<String, String>, request: bool) {
    for (name, value) in values {
        header_name(c, format!("{key}.{name}"), name, request);
        if let Err(error) = Template::parse(value) {
            c.fail(format!("{key}.{name}"), value, error.to_string());
        }
    }
}

fn headers(c: &mut Checker, key: &str, ops: &HeaderOps, request: bool) {
    for (i, name) in ops.remove.iter().enumerate() {
        header_name(c, format!("{key}.remove[{i}]"), name, request);
    }
    for (from, to) in &ops.rename {
        let rkey = format!("{key}.rename.{from}");
        header_name(c, rkey.clone(), from, request);
        header_name(c, rkey.clone(), to, request);
        if from.eq_ignore_ascii_case(to) {
            c.fail(rkey, to, "must differ from the name it renames");
        }
    }
    templates(c, &format!("{key}.set"), &ops.set, request);
    templates(c, &format!("{key}.add"), &ops.add, request);
}

/// Whether `name` is an XML element or attribute name (letters, digits,
/// `_`, `-`, `.`, `:`, not starting with a digit, `-` or `.`).
pub fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_alphabetic() || first == '_' || first == ':')
        && chars.all(|ch| ch.is_alphanumeric() || "_-.:".contains(ch))
}

fn check_body(c: &mut Checker, key: &str, body: &BodyTransform) {
    if body.convert.is_none() && body.filter.is_empty() && body.moves.is_empty() {
        c.fail(
            key,
            "{}",
            "must convert, filter or move something (convert, filter or move)",
        );
    }
    for (field, list) in [("allow", &body.filter.allow), ("deny", &body.filter.deny)] {
        for (i, pointer) in list.iter().enumerate() {
            if let Err(rule) = Pointer::parse(pointer) {
                c.fail(format!("{key}.filter.{field}[{i}]"), pointer, rule);
            }
        }
    }
    for (i, step) in body.moves.iter().enumerate() {
        let mkey = format!("{key}.move[{i}]");
        let mut parsed = Vec::new();
        for (field, pointer) in [("from", &step.from), ("to", &step.to)] {
            match Pointer::parse(pointer) {
                Err(rule) => c.fail(format!("{mkey}.{field}"), pointer, rule),
                Ok(p) if p.has_wildcard() => c.fail(
                    format!("{mkey}.{field}"),
                    pointer,
                    "must not use '*' (a move names one member)",
                ),
                Ok(p) => parsed.push(p),
            }
        }
        if let [from, to] = &parsed[..]
            && to.starts_with(from)
        {
            c.fail(
                format!("{mkey}.to"),
                &step.to,
                format!("must not lie inside {mkey}.from ({})", step.from),
            );
        }
    }
    if let Some(root) = &body.xml_root {
        if body.convert != Some(Convert::JsonToXml) {
            c.fail(
                format!("{key}.xml_root"),
                root,
                "only applies with convert: json_to_xml",
            );
        } else if !is_xml_name(root) {
            c.fail(
                format!("{key}.xml_root"),
                root,
                "must be an XML element name",
            );
        }
    }
    if let Some(depth) = body.max_depth
        && !(1..=MAX_DEPTH).contains(&depth)
    {
        c.fail(
            format!("{key}.max_depth"),
            depth,
            format!("must be in 1..={MAX_DEPTH}"),
        );
    }
}
