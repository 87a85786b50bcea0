//! TLS termination and mTLS over real TLS connections, with certificates
//! and CRLs made here with rcgen, and tokio-rustls clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use node::config::RawConfig;
use node::tls::config::RawCertificate;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::get_with;
use crate::upstream::full;
use crate::{MockUpstream, TestNode, eventually, get};

// === certificates ===

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, PartialEq)]
enum Usage {
    Server,
    Client,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn leaf(&self, usage: Usage, names: &[&str], cn: &str, serial: u64, expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert, key }
    }

    fn server(&self, names: &[&str], serial: u64) -> Leaf {
        self.leaf(Usage::Server, names, names[0], serial, false)
    }

    /// A client certificate with a SPIFFE URI SAN.
    fn client(&self, name: &str, serial: u64) -> Leaf {
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, name);
        leaf_params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://example.org/{name}").try_into().unwrap(),
        )];
        leaf_params.serial_number = Some(SerialNumber::from(serial));
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert, key }
    }

    fn crl(&self, revoked: &[u64], number: u64) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2025, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// Writes `contents` to `dir/name` atomically (write, then rename).
fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    path
}

fn pair(dir: &Path, name: &str, leaf: &Leaf) -> RawCertificate {
    RawCertificate {
        cert: write(dir, &format!("{name}.crt"), &leaf.cert_pem()),
        key: write(dir, &format!("{name}.key"), &leaf.key_pem()),
    }
}

// === clients ===

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn client_config(
    trust: &Ca,
    identity: Option<&Leaf>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der()],
                PrivateKeyDer::Pkcs8(leaf.key.serialize_der().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An answer over TLS.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client TLS connection carrying HTTP/1.1 or h2 (by ALPN).
struct Conn {
    sender: Sender,
    /// The server's leaf certificate.
    peer: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

async fn open(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, connection) = stream.get_ref();
    let peer = connection.peer_certificates().unwrap()[0].clone();
    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    let version = connection.protocol_version();
    let io = TokioIo::new(stream);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Sender::H2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Sender::H1(sender)
    };
    Ok(Conn {
        sender,
        peer,
        alpn,
        version,
    })
}

impl Conn {
    async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://{host}{path}"),
        };
        let mut request = http::Request::get(uri);
        if let Sender::H1(_) = self.sender {
            request = request.header(http::header::HOST, host);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// Opens a connection and sends one GET.
async fn fetch(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    open(addr, sni, config)
        .await?
        .get(host, path, headers)
        .await
}

fn failures(node: &TestNode, reason: &str) -> f64 {
    node.metric(&format!(
        "meridian_tls_handshake_failures_total{{reason=\"{reason}\"}}"
    ))
}

// === setups ===

const API: &str = "api.example.com";

fn gateway_yaml(upstream: &MockUpstream) -> String {
    format!(
        r#"
upstreams:
  echo: {{ targets: ["{}"] }}
consumers:
  - {{ name: billing, id: c-billing }}
routes:
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: echo }}
  - {{ name: secure, match: {{ path_prefix: /secure }}, upstream: echo, tls: {{ client_cert: required }} }}
  - {{ name: machine, match: {{ path_prefix: /machine }}, upstream: echo, auth: [mtls] }}
  - {{ name: pay, match: {{ path_prefix: /pay }}, upstream: echo, tls: {{ redirect_https: true }} }}
"#,
        upstream.target()
    )
}

/// A PKI and the files of one node.
struct Setup {
    ca: Ca,
    dir: tempfile::TempDir,
    server: RawCertificate,
}

