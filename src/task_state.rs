//! The task state machine: every allowed move of a task's observed state, in
//! one table.
//!
//! Within one attempt a task's observed state only moves forward, along
//! `pending → scheduled → starting → running → completed | failed | stopped | lost`.
//! A state may be skipped (a worker that batches its reports can send `running`
//! without `starting`, and a container can exit before it was seen running), but
//! never revisited: a late or duplicated report is refused by this table, and a
//! report about another attempt is refused by [`accept_report`]. A restart or a
//! reschedule starts a new attempt, which begins again at `pending` or `scheduled`.

use crate::v1::TaskState;

/// Every allowed `(from, to)` move of the observed state within one attempt.
/// Anything not listed is refused. Terminal states have no way out.
pub const TRANSITIONS: &[(TaskState, TaskState)] = {
    use TaskState::*;
    &[
        // Placed on a node, or stopped before it ever was.
        (Pending, Scheduled),
        (Pending, Stopped),
        // The worker's reports; any later state may arrive first when reports
        // are batched. A node loss ends the attempt wherever it was.
        (Scheduled, Starting),
        (Scheduled, Running),
        (Scheduled, Completed),
        (Scheduled, Failed),
        (Scheduled, Stopped),
        (Scheduled, Lost),
        (Starting, Running),
        (Starting, Completed),
        (Starting, Failed),
        (Starting, Stopped),
        (Starting, Lost),
        (Running, Completed),
        (Running, Failed),
        (Running, Stopped),
        (Running, Lost),
    ]
};

/// Why a state change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The move is not in [`TRANSITIONS`].
    #[error("task state cannot move from {} to {}", name(*.from), name(*.to))]
    NotAllowed {
        /// The current state.
        from: TaskState,
        /// The refused state.
        to: TaskState,
    },
    /// The report is about an attempt other than the task's current one.
    #[error("report is about attempt {reported}, the task is at attempt {current}")]
    StaleAttempt {
        /// The attempt the report names.
        reported: u64,
        /// The task's current attempt.
        current: u64,
    },
}

/// Whether the observed state may move from `from` to `to` within one attempt.
pub fn can_transition(from: TaskState, to: TaskState) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// Checks one move of the observed state within an attempt.
///
/// # Errors
/// [`TransitionError::NotAllowed`] if the move is not in [`TRANSITIONS`].
pub fn check_transition(from: TaskState, to: TaskState) -> Result<(), TransitionError> {
    if can_transition(from, to) {
        Ok(())
    } else {
        Err(TransitionError::NotAllowed { from, to })
    }
}

/// Checks a worker's report about attempt `reported` against a task at
/// attempt `current` in state `from`: the attempt must be the current one
/// (fencing) and the move must be allowed.
///
/// # Errors
/// [`TransitionError::StaleAttempt`] for another attempt, else as [`check_transition`].
pub fn accept_report(
    current: u64,
    from: TaskState,
    reported: u64,
    to: TaskState,
) -> Result<(), TransitionError> {
    if reported != current {
        return Err(TransitionError::StaleAttempt { reported, current });
    }
    check_transition(from, to)
}

/// Whether `state` ends an attempt.
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Completed | TaskState::Failed | TaskState::Stopped | TaskState::Lost
    )
}

/// Whether a task in `state` holds (or is about to hold) resources on its node.
pub fn is_active(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Scheduled | TaskState::Starting | TaskState::Running
    )
}

/// The lowercase word for a state, as `orchctl` prints it and its JSON uses it.
pub fn name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "unspecified",
        TaskState::Pending => "pending",
        TaskState::Scheduled => "scheduled",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Stopped => "stopped",
        TaskState::Lost => "lost",
    }
}

/// Parses the lowercase word of a state.
pub fn parse(word: &str) -> Option<TaskState> {
    ALL.iter().copied().find(|s| name(*s) == word)
}

