//! The orch worker: registers with the manager, keeps one session stream to
//! it, and runs the tasks it is assigned as containers.
//!
//! Modules:
//! - [`agent`]: registration, the session stream, heartbeats, reconnects;
//! - [`executor`]: the lifecycle of each task attempt on this node;
//! - [`health`]: health probes of running containers, for the executor;
//! - [`identity`]: the node certificate: joining, keeping, renewing;
//! - [`logs`]: streams a container's output up for the manager's log requests;
//! - [`retention`]: how long ended attempts' containers (and output) are kept;
//! - [`runtime`]: the container engine behind a trait (Docker via bollard);
//! - [`metrics`]: machine capacity and usage (sysinfo);
//! - [`telemetry`]: the worker's Prometheus metrics, served on
//!   `Config::metrics_listen`.

pub mod agent;
pub mod executor;
pub mod health;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod retention;
pub mod runtime;
pub mod telemetry;

pub use agent::{Config, Error, run, run_measured};
