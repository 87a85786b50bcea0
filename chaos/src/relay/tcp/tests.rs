//! TCP links over real sockets on 127.0.0.1.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

use super::super::tests::*;
use super::super::*;

const MS: Duration = Duration::from_millis(1);

/// An echo server that also counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut rx, mut tx) = stream.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
                let _ = tx.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

async fn echo_link(seed: u64) -> (Relay, LinkHandle) {
    let relay = Relay::new(seed);
    let link = relay.tcp(local(), tcp_echo().await).await.unwrap();
    (relay, link)
}

/// Reads once and expects the connection to have been reset.
async fn expect_reset(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let read = timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("the reset arrives");
    match read {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
        Ok(len) => panic!("read {len} bytes instead of a reset"),
    }
}

#[tokio::test]
async fn echo_through_the_relay_with_half_close() {
    let (_relay, link) = echo_link(1).await;
    let stream = TcpStream::connect(link.local_addr()).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();

    let write = async {
        tx.write_all(&data).await.unwrap();
        tx.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        rx.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = timeout(PATIENCE, async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    assert!(back == data, "the stream arrives intact and ends");

    let c = link.counters();
    assert_eq!(c.forward.bytes, data.len() as u64);
    assert_eq!(c.backward.bytes, data.len() as u64);
}

#[tokio::test]
async fn reset_mode_resets_established_connections() {
    let (_relay, link) = echo_link(2).await;
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut stream, b"ping").await, b"ping");

    link.set_tcp_mode(TcpMode::Reset);
    expect_reset(&mut stream).await;
}

#[tokio::test]
async fn reset_mode_resets_new_connections_until_healed() {
    let (_relay, link) = echo_link(3).await;
    link.set_tcp_mode(TcpMode::Reset);
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    expect_reset(&mut stream).await;

    link.heal();
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut stream, b"again").await, b"again");
}

#[tokio::test]
async fn blackhole_mode_accepts_and_never_forwards() {
    let relay = Relay::new(4);
    let (upstream, accepted) = counting_echo().await;
    let link = relay.tcp(local(), upstream).await.unwrap();
    link.set_tcp_mode(TcpMode::Blackhole);

    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    stream.write_all(b"into the void").await.unwrap();
    wait_for("the bytes to be discarded", || {
        link.counters().forward.dropped >= 1
    })
    .await;
    let mut buf = [0; 16];
    assert!(
        timeout(QUIET, stream.read(&mut buf)).await.is_err(),
        "no answer"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "never connected upstream"
    );

    // Healing does not revive a blackholed connection, but new ones pass.
    link.heal();
    let mut fresh = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut fresh, b"hello").await, b"hello");
    assert!(timeout(QUIET, stream.read(&mut buf)).await.is_err());
}

#[tokio::test]
async fn partition_stalls_and_heal_delivers_the_bytes() {
    let relay = Relay::new(5);
    let (upstream, accepted) = counting_echo().await;
    let link = relay.tcp(local(), upstream).await.unwrap();

    // An established connection stalls in the cut direction.
    let mut old = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut old, b"before").await, b"before");
    link.partition(Direction::Forward);
    old.write_all(b"during").await.unwrap();

    // A new connection waits before reaching the upstream.
    let mut new = TcpStream::connect(link.local_addr()).await.unwrap();
    new.write_all(b"early").await.unwrap();
    let mut buf = [0; 16];
    assert!(timeout(QUIET, old.read(&mut buf)).await.is_err());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    link.heal();
    let mut back = [0; 6];
    timeout(PATIENCE, old.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"during");
    let mut back = [0; 5];
    timeout(PATIENCE, new.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"early");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stall_mode_holds_both_directions() {
    let (_relay, link) = echo_link(6).await;
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut stream, b"a").await, b"a");
    link.set_tcp_mode(TcpMode::Stall);
    stream.write_all(b"b").await.unwrap();
    let mut buf = [0; 1];
    assert!(timeout(QUIET, stream.read(&mut buf)).await.is_err());
    link.set_tcp_mode(TcpMode::Pass);
    timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"b");
}

