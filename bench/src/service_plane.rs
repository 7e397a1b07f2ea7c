//! The service control-plane scenario: one replicated service of N replicas
//! on a cluster of W simulated workers, from `ApplyService` until every
//! replica runs, then `ScaleService` to 0 until none does.
//!
//! The cluster is a [`SimCluster`] (the manager as an `orchctl manager`
//! child process where the binary is found, so its cpu and memory are its
//! own). Each phase is timed from just before its call:
//!
//! - **apply**: `ApplyService` of a new replicated service (the task spec of
//!   the control-plane scenario: 100m cpu, 16 MiB, a simulated image that
//!   runs until stopped), until N distinct tasks of the service have been
//!   `running`;
//! - **scale to 0**: `ScaleService { count: 0 }`, until those N tasks have
//!   all ended.
//!
//! Completion is learnt from `WatchEvents` (task events carry their
//! `service`), on a watcher thread of its own subscribed before the call, as
//! in the control-plane scenario. If the manager cuts the watch stream off
//! because it fell behind, the phase falls back to `ListTasks { service }`,
//! asking for the oldest task of the service still short of the goal (see
//! [`oldest_short`]), and the report says so. Each phase ends with a check
//! through `GetService` (its `running` count), after the clock has stopped.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use orch::v1::{
    ApplyServiceRequest, Event, GetServiceRequest, ListTasksRequest, ReplicatedMode,
    ScaleServiceRequest, ServiceSpec, TaskSpec, TaskState, event, service_spec,
};

use crate::Error;
use crate::cluster::{ManagerKind, SimCluster};
use crate::measure::{Pid, proc_stats};

/// The service's name.
pub const SERVICE: &str = "bench";
/// How often the fallback completion check asks the manager.
const POLL: Duration = Duration::from_millis(20);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// The service's replicas.
    pub replicas: u32,
    /// How many simulated workers.
    pub workers: usize,
    /// Workers' heartbeat period.
    pub heartbeat_period: Duration,
    /// How many heartbeat periods a node may miss before the manager
    /// declares it down.
    pub missed_heartbeats: u32,
    /// Where the manager runs.
    pub manager: ManagerKind,
    /// How long each phase may take before the run gives up.
    pub timeout: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            replicas: 100_000,
            workers: 1_000,
            heartbeat_period: Duration::from_secs(1),
            missed_heartbeats: 3,
            manager: ManagerKind::InProcess,
            timeout: Duration::from_secs(600),
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// From just before the call until its reply (durable).
    pub replied: Duration,
    /// From just before the call until the goal was reached.
    pub done: Duration,
    /// The manager's cpu time over the phase.
    pub manager_cpu: Duration,
    /// This process's cpu time over the phase (simulated workers, clients,
    /// watcher), when the manager runs apart.
    pub harness_cpu: Option<Duration>,
    /// How many events the watcher read before the goal or the cut-off.
    pub events: u64,
    /// Why the watch stream was cut off, if it was and completion was learnt
    /// with `ListTasks` instead.
    pub watch_lagged: Option<String>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The service's replicas.
    pub replicas: u32,
    /// Simulated workers.
    pub workers: usize,
    /// How long the workers took to register and open their sessions.
    pub startup: Duration,
    /// `ApplyService` until every replica runs.
    pub apply: Phase,
    /// `ScaleService` to 0 until none runs.
    pub scale_down: Phase,
    /// The manager's peak resident memory over the whole run, in bytes.
    pub manager_peak_rss: u64,
    /// Whether the manager ran in this process, so that cpu and memory
    /// include the simulated workers'.
    pub manager_in_process: bool,
    /// The store file's size after the run.
    pub store_bytes: u64,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

impl Report {
    fn phase(&self, f: &mut fmt::Formatter<'_>, name: &str, call: &str, p: &Phase) -> fmt::Result {
        let whose = if self.manager_in_process {
            " (whole process)"
        } else {
            ""
        };
        writeln!(
            f,
            "{name:<22}{call} replied after {}, done after {}",
            ms(p.replied),
            ms(p.done)
        )?;
        write!(
            f,
            "{:<22}manager cpu {:.2} s{whose}",
            "",
            p.manager_cpu.as_secs_f64()
        )?;
        if let Some(cpu) = p.harness_cpu {
            write!(f, ", harness cpu {:.2} s", cpu.as_secs_f64())?;
        }
        writeln!(f, ", {} events watched", p.events)?;
        if let Some(why) = &p.watch_lagged {
            writeln!(
                f,
                "{:<22}the manager cut the watch stream off {why}; completion was learnt with ListTasks",
                ""
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "replicas              {}", self.replicas)?;
        writeln!(f, "workers               {}", self.workers)?;
        writeln!(f, "workers ready after   {}", ms(self.startup))?;
        self.phase(f, "apply → all running", "ApplyService", &self.apply)?;
        self.phase(f, "scale 0 → none runs", "ScaleService", &self.scale_down)?;
        let whose = if self.manager_in_process {
            " (whole process: manager and simulated workers)"
        } else {
            " (manager process alone)"
        };
        writeln!(
            f,
            "manager peak RSS      {:.0} MiB{whose}",
            self.manager_peak_rss as f64 / (1 << 20) as f64
        )?;
        writeln!(
            f,
            "store file            {:.1} MiB",
            self.store_bytes as f64 / (1 << 20) as f64
        )
    }
}

/// The service: `replicas` copies of the control-plane scenario's task.
fn service(replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: SERVICE.into(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(replicas),
        })),
        task: Some(TaskSpec {
            image: "sim/app".into(),
            milli_cpus: Some(100),
            memory_bytes: Some(16 << 20),
            ..TaskSpec::default()
        }),
        ..ServiceSpec::default()
    }
}

