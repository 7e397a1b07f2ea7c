//! A storm of bad requests against a running manager over real gRPC: 10,000
//! requests that look right but are wrong (specs with one field broken, bad
//! enums, empty, huge and unicode strings, ids that are not ids or name
//! nothing), calls in the wrong order on the `Dispatcher` (sessions never
//! registered, or opened with another session's node), and reports that
//! must be ignored (about another node's task, a stale attempt, a state
//! that moves back), sent many at a time. Then:
//!
//! - every answer was a status a client can act on, the one expected, and
//!   an `INVALID_ARGUMENT` named the broken field;
//! - the task, node and service lists are as they were, no event was
//!   emitted, and the worker's session is still open;
//! - the manager still serves: a valid task runs on the real worker;
//! - the redb store, opened once the manager stopped, holds exactly what the
//!   manager showed.
//!
//! The requests come from a seed, printed at the start and taken from
//! `ORCH_STORM_SEED` if set, so a failing storm can be replayed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use orch::testing;
use orch::v1::{
    ActivateNodeRequest, ApplyServiceRequest, DeleteServiceRequest, DesiredState, DrainNodeRequest,
    GetServiceRequest, GetTaskRequest, Heartbeat, ListNodesRequest, ListServiceVersionsRequest,
    ListServicesRequest, ListTasksRequest, Node, NodeMetrics, RegisterRequest, ReplicatedMode,
    Resources, RollbackServiceRequest, ScaleServiceRequest, Service, ServiceSpec, SessionOpen,
    StatusBatch, StopTaskRequest, SubmitTaskRequest, SubmitTasksRequest, Task, TaskSpec, TaskState,
    TaskStatus, WatchEventsRequest, WorkerMessage, event, manager_message, service_spec,
    worker_message,
};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_manager::store::{RedbStore, Store};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use uuid::Uuid;

const STORM: usize = 10_000;
/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// One request of the storm.
#[derive(Debug, Clone)]
enum Call {
    SubmitTask(SubmitTaskRequest),
    SubmitTasks(SubmitTasksRequest),
    StopTask(StopTaskRequest),
    GetTask(GetTaskRequest),
    ListTasks(ListTasksRequest),
    ListNodes,
    ListServices,
    DrainNode(String),
    ActivateNode(String),
    ApplyService(ApplyServiceRequest),
    CreateService(ApplyServiceRequest),
    UpdateService(ApplyServiceRequest),
    GetService(GetServiceRequest),
    DeleteService(DeleteServiceRequest),
    ListServiceVersions(ListServiceVersionsRequest),
    ScaleService(ScaleServiceRequest),
    RollbackService(RollbackServiceRequest),
    Register(RegisterRequest),
    /// A new session stream carrying these messages.
    Session(Vec<WorkerMessage>),
    /// A message on the open session of the test's worker.
    Report(WorkerMessage),
}

/// What the manager must answer.
#[derive(Debug, Clone)]
enum Expect {
    /// A response; it reads and changes nothing.
    Read,
    /// `INVALID_ARGUMENT` naming exactly this field.
    Field(String),
    /// One of these codes, or an `INVALID_ARGUMENT` naming a field of the
    /// request.
    Refused(&'static [Code]),
    /// No answer: the message goes down an open session.
    Silent,
}

/// What the storm may name: the manager's own ids and names.
#[derive(Clone)]
struct Known {
    /// The task on the real worker.
    real_task: Task,
    /// The task on the test's worker.
    fake_task: Task,
    real_node: String,
    fake_node: String,
    service: String,
}

/// Draws values from proptest strategies with one seeded generator.
struct Draw {
    runner: TestRunner,
    rng: rand::rngs::StdRng,
}

impl Draw {
    fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        Self {
            runner: TestRunner::new_with_rng(Config::default(), rng),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn value<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.runner)
            .expect("a strategy that generates")
            .current()
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())].clone()
    }

    fn uuid(&mut self) -> String {
        Uuid::from_u128(self.rng.random()).to_string()
    }

    /// Text that is not a UUID: empty, wild, huge or unicode.
    fn not_an_id(&mut self) -> String {
        loop {
            let text = match self.rng.random_range(0..4) {
                0 => String::new(),
                1 => "\u{1F600}\u{0}é".repeat(self.rng.random_range(1..300)),
                _ => self.value(testing::wild_text()),
            };
            if Uuid::parse_str(&text).is_err() {
                return text;
            }
        }
    }
}

