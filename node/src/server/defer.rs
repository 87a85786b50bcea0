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

/// The period `listener` defers for, as the kernel rounded it.
#[cfg(all(test, target_os = "linux"))]
pub(super) fn get(listener: &impl std::os::fd::AsFd) -> std::io::Result<Duration> {
    let seconds = nix::sys::socket::getsockopt(listener, option::TcpDeferAccept)?;
    Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}
