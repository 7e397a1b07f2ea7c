//! Who may do what: the cluster's CA ([`ca`]), client tokens with roles,
//! worker join tokens, and the check of every `Cluster` call ([`layer`]).
//!
//! The trust model:
//! - the manager is the cluster's CA; every connection to it is TLS, and
//!   clients verify it against the CA (a joining worker first checks the CA
//!   against the digest in its join token);
//! - a worker proves its node id with a certificate the CA signed (mutual
//!   TLS): the `Dispatcher` takes the node id from the certificate, never
//!   from the request; a removed node is refused whatever its certificate;
//! - a client proves a role with a bearer token; the manager keeps only the
//!   SHA-256 of each secret (the current join token is kept whole, so
//!   `orchctl join-token worker` can print it, as Swarm does).
//!
//! The credentials live here, behind their own lock (never the engine's),
//! and are persisted through the same [`Committer`] as everything else, as
//! opaque [`Write::Credential`] records.

pub mod ca;
pub mod layer;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use orch::auth::{ClientToken, JoinToken, Role, constant_time_eq, hex, sha256};
use orch::v1::{GetJoinTokenResponse, TokenInfo, TokenRole};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::store::Write;

pub use self::ca::Ca;

/// How long a node certificate is valid unless configured otherwise.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Most client tokens kept at once.
pub const MAX_TOKENS: usize = 1_000;
/// Most join tokens (the current one and extra ones) kept at once.
pub const MAX_JOIN_TOKENS: usize = 100;

const TOKEN_KEY: &str = "token/";
const JOIN_KEY: &str = "join/";

/// A client token as stored: its hash, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    name: String,
    role: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    secret_sha256: String,
}

/// A join token as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRecord {
    secret_sha256: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    /// Joins left; `None` for unlimited.
    uses_left: Option<u32>,
    /// The secret itself, for the current token only.
    current_secret: Option<String>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn secret() -> String {
    hex(&rand::random::<[u8; 24]>())
}

fn role_of(record: &TokenRecord) -> Option<Role> {
    record.role.parse().ok()
}

/// The proto's role of `role`.
pub fn proto_role(role: Role) -> TokenRole {
    match role {
        Role::ReadOnly => TokenRole::ReadOnly,
        Role::Operator => TokenRole::Operator,
        Role::Admin => TokenRole::Admin,
    }
}

/// The role a proto role names; `None` for unspecified.
pub fn role_from_proto(role: TokenRole) -> Option<Role> {
    match role {
        TokenRole::Unspecified => None,
        TokenRole::ReadOnly => Some(Role::ReadOnly),
        TokenRole::Operator => Some(Role::Operator),
        TokenRole::Admin => Some(Role::Admin),
    }
}

/// Who a request comes from, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token_id: String,
    /// The token's role.
    pub role: Role,
}

/// The credentials: client tokens, join tokens, and the CA that signs node
/// certificates. See the module documentation.
#[derive(Debug)]
pub struct Auth {
    ca: Ca,
    tokens: BTreeMap<String, TokenRecord>,
    joins: BTreeMap<String, JoinRecord>,
    node_cert_lifetime: Duration,
}

impl Auth {
    /// The credentials read back from the store's `records`, with a current
    /// join token made if there is none. Returns the writes that makes.
    ///
    /// # Errors
    /// A record that does not decode: the store is corrupt.
    pub fn restore(
        ca: Ca,
        records: &[(String, Vec<u8>)],
        node_cert_lifetime: Duration,
        now: SystemTime,
    ) -> Result<(Self, Vec<Write>), String> {
        let mut auth = Self {
            ca,
            tokens: BTreeMap::new(),
            joins: BTreeMap::new(),
            node_cert_lifetime,
        };
        for (key, bytes) in records {
            let bad = |e: serde_json::Error| format!("credential {key:?}: {e}");
            if let Some(id) = key.strip_prefix(TOKEN_KEY) {
                auth.tokens
                    .insert(id.to_owned(), serde_json::from_slice(bytes).map_err(bad)?);
            } else if let Some(hash) = key.strip_prefix(JOIN_KEY) {
                auth.joins
                    .insert(hash.to_owned(), serde_json::from_slice(bytes).map_err(bad)?);
            } else {
                return Err(format!("credential {key:?}: unknown kind"));
            }
        }
        let mut writes = Vec::new();
        if auth.current_join().is_none() {
            writes.extend(auth.new_join(now, None, None, true).1);
        }
        Ok((auth, writes))
    }

