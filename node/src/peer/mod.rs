//! The peer plane: one QUIC endpoint per node, mutually authenticated with
//! certificates from the cluster CA.
//!
//! - **Identity.** A server requires a client certificate chained to the
//!   cluster CA and reads the caller's node id from it; a client dials
//!   `node-<id>.meridian`, so it only talks to the node it meant. A peer
//!   whose certificate serial is revoked in the replicated state is refused.
//! - **Framing.** One request per bidirectional stream: the caller writes a
//!   bincode [`Request`] and finishes its side; the server answers with one
//!   [`Response`]. Both directions are bounded by [`MAX_FRAME`] (a caller
//!   without a certificate, which may only join, by [`MAX_ANONYMOUS_FRAME`]);
//!   a malformed or oversized frame gets an error answer and closes that
//!   stream only.
//! - **Uses.** Raft RPC ([`raft::network::Transport`] is implemented here),
//!   global rate-limit counters (`ratelimit::sync`), health gossip
//!   (`regions::gossip`) and cross-region forwarding of proxied requests.
//! - **Forwarding.** A stream that starts with [`FORWARD`] instead of a
//!   frame carries one proxied HTTP/1.1 exchange, streamed both ways
//!   ([`PeerPlane::open_forward`]; served by the [`Forwarder`],
//!   `proxy::fallback`). Only a caller with a member certificate may open
//!   one. No bincode frame starts with these bytes (a frame starts with its
//!   variant index, a small little-endian `u32`).

pub mod codec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft::Node;
use raft::model::NodeId;
use raft::network::{RaftRequest, RaftResponse, Transport, TransportError};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::pki::{self, Identity, PeerIdentity};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// Largest frame accepted from a caller without a certificate.
pub const MAX_ANONYMOUS_FRAME: usize = 64 << 10;

/// The ALPN protocol of the peer plane.
pub const ALPN: &[u8] = b"meridian-peer/1";

/// The first bytes of a stream that forwards a proxied request.
pub const FORWARD: [u8; 4] = [0xff, b'F', b'W', b'D'];

/// A stream carrying one forwarded HTTP exchange.
pub type ForwardStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// What one peer asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// A raft RPC.
    Raft(RaftRequest),
    /// A write forwarded to the leader.
    Write(raft::model::Request),
    /// The index this node has applied up to.
    Applied,
    /// A new node asks to join with a token.
    Join(crate::join::JoinRequest),
    /// A learner asks the leader to make it a voter.
    Promote(NodeId),
    /// Remove a node from the cluster (sent to the leader).
    Remove(NodeId),
    /// Global rate-limit counters that changed (answered with `Done`).
    Counters(crate::ratelimit::sync::Batch),
    /// Health gossip: the sender's report (answered with `Done`).
    Health(crate::regions::gossip::Report),
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// The raft RPC's answer.
    Raft(RaftResponse),
    /// A forwarded write was committed.
    Written {
        /// Its log index.
        index: u64,
        /// What applying it produced.
        outcome: raft::model::Outcome,
    },
    /// The last applied log index.
    Applied(u64),
    /// A join was granted: the new node's identity.
    Joined(crate::join::Grant),
    /// Ask the leader instead.
    Redirect {
        /// The leader's id.
        leader: NodeId,
        /// Its peer address.
        peer: String,
    },
    /// The request was carried out.
    Done,
    /// The request could not be served.
    Refused(String),
}

/// Why the peer plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS configuration was refused.
    #[error("peer TLS configuration: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the peer endpoint on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What a node does with the requests its peers send.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// Whether a verified peer may talk to this node at all.
    fn admit(&self, peer: &PeerIdentity) -> bool;

    /// Answers one request. `peer` is `None` for a caller without a
    /// certificate (a node joining with a token), which may only join.
    async fn handle(&self, peer: Option<&PeerIdentity>, request: Request) -> Response;
}

/// What a node does with proxied requests other nodes forward to it.
#[async_trait::async_trait]
pub trait Forwarder: Send + Sync + 'static {
    /// Serves the HTTP exchange on `stream`, forwarded by `peer`.
    async fn serve(&self, peer: PeerIdentity, stream: ForwardStream);
}

