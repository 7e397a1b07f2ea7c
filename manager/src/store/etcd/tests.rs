//! The store's behaviours (`store::checks`) against a real etcd, and what is
//! etcd's own: a reconnect reads what was written, a batch larger than one
//! transaction, the prefix that keeps clusters apart, an unreachable etcd.

use super::local::LocalEtcd;
use super::*;
use crate::store::checks;

/// One behaviour of `store::checks`, run on a fresh store.
type Check = fn(&EtcdStore);

/// Runs every check of `store::checks` against one etcd member, each on a
/// prefix of its own, so that one process serves them all (a member takes a
/// second or two to start on a loaded machine).
#[test]
fn etcd_store_behaves_as_the_others() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = |name: &str| EtcdStore::connect(&etcd.url(name)).unwrap();
    let checks: [(&str, Check); 14] = [
        ("empty", |s| checks::check_empty(s)),
        ("round_trip", |s| checks::check_round_trip(s)),
        ("update_keeps_spec", |s| checks::check_update_keeps_spec(s)),
        ("coalescing", |s| checks::check_coalescing(s)),
        ("events_after_paging", |s| {
            checks::check_events_after_paging(s)
        }),
        ("bad_id_refuses_batch", |s| {
            checks::check_bad_id_refuses_batch(s)
        }),
        ("status_without_spec_is_corrupt", |s| {
            checks::check_status_without_spec_is_corrupt(s);
        }),
        ("service_replaces", |s| checks::check_service_replaces(s)),
        ("service_delete", |s| checks::check_service_delete(s)),
        ("service_delete_then_recreate", |s| {
            checks::check_service_delete_then_recreate(s);
        }),
        ("service_version_delete", |s| {
            checks::check_service_version_delete(s)
        }),
        ("attempts_are_bounded", |s| {
            checks::check_attempts_are_bounded(s)
        }),
        ("empty_service_name_refuses_batch", |s| {
            checks::check_empty_service_name_refuses_batch(s);
        }),
        ("events_pruning", |s| {
            // `with_events_kept` takes the store by value: a second
            // connection on the same prefix.
            let pruned = EtcdStore::connect(s.url())
                .unwrap()
                .with_events_kept(checks::EVENTS_KEPT);
            checks::check_events_pruning(&pruned);
        }),
    ];
    for (name, check) in checks {
        let store = store(name);
        check(&store);
    }
}

/// What one connection wrote, another reads back whole, as a manager that
/// takes over from another loads what that one committed; and a prefix sees
/// nothing of another's.
#[test]
fn etcd_everything_survives_a_new_connection_and_prefixes_are_apart() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = EtcdStore::connect(&etcd.url("one")).unwrap();
    let expected = checks::write_everything(&store);
    let events = store.events_after(0, usize::MAX).unwrap();
    drop(store);

    let again = EtcdStore::connect(&etcd.url("one")).unwrap();
    assert_eq!(again.load().unwrap(), expected);
    assert_eq!(again.events_after(0, usize::MAX).unwrap(), events);

    let other = EtcdStore::connect(&etcd.url("one-other")).unwrap();
    assert_eq!(other.load().unwrap(), Snapshot::default());
}

/// A store whose keys another version of orch laid out is refused at load,
/// saying so, rather than misread.
#[test]
fn etcd_a_store_in_another_layout_is_refused() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = EtcdStore::connect(&etcd.url("layout")).unwrap();
    checks::write_everything(&store);
    store.load().unwrap();
    let key = store.keys.key(META, LAYOUT);
    store
        .run(move |mut kv| async move {
            kv.delete(key, None)
                .await
                .map_err(|e| backend("deleting", &e))
        })
        .unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(
        err.contains("layout 1") && err.contains("another version of orch"),
        "{err}"
    );
}

/// A batch far beyond one transaction's limits (ops and bytes) is committed
/// whole, with every spec beside its status, and loads back in id order.
#[test]
fn etcd_large_batch_spans_transactions() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = EtcdStore::connect(&etcd.url("large")).unwrap();
    let mut writes = Vec::new();
    let mut ids = Vec::new();
    for n in 0..2_000u64 {
        let mut task = checks::task(n + 1);
        // Large specs: the byte limit cuts transactions too.
        task.spec.as_mut().unwrap().image = "x".repeat(2_000);
        ids.push(task.id.clone());
        writes.push(Write::TaskCreated(Box::new(task)));
    }
    let [first, second] = store.transactions(&Batch::new(&writes).unwrap());
    assert!(first.is_empty());
    // etcd's default limit.
    assert_eq!(store.txn_ops(), 128);
    assert!(second.len() > 2_000 * 2 / 128, "{} txns", second.len());
    assert!(second.iter().all(|ops| ops.len() <= 128));
    store.commit(&writes).unwrap();
    let loaded = store.load().unwrap();
    let mut want = ids.clone();
    want.sort();
    let got: Vec<String> = loaded.tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(got, want);
    assert!(
        loaded
            .tasks
            .iter()
            .all(|t| t.spec.as_ref().unwrap().image.len() == 2_000)
    );
}

