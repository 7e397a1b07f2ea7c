//! Several managers on a three-member etcd (real `etcd` processes on
//! loopback), with real workers and real Docker: the leader is killed under
//! load, paused past its lease, and etcd loses its quorum; each test ends by
//! checking, through the Docker API, that the running containers are the
//! same ones as before (a failover restarts nothing).
#![cfg(feature = "etcd")]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orch::v1::{DesiredState, SubmitTaskRequest, Task, TaskState};
use orch_manager::store::etcd::local::LocalEtcd;
use serde_json::Value;
use support::{DEADLINE, Options, Procs, TaskContainer, sleeper};
use tokio::sync::watch;

/// A cluster of `managers` managers on `etcd` (reaching it over TLS, as its
/// user, where `etcd` is secure), with `workers` workers.
async fn cluster(etcd: &LocalEtcd, managers: usize, workers: usize, extra: &[&str]) -> Procs {
    let mut manager_args = vec!["--store".to_owned(), etcd.store_arg("")];
    manager_args.extend(etcd.manager_args());
    manager_args.extend(extra.iter().map(|s| (*s).to_owned()));
    let options = Options {
        manager_args,
        managers,
        ..Options::default()
    };
    Procs::start(options, workers).await
}

/// `orchctl managers -o json`, through whichever manager answers; empty
/// while none can (an election under way).
async fn managers(cluster: &Procs) -> Vec<Value> {
    let ran = cluster
        .orchctl_within(DEADLINE, &["-o", "json", "managers"])
        .await;
    if ran.code != Some(0) {
        eprintln!("managers: {}", ran.stderr.trim());
        return Vec::new();
    }
    match serde_json::from_str(&ran.stdout) {
        Ok(Value::Array(all)) => all,
        other => panic!("managers: {other:?}"),
    }
}

/// The URL of the manager that leads, once one does and the others agree.
async fn leader_url(cluster: &Procs, not: Option<&str>) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let listed = managers(cluster).await;
        let leaders: Vec<&str> = listed
            .iter()
            .filter(|m| m["role"] == "leader")
            .filter_map(|m| m["url"].as_str())
            .collect();
        if let [one] = leaders.as_slice()
            && Some(*one) != not
        {
            return (*one).to_owned();
        }
        assert!(
            Instant::now() < until,
            "no new leader within {DEADLINE:?}: {listed:#?}"
        );
        // Nothing to wait on but the election: look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `orchctl --manager URL ARGS`, with the cluster's client configuration.
async fn on(cluster: &Procs, url: &str, args: &[&str]) -> support::Ran {
    let mut all = vec!["--manager", url];
    all.extend_from_slice(args);
    support::orchctl_in(DEADLINE, &all, Some(&cluster.config_path())).await
}

/// The running task containers, as (task, attempt, node, container).
fn ids(containers: &[TaskContainer]) -> BTreeSet<(String, u64, String, String)> {
    containers
        .iter()
        .map(|c| {
            (
                c.task_id.clone(),
                c.attempt,
                c.node_id.clone(),
                c.container_id.clone(),
            )
        })
        .collect()
}

