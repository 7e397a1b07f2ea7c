//! Reading a manager's `WatchEvents` stream in tests: the events of one task,
//! with the time the manager gave each, up to a given one.

use std::time::{Duration, SystemTime};

use orch::v1::{Event, TaskEvent, event};
use tonic::Streaming;

/// One task's change, and when the manager recorded it.
#[derive(Debug, Clone)]
pub struct Timed {
    /// The event's time, by the manager's clock.
    pub time: SystemTime,
    /// The change.
    pub task: TaskEvent,
}

/// Reads `stream` until an event of task `task_id` satisfies `last`; returns
/// that task's events up to and including it, in order.
///
/// # Panics
/// If the stream fails or ends, or `last` is not seen within `deadline`
/// (with what was seen): this is test code.
pub async fn task_events_until(
    stream: &mut Streaming<Event>,
    task_id: &str,
    deadline: Duration,
    last: impl Fn(&TaskEvent) -> bool,
) -> Vec<Timed> {
    let mut seen = Vec::new();
    let read = async {
        loop {
            let e = stream
                .message()
                .await
                .expect("event stream")
                .expect("event stream ended");
            let time = e
                .time
                .as_ref()
                .map_or(SystemTime::UNIX_EPOCH, orch::time::system_time);
            let Some(event::Kind::Task(task)) = e.kind else {
                continue;
            };
            if task.task_id != task_id {
                continue;
            }
            let done = last(&task);
            seen.push(Timed { time, task });
            if done {
                return;
            }
        }
    };
    if tokio::time::timeout(deadline, read).await.is_err() {
        panic!("task {task_id}: the awaited event not within {deadline:?}; saw {seen:#?}");
    }
    seen
}
