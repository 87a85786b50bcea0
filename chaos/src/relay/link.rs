//! One direction of a link: its parameters, its seeded decisions, its counters.
//!
//! A [`Link`] is what a datagram or a TCP chunk meets on its way from one socket
//! to the next. It owns a [`Shaper`] (parameters, RNG, token bucket and
//! Gilbert–Elliott state, behind one short-lived lock) and the atomic counters
//! that the [`LinkHandle`](super::LinkHandle) reads. It does no I/O and never
//! sleeps: it only answers "drop, or release at which instant?".
//!
//! # Replay
//!
//! Every datagram consumes exactly [`DRAWS`] numbers from the link's RNG,
//! whatever the parameters, so two runs with the same seed and the same
//! sequence of datagrams make the same loss, duplication and jitter decisions,
//! even when a test changes one knob half-way. Drops caused by a full
//! token-bucket queue depend on wall-clock timing and are not replayed.
//!
//! # Odd input
//!
//! Parameters are sanitised when set: probabilities are clamped to `0.0..=1.0`
//! (NaN counts as 0), delays and jitter to [`MAX_DELAY`], a zero rate to one
//! byte per second. Nothing here panics on any [`LinkParams`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The longest delay, jitter or queueing wait a link will apply.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Random numbers drawn per datagram: loss, Gilbert–Elliott move, Gilbert–Elliott
/// loss, duplication, then two per copy for jitter.
pub(crate) const DRAWS: usize = 8;

/// Largest TCP chunk read at once, and the chunk size without a rate cap.
pub(crate) const MAX_CHUNK: usize = 16 * 1024;

/// Smallest TCP chunk read at once under a rate cap.
const MIN_CHUNK: usize = 512;

/// The parameters of one direction of a link.
///
/// The default forwards everything at once. Build others with struct update
/// syntax: `LinkParams { delay: Duration::from_millis(50), ..Default::default() }`.
///
/// For TCP only `delay`, `jitter`, `rate` and `blackhole` apply: a byte stream
/// cannot lose or duplicate bytes in the middle, and chunks keep their order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkParams {
    /// Base one-way delay.
    pub delay: Duration,
    /// Spread around `delay`, drawn per datagram from `jitter_dist`. Datagrams
    /// with different delays overtake each other, which is how the relay
    /// reorders. TCP chunks are held back so that they stay in order.
    pub jitter: Duration,
    /// How jitter is distributed.
    pub jitter_dist: Jitter,
    /// Independent loss probability per datagram, `0.0..=1.0`.
    pub loss: f64,
    /// Optional bursty loss, applied on top of `loss`: a datagram is lost if
    /// either decides so.
    pub burst: Option<GilbertElliott>,
    /// Probability that a datagram is delivered twice, `0.0..=1.0`. The copy
    /// gets its own jitter and shares its original's slot in the token bucket.
    pub duplicate: f64,
    /// Optional bandwidth cap with a bounded queue.
    pub rate: Option<Bandwidth>,
    /// Drop every datagram (UDP) or discard every byte read (TCP).
    /// [`LinkHandle::heal`](super::LinkHandle::heal) clears it.
    pub blackhole: bool,
}

/// The distribution of [`LinkParams::jitter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `delay - jitter ..= delay + jitter`.
    #[default]
    Uniform,
    /// Normal around `delay` with standard deviation `jitter`.
    Normal,
}

/// Gilbert–Elliott burst loss: a two-state Markov chain stepped once per
/// datagram, with a loss probability per state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state.
    pub enter_bad: f64,
    /// Probability of moving from the bad back to the good state.
    pub leave_bad: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: nothing is lost in the good state, everything
    /// in the bad one. Mean burst length is `1 / leave_bad`.
    pub fn bursts(enter_bad: f64, leave_bad: f64) -> Self {
        Self {
            enter_bad,
            leave_bad,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }
}

/// A token-bucket bandwidth cap.
///
/// Up to `burst` bytes pass at once; beyond that, bytes wait in a queue that
/// drains at `bytes_per_sec`. A datagram that would push the queue past
/// `queue` bytes is dropped. TCP never drops: its reader stops reading instead,
/// which the sender sees as a slow link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    /// Drain rate in bytes (not bits) per second. Zero counts as one.
    pub bytes_per_sec: u64,
    /// Bucket depth in bytes.
    pub burst: u64,
    /// Queue cap in bytes.
    pub queue: u64,
}

