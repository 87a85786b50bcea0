//! `graphql`: GraphQL to REST (issue 8, point 5). On a route with a
//! `graphql` block this terminal stage answers GraphQL queries itself,
//! after `auth`, `limit` and `transform` ran: each field that names an
//! upstream is one `GET` through that upstream's pool (see
//! [`crate::proxy::fetch`]), the others read the parent object's
//! JSON. See docs/graphql.md.
//!
//! - The schema (async-graphql's dynamic schema) is built once, when the
//!   snapshot compiles ([`RouteGraphql::compile`]), never on the request
//!   path.
//! - Requests: `GET ?query=…&variables=…&operationName=…`, or `POST` with
//!   `application/json` `{query, variables, operationName}`. The document is
//!   at most `max_query` bytes (413 on a body, 414 on a query string).
//! - Gateway refusals are the gateway's JSON error with 400: a malformed
//!   request (`graphql_invalid_request`), a syntax error
//!   (`graphql_syntax_error`), nesting over `max_depth`
//!   (`graphql_depth_limit`), a cost over `max_complexity`
//!   (`graphql_complexity_limit`), and any other validation failure such
//!   as an unknown field (`graphql_validation_failed`). Nesting is also
//!   bounded before the parser runs, so a deep document cannot exhaust the
//!   stack.
//! - Field failures follow GraphQL: `200`, `data` with `null` where the
//!   field failed (bubbling up to the nearest nullable field), and an
//!   `errors` entry whose `extensions` carry the `code` (and the `status`
//!   for an upstream failure). A request makes at most `max_calls` upstream
//!   calls; further fields fail with `graphql_call_limit`.
//! - Fields of one selection resolve concurrently (async-graphql joins
//!   them), so independent upstream calls overlap; a nested field waits
//!   for its parent's answer.

use crate::proxy::content_length;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use async_graphql::dynamic::{
    Field as GqlField, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Schema,
    TypeRef as GqlType,
};
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ErrorExtensions, ServerError, ServerResult, ValidationResult, Variables};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use metrics::Counter;
use raft::model;
use raft::model::aggregate::{PathPiece, PathTemplate};
use raft::model::graphql::{self as config, Graphql, QUERY_TYPE, TypeRef};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::route::Route;
use super::{Flow, Request, RequestCx, Stage, Step, ready, wait};
use crate::body::{Body, BufferedPrefix};
use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::proxy::fetch::{self, Fetch};
use crate::proxy::pool::Pool;

// === impl RouteGraphql ===

/// A route's compiled `graphql` block: the schema and the limits the
/// schema does not enforce itself.
pub struct RouteGraphql {
    schema: Schema,
    max_query: u64,
    max_calls: u32,
    max_nesting: usize,
    failures: Counter,
}

impl RouteGraphql {
    /// Builds the schema of a validated block; `None` when an upstream is
    /// missing or the schema does not build (validation rules both out).
    pub fn compile(
        gql: &Graphql,
        route: &model::Route,
        upstreams: &HashMap<String, Arc<Pool>>,
        metrics: &Metrics,
    ) -> Option<Self> {
        let max_body = gql.body_limit();
        let mut query = Object::new(QUERY_TYPE);
        for (name, field) in &gql.query {
            query = query.field(compile_field(name, field, upstreams, max_body)?);
        }
        let depth = gql.depth_limit() as usize;
        let mut builder = Schema::build(QUERY_TYPE, None, None)
            .register(query)
            .extension(Limits {
                max_depth: depth,
                max_complexity: gql.complexity_limit() as usize,
            })
            .limit_recursive_depth(nesting_limit(depth))
            .limit_directives(16);
        for (name, fields) in &gql.types {
            let mut object = Object::new(name.as_str());
            for (fname, field) in fields {
                object = object.field(compile_field(fname, field, upstreams, max_body)?);
            }
            builder = builder.register(object);
        }
        if !gql.introspection {
            builder = builder.disable_introspection();
        }
        let schema = match builder.finish() {
            Ok(schema) => schema,
            Err(error) => {
                tracing::error!(%error, route = %route.name, "graphql schema does not build");
                return None;
            }
        };
        Some(Self {
            schema,
            max_query: gql.query_limit(),
            max_calls: gql.calls_limit(),
            max_nesting: nesting_limit(depth),
            failures: metrics.counter(
                "meridian_graphql_field_failures_total",
                &[("route", route.name.clone())],
            ),
        })
    }

