//! The worker's identity: its node certificate and key, and the cluster's
//! CA, kept in its data directory (`node.key`, `node.crt`, `ca.crt`, mode
//! 0600), so a restart needs no join token.
//!
//! [`join`] trades a join token for a certificate: it first reads the CA the
//! manager presents in its TLS handshake and checks it against the digest in
//! the token, refusing before it sends anything (not even the token) when
//! they differ; then, trusting that CA only, it sends a certificate request
//! for a key made here, which never leaves the machine. [`renew`] does the
//! same over the node's own mutual-TLS channel before the certificate
//! expires.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use orch::auth::{JoinToken, MANAGER_SERVER_NAME, ca_digest};
use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{JoinRequest, RenewCertificateRequest};
use rand::Rng;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

use crate::agent::Error;

const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const CA_FILE: &str = "ca.crt";

/// A node's certificate, its key and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The node id the certificate names.
    pub node_id: Uuid,
    /// The node's key, PEM.
    pub key_pem: String,
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// The cluster's CA certificate, PEM.
    pub ca_pem: String,
    /// When this worker got (or loaded) the certificate.
    pub received_at: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

fn refused(why: impl std::fmt::Display) -> Error {
    Error::Join(why.to_string())
}

impl Identity {
    fn new(key_pem: String, cert_pem: String, ca_pem: String) -> Result<Self, Error> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| refused(format!("the node certificate is not PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| refused(format!("the node certificate does not parse: {e}")))?;
        let node_id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(|cn| cn.strip_prefix(orch::auth::NODE_CN_PREFIX))
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| refused("the node certificate names no node"))?;
        let time =
            |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        Ok(Self {
            node_id,
            received_at: SystemTime::now(),
            not_after: time(cert.validity().not_after.timestamp()),
            key_pem,
            cert_pem,
            ca_pem,
        })
    }

