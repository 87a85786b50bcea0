//! The JSON access log: one line per finished request, written by a
//! dedicated thread so the request path never blocks on I/O.
//!
//! Lines are written straight into a 64 KiB buffer, one of a few shards
//! that each thread keeps to (so threads rarely wait for each other while
//! they format); a full buffer is handed to the writer thread through a
//! bounded queue, and a node task hands over the partly filled ones every
//! 200 ms ([`AccessLog::tick`]). So the writer wakes once per batch rather
//! than once per request, and a line reaches the file within about 200 ms
//! (later when no CPU is idle: until 4 batches wait, see below).
//! When the writer falls behind and the queue is full, the batch is
//! dropped and its lines are counted in `meridian_access_log_dropped_total`
//! rather than slowing requests down.
//!
//! The queue is a mutex and a condition variable rather than a channel: a
//! channel's receiver spins and yields the CPU several times before it
//! sleeps (four `sched_yield` calls per batch with crossbeam's), and on a
//! node pinned to one core each yield is a switch away from the request
//! path and back. The writer here sleeps as soon as the queue is empty,
//! and a batch wakes it only when it sleeps.
//!
//! The writer runs at the lowest priority (`SCHED_IDLE`): only when its CPU
//! has nothing else to do, so that a request never waits behind a batch
//! being written (the scheduler lets a thread that has just started
//! running finish its slice before a thread that has just woken, and a
//! 64 KiB write takes 20-40 µs). On a CPU that is never idle it would fall
//! behind, so a second thread at normal priority takes over whenever
//! 4 batches (256 KiB) are waiting, and writes until none are (the
//! idle writer only finishes the batch it has begun). The backlog is
//! small on purpose: on a CPU that is never idle, every byte is written
//! by this thread, and what it writes at one go is a stall for the
//! requests on that CPU. At 16 batches (1 MiB, half a millisecond and
//! more) the stalls set the p99 of 64 connections at full load; at 4 it
//! measured 0.90 of nginx's against 1.05 (docs/benchmarks.md). Both take a batch
//! from the queue only while they hold the sink, so batches are written
//! in the order they were queued.
//!
//! A log file's pages go to the disk a megabyte at a time, from the writer
//! thread, and leave the page cache a megabyte later (`LogFile`).
//! Left to the kernel, a busy log's dirty pages pile up for 30 s
//! (`vm.dirty_expire_centisecs`) and are then written back at once by a
//! kernel worker on whichever CPU is free: measured here, bursts of 3-4 ms
//! on the load generator's CPU every 30 s, which set the p99 of the runs
//! they fell in (docs/benchmarks.md).

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use metrics::Counter;

use crate::config::AccessLogTarget;
use crate::sync::lock;

/// A batch is handed to the writer when it reaches this size.
const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued between the request path and the writer (16 MiB).
const QUEUED_BATCHES: usize = 256;
/// The catch-up writer starts when this many batches wait (256 KiB).
const CATCH_UP_AT: usize = 4;

/// The sending side of the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The batches being filled; a thread writes to its own shard.
    shards: Box<[Mutex<Open>]>,
    queue: Arc<Queue>,
    dropped: Counter,
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// A shard: the batch being filled and the text of the last second
/// written to it.
struct Open {
    batch: Batch,
    second: Second,
}

/// A Unix second and its `"YYYY-MM-DDTHH:MM:SS.` text, which the lines of
/// one second share (`None` for a year outside 0–9999, written out each
/// time).
struct Second {
    secs: i64,
    text: Option<[u8; SECOND_TEXT]>,
}

/// The length of `"YYYY-MM-DDTHH:MM:SS.`.
const SECOND_TEXT: usize = 21;

impl Second {
    /// `secs` and its text.
    fn at(secs: i64) -> Self {
        let mut text = Vec::with_capacity(SECOND_TEXT);
        push_second(&mut text, secs);
        Self {
            secs,
            text: text.try_into().ok(),
        }
    }
}

impl Batch {
    /// Drops a line cut short by a panic while it was formatted (the lock
    /// then passed on poisoned), so that lines stay whole.
    fn drop_cut_line(&mut self) {
        if self.bytes.last().is_some_and(|&last| last != b'\n') {
            let whole = self.bytes.iter().rposition(|&b| b == b'\n');
            self.bytes.truncate(whole.map_or(0, |end| end + 1));
        }
    }

    /// An empty batch that holds a full one without growing.
    fn sized() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_BYTES + 4096),
            lines: 0,
        }
    }
}

