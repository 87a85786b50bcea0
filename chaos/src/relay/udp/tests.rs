//! UDP links over real sockets on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::link::Link;
use super::super::tests::*;
use super::super::*;

const MS: Duration = Duration::from_millis(1);

async fn echo_link(seed: u64) -> (Relay, LinkHandle) {
    let relay = Relay::new(seed);
    let link = relay.udp(local(), udp_echo().await).await.unwrap();
    (relay, link)
}

async fn sink_link(seed: u64) -> (Relay, LinkHandle, mpsc::UnboundedReceiver<Received>) {
    let relay = Relay::new(seed);
    let (sink, rx) = udp_sink().await;
    let link = relay.udp(local(), sink).await.unwrap();
    (relay, link, rx)
}

/// Sends numbered datagrams `0..n`, waiting for the relay to take each batch
/// so that no socket buffer overflows and decides instead of the link.
async fn send_numbered(link: &LinkHandle, client: &tokio::net::UdpSocket, n: u32) {
    for i in 0..n {
        client
            .send_to(&i.to_be_bytes(), link.local_addr())
            .await
            .unwrap();
        if i % 25 == 24 || i + 1 == n {
            let seen = u64::from(i + 1);
            // Each datagram ends up dropped or sent, plus one more send per copy.
            wait_for("the relay to take the batch", || {
                let c = link.counters().forward;
                c.forwarded + c.dropped >= seen + c.duplicated
            })
            .await;
        }
    }
}

/// Waits until the sink has everything the link forwarded, and returns it.
async fn drain(link: &LinkHandle, rx: &mut mpsc::UnboundedReceiver<Received>) -> Vec<Received> {
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        while let Ok(r) = rx.try_recv() {
            got.push(r);
        }
        if got.len() as u64 >= link.counters().forward.forwarded && !got.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "sink got {} datagrams",
            got.len()
        );
        tokio::time::sleep(5 * MS).await;
    }
}

fn number(r: &Received) -> u32 {
    u32::from_be_bytes(r.payload[..4].try_into().unwrap())
}

#[tokio::test]
async fn echo_through_the_relay() {
    let (_relay, link) = echo_link(1).await;
    let client = udp_client().await;
    for msg in [&b"ping"[..], b"", &[7; 1400], &[9; 60_000]] {
        client.send_to(msg, link.local_addr()).await.unwrap();
        let mut buf = vec![0; 65536];
        let (len, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], msg);
        assert_eq!(from, link.local_addr(), "replies come from the relay");
    }
    let c = link.counters();
    assert_eq!(c.forward.forwarded, 4);
    assert_eq!(c.backward.forwarded, 4);
    assert_eq!(c.forward.bytes, 4 + 1400 + 60_000);
    assert_eq!(c.forward.dropped + c.backward.dropped, 0);
}

/// The address the upstream saw `client` come from.
async fn whoami(client: &tokio::net::UdpSocket, link: &LinkHandle) -> String {
    client.send_to(b"?", link.local_addr()).await.unwrap();
    let seen = recv_within(client, PATIENCE).await.expect("answer");
    String::from_utf8(seen).unwrap()
}

#[tokio::test]
async fn each_client_gets_its_own_stable_flow() {
    let relay = Relay::new(2);
    let link = relay.udp(local(), udp_whoami().await).await.unwrap();
    let (a, b) = (udp_client().await, udp_client().await);
    let a1 = whoami(&a, &link).await;
    let b1 = whoami(&b, &link).await;
    let a2 = whoami(&a, &link).await;
    assert_eq!(a1, a2, "one client keeps one upstream path");
    assert_ne!(a1, b1, "two clients get two upstream paths");
    assert_ne!(
        a1,
        a.local_addr().unwrap().to_string(),
        "the upstream sees the relay"
    );
}

#[tokio::test]
async fn a_full_flow_map_evicts_the_least_recently_active() {
    let limits = Limits {
        max_flows: 1,
        ..Default::default()
    };
    let relay = Relay::with_limits(3, limits);
    let link = relay.udp(local(), udp_whoami().await).await.unwrap();
    let (a, b) = (udp_client().await, udp_client().await);
    let mut seen = Vec::new();
    for client in [&a, &b, &a] {
        seen.push(whoami(client, &link).await);
    }
    assert_ne!(seen[0], seen[2], "a's first flow was evicted for b's");
}

