//! `[tls]` in `node.toml`: the serde shape, its validation, and the PEM
//! loading shared by validation and reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawTls {
    /// `[[tls.certificates]]`: the first one is the default.
    pub certificates: Vec<RawCertificate>,
    /// `min-version`: `"1.2"` or `"1.3"`.
    pub min_version: String,
    /// `hsts`: the `Strict-Transport-Security` value, or `"off"`.
    pub hsts: String,
    /// `reload-interval`: how often certificate and CRL files are checked.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// `https-port`: the port written in `redirect_https` redirects
    /// (default: the port `listen.proxy-tls` is bound to).
    pub https_port: Option<u16>,
    /// `[tls.client-auth]`.
    pub client_auth: RawClientAuth,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            min_version: "1.2".into(),
            hsts: DEFAULT_HSTS.into(),
            reload_interval: Duration::from_secs(10),
            https_port: None,
            client_auth: RawClientAuth::default(),
        }
    }
}

/// The default `Strict-Transport-Security` value: one year.
pub const DEFAULT_HSTS: &str = "max-age=31536000";

/// `[[tls.certificates]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCertificate {
    /// `cert`: PEM file, the leaf first, then intermediates.
    pub cert: PathBuf,
    /// `key`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[tls.client-auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawClientAuth {
    /// `mode`: `none`, `optional` or `required`.
    pub mode: String,
    /// `ca`: PEM files of the CAs client chains must lead to.
    pub ca: Vec<PathBuf>,
    /// `crl`: CRL files (PEM or DER), re-read when they change.
    pub crl: Vec<PathBuf>,
    /// `crl-urls`: `http://` URLs of CRLs, fetched every `crl-refresh`.
    pub crl_urls: Vec<String>,
    /// `crl-refresh`.
    #[serde(with = "humantime_serde")]
    pub crl_refresh: Duration,
    /// `allow-unknown-revocation`: accept a certificate whose issuer has no
    /// CRL among the configured ones (default: refuse it).
    pub allow_unknown_revocation: bool,
}

impl Default for RawClientAuth {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            ca: Vec::new(),
            crl: Vec::new(),
            crl_urls: Vec::new(),
            crl_refresh: Duration::from_secs(300),
            allow_unknown_revocation: false,
        }
    }
}

/// The lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Whether the listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// Never asks.
    None,
    /// Asks; a client without one is served, and routes may require one.
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// A validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate and key files; the first is the default.
    pub certificates: Vec<RawCertificate>,
    /// Lowest version accepted.
    pub min_version: MinVersion,
    /// `Strict-Transport-Security` on HTTPS responses, unless off.
    pub hsts: Option<HeaderValue>,
    /// Certificate and CRL files are checked this often.
    pub reload_interval: Duration,
    /// Port written in HTTPS redirects (the bound port when unset).
    pub https_port: Option<u16>,
    /// Client certificates.
    pub client_auth: ClientAuth,
}

impl TlsSettings {
    /// The admin listener's TLS (`admin.tls`): the node's own certificate,
    /// TLS 1.3 only, and with `mutual` a client certificate from the cluster
    /// CA (no CRL: serials revoked in the replicated state are refused by
    /// the admin API itself).
    pub fn admin(pki: &std::path::Path, mutual: bool) -> Self {
        Self {
            certificates: vec![RawCertificate {
                cert: pki.join("node.pem"),
                key: pki.join("node.key"),
            }],
            min_version: MinVersion::Tls13,
            hsts: None,
            reload_interval: Duration::from_secs(60),
            https_port: None,
            client_auth: ClientAuth {
                mode: if mutual {
                    ClientAuthMode::Required
                } else {
                    ClientAuthMode::None
                },
                ca: vec![pki.join("ca.pem")],
                crl: Vec::new(),
                crl_urls: Vec::new(),
                crl_refresh: Duration::from_secs(300),
                allow_unknown_revocation: true,
            },
        }
    }
}

/// A validated `[tls.client-auth]`.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// Listener-wide mode.
    pub mode: ClientAuthMode,
    /// CA files.
    pub ca: Vec<PathBuf>,
    /// CRL files.
    pub crl: Vec<PathBuf>,
    /// CRL URLs.
    pub crl_urls: Vec<http::Uri>,
    /// CRL URL refresh period.
    pub crl_refresh: Duration,
    /// Accept certificates whose issuer has no configured CRL.
    pub allow_unknown_revocation: bool,
}

