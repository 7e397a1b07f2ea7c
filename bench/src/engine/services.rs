//! The real-engine services scenario: orch's services against Docker
//! Swarm's on this machine's engine, with the same image and command
//! (`sleep 3600` in the busybox test image).
//!
//! - **create**: a replicated service of N replicas (50 by default), from
//!   the create call until the engine has started N containers. orch: a
//!   fresh manager and one real worker per measurement (as
//!   [`OrchCluster`] starts them), `ApplyService`. Swarm: `docker service
//!   create --replicas N` in the one-node swarm, through the Engine API as
//!   [`Swarm`] does.
//! - **update**: a rolling update of a service of M replicas (20) with
//!   parallelism P (5), stop-first, no delay and no monitor, to a template
//!   that differs by one environment variable (and the version label): from
//!   the update call until the engine has started M containers of the new
//!   version and every container of the old one has died. orch:
//!   `ApplyService` with the changed template and `update: {parallelism: P,
//!   delay: 0s, monitor: 0s, order: stop-first}`. Swarm: `docker service
//!   update --env-add … --update-parallelism P --update-delay 0s
//!   --update-monitor 0s`, as the service update call with the spec's
//!   version index. The service is created (and waited for) first,
//!   untimed.
//!
//! Both systems are timed by the engine's own events (`start` of each
//! container, `die` of each old one; see [`churn`](super::churn)), so one
//! clock measures both. Each measurement also records when the system
//! itself said it was done: orch's client receiving the `running` event of
//! every task (create) or the service event of the rollout `completed`
//! (update); Swarm's `UpdateStatus` reading `completed` (update only),
//! polled every 100 ms once the engine has seen the update through, so the
//! polling never competes with the update for the engine.
//!
//! `sleep` as a container's first process ignores SIGTERM, so each stop of
//! an old container waits out the whole stop grace period before SIGKILL.
//! Both systems get the same grace period, 0 s by default: the update then
//! measures how the orchestrators replace tasks, not how long they wait.
//!
//! Rounds interleave the systems (orch, Swarm, then again), so slow moments
//! of a shared machine fall on both. Between measurements every container
//! the scenario made is force-removed and the engine gets a pause to
//! settle. Whatever happens (an error, Ctrl-C), the scenario ends by
//! removing its services and containers and leaving the swarm it created.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use bollard::models::{
    ServiceSpec as SwarmServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum, TaskSpec as SwarmTaskSpec,
    TaskSpecContainerSpec,
};
use bollard::query_parameters::UpdateServiceOptionsBuilder;
use orch::v1::{
    ApplyServiceRequest, Event, ReplicatedMode, RolloutState, ServiceSpec, TaskSpec, TaskState,
    UpdateConfig, UpdateOrder, event, service_spec,
};

use super::churn::VERSION_LABEL;
use super::docker::{COMMAND, Engine};
use super::orch_cluster::OrchCluster;
use super::swarm::Swarm;
use super::{Cpu, System, after, median, secs};
use crate::Error;
use crate::cluster::ManagerKind;

/// The environment variable whose value makes the new template.
pub const VERSION_ENV: &str = "ORCH_BENCH_VERSION";
/// How often Swarm's `UpdateStatus` is read once the engine saw the update through.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Replicas of the service created (the create measurement).
    pub replicas: usize,
    /// Replicas of the service updated (the update measurement).
    pub update_replicas: usize,
    /// Tasks replaced at once by the update.
    pub parallelism: u32,
    /// Rounds (each measures orch and Swarm once, for both scenarios).
    pub runs: usize,
    /// The stop grace period of every container, on both systems.
    pub stop_grace: Duration,
    /// Where orch's manager and worker run.
    pub orch: ManagerKind,
    /// Whether to measure Docker Swarm (skipped anyway if `swarm init` fails).
    pub swarm: bool,
    /// The pause after clean-up before the next measurement, and between
    /// an update's untimed set-up and its timed update.
    pub settle: Duration,
    /// The longest one measurement may take.
    pub timeout: Duration,
    /// Print a line per measurement on stderr.
    pub progress: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            replicas: 50,
            update_replicas: 20,
            parallelism: 5,
            runs: 3,
            stop_grace: Duration::ZERO,
            orch: ManagerKind::InProcess,
            swarm: true,
            settle: Duration::from_secs(2),
            timeout: Duration::from_secs(300),
            progress: false,
        }
    }
}