/// Full batches on their way to the writer threads.
#[derive(Default)]
struct Queue {
    state: Mutex<Queued>,
    /// Signalled when a batch comes to a sleeping writer, or at the end.
    ready: Condvar,
    /// Signalled when [`CATCH_UP_AT`] batches wait for a sleeping
    /// catch-up writer, or at the end.
    deep: Condvar,
}

#[derive(Default)]
struct Queued {
    batches: VecDeque<Batch>,
    /// The writer waits on `ready`.
    asleep: bool,
    /// The catch-up writer waits on `deep`.
    catch_up_asleep: bool,
    /// Every [`AccessLog`] is gone: the writers end once the queue is empty.
    closed: bool,
}

impl Queued {
    /// Enough batches wait for the catch-up writer, whose they then are (a
    /// batch the idle writer took could keep the sink while a busy CPU
    /// starves it). At the end, either writer drains what is left.
    fn backlog(&self) -> bool {
        !self.closed && self.batches.len() >= CATCH_UP_AT
    }
}

/// Which of the two writer threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Lowest priority, woken by any batch.
    Idle,
    /// Normal priority, woken when [`CATCH_UP_AT`] batches wait.
    CatchUp,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        lock(&self.state)
    }

    /// Queues `batch`, or gives it back when the queue is full.
    fn push(&self, batch: Batch) -> Result<(), Batch> {
        let (wake, catch_up) = {
            let mut queued = self.lock();
            if queued.batches.len() >= QUEUED_BATCHES {
                return Err(batch);
            }
            queued.batches.push_back(batch);
            (queued.asleep, queued.backlog() && queued.catch_up_asleep)
        };
        if wake {
            self.ready.notify_one();
        }
        if catch_up {
            self.deep.notify_one();
        }
        Ok(())
    }

    /// Waits until `role` has batches to write: fewer than [`CATCH_UP_AT`]
    /// for the idle writer, at least that many for the catch-up writer, any
    /// once the log is closed.
    /// `false`: closed and drained, the thread ends.
    fn wait(&self, role: Role) -> bool {
        let mut queued = self.lock();
        loop {
            let waiting = queued.batches.len();
            if queued.closed {
                return waiting > 0;
            }
            match role {
                Role::Idle if waiting > 0 && !queued.backlog() => return true,
                Role::CatchUp if queued.backlog() => return true,
                Role::Idle => {
                    queued.asleep = true;
                    queued = self.ready.wait(queued).unwrap_or_else(|e| e.into_inner());
                    queued.asleep = false;
                }
                Role::CatchUp => {
                    queued.catch_up_asleep = true;
                    queued = self.deep.wait(queued).unwrap_or_else(|e| e.into_inner());
                    queued.catch_up_asleep = false;
                }
            }
        }
    }

    /// The oldest batch for `role` to write: the idle writer leaves a
    /// backlog to the catch-up writer (until the log is closed).
    fn pop_for(&self, role: Role) -> Option<Batch> {
        let mut queued = self.lock();
        if role == Role::Idle && queued.backlog() {
            return None;
        }
        queued.batches.pop_front()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.deep.notify_one();
    }
}

/// The writer threads; they end when every [`AccessLog`] clone is dropped.
pub struct Writer([JoinHandle<()>; 2]);

