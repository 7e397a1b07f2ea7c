//! `orchctl token ...` and `orchctl join-token worker`: the admin's
//! commands for who may use the cluster.

use orch::v1::{
    CreateTokenRequest, GetJoinTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo,
    TokenRole,
};
use serde_json::{Value, json};

use crate::CliError;
use crate::args::{JoinTokenArgs, Output, TokenCommand};
use crate::client::{connect, status_error};
use crate::config::Target;
use crate::output;

fn role_name(role: TokenRole) -> &'static str {
    match role {
        TokenRole::Unspecified => "unspecified",
        TokenRole::ReadOnly => "read-only",
        TokenRole::Operator => "operator",
        TokenRole::Admin => "admin",
    }
}

fn proto_role(role: orch::auth::Role) -> TokenRole {
    match role {
        orch::auth::Role::ReadOnly => TokenRole::ReadOnly,
        orch::auth::Role::Operator => TokenRole::Operator,
        orch::auth::Role::Admin => TokenRole::Admin,
    }
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": role_name(t.role()),
        "created_at": output::rfc3339(t.created_at.as_ref()),
        "expires_at": output::rfc3339(t.expires_at.as_ref()),
    })
}

pub async fn token(target: &Target, command: TokenCommand, out: Output) -> Result<(), CliError> {
    let mut client = connect(target).await?;
    match command {
        TokenCommand::Create(a) => {
            let reply = client
                .create_token(CreateTokenRequest {
                    role: proto_role(a.role) as i32,
                    name: a.name,
                    ttl: a.ttl.map(orch::time::duration),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let info = reply.token.unwrap_or_default();
            match out {
                Output::Json => {
                    let mut v = token_json(&info);
                    v["token"] = Value::String(reply.secret);
                    output::print_json(&v);
                }
                Output::Table => {
                    println!("{}", reply.secret);
                    eprintln!(
                        "token {} ({}) made; it is shown only now: the manager keeps its hash",
                        info.id,
                        role_name(info.role())
                    );
                }
            }
        }
        TokenCommand::Ls => {
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .tokens;
            match out {
                Output::Json => {
                    output::print_json(&Value::Array(tokens.iter().map(token_json).collect()))
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                if t.name.is_empty() {
                                    "-".into()
                                } else {
                                    t.name.clone()
                                },
                                role_name(t.role()).into(),
                                output::time_text(t.created_at.as_ref()),
                                t.expires_at
                                    .as_ref()
                                    .map_or_else(|| "never".into(), |e| output::time_text(Some(e))),
                            ]
                        })
                        .collect();
                    output::print_table(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES"], &rows);
                }
            }
        }
        TokenCommand::Revoke(a) => {
            client
                .revoke_token(RevokeTokenRequest { id: a.id.clone() })
                .await
                .map_err(status_error)?;
            match out {
                Output::Json => output::print_json(&json!({ "id": a.id, "revoked": true })),
                Output::Table => println!("revoked token {}", a.id),
            }
        }
    }
    Ok(())
}

pub async fn join_token(target: &Target, a: JoinTokenArgs, out: Output) -> Result<(), CliError> {
    let mut client = connect(target).await?;
    let reply = client
        .get_join_token(GetJoinTokenRequest {
            rotate: a.rotate,
            ttl: a.ttl.map(orch::time::duration),
            uses: a.uses.unwrap_or(0),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match out {
        Output::Json => output::print_json(&json!({
            "token": reply.token,
            "expires_at": output::rfc3339(reply.expires_at.as_ref()),
            "uses_left": (reply.uses_left > 0).then_some(reply.uses_left),
        })),
        Output::Table if a.quiet => println!("{}", reply.token),
        Output::Table => {
            let mut limits = Vec::new();
            if let Some(e) = &reply.expires_at {
                limits.push(format!("expires {}", output::time_text(Some(e))));
            }
            if reply.uses_left > 0 {
                limits.push(format!("{} uses", reply.uses_left));
            }
            let limits = if limits.is_empty() {
                String::new()
            } else {
                format!(" ({})", limits.join(", "))
            };
            println!("To add a worker to this cluster{limits}, run on its machine:\n");
            println!(
                "    orchctl worker --manager {} --join-token {}\n",
                target.url, reply.token
            );
        }
    }
    Ok(())
}
