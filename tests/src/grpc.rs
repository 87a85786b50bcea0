//! A real gRPC server for the transcoding and passthrough tests: tonic,
//! serving the library service of `proto/meridian/test/v1/library.proto`
//! (compiled by `build.rs` with protox) on a loopback port.
//!
//! Behaviour the cases rely on:
//! - `GetBook`: book `id` on `shelf`; ids 0 (`INVALID_ARGUMENT`),
//!   403 (`PERMISSION_DENIED`), 404 (`NOT_FOUND`), 503 (`UNAVAILABLE`)
//!   fail, 999 answers a book with an 8 KiB title;
//! - `CreateBook`: the book with id 1 on the shelf; title `dup` fails with
//!   `ALREADY_EXISTS`;
//! - `UpdateBook`: echoes the book;
//! - `ListBooks`: `limit` books (a negative limit fails at once with
//!   `INVALID_ARGUMENT`); with `hold`, waits after the first book until
//!   [`Library::release`]; then ends with status `fail_with`;
//! - `GetFile`: the path and its length;
//! - `AddBooks` (client streaming): how many books it received.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Request, Response, Status};

/// The generated messages, server and client.
pub mod pb {
    #![allow(clippy::all, unreachable_pub, missing_docs)]
    tonic::include_proto!("meridian.test.v1");
}

/// The library's descriptor set, imports included.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/library.bin"));

/// The descriptor set as a `grpc.descriptor_set` value.
pub fn descriptor_set_base64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(DESCRIPTOR_SET)
}

/// What the server saw and the tests' handle on it.
#[derive(Default)]
pub struct State {
    release: Notify,
    /// `(method, x-request-id, x-forwarded-for)` of each call.
    pub calls: Mutex<Vec<(String, String, String)>>,
}

/// The running server.
pub struct Library {
    /// Its address.
    pub addr: SocketAddr,
    /// What it saw.
    pub state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Library {
    /// Starts the server on a loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = pb::library_server::LibraryServer::new(Books {
            state: state.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// Lets a held `ListBooks` stream go on.
    pub fn release(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Books {
    state: Arc<State>,
}

impl Books {
    fn saw<T>(&self, method: &str, request: &Request<T>) {
        let text = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        // The HTTP/2 content-type is checked by tonic before this runs.
        let entry = (
            method.to_owned(),
            text("x-request-id"),
            text("x-forwarded-for"),
        );
        if let Ok(mut calls) = self.state.calls.lock() {
            calls.push(entry);
        }
    }
}

fn book(id: i64, shelf: &str) -> pb::Book {
    pb::Book {
        id,
        shelf: shelf.to_owned(),
        title: format!("Book {id}"),
        author: "Ann".into(),
        pages: 100 + id as i32,
        available: true,
        genre: pb::Genre::Fiction as i32,
        tags: vec!["a".into(), "b".into()],
    }
}

type BookStream = Pin<Box<dyn Stream<Item = Result<pb::Book, Status>> + Send>>;

#[tonic::async_trait]
impl pb::library_server::Library for Books {
    async fn get_book(
        &self,
        request: Request<pb::GetBookRequest>,
    ) -> Result<Response<pb::Book>, Status> {
        self.saw("GetBook", &request);
        let r = request.into_inner();
        match r.id {
            0 => Err(Status::invalid_argument("id must be positive")),
            403 => Err(Status::permission_denied("shelf is private")),
            404 => Err(Status::not_found(format!("no book {}", r.id))),
            503 => Err(Status::unavailable("try later")),
            999 => Ok(Response::new(pb::Book {
                title: "x".repeat(8 << 10),
                ..book(r.id, &r.shelf)
            })),
            id => Ok(Response::new(book(id, &r.shelf))),
        }
    }

    async fn create_book(
        &self,
        request: Request<pb::CreateBookRequest>,
    ) -> Result<Response<pb::Book>, Status> {
        self.saw("CreateBook", &request);
        let r = request.into_inner();
        let book = r.book.unwrap_or_default();
        if book.title == "dup" {
            return Err(Status::already_exists("a book with this title exists"));
        }
        Ok(Response::new(pb::Book {
            id: 1,
            shelf: r.shelf,
            ..book
        }))
    }

    async fn update_book(&self, request: Request<pb::Book>) -> Result<Response<pb::Book>, Status> {
        self.saw("UpdateBook", &request);
        Ok(Response::new(request.into_inner()))
    }

    type ListBooksStream = BookStream;

    async fn list_books(
        &self,
        request: Request<pb::ListBooksRequest>,
    ) -> Result<Response<BookStream>, Status> {
        self.saw("ListBooks", &request);
        let r = request.into_inner();
        if r.limit < 0 {
            return Err(Status::invalid_argument("limit must not be negative"));
        }
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            for id in 1..=i64::from(r.limit) {
                if tx.send(Ok(book(id, &r.shelf))).await.is_err() {
                    return;
                }
                if r.hold && id == 1 {
                    state.release.notified().await;
                }
            }
            if r.fail_with != 0 {
                let status = Status::new(tonic::Code::from(r.fail_with), "the stream broke");
                let _ = tx.send(Err(status)).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        self.saw("GetFile", &request);
        let path = request.into_inner().path;
        Ok(Response::new(pb::File {
            size: path.len() as u32,
            path,
        }))
    }

    async fn add_books(
        &self,
        request: Request<tonic::Streaming<pb::Book>>,
    ) -> Result<Response<pb::AddBooksReply>, Status> {
        self.saw("AddBooks", &request);
        let mut stream = request.into_inner();
        let mut count = 0;
        while let Some(book) = stream.message().await? {
            if !book.title.is_empty() {
                count += 1;
            }
        }
        Ok(Response::new(pb::AddBooksReply { count }))
    }
}
