//! Cost of the WAF per request: the head checks (path, query, selected
//! headers) and the body check, on the rule set the node uses.
//!
//! Run: `cargo bench -p node --bench waf`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use node::pipeline::waf::{BodyKind, Waf};
use raft::model::policy::WafPolicy;

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "referer",
        "https://www.example.com/search?q=shoes&page=2"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "cookie",
        "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig; theme=dark; _ga=GA1.2.3.4"
            .parse()
            .unwrap(),
    );
    headers
}

/// About 2 KiB of ordinary query: 40 parameters.
fn long_query() -> String {
    (0..40)
        .map(|i| format!("field{i}=value%20number%20{i}%20O%27Brien%20%26%20Sons"))
        .collect::<Vec<_>>()
        .join("&")
}

/// About 8 KiB of ordinary JSON.
fn json_body() -> Vec<u8> {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    while out.len() < 8 << 10 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":{i},"name":"Item {i} of O'Brien & Sons","price":{}.99,"url":"https://shop.example.com/items/{i}?ref=list&page=2","tags":["new","sale"]}}"#,
            i % 100
        ));
        i += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let waf = Waf::new(&WafPolicy::default());
    let headers = headers();
    let query = long_query();
    let body = json_body();
    assert!(waf.inspect_head("/", Some(&query), &headers).is_none());
    assert!(waf.inspect_body(&BodyKind::Json, &body).is_none());
    let mut group = c.benchmark_group("waf");
    group.bench_function("clean_request", |b| {
        b.iter(|| {
            waf.inspect_head(
                black_box("/api/v1/users/42/orders"),
                black_box(Some("page=2&sort=-created_at&q=shoes")),
                black_box(&headers),
            )
        })
    });
    group.bench_function(format!("long_query_{}_bytes", query.len()), |b| {
        b.iter(|| waf.inspect_head(black_box("/api/search"), black_box(Some(&query)), &headers))
    });
    group.bench_function(format!("json_body_{}_bytes", body.len()), |b| {
        b.iter(|| waf.inspect_body(&BodyKind::Json, black_box(&body)))
    });
    group.bench_function("attack_in_query", |b| {
        b.iter(|| {
            waf.inspect_head(
                black_box("/api/items"),
                black_box(Some("id=1%27%20OR%20%271%27%3D%271")),
                &headers,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
