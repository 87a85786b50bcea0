//! The HTTP/1.1 fast path: the common request served on the connection's
//! own task, with the connection's reused buffers, and the connection
//! handed to hyper at the first request it does not take.
//!
//! hyper's server dispatcher costs more user time per request than the
//! whole of nginx's proxying (docs/benchmarks.md): it moves large futures
//! and buffers around and runs a generic state machine for every request.
//! Most proxied requests are much simpler than what it is built for: a
//! complete HTTP/1.1 head, no body or a small one that arrived with it, and
//! a response written once. This module serves exactly those:
//!
//! - the head is parsed straight out of the connection's read buffer, by
//!   `crate::head` when it is canonical and by `httparse` (as hyper does)
//!   otherwise; header values are slices of that buffer, not copies;
//! - the request goes through the same handler (the whole pipeline), with
//!   the same load shedding, as a hyper-served one; the connection is read
//!   meanwhile, so a client that hangs up cancels its request (as hyper
//!   does without half-close support) and pipelined bytes wait in the
//!   buffer;
//! - the response head is encoded into a reused buffer and written with the
//!   first body bytes in one write; a streamed body follows as it comes,
//!   length-delimited or chunked, flushed whenever the body has to wait;
//!   what the end of a body sets off (the request's metrics and access-log
//!   line, the upstream connection's return to its pool) runs once its last
//!   bytes are written, not before.
//!
//! Everything else is handed over, with the bytes already read, to hyper,
//! which then serves the rest of the connection exactly as if it had had it
//! from the start (its 400s, 431s and 413s included):
//!
//! - a head `httparse` rejects or that does not end within `max_head` bytes,
//!   more than [`MAX_FIELDS`] fields, or the HTTP/2 preface;
//! - HTTP/1.0, `CONNECT`, and request targets other than origin-form;
//! - `Transfer-Encoding` (chunked bodies, and the ambiguous pair with
//!   `Content-Length`), `Expect`, `Upgrade` or `Connection: upgrade`
//!   (WebSocket, h2c), a repeated or malformed `Content-Length`;
//! - a body larger than [`MAX_BODY`] or one that did not arrive with its
//!   head (a client pausing between head and body);
//! - a method, target or field the `http` crate refuses.
//!
//! Timeouts keep hyper's meaning: a head must be complete within
//! `timeouts.header-read` of the wait for it starting (which also bounds an
//! idle keep-alive connection, as does `timeouts.idle`); writes go through
//! the same write-idle guard. At shutdown a connection waiting for a head
//! closes at once, and one serving a request answers it with
//! `Connection: close` and then closes.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Body as _, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::Shared;
use super::guard::{Admitted, Closed, Load};
use super::stopping::Watch;
use crate::body::{Body, BodyError, Inbound};
use crate::deadline::Deadline;
use crate::head::Span;
use crate::proxy::h1::{RawFields, each_field, write_both};
use crate::text::{Peer, eq_ignore_ascii_case, list_items, push_field};

/// The most header fields the fast path takes; a head with more goes to
/// hyper.
const MAX_FIELDS: usize = 64;
/// The largest request body the fast path takes (it must have arrived with
/// its head).
const MAX_BODY: usize = 64 * 1024;
/// Response bytes gathered before they are written.
const GATHER: usize = 16 * 1024;
/// What the gathering buffer starts with: a small response's head and
/// body. It grows (to `GATHER` and a chunk) for larger ones; a connection
/// that carries one small request does not pay for more.
const GATHER_START: usize = 1024;
/// A body chunk at least this large is written from where it is, not
/// copied after the head.
const DIRECT: usize = 4 * 1024;
/// Free space the read buffer has before each read.
const READ_ROOM: usize = 8 * 1024;

/// How the fast path left a connection.
pub(super) enum End {
    /// It is finished: closed by either side, timed out or shut down.
    Closed,
    /// hyper serves the rest, starting with these bytes.
    HandOver(Bytes),
}

/// Where the parts of a parsed head lie in the read buffer.
#[derive(Debug)]
struct Head {
    /// Length of the head, up to and including its empty line.
    len: usize,
    method: Method,
    target: (usize, usize),
    /// `Content-Length`, 0 without one.
    body: usize,
    /// The client asked to close after this request.
    close: bool,
}