/// The node's QUIC endpoint.
pub struct PeerPlane {
    endpoint: quinn::Endpoint,
    id: NodeId,
    connections: Mutex<HashMap<NodeId, quinn::Connection>>,
    service: OnceLock<Arc<dyn Service>>,
    forwarder: OnceLock<Arc<dyn Forwarder>>,
    /// Test and chaos seam: peers this node neither calls nor answers.
    blocked: Mutex<std::collections::HashSet<NodeId>>,
    /// `[peers]` in node.toml: where to dial a node instead of the address
    /// it advertises.
    dial: Mutex<HashMap<NodeId, String>>,
    /// When each peer last answered (or its connection was last replaced).
    answered: Mutex<HashMap<NodeId, tokio::time::Instant>>,
}

/// A peer connection that has answered nothing for this long is replaced
/// at the next timeout.
const STALE: Duration = Duration::from_secs(2);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .expect("10s is a valid QUIC idle timeout"),
    ));
    transport.max_concurrent_bidi_streams(1024u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// The endpoint configuration: a stateless-reset key that is the same
/// across restarts (derived from the node's own private key), and
/// connection ids that are not tied to one process. A peer still holding a
/// connection to the node's previous process then gets, at its first
/// packet, a stateless reset it recognises, and reconnects at once. With
/// quinn's defaults (a random reset key and connection ids keyed per start)
/// the new process dropped those packets and the peer kept sending into the
/// dead connection until the 10 s idle timeout, so a restarted node was not
/// replicated to for up to 10 s after its death (seen by the chaos
/// harness's `follower-restart` scenario).
fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let mut material = b"meridian peer v1 stateless reset ".to_vec();
    material.extend_from_slice(identity.key.secret_der());
    let reset = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &material);
    let mut config = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        reset.as_ref(),
    )));
    config.cid_generator(|| Box::new(ConnectionIds));
    config
}

/// Random 8-byte connection ids. Any id may be ours (the default
/// `validate`), so a packet for a connection of this node's previous
/// process is answered with a stateless reset instead of being dropped.
struct ConnectionIds;

impl quinn::ConnectionIdGenerator for ConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            bytes = fastrand::u64(..).to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

impl PeerPlane {
    /// Binds the UDP socket of the peer plane (before the identity is
    /// known, so a joining node can announce its port).
    pub fn socket(address: SocketAddr) -> Result<std::net::UdpSocket, Error> {
        std::net::UdpSocket::bind(address).map_err(|source| Error::Bind { address, source })
    }

