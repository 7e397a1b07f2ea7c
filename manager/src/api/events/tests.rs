#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test should fail loudly, where it fails"
)]

use std::sync::Mutex;
use std::time::Duration;

use orch::v1::{NodeEvent, ServiceEvent, TaskEvent};
use tonic::Code;

use super::*;
use crate::persist::Committer;
use crate::store::{MemoryStore, Write};

const TASK_A: &str = "00000000-0000-7000-8000-00000000000a";
const TASK_B: &str = "00000000-0000-7000-8000-00000000000b";
const NODE_1: &str = "00000000-0000-4000-8000-000000000001";
const NODE_2: &str = "00000000-0000-4000-8000-000000000002";

/// What a test emits; the sequence is the source's.
#[derive(Clone)]
enum Change {
    Task(&'static str, &'static str, &'static str),
    Node(&'static str),
    Service(&'static str),
}

/// The engine's part, as a watch sees it: events are broadcast at once and
/// their writes queued on a real committer only at the next watch point or
/// `flush`, as the engine queues them only at the end of an operation.
struct TestSource {
    tx: Mutex<broadcast::Sender<Event>>,
    store: Arc<dyn Store>,
    committer: Committer,
    /// The newest sequence, and the writes not queued yet.
    inner: Mutex<(u64, Vec<Write>)>,
}

impl TestSource {
    fn new(buffer: usize, store: MemoryStore) -> Arc<Self> {
        let store: Arc<dyn Store> = Arc::new(store);
        Arc::new(Self {
            tx: Mutex::new(broadcast::channel(buffer).0),
            committer: Committer::start(Arc::clone(&store)),
            store,
            inner: Mutex::new((0, Vec::new())),
        })
    }

    fn emit(&self, change: Change) -> Event {
        let mut inner = self.inner.lock().unwrap();
        inner.0 += 1;
        let kind = match change {
            Change::Task(task, node, service) => event::Kind::Task(TaskEvent {
                task_id: task.into(),
                node_id: node.into(),
                service: service.into(),
                ..Default::default()
            }),
            Change::Node(node) => event::Kind::Node(NodeEvent {
                node_id: node.into(),
                ..Default::default()
            }),
            Change::Service(name) => event::Kind::Service(ServiceEvent {
                name: name.into(),
                ..Default::default()
            }),
        };
        let e = Event {
            sequence: inner.0,
            time: None,
            kind: Some(kind),
        };
        inner.1.push(Write::Event(Box::new(e.clone())));
        let _ = self.tx.lock().unwrap().send(e.clone());
        e
    }

    /// What the engine does at shutdown: every subscription closes.
    fn close(&self) {
        *self.tx.lock().unwrap() = broadcast::channel(1).0;
    }

    /// Emits `n` task events.
    fn emit_tasks(&self, n: usize) {
        for _ in 0..n {
            self.emit(Change::Task(TASK_A, NODE_1, ""));
        }
    }

    /// Queues what is pending and waits until it is stored.
    async fn flush(&self) {
        let writes = std::mem::take(&mut self.inner.lock().unwrap().1);
        self.committer.queue_durable(writes).wait().await.unwrap();
    }
}

impl Source for Arc<TestSource> {
    fn watch_point(&self) -> (broadcast::Receiver<Event>, u64, Durable) {
        let mut inner = self.inner.lock().unwrap();
        let rx = self.tx.lock().unwrap().subscribe();
        let writes = std::mem::take(&mut inner.1);
        (rx, inner.0, self.committer.queue_durable(writes))
    }

    fn store(&self) -> Option<Arc<dyn Store>> {
        Some(Arc::clone(&self.store))
    }
}

fn watch(source: &Arc<TestSource>, since: Option<u64>, filter: Filter) -> Watch<Arc<TestSource>> {
    Watch::new(Arc::clone(source), since, filter)
}

async fn next(watch: &mut Watch<Arc<TestSource>>) -> Option<Result<Event, Status>> {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the watch answers in time")
}

/// The sequences of the next `n` events.
async fn take(watch: &mut Watch<Arc<TestSource>>, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(next(watch).await.unwrap().unwrap().sequence);
    }
    got
}

fn trailer(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(LAST_SEQUENCE_TRAILER)
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn without_since_a_watch_gets_the_live_events_only() {
    let source = TestSource::new(8, MemoryStore::new());
    source.emit_tasks(3);
    source.flush().await;
    let mut w = watch(&source, None, Filter::default());
    source.emit_tasks(3);
    assert_eq!(take(&mut w, 3).await, [4, 5, 6]);
}

/// Events broadcast before the watch point but not yet queued to the store
/// are replayed from it all the same; those broadcast after come once.
#[tokio::test]
async fn since_replays_the_kept_events_then_goes_live_without_gap_or_duplicate() {
    let source = TestSource::new(64, MemoryStore::new());
    source.emit_tasks(5);
    source.flush().await;
    // Broadcast, not in the store yet: the watch point must wait for them.
    source.emit_tasks(5);
    let mut w = watch(&source, Some(3), Filter::default());
    let first = next(&mut w).await.unwrap().unwrap();
    assert_eq!(first.sequence, 4);
    // Emitted while the watch replays: it holds them in its subscription.
    source.emit_tasks(5);
    let rest = take(&mut w, 11).await;
    assert_eq!(rest, (5..=15).collect::<Vec<_>>());
    source.emit_tasks(1);
    assert_eq!(take(&mut w, 1).await, [16]);
}

#[tokio::test]
async fn since_zero_replays_everything_kept() {
    let source = TestSource::new(8, MemoryStore::new());
    source.emit_tasks(2_500);
    let mut w = watch(&source, Some(0), Filter::default());
    assert_eq!(take(&mut w, 2_500).await, (1..=2_500).collect::<Vec<_>>());
}

/// A watch that falls behind the broadcast goes back to the store and then
/// live again: it is never cut off while the store keeps what it needs.
#[tokio::test]
async fn a_watch_that_falls_behind_catches_up_from_the_store() {
    let source = TestSource::new(4, MemoryStore::new());
    let counted = crate::metrics::WatchMetrics::default();
    let mut w = watch(&source, None, Filter::default()).counted(counted.clone());
    source.emit_tasks(1);
    assert_eq!(take(&mut w, 1).await, [1]);
    // Far more than the broadcast holds, while the watch reads nothing.
    source.emit_tasks(50);
    let got = take(&mut w, 50).await;
    assert_eq!(got, (2..=51).collect::<Vec<_>>());
    // And live again.
    source.emit_tasks(2);
    assert_eq!(take(&mut w, 2).await, [52, 53]);
    // Every event sent is counted once, and the catch-up, with the live
    // events it missed; nothing was cut.
    assert_eq!(counted.sent.get(), 53);
    assert_eq!(counted.caught_up.get(), 1);
    assert!(counted.missed_live.get() > 0);
    assert_eq!(counted.cut.get(), 0);
}

/// Only when the events a watch needs are gone is it told so, with the
/// sequence it got to in the message and the trailer.
#[tokio::test]
async fn a_since_older_than_the_kept_events_is_out_of_range() {
    let source = TestSource::new(8, MemoryStore::new().with_events_kept(5));
    source.emit_tasks(20);
    source.flush().await;
    let mut w = watch(&source, Some(2), Filter::default());
    let status = next(&mut w).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("after 2 are no longer kept")
            && status.message().contains("the oldest kept is 16"),
        "{status:?}"
    );
    assert_eq!(trailer(&status), Some("2"));
    assert!(next(&mut w).await.is_none(), "the stream ends");
    // From the oldest kept on, all is there.
    let mut w = watch(&source, Some(15), Filter::default());
    assert_eq!(take(&mut w, 5).await, [16, 17, 18, 19, 20]);
}

#[tokio::test]
async fn a_watch_that_falls_behind_what_is_kept_is_told_where_it_stopped() {
    let source = TestSource::new(4, MemoryStore::new().with_events_kept(10));
    let counted = crate::metrics::WatchMetrics::default();
    let mut w = watch(&source, None, Filter::default()).counted(counted.clone());
    source.emit_tasks(1);
    assert_eq!(take(&mut w, 1).await, [1]);
    source.emit_tasks(30);
    source.flush().await;
    let status = next(&mut w).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(counted.cut.get(), 1, "the cut is counted");
    assert!(status.message().contains("oldest kept is 22"), "{status:?}");
    assert_eq!(trailer(&status), Some("1"));
}

#[tokio::test]
async fn a_since_past_the_newest_event_is_out_of_range() {
    let source = TestSource::new(8, MemoryStore::new());
    source.emit_tasks(3);
    let mut w = watch(&source, Some(7), Filter::default());
    let status = next(&mut w).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("7 is past the newest event, 3"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_watch_ends_unavailable_with_its_position_when_the_manager_stops() {
    let source = TestSource::new(8, MemoryStore::new());
    let mut w = watch(&source, None, Filter::default());
    source.emit_tasks(2);
    assert_eq!(take(&mut w, 2).await, [1, 2]);
    source.close();
    let status = next(&mut w).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(trailer(&status), Some("2"));
}

fn filter(task: &str, service: &str, node: &str, kinds: &[EventKind]) -> Filter {
    Filter::new(&WatchEventsRequest {
        since: None,
        task_id: task.into(),
        service: service.into(),
        node_id: node.into(),
        kinds: kinds.iter().map(|k| *k as i32).collect(),
    })
    .unwrap()
}

/// The filters narrow replay and live alike, and the position moves past
/// what they leave out, so nothing is sent twice after a catch-up.
#[tokio::test]
async fn filters_apply_to_replay_and_live() {
    let changes = [
        Change::Task(TASK_A, NODE_1, "web"), // 1
        Change::Task(TASK_B, NODE_2, ""),    // 2
        Change::Node(NODE_1),                // 3
        Change::Node(NODE_2),                // 4
        Change::Service("web"),              // 5
        Change::Service("db"),               // 6
        Change::Task(TASK_A, NODE_1, "web"), // 7
    ];
    let cases: [(Filter, &[u64]); 6] = [
        (filter(TASK_A, "", "", &[]), &[1, 7]),
        (filter("", "web", "", &[]), &[1, 5, 7]),
        (filter("", "", NODE_1, &[]), &[1, 3, 7]),
        (filter("", "", "", &[EventKind::Node]), &[3, 4]),
        (
            filter("", "", "", &[EventKind::Service, EventKind::Node]),
            &[3, 4, 5, 6],
        ),
        (filter("", "web", NODE_1, &[EventKind::Task]), &[1, 7]),
    ];
    for (f, expected) in cases {
        let source = TestSource::new(64, MemoryStore::new());
        // The first half replayed, the second live.
        for change in &changes[..4] {
            source.emit(change.clone());
        }
        let mut w = watch(&source, Some(0), f.clone());
        for change in &changes[4..] {
            source.emit(change.clone());
        }
        assert_eq!(take(&mut w, expected.len()).await, expected, "{f:?}");
        // The next event sent is a later match, not one of the above again.
        source.emit(Change::Task(TASK_A, NODE_1, "web"));
        source.emit(Change::Node(NODE_1));
        source.emit(Change::Node(NODE_2));
        source.emit(Change::Service("web"));
        source.emit(Change::Service("db"));
        let later = next(&mut w).await.unwrap().unwrap().sequence;
        assert!(later > 7, "{f:?}: {later}");
    }
}

#[test]
fn bad_filters_name_their_field() {
    let cases = [
        (
            WatchEventsRequest {
                task_id: "nope".into(),
                ..Default::default()
            },
            "task_id",
        ),
        (
            WatchEventsRequest {
                node_id: "x".into(),
                ..Default::default()
            },
            "node_id",
        ),
        (
            WatchEventsRequest {
                service: "Not A Name".into(),
                ..Default::default()
            },
            "service",
        ),
        (
            WatchEventsRequest {
                kinds: vec![EventKind::Task as i32, 0],
                ..Default::default()
            },
            "kinds[1]",
        ),
        (
            WatchEventsRequest {
                kinds: vec![9],
                ..Default::default()
            },
            "kinds[0]",
        ),
    ];
    for (req, field) in cases {
        let err = Filter::new(&req).unwrap_err();
        assert_eq!(err.field, field, "{req:?}: {err:?}");
    }
}
