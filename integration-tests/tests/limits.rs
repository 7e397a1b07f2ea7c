//! The limits on input and load, over real gRPC against an in-process
//! manager: an oversized message, a spec over each field's limit, a burst of
//! `Register` calls, a handler over the request timeout while a session
//! lives on, pages of tasks and services that each fit in a message, and a
//! worker's full set larger than a message.

use std::collections::HashMap;
use std::time::Duration;

use orch::limits;
use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{
    ApplyServiceRequest, ListServicesRequest, ListTasksRequest, Placement, RegisterRequest,
    ReplicatedMode, Resources, ServiceSpec, SubmitTaskRequest, SubmitTasksRequest, Task, TaskSpec,
    TaskState, WorkerMessage, service_spec,
};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_manager::limits::{Limits, MAX_MESSAGE_BYTES};
use tonic::Code;

fn spec(image: &str) -> TaskSpec {
    TaskSpec {
        image: image.into(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    }
}

/// A spec of about `kib` KiB, in env values of at most 100 KiB (under
/// their own limit).
fn big_spec(image: &str, kib: usize) -> TaskSpec {
    let values = kib.div_ceil(100);
    let value = "v".repeat((kib << 10) / values);
    TaskSpec {
        env: (0..values)
            .map(|i| (format!("BIG{i}"), value.clone()))
            .collect(),
        ..spec(image)
    }
}

/// A client of the cluster's `Dispatcher` service, as a worker has.
/// (TLS, without a node certificate: enough to reach the layers in front of
/// the handlers.)
async fn dispatcher(cluster: &Cluster) -> DispatcherClient<tonic::transport::Channel> {
    DispatcherClient::new(cluster.channel().await)
}

/// A cluster of `workers` whose manager has `limits`.
async fn limited(workers: usize, limits: Limits) -> Cluster {
    Cluster::builder()
        .workers(workers)
        .limits(limits)
        .start()
        .await
}

/// A replicated service of `replicas` tasks of `busybox`.
fn service(name: &str, replicas: u32, placement: Option<Placement>) -> ApplyServiceRequest {
    ApplyServiceRequest {
        spec: Some(ServiceSpec {
            name: name.into(),
            mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                replicas: Some(replicas),
            })),
            task: Some(spec("busybox")),
            placement,
            update: None,
        }),
    }
}

