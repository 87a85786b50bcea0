//! `TCP_DEFER_ACCEPT`: the kernel completes the handshake but queues the
//! connection for `accept` only once its first data segment has come (or,
//! when nothing comes, once the period has passed: then it is handed over
//! as usual and the header-read timeout deals with it).
//!
//! Every client of these listeners speaks first (an HTTP request, a TLS
//! ClientHello), so nothing waits that would not have waited anyway. What
//! it saves: tokio takes an accepted socket as readable and tries a read at
//! once, which on a fresh connection often finds nothing yet (an `EAGAIN`
//! system call, then a wait for the event anyway); deferred, the first read
//! finds the request. A connection that sends nothing costs no task, no
//! buffer and no slot under `limits.max-connections` until the period has
//! passed. nginx's `deferred`, HAProxy's `defer-accept` and Apache's
//! `AcceptFilter` set the same option.
//!
//! The kernel counts the period in SYN-ACK retransmissions, so it rounds a
//! period up along their schedule (1, 3, 7, 15, 31 … seconds).

use std::time::Duration;

#[cfg(target_os = "linux")]
mod option {
    use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

    // nix has no `TCP_DEFER_ACCEPT`; `sockopt_impl!` is its documented way
    // to declare an option it lacks (the `setsockopt` call is nix's code,
    // the value an `int` of seconds as tcp(7) says).
    sockopt_impl!(
        /// `TCP_DEFER_ACCEPT`, in seconds.
        TcpDeferAccept,
        Both,
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        libc::c_int
    );
}

/// Defers accepting on `socket` (a listener, before `listen`) for up to
/// `period`; zero turns deferral off. A no-op where the option does not
/// exist.
pub(super) fn set(socket: &socket2::Socket, period: Duration) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let seconds = libc::c_int::try_from(period.as_secs()).unwrap_or(libc::c_int::MAX);
        nix::sys::socket::setsockopt(socket, option::TcpDeferAccept, &seconds)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, period);
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::option;
    use crate::server::bind;

    /// The period `listener` defers for, as the kernel rounded it.
    fn get(listener: &impl std::os::fd::AsFd) -> std::io::Result<Duration> {
        let seconds = nix::sys::socket::getsockopt(listener, option::TcpDeferAccept)?;
        Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
    }

    /// A deferring listener hands over a connection once its first bytes
    /// have come, and they are there to read; one that does not defer
    /// hands it over at once.
    #[tokio::test]
    async fn a_connection_is_accepted_once_it_has_sent_something() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(2)).unwrap();
        // The kernel rounds up along its SYN-ACK retransmissions (2 s
        // becomes 3 s on Linux since 2.6.32).
        assert!(get(&listener).unwrap() >= Duration::from_secs(2));
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), listener.accept())
                .await
                .is_err(),
            "accepted before the client sent anything"
        );
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (mut accepted, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accepted once the client sent")
            .unwrap();
        let mut first = [0; 16];
        accepted.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET / HTTP/1.1\r\n");

        let listener = bind("127.0.0.1:0".parse().unwrap(), Duration::ZERO).unwrap();
        assert_eq!(get(&listener).unwrap(), Duration::ZERO);
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accepted without any bytes")
            .unwrap();
    }
}
