//! The timeline of a run: each step's fault injected at `at` and healed at
//! `heal-at`, on the loopback cluster or through the deployment's hooks;
//! `leader` and `follower` resolved from the latest observations.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Deployment, OBSERVE_EVERY, PROBE_TIMEOUT, Shared, elapsed, lock};
use crate::backend::Mode;
use crate::cluster::Cluster;
use crate::history::{FaultEvent, Observation, View};
use crate::relay::{Jitter, LinkParams};
use crate::scenario::{Cut, Fault, Scenario, Target};

/// The leader most of the latest observations name.
pub(super) fn current_leader(shared: &Shared) -> Option<u64> {
    let recorder = lock(shared);
    let mut latest: BTreeMap<u64, &Observation> = BTreeMap::new();
    for o in &recorder.observations {
        latest.insert(o.node, o);
    }
    let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for o in latest.values() {
        if let Some(View {
            leader: Some(l),
            term,
            ..
        }) = &o.view
        {
            *votes.entry((*term, *l)).or_default() += 1;
        }
    }
    // The newest term wins; within it, the most named.
    votes
        .into_iter()
        .max_by_key(|((term, _), n)| (*term, *n))
        .map(|((_, l), _)| l)
}

/// Executes the steps at their times.
pub(super) async fn timeline(
    scenario: &Scenario,
    deployment: &mut Deployment,
    origin: Instant,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(scenario.seed ^ 0x5449_4d45);
    // (time, heal?, step): heals first at equal times.
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        events.push((step.at, false, i));
        events.push((scenario.heal_of(step), true, i));
    }
    events.sort_by_key(|(t, heal, i)| (*t, !*heal, *i));
    let mut resolved: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
    for (at, heal, i) in events {
        tokio::time::sleep_until(origin + at).await;
        let step = &scenario.steps[i];
        if heal {
            let Some((node, event)) = resolved.remove(&i) else {
                continue;
            };
            let healed = deployment.heal(&step.fault, node).await?;
            let mut recorder = lock(shared);
            let fault = &mut recorder.faults[event];
            fault.heal_ms = Some(elapsed(origin));
            if let Some(healed) = healed {
                fault.detail.push_str("; heal: ");
                fault.detail.push_str(&healed);
            }
            continue;
        }
        let leader = match current_leader(shared) {
            Some(l) => Some(l),
            None => wait_leader(shared, Duration::from_secs(3)).await,
        };
        let node = match step.fault.target() {
            Some(Target::Node(n)) => n,
            Some(Target::Leader) | None => leader.unwrap_or(1),
            Some(Target::Follower) => {
                let mut followers: Vec<u64> = (1..=scenario.nodes)
                    .filter(|n| Some(*n) != leader)
                    .collect();
                followers.retain(|n| deployment.running(*n));
                if followers.is_empty() {
                    anyhow::bail!("step {i}: no running follower to hit");
                }
                followers[rng.usize(..followers.len())]
            }
        };
        let start_ms = elapsed(origin);
        let detail = deployment.inject(&step.fault, node).await?;
        let cut = match &step.fault {
            Fault::Partition { cut, .. } => Some(
                match cut {
                    Cut::Both => "both",
                    Cut::Outbound => "outbound",
                    Cut::Inbound => "inbound",
                }
                .to_owned(),
            ),
            _ => None,
        };
        let mut recorder = lock(shared);
        recorder.faults.push(FaultEvent {
            step: i,
            fault: step.fault.name().into(),
            node: step.fault.target().map(|_| node),
            was_leader: leader == Some(node) && step.fault.target().is_some(),
            cut,
            start_ms,
            heal_ms: None,
            detail,
            loss: match &step.fault {
                Fault::Latency { loss, .. } => *loss,
                _ => 0.0,
            },
            one_way_ms: match &step.fault {
                Fault::Latency { delay, jitter, .. } => (*delay + *jitter).as_millis() as u64,
                _ => 0,
            },
        });
        resolved.insert(i, (node, recorder.faults.len() - 1));
    }
    Ok(())
}