const NOT_FOUND: &[Code] = &[Code::NotFound];

fn spec_field(field: &str) -> Expect {
    Expect::Field(format!("spec.{field}"))
}

/// One request of the storm and what it must get.
fn call(d: &mut Draw, k: &Known) -> (Call, Expect) {
    match d.rng.random_range(0..24) {
        0 | 1 => {
            let (spec, field) = d.value(testing::broken_task_spec());
            let req = SubmitTaskRequest { spec: Some(spec) };
            (Call::SubmitTask(req), spec_field(&field))
        }
        2 => (
            Call::SubmitTask(SubmitTaskRequest { spec: None }),
            Expect::Field("spec".into()),
        ),
        3 => {
            // All or nothing: the valid specs around the broken one are not
            // stored either.
            let mut specs: Vec<TaskSpec> = (0..d.rng.random_range(0..3))
                .map(|_| d.value(testing::task_spec()))
                .collect();
            let (broken, field) = d.value(testing::broken_task_spec());
            let i = d.rng.random_range(0..=specs.len());
            specs.insert(i, broken);
            (
                Call::SubmitTasks(SubmitTasksRequest { specs }),
                Expect::Field(format!("specs[{i}].{field}")),
            )
        }
        4 => (
            Call::SubmitTasks(SubmitTasksRequest { specs: vec![] }),
            Expect::Field("specs".into()),
        ),
        5 => {
            let id = d.not_an_id();
            let call = if d.rng.random() {
                Call::StopTask(StopTaskRequest { id })
            } else {
                Call::GetTask(GetTaskRequest { id })
            };
            (call, Expect::Field("id".into()))
        }
        6 => {
            let id = d.uuid();
            let call = if d.rng.random() {
                Call::StopTask(StopTaskRequest { id })
            } else {
                Call::GetTask(GetTaskRequest { id })
            };
            (call, Expect::Refused(NOT_FOUND))
        }
        7 => {
            let id = d.pick(&[k.real_task.id.clone(), k.fake_task.id.clone()]);
            (Call::GetTask(GetTaskRequest { id }), Expect::Read)
        }
        8 | 9 => list_tasks(d, k),
        10 => {
            let call = if d.rng.random() {
                Call::ListNodes
            } else {
                Call::ListServices
            };
            (call, Expect::Read)
        }
        11 => {
            let (id, expect) = if d.rng.random() {
                (d.not_an_id(), Expect::Field("id".into()))
            } else {
                (d.uuid(), Expect::Refused(NOT_FOUND))
            };
            let call = if d.rng.random() {
                Call::DrainNode(id)
            } else {
                Call::ActivateNode(id)
            };
            (call, expect)
        }
        12 | 13 => {
            let (spec, field) = d.value(testing::broken_service_spec());
            let req = ApplyServiceRequest { spec: Some(spec) };
            let call = match d.rng.random_range(0..3) {
                0 => Call::ApplyService(req),
                1 => Call::CreateService(req),
                _ => Call::UpdateService(req),
            };
            (call, spec_field(&field))
        }
        14 => existing_service(d, k),
        15 | 16 => service_by_name(d, k),
        17 => {
            let (mut req, field) = d.value(testing::broken_register_request());
            // Sent with the test worker's certificate: a node id other than
            // its own is another node's, refused as such; an empty one is its own.
            if field == "node_id" {
                (
                    Call::Register(req),
                    Expect::Refused(&[Code::PermissionDenied]),
                )
            } else {
                req.node_id.clear();
                (Call::Register(req), Expect::Field(field))
            }
        }
        18 | 19 => session_out_of_order(d, k),
        _ => (Call::Report(report(d, k)), Expect::Silent),
    }
}

