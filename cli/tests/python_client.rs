//! The Python example client (`examples/python/orch_client.py`), run as a
//! person would against real manager and worker processes: it generates its
//! gRPC code from `proto/`, reads the cluster's client configuration, checks
//! the manager against the cluster's CA and sends the token.
//!
//! It needs a Python 3.11 with the packages of
//! `examples/python/requirements.txt`: the one in `ORCH_PYTHON`, else
//! `.venv/bin/python` at the workspace's root (where `.ci/run` makes it),
//! else `python3`. Without them these tests fail, saying how to install them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orch::v1::{GetTaskRequest, TaskState};
use support::{Options, Procs, Ran};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// How long one run of the client may take: it compiles the protos first, and
/// waits for a container on a loaded machine.
const LIMIT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The Python that runs the client (see the module documentation).
fn find_python() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// The Python that runs the client, once it is known to have the client's
/// packages; fails the test, saying how to install them, if it has not.
async fn python() -> &'static Path {
    PYTHON.get_or_init(check_python).await
}

async fn check_python() -> PathBuf {
    let python = find_python();
    let out = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .stdin(Stdio::null())
        .output()
        .await;
    let problem = match out {
        Ok(out) if out.status.success() => return python,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string(),
        Err(e) => e.to_string(),
    };
    panic!(
        "{}: the Python client's packages (grpcio, grpcio-tools) are missing: {problem}\n\
         Install them once, at the workspace's root:\n    \
         python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt\n\
         (on Debian, `apt-get install python3-venv` first), or point ORCH_PYTHON at a Python that has them.",
        python.display()
    );
}

/// Runs `orch_client.py ARGS` with `config` as `ORCH_CONFIG` and none of
/// orch's or gRPC's variables from this environment.
async fn client(config: &Path, args: &[&str]) -> Ran {
    let python = python().await;
    let script = root().join("examples/python/orch_client.py");
    let out = tokio::time::timeout(
        LIMIT,
        Command::new(python)
            .arg(&script)
            .args(args)
            .env("ORCH_CONFIG", config)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GRPC_VERBOSITY")
            .env_remove("GRPC_TRACE")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("orch_client.py {args:?} did not finish within {LIMIT:?}"))
    .expect("run python");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts that the client refused as it promises: a non-zero exit, nothing
/// on stdout, one line on stderr starting `orch_client: CODE: `. Returns it.
#[track_caller]
fn refused<'a>(ran: &'a Ran, code: &str) -> &'a str {
    assert_eq!(ran.code, Some(1), "exit code: {ran:#?}");
    assert_eq!(ran.stdout, "", "nothing on stdout: {ran:#?}");
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {ran:#?}");
    let prefix = format!("orch_client: {code}: ");
    assert!(lines[0].starts_with(&prefix), "{prefix}...: {ran:#?}");
    lines[0]
}