/// What a phase waits for: `count` distinct tasks of [`SERVICE`] reaching
/// `running`, or ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// That many tasks have been `running`.
    Running(usize),
    /// That many tasks have ended (any terminal state).
    Ended(usize),
}

impl Goal {
    fn count(self) -> usize {
        match self {
            Goal::Running(n) | Goal::Ended(n) => n,
        }
    }

    /// Whether a task in `state` has reached the goal.
    fn reached(self, state: TaskState) -> bool {
        match self {
            Goal::Running(_) => state == TaskState::Running,
            Goal::Ended(_) => orch::task_state::is_terminal(state),
        }
    }

    /// The states of a task still short of the goal (for `ListTasks`).
    /// A task never leaves `running` in the apply phase (the simulated
    /// containers run until stopped) nor comes back after it ended.
    fn short(self) -> Vec<i32> {
        let mut states = vec![
            TaskState::Pending,
            TaskState::Scheduled,
            TaskState::Starting,
        ];
        if matches!(self, Goal::Ended(_)) {
            states.push(TaskState::Running);
        }
        states.into_iter().map(|s| s as i32).collect()
    }
}

/// How a watch ended.
enum Watched {
    /// The goal was reached after this many events.
    Reached(u64),
    /// The manager cut the stream off, with this message, after this many
    /// events had arrived.
    Lagged(String, u64),
}

/// Follows the event stream until `goal` is reached by tasks of [`SERVICE`].
async fn watch(mut events: tonic::Streaming<Event>, goal: Goal) -> Result<Watched, Error> {
    let mut reached = HashSet::with_capacity(goal.count());
    let mut seen = 0u64;
    while reached.len() < goal.count() {
        let e = match events.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(Error::Manager("the event stream ended".into())),
            Err(s) if crate::cluster::watch_cut_off(&s) => {
                return Ok(Watched::Lagged(s.message().to_string(), seen));
            }
            Err(s) => return Err(s.into()),
        };
        seen += 1;
        let Some(event::Kind::Task(t)) = e.kind else {
            continue;
        };
        if t.service == SERVICE && goal.reached(t.state()) {
            reached.insert(t.task_id);
        }
    }
    Ok(Watched::Reached(seen))
}

/// The oldest task of [`SERVICE`] at or after `from` still short of `goal`,
/// if any. Tasks are listed in creation order and none moves back away from
/// the goal here, so the next call can start from the one found: the whole
/// wait scans each task about once.
async fn oldest_short(
    client: &mut orch::auth::Client,
    goal: Goal,
    from: Option<uuid::Uuid>,
) -> Result<Option<uuid::Uuid>, Error> {
    // The page token is exclusive: start just before `from`.
    let page_token = from
        .map(|id| uuid::Uuid::from_u128(id.as_u128().saturating_sub(1)).to_string())
        .unwrap_or_default();
    let page = client
        .list_tasks(ListTasksRequest {
            states: goal.short(),
            page_size: 1,
            page_token,
            service: SERVICE.into(),
            ..ListTasksRequest::default()
        })
        .await?
        .into_inner();
    Ok(page
        .tasks
        .first()
        .and_then(|t| uuid::Uuid::parse_str(&t.id).ok()))
}

/// The service's `running` count, by `GetService`.
async fn running(client: &mut orch::auth::Client) -> Result<u32, Error> {
    let reply = client
        .get_service(GetServiceRequest {
            name: SERVICE.into(),
        })
        .await?
        .into_inner();
    Ok(reply.service.map(|s| s.running).unwrap_or_default())
}

