//! orch's end-to-end test support: helpers shared by the tests in `tests/`,
//! which run real managers and workers against the real Docker engine.
//!
//! Nothing here is used by orch itself; it may depend on any orch crate, and
//! no orch crate may depend on it.

pub mod cluster;
pub mod containers;
pub mod events;
pub mod images;
pub mod workloads;
