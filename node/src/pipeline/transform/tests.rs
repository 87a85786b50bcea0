use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use raft::model::transform::{BodyTransform, Convert, Filter, HeaderOps, Move, Pointer};
use raft::model::{AuthMethod, ClaimNames};
use serde_json::{Value, json};

use super::template::{Compiled, Rendered, Vars};
use super::*;
use crate::pipeline::auth::{Consumer, Identity, Principal};

fn principal() -> Principal {
    let claims = json!({
        "sub": "u-1", "tenant": "t-9", "roles": ["a", "b"], "n": 7,
        "https://x.io/org": "acme", "obj": { "k": 1 }, "bad": "x\ny",
    });
    let identity = Identity::from_claims(
        AuthMethod::Jwt,
        claims.as_object().unwrap(),
        &ClaimNames::default(),
        None,
    )
    .unwrap();
    Principal {
        method: AuthMethod::Jwt,
        key_id: None,
        consumer: Some(Arc::new(Consumer::new(&raft::model::Consumer {
            name: "acme".into(),
            id: Some("c-1".into()),
            plan: None,
        }))),
        identity: Some(Arc::new(identity)),
    }
}

fn with_vars<T>(principal: Option<&Principal>, f: impl FnOnce(&Vars<'_>) -> T) -> T {
    let request_id = HeaderValue::from_static("rid-1");
    let vars = Vars {
        principal,
        route: Some("orders"),
        request_id: &request_id,
        method: &Method::POST,
        path: "/orders/1",
        host: "api.example.com",
        client_ip: "192.0.2.7".parse().unwrap(),
    };
    f(&vars)
}

fn render(template: &str, principal: Option<&Principal>) -> Rendered {
    with_vars(principal, |vars| {
        Compiled::new(template).unwrap().render(vars)
    })
}

fn value(text: &'static str) -> Rendered {
    Rendered::Value(HeaderValue::from_static(text))
}

#[test]
fn templates_render_every_variable() {
    let p = principal();
    let p = Some(&p);
    assert_eq!(
        render("{consumer.id}/{consumer.name}", p),
        value("c-1/acme")
    );
    assert_eq!(render("{jwt.claims.tenant}", p), value("t-9"));
    assert_eq!(render("{jwt.claims.roles}", p), value("a,b"));
    assert_eq!(render("{jwt.claims.n}", p), value("7"));
    assert_eq!(render("{jwt.claims.https://x.io/org}", p), value("acme"));
    assert_eq!(render("{auth.method}", p), value("jwt"));
    assert_eq!(
        render(
            "{route.name} {request.id} {request.method} {request.path} {request.host}",
            p
        ),
        value("orders rid-1 POST /orders/1 api.example.com")
    );
    assert_eq!(render("ip={client.ip}", None), value("ip=192.0.2.7"));
    assert_eq!(render("{{literal}}", None), value("{literal}"));
}

#[test]
fn missing_values_skip_and_invalid_values_are_dropped() {
    let p = principal();
    assert_eq!(render("{consumer.id}", None), Rendered::Missing);
    assert_eq!(render("x-{jwt.claims.nope}", Some(&p)), Rendered::Missing);
    assert_eq!(render("{jwt.claims.obj}", Some(&p)), Rendered::Missing);
    assert_eq!(render("{consumer.plan}", Some(&p)), Rendered::Missing);
    assert_eq!(render("{jwt.claims.bad}", Some(&p)), Rendered::Invalid);
}

#[test]
fn header_operations_apply_in_order_and_count_drops() {
    let ops = HeaderOps {
        remove: vec!["X-Debug".into()],
        rename: [("X-Old".to_owned(), "X-New".to_owned())].into(),
        set: [
            ("X-Tenant".to_owned(), "{jwt.claims.tenant}".to_owned()),
            ("X-Gone".to_owned(), "{consumer.id}".to_owned()),
            ("X-Bad".to_owned(), "{jwt.claims.bad}".to_owned()),
        ]
        .into(),
        add: [("X-Via".to_owned(), "gw-{route.name}".to_owned())].into(),
    };
    let plan = HeaderPlan::new(&ops);
    let mut headers = HeaderMap::new();
    headers.insert("x-debug", HeaderValue::from_static("1"));
    headers.append("x-old", HeaderValue::from_static("a"));
    headers.append("x-old", HeaderValue::from_static("b"));
    headers.insert("x-new", HeaderValue::from_static("replaced"));
    headers.insert("x-tenant", HeaderValue::from_static("client-said"));
    headers.insert("x-via", HeaderValue::from_static("proxy-1"));
    let p = principal();
    let mut no_consumer = p.clone();
    no_consumer.consumer = None;
    let dropped = with_vars(Some(&no_consumer), |vars| plan.apply(vars, &mut headers));
    assert_eq!(dropped, 1);
    assert!(!headers.contains_key("x-debug"));
    assert!(!headers.contains_key("x-old"));
    let new: Vec<_> = headers.get_all("x-new").iter().collect();
    assert_eq!(new, ["a", "b"]);
    assert_eq!(headers["x-tenant"], "t-9");
    assert!(!headers.contains_key("x-gone"), "missing value skips");
    assert!(!headers.contains_key("x-bad"), "invalid value dropped");
    let via: Vec<_> = headers.get_all("x-via").iter().collect();
    assert_eq!(via, ["proxy-1", "gw-orders"]);
}

fn plan(
    convert: Option<Convert>,
    allow: &[&str],
    deny: &[&str],
    moves: &[(&str, &str)],
) -> BodyPlan {
    BodyPlan::new(&BodyTransform {
        convert,
        filter: Filter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        },
        moves: moves
            .iter()
            .map(|(from, to)| Move {
                from: from.to_string(),
                to: to.to_string(),
            })
            .collect(),
        xml_root: None,
        max_depth: None,
    })
}

