//! What the binary tests share.

use std::net::TcpListener;

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
