//! The `Dispatcher` gRPC service: worker registration and sessions.
//!
//! Only this module touches a worker's stream. It turns incoming worker
//! messages into calls on the [`Engine`](crate::engine::Engine) and turns what
//! the engine pushes on the session's channel ([`sessions::Push`]) into the
//! stream's messages; it makes no decision itself. [`sessions`] keeps the
//! sessions themselves and the liveness deadlines.
//!
//! No message down a session is larger than about
//! [`MAX_CHUNK_BYTES`](crate::limits::MAX_CHUNK_BYTES) plus one assignment:
//! [`chunks`] cuts a large push into several, and a full set's parts say
//! that more follows (`Assignments.more`). `Register` is limited to a rate
//! ([`TokenBucket`]): a call over it is refused with `RESOURCE_EXHAUSTED`,
//! at once.

pub mod sessions;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use orch::v1::dispatcher_server::Dispatcher;
use orch::v1::{
    Assignments, CancelLogs, JoinRequest, JoinResponse, LogsChunk, ManagerMessage, RegisterRequest,
    RegisterResponse, RenewCertificateRequest, RenewCertificateResponse, SendLogsResponse,
    WorkerMessage, manager_message, worker_message,
};
use orch::validate;
use prost::Message;
use tokio::sync::{oneshot, watch};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use self::sessions::{Push, SessionRx};
use crate::limits::{Limits, MAX_CHUNK_BYTES, TokenBucket};
use crate::{Error, Shared};

/// How long a new stream may take to send its `open` message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Dispatcher` service over the manager's shared state.
pub struct DispatcherApi {
    shared: Arc<Shared>,
    /// `Register`'s rate limit.
    registers: Mutex<TokenBucket>,
    limits: Limits,
}

impl DispatcherApi {
    /// A service over `shared`, `Register` limited as `limits` say.
    pub fn new(shared: Arc<Shared>, limits: &Limits) -> Self {
        let bucket = TokenBucket::new(
            limits.registers_per_second,
            limits.register_burst,
            shared.now().at,
        );
        Self {
            shared,
            registers: Mutex::new(bucket),
            limits: *limits,
        }
    }

    /// Takes a place for one `Register` call.
    fn admit_register(&self) -> Result<(), Status> {
        let now = self.shared.now().at;
        let taken = match self.registers.lock() {
            Ok(mut bucket) => bucket.take(now),
            Err(poisoned) => poisoned.into_inner().take(now),
        };
        taken.map_err(|wait| {
            Status::resource_exhausted(format!(
                "Register is limited to {} calls a second (bursts of {}); retry in {} ms",
                self.limits.registers_per_second,
                self.limits.register_burst,
                wait.as_millis().max(1)
            ))
        })
    }
}

type ManagerStream = Pin<Box<dyn Stream<Item = Result<ManagerMessage, Status>> + Send>>;

/// Longest certificate request a worker may send.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The node a caller is, from its certificate; `None` on a manager without
/// TLS, where the request's own node id is taken at its word.
struct Caller {
    node: Option<(Uuid, std::time::SystemTime)>,
}

impl DispatcherApi {
    /// Who is calling: the node its certificate names, refused if there is
    /// no certificate (with TLS on) or the node was removed.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if !self.shared.tls() {
            return Ok(Caller { node: None });
        }
        let certs = request.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
            Status::unauthenticated(
                "this call needs the node's certificate: start the worker with --join-token TOKEN once (`orchctl join-token worker` prints one)",
            )
        })?;
        let (node, expires) =
            crate::auth::ca::node_of(&certs[0]).map_err(Status::unauthenticated)?;
        if self.shared.lock().is_removed(node) {
            return Err(Status::permission_denied(format!(
                "node {node} was removed from the cluster and its certificate revoked; join again with a new join token and an empty data directory"
            )));
        }
        Ok(Caller {
            node: Some((node, expires)),
        })
    }

    /// Signs a node certificate for `csr`.
    fn sign(&self, csr: &[u8], node: Uuid) -> Result<crate::auth::ca::Signed, Status> {
        if csr.is_empty() || csr.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "csr: a DER certificate request of 1 to {MAX_CSR_BYTES} bytes is required"
            )));
        }
        let auth = self.shared.auth();
        auth.ca()
            .sign_node(csr, node, self.shared.now().wall, auth.node_cert_lifetime())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// A node id in a request that is not the caller's own.
