//! Scorers: the cost of putting a task on a feasible node, by strategy.
//! The lowest cost wins.
//!
//! Scorers see only nodes that passed every filter, so they may assume the
//! task's reservations fit. They are plain arithmetic over the snapshot: no
//! allocation, no state. Round-robin has no cost; the scheduler handles it.

use std::cmp::Ordering;

use super::{Demand, NodeSnapshot, Strategy};

/// Lieb's square-ice constant, 1.53960071783900203869..., the base of the
/// book's E-PVM exponentials (written to the precision an `f64` holds).
pub const EPVM_BASE: f64 = 1.539_600_717_839_002;

/// The book's E-PVM `max_jobs`: the task count at which the job term has grown
/// by a factor of [`EPVM_BASE`].
pub const EPVM_MAX_JOBS: f64 = 4.0;

/// A node's cost for a task, compared lexicographically: `siblings` first,
/// then `primary`, then `secondary`. Lower is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// How many tasks of the task's group the node has: replicas of one
    /// service spread before any strategy counts.
    pub siblings: u32,
    /// The strategy's main criterion.
    pub primary: f64,
    /// The tie-breaker.
    pub secondary: f64,
}

impl Cost {
    /// Whether this cost, of the node at index `i`, beats `other`, of the node
    /// at `other_i`. Equal costs go to the lower index, so a decision does not
    /// depend on the order the nodes were visited in. `total_cmp` keeps the
    /// order total even if a bad heartbeat smuggled in a NaN.
    pub fn better_than(&self, other: &Cost, i: usize, other_i: usize) -> bool {
        self.siblings
            .cmp(&other.siblings)
            .then(self.primary.total_cmp(&other.primary))
            .then(self.secondary.total_cmp(&other.secondary))
            .then(i.cmp(&other_i))
            == Ordering::Less
    }
}

/// The cost of placing a task needing `demand` on `node`, by `strategy`.
/// Round-robin does not rank nodes: every node costs the same.
pub fn cost(strategy: Strategy, demand: &Demand, node: &NodeSnapshot) -> Cost {
    let (primary, secondary) = match strategy {
        Strategy::RoundRobin => (0.0, 0.0),
        Strategy::Epvm => (epvm(demand, node), 0.0),
        Strategy::BestFit => (free_after(demand, node), 0.0),
        // Fewest tasks first; among equals, the most free capacity.
        Strategy::Spread => (f64::from(node.task_count), -free_after(demand, node)),
    };
    Cost {
        siblings: node.siblings(demand),
        primary,
        secondary,
    }
}

/// E-PVM's opportunity cost (Amir et al., "An opportunity cost approach for
/// job assignment in a scalable computing cluster", as in the book): how much
/// an exponential of the node's memory and cpu load grows if the task is
/// placed there. Exponentials make a nearly full node much dearer than a
/// half-full one, so load evens out.
pub fn epvm(demand: &Demand, node: &NodeSnapshot) -> f64 {
    let l = EPVM_BASE;
    let tasks = f64::from(node.task_count);
    let jobs_before = l.powf(tasks / EPVM_MAX_JOBS);
    let jobs_after = l.powf((tasks + 1.0) / EPVM_MAX_JOBS);

    // Memory: what is in use plus what placed tasks reserve and may not use
    // yet, as a fraction of the machine's memory (the capacity until the first
    // heartbeat reports it).
    let total = if node.memory_total_bytes > 0 {
        node.memory_total_bytes
    } else {
        node.capacity.memory_bytes
    };
    let (mem_pct, new_mem_pct) = if total > 0 {
        let total = total as f64;
        let used = node
            .memory_used_bytes
            .saturating_add(node.allocated.memory_bytes) as f64;
        let pct = used / total;
        (pct, pct + demand.resources.memory_bytes as f64 / total)
    } else {
        (0.0, 0.0)
    };
    let mem_cost = l.powf(new_mem_pct) + jobs_after - l.powf(mem_pct) - jobs_before;

    // CPU. The book publishes
    //     cpu_cost = L^cpu_load + L^((tasks+1)/max_jobs) - L^cpu_load - L^(tasks/max_jobs)
    // where the two cpu_load terms cancel, so cpu never counts and a busy node
    // costs the same as an idle one. The paper means the growth of the load,
    // so, as for memory, the first term uses the load after placing the task:
    // cpu_load + task_cpu / node_cpus.
    let cpu_percent = if node.cpu_percent.is_finite() {
        node.cpu_percent.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let cpu_load = (cpu_percent / 100.0) / 2f64.powf(0.8);
    let node_cpus = node.capacity.milli_cpus as f64 / 1000.0;
    let task_cpus = demand.resources.milli_cpus as f64 / 1000.0;
    // A best-effort task adds no load we can predict; the filters keep tasks
    // that reserve cpu off nodes without any.
    let task_load = if task_cpus > 0.0 && node_cpus > 0.0 {
        task_cpus / node_cpus
    } else {
        0.0
    };
    let cpu_cost = l.powf(cpu_load + task_load) + jobs_after - l.powf(cpu_load) - jobs_before;

    mem_cost + cpu_cost
}

/// The node's free cpu and memory after placing the task, each as a fraction
/// of its capacity, added: 0 for a node left full, 2 for an empty node and a
/// best-effort task. Normalising lets a core and a gibibyte weigh the same
/// whatever the node's size.
pub fn free_after(demand: &Demand, node: &NodeSnapshot) -> f64 {
    let used = node.allocated + demand.resources;
    free_fraction(node.capacity.milli_cpus, used.milli_cpus)
        + free_fraction(node.capacity.memory_bytes, used.memory_bytes)
}

/// The free fraction of `capacity` once `used` is taken; a node without any
/// of the resource has none free.
fn free_fraction(capacity: i64, used: i64) -> f64 {
    if capacity <= 0 {
        return 0.0;
    }
    (capacity.saturating_sub(used) as f64 / capacity as f64).max(0.0)
}

/// What a feasible node's cost counts, for people, e.g. "3 tasks on the
/// node (fewest wins), then 1.75 of cpu and memory free after (most wins)".
pub fn describe(strategy: Strategy, cost: &Cost) -> String {
    let what = match strategy {
        Strategy::RoundRobin => {
            "round-robin: the first feasible node after the previous choice".to_owned()
        }
        Strategy::Epvm => format!("E-PVM: the load grows by {:.3}", cost.primary),
        Strategy::BestFit => format!(
            "best-fit: {:.3} of cpu and memory left free after (least wins)",
            cost.primary
        ),
        Strategy::Spread => format!(
            "spread: {} {} on the node (fewest wins), then {:.3} of cpu and memory free after (most wins)",
            cost.primary,
            if (cost.primary - 1.0).abs() < f64::EPSILON {
                "task"
            } else {
                "tasks"
            },
            -cost.secondary
        ),
    };
    match cost.siblings {
        0 => what,
        1 => format!("1 task of its service already here; {what}"),
        n => format!("{n} tasks of its service already here; {what}"),
    }
}
