//! `TestDns`: an authoritative DNS server on 127.0.0.1 (UDP and TCP, port
//! 0), built on hickory-server, whose records a test changes while it runs;
//! and `resolver`, a hickory resolver pointed at a given server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Records = Arc<Mutex<BTreeMap<(Name, RecordType), Vec<Record>>>>;

/// A DNS server whose answers the test sets.
pub struct TestDns {
    /// UDP and TCP address.
    pub addr: SocketAddr,
    records: Records,
    queries: Arc<Mutex<Vec<(Name, RecordType)>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

fn name(text: &str) -> Name {
    let mut name = Name::from_ascii(text).expect("a valid name").to_lowercase();
    name.set_fqdn(true);
    name
}

impl TestDns {
    /// Starts the server with no records (every name is NXDOMAIN).
    pub async fn start() -> Self {
        // UDP and TCP on one free port, as the node's responder binds them.
        let bound = node::dns::responder::Bound::bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind UDP and TCP");
        let addr = bound.local_addr().expect("bound");
        let (udp, tcp) = bound.into_parts();
        let records: Records = Arc::default();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let mut server = hickory_server::Server::new(Handler {
            records: records.clone(),
            queries: queries.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            token.cancelled().await;
            let _ = server.shutdown_gracefully().await;
        });
        Self {
            addr,
            records,
            queries,
            stop,
            task: Some(task),
        }
    }

    fn set(&self, owner: &str, kind: RecordType, records: Vec<Record>) {
        let mut map = self.records.lock().expect("not poisoned");
        if records.is_empty() {
            map.remove(&(name(owner), kind));
        } else {
            map.insert((name(owner), kind), records);
        }
    }

    /// Sets the A and AAAA records of `owner` (replacing the old ones).
    pub fn set_ips(&self, owner: &str, ips: &[&str], ttl: u32) {
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().expect("an IP")).collect();
        let record = |data| Record::from_rdata(name(owner), ttl, data);
        self.set(
            owner,
            RecordType::A,
            ips.iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(record(RData::A(A(*v4)))),
                    IpAddr::V6(_) => None,
                })
                .collect(),
        );
        self.set(
            owner,
            RecordType::AAAA,
            ips.iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(record(RData::AAAA(AAAA(*v6)))),
                    IpAddr::V4(_) => None,
                })
                .collect(),
        );
    }

    /// Sets the SRV records of `owner`: `(priority, weight, port, target)`.
    pub fn set_srv(&self, owner: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let records = records
            .iter()
            .map(|(priority, weight, port, target)| {
                Record::from_rdata(
                    name(owner),
                    ttl,
                    RData::SRV(SRV::new(*priority, *weight, *port, name(target))),
                )
            })
            .collect();
        self.set(owner, RecordType::SRV, records);
    }

    /// How many questions for `owner` of `kind` the server has seen.
    pub fn queries(&self, owner: &str, kind: RecordType) -> usize {
        let owner = name(owner);
        self.queries
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(n, k)| *n == owner && *k == kind)
            .count()
    }

    /// Stops answering (the sockets close).
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Handler {
    records: Records,
    queries: Arc<Mutex<Vec<(Name, RecordType)>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let answers: Vec<Record> = match request.request_info() {
            Ok(info) => {
                let owner: Name = info.query.name().clone().into();
                let owner = owner.to_lowercase();
                let kind = info.query.query_type();
                self.queries
                    .lock()
                    .expect("not poisoned")
                    .push((owner.clone(), kind));
                let map = self.records.lock().expect("not poisoned");
                let known = map.keys().any(|(n, _)| *n == owner);
                if !known {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                map.get(&(owner, kind)).cloned().unwrap_or_default()
            }
            Err(_) => {
                metadata.response_code = ResponseCode::FormErr;
                Vec::new()
            }
        };
        let response = builder.build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                }
                .into()
            }
        }
    }
}

/// A resolver that asks only `server` (UDP, then TCP), without cache.
pub fn resolver(server: SocketAddr) -> TokioResolver {
    let mut config = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut config.connections {
        connection.port = server.port();
    }
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(1);
    options.attempts = 1;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![config]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .expect("a resolver")
}
