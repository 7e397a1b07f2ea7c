//! How a worker runs containers: the [`Runtime`] trait, with the Docker
//! implementation ([`docker::DockerRuntime`], through bollard) used in
//! production and in end-to-end tests, and a simulated one
//! ([`sim::SimRuntime`]) for control-plane tests and benchmarks.
//!
//! A runtime knows containers and images, not the manager: it never sees the
//! session stream and never decides what should run. The executor above it calls
//! `start`/`stop` and reads `exits`; everything it reports comes from there.

pub mod docker;
pub mod sim;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use uuid::Uuid;

/// What a runtime needs to start one task attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// The cluster's id (label `orch.cluster`).
    pub cluster_id: String,
    /// This node's id (label `orch.node-id`).
    pub node_id: Uuid,
    /// The task (label `orch.task-id`).
    pub task_id: Uuid,
    /// The attempt (label `orch.attempt`).
    pub attempt: u64,
    /// What to run, already validated by the manager.
    pub spec: orch::v1::TaskSpec,
}

/// A container the runtime found, running or exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container id.
    pub container_id: String,
    /// From label `orch.task-id`.
    pub task_id: Uuid,
    /// From label `orch.attempt`.
    pub attempt: u64,
    /// Whether it is running now.
    pub running: bool,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
}

/// A container of this cluster and node exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The container id.
    pub container_id: String,
    /// From label `orch.task-id`.
    pub task_id: Uuid,
    /// From label `orch.attempt`.
    pub attempt: u64,
    /// The exit code.
    pub exit_code: i32,
}

/// What a command run inside a container did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code.
    pub exit_code: i64,
    /// The start of what it wrote to stdout and stderr (at most
    /// [`EXEC_OUTPUT_LIMIT`] bytes), for people: it ends up in a task's message.
    pub output: String,
}

/// Most bytes of a command's output an [`ExecOutput`] keeps.
pub const EXEC_OUTPUT_LIMIT: usize = 512;

/// Why a runtime call failed. The message is shown to people as the task's
/// message, so it says what went wrong in their terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present and could not be pulled.
    #[error("pulling image {image}: {reason}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// What the engine said.
        reason: String,
    },
    /// The container could not be created or started.
    #[error("starting container: {0}")]
    Start(String),
    /// The container does not exist (any more).
    #[error("container {0} not found")]
    NotFound(String),
    /// The engine failed or could not be reached.
    #[error("container engine: {0}")]
    Engine(String),
}

/// What [`Runtime::logs`] reads of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsOptions {
    /// Keep reading until the container exits, then end with
    /// [`LogItem::Exited`].
    pub follow: bool,
    /// Only the last this many lines; 0 for all.
    pub tail: u32,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Read the container's stdout.
    pub stdout: bool,
    /// Read the container's stderr.
    pub stderr: bool,
}

/// One item of a container's output, as [`Runtime::logs`] streams it.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// A line (or a piece of a long one), with its stream and time.
    Line(orch::v1::LogLine),
    /// The container exited with this code: the last item of a followed
    /// stream, read from the engine once its output ended.
    Exited(i32),
}

/// Runs task containers on this machine.
pub trait Runtime: Send + Sync + 'static {
    /// Makes sure the image is present (pulling it if not), creates the
    /// container with the spec's command, env, limits, ports and the orch labels,
    /// starts it, and returns its id. A container left over from an earlier
    /// try of the same attempt is replaced.
    fn start(
        &self,
        req: &StartRequest,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Stops a container: SIGTERM, then SIGKILL once `grace` has passed. The
    /// exited container is kept (its output matters); the executor removes
    /// it with [`Runtime::remove`] once its retention ends. A container that
    /// is already gone is not an error.
    fn stop(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes an exited container. A container that is already gone is not an error.
    fn remove(&self, container_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Every container, running or exited, labelled with this cluster and node.
    fn list(
        &self,
        cluster_id: &str,
        node_id: Uuid,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// A stream of container exits for this cluster and node, learnt from the
    /// engine's event stream (never by polling). Call it before starting
    /// anything so no exit is missed. If the engine's stream breaks, the
    /// runtime reconnects by itself; exits that happened in between are found by
    /// the caller through `list`.
    fn exits(&self, cluster_id: &str, node_id: Uuid) -> BoxStream<'static, Exit>;

    /// The output of a container (by id or name), oldest line first. With
    /// `follow`, the stream goes on until the container exits and then ends
    /// with [`LogItem::Exited`]; a container that has already exited gives
    /// what it wrote and its exit. [`RuntimeError::NotFound`] (as the only
    /// item) if there is no such container.
    ///
    /// The default refuses: a runtime that keeps no output says so.
    fn logs(
        &self,
        container: &str,
        options: &LogsOptions,
    ) -> BoxStream<'static, Result<LogItem, RuntimeError>> {
        let _ = (container, options);
        let refused = RuntimeError::Engine("this runtime keeps no container output".to_owned());
        Box::pin(futures::stream::iter([Err(refused)]))
    }

    /// The capacity of the machine this runtime simulates, or `None` (the
    /// default, and Docker's answer) when containers run on this host. A
    /// simulated node declares this capacity and sends no host metrics, so
    /// thousands of simulated workers in one process neither claim the host's
    /// capacity each nor each measure the host on every heartbeat.
    fn simulated_capacity(&self) -> Option<orch::v1::Resources> {
        None
    }

    /// The IP address at which this machine reaches a running container
    /// (its address on its network), for HTTP and TCP health probes; `None`
    /// if it has none.
    ///
    /// The default answers `None`: a runtime without real networking (a
    /// simulated one) has no address to probe, and such probes then fail
    /// with a message that says so.
    fn address(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<Option<IpAddr>, RuntimeError>> + Send {
        let _ = container_id;
        async { Ok(None) }
    }

    /// Runs `command` (program and arguments, no shell) inside a running
    /// container, as `docker exec` does, waits until it ends, and returns its
    /// exit code and the start of its output. For exec health probes; the
    /// caller bounds how long it waits.
    ///
    /// The default refuses: a runtime that cannot run commands in its
    /// containers fails exec probes with that reason.
    fn exec(
        &self,
        container_id: &str,
        command: &[String],
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send {
        let _ = (container_id, command);
        async {
            Err(RuntimeError::Engine(
                "this runtime cannot run commands in containers".to_owned(),
            ))
        }
    }
}

/// The labels of the container of a task attempt: the spec's own labels plus
/// orch's (`orch.managed`, `orch.cluster`, `orch.task-id`, `orch.node-id`,
/// `orch.attempt`), by which the worker finds its containers again.
pub fn container_labels(req: &StartRequest) -> HashMap<String, String> {
    use orch::labels;
    let mut l: HashMap<String, String> = req.spec.labels.clone().into_iter().collect();
    l.insert(labels::MANAGED.into(), "true".into());
    l.insert(labels::CLUSTER.into(), req.cluster_id.clone());
    l.insert(labels::TASK_ID.into(), req.task_id.to_string());
    l.insert(labels::NODE_ID.into(), req.node_id.to_string());
    l.insert(labels::ATTEMPT.into(), req.attempt.to_string());
    l
}
