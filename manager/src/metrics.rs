//! The manager's Prometheus metrics: every family, registered once in the
//! registry [`Metrics::new`] makes, which `orch_metrics::Endpoint` serves.
//!
//! A [`Metrics`] is a bundle of handles: cloning one shares the values, so
//! the engine, the state, the committer's thread and the API each keep the
//! handles they update. An update is an atomic add, or a histogram
//! observation (which holds the histogram's own mutex for a few
//! instructions): no await, no I/O, so the engine stays as cheap under its
//! lock as it was, and a scrape reads the metrics without taking the
//! engine's lock. The counts by state are kept by
//! `State` as tasks and nodes change state ([`ByState`]), never recounted.
//!
//! This module decides nothing and reads no clock; durations are measured
//! by the callers (`clock::Stopwatch`, the committer's own timing).

use std::sync::Arc;
use std::time::Duration;

use orch::v1::{NodeState, TaskState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label set of one label.
type Label = [(&'static str, &'static str); 1];

/// Buckets of the time from a task's submission to its first `running`.
const SUBMIT_TO_RUNNING_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0,
];
/// Buckets of one placement decision: from 10 µs.
const SCHEDULING_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];
/// Buckets of one store commit (an fsync or more).
const COMMIT_BUCKETS: [f64; 13] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The node states counted, with their label values.
const NODE_STATES: [(NodeState, &str); 4] = [
    (NodeState::Ready, "ready"),
    (NodeState::Down, "down"),
    (NodeState::Draining, "draining"),
    (NodeState::Removed, "removed"),
];

/// A gauge per state of an enum, resolved once, indexed by the enum's
/// value: moving a count is two atomic adds.
#[derive(Debug, Clone, Default)]
pub struct ByState {
    gauges: Vec<Option<Gauge>>,
}

impl ByState {
    fn new(
        family: &Family<Label, Gauge>,
        states: impl IntoIterator<Item = (i32, &'static str)>,
    ) -> Self {
        let mut gauges = Vec::new();
        for (value, name) in states {
            let Ok(i) = usize::try_from(value) else {
                continue;
            };
            if gauges.len() <= i {
                gauges.resize(i + 1, None);
            }
            gauges[i] = Some(family.get_or_create_owned(&[("state", name)]));
        }
        Self { gauges }
    }

    fn gauge(&self, state: i32) -> Option<&Gauge> {
        usize::try_from(state)
            .ok()
            .and_then(|i| self.gauges.get(i))
            .and_then(Option::as_ref)
    }

    /// One more object in `state`.
    pub fn add(&self, state: i32) {
        if let Some(g) = self.gauge(state) {
            g.inc();
        }
    }

    /// One object moved from `from` to `to`.
    pub fn moved(&self, from: i32, to: i32) {
        if from == to {
            return;
        }
        if let Some(g) = self.gauge(from) {
            g.dec();
        }
        self.add(to);
    }

    /// How many objects are in `state`.
    pub fn get(&self, state: i32) -> i64 {
        self.gauge(state).map_or(0, Gauge::get)
    }
}

/// What the committer measures, on its own thread.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Seconds each commit took, whether it succeeded or failed.
    pub commit_seconds: Histogram,
    /// Writes in each committed transaction.
    pub batch_writes: Histogram,
    /// Commits that failed (each retry that fails counts).
    pub commit_failures: Counter,
}

impl Default for StoreMetrics {
    /// Handles in no registry (a committer nobody measures).
    fn default() -> Self {
        Self::new()
    }
}

impl StoreMetrics {
    fn new() -> Self {
        Self {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            batch_writes: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            commit_failures: Counter::default(),
        }
    }

    /// Records one commit of `writes` writes that took `took`.
    pub fn commit(&self, writes: usize, took: Duration, ok: bool) {
        self.commit_seconds.observe(took.as_secs_f64());
        if ok {
            // Exact up to 2^53 writes.
            self.batch_writes.observe(writes as f64);
        } else {
            self.commit_failures.inc();
        }
    }
}

/// What a `WatchEvents` stream counts.
#[derive(Debug, Clone, Default)]
pub struct WatchMetrics {
    /// Events sent to watchers.
    pub sent: Counter,
    /// Live events a watcher fell behind on, which it then read from the
    /// store instead.
    pub missed_live: Counter,
    /// Times a watcher fell behind the live events and was caught up from
    /// the store.
    pub caught_up: Counter,
    /// Watchers cut off because the events they needed were no longer kept.
    pub cut: Counter,
}

