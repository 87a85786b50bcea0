use base64::Engine as _;
use serde_json::json;

use super::*;
use crate::error::grpc_http_status;

fn library(streaming: Streaming) -> RouteGrpc {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proto");
    let mut compiler = protox::Compiler::new([dir]).unwrap();
    compiler.include_imports(true);
    compiler
        .open_file("meridian/test/v1/library.proto")
        .unwrap();
    RouteGrpc::compile(&model::Grpc {
        descriptor_set: base64::engine::general_purpose::STANDARD
            .encode(compiler.encode_file_descriptor_set()),
        service: "meridian.test.v1.Library".into(),
        streaming,
    })
    .unwrap()
}

/// The request message `method path?query` + `body` builds, as JSON.
fn request(grpc: &RouteGrpc, method: Method, target: &str, body: &str) -> Result<Value, Error> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let matched = grpc.find(&method, path).expect("a binding matches");
    let framed = grpc.request(&matched, query, body.as_bytes())?;
    assert_eq!(framed[0], 0, "uncompressed");
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    assert_eq!(framed.len(), 5 + len);
    let message = DynamicMessage::decode(matched.method().input(), framed.slice(5..)).unwrap();
    Ok(serde_json::to_value(&message).unwrap())
}

fn code(result: Result<Value, Error>) -> (StatusCode, &'static str) {
    let error = result.unwrap_err();
    (error.status(), error.code())
}

#[test]
fn bindings_are_found_by_method_and_path() {
    let grpc = library(Streaming::Ndjson);
    let name = |m: Method, p: &str| grpc.find(&m, p).map(|m| m.method().name().to_owned());
    assert_eq!(
        name(Method::GET, "/v1/shelves/s1/books/7").as_deref(),
        Some("GetBook")
    );
    assert_eq!(name(Method::GET, "/v1/books/7").as_deref(), Some("GetBook"));
    assert_eq!(
        name(Method::POST, "/v1/shelves/s1/books").as_deref(),
        Some("CreateBook")
    );
    assert_eq!(
        name(Method::GET, "/v1/shelves/s1/books").as_deref(),
        Some("ListBooks")
    );
    assert_eq!(
        name(Method::GET, "/v1/files/a/b.txt").as_deref(),
        Some("GetFile")
    );
    assert_eq!(name(Method::DELETE, "/v1/books/7"), None);
    assert_eq!(name(Method::GET, "/v1/nothing"), None);
}

#[test]
fn messages_are_built_from_body_path_and_query() {
    let grpc = library(Streaming::Ndjson);
    assert_eq!(
        request(&grpc, Method::GET, "/v1/shelves/s%201/books/7", "").unwrap(),
        json!({ "shelf": "s 1", "id": "7" })
    );
    // `body: "book"`: the body is one field; the path sets another.
    assert_eq!(
        request(
            &grpc,
            Method::POST,
            "/v1/shelves/s1/books",
            r#"{"title":"Dune","pages":412,"genre":"FICTION","tags":["a"]}"#
        )
        .unwrap(),
        json!({ "shelf": "s1", "book": { "title": "Dune", "pages": 412, "genre": "FICTION", "tags": ["a"] } })
    );
    // `body: "*"`: the whole message; the path's value wins.
    assert_eq!(
        request(
            &grpc,
            Method::PUT,
            "/v1/books/5",
            r#"{"id":"9","title":"x","available":true}"#
        )
        .unwrap(),
        json!({ "id": "5", "title": "x", "available": true })
    );
    // The fast path: no variables, no query.
    // Query parameters set scalar and repeated fields; unknown ones are ignored.
    assert_eq!(
        request(
            &grpc,
            Method::GET,
            "/v1/shelves/s1/books?limit=3&tags=a&tags=b&api_key=k&hold=false",
            ""
        )
        .unwrap(),
        json!({ "shelf": "s1", "limit": 3, "tags": ["a", "b"] })
    );
    // `**` binds the rest of the path, slashes included.
    assert_eq!(
        request(&grpc, Method::GET, "/v1/files/a/b.txt", "").unwrap(),
        json!({ "path": "a/b.txt" })
    );
}