/// The two measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A new service, until all its containers started.
    Create,
    /// A rolling update, until all new containers started and all old died.
    Update,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Create => "create",
            Scenario::Update => "update",
        }
    }
}

/// One measurement of one system.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// From the call until the engine saw the last event that counts (the
    /// last start; for an update, the later of the last new start and the
    /// last old container's death).
    pub total: Duration,
    /// From the call until the system said it was done (see the module
    /// documentation), if it says so.
    pub reported: Option<Duration>,
    /// When the engine started each (new) container, from the call, sorted.
    pub starts: Vec<Duration>,
    /// When each old container died, from the call, sorted (updates only).
    pub dies: Vec<Duration>,
    /// The cpu time the whole machine spent busy meanwhile (all processes).
    pub machine_cpu: Duration,
    /// The cpu time of orch's manager and worker processes meanwhile, if
    /// they ran as child processes.
    pub orch_cpu: Option<Duration>,
}

/// Every measurement of one scenario.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which scenario.
    pub scenario: Scenario,
    /// How many replicas its service has.
    pub replicas: usize,
    /// The samples of each system, in round order.
    pub samples: Vec<(System, Vec<Sample>)>,
}

/// One system's medians in one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Of the totals.
    pub total: Duration,
    /// Of the times the system said it was done, where it says so.
    pub reported: Option<Duration>,
    /// Of the last (new) container's start.
    pub last_start: Duration,
    /// Of the last old container's death (updates).
    pub last_die: Option<Duration>,
    /// Of the machine's busy cpu time.
    pub machine_cpu: Duration,
    /// Of orch's own cpu time, where known.
    pub orch_cpu: Option<Duration>,
}

impl Row {
    /// The medians of `system`, if it was measured.
    pub fn summary(&self, system: System) -> Option<Summary> {
        let samples = self
            .samples
            .iter()
            .find(|(s, _)| *s == system)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())?;
        let all = |f: fn(&Sample) -> Option<Duration>| -> Option<Duration> {
            samples
                .iter()
                .map(f)
                .collect::<Option<Vec<_>>>()
                .map(median)
        };
        Some(Summary {
            total: median(samples.iter().map(|s| s.total).collect()),
            reported: all(|s| s.reported),
            last_start: median(
                samples
                    .iter()
                    .map(|s| s.starts.last().copied().unwrap_or_default())
                    .collect(),
            ),
            last_die: all(|s| s.dies.last().copied()),
            machine_cpu: median(samples.iter().map(|s| s.machine_cpu).collect()),
            orch_cpu: all(|s| s.orch_cpu),
        })
    }

    /// Swarm's median time over orch's: how many times faster orch is.
    pub fn ratio(&self) -> Option<f64> {
        let orch = self.summary(System::Orch)?;
        let swarm = self.summary(System::Swarm)?;
        Some(swarm.total.as_secs_f64() / orch.total.as_secs_f64().max(1e-9))
    }

    fn push(&mut self, system: System, sample: Sample) {
        match self.samples.iter_mut().find(|(s, _)| *s == system) {
            Some((_, v)) => v.push(sample),
            None => self.samples.push((system, vec![sample])),
        }
    }
}

/// What the scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The image every container ran.
    pub image: String,
    /// The update's parallelism.
    pub parallelism: u32,
    /// The containers' stop grace period.
    pub stop_grace: Duration,
    /// One row per scenario.
    pub rows: Vec<Row>,
    /// Why Swarm was not measured, if it was not.
    pub swarm_skipped: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image                 {}", self.image)?;
        writeln!(
            f,
            "update                parallelism {}, stop-first, delay 0s, monitor 0s; stop grace {}",
            self.parallelism,
            humantime::format_duration(self.stop_grace)
        )?;
        if let Some(why) = &self.swarm_skipped {
            writeln!(f, "swarm                 not measured: {why}")?;
        }
        writeln!(
            f,
            "| scenario | replicas | system | runs | median | last start | last old died | system said done | machine cpu | orch cpu | swarm ÷ orch |"
        )?;
        writeln!(
            f,
            "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for row in &self.rows {
            for (system, samples) in &row.samples {
                let Some(s) = row.summary(*system) else {
                    continue;
                };
                let runs: Vec<String> = samples.iter().map(|x| secs(x.total)).collect();
                let ratio = match system {
                    System::Swarm => row.ratio().map_or_else(String::new, |r| format!("{r:.2}×")),
                    _ => String::new(),
                };
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} |",
                    row.scenario.name(),
                    row.replicas,
                    system.name(),
                    runs.join(", "),
                    secs(s.total),
                    secs(s.last_start),
                    s.last_die.map_or_else(String::new, secs),
                    s.reported.map_or_else(String::new, secs),
                    secs(s.machine_cpu),
                    s.orch_cpu.map_or_else(String::new, secs),
                )?;
            }
        }
        Ok(())
    }
}

