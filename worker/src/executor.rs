//! The executor: runs the task attempts the manager assigns to this node, on a
//! [`Runtime`], and reports every observed state change.
//!
//! It is one actor (a tokio task owning all per-task state) fed by commands
//! from the agent, by container exits from the runtime's event stream, and by
//! the results of the start/stop calls it spawns, so a slow image pull never
//! holds up another task. It only observes and reports: it never decides that
//! a task should restart or move, which is the manager's job. It knows nothing
//! of gRPC streams; reports leave through a channel the agent drains.
//!
//! Per task it holds at most one attempt. An assignment of a newer attempt
//! replaces an older one (the old container is stopped first): a worker never
//! runs two attempts of one task.
//!
//! A running attempt whose task has a health check gets a [`health::Monitor`];
//! each change of health it finds comes back to the actor, which reports it
//! as a `running` status with `health` set. Whether an unhealthy task is
//! restarted is for the manager to say.
//!
//! The container of an ended attempt (exited, or stopped) is kept for its
//! output, as [`Retention`] says (by default the last 3 attempts of each
//! task, for at most an hour), and removed after; [`retention::expired`]
//! decides which go, when an attempt ends and at every audit. A full set
//! that no longer lists a task leaves its kept containers alone.
//!
//! It counts what it does in the worker's metrics ([`Telemetry`]): starts,
//! start failures, exits, and the containers running (a slot in
//! [`Phase::Running`]; slots leave only through `Actor::take_slot`, which
//! keeps that count).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use orch::v1::{Assignments, HealthCheck, HealthState, TaskAssignment, TaskState, TaskStatus};
use orch::{task_state, validate};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::health;
use crate::retention::{self, Kept, Retention};
use crate::runtime::{ContainerInfo, Exit, Runtime, StartRequest};
use crate::telemetry::{Outcome, Telemetry};

/// How often the executor compares its running attempts with the engine's
/// containers: the safety net for an exit the event stream never delivered
/// (an engine restart, a gap longer than the engine replays). Exits normally
/// arrive through events within milliseconds; this is not how they are found.
const AUDIT_PERIOD: Duration = Duration::from_secs(30);

/// Most ended attempts remembered for resyncs.
const MAX_FINISHED: usize = 100_000;

/// The wait before a failed stop is tried again (the engine unreachable, say);
/// it doubles at each failure up to `STOP_RETRY_MAX`. A stop is retried until
/// the runtime says the container is gone: until then the attempt is not
/// reported `stopped`, so the manager keeps its resources reserved.
const STOP_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a failed stop.
const STOP_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the agent asks of the executor.
#[derive(Debug)]
pub enum Command {
    /// Assignments from the manager. A full set (the first message of every
    /// session) also makes the executor report the state of every task
    /// again, since reports sent on a broken session may have been lost.
    Assign(Assignments),
}

/// Puts together a full set that the manager sent in parts
/// (`Assignments.more`), so the executor only ever sees a whole one: acting
/// on a part would stop every task of the other parts. One per session, so
/// that the parts of a set cut short by a broken session are dropped with it.
#[derive(Debug, Default)]
pub struct FullSet {
    parts: Option<Assignments>,
}

impl FullSet {
    /// Takes the next message of the session: returns what the executor
    /// should get now, if anything (a change, or a whole full set).
    pub fn add(&mut self, a: Assignments) -> Option<Assignments> {
        if !a.full {
            return Some(a);
        }
        let whole = match self.parts.take() {
            None => a,
            Some(mut set) => {
                set.run.extend(a.run);
                set.stop.extend(a.stop);
                set.more = a.more;
                set
            }
        };
        if whole.more {
            self.parts = Some(whole);
            return None;
        }
        Some(whole)
    }
}

/// A handle to the executor actor.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::UnboundedSender<Command>,
}