impl Setup {
    fn new() -> Self {
        let ca = Ca::new("Meridian Test CA");
        let dir = tempfile::tempdir().unwrap();
        let server = pair(dir.path(), "api", &ca.server(&[API], 100));
        Self { ca, dir, server }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn start(&self, upstream: &MockUpstream, tweak: impl FnOnce(&mut RawConfig)) -> TestNode {
        let server = self.server.clone();
        TestNode::start_with(&gateway_yaml(upstream), move |raw| {
            raw.tls.certificates = vec![server];
            raw.tls.reload_interval = Duration::from_secs(1);
            tweak(raw);
        })
        .await
    }

    /// A node asking for client certificates from this CA in `mode`.
    async fn start_mtls(
        &self,
        upstream: &MockUpstream,
        mode: &str,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> TestNode {
        let ca = write(self.path(), "clients-ca.pem", &self.ca.pem());
        let mode = mode.to_owned();
        self.start(upstream, move |raw| {
            raw.tls.client_auth.mode = mode;
            raw.tls.client_auth.ca = vec![ca];
            tweak(raw);
        })
        .await
    }

    fn client(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        client_config(&self.ca, identity, BOTH, &[b"http/1.1"])
    }
}

fn tls_addr(node: &TestNode) -> SocketAddr {
    node.proxy_tls.expect("the node has an HTTPS listener")
}

// === TLS termination ===

/// A TLS 1.1 ClientHello (no supported_versions extension), SNI
/// api.example.com, offering two CBC suites; with `sigalgs`, it also
/// carries a (TLS 1.2) signature_algorithms extension.
fn tls11_client_hello(sigalgs: bool) -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]);
    let name = API.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed.
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    if sigalgs {
        extensions.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    }
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start(&upstream, |_| {}).await;
    // A genuine TLS 1.1 hello has no signature_algorithms: rustls finds no
    // usable certificate signature first and answers handshake_failure (40);
    // with the extension it answers protocol_version (70). Either way: one
    // fatal alert record, then the connection is closed.
    for (sigalgs, alert) in [(false, 40), (true, 70)] {
        let mut tcp = TcpStream::connect(tls_addr(&node)).await.unwrap();
        tcp.write_all(&tls11_client_hello(sigalgs)).await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server closes the connection");
        // type 21 (alert), length 2, level fatal (2), description.
        assert_eq!(answer.len(), 7, "one alert record: {answer:?}");
        assert_eq!(answer[0], 0x15, "alert record: {answer:?}");
        assert_eq!(&answer[3..7], &[0x00, 0x02, 0x02, alert], "{answer:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            failures(&node, "protocol_version_or_cipher") >= 2.0
        })
        .await,
        "{}",
        node.gateway.metrics().render()
    );
    assert_eq!(upstream.count(), 0);
    node.stop().await;
}

#[tokio::test]
async fn tls_1_2_client_is_served_unless_min_version_is_1_3() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start(&upstream, |_| {}).await;
    let tls12 = client_config(&setup.ca, None, TLS12, &[b"http/1.1"]);
    let mut conn = open(tls_addr(&node), API, tls12.clone()).await.unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let answer = conn.get(API, "/open/a", &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");
    let conn = open(tls_addr(&node), API, setup.client(None))
        .await
        .unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_3));
    node.stop().await;

    let strict = setup
        .start(&upstream, |raw| raw.tls.min_version = "1.3".into())
        .await;
    let refused = open(tls_addr(&strict), API, tls12).await;
    assert!(refused.is_err(), "a TLS 1.2 client is refused");
    let mut conn = open(tls_addr(&strict), API, setup.client(None))
        .await
        .unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.get(API, "/open", &[]).await.unwrap().status, 200);
    assert!(failures(&strict, "protocol_version_or_cipher") >= 1.0);
    strict.stop().await;
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let api = setup.ca.server(&[API, "api.example.net"], 101);
    let other = setup.ca.server(&["*.other.example"], 102);
    let files = vec![
        pair(setup.path(), "api2", &api),
        pair(setup.path(), "other", &other),
    ];
    let node = setup
        .start(&upstream, move |raw| raw.tls.certificates = files)
        .await;
    let addr = tls_addr(&node);
    for (sni, expected) in [
        (API, &api),
        ("api.example.net", &api),
        ("x.other.example", &other),
    ] {
        let conn = open(addr, sni, setup.client(None)).await.unwrap();
        assert_eq!(conn.peer, expected.der(), "certificate for {sni}");
    }
    // An unknown name gets the first (default) certificate, which the
    // client then refuses for the wrong name.
    let unknown = open(addr, "unknown.example", setup.client(None)).await;
    let error = unknown
        .err()
        .expect("the default certificate does not name unknown.example");
    assert!(
        error.contains("api.example.com"),
        "the default (first) certificate: {error}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            failures(&node, "alert_received") >= 1.0
        })
        .await,
        "{}",
        node.gateway.metrics().render()
    );
    node.stop().await;
}

