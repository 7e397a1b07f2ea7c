//! The replicated reconciler: keep `replicas` slots, each holding one task.
//!
//! Slots `1..=replicas` that no task holds get a new task; tasks in slots
//! above `replicas` (after a scale down) are stopped, highest slot first. A
//! task that ends is not replaced here: the restart reconciler gives it a new
//! attempt in its slot (with the backoff), and one whose restart policy gave
//! up keeps its slot, ended, as the user's policy asked. A rolling update
//! (see [`super::update`]) decides which old tasks make way for new ones.

use super::{Plan, SlotKey, Slots, occupied, wanted_ids};

/// What a replicated service with `replicas` slots needs now.
pub fn reconcile(replicas: u32, slots: &Slots) -> Plan {
    let mut plan = Plan::default();
    for slot in 1..=replicas {
        let key = SlotKey::Slot(slot);
        if !slots.get(&key).is_some_and(|tasks| occupied(tasks)) {
            plan.create.push(key);
        }
    }
    for (key, tasks) in slots.iter().rev() {
        if matches!(key, SlotKey::Slot(n) if *n > replicas) {
            plan.stop.extend(wanted_ids(tasks));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ids, slots, task};
    use super::*;

    /// `reconcile` as (slots created, tasks stopped).
    fn check(replicas: u32, given: Slots, create: &[u32], stop: &[u128]) {
        let plan = reconcile(replicas, &given);
        let created: Vec<u32> = plan
            .create
            .iter()
            .map(|k| match k {
                SlotKey::Slot(n) => *n,
                SlotKey::Node(_) => panic!("a replicated service has no node slots"),
            })
            .collect();
        assert_eq!((created.as_slice(), plan.stop), (create, ids(stop)));
    }

    #[test]
    fn a_new_service_fills_every_slot() {
        check(3, slots(vec![]), &[1, 2, 3], &[]);
        check(0, slots(vec![]), &[], &[]);
    }

    #[test]
    fn held_slots_are_left_alone_and_empty_ones_filled() {
        let given = slots(vec![
            (1, vec![task(1, 1, "run")]),
            (2, vec![task(2, 1, "pending")]),
            (3, vec![task(3, 1, "gone")]),
        ]);
        check(3, given, &[3], &[]);
    }

    #[test]
    fn a_task_whose_restarts_gave_up_keeps_its_slot() {
        check(1, slots(vec![(1, vec![task(1, 1, "dead")])]), &[], &[]);
    }

    #[test]
    fn a_slot_being_stopped_is_filled_only_once_its_container_is_gone() {
        check(1, slots(vec![(1, vec![task(1, 1, "stopping")])]), &[], &[]);
        check(
            1,
            slots(vec![(1, vec![task(1, 1, "gone"), task(2, 1, "gone")])]),
            &[1],
            &[],
        );
    }

    #[test]
    fn scaling_down_stops_the_highest_slots() {
        let given = slots(vec![
            (1, vec![task(1, 1, "run")]),
            (2, vec![task(2, 1, "run")]),
            (3, vec![task(3, 1, "run"), task(4, 2, "pending")]),
            (4, vec![task(5, 1, "stopping")]),
            (5, vec![task(6, 1, "run")]),
        ]);
        check(2, given.clone(), &[], &[6, 3, 4]);
        check(0, given, &[], &[6, 3, 4, 2, 1]);
    }

    #[test]
    fn scaling_up_adds_the_next_slots() {
        let given = slots(vec![
            (1, vec![task(1, 1, "run")]),
            (2, vec![task(2, 1, "run")]),
        ]);
        check(5, given, &[3, 4, 5], &[]);
    }
}
