//! Slow and flooding clients (docs/hardening.md): each case shows the
//! abusive connection is closed (or its requests refused) while another
//! client is still served. HTTP/2 frames are written by hand. Time bounds
//! are generous: they show that a close happened, not how fast.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{h2c, raw, raw_status, send_with};
use crate::upstream::{full, json};
use crate::{MockUpstream, TestNode, eventually, get};

/// Generous bound for "the gateway closed it" when the deadline is 1 s.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

fn one_route(upstream: &MockUpstream) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    )
}

/// A node with 1 s header-read and write-idle deadlines.
async fn strict_node(upstream: &MockUpstream) -> TestNode {
    TestNode::start_with(&one_route(upstream), |raw| {
        raw.timeouts.header_read = Duration::from_secs(1);
        raw.timeouts.write_idle = Duration::from_secs(1);
    })
    .await
}

fn closed(reason: &str) -> String {
    format!("meridian_connections_closed_total{{listener=\"proxy\",reason=\"{reason}\"}}")
}

/// Another client gets its answer.
async fn others_are_served(node: &TestNode) {
    let reply = get(&node.url("/other")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// Reads until the peer closes (EOF or reset); what was read, or `None`
/// when the connection is still open after `limit`.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().map(|()| out)
}

// === slowloris ===

#[tokio::test]
async fn slowloris_dribbling_a_head_is_closed_and_others_are_served() {
    let upstream = MockUpstream::echo("u").await;
    let node = strict_node(&upstream).await;
    let stream = TcpStream::connect(node.proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let dribble = tokio::spawn(async move {
        let _ = write.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
        for i in 0..100u32 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    others_are_served(&node).await;
    let answer = read_until_closed(&mut read, CLOSED_WITHIN).await;
    assert!(answer.is_some(), "the dribbling client is still connected");
    dribble.abort();
    others_are_served(&node).await;
    assert!(node.metric(&closed("header_timeout")) >= 1.0);
}

#[tokio::test]
async fn silent_and_half_started_connections_are_closed_on_every_protocol() {
    let upstream = MockUpstream::echo("u").await;
    let node = strict_node(&upstream).await;
    // Nothing at all: hyper is still detecting the protocol.
    let mut silent = TcpStream::connect(node.proxy).await.unwrap();
    // The HTTP/2 preface and SETTINGS, then no request.
    let mut preface = H2::connect(node.proxy).await;
    // HEADERS without END_HEADERS: the head never completes.
    let mut partial = H2::connect(node.proxy).await;
    partial
        .send(&frame(HEADERS, END_STREAM, 1, &get_block()))
        .await
        .unwrap();
    others_are_served(&node).await;
    assert!(
        read_until_closed(&mut silent, CLOSED_WITHIN)
            .await
            .is_some(),
        "a silent connection stays open"
    );
    assert!(
        preface.closed_or_goaway(CLOSED_WITHIN).await.is_some(),
        "an HTTP/2 connection without a request stays open"
    );
    assert!(
        partial.closed_or_goaway(CLOSED_WITHIN).await.is_some(),
        "an HTTP/2 connection with an unfinished head stays open"
    );
    others_are_served(&node).await;
}

// === slow POST ===

#[tokio::test]
async fn slow_post_gets_408_and_the_connection_closes() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start_with(&one_route(&upstream), |raw| {
        raw.limits.min_body_rate = "1KiB/s".into();
        raw.timeouts.body_rate_grace = Duration::from_secs(1);
    })
    .await;
    // A client sending at full speed is not affected.
    let fast = raw(
        node.proxy,
        format!(
            "POST /fast HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n{}",
            "x".repeat(100_000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&fast), 200, "{fast}");

    let stream = TcpStream::connect(node.proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let dribble = tokio::spawn(async move {
        let _ = write
            .write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            .await;
        // 100 bytes/s, a tenth of the minimum.
        for _ in 0..200 {
            if write.write_all(&[b'x'; 10]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    others_are_served(&node).await;
    let answer = read_until_closed(&mut read, CLOSED_WITHIN)
        .await
        .expect("the slow client's connection is closed");
    dribble.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(answer.contains("client_body_too_slow"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(
        node.metric("meridian_slow_request_bodies_total{reason=\"too_slow\"}"),
        1.0
    );
    others_are_served(&node).await;
}

// === slow read ===

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_others_are_served() {
    let upstream = MockUpstream::start(|seen| async move {
        if seen.uri == "/big" {
            let mut response = http::Response::new(full(Bytes::from(vec![b'x'; 32 << 20])));
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            response
        } else {
            json(StatusCode::OK, serde_json::json!({"ok": true}))
        }
    })
    .await;
    let node = strict_node(&upstream).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(node.proxy).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read: the gateway's writes stall.
    let cut = eventually(Duration::from_secs(20), || async {
        node.metric(&closed("write_idle")) >= 1.0
    })
    .await;
    assert!(cut, "the gateway kept the non-reading client");
    others_are_served(&node).await;
    let received = read_until_closed(&mut stream, CLOSED_WITHIN)
        .await
        .expect("the connection ends");
    assert!(
        received.len() < 32 << 20,
        "the whole body arrived ({} bytes)",
        received.len()
    );
}

#[tokio::test]
async fn an_h2_client_that_withholds_flow_control_window_is_closed() {
    let upstream = MockUpstream::start(|_| async {
        http::Response::new(full(Bytes::from(vec![b'x'; 1 << 20])))
    })
    .await;
    let node = strict_node(&upstream).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the gateway may send no DATA, and
    // the client reads the socket all along, so no write is ever pending.
    let mut h2 = H2::open(node.proxy, None, &[0, 4, 0, 0, 0, 0]).await;
    h2.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .unwrap();
    others_are_served(&node).await;
    assert!(
        h2.closed_or_goaway(CLOSED_WITHIN).await.is_some(),
        "the connection holding the response back stays open"
    );
    assert!(node.metric(&closed("write_idle")) >= 1.0);
    others_are_served(&node).await;
}

// === HTTP/2 floods ===

#[tokio::test]
async fn h2_rapid_reset_burst_gets_goaway_and_others_are_served() {
    let upstream = MockUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        json(StatusCode::OK, serde_json::json!({"ok": true}))
    })
    .await;
    let node = TestNode::start_with(&one_route(&upstream), |raw| {
        raw.limits.max_reset_streams = 50;
    })
    .await;
    let mut h2 = H2::connect(node.proxy).await;
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block(),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let _ = h2.send(&burst).await;
    let outcome = h2.closed_or_goaway(CLOSED_WITHIN).await;
    assert!(outcome.is_some(), "the flooding connection stays open");
    others_are_served(&node).await;
    assert!(
        upstream.count() < 2000,
        "every reset request reached the upstream"
    );
}

#[tokio::test]
async fn h2_resets_of_accepted_streams_are_counted_and_close_the_connection() {
    let upstream = MockUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        json(StatusCode::OK, serde_json::json!({"ok": true}))
    })
    .await;
    let node = TestNode::start_with(&one_route(&upstream), |raw| {
        raw.limits.max_reset_streams = 20;
    })
    .await;
    let mut h2 = H2::connect(node.proxy).await;
    // Each stream has reached the upstream before its reset is sent, so
    // h2's own pending-accept limit does not apply; the gateway's count does.
    let mut open = true;
    for i in 0..40u32 {
        let stream = 2 * i + 1;
        let headers = frame(HEADERS, END_STREAM | END_HEADERS, stream, &get_block());
        let accepted = h2.send(&headers).await.is_ok()
            && eventually(Duration::from_secs(5), || async {
                upstream.count() == i as usize + 1
            })
            .await;
        let reset = frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
        if !accepted || h2.send(&reset).await.is_err() {
            open = false;
            break;
        }
    }
    if open {
        assert!(
            h2.closed_or_goaway(CLOSED_WITHIN).await.is_some(),
            "the connection that cancels every request stays open"
        );
    }
    assert_eq!(node.metric(&closed("rapid_reset")), 1.0);
    others_are_served(&node).await;
}

#[tokio::test]
async fn h2_continuation_floods_are_cut() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&one_route(&upstream)).await;
    // Empty CONTINUATION frames (bounded by count), then ones that carry
    // header fields (bounded by the header list size).
    for payload in [Vec::new(), literal_header(b"x-flood", &[b'a'; 200])] {
        let mut h2 = H2::connect(node.proxy).await;
        h2.send(&frame(HEADERS, END_STREAM, 1, &get_block()))
            .await
            .unwrap();
        let continuation = frame(CONTINUATION, 0, 1, &payload);
        let writer = async {
            for _ in 0..20_000 {
                if h2.send(&continuation).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSED_WITHIN, writer).await;
        let outcome = h2.closed_or_goaway(CLOSED_WITHIN).await;
        assert!(
            outcome.is_some(),
            "a CONTINUATION flood of {}-byte frames is not cut",
            payload.len()
        );
        if let Some(Some(code)) = outcome {
            assert_eq!(code, ENHANCE_YOUR_CALM, "GOAWAY code");
        }
        others_are_served(&node).await;
    }
    let flooded = upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|seen| seen.uri == "/")
        .count();
    assert_eq!(flooded, 0, "a flooded request reached the upstream");
}

#[tokio::test]
async fn h2_ping_and_settings_floods_from_a_non_reading_client_are_cut() {
    let upstream = MockUpstream::echo("u").await;
    let node = strict_node(&upstream).await;
    let ping = frame(PING, 0, 0, &[7; 8]);
    let settings = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    for (name, flood) in [("PING", ping), ("SETTINGS", settings)] {
        let mut h2 = H2::open(node.proxy, Some(4096), &[]).await;
        // One request first, so that the connection is past its
        // first-request deadline and only the write-idle timeout applies.
        h2.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
            .await
            .unwrap();
        let batch = flood.repeat(1000);
        // Writes stop succeeding once the gateway closes the connection.
        let writer = async {
            loop {
                if h2.send(&batch).await.is_err() {
                    return;
                }
            }
        };
        let cut = tokio::time::timeout(Duration::from_secs(30), writer).await;
        assert!(
            cut.is_ok(),
            "a {name} flood from a client that does not read is not cut"
        );
        others_are_served(&node).await;
    }
    assert!(node.metric(&closed("write_idle")) >= 2.0);
}

// === overload ===

#[tokio::test]
async fn overload_is_shed_with_503_and_retry_after() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let gate = gate.clone();
        MockUpstream::start(move |_| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("open").forget();
                json(StatusCode::OK, serde_json::json!({"ok": true}))
            }
        })
        .await
    };
    let node = TestNode::start_with(&one_route(&upstream), |raw| {
        raw.limits.max_in_flight = 2;
    })
    .await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = node.url("/held");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async { upstream.count() == 2 }).await,
        "two requests in flight"
    );
    // Both HTTP/1.1 and HTTP/2 requests are shed at the cap.
    let shed = get(&node.url("/more")).await;
    assert_eq!(shed.status, 503, "{:?}", shed.body);
    assert_eq!(shed.header("retry-after"), "1");
    assert_eq!(shed.error_code(), "overloaded");
    let shed = send_with(
        &h2c(),
        Request::get(node.url("/more"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(shed.status, 503);
    assert_eq!(
        upstream.count(),
        2,
        "shed requests never reach the upstream"
    );
    assert_eq!(
        node.metric("meridian_requests_shed_total{listener=\"proxy\",reason=\"in_flight\"}"),
        2.0
    );
    gate.add_permits(100);
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    // Capacity is back once the responses ended.
    assert_eq!(get(&node.url("/again")).await.status, 200);
}

// === raw HTTP/2 ===

const DATA_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET http://a/`: static-table indices, and `:authority`
/// as a literal without indexing.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a']
}

/// HPACK literal header field without indexing, new name.
fn literal_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127 * 2);
    let mut out = vec![0x00];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    // 7-bit prefix integer.
    if value.len() < 127 {
        out.push(value.len() as u8);
    } else {
        out.push(127);
        out.push((value.len() - 127) as u8);
    }
    out.extend_from_slice(value);
    out
}

