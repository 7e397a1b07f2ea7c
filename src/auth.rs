//! The shapes of orch's credentials, shared by the manager that issues them
//! and the clients that carry them: the roles of client tokens, the text of a
//! join token and of a client token, and the digest that pins the cluster's
//! CA. Nothing here generates a secret or reads a file.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// What a client token may do. Each role can do everything the ones before
/// it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// List and watch.
    ReadOnly,
    /// Also submit and stop tasks, and manage services.
    Operator,
    /// Also manage nodes, client tokens and join tokens.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::ReadOnly, Role::Operator, Role::Admin];

    /// The role's name, as `orchctl token create --role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether a holder of `self` may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: admin, operator or read-only"))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The digest that pins a CA: lowercase hex of the SHA-256 of its DER
/// certificate, as a join token carries it.
pub fn ca_digest(ca_der: &[u8]) -> String {
    hex(&sha256(ca_der))
}

/// Compares two byte strings in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The prefix of every join token, and its format version.
pub const JOIN_TOKEN_PREFIX: &str = "ORCH-1-";

/// A join token: `ORCH-1-<CA digest>-<secret>`. The digest lets a joining
/// worker check the manager's CA before it trusts anything the manager says;
/// the secret is what the manager checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// [`ca_digest`] of the cluster's CA certificate.
    pub ca_digest: String,
    /// The secret: lowercase hex.
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_TOKEN_PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "not a join token ({why}): expected ORCH-1-<CA digest>-<secret>, as `orchctl join-token worker` prints it"
            )
        };
        let rest = s
            .trim()
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .ok_or_else(|| bad("no ORCH-1- prefix"))?;
        let (digest, secret) = rest.split_once('-').ok_or_else(|| bad("no secret"))?;
        if digest.len() != 64 || !is_hex(digest) {
            return Err(bad("the CA digest is not 64 hex digits"));
        }
        if secret.len() < 32 || secret.len() > 128 || !is_hex(secret) {
            return Err(bad("the secret is not 32 to 128 hex digits"));
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// The prefix of every client token.
pub const CLIENT_TOKEN_PREFIX: &str = "orch_";

/// A client (bearer) token: `orch_<id>_<secret>`. The id names the token in
/// `orchctl token ls` and `revoke`; the manager keeps only a hash of the
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    /// The token's id: 16 lowercase hex digits.
    pub id: String,
    /// The secret: lowercase hex.
    pub secret: String,
}

impl fmt::Display for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CLIENT_TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

impl FromStr for ClientToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            "not an orch client token (expected orch_<id>_<secret>, as `orchctl token create` prints it)".to_string()
        };
        let rest = s.trim().strip_prefix(CLIENT_TOKEN_PREFIX).ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id.len() != 16
            || !is_hex(id)
            || secret.len() < 32
            || secret.len() > 128
            || !is_hex(secret)
        {
            return Err(bad());
        }
        Ok(ClientToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The DNS name every manager certificate carries, whatever addresses it
/// also has. orch's own clients verify the manager under this name, so a
/// manager reached through an address its certificate does not list (a NAT,
/// a container network) is still verified against the cluster's CA.
pub const MANAGER_SERVER_NAME: &str = "orch-manager";

/// The prefix of the Common Name of a node certificate; the node id follows.
pub const NODE_CN_PREFIX: &str = "orch-node:";

/// A tonic interceptor that puts `authorization: Bearer TOKEN` on every
/// request of a client: `ClusterClient::with_interceptor(channel, bearer)`.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Sends `token` (none: sends nothing, and the manager answers
    /// `UNAUTHENTICATED`).
    ///
    /// # Errors
    /// If the token holds characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| "the client token has characters a header cannot carry".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A `Cluster` client that sends a bearer token with every call.
pub type Client = crate::v1::cluster_client::ClusterClient<
    tonic::codegen::InterceptedService<tonic::transport::Channel, Bearer>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_back() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::ReadOnly));
        assert!(!Role::ReadOnly.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("read-only"));
    }

    #[test]
    fn join_tokens_round_trip_and_bad_ones_say_why() {
        let t = JoinToken {
            ca_digest: ca_digest(b"ca"),
            secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let text = t.to_string();
        assert!(text.starts_with("ORCH-1-"));
        assert_eq!(text.parse::<JoinToken>(), Ok(t));
        assert!(
            "SWMTKN-1-x-y"
                .parse::<JoinToken>()
                .unwrap_err()
                .contains("prefix")
        );
        assert!(
            "ORCH-1-abc-0123456789abcdef0123456789abcdef"
                .parse::<JoinToken>()
                .unwrap_err()
                .contains("digest")
        );
        let short = format!("ORCH-1-{}-abc", ca_digest(b"ca"));
        assert!(short.parse::<JoinToken>().unwrap_err().contains("secret"));
    }

    #[test]
    fn client_tokens_round_trip() {
        let t = ClientToken {
            id: "0123456789abcdef".into(),
            secret: "ab".repeat(24),
        };
        assert_eq!(t.to_string().parse::<ClientToken>(), Ok(t));
        assert!("orch_x_y".parse::<ClientToken>().is_err());
        assert!("Bearer orch_".parse::<ClientToken>().is_err());
    }

    #[test]
    fn digest_is_sha256_hex() {
        // SHA-256 of the empty string.
        assert_eq!(
            ca_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
