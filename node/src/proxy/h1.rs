//! The upstream side of the HTTP/1.1 fast path: one exchange on a pooled
//! connection, run by the request's own task.
//!
//! hyper's client drives each connection from a task of its own and hands
//! requests and responses over through channels, so every proxied request
//! costs two task wake-ups and two channel hand-overs on top of the I/O
//! (docs/benchmarks.md). Most requests a gateway forwards are simple: a
//! head and at most a body that is already complete. [`Connection`] sends
//! those itself: it encodes the head into the connection's buffer, writes
//! head and body in one system call, parses the response head (with
//! `crate::head` when it is canonical, `httparse` otherwise) and leaves
//! the connection inside the response body ([`RawBody`]), which reads the
//! body as the client side polls it and gives the connection back for
//! reuse when it ended cleanly.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//! 304; `Transfer-Encoding` ending in chunked is decoded; any other
//! `Transfer-Encoding`, or neither field, reads to the end of the
//! connection; `Content-Length` otherwise (repeated values must agree).
//! Interim 1xx responses are skipped. A connection is reused only when the
//! response was HTTP/1.1 without `Connection: close`, was framed by length
//! or chunks, and was read to its end with no byte left over.
//!
//! The request timeout (until the response head) is a timer the connection
//! keeps and moves forward for each exchange, and the response's fields stay
//! raw for callers that ask for it ([`RawFields`]).
//!
//! Requests with a streamed body, upgrades and HTTP/2 upstreams go through
//! hyper's client (`client.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::deadline::Deadline;
use crate::text::{eq_ignore_ascii_case, push_field};

/// The most header fields a response head may have.
const MAX_FIELDS: usize = 100;
/// The longest response head.
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line or trailer section.
const MAX_LINE: usize = 4 * 1024;
/// Free space the read buffer has before each read.
const READ_ROOM: usize = 16 * 1024;
/// The most a body read asks for at once: a 100 KiB body in one read
/// where it has arrived, as a buffer that [`take_frame`] hands on whole.
const MAX_READ: usize = 128 * 1024;
/// The largest body frame that leaves the read buffer's memory with the
/// connection (see [`take_frame`]).
const SMALL_FRAME: usize = 4 * 1024;

/// A request head as the fast path writes it, every part borrowed: the
/// proxy sends without building an `http::Request` for each attempt.
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target in origin form (path and query).
    pub target: &'a str,
    /// `Host`, when it is not among the fields.
    pub host: Option<&'a str>,
    /// The request's own fields.
    pub fields: Option<&'a HeaderMap>,
    /// Then the fields every attempt of a proxied request sends.
    pub common: Option<&'a super::UpstreamFields>,
    /// Leave the response's fields as they came ([`RawFields`], in its
    /// body) instead of parsing them into its `HeaderMap`. Only for a
    /// caller that reads them through [`crate::body::fields_mut`].
    pub raw_response: bool,
}

impl<'a> RequestHead<'a> {
    /// The head of `request` (origin-form URI, `Host` among its fields),
    /// followed by `common`.
    pub fn of<T>(request: &'a Request<T>, common: Option<&'a super::UpstreamFields>) -> Self {
        Self {
            method: request.method(),
            target: request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            host: None,
            fields: Some(request.headers()),
            common,
            raw_response: false,
        }
    }
}

/// A kept-alive HTTP/1.1 connection to an upstream target. Boxed: it
/// travels inside every response body and pool entry, and a pointer moves
/// for less than its socket and buffers would.
#[derive(Debug)]
pub struct Connection(Box<Wire>);

/// What a [`Connection`] holds.
#[derive(Debug)]
struct Wire {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written.
    out: Vec<u8>,
    /// The fields of the response being read; their spans' allocation
    /// serves every response on the connection.
    fields: RawFields,
    /// The request timeout, set anew for each exchange: moving a deadline
    /// later costs no timer update (see `deadline`), where a new timer
    /// takes the timer wheel's lock twice (in and out).
    timer: Option<Pin<Box<Deadline>>>,
}

impl Wire {
    /// Arms the timer for `deadline`.
    fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().set(deadline),
            None => self.timer = Some(Box::pin(Deadline::new(deadline))),
        }
    }
}

/// What went wrong in an exchange, and whether the target saw anything of
/// it: a request that failed before any response byte on a connection
/// from the pool may be sent again on a new one.
#[derive(Debug)]
pub struct Failed {
    /// The cause.
    pub error: io::Error,
    /// No byte of a response arrived.
    pub unanswered: bool,
    /// The whole request was written.
    pub sent: bool,
    /// No response head came before the deadline.
    pub timed_out: bool,
}

