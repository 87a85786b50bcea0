//! The data plane's one error type.
//!
//! Every failure on the request path becomes an [`Error`], and every
//! [`Error`] becomes a response with the JSON body of DESIGN.md §2:
//! `{"error":{"code":"…","message":"…","request_id":"…"}}`. An error knows
//! its status, which side caused it and whether a retry may help; hyper
//! never sees one.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderValue, StatusCode, header};

/// A boxed error, used only at the hyper edges.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the gateway refuses.
    Client,
    /// The upstream failed or could not be reached.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A malformed or ambiguous request (400); `code` names the rule.
    BadRequest {
        /// Machine-readable reason, e.g. `invalid_path`.
        code: &'static str,
        /// Human-readable explanation.
        message: Cow<'static, str>,
    },
    /// The request names an API version the API does not support (400).
    UnsupportedVersion {
        /// The version the client asked for.
        requested: String,
        /// Comma-separated supported versions, sent in `X-API-Supported-Versions`.
        supported: String,
    },
    /// No route matches the request (404).
    NoRoute,
    /// Missing or refused credentials (401, with `WWW-Authenticate`).
    Unauthorized {
        /// Why, e.g. `invalid_credentials`.
        code: &'static str,
        /// Explanation.
        message: &'static str,
    },
    /// A policy refuses the request (403): IP lists, the WAF, CORS.
    Forbidden {
        /// Why, e.g. `ip_denied`, `waf_blocked`.
        code: &'static str,
        /// Explanation.
        message: Cow<'static, str>,
    },
    /// The connection's TLS name (SNI) does not match the request's host (421).
    Misdirected,
    /// Missing or refused credentials (401) with one `WWW-Authenticate`
    /// challenge per method the route accepts.
    Unauthenticated {
        /// Why, e.g. `token_expired`.
        code: &'static str,
        /// Explanation.
        message: &'static str,
        /// The `WWW-Authenticate` values.
        challenges: Vec<HeaderValue>,
    },
    /// The caller's token lacks a scope the route requires (403).
    InsufficientScope {
        /// The route's required scopes, space-separated.
        scope: String,
    },
    /// The identity provider (JWKS, introspection) cannot be asked (503).
    AuthUnavailable {
        /// Explanation.
        message: &'static str,
    },
    /// The request body exceeds the limit (413).
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request target exceeds the limit (414).
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client stopped sending its body for longer than the idle timeout (408).
    ClientTimeout,
    /// The client sent its body slower than `limits.min-body-rate` (408).
    ClientTooSlow {
        /// The minimum rate in bytes per second.
        min_rate: u64,
    },
    /// The client reset or broke its request body (400).
    ClientAborted,
    /// The request headers exceed the limit (431).
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Connecting to the upstream failed (502).
    UpstreamConnect,
    /// Connecting to the upstream took longer than the connect timeout (504).
    UpstreamConnectTimeout,
    /// The upstream sent no response head within the request timeout (504).
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, malformed response) (502).
    UpstreamProtocol,
    /// Every target of the upstream is unhealthy or ejected (503).
    NoHealthyUpstream,
    /// A rate limit refuses the request (429, with `Retry-After`).
    RateLimited {
        /// The limit's name.
        limit: std::sync::Arc<str>,
        /// Whole seconds until a request would be admitted.
        retry_after: u64,
    },
    /// A `scope: redis` limit that fails closed cannot reach Redis (503).
    RateLimitUnavailable {
        /// The limit's name.
        limit: std::sync::Arc<str>,
    },
    /// The upstream's body cannot be transformed as the route asks (not
    /// well-formed, too deep, a DTD) or exceeds the transform's buffering
    /// limit (502).
    UpstreamBody {
        /// Why, e.g. `upstream_body_too_large`, `upstream_invalid_xml`.
        code: &'static str,
        /// Explanation.
        message: Cow<'static, str>,
    },
    /// A gRPC upstream answered a transcoded call with a status other than
    /// `OK`; the HTTP status follows the usual gRPC → HTTP table.
    GrpcStatus {
        /// The gRPC status code (1..=16; others are treated as `UNKNOWN`).
        code: u32,
        /// The status message (`grpc-message`, percent-decoded).
        message: String,
    },
    /// The node has `limits.max-in-flight` requests in flight and sheds
    /// new ones (503, with `Retry-After`).
    Overloaded,
    /// A bug or resource failure in the gateway (500).
    Internal,
}