    /// Parses and runs one GraphQL request whose upstream calls carry
    /// `headers`: the response body, or the gateway's refusal.
    pub async fn run(&self, input: Input, headers: HeaderMap) -> Result<Vec<u8>, Error> {
        let state = Arc::new(CallState {
            headers,
            budget: AtomicU32::new(self.max_calls),
            refusal: OnceLock::new(),
        });
        let request = self.prepare(input, state.clone())?;
        let response = self.schema.execute(request).await;
        if let Some(code) = state.refusal.get() {
            let message = response
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(bad_request(code, message));
        }
        if !response.errors.is_empty() {
            self.failures.increment(response.errors.len() as u64);
        }
        serde_json::to_vec(&response).map_err(|_| Error::new(Kind::Internal))
    }

    /// Checks the document's nesting, parses it and attaches the
    /// per-request state: everything before validation.
    fn prepare(
        &self,
        input: Input,
        state: Arc<CallState>,
    ) -> Result<async_graphql::Request, Error> {
        if nesting(&input.query) > self.max_nesting {
            return Err(bad_request(
                "graphql_depth_limit",
                format!(
                    "the query nests brackets more than {} deep",
                    self.max_nesting
                ),
            ));
        }
        let mut request = async_graphql::Request::new(input.query)
            .variables(input.variables)
            .data(state);
        if let Some(name) = input.operation_name {
            request = request.operation_name(name);
        }
        if let Err(error) = request.parsed_query() {
            return Err(bad_request("graphql_syntax_error", error.message));
        }
        Ok(request)
    }

    /// Parses, validates and plans `input` as the request path does, each
    /// upstream field rendering its path, but calls nothing (those fields
    /// resolve to null): the per-request overhead the benchmark measures.
    pub async fn check(&self, input: Input) -> Result<(), Error> {
        let state = Arc::new(CallState {
            headers: HeaderMap::new(),
            budget: AtomicU32::new(0),
            refusal: OnceLock::new(),
        });
        let request = self.prepare(input, state.clone())?.data(DryRun);
        let response = self.schema.execute(request).await;
        match state.refusal.get() {
            Some(code) => Err(bad_request(code, format!("{:?}", response.errors))),
            None => Ok(()),
        }
    }
}

/// Most bracket nesting accepted before parsing, for a `max_depth`: a
/// selection level is one `{`, and arguments may add a few more.
fn nesting_limit(max_depth: usize) -> usize {
    max_depth * 2 + 16
}

fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Error {
    Kind::BadRequest {
        code,
        message: message.into(),
    }
    .into()
}

/// The deepest nesting of `{`, `[` and `(` in a GraphQL document, outside
/// strings and comments: checked before the parser, which recurses.
pub fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

// === the request ===

/// A GraphQL request as the client sent it.
#[derive(Debug, Default)]
pub struct Input {
    /// The document.
    pub query: String,
    /// The variables.
    pub variables: Variables,
    /// The operation to run, when the document has several.
    pub operation_name: Option<String>,
}

/// The `POST` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostBody {
    query: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    operation_name: Option<String>,
}

impl Input {
    /// Reads a `POST` body: `{query, variables, operationName}`.
    pub fn from_json(body: &[u8]) -> Result<Self, Error> {
        let body: PostBody = serde_json::from_slice(body).map_err(|error| {
            bad_request(
                "graphql_invalid_request",
                format!("the body is not a GraphQL request object: {error}"),
            )
        })?;
        Self::new(body.query, body.variables, body.operation_name)
    }

    /// Reads a `GET` query string: `query`, `variables` (JSON) and
    /// `operationName`.
    pub fn from_query_string(query: &str) -> Result<Self, Error> {
        let (mut document, mut variables, mut operation) = (None, None, None);
        for (key, value) in super::version::form_urlencoded_pairs(query) {
            match key.as_str() {
                "query" => document = Some(value),
                "operationName" => operation = Some(value),
                "variables" if !value.is_empty() => {
                    let parsed = serde_json::from_str(&value).map_err(|error| {
                        bad_request(
                            "graphql_invalid_request",
                            format!("variables is not JSON: {error}"),
                        )
                    })?;
                    variables = Some(parsed);
                }
                _ => {}
            }
        }
        Self::new(document, variables, operation)
    }