thread_local! {
    /// The shard this thread writes to (taken in turn at its first line).
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Hands out shards to threads in turn.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// This thread's shard of `count`.
fn shard(count: usize) -> usize {
    let index = SHARD.get().unwrap_or_else(|| {
        let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
        SHARD.set(Some(index));
        index
    });
    index % count
}

impl AccessLog {
    /// Opens `target` and starts the writer thread.
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> io::Result<(Self, Option<Writer>)> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok((Self { inner: None }, None)),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(LogFile::open(path)?),
        };
        let queue = Arc::new(Queue::default());
        let written = Arc::new(AtomicU64::new(0));
        let sink = Arc::new(Mutex::new(sink));
        let writer = |role: Role, name: &str| {
            let (queue, sink, written) = (queue.clone(), sink.clone(), written.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || write_batches(role, &queue, &sink, &written))
        };
        let threads = [
            writer(Role::Idle, "access-log")?,
            writer(Role::CatchUp, "access-log-2")?,
        ];
        // One shard a CPU: the runtime's worker threads are at most that
        // many, and threads beyond them (blocking tasks) share.
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        let inner = Inner {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Open {
                        batch: Batch::sized(),
                        second: Second::at(0),
                    })
                })
                .collect(),
            queue,
            dropped,
            queued: AtomicU64::new(0),
            written,
        };
        Ok((
            Self {
                inner: Some(Arc::new(inner)),
            },
            Some(Writer(threads)),
        ))
    }

    /// Whether lines are written at all (skip formatting when not).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Appends one JSON line, built by `fill` (see [`Line`]) straight into
    /// this thread's batch.
    pub fn write(&self, fill: impl FnOnce(&mut Line<'_>)) {
        let Some(inner) = &self.inner else { return };
        let full = {
            let mut open = lock(&inner.shards[shard(inner.shards.len())]);
            let Open { batch, second } = &mut *open;
            batch.drop_cut_line();
            let start = batch.bytes.len();
            fill(&mut Line {
                buf: &mut batch.bytes,
                second,
            });
            // Every field starts with a comma: the first one's opens the
            // object instead.
            match batch.bytes.get_mut(start) {
                Some(first) => *first = b'{',
                None => batch.bytes.push(b'{'),
            }
            batch.bytes.extend_from_slice(b"}\n");
            batch.lines += 1;
            (batch.bytes.len() >= BATCH_BYTES).then(|| std::mem::replace(batch, Batch::sized()))
        };
        if let Some(full) = full {
            inner.hand_over(full);
        }
    }

    /// Hands the partly filled batches to the writer; the node calls this
    /// periodically.
    pub fn tick(&self) {
        if let Some(inner) = &self.inner {
            inner.hand_over_all();
        }
    }

    /// Hands over what is buffered and waits (up to `timeout`) until every
    /// line is written out.
    pub async fn flush(&self, timeout: std::time::Duration) {
        let Some(inner) = &self.inner else { return };
        self.tick();
        let written = async {
            while inner.written.load(Ordering::Acquire) < inner.queued.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, written).await;
    }
}

/// A field's name as it starts the field in a line, `,"name":"` (the last
/// quote opens a string value): made by
/// `key!`, whole at compile time and of a length the compiler knows, so
/// that starting a field is a few moves rather than a copy call.
#[derive(Debug, Clone, Copy)]
pub struct Key<const N: usize>(&'static [u8; N]);

impl<const N: usize> Key<N> {
    /// `start` is `,"name":"`, a name that needs no escaping, `N` bytes
    /// long; use `key!`, which checks the shape when it compiles.
    pub const fn new(start: &'static str) -> Self {
        let Some(bytes) = start.as_bytes().as_array::<N>() else {
            panic!("a key's length is its text's")
        };
        assert!(
            N > 5 && bytes[0] == b',' && bytes[N - 2] == b':' && bytes[N - 1] == b'"',
            "a key is `,\"name\":\"`"
        );
        Self(bytes)
    }

    /// `,"name":`, before a value that is no string.
    #[inline(always)]
    fn bare(self) -> &'static [u8] {
        &self.0[..N - 1]
    }
}

/// The [`Key`] of the field named `$name`, a string literal.
macro_rules! key {
    ($name:literal) => {
        const {
            const START: &str = concat!(",\"", $name, "\":\"");
            $crate::access_log::Key::<{ START.len() }>::new(START)
        }
    };
}
pub(crate) use key;

/// Writes the fields of one JSON object into a batch. Hand-rolled rather
/// than serde: the access log runs for every request, and a generic
/// serialiser cost several thousand instructions per line in profiles.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
    second: &'a mut Second,
}

