//! Leader election on etcd: a lease and a key created only if absent.
//!
//! Every manager on the store holds a lease of [`Candidate::lease`] (2 s by
//! default) that it keeps alive every third of it, and its record
//! (`managers/<id>`: id, URL, start) is attached to that lease, so a manager
//! that dies drops out of `ListManagers` by itself. To lead, a manager
//! creates the key `leader` with its lease, in a transaction that succeeds
//! only if the key does not exist; the revision it was created at is the
//! *term*, which every commit of the leader then compares
//! ([`Fence`](super::Fence)). The others try again every
//! [`RETRY`]; the key goes when the leader's lease does, that is at most one
//! lease after the leader stopped renewing it.
//!
//! A term ends ([`Leadership::lost`]) when a renewal fails, or when no
//! renewal succeeded within a lease of the last one sent: a manager that
//! was paused (SIGSTOP, a long GC, a starved machine) knows on waking that
//! its lease may have run out, and steps down before it decides anything.
//! Should it still commit something first, the fence refuses it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{EtcdStore, Fence, backend};
use crate::store::StoreError;

/// How long a manager's lease lasts unless told otherwise: the longest a
/// dead leader holds the cluster before another one is elected.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);

/// How often a manager that does not lead tries to.
pub const RETRY: Duration = Duration::from_millis(250);

/// The key of the leader, under the store's prefix.
const LEADER_KEY: &str = "leader";
/// The prefix of the managers' records, under the store's prefix.
const MANAGERS_KEY: &str = "managers/";

/// A manager as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerRecord {
    /// The manager's id, new at every start.
    pub id: String,
    /// The URL clients and workers reach it at.
    pub url: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// The leader as the leader key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leading manager.
    pub manager: ManagerRecord,
    /// When its term began, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// A manager's standing in the election.
pub struct Candidate {
    store: Arc<EtcdStore>,
    me: ManagerRecord,
    lease: Duration,
    /// When a follower's record was last written.
    registered: std::sync::Mutex<Option<Instant>>,
}

/// A term as leader, until [`Leadership::lost`] resolves.
pub struct Leadership {
    /// The term: the revision the leader key was created at.
    pub fence: Fence,
    store: Arc<EtcdStore>,
    lease: i64,
    /// The leader's record as written.
    pub record: LeaderRecord,
    lost: watch::Receiver<Option<String>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves once the term is over, with why.
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(reason) = self.lost.borrow().clone() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                return "the lease keeper stopped".into();
            }
        }
    }
}

impl Leadership {
    /// Ends the term: stops renewing the lease and revokes it, so that the
    /// leader key goes at once and another manager is elected without
    /// waiting for the lease to run out.
    pub async fn resign(self) {
        self.keeper.abort();
        let mut client = self.store.client();
        match tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(self.lease)).await {
            Ok(Ok(_)) => tracing::info!(term = self.fence.term, "resigned the leadership"),
            Ok(Err(e)) => tracing::warn!(error = %e, "revoking the leader's lease"),
            Err(_) => tracing::warn!("revoking the leader's lease: etcd did not answer"),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Candidate {
    /// A candidate reachable at `url`, with leases of `lease` (whole
    /// seconds, at least 2: etcd's shortest with its default settings is
    /// 1.5 s).
    pub fn new(store: Arc<EtcdStore>, url: String, lease: Duration) -> Self {
        Self {
            store,
            me: ManagerRecord {
                id: uuid::Uuid::new_v4().to_string(),
                url,
                started_ms: now_ms(),
            },
            lease: lease.max(DEFAULT_LEASE),
            registered: std::sync::Mutex::new(None),
        }
    }

    /// This manager's record.
    pub fn me(&self) -> &ManagerRecord {
        &self.me
    }

    /// The lease's length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Campaigns until this manager leads, publishing on `seen` the leader
    /// it finds meanwhile (`None` while there is none, or etcd does not
    /// answer). Never fails: an etcd that does not answer is tried again.
    pub async fn campaign(&self, seen: &watch::Sender<Option<LeaderRecord>>) -> Leadership {
        loop {
            match self.try_lead(seen).await {
                Ok(Some(leadership)) => return leadership,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "campaigning for leadership");
                    seen.send_replace(None);
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One try: a lease, this manager's record, and the leader key if it is
    /// free. Holds the lease only while leading; otherwise revokes it.
    async fn try_lead(
        &self,
        seen: &watch::Sender<Option<LeaderRecord>>,
    ) -> Result<Option<Leadership>, StoreError> {
        let mut client = self.store.client();
        let leader_key = self.store.key_of(LEADER_KEY);
        // Cheap first: while a leader holds the key, only read it.
        let current = client
            .get(leader_key.clone(), None)
            .await
            .map_err(|e| backend("reading the leader", &e))?;
        if let Some(kv) = current.kvs().first() {
            seen.send_replace(decode_leader(kv.value()));
            self.register().await?;
            return Ok(None);
        }
        let ttl = i64::try_from(self.lease.as_secs()).unwrap_or(i64::MAX);
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| backend("granting a lease", &e))?;
        let granted = Instant::now();
        let record = LeaderRecord {
            manager: self.me.clone(),
            since_ms: now_ms(),
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Backend(format!("encoding the leader record: {e}")))?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    leader_key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease.id())),
                ),
                self.record_op(lease.id())?,
            ])
            .or_else([TxnOp::get(leader_key.clone(), None)]);
        let reply = client
            .txn(txn)
            .await
            .map_err(|e| backend("campaigning", &e))?;
        if !reply.succeeded() {
            let _ = client.lease_revoke(lease.id()).await;
            for op in reply.op_responses() {
                if let etcd_client::TxnOpResponse::Get(get) = op {
                    seen.send_replace(get.kvs().first().and_then(|kv| decode_leader(kv.value())));
                }
            }
            self.register().await?;
            return Ok(None);
        }
        let term = reply
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        seen.send_replace(Some(record.clone()));
        let (lost_tx, lost) = watch::channel(None);
        let fence = Fence {
            key: leader_key.clone(),
            term,
        };
        // On the store's own runtime: a manager whose threads are all busy
        // (or waiting on its engine's lock) under a burst of work still
        // renews its lease in time.
        let keeper = self.store.spawn(keep_alive(
            self.store.clone(),
            (lease.id(), fence),
            self.lease,
            granted,
            lost_tx,
        ));
        tracing::info!(term, manager = %self.me.id, "elected leader");
        Ok(Some(Leadership {
            fence: Fence {
                key: leader_key,
                term,
            },
            store: self.store.clone(),
            lease: lease.id(),
            record,
            lost,
            keeper,
        }))
    }

    /// The put of this manager's record, attached to `lease`.
    fn record_op(&self, lease: i64) -> Result<TxnOp, StoreError> {
        let value = serde_json::to_vec(&self.me)
            .map_err(|e| StoreError::Backend(format!("encoding the manager record: {e}")))?;
        Ok(TxnOp::put(
            self.store.key_of(&format!("{MANAGERS_KEY}{}", self.me.id)),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
    }

    /// Writes this manager's record as a follower's, with a lease of two
    /// leases granted every half lease, so the record stays while the
    /// follower tries and goes within two leases once it stops.
    async fn register(&self) -> Result<(), StoreError> {
        let due = |at: &Option<Instant>| at.is_none_or(|at| at.elapsed() >= self.lease / 2);
        if !self.registered.lock().is_ok_and(|at| due(&at)) {
            return Ok(());
        }
        let mut client = self.store.client();
        let ttl = i64::try_from(self.lease.as_secs()).unwrap_or(i64::MAX) * 2;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| backend("granting a lease", &e))?
            .id();
        client
            .txn(Txn::new().and_then([self.record_op(lease)?]))
            .await
            .map_err(|e| backend("writing this manager's record", &e))?;
        if let Ok(mut at) = self.registered.lock() {
            *at = Some(Instant::now());
        }
        Ok(())
    }
}