#[tokio::test]
async fn loss_one_drops_everything() {
    let (_relay, link, mut rx) = sink_link(4).await;
    link.set_direction(
        Direction::Forward,
        LinkParams {
            loss: 1.0,
            ..Default::default()
        },
    );
    let client = udp_client().await;
    for _ in 0..50 {
        client.send_to(b"lost", link.local_addr()).await.unwrap();
    }
    wait_for("50 drops", || link.counters().forward.dropped == 50).await;
    assert_eq!(link.counters().forward.forwarded, 0);
    tokio::time::sleep(QUIET).await;
    assert!(rx.try_recv().is_err(), "nothing reached the upstream");
}

#[tokio::test]
async fn partition_blackholes_until_healed() {
    let (_relay, link) = echo_link(5).await;
    let client = udp_client().await;
    let to = link.local_addr();

    link.partition(Direction::Both);
    client.send_to(b"cut", to).await.unwrap();
    assert_eq!(recv_within(&client, QUIET).await, None);
    assert_eq!(link.counters().forward.dropped, 1);

    link.heal();
    client.send_to(b"healed", to).await.unwrap();
    assert_eq!(
        recv_within(&client, PATIENCE).await.as_deref(),
        Some(&b"healed"[..])
    );
}

#[tokio::test]
async fn a_one_way_partition_lets_the_other_way_through() {
    let (_relay, link) = echo_link(6).await;
    let client = udp_client().await;
    link.partition(Direction::Backward);
    client.send_to(b"one way", link.local_addr()).await.unwrap();
    wait_for("the reply to be dropped", || {
        link.counters().backward.dropped == 1
    })
    .await;
    assert_eq!(link.counters().forward.forwarded, 1, "the upstream got it");
    assert_eq!(recv_within(&client, QUIET).await, None);
}

#[tokio::test]
async fn blackhole_flag_drops_and_heal_clears_it() {
    let (_relay, link) = echo_link(7).await;
    let client = udp_client().await;
    link.set(LinkParams {
        blackhole: true,
        ..Default::default()
    });
    client.send_to(b"void", link.local_addr()).await.unwrap();
    assert_eq!(recv_within(&client, QUIET).await, None);
    link.heal();
    client.send_to(b"back", link.local_addr()).await.unwrap();
    assert_eq!(
        recv_within(&client, PATIENCE).await.as_deref(),
        Some(&b"back"[..])
    );
}

#[tokio::test]
async fn duplication_delivers_twice() {
    let (_relay, link, mut rx) = sink_link(8).await;
    link.set(LinkParams {
        duplicate: 1.0,
        ..Default::default()
    });
    let client = udp_client().await;
    send_numbered(&link, &client, 20).await;
    wait_for("40 sends", || link.counters().forward.forwarded == 40).await;
    let got = drain(&link, &mut rx).await;
    assert_eq!(got.len(), 40);
    assert!(
        got.iter().all(|r| r.from == got[0].from),
        "one flow, one source"
    );
    for i in 0..20 {
        assert_eq!(
            got.iter().filter(|r| number(r) == i).count(),
            2,
            "datagram {i}"
        );
    }
    assert_eq!(link.counters().forward.duplicated, 20);
}

#[tokio::test]
async fn delay_is_a_lower_bound() {
    let (_relay, link) = echo_link(9).await;
    link.set(LinkParams {
        delay: 50 * MS,
        ..Default::default()
    });
    let client = udp_client().await;
    let start = Instant::now();
    client.send_to(b"slow", link.local_addr()).await.unwrap();
    assert!(recv_within(&client, PATIENCE).await.is_some());
    let rtt = start.elapsed();
    assert!(rtt >= 100 * MS, "50 ms each way took {rtt:?}");
}

#[tokio::test]
async fn jitter_reorders_but_loses_nothing() {
    let (_relay, link, mut rx) = sink_link(10).await;
    link.set_direction(
        Direction::Forward,
        LinkParams {
            delay: 30 * MS,
            jitter: 25 * MS,
            ..Default::default()
        },
    );
    let client = udp_client().await;
    send_numbered(&link, &client, 40).await;
    wait_for("40 sends", || link.counters().forward.forwarded == 40).await;
    let order: Vec<u32> = drain(&link, &mut rx).await.iter().map(number).collect();
    let set: BTreeSet<u32> = order.iter().copied().collect();
    assert_eq!(set, (0..40).collect());
    assert!(order.windows(2).any(|w| w[1] < w[0]), "{order:?}");
}

