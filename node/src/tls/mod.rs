//! TLS termination and mTLS for the HTTPS proxy listener (`listen.proxy-tls`).
//!
//! - Certificates: `[[tls.certificates]]`, each picked by the SNI names in
//!   its certificate's DNS SANs (`*.example.com` SANs match one label); a
//!   client without SNI, or naming no configured certificate, gets the
//!   first one (the default).
//! - Versions: TLS 1.2 and 1.3 (`min-version = "1.3"` for 1.3 only); the
//!   cipher suites are fixed, see [`config::provider`]. ALPN offers `h2`
//!   and `http/1.1`; the connection is then served by the same hyper path
//!   as the plain listener.
//! - Reload: every `tls.reload-interval` (and on SIGHUP) the certificate,
//!   key and CRL files are checked; a changed file is re-read, and a broken
//!   one keeps the previous certificate or CRL (logged and counted). CRL URLs
//!   are fetched every `crl-refresh` (conditional GET); a failed fetch keeps
//!   the last good CRL. The client-certificate verifier is rebuilt on change
//!   and swapped atomically behind [`ReloadingVerifier`], so new handshakes
//!   use it and open connections are untouched.
//! - Identity of a client certificate: the first SAN URI, else the first
//!   SAN DNS name, else the subject CN.
//!
//! Metrics: `meridian_tls_handshakes_total`,
//! `meridian_tls_handshake_failures_total{reason}`,
//! `meridian_tls_client_cert_refusals_total{reason}`,
//! `meridian_tls_reloads_total{kind,result}`,
//! `meridian_tls_crl_fetch_failures_total`.

pub mod config;
pub mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt;
use metrics::Counter;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

pub use self::config::{ClientAuthMode, MinVersion, RawTls, TlsSettings};
use crate::metrics::Metrics;

/// What the request path knows about the TLS connection a request came on.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI name the client sent (lowercase).
    pub sni: Option<String>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The verified client certificate, if one was presented.
    pub client: Option<ClientIdentity>,
}

/// A verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// SAN URI, else SAN DNS name, else subject CN.
    pub identity: String,
    /// Where `identity` came from: `uri`, `dns` or `cn`.
    pub source: &'static str,
    /// The subject as an RFC 4514 string.
    pub subject: String,
    /// The serial number, hex.
    pub serial: String,
}

impl ClientIdentity {
    /// Reads the identity from a DER certificate. Values that could not be
    /// sent as header values are skipped.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        let mut uri = None;
        let mut dns = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(value) if uri.is_none() && printable(value) => {
                        uri = Some((*value).to_owned());
                    }
                    GeneralName::DNSName(value) if dns.is_none() && printable(value) => {
                        dns = Some(value.to_ascii_lowercase());
                    }
                    _ => {}
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| printable(cn))
            .map(str::to_owned);
        let (identity, source) = match (uri, dns, cn) {
            (Some(uri), _, _) => (uri, "uri"),
            (None, Some(dns), _) => (dns, "dns"),
            (None, None, Some(cn)) => (cn, "cn"),
            (None, None, None) => return None,
        };
        let subject = cert.subject().to_string();
        Some(Self {
            identity,
            source,
            subject: if printable(&subject) {
                subject
            } else {
                String::new()
            },
            serial: crate::pki::hex(cert.tbs_certificate.raw_serial()),
        })
    }
}

/// Sent upstream: the verified client certificate's identity.
pub static CLIENT_CERT_IDENTITY: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-identity");
/// Sent upstream: the verified client certificate's subject.
pub static CLIENT_CERT_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-subject");
/// Sent upstream: the verified client certificate's serial (hex).
pub static CLIENT_CERT_SERIAL: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-serial");

/// Writes the `x-client-cert-*` headers for `cert` (client-sent copies are
/// removed by `auth` before).
pub fn client_cert_headers(cert: &ClientIdentity, headers: &mut http::HeaderMap) {
    for (name, value) in [
        (&CLIENT_CERT_IDENTITY, &cert.identity),
        (&CLIENT_CERT_SUBJECT, &cert.subject),
        (&CLIENT_CERT_SERIAL, &cert.serial),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value)
            && !value.is_empty()
        {
            headers.insert(name.clone(), value);
        }
    }
}

