//! Plans: where a task would be placed now, and why, with nothing changed.
//!
//! `PlanTask`, `PlanService` and a pending task's `GetTask` ask the
//! scheduler to explain its decision ([`Scheduler::explain`]) over the
//! nodes as they are, and turn the explanation into the API's
//! [`PlacementPlan`]: the node it would choose and every node's verdict.
//! A plan reads the state and writes nothing: no store write, no event, no
//! move of the scheduler's cursor or sampling (it decides on a copy); a
//! service's replicas are planned one after the other on copied snapshots,
//! each reserving what it takes, so that the second sees the first.

use orch::service;
use orch::v1::{
    NodeState, NodeVerdict, PlacementPlan, PlanServiceResponse, ServiceChange, ServiceSpec,
    SlotPlan, Task, TaskAttempt, TaskSpec, TaskState, service_spec,
};
use prost::Message;
use uuid::Uuid;

use super::services::{differences, template_spec};
use super::{Engine, pinned_node};
use crate::Error;
use crate::limits::MAX_PAGE_BYTES;
use crate::orchestrator::SlotKey;
use crate::orchestrator::global::Eligibility;
use crate::scheduler::filter::{Filter, NodeReady};
use crate::scheduler::{
    Demand, Explanation, NodeSnapshot, Scheduler, Strategy, Unplaceable, Verdict, score,
};

/// Most tasks a service plan places; the rest are counted, not planned.
pub const MAX_PLANNED_SLOTS: usize = 10_000;

impl Engine {
    /// A task, with its kept attempts (oldest first) and, while it is
    /// pending, where it would go now and why (every node's verdict).
    pub fn task_detail(&self, id: Uuid) -> Option<(Task, Vec<TaskAttempt>, Option<PlacementPlan>)> {
        let task = self.state.task(id)?;
        let attempts = self.state.attempts(id).cloned().collect();
        let placement = (task.state() == TaskState::Pending).then(|| {
            let demand = self.state.demand(task);
            let pinned = pinned_node(task).map(|n| self.state.node_index(n));
            let snapshots = self.state.snapshots();
            self.plan_of(
                explain(&self.scheduler, &demand, snapshots, pinned),
                snapshots,
            )
        });
        Some((task.clone(), attempts, placement))
    }

    /// Where a task of `spec` (validated) would be placed now, and why.
    pub fn plan_task(&self, spec: &TaskSpec) -> PlacementPlan {
        let snapshots = self.state.snapshots();
        self.plan_of(
            self.scheduler.explain(&Demand::of(spec), snapshots),
            snapshots,
        )
    }

