//! `route`: picks the route for a request and rewrites its path.
//!
//! Conditions: host (exact or `*.suffix`), method, path (exact or prefix on
//! segment boundaries, with `{param}` segments), header values and query
//! parameters, and for versioned APIs the version the `version` stage chose.
//!
//! Priority, when several routes match (documented in the README and on
//! [`raft::model::Route`]): higher `priority`; then the more specific host
//! (exact, then longer wildcard, then none); then the more specific path
//! (exact before prefix, more segments, more literal segments); then more
//! conditions; then declaration order. The router expands each route into
//! one entry per host pattern, sorts the entries by that key once per
//! snapshot, and buckets them by exact host, so a lookup scans one sorted
//! list and stops at the first match.
//!
//! Rewrites (`strip_prefix`, `replace_prefix`, `regex`) act on the
//! normalised path; the query string is kept as the client sent it.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::{HeaderName, Method};
use raft::model::pattern::{HostPattern, PathPattern, Segment};
use raft::model::{self, Rewrite, ValueMatch, ValueRule};
use regex::Regex;

use super::version::form_urlencoded_pairs;
use super::{Flow, Request, RequestCx, Stage, Step, ready};
use crate::error::{Error, Kind};
use crate::metrics::{Metrics, RouteMetrics};
use crate::normalize;
use crate::proxy::pool::Pool;

// === impl HostSet ===

/// The hosts a route or API accepts; any host when empty.
#[derive(Debug, Clone, Default)]
pub struct HostSet(Vec<HostPattern>);

impl HostSet {
    /// Compiles validated host patterns.
    pub fn compile(hosts: &[String]) -> Self {
        Self(
            hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect(),
        )
    }

    /// Whether `host` (lowercase, no port) is accepted.
    pub fn matches(&self, host: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(host))
    }

    /// The best specificity of the set, `(0, 0)` for any host.
    pub fn specificity(&self) -> (u8, usize) {
        self.0
            .iter()
            .map(HostPattern::specificity)
            .max()
            .unwrap_or((0, 0))
    }
}

// === impl PrefixMatcher ===

/// A path pattern matched against the leading segments of a path.
#[derive(Debug, Clone)]
pub struct PrefixMatcher(Vec<Segment>);

impl PrefixMatcher {
    /// Compiles a validated pattern; a trailing `/` is ignored for prefixes.
    pub fn compile(pattern: &str) -> Self {
        let mut segments = PathPattern::parse(pattern)
            .map(|p| p.segments)
            .unwrap_or_default();
        if segments.last() == Some(&Segment::Literal(String::new())) {
            segments.pop();
        }
        Self(segments)
    }

    /// Number of segments in the pattern.
    pub fn segments(&self) -> usize {
        self.0.len()
    }

    /// If `path` starts with the pattern on a segment boundary, the byte
    /// offset where the prefix ends.
    pub fn matches(&self, path: &str) -> Option<usize> {
        let mut end = 0;
        let mut rest = path;
        for segment in &self.0 {
            let after = rest.strip_prefix('/')?;
            let len = after.find('/').unwrap_or(after.len());
            if !segment_matches(segment, &after[..len]) {
                return None;
            }
            end += 1 + len;
            rest = &after[len..];
        }
        Some(end)
    }
}

fn segment_matches(pattern: &Segment, segment: &str) -> bool {
    match pattern {
        Segment::Literal(literal) => literal == segment,
        Segment::Param(_) => !segment.is_empty(),
    }
}

/// How a route matches paths.
#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(Vec<Segment>),
    Prefix(PrefixMatcher),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => prefix.matches(path).is_some(),
            PathMatch::Exact(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                if segments.is_empty() {
                    return rest.is_empty();
                }
                let mut parts = rest.split('/');
                segments
                    .iter()
                    .all(|s| parts.next().is_some_and(|p| segment_matches(s, p)))
                    && parts.next().is_none()
            }
        }
    }

    /// Specificity: kind, then segments, then literal segments.
    fn rank(&self) -> (u8, usize, usize) {
        let literals = |s: &[Segment]| {
            s.iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count()
        };
        match self {
            PathMatch::Any => (0, 0, 0),
            PathMatch::Prefix(p) => (1, p.0.len(), literals(&p.0)),
            PathMatch::Exact(s) => (2, s.len(), literals(s)),
        }
    }
}

