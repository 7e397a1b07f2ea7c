//! Durable state: the [`Store`] trait and its implementations.
//!
//! The store owns nothing but bytes on disk (or in memory): it never decides,
//! never schedules and knows no gRPC. The manager keeps the live state in
//! memory and sends every change here, in order, as a batch of [`Write`]s that
//! one transaction commits. A change is acknowledged to a client only after the
//! batch that holds it is committed, so an acknowledged task survives a crash.
//!
//! Layout (redb): tasks are keyed by their UUID v7 bytes, so keys arrive in
//! time order and inserts append. A task's spec is written once, when it is
//! created, apart from its status, which changes often and stays small.
//! Services are keyed by their name and their versions by (name, version), so
//! that a service's versions sit together and its delete is one range delete.
//! A task's attempts are keyed by (task, attempt), one small record each, so
//! that a change of the current attempt rewrites that record alone and the
//! oldest beyond [`ATTEMPTS_KEPT`] go in one range delete.
//!
//! Both implementations share the rules that are real logic, written once
//! here: how a batch is coalesced (`Batch`, deletes included), how ids become
//! keys and which names are refused, how a task is joined back from its spec
//! and status, and which events are pruned.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod faulty;
pub mod memory;
pub mod redb;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use orch::v1::{Event, Node, Service, ServiceVersion, Task, TaskAttempt, TaskSpec};
use uuid::Uuid;

pub use self::faulty::FaultyStore;
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

/// How many of the latest events a store keeps unless told otherwise
/// (`Config::events_kept`, `--events-kept`); older ones are deleted as new
/// ones are written. A million covers a run of some 300,000 tasks (a task
/// that is placed and runs makes three: scheduled, starting, running) and
/// costs about 140 MB of the store's file (a task event is some 115 bytes).
pub const DEFAULT_EVENTS_KEPT: u64 = 1_000_000;

/// How many attempts of each task the store keeps, the newest: writing
/// attempt `n` deletes those up to `n - ATTEMPTS_KEPT`.
pub const ATTEMPTS_KEPT: u64 = 20;

/// One change to durable state.
///
/// The records are boxed: a batch of writes is a vector that the manager
/// grows, moves and frees by the ten thousand, and a write that is a pointer
/// rather than a 700-byte task keeps that cheap.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new task: its spec and its first status. The spec is never written again.
    TaskCreated(Box<Task>),
    /// A task's new status. Its `spec` field is ignored (it may be `None`).
    /// The manager always writes the record of the task's current attempt
    /// (`Write::Attempt`) in the same commit, so a store may keep the two
    /// in one record (the etcd store does).
    TaskUpdated(Box<Task>),
    /// A node's registration and last known state.
    Node(Box<Node>),
    /// An event, by its sequence number.
    Event(Box<Event>),
    /// The cluster's id, written once when the manager first starts.
    ClusterId(String),
    /// A service's record (spec, version, rollout), keyed by its name; replaces the stored one.
    Service(Box<Service>),
    /// One version of a service's template, keyed by (service name, version); written once.
    ServiceVersion(Box<ServiceVersion>),
    /// A service was deleted: its record and every stored version of it go.
    ServiceDeleted(String),
    /// One version of a service is no longer kept (the manager keeps the last 10).
    ServiceVersionDeleted {
        /// The service's name.
        service: String,
        /// The version that goes.
        version: u64,
    },
    /// One attempt of a task as it stands, keyed by (task id, attempt);
    /// replaces the stored record of that attempt, and deletes those older
    /// than the newest [`ATTEMPTS_KEPT`].
    Attempt {
        /// The task's id.
        task_id: String,
        /// The attempt's record.
        record: Box<TaskAttempt>,
    },
    /// A credential record of the [`auth`](crate::auth) module (a client
    /// token's hash, a join token), opaque to the store; `None` deletes it.
    Credential {
        /// The record's key, unique among credentials.
        key: String,
        /// The encoded record, or `None` to delete the key.
        record: Option<Vec<u8>>,
    },
}

/// Everything the store holds, read back at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The cluster's id, if one was ever written.
    pub cluster_id: Option<String>,
    /// Every task, spec included, ordered by id (that is, by submission time).
    pub tasks: Vec<Task>,
    /// Every node, ordered by id.
    pub nodes: Vec<Node>,
    /// The highest event sequence number written, or 0.
    pub last_event_sequence: u64,
    /// Every service, ordered by name.
    pub services: Vec<Service>,
    /// Every kept version, ordered by service name, then version.
    pub service_versions: Vec<ServiceVersion>,
    /// Every credential record, ordered by key.
    pub credentials: Vec<(String, Vec<u8>)>,
    /// Every kept attempt with its task's id, ordered by task id, then attempt.
    pub attempts: Vec<(String, TaskAttempt)>,
}

