//! UDP links: a NAT-like flow map, two timer heaps, and the tasks that drive them.
//!
//! Tasks of one link, all on the relay's tracker and the link's token:
//!
//! - **listen** receives from clients on the listener socket, finds or opens
//!   the client's flow, and schedules the datagram on the forward lane.
//! - **flow**, one per client, receives replies on the flow's upstream socket
//!   and schedules them on the backward lane, addressed to the client and sent
//!   from the listener socket, so the client sees replies from the address it
//!   sent to.
//! - **release**, one per lane, sends each datagram when its instant comes.
//!
//! A flow is keyed by the client's address (the listener's side of the
//! 4-tuple is fixed). It owns an upstream socket on an ephemeral port,
//! connected to the upstream, so the upstream sees one stable source per
//! client, as QUIC wants, and the kernel filters out strangers. A flow idle in
//! both directions for [`Limits::flow_idle`] is evicted, and when the map is
//! full the least recently active flow goes first. Evicting a flow cancels its
//! task; datagrams it already scheduled are still sent.
//!
//! A lane is a [`DelayQueue`] behind a short lock, plus a `Notify` that wakes
//! its release task when something new is queued. The lock is never held
//! across an await.

use std::collections::HashMap;
use std::io;
use std::iter;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info_span, warn};

use super::link::{Link, Verdict};
use super::queue::DelayQueue;
use super::{Limits, LinkState, Way};
use crate::netns::Dialer;

/// Large enough for any UDP payload.
const MAX_DATAGRAM: usize = 64 * 1024;

/// Pause after an unexpected receive error, so a broken socket can't spin.
const RETRY: Duration = Duration::from_millis(20);

/// Starts the tasks of a UDP link on `socket`; each flow's upstream socket
/// is made through `dialer` (in the listener's namespace).
pub(crate) fn spawn(
    tracker: &TaskTracker,
    socket: UdpSocket,
    dialer: Dialer,
    state: Arc<LinkState>,
    limits: &Limits,
) {
    let lanes = Arc::new(Lanes {
        forward: Lane::new(limits.in_flight_bytes),
        backward: Lane::new(limits.in_flight_bytes),
    });
    for way in [Way::Forward, Way::Backward] {
        let span = info_span!("chaos.udp.release", link = state.id, ?way);
        tracker.spawn(release(state.clone(), lanes.clone(), way).instrument(span));
    }
    let span = info_span!("chaos.udp.listen", link = state.id, local = %state.local);
    let listener = Listener {
        socket: Arc::new(socket),
        dialer,
        state,
        lanes,
        tracker: tracker.clone(),
        flows: HashMap::new(),
        max_flows: limits.max_flows.max(1),
        idle: limits.flow_idle,
        epoch: Instant::now(),
    };
    tracker.spawn(listener.run().instrument(span));
}

/// The listener task's state.
struct Listener {
    socket: Arc<UdpSocket>,
    dialer: Dialer,
    state: Arc<LinkState>,
    lanes: Arc<Lanes>,
    tracker: TaskTracker,
    flows: HashMap<SocketAddr, Flow>,
    max_flows: usize,
    idle: Duration,
    epoch: Instant,
}

/// One client's path to the upstream. Dropping it stops its task.
struct Flow {
    socket: Arc<UdpSocket>,
    seen: Arc<AtomicU64>,
    token: CancellationToken,
}

struct Lanes {
    forward: Lane,
    backward: Lane,
}

/// One direction's timer heap and the wake-up for its release task.
struct Lane {
    queue: Mutex<DelayQueue<Datagram>>,
    wake: Notify,
}

/// A datagram waiting for its release instant, with the socket that will send
/// it: a flow's connected socket going forward, the listener going back.
struct Datagram {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    payload: Bytes,
}

// === impl Listener ===

impl Listener {
    async fn run(mut self) {
        let mut buf = vec![0; MAX_DATAGRAM];
        let period = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut sweep = tokio::time::interval(period);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.state.token.cancelled() => break,
                _ = sweep.tick() => self.sweep(),
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, client)) => self.forward(&buf[..len], client).await,
                    Err(error) => recv_failed(error, &self.state.token).await,
                },
            }
        }
        debug!("udp link stopped");
    }

    async fn forward(&mut self, payload: &[u8], client: SocketAddr) {
        let now = Instant::now();
        let socket = match self.flows.get(&client) {
            Some(flow) => {
                flow.seen.store(millis(self.epoch, now), Ordering::Relaxed);
                flow.socket.clone()
            }
            None => match self.open(client, now).await {
                Ok(socket) => socket,
                Err(error) => {
                    warn!(%error, %client, upstream = %self.state.upstream, "cannot open udp flow");
                    self.state.forward.count_dropped();
                    return;
                }
            },
        };
        let lane = &self.lanes.forward;
        schedule(&self.state, lane, Way::Forward, payload, socket, None, now);
    }

    /// Opens a flow for `client`, evicting the least recently active one if
    /// the map is full.
    async fn open(&mut self, client: SocketAddr, now: Instant) -> io::Result<Arc<UdpSocket>> {
        if self.flows.len() >= self.max_flows {
            let oldest = self
                .flows
                .iter()
                .min_by_key(|(_, flow)| flow.seen.load(Ordering::Relaxed))
                .map(|(addr, _)| *addr);
            if let Some(addr) = oldest {
                debug!(client = %addr, "udp flow evicted: map full");
                self.flows.remove(&addr);
            }
        }
        let upstream = self.state.upstream;
        let any: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = self.dialer.bind_udp(any).await?;
        socket.connect(upstream).await?;
        let socket = Arc::new(socket);
        let flow = Flow {
            socket: socket.clone(),
            seen: Arc::new(AtomicU64::new(millis(self.epoch, now))),
            token: self.state.token.child_token(),
        };
        let task = FlowTask {
            upstream: socket.clone(),
            client,
            listener: self.socket.clone(),
            state: self.state.clone(),
            lanes: self.lanes.clone(),
            seen: flow.seen.clone(),
            epoch: self.epoch,
            token: flow.token.clone(),
        };
        let span = debug_span!("chaos.udp.flow", link = self.state.id, %client);
        self.tracker.spawn(task.run().instrument(span));
        debug!(%client, source = ?socket.local_addr().ok(), "udp flow opened");
        self.flows.insert(client, flow);
        Ok(socket)
    }

    /// Evicts flows idle for longer than the limit.
    fn sweep(&mut self) {
        let now = millis(self.epoch, Instant::now());
        let idle = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        self.flows.retain(|client, flow| {
            let keep = now.saturating_sub(flow.seen.load(Ordering::Relaxed)) < idle;
            if !keep {
                debug!(%client, "udp flow evicted: idle");
            }
            keep
        });
    }
}

