//! The real-engine scenario: orch, the Docker API called directly and Docker
//! Swarm, side by side on this machine's engine, starting the same number of
//! containers of the same image and command (`sleep 3600` in the busybox
//! test image); and one orch task's submit→running against one bare
//! create+start.
//!
//! - **orch**: a fresh manager and one worker (real `DockerRuntime`) per
//!   measurement; N tasks in one `SubmitTasks` call, timed until the client
//!   has seen every `running` event on `WatchEvents`.
//! - **direct**: N create+start pairs through bollard, all at once, since
//!   the orch worker starts every assignment on a task of its own with no
//!   limit (`Actor::run_one` in `worker/src/executor.rs`); timed until every
//!   start call returned.
//! - **swarm**: a service of N replicas in a one-node swarm, timed until the
//!   engine reported N containers started.
//!
//! Rounds interleave the systems (orch, direct, swarm, then again), so slow
//! moments of a shared machine fall on all of them. Between measurements
//! every container the scenario made is force-removed and the engine gets a
//! pause to settle. Every system's per-container latency comes from the
//! engine's own `start` events, so the three are measured by one clock.
//!
//! Whatever happens (an error, Ctrl-C), the scenario ends by removing its
//! services and containers and leaving the swarm it created.

pub mod churn;
pub mod docker;
pub mod orch_cluster;
pub mod services;
pub mod swarm;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::Error;
use crate::cluster::ManagerKind;
use crate::control_plane::quantile;
use crate::measure::machine_busy;
use docker::Engine;
use orch_cluster::{OneTask, OrchCluster};
use swarm::Swarm;

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Container counts, each measured on every system.
    pub containers: Vec<usize>,
    /// Rounds per count.
    pub runs: usize,
    /// Single-task measurements (each an orch task and a bare create+start);
    /// 0 skips them.
    pub single_runs: usize,
    /// Where orch's manager and worker run.
    pub orch: ManagerKind,
    /// Whether to measure Docker Swarm (skipped anyway if `swarm init` fails).
    pub swarm: bool,
    /// The pause after clean-up before the next measurement.
    pub settle: Duration,
    /// The longest one measurement may take.
    pub timeout: Duration,
    /// Print a line per measurement on stderr.
    pub progress: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            containers: vec![50, 100],
            runs: 3,
            single_runs: 20,
            orch: ManagerKind::InProcess,
            swarm: true,
            settle: Duration::from_secs(2),
            timeout: Duration::from_secs(300),
            progress: false,
        }
    }
}

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// orch: manager and worker.
    Orch,
    /// The Engine API, called directly.
    Direct,
    /// Docker Swarm.
    Swarm,
}

impl System {
    /// The name, also the value of the containers' label.
    pub fn name(self) -> &'static str {
        match self {
            System::Orch => "orch",
            System::Direct => "direct",
            System::Swarm => "swarm",
        }
    }
}

/// One measurement of one system.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Until the system's user could know all containers run: orch's last
    /// `running` event at the client, the last direct start call's return,
    /// Swarm's last container start (by the engine).
    pub total: Duration,
    /// When the engine started each container, from the first call, sorted.
    pub starts: Vec<Duration>,
    /// The cpu time the whole machine spent busy meanwhile (all processes,
    /// all cores): what the system and the engine cost together.
    pub machine_cpu: Duration,
    /// The cpu time orch's manager and worker processes spent meanwhile, if
    /// they ran as child processes.
    pub orch_cpu: Option<Duration>,
}

/// Every measurement at one container count.
#[derive(Debug, Clone)]
pub struct Row {
    /// How many containers each measurement started.
    pub containers: usize,
    /// The samples of each system, in round order.
    pub samples: Vec<(System, Vec<Sample>)>,
}

/// One system's figures at one count.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The median of the runs' totals.
    pub median: Duration,
    /// Containers per second at the median.
    pub per_sec: f64,
    /// The median time, over all runs' containers, from the first call to
    /// the engine starting a container.
    pub start_p50: Duration,
    /// The median time until the engine had started the last container.
    pub last_start: Duration,
    /// The median of the machine's busy cpu time.
    pub machine_cpu: Duration,
    /// The median of orch's own cpu time, where known.
    pub orch_cpu: Option<Duration>,
}

/// The single-task comparison.
#[derive(Debug, Clone, Default)]
pub struct Single {
    /// orch: one task each, with its steps.
    pub orch: Vec<OneTask>,
    /// One bare create+start each.
    pub bare: Vec<Duration>,
}