    fn new(
        query: Option<String>,
        variables: Option<Value>,
        operation_name: Option<String>,
    ) -> Result<Self, Error> {
        let Some(query) = query.filter(|q| !q.trim().is_empty()) else {
            return Err(bad_request(
                "graphql_invalid_request",
                "the request has no query",
            ));
        };
        let variables = match variables {
            None | Some(Value::Null) => Variables::default(),
            Some(value @ Value::Object(_)) => Variables::from_json(value),
            Some(_) => {
                return Err(bad_request(
                    "graphql_invalid_request",
                    "variables must be a JSON object",
                ));
            }
        };
        Ok(Self {
            query,
            variables,
            operation_name: operation_name.filter(|name| !name.is_empty()),
        })
    }
}

/// Per-request state the resolvers and the limits extension share.
struct CallState {
    /// Sent with every upstream call.
    headers: HeaderMap,
    /// Upstream calls left.
    budget: AtomicU32,
    /// Set when validation refused the query: the gateway error code.
    refusal: OnceLock<&'static str>,
}

impl CallState {
    fn take_call(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Marks a [`RouteGraphql::check`] run: fields resolve to null without
/// calling anything once their paths are rendered.
struct DryRun;

// === the limits extension ===

/// Enforces `max_depth` and `max_complexity` after async-graphql's
/// validation, and records which rule refused a query so the stage can
/// answer with the gateway's error.
struct Limits {
    max_depth: usize,
    max_complexity: usize,
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Limits {
            max_depth: self.max_depth,
            max_complexity: self.max_complexity,
        })
    }
}

fn refuse(ctx: &ExtensionContext<'_>, code: &'static str) {
    if let Some(state) = ctx.data_opt::<Arc<CallState>>() {
        let _ = state.refusal.set(code);
    }
}

#[async_trait::async_trait]
impl Extension for Limits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // The stage parsed the document already: what fails here is the
        // recursion or directive bound.
        let parsed = next.run(ctx, query, variables).await;
        if parsed.is_err() {
            refuse(ctx, "graphql_depth_limit");
        }
        parsed
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = match next.run(ctx).await {
            Ok(result) => result,
            Err(errors) => {
                refuse(ctx, "graphql_validation_failed");
                return Err(errors);
            }
        };
        if result.depth > self.max_depth {
            refuse(ctx, "graphql_depth_limit");
            return Err(vec![ServerError::new(
                format!(
                    "the query nests {} levels deep; the limit is {}",
                    result.depth, self.max_depth
                ),
                None,
            )]);
        }
        if result.complexity > self.max_complexity {
            refuse(ctx, "graphql_complexity_limit");
            return Err(vec![ServerError::new(
                format!(
                    "the query costs {}; the limit is {}",
                    result.complexity, self.max_complexity
                ),
                None,
            )]);
        }
        Ok(result)
    }
}

// === resolvers ===

/// Where a field's value comes from.
enum Source {
    /// The parent object's member.
    Member(String),
    /// A call to an upstream.
    Call {
        upstream: String,
        fetch: Fetch,
        path: PathTemplate,
        select: Option<String>,
    },
}

/// A compiled field: its type and its source.
struct Resolver {
    ty: TypeRef,
    source: Source,
}

fn gql_type(ty: &TypeRef) -> GqlType {
    let (inner, required) = match ty {
        TypeRef::Named { name, required } => (GqlType::named(name.as_str()), *required),
        TypeRef::List { of, required } => (GqlType::List(Box::new(gql_type(of))), *required),
    };
    if required {
        GqlType::NonNull(Box::new(inner))
    } else {
        inner
    }
}

