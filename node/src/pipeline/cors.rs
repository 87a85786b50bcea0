//! `cors`: Cross-Origin Resource Sharing answered at the gateway, after
//! `route` and before `auth` (preflights carry no credentials). The route's
//! `cors` block replaces the global one.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here, never forwarded: 204 with `Access-Control-Allow-Origin`,
//!   `-Methods`, `-Headers` (the requested ones, all allowed), `-Max-Age` and
//!   `-Credentials` when configured; an origin, method or header not allowed
//!   gets 403 `cors_refused`. A preflight matches the route that serves the
//!   method it asks for (see `route`).
//! - Other requests are forwarded whatever their `Origin` (CORS is enforced
//!   by browsers): an allowed origin gets `Access-Control-Allow-Origin` (the
//!   origin itself, or `*` when `*` is allowed without credentials),
//!   `-Credentials` and `-Expose-Headers`; a disallowed one gets no CORS
//!   header at all. Upstream `Access-Control-*` headers are replaced by the
//!   gateway's.
//! - `Vary: Origin` is added to every response of a route with CORS.
//!
//! Counted in `meridian_cors_requests_total{kind=preflight|request,
//! result=allowed|refused}` (requests without `Origin` are not counted).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use metrics::Counter;
use raft::model::policy::CorsPolicy;

use super::{Flow, Request, RequestCx, Response, Stage, Step, ready};
use crate::body::Body;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;

/// What the `cors` stage decided for a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// The origin is allowed: this is the `Access-Control-Allow-Origin` value.
    Allowed(HeaderValue),
    /// A preflight the gateway answered itself.
    Answered,
}

/// A compiled `cors` block.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    exact: Vec<String>,
    /// `(scheme://, .suffix[:port])` of `scheme://*.suffix[:port]`.
    patterns: Vec<(String, String)>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

impl Cors {
    /// Compiles a validated block.
    pub fn new(policy: &CorsPolicy) -> Self {
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        let mut any_origin = false;
        for origin in &policy.allow_origins {
            if origin == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*")
                && rest.starts_with('.')
            {
                patterns.push((format!("{scheme}://"), rest.to_owned()));
            } else {
                exact.push(origin.clone());
            }
        }
        let join = |items: &[String]| HeaderValue::from_str(&items.join(", ")).ok();
        Self {
            any_origin,
            exact,
            patterns,
            methods: policy
                .allow_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            methods_value: join(&policy.allow_methods)
                .unwrap_or_else(|| HeaderValue::from_static("GET, HEAD, POST")),
            any_header: policy.allow_headers.iter().any(|h| h == "*"),
            headers: policy
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expose: (!policy.expose_headers.is_empty())
                .then(|| join(&policy.expose_headers))
                .flatten(),
            credentials: policy.allow_credentials,
            max_age: policy.max_age.map(|age| HeaderValue::from(age.as_secs())),
        }
    }

    /// Whether `origin` may read responses.
    pub fn allows(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        self.patterns.iter().any(|(scheme, suffix)| {
            origin.len() > scheme.len() + suffix.len()
                && origin.starts_with(scheme.as_str())
                && origin.ends_with(suffix.as_str())
                && {
                    let label = &origin[scheme.len()..origin.len() - suffix.len()];
                    !label.starts_with('.')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                }
        })
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn header_allowed(&self, name: &str) -> bool {
        (self.any_header && !self.credentials)
            || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The preflight answer, or why it is refused.
    fn preflight(&self, origin: &HeaderValue, headers: &HeaderMap) -> Result<Response, Error> {
        let refuse = |message: &'static str| -> Error {
            Kind::Forbidden {
                code: "cors_refused",
                message: message.into(),
            }
            .into()
        };
        if !origin.to_str().is_ok_and(|o| self.allows(o)) {
            return Err(refuse("the origin is not allowed"));
        }
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return Err(refuse("the requested method is not allowed"));
        }
        let requested = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let mut echoed = Vec::new();
        for name in requested {
            if !self.header_allowed(name) {
                return Err(refuse("a requested header is not allowed"));
            }
            echoed.push(name.to_ascii_lowercase());
            if echoed.len() > 64 {
                return Err(refuse("too many request headers"));
            }
        }
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone(),
        );
        if !echoed.is_empty()
            && let Ok(value) = HeaderValue::from_str(&echoed.join(", "))
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(response)
    }
}

/// Adds `Origin` to `Vary` unless it is listed (or `*`).
fn vary_origin(headers: &mut HeaderMap) {
    let listed = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("origin")
        });
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

const UPSTREAM_CORS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// The `cors` stage.
pub struct CorsStage {
    preflight_allowed: Counter,
    preflight_refused: Counter,
    request_allowed: Counter,
    request_refused: Counter,
}

