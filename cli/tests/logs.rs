//! `orchctl logs` with real processes and real Docker: a task's whole
//! output in order after it exited, `-f` ending with the task's exit code,
//! an earlier attempt's output after a restart, log rotation capping what a
//! noisy container keeps on disk, and a follow that ends, naming the node,
//! when its worker is killed.

mod support;

use std::time::Duration;

use orch::v1::{RestartCondition, RestartPolicy, TaskSpec, TaskState};
use support::{DEADLINE, Options, Procs, docker_cli, spec};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A spec of `sh -c SCRIPT`, named `name`.
fn script(image: &str, name: &str, script: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        ..spec(image, &["sh", "-c", script])
    }
}

/// `orchctl logs ARGS` started in the background, its stdout piped.
fn spawn_logs(cluster: &Procs, args: &[&str]) -> Child {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    cluster
        .orchctl_command(&all)
        .spawn()
        .expect("spawn orchctl logs")
}

/// The numbers 1 to `n`, a line each.
fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_task_that_exited_3_is_shown_in_order_and_a_follow_ends_with_code_3() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    // It prints 10,000 lines, then waits (for the test to have followed
    // them all while it runs) until /go exists, then exits 3.
    let task = cluster
        .submit(script(
            &image,
            "counter",
            "seq 1 10000; while [ ! -e /go ]; do sleep 0.1; done; exit 3",
        ))
        .await;
    let running = cluster
        .wait_task(&task.id, |t| t.state() == TaskState::Running)
        .await;

    let mut follow = spawn_logs(&cluster, &["-f", "counter"]);
    let stdout = follow.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut followed = Vec::new();
    let read = async {
        while followed.len() < 10_000 {
            match lines.next_line().await.expect("read orchctl's stdout") {
                Some(line) => followed.push(line),
                None => break,
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("10,000 lines followed within the deadline");
    assert_eq!(followed, numbered(10_000), "the followed lines, in order");
    // Still running: the follow goes on until the attempt ends.
    assert!(
        follow.try_wait().expect("poll orchctl").is_none(),
        "orchctl logs -f ended before the task did"
    );
    docker_cli(&["exec", &running.container_id, "touch", "/go"]).await;
    let rest = async {
        let mut more = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read orchctl's stdout") {
            more.push(line);
        }
        (
            more,
            follow.wait_with_output().await.expect("orchctl logs -f"),
        )
    };
    let (more, ended) = tokio::time::timeout(DEADLINE, rest)
        .await
        .expect("orchctl logs -f ends when the task does");
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(
        ended.status.code(),
        Some(3),
        "the task's exit code: {stderr}"
    );
    assert_eq!(
        stderr.trim_end(),
        "orchctl: task counter exited with code 3"
    );
    assert!(more.is_empty(), "nothing after the last line: {more:?}");
    cluster
        .wait_task(&task.id, |t| t.state() == TaskState::Failed)
        .await;

    // After the exit: every line, in order, and exit 0 (no follow).
    let all = cluster.orchctl_within(DEADLINE, &["logs", &task.id]).await;
    let printed: Vec<String> = all.ok().lines().map(str::to_owned).collect();
    assert_eq!(printed.len(), 10_000);
    assert_eq!(printed, numbered(10_000));
    // The last lines only, and with times.
    let tail = cluster
        .orchctl_within(DEADLINE, &["logs", "--tail", "2", "-t", "counter"])
        .await;
    let tail: Vec<&str> = tail.ok().lines().collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    for (line, n) in tail.iter().zip(["9999", "10000"]) {
        let (time, text) = line.split_once(' ').expect("a time, then the line");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
        assert_eq!(text, n);
    }
    // A follow of an attempt that has ended prints it and its end at once.
    let again = cluster
        .orchctl_within(DEADLINE, &["logs", "-f", "--tail", "1", "counter"])
        .await;
    assert_eq!(again.code, Some(3), "{again:#?}");
    assert_eq!(again.stdout, "10000\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tasks_first_attempt_keeps_its_own_output() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    // Each attempt says which container it is (its host name), then fails.
    let task = cluster
        .submit(TaskSpec {
            restart: Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                max_restarts: 1,
            }),
            ..script(&image, "crasher", "echo \"attempt in $HOSTNAME\"; exit 7")
        })
        .await;
    let last = cluster
        .wait_task(&task.id, |t| {
            t.attempt == 2 && t.state() == TaskState::Failed
        })
        .await;
    let of = |attempt: &'static str| {
        let cluster = &cluster;
        let id = task.id.clone();
        async move {
            let ran = cluster
                .orchctl_within(DEADLINE, &["logs", &id, "--attempt", attempt])
                .await;
            ran.ok().to_owned()
        }
    };
    let (first, second) = (of("1").await, of("2").await);
    let second_host = &last.container_id[..12];
    assert_eq!(second, format!("attempt in {second_host}\n"));
    assert!(first.starts_with("attempt in "), "{first}");
    assert_ne!(first, second, "each attempt's own output");
    // Without --attempt: the current (last) one.
    let current = cluster.orchctl_within(DEADLINE, &["logs", &task.id]).await;
    assert_eq!(current.ok(), second);
    // A follow of attempt 1 ends with its own exit.
    let followed = cluster
        .orchctl_within(DEADLINE, &["logs", "-f", "--attempt", "1", &task.id])
        .await;
    assert_eq!(followed.code, Some(7), "{followed:#?}");
    assert_eq!(followed.stdout, first);
    // An attempt that never was is refused in one line.
    let refused = cluster
        .orchctl_within(DEADLINE, &["logs", &task.id, "--attempt", "3"])
        .await;
    assert!(
        refused.refused().contains("has had 2 attempts, not 3"),
        "{refused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_caps_what_a_noisy_container_keeps() {
    const MIB: u64 = 1 << 20;
    let options = Options {
        worker_args: ["--log-max-size", "1Mi", "--log-max-files", "2"]
            .map(str::to_owned)
            .to_vec(),
        ..Options::default()
    };
    let cluster = Procs::start(options, 1).await;
    let image = cluster.busybox().await;
    // About 20 MB of output (and more in the engine's JSON files), then it
    // completes.
    let task = cluster
        .submit(script(
            &image,
            "noisy",
            "seq 1 200000 | sed 's/$/ the quick brown fox jumps over the lazy dog again and again and again/'",
        ))
        .await;
    let done = cluster
        .wait_task(&task.id, |t| t.state() == TaskState::Completed)
        .await;

    // The engine was told to rotate...
    let config = docker_cli(&[
        "inspect",
        "--format",
        "{{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}} {{index .HostConfig.LogConfig.Config \"max-file\"}}",
        &done.container_id,
    ])
    .await;
    assert_eq!(config, format!("json-file {MIB} 2"));
    // ... and the files on disk stay under the cap: 2 files of 1 MiB.
    let log_path = docker_cli(&["inspect", "--format", "{{.LogPath}}", &done.container_id]).await;
    let dir = std::path::Path::new(&log_path).parent().expect("log dir");
    let mut on_disk = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("read the container's directory") {
        let entry = entry.expect("entry");
        if entry.file_name().to_string_lossy().contains("-json.log") {
            files += 1;
            on_disk += entry.metadata().expect("metadata").len();
        }
    }
    assert!(
        files >= 2,
        "rotated at least once: {files} files in {}",
        dir.display()
    );
    assert!(
        on_disk <= 2 * MIB + 64 * 1024,
        "{on_disk} bytes of logs on disk, over the cap of 2 MiB"
    );
    // orchctl logs shows what is kept: the newest lines, the last one last.
    let kept = cluster.orchctl_within(DEADLINE, &["logs", "noisy"]).await;
    let kept = kept.ok();
    let last = kept.lines().last().expect("some output kept");
    assert!(last.starts_with("200000 the quick"), "{last}");
    let first = kept.lines().next().expect("a first line");
    let number: u64 = first
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a numbered line");
    assert!(number > 1, "the oldest lines were rotated away");
    assert!((kept.len() as u64) < 2 * MIB, "{} bytes shown", kept.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_ends_naming_the_node_when_its_worker_is_killed() {
    let mut cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let task = cluster
        .submit(script(
            &image,
            "ticker",
            "while true; do echo tick; sleep 0.2; done",
        ))
        .await;
    cluster
        .wait_task(&task.id, |t| t.state() == TaskState::Running)
        .await;
    let node = cluster.node_id(0);

    let mut follow = spawn_logs(&cluster, &["-f", "ticker"]);
    let stdout = follow.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a first line within the deadline")
        .expect("read");
    assert_eq!(first.as_deref(), Some("tick"));

    cluster.kill_worker(0).await;
    // The liveness deadline is 3 heartbeats of 500 ms; a broken connection
    // is noticed sooner. Room for a loaded machine on top.
    let limit = Duration::from_millis(1500) + Duration::from_secs(10);
    let drain = async {
        while let Ok(Some(_)) = lines.next_line().await {}
        follow.wait_with_output().await
    };
    let ended = tokio::time::timeout(limit, drain)
        .await
        .expect("orchctl logs -f ends once the worker is gone")
        .expect("orchctl logs -f");
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(
        matches!(ended.status.code(), Some(c) if c != 0),
        "a non-zero exit: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("node w0 (id {node})")),
        "names the node: {stderr}"
    );

    // Asked now, a task whose node is down answers at once, saying so.
    let started = std::time::Instant::now();
    let down = cluster.orchctl_within(DEADLINE, &["logs", &task.id]).await;
    let line = down.refused();
    assert!(
        line.contains(&format!("node w0 (id {node}) is down")),
        "{line}"
    );
    assert!(line.contains("last heartbeat was"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10), "at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_started_with_the_task_misses_nothing() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let task = cluster
        .submit(script(&image, "quick", "echo early; echo oops >&2; exit 0"))
        .await;
    // At once, while the task is still being scheduled or started.
    let ran = cluster
        .orchctl_within(DEADLINE, &["logs", "-f", &task.id])
        .await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert_eq!(ran.stdout, "early\n");
    assert_eq!(
        ran.stderr, "oops\norchctl: task quick exited with code 0\n",
        "stderr lines to stderr, then the end"
    );
    let only = cluster
        .orchctl_within(DEADLINE, &["logs", "--stderr", &task.id])
        .await;
    assert_eq!((only.code, only.stdout.as_str()), (Some(0), ""));
    assert_eq!(only.stderr, "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_follow_prefixes_each_replica_and_goes_on_across_restarts() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    // Each attempt says which container it is, then crashes; the replicated
    // service's default policy restarts it.
    let created = cluster
        .orchctl_within(
            DEADLINE,
            &[
                "service",
                "create",
                "web",
                "--replicas",
                "2",
                "--detach",
                &image,
                "sh",
                "-c",
                "echo \"up in $HOSTNAME\"; sleep 1; exit 1",
            ],
        )
        .await;
    created.ok();
    let mut follow = spawn_logs(&cluster, &["-f", "web"]);
    let stdout = follow.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Two attempts of each replica, each line after its NAME.SLOT.
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let read = async {
        while seen.values().filter(|hosts| hosts.len() >= 2).count() < 2 {
            let line = lines
                .next_line()
                .await
                .expect("read orchctl's stdout")
                .expect("the follow of a service goes on");
            let (name, text) = line.split_once(" | ").expect("NAME.SLOT | line");
            let host = text.strip_prefix("up in ").expect("the task's line");
            let hosts = seen.entry(name.to_owned()).or_default();
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("two attempts of each replica followed: {seen:?}"));
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["web.1", "web.2"],
        "{seen:?}"
    );
    // Still following: only Ctrl-C (here, a kill) ends it.
    assert!(follow.try_wait().expect("poll").is_none());
    follow.kill().await.expect("kill orchctl logs -f");
}
