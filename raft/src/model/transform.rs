//! A route's `transform` block: header operations on the request and the
//! response, and body transformations (XML ⇄ JSON, JSON field filtering and
//! reshaping). See docs/transform.md for the full reference.
//!
//! ```yaml
//! transform:
//!   request:
//!     headers:
//!       set: { X-Tenant: "{jwt.claims.tenant}", X-Client-IP: "{client.ip}" }
//!       remove: [X-Debug]
//!     body: { convert: json_to_xml, xml_root: order }
//!   response:
//!     headers: { rename: { X-Internal-Id: X-Id } }
//!     body:
//!       convert: xml_to_json
//!       filter: { deny: [/internal_id, "/users/*/ssn"] }
//!       move: [ { from: /data/name, to: /name } ]
//!     max_body: 1MiB
//! ```
//!
//! Templates and JSON pointers are parsed here, once, by validation and by
//! the node that compiles them; this module does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// Default limit of an upstream response body buffered for a transform.
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 1 << 20;
/// Largest `response.max_body` accepted.
pub const MAX_RESPONSE_BODY: u64 = 64 << 20;
/// Default nesting limit of a transformed document.
pub const DEFAULT_MAX_DEPTH: u32 = 64;
/// Largest `max_depth` accepted: serde_json's own recursion limit, which
/// is always on.
pub const MAX_DEPTH: u32 = 128;

/// A route's transformations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transform {
    /// Applied to the request before it is proxied.
    #[serde(skip_serializing_if = "RequestTransform::is_empty")]
    pub request: RequestTransform,
    /// Applied to the upstream's response.
    #[serde(skip_serializing_if = "ResponseTransform::is_empty")]
    pub response: ResponseTransform,
}

impl Transform {
    /// Whether the block does nothing (not written out when serialising).
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Transformations of the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransform {
    /// Header operations.
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub headers: HeaderOps,
    /// The body transformation; the body is buffered (within the route's
    /// `max_body`) only when this is set and its content type matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyTransform>,
}

impl RequestTransform {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none()
    }
}

/// Transformations of the response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTransform {
    /// Header operations.
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub headers: HeaderOps,
    /// The body transformation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyTransform>,
    /// Largest upstream body buffered for `body` (default 1 MiB); a larger
    /// one is answered with 502 `upstream_body_too_large`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

impl ResponseTransform {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none() && self.max_body.is_none()
    }

    /// The buffering limit in bytes.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body
            .map_or(DEFAULT_MAX_RESPONSE_BODY, |b| b.bytes())
    }
}

/// Header operations, applied in this order: `remove`, `rename`, `set`,
/// `add`. Values of `set` and `add` are [templates](Template).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    /// Headers deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Headers renamed, `from: to` (every value moves; an existing `to` is
    /// replaced).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Headers set, replacing any value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers appended, keeping existing values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl HeaderOps {
    /// Whether there is no operation.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// A body transformation: parse (JSON, or XML for `xml_to_json`), then
/// `filter`, then `move`, then write (JSON, or XML for `json_to_xml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyTransform {
    /// A format conversion; without one the body is JSON in and out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convert: Option<Convert>,
    /// Members kept or removed, by JSON pointer.
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    /// Members moved (renamed), in order.
    #[serde(rename = "move", skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<Move>,
    /// The root element written by `json_to_xml` when the document is not
    /// an object with a single member (default `root`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xml_root: Option<String>,
    /// Deepest nesting accepted in the input (default 64, at most 128).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

impl BodyTransform {
    /// The nesting limit.
    pub fn max_depth(&self) -> u32 {
        self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH)
    }
}

/// A format conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    /// An XML body (`application/xml`, `text/xml`, `*+xml`) becomes JSON.
    XmlToJson,
    /// A JSON body (`application/json`, `*+json`) becomes XML.
    JsonToXml,
}

/// Members kept (`allow`) or removed (`deny`); with both, `allow` applies
/// first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Only these pointers (and what they contain) are kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These pointers are removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Filter {
    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A member moved from one pointer to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Move {
    /// Where the value is taken from (no `*`).
    pub from: String,
    /// Where it is put (no `*`; missing objects are created; `-` appends
    /// to an array).
    pub to: String,
}