/// What the read buffer holds.
#[derive(Debug)]
enum Parsed {
    /// The start of a head: read more.
    Partial,
    /// A head the fast path takes.
    Fast(Head),
    /// Something hyper has to serve.
    Other,
}

/// Parses the head at the start of `buf`; `fields` receives where its
/// fields lie. A canonical head is scanned (`crate::head`); anything else
/// goes through `httparse`.
fn parse(buf: &[u8], max_head: usize, fields: &mut Vec<Span>) -> Parsed {
    let (len, method, target) = match crate::head::request(buf, MAX_FIELDS, fields) {
        Some(line) if line.len <= max_head => (
            line.len,
            &buf[line.method.0..line.method.1],
            &buf[line.target.0..line.target.1],
        ),
        Some(_) => return Parsed::Other,
        None => match parse_other(buf, max_head, fields) {
            Ok(parsed) => parsed,
            Err(parsed) => return parsed,
        },
    };
    let Ok(method) = Method::from_bytes(method) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || !target.starts_with(b"/") {
        return Parsed::Other;
    }
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    let mut body = None;
    let mut close = false;
    for &[name_start, name_end, value_start, value_end] in fields.iter() {
        let (name, value) = (&buf[name_start..name_end], &buf[value_start..value_end]);
        if eq_ignore_ascii_case(name, b"content-length") {
            match content_length(value) {
                Some(length) if body.is_none() && length <= MAX_BODY => body = Some(length),
                _ => return Parsed::Other,
            }
        } else if eq_ignore_ascii_case(name, b"connection") {
            for token in list_items(value) {
                if eq_ignore_ascii_case(token, b"upgrade") {
                    return Parsed::Other;
                }
                close |= eq_ignore_ascii_case(token, b"close");
            }
        } else if eq_ignore_ascii_case(name, b"transfer-encoding")
            || eq_ignore_ascii_case(name, b"expect")
            || eq_ignore_ascii_case(name, b"upgrade")
        {
            return Parsed::Other;
        }
    }
    Parsed::Fast(Head {
        len,
        method,
        target: (offset(target), offset(target) + target.len()),
        body: body.unwrap_or(0),
        close,
    })
}

/// A head that is not canonical, parsed by `httparse`: its length, method
/// and target, or what the caller answers (more to read, or hyper's).
fn parse_other<'b>(
    buf: &'b [u8],
    max_head: usize,
    fields: &mut Vec<Span>,
) -> Result<(usize, &'b [u8], &'b [u8]), Parsed> {
    // Uninitialised: httparse writes only the fields it finds.
    let mut parsed = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut parsed) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Err(Parsed::Partial),
        _ => return Err(Parsed::Other),
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Err(Parsed::Other);
    };
    crate::head::spans_of(buf, request.headers, fields);
    Ok((len, method.as_bytes(), target.as_bytes()))
}

/// A `Content-Length` value: digits only, as RFC 9110 §8.6 has it.
fn content_length(value: &[u8]) -> Option<usize> {
    crate::text::digits(value).and_then(|n| usize::try_from(n).ok())
}

