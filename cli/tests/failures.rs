//! Failure tests with real processes and real Docker: orchctl's manager and
//! workers run as separate processes (or as containers on a private
//! network), and the tests `kill -9` them, restart them on the same data
//! directory, and cut them off the network. Each test ends by checking,
//! through the Docker API, the exact set of running task containers: one
//! per task that should run, for its current attempt on its current node,
//! and none for tasks that should not.

mod support;

use std::collections::{BTreeSet, HashMap};

use bollard::query_parameters::{EventsOptionsBuilder, InspectContainerOptions};
use futures::StreamExt;
use orch::v1::{DesiredState, StopTaskRequest, SubmitTaskRequest, Task, TaskState};
use support::{DEADLINE, Options, Procs, sleeper, spec};
use tokio::sync::watch;

/// How many of `tasks` run on each node.
fn per_node(tasks: &[Task]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for t in tasks {
        *count.entry(t.node_id.clone()).or_default() += 1;
    }
    count
}

/// Where each task's current attempt is: (id, attempt, node, container).
fn placement(tasks: &[Task]) -> Vec<(&str, u64, &str, &str)> {
    tasks
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                t.attempt,
                t.node_id.as_str(),
                t.container_id.as_str(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_tasks_run_elsewhere_and_its_stale_containers_stop_when_it_returns() {
    let mut cluster = Procs::start(Options::default(), 3).await;
    let image = cluster.busybox().await;
    let tasks = cluster.run_tasks(vec![sleeper(&image); 6]).await;
    let spread = per_node(&tasks);
    assert_eq!(spread.len(), 3, "spread uses every node: {spread:?}");
    assert!(spread.values().all(|&n| n == 2), "two per node: {spread:?}");
    cluster.assert_exactly_running(&tasks).await;

    let victim = tasks[0].node_id.clone();
    let w = cluster.worker_of(&victim);
    cluster.kill_worker(w).await;

    // Detection (3 missed 500 ms heartbeats) plus scheduling and a container
    // start take a few seconds; 10 s is generous yet far below what a
    // worker-waiting design would need.
    let moved = cluster
        .wait_for_within(
            "the killed worker's tasks running elsewhere",
            std::time::Duration::from_secs(10),
            |v| {
                tasks
                    .iter()
                    .map(|before| {
                        let now = v.task(&before.id)?;
                        let ok = now.state() == TaskState::Running
                            && if before.node_id == victim {
                                now.attempt == before.attempt + 1 && now.node_id != victim
                            } else {
                                now.attempt == before.attempt
                            };
                        ok.then(|| now.clone())
                    })
                    .collect::<Option<Vec<Task>>>()
            },
        )
        .await;
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    assert_eq!(
        view.node(&victim).expect("victim node").state(),
        orch::v1::NodeState::Down
    );
    for t in &moved {
        assert_eq!(t.restart_count, 0, "a lost task is not a restart: {t:?}");
    }
    // While the worker is dead its containers still run, unseen: the old
    // attempts are on Docker beside the new ones.
    let stale: Vec<_> = cluster
        .running_task_containers()
        .await
        .into_iter()
        .filter(|c| c.node_id == victim)
        .collect();
    assert_eq!(stale.len(), 2, "the dead worker's containers still run");

    // It comes back on the same data dir: the full set it gets no longer has
    // those attempts, so it stops them. Nothing moves back.
    cluster.restart_worker(w);
    cluster.wait_node_ready(w).await;
    cluster.assert_exactly_running(&moved).await;
    let after = cluster.wait_moved(&moved, "").await;
    assert_eq!(placement(&after), placement(&moved), "nothing moved back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_worker_is_replaced_and_its_stale_containers_stop_when_it_reconnects() {
    let options = Options {
        listen_all: true,
        ..Options::default()
    };
    let mut cluster = Procs::start(options, 0).await;
    cluster.create_network().await;
    for _ in 0..3 {
        cluster.add_container_worker().await;
    }
    cluster.wait_ready(3).await;
    let image = cluster.busybox().await;
    let tasks = cluster.run_tasks(vec![sleeper(&image); 6]).await;
    assert_eq!(per_node(&tasks).len(), 3, "spread uses every node");
    cluster.assert_exactly_running(&tasks).await;

    let victim = tasks[0].node_id.clone();
    let w = cluster.worker_of(&victim);
    cluster.disconnect(w).await;
    let moved = cluster.wait_moved(&tasks, &victim).await;
    // The cut-off worker still runs, and so do its containers.
    let stale = cluster
        .running_task_containers()
        .await
        .into_iter()
        .filter(|c| c.node_id == victim)
        .count();
    assert_eq!(stale, 2, "the cut-off worker's containers still run");

    cluster.connect(w).await;
    cluster.wait_node_ready(w).await;
    cluster.assert_exactly_running(&moved).await;
    let after = cluster.wait_moved(&moved, "").await;
    assert_eq!(placement(&after), placement(&moved), "nothing moved back");
}

/// What the client of the manager-restart test got back.
#[derive(Debug, Default)]
struct Acks {
    /// Tasks whose submission was acknowledged.
    submitted: Vec<String>,
    /// Tasks whose stop was acknowledged.
    stopped: Vec<String>,
    /// Tasks whose stop failed: it may or may not have been committed
    /// before the manager died, so either outcome is right.
    unsure: Vec<String>,
    /// Calls that failed (the manager was down).
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_while_tasks_start_and_stop_loses_nothing_and_orphans_nothing() {
    killed_while_tasks_start_and_stop(Options::default()).await;
}

/// The same on a three-member etcd: what the manager acknowledged is what
/// etcd's quorum committed, what it told a worker was committed first, and
/// a new manager process reads it all back.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_on_etcd_killed_while_tasks_start_and_stop_loses_nothing_and_orphans_nothing() {
    let etcd = orch_manager::store::etcd::local::LocalEtcd::start(3).expect("etcd");
    let options = Options {
        manager_args: vec!["--store".into(), etcd.store_arg("")],
        ..Options::default()
    };
    killed_while_tasks_start_and_stop(options).await;
}

/// A client submits and stops tasks while the manager is killed and
/// started again on the same store.
async fn killed_while_tasks_start_and_stop(options: Options) {
    let mut cluster = Procs::start(options, 2).await;
    let image = cluster.busybox().await;
    let mut client = cluster.client().await;

    // A client submits tasks one by one and stops every third one it got
    // back, through the kill and restart of the manager, recording what was
    // acknowledged. A call that fails is not retried (it may or may not have
    // happened); the next call is a new task.
    let (progress, mut acked) = watch::channel(0usize);
    let driver = {
        let image = image.clone();
        tokio::spawn(async move {
            let mut acks = Acks::default();
            // Until 16 submissions were acknowledged, so the traffic goes on
            // after the manager is back (the caller's timeout bounds it).
            while acks.submitted.len() < 16 {
                let submitted = client
                    .submit_task(SubmitTaskRequest {
                        spec: Some(sleeper(&image)),
                    })
                    .await;
                match submitted {
                    Ok(r) => {
                        acks.submitted.push(r.into_inner().task.expect("task").id);
                        let _ = progress.send(acks.submitted.len());
                    }
                    Err(_) => {
                        acks.failed += 1;
                        // The manager is down: pace the next call a little.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                }
                if acks.submitted.len() % 3 == 0 {
                    let id = acks.submitted[acks.submitted.len() - 2].clone();
                    match client.stop_task(StopTaskRequest { id: id.clone() }).await {
                        Ok(_) => acks.stopped.push(id),
                        Err(_) => {
                            acks.failed += 1;
                            acks.unsure.push(id);
                        }
                    }
                }
            }
            acks
        })
    };

    acked
        .wait_for(|n| *n >= 5)
        .await
        .expect("the client got 5 acknowledgements");
    let before = cluster.running_task_containers().await;
    cluster.kill_manager().await;
    // The manager stays away for twice the liveness deadline, as a real
    // restart might: the workers' reconnection attempts back off meanwhile.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    cluster.start_manager();
    let acks = tokio::time::timeout(DEADLINE, driver)
        .await
        .expect("the client finished")
        .expect("client task");
    eprintln!("the client saw: {acks:?}");
    assert!(acks.failed > 0, "some calls fell in the outage: {acks:?}");
    assert!(!acks.stopped.is_empty(), "{acks:?}");

    // Settled: every task the manager lists has reached its desired state,
    // and both workers are back.
    let settled = cluster
        .wait_for("every task settled after the manager restart", |v| {
            let settled = v.ready_nodes() == 2
                && v.tasks.iter().all(|t| match t.desired_state() {
                    DesiredState::Running => t.state() == TaskState::Running,
                    _ => t.state() == TaskState::Stopped,
                });
            settled.then(|| v.tasks.clone())
        })
        .await;

    // Nothing acknowledged is lost.
    let listed: BTreeSet<&str> = settled.iter().map(|t| t.id.as_str()).collect();
    for id in &acks.submitted {
        assert!(listed.contains(id.as_str()), "acknowledged task {id} lost");
    }
    for id in &acks.stopped {
        let t = settled.iter().find(|t| t.id == *id).expect("listed");
        assert_eq!(
            (t.desired_state(), t.state()),
            (DesiredState::Stopped, TaskState::Stopped),
            "acknowledged stop of {id}"
        );
    }
    // Nothing orphaned, nothing duplicated.
    let running: Vec<Task> = settled
        .into_iter()
        .filter(|t| t.desired_state() == DesiredState::Running)
        .collect();
    let stop_asked = |id: &String| acks.stopped.contains(id) || acks.unsure.contains(id);
    for id in acks.submitted.iter().filter(|id| !stop_asked(id)) {
        assert!(
            running.iter().any(|t| t.id == *id),
            "task {id} was never asked to stop, yet it does not run: {acks:?}"
        );
    }
    // The manager adopts what it expects: every task runs in its first
    // attempt (a placement not stored before the kill never reached a
    // worker), and what ran before the kill, and was not stopped since,
    // runs on in the same container.
    let moved: Vec<_> = running.iter().filter(|t| t.attempt != 1).collect();
    assert!(
        moved.is_empty(),
        "the manager adopts what it expects: {moved:#?}"
    );
    let after = cluster.running_task_containers().await;
    for c in before.iter().filter(|c| !stop_asked(&c.task_id)) {
        assert!(
            after
                .iter()
                .any(|a| a.container_id == c.container_id && a.attempt == c.attempt),
            "{c:?} was replaced: {after:#?}"
        );
    }
    cluster.assert_exactly_running(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_readopts_its_containers_and_reports_an_exit_in_between() {
    // A long liveness deadline (20 × 500 ms), so the node is not declared
    // down while its worker is away: this test is about adoption.
    let options = Options {
        missed_heartbeats: 20,
        ..Options::default()
    };
    let mut cluster = Procs::start(options, 1).await;
    let image = cluster.busybox().await;
    let long = cluster.submit(sleeper(&image)).await.id;
    let short = cluster
        .submit(spec(&image, &["sh", "-c", "echo short; sleep 2; exit 4"]))
        .await
        .id;
    let (long_before, short_before) = cluster
        .wait_for("both tasks running", |v| {
            let l = v.task(&long).filter(|t| t.state() == TaskState::Running)?;
            let s = v.task(&short).filter(|t| t.state() == TaskState::Running)?;
            Some((l.clone(), s.clone()))
        })
        .await;

    // Subscribe to the engine's events before the kill, so the exit cannot
    // fall between a look and the subscription.
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["die".to_string()]),
        ("container", vec![short_before.container_id.clone()]),
    ]);
    let mut dies = cluster.docker.events(Some(
        EventsOptionsBuilder::default().filters(&filters).build(),
    ));
    cluster.kill_worker(0).await;
    let inspect = |id: String| {
        let docker = cluster.docker.clone();
        async move {
            docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .expect("inspect")
                .state
                .expect("state")
        }
    };
    // The short task's container is still running when the worker dies (it
    // exits 2 s after it started): its exit falls while nobody watches.
    let running = inspect(short_before.container_id.clone()).await;
    if running.running == Some(true) {
        tokio::time::timeout(DEADLINE, dies.next())
            .await
            .expect("the short task's container exits")
            .expect("docker event")
            .expect("docker event ok");
    }
    let exited = inspect(short_before.container_id.clone()).await;
    assert_eq!(
        (exited.running, exited.exit_code),
        (Some(false), Some(4)),
        "the container exited while the worker was dead"
    );
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    assert_eq!(
        view.task(&short).expect("short").state(),
        TaskState::Running,
        "the manager has not heard of the exit yet"
    );

    cluster.restart_worker(0);
    let (long_after, short_after) = cluster
        .wait_for("the exit reported and the long task re-adopted", |v| {
            let s = v.task(&short).filter(|t| t.state() == TaskState::Failed)?;
            let l = v.task(&long)?;
            Some((l.clone(), s.clone()))
        })
        .await;
    assert_eq!(short_after.exit_code, Some(4), "{short_after:?}");
    assert_eq!(short_after.attempt, 1, "{short_after:?}");
    assert_eq!(short_after.desired_state(), DesiredState::Running);
    assert_eq!(
        (
            long_after.state(),
            long_after.attempt,
            &long_after.container_id
        ),
        (TaskState::Running, 1, &long_before.container_id),
        "the same container, the same attempt"
    );
    // The restarted worker keeps the exited container, for its output: its
    // logs still end with the exit the worker missed.
    let kept = cluster
        .docker
        .inspect_container(&short_before.container_id, None::<InspectContainerOptions>)
        .await
        .expect("the exited container is kept")
        .state
        .expect("state");
    assert_eq!(kept.running, Some(false), "kept, exited");
    let logs = cluster
        .orchctl_within(DEADLINE, &["logs", "-f", &short])
        .await;
    assert_eq!(
        (logs.code, logs.stdout.as_str()),
        (Some(4), "short\n"),
        "{logs:#?}"
    );
    cluster.assert_exactly_running(&[long_after]).await;
}