// === templates ===

/// A value a template may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Variable {
    /// `{consumer.id}`.
    ConsumerId,
    /// `{consumer.name}`.
    ConsumerName,
    /// `{consumer.plan}`.
    ConsumerPlan,
    /// `{auth.method}`: the method that admitted the caller.
    AuthMethod,
    /// `{jwt.claims.<name>}`: a claim of the verified token (JWT or
    /// introspection answer); `<name>` is taken verbatim, dots included.
    Claim(String),
    /// `{route.name}`.
    RouteName,
    /// `{request.id}`.
    RequestId,
    /// `{request.method}`.
    RequestMethod,
    /// `{request.path}`: the normalised path.
    RequestPath,
    /// `{request.host}`.
    RequestHost,
    /// `{client.ip}`.
    ClientIp,
}

/// The variable names a template may use, for messages.
pub const VARIABLES: &str = "consumer.id, consumer.name, consumer.plan, auth.method, \
    jwt.claims.<name>, route.name, request.id, request.method, request.path, request.host, \
    client.ip";

impl Variable {
    /// Parses a variable name (without braces).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "consumer.id" => Self::ConsumerId,
            "consumer.name" => Self::ConsumerName,
            "consumer.plan" => Self::ConsumerPlan,
            "auth.method" => Self::AuthMethod,
            "route.name" => Self::RouteName,
            "request.id" => Self::RequestId,
            "request.method" => Self::RequestMethod,
            "request.path" => Self::RequestPath,
            "request.host" => Self::RequestHost,
            "client.ip" => Self::ClientIp,
            other => {
                let claim = other.strip_prefix("jwt.claims.")?;
                if claim.is_empty() {
                    return None;
                }
                Self::Claim(claim.to_owned())
            }
        })
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A value filled in per request.
    Var(Variable),
}

/// A header value template: text with `{variable}` placeholders; `{{` and
/// `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{` without its `}`, or a lone `}`.
    Unbalanced,
    /// `{name}` names no known variable.
    UnknownVariable(String),
    /// The literal text holds a character a header value cannot.
    InvalidCharacter,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unbalanced => {
                write!(
                    f,
                    "has an unbalanced brace (write {{{{ or }}}} for a literal one)"
                )
            }
            TemplateError::UnknownVariable(name) => {
                write!(f, "uses unknown variable {{{name}}} (known: {VARIABLES})")
            }
            TemplateError::InvalidCharacter => {
                write!(f, "must be a valid header value (no control characters)")
            }
        }
    }
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, ch)) = chars.next() {
            match ch {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unbalanced),
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(TemplateError::Unbalanced);
                    };
                    let name = &rest[..end];
                    if name.contains('{') {
                        return Err(TemplateError::Unbalanced);
                    }
                    let variable = Variable::parse(name.trim())
                        .ok_or_else(|| TemplateError::UnknownVariable(name.to_owned()))?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(variable));
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                ch if ch.is_control() && ch != '\t' => return Err(TemplateError::InvalidCharacter),
                ch => literal.push(ch),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self(pieces))
    }

    /// The variables the template uses.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Literal(_) => None,
        })
    }
}

// === JSON pointers ===

/// One step of a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member name, or an array index when it is a number.
    Key(String),
    /// `*`: any array element or object member.
    Any,
}

/// An RFC 6901 JSON pointer, with `*` for any element or member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(pub Vec<Step>);

impl Pointer {
    /// Parses `/a/b~1c/*/0`. The empty pointer (the whole document) is
    /// refused: a transform names members.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must be a JSON pointer starting with '/' (RFC 6901)");
        };
        let mut steps = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                steps.push(Step::Any);
                continue;
            }
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(ch) = chars.next() {
                if ch == '~' {
                    match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err("must escape '~' as ~0 and '/' as ~1 (RFC 6901)"),
                    }
                } else {
                    key.push(ch);
                }
            }
            steps.push(Step::Key(key));
        }
        Ok(Self(steps))
    }

    /// Whether the pointer uses `*`.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&Step::Any)
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &Pointer) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}
