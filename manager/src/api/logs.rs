//! `Logs`: relays the output a worker streams up on `SendLogs` to the
//! client that asked, one attempt at a time ([`relay`]), or every replica
//! of a service at once, following new attempts as the engine's events
//! announce them.
//!
//! Everything the engine decides (which attempt, which node, whether it is
//! connected) is answered before the stream begins, so a task whose node
//! is down gets `UNAVAILABLE` at once. During the stream, nothing hangs in
//! silence: a worker that does not begin answering within
//! [`FIRST_CHUNK_TIMEOUT`] ends it with `DEADLINE_EXCEEDED`, and a node
//! whose session closes ends it with `UNAVAILABLE` naming the node. Every
//! channel is bounded, so a slow client slows its worker's `SendLogs`
//! stream and nothing else; a client that goes away cancels the worker's
//! reading (`CancelLogs`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use orch::v1::{LogEnd, LogStream, LogsRequest, LogsResponse, TaskState, WorkerLogsRequest, event};
use orch::validate::{self, FieldError};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::engine::OpenLogs;
use crate::{Error, Shared};

/// How long a worker may take to begin answering a request.
pub const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a followed stream whose worker call broke waits for the reason
/// (its node's session closing) before it gives its own.
const REASON_WAIT: Duration = Duration::from_secs(2);

/// Responses waiting for the client.
const OUT_BUFFER: usize = 16;

/// The response stream of `Logs`.
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<LogsResponse, Status>> + Send>>;

type Out = mpsc::Sender<Result<LogsResponse, Status>>;

