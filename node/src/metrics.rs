//! Prometheus metrics of one node.
//!
//! Each node owns its recorder (several nodes can share a test process) and
//! registers handles once: global ones here, per-route and per-upstream ones
//! when a snapshot is compiled. The request path only increments handles;
//! it never formats a metric name or hashes a label set.
//!
//! The two latency histograms, recorded for every request, are this
//! module's own [`Latency`]: a count per fixed bucket and a sum, in
//! constant memory. (The exporter's histograms queue every sample until the
//! next scrape or upkeep, about 270 instructions a sample here.) Each
//! thread that records has a copy of its own, which only it writes (see
//! the `writer` module): a sample is two loads and two stores, where adding to
//! shared counters takes two locked instructions, each about 5 ns on this
//! project's machines and more under contention. `/metrics` renders the
//! copies' sums after the exporter's series.
//!
//! Series (all prefixed `meridian_`):
//! - `requests_total{route,method,status}`: status is the class, `2xx`…`5xx`;
//! - `request_duration_seconds{route}`: histogram, until the response ends;
//! - `upstream_request_duration_seconds{upstream}`: histogram, to the response head;
//! - `upstream_errors_total{upstream,kind}`; `upstream_retries_total{upstream}`;
//!   `upstream_retry_budget_exhausted_total{upstream}`;
//! - `upstream_target_healthy{upstream,target}`; `upstream_ejections_total{upstream,target}`;
//! - `client_errors_total{code}`: requests refused before a route was chosen;
//! - `auth_failures_total{reason}`: refused credentials;
//! - `open_connections{listener}`, `connections_total{listener}`;
//! - `config_version`, `config_reloads_total{result}`;
//! - `access_log_dropped_total`;
//! - `ratelimit_decisions_total{route,limit,outcome}`: outcome `allowed`,
//!   `rejected` or `queued` (a leaky bucket made the request wait);
//!   `ratelimit_keys{limit}`; `ratelimit_evictions_total{limit,reason}`:
//!   reason `idle` or `capacity` (see `ratelimit::Store`);
//! - `raft_term`, `raft_is_leader`, `raft_last_log_index`, `raft_applied_index`,
//!   `raft_last_apply_age_seconds`, `raft_leader_silence_seconds`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METADATA: Metadata<'static> = Metadata::new("meridian", Level::INFO, Some(module_path!()));

