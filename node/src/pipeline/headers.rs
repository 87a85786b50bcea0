//! `headers`: security response headers, and removal of internal ones.
//!
//! The first stage of the pipeline, so that its `on_response` runs last and
//! on every response: proxied ones and those the gateway answers itself
//! (errors included, even a request refused by `admit`). The route's
//! `headers` block replaces the global one; unrouted requests get the
//! global one.
//!
//! With `defaults: true` (the default) the set of
//! [`DEFAULT_SECURITY_HEADERS`] is sent; `set` overrides a default or adds a
//! header (an empty value drops it); each is inserted, replacing an
//! upstream's value. `Server`, `X-Powered-By` and the names in `remove` are
//! deleted from upstream responses. `Strict-Transport-Security` belongs to
//! the TLS listener.

use http::{HeaderMap, HeaderName, HeaderValue};
use raft::model::policy::{DEFAULT_SECURITY_HEADERS, HeadersPolicy, INTERNAL_HEADERS};

use super::{Flow, Request, RequestCx, Response, Stage, Step, ready};

/// A compiled `headers` block.
#[derive(Debug, Clone)]
pub struct Headers {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Headers {
    /// Compiles a validated block.
    pub fn new(policy: &HeadersPolicy) -> Self {
        let mut set: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if policy.defaults {
            for (name, value) in DEFAULT_SECURITY_HEADERS {
                set.push((
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                ));
            }
        }
        let mut remove: Vec<HeaderName> = INTERNAL_HEADERS
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect();
        for name in &policy.remove {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                remove.push(name);
            }
        }
        for (name, value) in &policy.set {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            set.retain(|(n, _)| *n != name);
            if value.is_empty() {
                remove.push(name);
            } else if let Ok(value) = HeaderValue::from_str(value) {
                set.push((name, value));
            }
        }
        Self { set, remove }
    }

    /// Applies the block to response headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The `headers` stage.
pub struct SecurityHeaders;

impl Stage for SecurityHeaders {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn on_request<'a>(&'a self, _cx: &'a mut RequestCx, _req: &'a mut Request) -> Step<'a, Flow> {
        ready(Ok(Flow::Continue))
    }

    fn on_response<'a>(&'a self, cx: &'a mut RequestCx, rsp: &'a mut Response) -> Step<'a, ()> {
        if let Some(headers) = cx.snapshot.policies.headers(cx.route.as_deref()) {
            headers.apply(rsp.headers_mut());
        }
        ready(Ok(()))
    }

    fn responds(&self) -> bool {
        true
    }

    fn acts_on(&self, route: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        snapshot.policies.headers(Some(route)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn defaults_overrides_and_removals() {
        let headers = Headers::new(&HeadersPolicy {
            defaults: true,
            set: BTreeMap::from([
                ("X-Frame-Options".to_owned(), String::new()),
                (
                    "Content-Security-Policy".to_owned(),
                    "default-src 'self'".to_owned(),
                ),
                ("X-Extra".to_owned(), "1".to_owned()),
            ]),
            remove: vec!["X-Debug-Token".into()],
        });
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("nginx/1.2"));
        map.insert("x-powered-by", HeaderValue::from_static("PHP/5"));
        map.insert("x-debug-token", HeaderValue::from_static("abc"));
        map.insert("x-frame-options", HeaderValue::from_static("ALLOW"));
        map.insert("content-type", HeaderValue::from_static("text/html"));
        headers.apply(&mut map);
        for gone in ["server", "x-powered-by", "x-debug-token", "x-frame-options"] {
            assert!(!map.contains_key(gone), "{gone}");
        }
        assert_eq!(map["x-content-type-options"], "nosniff");
        assert_eq!(map["referrer-policy"], "no-referrer");
        assert_eq!(map["content-security-policy"], "default-src 'self'");
        assert_eq!(map["x-extra"], "1");
        assert_eq!(map["content-type"], "text/html");

        let bare = Headers::new(&HeadersPolicy {
            defaults: false,
            ..HeadersPolicy::default()
        });
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("x"));
        bare.apply(&mut map);
        assert!(map.is_empty());
    }
}