/// Runs the scenario on a new cluster, which it shuts down afterwards.
///
/// # Errors
/// If the cluster cannot start, a call fails, a phase does not reach its
/// goal within `params.timeout`, or the final counts are wrong.
pub async fn run(params: &Params) -> Result<Report, Error> {
    let begun = Instant::now();
    let cluster = SimCluster::builder()
        .workers(params.workers)
        .manager(params.manager.clone())
        .heartbeat_period(params.heartbeat_period)
        .missed_heartbeats(params.missed_heartbeats)
        .start()
        .await?;
    let startup = begun.elapsed();
    let result = measure(&cluster, params, startup).await;
    cluster.shutdown().await;
    result
}

async fn measure(
    cluster: &SimCluster,
    params: &Params,
    startup: Duration,
) -> Result<Report, Error> {
    let mut client = cluster.client().await?;
    let replicas = params.replicas;
    let n = replicas as usize;

    // Futures do nothing until polled: each call is made inside `phase`,
    // after its watcher subscribed and its clock started.
    let mut caller = cluster.client().await?;
    let apply_call = async move {
        caller
            .apply_service(ApplyServiceRequest {
                spec: Some(service(replicas)),
            })
            .await
            .map(|_| ())
    };
    let apply = phase(
        cluster,
        &mut client,
        params,
        Goal::Running(n),
        "ApplyService",
        apply_call,
    )
    .await?;
    let up = running(&mut client)
        .await
        .map_err(|e| Error::Manager(format!("GetService: {e}")))?;
    if up != replicas {
        return Err(Error::Check(format!(
            "{up} of {replicas} replicas running after all were seen running"
        )));
    }

    let mut caller = cluster.client().await?;
    let scale_call = async move {
        caller
            .scale_service(ScaleServiceRequest {
                name: SERVICE.into(),
                count: 0,
            })
            .await
            .map(|_| ())
    };
    let scale_down = phase(
        cluster,
        &mut client,
        params,
        Goal::Ended(n),
        "ScaleService",
        scale_call,
    )
    .await?;
    let left = running(&mut client)
        .await
        .map_err(|e| Error::Manager(format!("GetService: {e}")))?;
    if left != 0 {
        return Err(Error::Check(format!(
            "{left} replicas still running after all {replicas} were seen ending"
        )));
    }

    Ok(Report {
        replicas,
        workers: cluster.worker_count(),
        startup,
        apply,
        scale_down,
        manager_peak_rss: cluster
            .manager_stats()
            .map(|s| s.peak_rss_bytes)
            .unwrap_or_default(),
        manager_in_process: cluster.manager_in_process(),
        store_bytes: cluster.store_bytes(),
    })
}

/// Subscribes a watcher, makes `call` (the phase's request, on a client of
/// its own) and waits until `goal` is reached (by the watch, or by
/// `ListTasks` on `client` if the watch was cut off).
async fn phase(
    cluster: &SimCluster,
    client: &mut orch::auth::Client,
    params: &Params,
    goal: Goal,
    what: &str,
    call: impl Future<Output = Result<(), tonic::Status>>,
) -> Result<Phase, Error> {
    let watch =
        crate::cluster::watch_apart(cluster.access().clone(), move |events| watch(events, goal))
            .await?;
    let cpu_before = cluster.manager_stats().map(|s| s.cpu).unwrap_or_default();
    let harness_before = proc_stats(Pid::This).map(|s| s.cpu).unwrap_or_default();
    let t0 = Instant::now();
    call.await.map_err(|s| {
        Error::Manager(format!(
            "{what} failed after {:?}: {}: {}",
            t0.elapsed(),
            s.code(),
            s.message()
        ))
    })?;
    let replied = t0.elapsed();

    let deadline = tokio::time::Instant::now() + params.timeout;
    let timed_out = || {
        Error::Timeout(format!(
            "{goal:?} not reached {:?} after the call",
            params.timeout
        ))
    };
    let watched = tokio::time::timeout_at(deadline, watch)
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| Error::Manager("the watcher thread died".into()))??;
    let (events, watch_lagged) = match watched {
        Watched::Reached(seen) => (seen, None),
        Watched::Lagged(why, seen) => {
            let mut from = None;
            while let Some(id) = oldest_short(client, goal, from)
                .await
                .map_err(|e| Error::Manager(format!("ListTasks after {what}: {e}")))?
            {
                if tokio::time::Instant::now() > deadline {
                    return Err(timed_out());
                }
                from = Some(id);
                tokio::time::sleep(POLL).await;
            }
            (seen, Some(format!("after {seen} events: {why}")))
        }
    };
    let done = t0.elapsed();
    let cpu = cluster.manager_stats().map(|s| s.cpu).unwrap_or_default();
    let harness_cpu = (!cluster.manager_in_process()).then(|| {
        proc_stats(Pid::This)
            .map(|s| s.cpu)
            .unwrap_or_default()
            .saturating_sub(harness_before)
    });
    Ok(Phase {
        replied,
        done,
        manager_cpu: cpu.saturating_sub(cpu_before),
        harness_cpu,
        events,
        watch_lagged,
    })
}
