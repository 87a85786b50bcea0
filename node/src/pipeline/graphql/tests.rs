use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;

const DOC: &str = r#"
upstreams:
  users: { targets: ["127.0.0.1:1"] }
  orders: { targets: ["127.0.0.1:2"] }
routes:
  - name: graph
    match: { path: /graphql }
    upstream: users
    graphql:
      max_depth: 4
      max_complexity: 6
      types:
        User:
          id: ID!
          name: String
          orders: { type: "[Order!]", upstream: orders, path: "/users/{parent.id}/orders" }
        Order:
          id: ID!
          total: Float
          user: { type: User, upstream: users, path: "/users/{parent.user_id}" }
      query:
        user: { type: User, args: { id: ID! }, upstream: users, path: "/users/{args.id}" }
        order: { type: Order, args: { id: ID! }, upstream: orders, path: "/orders/{args.id}" }
"#;

fn compiled() -> RouteGraphql {
    let config = model::GatewayConfig::parse(DOC).expect("valid");
    let metrics = Metrics::new();
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let upstreams = config
        .upstreams
        .iter()
        .map(|(name, u)| {
            (
                name.clone(),
                Pool::new(name, u, &metrics, &tasks, &shutdown, None),
            )
        })
        .collect();
    let route = &config.routes[0];
    RouteGraphql::compile(route.graphql.as_ref().unwrap(), route, &upstreams, &metrics)
        .expect("schema builds")
}

fn input(query: &str) -> Input {
    Input::from_json(json!({ "query": query }).to_string().as_bytes()).unwrap()
}

async fn refusal(query: &str) -> Option<&'static str> {
    compiled().check(input(query)).await.err().map(|e| e.code())
}

#[tokio::test]
async fn valid_queries_pass_the_checks() {
    assert_eq!(
        refusal("{ user(id: 1) { id name } order(id: 2) { total } }").await,
        None
    );
    assert_eq!(
        refusal("query Q($id: ID!) { user(id: $id) { orders { id } } }").await,
        None
    );
}

#[tokio::test]
async fn refusals_are_named_by_their_rule() {
    assert_eq!(
        refusal("{ user(id: 1) { id ").await,
        Some("graphql_syntax_error")
    );
    assert_eq!(
        refusal("{ user(id: 1) { nope } }").await,
        Some("graphql_validation_failed")
    );
    assert_eq!(
        refusal("{ user { id } }").await,
        Some("graphql_validation_failed"),
        "a required argument is missing"
    );
    // Eight fields cost 8 > 6.
    assert_eq!(
        refusal("{ a: user(id: 1) { id name } b: user(id: 2) { id name } c: order(id: 3) { id } }")
            .await,
        Some("graphql_complexity_limit")
    );
    // Introspection is off by default.
    assert_eq!(
        refusal("{ __schema { types { name } } }").await,
        Some("graphql_validation_failed")
    );
}

#[tokio::test]
async fn depth_is_bounded_before_and_after_parsing() {
    let compiled = compiled();
    let code = |query: String| {
        let compiled = &compiled;
        async move { compiled.check(input(&query)).await.err().map(|e| e.code()) }
    };
    // Types may refer to each other: depth 4 passes, 5 does not.
    let four = "{ user(id: 1) { orders { user { id } } } }";
    assert_eq!(code(four.into()).await, None);
    let five = "{ user(id: 1) { orders { user { orders { id } } } } }";
    assert_eq!(code(five.into()).await, Some("graphql_depth_limit"));
    // Fragments hide depth from the bracket count; validation sees it.
    let hidden =
        "{ user(id: 1) { ...U } } fragment U on User { orders { user { orders { id } } } }";
    assert_eq!(code(hidden.into()).await, Some("graphql_depth_limit"));
    // Brackets nested far beyond the limit never reach the parser.
    let brackets = format!("{}{}", "{ a ".repeat(50_000), "}".repeat(50_000));
    assert_eq!(code(brackets).await, Some("graphql_depth_limit"));
}

#[test]
fn nesting_skips_strings_and_comments() {
    assert_eq!(nesting("{ a { b } }"), 2);
    assert_eq!(nesting(r#"{ a(x: "{{{{") }"#), 2);
    assert_eq!(nesting("{ a # {{{{\n }"), 1);
    assert_eq!(nesting(r#"{ a(x: """ {{{ \""" {{ """) }"#), 2);
    assert_eq!(nesting("}}}{"), 1);
}

#[test]
fn requests_are_read_from_json_and_query_strings() {
    let body = json!({ "query": "{ a }", "variables": { "id": 1 }, "operationName": "Q" });
    let parsed = Input::from_json(body.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.query, "{ a }");
    assert_eq!(parsed.operation_name.as_deref(), Some("Q"));
    assert_eq!(
        parsed.variables.into_value().into_json().unwrap(),
        json!({ "id": 1 })
    );

    let parsed =
        Input::from_query_string("query=%7B%20a%20%7D&variables=%7B%22id%22%3A2%7D").unwrap();
    assert_eq!(parsed.query, "{ a }");
    assert_eq!(
        parsed.variables.into_value().into_json().unwrap(),
        json!({ "id": 2 })
    );

    for bad in [
        &b"not json"[..],
        br#"{"variables": {}}"#,
        br#"{"query": "{ a }", "variables": [1]}"#,
        br#"{"query": ""}"#,
    ] {
        let error = Input::from_json(bad).unwrap_err();
        assert_eq!(error.code(), "graphql_invalid_request", "{bad:?}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        Input::from_query_string("query={a}&variables=nope")
            .unwrap_err()
            .code(),
        "graphql_invalid_request"
    );
}

fn coerce(value: Value, ty: &str) -> Result<Option<async_graphql::Value>, String> {
    let ty = TypeRef::parse(ty).unwrap();
    to_field_value(value, &ty)
        .map(|v| v.map(|v| v.as_value().cloned().unwrap_or(async_graphql::Value::Null)))
        .map_err(|e| e.message)
}

#[test]
fn upstream_values_are_coerced_to_the_field_type() {
    use async_graphql::Value as G;
    assert_eq!(coerce(json!("a"), "String"), Ok(Some(G::from("a"))));
    assert_eq!(coerce(json!(7), "String"), Ok(Some(G::from("7"))));
    assert_eq!(coerce(json!(7), "ID"), Ok(Some(G::from("7"))));
    assert_eq!(coerce(json!(7), "Int"), Ok(Some(G::from(7))));
    assert_eq!(coerce(json!(1.5), "Float"), Ok(Some(G::from(1.5))));
    assert_eq!(coerce(json!(true), "Boolean!"), Ok(Some(G::from(true))));
    assert_eq!(coerce(json!(null), "Int!"), Ok(None));
    assert!(
        coerce(json!(1u64 << 40), "Int")
            .unwrap_err()
            .contains("Int")
    );
    assert!(coerce(json!("7"), "Int").unwrap_err().contains("a string"));
    assert!(coerce(json!([1]), "String").is_err());
    assert!(
        coerce(json!({ "a": 1 }), "[Int]")
            .unwrap_err()
            .contains("list")
    );
    assert!(
        coerce(json!(1), "User")
            .unwrap_err()
            .contains("User object")
    );
    let list = TypeRef::parse("[Int]").unwrap();
    let value = to_field_value(json!([1, null, 3]), &list).unwrap().unwrap();
    assert_eq!(value.as_list().map(<[_]>::len), Some(3));
}
