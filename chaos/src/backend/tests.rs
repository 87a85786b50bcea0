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
