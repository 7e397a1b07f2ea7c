//! Group commit: the one writer that turns the manager's changes into store
//! transactions.
//!
//! The manager's state lives in memory; every change to it is also queued here,
//! in the order it was made, while the state lock is held. One thread drains the
//! queue, commits everything that has piled up in one transaction, and then
//! wakes whoever waits for durability. So a thousand concurrent submits cost a
//! handful of fsyncs, and a client is answered only once its change is on disk.
//!
//! This module knows the [`Store`] and nothing of gRPC or of scheduling.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError, Write};

/// Most writes in one transaction; a bound on commit latency for the writes
/// queued behind a large batch.
const MAX_BATCH: usize = 20_000;

enum Job {
    Writes(Vec<Write>, Option<oneshot::Sender<Result<(), String>>>),
    Flush(oneshot::Sender<Result<(), String>>),
    /// Commit what is queued, then close the store and stop.
    Close(oneshot::Sender<Result<(), String>>),
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Job>,
}

/// Resolves once the writes it was returned for are durable.
pub struct Durable(Option<oneshot::Receiver<Result<(), String>>>);

impl Durable {
    /// A change that needs no write.
    pub fn done() -> Self {
        Self(None)
    }

    /// Waits for the commit.
    ///
    /// # Errors
    /// The store's error if the transaction failed, or if the writer is gone.
    pub async fn wait(self) -> Result<(), StoreError> {
        let Some(rx) = self.0 else { return Ok(()) };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e)),
            Err(_) => Err(StoreError::Backend("the store writer has stopped".into())),
        }
    }
}

impl Committer {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("orch-store".into())
            .spawn(move || writer(store, rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the store writer"));
        Self { tx }
    }

    /// Queues writes whose durability nobody waits for. Their order with all
    /// other queued writes is kept.
    pub fn queue(&self, writes: Vec<Write>) {
        if !writes.is_empty() && self.tx.send(Job::Writes(writes, None)).is_err() {
            tracing::error!("store writer has stopped; a change was not persisted");
        }
    }

    /// Queues writes and returns a [`Durable`] that resolves once they are committed.
    pub fn queue_durable(&self, writes: Vec<Write>) -> Durable {
        if writes.is_empty() {
            return Durable::done();
        }
        let (done, rx) = oneshot::channel();
        // A send error drops `done`, which `Durable::wait` reports.
        let _ = self.tx.send(Job::Writes(writes, Some(done)));
        Durable(Some(rx))
    }

    /// Commits everything queued before this call, then closes the store (so
    /// the same file can be opened again at once, by a restarted manager) and
    /// stops the writer. Writes queued afterwards are refused.
    ///
    /// # Errors
    /// As [`Durable::wait`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Close(done));
        Durable(Some(rx)).wait().await
    }

    /// Waits until everything queued before this call is durable.
    ///
    /// # Errors
    /// As [`Durable::wait`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Flush(done));
        Durable(Some(rx)).wait().await
    }
}

fn writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::new();
    let mut waiters = Vec::new();
    let mut closing = None;
    let mut last = Ok(());
    while let Some(job) = rx.blocking_recv() {
        closing = take(job, &mut batch, &mut waiters);
        while closing.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => closing = take(job, &mut batch, &mut waiters),
                Err(_) => break,
            }
        }
        let result = store.commit(&batch).map_err(|e| {
            tracing::error!(error = %e, writes = batch.len(), "store commit failed");
            e.to_string()
        });
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
        batch.clear();
        last = result;
        if closing.is_some() {
            break;
        }
    }
    // Close the database before saying so.
    drop(store);
    if let Some(done) = closing {
        // The close succeeded only if the final commit did.
        let _ = done.send(last);
    }
}

/// Adds a job to the batch; returns the waiter of a close request.
fn take(
    job: Job,
    batch: &mut Vec<Write>,
    waiters: &mut Vec<oneshot::Sender<Result<(), String>>>,
) -> Option<oneshot::Sender<Result<(), String>>> {
    match job {
        Job::Writes(mut w, done) => {
            batch.append(&mut w);
            waiters.extend(done);
            None
        }
        Job::Flush(done) => {
            waiters.push(done);
            None
        }
        Job::Close(done) => Some(done),
    }
}
