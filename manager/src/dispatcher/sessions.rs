//! The workers' sessions as the manager's core sees them: which node has an
//! open stream, which session `Register` handed out, when each node was last
//! heard from, and the liveness deadline that follows.
//!
//! `Sessions` owns the sending half of every session's channel; the
//! dispatcher's gRPC code owns the receiving half and turns each [`Push`] into
//! a stream message. Nothing here knows tonic or the network: a push is a
//! plain value on a channel, so the core never holds the state lock across
//! I/O. It decides nothing about tasks; whether a silent node goes down, and
//! what happens to its tasks, is the engine's call.
//!
//! A session's channel is bounded ([`SESSION_BUFFER`] pushes) and a push
//! never waits, for the engine pushes under its lock: a session whose
//! worker does not keep up is ended ("fell behind") when its channel is
//! full, and the worker's next session opens with the full set, as after
//! any break. One place of the channel is kept for that end, so the worker
//! is always told why.

use std::collections::HashMap;
use std::time::Duration;

use orch::v1::{Assignments, WorkerLogsRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

pub use crate::limits::SESSION_BUFFER;

/// What the manager sends down a worker's session. The dispatcher turns it
/// into the stream's messages (several, for a large one).
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// Tasks to run and to stop, to be sent once the engine's job `after`
    /// is durable (`crate::persist::Committer::marks`).
    Assignments {
        /// What the worker is told.
        assignments: Assignments,
        /// The job that holds the writes behind it.
        after: u64,
    },
    /// Stream an attempt's output up (on a `SendLogs` call).
    Logs(WorkerLogsRequest),
    /// Stop streaming the output of this request.
    CancelLogs(String),
    /// The manager ends the session, for this reason; the worker registers again.
    End(String),
}

/// The sending half of a session's stream.
pub type SessionTx = mpsc::Sender<Push>;
/// The receiving half of a session's stream.
pub type SessionRx = mpsc::Receiver<Push>;

/// A session's channel, of [`SESSION_BUFFER`] pushes and one place more,
/// kept for [`Push::End`].
pub fn channel() -> (SessionTx, SessionRx) {
    mpsc::channel(SESSION_BUFFER + 1)
}

/// Liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often workers send heartbeats.
    pub heartbeat_period: Duration,
    /// A node is down once this many periods pass without a heartbeat.
    pub missed_heartbeats: u32,
}

impl Liveness {
    /// How long a node may stay silent before it is declared down.
    pub fn deadline(&self) -> Duration {
        self.heartbeat_period * self.missed_heartbeats
    }
}

/// One node's session bookkeeping.
struct Entry {
    /// The open session and its stream, if the worker is connected.
    open: Option<(Uuid, SessionTx)>,
    /// A session id handed out by `Register` and not yet opened.
    registered: Option<Uuid>,
    /// When the worker was last heard from (tokio's clock, so tests can pause it).
    last_seen: Instant,
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session {session} of node {node} is unknown or superseded; register again")]
pub struct StaleSession {
    /// The node named by the worker.
    pub node: Uuid,
    /// The session named by the worker.
    pub session: Uuid,
}

/// Every node's session. See the module documentation.
pub struct Sessions {
    entries: HashMap<Uuid, Entry>,
    liveness: Liveness,
}

impl Sessions {
    /// No sessions yet.
    pub fn new(liveness: Liveness) -> Self {
        Self {
            entries: HashMap::new(),
            liveness,
        }
    }

    /// The liveness settings.
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Hands out a new session id for `node`, to be opened next. A session
    /// handed out before and not opened is forgotten; an open one stays open
    /// until the new one opens.
    pub fn register(&mut self, node: Uuid, now: Instant) -> Uuid {
        let session = Uuid::new_v4();
        self.track(node, now);
        if let Some(entry) = self.entries.get_mut(&node) {
            entry.registered = Some(session);
        }
        session
    }

    /// Opens the session `Register` handed out: from now on pushes to `node`
    /// go to `tx`, and the node counts as heard from. A previous session of
    /// the node is replaced, which closes its stream.
    ///
    /// # Errors
    /// [`StaleSession`] if `session` is not the one last handed out for `node`.
    pub fn open(
        &mut self,
        node: Uuid,
        session: Uuid,
        tx: SessionTx,
        now: Instant,
    ) -> Result<(), StaleSession> {
        let entry = self
            .entries
            .get_mut(&node)
            .filter(|e| e.registered == Some(session))
            .ok_or(StaleSession { node, session })?;
        entry.registered = None;
        entry.open = Some((session, tx));
        entry.last_seen = now;
        Ok(())
    }

