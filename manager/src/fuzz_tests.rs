//! The fuzz target of the public API, on the stable toolchain: bytes decoded
//! as every request message of the `Cluster` and `Dispatcher` services
//! (tokens, join tokens, node removal and joining included), and
//! what decodes handed to the real handlers (`ClusterApi`, `DispatcherApi`,
//! and a session's messages to `dispatcher::receive`) of a manager over a
//! `MemoryStore`, as tonic would after decoding them.
//!
//! The bytes are random, or a valid request (from `orch::testing`, with the
//! ids, node ids and service names the manager holds) encoded and then
//! mutated on the wire: bits flipped, cut short, a run of bytes repeated
//! (which repeats fields), bytes overwritten or spliced in, another valid
//! request appended (which merges the two, as protobuf does). So the cases
//! reach past decoding into every rule of validation and into the engine.
//!
//! For every case: no panic; the answer is a response or a status a client
//! can act on (never `INTERNAL`, `UNKNOWN` or `UNAVAILABLE`: the store does
//! not fail here); an `INVALID_ARGUMENT` reads `FIELD: RULE`, the field a
//! path into the request; and a refused request changes nothing (no event).
//!
//! `cargo test -p orch-manager --lib fuzz` runs 2,000 cases per target;
//! `PROPTEST_CASES=200000` runs more.

use std::sync::{Arc, Mutex};

use orch::testing;
use orch::v1::cluster_server::Cluster;
use orch::v1::dispatcher_server::Dispatcher;
use orch::v1::{
    ActivateNodeRequest, ApplyServiceRequest, DeleteServiceRequest, DrainNodeRequest,
    GetServiceRequest, GetTaskRequest, Heartbeat, ListManagersRequest, ListNodesRequest,
    ListServiceVersionsRequest, ListServicesRequest, ListTasksRequest, NodeMetrics,
    PlanServiceRequest, PlanTaskRequest, RegisterRequest, RollbackServiceRequest,
    ScaleServiceRequest, SessionOpen, StatusBatch, StopTaskRequest, SubmitTaskRequest,
    SubmitTasksRequest, TaskStatus, WatchEventsRequest, WorkerMessage, service_spec,
    worker_message,
};
use orch::v1::{
    CreateTokenRequest, GetJoinTokenRequest, JoinRequest, ListTokensRequest, RemoveNodeRequest,
    RenewCertificateRequest, RevokeTokenRequest,
};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::api::ClusterApi;
use crate::dispatcher::sessions::Liveness;
use crate::dispatcher::{self, DispatcherApi};
use crate::engine::Engine;
use crate::persist::Committer;
use crate::scheduler::{Scheduler, Strategy as Placement};
use crate::store::{MemoryStore, Store};
use crate::{Shared, clock};

/// Every request message of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SubmitTask,
    SubmitTasks,
    StopTask,
    GetTask,
    ListTasks,
    ListNodes,
    ListManagers,
    DrainNode,
    ActivateNode,
    WatchEvents,
    ApplyService,
    CreateService,
    UpdateService,
    GetService,
    ListServices,
    ScaleService,
    RollbackService,
    DeleteService,
    ListServiceVersions,
    Register,
    /// A message of an open session.
    Session,
    RemoveNode,
    CreateToken,
    ListTokens,
    RevokeToken,
    GetJoinToken,
    Join,
    RenewCertificate,
    PlanTask,
    PlanService,
}

const KINDS: [Kind; 30] = [
    Kind::SubmitTask,
    Kind::SubmitTasks,
    Kind::StopTask,
    Kind::GetTask,
    Kind::ListTasks,
    Kind::ListNodes,
    Kind::ListManagers,
    Kind::DrainNode,
    Kind::ActivateNode,
    Kind::WatchEvents,
    Kind::ApplyService,
    Kind::CreateService,
    Kind::UpdateService,
    Kind::GetService,
    Kind::ListServices,
    Kind::ScaleService,
    Kind::RollbackService,
    Kind::DeleteService,
    Kind::ListServiceVersions,
    Kind::Register,
    Kind::Session,
    Kind::RemoveNode,
    Kind::CreateToken,
    Kind::ListTokens,
    Kind::RevokeToken,
    // Before GetJoinToken, whose rotations retire the join token it uses.
    Kind::Join,
    Kind::GetJoinToken,
    Kind::RenewCertificate,
    Kind::PlanTask,
    Kind::PlanService,
];

