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
    JoinRequest, JoinResponse, ManagerMessage, RegisterRequest, RegisterResponse,
    RenewCertificateRequest, RenewCertificateResponse, WorkerMessage, manager_message,
    worker_message,
};
use orch::validate;
use tokio::sync::mpsc;
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
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().open_session(node_id, session_id, tx)?;
        tracing::info!(node = %node_id, session = %session_id, "session opened");
        tokio::spawn(serve_session(
            self.shared.clone(),
            node_id,
            session_id,
            inbound,
        ));
        Ok(Response::new(Box::pin(outbound(rx))))
    }
}

/// The response stream of a session: each push as a message, and an end
/// the manager decided as an `UNAVAILABLE` status, after which the stream
/// ends. It also ends when the engine drops the session's sender.
fn outbound(
    rx: mpsc::UnboundedReceiver<Push>,
) -> impl Stream<Item = Result<ManagerMessage, Status>> + Send + 'static {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            Push::Assignments(a) => Some((
                Ok(ManagerMessage {
                    kind: Some(manager_message::Kind::Assignments(a)),
                }),
                Some(rx),
            )),
            Push::End(why) => Some((Err(Status::unavailable(why)), None)),
        }
    })
}

/// Reads a session's messages until the stream ends, then closes the session.
async fn serve_session(
    shared: Arc<Shared>,
    node_id: Uuid,
    session_id: Uuid,
    mut inbound: Streaming<WorkerMessage>,
) {
    while let Some(msg) = inbound.next().await {
        let kind = match msg {
            Ok(WorkerMessage { kind: Some(kind) }) => kind,
            Ok(WorkerMessage { kind: None }) => continue,
            Err(status) => {
                tracing::info!(node = %node_id, %status, "session stream failed");
                break;
            }
        };
        let current = match kind {
            worker_message::Kind::Heartbeat(hb) => {
                shared
                    .lock()
                    .heartbeat(node_id, session_id, hb.metrics.unwrap_or_default())
            }
            worker_message::Kind::Status(batch) => {
                shared.lock().report(node_id, session_id, batch.statuses)
            }
            worker_message::Kind::Open(_) => true,
        };
        if !current {
            tracing::info!(node = %node_id, session = %session_id, "message on a superseded session; closing it");
            break;
        }
    }
    shared.lock().close_session(node_id, session_id);
    tracing::info!(node = %node_id, session = %session_id, "session closed");
}
