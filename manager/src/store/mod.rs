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

pub mod memory;
pub mod redb;

use orch::v1::{Event, Node, Task};

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

/// How many of the latest events the store keeps; older ones are deleted as
/// new ones are written.
pub const EVENTS_KEPT: u64 = 10_000;

/// One change to durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new task: its spec and its first status. The spec is never written again.
    TaskCreated(Task),
    /// A task's new status. Its `spec` field is ignored (it may be `None`).
    TaskUpdated(Task),
    /// A node's registration and last known state.
    Node(Node),
    /// An event, by its sequence number.
    Event(Event),
    /// The cluster's id, written once when the manager first starts.
    ClusterId(String),
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
}

/// Why the store failed. Every store error is reported to clients as
/// `UNAVAILABLE`: the request was not stored and may be retried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("store: {0}")]
    Backend(String),
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
