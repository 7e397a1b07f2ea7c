//! The client commands: `run`, `stop`, `status`, `nodes`, `node` (`events`
//! is [`crate::events`]);
//! and what the service commands ([`crate::services`]) share with them: the
//! connection, the errors, the task spec made from `run`'s flags.

use orch::task_state;
use orch::v1::cluster_client::ClusterClient;
use orch::v1::{
    ActivateNodeRequest, DrainNodeRequest, ExecProbe, GetTaskRequest, HealthCheck, HttpProbe,
    ListNodesRequest, ListTasksRequest, PlanTaskRequest, PortMapping, Protocol, RestartCondition,
    RestartPolicy, StopTaskRequest, SubmitTaskRequest, Task, TaskSpec, TcpProbe,
    WatchEventsRequest, health_check,
};
use uuid::Uuid;

use crate::CliError;
use crate::args::{
    HealthArgs, NodeCommand, Output, Restart, RunArgs, StatusArgs, StopArgs, TaskArgs,
};
use crate::config::Target;
use crate::output;

pub use orch::auth::Client;

/// Connects to the manager, or explains why not. `--manager` may name
/// several managers (on etcd), separated by commas: the first that answers
/// is used (any of them serves a client: a follower forwards to the leader).
pub async fn connect(target: &Target) -> Result<Client, CliError> {
    let bearer = orch::auth::Bearer::new(target.token.as_deref()).map_err(CliError)?;
    let urls: Vec<&str> = urls(target).collect();
    let mut unreachable = Vec::new();
    for manager in &urls {
        match channel(manager, target).await? {
            Ok(channel) => return Ok(ClusterClient::with_interceptor(channel, bearer)),
            Err(cause) => unreachable.push(format!("{manager}: {cause}")),
        }
    }
    Err(CliError(match unreachable.as_slice() {
        [] => format!("{:?} is not a URL like https://127.0.0.1:7070", target.url),
        [one] => format!(
            "cannot reach the manager at {one} (is it running? start one with `orchctl dev`)"
        ),
        all => format!("cannot reach any manager ({})", all.join("; ")),
    }))
}

