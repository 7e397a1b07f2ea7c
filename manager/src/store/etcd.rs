//! [`EtcdStore`]: the manager's durable [`Store`] in an etcd cluster, for
//! several managers sharing one state (built with the `etcd` feature).
//!
//! Keys, under a prefix (`/orch/` unless the URL names another, so that
//! several clusters can share one etcd). A task or node key is its UUID as 32
//! lowercase hex digits and a number is 20 decimal digits, so that etcd's
//! byte order is the order of the ids and numbers, as redb's is:
//! - `meta/cluster_id`: the cluster's id;
//! - `task/spec/<task>` and `task/status/<task>`: a task's spec, written
//!   once, and its status without the spec, rewritten at every update;
//! - `node/<node>`, `service/<name>`, `version/<name>/<version>`,
//!   `cred/<key>`, `attempt/<task>/<attempt>`: as redb's tables;
//! - `event/<sequence>`: only the newest `events_kept` stay.
//!
//! Each kind is one contiguous key range, so that [`Store::load`] reads the
//! whole cluster as a few ranges, a page at a time, all at one revision (a
//! consistent snapshot even while another manager writes), the ranges read
//! side by side.
//!
//! A commit is as durable as etcd makes it: it returns once etcd's quorum has
//! committed every transaction of the batch. etcd bounds a transaction
//! (`--max-txn-ops`, 128 by default, and `--max-request-bytes`, 1.5 MiB), so a
//! large batch is cut into several transactions, committed side by side: once
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

use super::{
    Batch, CREDENTIALS, EVENTS, META, NODES, SERVICE_VERSIONS, SERVICES, Snapshot, Store,
    StoreError, TASK_ATTEMPTS, TASK_SPEC, TASK_STATUS, Write, decode, events_prune_bound,
    join_task, status_record, task_id_of,
};

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/orch/";

/// Most operations in one transaction: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Most bytes of keys and values in one transaction, well under etcd's
/// default `--max-request-bytes` (1.5 MiB) to leave room for the framing.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// How many transactions of one batch are in flight at once.
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
    keys: Keys,
    /// How many of the newest events stay.
    events_kept: u64,
    url: EtcdUrl,
    /// The term every commit is conditional on, once this manager leads.
    fence: std::sync::RwLock<Option<Fence>>,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orch-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the etcd client: {e}")))?;
        let endpoints = url.endpoints.clone();
        let client = block_on(&runtime, async move {
            let options = ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                .with_require_leader(true);
            Client::connect(endpoints, Some(options)).await
        })
        .and_then(|r| r.map_err(|e| backend("connecting", &e)))
        .map_err(|e| unreachable(url, &e))?;
        let store = Self {
            runtime: Some(runtime),
            client,
            keys: Keys::new(&url.prefix),
            events_kept: super::DEFAULT_EVENTS_KEPT,
            url: url.clone(),
            fence: std::sync::RwLock::new(None),
        };
        // The client connects lazily: one read proves a member answers.
        let meta = store.keys.table(META);
        store
            .run(move |mut kv| async move {
                kv.get(meta, Some(GetOptions::new().with_prefix().with_keys_only()))
                    .await
                    .map_err(|e| backend("reading", &e))
            })
            .map_err(|e| unreachable(url, &e))?;
        Ok(store)
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

    /// The etcd client, for the election on the same cluster.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// The full key of `name` under the store's prefix (the leader key, a
    /// manager's record).
    pub(crate) fn key_of(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.keys.prefix).into_bytes()
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

/// An etcd error as a [`StoreError`], saying what the store was doing.
fn backend(doing: &str, err: &etcd_client::Error) -> StoreError {
    let detail = match err {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{} ({:?})", status.message(), status.code())
        }
        err => err.to_string(),
    };
    StoreError::Backend(format!("etcd: {doing}: {detail}"))
}

