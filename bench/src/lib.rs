//! orch's benchmarks, as a library so that tests can run them at smoke size.
//!
//! - [`cluster`]: `SimCluster`, a real manager on loopback (in this process
//!   or as an `orchctl manager` child) and thousands of real workers over the
//!   simulated runtime, each with its own registration and `Session` stream;
//! - [`control_plane`]: submit N tasks to W simulated workers and measure
//!   until all run;
//! - [`service_plane`]: one service of N replicas on W simulated workers,
//!   from `ApplyService` until all run, then scaled to 0 until none does;
//! - [`schedule`]: the cost of one scheduling decision at several cluster sizes;
//! - [`engine`]: orch, the Docker API called directly and Docker Swarm
//!   starting the same containers on the real engine, and one task's
//!   submit→running against a bare create+start; and orch's services
//!   against Swarm's (create, rolling update: [`engine::services`]);
//! - [`plot`]: control-plane runs at several cluster sizes, drawn as an SVG;
//! - [`measure`]: cpu time and peak memory of a process, from `/proc`.
//!
//! Nothing here is a timed test: the figures are printed, never asserted.
//! The binary `orch-bench` runs each scenario from the command line.

pub mod cluster;
pub mod control_plane;
pub mod engine;
pub mod measure;
pub mod plot;
pub mod schedule;
pub mod service_plane;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local resource (file, socket, process) failed.
    #[error("{0}")]
    Io(String),
    /// The manager failed or went away.
    #[error("manager: {0}")]
    Manager(String),
    /// A call to the manager failed.
    #[error("call failed: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The run ended in a state it should not have.
    #[error("check failed: {0}")]
    Check(String),
}