/// The placement decisions and how long they took.
#[derive(Debug, Clone)]
pub struct Placements {
    /// Tasks bound to a node.
    pub placed: Counter,
    /// Placement attempts that found no node (a pending task counts at each retry).
    pub failed: Counter,
    /// Seconds each successful decision took.
    pub placed_seconds: Histogram,
    /// Seconds each failed decision took.
    pub failed_seconds: Histogram,
}

impl Placements {
    /// Records one decision.
    pub fn decided(&self, placed: bool, took: Duration) {
        if placed {
            self.placed.inc();
            self.placed_seconds.observe(took.as_secs_f64());
        } else {
            self.failed.inc();
            self.failed_seconds.observe(took.as_secs_f64());
        }
    }
}

/// Every metric of the manager; see the module documentation.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Tasks by observed state, kept by `State`.
    pub tasks: ByState,
    /// Nodes by state, kept by `State`.
    pub nodes: ByState,
    /// Placement decisions.
    pub placements: Placements,
    /// Seconds from a task's submission to its first attempt reported running.
    pub submit_to_running: Histogram,
    /// What the committer measures.
    pub store: StoreMetrics,
    /// Worker sessions whose stream is open.
    pub sessions: Gauge,
    /// What `WatchEvents` streams count.
    pub watch: WatchMetrics,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, registered in a new registry under the prefix
    /// `orch_manager`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orch_manager");
        let tasks = Family::<Label, Gauge>::default();
        registry.register(
            "tasks",
            "Tasks by the observed state of their current attempt",
            tasks.clone(),
        );
        let nodes = Family::<Label, Gauge>::default();
        registry.register("nodes", "Nodes by state", nodes.clone());

        let scheduling =
            Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(SCHEDULING_BUCKETS)
            });
        registry.register_with_unit(
            "scheduling_duration",
            "Time the scheduler took to decide one placement, by result (placed or unplaceable)",
            Unit::Seconds,
            scheduling.clone(),
        );
        let placements = Placements {
            placed: Counter::default(),
            failed: Counter::default(),
            placed_seconds: scheduling.get_or_create_owned(&[("result", "placed")]),
            failed_seconds: scheduling.get_or_create_owned(&[("result", "unplaceable")]),
        };
        registry.register(
            "placements",
            "Tasks bound to a node by the scheduler",
            placements.placed.clone(),
        );
        registry.register(
            "placement_failures",
            "Placement attempts that found no node for the task (a pending task counts at each retry)",
            placements.failed.clone(),
        );

        let submit_to_running = Histogram::new(SUBMIT_TO_RUNNING_BUCKETS);
        registry.register_with_unit(
            "submit_to_running",
            "Time from a task's submission to its first attempt reported running",
            Unit::Seconds,
            submit_to_running.clone(),
        );

        let store = StoreMetrics::new();
        registry.register_with_unit(
            "store_commit_duration",
            "Time one store transaction took to commit (successful or not)",
            Unit::Seconds,
            store.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_writes",
            "Writes in one committed store transaction (the group commit's batch size)",
            store.batch_writes.clone(),
        );
        registry.register(
            "store_commit_failures",
            "Store commits that failed (each failed retry counts)",
            store.commit_failures.clone(),
        );

        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Worker sessions whose stream is open",
            sessions.clone(),
        );

        let watch = WatchMetrics::default();
        registry.register(
            "watch_events_sent",
            "Events sent to WatchEvents streams",
            watch.sent.clone(),
        );
        registry.register(
            "watch_events_missed_live",
            "Live events WatchEvents streams fell behind on and read from the store instead",
            watch.missed_live.clone(),
        );
        registry.register(
            "watch_catch_ups",
            "Times a WatchEvents stream fell behind the live events and was caught up from the store",
            watch.caught_up.clone(),
        );
        registry.register(
            "watchers_cut",
            "WatchEvents streams ended because the events they needed were no longer kept",
            watch.cut.clone(),
        );

        Self {
            tasks: ByState::new(
                &tasks,
                // `unspecified` is never held.
                orch::task_state::ALL
                    .into_iter()
                    .filter(|&s| s != TaskState::Unspecified)
                    .map(|s| (s as i32, orch::task_state::name(s))),
            ),
            nodes: ByState::new(&nodes, NODE_STATES.map(|(s, name)| (s as i32, name))),
            placements,
            submit_to_running,
            store,
            sessions,
            watch,
            registry: Arc::new(registry),
        }
    }

    /// The registry every family is in, to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Counts an open session until the returned guard is dropped.
    pub fn session_open(&self) -> SessionOpen {
        self.sessions.inc();
        SessionOpen(self.sessions.clone())
    }
}

