//! What orch explains, with real processes and real Docker, through the
//! `orchctl` binary: `status TASK` lists every attempt of a task that
//! crashed and was restarted, with their exit codes (table and JSON), and
//! `run --dry-run` and `apply --dry-run` name, for every node, the filter
//! that refuses it or its score, and change nothing.

mod support;

use orch::v1::{TaskState, event};
use serde_json::Value;
use support::{DEADLINE, Options, Procs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_every_attempt_of_a_task_restarted_three_times_with_its_exit_code() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let printed = cluster
        .orchctl_json(&[
            "run",
            "--restart",
            "on-failure",
            "--max-restarts",
            "3",
            "--stop-timeout",
            "1s",
            &image,
            "sh",
            "-c",
            "exit 1",
        ])
        .await;
    let id = printed["id"].as_str().expect("id").to_owned();
    cluster
        .wait_for("the fourth attempt failed", |v| {
            let t = v.task(&id)?;
            (t.attempt == 4 && t.state() == TaskState::Failed && t.restart_at.is_none())
                .then_some(())
        })
        .await;

    let status = cluster.orchctl_json(&["status", &id]).await;
    let attempts = status["attempts"].as_array().expect("an attempts array");
    assert_eq!(attempts.len(), 4, "{status}");
    let node = cluster.node_id(0);
    for (n, a) in attempts.iter().enumerate() {
        let mut keys: Vec<&str> = a
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        for key in [
            "attempt",
            "node_id",
            "container_id",
            "started_at",
            "finished_at",
            "exit_code",
            "message",
        ] {
            assert!(keys.contains(&key), "{key} in {a}");
        }
        assert_eq!(a["attempt"], Value::from(n + 1), "{a}");
        assert_eq!(a["exit_code"], Value::from(1), "{a}");
        assert_eq!(a["state"], Value::from("failed"), "{a}");
        assert_eq!(a["node_id"], Value::from(node.as_str()), "{a}");
        assert!(
            a["container_id"].as_str().is_some_and(|c| !c.is_empty()),
            "{a}"
        );
        assert!(
            a["started_at"].is_string() && a["finished_at"].is_string(),
            "{a}"
        );
        assert!(
            a["message"].as_str().is_some_and(|m| m.contains("code 1")),
            "{a}"
        );
    }

    // The table: the task, then one row per attempt with its exit code.
    let table = cluster.orchctl_within(DEADLINE, &["status", &id]).await;
    let out = table.ok();
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("ATTEMPT"))
        .collect();
    let header = rows.first().copied().unwrap_or_default();
    assert!(
        header.contains(" EXIT ") && header.ends_with("REASON"),
        "{out}"
    );
    assert_eq!(rows.len(), 5, "a header and four attempts: {out}");
    for (n, row) in rows[1..].iter().enumerate() {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], (n + 1).to_string(), "{row}");
        assert_eq!(cells[1], &node[..8], "{row}");
        assert_eq!(cells[5], "1", "the exit code: {row}");
    }
    // The worker keeps the containers of the newest three attempts, for
    // their output.
    let kept: Vec<_> = (2..=4)
        .map(|a| (id.to_string(), a, node.to_string()))
        .collect();
    cluster.assert_task_containers(&kept).await;
}

/// Runs `orchctl -o json ARGS`, which must exit with `code`; returns its JSON.
async fn json_exiting(cluster: &Procs, code: i32, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let ran = cluster.orchctl_within(DEADLINE, &all).await;
    assert_eq!(ran.code, Some(code), "{ran:#?}");
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {ran:#?}"))
}

/// Each node's (name, verdict, filter) in a plan's JSON.
fn verdicts(plan: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = plan["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {plan}"))
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("verdict"), s("filter"))
        })
        .collect();
    v.sort();
    v
}

