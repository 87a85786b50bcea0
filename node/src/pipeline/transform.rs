//! `transform`: a route's header and body transformations (issue 8), after
//! `auth` so templates can use the principal. The request side runs in
//! `on_request`, the response side in `on_response` (the first response
//! hook, before CORS and security headers). See docs/transform.md.
//!
//! - Headers: `remove`, `rename`, `set`, `add`, in that order, on the
//!   request and on the response (the upstream's, or the proxy's error;
//!   not an answer of an earlier stage, whose hooks alone run). `set`/`add` values are templates
//!   ([`template`]); an operation whose template lacks a value is skipped,
//!   a rendered value that is not a valid header value is dropped and
//!   counted in `meridian_transform_headers_dropped_total{route,direction}`.
//! - Bodies: only on routes that configure them and only for a matching
//!   `Content-Type` (JSON: `application/json`, `*+json`; XML:
//!   `application/xml`, `text/xml`, `*+xml`) without a `Content-Encoding`;
//!   anything else streams through untouched. A request body is buffered
//!   within the route's body limit (413), a response body within
//!   `response.max_body` (502 `upstream_body_too_large`). The body is
//!   parsed (JSON with serde_json's recursion limit, XML per [`xml`]),
//!   filtered and reshaped ([`json`]), then written; `Content-Type` (when
//!   the format changes) and `Content-Length` follow, and `ETag`,
//!   `Content-MD5` and `Accept-Ranges` of a transformed response are
//!   removed. A body that cannot be transformed is a 400 (request) or 502
//!   (response) JSON error; upgrades (WebSocket), `HEAD`, 1xx, 204, 206 and
//!   304 responses are never buffered. Trailers of a transformed body are
//!   dropped.

pub mod json;
pub mod template;
pub mod xml;

use std::sync::Arc;

use crate::proxy::content_length;
use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use metrics::Counter;
use raft::model::transform::{BodyTransform, Convert, HeaderOps, Pointer, Transform};

use self::template::{Compiled, Rendered, Vars};
use super::route::Route;
use super::{Flow, Request, RequestCx, Response, Stage, Step, ready, wait};
use crate::body::{Body, BodyError as StreamError, BufferedPrefix};
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;

// === impl BodyError ===

/// Why a body could not be transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON.
    InvalidJson(String),
    /// Not well-formed XML, or an undeclared entity.
    InvalidXml(String),
    /// The XML has a document type declaration (DTD).
    XmlDtd,
    /// Nested deeper than the limit.
    TooDeep(usize),
    /// JSON that XML cannot express (a name, an attribute's value).
    NotConvertible(String),
}

impl BodyError {
    fn from_json(error: &serde_json::Error) -> Self {
        if error.to_string().starts_with("recursion limit exceeded") {
            BodyError::TooDeep(128)
        } else {
            BodyError::InvalidJson(error.to_string())
        }
    }

    fn message(&self) -> String {
        match self {
            BodyError::InvalidJson(why) => format!("the body is not valid JSON: {why}"),
            BodyError::InvalidXml(why) => format!("the body is not well-formed XML: {why}"),
            BodyError::XmlDtd => {
                "XML document type declarations (DTD, entities) are not accepted".to_owned()
            }
            BodyError::TooDeep(limit) => format!("the body nests deeper than {limit} levels"),
            BodyError::NotConvertible(why) => format!("the body cannot be written as XML: {why}"),
        }
    }

    /// The client's error for a request body.
    pub fn for_request(&self) -> Error {
        let code = match self {
            BodyError::InvalidJson(_) => "invalid_json",
            BodyError::InvalidXml(_) => "invalid_xml",
            BodyError::XmlDtd => "xml_dtd_forbidden",
            BodyError::TooDeep(_) => "body_too_deep",
            BodyError::NotConvertible(_) => "body_not_convertible",
        };
        Error::bad_request(code, self.message())
    }

    /// The client's error for an upstream's response body.
    pub fn for_response(&self) -> Error {
        let code = match self {
            BodyError::InvalidJson(_) => "upstream_invalid_json",
            BodyError::InvalidXml(_) => "upstream_invalid_xml",
            BodyError::XmlDtd => "upstream_xml_dtd_forbidden",
            BodyError::TooDeep(_) => "upstream_body_too_deep",
            BodyError::NotConvertible(_) => "upstream_body_not_convertible",
        };
        Kind::UpstreamBody {
            code,
            message: Cow::Owned(format!("upstream response: {}", self.message())),
        }
        .into()
    }
}

