//! Drives one scenario and records what happened, on a loopback
//! [`Cluster`] it starts or on an existing deployment ([`crate::target`],
//! faults through hooks).
//!
//! 1. **Set-up.** Start the [`Cluster`] (or read the deployment's members
//!    and configuration); create one API key per planned revocation, and
//!    one control key that is never revoked.
//! 2. **Run** for the scenario's duration, all at once:
//!    - the [`load`] on every node's proxy;
//!    - the **observer**: `GET /v1/cluster` on every node every
//!      [`OBSERVE_EVERY`];
//!    - the **writer**: every `writes.every`, a config write (one marker
//!      route `chaos-wN`) or a key revocation, alternating, to a node drawn
//!      from the seed, each logged with invoke time, outcome and return time;
//!    - the **enforcement prober**: every acknowledged revoked key is tried
//!      on every node's proxy every [`OBSERVE_EVERY`] until it gets a 401;
//!    - the **timeline**: each step starts at `at` and heals at `heal-at`
//!      (or at the end). `leader` and `follower` are resolved when the step
//!      starts, from the latest observations.
//! 3. **Settle.** Observation and probing go on until every node agrees
//!    and enforces every acknowledged revocation, or X has passed.
//! 4. **Final probe.** Every node is asked for every acknowledged config
//!    version, and for the control key.
//!
//! The run returns the [`Record`]; [`crate::check`] judges it and
//! [`crate::report`] writes it out. Every task is bounded by the run's
//! deadline and stopped by a token; the cluster is killed on every exit
//! path (its processes are `kill_on_drop`), and a deployment's configuration
//! is put back even when the timeline fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use http::Method;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Mode;
use crate::client::{CallError, Client};
use crate::cluster::{self, CONSUMER, Cluster};
use crate::history::{
    BoundsMs, Enforcement, FaultEvent, FinalProbe, GlobalLimit, NodeInfo, Observation, Op, OpKind,
    Outcome, Record, View,
};
use crate::load::{self, Window};
use crate::relay::{Jitter, LinkParams};
use crate::scenario::{Cut, Fault, Scenario, Target};
use crate::target::{self, Remote};

/// How often the observer and the enforcement prober poll.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(250);

/// Deadline of an admin write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of an observation or a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `meridian` binary.
    pub meridian: PathBuf,
    /// The run's directory: node configs, data dirs and logs go in `work/`.
    pub out: PathBuf,
    /// An existing deployment to run against instead of a loopback cluster.
    pub target: Option<target::Settings>,
}

/// What the scenario runs against.
enum Deployment {
    /// A loopback cluster the harness started.
    Local(Box<Cluster>),
    /// An existing deployment, disturbed through hooks.
    Remote(Box<Remote>),
}

/// The path revoked keys are tried on in a loopback cluster.
const PROBE_PATH: &str = "/private/chaos-probe";

// === impl Deployment ===

impl Deployment {
    /// (id, region, proxy, admin) of every node.
    fn nodes(&self) -> Vec<(u64, String, SocketAddr, SocketAddr)> {
        match self {
            Self::Local(c) => c
                .nodes()
                .iter()
                .map(|n| (n.id, n.region.clone(), n.proxy, n.admin))
                .collect(),
            Self::Remote(r) => r
                .members
                .iter()
                .map(|m| (m.id, m.region.clone(), m.proxy, m.admin))
                .collect(),
        }
    }

    /// The consumer keys are made for, and the path they are tried on.
    fn keys(&self) -> Option<(&str, &str)> {
        match self {
            Self::Local(_) => Some((CONSUMER, PROBE_PATH)),
            Self::Remote(r) => r.consumer().zip(r.probe_path()),
        }
    }

    /// The configuration config writes add their marker route to, and the
    /// upstream the marker routes use.
    fn base(&self) -> (serde_json::Value, String) {
        match self {
            Self::Local(c) => (cluster::gateway(&c.backend_addrs(), None), "echo".into()),
            Self::Remote(r) => (r.original.clone(), r.upstream.clone()),
        }
    }