impl Failed {
    fn answered(error: io::Error) -> Self {
        Self {
            error,
            unanswered: false,
            sent: true,
            timed_out: false,
        }
    }

    fn elapsed(unanswered: bool, sent: bool) -> Self {
        Self {
            error: io::Error::new(io::ErrorKind::TimedOut, "no response head in time"),
            unanswered,
            sent,
            timed_out: true,
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Connection {
    /// A connection over `io`, connected already.
    pub fn new(io: TcpStream) -> Self {
        Self(Box::new(Wire {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            fields: RawFields::default(),
            timer: None,
        }))
    }

    /// Whether an idle connection can carry another request: the target has
    /// not closed it nor sent anything unasked. Looks at the socket's
    /// readiness only, with no system call unless the target did something.
    pub fn usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.0.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            // Readable while idle: a close, a reset or stray bytes.
            Poll::Ready(Ok(())) => matches!(
                self.0.io.try_read(&mut [0u8; 1]),
                Err(ref error) if error.kind() == io::ErrorKind::WouldBlock
            ),
            Poll::Ready(Err(_)) => false,
        }
    }

    /// Sends `head` with its complete `body` and reads the response head,
    /// until `deadline` if there is one; the response's body reads the rest
    /// from this connection.
    pub async fn exchange(
        mut self,
        head: &RequestHead<'_>,
        body: Option<&Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Response<RawBody>, Failed> {
        if let Some(deadline) = deadline {
            self.0.arm(deadline);
        }
        let Wire { io, out, timer, .. } = &mut *self.0;
        encode(out, head, body.map_or(0, Bytes::len));
        let write = async {
            match body {
                Some(body) if !body.is_empty() => write_both(io, out, body).await,
                _ => io.write_all(out).await,
            }
        };
        let timer = timer.as_mut().filter(|_| deadline.is_some());
        let sent = within(timer, write)
            .await
            .ok_or_else(|| Failed::elapsed(true, false))?;
        sent.map_err(|error| Failed {
            error,
            unanswered: true,
            sent: false,
            timed_out: false,
        })?;
        let head_request = *head.method == Method::HEAD;
        loop {
            // An empty buffer (the usual state after sending) has nothing
            // to parse yet.
            if !self.0.buf.is_empty() {
                let wire = &mut *self.0;
                match parse(&wire.buf, head_request, &mut wire.fields.spans)
                    .map_err(Failed::answered)?
                {
                    Some((len, head)) if head.status.is_informational() => {
                        // 100 Continue, 103 Early Hints: the answer comes after.
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(Failed::answered(invalid(
                                "101 to a request without Upgrade",
                            )));
                        }
                        self.0.buf.advance(len);
                        continue;
                    }
                    Some((len, parsed)) => return Ok(self.respond(len, parsed, head.raw_response)),
                    None if self.0.buf.len() >= MAX_HEAD => {
                        return Err(Failed::answered(invalid("response head too large")));
                    }
                    None => {}
                }
            }
            let unanswered = self.0.buf.is_empty();
            let Wire { io, buf, timer, .. } = &mut *self.0;
            let read = std::future::poll_fn(|cx| read_more(io, buf, cx, 0));
            match within(timer.as_mut().filter(|_| deadline.is_some()), read).await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    return Err(Failed {
                        error,
                        unanswered,
                        sent: true,
                        timed_out: false,
                    });
                }
                None => return Err(Failed::elapsed(unanswered, true)),
            }
        }
    }

    /// The response whose head is the first `len` bytes of the buffer; its
    /// fields stay raw when `raw` asks for it and `Connection` lists no
    /// further hop-by-hop field.
    fn respond(mut self, len: usize, head: Head, raw: bool) -> Response<RawBody> {
        // The body takes the connection once the fields are read into the
        // response's own map (not one that replaces it: dropping even an
        // empty map is a few calls).
        let mut response = Response::new(RawBody {
            state: head.framing,
            reusable: head.reusable,
            conn: None,
        });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        let wire = &mut *self.0;
        let fields = &mut wire.fields;
        fields.head = wire.buf.split_to(len).freeze();
        fields.hops = head.hops;
        if raw && head.plain_hops {
            fields.pending = true;
        } else {
            // Room for the fields the gateway adds on the way out (request
            // id, trace context, security and CORS headers) without growing.
            let headers = response.headers_mut();
            headers.reserve(fields.spans.len() + 8);
            fields.parse_into(headers, head.plain_hops);
            fields.release();
        }
        response.body_mut().conn = Some(self);
        response
    }

    /// Reads more, with room for up to `expected` bytes (see [`fill_for`]).
    fn poll_fill_for(&mut self, cx: &mut Context<'_>, expected: u64) -> Poll<io::Result<usize>> {
        fill_for(&mut self.0.io, &mut self.0.buf, cx, expected)
    }

    /// Reads more, expecting `expected` bytes (see [`read_more`]).
    fn poll_more(&mut self, cx: &mut Context<'_>, expected: u64) -> Poll<io::Result<()>> {
        read_more(&mut self.0.io, &mut self.0.buf, cx, expected)
    }
}