fn list_tasks(d: &mut Draw, k: &Known) -> (Call, Expect) {
    let mut req = ListTasksRequest {
        states: (0..d.rng.random_range(0..3))
            .map(|_| d.rng.random_range(1..=8))
            .collect(),
        ..Default::default()
    };
    let expect = match d.rng.random_range(0..6) {
        0 => {
            let i = d.rng.random_range(0..=req.states.len());
            let bad = d.pick(&[0, -1, 9, 1000, i32::MIN, i32::MAX]);
            req.states.insert(i, bad);
            Expect::Field(format!("states[{i}]"))
        }
        1 => {
            req.node_id = d.not_an_id();
            if req.node_id.is_empty() {
                Expect::Read
            } else {
                Expect::Field("node_id".into())
            }
        }
        2 => {
            req.page_size = d.rng.random_range(10_001..=u32::MAX);
            Expect::Field("page_size".into())
        }
        3 => {
            req.page_token = d.not_an_id();
            if req.page_token.is_empty() {
                Expect::Read
            } else {
                Expect::Field("page_token".into())
            }
        }
        4 => {
            req.service = format!("no-{}", d.rng.random::<u32>());
            Expect::Refused(NOT_FOUND)
        }
        _ => {
            let fresh = d.uuid();
            req.node_id = d.pick(&[k.real_node.clone(), k.fake_node.clone(), fresh]);
            req.page_size = d.rng.random_range(0..5);
            Expect::Read
        }
    };
    (Call::ListTasks(req), expect)
}

/// Valid specs that the existing service cannot take.
fn existing_service(d: &mut Draw, k: &Known) -> (Call, Expect) {
    let mut spec = d.value(testing::service_spec());
    match d.rng.random_range(0..3) {
        0 => {
            spec.name = k.service.clone();
            let req = ApplyServiceRequest { spec: Some(spec) };
            (
                Call::CreateService(req),
                Expect::Refused(&[Code::AlreadyExists]),
            )
        }
        1 => {
            spec.name = format!("no-{}", d.rng.random::<u32>());
            let req = ApplyServiceRequest { spec: Some(spec) };
            (Call::UpdateService(req), Expect::Refused(NOT_FOUND))
        }
        _ => {
            // A replicated service cannot become global.
            spec.name = k.service.clone();
            spec.mode = Some(service_spec::Mode::Global(orch::v1::GlobalMode {}));
            let req = ApplyServiceRequest { spec: Some(spec) };
            (
                Call::ApplyService(req),
                Expect::Refused(&[Code::FailedPrecondition]),
            )
        }
    }
}

/// Service calls by name: names that are not DNS labels, services that do
/// not exist, and the existing one scaled past the limit or rolled back to
/// a version it never had.
fn service_by_name(d: &mut Draw, k: &Known) -> (Call, Expect) {
    let (name, expect) = match d.rng.random_range(0..3) {
        0 => {
            let name = d.pick(&["", "Web", "-x", "a_b", "wéb", " "]).to_string();
            let name = if d.rng.random() { name } else { "x".repeat(64) };
            (name, Expect::Field("name".into()))
        }
        1 => (
            format!("no-{}", d.rng.random::<u32>()),
            Expect::Refused(NOT_FOUND),
        ),
        _ => {
            let name = k.service.clone();
            return if d.rng.random() {
                let count = d
                    .rng
                    .random_range(orch::validate::MAX_REPLICAS + 1..=u32::MAX);
                (
                    Call::ScaleService(ScaleServiceRequest { name, count }),
                    Expect::Field("count".into()),
                )
            } else {
                let to_version = d.rng.random_range(2..=u64::MAX);
                (
                    Call::RollbackService(RollbackServiceRequest { name, to_version }),
                    Expect::Refused(&[Code::NotFound, Code::FailedPrecondition]),
                )
            };
        }
    };
    let call = match d.rng.random_range(0..5) {
        0 => Call::GetService(GetServiceRequest { name }),
        1 => Call::DeleteService(DeleteServiceRequest { name }),
        2 => Call::ListServiceVersions(ListServiceVersionsRequest { name }),
        3 => Call::ScaleService(ScaleServiceRequest { name, count: 1 }),
        _ => Call::RollbackService(RollbackServiceRequest {
            name,
            to_version: 0,
        }),
    };
    (call, expect)
}

fn open(node_id: String, session_id: String) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Open(SessionOpen {
            node_id,
            session_id,
        })),
    }
}

fn heartbeat(metrics: NodeMetrics) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Heartbeat(Heartbeat {
            metrics: Some(metrics),
        })),
    }
}