/// Why the store failed. Every store error is reported to clients as
/// `UNAVAILABLE`: the request was not stored and may be retried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("store: {0}")]
    Backend(String),
    /// The write was refused because this manager no longer leads: another
    /// one was elected since its term began (etcd only).
    #[error("store: not written: {0}")]
    Fenced(String),
    /// A stored record could not be decoded.
    #[error("store: corrupt record in {table}: {detail}")]
    Corrupt {
        /// The table holding the record.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Durable state. Implementations are synchronous: the manager calls them from
/// one dedicated writer thread (and once at start-up to load).
pub trait Store: Send + Sync + 'static {
    /// Reads everything back.
    ///
    /// # Errors
    /// If the backend fails or a record cannot be decoded.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Applies `writes` in order, in one transaction, and returns once it is
    /// durable. Either all of them are applied or none.
    ///
    /// # Errors
    /// If the backend fails; nothing of the batch is applied then.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// The stored events with a sequence number above `after`, oldest first,
    /// at most `limit` of them.
    ///
    /// # Errors
    /// If the backend fails or a record cannot be decoded.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
}

// Table names, shared by both implementations so that a `Corrupt` error names
// the same table whichever store reported it.
const META: &str = "meta";
const TASK_SPEC: &str = "task_spec";
const TASK_STATUS: &str = "task_status";
const NODES: &str = "nodes";
const EVENTS: &str = "events";
const SERVICES: &str = "services";
const SERVICE_VERSIONS: &str = "service_versions";
const CREDENTIALS: &str = "credentials";
const TASK_ATTEMPTS: &str = "task_attempts";

/// The spec stored for a `TaskCreated` whose task carries none. The manager
/// always sets one; storing an empty spec rather than failing keeps a commit
/// from being refused for a field the store does not interpret.
static EMPTY_SPEC: LazyLock<TaskSpec> = LazyLock::new(TaskSpec::default);

/// A batch of [`Write`]s reduced to what must be stored: one record per key,
/// the last one written. The manager writes a task's status at every step, so
/// a busy batch often holds several statuses of one task; only the last counts.
///
/// Deletes coalesce the same way, as tombstones (`None`): a key's last write
/// says whether it is stored or removed. A store applies a batch in this
/// order: first the range deletes of `services_deleted`, then every other
/// record and tombstone, which is the order of the writes once coalesced (a
/// version written before its service's delete was dropped from the batch).
///
/// Building it checks every id and name first, so a batch with a bad one is
/// refused before anything is written.
#[derive(Debug, Default)]
struct Batch<'a> {
    /// The cluster id, if the batch sets it.
    cluster_id: Option<&'a str>,
    /// The spec of each task created in the batch, by task key.
    specs: BTreeMap<u128, &'a TaskSpec>,
    /// The last status of each task created or updated in the batch, by task
    /// key. Its `spec` is still set; [`status_record`] drops it.
    statuses: BTreeMap<u128, &'a Task>,
    /// The last state of each node written, by node key.
    nodes: BTreeMap<u128, &'a Node>,
    /// The events, by sequence.
    events: BTreeMap<u64, &'a Event>,
    /// The services deleted in the batch, by name: every version of theirs
    /// stored before the batch goes, whatever the batch writes after.
    services_deleted: BTreeSet<&'a str>,
    /// The last write of each service, by name: its record, or `None` if the
    /// last write deleted it.
    services: BTreeMap<&'a str, Option<&'a Service>>,
    /// The last write of each version, by service name and version: the
    /// record, or `None` if it was deleted. Holds only what was written after
    /// the service's last `ServiceDeleted` in the batch.
    service_versions: BTreeMap<(&'a str, u64), Option<&'a ServiceVersion>>,
    /// The last write of each credential, by key: its record, or `None` if
    /// the last write deleted it.
    credentials: BTreeMap<&'a str, Option<&'a [u8]>>,
    /// The last record of each attempt written, by (task key, attempt).
    attempts: BTreeMap<(u128, u64), &'a TaskAttempt>,
}