/// Every task, page by page, with the client's default 4 MiB limit on
/// replies; and how many pages it took.
async fn all_tasks(cluster: &Cluster, page_size: u32) -> (Vec<Task>, usize) {
    let mut client = cluster.client().await;
    let mut tasks = Vec::new();
    let mut request = ListTasksRequest {
        page_size,
        ..Default::default()
    };
    for pages in 1.. {
        let page = client
            .list_tasks(request.clone())
            .await
            .expect("a page fits in a message")
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return (tasks, pages);
        }
        request.page_token = page.next_page_token;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_resource_exhausted_naming_the_limit_and_stores_nothing() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut client = cluster.client().await;
    let err = client
        .submit_task(SubmitTaskRequest {
            spec: Some(spec(&"a".repeat(5 << 20))),
        })
        .await
        .expect_err("5 MiB");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&format!(
            "more than the limit of {MAX_MESSAGE_BYTES} bytes (4 MiB)"
        )),
        "{err:?}"
    );
    assert!(
        err.message().contains("/orch.v1.Cluster/SubmitTask"),
        "{err:?}"
    );
    assert!(all_tasks(&cluster, 0).await.0.is_empty());
    // The same over the Dispatcher service.
    let mut dispatcher = dispatcher(&cluster).await;
    let err = dispatcher
        .register(RegisterRequest {
            name: "n".repeat(5 << 20),
            ..Default::default()
        })
        .await
        .expect_err("5 MiB");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_over_a_limit_is_refused_naming_it_shortly_and_stores_nothing() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut client = cluster.client().await;
    let env = |n: usize, value: &str| -> HashMap<String, String> {
        (0..n)
            .map(|i| (format!("K{i}"), value.to_string()))
            .collect()
    };
    let cases: Vec<(TaskSpec, &str)> = vec![
        (
            spec(&"a".repeat(3 << 20)),
            "spec.image: 3145728 bytes, at most 512",
        ),
        (
            TaskSpec {
                env: env(100_000, "v"),
                ..spec("busybox")
            },
            "spec.env: 100000 entries, at most 1024",
        ),
        (
            TaskSpec {
                env: HashMap::from([("BIG".into(), "v".repeat(2 << 20))]),
                ..spec("busybox")
            },
            "spec.env[\"BIG\"]: a value of 2097152 bytes, at most 131072",
        ),
        (
            TaskSpec {
                command: vec!["x".into(); 200_000],
                ..spec("busybox")
            },
            "spec.command: 200000 arguments, at most 4096",
        ),
        (
            TaskSpec {
                labels: env(50_000, "v"),
                ..spec("busybox")
            },
            "spec.labels: 50000 entries, at most 256",
        ),
        (
            TaskSpec {
                node_selector: env(1, &"v".repeat(5000)),
                ..spec("busybox")
            },
            "spec.node_selector[\"K0\"]: a value of 5000 bytes, at most 4096",
        ),
        (big_spec("busybox", 300), "spec: 3072"),
    ];
    for (spec, want) in cases {
        let err = client
            .submit_task(SubmitTaskRequest { spec: Some(spec) })
            .await
            .expect_err(want);
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(err.message().starts_with(want), "{want}: {err:?}");
        assert!(err.message().len() < 300, "{want}: a short message");
    }
    // A huge bad value is quoted by its start only.
    let err = client
        .submit_task(SubmitTaskRequest {
            spec: Some(TaskSpec {
                name: "n ".repeat(1 << 20),
                ..spec("busybox")
            }),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("… (2097152 bytes)"), "{err:?}");
    assert!(err.message().len() < 300);
    // In a batch, the index of the bad spec; none of the batch stored.
    let err = client
        .submit_tasks(SubmitTasksRequest {
            specs: vec![
                spec("busybox"),
                TaskSpec {
                    command: vec!["x".repeat(limits::MAX_ARG_BYTES + 1)],
                    ..spec("busybox")
                },
            ],
        })
        .await
        .expect_err("bad arg");
    assert!(
        err.message()
            .starts_with("specs[1].command[0]: 131073 bytes, at most 131072"),
        "{err:?}"
    );
    // A service's placement.
    let err = client
        .apply_service(service(
            "web",
            1,
            Some(Placement {
                constraints: env(300, "a"),
            }),
        ))
        .await
        .expect_err("constraints");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("spec.placement.constraints: 300 entries, at most 256"),
        "{err:?}"
    );

    assert!(all_tasks(&cluster, 0).await.0.is_empty(), "nothing stored");
    let services = client
        .list_services(ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner()
        .services;
    assert!(services.is_empty());
    cluster.shutdown().await;
}

