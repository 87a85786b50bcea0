use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;

use super::clock::{Clock, Nanos, SECOND};
use super::fixed_window::{FixedWindow, Window, date_nanos};
use super::leaky_bucket::{Admission, LeakyBucket, Runtime};
use super::sliding_counter::SlidingCounter;
use super::sliding_log::SlidingLog;
use super::token_bucket::TokenBucket;
use super::{Algorithm, Counting, Store};

const MS: Nanos = 1_000_000;

/// A calendar moment to start from: 2026-03-02T00:00:00Z, a Monday.
fn t0() -> Nanos {
    date_nanos(2026, 3, 2)
}

/// Runs `algorithm` on one key at each `(offset, expected)` and checks the
/// admit/reject sequence.
#[track_caller]
fn check<A: Counting>(algorithm: A, start: Nanos, steps: &[(Nanos, bool)]) {
    let mut state = algorithm.fresh();
    let got: Vec<(Nanos, bool)> = steps
        .iter()
        .map(|&(at, _)| (at, algorithm.acquire(&mut state, start + at).allowed))
        .collect();
    assert_eq!(got, steps, "offsets in ns from the start");
}

#[test]
fn token_bucket_bursts_then_keeps_the_rate() {
    // 1/s, burst 3: three at once, then one per second.
    let bucket = TokenBucket::new(SECOND, 3);
    check(
        bucket,
        t0(),
        &[
            (0, true),
            (0, true),
            (0, true),
            (0, false),
            (999 * MS, false),
            (SECOND, true),
            (SECOND, false),
            (2 * SECOND, true),
            (10 * SECOND, true),
            (10 * SECOND, true),
            (10 * SECOND, true),
            (10 * SECOND, false),
        ],
    );
    let mut tat = bucket.fresh();
    let first = bucket.acquire(&mut tat, t0());
    assert_eq!((first.remaining, first.reset), (2, SECOND));
    bucket.acquire(&mut tat, t0());
    bucket.acquire(&mut tat, t0());
    let refused = bucket.acquire(&mut tat, t0() + 250 * MS);
    assert_eq!(
        (refused.allowed, refused.retry_after, refused.reset),
        (false, 750 * MS, 2750 * MS)
    );
}

#[test]
fn sliding_log_is_exact() {
    // 3 per 10s: the 4th waits until the 1st is 10s old.
    let log = SlidingLog::new(3, 10 * SECOND);
    check(
        log,
        t0(),
        &[
            (0, true),
            (SECOND, true),
            (2 * SECOND, true),
            (3 * SECOND, false),
            (9_999 * MS, false),
            (10 * SECOND, true),
            (10 * SECOND, false),
            (11 * SECOND, true),
            (12 * SECOND, true),
            (12 * SECOND, false),
        ],
    );
    let mut state = log.fresh();
    for _ in 0..3 {
        log.acquire(&mut state, t0());
    }
    let refused = log.acquire(&mut state, t0() + 4 * SECOND);
    assert_eq!(refused.retry_after, 6 * SECOND);
    assert!(state.len() <= 3, "memory is bounded by the limit");
}

#[test]
fn fixed_window_allows_twice_the_limit_across_a_boundary() {
    // 10 per minute: 10 in the last 100ms of a minute and 10 in the first
    // 100ms of the next, 20 within 200ms (the seed's boundary burst).
    let window = FixedWindow::new(10, Window::Fixed(60 * SECOND));
    let mut state = window.fresh();
    let before = t0() + 59_900 * MS;
    let after = t0() + 60 * SECOND;
    let admitted = (0..11)
        .filter(|_| window.acquire(&mut state, before).allowed)
        .count()
        + (0..11)
            .filter(|_| window.acquire(&mut state, after).allowed)
            .count();
    assert_eq!(admitted, 20);
}

