//! Group commit: the one writer that turns the manager's changes into store
//! transactions.
//!
//! The manager's state lives in memory; every change to it is also queued here,
//! in the order it was made, while the state lock is held. One thread drains the
//! queue, commits everything that has piled up in one transaction, and then
//! wakes whoever waits for durability. So a thousand concurrent submits cost a
//! handful of fsyncs, and a client is answered only once its change is on disk.
//!
//! A failed commit is never dropped: the memory already holds those changes,
//! so the writer keeps the batch and commits it again, with a backoff
//! (`RETRY_FIRST` doubling to `RETRY_MAX`), until the store works again,
//! appending every change queued meanwhile behind it, in order. While it fails
//! the manager acknowledges nothing: every [`Durable`] of the failed batch and
//! of anything queued after it resolves to an error at once, and
//! [`Committer::health`] says [`StoreHealth::Failing`] (the gRPC health
//! service turns `NOT_SERVING`). The only writes that are dropped are those
//! queued with [`Committer::queue_tentative`], which take effect in memory
//! only once durable (a submitted task), so dropping them is what keeps disk
//! and memory alike. The kept writes live in memory until then: a store
//! that never recovers makes them grow with every change the manager makes
//! meanwhile (reports, placements), which its health makes visible.
//!
//! The engine numbers the jobs it queues ([`Committer::queue_marked`]), and
//! the writer publishes the highest number it has made durable
//! ([`Committer::marks`]). A push to a worker carries the number of the job
//! that holds its writes, and its session sends it only once that job is
//! durable: a worker never acts on a decision the store may still lose, so a
//! crashed or deposed manager's successor never finds a container started or
//! stopped for a change it does not know of.
//!
//! Every commit is measured (`crate::metrics::StoreMetrics`: how long it
//! took, how many writes, whether it failed) on the writer's own thread.
//!
//! This module knows the [`Store`] and nothing of gRPC or of scheduling.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::metrics::StoreMetrics;
use crate::store::{Store, StoreError, Write};

/// Most writes in one transaction; a bound on commit latency for the writes
/// queued behind a large batch.
const MAX_BATCH: usize = 20_000;

/// The wait before the first retry of a failed commit; it doubles at each
/// failure up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two retries of a failed commit.
const RETRY_MAX: Duration = Duration::from_secs(5);

type Waiter = oneshot::Sender<Result<(), String>>;

/// The engine's number of a job (see [`Committer::queue_marked`]); 0 for an
/// unnumbered one.
type Mark = u64;

enum Job {
    /// Writes to keep whatever happens, and who waits for them.
    Writes(Vec<Write>, Option<Waiter>, Mark),
    /// Writes that count only if committed: dropped, with their waiter told,
    /// if their commit fails or the store is failing.
    Tentative(Vec<Write>, Waiter),
    Flush(Waiter, Mark),
    /// Commit what is queued, then close the store and stop.
    Close(Waiter),
}

/// Whether the store takes commits, as [`Committer::health`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last commit succeeded.
    Serving,
    /// A commit failed and its writes wait to be committed again; nothing is
    /// acknowledged until that succeeds.
    Failing {
        /// The store's error, as the last attempt reported it.
        reason: String,
    },
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    health: watch::Receiver<StoreHealth>,
    marks: watch::Receiver<u64>,
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
    /// The store's error if the transaction failed or the store is failing
    /// (the message says whether the change is kept), or if the writer is gone.
    pub async fn wait(self) -> Result<(), StoreError> {
        let Some(rx) = self.0 else { return Ok(()) };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e)),
            Err(_) => Err(StoreError::Backend(
                "the store writer has stopped; nothing was stored".into(),
            )),
        }
    }
}

