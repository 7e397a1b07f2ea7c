//! [`EtcdStore`]: the manager's durable [`Store`] in an etcd cluster, for
//! several managers sharing one state (built with the `etcd` feature).
//!
//! Keys, under a prefix (`/orch/` unless the URL names another, so that
//! several clusters can share one etcd). A task or node key is its UUID as 32
//! lowercase hex digits and a number is 20 decimal digits, so that etcd's
//! byte order is the order of the ids and numbers, as redb's is:
//! - `meta/cluster_id`: the cluster's id, and `meta/layout`: the version of
//!   this layout, checked at load;
//! - `task/spec/<task>` and `task/status/<task>`: a task's spec, written
//!   once, and its status without the spec together with the record of its
//!   current attempt (`StatusRecord`: the manager writes the two together,
//!   see `Write::TaskUpdated`), rewritten at every update;
//! - `attempt/<task>/<attempt>`: the task's ended attempts (the newest
//!   `ATTEMPTS_KEPT`), each written in the transaction of the status that
//!   ended it; where a status and a key hold the same attempt, the status
//!   is the newer;
//! - `node/<node>`, `service/<name>`, `version/<name>/<version>`,
//!   `cred/<key>`: as redb's tables;
//! - `event/<sequence>`: a page of events (`EventPage`), in order, from
//!   that sequence to less than `PAGE_SPAN` after it, as many as one commit
//!   brings: one key for hundreds of events. Only the newest `events_kept`
//!   are read back; a page all older than those is deleted.
//!
//! Fewer keys is what makes etcd fast: a task costs its spec, its status at
//! each change and a share of a page, where one key per event and per
//! attempt record would more than double it.
//!
//! Each kind is one contiguous key range, so that [`Store::load`] reads the
//! whole cluster as a few ranges, a page at a time, all at one revision (a
//! consistent snapshot even while another manager writes), the ranges read
//! side by side.
//!
//! A commit is as durable as etcd makes it: it returns once etcd's quorum has
//! committed every transaction of the batch. etcd bounds a transaction
//! (`--max-txn-ops`, 128 by default, and `--max-request-bytes`, 1.5 MiB), so a
//! large batch is cut into several transactions, each as large as the etcd
//! takes (the store finds out at connect), committed side by side: once
//! coalesced, a batch writes each key once and its range deletes never cover
//! a key it puts (a deleted service's versions go first, in a transaction of
//! their own), so they are independent of each other. A task's spec and
//! status always travel in the same transaction, so that a crash between two
//! of them never leaves a status without its spec. What a crash between them
//! can leave is part of the batch applied, none of it acknowledged yet: the
//! writes of the manager are states it was in, each key's newest, which the
//! next load takes as they are.
//!
//! This module is the only one that knows etcd: its errors become
//! [`StoreError::Backend`] here, and nowhere else.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
use futures::{StreamExt, TryStreamExt};
use orch::v1::{Event, Task, TaskAttempt, TaskSpec};
use prost::Message;

pub use access::EtcdAccess;

use super::{
    Batch, CREDENTIALS, EVENTS, META, NODES, SERVICE_VERSIONS, SERVICES, Snapshot, Store,
    StoreError, TASK_ATTEMPTS, TASK_SPEC, TASK_STATUS, Write, decode, events_prune_bound,
    join_task, status_record, task_id_of,
};

/// A task's status key holds its status (the task without its spec) and
/// the record of its current attempt: the two change together at every
/// update, and one key is half the work of two for etcd.
#[derive(Clone, PartialEq, Message)]
struct StatusRecord {
    #[prost(message, optional, tag = "1")]
    task: Option<Task>,
    #[prost(message, optional, tag = "2")]
    attempt: Option<TaskAttempt>,
}

/// An event key holds a page of events in sequence order, the first one's
/// sequence in its key: one key for what would be hundreds.
#[derive(Clone, PartialEq, Message)]
struct EventPage {
    #[prost(message, repeated, tag = "1")]
    events: Vec<Event>,
}

/// The sequences of one page lie within this span from its first: a page
/// whose first is `PAGE_SPAN` older than the oldest event kept holds only
/// events that are not kept, so pruning is one range delete by key.
const PAGE_SPAN: u64 = 256;

/// Most bytes of events in one page.
const PAGE_BYTES: usize = 256 * 1024;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/orch/";

/// Most operations in one transaction where etcd allows it (its
/// `--max-txn-ops`, 128 by default): a transaction of 1,024 puts costs etcd
/// far less than eight of 128 (BENCHMARKS.md). [`EtcdStore::connect`] finds
/// the largest size up to this one that the etcd takes ([`TXN_OPS_TRIED`]).
pub const MAX_TXN_OPS: usize = 1024;

