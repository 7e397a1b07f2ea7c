//! The labels orch puts on every container it creates. The worker finds its
//! containers again by these labels after a restart, so they are part of the
//! contract between a worker and the containers it left behind.

/// Marks a container as created by orch; always `"true"`.
pub const MANAGED: &str = "orch.managed";
/// The id of the cluster whose manager assigned the task.
pub const CLUSTER: &str = "orch.cluster";
/// The task id.
pub const TASK_ID: &str = "orch.task-id";
/// The id of the node that runs the container.
pub const NODE_ID: &str = "orch.node-id";
/// The task attempt the container belongs to, in decimal.
pub const ATTEMPT: &str = "orch.attempt";

/// The prefix reserved for orch's own labels; user labels may not use it.
pub const RESERVED_PREFIX: &str = "orch.";
/// The name of the service the task belongs to, on a service task's
/// container only. The manager puts it in the task's spec labels, so the
/// worker sets it like any other label.
pub const SERVICE: &str = "orch.service";
