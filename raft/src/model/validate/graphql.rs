//! Rules of a route's `graphql` block:
//! - a route has `graphql` or `aggregate`, not both;
//! - `query` holds 1..=64 fields, and each type 1..=64 fields; at most 64
//!   types;
//! - type names are GraphQL names, not a built-in scalar, `Query`, nor
//!   starting with `__`; field and argument names are GraphQL names not
//!   starting with `__`;
//! - every field type parses (`Name`, `Name!`, `[T]`, `[T]!`) and names a
//!   built-in scalar (`String`, `Int`, `Float`, `Boolean`, `ID`) or a
//!   declared type (types may refer to each other in cycles); argument
//!   types are scalars, optionally `!`;
//! - `upstream` and `path` go together; every `query` field has them;
//!   `args`, `select` and `timeout` need them, `from` is for fields
//!   without them;
//! - `upstream` names a declared upstream; `path` is a template (starts
//!   with `/`, balanced braces, URI characters) whose placeholders are
//!   `{args.NAME}` for a declared argument or `{parent.KEY}` (not on
//!   `query` fields, which have no parent);
//! - `select` is a JSON pointer (empty or starting with `/`);
//! - `timeout` is in (0, 60s];
//! - `max_depth` 1..=64, `max_complexity` 1..=10000, `max_calls` 1..=256,
//!   `max_query` 1B..=1MiB, `max_body` 1B..=16MiB.

use std::collections::BTreeMap;

use super::super::ByteSize;
use super::super::Route;
use super::super::aggregate::PathPiece;
use super::super::graphql::{
    self, Field, Graphql, MAX_BODY, MAX_CALLS, MAX_COMPLEXITY, MAX_DEPTH, MAX_QUERY, MAX_TIMEOUT,
    QUERY_TYPE, TypeRef,
};
use super::{Checker, GatewayConfig};

/// Most fields in one type, and most types.
const MAX_FIELDS: usize = 64;

pub(super) fn check(c: &mut Checker, key: &str, route: &Route, config: &GatewayConfig) {
    let Some(gql) = &route.graphql else {
        return;
    };
    let key = format!("{key}.graphql");
    if route.aggregate.is_some() {
        c.fail(
            &key,
            "graphql",
            "cannot be combined with `aggregate` on one route",
        );
    }
    limits(c, &key, gql);
    if gql.types.len() > MAX_FIELDS {
        c.fail(
            format!("{key}.types"),
            gql.types.len(),
            format!("must hold at most {MAX_FIELDS} types"),
        );
    }
    for (name, fields) in &gql.types {
        if !graphql::is_name(name)
            || name.starts_with("__")
            || graphql::is_scalar(name)
            || name == QUERY_TYPE
        {
            c.fail(
                format!("{key}.types"),
                name,
                "must be a GraphQL name (letters, digits, '_'), not a built-in scalar, `Query`, nor starting with '__'",
            );
        }
        let tkey = format!("{key}.types.{name}");
        check_fields(c, &tkey, fields, false, gql, config);
    }
    check_fields(c, &format!("{key}.query"), &gql.query, true, gql, config);
}

fn limits(c: &mut Checker, key: &str, gql: &Graphql) {
    let bounded = |c: &mut Checker, name: &str, value: Option<u32>, max: u32| {
        if let Some(value) = value
            && (value == 0 || value > max)
        {
            c.fail(
                format!("{key}.{name}"),
                value,
                format!("must be in 1..={max}"),
            );
        }
    };
    bounded(c, "max_depth", gql.max_depth, MAX_DEPTH);
    bounded(c, "max_complexity", gql.max_complexity, MAX_COMPLEXITY);
    bounded(c, "max_calls", gql.max_calls, MAX_CALLS);
    for (name, size, max) in [
        ("max_query", gql.max_query, MAX_QUERY),
        ("max_body", gql.max_body, MAX_BODY),
    ] {
        if let Some(size) = size
            && (size.bytes() == 0 || size.bytes() > max)
        {
            c.fail(
                format!("{key}.{name}"),
                size,
                format!("must be in 1..={}", ByteSize(max)),
            );
        }
    }
}

fn check_fields(
    c: &mut Checker,
    key: &str,
    fields: &BTreeMap<String, Field>,
    root: bool,
    gql: &Graphql,
    config: &GatewayConfig,
) {
    if fields.is_empty() || fields.len() > MAX_FIELDS {
        c.fail(
            key,
            fields.len(),
            format!("must hold 1..={MAX_FIELDS} fields"),
        );
    }
    for (name, field) in fields {
        if !graphql::is_name(name) || name.starts_with("__") {
            c.fail(
                key,
                name,
                "must be a GraphQL field name (letters, digits, '_'), not starting with '__'",
            );
        }
        check_field(c, &format!("{key}.{name}"), field, root, gql, config);
    }
}

