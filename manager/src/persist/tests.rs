//! The committer over a store that fails on command (`FaultyStore`).

use std::sync::Arc;
use std::time::Duration;

use orch::v1::{Node, Task, TaskSpec};
use uuid::Uuid;

use super::{Committer, StoreHealth};
use crate::store::{FaultyStore, MemoryStore, Store, Write};

/// Generous: the retries run on the real clock, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn setup() -> (Arc<FaultyStore>, Arc<MemoryStore>, Committer) {
    let memory = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let committer = Committer::start(faulty.clone());
    (faulty, memory, committer)
}

fn node(id: &str, name: &str) -> Write {
    Write::Node(Box::new(Node {
        id: id.into(),
        name: name.into(),
        ..Default::default()
    }))
}

fn new_task() -> (String, Write) {
    let id = Uuid::now_v7().to_string();
    let task = Task {
        id: id.clone(),
        spec: Some(TaskSpec::default()),
        ..Default::default()
    };
    (id, Write::TaskCreated(Box::new(task)))
}

async fn wait_health(committer: &Committer, want: fn(&StoreHealth) -> bool) -> StoreHealth {
    let mut health = committer.health();
    let seen = tokio::time::timeout(DEADLINE, health.wait_for(want))
        .await
        .expect("health in time")
        .expect("writer alive");
    seen.clone()
}

#[tokio::test]
async fn a_failed_commit_acknowledges_nothing_until_the_store_works_and_loses_nothing() {
    let (faulty, memory, committer) = setup();
    let a = Uuid::now_v7().to_string();
    committer
        .queue_durable(vec![node(&a, "first")])
        .wait()
        .await
        .expect("a healthy commit");

    // The store fails until told otherwise.
    faulty.fail_commits(usize::MAX);
    let failed = committer
        .queue_durable(vec![node(&a, "second")])
        .wait()
        .await;
    let err = failed.expect_err("the failed batch is not acknowledged");
    assert!(
        err.to_string().contains("injected failure 1") && err.to_string().contains("kept"),
        "{err}"
    );
    let health = wait_health(&committer, |h| *h != StoreHealth::Serving).await;
    assert!(matches!(health, StoreHealth::Failing { .. }), "{health:?}");

    // While it fails: later changes are kept in order but not acknowledged,
    // and a new task (tentative) is dropped.
    let later = committer.queue_durable(vec![node(&a, "third")]);
    let (task_id, created) = new_task();
    let tentative = committer.queue_tentative(vec![created]);
    committer.queue(vec![Write::ClusterId("c1".into())]);
    assert!(
        later.wait().await.is_err(),
        "no acknowledgement while failing"
    );
    let err = tentative.wait().await.expect_err("a new task is refused");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(committer.flush().await.is_err(), "no flush while failing");

    // The retries (with backoff) commit it all once the store works.
    faulty.fail_commits(0);
    wait_health(&committer, |h| *h == StoreHealth::Serving).await;
    committer.flush().await.expect("acknowledged again");
    let stored = memory.load().expect("load");
    assert_eq!(stored.nodes.len(), 1);
    assert_eq!(stored.nodes[0].name, "third", "write order kept");
    assert_eq!(
        stored.cluster_id.as_deref(),
        Some("c1"),
        "fire-and-forget kept"
    );
    assert!(
        stored.tasks.iter().all(|t| t.id != task_id),
        "a refused task never exists"
    );
    committer
        .queue_durable(vec![node(&a, "fourth")])
        .wait()
        .await
        .expect("acknowledged again");
}

#[tokio::test]
async fn a_tentative_write_in_a_failed_batch_is_dropped_and_the_rest_is_kept() {
    let (faulty, memory, committer) = setup();
    let a = Uuid::now_v7().to_string();
    faulty.fail_commits(usize::MAX);
    // Queued back to back, these usually share the failed transaction; either
    // way the outcome is the same.
    let (task_id, created) = new_task();
    let tentative = committer.queue_tentative(vec![created]);
    let kept = committer.queue_durable(vec![node(&a, "kept")]);
    let err = tentative.wait().await.expect_err("its commit failed");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(kept.wait().await.is_err(), "not acknowledged");
    faulty.fail_commits(0);
    wait_health(&committer, |h| *h == StoreHealth::Serving).await;
    committer.flush().await.expect("recovered");
    let stored = memory.load().expect("load");
    assert!(stored.tasks.iter().all(|t| t.id != task_id), "dropped");
    assert_eq!(stored.nodes.len(), 1, "kept and committed by the retry");
}

#[tokio::test]
async fn close_commits_what_a_failing_store_kept_once_it_works() {
    let (faulty, memory, committer) = setup();
    faulty.fail_commits(1);
    assert!(
        committer
            .queue_durable(vec![Write::ClusterId("c2".into())])
            .wait()
            .await
            .is_err()
    );
    committer.close().await.expect("the last try succeeds");
    assert_eq!(
        memory.load().expect("load").cluster_id.as_deref(),
        Some("c2")
    );
}

#[tokio::test]
async fn every_commit_is_measured_with_its_writes_and_failures_counted() {
    let memory = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let metrics = crate::metrics::Metrics::new();
    let committer = Committer::start_measured(faulty.clone(), metrics.store.clone());
    let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    committer
        .queue_durable(vec![node(&a, "a"), node(&b, "b")])
        .wait()
        .await
        .expect("a healthy commit");
    // A flush with nothing to write is no commit.
    committer.flush().await.expect("flushed");
    let sample = |name| crate::metrics::sample(&metrics, name).expect(name);
    assert_eq!(sample("orch_manager_store_commit_writes_count"), 1.0);
    assert_eq!(sample("orch_manager_store_commit_writes_sum"), 2.0);
    assert_eq!(
        sample("orch_manager_store_commit_duration_seconds_count"),
        1.0
    );

    faulty.fail_commits(1);
    let failed = committer
        .queue_durable(vec![node(&a, "again")])
        .wait()
        .await;
    assert!(failed.is_err());
    wait_health(&committer, |h| *h == StoreHealth::Serving).await;
    // The failed try and its successful retry took time; only the retry committed.
    assert_eq!(sample("orch_manager_store_commit_failures_total"), 1.0);
    assert_eq!(
        sample("orch_manager_store_commit_duration_seconds_count"),
        3.0
    );
    assert_eq!(sample("orch_manager_store_commit_writes_count"), 2.0);
}
