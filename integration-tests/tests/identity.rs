//! A node certificate is bound to its node: the `Dispatcher` takes the node
//! id from the caller's certificate, so a worker can speak only for itself,
//! and a caller without a certificate is refused everything but `Join`.

use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{
    JoinRequest, RegisterRequest, RenewCertificateRequest, Resources, SessionOpen, WorkerMessage,
    worker_message,
};
use orch_integration_tests::cluster::Cluster;
use tonic::Code;

/// Every node, as the manager lists them now.
async fn nodes(cluster: &Cluster) -> Vec<orch::v1::Node> {
    cluster
        .client()
        .await
        .list_nodes(orch::v1::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes
}

fn register(node_id: &str) -> RegisterRequest {
    RegisterRequest {
        node_id: node_id.into(),
        name: "impostor".into(),
        capacity: Some(Resources {
            milli_cpus: 64_000,
            memory_bytes: 1 << 40,
            disk_bytes: 1 << 40,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_can_speak_only_for_its_own_node() {
    let cluster = Cluster::builder().workers(2).start().await;
    let ids = cluster.node_ids();
    let (mine, theirs) = (&ids[0], &ids[1]);
    let mut dispatcher = DispatcherClient::new(cluster.worker_channel(0).await);

    let err = dispatcher
        .register(register(theirs))
        .await
        .expect_err("registering another node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(&format!("node {mine}'s")), "{err:?}");

    let open = WorkerMessage {
        kind: Some(worker_message::Kind::Open(SessionOpen {
            node_id: theirs.clone(),
            session_id: uuid::Uuid::now_v7().to_string(),
        })),
    };
    let err = dispatcher
        .session(tokio_stream::iter([open]))
        .await
        .expect_err("a session for another node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The other node is untouched: still its own name, still ready.
    let nodes = nodes(&cluster).await;
    let other = nodes.iter().find(|n| &n.id == theirs).expect("listed");
    assert_eq!(other.name, "worker-1");
    assert!(nodes.iter().all(|n| n.name != "impostor"), "{nodes:?}");
    assert!(other.certificate_expires_at.is_some());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_only_join_is_open_and_it_needs_a_good_token() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut dispatcher = DispatcherClient::new(cluster.channel().await);
    let err = dispatcher
        .register(register(""))
        .await
        .expect_err("a register without a certificate");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("--join-token"), "{err:?}");
    let err = dispatcher
        .renew_certificate(RenewCertificateRequest { csr: vec![1] })
        .await
        .expect_err("a renewal without a certificate");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A bad request is refused before the token is looked at; a bad token
    // is refused for what it is.
    let token = cluster.access().join_token.clone();
    let err = dispatcher
        .join(JoinRequest {
            token: token.clone(),
            csr: Vec::new(),
        })
        .await
        .expect_err("no csr");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("csr:"), "{err:?}");
    let err = dispatcher
        .join(JoinRequest {
            token: "SWMTKN-1-abc-def".into(),
            csr: vec![0; 16],
        })
        .await
        .expect_err("a bad token");
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::InvalidArgument),
        "{err:?}"
    );
    let nodes = nodes(&cluster).await;
    assert!(nodes.is_empty(), "{nodes:?}");
    cluster.shutdown().await;
}
