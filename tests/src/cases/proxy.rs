//! Proxying: protocols, pooling, streaming, headers, WebSocket,
//! 100-continue and timeouts.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{h2c, http1, raw, raw_status, send_with};
use crate::upstream::{MockBody, full, json};
use crate::{MockUpstream, TestNode, get};

fn one_route(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"]{extra} }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    )
}

#[tokio::test]
async fn http1_and_h2c_clients_and_upstream_keep_alive() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let client = http1();
    for _ in 0..20 {
        let reply = send_with(
            &client,
            Request::get(node.url("/a")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let h2 = h2c();
    for _ in 0..20 {
        let reply = send_with(
            &h2,
            Request::get(node.url("/b")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_2);
    }
    assert_eq!(upstream.count(), 40);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    assert_eq!(upstream.last().version, http::Version::HTTP_11);
}

/// Reads `count` responses with `Content-Length` bodies from `stream`
/// (5 s at most): each one's status and body.
pub(super) async fn responses(
    stream: &mut tokio::net::TcpStream,
    count: usize,
) -> Vec<(u16, String)> {
    let mut bytes = Vec::new();
    let mut parsed = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        while parsed.len() < count {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
            loop {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                    break;
                };
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .expect("a Content-Length");
                if rest.len() < length {
                    break;
                }
                parsed.push((raw_status(head), rest[..length].to_owned()));
                bytes.drain(..head.len() + 4 + length);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    parsed
}

/// One keep-alive connection whose requests start on the fast path and
/// move to hyper at the first chunked body, pipelined in one write: every
/// request reaches the upstream once, whole and in order, and every
/// response comes back in order.
#[tokio::test]
async fn a_connection_moves_from_the_fast_path_to_hyper_without_losing_a_byte() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let mut stream = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    let pipelined = concat!(
        "GET /one?a=1 HTTP/1.1\r\nHost: x\r\nX-Seq: 1\r\n\r\n",
        "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n",
        "GET /four HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let answers = responses(&mut stream, 4).await;
    assert_eq!(answers.len(), 4, "four responses, got {answers:?}");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );

    // A head split over two writes, then a body sent after a pause: the
    // fast path waits for the head, and hands the late body to hyper.
    stream.write_all(b"PUT /five HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"st: x\r\nContent-Length: 3\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"abc").await.unwrap();
    let answers = responses(&mut stream, 1).await;
    assert_eq!(answers.len(), 1, "a fifth response");
    assert_eq!(answers[0].0, 200);

    let seen = upstream.seen.lock().unwrap().clone();
    let summary: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str().to_owned(), s.uri.clone(), s.body.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("GET".to_owned(), "/one?a=1".to_owned(), Bytes::new()),
            ("POST".to_owned(), "/two".to_owned(), Bytes::from("hello")),
            ("POST".to_owned(), "/three".to_owned(), Bytes::from("world")),
            ("GET".to_owned(), "/four".to_owned(), Bytes::new()),
            ("PUT".to_owned(), "/five".to_owned(), Bytes::from("abc")),
        ]
    );
    assert_eq!(seen[0].headers["x-seq"], "1");
    node.stop().await;
}

#[tokio::test]
async fn h2_upstreams() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, ", protocol: h2")).await;
    let client = http1();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(send_with(
            &client,
            Request::get(node.url("/x")).body(Full::default()).unwrap(),
        ));
    }
    for reply in futures_util::future::join_all(replies).await {
        assert_eq!(reply.status, 200);
    }
    assert_eq!(upstream.last().version, http::Version::HTTP_2);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "h2 multiplexes"
    );
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_stripping() {
    let upstream = MockUpstream::start(|_| async {
        let mut response = json(StatusCode::OK, serde_json::json!({}));
        let headers = response.headers_mut();
        headers.insert("connection", "x-upstream-private".parse().unwrap());
        headers.insert("x-upstream-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-upstream-public", "1".parse().unwrap());
        response
    })
    .await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let reply = send_with(
        &http1(),
        Request::get(node.url("/h?q=1"))
            .header("host", "shop.example.com")
            .header("connection", "keep-alive, x-secret, Close")
            .header("x-secret", "hop")
            // Named by the `close` option, so hop-by-hop too.
            .header("close", "hop")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-request-id", "client-id-1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let seen = upstream.last();
    for absent in [
        "connection",
        "x-secret",
        "close",
        "keep-alive",
        "proxy-authorization",
        "expect",
    ] {
        assert!(
            !seen.headers.contains_key(absent),
            "{absent} reached the upstream"
        );
    }
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        seen.headers["forwarded"],
        "for=127.0.0.1;proto=http;host=\"shop.example.com\""
    );
    assert_eq!(
        seen.headers["host"],
        upstream.target().as_str(),
        "the target's address by default"
    );
    assert_eq!(seen.headers["x-request-id"], "client-id-1");
    let traceparent = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the gateway's span is the parent"
    );
    assert_eq!(reply.header("x-request-id"), "client-id-1");
    assert_eq!(reply.header("traceparent"), traceparent);
    assert!(!reply.headers.contains_key("x-upstream-private"));
    assert!(!reply.headers.contains_key("keep-alive"));
    assert_eq!(reply.header("x-upstream-public"), "1");
}

