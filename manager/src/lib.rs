//! The orch manager.
#![allow(missing_docs)]

pub mod scheduler;
pub mod store;
