//! [`MemoryStore`]: a [`Store`] that keeps everything in ordered maps behind
//! a mutex, for the manager's unit tests. It follows the same rules as
//! [`RedbStore`](super::RedbStore) (coalescing, event pruning, a status
//! without a spec is corrupt, a service's delete takes all its versions) but
//! holds nothing durable.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use orch::v1::{Event, Node, Service, ServiceVersion, Task, TaskAttempt, TaskSpec};

use super::{
    Batch, Snapshot, Store, StoreError, Write, events_prune_bound, join_task, status_record,
    task_id_of,
};

/// A [`Store`] in memory. Everything is lost when it is dropped.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// How many of the newest events stay.
    events_kept: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            events_kept: super::DEFAULT_EVENTS_KEPT,
        }
    }
}

/// The "tables", laid out as redb's are, so that both stores behave alike.
#[derive(Debug, Default)]
struct State {
    cluster_id: Option<String>,
    specs: BTreeMap<u128, TaskSpec>,
    statuses: BTreeMap<u128, Task>,
    nodes: BTreeMap<u128, Node>,
    events: BTreeMap<u64, Event>,
    services: BTreeMap<String, Service>,
    service_versions: BTreeMap<(String, u64), ServiceVersion>,
    credentials: BTreeMap<String, Vec<u8>>,
    attempts: BTreeMap<(u128, u64), TaskAttempt>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store keeping only the newest `kept` events (at least one).
    #[must_use]
    pub fn with_events_kept(mut self, kept: u64) -> Self {
        self.events_kept = kept;
        self
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A panic while the lock was held may have left a batch half applied;
        // report it rather than serve state that breaks the all-or-nothing rule.
        self.state
            .lock()
            .map_err(|_| StoreError::Backend("memory store poisoned by a panic".to_owned()))
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let state = self.state()?;
        let tasks = state
            .statuses
            .iter()
            .map(|(key, status)| join_task(status.clone(), state.specs.get(key).cloned()))
            .collect::<Result<_, _>>()?;
        Ok(Snapshot {
            cluster_id: state.cluster_id.clone(),
            tasks,
            nodes: state.nodes.values().cloned().collect(),
            last_event_sequence: state.events.last_key_value().map_or(0, |(seq, _)| *seq),
            services: state.services.values().cloned().collect(),
            service_versions: state.service_versions.values().cloned().collect(),
            credentials: state
                .credentials
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            attempts: state
                .attempts
                .iter()
                .map(|(&(task, _), record)| (task_id_of(task), record.clone()))
                .collect(),
        })
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Every check happens here, before the state is touched: what follows
        // cannot fail, so a batch is applied whole or not at all.
        let batch = Batch::new(writes)?;
        let mut state = self.state()?;
        if let Some(id) = batch.cluster_id {
            state.cluster_id = Some(id.to_owned());
        }
        for (&key, record) in &batch.attempts {
            state.attempts.insert(key, (*record).clone());
        }
        for (task, bound) in batch.attempts_pruned() {
            if let Some(bound) = bound {
                let old: Vec<_> = state
                    .attempts
                    .range((task, 0)..=(task, bound))
                    .map(|(key, _)| *key)
                    .collect();
                for key in old {
                    state.attempts.remove(&key);
                }
            }
        }
        for (key, spec) in batch.specs {
            state.specs.insert(key, spec.clone());
        }
        for (key, task) in batch.statuses {
            state.statuses.insert(key, status_record(task).into_owned());
        }
        for (key, node) in batch.nodes {
            state.nodes.insert(key, node.clone());
        }
        for name in batch.services_deleted {
            // The keys of `name`'s versions, and of no other service's: the
            // name is compared whole, so `web2`'s sort after `(web, MAX)`.
            let range = (name.to_owned(), 0)..=(name.to_owned(), u64::MAX);
            let stored: Vec<_> = state
                .service_versions
                .range(range)
                .map(|(key, _)| key.clone())
                .collect();
            for key in stored {
                state.service_versions.remove(&key);
            }
        }
        for (name, service) in batch.services {
            match service {
                Some(service) => state.services.insert(name.to_owned(), service.clone()),
                None => state.services.remove(name),
            };
        }
        for ((name, number), version) in batch.service_versions {
            let key = (name.to_owned(), number);
            match version {
                Some(version) => state.service_versions.insert(key, version.clone()),
                None => state.service_versions.remove(&key),
            };
        }
        for (key, record) in batch.credentials {
            match record {
                Some(record) => state.credentials.insert(key.to_owned(), record.to_vec()),
                None => state.credentials.remove(key),
            };
        }
        if !batch.events.is_empty() {
            for (seq, event) in batch.events {
                state.events.insert(seq, event.clone());
            }
            let newest = state.events.last_key_value().map_or(0, |(seq, _)| *seq);
            if let Some(bound) = events_prune_bound(newest, self.events_kept) {
                // Only the few oldest go at each commit, so pop them one by
                // one rather than rebuild the map.
                while let Some(oldest) = state.events.first_entry() {
                    if *oldest.key() > bound {
                        break;
                    }
                    oldest.remove();
                }
            }
        }
        Ok(())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let state = self.state()?;
        Ok(state
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::MemoryStore;
    use crate::store::checks;

    #[test]
    fn memory_empty() {
        checks::check_empty(&MemoryStore::new());
    }

    #[test]
    fn memory_round_trip() {
        checks::check_round_trip(&MemoryStore::new());
    }

    #[test]
    fn memory_update_keeps_spec() {
        checks::check_update_keeps_spec(&MemoryStore::new());
    }

    #[test]
    fn memory_coalescing() {
        checks::check_coalescing(&MemoryStore::new());
    }

    #[test]
    fn memory_events_pruning() {
        checks::check_events_pruning(&MemoryStore::new().with_events_kept(checks::EVENTS_KEPT));
    }

    #[test]
    fn memory_events_after_paging() {
        checks::check_events_after_paging(&MemoryStore::new());
    }

    #[test]
    fn memory_bad_id_refuses_batch() {
        checks::check_bad_id_refuses_batch(&MemoryStore::new());
    }

    #[test]
    fn memory_status_without_spec_is_corrupt() {
        checks::check_status_without_spec_is_corrupt(&MemoryStore::new());
    }

    #[test]
    fn memory_service_replaces() {
        checks::check_service_replaces(&MemoryStore::new());
    }

    #[test]
    fn memory_service_delete() {
        checks::check_service_delete(&MemoryStore::new());
    }

    #[test]
    fn memory_service_delete_then_recreate() {
        checks::check_service_delete_then_recreate(&MemoryStore::new());
    }

    #[test]
    fn memory_service_version_delete() {
        checks::check_service_version_delete(&MemoryStore::new());
    }

    #[test]
    fn memory_attempts_are_bounded() {
        checks::check_attempts_are_bounded(&MemoryStore::new());
    }

    #[test]
    fn memory_empty_service_name_refuses_batch() {
        checks::check_empty_service_name_refuses_batch(&MemoryStore::new());
    }
}
