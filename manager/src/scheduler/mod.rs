//! The scheduler: which node a task should run on.
//!
//! It owns the placement decision and nothing else. A decision is a pure
//! function of a task's [`Demand`] and a snapshot of the nodes
//! ([`NodeSnapshot`]), both handed in by the caller: the scheduler does no I/O,
//! reads no clock, takes no locks and never awaits. It may not touch the store,
//! the dispatcher or any worker; the manager applies the decision (reserves the
//! resources, records the task as scheduled, tells the worker).
//!
//! A decision runs a pipeline, as in swarmkit's and Nomad's schedulers:
//!
//! 1. **filters** ([`filter`]) drop the nodes that cannot take the task (not
//!    ready, node selector not matched, not enough cpu, memory or disk, a host
//!    port in use). Each filter can explain itself, so a task that fits nowhere
//!    carries a reason a person can act on ([`Unplaceable`]). Declared cpu and
//!    memory are never over-committed.
//! 2. a **scorer** ([`score`]) gives each feasible node a cost, by the
//!    configured [`Strategy`]; before any strategy's cost comes how many
//!    tasks of the task's group (its service) the node has already, so the
//!    replicas of a service spread over the nodes that can take them (in a
//!    large cluster, over the sampled ones);
//! 3. the **pick** takes the cheapest node, ties going to the lowest index, so
//!    a decision is deterministic for a given seed.
//!
//! At 10,000 nodes a decision must not cost O(nodes), so the ranking strategies
//! score a bounded sample of feasible nodes found from a random start (Nomad's
//! approach; see [`Scheduler::with_sample_size`]).
#![warn(missing_docs)]

pub mod filter;
pub mod score;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::str::FromStr;

use orch::v1::{self, Protocol, TaskSpec};
use orch::validate::normal_protocol;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use self::filter::Rejections;
use self::score::Cost;

/// Amounts of the resources orch schedules, in API units: millicpus (1000 =
/// one core), bytes of memory, bytes of disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicpus.
    pub milli_cpus: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Disk in bytes.
    pub disk_bytes: i64,
}

impl Resources {
    /// Whether these amounts fit in `free`, resource by resource.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.milli_cpus <= free.milli_cpus
            && self.memory_bytes <= free.memory_bytes
            && self.disk_bytes <= free.disk_bytes
    }
}