/// Runs the scenario, then removes everything it made (also after an error
/// or Ctrl-C) and leaves the swarm it created.
///
/// # Errors
/// If the engine cannot be reached, a measurement fails or times out, or
/// the clean-up fails (the message says what is left).
pub async fn run(params: &Params) -> Result<Report, Error> {
    super::on_engine(
        params.swarm,
        params.progress,
        |engine, swarm_skipped| Report {
            image: engine.image.clone(),
            parallelism: params.parallelism,
            stop_grace: params.stop_grace,
            swarm_skipped,
            ..Report::default()
        },
        async |engine, swarm, report| measure(engine, swarm, params, report).await,
    )
    .await
}

async fn measure(
    engine: &Engine,
    swarm: Option<&Swarm>,
    params: &Params,
    report: &mut Report,
) -> Result<(), Error> {
    for scenario in [Scenario::Create, Scenario::Update] {
        let replicas = match scenario {
            Scenario::Create => params.replicas,
            Scenario::Update => params.update_replicas,
        };
        let mut row = Row {
            scenario,
            replicas,
            samples: Vec::new(),
        };
        for round in 0..params.runs {
            for system in [System::Orch, System::Swarm] {
                let sample = match (system, swarm, scenario) {
                    (System::Orch, _, Scenario::Create) => orch_create(engine, params).await?,
                    (System::Orch, _, Scenario::Update) => orch_update(engine, params).await?,
                    (System::Swarm, Some(_), Scenario::Create) => {
                        swarm_create(engine, params, round).await?
                    }
                    (System::Swarm, Some(_), Scenario::Update) => {
                        swarm_update(engine, params, round).await?
                    }
                    _ => continue,
                };
                if params.progress {
                    eprintln!(
                        "{} {replicas}, round {}: {} {}",
                        scenario.name(),
                        round + 1,
                        system.name(),
                        secs(sample.total)
                    );
                }
                row.push(system, sample);
                if let Some(swarm) = swarm {
                    swarm.remove_services(engine).await?;
                }
                engine.remove_ours().await?;
                tokio::time::sleep(params.settle).await;
            }
        }
        report.rows.push(row);
    }
    Ok(())
}

/// The labels of a container of `system` running template `version`.
fn labels(system: &str, version: u32) -> HashMap<String, String> {
    let mut labels = Engine::labels(system);
    labels.insert(VERSION_LABEL.to_string(), version.to_string());
    labels
}

/// orch's service: `replicas` copies of the image's `sleep 3600`, template
/// `version`.
fn orch_spec(
    image: &str,
    name: &str,
    replicas: usize,
    version: u32,
    params: &Params,
) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(u32::try_from(replicas).unwrap_or(u32::MAX)),
        })),
        task: Some(TaskSpec {
            image: image.to_string(),
            command: COMMAND.map(String::from).to_vec(),
            env: HashMap::from([(VERSION_ENV.to_string(), version.to_string())]),
            labels: labels(System::Orch.name(), version),
            stop_grace_period: Some(orch::time::duration(params.stop_grace)),
            ..TaskSpec::default()
        }),
        update: Some(UpdateConfig {
            parallelism: Some(params.parallelism),
            delay: Some(orch::time::duration(Duration::ZERO)),
            order: UpdateOrder::StopFirst as i32,
            monitor: Some(orch::time::duration(Duration::ZERO)),
            ..UpdateConfig::default()
        }),
        ..ServiceSpec::default()
    }
}