/// Sessions opened without registering, for another node's session, or
/// starting with something other than `open`.
fn session_out_of_order(d: &mut Draw, k: &Known) -> (Call, Expect) {
    // Over the test worker's certificate: another node's id is refused for
    // what it is, before anything about sessions is looked at.
    let precondition = Expect::Refused(&[Code::FailedPrecondition, Code::PermissionDenied]);
    let (first, expect) = match d.rng.random_range(0..6) {
        // Never registered.
        0 => (Some(open(d.uuid(), d.uuid())), precondition),
        // A node that is registered, with a session it was not given.
        1 => {
            let node = d.pick(&[k.real_node.clone(), k.fake_node.clone()]);
            (Some(open(node, d.uuid())), precondition)
        }
        2 => (
            Some(open(d.not_an_id(), d.uuid())),
            Expect::Field("open.node_id".into()),
        ),
        3 => (
            Some(open(k.fake_node.clone(), d.not_an_id())),
            Expect::Field("open.session_id".into()),
        ),
        4 => (
            Some(heartbeat(NodeMetrics::default())),
            Expect::Field("kind".into()),
        ),
        _ => (None, Expect::Field("kind".into())),
    };
    let mut msgs: Vec<WorkerMessage> = first.into_iter().collect();
    if d.rng.random() && !msgs.is_empty() {
        // What a worker would send next, which must not be read as its own.
        msgs.push(WorkerMessage {
            kind: Some(worker_message::Kind::Status(StatusBatch {
                statuses: vec![status(&k.real_task, TaskState::Failed)],
            })),
        });
    }
    (Call::Session(msgs), expect)
}

fn status(task: &Task, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task.id.clone(),
        attempt: task.attempt,
        state: state as i32,
        ..Default::default()
    }
}

/// A message on the test worker's session that the manager must ignore.
fn report(d: &mut Draw, k: &Known) -> WorkerMessage {
    let statuses = (0..d.rng.random_range(1..4))
        .map(|_| {
            let any_state = d.rng.random_range(-1..12);
            match d.rng.random_range(0..5) {
                // Another node's task, in any state at any attempt.
                0 => TaskStatus {
                    attempt: d.rng.random_range(0..4),
                    state: any_state,
                    exit_code: Some(d.rng.random()),
                    container_id: d.value(testing::wild_text()),
                    ..status(&k.real_task, TaskState::Completed)
                },
                // This node's task, at an attempt it is not at.
                1 => TaskStatus {
                    attempt: d.pick(&[0, k.fake_task.attempt + 1, u64::MAX]),
                    state: any_state,
                    message: d.value(testing::wild_text()),
                    ..status(&k.fake_task, TaskState::Failed)
                },
                // This node's task, moving back, or to no state at all.
                2 => {
                    let back = d.pick(&[
                        TaskState::Unspecified as i32,
                        TaskState::Pending as i32,
                        TaskState::Scheduled as i32,
                        TaskState::Starting as i32,
                        TaskState::Running as i32,
                        9,
                        -7,
                    ]);
                    TaskStatus {
                        state: back,
                        ..status(&k.fake_task, TaskState::Running)
                    }
                }
                // Tasks that do not exist, or ids that are not ids.
                3 => TaskStatus {
                    task_id: d.uuid(),
                    state: any_state,
                    ..Default::default()
                },
                _ => TaskStatus {
                    task_id: d.not_an_id(),
                    state: any_state,
                    ..Default::default()
                },
            }
        })
        .collect();
    WorkerMessage {
        kind: Some(worker_message::Kind::Status(StatusBatch { statuses })),
    }
}

/// The storm's requests and what each must get, drawn from `seed` on a
/// thread with room for the generators' deep strategies.
fn storm(seed: u64, known: Known) -> Vec<(Call, Expect)> {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let mut draw = Draw::new(seed);
            (0..STORM).map(|_| call(&mut draw, &known)).collect()
        })
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The fields each request has, for a refusal to name.
fn fields(call: &Call) -> &'static [&'static str] {
    match call {
        Call::SubmitTask(_) | Call::ApplyService(_) | Call::CreateService(_) => &["spec"],
        Call::UpdateService(_) => &["spec"],
        Call::SubmitTasks(_) => &["specs"],
        Call::StopTask(_) | Call::GetTask(_) | Call::DrainNode(_) | Call::ActivateNode(_) => {
            &["id"]
        }
        Call::ListTasks(_) => &["states", "node_id", "page_size", "page_token", "service"],
        Call::GetService(_) | Call::DeleteService(_) | Call::ListServiceVersions(_) => &["name"],
        Call::ScaleService(_) => &["name", "count"],
        Call::RollbackService(_) => &["name", "to_version"],
        Call::Register(_) => &["node_id", "name", "address", "labels", "capacity"],
        Call::Session(_) => &["open", "kind"],
        Call::ListNodes | Call::ListServices | Call::Report(_) => &[],
    }
}