/// Reads from `io` into `buf`, with room for up to `expected` bytes (at
/// most [`MAX_READ`]) so that a large body takes few reads.
fn fill_for(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    expected: u64,
) -> Poll<io::Result<usize>> {
    let room = usize::try_from(expected).map_or(MAX_READ, |n| n.clamp(READ_ROOM, MAX_READ));
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The first `n` bytes of `buf`, as a body frame. A large frame that is
/// all the buffer holds takes the buffer's memory with it: once the frame
/// is written the memory goes back to the allocator while it is still in
/// the CPU's cache, and the next large read (on any connection) gets it
/// from there. Kept by the connection instead, it would wait for this
/// connection's next response, by which time, with many connections
/// taking turns, it has left the cache, and the kernel's copy into it
/// costs twice as much (docs/benchmarks.md). Small frames leave the
/// buffer with the connection, which reads its next small response into
/// it without allocating.
fn take_frame(buf: &mut BytesMut, n: usize) -> Bytes {
    if n == buf.len() && n > SMALL_FRAME {
        std::mem::take(buf).freeze()
    } else {
        buf.split_to(n).freeze()
    }
}

/// [`fill_for`], where an early end of the connection is an error.
fn read_more(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    expected: u64,
) -> Poll<io::Result<()>> {
    match ready!(fill_for(io, buf, cx, expected)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Poll::Ready(Ok(())),
        Err(error) => Poll::Ready(Err(error)),
    }
}

/// Encodes `head` into `out`: the request line, `Host`, the request's
/// fields and then the `common` ones but framing ones, and `Content-Length`
/// for a body (or for an empty one of a method that usually has one).
fn encode(out: &mut Vec<u8>, head: &RequestHead<'_>, body: usize) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = head.host {
        push_field(out, b"host", host.as_bytes());
    }
    let mut field = |name: &HeaderName, value: &[u8]| {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            return;
        }
        push_field(out, name.as_str().as_bytes(), value);
    };
    for (name, value) in head.fields.into_iter().flatten() {
        field(name, value.as_bytes());
    }
    if let Some(common) = head.common {
        common.each(field);
    }
    let method = head.method;
    if body > 0 || method == Method::POST || method == Method::PUT || method == Method::PATCH {
        push_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(body).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
}