impl Committer {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        Self::start_measured(store, StoreMetrics::default())
    }

    /// As [`Committer::start`], measuring every commit into `metrics`.
    pub fn start_measured(store: Arc<dyn Store>, metrics: StoreMetrics) -> Self {
        let (tx, rx) = mpsc::channel();
        let (health_tx, health) = watch::channel(StoreHealth::Serving);
        let (marks_tx, marks) = watch::channel(0);
        thread::Builder::new()
            .name("orch-store".into())
            .spawn(move || Writer::new(store, health_tx, marks_tx, metrics).run(&rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the store writer"));
        Self { tx, health, marks }
    }

    /// The highest job number of [`Committer::queue_marked`] whose writes
    /// (and everything queued before them) are durable. It only grows; it
    /// stands still while the store fails, and its sender is gone once the
    /// writer has stopped.
    pub fn marks(&self) -> watch::Receiver<u64> {
        self.marks.clone()
    }

    /// Whether the store takes commits; changes as commits fail and succeed.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    /// Queues writes whose durability nobody waits for. Their order with all
    /// other queued writes is kept.
    pub fn queue(&self, writes: Vec<Write>) {
        if !writes.is_empty() && self.tx.send(Job::Writes(writes, None, 0)).is_err() {
            tracing::error!("store writer has stopped; a change was not persisted");
        }
    }

    /// Queues writes and returns a [`Durable`] that resolves once they are
    /// committed. The writes are kept (and committed once the store works)
    /// even when the [`Durable`] reports a failure. With no writes it still
    /// resolves only once everything queued before is durable: an answer
    /// that needs no write of its own may rest on earlier changes.
    pub fn queue_durable(&self, writes: Vec<Write>) -> Durable {
        self.queue_marked(writes, 0)
    }

    /// As [`Committer::queue_durable`], for job number `mark` of one caller
    /// that numbers its jobs 1, 2, 3... in the order it queues them (the
    /// engine, under its lock): once they are durable, [`Committer::marks`]
    /// says `mark`. A job with no writes gets its number too.
    pub fn queue_marked(&self, writes: Vec<Write>, mark: u64) -> Durable {
        let (done, rx) = oneshot::channel();
        let job = if writes.is_empty() {
            Job::Flush(done, mark)
        } else {
            Job::Writes(writes, Some(done), mark)
        };
        // A send error drops `done`, which `Durable::wait` reports.
        let _ = self.tx.send(job);
        Durable(Some(rx))
    }

    /// Queues writes that take effect only once committed (the caller applies
    /// them to memory only when the [`Durable`] succeeds): if their commit
    /// fails, or the store is failing already, they are dropped, never
    /// stored, and the [`Durable`] says so.
    pub fn queue_tentative(&self, writes: Vec<Write>) -> Durable {
        if writes.is_empty() {
            return Durable::done();
        }
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Tentative(writes, done));
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
        let _ = self.tx.send(Job::Flush(done, 0));
        Durable(Some(rx)).wait().await
    }
}

/// The writer thread's state.
struct Writer {
    store: Arc<dyn Store>,
    health: watch::Sender<StoreHealth>,
    /// The writes to commit next, in order: a batch being gathered, or,
    /// while the store fails, the failed batch and everything queued since.
    batch: Vec<Write>,
    /// The tentative writes' places in `batch` (while it is gathered).
    tentative: Vec<Range<usize>>,
    /// Who waits on the gathered batch, and whether their writes were tentative.
    waiters: Vec<(Waiter, bool)>,
    /// Set while the store fails: when to try again and the wait after that.
    retry: Option<(Instant, Duration)>,
    /// The highest job number in `batch`; published on `marks` once it is
    /// committed.
    mark: u64,
    marks: watch::Sender<u64>,
    metrics: StoreMetrics,
}

impl Writer {
    fn new(
        store: Arc<dyn Store>,
        health: watch::Sender<StoreHealth>,
        marks: watch::Sender<u64>,
        metrics: StoreMetrics,
    ) -> Self {
        Self {
            store,
            health,
            batch: Vec::new(),
            tentative: Vec::new(),
            waiters: Vec::new(),
            retry: None,
            mark: 0,
            marks,
            metrics,
        }
    }

    /// Takes note of a job's number (0: none).
    fn note(&mut self, mark: Mark) {
        self.mark = self.mark.max(mark);
    }

    /// Says that everything in the batch just committed is durable.
    fn committed(&self) {
        if self.mark > *self.marks.borrow() {
            self.marks.send_replace(self.mark);
        }
    }

