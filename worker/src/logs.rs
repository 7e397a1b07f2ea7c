//! The worker's side of `Cluster.Logs`: for each `WorkerLogsRequest` the
//! manager sends down the session, read the attempt's container output
//! through the [`Runtime`] and stream it up on a `SendLogs` call of its own.
//!
//! The calls go over a connection of their own ([`LogStreams::new`] takes
//! it), not the session's: HTTP/2's connection-wide flow-control window is
//! shared by its streams, and output a slow client leaves unread must never
//! hold up a heartbeat or a status report. Each request is one tokio task,
//! aborted by `CancelLogs` or when the session that asked ends (the
//! [`LogStreams`] of a session is dropped with it). It decides nothing:
//! which attempt, and whether its node may be asked, is the manager's call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{LogEnd, LogStream, LogsChunk, TaskState, WorkerLogsRequest};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::runtime::docker::container_name;
use crate::runtime::{LogItem, LogsOptions, Runtime, RuntimeError};

/// Most lines in one `LogsChunk`. The engine cuts lines at 16 KiB, so a
/// chunk stays far below the 4 MiB message limit.
pub const MAX_CHUNK_LINES: usize = 128;

/// Chunks read ahead of what the manager has taken: little, so that a slow
/// client slows the reading of the engine's output.
const CHUNK_BUFFER: usize = 4;

/// The log requests of one session, each streaming in a task of its own.
pub struct LogStreams<R> {
    runtime: Arc<R>,
    channel: Channel,
    /// This node's name, for errors.
    node: String,
    running: HashMap<String, AbortHandle>,
}

impl<R: Runtime> LogStreams<R> {
    /// Log streams that read from `runtime` and send on `channel`, a
    /// connection to the manager apart from the session's.
    pub fn new(runtime: Arc<R>, channel: Channel, node: String) -> Self {
        Self {
            runtime,
            channel,
            node,
            running: HashMap::new(),
        }
    }

    /// Starts streaming for `request`.
    pub fn start(&mut self, request: WorkerLogsRequest) {
        self.running.retain(|_, h| !h.is_finished());
        let id = request.request_id.clone();
        let client = DispatcherClient::new(self.channel.clone());
        let task = tokio::spawn(serve(
            self.runtime.clone(),
            client,
            self.node.clone(),
            request,
        ));
        self.running.insert(id, task.abort_handle());
    }

    /// Stops streaming for the request `id`, if it still streams.
    pub fn cancel(&mut self, id: &str) {
        if let Some(task) = self.running.remove(id) {
            task.abort();
        }
    }
}

