//! The JSON access log: one line per finished request, written by a
//! dedicated thread so the request path never blocks on I/O.
//!
//! Lines are appended to a shared 64 KiB buffer; a full buffer is handed to
//! the writer thread through a bounded queue, and a node task hands over a
//! partly filled one every 200 ms ([`AccessLog::tick`]). So the writer wakes
//! once per batch rather than once per request, and a line reaches the file
//! within about 200 ms. When the writer falls behind and the queue is
//! full, the batch is dropped and its lines are counted in
//! `meridian_access_log_dropped_total` rather than slowing requests down.
//!
//! The queue is a mutex and a condition variable rather than a channel: a
//! channel's receiver spins and yields the CPU several times before it
//! sleeps (four `sched_yield` calls per batch with crossbeam's), and on a
//! node pinned to one core each yield is a switch away from the request
//! path and back. The writer here sleeps as soon as the queue is empty,
//! and a batch wakes it only when it sleeps.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use metrics::Counter;

use crate::config::AccessLogTarget;
use crate::sync::lock;

/// A batch is handed to the writer when it reaches this size.
const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued between the request path and the writer (16 MiB).
const QUEUED_BATCHES: usize = 256;

/// The sending side of the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    batch: Mutex<Batch>,
    queue: Arc<Queue>,
    dropped: Counter,
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

impl Batch {
    /// An empty batch that holds a full one without growing.
    fn sized() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_BYTES + 4096),
            lines: 0,
        }
    }
}

/// Full batches on their way to the writer thread.
#[derive(Default)]
struct Queue {
    state: Mutex<Queued>,
    /// Signalled when a batch comes to a sleeping writer, or at the end.
    ready: Condvar,
}

