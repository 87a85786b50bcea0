//! A route's `grpc` block: gRPC-JSON transcoding (issue 8, point 4). The
//! gateway answers REST calls with JSON bodies by calling a method of a
//! gRPC service on the route's (h2) upstream, as the service's
//! `google.api.http` annotations say. See docs/grpc.md for the reference.
//!
//! ```yaml
//! grpc:
//!   descriptor_set: CpcBChxnb29n...   # base64 of a FileDescriptorSet, imports included
//!   service: library.v1.Library
//!   streaming: ndjson                  # or: array
//! ```
//!
//! The descriptor set travels inside the replicated configuration, so every
//! node compiles the same service without reading a file. [`Service::compile`]
//! decodes it, finds the service and turns each method's `google.api.http`
//! rule (and its `additional_bindings`) into a [`Binding`] with a parsed
//! [`Template`]; validation and the node that compiles the snapshot both call
//! it, so a configuration that validates always compiles. It does no I/O.

use std::fmt;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};
use serde::{Deserialize, Serialize};

/// Largest decoded descriptor set accepted.
pub const MAX_DESCRIPTOR_SET: usize = 4 << 20;
/// The extension that carries a method's HTTP rule.
pub const HTTP_EXTENSION: &str = "google.api.http";

/// A route's transcoding: which gRPC service answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grpc {
    /// Base64 (standard alphabet; whitespace ignored) of a serialized
    /// `google.protobuf.FileDescriptorSet` holding the service and every
    /// file it imports, `google/api/annotations.proto` included
    /// (`protoc --include_imports --descriptor_set_out`, or protox).
    pub descriptor_set: String,
    /// The service's full name, e.g. `library.v1.Library`.
    pub service: String,
    /// How a server-streaming method's messages are written.
    #[serde(default, skip_serializing_if = "Streaming::is_default")]
    pub streaming: Streaming,
}

/// The body of a server-streaming answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streaming {
    /// `application/x-ndjson`: one JSON object per line, as messages arrive.
    #[default]
    Ndjson,
    /// `application/json`: one array, its elements written as messages
    /// arrive.
    Array,
}

impl Streaming {
    fn is_default(&self) -> bool {
        *self == Streaming::Ndjson
    }
}

// === impl Template ===

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches itself.
    Literal(String),
    /// `*`: exactly one segment.
    Any,
    /// `**`: the rest of the path, zero or more segments (last only).
    Rest,
}

/// A `{field.path=segments}` variable: the field it sets and the
/// segments (`start..end`) whose text becomes the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, e.g. `["book", "id"]`.
    pub path: Vec<String>,
    /// First segment bound.
    pub start: usize,
    /// One past the last segment bound.
    pub end: usize,
}

/// A `google.api.http` path template:
/// `"/" Segment { "/" Segment } [ ":" Verb ]`, where a segment is a
/// literal, `*`, `**` (last only) or a variable `{field}` /
/// `{field=segments}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The segments, variables expanded.
    pub segments: Vec<Segment>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
    /// The custom verb after the last segment (`:cancel`).
    pub verb: Option<String>,
}

impl Template {
    /// Parses a template, naming the rule a bad one breaks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with '/'".into());
        };
        // The verb follows the last ':' outside braces.
        let mut depth = 0usize;
        let mut verb_at = None;
        for (at, ch) in rest.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ':' if depth == 0 => verb_at = Some(at),
                _ => {}
            }
        }
        let (body, verb) = match verb_at {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        if let Some(verb) = verb
            && !is_literal(verb)
        {
            return Err(format!("verb {verb:?} must be a non-empty literal"));
        }
        let mut template = Template {
            segments: Vec::new(),
            variables: Vec::new(),
            verb: verb.map(str::to_owned),
        };
        let mut chars = body;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let Some(close) = inner.find('}') else {
                    return Err("'{' is not closed".into());
                };
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                let path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if path.iter().any(|p| !is_ident(p)) {
                    return Err(format!("variable {field:?} must be a field path"));
                }
                let start = template.segments.len();
                for piece in pattern.split('/') {
                    template.segments.push(segment(piece, true)?);
                }
                template.variables.push(Variable {
                    path,
                    start,
                    end: template.segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                template.segments.push(segment(&chars[..end], false)?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(rest) => chars = rest,
                None if chars.is_empty() => break,
                None => return Err("a variable must be a whole segment".into()),
            }
        }
        let last = template.segments.len() - 1;
        if template.segments[..last].contains(&Segment::Rest) {
            return Err("'**' may only be the last segment".into());
        }
        let mut seen: Vec<&[String]> = Vec::new();
        for variable in &template.variables {
            if seen.contains(&variable.path.as_slice()) {
                return Err(format!(
                    "variable {:?} is bound twice",
                    variable.path.join(".")
                ));
            }
            seen.push(&variable.path);
        }
        Ok(template)
    }

    /// The variables' values if `path` (an origin-form path without query)
    /// matches, as the raw (still percent-encoded) text of their segments.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&Variable, &'p str)>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        // Byte offsets of each path segment.
        let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(self.segments.len());
        let mut at = 0;
        for piece in rest.split('/') {
            bounds.push((at, at + piece.len()));
            at += piece.len() + 1;
        }
        let mut consumed = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => {
                    consumed = bounds.len();
                    // `**` is last: it takes what is left (possibly nothing).
                    debug_assert_eq!(i + 1, self.segments.len());
                }
                Segment::Any => {
                    let (s, e) = *bounds.get(i)?;
                    if s == e {
                        return None;
                    }
                    consumed = i + 1;
                }
                Segment::Literal(literal) => {
                    let (s, e) = *bounds.get(i)?;
                    if &rest[s..e] != literal {
                        return None;
                    }
                    consumed = i + 1;
                }
            }
        }
        if consumed != bounds.len() {
            return None;
        }
        let values = self
            .variables
            .iter()
            .map(|v| {
                let text = if v.start >= bounds.len() {
                    ""
                } else {
                    let end = v.end.min(bounds.len());
                    let from = bounds[v.start].0;
                    let to = if self.segments.get(v.end - 1) == Some(&Segment::Rest) {
                        rest.len()
                    } else {
                        bounds[end - 1].1
                    };
                    &rest[from..to]
                };
                (v, text)
            })
            .collect();
        Some(values)
    }
}

