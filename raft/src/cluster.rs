//! Starting and stopping the raft side of a node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{SnapshotPolicy, Vote};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::model::NodeId;
use crate::network::{Network, Transport};
use crate::store::{self, Applied};
use crate::typ::Raft;

/// Raft settings of a node (validated by the node's configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Where the store lives (`<data-dir>/raft`).
    pub dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election: (Duration, Duration),
    /// A snapshot is built after this many applied entries, and the log up
    /// to it purged.
    pub snapshot_logs: u64,
}

impl Config {
    /// Defaults suited to regions tens of milliseconds apart.
    pub fn new(id: NodeId, dir: PathBuf) -> Self {
        Self {
            id,
            dir,
            heartbeat: Duration::from_millis(250),
            election: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_logs: 1000,
        }
    }
}

/// Why raft could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// openraft refused the configuration.
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft failed to start.
    #[error("raft failed to start: {0}")]
    Fatal(String),
}

/// A running raft member.
pub struct Handle {
    /// The openraft handle: writes, membership, metrics.
    pub raft: Raft,
    /// The applied state, published after every applied batch.
    pub applied: watch::Receiver<Arc<Applied>>,
    db: sled::Db,
    log: store::LogStore,
    campaign: Campaign,
}

/// Opens the store in `config.dir` and starts raft over `transport`.
pub async fn start<T: Transport>(config: &Config, transport: Arc<T>) -> Result<Handle, StartError> {
    let (db, log, machine) = store::open(&config.dir)?;
    let applied = machine.subscribe();
    let raft_config = openraft::Config {
        cluster_name: "meridian".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election.0.as_millis() as u64,
        election_timeout_max: config.election.1.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: 0,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    }
    .validate()?;
    let raft_config = Arc::new(raft_config);
    let raft = Raft::new(
        config.id,
        raft_config.clone(),
        Network::new(transport),
        log.clone(),
        machine,
    )
    .await
    .map_err(|e| StartError::Fatal(e.to_string()))?;
    let campaign = Campaign(tokio::spawn(
        campaign(raft.clone(), config.id, raft_config)
            .instrument(tracing::info_span!("raft-campaign", id = config.id)),
    ));
    Ok(Handle {
        raft,
        applied,
        db,
        log,
        campaign,
    })
}

impl Handle {
    /// Entries currently in the log (bounded by snapshots and purging).
    pub fn log_entries(&self) -> usize {
        self.log.entries()
    }

    /// Bytes the store uses on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Stops raft and flushes the store.
    pub async fn shutdown(self) {
        drop(self.campaign);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        if let Err(error) = self.db.flush_async().await {
            tracing::warn!(%error, "flushing the raft store");
        }
    }
}

// === impl Deposed ===

/// When a deposed leader that has heard of no successor campaigns.
///
/// openraft 0.9 adds `smaller_log_timeout` (2 × `election_timeout_max`:
/// 4 s with the chaos harness's 1–2 s elections) to a node's election
/// timeout once a vote response showed it a greater log than its own, and
/// clears that mark only when its own election timer fires
/// (`RaftCore::handle_tick_election`), not when it wins the election. A
/// candidate rejected by a stale leader whose log ends in an entry of that
/// leader's unreplicated term, which then wins with the other votes, keeps
/// the mark for its whole term, although its own first entry supersedes
/// that log. When a candidate whose log is behind deposes it (without
/// pre-vote, by answering its appends with a higher term), the node with
/// the most complete log waits election timeout + 4 s before it campaigns,
/// the candidate cannot win, and nobody leads for 5–6 s: in
/// `peer-latency-loss` (seed 6) the cluster had no leader for 6.75 s after
/// the heal.
///
/// So a node whose last known leader was itself, and which has known no
/// leader since, campaigns once, an ordinary election timeout (drawn from
/// the configured range) after its vote last changed, unless it has
/// campaigned by then on its own: the campaign openraft would start without
/// the stale mark. If that campaign fails, or the node was not the one with
/// the longest log, openraft's timers take over again: campaigning on would
/// only raise terms, and, without pre-vote, depose a leader it has not
/// heard from yet. Every other node is left to openraft's timers.
#[derive(Debug, Default)]
pub(crate) struct Deposed {
    /// The last leader this node knew of was itself.
    led: bool,
    /// While leaderless after leading: the vote held, and when to campaign.
    due: Option<(Vote<NodeId>, Instant)>,
}

impl Deposed {
    /// Takes in the node's view (`leader`, `vote`) at `now`; returns when
    /// it should campaign, if it should. `timeout` draws an election
    /// timeout, each time the vote changes.
    pub(crate) fn observe(
        &mut self,
        id: NodeId,
        leader: Option<NodeId>,
        vote: &Vote<NodeId>,
        now: Instant,
        timeout: impl FnOnce() -> Duration,
    ) -> Option<Instant> {
        if let Some(leader) = leader {
            self.led = leader == id;
            self.due = None;
            return None;
        }
        if !self.led {
            return None;
        }
        if vote.leader_id().voted_for() == Some(id) {
            // It campaigned (openraft's timer or ours): no more to do.
            self.stand_down();
            return None;
        }
        match &self.due {
            Some((held, at)) if held == vote => Some(*at),
            _ => {
                let at = now + timeout();
                self.due = Some((*vote, at));
                Some(at)
            }
        }
    }

    /// The node campaigned (or should no longer): until it leads again,
    /// elections are openraft's.
    pub(crate) fn stand_down(&mut self) {
        self.led = false;
        self.due = None;
    }
}

/// Watches the node's raft metrics and campaigns when [`Deposed`] says so,
/// until raft stops.
async fn campaign(raft: Raft, id: NodeId, config: Arc<openraft::Config>) {
    let timeout =
        || Duration::from_millis(config.new_rand_election_timeout::<openraft::TokioRuntime>());
    let mut metrics = raft.metrics();
    let mut deposed = Deposed::default();
    loop {
        let due = {
            let view = metrics.borrow_and_update();
            deposed.observe(id, view.current_leader, &view.vote, Instant::now(), timeout)
        };
        let changed = match due {
            None => metrics.changed().await,
            Some(at) => tokio::select! {
                changed = metrics.changed() => changed,
                () = tokio::time::sleep_until(at) => {
                    tracing::info!("deposed and no leader since: campaigning");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                    deposed.stand_down();
                    Ok(())
                }
            },
        };
        if changed.is_err() {
            return;
        }
    }
}

/// The task of [`campaign`], stopped with its [`Handle`].
struct Campaign(tokio::task::JoinHandle<()>);

impl Drop for Campaign {
    fn drop(&mut self) {
        self.0.abort();
    }
}