/// A header or query condition.
#[derive(Debug, Clone)]
enum Condition {
    Exact(String),
    Present(bool),
    Prefix(String),
    Regex(Regex),
}

impl Condition {
    fn compile(rule: &ValueMatch) -> Self {
        match rule {
            ValueMatch::Exact(value) => Condition::Exact(value.clone()),
            ValueMatch::Rule(ValueRule::Present(present)) => Condition::Present(*present),
            ValueMatch::Rule(ValueRule::Prefix(prefix)) => Condition::Prefix(prefix.clone()),
            ValueMatch::Rule(ValueRule::Regex(pattern)) => {
                Condition::Regex(Regex::new(&format!("^(?:{pattern})$")).expect("validated regex"))
            }
        }
    }

    /// Whether the values present (possibly none) meet the condition.
    fn holds<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Condition::Present(present) => values.next().is_some() == *present,
            Condition::Exact(expected) => values.any(|v| v == expected),
            Condition::Prefix(prefix) => values.any(|v| v.starts_with(prefix.as_str())),
            Condition::Regex(regex) => values.any(|v| regex.is_match(v)),
        }
    }
}

/// A compiled path rewrite.
#[derive(Debug, Clone)]
enum Rewriter {
    Strip(PrefixMatcher),
    Replace(PrefixMatcher, String),
    Regex(Regex, String),
}

impl Rewriter {
    fn compile(rewrite: &Rewrite) -> Self {
        match rewrite {
            Rewrite::StripPrefix(prefix) => Rewriter::Strip(PrefixMatcher::compile(prefix)),
            Rewrite::ReplacePrefix { from, to } => Rewriter::Replace(
                PrefixMatcher::compile(from),
                to.trim_end_matches('/').to_owned(),
            ),
            Rewrite::Regex {
                pattern,
                replacement,
            } => Rewriter::Regex(
                Regex::new(pattern).expect("validated regex"),
                replacement.clone(),
            ),
        }
    }

    /// The rewritten path, itself normalised.
    fn apply(&self, path: &str) -> Result<String, Error> {
        let rewritten = match self {
            Rewriter::Strip(prefix) => match prefix.matches(path) {
                Some(end) if end == path.len() => "/".to_owned(),
                Some(end) => path[end..].to_owned(),
                None => return Ok(path.to_owned()),
            },
            Rewriter::Replace(prefix, to) => match prefix.matches(path) {
                Some(end) => {
                    let rest = &path[end..];
                    if rest.is_empty() && to.is_empty() {
                        "/".to_owned()
                    } else {
                        format!("{to}{rest}")
                    }
                }
                None => return Ok(path.to_owned()),
            },
            Rewriter::Regex(regex, replacement) => {
                let replaced = regex.replace(path, replacement.as_str());
                if replaced.starts_with('/') {
                    replaced.into_owned()
                } else {
                    format!("/{replaced}")
                }
            }
        };
        match normalize::path(&rewritten) {
            Ok(normal) => Ok(normal.into_owned()),
            Err(error) => Err(Error::bad_request(
                "invalid_path",
                format!("rewritten path: {error}"),
            )),
        }
    }
}

// === impl Route ===