fn not_yours(field: &str, asked: &str, node: Uuid) -> Status {
    Status::permission_denied(format!(
        "{field}: this certificate is node {node}'s; it cannot speak for node {asked:.40}"
    ))
}

#[tonic::async_trait]
impl Dispatcher for DispatcherApi {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        let node = Uuid::now_v7();
        // The request is checked before a use of the token is spent.
        if req.csr.is_empty() || req.csr.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "csr: a DER certificate request of 1 to {MAX_CSR_BYTES} bytes is required"
            )));
        }
        let signed = self.sign(&req.csr, node)?;
        let writes = self
            .shared
            .auth()
            .use_join_token(&req.token, self.shared.now().wall)?;
        self.shared.persist(writes).await?;
        tracing::info!(node = %node, "a worker joined; node certificate issued");
        Ok(Response::new(JoinResponse {
            node_id: node.to_string(),
            certificate: signed.pem,
            ca_certificate: self.shared.auth().ca().cert_pem().to_owned(),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let caller = self.caller(&request)?;
        let Some((node, _)) = caller.node else {
            return Err(Status::failed_precondition(
                "this manager runs without TLS (--insecure): there is no certificate to renew",
            ));
        };
        let signed = self.sign(&request.into_inner().csr, node)?;
        self.shared
            .lock()
            .set_certificate_expiry(node, signed.expires_at);
        tracing::info!(node = %node, "node certificate renewed");
        Ok(Response::new(RenewCertificateResponse {
            certificate: signed.pem,
            ca_certificate: self.shared.auth().ca().cert_pem().to_owned(),
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.admit_register()?;
        let caller = self.caller(&request)?;
        let mut req = request.into_inner();
        if let Some((node, _)) = caller.node {
            if !req.node_id.is_empty() && req.node_id != node.to_string() {
                return Err(not_yours("node_id", &req.node_id, node));
            }
            req.node_id = node.to_string();
        }
        validate::register(&req).map_err(Error::from)?;
        let (reply, durable) = {
            let mut engine = self.shared.lock();
            let (reply, durable) = engine.register(req);
            if let Some((node, expires)) = caller.node {
                engine.set_certificate_expiry(node, expires);
            }
            (reply, durable)
        };
        durable.wait().await.map_err(Error::from)?;
        tracing::info!(node = %reply.node_id, "worker registered");
        Ok(Response::new(reply))
    }

    type SessionStream = ManagerStream;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = self.caller(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no open message within 10s"))??;
        let Some(WorkerMessage {
            kind: Some(worker_message::Kind::Open(open)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "kind: the first message of a session must be open",
            ));
        };
        let node_id = validate::id("open.node_id", &open.node_id).map_err(Error::from)?;
        if let Some((node, _)) = caller.node
            && node != node_id
        {
            return Err(not_yours("open.node_id", &open.node_id, node));
        }
        let session_id = validate::id("open.session_id", &open.session_id).map_err(Error::from)?;
        let (tx, rx) = sessions::channel();
        let (open, gate) = {
            let mut engine = self.shared.lock();
            engine.open_session(node_id, session_id, tx)?;
            (engine.metrics().session_open(), engine.session_gate())
        };
        tracing::info!(node = %node_id, session = %session_id, "session opened");
        let (ending, ended) = oneshot::channel();
        tokio::spawn(serve_session(
            self.shared.clone(),
            node_id,
            session_id,
            inbound,
            ended,
            open,
        ));
        Ok(Response::new(Box::pin(outbound(rx, ending, gate))))
    }

    async fn send_logs(
        &self,
        request: Request<Streaming<LogsChunk>>,
    ) -> Result<Response<SendLogsResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no first message within 10s"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first message"))?;
        let id = validate::id("request_id", &first.request_id).map_err(Error::from)?;
        let tx = self
            .shared
            .lock()
            .claim_logs(id, caller.node.map(|(node, _)| node))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "request_id: no log request {id} waits for this node's output"
                ))
            })?;
        let mut next = Some(first);
        while let Some(chunk) = next {
            // The client went away (or its stream ended): stop reading, and
            // the worker's call ends.
            if tx.send(chunk).await.is_err() {
                break;
            }
            // A worker with nothing to say for a while must not keep the
            // call (and a graceful shutdown) once nobody waits for it.
            next = tokio::select! {
                m = inbound.message() => m?,
                () = tx.closed() => None,
            };
        }
        Ok(Response::new(SendLogsResponse {}))
    }
}

