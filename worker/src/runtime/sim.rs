//! A simulated container engine, for control-plane tests and benchmarks.
//!
//! [`SimRuntime`] implements [`Runtime`] without running anything: a
//! "container" is an entry in memory that starts after a configurable delay,
//! runs, and exits with a configurable code after a configurable time (or
//! never), or when it is stopped or told to exit ([`SimRuntime::exit`]). It
//! behaves towards the executor as Docker does: `list` shows running and
//! exited containers of one cluster and node until they are removed, and
//! every exit (including the one a stop causes, like Docker's `die` event) is
//! pushed to the `exits` streams of its cluster and node, never polled. A
//! simulated container writes no output: its `logs` are empty, and a
//! followed one ends when the container exits, with its code.
//!
//! Every timer is on tokio's clock, so tests can `tokio::time::pause()` and
//! advance through minutes of simulated running in no time.
//!
//! One `SimRuntime` can serve many workers in one process: its state is keyed
//! by (cluster, node), exactly as Docker's labels separate them.
//!
//! Per-task behaviour comes from the spec, so a test can mix outcomes in one
//! cluster: the images [`FAIL_PULL_IMAGE`] and [`FAIL_START_IMAGE`] fail, and
//! the env variables [`RUN_MS_ENV`] and [`EXIT_CODE_ENV`] override the
//! configured running time and exit code.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use super::{ContainerInfo, Exit, LogItem, LogsOptions, Runtime, RuntimeError, StartRequest};

/// An image whose pull always fails.
pub const FAIL_PULL_IMAGE: &str = "sim/fail-pull";
/// An image whose containers are created but fail to start.
pub const FAIL_START_IMAGE: &str = "sim/fail-start";
/// Env variable overriding how long the container runs, in milliseconds.
pub const RUN_MS_ENV: &str = "SIM_RUN_MS";
/// Env variable overriding the container's exit code.
pub const EXIT_CODE_ENV: &str = "SIM_EXIT_CODE";
/// The exit code of a stopped container: a process ended by SIGTERM, as a
/// shell reports it (128 + 15), which is what Docker shows for most images.
pub const STOPPED_EXIT_CODE: i32 = 143;

/// How simulated containers behave unless their spec says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// How long `start` takes (pull, create, start). Default: none.
    pub start_delay: Duration,
    /// How long a container runs before it exits by itself; `None` (the
    /// default) runs it until it is stopped.
    pub run_for: Option<Duration>,
    /// The code a container exits with by itself. Default 0.
    pub exit_code: i32,
    /// The machine each simulated node declares (cpu in millicpus, memory and
    /// disk in bytes). Default: 64 cores, 256 GiB, 1 TiB, so that capacity does
    /// not limit a benchmark unless it asks.
    pub capacity: orch::v1::Resources,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            start_delay: Duration::ZERO,
            run_for: None,
            exit_code: 0,
            capacity: orch::v1::Resources {
                milli_cpus: 64_000,
                memory_bytes: 256 << 30,
                disk_bytes: 1 << 40,
            },
        }
    }
}

/// (cluster id, node id): what Docker's labels separate.
type NodeKey = (String, Uuid);

#[derive(Debug)]
struct Container {
    node: NodeKey,
    name: String,
    task_id: Uuid,
    attempt: u64,
    exit_code: Option<i32>,
    /// Tells followers of its logs the exit code.
    exited: watch::Sender<Option<i32>>,
}

#[derive(Default)]
struct Engine {
    /// Every container not yet removed, by id.
    containers: HashMap<String, Container>,
    /// Container ids by name (`orch-<task>-<attempt>`), as Docker names them.
    names: HashMap<String, String>,
    /// Container ids per node, for `list`.
    by_node: HashMap<NodeKey, HashSet<String>>,
    /// Subscribers to each node's exits.
    watchers: HashMap<NodeKey, Vec<mpsc::UnboundedSender<Exit>>>,
    next_id: u64,
}