    /// Whether node `id` runs, as far as the harness knows.
    fn running(&mut self, id: u64) -> bool {
        match self {
            Self::Local(c) => c.running(id),
            Self::Remote(_) => true,
        }
    }

    async fn inject(&mut self, fault: &Fault, node: u64) -> anyhow::Result<String> {
        match self {
            Self::Local(c) => inject(fault, node, c).await,
            Self::Remote(r) => r.hook(fault.name(), fault, node).await,
        }
    }

    /// Heals `fault`; returns what was done beyond the obvious, if anything.
    async fn heal(&mut self, fault: &Fault, node: u64) -> anyhow::Result<Option<String>> {
        match self {
            Self::Local(c) => heal_fault(fault, node, c).await,
            Self::Remote(r) => r
                .hook(&format!("{}.heal", fault.name()), fault, node)
                .await
                .map(Some),
        }
    }

    /// Stops what the harness started, or restores what it changed.
    async fn finish(self, admin: &Client) -> anyhow::Result<()> {
        match self {
            Self::Local(c) => {
                tracing::info!(relay_drops = c.relay_drops(), "run finished");
                (*c).shutdown().await;
                Ok(())
            }
            Self::Remote(r) => r.restore(admin).await,
        }
    }
}

/// What the run's tasks share.
#[derive(Default)]
struct Recorder {
    faults: Vec<FaultEvent>,
    ops: Vec<Op>,
    observations: Vec<Observation>,
    enforcements: Vec<Enforcement>,
}

type Shared = Arc<Mutex<Recorder>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Recorder> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An API key of consumer `chaos`.
#[derive(Clone, Debug)]
struct Key {
    id: String,
    secret: String,
}

