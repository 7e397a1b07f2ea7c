//! Services: the API's service operations, and the settling that keeps each
//! service's tasks in line with it.
//!
//! An operation changes a service's record (a new version, a count, a
//! rollback) and marks it dirty; so does any change of its tasks that a
//! reconciler cares about (a task that ended, a new task that came up during
//! a rollout) and, for global services, any change of the nodes. At the end
//! of every engine operation [`Engine::settle`] runs the service's
//! reconcilers (`orchestrator::{replicated, global, batch, update}`) over
//! its tasks and applies their plans: create tasks in slots, stop tasks,
//! store the rollout's progress. A rollout also wakes up by itself when a
//! new task's monitor ends (`timers`, through [`Engine::tick`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use orch::time::timestamp;
use orch::v1::{
    DesiredState, HealthState, JobState, NodeState, RolloutState, Service, ServiceChange,
    ServiceSpec, ServiceVersion, Task, TaskState, service_spec,
};
use orch::{labels, service, validate};
use tokio::time::Instant;
use uuid::Uuid;

use super::Engine;
use crate::Error;
use crate::orchestrator::global::Eligibility;
use crate::orchestrator::{Plan, SlotKey, SlotTask, Slots, batch, global, replicated, update};
use crate::persist::Durable;
use crate::state::ServiceEntry;

/// The shortest wait before a service is reconciled again after reports
/// of its tasks: reports that arrive together are counted together.
pub const ROLLOUT_SETTLE: Duration = Duration::from_millis(50);

/// The longest such wait, for the largest services.
pub const ROLLOUT_SETTLE_MAX: Duration = Duration::from_secs(2);

/// Up to this many tasks, a task of a service that ended has its service
/// reconciled at once (a slot to fill, a job to go on).
const RECONCILE_AT_ONCE: usize = 1_000;

/// How long a service of `tasks` tasks waits between reconciles prompted by
/// its tasks' reports. A reconcile reads every task of the service (about a
/// microsecond or two each), so the wait grows with the service: 50 ms up
/// to 2,500 tasks, 2 s from 100,000, which keeps a large rollout's
/// reconciles under a tenth of the manager's time.
pub fn settle_delay(tasks: usize) -> Duration {
    let micros = u64::try_from(tasks).unwrap_or(u64::MAX).saturating_mul(20);
    Duration::from_micros(micros).clamp(ROLLOUT_SETTLE, ROLLOUT_SETTLE_MAX)
}

/// Which of the three apply calls: whether the service may or must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Create or update.
    Apply,
    /// Create; the service must not exist.
    Create,
    /// Update; the service must exist.
    Update,
}

/// The kind of a service's mode, to refuse a change of it.
fn mode_word(spec: &ServiceSpec) -> &'static str {
    match spec.mode {
        Some(service_spec::Mode::Replicated(_)) => "replicated",
        Some(service_spec::Mode::Global(_)) => "global",
        Some(service_spec::Mode::Batch(_)) => "batch",
        None => "without a mode",
    }
}

/// A task as the service reconcilers see it.
fn slot_task(id: Uuid, task: &Task) -> SlotTask {
    SlotTask {
        id,
        version: task.service_version,
        wanted: task.desired_state() == DesiredState::Running,
        state: task.state(),
        health: task.health(),
        checked: task.spec.as_ref().is_some_and(|s| s.health_check.is_some()),
        started_at: task.started_at.as_ref().map(orch::time::system_time),
        restarts: task.restart_count,
        // Only a waiting or failing task's message is read; a running one's
        // is not copied, since a reconcile looks at every task.
        message: if task.state() == TaskState::Running && task.health() != HealthState::Unhealthy {
            String::new()
        } else {
            task.message.clone()
        },
    }
}

/// Where a task of a service belongs.
fn slot_key(task: &Task) -> SlotKey {
    match Uuid::parse_str(&task.pinned_node_id) {
        Ok(node) => SlotKey::Node(node),
        Err(_) => SlotKey::Slot(task.slot),
    }
}

/// What an applied spec changes in a service, before anything is changed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Differences {
    /// The template (task or placement): a new version.
    pub template_changed: bool,
    /// The mode's counts: a scale.
    pub counts_changed: bool,
    /// The update config alone.
    pub update_changed: bool,
}