/// What a series is, for its description.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series a node exports, with the help text `/metrics` shows for it
/// (`promtool check metrics` wants one for each). A `meridian_…` name used in
/// the code without an entry here fails the `every_series_is_described` test.
const SERIES: &[(&str, Kind, &str)] = &[
    (
        "meridian_requests_total",
        Kind::Counter,
        "Requests answered, by route, method and status class.",
    ),
    (
        "meridian_request_duration_seconds",
        Kind::Histogram,
        "Time from request head to the end of the response, by route.",
    ),
    (
        "meridian_client_errors_total",
        Kind::Counter,
        "Requests refused before routing, by code.",
    ),
    (
        "meridian_auth_failures_total",
        Kind::Counter,
        "Refused credentials, by reason.",
    ),
    (
        "meridian_auth_cache_total",
        Kind::Counter,
        "Authentication cache lookups and evictions, by cache and result.",
    ),
    (
        "meridian_auth_cache_entries",
        Kind::Gauge,
        "Entries in an authentication cache.",
    ),
    (
        "meridian_introspection_calls_total",
        Kind::Counter,
        "Token introspection calls, by endpoint and result.",
    ),
    (
        "meridian_jwks_fetches_total",
        Kind::Counter,
        "JWKS fetches, by issuer and result.",
    ),
    (
        "meridian_jwks_keys",
        Kind::Gauge,
        "Keys in an issuer's JWKS.",
    ),
    (
        "meridian_jwks_consecutive_failures",
        Kind::Gauge,
        "Failed JWKS fetches in a row, by issuer.",
    ),
    (
        "meridian_upstream_request_duration_seconds",
        Kind::Histogram,
        "Time from sending a request upstream to its response head, by upstream.",
    ),
    (
        "meridian_upstream_errors_total",
        Kind::Counter,
        "Failed upstream attempts, by upstream and kind.",
    ),
    (
        "meridian_upstream_retries_total",
        Kind::Counter,
        "Retried upstream attempts, by upstream.",
    ),
    (
        "meridian_fallback_requests_total",
        Kind::Counter,
        "Requests forwarded to another region's gateway, by upstream, region and outcome (served, failed).",
    ),
    (
        "meridian_fallback_active",
        Kind::Gauge,
        "1 while an upstream's traffic goes to its fallback regions first, by upstream.",
    ),
    (
        "meridian_fallback_served_total",
        Kind::Counter,
        "Requests other regions forwarded to this node, by upstream and the region they came from.",
    ),
    (
        "meridian_upstream_retry_budget_exhausted_total",
        Kind::Counter,
        "Retries refused because the upstream's retry budget was spent.",
    ),
    (
        "meridian_upstream_target_healthy",
        Kind::Gauge,
        "1 while an upstream target is in service, 0 while unhealthy or ejected.",
    ),
    (
        "meridian_upstream_ejections_total",
        Kind::Counter,
        "Outlier ejections of an upstream target.",
    ),
    (
        "meridian_aggregate_part_failures_total",
        Kind::Counter,
        "Failed parts of aggregate routes, by route and part.",
    ),
    (
        "meridian_ratelimit_decisions_total",
        Kind::Counter,
        "Rate-limit decisions, by route, limit and outcome.",
    ),
    (
        "meridian_ratelimit_keys",
        Kind::Gauge,
        "Keys a limit tracks.",
    ),
    (
        "meridian_ratelimit_evictions_total",
        Kind::Counter,
        "Keys a limit forgot: idle ones, or live ones at the key cap.",
    ),
    (
        "meridian_ratelimit_redis_failures_total",
        Kind::Counter,
        "Rate-limit decisions the Redis store could not make, by limit.",
    ),
    (
        "meridian_region_healthy",
        Kind::Gauge,
        "This node's view of each region: 1 while one of its nodes reports that it serves.",
    ),
    (
        "meridian_region_report_age_seconds",
        Kind::Gauge,
        "Age of the freshest health report from each region.",
    ),
    (
        "meridian_anycast_announced",
        Kind::Gauge,
        "1 while this node announces its anycast prefix, 0 while withdrawn.",
    ),
    (
        "meridian_anycast_commands_total",
        Kind::Counter,
        "Anycast announce and withdraw commands run, by action and result.",
    ),
    (
        "meridian_dns_queries_total",
        Kind::Counter,
        "Queries the built-in DNS responder answered, by response code.",
    ),
    (
        "meridian_dns_resolve_errors_total",
        Kind::Counter,
        "Failed resolutions of upstream target names, by upstream and name.",
    ),
    (
        "meridian_graphql_field_failures_total",
        Kind::Counter,
        "GraphQL fields whose upstream call failed, by route.",
    ),
    (
        "meridian_upstream_targets",
        Kind::Gauge,
        "Targets an upstream's pool holds (after DNS resolution).",
    ),
    (
        "meridian_ratelimit_sync_lag_seconds",
        Kind::Gauge,
        "Age of the latest global rate-limit counter batch from each peer.",
    ),
    (
        "meridian_ratelimit_counters_sent_total",
        Kind::Counter,
        "Global rate-limit counters delivered to each peer.",
    ),
    (
        "meridian_ratelimit_counters_received_total",
        Kind::Counter,
        "Global rate-limit counters received from each peer.",
    ),
    (
        "meridian_ratelimit_sync_bytes_total",
        Kind::Counter,
        "Bytes of global rate-limit counter batches, by direction.",
    ),
    (
        "meridian_ratelimit_sync_failures_total",
        Kind::Counter,
        "Counter batches a peer did not take, by peer.",
    ),
    (
        "meridian_ratelimit_sync_batches_dropped_total",
        Kind::Counter,
        "Counter batches dropped on purpose (fault injection).",
    ),
    (
        "meridian_ratelimit_global_bound",
        Kind::Gauge,
        "Computed worst-case overshoot of each global limit, in requests.",
    ),
    (
        "meridian_ratelimit_partition_decisions_total",
        Kind::Counter,
        "Global limit decisions made while a peer was presumed partitioned away.",
    ),
    (
        "meridian_ip_denied_total",
        Kind::Counter,
        "Requests refused by IP allow and deny lists, by scope and rule.",
    ),
    (
        "meridian_waf_matches_total",
        Kind::Counter,
        "WAF rule matches, by rule and mode.",
    ),
    (
        "meridian_cors_requests_total",
        Kind::Counter,
        "CORS requests, by kind and result.",
    ),
    (
        "meridian_transform_headers_dropped_total",
        Kind::Counter,
        "Rendered header values dropped as invalid by a transformation, by route and direction.",
    ),
    (
        "meridian_slow_request_bodies_total",
        Kind::Counter,
        "Request bodies the client sent too slowly, by reason.",
    ),
    (
        "meridian_open_connections",
        Kind::Gauge,
        "Open client connections, by listener.",
    ),
    (
        "meridian_connections_total",
        Kind::Counter,
        "Accepted client connections, by listener.",
    ),
    (
        "meridian_connections_closed_total",
        Kind::Counter,
        "Client connections the node closed, by listener and reason.",
    ),
    (
        "meridian_requests_shed_total",
        Kind::Counter,
        "Requests refused with 503 at the in-flight cap, by listener.",
    ),
    (
        "meridian_in_flight_requests",
        Kind::Gauge,
        "Requests in flight, by listener.",
    ),
    (
        "meridian_tls_handshakes_total",
        Kind::Counter,
        "Completed TLS handshakes on the proxy listener.",
    ),
    (
        "meridian_tls_handshake_failures_total",
        Kind::Counter,
        "Failed TLS handshakes, by reason.",
    ),
    (
        "meridian_tls_client_cert_refusals_total",
        Kind::Counter,
        "Refused client certificates, by reason.",
    ),
    (
        "meridian_tls_crl_fetch_failures_total",
        Kind::Counter,
        "Failed CRL downloads.",
    ),
    (
        "meridian_tls_reloads_total",
        Kind::Counter,
        "Reloads of certificate, key and CRL files, by kind and result.",
    ),
    (
        "meridian_config_version",
        Kind::Gauge,
        "Version of the gateway configuration in force.",
    ),
    (
        "meridian_config_reloads_total",
        Kind::Counter,
        "Gateway configuration loads, by result.",
    ),
    (
        "meridian_access_log_dropped_total",
        Kind::Counter,
        "Access-log lines dropped because the writer fell behind.",
    ),
    ("meridian_raft_term", Kind::Gauge, "Current raft term."),
    (
        "meridian_raft_is_leader",
        Kind::Gauge,
        "1 on the raft leader, 0 elsewhere.",
    ),
    (
        "meridian_raft_last_log_index",
        Kind::Gauge,
        "Index of the last entry in this node's raft log.",
    ),
    (
        "meridian_raft_applied_index",
        Kind::Gauge,
        "Index of the last raft entry applied on this node.",
    ),
    (
        "meridian_raft_last_apply_age_seconds",
        Kind::Gauge,
        "Seconds since this node last applied a raft entry.",
    ),
    (
        "meridian_raft_leader_silence_seconds",
        Kind::Gauge,
        "Seconds since this node last heard from a raft leader.",
    ),
];

