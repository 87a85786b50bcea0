//! A Meridian node: the data plane that routes, versions and proxies
//! requests, its admin API and its metrics.
//!
//! # Layout
//! - [`config`]: `node.toml`, raw then validated.
//! - [`app`]: build and run a node ([`App`]), the handlers' shared state ([`Gateway`]).
//! - [`server`]: listeners, connection limits, timeouts, graceful drain.
//! - [`pipeline`]: the request path: [`pipeline::Stage`]s in one order, per-request [`pipeline::RequestCx`].
//! - [`proxy`]: forwarding, upstream pools, load balancing, health checks, retries.
//! - [`dns`]: upstream discovery through DNS, the authoritative DNS responder.
//! - [`regions`]: the regions' health view, `/healthz/gslb`, anycast hooks.
//! - [`snapshot`]: the compiled gateway configuration, swapped atomically.
//! - [`normalize`]: the one path normalisation every stage relies on.
//! - [`body`]: streamed bodies with limits and idle timeouts.
//! - [`error`]: the data plane's error type and its JSON responses.
//! - [`cluster`]: raft membership: bootstrap, writes via the leader, applied state.
//! - [`peer`]: the QUIC peer plane (mTLS with the cluster CA; raft RPC).
//! - [`pki`]: the cluster CA and node identities; [`join`]: one-time join tokens.
//! - [`admin`], [`metrics`], [`access_log`], [`trace`], [`shutdown`], [`text`].
//! - `head`: canonical HTTP/1.1 heads scanned ahead of `httparse`.
//! - `clock`: the time, read once per poll of a connection's task;
//!   `sync`: mutex guards that outlive a panicking holder.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod calendar;
mod clock;
pub mod cluster;
pub mod config;
mod deadline;
pub mod dns;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod head;
pub mod join;
pub mod metrics;
pub mod normalize;
pub mod peer;
pub mod pipeline;
pub mod pki;
pub mod proxy;
pub mod ratelimit;
pub mod regions;
pub mod server;
pub mod shutdown;
pub mod snapshot;
mod sync;
pub mod text;
pub mod tls;
pub mod trace;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use app::{App, Gateway};

/// `Box::new(make())`, with the box allocated first so that `make` writes
/// its value into it. `Box::new(value)` makes the value on the stack and
/// copies all of it into the box: for a future that has not started, all
/// its size though it holds only its arguments (3.5 KiB for a connection's
/// task), and 552 bytes for a request's context (docs/benchmarks.md).
pub(crate) fn boxed<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}

/// Services every part of a node shares.
pub struct Shared {
    /// The node configuration.
    pub config: Arc<config::Config>,
    /// The node's metric registry.
    pub metrics: Arc<metrics::Metrics>,
    /// The access log.
    pub access_log: access_log::AccessLog,
    /// Background tasks (health checks, tunnels, upkeep), awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// The node's cluster membership (applied state, writes).
    pub cluster: Arc<cluster::Cluster>,
    /// Rate-limit state, kept across configuration reloads.
    pub ratelimit: Arc<ratelimit::Registry>,
    /// The resolver for upstream discovery.
    pub resolver: dns::resolver::Resolver,
    /// Cancelled when the node is asked to drain (`POST /v1/node/drain`):
    /// it reports unhealthy to GSLB and anycast, then shuts down.
    pub drain: CancellationToken,
}
