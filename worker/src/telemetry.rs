//! The worker's Prometheus metrics (`orch_worker_*`), registered once in the
//! registry [`Telemetry::new`] makes, which `orch_metrics::Endpoint` serves
//! on `Config::metrics_listen`.
//!
//! A [`Telemetry`] is a bundle of handles: cloning one shares the values.
//! The executor counts container starts, start failures, exits and the
//! containers running; the agent the session and the machine as its
//! heartbeats measure it ([`Telemetry::machine`], from the [`Meter`]'s
//! samples, so measuring costs nothing more). Each update is an atomic
//! add; this module decides nothing, does no I/O and reads no clock.
//!
//! [`Meter`]: crate::metrics::Meter

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use orch::v1::{NodeMetrics, Resources};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::RuntimeError;

/// A label set of one label.
type Label = [(&'static str, &'static str); 1];

/// A gauge of a measured, fractional value.
type FloatGauge = Gauge<f64, AtomicU64>;

/// How a container that ran came to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with code 0.
    Completed,
    /// It exited with another code.
    Failed,
    /// It was stopped, as the manager asked.
    Stopped,
}

/// Every metric of the worker; see the module documentation.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Containers started.
    pub starts: Counter,
    start_failures: [Counter; 3],
    exits: [Counter; 3],
    /// Containers running now (started or adopted, not yet ended).
    pub running: Gauge,
    /// 1 while the session to the manager is open, else 0.
    pub connected: Gauge,
    /// Sessions opened after the first: each one a reconnect.
    pub reconnects: Counter,
    capacity: [Gauge; 3],
    cpu_percent: FloatGauge,
    memory_used: Gauge,
    disk_free: Gauge,
    load_1m: FloatGauge,
    registry: Arc<Registry>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// The start failure reasons, as labelled.
const FAILURE_REASONS: [&str; 3] = ["pull", "start", "engine"];
/// The exit outcomes, as labelled.
const OUTCOMES: [&str; 3] = ["completed", "failed", "stopped"];
/// The capacity resources, as labelled.
const RESOURCES: [&str; 3] = ["milli_cpus", "memory_bytes", "disk_bytes"];

impl Telemetry {
    /// Every family, registered in a new registry under the prefix
    /// `orch_worker`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orch_worker");
        let starts = Counter::default();
        registry.register(
            "container_starts",
            "Containers started (created and started by the runtime)",
            starts.clone(),
        );
        let failures = Family::<Label, Counter>::default();
        registry.register(
            "container_start_failures",
            "Container starts that failed, by reason: pull (the image), start (create or start), engine (the engine unreachable)",
            failures.clone(),
        );
        let exits = Family::<Label, Counter>::default();
        registry.register(
            "container_exits",
            "Containers that ended, by outcome: completed (exit code 0), failed (another code), stopped (as asked)",
            exits.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "containers_running",
            "Task containers running on this node",
            running.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "session_connected",
            "1 while the session to the manager is open, else 0",
            connected.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "session_reconnects",
            "Sessions opened to the manager after the first one",
            reconnects.clone(),
        );
        let capacity = Family::<Label, Gauge>::default();
        registry.register(
            "capacity",
            "What this node offers to tasks, by resource (milli_cpus, memory_bytes, disk_bytes)",
            capacity.clone(),
        );
        let cpu_percent = FloatGauge::default();
        registry.register(
            "cpu_usage_percent",
            "Machine CPU use over the last heartbeat period, 0-100 percent of all cores",
            cpu_percent.clone(),
        );
        let memory_used = Gauge::default();
        registry.register_with_unit(
            "memory_used",
            "Machine memory in use",
            Unit::Bytes,
            memory_used.clone(),
        );
        let disk_free = Gauge::default();
        registry.register_with_unit(
            "disk_free",
            "Free disk where Docker keeps its data",
            Unit::Bytes,
            disk_free.clone(),
        );
        let load_1m = FloatGauge::default();
        registry.register(
            "load1",
            "The machine's 1-minute load average",
            load_1m.clone(),
        );
        Self {
            starts,
            start_failures: FAILURE_REASONS.map(|r| failures.get_or_create_owned(&[("reason", r)])),
            exits: OUTCOMES.map(|o| exits.get_or_create_owned(&[("outcome", o)])),
            running,
            connected,
            reconnects,
            capacity: RESOURCES.map(|r| capacity.get_or_create_owned(&[("resource", r)])),
            cpu_percent,
            memory_used,
            disk_free,
            load_1m,
            registry: Arc::new(registry),
        }
    }

    /// The registry every family is in, to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Counts a failed start by what failed.
    pub fn start_failed(&self, error: &RuntimeError) {
        let i = match error {
            RuntimeError::ImagePull { .. } => 0,
            RuntimeError::Start(_) => 1,
            RuntimeError::NotFound(_) | RuntimeError::Engine(_) => 2,
        };
        self.start_failures[i].inc();
    }

    /// Counts a container that ran and ended.
    pub fn exited(&self, outcome: Outcome) {
        self.exits[outcome as usize].inc();
    }

    /// The capacity this node registers with.
    pub fn capacity(&self, capacity: &Resources) {
        for (gauge, value) in self.capacity.iter().zip([
            capacity.milli_cpus,
            capacity.memory_bytes,
            capacity.disk_bytes,
        ]) {
            gauge.set(value);
        }
    }

    /// The machine as a heartbeat measured it.
    pub fn machine(&self, m: &NodeMetrics) {
        self.cpu_percent.set(m.cpu_percent);
        self.memory_used.set(m.memory_used_bytes);
        self.disk_free.set(m.disk_free_bytes);
        self.load_1m.set(m.load_1m);
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_and_failures_and_exits_count_by_label() {
        let t = Telemetry::new();
        t.start_failed(&RuntimeError::ImagePull {
            image: "x".into(),
            reason: "no".into(),
        });
        t.start_failed(&RuntimeError::Engine("gone".into()));
        t.exited(Outcome::Stopped);
        t.capacity(&Resources {
            milli_cpus: 2000,
            memory_bytes: 1 << 30,
            disk_bytes: 0,
        });
        t.machine(&NodeMetrics {
            cpu_percent: 12.5,
            ..Default::default()
        });
        let text = orch_metrics::render(&[t.registry()]);
        for line in [
            "# TYPE orch_worker_container_starts counter",
            "orch_worker_container_starts_total 0",
            "orch_worker_container_start_failures_total{reason=\"pull\"} 1",
            "orch_worker_container_start_failures_total{reason=\"start\"} 0",
            "orch_worker_container_start_failures_total{reason=\"engine\"} 1",
            "orch_worker_container_exits_total{outcome=\"stopped\"} 1",
            "orch_worker_container_exits_total{outcome=\"failed\"} 0",
            "orch_worker_containers_running 0",
            "orch_worker_session_connected 0",
            "orch_worker_session_reconnects_total 0",
            "orch_worker_capacity{resource=\"milli_cpus\"} 2000",
            "orch_worker_cpu_usage_percent 12.5",
            "# TYPE orch_worker_memory_used_bytes gauge",
            "# TYPE orch_worker_disk_free_bytes gauge",
            "# TYPE orch_worker_load1 gauge",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing from:\n{text}"
            );
        }
    }
}
