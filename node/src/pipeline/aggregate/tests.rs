use serde_json::json;

use super::*;

fn aggregate(pattern: &str) -> RouteAggregate {
    RouteAggregate {
        pattern: PathPattern::parse(pattern).unwrap().segments,
        parts: Vec::new(),
        route: "r".into(),
    }
}

#[test]
fn params_are_captured_from_the_route_pattern() {
    let a = aggregate("/dashboard/{id}/x/{tab}");
    assert_eq!(
        a.capture("/dashboard/42/x/orders"),
        [("id", "42"), ("tab", "orders")]
    );
    // A prefix pattern captures from the leading segments.
    let a = aggregate("/t/{tenant}");
    assert_eq!(a.capture("/t/acme/more/path"), [("tenant", "acme")]);
    assert!(aggregate("/plain").capture("/plain").is_empty());
}

#[test]
fn paths_render_with_escaped_values() {
    let template = PathTemplate::parse("/v1/orders?user={id}&x={{y}}").unwrap();
    let rendered = render(&template, &[("id", "42")]).unwrap();
    assert_eq!(rendered.as_str(), "/v1/orders?user=42&x={y}");
    // A captured value cannot add query parameters or path segments.
    let rendered = render(&template, &[("id", "a&b=c;d")]).unwrap();
    assert_eq!(rendered.as_str(), "/v1/orders?user=a%26b%3Dc%3Bd&x={y}");
    // Existing escapes are kept as they are.
    let template = PathTemplate::parse("/v1/users/{id}").unwrap();
    assert_eq!(
        render(&template, &[("id", "a%20b")]).unwrap().as_str(),
        "/v1/users/a%20b"
    );
    // A parameter without a value (validation rules it out) renders nothing.
    assert!(render(&template, &[]).is_none());
}

#[test]
fn merge_applies_each_part_policy() {
    let timeout = PartError::new("upstream_timeout", StatusCode::GATEWAY_TIMEOUT);
    let failed = PartError::new("upstream_status", StatusCode::INTERNAL_SERVER_ERROR);
    let (object, partial) = merge([
        ("user", OnError::Fail, Ok(json!({ "id": 1 }))),
        ("orders", OnError::Omit, Err(timeout.clone())),
        ("prefs", OnError::Marker, Err(failed.clone())),
    ])
    .unwrap();
    assert_eq!(
        Value::Object(object),
        json!({
            "user": { "id": 1 },
            "prefs": { "error": { "code": "upstream_status", "status": 500 } },
        })
    );
    assert_eq!(partial, ["orders", "prefs"]);

    let error = merge([
        ("user", OnError::Fail, Err(failed.clone())),
        ("orders", OnError::Omit, Ok(json!([]))),
    ])
    .unwrap_err();
    assert_eq!(error, ("user", failed));
}