/// A compiled route.
pub struct Route {
    /// Route name, for metrics and logs.
    pub name: String,
    index: usize,
    priority: i32,
    hosts: HostSet,
    methods: Vec<Method>,
    path: PathMatch,
    headers: Vec<(HeaderName, Condition)>,
    query: Vec<(String, Condition)>,
    api: Option<Arc<str>>,
    version: Option<String>,
    rewrite: Option<Rewriter>,
    /// The upstream pool serving the route.
    pub upstream: Arc<Pool>,
    /// Send the client's Host upstream.
    pub preserve_host: bool,
    /// Body limit for the route, if it sets one.
    pub max_body: Option<u64>,
    /// Credentials the route requires (none: public).
    pub auth: Vec<raft::model::AuthMethod>,
    /// The route's TLS requirements.
    pub tls: raft::model::RouteTls,
    /// Scopes the caller's token must carry.
    pub scopes: Vec<String>,
    /// Header and body transformations (`None`: the route has none).
    pub transform: Option<Arc<super::transform::RouteTransform>>,
    /// Response composition (`None`: the route is proxied).
    pub aggregate: Option<Arc<super::aggregate::RouteAggregate>>,
    /// GraphQL endpoint (`None`: the route is proxied).
    pub graphql: Option<Arc<super::graphql::RouteGraphql>>,
    /// gRPC-JSON transcoding (`None`: the route is proxied).
    pub grpc: Option<Arc<super::grpc::RouteGrpc>>,
    /// The route's series.
    pub metrics: RouteMetrics,
    /// Which of the pipeline's stages act on the route, a bit each, worked
    /// out on its first request ([`Route::active_stages`]).
    active: OnceLock<u64>,
}

impl Route {
    /// The route's position in the configuration.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The stages that act on the route, a bit per stage: `work_out` the
    /// first time, remembered after (a route belongs to one snapshot, so
    /// what the stages decide from it and its snapshot does not change).
    pub fn active_stages(&self, work_out: impl FnOnce() -> u64) -> u64 {
        *self.active.get_or_init(work_out)
    }

    /// Compiles a validated route; `upstreams` holds its pool.
    pub fn compile(
        index: usize,
        route: &model::Route,
        upstreams: &HashMap<String, Arc<Pool>>,
        metrics: &Arc<Metrics>,
    ) -> Option<Self> {
        let m = &route.matcher;
        let path = match (&m.path, &m.path_prefix) {
            (Some(path), _) => PathMatch::Exact(PathPattern::parse(path).ok()?.segments),
            (None, Some(prefix)) => PathMatch::Prefix(PrefixMatcher::compile(prefix)),
            (None, None) => PathMatch::Any,
        };
        Some(Self {
            name: route.name.clone(),
            index,
            priority: route.priority,
            hosts: HostSet::compile(&m.hosts),
            methods: m
                .methods
                .iter()
                .filter_map(|name| Method::from_bytes(name.as_bytes()).ok())
                .collect(),
            path,
            headers: m
                .headers
                .iter()
                .filter_map(|(name, rule)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        Condition::compile(rule),
                    ))
                })
                .collect(),
            query: m
                .query
                .iter()
                .map(|(name, rule)| (name.clone(), Condition::compile(rule)))
                .collect(),
            api: route.api.as_deref().map(Arc::from),
            version: route.version.clone(),
            rewrite: route.rewrite.as_ref().map(Rewriter::compile),
            upstream: upstreams.get(&route.upstream)?.clone(),
            preserve_host: route.preserve_host,
            max_body: route.max_body.map(|b| b.bytes()),
            auth: route.auth.clone(),
            tls: route.tls,
            scopes: route.scopes.clone(),
            transform: super::transform::RouteTransform::compile(
                &route.transform,
                &route.name,
                metrics,
            )
            .map(Arc::new),
            aggregate: match &route.aggregate {
                None => None,
                Some(aggregate) => Some(Arc::new(super::aggregate::RouteAggregate::compile(
                    aggregate, route, upstreams, metrics,
                )?)),
            },
            graphql: match &route.graphql {
                None => None,
                Some(graphql) => Some(Arc::new(super::graphql::RouteGraphql::compile(
                    graphql, route, upstreams, metrics,
                )?)),
            },
            grpc: match &route.grpc {
                None => None,
                Some(grpc) => Some(Arc::new(super::grpc::RouteGrpc::compile(grpc)?)),
            },
            metrics: RouteMetrics::new(metrics, &route.name),
            active: OnceLock::new(),
        })
    }

    fn conditions(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// Everything but the host: method, path, headers, query, version.
    fn matches_request(
        &self,
        cx: &RequestCx,
        req: &Request,
        query: &mut Option<Vec<(String, String)>>,
    ) -> bool {
        // A CORS preflight matches the route of the method it asks about.
        if !self.methods.is_empty() {
            let preflight = super::cors::routing_method(req);
            if !self
                .methods
                .contains(preflight.as_ref().unwrap_or(req.method()))
            {
                return false;
            }
        }
        if !self.path.matches(&cx.path) {
            return false;
        }
        if let Some(api) = &self.api {
            let Some(selected) = &cx.api else {
                return false;
            };
            if selected.api != *api {
                return false;
            }
            if let Some(version) = &self.version
                && selected.version.as_bytes() != version.as_bytes()
            {
                return false;
            }
        }
        let headers = req.headers();
        for (name, condition) in &self.headers {
            let values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
            if !condition.holds(values) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let pairs = query.get_or_insert_with(|| {
                req.uri()
                    .query()
                    .map(|q| form_urlencoded_pairs(q).take(256).collect())
                    .unwrap_or_default()
            });
            for (name, condition) in &self.query {
                let values = pairs
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str());
                if !condition.holds(values) {
                    return false;
                }
            }
        }
        true
    }

    /// What the route's rewrite makes of `path` (`None`: it has none, and
    /// `path` goes upstream as it is).
    pub fn rewrite(&self, path: &str) -> Result<Option<String>, Error> {
        self.rewrite
            .as_ref()
            .map(|rewriter| rewriter.apply(path))
            .transpose()
    }
}

