//! Defences against flooding clients that hyper does not provide itself.
//!
//! - **Overload shedding.** A listener-wide count of requests in flight
//!   (from the request head until the response body ends). Above
//!   `limits.max-in-flight` a new request is answered at once with 503,
//!   `Retry-After: 1` and the JSON error body, before any stage runs or any
//!   body byte is read, so memory stays bounded however many connections
//!   and streams clients open.
//! - **Rapid reset.** HTTP/2 lets a client open a stream and cancel it at
//!   once (`RST_STREAM`, CVE-2023-44487): the gateway starts the work, the
//!   client pays nothing. h2 itself bounds resets of streams not yet handed
//!   to hyper (`max_pending_accept_reset_streams`); this module also counts
//!   requests whose handler was cancelled before it answered, per
//!   connection, and closes a connection that cancels more than
//!   `limits.max-reset-streams` within 10 s.
//!
//! Every decision is counted: `meridian_requests_shed_total{listener,reason}`,
//! `meridian_in_flight_requests{listener}` and
//! `meridian_connections_closed_total{listener,reason}`.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;

/// The window over which a connection's cancelled requests are counted.
pub(crate) const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Why the gateway closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// No request head within `timeouts.header-read`.
    HeaderTimeout,
    /// Too many requests cancelled by the client (HTTP/2 rapid reset).
    RapidReset,
    /// A connection asked to close (idle, shutdown) did not finish in time.
    DrainTimeout,
}

/// The series of one listener.
#[derive(Clone)]
pub(crate) struct Counters {
    pub(crate) header_timeout: Counter,
    pub(crate) write_idle: Counter,
    pub(crate) rapid_reset: Counter,
    pub(crate) drain_timeout: Counter,
    pub(crate) shed: Counter,
    /// Requests in flight (counted by [`Load`]); the gauge
    /// `meridian_in_flight_requests` is set from it when metrics render.
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Counters {
    /// Series labelled with `listener`, or no-ops without a registry.
    pub(crate) fn new(metrics: Option<&Metrics>, listener: &'static str) -> Self {
        let Some(metrics) = metrics else {
            return Self {
                header_timeout: Counter::noop(),
                write_idle: Counter::noop(),
                rapid_reset: Counter::noop(),
                drain_timeout: Counter::noop(),
                shed: Counter::noop(),
                in_flight: Arc::default(),
            };
        };
        let closed = |reason: &str| {
            let counter = metrics.counter(
                "meridian_connections_closed_total",
                &[
                    ("listener", listener.to_owned()),
                    ("reason", reason.to_owned()),
                ],
            );
            counter.increment(0);
            counter
        };
        let shed = metrics.counter(
            "meridian_requests_shed_total",
            &[
                ("listener", listener.to_owned()),
                ("reason", "in_flight".to_owned()),
            ],
        );
        shed.increment(0);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let gauge = metrics.gauge(
            "meridian_in_flight_requests",
            &[("listener", listener.to_owned())],
        );
        let count = in_flight.clone();
        metrics.sample(move || gauge.set(count.load(Ordering::Relaxed) as f64));
        Self {
            header_timeout: closed("header_timeout"),
            write_idle: closed("write_idle"),
            rapid_reset: closed("rapid_reset"),
            drain_timeout: closed("drain_timeout"),
            shed,
            in_flight,
        }
    }

    /// Counts a connection the gateway closed.
    pub(crate) fn closed(&self, why: Closed) {
        match why {
            Closed::HeaderTimeout => &self.header_timeout,
            Closed::RapidReset => &self.rapid_reset,
            Closed::DrainTimeout => &self.drain_timeout,
        }
        .increment(1);
    }
}

// === impl Load ===

/// The listener-wide cap on requests in flight, counted in the
/// listener's [`Counters::in_flight`] (which the gauge reports).
pub(crate) struct Load {
    max: usize,
    counters: Counters,
}

/// One request counted in flight, through `L`, a handle on the listener's
/// [`Load`]; released when dropped.
pub(crate) struct Admitted<L: Deref<Target = Load>>(L);

/// What a response body keeps until it is dropped (hyper's path, which
/// hands the response over whole). The fast path, which writes the
/// response itself, keeps an `Admitted<&Load>` until it has: no
/// reference count.
pub(crate) type Permit = Admitted<Arc<Load>>;

impl<L: Deref<Target = Load>> Drop for Admitted<L> {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Load {
    pub(crate) fn new(max: usize, counters: Counters) -> Arc<Self> {
        Arc::new(Self { max, counters })
    }