#[track_caller]
fn xml_to_json(input: &str) -> Value {
    let out = plan(Some(Convert::XmlToJson), &[], &[], &[])
        .apply(input.as_bytes())
        .unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn xml_maps_to_json() {
    let doc = r#"<?xml version="1.0"?>
<!-- a comment -->
<order id="7" xmlns:x="urn:x">
  <item sku="a">Pen</item>
  <item sku="b">Ink &amp; nib &#x263A;</item>
  <note>  two words  </note>
  <empty/>
  <x:tag>n</x:tag>
  <mixed lang="en">hello <b>big</b> world</mixed>
  <data><![CDATA[<raw>]]></data>
</order>"#;
    assert_eq!(
        xml_to_json(doc),
        json!({"order": {
            "@id": "7", "@xmlns:x": "urn:x",
            "item": [ {"@sku": "a", "#text": "Pen"}, {"@sku": "b", "#text": "Ink & nib \u{263A}"} ],
            "note": "two words",
            "empty": null,
            "x:tag": "n",
            "mixed": {"@lang": "en", "b": "big", "#text": "hello  world"},
            "data": "<raw>",
        }})
    );
    assert_eq!(xml_to_json("<a/>"), json!({"a": null}));
    assert_eq!(xml_to_json("\u{feff}<a>1</a>"), json!({"a": "1"}));
}

#[test]
fn json_maps_to_xml() {
    let to_xml = |value: Value, root: Option<&str>| -> Result<String, BodyError> {
        let mut body = BodyTransform {
            convert: Some(Convert::JsonToXml),
            ..BodyTransform::default()
        };
        body.xml_root = root.map(str::to_owned);
        BodyPlan::new(&body)
            .apply(value.to_string().as_bytes())
            .map(|b| String::from_utf8(b).unwrap())
    };
    let decl = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
    assert_eq!(
        to_xml(
            json!({"order": {"@id": 7, "item": ["a<b", "c"], "note": null, "ok": true,
                   "price": {"@cur": "EUR", "#text": 1.5}}}),
            None
        )
        .unwrap(),
        format!(
            "{decl}<order id=\"7\"><item>a&lt;b</item><item>c</item><note/><ok>true</ok>\
             <price cur=\"EUR\">1.5</price></order>"
        )
    );
    assert_eq!(
        to_xml(json!([1, [2, 3]]), Some("list")).unwrap(),
        format!("{decl}<list><item>1</item><item><item>2</item><item>3</item></item></list>")
    );
    assert_eq!(
        to_xml(json!({"a": 1, "b": 2}), None).unwrap(),
        format!("{decl}<root><a>1</a><b>2</b></root>")
    );
    assert!(matches!(
        to_xml(json!({"bad name": 1}), None),
        Err(BodyError::NotConvertible(_))
    ));
    assert!(matches!(
        to_xml(json!({"a": {"@x": {"y": 1}}}), None),
        Err(BodyError::NotConvertible(_))
    ));
    assert!(matches!(
        to_xml(json!({"a": "bell\u{7}"}), None),
        Err(BodyError::NotConvertible(_))
    ));
}

#[test]
fn xml_round_trips_through_json() {
    let doc = r#"<?xml version="1.0" encoding="UTF-8"?><order id="7"><item sku="a">Pen</item><item sku="b">Ink</item><note/></order>"#;
    let json = plan(Some(Convert::XmlToJson), &[], &[], &[])
        .apply(doc.as_bytes())
        .unwrap();
    let back = plan(Some(Convert::JsonToXml), &[], &[], &[])
        .apply(&json)
        .unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), doc);
}