/// What a session's response stream waits on before it sends an
/// assignment: the engine's jobs made durable, and whether the manager is
/// stopping (then a push whose writes are not durable is never sent).
pub struct Gate {
    /// The highest engine job durable (`crate::persist::Committer::marks`).
    pub marks: watch::Receiver<u64>,
    /// True once the manager closes its streams (`Engine::close_streams`).
    pub closing: watch::Receiver<bool>,
}

impl Gate {
    /// Waits until job `after` is durable. False if the manager stops first,
    /// or its store writer is gone: the change may never be stored.
    async fn passes(&mut self, after: u64) -> bool {
        // `wait_for` answers at once when the job is durable already.
        tokio::select! {
            biased;
            stored = self.marks.wait_for(|&m| m >= after) => stored.is_ok(),
            _ = self.closing.wait_for(|&c| c) => false,
        }
    }
}

/// The response stream of a session: each push as one message or more
/// ([`chunks`]), and an end the manager decided as an `UNAVAILABLE` status,
/// after which the stream ends. An assignment goes out only once the
/// writes behind it are durable (`gate`), in the order pushed: a worker
/// never acts on a change the store may still lose. The stream also ends
/// when the engine drops the session's sender. `ending` is dropped with it,
/// which tells `serve_session` to stop reading.
fn outbound(
    rx: SessionRx,
    ending: oneshot::Sender<()>,
    gate: Gate,
) -> impl Stream<Item = Result<ManagerMessage, Status>> + Send + 'static {
    let message = |a| ManagerMessage {
        kind: Some(manager_message::Kind::Assignments(a)),
    };
    let other = |kind| ManagerMessage { kind: Some(kind) };
    futures::stream::unfold(
        (Some((rx, ending, gate)), VecDeque::new()),
        move |(open, mut parts)| async move {
            if let Some(part) = parts.pop_front() {
                return Some((Ok(message(part)), (open, parts)));
            }
            let (mut rx, ending, mut gate) = open?;
            let kind = match rx.recv().await? {
                Push::Assignments { assignments, after } => {
                    if !gate.passes(after).await {
                        return Some((
                            Err(Status::unavailable(
                                "the manager stopped before it stored what it would have sent; \
                                 register again",
                            )),
                            (None, parts),
                        ));
                    }
                    parts.extend(chunks(assignments, MAX_CHUNK_BYTES));
                    let first = parts.pop_front()?;
                    return Some((Ok(message(first)), (Some((rx, ending, gate)), parts)));
                }
                Push::Logs(request) => manager_message::Kind::Logs(request),
                Push::CancelLogs(request_id) => {
                    manager_message::Kind::CancelLogs(CancelLogs { request_id })
                }
                Push::End(why) => return Some((Err(Status::unavailable(why)), (None, parts))),
            };
            Some((Ok(other(kind)), (Some((rx, ending, gate)), parts)))
        },
    )
}

/// `a` as messages of at most about `max` encoded bytes each: each holds at
/// least one assignment or stop, so one larger than `max` goes alone. The
/// parts of a full set are each `full`, all but the last with `more`; the
/// parts of a change are changes. Always at least one message, so an empty
/// full set is sent too.
fn chunks(a: Assignments, max: usize) -> Vec<Assignments> {
    let full = a.full;
    let empty = || Assignments {
        full,
        ..Default::default()
    };
    let mut parts = vec![empty()];
    let mut size = 0;
    // The index of the part with room for a field of `len` bytes (its tag,
    // its length and itself), a new one if the last is full.
    let mut room = |parts: &mut Vec<Assignments>, len: usize| {
        let len = 1 + prost::length_delimiter_len(len) + len;
        if size > 0 && size + len > max {
            parts.push(empty());
            size = 0;
        }
        size += len;
        parts.len() - 1
    };
    for run in a.run {
        let i = room(&mut parts, run.encoded_len());
        parts[i].run.push(run);
    }
    for stop in a.stop {
        let i = room(&mut parts, stop.encoded_len());
        parts[i].stop.push(stop);
    }
    let last = parts.len() - 1;
    for part in &mut parts[..last] {
        part.more = full;
    }
    parts
}

