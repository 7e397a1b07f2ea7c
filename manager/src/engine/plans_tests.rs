//! Attempt history and plans through the engine, with workers played by
//! the test: a crashing task's attempts through its restarts and a manager
//! restart, a pending task's reasons per node, and plans of tasks and
//! services that agree with what submitting or applying then does and
//! change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use orch::v1::{
    GlobalMode, NodeVerdict, PlacementPlan, RegisterRequest, ReplicatedMode, Resources,
    RestartCondition, RestartPolicy, ServiceChange, ServiceSpec, TaskSpec, TaskState, TaskStatus,
    service_spec,
};
use tokio::time::{Instant, advance};
use uuid::Uuid;

use super::How;
use super::tests::{Fixture, Worker, spec, status};
use crate::store::MemoryStore;

const GIB: i64 = 1 << 30;

/// A worker that joins with `milli_cpus`, 4 GiB and `labels`; its full set
/// is read.
fn join_with(f: &mut Fixture, name: &str, milli_cpus: i64, labels: &[(&str, &str)]) -> Worker {
    let (reply, _durable) = f.state.register(RegisterRequest {
        name: name.to_owned(),
        capacity: Some(Resources {
            milli_cpus,
            memory_bytes: 4 * GIB,
            disk_bytes: 0,
        }),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    });
    let mut worker = f.open(
        reply.node_id.parse().expect("node id"),
        reply.session_id.parse().expect("session id"),
    );
    worker.full_set();
    worker
}

/// Each node's (name, filter, reason) in a plan, feasible nodes with no filter.
fn verdicts(plan: &PlacementPlan) -> Vec<(String, String, String)> {
    plan.nodes
        .iter()
        .map(|v: &NodeVerdict| (v.name.clone(), v.filter.clone(), v.reason.clone()))
        .collect()
}

#[tokio::test]
async fn a_crashing_task_keeps_every_attempt_with_its_exit_code_also_after_a_restart() {
    tokio::time::pause();
    let store = Arc::new(MemoryStore::new());
    let mut f = Fixture::over(store.clone());
    let mut worker = join_with(&mut f, "w1", 1000, &[]);
    let task = f.submit_one(TaskSpec {
        restart: Some(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            max_restarts: 3,
        }),
        ..spec("crashy")
    });
    let id: Uuid = task.id.parse().expect("id");
    for n in 1..=4u64 {
        let current = f.task(&task);
        assert_eq!(current.attempt, n);
        let _ = worker.next();
        assert!(f.report_status(
            &worker,
            TaskStatus {
                container_id: format!("c{n}"),
                ..status(&current, TaskState::Running)
            }
        ));
        assert!(f.report_status(
            &worker,
            TaskStatus {
                exit_code: Some(i32::try_from(n).expect("small")),
                message: format!("exited with code {n}"),
                ..status(&current, TaskState::Failed)
            }
        ));
        if n < 4 {
            let due = f.task(&task).restart_at.expect("a restart waits");
            let wait = orch::time::system_time(&due)
                .duration_since(f.state.clock().now().wall)
                .unwrap_or_default();
            advance(wait).await;
            assert!(f.heartbeat(&worker));
            f.state.tick(Instant::now());
        }
    }
    let ended = f.task(&task);
    assert_eq!(
        (ended.state(), ended.attempt, ended.restart_count),
        (TaskState::Failed, 4, 3),
        "three restarts, then it gives up"
    );
    let check = |f: &Fixture| {
        let (_, attempts, placement) = f.state.task_detail(id).expect("task");
        assert!(placement.is_none(), "only a pending task has a plan");
        let got: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.state(),
                    a.exit_code,
                    a.container_id.clone(),
                    a.node_id == worker.node.to_string(),
                    a.message.clone(),
                    a.started_at.is_some() && a.finished_at.is_some(),
                )
            })
            .collect();
        let want: Vec<_> = (1..=4u64)
            .map(|n| {
                (
                    n,
                    TaskState::Failed,
                    Some(i32::try_from(n).expect("small")),
                    format!("c{n}"),
                    true,
                    format!("exited with code {n}"),
                    true,
                )
            })
            .collect();
        assert_eq!(got, want);
    };
    check(&f);
    // Durable: a restarted manager has the same history.
    let _ = f.durable().await;
    let restarted = Fixture::over(store);
    check(&restarted);
}

