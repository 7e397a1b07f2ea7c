//! `WatchEvents` over real gRPC and a real redb store: a watch from `since`
//! gets exactly the events after it, and a watcher that reconnects with the
//! last sequence it got after a manager restart gets the rest, every
//! sequence once, in order.

use orch::api::LAST_SEQUENCE_TRAILER;
use orch::v1::{Event, EventKind, SubmitTasksRequest, WatchEventsRequest, event};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_integration_tests::workloads::pending;
use tonic::{Code, Status, Streaming};

/// Submits `n` tasks named `name` (they stay pending: the cluster has no
/// worker) and returns the last one's id.
async fn submit(cluster: &Cluster, name: &str, n: usize) -> String {
    let specs = pending(name, n);
    let tasks = cluster
        .client()
        .await
        .submit_tasks(SubmitTasksRequest { specs })
        .await
        .expect("submit")
        .into_inner()
        .tasks;
    tasks.last().expect("a task").id.clone()
}

async fn watch(cluster: &Cluster, request: WatchEventsRequest) -> Streaming<Event> {
    cluster
        .client()
        .await
        .watch_events(request)
        .await
        .expect("watch")
        .into_inner()
}

fn since(since: u64) -> WatchEventsRequest {
    WatchEventsRequest {
        since: Some(since),
        ..Default::default()
    }
}

fn task_id(event: &Event) -> Option<&str> {
    match &event.kind {
        Some(event::Kind::Task(t)) => Some(&t.task_id),
        _ => None,
    }
}

/// Reads `stream` into `got` until an event of task `last` arrives.
async fn read_until(stream: &mut Streaming<Event>, last: &str, got: &mut Vec<Event>) {
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = stream.message().await.expect("the stream") {
            let done = task_id(&event) == Some(last);
            got.push(event);
            if done {
                return;
            }
        }
        panic!("the stream ended before task {last}'s event");
    })
    .await
    .expect("the events in time");
}

/// Reads `stream` until it ends with an error, which it returns.
async fn read_to_error(stream: &mut Streaming<Event>, got: &mut Vec<Event>) -> Status {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(event)) => got.push(event),
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends in time")
}

fn sequences(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_since_gets_exactly_the_later_events_across_a_manager_restart() {
    let mut cluster = Cluster::builder().workers(0).start().await;
    let last = submit(&cluster, "before", 300).await;
    let mut all = Vec::new();
    read_until(&mut watch(&cluster, since(0)).await, &last, &mut all).await;
    let newest = all.last().expect("events").sequence;
    assert_eq!(sequences(&all), (1..=newest).collect::<Vec<_>>());

    // From the middle: exactly the events after it.
    let s = newest / 2;
    let mut got = Vec::new();
    let mut stream = watch(&cluster, since(s)).await;
    read_until(&mut stream, &last, &mut got).await;
    assert_eq!(sequences(&got), (s + 1..=newest).collect::<Vec<_>>());
    assert_eq!(got[..], all[usize::try_from(s).unwrap()..]);

    // Live events follow on the same stream, then the manager restarts: the
    // stream ends saying where it got to.
    let during = submit(&cluster, "during", 200).await;
    read_until(&mut stream, &during, &mut got).await;
    cluster.restart_manager().await;
    let status = read_to_error(&mut stream, &mut got).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let received = got.last().expect("events").sequence;
    assert_eq!(
        status
            .metadata()
            .get(LAST_SEQUENCE_TRAILER)
            .and_then(|v| v.to_str().ok()),
        Some(received.to_string().as_str()),
        "{status:?}"
    );

    // The restarted manager numbers on from where it stopped; a watch
    // resumed after the last sequence received gets the rest once each.
    let after = submit(&cluster, "after", 200).await;
    let mut stream = watch(&cluster, since(received)).await;
    read_until(&mut stream, &after, &mut got).await;
    let end = got.last().expect("events").sequence;
    assert_eq!(
        sequences(&got),
        (s + 1..=end).collect::<Vec<_>>(),
        "every sequence once, in order"
    );
    assert!(end >= received + 200, "the numbering went on: {end}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_a_replayed_watch() {
    let cluster = Cluster::builder().workers(0).start().await;
    let first = submit(&cluster, "one", 1).await;
    let last = submit(&cluster, "many", 20).await;
    let only = |task: &str| WatchEventsRequest {
        since: Some(0),
        task_id: task.into(),
        kinds: vec![EventKind::Task as i32],
        ..Default::default()
    };
    let mut got = Vec::new();
    read_until(&mut watch(&cluster, only(&last)).await, &last, &mut got).await;
    assert!(
        got.iter().all(|e| task_id(e) == Some(last.as_str())),
        "{got:#?}"
    );
    let mut got = Vec::new();
    read_until(&mut watch(&cluster, only(&first)).await, &first, &mut got).await;
    assert_eq!(got.len(), 1, "{got:#?}");

    let bad = cluster
        .client()
        .await
        .watch_events(WatchEventsRequest {
            node_id: "not-an-id".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad node id is refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("node_id"), "{bad:?}");
    cluster.shutdown().await;
}
