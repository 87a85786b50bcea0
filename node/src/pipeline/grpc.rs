//! `grpc`: gRPC-JSON transcoding (issue 8, point 4). On a route with a
//! `grpc` block this terminal stage answers the request itself, after
//! `auth`, `limit`, `transform` (and instead of `aggregate`, which
//! validation excludes): it turns the REST call into a call of a gRPC
//! method on the route's h2 upstream, and the reply back into JSON. See
//! docs/grpc.md.
//!
//! - **Matching.** The route's compiled service (decoded and checked once,
//!   when the snapshot is compiled) holds one [`Binding`] per
//!   `google.api.http` rule; the first whose HTTP method and path template
//!   match the request's method and upstream path (after `rewrite`) is
//!   called. No binding: 404 `no_route`.
//! - **Request.** The message is built from the JSON body (`body: "*"`:
//!   the whole message; `body: "field"`: that field), the template's
//!   variables and the query parameters that name fields of the request
//!   message (others are ignored), converted to the field's type. The body
//!   is read within the route's limit (413), parsed as JSON (400
//!   `invalid_json`) and checked against the message (400
//!   `invalid_message`: unknown fields, wrong types, out-of-range numbers).
//!   The call is one gRPC message (5-byte prefix, uncompressed) on
//!   `POST /pkg.Service/Method` with `content-type: application/grpc` and
//!   `te: trailers`, and the headers the proxy would send (metadata).
//! - **Reply.** Every message frame is bounded by the same limit (502
//!   `upstream_grpc_message_too_large`). `grpc-status` comes from the
//!   trailers, or from the head of a trailers-only answer; a status other
//!   than `OK` is answered with the gateway's JSON error, code
//!   `grpc_<status name>`, the status mapped to HTTP by
//!   [`grpc_http_status`](crate::error::grpc_http_status), and a
//!   `grpc-status` header. A unary method answers `200 application/json`.
//! - **Server streaming** is answered as messages arrive, never buffered:
//!   `application/x-ndjson` (one object per line) or one JSON array
//!   (`streaming: array`). The first message (or the end) is awaited before
//!   the head is sent, so a stream that fails at once gets its mapped
//!   status; a failure after that ends the body with an error object
//!   `{"error":{"code","message","request_id"}}` as its last line (or
//!   element).
//! - **Timeouts**: the upstream's `timeouts.request` until the response
//!   head, then `timeouts.idle` between frames.

use std::sync::Arc;

use std::time::Duration;

use crate::body::FromUpstream;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use http_body::Frame;
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind as FieldKind, MessageDescriptor};
use raft::model;
use raft::model::grpc::{Binding, BodyTarget, Service, Streaming, Variable, field_path};
use serde_json::{Map, Value};

use super::route::Route;
use super::version::form_urlencoded_pairs;
use super::{Flow, Request, RequestCx, Stage, ready, wait};
use crate::body::{Body, BodyError, BufferedPrefix, UpstreamBody};
use crate::error::{Error, Kind};
use crate::proxy::{self, pool::InFlight};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Longest `grpc-message` passed on to the client, in bytes.
const MAX_STATUS_MESSAGE: usize = 1024;

// === impl RouteGrpc ===

/// One binding, ready for the request path.
struct Call {
    method: Method,
    binding: Binding,
    path: PathAndQuery,
}

/// A route's compiled `grpc` block.
pub struct RouteGrpc {
    calls: Vec<Call>,
    streaming: Streaming,
}

/// The binding a request matched, with the raw text of its variables.
pub struct Matched<'r, 'p> {
    call: &'r Call,
    values: Vec<(&'r Variable, &'p str)>,
}

impl Matched<'_, '_> {
    /// The gRPC method called.
    pub fn method(&self) -> &prost_reflect::MethodDescriptor {
        &self.call.binding.method
    }
}

impl RouteGrpc {
    /// Compiles a validated block: decodes the descriptor set once; `None`
    /// when it does not compile (validation rules that out).
    pub fn compile(grpc: &model::Grpc) -> Option<Self> {
        let service = Service::compile(grpc).ok()?;
        let calls = service
            .bindings
            .into_iter()
            .filter_map(|binding| {
                Some(Call {
                    method: Method::from_bytes(binding.http_method.as_bytes()).ok()?,
                    path: PathAndQuery::try_from(binding.grpc_path()).ok()?,
                    binding,
                })
            })
            .collect();
        Some(Self {
            calls,
            streaming: grpc.streaming,
        })
    }

