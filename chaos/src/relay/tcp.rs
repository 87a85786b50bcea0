//! TCP links: an accept loop and, per connection, two delayed pumps.
//!
//! A connection goes through three phases, each watching the link's token and
//! its [`Control`] (cuts and [`TcpMode`]):
//!
//! 1. **Admit.** In [`TcpMode::Reset`] the client is reset at once; in
//!    [`TcpMode::Blackhole`] it is drained forever and never connected
//!    upstream. While the forward direction is cut or the link stalls, the
//!    connection waits here, so the upstream sees nothing of it.
//! 2. **Connect** upstream within [`Limits::connect_timeout`]; on failure the
//!    client is reset, as a refused connection would be.
//! 3. **Pump** both directions until both have seen end of stream, one fails,
//!    or the link is reset.
//!
//! A pump is a reader and a writer joined by a channel of
//! [`Limits::tcp_chunks`] chunks. The reader waits while its direction is cut
//! or stalled, reads a chunk, asks the link for its [`Slot`], clamps the
//! release instant so chunks stay in order, and then waits until the chunk has
//! left the token bucket before reading again. The writer sleeps until each
//! release instant and writes. End of stream travels the same way and becomes
//! a `shutdown(Write)`, so half-closes pass through.
//!
//! A reset, or an I/O error on either side, ends with `SO_LINGER` 0 on both
//! sockets before they close, so both peers get an RST. The streams are split
//! by reference, so the connection task still owns them when it decides.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info_span, warn};

use super::link::{Link, MAX_CHUNK};
use super::{Control, Limits, LinkState, TcpMode, Way};

/// Pause after a failed accept (such as EMFILE), so the loop can't spin.
const RETRY: Duration = Duration::from_millis(50);

/// Starts the accept loop of a TCP link on `listener`.
pub(crate) fn spawn(
    tracker: &TaskTracker,
    listener: TcpListener,
    state: Arc<LinkState>,
    limits: &Limits,
) {
    let span = info_span!("chaos.tcp.listen", link = state.id, local = %state.local);
    let accept = Accept {
        listener,
        state,
        tracker: tracker.clone(),
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        chunks: limits.tcp_chunks.max(1),
        connect_timeout: limits.connect_timeout,
        idle: limits.flow_idle,
    };
    tracker.spawn(accept.run().instrument(span));
}

struct Accept {
    listener: TcpListener,
    state: Arc<LinkState>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    chunks: usize,
    connect_timeout: Duration,
    idle: Duration,
}

/// How the pump phase ended.
enum End {
    /// Both directions closed cleanly.
    Closed,
    /// The link was reset, or a side failed: reset both.
    Abort,
    /// The link or relay is shutting down.
    Shutdown,
}

/// What a reader hands its writer.
enum Item {
    Data { release: Instant, chunk: Bytes },
    Eof { release: Instant },
}

// === impl Accept ===