// === impl BodyPlan ===

/// A body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// XML.
    Xml,
}

impl Format {
    /// Whether a `Content-Type` value is of this format.
    fn matches(self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match self {
            Format::Json => essence == "application/json" || essence.ends_with("+json"),
            Format::Xml => {
                essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
            }
        }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Format::Json => HeaderValue::from_static("application/json"),
            Format::Xml => HeaderValue::from_static("application/xml; charset=utf-8"),
        }
    }
}

/// A compiled body transformation.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    input: Format,
    output: Format,
    allow: json::Trie,
    deny: json::Trie,
    moves: Vec<(Pointer, Pointer)>,
    xml_root: String,
    max_depth: usize,
}

impl BodyPlan {
    /// Compiles a validated body transformation.
    pub fn new(body: &BodyTransform) -> Self {
        let pointers = |list: &[String]| -> Vec<Pointer> {
            list.iter().filter_map(|p| Pointer::parse(p).ok()).collect()
        };
        let (input, output) = match body.convert {
            Some(Convert::XmlToJson) => (Format::Xml, Format::Json),
            Some(Convert::JsonToXml) => (Format::Json, Format::Xml),
            None => (Format::Json, Format::Json),
        };
        Self {
            input,
            output,
            allow: json::Trie::new(&pointers(&body.filter.allow)),
            deny: json::Trie::new(&pointers(&body.filter.deny)),
            moves: body
                .moves
                .iter()
                .filter_map(|m| Some((Pointer::parse(&m.from).ok()?, Pointer::parse(&m.to).ok()?)))
                .collect(),
            xml_root: body.xml_root.clone().unwrap_or_else(|| "root".to_owned()),
            max_depth: body.max_depth() as usize,
        }
    }

    /// Whether a message with these headers is transformed.
    fn applies(&self, headers: &HeaderMap) -> bool {
        let identity = headers
            .get(header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        identity
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| self.input.matches(ct))
    }

    /// Transforms a whole body.
    pub fn apply(&self, input: &[u8]) -> Result<Vec<u8>, BodyError> {
        let mut value = match self.input {
            Format::Json => {
                let value: serde_json::Value =
                    serde_json::from_slice(input).map_err(|e| BodyError::from_json(&e))?;
                if json::depth(&value) > self.max_depth {
                    return Err(BodyError::TooDeep(self.max_depth));
                }
                value
            }
            Format::Xml => xml::to_json(input, self.max_depth)?,
        };
        json::allow(&mut value, &self.allow);
        json::deny(&mut value, &self.deny);
        for (from, to) in &self.moves {
            json::move_value(&mut value, from, to);
        }
        match self.output {
            Format::Json => {
                serde_json::to_vec(&value).map_err(|e| BodyError::InvalidJson(e.to_string()))
            }
            Format::Xml => xml::from_json(&value, &self.xml_root).map(String::into_bytes),
        }
    }

    /// Writes the headers of a transformed body of `len` bytes.
    fn fix_headers(&self, headers: &mut HeaderMap, len: usize) {
        if self.input != self.output {
            headers.insert(header::CONTENT_TYPE, self.output.content_type());
        }
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

// === impl HeaderPlan ===

/// Compiled header operations.
#[derive(Debug, Clone, Default)]
pub struct HeaderPlan {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Compiled)>,
    add: Vec<(HeaderName, Compiled)>,
}

fn name(text: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(text.as_bytes()).ok()
}

impl HeaderPlan {
    /// Compiles validated operations.
    pub fn new(ops: &HeaderOps) -> Self {
        let templates = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .filter_map(|(n, v)| Some((name(n)?, Compiled::new(v)?)))
                .collect()
        };
        Self {
            remove: ops.remove.iter().filter_map(|n| name(n)).collect(),
            rename: ops
                .rename
                .iter()
                .filter_map(|(from, to)| Some((name(from)?, name(to)?)))
                .collect(),
            set: templates(&ops.set),
            add: templates(&ops.add),
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Applies the operations; returns how many rendered values were dropped.
    pub fn apply(&self, vars: &Vars<'_>, headers: &mut HeaderMap) -> u64 {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            if let header::Entry::Occupied(entry) = headers.entry(from) {
                let values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
                headers.remove(to);
                for value in values {
                    headers.append(to.clone(), value);
                }
            }
        }
        let mut dropped = 0;
        for (ops, append) in [(&self.set, false), (&self.add, true)] {
            for (name, template) in ops {
                match template.render(vars) {
                    Rendered::Value(value) if append => {
                        headers.append(name.clone(), value);
                    }
                    Rendered::Value(value) => {
                        headers.insert(name.clone(), value);
                    }
                    Rendered::Missing => {}
                    Rendered::Invalid => dropped += 1,
                }
            }
        }
        dropped
    }
}