#[test]
fn malformed_input_is_refused_with_400() {
    let grpc = library(Streaming::Ndjson);
    let post = |body: &str| request(&grpc, Method::POST, "/v1/shelves/s1/books", body);
    let bad = (StatusCode::BAD_REQUEST, "invalid_message");
    assert_eq!(
        code(post("{\"title\":")),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert_eq!(
        code(post("not json")),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert_eq!(code(post(r#"{"pages":"many"}"#)), bad);
    assert_eq!(code(post(r#"{"pages":3000000000}"#)), bad);
    assert_eq!(code(post(r#"{"nope":1}"#)), bad);
    assert_eq!(code(post(r#"{"genre":"POETRY"}"#)), bad);
    assert_eq!(code(post(r#"{"tags":"a"}"#)), bad);
    let put = |body: &str| request(&grpc, Method::PUT, "/v1/books/5", body);
    assert_eq!(code(put("[1,2]")), bad);
    assert_eq!(code(put(r#"{"title":1}"#)), bad);
    assert_eq!(
        code(put(r#"{"title":"a"} trailing"#)),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let deep = "[".repeat(200) + &"]".repeat(200);
    assert_eq!(
        code(put(&format!(r#"{{"tags":{deep}}}"#))).0,
        StatusCode::BAD_REQUEST
    );
    let get = |target: &str| request(&grpc, Method::GET, target, "");
    assert_eq!(code(get("/v1/books/seven")), bad);
    assert_eq!(
        code(get("/v1/books/%ff")),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
    assert_eq!(code(get("/v1/shelves/s1/books?limit=abc")), bad);
    assert_eq!(code(get("/v1/shelves/s1/books?hold=yes")), bad);
    assert_eq!(code(get("/v1/shelves/s1/books?limit=99999999999")), bad);
}

#[test]
fn replies_become_json() {
    let grpc = library(Streaming::Ndjson);
    let matched = grpc.find(&Method::GET, "/v1/books/1").unwrap();
    let output = matched.method().output();
    let book: DynamicMessage = DynamicMessage::deserialize(
        output,
        json!({ "id": "1", "title": "Dune", "pages": 412, "genre": "FICTION" }),
    )
    .unwrap();
    let json = grpc
        .reply(&matched, Bytes::from(book.encode_to_vec()))
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&json).unwrap(),
        json!({ "id": "1", "title": "Dune", "pages": 412, "genre": "FICTION" })
    );
    let error = grpc
        .reply(&matched, Bytes::from_static(b"\xff\xff\xff"))
        .unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (StatusCode::BAD_GATEWAY, "upstream_invalid_grpc")
    );
}

#[test]
fn the_decoder_splits_frames_within_the_limit() {
    let mut decoder = Decoder::new(8);
    decoder.push(&[0, 0, 0]);
    assert_eq!(decoder.next_message().unwrap(), None);
    decoder.push(&[0, 3, b'a', b'b']);
    assert_eq!(decoder.next_message().unwrap(), None);
    decoder.push(&[b'c', 0, 0, 0, 0, 0]);
    assert_eq!(
        decoder.next_message().unwrap().as_deref(),
        Some(&b"abc"[..])
    );
    // An empty message is a message.
    assert_eq!(decoder.next_message().unwrap().as_deref(), Some(&b""[..]));
    assert!(decoder.is_empty());
    // Too large: refused from the prefix alone, before the payload arrives.
    decoder.push(&[0, 0, 0, 0, 9]);
    let error = decoder.next_message().unwrap_err();
    assert_eq!(error.code(), "upstream_grpc_message_too_large");
    let mut decoder = Decoder::new(8);
    decoder.push(&[1, 0, 0, 0, 1, b'x']);
    assert_eq!(
        decoder.next_message().unwrap_err().code(),
        "upstream_invalid_grpc"
    );
}

#[test]
fn statuses_map_to_http() {
    let mut trailers = HeaderMap::new();
    assert!(status(&trailers).is_none());
    trailers.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
    assert!(status(&trailers).unwrap().is_ok());
    trailers.insert(&GRPC_STATUS, HeaderValue::from_static("5"));
    trailers.insert(&GRPC_MESSAGE, HeaderValue::from_static("no%20book%207"));
    let error = status(&trailers).unwrap().unwrap_err();
    assert_eq!(
        (error.status(), error.code(), &*error.message()),
        (StatusCode::NOT_FOUND, "grpc_not_found", "no book 7")
    );
    let response = error.to_response("r1");
    assert_eq!(response.headers()["grpc-status"], "5");
    let table = [
        (0, 200),
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
        (17, 500),
    ];
    for (code, http) in table {
        assert_eq!(grpc_http_status(code).as_u16(), http, "gRPC status {code}");
    }
}
