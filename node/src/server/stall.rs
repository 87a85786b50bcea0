//! Write-idle timeout: closes a connection whose client stopped reading.
//!
//! A slow-read client (a tiny TCP window, or none at all) makes the
//! gateway's writes pend forever, pinning the response, its upstream
//! connection and its buffers. [`WriteIdle`] wraps a connection's I/O: when
//! a write (or flush, or shutdown) stays pending with no progress for
//! `timeouts.write-idle`, the operation fails with `TimedOut`, hyper ends
//! the connection and the socket is closed. Any progress restarts the
//! period, so a client reading slowly but steadily is not cut.
//!
//! [`Paced`] covers the HTTP/2 variant where the client keeps reading the
//! socket but withholds flow-control window, so no write is ever pending.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// I/O whose writes fail after `limit` without progress.
    pub(crate) struct WriteIdle<IO> {
        #[pin]
        io: IO,
        limit: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        waiting: bool,
        expired: Counter,
        no_delay: bool,
    }
}

impl<IO> WriteIdle<IO> {
    /// Wraps `io`; `expired` counts the connections cut.
    pub(crate) fn new(io: IO, limit: Duration, expired: Counter) -> Self {
        Self {
            io,
            limit,
            sleep: None,
            waiting: false,
            expired,
            no_delay: false,
        }
    }
}

/// How a connection's writes become TCP segments.
///
/// **Nagle's algorithm.** As nginx does, a plain connection has it turned
/// off only once a write could wait behind an earlier one (a second
/// response, a body written in parts): a connection that carries one
/// response in one write and closes never needs it, and is spared the
/// system call.
///
/// **The last bytes before a close.** They are written with `MSG_MORE`,
/// which holds a partial segment back, and the shutdown that follows at
/// once sends them with the FIN in one segment rather than two. On
/// loopback and on a LAN a segment costs both ends a pass through their
/// network stacks, and a connection that carries one request is only a
/// handful of them; nginx sends its FIN on its own.
pub(crate) trait Segments: AsyncWrite {
    /// Turns Nagle's algorithm off (once).
    fn no_delay(&mut self);

    /// Writes `buf`, the last bytes before the write side is shut down:
    /// held for the shutdown's FIN where the transport can. The caller
    /// must shut down right after; until then a partial segment waits.
    fn poll_write_last(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write(cx, buf)
    }
}

impl Segments for tokio::net::TcpStream {
    fn no_delay(&mut self) {
        let _ = self.set_nodelay(true);
    }

    #[cfg(target_os = "linux")]
    fn poll_write_last(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tokio's writes take no flags: the send is socket2's, inside
        // tokio's readiness (`try_io` clears it on `WouldBlock`).
        let stream = self.get_mut();
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(&*stream)
                    .send_with_flags(buf, libc::MSG_MORE | libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                sent => return Poll::Ready(sent),
            }
        }
    }
}

impl Segments for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    /// Turned off before the handshake already, whose flights want it.
    fn no_delay(&mut self) {}
}

impl<IO: Segments> Segments for WriteIdle<IO> {
    fn no_delay(&mut self) {
        if !self.no_delay {
            self.io.no_delay();
            self.no_delay = true;
        }
    }

    fn poll_write_last(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |io, cx| io.poll_write_last(cx, buf))
    }
}

/// Turns a pending write into an error once it has waited too long.
fn stalled(
    limit: Duration,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    waiting: &mut bool,
    expired: &Counter,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let deadline = crate::clock::now() + limit;
    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if !*waiting {
        sleep.as_mut().reset(deadline);
        *waiting = true;
    }
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => {
            expired.increment(1);
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (timeouts.write-idle)",
            )))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<IO> WriteIdle<IO> {
    /// Runs one write-side operation; a pending one counts toward the limit.
    fn guard<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        match op(this.io, cx) {
            Poll::Ready(result) => {
                *this.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => match stalled(*this.limit, this.sleep, this.waiting, this.expired, cx)
            {
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                _ => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncRead> AsyncRead for WriteIdle<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for WriteIdle<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// On a real connection: the last bytes stay in the kernel until the
    /// shutdown, which sends them with the FIN.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_last_bytes_wait_for_the_shutdown() {
        use std::io::Read;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut server = tokio::net::TcpStream::from_std(server).unwrap();
        let sent = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_last(cx, b"bye"))
            .await
            .unwrap();
        assert_eq!(sent, 3);
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let held = client.read(&mut buf).unwrap_err();
        assert_eq!(held.kind(), io::ErrorKind::WouldBlock, "held for the FIN");
        server.shutdown().await.unwrap();
        client.set_nonblocking(false).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye", "sent with it, then the end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteIdle::new(near, Duration::from_secs(5), Counter::noop());
        // The far side reads slowly but steadily: never cut.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        io.write_all(&[7u8; 64 + 8 * 16]).await.unwrap();
        let _far = reader.await.unwrap();
        // Now nobody reads: the write fails once 5 s pass.
        let started = Instant::now();
        let error = io.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}

// === impl Paced ===

/// Per-connection record of response bodies that hyper is not taking.
///
/// A response body that has handed hyper a data frame waits until hyper asks
/// for the next one, which it does once the previous one was sent. When the
/// client stops granting HTTP/2 flow-control window (while still reading
/// the socket, so that no write is pending), hyper never asks. The
/// connection watchdog closes a connection on which some body has waited
/// and no body has moved for `timeouts.write-idle`.
#[derive(Default)]
pub(crate) struct Pace {
    /// Bodies waiting for hyper to take their next frame.
    waiting: AtomicU32,
    /// Body polls so far.
    moves: AtomicU64,
}

impl Pace {
    /// The body-poll count while some body is waiting, or `None` when none is.
    pub(crate) fn stalled_at(&self) -> Option<u64> {
        (self.waiting.load(Ordering::Relaxed) > 0).then(|| self.moves.load(Ordering::Relaxed))
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports to its connection's [`Pace`].
    pub(crate) struct Paced<B> {
        #[pin]
        body: B,
        pace: Arc<Pace>,
        waiting: bool,
    }

    impl<B> PinnedDrop for Paced<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.waiting {
                this.pace.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl<B> Paced<B> {
    pub(crate) fn new(body: B, pace: Arc<Pace>) -> Self {
        Self {
            body,
            pace,
            waiting: false,
        }
    }
}

impl<B: http_body::Body> http_body::Body for Paced<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        this.pace.moves.fetch_add(1, Ordering::Relaxed);
        if *this.waiting {
            *this.waiting = false;
            this.pace.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            *this.waiting = true;
            this.pace.waiting.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