/// The top-level fields of each request, as field paths name them.
fn fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::SubmitTask
        | Kind::ApplyService
        | Kind::CreateService
        | Kind::UpdateService
        | Kind::PlanTask
        | Kind::PlanService => &["spec"],
        Kind::SubmitTasks => &["specs"],
        Kind::StopTask | Kind::GetTask | Kind::DrainNode | Kind::ActivateNode => &["id"],
        Kind::ListTasks => &["states", "node_id", "page_size", "page_token", "service"],
        Kind::GetService | Kind::DeleteService | Kind::ListServiceVersions => &["name"],
        Kind::ScaleService => &["name", "count"],
        Kind::RollbackService => &["name", "to_version"],
        Kind::Register => &["node_id", "name", "address", "labels", "capacity"],
        Kind::RemoveNode | Kind::RevokeToken => &["id"],
        Kind::CreateToken => &["role", "name", "ttl"],
        Kind::GetJoinToken => &["rotate", "ttl", "uses"],
        Kind::Join => &["token", "csr"],
        Kind::RenewCertificate => &["csr"],
        Kind::ListServices => &["page_size", "page_token"],
        Kind::WatchEvents => &["since", "task_id", "service", "node_id", "kinds"],
        Kind::ListNodes | Kind::ListManagers | Kind::Session | Kind::ListTokens => &[],
    }
}

/// One change to encoded bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    /// Repeats the run between two positions right after it.
    Repeat(Index, Index),
    Overwrite(Index, u8),
    Insert(Index, Vec<u8>),
    /// Appends another valid request: the two merge when decoded.
    Append(Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let n = bytes.len();
        match self {
            Self::FlipBit(at, bit) if n > 0 => bytes[at.index(n)] ^= 1 << (bit % 8),
            Self::Truncate(at) => bytes.truncate(at.index(n + 1)),
            Self::Repeat(a, b) if n > 0 => {
                let (a, b) = (a.index(n), b.index(n));
                let (from, to) = (a.min(b), a.max(b) + 1);
                let run = bytes[from..to].to_vec();
                bytes.splice(to..to, run);
            }
            Self::Overwrite(at, byte) if n > 0 => bytes[at.index(n)] = *byte,
            Self::Insert(at, more) => {
                let at = at.index(n + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Self::Append(more) => bytes.extend_from_slice(more),
            _ => {}
        }
    }
}

/// What the manager holds, for requests to name.
#[derive(Debug, Clone)]
struct Known {
    tasks: Vec<String>,
    nodes: Vec<String>,
    services: Vec<String>,
    /// The open session: node id and session id.
    session: (String, String),
    /// The ids of the client tokens the manager holds.
    tokens: Vec<String>,
    /// The current join token.
    join_token: String,
    /// Valid certificate requests (DER), each for a key of its own.
    csrs: Vec<Vec<u8>>,
}

/// A duration of any sign and size, or none.
fn ttl() -> BoxedStrategy<Option<prost_types::Duration>> {
    proptest::option::of(
        (
            prop_oneof![-5..100_000i64, any::<i64>()],
            prop_oneof![Just(0), any::<i32>()],
        )
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
    .boxed()
}

/// An id the manager holds, a fresh one, or anything at all.
fn id_from(pool: Vec<String>) -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(pool),
        2 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => testing::wild_text(),
    ]
    .boxed()
}

fn name_from(pool: Vec<String>) -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(pool),
        2 => "[a-z][a-z0-9-]{0,10}",
        1 => testing::wild_text(),
    ]
    .boxed()
}

fn service_spec() -> BoxedStrategy<orch::v1::ServiceSpec> {
    prop_oneof![
        4 => testing::service_spec(),
        2 => testing::broken_service_spec().prop_map(|(s, _)| s),
        1 => testing::wild_service_spec(),
    ]
    .boxed()
}

fn task_spec() -> BoxedStrategy<orch::v1::TaskSpec> {
    prop_oneof![
        4 => testing::task_spec(),
        2 => testing::broken_task_spec().prop_map(|(s, _)| s),
        1 => testing::wild_task_spec(),
    ]
    .boxed()
}

