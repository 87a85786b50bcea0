//! `version`: finds the API a request belongs to and the version it asks for.
//!
//! An API (`versioning.<name>` in `gateway.yaml`) covers the requests that
//! meet its `match` (hosts and a path prefix); the most specific API wins
//! (longer prefix, then exact host over wildcard over none, then name). Its
//! version comes from the first source that yields one, in the configured
//! order:
//! - `path`: the segment right after the API's prefix, written `v2`;
//! - `header: X-API-Version`: the header's value, `2`;
//! - `accept: acme`: `Accept: application/vnd.acme.v2+json`;
//! - `query: version`: `?version=2`.
//!
//! No source: the API's default version. A supported version proceeds, with
//! `Deprecation`, `Sunset` and `Link` headers on the response if that
//! version is deprecated. An unsupported one is rejected (400, JSON body,
//! `X-API-Supported-Versions`) or, under `unknown: fallback`, served by the
//! fallback version with its deprecation headers; a path version is then
//! rewritten (`/api/v9/x` becomes `/api/v2/x`) so routes see the served
//! version. Every versioned response says `X-API-Version`, and the upstream
//! receives the same header.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{HeaderName, HeaderValue};
use raft::model::{self, UnknownVersion, VersionSource};

use super::route::{HostSet, PrefixMatcher};
use super::{Flow, Request, RequestCx, Response, Stage, Step, ready};
use crate::error::{Error, Kind};

/// `X-API-Version`, on the upstream request and the client's response.
pub static API_VERSION: HeaderName = HeaderName::from_static("x-api-version");

/// The API and version chosen for a request.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The API name.
    pub api: Arc<str>,
    /// The version that serves the request.
    pub version: HeaderValue,
    /// Deprecation headers to add to the response.
    pub notice: Option<Arc<Notice>>,
}

/// Precomputed `Deprecation`, `Sunset` and `Link` values.
#[derive(Debug)]
pub struct Notice {
    deprecation: HeaderValue,
    sunset: Option<HeaderValue>,
    link: Option<HeaderValue>,
}

impl Notice {
    fn compile(deprecation: &model::Deprecation) -> Self {
        let parse = |date: &Option<String>| {
            date.as_deref()
                .and_then(|d| humantime::parse_rfc3339_weak(d).ok())
        };
        let since = parse(&deprecation.since)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Self {
            deprecation: HeaderValue::from_str(&format!("@{since}"))
                .expect("digits are a valid header value"),
            sunset: parse(&deprecation.sunset)
                .and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()),
            link: deprecation
                .link
                .as_deref()
                .and_then(|l| HeaderValue::from_str(&format!("<{l}>; rel=\"deprecation\"")).ok()),
        }
    }

    fn apply(&self, headers: &mut http::HeaderMap) {
        headers.insert("deprecation", self.deprecation.clone());
        if let Some(sunset) = &self.sunset {
            headers.insert("sunset", sunset.clone());
        }
        if let Some(link) = &self.link {
            headers.append(http::header::LINK, link.clone());
        }
    }
}

/// One compiled API.
struct Api {
    name: Arc<str>,
    hosts: HostSet,
    prefix: PrefixMatcher,
    sources: Vec<Source>,
    supported: Vec<(String, HeaderValue)>,
    supported_list: String,
    default: HeaderValue,
    fallback: Option<(HeaderValue, Arc<Notice>)>,
    deprecated: HashMap<String, Arc<Notice>>,
}

enum Source {
    Path,
    Header(HeaderName),
    Accept(String),
    Query(String),
}

/// Every API of a snapshot, most specific first.
#[derive(Default)]
pub struct Apis(Vec<Api>);