impl<'a> Batch<'a> {
    /// Coalesces `writes`, applied in order: a later write of a key replaces
    /// an earlier one.
    fn new(writes: &'a [Write]) -> Result<Self, StoreError> {
        let mut batch = Self::default();
        for write in writes {
            match write {
                Write::TaskCreated(task) => {
                    let key = key_of("task", &task.id)?;
                    batch
                        .specs
                        .insert(key, task.spec.as_ref().unwrap_or(&EMPTY_SPEC));
                    batch.statuses.insert(key, task);
                }
                Write::TaskUpdated(task) => {
                    batch.statuses.insert(key_of("task", &task.id)?, task);
                }
                Write::Node(node) => {
                    batch.nodes.insert(key_of("node", &node.id)?, node);
                }
                Write::Event(event) => {
                    batch.events.insert(event.sequence, event);
                }
                Write::ClusterId(id) => batch.cluster_id = Some(id),
                Write::Service(service) => {
                    let name = service.spec.as_ref().map_or("", |spec| spec.name.as_str());
                    let name = service_name(name, || format!("service {:?}", service.id))?;
                    batch.services.insert(name, Some(service));
                }
                Write::ServiceVersion(version) => {
                    let name = service_name(&version.service, || {
                        format!("version {} of a service", version.version)
                    })?;
                    batch
                        .service_versions
                        .insert((name, version.version), Some(version));
                }
                Write::ServiceDeleted(name) => {
                    let name = service_name(name, || "a service delete".to_owned())?;
                    batch.services.insert(name, None);
                    batch.services_deleted.insert(name);
                    // The versions this batch wrote so far go with the ones
                    // stored; those written after the delete are kept.
                    let written: Vec<_> = batch
                        .service_versions
                        .range((name, 0)..=(name, u64::MAX))
                        .map(|(key, _)| *key)
                        .collect();
                    for key in written {
                        batch.service_versions.remove(&key);
                    }
                }
                Write::Credential { key, record } => {
                    batch.credentials.insert(key, record.as_deref());
                }
                Write::Attempt { task_id, record } => {
                    let key = key_of("task", task_id)?;
                    batch.attempts.insert((key, record.attempt), record);
                }
                Write::ServiceVersionDeleted { service, version } => {
                    let name = service_name(service, || {
                        format!("a delete of version {version} of a service")
                    })?;
                    batch.service_versions.insert((name, *version), None);
                }
            }
        }
        Ok(batch)
    }
}

/// A service name as a key: any non-empty string. The store does not check
/// the DNS-label rule (`orch::validate` does), only what would make the key
/// meaningless. `what` names the write, for the error.
fn service_name(name: &str, what: impl FnOnce() -> String) -> Result<&str, StoreError> {
    if name.is_empty() {
        return Err(StoreError::Backend(format!(
            "{} has an empty service name",
            what()
        )));
    }
    Ok(name)
}

/// The key of a task or node: its UUID as a big-endian `u128`, so that keys
/// order like the UUIDs' bytes, and v7 ids order by creation time.
fn key_of(kind: &str, id: &str) -> Result<u128, StoreError> {
    Uuid::parse_str(id)
        .map(|uuid| uuid.as_u128())
        .map_err(|err| StoreError::Backend(format!("{kind} id {id:?} is not a UUID: {err}")))
}

/// What the `task_status` table holds: the task without its spec, which is
/// stored once, apart, and would otherwise be rewritten at every update.
fn status_record(task: &Task) -> Cow<'_, Task> {
    if task.spec.is_none() {
        return Cow::Borrowed(task);
    }
    let mut status = task.clone();
    status.spec = None;
    Cow::Owned(status)
}

/// Joins a stored status with its stored spec back into a task.
fn join_task(mut status: Task, spec: Option<TaskSpec>) -> Result<Task, StoreError> {
    let Some(spec) = spec else {
        return Err(StoreError::Corrupt {
            table: TASK_SPEC,
            detail: format!("task {} has a status but no spec", status.id),
        });
    };
    status.spec = Some(spec);
    Ok(status)
}

impl Batch<'_> {
    /// Each task whose attempts the batch writes, with the highest attempt
    /// to delete so that the newest [`ATTEMPTS_KEPT`] stay (`None` while
    /// fewer were written).
    fn attempts_pruned(&self) -> BTreeMap<u128, Option<u64>> {
        let mut newest: BTreeMap<u128, u64> = BTreeMap::new();
        for &(task, attempt) in self.attempts.keys() {
            let n = newest.entry(task).or_insert(attempt);
            *n = (*n).max(attempt);
        }
        newest
            .into_iter()
            .map(|(task, n)| (task, n.checked_sub(ATTEMPTS_KEPT)))
            .collect()
    }
}

/// Decodes a record of `table`; a record that does not decode is corrupt.
fn decode<M: prost::Message + Default>(table: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|err| StoreError::Corrupt {
        table,
        detail: err.to_string(),
    })
}

/// A task key back as the task's id, as the manager writes ids.
fn task_id_of(key: u128) -> String {
    Uuid::from_u128(key).to_string()
}

/// The highest event sequence to delete once `newest` is stored, so that the
/// newest `kept` stay (at least one, so the numbering survives a restart);
/// `None` while fewer than that were ever written.
fn events_prune_bound(newest: u64, kept: u64) -> Option<u64> {
    newest.checked_sub(kept.max(1))
}