    /// The stream of `session` ended. Returns whether it was the node's
    /// current session (a superseded one changes nothing).
    pub fn close(&mut self, node: Uuid, session: Uuid) -> bool {
        match self.entries.get_mut(&node) {
            Some(entry) if entry.open.as_ref().map(|s| s.0) == Some(session) => {
                entry.open = None;
                true
            }
            _ => false,
        }
    }

    /// Whether `session` is `node`'s open session.
    pub fn is_current(&self, node: Uuid, session: Uuid) -> bool {
        self.entries
            .get(&node)
            .and_then(|e| e.open.as_ref())
            .is_some_and(|s| s.0 == session)
    }

    /// Whether `node`'s worker is connected.
    pub fn connected(&self, node: Uuid) -> bool {
        self.entries.get(&node).is_some_and(|e| e.open.is_some())
    }

    /// The worker of `node` was heard from at `now`.
    pub fn seen(&mut self, node: Uuid, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&node) {
            entry.last_seen = now;
        }
    }

    /// Starts counting `node`'s liveness from `now`, unless it is counted
    /// already. A node loaded from the store gets a whole deadline for its
    /// worker to come back to a restarted manager.
    pub fn track(&mut self, node: Uuid, now: Instant) {
        self.entries.entry(node).or_insert(Entry {
            open: None,
            registered: None,
            last_seen: now,
        });
    }

    /// Gives every node at least until `until` before it is declared down:
    /// a new leader's grace for the workers to find it after a failover.
    pub fn hold_until(&mut self, until: Instant) {
        let from = until.checked_sub(self.liveness.deadline()).unwrap_or(until);
        for entry in self.entries.values_mut() {
            entry.last_seen = entry.last_seen.max(from);
        }
    }

    /// When `node` is due to be declared down unless it is heard from first;
    /// `None` for a node not tracked.
    pub fn deadline(&self, node: Uuid) -> Option<Instant> {
        self.entries
            .get(&node)
            .map(|e| e.last_seen + self.liveness.deadline())
    }

    /// Sends `assignments` down `node`'s session, if it has one, without
    /// waiting. A worker that has gone away is no error: its next session
    /// opens with the full set. A session whose channel is full (its
    /// worker is [`SESSION_BUFFER`] pushes behind) is ended instead, and
    /// for the same reason loses nothing. Returns false if it ended the
    /// session. The session sends it once the engine's job `after` is
    /// durable.
    pub fn push(&mut self, node: Uuid, assignments: Assignments, after: u64) -> bool {
        let Some((session, tx)) = self.entries.get(&node).and_then(|e| e.open.as_ref()) else {
            return true;
        };
        // The last place is the end's.
        if tx.capacity() > 1 {
            let _ = tx.try_send(Push::Assignments { assignments, after });
            return true;
        }
        tracing::warn!(%node, %session, pushes = SESSION_BUFFER, "a worker fell behind its session; ending it");
        self.end(
            node,
            &format!(
                "the worker fell {SESSION_BUFFER} messages behind; open a new session for the full set"
            ),
        );
        false
    }

    /// Sends a log request (or its cancel) down `node`'s session without
    /// waiting. Returns false if the node has no open session or its
    /// channel is full; unlike an assignment, a lost one is no reason to
    /// end the session: the client is told instead.
    pub fn send(&mut self, node: Uuid, push: Push) -> bool {
        let Some((_, tx)) = self.entries.get(&node).and_then(|e| e.open.as_ref()) else {
            return false;
        };
        // The last place is the end's.
        tx.capacity() > 1 && tx.try_send(push).is_ok()
    }

    /// When `node`'s worker was last heard from, if it is tracked.
    pub fn last_seen(&self, node: Uuid) -> Option<Instant> {
        self.entries.get(&node).map(|e| e.last_seen)
    }

    /// Ends `node`'s open session, telling the worker `why` after what is
    /// already waiting on its channel.
    pub fn end(&mut self, node: Uuid, why: &str) {
        if let Some((_, tx)) = self.entries.get_mut(&node).and_then(|e| e.open.take()) {
            // There is always a place for it: pushes leave the last one.
            let _ = tx.try_send(Push::End(why.to_owned()));
        }
    }

