//! The service commands: `apply -f FILE` and `service create | ls | ps |
//! inspect | scale | history | rollback | rm`.
//!
//! The commands that start a rollout (`apply`, `service create`, `service
//! rollback`) follow it until it ends, unless `--detach`: they subscribe to
//! the manager's events before they change anything, so no step of the
//! rollout can slip by between the change and the subscription, print a
//! line for each step, and end when every service they changed has ended
//! its rollout (or, for a batch service, its job). What they judge is the
//! service as `GetService` returns it after each event about it, never the
//! event alone: an event from before the change (the end of an older
//! rollout) only makes them look again.

use std::collections::HashSet;
use std::io::Read as _;
use std::pin::Pin;

use orch::v1::{
    ApplyServiceRequest, ApplyServiceResponse, BatchMode, DeleteServiceRequest, Event,
    FailureAction, GetServiceRequest, GlobalMode, JobState, ListServiceVersionsRequest,
    ListServicesRequest, ListTasksRequest, Placement, ReplicatedMode, RollbackServiceRequest,
    RolloutState, ScaleServiceRequest, Service, ServiceChange, ServiceSpec, UpdateConfig,
    UpdateOrder, WatchEventsRequest, event, service_spec,
};
use serde_json::Value;
use tokio_stream::{Stream, StreamExt as _};

use crate::CliError;
use crate::args::{
    ApplyArgs, FailureActionArg, Output, RollbackArgs, ServiceCommand, ServiceCreateArgs,
    UpdateArgs, UpdateOrderArg,
};
use crate::client::{Client, connect, list_tasks, status_error, task_spec};
use crate::config::Target;
use crate::output;

/// `orchctl service ...`.
pub async fn service(
    manager: &Target,
    command: ServiceCommand,
    out: Output,
) -> Result<(), CliError> {
    match command {
        ServiceCommand::Create(a) => create(manager, *a, out).await,
        ServiceCommand::Ls => ls(manager, out).await,
        ServiceCommand::Ps(a) => ps(manager, &a.name, out).await,
        ServiceCommand::Inspect(a) => inspect(manager, &a.name, out).await,
        ServiceCommand::Scale(a) => scale(manager, &a.target.0, a.target.1, out).await,
        ServiceCommand::History(a) => history(manager, &a.name, out).await,
        ServiceCommand::Rollback(a) => rollback(manager, a, out).await,
        ServiceCommand::Rm(a) => rm(manager, &a.name, out).await,
    }
}

/// The service in a reply, or an error saying the manager sent none.
fn the_service(service: Option<Service>) -> Result<Service, CliError> {
    service.ok_or_else(|| CliError("the manager answered without a service".into()))
}

/// The lowercase word for what an apply changed, as JSON shows it.
pub fn change_name(c: ServiceChange) -> &'static str {
    match c {
        ServiceChange::Unspecified => "unspecified",
        ServiceChange::Created => "created",
        ServiceChange::Updated => "updated",
        ServiceChange::Scaled => "scaled",
        ServiceChange::Reconfigured => "reconfigured",
        ServiceChange::Unchanged => "unchanged",
    }
}

/// The line an apply or create prints for one service.
pub fn change_line(name: &str, change: ServiceChange, service: &Service) -> String {
    match change {
        ServiceChange::Created => format!("service {name} created (version {})", service.version),
        ServiceChange::Updated => {
            format!("service {name} updated to version {}", service.version)
        }
        ServiceChange::Scaled => format!("service {name} scaled"),
        ServiceChange::Reconfigured => format!("service {name} reconfigured"),
        ServiceChange::Unchanged => format!("service {name} unchanged"),
        ServiceChange::Unspecified => {
            format!("service {name} applied (version {})", service.version)
        }
    }
}

/// Whether a change starts a rollout to follow: a new service or a new
/// version. A scale, a new update config or no change replaces no task.
fn has_rollout(change: ServiceChange) -> bool {
    matches!(change, ServiceChange::Created | ServiceChange::Updated)
}

/// Reads the manifest named on the command line (`-` is standard input);
/// returns the name to show in errors and the text.
fn read_manifest(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError(format!("cannot read standard input: {e}")))?;
        return Ok(("<stdin>".into(), text));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError(format!("cannot read {file}: {e}")))?;
    Ok((file.to_string(), text))
}

/// Reads and checks a manifest: its services, at least one, each named once.
///
/// # Errors
/// `FILE:LINE:COL: field: message` for what the manifest refuses, or a line
/// naming the file if it holds no service or one service twice.
pub fn load_manifest(label: &str, yaml: &str) -> Result<Vec<ServiceSpec>, CliError> {
    let specs = orch::manifest::parse(yaml).map_err(|e| CliError(e.in_file(label).to_string()))?;
    if specs.is_empty() {
        return Err(CliError(format!("{label}: no service in it")));
    }
    let mut seen = HashSet::new();
    for spec in &specs {
        if !seen.insert(spec.name.as_str()) {
            return Err(CliError(format!(
                "{label}: service {} is in it twice",
                spec.name
            )));
        }
    }
    Ok(specs)
}

