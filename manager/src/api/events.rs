//! `WatchEvents`: the kept events from the store, then the live ones from the
//! broadcast, with no gap and no duplicate, filtered.
//!
//! A watch joins at a *watch point* ([`Source::watch_point`]): it subscribes
//! to the broadcast, learns the newest event before it, and waits until the
//! store holds that one (the committer is asynchronous, so an event may have
//! been broadcast before the subscription but not yet be stored). Then it
//! reads the store a page at a time, never under the engine's lock, up to
//! that event, and goes on with the broadcast, which holds every later one.
//! It knows the last sequence it passed (sent or filtered out) and skips
//! anything at or below it. A watch that falls behind the broadcast is not
//! cut off: it takes a new watch point and catches up from the store again.
//! Only if the events it needs are no longer kept does it end, with
//! `OUT_OF_RANGE`; every error that ends it carries the trailer
//! [`LAST_SEQUENCE_TRAILER`], the sequence to resume after.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orch::api::LAST_SEQUENCE_TRAILER;
use orch::v1::{Event, EventKind, WatchEventsRequest, event};
use orch::validate::{self, FieldError};
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::metrics::WatchMetrics;
use crate::persist::Durable;
use crate::store::Store;
use crate::{Error, Shared};

/// How many events a watch reads from the store at a time.
const REPLAY_PAGE: usize = 1_000;

/// Most entries of `kinds` in one request.
const MAX_KIND_FILTERS: usize = 16;

/// How many times a watch in this process fell behind the broadcast and
/// caught up from the store.
static CATCH_UPS: AtomicU64 = AtomicU64::new(0);

/// How many times, since the process started, a watch fell behind the
/// broadcast and caught up from the store (each is also logged): for
/// benchmarks that ask whether their watcher kept up.
pub fn catch_ups() -> u64 {
    CATCH_UPS.load(Ordering::Relaxed)
}

/// Where a watch gets its events.
pub trait Source: Send + Sync + 'static {
    /// A receiver of every event from now on, the sequence of the newest
    /// event before it, and what resolves once the store holds that one.
    fn watch_point(&self) -> (broadcast::Receiver<Event>, u64, Durable);

    /// The store to replay from; `None` once the manager has closed it.
    fn store(&self) -> Option<Arc<dyn Store>>;
}

impl Source for Arc<Shared> {
    fn watch_point(&self) -> (broadcast::Receiver<Event>, u64, Durable) {
        self.lock().watch_point()
    }

    fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.upgrade()
    }
}

/// Which events a watch sends: every set part must match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    task: Option<String>,
    service: Option<String>,
    node: Option<String>,
    kinds: Vec<EventKind>,
}

impl Filter {
    /// The filter of a request, validated.
    ///
    /// # Errors
    /// The first bad field: an id that is not one, a bad service name, a
    /// kind that is not one.
    pub fn new(req: &WatchEventsRequest) -> Result<Self, FieldError> {
        let id = |field: &str, value: &str| -> Result<Option<String>, FieldError> {
            if value.is_empty() {
                return Ok(None);
            }
            // Ids are compared as the manager writes them.
            Ok(Some(validate::id(field, value)?.to_string()))
        };
        let service = if req.service.is_empty() {
            None
        } else {
            validate::service_name(&req.service).map_err(|e| FieldError::new("service", e.rule))?;
            Some(req.service.clone())
        };
        if req.kinds.len() > MAX_KIND_FILTERS {
            return Err(FieldError::new(
                "kinds",
                format!("{} entries, at most {MAX_KIND_FILTERS}", req.kinds.len()),
            ));
        }
        let mut kinds = Vec::with_capacity(req.kinds.len());
        for (i, k) in req.kinds.iter().enumerate() {
            match EventKind::try_from(*k) {
                Ok(kind) if kind != EventKind::Unspecified => kinds.push(kind),
                _ => {
                    return Err(FieldError::new(
                        format!("kinds[{i}]"),
                        format!("{k} is not an event kind"),
                    ));
                }
            }
        }
        Ok(Self {
            task: id("task_id", &req.task_id)?,
            service,
            node: id("node_id", &req.node_id)?,
            kinds,
        })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let (kind, task, service, node) = match &event.kind {
            Some(event::Kind::Task(t)) => (
                EventKind::Task,
                Some(&t.task_id),
                Some(&t.service),
                Some(&t.node_id),
            ),
            Some(event::Kind::Node(n)) => (EventKind::Node, None, None, Some(&n.node_id)),
            Some(event::Kind::Service(s)) => (EventKind::Service, None, Some(&s.name), None),
            None => return self == &Self::default(),
        };
        let passes = |wanted: &Option<String>, has: Option<&String>| {
            wanted.as_ref().is_none_or(|w| has == Some(w))
        };
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && passes(&self.task, task)
            && passes(&self.service, service)
            && passes(&self.node, node)
    }
}

/// Where a watch stands.
enum Phase {
    /// To take a watch point and replay from the store up to it.
    CatchUp,
    /// Replaying from the store up to `until`, the broadcast held for after.
    Replay {
        rx: broadcast::Receiver<Event>,
        until: u64,
        page: VecDeque<Event>,
    },
    /// Following the broadcast.
    Live(broadcast::Receiver<Event>),
    /// Ended.
    Done,
}

/// One `WatchEvents` stream's state; [`Watch::next`] is its next item.
pub struct Watch<S> {
    source: S,
    filter: Filter,
    /// What the watch counts in the manager's metrics.
    counted: WatchMetrics,
    /// The last sequence passed, sent or filtered out.
    position: u64,
    phase: Phase,
}

