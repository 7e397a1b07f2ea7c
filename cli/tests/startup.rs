//! `orchctl dev` and `orchctl manager` that cannot start their manager exit
//! non-zero with the reason in one line, and never say orch runs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use support::{DEADLINE, ORCHCTL, free_port, orchctl_within, start_dev};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_in_use_stops_dev_and_manager_with_the_reason() {
    let dir = tempfile::Builder::new()
        .prefix("orch-startup-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data").display().to_string();
    // The first `orchctl dev` holds the data directory (redb locks its file).
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut first, _) = start_dev(dir.path(), &["--listen", &listen, "--data-dir", &data]).await;

    for command in ["dev", "manager"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let ran = orchctl_within(
            Duration::from_secs(60),
            &[command, "--listen", &listen, "--data-dir", &data],
        )
        .await;
        assert!(
            !ran.stderr.contains("orch is running"),
            "{command}: {ran:#?}"
        );
        let line = ran.refused();
        assert!(
            line.contains("another orch manager") && line.contains(&data),
            "{command}: {line}"
        );
    }
    first.start_kill().expect("stop the first orchctl dev");
    first.wait().await.expect("reap it");
}

/// A lost admin token is not the end: `orchctl manager --new-admin-token`
/// makes another at this start and writes the client configuration again,
/// and the old token keeps working until it is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_can_make_a_new_admin_token_for_a_lost_one() {
    let dir = tempfile::Builder::new()
        .prefix("orch-startup-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data").display().to_string();
    let config = dir.path().join("config.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("https://{listen}");
    let start = |extra: &'static [&'static str]| {
        let mut args = vec!["manager", "--listen", &listen, "--data-dir", &data];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let config = config.clone();
        async move { serving_manager(&config, &args).await }
    };
    let token = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("token = \""))
            .and_then(|t| t.strip_suffix('"'))
            .expect("a token in the configuration")
            .to_string()
    };
    let nodes = |token: String| {
        let (url, config) = (url.clone(), config.clone());
        async move {
            support::orchctl_in(
                DEADLINE,
                &["--manager", &url, "--token", &token, "nodes"],
                Some(&config),
            )
            .await
        }
    };

    let mut first = start(&[]).await;
    let lost = token(&std::fs::read_to_string(&config).expect("the first start's configuration"));
    first.start_kill().expect("stop the manager");
    first.wait().await.expect("reap it");
    std::fs::remove_file(&config).expect("lose the configuration");

    // A plain restart makes no token and writes nothing.
    let mut again = start(&[]).await;
    assert!(!config.exists(), "a restart writes no configuration");
    again.start_kill().expect("stop the manager");
    again.wait().await.expect("reap it");

    let mut renewed = start(&["--new-admin-token"]).await;
    let fresh = token(&std::fs::read_to_string(&config).expect("a new configuration"));
    assert_ne!(fresh, lost);
    nodes(fresh).await.ok();
    nodes(lost).await.ok();
    renewed.start_kill().expect("stop the manager");
    renewed.wait().await.expect("reap it");
}

/// Starts `orchctl ARGS` (a manager) with `config` as its client
/// configuration, and returns it once it says it serves.
async fn serving_manager(config: &std::path::Path, args: &[String]) -> tokio::process::Child {
    let mut manager = Command::new(ORCHCTL);
    manager
        .args(args)
        .env("ORCH_CONFIG", config)
        .env_remove("ORCH_MANAGER")
        .env_remove("ORCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = manager.spawn().expect("spawn orchctl manager");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("orch: manager on") {
                return;
            }
        }
        panic!("the manager ended without serving");
    })
    .await
    .expect("the manager serves in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// The arguments of `orchctl manager` on the etcd store `store`, with
/// `data` as its data directory, on a free port, then `more`.
#[cfg(feature = "etcd")]
fn etcd_manager(store: &str, data: &str, more: &[String]) -> Vec<String> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = [
        "manager",
        "--listen",
        &listen,
        "--data-dir",
        data,
        "--store",
        store,
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(more);
    args
}

/// Runs `orchctl ARGS` with `config`, which must exit at start without
/// serving; returns its one line.
#[cfg(feature = "etcd")]
async fn refused_at_start(config: &std::path::Path, args: Vec<String>) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = support::orchctl_in(Duration::from_secs(60), &args, Some(config)).await;
    assert!(!ran.stderr.contains("orch: manager on"), "{ran:#?}");
    ran.refused().to_owned()
}

