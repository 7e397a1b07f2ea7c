//! The `Cluster` calls about access: client tokens, join tokens, and node
//! removal (which revokes the node's certificate). All need `admin`; the
//! [`AuthLayer`](crate::auth::layer::AuthLayer) has checked that.

use std::time::Duration;

use orch::v1::{
    CreateTokenRequest, CreateTokenResponse, GetJoinTokenRequest, GetJoinTokenResponse,
    ListTokensResponse, RemoveNodeRequest, TokenRole,
};
use orch::validate::{self, FieldError};
use tonic::Status;

use crate::auth::role_from_proto;
use crate::{Error, Shared};

/// Longest name of a client token.
pub const MAX_TOKEN_NAME: usize = 63;
/// Longest lifetime of a client or join token that expires.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn ttl(field: &'static str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
    let Some(d) = d else { return Ok(None) };
    let ttl = orch::time::std_duration(d)
        .filter(|t| !t.is_zero() && *t <= MAX_TTL)
        .ok_or_else(|| FieldError::new(field, "must be positive and at most 10 years"))?;
    Ok(Some(ttl))
}

pub(super) async fn create_token(
    shared: &Shared,
    req: CreateTokenRequest,
) -> Result<CreateTokenResponse, Status> {
    let role = role_from_proto(req.role())
        .filter(|_| TokenRole::try_from(req.role).is_ok())
        .ok_or_else(|| {
            Error::from(FieldError::new(
                "role",
                "must be admin, operator or read-only",
            ))
        })?;
    if req.name.chars().count() > MAX_TOKEN_NAME || req.name.chars().any(char::is_control) {
        return Err(Error::from(FieldError::new(
            "name",
            format!("at most {MAX_TOKEN_NAME} characters, no control characters"),
        ))
        .into());
    }
    let ttl = ttl("ttl", req.ttl.as_ref())?;
    let (info, secret, writes) =
        shared
            .auth()
            .create_token(role, &req.name, ttl, shared.now().wall)?;
    shared.persist(writes).await?;
    tracing::info!(token = %info.id, role = %role, name = %req.name, "client token created");
    Ok(CreateTokenResponse {
        token: Some(info),
        secret,
    })
}

pub(super) fn list_tokens(shared: &Shared) -> ListTokensResponse {
    ListTokensResponse {
        tokens: shared.auth().list_tokens(),
    }
}

pub(super) async fn revoke_token(shared: &Shared, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Error::from(FieldError::new("id", "required")).into());
    }
    let writes = shared.auth().revoke_token(id)?;
    shared.persist(writes).await?;
    tracing::info!(token = %id, "client token revoked");
    Ok(())
}

pub(super) async fn join_token(
    shared: &Shared,
    req: GetJoinTokenRequest,
) -> Result<GetJoinTokenResponse, Status> {
    let ttl = ttl("ttl", req.ttl.as_ref())?;
    let uses = (req.uses > 0).then_some(req.uses);
    let (reply, writes) = shared
        .auth()
        .join_token(req.rotate, ttl, uses, shared.now().wall)?;
    shared.persist(writes).await?;
    if req.rotate {
        tracing::info!("worker join token rotated");
    }
    Ok(reply)
}

pub(super) async fn remove_node(shared: &Shared, req: RemoveNodeRequest) -> Result<(), Status> {
    let id = validate::id("id", &req.id).map_err(Error::from)?;
    let durable = shared.lock().remove_node(id)?;
    durable.wait().await.map_err(Error::from)?;
    tracing::info!(node = %id, "node removed; its certificate is revoked");
    Ok(())
}