#[test]
fn sliding_window_counter_refuses_the_boundary_burst() {
    let counter = SlidingCounter::new(10, 60 * SECOND);
    let mut state = counter.fresh();
    let before = t0() + 59_900 * MS;
    let at_boundary = t0() + 60 * SECOND;
    let burst: Vec<bool> = (0..11)
        .map(|_| counter.acquire(&mut state, before).allowed)
        .collect();
    assert_eq!(burst.iter().filter(|a| **a).count(), 10);
    // Right after the boundary the previous window still weighs 10.
    let refused = counter.acquire(&mut state, at_boundary);
    assert!(!refused.allowed);
    // One fits when the previous window's weight is 9: 6s in.
    assert_eq!(refused.retry_after, 6 * SECOND + 1);
    let steps = [
        (5_999 * MS, false),
        (6 * SECOND, true),
        (6 * SECOND, false),
        (12 * SECOND, true),
        // Half the previous window (5) and two: three more fit.
        (30 * SECOND, true),
        (30 * SECOND, true),
        (30 * SECOND, true),
        (30 * SECOND, false),
    ];
    let got: Vec<_> = steps
        .iter()
        .map(|&(at, _)| (at, counter.acquire(&mut state, at_boundary + at).allowed))
        .collect();
    assert_eq!(got, steps);
}

#[test]
fn fixed_windows_follow_the_calendar() {
    // 2 per month: the last minute of January, then February.
    let month = FixedWindow::new(2, Window::Month);
    let end_of_january = date_nanos(2026, 2, 1) - 60 * SECOND;
    let mut state = month.fresh();
    let first = month.acquire(&mut state, end_of_january);
    assert_eq!((first.allowed, first.reset), (true, 60 * SECOND));
    assert!(month.acquire(&mut state, end_of_january).allowed);
    let refused = month.acquire(&mut state, end_of_january + SECOND);
    assert_eq!((refused.allowed, refused.retry_after), (false, 59 * SECOND));
    assert!(month.acquire(&mut state, date_nanos(2026, 2, 1)).allowed);
    // February 2028 has 29 days; the window ends on March 1st.
    let leap = month.acquire(&mut month.fresh(), date_nanos(2028, 2, 28));
    assert_eq!(leap.reset, 2 * 86_400 * SECOND);
    // December rolls over into the next year.
    let december = month.acquire(&mut month.fresh(), date_nanos(2026, 12, 31));
    assert_eq!(december.reset, 86_400 * SECOND);

    // `1d` windows start at 00:00 UTC; week windows on Mondays.
    let day = Window::Fixed(86_400 * SECOND);
    assert_eq!(day.locate(t0() + 5 * SECOND).1, t0() + 86_400 * SECOND);
    let week = Window::Fixed(7 * 86_400 * SECOND);
    assert_eq!(
        week.locate(date_nanos(2026, 3, 4)).1,
        date_nanos(2026, 3, 9),
        "a week window started on Monday 2026-03-02 ends the next Monday"
    );
}

#[test]
fn refunds_take_back_exactly_one_charge() {
    let bucket = TokenBucket::new(SECOND, 2);
    let mut tat = bucket.fresh();
    let d = bucket.acquire(&mut tat, t0());
    bucket.refund(&mut tat, d.charged);
    assert_eq!(bucket.acquire(&mut tat, t0()).remaining, 1);

    let log = SlidingLog::new(2, SECOND);
    let mut entries = log.fresh();
    let d = log.acquire(&mut entries, t0());
    log.refund(&mut entries, d.charged);
    assert!(entries.is_empty());

    let counter = SlidingCounter::new(2, SECOND);
    let mut counts = counter.fresh();
    let d = counter.acquire(&mut counts, t0());
    counter.refund(&mut counts, d.charged);
    assert_eq!(counter.acquire(&mut counts, t0()).remaining, 1);

    let window = FixedWindow::new(2, Window::Fixed(SECOND));
    let mut count = window.fresh();
    let d = window.acquire(&mut count, t0());
    window.refund(&mut count, d.charged);
    assert_eq!(window.acquire(&mut count, t0()).remaining, 1);
    // A charge from a window that has passed is not taken from the new one.
    window.refund(&mut count, t0() - SECOND);
    assert_eq!(window.acquire(&mut count, t0()).remaining, 0);
}

// === the store ===