    /// What applying `spec` (validated) would change, and where the tasks
    /// the change creates at once would go: a new service's or a new
    /// version's every slot (placed beside the tasks running now, as a
    /// start-first update places them), the slots a scale up adds, one task
    /// per eligible node of a global service, a batch job's first
    /// `parallelism` completions.
    ///
    /// # Errors
    /// As [`Engine::apply_service`]: [`Error::FailedPrecondition`] for a
    /// change of mode or of a batch service's template.
    pub fn plan_service(&self, spec: &ServiceSpec) -> Result<PlanServiceResponse, Error> {
        let (change, keys) = match self.state.service(&spec.name) {
            None => (ServiceChange::Created, self.new_slots(spec, 0)),
            Some(entry) => {
                let change = differences(entry, spec)?.change();
                let keys = match change {
                    ServiceChange::Updated => self.new_slots(spec, 0),
                    ServiceChange::Scaled => {
                        let old = match entry.service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                            Some(service_spec::Mode::Replicated(r)) => service::replicas(r),
                            _ => u32::MAX,
                        };
                        self.new_slots(spec, old)
                    }
                    _ => Vec::new(),
                };
                (change, keys)
            }
        };
        let template = template_spec(
            spec.mode.as_ref(),
            spec.task.as_ref(),
            spec.placement.as_ref(),
        );
        let mut demand = Demand::of(&template);
        demand.group = Some(self.state.group_of(&spec.name));
        // Copies: every planned replica reserves on them, and on nothing else.
        let mut snapshots: Vec<NodeSnapshot> = self.state.snapshots().to_vec();
        let mut scheduler = self.scheduler.clone();
        let mut bytes = 0;
        let mut slots = Vec::new();
        for &key in keys.iter().take(MAX_PLANNED_SLOTS) {
            let (slot, pinned_node_id, pinned) = match key {
                SlotKey::Slot(n) => (n, String::new(), None),
                SlotKey::Node(node) => (0, node.to_string(), Some(self.state.node_index(node))),
            };
            // Every node's verdict while the reply stays small enough; then
            // the choice alone.
            let detailed = bytes < MAX_PAGE_BYTES;
            let explanation = detailed.then(|| explain(&scheduler, &demand, &snapshots, pinned));
            // The decision itself, as the apply would make it, so that the
            // cursor and the sampling move as they would.
            let chosen = match pinned {
                None => scheduler.place(&demand, &snapshots),
                Some(i) => match i.and_then(|i| snapshots.get(i).map(|n| (i, n))) {
                    Some((i, node)) => scheduler.check(&demand, node).map(|()| i),
                    None => Err(Unplaceable {
                        reason: "its node is no longer known".to_owned(),
                    }),
                },
            };
            let placement = match explanation {
                Some(e) => self.plan_of(e, &snapshots),
                None => {
                    let node = chosen.as_ref().ok().and_then(|&i| snapshots.get(i));
                    PlacementPlan {
                        chosen_node_id: node.map(|n| n.id.to_string()).unwrap_or_default(),
                        chosen_node_name: node.map(|n| n.name.clone()).unwrap_or_default(),
                        nodes: Vec::new(),
                        unplaceable: chosen
                            .as_ref()
                            .err()
                            .map(|u| u.reason.clone())
                            .unwrap_or_default(),
                        strategy: scheduler.strategy().as_str().to_owned(),
                    }
                }
            };
            if let Ok(i) = chosen
                && let Some(node) = snapshots.get_mut(i)
            {
                node.reserve(&demand);
            }
            let plan = SlotPlan {
                slot,
                pinned_node_id,
                placement: Some(placement),
            };
            bytes += plan.encoded_len();
            slots.push(plan);
        }
        Ok(PlanServiceResponse {
            change: change as i32,
            slots,
            slots_not_planned: u32::try_from(keys.len().saturating_sub(MAX_PLANNED_SLOTS))
                .unwrap_or(u32::MAX),
        })
    }

    /// The slots a service of `spec` has beyond the first `from` (replicas
    /// or completions; for a global service, every eligible node).
    fn new_slots(&self, spec: &ServiceSpec, from: u32) -> Vec<SlotKey> {
        match spec.mode.as_ref() {
            Some(service_spec::Mode::Replicated(r)) => (from.saturating_add(1)
                ..=service::replicas(r))
                .map(SlotKey::Slot)
                .collect(),
            Some(service_spec::Mode::Batch(b)) => {
                let first_wave = service::completions(b).min(service::batch_parallelism(b));
                (from.saturating_add(1)..=first_wave)
                    .map(SlotKey::Slot)
                    .collect()
            }
            Some(service_spec::Mode::Global(_)) if from == 0 => {
                let constraints = spec
                    .placement
                    .as_ref()
                    .map(|p| p.constraints.clone())
                    .unwrap_or_default();
                self.nodes_for_global(&constraints)
                    .into_iter()
                    .filter(|(_, e)| *e == Eligibility::Eligible)
                    .map(|(n, _)| SlotKey::Node(n))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// An explanation over `snapshots` (the state's, or copies of them, by
    /// the same index) as the API shows it. Removed nodes are left out.
    fn plan_of(&self, e: Explanation, snapshots: &[NodeSnapshot]) -> PlacementPlan {
        let chosen = e.chosen.and_then(|i| snapshots.get(i));
        let nodes = e
            .nodes
            .into_iter()
            .filter(|&(i, _)| self.state.record(i).node.state() != NodeState::Removed)
            .filter_map(|(i, v)| {
                let node = snapshots.get(i)?;
                Some(self.node_verdict(i, node, v, e.strategy))
            })
            .collect();
        PlacementPlan {
            chosen_node_id: chosen.map(|n| n.id.to_string()).unwrap_or_default(),
            chosen_node_name: chosen.map(|n| n.name.clone()).unwrap_or_default(),
            nodes,
            unplaceable: e.unplaceable.map(|u| u.reason).unwrap_or_default(),
            strategy: e.strategy.as_str().to_owned(),
        }
    }

    /// Node `i`'s verdict as the API shows it. A node the scheduler only
    /// knows as "not ready" is named for what the engine knows of it.
    fn node_verdict(
        &self,
        i: usize,
        node: &NodeSnapshot,
        v: Verdict,
        strategy: Strategy,
    ) -> NodeVerdict {
        let mut out = NodeVerdict {
            node_id: node.id.to_string(),
            name: node.name.clone(),
            ..NodeVerdict::default()
        };
        match v {
            Verdict::Refused { filter, reason } => {
                out.reason = if filter == NodeReady.name() {
                    self.not_ready(i)
                } else {
                    reason
                };
                out.filter = filter.to_owned();
            }
            Verdict::Feasible { cost, sampled } => {
                out.feasible = true;
                out.score = cost.primary;
                out.tie_breaker = cost.secondary;
                out.siblings = cost.siblings;
                out.sampled = sampled;
                out.reason = score::describe(strategy, &cost);
                if !sampled {
                    out.reason
                        .push_str("; not in the sample the scheduler scored");
                }
            }
        }
        out
    }

    /// Why node `i` takes no tasks, in words.
    fn not_ready(&self, i: usize) -> String {
        let node = &self.state.record(i).node;
        match node.state() {
            NodeState::Down => "down: its worker is not heard from".to_owned(),
            NodeState::Removed => "removed".to_owned(),
            NodeState::Draining => "draining".to_owned(),
            _ if node.draining => "draining".to_owned(),
            _ => "its worker is not connected".to_owned(),
        }
    }
}

/// The scheduler's explanation for a task, bound to a node (`Some`; `None`
/// inside for a node no longer known) or not.
fn explain(
    scheduler: &Scheduler,
    demand: &Demand,
    snapshots: &[NodeSnapshot],
    pinned: Option<Option<usize>>,
) -> Explanation {
    match pinned {
        None => scheduler.explain(demand, snapshots),
        Some(i) => scheduler.explain_on(demand, snapshots, i.unwrap_or(usize::MAX)),
    }
}
