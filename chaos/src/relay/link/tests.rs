//! Decisions of one direction, without sockets or sleeps.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn shaper(seed: u64, params: LinkParams) -> Shaper {
    let mut shaper = Shaper::new(seed);
    shaper.set(params);
    shaper
}

/// Runs `n` datagrams of `len` bytes, all arriving at `now`.
fn run(shaper: &mut Shaper, n: usize, len: usize, now: Instant) -> Vec<Verdict> {
    (0..n).map(|_| shaper.datagram(len, now, false)).collect()
}

fn dropped(verdicts: &[Verdict]) -> Vec<bool> {
    verdicts.iter().map(|v| *v == Verdict::Drop).collect()
}

fn lossy() -> LinkParams {
    LinkParams {
        delay: 20 * MS,
        jitter: 10 * MS,
        loss: 0.3,
        duplicate: 0.2,
        burst: Some(GilbertElliott::bursts(0.05, 0.3)),
        ..Default::default()
    }
}

#[test]
fn the_default_delivers_everything_at_once() {
    let now = Instant::now();
    let verdicts = run(&mut shaper(1, LinkParams::default()), 100, 1200, now);
    for v in verdicts {
        assert_eq!(
            v,
            Verdict::Deliver {
                at: now,
                copy: None
            }
        );
    }
}

#[test]
fn same_seed_same_decisions() {
    let now = Instant::now();
    let a = run(&mut shaper(42, lossy()), 2000, 100, now);
    let b = run(&mut shaper(42, lossy()), 2000, 100, now);
    assert_eq!(a, b);
    let c = run(&mut shaper(43, lossy()), 2000, 100, now);
    assert_ne!(a, c);
}

#[test]
fn changing_one_knob_keeps_the_other_decisions() {
    // Every datagram draws the same numbers whatever the parameters, so the
    // loss pattern does not shift when duplication or jitter change.
    let now = Instant::now();
    let base = LinkParams {
        loss: 0.5,
        ..Default::default()
    };
    let more = LinkParams {
        duplicate: 0.9,
        jitter: 30 * MS,
        delay: 40 * MS,
        ..base.clone()
    };
    let a = run(&mut shaper(7, base), 500, 100, now);
    let b = run(&mut shaper(7, more), 500, 100, now);
    assert_eq!(dropped(&a), dropped(&b));
}

#[test]
fn loss_extremes() {
    let now = Instant::now();
    let none = |loss| {
        let params = LinkParams {
            loss,
            ..Default::default()
        };
        run(&mut shaper(3, params), 1000, 10, now)
            .iter()
            .filter(|v| **v == Verdict::Drop)
            .count()
    };
    assert_eq!(none(0.0), 0);
    assert_eq!(none(1.0), 1000);
    let half = none(0.5);
    assert!((350..650).contains(&half), "{half} of 1000 lost at p=0.5");
}

#[test]
fn gilbert_elliott_loses_in_bursts() {
    let now = Instant::now();
    let params = LinkParams {
        burst: Some(GilbertElliott::bursts(0.02, 0.25)),
        ..Default::default()
    };
    let lost = dropped(&run(&mut shaper(11, params), 20_000, 10, now));
    let total = lost.iter().filter(|l| **l).count();
    let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
    // Stationary loss is 0.02 / (0.02 + 0.25) ≈ 7 %, in bursts of mean 4.
    assert!((800..2200).contains(&total), "{total} lost");
    let mean = total as f64 / bursts as f64;
    assert!(mean > 2.5, "mean burst {mean}");
}

#[test]
fn cut_and_blackhole_drop_and_still_draw() {
    let now = Instant::now();
    let mut cut = shaper(5, LinkParams::default());
    assert_eq!(cut.datagram(10, now, true), Verdict::Drop);
    let mut hole = shaper(
        5,
        LinkParams {
            blackhole: true,
            ..Default::default()
        },
    );
    assert_eq!(hole.datagram(10, now, false), Verdict::Drop);
    // Both consumed one datagram's draws, so they stay in step with a link
    // that saw the same datagram.
    let mut open = shaper(5, LinkParams::default());
    let _ = open.datagram(10, now, false);
    assert_eq!(cut.rng.u64(..), open.rng.u64(..));
    assert_eq!(hole.rng.u64(..), shaper_after(5, 1).rng.u64(..));
}

fn shaper_after(seed: u64, datagrams: usize) -> Shaper {
    let mut s = shaper(seed, LinkParams::default());
    run(&mut s, datagrams, 1, Instant::now());
    s
}

#[test]
fn uniform_jitter_stays_within_its_bounds_and_reorders() {
    let now = Instant::now();
    let params = LinkParams {
        delay: 50 * MS,
        jitter: 20 * MS,
        ..Default::default()
    };
    let ats: Vec<Instant> = run(&mut shaper(9, params), 500, 10, now)
        .into_iter()
        .map(|v| match v {
            Verdict::Deliver { at, copy: None } => at,
            other => panic!("{other:?}"),
        })
        .collect();
    for at in &ats {
        let d = *at - now;
        assert!(d >= 30 * MS && d <= 70 * MS, "{d:?}");
    }
    assert!(ats.windows(2).any(|w| w[1] < w[0]), "jitter reorders");
}