impl Apis {
    /// Whether no API is versioned.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compiles the `versioning` section of a validated configuration.
    pub fn compile(config: &model::GatewayConfig) -> Self {
        let mut apis: Vec<Api> = config
            .versioning
            .iter()
            .map(|(name, v)| {
                let sources = v
                    .from
                    .iter()
                    .filter_map(|source| match source {
                        VersionSource::Path => Some(Source::Path),
                        VersionSource::Header(name) => HeaderName::from_bytes(name.as_bytes())
                            .ok()
                            .map(Source::Header),
                        VersionSource::Accept(vendor) => Some(Source::Accept(format!(
                            "application/vnd.{}.v",
                            vendor.to_ascii_lowercase()
                        ))),
                        VersionSource::Query(name) => Some(Source::Query(name.clone())),
                    })
                    .collect();
                let value =
                    |v: &str| HeaderValue::from_str(v).expect("validated versions are header-safe");
                Api {
                    name: name.as_str().into(),
                    hosts: HostSet::compile(&v.scope.hosts),
                    prefix: PrefixMatcher::compile(v.scope.path_prefix.as_deref().unwrap_or("/")),
                    sources,
                    supported: v.supported.iter().map(|s| (s.clone(), value(s))).collect(),
                    supported_list: v.supported.join(", "),
                    default: value(&v.default),
                    fallback: match &v.unknown {
                        UnknownVersion::Reject => None,
                        UnknownVersion::Fallback(f) => Some((
                            value(&f.version),
                            Arc::new(Notice::compile(&f.deprecation())),
                        )),
                    },
                    deprecated: v
                        .deprecated
                        .iter()
                        .map(|(version, d)| (version.clone(), Arc::new(Notice::compile(d))))
                        .collect(),
                }
            })
            .collect();
        apis.sort_by(|a, b| {
            (b.prefix.segments(), b.hosts.specificity())
                .cmp(&(a.prefix.segments(), a.hosts.specificity()))
                .then_with(|| a.name.cmp(&b.name))
        });
        Self(apis)
    }

    fn find(&self, host: &str, path: &str) -> Option<(&Api, usize)> {
        self.0.iter().find_map(|api| {
            if !api.hosts.matches(host) {
                return None;
            }
            api.prefix.matches(path).map(|end| (api, end))
        })
    }
}

/// Where a requested version was found.
enum Found {
    /// In the path, at this byte range of `cx.path`.
    Path(std::ops::Range<usize>),
    /// In a header or the query.
    Elsewhere,
}

fn requested(api: &Api, prefix_end: usize, path: &str, req: &Request) -> Option<(Found, String)> {
    for source in &api.sources {
        match source {
            Source::Path => {
                let rest = &path[prefix_end..];
                let rest = rest.strip_prefix('/').unwrap_or(rest);
                let segment = rest.split('/').next().unwrap_or_default();
                if let Some(version) = segment.strip_prefix('v')
                    && !version.is_empty()
                {
                    let start = path.len() - rest.len();
                    return Some((
                        Found::Path(start..start + segment.len()),
                        version.to_owned(),
                    ));
                }
            }
            Source::Header(name) => {
                if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                    let value = value.trim();
                    if !value.is_empty() {
                        return Some((Found::Elsewhere, value.to_owned()));
                    }
                }
            }
            Source::Accept(prefix) => {
                for accept in req.headers().get_all(http::header::ACCEPT) {
                    let Ok(accept) = accept.to_str() else {
                        continue;
                    };
                    for item in accept.split(',') {
                        let media = item.split(';').next().unwrap_or_default().trim();
                        if media.len() > prefix.len()
                            && media.as_bytes()[..prefix.len()]
                                .eq_ignore_ascii_case(prefix.as_bytes())
                        {
                            let rest = &media[prefix.len()..];
                            let version = rest.split('+').next().unwrap_or_default();
                            if !version.is_empty() {
                                return Some((Found::Elsewhere, version.to_owned()));
                            }
                        }
                    }
                }
            }
            Source::Query(name) => {
                if let Some(query) = req.uri().query() {
                    for (key, value) in form_urlencoded_pairs(query) {
                        if key == name.as_str() && !value.is_empty() {
                            return Some((Found::Elsewhere, value));
                        }
                    }
                }
            }
        }
    }
    None
}

