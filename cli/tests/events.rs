//! `orchctl events` as a person or a script runs it, against a manager
//! process: `--since` prints from the next sequence on, the filters narrow
//! what it prints, and it rides out a restart of the manager (over the same
//! data directory) with no gap and no duplicate, saying so on stderr.

mod support;

use orch::v1::{StopTaskRequest, SubmitTasksRequest};
use orch_integration_tests::workloads::pending;
use serde_json::Value;
use support::{DEADLINE, Options, Procs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Submits `n` tasks named `name` (pending: the cluster has no worker);
/// returns their ids.
async fn submit(cluster: &Procs, name: &str, n: usize) -> Vec<String> {
    let specs = pending(name, n);
    cluster
        .client()
        .await
        .submit_tasks(SubmitTasksRequest { specs })
        .await
        .expect("submit")
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// `orchctl -o json events ARGS`, running, and its stdout's lines.
fn events(cluster: &Procs, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut all = vec!["-o", "json", "events"];
    all.extend_from_slice(args);
    let mut child = cluster
        .orchctl_command(&all)
        .spawn()
        .expect("spawn orchctl events");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// Reads printed events until one of task `last`; returns them all.
async fn read_until(lines: &mut Lines<BufReader<ChildStdout>>, last: &str) -> Vec<Value> {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"));
            let done = event["task_id"] == last;
            got.push(event);
            if done {
                return;
            }
        }
        panic!("orchctl events ended before task {last}'s event: {got:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no event of task {last} in time"));
    got
}

fn sequences(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence"].as_u64().expect("a sequence"))
        .collect()
}

/// Kills `child` and returns what it wrote on stderr.
async fn stderr_of(mut child: Child) -> String {
    child.start_kill().expect("kill orchctl events");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    child.wait().await.expect("reap orchctl events");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_prints_from_the_next_sequence_and_filters_narrow_it() {
    let cluster = Procs::start(Options::default(), 0).await;
    let many = submit(&cluster, "many", 30).await;
    let last = many.last().expect("tasks");
    let (child, mut lines) = events(&cluster, &["--since", "10"]);
    let got = read_until(&mut lines, last).await;
    let end = *sequences(&got).last().expect("events");
    assert_eq!(sequences(&got), (11..=end).collect::<Vec<_>>());
    drop(child);

    // A task by name: its events only, replayed and live.
    let solo = submit(&cluster, "solo", 1).await.remove(0);
    let (child, mut lines) = events(&cluster, &["--since", "0", "--task", "solo"]);
    let got = read_until(&mut lines, &solo).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let others = submit(&cluster, "others", 5).await;
    cluster
        .client()
        .await
        .stop_task(StopTaskRequest { id: solo.clone() })
        .await
        .expect("stop");
    let got = read_until(&mut lines, &solo).await;
    assert_eq!(got.len(), 1, "only solo's stop, not {others:?}: {got:#?}");
    drop(child);

    // Events past the newest are not there to follow: one line, non-zero.
    let future = cluster
        .orchctl_within(DEADLINE, &["events", "--since", "999999"])
        .await;
    let line = future.refused();
    assert!(
        line.contains("past the newest event") && line.contains("999999"),
        "{line}"
    );

    // By kind: a task-only watch prints no node or service event.
    let (child, mut lines) = events(&cluster, &["--since", "0", "--kind", "task"]);
    let got = read_until(&mut lines, &solo).await;
    assert!(got.iter().all(|e| e["type"] == "task"), "{got:#?}");
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rides_out_a_manager_restart_without_gap_or_duplicate() {
    let mut cluster = Procs::start(Options::default(), 0).await;
    let (child, mut lines) = events(&cluster, &["--since", "0"]);
    let before = submit(&cluster, "before", 50).await;
    let mut got = read_until(&mut lines, before.last().expect("tasks")).await;
    cluster.stop_manager().await;
    cluster.start_manager();
    let after = submit(&cluster, "after", 50).await;
    got.extend(read_until(&mut lines, after.last().expect("tasks")).await);
    let end = *sequences(&got).last().expect("events");
    assert_eq!(
        sequences(&got),
        (1..=end).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(end >= 100, "{end}");
    let stderr = stderr_of(child).await;
    assert!(
        stderr.contains(&format!("lost the manager at {}", cluster.url()))
            && stderr.contains("orchctl: resumed"),
        "{stderr}"
    );
}