impl CorsStage {
    /// The stage, counting decisions in `metrics`.
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        let counter = |kind: &str, result: &str| {
            metrics.counter(
                "meridian_cors_requests_total",
                &[("kind", kind.to_owned()), ("result", result.to_owned())],
            )
        };
        Self {
            preflight_allowed: counter("preflight", "allowed"),
            preflight_refused: counter("preflight", "refused"),
            request_allowed: counter("request", "allowed"),
            request_refused: counter("request", "refused"),
        }
    }

    /// Answers a preflight, or notes whether the request's origin is allowed.
    fn admit(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        let snapshot = cx.snapshot.clone();
        let Some(cors) = snapshot.policies.cors(cx.route.as_deref()) else {
            return Ok(Flow::Continue);
        };
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(Flow::Continue);
        };
        if is_preflight(req) {
            return match cors.preflight(origin, req.headers()) {
                Ok(response) => {
                    self.preflight_allowed.increment(1);
                    cx.cors = Some(Decision::Answered);
                    Ok(Flow::Respond(Box::new(response)))
                }
                Err(error) => {
                    self.preflight_refused.increment(1);
                    Err(error)
                }
            };
        }
        if origin.to_str().is_ok_and(|o| cors.allows(o)) {
            self.request_allowed.increment(1);
            cx.cors = Some(Decision::Allowed(cors.allow_origin(origin)));
        } else {
            self.request_refused.increment(1);
        }
        Ok(Flow::Continue)
    }

    /// Sets the CORS response headers for what `admit` decided.
    fn answer(&self, cx: &mut RequestCx, rsp: &mut Response) -> Result<(), Error> {
        let snapshot = cx.snapshot.clone();
        let Some(cors) = snapshot.policies.cors(cx.route.as_deref()) else {
            return Ok(());
        };
        if matches!(cx.cors, Some(Decision::Answered)) {
            return Ok(());
        }
        let headers = rsp.headers_mut();
        for name in &UPSTREAM_CORS {
            headers.remove(name);
        }
        vary_origin(headers);
        if let Some(Decision::Allowed(origin)) = &cx.cors {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if cors.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(expose) = &cors.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        Ok(())
    }
}

impl Stage for CorsStage {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        ready(self.admit(cx, req))
    }

    fn on_response<'a>(&'a self, cx: &'a mut RequestCx, rsp: &'a mut Response) -> Step<'a, ()> {
        ready(self.answer(cx, rsp))
    }

    fn responds(&self) -> bool {
        true
    }

    fn acts_on(&self, route: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        snapshot.policies.cors(Some(route)).is_some()
    }
}

/// Whether `req` is a CORS preflight.
pub fn is_preflight<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a request is routed by: the one a preflight asks about.
pub fn routing_method<B>(req: &http::Request<B>) -> Option<Method> {
    if !is_preflight(req) {
        return None;
    }
    req.headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsPolicy {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_headers: vec!["Content-Type".into(), "X-Token".into()],
            allow_credentials: credentials,
            max_age: Some(std::time::Duration::from_secs(600)),
            ..CorsPolicy::default()
        })
    }

    #[test]
    fn origins_exact_and_patterns() {
        let c = cors(
            &["https://app.example.com", "https://*.example.org:8443"],
            true,
        );
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com.evil.com"));
        assert!(c.allows("https://a.example.org:8443"));
        assert!(c.allows("https://a.b.example.org:8443"));
        assert!(!c.allows("https://example.org:8443"));
        assert!(!c.allows("https://.example.org:8443"));
        assert!(!c.allows("https://a.example.org"));
        assert!(!c.allows("https://evil.com/.example.org:8443"));
        assert!(!c.allows("https://evil.com?.example.org:8443"));
        assert!(!c.allows("null"));
        assert!(cors(&["*"], false).allows("null"));
    }

    #[test]
    fn preflights() {
        let c = cors(&["https://app.example.com"], true);
        let origin = HeaderValue::from_static("https://app.example.com");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type, X-Token"),
        );
        let ok = c.preflight(&origin, &headers).unwrap();
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-token"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-other"),
        );
        assert_eq!(
            c.preflight(&origin, &headers).err().map(|e| e.code()),
            Some("cors_refused")
        );
        headers.remove(header::ACCESS_CONTROL_REQUEST_HEADERS);
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("DELETE"),
        );
        assert!(c.preflight(&origin, &headers).is_err());
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        assert!(
            c.preflight(&HeaderValue::from_static("https://evil.com"), &headers)
                .is_err()
        );
        let star = cors(&["*"], false);
        let answer = star.preflight(&origin, &headers).unwrap();
        assert_eq!(answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            !answer
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        );
    }

    #[test]
    fn vary_is_added_once() {
        let mut headers = HeaderMap::new();
        vary_origin(&mut headers);
        vary_origin(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 1);
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        vary_origin(&mut headers);
        let values: Vec<_> = headers.get_all(header::VARY).iter().collect();
        assert_eq!(values, ["Accept-Encoding", "Origin"]);
    }
}