#[test]
fn a_flood_of_keys_stays_under_the_cap_and_is_counted() {
    let cap = 6_400;
    let store = Store::new(TokenBucket::new(SECOND, 10), cap);
    let now = t0();
    for i in 0u32..100_000 {
        store.acquire(&i.to_be_bytes(), now);
        assert!(store.stats().keys.load(Ordering::Relaxed) <= cap as u64);
    }
    let stats = store.stats();
    let evicted = stats.evicted_capacity.load(Ordering::Relaxed);
    assert_eq!(
        stats.keys.load(Ordering::Relaxed) + evicted,
        100_000,
        "every key dropped at the cap is counted"
    );
    // Recently used keys are still known: the last one has 9 tokens left.
    let last = store.acquire(&99_999u32.to_be_bytes(), now);
    assert_eq!(last.remaining, 8);
}

#[test]
fn a_key_in_steady_use_survives_a_flood() {
    let store = Store::new(TokenBucket::new(SECOND, 5), 6_400);
    let now = t0();
    for _ in 0..5 {
        store.acquire(b"steady", now);
    }
    for i in 0u32..50_000 {
        store.acquire(&i.to_be_bytes(), now);
        if i % 50 == 0 {
            let d = store.acquire(b"steady", now);
            assert!(!d.allowed, "the steady key kept its empty bucket at {i}");
        }
    }
}

#[test]
fn idle_keys_are_swept() {
    let store = Store::new(SlidingCounter::new(5, SECOND), 1_000);
    let now = t0();
    for i in 0u32..100 {
        store.acquire(&i.to_be_bytes(), now);
    }
    assert_eq!(store.sweep(now), 0, "nothing is idle yet");
    assert_eq!(store.sweep(now + 2 * SECOND), 100);
    assert_eq!(store.stats().keys.load(Ordering::Relaxed), 0);
    assert_eq!(store.stats().evicted_capacity.load(Ordering::Relaxed), 0);
}

// === the leaky bucket, on paused time ===