#[tokio::test]
async fn a_lone_connection_close_names_a_field_too() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let reply = send_with(
        &http1(),
        Request::get(node.url("/h"))
            .header("connection", "Close")
            .header("close", "hop")
            .header("x-kept", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.last();
    assert!(!seen.headers.contains_key("connection"));
    assert!(!seen.headers.contains_key("close"), "named by `Connection`");
    assert_eq!(seen.headers["x-kept"], "1");
}

#[tokio::test]
async fn preserve_host() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u, preserve_host: true }}\n",
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    crate::client::get_with(&node.url("/"), &[("host", "api.example.com:8080")]).await;
    assert_eq!(upstream.last().headers["host"], "api.example.com:8080");
}

/// A body of `len` bytes produced in 64 KiB chunks, never held whole.
fn generated(len: u64) -> MockBody {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::unfold(len, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(chunk.len() as u64);
                (
                    Ok(http_body::Frame::data(chunk.slice(..n as usize))),
                    left - n,
                )
            })
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: u64 = 256 << 20;
    let upstream = MockUpstream::start(|seen| async move {
        if seen.uri == "/download" {
            let mut response = http::Response::new(generated(SIZE));
            response.headers_mut().insert("content-length", SIZE.into());
            response
        } else {
            json(
                StatusCode::OK,
                serde_json::json!({"received": seen.body_len}),
            )
        }
    })
    .await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u, max_body: 1GiB }}\n",
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<MockBody>();
    let upload = Request::post(node.url("/upload"))
        .body(generated(SIZE))
        .unwrap();
    let response = client.request(upload).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["received"], SIZE, "chunked upload arrived whole");
    assert!(upstream.last().headers.get("transfer-encoding").is_some());

    let response = client
        .request(Request::get(node.url("/download")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-length"],
        SIZE.to_string().as_str()
    );
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);
}

#[tokio::test]
async fn content_length_is_kept_for_fixed_size_uploads() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let reply = crate::send(
        Request::put(node.url("/put"))
            .body(Full::new(Bytes::from(vec![1u8; 5000])))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["body_len"], 5000);
    assert_eq!(upstream.last().headers["content-length"], "5000");
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, "")).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", node.proxy))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        socket
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    socket
        .send(Message::binary(vec![7u8; 100_000]))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 100_000])
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn expect_100_continue() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u, max_body: 1KiB }}\n",
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let mut stream = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    stream
        .write_all(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    let fin = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(fin.starts_with("HTTP/1.1 200"), "{fin}");
    assert_eq!(upstream.last().body_len, 5);
    assert!(!upstream.last().headers.contains_key("expect"));

    // Too large: refused before the client sends the body.
    let answer = raw(
        node.proxy,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(!answer.contains("100 Continue"));
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_get_413() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u, max_body: 64KiB }}\n",
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<MockBody>();
    let response = client
        .request(
            Request::post(node.url("/x"))
                .body(generated(1 << 20))
                .unwrap(),
        )
        .await;
    match response {
        Ok(response) => assert_eq!(response.status(), 413),
        // The gateway may close while the client is still sending.
        Err(error) => assert!(!error.is_connect(), "{error}"),
    }
}

#[tokio::test]
async fn request_timeout_is_504() {
    let upstream = MockUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        json(StatusCode::OK, serde_json::json!({}))
    })
    .await;
    let node = TestNode::start(&one_route(&upstream, ", timeouts: { request: 200ms }")).await;
    let reply = get(&node.url("/slow")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_code(), "upstream_timeout");
}

#[tokio::test]
async fn refused_connection_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{address}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: r, upstream: u }}\n"
    );
    let node = TestNode::start(&yaml).await;
    let reply = get(&node.url("/")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_code(), "upstream_connect_failed");
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener whose accept queue is full drops further SYNs, so a
    // connect to it hangs: a connect timeout without leaving loopback.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{address}\"], timeouts: {{ connect: 300ms }}, retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: r, upstream: u }}\n"
    );
    let node = TestNode::start(&yaml).await;
    let reply = get(&node.url("/")).await;
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert_eq!(reply.error_code(), "upstream_connect_timeout");
    drop(socket);
}