/// The node's metric registry and its always-present series.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Open client connections on the proxy listener.
    pub open_connections: Gauge,
    /// Accepted client connections on the proxy listener.
    pub connections_total: Counter,
    /// Open client connections on the HTTPS proxy listener.
    pub open_connections_tls: Gauge,
    /// Accepted client connections on the HTTPS proxy listener.
    pub connections_total_tls: Counter,
    /// Version of the gateway configuration in force.
    pub config_version: Gauge,
    /// Configuration swaps that succeeded.
    pub config_reloads_ok: Counter,
    /// Configuration loads that were refused.
    pub config_reloads_failed: Counter,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Raft: current term.
    pub raft_term: Gauge,
    /// Raft: 1 on the leader.
    pub raft_leader: Gauge,
    /// Raft: last log index.
    pub raft_last_log: Gauge,
    /// Raft: last applied index.
    pub raft_applied: Gauge,
    /// Seconds since the last entry was applied on this node.
    pub raft_apply_age: Gauge,
    /// Seconds since this node last heard from a leader.
    pub raft_leader_silence: Gauge,
    /// The latency histograms, by family and labels, in registration order.
    latencies: Mutex<Vec<LatencySeries>>,
    /// Gauges and counters set from counts kept elsewhere, run before
    /// each render.
    samplers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// The tallied counters, by key (see [`Metrics::tally`]).
    tallies: Mutex<Vec<(Key, Arc<Tally>)>>,
    /// Requests refused before routing, by error code.
    client_errors: CodeCounters,
    /// Refused credentials, by reason.
    auth_failures: CodeCounters,
}

