//! The global reconciler: one task on every eligible node.
//!
//! A node is eligible when it is ready (connected, not drained) and carries
//! the service's placement constraints. Each eligible node that no task holds
//! gets one, bound to it. The task of a node that is down stays: it is not
//! moved elsewhere, and runs there again when the node comes back. The task
//! of a node that is drained, no longer matches the constraints or is gone is
//! stopped.

use uuid::Uuid;

use super::{Plan, SlotKey, Slots, occupied, wanted_ids};

/// Where a node stands for a global service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Ready and matching: it should have the service's task.
    Eligible,
    /// Down: its task, if any, waits for it.
    Down,
    /// Drained, or not matching the constraints: its task is stopped.
    Excluded,
}

/// What a global service needs now, given every node and where it stands.
/// Tasks bound to a node not in `nodes` are stopped.
pub fn reconcile(nodes: &[(Uuid, Eligibility)], slots: &Slots) -> Plan {
    let mut plan = Plan::default();
    for &(node, eligibility) in nodes {
        let key = SlotKey::Node(node);
        let tasks = slots.get(&key).map_or(&[][..], Vec::as_slice);
        match eligibility {
            Eligibility::Eligible if !occupied(tasks) => plan.create.push(key),
            Eligibility::Excluded => plan.stop.extend(wanted_ids(tasks)),
            _ => {}
        }
    }
    for (key, tasks) in slots {
        let known = nodes.iter().any(|&(n, _)| *key == SlotKey::Node(n));
        if !known {
            plan.stop.extend(wanted_ids(tasks));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ids, task};
    use super::*;
    use crate::orchestrator::SlotTask;

    fn node(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    fn on(pairs: Vec<(u128, Vec<SlotTask>)>) -> Slots {
        pairs
            .into_iter()
            .map(|(n, tasks)| (SlotKey::Node(node(n)), tasks))
            .collect()
    }

    fn check(nodes: &[(u128, Eligibility)], given: Slots, create: &[u128], stop: &[u128]) {
        let nodes: Vec<(Uuid, Eligibility)> = nodes.iter().map(|&(n, e)| (node(n), e)).collect();
        let plan = reconcile(&nodes, &given);
        let created: Vec<SlotKey> = create.iter().map(|&n| SlotKey::Node(node(n))).collect();
        assert_eq!((plan.create, plan.stop), (created, ids(stop)));
    }

    use Eligibility::*;

    #[test]
    fn every_eligible_node_gets_one_task() {
        check(
            &[(1, Eligible), (2, Eligible), (3, Excluded)],
            on(vec![]),
            &[1, 2],
            &[],
        );
        check(
            &[(1, Eligible), (2, Eligible)],
            on(vec![(1, vec![task(1, 1, "run")])]),
            &[2],
            &[],
        );
    }

    #[test]
    fn a_down_nodes_task_is_kept_not_moved() {
        check(
            &[(1, Down), (2, Eligible)],
            on(vec![
                (1, vec![task(1, 1, "pending")]),
                (2, vec![task(2, 1, "run")]),
            ]),
            &[],
            &[],
        );
        // A down node without a task gets none until it is back.
        check(&[(1, Down)], on(vec![]), &[], &[]);
    }

    #[test]
    fn a_drained_or_unmatched_nodes_task_is_stopped_not_moved() {
        check(
            &[(1, Excluded), (2, Eligible)],
            on(vec![
                (1, vec![task(1, 1, "run")]),
                (2, vec![task(2, 1, "run")]),
            ]),
            &[],
            &[1],
        );
        // Once stopping, nothing more is asked; once activated, it is filled
        // again when the old container is gone.
        check(
            &[(1, Excluded)],
            on(vec![(1, vec![task(1, 1, "stopping")])]),
            &[],
            &[],
        );
        check(
            &[(1, Eligible)],
            on(vec![(1, vec![task(1, 1, "stopping")])]),
            &[],
            &[],
        );
        check(
            &[(1, Eligible)],
            on(vec![(1, vec![task(1, 1, "gone")])]),
            &[1],
            &[],
        );
    }

    #[test]
    fn a_task_of_a_node_that_is_gone_is_stopped() {
        check(&[], on(vec![(7, vec![task(1, 1, "run")])]), &[], &[1]);
    }
}
