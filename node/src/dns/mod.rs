//! DNS: upstream discovery and the authoritative responder.
//!
//! # Layout
//! - [`resolver`]: `[resolver]` in node.toml and the node's hickory resolver.
//! - [`discovery`]: targets given as names (A/AAAA) or `srv:` names,
//!   re-resolved in the background as their TTLs run out, last known good
//!   addresses kept when DNS fails.
//! - [`responder`]: `[dns]`, the authoritative responder (hickory-server)
//!   that answers for the gateway's names with the addresses of healthy
//!   regions only.

pub mod discovery;
pub mod resolver;
pub mod responder;