impl Executor {
    /// Starts the executor for this cluster and node. It first adopts the
    /// containers the node already has (left by an earlier run of the worker):
    /// running ones are reported `running`, exited ones with their exit code.
    /// Reports are sent on `reports`; ended attempts' containers are kept as
    /// `retention` says.
    pub fn start<R: Runtime>(
        runtime: Arc<R>,
        cluster_id: String,
        node_id: Uuid,
        reports: mpsc::UnboundedSender<TaskStatus>,
        retention: Retention,
    ) -> Self {
        Self::start_measured(
            runtime,
            cluster_id,
            node_id,
            reports,
            retention,
            Telemetry::new(),
        )
    }

    /// As [`Executor::start`], counting into `telemetry`.
    pub fn start_measured<R: Runtime>(
        runtime: Arc<R>,
        cluster_id: String,
        node_id: Uuid,
        reports: mpsc::UnboundedSender<TaskStatus>,
        retention: Retention,
        telemetry: Telemetry,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            runtime,
            cluster_id,
            node_id,
            reports,
            done: done_tx,
            slots: HashMap::new(),
            finished: HashMap::new(),
            retention,
            kept: HashMap::new(),
            telemetry,
        };
        tokio::spawn(actor.run(rx, done_rx));
        Self { tx }
    }

    /// Sends a command. Returns false if the executor has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.tx.send(command).is_ok()
    }
}

/// Where one task attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The runtime is pulling and starting it.
    Starting,
    /// The container runs.
    Running,
}

/// One task attempt on this node.
#[derive(Debug)]
struct Slot {
    attempt: u64,
    phase: Phase,
    container_id: Option<String>,
    /// A stop was asked for; the exit it causes is reported `stopped`.
    stopping: bool,
    /// Grace period for a stop.
    grace: Duration,
    /// An exit that arrived while the start call was still returning.
    early_exit: Option<i32>,
    /// The last state reported, for resyncs.
    last: TaskStatus,
    /// The task's health check, if it has one (unknown for an adopted
    /// container until the manager's assignment names its spec).
    check: Option<HealthCheck>,
    /// Probes the running container; dropped (which stops it) with the slot
    /// or when a stop begins.
    monitor: Option<health::Monitor>,
}

/// Results of calls the actor spawned.
enum Done {
    /// The engine's list of this node's containers, and the running attempts
    /// whose containers existed before it was asked for.
    Audited {
        checked: Vec<(Uuid, u64, String)>,
        result: Result<Vec<ContainerInfo>, String>,
    },
    Started {
        task: Uuid,
        attempt: u64,
        result: Result<String, String>,
    },
    Stopped {
        task: Uuid,
        attempt: u64,
        /// The stop asked for, to try again if it failed.
        stop: StopCall,
        result: Result<(), String>,
    },
    /// A health monitor found a new health.
    Health {
        task: Uuid,
        attempt: u64,
        health: HealthState,
        reason: String,
    },
}

/// One stop call: which container, its grace period, and how many tries of
/// it failed before.
#[derive(Debug, Clone)]
struct StopCall {
    container_id: String,
    grace: Duration,
    failures: u32,
}

struct Actor<R> {
    runtime: Arc<R>,
    cluster_id: String,
    node_id: Uuid,
    reports: mpsc::UnboundedSender<TaskStatus>,
    done: mpsc::UnboundedSender<Done>,
    slots: HashMap<Uuid, Slot>,
    /// The final report of each recently ended attempt, kept until the
    /// manager shows (by a full assignment set without it) that it has it.
    finished: HashMap<Uuid, TaskStatus>,
    /// How long ended attempts' containers are kept.
    retention: Retention,
    /// The kept containers of each task's ended attempts.
    kept: HashMap<Uuid, Vec<Kept>>,
    /// The worker's metrics.
    telemetry: Telemetry,
}

fn status(task: Uuid, attempt: u64, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task.to_string(),
        attempt,
        state: state as i32,
        time: Some(orch::time::timestamp(SystemTime::now())),
        ..Default::default()
    }
}

