//! The control-plane scenario: submit N tasks to a cluster of W simulated
//! workers and measure until every one of them is running.
//!
//! Tasks go in with `SubmitTasks`, in batches of up to 10,000, from a few
//! concurrent clients. Completion is learnt from `WatchEvents` (each task's
//! first `running` event), not by polling. One watcher follows every event
//! of the run to the end; a watcher that falls behind the manager's live
//! events is caught up from the store, which the report counts (`caught up`)
//! with the watcher's events/s. Only if the events it needs are no longer
//! kept does the manager end the stream, and the scenario falls back to
//! counting running tasks with `ListTasks`, and says so in the report.
//! Once all run, one `ListTasks` sweep reads each task's `updated_at`, the
//! time of its `running` change (the same timestamp its event carries, since
//! nothing changes a running task afterwards), to get submit→running
//! latencies; the sweep happens after the clock has stopped.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use orch::v1::{ListTasksRequest, SubmitTasksRequest, TaskSpec, TaskState, event};

use crate::Error;
use crate::cluster::{ManagerKind, SimCluster};
use crate::measure::{Pid, proc_stats};

/// Most specs in one `SubmitTasks` call (the manager's limit).
pub const MAX_BATCH: usize = 10_000;
/// How often the fallback completion check asks the manager.
const POLL: Duration = Duration::from_millis(20);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// How many tasks to submit.
    pub tasks: usize,
    /// How many simulated workers.
    pub workers: usize,
    /// How many concurrent submitting clients.
    pub clients: usize,
    /// Specs per `SubmitTasks` call.
    pub batch: usize,
    /// Workers' heartbeat period.
    pub heartbeat_period: Duration,
    /// Where the manager runs.
    pub manager: ManagerKind,
    /// How long to wait for all tasks to run before giving up.
    pub timeout: Duration,
    /// Secure the cluster (TLS, join and client tokens), as by default.
    pub tls: bool,
    /// How many events the manager keeps (a manager in process only).
    pub events_kept: u64,
    /// More arguments of a child manager (`--store etcd://...`).
    pub manager_args: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            tasks: 10_000,
            workers: 100,
            clients: 4,
            batch: MAX_BATCH,
            heartbeat_period: Duration::from_secs(1),
            manager: ManagerKind::InProcess,
            timeout: Duration::from_secs(300),
            tls: false,
            events_kept: orch_manager::DEFAULT_EVENTS_KEPT,
            manager_args: Vec::new(),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Tasks submitted (and all found running).
    pub tasks: usize,
    /// Simulated workers.
    pub workers: usize,
    /// How long the workers took to register and open their sessions.
    pub startup: Duration,
    /// From the first submit until every `SubmitTasks` was answered.
    pub submitted: Duration,
    /// From the first submit until every task was running.
    pub all_running: Duration,
    /// From the first submit until the last task was scheduled (manager's
    /// clock, from the events); unknown if the watch stream fell behind.
    pub all_scheduled: Option<Duration>,
    /// How many tasks the `SubmitTasks` replies showed already scheduled
    /// (placed in the call that submitted them).
    pub placed_at_submit: usize,
    /// Submit→running latency percentiles: (p50, p99, max).
    pub latency: (Duration, Duration, Duration),
    /// The manager's cpu time during the run (submit until all running).
    pub manager_cpu: Duration,
    /// The manager's peak resident memory, in bytes.
    pub manager_peak_rss: u64,
    /// Whether the manager ran in this process, so that cpu and memory
    /// include the simulated workers'.
    pub manager_in_process: bool,
    /// This process's cpu time during the run (simulated workers, clients,
    /// watcher) when the manager runs apart.
    pub harness_cpu: Option<Duration>,
    /// The store file's size after the run.
    pub store_bytes: u64,
    /// Why the watch stream was cut off, if it fell behind and completion
    /// was learnt with `ListTasks` instead.
    pub watch_lagged: Option<String>,
    /// The events the watcher received, and over how long (from the first
    /// submit to the last one it needed).
    pub watched: (u64, Duration),
    /// How many times the manager caught the watcher up from the store
    /// (`orch_manager::api::catch_ups`); unknown if the manager runs apart.
    pub catch_ups: Option<u64>,
}

impl Report {
    /// Tasks per second from the first submit until the last placement,
    /// from the events.
    pub fn placements_per_sec(&self) -> Option<f64> {
        self.all_scheduled
            .map(|d| self.tasks as f64 / d.as_secs_f64().max(1e-9))
    }