/// Hands one message of an open session to the engine. Returns false if
/// the session is no longer current, or sent a report over the limits (the
/// session is then closed).
pub(crate) fn receive(
    shared: &Shared,
    node_id: Uuid,
    session_id: Uuid,
    kind: worker_message::Kind,
) -> bool {
    match kind {
        worker_message::Kind::Heartbeat(hb) => {
            shared
                .lock()
                .heartbeat(node_id, session_id, hb.metrics.unwrap_or_default())
        }
        worker_message::Kind::Status(mut batch) => {
            if let Err(e) = validate::statuses(&mut batch.statuses) {
                tracing::warn!(node = %node_id, error = %e, "report refused; closing the session");
                return false;
            }
            shared.lock().report(node_id, session_id, batch.statuses)
        }
        worker_message::Kind::Open(_) => true,
    }
}

/// Reads a session's messages until the stream ends, or the manager ended
/// the session (`ended`: the response stream is gone), then closes the
/// session. Without the second, a worker that never closes its side would
/// keep the stream, and a graceful shutdown of the server, waiting forever.
async fn serve_session(
    shared: Arc<Shared>,
    node_id: Uuid,
    session_id: Uuid,
    mut inbound: Streaming<WorkerMessage>,
    mut ended: oneshot::Receiver<()>,
    // Counts the session as open until it closes.
    _open: crate::metrics::SessionOpen,
) {
    loop {
        let msg = tokio::select! {
            msg = inbound.next() => msg,
            _ = &mut ended => None,
        };
        let Some(msg) = msg else { break };
        let kind = match msg {
            Ok(WorkerMessage { kind: Some(kind) }) => kind,
            Ok(WorkerMessage { kind: None }) => continue,
            Err(status) => {
                tracing::info!(node = %node_id, %status, "session stream failed");
                break;
            }
        };
        if !receive(&shared, node_id, session_id, kind) {
            tracing::info!(node = %node_id, session = %session_id, "message on a superseded session; closing it");
            break;
        }
    }
    shared.lock().close_session(node_id, session_id);
    tracing::info!(node = %node_id, session = %session_id, "session closed");
}

#[cfg(test)]
mod tests {
    use orch::v1::{TaskAssignment, TaskSpec, TaskStop};

    use super::*;
    use crate::limits::MAX_MESSAGE_BYTES;

    fn assignment(n: usize, bytes: usize) -> TaskAssignment {
        TaskAssignment {
            task_id: format!("t{n}"),
            attempt: 1,
            spec: Some(TaskSpec {
                image: "i".into(),
                command: vec!["x".repeat(bytes)],
                ..Default::default()
            }),
        }
    }

    fn full_set(run: Vec<TaskAssignment>) -> Assignments {
        Assignments {
            full: true,
            run,
            stop: vec![],
            more: false,
        }
    }

    fn ids(parts: &[Assignments]) -> Vec<String> {
        parts
            .iter()
            .flat_map(|p| p.run.iter().map(|r| r.task_id.clone()))
            .collect()
    }

    #[test]
    fn a_large_full_set_is_cut_into_parts_that_say_more_follows() {
        let run: Vec<_> = (0..100).map(|n| assignment(n, 100_000)).collect();
        let want: Vec<String> = run.iter().map(|r| r.task_id.clone()).collect();
        let parts = chunks(full_set(run), 1 << 20);
        assert_eq!(parts.len(), 10, "ten of about 100 KB per MiB");
        assert_eq!(ids(&parts), want, "every assignment once, in order");
        for (i, part) in parts.iter().enumerate() {
            assert!(part.full);
            assert_eq!(part.more, i + 1 < parts.len());
            assert!(part.encoded_len() <= 1 << 20, "part {i}");
        }
    }