/// Counters keyed by a small static set of error codes, made on first use.
#[derive(Default)]
struct CodeCounters(std::sync::Mutex<Vec<(&'static str, Counter)>>);

impl CodeCounters {
    fn get(&self, code: &'static str, make: impl FnOnce() -> Counter) -> Counter {
        let mut counters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = counters.iter().find(|(c, _)| *c == code) {
            return counter.clone();
        }
        let counter = make();
        counters.push((code, counter.clone()));
        counter
    }
}

impl Metrics {
    /// A fresh registry with the node-wide series registered and described.
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        for (name, kind, help) in SERIES {
            let (name, help) = ((*name).into(), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                // Rendered here, with their help (see `Latency`).
                Kind::Histogram => {}
            }
        }
        let listener = || vec![Label::new("listener", "proxy")];
        let metrics = Self {
            open_connections: recorder.register_gauge(
                &Key::from_parts("meridian_open_connections", listener()),
                &METADATA,
            ),
            connections_total: recorder.register_counter(
                &Key::from_parts("meridian_connections_total", listener()),
                &METADATA,
            ),
            open_connections_tls: recorder.register_gauge(
                &Key::from_parts(
                    "meridian_open_connections",
                    vec![Label::new("listener", "proxy-tls")],
                ),
                &METADATA,
            ),
            connections_total_tls: recorder.register_counter(
                &Key::from_parts(
                    "meridian_connections_total",
                    vec![Label::new("listener", "proxy-tls")],
                ),
                &METADATA,
            ),
            config_version: recorder
                .register_gauge(&Key::from_name("meridian_config_version"), &METADATA),
            config_reloads_ok: recorder.register_counter(
                &Key::from_parts(
                    "meridian_config_reloads_total",
                    vec![Label::new("result", "ok")],
                ),
                &METADATA,
            ),
            config_reloads_failed: recorder.register_counter(
                &Key::from_parts(
                    "meridian_config_reloads_total",
                    vec![Label::new("result", "rejected")],
                ),
                &METADATA,
            ),
            access_log_dropped: recorder.register_counter(
                &Key::from_name("meridian_access_log_dropped_total"),
                &METADATA,
            ),
            raft_term: recorder.register_gauge(&Key::from_name("meridian_raft_term"), &METADATA),
            raft_leader: recorder
                .register_gauge(&Key::from_name("meridian_raft_is_leader"), &METADATA),
            raft_last_log: recorder
                .register_gauge(&Key::from_name("meridian_raft_last_log_index"), &METADATA),
            raft_applied: recorder
                .register_gauge(&Key::from_name("meridian_raft_applied_index"), &METADATA),
            raft_apply_age: recorder.register_gauge(
                &Key::from_name("meridian_raft_last_apply_age_seconds"),
                &METADATA,
            ),
            raft_leader_silence: recorder.register_gauge(
                &Key::from_name("meridian_raft_leader_silence_seconds"),
                &METADATA,
            ),
            latencies: Mutex::default(),
            samplers: Mutex::default(),
            tallies: Mutex::default(),
            client_errors: Default::default(),
            auth_failures: Default::default(),
            recorder,
            handle,
        };
        // Make the always-present series visible from the first scrape.
        metrics.config_reloads_ok.increment(0);
        metrics.config_reloads_failed.increment(0);
        metrics.access_log_dropped.increment(0);
        Arc::new(metrics)
    }

    /// Registers (or finds) a counter.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// Registers (or finds) a gauge.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// Registers (or finds) a latency histogram.
    pub fn latency(&self, name: &'static str, labels: &[(&'static str, String)]) -> Arc<Latency> {
        let mut text = String::new();
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(label);
            text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        let mut latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = latencies
            .iter()
            .find(|series| series.name == name && series.labels == text)
        {
            return series.latency.clone();
        }
        let latency = Arc::new(Latency::default());
        latencies.push(LatencySeries {
            name,
            labels: text,
            latency: latency.clone(),
        });
        latency
    }

    /// Registers (or finds) a counter that the request path counts in a
    /// [`Tally`] (no atomic operation for a thread with a writer slot):
    /// the registry's counter is set to the tally's total before each
    /// render.
    pub fn tally(&self, name: &'static str, labels: &[(&'static str, String)]) -> Arc<Tally> {
        let key = key(name, labels);
        let mut tallies = crate::sync::lock(&self.tallies);
        if let Some((_, tally)) = tallies.iter().find(|(known, _)| *known == key) {
            return tally.clone();
        }
        let tally = Arc::new(Tally::default());
        let counter = self.recorder.register_counter(&key, &METADATA);
        let sampled = tally.clone();
        self.sample(move || counter.absolute(sampled.total()));
        tallies.push((key, tally.clone()));
        tally
    }

    /// Counts a request refused before routing.
    pub fn client_error(&self, code: &'static str) {
        self.client_errors
            .get(code, || {
                self.counter("meridian_client_errors_total", &[("code", code.to_owned())])
            })
            .increment(1);
    }

    /// Counts a refused credential.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get(reason, || {
                self.counter(
                    "meridian_auth_failures_total",
                    &[("reason", reason.to_owned())],
                )
            })
            .increment(1);
    }

    /// Runs `sample` before every render: for a gauge that mirrors a count
    /// the request path keeps anyway, set when it is read rather than
    /// raised and lowered (a compare-and-swap loop each) beside the count,
    /// and for a tallied counter ([`Metrics::tally`]).
    pub fn sample(&self, sample: impl Fn() + Send + Sync + 'static) {
        crate::sync::lock(&self.samplers).push(Box::new(sample));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        for sample in crate::sync::lock(&self.samplers).iter() {
            sample();
        }
        let mut text = self.handle.render();
        let latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        for (name, _, help) in SERIES
            .iter()
            .filter(|(_, kind, _)| matches!(kind, Kind::Histogram))
        {
            let mut family = latencies
                .iter()
                .filter(|series| series.name == *name)
                .peekable();
            if family.peek().is_none() {
                continue;
            }
            if !text.is_empty() && !text.ends_with("\n\n") {
                text.push('\n');
            }
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
            for series in family {
                series.latency.render(&mut text, name, &series.labels);
            }
        }
        text
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect();
    Key::from_parts(name, labels)
}

