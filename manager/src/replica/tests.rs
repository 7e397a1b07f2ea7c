//! Two replicas in this process on a real etcd member: what a follower
//! does with its clients' calls.

use std::time::Duration;

use orch::v1::cluster_client::ClusterClient;
use orch::v1::{ListNodesRequest, WatchEventsRequest};
use tokio::sync::oneshot;

use crate::limits::Limits;
use crate::store::etcd::local::LocalEtcd;

/// How long anything here may take on a loaded machine: longer than the
/// follower's `FORWARD_TIMEOUT`, so that a forwarded call that waits for
/// it fails rather than the test giving up first.
const DEADLINE: Duration = Duration::from_secs(30);

/// Starts a replica (plain HTTP) on `store` with `limits`, serving until
/// the returned sender is dropped; its URL, and a receiver that resolves
/// once it leads.
async fn replica(
    store: &str,
    dir: &std::path::Path,
    limits: Limits,
) -> (String, oneshot::Sender<()>, oneshot::Receiver<()>) {
    let config = crate::Config {
        data_dir: Some(dir.to_path_buf()),
        tls: false,
        etcd: Some(store.to_owned()),
        limits,
        ..crate::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = super::start(config, listener).await.unwrap();
    let url = replica.url().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let (leads, led) = oneshot::channel();
    tokio::spawn(async move {
        let mut leads = Some(leads);
        let served = replica
            .serve(
                async {
                    let _ = stopped.await;
                },
                move |_| {
                    if let Some(leads) = leads.take() {
                        let _ = leads.send(());
                    }
                },
            )
            .await;
        served.unwrap();
    });
    (url, stop, led)
}

/// A client on a connection of its own.
async fn client(url: &str) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::connect(url.to_owned()).await.unwrap()
}

/// The leader allows two streams per connection; three clients of the
/// follower each open a watch, and a fourth lists the nodes. Each client's
/// calls reach the leader on a connection of their own: funnelled into one,
/// the third watch would wait for a free stream until the follower gave up
/// on it (`UNAVAILABLE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_each_client_on_a_connection_of_its_own() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = etcd.store_arg("");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let limits = Limits {
        streams_per_connection: 2,
        ..Limits::default()
    };
    let (_, _stop_leader, led) = replica(&store, dirs[0].path(), limits).await;
    tokio::time::timeout(DEADLINE, led)
        .await
        .expect("the first replica leads")
        .unwrap();
    let (follower, _stop_follower, _) = replica(&store, dirs[1].path(), limits).await;
    // Once the follower has seen the leader, it forwards.
    let mut lister = client(&follower).await;
    tokio::time::timeout(DEADLINE, async {
        while let Err(status) = lister.list_nodes(ListNodesRequest {}).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the follower forwards within the deadline");
    let mut watches = Vec::new();
    for i in 0..3 {
        let mut watcher = client(&follower).await;
        let opened = tokio::time::timeout(
            DEADLINE,
            watcher.watch_events(WatchEventsRequest::default()),
        )
        .await
        .expect("an answer within the deadline");
        let stream = opened.unwrap_or_else(|s| panic!("watch {i} was refused: {s:?}"));
        watches.push((watcher, stream));
    }
    let listed = tokio::time::timeout(DEADLINE, lister.list_nodes(ListNodesRequest {}))
        .await
        .expect("an answer within the deadline");
    assert!(listed.is_ok(), "{listed:?}");
}
