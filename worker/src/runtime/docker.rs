//! [`DockerRuntime`]: the [`Runtime`] that runs task containers on a Docker
//! engine through bollard.
//!
//! It owns everything that speaks the Engine API: image pulls, container
//! create/start/stop/remove, listing by label and the event stream that reports
//! exits. It turns every bollard error into a [`RuntimeError`] in one place
//! ([`runtime_error`]), so callers never see bollard types. It may not decide
//! what should run or talk to the manager, and it touches only containers that
//! carry orch's labels (or the name orch gives a task attempt).
//!
//! The engine on our machines is Debian's Docker 20.10 (API 1.41), older than
//! the API bollard speaks by default, so [`DockerRuntime::connect`] negotiates
//! the version before anything else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, EventMessage, HostConfig, HostConfigLogConfig,
};
use bollard::models::{PortBinding, PortMap};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use orch::labels;
use orch::v1::{LogLine, LogStream, Protocol};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{
    ContainerInfo, EXEC_OUTPUT_LIMIT, ExecOutput, Exit, LogItem, LogsOptions, Runtime,
    RuntimeError, StartRequest, container_labels,
};

/// How many exits may wait in the channel before the event reader waits for
/// the agent; exits are rare and small, this only smooths bursts.
const EXIT_CHANNEL_CAPACITY: usize = 64;

/// The first pause before reconnecting to a broken event stream.
const EVENTS_BACKOFF_START: Duration = Duration::from_millis(100);

/// The longest pause between reconnects: short, because exits keep happening
/// while we are not listening and the agent waits on them.
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// Extra time a stop request gets beyond its grace period: the engine answers
/// only once the container is dead, after SIGKILL and cleanup.
const STOP_REQUEST_SLACK: Duration = Duration::from_secs(30);

/// How the engine rotates each container's log (json-file driver): at most
/// `max_files` files of `max_size` bytes, the oldest dropped, so that no
/// task fills the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// The size at which a log file is rotated, in bytes.
    pub max_size: u64,
    /// How many log files a container keeps, the current one included.
    pub max_files: u32,
}

