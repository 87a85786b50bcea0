//! Global limits between simulated nodes: stores that exchange their
//! collected counters by hand, on explicit time.

use std::sync::Arc;

use super::*;
use crate::ratelimit::clock::SECOND;
use crate::ratelimit::fixed_window::Window;
use crate::ratelimit::{Spec, Store};

const MS: Nanos = 1_000_000;
/// Some time well after the epoch (a Monday, 2026-11-30T00:00:00Z).
const T0: Nanos = 1_796_000_000 * SECOND;

/// A node: a global limit's store and its view of the peers.
struct Node {
    peers: Arc<Peers>,
    store: Store<Global>,
}

impl Node {
    fn new(spec: Spec, nodes: u64) -> Self {
        let peers = Arc::new(Peers::default());
        peers.set_view(nodes, 0);
        let global = Global::new(spec, peers.clone()).expect("a global algorithm");
        Self {
            peers,
            store: Store::new(global, 1 << 12),
        }
    }

    fn admit(&self, key: &[u8], now: Nanos) -> bool {
        self.store.acquire(key, now).allowed
    }

    fn collect(&self, full: bool, now: Nanos) -> Vec<Entry> {
        let mut entries = Vec::new();
        self.store.scan(|key, counts| {
            entries.extend(self.store.algorithm().collect(key, counts, full, now));
        });
        entries
    }

    fn receive(&self, slot: u8, entries: &[Entry], now: Nanos) {
        for entry in entries {
            self.store.with(&entry.key, now, |global, counts| {
                global.merge(counts, slot, entry, now)
            });
        }
    }
}

fn fixed(limit: u64, window: Nanos) -> Spec {
    Spec::FixedWindow(FixedWindow::new(limit, Window::Fixed(window)))
}

/// Three nodes syncing every `sync`; requests arrive round robin every
/// `gap`. Returns how many were admitted in `[T0, T0 + span)`.
fn three_nodes(
    spec: Spec,
    gap: Nanos,
    sync: Nanos,
    span: Nanos,
    lose: impl Fn(usize) -> bool,
) -> u64 {
    let nodes: Vec<Node> = (0..3).map(|_| Node::new(spec, 3)).collect();
    let mut admitted = 0;
    let mut next_sync = T0 + sync;
    let mut round = 0;
    let mut now = T0;
    let mut i = 0;
    while now < T0 + span {
        if now >= next_sync {
            for (from, node) in nodes.iter().enumerate() {
                let entries = node.collect(round % 20 == 0, now);
                for (to, other) in nodes.iter().enumerate() {
                    if to != from && !lose(round * 9 + from * 3 + to) {
                        // Slot of `from` as seen by `to`.
                        other.receive(from as u8, &entries, now);
                    }
                }
            }
            round += 1;
            next_sync += sync;
        }
        admitted += u64::from(nodes[i % 3].admit(b"k", now));
        i += 1;
        now += gap;
    }
    admitted
}

#[test]
fn a_fixed_window_over_three_nodes_overshoots_by_at_most_rate_times_delay() {
    // 100 per 10 s; 3 000 req/s over all nodes; sync every 10 ms.
    let gap = SECOND / 3_000;
    let sync = 10 * MS;
    let admitted = three_nodes(fixed(100, 10 * SECOND), gap, sync, 5 * SECOND, |_| false);
    let bound = 3_000.0 * (sync as f64 / SECOND as f64);
    assert!(admitted >= 100, "under-admitted: {admitted}");
    assert!(
        (admitted as f64) <= 100.0 + bound,
        "admitted {admitted}, bound {}",
        100.0 + bound
    );
}

#[test]
fn without_sync_each_node_admits_the_whole_limit() {
    // The control: no batches at all, so the limit triples.
    let admitted = three_nodes(
        fixed(100, 10 * SECOND),
        SECOND / 3_000,
        10 * MS,
        5 * SECOND,
        |_| true,
    );
    assert_eq!(admitted, 300);
}

#[test]
fn lost_batches_delay_but_do_not_break_the_count() {
    // Every batch lost except every third: the later ones carry the
    // cumulative counts, so nothing is counted wrong, only later.
    let gap = SECOND / 3_000;
    let admitted = three_nodes(fixed(100, 10 * SECOND), gap, 10 * MS, 5 * SECOND, |n| {
        n % 3 != 0
    });
    assert!((100..=100 + 3 * 30 * 3).contains(&admitted), "{admitted}");
}

#[test]
fn a_sliding_window_counter_sums_every_node() {
    let spec = Spec::SlidingCounter(SlidingCounter::new(60, SECOND));
    let admitted = three_nodes(spec, SECOND / 600, 5 * MS, SECOND, |_| false);
    assert!((60..=60 + 3 * 3).contains(&admitted), "{admitted}");
}

#[test]
fn a_token_bucket_takes_peers_admissions_out_of_the_bucket() {
    // 10/s with a burst of 10: in 2 s about 10 + 20 over all nodes.
    let spec = Spec::TokenBucket(TokenBucket::new(SECOND / 10, 10));
    let admitted = three_nodes(spec, SECOND / 300, 10 * MS, 2 * SECOND, |_| false);
    assert!((27..=30 + 3).contains(&admitted), "{admitted}");
}