// The arithmetic saturates: the amounts come from the network and from sums of
// many tasks, and a wrapped sum would make a full node look empty.
impl Add for Resources {
    type Output = Resources;
    fn add(self, rhs: Resources) -> Resources {
        Resources {
            milli_cpus: self.milli_cpus.saturating_add(rhs.milli_cpus),
            memory_bytes: self.memory_bytes.saturating_add(rhs.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(rhs.disk_bytes),
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, rhs: Resources) -> Resources {
        Resources {
            milli_cpus: self.milli_cpus.saturating_sub(rhs.milli_cpus),
            memory_bytes: self.memory_bytes.saturating_sub(rhs.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(rhs.disk_bytes),
        }
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, rhs: Resources) {
        *self = *self + rhs;
    }
}

impl SubAssign for Resources {
    fn sub_assign(&mut self, rhs: Resources) {
        *self = *self - rhs;
    }
}

impl From<&v1::Resources> for Resources {
    fn from(r: &v1::Resources) -> Self {
        Resources {
            milli_cpus: r.milli_cpus,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
        }
    }
}

impl From<v1::Resources> for Resources {
    fn from(r: v1::Resources) -> Self {
        Resources::from(&r)
    }
}

impl From<Resources> for v1::Resources {
    fn from(r: Resources) -> Self {
        v1::Resources {
            milli_cpus: r.milli_cpus,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
        }
    }
}

/// One node as the scheduler sees it: a snapshot, owned by the caller.
///
/// The scheduler only reads it; after a placement the caller updates
/// `allocated`, `task_count` and `ports_in_use` before the next decision.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// The node's id.
    pub id: uuid::Uuid,
    /// The node's name, for people.
    pub name: String,
    /// Whether the node takes new tasks: READY (neither down nor draining)
    /// and its worker connected.
    pub ready: bool,
    /// The node's labels, matched by task node selectors.
    pub labels: HashMap<String, String>,
    /// What the node offers to tasks.
    pub capacity: Resources,
    /// The sum of what the placed, unfinished tasks on the node reserve.
    pub allocated: Resources,
    /// How many placed, unfinished tasks the node has.
    pub task_count: u32,
    /// Host ports in use, with the protocol normalised (TCP for unset).
    pub ports_in_use: HashSet<(u32, Protocol)>,
    /// CPU use from the last heartbeat, 0-100 percent over all cores.
    pub cpu_percent: f64,
    /// Memory in use from the last heartbeat, in bytes.
    pub memory_used_bytes: i64,
    /// Total memory from the last heartbeat, in bytes; 0 before the first
    /// heartbeat, when scorers fall back to `capacity.memory_bytes`.
    pub memory_total_bytes: i64,
    /// How many placed, unfinished tasks of each group (a service) the node
    /// has; groups with none are absent.
    pub groups: HashMap<u32, u32>,
}

impl NodeSnapshot {
    /// A node with nothing placed on it, not yet taking tasks.
    pub fn new(
        id: uuid::Uuid,
        name: String,
        labels: HashMap<String, String>,
        capacity: Resources,
    ) -> Self {
        NodeSnapshot {
            id,
            name,
            ready: false,
            labels,
            capacity,
            allocated: Resources::default(),
            task_count: 0,
            ports_in_use: HashSet::new(),
            cpu_percent: 0.0,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            groups: HashMap::new(),
        }
    }

    /// How many tasks of `demand`'s group the node has (0 without a group).
    pub fn siblings(&self, demand: &Demand) -> u32 {
        demand
            .group
            .and_then(|g| self.groups.get(&g).copied())
            .unwrap_or(0)
    }

    /// Records a placed task's reservation on this node: its resources,
    /// one more task and its host ports. The scheduler never calls it; the
    /// manager does, right after a placement and when it reloads its tasks.
    pub fn reserve(&mut self, demand: &Demand) {
        self.allocated += demand.resources;
        self.task_count += 1;
        self.ports_in_use.extend(demand.ports.iter().copied());
        if let Some(g) = demand.group {
            *self.groups.entry(g).or_insert(0) += 1;
        }
    }

    /// Gives back what [`NodeSnapshot::reserve`] took for a task that ended
    /// or moved away. The caller releases each reservation once.
    pub fn release(&mut self, demand: &Demand) {
        self.allocated -= demand.resources;
        self.task_count = self.task_count.saturating_sub(1);
        for p in &demand.ports {
            self.ports_in_use.remove(p);
        }
        if let Some(g) = demand.group
            && let Some(n) = self.groups.get_mut(&g)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.groups.remove(&g);
            }
        }
    }
}

/// What a task needs from a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// What the task reserves. A zero amount means best effort: it reserves
    /// nothing and fits any node, however full.
    pub resources: Resources,
    /// Host ports the task publishes, with the protocol normalised.
    pub ports: Vec<(u32, Protocol)>,
    /// Labels a node must carry, each with the same value.
    pub node_selector: HashMap<String, String>,
    /// The group the task belongs to (its service, numbered by the
    /// manager), whose tasks spread: the ranking strategies prefer the nodes
    /// with the fewest tasks of the group above all else. `None` for a task
    /// on its own.
    pub group: Option<u32>,
}

