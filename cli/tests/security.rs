//! Security, end to end, with real processes and real TLS: workers join with
//! join tokens and then speak mutual TLS with certificates the cluster's CA
//! signed; clients carry bearer tokens whose roles bound what they may do.

mod support;

use std::time::{Duration, SystemTime};

use orch::v1::{ListNodesRequest, SubmitTaskRequest};
use support::{DEADLINE, Options, Procs, sleeper};
use tonic::Code;

/// Long enough for a worker to try, fail and exit on a loaded machine.
const REFUSAL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_worker_runs_tasks_and_restarts_without_its_token() {
    let mut cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let node = cluster.node_id(0);
    let task = cluster.run_tasks(vec![sleeper(&image)]).await.remove(0);
    assert_eq!(task.node_id, node);

    // The key never left the worker's data directory, and only its owner reads it.
    let dir = cluster.path().join("w0");
    for file in ["node.key", "node.crt", "ca.crt"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // Rotate the join token: the one the harness gives the worker is dead
    // now, so a restart that needed it would fail.
    let rotated = cluster
        .orchctl_within(DEADLINE, &["join-token", "worker", "--rotate", "-q"])
        .await;
    let fresh = rotated.ok().trim().to_string();
    assert!(fresh.starts_with("ORCH-1-") && fresh != cluster.join_token());
    cluster.kill_worker(0).await;
    cluster.restart_worker(0);
    cluster.wait_node_ready(0).await;
    assert_eq!(cluster.node_id(0), node, "the same node came back");
    let reused = cluster
        .worker_refused("late", cluster.join_token(), REFUSAL)
        .await;
    assert_ne!(reused.code, Some(0), "{reused:#?}");
    assert!(
        reused.stderr.contains("unknown or rotated join token"),
        "{reused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_ca_is_refused_before_anything_is_sent() {
    let cluster = Procs::start(Options::default(), 0).await;
    let token = cluster.join_token().to_string();
    let digest = token
        .strip_prefix("ORCH-1-")
        .and_then(|rest| rest.split('-').next())
        .expect("a digest")
        .to_string();
    let other = orch::auth::ca_digest(b"another cluster's CA");
    let forged = token.replace(&digest, &other);
    let ran = cluster.worker_refused("intruder", &forged, REFUSAL).await;
    assert_ne!(ran.code, Some(0), "{ran:#?}");
    assert!(
        ran.stderr.contains("is not the one the join token names")
            && ran.stderr.contains("refusing to join"),
        "{ran:#?}"
    );
    // It never got as far as the manager: no join, no node, no key.
    assert!(!cluster.log_text("manager").contains("a worker joined"));
    let nodes = cluster.nodes().await;
    assert!(nodes.is_empty(), "{nodes:?}");
    assert!(!cluster.path().join("intruder/node.crt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_and_expired_join_tokens_are_refused() {
    let mut cluster = Procs::start(Options::default(), 0).await;
    let once = cluster
        .orchctl_within(DEADLINE, &["join-token", "worker", "--uses", "1", "-q"])
        .await
        .ok()
        .trim()
        .to_string();
    cluster.add_worker_with(&once);
    cluster.wait_ready(1).await;
    let again = cluster.worker_refused("second", &once, REFUSAL).await;
    assert_ne!(again.code, Some(0), "{again:#?}");
    assert!(again.stderr.contains("used up"), "{again:#?}");

    let short = cluster
        .orchctl_json(&["join-token", "worker", "--ttl", "1s"])
        .await;
    let token = short["token"].as_str().expect("token").to_string();
    let expires = humantime::parse_rfc3339(short["expires_at"].as_str().expect("expiry"))
        .expect("an RFC 3339 time");
    // Waiting for a deadline the manager named, not for luck.
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
    let late = cluster.worker_refused("late", &token, REFUSAL).await;
    assert_ne!(late.code, Some(0), "{late:#?}");
    assert!(late.stderr.contains("expired"), "{late:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_and_its_tasks_move() {
    let mut cluster = Procs::start(Options::default(), 2).await;
    let image = cluster.busybox().await;
    let tasks = cluster
        .run_tasks(vec![sleeper(&image), sleeper(&image)])
        .await;
    let gone = tasks[0].node_id.clone();
    let i = cluster.worker_of(&gone);
    let removed = cluster
        .orchctl_within(DEADLINE, &["node", "rm", &gone])
        .await;
    assert!(
        removed.ok().contains("certificate is revoked"),
        "{removed:#?}"
    );

    let moved = cluster.wait_moved(&tasks, &gone).await;
    assert!(moved.iter().all(|t| t.node_id != gone), "{moved:?}");
    // Its worker is refused from then on, and gives up saying why.
    let code = cluster.wait_worker_exit(i, REFUSAL).await;
    assert_ne!(code, Some(0));
    assert!(
        cluster
            .log_text(&format!("w{i}"))
            .contains("was removed from the cluster"),
        "{}",
        cluster.log_text(&format!("w{i}"))
    );
    // Restarted, with its certificate, it is still refused.
    cluster.restart_worker(i);
    let code = cluster.wait_worker_exit(i, REFUSAL).await;
    assert_ne!(code, Some(0));
    let nodes = cluster.orchctl_json(&["nodes"]).await;
    let listed: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(!listed.contains(&gone.as_str()), "{listed:?}");
    // No container of the removed node is left running its tasks: each
    // task runs once, elsewhere.
    cluster.assert_exactly_running(&moved).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_bound_what_a_token_may_do() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let make = |role: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .orchctl_within(
                    DEADLINE,
                    &["token", "create", "--role", role, "--name", role],
                )
                .await
                .ok()
                .trim()
                .to_string()
        }
    };
    let (reader, operator) = (make("read-only").await, make("operator").await);

    // No token: UNAUTHENTICATED, with what to do about it.
    let none = cluster
        .client_with(None)
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(none.message().contains("authorization: Bearer"), "{none:?}");

    // Read-only lists, and cannot submit: the error names the role needed.
    let mut read = cluster.client_with(Some(&reader)).await;
    read.list_nodes(ListNodesRequest {})
        .await
        .expect("read-only lists");
    let refused = read
        .submit_task(SubmitTaskRequest {
            spec: Some(sleeper(&image)),
        })
        .await
        .expect_err("read-only submits");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("needs the operator role"),
        "{refused:?}"
    );
    let ran = cluster
        .orchctl_within(DEADLINE, &["--token", &reader, "run", &image, "true"])
        .await;
    assert!(
        ran.refused().contains("needs the operator role"),
        "{ran:#?}"
    );

    // Operator submits, and cannot make tokens or remove nodes.
    let submitted = cluster
        .orchctl_within(DEADLINE, &["--token", &operator, "run", &image, "true"])
        .await;
    submitted.ok();
    let ran = cluster
        .orchctl_within(
            DEADLINE,
            &["--token", &operator, "token", "create", "--role", "admin"],
        )
        .await;
    assert!(ran.refused().contains("needs the admin role"), "{ran:#?}");

    // A revoked token stops working at once; the others go on.
    let listed = cluster.orchctl_json(&["token", "ls"]).await;
    let id = listed
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "read-only")
        .and_then(|t| t["id"].as_str())
        .expect("the read-only token is listed")
        .to_string();
    assert!(listed.to_string().contains("\"role\":\"read-only\""));
    assert!(
        !listed.to_string().contains(&reader),
        "secrets are never listed"
    );
    cluster
        .orchctl_within(DEADLINE, &["token", "revoke", &id])
        .await
        .ok();
    let revoked = cluster
        .client_with(Some(&reader))
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .expect_err("revoked");
    assert_eq!(revoked.code(), Code::Unauthenticated);
    cluster
        .client_with(Some(&operator))
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .expect("the operator's token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_renew_while_tasks_run_without_losing_the_session() {
    let options = Options {
        manager_args: vec!["--node-cert-ttl".into(), "8s".into()],
        ..Options::default()
    };
    let cluster = Procs::start(options, 1).await;
    let image = cluster.busybox().await;
    let task = cluster.run_tasks(vec![sleeper(&image)]).await.remove(0);
    let expiry = || async {
        cluster.nodes().await[0]
            .certificate_expires_at
            .as_ref()
            .map(orch::time::system_time)
            .expect("a certificate expiry")
    };
    let first = expiry().await;
    let cert = std::fs::read_to_string(cluster.path().join("w0/node.crt")).expect("cert");
    // Renewed at 50-80% of 8 s, twice: the expiry moves on each time the
    // manager signs, and the worker says so once it has the certificate
    // (a moment later). There is no event for it, so look every 200 ms
    // until the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut seen = vec![first];
    let renewals = || {
        cluster
            .log_text("w0")
            .matches("node certificate renewed")
            .count()
    };
    while seen.len() < 3 || renewals() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "within 45 s, the expiry moved {} times, the worker renewed {} times: {seen:?}",
            seen.len() - 1,
            renewals()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = expiry().await;
        if now > *seen.last().expect("one") {
            seen.push(now);
        }
    }
    let renewed = std::fs::read_to_string(cluster.path().join("w0/node.crt")).expect("cert");
    assert_ne!(cert, renewed, "the worker keeps its new certificate");
    // One registration and one session in all: renewal did not reconnect.
    let worker_log = cluster.log_text("w0");
    assert_eq!(worker_log.matches(" registered").count(), 1, "{worker_log}");
    assert_eq!(
        cluster
            .log_text("manager")
            .matches("session opened")
            .count(),
        1
    );
    // And the task ran on, untouched, past its first certificate's expiry.
    let now = cluster
        .wait_task(&task.id, |t| t.state() == orch::v1::TaskState::Running)
        .await;
    assert_eq!(now.attempt, task.attempt);
    assert!(
        SystemTime::now() > first,
        "the first certificate has expired by now"
    );
}