impl<R> Drop for LogStreams<R> {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

/// Answers one request: its `SendLogs` call, fed as the runtime reads.
async fn serve<R: Runtime>(
    runtime: Arc<R>,
    mut client: DispatcherClient<Channel>,
    node: String,
    request: WorkerLogsRequest,
) {
    let (tx, rx) = mpsc::channel(CHUNK_BUFFER);
    let id = request.request_id.clone();
    let call = client.send_logs(ReceiverStream::new(rx));
    let ((), sent) = tokio::join!(feed(runtime.as_ref(), &node, request, tx), call);
    if let Err(status) = sent {
        tracing::debug!(request = %id, %status, "log stream ended by the manager");
    }
}

/// Reads the attempt's output and sends it on `tx`: first a chunk naming
/// the request (so the manager knows the call at once, before any output),
/// then the lines, then the end or the error.
async fn feed<R: Runtime>(
    runtime: &R,
    node: &str,
    request: WorkerLogsRequest,
    tx: mpsc::Sender<LogsChunk>,
) {
    let first = LogsChunk {
        request_id: request.request_id.clone(),
        ..Default::default()
    };
    if tx.send(first).await.is_err() {
        return;
    }
    let Ok(task) = Uuid::parse_str(&request.task_id) else {
        let bad = error_chunk(
            tonic::Code::InvalidArgument,
            "task_id: not a task id".into(),
        );
        let _ = tx.send(bad).await;
        return;
    };
    let stream = request.stream();
    let options = LogsOptions {
        follow: request.follow,
        tail: request.tail,
        since: request
            .since
            .as_ref()
            .and_then(orch::time::std_duration)
            .and_then(|d| SystemTime::now().checked_sub(d)),
        stdout: stream != LogStream::Stderr,
        stderr: stream != LogStream::Stdout,
    };
    let name = container_name(task, request.attempt);
    let mut items = runtime.logs(&name, &options).ready_chunks(MAX_CHUNK_LINES);
    while let Some(batch) = items.next().await {
        let (chunk, last) = chunk_of(batch, |e| {
            explain(&e, node, &request.task_id, request.attempt)
        });
        if tx.send(chunk).await.is_err() || last {
            return;
        }
    }
}

/// One chunk of what the runtime read, and whether it is the last (it
/// holds the end or an error).
fn chunk_of(
    items: Vec<Result<LogItem, RuntimeError>>,
    explain: impl Fn(RuntimeError) -> (tonic::Code, String),
) -> (LogsChunk, bool) {
    let mut chunk = LogsChunk::default();
    for item in items {
        match item {
            Ok(LogItem::Line(line)) => chunk.lines.push(line),
            Ok(LogItem::Exited(code)) => {
                chunk.end = Some(end_of(code));
                return (chunk, true);
            }
            Err(e) => {
                let (code, message) = explain(e);
                chunk.error_code = code as i32;
                chunk.error_message = message;
                return (chunk, true);
            }
        }
    }
    (chunk, false)
}

/// A chunk that carries only an error.
fn error_chunk(code: tonic::Code, message: String) -> LogsChunk {
    LogsChunk {
        error_code: code as i32,
        error_message: message,
        ..Default::default()
    }
}

/// How an attempt whose container exited with `code` ended.
pub fn end_of(code: i32) -> LogEnd {
    let state = if code == 0 {
        TaskState::Completed
    } else {
        TaskState::Failed
    };
    LogEnd {
        state: state as i32,
        exit_code: Some(code),
        message: format!("exited with code {code}"),
    }
}

/// The status code and message a client gets for a runtime's error.
fn explain(e: &RuntimeError, node: &str, task: &str, attempt: u64) -> (tonic::Code, String) {
    match e {
        RuntimeError::NotFound(_) => (
            tonic::Code::NotFound,
            format!(
                "attempt {attempt} of task {task} is not kept on node {node} (its container was removed after its retention, or never ran there)"
            ),
        ),
        other => (
            tonic::Code::Unavailable,
            format!(
                "node {node} cannot read the output of attempt {attempt} of task {task}: {other}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use orch::v1::LogLine;

    use super::*;

    fn line(text: &str) -> Result<LogItem, RuntimeError> {
        Ok(LogItem::Line(LogLine {
            stream: LogStream::Stdout as i32,
            time: None,
            text: text.as_bytes().to_vec(),
        }))
    }

    fn explain_test(e: RuntimeError) -> (tonic::Code, String) {
        explain(&e, "worker-2", "t", 1)
    }

    #[test]
    fn the_end_says_how_the_attempt_ended() {
        let failed = end_of(3);
        assert_eq!(failed.state(), TaskState::Failed);
        assert_eq!(failed.exit_code, Some(3));
        assert_eq!(failed.message, "exited with code 3");
        assert_eq!(end_of(0).state(), TaskState::Completed);
    }

    #[test]
    fn a_chunk_ends_at_the_exit_or_an_error() {
        let (chunk, last) = chunk_of(vec![line("a"), line("b")], explain_test);
        assert!(!last);
        assert_eq!(chunk.lines.len(), 2);
        assert!(chunk.end.is_none() && chunk.error_code == 0);

        let (chunk, last) = chunk_of(vec![line("a"), Ok(LogItem::Exited(3))], explain_test);
        assert!(last);
        assert_eq!(chunk.lines.len(), 1);
        assert_eq!(chunk.end.and_then(|e| e.exit_code), Some(3));

        let gone = RuntimeError::NotFound("orch-t-1".into());
        let (chunk, last) = chunk_of(vec![line("a"), Err(gone), line("b")], explain_test);
        assert!(last);
        assert_eq!(chunk.lines.len(), 1, "nothing after the error");
        assert_eq!(chunk.error_code, tonic::Code::NotFound as i32);
        assert!(
            chunk
                .error_message
                .contains("attempt 1 of task t is not kept on node worker-2"),
            "{}",
            chunk.error_message
        );
    }
}