/// `orchctl apply -f FILE`.
pub async fn apply(manager: &Target, a: ApplyArgs, out: Output) -> Result<(), CliError> {
    // The whole file is read and checked before anything is sent.
    let (label, yaml) = read_manifest(&a.file)?;
    let specs = load_manifest(&label, &yaml)?;
    let mut client = connect(manager).await?;
    if a.dry_run {
        return dry_run(&mut client, specs, out).await;
    }
    let events = if a.detach {
        None
    } else {
        Some(watch(&mut client).await?)
    };
    // In the order of the file. A service the manager refuses ends the
    // apply there: those before it stay applied (and are not followed).
    let mut applied = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        let reply = client
            .apply_service(ApplyServiceRequest { spec: Some(spec) })
            .await
            .map_err(|s| CliError(format!("service {name}: {}", status_error(s).0)))?
            .into_inner();
        applied.push(announce(&name, reply, out)?);
    }
    finish(&mut client, events, applied, Goal::Rollout, out, true).await
}

/// `apply --dry-run`: what each service would change and where its new
/// tasks would go, with nothing applied; an error (exit status 1) if a
/// task would fit nowhere.
async fn dry_run(
    client: &mut Client,
    specs: Vec<orch::v1::ServiceSpec>,
    out: Output,
) -> Result<(), CliError> {
    let mut plans = Vec::new();
    let mut nowhere = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        let plan = client
            .plan_service(orch::v1::PlanServiceRequest { spec: Some(spec) })
            .await
            .map_err(|s| CliError(format!("service {name}: {}", status_error(s).0)))?
            .into_inner();
        let refused: Vec<String> = plan
            .slots
            .iter()
            .filter_map(|s| s.placement.as_ref())
            .filter(|p| p.chosen_node_id.is_empty())
            .map(|p| p.unplaceable.clone())
            .collect();
        if let Some(why) = refused.first() {
            nowhere.push(format!(
                "service {name}: {} of {} tasks fit nowhere ({why})",
                refused.len(),
                plan.slots.len()
            ));
        }
        match out {
            Output::Table => output::print_service_plan(&name, &plan),
            Output::Json => plans.push(output::service_plan_json(&name, &plan)),
        }
    }
    if out == Output::Json {
        output::print_json(&serde_json::Value::Array(plans));
    }
    if !nowhere.is_empty() {
        return Err(CliError(nowhere.join("; ")));
    }
    Ok(())
}

/// Prints the line of one applied service (tables only); returns it to
/// follow, already done if the change started no rollout.
fn announce(name: &str, reply: ApplyServiceResponse, out: Output) -> Result<Followed, CliError> {
    let change = reply.change();
    let service = the_service(reply.service)?;
    if out == Output::Table {
        println!("{}", change_line(name, change, &service));
    }
    // A rollout still under way (an apply of the same file while the last
    // one rolls out) is followed too, whatever this apply changed.
    let rolling = service.rollout.as_ref().is_some_and(|r| {
        matches!(
            r.state(),
            orch::v1::RolloutState::RollingOut | orch::v1::RolloutState::RollingBack
        )
    });
    let mut followed = Followed::new(service, Some(change));
    followed.done = !has_rollout(change) && !rolling;
    Ok(followed)
}

