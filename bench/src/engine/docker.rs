//! The Docker engine as the scenario sees it: one bollard client, the test
//! image, the label that marks every container the scenario makes (whichever
//! system made it), the engine's `start` events that time them, the bare
//! create+start that is the direct-API system, and the clean-up between
//! measurements.
//!
//! It touches only containers carrying [`LABEL`]: the machine may be shared,
//! and nothing else is ours to remove.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::Error;

/// The label on every container the scenario makes; its value names the
/// system that made it (`orch`, `direct`, `swarm`, or the single-task runs').
pub const LABEL: &str = "orch-bench.system";

/// What every container runs: long enough to outlive any measurement.
pub const COMMAND: [&str; 2] = ["sleep", "3600"];

/// How long removing our containers may take before the scenario gives up.
const REMOVE_DEADLINE: Duration = Duration::from_secs(120);

/// The engine, with the image every system runs.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The bollard client (version negotiated).
    pub docker: Docker,
    /// The image every container runs, present locally.
    pub image: String,
}

/// When each container of one measurement started, by the engine's events.
/// Dropping it stops the reader.
#[derive(Debug)]
pub struct Starts {
    rx: oneshot::Receiver<Result<Vec<SystemTime>, Error>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Starts {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn engine_error(what: &str) -> impl Fn(bollard::errors::Error) -> Error + '_ {
    move |e| Error::Io(format!("docker: {what}: {e}"))
}

impl Engine {
    /// Connects to the local engine and builds (or finds) the busybox test
    /// image of `orch-integration-tests`.
    ///
    /// # Errors
    /// If the engine cannot be reached or the image cannot be built.
    pub async fn connect() -> Result<Self, Error> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(engine_error("connect"))?
            .negotiate_version()
            .await
            .map_err(engine_error("version"))?;
        let image = orch_integration_tests::images::busybox(&docker)
            .await
            .map_err(|e| Error::Io(format!("test image: {e}")))?;
        Ok(Self { docker, image })
    }

    /// The labels of a container made for `system`.
    pub fn labels(system: &str) -> HashMap<String, String> {
        HashMap::from([(LABEL.to_string(), system.to_string())])
    }

    /// Creates and starts one container for `system`, as a client of the
    /// Engine API does at its barest: two calls.
    ///
    /// # Errors
    /// If the engine refuses either call.
    pub async fn create_start(&self, system: &str) -> Result<(), Error> {
        let name = format!("orch-bench-{system}-{}", uuid::Uuid::new_v4().simple());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(COMMAND.map(String::from).to_vec()),
            labels: Some(Self::labels(system)),
            ..ContainerCreateBody::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_error("create"))?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(engine_error("start"))
    }

    /// Creates and starts `n` containers for `system`, all at once (each on
    /// a task of its own, as the orch worker starts its assignments);
    /// returns, for each, how long after the call its start returned.
    ///
    /// # Errors
    /// The first refusal of the engine.
    pub async fn create_start_many(&self, system: &str, n: usize) -> Result<Vec<Duration>, Error> {
        let t0 = tokio::time::Instant::now();
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let engine = self.clone();
                let system = system.to_string();
                tokio::spawn(async move {
                    engine.create_start(&system).await?;
                    Ok::<_, Error>(t0.elapsed())
                })
            })
            .collect();
        let mut done = Vec::with_capacity(n);
        for call in calls {
            done.push(
                call.await
                    .map_err(|e| Error::Io(format!("create+start task: {e}")))??,
            );
        }
        Ok(done)
    }

    /// Starts collecting the engine's `start` events of `system`'s
    /// containers from `since` on (the engine replays recent events from
    /// there, so none is lost to the subscription's own latency), until `n`
    /// distinct containers have started or `timeout` has passed.
    pub fn starts(&self, system: &str, n: usize, since: SystemTime, timeout: Duration) -> Starts {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["start".to_string()]),
            ("label", vec![format!("{LABEL}={system}")]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&engine_timestamp(since))
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(options));
        let (tx, rx) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let collect = async {
                let mut seen = HashMap::with_capacity(n);
                while seen.len() < n {
                    let event = events
                        .next()
                        .await
                        .ok_or_else(|| Error::Io("docker: the event stream ended".into()))?
                        .map_err(engine_error("events"))?;
                    let id = event.actor.and_then(|a| a.id).unwrap_or_default();
                    let at = event
                        .time_nano
                        .and_then(|t| u64::try_from(t).ok())
                        .map_or_else(SystemTime::now, |t| UNIX_EPOCH + Duration::from_nanos(t));
                    seen.entry(id).or_insert(at);
                }
                Ok(seen.into_values().collect())
            };
            let result = tokio::time::timeout(timeout, collect)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "fewer than {n} containers started within {timeout:?}"
                    )))
                });
            let _ = tx.send(result);
        });
        Starts { rx, reader }
    }

    /// The ids of our containers (`system`'s only, if given), running or not.
    ///
    /// # Errors
    /// If the engine cannot list containers.
    pub async fn ours(&self, system: Option<&str>, running: bool) -> Result<Vec<String>, Error> {
        let label = match system {
            Some(s) => format!("{LABEL}={s}"),
            None => LABEL.to_string(),
        };
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::new()
            .all(!running)
            .filters(&filters)
            .build();
        Ok(self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error("list"))?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// Force-removes every container the scenario made, and waits until the
    /// engine lists none. Another system (a swarm agent, an orch worker
    /// being stopped) may remove some at the same time: already gone is fine.
    ///
    /// # Errors
    /// If the engine cannot list containers, or some are still there after
    /// two minutes.
    pub async fn remove_ours(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + REMOVE_DEADLINE;
        loop {
            let left = self.ours(None, false).await?;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "{} benchmark containers still there after {REMOVE_DEADLINE:?}",
                    left.len()
                )));
            }
            let removals = left.into_iter().map(|id| {
                let docker = self.docker.clone();
                async move {
                    let force = RemoveContainerOptionsBuilder::new().force(true).build();
                    // Gone already, or being removed by its owner: the next
                    // listing tells.
                    let _ = docker.remove_container(&id, Some(force)).await;
                }
            });
            futures::future::join_all(removals).await;
            // Some may be on their way out under another owner.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Starts {
    /// The start time of each container, once `n` have started.
    ///
    /// # Errors
    /// If fewer than `n` started in time, or the event stream failed.
    pub async fn wait(mut self) -> Result<Vec<SystemTime>, Error> {
        (&mut self.rx)
            .await
            .map_err(|_| Error::Io("docker: the event reader stopped".into()))?
    }
}

/// A time as the engine's `since` takes it: seconds and nanoseconds.
pub(super) fn engine_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_timestamps_keep_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 1);
        assert_eq!(engine_timestamp(t), "1700000000.000000001");
        assert_eq!(engine_timestamp(UNIX_EPOCH), "0.000000000");
    }
}
