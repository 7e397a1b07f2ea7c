//! `DockerRuntime` against the real Docker engine, with the locally built
//! busybox image. Each test uses its own cluster and node ids, so tests never
//! see each other's containers, and removes what it made even when it fails.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use orch::v1::{LogStream, PortMapping, Protocol, TaskSpec};
use orch_integration_tests::images;
use orch_worker::runtime::docker::{DockerRuntime, container_name};
use orch_worker::runtime::{Exit, LogItem, LogsOptions, Runtime, RuntimeError, StartRequest};
use uuid::Uuid;

/// How long anything the engine does in these tests may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A runtime and the ids that scope one test's containers.
struct Fixture {
    runtime: DockerRuntime,
    image: String,
    cluster_id: String,
    node_id: Uuid,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new() -> Self {
        let runtime = DockerRuntime::connect().await.expect("connect to Docker");
        let image = images::busybox(runtime.client())
            .await
            .expect("build the busybox image");
        let cluster_id = format!("test-{}", Uuid::new_v4());
        Self {
            runtime,
            image,
            _cleanup: Cleanup {
                cluster_id: cluster_id.clone(),
            },
            cluster_id,
            node_id: Uuid::new_v4(),
        }
    }

    fn docker(&self) -> &Docker {
        self.runtime.client()
    }

    /// A request for a new task on this fixture's node running `command`.
    fn request(&self, command: &[&str]) -> StartRequest {
        StartRequest {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            task_id: Uuid::new_v4(),
            attempt: 1,
            spec: TaskSpec {
                image: self.image.clone(),
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
        }
    }

    /// Asserts that a stopped container is kept, exited (for its output),
    /// then removes it and asserts that it is gone.
    async fn assert_stopped_then_remove(&self, container: &str) {
        let inspect = self
            .docker()
            .inspect_container(container, None)
            .await
            .expect("a stopped container is kept");
        let state = inspect.state.expect("state");
        assert_eq!(state.running, Some(false), "{container} stopped: {state:?}");
        self.runtime.remove(container).await.expect("remove");
        self.assert_gone(container).await;
    }

    /// Waits for the container to exist no more.
    async fn assert_gone(&self, container: &str) {
        let err = self
            .docker()
            .inspect_container(container, None)
            .await
            .expect_err("container should be gone");
        assert!(
            matches!(
                err,
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                }
            ),
            "inspect {container}: {err}"
        );
    }
}

/// Removes every container of a cluster when a test ends, passed or failed.
/// Drop cannot await, so it runs the removal on a runtime of its own thread.
struct Cleanup {
    cluster_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let cluster_id = self.cluster_id.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(remove_cluster_containers(&cluster_id));
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of cluster {} panicked", self.cluster_id);
        }
    }
}

async fn remove_cluster_containers(cluster_id: &str) {
    let Ok(docker) = Docker::connect_with_local_defaults() else {
        return;
    };
    let Ok(docker) = docker.negotiate_version().await else {
        return;
    };
    let filters = HashMap::from([(
        "label",
        vec![format!("{}={cluster_id}", orch::labels::CLUSTER)],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(containers) = docker.list_containers(Some(options)).await else {
        return;
    };
    for id in containers.into_iter().filter_map(|c| c.id) {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(&id, Some(options)).await;
    }
}

/// A port nobody listens on now, from the kernel's ephemeral range.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Waits (with a deadline) until `exits` yields the exit of `container_id`.
async fn next_exit_of(
    exits: &mut (impl futures::Stream<Item = Exit> + Unpin),
    container_id: &str,
) -> Exit {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let exit = exits.next().await.expect("exit stream ended");
            if exit.container_id == container_id {
                return exit;
            }
        }
    })
    .await
    .expect("no exit within the deadline")
}

