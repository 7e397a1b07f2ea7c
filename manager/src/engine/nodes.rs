//! The API's node operations (drain, activate, list) and the rules of a
//! node's state that every caller shares.

use orch::v1::{Node, NodeState};
use uuid::Uuid;

use super::{Engine, stop_of};
use crate::Error;
use crate::orchestrator::drain;
use crate::persist::Durable;

impl Engine {
    /// Every node, as `ListNodes` shows it.
    pub fn list_nodes(&self) -> Vec<Node> {
        self.state.list_nodes()
    }

    fn node_by_id(&self, id: Uuid) -> Result<usize, Error> {
        self.state
            .node_index(id)
            .filter(|&i| self.state.record(i).node.state() != NodeState::Removed)
            .ok_or_else(|| Error::NotFound(format!("node {id} not found")))
    }

    /// Whether node `id` was removed (its certificate revoked).
    pub fn is_removed(&self, id: Uuid) -> bool {
        self.state
            .node_index(id)
            .is_some_and(|i| self.state.record(i).node.state() == NodeState::Removed)
    }

    /// Records when node `id`'s certificate expires, as `ListNodes` shows it.
    pub fn set_certificate_expiry(&mut self, id: Uuid, expires_at: std::time::SystemTime) {
        if let Some(i) = self.state.node_index(id) {
            self.begin();
            self.state.node_mut(i).0.certificate_expires_at =
                Some(orch::time::timestamp(expires_at));
            self.state.node_written(i);
            self.flush();
        }
    }

    /// Removes a node for good: its worker is told to stop everything and
    /// its session ends, its tasks are lost and placed again elsewhere, and
    /// the node stays only as a tombstone (state `removed`) that refuses
    /// its certificate from then on.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown (or already removed) node.
    pub fn remove_node(&mut self, node_id: Uuid) -> Result<Durable, Error> {
        let now = self.begin();
        let i = self.node_by_id(node_id)?;
        // An empty full set: the worker stops every container of the node.
        let after = self.gate();
        self.sessions.push(
            node_id,
            orch::v1::Assignments {
                full: true,
                ..Default::default()
            },
            after,
        );
        self.sessions.end(
            node_id,
            "this node was removed from the cluster; its certificate is revoked",
        );
        self.set_node_state(i, NodeState::Removed, "removed");
        for id in self.state.tasks_on(i) {
            if let Some(task) = self.state.task_mut(id) {
                task.message = "its node was removed".into();
            }
            self.finish(id, orch::v1::TaskState::Lost, now);
        }
        Ok(self.flush_durable())
    }

    /// The state a live node shows: draining if drained, else ready.
    pub(super) fn live_state(&self, i: usize) -> NodeState {
        if self.state.record(i).node.draining {
            NodeState::Draining
        } else {
            NodeState::Ready
        }
    }

    /// Whether the scheduler may place tasks on node `i`: it is `ready` (not
    /// down, not draining) and its worker is connected. A worker whose stream
    /// broke is most likely gone; tasks placed on it would wait out the
    /// liveness deadline, and when many nodes fail together they would be
    /// bounced from one dying node to the next.
    pub(super) fn refresh_placeable(&mut self, i: usize) {
        let connected = self.sessions.connected(self.state.node_id(i));
        let (node, snapshot) = self.state.node_mut(i);
        snapshot.ready = node.state() == NodeState::Ready && connected;
    }

    /// Sets node `i`'s state and whether it takes tasks; a change of state is
    /// persisted and becomes an event. Whether it takes tasks can change with
    /// the state unchanged: a worker that reconnects within the deadline.
    pub(super) fn set_node_state(&mut self, i: usize, state: NodeState, why: &str) {
        let changed = self.state.set_node_state(i, state);
        self.refresh_placeable(i);
        if !changed {
            return;
        }
        tracing::info!(node = %self.state.node_id(i), name = %self.state.node_name(i), state = ?state, why, "node state");
        self.state.node_changed(i, why);
        self.nodes_touched();
    }

    /// Drains a node: no new tasks go there, and each of its tasks moves to
    /// another node as a new attempt (see `orchestrator::drain`). Returns the
    /// node and a [`Durable`] for the change.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown node.
    pub fn drain(&mut self, node_id: Uuid) -> Result<(Node, Durable), Error> {
        self.begin();
        let i = self.node_by_id(node_id)?;
        if !self.state.record(i).node.draining {
            self.state.node_mut(i).0.draining = true;
            let state = match self.state.record(i).node.state() {
                NodeState::Down => NodeState::Down,
                _ => NodeState::Draining,
            };
            // The flag is persisted even when the visible state does not change.
            self.state.node_written(i);
            self.set_node_state(i, state, "drained");
            let on_node = self.state.tasks_on(i);
            let moves = drain::moves(
                on_node
                    .iter()
                    .filter_map(|&id| self.state.task(id).map(|t| (id, t))),
            );
            let name = self.state.node_name(i).to_owned();
            for mv in moves {
                self.move_off(i, mv, &name);
            }
        }
        Ok((self.state.node_view(i), self.flush_durable()))
    }

    /// Moves one task off draining node `i`: a new attempt is placed
    /// elsewhere while the old one keeps running (a handoff), or, with no
    /// room elsewhere, the old one stops now and the task waits, pending.
    fn move_off(&mut self, i: usize, mv: drain::Move, node_name: &str) {
        let Some(task) = self.state.task(mv.task) else {
            return;
        };
        let demand = self.state.demand(task);
        self.state.release(i, mv.task, &demand);
        self.state.begin_attempt(mv.task);
        if let Some(task) = self.state.task_mut(mv.task) {
            task.message = format!("moving off drained node {node_name}");
        }
        self.state.task_changed(mv.task);
        let node = self.state.node_id(i);
        if self.place(mv.task) {
            self.handoffs.begin(node, mv);
        } else {
            self.push(
                node,
                vec![],
                vec![stop_of(&mv.task.to_string(), mv.attempt, mv.grace)],
            );
        }
    }

    /// Undoes [`Engine::drain`]: the node takes new tasks again, and pending
    /// tasks are tried on it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown node.
    pub fn activate(&mut self, node_id: Uuid) -> Result<(Node, Durable), Error> {
        self.begin();
        let i = self.node_by_id(node_id)?;
        if self.state.record(i).node.draining {
            self.state.node_mut(i).0.draining = false;
            self.state.node_written(i);
            if self.state.record(i).node.state() == NodeState::Draining {
                self.set_node_state(i, NodeState::Ready, "activated");
            }
            self.retry_pending();
        }
        Ok((self.state.node_view(i), self.flush_durable()))
    }
}