#[tokio::test]
async fn alpn_h2_and_http_1_1_reach_the_upstream_and_hsts_is_https_only() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start(&upstream, |_| {}).await;
    for (alpn, version) in [
        (b"h2".as_slice(), http::Version::HTTP_2),
        (b"http/1.1".as_slice(), http::Version::HTTP_11),
    ] {
        let config = client_config(&setup.ca, None, BOTH, &[alpn]);
        let mut conn = open(tls_addr(&node), API, config).await.unwrap();
        assert_eq!(conn.alpn.as_deref(), Some(alpn));
        let answer = conn.get(API, "/open/alpn", &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["uri"], "/open/alpn");
        assert_eq!(
            answer.headers["strict-transport-security"],
            "max-age=31536000"
        );
        let _ = version;
    }
    assert_eq!(upstream.count(), 2);
    let plain = get_with(&node.url("/open/plain"), &[("host", API)]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(!plain.headers.contains_key("strict-transport-security"));
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "http");
    node.stop().await;

    let custom = setup
        .start(&upstream, |raw| {
            raw.tls.hsts = "max-age=60; includeSubDomains".into();
        })
        .await;
    let answer = fetch(
        tls_addr(&custom),
        API,
        setup.client(None),
        API,
        "/open",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        answer.headers["strict-transport-security"],
        "max-age=60; includeSubDomains"
    );
    custom.stop().await;
    let off = setup
        .start(&upstream, |raw| raw.tls.hsts = "off".into())
        .await;
    let answer = fetch(tls_addr(&off), API, setup.client(None), API, "/open", &[])
        .await
        .unwrap();
    assert!(!answer.headers.contains_key("strict-transport-security"));
    off.stop().await;
}

#[tokio::test]
async fn certificates_reload_without_restart() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let first = setup.ca.server(&[API], 200);
    let files = pair(setup.path(), "live", &first);
    let node = setup
        .start(&upstream, move |raw| raw.tls.certificates = vec![files])
        .await;
    let addr = tls_addr(&node);
    let mut kept = open(addr, API, setup.client(None)).await.unwrap();
    assert_eq!(kept.peer, first.der());
    assert_eq!(kept.get(API, "/open/1", &[]).await.unwrap().status, 200);

    let second = setup.ca.server(&[API], 201);
    pair(setup.path(), "live", &second);
    assert!(
        eventually(Duration::from_secs(10), || async {
            open(addr, API, setup.client(None))
                .await
                .is_ok_and(|c| c.peer == second.der())
        })
        .await,
        "the new certificate is served"
    );
    // The connection opened before the change still works.
    assert_eq!(kept.get(API, "/open/2", &[]).await.unwrap().status, 200);
    assert!(node.metric("meridian_tls_reloads_total{kind=\"certificate\",result=\"ok\"}") >= 1.0);

    // A broken file keeps the previous certificate, and is counted.
    write(
        setup.path(),
        "live.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.metric("meridian_tls_reloads_total{kind=\"certificate\",result=\"failed\"}") >= 1.0
        })
        .await
    );
    let conn = open(addr, API, setup.client(None)).await.unwrap();
    assert_eq!(conn.peer, second.der());
    node.stop().await;
}

#[tokio::test]
async fn redirect_https_answers_308_on_plain_http() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start(&upstream, |_| {}).await;
    let port = tls_addr(&node).port();
    let answer = get_with(&node.url("/pay/invoices?id=7&x=a%20b"), &[("host", API)]).await;
    assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        answer.header("location"),
        format!("https://{API}:{port}/pay/invoices?id=7&x=a%20b")
    );
    assert_eq!(
        upstream.count(),
        0,
        "a redirect does not reach the upstream"
    );
    // Other routes are served over plain HTTP; HTTPS serves the route.
    assert_eq!(
        get_with(&node.url("/open"), &[("host", API)]).await.status,
        200
    );
    let answer = fetch(tls_addr(&node), API, setup.client(None), API, "/pay/x", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    node.stop().await;

    let advertised = setup
        .start(&upstream, |raw| raw.tls.https_port = Some(443))
        .await;
    let answer = get_with(&advertised.url("/pay?a=1"), &[("host", API)]).await;
    assert_eq!(answer.header("location"), format!("https://{API}/pay?a=1"));
    advertised.stop().await;
}

// === mTLS ===

#[tokio::test]
async fn mtls_good_unknown_ca_and_expired() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start_mtls(&upstream, "required", |_| {}).await;
    let addr = tls_addr(&node);
    let good = setup.ca.client("billing", 300);
    let answer = fetch(addr, API, setup.client(Some(&good)), API, "/open", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    // Without a certificate, with one from another CA, and an expired one.
    let stranger = Ca::new("Somebody Else").client("billing", 301);
    let expired = setup.ca.leaf(
        Usage::Client,
        &["billing.example.org"],
        "billing",
        302,
        true,
    );
    for (client, reason) in [
        (None, "no_client_certificate"),
        (Some(&stranger), "unknown_ca"),
        (Some(&expired), "expired"),
    ] {
        let result = fetch(addr, API, setup.client(client), API, "/open", &[]).await;
        assert!(result.is_err(), "refused: {reason}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                failures(&node, reason) >= 1.0
            })
            .await,
            "counted as {reason}"
        );
    }
    assert_eq!(upstream.count(), 1, "refused handshakes reach nothing");
    node.stop().await;
}

