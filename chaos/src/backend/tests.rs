use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

use super::*;
use crate::client::{CallError, Client};

async fn get(
    client: &Client,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, serde_json::Value), CallError> {
    client.get_json(addr, path, Duration::from_secs(2)).await
}

#[tokio::test]
async fn answers_goes_down_slows_down_and_comes_back_on_the_same_address() {
    let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), "eu-west")
        .await
        .unwrap();
    let addr = backend.addr();
    let client = Client::new();
    let (status, body) = get(&client, addr, "/hello").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["region"], "eu-west");
    assert_eq!(body["path"], "/hello");
    assert_eq!(
        get(&client, addr, "/health").await.unwrap().1["status"],
        "ok"
    );

    backend.set(Mode::Down);
    assert_eq!(backend.mode(), Mode::Down);
    // The listener closes promptly; pooled connections are closed too.
    let mut refused = false;
    for _ in 0..50 {
        if get(&Client::new(), addr, "/x").await.is_err() && get(&client, addr, "/x").await.is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a down backend still answered");

    backend.set(Mode::Slow(Duration::from_millis(300)));
    let mut answered = None;
    for _ in 0..50 {
        let start = tokio::time::Instant::now();
        if let Ok(a) = Client::new()
            .call(
                Method::GET,
                addr,
                "/slow",
                &[],
                None,
                Duration::from_secs(2),
            )
            .await
        {
            answered = Some((a.status, start.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, took) = answered.expect("the backend came back up");
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");

    backend.set(Mode::Up);
    assert_eq!(get(&client, addr, "/fast").await.unwrap().0, 200);
    backend.shutdown().await;
}

/// Root only: a backend in a region's namespace answers clients there,
/// goes down, and binds again inside the namespace when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_in_a_namespace_goes_down_and_comes_back_there() {
    if let Some(reason) = crate::netns::Net::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let net = crate::netns::Net::create(2).unwrap();
    let listen = SocketAddr::new(net.address(2), 8000);
    let backend = Backend::start_in(&net.dialer(2), listen, "us-east")
        .await
        .unwrap();
    assert_eq!(backend.addr(), listen);
    // From region 1 across the hub, and from inside region 2.
    for client in [
        Client::with_dialer(net.dialer(1)),
        Client::with_dialer(net.dialer(2)),
    ] {
        let (status, body) = get(&client, listen, "/hello").await.unwrap();
        assert_eq!((status, &body["region"]), (200, &"us-east".into()));
    }

    let client = Client::with_dialer(net.dialer(1));
    backend.set(Mode::Down);
    let mut refused = false;
    for _ in 0..50 {
        if let Err(CallError::Connect(_)) = get(&client, listen, "/x").await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a down backend still answered");
    backend.set(Mode::Up);
    let mut back = false;
    for _ in 0..50 {
        if get(&client, listen, "/x")
            .await
            .is_ok_and(|(s, _)| s == 200)
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the backend did not come back in its namespace");
    backend.shutdown().await;
}