impl Differences {
    /// The change ApplyService reports for these differences.
    pub fn change(self) -> ServiceChange {
        if self.template_changed {
            ServiceChange::Updated
        } else if self.counts_changed {
            ServiceChange::Scaled
        } else if self.update_changed {
            ServiceChange::Reconfigured
        } else {
            ServiceChange::Unchanged
        }
    }
}

/// What applying `spec` to the service of `entry` would change.
///
/// # Errors
/// [`Error::FailedPrecondition`] for a change of mode or of a batch
/// service's template.
pub(super) fn differences(entry: &ServiceEntry, spec: &ServiceSpec) -> Result<Differences, Error> {
    let name = &spec.name;
    let old = entry.service.spec.clone().unwrap_or_default();
    if mode_word(&old) != mode_word(spec) {
        return Err(Error::FailedPrecondition(format!(
            "service {name} is {}; its mode cannot change to {}: delete it and create it again",
            mode_word(&old),
            mode_word(spec)
        )));
    }
    let current = entry.current();
    let template_changed =
        current.map(|v| (&v.task, &v.placement)) != Some((&spec.task, &spec.placement));
    if template_changed && mode_word(spec) == "batch" {
        return Err(Error::FailedPrecondition(format!(
            "the task of batch service {name} cannot change; delete the job and create it again"
        )));
    }
    Ok(Differences {
        template_changed,
        counts_changed: old.mode != spec.mode,
        update_changed: old.update != spec.update,
    })
}

/// The spec of a service's task made from a version's template: the mode's
/// default restart policy if it sets none, the placement's constraints as
/// its node selector. Name and labels are the caller's.
pub(super) fn template_spec(
    mode: Option<&service_spec::Mode>,
    task: Option<&orch::v1::TaskSpec>,
    placement: Option<&orch::v1::Placement>,
) -> orch::v1::TaskSpec {
    let mut spec = task.cloned().unwrap_or_default();
    if spec.restart.is_none() {
        spec.restart = Some(service::default_restart(mode));
    }
    spec.node_selector = placement.map(|p| p.constraints.clone()).unwrap_or_default();
    spec
}