/// Waits until every task the managers list has reached its desired state
/// and `nodes` workers are ready; returns the tasks that should run.
async fn settled(cluster: &Procs, nodes: usize) -> Vec<Task> {
    cluster
        .wait_for("every task settled", |v| {
            let settled = v.ready_nodes() == nodes
                && v.tasks.iter().all(|t| match t.desired_state() {
                    DesiredState::Running => t.state() == TaskState::Running,
                    _ => t.state() == TaskState::Stopped,
                });
            settled.then(|| {
                v.tasks
                    .iter()
                    .filter(|t| t.desired_state() == DesiredState::Running)
                    .cloned()
                    .collect()
            })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_elects_another_and_restarts_nothing() {
    let etcd = LocalEtcd::start(3).expect("etcd");
    let mut cluster = cluster(&etcd, 3, 2, &[]).await;
    let image = cluster.busybox().await;
    let first = cluster
        .run_tasks((0..4).map(|_| sleeper(&image)).collect())
        .await;
    let before = ids(&cluster.running_task_containers().await);
    assert_eq!(before.len(), first.len(), "{before:#?}");
    let listed = managers(&cluster).await;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert_eq!(leader_url(&cluster, None).await, cluster.url_of(0));

    // A client submits tasks one after another through every manager (its
    // channel balances over them), through the kill, recording what was
    // acknowledged; a failed call is not retried (the next is a new task).
    let config = cluster.client_config().await;
    let endpoints: Vec<_> = (0..3)
        .map(|i| support::endpoint(cluster.url_of(i), &config.ca))
        .collect();
    let channel = tonic::transport::Channel::balance_list(endpoints.into_iter());
    let bearer = orch::auth::Bearer::new(Some(&config.token)).expect("token");
    let mut client = orch::v1::cluster_client::ClusterClient::with_interceptor(channel, bearer);
    let (progress, mut acked) = watch::channel(0usize);
    let driver = {
        let image = image.clone();
        tokio::spawn(async move {
            let (mut submitted, mut failed) = (Vec::new(), 0usize);
            let mut first_after_failure = None;
            while submitted.len() < 12 {
                let call = client.submit_task(SubmitTaskRequest {
                    spec: Some(sleeper(&image)),
                });
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(reply)) => {
                        submitted.push(reply.into_inner().task.expect("task").id);
                        if failed > 0 && first_after_failure.is_none() {
                            first_after_failure = Some(Instant::now());
                        }
                        let _ = progress.send(submitted.len());
                    }
                    _ => {
                        failed += 1;
                        // The leader is gone: pace the next call a little.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (submitted, failed, first_after_failure)
        })
    };
    acked
        .wait_for(|n| *n >= 3)
        .await
        .expect("3 acknowledgements");
    let killed = Instant::now();
    cluster.kill_manager_at(0).await;
    let new_leader = leader_url(&cluster, Some(&cluster.url_of(0))).await;
    eprintln!(
        "new leader {new_leader} listed {:?} after the kill",
        killed.elapsed()
    );
    let (submitted, failed, first_after) = tokio::time::timeout(DEADLINE * 2, driver)
        .await
        .expect("the client finished")
        .expect("client task");
    eprintln!(
        "the client: {} acknowledged, {failed} failed; first acknowledged after a failure {:?} after the kill",
        submitted.len(),
        first_after.map(|t| t.saturating_duration_since(killed))
    );

    let running = settled(&cluster, 2).await;
    let listed: BTreeSet<&str> = running.iter().map(|t| t.id.as_str()).collect();
    for id in first.iter().map(|t| &t.id).chain(&submitted) {
        assert!(listed.contains(id.as_str()), "acknowledged task {id} lost");
    }
    // Nothing restarted, nothing duplicated: the tasks that ran before the
    // kill run in the very same containers, and every task runs exactly
    // once, in its first attempt. (A placement the old leader had not
    // stored never reached a worker: the new leader places it again under
    // the same number.)
    let after = ids(&cluster.running_task_containers().await);
    assert!(before.is_subset(&after), "{before:#?} vs {after:#?}");
    let moved: Vec<_> = running.iter().filter(|t| t.attempt != 1).collect();
    assert!(moved.is_empty(), "{moved:#?}");
    cluster.assert_exactly_running(&running).await;
}

/// On an etcd secured as operators run it (TLS, client certificates, a
/// user whose role reaches only orch's prefix): the election, fencing and
/// following all work through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_steps_down_and_follows() {
    let mut etcd = LocalEtcd::start_secure(3).expect("etcd");
    etcd.enable_auth("orch", "").expect("etcd's authentication");
    let cluster = cluster(&etcd, 2, 1, &[]).await;
    let image = cluster.busybox().await;
    let first = cluster.run_tasks(vec![sleeper(&image)]).await;
    let before = ids(&cluster.running_task_containers().await);
    assert_eq!(leader_url(&cluster, None).await, cluster.url_of(0));

    // Paused past its lease: the other manager is elected.
    cluster.signal_manager(0, "STOP").await;
    let until = Instant::now() + DEADLINE;
    let second = cluster.url_of(1);
    loop {
        let ran = on(&cluster, &second, &["-o", "json", "managers"]).await;
        let listed: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap_or_default();
        if listed
            .iter()
            .any(|m| m["url"] == second.as_str() && m["role"] == "leader")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "manager 1 was not elected: {ran:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let submitted = on(&cluster, &second, &["run", &image, "--", "sleep", "3600"]).await;
    assert_eq!(submitted.code, Some(0), "{submitted:#?}");

    // Woken, the old leader knows its lease may be gone: it steps down
    // before deciding anything, and anything it still commits is refused.
    cluster.signal_manager(0, "CONT").await;
    let until = Instant::now() + DEADLINE;
    while !cluster.log_text("manager").contains("following again") {
        assert!(
            Instant::now() < until,
            "the old leader did not step down: {}",
            cluster.log_text("manager")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cluster.log_text("manager");
    assert!(log.contains("leadership lost"), "{log}");
    assert_eq!(leader_url(&cluster, None).await, second);
    // And it is listed again, as a follower.
    let until = Instant::now() + DEADLINE;
    loop {
        let listed = managers(&cluster).await;
        let old = listed
            .iter()
            .find(|m| m["url"] == cluster.url_of(0).as_str());
        if old.is_some_and(|m| m["role"] == "follower") {
            break;
        }
        assert!(
            Instant::now() < until,
            "not listed as a follower: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It follows: a client of it is served (forwarded to the leader).
    let through_old = on(&cluster, &cluster.url_of(0), &["nodes"]).await;
    assert_eq!(through_old.code, Some(0), "{through_old:#?}");
    let running = settled(&cluster, 1).await;
    assert_eq!(running.len(), 2, "{running:#?}");
    assert!(running.iter().any(|t| t.id == first[0].id));
    let after = ids(&cluster.running_task_containers().await);
    assert!(before.is_subset(&after), "{before:#?} vs {after:#?}");
    cluster.assert_exactly_running(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_are_refused_and_the_managers_recover_by_themselves() {
    let mut etcd = LocalEtcd::start(3).expect("etcd");
    let cluster = cluster(&etcd, 2, 1, &[]).await;
    let image = cluster.busybox().await;
    let first = cluster.run_tasks(vec![sleeper(&image)]).await;
    let before = ids(&cluster.running_task_containers().await);

    // Two of three members gone: no quorum. A submit is refused, saying why.
    etcd.kill(1);
    etcd.kill(2);
    let until = Instant::now() + DEADLINE * 2;
    let refused = loop {
        let ran = cluster
            .orchctl_within(DEADLINE, &["run", &image, "--", "sleep", "3600"])
            .await;
        if ran.code != Some(0) {
            break ran;
        }
        assert!(Instant::now() < until, "submits still accepted: {ran:#?}");
    };
    let line = refused.refused();
    assert!(
        line.contains("UNAVAILABLE") || line.contains("unavailable") || line.contains("retry"),
        "{line}"
    );
    eprintln!("refused: {line}");
    // The containers keep running meanwhile.
    let during = ids(&cluster.running_task_containers().await);
    assert_eq!(during, before);

    // Quorum back: a leader again, by itself, and writes are taken.
    etcd.restart(1).expect("restart member 1");
    etcd.restart(2).expect("restart member 2");
    etcd.wait_healthy(DEADLINE).expect("etcd healthy again");
    let until = Instant::now() + DEADLINE * 2;
    loop {
        let ran = cluster
            .orchctl_within(DEADLINE, &["run", &image, "--", "sleep", "3600"])
            .await;
        if ran.code == Some(0) {
            break;
        }
        assert!(Instant::now() < until, "no recovery: {ran:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = settled(&cluster, 1).await;
    assert!(running.iter().any(|t| t.id == first[0].id), "{running:#?}");
    let after = ids(&cluster.running_task_containers().await);
    assert!(before.is_subset(&after), "{before:#?} vs {after:#?}");
    cluster.assert_exactly_running(&running).await;
}