impl Bandwidth {
    /// A cap of `bytes_per_sec`, with 20 ms of burst (at least 1500 bytes) and
    /// 100 ms of queue (at least 64 KiB).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            burst: (bytes_per_sec / 50).max(1500),
            queue: (bytes_per_sec / 10).max(64 * 1024),
        }
    }
}

/// Counters of one direction of a link, as read from a
/// [`LinkHandle`](super::LinkHandle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams (UDP) or chunks (TCP) written to the next socket, copies included.
    pub forwarded: u64,
    /// Payload bytes written to the next socket.
    pub bytes: u64,
    /// Datagrams or chunks dropped for any reason, `queue_full` included.
    pub dropped: u64,
    /// Datagrams that were scheduled twice.
    pub duplicated: u64,
    /// Datagrams dropped because a queue (token bucket or timer heap) was full.
    pub queue_full: u64,
}

/// What the link decided for one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Lost or blackholed; already counted.
    Drop,
    /// Over the token bucket's queue cap; already counted.
    Full,
    /// Release at `at`, and a copy at `copy` if duplicated.
    Deliver { at: Instant, copy: Option<Instant> },
}

/// When a TCP chunk may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// When the chunk has left the token bucket; the reader waits for it
    /// before reading more.
    pub(crate) sent: Instant,
    /// When the chunk may be written, before the pump's FIFO clamp.
    pub(crate) release: Instant,
}

// === impl LinkParams ===

impl LinkParams {
    /// A copy that no arithmetic in this module can panic on.
    pub(crate) fn sanitized(mut self) -> Self {
        self.delay = self.delay.min(MAX_DELAY);
        self.jitter = self.jitter.min(MAX_DELAY);
        self.loss = probability(self.loss);
        self.duplicate = probability(self.duplicate);
        if let Some(ge) = &mut self.burst {
            ge.enter_bad = probability(ge.enter_bad);
            ge.leave_bad = probability(ge.leave_bad);
            ge.loss_good = probability(ge.loss_good);
            ge.loss_bad = probability(ge.loss_bad);
        }
        if let Some(rate) = &mut self.rate {
            rate.bytes_per_sec = rate.bytes_per_sec.max(1);
        }
        self
    }
}

fn probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(s)
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY)
}

// === impl Link ===

/// One direction of a link. Shared by the tasks that carry it and the handle
/// that controls it.
#[derive(Debug)]
pub(crate) struct Link {
    shaper: Mutex<Shaper>,
    forwarded: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    queue_full: AtomicU64,
}

impl Link {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            shaper: Mutex::new(Shaper::new(seed)),
            forwarded: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
        }
    }

    fn shaper(&self) -> MutexGuard<'_, Shaper> {
        // The lock is never held across anything that can panic, but a
        // poisoned shaper is still a valid shaper.
        self.shaper.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, params: LinkParams) {
        self.shaper().set(params);
    }

    pub(crate) fn params(&self) -> LinkParams {
        self.shaper().params.clone()
    }

    pub(crate) fn clear_blackhole(&self) {
        self.shaper().params.blackhole = false;
    }

    /// Decides the fate of one datagram of `len` bytes, counting drops and
    /// duplicates.
    pub(crate) fn datagram(&self, len: usize, now: Instant, cut: bool) -> Verdict {
        let verdict = self.shaper().datagram(len, now, cut);
        match verdict {
            Verdict::Drop => self.count_dropped(),
            Verdict::Full => self.count_queue_full(),
            Verdict::Deliver { copy: Some(_), .. } => {
                self.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Deliver { copy: None, .. } => {}
        }
        verdict
    }

    /// Schedules one TCP chunk of `len` bytes, or `None` (counted as a drop)
    /// if the link discards it.
    pub(crate) fn chunk(&self, len: usize, now: Instant, discard: bool) -> Option<Slot> {
        let slot = self.shaper().chunk(len, now, discard);
        if slot.is_none() {
            self.count_dropped();
        }
        slot
    }

    /// How many bytes a TCP reader should ask for at once.
    pub(crate) fn chunk_size(&self) -> usize {
        match self.shaper().params.rate {
            None => MAX_CHUNK,
            Some(rate) => usize::try_from(rate.bytes_per_sec / 100)
                .unwrap_or(MAX_CHUNK)
                .clamp(MIN_CHUNK, MAX_CHUNK),
        }
    }

    pub(crate) fn count_forwarded(&self, len: usize) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_queue_full(&self) {
        self.queue_full.fetch_add(1, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
        }
    }
}