// === impl Router ===

struct Entry {
    route: Arc<Route>,
    host: Option<HostPattern>,
}

type SortKey = (
    Reverse<i32>,
    Reverse<(u8, usize)>,
    Reverse<(u8, usize, usize)>,
    Reverse<usize>,
    usize,
);

impl Entry {
    fn key(&self) -> SortKey {
        let r = &self.route;
        (
            Reverse(r.priority),
            Reverse(self.host.as_ref().map_or((0, 0), HostPattern::specificity)),
            Reverse(r.path.rank()),
            Reverse(r.conditions()),
            r.index,
        )
    }

    fn matches_host(&self, host: &str) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(host))
    }
}

/// Every route of a snapshot, ready for lookups.
#[derive(Default)]
pub struct Router {
    /// Entries for each exact host: its own plus every wildcard and any-host entry.
    by_host: HashMap<String, Vec<Entry>>,
    /// Wildcard and any-host entries.
    general: Vec<Entry>,
}

impl Router {
    /// Builds the lookup structure from compiled routes.
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut exact: Vec<Entry> = Vec::new();
        let mut general: Vec<Entry> = Vec::new();
        for route in routes {
            if route.hosts.0.is_empty() {
                general.push(Entry {
                    route: route.clone(),
                    host: None,
                });
            }
            for host in &route.hosts.0 {
                let entry = Entry {
                    route: route.clone(),
                    host: Some(host.clone()),
                };
                match host {
                    HostPattern::Exact(_) => exact.push(entry),
                    HostPattern::Wildcard(_) => general.push(entry),
                }
            }
        }
        let clone = |e: &Entry| Entry {
            route: e.route.clone(),
            host: e.host.clone(),
        };
        let mut by_host: HashMap<String, Vec<Entry>> = HashMap::new();
        for entry in exact {
            let Some(HostPattern::Exact(host)) = &entry.host else {
                continue;
            };
            let bucket = by_host
                .entry(host.clone())
                .or_insert_with(|| general.iter().map(clone).collect());
            bucket.push(entry);
        }
        general.sort_by_key(Entry::key);
        for bucket in by_host.values_mut() {
            bucket.sort_by_key(Entry::key);
        }
        Self { by_host, general }
    }

    /// The winning route for the request, if any.
    pub fn find(&self, cx: &RequestCx, req: &Request) -> Option<&Arc<Route>> {
        let entries = self.by_host.get(cx.host.as_str()).unwrap_or(&self.general);
        let mut query = None;
        entries
            .iter()
            .find(|e| e.matches_host(&cx.host) && e.route.matches_request(cx, req, &mut query))
            .map(|e| &e.route)
    }
}