/// A data-plane failure: a [`Kind`] and, for logs, its cause.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` without further cause.
    pub fn new(kind: Kind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: Kind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// A 400 for a request that breaks `code`.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::BadRequest {
            code,
            message: message.into(),
        })
    }

    /// What went wrong.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest { .. } | Kind::UnsupportedVersion { .. } | Kind::ClientAborted => {
                StatusCode::BAD_REQUEST
            }
            Kind::ClientTimeout | Kind::ClientTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::Unauthorized { .. } | Kind::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Kind::Forbidden { .. } | Kind::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Kind::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Kind::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Kind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Kind::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::UpstreamConnect | Kind::UpstreamProtocol | Kind::UpstreamBody { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Kind::UpstreamConnectTimeout | Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::NoHealthyUpstream | Kind::Overloaded | Kind::RateLimitUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Kind::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Kind::GrpcStatus { code, .. } => grpc_http_status(code),
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Which side caused the failure.
    pub fn side(&self) -> Side {
        match self.kind {
            Kind::BadRequest { .. }
            | Kind::UnsupportedVersion { .. }
            | Kind::NoRoute
            | Kind::Unauthorized { .. }
            | Kind::Forbidden { .. }
            | Kind::Misdirected
            | Kind::Unauthenticated { .. }
            | Kind::InsufficientScope { .. }
            | Kind::PayloadTooLarge { .. }
            | Kind::UriTooLong { .. }
            | Kind::HeadersTooLarge { .. }
            | Kind::ClientTimeout
            | Kind::ClientTooSlow { .. }
            | Kind::RateLimited { .. }
            | Kind::ClientAborted => Side::Client,
            Kind::UpstreamConnect
            | Kind::UpstreamConnectTimeout
            | Kind::UpstreamTimeout
            | Kind::UpstreamProtocol
            | Kind::NoHealthyUpstream
            | Kind::UpstreamBody { .. }
            | Kind::AuthUnavailable { .. } => Side::Upstream,
            Kind::Overloaded | Kind::Internal | Kind::RateLimitUnavailable { .. } => Side::Internal,
            // The upstream judged the request: a 4xx is the client's doing.
            Kind::GrpcStatus { code, .. } if grpc_http_status(code).is_client_error() => {
                Side::Client
            }
            Kind::GrpcStatus { .. } => Side::Upstream,
        }
    }

    /// Whether the connection should close after this answer: the client's
    /// body was cut short, so what follows it on the connection cannot be
    /// trusted, and a slow client should not keep its connection.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.kind,
            Kind::ClientTimeout | Kind::ClientTooSlow { .. } | Kind::ClientAborted
        )
    }

    /// Whether another attempt (on another target) may succeed. Only
    /// failures that happened before the upstream could act on the request
    /// qualify on their own; the proxy adds the idempotency rule.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            Kind::UpstreamConnect | Kind::UpstreamConnectTimeout | Kind::UpstreamProtocol
        )
    }

    /// Machine-readable code for the JSON body, logs and metrics.
    pub fn code(&self) -> &'static str {
        match &self.kind {
            Kind::BadRequest { code, .. } => code,
            Kind::UnsupportedVersion { .. } => "unsupported_api_version",
            Kind::NoRoute => "no_route",
            Kind::Unauthorized { code, .. } | Kind::Unauthenticated { code, .. } => code,
            Kind::Forbidden { code, .. } => code,
            Kind::Misdirected => "misdirected_request",
            Kind::InsufficientScope { .. } => "insufficient_scope",
            Kind::AuthUnavailable { .. } => "auth_unavailable",
            Kind::PayloadTooLarge { .. } => "payload_too_large",
            Kind::UriTooLong { .. } => "uri_too_long",
            Kind::HeadersTooLarge { .. } => "headers_too_large",
            Kind::ClientTimeout => "client_body_timeout",
            Kind::ClientTooSlow { .. } => "client_body_too_slow",
            Kind::ClientAborted => "client_body_aborted",
            Kind::Overloaded => "overloaded",
            Kind::RateLimited { .. } => "rate_limited",
            Kind::RateLimitUnavailable { .. } => "rate_limit_unavailable",
            Kind::UpstreamConnect => "upstream_connect_failed",
            Kind::UpstreamConnectTimeout => "upstream_connect_timeout",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::UpstreamProtocol => "upstream_protocol_error",
            Kind::NoHealthyUpstream => "no_healthy_upstream",
            Kind::UpstreamBody { code, .. } => code,
            Kind::GrpcStatus { code, .. } => grpc_code_name(*code),
            Kind::Internal => "internal_error",
        }
    }

    /// The message shown to the client. It never includes the `source`,
    /// which may hold internal addresses.
    pub fn message(&self) -> Cow<'static, str> {
        match &self.kind {
            Kind::BadRequest { message, .. } => message.clone(),
            Kind::UnsupportedVersion {
                requested,
                supported,
            } => {
                format!("API version {requested:?} is not supported; supported: {supported}").into()
            }
            Kind::NoRoute => "no route matches this request".into(),
            Kind::Unauthorized { message, .. } | Kind::Unauthenticated { message, .. } => {
                (*message).into()
            }
            Kind::Forbidden { message, .. } => message.clone(),
            Kind::Misdirected => {
                "the request's Host does not match the TLS server name (SNI) of this connection"
                    .into()
            }
            Kind::InsufficientScope { scope } => {
                format!("this route needs the scopes: {scope}").into()
            }
            Kind::AuthUnavailable { message } => (*message).into(),
            Kind::PayloadTooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes").into()
            }
            Kind::UriTooLong { limit } => {
                format!("request target exceeds the limit of {limit} bytes").into()
            }
            Kind::HeadersTooLarge { limit } => {
                format!("request headers exceed the limit of {limit} bytes").into()
            }
            Kind::ClientTimeout => {
                "the request body stalled for longer than the idle timeout".into()
            }
            Kind::ClientTooSlow { min_rate } => {
                format!("the request body arrived slower than the minimum of {min_rate} bytes/s")
                    .into()
            }
            Kind::ClientAborted => "the request body was cut short".into(),
            Kind::Overloaded => "the gateway is overloaded; retry later".into(),
            Kind::RateLimitUnavailable { limit } => format!(
                "rate limit \"{limit}\" cannot be checked: its counter store is unavailable"
            )
            .into(),
            Kind::RateLimited { limit, retry_after } => {
                format!("rate limit \"{limit}\" exceeded; retry in {retry_after}s").into()
            }
            Kind::UpstreamConnect => "could not connect to the upstream".into(),
            Kind::UpstreamConnectTimeout => "connecting to the upstream timed out".into(),
            Kind::UpstreamTimeout => "the upstream did not respond in time".into(),
            Kind::UpstreamProtocol => "the upstream closed or broke the exchange".into(),
            Kind::NoHealthyUpstream => "no healthy upstream target is available".into(),
            Kind::UpstreamBody { message, .. } => message.clone(),
            Kind::GrpcStatus { message, .. } if message.is_empty() => {
                "the gRPC upstream answered with an error status".into()
            }
            Kind::GrpcStatus { message, .. } => message.clone().into(),
            Kind::Internal => "internal gateway error".into(),
        }
    }

    /// The JSON error body, `{"error":{"code","message","request_id"}}`.
    pub fn to_json(&self, request_id: &str) -> String {
        serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.message(),
                "request_id": request_id,
            }
        })
        .to_string()
    }

    /// Builds the response: status, JSON body and the headers the kind calls for.
    pub fn to_response(&self, request_id: &str) -> http::Response<crate::body::Body> {
        let mut response = http::Response::new(crate::body::Body::full(self.to_json(request_id)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self.kind {
            Kind::UnsupportedVersion { supported, .. } => {
                if let Ok(value) = HeaderValue::from_str(supported) {
                    headers.insert("x-api-supported-versions", value);
                }
            }
            Kind::NoHealthyUpstream | Kind::Overloaded | Kind::RateLimitUnavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Kind::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Kind::Unauthorized { .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ApiKey header=\"X-API-Key\""),
                );
            }
            Kind::Unauthenticated { challenges, .. } => {
                for challenge in challenges {
                    headers.append(header::WWW_AUTHENTICATE, challenge.clone());
                }
            }
            Kind::InsufficientScope { scope } => {
                let challenge = format!(
                    "Bearer realm=\"meridian\", error=\"insufficient_scope\", scope=\"{scope}\""
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Kind::AuthUnavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Kind::GrpcStatus { code, .. } => {
                headers.insert("grpc-status", HeaderValue::from(*code));
            }
            _ => {}
        }
        response
    }
}

/// The HTTP status of a gRPC status code (the table grpc-gateway and
/// Envoy use; codes outside 1..=16 are `UNKNOWN`, 500).
pub fn grpc_http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), // CANCELLED
        3 | 9 | 11 => StatusCode::BAD_REQUEST, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => StatusCode::GATEWAY_TIMEOUT,      // DEADLINE_EXCEEDED
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,     // ALREADY_EXISTS, ABORTED
        7 => StatusCode::FORBIDDEN,         // PERMISSION_DENIED
        8 => StatusCode::TOO_MANY_REQUESTS, // RESOURCE_EXHAUSTED
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,         // UNAUTHENTICATED
        _ => StatusCode::INTERNAL_SERVER_ERROR, // UNKNOWN, INTERNAL, DATA_LOSS, others
    }
}

