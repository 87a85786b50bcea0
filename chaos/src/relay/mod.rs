//! A userspace network fault relay (TESTING-NOTES.md §3).
//!
//! A [`Relay`] owns a set of links. A link is one listener that forwards to one
//! upstream: `relay.udp(listen, upstream)` or `relay.tcp(listen, upstream)`.
//! Point node A's peer address for B at the link's
//! [`local_addr`](LinkHandle::local_addr) and traffic from A to B crosses it.
//! `relay.udp_in(dialer, listen, upstream)` makes a UDP link's sockets in a
//! network namespace (the hub between regions, [`crate::netns`]).
//!
//! Each link has two directions: **forward** (client to upstream) and
//! **backward** (replies). Each direction is its own [`LinkParams`]: delay and
//! jitter, loss and Gilbert–Elliott bursts, duplication, a token-bucket rate
//! with a queue cap, and a blackhole flag. On top of those sit two overlays
//! that [`LinkHandle::heal`] removes while keeping the shaping:
//! [`partition`](LinkHandle::partition) cuts one or both directions, and
//! [`TcpMode`] stalls, resets or blackholes TCP connections.
//!
//! # UDP
//!
//! Like a NAT, the relay gives each client address its own upstream socket, so
//! a QUIC connection keeps one stable path and replies find their way back.
//! Every datagram is decided by its direction's link (`link.rs`: drop, or
//! release at an instant, maybe twice) and waits whole in a bounded timer heap
//! (`queue.rs`) until a release task sends it. Jitter reorders. A cut direction
//! drops silently, as a real partition does.
//!
//! # TCP
//!
//! Each accepted connection gets a fresh upstream connection and two pumps.
//! A pump reads a chunk, asks its direction's link when the chunk may go on,
//! and hands it through a bounded channel to a writer that sleeps until then.
//! Chunks stay in order. A rate cap slows the reader down instead of dropping,
//! so the sender sees a slow link. A cut direction **stalls**: the relay stops
//! reading, the kernel buffers fill, and the bytes flow once healed, as TCP
//! retransmission would deliver them across a healed partition. A connection
//! accepted while the forward direction is cut waits before connecting
//! upstream. See [`TcpMode`] for reset and blackhole.
//!
//! # Tasks and shutdown
//!
//! Every task is spawned on the relay's `TaskTracker` inside a named span and
//! watches a `CancellationToken`: the relay's own, or a child per link. Dropping
//! the last clone of a [`LinkHandle`] (or calling [`LinkHandle::close`]) stops
//! that link; dropping the [`Relay`] stops every link; [`Relay::shutdown`] also
//! waits until every task has finished. Every queue is bounded by [`Limits`].
//!
//! # Replay
//!
//! Each direction of the `n`-th link created gets an RNG seeded from the relay
//! seed, `n` and the direction. Create links in the same order with the same
//! seed and the same datagrams meet the same decisions. The seed is logged when
//! the relay starts; `link.rs` says what is and isn't replayed.

mod link;
mod queue;
mod tcp;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use self::link::Link;
pub use self::link::{Bandwidth, Counters, GilbertElliott, Jitter, LinkParams, MAX_DELAY};
use crate::netns::Dialer;

/// Errors from building links.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener could not be bound.
    #[error("bind {proto} relay listener on {addr}")]
    Bind {
        /// The protocol of the link.
        proto: Proto,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The transport a link carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Datagrams, such as QUIC.
    Udp,
    /// A byte stream.
    Tcp,
}

/// One or both directions of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream.
    Forward,
    /// From the upstream back to the client.
    Backward,
    /// Both.
    Both,
}

/// A value per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directed<T> {
    /// From the client to the upstream.
    pub forward: T,
    /// From the upstream back to the client.
    pub backward: T,
}

/// What a TCP link does with its connections, on top of the [`LinkParams`]
/// of each direction. It has no effect on UDP links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TcpMode {
    /// Forward.
    #[default]
    Pass,
    /// Stop reading in both directions; the peers see a zero window. Bytes
    /// already read still arrive. Connections accepted meanwhile wait before
    /// connecting upstream.
    Stall,
    /// Abort every connection with a reset on both sides (`SO_LINGER` 0), and
    /// every connection accepted meanwhile.
    Reset,
    /// Connections accepted meanwhile are never connected upstream: the relay
    /// reads and discards what the client sends and never answers, for as long
    /// as the connection lives (see [`Limits::flow_idle`]). Existing
    /// connections discard in both directions until the mode changes, which
    /// leaves a hole in their streams.
    Blackhole,
}