fn compile_field(
    name: &str,
    field: &config::Field,
    upstreams: &HashMap<String, Arc<Pool>>,
    max_body: u64,
) -> Option<GqlField> {
    let ty = TypeRef::parse(&field.ty).ok()?;
    let source = match (&field.upstream, &field.path) {
        (Some(upstream), Some(path)) => Source::Call {
            upstream: upstream.clone(),
            fetch: Fetch::new(upstreams.get(upstream)?.clone(), field.timeout, max_body),
            path: config::path_template(path).ok()?,
            select: field.select.clone().filter(|s| !s.is_empty()),
        },
        _ => Source::Member(field.from.clone().unwrap_or_else(|| name.to_owned())),
    };
    let gql_ty = gql_type(&ty);
    let nullable = !matches!(
        ty,
        TypeRef::Named { required: true, .. } | TypeRef::List { required: true, .. }
    );
    let resolver = Arc::new(Resolver { ty, source });
    let mut out = GqlField::new(name, gql_ty, move |ctx| {
        let resolver = resolver.clone();
        FieldFuture::new(async move {
            let gctx = ctx.ctx;
            match resolver.resolve(ctx).await {
                // A nullable field that fails is `null` in `data` (async-graphql
                // would leave the key out), with its error in `errors`.
                Err(error) if nullable => {
                    let error = error.into_server_error(gctx.item.pos);
                    gctx.add_error(gctx.set_error_path(error));
                    Ok(None)
                }
                outcome => outcome,
            }
        })
    });
    for (arg, ty) in &field.args {
        out = out.argument(InputValue::new(
            arg.as_str(),
            gql_type(&TypeRef::parse(ty).ok()?),
        ));
    }
    Some(out)
}

fn field_error(code: &'static str, message: String) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

impl Resolver {
    async fn resolve<'a>(
        &self,
        ctx: ResolverContext<'a>,
    ) -> async_graphql::Result<Option<FieldValue<'a>>> {
        let parent = ctx.parent_value.downcast_ref::<Value>();
        let value = match &self.source {
            Source::Member(member) => match parent.and_then(|p| p.get(member)) {
                Some(value) => value.clone(),
                None => return Ok(None),
            },
            Source::Call {
                upstream,
                fetch,
                path,
                select,
            } => {
                let Some(path) = render_path(path, &ctx, parent)? else {
                    return Ok(None);
                };
                let state = ctx.data::<Arc<CallState>>()?;
                if ctx.data_opt::<DryRun>().is_some() {
                    return Ok(None);
                }
                if !state.take_call() {
                    return Err(field_error(
                        "graphql_call_limit",
                        "the request reached its limit of upstream calls".into(),
                    ));
                }
                let answer =
                    fetch
                        .get_json(path, state.headers.clone())
                        .await
                        .map_err(|error| {
                            async_graphql::Error::new(format!(
                                "upstream {upstream:?} failed: {} (status {})",
                                error.code, error.status
                            ))
                            .extend_with(|_, e| {
                                e.set("code", error.code);
                                e.set("status", i32::from(error.status));
                            })
                        })?;
                match select {
                    None => answer,
                    Some(pointer) => answer.pointer(pointer).cloned().unwrap_or(Value::Null),
                }
            }
        };
        to_field_value(value, &self.ty)
    }
}

/// The field's path with its `{args.NAME}` and `{parent.KEY}` values;
/// `None` when a parent member it needs is null or missing (the field is
/// then null, without a call).
fn render_path(
    template: &PathTemplate,
    ctx: &ResolverContext<'_>,
    parent: Option<&Value>,
) -> async_graphql::Result<Option<http::uri::PathAndQuery>> {
    let mut values: Vec<(&str, String)> = Vec::new();
    for piece in &template.0 {
        let PathPiece::Param(name) = piece else {
            continue;
        };
        let value = match name.split_once('.') {
            Some(("args", arg)) => match ctx.args.get(arg).map(|v| v.as_value().clone()) {
                None | Some(async_graphql::Value::Null) => String::new(),
                Some(async_graphql::Value::String(s)) => s,
                Some(async_graphql::Value::Number(n)) => n.to_string(),
                Some(async_graphql::Value::Boolean(b)) => b.to_string(),
                Some(other) => other.to_string(),
            },
            Some(("parent", key)) => match parent.and_then(|p| p.get(key)) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(_) => {
                    return Err(field_error(
                        "graphql_invalid_value",
                        format!("parent member {key:?} is not a scalar"),
                    ));
                }
            },
            _ => String::new(),
        };
        values.push((name.as_str(), value));
    }
    let pairs: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
    fetch::render(template, &pairs).map(Some).ok_or_else(|| {
        field_error(
            "graphql_invalid_value",
            "the upstream path cannot be built".into(),
        )
    })
}

