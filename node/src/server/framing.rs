//! Detects HTTP/1.1 request heads that carry both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.3: it frames such a request by
//! `Transfer-Encoding`, drops the `Content-Length` before the request
//! reaches us, and closes the connection afterwards. Meridian refuses such
//! requests outright, as nginx does since 1.21.1, because their framing is
//! ambiguous and a classic request-smuggling vector. Since hyper hides the
//! dropped field, this wrapper watches the bytes hyper reads: after each
//! response (and at connection start) it scans the next request head for
//! the two field names and, at the end of the head, records whether both
//! were present. `admit` refuses the request when the flag is set.
//!
//! The scan jumps from line to line with `memchr` and looks at most 18
//! bytes of each line, so it costs little. A pipelined request whose head
//! was read before the previous response was written is not scanned; hyper's
//! own handling (chunked framing, connection closed) still applies to it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Marker placed in a request's extensions when its head had both fields.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// The flag a connection's scanner sets and its service reads.
#[derive(Default)]
pub(crate) struct Flag(AtomicBool);

impl Flag {
    /// Whether the last scanned head had both fields (and clears it).
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const LONGEST: usize = 18;
/// Enough of the HTTP/2 connection preface to tell it from an HTTP/1.1 head.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Scanner state between reads.
#[derive(Default)]
struct Scan {
    /// Scanning a head (until its empty line).
    active: bool,
    /// The start of the current line, when it began in an earlier read.
    carry: Vec<u8>,
    /// The current line began in an earlier read and was already judged.
    judged: bool,
    content_length: bool,
    transfer_encoding: bool,
    /// The connection turned out to be HTTP/2: stop scanning.
    off: bool,
    /// Bytes of [`H2_PREFACE`] matched at the connection's start so far;
    /// `None` once the connection is known to be HTTP/1.
    preface: Option<usize>,
}

impl Scan {
    /// A scanner for a new connection, scanning its first head.
    fn connection() -> Self {
        let mut scan = Self {
            preface: Some(0),
            ..Self::default()
        };
        scan.start();
        scan
    }

    fn start(&mut self) {
        if !self.off {
            self.active = true;
            self.carry.clear();
            self.judged = false;
            self.content_length = false;
            self.transfer_encoding = false;
        }
    }

    fn judge(&mut self, line: &[u8]) {
        let starts =
            |name: &[u8]| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        self.content_length |= starts(CONTENT_LENGTH);
        self.transfer_encoding |= starts(TRANSFER_ENCODING);
    }

    /// Feeds newly read bytes; returns Some(conflict) when the head ended.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        if !self.active {
            return None;
        }
        // Only the very first bytes of a connection can be the HTTP/2
        // preface, whichever way they are split into reads.
        if let Some(matched) = self.preface {
            let want = &H2_PREFACE[matched..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                if n == want.len() {
                    self.preface = None;
                    self.off = true;
                    self.active = false;
                } else {
                    self.preface = Some(matched + n);
                }
                return None;
            }
            self.preface = None;
            // The request line began in an earlier read: it is no field.
            self.judged |= matched > 0;
        }
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[line_start..newline];
            let whole_line_empty;
            if !self.carry.is_empty() || self.judged {
                if !self.judged {
                    let take = LONGEST.saturating_sub(self.carry.len()).min(line.len());
                    self.carry.extend_from_slice(&line[..take]);
                    let carry = std::mem::take(&mut self.carry);
                    self.judge(&carry);
                    whole_line_empty = carry == b"\r" || carry.is_empty();
                } else {
                    whole_line_empty = false;
                }
                self.carry.clear();
                self.judged = false;
            } else {
                self.judge(line);
                whole_line_empty = line.is_empty() || line == b"\r";
            }
            if whole_line_empty {
                self.active = false;
                return Some(self.content_length && self.transfer_encoding);
            }
            line_start = newline + 1;
        }
        let rest = &bytes[line_start..];
        if !self.judged && !rest.is_empty() {
            let take = LONGEST.saturating_sub(self.carry.len()).min(rest.len());
            self.carry.extend_from_slice(&rest[..take]);
            if self.carry.len() >= LONGEST {
                let carry = std::mem::take(&mut self.carry);
                self.judge(&carry);
                self.judged = true;
            }
        }
        None
    }
}

/// Feeds `head` to a fresh scanner in reads of `piece` bytes; the verdict
/// at the end of the head, if it ended (for the fuzz target).
pub(crate) fn scan_in_pieces(head: &[u8], piece: usize) -> Option<bool> {
    let mut scan = Scan::connection();
    head.chunks(piece.max(1)).find_map(|chunk| scan.feed(chunk))
}

pin_project_lite::pin_project! {
    /// Wraps a client connection's I/O to watch its request heads.
    pub(crate) struct Watched<IO> {
        #[pin]
        io: IO,
        scan: Scan,
        flag: Arc<Flag>,
    }
}

impl<IO> Watched<IO> {
    /// Watches `io`, reporting through `flag`.
    pub(crate) fn new(io: IO, flag: Arc<Flag>) -> Self {
        Self {
            io,
            scan: Scan::connection(),
            flag,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result
            && let Some(conflict) = this.scan.feed(&buf.filled()[before..])
        {
            this.flag.0.store(conflict, Ordering::Relaxed);
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if !this.scan.active {
            this.scan.start();
        }
        this.io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if !this.scan.active {
            this.scan.start();
        }
        this.io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_fields_in_any_split() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello";
        let reversed =
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n0\r\n\r\n";
        let te_only = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 5\r\n\r\n";
        let cl_only =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\ntransfer-encoding: x\r\n";
        for piece in [1, 2, 3, 7, 16, 17, 18, 19, 1000] {
            assert_eq!(scan_in_pieces(both, piece), Some(true), "piece {piece}");
            assert_eq!(scan_in_pieces(reversed, piece), Some(true), "piece {piece}");
            assert_eq!(scan_in_pieces(te_only, piece), Some(false), "piece {piece}");
            assert_eq!(scan_in_pieces(cl_only, piece), Some(false), "piece {piece}");
        }
    }

    #[test]
    fn the_body_is_not_scanned() {
        let mut scan = Scan::default();
        scan.start();
        assert_eq!(
            scan.feed(b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n"),
            Some(false)
        );
        assert_eq!(scan.feed(b"Transfer-Encoding: chunked\r\n\r\n"), None);
    }

    #[test]
    fn the_preface_counts_only_at_the_connection_start() {
        // Found by the request_head fuzz target: a head line reading like
        // the preface, starting a read, turned the scanner off.
        let head = b"GET / HTTP/1.1\r\nPRI * HTTP/2.0\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        for piece in 1..40 {
            assert_eq!(scan_in_pieces(head, piece), Some(true), "piece {piece}");
        }
        // A preface split across reads is still recognised.
        for piece in 1..20 {
            assert_eq!(
                scan_in_pieces(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", piece),
                None
            );
        }
        // A request line that only starts like the preface is HTTP/1.
        let almost = b"PRI * HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        for piece in 1..20 {
            assert_eq!(scan_in_pieces(almost, piece), Some(true), "piece {piece}");
        }
    }

    #[test]
    fn http2_turns_it_off() {
        let mut scan = Scan::connection();
        assert_eq!(scan.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        scan.start();
        assert_eq!(
            scan.feed(b"Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n"),
            None
        );
    }
}
