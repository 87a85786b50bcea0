//! A route's `graphql` block: a GraphQL endpoint whose fields resolve to
//! REST calls on upstreams (issue 8, point 5). See docs/graphql.md for the
//! full reference.
//!
//! ```yaml
//! graphql:
//!   max_depth: 8
//!   max_complexity: 200
//!   types:
//!     User:
//!       id: ID!
//!       name: String
//!       orders: { type: "[Order!]", upstream: orders, path: "/users/{parent.id}/orders" }
//!     Order: { id: ID!, total: Float }
//!   query:
//!     user: { type: User, args: { id: ID! }, upstream: users, path: "/users/{args.id}" }
//! ```
//!
//! A field is either a type written as a string (`name: String`: the
//! value is the parent object's member of the same name, or `from`), or a
//! block that may name an `upstream` and a `path` [template](PathTemplate)
//! whose `{args.NAME}` and `{parent.KEY}` placeholders take the field's
//! arguments and the parent object's members. Root (`query`) fields always
//! call an upstream. This module does no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::ByteSize;
use super::aggregate::PathTemplate;

/// Default `max_depth`.
pub const DEFAULT_MAX_DEPTH: u32 = 8;
/// Largest `max_depth` accepted.
pub const MAX_DEPTH: u32 = 64;
/// Default `max_complexity`.
pub const DEFAULT_MAX_COMPLEXITY: u32 = 200;
/// Largest `max_complexity` accepted.
pub const MAX_COMPLEXITY: u32 = 10_000;
/// Default `max_calls`.
pub const DEFAULT_MAX_CALLS: u32 = 32;
/// Largest `max_calls` accepted.
pub const MAX_CALLS: u32 = 256;
/// Default `max_query` (bytes).
pub const DEFAULT_MAX_QUERY: u64 = 64 << 10;
/// Largest `max_query` accepted (bytes).
pub const MAX_QUERY: u64 = 1 << 20;
/// Default `max_body` of one upstream answer (bytes).
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Largest `max_body` accepted (bytes).
pub const MAX_BODY: u64 = 16 << 20;
/// Longest call timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The name of the root query type.
pub const QUERY_TYPE: &str = "Query";
/// The built-in scalar types.
pub const SCALARS: &[&str] = &["String", "Int", "Float", "Boolean", "ID"];

/// A route's GraphQL endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graphql {
    /// The root `Query` type's fields; each calls an upstream.
    pub query: BTreeMap<String, Field>,
    /// Object types, by name: each a map of its fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, BTreeMap<String, Field>>,
    /// Deepest selection nesting accepted (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Largest query cost accepted, one per selected field (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_complexity: Option<u32>,
    /// Most upstream calls one request may make (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// Largest query document: the POST body, or the GET query string
    /// (default 64KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_query: Option<ByteSize>,
    /// Largest response body read from one upstream call (default 1MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
    /// Answer introspection queries (`__schema`, `__type`); default off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub introspection: bool,
}

impl Graphql {
    /// `max_depth` or its default.
    pub fn depth_limit(&self) -> u32 {
        self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH)
    }

    /// `max_complexity` or its default.
    pub fn complexity_limit(&self) -> u32 {
        self.max_complexity.unwrap_or(DEFAULT_MAX_COMPLEXITY)
    }

    /// `max_calls` or its default.
    pub fn calls_limit(&self) -> u32 {
        self.max_calls.unwrap_or(DEFAULT_MAX_CALLS)
    }

    /// `max_query` in bytes, or its default.
    pub fn query_limit(&self) -> u64 {
        self.max_query.map_or(DEFAULT_MAX_QUERY, |b| b.bytes())
    }

    /// `max_body` in bytes, or its default.
    pub fn body_limit(&self) -> u64 {
        self.max_body.map_or(DEFAULT_MAX_BODY, |b| b.bytes())
    }
}

/// One field of an object type. Written either as its type alone
/// (`name: String`) or as a block.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Field {
    /// The field's type, e.g. `String`, `ID!`, `[Order!]!`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Arguments, by name, each of a scalar type (`ID!`, `Int`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The upstream called to resolve the field (with `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The path and query of the `GET` sent, a template with
    /// `{args.NAME}` and `{parent.KEY}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// JSON pointer to the value within the upstream's answer (default:
    /// the whole answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    /// Without `upstream`: the parent object's member read (default: the
    /// field's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Time allowed for the call (default: the upstream's
    /// `timeouts.request`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

impl Field {
    /// A field that reads its parent's member of the same name.
    pub fn plain(ty: impl Into<String>) -> Self {
        Self {
            ty: ty.into(),
            ..Self::default()
        }
    }
}

/// A field is read from a type string or from a block.
impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> serde::de::Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a type such as \"String\" or a field block { type, upstream, path, … }")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Field, E> {
        Ok(Field::plain(value))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Block {
            #[serde(rename = "type")]
            ty: String,
            #[serde(default)]
            args: BTreeMap<String, String>,
            #[serde(default)]
            upstream: Option<String>,
            #[serde(default)]
            path: Option<String>,
            #[serde(default)]
            select: Option<String>,
            #[serde(default)]
            from: Option<String>,
            #[serde(default, with = "humantime_serde")]
            timeout: Option<Duration>,
        }
        let b = Block::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Field {
            ty: b.ty,
            args: b.args,
            upstream: b.upstream,
            path: b.path,
            select: b.select,
            from: b.from,
            timeout: b.timeout,
        })
    }
}

// === impl TypeRef ===

/// A parsed field or argument type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRef {
    /// A named type (scalar or object).
    Named {
        /// The type's name.
        name: String,
        /// `!`: never null.
        required: bool,
    },
    /// A list of `of`.
    List {
        /// The item type.
        of: Box<TypeRef>,
        /// `!`: never null.
        required: bool,
    },
}

impl TypeRef {
    /// Parses `Name`, `Name!`, `[T]`, `[T]!` (lists nest), naming the rule
    /// a bad one breaks.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_at(text.trim(), 0)
    }

    fn parse_at(text: &str, depth: usize) -> Result<Self, String> {
        if depth > 4 {
            return Err("must not nest lists more than 4 deep".into());
        }
        let (inner, required) = match text.strip_suffix('!') {
            Some(inner) => (inner.trim_end(), true),
            None => (text, false),
        };
        if let Some(of) = inner.strip_prefix('[') {
            let Some(of) = of.strip_suffix(']') else {
                return Err("must close its list with ']'".into());
            };
            return Ok(Self::List {
                of: Box::new(Self::parse_at(of.trim(), depth + 1)?),
                required,
            });
        }
        if !is_name(inner) {
            return Err(
                "must be a type such as String, ID!, User or [Order!]! (names: letters, digits, '_', not starting with a digit)".into(),
            );
        }
        Ok(Self::Named {
            name: inner.to_owned(),
            required,
        })
    }

    /// The named type at the core (`Order` in `[Order!]!`).
    pub fn base(&self) -> &str {
        match self {
            Self::Named { name, .. } => name,
            Self::List { of, .. } => of.base(),
        }
    }

    /// Whether the type is a list at its outer level.
    pub fn is_list(&self) -> bool {
        matches!(self, Self::List { .. })
    }
}

/// Whether `name` is a GraphQL name (`[_A-Za-z][_0-9A-Za-z]*`, at most
/// 128 bytes).
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `name` is a built-in scalar.
pub fn is_scalar(name: &str) -> bool {
    SCALARS.contains(&name)
}

/// A field's path template, parsed with scoped placeholders.
pub fn path_template(path: &str) -> Result<PathTemplate, String> {
    PathTemplate::parse_scoped(path)
}