    /// The first binding matching `method` and `path` (without query).
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> Option<Matched<'_, 'p>> {
        self.calls
            .iter()
            .filter(|call| call.method == *method)
            .find_map(|call| {
                let values = call.binding.template.matches(path)?;
                Some(Matched { call, values })
            })
    }

    /// The request message of `matched`, from the body, the path's
    /// variables and the query string, as one framed gRPC message.
    pub fn request(
        &self,
        matched: &Matched<'_, '_>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, Error> {
        let message = request_message(matched, query, body)?;
        Ok(frame(&message))
    }

    /// The JSON of one reply message of `matched` (the payload of a frame).
    pub fn reply(&self, matched: &Matched<'_, '_>, payload: Bytes) -> Result<Vec<u8>, Error> {
        reply_json(&matched.call.binding.method.output(), payload)
    }
}

/// Builds the request message; every failure is the client's (400).
fn request_message(
    matched: &Matched<'_, '_>,
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Error> {
    let binding = &matched.call.binding;
    let input = binding.method.input();
    let body = body.trim_ascii();
    // The common case: the body is the whole message, nothing else binds.
    if binding.body == BodyTarget::Message
        && matched.values.is_empty()
        && query.is_none_or(str::is_empty)
        && !body.is_empty()
    {
        let mut de = serde_json::Deserializer::from_slice(body);
        let message = DynamicMessage::deserialize(input, &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(json_error)?;
        return Ok(message);
    }
    let mut root = match &binding.body {
        BodyTarget::None => Map::new(),
        BodyTarget::Message if body.is_empty() => Map::new(),
        BodyTarget::Message => match serde_json::from_slice(body).map_err(json_error)? {
            Value::Object(map) => map,
            _ => {
                return Err(Error::bad_request(
                    "invalid_message",
                    format!("the body must be a JSON object ({})", input.full_name()),
                ));
            }
        },
        BodyTarget::Field(_) if body.is_empty() => Map::new(),
        BodyTarget::Field(field) => {
            let value: Value = serde_json::from_slice(body).map_err(json_error)?;
            let mut map = Map::new();
            map.insert(field.name().to_owned(), value);
            map
        }
    };
    for ((_, raw), fields) in matched.values.iter().zip(&binding.fields) {
        let text = percent_decode_str(raw).decode_utf8().map_err(|_| {
            Error::bad_request(
                "invalid_path",
                "a path value is not UTF-8 once percent-decoded",
            )
        })?;
        set(&mut root, fields, &text, false)?;
    }
    if let Some(query) = query
        && binding.body != BodyTarget::Message
    {
        let bound_body = match &binding.body {
            BodyTarget::Field(field) => Some(field.name()),
            _ => None,
        };
        for (key, value) in form_urlencoded_pairs(query).take(MAX_QUERY_PAIRS) {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            if bound_body == Some(path[0].as_str()) {
                continue;
            }
            // Parameters that name no field (an API key, a cache buster)
            // are not the method's business.
            let Ok(fields) = field_path(&input, &path) else {
                continue;
            };
            set(&mut root, &fields, &value, true)?;
        }
    }
    DynamicMessage::deserialize(input, Value::Object(root)).map_err(|error| {
        Error::bad_request(
            "invalid_message",
            format!("the request does not fit the message: {error}"),
        )
    })
}

/// Query pairs examined at most (like the router's bound on client input).
const MAX_QUERY_PAIRS: usize = 64;

fn json_error(error: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => Error::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {error}"),
        ),
        Category::Data => Error::bad_request(
            "invalid_message",
            format!("the request does not fit the message: {error}"),
        ),
    }
}

/// Sets the field at the end of `fields` (a chain of singular messages) in
/// the JSON object, from the text of a path or query value.
fn set(
    root: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    text: &str,
    from_query: bool,
) -> Result<(), Error> {
    let Some((last, parents)) = fields.split_last() else {
        return Ok(());
    };
    let mut object = root;
    for field in parents {
        let entry = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        object = match entry {
            Value::Object(map) => map,
            _ => {
                return Err(Error::bad_request(
                    "invalid_message",
                    format!("field {:?} must be an object", field.name()),
                ));
            }
        };
    }
    let value = scalar(last, text)?;
    if last.is_list() && from_query {
        match object
            .entry(last.name().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        }
    } else {
        object.insert(last.name().to_owned(), value);
    }
    Ok(())
}

/// The JSON value of a path or query text for `field`'s type.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, Error> {
    let invalid = |expected: &str| {
        Error::bad_request(
            "invalid_message",
            format!(
                "field {:?} must be {expected}, not {:?}",
                field.name(),
                truncate(text, 64)
            ),
        )
    };
    Ok(match field.kind() {
        FieldKind::String | FieldKind::Bytes => Value::String(text.to_owned()),
        FieldKind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(invalid("true or false")),
        },
        FieldKind::Int32
        | FieldKind::Sint32
        | FieldKind::Sfixed32
        | FieldKind::Int64
        | FieldKind::Sint64
        | FieldKind::Sfixed64 => {
            Value::from(text.parse::<i64>().map_err(|_| invalid("an integer"))?)
        }
        FieldKind::Uint32 | FieldKind::Fixed32 | FieldKind::Uint64 | FieldKind::Fixed64 => {
            Value::from(
                text.parse::<u64>()
                    .map_err(|_| invalid("an unsigned integer"))?,
            )
        }
        FieldKind::Float | FieldKind::Double => match text.parse::<f64>() {
            Ok(number) if number.is_finite() => Value::from(number),
            // "NaN", "Infinity", "-Infinity" as proto JSON spells them.
            _ if matches!(text, "NaN" | "Infinity" | "-Infinity") => Value::String(text.into()),
            _ => return Err(invalid("a number")),
        },
        FieldKind::Enum(_) => match text.parse::<i64>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text.to_owned()),
        },
        FieldKind::Message(_) => return Err(invalid("set in the body (it is a message)")),
    })
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// One uncompressed gRPC message: flag, big-endian length, payload.
fn frame(message: &DynamicMessage) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // Encoding into a buffer of the exact size cannot fail.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// The JSON of one reply payload.
fn reply_json(output: &MessageDescriptor, payload: Bytes) -> Result<Vec<u8>, Error> {
    let message =
        DynamicMessage::decode(output.clone(), payload).map_err(|error| Kind::UpstreamBody {
            code: "upstream_invalid_grpc",
            message: format!(
                "the upstream's reply is not a valid {}: {error}",
                output.full_name()
            )
            .into(),
        })?;
    serde_json::to_vec(&message).map_err(|_| Error::new(Kind::Internal))
}