/// How many keys `table` holds under `store`'s prefix.
fn keys_in(store: &EtcdStore, table: &'static str) -> i64 {
    let prefix = store.keys.table(table);
    store
        .run(move |mut kv| async move {
            let reply = kv
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(|e| backend("counting", &e))?;
            Ok(reply.count())
        })
        .unwrap()
}

/// A task's current attempt rides in its status, its ended attempts in keys
/// of their own; a commit's events go in pages, and pages all older than
/// what is kept are deleted, while reads give exactly what is kept.
#[test]
fn etcd_statuses_carry_the_current_attempt_and_events_go_in_pages() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = EtcdStore::connect(&etcd.url("pages"))
        .unwrap()
        .with_events_kept(300);

    let mut task = checks::task(1);
    store
        .commit(&[Write::TaskCreated(Box::new(task.clone()))])
        .unwrap();
    task.set_state(orch::v1::TaskState::Scheduled);
    let update = |task: &Task| Write::TaskUpdated(Box::new(task.clone()));
    store
        .commit(&[update(&task), checks::attempt_write(1, 1, "placed")])
        .unwrap();
    assert_eq!(keys_in(&store, TASK_ATTEMPTS), 0, "in the status");
    let attempts = |store: &EtcdStore| -> Vec<(u64, String)> {
        let loaded = store.load().unwrap();
        loaded
            .attempts
            .into_iter()
            .map(|(_, a)| (a.attempt, a.message))
            .collect()
    };
    assert_eq!(attempts(&store), [(1, "placed".to_owned())]);
    // A new attempt: the ended one gets its key, with the status that ends it.
    task.attempt = 2;
    store
        .commit(&[
            checks::attempt_write(1, 1, "lost"),
            update(&task),
            checks::attempt_write(1, 2, "placed again"),
        ])
        .unwrap();
    assert_eq!(keys_in(&store, TASK_ATTEMPTS), 1);
    assert_eq!(
        attempts(&store),
        [(1, "lost".to_owned()), (2, "placed again".to_owned())]
    );

    for batch in 0..4 {
        let first = batch * 250 + 1;
        store.commit(&checks::events(first..=first + 249)).unwrap();
    }
    // Four pages written, the two older than the 300 kept deleted.
    assert_eq!(keys_in(&store, EVENTS), 2);
    let kept = store.events_after(0, usize::MAX).unwrap();
    assert_eq!(checks::sequences(&kept), (701..=1000).collect::<Vec<_>>());
    assert_eq!(
        checks::sequences(&store.events_after(800, 10).unwrap()),
        (801..=810).collect::<Vec<_>>()
    );
    assert_eq!(
        checks::sequences(&store.events_after(740, 20).unwrap()),
        (741..=760).collect::<Vec<_>>(),
        "across two pages"
    );
    assert_eq!(store.load().unwrap().last_event_sequence, 1000);
}

/// Compaction drops the history before the revision of the round before,
/// and nothing that is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_history_is_compacted_up_to_the_revision_of_the_round_before() {
    let etcd = LocalEtcd::start(1).unwrap();
    let store = std::sync::Arc::new(EtcdStore::connect(&etcd.url("history")).unwrap());
    let write = |n: u64| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .commit(&[Write::Node(Box::new(checks::node(n)))])
                .unwrap();
        })
    };
    let node_id = uuid::Uuid::parse_str(&checks::node(1).id).unwrap();
    let node_key = store.keys.key(NODES, &hex(node_id.as_u128()));
    let at = |revision: i64| {
        let mut kv = store.client().kv_client();
        let key = node_key.clone();
        async move {
            kv.get(key, Some(GetOptions::new().with_revision(revision)))
                .await
        }
    };
    write(1).await.unwrap();
    let first = history::compact(&store, None).await.unwrap();
    write(1).await.unwrap();
    write(2).await.unwrap();
    let second = history::compact(&store, Some(first)).await.unwrap();
    assert!(second > first);

    // Before `first`: gone. At `first` and after: readable.
    let gone = at(first - 1).await.expect_err("compacted");
    assert!(gone.to_string().contains("compacted"), "{gone}");
    assert_eq!(at(first).await.unwrap().kvs().len(), 1);
    // A round that finds its revision compacted already is no error.
    history::compact(&store, Some(first)).await.unwrap();
    let loaded = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.load().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(loaded.nodes.len(), 2, "what is current stays");
}