    /// Tasks placed per second from the first submit until the last
    /// `SubmitTasks` reply: a lower bound of the placement rate (it includes
    /// the durable commit and the replies), known even without events.
    pub fn placed_acked_per_sec(&self) -> f64 {
        self.placed_at_submit as f64 / self.submitted.as_secs_f64().max(1e-9)
    }

    /// Tasks per second from the first submit until all run.
    pub fn running_per_sec(&self) -> f64 {
        self.tasks as f64 / self.all_running.as_secs_f64().max(1e-9)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = if self.manager_in_process {
            " (whole process: manager and simulated workers)"
        } else {
            " (manager process alone)"
        };
        writeln!(f, "tasks                 {}", self.tasks)?;
        writeln!(f, "workers               {}", self.workers)?;
        writeln!(f, "workers ready after   {}", ms(self.startup))?;
        writeln!(f, "all submitted after   {}", ms(self.submitted))?;
        let unknown = || "unknown (the watch stream fell behind)".to_string();
        writeln!(
            f,
            "all scheduled after   {}",
            self.all_scheduled.map_or_else(unknown, ms)
        )?;
        writeln!(f, "all running after     {}", ms(self.all_running))?;
        writeln!(
            f,
            "placements/s          {}",
            self.placements_per_sec()
                .map_or_else(unknown, |p| format!("{p:.0}"))
        )?;
        writeln!(
            f,
            "placed+acked/s        {:.0} ({} placed by their SubmitTasks call)",
            self.placed_acked_per_sec(),
            self.placed_at_submit
        )?;
        writeln!(f, "running/s             {:.0}", self.running_per_sec())?;
        writeln!(
            f,
            "submit→running        p50 {}, p99 {}, max {}",
            ms(self.latency.0),
            ms(self.latency.1),
            ms(self.latency.2)
        )?;
        writeln!(
            f,
            "manager cpu           {:.2} s during the run{whose}",
            self.manager_cpu.as_secs_f64()
        )?;
        writeln!(
            f,
            "manager peak RSS      {:.0} MiB{whose}",
            self.manager_peak_rss as f64 / (1 << 20) as f64
        )?;
        if let Some(cpu) = self.harness_cpu {
            writeln!(
                f,
                "harness cpu           {:.2} s during the run (simulated workers, clients, watcher)",
                cpu.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "store file            {:.1} MiB",
            self.store_bytes as f64 / (1 << 20) as f64
        )?;
        writeln!(
            f,
            "watcher               {} events, {:.0} events/s, caught up from the store {}",
            self.watched.0,
            self.watched.0 as f64 / self.watched.1.as_secs_f64().max(1e-9),
            self.catch_ups.map_or_else(
                || "unknown times (the manager runs apart: see its log)".to_string(),
                |n| format!("{n} times")
            )
        )?;
        if let Some(why) = &self.watch_lagged {
            writeln!(
                f,
                "note                  the manager cut the watch stream off {why}; completion was learnt with ListTasks"
            )?;
        }
        Ok(())
    }
}

/// The spec every task gets: a little cpu and memory, so the capacity
/// filters do real work, and a simulated image that runs until stopped.
fn spec(milli_cpus: i64) -> TaskSpec {
    TaskSpec {
        image: "sim/app".into(),
        milli_cpus: Some(milli_cpus),
        memory_bytes: Some(16 << 20),
        ..TaskSpec::default()
    }
}

/// A task's cpu: a tenth of a core, or less where `tasks` would not fit
/// on `workers` simulated machines otherwise (1,000,000 tasks on 1,000
/// workers of 64 cores take 0.064 each), so that every task can run.
fn task_milli_cpus(tasks: usize, workers: usize) -> i64 {
    let machine = orch_worker::runtime::sim::SimConfig::default()
        .capacity
        .milli_cpus;
    let per_worker = i64::try_from(tasks.div_ceil(workers.max(1))).unwrap_or(i64::MAX);
    (machine / per_worker.max(1)).clamp(1, 100)
}

/// How the watch ended.
enum Watched {
    /// Every task ran; the manager's time of the last `scheduled` event,
    /// the events received and when the last arrived.
    AllRunning(Option<SystemTime>, u64, Instant),
    /// The manager cut the stream off, with this message, after this many
    /// events had arrived.
    Lagged(String, u64),
}

/// Follows the event stream until `tasks` distinct tasks have been running.
async fn watch(
    mut events: tonic::Streaming<orch::v1::Event>,
    tasks: usize,
) -> Result<Watched, Error> {
    let mut running = HashSet::with_capacity(tasks);
    let mut last_scheduled = None;
    let mut seen = 0u64;
    while running.len() < tasks {
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
        match t.state() {
            TaskState::Scheduled => {
                last_scheduled = e.time.as_ref().map(orch::time::system_time);
            }
            TaskState::Running => {
                running.insert(t.task_id);
            }
            _ => {}
        }
    }
    Ok(Watched::AllRunning(last_scheduled, seen, Instant::now()))
}

/// The oldest task at or after `from` that is not running yet, if any.
///
/// Tasks are listed in submission order and never leave `running` here (the
/// simulated containers run until stopped), so everything before the one
/// found stays running, and the next call can start from it: the whole wait
/// scans each task about once, instead of listing all of them every time.
async fn oldest_not_running(
    client: &mut orch::auth::Client,
    from: Option<uuid::Uuid>,
) -> Result<Option<uuid::Uuid>, Error> {
    // The page token is exclusive: start just before `from`.
    let page_token = from
        .map(|id| uuid::Uuid::from_u128(id.as_u128().saturating_sub(1)).to_string())
        .unwrap_or_default();
    let page = client
        .list_tasks(ListTasksRequest {
            states: [
                TaskState::Pending,
                TaskState::Scheduled,
                TaskState::Starting,
            ]
            .map(|s| s as i32)
            .to_vec(),
            page_size: 1,
            page_token,
            ..ListTasksRequest::default()
        })
        .await?
        .into_inner();
    Ok(page
        .tasks
        .first()
        .and_then(|t| uuid::Uuid::parse_str(&t.id).ok()))
}

/// Every running task's id and `updated_at`, page by page.
async fn running_tasks(
    client: &mut orch::auth::Client,
) -> Result<Vec<(String, SystemTime)>, Error> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(ListTasksRequest {
                states: vec![TaskState::Running as i32],
                page_size: orch_manager::api::MAX_PAGE_SIZE,
                page_token,
                ..ListTasksRequest::default()
            })
            .await?
            .into_inner();
        out.extend(page.tasks.into_iter().map(|t| {
            let at = t
                .updated_at
                .as_ref()
                .map_or(SystemTime::UNIX_EPOCH, orch::time::system_time);
            (t.id, at)
        }));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Submits batches taken from `next` until `tasks` are submitted; returns
/// each batch's task ids with the time its request was sent.
async fn submitter(
    mut client: orch::auth::Client,
    next: Arc<AtomicUsize>,
    tasks: usize,
    batch: usize,
    milli_cpus: i64,
) -> Result<Vec<(Vec<(String, bool)>, SystemTime)>, Error> {
    let mut sent = Vec::new();
    loop {
        let start = next.fetch_add(batch, Ordering::Relaxed);
        if start >= tasks {
            return Ok(sent);
        }
        let n = batch.min(tasks - start);
        let specs = vec![spec(milli_cpus); n];
        let at = SystemTime::now();
        let reply = client
            .submit_tasks(SubmitTasksRequest { specs })
            .await?
            .into_inner();
        let ids = reply
            .tasks
            .into_iter()
            .map(|t| {
                let placed = t.state() == TaskState::Scheduled;
                (t.id, placed)
            })
            .collect();
        sent.push((ids, at));
    }
}

/// The value at quantile `q` of sorted `v`.
pub(crate) fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the scenario on a new cluster, which it shuts down afterwards.
///
/// # Errors
/// If the cluster cannot start, a call fails, or not every task runs within
/// `params.timeout`.
pub async fn run(params: &Params) -> Result<Report, Error> {
    let begun = Instant::now();
    let cluster = SimCluster::builder()
        .workers(params.workers)
        .manager(params.manager.clone())
        .heartbeat_period(params.heartbeat_period)
        .tls(params.tls)
        .events_kept(params.events_kept)
        .manager_args(params.manager_args.clone())
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
    let batch = params.batch.clamp(1, MAX_BATCH);
    let tasks = params.tasks;
    let watch =
        crate::cluster::watch_apart(cluster.access().clone(), move |events| watch(events, tasks))
            .await?;
    let mut watcher = cluster.client().await?;
    let mut clients = Vec::with_capacity(params.clients.max(1));
    for _ in 0..params.clients.max(1) {
        clients.push(cluster.client().await?);
    }

    let catch_ups_before = orch_manager::api::catch_ups();
    let cpu_before = cluster.manager_stats().map(|s| s.cpu).unwrap_or_default();
    let harness_before = proc_stats(Pid::This).map(|s| s.cpu).unwrap_or_default();
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let next = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(submitter(
                c,
                next.clone(),
                params.tasks,
                batch,
                task_milli_cpus(params.tasks, cluster.worker_count()),
            ))
        })
        .collect();
    let mut submitted_at: HashMap<String, SystemTime> = HashMap::with_capacity(params.tasks);
    let mut placed_at_submit = 0;
    for s in submitters {
        let sent = s
            .await
            .map_err(|e| Error::Manager(format!("submitter: {e}")))??;
        for (ids, at) in sent {
            placed_at_submit += ids.iter().filter(|(_, placed)| *placed).count();
            submitted_at.extend(ids.into_iter().map(|(id, _)| (id, at)));
        }
    }
    let submitted = t0.elapsed();

    let deadline = tokio::time::Instant::now() + params.timeout;
    let watched = tokio::time::timeout_at(deadline, watch)
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "not all of {} tasks running after {:?}",
                params.tasks, params.timeout
            ))
        })?
        .map_err(|_| Error::Manager("the watcher thread died".into()))??;
    let (last_scheduled, watch_lagged, events_watched) = match watched {
        Watched::AllRunning(t, seen, at) => (t, None, (seen, at.duration_since(t0))),
        Watched::Lagged(why, seen) => {
            // Fallback: ask for the oldest task not yet running, until
            // there is none (see `oldest_not_running`).
            let mut from = None;
            while let Some(id) = oldest_not_running(&mut watcher, from).await? {
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Timeout(format!(
                        "not all of {} tasks running after {:?}",
                        params.tasks, params.timeout
                    )));
                }
                from = Some(id);
                tokio::time::sleep(POLL).await;
            }
            (
                None,
                Some(format!("after {seen} events: {why}")),
                (seen, t0.elapsed()),
            )
        }
    };
    let catch_ups = cluster
        .manager_in_process()
        .then(|| orch_manager::api::catch_ups() - catch_ups_before);
    let all_running = t0.elapsed();
    let stats = cluster.manager_stats().unwrap_or_default();
    let harness_cpu = (!cluster.manager_in_process()).then(|| {
        proc_stats(Pid::This)
            .map(|s| s.cpu)
            .unwrap_or_default()
            .saturating_sub(harness_before)
    });

    // The clock has stopped: now read every task's running time.
    let running = running_tasks(&mut watcher).await?;
    let mut latencies: Vec<Duration> = running
        .iter()
        .filter_map(|(id, at)| {
            let sent = submitted_at.get(id)?;
            Some(at.duration_since(*sent).unwrap_or_default())
        })
        .collect();
    if latencies.len() != params.tasks {
        return Err(Error::Check(format!(
            "{} of {} submitted tasks are running",
            latencies.len(),
            params.tasks
        )));
    }
    latencies.sort_unstable();
    let all_scheduled = last_scheduled.and_then(|t| t.duration_since(wall0).ok());
    Ok(Report {
        tasks: params.tasks,
        workers: cluster.worker_count(),
        startup,
        submitted,
        all_running,
        all_scheduled,
        placed_at_submit,
        latency: (
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
        ),
        manager_cpu: stats.cpu.saturating_sub(cpu_before),
        manager_peak_rss: stats.peak_rss_bytes,
        manager_in_process: cluster.manager_in_process(),
        harness_cpu,
        store_bytes: cluster.store_bytes(),
        watch_lagged,
        watched: events_watched,
        catch_ups,
    })
}

#[cfg(test)]
mod tests {
    use super::task_milli_cpus;

    #[test]
    fn every_task_of_a_run_fits_on_its_simulated_workers() {
        // A tenth of a core while that fits (64 cores a worker) ...
        assert_eq!(task_milli_cpus(100_000, 1_000), 100);
        assert_eq!(task_milli_cpus(10, 0), 100);
        // ... and less when it would not: 1,000 tasks a worker.
        assert_eq!(task_milli_cpus(1_000_000, 1_000), 64);
        let per_worker = 1_000_000usize.div_ceil(1_000) as i64;
        assert!(per_worker * task_milli_cpus(1_000_000, 1_000) <= 64_000);
        assert_eq!(task_milli_cpus(usize::MAX, 1), 1);
    }
}