    #[test]
    fn a_full_set_of_the_largest_specs_stays_under_the_message_limit() {
        let spec = orch::limits::MAX_SPEC_BYTES - 64;
        let run: Vec<_> = (0..40).map(|n| assignment(n, spec)).collect();
        let parts = chunks(full_set(run), MAX_CHUNK_BYTES);
        assert_eq!(ids(&parts).len(), 40);
        for part in &parts {
            let message = ManagerMessage {
                kind: Some(manager_message::Kind::Assignments(part.clone())),
            };
            assert!(message.encoded_len() < MAX_MESSAGE_BYTES);
        }
    }

    #[test]
    fn a_small_or_empty_push_is_one_message_and_a_large_change_several() {
        let empty = Assignments {
            full: true,
            ..Default::default()
        };
        assert_eq!(chunks(empty.clone(), 100), vec![empty]);
        let stops: Vec<_> = (0..10)
            .map(|n| TaskStop {
                task_id: format!("t{n}"),
                attempt: 1,
                grace_period: None,
            })
            .collect();
        let change = Assignments {
            full: false,
            run: vec![assignment(0, 200)],
            stop: stops,
            more: false,
        };
        let parts = chunks(change.clone(), 1 << 20);
        assert_eq!(parts, vec![change.clone()]);
        // One larger than the size goes alone; a change's parts are changes.
        let parts = chunks(change, 100);
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].run.len(), parts[0].stop.len()), (1, 0));
        assert!(parts.iter().all(|p| !p.full && !p.more));
        let stops: usize = parts.iter().map(|p| p.stop.len()).sum();
        assert_eq!(stops, 10);
    }

    fn change(task: &str) -> Push {
        Push::Assignments {
            assignments: Assignments {
                run: vec![TaskAssignment {
                    task_id: task.into(),
                    attempt: 1,
                    spec: None,
                }],
                ..Default::default()
            },
            after: 0,
        }
    }

    fn gated(task: &str, after: u64) -> Push {
        match change(task) {
            Push::Assignments { assignments, .. } => Push::Assignments { assignments, after },
            other => other,
        }
    }

    fn task_of(item: Option<Result<ManagerMessage, Status>>) -> String {
        match item {
            Some(Ok(ManagerMessage {
                kind: Some(manager_message::Kind::Assignments(a)),
            })) => a.run[0].task_id.clone(),
            other => panic!("expected assignments, got {other:?}"),
        }
    }

    /// A session's stream with `durable` jobs durable so far: its sender,
    /// the stream, and the senders of its gate.
    fn session_out(
        durable: u64,
    ) -> (
        sessions::SessionTx,
        ManagerStream,
        watch::Sender<u64>,
        watch::Sender<bool>,
    ) {
        let (tx, rx) = sessions::channel();
        let (ending, _ended) = oneshot::channel();
        let (marks, marks_rx) = watch::channel(durable);
        let (closing, closing_rx) = watch::channel(false);
        let gate = Gate {
            marks: marks_rx,
            closing: closing_rx,
        };
        (tx, Box::pin(outbound(rx, ending, gate)), marks, closing)
    }

    #[tokio::test]
    async fn an_assignment_waits_until_its_job_is_durable_and_keeps_its_order() {
        let (tx, mut out, marks, _closing) = session_out(2);
        tx.try_send(gated("a", 2)).expect("room");
        tx.try_send(gated("b", 3)).expect("room");
        // Behind `b`, though it needs nothing: the order is the engine's.
        tx.try_send(change("c")).expect("room");
        assert_eq!(task_of(out.next().await), "a", "job 2 is durable");
        assert!(
            futures::poll!(out.next()).is_pending(),
            "job 3 is not durable yet"
        );
        marks.send_replace(3);
        assert_eq!(task_of(out.next().await), "b");
        assert_eq!(task_of(out.next().await), "c");
    }

    #[tokio::test]
    async fn a_stopping_manager_never_sends_what_it_did_not_store() {
        let (tx, mut out, _marks, closing) = session_out(1);
        tx.try_send(gated("a", 2)).expect("room");
        drop(tx);
        assert!(futures::poll!(out.next()).is_pending());
        closing.send_replace(true);
        match out.next().await {
            Some(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(status.message().contains("register again"), "{status}");
            }
            other => panic!("expected the end of the session, got {other:?}"),
        }
        assert!(out.next().await.is_none(), "and nothing after it");
    }
}
