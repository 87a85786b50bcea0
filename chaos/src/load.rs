//! The load generator: a fixed rate of `GET`s to every node's proxy,
//! bounded in time and in requests in flight, counted per node and second.
//!
//! Each node gets its own ticking task; a tick sends one request (the
//! scenario's routes in turn) on a task of its own, so a slow node does not
//! slow the rate. A request has [`REQUEST_TIMEOUT`]; at most
//! [`MAX_IN_FLIGHT`] per node are outstanding, and a tick that finds none
//! free counts as a failed request (`failed: harness overloaded`), so the
//! numbers never hide it. Each failure is also itemised (time, node, what)
//! up to [`MAX_ERRORS`] for the checkers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Method;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{CallError, Client};
use crate::history::{LoadError, Second};

/// Deadline of one data-plane request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(crate::history::IN_FLIGHT_MS);

/// Requests in flight per node.
pub const MAX_IN_FLIGHT: usize = 256;

/// Failed requests itemised per run.
pub const MAX_ERRORS: usize = 20_000;

/// What the load recorded.
#[derive(Debug, Default)]
pub struct Stats {
    seconds: BTreeMap<(u64, u64), Second>,
    errors: Vec<LoadError>,
    dropped: u64,
    admitted: Vec<(u64, u64)>,
    jwt_sent: u64,
    jwt_refused: Vec<(u64, u64, u16)>,
}

/// Shared between the load tasks and the run.
pub type Shared = Arc<Mutex<Stats>>;

// === impl Stats ===

impl Stats {
    fn bucket(&mut self, node: u64, t_ms: u64) -> &mut Second {
        let second = t_ms / 1000;
        self.seconds
            .entry((node, second))
            .or_insert_with(|| Second {
                node,
                second,
                ..Second::default()
            })
    }

    /// Counts one request to `node` sent at `t_ms`: a status, or a failure.
    pub fn record(&mut self, node: u64, t_ms: u64, result: Result<u16, String>) {
        let bucket = self.bucket(node, t_ms);
        bucket.sent += 1;
        let what = match result {
            Ok(status) if status < 400 => {
                bucket.ok += 1;
                return;
            }
            Ok(status) if status < 500 => {
                bucket.client_errors += 1;
                return;
            }
            Ok(status) => {
                bucket.server_errors += 1;
                status.to_string()
            }
            Err(why) => {
                bucket.failed += 1;
                format!("failed: {why}")
            }
        };
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(LoadError { t_ms, node, what });
        } else {
            self.dropped += 1;
        }
    }

    /// Notes that `node` admitted a request under the global limit at `t_ms`
    /// (bounded like the itemised errors).
    pub fn admitted(&mut self, node: u64, t_ms: u64) {
        if self.admitted.len() < MAX_ERRORS * 5 {
            self.admitted.push((t_ms, node));
        }
    }

    /// Counts one request with a valid token; notes it when refused (any
    /// 4xx: a 404 would mean the route is gone and the check proves
    /// nothing).
    pub fn jwt(&mut self, node: u64, t_ms: u64, status: Option<u16>) {
        self.jwt_sent += 1;
        if let Some(status @ 400..=499) = status
            && self.jwt_refused.len() < MAX_ERRORS
        {
            self.jwt_refused.push((t_ms, node, status));
        }
    }

    /// Requests with a valid token, and those refused.
    pub fn take_jwt(&mut self) -> (u64, Vec<(u64, u64, u16)>) {
        let mut refused = std::mem::take(&mut self.jwt_refused);
        refused.sort_unstable();
        (std::mem::take(&mut self.jwt_sent), refused)
    }

    /// The admissions under the global limit, by time.
    pub fn take_admitted(&mut self) -> Vec<(u64, u64)> {
        let mut admitted = std::mem::take(&mut self.admitted);
        admitted.sort_unstable();
        admitted
    }

    /// The per-second counts, by node then second; the itemised failures;
    /// how many failures were not itemised.
    pub fn take(&mut self) -> (Vec<Second>, Vec<LoadError>, u64) {
        let seconds = std::mem::take(&mut self.seconds).into_values().collect();
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|e| (e.t_ms, e.node));
        (seconds, errors, std::mem::take(&mut self.dropped))
    }
}

/// When a task of the run may work: times are ms since `origin`; it stops
/// at `until` or when `stop` is cancelled, whichever comes first.
#[derive(Clone, Debug)]
pub struct Window {
    /// Time zero of the run.
    pub origin: Instant,
    /// The deadline.
    pub until: Instant,
    /// Stops it early.
    pub stop: CancellationToken,
}

impl Window {
    /// Waits for `tick`'s next tick: `false` once the window has closed
    /// (its deadline passed or its token was cancelled) instead.
    pub async fn next(&self, tick: &mut tokio::time::Interval) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep_until(self.until) => false,
            _ = tick.tick() => true,
        }
    }
}

/// Runs the load against `targets` (node id, proxy address) at `rate` per
/// second per node, within `window`: `routes` in turn, those under `/jwt`
/// with `Authorization: Bearer <token>` when a token is given. Returns once
/// every request has finished.
pub async fn run(
    client: Client,
    targets: Vec<(u64, SocketAddr)>,
    rate: u32,
    (routes, token): (Vec<String>, Option<String>),
    window: Window,
    stats: Shared,
) {
    let bearer: Option<Arc<str>> = token.map(|t| format!("Bearer {t}").into());
    let origin = window.origin;
    if rate == 0 || routes.is_empty() {
        return;
    }
    let tracker = TaskTracker::new();
    let routes: Arc<[String]> = routes.into();
    for (node, proxy) in targets {
        let (client, routes, stats, window, bearer) = (
            client.clone(),
            routes.clone(),
            stats.clone(),
            window.clone(),
            bearer.clone(),
        );
        let requests = tracker.clone();
        tracker.spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut n = 0usize;
            while window.next(&mut tick).await {
                let t_ms = origin.elapsed().as_millis() as u64;
                let route = routes[n % routes.len()].clone();
                n += 1;
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    lock(&stats).record(node, t_ms, Err("harness overloaded".into()));
                    continue;
                };
                let (client, stats) = (client.clone(), stats.clone());
                let bearer = bearer
                    .clone()
                    .filter(|_| route.starts_with(crate::cluster::JWT_PREFIX));
                requests.spawn(async move {
                    let headers: Vec<(&str, &str)> = bearer
                        .as_deref()
                        .map(|b| ("authorization", b))
                        .into_iter()
                        .collect();
                    let result = client
                        .call(Method::GET, proxy, &route, &headers, None, REQUEST_TIMEOUT)
                        .await
                        .map(|a| a.status)
                        .map_err(|e| match e {
                            CallError::Timeout(_) => "timeout".to_owned(),
                            other => other.to_string(),
                        });
                    let mut stats = lock(&stats);
                    if bearer.is_some() {
                        stats.jwt(node, t_ms, result.as_ref().ok().copied());
                    }
                    if route.starts_with(crate::cluster::GLOBAL_PREFIX)
                        && result.as_ref().is_ok_and(|s| *s < 400)
                    {
                        stats.admitted(node, t_ms);
                    }
                    stats.record(node, t_ms, result);
                    drop(permit);
                });
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn lock(stats: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
