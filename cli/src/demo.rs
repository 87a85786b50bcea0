//! Demo backends for `meridian dev`: real HTTP servers on loopback.
//!
//! - `echo` answers every request with a JSON description of what it
//!   received (method, path, query, headers, body size; the body is counted
//!   while streaming, never buffered) and echoes WebSocket messages on any
//!   path that asks for an upgrade.
//! - `users` is a small versioned users API kept in memory: `/v1/users` and
//!   `/v2/users` (list, create, get, delete), each version with its own
//!   representation.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Reply = Response<Full<Bytes>>;

/// Starts the echo service of `region` on `address`; returns its bound address.
pub(crate) async fn echo(
    address: SocketAddr,
    region: &str,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> std::io::Result<SocketAddr> {
    let region: Arc<str> = region.into();
    serve(address, tasks, stop, move |req| {
        let region = region.clone();
        async move { echo_reply(req, &region).await }
    })
    .await
}

/// Starts the users service on `address`; returns its bound address.
pub(crate) async fn users(
    address: SocketAddr,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> std::io::Result<SocketAddr> {
    let store = Arc::new(Users::seeded());
    serve(address, tasks, stop, move |req| {
        let store = store.clone();
        async move { store.reply(req).await }
    })
    .await
}

async fn serve<H, F>(
    address: SocketAddr,
    tasks: &TaskTracker,
    stop: &CancellationToken,
    handler: H,
) -> std::io::Result<SocketAddr>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let connections = tasks.clone();
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let handler = handler.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(bound)
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

// === echo ===

async fn echo_reply(mut req: Request<Incoming>, region: &str) -> Reply {
    if req.uri().path() == "/health" {
        return json_reply(StatusCode::OK, &json!({"status": "ok"}));
    }
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() || socket.send(message).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        if let Ok(accept) = header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert("sec-websocket-accept", accept);
        }
        return response;
    }
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    json_reply(
        StatusCode::OK,
        &json!({
            "service": "echo",
            "region": region,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_bytes": body_bytes,
        }),
    )
}

// === users ===

#[derive(Clone)]
struct User {
    given: String,
    family: String,
}

struct Users {
    users: Mutex<(u64, BTreeMap<u64, User>)>,
}

impl Users {
    fn seeded() -> Self {
        let seed = [
            ("Ada", "Lovelace"),
            ("Grace", "Hopper"),
            ("Edsger", "Dijkstra"),
        ];
        let users = seed
            .iter()
            .enumerate()
            .map(|(i, (given, family))| {
                let user = User {
                    given: (*given).into(),
                    family: (*family).into(),
                };
                (i as u64 + 1, user)
            })
            .collect();
        Self {
            users: Mutex::new((seed.len() as u64 + 1, users)),
        }
    }

    fn render(version: &str, id: u64, user: &User) -> Value {
        match version {
            "v1" => json!({"id": id, "name": format!("{} {}", user.given, user.family)}),
            _ => json!({
                "id": id,
                "name": {"given": user.given, "family": user.family},
                "links": {"self": format!("/v2/users/{id}")},
            }),
        }
    }

    async fn reply(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_owned();
        if path == "/health" {
            return json_reply(StatusCode::OK, &json!({"status": "ok"}));
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let not_found = || json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
        let (version, rest) = match segments.as_slice() {
            [version @ ("v1" | "v2"), "users", rest @ ..] => (*version, rest),
            _ => return not_found(),
        };
        let method = req.method().clone();
        match (method, rest) {
            (Method::GET, [] | [""]) => {
                let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                let list: Vec<Value> = users
                    .1
                    .iter()
                    .map(|(id, u)| Self::render(version, *id, u))
                    .collect();
                json_reply(StatusCode::OK, &json!({"users": list}))
            }
            (Method::POST, [] | [""]) => {
                let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
                    return json_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({"error": "body too large"}),
                    );
                };
                let parsed: Option<Value> = serde_json::from_slice(&body.to_bytes()).ok();
                let name = parsed.as_ref().and_then(|v| v.get("name"));
                let (given, family) = match name {
                    Some(Value::String(full)) => {
                        let (given, family) = full.split_once(' ').unwrap_or((full, ""));
                        (given.to_owned(), family.to_owned())
                    }
                    Some(Value::Object(parts)) => (
                        parts
                            .get("given")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        parts
                            .get("family")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    _ => {
                        return json_reply(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &json!({"error": "expected {\"name\": \"Given Family\"}"}),
                        );
                    }
                };
                let user = User { given, family };
                let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                let id = users.0;
                users.0 += 1;
                users.1.insert(id, user.clone());
                json_reply(StatusCode::CREATED, &Self::render(version, id, &user))
            }
            (method @ (Method::GET | Method::DELETE), [id]) => {
                let Ok(id) = id.parse::<u64>() else {
                    return not_found();
                };
                let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                let found = if method == Method::DELETE {
                    users.1.remove(&id)
                } else {
                    users.1.get(&id).cloned()
                };
                match found {
                    Some(user) => json_reply(StatusCode::OK, &Self::render(version, id, &user)),
                    None => not_found(),
                }
            }
            _ => json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
        }
    }
}