// === impl Decoder ===

/// Splits a gRPC response body into messages, each within `limit` bytes,
/// checked as soon as its length prefix arrives (so no more than about
/// `limit` bytes are ever held).
pub struct Decoder {
    buf: BytesMut,
    limit: u64,
}

impl Decoder {
    /// A decoder of messages of at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Appends received data.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether a partial message is left (at the end of the body, an error).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Error> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if compressed != 0 {
            return Err(Kind::UpstreamBody {
                code: "upstream_invalid_grpc",
                message: "the upstream sent a compressed message, which was not offered".into(),
            }
            .into());
        }
        if u64::from(len) > self.limit {
            return Err(Kind::UpstreamBody {
                code: "upstream_grpc_message_too_large",
                message: format!(
                    "a reply message of {len} bytes exceeds the limit of {} bytes",
                    self.limit
                )
                .into(),
            }
            .into());
        }
        let len = len as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

// === the status ===

/// The gRPC status in `headers` (trailers, or a trailers-only head).
fn status(headers: &HeaderMap) -> Option<Result<(), Error>> {
    let code: u32 = headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if code == 0 {
        return Some(Ok(()));
    }
    let message = headers
        .get(&GRPC_MESSAGE)
        .map(|v| {
            let text = percent_decode_str(v.to_str().unwrap_or_default()).decode_utf8_lossy();
            truncate(&text, MAX_STATUS_MESSAGE).to_owned()
        })
        .unwrap_or_default();
    Some(Err(Kind::GrpcStatus { code, message }.into()))
}

fn missing_status() -> Error {
    Kind::UpstreamBody {
        code: "upstream_invalid_grpc",
        message: "the upstream's gRPC answer ended without a grpc-status".into(),
    }
    .into()
}

// === the exchange ===

/// What reading the reply produced next.
enum Step {
    /// One message, as JSON.
    Message(Vec<u8>),
    /// The end: `OK`, or the error that ended the call.
    End(Result<(), Error>),
}

/// Reads a reply body: frames to messages, trailers to the status.
struct Reply {
    body: FromUpstream,
    decoder: Decoder,
    output: MessageDescriptor,
    idle: Duration,
    status: Option<Result<(), Error>>,
    ended: bool,
}