// === certificates by SNI ===

#[derive(Debug)]
struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Certificates {
    fn new(keys: Vec<CertifiedKey>) -> Option<Self> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for key in keys {
            let key = Arc::new(key);
            for name in dns_names(&key.cert[0]) {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
            default.get_or_insert(key);
        }
        Some(Self {
            exact,
            wildcard,
            default: default?,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(key) = self.exact.get(&name) {
                return key.clone();
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return key.clone();
            }
        }
        self.default.clone()
    }
}

/// The DNS SANs of a certificate, lowercase.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[derive(Debug)]
struct Resolver(ArcSwap<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

// === client certificates ===

/// Marker message of the error returned while no CRL could be loaded.
const CRL_UNAVAILABLE: &str = "no CRL is available yet";

/// A client-certificate verifier whose inner WebPKI verifier (roots + CRLs)
/// is rebuilt on CRL changes and swapped atomically.
#[derive(Debug)]
pub struct ReloadingVerifier {
    mode: ClientAuthMode,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
    /// `None` while CRL sources are configured but none could be loaded:
    /// client certificates are then refused (fail closed).
    inner: ArcSwap<Option<Arc<dyn ClientCertVerifier>>>,
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode != ClientAuthMode::None
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuthMode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.inner.load().as_ref() {
            Some(inner) => inner.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(CRL_UNAVAILABLE.into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === metrics ===

/// Counters labelled by a small static set of reasons, made on first use.
struct Reasons {
    metrics: Arc<Metrics>,
    name: &'static str,
    label: &'static str,
    made: Mutex<Vec<(&'static str, Counter)>>,
}

impl Reasons {
    fn new(metrics: &Arc<Metrics>, name: &'static str, label: &'static str) -> Self {
        Self {
            metrics: metrics.clone(),
            name,
            label,
            made: Mutex::new(Vec::new()),
        }
    }

    fn count(&self, reason: &'static str) {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = made.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
            return;
        }
        let counter = self
            .metrics
            .counter(self.name, &[(self.label, reason.to_owned())]);
        counter.increment(1);
        made.push((reason, counter));
    }
}

/// The TLS series of a node.
pub struct TlsMetrics {
    handshakes: Counter,
    failures: Reasons,
    refusals: Reasons,
    crl_fetch_failures: Counter,
    metrics: Arc<Metrics>,
}

impl TlsMetrics {
    fn new(metrics: &Arc<Metrics>) -> Self {
        let this = Self {
            handshakes: metrics.counter("meridian_tls_handshakes_total", &[]),
            failures: Reasons::new(metrics, "meridian_tls_handshake_failures_total", "reason"),
            refusals: Reasons::new(metrics, "meridian_tls_client_cert_refusals_total", "reason"),
            crl_fetch_failures: metrics.counter("meridian_tls_crl_fetch_failures_total", &[]),
            metrics: metrics.clone(),
        };
        this.handshakes.increment(0);
        this.crl_fetch_failures.increment(0);
        this
    }

    /// Counts a request refused for its client certificate (`missing`,
    /// `sni_mismatch`).
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.count(reason);
    }

    fn reload(&self, kind: &'static str, ok: bool) {
        self.metrics
            .counter(
                "meridian_tls_reloads_total",
                &[
                    ("kind", kind.to_owned()),
                    ("result", if ok { "ok" } else { "failed" }.to_owned()),
                ],
            )
            .increment(1);
    }
}

/// Why a handshake failed, as a metric label.
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof => "eof",
            _ => "io",
        };
    };
    match tls {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            _ => "bad_certificate",
        },
        E::NoCertificatesPresented => "no_client_certificate",
        E::PeerIncompatible(_) => "protocol_version_or_cipher",
        E::PeerMisbehaved(_) => "peer_misbehaved",
        E::InvalidMessage(_) => "invalid_message",
        E::AlertReceived(_) => "alert_received",
        E::InappropriateHandshakeMessage { .. } | E::InappropriateMessage { .. } => {
            "unexpected_message"
        }
        E::General(message) if message == CRL_UNAVAILABLE => "crl_unavailable",
        _ => "other",
    }
}

// === the listener's TLS ===

