//! Joining a cluster with a one-time token.
//!
//! A token is issued by any member (`cluster init`, `POST /v1/cluster/tokens`)
//! without touching the log: it names some members' peer addresses, carries
//! the cluster CA certificate (so the joiner can authenticate the member it
//! dials), a random nonce, an expiry, and an HMAC over nonce and expiry
//! under the cluster key, which only members hold. The joining node dials a
//! member over the peer plane *without* a certificate — the one thing such
//! a caller may do is join — and sends the token. The leader checks the
//! HMAC, spends the nonce through the log (so a token works once,
//! cluster-wide), issues the node's certificate, records the member and adds
//! it as a raft learner; the node then asks to be promoted to voter when its
//! configuration says so and it has caught up.
//!
//! Wire form: `mrd1.` followed by the token's JSON in URL-safe base64.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use quinn::crypto::rustls::QuicClientConfig;
use raft::model::NodeId;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::peer::{self, Request, Response};
use crate::pki::{self, Ca, Identity, NodeCert};

const PREFIX: &str = "mrd1.";

/// A join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Members to dial: node id and peer address.
    pub peers: Vec<(NodeId, String)>,
    /// The cluster CA certificate, PEM.
    pub ca: String,
    /// One-time nonce, hex.
    pub nonce: String,
    /// Unix ms after which the token is refused.
    pub expires_at: u64,
    /// HMAC-SHA-256 of `nonce|expires_at` under the cluster key, hex.
    pub mac: String,
}

/// A node's request to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token.
    pub token: Token,
    /// The joining node's id.
    pub id: NodeId,
    /// Its region.
    pub region: String,
    /// Its peer address as others should dial it.
    pub peer: String,
    /// Its admin address.
    pub admin: String,
    /// Its proxy address.
    pub proxy: String,
}

/// What a joining node receives: its identity in the cluster.
#[derive(Clone, Serialize, Deserialize)]
pub struct Grant {
    /// The cluster CA certificate, PEM.
    pub ca_cert: String,
    /// The CA key, PEM (members can admit nodes in turn).
    pub ca_key: String,
    /// The node's certificate, PEM.
    pub cert: String,
    /// The node's key, PEM.
    pub key: String,
    /// The cluster key, hex.
    pub cluster_key: String,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grant { .. }")
    }
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token text is not a token.
    #[error("not a Meridian join token: {0}")]
    Malformed(String),
    /// No member answered, or every member refused.
    #[error("could not join: {0}")]
    Refused(String),
    /// The identity could not be saved.
    #[error(transparent)]
    Pki(#[from] pki::Error),
}

fn mac_input(nonce: &str, expires_at: u64) -> Vec<u8> {
    format!("{nonce}|{expires_at}").into_bytes()
}

impl Token {
    /// Issues a token valid for `ttl`, naming `peers`.
    pub fn issue(
        identity: &Identity,
        ca_pem: &str,
        peers: Vec<(NodeId, String)>,
        ttl: Duration,
        now_ms: u64,
    ) -> Self {
        let nonce = pki::hex(&pki::secret()[..16]);
        let expires_at = now_ms + ttl.as_millis() as u64;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &identity.cluster_key);
        let mac = pki::hex(aws_lc_rs::hmac::sign(&key, &mac_input(&nonce, expires_at)).as_ref());
        Self {
            peers,
            ca: ca_pem.to_owned(),
            nonce,
            expires_at,
            mac,
        }
    }

    /// Whether the MAC is the cluster's (constant time).
    pub fn verify(&self, cluster_key: &[u8]) -> bool {
        let Some(mac) = pki::unhex(&self.mac) else {
            return false;
        };
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cluster_key);
        aws_lc_rs::hmac::verify(&key, &mac_input(&self.nonce, self.expires_at), &mac).is_ok()
    }

    /// The printable form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("tokens serialise");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses the printable form.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::Malformed(format!("expected it to start with {PREFIX}")))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| Error::Malformed(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| Error::Malformed(e.to_string()))
    }
}

/// Issues the identity of a joining node (on a member holding the CA key).
pub fn grant(
    authority: &Ca,
    cluster_key: &[u8],
    id: NodeId,
    region: &str,
) -> Result<(Grant, String), pki::Error> {
    let NodeCert { cert_pem, key_pem } = authority.issue(id, region)?;
    let serial = {
        let parsed = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| {
            pki::Error::Invalid {
                path: "issued certificate".into(),
                message: e.to_string(),
            }
        })?;
        let der = rustls::pki_types::CertificateDer::from(parsed.1.contents);
        pki::peer_identity(&der)
            .map(|p| p.serial)
            .unwrap_or_default()
    };
    Ok((
        Grant {
            ca_cert: authority.cert_pem.clone(),
            ca_key: authority.key_pem.clone(),
            cert: cert_pem,
            key: key_pem,
            cluster_key: pki::hex(cluster_key),
        },
        serial,
    ))
}