/// Decoded `key=value` pairs of a query string.
pub fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(key), decode(value))
    })
}

/// The `version` stage.
pub struct Version;

impl Stage for Version {
    fn name(&self) -> &'static str {
        "version"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        ready(self.select(cx, req))
    }

    fn on_response<'a>(&'a self, cx: &'a mut RequestCx, rsp: &'a mut Response) -> Step<'a, ()> {
        Self::announce(cx, rsp);
        ready(Ok(()))
    }

    fn responds(&self) -> bool {
        true
    }

    // Only the response hook can be skipped: selecting runs before routing.
    fn acts_on(&self, _: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        !snapshot.apis.is_empty()
    }
}

impl Version {
    /// Chooses the API version the request asks for, or the fallback.
    fn select(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        // Without APIs there is nothing to select, and no snapshot to hold.
        if cx.snapshot.apis.is_empty() {
            return Ok(Flow::Continue);
        }
        let snapshot = cx.snapshot.clone();
        let Some((api, prefix_end)) = snapshot.apis.find(&cx.host, &cx.path) else {
            return Ok(Flow::Continue);
        };
        let Some((found, version)) = requested(api, prefix_end, &cx.path, req) else {
            cx.api = Some(Selected {
                api: api.name.clone(),
                version: api.default.clone(),
                notice: None,
            });
            return Ok(Flow::Continue);
        };
        if let Some((_, value)) = api.supported.iter().find(|(v, _)| *v == version) {
            cx.api = Some(Selected {
                api: api.name.clone(),
                version: value.clone(),
                notice: api.deprecated.get(&version).cloned(),
            });
            return Ok(Flow::Continue);
        }
        let Some((fallback, notice)) = &api.fallback else {
            return Err(Kind::UnsupportedVersion {
                requested: version.chars().take(32).collect(),
                supported: api.supported_list.clone(),
            }
            .into());
        };
        if let Found::Path(range) = found {
            let served = format!("v{}", fallback.to_str().unwrap_or_default());
            cx.path.replace_range(range, &served);
        }
        cx.api = Some(Selected {
            api: api.name.clone(),
            version: fallback.clone(),
            notice: Some(notice.clone()),
        });
        Ok(Flow::Continue)
    }

    /// Tells the client which version served it, and when that version goes.
    fn announce(cx: &RequestCx, rsp: &mut Response) {
        if let Some(selected) = &cx.api {
            let headers = rsp.headers_mut();
            headers.insert(API_VERSION.clone(), selected.version.clone());
            if let Some(notice) = &selected.notice {
                notice.apply(headers);
            }
        }
    }
}

/// Seconds since the epoch, for tests of the `Deprecation` header.
#[cfg(test)]
fn epoch(date: &str) -> u64 {
    humantime::parse_rfc3339_weak(date)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_format_rfc_dates() {
        let notice = Notice::compile(&model::Deprecation {
            since: Some("2026-01-01T00:00:00Z".into()),
            sunset: Some("2027-01-31T00:00:00Z".into()),
            link: Some("https://example.com/migrate".into()),
        });
        let mut headers = http::HeaderMap::new();
        notice.apply(&mut headers);
        assert_eq!(
            headers["deprecation"],
            format!("@{}", epoch("2026-01-01T00:00:00Z")).as_str()
        );
        assert_eq!(headers["sunset"], "Sun, 31 Jan 2027 00:00:00 GMT");
        assert_eq!(
            headers["link"],
            "<https://example.com/migrate>; rel=\"deprecation\""
        );
        let bare = Notice::compile(&model::Deprecation::default());
        let mut headers = http::HeaderMap::new();
        bare.apply(&mut headers);
        assert_eq!(headers["deprecation"], "@0");
        assert!(!headers.contains_key("sunset"));
    }

    #[test]
    fn query_pairs_decode() {
        let pairs: Vec<_> = form_urlencoded_pairs("a=1&version=2&x=%41+b&&flag").collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("version".into(), "2".into()),
                ("x".into(), "A b".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
