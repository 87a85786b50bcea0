use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn owners_come_from_the_harness_prefix_only() {
    assert_eq!(owner("mrd1234-0-hub"), Some(1234));
    assert_eq!(owner("mrd7-12-r3"), Some(7));
    assert_eq!(owner("mrd-0-hub"), None);
    assert_eq!(owner("mrdprobe-hub"), None);
    assert_eq!(owner("relhub"), None);
    assert_eq!(owner("mrd12x-0-hub"), None);
}

#[test]
fn regions_have_fixed_addresses() {
    assert_eq!(address(1), Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(address(3), Ipv4Addr::new(10, 77, 0, 3));
}

#[test]
#[should_panic(expected = "region 0 is not in")]
fn regions_count_from_one() {
    address(0);
}

#[test]
fn the_namespaces_have_their_own_range() {
    assert!(inside(IpAddr::V4(address(3))));
    assert!(inside(IpAddr::V4(HUB_ADDRESS)));
    assert!(!inside(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert!(!inside(IpAddr::V4(Ipv4Addr::new(10, 77, 1, 1))));
}

/// Root only: while a [`Net`] lives, its addresses are refused from the
/// test's own namespace (they would leave by the default route).
#[tokio::test]
async fn the_namespaces_addresses_are_never_dialled_from_here() {
    if let Some(reason) = Net::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let net = Net::create(2).expect("namespaces");
    let addr = SocketAddr::new(IpAddr::V4(address(2)), 9080);
    let error = Dialer::Here
        .connect(addr, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    let error = crate::client::Client::new()
        .get_json(addr, "/", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, crate::client::CallError::Invalid(m) if m.contains("inside the network namespaces")),
        "{error}"
    );
    drop(net);
}

#[test]
fn a_dialer_here_makes_sockets_on_the_calling_thread() {
    let me = std::thread::current().id();
    let seen = Dialer::Here
        .make(move || Ok(std::thread::current().id() == me))
        .unwrap();
    assert!(seen);
    assert_eq!(Dialer::Here.namespace(), None);
}

/// Root only: two regions that reach each other over the hub, a cut that
/// drops the region's traffic, a heal that restores it, and no namespace
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_meet_at_the_hub_until_one_is_cut() {
    if let Some(reason) = Net::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let net = Net::create(2).expect("namespaces");
    let names = [net.hub(), net.namespace(1), net.namespace(2)];
    let listed = ip(&["netns", "list"]).unwrap();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} in {listed}");
    }
    // An echo server in region 2; the harness's sockets stay where made.
    let listener = net
        .dialer(2)
        .bind_tcp(SocketAddr::new(net.address(2), 7000))
        .await
        .expect("bound in region 2");
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                }
            });
        }
    });
    let target = SocketAddr::new(net.address(2), 7000);
    let echo = |dialer: Dialer| async move {
        let mut stream = dialer.connect(target, Duration::from_millis(500)).await?;
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
        io::Result::Ok(buf)
    };
    assert_eq!(&echo(net.dialer(1)).await.unwrap(), b"ping");
    assert_eq!(&echo(net.hub_dialer()).await.unwrap(), b"ping");
    net.cut(2).unwrap();
    let error = echo(net.dialer(1)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    // Region 2's own sockets still work: its interfaces stay up.
    assert_eq!(&echo(net.dialer(2)).await.unwrap(), b"ping");
    net.heal(2).unwrap();
    let mut healed = false;
    for _ in 0..20 {
        if echo(net.dialer(1)).await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed, "region 2 is reachable again after the heal");
    server.abort();
    drop(net);
    let listed = ip(&["netns", "list"]).unwrap();
    for name in &names {
        assert!(!listed.contains(name.as_str()), "{name} left in {listed}");
    }
}