/// The request `head` describes, its parts sliced out of `bytes`; `None`
/// when the `http` crate refuses a part.
fn request(
    head: &Head,
    fields: &[Span],
    bytes: &Bytes,
    body: Inbound,
) -> Option<Box<http::Request<Inbound>>> {
    let uri = Uri::from_maybe_shared(bytes.slice(head.target.0..head.target.1)).ok()?;
    let mut request = crate::boxed(|| http::Request::new(body));
    // The fields go into the request's own map (empty, so not yet
    // allocated), not into one that replaces it: dropping even an empty
    // map is a few calls.
    let headers = request.headers_mut();
    headers.reserve(fields.len());
    for &[name_start, name_end, value_start, value_end] in fields {
        let name = crate::head::field_name(&bytes[name_start..name_end])?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_start..value_end)).ok()?;
        headers.append(name, value);
    }
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    Some(request)
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Encodes the head of a response into `out` (cleared first) and says how
/// its body goes: the upstream's `raw` fields (those the map does not
/// replace), then the map's. `close` adds `Connection: close` unless the
/// response has a `Connection` field already.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawFields>,
    size: &SizeHint,
    head_request: bool,
    close: bool,
) -> Framing {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the fields: each is written, but for the framing ones,
    // which are decided below, and noted when the head needs it.
    let mut noted = Noted::default();
    each_field(headers, raw, |name, value| noted.push(out, name, value));
    let Noted {
        length: length_field,
        date: has_date,
        connection: has_connection,
    } = noted;
    let declared = length_field.and_then(content_length);
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 304 may say how long the full response would be.
        if status == StatusCode::NOT_MODIFIED
            && let Some(value) = length_field
        {
            push_field(out, b"content-length", value);
        }
        Framing::None
    } else if head_request {
        if let Some(value) = length_field {
            push_field(out, b"content-length", value);
        }
        Framing::None
    } else if let Some(length) = declared {
        push_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(length).as_bytes(),
        );
        Framing::Length(length as u64)
    } else {
        match size.exact() {
            Some(length) => {
                push_field(
                    out,
                    b"content-length",
                    itoa::Buffer::new().format(length).as_bytes(),
                );
                Framing::Length(length)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    if close && !has_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// What a response head notes of the fields it writes.
#[derive(Default)]
struct Noted<'a> {
    /// The first `Content-Length` value.
    length: Option<&'a [u8]>,
    date: bool,
    connection: bool,
}

impl<'a> Noted<'a> {
    /// Writes a field to `out`, but for the framing ones, which the head
    /// decides itself. Names come in any case (an upstream's as they came).
    fn push(&mut self, out: &mut Vec<u8>, name: &'a [u8], value: &'a [u8]) {
        if eq_ignore_ascii_case(name, b"transfer-encoding") {
            return;
        }
        if eq_ignore_ascii_case(name, b"content-length") {
            self.length.get_or_insert(value);
            return;
        }
        self.date |= eq_ignore_ascii_case(name, b"date");
        self.connection |= eq_ignore_ascii_case(name, b"connection");
        push_field(out, name, value);
    }
}

/// Appends the current time as an HTTP date, formatted once a second per
/// thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = crate::clock::wall();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != second || text.is_empty() {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Whether a `Connection` field the gateway set asks to close: in the map,
/// or beside the raw fields (the upstream's are hop-by-hop, never passed
/// on, so they need no look).
fn asks_to_close(response: &http::Response<Body>) -> bool {
    let set = response.body().raw_fields().into_iter().flat_map(|raw| {
        raw.each_set()
            .filter(|(name, _)| *name == http::header::CONNECTION)
            .map(|(_, value)| value)
    });
    response
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .chain(set)
        .any(|value| {
            list_items(value.as_bytes()).any(|token| eq_ignore_ascii_case(token, b"close"))
        })
}

/// Why a wait for request bytes ended without any.
enum Stop {
    /// The client closed its side or the read failed, or the listener is
    /// shutting down and nothing was started.
    Closed,
    /// The head did not come in time.
    Timeout,
}

/// One connection on the fast path.
pub(super) struct Http1<'a, S, H> {
    io: &'a mut S,
    peer: &'a Peer,
    tls: Option<Arc<crate::tls::TlsInfo>>,
    handler: &'a H,
    shared: &'a Shared,
    stopping: &'a Watch,
    buf: BytesMut,
    out: Vec<u8>,
    /// Where the fields of the head being parsed lie.
    fields: Vec<Span>,
}

/// A closed connection's buffers, kept for the next connection on this
/// thread: allocating them cost about 700 instructions a connection,
/// most of it in the allocator's slow path, since each buffer size is
/// allocated and freed once per connection (docs/benchmarks.md).
struct Spare {
    buf: BytesMut,
    out: Vec<u8>,
    fields: Vec<Span>,
}

/// At most this many [`Spare`]s are kept per thread (each at most 16 KiB
/// read, 16 KiB gathering and 2 KiB of field spans: 2.1 MiB in all).
const SPARES: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Spare>> = const { RefCell::new(Vec::new()) };
}