#[test]
fn normal_jitter_never_goes_negative() {
    let now = Instant::now();
    let params = LinkParams {
        delay: MS,
        jitter: 50 * MS,
        jitter_dist: Jitter::Normal,
        ..Default::default()
    };
    for v in run(&mut shaper(9, params), 2000, 10, now) {
        let Verdict::Deliver { at, .. } = v else {
            panic!("{v:?}")
        };
        assert!(at >= now && at - now <= MAX_DELAY);
    }
}

#[test]
fn duplicates_get_their_own_jitter() {
    let now = Instant::now();
    let params = LinkParams {
        delay: 10 * MS,
        jitter: 5 * MS,
        duplicate: 1.0,
        ..Default::default()
    };
    let verdicts = run(&mut shaper(2, params), 100, 10, now);
    let mut differ = 0;
    for v in verdicts {
        let Verdict::Deliver {
            at,
            copy: Some(copy),
        } = v
        else {
            panic!("{v:?}")
        };
        differ += usize::from(at != copy);
    }
    assert!(differ > 90);
}

#[test]
fn token_bucket_paces_then_drops_past_the_queue() {
    let now = Instant::now();
    let params = LinkParams {
        rate: Some(Bandwidth {
            bytes_per_sec: 1000,
            burst: 1000,
            queue: 2000,
        }),
        ..Default::default()
    };
    let mut s = shaper(1, params);
    let ats: Vec<Verdict> = run(&mut s, 4, 1000, now);
    let secs = Duration::from_secs;
    assert_eq!(
        ats[0],
        Verdict::Deliver {
            at: now,
            copy: None
        }
    );
    assert_eq!(
        ats[1],
        Verdict::Deliver {
            at: now + secs(1),
            copy: None
        }
    );
    assert_eq!(
        ats[2],
        Verdict::Deliver {
            at: now + secs(2),
            copy: None
        }
    );
    assert_eq!(
        ats[3],
        Verdict::Full,
        "a third queued kilobyte exceeds the queue"
    );

    // Half a second later, half a kilobyte has drained: 500 bytes fit again.
    let later = now + Duration::from_millis(500);
    assert_eq!(
        s.datagram(500, later, false),
        Verdict::Deliver {
            at: now + Duration::from_millis(2500),
            copy: None
        }
    );
    assert_eq!(s.datagram(1, later, false), Verdict::Full);
}

#[test]
fn tcp_chunks_are_paced_never_dropped_by_the_bucket() {
    let now = Instant::now();
    let params = LinkParams {
        delay: 10 * MS,
        rate: Some(Bandwidth {
            bytes_per_sec: 1000,
            burst: 0,
            queue: 0,
        }),
        loss: 1.0,
        duplicate: 1.0,
        ..Default::default()
    };
    let mut s = shaper(1, params);
    for i in 1..=5u32 {
        let slot = s.chunk(100, now, false).expect("never dropped");
        assert_close(slot.sent, now + 100 * MS * i);
        assert_close(slot.release, slot.sent + 10 * MS);
    }
    assert_eq!(s.chunk(100, now, true), None, "discard");
}

fn assert_close(a: Instant, b: Instant) {
    let gap = if a > b { a - b } else { b - a };
    assert!(gap < Duration::from_micros(1), "{a:?} vs {b:?}");
}

#[test]
fn chunk_size_follows_the_rate() {
    let link = Link::new(0);
    assert_eq!(link.chunk_size(), MAX_CHUNK);
    link.set(LinkParams {
        rate: Some(Bandwidth::new(100_000)),
        ..Default::default()
    });
    assert_eq!(link.chunk_size(), 1000);
    link.set(LinkParams {
        rate: Some(Bandwidth::new(1)),
        ..Default::default()
    });
    assert_eq!(link.chunk_size(), MIN_CHUNK);
}

#[test]
fn odd_parameters_never_panic() {
    let now = Instant::now();
    let odd = [
        LinkParams {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            jitter_dist: Jitter::Normal,
            loss: f64::NAN,
            duplicate: f64::INFINITY,
            burst: Some(GilbertElliott {
                enter_bad: f64::NAN,
                leave_bad: -3.0,
                loss_good: f64::NEG_INFINITY,
                loss_bad: 2.0,
            }),
            rate: Some(Bandwidth {
                bytes_per_sec: 0,
                burst: u64::MAX,
                queue: u64::MAX,
            }),
            blackhole: false,
        },
        LinkParams {
            rate: Some(Bandwidth {
                bytes_per_sec: u64::MAX,
                burst: 0,
                queue: 0,
            }),
            jitter: Duration::from_nanos(1),
            ..Default::default()
        },
    ];
    for params in odd {
        let link = Link::new(1);
        link.set(params);
        for len in [0, 1, 65_535, usize::MAX] {
            let _ = link.datagram(len, now, false);
            let _ = link.chunk(len, now, false);
        }
        let _ = link.chunk_size();
        let c = link.counters();
        assert!(c.dropped <= 4);
    }
}

#[test]
fn counters_count() {
    let now = Instant::now();
    let link = Link::new(1);
    link.set(LinkParams {
        duplicate: 1.0,
        ..Default::default()
    });
    let _ = link.datagram(10, now, false);
    let _ = link.datagram(10, now, true);
    link.count_forwarded(10);
    link.count_queue_full();
    assert_eq!(
        link.counters(),
        Counters {
            forwarded: 1,
            bytes: 10,
            dropped: 2,
            duplicated: 1,
            queue_full: 1,
        }
    );
}