// === impl RouteTransform ===

/// A route's compiled `transform` block.
pub struct RouteTransform {
    request_headers: HeaderPlan,
    request_body: Option<BodyPlan>,
    response_headers: HeaderPlan,
    response_body: Option<BodyPlan>,
    response_limit: u64,
    dropped_request: Counter,
    dropped_response: Counter,
}

impl RouteTransform {
    /// Compiles a validated block; `None` when it does nothing.
    pub fn compile(transform: &Transform, route: &str, metrics: &Metrics) -> Option<Self> {
        if transform.is_empty() {
            return None;
        }
        let dropped = |direction: &str| {
            metrics.counter(
                "meridian_transform_headers_dropped_total",
                &[
                    ("route", route.to_owned()),
                    ("direction", direction.to_owned()),
                ],
            )
        };
        Some(Self {
            request_headers: HeaderPlan::new(&transform.request.headers),
            request_body: transform.request.body.as_ref().map(BodyPlan::new),
            response_headers: HeaderPlan::new(&transform.response.headers),
            response_body: transform.response.body.as_ref().map(BodyPlan::new),
            response_limit: transform.response.max_body_bytes(),
            dropped_request: dropped("request"),
            dropped_response: dropped("response"),
        })
    }
}

// === body buffering ===

/// Reads the rest of a request body (after what an earlier stage already
/// read into `prefix`), within `limit` bytes.
pub(crate) async fn read_request(
    req: &mut Request,
    prefix: Option<BufferedPrefix>,
    limit: u64,
    idle: Duration,
) -> Result<Bytes, Error> {
    let mut data = BytesMut::new();
    let too_large = || Error::new(Kind::PayloadTooLarge { limit });
    if let Some(prefix) = prefix {
        for chunk in prefix.data {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            data.extend_from_slice(&chunk);
        }
        if prefix.trailers.is_some() {
            return Ok(data.freeze());
        }
    }
    while !req.body().is_end_stream() {
        let Some(frame) = crate::body::next_request_frame(req.body_mut(), idle).await? else {
            break;
        };
        match frame.into_data() {
            Ok(chunk) => {
                if (data.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                data.extend_from_slice(&chunk);
            }
            // Trailers end the body; they are not forwarded.
            Err(_trailers) => break,
        }
    }
    Ok(data.freeze())
}

/// Reads an upstream's response body within `limit` bytes.
async fn read_response(body: &mut Body, limit: u64) -> Result<Bytes, Error> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(StreamError::Idle(_)) => return Err(Kind::UpstreamTimeout.into()),
            Err(error) => return Err(Error::with_source(Kind::UpstreamProtocol, error)),
        };
        if let Ok(chunk) = frame.into_data() {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_large_upstream(limit));
            }
            data.extend_from_slice(&chunk);
        }
    }
    Ok(data.freeze())
}