/// An etcd that does not answer is a clear error naming it, in seconds.
#[test]
fn etcd_unreachable_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = EtcdUrl::parse(&format!("etcd://127.0.0.1:{port}")).unwrap();
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(&url).unwrap_err().to_string();
    assert!(err.contains(&format!("etcd://127.0.0.1:{port}")), "{err}");
    assert!(err.contains("is etcd running there?"), "{err}");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT + REQUEST_TIMEOUT + std::time::Duration::from_secs(5)
    );
}

#[test]
fn etcd_urls_parse() {
    let url = EtcdUrl::parse("etcd://a:2379,10.0.0.2:2380/team/orch").unwrap();
    assert_eq!(url.endpoints, ["http://a:2379", "http://10.0.0.2:2380"]);
    assert_eq!(url.prefix, "/team/orch/");
    assert_eq!(url.to_string(), "etcd://a:2379,10.0.0.2:2380/team/orch");
    assert_eq!(EtcdUrl::parse("etcd://a:1").unwrap().prefix, DEFAULT_PREFIX);
    for bad in [
        "http://a:2379",
        "etcd://",
        "etcd://a",
        "etcd://a:x",
        "etcd://a:1,,b:2",
        "etcd://:1",
    ] {
        let err = EtcdUrl::parse(bad).unwrap_err();
        assert!(
            err.contains(bad) || err.contains("HOST:PORT"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn keys_order_as_ids_and_numbers() {
    assert!(hex(1) < hex(u128::MAX));
    assert!(hex(0x0f) < hex(0x10));
    assert!(number(9) < number(10));
    assert_eq!(prefix_end(b"/orch/event/"), b"/orch/event0");
    assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
}

/// A leader deposed without noticing writes nothing: its commits compare
/// the leader key's creation revision (its term), which the next leader's
/// election changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_deposed_leaders_commits_are_fenced() {
    use std::sync::Arc;
    use std::time::Duration;

    use super::election::{Candidate, DEFAULT_LEASE};

    let etcd = LocalEtcd::start(1).unwrap();
    let url = etcd.url("fenced");
    let connect = || {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || Arc::new(EtcdStore::connect(&url).unwrap()))
                .await
                .unwrap()
        }
    };
    let commit = |store: Arc<EtcdStore>, n: u64| async move {
        tokio::task::spawn_blocking(move || {
            store.commit(&[Write::TaskCreated(Box::new(checks::task(n)))])
        })
        .await
        .unwrap()
    };
    let (first, second) = (connect().await, connect().await);
    let (seen, _) = tokio::sync::watch::channel(None);
    let a = Candidate::new(first.clone(), "https://a:7070".into(), DEFAULT_LEASE);
    let leading = a.campaign(&seen).await;
    first.set_fence(Some(leading.fence.clone()));
    commit(first.clone(), 1).await.unwrap();

    // The first leader's lease goes (as when it is paused past it) and the
    // other manager is elected; the first one has not noticed.
    let b = Candidate::new(second.clone(), "https://b:7070".into(), DEFAULT_LEASE);
    let mut client = first.client();
    let leader_key = first.key_of("leader");
    let held = client.get(leader_key, None).await.unwrap();
    let lease = held.kvs()[0].lease();
    client.lease_revoke(lease).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), b.campaign(&seen))
        .await
        .unwrap();
    assert!(next.fence.term > leading.fence.term);
    second.set_fence(Some(next.fence.clone()));

    let refused = commit(first.clone(), 2).await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    commit(second.clone(), 3).await.unwrap();
    let loaded = tokio::task::spawn_blocking(move || second.load().unwrap())
        .await
        .unwrap();
    let ids: Vec<String> = loaded.tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, [checks::task(1).id, checks::task(3).id]);
    drop(leading);
}