fn segment(piece: &str, in_variable: bool) -> Result<Segment, String> {
    match piece {
        "*" => Ok(Segment::Any),
        "**" => Ok(Segment::Rest),
        _ if is_literal(piece) => Ok(Segment::Literal(piece.to_owned())),
        "" => Err("segments must not be empty".into()),
        _ if in_variable => Err(format!(
            "{piece:?} inside a variable must be a literal, '*' or '**'"
        )),
        _ => Err(format!(
            "segment {piece:?} must be a literal, '*', '**' or a {{variable}}"
        )),
    }
}

/// Unreserved characters and sub-delimiters, as the template grammar allows.
fn is_literal(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@%".contains(c))
}

fn is_ident(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// === impl Service ===

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTarget {
    /// No body is read (`body` unset).
    None,
    /// `body: "*"`: the body is the message, less the path's fields.
    Message,
    /// `body: "field"`: the body is that top-level field.
    Field(FieldDescriptor),
}

/// One HTTP binding of a method.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The HTTP method, uppercase (`GET`, or a custom one).
    pub http_method: String,
    /// The path template.
    pub template: Template,
    /// The field each variable of the template sets, in order.
    pub fields: Vec<Vec<FieldDescriptor>>,
    /// Where the body goes.
    pub body: BodyTarget,
    /// The gRPC method called.
    pub method: MethodDescriptor,
}

impl Binding {
    /// The gRPC request path, `/package.Service/Method`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.method.parent_service().full_name(),
            self.method.name()
        )
    }
}

/// Why a `grpc` block does not compile: the key (under the block) and
/// value at fault, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `descriptor_set` or `service`.
    pub key: &'static str,
    /// The offending value (shortened for the descriptor set).
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) {}", self.key, self.value, self.rule)
    }
}

/// A compiled service: its descriptors and HTTP bindings.
#[derive(Debug, Clone)]
pub struct Service {
    /// The descriptors the service's messages are read with.
    pub pool: DescriptorPool,
    /// Every binding, methods in declaration order, each method's main
    /// rule before its `additional_bindings`.
    pub bindings: Vec<Binding>,
}

