//! The `limit` stage: every rate limit that applies to a request is checked
//! in turn: the limits of the caller's plan, then the route's own, the
//! route's leaky bucket (if any) last, since it makes the request wait. The
//! first that refuses answers 429 with `Retry-After`, and the limits checked
//! before it take their charge back, so a refused request costs nothing.
//!
//! Keys (see `raft::model::limit::KeyPart`) are built into one buffer per
//! request: each part is a tag byte, a length and the value, so two
//! different combinations never make the same key. IPv6 clients count by
//! their /64; a header value counts by its first 256 bytes.
//!
//! Responses, admitted or refused, carry the IETF headers
//! (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy` lists each
//! limit checked as `"name";q=<quota>;w=<window seconds>`, and `RateLimit`
//! gives `"name";r=<remaining>;t=<seconds to reset>`; with
//! `rate_limit.legacy_headers`, `X-RateLimit-Limit/-Remaining/-Reset` (reset
//! in seconds from now) describe the tightest of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use raft::model::limit::{Algorithm as Kind, KeyPart};
use raft::model::{GatewayConfig, Limit as LimitConfig, RateLimitSettings};

use super::{Flow, Request, RequestCx, Response, Stage, Step, ready, wait};
use crate::error::{Error, Kind as ErrorKind};
use crate::metrics::Metrics;
use crate::ratelimit::clock::{Nanos, ceil_seconds};
use crate::ratelimit::leaky_bucket::Admission;
use crate::ratelimit::{Check, Decision, Limiter, Registry, Spec};

/// A header value counts by at most this many bytes.
const MAX_HEADER_KEY: usize = 256;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One compiled limit.
pub struct Limit {
    /// Its name in headers.
    pub name: Arc<str>,
    /// `plan:<plan>/<name>` or `route:<route>/<name>`: its identity in the
    /// registry and its `limit` label.
    pub id: String,
    key: Vec<KeyPart>,
    limiter: Arc<Limiter>,
    /// `"name";q=..;w=..`, rendered once.
    policy: String,
    quota: u64,
}

impl Limit {
    fn compile(
        owner: &str,
        index: usize,
        config: &LimitConfig,
        registry: &Registry,
    ) -> Option<Self> {
        let spec = Spec::compile(config)?;
        let name: Arc<str> = match &config.name {
            Some(name) => name.as_str().into(),
            None => format!("{}-{index}", owner.rsplit(':').next().unwrap_or(owner)).into(),
        };
        let id = format!("{owner}/{name}");
        let limiter = registry.limiter(&id, spec, config.scope);
        Some(Self::new(name, id, config.key.0.clone(), limiter))
    }

    /// A limit named `name` (identity `id`) counting by `key` in `limiter`,
    /// with its `RateLimit-Policy` item rendered once.
    fn new(name: Arc<str>, id: String, key: Vec<KeyPart>, limiter: Arc<Limiter>) -> Self {
        let policy = limiter.policy();
        Self {
            policy: format!(
                "\"{name}\";q={};w={}",
                policy.quota,
                ceil_seconds(policy.window).max(1)
            ),
            quota: policy.quota,
            name,
            id,
            key,
            limiter,
        }
    }
}

/// Decision counters of one limit on one route.
struct Outcomes {
    allowed: Counter,
    rejected: Counter,
    queued: Counter,
}

impl Outcomes {
    fn new(metrics: &Metrics, route: &str, limit: &Limit) -> Self {
        let counter = |outcome: &str| {
            metrics.counter(
                "meridian_ratelimit_decisions_total",
                &[
                    ("route", route.to_owned()),
                    ("limit", limit.id.clone()),
                    ("outcome", outcome.to_owned()),
                ],
            )
        };
        Self {
            allowed: counter("allowed"),
            rejected: counter("rejected"),
            queued: counter("queued"),
        }
    }
}

/// The limits one route checks: its own, and each plan's.
#[derive(Default)]
struct RouteLimits {
    own: Vec<(Arc<Limit>, Outcomes)>,
    plans: HashMap<String, Vec<(Arc<Limit>, Outcomes)>>,
}

/// The compiled limits of a configuration.
#[derive(Default)]
pub struct Limits {
    /// By route index (the route's position in the configuration).
    routes: Vec<RouteLimits>,
    settings: RateLimitSettings,
}

impl Limits {
    /// The limits that apply on `route`, unless it has none.
    fn of(&self, route: &super::route::Route) -> Option<&RouteLimits> {
        self.routes
            .get(route.index())
            .filter(|limits| !(limits.own.is_empty() && limits.plans.is_empty()))
    }