/// The store's transactions are as large as the etcd takes: 1,024
/// operations where its `--max-txn-ops` allows them, the largest size tried
/// under a lower limit; and where etcd is restarted with a lower limit than
/// the store found, a commit fails once, loudly, and its retry fits.
#[test]
fn etcd_transactions_are_as_large_as_the_etcd_takes() {
    let tasks = |from: u64| -> Vec<Write> {
        (from..from + 1_500)
            .map(|n| Write::TaskCreated(Box::new(checks::task(n))))
            .collect()
    };
    let sizes = |store: &EtcdStore, writes: &[Write]| -> Vec<usize> {
        let [_, second] = store.transactions(&Batch::new(writes).unwrap());
        second.iter().map(Vec::len).collect()
    };

    let low = LocalEtcd::start_with(1, &["--max-txn-ops=100".into()]).unwrap();
    let store = EtcdStore::connect(&low.url("low")).unwrap();
    assert_eq!(store.txn_ops(), 64, "the largest size tried under 100");
    assert!(sizes(&store, &tasks(1)).iter().all(|&n| n <= 64));
    store.commit(&tasks(1)).unwrap();
    assert_eq!(store.load().unwrap().tasks.len(), 1_500);
    drop(low);

    let mut high = LocalEtcd::start_with(1, &["--max-txn-ops=1024".into()]).unwrap();
    let store = EtcdStore::connect(&high.url("high")).unwrap();
    assert_eq!(store.txn_ops(), MAX_TXN_OPS);
    let large = sizes(&store, &tasks(1));
    assert!(large.iter().all(|&n| n <= MAX_TXN_OPS), "{large:?}");
    assert!(
        large.len() <= 3,
        "3,000 puts in {} transactions",
        large.len()
    );
    store.commit(&tasks(1)).unwrap();

    // The operator restarts etcd with its default limit (128).
    high.kill(0);
    high.set_args(&[]);
    high.restart(0).unwrap();
    high.wait_healthy(std::time::Duration::from_secs(30))
        .unwrap();
    let writes = tasks(10_001);
    let err = (0..20)
        .find_map(|_| match store.commit(&writes) {
            // The member is back but the client may not have reconnected.
            Err(e) if e.to_string().contains("too many operations") => Some(e),
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(250));
                None
            }
            Ok(()) => panic!("etcd took transactions beyond its limit"),
        })
        .expect("the commit refused for its size");
    assert!(err.to_string().contains("too many operations"), "{err}");
    assert_eq!(store.txn_ops(), 128);
    store.commit(&writes).unwrap();
    assert_eq!(store.load().unwrap().tasks.len(), 3_000);
}

/// A secure etcd, as operators run it (TLS, client certificates, then
/// authentication on): the store reaches it with etcd's CA, a certificate
/// and a user, and commits, loads and compacts there; a store lacking any of
/// them, or with a wrong password or another CA, is refused at connect with
/// a sentence saying what etcd wants; the user reaches only its prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_and_a_user() {
    let mut etcd = LocalEtcd::start_secure(1).unwrap();
    let url = etcd.url("secure");
    let connect = |url: &EtcdUrl, access: EtcdAccess| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || EtcdStore::connect_with(&url, &access))
    };
    let refused = |url: &EtcdUrl, access: EtcdAccess| {
        let connecting = connect(url, access);
        async move { connecting.await.unwrap().unwrap_err().to_string() }
    };
    let store = connect(&url, etcd.access().unwrap())
        .await
        .unwrap()
        .unwrap();
    let expected = tokio::task::spawn_blocking(move || checks::write_everything(&store))
        .await
        .unwrap();

    let (ca, _, _) = etcd.tls_files().unwrap();
    let ca = std::fs::read(ca).unwrap();
    let err = refused(&url, EtcdAccess::default()).await;
    assert!(err.contains("give --etcd-ca"), "{err}");
    let err = refused(&url, EtcdAccess::tls(ca.clone())).await;
    assert!(err.contains("--etcd-cert and --etcd-key"), "{err}");
    let stranger = crate::auth::Ca::create(std::time::SystemTime::now()).unwrap();
    let err = refused(&url, EtcdAccess::tls(stranger.cert_pem())).await;
    assert!(
        err.contains("UnknownIssuer") && err.contains("check that --etcd-ca is the CA"),
        "{err}"
    );

    etcd.enable_auth("orch", "secure").unwrap();
    let access = etcd.access().unwrap();
    let store = std::sync::Arc::new(connect(&url, access.clone()).await.unwrap().unwrap());
    let loaded = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.load().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(loaded, expected, "what was written before auth was on");
    let first = history::compact(&store, None).await.unwrap();
    history::compact(&store, Some(first)).await.unwrap();

    let with_cert = EtcdAccess::tls(ca).with_identity(
        std::fs::read(etcd.tls_files().unwrap().1).unwrap(),
        std::fs::read(etcd.tls_files().unwrap().2).unwrap(),
    );
    let err = refused(&url, with_cert.clone().with_user("orch", "wrong")).await;
    assert!(err.contains("refused the user's name or password"), "{err}");
    let err = refused(&url, with_cert).await;
    assert!(err.contains("--etcd-user"), "{err}");
    let err = refused(&etcd.url("elsewhere"), access).await;
    assert!(err.contains("lacks a role"), "{err}");
}

#[test]
fn etcd_urls_say_whether_they_are_on_loopback() {
    for local in [
        "etcd://localhost:2379",
        "etcd://127.0.0.1:1,127.0.0.2:2",
        "etcd://[::1]:2379/p",
    ] {
        assert!(EtcdUrl::parse(local).unwrap().is_loopback(), "{local}");
    }
    for remote in ["etcd://10.0.0.2:2379", "etcd://127.0.0.1:1,etcd-1:2379"] {
        assert!(!EtcdUrl::parse(remote).unwrap().is_loopback(), "{remote}");
    }
}