/// Bounds on what one link may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// UDP client addresses tracked per link. When full, the least recently
    /// active flow is evicted; its client gets a new upstream port.
    pub max_flows: usize,
    /// A UDP flow with no traffic either way for this long is evicted. A
    /// blackholed TCP connection is dropped this long after its client closed
    /// its side.
    pub flow_idle: Duration,
    /// Concurrent TCP connections per link; further clients wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Bytes each UDP direction may hold in its timer heap; beyond it
    /// datagrams are dropped and counted in [`Counters::queue_full`].
    pub in_flight_bytes: usize,
    /// TCP chunks each pump may hold between reader and writer.
    pub tcp_chunks: usize,
    /// How long a TCP link waits for its upstream to accept; the client is
    /// reset on failure.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: 1024,
            flow_idle: Duration::from_secs(120),
            max_connections: 1024,
            in_flight_bytes: 16 * 1024 * 1024,
            tcp_chunks: 64,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A set of links sharing a seed, a task tracker and a shutdown signal.
///
/// Dropping the relay stops every link it built.
pub struct Relay {
    seed: u64,
    limits: Limits,
    token: CancellationToken,
    tracker: TaskTracker,
    next_link: AtomicU64,
}

/// Controls one link. Clones share the link; dropping the last one stops it.
#[derive(Clone)]
pub struct LinkHandle {
    guard: Arc<Guard>,
}

/// Stops the link when the last handle goes.
struct Guard {
    state: Arc<LinkState>,
}

/// What the tasks of one link share with its handle.
#[derive(Debug)]
pub(crate) struct LinkState {
    pub(crate) id: u64,
    pub(crate) proto: Proto,
    pub(crate) local: SocketAddr,
    pub(crate) upstream: SocketAddr,
    pub(crate) forward: Link,
    pub(crate) backward: Link,
    pub(crate) control: watch::Sender<Control>,
    pub(crate) token: CancellationToken,
}

/// The overlays on a link's parameters, watched by its TCP pumps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Control {
    pub(crate) cut_forward: bool,
    pub(crate) cut_backward: bool,
    pub(crate) tcp: TcpMode,
}

/// One direction, for the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    Forward,
    Backward,
}

// === impl Proto ===

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        })
    }
}

// === impl Direction ===

impl Direction {
    fn ways(self) -> &'static [Way] {
        match self {
            Self::Forward => &[Way::Forward],
            Self::Backward => &[Way::Backward],
            Self::Both => &[Way::Forward, Way::Backward],
        }
    }
}

// === impl Relay ===

impl Relay {
    /// A relay whose links draw their decisions from `seed`, with default
    /// [`Limits`].
    pub fn new(seed: u64) -> Self {
        Self::with_limits(seed, Limits::default())
    }

    /// A relay with explicit limits.
    pub fn with_limits(seed: u64, limits: Limits) -> Self {
        info!(seed, "chaos relay started");
        Self {
            seed,
            limits,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_link: AtomicU64::new(0),
        }
    }

    /// The seed, to print so a failing run can be replayed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Listens for UDP on `listen` (port 0 picks one) and relays to `upstream`.
    pub async fn udp(&self, listen: SocketAddr, upstream: SocketAddr) -> Result<LinkHandle, Error> {
        self.udp_in(&Dialer::Here, listen, upstream).await
    }