impl Demand {
    /// The demand of a task spec. Unset cpu, memory or disk count as 0 (best
    /// effort: the task reserves nothing); port protocols are normalised.
    ///
    /// The spec is expected to be validated already; a protocol number that
    /// validation would refuse is read as TCP rather than failing here.
    pub fn of(spec: &TaskSpec) -> Self {
        Demand {
            resources: Resources {
                milli_cpus: spec.milli_cpus.unwrap_or(0),
                memory_bytes: spec.memory_bytes.unwrap_or(0),
                disk_bytes: spec.disk_bytes.unwrap_or(0),
            },
            ports: spec
                .ports
                .iter()
                .map(|p| {
                    let protocol = Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp);
                    (p.host_port, normal_protocol(protocol))
                })
                .collect(),
            node_selector: spec.node_selector.clone(),
            group: None,
        }
    }
}

/// How the scheduler ranks the nodes that can take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first feasible node after the previous choice, wrapping.
    RoundRobin,
    /// E-PVM opportunity cost: the node whose load grows least.
    Epvm,
    /// Bin-packing: the node left with the least free capacity.
    BestFit,
    /// The node with the fewest tasks, then the most free capacity.
    #[default]
    Spread,
}

impl Strategy {
    /// Every strategy, in the order the CLI lists them.
    pub const ALL: [Strategy; 4] = [
        Strategy::RoundRobin,
        Strategy::Epvm,
        Strategy::BestFit,
        Strategy::Spread,
    ];