    /// Counts a request in, or answers 503 when the listener is full.
    pub(crate) fn admit<L: Deref<Target = Load>>(
        load: L,
        headers: &http::HeaderMap,
    ) -> Result<Admitted<L>, Box<hyper::Response<Body>>> {
        let in_flight = &load.counters.in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= load.max {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            load.counters.shed.increment(1);
            let id = crate::trace::request_id(headers.get(&crate::trace::X_REQUEST_ID));
            let mut response = Error::new(Kind::Overloaded).to_response(id.to_str().unwrap_or(""));
            response
                .headers_mut()
                .insert(crate::trace::X_REQUEST_ID.clone(), id);
            return Err(Box::new(response));
        }
        Ok(Admitted(load))
    }
}

// === impl Resets ===

/// Counts one connection's cancelled requests and asks it to close when
/// they exceed the limit within [`RESET_WINDOW`].
pub(crate) struct Resets {
    max: u32,
    window: Mutex<(Instant, u32)>,
    /// Cancelled when the connection must close.
    pub(crate) tripped: CancellationToken,
}

impl Resets {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            window: Mutex::new((Instant::now(), 0)),
            tripped: CancellationToken::new(),
        })
    }

    fn cancelled(&self) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.0) >= RESET_WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
        if window.1 > self.max {
            self.tripped.cancel();
        }
    }

    /// A guard for one request: dropping it before [`Watch::done`] counts
    /// the request as cancelled by the client.
    pub(crate) fn watch(self: &Arc<Self>) -> Watch {
        Watch(Some(self.clone()))
    }
}

/// Notices a request handler dropped before it answered.
pub(crate) struct Watch(Option<Arc<Resets>>);

impl Watch {
    /// The handler answered.
    pub(crate) fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(resets) = self.0.take() {
            resets.cancelled();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_gauge_reads_the_count_when_rendered() {
        let metrics = crate::metrics::Metrics::new();
        let load = Load::new(4, Counters::new(Some(&metrics), "proxy"));
        let headers = http::HeaderMap::new();
        let a = Load::admit(&*load, &headers).ok().unwrap();
        let _b = Load::admit(&*load, &headers).ok().unwrap();
        let line = |n: usize| format!("meridian_in_flight_requests{{listener=\"proxy\"}} {n}\n");
        let text = metrics.render();
        assert!(text.contains(&line(2)), "{text}");
        drop(a);
        let text = metrics.render();
        assert!(text.contains(&line(1)), "{text}");
    }

    #[test]
    fn load_sheds_above_the_cap_and_releases_with_the_permit() {
        let load = Load::new(2, Counters::new(None, "test"));
        let headers = http::HeaderMap::new();
        let a = Load::admit(load.clone(), &headers).ok().unwrap();
        let _b = Load::admit(&*load, &headers).ok().unwrap();
        let shed = Load::admit(&*load, &headers).err().unwrap();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        let body = String::from_utf8(shed.body().as_bytes().unwrap().to_vec()).unwrap();
        assert!(body.contains(r#""code":"overloaded""#), "{body}");
        drop(a);
        assert!(Load::admit(&*load, &headers).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn resets_trip_above_the_limit_within_the_window() {
        let resets = Resets::new(3);
        for _ in 0..3 {
            drop(resets.watch());
        }
        resets.watch().done();
        assert!(!resets.tripped.is_cancelled());
        tokio::time::advance(RESET_WINDOW).await;
        for _ in 0..3 {
            drop(resets.watch());
        }
        assert!(!resets.tripped.is_cancelled(), "a new window starts at 0");
        drop(resets.watch());
        assert!(resets.tripped.is_cancelled());
    }
}
