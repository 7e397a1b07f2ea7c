//! End-to-end tests of the `orchctl` binary as a person or a script runs it:
//! the real executable, against a real manager and worker (the cluster
//! harness) with the real Docker engine. They pin the orchctl contract (the
//! README's command table): what goes to stdout, what goes to stderr, exit codes, and the
//! JSON field names.
//!
//! Every child runs with `ORCH_MANAGER` and `ORCH_LOG` removed from its
//! environment, so the tests do not depend on the shell they run in; the one
//! test of `ORCH_MANAGER` sets it on purpose.

use std::process::Stdio;

use bollard::query_parameters::InspectContainerOptions;
use orch::v1::TaskState;
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_integration_tests::images;
use serde_json::Value;
use tokio::process::Command;
use uuid::Uuid;

/// What one run of orchctl did.
#[derive(Debug)]
struct Run {
    /// The exit code (None if a signal ended it).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts a zero exit, and returns stdout.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "orchctl failed: {self:?}");
        &self.stdout
    }

    /// Asserts a zero exit and parses stdout as JSON.
    #[track_caller]
    fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
    }

    /// Asserts the shape of every refusal: a non-zero exit, nothing on
    /// stdout, and exactly one line on stderr that starts with `orchctl: `.
    /// Returns that line.
    #[track_caller]
    fn refused(&self) -> &str {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit: {self:?}"
        );
        assert_eq!(self.stdout, "", "nothing on stdout when refused: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr: {self:?}");
        assert!(
            lines[0].starts_with("orchctl: "),
            "stderr starts with `orchctl: `: {self:?}"
        );
        lines[0]
    }
}