    /// Compiles the limits of `config`, taking their state from `registry`.
    pub fn compile(config: &GatewayConfig, registry: &Registry, metrics: &Metrics) -> Self {
        let plans: Vec<(String, Vec<Arc<Limit>>)> = config
            .plans
            .iter()
            .map(|(plan, definition)| {
                let owner = format!("plan:{plan}");
                let limits = definition
                    .limits
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| Limit::compile(&owner, i, l, registry))
                    .map(Arc::new)
                    .collect();
                (plan.clone(), limits)
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let owner = format!("route:{}", route.name);
                let mut own: Vec<_> = route.limits.iter().enumerate().collect();
                // The leaky bucket makes the request wait: check it last.
                own.sort_by_key(|(_, l)| l.algorithm == Kind::LeakyBucket);
                let own = own
                    .into_iter()
                    .filter_map(|(i, l)| Limit::compile(&owner, i, l, registry))
                    .map(|limit| {
                        let outcomes = Outcomes::new(metrics, &route.name, &limit);
                        (Arc::new(limit), outcomes)
                    })
                    .collect();
                let plans = if route.auth.is_empty() {
                    HashMap::new()
                } else {
                    plans
                        .iter()
                        .filter(|(_, limits)| !limits.is_empty())
                        .map(|(plan, limits)| {
                            let limits = limits
                                .iter()
                                .map(|limit| {
                                    (limit.clone(), Outcomes::new(metrics, &route.name, limit))
                                })
                                .collect();
                            (plan.clone(), limits)
                        })
                        .collect()
                };
                RouteLimits { own, plans }
            })
            .collect();
        Self {
            routes,
            settings: config.rate_limit.clone(),
        }
    }
}

// === report ===

/// What the limits said about a request, for the response headers.
#[derive(Default)]
pub struct Report {
    items: Vec<Item>,
}

struct Item {
    limit: Arc<Limit>,
    remaining: u64,
    reset: Nanos,
}

impl Report {
    fn write(&self, settings: &RateLimitSettings, headers: &mut HeaderMap) {
        if settings.ietf_headers {
            let policy = self
                .items
                .iter()
                .map(|item| item.limit.policy.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let state = self
                .items
                .iter()
                .map(|item| {
                    format!(
                        "\"{}\";r={};t={}",
                        item.limit.name,
                        item.remaining,
                        ceil_seconds(item.reset)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            for (name, value) in [(&RATELIMIT_POLICY, policy), (&RATELIMIT, state)] {
                if let Ok(value) = HeaderValue::try_from(value) {
                    headers.insert(name.clone(), value);
                }
            }
        }
        if settings.legacy_headers
            && let Some(tightest) = self.items.iter().min_by_key(|item| item.remaining)
        {
            for (name, value) in [
                (&X_LIMIT, tightest.limit.quota),
                (&X_REMAINING, tightest.remaining),
                (&X_RESET, ceil_seconds(tightest.reset)),
            ] {
                headers.insert(name.clone(), HeaderValue::from(value));
            }
        }
    }
}

// === the stage ===

/// Checks the rate limits of the route and the caller's plan.
pub struct LimitStage {
    registry: Arc<Registry>,
}

impl LimitStage {
    /// The stage, reading time from `registry`'s clock.
    pub fn new(registry: &Arc<Registry>) -> Self {
        Self {
            registry: registry.clone(),
        }
    }

    /// Charges every limit that applies, queueing or refusing as they say.
    async fn charge(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        let Some(route) = cx.route.clone() else {
            return Ok(Flow::Continue);
        };
        let snapshot = cx.snapshot.clone();
        let Some(limits) = snapshot.limits.of(&route) else {
            return Ok(Flow::Continue);
        };
        let plan = cx
            .principal
            .as_ref()
            .and_then(|p| p.consumer.as_ref())
            .and_then(|c| c.plan.as_deref())
            .and_then(|plan| limits.plans.get(plan));
        let applicable = plan.into_iter().flatten().chain(&limits.own);
        if limits.own.is_empty() && plan.is_none() {
            return Ok(Flow::Continue);
        }
        let now = self.registry.clock().now();
        let mut keys = Vec::with_capacity(64);
        let mut charged: Vec<Charged<'_>> = Vec::new();
        let mut report = Report::default();
        let mut refused = None;
        let mut wait = None;
        for (limit, outcomes) in applicable {
            let start = keys.len();
            write_key(&limit.key, cx, req.headers(), &mut keys);
            let key = start..keys.len();
            let check = match limit.limiter.decide(&keys[key.clone()], now).await {
                Ok(check) => check,
                Err(error) => {
                    outcomes.rejected.increment(1);
                    refused = Some(Refusal::Unavailable(limit.clone(), error));
                    break;
                }
            };
            let fallback = matches!(check, Check::Fallback(_));
            match check {
                Check::Decided(decision) | Check::Fallback(decision) => {
                    report.items.push(Item {
                        limit: limit.clone(),
                        remaining: decision.remaining,
                        reset: if decision.allowed {
                            decision.reset
                        } else {
                            decision.retry_after
                        },
                    });
                    if decision.allowed {
                        outcomes.allowed.increment(1);
                        charged.push(Charged {
                            limiter: &limit.limiter,
                            key,
                            decision,
                            item: report.items.len() - 1,
                            fallback,
                        });
                    } else {
                        outcomes.rejected.increment(1);
                        refused = Some(Refusal::Limited(limit.clone(), decision.retry_after));
                        break;
                    }
                }
                Check::Leaky(Admission::Now) => {
                    outcomes.allowed.increment(1);
                    report.items.push(Item {
                        limit: limit.clone(),
                        remaining: limit.quota,
                        reset: 0,
                    });
                }
                Check::Leaky(Admission::Wait { turn, at_most }) => {
                    outcomes.queued.increment(1);
                    report.items.push(Item {
                        limit: limit.clone(),
                        remaining: 0,
                        reset: at_most,
                    });
                    wait = Some((turn, outcomes));
                }
                Check::Leaky(Admission::Full { retry_after, .. }) => {
                    outcomes.rejected.increment(1);
                    report.items.push(Item {
                        limit: limit.clone(),
                        remaining: 0,
                        reset: retry_after,
                    });
                    refused = Some(Refusal::Limited(limit.clone(), retry_after));
                    break;
                }
            }
        }
        if let Some(refusal) = refused {
            for charge in &charged {
                charge
                    .limiter
                    .refund(&keys[charge.key.clone()], &charge.decision, charge.fallback)
                    .await;
                report.items[charge.item].remaining += 1;
            }
            cx.rate_limit = Some(Box::new(report));
            return Err(match refusal {
                Refusal::Limited(limit, retry_after) => Error::new(ErrorKind::RateLimited {
                    limit: limit.name.clone(),
                    retry_after: ceil_seconds(retry_after).max(1),
                }),
                Refusal::Unavailable(limit, error) => Error::with_source(
                    ErrorKind::RateLimitUnavailable {
                        limit: limit.name.clone(),
                    },
                    error,
                ),
            });
        }
        cx.rate_limit = Some(Box::new(report));
        if let Some((turn, outcomes)) = wait {
            // Dropping `turn` (the client went away, this future with it)
            // takes the request out of the queue.
            if turn.await.is_err() {
                outcomes.rejected.increment(1);
                return Err(Error::new(ErrorKind::Overloaded));
            }
            outcomes.allowed.increment(1);
        }
        Ok(Flow::Continue)
    }

    /// Adds the rate-limit headers of what `charge` decided.
    fn report(&self, cx: &mut RequestCx, rsp: &mut Response) -> Result<(), Error> {
        if let Some(report) = &cx.rate_limit {
            report.write(&cx.snapshot.limits.settings, rsp.headers_mut());
        }
        Ok(())
    }
}

/// Why a request is refused.
enum Refusal {
    /// A limit is exhausted, for this long.
    Limited(Arc<Limit>, Nanos),
    /// A `redis` limit that fails closed could not ask Redis.
    Unavailable(Arc<Limit>, crate::ratelimit::redis::Error),
}

/// A limit that admitted the request and may have to take it back.
struct Charged<'a> {
    limiter: &'a Limiter,
    key: std::ops::Range<usize>,
    decision: Decision,
    /// Its entry in the report.
    item: usize,
    /// A `redis` limit decided locally (Redis could not be asked).
    fallback: bool,
}

impl Stage for LimitStage {
    fn name(&self) -> &'static str {
        "limit"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        if cx
            .route
            .as_ref()
            .is_none_or(|route| cx.snapshot.limits.of(route).is_none())
        {
            return ready(Ok(Flow::Continue));
        }
        wait(self.charge(cx, req))
    }

    fn on_response<'a>(&'a self, cx: &'a mut RequestCx, rsp: &'a mut Response) -> Step<'a, ()> {
        ready(self.report(cx, rsp))
    }

