//! Services through the engine, with workers played by the test: plain
//! data in, assignments and stored records out, on tokio's paused clock.
//! The reconcilers' own cases are in `orchestrator`; these check that the
//! engine applies them: slots filled and spread, scaling, rolling updates,
//! rollbacks, global and batch services, and a restart mid-rollout.

use std::sync::Arc;
use std::time::Duration;

use orch::v1::{
    BatchMode, DesiredState, GlobalMode, HealthState, JobState, ReplicatedMode, RolloutState,
    ServiceChange, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus, UpdateConfig, UpdateOrder,
    service_spec,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{Instant, advance};

use super::How;
use super::tests::{Fixture, Worker, spec, status};
use crate::Error;
use crate::dispatcher::sessions::Push;
use crate::store::MemoryStore;

fn replicated(name: &str, replicas: u32, image: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(replicas),
        })),
        task: Some(TaskSpec {
            name: String::new(),
            image: image.to_owned(),
            ..spec("")
        }),
        update: Some(UpdateConfig {
            monitor: Some(orch::time::duration(Duration::from_secs(1))),
            ..UpdateConfig::default()
        }),
        ..ServiceSpec::default()
    }
}

/// A cluster of workers that do as they are told: every run becomes a
/// running task (healthy if `healthy`), every stop a stopped one.
struct Workers {
    workers: Vec<Worker>,
    /// A task image that fails as soon as it runs (exit code 1).
    failing: Option<String>,
}

impl Workers {
    fn join(f: &mut Fixture, n: usize) -> Self {
        let mut workers: Vec<Worker> = (0..n).map(|i| f.join(&format!("w{i}"), 4000)).collect();
        for w in &mut workers {
            w.full_set();
        }
        Self {
            workers,
            failing: None,
        }
    }

    /// Answers every message the workers got, until none is left.
    fn pump(&mut self, f: &mut Fixture) {
        loop {
            let mut answered = false;
            for w in &mut self.workers {
                loop {
                    match w.rx.try_recv() {
                        Ok(Push::Assignments { assignments: a, .. }) => {
                            answered = true;
                            for run in a.run {
                                let failing = self.failing.as_deref().is_some_and(|img| {
                                    run.spec.as_ref().is_some_and(|s| s.image == img)
                                });
                                let task = Task {
                                    id: run.task_id,
                                    attempt: run.attempt,
                                    ..Task::default()
                                };
                                let report = if failing {
                                    TaskStatus {
                                        exit_code: Some(1),
                                        ..status(&task, TaskState::Failed)
                                    }
                                } else {
                                    TaskStatus {
                                        health: HealthState::Healthy as i32,
                                        ..status(&task, TaskState::Running)
                                    }
                                };
                                assert!(f.report_status(w, report));
                            }
                            for stop in a.stop {
                                let task = Task {
                                    id: stop.task_id,
                                    attempt: stop.attempt,
                                    ..Task::default()
                                };
                                f.report(w, &task, TaskState::Stopped);
                            }
                        }
                        Ok(Push::End(why)) => panic!("session ended: {why}"),
                        Ok(Push::Logs(_) | Push::CancelLogs(_)) => {}
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => panic!("session gone"),
                    }
                }
            }
            if !answered {
                return;
            }
        }
    }

    /// Lets `d` pass with every worker heartbeating, answering as it goes.
    async fn wait(&mut self, f: &mut Fixture, d: Duration) {
        let step = Duration::from_millis(500);
        let mut left = d;
        while !left.is_zero() {
            let s = step.min(left);
            advance(s).await;
            left -= s;
            for w in &self.workers {
                assert!(f.heartbeat(w));
            }
            f.state.tick(Instant::now());
            self.pump(f);
        }
    }
}

