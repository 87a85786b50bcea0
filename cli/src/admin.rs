//! A small client of the admin API, for the commands that talk to a
//! running node. Target: `--admin URL` or `MERIDIAN_ADMIN` (default
//! `http://127.0.0.1:9080`); bearer token: `MERIDIAN_TOKEN`.
//!
//! An `https://` URL is for a node with `admin.tls = "on"` or `"mutual"`:
//! the node must present a node certificate from the cluster CA
//! (`--ca`/`MERIDIAN_CA`), whatever address it was reached at, and with
//! `--cert`/`--key` (`MERIDIAN_CERT`/`MERIDIAN_KEY`) the client presents
//! the certificate `meridian cluster cert` issued.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where and how to reach the admin API.
#[derive(clap::Args, Clone)]
pub(crate) struct Target {
    /// Admin API base URL.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN",
        default_value = "http://127.0.0.1:9080",
        global = true
    )]
    admin: String,
    /// Admin bearer token.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The cluster CA certificate (PEM), for an https admin URL.
    #[arg(long, env = "MERIDIAN_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for `admin.tls = "mutual"`.
    #[arg(long, env = "MERIDIAN_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "MERIDIAN_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
}

impl Target {
    /// Sends `method path` with an optional body; returns the JSON answer,
    /// or an error carrying the API's message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("invalid admin URL {url}"))?;
        let response = if url.starts_with("https://") {
            self.send_tls(request).await
        } else {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            client.request(request).await.map_err(anyhow::Error::from)
        }
        .with_context(|| format!("cannot reach the admin API at {}", self.admin))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

impl Target {
    /// One request over a new TLS connection.
    async fn send_tls(
        &self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let uri = request.uri();
        let host = uri.host().context("the admin URL has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let config = self.tls_config()?;
        let address = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((address, port)).await?;
        // The verifier checks the node's own name, so SNI is informational.
        let name =
            rustls::pki_types::ServerName::try_from(address.to_owned()).unwrap_or_else(|_| {
                rustls::pki_types::ServerName::try_from("meridian").expect("a valid name")
            });
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender.send_request(request).await?)
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = self
            .ca
            .as_ref()
            .context("an https admin URL needs the cluster CA: --ca or MERIDIAN_CA")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = NodeVerifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()?,
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .with_context(|| format!("reading {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("reading {}", key.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        })
    }
}

/// Accepts the server when it presents a node certificate chained to the
/// cluster CA, checked for the node name in that certificate
/// (`node-<id>.meridian`) rather than for the address dialled: operators
/// reach nodes by IP or by names the certificates do not carry.
#[derive(Debug)]
struct NodeVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let node = node::pki::peer_identity(end_entity).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        )?;
        let name = rustls::pki_types::ServerName::try_from(node::pki::node_dns_name(node.id))
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