fn millis(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

// === impl Flow ===

impl Drop for Flow {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The task that carries one flow's replies.
struct FlowTask {
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    listener: Arc<UdpSocket>,
    state: Arc<LinkState>,
    lanes: Arc<Lanes>,
    seen: Arc<AtomicU64>,
    epoch: Instant,
    token: CancellationToken,
}

impl FlowTask {
    async fn run(self) {
        let mut buf = vec![0; MAX_DATAGRAM];
        loop {
            tokio::select! {
                () = self.token.cancelled() => break,
                received = self.upstream.recv(&mut buf) => match received {
                    Ok(len) => {
                        let now = Instant::now();
                        self.seen.store(millis(self.epoch, now), Ordering::Relaxed);
                        let (lane, to) = (&self.lanes.backward, Some(self.client));
                        let socket = self.listener.clone();
                        schedule(&self.state, lane, Way::Backward, &buf[..len], socket, to, now);
                    }
                    Err(error) => recv_failed(error, &self.token).await,
                },
            }
        }
    }
}

// === impl Lane ===

impl Lanes {
    fn get(&self, way: Way) -> &Lane {
        match way {
            Way::Forward => &self.forward,
            Way::Backward => &self.backward,
        }
    }
}

impl Lane {
    fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::new(DelayQueue::new(limit)),
            wake: Notify::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, DelayQueue<Datagram>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next due datagram, or else when the next one is due.
    fn pop_due(&self, now: Instant) -> Result<Datagram, Option<Instant>> {
        let mut queue = self.queue();
        queue.pop_due(now).ok_or_else(|| queue.next_at())
    }
}

/// Asks the link about one datagram and queues it (and its copy) on `lane`.
fn schedule(
    state: &LinkState,
    lane: &Lane,
    way: Way,
    payload: &[u8],
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    now: Instant,
) {
    let link = state.link(way);
    let Verdict::Deliver { at, copy } = link.datagram(payload.len(), now, state.cut(way)) else {
        return;
    };
    let payload = Bytes::copy_from_slice(payload);
    {
        let mut queue = lane.queue();
        for at in iter::once(at).chain(copy) {
            let datagram = Datagram {
                socket: socket.clone(),
                to,
                payload: payload.clone(),
            };
            if queue.push(at, payload.len(), datagram).is_err() {
                link.count_queue_full();
            }
        }
    }
    lane.wake.notify_one();
}

/// Sends each datagram of one lane when its instant comes.
async fn release(state: Arc<LinkState>, lanes: Arc<Lanes>, way: Way) {
    let lane = lanes.get(way);
    let link = state.link(way);
    loop {
        let next = loop {
            match lane.pop_due(Instant::now()) {
                Ok(datagram) => tokio::select! {
                    () = state.token.cancelled() => return,
                    () = send(datagram, link) => {}
                },
                Err(next) => break next,
            }
        };
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = state.token.cancelled() => return,
            () = lane.wake.notified() => {}
            () = due => {}
        }
    }
}

async fn send(datagram: Datagram, link: &Link) {
    let Datagram {
        socket,
        to,
        payload,
    } = datagram;
    let sent = match to {
        Some(to) => socket.send_to(&payload, to).await,
        None => socket.send(&payload).await,
    };
    match sent {
        Ok(_) => link.count_forwarded(payload.len()),
        Err(error) => {
            // Typically a pending ICMP error from an earlier datagram.
            debug!(%error, "udp send failed");
            link.count_dropped();
        }
    }
}

async fn recv_failed(error: io::Error, token: &CancellationToken) {
    match error.kind() {
        // An earlier datagram bounced (ICMP port unreachable): nothing is wrong
        // with the socket itself.
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            debug!(%error, "udp peer unreachable");
        }
        _ => {
            warn!(%error, "udp receive failed");
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