/// Swarm's service, the same as [`orch_spec`]'s: `docker service create
/// --no-resolve-image --replicas N --env ORCH_BENCH_VERSION=V
/// --stop-grace-period G --update-parallelism P --update-delay 0s
/// --update-monitor 0s --update-order stop-first IMAGE sleep 3600`, with
/// the labels on service and containers.
fn swarm_spec(
    image: &str,
    name: &str,
    replicas: usize,
    version: u32,
    params: &Params,
) -> SwarmServiceSpec {
    let system = System::Swarm.name();
    SwarmServiceSpec {
        name: Some(name.to_string()),
        labels: Some(Engine::labels(system)),
        task_template: Some(SwarmTaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                args: Some(COMMAND.map(String::from).to_vec()),
                env: Some(vec![format!("{VERSION_ENV}={version}")]),
                labels: Some(labels(system, version)),
                stop_grace_period: Some(
                    i64::try_from(params.stop_grace.as_nanos()).unwrap_or(i64::MAX),
                ),
                ..TaskSpecContainerSpec::default()
            }),
            ..SwarmTaskSpec::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::try_from(replicas).unwrap_or(i64::MAX)),
            }),
            ..ServiceSpecMode::default()
        }),
        // The CLI's defaults, but for the flags above. A monitor of 0 is
        // sent as the CLI sends it; the engine reads 0 as "unset" and
        // Swarm monitors for its default 5 s after the last task, which
        // delays only its `UpdateStatus`, not the tasks' replacement.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(i64::from(params.parallelism)),
            delay: Some(0),
            monitor: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
            order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
            max_failure_ratio: None,
        }),
        ..SwarmServiceSpec::default()
    }
}

/// What an orch measurement waits for on the event stream.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// `n` distinct tasks of the service have been `running`.
    Running(usize),
    /// The service's rollout to `version` completed.
    Completed(u64),
}

