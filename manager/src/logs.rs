//! The log requests in flight: which client stream waits for which
//! worker's `SendLogs`, and how it ends when the worker's node goes away.
//!
//! [`LogRequests`] is plain bookkeeping, owned by the engine so that a
//! request is registered and its node's session checked under the same
//! lock that closes sessions: no request can slip in after its node's
//! streams were ended. Each request has a bounded channel of chunks (the
//! worker's `SendLogs` handler sends, the client's `Logs` stream receives,
//! so a slow client slows that one call, never a session) and a one-shot
//! abort that says why the node can no longer answer. Nothing here knows
//! tonic or the network; the `Logs` handler (`api::logs`) and the
//! dispatcher do the I/O.

use std::collections::HashMap;

use orch::v1::LogsChunk;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Chunks a request's channel holds before the worker's stream waits.
pub const LOG_BUFFER: usize = 8;

/// One request waiting for, or receiving, a worker's output.
struct Pending {
    /// The node asked.
    node: Uuid,
    /// Where the worker's chunks go; taken by the one `SendLogs` call.
    tx: Option<mpsc::Sender<LogsChunk>>,
    /// Tells the client's stream why it ends early.
    abort: oneshot::Sender<String>,
}

/// The receiving end of one request: its chunks, and why it was cut off.
#[derive(Debug)]
pub struct LogReceiver {
    /// The request's id, as sent to the worker.
    pub id: Uuid,
    /// The worker's chunks, in order.
    pub chunks: mpsc::Receiver<LogsChunk>,
    /// Resolves with a reason if the node goes away first.
    pub aborted: oneshot::Receiver<String>,
}

/// Every request in flight. See the module documentation.
#[derive(Default)]
pub struct LogRequests {
    pending: HashMap<Uuid, Pending>,
}

impl LogRequests {
    /// Registers a request to `node`.
    pub fn open(&mut self, node: Uuid) -> LogReceiver {
        let id = Uuid::new_v4();
        let (tx, chunks) = mpsc::channel(LOG_BUFFER);
        let (abort, aborted) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                node,
                tx: Some(tx),
                abort,
            },
        );
        LogReceiver {
            id,
            chunks,
            aborted,
        }
    }

    /// The channel for a worker's `SendLogs` call answering `id`, once:
    /// `None` for an unknown request, one answered already, or one sent to
    /// another node than `caller` (when the caller is known).
    pub fn claim(&mut self, id: Uuid, caller: Option<Uuid>) -> Option<mpsc::Sender<LogsChunk>> {
        let pending = self.pending.get_mut(&id)?;
        if caller.is_some_and(|node| node != pending.node) {
            return None;
        }
        pending.tx.take()
    }

    /// Forgets a request (its stream ended, or its client went away).
    /// Returns the node it was sent to, which may still be streaming.
    pub fn remove(&mut self, id: Uuid) -> Option<Uuid> {
        self.pending.remove(&id).map(|p| p.node)
    }

    /// `node` can no longer answer: each of its requests ends, told `why`.
    pub fn node_gone(&mut self, node: Uuid, why: &str) {
        let gone: Vec<Uuid> = self
            .pending
            .iter()
            .filter(|(_, p)| p.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.abort.send(why.to_owned());
            }
        }
    }

    /// Every request ends, told `why` (the manager is shutting down).
    pub fn close_all(&mut self, why: &str) {
        for (_, p) in self.pending.drain() {
            let _ = p.abort.send(why.to_owned());
        }
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_claimed_once_by_its_own_node_and_relays_in_order() {
        let mut r = LogRequests::default();
        let (node, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut rx = r.open(node);
        assert!(r.claim(rx.id, Some(other)).is_none(), "another node's");
        assert!(r.claim(Uuid::new_v4(), None).is_none(), "unknown");
        let tx = r.claim(rx.id, Some(node)).unwrap();
        assert!(r.claim(rx.id, Some(node)).is_none(), "once");
        for n in 0..3 {
            let chunk = LogsChunk {
                request_id: n.to_string(),
                ..Default::default()
            };
            tx.send(chunk).await.unwrap();
        }
        for n in 0..3 {
            assert_eq!(rx.chunks.recv().await.unwrap().request_id, n.to_string());
        }
        assert_eq!(r.remove(rx.id), Some(node));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_gone_node_ends_its_requests_only_saying_why() {
        let mut r = LogRequests::default();
        let (node, other) = (Uuid::new_v4(), Uuid::new_v4());
        let a = r.open(node);
        let b = r.open(node);
        let mut c = r.open(other);
        r.node_gone(node, "node worker-2 disconnected");
        assert_eq!(a.aborted.await.unwrap(), "node worker-2 disconnected");
        assert_eq!(b.aborted.await.unwrap(), "node worker-2 disconnected");
        assert_eq!(r.len(), 1);
        assert!(c.aborted.try_recv().is_err(), "the other node's goes on");
    }

    #[tokio::test]
    async fn the_channel_is_bounded() {
        let mut r = LogRequests::default();
        let _rx = r.open(Uuid::new_v4());
        let id = _rx.id;
        let tx = r.claim(id, None).unwrap();
        for _ in 0..LOG_BUFFER {
            tx.try_send(LogsChunk::default()).unwrap();
        }
        assert!(
            tx.try_send(LogsChunk::default()).is_err(),
            "the worker waits"
        );
    }
}