impl Reply {
    async fn step(&mut self) -> Step {
        loop {
            match self.decoder.next_message() {
                Ok(Some(payload)) => {
                    return match reply_json(&self.output, payload) {
                        Ok(json) => Step::Message(json),
                        Err(error) => Step::End(Err(error)),
                    };
                }
                Ok(None) => {}
                Err(error) => return Step::End(Err(error)),
            }
            if self.ended {
                if !self.decoder.is_empty() {
                    return Step::End(Err(Kind::UpstreamBody {
                        code: "upstream_invalid_grpc",
                        message: "the upstream's gRPC answer ended inside a message".into(),
                    }
                    .into()));
                }
                return Step::End(self.status.take().unwrap_or_else(|| Err(missing_status())));
            }
            match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_elapsed) => return Step::End(Err(Kind::UpstreamTimeout.into())),
                Ok(None) => self.ended = true,
                Ok(Some(Err(error))) => {
                    return Step::End(Err(Error::with_source(Kind::UpstreamProtocol, error)));
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.decoder.push(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.status = status(&trailers);
                        }
                        self.ended = true;
                    }
                },
            }
        }
    }
}

/// A server stream on its way to the client.
struct Streamer {
    reply: Reply,
    format: Streaming,
    request_id: String,
    done: bool,
    in_flight: Option<InFlight>,
}

impl Streamer {
    /// The bytes of one message after the first.
    fn element(&self, json: Vec<u8>) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 1);
        if self.format == Streaming::Array {
            out.push(b',');
        }
        out.extend_from_slice(&json);
        if self.format == Streaming::Ndjson {
            out.push(b'\n');
        }
        Bytes::from(out)
    }

    /// The bytes that close the body.
    fn tail(&mut self, end: Result<(), Error>) -> Option<Bytes> {
        self.done = true;
        if let Some(in_flight) = self.in_flight.take() {
            match &end {
                Ok(()) => in_flight.release(),
                Err(_) => drop(in_flight),
            }
        }
        let error = end.err().map(|error| {
            tracing::debug!(%error, "gRPC stream ended with an error");
            error.to_json(&self.request_id)
        });
        match (self.format, error) {
            (Streaming::Ndjson, None) => None,
            (Streaming::Ndjson, Some(error)) => Some(Bytes::from(error + "\n")),
            (Streaming::Array, None) => Some(Bytes::from_static(b"]")),
            (Streaming::Array, Some(error)) => Some(Bytes::from(format!(",{error}]"))),
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        match self.reply.step().await {
            Step::Message(json) => Some(self.element(json)),
            Step::End(end) => self.tail(end),
        }
    }

    /// The body, starting with the first message already read.
    fn into_body(self, first: Bytes) -> Body {
        let rest = futures_util::stream::unfold(self, |mut streamer| async move {
            let chunk = streamer.next().await?;
            Some((Ok::<_, BodyError>(Frame::data(chunk)), streamer))
        });
        let first = futures_util::stream::iter([Ok::<_, BodyError>(Frame::data(first))]);
        let stream = futures_util::StreamExt::chain(first, rest);
        Body::produced(http_body_util::StreamBody::new(stream))
    }
}

// === impl GrpcStage ===

/// The `grpc` stage.
pub struct GrpcStage {
    default_limit: u64,
}