#[tokio::test]
async fn mtls_revocation_by_crl_file_reloaded_while_running() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let crl = write(setup.path(), "clients.crl", &setup.ca.crl(&[401], 1));
    let node = setup
        .start_mtls(&upstream, "required", move |raw| {
            raw.tls.client_auth.crl = vec![crl];
        })
        .await;
    let addr = tls_addr(&node);
    let good = setup.ca.client("billing", 400);
    let revoked = setup.ca.client("old", 401);
    let ok = fetch(addr, API, setup.client(Some(&good)), API, "/open", &[]).await;
    assert_eq!(ok.unwrap().status, 200);
    let refused = fetch(addr, API, setup.client(Some(&revoked)), API, "/open", &[]).await;
    assert!(refused.is_err());
    assert!(
        eventually(Duration::from_secs(5), || async {
            failures(&node, "revoked") >= 1.0
        })
        .await
    );

    // Revoke the good one too by rewriting the CRL while the node runs.
    write(setup.path(), "clients.crl", &setup.ca.crl(&[400, 401], 2));
    assert!(
        eventually(Duration::from_secs(10), || async {
            fetch(addr, API, setup.client(Some(&good)), API, "/open", &[])
                .await
                .is_err()
        })
        .await,
        "the updated CRL is used without a restart"
    );
    assert!(failures(&node, "revoked") >= 2.0);
    // A broken CRL file keeps the last good CRL.
    write(setup.path(), "clients.crl", "garbage");
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.metric("meridian_tls_reloads_total{kind=\"crl\",result=\"failed\"}") >= 1.0
        })
        .await
    );
    let fresh = setup.ca.client("fresh", 402);
    let ok = fetch(addr, API, setup.client(Some(&fresh)), API, "/open", &[]).await;
    assert_eq!(ok.unwrap().status, 200);
    assert!(
        fetch(addr, API, setup.client(Some(&good)), API, "/open", &[])
            .await
            .is_err()
    );
    node.stop().await;
}

#[tokio::test]
async fn mtls_revocation_by_crl_url_with_last_good_kept() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let crl = setup.ca.crl(&[501], 1);
    let server = MockUpstream::start(move |_| {
        let crl = crl.clone();
        async move { http::Response::new(full(crl)) }
    })
    .await;
    let url = format!("http://{}/ca.crl", server.target());
    let node = setup
        .start_mtls(&upstream, "required", move |raw| {
            raw.tls.client_auth.crl_urls = vec![url];
            raw.tls.client_auth.crl_refresh = Duration::from_secs(1);
        })
        .await;
    assert!(server.count() >= 1, "fetched before serving");
    let addr = tls_addr(&node);
    let good = setup.ca.client("billing", 500);
    let revoked = setup.ca.client("old", 501);
    let ok = fetch(addr, API, setup.client(Some(&good)), API, "/open", &[]).await;
    assert_eq!(ok.unwrap().status, 200);
    assert!(
        fetch(addr, API, setup.client(Some(&revoked)), API, "/open", &[])
            .await
            .is_err()
    );
    // The CRL server goes away: fetches fail, the last good CRL stays.
    server.shutdown();
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.metric("meridian_tls_crl_fetch_failures_total") >= 1.0
        })
        .await
    );
    assert!(
        fetch(addr, API, setup.client(Some(&revoked)), API, "/open", &[])
            .await
            .is_err()
    );
    let ok = fetch(addr, API, setup.client(Some(&good)), API, "/open", &[]).await;
    assert_eq!(ok.unwrap().status, 200);
    node.stop().await;
}