#[tokio::test]
async fn delay_is_a_lower_bound() {
    let (_relay, link) = echo_link(7).await;
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut stream, b"warm").await, b"warm");
    link.set(LinkParams {
        delay: 50 * MS,
        jitter: 10 * MS,
        ..Default::default()
    });
    let start = Instant::now();
    assert_eq!(tcp_round_trip(&mut stream, b"slow").await, b"slow");
    let rtt = start.elapsed();
    assert!(rtt >= 80 * MS, "50±10 ms each way took {rtt:?}");
}

#[tokio::test]
async fn jitter_never_reorders_a_stream() {
    let (_relay, link) = echo_link(8).await;
    link.set(LinkParams {
        delay: 5 * MS,
        jitter: 5 * MS,
        rate: Some(Bandwidth::new(2_000_000)),
        ..Default::default()
    });
    let stream = TcpStream::connect(link.local_addr()).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    let write = async {
        for piece in data.chunks(1000) {
            tx.write_all(piece).await.unwrap();
        }
        tx.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        rx.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = timeout(PATIENCE, async { tokio::join!(write, read) })
        .await
        .unwrap();
    assert!(back == data);
}

#[tokio::test]
async fn rate_cap_bounds_throughput() {
    let relay = Relay::new(9);
    let (sink, mut done) = tcp_sink().await;
    let link = relay.tcp(local(), sink).await.unwrap();
    link.set_direction(
        Direction::Forward,
        LinkParams {
            rate: Some(Bandwidth {
                bytes_per_sec: 200_000,
                burst: 10_000,
                queue: 0,
            }),
            ..Default::default()
        },
    );
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    let start = Instant::now();
    stream.write_all(&[1; 100_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    let (len, end) = timeout(PATIENCE, done.recv()).await.unwrap().unwrap();
    assert_eq!(len, 100_000, "nothing is dropped, only slowed");
    // 90 kB beyond the burst at 200 kB/s take at least 0.45 s.
    let took = end - start;
    assert!(took >= 400 * MS, "100 kB at 200 kB/s took {took:?}");
}

#[tokio::test]
async fn unreachable_upstream_resets_the_client() {
    let closed = {
        let l = std::net::TcpListener::bind(local()).unwrap();
        l.local_addr().unwrap()
    };
    let relay = Relay::new(10);
    let link = relay.tcp(local(), closed).await.unwrap();
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    expect_reset(&mut stream).await;
}

#[tokio::test]
async fn a_peer_reset_is_passed_on() {
    // An upstream that accepts, then resets.
    let listener = TcpListener::bind(local()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let relay = Relay::new(11);
    let link = relay.tcp(local(), upstream).await.unwrap();
    let mut stream = TcpStream::connect(link.local_addr()).await.unwrap();
    expect_reset(&mut stream).await;
}

#[tokio::test]
async fn a_blackholed_connection_gives_its_permit_back_after_the_client_closes() {
    let limits = Limits {
        max_connections: 1,
        flow_idle: 50 * MS,
        ..Default::default()
    };
    let relay = Relay::with_limits(12, limits);
    let link = relay.tcp(local(), tcp_echo().await).await.unwrap();
    link.set_tcp_mode(TcpMode::Blackhole);
    let mut first = TcpStream::connect(link.local_addr()).await.unwrap();
    first.write_all(b"void").await.unwrap();
    first.shutdown().await.unwrap();
    wait_for("the bytes to be discarded", || {
        link.counters().forward.dropped >= 1
    })
    .await;
    link.heal();

    // The only permit is held by the first connection until it lingers out.
    let mut second = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut second, b"next").await, b"next");
    let mut buf = [0; 4];
    let end = timeout(PATIENCE, first.read(&mut buf)).await.unwrap();
    assert!(matches!(end, Ok(0)), "{end:?}");
}