impl Engine {
    /// Marks a running container exited and tells the node's watchers.
    /// Returns false if it was not running.
    fn exit(&mut self, container_id: &str, code: i32) -> bool {
        let Some(c) = self
            .containers
            .get_mut(container_id)
            .filter(|c| c.exit_code.is_none())
        else {
            return false;
        };
        c.exit_code = Some(code);
        c.exited.send_replace(Some(code));
        let exit = Exit {
            container_id: container_id.to_string(),
            task_id: c.task_id,
            attempt: c.attempt,
            exit_code: code,
        };
        if let Some(watchers) = self.watchers.get_mut(&c.node) {
            // A watcher whose stream was dropped is forgotten here, lazily.
            watchers.retain(|w| w.send(exit.clone()).is_ok());
        }
        true
    }

    fn remove(&mut self, container_id: &str) {
        if let Some(c) = self.containers.remove(container_id) {
            self.names.remove(&c.name);
            if let Some(ids) = self.by_node.get_mut(&c.node) {
                ids.remove(container_id);
            }
        }
    }
}

/// A simulated container engine. See the module documentation.
#[derive(Clone, Default)]
pub struct SimRuntime {
    config: Arc<SimConfig>,
    engine: Arc<Mutex<Engine>>,
}

impl SimRuntime {
    /// An engine whose containers behave as `config` says.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config: Arc::new(config),
            engine: Arc::default(),
        }
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic under the lock leaves plain maps behind; carry on.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a running container exit with `code`, as if its process ended.
    /// Returns false if no such container is running.
    pub fn exit(&self, container_id: &str, code: i32) -> bool {
        self.engine().exit(container_id, code)
    }

    /// How many containers are running, over every cluster and node.
    pub fn running(&self) -> usize {
        self.engine()
            .containers
            .values()
            .filter(|c| c.exit_code.is_none())
            .count()
    }

    /// How long this spec's container runs, and with which code it exits.
    fn outcome(&self, spec: &orch::v1::TaskSpec) -> (Option<Duration>, i32) {
        let run_for = match spec.env.get(RUN_MS_ENV).map(|v| v.parse::<u64>()) {
            Some(Ok(ms)) => Some(Duration::from_millis(ms)),
            _ => self.config.run_for,
        };
        let code = spec
            .env
            .get(EXIT_CODE_ENV)
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.exit_code);
        (run_for, code)
    }
}

/// The name Docker would give the attempt's container.
fn container_name(req: &StartRequest) -> String {
    format!("orch-{}-{}", req.task_id, req.attempt)
}

