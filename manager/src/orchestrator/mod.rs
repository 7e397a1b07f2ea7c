//! The orchestrator: one reconciler per concern, each a pure decision over
//! plain data and a time handed in, returning what to do; the engine applies
//! it. None of them reads a clock, takes a lock, awaits or touches the store,
//! the sessions or the scheduler.
//!
//! - [`restart`]: whether an ended or unhealthy attempt gets a new one, and
//!   after what backoff;
//! - [`drain`]: which tasks leave a drained node, and the handoffs that keep
//!   the old attempt running until the new one runs.

pub mod drain;
pub mod restart;
