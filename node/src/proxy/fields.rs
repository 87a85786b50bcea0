//! The fields a proxied request carries upstream: the client's, less the
//! hop-by-hop ones and those the gateway sets itself, then the gateway's
//! own (`X-Forwarded-*`, `Forwarded`, the request id and trace context, the
//! API version, the verified identity).
//!
//! The two parts are kept apart and written out one after the other, so
//! the HTTP/1.1 fast path sends a request without building a merged map: it
//! visits both (`UpstreamFields::each`) and writes them straight to the
//! connection. hyper's paths, the cross-region fallback and the stages that
//! call upstreams themselves get the merged map (`UpstreamFields::to_map`,
//! `upstream_headers`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::pipeline::RequestCx;
use crate::pipeline::version::API_VERSION;
use crate::trace::{TRACEPARENT, X_REQUEST_ID};

static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// What every attempt of a proxied request sends: the client's fields and
/// the gateway's, unmerged.
pub struct UpstreamFields {
    client: HeaderMap,
    /// `None`: `client` is sent as it is (a request another region's node
    /// forwarded, whose fields that node prepared).
    own: Option<Own>,
}

impl UpstreamFields {
    /// The fields for the request in `cx`, whose own fields were `client`;
    /// `upgrade` keeps its `Upgrade`, `preserve_host` sends the client's
    /// host (the route's `preserve_host`).
    pub(crate) fn new(
        cx: &RequestCx,
        client: HeaderMap,
        upgrade: bool,
        preserve_host: bool,
    ) -> Self {
        let own = Own::new(cx, &client, upgrade, preserve_host);
        Self {
            client,
            own: Some(own),
        }
    }

    /// Fields that are sent as they are.
    pub(crate) fn verbatim(client: HeaderMap) -> Self {
        Self { client, own: None }
    }

    /// Calls `visit` with every field to send, in order, the client's
    /// first, as the bytes that go on the wire. (A visitor rather than an
    /// iterator: chained iterators cost more per field than writing the
    /// field does.)
    pub(crate) fn each(&self, mut visit: impl FnMut(&HeaderName, &[u8])) {
        sent(&self.client, self.own.as_ref(), |name, value| {
            visit(name, value.as_bytes());
        });
    }

    /// Appends every field to send to `map` (for hyper's client).
    pub(crate) fn append_to(&self, map: &mut HeaderMap) {
        append_sent(&self.client, self.own.as_ref(), map);
    }

    /// Whether the request is an upgrade (it goes through hyper).
    pub(crate) fn upgrade(&self) -> bool {
        match &self.own {
            Some(own) => own.upgrade.is_some(),
            None => self.client.contains_key(header::UPGRADE),
        }
    }

    /// The fields as one map.
    pub(crate) fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.client.len() + 8);
        self.append_to(&mut map);
        map
    }
}

/// The headers sent upstream for the request in `cx`, as one map: for the
/// stages that call upstreams themselves and keep the client's request.
pub(crate) fn upstream_headers(cx: &RequestCx, client: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(client.len() + 8);
    let preserve_host = cx.route.as_ref().is_some_and(|route| route.preserve_host);
    let own = Own::new(cx, client, upgrade, preserve_host);
    append_sent(client, Some(&own), &mut map);
    map
}

/// Appends what [`sent`] visits to `map`.
fn append_sent(client: &HeaderMap, own: Option<&Own>, map: &mut HeaderMap) {
    sent(client, own, |name, value| {
        if let Some(value) = value.to_header() {
            map.append(name.clone(), value);
        }
    });
}

/// A field value [`sent`] visits: a field's, or text the gateway wrote
/// from checked pieces (the forwarding fields), which the HTTP/1.1 fast
/// path writes as it is and only a map makes a `HeaderValue` of.
#[derive(Clone, Copy)]
enum Value<'a> {
    Field(&'a HeaderValue),
    Text(&'a [u8]),
}

impl Value<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Field(value) => value.as_bytes(),
            Value::Text(text) => text,
        }
    }

    /// The value for a map; `None` for text with bytes a field may not
    /// hold (its pieces were checked as they were read, so this is only a
    /// last line of defence).
    fn to_header(self) -> Option<HeaderValue> {
        match self {
            Value::Field(value) => Some(value.clone()),
            Value::Text(text) => HeaderValue::from_bytes(text).ok(),
        }
    }
}