    /// The CLI word for the strategy, as in `--scheduler best-fit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Epvm => "epvm",
            Strategy::BestFit => "best-fit",
            Strategy::Spread => "spread",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no [`Strategy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler {word:?}: expected one of round-robin, epvm, best-fit, spread")]
pub struct UnknownStrategy {
    /// The word given.
    pub word: String,
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownStrategy {
                word: word.to_owned(),
            })
    }
}

/// Why a task fits on no node, for people, e.g. "no node fits: insufficient
/// memory on 2 nodes, host port 8080/tcp in use on 1 node".
///
/// The manager keeps the task pending with this as its message and tries
/// again when the nodes change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unplaceable {
    /// The sentence shown to people.
    pub reason: String,
}

/// How many feasible nodes the ranking strategies score when the cluster is
/// larger than that. Nomad finds a handful enough; 32 keeps the choice good
/// while a decision stays cheap at any cluster size.
pub const DEFAULT_SAMPLE_SIZE: usize = 32;

/// The seed of [`Scheduler::new`]. Fixed, because the scheduler reads no
/// entropy source (that would be I/O); the random start only has to spread
/// the sampled walks over the cluster, not to be unpredictable.
const DEFAULT_SEED: u64 = 0x6f72_6368_7363_6864;

/// Places tasks on nodes. Holds the little state a decision needs between
/// calls: the round-robin cursor and the sampling RNG.
#[derive(Debug, Clone)]
pub struct Scheduler {
    strategy: Strategy,
    /// Where round-robin starts looking: one past its previous choice. An
    /// index, so it only approximates fairness when the node list changes
    /// between calls, which is all round-robin promises.
    cursor: usize,
    /// How many feasible nodes the ranking strategies score, at most.
    sample_size: usize,
    /// Picks where a sampled walk starts.
    rng: SmallRng,
}

impl Scheduler {
    /// A scheduler with `strategy`, the default sample size and a fixed seed.
    pub fn new(strategy: Strategy) -> Self {
        Self::with_seed(strategy, DEFAULT_SEED)
    }

    /// A scheduler whose sampling follows `seed`, for deterministic tests.
    pub fn with_seed(strategy: Strategy, seed: u64) -> Self {
        Scheduler {
            strategy,
            cursor: 0,
            sample_size: DEFAULT_SAMPLE_SIZE,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Scores at most `n` feasible nodes per decision (at least 1) when the
    /// cluster has more than `n` nodes. Round-robin ignores it: it stops at
    /// the first feasible node anyway.
    pub fn with_sample_size(mut self, n: usize) -> Self {
        self.sample_size = n.max(1);
        self
    }

    /// The configured strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Chooses a node for a task needing `demand`, returning its index in
    /// `nodes`. The caller then reserves the task's resources on that node
    /// in its own state before the next call.
    ///
    /// # Errors
    ///
    /// [`Unplaceable`] when no node can take the task; its reason counts the
    /// nodes rejected by each filter.
    pub fn place(&mut self, demand: &Demand, nodes: &[NodeSnapshot]) -> Result<usize, Unplaceable> {
        self.decide(demand, nodes, |_| {})
    }

    /// What [`Scheduler::place`] would decide now, and why, for every node:
    /// the first filter that refuses it, or its cost. Nothing changes: the
    /// decision is made by a copy of the scheduler (its round-robin cursor
    /// and sampling RNG as they are), so `chosen` is the node the next
    /// `place` with the same nodes chooses, and that `place` is not moved.
    ///
    /// Every feasible node is scored, but in a cluster larger than the
    /// sample size the choice is, as `place`'s, the best of the sampled
    /// nodes only: those have `sampled` set, and a node outside the sample
    /// may cost less than the chosen one.
    pub fn explain(&self, demand: &Demand, nodes: &[NodeSnapshot]) -> Explanation {
        let mut copy = self.clone();
        let every_feasible_scored =
            self.strategy == Strategy::RoundRobin || nodes.len() <= self.sample_size;
        let mut sampled = vec![every_feasible_scored; nodes.len()];
        let decided = copy.decide(demand, nodes, |i| {
            if let Some(s) = sampled.get_mut(i) {
                *s = true;
            }
        });
        let verdicts = nodes
            .iter()
            .zip(sampled)
            .enumerate()
            .map(|(i, (node, sampled))| (i, self.verdict(demand, node, sampled)))
            .collect();
        Explanation {
            strategy: self.strategy,
            chosen: decided.as_ref().ok().copied(),
            nodes: verdicts,
            unplaceable: decided.err(),
        }
    }

    /// As [`Scheduler::explain`] for a task bound to node `i` (what
    /// [`Scheduler::check`] decides): that node's verdict alone.
    pub fn explain_on(&self, demand: &Demand, nodes: &[NodeSnapshot], i: usize) -> Explanation {
        let Some(node) = nodes.get(i) else {
            return Explanation {
                strategy: self.strategy,
                chosen: None,
                nodes: Vec::new(),
                unplaceable: Some(Unplaceable {
                    reason: "its node is no longer known".to_owned(),
                }),
            };
        };
        let checked = self.check(demand, node);
        Explanation {
            strategy: self.strategy,
            chosen: checked.is_ok().then_some(i),
            nodes: vec![(i, self.verdict(demand, node, true))],
            unplaceable: checked.err(),
        }
    }

    /// One node's verdict: the first filter refusing it, or its cost.
    fn verdict(&self, demand: &Demand, node: &NodeSnapshot, sampled: bool) -> Verdict {
        match filter::first_rejection(demand, node).and_then(|f| filter::FILTERS.get(f)) {
            Some(f) => Verdict::Refused {
                filter: f.name(),
                reason: f.refusal(demand, node),
            },
            None => Verdict::Feasible {
                cost: score::cost(self.strategy, demand, node),
                sampled,
            },
        }
    }

    /// The decision of [`Scheduler::place`]; `scored` is told the index of
    /// every feasible node the decision scores.
    fn decide(
        &mut self,
        demand: &Demand,
        nodes: &[NodeSnapshot],
        scored: impl FnMut(usize),
    ) -> Result<usize, Unplaceable> {
        if nodes.is_empty() {
            return Err(Unplaceable {
                reason: "no nodes are registered".to_owned(),
            });
        }
        let mut rejections = Rejections::default();
        let chosen = match self.strategy {
            Strategy::RoundRobin => self.round_robin(demand, nodes, &mut rejections),
            ranked => self.ranked(ranked, demand, nodes, &mut rejections, scored),
        };
        chosen.ok_or_else(|| rejections.unplaceable(demand, nodes.len()))
    }

    /// Whether one given node can take a task needing `demand`: the filters
    /// alone, with no ranking and no effect on later decisions. For a task
    /// bound to its node (a global service's).
    ///
    /// # Errors
    ///
    /// [`Unplaceable`] naming the filter that refused the node.
    pub fn check(&self, demand: &Demand, node: &NodeSnapshot) -> Result<(), Unplaceable> {
        match filter::first_rejection(demand, node) {
            None => Ok(()),
            Some(f) => {
                let mut rejections = Rejections::default();
                rejections.count(f);
                Err(rejections.unplaceable(demand, 1))
            }
        }
    }

    /// The first feasible node at or after the cursor, wrapping.
    fn round_robin(
        &mut self,
        demand: &Demand,
        nodes: &[NodeSnapshot],
        rejections: &mut Rejections,
    ) -> Option<usize> {
        let start = self.cursor % nodes.len();
        for (i, node) in walk(nodes, start) {
            match filter::first_rejection(demand, node) {
                Some(filter) => rejections.count(filter),
                None => {
                    self.cursor = i + 1;
                    return Some(i);
                }
            }
        }
        None
    }

    /// The cheapest feasible node by `strategy`'s cost, among all feasible
    /// nodes in a small cluster or a sample of them in a large one.
    fn ranked(
        &mut self,
        strategy: Strategy,
        demand: &Demand,
        nodes: &[NodeSnapshot],
        rejections: &mut Rejections,
        mut scored: impl FnMut(usize),
    ) -> Option<usize> {
        // In a large cluster, start at a random node so that consecutive
        // decisions sample different parts of it, and stop once enough
        // feasible nodes are scored. The walk still goes all the way round
        // when feasible nodes are rare, so a task is refused only if no node
        // at all fits, and then every node is counted in the explanation.
        let (start, wanted) = if nodes.len() > self.sample_size {
            (self.rng.random_range(0..nodes.len()), self.sample_size)
        } else {
            (0, nodes.len())
        };
        let mut best: Option<(Cost, usize)> = None;
        let mut feasible = 0;
        for (i, node) in walk(nodes, start) {
            if let Some(filter) = filter::first_rejection(demand, node) {
                rejections.count(filter);
                continue;
            }
            let cost = score::cost(strategy, demand, node);
            scored(i);
            if best.is_none_or(|(best_cost, best_i)| cost.better_than(&best_cost, i, best_i)) {
                best = Some((cost, i));
            }
            feasible += 1;
            if feasible == wanted {
                break;
            }
        }
        best.map(|(_, i)| i)
    }
}

/// What [`Scheduler::explain`] found: the node `place` would choose, and
/// every node's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The strategy that gave the costs.
    pub strategy: Strategy,
    /// The index of the node `place` would choose, if one fits.
    pub chosen: Option<usize>,
    /// Each node's index and verdict, in index order.
    pub nodes: Vec<(usize, Verdict)>,
    /// Why no node fits (the reason `place` gives), when none does.
    pub unplaceable: Option<Unplaceable>,
}

/// One node's verdict for a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A filter refused the node: the first one of [`filter::FILTERS`] that
    /// did.
    Refused {
        /// The filter's name ([`filter::Filter::name`]).
        filter: &'static str,
        /// Why, for this node ([`filter::Filter::refusal`]).
        reason: String,
    },
    /// The node can take the task.
    Feasible {
        /// Its cost by the strategy in force (lower is better).
        cost: Cost,
        /// Whether the decision scored it: false only for a node outside
        /// the sample of a large cluster.
        sampled: bool,
    },
}

/// Every node once with its index, from `start`, wrapping round to it.
fn walk(nodes: &[NodeSnapshot], start: usize) -> impl Iterator<Item = (usize, &NodeSnapshot)> {
    let all = nodes.iter().enumerate();
    all.clone().skip(start).chain(all.take(start))
}

#[cfg(test)]
mod tests;