fn encoded<M: Message + 'static>(s: impl Strategy<Value = M> + 'static) -> BoxedStrategy<Vec<u8>> {
    s.prop_map(|m| m.encode_to_vec()).boxed()
}

/// A request of `kind`, mostly valid, encoded.
fn request(kind: Kind, known: &Known) -> BoxedStrategy<Vec<u8>> {
    let task = || id_from(known.tasks.clone());
    let node = || id_from(known.nodes.clone());
    let service = || name_from(known.services.clone());
    match kind {
        Kind::SubmitTask => {
            encoded(proptest::option::of(task_spec()).prop_map(|spec| SubmitTaskRequest { spec }))
        }
        Kind::PlanTask => {
            encoded(proptest::option::of(task_spec()).prop_map(|spec| PlanTaskRequest { spec }))
        }
        Kind::PlanService => encoded(
            (
                proptest::option::of(service_spec()),
                proptest::option::of(select(known.services.clone())),
            )
                .prop_map(|(mut spec, existing)| {
                    if let (Some(spec), Some(name)) = (spec.as_mut(), existing) {
                        spec.name = name;
                    }
                    PlanServiceRequest { spec }
                }),
        ),
        Kind::SubmitTasks => encoded(
            proptest::collection::vec(task_spec(), 0..4)
                .prop_map(|specs| SubmitTasksRequest { specs }),
        ),
        Kind::StopTask => encoded(task().prop_map(|id| StopTaskRequest { id })),
        Kind::GetTask => encoded(task().prop_map(|id| GetTaskRequest { id })),
        Kind::ListTasks => encoded(
            (
                proptest::collection::vec(-1..10i32, 0..3),
                prop_oneof![Just(String::new()), node()],
                prop_oneof![0..20u32, any::<u32>()],
                prop_oneof![Just(String::new()), task()],
                prop_oneof![Just(String::new()), service()],
            )
                .prop_map(|(states, node_id, page_size, page_token, service)| {
                    ListTasksRequest {
                        states,
                        node_id,
                        page_size,
                        page_token,
                        service,
                    }
                }),
        ),
        Kind::ListNodes => encoded(Just(ListNodesRequest {})),
        Kind::ListManagers => encoded(Just(ListManagersRequest {})),
        Kind::WatchEvents => encoded(
            (
                proptest::option::of(0u64..1_000),
                prop_oneof![Just(String::new()), "[0-9a-f-]{0,40}"],
                prop_oneof![Just(String::new()), "[a-z0-9-]{0,70}"],
                prop_oneof![Just(String::new()), "[0-9a-f-]{0,40}"],
                proptest::collection::vec(-1i32..5, 0..4),
            )
                .prop_map(|(since, task_id, service, node_id, kinds)| {
                    WatchEventsRequest {
                        since,
                        task_id,
                        service,
                        node_id,
                        kinds,
                    }
                }),
        ),
        Kind::ListServices => encoded(Just(ListServicesRequest::default())),
        Kind::DrainNode => encoded(node().prop_map(|id| DrainNodeRequest { id })),
        Kind::ActivateNode => encoded(node().prop_map(|id| ActivateNodeRequest { id })),
        Kind::ApplyService | Kind::CreateService | Kind::UpdateService => encoded(
            (
                service_spec(),
                proptest::option::of(select(known.services.clone())),
            )
                .prop_map(|(mut spec, existing)| {
                    if let Some(name) = existing {
                        spec.name = name;
                    }
                    ApplyServiceRequest { spec: Some(spec) }
                }),
        ),
        Kind::GetService => encoded(service().prop_map(|name| GetServiceRequest { name })),
        Kind::DeleteService => encoded(service().prop_map(|name| DeleteServiceRequest { name })),
        Kind::ListServiceVersions => {
            encoded(service().prop_map(|name| ListServiceVersionsRequest { name }))
        }
        Kind::ScaleService => encoded(
            (service(), prop_oneof![0..4u32, any::<u32>()])
                .prop_map(|(name, count)| ScaleServiceRequest { name, count }),
        ),
        Kind::RollbackService => encoded(
            (service(), prop_oneof![0..4u64, any::<u64>()])
                .prop_map(|(name, to_version)| RollbackServiceRequest { name, to_version }),
        ),
        Kind::Register => encoded(prop_oneof![
            4 => testing::register_request(),
            2 => testing::broken_register_request().prop_map(|(r, _)| r),
            1 => testing::wild_register_request(),
        ]),
        Kind::Session => encoded(worker_message(known)),
        Kind::RemoveNode => encoded(node().prop_map(|id| RemoveNodeRequest { id })),
        Kind::CreateToken => encoded(
            (
                prop_oneof![-1..5i32, any::<i32>()],
                prop_oneof![3 => "[a-z ]{0,20}", 1 => testing::wild_text()],
                ttl(),
            )
                .prop_map(|(role, name, ttl)| CreateTokenRequest { role, name, ttl }),
        ),
        Kind::ListTokens => encoded(Just(ListTokensRequest {})),
        Kind::RevokeToken => {
            encoded(id_from(known.tokens.clone()).prop_map(|id| RevokeTokenRequest { id }))
        }
        Kind::GetJoinToken => encoded(
            (
                // Rarely: a rotation retires the join token the Join cases use.
                prop_oneof![20 => Just(false), 1 => Just(true)],
                ttl(),
                prop_oneof![Just(0), 1..5u32, any::<u32>()],
            )
                .prop_map(|(rotate, ttl, uses)| GetJoinTokenRequest {
                    rotate,
                    ttl,
                    uses,
                }),
        ),
        Kind::Join => encoded(
            (
                prop_oneof![4 => Just(known.join_token.clone()), 1 => testing::wild_text()],
                prop_oneof![
                    3 => select(known.csrs.clone()),
                    1 => proptest::collection::vec(any::<u8>(), 0..64),
                ],
            )
                .prop_map(|(token, csr)| JoinRequest { token, csr }),
        ),
        Kind::RenewCertificate => encoded(
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|csr| RenewCertificateRequest { csr }),
        ),
    }
}