/// Clients for the storm, cloned for every request.
#[derive(Clone)]
struct Clients {
    cluster: orch::auth::Client,
    dispatcher: orch::v1::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
    session: mpsc::Sender<WorkerMessage>,
}

/// Sends one request; `Ok` for a response (or a message sent down the
/// session).
async fn send(mut c: Clients, call: Call) -> Result<(), Status> {
    let cl = &mut c.cluster;
    match call {
        Call::SubmitTask(r) => cl.submit_task(r).await.map(drop),
        Call::SubmitTasks(r) => cl.submit_tasks(r).await.map(drop),
        Call::StopTask(r) => cl.stop_task(r).await.map(drop),
        Call::GetTask(r) => cl.get_task(r).await.map(drop),
        Call::ListTasks(r) => cl.list_tasks(r).await.map(drop),
        Call::ListNodes => cl.list_nodes(ListNodesRequest {}).await.map(drop),
        Call::ListServices => cl
            .list_services(ListServicesRequest::default())
            .await
            .map(drop),
        Call::DrainNode(id) => cl.drain_node(DrainNodeRequest { id }).await.map(drop),
        Call::ActivateNode(id) => cl.activate_node(ActivateNodeRequest { id }).await.map(drop),
        Call::ApplyService(r) => cl.apply_service(r).await.map(drop),
        Call::CreateService(r) => cl.create_service(r).await.map(drop),
        Call::UpdateService(r) => cl.update_service(r).await.map(drop),
        Call::GetService(r) => cl.get_service(r).await.map(drop),
        Call::DeleteService(r) => cl.delete_service(r).await.map(drop),
        Call::ListServiceVersions(r) => cl.list_service_versions(r).await.map(drop),
        Call::ScaleService(r) => cl.scale_service(r).await.map(drop),
        Call::RollbackService(r) => cl.rollback_service(r).await.map(drop),
        Call::Register(r) => c.dispatcher.register(r).await.map(drop),
        Call::Session(msgs) => {
            let mut replies = c
                .dispatcher
                .session(tokio_stream::iter(msgs))
                .await?
                .into_inner();
            // A session that was accepted would push its full set: any
            // message at all means it was.
            match replies.message().await {
                Ok(None) => Ok(()),
                Ok(Some(m)) => Err(Status::internal(format!("an open session: {m:?}"))),
                Err(s) => Err(s),
            }
        }
        Call::Report(msg) => c
            .session
            .send(msg)
            .await
            .map_err(|_| Status::internal("the test worker's session ended")),
    }
}

/// Checks one answer against what was expected.
fn check(call: &Call, expect: &Expect, answer: &Result<(), Status>) -> Result<(), String> {
    let fail = |why: &str| {
        // Short enough to read: a request may carry megabytes.
        let short = |s: String| s.chars().take(300).collect::<String>();
        Err(format!(
            "{why}: {} got {}",
            short(format!("{call:?}")),
            short(format!("{answer:?}"))
        ))
    };
    match (expect, answer) {
        (Expect::Read | Expect::Silent, Ok(())) => Ok(()),
        (Expect::Read | Expect::Silent, Err(_)) => fail("refused"),
        (_, Ok(())) => fail("accepted"),
        (Expect::Field(field), Err(s)) => {
            let named = s
                .message()
                .strip_prefix(field.as_str())
                .and_then(|rest| rest.strip_prefix(": "))
                .is_some_and(|rule| !rule.trim().is_empty());
            if s.code() == Code::InvalidArgument && named {
                Ok(())
            } else {
                fail(&format!("expected INVALID_ARGUMENT naming {field}"))
            }
        }
        (Expect::Refused(codes), Err(s)) if !codes.contains(&s.code()) => {
            if s.code() == Code::InvalidArgument
                && testing::names_a_field(s.message(), fields(call))
            {
                Ok(())
            } else {
                fail(&format!("expected one of {codes:?}"))
            }
        }
        (Expect::Refused(_), Err(s)) if s.message().trim().is_empty() => fail("no message"),
        (Expect::Refused(_), Err(_)) => Ok(()),
    }
}