/// The id in the client's first line, `submitted task ID`.
#[track_caller]
fn submitted(ran: &Ran) -> String {
    ran.ok()
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("submitted task "))
        .unwrap_or_else(|| panic!("no `submitted task ID` line: {ran:#?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_lists_nodes_and_runs_and_stops_tasks_with_the_ca_and_a_token() {
    python().await;
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let node = cluster.node_id(0);
    let config = cluster.config_path();

    let nodes = client(&config, &["nodes"]).await;
    let line = nodes
        .ok()
        .lines()
        .find(|l| l.starts_with(&node))
        .unwrap_or_else(|| panic!("node {node} not listed: {nodes:#?}"));
    assert!(line.contains(" w0 ") && line.contains(" ready "), "{line}");

    // A task followed on WatchEvents until it completes.
    let done = client(
        &config,
        &["run", "--until", "completed", &image, "sh", "-c", "echo hi"],
    )
    .await;
    let id = submitted(&done);
    let out = done.ok();
    for state in ["running", "completed"] {
        assert!(
            out.contains(&format!("task {id}: {state} on node {node}")),
            "{state}: {done:#?}"
        );
    }
    assert!(
        out.ends_with(&format!(
            "task {id} is completed on node {node}, exit code 0\n"
        )),
        "{done:#?}"
    );
    let mut admin = cluster.client().await;
    let task = admin
        .get_task(GetTaskRequest { id: id.clone() })
        .await
        .expect("get the task")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(
        (task.state(), task.exit_code),
        (TaskState::Completed, Some(0))
    );

    // One followed until it runs: its container really runs; then stopped.
    let started = client(
        &config,
        &["run", "--stop-grace", "1", &image, "sleep", "300"],
    )
    .await;
    let id = submitted(&started);
    assert!(
        started
            .ok()
            .ends_with(&format!("task {id} is running on node {node}\n")),
        "{started:#?}"
    );
    let task = cluster
        .wait_task(&id, |t| t.state() == TaskState::Running)
        .await;
    cluster.assert_exactly_running(&[task]).await;
    let stopped = client(&config, &["stop", &id]).await;
    assert!(
        stopped
            .ok()
            .contains(&format!("task {id} is stopped on node {node}")),
        "{stopped:#?}"
    );
    cluster
        .wait_task(&id, |t| t.state() == TaskState::Stopped)
        .await;
    cluster.assert_exactly_running(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_refuses_in_one_line_and_flags_override_the_file() {
    python().await;
    // On 0.0.0.0, so that 127.0.0.2 reaches it too: an address its
    // certificate does not name.
    let cluster = Procs::start(
        Options {
            listen_all: true,
            ..Options::default()
        },
        0,
    )
    .await;
    let config = cluster.client_config().await;
    let dir = cluster.path();

    // No token: the manager says so, and the client says it in one line.
    let no_token = dir.join("no-token.toml");
    std::fs::write(
        &no_token,
        format!(
            "manager = \"{}\"\nca = \"\"\"{}\"\"\"\n",
            config.manager, config.ca
        ),
    )
    .expect("write the configuration");
    let ran = client(&no_token, &["nodes"]).await;
    let line = refused(&ran, "UNAUTHENTICATED");
    assert!(line.contains("no client token"), "{line}");

    // A token the manager never made.
    let bogus = format!("orch_{}_{}", "0".repeat(16), "0".repeat(48));
    let ran = client(&cluster.config_path(), &["--token", &bogus, "nodes"]).await;
    let line = refused(&ran, "UNAUTHENTICATED");
    assert!(line.contains("unknown or revoked token"), "{line}");

    // Everything from flags, no file at all.
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &config.ca).expect("write the CA");
    let ca = ca.display().to_string();
    let nowhere = dir.join("no-such-config.toml");
    let port = cluster.port;
    let flags = |url: String| {
        vec![
            "--manager".to_string(),
            url,
            "--ca".to_string(),
            ca.clone(),
            "--token".to_string(),
            config.token.clone(),
        ]
    };
    let run = |mut args: Vec<String>, more: &[&str]| {
        args.extend(more.iter().map(|s| s.to_string()));
        let nowhere = nowhere.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            client(&nowhere, &args).await
        }
    };
    let ran = run(flags(format!("https://localhost:{port}")), &["nodes"]).await;
    assert!(ran.ok().starts_with("ID "), "{ran:#?}");

    // An address the certificate does not name fails the TLS check...
    let other = flags(format!("https://127.0.0.2:{port}"));
    let ran = run(other.clone(), &["--timeout", "10", "nodes"]).await;
    refused(&ran, "UNAVAILABLE");
    // ...unless the client checks it for the manager's name instead.
    let ran = run(other, &["--server-name", "orch-manager", "nodes"]).await;
    assert!(ran.ok().starts_with("ID "), "{ran:#?}");

    // Without a CA, nothing is sent.
    let ran = client(
        &nowhere,
        &[
            "--manager",
            &config.manager,
            "--token",
            &config.token,
            "nodes",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert_eq!(
        ran.stderr,
        "orch_client: no CA certificate to check the manager against: pass --ca FILE\n"
    );
}