    /// Commits `batch` in one transaction, measured (unless it is empty: a
    /// flush with nothing to write).
    fn commit(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.store.commit(&self.batch);
        if !self.batch.is_empty() {
            self.metrics
                .commit(self.batch.len(), started.elapsed(), result.is_ok());
        }
        result
    }

    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        let closing = loop {
            let job = match self.retry {
                None => rx.recv().ok(),
                Some((at, _)) => {
                    match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) => {
                            self.retry_commit();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => None,
                    }
                }
            };
            let Some(job) = job else {
                // Every handle is gone: one last try, with nobody to tell.
                let _ = self.commit_last();
                break None;
            };
            if self.retry.is_some() {
                if let Some(done) = self.take_failing(job) {
                    break Some((done, self.commit_last()));
                }
                continue;
            }
            let mut closing = self.take(job);
            while closing.is_none() && self.batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => closing = self.take(job),
                    Err(_) => break,
                }
            }
            let result = self.commit_batch();
            if let Some(done) = closing {
                // A failed batch gets one more try: nothing retries it later.
                break Some((done, result.or_else(|_| self.commit_last())));
            }
        };
        // Close the database before saying so.
        drop(self.store);
        if let Some((done, result)) = closing {
            // The close succeeded only if the final commit did.
            let _ = done.send(result);
        }
    }

    /// Adds a job to the batch being gathered; returns the waiter of a close
    /// request.
    fn take(&mut self, job: Job) -> Option<Waiter> {
        match job {
            Job::Writes(mut w, done, mark) => {
                self.batch.append(&mut w);
                self.waiters.extend(done.map(|d| (d, false)));
                self.note(mark);
            }
            Job::Tentative(mut w, done) => {
                let start = self.batch.len();
                self.batch.append(&mut w);
                self.tentative.push(start..self.batch.len());
                self.waiters.push((done, true));
            }
            Job::Flush(done, mark) => {
                self.waiters.push((done, false));
                self.note(mark);
            }
            Job::Close(done) => return Some(done),
        }
        None
    }

    /// A job that arrives while the store fails: its writes join the kept
    /// ones (tentative writes are dropped), and its waiter is told at once.
    fn take_failing(&mut self, job: Job) -> Option<Waiter> {
        let reason = self.reason();
        match job {
            Job::Writes(mut w, done, mark) => {
                self.batch.append(&mut w);
                if let Some(done) = done {
                    let _ = done.send(Err(kept(&reason)));
                }
                self.note(mark);
            }
            Job::Tentative(_, done) => {
                let _ = done.send(Err(dropped(&reason)));
            }
            Job::Flush(done, mark) => {
                let _ = done.send(Err(kept(&reason)));
                self.note(mark);
            }
            Job::Close(done) => return Some(done),
        }
        None
    }

    /// Commits the gathered batch and answers its waiters. On failure the
    /// batch, less its tentative writes, is kept for the retry.
    fn commit_batch(&mut self) -> Result<(), String> {
        match self.commit() {
            Ok(()) => {
                self.batch.clear();
                self.tentative.clear();
                self.committed();
                for (w, _) in self.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                for range in self.tentative.drain(..).rev() {
                    self.batch.drain(range);
                }
                tracing::error!(
                    error = %reason,
                    kept = self.batch.len(),
                    "store commit failed; the manager acknowledges nothing until it succeeds \
                     again, and retries it"
                );
                // Health first: whoever hears of the failure sees it there.
                self.fail(reason.clone(), RETRY_FIRST);
                for (w, tentative) in self.waiters.drain(..) {
                    let message = if tentative {
                        dropped(&reason)
                    } else {
                        kept(&reason)
                    };
                    let _ = w.send(Err(message));
                }
                Err(kept(&reason))
            }
        }
    }

    /// Commits the kept writes again, after a failure.
    fn retry_commit(&mut self) {
        let Some((_, wait)) = self.retry else { return };
        match self.commit() {
            Ok(()) => {
                tracing::info!(
                    writes = self.batch.len(),
                    "store commit succeeded again; acknowledging changes"
                );
                self.batch.clear();
                self.retry = None;
                self.health.send_replace(StoreHealth::Serving);
                self.committed();
            }
            Err(e) => {
                let next = (wait * 2).min(RETRY_MAX);
                tracing::error!(
                    error = %e,
                    kept = self.batch.len(),
                    retry_in = ?next,
                    "store commit failed again"
                );
                self.fail(e.to_string(), next);
            }
        }
    }

    /// Commits what is kept, once, before the writer stops.
    fn commit_last(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            self.committed();
            return Ok(());
        }
        self.commit().map(|()| self.committed()).map_err(|e| {
            tracing::error!(
                error = %e,
                lost = self.batch.len(),
                "final store commit failed; these changes are not stored"
            );
            e.to_string()
        })
    }

    fn fail(&mut self, reason: String, wait: Duration) {
        self.retry = Some((Instant::now() + wait, wait));
        self.health.send_replace(StoreHealth::Failing { reason });
    }

    fn reason(&self) -> String {
        match &*self.health.borrow() {
            StoreHealth::Failing { reason } => reason.clone(),
            StoreHealth::Serving => "unknown".into(),
        }
    }
}

/// What the waiter of a kept change hears while the store fails.
fn kept(reason: &str) -> String {
    format!(
        "commit failed ({reason}); the change is kept in memory and will be written once the \
         store works again, but is not acknowledged"
    )
}

/// What the waiter of a dropped tentative change hears.
fn dropped(reason: &str) -> String {
    format!("commit failed ({reason}); nothing was stored")
}

#[cfg(test)]
mod tests;