/// Makes `ApplyService` with `spec` and follows the event stream until
/// `until`; returns how long after the call that was seen.
///
/// # Errors
/// If the call fails, a task of the service ends before running (for
/// `Running`), the rollout pauses or rolls back (for `Completed`), or
/// `timeout` passes.
async fn apply_and_follow(
    cluster: &mut OrchCluster,
    spec: ServiceSpec,
    until: Until,
    timeout: Duration,
) -> Result<Duration, Error> {
    let name = spec.name.clone();
    let (client, events) = cluster.parts();
    let t0 = tokio::time::Instant::now();
    let apply = client.apply_service(ApplyServiceRequest { spec: Some(spec) });
    let service = name.clone();
    let follow = async move {
        let name = service;
        tokio::pin!(apply);
        let mut replied = false;
        let mut seen: Option<Duration> = None;
        let mut running = HashSet::new();
        loop {
            if let (true, Some(at)) = (replied, seen) {
                return Ok(at);
            }
            tokio::select! {
                reply = &mut apply, if !replied => {
                    reply?;
                    replied = true;
                }
                e = events.message() => {
                    let e: Event = e?.ok_or_else(|| Error::Manager("the event stream ended".into()))?;
                    if seen.is_some() {
                        continue;
                    }
                    match (e.kind, until) {
                        (Some(event::Kind::Task(t)), Until::Running(n)) if t.service == name => {
                            match t.state() {
                                TaskState::Running => {
                                    running.insert(t.task_id);
                                    if running.len() >= n {
                                        seen = Some(t0.elapsed());
                                    }
                                }
                                s if orch::task_state::is_terminal(s) => {
                                    return Err(Error::Check(format!(
                                        "task {} of service {name} is {} before running: {}",
                                        t.task_id,
                                        orch::task_state::name(s),
                                        t.message
                                    )));
                                }
                                _ => {}
                            }
                        }
                        (Some(event::Kind::Service(s)), Until::Completed(version))
                            if s.name == name && s.version == version =>
                        {
                            match s.rollout_state() {
                                RolloutState::Completed => seen = Some(t0.elapsed()),
                                RolloutState::Paused
                                | RolloutState::RollingBack
                                | RolloutState::RolledBack => {
                                    return Err(Error::Check(format!(
                                        "service {name}: the rollout of version {version} failed: {}",
                                        s.message
                                    )));
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, follow).await.map_err(|_| {
        Error::Timeout(format!(
            "service {name}: {until:?} not seen after {timeout:?}"
        ))
    })?
}

/// orch: a new service of `params.replicas`, until the engine started them all.
async fn orch_create(engine: &Engine, params: &Params) -> Result<Sample, Error> {
    let system = System::Orch.name();
    let n = params.replicas;
    let spec = orch_spec(&engine.image, "bench-create", n, 1, params);
    let mut cluster = OrchCluster::start(&params.orch).await?;
    let measured = async {
        let cpu = Cpu::now(cluster.cpu());
        let since = SystemTime::now();
        let starts = engine.starts(system, n, since, params.timeout);
        let seen = apply_and_follow(&mut cluster, spec, Until::Running(n), params.timeout).await?;
        let starts = after(since, starts.wait().await?);
        let (machine_cpu, orch_cpu) = cpu.since(cluster.cpu());
        Ok(Sample {
            total: starts.last().copied().unwrap_or_default(),
            reported: Some(seen),
            starts,
            dies: Vec::new(),
            machine_cpu,
            orch_cpu,
        })
    }
    .await;
    cluster.shutdown().await;
    measured
}

/// orch: a service of `params.update_replicas`, created and run untimed,
/// then updated to a new template, until the engine saw the turnover.
async fn orch_update(engine: &Engine, params: &Params) -> Result<Sample, Error> {
    let system = System::Orch.name();
    let n = params.update_replicas;
    let name = "bench-update";
    let mut cluster = OrchCluster::start(&params.orch).await?;
    let measured = async {
        // Set-up: version 1 runs everywhere and its rollout completed.
        let v1 = orch_spec(&engine.image, name, n, 1, params);
        let started = engine.starts(system, n, SystemTime::now(), params.timeout);
        apply_and_follow(&mut cluster, v1, Until::Completed(1), params.timeout).await?;
        started.wait().await?;
        tokio::time::sleep(params.settle).await;

        let cpu = Cpu::now(cluster.cpu());
        let since = SystemTime::now();
        let old = old_containers(engine, system, n).await?;
        let churn = engine.churn(system, "2", n, old, since, params.timeout);
        let v2 = orch_spec(&engine.image, name, n, 2, params);
        let seen = apply_and_follow(&mut cluster, v2, Until::Completed(2), params.timeout).await?;
        let turnover = churn.wait().await?;
        let (machine_cpu, orch_cpu) = cpu.since(cluster.cpu());
        check_turned_over(engine, system, n).await?;
        Ok(update_sample(
            since,
            turnover,
            Some(seen),
            machine_cpu,
            orch_cpu,
        ))
    }
    .await;
    cluster.shutdown().await;
    measured
}

/// The running containers of `system`'s version 1, which must be `n`.
async fn old_containers(engine: &Engine, system: &str, n: usize) -> Result<HashSet<String>, Error> {
    let old: HashSet<String> = engine
        .running_version(system, "1")
        .await?
        .into_iter()
        .collect();
    if old.len() != n {
        return Err(Error::Check(format!(
            "{system}: {} containers of version 1 run before the update, not {n}",
            old.len()
        )));
    }
    Ok(old)
}

/// Checks that `n` containers of version 2 run and none of version 1.
async fn check_turned_over(engine: &Engine, system: &str, n: usize) -> Result<(), Error> {
    let new = engine.running_version(system, "2").await?.len();
    let old = engine.running_version(system, "1").await?.len();
    if new != n || old != 0 {
        return Err(Error::Check(format!(
            "{system}: after the update {new} containers of version 2 run (not {n}) and {old} of version 1"
        )));
    }
    Ok(())
}

fn update_sample(
    since: SystemTime,
    turnover: super::churn::Turnover,
    reported: Option<Duration>,
    machine_cpu: Duration,
    orch_cpu: Option<Duration>,
) -> Sample {
    let starts = after(since, turnover.starts);
    let dies = after(since, turnover.dies);
    let total = starts
        .last()
        .copied()
        .max(dies.last().copied())
        .unwrap_or_default();
    Sample {
        total,
        reported,
        starts,
        dies,
        machine_cpu,
        orch_cpu,
    }
}

/// Swarm: a new service of `params.replicas`, until the engine started them all.
async fn swarm_create(engine: &Engine, params: &Params, round: usize) -> Result<Sample, Error> {
    let system = System::Swarm.name();
    let n = params.replicas;
    let name = format!("orch-bench-create-{round}");
    let spec = swarm_spec(&engine.image, &name, n, 1, params);
    let cpu = Cpu::now(None);
    let since = SystemTime::now();
    let starts = engine.starts(system, n, since, params.timeout);
    create_swarm_service(engine, spec).await?;
    let starts = after(since, starts.wait().await?);
    let (machine_cpu, _) = cpu.since(None);
    let running = engine.ours(Some(system), true).await?.len();
    if running < n {
        return Err(Error::Check(format!(
            "swarm service {name}: {running} of {n} containers running after all started"
        )));
    }
    Ok(Sample {
        total: starts.last().copied().unwrap_or_default(),
        reported: None,
        starts,
        dies: Vec::new(),
        machine_cpu,
        orch_cpu: None,
    })
}

async fn create_swarm_service(engine: &Engine, spec: SwarmServiceSpec) -> Result<(), Error> {
    let name = spec.name.clone().unwrap_or_default();
    engine
        .docker
        .create_service(spec, None)
        .await
        .map(|_| ())
        .map_err(|e| Error::Io(format!("docker: service create {name}: {e}")))
}

/// Swarm: a service of `params.update_replicas`, created and run untimed,
/// then updated to a new template, until the engine saw the turnover.
async fn swarm_update(engine: &Engine, params: &Params, round: usize) -> Result<Sample, Error> {
    let system = System::Swarm.name();
    let n = params.update_replicas;
    let name = format!("orch-bench-update-{round}");
    // Set-up: version 1 runs everywhere.
    let started = engine.starts(system, n, SystemTime::now(), params.timeout);
    create_swarm_service(engine, swarm_spec(&engine.image, &name, n, 1, params)).await?;
    started.wait().await?;
    tokio::time::sleep(params.settle).await;

    let service = engine
        .docker
        .inspect_service(&name, None)
        .await
        .map_err(|e| Error::Io(format!("docker: service inspect {name}: {e}")))?;
    let index = service.version.and_then(|v| v.index).unwrap_or_default();
    let mut spec = service.spec.unwrap_or_default();
    // `docker service update --env-add` and `--container-label-add`: the
    // rest of the spec as the engine holds it.
    let fresh = swarm_spec(&engine.image, &name, n, 2, params);
    let container = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
        .ok_or_else(|| Error::Check(format!("swarm service {name} has no container spec")))?;
    let fresh = fresh
        .task_template
        .and_then(|t| t.container_spec)
        .unwrap_or_default();
    container.env = fresh.env;
    container.labels = fresh.labels;
    let options = UpdateServiceOptionsBuilder::new()
        .version(i32::try_from(index).unwrap_or(i32::MAX))
        .build();

    let cpu = Cpu::now(None);
    let since = SystemTime::now();
    let old = old_containers(engine, system, n).await?;
    let churn = engine.churn(system, "2", n, old, since, params.timeout);
    let t0 = tokio::time::Instant::now();
    engine
        .docker
        .update_service(&name, spec, options, None)
        .await
        .map_err(|e| Error::Io(format!("docker: service update {name}: {e}")))?;
    let turnover = churn.wait().await?;
    let (machine_cpu, _) = cpu.since(None);
    let reported = swarm_update_completed(engine, &name, t0, params.timeout).await?;
    check_turned_over(engine, system, n).await?;
    Ok(update_sample(
        since,
        turnover,
        Some(reported),
        machine_cpu,
        None,
    ))
}

/// Reads the service's `UpdateStatus` every [`STATUS_POLL`] until it is
/// `completed`; returns when that was first read, after `t0`.
///
/// # Errors
/// If the update paused or rolled back, or did not complete in `timeout`.
async fn swarm_update_completed(
    engine: &Engine,
    name: &str,
    t0: tokio::time::Instant,
    timeout: Duration,
) -> Result<Duration, Error> {
    let poll = async {
        loop {
            let service = engine
                .docker
                .inspect_service(name, None)
                .await
                .map_err(|e| Error::Io(format!("docker: service inspect {name}: {e}")))?;
            let status = service.update_status.unwrap_or_default();
            match status.state {
                Some(ServiceUpdateStatusStateEnum::COMPLETED) => return Ok(t0.elapsed()),
                Some(
                    s @ (ServiceUpdateStatusStateEnum::PAUSED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED),
                ) => {
                    return Err(Error::Check(format!(
                        "swarm service {name}: update {s}: {}",
                        status.message.unwrap_or_default()
                    )));
                }
                _ => tokio::time::sleep(STATUS_POLL).await,
            }
        }
    };
    tokio::time::timeout(timeout, poll).await.map_err(|_| {
        Error::Timeout(format!(
            "swarm service {name}: update not completed after {timeout:?}"
        ))
    })?
}