    /// The cluster's CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// How long the node certificates it signs are valid.
    pub fn node_cert_lifetime(&self) -> Duration {
        self.node_cert_lifetime
    }

    /// Whether any client token exists.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks the `authorization` metadata of a request that needs `needed`.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` without a valid, unexpired token; `PERMISSION_DENIED`
    /// naming the role needed when the token's role is weaker.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
        method: &str,
        now: SystemTime,
    ) -> Result<Caller, Status> {
        let Some(value) = authorization else {
            return Err(Status::unauthenticated(
                "no client token: send the metadata `authorization: Bearer TOKEN` (orchctl reads its token from ~/.config/orch/config.toml, ORCH_TOKEN or --token)",
            ));
        };
        let text = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer TOKEN`"))?;
        let token: ClientToken = text
            .parse()
            .map_err(|e: String| Status::unauthenticated(format!("authorization: {e}")))?;
        let record = self
            .tokens
            .get(&token.id)
            .filter(|r| {
                constant_time_eq(
                    r.secret_sha256.as_bytes(),
                    hex(&sha256(token.secret.as_bytes())).as_bytes(),
                )
            })
            .ok_or_else(|| Status::unauthenticated("authorization: unknown or revoked token"))?;
        if record.expires_ms.is_some_and(|e| ms(now) >= e) {
            return Err(Status::unauthenticated(format!(
                "authorization: token {} expired",
                record.id
            )));
        }
        let role = role_of(record)
            .ok_or_else(|| Status::unauthenticated("authorization: the token's role is unknown"))?;
        if !role.allows(needed) {
            return Err(Status::permission_denied(format!(
                "{method} needs the {needed} role; token {} is {role}",
                record.id
            )));
        }
        Ok(Caller {
            token_id: record.id.clone(),
            role,
        })
    }

    /// Makes a client token. Returns its info, the whole token text (shown
    /// once), and the writes to persist.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when [`MAX_TOKENS`] exist.
    pub fn create_token(
        &mut self,
        role: Role,
        name: &str,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<(TokenInfo, String, Vec<Write>), Status> {
        if self.tokens.len() >= MAX_TOKENS {
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_TOKENS} client tokens; revoke some first"
            )));
        }
        let token = ClientToken {
            id: hex(&rand::random::<[u8; 8]>()),
            secret: secret(),
        };
        let record = TokenRecord {
            id: token.id.clone(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            created_ms: ms(now),
            expires_ms: ttl.map(|ttl| ms(now + ttl)),
            secret_sha256: hex(&sha256(token.secret.as_bytes())),
        };
        let write = token_write(&record);
        let info = token_info(&record);
        self.tokens.insert(record.id.clone(), record);
        Ok((info, token.to_string(), vec![write]))
    }

    /// Every client token, oldest first.
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self.tokens.values().map(token_info).collect();
        tokens.sort_by_key(|t| t.created_at.map(|c| (c.seconds, c.nanos)));
        tokens
    }

    /// Revokes client token `id`.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown id.
    pub fn revoke_token(&mut self, id: &str) -> Result<Vec<Write>, Status> {
        self.tokens
            .remove(id)
            .ok_or_else(|| Status::not_found(format!("token {id:.64} not found")))?;
        Ok(vec![Write::Credential {
            key: format!("{TOKEN_KEY}{id}"),
            record: None,
        }])
    }

    fn current_join(&self) -> Option<&JoinRecord> {
        self.joins.values().find(|j| j.current_secret.is_some())
    }

    fn join_text(&self, secret: &str) -> String {
        JoinToken {
            ca_digest: self.ca.digest().to_owned(),
            secret: secret.to_owned(),
        }
        .to_string()
    }

    fn new_join(
        &mut self,
        now: SystemTime,
        ttl: Option<Duration>,
        uses: Option<u32>,
        current: bool,
    ) -> (GetJoinTokenResponse, Vec<Write>) {
        let secret = secret();
        let record = JoinRecord {
            secret_sha256: hex(&sha256(secret.as_bytes())),
            created_ms: ms(now),
            expires_ms: ttl.map(|ttl| ms(now + ttl)),
            uses_left: uses,
            current_secret: current.then(|| secret.clone()),
        };
        let reply = GetJoinTokenResponse {
            token: self.join_text(&secret),
            expires_at: record.expires_ms.map(|e| orch::time::timestamp(time_of(e))),
            uses_left: record.uses_left.unwrap_or(0),
        };
        let write = join_write(&record);
        self.joins.insert(record.secret_sha256.clone(), record);
        (reply, vec![write])
    }

    /// The worker join token: the current one; with `rotate`, a new current
    /// one (every older join token is refused from then on); with `ttl` or
    /// `uses`, an extra one that expires or is used up.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when [`MAX_JOIN_TOKENS`] exist.
    pub fn join_token(
        &mut self,
        rotate: bool,
        ttl: Option<Duration>,
        uses: Option<u32>,
        now: SystemTime,
    ) -> Result<(GetJoinTokenResponse, Vec<Write>), Status> {
        let mut writes = Vec::new();
        self.prune_joins(now, &mut writes);
        if rotate {
            for (hash, _) in std::mem::take(&mut self.joins) {
                writes.push(Write::Credential {
                    key: format!("{JOIN_KEY}{hash}"),
                    record: None,
                });
            }
            writes.extend(self.new_join(now, None, None, true).1);
        }
        if ttl.is_some() || uses.is_some() {
            if self.joins.len() >= MAX_JOIN_TOKENS {
                return Err(Status::resource_exhausted(format!(
                    "at most {MAX_JOIN_TOKENS} join tokens; rotate to clear them"
                )));
            }
            let (reply, more) = self.new_join(now, ttl, uses, false);
            writes.extend(more);
            return Ok((reply, writes));
        }
        if self.current_join().is_none() {
            writes.extend(self.new_join(now, None, None, true).1);
        }
        let current = self
            .current_join()
            .and_then(|j| j.current_secret.clone())
            .unwrap_or_default();
        let reply = GetJoinTokenResponse {
            token: self.join_text(&current),
            expires_at: None,
            uses_left: 0,
        };
        Ok((reply, writes))
    }

    /// Drops the join tokens that expired or were used up.
    fn prune_joins(&mut self, now: SystemTime, writes: &mut Vec<Write>) {
        let now = ms(now);
        let gone: Vec<String> = self
            .joins
            .iter()
            .filter(|(_, j)| j.expires_ms.is_some_and(|e| now >= e) || j.uses_left == Some(0))
            .map(|(h, _)| h.clone())
            .collect();
        for hash in gone {
            self.joins.remove(&hash);
            writes.push(Write::Credential {
                key: format!("{JOIN_KEY}{hash}"),
                record: None,
            });
        }
    }

    /// Spends one use of a join token. Returns the writes that record it.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for a token that is malformed, for another CA,
    /// unknown, rotated away, expired or used up.
    pub fn use_join_token(&mut self, text: &str, now: SystemTime) -> Result<Vec<Write>, Status> {
        let token: JoinToken = text
            .parse()
            .map_err(|e: String| Status::unauthenticated(format!("token: {e}")))?;
        if token.ca_digest != self.ca.digest() {
            return Err(Status::unauthenticated(
                "token: it is for another cluster (its CA digest is not this manager's)",
            ));
        }
        let hash = hex(&sha256(token.secret.as_bytes()));
        let record = self
            .joins
            .get_mut(&hash)
            .ok_or_else(|| Status::unauthenticated("token: unknown or rotated join token"))?;
        if record.expires_ms.is_some_and(|e| ms(now) >= e) {
            return Err(Status::unauthenticated("token: the join token expired"));
        }
        if let Some(left) = &mut record.uses_left {
            if *left == 0 {
                return Err(Status::unauthenticated("token: the join token is used up"));
            }
            *left -= 1;
            return Ok(vec![join_write(record)]);
        }
        Ok(Vec::new())
    }
}

fn token_write(record: &TokenRecord) -> Write {
    Write::Credential {
        key: format!("{TOKEN_KEY}{}", record.id),
        record: Some(serde_json::to_vec(record).unwrap_or_default()),
    }
}

fn join_write(record: &JoinRecord) -> Write {
    Write::Credential {
        key: format!("{JOIN_KEY}{}", record.secret_sha256),
        record: Some(serde_json::to_vec(record).unwrap_or_default()),
    }
}

fn token_info(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        role: role_of(record).map_or(TokenRole::Unspecified, proto_role) as i32,
        created_at: Some(orch::time::timestamp(time_of(record.created_ms))),
        expires_at: record.expires_ms.map(|e| orch::time::timestamp(time_of(e))),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests;
