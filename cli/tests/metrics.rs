//! The metrics endpoints of real processes (`--metrics-listen`): the
//! manager's and a worker's, and `orchctl dev`'s serving both, scraped over
//! HTTP and checked with a real `promtool check metrics` (Debian's
//! `prometheus` package; without it the tests fail saying so). Their
//! counters move when a task runs to completion; a port that cannot be
//! bound stops the start with one line naming it.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use orch::v1::TaskState;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use support::{DEADLINE, Options, Procs, free_port, orchctl_within, spec, start_dev};

/// One scrape of `addr`, in the Prometheus text format promtool reads.
async fn scrape(addr: SocketAddr) -> String {
    orch_metrics::scrape(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `promtool check metrics` on `text`; fails the test with what
/// promtool says if it finds a problem, or if there is no promtool.
async fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (`apt-get install prometheus`, as .ci/run does)"
            )
        });
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("promtool in time")
        .expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what} metrics ({}):\n{}{}\n--- the metrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The value of the sample `name` (with its labels, as written) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_and_worker_metrics_pass_promtool_and_count_a_task_that_runs() {
    let cluster = Procs::start(
        Options {
            metrics: true,
            ..Options::default()
        },
        1,
    )
    .await;
    let image = cluster.busybox().await;
    let (manager, worker) = (cluster.manager_metrics(), cluster.worker_metrics(0));
    let before = scrape(manager).await;
    promtool_check("manager's", &before).await;
    let worker_before = scrape(worker).await;
    promtool_check("worker's", &worker_before).await;
    assert_eq!(sample(&before, "orch_manager_nodes{state=\"ready\"}"), 1.0);
    assert_eq!(sample(&before, "orch_manager_sessions"), 1.0);
    assert_eq!(sample(&worker_before, "orch_worker_session_connected"), 1.0);
    assert_eq!(
        sample(
            &worker_before,
            "orch_worker_capacity{resource=\"milli_cpus\"}"
        ),
        2000.0
    );

    // Long enough to be reported running before it completes.
    let task = cluster.submit(spec(&image, &["sleep", "1"])).await;
    cluster
        .wait_for("the task completed", |v| {
            v.task(&task.id)
                .filter(|t| t.state() == TaskState::Completed)
                .cloned()
        })
        .await;

    let after = scrape(manager).await;
    promtool_check("manager's", &after).await;
    let moved = |name: &str| (sample(&before, name), sample(&after, name));
    assert_eq!(moved("orch_manager_placements_total"), (0.0, 1.0));
    assert_eq!(
        moved("orch_manager_scheduling_duration_seconds_count{result=\"placed\"}"),
        (0.0, 1.0)
    );
    assert_eq!(moved("orch_manager_tasks{state=\"completed\"}"), (0.0, 1.0));
    assert_eq!(sample(&after, "orch_manager_tasks{state=\"running\"}"), 0.0);
    assert_eq!(
        moved("orch_manager_submit_to_running_seconds_count"),
        (0.0, 1.0)
    );
    assert!(sample(&after, "orch_manager_submit_to_running_seconds_sum") > 0.0);
    assert!(
        sample(&after, "orch_manager_store_commit_writes_count")
            > sample(&before, "orch_manager_store_commit_writes_count"),
        "the task's changes were committed"
    );
    // The harness follows the task on WatchEvents.
    assert!(sample(&after, "orch_manager_watch_events_sent_total") > 0.0);

    let worker_after = scrape(worker).await;
    promtool_check("worker's", &worker_after).await;
    let moved = |name: &str| (sample(&worker_before, name), sample(&worker_after, name));
    assert_eq!(moved("orch_worker_container_starts_total"), (0.0, 1.0));
    assert_eq!(
        moved("orch_worker_container_exits_total{outcome=\"completed\"}"),
        (0.0, 1.0)
    );
    assert_eq!(sample(&worker_after, "orch_worker_containers_running"), 0.0);
    assert_eq!(
        sample(
            &worker_after,
            "orch_worker_container_start_failures_total{reason=\"pull\"}"
        ),
        0.0
    );
    cluster.assert_exactly_running(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_dev_serves_the_managers_and_its_workers_metrics_on_one_port() {
    let dir = tempfile::Builder::new()
        .prefix("orch-metrics-")
        .tempdir()
        .expect("temp dir");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data").display().to_string();
    let (mut dev, running) = start_dev(
        dir.path(),
        &[
            "--listen",
            &listen,
            "--data-dir",
            &data,
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    assert!(
        running.contains(&format!("metrics on http://{metrics}/metrics")),
        "{running}"
    );

    let text = scrape(metrics).await;
    promtool_check("orchctl dev's", &text).await;
    for family in [
        "# TYPE orch_manager_tasks gauge",
        "# TYPE orch_manager_placements_total counter",
        "# TYPE orch_worker_container_starts_total counter",
        "# TYPE orch_worker_containers_running gauge",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    dev.start_kill().expect("stop orchctl dev");
    dev.wait().await.expect("reap it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_in_use_stops_the_manager_and_the_worker_naming_it() {
    let dir = tempfile::Builder::new()
        .prefix("orch-metrics-")
        .tempdir()
        .expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let data = dir.path().join("data").display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let limit = Duration::from_secs(60);
    let manager = orchctl_within(
        limit,
        &[
            "manager",
            "--listen",
            &listen,
            "--data-dir",
            &data,
            "--metrics-listen",
            &addr,
        ],
    )
    .await;
    let line = manager.refused();
    assert!(
        line.contains(&format!("cannot serve metrics on {addr}")),
        "{line}"
    );
    assert!(!manager.stderr.contains("manager on"), "{manager:#?}");

    let worker = orchctl_within(
        limit,
        &[
            "--manager",
            &format!("https://{listen}"),
            "worker",
            "--data-dir",
            &dir.path().join("worker").display().to_string(),
            "--join-token",
            "ORCH-1-x-y",
            "--metrics-listen",
            &addr,
        ],
    )
    .await;
    let line = worker.refused();
    assert!(
        line.contains(&format!("cannot serve metrics on {addr}")),
        "{line}"
    );
}

/// Scrapes `addr` until `done` holds for the text, within the deadline;
/// returns that text.
#[cfg(feature = "etcd")]
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let text = orch_metrics::scrape(addr).await.unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < until,
            "{what}: not within {DEADLINE:?}; the last scrape:\n{text}"
        );
        // A scrape is all there is to wait on: look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Managers on etcd: each serves its metrics port whether it leads or
/// follows, `orch_manager_leader` says which (and sums to 1), and only the
/// leader serves the cluster's families; once the leader is killed, the
/// follower elected serves them, its term's, the worker back in session.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manager_on_etcd_serves_metrics_and_says_whether_it_leads() {
    let etcd = orch_manager::store::etcd::local::LocalEtcd::start(1).expect("etcd");
    let mut cluster = Procs::start(
        Options {
            metrics: true,
            managers: 2,
            manager_args: vec!["--store".into(), etcd.store_arg("")],
            ..Options::default()
        },
        1,
    )
    .await;
    let (first, second) = (cluster.manager_metrics_of(0), cluster.manager_metrics_of(1));
    let leading = scrape(first).await;
    promtool_check("leader's", &leading).await;
    assert_eq!(sample(&leading, "orch_manager_leader"), 1.0);
    assert_eq!(sample(&leading, "orch_manager_terms_total"), 1.0);
    assert_eq!(sample(&leading, "orch_manager_nodes{state=\"ready\"}"), 1.0);
    let following = scrape(second).await;
    promtool_check("follower's", &following).await;
    assert_eq!(sample(&following, "orch_manager_leader"), 0.0);
    assert_eq!(sample(&following, "orch_manager_terms_total"), 0.0);
    assert!(
        !following.contains("orch_manager_nodes"),
        "a follower holds no cluster state:\n{following}"
    );

    cluster.kill_manager().await;
    let elected = scrape_until(second, "the follower leads, its worker back", |text| {
        text.contains("orch_manager_leader 1")
            && text.contains("orch_manager_nodes{state=\"ready\"} 1")
    })
    .await;
    promtool_check("new leader's", &elected).await;
    assert_eq!(sample(&elected, "orch_manager_terms_total"), 1.0);
}
