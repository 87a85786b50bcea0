//! Active HTTP health checks.
//!
//! One task per pool with a `health` section probes every target each
//! `interval` with `GET <path>`; a 2xx or 3xx answer within `timeout` is a
//! success. `unhealthy_threshold` failures in a row mark a target
//! unhealthy, `healthy_threshold` successes in a row mark it healthy again.
//! Targets start healthy (also those discovery adds later); the streaks
//! live on the targets, so a target that stays in a new target set keeps
//! its count. The task holds only a weak reference, so it ends when the
//! last snapshot using the pool is gone, or at shutdown.
//!
//! Probes go through the pool's own client, so they use (and keep warm) the
//! same pooled connections as requests: a probe reads the answer's body (up
//! to 64 KiB, within `timeout`) so that its connection can be reused.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::body::FromUpstream;
use http::{Request, header};
use http_body_util::BodyExt;
use raft::model::HealthCheck;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client::{Client, Conn};
use super::pool::{Pool, Target};
use crate::body::UpstreamBody;

/// A probe's answer body is read up to this size; a longer one closes the
/// connection instead.
const MAX_PROBE_BODY: u64 = 64 * 1024;

/// Starts the health-check task of `pool`, if its upstream has one.
pub fn spawn(pool: &Arc<Pool>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let Some(check) = pool.definition().health.clone() else {
        return;
    };
    let span = tracing::info_span!("health", upstream = %pool.name());
    tasks.spawn(run(Arc::downgrade(pool), check, shutdown.clone()).instrument(span));
}

async fn run(pool: Weak<Pool>, check: HealthCheck, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        let set = pool.targets();
        let probes = set.iter().map(|target| probe(&pool.client, target, &check));
        let results = futures_util::future::join_all(probes).await;
        for (target, ok) in set.iter().zip(results) {
            let (successes, failures) = &target.streaks;
            if ok {
                let successes = successes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                failures.store(0, Ordering::Relaxed);
                if !target.healthy() && successes >= check.healthy_threshold {
                    target.set_healthy(true);
                }
            } else {
                let failures = failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                successes.store(0, Ordering::Relaxed);
                if target.healthy() && failures >= check.unhealthy_threshold {
                    target.set_healthy(false);
                }
            }
        }
    }
}

async fn probe(client: &Client, target: &Target, check: &HealthCheck) -> bool {
    let Ok(request) = Request::get(check.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::USER_AGENT, "meridian-health-check")
        .body(UpstreamBody::Empty)
    else {
        return false;
    };
    match tokio::time::timeout(check.timeout, client.send(&target.endpoint, request, None)).await {
        Ok(Ok((response, conn))) => {
            let status = response.status();
            // The status decides; the body is read only to reuse the connection.
            let _ = tokio::time::timeout(
                check.timeout,
                drain(client, target, response.into_body(), conn),
            )
            .await;
            status.is_success() || status.is_redirection()
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, target = %target.address, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(target = %target.address, "health check timed out");
            false
        }
    }
}

/// Reads a probe's answer to its end and gives the connection back.
async fn drain(client: &Client, target: &Target, mut body: FromUpstream, conn: Option<Conn>) {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        read += frame.data_ref().map_or(0, |data| data.len() as u64);
        if read > MAX_PROBE_BODY {
            return;
        }
    }
    if let Some(conn) = conn.or_else(|| body.take_reusable()) {
        client.release(&target.endpoint, conn);
    }
}