/// The service's tasks that should run, as (slot, version, node, state).
fn wanted(f: &Fixture, name: &str) -> Vec<(u32, u64, String, TaskState)> {
    let (tasks, _) = f.state.list_tasks(None, usize::MAX, usize::MAX, |t| {
        t.service == name && t.desired_state() == DesiredState::Running
    });
    let mut out: Vec<_> = tasks
        .into_iter()
        .map(|t| (t.slot, t.service_version, t.node_id.clone(), t.state()))
        .collect();
    out.sort();
    out
}

fn rollout_state(f: &Fixture, name: &str) -> RolloutState {
    f.state
        .service(name)
        .and_then(|s| s.rollout)
        .map_or(RolloutState::Unspecified, |r| r.state())
}

fn apply(f: &mut Fixture, spec: ServiceSpec) -> ServiceChange {
    let (_, change, _) = f.state.apply_service(spec, How::Apply).expect("applied");
    change
}

#[tokio::test(start_paused = true)]
async fn a_replicated_service_puts_one_replica_on_each_node_and_completes_its_first_rollout() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 3);
    assert_eq!(
        apply(&mut f, replicated("web", 3, "v1")),
        ServiceChange::Created
    );
    workers.pump(&mut f);
    let tasks = wanted(&f, "web");
    assert_eq!(tasks.len(), 3);
    let mut nodes: Vec<&String> = tasks.iter().map(|t| &t.2).collect();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one replica per node: {tasks:?}");
    assert!(tasks.iter().all(|t| t.3 == TaskState::Running && t.1 == 1));
    assert_eq!(rollout_state(&f, "web"), RolloutState::RollingOut);
    // The monitor (1 s) passes: the housekeeping wakes the rollout by itself.
    assert!(
        f.state
            .next_due()
            .is_some_and(|d| d <= Instant::now() + Duration::from_secs(1))
    );
    workers.wait(&mut f, Duration::from_secs(1)).await;
    assert_eq!(rollout_state(&f, "web"), RolloutState::Completed);
    let service = f.state.service("web").expect("service");
    assert_eq!((service.desired, service.running), (3, 3));
    // Applying the same spec again changes nothing.
    assert_eq!(
        apply(&mut f, replicated("web", 3, "v1")),
        ServiceChange::Unchanged
    );
    workers.pump(&mut f);
    assert_eq!(wanted(&f, "web"), tasks);
}