impl<'a> From<&'a HeaderValue> for Value<'a> {
    fn from(value: &'a HeaderValue) -> Self {
        Value::Field(value)
    }
}

/// The fields of `client` that `own` forwards, then `own`'s; identity
/// last, so nothing can stand in for it.
fn sent(client: &HeaderMap, own: Option<&Own>, mut visit: impl FnMut(&HeaderName, Value<'_>)) {
    for (name, value) in client {
        if own.is_none_or(|own| own.forwards(name)) {
            visit(name, value.into());
        }
    }
    let Some(own) = own else { return };
    if own.trailers {
        visit(&header::TE, (&TRAILERS).into());
    }
    if let Some(upgrade) = &own.upgrade {
        visit(&header::UPGRADE, upgrade.into());
        visit(&header::CONNECTION, (&UPGRADE_TOKEN).into());
    }
    if let Some(host) = &own.host {
        visit(&header::HOST, host.into());
    }
    visit(&X_FORWARDED_FOR, Value::Text(&own.text[..own.for_end]));
    visit(
        &X_FORWARDED_PROTO,
        if own.https { &HTTPS } else { &HTTP }.into(),
    );
    if own.host_end > own.forwarded_end {
        visit(
            &X_FORWARDED_HOST,
            Value::Text(&own.text[own.forwarded_end..own.host_end]),
        );
    }
    visit(
        &FORWARDED,
        Value::Text(&own.text[own.for_end..own.forwarded_end]),
    );
    visit(
        &X_REQUEST_ID,
        Value::Text(&own.text[own.host_end..own.id_end]),
    );
    visit(&TRACEPARENT, Value::Text(&own.text[own.id_end..]));
    if let Some(value) = &own.api_version {
        visit(&API_VERSION, value.into());
    }
    for (name, value) in &own.identity {
        visit(name, value.into());
    }
}

/// The gateway's fields, and which of the client's it leaves out.
struct Own {
    /// Client fields that `Connection` names: hop-by-hop as well. Those
    /// that are hop-by-hop anyway are left out, and so is `close`, the
    /// option nearly every client that lists one sends, which is noted
    /// in `close_listed` instead: a list of one costs an allocation.
    listed: Vec<HeaderName>,
    close_listed: bool,
    /// The client's `TE` asks for trailers (forwarded for gRPC).
    trailers: bool,
    upgrade: Option<HeaderValue>,
    /// The client's `Host`, when the route preserves it.
    host: Option<HeaderValue>,
    /// The values written here, one after the other, each ending where
    /// the next starts: `X-Forwarded-For`'s, `Forwarded`'s (from
    /// `for_end`), `X-Forwarded-Host`'s (from `forwarded_end`; empty
    /// when there is none), `x-request-id`'s (from `host_end`) and
    /// `traceparent`'s (from `id_end`). The request's values are copied,
    /// not shared: a few dozen bytes cost less than a reference count
    /// raised and lowered (atomic operations) for each.
    text: Vec<u8>,
    for_end: usize,
    forwarded_end: usize,
    host_end: usize,
    id_end: usize,
    https: bool,
    api_version: Option<HeaderValue>,
    /// The verified caller's fields; they replace any the client sent.
    identity: HeaderMap,
}

impl Own {
    /// Reads what it needs of `client` (earlier `X-Forwarded-For` and
    /// `Forwarded` hops, `TE`, `Connection`, `Upgrade`) in one pass, and
    /// appends this hop.
    fn new(cx: &RequestCx, client: &HeaderMap, upgrade: bool, preserve_host: bool) -> Self {
        // The gateway's values are written into one buffer (see `text`):
        // the forwarding fields, then the host, request id and trace
        // context. Every piece is checked (earlier hops are visible ASCII,
        // `to_str`; the host, the request id and the trace context by
        // `admit`), so the fast path writes it as it is.
        let mut text = Vec::with_capacity(256);
        let mut earlier_forwarded = Vec::new();
        let mut trailers = false;
        let mut listed = Vec::new();
        let mut close_listed = false;
        let mut upgrade_value = None;
        for (name, value) in client {
            if *name == header::TE {
                trailers |= super::asks_for_trailers(value);
            } else if *name == header::CONNECTION {
                // What nearly every client that sends one sends.
                if crate::text::eq_ignore_ascii_case(value.as_bytes(), b"close") {
                    close_listed = true;
                    continue;
                }
                for name in super::listed_names(value) {
                    if name == super::CLOSE {
                        close_listed = true;
                    } else if !super::is_hop_by_hop(&name) {
                        listed.push(name);
                    }
                }
            } else if *name == header::UPGRADE {
                upgrade_value = upgrade_value.or_else(|| upgrade.then(|| value.clone()));
            } else if *name == X_FORWARDED_FOR {
                if let Ok(previous) = value.to_str() {
                    push_all(&mut text, &[previous.as_bytes(), b", "]);
                }
            } else if *name == FORWARDED
                && let Ok(previous) = value.to_str()
            {
                earlier_forwarded.push(previous);
            }
        }

        let ip = cx.client.addr().ip().to_canonical();
        let ip_start = text.len();
        cx.client.push_ip(&mut text, ip);
        let xff_end = text.len();
        for previous in earlier_forwarded {
            push_all(&mut text, &[previous.as_bytes(), b", "]);
        }
        let https = cx.tls.is_some();
        let proto: &[u8] = if https { b"https" } else { b"http" };
        // Pushed piece by piece: `write!` costs more than the field is worth.
        let (before, after): (&[u8], &[u8]) = if ip.is_ipv6() {
            (b"for=\"[", b"]\";proto=")
        } else {
            (b"for=", b";proto=")
        };
        text.extend_from_slice(before);
        text.extend_from_within(ip_start..xff_end);
        push_all(&mut text, &[after, proto]);
        // `admit` checked the host's bytes. It ends `Forwarded` and is
        // `X-Forwarded-Host` (empty without one: a host is never empty).
        let forwarded_end = match &cx.authority {
            Some(host) => {
                push_all(&mut text, &[b";host=\"", host.as_bytes(), b"\""]);
                let end = text.len();
                text.extend_from_slice(host.as_bytes());
                end
            }
            None => text.len(),
        };
        let host_end = text.len();
        text.extend_from_slice(cx.request_id.as_bytes());
        let id_end = text.len();
        text.extend_from_slice(cx.traceparent.as_bytes());

        let mut identity = HeaderMap::new();
        if let Some(principal) = &cx.principal {
            principal.write_headers(&mut identity);
        }
        if let Some(cert) = cx.tls.as_ref().and_then(|tls| tls.client.as_ref()) {
            crate::tls::client_cert_headers(cert, &mut identity);
        }
        Self {
            listed,
            close_listed,
            trailers,
            upgrade: upgrade_value,
            host: cx.authority.as_ref().filter(|_| preserve_host).cloned(),
            text,
            for_end: xff_end,
            forwarded_end,
            host_end,
            id_end,
            https,
            api_version: cx.api.as_ref().map(|selected| selected.version.clone()),
            identity,
        }
    }

    /// Whether a client field goes upstream: not hop-by-hop, not `Expect`
    /// (the gateway answers it), and not one the gateway sets.
    fn forwards(&self, name: &HeaderName) -> bool {
        !(super::is_hop_by_hop(name)
            || name == header::EXPECT
            || name == header::HOST
            || name == X_FORWARDED_FOR
            || name == FORWARDED
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
            || name == TRACEPARENT
            || name == API_VERSION
            || self.listed.contains(name)
            || (self.close_listed && *name == super::CLOSE)
            || (!self.identity.is_empty() && self.identity.contains_key(name)))
    }
}

/// Appends each of `parts`.
fn push_all(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
}