#[test]
fn unsafe_or_malformed_xml_is_refused() {
    let p = plan(Some(Convert::XmlToJson), &[], &[], &[]);
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"#;
    assert_eq!(p.apply(laughs.as_bytes()), Err(BodyError::XmlDtd));
    let external = r#"<!DOCTYPE x SYSTEM "file:///etc/passwd"><x>&xxe;</x>"#;
    assert_eq!(p.apply(external.as_bytes()), Err(BodyError::XmlDtd));
    for bad in [
        "<a>&lol;</a>",
        "<a><b></a>",
        "<a>",
        "<a></a><b></b>",
        "text",
        "",
        "<a x='1' x='2'/>",
        "<a>\u{0}</a>\u{ff}",
    ] {
        assert!(
            matches!(p.apply(bad.as_bytes()), Err(BodyError::InvalidXml(_))),
            "{bad:?}: {:?}",
            p.apply(bad.as_bytes())
        );
    }
    assert!(matches!(
        p.apply(b"<a>\xff</a>"),
        Err(BodyError::InvalidXml(_))
    ));
    let deep = "<a>".repeat(100_000);
    assert_eq!(p.apply(deep.as_bytes()), Err(BodyError::TooDeep(64)));
}

#[test]
fn deeply_nested_json_is_refused_without_overflow() {
    let p = plan(None, &[], &["/x"], &[]);
    let deep = "[".repeat(100_000);
    assert_eq!(p.apply(deep.as_bytes()), Err(BodyError::TooDeep(128)));
    let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(p.apply(nested.as_bytes()), Err(BodyError::TooDeep(64)));
    assert!(matches!(
        p.apply(b"{\"a\":"),
        Err(BodyError::InvalidJson(_))
    ));
    let fine = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    assert!(p.apply(fine.as_bytes()).is_ok());
}