impl Accept {
    async fn run(self) {
        let token = &self.state.token;
        loop {
            let permit = tokio::select! {
                () = token.cancelled() => break,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
            };
            let accepted = tokio::select! {
                () = token.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        state: self.state.clone(),
                        control: self.state.control.subscribe(),
                        chunks: self.chunks,
                        connect_timeout: self.connect_timeout,
                        idle: self.idle,
                        _permit: permit,
                    };
                    let span = debug_span!("chaos.tcp.conn", link = self.state.id, %peer);
                    self.tracker.spawn(conn.run(stream).instrument(span));
                }
                Err(error) => {
                    warn!(%error, "tcp accept failed");
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
        debug!("tcp link stopped");
    }
}

// === impl Connection ===

struct Connection {
    state: Arc<LinkState>,
    control: watch::Receiver<Control>,
    chunks: usize,
    connect_timeout: Duration,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(mut self, mut client: TcpStream) {
        let _ = client.set_nodelay(true);

        // 1. Admit.
        loop {
            let control = *self.control.borrow_and_update();
            match control.tcp {
                TcpMode::Reset => return abort(&client, None),
                TcpMode::Blackhole => return self.blackhole(client).await,
                TcpMode::Stall => {}
                TcpMode::Pass if control.cut_forward => {}
                TcpMode::Pass => break,
            }
            tokio::select! {
                () = self.state.token.cancelled() => return,
                () = changed(&mut self.control) => {}
            }
        }

        // 2. Connect.
        let connect = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.state.upstream),
        );
        let mut upstream = tokio::select! {
            () = self.state.token.cancelled() => return,
            connected = connect => match connected {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    debug!(%error, "upstream connect failed; resetting client");
                    return abort(&client, None);
                }
                Err(_) => {
                    debug!("upstream connect timed out; resetting client");
                    return abort(&client, None);
                }
            },
        };
        let _ = upstream.set_nodelay(true);

        // 3. Pump.
        let end = {
            let (client_rx, client_tx) = client.split();
            let (upstream_rx, upstream_tx) = upstream.split();
            let forward = self.pump(client_rx, upstream_tx, Way::Forward);
            let backward = self.pump(upstream_rx, client_tx, Way::Backward);
            let mut control = self.control.clone();
            tokio::select! {
                () = self.state.token.cancelled() => End::Shutdown,
                _ = control.wait_for(|c| c.tcp == TcpMode::Reset) => End::Abort,
                pumped = async { tokio::try_join!(forward, backward) } => match pumped {
                    Ok(_) => End::Closed,
                    Err(error) => {
                        debug!(%error, "tcp connection failed; resetting both sides");
                        End::Abort
                    }
                },
            }
        };
        match end {
            End::Abort => abort(&client, Some(&upstream)),
            End::Closed => debug!("tcp connection closed"),
            End::Shutdown => {}
        }
    }

    /// Reads and discards what the client sends, never answering, until the
    /// link is reset or stops, or for [`Limits::flow_idle`] after the client
    /// has closed its side (so that the connection's permit comes back).
    async fn blackhole(self, mut client: TcpStream) {
        let mut buf = vec![0; MAX_CHUNK];
        let mut closed_at = None;
        let mut control = self.control.clone();
        loop {
            let linger = async {
                match closed_at {
                    Some(at) => tokio::time::sleep_until(at + self.idle).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.state.token.cancelled() => return,
                _ = control.wait_for(|c| c.tcp == TcpMode::Reset) => return abort(&client, None),
                () = linger => return,
                read = client.read(&mut buf), if closed_at.is_none() => match read {
                    Ok(0) => closed_at = Some(Instant::now()),
                    Ok(_) => self.state.forward.count_dropped(),
                    Err(_) => return,
                },
            }
        }
    }

    async fn pump(&self, src: ReadHalf<'_>, dst: WriteHalf<'_>, way: Way) -> io::Result<()> {
        let (tx, rx) = mpsc::channel(self.chunks);
        let link = self.state.link(way);
        let reader = read_side(src, tx, link, way, self.control.clone());
        let writer = write_side(dst, rx, link);
        tokio::try_join!(reader, writer).map(|_| ())
    }
}

/// Reads chunks from `src`, asks the link when each may go on, and hands them
/// to the writer, pacing itself to the link's rate.
async fn read_side(
    mut src: ReadHalf<'_>,
    tx: mpsc::Sender<Item>,
    link: &Link,
    way: Way,
    mut control: watch::Receiver<Control>,
) -> io::Result<()> {
    let mut buf = vec![0; MAX_CHUNK];
    let mut last = Instant::now();
    loop {
        // Wait while this direction is cut or the link stalls.
        let mode = loop {
            let c = *control.borrow_and_update();
            if !c.cut(way) && c.tcp != TcpMode::Stall {
                break c.tcp;
            }
            changed(&mut control).await;
        };
        let want = link.chunk_size().min(buf.len());
        let len = tokio::select! {
            read = src.read(&mut buf[..want]) => read?,
            // Re-check cuts and modes before reading more.
            () = changed(&mut control) => continue,
        };
        let now = Instant::now();
        if len == 0 {
            // End of stream is never dropped: it only waits for the delay.
            let release = (now + link.params().delay).max(last);
            let _ = tx.send(Item::Eof { release }).await;
            return Ok(());
        }
        let Some(slot) = link.chunk(len, now, mode == TcpMode::Blackhole) else {
            continue;
        };
        last = slot.release.max(last);
        let item = Item::Data {
            release: last,
            chunk: Bytes::copy_from_slice(&buf[..len]),
        };
        if tx.send(item).await.is_err() {
            // The writer failed; its error ends the pump.
            return Ok(());
        }
        tokio::time::sleep_until(slot.sent).await;
    }
}

/// Writes each chunk at its release instant.
async fn write_side(
    mut dst: WriteHalf<'_>,
    mut rx: mpsc::Receiver<Item>,
    link: &Link,
) -> io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Item::Data { release, chunk } => {
                tokio::time::sleep_until(release).await;
                dst.write_all(&chunk).await?;
                link.count_forwarded(chunk.len());
            }
            Item::Eof { release } => {
                tokio::time::sleep_until(release).await;
                dst.shutdown().await?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sets `SO_LINGER` 0 so that closing sends an RST. The streams close when
/// the caller drops them.
fn abort(client: &TcpStream, upstream: Option<&TcpStream>) {
    for stream in std::iter::once(client).chain(upstream) {
        if let Err(error) = stream.set_zero_linger() {
            debug!(%error, "cannot set SO_LINGER 0");
        }
    }
    debug!("tcp connection reset");
}

/// Waits for the next change of the control; forever if its sender is gone.
async fn changed(control: &mut watch::Receiver<Control>) {
    if control.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests;