impl GrpcStage {
    /// The stage, with the node's default body limit.
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            default_limit: config.limits.max_body_bytes,
        }
    }

    /// Calls the gRPC method the request maps to and answers with its JSON.
    async fn transcode(
        &self,
        route: Arc<Route>,
        grpc: Arc<RouteGrpc>,
        cx: &mut RequestCx,
        req: &mut Request,
    ) -> Result<Flow, Error> {
        let upstream_path = cx.upstream_path().to_owned();
        let Some(matched) = grpc.find(req.method(), &upstream_path) else {
            return Err(Kind::NoRoute.into());
        };
        let pool = route.upstream.clone();
        let timeouts = pool.definition().timeouts;
        let limit = route.max_body.unwrap_or(self.default_limit);

        let body = if matched.call.binding.body == BodyTarget::None {
            Bytes::new()
        } else {
            if content_length(req.headers()).is_some_and(|len| len > limit) {
                return Err(Kind::PayloadTooLarge { limit }.into());
            }
            let prefix = req.extensions_mut().remove::<BufferedPrefix>();
            super::transform::read_request(req, prefix, limit, timeouts.idle).await?
        };
        let message = grpc.request(&matched, req.uri().query(), &body)?;

        let mut headers = proxy::upstream_headers(cx, req.headers(), false);
        for name in proxy::fetch::NOT_FORWARDED {
            headers.remove(name);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));

        let set = pool.targets();
        let Some(index) = pool.pick(&set, None, &[]) else {
            pool.metrics.error("no_healthy_upstream");
            return Err(Kind::NoHealthyUpstream.into());
        };
        let target = &set[index];
        cx.target = Some(super::ServedBy::Target(target.peer));
        if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        let mut request = http::Request::new(UpstreamBody::Full(Some(message)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from(matched.call.path.clone());
        *request.headers_mut() = headers;

        let (response, in_flight, latency) = match pool
            .exchange(&set, index, request, None, timeouts.request)
            .await
        {
            Ok(answer) => answer,
            Err(failed) => {
                let error = match failed {
                    proxy::pool::Failed::Send(error) => Error::with_source(error.kind(), error),
                    proxy::pool::Failed::Timeout => Kind::UpstreamTimeout.into(),
                };
                pool.metrics.error(error.code());
                pool.record(&set, index, false);
                return Err(error);
            }
        };
        cx.upstream_latency = Some(latency);
        let (parts, body) = response.into_parts();
        pool.record(&set, index, parts.status.is_success());
        if parts.status != StatusCode::OK {
            pool.metrics.error("status_5xx");
            return Err(Kind::UpstreamBody {
                code: "upstream_invalid_grpc",
                message: format!(
                    "the gRPC upstream answered with HTTP status {}",
                    parts.status.as_u16()
                )
                .into(),
            }
            .into());
        }
        let trailers_only = status(&parts.headers);
        let is_grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if trailers_only.is_none() && !is_grpc {
            return Err(Kind::UpstreamBody {
                code: "upstream_invalid_grpc",
                message: "the upstream's answer is not gRPC (content-type)".into(),
            }
            .into());
        }
        let mut reply = Reply {
            body,
            decoder: Decoder::new(limit),
            output: matched.method().output(),
            idle: timeouts.idle,
            status: trailers_only,
            ended: false,
        };
        if reply.status.is_some() {
            // Trailers-only: the head is the whole answer.
            reply.ended = true;
        }

        if !matched.method().is_server_streaming() {
            let mut answer = None;
            loop {
                match reply.step().await {
                    Step::Message(json) if answer.is_none() => answer = Some(json),
                    Step::Message(_) => {
                        return Err(Kind::UpstreamBody {
                            code: "upstream_invalid_grpc",
                            message: "the upstream sent more than one reply to a unary call".into(),
                        }
                        .into());
                    }
                    Step::End(end) => {
                        end?;
                        break;
                    }
                }
            }
            let Some(json) = answer else {
                return Err(Kind::UpstreamBody {
                    code: "upstream_invalid_grpc",
                    message: "the upstream ended a unary call without a reply".into(),
                }
                .into());
            };
            in_flight.release();
            return Ok(Flow::Respond(Box::new(json_response(
                Body::full(json),
                "application/json",
            ))));
        }

        let format = grpc.streaming;
        let content_type = match format {
            Streaming::Ndjson => "application/x-ndjson",
            Streaming::Array => "application/json",
        };
        let mut streamer = Streamer {
            reply,
            format,
            request_id: cx.request_id.to_str().unwrap_or_default().to_owned(),
            done: false,
            in_flight: Some(in_flight),
        };
        let body = match streamer.reply.step().await {
            Step::Message(json) => {
                let mut first = Vec::with_capacity(json.len() + 1);
                if format == Streaming::Array {
                    first.push(b'[');
                }
                first.extend_from_slice(&json);
                if format == Streaming::Ndjson {
                    first.push(b'\n');
                }
                streamer.into_body(Bytes::from(first))
            }
            Step::End(Err(error)) => return Err(error),
            Step::End(Ok(())) => {
                if let Some(in_flight) = streamer.in_flight.take() {
                    in_flight.release();
                }
                Body::full(match format {
                    Streaming::Ndjson => Bytes::new(),
                    Streaming::Array => Bytes::from_static(b"[]"),
                })
            }
        };
        Ok(Flow::Respond(Box::new(json_response(body, content_type))))
    }
}

impl Stage for GrpcStage {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn on_request<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        req: &'a mut Request,
    ) -> super::Step<'a, Flow> {
        match cx.route_with(|route| route.grpc.as_ref()) {
            Some((route, grpc)) => wait(self.transcode(route, grpc, cx, req)),
            None => ready(Ok(Flow::Continue)),
        }
    }

    fn acts_on(&self, route: &super::route::Route, _: &crate::snapshot::Snapshot) -> bool {
        route.grpc.is_some()
    }
}

fn json_response(body: Body, content_type: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
