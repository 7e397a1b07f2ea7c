//! [`RedbStore`]: the manager's durable [`Store`], one redb file.
//!
//! Tables (keys of tasks and nodes are their UUIDs as `u128`, see `key_of`):
//! - `meta`: `&str -> &str`, the key `cluster_id`;
//! - `task_spec`: task key -> prost `TaskSpec`, written once, at creation;
//! - `task_status`: task key -> prost `Task` without its spec, rewritten at
//!   every update (kept small for that reason);
//! - `nodes`: node key -> prost `Node`;
//! - `events`: sequence -> prost `Event`; only the newest
//!   `events_kept` ([`DEFAULT_EVENTS_KEPT`](super::DEFAULT_EVENTS_KEPT)
//!   unless [`RedbStore::with_events_kept`] says otherwise) stay;
//! - `services`: service name (`&str`) -> prost `Service`, rewritten at every
//!   change of the service;
//! - `service_versions`: (service name, version) as `(&str, u64)` -> prost
//!   `ServiceVersion`, written once; keys compare by the whole name, then the
//!   version, so a service's versions are one key range, which its delete
//!   removes;
//! - `credentials`: key (`&str`) -> the [`auth`](crate::auth) module's
//!   encoded record, opaque here;
//! - `task_attempts`: (task key, attempt) as `(u128, u64)` -> prost
//!   `TaskAttempt`: one small record per attempt, rewritten as that attempt
//!   moves, so a status update rewrites one attempt and never the history;
//!   a task's attempts are one key range, pruned to the newest
//!   [`ATTEMPTS_KEPT`](super::ATTEMPTS_KEPT) as new ones are written.
//!
//! This module is the only one that knows redb: its errors become
//! [`StoreError::Backend`] here, and nowhere else.

use std::ops::Bound;
use std::path::Path;

use orch::v1::{Event, Node, Service, ServiceVersion, Task, TaskAttempt, TaskSpec};
use prost::Message;
use redb::{Builder, Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Batch, CREDENTIALS, EVENTS, META, NODES, SERVICE_VERSIONS, SERVICES, Snapshot, Store,
    StoreError, TASK_ATTEMPTS, TASK_SPEC, TASK_STATUS, Write, decode, events_prune_bound,
    join_task, status_record, task_id_of,
};

/// redb's page cache. Its default (1 GiB) would let the manager's memory grow
/// with the file; the working set (statuses, nodes, recent events) is small.
const CACHE_SIZE: usize = 64 * 1024 * 1024;

const META_TABLE: TableDefinition<&str, &str> = TableDefinition::new(META);
const TASK_SPEC_TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new(TASK_SPEC);
const TASK_STATUS_TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new(TASK_STATUS);
const NODES_TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new(NODES);
const EVENTS_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new(EVENTS);
const SERVICES_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new(SERVICES);
const SERVICE_VERSIONS_TABLE: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new(SERVICE_VERSIONS);
const CREDENTIALS_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new(CREDENTIALS);
const TASK_ATTEMPTS_TABLE: TableDefinition<(u128, u64), &[u8]> =
    TableDefinition::new(TASK_ATTEMPTS);

/// The `meta` key of the cluster id.
const CLUSTER_ID: &str = "cluster_id";