#[tokio::test]
async fn start_applies_the_spec_and_stop_removes_the_container() {
    let f = Fixture::new().await;
    let host_port = free_port();
    let mut req = f.request(&["sleep", "60"]);
    req.spec.env = HashMap::from([("GREETING".to_owned(), "hello world".to_owned())]);
    req.spec.memory_bytes = Some(64 * 1024 * 1024);
    req.spec.milli_cpus = Some(500);
    req.spec.labels = HashMap::from([("team".to_owned(), "infra".to_owned())]);
    req.spec.ports = vec![PortMapping {
        host_port: u32::from(host_port),
        container_port: 8080,
        protocol: Protocol::Tcp.into(),
    }];

    let id = f.runtime.start(&req).await.expect("start");

    let inspect = f
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/{}", container_name(req.task_id, 1)).as_str())
    );
    assert_eq!(inspect.state.as_ref().and_then(|s| s.running), Some(true));
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let binding = host
        .port_bindings
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .and_then(|b| b.into_iter().next())
        .expect("a binding for 8080/tcp");
    assert_eq!(binding.host_port, Some(host_port.to_string()));
    assert_eq!(binding.host_ip.as_deref(), Some("0.0.0.0"));
    let config = inspect.config.expect("config");
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"GREETING=hello world".to_owned())
    );
    assert_eq!(config.cmd, Some(vec!["sleep".to_owned(), "60".to_owned()]));
    assert!(
        config
            .exposed_ports
            .unwrap_or_default()
            .contains(&"8080/tcp".to_owned())
    );
    let labels = config.labels.unwrap_or_default();
    let expected = [
        (orch::labels::MANAGED, "true".to_owned()),
        (orch::labels::CLUSTER, f.cluster_id.clone()),
        (orch::labels::TASK_ID, req.task_id.to_string()),
        (orch::labels::NODE_ID, f.node_id.to_string()),
        (orch::labels::ATTEMPT, "1".to_owned()),
        ("team", "infra".to_owned()),
    ];
    for (key, value) in expected {
        assert_eq!(labels.get(key), Some(&value), "label {key}");
    }

    f.runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    f.assert_stopped_then_remove(&id).await;
    // Stopping or removing what is gone is not an error.
    f.runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("second stop");
    f.runtime.remove(&id).await.expect("remove after stop");
}

#[tokio::test]
async fn exits_report_each_containers_exit_code() {
    let f = Fixture::new().await;
    let mut exits = f.runtime.exits(&f.cluster_id, f.node_id);

    let failing = f.request(&["sh", "-c", "exit 3"]);
    let mut succeeding = f.request(&["true"]);
    succeeding.attempt = 2;
    let failing_id = f.runtime.start(&failing).await.expect("start failing");
    let succeeding_id = f
        .runtime
        .start(&succeeding)
        .await
        .expect("start succeeding");

    let exit = next_exit_of(&mut exits, &failing_id).await;
    assert_eq!(
        exit,
        Exit {
            container_id: failing_id.clone(),
            task_id: failing.task_id,
            attempt: 1,
            exit_code: 3
        }
    );
    let exit = next_exit_of(&mut exits, &succeeding_id).await;
    assert_eq!(
        exit,
        Exit {
            container_id: succeeding_id.clone(),
            task_id: succeeding.task_id,
            attempt: 2,
            exit_code: 0
        }
    );

    f.runtime.remove(&failing_id).await.expect("remove");
    f.runtime.remove(&succeeding_id).await.expect("remove");
}