/// The rustls provider Meridian uses (aws-lc-rs), restricted to the
/// documented cipher suites: TLS 1.3 AES-GCM and ChaCha20-Poly1305, and
/// TLS 1.2 ECDHE (ECDSA or RSA) with AES-GCM or ChaCha20-Poly1305.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as s;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// A problem with one file: which key refers to it and why it is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The configuration key, e.g. `tls.certificates[0].key`.
    pub key: String,
    /// The path.
    pub value: String,
    /// The rule.
    pub rule: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) {}", self.key, self.value, self.rule)
    }
}

fn file_error(key: &str, path: &Path, rule: impl Into<String>) -> FileError {
    FileError {
        key: key.to_owned(),
        value: path.display().to_string(),
        rule: rule.into(),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot be read: {e}")))
}

/// Loads certificate pair `index` into a rustls key, checking that the key
/// matches the leaf.
pub fn load_certified_key(
    index: usize,
    files: &RawCertificate,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, FileError> {
    let cert_key = format!("tls.certificates[{index}].cert");
    let key_key = format!("tls.certificates[{index}].key");
    let pem = read(&cert_key, &files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&cert_key, &files.cert, format!("is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(
            &cert_key,
            &files.cert,
            "must contain a PEM certificate",
        ));
    }
    if x509_parser::parse_x509_certificate(&chain[0]).is_err() {
        return Err(file_error(
            &cert_key,
            &files.cert,
            "must hold a valid X.509 certificate",
        ));
    }
    let pem = read(&key_key, &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            &key_key,
            &files.key,
            format!("must contain a PEM private key: {e}"),
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&key_key, &files.key, format!("is not a usable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(_) => Err(file_error(
            &key_key,
            &files.key,
            format!("must match the certificate in {}", files.cert.display()),
        )),
    }
}

/// Loads the CA certificates of file `index` of `tls.client-auth.ca`.
pub fn load_cas(index: usize, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let key = format!("tls.client-auth.ca[{index}]");
    let pem = read(&key, path)?;
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&key, path, format!("is not valid PEM: {e}")))?;
    if cas.is_empty() {
        return Err(file_error(&key, path, "must contain a PEM certificate"));
    }
    Ok(cas)
}