/// The managers `target` names, in the order given.
fn urls(target: &Target) -> impl Iterator<Item = &str> {
    target
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// A channel to `manager`: `Err` for a bad URL or TLS settings, `Ok(Err)`
/// with the innermost cause for a manager that does not answer.
async fn channel(
    manager: &str,
    target: &Target,
) -> Result<Result<tonic::transport::Channel, String>, CliError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(manager.to_string())
        .map_err(|_| {
            CliError(format!(
                "{manager:?} is not a URL like https://127.0.0.1:7070"
            ))
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    if manager.starts_with("https://") {
        let ca = target.ca.as_ref().ok_or_else(|| {
            CliError(format!(
                "no CA to verify {manager} against: run `orchctl dev` (it writes ~/.config/orch/config.toml), or pass --ca FILE (the manager's DATA_DIR/ca.crt)"
            ))
        })?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .domain_name(orch::auth::MANAGER_SERVER_NAME)
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .map_err(|e| CliError(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint.connect().await.map_err(|e| {
        // The innermost cause says it best ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        cause.to_string()
    }))
}

/// How [`status_error`] begins when the connection failed under a call:
/// the manager died or went away, or it speaks TLS to a client that does
/// not ([`plaintext_hint`] says so where that may be why).
pub const BROKE: &str = "the connection to the manager broke";

/// `error`, with a hint where the connection broke and `target` is plain
/// HTTP: a manager with TLS answers it so, which looks like a broken
/// connection (and not only at the first call: `events` reconnects).
pub fn plaintext_hint(target: &Target, error: CliError) -> CliError {
    if urls(target).any(|u| u.starts_with("http://")) && error.0.contains(BROKE) {
        CliError(format!(
            "{}; if the manager serves TLS, it does not speak plain HTTP: give its https:// URL and no --insecure",
            error.0
        ))
    } else {
        error
    }
}

/// One line for a gRPC error: the code in words, then the manager's message.
pub fn status_error(s: tonic::Status) -> CliError {
    use tonic::Code;
    let what = match s.code() {
        Code::InvalidArgument => "invalid argument",
        // The manager's message says what was not found, or what exists.
        Code::NotFound | Code::AlreadyExists => return CliError(s.message().to_string()),
        Code::Unimplemented => "not supported by this manager",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "manager unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::Unauthenticated => "not authenticated",
        // What tonic makes of a connection that failed under the call (a
        // closed one is `Unknown` "transport error", h2's protocol error
        // `Internal`), not a status the manager sent.
        Code::Cancelled | Code::Unknown | Code::Internal
            if ["canceled", "transport error", "h2 protocol error"]
                .iter()
                .any(|m| s.message().contains(m)) =>
        {
            return CliError(format!("{BROKE} ({})", s.message()));
        }
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "over a limit",
        _ => "error",
    };
    CliError(format!("{what}: {}", s.message()))
}

/// Finds a task by full id, unique id prefix, or exact name.
pub async fn resolve(client: &mut Client, key: &str) -> Result<Task, CliError> {
    if Uuid::parse_str(key).is_ok() {
        let task = client
            .get_task(GetTaskRequest {
                id: key.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .task;
        return task.ok_or_else(|| CliError(format!("task {key} not found")));
    }
    let mut found: Vec<Task> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(ListTasksRequest {
                page_token,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        found.extend(
            page.tasks.into_iter().filter(|t| {
                t.id.starts_with(key) || t.spec.as_ref().is_some_and(|s| s.name == key)
            }),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // Names are not unique: a name that was used before by tasks that have
    // since ended means the task that has not.
    if found.len() > 1 && !found.iter().any(|t| t.id.starts_with(key)) {
        found.retain(|t| !task_state::is_terminal(t.state()));
    }
    the_one(found, key, "task")
}

/// Every task `request` selects, all pages of them, oldest first.
pub async fn list_tasks(
    client: &mut Client,
    mut request: ListTasksRequest,
) -> Result<Vec<Task>, CliError> {
    let mut tasks = Vec::new();
    loop {
        let page = client
            .list_tasks(request.clone())
            .await
            .map_err(status_error)?
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return Ok(tasks);
        }
        request.page_token = page.next_page_token;
    }
}

/// The single match of `key`, or an error saying there is none or several.
fn the_one<T>(mut found: Vec<T>, key: &str, what: &str) -> Result<T, CliError> {
    match found.len() {
        0 => Err(CliError(format!(
            "no {what} has the id, id prefix or name {key:?}"
        ))),
        1 => Ok(found.remove(0)),
        n => Err(CliError(format!(
            "{key:?} matches {n} {what}s; use more of the id"
        ))),
    }
}

/// The task spec that `run`'s flags ask for (shared by `service create`,
/// whose task template they make), without a name. `--constraint`s go to
/// the spec's `node_selector`, as a task's; a service moves them to its
/// placement. Unless `--restart` or `--max-restarts` is given the restart
/// policy stays unset, so the default of the task (never) or of the
/// service's mode applies; with only `--max-restarts`, the condition is
/// `default_restart`, and with only `--restart` there is no limit.
pub fn task_spec(a: TaskArgs, default_restart: RestartCondition) -> TaskSpec {
    let restart = match (a.restart, a.max_restarts) {
        (None, None) => None,
        (condition, max) => Some(RestartPolicy {
            condition: condition.map_or(default_restart, |c| match c {
                Restart::Never => RestartCondition::Never,
                Restart::OnFailure => RestartCondition::OnFailure,
                Restart::Always => RestartCondition::Always,
            }) as i32,
            max_restarts: max.unwrap_or(0),
        }),
    };
    TaskSpec {
        name: String::new(),
        image: a.image,
        command: a.command,
        env: a.env.into_iter().collect(),
        milli_cpus: a.cpus,
        memory_bytes: a.memory,
        disk_bytes: a.disk,
        ports: a
            .ports
            .iter()
            .map(|p| PortMapping {
                host_port: p.host,
                container_port: p.container,
                protocol: if p.udp { Protocol::Udp } else { Protocol::Tcp } as i32,
            })
            .collect(),
        restart,
        labels: a.labels.into_iter().collect(),
        node_selector: a.constraints.into_iter().collect(),
        stop_grace_period: a.stop_timeout.map(orch::time::duration),
        health_check: health_check(&a.health),
    }
}

pub async fn run(manager: &Target, a: RunArgs, out: Output) -> Result<(), CliError> {
    let spec = TaskSpec {
        name: a.name.unwrap_or_default(),
        ..task_spec(a.task, RestartCondition::Never)
    };
    let mut client = connect(manager).await?;
    if a.dry_run {
        return dry_run(&mut client, spec, out).await;
    }
    let task = client
        .submit_task(SubmitTaskRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner()
        .task
        .ok_or_else(|| CliError("the manager answered without a task".into()))?;
    if out == Output::Json {
        output::print_json(&output::task_json(&task));
        return Ok(());
    }
    println!("{}", task.id);
    if task.state() == orch::v1::TaskState::Pending && !task.message.is_empty() {
        eprintln!("pending: {}", task.message);
    }
    Ok(())
}

/// `run --dry-run`: where the task would go and why, with nothing
/// submitted; an error (exit status 1) if no node fits.
async fn dry_run(client: &mut Client, spec: TaskSpec, out: Output) -> Result<(), CliError> {
    let plan = client
        .plan_task(PlanTaskRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner()
        .placement
        .unwrap_or_default();
    match out {
        Output::Json => output::print_json(&output::plan_json(&plan)),
        Output::Table => {
            output::print_plan(&plan);
            if !plan.chosen_node_id.is_empty() {
                println!(
                    "would run on {} ({}), by the {} strategy; nothing was submitted",
                    plan.chosen_node_name, plan.chosen_node_id, plan.strategy
                );
            }
        }
    }
    if plan.chosen_node_id.is_empty() {
        return Err(CliError(format!(
            "no node can take the task: {}",
            plan.unplaceable
        )));
    }
    Ok(())
}

/// The health check `run`'s flags ask for, if any. Unset timings stay unset,
/// so the manager's defaults apply.
fn health_check(a: &HealthArgs) -> Option<HealthCheck> {
    let p = &a.probe;
    let probe = if let Some((port, path)) = &p.health_http {
        health_check::Probe::Http(HttpProbe {
            port: *port,
            path: path.clone(),
        })
    } else if let Some(port) = p.health_tcp {
        health_check::Probe::Tcp(TcpProbe { port })
    } else if let Some(cmd) = &p.health_cmd {
        // As `docker run --health-cmd`: a shell command line.
        health_check::Probe::Exec(ExecProbe {
            command: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
        })
    } else {
        return None;
    };
    Some(HealthCheck {
        probe: Some(probe),
        interval: a.health_interval.map(orch::time::duration),
        timeout: a.health_timeout.map(orch::time::duration),
        retries: a.health_retries,
        start_period: a.health_start_period.map(orch::time::duration),
    })
}

pub async fn stop(manager: &Target, a: StopArgs, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let task = resolve(&mut client, &a.task).await?;
    // Watch before asking, so the end of the task cannot slip by unseen.
    let mut events = if a.no_wait {
        None
    } else {
        Some(
            client
                .watch_events(WatchEventsRequest::default())
                .await
                .map_err(status_error)?
                .into_inner(),
        )
    };
    let mut task = client
        .stop_task(StopTaskRequest { id: task.id })
        .await
        .map_err(status_error)?
        .into_inner()
        .task
        .ok_or_else(|| CliError("the manager answered without a task".into()))?;
    if let Some(events) = events.as_mut() {
        let grace = orch::validate::stop_grace(&task.spec.clone().unwrap_or_default());
        let limit = grace + std::time::Duration::from_secs(30);
        let id = task.id.clone();
        task = tokio::time::timeout(limit, wait_ended(&mut client, events, task))
            .await
            .map_err(|_| {
                CliError(format!(
                    "task {id} was asked to stop but has not stopped after {}s",
                    limit.as_secs()
                ))
            })??;
    }
    match out {
        Output::Json => output::print_json(&output::task_json(&task)),
        Output::Table => println!("{}", task.id),
    }
    Ok(())
}

/// Follows `events` until `task` has ended; returns it as it ended.
async fn wait_ended(
    client: &mut Client,
    events: &mut tonic::Streaming<orch::v1::Event>,
    mut task: Task,
) -> Result<Task, CliError> {
    while !task_state::is_terminal(task.state()) {
        let Some(event) = events.message().await.map_err(status_error)? else {
            return Err(CliError("the manager closed the event stream".into()));
        };
        let ours =
            matches!(&event.kind, Some(orch::v1::event::Kind::Task(t)) if t.task_id == task.id);
        if !ours {
            continue;
        }
        let fresh = client
            .get_task(GetTaskRequest {
                id: task.id.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .task;
        task = fresh.unwrap_or(task);
    }
    Ok(task)
}

pub async fn status(manager: &Target, a: StatusArgs, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    if let Some(key) = a.task {
        let found = resolve(&mut client, &key).await?;
        let detail = client
            .get_task(GetTaskRequest {
                id: found.id.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let task = detail.task.unwrap_or(found);
        match out {
            Output::Json => {
                let mut v = output::task_json(&task);
                v["attempts"] = detail.attempts.iter().map(output::attempt_json).collect();
                if let Some(plan) = &detail.placement {
                    v["placement"] = output::plan_json(plan);
                }
                output::print_json(&v);
            }
            Output::Table => {
                output::print_task(&task);
                if let Some(plan) = &detail.placement {
                    output::print_pending_reasons(plan);
                }
                if !detail.attempts.is_empty() {
                    println!();
                    output::print_attempts(&detail.attempts);
                }
            }
        }
        return Ok(());
    }
    let mut states = Vec::new();
    for word in &a.states {
        let state = task_state::parse(word).ok_or_else(|| {
            CliError(format!(
                "--state {word:?} is not a task state (pending, scheduled, starting, running, completed, failed, stopped, lost)"
            ))
        })?;
        states.push(state as i32);
    }
    let tasks = list_tasks(
        &mut client,
        ListTasksRequest {
            states,
            ..Default::default()
        },
    )
    .await?;
    match out {
        Output::Json => output::print_json(&serde_json::Value::Array(
            tasks.iter().map(output::task_json).collect(),
        )),
        Output::Table => output::print_tasks(&tasks),
    }
    Ok(())
}

pub async fn nodes(manager: &Target, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes;
    match out {
        Output::Json => output::print_json(&serde_json::Value::Array(
            nodes.iter().map(output::node_json).collect(),
        )),
        Output::Table => output::print_nodes(&nodes),
    }
    Ok(())
}

pub async fn managers(manager: &Target, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let managers = client
        .list_managers(orch::v1::ListManagersRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .managers;
    match out {
        Output::Json => output::print_json(&serde_json::Value::Array(
            managers.iter().map(output::manager_json).collect(),
        )),
        Output::Table => output::print_managers(&managers),
    }
    Ok(())
}

/// Finds a node by full id, unique id prefix, or exact name.
pub async fn resolve_node(client: &mut Client, key: &str) -> Result<orch::v1::Node, CliError> {
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes;
    let found = nodes
        .into_iter()
        .filter(|n| n.id.starts_with(key) || n.name == key)
        .collect();
    the_one(found, key, "node")
}

pub async fn node(manager: &Target, command: NodeCommand, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let node = match command {
        NodeCommand::Drain(a) => {
            let id = resolve_node(&mut client, &a.node).await?.id;
            client
                .drain_node(DrainNodeRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .node
        }
        NodeCommand::Activate(a) => {
            let id = resolve_node(&mut client, &a.node).await?.id;
            client
                .activate_node(ActivateNodeRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .node
        }
        NodeCommand::Rm(a) => {
            let node = resolve_node(&mut client, &a.node).await?;
            client
                .remove_node(orch::v1::RemoveNodeRequest {
                    id: node.id.clone(),
                })
                .await
                .map_err(status_error)?;
            match out {
                Output::Json => output::print_json(&serde_json::json!({
                    "id": node.id,
                    "name": node.name,
                    "removed": true,
                })),
                Output::Table => println!(
                    "removed node {} ({}); its certificate is revoked",
                    node.name, node.id
                ),
            }
            return Ok(());
        }
    }
    .ok_or_else(|| CliError("the manager answered without a node".into()))?;
    match out {
        Output::Json => output::print_json(&output::node_json(&node)),
        Output::Table => output::print_nodes(&[node]),
    }
    Ok(())
}