#[tokio::test]
async fn a_missing_image_fails_with_the_pull_error() {
    let f = Fixture::new().await;
    let mut req = f.request(&[]);
    req.spec.image = "orch-test/does-not-exist:1".to_owned();

    let err = tokio::time::timeout(Duration::from_secs(120), f.runtime.start(&req))
        .await
        .expect("the pull should fail, not hang")
        .expect_err("nothing can be pulled here");

    match err {
        RuntimeError::ImagePull { image, reason } => {
            assert_eq!(image, "orch-test/does-not-exist:1");
            assert!(!reason.trim().is_empty(), "the reason should say why");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    assert!(
        f.runtime
            .list(&f.cluster_id, f.node_id)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn list_finds_running_and_exited_containers_of_this_node_only() {
    let f = Fixture::new().await;
    let mut exits = f.runtime.exits(&f.cluster_id, f.node_id);

    let running = f.request(&["sleep", "60"]);
    let exited = f.request(&["sh", "-c", "exit 7"]);
    let mut elsewhere = f.request(&["sleep", "60"]);
    elsewhere.node_id = Uuid::new_v4();

    let running_id = f.runtime.start(&running).await.expect("start running");
    let exited_id = f.runtime.start(&exited).await.expect("start exited");
    let elsewhere_id = f.runtime.start(&elsewhere).await.expect("start elsewhere");
    next_exit_of(&mut exits, &exited_id).await;

    let mut found = f
        .runtime
        .list(&f.cluster_id, f.node_id)
        .await
        .expect("list");
    found.sort_by_key(|c| c.running);
    assert_eq!(found.len(), 2, "{found:?}");
    let (e, r) = (&found[0], &found[1]);
    assert_eq!(
        (e.container_id.as_str(), e.task_id, e.attempt),
        (exited_id.as_str(), exited.task_id, 1)
    );
    assert_eq!((e.running, e.exit_code), (false, Some(7)));
    assert_eq!(
        (r.container_id.as_str(), r.task_id, r.attempt),
        (running_id.as_str(), running.task_id, 1)
    );
    assert_eq!((r.running, r.exit_code), (true, None));

    let there = f
        .runtime
        .list(&f.cluster_id, elsewhere.node_id)
        .await
        .expect("list other node");
    assert_eq!(
        there
            .iter()
            .map(|c| c.container_id.as_str())
            .collect::<Vec<_>>(),
        [elsewhere_id.as_str()]
    );
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm_after_the_grace_period() {
    let f = Fixture::new().await;
    let req = f.request(&["sh", "-c", "trap '' TERM; sleep 60"]);
    let id = f.runtime.start(&req).await.expect("start");

    tokio::time::timeout(DEADLINE, f.runtime.stop(&id, Duration::from_secs(1)))
        .await
        .expect("stop should return long before the container's 60 s sleep ends")
        .expect("stop");
    f.assert_stopped_then_remove(&id).await;
}

#[tokio::test]
async fn stop_sends_sigterm_first_so_a_container_that_handles_it_ends_within_the_grace_period() {
    let f = Fixture::new().await;
    let mut exits = f.runtime.exits(&f.cluster_id, f.node_id);
    let req = f.request(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ]);
    let id = f.runtime.start(&req).await.expect("start");

    // Were SIGTERM not sent, the engine would wait out the whole grace
    // period (far longer than the deadline) before it kills.
    let grace = Duration::from_secs(300);
    tokio::time::timeout(DEADLINE, f.runtime.stop(&id, grace))
        .await
        .expect("the container should exit on SIGTERM, long before the grace period ends")
        .expect("stop");
    // It ran its own handler (exit 42) rather than dying of SIGKILL (137).
    assert_eq!(next_exit_of(&mut exits, &id).await.exit_code, 42);
    f.assert_stopped_then_remove(&id).await;
}

#[tokio::test]
async fn starting_the_same_attempt_again_replaces_the_leftover_container() {
    let f = Fixture::new().await;
    let req = f.request(&["sleep", "60"]);
    let first = f.runtime.start(&req).await.expect("first start");
    let second = f.runtime.start(&req).await.expect("second start");
    assert_ne!(first, second);

    f.assert_gone(&first).await;
    let name = container_name(req.task_id, req.attempt);
    let filters = HashMap::from([("name", vec![format!("^/{name}$")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let named = f
        .docker()
        .list_containers(Some(options))
        .await
        .expect("list by name");
    assert_eq!(
        named.into_iter().filter_map(|c| c.id).collect::<Vec<_>>(),
        [second.as_str()]
    );

    f.runtime
        .stop(&second, Duration::from_secs(1))
        .await
        .expect("stop");
}

#[tokio::test]
async fn a_host_port_in_use_fails_start_and_leaves_no_container() {
    let f = Fixture::new().await;
    let host_port = free_port();
    let ports = vec![PortMapping {
        host_port: u32::from(host_port),
        container_port: 80,
        protocol: Protocol::Tcp.into(),
    }];
    let mut holder = f.request(&["sleep", "60"]);
    holder.spec.ports = ports.clone();
    let mut loser = f.request(&["sleep", "60"]);
    loser.spec.ports = ports;

    let holder_id = f.runtime.start(&holder).await.expect("start the first");
    let err = f
        .runtime
        .start(&loser)
        .await
        .expect_err("the port is taken");

    match &err {
        RuntimeError::Start(message) => {
            assert!(
                message.contains(&host_port.to_string()),
                "message should name the port: {message}"
            );
        }
        other => panic!("expected Start, got {other:?}"),
    }
    f.assert_gone(&container_name(loser.task_id, loser.attempt))
        .await;
    let found = f
        .runtime
        .list(&f.cluster_id, f.node_id)
        .await
        .expect("list");
    assert_eq!(
        found
            .into_iter()
            .map(|c| c.container_id)
            .collect::<Vec<_>>(),
        [holder_id]
    );
}

/// A Unix-socket proxy to the engine that a test can cut and restore, to
/// break the runtime's event stream the way an engine restart would.
struct EngineProxy {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineProxy {
    /// The engine's socket, as the runtime finds it (`DOCKER_HOST` first).
    fn engine() -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".to_owned())
    }

    fn start(path: std::path::PathBuf) -> Self {
        let mut proxy = Self { path, task: None };
        proxy.restore();
        proxy
    }

    /// Listens again; connections made from now on reach the engine.
    fn restore(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind the proxy socket");
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every
            // proxied connection.
            let engine = Self::engine();
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let engine = engine.clone();
                connections.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(engine).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection and stops listening.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

#[tokio::test]
async fn exits_survive_a_broken_event_stream_and_replay_what_was_missed() {
    let f = Fixture::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proxy = EngineProxy::start(dir.path().join("docker.sock"));
    let proxied = Docker::connect_with_unix(
        &proxy.path.to_string_lossy(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("client through the proxy")
    .negotiate_version()
    .await
    .expect("negotiate through the proxy");
    let proxied = DockerRuntime::from_client(proxied);
    let mut exits = proxied.exits(&f.cluster_id, f.node_id);
    let mut direct_exits = f.runtime.exits(&f.cluster_id, f.node_id);

    // Seeing one exit through the proxy proves the subscription is up.
    let before = f.runtime.start(&f.request(&["true"])).await.expect("start");
    next_exit_of(&mut exits, &before).await;

    proxy.cut().await;
    let missed_req = f.request(&["sh", "-c", "exit 5"]);
    let missed = f
        .runtime
        .start(&missed_req)
        .await
        .expect("start during the outage");
    next_exit_of(&mut direct_exits, &missed).await;
    proxy.restore();

    let exit = next_exit_of(&mut exits, &missed).await;
    assert_eq!((exit.task_id, exit.exit_code), (missed_req.task_id, 5));
    proxy.cut().await;
}

/// What `logs` streams, read to its end within the deadline.
async fn read_logs(
    f: &Fixture,
    container: &str,
    options: &LogsOptions,
) -> Vec<Result<LogItem, RuntimeError>> {
    tokio::time::timeout(DEADLINE, f.runtime.logs(container, options).collect())
        .await
        .expect("the output read within the deadline")
}

/// The (stream, text) of each line.
fn lines(items: &[Result<LogItem, RuntimeError>]) -> Vec<(LogStream, String)> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(LogItem::Line(l)) => {
                assert!(l.time.is_some(), "every line has its time: {l:?}");
                Some((l.stream(), String::from_utf8_lossy(&l.text).into_owned()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn logs_keep_each_lines_stream_and_a_follow_ends_with_the_exit_code() {
    let f = Fixture::new().await;
    let mut exits = f.runtime.exits(&f.cluster_id, f.node_id);
    let req = f.request(&["sh", "-c", "echo one; echo two >&2; echo three; exit 5"]);
    let id = f.runtime.start(&req).await.expect("start");
    assert_eq!(next_exit_of(&mut exits, &id).await.exit_code, 5);

    // Rotated by default: json-file, 10 MiB × 3.
    let inspect = f
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    let log = inspect
        .host_config
        .and_then(|h| h.log_config)
        .expect("log config");
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let config = log.config.unwrap_or_default();
    assert_eq!(config.get("max-size").map(String::as_str), Some("10485760"));
    assert_eq!(config.get("max-file").map(String::as_str), Some("3"));

    let both = LogsOptions {
        follow: false,
        tail: 0,
        since: None,
        stdout: true,
        stderr: true,
    };
    // By the attempt's name, as the worker asks.
    let name = container_name(req.task_id, 1);
    let all = read_logs(&f, &name, &both).await;
    let want = vec![
        (LogStream::Stdout, "one".to_owned()),
        (LogStream::Stderr, "two".to_owned()),
        (LogStream::Stdout, "three".to_owned()),
    ];
    // The engine keeps each stream in order; across streams, its order.
    let mut got = lines(&all);
    got.sort_by_key(|(_, t)| {
        ["one", "two", "three"]
            .iter()
            .position(|w| *w == t.as_str())
    });
    assert_eq!(got, want);
    assert_eq!(all.len(), 3, "no exit without follow: {all:?}");

    let followed = read_logs(
        &f,
        &name,
        &LogsOptions {
            follow: true,
            ..both.clone()
        },
    )
    .await;
    assert_eq!(lines(&followed).len(), 3);
    assert_eq!(followed.last(), Some(&Ok(LogItem::Exited(5))));

    let stderr = LogsOptions {
        stdout: false,
        ..both.clone()
    };
    assert_eq!(
        lines(&read_logs(&f, &name, &stderr).await),
        [(LogStream::Stderr, "two".to_owned())]
    );
    // The engine counts the tail over both streams.
    let tail = LogsOptions {
        tail: 2,
        ..both.clone()
    };
    assert_eq!(lines(&read_logs(&f, &name, &tail).await).len(), 2);

    let missing = read_logs(&f, &container_name(Uuid::new_v4(), 1), &both).await;
    assert!(
        matches!(missing.as_slice(), [Err(RuntimeError::NotFound(_))]),
        "{missing:?}"
    );
}