pub(super) async fn wait_leader(shared: &Shared, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(l) = current_leader(shared) {
            return Some(l);
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
    }
    None
}

pub(super) async fn inject(
    fault: &Fault,
    node: u64,
    cluster: &mut Cluster,
) -> anyhow::Result<String> {
    Ok(match fault {
        Fault::Kill { .. } => {
            let pid = cluster.kill(node).await?;
            format!("kill -9 node {node} (pid {pid})")
        }
        Fault::Partition { cut, .. } => cluster.partition(node, *cut)?,
        Fault::Latency {
            delay,
            jitter,
            loss,
        } => {
            cluster.shape(&LinkParams {
                delay: *delay,
                jitter: *jitter,
                jitter_dist: Jitter::Uniform,
                loss: *loss,
                ..LinkParams::default()
            });
            format!(
                "every peer link: {delay:?} ± {jitter:?} one way, {:.0} % loss",
                loss * 100.0
            )
        }
        Fault::BackendDown { .. } => {
            cluster.backend(node).set(Mode::Down);
            format!(
                "backend of node {node} ({}) down",
                cluster.backend(node).addr()
            )
        }
        Fault::Clock { offset, .. } => {
            cluster.skew(node, *offset)?;
            // libfaketime rereads the file on every clock read; give the
            // node a moment, then read its clock back.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let seen = cluster.clock_offset(node).await.map_or_else(
                |e| format!("its Date header could not be read: {e:#}"),
                |s| format!("its Date header now reads {s:+} s"),
            );
            format!("node {node}'s wall clock set {offset:+} s; {seen}")
        }
        Fault::JwksDown => {
            cluster.jwks().set(Mode::Down);
            format!("the JWKS endpoint ({}) down", cluster.jwks().addr())
        }
        Fault::DiskFull { .. } => {
            let written = cluster.fill(node).await?;
            format!(
                "node {node}'s data dir filled: {} MiB written until ENOSPC",
                written >> 20
            )
        }
        Fault::BackendSlow { delay, .. } => {
            cluster.backend(node).set(Mode::Slow(*delay));
            format!(
                "backend of node {node} ({}) answers {delay:?} late",
                cluster.backend(node).addr()
            )
        }
    })
}

pub(super) async fn heal_fault(
    fault: &Fault,
    node: u64,
    cluster: &mut Cluster,
) -> anyhow::Result<Option<String>> {
    match fault {
        Fault::Kill { .. } => {
            let pid = cluster.restart(node)?;
            tracing::info!(node, pid, "node restarted on its data dir");
            return Ok(Some(format!("restarted on its data dir (pid {pid})")));
        }
        Fault::Partition { .. } => cluster.heal(node)?,
        Fault::Latency { .. } => cluster.shape(&LinkParams::default()),
        Fault::Clock { .. } => cluster.skew(node, 0)?,
        Fault::DiskFull { .. } => {
            cluster.free(node)?;
            // A raft that stopped on ENOSPC stays stopped (TESTING-NOTES.md
            // §1 #9 expects a restart); do what a supervisor would.
            let state = cluster
                .client()
                .get_json(cluster.node(node).admin, "/v1/cluster", PROBE_TIMEOUT)
                .await
                .ok()
                .and_then(|(_, v)| v["state"].as_str().map(str::to_owned));
            if state.as_deref() == Some("Shutdown") {
                tracing::warn!(node, "raft stopped on the full disk; restarting the node");
                cluster.kill(node).await?;
                let pid = cluster.restart(node)?;
                return Ok(Some(format!(
                    "space freed; its raft had stopped (state Shutdown) and stayed stopped, so the node was restarted on its data dir (pid {pid})"
                )));
            }
            return Ok(Some(format!(
                "space freed; raft state {}",
                state.as_deref().unwrap_or("unknown")
            )));
        }
        Fault::BackendDown { .. } | Fault::BackendSlow { .. } => {
            cluster.backend(node).set(Mode::Up)
        }
        Fault::JwksDown => cluster.jwks().set(Mode::Up),
    }
    Ok(None)
}