/// A message of the open session: heartbeats and reports about the tasks
/// the manager holds, this node's or not, at any attempt and state.
fn worker_message(known: &Known) -> BoxedStrategy<WorkerMessage> {
    let (node_id, session_id) = known.session.clone();
    let status = (
        id_from(known.tasks.clone()),
        0..4u64,
        -1..10i32,
        "[a-f0-9]{0,12}",
        proptest::option::of(any::<i32>()),
        testing::wild_text(),
        -1..5i32,
    )
        .prop_map(
            |(task_id, attempt, state, container_id, exit_code, message, health)| TaskStatus {
                task_id,
                attempt,
                state,
                container_id,
                exit_code,
                message,
                time: None,
                health,
            },
        );
    let kind = prop_oneof![
        (any::<f64>(), any::<i64>(), any::<i64>()).prop_map(|(cpu, used, total)| {
            worker_message::Kind::Heartbeat(Heartbeat {
                metrics: Some(NodeMetrics {
                    cpu_percent: cpu,
                    memory_used_bytes: used,
                    memory_total_bytes: total,
                    ..Default::default()
                }),
            })
        }),
        proptest::collection::vec(status, 0..4)
            .prop_map(|statuses| worker_message::Kind::Status(StatusBatch { statuses })),
        Just(worker_message::Kind::Open(SessionOpen {
            node_id,
            session_id
        })),
    ];
    proptest::option::of(kind)
        .prop_map(|kind| WorkerMessage { kind })
        .boxed()
}

/// The bytes of one case: random, a valid request as it is, or one mutated.
fn case(kind: Kind, known: &Known) -> BoxedStrategy<Vec<u8>> {
    let mutation = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Repeat(a, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Overwrite(at, b)),
        (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, more)| Mutation::Insert(at, more)),
        request(kind, known).prop_map(Mutation::Append),
    ];
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        2 => request(kind, known),
        5 => (request(kind, known), proptest::collection::vec(mutation, 1..4)).prop_map(
            |(mut bytes, mutations)| {
                for m in &mutations {
                    m.apply(&mut bytes);
                }
                bytes
            }
        ),
    ]
    .boxed()
}

/// The most tasks one service may ask for here, so the cases stay quick:
/// the limits above this are validation's, covered by its own properties.
const MOST: u32 = 3;

fn clamp(spec: &mut Option<orch::v1::ServiceSpec>) {
    match spec.as_mut().and_then(|s| s.mode.as_mut()) {
        Some(service_spec::Mode::Replicated(r)) => {
            r.replicas = r.replicas.map(|n| n.min(MOST));
        }
        Some(service_spec::Mode::Batch(b)) => {
            b.completions = b.completions.map(|n| n.clamp(0, MOST));
        }
        _ => {}
    }
}

