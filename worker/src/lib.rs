//! The orch worker agent.
#![allow(missing_docs)]

pub mod runtime;