#[tokio::test]
async fn rate_cap_queues_then_drops() {
    let (_relay, link, mut rx) = sink_link(11).await;
    // 1 kB passes at once, 2 kB queue behind it at 10 kB/s, the rest is dropped.
    link.set_direction(
        Direction::Forward,
        LinkParams {
            rate: Some(Bandwidth {
                bytes_per_sec: 10_000,
                burst: 1000,
                queue: 2000,
            }),
            ..Default::default()
        },
    );
    let client = udp_client().await;
    let start = Instant::now();
    for _ in 0..30 {
        client.send_to(&[0; 1000], link.local_addr()).await.unwrap();
    }
    wait_for("30 decisions", || {
        let c = link.counters().forward;
        c.forwarded + c.dropped == 30
    })
    .await;
    let c = link.counters().forward;
    assert!(c.forwarded <= 6, "{c:?}");
    assert!(c.queue_full >= 20, "{c:?}");
    let got = drain(&link, &mut rx).await;
    let last = got.iter().map(|r| r.at).max().unwrap();
    // The third kilobyte waited 2 kB / 10 kB/s behind the first.
    assert!(last - start >= 150 * MS, "{:?}", last - start);
}

/// Which of 200 numbered datagrams a link with loss 0.5 delivers.
async fn delivered(seed: u64) -> BTreeSet<u32> {
    let (_relay, link, mut rx) = sink_link(seed).await;
    link.set_direction(Direction::Forward, half_loss());
    let client = udp_client().await;
    send_numbered(&link, &client, 200).await;
    drain(&link, &mut rx).await.iter().map(number).collect()
}

fn half_loss() -> LinkParams {
    LinkParams {
        loss: 0.5,
        burst: Some(GilbertElliott::bursts(0.1, 0.5)),
        ..Default::default()
    }
}

#[tokio::test]
async fn seeded_runs_drop_the_same_datagrams() {
    let a = delivered(77).await;
    let b = delivered(77).await;
    assert_eq!(a, b);
    assert!((30..170).contains(&a.len()), "{} delivered", a.len());
    assert_ne!(a, delivered(78).await);

    // The same decisions can be replayed offline from the seed alone.
    let offline = Link::new(link_seed(77, 0, Way::Forward));
    offline.set(half_loss());
    let now = Instant::now();
    let predicted: BTreeSet<u32> = (0..200)
        .filter(|_| offline.datagram(4, now, false) != super::Verdict::Drop)
        .collect();
    assert_eq!(a, predicted);
}

#[tokio::test]
async fn upstream_gone_drops_without_breaking_the_link() {
    // Nothing listens upstream: sends bounce with ICMP and the flow sees
    // ECONNREFUSED, which must not stop the link.
    let port = {
        let s = std::net::UdpSocket::bind(local()).unwrap();
        s.local_addr().unwrap()
    };
    let relay = Relay::new(12);
    let link = relay.udp(local(), port).await.unwrap();
    let client = udp_client().await;
    for _ in 0..10 {
        client.send_to(b"anyone?", link.local_addr()).await.unwrap();
    }
    wait_for("ten decisions", || {
        let c = link.counters().forward;
        c.forwarded + c.dropped == 10
    })
    .await;

    // Bring the upstream up on that port: the same link now works.
    let Ok(socket) = tokio::net::UdpSocket::bind(port).await else {
        return; // the port was taken meanwhile; nothing more to check
    };
    tokio::spawn(async move {
        let mut buf = [0; 64];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    let mut answered = false;
    for _ in 0..20 {
        client.send_to(b"now?", link.local_addr()).await.unwrap();
        if recv_within(&client, QUIET).await.is_some() {
            answered = true;
            break;
        }
    }
    assert!(answered);
}

#[tokio::test]
async fn evicted_flows_still_send_what_they_scheduled() {
    let relay = Relay::with_limits(
        13,
        Limits {
            max_flows: 1,
            ..Default::default()
        },
    );
    let link = relay.udp(local(), udp_echo().await).await.unwrap();
    link.set_direction(
        Direction::Forward,
        LinkParams {
            delay: 30 * MS,
            ..Default::default()
        },
    );
    let clients = [udp_client().await, udp_client().await, udp_client().await];
    for c in &clients {
        c.send_to(b"x", link.local_addr()).await.unwrap();
    }
    // Each client evicted the previous one's flow before its datagram left.
    wait_for("three sent upstream", || {
        link.counters().forward.forwarded == 3
    })
    .await;
    assert!(recv_within(&clients[2], PATIENCE).await.is_some());
}
