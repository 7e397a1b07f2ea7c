//! Compaction of etcd's history.
//!
//! etcd keeps every revision of every key until it is told to compact them
//! away, and a manager rewrites a task's status at every change: left alone,
//! the database grows with every report until it reaches etcd's space
//! quota (2 GiB by default), and then etcd refuses every write ("database
//! space exceeded"). So the leader, for as long as its term lasts, compacts
//! the history every [`COMPACT_EVERY`], up to the revision it saw one period
//! earlier, as Kubernetes' API server does: a load that reads the cluster
//! at one revision, a page at a time, has a whole period to finish.
//! Compaction changes no current value, so a deposed leader that compacts
//! once more harms nothing; it needs no fence.
//!
//! Compaction frees the space of old revisions for reuse inside etcd's
//! database file; it does not shrink the file (that is `etcdctl defrag`,
//! an operator's call, since it blocks the member while it runs).

use std::time::Duration;

use etcd_client::{CompactionOptions, GetOptions};

use super::{EtcdStore, backend};
use crate::store::StoreError;

/// How often the leader compacts etcd's history.
pub const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Compacts the store's history every `every`, each time up to the
/// revision of the round before; never returns (the term aborts it).
pub async fn compact_every(store: &EtcdStore, every: Duration) {
    let mut previous = None;
    loop {
        tokio::time::sleep(every).await;
        match compact(store, previous).await {
            Ok(seen) => previous = Some(seen),
            // Tried again at the next round, from the same revision: a
            // failure here (a lost quorum) is already loud in every commit.
            Err(e) => tracing::warn!(error = %e, "compacting etcd's history"),
        }
    }
}

/// One round: compacts every revision before `up_to` (if given), and
/// returns the store's current revision, to compact up to next time.
///
/// # Errors
/// If etcd does not answer, or refuses the compaction.
pub async fn compact(store: &EtcdStore, up_to: Option<i64>) -> Result<i64, StoreError> {
    let mut kv = store.client().kv_client();
    let now = kv
        .get(
            store.key_of("leader"),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .map_err(|e| backend("reading the revision", &e))?
        .header()
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| StoreError::Backend("etcd's answer has no header".into()))?;
    if let Some(revision) = up_to.filter(|&r| r > 0) {
        match kv
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => tracing::debug!(revision, "compacted etcd's history"),
            // Another leader, or an operator, compacted past it already.
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => return Err(backend("compacting", &e)),
        }
    }
    Ok(now)
}