impl Runtime for SimRuntime {
    async fn start(&self, req: &StartRequest) -> Result<String, RuntimeError> {
        if !self.config.start_delay.is_zero() {
            tokio::time::sleep(self.config.start_delay).await;
        }
        let image = req.spec.image.as_str();
        if image == FAIL_PULL_IMAGE {
            return Err(RuntimeError::ImagePull {
                image: image.to_string(),
                reason: "simulated pull failure".into(),
            });
        }
        if image == FAIL_START_IMAGE {
            return Err(RuntimeError::Start("simulated start failure".into()));
        }
        let (run_for, code) = self.outcome(&req.spec);
        let node = (req.cluster_id.clone(), req.node_id);
        let name = container_name(req);
        let id = {
            let mut engine = self.engine();
            // A leftover container of the same attempt is replaced, as Docker's
            // runtime does; it goes without an exit, like a forced removal.
            if let Some(old) = engine.names.get(&name).cloned() {
                engine.remove(&old);
            }
            engine.next_id += 1;
            let id = format!("sim-{:012x}", engine.next_id);
            engine.containers.insert(
                id.clone(),
                Container {
                    node: node.clone(),
                    name: name.clone(),
                    task_id: req.task_id,
                    attempt: req.attempt,
                    exit_code: None,
                    exited: watch::Sender::new(None),
                },
            );
            engine.names.insert(name, id.clone());
            engine.by_node.entry(node).or_default().insert(id.clone());
            id
        };
        if let Some(after) = run_for {
            let engine = self.engine.clone();
            let cid = id.clone();
            // The timer holds no lock while it waits; if the container was
            // stopped or removed meanwhile, its exit finds nothing to do.
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .exit(&cid, code);
            });
        }
        Ok(id)
    }

    async fn stop(&self, container_id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        // Simulated processes honour SIGTERM at once, so the grace period
        // never runs out. Like Docker, the stop produces an exit, and the
        // exited container stays until it is removed.
        self.engine().exit(container_id, STOPPED_EXIT_CODE);
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.engine().remove(container_id);
        Ok(())
    }

    async fn list(
        &self,
        cluster_id: &str,
        node_id: Uuid,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let engine = self.engine();
        let key = (cluster_id.to_string(), node_id);
        let Some(ids) = engine.by_node.get(&key) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| engine.containers.get(id).map(|c| (id, c)))
            .map(|(id, c)| ContainerInfo {
                container_id: id.clone(),
                task_id: c.task_id,
                attempt: c.attempt,
                running: c.exit_code.is_none(),
                exit_code: c.exit_code,
            })
            .collect())
    }

    fn exits(&self, cluster_id: &str, node_id: Uuid) -> BoxStream<'static, Exit> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.engine()
            .watchers
            .entry((cluster_id.to_string(), node_id))
            .or_default()
            .push(tx);
        UnboundedReceiverStream::new(rx).boxed()
    }

    fn simulated_capacity(&self) -> Option<orch::v1::Resources> {
        Some(self.config.capacity)
    }

    fn logs(
        &self,
        container: &str,
        options: &LogsOptions,
    ) -> BoxStream<'static, Result<LogItem, RuntimeError>> {
        let exited = {
            let engine = self.engine();
            let id = engine
                .names
                .get(container)
                .map_or(container, String::as_str);
            engine.containers.get(id).map(|c| c.exited.subscribe())
        };
        let Some(mut exited) = exited else {
            let missing = RuntimeError::NotFound(container.to_owned());
            return futures::stream::iter([Err(missing)]).boxed();
        };
        if !options.follow {
            return futures::stream::empty().boxed();
        }
        let name = container.to_owned();
        futures::stream::once(async move {
            match exited.wait_for(Option::is_some).await {
                Ok(code) => Ok(LogItem::Exited(code.unwrap_or(-1))),
                // Removed while followed.
                Err(_) => Err(RuntimeError::NotFound(name)),
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch::v1::TaskSpec;

    const CLUSTER: &str = "c1";

    fn request(node: Uuid, image: &str, env: &[(&str, &str)]) -> StartRequest {
        StartRequest {
            cluster_id: CLUSTER.into(),
            node_id: node,
            task_id: Uuid::now_v7(),
            attempt: 1,
            spec: TaskSpec {
                image: image.into(),
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn sim(run_for: Option<Duration>, exit_code: i32) -> SimRuntime {
        SimRuntime::new(SimConfig {
            run_for,
            exit_code,
            ..SimConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_exits_with_its_code_after_its_time() {
        let rt = sim(Some(Duration::from_secs(60)), 3);
        let node = Uuid::now_v7();
        let mut exits = rt.exits(CLUSTER, node);
        let req = request(node, "any", &[]);
        let id = rt.start(&req).await.expect("start");
        assert_eq!(rt.running(), 1);

        tokio::time::advance(Duration::from_secs(59)).await;
        tokio::task::yield_now().await;
        assert_eq!(rt.running(), 1, "still running before its time");

        let exit = exits.next().await.expect("an exit");
        assert_eq!(
            exit,
            Exit {
                container_id: id.clone(),
                task_id: req.task_id,
                attempt: 1,
                exit_code: 3
            }
        );
        let listed = rt.list(CLUSTER, node).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].running);
        assert_eq!(listed[0].exit_code, Some(3));

        rt.remove(&id).await.expect("remove");
        assert!(rt.list(CLUSTER, node).await.expect("list").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_spec_env_overrides_time_and_code() {
        let rt = sim(None, 0);
        let node = Uuid::now_v7();
        let mut exits = rt.exits(CLUSTER, node);
        let req = request(node, "any", &[(RUN_MS_ENV, "1500"), (EXIT_CODE_ENV, "7")]);
        let start = tokio::time::Instant::now();
        rt.start(&req).await.expect("start");
        let exit = exits.next().await.expect("an exit");
        assert_eq!(exit.exit_code, 7);
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn start_takes_the_configured_delay() {
        let rt = SimRuntime::new(SimConfig {
            start_delay: Duration::from_millis(250),
            ..SimConfig::default()
        });
        let start = tokio::time::Instant::now();
        rt.start(&request(Uuid::now_v7(), "any", &[]))
            .await
            .expect("start");
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_container_that_never_exits_and_keeps_it_until_removed() {
        let rt = sim(None, 0);
        let node = Uuid::now_v7();
        let mut exits = rt.exits(CLUSTER, node);
        let id = rt.start(&request(node, "any", &[])).await.expect("start");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(rt.running(), 1, "runs until stopped");

        rt.stop(&id, Duration::from_secs(10)).await.expect("stop");
        let exit = exits.next().await.expect("the stop's exit");
        assert_eq!(exit.exit_code, STOPPED_EXIT_CODE);
        assert_eq!(rt.running(), 0);
        let kept = rt.list(CLUSTER, node).await.expect("list");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].exit_code, Some(STOPPED_EXIT_CODE));
        rt.remove(&id).await.expect("remove");
        assert!(rt.list(CLUSTER, node).await.expect("list").is_empty());
        // Stopping again, or stopping a container that never was, is fine.
        rt.stop(&id, Duration::ZERO).await.expect("stop again");
        rt.stop("nope", Duration::ZERO).await.expect("stop unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_container_does_not_exit_again_when_its_timer_fires() {
        let rt = sim(Some(Duration::from_secs(5)), 0);
        let node = Uuid::now_v7();
        let mut exits = rt.exits(CLUSTER, node);
        let id = rt.start(&request(node, "any", &[])).await.expect("start");
        rt.stop(&id, Duration::ZERO).await.expect("stop");
        assert_eq!(
            exits.next().await.map(|e| e.exit_code),
            Some(STOPPED_EXIT_CODE)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        let more = tokio::time::timeout(Duration::from_secs(1), exits.next()).await;
        assert!(more.is_err(), "no second exit: {more:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exit_on_command() {
        let rt = sim(None, 0);
        let node = Uuid::now_v7();
        let mut exits = rt.exits(CLUSTER, node);
        let id = rt.start(&request(node, "any", &[])).await.expect("start");
        assert!(rt.exit(&id, 42));
        assert!(!rt.exit(&id, 1), "an exited container cannot exit again");
        assert_eq!(exits.next().await.map(|e| e.exit_code), Some(42));
    }

    #[tokio::test(start_paused = true)]
    async fn list_and_exits_see_only_their_node_and_cluster() {
        let rt = sim(None, 0);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut exits_a = rt.exits(CLUSTER, a);
        let mut exits_other_cluster = rt.exits("c2", a);
        let running = rt.start(&request(a, "any", &[])).await.expect("start");
        let exited = rt.start(&request(a, "any", &[])).await.expect("start");
        let on_b = rt.start(&request(b, "any", &[])).await.expect("start");
        assert!(rt.exit(&exited, 1));
        assert!(rt.exit(&on_b, 2));

        let mut listed = rt.list(CLUSTER, a).await.expect("list");
        listed.sort_by_key(|c| c.running);
        let seen: Vec<_> = listed
            .iter()
            .map(|c| (c.container_id.as_str(), c.running, c.exit_code))
            .collect();
        assert_eq!(
            seen,
            [
                (exited.as_str(), false, Some(1)),
                (running.as_str(), true, None)
            ]
        );
        assert!(rt.list("c2", a).await.expect("list").is_empty());

        assert_eq!(
            exits_a.next().await.map(|e| e.container_id),
            Some(exited.clone())
        );
        let other = tokio::time::timeout(Duration::from_secs(1), exits_other_cluster.next()).await;
        assert!(other.is_err(), "another cluster's stream stays quiet");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_images_fail_pull_or_start() {
        let rt = sim(None, 0);
        let node = Uuid::now_v7();
        let pull = rt.start(&request(node, FAIL_PULL_IMAGE, &[])).await;
        assert!(
            matches!(&pull, Err(RuntimeError::ImagePull { image, .. }) if image == FAIL_PULL_IMAGE),
            "{pull:?}"
        );
        let start = rt.start(&request(node, FAIL_START_IMAGE, &[])).await;
        assert!(matches!(start, Err(RuntimeError::Start(_))), "{start:?}");
        assert!(rt.list(CLUSTER, node).await.expect("list").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leftover_container_of_the_same_attempt_is_replaced() {
        let rt = sim(None, 0);
        let node = Uuid::now_v7();
        let req = request(node, "any", &[]);
        let first = rt.start(&req).await.expect("start");
        let second = rt.start(&req).await.expect("start again");
        assert_ne!(first, second);
        let listed = rt.list(CLUSTER, node).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].container_id, second);
    }
}
