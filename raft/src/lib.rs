//! Meridian's replicated cluster state.
//!
//! Today this crate holds the pure model of the cluster-wide gateway
//! configuration (`gateway.yaml`): upstreams, routes and API versioning,
//! with the validation rules that every node applies before a configuration
//! can reach its data plane. The Raft wiring (openraft on sled, raft RPC over
//! the QUIC peer plane) builds on this model.
//!
//! # Layout
//! - [`model`]: the configuration types, parsing and validation. Pure data:
//!   no I/O, no async, so it can be unit-tested as plain values.
#![warn(missing_docs)]

pub mod model;