/// The TLS side of the HTTPS listener: the rustls configuration with its
/// reloadable certificates and client verifier.
pub struct Tls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    acceptor: tokio_rustls::TlsAcceptor,
    certificates: Arc<Resolver>,
    verifier: Option<Arc<ReloadingVerifier>>,
    roots: Arc<RootCertStore>,
    crls: Mutex<CrlState>,
    /// The TLS series.
    pub metrics: TlsMetrics,
}

/// CRLs by source; the last good one of each is kept.
#[derive(Default)]
struct CrlState {
    files: Vec<(
        PathBuf,
        Option<Stamp>,
        Vec<CertificateRevocationListDer<'static>>,
    )>,
    urls: Vec<UrlCrl>,
}

struct UrlCrl {
    uri: http::Uri,
    etag: Option<http::HeaderValue>,
    last_modified: Option<http::HeaderValue>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Largest CRL accepted from a URL.
const MAX_CRL_BYTES: usize = 16 << 20;
/// Time allowed for one CRL fetch.
const CRL_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl Tls {
    /// Loads the certificates, CAs and CRL files of validated `settings`.
    pub fn new(settings: TlsSettings, metrics: &Arc<Metrics>) -> Result<Arc<Self>, String> {
        let provider = config::provider();
        let keys = settings
            .certificates
            .iter()
            .enumerate()
            .map(|(i, files)| config::load_certified_key(i, files, &provider))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let certificates = Arc::new(Resolver(ArcSwap::from_pointee(
            Certificates::new(keys).ok_or("no certificate configured")?,
        )));
        let client = &settings.client_auth;
        let mut roots = RootCertStore::empty();
        for (i, path) in client.ca.iter().enumerate() {
            roots.add_parsable_certificates(config::load_cas(i, path).map_err(|e| e.to_string())?);
        }
        let roots = Arc::new(roots);
        let mut crls = CrlState::default();
        for (i, path) in client.crl.iter().enumerate() {
            let loaded = config::load_crl_file(i, path).map_err(|e| e.to_string())?;
            crls.files.push((path.clone(), stamp(path), loaded));
        }
        crls.urls = client
            .crl_urls
            .iter()
            .map(|uri| UrlCrl {
                uri: uri.clone(),
                etag: None,
                last_modified: None,
                crls: Vec::new(),
            })
            .collect();
        let verifier = (client.mode != ClientAuthMode::None).then(|| {
            Arc::new(ReloadingVerifier {
                mode: client.mode,
                hints: roots.subjects(),
                provider: provider.clone(),
                inner: ArcSwap::from_pointee(None),
            })
        });
        let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS configuration: {e}"))?;
        let mut server = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(certificates.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            settings,
            provider,
            certificates,
            verifier,
            roots,
            crls: Mutex::new(crls),
            metrics: TlsMetrics::new(metrics),
        };
        tls.rebuild_verifier()?;
        Ok(Arc::new(tls))
    }

    /// The validated settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Rebuilds the client verifier from the roots and the current CRLs.
    fn rebuild_verifier(&self) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let client = &self.settings.client_auth;
        let crls: Vec<CertificateRevocationListDer<'static>> = {
            let state = self.crls.lock().unwrap_or_else(|e| e.into_inner());
            state
                .files
                .iter()
                .flat_map(|(_, _, crls)| crls.iter().cloned())
                .chain(state.urls.iter().flat_map(|u| u.crls.iter().cloned()))
                .collect()
        };
        let sources = client.crl.len() + client.crl_urls.len();
        if sources > 0 && crls.is_empty() {
            verifier.inner.store(Arc::new(None));
            return Ok(());
        }
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .with_crls(crls);
        if client.allow_unknown_revocation {
            builder = builder.allow_unknown_revocation_status();
        }
        if client.mode == ClientAuthMode::Optional {
            builder = builder.allow_unauthenticated();
        }
        let built = builder
            .build()
            .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
        verifier.inner.store(Arc::new(Some(built)));
        Ok(())
    }

    /// Runs the TLS handshake on `stream` within `timeout`; the failure
    /// reason is counted and returned.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, Arc<TlsInfo>), &'static str> {
        let result = tokio::time::timeout(timeout, self.acceptor.accept(stream)).await;
        let stream = match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let reason = failure_reason(&error);
                self.metrics.failures.count(reason);
                tracing::debug!(%error, reason, "TLS handshake failed");
                return Err(reason);
            }
            Err(_) => {
                self.metrics.failures.count("timeout");
                return Err("timeout");
            }
        };
        self.metrics.handshakes.increment(1);
        let (_, connection) = stream.get_ref();
        let client = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| ClientIdentity::from_der(leaf));
        let info = TlsInfo {
            sni: connection.server_name().map(str::to_ascii_lowercase),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                _ => "TLSv1.2",
            },
            client,
        };
        Ok((stream, Arc::new(info)))
    }

    /// Re-reads certificate files (all of them, as one set) when `force` or
    /// when one changed. A set that fails to load keeps the previous one.
    fn reload_certificates(&self, stamps: &mut Vec<Option<Stamp>>, force: bool) {
        let now: Vec<Option<Stamp>> = self
            .settings
            .certificates
            .iter()
            .flat_map(|files| [stamp(&files.cert), stamp(&files.key)])
            .collect();
        if !force && now == *stamps {
            return;
        }
        *stamps = now;
        let loaded = self
            .settings
            .certificates
            .iter()
            .enumerate()
            .map(|(i, files)| config::load_certified_key(i, files, &self.provider))
            .collect::<Result<Vec<_>, _>>();
        match loaded.map(Certificates::new) {
            Ok(Some(certificates)) => {
                self.certificates.0.store(Arc::new(certificates));
                self.metrics.reload("certificate", true);
                tracing::info!("TLS certificates reloaded");
            }
            Ok(None) => {}
            Err(error) => {
                self.metrics.reload("certificate", false);
                tracing::error!(%error, "TLS certificate reload refused; the previous certificates stay");
            }
        }
    }

    /// Re-reads changed CRL files; returns whether any CRL changed.
    fn reload_crl_files(&self, force: bool) -> bool {
        let mut changed = false;
        let mut state = self.crls.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (path, seen, crls)) in state.files.iter_mut().enumerate() {
            let now = stamp(path);
            if !force && now == *seen {
                continue;
            }
            *seen = now;
            match config::load_crl_file(i, path) {
                Ok(loaded) => {
                    if loaded != *crls {
                        *crls = loaded;
                        changed = true;
                    }
                    self.metrics.reload("crl", true);
                }
                Err(error) => {
                    self.metrics.reload("crl", false);
                    tracing::error!(%error, "CRL reload refused; the previous CRL stays");
                }
            }
        }
        changed
    }

    /// Fetches every CRL URL once; returns whether any CRL changed.
    pub async fn fetch_crl_urls(&self) -> bool {
        let targets: Vec<(
            usize,
            http::Uri,
            Option<http::HeaderValue>,
            Option<http::HeaderValue>,
        )> = {
            let state = self.crls.lock().unwrap_or_else(|e| e.into_inner());
            state
                .urls
                .iter()
                .enumerate()
                .map(|(i, u)| (i, u.uri.clone(), u.etag.clone(), u.last_modified.clone()))
                .collect()
        };
        let mut changed = false;
        for (i, uri, etag, last_modified) in targets {
            match fetch_crl(&uri, etag, last_modified).await {
                Ok(Fetched::NotModified) => {}
                Ok(Fetched::New {
                    body,
                    etag,
                    last_modified,
                }) => {
                    let key = format!("tls.client-auth.crl-urls[{i}]");
                    let path = PathBuf::from(uri.to_string());
                    match config::parse_crls(&key, &path, &body) {
                        Ok(crls) => {
                            let mut state = self.crls.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = &mut state.urls[i];
                            if entry.crls != crls {
                                entry.crls = crls;
                                changed = true;
                            }
                            entry.etag = etag;
                            entry.last_modified = last_modified;
                        }
                        Err(error) => {
                            self.metrics.crl_fetch_failures.increment(1);
                            tracing::error!(%error, "fetched CRL refused; the previous CRL stays");
                        }
                    }
                }
                Err(error) => {
                    self.metrics.crl_fetch_failures.increment(1);
                    tracing::warn!(url = %uri, %error, "CRL fetch failed; the previous CRL stays");
                }
            }
        }
        changed
    }

    fn apply_crl_change(&self) {
        match self.rebuild_verifier() {
            Ok(()) => tracing::info!("client certificate verifier rebuilt with new CRLs"),
            Err(error) => {
                self.metrics.reload("crl", false);
                tracing::error!(%error, "the previous client certificate verifier stays");
            }
        }
    }

    /// Fetches the CRL URLs once before the listener serves (bounded in
    /// time); without them client certificates are refused until a fetch
    /// succeeds.
    pub async fn prime(&self) {
        if self.settings.client_auth.crl_urls.is_empty() {
            return;
        }
        if tokio::time::timeout(CRL_FETCH_TIMEOUT, self.fetch_crl_urls())
            .await
            .unwrap_or(false)
        {
            self.apply_crl_change();
        }
    }

    /// Watches files (every `reload-interval`, and on SIGHUP) and CRL URLs
    /// (every `crl-refresh`) until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut stamps: Vec<Option<Stamp>> = self
            .settings
            .certificates
            .iter()
            .flat_map(|files| [stamp(&files.cert), stamp(&files.key)])
            .collect();
        let mut files = tokio::time::interval(self.settings.reload_interval);
        let mut urls = tokio::time::interval(self.settings.client_auth.crl_refresh);
        files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        urls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        files.tick().await;
        urls.tick().await;
        let has_urls = !self.settings.client_auth.crl_urls.is_empty();
        loop {
            let (force, fetch) = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = files.tick() => (false, false),
                _ = urls.tick(), if has_urls => (false, true),
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: re-reading TLS certificates and CRLs");
                    (true, has_urls)
                }
            };
            // File reads and parsing stay off the async workers.
            let tls = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                tls.reload_certificates(&mut stamps, force);
                let changed = tls.reload_crl_files(force);
                (stamps, changed)
            })
            .await;
            let Ok((kept, mut changed)) = reloaded else {
                tracing::error!("TLS file reload task failed");
                return;
            };
            stamps = kept;
            if fetch {
                changed |= self.fetch_crl_urls().await;
            }
            if changed {
                self.apply_crl_change();
            }
        }
    }
}

