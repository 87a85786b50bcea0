//! The JSON access log: one line per finished request, written by a
//! dedicated thread so the request path never blocks on I/O.
//!
//! Lines travel through a bounded channel. When the writer falls behind and
//! the channel is full, the line is dropped and counted in
//! `meridian_access_log_dropped_total` rather than slowing requests down.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use metrics::Counter;

use crate::config::AccessLogTarget;

/// Lines buffered between the request path and the writer thread.
const CAPACITY: usize = 64 * 1024;

/// The sending side of the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<Sender<Vec<u8>>>,
    dropped: Counter,
    progress: Arc<Progress>,
}

/// Lines queued and lines written, so [`AccessLog::flush`] can wait.
#[derive(Default)]
struct Progress {
    queued: AtomicU64,
    written: AtomicU64,
}

/// The writer thread; it ends when every [`AccessLog`] clone is dropped.
pub struct Writer(JoinHandle<()>);

impl AccessLog {
    /// Opens `target` and starts the writer thread.
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> io::Result<(Self, Option<Writer>)> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                let log = Self {
                    tx: None,
                    dropped,
                    progress: Arc::default(),
                };
                return Ok((log, None));
            }
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
        let progress = Arc::new(Progress::default());
        let written = progress.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink, &written))?;
        let log = Self {
            tx: Some(tx),
            dropped,
            progress,
        };
        Ok((log, Some(Writer(thread))))
    }

    /// Whether lines are written at all (skip formatting when not).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: Vec<u8>) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) => {
                    self.progress.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.increment(1)
                }
            }
        }
    }

    /// Waits (up to `timeout`) until every queued line is written out.
    pub async fn flush(&self, timeout: std::time::Duration) {
        let written = async {
            while self.progress.written.load(Ordering::Acquire)
                < self.progress.queued.load(Ordering::Relaxed)
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, written).await;
    }
}

impl Writer {
    /// Waits for the thread to end; every [`AccessLog`] clone must be gone.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>, progress: &Progress) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let mut batch = 1;
        let mut result = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        while let (Ok(()), Ok(line)) = (&result, rx.try_recv()) {
            batch += 1;
            result = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        }
        if let Err(error) = result.and_then(|()| out.flush()) {
            tracing::warn!(%error, "access log write failed");
        }
        progress.written.fetch_add(batch, Ordering::Release);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_in_order() {
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
        for i in 0..1000 {
            log.write(format!("{{\"n\":{i}}}").into_bytes());
        }
        drop(log);
        writer.unwrap().join();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "{\"n\":999}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
