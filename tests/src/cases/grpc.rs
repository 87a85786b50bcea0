//! gRPC-JSON transcoding end to end (issue 8, point 4), against a real
//! tonic server (`crate::grpc`): unary calls with path, query and body
//! bindings; gRPC statuses mapped to HTTP with the gateway's JSON error;
//! server streaming as NDJSON and as a JSON array, written as messages
//! arrive; malformed input answered 4xx without harm to the node; and
//! plain gRPC (HTTP/2 with trailers) passing through an ordinary route,
//! with a tonic client on the other side.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::client::{Reply, send};
use crate::grpc::{Library, descriptor_set_base64, pb};
use crate::{TestNode, get};

fn yaml(library: &Library) -> String {
    let set = descriptor_set_base64();
    format!(
        r#"
upstreams:
  library: {{ targets: ["{addr}"], protocol: h2 }}
routes:
  - name: rest
    match: {{ path_prefix: /v1 }}
    upstream: library
    max_body: 4KiB
    grpc: {{ descriptor_set: "{set}", service: meridian.test.v1.Library }}
  - name: rest-array
    match: {{ path_prefix: /array/v1 }}
    rewrite: {{ strip_prefix: /array }}
    upstream: library
    grpc: {{ descriptor_set: "{set}", service: meridian.test.v1.Library, streaming: array }}
  - name: plain
    match: {{ path_prefix: /meridian.test.v1.Library }}
    upstream: library
"#,
        addr = library.addr,
    )
}

async fn setup() -> (Library, TestNode) {
    let library = Library::start().await;
    let node = TestNode::start(&yaml(&library)).await;
    (library, node)
}

async fn call(node: &TestNode, method: Method, path: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(node.url(path))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request");
    send(request).await
}

