//! Relay-level tests, and the peers and helpers the UDP and TCP tests share.
//!
//! Everything binds 127.0.0.1 port 0. Nothing asserts a timing except coarse
//! lower bounds; waiting is done by polling a condition with a deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::*;

/// How long any wait in these tests may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// How long to listen for something that should not arrive.
pub(crate) const QUIET: Duration = Duration::from_millis(200);

pub(crate) fn local() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Polls `cond` every few milliseconds until it holds.
///
/// # Panics
///
/// If it does not hold within [`PATIENCE`].
pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A datagram as a sink saw it.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) payload: Vec<u8>,
    pub(crate) from: SocketAddr,
    pub(crate) at: Instant,
}

/// A UDP server that echoes every datagram to its sender.
pub(crate) async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind(local()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

/// A UDP server that answers every datagram with the sender's address.
pub(crate) async fn udp_whoami() -> SocketAddr {
    let socket = UdpSocket::bind(local()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(from.to_string().as_bytes(), from).await;
        }
    });
    addr
}

/// A UDP server that reports every datagram it receives.
pub(crate) async fn udp_sink() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let socket = UdpSocket::bind(local()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let received = Received {
                payload: buf[..len].to_vec(),
                from,
                at: Instant::now(),
            };
            if tx.send(received).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A UDP client socket on 127.0.0.1.
pub(crate) async fn udp_client() -> UdpSocket {
    UdpSocket::bind(local()).await.unwrap()
}

/// Receives one datagram within `wait`, or `None`.
pub(crate) async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0; 65536];
    let (len, _) = timeout(wait, socket.recv_from(&mut buf)).await.ok()?.ok()?;
    buf.truncate(len);
    Some(buf)
}

/// A TCP server that echoes each connection until its client half-closes.
pub(crate) async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rx, mut tx) = stream.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
                let _ = tx.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that reads each connection to its end and reports how many
/// bytes came and when the last did.
pub(crate) async fn tcp_sink() -> (SocketAddr, mpsc::UnboundedReceiver<(usize, Instant)>) {
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = stream.read_to_end(&mut all).await;
                let _ = tx.send((all.len(), Instant::now()));
            });
        }
    });
    (addr, rx)
}

/// Writes `msg` and reads the same number of bytes back.
pub(crate) async fn tcp_round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    back
}

#[tokio::test]
async fn handle_reports_addresses_and_control_state() {
    let relay = Relay::new(1);
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let link = relay.udp(local(), upstream).await.unwrap();
    assert_eq!(link.proto(), Proto::Udp);
    assert_eq!(link.upstream(), upstream);
    assert_ne!(
        link.local_addr().port(),
        0,
        "port 0 resolves to a real port"
    );

    link.partition(Direction::Forward);
    assert_eq!(
        link.cuts(),
        Directed {
            forward: true,
            backward: false
        }
    );
    link.partition(Direction::Backward);
    assert_eq!(
        link.cuts(),
        Directed {
            forward: true,
            backward: true
        }
    );
    link.set_tcp_mode(TcpMode::Stall);
    link.set_direction(
        Direction::Backward,
        LinkParams {
            blackhole: true,
            delay: Duration::from_millis(7),
            ..Default::default()
        },
    );

    link.heal();
    assert_eq!(link.cuts(), Directed::default());
    assert_eq!(link.tcp_mode(), TcpMode::Pass);
    let params = link.params();
    assert!(!params.backward.blackhole, "heal clears the blackhole flag");
    assert_eq!(
        params.backward.delay,
        Duration::from_millis(7),
        "heal keeps shaping"
    );
    assert_eq!(params.forward, LinkParams::default());
}

#[tokio::test]
async fn params_are_sanitised_when_set() {
    let relay = Relay::new(1);
    let link = relay
        .udp(local(), "127.0.0.1:9".parse().unwrap())
        .await
        .unwrap();
    link.set(LinkParams {
        delay: Duration::MAX,
        jitter: Duration::MAX,
        loss: f64::NAN,
        duplicate: 7.0,
        burst: Some(GilbertElliott::bursts(-1.0, f64::INFINITY)),
        rate: Some(Bandwidth {
            bytes_per_sec: 0,
            burst: u64::MAX,
            queue: u64::MAX,
        }),
        ..Default::default()
    });
    let p = link.params().forward;
    assert_eq!(p.delay, MAX_DELAY);
    assert_eq!(p.jitter, MAX_DELAY);
    assert_eq!(p.loss, 0.0);
    assert_eq!(p.duplicate, 1.0);
    assert_eq!(p.burst, Some(GilbertElliott::bursts(0.0, 1.0)));
    assert_eq!(p.rate.map(|r| r.bytes_per_sec), Some(1));
}