/// The `route` stage.
pub struct RouteStage;

impl Stage for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        // The route is found and rewrites under a shared borrow of `cx`
        // (the snapshot's `Arc` is not cloned for it); `cx` takes both after.
        let Some(route) = cx.snapshot.router.find(cx, req) else {
            return ready(Err(Kind::NoRoute.into()));
        };
        let (route, rewritten) = (route.clone(), route.rewrite(&cx.path));
        ready(rewritten.map(|rewritten| {
            cx.rewritten = rewritten;
            cx.route = Some(route);
            Flow::Continue
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let p = PrefixMatcher::compile("/api");
        assert_eq!(p.matches("/api"), Some(4));
        assert_eq!(p.matches("/api/"), Some(4));
        assert_eq!(p.matches("/api/x"), Some(4));
        assert_eq!(p.matches("/apix"), None);
        assert_eq!(p.matches("/"), None);
        let p = PrefixMatcher::compile("/t/{tenant}/");
        assert_eq!(p.matches("/t/acme/orders"), Some(7));
        assert_eq!(p.matches("/t//orders"), None);
        assert_eq!(PrefixMatcher::compile("/").matches("/anything"), Some(0));
    }

    #[test]
    fn exact_paths() {
        let exact = |p: &str| PathMatch::Exact(PathPattern::parse(p).unwrap().segments);
        assert!(exact("/").matches("/"));
        assert!(!exact("/").matches("/a"));
        assert!(exact("/users/{id}").matches("/users/42"));
        assert!(!exact("/users/{id}").matches("/users/42/orders"));
        assert!(!exact("/users/{id}").matches("/users/"));
        assert!(!exact("/users").matches("/users/"));
        assert!(exact("/users/").matches("/users/"));
    }

    #[test]
    fn rewrites() {
        let strip = Rewriter::compile(&Rewrite::StripPrefix("/api/v2".into()));
        assert_eq!(strip.apply("/api/v2/users/7").unwrap(), "/users/7");
        assert_eq!(strip.apply("/api/v2").unwrap(), "/");
        assert_eq!(strip.apply("/api/v22/x").unwrap(), "/api/v22/x");
        let replace = Rewriter::compile(&Rewrite::ReplacePrefix {
            from: "/old".into(),
            to: "/new/base/".into(),
        });
        assert_eq!(replace.apply("/old/a").unwrap(), "/new/base/a");
        assert_eq!(replace.apply("/old").unwrap(), "/new/base");
        let root = Rewriter::compile(&Rewrite::ReplacePrefix {
            from: "/old".into(),
            to: "/".into(),
        });
        assert_eq!(root.apply("/old").unwrap(), "/");
        assert_eq!(root.apply("/old/a").unwrap(), "/a");
        let regex = Rewriter::compile(&Rewrite::Regex {
            pattern: r"^/u/(\d+)/(?P<rest>.*)$".into(),
            replacement: "/users/$1/${rest}".into(),
        });
        assert_eq!(regex.apply("/u/42/orders").unwrap(), "/users/42/orders");
        assert_eq!(regex.apply("/x").unwrap(), "/x");
    }

    #[test]
    fn conditions() {
        let holds = |c: Condition, values: &[&str]| c.holds(values.iter().copied());
        assert!(holds(Condition::Exact("a".into()), &["b", "a"]));
        assert!(!holds(Condition::Exact("a".into()), &[]));
        assert!(holds(Condition::Present(false), &[]));
        assert!(!holds(Condition::Present(false), &["x"]));
        assert!(holds(Condition::Prefix("ab".into()), &["abc"]));
        let regex = Condition::compile(&ValueMatch::Rule(ValueRule::Regex("[0-9]+".into())));
        assert!(holds(regex.clone(), &["123"]));
        assert!(!holds(regex, &["12a"]), "regex conditions are anchored");
    }
}