fn triples(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    v.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_names_the_refusing_filter_of_every_node_and_changes_nothing() {
    let cluster = Procs::start(Options::default(), 2).await;
    let image = cluster.busybox().await;
    cluster.orchctl_json(&["node", "drain", "w0"]).await;
    cluster
        .wait_for("w0 drained", |v| {
            v.node(&cluster.node_id(0))
                .is_some_and(|n| n.draining)
                .then_some(())
        })
        .await;
    // Opened after the drain: from here on, nothing but the test's own
    // task below may show up on it.
    let mut events = cluster.watch().await;

    // w0 is drained; w1 has no zone label.
    let plan = json_exiting(
        &cluster,
        1,
        &["run", "--dry-run", "--constraint", "zone=a", &image],
    )
    .await;
    assert_eq!(
        verdicts(&plan),
        triples(&[
            ("w0", "refused", "NodeReady"),
            ("w1", "refused", "NodeSelector")
        ]),
        "{plan}"
    );
    let reasons: Vec<&str> = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"draining"), "{plan}");
    assert!(
        reasons.contains(&"node selector not matched: zone=a (the node has no zone label)"),
        "{plan}"
    );
    assert_eq!(plan["chosen_node_id"], Value::from(""), "{plan}");
    // The refusal in one line, after the plan.
    let ran = cluster
        .orchctl_within(
            DEADLINE,
            &["run", "--dry-run", "--constraint", "zone=a", &image],
        )
        .await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr
            .starts_with("orchctl: no node can take the task: no node fits: "),
        "{ran:#?}"
    );

    // w1 lacks memory (2Gi, 3Gi asked).
    let plan = json_exiting(&cluster, 1, &["run", "--dry-run", "-m", "3Gi", &image]).await;
    assert_eq!(
        verdicts(&plan),
        triples(&[("w0", "refused", "NodeReady"), ("w1", "refused", "Fits")]),
        "{plan}"
    );

    // A task that fits: w1 is chosen, with its score, and the table says so.
    let plan = json_exiting(&cluster, 0, &["run", "--dry-run", "-m", "64Mi", &image]).await;
    assert_eq!(
        verdicts(&plan),
        triples(&[("w0", "refused", "NodeReady"), ("w1", "chosen", "")]),
        "{plan}"
    );
    assert_eq!(plan["chosen_node_id"], Value::from(cluster.node_id(1)));
    let table = cluster
        .orchctl_within(DEADLINE, &["run", "--dry-run", "-m", "64Mi", &image])
        .await;
    let out = table.ok();
    assert!(out.starts_with("NODE  "), "{out}");
    assert!(out.contains("would run on w1"), "{out}");

    // A service's dry run: three replicas, all on w1, nothing created.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("web.yaml");
    std::fs::write(
        &file,
        format!(
            "name: web\nmode: replicated\nreplicas: 3\ntask:\n  image: {image}\n  command: [sleep, '600']\n  memory: 64Mi\n"
        ),
    )
    .expect("write the manifest");
    let file = file.to_str().expect("a UTF-8 path");
    let plans = json_exiting(&cluster, 0, &["apply", "--dry-run", "-f", file]).await;
    let web = &plans[0];
    assert_eq!(web["service"], Value::from("web"), "{plans}");
    assert_eq!(web["change"], Value::from("created"), "{plans}");
    let slots = web["slots"].as_array().expect("slots");
    assert_eq!(slots.len(), 3, "{plans}");
    for s in slots {
        assert_eq!(s["placement"]["chosen_node_name"], Value::from("w1"), "{s}");
    }
    let table = cluster
        .orchctl_within(DEADLINE, &["apply", "--dry-run", "-f", file])
        .await;
    let out = table.ok();
    assert!(
        out.starts_with("service web would be created, creating 3 tasks"),
        "{out}"
    );

    // Nothing was stored: no task, no service, no event.
    let mut client = cluster.client().await;
    let view = Procs::view(&mut client).await.expect("view");
    assert!(view.tasks.is_empty(), "{:?}", view.tasks);
    let services = cluster.services().await;
    assert!(services.is_empty(), "{services:?}");
    // The first event after the dry runs is this task's: they emitted none.
    let real = cluster
        .orchctl_json(&["run", "-m", "64Mi", &image, "sleep", "600"])
        .await;
    let first = tokio::time::timeout(DEADLINE, events.message())
        .await
        .expect("an event in time")
        .expect("the stream")
        .expect("an event");
    match first.kind {
        Some(event::Kind::Task(t)) => assert_eq!(Value::from(t.task_id), real["id"]),
        other => panic!("the first event is not the real task's: {other:?}"),
    }
    let stopped = cluster
        .orchctl_json(&["stop", real["id"].as_str().expect("id")])
        .await;
    // The stopped container is kept for its output, and it is the only one.
    let text = |v: &Value| v.as_str().expect("a string").to_string();
    cluster
        .assert_task_containers(&[(text(&real["id"]), 1, text(&stopped["node_id"]))])
        .await;
}