/// How a container that exited with `code` ended.
fn outcome(code: i32) -> Outcome {
    if code == 0 {
        Outcome::Completed
    } else {
        Outcome::Failed
    }
}

/// The report of a container that exited on its own.
fn exit_status(task: Uuid, attempt: u64, container_id: &str, code: i32) -> TaskStatus {
    let (state, message) = if code == 0 {
        (TaskState::Completed, String::new())
    } else {
        (
            TaskState::Failed,
            format!("container exited with code {code}"),
        )
    };
    TaskStatus {
        container_id: container_id.to_string(),
        exit_code: Some(code),
        message,
        ..status(task, attempt, state)
    }
}

impl<R: Runtime> Actor<R> {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) {
        // Subscribe before listing, so no exit falls between the two.
        let mut exits = self.runtime.exits(&self.cluster_id, self.node_id);
        self.adopt().await;
        let mut audit = tokio::time::interval(AUDIT_PERIOD);
        audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        audit.tick().await;
        loop {
            tokio::select! {
                _ = audit.tick() => {
                    self.audit();
                    self.expire();
                }
                command = commands.recv() => match command {
                    Some(Command::Assign(a)) => self.assign(a),
                    None => return,
                },
                Some(d) = done.recv() => self.finished(d),
                Some(exit) = exits.next() => self.exited(exit),
            }
        }
    }

    /// Sends a report, and remembers it for resyncs: a live attempt's last
    /// state in its slot, an ended attempt's final state in `finished`.
    fn report(&mut self, task: Uuid, s: TaskStatus) {
        if task_state::is_terminal(s.state()) {
            if self.finished.len() >= MAX_FINISHED {
                self.finished.clear();
            }
            self.finished.insert(task, s.clone());
        } else if let Some(slot) = self.slots.get_mut(&task).filter(|x| x.attempt == s.attempt) {
            slot.last = s.clone();
        }
        let _ = self.reports.send(s);
    }

    /// Takes over the containers an earlier run of this worker left.
    /// Exited containers are kept (their age counts from now), and only the
    /// newest attempt of each task is reported.
    async fn adopt(&mut self) {
        let mut found = match self.runtime.list(&self.cluster_id, self.node_id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list existing containers");
                return;
            }
        };
        let mut newest: HashMap<Uuid, u64> = HashMap::new();
        for c in &found {
            let n = newest.entry(c.task_id).or_default();
            *n = (*n).max(c.attempt);
        }
        found.sort_by_key(|c| c.attempt);
        for c in found {
            if c.running {
                tracing::info!(task = %c.task_id, attempt = c.attempt, "adopting running container");
                let running = TaskStatus {
                    container_id: c.container_id.clone(),
                    ..status(c.task_id, c.attempt, TaskState::Running)
                };
                self.telemetry.running.inc();
                self.slots.insert(
                    c.task_id,
                    Slot {
                        attempt: c.attempt,
                        phase: Phase::Running,
                        container_id: Some(c.container_id),
                        stopping: false,
                        grace: validate::DEFAULT_STOP_GRACE,
                        early_exit: None,
                        last: running.clone(),
                        check: None,
                        monitor: None,
                    },
                );
                self.report(c.task_id, running);
            } else {
                if newest.get(&c.task_id) == Some(&c.attempt) {
                    let code = c.exit_code.unwrap_or(-1);
                    self.telemetry.exited(outcome(code));
                    self.report(
                        c.task_id,
                        exit_status(c.task_id, c.attempt, &c.container_id, code),
                    );
                }
                self.keep(c.task_id, c.attempt, c.container_id);
            }
        }
    }

    /// Keeps the container of an ended attempt for its output, and removes
    /// the task's kept containers that its retention no longer covers.
    fn keep(&mut self, task: Uuid, attempt: u64, container_id: String) {
        let kept = self.kept.entry(task).or_default();
        if !kept.iter().any(|k| k.container_id == container_id) {
            kept.push(Kept {
                attempt,
                container_id,
                ended_at: tokio::time::Instant::now(),
            });
        }
        self.expire_task(task, tokio::time::Instant::now());
    }

    /// Removes every kept container past its retention.
    fn expire(&mut self) {
        let now = tokio::time::Instant::now();
        let tasks: Vec<Uuid> = self.kept.keys().copied().collect();
        for task in tasks {
            self.expire_task(task, now);
        }
    }

    /// Removes one task's kept containers past their retention at `now`.
    fn expire_task(&mut self, task: Uuid, now: tokio::time::Instant) {
        let Some(kept) = self.kept.get_mut(&task) else {
            return;
        };
        let gone = retention::expired(kept, now, self.retention);
        let mut ids = Vec::with_capacity(gone.len());
        for i in gone.into_iter().rev() {
            ids.push(kept.swap_remove(i).container_id);
        }
        if kept.is_empty() {
            self.kept.remove(&task);
        }
        for id in ids {
            self.remove(id);
        }
    }

    fn assign(&mut self, a: Assignments) {
        if a.full {
            // Everything not in the full set must not run here.
            let keep: HashSet<(String, u64)> = a
                .run
                .iter()
                .map(|r| (r.task_id.clone(), r.attempt))
                .collect();
            let extra: Vec<(Uuid, u64)> = self
                .slots
                .iter()
                .filter(|(id, s)| !keep.contains(&(id.to_string(), s.attempt)))
                .map(|(id, s)| (*id, s.attempt))
                .collect();
            for (task, attempt) in extra {
                tracing::info!(%task, attempt, "stopping a task the manager no longer assigns here");
                self.stop(task, attempt, None);
            }
            // Ended attempts the manager no longer lists are settled there;
            // one it asks to stop is not: its final report is sent again.
            let listed: HashSet<(String, u64)> = keep
                .into_iter()
                .chain(a.stop.iter().map(|s| (s.task_id.clone(), s.attempt)))
                .collect();
            self.finished
                .retain(|id, s| listed.contains(&(id.to_string(), s.attempt)));
        }
        for run in a.run {
            self.run_one(run);
        }
        for stop in a.stop {
            let Ok(task) = Uuid::parse_str(&stop.task_id) else {
                continue;
            };
            let grace = stop
                .grace_period
                .as_ref()
                .and_then(orch::time::std_duration);
            self.stop(task, stop.attempt, grace);
        }
        if a.full {
            self.resync();
        }
    }

    fn run_one(&mut self, run: TaskAssignment) {
        let Ok(task) = Uuid::parse_str(&run.task_id) else {
            return;
        };
        let Some(spec) = run.spec else {
            return;
        };
        if let Some(ended) = self
            .finished
            .get(&task)
            .filter(|s| s.attempt >= run.attempt)
        {
            // This attempt already ended here; the manager missed the report.
            let _ = self.reports.send(ended.clone());
            return;
        }
        if let Some(slot) = self.slots.get_mut(&task) {
            if slot.attempt >= run.attempt {
                // Already running this attempt (or a newer one): idempotent.
                // But an adopted container learns its spec only now: its
                // grace period, and its health check, which starts here.
                if slot.attempt == run.attempt
                    && slot.check.is_none()
                    && spec.health_check.is_some()
                {
                    slot.grace = validate::stop_grace(&spec);
                    slot.check = spec.health_check;
                    self.watch_health(task);
                }
                return;
            }
            // An older attempt still runs here: fence it off first.
            let old = slot.attempt;
            self.stop(task, old, None);
            self.take_slot(task);
        }
        let grace = validate::stop_grace(&spec);
        let starting = status(task, run.attempt, TaskState::Starting);
        self.slots.insert(
            task,
            Slot {
                attempt: run.attempt,
                phase: Phase::Starting,
                container_id: None,
                stopping: false,
                grace,
                early_exit: None,
                last: starting.clone(),
                check: spec.health_check.clone(),
                monitor: None,
            },
        );
        self.report(task, starting);
        let req = StartRequest {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            task_id: task,
            attempt: run.attempt,
            spec,
        };
        let runtime = self.runtime.clone();
        let done = self.done.clone();
        let telemetry = self.telemetry.clone();
        tokio::spawn(async move {
            let result = match runtime.start(&req).await {
                Ok(id) => {
                    telemetry.starts.inc();
                    Ok(id)
                }
                Err(e) => {
                    telemetry.start_failed(&e);
                    Err(e.to_string())
                }
            };
            let _ = done.send(Done::Started {
                task,
                attempt: req.attempt,
                result,
            });
        });
    }

    /// Stops one attempt. An attempt this worker does not run (or no longer
    /// runs) is answered at once, so the manager can settle it: with its
    /// final report if it ended here, else as stopped.
    fn stop(&mut self, task: Uuid, attempt: u64, grace: Option<Duration>) {
        let Some(slot) = self.slots.get_mut(&task).filter(|s| s.attempt == attempt) else {
            let ended = self.finished.get(&task).filter(|s| s.attempt == attempt);
            let report = ended
                .cloned()
                .unwrap_or_else(|| status(task, attempt, TaskState::Stopped));
            self.report(task, report);
            return;
        };
        if slot.stopping {
            return;
        }
        slot.stopping = true;
        // A container on its way out is not probed: its failing probes
        // would only say it is stopping.
        slot.monitor = None;
        if let Some(g) = grace {
            slot.grace = g;
        }
        let grace = slot.grace;
        if let Some(cid) = slot.container_id.clone() {
            self.spawn_stop(task, attempt, cid, grace);
        }
        // Still starting: `finished` stops it once the start returns.
    }

    fn spawn_stop(&self, task: Uuid, attempt: u64, container_id: String, grace: Duration) {
        let stop = StopCall {
            container_id,
            grace,
            failures: 0,
        };
        self.spawn_stop_after(task, attempt, stop, Duration::ZERO);
    }

    /// Calls the runtime's stop once `delay` has passed.
    fn spawn_stop_after(&self, task: Uuid, attempt: u64, stop: StopCall, delay: Duration) {
        let runtime = self.runtime.clone();
        let done = self.done.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = runtime
                .stop(&stop.container_id, stop.grace)
                .await
                .map_err(|e| e.to_string());
            let _ = done.send(Done::Stopped {
                task,
                attempt,
                stop,
                result,
            });
        });
    }

    /// A stop call failed: the container may still run, so the attempt stays
    /// as it is (not reported `stopped`) and the stop is tried again, with a
    /// backoff, whether or not the attempt was replaced meanwhile.
    fn stop_failed(&self, task: Uuid, attempt: u64, mut stop: StopCall, error: &str) {
        stop.failures = stop.failures.saturating_add(1);
        let retry_in = STOP_RETRY_FIRST
            .saturating_mul(1 << stop.failures.saturating_sub(1).min(16))
            .min(STOP_RETRY_MAX);
        tracing::error!(
            %task,
            attempt,
            container = %stop.container_id,
            failures = stop.failures,
            %error,
            ?retry_in,
            "stopping a container failed; it may still run, so it is not reported stopped, \
             and the stop is tried again"
        );
        self.spawn_stop_after(task, attempt, stop, retry_in);
    }

    fn remove(&self, container_id: String) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.remove(&container_id).await {
                tracing::warn!(container = %container_id, error = %e, "cannot remove container");
            }
        });
    }

    /// Lists the node's containers in the background; `finished` compares.
    fn audit(&self) {
        let checked: Vec<(Uuid, u64, String)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.phase == Phase::Running && !s.stopping)
            .filter_map(|(id, s)| Some((*id, s.attempt, s.container_id.clone()?)))
            .collect();
        if checked.is_empty() {
            return;
        }
        let runtime = self.runtime.clone();
        let done = self.done.clone();
        let (cluster, node) = (self.cluster_id.clone(), self.node_id);
        tokio::spawn(async move {
            let result = runtime
                .list(&cluster, node)
                .await
                .map_err(|e| e.to_string());
            let _ = done.send(Done::Audited { checked, result });
        });
    }

    /// Reports the exits an audit found that the event stream missed.
    fn audited(&mut self, checked: Vec<(Uuid, u64, String)>, found: Vec<ContainerInfo>) {
        for (task, attempt, container_id) in checked {
            let live = self
                .slots
                .get(&task)
                .is_some_and(|s| s.attempt == attempt && s.phase == Phase::Running && !s.stopping);
            if !live {
                continue;
            }
            match found.iter().find(|c| c.container_id == container_id) {
                Some(c) if c.running => {}
                Some(c) => {
                    tracing::warn!(%task, attempt, "exit missed by the event stream; found by audit");
                    self.exited(Exit {
                        container_id,
                        task_id: task,
                        attempt,
                        exit_code: c.exit_code.unwrap_or(-1),
                    });
                }
                None => {
                    tracing::warn!(%task, attempt, "container disappeared");
                    self.take_slot(task);
                    self.telemetry.exited(Outcome::Failed);
                    let failed = TaskStatus {
                        container_id,
                        message: "the container disappeared (removed outside orch?)".into(),
                        ..status(task, attempt, TaskState::Failed)
                    };
                    self.report(task, failed);
                }
            }
        }
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Audited { checked, result } => match result {
                Ok(found) => self.audited(checked, found),
                Err(e) => tracing::warn!(error = %e, "cannot list containers for the audit"),
            },
            Done::Started {
                task,
                attempt,
                result,
            } => {
                let Some(slot) = self.slots.get_mut(&task).filter(|s| s.attempt == attempt) else {
                    // Replaced meanwhile; make sure its container does not linger.
                    if let Ok(cid) = result {
                        self.spawn_stop(task, attempt, cid, Duration::ZERO);
                    }
                    return;
                };
                match result {
                    Err(message) => {
                        self.take_slot(task);
                        let failed = TaskStatus {
                            message,
                            ..status(task, attempt, TaskState::Failed)
                        };
                        self.report(task, failed);
                    }
                    Ok(cid) => {
                        slot.container_id = Some(cid.clone());
                        slot.phase = Phase::Running;
                        self.telemetry.running.inc();
                        if slot.stopping {
                            let grace = slot.grace;
                            self.spawn_stop(task, attempt, cid, grace);
                        } else if let Some(code) = slot.early_exit {
                            self.take_slot(task);
                            self.telemetry.exited(outcome(code));
                            self.report(task, exit_status(task, attempt, &cid, code));
                            self.keep(task, attempt, cid);
                        } else {
                            let health = if slot.check.is_some() {
                                HealthState::Starting
                            } else {
                                HealthState::Unspecified
                            };
                            let running = TaskStatus {
                                container_id: cid,
                                health: health as i32,
                                ..status(task, attempt, TaskState::Running)
                            };
                            self.report(task, running);
                            self.watch_health(task);
                        }
                    }
                }
            }
            Done::Stopped {
                task,
                attempt,
                stop,
                result,
            } => {
                if let Err(e) = result {
                    self.stop_failed(task, attempt, stop, &e);
                    return;
                }
                if stop.failures > 0 {
                    tracing::info!(%task, attempt, failures = stop.failures, "stopped after failed tries");
                }
                self.keep(task, attempt, stop.container_id.clone());
                // The container is gone now (or was already): report the stop.
                if self.slots.get(&task).is_some_and(|s| s.attempt == attempt) {
                    let slot = self.take_slot(task);
                    self.telemetry.exited(Outcome::Stopped);
                    let stopped = TaskStatus {
                        exit_code: slot.as_ref().and_then(|s| s.early_exit),
                        container_id: slot.and_then(|s| s.container_id).unwrap_or_default(),
                        ..status(task, attempt, TaskState::Stopped)
                    };
                    self.report(task, stopped);
                }
            }
            Done::Health {
                task,
                attempt,
                health,
                reason,
            } => self.health_changed(task, attempt, health, reason),
        }
    }

    /// Starts probing a running attempt, if its task has a health check and
    /// nothing probes it yet. The first report says `starting`.
    fn watch_health(&mut self, task: Uuid) {
        let Some(slot) = self.slots.get_mut(&task) else {
            return;
        };
        let (Some(check), Some(cid)) = (&slot.check, &slot.container_id) else {
            return;
        };
        if slot.monitor.is_some() || slot.stopping || slot.phase != Phase::Running {
            return;
        }
        let attempt = slot.attempt;
        let done = self.done.clone();
        slot.monitor = health::spawn(
            self.runtime.clone(),
            cid.clone(),
            check,
            move |health, reason| {
                let _ = done.send(Done::Health {
                    task,
                    attempt,
                    health,
                    reason,
                });
            },
        );
        if slot.last.health() != HealthState::Starting {
            // An adopted container was reported without a health; its
            // probes start over, as after a start.
            let starting = TaskStatus {
                health: HealthState::Starting as i32,
                ..slot.last.clone()
            };
            self.report(task, starting);
        }
    }

    /// Reports a change of health of a running attempt, unless the attempt
    /// was replaced or is stopping meanwhile.
    fn health_changed(&mut self, task: Uuid, attempt: u64, health: HealthState, reason: String) {
        let Some(slot) = self
            .slots
            .get(&task)
            .filter(|s| s.attempt == attempt && !s.stopping && s.monitor.is_some())
        else {
            return;
        };
        tracing::info!(%task, attempt, health = ?health, %reason, "task health changed");
        let report = TaskStatus {
            container_id: slot.container_id.clone().unwrap_or_default(),
            health: health as i32,
            message: reason,
            ..status(task, attempt, TaskState::Running)
        };
        self.report(task, report);
    }

    fn exited(&mut self, exit: Exit) {
        let Some(slot) = self
            .slots
            .get_mut(&exit.task_id)
            .filter(|s| s.attempt == exit.attempt)
        else {
            return;
        };
        if slot.phase == Phase::Starting && slot.container_id.is_none() {
            // The start call has not returned yet; `finished` reports it.
            slot.early_exit = Some(exit.exit_code);
            return;
        }
        if slot.stopping {
            // The stop call reports `stopped` once it returns, so the task
            // is not called stopped while its container may still run.
            slot.early_exit = Some(exit.exit_code);
            return;
        }
        self.take_slot(exit.task_id);
        self.telemetry.exited(outcome(exit.exit_code));
        let ended = exit_status(
            exit.task_id,
            exit.attempt,
            &exit.container_id,
            exit.exit_code,
        );
        self.report(exit.task_id, ended);
        // The exit code has been read and reported; the container stays for
        // its output, as long as the retention says.
        self.keep(exit.task_id, exit.attempt, exit.container_id);
    }

    /// Takes a task's slot away; a running container stops counting as
    /// running.
    fn take_slot(&mut self, task: Uuid) -> Option<Slot> {
        let slot = self.slots.remove(&task)?;
        if slot.phase == Phase::Running {
            self.telemetry.running.dec();
        }
        Some(slot)
    }

    fn resync(&mut self) {
        let live = self.slots.values().map(|s| s.last.clone());
        for s in live.chain(self.finished.values().cloned()) {
            let _ = self.reports.send(s);
        }
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