fn runtime() -> Runtime {
    Runtime {
        clock: Clock::starting_at(t0()),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

/// The turn of an admission that has to wait.
#[track_caller]
fn turn(admission: Admission) -> tokio::sync::oneshot::Receiver<()> {
    match admission {
        Admission::Wait { turn, .. } => turn,
        _ => panic!("expected to wait"),
    }
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_releases_at_the_rate_and_refuses_a_full_queue() {
    let runtime = runtime();
    let bucket = LeakyBucket {
        interval: 100 * MS,
        depth: 3,
        max_wait: SECOND,
    };
    let queue = Arc::default();
    let now = runtime.clock.now();
    assert!(matches!(
        bucket.admit(&queue, now, &runtime),
        Admission::Now
    ));
    let mut turns = Vec::new();
    for expected_wait in [100 * MS, 200 * MS, 300 * MS] {
        match bucket.admit(&queue, now, &runtime) {
            Admission::Wait { turn, at_most } => {
                assert_eq!(at_most, expected_wait);
                turns.push(turn);
            }
            _ => panic!("expected to wait"),
        }
    }
    match bucket.admit(&queue, now, &runtime) {
        Admission::Full {
            retry_after,
            waiting,
        } => assert_eq!((retry_after, waiting), (100 * MS, 3)),
        _ => panic!("expected a full queue"),
    }
    let start = tokio::time::Instant::now();
    let mut released = Vec::new();
    for turn in turns {
        turn.await.expect("released");
        released.push(start.elapsed());
    }
    assert_eq!(
        released,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(300)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_skips_waiters_whose_client_left() {
    let runtime = runtime();
    let bucket = LeakyBucket {
        interval: 100 * MS,
        depth: 2,
        max_wait: SECOND,
    };
    let queue = Arc::default();
    let now = runtime.clock.now();
    assert!(matches!(
        bucket.admit(&queue, now, &runtime),
        Admission::Now
    ));
    let gone = turn(bucket.admit(&queue, now, &runtime));
    let second = turn(bucket.admit(&queue, now, &runtime));
    // The queue is full; once the first waiter's client goes away there is
    // room again, and the second waiter takes the first slot.
    assert!(matches!(
        bucket.admit(&queue, now, &runtime),
        Admission::Full { .. }
    ));
    drop(gone);
    let third = turn(bucket.admit(&queue, now, &runtime));
    let start = tokio::time::Instant::now();
    second.await.expect("released");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    third.await.expect("released");
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_refuses_waits_beyond_max_wait() {
    let runtime = runtime();
    let bucket = LeakyBucket {
        interval: 100 * MS,
        depth: 10,
        max_wait: 250 * MS,
    };
    let queue = Arc::default();
    let now = runtime.clock.now();
    // The admissions are kept: a dropped one is a client that left.
    let admissions: Vec<Admission> = (0..5)
        .map(|_| bucket.admit(&queue, now, &runtime))
        .collect();
    let outcomes: Vec<&str> = admissions
        .iter()
        .map(|admission| match admission {
            Admission::Now => "now",
            Admission::Wait { .. } => "wait",
            Admission::Full { .. } => "full",
        })
        .collect();
    assert_eq!(outcomes, ["now", "wait", "wait", "full", "full"]);
}

// === bounds over any window ===

/// Sorted arrival offsets within `span` nanoseconds.
fn arrivals(count: usize, span: Nanos) -> impl Strategy<Value = Vec<Nanos>> {
    proptest::collection::vec(0..span, 1..count).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

/// Runs `algorithm` over `times` and returns the admitted times.
fn admitted<A: Counting>(algorithm: &A, start: Nanos, times: &[Nanos]) -> Vec<Nanos> {
    let mut state = algorithm.fresh();
    times
        .iter()
        .filter(|&&t| algorithm.acquire(&mut state, start + t).allowed)
        .copied()
        .collect()
}

/// The most admitted times in any closed interval `[t, t + length]`.
fn most_within(times: &[Nanos], length: Nanos) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, &t) in times.iter().enumerate() {
        while times[first] + length < t {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn token_bucket_admits_at_most_burst_plus_rate(
        times in arrivals(400, 20 * SECOND),
        burst in 1u64..20,
        per_ms in 10u64..2_000,
        length_ms in 0u64..10_000,
    ) {
        let interval = per_ms * MS;
        let got = admitted(&TokenBucket::new(interval, burst), t0(), &times);
        let length = length_ms * MS;
        prop_assert!(most_within(&got, length) as u64 <= burst + length / interval);
    }

    #[test]
    fn sliding_log_admits_at_most_limit_in_any_window(
        times in arrivals(400, 20 * SECOND),
        limit in 1u64..30,
        window_ms in 10u64..5_000,
    ) {
        let window = window_ms * MS;
        let got = admitted(&SlidingLog::new(limit, window), t0(), &times);
        // Any half-open window (t - window, t]: a closed one one ns shorter.
        prop_assert!(most_within(&got, window - 1) as u64 <= limit);
    }

    #[test]
    fn sliding_counter_admits_at_most_limit_plus_the_overlap(
        times in arrivals(400, 20 * SECOND),
        limit in 1u64..30,
        window_ms in 10u64..5_000,
        fraction in 0u64..=100,
    ) {
        let window = window_ms * MS;
        let got = admitted(&SlidingCounter::new(limit, window), t0(), &times);
        let length = window * fraction / 100;
        prop_assert!(most_within(&got, length) as u64 <= limit + limit * length / window);
    }

    #[test]
    fn fixed_window_admits_at_most_limit_per_window_and_twice_across(
        times in arrivals(400, 20 * SECOND),
        limit in 1u64..30,
        window_ms in 10u64..5_000,
    ) {
        let window = window_ms * MS;
        let got = admitted(&FixedWindow::new(limit, Window::Fixed(window)), t0(), &times);
        let start = t0();
        let mut per_window = std::collections::HashMap::new();
        for t in &got {
            *per_window.entry((start + t) / window).or_insert(0u64) += 1;
        }
        prop_assert!(per_window.values().all(|&n| n <= limit));
        prop_assert!(most_within(&got, window - 1) as u64 <= 2 * limit);
    }
}