impl Service {
    /// Decodes the descriptor set, finds the service and compiles the HTTP
    /// rule of every unary and server-streaming method. Client- and
    /// bidirectional-streaming methods are not transcoded (they pass
    /// through as plain gRPC); each other method must carry a rule.
    pub fn compile(grpc: &Grpc) -> Result<Self, Vec<Problem>> {
        let pool = decode(&grpc.descriptor_set).map_err(|rule| {
            vec![Problem {
                key: "descriptor_set",
                value: shorten(&grpc.descriptor_set),
                rule,
            }]
        })?;
        let problem = |value: String, rule: String| Problem {
            key: "service",
            value,
            rule,
        };
        let Some(service) = pool.get_service_by_name(&grpc.service) else {
            return Err(vec![problem(
                grpc.service.clone(),
                "must name a service of the descriptor set".into(),
            )]);
        };
        let Some(http) = pool.get_extension_by_name(HTTP_EXTENSION) else {
            return Err(vec![problem(
                grpc.service.clone(),
                "has no google.api.http annotations: the descriptor set lacks \
                 google/api/annotations.proto (include imports)"
                    .into(),
            )]);
        };
        let mut bindings = Vec::new();
        let mut problems = Vec::new();
        for method in service.methods() {
            let value = format!("{}/{}", grpc.service, method.name());
            if method.is_client_streaming() {
                continue;
            }
            let options = method.options();
            if !options.has_extension(&http) {
                problems.push(problem(
                    value,
                    "has no google.api.http annotation (every unary and server-streaming method needs one)".into(),
                ));
                continue;
            }
            let rule = options.get_extension(&http);
            let Value::Message(rule) = rule.as_ref() else {
                continue;
            };
            let mut rules = vec![rule.clone()];
            if let Some(extra) = rule.get_field_by_name("additional_bindings")
                && let Some(list) = extra.as_list()
            {
                rules.extend(list.iter().filter_map(|v| v.as_message().cloned()));
            }
            for rule in &rules {
                match binding(rule, &method) {
                    Ok(b) => bindings.push(b),
                    Err(rule) => problems.push(problem(value.clone(), rule)),
                }
            }
        }
        if problems.is_empty() && bindings.is_empty() {
            problems.push(problem(
                grpc.service.clone(),
                "has no method that can be transcoded".into(),
            ));
        }
        if problems.is_empty() {
            Ok(Self { pool, bindings })
        } else {
            Err(problems)
        }
    }
}

/// Decodes the base64 descriptor set.
fn decode(text: &str) -> Result<DescriptorPool, String> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.len() / 4 * 3 > MAX_DESCRIPTOR_SET {
        return Err(format!("must decode to at most {MAX_DESCRIPTOR_SET} bytes"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| format!("must be base64 (standard alphabet): {e}"))?;
    DescriptorPool::decode(bytes.as_slice())
        .map_err(|e| format!("must be a serialized FileDescriptorSet with its imports: {e}"))
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(24) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One `HttpRule` of `method` as a binding.
fn binding(
    rule: &prost_reflect::DynamicMessage,
    method: &MethodDescriptor,
) -> Result<Binding, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            pattern = Some((verb.to_ascii_uppercase(), text(verb)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let field = |name: &str| {
            custom
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let kind = field("kind");
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "custom method kind {kind:?} must be an uppercase token"
            ));
        }
        pattern = Some((kind, field("path")));
    }
    let Some((http_method, path)) = pattern else {
        return Err("its google.api.http rule names no HTTP method and path".into());
    };
    if !text("response_body").is_empty() {
        return Err("uses response_body, which is not supported".into());
    }
    let template =
        Template::parse(&path).map_err(|rule| format!("path template {path:?} {rule}"))?;
    let input = method.input();
    let mut fields = Vec::with_capacity(template.variables.len());
    for variable in &template.variables {
        let chain = field_path(&input, &variable.path)
            .map_err(|rule| format!("path template {path:?}: {rule}"))?;
        if chain.last().is_some_and(FieldDescriptor::is_list) {
            return Err(format!(
                "path template {path:?}: {:?} is repeated, which a path value cannot set",
                variable.path.join(".")
            ));
        }
        fields.push(chain);
    }
    let body = match text("body").as_str() {
        "" => BodyTarget::None,
        "*" => BodyTarget::Message,
        name => match input.get_field_by_name(name) {
            Some(field) => BodyTarget::Field(field),
            None => {
                return Err(format!(
                    "body {name:?} is not a field of {}",
                    input.full_name()
                ));
            }
        },
    };
    if http_method == "GET" && body != BodyTarget::None {
        return Err("a GET binding cannot take a body".into());
    }
    Ok(Binding {
        http_method,
        template,
        fields,
        body,
        method: method.clone(),
    })
}

/// Resolves `a.b.c` in `message`: singular message fields, then a singular
/// scalar (string, bytes, number, bool or enum) that a path or query value
/// can set.
pub fn field_path(
    message: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut chain = Vec::with_capacity(path.len());
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let Some(field) = current.get_field_by_name(name) else {
            return Err(format!(
                "{:?} is not a field of {}",
                path[..=i].join("."),
                current.full_name()
            ));
        };
        let last = i + 1 == path.len();
        match field.kind() {
            Kind::Message(inner) if !last && !field.is_list() && !field.is_map() => {
                current = inner;
            }
            _ if !last => {
                return Err(format!(
                    "{:?} is not a singular message field",
                    path[..=i].join(".")
                ));
            }
            Kind::Message(_) => {
                return Err(format!(
                    "{:?} is a message or map, which a path value cannot set",
                    path.join(".")
                ));
            }
            _ => {}
        }
        chain.push(field);
    }
    Ok(chain)
}

#[cfg(test)]
mod tests;
