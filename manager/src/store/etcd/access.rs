//! [`EtcdAccess`]: how a manager reaches etcd, and proves who it is there.
//!
//! etcd holds the whole cluster, the key of its CA included, so a manager
//! reaches it the way etcd's own operators secure it: over TLS, checking the
//! members' certificates against etcd's CA, with a client certificate where
//! etcd checks clients (`--client-cert-auth`), and as a user where etcd has
//! authentication on (`etcdctl auth enable`). Plain HTTP is for loopback and
//! for networks the operator trusts (`orchctl manager --etcd-plaintext`).

use std::path::Path;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::EtcdUrl;

/// How the store connects to etcd: in plaintext ([`EtcdAccess::default`]),
/// or over TLS, and as a user or not.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// etcd's CA, PEM: with it, the store speaks TLS and trusts only
    /// members whose certificates it signed.
    ca_pem: Option<Vec<u8>>,
    /// The manager's client certificate and its key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// A user of etcd's authentication and its password.
    user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the password.
        f.debug_struct("EtcdAccess")
            .field("tls", &self.is_tls())
            .field("client_certificate", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl EtcdAccess {
    /// Over TLS, trusting the members whose certificates `ca_pem` signed.
    #[must_use]
    pub fn tls(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: Some(ca_pem.into()),
            ..Self::default()
        }
    }

    /// Reads etcd's CA and, if given, the manager's certificate and key
    /// from their files (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
    ///
    /// # Errors
    /// A sentence naming the file that cannot be read or is not PEM, or
    /// saying that a certificate came without its key.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, String> {
        let access = Self::tls(read_pem("--etcd-ca", ca, Pem::Certificate)?);
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(access.with_identity(
                read_pem("--etcd-cert", cert, Pem::Certificate)?,
                read_pem("--etcd-key", key, Pem::Key)?,
            )),
            (None, None) => Ok(access),
            (Some(_), None) => Err("--etcd-cert needs --etcd-key, the certificate's key".into()),
            (None, Some(_)) => Err("--etcd-key needs --etcd-cert, the key's certificate".into()),
        }
    }

    /// The same, presenting `cert_pem` (with its key `key_pem`) to etcd.
    #[must_use]
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The same, as `name` with `password` (etcd's authentication).
    #[must_use]
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Whether the store speaks TLS to etcd.
    pub fn is_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// The user the store is, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    /// The client URLs of `url`'s members, `https://` over TLS.
    pub(super) fn endpoints(&self, url: &EtcdUrl) -> Vec<String> {
        url.endpoints
            .iter()
            .map(|e| match (self.is_tls(), e.strip_prefix("http://")) {
                (true, Some(host)) => format!("https://{host}"),
                _ => e.clone(),
            })
            .collect()
    }

    /// `options` with this access's TLS and user.
    pub(super) fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(ca) = &self.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = &self.user {
            // etcd's tokens expire (5 minutes by default): the client
            // authenticates again when one has.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// What to tell an operator whose connection failed with `detail`: what
    /// etcd most likely wants that this access lacks, if it is clear.
    pub(super) fn hint(&self, detail: &str) -> Option<&'static str> {
        let detail = detail.to_ascii_lowercase();
        if detail.contains("authentication failed") {
            Some("etcd refused the user's name or password (--etcd-user, --etcd-password-file)")
        } else if detail.contains("user name is empty") || detail.contains("invalid auth token") {
            Some("etcd has authentication on: give --etcd-user and --etcd-password-file")
        } else if detail.contains("permission denied") {
            Some(if self.user.is_some() {
                "etcd's user lacks a role that may read and write the store's prefix"
            } else {
                "etcd has authentication on and took the manager for the user its certificate names, which may not read and write the store's prefix: give --etcd-user and --etcd-password-file"
            })
        } else if self.is_tls() && detail.contains("invalid peer certificate") {
            // The manager's side of the handshake refused etcd's certificate.
            Some(
                "the TLS handshake failed: check that --etcd-ca is the CA that signed etcd's certificates",
            )
        } else if [
            "fatal alert",
            "connection closed",
            "broken pipe",
            "connection reset",
        ]
        .iter()
        .any(|cut| detail.contains(cut))
        {
            // etcd hangs up on a client speaking plain HTTP/2 to its TLS
            // port, and on one whose certificate it does not take (with an
            // alert, or before the client reads it).
            Some(match (self.is_tls(), self.identity.is_some()) {
                (false, _) => "etcd may be speaking TLS: give --etcd-ca",
                (true, false) => {
                    "etcd may check clients' certificates: give --etcd-cert and --etcd-key, signed by a CA etcd trusts"
                }
                (true, true) => {
                    "etcd hung up in the TLS handshake: check that etcd trusts the CA that signed --etcd-cert"
                }
            })
        } else {
            None
        }
    }
}

/// Reads the PEM file `path` given by `flag`, checking that it holds
/// what the flag wants: a certificate, or a private key.
fn read_pem(flag: &str, path: &Path, wants: Pem) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let holds = match wants {
        Pem::Certificate => CertificateDer::pem_slice_iter(&text).any(|c| c.is_ok()),
        Pem::Key => PrivateKeyDer::from_pem_slice(&text).is_ok(),
    };
    if !holds {
        return Err(format!(
            "{flag} {}: holds no {} in PEM",
            path.display(),
            match wants {
                Pem::Certificate => "certificate",
                Pem::Key => "private key",
            }
        ));
    }
    Ok(text)
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    Key,
}