/// Joins the cluster named by `token` and saves the identity it grants in
/// the node's data directory. The node then starts normally.
pub async fn join(
    config: &Config,
    token: &str,
    peer_port: u16,
    admin: SocketAddr,
    proxy: SocketAddr,
) -> Result<(), Error> {
    let token = Token::decode(token)?;
    let ca = x509_parser::pem::parse_x509_pem(token.ca.as_bytes())
        .map_err(|e| Error::Malformed(format!("the CA certificate: {e}")))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.1.contents))
        .map_err(|e| Error::Malformed(format!("the CA certificate: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Refused(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![peer::ALPN.to_vec()];
    let tls = QuicClientConfig::try_from(tls).map_err(|e| Error::Refused(e.to_string()))?;
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("a valid address");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Refused(e.to_string()))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));

    let request = JoinRequest {
        token: token.clone(),
        id: config.id,
        region: config.region.clone(),
        peer: format!("{}:{peer_port}", config.listen.advertise),
        admin: config.listen.advertised(admin),
        proxy: config.listen.advertised(proxy),
    };
    // Members may be electing a leader: go round the list until a join is
    // granted or refused for good, for at most 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut reasons = Vec::new();
    let mut candidates: Vec<(NodeId, String)> = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let Some((id, address)) = candidates.pop() else {
            candidates = token.peers.clone();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match ask(&endpoint, id, &address, &request).await {
            Ok(Response::Joined(grant)) => {
                let ca = Ca {
                    cert_pem: grant.ca_cert,
                    key_pem: grant.ca_key,
                };
                let cert = NodeCert {
                    cert_pem: grant.cert,
                    key_pem: grant.key,
                };
                let cluster_key = pki::unhex(&grant.cluster_key)
                    .ok_or_else(|| Error::Refused("bad cluster key".into()))?;
                Identity::save(&config.data_dir, &ca, true, &cert, &cluster_key)?;
                endpoint.close(0u32.into(), b"joined");
                tracing::info!(id = config.id, via = id, "joined the cluster");
                return Ok(());
            }
            Ok(Response::Redirect { leader, peer }) => candidates.push((leader, peer)),
            // A verdict on the token or the node is final.
            Ok(Response::Refused(reason)) if is_final(&reason) => {
                endpoint.close(0u32.into(), b"refused");
                return Err(Error::Refused(format!("node {id}: {reason}")));
            }
            Ok(Response::Refused(reason)) => reasons.push(format!("node {id}: {reason}")),
            Ok(_) => reasons.push(format!("node {id}: unexpected answer")),
            Err(error) => reasons.push(format!("node {id} at {address}: {error}")),
        }
    }
    endpoint.close(0u32.into(), b"giving up");
    reasons.dedup();
    Err(Error::Refused(reasons.join("; ")))
}

/// Refusals that retrying cannot change.
fn is_final(reason: &str) -> bool {
    [
        "already used",
        "expired",
        "not issued by this cluster",
        "already a member",
    ]
    .iter()
    .any(|r| reason.contains(r))
}

async fn ask(
    endpoint: &quinn::Endpoint,
    id: NodeId,
    address: &str,
    request: &JoinRequest,
) -> Result<Response, String> {
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(_) => tokio::net::lookup_host(address)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?,
    };
    let exchange = async {
        let connection = endpoint
            .connect(address, &pki::node_dns_name(id))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let bytes =
            peer::codec::encode(&Request::Join(request.clone())).map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv
            .read_to_end(peer::MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        peer::codec::decode::<Response>(&answer).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer within 20s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("t").unwrap();
        let cert = ca.issue(1, "r").unwrap();
        let cluster_key = pki::secret();
        Identity::save(dir.path(), &ca, true, &cert, &cluster_key).unwrap();
        let identity = Identity::load(dir.path()).unwrap();
        let token = Token::issue(
            &identity,
            &ca.cert_pem,
            vec![(1, "127.0.0.1:9443".into())],
            Duration::from_secs(60),
            1000,
        );
        let decoded = Token::decode(&token.encode()).unwrap();
        assert_eq!(decoded, token);
        assert!(decoded.verify(&cluster_key));
        assert!(!decoded.verify(&pki::secret()), "another cluster's key");
        let mut forged = decoded.clone();
        forged.expires_at += 1;
        assert!(!forged.verify(&cluster_key), "expiry is covered by the MAC");
        assert!(Token::decode("mrd1.!!!").is_err());
        assert!(Token::decode("hello").is_err());
    }
}
