//! Integration cases, one file per area of the data plane.

mod aggregate;
mod cluster;
mod dns;
mod edge;
mod fallback;
mod flood;
mod global;
mod graphql;
mod grpc;
mod introspection;
mod jwt;
mod keys;
mod observe;
mod policies;
mod pools;
mod proxy;
mod ratelimit;
mod regions;
mod reload;
mod routing;
mod tls;
mod transform;
mod versioning;