enum Fetched {
    NotModified,
    New {
        body: Bytes,
        etag: Option<http::HeaderValue>,
        last_modified: Option<http::HeaderValue>,
    },
}

/// One conditional GET of a CRL URL.
async fn fetch_crl(
    uri: &http::Uri,
    etag: Option<http::HeaderValue>,
    last_modified: Option<http::HeaderValue>,
) -> Result<Fetched, String> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(uri.clone());
    if let Some(etag) = etag {
        request = request.header(http::header::IF_NONE_MATCH, etag);
    }
    if let Some(modified) = last_modified {
        request = request.header(http::header::IF_MODIFIED_SINCE, modified);
    }
    let request = request
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let etag = response.headers().get(http::header::ETAG).cloned();
        let last_modified = response.headers().get(http::header::LAST_MODIFIED).cloned();
        let body = http_body_util::Limited::new(response.into_body(), MAX_CRL_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Fetched::New {
            body,
            etag,
            last_modified,
        })
    };
    tokio::time::timeout(CRL_FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefers_uri_then_dns_then_cn() {
        let make = |sans: Vec<rcgen::SanType>, cn: &str| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let uri = rcgen::SanType::URI("spiffe://example.org/billing".try_into().unwrap());
        let dns = rcgen::SanType::DnsName("Billing.Example.org".try_into().unwrap());
        let id = ClientIdentity::from_der(&make(vec![dns.clone(), uri], "billing")).unwrap();
        assert_eq!(
            (id.identity.as_str(), id.source),
            ("spiffe://example.org/billing", "uri")
        );
        let id = ClientIdentity::from_der(&make(vec![dns], "billing")).unwrap();
        assert_eq!(
            (id.identity.as_str(), id.source),
            ("billing.example.org", "dns")
        );
        let id = ClientIdentity::from_der(&make(vec![], "billing")).unwrap();
        assert_eq!((id.identity.as_str(), id.source), ("billing", "cn"));
        assert!(id.subject.contains("CN=billing"), "{}", id.subject);
        assert!(ClientIdentity::from_der(b"not a certificate").is_none());
    }
}
