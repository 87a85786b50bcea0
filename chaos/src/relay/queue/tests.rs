//! The timer heap's order and bounds.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn releases_by_instant_then_arrival() {
    let now = Instant::now();
    let mut q = DelayQueue::new(usize::MAX);
    q.push(now + 30 * MS, 1, "c").unwrap();
    q.push(now + 10 * MS, 1, "a1").unwrap();
    q.push(now + 20 * MS, 1, "b").unwrap();
    q.push(now + 10 * MS, 1, "a2").unwrap();
    assert_eq!(q.next_at(), Some(now + 10 * MS));

    assert_eq!(q.pop_due(now), None, "nothing is due yet");
    let mut out = Vec::new();
    while let Some(item) = q.pop_due(now + 30 * MS) {
        out.push(item);
    }
    assert_eq!(out, ["a1", "a2", "b", "c"]);
    assert_eq!((q.len(), q.bytes(), q.next_at()), (0, 0, None));
}

#[test]
fn pops_only_what_is_due() {
    let now = Instant::now();
    let mut q = DelayQueue::new(usize::MAX);
    q.push(now, 1, 1).unwrap();
    q.push(now + 50 * MS, 1, 2).unwrap();
    assert_eq!(q.pop_due(now + 10 * MS), Some(1));
    assert_eq!(q.pop_due(now + 10 * MS), None);
    assert_eq!(q.next_at(), Some(now + 50 * MS));
}

#[test]
fn bounded_in_bytes_with_overhead() {
    let now = Instant::now();
    let mut q = DelayQueue::new(3 * OVERHEAD + 100);
    q.push(now, 100, 'a').unwrap();
    q.push(now, 0, 'b').unwrap();
    q.push(now, 0, 'c').unwrap();
    assert_eq!(q.push(now, 0, 'd'), Err('d'), "empty items still cost");
    assert_eq!(q.bytes(), 3 * OVERHEAD + 100);
    assert_eq!(q.pop_due(now), Some('a'));
    q.push(now, 100, 'e').unwrap();
    assert_eq!(
        q.push(now, usize::MAX, 'f'),
        Err('f'),
        "no overflow on huge items"
    );
    assert_eq!(q.len(), 3);
}