/// Validates `req`, asks the engine, and returns the stream.
///
/// # Errors
/// A broken field; NOT_FOUND or UNAVAILABLE from [`Engine::open_logs`](crate::engine::Engine::open_logs).
pub fn start(shared: Arc<Shared>, req: LogsRequest) -> Result<LogsStream, Error> {
    let ask = worker_request(&req)?;
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    if !req.task_id.is_empty() {
        let id = validate::id("task_id", &req.task_id)?;
        let (events, starting) = {
            let engine = shared.lock();
            let starting = engine.task(id).is_some_and(|t| starting(t.state()));
            // Subscribed first: the start cannot fall between the two.
            (engine.subscribe(), starting)
        };
        if req.follow && req.attempt == 0 && starting {
            // Its container may not exist yet: follow it once it runs (or
            // has ended), so `run` then `logs -f` misses nothing.
            tokio::spawn(async move {
                if !started(&shared, id, events, &tx).await {
                    return;
                }
                let opened = shared.lock().open_logs(id, ask);
                let failed = match opened {
                    Ok(opened) => match relay(&shared, opened, true, &tx).await {
                        Relayed::Failed(status) => status,
                        Relayed::Done | Relayed::Gone => return,
                    },
                    Err(e) => Status::from(e),
                };
                let _ = tx.send(Err(failed)).await;
            });
            return Ok(Box::pin(ReceiverStream::new(rx)));
        }
        let opened = shared.lock().open_logs(id, ask)?;
        tokio::spawn(async move {
            if let Relayed::Failed(status) = relay(&shared, opened, req.follow, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
    } else if req.follow {
        let (events, tasks) = {
            let engine = shared.lock();
            // Subscribed first: no new attempt falls between the two.
            (engine.subscribe(), engine.log_tasks(&req.service)?)
        };
        tokio::spawn(follow_service(shared, req.service, tasks, events, ask, tx));
    } else {
        let tasks = shared.lock().log_tasks(&req.service)?;
        tokio::spawn(async move {
            for id in tasks {
                if !one_replica(&shared, id, ask.clone(), &tx).await {
                    return;
                }
            }
        });
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Whether an attempt in `state` is placed but its container may not run
/// yet.
fn starting(state: TaskState) -> bool {
    matches!(state, TaskState::Scheduled | TaskState::Starting)
}

/// Waits until task `id` is past starting (running, ended, or moved on);
/// false if the client went away or the manager is shutting down first.
async fn started(
    shared: &Shared,
    id: Uuid,
    mut events: tokio::sync::broadcast::Receiver<orch::v1::Event>,
    out: &Out,
) -> bool {
    let task = id.to_string();
    loop {
        tokio::select! {
            () = out.closed() => return false,
            event = events.recv() => match event.map(|e| e.kind) {
                Ok(Some(event::Kind::Task(t))) if t.task_id == task && !starting(t.state()) => {
                    return true;
                }
                Ok(_) => {}
                // Events were missed: look at the task itself.
                Err(RecvError::Lagged(_)) => {
                    if !shared.lock().task(id).is_some_and(|t| starting(t.state())) {
                        return true;
                    }
                }
                Err(RecvError::Closed) => return false,
            },
        }
    }
}

/// What the worker is asked, from a checked request.
fn worker_request(req: &LogsRequest) -> Result<WorkerLogsRequest, FieldError> {
    match (req.task_id.is_empty(), req.service.is_empty()) {
        (true, true) => return Err(FieldError::new("task_id", "give task_id or service")),
        (false, false) => {
            return Err(FieldError::new(
                "service",
                "give task_id or service, not both",
            ));
        }
        _ => {}
    }
    if !req.service.is_empty() && req.attempt != 0 {
        return Err(FieldError::new("attempt", "only with task_id"));
    }
    if LogStream::try_from(req.stream).is_err() {
        return Err(FieldError::new(
            "stream",
            format!("{} is not a LogStream", req.stream),
        ));
    }
    if let Some(since) = &req.since
        && (since.seconds < 0 || since.nanos < 0)
    {
        return Err(FieldError::new("since", "must not be negative"));
    }
    Ok(WorkerLogsRequest {
        request_id: String::new(),
        task_id: String::new(),
        attempt: req.attempt,
        follow: req.follow,
        tail: req.tail,
        since: req.since,
        stream: req.stream,
    })
}

/// How one attempt's relay ended.
#[derive(Debug)]
enum Relayed {
    /// It ended as it should: the output was all sent (and the end, if
    /// followed).
    Done,
    /// It failed with this status (nothing more was sent).
    Failed(Status),
    /// The client went away.
    Gone,
}

/// Forgets a request when its relay ends; tells the worker to stop if it
/// did not end as it should.
struct Forget<'a> {
    shared: &'a Shared,
    id: Uuid,
    done: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.lock().end_logs(self.id, !self.done);
    }
}

/// Relays one attempt's output to `out`, each response with the task's
/// fields (`OpenLogs::header`).
async fn relay(shared: &Shared, opened: OpenLogs, follow: bool, out: &Out) -> Relayed {
    let OpenLogs { rx, header, node } = opened;
    let mut forget = Forget {
        shared,
        id: rx.id,
        done: false,
    };
    let (mut chunks, mut aborted) = (rx.chunks, rx.aborted);
    let first = tokio::time::Instant::now() + FIRST_CHUNK_TIMEOUT;
    let mut answered = false;
    loop {
        let chunk = tokio::select! {
            why = &mut aborted => {
                let why = why.unwrap_or_else(|_| format!("the stream from node {node} ended"));
                return Relayed::Failed(Status::unavailable(why));
            }
            () = out.closed() => return Relayed::Gone,
            () = tokio::time::sleep_until(first), if !answered => {
                return Relayed::Failed(Status::deadline_exceeded(format!(
                    "node {node} did not begin answering within {} s",
                    FIRST_CHUNK_TIMEOUT.as_secs()
                )));
            }
            chunk = chunks.recv() => chunk,
        };
        answered = true;
        let Some(chunk) = chunk else {
            if !follow {
                forget.done = true;
                return Relayed::Done;
            }
            // The worker's call broke before the end: most likely its node
            // went away, which the session's close says in a moment.
            let why = tokio::time::timeout(REASON_WAIT, &mut aborted).await;
            let why = match why {
                Ok(Ok(why)) => why,
                _ => format!("node {node} ended the output stream before the attempt ended"),
            };
            return Relayed::Failed(Status::unavailable(why));
        };
        if chunk.error_code != 0 {
            forget.done = true;
            let code = tonic::Code::from(chunk.error_code);
            return Relayed::Failed(Status::new(code, chunk.error_message));
        }
        if !chunk.lines.is_empty() {
            let lines = LogsResponse {
                lines: chunk.lines,
                ..header.clone()
            };
            if out.send(Ok(lines)).await.is_err() {
                return Relayed::Gone;
            }
        }
        if let Some(end) = chunk.end {
            forget.done = true;
            let end = LogsResponse {
                end: Some(end),
                ..header
            };
            return if out.send(Ok(end)).await.is_ok() {
                Relayed::Done
            } else {
                Relayed::Gone
            };
        }
    }
}

/// The end of one replica's stream that did not end with its attempt: a
/// response with an end whose state is unspecified and whose message says
/// why, so the client of a service goes on.
fn replica_end(header: LogsResponse, why: &str) -> LogsResponse {
    LogsResponse {
        end: Some(LogEnd {
            state: TaskState::Unspecified as i32,
            exit_code: None,
            message: why.to_owned(),
        }),
        ..header
    }
}

/// Relays one replica of a service; its failure becomes a [`replica_end`].
/// Returns false if the client went away.
async fn one_replica(shared: &Shared, task: Uuid, ask: WorkerLogsRequest, out: &Out) -> bool {
    let follow = ask.follow;
    let header = shared.lock().log_header(task);
    let opened = shared.lock().open_logs(task, ask);
    let failed = match opened {
        Ok(opened) => match relay(shared, opened, follow, out).await {
            Relayed::Done => return true,
            Relayed::Gone => return false,
            Relayed::Failed(status) => status.message().to_owned(),
        },
        Err(e) => Status::from(e).message().to_owned(),
    };
    out.send(Ok(replica_end(header, &failed))).await.is_ok()
}

/// Follows every replica of `service` that runs, and each new attempt of
/// its tasks as it starts running, until the client goes away or the
/// service is deleted.
async fn follow_service(
    shared: Arc<Shared>,
    service: String,
    tasks: Vec<Uuid>,
    mut events: tokio::sync::broadcast::Receiver<orch::v1::Event>,
    ask: WorkerLogsRequest,
    out: Out,
) {
    let mut seen: HashSet<(Uuid, u64)> = HashSet::new();
    let mut relays = JoinSet::new();
    let mut follow = |task: Uuid, attempt: u64, relays: &mut JoinSet<()>| {
        if !seen.insert((task, attempt)) {
            return;
        }
        let (shared, out) = (shared.clone(), out.clone());
        let ask = WorkerLogsRequest {
            attempt,
            ..ask.clone()
        };
        relays.spawn(async move {
            one_replica(&shared, task, ask, &out).await;
        });
    };
    for task in tasks {
        let running = shared
            .lock()
            .task(task)
            .filter(|t| t.state() == TaskState::Running)
            .map(|t| t.attempt);
        if let Some(attempt) = running {
            follow(task, attempt, &mut relays);
        }
    }
    loop {
        tokio::select! {
            () = out.closed() => return,
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
            event = events.recv() => match event.map(|e| e.kind) {
                Ok(Some(event::Kind::Task(t)))
                    if t.service == service && t.state() == TaskState::Running =>
                {
                    if let Ok(task) = Uuid::parse_str(&t.task_id) {
                        follow(task, t.attempt, &mut relays);
                    }
                }
                Ok(Some(event::Kind::Service(s))) if s.name == service && s.deleted => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(req: LogsRequest) -> String {
        match worker_request(&req) {
            Ok(ask) => panic!("accepted: {ask:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_bad_request_names_its_field() {
        let task = || LogsRequest {
            task_id: "t".into(),
            ..Default::default()
        };
        assert!(refused(LogsRequest::default()).starts_with("task_id: give task_id or service"));
        let both = LogsRequest {
            service: "web".into(),
            ..task()
        };
        assert!(refused(both).starts_with("service: "));
        let attempt = LogsRequest {
            service: "web".into(),
            attempt: 2,
            ..Default::default()
        };
        assert!(refused(attempt).starts_with("attempt: only with task_id"));
        let stream = LogsRequest {
            stream: 9,
            ..task()
        };
        assert!(refused(stream).starts_with("stream: 9 is not a LogStream"));
        let since = LogsRequest {
            since: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..task()
        };
        assert!(refused(since).starts_with("since: "));
        let ask = worker_request(&LogsRequest {
            follow: true,
            tail: 3,
            attempt: 2,
            stream: LogStream::Stderr as i32,
            ..task()
        })
        .expect("a good request");
        assert!(ask.follow && ask.tail == 3 && ask.attempt == 2);
        assert_eq!(ask.stream(), LogStream::Stderr);
    }
}
