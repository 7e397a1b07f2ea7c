//! The `Dispatcher` gRPC service: worker registration and sessions.
//!
//! Only this module touches a worker's stream. It turns incoming worker
//! messages into calls on the [`Engine`](crate::engine::Engine) and turns what
//! the engine pushes on the session's channel ([`sessions::Push`]) into the
//! stream's messages; it makes no decision itself. [`sessions`] keeps the
//! sessions themselves and the liveness deadlines.

pub mod sessions;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use orch::v1::dispatcher_server::Dispatcher;
use orch::v1::{
    ManagerMessage, RegisterRequest, RegisterResponse, WorkerMessage, manager_message,
    worker_message,
};
use orch::validate;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use self::sessions::Push;
use crate::{Error, Shared};

/// How long a new stream may take to send its `open` message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Dispatcher` service over the manager's shared state.
pub struct DispatcherApi {
    shared: Arc<Shared>,
}

impl DispatcherApi {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type ManagerStream = Pin<Box<dyn Stream<Item = Result<ManagerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for DispatcherApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        validate::register(&req).map_err(Error::from)?;
        let (reply, durable) = self.shared.lock().register(req);
        durable.wait().await.map_err(Error::from)?;
        tracing::info!(node = %reply.node_id, "worker registered");
        Ok(Response::new(reply))
    }

    type SessionStream = ManagerStream;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
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
        let session_id = validate::id("open.session_id", &open.session_id).map_err(Error::from)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().open_session(node_id, session_id, tx)?;
        tracing::info!(node = %node_id, session = %session_id, "session opened");
        let (ending, ended) = oneshot::channel();
        tokio::spawn(serve_session(
            self.shared.clone(),
            node_id,
            session_id,
            inbound,
            ended,
        ));
        Ok(Response::new(Box::pin(outbound(rx, ending))))
    }
}

/// The response stream of a session: each push as a message, and an end
/// the manager decided as an `UNAVAILABLE` status, after which the stream
/// ends. It also ends when the engine drops the session's sender. `ending`
/// is dropped with it, which tells `serve_session` to stop reading.
fn outbound(
    rx: mpsc::UnboundedReceiver<Push>,
    ending: oneshot::Sender<()>,
) -> impl Stream<Item = Result<ManagerMessage, Status>> + Send + 'static {
    futures::stream::unfold(Some((rx, ending)), |state| async move {
        let (mut rx, ending) = state?;
        match rx.recv().await? {
            Push::Assignments(a) => Some((
                Ok(ManagerMessage {
                    kind: Some(manager_message::Kind::Assignments(a)),
                }),
                Some((rx, ending)),
            )),
            Push::End(why) => Some((Err(Status::unavailable(why)), None)),
        }
    })
}

/// Hands one message of an open session to the engine. Returns false if
/// the session is no longer current.
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
        worker_message::Kind::Status(batch) => {
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