/// A hand-driven HTTP/2 client connection.
struct H2 {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl H2 {
    /// Connects, exchanges the preface and SETTINGS (acknowledging the
    /// gateway's).
    async fn connect(address: SocketAddr) -> Self {
        Self::open(address, None, &[]).await
    }

    /// Connects with a small socket receive buffer, or announcing `settings`.
    async fn open(address: SocketAddr, recv_buffer: Option<u32>, settings: &[u8]) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(address).await.unwrap();
        let mut h2 = Self {
            stream,
            buffer: Vec::new(),
        };
        let mut hello = DATA_PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, settings));
        h2.send(&hello).await.unwrap();
        let settings = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match h2.next_frame().await {
                    Some((SETTINGS, flags, _, _)) if flags & ACK == 0 => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(settings, Ok(true), "the gateway sends its SETTINGS");
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        h2
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame: (type, flags, stream, payload); `None` at EOF or error.
    async fn next_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]])
                    as usize;
                if self.buffer.len() >= 9 + len {
                    let head: Vec<u8> = self.buffer.drain(..9).collect();
                    let payload = self.buffer.drain(..len).collect();
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                    return Some((head[3], head[4], stream & 0x7fff_ffff, payload));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits for a GOAWAY (its error code) or the end of the connection
    /// (`None` inside); `None` when neither came within `limit`.
    async fn closed_or_goaway(&mut self, limit: Duration) -> Option<Option<u32>> {
        tokio::time::timeout(limit, async {
            loop {
                match self.next_frame().await {
                    Some((GOAWAY, _, _, payload)) if payload.len() >= 8 => {
                        return Some(u32::from_be_bytes([
                            payload[4], payload[5], payload[6], payload[7],
                        ]));
                    }
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .ok()
    }
}