/// Follows the rollouts of `services` not already done (if `events` is
/// there: not `--detach`), then prints the JSON if asked for (`list`: an
/// array; otherwise the one service as an object), then fails if a rollout
/// did not reach its goal.
async fn finish(
    client: &mut Client,
    events: Option<Events>,
    mut services: Vec<Followed>,
    goal: Goal,
    out: Output,
    list: bool,
) -> Result<(), CliError> {
    let mut failures = Vec::new();
    if let Some(events) = events {
        let mut print = |line: &str| {
            if out == Output::Table {
                println!("{line}");
            }
        };
        failures = follow(client, events, &mut services, goal, &mut print).await?;
    }
    if out == Output::Json {
        let mut values: Vec<Value> = services
            .iter()
            .map(|f| {
                let mut v = output::service_json(&f.service);
                if let Some(c) = f.change {
                    v["change"] = change_name(c).into();
                }
                v
            })
            .collect();
        match (list, values.len()) {
            (false, 1) => output::print_json(&values.remove(0)),
            _ => output::print_json(&Value::Array(values)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError(failures.join("; ")))
    }
}

/// A subscription to the manager's events, as `follow` reads it.
type Events = Pin<Box<dyn Stream<Item = Result<Event, tonic::Status>> + Send>>;

/// Subscribes to the manager's events.
async fn watch(client: &mut Client) -> Result<Events, CliError> {
    Source::watch(client).await.map_err(status_error)
}

/// What following a rollout asks of the manager (a seam, so the tests can
/// script the answers): a service as it is now, and a new subscription.
trait Source {
    /// The service named `name`, as `GetService` returns it.
    async fn service(&mut self, name: &str) -> Result<Service, tonic::Status>;
    /// A new subscription to `WatchEvents`.
    async fn watch(&mut self) -> Result<Events, tonic::Status>;
}

impl Source for Client {
    async fn service(&mut self, name: &str) -> Result<Service, tonic::Status> {
        self.get_service(GetServiceRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner()
        .service
        .ok_or_else(|| tonic::Status::internal("the manager answered without a service"))
    }

    async fn watch(&mut self) -> Result<Events, tonic::Status> {
        let stream = self
            .watch_events(WatchEventsRequest::default())
            .await?
            .into_inner();
        Ok(Box::pin(stream))
    }
}

/// What following a service waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// A new service or version rolled out: `completed`; `rolled_back` and
    /// `paused` are failures.
    Rollout,
    /// A rollback: `rolled_back` (or `completed`); `paused` is a failure.
    Rollback,
}

/// Whether a service is a batch service (a job).
fn is_batch(s: &Service) -> bool {
    matches!(
        s.spec.as_ref().and_then(|s| s.mode.as_ref()),
        Some(service_spec::Mode::Batch(_))
    )
}

/// Whether a service's rollout (or, for a batch service, its job) has
/// ended: `None` while it goes on, `Some(Ok)` if it reached `goal`,
/// `Some(Err(why))` if not, `why` reading `rollout rolled_back: MESSAGE`.
pub fn outcome(s: &Service, goal: Goal) -> Option<Result<(), String>> {
    if is_batch(s) {
        return match s.job_state() {
            JobState::Completed => Some(Ok(())),
            JobState::Failed => Some(Err(format!(
                "job failed: {} of {} tasks failed with no restart left ({} completed)",
                s.failed, s.desired, s.completed
            ))),
            JobState::Running | JobState::Unspecified => None,
        };
    }
    let Some(rollout) = &s.rollout else {
        // No rollout at all: nothing to wait for.
        return Some(Ok(()));
    };
    let failed = || {
        let state = output::rollout_state_name(rollout.state());
        Err(if rollout.message.is_empty() {
            format!("rollout {state}")
        } else {
            format!("rollout {state}: {}", rollout.message)
        })
    };
    match (rollout.state(), goal) {
        (RolloutState::RollingOut | RolloutState::RollingBack, _) => None,
        (RolloutState::Completed | RolloutState::Unspecified, _)
        | (RolloutState::RolledBack, Goal::Rollback) => Some(Ok(())),
        (RolloutState::Paused, _) | (RolloutState::RolledBack, Goal::Rollout) => Some(failed()),
    }
}

/// One service being followed.
struct Followed {
    name: String,
    /// As the manager last showed it.
    service: Service,
    /// What the apply changed (none for a rollback).
    change: Option<ServiceChange>,
    /// The last progress line printed, so an unchanged one is not repeated.
    last_line: String,
    /// Whether its rollout has ended (or it has none to follow).
    done: bool,
}

impl Followed {
    fn new(service: Service, change: Option<ServiceChange>) -> Self {
        Self {
            name: service
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            service,
            change,
            last_line: String::new(),
            done: false,
        }
    }
}

/// Follows `services` (those not already `done`) on `events` until each has
/// ended, handing each new progress line to `print`; returns the failures,
/// one `service NAME: why` each.
async fn follow<S: Source>(
    source: &mut S,
    mut events: Events,
    services: &mut [Followed],
    goal: Goal,
    print: &mut dyn FnMut(&str),
) -> Result<Vec<String>, CliError> {
    let mut failures = Vec::new();
    // Look once before any event: the rollout may have ended already,
    // before the events of it were read, and then no event would come.
    for f in services.iter_mut().filter(|f| !f.done) {
        look(source, f, goal, print, &mut failures).await?;
    }
    while services.iter().any(|f| !f.done) {
        let event = match events.next().await {
            Some(Ok(event)) => event,
            None => {
                return Err(CliError(
                    "the manager closed the event stream before the rollout ended (it goes on: see orchctl service ls)".into(),
                ));
            }
            // Fell too far behind and was cut off: watch again and look at
            // every service, since events may have been missed.
            Some(Err(s)) if s.code() == tonic::Code::ResourceExhausted => {
                events = source.watch().await.map_err(status_error)?;
                for f in services.iter_mut().filter(|f| !f.done) {
                    look(source, f, goal, print, &mut failures).await?;
                }
                continue;
            }
            Some(Err(s)) => return Err(status_error(s)),
        };
        let (about, task_ended) = match &event.kind {
            Some(event::Kind::Service(sv)) => (sv.name.as_str(), false),
            Some(event::Kind::Task(t)) => {
                (t.service.as_str(), orch::task_state::is_terminal(t.state()))
            }
            _ => continue,
        };
        let Some(f) = services
            .iter_mut()
            .find(|f| !f.done && !about.is_empty() && f.name == about)
        else {
            continue;
        };
        // A service's rollout moves with its service events; a batch
        // service's job with its tasks' ends too.
        if !matches!(event.kind, Some(event::Kind::Task(_))) || (task_ended && is_batch(&f.service))
        {
            look(source, f, goal, print, &mut failures).await?;
        }
    }
    Ok(failures)
}

/// Reads service `f` again, prints its progress if it moved, and marks it
/// done (with a failure if it did not reach `goal`) if it has ended.
async fn look<S: Source>(
    source: &mut S,
    f: &mut Followed,
    goal: Goal,
    print: &mut dyn FnMut(&str),
    failures: &mut Vec<String>,
) -> Result<(), CliError> {
    match source.service(&f.name).await {
        Ok(service) => f.service = service,
        Err(s) if s.code() == tonic::Code::NotFound => {
            f.done = true;
            failures.push(format!(
                "service {}: deleted before its rollout ended",
                f.name
            ));
            return Ok(());
        }
        Err(s) => return Err(status_error(s)),
    }
    let line = output::progress_line(&f.service);
    if line != f.last_line {
        print(&line);
        f.last_line = line;
    }
    if let Some(result) = outcome(&f.service, goal) {
        f.done = true;
        if let Err(why) = result {
            failures.push(format!("service {}: {why}", f.name));
        }
    }
    Ok(())
}

/// The service spec `service create`'s flags ask for: replicated with one
/// replica unless `--replicas`, `--global` or `--batch` says otherwise; the
/// task template from the `run` flags, its `--constraint`s moved to the
/// placement; an update config only if an `--update-*` flag is given, with
/// the others left unset so the manager's defaults apply.
pub fn service_spec(a: ServiceCreateArgs) -> ServiceSpec {
    let mode = if a.mode.global {
        service_spec::Mode::Global(GlobalMode {})
    } else if a.mode.batch {
        service_spec::Mode::Batch(BatchMode {
            completions: a.completions,
            parallelism: a.parallelism,
        })
    } else {
        service_spec::Mode::Replicated(ReplicatedMode {
            replicas: a.mode.replicas,
        })
    };
    let default_restart = orch::service::default_restart(Some(&mode)).condition();
    let mut task = task_spec(a.task, default_restart);
    let constraints = std::mem::take(&mut task.node_selector);
    ServiceSpec {
        name: a.name,
        mode: Some(mode),
        task: Some(task),
        placement: (!constraints.is_empty()).then_some(Placement { constraints }),
        update: update_config(&a.update),
    }
}

/// The update config the `--update-*` flags ask for, or `None` if none is given.
fn update_config(u: &UpdateArgs) -> Option<UpdateConfig> {
    let any = u.update_parallelism.is_some()
        || u.update_delay.is_some()
        || u.update_order.is_some()
        || u.update_monitor.is_some()
        || u.update_failure_action.is_some()
        || u.update_max_failure_ratio.is_some();
    any.then(|| UpdateConfig {
        parallelism: u.update_parallelism,
        delay: u.update_delay.map(orch::time::duration),
        order: match u.update_order {
            None => UpdateOrder::Unspecified,
            Some(UpdateOrderArg::StopFirst) => UpdateOrder::StopFirst,
            Some(UpdateOrderArg::StartFirst) => UpdateOrder::StartFirst,
        } as i32,
        monitor: u.update_monitor.map(orch::time::duration),
        failure_action: match u.update_failure_action {
            None => FailureAction::Unspecified,
            Some(FailureActionArg::Pause) => FailureAction::Pause,
            Some(FailureActionArg::Rollback) => FailureAction::Rollback,
            Some(FailureActionArg::Continue) => FailureAction::Continue,
        } as i32,
        max_failure_ratio: u.update_max_failure_ratio,
    })
}

/// `orchctl service create`.
async fn create(manager: &Target, a: ServiceCreateArgs, out: Output) -> Result<(), CliError> {
    let detach = a.detach;
    let spec = service_spec(a);
    // The rules the manager would apply, checked before connecting.
    orch::validate::service_spec(&spec).map_err(|e| CliError(format!("invalid argument: {e}")))?;
    let name = spec.name.clone();
    let mut client = connect(manager).await?;
    let events = if detach {
        None
    } else {
        Some(watch(&mut client).await?)
    };
    let reply = client
        .create_service(ApplyServiceRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner();
    let applied = announce(&name, reply, out)?;
    finish(
        &mut client,
        events,
        vec![applied],
        Goal::Rollout,
        out,
        false,
    )
    .await
}

/// `orchctl service ls`.
async fn ls(manager: &Target, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let mut services = Vec::new();
    let mut request = ListServicesRequest::default();
    loop {
        let page = client
            .list_services(request.clone())
            .await
            .map_err(status_error)?
            .into_inner();
        services.extend(page.services);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    match out {
        Output::Json => output::print_json(&Value::Array(
            services.iter().map(output::service_json).collect(),
        )),
        Output::Table => output::print_services(&services),
    }
    Ok(())
}

/// `orchctl service ps NAME`.
async fn ps(manager: &Target, name: &str, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let tasks = list_tasks(
        &mut client,
        ListTasksRequest {
            service: name.to_string(),
            ..Default::default()
        },
    )
    .await?;
    match out {
        Output::Json => {
            output::print_json(&Value::Array(tasks.iter().map(output::task_json).collect()))
        }
        Output::Table => output::print_service_tasks(&tasks),
    }
    Ok(())
}

/// `orchctl service inspect NAME`.
async fn inspect(manager: &Target, name: &str, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let service = the_service(
        client
            .get_service(GetServiceRequest {
                name: name.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .service,
    )?;
    match out {
        Output::Json => output::print_json(&output::service_detail_json(&service)),
        Output::Table => output::print_service(&service),
    }
    Ok(())
}

/// `orchctl service scale NAME=N`.
async fn scale(manager: &Target, name: &str, count: u32, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let service = the_service(
        client
            .scale_service(ScaleServiceRequest {
                name: name.to_string(),
                count,
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .service,
    )?;
    match out {
        Output::Json => output::print_json(&output::service_json(&service)),
        Output::Table => println!("service {name} scaled to {count}"),
    }
    Ok(())
}

/// `orchctl service history NAME`.
async fn history(manager: &Target, name: &str, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let reply = client
        .list_service_versions(ListServiceVersionsRequest {
            name: name.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match out {
        Output::Json => output::print_json(&output::history_json(&reply.versions, reply.current)),
        Output::Table => output::print_history(&reply.versions, reply.current),
    }
    Ok(())
}

/// `orchctl service rollback NAME`.
async fn rollback(manager: &Target, a: RollbackArgs, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let events = if a.detach {
        None
    } else {
        Some(watch(&mut client).await?)
    };
    let service = the_service(
        client
            .rollback_service(RollbackServiceRequest {
                name: a.name.clone(),
                to_version: a.to_version.unwrap_or(0),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .service,
    )?;
    if out == Output::Table {
        println!(
            "service {} rolling back to version {}",
            a.name, service.version
        );
    }
    let services = vec![Followed::new(service, None)];
    finish(&mut client, events, services, Goal::Rollback, out, false).await
}

/// `orchctl service rm NAME`.
async fn rm(manager: &Target, name: &str, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let service = the_service(
        client
            .delete_service(DeleteServiceRequest {
                name: name.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .service,
    )?;
    match out {
        Output::Json => output::print_json(&output::service_json(&service)),
        Output::Table => println!("service {name} removed"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use clap::Parser as _;
    use orch::v1::{
        RestartCondition, RestartPolicy, Rollout, ServiceEvent, TaskEvent, TaskSpec, TaskState,
    };

    use super::*;
    use crate::args::{Cli, Command};

    fn flags(args: &[&str]) -> ServiceCreateArgs {
        let mut all = vec!["orchctl", "service", "create"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Service(ServiceCommand::Create(a))) => *a,
            other => panic!("not service create: {other:?}"),
        }
    }

    #[test]
    fn the_spec_from_flags_leaves_defaults_to_the_manager() {
        let spec = service_spec(flags(&["web", "busybox", "sleep", "3600"]));
        assert_eq!(
            spec,
            ServiceSpec {
                name: "web".into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: None
                })),
                task: Some(TaskSpec {
                    image: "busybox".into(),
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                placement: None,
                update: None,
            }
        );
        orch::validate::service_spec(&spec).expect("a valid spec");
        // Unset means one replica, and restarts always.
        assert_eq!(
            orch::service::restart_policy(&spec).condition(),
            RestartCondition::Always
        );
    }

    #[test]
    fn constraints_go_to_the_placement_and_task_flags_to_the_template() {
        let spec = service_spec(flags(&[
            "--replicas",
            "3",
            "--constraint",
            "zone=a",
            "--constraint",
            "disk=ssd",
            "--cpus",
            "0.5",
            "-m",
            "64Mi",
            "-e",
            "A=1",
            "-l",
            "team=web",
            "-p",
            "8080:80",
            "--stop-timeout",
            "1s",
            "--health-tcp",
            "80",
            "web",
            "img",
        ]));
        assert_eq!(
            spec.mode,
            Some(service_spec::Mode::Replicated(ReplicatedMode {
                replicas: Some(3)
            }))
        );
        let placement = spec.placement.clone().expect("a placement");
        assert_eq!(
            placement.constraints,
            HashMap::from([("zone".into(), "a".into()), ("disk".into(), "ssd".into())])
        );
        let task = spec.task.clone().expect("a task");
        assert!(task.node_selector.is_empty(), "{task:?}");
        assert_eq!(task.name, "", "orch names a service's tasks");
        assert_eq!(
            (task.milli_cpus, task.memory_bytes),
            (Some(500), Some(64 << 20))
        );
        assert_eq!(task.env, HashMap::from([("A".into(), "1".into())]));
        assert_eq!(task.labels, HashMap::from([("team".into(), "web".into())]));
        assert_eq!(task.ports.len(), 1);
        assert_eq!(task.stop_grace_period.map(|d| d.seconds), Some(1));
        assert!(task.health_check.is_some());
        assert_eq!(task.restart, None);
        orch::validate::service_spec(&spec).expect("a valid spec");
    }

    #[test]
    fn restart_flags_follow_the_mode() {
        // A batch job with only --max-restarts restarts on failure.
        let spec = service_spec(flags(&["--batch", "--max-restarts", "5", "job", "img"]));
        assert_eq!(
            spec.task.and_then(|t| t.restart),
            Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                max_restarts: 5
            })
        );
        let spec = service_spec(flags(&["--global", "--max-restarts", "2", "agent", "img"]));
        assert_eq!(spec.mode, Some(service_spec::Mode::Global(GlobalMode {})));
        assert_eq!(
            spec.task.and_then(|t| t.restart),
            Some(RestartPolicy {
                condition: RestartCondition::Always as i32,
                max_restarts: 2
            })
        );
        // --restart alone: no limit.
        let spec = service_spec(flags(&["--restart", "on-failure", "web", "img"]));
        assert_eq!(
            spec.task.and_then(|t| t.restart),
            Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                max_restarts: 0
            })
        );
        // A batch job may not restart always: refused before anything is sent.
        let spec = service_spec(flags(&["--batch", "--restart", "always", "job", "img"]));
        let e = orch::validate::service_spec(&spec).expect_err("refused");
        assert_eq!(e.field, "task.restart.condition");
    }

    #[test]
    fn batch_counts_go_to_the_mode() {
        let spec = service_spec(flags(&[
            "--batch",
            "--completions",
            "5",
            "--parallelism",
            "2",
            "job",
            "img",
        ]));
        assert_eq!(
            spec.mode,
            Some(service_spec::Mode::Batch(BatchMode {
                completions: Some(5),
                parallelism: Some(2)
            }))
        );
        let spec = service_spec(flags(&["--batch", "job", "img"]));
        assert_eq!(
            spec.mode,
            Some(service_spec::Mode::Batch(BatchMode::default()))
        );
    }

    #[test]
    fn update_flags_make_an_update_config_of_only_what_is_given() {
        let spec = service_spec(flags(&["--update-monitor", "1s", "web", "img"]));
        assert_eq!(
            spec.update,
            Some(UpdateConfig {
                monitor: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0
                }),
                ..Default::default()
            })
        );
        let spec = service_spec(flags(&[
            "--update-parallelism",
            "2",
            "--update-delay",
            "500ms",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "continue",
            "--update-max-failure-ratio",
            "0.5",
            "web",
            "img",
        ]));
        assert_eq!(
            spec.update,
            Some(UpdateConfig {
                parallelism: Some(2),
                delay: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000
                }),
                order: UpdateOrder::StartFirst as i32,
                monitor: None,
                failure_action: FailureAction::Continue as i32,
                max_failure_ratio: Some(0.5),
            })
        );
        let spec = service_spec(flags(&["--update-failure-action", "pause", "web", "img"]));
        assert_eq!(
            spec.update.map(|u| (u.failure_action(), u.order())),
            Some((FailureAction::Pause, UpdateOrder::Unspecified))
        );
    }

    #[test]
    fn a_manifest_is_refused_with_its_position_before_anything_is_sent() {
        let bad = "name: web\nreplica: 3\ntask: {image: busybox}\n";
        let e = load_manifest("web.yaml", bad).expect_err("refused");
        assert!(e.0.starts_with("web.yaml:2:1: replica: "), "{}", e.0);
        let e = load_manifest("<stdin>", "# nothing\n").expect_err("refused");
        assert_eq!(e.0, "<stdin>: no service in it");
        let twice = "name: a\ntask: {image: x}\n---\nname: b\ntask: {image: x}\n---\nname: a\ntask: {image: y}\n";
        let e = load_manifest("s.yaml", twice).expect_err("refused");
        assert_eq!(e.0, "s.yaml: service a is in it twice");
        let two = "name: a\ntask: {image: x}\n---\nname: b\nmode: global\ntask: {image: x}\n";
        let specs = load_manifest("s.yaml", two).expect("reads");
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    fn service(name: &str, version: u64, state: RolloutState, updated: u32) -> Service {
        Service {
            spec: Some(ServiceSpec {
                name: name.into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: Some(3),
                })),
                ..Default::default()
            }),
            version,
            rollout: Some(Rollout {
                state: state as i32,
                message: if state == RolloutState::RolledBack {
                    "task web.2 failed: exit 1".into()
                } else {
                    String::new()
                },
                from_version: version.saturating_sub(1),
                to_version: version,
                updated,
                total: 3,
                ..Default::default()
            }),
            desired: 3,
            running: updated,
            ..Default::default()
        }
    }

    fn job(state: JobState, completed: u32) -> Service {
        Service {
            spec: Some(ServiceSpec {
                name: "job".into(),
                mode: Some(service_spec::Mode::Batch(BatchMode {
                    completions: Some(2),
                    parallelism: None,
                })),
                ..Default::default()
            }),
            version: 1,
            desired: 2,
            completed,
            failed: u32::from(state == JobState::Failed),
            job_state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_by_goal() {
        use RolloutState::*;
        let of = |state, goal| outcome(&service("web", 2, state, 1), goal);
        assert_eq!(of(RollingOut, Goal::Rollout), None);
        assert_eq!(of(RollingBack, Goal::Rollout), None);
        assert_eq!(of(RollingBack, Goal::Rollback), None);
        assert_eq!(of(Completed, Goal::Rollout), Some(Ok(())));
        assert_eq!(of(Completed, Goal::Rollback), Some(Ok(())));
        assert_eq!(of(RolledBack, Goal::Rollback), Some(Ok(())));
        assert_eq!(
            of(RolledBack, Goal::Rollout),
            Some(Err("rollout rolled_back: task web.2 failed: exit 1".into()))
        );
        assert_eq!(
            of(Paused, Goal::Rollout),
            Some(Err("rollout paused".into()))
        );
        assert_eq!(
            of(Paused, Goal::Rollback),
            Some(Err("rollout paused".into()))
        );
        // Nothing to follow: no rollout at all.
        let mut none = service("web", 1, Completed, 3);
        none.rollout = None;
        assert_eq!(outcome(&none, Goal::Rollout), Some(Ok(())));
        // A job ends with its job state.
        assert_eq!(outcome(&job(JobState::Running, 1), Goal::Rollout), None);
        assert_eq!(
            outcome(&job(JobState::Completed, 2), Goal::Rollout),
            Some(Ok(()))
        );
        assert!(matches!(
            outcome(&job(JobState::Failed, 1), Goal::Rollout),
            Some(Err(why)) if why.starts_with("job failed: 1 of 2 tasks failed")
        ));
    }

    #[test]
    fn change_lines() {
        let s = service("web", 2, RolloutState::RollingOut, 0);
        let line = |c| change_line("web", c, &s);
        assert_eq!(
            line(ServiceChange::Updated),
            "service web updated to version 2"
        );
        assert_eq!(line(ServiceChange::Scaled), "service web scaled");
        assert_eq!(
            line(ServiceChange::Reconfigured),
            "service web reconfigured"
        );
        assert_eq!(line(ServiceChange::Unchanged), "service web unchanged");
        let s = service("web", 1, RolloutState::RollingOut, 0);
        assert_eq!(
            change_line("web", ServiceChange::Created, &s),
            "service web created (version 1)"
        );
        assert!(has_rollout(ServiceChange::Created) && has_rollout(ServiceChange::Updated));
        for c in [
            ServiceChange::Scaled,
            ServiceChange::Reconfigured,
            ServiceChange::Unchanged,
        ] {
            assert!(!has_rollout(c), "{c:?}");
        }
    }

    /// A scripted manager: the answers of `GetService` per service, in
    /// order (the last repeats), and the event streams of each `watch`.
    #[derive(Default)]
    struct Script {
        services: HashMap<String, VecDeque<Result<Service, tonic::Status>>>,
        watches: VecDeque<Vec<Result<Event, tonic::Status>>>,
        gets: usize,
    }

    impl Script {
        fn answers(mut self, name: &str, answers: Vec<Service>) -> Self {
            self.services
                .insert(name.into(), answers.into_iter().map(Ok).collect());
            self
        }

        fn not_found_after(mut self, name: &str) -> Self {
            if let Some(a) = self.services.get_mut(name) {
                a.push_back(Err(tonic::Status::not_found("no service")));
            }
            self
        }

        fn rewatch(mut self, events: Vec<Event>) -> Self {
            self.watches.push_back(events.into_iter().map(Ok).collect());
            self
        }
    }

    impl Source for Script {
        async fn service(&mut self, name: &str) -> Result<Service, tonic::Status> {
            self.gets += 1;
            let answers = self
                .services
                .get_mut(name)
                .unwrap_or_else(|| panic!("no answers for {name}"));
            if answers.len() > 1 {
                answers.pop_front().unwrap_or_else(|| unreachable!())
            } else {
                answers.front().cloned().unwrap_or_else(|| unreachable!())
            }
        }

        async fn watch(&mut self) -> Result<Events, tonic::Status> {
            let events = self.watches.pop_front().expect("a scripted watch");
            Ok(Box::pin(tokio_stream::iter(events)))
        }
    }

    fn service_event(name: &str, state: RolloutState) -> Event {
        Event {
            kind: Some(event::Kind::Service(ServiceEvent {
                name: name.into(),
                rollout_state: state as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn task_event(service: &str, state: TaskState) -> Event {
        Event {
            kind: Some(event::Kind::Task(TaskEvent {
                service: service.into(),
                state: state as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn stream(events: Vec<Result<Event, tonic::Status>>) -> Events {
        Box::pin(tokio_stream::iter(events))
    }

    /// Follows `names` (as just applied) with `script` and `events`:
    /// returns the result, the progress lines printed, and the script.
    async fn run(
        mut script: Script,
        events: Vec<Result<Event, tonic::Status>>,
        names: &[&str],
        goal: Goal,
    ) -> (Result<Vec<String>, String>, Vec<String>, Script) {
        let mut followed: Vec<Followed> = names
            .iter()
            .map(|n| Followed::new(service(n, 1, RolloutState::RollingOut, 0), None))
            .collect();
        let mut lines = Vec::new();
        let mut print = |l: &str| lines.push(l.to_string());
        let result = follow(&mut script, stream(events), &mut followed, goal, &mut print)
            .await
            .map_err(|e| e.0);
        assert!(
            result.is_err() || followed.iter().all(|f| f.done),
            "follow returned with services not done"
        );
        (result, lines, script)
    }

    #[tokio::test]
    async fn a_rollout_is_followed_to_its_end_with_a_line_per_step() {
        use RolloutState::*;
        let script = Script::default().answers(
            "web",
            vec![
                service("web", 2, RollingOut, 0),
                service("web", 2, RollingOut, 1),
                service("web", 2, RollingOut, 1),
                service("web", 2, Completed, 3),
            ],
        );
        let events = vec![
            // Another service's, and task events of a replicated service:
            // no look.
            Ok(service_event("db", Completed)),
            Ok(task_event("web", TaskState::Running)),
            Ok(service_event("web", RollingOut)),
            Ok(service_event("web", RollingOut)),
            Ok(service_event("web", Completed)),
            // Never read: the rollout ended.
            Err(tonic::Status::internal("read past the end")),
        ];
        let (result, lines, script) = run(script, events, &["web"], Goal::Rollout).await;
        assert_eq!(result, Ok(vec![]));
        assert_eq!(
            lines,
            [
                "web: rolling_out version 2: 0 of 3 updated",
                "web: rolling_out version 2: 1 of 3 updated",
                "web: completed version 2: 3 of 3 updated",
            ]
        );
        assert_eq!(script.gets, 4, "one look first, one per event of web");
    }

    #[tokio::test]
    async fn a_rollout_that_ended_before_any_event_needs_none() {
        let script =
            Script::default().answers("web", vec![service("web", 1, RolloutState::Completed, 3)]);
        let (result, lines, _) = run(script, vec![], &["web"], Goal::Rollout).await;
        assert_eq!(result, Ok(vec![]));
        assert_eq!(lines, ["web: completed version 1: 3 of 3 updated"]);
    }

    #[tokio::test]
    async fn an_old_event_only_makes_it_look_again() {
        use RolloutState::*;
        // The end of the rollout before ours: the service says ours goes on.
        let script = Script::default().answers(
            "web",
            vec![
                service("web", 2, RollingOut, 0),
                service("web", 2, RollingOut, 0),
                service("web", 2, Completed, 3),
            ],
        );
        let events = vec![
            Ok(service_event("web", Completed)),
            Ok(service_event("web", Completed)),
        ];
        let (result, lines, script) = run(script, events, &["web"], Goal::Rollout).await;
        assert_eq!(result, Ok(vec![]));
        assert_eq!(script.gets, 3);
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[tokio::test]
    async fn a_rolled_back_or_paused_rollout_is_a_failure_with_its_message() {
        use RolloutState::*;
        let script = Script::default()
            .answers(
                "web",
                vec![
                    service("web", 2, RollingOut, 0),
                    service("web", 1, RollingBack, 0),
                    service("web", 1, RolledBack, 3),
                ],
            )
            .answers(
                "api",
                vec![
                    service("api", 2, RollingOut, 0),
                    service("api", 2, Paused, 1),
                ],
            );
        let events = vec![
            Ok(service_event("web", RollingBack)),
            Ok(service_event("api", Paused)),
            Ok(service_event("web", RolledBack)),
        ];
        let (result, lines, _) = run(script, events, &["web", "api"], Goal::Rollout).await;
        assert_eq!(
            result,
            Ok(vec![
                "service api: rollout paused".to_string(),
                "service web: rollout rolled_back: task web.2 failed: exit 1".to_string(),
            ])
        );
        assert!(
            lines.contains(&"web: rolled_back version 1: 3 of 3 updated".to_string()),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_rollback_ends_well_rolled_back() {
        use RolloutState::*;
        let script = Script::default().answers(
            "web",
            vec![
                service("web", 1, RollingBack, 0),
                service("web", 1, RolledBack, 3),
            ],
        );
        let events = vec![Ok(service_event("web", RolledBack))];
        let (result, _, _) = run(script, events, &["web"], Goal::Rollback).await;
        assert_eq!(result, Ok(vec![]));
    }

    #[tokio::test]
    async fn cut_off_for_falling_behind_it_watches_again_and_looks_again() {
        use RolloutState::*;
        let script = Script::default()
            .answers(
                "web",
                vec![
                    service("web", 2, RollingOut, 0),
                    // The missed events: it completed meanwhile.
                    service("web", 2, Completed, 3),
                ],
            )
            .rewatch(vec![]);
        let events = vec![Err(tonic::Status::resource_exhausted("fell behind"))];
        let (result, lines, script) = run(script, events, &["web"], Goal::Rollout).await;
        assert_eq!(result, Ok(vec![]));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("web: completed version 2: 3 of 3 updated")
        );
        assert!(script.watches.is_empty(), "it watched again");
    }

    #[tokio::test]
    async fn a_closed_stream_a_deleted_service_and_other_errors_end_it() {
        use RolloutState::*;
        let rolling = || Script::default().answers("web", vec![service("web", 2, RollingOut, 0)]);
        let (result, _, _) = run(rolling(), vec![], &["web"], Goal::Rollout).await;
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.contains("closed the event stream")),
            "{result:?}"
        );
        let (result, _, _) = run(
            rolling(),
            vec![Err(tonic::Status::unavailable("manager gone"))],
            &["web"],
            Goal::Rollout,
        )
        .await;
        assert_eq!(result, Err("manager unavailable: manager gone".into()));
        let script = rolling().not_found_after("web");
        let (result, _, _) = run(
            script,
            vec![Ok(service_event("web", RollingOut))],
            &["web"],
            Goal::Rollout,
        )
        .await;
        assert_eq!(
            result,
            Ok(vec!["service web: deleted before its rollout ended".into()])
        );
    }

    #[tokio::test]
    async fn a_job_is_followed_by_its_tasks_ends() {
        let script = Script::default().answers(
            "job",
            vec![
                job(JobState::Running, 0),
                job(JobState::Running, 1),
                job(JobState::Completed, 2),
            ],
        );
        let mut followed = vec![Followed::new(job(JobState::Running, 0), None)];
        let events = vec![
            Ok(task_event("job", TaskState::Running)),
            Ok(task_event("job", TaskState::Completed)),
            Ok(task_event("job", TaskState::Completed)),
        ];
        let mut script = script;
        let mut lines = Vec::new();
        let mut print = |l: &str| lines.push(l.to_string());
        let result = follow(
            &mut script,
            stream(events),
            &mut followed,
            Goal::Rollout,
            &mut print,
        )
        .await
        .map_err(|e| e.0);
        assert_eq!(result, Ok(vec![]));
        assert_eq!(script.gets, 3, "one look first, one per task that ended");
        assert_eq!(
            lines,
            [
                "job: job running: 0 of 2 completed",
                "job: job running: 1 of 2 completed",
                "job: job completed: 2 of 2 completed",
            ]
        );
    }
}