fn check_field(
    c: &mut Checker,
    key: &str,
    field: &Field,
    root: bool,
    gql: &Graphql,
    config: &GatewayConfig,
) {
    match TypeRef::parse(&field.ty) {
        Err(rule) => c.fail(format!("{key}.type"), &field.ty, rule),
        Ok(ty) => {
            let base = ty.base();
            if !graphql::is_scalar(base) && !gql.types.contains_key(base) {
                c.fail(
                    format!("{key}.type"),
                    &field.ty,
                    format!(
                        "names {base}, which is neither a built-in scalar (String, Int, Float, Boolean, ID) nor a type declared under graphql.types"
                    ),
                );
            }
        }
    }
    for (arg, ty) in &field.args {
        if !graphql::is_name(arg) || arg.starts_with("__") {
            c.fail(
                format!("{key}.args"),
                arg,
                "must be a GraphQL argument name (letters, digits, '_'), not starting with '__'",
            );
        }
        let scalar = matches!(TypeRef::parse(ty), Ok(TypeRef::Named { name, .. }) if graphql::is_scalar(&name));
        if !scalar {
            c.fail(
                format!("{key}.args.{arg}"),
                ty,
                "must be a built-in scalar type (String, Int, Float, Boolean, ID), optionally with '!'",
            );
        }
    }
    match (&field.upstream, &field.path) {
        (Some(upstream), Some(path)) => {
            if !config.upstreams.contains_key(upstream) {
                c.fail(
                    format!("{key}.upstream"),
                    upstream,
                    "must name a declared upstream",
                );
            }
            check_path(c, key, path, field, root);
        }
        (Some(upstream), None) => c.fail(
            format!("{key}.upstream"),
            upstream,
            "needs `path`, the path and query of the GET sent",
        ),
        (None, Some(path)) => c.fail(
            format!("{key}.path"),
            path,
            "needs `upstream`, the upstream called",
        ),
        (None, None) => {
            if root {
                c.fail(
                    key,
                    &field.ty,
                    "a query field must call an upstream: set `upstream` and `path`",
                );
            }
            let needs = [
                ("args", !field.args.is_empty()),
                ("select", field.select.is_some()),
                ("timeout", field.timeout.is_some()),
            ];
            for (name, set) in needs {
                if set {
                    c.fail(
                        format!("{key}.{name}"),
                        name,
                        "only applies to a field that calls an upstream (`upstream` and `path`)",
                    );
                }
            }
        }
    }
    if field.upstream.is_some()
        && let Some(from) = &field.from
    {
        c.fail(
            format!("{key}.from"),
            from,
            "only applies to a field without `upstream` (it names the parent's member read)",
        );
    }
    if let Some(from) = &field.from
        && from.is_empty()
    {
        c.fail(format!("{key}.from"), "", "must not be empty");
    }
    if let Some(select) = &field.select
        && !select.is_empty()
        && !select.starts_with('/')
    {
        c.fail(
            format!("{key}.select"),
            select,
            "must be a JSON pointer: empty or starting with '/'",
        );
    }
    if let Some(timeout) = field.timeout
        && (timeout.is_zero() || timeout > MAX_TIMEOUT)
    {
        c.fail(
            format!("{key}.timeout"),
            humantime::format_duration(timeout),
            format!(
                "must be in (0, {}]",
                humantime::format_duration(MAX_TIMEOUT)
            ),
        );
    }
}

fn check_path(c: &mut Checker, key: &str, path: &str, field: &Field, root: bool) {
    let template = match graphql::path_template(path) {
        Ok(template) => template,
        Err(rule) => return c.fail(format!("{key}.path"), path, rule),
    };
    for piece in &template.0 {
        let PathPiece::Param(name) = piece else {
            continue;
        };
        let rule = match name.split_once('.') {
            Some(("args", arg)) if field.args.contains_key(arg) => continue,
            Some(("args", arg)) => {
                format!("uses {{{name}}}, but the field declares no argument {arg:?} under `args`")
            }
            Some(("parent", _)) if !root => continue,
            Some(("parent", _)) => format!(
                "uses {{{name}}}, but a query field has no parent object; use {{args.NAME}}"
            ),
            _ => format!(
                "uses {{{name}}}: placeholders are {{args.NAME}} (a declared argument) or {{parent.KEY}} (a member of the parent object)"
            ),
        };
        c.fail(format!("{key}.path"), path, rule);
    }
}
