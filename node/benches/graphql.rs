//! Per-request overhead of a GraphQL route, network excluded: reading the
//! JSON request, the nesting pre-check, parsing, validation (with the depth
//! and complexity limits) and execution planning of a two-field query,
//! each field rendering its upstream path ([`RouteGraphql::check`], which
//! calls nothing). The anchor is the JSON decode of the request alone.
//!
//! Run: `cargo bench -p node --bench graphql`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use node::metrics::Metrics;
use node::pipeline::graphql::{Input, RouteGraphql};
use node::proxy::pool::Pool;
use raft::model::GatewayConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DOC: &str = r#"
upstreams:
  users: { targets: ["127.0.0.1:1"] }
  orders: { targets: ["127.0.0.1:2"] }
routes:
  - name: graph
    match: { path: /graphql }
    upstream: users
    graphql:
      types:
        User:
          id: ID!
          name: String
          orders: { type: "[Order!]", upstream: orders, path: "/users/{parent.id}/orders" }
        Order: { id: ID!, total: Float }
      query:
        user: { type: User, args: { id: ID! }, upstream: users, path: "/users/{args.id}" }
        order: { type: Order, args: { id: ID! }, upstream: orders, path: "/orders/{args.id}" }
"#;

const BODY: &str = r#"{"query":"query Q($id: ID!) { user(id: $id) { id name } order(id: \"o-1\") { id total } }","variables":{"id":"42"},"operationName":"Q"}"#;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = GatewayConfig::parse(DOC).expect("valid");
    let metrics = Metrics::new();
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let route = &config.routes[0];
    let graphql = runtime.block_on(async {
        let upstreams: HashMap<_, _> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    Pool::new(name, u, &metrics, &tasks, &shutdown, None),
                )
            })
            .collect();
        RouteGraphql::compile(route.graphql.as_ref().unwrap(), route, &upstreams, &metrics)
            .expect("schema builds")
    });
    runtime
        .block_on(graphql.check(Input::from_json(BODY.as_bytes()).unwrap()))
        .expect("the query passes");

    let mut group = c.benchmark_group("graphql");
    group.bench_function("decode request (anchor)", |b| {
        b.iter(|| black_box(Input::from_json(black_box(BODY.as_bytes())).unwrap()))
    });
    group.bench_function("two-field query: decode+parse+validate+plan", |b| {
        b.to_async(&runtime).iter(|| async {
            let input = Input::from_json(black_box(BODY.as_bytes())).unwrap();
            graphql.check(input).await.unwrap();
        })
    });
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