#[tokio::test(start_paused = true)]
async fn scaling_adds_and_removes_slots_without_a_new_version() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 2);
    apply(&mut f, replicated("web", 3, "v1"));
    workers.pump(&mut f);
    assert_eq!(
        apply(&mut f, replicated("web", 5, "v1")),
        ServiceChange::Scaled
    );
    workers.pump(&mut f);
    let slots: Vec<u32> = wanted(&f, "web").iter().map(|t| t.0).collect();
    assert_eq!(slots, [1, 2, 3, 4, 5]);
    let (_, _) = f.state.scale_service("web", 1).expect("scaled");
    workers.pump(&mut f);
    let left = wanted(&f, "web");
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].0, left[0].3), (1, TaskState::Running));
    assert_eq!(f.state.service("web").map(|s| s.version), Some(1));
    // A global service has no count.
    let global = ServiceSpec {
        mode: Some(service_spec::Mode::Global(GlobalMode {})),
        ..replicated("agent", 1, "a")
    };
    apply(&mut f, global);
    assert!(matches!(
        f.state.scale_service("agent", 2),
        Err(Error::FailedPrecondition(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_killed_replica_restarts_in_its_slot_after_the_backoff() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 2);
    apply(&mut f, replicated("web", 2, "v1"));
    workers.pump(&mut f);
    let (tasks, _) = f
        .state
        .list_tasks(None, 10, usize::MAX, |t| t.service == "web");
    let victim = tasks[0].clone();
    let w = workers
        .workers
        .iter()
        .position(|w| w.node.to_string() == victim.node_id)
        .expect("its worker");
    assert!(f.report_status(
        &workers.workers[w],
        TaskStatus {
            exit_code: Some(137),
            ..status(&victim, TaskState::Failed)
        }
    ));
    // The same task, a new attempt after the backoff, in the same slot.
    workers.wait(&mut f, Duration::from_secs(1)).await;
    let again = f.task(&victim);
    assert_eq!(
        (again.attempt, again.slot, again.state()),
        (2, victim.slot, TaskState::Running)
    );
    assert_eq!(wanted(&f, "web").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_replaces_every_slot_and_a_failing_one_rolls_back() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 3);
    apply(&mut f, replicated("web", 3, "v1"));
    workers.pump(&mut f);
    workers.wait(&mut f, Duration::from_secs(2)).await;

    // v2, start-first: never fewer than 3 running.
    let mut v2 = replicated("web", 3, "v2");
    if let Some(u) = v2.update.as_mut() {
        u.set_order(UpdateOrder::StartFirst);
    }
    assert_eq!(apply(&mut f, v2), ServiceChange::Updated);
    for _ in 0..20 {
        let running = wanted(&f, "web")
            .iter()
            .filter(|t| t.3 == TaskState::Running)
            .count();
        assert!(running >= 3, "{:?}", wanted(&f, "web"));
        workers.wait(&mut f, Duration::from_millis(500)).await;
    }
    assert_eq!(rollout_state(&f, "web"), RolloutState::Completed);
    assert!(wanted(&f, "web").iter().all(|t| t.1 == 2));
    assert_eq!(wanted(&f, "web").len(), 3);

    // v3 fails as soon as it runs: back to v2, by itself.
    workers.failing = Some("v3".into());
    assert_eq!(
        apply(&mut f, replicated("web", 3, "v3")),
        ServiceChange::Updated
    );
    workers.wait(&mut f, Duration::from_secs(15)).await;
    let service = f.state.service("web").expect("service");
    let rollout = service.rollout.expect("rollout");
    assert_eq!(rollout.state(), RolloutState::RolledBack, "{rollout:?}");
    assert_eq!((service.version, rollout.to_version), (2, 2));
    assert!(rollout.reason.contains("new tasks failed"), "{rollout:?}");
    assert!(
        wanted(&f, "web")
            .iter()
            .all(|t| t.1 == 2 && t.3 == TaskState::Running)
    );

    // Back two versions, by hand.
    f.state.rollback_service("web", 1).expect("rolled back");
    workers.wait(&mut f, Duration::from_secs(10)).await;
    assert_eq!(rollout_state(&f, "web"), RolloutState::RolledBack);
    assert!(wanted(&f, "web").iter().all(|t| t.1 == 1));
    assert!(matches!(
        f.state.rollback_service("web", 1),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        f.state.rollback_service("web", 9),
        Err(Error::NotFound(_))
    ));
    let (versions, current) = f.state.service_versions("web").expect("versions");
    assert_eq!(
        (
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            current
        ),
        (vec![1, 2, 3], 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_global_service_runs_on_every_node_and_a_drained_nodes_task_stops_not_moves() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 2);
    let global = ServiceSpec {
        mode: Some(service_spec::Mode::Global(GlobalMode {})),
        ..replicated("agent", 1, "a")
    };
    apply(&mut f, global);
    workers.pump(&mut f);
    assert_eq!(wanted(&f, "agent").len(), 2);
    // A node that joins gets its task.
    let mut third = f.join("w2", 4000);
    third.full_set();
    workers.workers.push(third);
    workers.pump(&mut f);
    let tasks = wanted(&f, "agent");
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    // A drained node's task is stopped, and nothing takes its place.
    let drained = workers.workers[0].node;
    f.state.drain(drained).expect("drained");
    // Regression: it is stopped where it runs (same attempt, still on its
    // node, running until its worker says it stopped), not moved off as a
    // new attempt that then ends `stopped` while its container still runs.
    let (on_drained, _) = f.state.list_tasks(None, 10, usize::MAX, |t| {
        t.service == "agent" && t.pinned_node_id == drained.to_string()
    });
    let t = &on_drained[0];
    assert_eq!(
        (t.attempt, t.state(), t.desired_state(), t.node_id.clone()),
        (
            1,
            TaskState::Running,
            DesiredState::Stopped,
            drained.to_string()
        )
    );
    workers.pump(&mut f);
    let t = f.task(t);
    assert_eq!((t.attempt, t.state()), (1, TaskState::Stopped));
    let tasks = wanted(&f, "agent");
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.2 != drained.to_string()));
    assert_eq!(f.state.service("agent").map(|s| s.desired), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_batch_job_runs_its_completions_at_most_parallelism_at_a_time() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 2);
    let job = ServiceSpec {
        mode: Some(service_spec::Mode::Batch(BatchMode {
            completions: Some(5),
            parallelism: Some(2),
        })),
        ..replicated("job", 1, "work")
    };
    apply(&mut f, job);
    let mut completed = 0;
    while completed < 5 {
        workers.pump(&mut f);
        let (running, _) = f.state.list_tasks(None, usize::MAX, usize::MAX, |t| {
            t.service == "job" && t.state() == TaskState::Running
        });
        assert!(running.len() <= 2, "{running:?}");
        assert!(!running.is_empty());
        let task = &running[0];
        let w = workers
            .workers
            .iter()
            .find(|w| w.node.to_string() == task.node_id)
            .expect("its worker");
        assert!(f.report_status(
            w,
            TaskStatus {
                exit_code: Some(0),
                ..status(task, TaskState::Completed)
            }
        ));
        completed += 1;
    }
    let service = f.state.service("job").expect("job");
    assert_eq!(
        (service.job_state(), service.completed),
        (JobState::Completed, 5)
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_manager_carries_on_with_a_rollout() {
    let store = Arc::new(MemoryStore::new());
    let mut f = Fixture::over(store.clone());
    let mut workers = Workers::join(&mut f, 2);
    apply(&mut f, replicated("web", 2, "v1"));
    workers.pump(&mut f);
    workers.wait(&mut f, Duration::from_secs(2)).await;
    apply(&mut f, replicated("web", 2, "v2"));
    workers.pump(&mut f);
    assert_eq!(rollout_state(&f, "web"), RolloutState::RollingOut);
    f.durable().await;
    drop(f);

    let mut f = Fixture::over(store);
    assert_eq!(rollout_state(&f, "web"), RolloutState::RollingOut);
    // The workers come back; the rollout goes on to the end.
    let mut workers = Workers {
        workers: workers
            .workers
            .iter()
            .map(|w| {
                let (node, session) = f.register(&w.node.to_string(), "w", 4000);
                let mut back = f.open(node, session);
                back.full_set();
                back
            })
            .collect(),
        failing: None,
    };
    workers.pump(&mut f);
    workers.wait(&mut f, Duration::from_secs(10)).await;
    assert_eq!(rollout_state(&f, "web"), RolloutState::Completed);
    let tasks = wanted(&f, "web");
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.1 == 2));
}

#[tokio::test(start_paused = true)]
async fn bad_changes_are_refused_and_change_nothing() {
    let mut f = Fixture::new();
    assert!(matches!(
        f.state
            .apply_service(replicated("web", 1, "v1"), How::Update),
        Err(Error::NotFound(_))
    ));
    assert!(f.state.service("web").is_none());
    apply(&mut f, replicated("web", 1, "v1"));
    assert!(matches!(
        f.state
            .apply_service(replicated("web", 1, "v1"), How::Create),
        Err(Error::AlreadyExists(_))
    ));
    let global = ServiceSpec {
        mode: Some(service_spec::Mode::Global(GlobalMode {})),
        ..replicated("web", 1, "v1")
    };
    assert!(matches!(
        f.state.apply_service(global, How::Apply),
        Err(Error::FailedPrecondition(_))
    ));
    assert_eq!(f.state.service("web").map(|s| s.version), Some(1));
}

#[tokio::test(start_paused = true)]
async fn the_last_ten_versions_are_kept_and_the_one_in_force_always() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 1);
    for v in 1..=12 {
        apply(&mut f, replicated("web", 1, &format!("v{v}")));
        workers.wait(&mut f, Duration::from_secs(2)).await;
        assert_eq!(rollout_state(&f, "web"), RolloutState::Completed, "v{v}");
    }
    let kept = |f: &Fixture| {
        let (versions, current) = f.state.service_versions("web").expect("versions");
        (
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            current,
        )
    };
    assert_eq!(kept(&f), ((3..=12).collect(), 12));
    // Back to the oldest kept: the next version pushes out 4, not 3, which
    // is in force when it is made; the one after that pushes out 3.
    f.state.rollback_service("web", 3).expect("rollback");
    workers.wait(&mut f, Duration::from_secs(2)).await;
    apply(&mut f, replicated("web", 1, "v13"));
    let mut want: Vec<u64> = vec![3];
    want.extend(5..=13);
    assert_eq!(kept(&f), (want, 13));
    workers.wait(&mut f, Duration::from_secs(2)).await;
    apply(&mut f, replicated("web", 1, "v14"));
    assert_eq!(kept(&f), ((5..=14).collect(), 14));
    // The store holds the same.
    let stored = f.durable().await;
    let mut versions: Vec<u64> = stored.service_versions.iter().map(|v| v.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, kept(&f).0);
}