#[track_caller]
fn filtered(allow: &[&str], deny: &[&str], input: Value) -> Value {
    let out = plan(None, allow, deny, &[])
        .apply(input.to_string().as_bytes())
        .unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn deny_removes_named_members() {
    let doc = json!({
        "id": 1, "internal_id": "x",
        "users": [ {"name": "a", "ssn": "1"}, {"name": "b", "ssn": "2"} ],
        "a/b": 1, "t~": 2, "list": [10, 11, 12],
    });
    assert_eq!(
        filtered(
            &[],
            &[
                "/internal_id",
                "/users/*/ssn",
                "/a~1b",
                "/t~0",
                "/list/1",
                "/nope/deeper"
            ],
            doc
        ),
        json!({"id": 1, "users": [ {"name": "a"}, {"name": "b"} ], "list": [10, 12]})
    );
}

#[test]
fn allow_keeps_only_named_members() {
    let doc = json!({
        "id": 1, "secret": "x",
        "users": [ {"name": "a", "ssn": "1"}, {"name": "b", "ssn": "2"} ],
        "meta": {"page": 1, "debug": {"sql": "…"}},
        "scalar": 5,
    });
    assert_eq!(
        filtered(
            &["/id", "/users/*/name", "/meta/page", "/scalar/deeper"],
            &["/users/1"],
            doc
        ),
        json!({"id": 1, "users": [ {"name": "a"} ], "meta": {"page": 1}})
    );
    // An exact key and `*` at the same level: the union is kept.
    assert_eq!(
        filtered(
            &["/m/*/a", "/m/x/b"],
            &[],
            json!({"m": {"x": {"a": 1, "b": 2, "c": 3}, "y": {"a": 4, "b": 5}}})
        ),
        json!({"m": {"x": {"a": 1, "b": 2}, "y": {"a": 4}}})
    );
}

#[test]
fn moves_reshape_documents() {
    let p = plan(
        None,
        &[],
        &[],
        &[
            ("/data/user_name", "/user/name"),
            ("/data/tags/0", "/first_tag"),
            ("/missing", "/x"),
            ("/data/id", "/data/tags/-"),
            ("/keep", "/scalar/inside"),
        ],
    );
    let out = p
        .apply(
            json!({"data": {"user_name": "ann", "id": 3, "tags": ["a", "b"]}, "keep": 1, "scalar": 2})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out,
        json!({"data": {"tags": ["b", 3]}, "keep": 1, "scalar": 2,
               "user": {"name": "ann"}, "first_tag": "a"})
    );
    // Member order is kept (serde_json's preserve_order).
    let text = String::from_utf8(
        plan(None, &[], &["/b"], &[])
            .apply(br#"{"z":1,"b":2,"a":3}"#)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(text, r#"{"z":1,"a":3}"#);
    let pointer = Pointer::parse("/a").unwrap();
    let mut value = json!({"a": 1});
    json::move_value(&mut value, &pointer, &Pointer::parse("/b/c").unwrap());
    assert_eq!(value, json!({"b": {"c": 1}}));
}

#[test]
fn content_types_select_the_body() {
    let json_plan = plan(None, &[], &["/x"], &[]);
    let xml_plan = plan(Some(Convert::XmlToJson), &[], &[], &[]);
    let headers = |ct: &'static str, encoding: Option<&'static str>| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        if let Some(e) = encoding {
            h.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static(e));
        }
        h
    };
    assert!(json_plan.applies(&headers("application/json; charset=utf-8", None)));
    assert!(json_plan.applies(&headers("application/problem+json", None)));
    assert!(!json_plan.applies(&headers("application/json", Some("gzip"))));
    assert!(!json_plan.applies(&headers("text/plain", None)));
    assert!(!json_plan.applies(&HeaderMap::new()));
    assert!(xml_plan.applies(&headers("text/xml", None)));
    assert!(xml_plan.applies(&headers("application/soap+xml", None)));
    assert!(!xml_plan.applies(&headers("application/json", None)));
}

#[test]
fn errors_map_to_client_and_upstream_answers() {
    let error = BodyError::XmlDtd.for_request();
    assert_eq!(error.status(), 400);
    assert_eq!(error.code(), "xml_dtd_forbidden");
    let error = BodyError::TooDeep(128).for_response();
    assert_eq!(error.status(), 502);
    assert_eq!(error.code(), "upstream_body_too_deep");
    assert_eq!(too_large_upstream(1).code(), "upstream_body_too_large");
}
