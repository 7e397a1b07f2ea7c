//! Services end to end, through the `orchctl` binary as a person runs it:
//! `apply -f FILE`, `service create | ls | ps | scale | history | rollback
//! | rm`, against orch's manager and worker as separate processes with the
//! real Docker engine (the process harness in `support`). Each test ends by
//! checking, through the Docker API, the exact set of running task
//! containers.
//!

mod support;

use std::time::Duration;

use orch::v1::Task;
use serde_json::Value;
use support::{Options, Procs, orchctl_within, settled, write};

/// How long a command that follows a rollout may take: starting a few
/// tasks one at a time and watching each for a second, on a loaded machine.
const ROLLOUT: Duration = Duration::from_secs(60);

/// How long a command that returns at once may take.
const QUICK: Duration = Duration::from_secs(30);

/// A replicated service of `replicas` sleepers of `image`, in the manifest
/// format: stops wait 1 s (busybox `sleep` as PID 1 ignores SIGTERM), and a
/// new task counts as updated after running 1 s.
fn manifest(image: &str, replicas: u32, seconds: u32) -> String {
    format!(
        "# The web service of the tests.\n\
         name: web\n\
         replicas: {replicas}\n\
         task:\n\
         \x20 image: {image}\n\
         \x20 command: [sleep, \"{seconds}\"]\n\
         \x20 stop_timeout: 1s\n\
         update: {{monitor: 1s}}\n"
    )
}

/// The one service `service ls -o json` lists, named `name`.
async fn listed(cluster: &Procs, name: &str) -> Value {
    let list = cluster.orchctl_json(&["service", "ls"]).await;
    let services = list
        .as_array()
        .unwrap_or_else(|| panic!("an array: {list}"));
    assert_eq!(services.len(), 1, "{list}");
    assert_eq!(services[0]["name"], name, "{list}");
    services[0].clone()
}

