//! The JSON access log: one line per finished request, written by a
//! dedicated thread so the request path never blocks on I/O.
//!
//! Lines are appended to a shared 64 KiB buffer; a full buffer is handed to
//! the writer thread through a bounded channel, and a node task hands over a
//! partly filled one every 200 ms ([`AccessLog::tick`]). So the writer wakes
//! once per batch rather than once per request, and a line reaches the file
//! within about 200 ms. When the writer falls behind and the channel is
//! full, the batch is dropped and its lines are counted in
//! `meridian_access_log_dropped_total` rather than slowing requests down.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use metrics::Counter;

use crate::config::AccessLogTarget;

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
    tx: Sender<Batch>,
    dropped: Counter,
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
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
        let (tx, rx) = crossbeam_channel::bounded(QUEUED_BATCHES);
        let written = Arc::new(AtomicU64::new(0));
        let progress = written.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(rx, sink, &progress))?;
        let inner = Inner {
            batch: Mutex::new(Batch::default()),
            tx,
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

    /// Serialises `line` as one JSON line.
    pub fn write(&self, line: &impl serde::Serialize) {
        let Some(inner) = &self.inner else { return };
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            if serde_json::to_writer(&mut *scratch, line).is_err() {
                return;
            }
            scratch.push(b'\n');
            let full = {
                let mut batch = inner.batch.lock().unwrap_or_else(|e| e.into_inner());
                batch.bytes.extend_from_slice(scratch);
                batch.lines += 1;
                (batch.bytes.len() >= BATCH_BYTES).then(|| std::mem::take(&mut *batch))
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
            let batch = std::mem::take(&mut *inner.batch.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.lines > 0 {
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

impl Inner {
    fn hand_over(&self, batch: Batch) {
        let lines = batch.lines;
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.queued.fetch_add(lines, Ordering::Relaxed);
            }
            Err(_) => self.dropped.increment(lines),
        }
    }
}

impl Writer {
    /// Waits for the thread to end; every [`AccessLog`] clone must be gone.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

fn write_batches(rx: Receiver<Batch>, mut sink: Box<dyn Write + Send>, written: &AtomicU64) {
    while let Ok(batch) = rx.recv() {
        if let Err(error) = sink.write_all(&batch.bytes).and_then(|()| sink.flush()) {
            tracing::warn!(%error, "access log write failed");
        }
        written.fetch_add(batch.lines, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_reach_the_file_in_order() {
        let dir = std::env::temp_dir().join(format!("meridian-access-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let metrics = crate::metrics::Metrics::new();
        let (log, writer) = AccessLog::start(
            &AccessLogTarget::File(path.clone()),
            metrics.access_log_dropped.clone(),
        )
        .unwrap();
        for i in 0..5000 {
            log.write(&serde_json::json!({ "n": i }));
        }
        log.flush(std::time::Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5000);
        assert_eq!(lines[4999], "{\"n\":4999}");
        drop(log);
        writer.unwrap().join();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