fn too_large_upstream(limit: u64) -> Error {
    Kind::UpstreamBody {
        code: "upstream_body_too_large",
        message: format!(
            "the upstream's response body exceeds the transform limit of {limit} bytes"
        )
        .into(),
    }
    .into()
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

// === impl TransformStage ===

/// The `transform` stage.
pub struct TransformStage {
    default_limit: u64,
}

impl TransformStage {
    /// The stage; `config` gives the node's default body limit.
    pub fn new(config: &Config) -> Self {
        Self {
            default_limit: config.limits.max_body_bytes,
        }
    }

    /// Applies the route's request header and body transforms.
    async fn rewrite_request(
        &self,
        route: Arc<Route>,
        transform: Arc<RouteTransform>,
        cx: &mut RequestCx,
        req: &mut Request,
    ) -> Result<Flow, Error> {
        if !transform.request_headers.is_empty() {
            let dropped = transform
                .request_headers
                .apply(&Vars::of(cx), req.headers_mut());
            transform.dropped_request.increment(dropped);
        }
        let Some(plan) = &transform.request_body else {
            return Ok(Flow::Continue);
        };
        if is_upgrade(req.headers()) || !plan.applies(req.headers()) {
            return Ok(Flow::Continue);
        }
        let prefix = req.extensions_mut().remove::<BufferedPrefix>();
        if req.body().is_end_stream() && prefix.as_ref().is_none_or(BufferedPrefix::is_empty) {
            return Ok(Flow::Continue);
        }
        let limit = route.max_body.unwrap_or(self.default_limit);
        if content_length(req.headers()).is_some_and(|len| len > limit) {
            return Err(Kind::PayloadTooLarge { limit }.into());
        }
        let idle = route.upstream.definition().timeouts.idle;
        let input = read_request(req, prefix, limit, idle).await?;
        if input.is_empty() {
            // Nothing to transform: the (empty) body goes on as it came.
            return Ok(Flow::Continue);
        }
        let output = plan.apply(&input).map_err(|e| e.for_request())?;
        plan.fix_headers(req.headers_mut(), output.len());
        req.extensions_mut().insert(BufferedPrefix {
            data: vec![Bytes::from(output)],
            trailers: None,
            complete: true,
        });
        Ok(Flow::Continue)
    }

    /// Applies the route's response header and body transforms.
    async fn rewrite_response(
        &self,
        transform: Arc<RouteTransform>,
        cx: &mut RequestCx,
        rsp: &mut Response,
    ) -> Result<(), Error> {
        if !transform.response_headers.is_empty() {
            let dropped = transform
                .response_headers
                .apply(&Vars::of(cx), rsp.headers_mut());
            transform.dropped_response.increment(dropped);
        }
        let Some(plan) = &transform.response_body else {
            return Ok(());
        };
        let status = rsp.status();
        // Only an upstream's own answer, and only one that has a body.
        if cx.error.is_some()
            || cx.method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || !plan.applies(rsp.headers())
        {
            return Ok(());
        }
        let limit = transform.response_limit;
        if content_length(rsp.headers()).is_some_and(|len| len > limit) {
            return Err(too_large_upstream(limit));
        }
        let input = read_response(rsp.body_mut(), limit).await?;
        if input.is_empty() {
            // Nothing to transform: an empty body stays empty.
            *rsp.body_mut() = Body::empty();
            return Ok(());
        }
        let output = plan.apply(&input).map_err(|e| e.for_response())?;
        let headers = rsp.headers_mut();
        plan.fix_headers(headers, output.len());
        for stale in [header::ETAG, HeaderName::from_static("content-md5")] {
            headers.remove(stale);
        }
        headers.remove(header::ACCEPT_RANGES);
        *rsp.body_mut() = Body::full(output);
        Ok(())
    }
}

impl Stage for TransformStage {
    fn name(&self) -> &'static str {
        "transform"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        match cx.route_with(|route| route.transform.as_ref()) {
            Some((route, transform)) => wait(self.rewrite_request(route, transform, cx, req)),
            None => ready(Ok(Flow::Continue)),
        }
    }

    fn on_response<'a>(&'a self, cx: &'a mut RequestCx, rsp: &'a mut Response) -> Step<'a, ()> {
        match cx.route_with(|route| route.transform.as_ref()) {
            Some((_, transform)) => wait(self.rewrite_response(transform, cx, rsp)),
            None => ready(Ok(())),
        }
    }

    fn responds(&self) -> bool {
        true
    }

    fn acts_on(&self, route: &super::route::Route, _: &crate::snapshot::Snapshot) -> bool {
        route.transform.is_some()
    }
}

#[cfg(test)]
mod tests;