/// The transaction sizes tried at connect, largest first: etcd's default
/// limit is 128, and an operator may have set it higher or lower.
pub const TXN_OPS_TRIED: [usize; 8] = [MAX_TXN_OPS, 512, 256, 128, 64, 32, 16, 8];

/// Most bytes of keys and values in one transaction, well under etcd's
/// default `--max-request-bytes` (1.5 MiB) to leave room for the framing.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// How many transactions of one batch are in flight at once (16 and 64
/// were slower on the benchmark of BENCHMARKS.md).
const TXNS_IN_FLIGHT: usize = 32;

/// How many keys one page of a load reads.
const PAGE_KEYS: i64 = 1000;

/// The largest reply the store accepts: a page of large specs.
const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// How long one request to etcd may take before it fails (a commit then
/// fails and the committer retries it): long enough for a loaded etcd to
/// fsync, short enough that a lost quorum is reported in seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to an etcd member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where an etcd store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// The members' client URLs, `http://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// The prefix of every key, ending in `/`.
    pub prefix: String,
}

impl EtcdUrl {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    ///
    /// # Errors
    /// A sentence saying what is wrong with `url`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "{url:?} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
            ));
        };
        let (hosts, path) = match rest.split_once('/') {
            Some((hosts, path)) => (hosts, path.trim_matches('/')),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
                !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(format!(
                    "{url:?}: {host:?} is not HOST:PORT (etcd's client port is usually 2379)"
                ));
            }
            endpoints.push(format!("http://{host}"));
        }
        let prefix = if path.is_empty() {
            DEFAULT_PREFIX.to_owned()
        } else {
            format!("/{path}/")
        };
        Ok(Self { endpoints, prefix })
    }
}

impl EtcdUrl {
    /// Whether every member is on loopback (`localhost`, `127.0.0.0/8`,
    /// `::1`), where plain HTTP leaves the machine for no network.
    pub fn is_loopback(&self) -> bool {
        self.endpoints.iter().all(|e| {
            let host = e.trim_start_matches("http://");
            let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        write!(
            f,
            "etcd://{}{}",
            hosts.join(","),
            self.prefix.trim_end_matches('/')
        )
    }
}

/// A [`Store`] in etcd. Its calls are synchronous, as the trait's are: each
/// runs on the store's own small runtime and the caller's thread waits, so
/// the committer's thread and a start-up inside tokio may both call it.
pub struct EtcdStore {
    /// Runs the client's futures; `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    /// A connection of its own for the election and compaction: a lease's
    /// renewal must not queue behind a large commit's transactions.
    control: Client,
    keys: Keys,
    /// How many of the newest events stay.
    events_kept: u64,
    url: EtcdUrl,
    /// The term every commit is conditional on, once this manager leads.
    fence: std::sync::RwLock<Option<Fence>>,
    /// Most operations in one of this store's transactions: the largest of
    /// [`TXN_OPS_TRIED`] the etcd took, found again if it refuses one later.
    txn_ops: std::sync::atomic::AtomicUsize,
}

/// What makes a commit conditional on leading: the leader key must still be
/// the one this manager created (its creation revision is the term), so a
/// deposed leader that has not noticed yet writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: Vec<u8>,
    /// The revision the leader key was created at: the term.
    pub term: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("url", &self.url).finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `url` and checks that it answers.
    ///
    /// # Errors
    /// If no member answers within [`CONNECT_TIMEOUT`] plus
    /// [`REQUEST_TIMEOUT`], naming the URL.
    pub fn connect(url: &EtcdUrl) -> Result<Self, StoreError> {
        Self::connect_with(url, &EtcdAccess::default())
    }

    /// Connects to the etcd cluster at `url` as `access` says (over TLS, as
    /// a user) and checks that it answers and lets the store in.
    ///
    /// # Errors
    /// As [`EtcdStore::connect`], or if etcd refuses the store's certificate
    /// or user, saying what etcd most likely wants.
    pub fn connect_with(url: &EtcdUrl, access: &EtcdAccess) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orch-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the etcd client: {e}")))?;
        let connect = || {
            let endpoints = access.endpoints(url);
            let options = access.apply(
                ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                    .with_require_leader(true),
            );
            block_on(&runtime, async move {
                Client::connect(endpoints, Some(options)).await
            })
            .and_then(|r| r.map_err(|e| backend("connecting", &e)))
            .map_err(|e| unreachable(url, access, &e))
        };
        let (client, control) = (connect()?, connect()?);
        let store = Self {
            runtime: Some(runtime),
            client,
            control,
            keys: Keys::new(&url.prefix),
            events_kept: super::DEFAULT_EVENTS_KEPT,
            url: url.clone(),
            fence: std::sync::RwLock::new(None),
            txn_ops: std::sync::atomic::AtomicUsize::new(MAX_TXN_OPS),
        };
        // The client connects lazily: one read proves a member answers.
        let meta = store.keys.table(META);
        store
            .run(move |mut kv| async move {
                kv.get(meta, Some(GetOptions::new().with_prefix().with_keys_only()))
                    .await
                    .map_err(|e| backend("reading", &e))
            })
            .map_err(|e| unreachable(url, access, &e))?;
        store.fit_transactions()?;
        Ok(store)
    }

