//! Filters: the nodes that cannot take a task, and why (swarmkit's
//! `filter.go`).
//!
//! Each filter is a cheap check of one rule over a [`NodeSnapshot`], with an
//! explanation for people. They run in [`FILTERS`] order and the first filter
//! that rejects a node takes it, so a node is counted once, by its most basic
//! problem (a node that is down is not also reported as full). Nothing here
//! allocates except the explanation, which is built only when a task fits
//! nowhere.

use orch::quantity::{format_bytes, format_milli_cpus};
use orch::v1::Protocol;
use orch::validate::normal_protocol;

use super::{Demand, NodeSnapshot, Resources, Unplaceable};

/// One rule a node must pass to take a task.
pub trait Filter {
    /// Whether `node` passes the rule for a task needing `demand`.
    fn check(&self, demand: &Demand, node: &NodeSnapshot) -> bool;

    /// Why `nodes` nodes (at least one) failed the rule, for people, as a
    /// phrase that names the count, e.g. "insufficient memory on 2 nodes".
    fn explain(&self, demand: &Demand, nodes: usize) -> String;

    /// The filter's name, as a placement plan shows it (`Fits`).
    fn name(&self) -> &'static str;

    /// Why this one `node` failed the rule, for people, with the numbers
    /// that decided ("needs 2 cpus, 1.5 free"). Only called for a node that
    /// failed it.
    fn refusal(&self, demand: &Demand, node: &NodeSnapshot) -> String;
}

/// The node takes new tasks: READY (neither down nor draining) and connected.
#[derive(Debug, Clone, Copy)]
pub struct NodeReady;

impl Filter for NodeReady {
    fn check(&self, _demand: &Demand, node: &NodeSnapshot) -> bool {
        node.ready
    }

    fn explain(&self, _demand: &Demand, nodes: usize) -> String {
        // The snapshot only says "not ready", so name every cause.
        format!("{} down, draining or disconnected", count(nodes))
    }

    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn refusal(&self, _demand: &Demand, _node: &NodeSnapshot) -> String {
        "not ready: down, draining or disconnected".to_owned()
    }
}

/// The node carries every label of the task's node selector, with the same value.
#[derive(Debug, Clone, Copy)]
pub struct NodeSelector;

impl Filter for NodeSelector {
    fn check(&self, demand: &Demand, node: &NodeSnapshot) -> bool {
        demand
            .node_selector
            .iter()
            .all(|(key, value)| node.labels.get(key) == Some(value))
    }

    fn explain(&self, demand: &Demand, nodes: usize) -> String {
        // Sorted, so that the same task always gets the same message.
        let mut pairs: Vec<String> = demand
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.sort_unstable();
        format!(
            "node selector {} not matched on {}",
            pairs.join(","),
            count(nodes)
        )
    }

    fn name(&self) -> &'static str {
        "NodeSelector"
    }

    fn refusal(&self, demand: &Demand, node: &NodeSnapshot) -> String {
        // Sorted, as in `explain`.
        let mut missed: Vec<String> = demand
            .node_selector
            .iter()
            .filter(|&(key, value)| node.labels.get(key) != Some(value))
            .map(|(key, value)| match node.labels.get(key) {
                Some(has) => format!("{key}={value} (the node has {key}={has})"),
                None => format!("{key}={value} (the node has no {key} label)"),
            })
            .collect();
        missed.sort_unstable();
        format!("node selector not matched: {}", missed.join(", "))
    }
}

/// A resource a task can reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU, in millicpus.
    Cpu,
    /// Memory, in bytes.
    Memory,
    /// Disk, in bytes.
    Disk,
}

impl Resource {
    /// The amount of this resource in `r`.
    pub fn of(self, r: &Resources) -> i64 {
        match self {
            Resource::Cpu => r.milli_cpus,
            Resource::Memory => r.memory_bytes,
            Resource::Disk => r.disk_bytes,
        }
    }

    /// The resource's name, for people.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Disk => "disk",
        }
    }
}

/// The node has room for what the task reserves of one resource:
/// `allocated + demand <= capacity`. One filter per resource, so that the
/// explanation says which one is short.
#[derive(Debug, Clone, Copy)]
pub struct Fits(pub Resource);

impl Filter for Fits {
    fn check(&self, demand: &Demand, node: &NodeSnapshot) -> bool {
        let need = self.0.of(&demand.resources);
        // A best-effort task reserves nothing, so it cannot over-commit the
        // node, even one already full (or over-full after its capacity shrank).
        need <= 0 || self.0.of(&node.allocated).saturating_add(need) <= self.0.of(&node.capacity)
    }