    /// Starts the endpoint on `socket` with the node's identity.
    pub fn bind(socket: std::net::UdpSocket, identity: &Identity) -> Result<Arc<Self>, Error> {
        let address = socket.local_addr().map_err(|source| Error::Bind {
            address: "0.0.0.0:0".parse().expect("a valid address"),
            source,
        })?;
        let tls = |e: rustls::Error| Error::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        roots.add(identity.ca.clone()).map_err(tls)?;
        let roots = Arc::new(roots);
        // Callers without a certificate are let through the handshake so a
        // node can join with a token; `Service::handle` lets them do
        // nothing else.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(server).map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport_config());

        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let client = QuicClientConfig::try_from(client).map_err(|e| Error::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport_config());

        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Tls("no async runtime for QUIC".into()))?;
        let mut endpoint =
            quinn::Endpoint::new(endpoint_config(identity), Some(server), socket, runtime)
                .map_err(|source| Error::Bind { address, source })?;
        endpoint.set_default_client_config(client);
        let id = identity.own().map_or(0, |own| own.id);
        Ok(Arc::new(Self {
            endpoint,
            id,
            connections: Mutex::new(HashMap::new()),
            service: OnceLock::new(),
            forwarder: OnceLock::new(),
            blocked: Mutex::new(std::collections::HashSet::new()),
            dial: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Installs what answers incoming requests.
    pub fn set_service(&self, service: Arc<dyn Service>) {
        let _ = self.service.set(service);
    }

    /// Installs what serves forwarded requests.
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// Dials each listed node at the given address instead of the one it
    /// advertises (`[peers]` in node.toml).
    pub fn set_dial_addresses(&self, addresses: impl IntoIterator<Item = (NodeId, String)>) {
        *self.dial.lock().unwrap_or_else(|e| e.into_inner()) = addresses.into_iter().collect();
    }

    /// Stops talking to `peer` in both directions (tests and chaos: a
    /// partition without touching the network).
    pub fn block(&self, peer: NodeId) {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);
        if let Some(connection) = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer)
        {
            connection.close(3u32.into(), b"blocked");
        }
    }

    /// Undoes [`PeerPlane::block`].
    pub fn unblock(&self, peer: NodeId) {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }

    fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&peer)
    }

    /// Serves incoming connections until `shutdown`.
    pub async fn serve(self: Arc<Self>, tasks: TaskTracker, shutdown: CancellationToken) {
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let plane = self.clone();
            let (tasks_inner, shutdown) = (tasks.clone(), shutdown.clone());
            tasks.spawn(
                async move {
                    if let Err(error) = plane
                        .serve_connection(incoming, tasks_inner, shutdown)
                        .await
                    {
                        tracing::debug!(%error, "peer connection ended");
                    }
                }
                .instrument(tracing::debug_span!("peer-connection")),
            );
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        // Let the endpoint drain so its UDP port is free when the node is gone.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn serve_connection(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), quinn::ConnectionError> {
        let connection = incoming.await?;
        let peer = connection
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().and_then(pki::peer_identity));
        if let Some(peer) = &peer {
            let admitted = !self.is_blocked(peer.id)
                && self.service.get().is_none_or(|service| service.admit(peer));
            if !admitted {
                tracing::warn!(peer = peer.id, serial = %peer.serial, "refused a peer");
                connection.close(2u32.into(), b"refused");
                return Ok(());
            }
        }
        let peer = peer.map(Arc::new);
        loop {
            let (send, recv) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                stream = connection.accept_bi() => stream?,
            };
            let plane = self.clone();
            let peer = peer.clone();
            tasks.spawn(async move { plane.serve_stream(peer.as_deref(), send, recv).await });
        }
    }

    async fn serve_stream(
        &self,
        peer: Option<&PeerIdentity>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        // A caller without a certificate may only ask to join, which takes
        // a few hundred bytes: it gets a small bound, not a peer's.
        let limit = if peer.is_some() {
            MAX_FRAME
        } else {
            MAX_ANONYMOUS_FRAME
        };
        let mut start = [0u8; 4];
        let read = match recv.read_exact(&mut start).await {
            Ok(()) if start == FORWARD => {
                match (peer, self.forwarder.get()) {
                    (Some(peer), Some(forwarder)) => {
                        forwarder
                            .serve(peer.clone(), tokio::io::join(recv, send))
                            .await;
                    }
                    _ => {
                        let _ = send.reset(5u32.into());
                    }
                }
                return;
            }
            Ok(()) => recv
                .read_to_end(limit - start.len())
                .await
                .map(|rest| [&start[..], &rest].concat())
                .map_err(|e| e.to_string()),
            // A frame shorter than the marker: decode what there is.
            Err(quinn::ReadExactError::FinishedEarly(n)) => Ok(start[..n].to_vec()),
            Err(error) => Err(error.to_string()),
        };
        let response = match read {
            Err(error) => Response::Refused(format!("unreadable request: {error}")),
            Ok(bytes) => match codec::decode::<Request>(&bytes) {
                Err(error) => Response::Refused(format!("malformed request: {error}")),
                Ok(request) => match self.service.get() {
                    Some(service) => service.handle(peer, request).await,
                    None => Response::Refused("this node is starting".into()),
                },
            },
        };
        match codec::encode(&response) {
            Ok(bytes) => {
                let _ = send.write_all(&bytes).await;
            }
            Err(error) => tracing::warn!(%error, "cannot encode a peer response"),
        }
        let _ = send.finish();
    }

    async fn connection(
        &self,
        target: NodeId,
        address: &str,
    ) -> Result<quinn::Connection, TransportError> {
        if let Some(connection) = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let dial = self
            .dial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned();
        let address = dial.as_deref().unwrap_or(address);
        let address: SocketAddr = match address.parse() {
            Ok(address) => address,
            Err(_) => tokio::net::lookup_host(address)
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| TransportError::Unreachable(format!("cannot resolve {address}")))?,
        };
        let connecting = self
            .endpoint
            .connect(address, &pki::node_dns_name(target))
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let connection = connecting
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target, connection.clone());
        Ok(connection)
    }

    /// Sends `request` to node `target` at `address`; answers within `timeout`.
    pub async fn request(
        &self,
        target: NodeId,
        address: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let bytes = codec::encode(request).map_err(|e| TransportError::Failed(e.to_string()))?;
        let answer = self.exchange(target, address, &bytes, timeout).await?;
        codec::decode::<Response>(&answer).map_err(|e| TransportError::Failed(e.to_string()))
    }

    /// Writes one frame on a new stream to node `target` and reads the
    /// answering frame, within `timeout`. [`request`](Self::request)
    /// encodes and decodes around it; it is public so tests can send frames
    /// a well-behaved node never would.
    pub async fn exchange(
        &self,
        target: NodeId,
        address: &str,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        if self.is_blocked(target) {
            return Err(TransportError::Unreachable(format!(
                "node {target} is blocked"
            )));
        }
        let exchange = async {
            let failed = |e: &dyn std::fmt::Display| TransportError::Failed(e.to_string());
            let (mut send, mut recv) = self.open_stream(target, address).await?;
            send.write_all(frame).await.map_err(|e| failed(&e))?;
            send.finish().map_err(|e| failed(&e))?;
            recv.read_to_end(MAX_FRAME).await.map_err(|e| failed(&e))
        };
        let answer = tokio::time::timeout(timeout, exchange).await;
        let now = tokio::time::Instant::now();
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(Ok(answer)) => {
                answered.insert(target, now);
                Ok(answer)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                // A connection that has answered nothing for STALE is
                // dropped, so the next call dials afresh: after a partition
                // heals, the old connection may sit in QUIC's exponential
                // probe backoff for seconds (seen by the chaos harness's
                // `region-partition` scenario), while a new handshake
                // succeeds in one round trip.
                let stale = answered
                    .get(&target)
                    .is_none_or(|at| now.duration_since(*at) >= STALE);
                if stale {
                    answered.insert(target, now);
                    if let Some(connection) = self
                        .connections
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&target)
                    {
                        connection.close(4u32.into(), b"stale");
                    }
                }
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    /// A new bidirectional stream to node `target` (dialled at `address`
    /// when not connected); a connection that cannot open one is dropped.
    async fn open_stream(
        &self,
        target: NodeId,
        address: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let connection = self.connection(target, address).await?;
        connection.open_bi().await.map_err(|e| {
            self.connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&target);
            TransportError::Unreachable(e.to_string())
        })
    }

    /// Opens a stream to node `target` at `address` for one forwarded HTTP
    /// exchange (see [`FORWARD`]).
    pub async fn open_forward(
        &self,
        target: NodeId,
        address: &str,
    ) -> Result<ForwardStream, TransportError> {
        if self.is_blocked(target) {
            return Err(TransportError::Unreachable(format!(
                "node {target} is blocked"
            )));
        }
        let (mut send, recv) = self.open_stream(target, address).await?;
        send.write_all(&FORWARD)
            .await
            .map_err(|e| TransportError::Failed(e.to_string()))?;
        Ok(tokio::io::join(recv, send))
    }

    /// The current round-trip time estimate to `peer`, if connected.
    pub fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .filter(|c| c.close_reason().is_none())
            .map(quinn::Connection::rtt)
    }

    /// This node's id (from its certificate).
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl Transport for PeerPlane {
    async fn call(
        &self,
        target: NodeId,
        node: &Node,
        request: RaftRequest,
        timeout: Duration,
    ) -> Result<RaftResponse, TransportError> {
        match self
            .request(target, &node.peer, &Request::Raft(request), timeout)
            .await?
        {
            Response::Raft(response) => Ok(response),
            Response::Refused(reason) => Err(TransportError::Failed(reason)),
            _ => Err(TransportError::Failed(
                "unexpected answer to a raft RPC".into(),
            )),
        }
    }
}
