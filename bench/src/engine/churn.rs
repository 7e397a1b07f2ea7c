//! A rolling update as the engine sees it: its own `start` events of the
//! new version's containers and `die` events of the old ones, so that orch
//! and Swarm are timed by the same clock, whichever way each of them learns
//! that the update is over.
//!
//! Every container of the services scenario carries, beside
//! [`LABEL`](super::docker::LABEL) naming its system, [`VERSION_LABEL`]
//! naming the version of the template it runs.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use tokio::sync::oneshot;

use super::docker::{Engine, LABEL, engine_timestamp};
use crate::Error;

/// The label naming the template version a container runs ("1", "2").
pub const VERSION_LABEL: &str = "orch-bench.version";

/// When the engine started each new container and stopped each old one.
#[derive(Debug, Clone, Default)]
pub struct Turnover {
    /// The start time of each new-version container.
    pub starts: Vec<SystemTime>,
    /// The time each old container died.
    pub dies: Vec<SystemTime>,
}

/// Collects one update's [`Turnover`]; dropping it stops the reader.
#[derive(Debug)]
pub struct Churn {
    rx: oneshot::Receiver<Result<Turnover, Error>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Churn {
    /// The turnover, once every old container died and enough new ones started.
    ///
    /// # Errors
    /// If that did not happen in time, or the event stream failed.
    pub async fn wait(mut self) -> Result<Turnover, Error> {
        (&mut self.rx)
            .await
            .map_err(|_| Error::Io("docker: the event reader stopped".into()))?
    }
}

impl Engine {
    /// Starts following the engine's `start` and `die` events of `system`'s
    /// containers from `since` on (replayed by the engine from there), until
    /// `new` distinct containers labelled `version` have started and every
    /// container of `old` has died, or `timeout` has passed.
    pub fn churn(
        &self,
        system: &str,
        version: &str,
        new: usize,
        old: HashSet<String>,
        since: SystemTime,
        timeout: Duration,
    ) -> Churn {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["start".to_string(), "die".to_string()]),
            ("label", vec![format!("{LABEL}={system}")]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&engine_timestamp(since))
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(options));
        let version = version.to_string();
        let (tx, rx) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let collect = async {
                let mut started: HashMap<String, SystemTime> = HashMap::with_capacity(new);
                let mut died: HashMap<String, SystemTime> = HashMap::with_capacity(old.len());
                while started.len() < new || died.len() < old.len() {
                    let event = events
                        .next()
                        .await
                        .ok_or_else(|| Error::Io("docker: the event stream ended".into()))?
                        .map_err(|e| Error::Io(format!("docker: events: {e}")))?;
                    let at = event
                        .time_nano
                        .and_then(|t| u64::try_from(t).ok())
                        .map_or_else(SystemTime::now, |t| UNIX_EPOCH + Duration::from_nanos(t));
                    let Some(actor) = event.actor else { continue };
                    let id = actor.id.unwrap_or_default();
                    let labelled = actor
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get(VERSION_LABEL))
                        .is_some_and(|v| *v == version);
                    match event.action.as_deref() {
                        Some("start") if labelled => {
                            started.entry(id).or_insert(at);
                        }
                        Some(action) if action.starts_with("die") && old.contains(&id) => {
                            died.entry(id).or_insert(at);
                        }
                        _ => {}
                    }
                }
                Ok(Turnover {
                    starts: started.into_values().collect(),
                    dies: died.into_values().collect(),
                })
            };
            let result = tokio::time::timeout(timeout, collect)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "not {new} new containers started and {} old ones gone within {timeout:?}",
                        old.len()
                    )))
                });
            let _ = tx.send(result);
        });
        Churn { rx, reader }
    }

    /// The ids of `system`'s running containers labelled `version`.
    ///
    /// # Errors
    /// If the engine cannot list containers.
    pub async fn running_version(&self, system: &str, version: &str) -> Result<Vec<String>, Error> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL}={system}"),
                format!("{VERSION_LABEL}={version}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        Ok(self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| Error::Io(format!("docker: list: {e}")))?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }
}