#[tokio::test]
async fn stalled_response_bodies_are_cut_after_the_idle_timeout() {
    let upstream = MockUpstream::start(|_| async {
        let stream = futures_util::stream::once(async {
            Ok(http_body::Frame::data(Bytes::from_static(b"partial")))
        })
        .chain(futures_util::stream::pending());
        let mut response = http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response.headers_mut().insert("content-length", 100.into());
        response
    })
    .await;
    let node = TestNode::start(&one_route(&upstream, ", timeouts: { idle: 300ms }")).await;
    let response = http1()
        .request(
            Request::get(node.url("/stall"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "the body is aborted, not left hanging"
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_408() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream, ", timeouts: { idle: 300ms }")).await;
    let answer = raw(
        node.proxy,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(answer.contains("client_body_timeout"), "{answer}");
}

/// An upstream that answers every request on a connection with `head`
/// and a two-byte body, whatever the request (HTTP/1.1, kept alive).
async fn fixed_upstream(head: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = format!("{head}Content-Length: 2\r\n\r\nok");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    address
}

/// The upstream's response fields reach the client as they came on the
/// HTTP/1.1 fast path (which does not parse them into a map when nothing
/// needs one), over HTTP/2 (which does), and through a headers policy:
/// alike in every case but the letter case of HTTP/1.1 names. Hop-by-hop
/// fields go, repeated fields stay, and the gateway's own fields replace
/// the upstream's.
#[tokio::test]
async fn upstream_response_fields_come_through_alike_on_every_path() {
    let upstream = fixed_upstream(concat!(
        "HTTP/1.1 200 OK\r\n",
        "X-Request-Id: from-upstream\r\n",
        "Keep-Alive: timeout=5\r\n",
        "Set-Cookie: a=1\r\n",
        "set-cookie: b=2\r\n",
        "X-Mixed-Case: Value\r\n",
        "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        "Proxy-Authenticate: Basic\r\n",
        "X-Debug-Token: secret\r\n",
        "Connection: keep-alive\r\n",
    ))
    .await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{upstream}"] }} }}
routes:
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: u }}
  - name: policy
    match: {{ path_prefix: /policy }}
    upstream: u
    policies:
      headers: {{ remove: [X-Debug-Token], set: {{ X-Frame-Options: DENY }} }}
"#
    );
    let node = TestNode::start(&yaml).await;

    // The fast path, read byte for byte.
    let text = raw(
        node.proxy,
        b"GET /plain HTTP/1.1\r\nHost: x\r\nX-Request-Id: from-client\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert_eq!(body, "ok");
    let lines: Vec<&str> = head.lines().skip(1).collect();
    let named = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|line| line.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(named("x-request-id"), ["from-client"], "{head}");
    assert_eq!(named("set-cookie"), ["a=1", "b=2"], "{head}");
    assert_eq!(named("x-mixed-case"), ["Value"], "{head}");
    assert_eq!(named("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{head}");
    assert_eq!(named("content-length"), ["2"], "{head}");
    assert_eq!(named("x-debug-token"), ["secret"], "{head}");
    for hop in ["keep-alive", "proxy-authenticate", "connection"] {
        assert!(named(hop).is_empty(), "{hop} came through:\n{head}");
    }

    // HTTP/2 and the policy route: the same fields, through a map.
    let h2 = h2c();
    let one = http1();
    for (client, path) in [(&h2, "/plain"), (&one, "/policy"), (&h2, "/policy")] {
        let reply = send_with(
            client,
            Request::get(node.url(path))
                .header("x-request-id", "from-client")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        let all = |name: &str| -> Vec<String> {
            reply
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        let at = format!("{path} over {:?}", reply.version);
        assert_eq!(reply.status, 200, "{at}");
        assert_eq!(&reply.body[..], b"ok", "{at}");
        assert_eq!(all("x-request-id"), ["from-client"], "{at}");
        assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{at}");
        assert_eq!(all("x-mixed-case"), ["Value"], "{at}");
        assert_eq!(all("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{at}");
        for hop in ["keep-alive", "proxy-authenticate", "connection"] {
            assert!(all(hop).is_empty(), "{hop} came through {at}");
        }
        if path == "/policy" {
            assert!(all("x-debug-token").is_empty(), "removed {at}");
            assert_eq!(all("x-frame-options"), ["DENY"], "{at}");
        } else {
            assert_eq!(all("x-debug-token"), ["secret"], "{at}");
        }
    }
}