    fn responds(&self) -> bool {
        true
    }

    fn acts_on(&self, route: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        snapshot.limits.of(route).is_some()
    }
}

// === keys ===

/// Appends the key of `parts` for this request to `out`.
fn write_key(parts: &[KeyPart], cx: &RequestCx, headers: &HeaderMap, out: &mut Vec<u8>) {
    let principal = cx.principal.as_ref();
    for part in parts {
        match part {
            KeyPart::Consumer => {
                if let Some(consumer) = principal.and_then(|p| p.consumer.as_ref()) {
                    push(out, b'c', consumer.name.as_bytes());
                } else if let Some(subject) = principal
                    .and_then(|p| p.identity.as_ref())
                    .and_then(|i| i.subject.as_deref())
                {
                    push(out, b's', subject.as_bytes());
                } else {
                    push_ip(out, cx.client_ip);
                }
            }
            KeyPart::ApiKey => match principal.and_then(|p| p.key_id.as_deref()) {
                Some(id) => push(out, b'k', id.as_bytes()),
                None => push_ip(out, cx.client_ip),
            },
            KeyPart::Ip => push_ip(out, cx.client_ip),
            KeyPart::Route => push(
                out,
                b'r',
                cx.route.as_ref().map_or(&b""[..], |r| r.name.as_bytes()),
            ),
            KeyPart::Header(name) => {
                let value = headers
                    .get(name.as_str())
                    .map_or(&b""[..], |v| v.as_bytes());
                push(out, b'h', &value[..value.len().min(MAX_HEADER_KEY)]);
            }
        }
    }
}

fn push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => push(out, b'4', &v4.octets()),
        IpAddr::V6(v6) => push(out, b'6', &v6.octets()[..8]),
    }
}

#[cfg(test)]
mod tests;