    /// Drops every session's sender, so that every stream ends: for a
    /// graceful shutdown, which would otherwise wait on streams that never end.
    pub fn close_all(&mut self) {
        for entry in self.entries.values_mut() {
            entry.open = None;
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;

    const LIVENESS: Liveness = Liveness {
        heartbeat_period: Duration::from_secs(1),
        missed_heartbeats: 3,
    };

    #[test]
    fn only_the_session_last_handed_out_opens() {
        let now = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        let first = s.register(node, now);
        let second = s.register(node, now);
        let (tx, _rx) = channel();
        assert_eq!(
            s.open(node, first, tx.clone(), now),
            Err(StaleSession {
                node,
                session: first
            })
        );
        assert!(s.open(Uuid::new_v4(), second, tx.clone(), now).is_err());
        s.open(node, second, tx.clone(), now).unwrap();
        assert!(s.is_current(node, second) && s.connected(node));
        // A session opens once.
        assert!(s.open(node, second, tx, now).is_err());
    }

    #[test]
    fn a_new_session_replaces_the_old_whose_close_then_changes_nothing() {
        let now = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        let old = s.register(node, now);
        let (old_tx, mut old_rx) = channel();
        s.open(node, old, old_tx, now).unwrap();
        let new = s.register(node, now);
        let (new_tx, mut new_rx) = channel();
        s.open(node, new, new_tx, now).unwrap();
        assert_eq!(old_rx.try_recv(), Err(TryRecvError::Disconnected));
        assert!(!s.close(node, old), "superseded");
        assert!(s.is_current(node, new));
        s.push(node, Assignments::default(), 7);
        assert_eq!(
            new_rx.try_recv(),
            Ok(Push::Assignments {
                assignments: Assignments::default(),
                after: 7
            })
        );
        assert!(s.close(node, new));
        assert!(!s.connected(node));
    }

    #[test]
    fn ending_a_session_tells_the_worker_why_then_closes_its_stream() {
        let now = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        let session = s.register(node, now);
        let (tx, mut rx) = channel();
        s.open(node, session, tx, now).unwrap();
        s.end(node, "no heartbeat");
        assert_eq!(rx.try_recv(), Ok(Push::End("no heartbeat".into())));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert!(!s.connected(node));
    }

    #[test]
    fn a_session_that_falls_behind_is_ended_and_told_why() {
        let now = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        let session = s.register(node, now);
        let (tx, mut rx) = channel();
        s.open(node, session, tx, now).unwrap();
        for _ in 0..SESSION_BUFFER {
            assert!(s.push(node, Assignments::default(), 1));
        }
        assert!(s.connected(node), "a full buffer, not more");
        assert!(!s.push(node, Assignments::default(), 1));
        assert!(!s.connected(node));
        for _ in 0..SESSION_BUFFER {
            assert_eq!(
                rx.try_recv(),
                Ok(Push::Assignments {
                    assignments: Assignments::default(),
                    after: 1
                })
            );
        }
        match rx.try_recv() {
            Ok(Push::End(why)) => assert!(why.contains("fell 65536 messages behind"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        // The next session starts with room again.
        let next = s.register(node, now);
        let (tx, mut rx) = channel();
        s.open(node, next, tx, now).unwrap();
        s.push(node, Assignments::default(), 1);
        assert_eq!(
            rx.try_recv(),
            Ok(Push::Assignments {
                assignments: Assignments::default(),
                after: 1
            })
        );
    }

    #[test]
    fn a_log_request_is_refused_not_fatal_when_it_cannot_go() {
        let now = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        let cancel = || Push::CancelLogs("r".into());
        assert!(!s.send(node, cancel()), "no session");
        let session = s.register(node, now);
        let (tx, mut rx) = channel();
        s.open(node, session, tx, now).unwrap();
        assert!(s.send(node, cancel()));
        assert_eq!(rx.try_recv(), Ok(cancel()));
        for _ in 0..SESSION_BUFFER {
            assert!(s.push(node, Assignments::default(), 1));
        }
        assert!(!s.send(node, cancel()), "full: refused");
        assert!(s.connected(node), "and the session goes on");
    }

    #[test]
    fn the_deadline_follows_the_last_sign_of_life() {
        let start = Instant::now();
        let mut s = Sessions::new(LIVENESS);
        let node = Uuid::new_v4();
        assert_eq!(s.deadline(node), None);
        s.track(node, start);
        assert_eq!(s.deadline(node), Some(start + Duration::from_secs(3)));
        s.seen(node, start + Duration::from_secs(2));
        assert_eq!(s.deadline(node), Some(start + Duration::from_secs(5)));
        // Tracking again does not reset the count.
        s.track(node, start + Duration::from_secs(4));
        assert_eq!(s.deadline(node), Some(start + Duration::from_secs(5)));
    }
}