/// What the manager shows: every task, node and service. Nodes without
/// what their heartbeats change.
#[derive(Debug, PartialEq)]
struct View {
    tasks: BTreeMap<String, Task>,
    nodes: BTreeMap<String, Node>,
    services: Vec<Service>,
}

async fn view(cluster: &Cluster) -> View {
    let mut client = cluster.client().await;
    let mut tasks = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(ListTasksRequest {
                page_token,
                ..Default::default()
            })
            .await
            .expect("list tasks")
            .into_inner();
        tasks.extend(page.tasks.into_iter().map(|t| (t.id.clone(), t)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
        .into_iter()
        .map(|mut n| {
            n.usage = None;
            n.last_heartbeat = None;
            (n.id.clone(), n)
        })
        .collect();
    let services = client
        .list_services(ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner()
        .services;
    View {
        tasks,
        nodes,
        services,
    }
}

/// The test's own worker: registered, with a session open, heartbeating.
struct FakeWorker {
    node: String,
    tx: mpsc::Sender<WorkerMessage>,
    replies: tonic::Streaming<orch::v1::ManagerMessage>,
}

async fn fake_worker(cluster: &Cluster) -> (FakeWorker, tonic::transport::Channel) {
    let (channel, _) = cluster.join_node().await;
    let mut dispatcher = orch::v1::dispatcher_client::DispatcherClient::new(channel.clone());
    let reply = dispatcher
        .register(RegisterRequest {
            name: "storm".into(),
            labels: [("storm".to_string(), "yes".to_string())].into(),
            capacity: Some(Resources {
                milli_cpus: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 1 << 30,
            }),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let (tx, rx) = mpsc::channel(1024);
    tx.send(open(reply.node_id.clone(), reply.session_id))
        .await
        .expect("open");
    let replies = dispatcher
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    (
        FakeWorker {
            node: reply.node_id,
            tx,
            replies,
        },
        channel,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bad_requests_is_refused_and_changes_nothing() {
    let seed = std::env::var("ORCH_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("storm seed {seed} (ORCH_STORM_SEED={seed} replays it)");
    let mut cluster = Cluster::builder().workers(1).start().await;
    let image = cluster.busybox().await;
    let mut client = cluster.client().await;

    // A task on the real worker, and one on the test's own.
    let sleeper = |selector: Option<(&str, &str)>| TaskSpec {
        image: image.clone(),
        command: vec!["sleep".into(), "600".into()],
        node_selector: selector
            .map(|(k, v)| [(k.to_string(), v.to_string())].into())
            .unwrap_or_default(),
        stop_grace_period: Some(orch::time::duration(Duration::from_secs(1))),
        ..Default::default()
    };
    let real_task = cluster.submit(sleeper(Some(("index", "0")))).await;
    cluster.wait_state(&real_task.id, TaskState::Running).await;
    let (mut fake, fake_channel) = fake_worker(&cluster).await;
    let fake_task = cluster.submit(sleeper(Some(("storm", "yes")))).await;
    let attempt = tokio::time::timeout(DEADLINE, async {
        loop {
            let msg = fake
                .replies
                .message()
                .await
                .expect("session")
                .expect("open");
            let Some(manager_message::Kind::Assignments(a)) = msg.kind else {
                continue;
            };
            if let Some(run) = a.run.iter().find(|r| r.task_id == fake_task.id) {
                return run.attempt;
            }
        }
    })
    .await
    .expect("the test worker is assigned its task");
    fake.tx
        .send(WorkerMessage {
            kind: Some(worker_message::Kind::Status(StatusBatch {
                statuses: vec![TaskStatus {
                    attempt,
                    container_id: "storm".into(),
                    ..status(&fake_task, TaskState::Running)
                }],
            })),
        })
        .await
        .expect("report");
    let fake_task = cluster.wait_state(&fake_task.id, TaskState::Running).await;
    let real_task = cluster.wait_state(&real_task.id, TaskState::Running).await;
    client
        .apply_service(ApplyServiceRequest {
            spec: Some(ServiceSpec {
                name: "storm".into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: Some(0),
                })),
                task: Some(TaskSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("a service");

    // The test's worker stays alive through the storm, and notices if its
    // session ends.
    let ended = Arc::new(AtomicBool::new(false));
    let alive = {
        let (tx, ended) = (fake.tx.clone(), ended.clone());
        let mut replies = fake.replies;
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if tx.send(heartbeat(NodeMetrics::default())).await.is_err() {
                            break;
                        }
                    }
                    msg = replies.message() => {
                        if !matches!(msg, Ok(Some(_))) {
                            ended.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                }
            }
        })
    };

    let known = Known {
        real_node: real_task.node_id.clone(),
        fake_node: fake.node.clone(),
        real_task,
        fake_task,
        service: "storm".into(),
    };
    let before = view(&cluster).await;
    let mut events = client
        .watch_events(WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let calls = storm(seed, known);
    let clients = Clients {
        cluster: cluster.client().await,
        dispatcher: orch::v1::dispatcher_client::DispatcherClient::new(fake_channel),
        session: fake.tx.clone(),
    };
    let started = tokio::time::Instant::now();
    let failures: Vec<String> = futures::stream::iter(calls)
        .map(|(call, expect)| {
            let clients = clients.clone();
            async move {
                let answer = send(clients, call.clone()).await;
                check(&call, &expect, &answer).err()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|f| async { f })
        .collect()
        .await;
    eprintln!("{STORM} requests in {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {STORM} answers were wrong (seed {seed}), the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Nothing changed, and nothing happened.
    let after = view(&cluster).await;
    assert_eq!(after, before, "the storm changed the state (seed {seed})");
    assert!(
        !ended.load(Ordering::SeqCst),
        "the test worker's session ended"
    );

    // The manager still serves: a valid task runs, and its events are the
    // first since the storm began.
    let last = cluster.submit(sleeper(Some(("index", "0")))).await;
    let first = tokio::time::timeout(DEADLINE, events.message())
        .await
        .expect("an event")
        .expect("event stream")
        .expect("an event");
    match &first.kind {
        Some(event::Kind::Task(t)) if t.task_id == last.id => {}
        other => panic!("an event during the storm (seed {seed}): {other:?}"),
    }
    let last = cluster.wait_state(&last.id, TaskState::Running).await;
    let mut shown = view(&cluster).await;
    assert_eq!(
        shown.tasks.remove(&last.id).map(|t| t.id),
        Some(last.id.clone())
    );
    assert_eq!(shown.tasks, before.tasks, "only the last task is new");
    assert_eq!(shown.services, before.services);

    // The store holds what the manager showed, and nothing the storm sent.
    let shown = view(&cluster).await;
    // The manager stops though the test's worker never closes its side of
    // the session.
    alive.abort();
    tokio::time::timeout(DEADLINE, cluster.stop_manager())
        .await
        .expect("the manager stops");
    let stored = RedbStore::open(&cluster.manager_dir().join(orch_manager::STORE_FILE))
        .expect("open the store")
        .load()
        .expect("read the store");
    let stored_tasks: BTreeMap<String, Task> = stored
        .tasks
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    assert_eq!(
        stored_tasks.keys().collect::<Vec<_>>(),
        shown.tasks.keys().collect::<Vec<_>>(),
        "the stored tasks are the ones shown"
    );
    for (id, task) in &shown.tasks {
        let s = &stored_tasks[id];
        assert_eq!(
            (&s.spec, s.state(), s.attempt, s.desired_state(), &s.node_id),
            (
                &task.spec,
                task.state(),
                task.attempt,
                task.desired_state(),
                &task.node_id
            ),
            "task {id} is stored as shown"
        );
        assert_eq!(s.desired_state(), DesiredState::Running);
    }
    let stored_nodes: Vec<&String> = stored.nodes.iter().map(|n| &n.id).collect();
    assert_eq!(stored_nodes, shown.nodes.keys().collect::<Vec<_>>());
    assert_eq!(
        stored
            .services
            .iter()
            .map(|s| (&s.spec, s.version))
            .collect::<Vec<_>>(),
        shown
            .services
            .iter()
            .map(|s| (&s.spec, s.version))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stored.service_versions.len(),
        1,
        "no version from the storm"
    );
    cluster.shutdown().await;
}