#[tokio::test]
async fn a_pending_task_says_for_every_node_why_it_does_not_fit() {
    let mut f = Fixture::new();
    let _small = join_with(&mut f, "small", 1500, &[("zone", "a")]);
    let _elsewhere = join_with(&mut f, "elsewhere", 8000, &[("zone", "b")]);
    let task = f.submit_one(TaskSpec {
        milli_cpus: Some(2000),
        node_selector: HashMap::from([("zone".to_owned(), "a".to_owned())]),
        ..spec("big")
    });
    assert_eq!(task.state(), TaskState::Pending);
    let (_, attempts, placement) = f
        .state
        .task_detail(task.id.parse().expect("id"))
        .expect("task");
    let placement = placement.expect("a pending task has a plan");
    assert_eq!(placement.chosen_node_id, "");
    assert_eq!(placement.unplaceable, task.message, "the task's own reason");
    assert_eq!(
        verdicts(&placement),
        [
            ("small", "Fits", "needs 2 cpus, 1.5 free"),
            (
                "elsewhere",
                "NodeSelector",
                "node selector not matched: zone=a (the node has zone=b)"
            ),
        ]
        .map(|(n, f, r)| (n.to_owned(), f.to_owned(), r.to_owned()))
    );
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state(), TaskState::Pending);
    assert_eq!(attempts[0].message, task.message);
}

#[tokio::test]
async fn a_task_plan_names_every_nodes_verdict_agrees_with_the_submit_and_changes_nothing() {
    let mut f = Fixture::new();
    let drained = join_with(&mut f, "drained", 4000, &[]);
    let _busy = join_with(&mut f, "busy", 4000, &[]);
    let _idle = join_with(&mut f, "idle", 4000, &[]);
    let _ = f.submit_one(spec("on-busy"));
    let (_, _durable) = f.state.drain(drained.node).expect("drain");
    let _ = f.durable().await;
    let mut events = f.state.subscribe();
    let before = f.state.list_nodes();

    let plan = f.state.plan_task(&spec("planned"));
    assert_eq!(plan.strategy, "spread");
    assert_eq!(plan.chosen_node_name, "idle");
    assert_eq!(plan.unplaceable, "");
    let by_name: HashMap<&str, &NodeVerdict> =
        plan.nodes.iter().map(|v| (v.name.as_str(), v)).collect();
    assert_eq!(by_name["drained"].filter, "NodeReady");
    assert_eq!(by_name["drained"].reason, "draining");
    assert!(!by_name["drained"].feasible);
    for name in ["busy", "idle"] {
        assert!(by_name[name].feasible && by_name[name].sampled, "{name}");
        assert_eq!(by_name[name].filter, "");
    }
    assert_eq!(by_name["busy"].score, 1.0, "spread counts the node's tasks");
    assert_eq!(by_name["idle"].score, 0.0);

    // Nothing changed: no event, no write, the nodes as they were.
    assert!(events.try_recv().is_err());
    assert!(f.state.state.take_writes().is_empty());
    assert_eq!(f.state.list_nodes(), before);
    // And the submit goes where the plan said.
    let placed = f.submit_one(spec("planned"));
    assert_eq!(placed.node_id, plan.chosen_node_id);
}

fn web(replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: "web".to_owned(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(replicas),
        })),
        task: Some(TaskSpec {
            milli_cpus: Some(1000),
            ..spec("")
        }),
        ..ServiceSpec::default()
    }
}

/// The chosen node of each slot of a service plan.
fn chosen(plan: &orch::v1::PlanServiceResponse) -> Vec<(u32, String)> {
    plan.slots
        .iter()
        .map(|s| {
            let p = s.placement.as_ref().expect("placement");
            (s.slot, p.chosen_node_name.clone())
        })
        .collect()
}