    /// Most operations this store puts in one transaction.
    pub fn txn_ops(&self) -> usize {
        self.txn_ops.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Finds the largest of [`TXN_OPS_TRIED`] that the etcd takes, with a
    /// read-only transaction of that many reads of one key, and makes it
    /// the store's transaction size.
    ///
    /// # Errors
    /// If etcd fails otherwise, or takes none of them.
    fn fit_transactions(&self) -> Result<usize, StoreError> {
        let probe = self.keys.key(META, "txn-ops-probe");
        let ops = self.run(move |mut kv| async move {
            for ops in TXN_OPS_TRIED {
                let reads = vec![TxnOp::get(probe.clone(), None); ops];
                match kv.txn(Txn::new().and_then(reads)).await {
                    Ok(_) => return Ok(ops),
                    Err(e) if too_many_ops(&e) => {}
                    Err(e) => return Err(backend("trying the transaction size", &e)),
                }
            }
            Err(StoreError::Backend(format!(
                "etcd refuses transactions of {} operations: raise its --max-txn-ops (128 by default)",
                TXN_OPS_TRIED[TXN_OPS_TRIED.len() - 1]
            )))
        })?;
        let was = self.txn_ops.swap(ops, std::sync::atomic::Ordering::Relaxed);
        if ops != was {
            tracing::debug!(ops, "etcd takes transactions of up to {ops} operations");
        }
        Ok(ops)
    }

    /// The same store keeping only the newest `kept` events (at least one).
    #[must_use]
    pub fn with_events_kept(mut self, kept: u64) -> Self {
        self.events_kept = kept;
        self
    }

    /// Where the store is.
    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    /// Makes every later commit conditional on `fence` (`None`: on nothing,
    /// a manager alone on its store).
    pub fn set_fence(&self, fence: Option<Fence>) {
        match self.fence.write() {
            Ok(mut guard) => *guard = fence,
            Err(poisoned) => *poisoned.into_inner() = fence,
        }
    }

    fn current_fence(&self) -> Option<Fence> {
        match self.fence.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The etcd client of the election and compaction, on a connection
    /// apart from the commits'.
    pub(crate) fn client(&self) -> Client {
        self.control.clone()
    }

    /// The full key of `name` under the store's prefix (the leader key, a
    /// manager's record).
    pub(crate) fn key_of(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.keys.prefix).into_bytes()
    }

    /// Runs `task` on the store's own runtime, apart from the manager's.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            // Only while the store is dropped.
            None => tokio::spawn(task),
        }
    }

    /// Runs `work` on the store's runtime with a key-value client, and waits.
    fn run<F, T>(&self, work: impl FnOnce(etcd_client::KvClient) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Backend("the etcd store is closed".into()));
        };
        let kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_REPLY_BYTES);
        block_on(runtime, work(kv))?
    }

    /// Reads every key of `table` at `revision` (0: the newest), in key
    /// order, a page at a time.
    async fn range(
        mut kv: etcd_client::KvClient,
        keys: Keys,
        table: &'static str,
        revision: i64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let prefix = keys.table(table);
        let end = prefix_end(&prefix);
        let mut start = prefix.clone();
        let mut out = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_KEYS)
                .with_revision(revision);
            let mut page = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(|e| backend("reading", &e))?;
            let more = page.more();
            let kvs = page.take_kvs();
            let Some(last) = kvs.last() else { break };
            start = last.key().to_vec();
            start.push(0);
            out.extend(kvs.into_iter().map(|kv| {
                let (key, value) = kv.into_key_value();
                (key[prefix.len()..].to_vec(), value)
            }));
            if !more {
                break;
            }
        }
        Ok(out)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // A runtime may not be dropped where blocking is not allowed (inside
        // tokio, where the last handle to the store may go); this may.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` and waits for it on this thread, which may be