#[tokio::test]
async fn shutdown_waits_for_every_task() {
    let relay = Relay::new(2);
    let udp = relay.udp(local(), udp_echo().await).await.unwrap();
    let tcp = relay.tcp(local(), tcp_echo().await).await.unwrap();

    // A live UDP flow with datagrams still in flight, and a live TCP connection.
    let client = udp_client().await;
    client.send_to(b"hello", udp.local_addr()).await.unwrap();
    assert_eq!(
        recv_within(&client, PATIENCE).await.as_deref(),
        Some(&b"hello"[..])
    );
    udp.set(LinkParams {
        delay: Duration::from_secs(60),
        ..Default::default()
    });
    client.send_to(b"held", udp.local_addr()).await.unwrap();
    let mut stream = TcpStream::connect(tcp.local_addr()).await.unwrap();
    assert_eq!(tcp_round_trip(&mut stream, b"ping").await, b"ping");

    timeout(PATIENCE, relay.shutdown())
        .await
        .expect("shutdown finishes while flows and connections are open");

    // The TCP connection is gone, and both listeners are closed.
    let mut buf = [0; 8];
    let read = timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(tcp.local_addr()).await.is_err());
    UdpSocket::bind(udp.local_addr())
        .await
        .expect("udp port is free again");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_link() {
    let relay = Relay::new(3);
    let link = relay.udp(local(), udp_echo().await).await.unwrap();
    let addr = link.local_addr();
    let clone = link.clone();
    drop(link);

    // A clone keeps the link alive.
    let client = udp_client().await;
    client.send_to(b"still", addr).await.unwrap();
    assert_eq!(
        recv_within(&client, PATIENCE).await.as_deref(),
        Some(&b"still"[..])
    );

    drop(clone);
    let mut rebound = None;
    wait_for("the listener to close", || {
        rebound = std::net::UdpSocket::bind(addr).ok();
        rebound.is_some()
    })
    .await;

    let tcp = relay.tcp(local(), tcp_echo().await).await.unwrap();
    let addr = tcp.local_addr();
    tcp.close();
    wait_for("the tcp listener to close", || {
        std::net::TcpListener::bind(addr).is_ok()
    })
    .await;
    drop(tcp);
}

#[tokio::test]
async fn dropping_the_relay_stops_its_links() {
    let relay = Relay::new(4);
    let link = relay.udp(local(), udp_echo().await).await.unwrap();
    let addr = link.local_addr();
    drop(relay);
    wait_for("the listener to close", || {
        std::net::UdpSocket::bind(addr).is_ok()
    })
    .await;
    drop(link);
}

#[tokio::test]
async fn binding_a_taken_address_names_it() {
    let relay = Relay::new(5);
    let taken = relay
        .tcp(local(), "127.0.0.1:9".parse().unwrap())
        .await
        .unwrap();
    let error = relay
        .tcp(taken.local_addr(), "127.0.0.1:9".parse().unwrap())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("tcp"), "{message}");
    assert!(
        message.contains(&taken.local_addr().to_string()),
        "{message}"
    );
}

#[test]
fn link_seeds_differ_per_link_and_direction_and_replay() {
    let seeds = [
        link_seed(9, 0, Way::Forward),
        link_seed(9, 0, Way::Backward),
        link_seed(9, 1, Way::Forward),
        link_seed(10, 0, Way::Forward),
    ];
    for (i, a) in seeds.iter().enumerate() {
        for b in &seeds[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(seeds[0], link_seed(9, 0, Way::Forward));
}

#[tokio::test]
async fn relay_reports_its_seed() {
    let relay = Relay::new(0xC0FFEE);
    assert_eq!(relay.seed(), 0xC0FFEE);
    assert!(format!("{relay:?}").contains("seed"));
}