impl Default for LogRotation {
    /// 10 MiB × 3.
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

/// Runs task containers on the local Docker engine. Cloning is cheap: clones
/// share one connection pool.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    rotation: LogRotation,
}

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST` (or the local socket) and
    /// agrees on an API version with it.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Engine`] if the engine cannot be reached or does not
    /// answer the version request.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| runtime_error(Call::Engine, e))?
            .negotiate_version()
            .await
            .map_err(|e| runtime_error(Call::Engine, e))?;
        tracing::debug!(api_version = %docker.client_version(), "connected to the Docker engine");
        Ok(Self::from_client(docker))
    }

    /// Wraps a client that is already connected (and negotiated).
    pub fn from_client(docker: Docker) -> Self {
        Self {
            docker,
            rotation: LogRotation::default(),
        }
    }

    /// The same runtime, rotating the logs of the containers it creates as
    /// `rotation` says (instead of [`LogRotation::default`]).
    #[must_use]
    pub fn with_log_rotation(mut self, rotation: LogRotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// The underlying bollard client, for callers (tests, image builds) that
    /// need engine calls the [`Runtime`] trait does not offer.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure `image` is present, pulling it if it is not.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(runtime_error(Call::Engine, e)),
        }
        tracing::info!(image, "pulling image");
        let (from_image, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(from_image);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let mut progress = self.docker.create_image(Some(options.build()), None, None);
        // The pull is done only when the engine closes the stream; errors can
        // arrive as the first response or in the middle of it.
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => tracing::trace!(image, status = ?info.status, "pull progress"),
                Err(e) => return Err(runtime_error(Call::Pull(image), e)),
            }
        }
        Ok(())
    }

    /// Creates the attempt's container. In the common case that is one call
    /// to the engine: the image is looked for (and pulled) only when create
    /// says it is missing (404), and a container of the same name is removed
    /// only when create says the name is taken (409). Such a container is
    /// left over from an earlier try of the same attempt that crashed between
    /// create and reporting; it is ours and must go.
    async fn create(&self, req: &StartRequest) -> Result<String, RuntimeError> {
        let name = container_name(req.task_id, req.attempt);
        let (mut pulled, mut removed) = (false, false);
        loop {
            let options = CreateContainerOptionsBuilder::new().name(&name).build();
            let err = match self
                .docker
                .create_container(Some(options), create_body(req, self.rotation))
                .await
            {
                Ok(created) => return Ok(created.id),
                Err(err) => err,
            };
            match status(&err) {
                Some(404) if !pulled => {
                    self.ensure_image(&req.spec.image).await?;
                    pulled = true;
                }
                Some(409) if !removed => {
                    self.force_remove(&name).await?;
                    removed = true;
                }
                _ => return Err(runtime_error(Call::Start, err)),
            }
        }
    }

    /// Removes a container by id or name, killing it if it runs. Already gone
    /// is fine.
    async fn force_remove(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match runtime_error(Call::Container(container), e) {
                RuntimeError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// The exit code of an exited container, or `None` if it is gone.
    async fn exit_code(&self, container_id: &str) -> Result<Option<i32>, RuntimeError> {
        match self.docker.inspect_container(container_id, None).await {
            Ok(inspect) => Ok(inspect
                .state
                .and_then(|s| s.exit_code)
                .and_then(|c| i32::try_from(c).ok())),
            Err(e) => match runtime_error(Call::Container(container_id), e) {
                RuntimeError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }
}

impl Runtime for DockerRuntime {
    async fn start(&self, req: &StartRequest) -> Result<String, RuntimeError> {
        let id = self.create(req).await?;

        if let Err(e) = self.docker.start_container(&id, None).await {
            let err = runtime_error(Call::Start, e);
            // A created container that never ran would otherwise linger under
            // the attempt's name and be listed as ours.
            if let Err(cleanup) = self.force_remove(&id).await {
                tracing::warn!(container_id = %id, error = %cleanup, "removing a container that failed to start");
            }
            return Err(err);
        }
        tracing::debug!(container_id = %id, task_id = %req.task_id, attempt = req.attempt, "started container");
        Ok(id)
    }

    async fn stop(&self, container_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let t = i32::try_from(secs).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(t).build();

        // The engine answers a stop only once the container is dead, which may
        // take the whole grace period: the client's usual request timeout
        // (two minutes) must not cut a longer grace short.
        let needed = Duration::from_secs(secs).saturating_add(STOP_REQUEST_SLACK);
        let docker = if needed > self.docker.timeout() {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        };

        // 304 (already stopped) is a success for bollard.
        match docker.stop_container(container_id, Some(options)).await {
            Ok(()) => {}
            Err(e) => match runtime_error(Call::Container(container_id), e) {
                RuntimeError::NotFound(_) => return Ok(()),
                other => return Err(other),
            },
        }
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.force_remove(container_id).await
    }

    async fn list(
        &self,
        cluster_id: &str,
        node_id: Uuid,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", label_filters(cluster_id, node_id))]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| runtime_error(Call::Engine, e))?;

        let mut found = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(container_id) = summary.id else {
                continue;
            };
            let labels = summary.labels.unwrap_or_default();
            let Some((task_id, attempt)) = parse_task_labels(&labels) else {
                tracing::warn!(%container_id, ?labels, "skipping a container whose orch labels do not parse");
                continue;
            };
            let running = summary.state == Some(ContainerSummaryStateEnum::RUNNING);
            // The list has the code only in its status for people, "Exited
            // (3) 2 minutes ago": read from there, since the kept containers
            // of ended attempts make an inspect of each one costly on every
            // audit; an inspect only if the status does not say.
            let exit_code = match summary.state {
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    match summary.status.as_deref().and_then(exit_code_in_status) {
                        Some(code) => Some(code),
                        None => self.exit_code(&container_id).await?,
                    }
                }
                _ => None,
            };
            found.push(ContainerInfo {
                container_id,
                task_id,
                attempt,
                running,
                exit_code,
            });
        }
        Ok(found)
    }

    fn exits(&self, cluster_id: &str, node_id: Uuid) -> BoxStream<'static, Exit> {
        let (tx, rx) = mpsc::channel(EXIT_CHANNEL_CAPACITY);
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("event", vec!["die".to_owned()]),
            ("label", label_filters(cluster_id, node_id)),
        ]);
        // The engine replays its recent events from `since` (it keeps the
        // last 256), so exits between this call and the subscription, and
        // between reconnects, are not lost. The first `since` is our clock,
        // which is the engine's as long as the engine is local; `list` covers
        // whatever this misses. Like every caller of `exits`, this needs a
        // Tokio runtime: the reader is a task of its own.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        tokio::spawn(read_exits(self.docker.clone(), filters, since, tx));
        ReceiverStream::new(rx).boxed()
    }

    fn logs(
        &self,
        container: &str,
        options: &LogsOptions,
    ) -> BoxStream<'static, Result<LogItem, RuntimeError>> {
        let since = options
            .since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        let tail = if options.tail == 0 {
            "all".to_owned()
        } else {
            options.tail.to_string()
        };
        let query = LogsOptionsBuilder::new()
            .follow(options.follow)
            .stdout(options.stdout)
            .stderr(options.stderr)
            .since(since)
            .timestamps(true)
            .tail(&tail)
            .build();
        let name = container.to_owned();
        // A followed stream may stay open for days: no request timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(u64::from(u32::MAX)));
        let output = docker.logs(&name, Some(query));
        let lines = output.flat_map(move |item| {
            let items: Vec<Result<LogItem, RuntimeError>> = match item {
                Ok(frame) => log_lines(frame)
                    .into_iter()
                    .map(LogItem::Line)
                    .map(Ok)
                    .collect(),
                Err(e) => vec![Err(runtime_error(Call::Container(&name), e))],
            };
            futures::stream::iter(items)
        });
        if !options.follow {
            return lines.boxed();
        }
        // The engine ends a followed stream when the container exits; its
        // exit code is read only then, so it is never a guess.
        let this = self.clone();
        let name = container.to_owned();
        let exited = futures::stream::once(async move {
            match this.docker.inspect_container(&name, None).await {
                Ok(inspect) => {
                    let state = inspect.state.unwrap_or_default();
                    if state.running == Some(true) {
                        Err(RuntimeError::Engine(format!(
                            "the engine ended the output of {name} while it still runs"
                        )))
                    } else {
                        let code = state.exit_code.unwrap_or(-1);
                        Ok(LogItem::Exited(i32::try_from(code).unwrap_or(-1)))
                    }
                }
                Err(e) => Err(runtime_error(Call::Container(&name), e)),
            }
        });
        // An error ends the stream: nothing follows it.
        let mut failed = false;
        lines
            .chain(exited)
            .take_while(move |item| {
                let go = !failed;
                failed |= item.is_err();
                futures::future::ready(go)
            })
            .boxed()
    }

    async fn address(&self, container_id: &str) -> Result<Option<IpAddr>, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(|e| runtime_error(Call::Container(container_id), e))?;
        // The engine's top-level `IPAddress` is the default bridge's only
        // and is gone from newer APIs; the per-network addresses are always
        // there. Prefer the default bridge, then networks by name, so the
        // answer does not change from one call to the next.
        let mut networks: Vec<(String, String)> = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, endpoint)| Some((name, endpoint.ip_address?)))
            .collect();
        networks.sort_by_key(|(name, _)| (name != "bridge", name.clone()));
        Ok(networks
            .into_iter()
            .find_map(|(_, ip)| ip.parse::<IpAddr>().ok()))
    }

    async fn exec(
        &self,
        container_id: &str,
        command: &[String],
    ) -> Result<ExecOutput, RuntimeError> {
        let created = self
            .docker
            .create_exec(
                container_id,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| runtime_error(Call::Container(container_id), e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| runtime_error(Call::Container(container_id), e))?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = started
        {
            // The stream ends when the command does; read it all (so the
            // exit code is there to inspect) but keep only the start.
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| runtime_error(Call::Container(container_id), e))?;
                let bytes = chunk.into_bytes();
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| runtime_error(Call::Container(container_id), e))?;
        let exit_code = inspect.exit_code.ok_or_else(|| {
            RuntimeError::Engine(format!(
                "the command in container {container_id} ended without an exit code"
            ))
        })?;
        Ok(ExecOutput {
            exit_code,
            output: String::from_utf8_lossy(&output).trim().to_owned(),
        })
    }
}