/// `(id, attempt)` of each task.
fn attempts(tasks: &[Task]) -> Vec<(String, u64)> {
    let mut a: Vec<(String, u64)> = tasks.iter().map(|t| (t.id.clone(), t.attempt)).collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_a_replicated_service_and_returns_once_its_rollout_completed() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let file = write(cluster.path(), "web.yaml", &manifest(&image, 3, 3600));

    let ran = cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await;
    let out = ran.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"service web created (version 1)"),
        "{ran:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("web: completed version 1")),
        "a progress line says it completed: {ran:#?}"
    );
    assert_eq!(ran.stderr, "", "{ran:#?}");

    // It returned once the rollout completed: the list says so at once.
    let web = listed(&cluster, "web").await;
    for field in [
        "name",
        "mode",
        "version",
        "replicas",
        "running",
        "rollout_state",
        "rollout_message",
        "created_at",
        "updated_at",
    ] {
        assert!(web.get(field).is_some(), "no {field:?} in {web}");
    }
    assert_eq!(
        (
            &web["mode"],
            &web["version"],
            &web["replicas"],
            &web["running"],
            &web["rollout_state"]
        ),
        (
            &Value::from("replicated"),
            &Value::from(1),
            &Value::from(3),
            &Value::from(3),
            &Value::from("completed")
        ),
        "{web}"
    );

    let tasks = cluster.wait_running("web", 3).await;
    let slots: Vec<u32> = tasks.iter().map(|t| t.slot).collect();
    assert_eq!(slots, [1, 2, 3]);
    // service ps shows them, with their service, slot and version.
    let ps = cluster.orchctl_json(&["service", "ps", "web"]).await;
    let shown = ps.as_array().unwrap_or_else(|| panic!("an array: {ps}"));
    assert_eq!(shown.len(), 3, "{ps}");
    for t in shown {
        assert_eq!(
            (&t["service"], &t["service_version"], &t["state"]),
            (
                &Value::from("web"),
                &Value::from(1),
                &Value::from("running")
            ),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_sets_exactly_how_many_task_containers_run() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let file = write(cluster.path(), "web.yaml", &manifest(&image, 3, 3600));
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await
        .ok();
    cluster.wait_running("web", 3).await;

    let up = cluster
        .orchctl_within(QUICK, &["service", "scale", "web=5"])
        .await;
    assert_eq!(up.ok(), "service web scaled to 5\n");
    let five = cluster.wait_running("web", 5).await;
    assert!(
        five.iter().all(|t| t.service_version == 1),
        "a scale is no new version: {five:#?}"
    );

    let down = cluster.orchctl_json(&["service", "scale", "web=1"]).await;
    assert_eq!(
        (&down["name"], &down["replicas"]),
        (&Value::from("web"), &Value::from(1)),
        "{down}"
    );
    let one = cluster.wait_running("web", 1).await;
    assert!(
        five.iter().any(|t| t.id == one[0].id),
        "the task left is one of those that ran: {one:#?}"
    );
    let web = listed(&cluster, "web").await;
    assert_eq!(
        (&web["version"], &web["replicas"]),
        (&Value::from(1), &Value::from(1)),
        "{web}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_same_file_again_is_unchanged_and_restarts_nothing() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let file = write(cluster.path(), "web.yaml", &manifest(&image, 3, 3600));
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await
        .ok();
    let before = cluster.wait_running("web", 3).await;

    let again = cluster.orchctl_within(QUICK, &["apply", "-f", &file]).await;
    assert_eq!(again.ok(), "service web unchanged\n", "nothing to follow");
    let json = cluster.orchctl_json(&["apply", "-f", &file]).await;
    assert_eq!(
        (&json[0]["change"], &json[0]["version"]),
        (&Value::from("unchanged"), &Value::from(1)),
        "{json}"
    );

    // The same tasks, the same attempts, and no other task of the service.
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    let after = settled(&view, "web", 3).unwrap_or_else(|| panic!("{view:#?}"));
    assert_eq!(attempts(&after), attempts(&before));
    assert_eq!(
        view.tasks.iter().filter(|t| t.service == "web").count(),
        3,
        "no task was added: {view:#?}"
    );
    let web = listed(&cluster, "web").await;
    assert_eq!(
        (&web["version"], &web["rollout_state"]),
        (&Value::from(1), &Value::from("completed")),
        "no new rollout: {web}"
    );
    cluster.assert_exactly_running(&before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_rolls_out_a_new_version_and_a_rollback_brings_the_old_one_back() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;

    // Version 1, from flags.
    let created = cluster
        .orchctl_within(
            ROLLOUT,
            &[
                "service",
                "create",
                "web",
                "--replicas",
                "2",
                "--update-monitor",
                "1s",
                "--stop-timeout",
                "1s",
                &image,
                "sleep",
                "3600",
            ],
        )
        .await;
    assert_eq!(
        created.ok().lines().next(),
        Some("service web created (version 1)"),
        "{created:#?}"
    );
    let v1 = cluster.wait_running("web", 2).await;

    // Version 2, from a file: another command.
    let file = write(cluster.path(), "web.yaml", &manifest(&image, 2, 3601));
    let updated = cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await;
    let out = updated.ok();
    assert_eq!(
        out.lines().next(),
        Some("service web updated to version 2"),
        "{updated:#?}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("web: completed version 2")),
        "{updated:#?}"
    );
    let v2 = cluster.wait_running("web", 2).await;
    assert!(v2.iter().all(|t| t.service_version == 2), "{v2:#?}");
    assert!(
        v2.iter().all(|t| v1.iter().all(|old| old.id != t.id)),
        "every task was replaced"
    );

    let history = cluster.orchctl_json(&["service", "history", "web"]).await;
    let versions: Vec<(Value, Value)> = history
        .as_array()
        .unwrap_or_else(|| panic!("an array: {history}"))
        .iter()
        .map(|v| (v["version"].clone(), v["current"].clone()))
        .collect();
    assert_eq!(
        versions,
        [(1.into(), false.into()), (2.into(), true.into())],
        "{history}"
    );
    let table = cluster
        .orchctl_within(QUICK, &["service", "history", "web"])
        .await;
    assert!(
        table.ok().contains("command sleep 3600 -> sleep 3601"),
        "{table:#?}"
    );

    // Back to version 1.
    let back = cluster
        .orchctl_within(ROLLOUT, &["service", "rollback", "web"])
        .await;
    assert_eq!(
        back.ok().lines().next(),
        Some("service web rolling back to version 1"),
        "{back:#?}"
    );
    let web = listed(&cluster, "web").await;
    assert_eq!(
        (&web["version"], &web["rollout_state"]),
        (&Value::from(1), &Value::from("rolled_back")),
        "{web}"
    );
    let again = cluster.wait_running("web", 2).await;
    assert!(again.iter().all(|t| t.service_version == 1), "{again:#?}");

    // Removed: nothing of it runs.
    let rm = cluster
        .orchctl_within(QUICK, &["service", "rm", "web"])
        .await;
    assert_eq!(rm.ok(), "service web removed\n");
    cluster
        .wait_for("no task of web running", |v| settled(v, "web", 0))
        .await;
    cluster.assert_exactly_running(&[]).await;
    let list = cluster.orchctl_json(&["service", "ls"]).await;
    assert_eq!(list, Value::Array(Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_with_its_position_and_nothing_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `replica` for `replicas`, on line 3.
    let file = write(
        dir.path(),
        "web.yaml",
        "# A typo.\nname: web\nreplica: 3\ntask: {image: busybox}\n",
    );
    // No manager listens there: the file is refused before any connection,
    // or the line would say the manager cannot be reached.
    let ran = orchctl_within(
        QUICK,
        &["--manager", "https://127.0.0.1:1", "apply", "-f", &file],
    )
    .await;
    let line = ran.refused();
    assert!(
        line.starts_with(&format!("orchctl: {file}:3:1: replica: ")),
        "{line}"
    );
    assert!(line.contains("unknown field"), "{line}");
}

/// A web server whose health endpoint answers `status` (see
/// `orch_integration_tests::workloads::httpd`), checked every 300 ms, in
/// the manifest format; a new task counts after 1 s healthy.
fn web_manifest(image: &str, status: &str) -> String {
    let script = orch_integration_tests::workloads::httpd(80, status)
        .pop()
        .unwrap_or_default()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        "name: web\n\
         replicas: 2\n\
         task:\n\
         \x20 image: {image}\n\
         \x20 command: [sh, -c, \"{script}\"]\n\
         \x20 stop_timeout: 300ms\n\
         \x20 health: {{http: {{port: 80, path: /cgi-bin/health}}, interval: 300ms, timeout: 300ms, retries: 2}}\n\
         update: {{monitor: 1s}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_exits_non_zero_when_its_new_version_is_rolled_back() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let good = write(cluster.path(), "v1.yaml", &web_manifest(&image, "200 OK"));
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &good])
        .await
        .ok();
    let v1 = cluster.wait_running("web", 2).await;

    let bad = write(
        cluster.path(),
        "v2.yaml",
        &web_manifest(&image, "500 Internal Server Error"),
    );
    let ran = cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &bad])
        .await;
    assert_ne!(ran.code, Some(0), "{ran:#?}");
    assert!(
        ran.stdout.starts_with("service web updated to version 2"),
        "{ran:#?}"
    );
    let err: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(err.len(), 1, "one line: {ran:#?}");
    assert!(
        err[0].starts_with("orchctl: ") && err[0].contains("rolled_back"),
        "{ran:#?}"
    );
    let web = listed(&cluster, "web").await;
    assert_eq!(
        (&web["version"], &web["rollout_state"]),
        (&Value::from(1), &Value::from("rolled_back")),
        "{web}"
    );
    // Version 1 runs again, in new tasks; no container of version 2 is left.
    let back = cluster.wait_running("web", 2).await;
    assert!(back.iter().all(|t| t.service_version == 1), "{back:#?}");
    assert_ne!(attempts(&back), attempts(&v1), "replaced by new tasks");
}