#[tokio::test]
async fn route_requires_a_client_certificate_on_an_optional_listener() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start_mtls(&upstream, "optional", |_| {}).await;
    let addr = tls_addr(&node);
    let anonymous = setup.client(None);
    let public = fetch(addr, API, anonymous.clone(), API, "/open", &[]).await;
    assert_eq!(public.unwrap().status, 200);
    let secure = fetch(addr, API, anonymous, API, "/secure", &[])
        .await
        .unwrap();
    assert_eq!(secure.status, StatusCode::FORBIDDEN);
    assert_eq!(
        secure.json()["error"]["code"],
        "client_certificate_required"
    );
    // Plain HTTP cannot carry a client certificate either.
    let plain = get_with(&node.url("/secure"), &[("host", API)]).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    assert_eq!(upstream.count(), 1, "refusals reach nothing");
    assert!(node.metric("meridian_tls_client_cert_refusals_total{reason=\"missing\"}") >= 2.0);

    let good = setup.ca.client("billing", 600);
    let secure = fetch(addr, API, setup.client(Some(&good)), API, "/secure", &[])
        .await
        .unwrap();
    assert_eq!(secure.status, StatusCode::OK);
    // Host differing from the SNI on a route that needs a certificate: 421.
    let mut conn = open(addr, API, setup.client(Some(&good))).await.unwrap();
    let misdirected = conn.get("other.example.com", "/secure", &[]).await.unwrap();
    assert_eq!(misdirected.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(misdirected.json()["error"]["code"], "misdirected_request");
    let misdirected = conn
        .get("other.example.com", "/machine", &[])
        .await
        .unwrap();
    assert_eq!(misdirected.status, StatusCode::MISDIRECTED_REQUEST);
    // ... but not on a route that does not.
    let public = conn.get("other.example.com", "/open", &[]).await.unwrap();
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(upstream.count(), 3);
    assert!(node.metric("meridian_tls_client_cert_refusals_total{reason=\"sni_mismatch\"}") >= 2.0);
    node.stop().await;
}

#[tokio::test]
async fn mtls_identity_reaches_the_upstream_and_client_copies_do_not() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start_mtls(&upstream, "optional", |_| {}).await;
    let addr = tls_addr(&node);
    let forged = [
        ("x-consumer-id", "admin"),
        ("x-consumer-name", "admin"),
        ("x-client-cert-subject", "CN=admin"),
        ("x-client-cert-identity", "spiffe://example.org/admin"),
    ];
    // A certificate whose identity names no consumer.
    let billing = setup.ca.client("billing", 700);
    let answer = fetch(
        addr,
        API,
        setup.client(Some(&billing)),
        API,
        "/machine",
        &forged,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(
        seen.headers["x-client-cert-identity"],
        "spiffe://example.org/billing"
    );
    assert_eq!(seen.headers["x-client-cert-subject"], "CN=billing");
    // Not a configured consumer: the identity is the subject, and the
    // forged consumer headers are gone.
    assert_eq!(seen.headers["x-auth-sub"], "spiffe://example.org/billing");
    assert_eq!(seen.headers["x-auth-method"], "mtls");
    assert!(!seen.headers.contains_key("x-consumer-id"));
    assert!(!seen.headers.contains_key("x-consumer-name"));

    // The certificate's serial revoked in the replicated state (`meridian
    // revoke cert`): refused from then on, without a CRL.
    let serial = seen.headers["x-client-cert-serial"]
        .to_str()
        .unwrap()
        .to_owned();
    let reply = crate::send(
        http::Request::post(node.admin_url("/v1/revocations?wait=all"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::json!({ "serial": serial }).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let count = upstream.count();
    let revoked = fetch(
        addr,
        API,
        setup.client(Some(&billing)),
        API,
        "/machine",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.json()["error"]["code"], "certificate_revoked");
    assert_eq!(upstream.count(), count);

    // Without a certificate: 401 from auth, nothing forwarded; on a public
    // route the forged headers are removed.
    let count = upstream.count();
    let denied = fetch(addr, API, setup.client(None), API, "/machine", &forged)
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.json()["error"]["code"], "missing_client_certificate");
    assert_eq!(upstream.count(), count);
    let public = fetch(addr, API, setup.client(None), API, "/open", &forged)
        .await
        .unwrap();
    assert_eq!(public.status, StatusCode::OK);
    let seen = upstream.last();
    for (name, _) in forged {
        assert!(!seen.headers.contains_key(name), "{name} was removed");
    }
    let plain = get_with(&node.url("/open"), &forged).await;
    assert_eq!(plain.status, StatusCode::OK);
    for (name, _) in forged {
        assert!(
            !upstream.last().headers.contains_key(name),
            "{name} was removed"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn mtls_identity_names_a_known_consumer() {
    let upstream = MockUpstream::echo("api").await;
    let setup = Setup::new();
    let node = setup.start_mtls(&upstream, "optional", |_| {}).await;
    // A certificate whose only identity is the CN "billing" (a consumer).
    let billing = setup.ca.leaf(Usage::Client, &[], "billing", 800, false);
    let answer = fetch(
        tls_addr(&node),
        API,
        setup.client(Some(&billing)),
        API,
        "/machine",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-consumer-id"], "c-billing");
    assert_eq!(seen.headers["x-consumer-name"], "billing");
    assert_eq!(seen.headers["x-client-cert-identity"], "billing");
    let _ = get(&node.url("/open")).await;
    node.stop().await;
}
