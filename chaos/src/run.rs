//! Drives one scenario and records what happened, on a [`Cluster`] it
//! starts (a network namespace per region when root, else loopback) or on
//! an existing deployment ([`crate::target`], faults through hooks).
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
//! `run/timeline.rs` holds the timeline (inject, heal, resolve `leader` and
//! `follower`); `run/tasks.rs` the observer, the writer and the prober.
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

use crate::client::Client;
use crate::cluster::{self, CONSUMER, Cluster, Network};
use crate::history::{
    BoundsMs, Enforcement, FaultEvent, FinalProbe, GlobalLimit, JwtRecord, NodeInfo, Observation,
    Op, OpKind, Outcome, Record, View,
};
use crate::load::{self, Window};
use crate::scenario::{Fault, Scenario};
use crate::target::{self, Remote};

mod tasks;
mod timeline;

use self::tasks::{Writer, observe, probe_enforcement, probe_rogue, write};
use self::timeline::{heal_fault, inject, timeline};

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
    /// An existing deployment to run against instead of a cluster of its own.
    pub target: Option<target::Settings>,
    /// How the cluster of its own is networked; `None` picks
    /// [`Network::best`]: a namespace per region when root, else loopback.
    pub network: Option<Network>,
}

/// What the scenario runs against.
enum Deployment {
    /// A cluster the harness started.
    Local(Box<Cluster>),
    /// An existing deployment, disturbed through hooks.
    Remote(Box<Remote>),
}

/// The path revoked keys are tried on in the harness's own cluster.
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

    /// How the nodes are networked, for the report.
    fn network(&self) -> String {
        match self {
            Self::Local(c) => c.network().describe().to_owned(),
            Self::Remote(_) => "an existing deployment, reached from this machine".to_owned(),
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
            Self::Local(c) => (
                cluster::gateway(&c.backend_addrs(), Some(c.jwks().addr()), None),
                "echo".into(),
            ),
            Self::Remote(r) => (r.original.clone(), r.upstream.clone()),
        }
    }

    /// A valid token and a rogue one, when the harness runs the issuer.
    fn tokens(&self) -> anyhow::Result<Option<(String, String)>> {
        match self {
            Self::Local(c) => Ok(Some((c.idp().token("chaos")?, c.idp().rogue()?))),
            Self::Remote(_) => Ok(None),
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
    rogue_probes: u64,
    rogue_accepted: Vec<(u64, u64, u16)>,
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

/// Runs `scenario` on a fresh cluster (a namespace per region, or
/// loopback), or on the deployment of `options.target`.
pub async fn run(scenario: &Scenario, options: &Options) -> anyhow::Result<Record> {
    let bearer = std::env::var("MERIDIAN_TOKEN").ok();
    if let Some(settings) = &options.target {
        let admin = Client::new().with_bearer(bearer);
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
        let deployment = Deployment::Remote(Box::new(remote));
        return drive(scenario, deployment, (Client::new(), admin)).await;
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
    let network = options.network.unwrap_or_else(Network::best);
    let wrap = cluster::Wrap {
        faketime: clock.then(|| faketime.to_owned()),
        tmpfs: disk.then(|| "64m".to_owned()),
        network,
        ..cluster::Wrap::default()
    };
    let cluster = Cluster::start(
        &options.meridian,
        &work,
        scenario.nodes,
        scenario.seed,
        &wrap,
    )
    .await?;
    let client = cluster.client().clone();
    let admin = client.clone().with_bearer(bearer);
    drive(
        scenario,
        Deployment::Local(Box::new(cluster)),
        (client, admin),
    )
    .await
}

/// Runs the scenario; `client` sends the data-plane load and probes,
/// `admin` the admin API calls.
async fn drive(
    scenario: &Scenario,
    mut deployment: Deployment,
    (client, admin): (Client, Client),
) -> anyhow::Result<Record> {
    let network = deployment.network();
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
    let tokens = deployment.tokens()?;
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
        (
            routes.clone(),
            tokens.as_ref().map(|(valid, _)| valid.clone()),
        ),
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
        Window {
            origin,
            until: settle_by,
            stop: stop.clone(),
        },
        shared.clone(),
    ));
    if let Some((_, rogue)) = &tokens
        && routes.iter().any(|r| r.starts_with(cluster::JWT_PREFIX))
    {
        tasks.spawn(probe_rogue(
            client.clone(),
            nodes.iter().map(|(id, proxy, _)| (*id, *proxy)).collect(),
            rogue.clone(),
            Window {
                origin,
                until: end,
                stop: stop.clone(),
            },
            shared.clone(),
        ));
    }
    if let Some(path) = probe_path.clone() {
        tasks.spawn(probe_enforcement(
            client.clone(),
            nodes.iter().map(|(id, proxy, _)| (*id, *proxy)).collect(),
            (keys.clone(), path),
            Window {
                origin,
                until: settle_by,
                stop: stop.clone(),
            },
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
    let (seconds, errors, errors_dropped, global_admitted, jwt) = {
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        let (seconds, errors, dropped) = stats.take();
        (
            seconds,
            errors,
            dropped,
            stats.take_admitted(),
            stats.take_jwt(),
        )
    };
    Ok(Record {
        network,
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
        jwt: JwtRecord {
            sent: jwt.0,
            refused: jwt.1,
            rogue_probes: recorder.rogue_probes,
            rogue_accepted: recorder.rogue_accepted,
        },
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