/// What the scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The image every container ran.
    pub image: String,
    /// Rounds per count.
    pub runs: usize,
    /// One row per container count.
    pub rows: Vec<Row>,
    /// The single-task comparison, if asked for.
    pub single: Option<Single>,
    /// Why Swarm was not measured, if it was not.
    pub swarm_skipped: Option<String>,
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    quantile(&v, 0.5)
}

impl Row {
    /// The figures of `system`, if it was measured.
    pub fn summary(&self, system: System) -> Option<Summary> {
        let samples = self
            .samples
            .iter()
            .find(|(s, _)| *s == system)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())?;
        let median_total = median(samples.iter().map(|s| s.total).collect());
        let last = median(
            samples
                .iter()
                .map(|s| s.starts.last().copied().unwrap_or_default())
                .collect(),
        );
        let starts = median(samples.iter().flat_map(|s| s.starts.clone()).collect());
        let orch_cpu: Option<Vec<Duration>> = samples.iter().map(|s| s.orch_cpu).collect();
        Some(Summary {
            median: median_total,
            per_sec: self.containers as f64 / median_total.as_secs_f64().max(1e-9),
            start_p50: starts,
            last_start: last,
            machine_cpu: median(samples.iter().map(|s| s.machine_cpu).collect()),
            orch_cpu: orch_cpu.map(median),
        })
    }

    /// orch's throughput over `other`'s, at the medians.
    pub fn ratio(&self, other: System) -> Option<f64> {
        let orch = self.summary(System::Orch)?;
        let other = self.summary(other)?;
        Some(orch.per_sec / other.per_sec.max(1e-9))
    }

    fn push(&mut self, system: System, sample: Sample) {
        match self.samples.iter_mut().find(|(s, _)| *s == system) {
            Some((_, v)) => v.push(sample),
            None => self.samples.push((system, vec![sample])),
        }
    }
}

impl Single {
    /// Medians: (orch submit→running seen by the client, bare create+start).
    pub fn medians(&self) -> (Duration, Duration) {
        (
            median(self.orch.iter().map(|o| o.running_seen).collect()),
            median(self.bare.clone()),
        )
    }