/// A latency histogram over the node's buckets (`BUCKETS`): a count per
/// bucket (the last one past the largest bound) and the sum in nanoseconds,
/// a copy for each writer slot (see the `writer` module) and a last one
/// that threads without a slot share.
#[derive(Debug)]
pub struct Latency {
    copies: Box<[Counts]>,
}

/// One copy of a histogram's counts, on cache lines of its own so that
/// threads recording at once do not take the lines from each other.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counts {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            copies: writer::copies(),
        }
    }
}

impl Latency {
    /// Counts one sample.
    #[inline]
    pub fn record(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let (copy, own) = writer::copy(&self.copies);
        writer::add(own, &copy.buckets[bucket], 1);
        writer::add(own, &copy.sum_nanos, nanos);
    }

    /// Appends the series `name{labels}` in the text format: cumulative
    /// buckets, the sum in seconds, the count (the buckets' total, so the
    /// two agree within one scrape).
    fn render(&self, text: &mut String, name: &str, labels: &str) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for i in 0..=BUCKETS.len() {
            total += self
                .copies
                .iter()
                .map(|copy| copy.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            match BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        text,
                        "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {total}"
                    );
                }
                None => {
                    let _ = writeln!(text, "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self
            .copies
            .iter()
            .map(|copy| copy.sum_nanos.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add) as f64
            / 1e9;
        let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(text, "{name}_count{{{labels}}} {total}");
    }
}

/// Writer slots: a thread that records a sample takes one for as long as
/// it lives, if one is free, and so has copies of counters that no other
/// thread writes. An update to such a copy is a load and a store; readers
/// sum the copies. There is one slot a CPU (at most 64): the runtime's
/// worker threads, which record nearly every sample, are at most that many.
/// Other threads, or all of them once the slots are taken, add to a shared
/// copy with atomic read-modify-writes.
mod writer {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    /// The slot numbers, `0..slots()`.
    pub(super) fn slots() -> usize {
        static SLOTS: OnceLock<usize> = OnceLock::new();
        *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
    }