/// Renews the leader's lease every third of it until a renewal fails, none
/// succeeded within a lease of the one before, or the leader key is no
/// longer the term's (deleted by hand: every commit would be fenced), and
/// then says so.
async fn keep_alive(
    store: Arc<EtcdStore>,
    (lease, fence): (i64, Fence),
    length: Duration,
    granted: Instant,
    lost: watch::Sender<Option<String>>,
) {
    let mut client = store.client();
    let mut valid_until = granted + length;
    let reason = match client.lease_keep_alive(lease).await {
        Err(e) => format!("renewing the lease: {}", backend("keep-alive", &e)),
        Ok((mut keeper, mut replies)) => loop {
            let sent = Instant::now();
            if sent >= valid_until {
                break format!(
                    "the lease was not renewed within {length:?} (was this manager paused?)"
                );
            }
            if let Err(e) = keeper.keep_alive().await {
                break format!("renewing the lease: {}", backend("keep-alive", &e));
            }
            match tokio::time::timeout_at(valid_until, replies.message()).await {
                Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                    // Counted from when the renewal was sent: etcd counts
                    // from when it got it, a little later.
                    let ttl = Duration::from_secs(u64::try_from(reply.ttl()).unwrap_or(0));
                    valid_until = sent + ttl.min(length);
                }
                Ok(Ok(Some(_))) => break "the lease expired".into(),
                Ok(Ok(None)) => break "the lease's keep-alive stream ended".into(),
                Ok(Err(e)) => break format!("renewing the lease: {}", backend("keep-alive", &e)),
                Err(_) => {
                    break format!("the lease was not renewed within {length:?}");
                }
            }
            match client.get(fence.key.clone(), None).await {
                Ok(reply) => {
                    let held = reply
                        .kvs()
                        .first()
                        .map(etcd_client::KeyValue::create_revision);
                    if held != Some(fence.term) {
                        break format!(
                            "the leader key is no longer this term's ({}, held: {held:?})",
                            fence.term
                        );
                    }
                }
                // The lease's own renewal decides whether etcd answers.
                Err(e) => tracing::debug!(error = %e, "reading the leader key"),
            }
            tokio::time::sleep_until(sent + length / 3).await;
        },
    };
    tracing::warn!(%reason, "leadership lost");
    // Let the next leader take over at once, if etcd still answers.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
    lost.send_replace(Some(reason));
}

fn decode_leader(bytes: &[u8]) -> Option<LeaderRecord> {
    serde_json::from_slice(bytes).ok()
}

/// The managers on `store` and the leader, as their records say.
///
/// # Errors
/// If etcd does not answer.
pub async fn managers(
    store: &EtcdStore,
) -> Result<(Vec<ManagerRecord>, Option<LeaderRecord>), StoreError> {
    let mut client = store.client();
    let prefix = store.key_of(MANAGERS_KEY);
    let reply = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| backend("reading the managers", &e))?;
    let revision = reply
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let mut managers: Vec<ManagerRecord> = reply
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    managers.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
    let leader = client
        .get(
            store.key_of(LEADER_KEY),
            Some(GetOptions::new().with_revision(revision)),
        )
        .await
        .map_err(|e| backend("reading the leader", &e))?;
    let leader = leader
        .kvs()
        .first()
        .and_then(|kv| decode_leader(kv.value()));
    Ok((managers, leader))
}
