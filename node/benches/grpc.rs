//! Cost of gRPC-JSON transcoding of a small message, per call: the request
//! side (`find` the binding, JSON body + path value → `DynamicMessage` →
//! framed protobuf) and the reply side (protobuf → `DynamicMessage` →
//! JSON) of a unary `CreateBook`, with serde_json's own parse + write of
//! the same JSON as the anchor. The descriptor set is compiled once, before
//! measuring, from `tests/proto` with protox.
//!
//! Run: `cargo bench -p node --bench grpc`.

use std::hint::black_box;

use base64::Engine as _;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Method;
use node::pipeline::grpc::RouteGrpc;
use raft::model::grpc::{Grpc, Streaming};

/// The JSON of the book sent and answered (159 bytes).
const BOOK: &str = r#"{"id":"42","shelf":"s1","title":"The Left Hand of Darkness","author":"Ursula K. Le Guin","pages":304,"available":true,"genre":"FICTION","tags":["sf","classic"]}"#;

fn library() -> RouteGrpc {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proto");
    let mut compiler = protox::Compiler::new([dir]).expect("include dir");
    compiler.include_imports(true);
    compiler
        .open_file("meridian/test/v1/library.proto")
        .expect("library.proto compiles");
    RouteGrpc::compile(&Grpc {
        descriptor_set: base64::engine::general_purpose::STANDARD
            .encode(compiler.encode_file_descriptor_set()),
        service: "meridian.test.v1.Library".into(),
        streaming: Streaming::Ndjson,
    })
    .expect("the service compiles")
}

fn bench(c: &mut Criterion) {
    let grpc = library();
    let path = "/v1/shelves/s1/books";
    let matched = grpc.find(&Method::POST, path).expect("CreateBook");
    // The reply's payload: the book as protobuf, as the upstream sends it.
    let framed = grpc.request(&matched, None, BOOK.as_bytes()).unwrap();
    let request_len = framed.len();
    let reply = {
        let update = grpc.find(&Method::PUT, "/v1/books/42").expect("UpdateBook");
        grpc.request(&update, None, BOOK.as_bytes())
            .unwrap()
            .slice(5..)
    };
    let json = grpc.reply(&matched, reply.clone()).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
        serde_json::from_str::<serde_json::Value>(BOOK).unwrap()
    );
    eprintln!(
        "book: {} bytes of JSON, {} bytes framed protobuf request, {} bytes reply",
        BOOK.len(),
        request_len,
        reply.len()
    );

    let mut group = c.benchmark_group("grpc");
    group.throughput(Throughput::Bytes(BOOK.len() as u64));
    group.bench_function("json_to_grpc", |b| {
        b.iter(|| {
            let matched = grpc.find(&Method::POST, black_box(path)).unwrap();
            grpc.request(&matched, None, black_box(BOOK.as_bytes()))
                .unwrap()
        })
    });
    group.bench_function("grpc_to_json", |b| {
        b.iter(|| {
            grpc.reply(&matched, black_box(Bytes::clone(&reply)))
                .unwrap()
        })
    });
    group.bench_function("transcode_roundtrip", |b| {
        b.iter(|| {
            let matched = grpc.find(&Method::POST, black_box(path)).unwrap();
            let framed = grpc
                .request(&matched, None, black_box(BOOK.as_bytes()))
                .unwrap();
            let json = grpc
                .reply(&matched, black_box(Bytes::clone(&reply)))
                .unwrap();
            (framed, json)
        })
    });
    group.bench_function("serde_json_roundtrip", |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_slice(black_box(BOOK.as_bytes())).unwrap();
            serde_json::to_vec(&value).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