/// inside another runtime or not.
fn block_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> Result<F::Output, StoreError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(runtime.spawn(future))
        .map_err(|e| StoreError::Backend(format!("the etcd client's task failed: {e}")))
}

/// Whether etcd refused a transaction for its number of operations (its
/// `--max-txn-ops`).
fn too_many_ops(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::InvalidArgument
            && status.message().contains("too many operations"))
}

/// An etcd error as a [`StoreError`], saying what the store was doing.
fn backend(doing: &str, err: &etcd_client::Error) -> StoreError {
    let detail = match err {
        etcd_client::Error::GRpcStatus(status) => {
            let head = format!("{} ({:?})", status.message(), status.code());
            with_causes(head, status)
        }
        err => with_causes(err.to_string(), err),
    };
    StoreError::Backend(format!("etcd: {doing}: {detail}"))
}

/// `head`, then what caused `err` that `head` does not say already, each
/// cause after `: ` (a transport error says only "transport error"; its
/// causes say which: a refused connection, a certificate no CA signed).
fn with_causes(head: String, err: &dyn std::error::Error) -> String {
    let mut out = head;
    let mut cause = err.source();
    while let Some(err) = cause {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = err.source();
    }
    out
}

/// The error of a store that could not be reached, or was refused, at
/// start: what etcd most likely wants, if `access` can tell.
fn unreachable(url: &EtcdUrl, access: &EtcdAccess, err: &StoreError) -> StoreError {
    let detail = match err {
        StoreError::Backend(detail) => detail.clone(),
        err => err.to_string(),
    };
    StoreError::Backend(match access.hint(&detail) {
        Some(hint) => format!("etcd at {url} refused the manager ({detail}): {hint}"),
        None => format!("no etcd member of {url} answered ({detail}); is etcd running there?"),
    })
}

/// The keys of one store: every key is its prefix, a table's name, `/`, and
/// the record's own key.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix of every key of `table`.
    fn table(&self, table: &str) -> Vec<u8> {
        format!("{}{table}/", self.prefix).into_bytes()
    }

    fn key(&self, table: &str, record: &str) -> Vec<u8> {
        format!("{}{table}/{record}", self.prefix).into_bytes()
    }
}

/// A task or node key: 32 hex digits, ordered as the UUID's bytes.
fn hex(key: u128) -> String {
    format!("{key:032x}")
}

