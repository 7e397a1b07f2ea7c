//! orch core: the public gRPC API (generated from `proto/` by `build.rs`) and
//! the domain every component shares: the task state machine, spec validation,
//! resource quantities and the labels orch puts on containers, the defaults of
//! a service spec ([`service`]) and the YAML manifest `orchctl apply` reads
//! into service specs ([`manifest`]).
//!
//! This crate does no I/O: no network, no files, no clock reads beyond
//! converting times handed to it. The manager, the worker and `orchctl` all
//! depend on it, so the rules written here are the same everywhere.

pub mod auth;
pub mod health;
pub mod labels;
pub mod limits;
pub mod manifest;
pub mod quantity;
pub mod service;
pub mod task_state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod validate;
#[cfg(test)]
mod validate_properties;

/// The generated `orch.v1` API: messages, `Cluster` and `Dispatcher` clients and servers.
pub mod api {
    /// Version 1 of the API, package `orch.v1`.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("orch.v1");
    }

    /// The encoded `FileDescriptorSet` of every `orch.v1` proto file (and the
    /// well-known types they import), served by the manager's gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/orch_descriptor.bin"));

    /// The trailer of a `WatchEvents` stream that ended with an error: the
    /// last sequence the watch got to, to pass as `since` to resume.
    pub const LAST_SEQUENCE_TRAILER: &str = "orch-last-sequence";

    /// The metadata of an `UNAVAILABLE` from a manager that does not lead
    /// (several managers on etcd): the leader's URL, where to go instead.
    pub const LEADER_METADATA: &str = "orch-leader";
}

pub use api::v1;
