//! The cluster's certificate authority: a root CA (ECDSA P-256) made on the
//! manager's first start and kept in its data directory, the manager's own
//! server certificate, and the node certificates it signs for workers.
//!
//! Files in the data directory, each written with mode 0600:
//! - `ca.crt`, `ca.key`: the root, made once, valid for [`CA_LIFETIME`];
//! - `server.crt` (the server certificate followed by the CA's, so a client
//!   sees the chain it pins), `server.key`: issued anew at every start for
//!   the addresses the manager has then, valid for [`SERVER_LIFETIME`].
//!
//! A node certificate names its node in its Common Name
//! ([`NODE_CN_PREFIX`] then the id) and is good for client authentication
//! only, so it cannot pose as a manager.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use orch::auth::{MANAGER_SERVER_NAME, NODE_CN_PREFIX, ca_digest};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use uuid::Uuid;

/// How long the root CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a server certificate is valid; one is issued at every start.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks that differ a little.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why the CA could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the CA could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A certificate or key could not be made, parsed or signed.
    #[error("{0}")]
    Certificate(String),
}

fn cert_error(what: &str) -> impl Fn(rcgen::Error) -> CaError + '_ {
    move |e| CaError::Certificate(format!("{what}: {e}"))
}

/// The cluster's CA. It holds the root's key; nothing else does.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    digest: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A certificate the CA signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate, PEM.
    pub pem: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// The manager's TLS identity: its certificate chain and key, PEM.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// The server certificate followed by the CA's.
    pub chain_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl Ca {
    /// Loads the CA from `dir`, or makes one there if `dir` holds none.
    ///
    /// # Errors
    /// If the files cannot be read or written, or hold no usable CA.
    pub fn load_or_create(dir: &Path, now: SystemTime) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert_path.exists() || key_path.exists() {
            let cert = read(&cert_path)?;
            let key = read(&key_path)?;
            return Self::from_pem(&cert, &key);
        }
        let ca = Self::create(now)?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())?;
        write_private(&cert_path, &ca.cert_pem)?;
        tracing::info!(digest = %ca.digest, dir = %dir.display(), "made the cluster's CA");
        Ok(ca)
    }

    /// A new CA, in memory only.
    ///
    /// # Errors
    /// If the key or certificate cannot be made.
    pub fn create(now: SystemTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(cert_error("making the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "orch cluster CA");
        dn.push(DnType::OrganizationName, "orch");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA certificate"))?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and key, PEM.
    ///
    /// # Errors
    /// If either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(cert_error("reading the CA certificate"))?;
        let cert_der = pem_der(cert_pem)?;
        Ok(Self {
            issuer,
            digest: ca_digest(&cert_der),
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's key, PEM: for tests, and for the etcd store, where every
    /// manager of the cluster reads it (it never leaves the manager otherwise).
    #[cfg_attr(not(any(test, feature = "etcd")), allow(dead_code))]
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The digest a join token pins: SHA-256 of the CA certificate, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Issues the manager's server certificate for `names` (host names and
    /// IP addresses; [`MANAGER_SERVER_NAME`] and the loopback names are
    /// always added) and, with `dir`, writes it and its key there.
    ///
    /// # Errors
    /// If a name is unusable, or the files cannot be written.
    pub fn issue_server(
        &self,
        names: &[String],
        now: SystemTime,
        dir: Option<&Path>,
    ) -> Result<ServerIdentity, CaError> {
        let mut sans: Vec<String> = vec![
            MANAGER_SERVER_NAME.into(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        for name in names {
            if !name.is_empty() && !sans.contains(name) {
                sans.push(name.clone());
            }
        }
        let key = KeyPair::generate().map_err(cert_error("making the server key"))?;
        let mut params = CertificateParams::new(sans).map_err(cert_error("the server's names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, MANAGER_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + SERVER_LIFETIME).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the server certificate"))?;
        let identity = ServerIdentity {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        };
        if let Some(dir) = dir {
            write_private(&dir.join("server.key"), &identity.key_pem)?;
            write_private(&dir.join("server.crt"), &identity.chain_pem)?;
        }
        Ok(identity)
    }

    /// Signs a node certificate for `node`, valid for `lifetime`, for the
    /// key of the certificate request `csr` (DER). Whatever else the request
    /// asks for (names, usages, CA rights) is ignored: the CA decides.
    ///
    /// # Errors
    /// If the request does not parse or its signature is wrong.
    pub fn sign_node(
        &self,
        csr: &[u8],
        node: Uuid,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Signed, CaError> {
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr.to_vec()),
        )
        .map_err(|e| CaError::Certificate(format!("csr: not a valid certificate request: {e}")))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{NODE_CN_PREFIX}{node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        let expires_at = now + lifetime;
        params.not_after = expires_at.into();
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(cert_error("signing the node certificate"))?;
        Ok(Signed {
            pem: cert.pem(),
            expires_at,
        })
    }
}

/// The node a peer's certificate names, and when it expires. The TLS layer
/// has already checked the certificate against the CA.
///
/// # Errors
/// If the certificate does not parse or names no node.
pub fn node_of(cert_der: &[u8]) -> Result<(Uuid, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate has no common name")?;
    let id = cn
        .strip_prefix(NODE_CN_PREFIX)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| format!("the client certificate ({cn:.64}) is not a node certificate"))?;
    let expires = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((id, SystemTime::UNIX_EPOCH + Duration::from_secs(expires)))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER integers of serial numbers must be.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn pem_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| CaError::Certificate(format!("not a PEM certificate: {e}")))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `text` to `path` readable by its owner only, replacing it whole
/// (a temporary file renamed over it), so a crash never leaves half a key.
pub fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    let err = |source| CaError::File {
        path: path.display().to_string(),
        source,
    };
    let tmp: PathBuf = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_with_private_files_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::load_or_create(dir.path(), now).unwrap();
        let again = Ca::load_or_create(dir.path(), now).unwrap();
        assert_eq!(ca.digest(), again.digest());
        assert_eq!(ca.digest(), ca_digest(ca.cert_der()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.crt", "ca.key"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn a_node_certificate_names_its_node_whatever_the_request_asked() {
        let ca = Ca::create(SystemTime::now()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["orch-manager".to_string()]).unwrap();
        asked
            .distinguished_name
            .push(DnType::CommonName, "orch-node:someone-else");
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap();
        let node = Uuid::now_v7();
        let signed = ca
            .sign_node(
                csr.der(),
                node,
                SystemTime::now(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = pem_der(&signed.pem).unwrap();
        let (id, expires) = node_of(&der).unwrap();
        assert_eq!(id, node);
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3500));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca(), "the CA decides, not the request");
        assert!(cert.subject_alternative_name().unwrap().is_none());
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        let ca = Ca::create(SystemTime::now()).unwrap();
        let err = ca
            .sign_node(
                b"junk",
                Uuid::now_v7(),
                SystemTime::now(),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(err.to_string().starts_with("csr:"), "{err}");
    }
}
