//! A route's `aggregate` block: response composition (issue 8, point 3).
//! The gateway calls every part concurrently, each a `GET` to its own
//! upstream, and answers with one JSON object holding each part's JSON
//! under the part's name. See docs/aggregate.md for the full reference.
//!
//! ```yaml
//! aggregate:
//!   parts:
//!     user:   { upstream: users,  path: "/v1/users/{id}", timeout: 1s }
//!     orders: { upstream: orders, path: "/v1/orders?user={id}", timeout: 500ms, on_error: omit }
//!   max_body: 1MiB
//! ```
//!
//! Part paths are [templates](PathTemplate) whose `{name}` placeholders
//! are parameters of the route's `match.path` / `match.path_prefix`; they
//! are parsed here, once, by validation and by the node that compiles
//! them. This module does no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// Default limit of one part's response body.
pub const DEFAULT_MAX_PART_BODY: u64 = 1 << 20;
/// Largest `max_body` accepted (per part).
pub const MAX_PART_BODY: u64 = 16 << 20;
/// Largest number of parts in one block.
pub const MAX_PARTS: usize = 16;
/// Longest part timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A route's aggregation: the parts called and merged into one answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The parts, by the key they take in the merged object.
    pub parts: BTreeMap<String, Part>,
    /// Largest response body read from one part (default 1 MiB), unless
    /// the part sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

impl Aggregate {
    /// The body limit of `part` in bytes.
    pub fn max_body_bytes(&self, part: &Part) -> u64 {
        part.max_body
            .or(self.max_body)
            .map_or(DEFAULT_MAX_PART_BODY, |b| b.bytes())
    }
}

/// One upstream call of an aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// The upstream called.
    pub upstream: String,
    /// The path and query sent, a [`PathTemplate`].
    pub path: String,
    /// Time allowed for the whole part, head and body (default: the
    /// upstream's `timeouts.request`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// What a failure of this part does to the answer.
    #[serde(default, skip_serializing_if = "OnError::is_default")]
    pub on_error: OnError,
    /// Largest response body read from this part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

/// What a failed part (error status, non-JSON, too large, timed out,
/// unreachable) does to the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The whole answer is a 502 naming the part.
    #[default]
    Fail,
    /// The part's key is left out; `x-aggregate-partial` names it.
    Omit,
    /// The part's key holds `{"error": {"code", "status"}}`;
    /// `x-aggregate-partial` names it.
    Marker,
}

impl OnError {
    fn is_default(&self) -> bool {
        *self == OnError::Fail
    }
}

// === impl PathTemplate ===

/// One piece of a part's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPiece {
    /// Sent as written.
    Literal(String),
    /// `{name}`: the value the route's path pattern captured for `name`.
    Param(String),
}

/// A part's path: an origin-form path and optional query, with `{name}`
/// placeholders anywhere (`{{` and `}}` are literal braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate(pub Vec<PathPiece>);

impl PathTemplate {
    /// Parses a template, naming the rule a bad one breaks.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, false)
    }

    /// Parses a template whose placeholders are scoped names such as
    /// `{args.id}` or `{parent.id}` (see [`graphql`](super::graphql)): a
    /// name of letters, digits and `_`, a `.`, then another.
    pub fn parse_scoped(text: &str) -> Result<Self, String> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, scoped: bool) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err("must start with '/'".into());
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, ch)) = chars.next() {
            match ch {
                '{' if chars.peek().is_some_and(|(_, c)| *c == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, c)| *c == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!("'{{' at byte {at} is not closed"));
                    };
                    let name = &rest[..end];
                    let plain = |name: &str| {
                        !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    };
                    if scoped {
                        if !name
                            .split_once('.')
                            .is_some_and(|(s, n)| plain(s) && plain(n))
                        {
                            return Err(format!(
                                "parameter {{{name}}} must be a scoped name such as {{args.id}} or {{parent.id}}"
                            ));
                        }
                    } else if !plain(name) {
                        return Err(format!(
                            "parameter {{{name}}} must be a name of letters, digits and '_'"
                        ));
                    }
                    if !literal.is_empty() {
                        pieces.push(PathPiece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(PathPiece::Param(name.to_owned()));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => return Err(format!("'}}' at byte {at} closes nothing")),
                ch if !is_uri_char(ch) => {
                    return Err(format!("character {ch:?} is not allowed in a URI"));
                }
                ch => literal.push(ch),
            }
        }
        if !literal.is_empty() {
            pieces.push(PathPiece::Literal(literal));
        }
        Ok(Self(pieces))
    }

    /// The parameters the template uses, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|piece| match piece {
            PathPiece::Param(name) => Some(name.as_str()),
            PathPiece::Literal(_) => None,
        })
    }
}

/// Characters allowed literally in an origin-form target (RFC 3986
/// `pchar`, `/`, `?`, and `%` for escapes); `#` is not sent.
fn is_uri_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(ch)
}