/// Parses CRLs from PEM or DER bytes (`key` and `path` name the source).
pub fn parse_crls(
    key: &str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, FileError> {
    let crls: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(key, path, format!("is not a valid PEM CRL: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    if crls.is_empty() {
        return Err(file_error(key, path, "must contain a CRL"));
    }
    for crl in &crls {
        if let Err(error) = webpki_crl_check(crl) {
            return Err(file_error(
                key,
                path,
                format!("is not a valid CRL: {error}"),
            ));
        }
    }
    Ok(crls)
}

/// Checks a CRL parses, using x509-parser (the verifier parses it again).
fn webpki_crl_check(crl: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    match x509_parser::revocation_list::CertificateRevocationList::from_der(crl) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err("trailing bytes after the CRL".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Loads CRL file `index` of `tls.client-auth.crl`.
pub fn load_crl_file(
    index: usize,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, FileError> {
    let key = format!("tls.client-auth.crl[{index}]");
    let bytes = read(&key, path)?;
    parse_crls(&key, path, &bytes)
}

impl RawTls {
    /// Checks `[tls]`; `fail(key, value, rule)` records each violation.
    /// Files are read and parsed here, so a node does not start with a
    /// certificate it cannot serve. `None` when no certificate is set.
    pub fn validate(
        &self,
        fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str),
    ) -> Option<TlsSettings> {
        let min_version = match self.min_version.as_str() {
            "1.2" => MinVersion::Tls12,
            "1.3" => MinVersion::Tls13,
            other => {
                fail(
                    "tls.min-version",
                    &other,
                    "must be \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are not supported)",
                );
                MinVersion::Tls12
            }
        };
        let hsts = match self.hsts.as_str() {
            "off" | "" => None,
            value => {
                let valid = value
                    .split(';')
                    .next()
                    .and_then(|first| first.trim().strip_prefix("max-age="))
                    .is_some_and(|age| !age.is_empty() && age.bytes().all(|b| b.is_ascii_digit()));
                match HeaderValue::from_str(value) {
                    Ok(header) if valid => Some(header),
                    _ => {
                        fail(
                            "tls.hsts",
                            &value,
                            "must be \"off\" or a Strict-Transport-Security value starting with max-age=<seconds>",
                        );
                        None
                    }
                }
            }
        };
        if self.reload_interval < Duration::from_secs(1) {
            fail(
                "tls.reload-interval",
                &humantime::format_duration(self.reload_interval),
                "must be at least 1s",
            );
        }
        if self.https_port == Some(0) {
            fail("tls.https-port", &0, "must be between 1 and 65535");
        }
        let provider = provider();
        for (i, files) in self.certificates.iter().enumerate() {
            if let Err(error) = load_certified_key(i, files, &provider) {
                fail(&error.key, &error.value, &error.rule);
            }
        }
        let c = &self.client_auth;
        let mode = match c.mode.as_str() {
            "none" => ClientAuthMode::None,
            "optional" => ClientAuthMode::Optional,
            "required" => ClientAuthMode::Required,
            other => {
                fail(
                    "tls.client-auth.mode",
                    &other,
                    "must be none, optional or required",
                );
                ClientAuthMode::None
            }
        };
        if mode != ClientAuthMode::None && c.ca.is_empty() {
            fail(
                "tls.client-auth.ca",
                &"[]",
                "must list at least one CA file when mode is optional or required",
            );
        }
        if mode != ClientAuthMode::None && self.certificates.is_empty() {
            fail(
                "tls.client-auth.mode",
                &c.mode,
                "needs tls.certificates (client certificates are asked for on the TLS listener)",
            );
        }
        for (i, path) in c.ca.iter().enumerate() {
            match load_cas(i, path) {
                Ok(cas) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let (_, ignored) = roots.add_parsable_certificates(cas);
                    if ignored > 0 || roots.is_empty() {
                        fail(
                            &format!("tls.client-auth.ca[{i}]"),
                            &path.display(),
                            "must contain only valid CA certificates",
                        );
                    }
                }
                Err(error) => fail(&error.key, &error.value, &error.rule),
            }
        }
        for (i, path) in c.crl.iter().enumerate() {
            if let Err(error) = load_crl_file(i, path) {
                fail(&error.key, &error.value, &error.rule);
            }
        }
        let mut crl_urls = Vec::new();
        for (i, url) in c.crl_urls.iter().enumerate() {
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {
                    crl_urls.push(uri);
                }
                _ => fail(
                    &format!("tls.client-auth.crl-urls[{i}]"),
                    url,
                    "must be an http:// URL (CRLs are signed; fetch them over plain HTTP)",
                ),
            }
        }
        if c.crl_refresh < Duration::from_secs(1) {
            fail(
                "tls.client-auth.crl-refresh",
                &humantime::format_duration(c.crl_refresh),
                "must be at least 1s",
            );
        }
        if self.certificates.is_empty() {
            return None;
        }
        Some(TlsSettings {
            certificates: self.certificates.clone(),
            min_version,
            hsts,
            reload_interval: self.reload_interval,
            https_port: self.https_port,
            client_auth: ClientAuth {
                mode,
                ca: c.ca.clone(),
                crl: c.crl.clone(),
                crl_urls,
                crl_refresh: c.crl_refresh,
                allow_unknown_revocation: c.allow_unknown_revocation,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RawConfig;

    fn errors(toml: &str) -> Vec<String> {
        match RawConfig::parse(toml).expect("parses").validate() {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn pem_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("{name}.example.com")])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    #[test]
    fn no_certificate_means_no_tls_listener() {
        let config = RawConfig::default().validate().unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.listen.proxy_tls.port(), 8443);
    }

    #[test]
    fn defaults_with_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair(dir.path(), "api");
        let toml = format!("[[tls.certificates]]\ncert = \"{cert}\"\nkey = \"{key}\"\n");
        let config = RawConfig::parse(&toml).unwrap().validate().unwrap();
        let tls = config.tls.expect("tls configured");
        assert_eq!(tls.min_version, super::MinVersion::Tls12);
        assert_eq!(tls.hsts.unwrap(), super::DEFAULT_HSTS);
        assert_eq!(tls.client_auth.mode, super::ClientAuthMode::None);
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(10));
    }

    #[test]
    fn each_tls_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair(dir.path(), "api");
        let (_, other_key) = pem_pair(dir.path(), "other");
        let with = |extra: &str| {
            format!("[tls]\n{extra}\n[[tls.certificates]]\ncert = \"{cert}\"\nkey = \"{key}\"\n")
        };
        assert_eq!(
            errors(&with("min-version = \"1.1\"")),
            [
                "tls.min-version (1.1) must be \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are not supported)"
            ]
        );
        assert_eq!(
            errors(&with("hsts = \"forever\"")),
            [
                "tls.hsts (forever) must be \"off\" or a Strict-Transport-Security value starting with max-age=<seconds>"
            ]
        );
        assert_eq!(
            errors(&with("reload-interval = \"10ms\"")),
            ["tls.reload-interval (10ms) must be at least 1s"]
        );
        assert_eq!(
            errors(&with("https-port = 0")),
            ["tls.https-port (0) must be between 1 and 65535"]
        );
        let missing = errors(&format!(
            "[[tls.certificates]]\ncert = \"/nonexistent/api.crt\"\nkey = \"{key}\"\n"
        ));
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0]
                .starts_with("tls.certificates[0].cert (/nonexistent/api.crt) cannot be read"),
            "{missing:?}"
        );
        let mismatch = errors(&format!(
            "[[tls.certificates]]\ncert = \"{cert}\"\nkey = \"{other_key}\"\n"
        ));
        assert_eq!(
            mismatch,
            [format!(
                "tls.certificates[0].key ({other_key}) must match the certificate in {cert}"
            )]
        );
        let not_pem = errors(&format!(
            "[[tls.certificates]]\ncert = \"{key}\"\nkey = \"{key}\"\n"
        ));
        assert_eq!(
            not_pem,
            [format!(
                "tls.certificates[0].cert ({key}) must contain a PEM certificate"
            )]
        );
        assert_eq!(
            errors(&with("[tls.client-auth]\nmode = \"always\"")),
            ["tls.client-auth.mode (always) must be none, optional or required"]
        );
        assert_eq!(
            errors(&with("[tls.client-auth]\nmode = \"required\"")),
            [
                "tls.client-auth.ca ([]) must list at least one CA file when mode is optional or required"
            ]
        );
        assert_eq!(
            errors(&format!(
                "[tls.client-auth]\nmode = \"optional\"\nca = [\"{cert}\"]\n"
            )),
            [
                "tls.client-auth.mode (optional) needs tls.certificates (client certificates are asked for on the TLS listener)"
            ]
        );
        assert_eq!(
            errors(&with(&format!(
                "[tls.client-auth]\nmode = \"optional\"\nca = [\"{cert}\"]\ncrl-urls = [\"https://pki.example.com/ca.crl\"]"
            ))),
            [
                "tls.client-auth.crl-urls[0] (https://pki.example.com/ca.crl) must be an http:// URL (CRLs are signed; fetch them over plain HTTP)"
            ]
        );
        let bad_crl = errors(&with(&format!(
            "[tls.client-auth]\nmode = \"optional\"\nca = [\"{cert}\"]\ncrl = [\"{cert}\"]"
        )));
        assert_eq!(bad_crl.len(), 1);
        assert!(
            bad_crl[0].starts_with(&format!(
                "tls.client-auth.crl[0] ({cert}) must contain a CRL"
            )),
            "{bad_crl:?}"
        );
        assert!(
            errors(&with(&format!(
                "[tls.client-auth]\nmode = \"required\"\nca = [\"{cert}\"]"
            )))
            .is_empty()
        );
        assert_eq!(
            errors(&format!("[listen]\nproxy = \"0.0.0.0:8443\"\n{}", with(""))),
            ["listen.proxy-tls (0.0.0.0:8443) must differ from listen.proxy"]
        );
    }
}
