//! Cost of a body transform per request: XML → JSON of a 10 KB document and
//! JSON filtering (deny and allow lists) of a 10 KB document, each the whole
//! `BodyPlan::apply` (parse, transform, write), plus serde_json's own parse
//! and write of the same JSON as the anchor.
//!
//! Run: `cargo bench -p node --bench transform`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use node::pipeline::transform::BodyPlan;
use raft::model::transform::{BodyTransform, Convert, Filter};

/// About 10 KB of XML: orders with attributes, repeated items, text.
fn xml_document() -> String {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><orders>"#);
    let mut i = 0;
    while out.len() < 10_000 {
        out.push_str(&format!(
            r#"<order id="{i}" status="open"><customer>Customer &amp; Sons {i}</customer><item sku="a{i}">Pen</item><item sku="b{i}">Ink</item><total currency="EUR">{i}.50</total></order>"#
        ));
        i += 1;
    }
    out.push_str("</orders>");
    out
}

/// About 10 KB of JSON: users with PII next to public fields.
fn json_document() -> String {
    let mut users = Vec::new();
    let mut i = 0;
    let mut len = 0;
    while len < 10_000 {
        let user = serde_json::json!({
            "id": i, "name": format!("user {i}"), "email": format!("u{i}@example.com"),
            "ssn": "111-22-3333", "internal_id": format!("db-{i}"),
            "address": { "city": "Lyon", "street": "1 rue X" }, "tags": ["a", "b"],
        });
        len += user.to_string().len();
        users.push(user);
        i += 1;
    }
    serde_json::json!({ "page": 1, "users": users }).to_string()
}

fn plan(convert: Option<Convert>, allow: &[&str], deny: &[&str]) -> BodyPlan {
    BodyPlan::new(&BodyTransform {
        convert,
        filter: Filter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        },
        ..BodyTransform::default()
    })
}

fn bench(c: &mut Criterion) {
    let xml = xml_document();
    let json = json_document();
    let mut group = c.benchmark_group("transform");

    group.throughput(Throughput::Bytes(xml.len() as u64));
    let xml_to_json = plan(Some(Convert::XmlToJson), &[], &[]);
    group.bench_function(format!("xml_to_json_{}_bytes", xml.len()), |b| {
        b.iter(|| xml_to_json.apply(black_box(xml.as_bytes())).unwrap())
    });

    group.throughput(Throughput::Bytes(json.len() as u64));
    let deny = plan(
        None,
        &[],
        &["/users/*/ssn", "/users/*/internal_id", "/users/*/email"],
    );
    group.bench_function(format!("json_deny_{}_bytes", json.len()), |b| {
        b.iter(|| deny.apply(black_box(json.as_bytes())).unwrap())
    });
    let allow = plan(None, &["/page", "/users/*/id", "/users/*/name"], &[]);
    group.bench_function(format!("json_allow_{}_bytes", json.len()), |b| {
        b.iter(|| allow.apply(black_box(json.as_bytes())).unwrap())
    });
    group.bench_function(format!("serde_json_roundtrip_{}_bytes", json.len()), |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_slice(black_box(json.as_bytes())).unwrap();
            serde_json::to_vec(&value).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