/// The metrics of a manager on etcd that outlive its terms, served for its
/// whole life beside each term's [`Metrics`] while it leads: whether it
/// leads now, and how many terms it took up. Across the managers of a
/// cluster, `sum(orch_manager_leader)` is 1 while one leads.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// 1 while this manager leads, 0 while it follows.
    pub leader: Gauge,
    /// The terms this manager took up.
    pub terms: Counter,
    registry: Arc<Registry>,
}

impl ReplicaMetrics {
    /// The families, in a registry of their own.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orch_manager");
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this manager leads the cluster, 0 while it follows",
            leader.clone(),
        );
        let terms = Counter::default();
        registry.register(
            "terms",
            "Terms this manager took up as the cluster's leader",
            terms.clone(),
        );
        Self {
            leader,
            terms,
            registry: Arc::new(registry),
        }
    }

    /// The registry of these families, to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of one sample (its name with its labels, as the exposition
/// writes them) in the metrics' exposition, for tests.
#[cfg(test)]
pub(crate) fn sample(metrics: &Metrics, name: &str) -> Option<f64> {
    let text = orch_metrics::render(&[metrics.registry()]);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// An open session, counted in `orch_manager_sessions` while it lives.
#[derive(Debug)]
pub struct SessionOpen(Gauge);

impl Drop for SessionOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        orch_metrics::render(&[m.registry()])
    }

    #[test]
    fn every_family_is_exposed_with_help_and_every_state_from_zero() {
        let m = Metrics::new();
        let text = text(&m);
        for family in [
            "# TYPE orch_manager_tasks gauge",
            "# TYPE orch_manager_nodes gauge",
            "# TYPE orch_manager_placements counter",
            "# TYPE orch_manager_placement_failures counter",
            "# TYPE orch_manager_scheduling_duration_seconds histogram",
            "# TYPE orch_manager_submit_to_running_seconds histogram",
            "# TYPE orch_manager_store_commit_duration_seconds histogram",
            "# TYPE orch_manager_store_commit_writes histogram",
            "# TYPE orch_manager_store_commit_failures counter",
            "# TYPE orch_manager_sessions gauge",
            "# TYPE orch_manager_watch_events_sent counter",
            "# TYPE orch_manager_watch_events_missed_live counter",
            "# TYPE orch_manager_watchers_cut counter",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        assert!(
            text.contains("\norch_manager_tasks{state=\"lost\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\norch_manager_nodes{state=\"draining\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("unspecified"), "{text}");
        assert!(
            text.contains(
                "orch_manager_scheduling_duration_seconds_count{result=\"unplaceable\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn counts_by_state_move_and_a_session_counts_while_open() {
        let m = Metrics::new();
        let (pending, running) = (TaskState::Pending as i32, TaskState::Running as i32);
        m.tasks.add(pending);
        m.tasks.add(pending);
        m.tasks.moved(pending, running);
        m.tasks.moved(running, running);
        assert_eq!((m.tasks.get(pending), m.tasks.get(running)), (1, 1));
        // An unknown state is not counted, and breaks nothing.
        m.tasks.add(99);
        m.tasks.moved(-1, pending);
        assert_eq!(m.tasks.get(pending), 2);
        let open = m.session_open();
        assert!(text(&m).contains("\norch_manager_sessions 1\n"));
        drop(open);
        assert!(text(&m).contains("\norch_manager_sessions 0\n"));
        m.placements.decided(false, Duration::from_micros(30));
        let text = text(&m);
        assert!(
            text.contains("\norch_manager_placement_failures_total 1\n"),
            "{text}"
        );
        let bucket = |le: &str| {
            sample(
                &m,
                &format!(
                    "orch_manager_scheduling_duration_seconds_bucket{{le=\"{le}\",result=\"unplaceable\"}}"
                ),
            )
        };
        assert_eq!(
            (bucket("0.000025"), bucket("0.00005")),
            (Some(0.0), Some(1.0)),
            "{text}"
        );
    }
}
