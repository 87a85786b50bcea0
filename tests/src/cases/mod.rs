//! Integration cases, one file per area of the data plane.

mod cluster;
mod edge;
mod flood;
mod keys;
mod observe;
mod policies;
mod pools;
mod proxy;
mod reload;
mod routing;
mod tls;
mod versioning;