/// Behaviours every [`Store`] must have, written once as `check_*` functions
/// and run against each implementation by its own tests.
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod checks {
    use std::collections::HashMap;

    use orch::v1::{
        DesiredState, FailureAction, NodeEvent, NodeMetrics, NodeState, Placement, PortMapping,
        Protocol, ReplicatedMode, Resources, RestartCondition, RestartPolicy, Rollout,
        RolloutState, ServiceSpec, TaskEvent, TaskState, UpdateConfig, UpdateOrder, event,
        service_spec,
    };
    use prost_types::{Duration, Timestamp};

    use super::*;

    /// A fixed point in time, so that ids and timestamps are reproducible.
    const EPOCH: i64 = 1_750_000_000;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: EPOCH + seconds,
            nanos: 250_000_000,
        })
    }

    /// A UUID v7 minted `n` seconds after [`EPOCH`]: ids of a higher `n`
    /// order after, as the manager's do. Its "random" bits are fixed, so that
    /// `id(n)` is the same at every call.
    fn id(n: u64) -> String {
        let millis = (EPOCH.unsigned_abs() + n) * 1_000;
        let mut random = [0x5a; 10];
        random[2..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(millis, &random)
            .into_uuid()
            .to_string()
    }

    /// A task just accepted: pending, with a full spec.
    pub(super) fn task(n: u64) -> Task {
        let seconds = i64::try_from(n).unwrap_or(i64::MAX);
        Task {
            id: id(n),
            spec: Some(TaskSpec {
                name: format!("web-{n}"),
                image: "nginx:1.27".to_owned(),
                command: vec![
                    "nginx".to_owned(),
                    "-g".to_owned(),
                    "daemon off;".to_owned(),
                ],
                env: HashMap::from([("MODE".to_owned(), "prod".to_owned())]),
                milli_cpus: Some(500),
                memory_bytes: Some(64 * 1024 * 1024),
                disk_bytes: None,
                ports: vec![PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp.into(),
                }],
                restart: Some(RestartPolicy {
                    condition: RestartCondition::OnFailure.into(),
                    max_restarts: 3,
                }),
                labels: HashMap::from([("team".to_owned(), "edge".to_owned())]),
                node_selector: HashMap::from([("zone".to_owned(), "a".to_owned())]),
                stop_grace_period: Some(Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                health_check: Some(orch::v1::HealthCheck {
                    probe: Some(orch::v1::health_check::Probe::Http(orch::v1::HttpProbe {
                        port: 80,
                        path: "/health".to_owned(),
                    })),
                    interval: Some(Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    retries: Some(2),
                    ..Default::default()
                }),
            }),
            desired_state: DesiredState::Running.into(),
            state: TaskState::Pending.into(),
            attempt: 1,
            message: "waiting for a node".to_owned(),
            created_at: at(seconds),
            updated_at: at(seconds),
            ..Task::default()
        }
    }

    /// `task` after it ran on `node` and exited with `code`; its spec is
    /// dropped, as the manager may do in a `TaskUpdated`.
    fn finished(task: &Task, node: &Node, code: i32) -> Task {
        Task {
            spec: None,
            state: if code == 0 {
                TaskState::Completed
            } else {
                TaskState::Failed
            }
            .into(),
            node_id: node.id.clone(),
            container_id: "4f2a9c81d0e3".to_owned(),
            exit_code: Some(code),
            message: format!("exited with code {code}"),
            updated_at: at(120),
            started_at: at(60),
            finished_at: at(120),
            ..task.clone()
        }
    }

    pub(super) fn node(n: u64) -> Node {
        Node {
            id: id(1_000 + n),
            name: format!("worker-{n}"),
            address: format!("10.0.0.{n}:7071"),
            labels: HashMap::from([("zone".to_owned(), "a".to_owned())]),
            state: NodeState::Ready.into(),
            capacity: Some(Resources {
                milli_cpus: 4_000,
                memory_bytes: 8 << 30,
                disk_bytes: 100 << 30,
            }),
            allocated: Some(Resources {
                milli_cpus: 500,
                memory_bytes: 64 << 20,
                disk_bytes: 0,
            }),
            usage: Some(NodeMetrics {
                cpu_percent: 12.5,
                memory_used_bytes: 2 << 30,
                memory_total_bytes: 8 << 30,
                disk_free_bytes: 60 << 30,
                load_1m: 0.5,
                load_5m: 0.4,
                load_15m: 0.3,
            }),
            last_heartbeat: at(30),
            registered_at: at(0),
            task_count: 1,
            draining: n % 2 == 1,
            certificate_expires_at: at(86_400),
        }
    }

    /// Event `sequence`, alternating task and node events.
    fn event(sequence: u64) -> Event {
        let kind = if sequence.is_multiple_of(2) {
            event::Kind::Task(TaskEvent {
                task_id: id(sequence),
                attempt: 1,
                state: TaskState::Running.into(),
                desired_state: DesiredState::Running.into(),
                node_id: id(1_001),
                message: "container started".to_owned(),
                health: orch::v1::HealthState::Healthy.into(),
                service: "web".to_owned(),
                slot: 2,
                name: "web.2".to_owned(),
            })
        } else {
            event::Kind::Node(NodeEvent {
                node_id: id(1_001),
                name: "worker-1".to_owned(),
                state: NodeState::Down.into(),
                message: "heartbeats stopped".to_owned(),
            })
        };
        Event {
            sequence,
            time: at(i64::try_from(sequence).unwrap_or(i64::MAX)),
            kind: Some(kind),
        }
    }

    pub(super) fn events(sequences: std::ops::RangeInclusive<u64>) -> Vec<Write> {
        sequences
            .map(|seq| Write::Event(Box::new(event(seq))))
            .collect()
    }

    pub(super) fn sequences(events: &[Event]) -> Vec<u64> {
        events.iter().map(|event| event.sequence).collect()
    }

    /// The template of `version` of a service: a task spec without a name or
    /// node selector, its image telling the versions apart.
    fn template(version: u64) -> TaskSpec {
        TaskSpec {
            name: String::new(),
            image: format!("nginx:1.{version}"),
            node_selector: HashMap::new(),
            ..task(version).spec.unwrap()
        }
    }

    fn placement() -> Placement {
        Placement {
            constraints: HashMap::from([("zone".to_owned(), "a".to_owned())]),
        }
    }

    /// Service `name` (id `n`) at `version`, rolling out to it from the one
    /// before.
    fn service(n: u64, name: &str, version: u64) -> Service {
        Service {
            id: id(2_000 + n),
            spec: Some(ServiceSpec {
                name: name.to_owned(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: Some(3),
                })),
                task: Some(template(version)),
                placement: Some(placement()),
                update: Some(UpdateConfig {
                    parallelism: Some(2),
                    delay: Some(Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                    order: UpdateOrder::StartFirst.into(),
                    monitor: Some(Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    failure_action: FailureAction::Rollback.into(),
                    max_failure_ratio: Some(0.25),
                }),
            }),
            version,
            rollout: Some(Rollout {
                state: RolloutState::RollingOut.into(),
                message: "1 of 3 tasks updated".to_owned(),
                from_version: version.saturating_sub(1),
                to_version: version,
                started_at: at(200),
                finished_at: None,
                updated: 1,
                failed: 0,
                total: 3,
                reason: String::new(),
                waiting: String::new(),
            }),
            created_at: at(100),
            updated_at: at(200),
            desired: 3,
            running: 3,
            ..Service::default()
        }
    }

    fn version(name: &str, version: u64) -> ServiceVersion {
        ServiceVersion {
            service: name.to_owned(),
            version,
            task: Some(template(version)),
            placement: Some(placement()),
            created_at: at(100 + i64::try_from(version).unwrap()),
        }
    }

    fn service_write(n: u64, name: &str, number: u64) -> Write {
        Write::Service(Box::new(service(n, name, number)))
    }

    fn version_write(name: &str, number: u64) -> Write {
        Write::ServiceVersion(Box::new(version(name, number)))
    }

    /// The stored versions, as (service, version) pairs.
    fn version_keys(snapshot: &Snapshot) -> Vec<(&str, u64)> {
        snapshot
            .service_versions
            .iter()
            .map(|version| (version.service.as_str(), version.version))
            .collect()
    }

    fn credential(key: &str, record: Option<&[u8]>) -> Write {
        Write::Credential {
            key: key.into(),
            record: record.map(<[u8]>::to_vec),
        }
    }

    /// A new store is empty, and an empty batch changes nothing.
    pub(super) fn check_empty(store: &impl Store) {
        assert_eq!(store.load().unwrap(), Snapshot::default());
        store.commit(&[]).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
        assert_eq!(store.events_after(0, 10).unwrap(), Vec::<Event>::new());
    }

    /// Writes a bit of everything (tasks, services and versions written out
    /// of order, in two batches) and returns what `load` must give back. The
    /// services are `web` (versions 1, 2 and 10, which must order after 2)
    /// and `web2`, whose name `web` is a prefix of.
    pub(super) fn write_everything(store: &impl Store) -> Snapshot {
        let (t1, t2, t3) = (task(1), task(2), task(3));
        let (n1, n2) = (node(1), node(2));
        let (web, web2) = (service(1, "web", 10), service(2, "web2", 1));
        store
            .commit(&[
                Write::ClusterId(id(0)),
                Write::Node(Box::new(n2.clone())),
                Write::TaskCreated(Box::new(t3.clone())),
                Write::TaskCreated(Box::new(t1.clone())),
                Write::Event(Box::new(event(1))),
                Write::Event(Box::new(event(2))),
                Write::Service(Box::new(web2.clone())),
                version_write("web2", 1),
                version_write("web", 10),
                version_write("web", 2),
                credential("token/b", Some(b"two")),
                credential("token/a", Some(b"one")),
                credential("join/gone", Some(b"x")),
                attempt_write(3, 2, "second"),
                attempt_write(3, 1, "first"),
            ])
            .unwrap();
        store
            .commit(&[
                Write::Node(Box::new(n1.clone())),
                Write::TaskCreated(Box::new(t2.clone())),
                Write::Event(Box::new(event(3))),
                Write::Service(Box::new(web.clone())),
                version_write("web", 1),
                credential("join/gone", None),
                credential("token/a", Some(b"one, rewritten")),
                attempt_write(1, 1, "only"),
                attempt_write(3, 2, "second, rewritten"),
            ])
            .unwrap();
        Snapshot {
            cluster_id: Some(id(0)),
            tasks: vec![t1, t2, t3],
            nodes: vec![n1, n2],
            last_event_sequence: 3,
            services: vec![web, web2],
            service_versions: vec![
                version("web", 1),
                version("web", 2),
                version("web", 10),
                version("web2", 1),
            ],
            credentials: vec![
                ("token/a".into(), b"one, rewritten".to_vec()),
                ("token/b".into(), b"two".to_vec()),
            ],
            attempts: vec![
                (id(1), attempt(1, "only")),
                (id(3), attempt(1, "first")),
                (id(3), attempt(2, "second, rewritten")),
            ],
        }
    }

    /// Attempt `n` of a task, failed with code `n` on a node, its message `why`.
    fn attempt(n: u64, why: &str) -> TaskAttempt {
        let seconds = i64::try_from(n).unwrap();
        TaskAttempt {
            attempt: n,
            node_id: id(1_001),
            container_id: format!("c{n}"),
            started_at: at(seconds * 10),
            finished_at: at(seconds * 10 + 5),
            exit_code: Some(i32::try_from(n).unwrap()),
            message: why.to_owned(),
            state: TaskState::Failed.into(),
            health: vec![orch::v1::HealthChange {
                time: at(seconds * 10 + 1),
                health: orch::v1::HealthState::Healthy.into(),
            }],
        }
    }

    pub(super) fn attempt_write(task: u64, n: u64, why: &str) -> Write {
        Write::Attempt {
            task_id: id(task),
            record: Box::new(attempt(n, why)),
        }
    }

    /// A task keeps its newest [`ATTEMPTS_KEPT`] attempts: writing attempt
    /// `n` deletes the ones up to `n - ATTEMPTS_KEPT`, of that task only,
    /// also when the older ones were written in the same batch.
    pub(super) fn check_attempts_are_bounded(store: &impl Store) {
        store.commit(&[attempt_write(2, 1, "other task")]).unwrap();
        for n in 1..=25 {
            store.commit(&[attempt_write(1, n, "ran")]).unwrap();
        }
        let kept = |store: &dyn Store, task: u64| -> Vec<u64> {
            store
                .load()
                .unwrap()
                .attempts
                .iter()
                .filter(|(t, _)| *t == id(task))
                .map(|(_, a)| a.attempt)
                .collect()
        };
        assert_eq!(kept(store, 1), (6..=25).collect::<Vec<_>>());
        assert_eq!(kept(store, 2), [1]);
        // One batch of many attempts keeps the newest too.
        let batch: Vec<Write> = (1..=30).map(|n| attempt_write(3, n, "ran")).collect();
        store.commit(&batch).unwrap();
        assert_eq!(kept(store, 3), (11..=30).collect::<Vec<_>>());
        assert_eq!(kept(store, 2), [1]);
    }

    /// Tasks (with their specs), nodes, the cluster id, events, services and
    /// their versions come back as written: tasks and nodes ordered by id,
    /// services by name, versions by service name, then version.
    pub(super) fn check_round_trip(store: &impl Store) {
        let expected = write_everything(store);
        assert_eq!(store.load().unwrap(), expected);
        assert_eq!(
            store.events_after(0, 100).unwrap(),
            vec![event(1), event(2), event(3)]
        );
    }

    /// An update replaces the status and keeps the spec written at creation.
    pub(super) fn check_update_keeps_spec(store: &impl Store) {
        let (created, worker) = (task(1), node(1));
        store
            .commit(&[Write::TaskCreated(Box::new(created.clone()))])
            .unwrap();
        let done = finished(&created, &worker, 137);
        store
            .commit(&[Write::TaskUpdated(Box::new(done.clone()))])
            .unwrap();

        let expected = Task {
            spec: created.spec.clone(),
            ..done
        };
        assert_eq!(store.load().unwrap().tasks, vec![expected]);
    }

    /// Within one batch, the last write of a task or node wins, and the spec
    /// comes from the `TaskCreated` even when updates follow it.
    pub(super) fn check_coalescing(store: &impl Store) {
        let (created, worker) = (task(1), node(1));
        let running = Task {
            spec: None,
            state: TaskState::Running.into(),
            node_id: worker.id.clone(),
            started_at: at(60),
            ..created.clone()
        };
        let done = finished(&created, &worker, 0);
        let down = Node {
            state: NodeState::Down.into(),
            ..worker.clone()
        };
        store
            .commit(&[
                Write::TaskCreated(Box::new(created.clone())),
                Write::Node(Box::new(worker)),
                Write::TaskUpdated(Box::new(running)),
                Write::Node(Box::new(down.clone())),
                Write::TaskUpdated(Box::new(done.clone())),
            ])
            .unwrap();

        let snapshot = store.load().unwrap();
        let expected = Task {
            spec: created.spec,
            ..done
        };
        assert_eq!(snapshot.tasks, vec![expected]);
        assert_eq!(snapshot.nodes, vec![down]);
    }

    /// The events a store under test keeps (`with_events_kept`).
    pub(super) const EVENTS_KEPT: u64 = 1_000;

    /// Only the newest `EVENTS_KEPT` events stay, whether one batch or later
    /// ones push the old out.
    pub(super) fn check_events_pruning(store: &impl Store) {
        let written = EVENTS_KEPT + 5;
        store.commit(&events(1..=written)).unwrap();
        let kept = store.events_after(0, usize::MAX).unwrap();
        assert_eq!(kept.len(), usize::try_from(EVENTS_KEPT).unwrap());
        assert_eq!(kept.first().map(|e| e.sequence), Some(6));
        assert_eq!(kept.last(), Some(&event(written)));
        assert_eq!(store.load().unwrap().last_event_sequence, written);

        store.commit(&events(written + 1..=written + 3)).unwrap();
        let kept = store.events_after(0, usize::MAX).unwrap();
        assert_eq!(kept.len(), usize::try_from(EVENTS_KEPT).unwrap());
        assert_eq!(kept.first().map(|e| e.sequence), Some(9));
        assert_eq!(store.load().unwrap().last_event_sequence, written + 3);
    }

    /// `events_after` pages through the events, oldest first.
    pub(super) fn check_events_after_paging(store: &impl Store) {
        store.commit(&events(1..=25)).unwrap();
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let page = store.events_after(after, 10).unwrap();
            let Some(last) = page.last() else { break };
            after = last.sequence;
            pages.push(sequences(&page));
        }
        assert_eq!(
            pages,
            vec![
                (1..=10).collect::<Vec<_>>(),
                (11..=20).collect(),
                (21..=25).collect()
            ]
        );
        assert_eq!(sequences(&store.events_after(17, 3).unwrap()), [18, 19, 20]);
        assert!(store.events_after(5, 0).unwrap().is_empty());
        assert!(store.events_after(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.events_after(0, 1).unwrap(), vec![event(1)]);
    }

    /// A batch with an id that is not a UUID is refused whole.
    pub(super) fn check_bad_id_refuses_batch(store: &impl Store) {
        let before = write_everything(store);
        let bad = Task {
            id: "not-a-uuid".to_owned(),
            ..task(9)
        };
        let result = store.commit(&[
            Write::TaskCreated(Box::new(task(8))),
            Write::Event(Box::new(event(4))),
            Write::TaskCreated(Box::new(bad)),
        ]);
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        assert_eq!(store.load().unwrap(), before);

        let result = store.commit(&[Write::Node(Box::new(Node {
            id: "worker-1".to_owned(),
            ..node(1)
        }))]);
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        assert_eq!(store.load().unwrap(), before);
    }

    /// A status whose spec was never written makes `load` fail: the store
    /// does not invent a spec.
    pub(super) fn check_status_without_spec_is_corrupt(store: &impl Store) {
        store
            .commit(&[Write::TaskUpdated(Box::new(task(1)))])
            .unwrap();
        let result = store.load();
        assert!(
            matches!(
                result,
                Err(StoreError::Corrupt {
                    table: TASK_SPEC,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    /// A later write of a service replaces its record, in a later batch or
    /// in the same one; its versions are not touched.
    pub(super) fn check_service_replaces(store: &impl Store) {
        let before = write_everything(store);
        let paused = Service {
            rollout: Some(Rollout {
                state: RolloutState::Paused.into(),
                message: "2 tasks failed; paused".to_owned(),
                finished_at: at(300),
                failed: 2,
                ..service(1, "web", 11).rollout.unwrap()
            }),
            ..service(1, "web", 11)
        };
        store
            .commit(&[Write::Service(Box::new(paused.clone()))])
            .unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.services, vec![paused, before.services[1].clone()]);
        assert_eq!(snapshot.service_versions, before.service_versions);

        let scaled = Service {
            desired: 5,
            ..service(2, "web2", 1)
        };
        store
            .commit(&[
                service_write(2, "web2", 2),
                Write::Service(Box::new(scaled.clone())),
            ])
            .unwrap();
        assert_eq!(store.load().unwrap().services[1], scaled);
    }

    /// A delete takes the service and every version of it, and nothing of
    /// `web2`, whose name `web` is a prefix of (nor the other way round).
    /// Deleting a service that is not stored changes nothing.
    pub(super) fn check_service_delete(store: &impl Store) {
        /// A delete, in a batch of its own, and what stays after it.
        struct Case {
            deleted: &'static str,
            services: &'static [&'static str],
            versions: &'static [(&'static str, u64)],
        }
        let before = write_everything(store);
        let cases = [
            Case {
                deleted: "we",
                services: &["web", "web2"],
                versions: &[("web", 1), ("web", 2), ("web", 10), ("web2", 1)],
            },
            Case {
                deleted: "web",
                services: &["web2"],
                versions: &[("web2", 1)],
            },
            Case {
                deleted: "web2",
                services: &[],
                versions: &[],
            },
        ];
        for Case {
            deleted,
            services,
            versions,
        } in cases
        {
            store
                .commit(&[Write::ServiceDeleted(deleted.to_owned())])
                .unwrap();
            let snapshot = store.load().unwrap();
            let names: Vec<_> = snapshot
                .services
                .iter()
                .map(|service| service.spec.as_ref().unwrap().name.as_str())
                .collect();
            assert_eq!(names, services, "after deleting {deleted}");
            assert_eq!(
                version_keys(&snapshot),
                versions,
                "after deleting {deleted}"
            );
            assert_eq!(snapshot.tasks, before.tasks);
            assert_eq!(snapshot.nodes, before.nodes);
        }

        // The prefix the other way: deleting `web2` keeps `web`'s versions.
        store
            .commit(&[
                service_write(1, "web", 1),
                version_write("web", 1),
                version_write("web2", 1),
                Write::ServiceDeleted("web2".to_owned()),
            ])
            .unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.services, vec![service(1, "web", 1)]);
        assert_eq!(snapshot.service_versions, vec![version("web", 1)]);
    }

    /// Within one batch, writes apply in order: a delete after a write
    /// removes the service, a write after a delete recreates it, and the
    /// versions written after the delete are kept while those stored or
    /// written before it go.
    pub(super) fn check_service_delete_then_recreate(store: &impl Store) {
        let before = write_everything(store);
        let recreated = Service {
            id: id(2_999),
            ..service(1, "web", 1)
        };
        store
            .commit(&[
                version_write("web", 11),
                Write::ServiceDeleted("web".to_owned()),
                Write::Service(Box::new(recreated.clone())),
                version_write("web", 1),
                service_write(3, "api", 1),
                version_write("api", 1),
                Write::ServiceDeleted("api".to_owned()),
            ])
            .unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(
            snapshot.services,
            vec![recreated, before.services[1].clone()]
        );
        assert_eq!(version_keys(&snapshot), [("web", 1), ("web2", 1)]);
    }

    /// A version delete takes that one version, whether it was stored before
    /// or written earlier in the batch; a version written after its delete
    /// is kept, and deleting one that is not stored changes nothing.
    pub(super) fn check_service_version_delete(store: &impl Store) {
        let before = write_everything(store);
        let delete = |version: u64| Write::ServiceVersionDeleted {
            service: "web".to_owned(),
            version,
        };
        store
            .commit(&[
                delete(1),
                version_write("web", 11),
                version_write("web", 12),
                delete(11),
                delete(2),
                version_write("web", 2),
                delete(7),
            ])
            .unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(
            version_keys(&snapshot),
            [("web", 2), ("web", 10), ("web", 12), ("web2", 1)]
        );
        assert_eq!(snapshot.services, before.services);
    }

    /// A service write with an empty name (or none) is refused with the
    /// whole of its batch, and the store is left as it was.
    pub(super) fn check_empty_service_name_refuses_batch(store: &impl Store) {
        let before = write_everything(store);
        let bad = [
            service_write(4, "", 1),
            Write::Service(Box::new(Service {
                spec: None,
                ..service(4, "db", 1)
            })),
            version_write("", 1),
            Write::ServiceDeleted(String::new()),
            Write::ServiceVersionDeleted {
                service: String::new(),
                version: 1,
            },
        ];
        for bad in bad {
            let result = store.commit(&[
                Write::TaskCreated(Box::new(task(8))),
                Write::Event(Box::new(event(4))),
                Write::ServiceDeleted("web".to_owned()),
                service_write(3, "api", 1),
                bad.clone(),
            ]);
            assert!(
                matches!(&result, Err(StoreError::Backend(detail)) if detail.contains("empty service name")),
                "{bad:?}: {result:?}"
            );
            assert_eq!(store.load().unwrap(), before, "{bad:?}");
        }
    }
}