/// The error of a store that could not be reached at start.
fn unreachable(url: &EtcdUrl, err: &StoreError) -> StoreError {
    let detail = match err {
        StoreError::Backend(detail) => detail.clone(),
        err => err.to_string(),
    };
    StoreError::Backend(format!(
        "no etcd member of {url} answered ({detail}); is etcd running there?"
    ))
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
#[derive(Default)]
struct Pack {
    txns: Vec<Vec<TxnOp>>,
    ops: Vec<TxnOp>,
    bytes: usize,
}

impl Pack {
    /// Adds operations that must share a transaction, starting a new one if
    /// they do not fit in the current one.
    fn add(&mut self, group: Vec<(TxnOp, usize)>) {
        let bytes: usize = group.iter().map(|(_, b)| b).sum();
        if !self.ops.is_empty()
            && (self.ops.len() + group.len() > MAX_TXN_OPS || self.bytes + bytes > MAX_TXN_BYTES)
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
        let mut first = Pack::default();
        for name in &batch.services_deleted {
            let from = keys.key(SERVICE_VERSIONS, &format!("{name}/"));
            let to = prefix_end(&from);
            first.delete_range(from, to);
        }

        let mut pack = Pack::default();
        if let Some(id) = batch.cluster_id {
            pack.put(keys.key(META, CLUSTER_ID), id.as_bytes().to_vec());
        }
        for (key, task) in &batch.statuses {
            let mut group = Vec::with_capacity(2);
            if let Some(spec) = batch.specs.get(key) {
                group.push(put(keys.key(TASK_SPEC, &hex(*key)), spec.encode_to_vec()));
            }
            group.push(put(
                keys.key(TASK_STATUS, &hex(*key)),
                status_record(task).encode_to_vec(),
            ));
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
        let pruned = batch.attempts_pruned();
        for ((task, attempt), record) in &batch.attempts {
            let stale = pruned.get(task).copied().flatten();
            if stale.is_some_and(|bound| *attempt <= bound) {
                continue;
            }
            let key = keys.key(
                TASK_ATTEMPTS,
                &format!("{}/{}", hex(*task), number(*attempt)),
            );
            pack.put(key, record.encode_to_vec());
        }
        for (task, bound) in pruned {
            if let Some(bound) = bound {
                let from = keys.key(TASK_ATTEMPTS, &format!("{}/", hex(task)));
                let to = keys.key(
                    TASK_ATTEMPTS,
                    &format!("{}/{}", hex(task), number(bound + 1)),
                );
                pack.delete_range(from, to);
            }
        }
        // The manager numbers events in order, so the batch's newest is the
        // store's; the events it pushes out go in one range delete, and those
        // of the batch already too old are not written at all.
        let newest = batch.events.keys().next_back().copied().unwrap_or(0);
        let bound = events_prune_bound(newest, self.events_kept);
        for (sequence, event) in &batch.events {
            if bound.is_none_or(|bound| *sequence > bound) {
                pack.put(keys.key(EVENTS, &number(*sequence)), event.encode_to_vec());
            }
        }
        if let Some(bound) = bound {
            let from = keys.table(EVENTS);
            let to = keys.key(EVENTS, &number(bound + 1));
            pack.delete_range(from, to);
        }
        [first.finish(), pack.finish()]
    }
}

/// The `meta` key of the cluster id.
const CLUSTER_ID: &str = "cluster_id";
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
            for (key, status) in statuses {
                let status: Task = decode(TASK_STATUS, &status)?;
                // Both ranges are in key order: skip specs without a status.
                while specs.next_if(|(spec_key, _)| *spec_key < key).is_some() {}
                let spec = specs
                    .next_if(|(spec_key, _)| *spec_key == key)
                    .map(|(_, spec)| decode::<TaskSpec>(TASK_SPEC, &spec))
                    .transpose()?;
                tasks.push(join_task(status, spec)?);
            }

            let mut kv = kv;
            let newest = kv
                .get(
                    keys.table(EVENTS),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_revision(revision)
                            .with_sort(
                                etcd_client::SortTarget::Key,
                                etcd_client::SortOrder::Descend,
                            )
                            .with_limit(1),
                    ),
                )
                .await
                .map_err(|e| backend("reading", &e))?;
            let last_event_sequence = match newest.kvs().first() {
                Some(kv) => sequence_of(&kv.key()[keys.table(EVENTS).len()..])?,
                None => 0,
            };

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
                attempts: attempts
                    .into_iter()
                    .map(|(key, record)| {
                        let task = attempt_task(&key)?;
                        Ok((task, decode::<TaskAttempt>(TASK_ATTEMPTS, &record)?))
                    })
                    .collect::<Result<_, StoreError>>()?,
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
        self.run(move |kv| async move {
            for phase in [first, second] {
                futures::stream::iter(phase)
                    .map(|ops| {
                        let mut kv = kv.clone();
                        let fence = fence.clone();
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
                                .map_err(|e| backend("committing", &e))?;
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
        })
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let from = self.keys.key(EVENTS, &number(first));
        let to = prefix_end(&self.keys.table(EVENTS));
        let limit = i64::try_from(limit.min(10_000)).unwrap_or(10_000);
        self.run(move |mut kv| async move {
            let reply = kv
                .get(
                    from,
                    Some(GetOptions::new().with_range(to).with_limit(limit)),
                )
                .await
                .map_err(|e| backend("reading events", &e))?;
            reply
                .kvs()
                .iter()
                .map(|kv| decode(EVENTS, kv.value()))
                .collect()
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

/// The sequence number of an event's key (after its table's prefix).
fn sequence_of(key: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            table: EVENTS,
            detail: format!("{:?} is not an event's key", String::from_utf8_lossy(key)),
        })
}

/// The task id of an attempt's key (`<task>/<attempt>`, after the prefix).
fn attempt_task(key: &[u8]) -> Result<String, StoreError> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.split_once('/'))
        .and_then(|(task, _)| u128::from_str_radix(task, 16).ok())
        .map(task_id_of)
        .ok_or_else(|| StoreError::Corrupt {
            table: TASK_ATTEMPTS,
            detail: format!("{:?} is not an attempt's key", String::from_utf8_lossy(key)),
        })
}

pub mod election;
pub mod local;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests;