/// Whether a node carries every label of `constraints`.
fn matches(
    labels: &std::collections::HashMap<String, String>,
    constraints: &std::collections::HashMap<String, String>,
) -> bool {
    constraints.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Engine {
    /// A service by name, with its counts.
    pub fn service(&self, name: &str) -> Option<Service> {
        self.state.service(name).map(|e| self.view(e))
    }

    /// The services after the name `after` (exclusive), by name, with their
    /// counts: at most `limit`, and no more once they make `max_bytes`
    /// encoded (`limits::page`); and whether more follow.
    pub fn list_services(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<Service>, bool) {
        let views: Vec<Service> = self
            .state
            .services_after(after)
            .take(limit.saturating_add(1))
            .map(|e| self.view(e))
            .collect();
        crate::limits::page(views.iter(), limit, max_bytes)
    }

    /// The id of a service, to find its tasks.
    pub fn service_id(&self, name: &str) -> Option<String> {
        self.state.service(name).map(|e| e.service.id.clone())
    }

    /// A service's kept versions, oldest first, and the one in force.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown service.
    pub fn service_versions(&self, name: &str) -> Result<(Vec<ServiceVersion>, u64), Error> {
        let entry = self.service_entry(name)?;
        Ok((
            entry.versions.values().cloned().collect(),
            entry.service.version,
        ))
    }

    fn service_entry(&self, name: &str) -> Result<&ServiceEntry, Error> {
        self.state
            .service(name)
            .ok_or_else(|| Error::NotFound(format!("service {name} not found")))
    }

    /// A service's record with its counts filled in.
    fn view(&self, entry: &ServiceEntry) -> Service {
        let mut service = entry.service.clone();
        let tasks = || entry.tasks.iter().filter_map(|&id| self.state.task(id));
        service.running = count(tasks().filter(|t| {
            t.state() == TaskState::Running && t.desired_state() == DesiredState::Running
        }));
        match entry.service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(service_spec::Mode::Replicated(r)) => service.desired = service::replicas(r),
            Some(service_spec::Mode::Global(_)) => {
                service.desired = count(
                    self.global_nodes(entry)
                        .into_iter()
                        .filter(|(_, e)| *e == Eligibility::Eligible),
                );
            }
            Some(service_spec::Mode::Batch(b)) => {
                let out = batch::reconcile(
                    service::completions(b),
                    service::batch_parallelism(b),
                    &self.slots(entry),
                );
                service.desired = service::completions(b);
                service.completed = out.completed;
                service.failed = out.failed;
            }
            None => {}
        }
        service
    }

    /// A service's tasks by slot.
    fn slots(&self, entry: &ServiceEntry) -> Slots {
        let mut slots: Slots = BTreeMap::new();
        for &id in &entry.tasks {
            if let Some(task) = self.state.task(id) {
                slots
                    .entry(slot_key(task))
                    .or_default()
                    .push(slot_task(id, task));
            }
        }
        slots
    }

    /// Every node and where it stands for a global service.
    fn global_nodes(&self, entry: &ServiceEntry) -> Vec<(Uuid, Eligibility)> {
        let constraints = entry
            .current()
            .and_then(|v| v.placement.as_ref())
            .map(|p| p.constraints.clone())
            .unwrap_or_default();
        self.nodes_for_global(&constraints)
    }

    /// Every node and where it stands for a global service placed by
    /// `constraints`.
    pub(super) fn nodes_for_global(
        &self,
        constraints: &std::collections::HashMap<String, String>,
    ) -> Vec<(Uuid, Eligibility)> {
        (0..self.state.node_count())
            .map(|i| {
                let node = &self.state.record(i).node;
                let eligibility = if !matches(&node.labels, constraints) || node.draining {
                    Eligibility::Excluded
                } else if node.state() == NodeState::Ready {
                    Eligibility::Eligible
                } else {
                    Eligibility::Down
                };
                (self.state.node_id(i), eligibility)
            })
            .collect()
    }

    /// How many slots a service has now (for a rollout's total).
    fn slot_count(&self, entry: &ServiceEntry) -> u32 {
        match entry.service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(service_spec::Mode::Replicated(r)) => service::replicas(r),
            Some(service_spec::Mode::Batch(b)) => service::completions(b),
            Some(service_spec::Mode::Global(_)) => count(
                self.global_nodes(entry)
                    .into_iter()
                    .filter(|(_, e)| *e == Eligibility::Eligible),
            ),
            None => 0,
        }
    }

    /// Creates or updates a service (see [`How`]). A change of the template
    /// (task or placement) makes a new version and rolls it out; a change of
    /// the count only scales. Returns the service, what changed, and a
    /// [`Durable`] for the change.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an update of a service that does not exist,
    /// [`Error::AlreadyExists`] for a create of one that does,
    /// [`Error::FailedPrecondition`] for a change of mode or of a batch
    /// service's template.
    pub fn apply_service(
        &mut self,
        spec: ServiceSpec,
        how: How,
    ) -> Result<(Service, ServiceChange, Durable), Error> {
        let now = self.begin();
        let name = spec.name.clone();
        let change = match self.state.service(&name) {
            None if how == How::Update => {
                return Err(Error::NotFound(format!("service {name} not found")));
            }
            None => {
                self.create_service(spec, now.wall);
                ServiceChange::Created
            }
            Some(_) if how == How::Create => {
                return Err(Error::AlreadyExists(format!(
                    "service {name} already exists; update it, or delete it first"
                )));
            }
            Some(_) => self.update_service(spec, now.wall)?,
        };
        let service = self.service(&name).unwrap_or_default();
        Ok((service, change, self.flush_service()))
    }

    /// Ends a service operation: the service's own records are made durable
    /// first, and that is what the caller waits for; the tasks its
    /// reconcilers then create or stop are committed after, in order, but not
    /// waited for. A manager that crashes in between reconciles the durable
    /// service again at start-up, so nothing is lost, and a call that changes
    /// 100,000 tasks answers once one small record is on disk.
    fn flush_service(&mut self) -> Durable {
        let durable = self.queue();
        self.flush();
        durable
    }

    fn create_service(&mut self, spec: ServiceSpec, now: SystemTime) {
        let name = spec.name.clone();
        let stamp = timestamp(now);
        let version = ServiceVersion {
            service: name.clone(),
            version: 1,
            task: spec.task.clone(),
            placement: spec.placement.clone(),
            created_at: Some(stamp),
        };
        let batch = matches!(spec.mode, Some(service_spec::Mode::Batch(_)));
        let mut service = Service {
            id: Uuid::now_v7().to_string(),
            spec: Some(spec),
            version: 1,
            created_at: Some(stamp),
            updated_at: Some(stamp),
            ..Service::default()
        };
        if batch {
            service.set_job_state(JobState::Running);
        }
        self.state
            .create_service(service, version, "created at version 1");
        if !batch && let Some(entry) = self.state.service(&name) {
            let total = self.slot_count(entry);
            self.set_rollout(&name, update::begin(0, 1, total, now));
        }
        self.mark_dirty(&name);
    }

    fn update_service(
        &mut self,
        spec: ServiceSpec,
        now: SystemTime,
    ) -> Result<ServiceChange, Error> {
        let name = spec.name.clone();
        let entry = self.service_entry(&name)?;
        let diff = differences(entry, &spec)?;
        if diff.change() == ServiceChange::Unchanged {
            return Ok(ServiceChange::Unchanged);
        }
        let Differences {
            template_changed,
            counts_changed,
            ..
        } = diff;
        let stamp = timestamp(now);
        let (from, next) = (entry.service.version, entry.newest() + 1);
        // A rollout that did not finish replaces from the last version that
        // did: that is where a failure of the new one goes back to.
        let from = match entry.service.rollout.as_ref() {
            Some(r) if matches!(r.state(), RolloutState::RollingOut | RolloutState::Paused) => {
                r.from_version
            }
            _ => from,
        };
        if template_changed {
            self.state.add_version(ServiceVersion {
                service: name.clone(),
                version: next,
                task: spec.task.clone(),
                placement: spec.placement.clone(),
                created_at: Some(stamp),
            });
        }
        let Some(entry) = self.state.service_mut(&name) else {
            return Ok(ServiceChange::Unchanged);
        };
        entry.service.spec = Some(spec);
        entry.service.updated_at = Some(stamp);
        let change = if template_changed {
            entry.service.version = next;
            let total = self.state.service(&name).map_or(0, |e| self.slot_count(e));
            self.set_rollout(&name, update::begin(from, next, total, now));
            ServiceChange::Updated
        } else {
            let why = if counts_changed {
                "scaled"
            } else {
                "update settings changed"
            };
            self.state.service_changed(&name, why);
            if counts_changed {
                ServiceChange::Scaled
            } else {
                ServiceChange::Reconfigured
            }
        };
        self.mark_dirty(&name);
        Ok(change)
    }

    /// Changes how many tasks a replicated service runs, or a batch
    /// service's completions. Returns the service and a [`Durable`].
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown service,
    /// [`Error::FailedPrecondition`] for a global one, [`Error::Invalid`]
    /// for a count out of range.
    pub fn scale_service(&mut self, name: &str, count: u32) -> Result<(Service, Durable), Error> {
        let mut spec = self
            .service_entry(name)?
            .service
            .spec
            .clone()
            .unwrap_or_default();
        match spec.mode.as_mut() {
            Some(service_spec::Mode::Replicated(r)) => r.replicas = Some(count),
            Some(service_spec::Mode::Batch(b)) => b.completions = Some(count),
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "service {name} is global: it runs one task per eligible node and has no count"
                )));
            }
        }
        validate::service_spec(&spec).map_err(|e| match e.field.as_str() {
            "replicated.replicas" | "batch.completions" => {
                Error::Invalid(validate::FieldError::new("count", e.rule))
            }
            _ => Error::Invalid(e),
        })?;
        let (service, _, durable) = self.apply_service(spec, How::Update)?;
        Ok((service, durable))
    }

    /// Makes kept version `to` (0: the one before) the one in force again,
    /// and rolls it out. Returns the service and a [`Durable`].
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown service or version,
    /// [`Error::FailedPrecondition`] for a batch service, or a version that
    /// is already in force.
    pub fn rollback_service(&mut self, name: &str, to: u64) -> Result<(Service, Durable), Error> {
        let now = self.begin();
        let entry = self.service_entry(name)?;
        if entry
            .service
            .spec
            .as_ref()
            .is_some_and(|s| mode_word(s) == "batch")
        {
            return Err(Error::FailedPrecondition(format!(
                "service {name} is a batch job: it has no rollouts to roll back"
            )));
        }
        let current = entry.service.version;
        let target = if to == 0 {
            // The version the last rollout replaced, or else the newest
            // kept one before the current.
            let replaced = entry
                .service
                .rollout
                .as_ref()
                .map(|r| r.from_version)
                .filter(|&v| v != current && entry.versions.contains_key(&v));
            replaced
                .or_else(|| entry.versions.range(..current).next_back().map(|(&v, _)| v))
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "service {name} has no earlier version to roll back to"
                    ))
                })?
        } else {
            to
        };
        let Some(version) = entry.versions.get(&target).cloned() else {
            let kept: Vec<String> = entry.versions.keys().map(u64::to_string).collect();
            return Err(Error::NotFound(format!(
                "service {name} keeps no version {target} (kept: {})",
                kept.join(", ")
            )));
        };
        if target == current {
            return Err(Error::FailedPrecondition(format!(
                "version {target} of service {name} is already in force"
            )));
        }
        let total = self.slot_count(entry);
        self.switch_version(name, &version, now.wall);
        self.set_rollout(
            name,
            update::begin_rollback(current, target, total, now.wall),
        );
        self.mark_dirty(name);
        let service = self.service(name).unwrap_or_default();
        Ok((service, self.flush_service()))
    }

    /// Stops every task of a service and deletes it and its versions.
    /// Returns the service as it was and a [`Durable`].
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown service.
    pub fn delete_service(&mut self, name: &str) -> Result<(Service, Durable), Error> {
        let now = self.begin();
        let service = self
            .service(name)
            .ok_or_else(|| Error::NotFound(format!("service {name} not found")))?;
        let tasks: Vec<Uuid> = self
            .state
            .service(name)
            .map(|e| e.tasks.iter().copied().collect())
            .unwrap_or_default();
        self.state.remove_service(name);
        let durable = self.queue();
        for id in tasks {
            self.stop_now(id, "its service was deleted", now);
        }
        self.flush();
        Ok((service, durable))
    }

    /// Makes `version` the service's template in force.
    fn switch_version(&mut self, name: &str, version: &ServiceVersion, now: SystemTime) {
        if let Some(entry) = self.state.service_mut(name) {
            entry.service.version = version.version;
            entry.service.updated_at = Some(timestamp(now));
            if let Some(spec) = entry.service.spec.as_mut() {
                spec.task = version.task.clone();
                spec.placement = version.placement.clone();
            }
        }
    }

    /// Stores a service's rollout, with an event saying how it stands.
    fn set_rollout(&mut self, name: &str, rollout: orch::v1::Rollout) {
        let Some(entry) = self.state.service_mut(name) else {
            return;
        };
        let why = if rollout.reason.is_empty() {
            rollout.message.clone()
        } else {
            format!("{}: {}", rollout.message, rollout.reason)
        };
        entry.service.rollout = Some(rollout);
        self.state.service_changed(name, &why);
    }

    /// Marks a service to be reconciled at the end of the operation.
    pub(super) fn mark_dirty(&mut self, name: &str) {
        if !self.dirty.contains(name) {
            self.dirty.insert(name.to_owned());
        }
    }

    /// Marks the service of task `id` dirty if what happened to the task
    /// matters to it: at once if the task ended (its slot may need a task)
    /// in a service of up to [`RECONCILE_AT_ONCE`] tasks; after
    /// [`settle_delay`] if the service is larger or the task's service is
    /// rolling out, so that a burst of reports is counted in one pass.
    pub(super) fn task_touched(&mut self, id: Uuid, ended: bool) {
        let Some(task) = self.state.task(id) else {
            return;
        };
        let Some(entry) = self.state.service_of(task) else {
            return;
        };
        let rolling = entry
            .service
            .rollout
            .as_ref()
            .is_some_and(|r| update::is_active(r.state()));
        // A task above the replica count ended (a scale down): nothing to
        // fill, and a service scaled from 100,000 to 0 must not read all its
        // tasks at every report.
        let scaled_away = matches!(
            entry.service.spec.as_ref().and_then(|s| s.mode.as_ref()),
            Some(service_spec::Mode::Replicated(r)) if task.slot > service::replicas(r)
        );
        let name = task.service.clone();
        let tasks = entry.tasks.len();
        if ended && scaled_away && !rolling {
            return;
        }
        if ended && tasks <= RECONCILE_AT_ONCE {
            self.mark_dirty(&name);
        } else if ended || rolling {
            let due = self.now.at + settle_delay(tasks);
            self.wake_at(&name, due);
        }
    }

    /// Marks every global service dirty: the nodes changed.
    pub(super) fn nodes_touched(&mut self) {
        let global: Vec<String> = self
            .state
            .services()
            .filter(|e| {
                matches!(
                    e.service.spec.as_ref().and_then(|s| s.mode.as_ref()),
                    Some(service_spec::Mode::Global(_))
                )
            })
            .map(ServiceEntry::name)
            .collect();
        for name in global {
            self.mark_dirty(&name);
        }
    }

    /// Reconciles the dirty services until none is left (a reconcile that
    /// stops pending tasks makes its service dirty again; a few rounds
    /// settle it, and anything left waits for the next operation).
    pub(super) fn settle(&mut self) {
        for _ in 0..4 {
            if self.dirty.is_empty() {
                return;
            }
            let dirty = std::mem::take(&mut self.dirty);
            for name in dirty {
                self.reconcile_service(&name);
            }
        }
    }

    /// Runs a service's reconcilers and applies their plans.
    fn reconcile_service(&mut self, name: &str) {
        let now = self.now;
        let Some(entry) = self.state.service(name) else {
            return;
        };
        let spec = entry.service.spec.clone().unwrap_or_default();
        let slots = self.slots(entry);
        let settings = service::update_settings(spec.update.as_ref());
        let rollout = entry.service.rollout.clone().unwrap_or_default();
        let (base, desired) = match spec.mode.as_ref() {
            Some(service_spec::Mode::Replicated(r)) => {
                let replicas = service::replicas(r);
                (
                    replicated::reconcile(replicas, &slots),
                    (1..=replicas).map(SlotKey::Slot).collect(),
                )
            }
            Some(service_spec::Mode::Global(_)) => {
                let nodes = self.global_nodes(entry);
                let desired: Vec<SlotKey> = nodes
                    .iter()
                    .filter(|(_, e)| *e == Eligibility::Eligible)
                    .map(|&(n, _)| SlotKey::Node(n))
                    .collect();
                (global::reconcile(&nodes, &slots), desired)
            }
            Some(service_spec::Mode::Batch(b)) => {
                let out = batch::reconcile(
                    service::completions(b),
                    service::batch_parallelism(b),
                    &slots,
                );
                if entry.service.job_state() != out.job {
                    if let Some(entry) = self.state.service_mut(name) {
                        entry.service.set_job_state(out.job);
                    }
                    let why = match out.job {
                        JobState::Completed => format!("job completed: {} tasks", out.completed),
                        JobState::Failed => "job failed: a task failed with no restart left".into(),
                        _ => "job running".into(),
                    };
                    self.state.service_changed(name, &why);
                }
                self.apply_plan(name, &out.plan, "its job ended", now);
                return;
            }
            None => return,
        };
        // The rollout looks at the slots as the base plan leaves them, so
        // that the tasks it just created count (and say why they wait).
        let base_reason = if matches!(spec.mode, Some(service_spec::Mode::Global(_))) {
            "its node is drained, gone or no longer matches the placement"
        } else {
            "scaled down"
        };
        self.apply_plan(name, &base, base_reason, now);
        let slots = match self.state.service(name) {
            Some(entry) if !base.is_empty() => self.slots(entry),
            _ => slots,
        };
        let step = update::reconcile(&settings, &rollout, &slots, &desired, now.wall);
        let stop_reason = if rollout.state() == RolloutState::RollingBack {
            "rolled back"
        } else {
            "replaced by a new version"
        };
        self.apply_plan(name, &step.plan, stop_reason, now);
        if step.rollback {
            let version = self
                .state
                .service(name)
                .and_then(|e| e.versions.get(&step.rollout.to_version).cloned());
            if let Some(version) = version {
                self.switch_version(name, &version, now.wall);
            }
            self.mark_dirty(name);
        }
        if Some(&step.rollout)
            != self
                .state
                .service(name)
                .and_then(|e| e.service.rollout.as_ref())
            && rollout.state() != RolloutState::Unspecified
        {
            self.set_rollout(name, step.rollout);
        }
        if let Some(due) = step.next_check {
            // A large service, never sooner than it can afford: monitors
            // that end one after the other are counted together.
            let tasks = self.state.service(name).map_or(0, |e| e.tasks.len());
            let to_due = due.duration_since(now.wall).unwrap_or_default();
            let wait = if tasks <= RECONCILE_AT_ONCE {
                to_due
            } else {
                to_due.max(settle_delay(tasks))
            };
            self.wake_at(name, now.at + wait);
        }
    }

    /// Applies a reconciler's plan: stops first, then new tasks.
    fn apply_plan(&mut self, name: &str, plan: &Plan, stop_reason: &str, now: crate::clock::Now) {
        for &id in &plan.stop {
            self.stop_now(id, stop_reason, now);
        }
        for &key in &plan.create {
            self.create_service_task(name, key, now.wall);
        }
    }

    /// Creates a task of the service's version in force, in `key`'s slot,
    /// and places it. Its creation is queued before its placement, in order.
    fn create_service_task(&mut self, name: &str, key: SlotKey, now: SystemTime) {
        let Some(entry) = self.state.service(name) else {
            return;
        };
        let Some(version) = entry.current() else {
            tracing::error!(
                service = name,
                version = entry.service.version,
                "the version in force is not kept"
            );
            return;
        };
        let mode = entry.service.spec.as_ref().and_then(|s| s.mode.as_ref());
        let mut spec = template_spec(mode, version.task.as_ref(), version.placement.as_ref());
        spec.labels
            .insert(labels::SERVICE.to_owned(), name.to_owned());
        let (slot, pinned) = match key {
            SlotKey::Slot(n) => (n, String::new()),
            SlotKey::Node(node) => (0, node.to_string()),
        };
        spec.name = match key {
            SlotKey::Slot(n) => format!("{name}.{n}"),
            SlotKey::Node(node) => format!("{name}.{}", &node.simple().to_string()[..8]),
        };
        let Some(mut task) = Engine::new_tasks(vec![spec], now).pop() else {
            return;
        };
        task.service = name.to_owned();
        task.service_id = entry.service.id.clone();
        task.slot = slot;
        task.service_version = version.version;
        task.pinned_node_id = pinned;
        self.state
            .write(crate::store::Write::TaskCreated(Box::new(task.clone())));
        let id = self.state.insert_task(task);
        self.place(id);
    }

    /// Has service `name` reconciled at `due`, unless it already will be
    /// by then: one timer per service, the earliest.
    fn wake_at(&mut self, name: &str, due: Instant) {
        if self.wakes.get(name).is_some_and(|&w| w <= due) {
            return;
        }
        if let Some(old) = self.wakes.insert(name.to_owned(), due) {
            self.timers.remove(&(old, name.to_owned()));
        }
        self.timers.insert((due, name.to_owned()));
    }

    /// The services' wake-ups due by `at`, taken off the timers and
    /// marked dirty.
    pub(super) fn wake_services(&mut self, at: Instant) {
        while let Some((due, _)) = self.timers.first() {
            if *due > at {
                break;
            }
            if let Some((_, name)) = self.timers.pop_first() {
                self.wakes.remove(&name);
                self.mark_dirty(&name);
            }
        }
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

impl ServiceEntry {
    /// The service's name.
    fn name(&self) -> String {
        self.service
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }
}