impl Spare {
    /// Buffers for a new connection: kept ones if there are any.
    fn take() -> Self {
        SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| Self {
            buf: BytesMut::with_capacity(READ_ROOM),
            out: Vec::with_capacity(GATHER_START),
            fields: Vec::with_capacity(16),
        })
    }

    /// Keeps a closed connection's buffers, unless something still shares
    /// the read buffer, either grew large, or enough are kept already.
    fn keep(mut self) {
        self.buf.clear();
        if !self.buf.try_reclaim(READ_ROOM)
            || self.buf.capacity() > 2 * READ_ROOM
            || self.out.capacity() > GATHER
        {
            return;
        }
        self.out.clear();
        self.fields.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARES {
                spare.push(self);
            }
        });
    }
}

impl<S, H> Drop for Http1<'_, S, H> {
    fn drop(&mut self) {
        Spare {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            fields: std::mem::take(&mut self.fields),
        }
        .keep();
    }
}

impl<'a, S, H> Http1<'a, S, H>
where
    S: AsyncRead + AsyncWrite + super::stall::Segments + Unpin + Send,
    H: super::Handler,
{
    pub(super) fn new(
        io: &'a mut S,
        peer: &'a Peer,
        tls: Option<Arc<crate::tls::TlsInfo>>,
        handler: &'a H,
        shared: &'a Shared,
        stopping: &'a Watch,
    ) -> Self {
        let Spare { buf, out, fields } = Spare::take();
        Self {
            io,
            peer,
            tls,
            handler,
            shared,
            stopping,
            buf,
            out,
            fields,
        }
    }

    /// Serves requests until the connection ends or one has to go to hyper.
    pub(super) async fn run(mut self) -> End {
        let deadline = Deadline::new(crate::clock::now() + self.shared.header_read);
        tokio::pin!(deadline);
        let mut first = true;
        loop {
            let mut waiting = None;
            let head = loop {
                match parse(&self.buf, self.shared.max_head, &mut self.fields) {
                    Parsed::Fast(head) => break head,
                    Parsed::Other => return End::HandOver(self.hand_over()),
                    Parsed::Partial => {}
                }
                let timeout = if first || !self.buf.is_empty() {
                    self.shared.header_read
                } else {
                    self.shared.header_read.min(self.shared.idle)
                };
                match self.fill(&mut waiting, timeout, deadline.as_mut()).await {
                    Ok(()) => {}
                    Err(Stop::Timeout) => {
                        // An idle keep-alive wait cut by `timeouts.idle` is
                        // no header timeout.
                        if timeout == self.shared.header_read {
                            self.shared.counters.closed(Closed::HeaderTimeout);
                        }
                        return End::Closed;
                    }
                    Err(Stop::Closed) => return End::Closed,
                }
            };
            first = false;
            let end = head.len + head.body;
            if self.buf.len() < end {
                // The body is still on its way: hyper reads it as it comes.
                return End::HandOver(self.hand_over());
            }
            // The request's parts are slices of what was read; what follows
            // it (pipelined bytes) goes back into the buffer.
            let read = self.buf.split().freeze();
            let body = (head.body > 0).then(|| read.slice(head.len..end));
            let Some(mut request) = request(&head, &self.fields, &read, Inbound::Buffered(body))
            else {
                return End::HandOver(read);
            };
            self.buf.extend_from_slice(&read[end..]);
            if let Some(tls) = &self.tls {
                request.extensions_mut().insert(tls.clone());
            }
            let head_request = head.method == Method::HEAD;
            let close = head.close;
            // `_admitted` counts the request in flight until it is written.
            let Some((response, _admitted)) = self.respond(request).await else {
                return End::Closed;
            };
            let close = close || self.stopping.is_draining() || asks_to_close(&response);
            // A closing response ends with the write side shut down
            // (`flush_last`); one that failed is cut without.
            if self.write(response, head_request, close).await.is_err() || close {
                return End::Closed;
            }
        }
    }

    /// The bytes read and not served, for hyper to go on with.
    fn hand_over(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }

    /// Runs the handler on `request`, reading on meanwhile: a client that
    /// hangs up cancels its request (`None`), as with hyper, and bytes it
    /// pipelines are kept for the next head. The request counts against
    /// the listener's in-flight cap until the caller drops what comes with
    /// the response, once it is written (the answer is 503 when the cap is
    /// reached).
    async fn respond(
        &mut self,
        request: Box<http::Request<Inbound>>,
    ) -> Option<(Box<http::Response<Body>>, Option<Admitted<&'a Load>>)> {
        let (handler, shared, peer) = (self.handler, self.shared, *self.peer);
        let admit = |load| Load::admit(load, request.headers());
        let admitted = match shared.load.as_deref().map(admit).transpose() {
            Ok(admitted) => admitted,
            Err(shed) => return Some((shed, None)),
        };
        let respond = handler.call(request, peer);
        tokio::pin!(respond);
        let (io, buf) = (&mut *self.io, &mut self.buf);
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(response) = respond.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                if buf.len() >= shared.max_head + MAX_BODY {
                    return Poll::Pending;
                }
                if buf.capacity() - buf.len() < READ_ROOM / 2 {
                    buf.reserve(READ_ROOM);
                }
                match poll_read_buf(Pin::new(&mut *io), cx, buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    // Pipelined bytes: read on while the handler runs.
                    Poll::Ready(Ok(_)) => {}
                }
            }
        })
        .await
        .map(|response| (response, admitted))
    }

    /// Reads more request bytes; the first wait of a head starts its
    /// `timeout`.
    async fn fill(
        &mut self,
        waiting: &mut Option<Instant>,
        timeout: Duration,
        mut deadline: Pin<&mut Deadline>,
    ) -> Result<(), Stop> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        let idle = self.buf.is_empty();
        let (io, buf, stopping) = (&mut *self.io, &mut self.buf, self.stopping);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = poll_read_buf(Pin::new(&mut *io), cx, buf) {
                return Poll::Ready(match read {
                    Ok(0) | Err(_) => Err(Stop::Closed),
                    Ok(_) => Ok(()),
                });
            }
            // Most reads find their bytes already there: only a read that
            // has to wait arms the timer.
            if !armed {
                let since = *waiting.get_or_insert_with(crate::clock::now);
                deadline.as_mut().set(since + timeout);
                armed = true;
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Stop::Timeout));
            }
            if idle && stopping.poll_draining(cx).is_ready() {
                return Poll::Ready(Err(Stop::Closed));
            }
            Poll::Pending
        })
        .await
    }

    /// Writes `response`; an error means the connection cannot go on.
    async fn write(
        &mut self,
        response: Box<http::Response<Body>>,
        head_request: bool,
        close: bool,
    ) -> io::Result<()> {
        let (parts, mut body) = (*response).into_parts();
        let framing = encode_head(
            &mut self.out,
            parts.status,
            &parts.headers,
            body.raw_fields(),
            &body.size_hint(),
            head_request,
            close,
        );
        drop(parts);
        if framing == Framing::None {
            drop(body);
            return self.flush_last(close).await;
        }
        let mut sent = 0u64;
        let mut trailers = None;
        // Not polled to its end: the body ends when it is dropped, after the
        // last bytes are written (see the module's notes).
        while !body.is_end_stream() {
            // Write what is gathered before waiting for the body.
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(frame) => Some(frame),
                    Poll::Pending => None,
                })
            })
            .await;
            let frame = match polled {
                Some(frame) => frame,
                None => {
                    self.io.no_delay();
                    self.flush().await?;
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Err(body_failed(error)),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let Framing::Length(length) = framing
                && sent > length
            {
                return Err(io::Error::other(
                    "response body longer than its Content-Length",
                ));
            }
            if framing == Framing::Chunked {
                let _ = write!(self.out, "{:x}\r\n", data.len());
            }
            if data.len() >= DIRECT {
                self.io.no_delay();
                write_both(self.io, &self.out, &data).await?;
                self.out.clear();
            } else {
                self.out.extend_from_slice(&data);
            }
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if self.out.len() >= GATHER {
                self.io.no_delay();
                self.io.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        match framing {
            Framing::Length(length) if sent != length => {
                return Err(io::Error::other(
                    "response body shorter than its Content-Length",
                ));
            }
            Framing::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flat_map(HeaderMap::iter) {
                    push_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                }
                self.out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        let written = self.flush_last(close).await;
        drop(body);
        written
    }

    /// Writes out the end of a response: with Nagle's algorithm off unless
    /// the connection closes after it, when nothing can come behind. Then
    /// the last bytes go with the FIN (`stall::Segments`): the shutdown
    /// follows them at once. (TLS ends with its close_notify.) A shutdown,
    /// not just the close, so that bytes the client sent after its last
    /// request cannot turn the close into a reset before the response has
    /// gone out.
    async fn flush_last(&mut self, close: bool) -> io::Result<()> {
        if !close {
            self.io.no_delay();
            return self.flush().await;
        }
        let mut written = 0;
        while written < self.out.len() {
            let rest = &self.out[written..];
            let n = std::future::poll_fn(|cx| Pin::new(&mut *self.io).poll_write_last(cx, rest))
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
        }
        self.out.clear();
        self.io.shutdown().await
    }

    /// Writes out what is gathered.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }
}

fn body_failed(error: BodyError) -> io::Error {
    tracing::debug!(%error, "response body failed; closing the connection");
    io::Error::other(error)
}

pin_project_lite::pin_project! {
    /// A connection handed to hyper: the bytes the fast path already read,
    /// then the rest.
    pub(super) struct Rewind<IO> {
        prefix: Bytes,
        #[pin]
        io: IO,
    }
}

impl<IO> Rewind<IO> {
    pub(super) fn new(prefix: Bytes, io: IO) -> Self {
        Self { prefix, io }
    }
}

impl<IO: AsyncRead> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn a_closed_connections_buffers_serve_the_next_one() {
        let mut first = Spare::take();
        first.buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        first.out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let (buf, out) = (first.buf.as_ptr(), first.out.as_ptr());
        first.keep();
        let next = Spare::take();
        assert_eq!((next.buf.as_ptr(), next.out.as_ptr()), (buf, out));
        assert!(next.buf.is_empty() && next.out.is_empty() && next.fields.is_empty());
        assert_eq!(next.buf.capacity(), READ_ROOM);
    }

    #[test]
    fn a_read_buffer_still_shared_is_not_kept() {
        let mut first = Spare::take();
        first.buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        // A request's bytes, split off and still alive.
        let request = first.buf.split().freeze();
        let buf = request.as_ptr();
        first.keep();
        let next = Spare::take();
        assert_ne!(next.buf.as_ptr(), buf);
        drop(request);
        // Nor is one grown past twice the usual room.
        let mut grown = Spare::take();
        grown.buf.reserve(4 * READ_ROOM);
        let buf = grown.buf.as_ptr();
        grown.keep();
        assert_ne!(Spare::take().buf.as_ptr(), buf);
    }

    /// What a [`Counted`] stream saw.
    #[derive(Default)]
    struct Counts {
        /// Times Nagle's algorithm was turned off (the system calls).
        no_delay: std::sync::atomic::AtomicUsize,
        /// Writes of a closing response's last bytes.
        last: std::sync::atomic::AtomicUsize,
        shutdowns: std::sync::atomic::AtomicUsize,
    }

    impl Counts {
        fn get(&self) -> [usize; 3] {
            let load = |n: &std::sync::atomic::AtomicUsize| n.load(Ordering::Relaxed);
            [
                load(&self.no_delay),
                load(&self.last),
                load(&self.shutdowns),
            ]
        }
    }

    /// A stream that counts what `stall::Segments` and the shutdown are
    /// asked for.
    struct Counted {
        io: tokio::io::DuplexStream,
        counts: Arc<Counts>,
    }

    impl super::super::stall::Segments for Counted {
        fn no_delay(&mut self) {
            self.counts.no_delay.fetch_add(1, Ordering::Relaxed);
        }

        fn poll_write_last(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.counts.last.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            self.counts.shutdowns.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Serves `requests` (written at once) on the fast path with a handler
    /// answering `body`; the response bytes and what the stream was asked
    /// for: `[Nagle turned off, last writes, shutdowns]`.
    async fn serve(requests: &[u8], body: &'static [u8]) -> (Vec<u8>, [usize; 3]) {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let counts = Arc::new(Counts::default());
        // As connections are served: the wrapper turns Nagle off once.
        let mut io = super::super::stall::WriteIdle::new(
            Counted {
                io: near,
                counts: counts.clone(),
            },
            Duration::from_secs(5),
            metrics::Counter::noop(),
        );
        let shared = Shared {
            fast: true,
            max_head: 64 * 1024,
            idle: Duration::from_secs(60),
            header_read: Duration::from_secs(5),
            write_idle: Duration::from_secs(5),
            max_reset_streams: 100,
            load: None,
            counters: super::super::guard::Counters::new(None, "test"),
        };
        let stopping = Arc::new(super::super::stopping::Stopping::default());
        let watch = stopping.watch();
        let peer = Peer::new("127.0.0.1:1".parse().unwrap());
        let handler = move |_request: Box<http::Request<Inbound>>, _peer: Peer| async move {
            Box::new(http::Response::new(Body::full(body)))
        };
        far.write_all(requests).await.unwrap();
        far.shutdown().await.unwrap();
        let http1 = Http1::new(&mut io, &peer, None, &handler, &shared, &watch);
        assert!(matches!(http1.run().await, End::Closed));
        drop(io);
        let mut written = Vec::new();
        far.read_to_end(&mut written).await.unwrap();
        (written, counts.get())
    }

    #[tokio::test]
    async fn nagle_stays_on_for_one_response_in_one_write_before_a_close() {
        let (written, [no_delay, last, shutdowns]) = serve(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"ok",
        )
        .await;
        assert!(written.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(written.ends_with(b"\r\n\r\nok"));
        assert_eq!(no_delay, 0, "no write could wait behind another");
        assert_eq!(last, 1, "head and body are the last bytes, in one write");
        assert_eq!(shutdowns, 1, "which the FIN follows at once");
    }

    #[tokio::test]
    async fn nagle_is_turned_off_once_for_a_kept_connection() {
        let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (written, [no_delay, last, shutdowns]) = serve(two, b"ok").await;
        assert_eq!(written.windows(8).filter(|w| w == b"HTTP/1.1").count(), 2);
        assert_eq!(no_delay, 1, "turned off before the first write, once");
        assert_eq!(
            [last, shutdowns],
            [0, 0],
            "the client closed: no response was the last"
        );
    }

    #[tokio::test]
    async fn nagle_is_turned_off_for_a_body_written_in_parts_before_a_close() {
        static LARGE: [u8; 3 * DIRECT] = [b'x'; 3 * DIRECT];
        let (written, [no_delay, last, shutdowns]) = serve(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            &LARGE,
        )
        .await;
        assert!(written.ends_with(&LARGE));
        assert_eq!(
            no_delay, 1,
            "the head and the body go in more than one write"
        );
        assert_eq!(shutdowns, 1);
        assert_eq!(last, 0, "the body went out from where it was: nothing left");
    }

    fn fast(bytes: &[u8]) -> (Head, Vec<Span>) {
        let mut fields = Vec::new();
        match parse(bytes, 64 * 1024, &mut fields) {
            Parsed::Fast(head) => (head, fields),
            other => panic!(
                "expected the fast path for {:?}, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    fn other(bytes: &[u8]) {
        let parsed = parse(bytes, 64 * 1024, &mut Vec::new());
        assert!(
            matches!(parsed, Parsed::Other),
            "expected a hand-over for {:?}, got {parsed:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn a_plain_head_is_taken_with_its_fields_in_place() {
        let bytes = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-One: 1\r\n\r\nrest";
        let (head, fields) = fast(bytes);
        assert_eq!(head.len, bytes.len() - 4);
        assert_eq!(&bytes[head.target.0..head.target.1], b"/a/b?c=d");
        let named: Vec<_> = fields
            .iter()
            .map(|f| (&bytes[f[0]..f[1]], &bytes[f[2]..f[3]]))
            .collect();
        assert_eq!(
            named,
            [(&b"Host"[..], &b"example.com"[..]), (b"X-One", b"1")]
        );
        assert_eq!(head.body, 0);
        assert!(!head.close);
        let request = request(
            &head,
            &fields,
            &Bytes::copy_from_slice(bytes),
            Inbound::Buffered(None),
        )
        .unwrap();
        assert_eq!(request.uri().path(), "/a/b");
        assert_eq!(request.uri().query(), Some("c=d"));
        assert_eq!(request.headers()["x-one"], "1");
        assert_eq!(request.version(), Version::HTTP_11);
    }

    #[test]
    fn partial_heads_wait_for_more_until_the_limit() {
        let partial = b"GET / HTTP/1.1\r\nHost: a\r\n";
        assert!(matches!(
            parse(partial, 1024, &mut Vec::new()),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(partial, partial.len(), &mut Vec::new()),
            Parsed::Other
        ));
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(
            parse(whole, whole.len() - 1, &mut Vec::new()),
            Parsed::Other
        ));
    }

    #[test]
    fn bodies_connection_close_and_length_are_read() {
        let (head, _) = fast(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: keep-alive, Close\r\n\r\nhello");
        assert_eq!(head.body, 5);
        assert!(head.close);
    }

    #[test]
    fn what_hyper_must_serve_is_handed_over() {
        other(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
        other(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n");
        other(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        other(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        other(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n");
        other(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        other(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        other(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
        other(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        other(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
        other(b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n");
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        other(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    }

    /// Encodes a response head: its framing and its text.
    fn head(
        status: StatusCode,
        headers: &HeaderMap,
        size: SizeHint,
        head_request: bool,
        close: bool,
    ) -> (Framing, String) {
        let mut out = Vec::new();
        let framing = encode_head(&mut out, status, headers, None, &size, head_request, close);
        (framing, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_choose_their_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let (framing, text) = head(
            StatusCode::OK,
            &headers,
            SizeHint::with_exact(2),
            false,
            false,
        );
        assert_eq!(framing, Framing::Length(2));
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");

        let (framing, text) = head(StatusCode::OK, &headers, SizeHint::default(), false, true);
        assert_eq!(framing, Framing::Chunked);
        assert!(
            text.contains("transfer-encoding: chunked\r\nconnection: close\r\n"),
            "{text}"
        );

        let mut declared = headers.clone();
        declared.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        declared.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let (framing, text) = head(StatusCode::OK, &declared, SizeHint::default(), false, false);
        assert_eq!(framing, Framing::Length(10));
        assert!(!text.contains("transfer-encoding"), "{text}");

        let (framing, text) = head(StatusCode::OK, &declared, SizeHint::default(), true, false);
        assert_eq!(framing, Framing::None);
        assert!(text.contains("content-length: 10"), "{text}");

        let (framing, text) = head(
            StatusCode::NO_CONTENT,
            &declared,
            SizeHint::with_exact(0),
            false,
            false,
        );
        assert_eq!(framing, Framing::None);
        assert!(!text.contains("content-length"), "{text}");
    }

    proptest::proptest! {
        /// Any bytes: no panic, and a head taken by the fast path lies
        /// inside the buffer and builds a request or is handed over.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut fields = Vec::new();
            if let Parsed::Fast(head) = parse(&bytes, 64 * 1024, &mut fields) {
                proptest::prop_assert!(head.len <= bytes.len());
                proptest::prop_assert!(fields.iter().all(|f| f[1] <= head.len && f[3] <= head.len));
                let _ = request(&head, &fields, &Bytes::copy_from_slice(&bytes[..head.len]), Inbound::Buffered(None));
            }
        }

        /// Well-formed heads come through with every field, in order.
        #[test]
        fn heads_round_trip(
            path in "/[a-z0-9/._~-]{0,30}",
            pairs in proptest::collection::vec(("x-[a-z0-9-]{1,12}", "[ -~]{0,20}"), 0..20),
        ) {
            let mut raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
            for (name, value) in &pairs {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            let mut fields = Vec::new();
            let Parsed::Fast(head) = parse(raw.as_bytes(), 64 * 1024, &mut fields) else {
                return Err(proptest::test_runner::TestCaseError::fail("not taken"));
            };
            let bytes = Bytes::from(raw.clone());
            let request = request(&head, &fields, &bytes, Inbound::Buffered(None)).expect("a request");
            proptest::prop_assert_eq!(request.uri().path(), path.as_str());
            let got: Vec<_> = request
                .headers()
                .iter()
                .filter(|(name, _)| name.as_str() != "host")
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect();
            // httparse trims the spaces around a value, as RFC 9112 says.
            let want: Vec<_> = pairs
                .iter()
                .map(|(name, value)| (name.clone(), value.trim_matches(' ').as_bytes().to_vec()))
                .collect();
            proptest::prop_assert_eq!(got.len(), want.len());
            for pair in &want {
                proptest::prop_assert!(got.contains(pair), "missing {:?}", pair);
            }
        }
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"-1"), None);
        assert_eq!(content_length(b"1 "), None);
        assert_eq!(content_length(b"18446744073709551616"), None);
    }
}