/// Runs `work` to its end, or until `timer` (if any) fires: `None` then.
async fn within<T>(
    mut timer: Option<&mut Pin<Box<Deadline>>>,
    work: impl Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match &mut timer {
            Some(timer) => timer.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// Writes `first` then `second`, in one system call when the socket takes
/// both.
pub(crate) async fn write_both<S: tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    mut first: &[u8],
    mut second: &[u8],
) -> io::Result<()> {
    while !first.is_empty() {
        let written = io
            .write_vectored(&[io::IoSlice::new(first), io::IoSlice::new(second)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if written < first.len() {
            first = &first[written..];
        } else {
            second = &second[written - first.len()..];
            first = &[];
        }
    }
    io.write_all(second).await
}

/// A parsed response head: where its fields lie, and how its body comes.
struct Head {
    status: StatusCode,
    version: Version,
    /// The hop-by-hop fields, a bit per field.
    hops: u128,
    framing: State,
    reusable: bool,
    /// `Connection` names no field beyond `keep-alive` and `close`, so the
    /// hop-by-hop fields are known and dropped as the map is built (else
    /// the proxy's general strip removes them and the ones it lists).
    plain_hops: bool,
}

/// Parses the response head at the start of `buf`: `None` until it is
/// complete, with its length once it is; `spans` gets where its fields lie
/// (name start and end, value start and end).
fn parse(
    buf: &[u8],
    head_request: bool,
    spans: &mut Vec<[usize; 4]>,
) -> io::Result<Option<(usize, Head)>> {
    const { assert!(MAX_FIELDS <= 128, "a bit per field in `Head::hops`") };
    let (len, minor, code) = match crate::head::response(buf, MAX_FIELDS, spans) {
        Some(line) => (line.len, line.minor, line.code),
        None => match parse_other(buf, spans)? {
            Some(parsed) => parsed,
            None => return Ok(None),
        },
    };
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid response status"))?;
    let version = match minor {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut hops = 0u128;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = version != Version::HTTP_11;
    let mut plain_hops = true;
    for (i, &[name_start, name_end, value_start, value_end]) in spans.iter().enumerate() {
        let (name, value) = (&buf[name_start..name_end], &buf[value_start..value_end]);
        if super::is_hop_by_hop_name(name) {
            hops |= 1 << i;
        }
        if eq_ignore_ascii_case(name, b"content-length") {
            let value = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| invalid("invalid Content-Length"))?;
            if length.is_some_and(|seen| seen != value) {
                return Err(invalid("conflicting Content-Length values"));
            }
            length = Some(value);
        } else if eq_ignore_ascii_case(name, b"transfer-encoding") {
            // The last coding decides; a later field overrides an earlier.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(eq_ignore_ascii_case(last.trim_ascii(), b"chunked"));
        } else if eq_ignore_ascii_case(name, b"connection") {
            for token in crate::text::list_items(value) {
                if eq_ignore_ascii_case(token, b"close") {
                    close = true;
                } else if !token.is_empty() && !eq_ignore_ascii_case(token, b"keep-alive") {
                    plain_hops = false;
                }
            }
        }
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) => State::Length(0),
        (false, Some(true), _) => State::Chunked(Chunk::Size),
        (false, Some(false), _) | (false, None, None) => State::UntilClose,
        (false, None, Some(length)) => State::Length(length),
    };
    // Both fields: framed by the coding, and the connection is not trusted
    // any further (RFC 9112 §6.3).
    close |= chunked.is_some() && length.is_some();
    let reusable = !close && !matches!(framing, State::UntilClose);
    Ok(Some((
        len,
        Head {
            status,
            version,
            hops,
            framing,
            reusable,
            plain_hops,
        },
    )))
}

/// A head that is not canonical, parsed by `httparse`: its length,
/// minor version and status code, `None` while it is incomplete.
fn parse_other(buf: &[u8], spans: &mut Vec<[usize; 4]>) -> io::Result<Option<(usize, u8, u16)>> {
    // Uninitialised: httparse writes only the fields it finds.
    let mut parsed = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut parsed,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid("malformed response head")),
    };
    let code = response
        .code
        .ok_or_else(|| invalid("invalid response status"))?;
    crate::head::spans_of(buf, response.headers, spans);
    Ok(Some((len, response.version.unwrap_or(0), code)))
}

/// Where a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes to go.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Until the target closes the connection.
    UntilClose,
    /// Ended.
    Done,
}

/// The parts of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The chunk-size line.
    Size,
    /// This many data bytes to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields, up to the empty line.
    Trailers,
}

/// A response body read from its connection as it is polled.
#[derive(Debug)]
pub struct RawBody {
    state: State,
    reusable: bool,
    conn: Option<Connection>,
}

/// A response's fields as the upstream sent them, not parsed into a
/// `HeaderMap`: the fast path writes them to the client as they are, and
/// whatever needs a map builds it first ([`crate::body::fields_mut`]).
/// Every response would otherwise pay a map (two allocations, a name
/// lookup and a hash insert per field) that most only write out again.
/// They live in the connection, which the response body holds.
#[derive(Debug, Default)]
pub struct RawFields {
    /// The response head, which the spans index.
    head: Bytes,
    /// Name start and end, value start and end, per field.
    spans: Vec<[usize; 4]>,
    /// The hop-by-hop fields, a bit per span: never passed on.
    hops: u128,
    /// The fields are the response's, not in its map yet.
    pending: bool,
    /// Fields the gateway set on the response meanwhile (request id, trace
    /// context, region), as `HeaderMap::insert` would: each replaces the
    /// upstream's of its name. Kept here while the response's map is
    /// empty, so that no map is built for them either; the vector's
    /// allocation serves every response on the connection.
    set: Vec<(HeaderName, HeaderValue)>,
    /// The lengths of the names in `set`, a bit each (63 for any longer):
    /// most upstream fields are told apart from them by length alone.
    set_lengths: u64,
}

/// A name length's bit in `RawFields::set_lengths`.
fn length_bit(name: &[u8]) -> u64 {
    1 << name.len().min(63)
}