#[tokio::test]
async fn a_service_plan_reserves_replica_after_replica_and_agrees_with_the_apply() {
    let mut f = Fixture::new();
    let _a = join_with(&mut f, "a", 2000, &[]);
    let _b = join_with(&mut f, "b", 1000, &[]);
    let mut events = f.state.subscribe();

    // Three replicas of one cpu on three cpus: a, b, then a again (b is
    // full once the second replica is reserved on the copies).
    let plan = f.state.plan_service(&web(3)).expect("plan");
    assert_eq!(plan.change(), ServiceChange::Created);
    assert_eq!(
        chosen(&plan),
        [(1, "a".into()), (2, "b".into()), (3, "a".into())]
    );
    // A fourth does not fit anywhere: the plan says so, per node.
    let plan4 = f.state.plan_service(&web(4)).expect("plan");
    let last = plan4.slots[3].placement.as_ref().expect("placement");
    assert_eq!(last.chosen_node_id, "");
    assert_eq!(
        last.unplaceable,
        "no node fits: insufficient cpu on 2 nodes"
    );
    assert_eq!(
        verdicts(last),
        [
            ("a", "Fits", "needs 1 cpus, 0 free"),
            ("b", "Fits", "needs 1 cpus, 0 free")
        ]
        .map(|(n, f, r)| (n.to_owned(), f.to_owned(), r.to_owned()))
    );
    assert!(events.try_recv().is_err(), "a plan emits nothing");
    assert!(
        f.state.state.take_writes().is_empty(),
        "a plan writes nothing"
    );
    assert!(f.state.service("web").is_none(), "nor creates the service");

    // The apply puts the replicas where the plan said.
    let (_, change, _durable) = f.state.apply_service(web(3), How::Apply).expect("apply");
    assert_eq!(change, ServiceChange::Created);
    let tasks = f.state.list_tasks(None, 100, usize::MAX, |_| true).0;
    let mut placed: Vec<(u32, String)> = tasks
        .iter()
        .map(|t| {
            let node = f
                .state
                .list_nodes()
                .into_iter()
                .find(|n| n.id == t.node_id)
                .map(|n| n.name)
                .unwrap_or_default();
            (t.slot, node)
        })
        .collect();
    placed.sort();
    assert_eq!(placed, chosen(&plan));

    // The same spec again changes nothing and plans nothing; a scale up
    // plans only the new slots.
    let again = f.state.plan_service(&web(3)).expect("plan");
    assert_eq!(again.change(), ServiceChange::Unchanged);
    assert!(again.slots.is_empty());
    let more = f.state.plan_service(&web(5)).expect("plan");
    assert_eq!(more.change(), ServiceChange::Scaled);
    assert_eq!(
        more.slots.iter().map(|s| s.slot).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[tokio::test]
async fn a_global_service_plan_has_one_task_per_eligible_node() {
    let mut f = Fixture::new();
    let a = join_with(&mut f, "a", 1000, &[("disk", "ssd")]);
    let _b = join_with(&mut f, "b", 1000, &[("disk", "hdd")]);
    let c = join_with(&mut f, "c", 1000, &[("disk", "ssd")]);
    let spec = ServiceSpec {
        name: "agent".to_owned(),
        mode: Some(service_spec::Mode::Global(GlobalMode {})),
        task: Some(spec("")),
        placement: Some(orch::v1::Placement {
            constraints: HashMap::from([("disk".to_owned(), "ssd".to_owned())]),
        }),
        ..ServiceSpec::default()
    };
    let plan = f.state.plan_service(&spec).expect("plan");
    let pinned: Vec<(String, String)> = plan
        .slots
        .iter()
        .map(|s| {
            let p = s.placement.as_ref().expect("placement");
            assert_eq!(p.nodes.len(), 1, "only its own node");
            (s.pinned_node_id.clone(), p.chosen_node_id.clone())
        })
        .collect();
    assert_eq!(
        pinned,
        [a.node, c.node].map(|n| (n.to_string(), n.to_string()))
    );
}