/// Every state, in order.
pub const ALL: [TaskState; 9] = [
    TaskState::Unspecified,
    TaskState::Pending,
    TaskState::Scheduled,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Stopped,
    TaskState::Lost,
];

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    /// The expected successors of each state, written independently of the table.
    fn expected(from: TaskState) -> &'static [TaskState] {
        match from {
            Unspecified => &[],
            Pending => &[Scheduled, Stopped],
            Scheduled => &[Starting, Running, Completed, Failed, Stopped, Lost],
            Starting => &[Running, Completed, Failed, Stopped, Lost],
            Running => &[Completed, Failed, Stopped, Lost],
            Completed | Failed | Stopped | Lost => &[],
        }
    }

    #[test]
    fn every_pair_is_allowed_or_refused_as_expected() {
        let mut checked = 0;
        for from in ALL {
            for to in ALL {
                let want = expected(from).contains(&to);
                assert_eq!(
                    can_transition(from, to),
                    want,
                    "{} -> {}",
                    name(from),
                    name(to)
                );
                assert_eq!(check_transition(from, to).is_ok(), want);
                checked += 1;
            }
        }
        assert_eq!(checked, 81);
    }

    #[test]
    fn states_only_move_forward() {
        for (from, to) in TRANSITIONS {
            assert!(
                (*to as i32) > (*from as i32),
                "{from:?} -> {to:?} moves back"
            );
        }
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Completed, Failed, Stopped, Lost] {
            assert!(is_terminal(from));
            assert!(ALL.iter().all(|to| !can_transition(from, *to)));
        }
        assert!(!is_terminal(Running));
    }

    #[test]
    fn report_from_another_attempt_is_refused() {
        assert_eq!(
            accept_report(2, Scheduled, 1, Running),
            Err(TransitionError::StaleAttempt {
                reported: 1,
                current: 2
            })
        );
        assert_eq!(accept_report(2, Scheduled, 2, Running), Ok(()));
        assert_eq!(
            accept_report(2, Running, 2, Starting),
            Err(TransitionError::NotAllowed {
                from: Running,
                to: Starting
            })
        );
    }

    #[test]
    fn names_round_trip() {
        for s in ALL {
            assert_eq!(parse(name(s)), Some(s));
        }
        assert_eq!(parse("Running"), None);
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use TaskState::*;

    fn state() -> impl Strategy<Value = TaskState> {
        prop::sample::select(ALL.to_vec())
    }

    fn successors(from: TaskState) -> Vec<TaskState> {
        ALL.into_iter()
            .filter(|to| can_transition(from, *to))
            .collect()
    }

    #[test]
    fn every_state_but_unspecified_is_reachable_from_pending() {
        let mut seen = BTreeSet::from([Pending as i32]);
        let mut todo = vec![Pending];
        while let Some(from) = todo.pop() {
            for to in successors(from) {
                if seen.insert(to as i32) {
                    todo.push(to);
                }
            }
        }
        let unreached: Vec<_> = ALL
            .into_iter()
            .filter(|s| !seen.contains(&(*s as i32)))
            .collect();
        assert_eq!(unreached, [Unspecified]);
    }

    #[test]
    fn every_live_state_has_a_way_out_and_every_terminal_state_none() {
        for s in ALL {
            if s == Unspecified {
                continue;
            }
            assert_eq!(successors(s).is_empty(), is_terminal(s), "{}", name(s));
        }
    }

    proptest! {
        /// A random walk along allowed moves, from pending, stays in the
        /// table, never comes back to a state, and ends in a terminal state
        /// within as many steps as there are live states.
        #[test]
        fn random_walks_end_in_a_terminal_state(choices in prop::collection::vec(any::<prop::sample::Index>(), 8)) {
            let mut at = Pending;
            let mut visited = vec![at];
            for choice in &choices {
                let next = successors(at);
                if next.is_empty() {
                    break;
                }
                let to = *choice.get(&next);
                prop_assert_eq!(check_transition(at, to), Ok(()));
                prop_assert!(!visited.contains(&to), "{:?} comes back to {:?}", visited, to);
                visited.push(to);
                at = to;
            }
            prop_assert!(is_terminal(at), "the walk {:?} did not end", visited);
            prop_assert!(visited.len() <= 5, "{:?}", visited);
            // The manager's states come first: a worker's report never leads
            // back to pending.
            prop_assert!(visited[1..].iter().all(|s| *s != Pending));
        }

        /// Applying any sequence of requested moves, keeping only those the
        /// table allows, never revisits a state: late or duplicated reports
        /// are harmless.
        #[test]
        fn accepted_moves_never_revisit_a_state(requests in prop::collection::vec(state(), 0..40)) {
            let mut at = Pending;
            let mut visited = vec![at];
            for to in requests {
                match check_transition(at, to) {
                    Ok(()) => {
                        prop_assert!(!visited.contains(&to));
                        visited.push(to);
                        at = to;
                    }
                    Err(e) => prop_assert_eq!(e, TransitionError::NotAllowed { from: at, to }),
                }
            }
            prop_assert!(visited.len() <= 5);
        }

        /// A report is accepted exactly when it is about the current attempt
        /// and its move is in the table; the error says which rule it broke.
        #[test]
        fn reports_are_fenced_by_attempt(
            current in 0..4u64,
            reported in 0..4u64,
            from in state(),
            to in state(),
        ) {
            let got = accept_report(current, from, reported, to);
            if reported != current {
                prop_assert_eq!(got, Err(TransitionError::StaleAttempt { reported, current }));
            } else if TRANSITIONS.contains(&(from, to)) {
                prop_assert_eq!(got, Ok(()));
            } else {
                prop_assert_eq!(got, Err(TransitionError::NotAllowed { from, to }));
            }
        }

        /// Only moves between live states out of a state that holds nothing
        /// into one that does (pending → scheduled) take resources, and
        /// none gives them back except by ending the attempt.
        #[test]
        fn resources_are_held_from_placement_to_the_end(from in state(), to in state()) {
            if can_transition(from, to) && is_active(from) {
                prop_assert!(is_active(to) || is_terminal(to), "{:?} -> {:?}", from, to);
            }
            if can_transition(from, to) && !is_active(from) {
                prop_assert!(from == Pending && (to == Scheduled || to == Stopped));
            }
        }
    }
}