impl RawFields {
    /// Each upstream field's name and value, in the upstream's order and
    /// case, but the hop-by-hop ones and those the gateway set (see
    /// [`RawFields::each_set`]).
    pub fn each<'a>(&'a self, mut visit: impl FnMut(&'a [u8], &'a [u8])) {
        for (i, &[name_start, name_end, value_start, value_end]) in self.spans.iter().enumerate() {
            let name = &self.head[name_start..name_end];
            if self.hops & 1 << i == 0 && !self.replaced(name) {
                visit(name, &self.head[value_start..value_end]);
            }
        }
    }

    /// The fields the gateway set on the response, in the order it set them.
    pub fn each_set(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.set.iter().map(|(name, value)| (name, value))
    }

    /// Sets `name` to `value`, replacing the upstream's fields of that name
    /// and an earlier value set.
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        match self.set.iter_mut().find(|(set, _)| *set == name) {
            Some(slot) => slot.1 = value,
            None => {
                self.set_lengths |= length_bit(name.as_str().as_bytes());
                self.set.push((name, value));
            }
        }
    }

    /// Whether the gateway set a field named `name` (any case).
    fn replaced(&self, name: &[u8]) -> bool {
        self.set_lengths & length_bit(name) != 0
            && self
                .set
                .iter()
                .any(|(set, _)| eq_ignore_ascii_case(set.as_str().as_bytes(), name))
    }

    /// Moves pending fields into `map`, but those whose name it has
    /// already: a field the gateway set replaces the upstream's (and one
    /// set in the map later replaces one set here).
    fn move_into(&mut self, map: &mut HeaderMap) {
        if !self.pending {
            return;
        }
        for (i, &[start, end, ..]) in self.spans.iter().enumerate() {
            let name = &self.head[start..end];
            if self.replaced(name) || (!map.is_empty() && contains_name(map, name)) {
                self.hops |= 1 << i;
            }
        }
        map.reserve(self.spans.len() + self.set.len());
        self.parse_into(map, true);
        for (name, value) in self.set.drain(..) {
            if !map.contains_key(&name) {
                map.insert(name, value);
            }
        }
        self.release();
    }

    /// Parses the fields into `map`, leaving out the hop-by-hop ones when
    /// `drop_hops`.
    fn parse_into(&self, map: &mut HeaderMap, drop_hops: bool) {
        for (i, &[name_start, name_end, value_start, value_end]) in self.spans.iter().enumerate() {
            if drop_hops && self.hops & 1 << i != 0 {
                continue;
            }
            // The parse checked the bytes; the `http` crate is stricter
            // about names, and a field it refuses is dropped.
            let Ok(name) = HeaderName::from_bytes(&self.head[name_start..name_end]) else {
                continue;
            };
            if let Ok(value) =
                HeaderValue::from_maybe_shared(self.head.slice(value_start..value_end))
            {
                map.append(name, value);
            }
        }
    }

    /// Lets the head go: the read buffer can reclaim its space only once
    /// nothing refers to it.
    fn release(&mut self) {
        self.head = Bytes::new();
        self.pending = false;
        self.set.clear();
        self.set_lengths = 0;
    }
}

