//! `tls`: the route's TLS rules. Runs after `route`, before `auth`.
//!
//! - `tls.redirect_https` on a request that came over plain HTTP: 308 to
//!   `https://<host>[:<https port>]<path and query as sent>`. The port is
//!   `tls.https-port`, else the port `listen.proxy-tls` is bound to; a
//!   node without `[tls]` redirects to port 443 (TLS terminated in front).
//! - A route that needs a client certificate (`tls.client_cert: required`,
//!   `auth: [mtls]`, or a listener with `client-auth.mode = "required"`):
//!   - a request whose `Host` differs from the TLS SNI gets 421 (a client
//!     could otherwise reuse a connection authenticated for another name);
//!     without SNI only an IP-literal `Host` is accepted;
//!   - with `client_cert: required`, a request without a verified client
//!     certificate gets 403 `client_certificate_required` (a plain-HTTP
//!     request too).
//!
//! Refusals are counted in `meridian_tls_client_cert_refusals_total{reason}`.

use http::{HeaderValue, Response, StatusCode, header};
use metrics::Counter;
use raft::model::{AuthMethod, ClientCert};

use super::ClientAuthMode;
use crate::body::Body;
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::pipeline::{Flow, Request, RequestCx, Stage, Step, ready};

/// The `tls` stage.
pub struct TlsStage {
    https_port: Option<u16>,
    listener_required: bool,
    missing: Counter,
    mismatch: Counter,
}

impl TlsStage {
    /// The stage for a node with `config`.
    pub fn new(config: &Config, metrics: &Metrics) -> Self {
        let refusal = |reason: &str| {
            metrics.counter(
                "meridian_tls_client_cert_refusals_total",
                &[("reason", reason.to_owned())],
            )
        };
        Self {
            https_port: match &config.tls {
                Some(tls) => tls.https_port.or(Some(config.listen.proxy_tls.port())),
                None => None,
            },
            listener_required: config
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth.mode == ClientAuthMode::Required),
            missing: refusal("missing"),
            mismatch: refusal("sni_mismatch"),
        }
    }

    fn redirect(&self, cx: &RequestCx, req: &Request) -> Option<Response<Body>> {
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = match self.https_port {
            Some(443) | None => format!("https://{}{target}", cx.host),
            Some(port) => format!("https://{}:{port}{target}", cx.host),
        };
        let location = HeaderValue::from_str(&location).ok()?;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(header::LOCATION, location);
        Some(response)
    }

    /// Redirects to HTTPS, or checks the client certificate and SNI the route asks for.
    fn check(&self, cx: &RequestCx, req: &Request) -> Result<Flow, Error> {
        // Borrowed throughout: the check clones no `Arc`.
        let Some(route) = &cx.route else {
            return Ok(Flow::Continue);
        };
        let required = route.tls.client_cert == ClientCert::Required;
        let Some(tls) = &cx.tls else {
            if route.tls.redirect_https
                && let Some(response) = self.redirect(cx, req)
            {
                return Ok(Flow::Respond(Box::new(response)));
            }
            if required {
                self.missing.increment(1);
                return Err(Error::new(Kind::Forbidden {
                    code: "client_certificate_required",
                    message: "this route requires a verified client certificate over HTTPS".into(),
                }));
            }
            return Ok(Flow::Continue);
        };
        let needs_cert =
            required || route.auth.contains(&AuthMethod::Mtls) || self.listener_required;
        if !needs_cert {
            return Ok(Flow::Continue);
        }
        let matches = match &tls.sni {
            Some(sni) => sni.eq_ignore_ascii_case(&cx.host),
            None => is_ip(&cx.host),
        };
        if !matches {
            self.mismatch.increment(1);
            return Err(Error::new(Kind::Misdirected));
        }
        if required && tls.client.is_none() {
            self.missing.increment(1);
            return Err(Error::new(Kind::Forbidden {
                code: "client_certificate_required",
                message: "this route requires a verified client certificate".into(),
            }));
        }
        Ok(Flow::Continue)
    }
}

/// Whether `host` (as in `RequestCx::host`) is an IP literal.
fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
}

impl Stage for TlsStage {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        ready(self.check(cx, req))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_literals() {
        assert!(super::is_ip("127.0.0.1"));
        assert!(super::is_ip("[::1]"));
        assert!(!super::is_ip("api.example.com"));
    }
}