    /// The identity kept in `dir`, if there is one.
    ///
    /// # Errors
    /// If the files exist but cannot be read or do not parse.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(CERT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| Error::DataDir {
                path: path.display().to_string(),
                source,
            })
        };
        Self::new(read(KEY_FILE)?, read(CERT_FILE)?, read(CA_FILE)?).map(Some)
    }

    fn save(&self, dir: Option<&Path>) -> Result<(), Error> {
        let Some(dir) = dir else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        // The key first: a certificate on disk always has its key there.
        write_private(&dir.join(KEY_FILE), &self.key_pem)?;
        write_private(&dir.join(CA_FILE), &self.ca_pem)?;
        write_private(&dir.join(CERT_FILE), &self.cert_pem)?;
        write_private(
            &dir.join(crate::agent::NODE_ID_FILE),
            &format!("{}\n", self.node_id),
        )
    }

    /// The TLS settings of a mutual-TLS connection to the manager.
    pub fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(MANAGER_SERVER_NAME)
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }

    /// When to renew: a random point between 50% and 80% of the life the
    /// certificate had left when this worker got it (for a new certificate,
    /// of its whole life: its validity starts a few minutes early, for
    /// clocks that differ, so that start is no measure), so a fleet does
    /// not renew all at once.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received_at)
            .unwrap_or_default();
        self.received_at + life.mul_f64(rand::rng().random_range(0.5..0.8))
    }

    /// Whether the certificate is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < self.not_after
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let err = |source| Error::DataDir {
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

/// A new key and a certificate request for it (DER).
fn request() -> Result<(KeyPair, Vec<u8>), Error> {
    let key = KeyPair::generate().map_err(|e| refused(format!("making the node key: {e}")))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "orch-node");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| refused(format!("making the certificate request: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// Joins the cluster at `manager` with `token`; keeps the identity in `dir`.
///
/// # Errors
/// [`Error::Join`] if the token is malformed, the manager's CA is not the
/// one the token pins, or the manager refuses the token.
pub async fn join(manager: &str, token: &str, dir: Option<&Path>) -> Result<Identity, Error> {
    join_with(manager, token, dir).await.map_err(|e| match e {
        Error::Join(why) => Error::Join(format!("joining the cluster: {why}")),
        other => other,
    })
}

async fn join_with(manager: &str, token: &str, dir: Option<&Path>) -> Result<Identity, Error> {
    let token: JoinToken = token.parse().map_err(refused)?;
    let ca = manager_ca(manager, &token.ca_digest).await?;
    let endpoint = endpoint(manager)?
        .tls_config(
            ClientTlsConfig::new()
                .domain_name(MANAGER_SERVER_NAME)
                .ca_certificate(Certificate::from_pem(&ca)),
        )
        .map_err(|e| refused(format!("TLS settings: {e}")))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Error::Unreachable(format!("cannot reach the manager at {manager}: {e}")))?;
    let (key, csr) = request()?;
    let reply = DispatcherClient::new(channel)
        .join(JoinRequest {
            token: token.to_string(),
            csr,
        })
        .await
        .map_err(|s| match s.code() {
            // A manager that does not lead (or whose store fails): another
            // one, or this one later, may take the join.
            tonic::Code::Unavailable => Error::Unreachable(format!(
                "the manager at {manager} cannot join nodes now: {}",
                s.message()
            )),
            _ => refused(format!("the manager refused to join: {}", s.message())),
        })?
        .into_inner();
    let identity = Identity::new(key.serialize_pem(), reply.certificate, reply.ca_certificate)?;
    if ca_digest(&pem_der(&identity.ca_pem)?) != token.ca_digest {
        return Err(refused(
            "the manager answered with another CA than the one it presented",
        ));
    }
    identity.save(dir)?;
    tracing::info!(node = %identity.node_id, "joined the cluster; node certificate kept");
    Ok(identity)
}

/// Renews `current` over `client` (the node's mutual-TLS channel); keeps
/// the new identity in `dir`.
///
/// # Errors
/// If the manager refuses or the new identity cannot be kept.
pub async fn renew(
    client: &mut DispatcherClient<Channel>,
    current: &Identity,
    dir: Option<&Path>,
) -> Result<Identity, Error> {
    let (key, csr) = request()?;
    let reply = client
        .renew_certificate(RenewCertificateRequest { csr })
        .await
        .map_err(|s| refused(format!("renewing the node certificate: {}", s.message())))?
        .into_inner();
    let identity = Identity::new(
        key.serialize_pem(),
        reply.certificate,
        current.ca_pem.clone(),
    )?;
    if identity.node_id != current.node_id {
        return Err(refused("the renewed certificate names another node"));
    }
    identity.save(dir)?;
    Ok(identity)
}

/// The manager's endpoint, with the worker's connection settings.
///
/// # Errors
/// If `manager` is not a URL.
pub fn endpoint(manager: &str) -> Result<Endpoint, Error> {
    Ok(Endpoint::from_shared(manager.to_owned())
        .map_err(|e| Error::ManagerUrl {
            url: manager.to_owned(),
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

fn pem_der(pem: &str) -> Result<Vec<u8>, Error> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|d| d.to_vec())
        .map_err(|e| refused(format!("the CA certificate is not PEM: {e}")))
}

/// Reads the certificate chain the manager presents and returns (PEM) the
/// certificate in it whose digest is `digest`. Only a TLS handshake is
/// made: nothing is sent over the connection.
async fn manager_ca(manager: &str, digest: &str) -> Result<String, Error> {
    let uri: http::Uri = manager
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::ManagerUrl {
            url: manager.to_owned(),
            reason: e.to_string(),
        })?;
    let host = uri
        .host()
        .unwrap_or("127.0.0.1")
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(7070);
    let seen = Arc::new(Capture::default());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| refused(format!("TLS settings: {e}")))?
    .dangerous()
    .with_custom_certificate_verifier(seen.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Error::Unreachable(format!("cannot reach the manager at {manager}: {e}")))?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME).map_err(|e| refused(e.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    drop(handshake);
    let chain = seen.chain.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err(refused(format!(
            "the manager at {manager} presented no certificate (is it running with TLS? a manager started with --insecure needs --insecure here too)"
        )));
    }
    let found = chain.iter().find(|der| ca_digest(der) == digest).ok_or_else(|| {
        let presented = chain.last().map(|d| ca_digest(d)).unwrap_or_default();
        refused(format!(
            "the manager's CA (digest {presented:.16}…) is not the one the join token names ({digest:.16}…): refusing to join; check the token and the manager's address"
        ))
    })?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", found.clone())))
}

/// A verifier that accepts any chain and keeps it: the chain is judged by
/// its digest afterwards, and the connection is dropped either way.
#[derive(Debug, Default)]
struct Capture {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.to_vec());
            chain.extend(intermediates.iter().map(|c| c.to_vec()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    /// A certificate as the manager's CA makes one: valid from a few
    /// minutes ago (for clock skew) until `life` from now.
    fn identity(life: Duration) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let node = Uuid::now_v7();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{}{node}", orch::auth::NODE_CN_PREFIX),
        );
        params.not_before = (SystemTime::now() - Duration::from_secs(300)).into();
        params.not_after = (SystemTime::now() + life).into();
        let cert = params.self_signed(&key).unwrap();
        let id = Identity::new(key.serialize_pem(), cert.pem(), cert.pem()).unwrap();
        assert_eq!(id.node_id, node);
        id
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life_left_whatever_the_backdating() {
        let life = Duration::from_secs(8);
        for _ in 0..50 {
            let id = identity(life);
            let at = id.renew_at().duration_since(id.received_at).unwrap();
            // Whole seconds in the certificate: allow for the rounding.
            assert!(
                at >= Duration::from_secs(3) && at <= Duration::from_millis(6_400),
                "{at:?}"
            );
        }
        assert!(identity(life).valid_at(SystemTime::now()));
        assert!(!identity(life).valid_at(SystemTime::now() + Duration::from_secs(9)));
    }

    #[test]
    fn an_identity_is_kept_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(Duration::from_secs(3600));
        id.save(Some(dir.path())).unwrap();
        let back = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!((back.node_id, &back.cert_pem), (id.node_id, &id.cert_pem));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Identity::load(&dir.path().join("none")).unwrap().is_none());
    }
}