/// Reads `die` events into `tx` until the receiver is dropped, reconnecting
/// with backoff whenever the engine's stream fails or ends.
async fn read_exits(
    docker: Docker,
    filters: HashMap<&'static str, Vec<String>>,
    mut since_nanos: i64,
    tx: mpsc::Sender<Exit>,
) {
    let mut backoff = EVENTS_BACKOFF_START;
    loop {
        let options = EventsOptionsBuilder::new()
            .since(&engine_timestamp(since_nanos))
            .filters(&filters)
            .build();
        let mut events = docker.events(Some(options));
        let ended = loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    backoff = EVENTS_BACKOFF_START;
                    if let Some(nanos) = event.time_nano {
                        // Resume after this event, so a reconnect does not
                        // report it twice.
                        since_nanos = since_nanos.max(nanos.saturating_add(1));
                    }
                    let Some(exit) = exit_from_event(&event) else {
                        continue;
                    };
                    if tx.send(exit).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => break runtime_error(Call::Engine, e).to_string(),
                None => break "the engine closed the event stream".to_owned(),
            }
        };
        tracing::warn!(reason = %ended, retry_in = ?backoff, "container event stream broke; reconnecting");
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
    }
}

/// The [`Exit`] a `die` event reports, or `None` (logged) if its attributes are
/// not those of an orch container.
fn exit_from_event(event: &EventMessage) -> Option<Exit> {
    let actor = event.actor.as_ref()?;
    let container_id = actor.id.clone()?;
    let attributes = actor.attributes.clone().unwrap_or_default();
    let parsed = parse_task_labels(&attributes).zip(
        attributes
            .get("exitCode")
            .and_then(|c| c.parse::<i32>().ok()),
    );
    let Some(((task_id, attempt), exit_code)) = parsed else {
        tracing::warn!(%container_id, ?attributes, "skipping a die event whose attributes do not parse");
        return None;
    };
    Some(Exit {
        container_id,
        task_id,
        attempt,
        exit_code,
    })
}

