//! The cluster's certificate authority and node identities.
//!
//! `cluster init` creates a CA; every node certificate is issued by it and
//! names the node twice: DNS `node-<id>.meridian` (what a dialling peer
//! verifies, so a connection reaches the node it meant) and URI
//! `urn:meridian:node:<id>:<region>` (what a server reads to know who
//! called). Files, in `<data-dir>/pki/`: `ca.pem`, `ca.key` (members can
//! admit new nodes), `node.pem`, `node.key`, and `cluster.key`, the secret
//! API-key hashes are keyed with. Keys are written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use raft::model::NodeId;

/// Why PKI material could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The DNS name in node `id`'s certificate.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.meridian")
}

/// Who a verified peer certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Node id.
    pub id: NodeId,
    /// Region.
    pub region: String,
    /// Certificate serial, lowercase hex.
    pub serial: String,
}

/// The cluster CA: certificate and signing key, PEM.
#[derive(Clone)]
pub struct Ca {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// A node's certificate and key, PEM.
#[derive(Clone)]
pub struct NodeCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_be_bytes());
    }
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new CA for the cluster `name`.
    pub fn generate(name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Meridian cluster CA ({name})"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the certificate of node `id` in `region`.
    pub fn issue(&self, id: NodeId, region: &str) -> Result<NodeCert, Error> {
        let mut params = CertificateParams::new(vec![node_dns_name(id)])?;
        params.subject_alt_names.push(SanType::URI(
            format!("urn:meridian:node:{id}:{region}").try_into()?,
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("meridian node {id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// Issues a client certificate for the operator or tool `name`, for the
    /// admin API with `admin.tls = "mutual"` (SAN URI
    /// `urn:meridian:client:<name>`). It cannot act as a node: the peer
    /// plane reads node ids only from `urn:meridian:node:` URIs.
    pub fn issue_client(&self, name: &str) -> Result<NodeCert, Error> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.subject_alt_names.push(SanType::URI(
            format!("urn:meridian:client:{name}").try_into()?,
        ));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Signs `params` with the CA, with a fresh key and a random serial.
    fn sign(&self, mut params: CertificateParams) -> Result<NodeCert, Error> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// SHA-256 of the CA certificate (DER), lowercase hex: what join tokens pin.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let der = first_cert(&self.cert_pem, Path::new("ca.pem"))?;
        Ok(fingerprint(&der))
    }
}

/// SHA-256 of DER bytes, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn first_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, Error> {
    let invalid = |message: String| Error::Invalid {
        path: path.to_owned(),
        message,
    };
    let parsed = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
    if parsed.1.label != "CERTIFICATE" {
        return Err(invalid(format!(
            "expected a CERTIFICATE, found {}",
            parsed.1.label
        )));
    }
    Ok(CertificateDer::from(parsed.1.contents))
}

fn private_key(pem: &str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let parsed = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| Error::Invalid {
        path: path.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        parsed.1.contents,
    )))
}

/// Reads the identity a verified peer certificate carries.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let serial = parsed
        .raw_serial_as_string()
        .replace(':', "")
        .to_ascii_lowercase();
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            return None;
        };
        let rest = uri.strip_prefix("urn:meridian:node:")?;
        let (id, region) = rest.split_once(':')?;
        Some(PeerIdentity {
            id: id.parse().ok()?,
            region: region.to_owned(),
            serial: serial.clone(),
        })
    })
}

/// A node's PKI files, loaded.
#[derive(Clone)]
pub struct Identity {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// The CA, with its key, when this node holds it.
    pub authority: Option<Ca>,
    /// This node's certificate.
    pub cert: CertificateDer<'static>,
    /// This node's key.
    pub key: std::sync::Arc<PrivateKeyDer<'static>>,
    /// The secret API-key hashes are keyed with.
    pub cluster_key: Vec<u8>,
}

/// Paths of the PKI files in a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path`, readable by the owner only (0600).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err)?;
    file.write_all(contents).map_err(file_err)?;
    file.sync_all().map_err(file_err)
}

impl Identity {
    /// Whether `data_dir` holds an identity.
    pub fn exists(data_dir: &Path) -> bool {
        dir(data_dir).join("node.pem").exists()
    }

    /// Writes an identity into `data_dir/pki`.
    pub fn save(
        data_dir: &Path,
        ca: &Ca,
        with_ca_key: bool,
        node: &NodeCert,
        cluster_key: &[u8],
    ) -> Result<(), Error> {
        let dir = dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        write_private(&dir.join("ca.pem"), ca.cert_pem.as_bytes())?;
        if with_ca_key {
            write_private(&dir.join("ca.key"), ca.key_pem.as_bytes())?;
        }
        write_private(&dir.join("node.pem"), node.cert_pem.as_bytes())?;
        write_private(&dir.join("node.key"), node.key_pem.as_bytes())?;
        write_private(&dir.join("cluster.key"), hex(cluster_key).as_bytes())?;
        Ok(())
    }

    /// Loads the identity in `data_dir/pki`.
    pub fn load(data_dir: &Path) -> Result<Self, Error> {
        let dir = dir(data_dir);
        let ca_path = dir.join("ca.pem");
        let ca_pem = read(&ca_path)?;
        let ca = first_cert(&ca_pem, &ca_path)?;
        let key_path = dir.join("ca.key");
        let authority = if key_path.exists() {
            Some(Ca {
                cert_pem: ca_pem,
                key_pem: read(&key_path)?,
            })
        } else {
            None
        };
        let cert_path = dir.join("node.pem");
        let cert = first_cert(&read(&cert_path)?, &cert_path)?;
        let node_key_path = dir.join("node.key");
        let key = private_key(&read(&node_key_path)?, &node_key_path)?;
        let cluster_path = dir.join("cluster.key");
        let cluster_key = unhex(read(&cluster_path)?.trim()).ok_or_else(|| Error::Invalid {
            path: cluster_path.clone(),
            message: "expected hex".into(),
        })?;
        Ok(Self {
            ca,
            authority,
            cert,
            key: std::sync::Arc::new(key),
            cluster_key,
        })
    }

    /// Who this node's own certificate says it is.
    pub fn own(&self) -> Option<PeerIdentity> {
        peer_identity(&self.cert)
    }
}

/// A fresh 32-byte secret.
pub fn secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    bytes
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_node_identity() {
        let ca = Ca::generate("test").unwrap();
        let node = ca.issue(7, "eu-west").unwrap();
        let der = first_cert(&node.cert_pem, Path::new("node.pem")).unwrap();
        let identity = peer_identity(&der).unwrap();
        assert_eq!(identity.id, 7);
        assert_eq!(identity.region, "eu-west");
        assert_eq!(identity.serial.len(), 32);
        assert_eq!(ca.fingerprint().unwrap().len(), 64);
    }

    #[test]
    fn identities_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test").unwrap();
        let node = ca.issue(1, "r").unwrap();
        Identity::save(dir.path(), &ca, true, &node, &secret()).unwrap();
        let identity = Identity::load(dir.path()).unwrap();
        assert!(identity.authority.is_some());
        assert_eq!(identity.own().unwrap().id, 1);
        assert_eq!(identity.cluster_key.len(), 32);
        let mode = std::fs::metadata(dir.path().join("pki/node.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