/// Maps a JSON value to the field's type: scalars are coerced, objects
/// become the parent of their own fields, lists map item by item.
fn to_field_value<'a>(value: Value, ty: &TypeRef) -> async_graphql::Result<Option<FieldValue<'a>>> {
    if value.is_null() {
        return Ok(None);
    }
    match ty {
        TypeRef::List { of, .. } => {
            let Value::Array(items) = value else {
                return Err(mismatch("a list", &value));
            };
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(to_field_value(item, of)?.unwrap_or(FieldValue::NULL));
            }
            Ok(Some(FieldValue::list(out)))
        }
        TypeRef::Named { name, .. } => {
            let scalar = match name.as_str() {
                "String" => match value {
                    Value::String(s) => async_graphql::Value::String(s),
                    Value::Number(n) => async_graphql::Value::String(n.to_string()),
                    Value::Bool(b) => async_graphql::Value::String(b.to_string()),
                    other => return Err(mismatch("a String", &other)),
                },
                "ID" => match value {
                    Value::String(s) => async_graphql::Value::String(s),
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        async_graphql::Value::String(n.to_string())
                    }
                    other => return Err(mismatch("an ID", &other)),
                },
                "Int" => match value.as_i64().and_then(|n| i32::try_from(n).ok()) {
                    Some(n) => async_graphql::Value::from(n),
                    None => return Err(mismatch("an Int (32-bit)", &value)),
                },
                "Float" => match value.as_f64() {
                    Some(n) => async_graphql::Value::from(n),
                    None => return Err(mismatch("a Float", &value)),
                },
                "Boolean" => match value {
                    Value::Bool(b) => async_graphql::Value::Boolean(b),
                    other => return Err(mismatch("a Boolean", &other)),
                },
                _ => {
                    if !value.is_object() {
                        return Err(mismatch(&format!("a {name} object"), &value));
                    }
                    return Ok(Some(FieldValue::owned_any(value)));
                }
            };
            Ok(Some(FieldValue::value(scalar)))
        }
    }
}

fn mismatch(expected: &str, value: &Value) -> async_graphql::Error {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    field_error(
        "graphql_invalid_value",
        format!("the upstream's value is {found}, not {expected}"),
    )
}

// === impl GraphqlStage ===

/// The `graphql` stage.
pub struct GraphqlStage;

impl Stage for GraphqlStage {
    fn name(&self) -> &'static str {
        "graphql"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        match cx.route_with(|route| route.graphql.as_ref()) {
            Some((route, gql)) => wait(self.answer(route, gql, cx, req)),
            None => ready(Ok(Flow::Continue)),
        }
    }

    fn acts_on(&self, route: &super::route::Route, _: &crate::snapshot::Snapshot) -> bool {
        route.graphql.is_some()
    }
}

impl GraphqlStage {
    async fn answer(
        &self,
        route: Arc<Route>,
        gql: Arc<RouteGraphql>,
        cx: &mut RequestCx,
        req: &mut Request,
    ) -> Result<Flow, Error> {
        let input = match *req.method() {
            Method::GET => {
                let query = req.uri().query().unwrap_or_default();
                if query.len() as u64 > gql.max_query {
                    return Err(Kind::UriTooLong {
                        limit: usize::try_from(gql.max_query).unwrap_or(usize::MAX),
                    }
                    .into());
                }
                Input::from_query_string(query)?
            }
            Method::POST => {
                let json = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
                if !json {
                    return Err(bad_request(
                        "graphql_invalid_request",
                        "a POST must have Content-Type: application/json",
                    ));
                }
                let limit = gql.max_query;
                if content_length(req.headers()).is_some_and(|len| len > limit) {
                    return Err(Kind::PayloadTooLarge { limit }.into());
                }
                let prefix = req.extensions_mut().remove::<BufferedPrefix>();
                let idle = route.upstream.definition().timeouts.idle;
                let body: Bytes = super::transform::read_request(req, prefix, limit, idle).await?;
                Input::from_json(&body)?
            }
            _ => {
                return Err(bad_request(
                    "graphql_invalid_request",
                    "a GraphQL endpoint answers GET and POST",
                ));
            }
        };
        let headers = fetch::headers(cx, req.headers());
        let started = Instant::now();
        let outcome = gql.run(input, headers).await;
        cx.upstream_latency = Some(started.elapsed());
        let body = outcome?;
        let mut response = http::Response::new(Body::full(body));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Flow::Respond(Box::new(response)))
    }
}

#[cfg(test)]
mod tests;