    /// [`Relay::udp`] with every socket of the link (its listener and the
    /// per-client sockets towards `upstream`) made through `dialer`: in a
    /// network namespace, e.g. the hub between the regions' namespaces.
    pub async fn udp_in(
        &self,
        dialer: &Dialer,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<LinkHandle, Error> {
        let bind = |source| Error::Bind {
            proto: Proto::Udp,
            addr: listen,
            source,
        };
        let socket = dialer.bind_udp(listen).await.map_err(bind)?;
        let local = socket.local_addr().map_err(bind)?;
        let state = self.link_state(Proto::Udp, local, upstream);
        udp::spawn(
            &self.tracker,
            socket,
            dialer.clone(),
            state.clone(),
            &self.limits,
        );
        Ok(LinkHandle::new(state))
    }

    /// Listens for TCP on `listen` (port 0 picks one) and relays to `upstream`.
    pub async fn tcp(&self, listen: SocketAddr, upstream: SocketAddr) -> Result<LinkHandle, Error> {
        let bind = |source| Error::Bind {
            proto: Proto::Tcp,
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let state = self.link_state(Proto::Tcp, local, upstream);
        tcp::spawn(&self.tracker, listener, state.clone(), &self.limits);
        Ok(LinkHandle::new(state))
    }

    /// Stops every link and waits for all of their tasks to finish.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn link_state(&self, proto: Proto, local: SocketAddr, upstream: SocketAddr) -> Arc<LinkState> {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        info!(link = id, %proto, %local, %upstream, "chaos link listening");
        Arc::new(LinkState {
            id,
            proto,
            local,
            upstream,
            forward: Link::new(link_seed(self.seed, id, Way::Forward)),
            backward: Link::new(link_seed(self.seed, id, Way::Backward)),
            control: watch::Sender::new(Control::default()),
            token: self.token.child_token(),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("seed", &self.seed)
            .field("links", &self.next_link.load(Ordering::Relaxed))
            .field("tasks", &self.tracker.len())
            .finish()
    }
}

/// SplitMix64, to spread `(seed, link, direction)` over independent streams.
fn link_seed(seed: u64, id: u64, way: Way) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let lane = id
        .wrapping_mul(2)
        .wrapping_add(u64::from(way == Way::Backward));
    mix(seed ^ mix(lane))
}

// === impl LinkHandle ===

impl LinkHandle {
    fn new(state: Arc<LinkState>) -> Self {
        Self {
            guard: Arc::new(Guard { state }),
        }
    }

    fn state(&self) -> &LinkState {
        &self.guard.state
    }

    /// The address the link listens on: give it to the client.
    pub fn local_addr(&self) -> SocketAddr {
        self.state().local
    }

    /// The address the link forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.state().upstream
    }

    /// The transport of this link.
    pub fn proto(&self) -> Proto {
        self.state().proto
    }

    /// Sets the parameters of both directions.
    pub fn set(&self, params: LinkParams) {
        self.set_direction(Direction::Both, params);
    }

    /// Sets the parameters of one or both directions. They apply to the next
    /// datagram or chunk; what is already scheduled keeps its release instant.
    pub fn set_direction(&self, direction: Direction, params: LinkParams) {
        for &way in direction.ways() {
            self.state().link(way).set(params.clone());
        }
    }

    /// The current parameters, sanitised.
    pub fn params(&self) -> Directed<LinkParams> {
        Directed {
            forward: self.state().forward.params(),
            backward: self.state().backward.params(),
        }
    }

    /// Cuts one or both directions, adding to any cut already in place. UDP
    /// drops; TCP stalls (see the [module docs](self)).
    pub fn partition(&self, direction: Direction) {
        self.state().control.send_modify(|c| {
            for &way in direction.ways() {
                match way {
                    Way::Forward => c.cut_forward = true,
                    Way::Backward => c.cut_backward = true,
                }
            }
        });
    }

    /// Restores connectivity: removes every cut, sets [`TcpMode::Pass`] and
    /// clears [`LinkParams::blackhole`] in both directions. Delay, loss and
    /// rate stay as set.
    pub fn heal(&self) {
        self.state().forward.clear_blackhole();
        self.state().backward.clear_blackhole();
        self.state().control.send_replace(Control::default());
    }

    /// Sets what the link does with TCP connections. No effect on UDP links.
    pub fn set_tcp_mode(&self, mode: TcpMode) {
        self.state().control.send_modify(|c| c.tcp = mode);
    }

    /// The current TCP mode.
    pub fn tcp_mode(&self) -> TcpMode {
        self.state().control.borrow().tcp
    }

    /// Which directions are cut.
    pub fn cuts(&self) -> Directed<bool> {
        let c = *self.state().control.borrow();
        Directed {
            forward: c.cut_forward,
            backward: c.cut_backward,
        }
    }

    /// The counters of both directions.
    pub fn counters(&self) -> Directed<Counters> {
        Directed {
            forward: self.state().forward.counters(),
            backward: self.state().backward.counters(),
        }
    }

    /// Stops the link now, for every clone of this handle. Its listener closes
    /// once its tasks notice, which is promptly but not synchronously.
    pub fn close(&self) {
        self.state().token.cancel();
    }
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("LinkHandle")
            .field("id", &s.id)
            .field("proto", &s.proto)
            .field("local", &s.local)
            .field("upstream", &s.upstream)
            .finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.state.token.cancel();
    }
}

// === impl LinkState ===

impl LinkState {
    pub(crate) fn link(&self, way: Way) -> &Link {
        match way {
            Way::Forward => &self.forward,
            Way::Backward => &self.backward,
        }
    }

    /// Whether `way` is cut right now.
    pub(crate) fn cut(&self, way: Way) -> bool {
        self.control.borrow().cut(way)
    }
}

// === impl Control ===

impl Control {
    pub(crate) fn cut(&self, way: Way) -> bool {
        match way {
            Way::Forward => self.cut_forward,
            Way::Backward => self.cut_backward,
        }
    }
}

#[cfg(test)]
mod tests;