#[tokio::test(start_paused = true)]
async fn placement_constraints_keep_replicas_to_matching_nodes_and_say_why_they_wait() {
    let mut f = Fixture::new();
    let mut workers = Workers::join(&mut f, 1);
    let mut spec = replicated("web", 2, "v1");
    spec.placement = Some(orch::v1::Placement {
        constraints: [("zone".to_owned(), "a".to_owned())].into(),
    });
    apply(&mut f, spec);
    workers.pump(&mut f);
    let (tasks, _) = f
        .state
        .list_tasks(None, 10, usize::MAX, |t| t.service == "web");
    assert!(
        tasks.iter().all(|t| t.state() == TaskState::Pending
            && t.message == "no node fits: node selector zone=a not matched on 1 node"),
        "{tasks:#?}"
    );
    let rollout = f
        .state
        .service("web")
        .and_then(|s| s.rollout)
        .expect("rollout");
    assert_eq!(
        rollout.waiting,
        "no node fits: node selector zone=a not matched on 1 node"
    );
    // A node labelled zone=a joins: both replicas go there (the only one that
    // matches), and the rollout stops waiting.
    let (node, session) = {
        let (reply, _) = f.state.register(orch::v1::RegisterRequest {
            name: "zoned".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            capacity: Some(orch::v1::Resources {
                milli_cpus: 4000,
                ..Default::default()
            }),
            ..Default::default()
        });
        (
            reply.node_id.parse().expect("node id"),
            reply.session_id.parse().expect("session id"),
        )
    };
    let mut zoned = f.open(node, session);
    zoned.full_set();
    workers.workers.push(zoned);
    workers.wait(&mut f, Duration::from_secs(2)).await;
    let running = wanted(&f, "web");
    assert_eq!(running.len(), 2);
    assert!(
        running
            .iter()
            .all(|t| t.2 == node.to_string() && t.3 == TaskState::Running)
    );
    let rollout = f
        .state
        .service("web")
        .and_then(|s| s.rollout)
        .expect("rollout");
    assert_eq!(
        (rollout.state(), rollout.waiting.as_str()),
        (RolloutState::Completed, "")
    );
}

#[test]
fn a_large_service_is_reconciled_less_often() {
    use super::services::settle_delay;
    assert_eq!(settle_delay(3), Duration::from_millis(50));
    assert_eq!(settle_delay(2_500), Duration::from_millis(50));
    assert_eq!(settle_delay(50_000), Duration::from_secs(1));
    assert_eq!(settle_delay(100_000), Duration::from_secs(2));
    assert_eq!(settle_delay(usize::MAX), Duration::from_secs(2));
}
