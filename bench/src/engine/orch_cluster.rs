//! orch on the real engine: a manager and one worker with the production
//! `DockerRuntime`, as two `orchctl` child processes (`orchctl manager`,
//! `orchctl worker`: what a user runs) or, for tests, in this process.
//!
//! A measurement submits tasks and follows the manager's `WatchEvents`
//! stream until each is `running`, the moment a client of orch can know it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use orch::v1::{
    Event, NodeState, SubmitTaskRequest, SubmitTasksRequest, TaskSpec, TaskState,
    WatchEventsRequest, event,
};
use orch_worker::runtime::docker::DockerRuntime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::docker::{COMMAND, Engine};
use crate::Error;
use crate::cluster::{
    ManagerKind, connect, loopback_listener, orchctl_child, spawn_child, terminate,
};
use crate::measure::{Pid, proc_stats};

/// How long the manager and worker may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The manager and the worker, as tasks of this process or as children,
/// in the order they started.
#[derive(Default)]
struct Procs {
    in_process: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
    children: Vec<tokio::process::Child>,
}

/// A running manager and worker, with a client and its event stream.
pub struct OrchCluster {
    _dir: tempfile::TempDir,
    procs: Procs,
    client: orch::auth::Client,
    events: tonic::Streaming<Event>,
}

/// One task's way to `running`, each step from the moment before its
/// `SubmitTask` call.
#[derive(Debug, Clone, Copy)]
pub struct OneTask {
    /// Until the client received the `running` event.
    pub running_seen: Duration,
    /// Until the manager placed it (`scheduled`, manager's clock).
    pub scheduled: Duration,
    /// Until the manager heard the worker was `starting` it.
    pub starting: Duration,
    /// Until the manager heard it was `running`.
    pub running: Duration,
}

fn spec(image: &str, system: &str) -> TaskSpec {
    TaskSpec {
        image: image.to_string(),
        command: COMMAND.map(String::from).to_vec(),
        labels: Engine::labels(system),
        ..TaskSpec::default()
    }
}

/// The task event in `e`, if it is one.
fn task_event(e: Event) -> Option<(orch::v1::TaskEvent, Option<SystemTime>)> {
    let time = e.time.as_ref().map(orch::time::system_time);
    match e.kind {
        Some(event::Kind::Task(t)) => Some((t, time)),
        _ => None,
    }
}

/// The error for a task that ended before it ran.
fn ended(t: &orch::v1::TaskEvent) -> Error {
    Error::Check(format!(
        "task {} is {} before running: {}",
        t.task_id,
        orch::task_state::name(t.state()),
        t.message
    ))
}