/// Every field of a response whose map is `map` and whose fields may be
/// `raw`, as it goes out: the upstream's (but those the gateway replaced),
/// the map's, then those the gateway set beside the raw ones (but those
/// the map has: it got them later).
pub fn each_field<'a>(
    map: &'a HeaderMap,
    raw: Option<&'a RawFields>,
    mut visit: impl FnMut(&'a [u8], &'a [u8]),
) {
    if let Some(raw) = raw {
        raw.each(|name, value| {
            if !contains_name(map, name) {
                visit(name, value);
            }
        });
    }
    for (name, value) in map {
        visit(name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in raw.into_iter().flat_map(RawFields::each_set) {
        if !map.contains_key(name) {
            visit(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Whether `map` has a field named `name` (any case): a scan, as the maps
/// this is asked of hold the few fields the gateway set.
fn contains_name(map: &HeaderMap, name: &[u8]) -> bool {
    map.keys()
        .any(|key| eq_ignore_ascii_case(key.as_str().as_bytes(), name))
}

impl RawBody {
    /// The response's fields, when they were left raw.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        self.conn
            .as_ref()
            .map(|conn| &conn.0.fields)
            .filter(|fields| fields.pending)
    }

    /// Sets a field on a response whose fields are raw (see
    /// [`RawFields`]); hands it back when they are not.
    pub fn set_field(
        &mut self,
        name: HeaderName,
        value: HeaderValue,
    ) -> Result<(), (HeaderName, HeaderValue)> {
        match &mut self.conn {
            Some(conn) if conn.0.fields.pending => {
                conn.0.fields.set(name, value);
                Ok(())
            }
            _ => Err((name, value)),
        }
    }

    /// Moves the raw fields into `map` (see [`RawFields`]).
    pub fn fields_into(&mut self, map: &mut HeaderMap) {
        if let Some(conn) = &mut self.conn {
            conn.0.fields.move_into(map);
        }
    }

    /// The connection, once the body ended cleanly and it can carry
    /// another request.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        // A length-delimited body whose last byte was read is ended even if
        // nobody polled it once more (hyper's server stops at the length).
        if http_body::Body::is_end_stream(self) && self.reusable {
            let mut conn = self.conn.take().filter(|conn| conn.0.buf.is_empty())?;
            conn.0.fields.release();
            Some(conn)
        } else {
            None
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.state = State::Done;
        self.reusable = false;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Takes a CRLF-terminated line off the buffer (without its CRLF), or
    /// `None` until one is there.
    fn line(conn: &mut Connection) -> io::Result<Option<Bytes>> {
        match memchr::memchr(b'\n', &conn.0.buf) {
            Some(end) if end > 0 && conn.0.buf[end - 1] == b'\r' => {
                let line = conn.0.buf.split_to(end + 1).freeze();
                Ok(Some(line.slice(..end - 1)))
            }
            Some(_) => Err(invalid("chunked body line without CRLF")),
            None if conn.0.buf.len() > MAX_LINE => Err(invalid("chunked body line too long")),
            None => Ok(None),
        }
    }
}

/// The size of a chunk, from its size line (extensions ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t'))
        .map_or(line, |end| &line[..end]);
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = (b as char)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid chunk size"))?;
        Ok(size * 16 + u64::from(digit))
    })
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        loop {
            let state = this.state;
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => this.state = State::Done,
                State::Length(left) | State::Chunked(Chunk::Data(left)) => {
                    if conn.0.buf.is_empty() {
                        if let Err(error) = ready!(conn.poll_more(cx, left)) {
                            return this.fail(error);
                        }
                        continue;
                    }
                    let n = (conn.0.buf.len() as u64).min(left);
                    let data = take_frame(&mut conn.0.buf, n as usize);
                    this.state = match state {
                        State::Length(_) => State::Length(left - n),
                        _ if left == n => State::Chunked(Chunk::DataEnd),
                        _ => State::Chunked(Chunk::Data(left - n)),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose => {
                    if !conn.0.buf.is_empty() {
                        let all = conn.0.buf.len();
                        let data = take_frame(&mut conn.0.buf, all);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_fill_for(cx, 0)) {
                        Ok(0) => this.state = State::Done,
                        Ok(_) => {}
                        Err(error) => return this.fail(error),
                    }
                }
                State::Chunked(part) => {
                    let line = match Self::line(conn) {
                        Ok(Some(line)) => line,
                        Ok(None) => {
                            if let Err(error) = ready!(conn.poll_more(cx, 0)) {
                                return this.fail(error);
                            }
                            continue;
                        }
                        Err(error) => return this.fail(error),
                    };
                    this.state = match part {
                        Chunk::Size => match chunk_size(&line) {
                            Ok(0) => State::Chunked(Chunk::Trailers),
                            Ok(size) => State::Chunked(Chunk::Data(size)),
                            Err(error) => return this.fail(error),
                        },
                        Chunk::DataEnd if line.is_empty() => State::Chunked(Chunk::Size),
                        Chunk::DataEnd => {
                            return this.fail(invalid("chunk data longer than its size"));
                        }
                        // Trailer fields are not passed on.
                        Chunk::Trailers if line.is_empty() => State::Done,
                        Chunk::Trailers => State::Chunked(Chunk::Trailers),
                        Chunk::Data(_) => unreachable!("data is handled above"),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(left) => SizeHint::with_exact(left),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The local address, for the tests.
#[cfg(test)]
impl Connection {
    fn local_addr(&self) -> std::net::SocketAddr {
        self.0.io.local_addr().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connection to a target that answers each request with the next of
    /// `answers`, after reading one request head.
    async fn serving(answers: Vec<&'static [u8]>) -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for answer in answers {
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.clear();
                // In two writes, to split heads and chunks across reads.
                let (a, b) = answer.split_at(answer.len() / 2);
                stream.write_all(a).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                stream.write_all(b).await.unwrap();
            }
        });
        Connection::new(TcpStream::connect(addr).await.unwrap())
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).header("host", "t").body(()).unwrap()
    }

    /// A GET of `path` on `conn`, with no other fields.
    async fn ask(conn: Connection, path: &str) -> Result<Response<RawBody>, Failed> {
        conn.exchange(&RequestHead::of(&get(path), None), None, None)
            .await
    }

    async fn read(response: Response<RawBody>) -> (StatusCode, Bytes, Option<Connection>) {
        let status = response.status();
        let mut body = response.into_body();
        let mut data = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(chunk) = frame.unwrap().into_data() {
                data.extend_from_slice(&chunk);
            }
        }
        (status, data.freeze(), body.take_reusable())
    }

    #[test]
    fn a_large_frame_that_drains_the_buffer_takes_its_memory() {
        let mut buf = BytesMut::with_capacity(MAX_READ);
        buf.extend_from_slice(&[7; 20 * 1024]);
        // Part of what was read: the rest stays, in the same memory.
        let first = take_frame(&mut buf, 12 * 1024);
        assert_eq!((first.len(), buf.len()), (12 * 1024, 8 * 1024));
        assert!(buf.capacity() >= 8 * 1024);
        // All of it: the connection keeps no memory for its next read.
        let second = take_frame(&mut buf, 8 * 1024);
        assert_eq!((second.len(), buf.len(), buf.capacity()), (8 * 1024, 0, 0));
        assert!(second.iter().all(|&b| b == 7));

        // A small frame leaves the buffer's memory with the connection.
        let mut buf = BytesMut::with_capacity(READ_ROOM);
        buf.extend_from_slice(b"ok");
        assert_eq!(&take_frame(&mut buf, 2)[..], b"ok");
        assert!(buf.is_empty() && buf.capacity() >= READ_ROOM - 2);
    }

    #[tokio::test]
    async fn length_chunked_and_interim_responses_on_one_connection() {
        let conn = serving(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nworld\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
        ]).await;
        let local = conn.local_addr();
        let response = ask(conn, "/a").await.unwrap();
        assert_eq!(response.headers()["x-a"], "1");
        let (status, body, conn) = read(response).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        let conn = conn.expect("reusable after a length-delimited body");
        assert!(conn.usable());
        let (status, body, conn) = read(ask(conn, "/b").await.unwrap()).await;
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"world!"[..]));
        let conn = conn.expect("reusable after a chunked body");
        let (status, body, conn) = read(ask(conn, "/c").await.unwrap()).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let conn = conn.expect("reusable after a 204");
        assert_eq!(conn.local_addr(), local, "one connection throughout");
        // The target is done and closes: the idle connection says so.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!conn.usable());
    }

    #[tokio::test]
    async fn each_response_has_its_own_field_names() {
        let mut conn = serving(vec![
            b"HTTP/1.1 200 OK\r\nServer: a\r\nX-One: 1\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nSERVER: b\r\nX-Two: 2\r\nX-Three: 3\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nserver: c\r\n\r\n",
        ])
        .await;
        // Whatever their case, in the order sent.
        let expected: [&[(&str, &str)]; 3] = [
            &[("server", "a"), ("x-one", "1"), ("content-length", "0")],
            &[
                ("server", "b"),
                ("x-two", "2"),
                ("x-three", "3"),
                ("content-length", "0"),
            ],
            &[("content-length", "0"), ("server", "c")],
        ];
        for fields in expected {
            let response = ask(conn, "/").await.unwrap();
            let seen: Vec<(&str, &str)> = response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
                .collect();
            assert_eq!(seen, fields);
            conn = read(response).await.2.expect("reusable");
        }
    }

    #[tokio::test]
    async fn bodies_to_the_close_and_closing_responses_are_not_reused() {
        let conn = serving(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]).await;
        let (_, body, conn) = read(ask(conn, "/").await.unwrap()).await;
        assert_eq!(&body[..], b"until the end");
        assert!(conn.is_none());

        let conn = serving(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let (_, body, conn) = read(ask(conn, "/").await.unwrap()).await;
        assert_eq!(&body[..], b"ok");
        assert!(conn.is_none());
    }

    #[tokio::test]
    async fn hop_by_hop_fields_are_dropped_unless_connection_names_others() {
        let conn = serving(vec![
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
        ]).await;
        let response = ask(conn, "/").await.unwrap();
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-a", "content-length"]);
        let (_, _, conn) = read(response).await;
        // `Connection` lists a field: everything stays for the proxy's
        // general strip, which removes what it lists.
        let response = ask(conn.unwrap(), "/").await.unwrap();
        assert!(response.headers().contains_key("connection"));
        assert!(response.headers().contains_key("x-private"));
        let mut headers = response.headers().clone();
        super::super::strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[tokio::test]
    async fn raw_responses_keep_their_fields_until_a_map_is_asked_for() {
        let conn = serving(vec![
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nSet-Cookie: a\r\nset-cookie: b\r\nX-Id: up\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let request = get("/");
        let head = RequestHead {
            raw_response: true,
            ..RequestHead::of(&request, None)
        };
        let mut response = conn.exchange(&head, None, None).await.unwrap();
        assert!(response.headers().is_empty(), "no map is built");
        let mut seen = Vec::new();
        let raw = response.body().raw_fields().expect("raw fields");
        raw.each(|name, value| {
            seen.push(format!(
                "{}={}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ));
        });
        // The upstream's order and case; `Keep-Alive` is hop-by-hop.
        assert_eq!(
            seen,
            [
                "X-A=1",
                "Set-Cookie=a",
                "set-cookie=b",
                "X-Id=up",
                "Content-Length=2"
            ]
        );
        // Fields the gateway sets replace the upstream's of their name,
        // an earlier value of their own, and are listed apart.
        let body = response.body_mut();
        let set = |name: &'static str, value: &'static str| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        };
        for (name, value) in [
            set("set-cookie", "gw1"),
            set("x-new", "1"),
            set("set-cookie", "gw2"),
        ] {
            body.set_field(name, value).unwrap();
        }
        let raw = body.raw_fields().unwrap();
        let mut upstream = Vec::new();
        raw.each(|name, _| upstream.push(String::from_utf8_lossy(name).into_owned()));
        assert_eq!(upstream, ["X-A", "X-Id", "Content-Length"]);
        let gateway: Vec<_> = raw
            .each_set()
            .map(|(n, v)| format!("{}={}", n, v.to_str().unwrap()))
            .collect();
        assert_eq!(gateway, ["set-cookie=gw2", "x-new=1"]);

        // Into a map: a field the map has (set later) stays as it is.
        let mut map = HeaderMap::new();
        map.insert("x-id", HeaderValue::from_static("gateway"));
        map.insert("x-new", HeaderValue::from_static("later"));
        response.body_mut().fields_into(&mut map);
        assert_eq!(map["x-new"], "later");
        assert!(response.body().raw_fields().is_none(), "moved");
        assert_eq!(map["x-id"], "gateway");
        assert_eq!(map.get_all("x-id").iter().count(), 1);
        assert_eq!(
            map.get_all("set-cookie").iter().collect::<Vec<_>>(),
            ["gw2"]
        );
        assert_eq!(map["x-a"], "1");
        assert_eq!(map["content-length"], "2");
        assert!(!map.contains_key("keep-alive"));
        let (_, body, conn) = read(response).await;
        assert_eq!(&body[..], b"ok");

        // `Connection` lists a field: the map is built, for the proxy's
        // general strip.
        let response = conn.unwrap().exchange(&head, None, None).await.unwrap();
        assert!(response.body().raw_fields().is_none());
        assert!(response.headers().contains_key("x-private"));
    }

    #[tokio::test]
    async fn an_answer_after_the_deadline_is_a_timeout_and_the_timer_serves_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 1024];
            // The first request is answered at once, the second never.
            let _ = stream.read(&mut chunk).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = stream.read(&mut chunk).await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        let request = get("/");
        let head = RequestHead::of(&request, None);
        let soon = || Some(Instant::now() + std::time::Duration::from_millis(100));
        let response = conn.exchange(&head, None, soon()).await.unwrap();
        let (_, _, conn) = read(response).await;
        let failed = conn
            .unwrap()
            .exchange(&head, None, soon())
            .await
            .unwrap_err();
        assert!(failed.timed_out, "{}", failed.error);
        assert!(failed.sent && failed.unanswered);
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let conn = serving(vec![answer]).await;
            let failed = ask(conn, "/").await.unwrap_err();
            assert!(!failed.unanswered, "{answer:?}");
        }
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let conn = serving(vec![answer]).await;
            let response = ask(conn, "/").await.unwrap();
            let mut body = response.into_body();
            let mut failed = false;
            // The target closes after answering: a short body ends in error.
            let drained = async {
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        failed = true;
                        break;
                    }
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(2), drained)
                .await
                .unwrap();
            assert!(failed, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_closed_connection_fails_unanswered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!conn.usable());
        let failed = ask(conn, "/").await.unwrap_err();
        assert!(failed.unanswered);
    }

    #[test]
    fn requests_are_encoded_with_their_framing() {
        let mut out = Vec::new();
        let request = Request::post("/p?q=1")
            .header("host", "t")
            .header("content-length", "99")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        encode(&mut out, &RequestHead::of(&request, None), 3);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\n"
        );
        encode(&mut out, &RequestHead::of(&get("/g"), None), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /g HTTP/1.1\r\nhost: t\r\n\r\n"
        );
    }

    proptest::proptest! {
        /// Any bytes as a response head or a chunk-size line: an answer or
        /// an error, never a panic, and field spans inside the head.
        #[test]
        fn arbitrary_answers_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            head_request in proptest::bool::ANY,
        ) {
            let mut spans = Vec::new();
            if let Ok(Some((len, _))) = parse(&bytes, head_request, &mut spans) {
                proptest::prop_assert!(len <= bytes.len());
                proptest::prop_assert!(spans.iter().all(|f| f[1] <= len && f[3] <= len));
            }
            let _ = chunk_size(&bytes);
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"1aF;name=value").unwrap(), 0x1af);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"g").is_err());
        assert!(chunk_size(b"1000000000000000").is_err());
    }
}