    /// The slots no thread holds: those given back by threads that ended,
    /// and the number taken so far (the rest were never taken).
    static FREE: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 0));

    /// A thread's slot, given back when the thread ends.
    struct Held(Option<usize>);

    impl Held {
        fn take() -> Self {
            let (given_back, taken) = &mut *crate::sync::lock(&FREE);
            Held(given_back.pop().or_else(|| {
                (*taken < slots()).then(|| {
                    *taken += 1;
                    *taken - 1
                })
            }))
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            if let Some(slot) = self.0 {
                crate::sync::lock(&FREE).0.push(slot);
            }
        }
    }

    thread_local! {
        static HELD: Held = Held::take();
    }

    /// This thread's slot, if it holds one.
    #[inline]
    fn slot() -> Option<usize> {
        HELD.try_with(|held| held.0).ok().flatten()
    }

    /// Fresh copies of a series: one a slot, then the shared one.
    pub(super) fn copies<T: Default>() -> Box<[T]> {
        (0..=slots()).map(|_| T::default()).collect()
    }

    /// The copy this thread writes of a series kept as `copies` (one a
    /// slot, then the shared one), and whether it is the thread's own.
    #[inline]
    pub(super) fn copy<T>(copies: &[T]) -> (&T, bool) {
        match slot() {
            Some(slot) => (&copies[slot], true),
            None => (&copies[copies.len() - 1], false),
        }
    }

    /// Adds `n` to `counter`, of a copy that is the thread's `own` or the
    /// shared one. The thread's own, which no other thread writes: no
    /// locked instruction (the slot's last holder handed it over through
    /// `FREE`'s lock, so this load sees all it wrote). The shared one: an
    /// atomic add.
    #[inline]
    pub(super) fn add(own: bool, counter: &AtomicU64, n: u64) {
        if own {
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A counter kept as the histograms keep their counts: a copy for each
/// writer slot and a shared one, summed when read (see [`Metrics::tally`]).
#[derive(Debug)]
pub struct Tally {
    copies: Box<[Count]>,
}

/// One copy of a tally, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Count(AtomicU64);

impl Default for Tally {
    fn default() -> Self {
        Self {
            copies: writer::copies(),
        }
    }
}

impl Tally {
    /// Counts one.
    #[inline]
    pub fn increment(&self) {
        let (copy, own) = writer::copy(&self.copies);
        writer::add(own, &copy.0, 1);
    }

    /// The count so far.
    pub fn total(&self) -> u64 {
        self.copies
            .iter()
            .map(|copy| copy.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// One registered latency series.
struct LatencySeries {
    name: &'static str,
    /// `label="value",…`, escaped as the text format wants.
    labels: String,
    latency: Arc<Latency>,
}

/// HTTP methods with their own series; others count as `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "OTHER",
];

fn method_index(method: &http::Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// Per-route series, registered lazily per (method, status class).
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: String,
    requests: [[OnceLock<Arc<Tally>>; 5]; METHODS.len()],
    /// Request duration, head to end of response.
    pub duration: Arc<Latency>,
}

impl RouteMetrics {
    /// Series for the route named `route` (`none` for unrouted requests).
    pub fn new(metrics: &Arc<Metrics>, route: &str) -> Self {
        Self {
            metrics: metrics.clone(),
            route: route.to_owned(),
            requests: Default::default(),
            duration: metrics.latency(
                "meridian_request_duration_seconds",
                &[("route", route.to_owned())],
            ),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, method: &http::Method, status: http::StatusCode) {
        let m = method_index(method);
        let class = usize::from((status.as_u16() / 100).clamp(1, 5)) - 1;
        self.requests[m][class]
            .get_or_init(|| {
                self.metrics.tally(
                    "meridian_requests_total",
                    &[
                        ("route", self.route.clone()),
                        ("method", METHODS[m].to_owned()),
                        ("status", format!("{}xx", class + 1)),
                    ],
                )
            })
            .increment();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_series_render_with_labels() {
        let metrics = Metrics::new();
        let route = RouteMetrics::new(&metrics, "users");
        route.request(&http::Method::GET, http::StatusCode::OK);
        route.request(&http::Method::GET, http::StatusCode::OK);
        route.request(
            &http::Method::from_bytes(b"PURGE").unwrap(),
            http::StatusCode::NOT_FOUND,
        );
        route.duration.record(Duration::from_millis(3));
        metrics.client_error("invalid_path");
        // The route again, as a reload compiles it: the same series.
        let reloaded = RouteMetrics::new(&metrics, "users");
        reloaded.request(&http::Method::GET, http::StatusCode::OK);
        let text = metrics.render();
        assert!(
            text.contains(r#"meridian_requests_total{route="users",method="GET",status="2xx"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"meridian_requests_total{route="users",method="OTHER",status="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"meridian_request_duration_seconds_bucket{route="users",le="0.005"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"meridian_client_errors_total{code="invalid_path"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn samples_from_more_threads_than_slots_all_count() {
        let metrics = Metrics::new();
        let name = "meridian_request_duration_seconds";
        let latency = metrics.latency(name, &[("route", "r".to_owned())]);
        let tally = metrics.tally("meridian_requests_total", &[("route", "r".to_owned())]);
        let threads = writer::slots() * 3 + 1;
        // At once: some threads hold slots, the rest share a copy.
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..2_000 {
                        latency.record(Duration::from_millis(2));
                        tally.increment();
                    }
                });
            }
        });
        // One after another: each takes a slot another thread gave back,
        // and goes on from that thread's counts.
        for _ in 0..threads {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    latency.record(Duration::from_secs(1));
                    tally.increment();
                });
            });
        }
        let text = metrics.render();
        let (slow, fast) = (threads, threads * 2_000);
        let requests = format!("meridian_requests_total{{route=\"r\"}} {}\n", slow + fast);
        assert!(text.contains(&requests), "{requests} in {text}");
        for (le, count) in [("0.001", 0), ("0.0025", fast), ("1", fast + slow)] {
            let line = format!("{name}_bucket{{route=\"r\",le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        let nanos = slow as u64 * 1_000_000_000 + fast as u64 * 2_000_000;
        let sum = format!("{name}_sum{{route=\"r\"}} {}\n", nanos as f64 / 1e9);
        assert!(text.contains(&sum), "{sum} in {text}");
    }

    #[test]
    fn latencies_count_cumulatively_and_escape_their_labels() {
        let metrics = Metrics::new();
        let name = "meridian_upstream_request_duration_seconds";
        let latency = metrics.latency(name, &[("upstream", "a\"b\\c".to_owned())]);
        // Registered once: the same series again.
        let again = metrics.latency(name, &[("upstream", "a\"b\\c".to_owned())]);
        latency.record(Duration::from_micros(500)); // on the first bound
        again.record(Duration::from_millis(2));
        latency.record(Duration::from_secs(60)); // past the last bound
        let text = metrics.render();
        let labels = r#"upstream="a\"b\\c""#;
        for (le, count) in [
            ("0.0005", 1),
            ("0.001", 1),
            ("0.0025", 2),
            ("30", 2),
            ("+Inf", 3),
        ] {
            let line = format!("{name}_bucket{{{labels},le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains(&format!("{name}_count{{{labels}}} 3\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{name}_sum{{{labels}}} 60.0025\n")),
            "{text}"
        );
        assert_eq!(text.matches(&format!("# TYPE {name} histogram")).count(), 1);
    }

    #[test]
    fn two_registries_do_not_share_series() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.connections_total.increment(3);
        assert!(
            a.render()
                .contains("meridian_connections_total{listener=\"proxy\"} 3")
        );
        assert!(
            !b.render()
                .contains("meridian_connections_total{listener=\"proxy\"} 3")
        );
    }

    /// Every `"meridian_…"` name in the node's code has an entry in
    /// [`SERIES`], so `/metrics` has a help line for every series.
    #[test]
    fn every_series_is_described() {
        fn names(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    names(&path, found);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("\"meridian_") {
                    let rest = &text[at + 1..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(rest.len());
                    // A whole name (not this test's own search pattern).
                    if end > "meridian_".len() && rest[end..].starts_with('"') {
                        found.push((rest[..end].to_owned(), path.display().to_string()));
                    }
                }
            }
        }
        let mut found = Vec::new();
        names(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(found.len() > SERIES.len(), "{found:?}");
        for (name, file) in found {
            assert!(
                SERIES.iter().any(|(described, _, _)| *described == name),
                "{name} ({file}) has no entry in metrics::SERIES"
            );
        }
        let text = Metrics::new().render();
        assert!(
            text.contains("# HELP meridian_raft_term Current raft term."),
            "{text}"
        );
    }
}