impl Line<'_> {
    /// Starts a field whose value is no string.
    #[inline(always)]
    fn key<const N: usize>(&mut self, key: Key<N>) {
        self.buf.extend_from_slice(key.bare());
    }

    /// A string field, escaped.
    #[inline(always)]
    pub fn str<const N: usize>(&mut self, key: Key<N>, value: &str) {
        self.quoted(key, |out| push_json_chars(out, value));
    }

    /// A string field whose value needs no escaping by construction: a
    /// token, hex digits, a checked host or request id. (Checking would
    /// cost more than writing.)
    #[inline(always)]
    pub fn token<const N: usize>(&mut self, key: Key<N>, value: &[u8]) {
        debug_assert!(is_plain(value), "{value:?} needs escaping");
        self.quoted(key, |out| out.extend_from_slice(value));
    }

    /// An unsigned integer field.
    #[inline]
    pub fn u64<const N: usize>(&mut self, key: Key<N>, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A duration in milliseconds with microsecond precision (`1.234`).
    #[inline]
    pub fn millis<const N: usize>(&mut self, key: Key<N>, value: std::time::Duration) {
        self.key(key);
        // In u64, which holds 584,000 years of microseconds: u128 division
        // is a library call.
        let micros = value
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(value.subsec_micros()));
        let mut digits = itoa::Buffer::new();
        self.buf
            .extend_from_slice(digits.format(micros / 1000).as_bytes());
        let fraction = (micros % 1000) as u16;
        self.buf.extend_from_slice(&[
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
    }

    /// A boolean field.
    #[inline]
    pub fn bool<const N: usize>(&mut self, key: Key<N>, value: bool) {
        self.key(key);
        if value {
            self.buf.extend_from_slice(b"true");
        } else {
            self.buf.extend_from_slice(b"false");
        }
    }

    /// A connection's peer address field (`"1.2.3.4:80"`, `"[::1]:80"`).
    #[inline]
    pub fn peer<const N: usize>(&mut self, key: Key<N>, peer: &crate::text::Peer) {
        self.quoted(key, |out| peer.push_addr(out));
    }

    /// An IP address field, copied from `peer`'s text when it is the
    /// peer's IP.
    #[inline]
    pub fn peer_ip<const N: usize>(
        &mut self,
        key: Key<N>,
        peer: &crate::text::Peer,
        ip: std::net::IpAddr,
    ) {
        self.quoted(key, |out| peer.push_ip(out, ip));
    }

    /// A string field whose text `write` appends.
    #[inline(always)]
    fn quoted<const N: usize>(&mut self, key: Key<N>, write: impl FnOnce(&mut Vec<u8>)) {
        self.buf.extend_from_slice(key.0);
        write(self.buf);
        self.buf.push(b'"');
    }

    /// The wall-clock time as RFC 3339 with milliseconds, UTC
    /// (`"2026-01-01T00:00:00.042Z"`).
    #[inline]
    pub fn timestamp<const N: usize>(&mut self, key: Key<N>, now: std::time::SystemTime) {
        self.key(key);
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs() as i64;
        if self.second.secs != secs {
            *self.second = Second::at(secs);
        }
        match &self.second.text {
            Some(text) => self.buf.extend_from_slice(text),
            None => push_second(self.buf, secs),
        }
        let millis = since.subsec_millis();
        self.buf.extend_from_slice(&[
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
            b'"',
        ]);
    }
}

/// Appends `text` escaped as the characters of a JSON string (the quotes
/// are the caller's).
#[inline]
fn push_json_chars(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if is_plain(bytes) {
        buf.extend_from_slice(bytes);
    } else {
        push_escaped(buf, bytes);
    }
}

/// Whether no byte of `bytes` needs escaping (the usual case: paths, hosts,
/// ids), checked eight bytes at a time; shorter texts (a route's or an
/// upstream's name, a short path) as two overlapping halves.
fn is_plain(bytes: &[u8]) -> bool {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let half = |at: usize| {
        u64::from(u32::from_le_bytes(
            bytes[at..at + 4].try_into().expect("four bytes"),
        ))
    };
    match bytes.len() {
        0..4 => bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'),
        // The first four bytes and the last four cover all (overlapping
        // when fewer than eight); `needs_escape` looks at each byte.
        len @ 4..8 => !needs_escape(half(0) | half(len - 4) << 32),
        len => {
            let mut at = 0;
            while at + 8 <= len {
                if needs_escape(word(at)) {
                    return false;
                }
                at += 8;
            }
            // The last eight bytes once more (overlapping).
            at == len || !needs_escape(word(len - 8))
        }
    }
}

/// Appends `bytes` with JSON's escapes.
fn push_escaped(buf: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            buf.extend_from_slice(&bytes[start..i]);
            match b {
                b'"' => buf.extend_from_slice(b"\\\""),
                b'\\' => buf.extend_from_slice(b"\\\\"),
                b'\n' => buf.extend_from_slice(b"\\n"),
                b'\r' => buf.extend_from_slice(b"\\r"),
                b'\t' => buf.extend_from_slice(b"\\t"),
                _ => {
                    buf.extend_from_slice(b"\\u00");
                    buf.extend_from_slice(&crate::text::hex_pair(b));
                }
            }
            start = i + 1;
        }
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes in `word` is a control character, `"`
/// or `\\` (the bytes JSON strings escape). Bit tricks from "Bit Twiddling
/// Hacks" (`hasless`, `haszero`), exact for "any of the eight".
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    below_space | zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
        != 0
}