/// Runs orchctl with `args` and `env`, and no inherited orch variables.
async fn orchctl_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchctl"));
    let no_config = std::env::temp_dir().join("orch-tests-no-config.toml");
    cmd.args(args)
        .env("ORCH_CONFIG", no_config)
        .env_remove("ORCH_MANAGER")
        .env_remove("ORCH_TOKEN")
        .env_remove("ORCH_CA")
        .env_remove("ORCH_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("orchctl {args:?} did not finish within {DEADLINE:?}"))
        .expect("spawn orchctl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// Runs `orchctl --manager <cluster> args...` with the cluster's CA and
/// admin token.
async fn orchctl(cluster: &Cluster, args: &[&str]) -> Run {
    let url = cluster.url();
    let mut all = vec!["--manager", url.as_str()];
    all.extend_from_slice(args);
    let ca = cluster.manager_dir().join("ca.crt").display().to_string();
    let token = cluster.access().admin_token.clone().unwrap_or_default();
    orchctl_env(&all, &[("ORCH_CA", &ca), ("ORCH_TOKEN", &token)]).await
}

async fn busybox(cluster: &Cluster) -> String {
    images::busybox(&cluster.docker)
        .await
        .expect("build test image")
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The task ids in a `ps -o json` answer.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {list}"))
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect()
}

#[track_caller]
fn assert_fields(object: &Value, fields: &[&str]) {
    let object = object
        .as_object()
        .unwrap_or_else(|| panic!("a JSON object: {object}"));
    for field in fields {
        assert!(object.contains_key(*field), "no {field:?} in {object:?}");
    }
}

const TASK_FIELDS: &[&str] = &[
    "id",
    "name",
    "image",
    "state",
    "desired_state",
    "node_id",
    "container_id",
    "attempt",
    "restart_count",
    "exit_code",
    "message",
    "created_at",
];

const NODE_FIELDS: &[&str] = &[
    "id",
    "name",
    "address",
    "state",
    "capacity",
    "allocated",
    "usage",
    "last_heartbeat",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ps_status_nodes_and_stop_a_task() {
    let cluster = Cluster::builder().start().await;
    let image = busybox(&cluster).await;
    let port = free_port().to_string();
    let publish = format!("{port}:80");

    let run = orchctl(
        &cluster,
        &[
            "run",
            "--name",
            "web",
            "--cpus",
            "0.5",
            "--memory",
            "64Mi",
            "-e",
            "GREETING=hi",
            "-l",
            "team=core",
            "-p",
            &publish,
            "--stop-timeout",
            "1s",
            &image,
            "sleep",
            "300",
        ],
    )
    .await;
    let out = run.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "run prints one line, the id: {out:?}");
    let id = Uuid::parse_str(lines[0])
        .unwrap_or_else(|_| panic!("not a UUID: {:?}", lines[0]))
        .to_string();
    let running = cluster.wait_state(&id, TaskState::Running).await;

    // The flags reached the container.
    let c = cluster
        .docker
        .inspect_container(&running.container_id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let host = c.host_config.expect("host config");
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let bindings = host.port_bindings.expect("port bindings");
    let published: Vec<String> = bindings
        .get("80/tcp")
        .cloned()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| b.host_port)
        .collect();
    assert_eq!(published, vec![port.clone()], "{bindings:?}");
    let config = c.config.expect("config");
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"GREETING=hi".to_string()),
        "env"
    );
    assert_eq!(
        config
            .labels
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("core")
    );

    // ps -o json: an array holding the task with every contract field.
    let list = orchctl(&cluster, &["ps", "-o", "json"]).await.json();
    assert_eq!(ids(&list), vec![id.as_str()]);
    let task = &list[0];
    assert_fields(task, TASK_FIELDS);
    assert_eq!(task["name"], "web");
    assert_eq!(task["image"], image.as_str());
    assert_eq!(task["state"], "running");
    assert_eq!(task["desired_state"], "running");
    assert_eq!(task["node_id"], running.node_id.as_str());
    assert_eq!(task["container_id"], running.container_id.as_str());
    assert_eq!(task["attempt"], 1);
    assert_eq!(task["restart_count"], 0);
    assert_eq!(task["exit_code"], Value::Null);
    assert!(
        task["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "created_at is an RFC 3339 time: {}",
        task["created_at"]
    );

    // status by name (JSON), and by an id prefix (table).
    let by_name = orchctl(&cluster, &["status", "web", "-o", "json"])
        .await
        .json();
    assert_fields(&by_name, TASK_FIELDS);
    assert_eq!(by_name["id"], id.as_str());
    assert_eq!(by_name["state"], "running");
    let by_prefix = orchctl(&cluster, &["status", &id[..24]]).await;
    let table = by_prefix.ok();
    let state_line = table
        .lines()
        .find(|l| l.starts_with("state:"))
        .unwrap_or_else(|| panic!("no state line: {table}"));
    assert!(state_line.contains("running"), "{table}");
    assert!(table.contains(&id), "{table}");

    // nodes -o json: the one node is ready, and holds the task's reservation.
    let nodes = orchctl(&cluster, &["nodes", "-o", "json"]).await.json();
    let nodes = nodes.as_array().expect("a JSON array");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    assert_fields(node, NODE_FIELDS);
    assert_eq!(node["id"], running.node_id.as_str());
    assert_eq!(node["name"], "worker-0");
    assert_eq!(node["state"], "ready");
    assert_eq!(node["allocated"]["milli_cpus"], 500);
    assert_eq!(node["allocated"]["memory_bytes"], 64 << 20);
    assert!(
        node["capacity"]["milli_cpus"].as_i64() >= Some(500),
        "{node}"
    );
    assert!(node["last_heartbeat"].is_string(), "{node}");

    // stop by name.
    let stop = orchctl(&cluster, &["stop", "web"]).await;
    assert_eq!(stop.ok().trim(), id, "stop prints the id");
    let stopped = cluster.wait_state(&id, TaskState::Stopped).await;
    assert_eq!(stopped.desired_state(), orch::v1::DesiredState::Stopped);

    let listed = orchctl(&cluster, &["ps", "--state", "stopped", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&listed), vec![id.as_str()]);
    assert_eq!(listed[0]["state"], "stopped");
    assert_eq!(listed[0]["desired_state"], "stopped");
    let running_now = orchctl(&cluster, &["ps", "--state", "running", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&running_now), Vec::<&str>::new());

    // A stopped task no longer reserves anything.
    let nodes = orchctl(&cluster, &["nodes", "-o", "json"]).await.json();
    assert_eq!(nodes[0]["allocated"]["milli_cpus"], 0, "{nodes}");
    assert_eq!(nodes[0]["allocated"]["memory_bytes"], 0, "{nodes}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_shows_as_failed_with_its_code() {
    let cluster = Cluster::builder().start().await;
    let image = busybox(&cluster).await;
    let run = orchctl(&cluster, &["run", &image, "sh", "-c", "exit 3"]).await;
    let id = run.ok().trim().to_string();
    cluster.wait_state(&id, TaskState::Failed).await;

    let task = orchctl(&cluster, &["status", &id, "-o", "json"])
        .await
        .json();
    assert_fields(&task, TASK_FIELDS);
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["state"], "failed");
    assert_eq!(task["exit_code"], 3);
    let table = orchctl(&cluster, &["status", &id]).await;
    assert!(table.ok().contains("failed (3)"), "{table:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_in_one_line_and_nothing_is_stored() {
    let cluster = Cluster::builder().start().await;
    let unknown = Uuid::new_v4().to_string();
    // (arguments, what the one line must mention)
    let cases: &[(&[&str], &str)] = &[
        (&["run", ""], "spec.image"),
        (&["run", "--memory", "1Mi", "img"], "memory_bytes"),
        (&["run", "--memory", "lots", "img"], "lots"),
        (&["run", "-p", "99999:80", "img"], "99999"),
        (&["run", "--restart", "sometimes", "img"], "sometimes"),
        (&["stop", &unknown], "not found"),
        (&["status", "nope"], "nope"),
        (&["-o", "yaml", "ps"], "yaml"),
    ];
    for (args, mentions) in cases {
        let run = orchctl(&cluster, args).await;
        let line = run.refused();
        assert!(
            line.contains(mentions),
            "{args:?}: {line:?} should mention {mentions:?}"
        );
    }
    let list = orchctl(&cluster, &["ps", "-o", "json"]).await.json();
    assert_eq!(list, Value::Array(Vec::new()), "nothing was stored");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_manager_is_named_in_one_line() {
    // Port 1 (tcpmux) is privileged and, on our machines, closed.
    let run = orchctl_env(
        &["--insecure", "--manager", "http://127.0.0.1:1", "ps"],
        &[],
    )
    .await;
    let line = run.stderr.lines().last().unwrap_or_default().to_string();
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(
        line.contains("cannot reach the manager at http://127.0.0.1:1"),
        "{line:?}"
    );
    // Without --insecure, plaintext is refused before anything is sent.
    let plain = orchctl_env(&["--manager", "http://127.0.0.1:1", "ps"], &[]).await;
    let line = plain.refused();
    assert!(
        line.contains("is plaintext") && line.contains("--insecure"),
        "{line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_client_of_a_tls_manager_is_told_to_give_its_https_url() {
    let cluster = Cluster::builder().workers(0).start().await;
    let url = cluster.url();
    let plain = url.replacen("https://", "http://", 1);
    assert_ne!(plain, url, "the manager serves TLS: {url}");
    let run = orchctl_env(&["--insecure", "--manager", &plain, "ps"], &[]).await;
    assert_ne!(run.code, Some(0), "{run:?}");
    // After the warning that --insecure prints.
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("connection to the manager broke") && line.contains("https:// URL"),
        "{line:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_says_so_and_exits_non_zero_when_the_manager_is_gone_for_good() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // No worker: the task stays pending, which is event enough.
    let mut cluster = Cluster::builder().workers(0).start().await;
    let url = cluster.url();
    let ca = cluster.manager_dir().join("ca.crt").display().to_string();
    let token = cluster.access().admin_token.clone().unwrap_or_default();
    let no_config = std::env::temp_dir().join("orch-tests-no-config.toml");
    let mut events = Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args(["--manager", &url, "--ca", &ca, "--token", &token])
        // From the first event: the task's is printed however late
        // orchctl subscribes.
        .args(["events", "--since", "0", "--reconnect-for", "2s"])
        .env("ORCH_CONFIG", no_config)
        .env_remove("ORCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn orchctl events");
    // Once it prints the event of a task, it is following.
    let mut lines = BufReader::new(events.stdout.take().expect("stdout")).lines();
    let task = cluster
        .submit(orch::v1::TaskSpec {
            name: "watched".into(),
            image: "never-pulled".into(),
            ..Default::default()
        })
        .await;
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line.contains(&task.id) && line.contains("(watched)") {
                return;
            }
        }
        panic!("events ended before the task's event");
    })
    .await
    .expect("the task's event in time");
    cluster.stop_manager().await;
    let out = tokio::time::timeout(DEADLINE, events.wait_with_output())
        .await
        .expect("events ends once the manager is gone")
        .expect("orchctl events");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    // It said it lost the manager and tried again, then gave up, saying
    // where to resume.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("orchctl: lost the manager at {url}"))
            && lines[0].contains("reconnecting from event"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "orchctl: the manager at {url} is gone: no answer for 2s"
        )) && lines[1].contains("resume with `orchctl events --since"),
        "{stderr}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_scripts_name_the_commands_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _orchctl"),
        ("zsh", "#compdef orchctl"),
        ("fish", "complete -c orchctl"),
    ] {
        let run = orchctl_env(&["completion", shell], &[]).await;
        let script = run.ok();
        assert!(script.contains(marker), "{shell}: {script:.200}");
        for command in ["join-token", "service", "apply"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let bad = orchctl_env(&["completion", "tcsh"], &[]).await;
    assert!(
        bad.refused().contains("(see orchctl completion --help)"),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_exits_zero() {
    let top = orchctl_env(&["--help"], &[]).await;
    let text = top.ok();
    for command in ["run", "stop", "status", "nodes"] {
        assert!(text.contains(command), "{command} in {text}");
    }
    let run = orchctl_env(&["run", "--help"], &[]).await;
    let text = run.ok();
    for flag in ["--memory", "--cpus", "--restart", "--publish"] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orch_manager_in_the_environment_picks_the_manager() {
    let cluster = Cluster::builder().start().await;
    let url = cluster.url();
    let ca = cluster.manager_dir().join("ca.crt").display().to_string();
    let token = cluster.access().admin_token.clone().unwrap_or_default();
    let env = [
        ("ORCH_MANAGER", url.as_str()),
        ("ORCH_CA", ca.as_str()),
        ("ORCH_TOKEN", token.as_str()),
    ];
    let run = orchctl_env(&["nodes", "-o", "json"], &env).await;
    let nodes = run.json();
    let listed: Vec<&str> = nodes
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    // This cluster's node, not whatever may listen on the default address.
    assert_eq!(listed, cluster.node_ids());
    let table = orchctl_env(&["nodes"], &env).await;
    let table = table.ok();
    assert!(
        table.contains("worker-0") && table.contains("ready"),
        "{table}"
    );
    cluster.shutdown().await;
}