#[test]
fn merge_is_a_max_so_repeats_and_reordering_change_nothing() {
    let node = Node::new(fixed(10, 10 * SECOND), 2);
    let w = T0 / (10 * SECOND);
    let entry = |count| Entry {
        key: b"k".to_vec(),
        window: w,
        counts: [0, count],
    };
    node.receive(0, &[entry(4), entry(2), entry(4), entry(3)], T0);
    let admitted = (0..10).filter(|_| node.admit(b"k", T0)).count();
    assert_eq!(admitted, 6);
}

#[test]
fn a_counter_from_the_previous_window_counts_for_the_sliding_weight() {
    let node = Node::new(Spec::SlidingCounter(SlidingCounter::new(10, SECOND)), 2);
    let w = T0 / SECOND;
    // The peer admitted 10 in the previous window; half of it still weighs.
    node.receive(
        0,
        &[Entry {
            key: b"k".to_vec(),
            window: w - 1,
            counts: [0, 10],
        }],
        T0 + SECOND / 2,
    );
    let admitted = (0..10)
        .filter(|_| node.admit(b"k", T0 + SECOND / 2))
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn a_partitioned_side_keeps_to_its_share() {
    // Three nodes, limit 90; node 0 cannot hear the two others: it keeps
    // to 90 − 2 × 30 = 30, and no more when it knew less before.
    let node = Node::new(fixed(90, 10 * SECOND), 3);
    node.peers.slot(7, T0);
    node.peers.slot(8, T0);
    node.peers.set_view(3, 0b11);
    let admitted = (0..100).filter(|_| node.admit(b"k", T0)).count();
    assert_eq!(admitted, 30);
    assert_eq!(
        node.store.algorithm().partitioned.load(Ordering::Relaxed),
        100
    );
}

#[test]
fn an_unreachable_peer_is_charged_what_it_was_known_to_use_when_more() {
    let node = Node::new(fixed(90, 10 * SECOND), 3);
    let w = T0 / (10 * SECOND);
    node.receive(
        0,
        &[Entry {
            key: b"k".to_vec(),
            window: w,
            counts: [0, 50],
        }],
        T0,
    );
    node.peers.set_view(3, 0b1);
    // 90 − max(50, 30) = 40.
    let admitted = (0..100).filter(|_| node.admit(b"k", T0)).count();
    assert_eq!(admitted, 40);
}

#[test]
fn a_partitioned_token_bucket_refills_at_its_share_of_the_rate() {
    // 30/s, burst 30, three nodes, two unreachable: a request costs three
    // intervals, so the full bucket lasts 10 and one more comes per 100 ms.
    let node = Node::new(Spec::TokenBucket(TokenBucket::new(SECOND / 30, 30)), 3);
    node.peers.set_view(3, 0b11);
    let burst = (0..100).filter(|_| node.admit(b"k", T0)).count();
    assert_eq!(burst, 10);
    let later = (0..100).filter(|_| node.admit(b"k", T0 + SECOND)).count();
    assert_eq!(later, 10);
}

#[test]
fn collect_sends_changes_once_and_everything_on_a_full_sync() {
    let node = Node::new(fixed(10, 10 * SECOND), 2);
    assert!(node.admit(b"a", T0));
    assert!(node.admit(b"b", T0));
    assert_eq!(node.collect(false, T0).len(), 2);
    assert!(node.collect(false, T0).is_empty());
    assert!(node.admit(b"a", T0));
    let changed = node.collect(false, T0);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].counts, [0, 2]);
    assert_eq!(node.collect(true, T0).len(), 2);
}

#[test]
fn a_refund_lowers_the_own_count() {
    let node = Node::new(fixed(2, 10 * SECOND), 2);
    let decision = node.store.acquire(b"k", T0);
    assert!(decision.allowed);
    node.store.refund(b"k", decision.charged);
    assert!(node.admit(b"k", T0));
    assert!(node.admit(b"k", T0));
    assert!(!node.admit(b"k", T0));
}

#[test]
fn hostile_windows_and_counts_neither_panic_nor_stick() {
    let node = Node::new(fixed(10, 10 * SECOND), 2);
    let w = T0 / (10 * SECOND);
    for window in [0, 1, w - 1, w, w + 1, w + 2, u64::MAX - 1, u64::MAX] {
        node.receive(
            1,
            &[Entry {
                key: b"k".to_vec(),
                window,
                counts: [u32::MAX, u32::MAX],
            }],
            T0,
        );
    }
    assert!(!node.admit(b"k", T0));
    // Long after, the key is idle: the far-future window was ignored.
    let later = T0 + 100 * SECOND;
    node.store.with(b"k", later, |global, counts| {
        let _ = global.collect(b"k", counts, false, later);
    });
    assert_eq!(node.store.sweep(later), 1);
}

#[test]
fn a_quota_of_a_day_is_one_quota_across_regions() {
    // A 1-day quota of 1 000 used in two regions: the second region sees
    // what the first used and admits only the rest.
    let spec = fixed(1_000, 86_400 * SECOND);
    let (a, b) = (Node::new(spec, 2), Node::new(spec, 2));
    let used = (0..700).filter(|_| a.admit(b"tenant", T0)).count();
    b.receive(0, &a.collect(false, T0), T0 + 100 * MS);
    let rest = (0..700)
        .filter(|_| b.admit(b"tenant", T0 + 3_600 * SECOND))
        .count();
    assert_eq!((used, rest), (700, 300));
}