/// `"YYYY-MM-DDTHH:MM:SS.` for a Unix time.
fn push_second(buf: &mut Vec<u8>, secs: i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = crate::calendar::civil_from_days(days);
    let (month, day) = (i64::from(month), i64::from(day));
    let two = |buf: &mut Vec<u8>, v: i64| {
        buf.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    buf.push(b'"');
    buf.extend_from_slice(itoa::Buffer::new().format(year).as_bytes());
    buf.push(b'-');
    two(buf, month);
    buf.push(b'-');
    two(buf, day);
    buf.push(b'T');
    two(buf, rem / 3600);
    buf.push(b':');
    two(buf, rem / 60 % 60);
    buf.push(b':');
    two(buf, rem % 60);
    buf.push(b'.');
}

impl Inner {
    fn hand_over(&self, batch: Batch) {
        let lines = batch.lines;
        match self.queue.push(batch) {
            Ok(()) => {
                self.queued.fetch_add(lines, Ordering::Relaxed);
            }
            Err(_) => self.dropped.increment(lines),
        }
    }

    /// Hands over every shard's batch that holds a line.
    fn hand_over_all(&self) {
        for shard in &self.shards {
            let batch = {
                let mut open = lock(shard);
                open.batch.drop_cut_line();
                (open.batch.lines > 0).then(|| std::mem::replace(&mut open.batch, Batch::sized()))
            };
            if let Some(batch) = batch {
                self.hand_over(batch);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // What is still buffered goes out before the writer ends.
        self.hand_over_all();
        self.queue.close();
    }
}

impl Writer {
    /// Waits for the threads to end; every [`AccessLog`] clone must be gone.
    pub fn join(self) {
        for thread in self.0 {
            let _ = thread.join();
        }
    }
}

/// A writer thread: `role` says when it wakes. Each batch is taken from the
/// queue while the sink is held, so that the two threads write batches in
/// the order they were queued.
fn write_batches(
    role: Role,
    queue: &Queue,
    sink: &Mutex<Box<dyn Write + Send>>,
    written: &AtomicU64,
) {
    if role == Role::Idle {
        lowest_priority();
    }
    while queue.wait(role) {
        loop {
            let mut sink = lock(sink);
            let Some(batch) = queue.pop_for(role) else {
                break;
            };
            if let Err(error) = sink.write_all(&batch.bytes).and_then(|()| sink.flush()) {
                tracing::warn!(%error, "access log write failed");
            }
            written.fetch_add(batch.lines, Ordering::Release);
        }
    }
}

/// An access-log file that the writer threads keep clean. Once a flush
/// (one a batch) finds [`ADVICE_BYTES`] written since the last advice, it
/// advises the kernel that the pages from where the advice before the
/// last one ended are not needed (`POSIX_FADV_DONTNEED`): Linux then
/// starts writing the dirty ones back, from this thread, and drops from
/// the page cache those already on the disk. So each megabyte goes to the
/// disk soon after it is written and leaves the cache at the next advice
/// (unless its write is still going on then, when reclaim takes it in
/// time). The log neither leaves dirty pages for the kernel's flusher nor
/// fills the page cache, and the work is done on the writer's CPU time, at
/// its priority, in runs long enough to be cheap and rare. Where the file is
/// not a regular one (a pipe, a device) or its file system refuses the
/// advice, writes go on and the kernel keeps the pages.
struct LogFile {
    file: File,
    /// Where the next advice starts, while the writer keeps the file
    /// clean: the page the advice before the last one ended in.
    advised: Option<u64>,
    /// Where the last advice ended.
    advised_to: u64,
    /// Where the last flush found the end of the file.
    seen: u64,
}

/// The page size offsets are rounded down to.
const PAGE: u64 = 4096;

/// How much is written between two pieces of advice. Advice at every
/// batch (64 KiB) cost the writer 1.4-1.6 µs of CPU a request at one
/// connection (some 60 small runs of writeback a second, each a stretch
/// in the kernel that a request on the same CPU can wait behind); a
/// megabyte at a time, 0.6-0.7 µs (docs/benchmarks.md).
const ADVICE_BYTES: u64 = 1 << 20;

impl LogFile {
    fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        let end = meta.len();
        Ok(Self {
            file,
            advised: meta.is_file().then_some(end - end % PAGE),
            advised_to: end,
            seen: end,
        })
    }

    /// Advises the kernel over `from..` the end of the last write once
    /// [`ADVICE_BYTES`] have been written since the last advice, and
    /// returns where the next advice starts.
    fn advise(&mut self, from: u64) -> io::Result<u64> {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        // Appending, the offset is the end of the last write; less than
        // where the last flush found it once the file was truncated, when
        // the advice starts over.
        let end = self.file.stream_position()?;
        let mut from = from;
        if end < self.seen {
            from = 0;
            self.advised_to = 0;
        }
        self.seen = end;
        if end - self.advised_to < ADVICE_BYTES {
            return Ok(from);
        }
        let offset = i64::try_from(from).map_err(io::Error::other)?;
        let len = i64::try_from(end - from).map_err(io::Error::other)?;
        posix_fadvise(
            &self.file,
            offset,
            len,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )?;
        let next = self.advised_to / PAGE * PAGE;
        self.advised_to = end;
        Ok(next)
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(from) = self.advised {
            self.advised = self
                .advise(from)
                .inspect_err(|error| {
                    tracing::info!(%error, "the access log's pages are left to the kernel");
                })
                .ok();
        }
        Ok(())
    }
}

/// Puts this thread on `SCHED_IDLE`. Lowering one's own priority needs no
/// privilege; where the system refuses anyway, the thread keeps its
/// priority, and only requests that share its CPU notice.
fn lowest_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(error) =
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle)
    {
        tracing::info!(?error, "the access-log writer keeps normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log to a fresh file in a directory of its own (`name`).
    fn file_log(name: &str) -> (AccessLog, Writer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("meridian-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let metrics = crate::metrics::Metrics::new();
        let (log, writer) = AccessLog::start(
            &AccessLogTarget::File(path.clone()),
            metrics.access_log_dropped.clone(),
        )
        .unwrap();
        (log, writer.expect("a file log has a writer"), path)
    }

    #[tokio::test]
    async fn lines_reach_the_file_in_order() {
        let (log, writer, path) = file_log("access");
        for i in 0..5000 {
            log.write(|line| line.u64(key!("n"), i));
        }
        log.flush(std::time::Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5000);
        assert_eq!(lines[4999], "{\"n\":4999}");
        drop(log);
        writer.join();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_line_cut_short_by_a_panic_is_not_written() {
        let (log, writer, path) = file_log("access-panic");
        log.write(|line| line.u64(key!("n"), 1));
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.write(|line| {
                line.u64(key!("n"), 2);
                panic!("a bug while formatting");
            })
        }));
        assert!(cut.is_err());
        log.write(|line| line.u64(key!("n"), 3));
        // Cut short again as the last line: the hand-over drops it too.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.write(|line| {
                line.u64(key!("n"), 4);
                panic!("a bug while formatting");
            })
        }));
        drop(log);
        writer.join();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"n\":1}\n{\"n\":3}\n");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_last_lines_are_written_when_the_log_is_dropped() {
        let (log, writer, path) = file_log("access-end");
        // Two full batches and a part of one; no tick, no flush.
        let lines = 2 * BATCH_BYTES / "{\"n\":12345}\n".len() + 10;
        for i in 0..lines {
            log.write(|line| line.u64(key!("n"), i as u64));
        }
        drop(log);
        writer.join();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), lines);
        assert_eq!(
            text.lines().last(),
            Some(format!("{{\"n\":{}}}", lines - 1).as_str())
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// How many of the pages of `path` are in the page cache (`fincore`,
    /// from util-linux).
    fn cached_pages(path: &std::path::Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--raw", "--noheadings", "--output", "PAGES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_log_file_leaves_its_written_pages_to_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        if nix::sys::statfs::statfs(dir.path())
            .unwrap()
            .filesystem_type()
            == nix::sys::statfs::TMPFS_MAGIC
        {
            eprintln!(
                "skipped: {} is on tmpfs, whose pages are the file",
                dir.path().display()
            );
            return;
        }
        // An existing file: the writer goes on from its end.
        std::fs::write(&path, "earlier\n").unwrap();
        let mut log = LogFile::open(&path).unwrap();
        let disk = File::open(&path).unwrap();
        let line = [b'x'; 99_999];
        let write_lines = |log: &mut LogFile, n: usize| {
            for _ in 0..n {
                log.write_all(&line).unwrap();
                log.write_all(b"\n").unwrap();
                log.flush().unwrap();
                // On the disk before the next advice, which drops it (the
                // writer does not wait for the disk; the test does, so
                // that what is dropped is known).
                disk.sync_data().unwrap();
            }
        };
        write_lines(&mut log, 40);
        // 4,000,008 bytes in 977 pages: advice at 1,100,008, 2,200,008 and
        // 3,300,008 bytes, each dropping what the one before it wrote; in
        // the cache, at most the pages written since the last one.
        let most = ADVICE_BYTES / PAGE + 2;
        let cached = cached_pages(&path);
        assert!(
            cached <= most,
            "{cached} pages cached, {most} expected at most"
        );
        assert_eq!(
            (log.seen, log.advised_to, log.advised),
            (4_000_008, 3_300_008, Some(2_200_008 / PAGE * PAGE))
        );
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 4_000_008);
        assert!(text.starts_with(b"earlier\nxxx"));
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 41);

        // Truncated under the writer (logrotate's copytruncate): it goes on
        // at the new end, and the advice with it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        write_lines(&mut log, 3);
        assert_eq!(
            (log.seen, log.advised_to, log.advised),
            (300_000, 0, Some(0))
        );
        write_lines(&mut log, 12);
        assert_eq!(
            (log.seen, log.advised_to, log.advised),
            (1_500_000, 1_100_000, Some(0))
        );
        assert!(cached_pages(&path) <= most);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1_500_000);
    }

    #[test]
    fn a_full_queue_gives_the_batch_back() {
        let queue = Queue::default();
        for _ in 0..QUEUED_BATCHES {
            assert!(queue.push(Batch::sized()).is_ok());
        }
        assert!(
            queue.push(Batch::sized()).is_err(),
            "the writers are behind"
        );
        assert!(queue.wait(Role::CatchUp));
        assert!(
            queue.pop_for(Role::Idle).is_none(),
            "a backlog is the catch-up writer's"
        );
        assert!(queue.pop_for(Role::CatchUp).is_some());
        assert!(
            queue.push(Batch::sized()).is_ok(),
            "room again once one is taken"
        );
        queue.close();
        let mut drained = 0;
        while queue.wait(Role::CatchUp) {
            queue.pop_for(Role::CatchUp).unwrap();
            drained += 1;
        }
        assert_eq!(
            drained, QUEUED_BATCHES,
            "drained first, then the writers end"
        );
        assert!(!queue.wait(Role::Idle));
    }

    /// A writer of the given role on `queue`, into a shared buffer.
    fn spawn_writer(role: Role, queue: &Arc<Queue>) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                lock(&self.0).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Shared(Arc::default());
        let sink: Mutex<Box<dyn Write + Send>> = Mutex::new(Box::new(out.clone()));
        let queue = queue.clone();
        let thread = std::thread::spawn(move || {
            write_batches(role, &queue, &sink, &AtomicU64::new(0));
        });
        (out.0, thread)
    }

    fn numbered(n: usize) -> Batch {
        Batch {
            bytes: format!("{n}\n").into_bytes(),
            lines: 1,
        }
    }

    #[test]
    fn the_catch_up_writer_waits_for_a_backlog_and_keeps_the_order() {
        let queue = Arc::new(Queue::default());
        let (out, writer) = spawn_writer(Role::CatchUp, &queue);
        for n in 0..CATCH_UP_AT - 1 {
            assert!(queue.push(numbered(n)).is_ok());
        }
        // Asleep with a backlog one short of its threshold: nothing written.
        while !queue.lock().catch_up_asleep {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(lock(&out).is_empty(), "the catch-up writer started early");

        assert!(queue.push(numbered(CATCH_UP_AT - 1)).is_ok());
        let expected: String = (0..CATCH_UP_AT).map(|n| format!("{n}\n")).collect();
        let waited = tokio::time::Instant::now();
        while lock(&out).len() < expected.len() {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(5),
                "the backlog did not wake the catch-up writer"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        queue.close();
        writer.join().unwrap();
        assert_eq!(String::from_utf8(lock(&out).clone()).unwrap(), expected);
    }

    #[test]
    fn the_writer_runs_at_idle_priority() {
        let (log, writer, path) = file_log("priority");
        // `policy` is field 41 of /proc/…/stat (SCHED_IDLE is 5).
        let policy_of = |name: &str| {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .find_map(|task| {
                    // Another test's thread can end while its entry is
                    // read ("No such process"): it is not the one sought.
                    let task = task.ok()?.path();
                    let comm = std::fs::read_to_string(task.join("comm")).ok()?;
                    if comm.trim() != name {
                        return None;
                    }
                    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
                    let policy = after_comm.split(' ').nth(41 - 3).unwrap();
                    Some(policy.parse::<u32>().unwrap())
                })
        };
        let waited = tokio::time::Instant::now();
        // A thread shows its name once it has started.
        while policy_of("access-log") != Some(5) || policy_of("access-log-2").is_none() {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(5),
                "the writer's policy is {:?}",
                policy_of("access-log")
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            policy_of("access-log-2"),
            Some(0),
            "the catch-up writer: SCHED_OTHER"
        );
        drop(log);
        writer.join();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_sleeping_writer_is_woken_by_a_batch() {
        let queue = Arc::new(Queue::default());
        let taken = Arc::new(AtomicU64::new(0));
        let writer = std::thread::spawn({
            let (queue, taken) = (queue.clone(), taken.clone());
            move || {
                while queue.wait(Role::Idle) {
                    while queue.pop_for(Role::Idle).is_some() {
                        taken.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        for sent in 1..=3 {
            // The writer falls asleep on the empty queue; each batch alone
            // must wake it (the queue is not closed until the end).
            while !queue.lock().asleep {
                std::thread::yield_now();
            }
            assert!(queue.push(Batch::sized()).is_ok());
            let waited = tokio::time::Instant::now();
            while taken.load(Ordering::SeqCst) < sent {
                assert!(
                    waited.elapsed() < std::time::Duration::from_secs(5),
                    "batch {sent} did not wake the writer"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        queue.close();
        writer.join().unwrap();
    }

    #[test]
    fn lines_are_valid_json() {
        let mut buf = Vec::new();
        let mut second = Second::at(0);
        let mut line = Line {
            buf: &mut buf,
            second: &mut second,
        };
        line.str(key!("path"), "/a\"b\\c\n\u{1}é");
        line.u64(key!("status"), 200);
        line.millis(key!("ms"), std::time::Duration::from_micros(1_234_567));
        line.millis(key!("tiny"), std::time::Duration::from_micros(7));
        line.bool(key!("complete"), true);
        let peer = crate::text::Peer::new("127.0.0.1:80".parse().unwrap());
        line.peer(key!("client"), &peer);
        line.peer_ip(key!("client_ip"), &peer, "2001:db8::1".parse().unwrap());
        line.peer_ip(key!("peer_ip"), &peer, peer.addr().ip());
        line.timestamp(
            key!("ts"),
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_042),
        );
        buf[0] = b'{';
        buf.push(b'}');
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(value["path"], "/a\"b\\c\n\u{1}é");
        assert_eq!(value["status"], 200);
        assert_eq!(value["ms"], 1234.567);
        assert_eq!(value["tiny"], 0.007);
        assert_eq!(value["complete"], true);
        assert_eq!(value["client"], "127.0.0.1:80");
        assert_eq!(value["client_ip"], "2001:db8::1");
        assert_eq!(value["peer_ip"], "127.0.0.1");
        assert_eq!(value["ts"], "2026-01-01T00:00:00.042Z");
    }

    proptest::proptest! {
        /// Any string comes back from the JSON it is written as, whatever
        /// mix of plain runs, quotes, backslashes and control bytes.
        #[test]
        fn strings_round_trip(text in "(\\PC|[\"\\\\\\x00-\\x1f]|[a-z/.]{8,20}){0,40}") {
            let mut buf = vec![b'"'];
            push_json_chars(&mut buf, &text);
            buf.push(b'"');
            let back: String = serde_json::from_slice(&buf).unwrap();
            proptest::prop_assert_eq!(back, text);
        }

        /// The word-wise check says what a byte-wise one says.
        #[test]
        fn plain_means_nothing_to_escape(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let plain = bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
            proptest::prop_assert_eq!(is_plain(&bytes), plain);
        }
    }

    /// `"ts"`'s value as `Line::timestamp` writes it, with `second` as
    /// the cached second.
    fn timestamp(second: &mut Second, since_epoch: std::time::Duration) -> String {
        let mut buf = Vec::new();
        Line {
            buf: &mut buf,
            second,
        }
        .timestamp(key!("ts"), std::time::UNIX_EPOCH + since_epoch);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_match_humantime() {
        let mut second = Second::at(0);
        // Twice each, the second from the cached prefix.
        for secs in [
            0u64,
            0,
            951_782_400,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
            4_102_444_799,
        ] {
            let since = std::time::Duration::from_millis(secs * 1000 + 5);
            let expected = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since);
            assert_eq!(
                timestamp(&mut second, since),
                format!(",\"ts\":\"{expected}\"")
            );
        }
        // A year of five digits has no cached text and is written out.
        let year_10000 = std::time::Duration::from_secs(253_402_300_800);
        for _ in 0..2 {
            assert_eq!(
                timestamp(&mut second, year_10000),
                ",\"ts\":\"10000-01-01T00:00:00.000Z\""
            );
        }
        assert_eq!(
            timestamp(&mut second, std::time::Duration::from_millis(42)),
            ",\"ts\":\"1970-01-01T00:00:00.042Z\""
        );
    }

    #[test]
    fn every_thread_s_lines_arrive_whole_and_in_order() {
        let (log, writer, path) = file_log("access-threads");
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let log = &log;
                scope.spawn(move || {
                    for n in 0..3000 {
                        log.write(|line| {
                            line.u64(key!("thread"), thread);
                            line.u64(key!("n"), n);
                        });
                    }
                });
            }
        });
        drop(log);
        writer.join();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut next = [0u64; 4];
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let thread = value["thread"].as_u64().unwrap() as usize;
            assert_eq!(value["n"].as_u64(), Some(next[thread]), "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [3000; 4]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