/// A manager over a `MemoryStore`, with its services, a few tasks, two
/// nodes (one with an open session) and a service.
struct Fixture {
    shared: Arc<Shared>,
    cluster: ClusterApi,
    dispatcher: DispatcherApi,
    events: Mutex<broadcast::Receiver<orch::v1::Event>>,
    /// The open session's pushes, drained after every case.
    session: Mutex<crate::dispatcher::sessions::SessionRx>,
    node: Uuid,
    session_id: Uuid,
}

impl Fixture {
    async fn start() -> (Self, Known) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::start(store.clone());
        let now = std::time::SystemTime::now();
        let (auth, _) = crate::auth::Auth::restore(
            crate::auth::Ca::create(now).expect("a CA"),
            &[],
            crate::auth::NODE_CERT_LIFETIME,
            now,
        )
        .expect("auth");
        let engine = Engine::restore(
            store.load().expect("load"),
            Scheduler::with_seed(Placement::Spread, 1),
            committer.clone(),
            Liveness {
                heartbeat_period: std::time::Duration::from_secs(3600),
                missed_heartbeats: 3,
            },
        );
        let clock: clock::Clock = engine.clock();
        // The handlers are called directly, under the layers that check
        // tokens and certificates (tested apart): as on a manager without
        // TLS, the Dispatcher takes a request's node id at its word.
        let shared = Arc::new(Shared {
            engine: std::sync::Mutex::new(engine),
            clock,
            auth: std::sync::Mutex::new(auth),
            tls: false,
            committer,
            store: Arc::downgrade(&store),
            managers: Arc::new(crate::Alone(orch::v1::ManagerInfo::default())),
        });
        let cluster = ClusterApi::new(shared.clone());
        let dispatcher = DispatcherApi::new(shared.clone(), &crate::limits::Limits::default());
        let mut nodes = Vec::new();
        let mut session = None;
        for name in ["w0", "w1"] {
            let reply = dispatcher
                .register(Request::new(RegisterRequest {
                    name: name.into(),
                    capacity: Some(orch::v1::Resources {
                        milli_cpus: 4000,
                        memory_bytes: 8 << 30,
                        disk_bytes: 100 << 30,
                    }),
                    ..Default::default()
                }))
                .await
                .expect("register")
                .into_inner();
            nodes.push(reply.node_id.clone());
            session.get_or_insert((reply.node_id, reply.session_id));
        }
        let (node_id, session_id) = session.expect("a node");
        let node: Uuid = node_id.parse().expect("node id");
        let session_uuid: Uuid = session_id.parse().expect("session id");
        let (tx, rx) = crate::dispatcher::sessions::channel();
        shared
            .lock()
            .open_session(node, session_uuid, tx)
            .expect("open");
        let tasks = cluster
            .submit_tasks(Request::new(SubmitTasksRequest {
                specs: (0..4)
                    .map(|i| orch::v1::TaskSpec {
                        name: format!("t{i}"),
                        image: "busybox".into(),
                        ..Default::default()
                    })
                    .collect(),
            }))
            .await
            .expect("submit")
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| t.id)
            .collect();
        cluster
            .apply_service(Request::new(ApplyServiceRequest {
                spec: Some(orch::v1::ServiceSpec {
                    name: "web".into(),
                    mode: Some(service_spec::Mode::Replicated(orch::v1::ReplicatedMode {
                        replicas: Some(2),
                    })),
                    task: Some(orch::v1::TaskSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .expect("apply");
        let events = shared.lock().subscribe();
        let tokens = (0..4)
            .map(|i| {
                let (info, _, _) = shared
                    .auth()
                    .create_token(orch::auth::Role::ALL[i % 3], "fuzz", None, now)
                    .expect("a token");
                info.id
            })
            .collect();
        let join_token = shared
            .auth()
            .join_token(false, None, None, now)
            .expect("the join token")
            .0
            .token;
        let csrs = (0..3)
            .map(|_| {
                let key = rcgen::KeyPair::generate().expect("a key");
                rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .expect("a csr")
                    .der()
                    .to_vec()
            })
            .collect();
        let known = Known {
            tasks,
            nodes,
            services: vec!["web".into(), "gone".into()],
            session: (node_id, session_id),
            tokens,
            join_token,
            csrs,
        };
        let fixture = Self {
            shared,
            cluster,
            dispatcher,
            events: Mutex::new(events),
            session: Mutex::new(rx),
            node,
            session_id: session_uuid,
        };
        (fixture, known)
    }

    /// Decodes `bytes` as a `kind` and hands it to its handler, as tonic
    /// would. `None` if the bytes do not decode (tonic answers those
    /// itself) or carry no answer (a session message).
    async fn call(&self, kind: Kind, bytes: &[u8]) -> Option<Result<(), Status>> {
        fn decode<M: Message + Default>(bytes: &[u8]) -> Option<Request<M>> {
            M::decode(bytes).ok().map(Request::new)
        }
        let c = &self.cluster;
        let answer = match kind {
            Kind::SubmitTask => c.submit_task(decode(bytes)?).await.map(drop),
            Kind::SubmitTasks => c.submit_tasks(decode(bytes)?).await.map(drop),
            Kind::StopTask => c.stop_task(decode(bytes)?).await.map(drop),
            Kind::GetTask => c.get_task(decode(bytes)?).await.map(drop),
            Kind::PlanTask => c.plan_task(decode(bytes)?).await.map(drop),
            Kind::PlanService => {
                let mut req: Request<PlanServiceRequest> = decode(bytes)?;
                clamp(&mut req.get_mut().spec);
                c.plan_service(req).await.map(drop)
            }
            Kind::ListTasks => c.list_tasks(decode(bytes)?).await.map(drop),
            Kind::ListNodes => c.list_nodes(decode(bytes)?).await.map(drop),
            Kind::ListManagers => c.list_managers(decode(bytes)?).await.map(drop),
            Kind::DrainNode => c.drain_node(decode(bytes)?).await.map(drop),
            Kind::ActivateNode => c.activate_node(decode(bytes)?).await.map(drop),
            Kind::WatchEvents => c.watch_events(decode(bytes)?).await.map(drop),
            Kind::ApplyService | Kind::CreateService | Kind::UpdateService => {
                let mut req: Request<ApplyServiceRequest> = decode(bytes)?;
                clamp(&mut req.get_mut().spec);
                match kind {
                    Kind::ApplyService => c.apply_service(req).await.map(drop),
                    Kind::CreateService => c.create_service(req).await.map(drop),
                    _ => c.update_service(req).await.map(drop),
                }
            }
            Kind::GetService => c.get_service(decode(bytes)?).await.map(drop),
            Kind::ListServices => c.list_services(decode(bytes)?).await.map(drop),
            Kind::ScaleService => {
                let mut req: Request<ScaleServiceRequest> = decode(bytes)?;
                req.get_mut().count = req.get_ref().count.min(MOST);
                c.scale_service(req).await.map(drop)
            }
            Kind::RollbackService => c.rollback_service(decode(bytes)?).await.map(drop),
            Kind::DeleteService => c.delete_service(decode(bytes)?).await.map(drop),
            Kind::ListServiceVersions => c.list_service_versions(decode(bytes)?).await.map(drop),
            Kind::Register => self.dispatcher.register(decode(bytes)?).await.map(drop),
            Kind::RemoveNode => c.remove_node(decode(bytes)?).await.map(drop),
            Kind::CreateToken => c.create_token(decode(bytes)?).await.map(drop),
            Kind::ListTokens => c.list_tokens(decode(bytes)?).await.map(drop),
            Kind::RevokeToken => c.revoke_token(decode(bytes)?).await.map(drop),
            Kind::GetJoinToken => c.get_join_token(decode(bytes)?).await.map(drop),
            Kind::Join => self.dispatcher.join(decode(bytes)?).await.map(drop),
            Kind::RenewCertificate => self
                .dispatcher
                .renew_certificate(decode(bytes)?)
                .await
                .map(drop),
            Kind::Session => {
                let msg = WorkerMessage::decode(bytes).ok()?;
                if let Some(kind) = msg.kind {
                    let current =
                        dispatcher::receive(&self.shared, self.node, self.session_id, kind);
                    assert!(current, "the session stays current");
                }
                return None;
            }
        };
        Some(answer)
    }

    /// Forgets what accepted requests changed; returns how many events
    /// there were.
    fn drain(&self) -> usize {
        while self
            .session
            .lock()
            .expect("session lock")
            .try_recv()
            .is_ok()
        {}
        let mut events = self.events.lock().expect("events lock");
        let mut n = 0;
        loop {
            match events.try_recv() {
                Ok(_) => n += 1,
                Err(TryRecvError::Lagged(k)) => n += usize::try_from(k).unwrap_or(usize::MAX),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return n,
            }
        }
    }
}

/// Checks one answer: a response, or a status a client can act on that,
/// for a bad argument, names a field of the request.
fn check_answer(kind: Kind, answer: &Result<(), Status>) -> Result<(), TestCaseError> {
    let Err(status) = answer else {
        return Ok(());
    };
    let proper = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::ResourceExhausted,
        Code::OutOfRange,
        // A join token that is not one: a client can act on that too.
        Code::Unauthenticated,
    ];
    prop_assert!(
        proper.contains(&status.code()),
        "{:?} answered {:?}",
        kind,
        status
    );
    prop_assert!(
        !status.message().trim().is_empty(),
        "{:?}: {:?}",
        kind,
        status
    );
    if status.code() == Code::InvalidArgument {
        prop_assert!(
            testing::names_a_field(status.message(), fields(kind)),
            "{:?}: {:?} names no field of the request",
            kind,
            status.message()
        );
    }
    Ok(())
}

fn cases() -> u32 {
    testing::cases(2000)
}

/// Runs `cases()` cases of each kind in `kinds` against one manager, on a
/// thread with room for the generators' deep strategies.
fn fuzz(kinds: &'static [Kind]) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || fuzz_on_this_thread(kinds))
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn fuzz_on_this_thread(kinds: &[Kind]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (fixture, known) = rt.block_on(Fixture::start());
    fixture.drain();
    for &kind in kinds {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let seen = Mutex::new(std::collections::BTreeMap::<&str, u32>::new());
        let result = runner.run(&case(kind, &known), |bytes| {
            let answer = rt.block_on(fixture.call(kind, &bytes));
            let changes = fixture.drain();
            let outcome = match &answer {
                None => "no answer",
                Some(Ok(())) => "accepted",
                Some(Err(s)) if s.code() == Code::InvalidArgument => "invalid",
                Some(Err(_)) => "refused otherwise",
            };
            *seen.lock().expect("seen").entry(outcome).or_default() += 1;
            if let Some(answer) = answer {
                check_answer(kind, &answer)?;
                // A plan changes nothing, whatever it answers.
                if matches!(kind, Kind::PlanTask | Kind::PlanService) {
                    prop_assert_eq!(changes, 0, "{:?} changed the state", kind);
                }
                if let Err(status) = &answer {
                    prop_assert_eq!(
                        changes,
                        0,
                        "{:?} was refused ({:?}) but changed the state",
                        kind,
                        status
                    );
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{kind:?}: {e}");
        }
        let seen = seen.into_inner().expect("seen");
        eprintln!("{kind:?}: {seen:?}");
        // The cases reach the handlers, and past validation into the
        // engine, not only the decoder's errors (counted when there are
        // enough cases to count).
        // A session message has no answer; without TLS there is no
        // certificate to renew, so every renewal is FAILED_PRECONDITION.
        if cases() < 1000 || matches!(kind, Kind::Session | Kind::RenewCertificate) {
            continue;
        }
        assert!(seen.contains_key("accepted"), "{kind:?}: {seen:?}");
        // A `ListServices` request is invalid only with a page size past
        // the limit or a bad page token, which mutated bytes rarely make.
        if !fields(kind).is_empty() && kind != Kind::ListServices {
            assert!(seen.contains_key("invalid"), "{kind:?}: {seen:?}");
        }
    }
}

#[test]
fn fuzz_task_requests() {
    fuzz(&KINDS[..9]);
}

#[test]
fn fuzz_service_requests() {
    fuzz(&KINDS[9..18]);
}

#[test]
fn fuzz_worker_requests() {
    fuzz(&KINDS[18..20]);
}

#[test]
fn fuzz_access_requests() {
    fuzz(&KINDS[20..27]);
}

#[test]
fn fuzz_plan_requests() {
    fuzz(&KINDS[27..]);
}