// === impl Shaper ===

/// The decision state of one direction: parameters, RNG, token bucket and
/// Gilbert–Elliott state.
#[derive(Debug)]
pub(crate) struct Shaper {
    params: LinkParams,
    rng: fastrand::Rng,
    bucket: Bucket,
    bad: bool,
}

impl Shaper {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            params: LinkParams::default(),
            rng: fastrand::Rng::with_seed(seed),
            bucket: Bucket::default(),
            bad: false,
        }
    }

    pub(crate) fn set(&mut self, params: LinkParams) {
        self.params = params.sanitized();
    }

    pub(crate) fn datagram(&mut self, len: usize, now: Instant, cut: bool) -> Verdict {
        let mut u = [0.0; DRAWS];
        for x in &mut u {
            *x = self.rng.f64();
        }
        let [u_loss, u_move, u_burst, u_dup, j0, j1, j2, j3] = u;

        let burst_lost = match self.params.burst {
            None => false,
            Some(ge) => {
                let flip = if self.bad { ge.leave_bad } else { ge.enter_bad };
                if u_move < flip {
                    self.bad = !self.bad;
                }
                u_burst < if self.bad { ge.loss_bad } else { ge.loss_good }
            }
        };
        if cut || self.params.blackhole || burst_lost || u_loss < self.params.loss {
            return Verdict::Drop;
        }

        let Some(sent) = self.shape(len, now, true) else {
            return Verdict::Full;
        };
        let at = sent + self.delay(j0, j1);
        let copy = (u_dup < self.params.duplicate).then(|| sent + self.delay(j2, j3));
        Verdict::Deliver { at, copy }
    }

    pub(crate) fn chunk(&mut self, len: usize, now: Instant, discard: bool) -> Option<Slot> {
        let (j0, j1) = (self.rng.f64(), self.rng.f64());
        if discard || self.params.blackhole {
            return None;
        }
        let sent = self.shape(len, now, false)?;
        Some(Slot {
            sent,
            release: sent + self.delay(j0, j1),
        })
    }

    /// When `len` bytes have left the token bucket, or `None` if the queue
    /// behind it is full (only when `droppable`).
    fn shape(&mut self, len: usize, now: Instant, droppable: bool) -> Option<Instant> {
        let Some(rate) = self.params.rate else {
            self.bucket = Bucket::default();
            return Some(now);
        };
        self.bucket.refill(&rate, now);
        let len = len as f64;
        // The backlog after taking `len` must fit in the queue.
        if droppable && self.bucket.tokens - len < -(rate.queue as f64) {
            return None;
        }
        Some(now + self.bucket.take(len, &rate))
    }

    /// `delay` plus jitter drawn from the uniforms `u1` and `u2`.
    fn delay(&self, u1: f64, u2: f64) -> Duration {
        let base = self.params.delay.as_secs_f64();
        let jitter = self.params.jitter.as_secs_f64();
        if jitter == 0.0 {
            return self.params.delay;
        }
        let offset = match self.params.jitter_dist {
            Jitter::Uniform => (2.0 * u1 - 1.0) * jitter,
            Jitter::Normal => {
                // Box–Muller; 1 - u1 is in (0, 1], so the log is finite.
                let radius = (-2.0 * (1.0 - u1).ln()).sqrt();
                radius * (std::f64::consts::TAU * u2).cos() * jitter
            }
        };
        secs(base + offset)
    }
}

// === impl Bucket ===

/// A token bucket that may go into debt; the debt is the queue behind it.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self, rate: &Bandwidth, now: Instant) {
        let burst = rate.burst as f64;
        self.tokens = match self.last {
            None => burst,
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + dt * rate.bytes_per_sec as f64).min(burst)
            }
        };
        self.last = Some(now);
    }

    /// Takes `len` bytes and returns how long until they have drained.
    fn take(&mut self, len: f64, rate: &Bandwidth) -> Duration {
        self.tokens -= len;
        secs(-self.tokens / rate.bytes_per_sec as f64)
    }
}

#[cfg(test)]
mod tests;