/// Runs `scenario` on a fresh loopback cluster, or on the deployment of
/// `options.target`.
pub async fn run(scenario: &Scenario, options: &Options) -> anyhow::Result<Record> {
    let admin = Client::new().with_bearer(std::env::var("MERIDIAN_TOKEN").ok());
    if let Some(settings) = &options.target {
        let missing = target::missing_hooks(scenario, &settings.hooks);
        if !missing.is_empty() {
            anyhow::bail!(
                "against an existing deployment every fault needs a hook; missing: {}",
                missing
                    .iter()
                    .map(|h| format!("--hook {h}=COMMAND"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let remote = Remote::connect(&admin, settings.clone()).await?;
        return drive(scenario, Deployment::Remote(Box::new(remote)), admin).await;
    }
    let work = options.out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("clearing {} from an earlier run", work.display()))?;
    }
    let clock = scenario
        .steps
        .iter()
        .any(|s| matches!(s.fault, Fault::Clock { .. }));
    let faketime = std::path::Path::new(cluster::LIBFAKETIME);
    if clock && !faketime.is_file() {
        anyhow::bail!(
            "clock faults need libfaketime at {} (Debian: apt-get install faketime)",
            faketime.display()
        );
    }
    let disk = scenario
        .steps
        .iter()
        .any(|s| matches!(s.fault, Fault::DiskFull { .. }));
    let wrap = cluster::Wrap {
        faketime: clock.then(|| faketime.to_owned()),
        tmpfs: disk.then(|| "64m".to_owned()),
    };
    let cluster = Cluster::start(
        &options.meridian,
        &work,
        scenario.nodes,
        scenario.seed,
        &wrap,
    )
    .await?;
    drive(scenario, Deployment::Local(Box::new(cluster)), admin).await
}

async fn drive(
    scenario: &Scenario,
    mut deployment: Deployment,
    admin: Client,
) -> anyhow::Result<Record> {
    let client = Client::new();
    let described = deployment.nodes();
    let nodes: Vec<(u64, SocketAddr, SocketAddr)> = described
        .iter()
        .map(|(id, _, proxy, admin)| (*id, *proxy, *admin))
        .collect();
    // Keys: one per planned revocation, and a control key.
    let planned = scenario.writes.every.map_or(0, |every| {
        (scenario.duration.as_millis() / every.as_millis().max(1)) as usize / 2 + 2
    });
    let mut keys = Vec::new();
    let probe_path = deployment.keys().map(|(_, path)| path.to_owned());
    if let Some((consumer, _)) = deployment.keys() {
        for _ in 0..=planned {
            keys.push(create_key(&admin, nodes[0].2, consumer).await?);
        }
    }
    let control = if keys.is_empty() {
        None
    } else {
        Some(keys.remove(0))
    };
    let routes = match &deployment {
        Deployment::Remote(r) if !r.routes().is_empty() => r.routes().to_vec(),
        _ => scenario.load.routes.clone(),
    };

    let shared: Shared = Arc::default();
    let stats: load::Shared = Arc::default();
    let origin = Instant::now();
    let origin_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let global_limit = match &deployment {
        Deployment::Local(_) => Some(GlobalLimit {
            limit: cluster::GLOBAL_LIMIT,
            window_ms: cluster::GLOBAL_WINDOW_MS,
        }),
        Deployment::Remote(_) => None,
    };
    let end = origin + scenario.duration;
    let settle_by = end + settle_grace(scenario);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(load::run(
        client.clone(),
        nodes.iter().map(|(id, proxy, _)| (*id, *proxy)).collect(),
        scenario.load.rate,
        routes,
        Window {
            origin,
            until: end,
            stop: stop.clone(),
        },
        stats.clone(),
    ));
    tasks.spawn(observe(
        admin.clone(),
        nodes.iter().map(|(id, _, admin)| (*id, *admin)).collect(),
        origin,
        settle_by,
        stop.clone(),
        shared.clone(),
    ));
    if let Some(path) = probe_path.clone() {
        tasks.spawn(probe_enforcement(
            client.clone(),
            nodes.iter().map(|(id, proxy, _)| (*id, *proxy)).collect(),
            (keys.clone(), path),
            origin,
            settle_by,
            stop.clone(),
            shared.clone(),
        ));
    }
    if let Some(every) = scenario.writes.every {
        let (base, upstream) = deployment.base();
        let writer = Writer {
            admins: nodes.iter().map(|(id, _, admin)| (*id, *admin)).collect(),
            base,
            upstream,
            keys: keys.clone(),
            every,
            rng: fastrand::Rng::with_seed(scenario.seed ^ 0x5752_4954_4553),
        };
        let window = Window {
            origin,
            until: end,
            stop: stop.clone(),
        };
        tasks.spawn(write(admin.clone(), writer, window, shared.clone()));
    }
    tasks.close();

    let timeline = timeline(scenario, &mut deployment, origin, &shared).await;
    if let Err(error) = &timeline {
        tracing::error!(%error, "the timeline failed; stopping the run");
        stop.cancel();
    }
    settle(&shared, &nodes, origin, end, settle_by, &stop).await;
    stop.cancel();
    tasks.wait().await;
    if let Err(error) = timeline {
        if let Err(finish) = deployment.finish(&admin).await {
            tracing::error!(error = %finish, "cleaning up after the failed timeline");
        }
        return Err(error);
    }

    let control = control.zip(probe_path);
    let final_probe = final_probe(&admin, &client, &nodes, control.as_ref(), origin, &shared).await;
    deployment.finish(&admin).await?;

    let recorder = std::mem::take(&mut *lock(&shared));
    let (seconds, errors, errors_dropped, global_admitted) = {
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        let (seconds, errors, dropped) = stats.take();
        (seconds, errors, dropped, stats.take_admitted())
    };
    Ok(Record {
        nodes: described
            .into_iter()
            .map(|(id, region, proxy, admin)| NodeInfo {
                id,
                region,
                proxy: proxy.to_string(),
                admin: admin.to_string(),
            })
            .collect(),
        duration_ms: scenario.duration.as_millis() as u64,
        bounds: BoundsMs {
            failover: scenario.bounds.failover.as_millis() as u64,
            heal: scenario.bounds.heal.as_millis() as u64,
            election: scenario.bounds.election.as_millis() as u64,
        },
        faults: recorder.faults,
        ops: recorder.ops,
        observations: recorder.observations,
        load: seconds,
        errors,
        errors_dropped,
        enforcements: recorder.enforcements,
        final_probe,
        origin_unix_ms,
        global_limit,
        global_admitted,
    })
}

/// How long after the end the run waits to settle: X and a second.
fn settle_grace(scenario: &Scenario) -> Duration {
    scenario.bounds.heal + Duration::from_secs(1)
}

fn elapsed(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

async fn create_key(client: &Client, admin: SocketAddr, consumer: &str) -> anyhow::Result<Key> {
    let path = format!("/v1/consumers/{consumer}/keys?wait=all");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = client
            .call(
                Method::POST,
                admin,
                &path,
                &[],
                Some(b"{}".to_vec()),
                WRITE_TIMEOUT,
            )
            .await;
        match answer {
            Ok(a) if a.status == 200 => {
                let v = a.json();
                let (Some(id), Some(secret)) = (v["id"].as_str(), v["key"].as_str()) else {
                    anyhow::bail!("POST {path} answered without id and key: {v}");
                };
                return Ok(Key {
                    id: id.into(),
                    secret: secret.into(),
                });
            }
            Ok(a) if a.status != 503 => {
                anyhow::bail!("POST {path}: {} {}", a.status, a.message())
            }
            _ if Instant::now() > deadline => anyhow::bail!("POST {path}: no leader for 20s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The leader most of the latest observations name.
fn current_leader(shared: &Shared) -> Option<u64> {
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
async fn timeline(
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

async fn wait_leader(shared: &Shared, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(l) = current_leader(shared) {
            return Some(l);
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
    }
    None
}

async fn inject(fault: &Fault, node: u64, cluster: &mut Cluster) -> anyhow::Result<String> {
    Ok(match fault {
        Fault::Kill { .. } => {
            let pid = cluster.kill(node).await?;
            format!("kill -9 node {node} (pid {pid})")
        }
        Fault::Partition { cut, .. } => {
            cluster.partition(node, *cut);
            format!("cut node {node}'s peer links ({cut:?})")
        }
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

async fn heal_fault(
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
        Fault::Partition { .. } => cluster.heal(node),
        Fault::Latency { .. } => cluster.shape(&LinkParams::default()),
        Fault::Clock { .. } => cluster.skew(node, 0)?,
        Fault::DiskFull { .. } => {
            cluster.free(node)?;
            // A raft that stopped on ENOSPC stays stopped (TESTING-NOTES.md
            // §1 #9 expects a restart); do what a supervisor would.
            let state = Client::new()
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
    }
    Ok(None)
}

/// Polls `GET /v1/cluster` on every node.
async fn observe(
    client: Client,
    admins: Vec<(u64, std::net::SocketAddr)>,
    origin: Instant,
    until: Instant,
    stop: CancellationToken,
    shared: Shared,
) {
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(until) => return,
            _ = tick.tick() => {}
        }
        let polls = admins.iter().map(|&(id, admin)| {
            let client = client.clone();
            async move {
                let view = match client.get_json(admin, "/v1/cluster", PROBE_TIMEOUT).await {
                    Ok((200, v)) => Some(View {
                        term: v["term"].as_u64().unwrap_or(0),
                        leader: v["leader"].as_u64(),
                        state: v["state"].as_str().unwrap_or("").to_owned(),
                        config_version: v["config_version"].as_u64().unwrap_or(0),
                        applied: v["applied"].as_u64().unwrap_or(0),
                        global_bound: v["global_limits"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|l| l["bound"].as_f64())
                            .reduce(f64::max),
                    }),
                    _ => None,
                };
                Observation {
                    t_ms: elapsed(origin),
                    node: id,
                    view,
                }
            }
        });
        let observed = futures_join(polls).await;
        lock(&shared).observations.extend(observed);
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// What the writer writes, where, and how often.
struct Writer {
    /// Node id and admin address of every node.
    admins: Vec<(u64, std::net::SocketAddr)>,
    /// The configuration each config write adds its marker route to.
    base: serde_json::Value,
    /// The upstream of the marker routes.
    upstream: String,
    /// Keys to revoke, in order.
    keys: Vec<Key>,
    /// One write this often.
    every: Duration,
    /// Picks the node of each write.
    rng: fastrand::Rng,
}

/// Config writes and revocations, alternating, to nodes drawn from the
/// writer's seeded RNG.
async fn write(client: Client, writer: Writer, window: Window, shared: Shared) {
    let Writer {
        admins,
        base,
        upstream,
        keys,
        every,
        mut rng,
    } = writer;
    let Window {
        origin,
        until,
        stop,
    } = window;
    let mut keys = keys.into_iter();
    let mut tick = tokio::time::interval_at(origin + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(until) => return,
            _ = tick.tick() => {}
        }
        let (node, admin) = admins[rng.usize(..admins.len())];
        let (kind, method, path, body) = if n % 2 == 0 {
            let route = format!("chaos-w{}", n / 2 + 1);
            let body = target::with_marker(&base, &route, &upstream).to_string();
            (
                OpKind::ConfigWrite { route },
                Method::PUT,
                "/v1/config".to_owned(),
                Some(body.into_bytes()),
            )
        } else {
            let Some(key) = keys.next() else { continue };
            (
                OpKind::Revoke {
                    key_id: key.id.clone(),
                },
                Method::DELETE,
                format!("/v1/keys/{}", key.id),
                None,
            )
        };
        let invoke_ms = elapsed(origin);
        let answer = client
            .call(method, admin, &path, &[], body, WRITE_TIMEOUT)
            .await;
        let outcome = match answer {
            Ok(a) if a.status == 200 => {
                let v = a.json();
                Outcome::Ok {
                    version: v["version"].as_u64(),
                    index: v["index"].as_u64(),
                }
            }
            Ok(a) => Outcome::Fail {
                status: a.status,
                message: a.message(),
            },
            Err(CallError::Timeout(_)) => Outcome::Timeout,
            Err(e) => Outcome::Unreachable {
                message: e.to_string(),
            },
        };
        let mut recorder = lock(&shared);
        let id = recorder.ops.len() as u64 + 1;
        recorder.ops.push(Op {
            id,
            kind,
            node,
            invoke_ms,
            return_ms: elapsed(origin),
            outcome,
        });
    }
}

/// Tries every acknowledged revoked key on every node until it is refused.
async fn probe_enforcement(
    client: Client,
    proxies: Vec<(u64, std::net::SocketAddr)>,
    (keys, path): (Vec<Key>, String),
    origin: Instant,
    until: Instant,
    stop: CancellationToken,
    shared: Shared,
) {
    let secrets: BTreeMap<String, String> = keys.into_iter().map(|k| (k.id, k.secret)).collect();
    let path: Arc<str> = path.into();
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(until) => return,
            _ = tick.tick() => {}
        }
        let pending: Vec<(String, u64, std::net::SocketAddr)> = {
            let recorder = lock(&shared);
            let mut pending = Vec::new();
            for op in &recorder.ops {
                let (OpKind::Revoke { key_id }, Outcome::Ok { .. }) = (&op.kind, &op.outcome)
                else {
                    continue;
                };
                for (node, proxy) in &proxies {
                    if !recorder
                        .enforcements
                        .iter()
                        .any(|e| e.key_id == *key_id && e.node == *node)
                    {
                        pending.push((key_id.clone(), *node, *proxy));
                    }
                }
            }
            pending
        };
        let probes = pending.into_iter().filter_map(|(key_id, node, proxy)| {
            let secret = secrets.get(&key_id)?.clone();
            let (client, path) = (client.clone(), path.clone());
            Some(async move {
                let status = client
                    .call(
                        Method::GET,
                        proxy,
                        &path,
                        &[("x-api-key", &secret)],
                        None,
                        PROBE_TIMEOUT,
                    )
                    .await
                    .map(|a| a.status);
                (key_id, node, status, elapsed(origin))
            })
        });
        for (key_id, node, status, t_ms) in futures_join(probes).await {
            if status == Ok(401) {
                lock(&shared)
                    .enforcements
                    .push(Enforcement { key_id, node, t_ms });
            }
        }
    }
}

/// Waits past the end until every node agrees and enforces every acked
/// revocation, or until `settle_by`.
async fn settle(
    shared: &Shared,
    nodes: &[(u64, std::net::SocketAddr, std::net::SocketAddr)],
    origin: Instant,
    end: Instant,
    settle_by: Instant,
    stop: &CancellationToken,
) {
    tokio::time::sleep_until(end).await;
    let end_ms = elapsed(origin);
    while Instant::now() < settle_by && !stop.is_cancelled() {
        tokio::time::sleep(OBSERVE_EVERY).await;
        let recorder = lock(shared);
        let mut latest: BTreeMap<u64, &Observation> = BTreeMap::new();
        for o in recorder.observations.iter().filter(|o| o.t_ms >= end_ms) {
            latest.insert(o.node, o);
        }
        let views: Vec<Option<&View>> = latest.values().map(|o| o.view.as_ref()).collect();
        let agreed = latest.len() == nodes.len()
            && views.iter().all(|v| {
                v.is_some_and(|v| {
                    v.leader.is_some()
                        && views[0].is_some_and(|f| {
                            f.leader == v.leader
                                && f.term == v.term
                                && f.config_version == v.config_version
                        })
                })
            });
        let revoked = recorder
            .ops
            .iter()
            .filter(|op| {
                matches!(op.kind, OpKind::Revoke { .. }) && matches!(op.outcome, Outcome::Ok { .. })
            })
            .count();
        let enforced = recorder.enforcements.len() >= revoked * nodes.len();
        if agreed && enforced {
            return;
        }
    }
}

/// Asks every node (through `admin`) for every acknowledged config version,
/// and (through `client`) for the control key on the probe path.
async fn final_probe(
    admin: &Client,
    client: &Client,
    nodes: &[(u64, std::net::SocketAddr, std::net::SocketAddr)],
    control: Option<&(Key, String)>,
    origin: Instant,
    shared: &Shared,
) -> FinalProbe {
    let start_ms = elapsed(origin);
    let versions: Vec<u64> = lock(shared)
        .ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::ConfigWrite { .. }, Outcome::Ok { version, .. }) => *version,
            _ => None,
        })
        .collect();
    let mut probe = FinalProbe {
        start_ms,
        ..FinalProbe::default()
    };
    for (id, proxy, address) in nodes {
        let mut held = BTreeMap::new();
        for version in &versions {
            let routes = match admin
                .get_json(
                    *address,
                    &format!("/v1/config/versions/{version}"),
                    PROBE_TIMEOUT,
                )
                .await
            {
                Ok((200, v)) => Some(
                    v["config"]["routes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["name"].as_str())
                        .filter(|n| n.starts_with("chaos-"))
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => None,
            };
            held.insert(*version, routes);
        }
        probe.versions.insert(*id, held);
        let Some((control, path)) = control else {
            continue;
        };
        let status = client
            .call(
                Method::GET,
                *proxy,
                path,
                &[("x-api-key", &control.secret)],
                None,
                PROBE_TIMEOUT,
            )
            .await
            .map_or(0, |a| a.status);
        probe.control_key.insert(*id, status);
    }
    probe
}