impl OrchCluster {
    /// Starts a manager and one worker (`kind` says where), and waits until
    /// the worker's node is ready.
    ///
    /// # Errors
    /// If either cannot start, or the node is not ready within a minute.
    pub async fn start(kind: &ManagerKind) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("orch-bench-engine-")
            .tempdir()
            .map_err(|e| Error::Io(format!("temp dir: {e}")))?;
        let (listener, addr) = loopback_listener().await?;
        let url = format!("http://{addr}");
        let manager_dir = dir.path().join("manager");
        let mut procs = Procs::default();
        match kind {
            ManagerKind::InProcess => {
                let config = orch_manager::Config {
                    data_dir: Some(manager_dir),
                    // Measured without TLS, as before security came, so the
                    // figures compare with the earlier runs.
                    tls: false,
                    ..orch_manager::Config::default()
                };
                procs.spawn(|stopped| async move {
                    if let Err(e) = orch_manager::run(config, listener, stopped).await {
                        tracing::error!(error = %e, "manager failed");
                    }
                });
            }
            ManagerKind::Child(orchctl) => {
                // The child binds the port this process just found free.
                drop(listener);
                let defaults = orch_manager::Config::default();
                procs.children.push(spawn_child(
                    orchctl,
                    addr,
                    &manager_dir,
                    dir.path(),
                    defaults.heartbeat_period,
                    defaults.missed_heartbeats,
                    // Without TLS, as before security came.
                    None,
                    &[],
                )?);
            }
        }
        let mut client = connect(&crate::cluster::Access::insecure(url.clone())).await?;
        // Subscribe before the worker starts, so its ready event is not missed.
        let events = client
            .watch_events(WatchEventsRequest::default())
            .await?
            .into_inner();
        let worker_dir = dir.path().join("worker");
        match kind {
            ManagerKind::InProcess => {
                let runtime = DockerRuntime::connect()
                    .await
                    .map_err(|e| Error::Io(format!("worker: {e}")))?;
                let config = orch_worker::Config {
                    manager: url,
                    name: "bench".into(),
                    address: String::new(),
                    labels: HashMap::new(),
                    milli_cpus: None,
                    memory_bytes: None,
                    disk_bytes: None,
                    data_dir: Some(worker_dir),
                    join_token: None,
                    insecure: true,
                    retention: Default::default(),
                    metrics_listen: None,
                };
                procs.spawn(|stopped| async move {
                    if let Err(e) = orch_worker::run(config, Arc::new(runtime), stopped).await {
                        tracing::error!(error = %e, "worker failed");
                    }
                });
            }
            ManagerKind::Child(orchctl) => {
                let args = [
                    "--insecure".into(),
                    "--manager".into(),
                    url,
                    "worker".into(),
                    "--data-dir".into(),
                    worker_dir.display().to_string(),
                    "--name".into(),
                    "bench".into(),
                ];
                let log = dir.path().join("worker.log");
                procs.children.push(orchctl_child(orchctl, &args, &log)?);
            }
        }
        let mut cluster = Self {
            _dir: dir,
            procs,
            client,
            events,
        };
        let events = &mut cluster.events;
        let ready = async move {
            while let Some(e) = events.message().await? {
                if let Some(event::Kind::Node(n)) = e.kind
                    && n.state() == NodeState::Ready
                {
                    return Ok(());
                }
            }
            Err(Error::Manager("the event stream ended".into()))
        };
        let waited = tokio::time::timeout(START_DEADLINE, ready).await;
        let failed = match waited {
            Ok(Ok(())) => return Ok(cluster),
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout(format!(
                "the worker's node not ready after {START_DEADLINE:?}"
            )),
        };
        cluster.procs.stop().await;
        Err(failed)
    }

    /// Submits `n` tasks of `image` in one `SubmitTasks` call and waits
    /// until all run. Returns, for each task, how long after the call its
    /// `running` event reached this client.
    ///
    /// # Errors
    /// If the call fails, a task ends before running, or not all run within
    /// `timeout`.
    pub async fn run_many(
        &mut self,
        n: usize,
        image: &str,
        system: &str,
        timeout: Duration,
    ) -> Result<Vec<Duration>, Error> {
        let specs = vec![spec(image, system); n];
        let t0 = tokio::time::Instant::now();
        let submit = self.client.submit_tasks(SubmitTasksRequest { specs });
        let events = &mut self.events;
        let follow = async move {
            tokio::pin!(submit);
            let mut ids: Option<HashSet<String>> = None;
            let mut running = HashMap::with_capacity(n);
            let mut failed = HashMap::new();
            loop {
                if let Some(ids) = &ids {
                    if let Some(t) = ids.iter().find_map(|id| failed.get(id)) {
                        return Err(ended(t));
                    }
                    if ids.iter().all(|id| running.contains_key(id)) {
                        return Ok(ids
                            .iter()
                            .filter_map(|id| running.get(id))
                            .copied()
                            .collect());
                    }
                }
                tokio::select! {
                    reply = &mut submit, if ids.is_none() => {
                        let tasks = reply?.into_inner().tasks;
                        ids = Some(tasks.into_iter().map(|t| t.id).collect());
                    }
                    e = events.message() => {
                        let e = e?.ok_or_else(|| Error::Manager("the event stream ended".into()))?;
                        let Some((t, _)) = task_event(e) else { continue };
                        match t.state() {
                            TaskState::Running => {
                                running.entry(t.task_id).or_insert_with(|| t0.elapsed());
                            }
                            s if orch::task_state::is_terminal(s) => {
                                failed.insert(t.task_id.clone(), t);
                            }
                            _ => {}
                        }
                    }
                }
            }
        };
        tokio::time::timeout(timeout, follow).await.map_err(|_| {
            Error::Timeout(format!("not all of {n} tasks running after {timeout:?}"))
        })?
    }

    /// Submits one task with `SubmitTask` and waits until it runs.
    ///
    /// # Errors
    /// If the call fails, the task ends before running, or does not run
    /// within `timeout`.
    pub async fn run_one(
        &mut self,
        image: &str,
        system: &str,
        timeout: Duration,
    ) -> Result<OneTask, Error> {
        let wall0 = SystemTime::now();
        let t0 = tokio::time::Instant::now();
        let submit = self.client.submit_task(SubmitTaskRequest {
            spec: Some(spec(image, system)),
        });
        let events = &mut self.events;
        let follow = async move {
            tokio::pin!(submit);
            let mut id = None;
            // The task's events, with receipt time, until its id is known.
            let mut seen = Vec::new();
            let (mut scheduled, mut starting) = (None, None);
            loop {
                if let Some(id) = &id {
                    for (t, at, received) in seen.drain(..) {
                        let t: orch::v1::TaskEvent = t;
                        if t.task_id != *id {
                            continue;
                        }
                        let since = |at: Option<SystemTime>| {
                            at.and_then(|a| a.duration_since(wall0).ok())
                                .unwrap_or_default()
                        };
                        match t.state() {
                            TaskState::Scheduled => scheduled = Some(since(at)),
                            TaskState::Starting => starting = Some(since(at)),
                            TaskState::Running => {
                                return Ok(OneTask {
                                    running_seen: received,
                                    scheduled: scheduled.unwrap_or_default(),
                                    starting: starting.unwrap_or_default(),
                                    running: since(at),
                                });
                            }
                            s if orch::task_state::is_terminal(s) => return Err(ended(&t)),
                            _ => {}
                        }
                    }
                }
                tokio::select! {
                    reply = &mut submit, if id.is_none() => {
                        let task = reply?.into_inner().task;
                        id = Some(task.map(|t| t.id).unwrap_or_default());
                    }
                    e = events.message() => {
                        let e = e?.ok_or_else(|| Error::Manager("the event stream ended".into()))?;
                        let received = t0.elapsed();
                        if let Some((t, at)) = task_event(e) {
                            seen.push((t, at, received));
                        }
                    }
                }
            }
        };
        tokio::time::timeout(timeout, follow)
            .await
            .map_err(|_| Error::Timeout(format!("the task not running after {timeout:?}")))?
    }

    /// The client and the event stream (subscribed before the worker
    /// started), for measurements of other calls than tasks'.
    pub fn parts(&mut self) -> (&mut orch::auth::Client, &mut tonic::Streaming<Event>) {
        (&mut self.client, &mut self.events)
    }

    /// The cpu time the manager and worker processes have used so far, if
    /// they are child processes (in process, theirs cannot be told apart
    /// from the harness's).
    pub fn cpu(&self) -> Option<Duration> {
        if self.procs.children.is_empty() {
            return None;
        }
        self.procs
            .children
            .iter()
            .map(|c| proc_stats(Pid::Other(c.id()?)).map(|s| s.cpu))
            .sum()
    }

    /// Stops the worker, then the manager. Their containers stay: the
    /// scenario removes them.
    pub async fn shutdown(mut self) {
        self.procs.stop().await;
    }
}

impl Procs {
    /// Runs `run` (given the future that resolves on stop) as a task of
    /// this process.
    fn spawn<F, Fut>(&mut self, run: F)
    where
        F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = Box::pin(async {
            let _ = stopped.await;
        });
        self.in_process.push((stop, tokio::spawn(run(stopped))));
    }

    /// Stops everything, the last started first: the worker, then the
    /// manager.
    async fn stop(&mut self) {
        while let Some((stop, task)) = self.in_process.pop() {
            let _ = stop.send(());
            let _ = task.await;
        }
        while let Some(mut child) = self.children.pop() {
            terminate(&mut child).await;
        }
    }
}
