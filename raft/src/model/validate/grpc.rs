//! Rules of a route's `grpc` block:
//! - `descriptor_set` is base64 (at most 4 MiB decoded) of a
//!   `FileDescriptorSet` that holds its imports;
//! - `service` names a service of the set, and the set defines
//!   `google.api.http` (it includes `google/api/annotations.proto`);
//! - every unary and server-streaming method carries a `google.api.http`
//!   rule (client- and bidirectional-streaming methods are not transcoded)
//!   whose path template parses, whose variables name singular scalar
//!   fields of the request message, whose `body` is `*` or one of its
//!   fields (none on `GET`), and which does not use `response_body`;
//! - the route's `upstream` speaks h2 (`protocol: h2`);
//! - a route that transcodes neither aggregates nor answers GraphQL.

use super::super::grpc::Service;
use super::super::{Route, UpstreamProtocol};
use super::{Checker, GatewayConfig};

pub(super) fn check(c: &mut Checker, key: &str, route: &Route, config: &GatewayConfig) {
    let Some(grpc) = &route.grpc else {
        return;
    };
    let gkey = format!("{key}.grpc");
    if route.aggregate.is_some() || route.graphql.is_some() {
        c.fail(
            gkey.clone(),
            &grpc.service,
            "cannot be combined with `aggregate` or `graphql` on one route",
        );
    }
    if let Some(upstream) = config.upstreams.get(&route.upstream)
        && upstream.protocol != UpstreamProtocol::H2
    {
        c.fail(
            format!("{key}.upstream"),
            &route.upstream,
            "must name an upstream with `protocol: h2` on a route with `grpc`",
        );
    }
    if let Err(problems) = Service::compile(grpc) {
        for problem in problems {
            c.fail(
                format!("{gkey}.{}", problem.key),
                problem.value,
                problem.rule,
            );
        }
    }
}
