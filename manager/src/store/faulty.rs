//! [`FaultyStore`]: a [`Store`] that fails commits on command, for the tests
//! of how the manager handles a failing store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use orch::v1::Event;

use super::{Snapshot, Store, StoreError, Write};

/// Wraps another [`Store`] and fails as many of the next commits as it is
/// told to ([`FaultyStore::fail_commits`]), applying nothing of them.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    to_fail: AtomicUsize,
    failed: AtomicUsize,
}

impl FaultyStore {
    /// A store that passes everything to `inner` until told to fail.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            to_fail: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    /// Makes the next `n` commits fail (replacing any count left).
    pub fn fail_commits(&self, n: usize) {
        self.to_fail.store(n, Ordering::SeqCst);
    }

    /// How many commits have failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Store for FaultyStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let failing = self
            .to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            let n = self.failed.fetch_add(1, Ordering::SeqCst) + 1;
            return Err(StoreError::Backend(format!("injected failure {n}")));
        }
        self.inner.commit(writes)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(after, limit)
    }
}