impl<S: Source> Watch<S> {
    /// A watch from `since` (replaying the kept events after it), or of the
    /// live events only.
    pub fn new(source: S, since: Option<u64>, filter: Filter) -> Self {
        let (position, phase) = match since {
            Some(since) => (since, Phase::CatchUp),
            None => {
                let (rx, newest, _) = source.watch_point();
                (newest, Phase::Live(rx))
            }
        };
        Self {
            source,
            filter,
            counted: WatchMetrics::default(),
            position,
            phase,
        }
    }

    /// The same watch, counting what it sends, misses and catches up in
    /// `counted` (the manager's metrics).
    #[must_use]
    pub fn counted(mut self, counted: WatchMetrics) -> Self {
        self.counted = counted;
        self
    }

    /// The next event to send, the error that ends the stream, or `None`
    /// once it has ended.
    pub async fn next(&mut self) -> Option<Result<Event, Status>> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::CatchUp => {
                    let (rx, until, durable) = self.source.watch_point();
                    if self.position > until {
                        return Some(Err(self.end(Status::out_of_range(format!(
                            "since: {} is past the newest event, {until}",
                            self.position
                        )))));
                    }
                    if let Err(e) = durable.wait().await {
                        return Some(Err(self.end(Error::from(e).into())));
                    }
                    self.phase = Phase::Replay {
                        rx,
                        until,
                        page: VecDeque::new(),
                    };
                }
                Phase::Replay {
                    rx,
                    until,
                    mut page,
                } => {
                    if let Some(event) = page.pop_front() {
                        self.phase = Phase::Replay { rx, until, page };
                        if let Some(event) = self.pass(event) {
                            self.counted.sent.inc();
                            return Some(Ok(event));
                        }
                        continue;
                    }
                    if self.position >= until {
                        self.phase = Phase::Live(rx);
                        continue;
                    }
                    match self.read_page(until).await {
                        Ok(events) => {
                            self.phase = Phase::Replay {
                                rx,
                                until,
                                page: events.into(),
                            };
                        }
                        Err(status) => {
                            if status.code() == tonic::Code::OutOfRange {
                                self.counted.cut.inc();
                            }
                            return Some(Err(self.end(status)));
                        }
                    }
                }
                Phase::Live(mut rx) => match rx.recv().await {
                    Ok(event) => {
                        self.phase = Phase::Live(rx);
                        if let Some(event) = self.pass(event) {
                            self.counted.sent.inc();
                            return Some(Ok(event));
                        }
                    }
                    // Fell behind: catch up from the store, then live again.
                    Err(RecvError::Lagged(missed)) => {
                        CATCH_UPS.fetch_add(1, Ordering::Relaxed);
                        self.counted.caught_up.inc();
                        self.counted.missed_live.inc_by(missed);
                        tracing::info!(
                            after = self.position,
                            missed,
                            "a watcher fell behind the live events; catching it up from the store"
                        );
                        self.phase = Phase::CatchUp;
                    }
                    Err(RecvError::Closed) => {
                        return Some(Err(self.end(Status::unavailable(
                            "the manager is shutting down; watch again with since",
                        ))));
                    }
                },
            }
        }
    }

    /// Moves past `event`; returns it if it is to be sent.
    fn pass(&mut self, event: Event) -> Option<Event> {
        if event.sequence <= self.position {
            return None;
        }
        self.position = event.sequence;
        self.filter.matches(&event).then_some(event)
    }

    /// The next kept events after the position, up to `until`: they must
    /// follow it without a gap, or those it needs are gone.
    async fn read_page(&self, until: u64) -> Result<Vec<Event>, Status> {
        let Some(store) = self.source.store() else {
            return Err(Status::unavailable(
                "the manager is shutting down; watch again with since",
            ));
        };
        let after = self.position;
        let limit = usize::try_from(until - after)
            .unwrap_or(usize::MAX)
            .min(REPLAY_PAGE);
        let read = tokio::task::spawn_blocking(move || {
            let page = store.events_after(after, limit)?;
            if page
                .first()
                .is_some_and(|first| first.sequence == after + 1)
            {
                return Ok(Ok(page));
            }
            // A gap: say which is the oldest event kept, if any.
            let oldest = match page.first() {
                Some(first) => Some(first.sequence),
                None => store.events_after(0, 1)?.first().map(|e| e.sequence),
            };
            Ok::<_, crate::store::StoreError>(Err(oldest))
        })
        .await
        .map_err(|e| Status::internal(format!("reading the kept events: {e}")))?;
        let oldest = match read {
            Ok(Ok(page)) => return Ok(page),
            Ok(Err(Some(oldest))) => format!("the oldest kept is {oldest}"),
            Ok(Err(None)) => "none is kept".to_owned(),
            Err(e) => return Err(Error::from(e).into()),
        };
        Err(Status::out_of_range(format!(
            "the events after {after} are no longer kept ({oldest}); the last event this \
             watch got is {after}; watch again with a later since"
        )))
    }

    /// Ends the stream with `status`, the position in its trailer.
    fn end(&mut self, mut status: Status) -> Status {
        self.phase = Phase::Done;
        if let Ok(value) = MetadataValue::try_from(self.position.to_string()) {
            status.metadata_mut().insert(LAST_SEQUENCE_TRAILER, value);
        }
        status
    }
}

/// The response stream of a watch.
pub fn stream<S: Source>(
    watch: Watch<S>,
) -> impl futures::Stream<Item = Result<Event, Status>> + Send + 'static {
    futures::stream::unfold(watch, |mut watch| async move {
        watch.next().await.map(|item| (item, watch))
    })
}

#[cfg(test)]
mod tests;