    fn explain(&self, _demand: &Demand, nodes: usize) -> String {
        format!("insufficient {} on {}", self.0.name(), count(nodes))
    }

    fn name(&self) -> &'static str {
        "Fits"
    }

    fn refusal(&self, demand: &Demand, node: &NodeSnapshot) -> String {
        let need = self.0.of(&demand.resources);
        let free = self
            .0
            .of(&node.capacity)
            .saturating_sub(self.0.of(&node.allocated))
            .max(0);
        match self.0 {
            Resource::Cpu => format!(
                "needs {} cpus, {} free",
                format_milli_cpus(need),
                format_milli_cpus(free)
            ),
            resource => format!(
                "needs {} of {}, {} free",
                format_bytes(need),
                resource.name(),
                format_bytes(free)
            ),
        }
    }
}

/// None of the task's host ports is in use on the node with the same protocol.
#[derive(Debug, Clone, Copy)]
pub struct HostPortsFree;

impl Filter for HostPortsFree {
    fn check(&self, demand: &Demand, node: &NodeSnapshot) -> bool {
        demand.ports.iter().all(|&(port, protocol)| {
            !node
                .ports_in_use
                .contains(&(port, normal_protocol(protocol)))
        })
    }

    fn explain(&self, demand: &Demand, nodes: usize) -> String {
        // Which of several ports is taken may differ from node to node, and
        // finding out would cost a pass per port: list them all with "or".
        let ports: Vec<String> = demand
            .ports
            .iter()
            .map(|&(port, protocol)| format!("{port}/{}", protocol_name(protocol)))
            .collect();
        format!(
            "host port {} in use on {}",
            ports.join(" or "),
            count(nodes)
        )
    }

    fn name(&self) -> &'static str {
        "HostPortsFree"
    }

    fn refusal(&self, demand: &Demand, node: &NodeSnapshot) -> String {
        let taken: Vec<String> = demand
            .ports
            .iter()
            .filter(|&&(port, protocol)| {
                node.ports_in_use
                    .contains(&(port, normal_protocol(protocol)))
            })
            .map(|&(port, protocol)| format!("{port}/{}", protocol_name(protocol)))
            .collect();
        format!("host port {} in use", taken.join(", "))
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match normal_protocol(protocol) {
        Protocol::Udp => "udp",
        _ => "tcp",
    }
}

/// Every filter, in the order they run: the most basic problems first.
pub const FILTERS: [&dyn Filter; 6] = [
    &NodeReady,
    &NodeSelector,
    &Fits(Resource::Cpu),
    &Fits(Resource::Memory),
    &Fits(Resource::Disk),
    &HostPortsFree,
];

/// Where [`NodeReady`] is in [`FILTERS`].
const NODE_READY: usize = 0;

/// The index in [`FILTERS`] of the first filter that rejects `node`, or
/// `None` if the node can take the task.
pub fn first_rejection(demand: &Demand, node: &NodeSnapshot) -> Option<usize> {
    FILTERS.iter().position(|f| !f.check(demand, node))
}

/// How many nodes each filter rejected during one decision.
#[derive(Debug, Clone, Default)]
pub struct Rejections {
    counts: [usize; FILTERS.len()],
}

impl Rejections {
    /// Counts one node rejected by `FILTERS[filter]`.
    pub fn count(&mut self, filter: usize) {
        if let Some(c) = self.counts.get_mut(filter) {
            *c += 1;
        }
    }

    /// The explanation when none of `nodes` nodes (at least one) can take the
    /// task: the filters' counts, most frequent first.
    pub fn unplaceable(&self, demand: &Demand, nodes: usize) -> Unplaceable {
        if self.counts[NODE_READY] == nodes {
            return Unplaceable {
                reason: format!("no node is ready ({})", NodeReady.explain(demand, nodes)),
            };
        }
        let mut counted: Vec<(usize, &dyn Filter)> = self
            .counts
            .iter()
            .zip(FILTERS)
            .filter(|&(&n, _)| n > 0)
            .map(|(&n, f)| (n, f))
            .collect();
        // Stable: on a tie, the filters keep their running order.
        counted.sort_by_key(|&(n, _)| std::cmp::Reverse(n));
        let parts: Vec<String> = counted
            .into_iter()
            .map(|(n, f)| f.explain(demand, n))
            .collect();
        Unplaceable {
            reason: format!("no node fits: {}", parts.join(", ")),
        }
    }
}

/// "1 node", "2 nodes".
fn count(nodes: usize) -> String {
    if nodes == 1 {
        "1 node".to_owned()
    } else {
        format!("{nodes} nodes")
    }
}
