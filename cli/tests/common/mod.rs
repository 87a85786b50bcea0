//! What the binary tests share. Each test binary uses part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A TCP port on loopback that was free a moment ago.
pub(crate) fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nodes `meridian dev` lists in its quick-start banner, as
/// (proxy, admin, region), from lines like
/// `  eu-west    node 1   proxy http://127.0.0.1:P   admin http://127.0.0.1:A`.
pub(crate) fn dev_nodes(banner: &str) -> Vec<(SocketAddr, SocketAddr, String)> {
    banner
        .lines()
        .filter(|l| l.contains(" node ") && l.contains("proxy http://"))
        .map(|l| {
            let field = |name: &str| -> SocketAddr {
                l.split(&format!("{name} http://"))
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let region = l.split_whitespace().next().unwrap().to_owned();
            (field("proxy"), field("admin"), region)
        })
        .collect()
}

/// A raw HTTP answer split into (status, head, body); status 0 when the
/// status line is missing or malformed.
pub(crate) fn split_answer(answer: &str) -> (u16, &str, &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}