/// The container name of a task attempt: unique per attempt, so a retried
/// start finds what an earlier try left behind.
pub fn container_name(task_id: Uuid, attempt: u64) -> String {
    format!("orch-{task_id}-{attempt}")
}

/// The exit code in a container list's status, `Exited (3) 2 minutes ago`.
fn exit_code_in_status(status: &str) -> Option<i32> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.parse().ok()
}

/// The lines of one frame of the engine's multiplexed log output: each
/// frame is one line (or a piece of a long one) after the time the engine
/// received it (`timestamps`), with its newline; a frame that holds several
/// lines gives each of them that time.
fn log_lines(frame: LogOutput) -> Vec<LogLine> {
    let (stream, message) = match frame {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (LogStream::Stdout, message)
        }
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    let mut text: &[u8] = &message;
    let mut time = None;
    if let Some(space) = text.iter().position(|&b| b == b' ')
        && let Ok(stamp) = std::str::from_utf8(&text[..space])
        && let Ok(at) = humantime::parse_rfc3339(stamp)
    {
        time = Some(orch::time::timestamp(at));
        text = &text[space + 1..];
    }
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .map(|line| LogLine {
            stream: stream as i32,
            time,
            text: line.to_vec(),
        })
        .collect()
}

/// The create request for a task attempt.
fn create_body(req: &StartRequest, rotation: LogRotation) -> ContainerCreateBody {
    let spec = &req.spec;
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // Map order is random; a stable order keeps `docker inspect` readable.
    env.sort();

    let mut port_bindings = PortMap::new();
    for port in &spec.ports {
        let protocol = match port.protocol() {
            Protocol::Udp => "udp",
            Protocol::Tcp | Protocol::Unspecified => "tcp",
        };
        port_bindings
            .entry(format!("{}/{protocol}", port.container_port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some("0.0.0.0".to_owned()),
                host_port: Some(port.host_port.to_string()),
            });
    }
    let mut exposed_ports: Vec<String> = port_bindings.keys().cloned().collect();
    exposed_ports.sort();

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        labels: Some(container_labels(req)),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        host_config: Some(HostConfig {
            memory: spec.memory_bytes,
            nano_cpus: spec.milli_cpus.map(|m| m.saturating_mul(1_000_000)),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), rotation.max_size.to_string()),
                    ("max-file".to_owned(), rotation.max_files.to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The label filters that select this cluster's and node's containers.
fn label_filters(cluster_id: &str, node_id: Uuid) -> Vec<String> {
    vec![
        format!("{}=true", labels::MANAGED),
        format!("{}={cluster_id}", labels::CLUSTER),
        format!("{}={node_id}", labels::NODE_ID),
    ]
}

/// Task id and attempt from a container's labels (or a die event's
/// attributes, which carry the labels).
fn parse_task_labels(labels: &HashMap<String, String>) -> Option<(Uuid, u64)> {
    let task_id = labels.get(labels::TASK_ID)?.parse().ok()?;
    let attempt = labels.get(labels::ATTEMPT)?.parse().ok()?;
    Some((task_id, attempt))
}

/// Splits an image reference into what `/images/create` wants: the engine
/// pulls every tag of a repository when given no tag, so an untagged
/// reference means `latest`, as with `docker pull`.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_component = image.rsplit('/').next().unwrap_or(image);
    if last_component.contains(':') {
        (image, None)
    } else {
        (image, Some("latest"))
    }
}

/// A Unix time in nanoseconds as the engine's `since` takes it.
fn engine_timestamp(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// What a failed engine call was doing, which decides the error people see.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    /// Pulling this image.
    Pull(&'a str),
    /// Creating or starting a task's container.
    Start,
    /// Acting on this existing container.
    Container(&'a str),
    /// Anything else: connecting, listing, events.
    Engine,
}

/// The HTTP status of an engine's refusal, if that is what `err` is.
fn status(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The one place bollard errors become [`RuntimeError`]s. What the engine
/// said is kept word for word (it names the port, the image, the registry);
/// failures to reach the engine at all are always [`RuntimeError::Engine`],
/// whatever the call, because they are not the task's fault.
fn runtime_error(call: Call<'_>, err: BollardError) -> RuntimeError {
    let (status_code, message) = match err {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        BollardError::RequestTimeoutError => {
            return RuntimeError::Engine("the Docker engine did not answer in time".to_owned());
        }
        BollardError::SocketNotFoundError(path) => {
            return RuntimeError::Engine(format!(
                "cannot reach the Docker engine: no socket at {path} (is Docker running?)"
            ));
        }
        e @ (BollardError::HyperResponseError { .. }
        | BollardError::HttpClientError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }) => {
            return RuntimeError::Engine(format!("cannot reach the Docker engine: {e}"));
        }
        other => return RuntimeError::Engine(other.to_string()),
    };
    let message = if message.trim().is_empty() {
        format!(
            "the engine refused with status {}",
            status_code.unwrap_or_default()
        )
    } else {
        message.trim().to_owned()
    };
    match call {
        Call::Pull(image) => RuntimeError::ImagePull {
            image: image.to_owned(),
            reason: message,
        },
        Call::Start => RuntimeError::Start(message),
        Call::Container(id) if status_code == Some(404) => RuntimeError::NotFound(id.to_owned()),
        Call::Container(_) | Call::Engine => RuntimeError::Engine(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_read_from_the_lists_status() {
        assert_eq!(exit_code_in_status("Exited (3) 2 minutes ago"), Some(3));
        assert_eq!(
            exit_code_in_status("Exited (137) About an hour ago"),
            Some(137)
        );
        assert_eq!(exit_code_in_status("Up 5 seconds"), None);
        assert_eq!(exit_code_in_status("Exited (x) now"), None);
        assert_eq!(exit_code_in_status("Dead"), None);
    }

    #[test]
    fn a_frame_gives_its_lines_with_their_stream_and_time() {
        let frame = LogOutput::StdErr {
            message: "2026-12-01T19:44:39.010593123Z oops\n".into(),
        };
        let lines = log_lines(frame);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].stream(), LogStream::Stderr);
        assert_eq!(lines[0].text, b"oops");
        let time = lines[0].time.expect("a time");
        assert_eq!(time.nanos, 10_593_123);
        // Two lines in one frame share its time; an empty line stays.
        let frame = LogOutput::StdOut {
            message: "2026-12-01T19:44:39Z a\n\nb\n".into(),
        };
        let texts: Vec<Vec<u8>> = log_lines(frame).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, [b"a".to_vec(), Vec::new(), b"b".to_vec()]);
    }

    #[test]
    fn untagged_references_pull_latest_only() {
        let cases = [
            ("busybox", ("busybox", Some("latest"))),
            ("busybox:1.36", ("busybox:1.36", None)),
            ("localhost:5000/app", ("localhost:5000/app", Some("latest"))),
            ("localhost:5000/app:2", ("localhost:5000/app:2", None)),
            ("app@sha256:abcd", ("app@sha256:abcd", None)),
        ];
        for (input, expected) in cases {
            assert_eq!(split_reference(input), expected, "{input}");
        }
    }

    #[test]
    fn engine_timestamps_keep_nanoseconds() {
        assert_eq!(
            engine_timestamp(1_700_000_000_000_000_001),
            "1700000000.000000001"
        );
        assert_eq!(engine_timestamp(0), "0.000000000");
    }

    #[test]
    fn not_found_only_for_containers() {
        let err = || BollardError::DockerResponseServerError {
            status_code: 404,
            message: "No such container: abc".into(),
        };
        assert_eq!(
            runtime_error(Call::Container("abc"), err()),
            RuntimeError::NotFound("abc".into())
        );
        assert_eq!(
            runtime_error(Call::Start, err()),
            RuntimeError::Start("No such container: abc".into())
        );
        assert_eq!(
            runtime_error(Call::Pull("x"), err()),
            RuntimeError::ImagePull {
                image: "x".into(),
                reason: "No such container: abc".into()
            }
        );
        assert!(matches!(
            runtime_error(Call::Start, BollardError::RequestTimeoutError),
            RuntimeError::Engine(_)
        ));
    }
}