#[derive(Default)]
struct Queued {
    batches: VecDeque<Batch>,
    /// The writer waits on `ready`.
    asleep: bool,
    /// Every [`AccessLog`] is gone: the writer ends once the queue is empty.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        lock(&self.state)
    }

    /// Queues `batch`, or gives it back when the queue is full.
    fn push(&self, batch: Batch) -> Result<(), Batch> {
        let wake = {
            let mut queued = self.lock();
            if queued.batches.len() >= QUEUED_BATCHES {
                return Err(batch);
            }
            queued.batches.push_back(batch);
            queued.asleep
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Everything queued, once there is something (`None`: closed and
    /// drained).
    fn take(&self) -> Option<VecDeque<Batch>> {
        let mut queued = self.lock();
        while queued.batches.is_empty() {
            if queued.closed {
                return None;
            }
            queued.asleep = true;
            queued = self.ready.wait(queued).unwrap_or_else(|e| e.into_inner());
            queued.asleep = false;
        }
        Some(std::mem::take(&mut queued.batches))
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

/// The writer thread; it ends when every [`AccessLog`] clone is dropped.
pub struct Writer(JoinHandle<()>);

thread_local! {
    /// Reused serialisation buffer, so formatting a line does not allocate.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// Opens `target` and starts the writer thread.
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> io::Result<(Self, Option<Writer>)> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok((Self { inner: None }, None)),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let queue = Arc::new(Queue::default());
        let written = Arc::new(AtomicU64::new(0));
        let (progress, batches) = (written.clone(), queue.clone());
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&batches, sink, &progress))?;
        let inner = Inner {
            batch: Mutex::new(Batch::sized()),
            queue,
            dropped,
            queued: AtomicU64::new(0),
            written,
        };
        Ok((
            Self {
                inner: Some(Arc::new(inner)),
            },
            Some(Writer(thread)),
        ))
    }

    /// Whether lines are written at all (skip formatting when not).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Appends one JSON line, built by `fill` (see [`Line`]).
    pub fn write(&self, fill: impl FnOnce(&mut Line<'_>)) {
        let Some(inner) = &self.inner else { return };
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            fill(&mut Line { buf: scratch });
            // Every field starts with a comma: the first one's opens the
            // object instead.
            match scratch.first_mut() {
                Some(first) => *first = b'{',
                None => scratch.push(b'{'),
            }
            scratch.extend_from_slice(b"}\n");
            let full = {
                let mut batch = lock(&inner.batch);
                batch.bytes.extend_from_slice(scratch);
                batch.lines += 1;
                (batch.bytes.len() >= BATCH_BYTES)
                    .then(|| std::mem::replace(&mut *batch, Batch::sized()))
            };
            if let Some(full) = full {
                inner.hand_over(full);
            }
        });
    }

    /// Hands a partly filled batch to the writer; the node calls this
    /// periodically.
    pub fn tick(&self) {
        if let Some(inner) = &self.inner {
            let batch = {
                let mut batch = lock(&inner.batch);
                (batch.lines > 0).then(|| std::mem::replace(&mut *batch, Batch::sized()))
            };
            if let Some(batch) = batch {
                inner.hand_over(batch);
            }
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
/// quote opens a string value): made by `key!`, whole at compile time, so
/// that starting a field is one copy rather than five writes.
#[derive(Debug, Clone, Copy)]
pub struct Key(&'static str);

impl Key {
    /// `start` is `,"name":"`, a name that needs no escaping; use `key!`,
    /// which checks the shape when it compiles.
    pub const fn new(start: &'static str) -> Self {
        let bytes = start.as_bytes();
        assert!(
            bytes.len() > 5 && bytes[0] == b',' && bytes[bytes.len() - 1] == b'"',
            "a key is `,\"name\":\"`"
        );
        Self(start)
    }

    /// `,"name":`, before a value that is no string.
    #[inline(always)]
    fn bare(self) -> &'static [u8] {
        let start = self.0.as_bytes();
        &start[..start.len() - 1]
    }
}

/// The [`Key`] of the field named `$name`, a string literal.
macro_rules! key {
    ($name:literal) => {
        const { $crate::access_log::Key::new(concat!(",\"", $name, "\":\"")) }
    };
}
pub(crate) use key;

/// Writes the fields of one JSON object. Hand-rolled rather than serde:
/// the access log runs for every request, and a generic serialiser cost
/// several thousand instructions per line in profiles.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

impl Line<'_> {
    /// Starts a field whose value is no string.
    #[inline(always)]
    fn key(&mut self, key: Key) {
        self.buf.extend_from_slice(key.bare());
    }

    /// A string field, escaped.
    #[inline(always)]
    pub fn str(&mut self, key: Key, value: &str) {
        self.buf.extend_from_slice(key.0.as_bytes());
        push_json_chars(self.buf, value);
        self.buf.push(b'"');
    }

    /// A string field whose value needs no escaping by construction: a
    /// token, hex digits, a checked host or request id. (Checking would
    /// cost more than writing.)
    #[inline(always)]
    pub fn token(&mut self, key: Key, value: &[u8]) {
        debug_assert!(is_plain(value), "{value:?} needs escaping");
        self.quoted(key, |out| out.extend_from_slice(value));
    }

    /// An unsigned integer field.
    #[inline]
    pub fn u64(&mut self, key: Key, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A duration in milliseconds with microsecond precision (`1.234`).
    #[inline]
    pub fn millis(&mut self, key: Key, value: std::time::Duration) {
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
    pub fn bool(&mut self, key: Key, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A connection's peer address field (`"1.2.3.4:80"`, `"[::1]:80"`).
    #[inline]
    pub fn peer(&mut self, key: Key, peer: &crate::text::Peer) {
        self.quoted(key, |out| peer.push_addr(out));
    }

    /// An IP address field, copied from `peer`'s text when it is the
    /// peer's IP.
    #[inline]
    pub fn peer_ip(&mut self, key: Key, peer: &crate::text::Peer, ip: std::net::IpAddr) {
        self.quoted(key, |out| peer.push_ip(out, ip));
    }

    /// A string field whose text `write` appends and which needs no
    /// escaping (addresses).
    #[inline(always)]
    fn quoted(&mut self, key: Key, write: impl FnOnce(&mut Vec<u8>)) {
        self.buf.extend_from_slice(key.0.as_bytes());
        write(self.buf);
        self.buf.push(b'"');
    }

    /// The wall-clock time as RFC 3339 with milliseconds, UTC.
    #[inline]
    pub fn timestamp(&mut self, key: Key, now: std::time::SystemTime) {
        self.key(key);
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        push_rfc3339_millis(self.buf, since.as_secs() as i64, since.subsec_millis());
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
/// ids), checked eight bytes at a time.
fn is_plain(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        if needs_escape(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
            return false;
        }
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return true;
    }
    // The last eight bytes once more (overlapping), or the few there are
    // one by one.
    match bytes.len().checked_sub(8) {
        Some(start) => !needs_escape(u64::from_le_bytes(
            bytes[start..].try_into().expect("eight bytes"),
        )),
        None => rest.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'),
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

thread_local! {
    /// The second last written and its `"YYYY-MM-DDTHH:MM:SS.` prefix, which
    /// the lines of one second share.
    static SECOND: RefCell<(i64, Vec<u8>)> = const { RefCell::new((i64::MIN, Vec::new())) };
}

/// `"YYYY-MM-DDTHH:MM:SS.mmmZ"` for a Unix time.
fn push_rfc3339_millis(buf: &mut Vec<u8>, secs: i64, millis: u32) {
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != secs {
            prefix.clear();
            push_second(prefix, secs);
            *second = secs;
        }
        buf.extend_from_slice(prefix);
    });
    buf.extend_from_slice(&[
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
    ]);
    buf.extend_from_slice(b"Z\"");
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
}

impl Drop for Inner {
    fn drop(&mut self) {
        // What is still buffered goes out before the writer ends.
        let batch = std::mem::replace(&mut *lock(&self.batch), Batch::sized());
        if batch.lines > 0 {
            self.hand_over(batch);
        }
        self.queue.close();
    }
}

impl Writer {
    /// Waits for the thread to end; every [`AccessLog`] clone must be gone.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

fn write_batches(queue: &Queue, mut sink: Box<dyn Write + Send>, written: &AtomicU64) {
    while let Some(batches) = queue.take() {
        for batch in batches {
            if let Err(error) = sink.write_all(&batch.bytes).and_then(|()| sink.flush()) {
                tracing::warn!(%error, "access log write failed");
            }
            written.fetch_add(batch.lines, Ordering::Release);
        }
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

    #[test]
    fn a_full_queue_gives_the_batch_back() {
        let queue = Queue::default();
        for _ in 0..QUEUED_BATCHES {
            assert!(queue.push(Batch::sized()).is_ok());
        }
        assert!(queue.push(Batch::sized()).is_err(), "the writer is behind");
        assert_eq!(
            queue.take().map(|batches| batches.len()),
            Some(QUEUED_BATCHES)
        );
        assert!(queue.push(Batch::sized()).is_ok(), "room again once taken");
        queue.close();
        assert_eq!(
            queue.take().map(|batches| batches.len()),
            Some(1),
            "drained first"
        );
        assert!(queue.take().is_none(), "then the writer ends");
    }

    #[test]
    fn a_sleeping_writer_is_woken_by_a_batch() {
        let queue = Arc::new(Queue::default());
        let taken = Arc::new(AtomicU64::new(0));
        let writer = std::thread::spawn({
            let (queue, taken) = (queue.clone(), taken.clone());
            move || {
                while let Some(batches) = queue.take() {
                    taken.fetch_add(batches.len() as u64, Ordering::SeqCst);
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
        let mut line = Line { buf: &mut buf };
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

    #[test]
    fn timestamps_match_humantime() {
        // Twice each, the second from the cached prefix.
        for secs in [
            0i64,
            0,
            951_782_400,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
        ] {
            let mut buf = Vec::new();
            push_rfc3339_millis(&mut buf, secs, 5);
            let time =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs as u64 * 1000 + 5);
            let expected = format!("\"{}\"", humantime::format_rfc3339_millis(time));
            assert_eq!(String::from_utf8(buf).unwrap(), expected);
        }
    }
}