fn registration(n: usize) -> RegisterRequest {
    RegisterRequest {
        name: format!("burst-{n}"),
        capacity: Some(Resources {
            milli_cpus: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_registrations_is_refused_beyond_the_rate_at_once() {
    let limits = Limits {
        registers_per_second: 1,
        register_burst: 5,
        ..Limits::default()
    };
    let cluster = limited(0, limits).await;
    let mut dispatcher = dispatcher(&cluster).await;
    let started = tokio::time::Instant::now();
    let mut accepted = 0;
    let mut refused = Vec::new();
    // The caller has no node certificate: a call the rate lets through is
    // then refused by the Dispatcher itself, as UNAUTHENTICATED.
    for n in 0..20 {
        match dispatcher.register(registration(n)).await {
            Err(status) if status.code() == Code::Unauthenticated => accepted += 1,
            Ok(_) => accepted += 1,
            Err(status) => refused.push(status),
        }
    }
    let elapsed = started.elapsed();
    // The burst, and one a second after it: a slow machine may see one or two more.
    let most = 5 + elapsed.as_secs() as usize + 1;
    assert!(
        (5..=most).contains(&accepted),
        "{accepted} accepted in {elapsed:?}"
    );
    assert_eq!(refused.len(), 20 - accepted);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("Register is limited to 1 calls a second (bursts of 5); retry in"),
            "{status:?}"
        );
    }
    // Refused at once, not held: twenty calls take far less than the 15 s
    // the rate would need.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_over_the_timeout_ends_while_a_session_lives_on() {
    let timeout = Duration::from_secs(2);
    let limits = Limits {
        request_timeout: timeout,
        ..Limits::default()
    };
    let cluster = limited(1, limits).await;
    // A session that never says `open`, on the worker's own certificate:
    // its handler waits for it (up to 10 s), and the request timeout ends
    // it first.
    let mut dispatcher = DispatcherClient::new(cluster.worker_channel(0).await);
    let (_tx, rx) = tokio::sync::mpsc::channel::<WorkerMessage>(1);
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(
        DEADLINE,
        dispatcher.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the timeout ends it")
    .expect_err("no open message");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message()
            .contains("/orch.v1.Dispatcher/Session took longer than the manager's limit of 2 s"),
        "{err:?}"
    );
    assert!(started.elapsed() >= timeout);
    // The worker's session, open for longer than the timeout by now, still
    // carries assignments and reports.
    let image = cluster.busybox().await;
    let task = cluster.submit(spec(&image)).await;
    cluster.wait_state(&task.id, TaskState::Running).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_tasks_fit_in_a_message_and_list_every_task_once() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut client = cluster.client().await;
    // 2,500 small tasks (pending: there is no worker), and 18 of 240 KiB:
    // 4.3 MiB together, more than one message.
    let mut want = Vec::new();
    for _ in 0..5 {
        let tasks = client
            .submit_tasks(SubmitTasksRequest {
                specs: vec![spec("busybox"); 500],
            })
            .await
            .expect("submit")
            .into_inner()
            .tasks;
        want.extend(tasks.into_iter().map(|t| t.id));
    }
    for _ in 0..18 {
        let task = client
            .submit_task(SubmitTaskRequest {
                spec: Some(big_spec("busybox", 240)),
            })
            .await
            .expect("submit a large spec")
            .into_inner()
            .task
            .expect("task");
        want.push(task.id);
    }
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    // By count: 1000 a page, then the large ones by size.
    let (tasks, pages) = all_tasks(&cluster, 0).await;
    assert_eq!(ids(tasks), want, "every task once, in order");
    assert!(pages >= 4, "{pages} pages");
    let (tasks, pages) = all_tasks(&cluster, 700).await;
    assert_eq!(ids(tasks), want);
    assert!(pages >= 5, "{pages} pages");
    // Filtered, the pages hold only what matches.
    let mut pending = 0;
    let mut request = ListTasksRequest {
        states: vec![TaskState::Pending as i32],
        page_size: 999,
        ..Default::default()
    };
    loop {
        let page = client
            .list_tasks(request.clone())
            .await
            .expect("page")
            .into_inner();
        pending += page.tasks.len();
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(pending, want.len());
    // The filters are bounded too.
    let err = client
        .list_tasks(ListTasksRequest {
            states: vec![TaskState::Pending as i32; 17],
            ..Default::default()
        })
        .await
        .expect_err("17 states");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "states: 17 entries, at most 16");
    let err = client
        .list_tasks(ListTasksRequest {
            service: "s".repeat(3 << 20),
            ..Default::default()
        })
        .await
        .expect_err("a 3 MiB service name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("service: \"sss"), "{err:?}");
    assert!(err.message().len() < 300);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_services_list_every_service_once() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut client = cluster.client().await;
    let names = ["a", "b", "c", "d", "e"];
    for name in names {
        client
            .apply_service(service(name, 0, None))
            .await
            .expect("apply");
    }
    let mut got = Vec::new();
    let mut request = ListServicesRequest {
        page_size: 2,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = client
            .list_services(request.clone())
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.services.len() <= 2);
        got.extend(
            page.services
                .into_iter()
                .filter_map(|s| s.spec.map(|s| s.name)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(got, names);
    assert_eq!(pages, 3);
    let err = client
        .list_services(ListServicesRequest {
            page_size: 10_001,
            ..Default::default()
        })
        .await
        .expect_err("page size");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("page_size: 10001 is more than 10000")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_set_larger_than_a_message_reaches_a_returning_worker_whole() {
    let mut cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    // 18 tasks of 240 KiB: a full set of 4.3 MiB, over the 4 MiB a worker
    // decodes in one message.
    let mut client = cluster.client().await;
    let mut ids = Vec::new();
    for _ in 0..18 {
        let task = client
            .submit_task(SubmitTaskRequest {
                spec: Some(big_spec(&image, 240)),
            })
            .await
            .expect("submit")
            .into_inner()
            .task
            .expect("task");
        ids.push(task.id);
    }
    let mut want = ids.clone();
    want.sort();
    assert_eq!(cluster.wait_running_tasks(&ids).await, want);
    // The worker comes back and is sent every task it runs: in parts. Were
    // it one message, the worker could not read it and would never be ready;
    // were a part taken for the whole, it would stop the others' containers.
    cluster.stop_worker(0).await;
    cluster.restart_worker(0);
    cluster.wait_ready_nodes(1).await;
    let extra = cluster.submit(spec(&image)).await;
    cluster.wait_state(&extra.id, TaskState::Running).await;
    let mut all = want.clone();
    all.push(extra.id.clone());
    all.sort();
    assert_eq!(cluster.wait_running_tasks(&all).await, all);
    for id in &ids {
        cluster.wait_state(id, TaskState::Running).await;
    }
    cluster.shutdown().await;
}