/// A number in a key: 20 digits, ordered as the number.
fn number(n: u64) -> String {
    format!("{n:020}")
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One transaction's worth of operations being gathered.
struct Pack {
    txns: Vec<Vec<TxnOp>>,
    ops: Vec<TxnOp>,
    bytes: usize,
    /// Most operations in one transaction.
    max_ops: usize,
}

impl Pack {
    fn new(max_ops: usize) -> Self {
        Self {
            txns: Vec::new(),
            ops: Vec::new(),
            bytes: 0,
            max_ops,
        }
    }

    /// Adds operations that must share a transaction, starting a new one if
    /// they do not fit in the current one.
    fn add(&mut self, group: Vec<(TxnOp, usize)>) {
        let bytes: usize = group.iter().map(|(_, b)| b).sum();
        if !self.ops.is_empty()
            && (self.ops.len() + group.len() > self.max_ops || self.bytes + bytes > MAX_TXN_BYTES)
        {
            self.txns.push(std::mem::take(&mut self.ops));
            self.bytes = 0;
        }
        self.bytes += bytes;
        self.ops.extend(group.into_iter().map(|(op, _)| op));
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.add(vec![put(key, value)]);
    }

    fn delete(&mut self, key: Vec<u8>) {
        let bytes = key.len();
        self.add(vec![(TxnOp::delete(key, None), bytes)]);
    }

    fn delete_range(&mut self, from: Vec<u8>, to: Vec<u8>) {
        let bytes = from.len() + to.len();
        let op = TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)));
        self.add(vec![(op, bytes)]);
    }

    fn finish(mut self) -> Vec<Vec<TxnOp>> {
        if !self.ops.is_empty() {
            self.txns.push(self.ops);
        }
        self.txns
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> (TxnOp, usize) {
    let bytes = key.len() + value.len();
    (TxnOp::put(key, value, None), bytes)
}

impl EtcdStore {
    /// The transactions that apply `batch`: those of the first phase (the
    /// range deletes of deleted services) must be committed before those of
    /// the second.
    fn transactions(&self, batch: &Batch<'_>) -> [Vec<Vec<TxnOp>>; 2] {
        let keys = &self.keys;
        let max_ops = self.txn_ops();
        let mut first = Pack::new(max_ops);
        for name in &batch.services_deleted {
            let from = keys.key(SERVICE_VERSIONS, &format!("{name}/"));
            let to = prefix_end(&from);
            first.delete_range(from, to);
        }

        let mut pack = Pack::new(max_ops);
        if let Some(id) = batch.cluster_id {
            pack.add(vec![
                put(keys.key(META, CLUSTER_ID), id.as_bytes().to_vec()),
                put(keys.key(META, LAYOUT), LAYOUT_VERSION.as_bytes().to_vec()),
            ]);
        }
        // A task's current attempt travels in its status, and its ended
        // attempts in the same transaction.
        let mut folded = std::collections::HashSet::new();
        let pruned = batch.attempts_pruned();
        let kept = |task: u128, attempt: u64| {
            pruned
                .get(&task)
                .copied()
                .flatten()
                .is_none_or(|bound| attempt > bound)
        };
        for (key, task) in &batch.statuses {
            let mut group = Vec::with_capacity(3);
            if let Some(spec) = batch.specs.get(key) {
                group.push(put(keys.key(TASK_SPEC, &hex(*key)), spec.encode_to_vec()));
            }
            let attempt = batch.attempts.get(&(*key, task.attempt)).copied();
            if attempt.is_some() {
                folded.insert((*key, task.attempt));
            }
            let record = StatusRecord {
                task: Some(status_record(task).into_owned()),
                attempt: attempt.cloned(),
            };
            group.push(put(
                keys.key(TASK_STATUS, &hex(*key)),
                record.encode_to_vec(),
            ));
            for ((_, n), record) in batch.attempts.range((*key, 0)..(*key, task.attempt)) {
                if kept(*key, *n) {
                    group.push(put(attempt_key(keys, *key, *n), record.encode_to_vec()));
                    folded.insert((*key, *n));
                }
            }
            pack.add(group);
        }
        for (key, node) in &batch.nodes {
            pack.put(keys.key(NODES, &hex(*key)), node.encode_to_vec());
        }
        for ((name, version), record) in &batch.service_versions {
            let key = keys.key(SERVICE_VERSIONS, &format!("{name}/{}", number(*version)));
            match record {
                Some(record) => pack.put(key, record.encode_to_vec()),
                None => pack.delete(key),
            }
        }
        for (name, service) in &batch.services {
            let key = keys.key(SERVICES, name);
            match service {
                Some(service) => pack.put(key, service.encode_to_vec()),
                None => pack.delete(key),
            }
        }
        for (key, record) in &batch.credentials {
            let key = keys.key(CREDENTIALS, key);
            match record {
                Some(record) => pack.put(key, record.to_vec()),
                None => pack.delete(key),
            }
        }
        // As for events below: a range delete may not cover a key the same
        // transaction puts, so attempts already too old are not written.
        for (&(task, attempt), record) in &batch.attempts {
            if kept(task, attempt) && !folded.contains(&(task, attempt)) {
                pack.put(attempt_key(keys, task, attempt), record.encode_to_vec());
            }
        }
        for (task, bound) in pruned {
            if let Some(bound) = bound {
                let from = keys.key(TASK_ATTEMPTS, &format!("{}/", hex(task)));
                pack.delete_range(from, attempt_key(keys, task, bound + 1));
            }
        }
        // The manager numbers events in order, so the batch's newest is the
        // store's; those of the batch already too old are not written at
        // all, and the pages of events no longer kept go in one range
        // delete (a page of its own never: its first is newer).
        let newest = batch.events.keys().next_back().copied().unwrap_or(0);
        let bound = events_prune_bound(newest, self.events_kept);
        let mut page: Vec<&Event> = Vec::new();
        let mut page_bytes = 0;
        let flush = |page: &mut Vec<&Event>, pack: &mut Pack| {
            if let Some(first) = page.first() {
                let key = keys.key(EVENTS, &number(first.sequence));
                let events = page.drain(..).cloned().collect();
                pack.put(key, EventPage { events }.encode_to_vec());
            }
        };
        for (&sequence, &event) in &batch.events {
            if bound.is_some_and(|bound| sequence <= bound) {
                continue;
            }
            let bytes = event.encoded_len();
            if page.first().is_some_and(|f| {
                sequence - f.sequence >= PAGE_SPAN || page_bytes + bytes > PAGE_BYTES
            }) {
                flush(&mut page, &mut pack);
                page_bytes = 0;
            }
            page.push(event);
            page_bytes += bytes;
        }
        flush(&mut page, &mut pack);
        if let Some(bound) = bound.and_then(|b| (b + 2).checked_sub(PAGE_SPAN)) {
            let from = keys.table(EVENTS);
            let to = keys.key(EVENTS, &number(bound));
            pack.delete_range(from, to);
        }
        [first.finish(), pack.finish()]
    }
}

/// The key of a task's attempt.
fn attempt_key(keys: &Keys, task: u128, attempt: u64) -> Vec<u8> {
    keys.key(TASK_ATTEMPTS, &format!("{}/{}", hex(task), number(attempt)))
}

/// The `meta` key of the cluster id.
const CLUSTER_ID: &str = "cluster_id";
/// The `meta` key of the layout of the keys, written with the cluster id:
/// a store written in another layout (by another version of orch) is
/// refused at load rather than misread.
const LAYOUT: &str = "layout";
/// This version's layout: status records with their current attempt, and
/// events in pages.
const LAYOUT_VERSION: &str = "2";
/// The `meta` keys of the cluster's CA, certificate and key (PEM): every
/// manager of the cluster serves with certificates it signs.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

/// What makes a cluster: its id and its CA. The first manager on an empty
/// store writes its own; every later one reads them ([`EtcdStore::found`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Founding {
    /// The cluster's id.
    pub cluster_id: String,
    /// The CA's certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA's private key, PEM.
    pub ca_key_pem: String,
}