    /// The median of orch's time minus the bare create+start's, pair by
    /// pair (each pair ran back to back), in milliseconds: what orch adds.
    pub fn median_extra_ms(&self) -> f64 {
        let mut extra: Vec<f64> = self
            .orch
            .iter()
            .zip(&self.bare)
            .map(|(o, b)| (o.running_seen.as_secs_f64() - b.as_secs_f64()) * 1000.0)
            .collect();
        extra.sort_by(f64::total_cmp);
        extra.get(extra.len() / 2).copied().unwrap_or_default()
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image                 {}", self.image)?;
        if let Some(why) = &self.swarm_skipped {
            writeln!(f, "swarm                 not measured: {why}")?;
        }
        writeln!(
            f,
            "| containers | system | runs | median | containers/s | p50 start | last start | machine cpu | orch cpu | orch ÷ system |"
        )?;
        writeln!(
            f,
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for row in &self.rows {
            for (system, samples) in &row.samples {
                let Some(s) = row.summary(*system) else {
                    continue;
                };
                let runs: Vec<String> = samples.iter().map(|x| secs(x.total)).collect();
                let ratio = match system {
                    System::Orch => "1.00×".to_string(),
                    other => row
                        .ratio(*other)
                        .map_or_else(String::new, |r| format!("{r:.2}×")),
                };
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {ratio} |",
                    row.containers,
                    system.name(),
                    runs.join(", "),
                    secs(s.median),
                    s.per_sec,
                    ms(s.start_p50),
                    secs(s.last_start),
                    secs(s.machine_cpu),
                    s.orch_cpu.map_or_else(String::new, secs),
                )?;
            }
        }
        if let Some(single) = &self.single {
            let (orch, bare) = single.medians();
            let step = |f: fn(&OneTask) -> Duration| median(single.orch.iter().map(f).collect());
            let diff = (orch.as_secs_f64() - bare.as_secs_f64()) * 1000.0;
            writeln!(
                f,
                "single task ({} runs): orch submit→running median {}, bare create+start median {}; difference of the medians {diff:+.0} ms, median of the paired differences {:+.0} ms",
                single.orch.len(),
                ms(orch),
                ms(bare),
                single.median_extra_ms()
            )?;
            writeln!(
                f,
                "orch steps (medians, manager's clock from the submit): scheduled {}, starting {}, running {}; client saw running at {}",
                ms(step(|o| o.scheduled)),
                ms(step(|o| o.starting)),
                ms(step(|o| o.running)),
                ms(orch)
            )?;
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
    on_engine(
        params.swarm,
        params.progress,
        |engine, swarm_skipped| Report {
            image: engine.image.clone(),
            runs: params.runs,
            swarm_skipped,
            ..Report::default()
        },
        async |engine, swarm, report| measure(engine, swarm, params, report).await,
    )
    .await
}

/// What every scenario on the engine does around its measurement: connects
/// to the engine and removes an interrupted run's leftovers (they would
/// skew the first measurement), joins a swarm if `swarm` asks (the report
/// that `report` makes is told why not, if not), runs `measure` until it
/// ends or Ctrl-C, then removes everything the run made and leaves the
/// swarm, whatever happened.
///
/// # Errors
/// If the engine cannot be reached, `measure` fails, or the clean-up fails
/// (the message says what is left).
pub(crate) async fn on_engine<R>(
    swarm: bool,
    progress: bool,
    report: impl FnOnce(&Engine, Option<String>) -> R,
    measure: impl AsyncFnOnce(&Engine, Option<&Swarm>, &mut R) -> Result<(), Error>,
) -> Result<R, Error> {
    let engine = Engine::connect().await?;
    engine.remove_ours().await?;
    let (swarm, skipped) = if swarm {
        match Swarm::join(&engine).await {
            Ok(s) => (Some(s), None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, Some("not asked for (--no-swarm)".to_owned()))
    };
    if let Some(why) = &skipped
        && progress
    {
        eprintln!("swarm skipped: {why}");
    }
    let mut report = report(&engine, skipped);
    let measured = tokio::select! {
        r = measure(&engine, swarm.as_ref(), &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Io("interrupted".into())),
    };
    let mut problems = Vec::new();
    if let Some(swarm) = swarm
        && let Err(e) = swarm.leave(&engine).await
    {
        problems.push(e);
    }
    if let Err(e) = engine.remove_ours().await {
        problems.push(e.to_string());
    }
    match (measured, problems.is_empty()) {
        (Ok(()), true) => Ok(report),
        (Ok(()), false) => Err(Error::Io(format!("clean-up: {}", problems.join("; ")))),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(Error::Io(format!(
            "{e}; and the clean-up: {}",
            problems.join("; ")
        ))),
    }
}

async fn measure(
    engine: &Engine,
    swarm: Option<&Swarm>,
    params: &Params,
    report: &mut Report,
) -> Result<(), Error> {
    let mut systems = vec![System::Orch, System::Direct];
    if swarm.is_some() {
        systems.push(System::Swarm);
    }
    for &n in &params.containers {
        let mut row = Row {
            containers: n,
            samples: Vec::new(),
        };
        for round in 0..params.runs {
            for &system in &systems {
                let sample = match (system, swarm) {
                    (System::Orch, _) => orch_many(engine, params, n).await?,
                    (System::Direct, _) => direct_many(engine, params, n).await?,
                    (System::Swarm, Some(swarm)) => {
                        swarm_many(engine, swarm, params, n, round).await?
                    }
                    (System::Swarm, None) => continue,
                };
                if params.progress {
                    eprintln!(
                        "{n} containers, round {}: {} {}",
                        round + 1,
                        system.name(),
                        secs(sample.total)
                    );
                }
                row.push(system, sample);
                settle(engine, params).await?;
            }
        }
        report.rows.push(row);
    }
    if params.single_runs > 0 {
        report.single = Some(single(engine, params).await?);
    }
    Ok(())
}

/// Removes every container of the last measurement and pauses, so the next
/// one starts on a quiet engine.
async fn settle(engine: &Engine, params: &Params) -> Result<(), Error> {
    engine.remove_ours().await?;
    tokio::time::sleep(params.settle).await;
    Ok(())
}

/// Cpu readings at the start of a measurement: the machine's busy time and,
/// where known, orch's processes'.
pub(crate) struct Cpu {
    machine: Duration,
    orch: Option<Duration>,
}

impl Cpu {
    pub(crate) fn now(orch: Option<Duration>) -> Self {
        Self {
            machine: machine_busy().unwrap_or_default(),
            orch,
        }
    }

    /// The machine's and orch's cpu time since `self`, given orch's now.
    pub(crate) fn since(&self, orch: Option<Duration>) -> (Duration, Option<Duration>) {
        let machine = machine_busy()
            .unwrap_or_default()
            .saturating_sub(self.machine);
        let orch = self
            .orch
            .zip(orch)
            .map(|(before, now)| now.saturating_sub(before));
        (machine, orch)
    }
}

/// Each engine start time as a delay after `since`, sorted.
pub(crate) fn after(since: SystemTime, starts: Vec<SystemTime>) -> Vec<Duration> {
    let mut v: Vec<Duration> = starts
        .into_iter()
        .map(|t| t.duration_since(since).unwrap_or_default())
        .collect();
    v.sort_unstable();
    v
}

async fn orch_many(engine: &Engine, params: &Params, n: usize) -> Result<Sample, Error> {
    let system = System::Orch.name();
    let mut cluster = OrchCluster::start(&params.orch).await?;
    let cpu = Cpu::now(cluster.cpu());
    let since = SystemTime::now();
    let starts = engine.starts(system, n, since, params.timeout);
    let seen = cluster
        .run_many(n, &engine.image, system, params.timeout)
        .await;
    let (machine_cpu, orch_cpu) = cpu.since(cluster.cpu());
    let measured = match seen {
        Ok(seen) => starts.wait().await.map(|starts| (seen, starts)),
        Err(e) => Err(e),
    };
    cluster.shutdown().await;
    let (seen, starts) = measured?;
    Ok(Sample {
        total: seen.iter().max().copied().unwrap_or_default(),
        starts: after(since, starts),
        machine_cpu,
        orch_cpu,
    })
}

async fn direct_many(engine: &Engine, params: &Params, n: usize) -> Result<Sample, Error> {
    let system = System::Direct.name();
    let cpu = Cpu::now(None);
    let since = SystemTime::now();
    let starts = engine.starts(system, n, since, params.timeout);
    let returned = tokio::time::timeout(params.timeout, engine.create_start_many(system, n))
        .await
        .map_err(|_| Error::Timeout(format!("{n} direct starts after {:?}", params.timeout)))??;
    let (machine_cpu, _) = cpu.since(None);
    Ok(Sample {
        total: returned.iter().max().copied().unwrap_or_default(),
        starts: after(since, starts.wait().await?),
        machine_cpu,
        orch_cpu: None,
    })
}

async fn swarm_many(
    engine: &Engine,
    swarm: &Swarm,
    params: &Params,
    n: usize,
    round: usize,
) -> Result<Sample, Error> {
    let system = System::Swarm.name();
    let cpu = Cpu::now(None);
    let since = SystemTime::now();
    let starts = engine.starts(system, n, since, params.timeout);
    let name = format!("orch-bench-{n}-{round}");
    swarm.create_service(engine, &name, n).await?;
    let starts = after(since, starts.wait().await?);
    let (machine_cpu, _) = cpu.since(None);
    let running = engine.ours(Some(system), true).await?.len();
    swarm.remove_services(engine).await?;
    if running < n {
        return Err(Error::Check(format!(
            "swarm service {name}: {running} of {n} containers running after all started"
        )));
    }
    Ok(Sample {
        total: starts.last().copied().unwrap_or_default(),
        starts,
        machine_cpu,
        orch_cpu: None,
    })
}

/// One orch task against one bare create+start, `params.single_runs` times
/// after one untimed warm-up of each; the order alternates, so neither
/// always runs on an engine just disturbed by the other.
async fn single(engine: &Engine, params: &Params) -> Result<Single, Error> {
    let mut cluster = OrchCluster::start(&params.orch).await?;
    let measured = async {
        let mut single = Single::default();
        for i in 0..=params.single_runs {
            let mut orch = None;
            let mut bare = None;
            for orch_turn in [i % 2 == 0, i % 2 != 0] {
                if orch_turn {
                    orch = Some(
                        cluster
                            .run_one(&engine.image, "single-orch", params.timeout)
                            .await?,
                    );
                } else {
                    let t0 = Instant::now();
                    engine.create_start("single-bare").await?;
                    bare = Some(t0.elapsed());
                }
            }
            if i > 0 {
                single.orch.extend(orch);
                single.bare.extend(bare);
            }
            engine.remove_ours().await?;
            tokio::time::sleep(params.settle / 4).await;
        }
        Ok(single)
    }
    .await;
    cluster.shutdown().await;
    measured
}