/// A [`Store`] in a redb file. Every commit is durable (fsynced) before it
/// returns.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// How many of the newest events stay.
    events_kept: u64,
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it does not exist.
    /// The directory holding it must exist: creating it is the caller's job.
    ///
    /// # Errors
    /// If the file cannot be created or opened (for example because another
    /// process holds it), is not a redb database, or the tables cannot be
    /// created.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Builder::new()
            .set_cache_size(CACHE_SIZE)
            .create(path)
            .map_err(|e| match e {
                // redb locks the file: another process has it open.
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                    "{e} (is another orch manager using this data directory?)"
                )),
                e => e.into(),
            })?;
        // Create every table up front, so that reads never meet a missing
        // table and a new file simply reads as empty.
        let txn = db.begin_write()?;
        txn.open_table(META_TABLE)?;
        txn.open_table(TASK_SPEC_TABLE)?;
        txn.open_table(TASK_STATUS_TABLE)?;
        txn.open_table(NODES_TABLE)?;
        txn.open_table(EVENTS_TABLE)?;
        txn.open_table(SERVICES_TABLE)?;
        txn.open_table(SERVICE_VERSIONS_TABLE)?;
        txn.open_table(CREDENTIALS_TABLE)?;
        txn.open_table(TASK_ATTEMPTS_TABLE)?;
        txn.commit()?;
        Ok(Self {
            db,
            events_kept: super::DEFAULT_EVENTS_KEPT,
        })
    }

    /// The same store keeping only the newest `kept` events (at least one).
    #[must_use]
    pub fn with_events_kept(mut self, kept: u64) -> Self {
        self.events_kept = kept;
        self
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        let cluster_id = txn
            .open_table(META_TABLE)?
            .get(CLUSTER_ID)?
            .map(|id| id.value().to_owned());

        let specs = txn.open_table(TASK_SPEC_TABLE)?;
        let mut tasks = Vec::new();
        for entry in txn.open_table(TASK_STATUS_TABLE)?.iter()? {
            let (key, status) = entry?;
            let status: Task = decode(TASK_STATUS, status.value())?;
            let spec = specs
                .get(key.value())?
                .map(|spec| decode::<TaskSpec>(TASK_SPEC, spec.value()))
                .transpose()?;
            tasks.push(join_task(status, spec)?);
        }

        let nodes = txn
            .open_table(NODES_TABLE)?
            .iter()?
            .map(|entry| decode::<Node>(NODES, entry?.1.value()))
            .collect::<Result<_, _>>()?;

        let last_event_sequence = txn
            .open_table(EVENTS_TABLE)?
            .last()?
            .map_or(0, |(seq, _)| seq.value());

        let services = txn
            .open_table(SERVICES_TABLE)?
            .iter()?
            .map(|entry| decode::<Service>(SERVICES, entry?.1.value()))
            .collect::<Result<_, _>>()?;
        let service_versions = txn
            .open_table(SERVICE_VERSIONS_TABLE)?
            .iter()?
            .map(|entry| decode::<ServiceVersion>(SERVICE_VERSIONS, entry?.1.value()))
            .collect::<Result<_, _>>()?;

        let credentials = txn
            .open_table(CREDENTIALS_TABLE)?
            .iter()?
            .map(|entry| {
                let (key, record) = entry?;
                Ok((key.value().to_owned(), record.value().to_vec()))
            })
            .collect::<Result<_, StoreError>>()?;

        let attempts = txn
            .open_table(TASK_ATTEMPTS_TABLE)?
            .iter()?
            .map(|entry| {
                let (key, record) = entry?;
                let (task, _) = key.value();
                Ok((
                    task_id_of(task),
                    decode::<TaskAttempt>(TASK_ATTEMPTS, record.value())?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;

        Ok(Snapshot {
            cluster_id,
            tasks,
            nodes,
            last_event_sequence,
            services,
            service_versions,
            credentials,
            attempts,
        })
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let batch = Batch::new(writes)?;
        // Dropping the transaction on an early return aborts it, so a failed
        // batch leaves nothing behind.
        let txn = self.db.begin_write()?;
        if let Some(id) = batch.cluster_id {
            txn.open_table(META_TABLE)?.insert(CLUSTER_ID, id)?;
        }
        if !batch.specs.is_empty() {
            let mut table = txn.open_table(TASK_SPEC_TABLE)?;
            for (key, spec) in &batch.specs {
                table.insert(key, spec.encode_to_vec().as_slice())?;
            }
        }
        if !batch.statuses.is_empty() {
            let mut table = txn.open_table(TASK_STATUS_TABLE)?;
            for (key, task) in &batch.statuses {
                table.insert(key, status_record(task).encode_to_vec().as_slice())?;
            }
        }
        if !batch.nodes.is_empty() {
            let mut table = txn.open_table(NODES_TABLE)?;
            for (key, node) in &batch.nodes {
                table.insert(key, node.encode_to_vec().as_slice())?;
            }
        }
        if !batch.services_deleted.is_empty() || !batch.service_versions.is_empty() {
            let mut table = txn.open_table(SERVICE_VERSIONS_TABLE)?;
            for name in &batch.services_deleted {
                // A range delete over exactly `name`'s keys: `(web2, 0)`
                // sorts after `(web, MAX)`, so `web2`'s versions stay.
                table.retain_in((*name, 0)..=(*name, u64::MAX), |_, _| false)?;
            }
            for (key, version) in &batch.service_versions {
                match version {
                    Some(version) => {
                        table.insert(key, version.encode_to_vec().as_slice())?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
            }
        }
        if !batch.services.is_empty() {
            let mut table = txn.open_table(SERVICES_TABLE)?;
            for (name, service) in &batch.services {
                match service {
                    Some(service) => {
                        table.insert(name, service.encode_to_vec().as_slice())?;
                    }
                    None => {
                        table.remove(name)?;
                    }
                }
            }
        }
        if !batch.credentials.is_empty() {
            let mut table = txn.open_table(CREDENTIALS_TABLE)?;
            for (key, record) in &batch.credentials {
                match record {
                    Some(record) => {
                        table.insert(key, *record)?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
            }
        }
        if !batch.attempts.is_empty() {
            let mut table = txn.open_table(TASK_ATTEMPTS_TABLE)?;
            for (key, record) in &batch.attempts {
                table.insert(key, record.encode_to_vec().as_slice())?;
            }
            for (task, bound) in batch.attempts_pruned() {
                if let Some(bound) = bound {
                    // A range delete of this task's attempts too old to keep.
                    table.retain_in((task, 0)..=(task, bound), |_, _| false)?;
                }
            }
        }
        if !batch.events.is_empty() {
            let mut table = txn.open_table(EVENTS_TABLE)?;
            for (seq, event) in &batch.events {
                table.insert(seq, event.encode_to_vec().as_slice())?;
            }
            let newest = table.last()?.map_or(0, |(seq, _)| seq.value());
            if let Some(bound) = events_prune_bound(newest, self.events_kept) {
                // A range delete: only the keys at or below the bound are
                // visited, that is the few events this batch pushed out.
                table.retain_in(..=bound, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS_TABLE)?;
        table
            .range((Bound::Excluded(after), Bound::Unbounded))?
            .take(limit)
            .map(|entry| decode(EVENTS, entry?.1.value()))
            .collect()
    }
}

/// Maps redb's error types to [`StoreError::Backend`]; each step of redb's API
/// has its own error type, so `?` needs one `From` per type.
macro_rules! backend_errors {
    ($($error:ty),* $(,)?) => {
        $(
            impl From<$error> for StoreError {
                fn from(err: $error) -> Self {
                    Self::Backend(err.to_string())
                }
            }
        )*
    };
}

backend_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::store::checks;

    /// A store in a fresh directory; the directory lives as long as the
    /// returned guard.
    fn new_store() -> (TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("orch.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn redb_empty() {
        checks::check_empty(&new_store().1);
    }

    #[test]
    fn redb_round_trip() {
        checks::check_round_trip(&new_store().1);
    }

    #[test]
    fn redb_update_keeps_spec() {
        checks::check_update_keeps_spec(&new_store().1);
    }

    #[test]
    fn redb_coalescing() {
        checks::check_coalescing(&new_store().1);
    }

    #[test]
    fn redb_events_pruning() {
        checks::check_events_pruning(&new_store().1.with_events_kept(checks::EVENTS_KEPT));
    }

    #[test]
    fn redb_events_after_paging() {
        checks::check_events_after_paging(&new_store().1);
    }

    #[test]
    fn redb_bad_id_refuses_batch() {
        checks::check_bad_id_refuses_batch(&new_store().1);
    }

    #[test]
    fn redb_status_without_spec_is_corrupt() {
        checks::check_status_without_spec_is_corrupt(&new_store().1);
    }

    #[test]
    fn redb_service_replaces() {
        checks::check_service_replaces(&new_store().1);
    }

    #[test]
    fn redb_service_delete() {
        checks::check_service_delete(&new_store().1);
    }

    #[test]
    fn redb_service_delete_then_recreate() {
        checks::check_service_delete_then_recreate(&new_store().1);
    }

    #[test]
    fn redb_service_version_delete() {
        checks::check_service_version_delete(&new_store().1);
    }

    #[test]
    fn redb_attempts_are_bounded() {
        checks::check_attempts_are_bounded(&new_store().1);
    }

    #[test]
    fn redb_empty_service_name_refuses_batch() {
        checks::check_empty_service_name_refuses_batch(&new_store().1);
    }

    #[test]
    fn redb_everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.redb");
        let store = RedbStore::open(&path).unwrap();
        let expected = checks::write_everything(&store);
        let events = store.events_after(0, usize::MAX).unwrap();
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), expected);
        assert_eq!(store.events_after(0, usize::MAX).unwrap(), events);
    }

    /// A service's delete is durable too: reopened, the store has neither
    /// the service nor its versions, and still has the other service's.
    #[test]
    fn redb_service_delete_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.redb");
        let store = RedbStore::open(&path).unwrap();
        let mut expected = checks::write_everything(&store);
        store
            .commit(&[Write::ServiceDeleted("web".to_owned())])
            .unwrap();
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        expected
            .services
            .retain(|service| service.spec.as_ref().unwrap().name != "web");
        expected
            .service_versions
            .retain(|version| version.service != "web");
        assert_eq!(store.load().unwrap(), expected);
    }

    #[test]
    fn redb_new_file_loads_empty_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.redb");
        drop(RedbStore::open(&path).unwrap());
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
    }

    /// The status record is the small one: the spec lives only in `task_spec`.
    #[test]
    fn redb_status_record_has_no_spec() {
        let (_dir, store) = new_store();
        let task = checks::write_everything(&store).tasks.remove(0);
        let key = crate::store::key_of("task", &task.id).unwrap();

        let txn = store.db.begin_read().unwrap();
        let status = txn.open_table(TASK_STATUS_TABLE).unwrap();
        let status: Task = decode(TASK_STATUS, status.get(key).unwrap().unwrap().value()).unwrap();
        assert_eq!(status.spec, None);
        let spec = txn.open_table(TASK_SPEC_TABLE).unwrap();
        let spec: TaskSpec = decode(TASK_SPEC, spec.get(key).unwrap().unwrap().value()).unwrap();
        assert_eq!(Some(spec), task.spec);
    }

    /// A service or version record that does not decode makes `load` fail,
    /// naming its table.
    #[test]
    fn redb_undecodable_service_records_are_corrupt() {
        /// Not a protobuf message: field 1 with the reserved wire type 7.
        const GARBAGE: &[u8] = &[0x0f, 0xff];
        for table in [SERVICES, SERVICE_VERSIONS] {
            let (_dir, store) = new_store();
            let txn = store.db.begin_write().unwrap();
            if table == SERVICES {
                let mut services = txn.open_table(SERVICES_TABLE).unwrap();
                services.insert("web", GARBAGE).unwrap();
            } else {
                let mut versions = txn.open_table(SERVICE_VERSIONS_TABLE).unwrap();
                versions.insert(("web", 1), GARBAGE).unwrap();
            }
            txn.commit().unwrap();

            let result = store.load();
            assert!(
                matches!(result, Err(StoreError::Corrupt { table: t, .. }) if t == table),
                "{table}: {result:?}"
            );
        }
    }
}
