use std::time::{Duration, SystemTime};

use orch::auth::Role;
use tonic::Code;

use super::*;

fn auth() -> (Auth, SystemTime) {
    let now = SystemTime::now();
    let (auth, writes) =
        Auth::restore(Ca::create(now).unwrap(), &[], NODE_CERT_LIFETIME, now).unwrap();
    assert_eq!(
        writes.len(),
        1,
        "a first start makes the current join token"
    );
    (auth, now)
}

fn records(writes: &[Write]) -> Vec<(String, Vec<u8>)> {
    let mut kept = BTreeMap::new();
    for w in writes {
        if let Write::Credential { key, record } = w {
            match record {
                Some(r) => kept.insert(key.clone(), r.clone()),
                None => kept.remove(key),
            };
        }
    }
    kept.into_iter().collect()
}

#[test]
fn a_token_authorizes_its_role_and_weaker_ones_only() {
    let (mut auth, now) = auth();
    let (info, text, _) = auth.create_token(Role::Operator, "ci", None, now).unwrap();
    assert_eq!(info.name, "ci");
    let bearer = format!("Bearer {text}");
    let caller = auth
        .authorize(Some(&bearer), Role::ReadOnly, "ListTasks", now)
        .unwrap();
    assert_eq!(caller.role, Role::Operator);
    auth.authorize(Some(&bearer), Role::Operator, "SubmitTask", now)
        .unwrap();
    let denied = auth
        .authorize(Some(&bearer), Role::Admin, "CreateToken", now)
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("CreateToken needs the admin role"),
        "{}",
        denied.message()
    );

    let missing = auth
        .authorize(None, Role::ReadOnly, "ListTasks", now)
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    // The right id with a wrong secret is as unknown as a made-up token.
    let forged = format!("Bearer orch_{}_{}", info.id, "0".repeat(48));
    let wrong = auth
        .authorize(Some(&forged), Role::ReadOnly, "ListTasks", now)
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
}

#[test]
fn tokens_expire_are_revoked_and_survive_a_restart_as_hashes() {
    let (mut auth, now) = auth();
    let (short, short_text, mut writes) = auth
        .create_token(Role::Admin, "", Some(Duration::from_secs(60)), now)
        .unwrap();
    let (kept, kept_text, more) = auth
        .create_token(Role::ReadOnly, "kept", None, now)
        .unwrap();
    writes.extend(more);
    let bearer = |t: &str| format!("Bearer {t}");
    let later = now + Duration::from_secs(61);
    let expired = auth
        .authorize(
            Some(&bearer(&short_text)),
            Role::ReadOnly,
            "ListTasks",
            later,
        )
        .unwrap_err();
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    // What is stored holds no secret.
    let stored = records(&writes);
    assert!(stored.iter().all(|(_, r)| {
        let r = String::from_utf8_lossy(r);
        !r.contains(short_text.rsplit('_').next().unwrap_or_default())
    }));
    let (mut back, _) = Auth::restore(
        Ca::from_pem(auth.ca().cert_pem(), &auth.ca().key_pem()).unwrap(),
        &stored,
        NODE_CERT_LIFETIME,
        now,
    )
    .unwrap();
    back.authorize(Some(&bearer(&kept_text)), Role::ReadOnly, "ListTasks", now)
        .unwrap();
    assert_eq!(back.list_tokens().len(), 2);

    back.revoke_token(&kept.id).unwrap();
    let revoked = back
        .authorize(Some(&bearer(&kept_text)), Role::ReadOnly, "ListTasks", now)
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    assert_eq!(back.revoke_token(&short.id).map(|w| w.len()).unwrap(), 1);
    assert_eq!(
        back.revoke_token("nope").unwrap_err().code(),
        Code::NotFound
    );
}

#[test]
fn join_tokens_pin_the_ca_expire_run_out_and_rotate() {
    let (mut auth, now) = auth();
    let (current, _) = auth.join_token(false, None, None, now).unwrap();
    assert!(current.token.contains(auth.ca().digest()));
    // The current token is unlimited and printed the same each time.
    for _ in 0..3 {
        auth.use_join_token(&current.token, now).unwrap();
    }
    assert_eq!(
        auth.join_token(false, None, None, now).unwrap().0.token,
        current.token
    );

    let (twice, _) = auth.join_token(false, None, Some(2), now).unwrap();
    assert_eq!(twice.uses_left, 2);
    auth.use_join_token(&twice.token, now).unwrap();
    auth.use_join_token(&twice.token, now).unwrap();
    let used_up = auth.use_join_token(&twice.token, now).unwrap_err();
    assert!(
        used_up.message().contains("used up"),
        "{}",
        used_up.message()
    );

    let (hour, _) = auth
        .join_token(false, Some(Duration::from_secs(3600)), None, now)
        .unwrap();
    auth.use_join_token(&hour.token, now).unwrap();
    let expired = auth
        .use_join_token(&hour.token, now + Duration::from_secs(3601))
        .unwrap_err();
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    let other = Ca::create(now).unwrap();
    let foreign = current.token.replace(auth.ca().digest(), other.digest());
    let refused = auth.use_join_token(&foreign, now).unwrap_err();
    assert!(
        refused.message().contains("another cluster"),
        "{}",
        refused.message()
    );

    let (rotated, _) = auth.join_token(true, None, None, now).unwrap();
    assert_ne!(rotated.token, current.token);
    assert_eq!(
        auth.use_join_token(&current.token, now).unwrap_err().code(),
        Code::Unauthenticated
    );
    auth.use_join_token(&rotated.token, now).unwrap();
}
