//! Meridian's chaos harness: real `meridian` node processes, one per region,
//! with real demo backends and a real load generator; faults injected from a
//! scenario file; invariants checked over what the run recorded; a report in
//! Markdown and JSON.
//!
//! This kernel has no `tc netem`, so latency, loss, duplication, reordering and
//! bandwidth caps are made in userspace: a [`relay::Relay`] sits between two
//! nodes, one listener per directed link, and each node's config points at the
//! relay instead of its peer (`[peers]` in node.toml; TESTING-NOTES.md §3).
//! Partitions cut relay links, so they need no root. For region tests the
//! cluster can instead give each region a network namespace of its own,
//! with its own address, and cut a region's link at a hub bridge (root only;
//! [`netns`], [`cluster::Network`]).
//!
//! Runs are seeded: the harness's own decisions (which follower a fault hits,
//! which node each write goes to, the relay's loss and jitter) come from the
//! seed, which the report prints. The processes' own timing is not replayed.
//!
//! # Layout
//!
//! - [`scenario`]: the scenario file format and the built-in scenarios
//!   (`chaos/scenarios/*.toml`).
//! - [`cluster`]: starts, kills and restarts `meridian` processes, on
//!   loopback or (root only) one network namespace per region, with a relay
//!   link for every ordered pair of nodes.
//! - [`netns`]: the namespaces of a region test (a hub with a bridge, a veth
//!   per region, cuts at the hub) and the [`Dialer`](netns::Dialer) that
//!   makes the harness's sockets inside them.
//! - [`dns`]: a hickory resolver that asks one node's DNS responder from
//!   inside a namespace.
//! - [`backend`]: the demo echo backends that a fault takes down or slows,
//!   and the JWKS endpoint.
//! - [`idp`]: the signing keys of the run's JWT issuer, and a rogue one.
//! - [`client`]: the HTTP client the load, the admin calls and the probes use.
//! - [`load`]: the bounded load generator, counting per node and second.
//! - [`history`]: what a run records; plain data.
//! - [`check`]: the invariant checkers over a [`history::Record`].
//! - [`run`]: drives a scenario: set-up, timeline, writes, observation,
//!   final probes.
//! - [`report`]: the Markdown and JSON report.
//! - [`target`]: an existing deployment as the target (`--target`), its
//!   faults carried out by operator hooks.
//! - [`relay`]: the userspace network fault relay.
//!   - `relay/link.rs`: one direction of a link: [`LinkParams`](relay::LinkParams),
//!     the seeded per-datagram decisions, the token bucket and the counters. No I/O.
//!   - `relay/queue.rs`: the bounded timer heap that releases datagrams whole.
//!   - `relay/udp.rs`: the UDP listener, the NAT-like flow map and the release tasks.
//!   - `relay/tcp.rs`: the TCP listener and the two delayed pumps per connection.
//! - `main.rs`: the `meridian-chaos` binary (`meridian chaos …` runs it).
//!
//! Every module keeps its tests in a sibling `tests.rs`; `tests/` runs whole
//! scenarios. This crate depends on no other Meridian crate (it drives the
//! `meridian` binary), and no production crate depends on it.

pub mod backend;
pub mod check;
pub mod client;
pub mod cluster;
pub mod dns;
pub mod history;
pub mod idp;
pub mod load;
pub mod netns;
pub mod relay;
pub mod report;
pub mod run;
pub mod scenario;
pub mod target;

/// Runs `scenario` on a fresh cluster (or the deployment of
/// `options.target`), judges every invariant and returns the report (not
/// yet written).
pub async fn run_and_judge(
    scenario: &scenario::Scenario,
    options: &run::Options,
) -> anyhow::Result<report::Report> {
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = run::run(scenario, options).await?;
    let verdicts = check::all(&record);
    Ok(report::Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: scenario.seed,
        definition: serde_json::to_value(scenario).unwrap_or_default(),
        started_at,
        meridian: match &options.target {
            Some(target) => format!("the deployment at {}", target.admin),
            None => options.meridian.display().to_string(),
        },
        pass: verdicts.iter().all(|v| v.pass),
        verdicts,
        record,
    })
}
