//! Integration cases, one file per area of the data plane.

mod cluster;
mod edge;
mod introspection;
mod jwt;
mod keys;
mod observe;
mod pools;
mod proxy;
mod reload;
mod routing;
mod versioning;
