use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::backend::{Backend, Mode};

#[test]
fn requests_are_counted_by_node_second_and_class() {
    let mut stats = Stats::default();
    stats.record(1, 100, Ok(200));
    stats.record(1, 900, Ok(404));
    stats.record(1, 1_000, Ok(503));
    stats.record(2, 1_500, Err("timeout".into()));
    let (seconds, errors, dropped) = stats.take();
    assert_eq!(
        seconds,
        [
            Second {
                node: 1,
                second: 0,
                sent: 2,
                ok: 1,
                client_errors: 1,
                ..Second::default()
            },
            Second {
                node: 1,
                second: 1,
                sent: 1,
                server_errors: 1,
                ..Second::default()
            },
            Second {
                node: 2,
                second: 1,
                sent: 1,
                failed: 1,
                ..Second::default()
            },
        ]
    );
    assert_eq!(
        errors,
        [
            LoadError {
                t_ms: 1_000,
                node: 1,
                what: "503".into()
            },
            LoadError {
                t_ms: 1_500,
                node: 2,
                what: "failed: timeout".into()
            },
        ]
    );
    assert_eq!(dropped, 0);
}

#[test]
fn itemised_errors_are_bounded_and_the_rest_counted() {
    let mut stats = Stats::default();
    for i in 0..MAX_ERRORS as u64 + 5 {
        stats.record(1, i, Ok(500));
    }
    let (seconds, errors, dropped) = stats.take();
    assert_eq!(errors.len(), MAX_ERRORS);
    assert_eq!(dropped, 5);
    assert_eq!(
        seconds.iter().map(|s| s.server_errors).sum::<u64>(),
        MAX_ERRORS as u64 + 5
    );
}

#[tokio::test]
async fn a_fixed_rate_for_a_bounded_time_with_failures_recorded() {
    let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), "r")
        .await
        .unwrap();
    // A port nothing listens on: every request fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stats: Shared = Default::default();
    let origin = Instant::now();
    run(
        Client::new(),
        vec![(1, backend.addr()), (2, dead)],
        50,
        (vec!["/a".into(), "/b".into()], None),
        Window {
            origin,
            until: origin + Duration::from_millis(1_000),
            stop: CancellationToken::new(),
        },
        stats.clone(),
    )
    .await;
    assert!(
        origin.elapsed() < Duration::from_secs(4),
        "the load is bounded in time"
    );
    let (seconds, errors, _) = stats.lock().unwrap().take();
    let sent = |node| {
        seconds
            .iter()
            .filter(|s| s.node == node)
            .map(|s| s.sent)
            .sum::<u64>()
    };
    let ok = |node| {
        seconds
            .iter()
            .filter(|s| s.node == node)
            .map(|s| s.ok)
            .sum::<u64>()
    };
    assert!((40..=52).contains(&sent(1)), "{seconds:?}");
    assert_eq!(ok(1), sent(1));
    assert_eq!(ok(2), 0);
    assert!(
        errors
            .iter()
            .all(|e| e.node == 2 && e.what.starts_with("failed"))
    );
    backend.set(Mode::Down);
    backend.shutdown().await;
}
