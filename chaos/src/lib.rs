//! Fault injection for Meridian's chaos tests.
//!
//! This kernel has no `tc netem`, so latency, loss, duplication, reordering and
//! bandwidth caps are made in userspace: a [`relay::Relay`] sits between two
//! nodes, one listener per directed link, and each node's config points at the
//! relay instead of its peer (TESTING-NOTES.md §3). Hard partitions that must
//! catch traffic bypassing the relay are left to nft.
//!
//! Runs are seeded: a relay built with the same seed, with its links created in
//! the same order, makes the same loss, duplication and jitter decisions for the
//! same sequence of datagrams. Print the seed, replay the run.
//!
//! # Layout
//!
//! - [`relay`]: the [`Relay`](relay::Relay), its [`LinkHandle`](relay::LinkHandle)
//!   control surface and the error type.
//!   - `relay/link.rs`: one direction of a link: [`LinkParams`](relay::LinkParams),
//!     the seeded per-datagram decisions, the token bucket and the counters. No I/O.
//!   - `relay/queue.rs`: the bounded timer heap that releases datagrams whole.
//!   - `relay/udp.rs`: the UDP listener, the NAT-like flow map and the release tasks.
//!   - `relay/tcp.rs`: the TCP listener and the two delayed pumps per connection.
//!
//! Every module keeps its tests in a sibling `tests.rs`. This crate depends on no
//! other Meridian crate, and no production crate depends on it.

pub mod relay;