/// Asserts the gateway's JSON error shape and returns `(code, message)`.
fn error(reply: &Reply) -> (String, String) {
    let body = reply.json();
    let error = &body["error"];
    assert_eq!(
        error["request_id"].as_str(),
        Some(reply.header("x-request-id")),
        "{body}"
    );
    (
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn lines(reply: &Reply) -> Vec<Value> {
    std::str::from_utf8(&reply.body)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn unary_calls_are_transcoded() {
    let (library, node) = setup().await;

    let reply = get(&node.url("/v1/shelves/s1/books/7")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.json(),
        json!({ "id": "7", "shelf": "s1", "title": "Book 7", "author": "Ann",
                "pages": 107, "available": true, "genre": "FICTION", "tags": ["a", "b"] })
    );
    // The call carried the proxy's headers as metadata.
    {
        let calls = library.state.calls.lock().unwrap();
        let (method, request_id, forwarded_for) = calls.last().unwrap();
        assert_eq!(method, "GetBook");
        assert_eq!(request_id, reply.header("x-request-id"));
        assert_eq!(forwarded_for, "127.0.0.1");
    }

    // An additional binding.
    let reply = get(&node.url("/v1/books/12")).await;
    assert_eq!(reply.json()["id"], "12");

    // `body: "book"` plus a path field.
    let reply = call(
        &node,
        Method::POST,
        "/v1/shelves/s2/books",
        r#"{"title": "Dune", "pages": 412, "genre": "SCIENCE"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({ "id": "1", "shelf": "s2", "title": "Dune", "pages": 412, "genre": "SCIENCE" })
    );

    // `body: "*"`; the path's id wins over the body's.
    let reply = call(
        &node,
        Method::PUT,
        "/v1/books/5",
        r#"{"id": "6", "title": "Emma", "tags": ["x"]}"#,
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({ "id": "5", "title": "Emma", "tags": ["x"] })
    );

    // `{path=**}` takes the rest of the path.
    let reply = get(&node.url("/v1/files/docs/a%20b.txt")).await;
    assert_eq!(reply.json(), json!({ "path": "docs/a b.txt", "size": 12 }));

    // The rewritten route matches on the upstream path.
    let reply = get(&node.url("/array/v1/books/3")).await;
    assert_eq!(reply.json()["title"], "Book 3");
    node.stop().await;
}

#[tokio::test]
async fn grpc_statuses_become_http_statuses_with_a_json_error() {
    let (_library, node) = setup().await;
    for (id, status, grpc, code, message) in [
        (404, 404, "5", "grpc_not_found", "no book 404"),
        (0, 400, "3", "grpc_invalid_argument", "id must be positive"),
        (403, 403, "7", "grpc_permission_denied", "shelf is private"),
        (503, 503, "14", "grpc_unavailable", "try later"),
    ] {
        let reply = get(&node.url(&format!("/v1/books/{id}"))).await;
        assert_eq!(reply.status.as_u16(), status, "book {id}");
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("grpc-status"), grpc);
        assert_eq!(error(&reply), (code.to_owned(), message.to_owned()));
    }
    let reply = call(
        &node,
        Method::POST,
        "/v1/shelves/s/books",
        r#"{"title":"dup"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(error(&reply).0, "grpc_already_exists");

    // A reply message over the route's 4 KiB limit is not relayed.
    let reply = get(&node.url("/v1/books/999")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(error(&reply).0, "upstream_grpc_message_too_large");
    node.stop().await;
}

#[tokio::test]
async fn server_streams_are_written_as_messages_arrive() {
    let (library, node) = setup().await;

    let reply = get(&node.url("/v1/shelves/s1/books?limit=3&author=x")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/x-ndjson");
    let books = lines(&reply);
    let ids: Vec<&str> = books.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3"]);

    // An error after some messages ends the stream with an error line.
    let reply = get(&node.url("/v1/shelves/s1/books?limit=2&fail_with=14")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let books = lines(&reply);
    assert_eq!(books.len(), 3);
    assert_eq!(books[2]["error"]["code"], "grpc_unavailable");
    assert_eq!(books[2]["error"]["message"], "the stream broke");
    assert_eq!(
        books[2]["error"]["request_id"],
        reply.header("x-request-id")
    );

    // An error before any message is the answer's status.
    let reply = get(&node.url("/v1/shelves/s1/books?limit=-1")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&reply).0, "grpc_invalid_argument");
    let reply = get(&node.url("/v1/shelves/s1/books?limit=0&fail_with=7")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // An empty stream.
    let reply = get(&node.url("/v1/shelves/s1/books?limit=0")).await;
    assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, 0));

    // As one JSON array.
    let reply = get(&node.url("/array/v1/shelves/s1/books?limit=2")).await;
    assert_eq!(reply.header("content-type"), "application/json");
    let array = reply.json();
    assert_eq!(array.as_array().map(Vec::len), Some(2), "{array}");
    let reply = get(&node.url("/array/v1/shelves/s1/books?limit=1&fail_with=13")).await;
    let array = reply.json();
    assert_eq!(array[1]["error"]["code"], "grpc_internal", "{array}");
    let reply = get(&node.url("/array/v1/shelves/s1/books?limit=0")).await;
    assert_eq!(reply.json(), json!([]));

    // Not buffered: the first book arrives while the server holds the rest.
    let client = crate::client::http1();
    let request = Request::get(node.url("/v1/shelves/s1/books?limit=3&hold=true"))
        .body(Full::default())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("head in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first book before the server goes on")
        .expect("a frame")
        .expect("data");
    let first: Value = serde_json::from_slice(first.data_ref().unwrap().trim_ascii()).unwrap();
    assert_eq!(first["id"], "1");
    library.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&rest).unwrap().lines().count(), 2);
    node.stop().await;
}

#[tokio::test]
async fn malformed_input_is_refused_without_harm() {
    let (_library, node) = setup().await;
    let post = |body: String| {
        let node = &node;
        async move { call(node, Method::POST, "/v1/shelves/s/books", &body).await }
    };
    for (body, status, code) in [
        ("{\"title\": ".to_owned(), 400, "invalid_json"),
        ("<book/>".to_owned(), 400, "invalid_json"),
        (r#"{"pages": "many"}"#.to_owned(), 400, "invalid_message"),
        (r#"{"pages": 1.5}"#.to_owned(), 400, "invalid_message"),
        (r#"{"genre": "POETRY"}"#.to_owned(), 400, "invalid_message"),
        (r#"{"unknown": 1}"#.to_owned(), 400, "invalid_message"),
        (
            format!(r#"{{"title": "{}"}}"#, "x".repeat(5000)),
            413,
            "payload_too_large",
        ),
    ] {
        let reply = post(body.clone()).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{body:.40}: {:?}",
            reply.body
        );
        assert_eq!(error(&reply).0, code, "{body:.40}");
    }
    let put = call(&node, Method::PUT, "/v1/books/5", "[1, 2]").await;
    assert_eq!(
        (put.status, error(&put).0.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_message")
    );
    let reply = get(&node.url("/v1/books/seven")).await;
    assert_eq!(
        (reply.status, error(&reply).0.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_message")
    );
    let reply = get(&node.url("/v1/shelves/s/books?limit=lots")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // No binding for the method or path.
    let reply = call(&node, Method::DELETE, "/v1/books/5", "").await;
    assert_eq!(
        (reply.status, error(&reply).0.as_str()),
        (StatusCode::NOT_FOUND, "no_route")
    );
    let reply = get(&node.url("/v1/nothing/here")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // The node is unharmed.
    let reply = get(&node.url("/v1/books/1")).await;
    assert_eq!(reply.status, StatusCode::OK);

    // A configuration naming a service the set does not hold is refused,
    // naming the key.
    let bad = yaml(&_library).replacen(
        "service: meridian.test.v1.Library }",
        "service: meridian.test.v1.Nope }",
        1,
    );
    let reply = node.apply(&bad).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        text.contains("routes[0].grpc.service (meridian.test.v1.Nope) must name a service"),
        "{text}"
    );
    node.stop().await;
}

#[tokio::test]
async fn plain_grpc_passes_through_with_trailers() {
    let (_library, node) = setup().await;
    let mut client = pb::library_client::LibraryClient::connect(format!("http://{}", node.proxy))
        .await
        .expect("h2c connection to the gateway");

    let book = client
        .get_book(pb::GetBookRequest {
            shelf: "s".into(),
            id: 8,
        })
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!((book.id, book.title.as_str()), (8, "Book 8"));

    // The status travels in trailers (here trailers-only).
    let status = client
        .get_book(pb::GetBookRequest {
            shelf: "s".into(),
            id: 404,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no book 404");

    // A server stream, then an error status in the trailers.
    let mut stream = client
        .list_books(pb::ListBooksRequest {
            shelf: "s".into(),
            limit: 2,
            fail_with: 9,
            ..Default::default()
        })
        .await
        .expect("stream opens")
        .into_inner();
    let mut ids = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(book)) => ids.push(book.id),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(ids, [1, 2]);
    let end = end.expect("the trailers' status");
    assert_eq!(end.code(), tonic::Code::FailedPrecondition);
    assert_eq!(end.message(), "the stream broke");

    // A clean stream ends with OK in the trailers.
    let mut stream = client
        .list_books(pb::ListBooksRequest {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(_book) = stream.message().await.expect("OK trailers") {
        count += 1;
    }
    assert_eq!(count, 3);

    // Client streaming, which transcoding leaves to passthrough.
    let books = futures_util::stream::iter((0..5).map(|i| pb::Book {
        title: format!("t{i}"),
        ..Default::default()
    }));
    let reply = client
        .add_books(books)
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!(reply.count, 5);
    node.stop().await;
}