/// The error code of a gRPC status in the JSON body: `grpc_` and the
/// status name in lower case, e.g. `grpc_not_found`.
pub fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "grpc_ok",
        1 => "grpc_cancelled",
        3 => "grpc_invalid_argument",
        4 => "grpc_deadline_exceeded",
        5 => "grpc_not_found",
        6 => "grpc_already_exists",
        7 => "grpc_permission_denied",
        8 => "grpc_resource_exhausted",
        9 => "grpc_failed_precondition",
        10 => "grpc_aborted",
        11 => "grpc_out_of_range",
        12 => "grpc_unimplemented",
        13 => "grpc_internal",
        14 => "grpc_unavailable",
        15 => "grpc_data_loss",
        16 => "grpc_unauthenticated",
        _ => "grpc_unknown",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Kind> for Error {
    fn from(kind: Kind) -> Self {
        Self::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_status_and_a_json_body() {
        let cases = [
            (Error::bad_request("invalid_path", "bad"), 400, Side::Client),
            (Error::new(Kind::NoRoute), 404, Side::Client),
            (
                Error::new(Kind::Unauthorized {
                    code: "invalid_credentials",
                    message: "no",
                }),
                401,
                Side::Client,
            ),
            (
                Error::new(Kind::PayloadTooLarge { limit: 1 }),
                413,
                Side::Client,
            ),
            (Error::new(Kind::UriTooLong { limit: 1 }), 414, Side::Client),
            (
                Error::new(Kind::HeadersTooLarge { limit: 1 }),
                431,
                Side::Client,
            ),
            (
                Error::new(Kind::Forbidden {
                    code: "ip_denied",
                    message: "no".into(),
                }),
                403,
                Side::Client,
            ),
            (
                Error::new(Kind::Unauthenticated {
                    code: "token_expired",
                    message: "no",
                    challenges: vec![HeaderValue::from_static("Bearer realm=\"x\"")],
                }),
                401,
                Side::Client,
            ),
            (
                Error::new(Kind::InsufficientScope {
                    scope: "read".into(),
                }),
                403,
                Side::Client,
            ),
            (
                Error::new(Kind::AuthUnavailable { message: "down" }),
                503,
                Side::Upstream,
            ),
            (Error::new(Kind::UpstreamConnect), 502, Side::Upstream),
            (Error::new(Kind::UpstreamProtocol), 502, Side::Upstream),
            (Error::new(Kind::NoHealthyUpstream), 503, Side::Upstream),
            (
                Error::new(Kind::UpstreamBody {
                    code: "upstream_body_too_large",
                    message: "too large".into(),
                }),
                502,
                Side::Upstream,
            ),
            (Error::new(Kind::Overloaded), 503, Side::Internal),
            (
                Error::new(Kind::ClientTooSlow { min_rate: 1 }),
                408,
                Side::Client,
            ),
            (
                Error::new(Kind::UpstreamConnectTimeout),
                504,
                Side::Upstream,
            ),
            (Error::new(Kind::UpstreamTimeout), 504, Side::Upstream),
            (Error::new(Kind::Internal), 500, Side::Internal),
        ];
        for (error, status, side) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.side(), side, "{error}");
            let response = error.to_response("rid-1");
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_bytes().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], error.code());
            assert_eq!(body["error"]["request_id"], "rid-1");
        }
    }

    #[test]
    fn unsupported_version_lists_the_supported_ones() {
        let error = Error::new(Kind::UnsupportedVersion {
            requested: "9".into(),
            supported: "1, 2".into(),
        });
        let response = error.to_response("r");
        assert_eq!(response.headers()["x-api-supported-versions"], "1, 2");
    }

    #[test]
    fn message_hides_the_source() {
        let error = Error::with_source(Kind::UpstreamConnect, "connect 10.0.0.7:80 refused");
        assert!(!error.message().contains("10.0.0.7"));
        assert!(error.to_string().contains("10.0.0.7"));
    }
}