impl EtcdStore {
    /// The cluster the store holds; if it holds none, `proposal` is written
    /// and returned (`None` writes nothing and returns `None`). It is
    /// written in one transaction that only succeeds on an empty store, so
    /// that managers starting together agree on one cluster. The flag says
    /// whether the cluster is `proposal`.
    ///
    /// # Errors
    /// If etcd fails, or the store holds a cluster id without its CA.
    pub fn found(
        &self,
        proposal: Option<Founding>,
    ) -> Result<Option<(Founding, bool)>, StoreError> {
        let keys = self.keys.clone();
        self.run(move |mut kv| async move {
            let (id, cert, key) = (
                keys.key(META, CLUSTER_ID),
                keys.key(META, CA_CERT),
                keys.key(META, CA_KEY),
            );
            let writes = proposal.as_ref().map_or_else(Vec::new, |p| {
                vec![
                    TxnOp::put(id.clone(), p.cluster_id.clone(), None),
                    TxnOp::put(keys.key(META, LAYOUT), LAYOUT_VERSION, None),
                    TxnOp::put(cert.clone(), p.ca_cert_pem.clone(), None),
                    TxnOp::put(key.clone(), p.ca_key_pem.clone(), None),
                ]
            });
            let txn = Txn::new()
                .when([Compare::create_revision(
                    id.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then(writes)
                .or_else([
                    TxnOp::get(id, None),
                    TxnOp::get(cert, None),
                    TxnOp::get(key, None),
                ]);
            let reply = kv
                .txn(txn)
                .await
                .map_err(|e| backend("founding the cluster", &e))?;
            if reply.succeeded() {
                return Ok(proposal.map(|p| (p, true)));
            }
            let mut values = reply.op_responses().into_iter().map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .and_then(|kv| String::from_utf8(kv.value().to_vec()).ok()),
                _ => None,
            });
            let mut next = |what: &str| {
                values.next().flatten().ok_or_else(|| StoreError::Corrupt {
                    table: META,
                    detail: format!("the store holds a cluster id but no readable {what}"),
                })
            };
            Ok(Some((
                Founding {
                    cluster_id: next("cluster id")?,
                    ca_cert_pem: next("CA certificate")?,
                    ca_key_pem: next("CA key")?,
                },
                false,
            )))
        })
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let keys = self.keys.clone();
        self.run(move |kv| async move {
            // The meta range first: its revision is the one every other
            // range is read at, so the snapshot is one point in time.
            let mut meta = kv.clone();
            let reply = meta
                .get(keys.key(META, CLUSTER_ID), None)
                .await
                .map_err(|e| backend("reading", &e))?;
            let revision = reply
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            let cluster_id = reply
                .kvs()
                .first()
                .map(|kv| {
                    String::from_utf8(kv.value().to_vec()).map_err(|e| StoreError::Corrupt {
                        table: META,
                        detail: format!("the cluster id is not UTF-8: {e}"),
                    })
                })
                .transpose()?;
            if cluster_id.is_some() {
                let layout = meta
                    .get(
                        keys.key(META, LAYOUT),
                        Some(GetOptions::new().with_revision(revision)),
                    )
                    .await
                    .map_err(|e| backend("reading", &e))?;
                let layout = layout
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                if layout.as_deref() != Some(LAYOUT_VERSION) {
                    return Err(StoreError::Corrupt {
                        table: META,
                        detail: format!(
                            "the store's keys are in layout {}, and this orch reads layout \
                             {LAYOUT_VERSION}: it was written by another version of orch; \
                             start this one on a new prefix (etcd://HOST:PORT/PREFIX)",
                            layout.as_deref().unwrap_or("1")
                        ),
                    });
                }
            }
            let tables = [
                TASK_SPEC,
                TASK_STATUS,
                NODES,
                SERVICES,
                SERVICE_VERSIONS,
                CREDENTIALS,
                TASK_ATTEMPTS,
            ];
            let mut ranges = futures::future::try_join_all(
                tables.map(|table| Self::range(kv.clone(), keys.clone(), table, revision)),
            )
            .await?
            .into_iter();
            let mut next = || ranges.next().unwrap_or_default();
            let (specs, statuses, nodes) = (next(), next(), next());
            let (services, versions, credentials, attempts) = (next(), next(), next(), next());

            let mut specs = specs.into_iter().peekable();
            let mut tasks = Vec::with_capacity(statuses.len());
            let mut current = Vec::with_capacity(statuses.len());
            for (key, status) in statuses {
                let record: StatusRecord = decode(TASK_STATUS, &status)?;
                let status = record.task.unwrap_or_default();
                // Both ranges are in key order: skip specs without a status.
                while specs.next_if(|(spec_key, _)| *spec_key < key).is_some() {}
                let spec = specs
                    .next_if(|(spec_key, _)| *spec_key == key)
                    .map(|(_, spec)| decode::<TaskSpec>(TASK_SPEC, &spec))
                    .transpose()?;
                if let Some(attempt) = record.attempt {
                    current.push((task_of(TASK_STATUS, &key)?, attempt));
                }
                tasks.push(join_task(status, spec)?);
            }

            let last_event_sequence = newest_event(kv, &keys, revision).await?;
            // A task's ended attempts have keys of their own, its current
            // one is in its status: the newer, should both hold it. Both
            // lists are in key order, merged as they come.
            let mut all = Vec::with_capacity(attempts.len() + current.len());
            let mut current = current.into_iter().peekable();
            for (key, record) in attempts {
                let at = (
                    task_of(TASK_ATTEMPTS, &key)?,
                    decode::<TaskAttempt>(TASK_ATTEMPTS, &record)?,
                );
                let order = (at.0, at.1.attempt);
                while let Some(newer) = current.next_if(|(t, c)| (*t, c.attempt) < order) {
                    all.push(newer);
                }
                if current.peek().is_none_or(|(t, c)| (*t, c.attempt) != order) {
                    all.push(at);
                }
            }
            all.extend(current);

            Ok(Snapshot {
                cluster_id,
                tasks,
                nodes: decode_all(NODES, nodes)?,
                last_event_sequence,
                services: decode_all(SERVICES, services)?,
                service_versions: decode_all(SERVICE_VERSIONS, versions)?,
                credentials: credentials
                    .into_iter()
                    .map(|(key, record)| {
                        String::from_utf8(key)
                            .map(|key| (key, record))
                            .map_err(|e| StoreError::Corrupt {
                                table: CREDENTIALS,
                                detail: format!("a key is not UTF-8: {e}"),
                            })
                    })
                    .collect::<Result<_, _>>()?,
                attempts: all
                    .into_iter()
                    .map(|(task, attempt)| (task_id_of(task), attempt))
                    .collect(),
            })
        })
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let batch = Batch::new(writes)?;
        let [first, second] = self.transactions(&batch);
        let fence = self.current_fence();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refused_in = refused.clone();
        let committed = self.run(move |kv| async move {
            for phase in [first, second] {
                futures::stream::iter(phase)
                    .map(|ops| {
                        let mut kv = kv.clone();
                        let fence = fence.clone();
                        let refused = refused_in.clone();
                        async move {
                            let compares: Vec<Compare> = fence
                                .iter()
                                .map(|f| {
                                    Compare::create_revision(
                                        f.key.clone(),
                                        etcd_client::CompareOp::Equal,
                                        f.term,
                                    )
                                })
                                .collect();
                            let reply = kv
                                .txn(Txn::new().when(compares).and_then(ops))
                                .await
                                .map_err(|e| {
                                    if too_many_ops(&e) {
                                        refused.store(true, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    backend("committing", &e)
                                })?;
                            match &fence {
                                Some(f) if !reply.succeeded() => Err(StoreError::Fenced(format!(
                                    "this manager's term {} as leader is over: another manager leads",
                                    f.term
                                ))),
                                _ => Ok(()),
                            }
                        }
                    })
                    .buffer_unordered(TXNS_IN_FLIGHT)
                    .try_collect::<Vec<()>>()
                    .await?;
            }
            Ok(())
        });
        // etcd's limit was lowered since the store connected: the commit
        // fails (none of it is acknowledged) and is retried in
        // transactions of the size etcd takes now.
        if refused.load(std::sync::atomic::Ordering::Relaxed) {
            let was = self.txn_ops();
            let now = self.fit_transactions()?;
            tracing::warn!(
                was,
                now,
                "etcd refused a transaction of this store's size, up to {was} operations (was its \
                 --max-txn-ops lowered?): transactions are now of {now} at most"
            );
        }
        committed
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let keys = self.keys.clone();
        let kept = self.events_kept;
        let want = limit.min(10_000);
        self.run(move |mut kv| async move {
            // Pages start at the one that holds `first`, if any, and the
            // events of a page older than what is kept are skipped.
            let mut at = keys.key(EVENTS, &number(first));
            at.push(0);
            let mut start = match page_before(kv.clone(), &keys, at, 0).await? {
                Some((key, _)) => key,
                None => keys.table(EVENTS),
            };
            let newest = newest_event(kv.clone(), &keys, 0).await?;
            let floor = events_prune_bound(newest, kept).map_or(after, |b| b.max(after));
            let end = prefix_end(&keys.table(EVENTS));
            let mut out = Vec::new();
            loop {
                let options = GetOptions::new().with_range(end.clone()).with_limit(16);
                let reply = kv
                    .get(start.clone(), Some(options))
                    .await
                    .map_err(|e| backend("reading events", &e))?;
                for page in reply.kvs() {
                    let page: EventPage = decode(EVENTS, page.value())?;
                    out.extend(page.events.into_iter().filter(|e| e.sequence > floor));
                    if out.len() >= want {
                        out.truncate(want);
                        return Ok(out);
                    }
                }
                match reply.kvs().last() {
                    Some(last) if reply.more() => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok(out),
                }
            }
        })
    }
}

fn decode_all<M: Message + Default>(
    table: &'static str,
    records: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<Vec<M>, StoreError> {
    records
        .into_iter()
        .map(|(_, record)| decode(table, &record))
        .collect()
}

/// The page of events whose key is the newest before `end` (with `end`
/// just after an event's key: the page holding that event, if kept), or
/// none.
async fn page_before(
    mut kv: etcd_client::KvClient,
    keys: &Keys,
    end: Vec<u8>,
    revision: i64,
) -> Result<Option<(Vec<u8>, EventPage)>, StoreError> {
    let reply = kv
        .get(
            keys.table(EVENTS),
            Some(
                GetOptions::new()
                    .with_range(end)
                    .with_revision(revision)
                    .with_sort(
                        etcd_client::SortTarget::Key,
                        etcd_client::SortOrder::Descend,
                    )
                    .with_limit(1),
            ),
        )
        .await
        .map_err(|e| backend("reading events", &e))?;
    reply
        .kvs()
        .first()
        .map(|kv| Ok((kv.key().to_vec(), decode(EVENTS, kv.value())?)))
        .transpose()
}

/// The sequence of the newest event (0: none) at `revision` (0: now).
async fn newest_event(
    kv: etcd_client::KvClient,
    keys: &Keys,
    revision: i64,
) -> Result<u64, StoreError> {
    let end = prefix_end(&keys.table(EVENTS));
    let page = page_before(kv, keys, end, revision).await?;
    Ok(page
        .and_then(|(_, page)| page.events.last().map(|e| e.sequence))
        .unwrap_or(0))
}

/// The task a key of `table` names (after the prefix): a status's
/// `<task>`, an attempt's `<task>/<attempt>`.
fn task_of(table: &'static str, key: &[u8]) -> Result<u128, StoreError> {
    std::str::from_utf8(key)
        .ok()
        .map(|key| key.split_once('/').map_or(key, |(task, _)| task))
        .and_then(|task| u128::from_str_radix(task, 16).ok())
        .ok_or_else(|| StoreError::Corrupt {
            table,
            detail: format!("{:?} does not name a task", String::from_utf8_lossy(key)),
        })
}

pub mod access;
pub mod election;
pub mod history;
pub mod local;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests;