/// A manager on an etcd nobody answers at, or on a store holding another
/// cluster (or none) than its data directory belongs to, exits at start
/// with one line naming both, and writes nothing to that store.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_refuses_an_unreachable_etcd_and_another_clusters_store() {
    let dir = tempfile::Builder::new()
        .prefix("orch-startup-")
        .tempdir()
        .expect("temp dir");
    let config = dir.path().join("config.toml");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let manager = |store: String, data: String| etcd_manager(&store, &data, &[]);
    let refused = |args: Vec<String>| refused_at_start(&config, args);

    let nobody = format!("etcd://127.0.0.1:{}", free_port());
    let line = refused(manager(nobody.clone(), data("a"))).await;
    assert!(
        line.contains(&nobody) && line.contains("is etcd running there?"),
        "{line}"
    );

    let etcd = orch_manager::store::etcd::local::LocalEtcd::start(1).expect("etcd");
    let (one, two) = (etcd.store_arg("one"), etcd.store_arg("two"));
    let mut first = serving_manager(&config, &manager(one.clone(), data("a"))).await;
    first.start_kill().expect("stop the manager");
    first.wait().await.expect("reap it");
    let cluster_a = std::fs::read_to_string(dir.path().join("a/cluster-id")).expect("recorded");
    let cluster_a = cluster_a.trim();

    // An empty store: not founded again under a manager of cluster a.
    let line = refused(manager(two.clone(), data("a"))).await;
    assert!(
        line.contains(&format!("the store {two} holds no cluster")),
        "{line}"
    );
    assert!(
        line.contains(&format!("belongs to cluster {cluster_a}")),
        "{line}"
    );
    // Nor is the redb file in its data directory.
    let args = [
        "manager",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &data("a"),
    ];
    let ran = support::orchctl_in(Duration::from_secs(60), &args, Some(&config)).await;
    assert!(ran.refused().contains("holds no cluster"), "{ran:#?}");

    // Another cluster's store: refused, naming both clusters.
    let mut other = serving_manager(&config, &manager(two.clone(), data("b"))).await;
    other.start_kill().expect("stop the manager");
    other.wait().await.expect("reap it");
    let cluster_b = std::fs::read_to_string(dir.path().join("b/cluster-id")).expect("recorded");
    let line = refused(manager(two.clone(), data("a"))).await;
    assert!(
        line.contains(&format!("holds cluster {}", cluster_b.trim())),
        "{line}"
    );
    assert!(
        line.contains(&format!("belongs to cluster {cluster_a}")),
        "{line}"
    );

    // Its own store still takes it.
    let mut again = serving_manager(&config, &manager(one, data("a"))).await;
    again.start_kill().expect("stop the manager");
    again.wait().await.expect("reap it");
}

/// `orchctl manager --store etcd://...` reaches a secure etcd with its
/// `--etcd-*` flags, and without what etcd wants exits at start with one
/// line saying what to give: plain HTTP off loopback is refused before any
/// connection (etcd holds the CA's key), a TLS etcd wants --etcd-ca, and a
/// file that is missing or holds no PEM is named.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_reaches_a_secure_etcd_with_its_flags_and_says_what_is_missing() {
    let dir = tempfile::Builder::new()
        .prefix("orch-startup-")
        .tempdir()
        .expect("temp dir");
    let config = dir.path().join("config.toml");
    let data = dir.path().join("data").display().to_string();
    let manager = |store: &str, more: &[String]| etcd_manager(store, &data, more);
    let refused = |args: Vec<String>| refused_at_start(&config, args);

    // 192.0.2.0/24 is for documentation: nothing answers there, and
    // nothing is asked, since the refusal comes first.
    let line = refused(manager("etcd://192.0.2.1:2379", &[])).await;
    assert!(
        line.contains("plain HTTP off loopback") && line.contains("--etcd-plaintext"),
        "{line}"
    );

    let mut etcd = orch_manager::store::etcd::local::LocalEtcd::start_secure(1).expect("etcd");
    etcd.enable_auth("orch", "").expect("etcd's authentication");
    let store = etcd.store_arg("");
    let line = refused(manager(&store, &[])).await;
    assert!(line.contains("give --etcd-ca"), "{line}");

    let flags = etcd.manager_args();
    let missing = dir.path().join("no-such-ca.pem").display().to_string();
    let mut wrong = flags.clone();
    wrong[1] = missing.clone();
    let line = refused(manager(&store, &wrong)).await;
    assert!(line.contains(&format!("--etcd-ca {missing}")), "{line}");
    let mut wrong = flags.clone();
    let key = wrong[5].clone();
    wrong[3] = key.clone();
    let line = refused(manager(&store, &wrong)).await;
    assert!(
        line.contains(&format!("--etcd-cert {key}: holds no certificate")),
        "{line}"
    );
    let without_user: Vec<String> = flags[..6].to_vec();
    let line = refused(manager(&store, &without_user)).await;
    assert!(line.contains("give --etcd-user"), "{line}");

    let mut serving = serving_manager(&config, &manager(&store, &flags)).await;
    serving.start_kill().expect("stop the manager");
    serving.wait().await.expect("reap it");
}
