//! Health check tests: the tracker's rules over plain data; the monitor's
//! timing over tokio's paused clock with scripted probes; and the HTTP and
//! TCP probes against real listeners on loopback (real sockets and paused
//! time do not mix: the paused clock jumps ahead while a socket waits).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use orch::v1::{HttpProbe, TcpProbe};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

fn settings(interval_ms: u64, timeout_ms: u64, retries: u32, start_period_ms: u64) -> Settings {
    Settings {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        retries,
        start_period: Duration::from_millis(start_period_ms),
    }
}

/// Feeds `results` (ms since start, healthy?) to a tracker and checks the
/// changes it announces, as (ms since start, health).
fn check(s: Settings, results: &[(u64, bool)], expected: &[(u64, HealthState)]) {
    let mut tracker = Tracker::new(s);
    assert_eq!(tracker.health(), HealthState::Starting);
    let mut changes = Vec::new();
    for &(ms, ok) in results {
        let result = if ok { Ok(()) } else { Err("down".to_owned()) };
        if let Some(h) = tracker.record(Duration::from_millis(ms), &result) {
            changes.push((ms, h));
        }
    }
    assert_eq!(changes, expected, "{s:?} {results:?}");
}

#[test]
fn tracker_rules() {
    use HealthState::*;
    let s = settings(100, 100, 3, 0);
    // A success makes it healthy; repeats change nothing.
    check(s, &[(100, true), (200, true)], &[(100, Healthy)]);
    // `retries` failures in a row, from starting or from healthy.
    check(
        s,
        &[(100, false), (200, false), (300, false)],
        &[(300, Unhealthy)],
    );
    check(
        s,
        &[
            (100, true),
            (200, false),
            (300, false),
            (400, false),
            (500, false),
        ],
        &[(100, Healthy), (400, Unhealthy)],
    );
    // A success in between starts the count over; one brings it back.
    check(
        s,
        &[
            (100, false),
            (200, false),
            (300, true),
            (400, false),
            (500, false),
            (600, false),
            (700, true),
        ],
        &[(300, Healthy), (600, Unhealthy), (700, Healthy)],
    );
    // One retry: the first failure is enough.
    check(
        settings(100, 100, 1, 0),
        &[(100, false)],
        &[(100, Unhealthy)],
    );
    // Failures in the start period do not count; from its end they do.
    check(
        settings(100, 100, 2, 350),
        &[
            (100, false),
            (200, false),
            (300, false),
            (400, false),
            (500, false),
        ],
        &[(500, Unhealthy)],
    );
    // A success ends the start period early.
    check(
        settings(100, 100, 2, 1000),
        &[(100, true), (200, false), (300, false)],
        &[(100, Healthy), (300, Unhealthy)],
    );
}

/// Runs [`watch`] with probes that give `script`'s results in order (each
/// after `delay`), on the paused clock, for `run_for`; returns the changes
/// as (ms since start, health, reason).
async fn watch_script(
    s: Settings,
    delay: Duration,
    script: Vec<ProbeResult>,
    run_for: Duration,
) -> Vec<(u128, HealthState, String)> {
    let start = Instant::now();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let probe = move || {
        let script = script.clone();
        async move {
            tokio::time::sleep(delay).await;
            let next = script.lock().expect("script").pop_front();
            next.unwrap_or(Ok(()))
        }
    };
    let watcher = tokio::spawn(watch(s, probe, move |h, reason| {
        let _ = tx.send((start.elapsed().as_millis(), h, reason));
    }));
    tokio::time::sleep(run_for).await;
    watcher.abort();
    let mut changes = Vec::new();
    while let Ok(c) = rx.try_recv() {
        changes.push(c);
    }
    changes
}

fn fail(reason: &str) -> ProbeResult {
    Err(reason.to_owned())
}

#[tokio::test(start_paused = true)]
async fn probes_run_every_interval_and_report_each_change_with_its_reason() {
    let changes = watch_script(
        settings(1000, 500, 2, 0),
        Duration::ZERO,
        vec![
            Ok(()),
            fail("HTTP 500 from /health"),
            fail("HTTP 503 from /health"),
            Ok(()),
        ],
        Duration::from_millis(4500),
    )
    .await;
    assert_eq!(
        changes,
        vec![
            // The first probe runs one interval after the start.
            (1000, HealthState::Healthy, String::new()),
            (
                3000,
                HealthState::Unhealthy,
                "HTTP 503 from /health".to_owned()
            ),
            (4000, HealthState::Healthy, String::new()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_start_period_is_honoured() {
    let changes = watch_script(
        settings(1000, 500, 2, 3500),
        Duration::ZERO,
        vec![fail("refused"); 10],
        Duration::from_millis(10_500),
    )
    .await;
    // Probes at 1, 2 and 3 s do not count; 4 s is the first that does.
    assert_eq!(
        changes,
        vec![(5000, HealthState::Unhealthy, "refused".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_slower_than_the_timeout_fails() {
    let changes = watch_script(
        settings(1000, 200, 1, 0),
        Duration::from_secs(30),
        vec![],
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(
        changes,
        vec![(
            1200,
            HealthState::Unhealthy,
            "no answer within 200ms".to_owned()
        )]
    );
}

/// A server on loopback that answers every connection with `answer` and
/// counts the connections.
async fn serve(answer: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // Read the request head, as a real server would, then answer.
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn http_answers_decide_the_probe() {
    let (ok, _) = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(http_get(ok, "/health").await, Ok(()));
    let (redirect, _) = serve("HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n").await;
    assert_eq!(http_get(redirect, "").await, Ok(()));
    let (error, _) = serve("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    assert_eq!(
        http_get(error, "/health").await,
        Err("HTTP 500 from /health".to_owned())
    );
    let (not_found, _) = serve("HTTP/1.1 404 Not Found\r\n\r\n").await;
    assert_eq!(
        http_get(not_found, "/nope").await,
        Err("HTTP 404 from /nope".to_owned())
    );
    let (garbage, _) = serve("SSH-2.0-OpenSSH\r\n").await;
    let err = http_get(garbage, "/").await.expect_err("not HTTP");
    assert!(err.starts_with("not an HTTP answer"), "{err}");
    let (silent_close, _) = serve("").await;
    let err = http_get(silent_close, "/").await.expect_err("no answer");
    assert!(err.starts_with("no HTTP answer"), "{err}");
}

#[tokio::test]
async fn the_request_is_an_http_1_0_get_of_the_path() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the request ended early: {head:?}");
            head.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.0 204 No Content\r\n\r\n")
            .await
            .expect("write");
        String::from_utf8(head).expect("utf-8")
    });
    assert_eq!(http_get(addr, "/ready?full=1").await, Ok(()));
    let head = server.await.expect("server");
    assert!(head.starts_with("GET /ready?full=1 HTTP/1.0\r\n"), "{head}");
}

#[tokio::test]
async fn a_closed_port_fails_http_and_tcp_probes() {
    // Bind, then drop: the port is (almost certainly) closed now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    for err in [http_get(addr, "/").await, tcp_connect(addr).await] {
        let err = err.expect_err("refused");
        assert!(err.starts_with(&format!("connecting to {addr}")), "{err}");
    }
    let (open, _) = serve("").await;
    assert_eq!(tcp_connect(open).await, Ok(()));
}

/// A runtime whose containers all have the address 127.0.0.1, so probes
/// reach servers on loopback; exec answers from a script.
struct Loopback;

impl Runtime for Loopback {
    async fn start(
        &self,
        _req: &crate::runtime::StartRequest,
    ) -> Result<String, crate::runtime::RuntimeError> {
        Ok("c1".into())
    }
    async fn stop(&self, _id: &str, _grace: Duration) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
    async fn remove(&self, _id: &str) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
    async fn list(
        &self,
        _cluster: &str,
        _node: uuid::Uuid,
    ) -> Result<Vec<crate::runtime::ContainerInfo>, crate::runtime::RuntimeError> {
        Ok(vec![])
    }
    fn exits(
        &self,
        _cluster: &str,
        _node: uuid::Uuid,
    ) -> futures::stream::BoxStream<'static, crate::runtime::Exit> {
        Box::pin(futures::stream::pending())
    }
    async fn address(&self, _id: &str) -> Result<Option<IpAddr>, crate::runtime::RuntimeError> {
        Ok(Some(IpAddr::from([127, 0, 0, 1])))
    }
    async fn exec(
        &self,
        _id: &str,
        command: &[String],
    ) -> Result<crate::runtime::ExecOutput, crate::runtime::RuntimeError> {
        // `exit N` exits with N, like a shell would.
        let code = match command {
            [exit, n] if exit == "exit" => n.parse().unwrap_or(127),
            _ => 0,
        };
        Ok(crate::runtime::ExecOutput {
            exit_code: code,
            output: if code == 0 {
                String::new()
            } else {
                "oops".into()
            },
        })
    }
}

/// Monitors with `check` over [`Loopback`] until the first change of health
/// after `starting`; returns it.
async fn first_change(check: HealthCheck) -> (HealthState, String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _monitor = spawn(Arc::new(Loopback), "c1".into(), &check, move |h, r| {
        let _ = tx.send((h, r));
    })
    .expect("a probe");
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a change in time")
        .expect("monitor alive")
}

fn fast(probe: Probe, retries: u32) -> HealthCheck {
    HealthCheck {
        probe: Some(probe),
        interval: Some(orch::time::duration(Duration::from_millis(100))),
        timeout: Some(orch::time::duration(Duration::from_millis(100))),
        retries: Some(retries),
        start_period: None,
    }
}

#[tokio::test]
async fn a_server_answering_200_makes_the_container_healthy() {
    let (addr, _) = serve("HTTP/1.1 200 OK\r\n\r\n").await;
    let check = fast(
        Probe::Http(HttpProbe {
            port: u32::from(addr.port()),
            path: "/health".into(),
        }),
        3,
    );
    assert_eq!(
        first_change(check).await,
        (HealthState::Healthy, String::new())
    );
}

#[tokio::test]
async fn a_server_answering_500_makes_it_unhealthy_after_retries_failures() {
    let (addr, hits) = serve("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    let check = fast(
        Probe::Http(HttpProbe {
            port: u32::from(addr.port()),
            path: "/health".into(),
        }),
        3,
    );
    assert_eq!(
        first_change(check).await,
        (HealthState::Unhealthy, "HTTP 500 from /health".to_owned())
    );
    assert!(hits.load(Ordering::SeqCst) >= 3, "three probes at least");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and keeps every connection open without a word.
    let _server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let check = fast(
        Probe::Http(HttpProbe {
            port: u32::from(addr.port()),
            path: "/".into(),
        }),
        1,
    );
    assert_eq!(
        first_change(check).await,
        (HealthState::Unhealthy, "no answer within 100ms".to_owned())
    );
}

#[tokio::test]
async fn tcp_and_exec_probes() {
    let (addr, _) = serve("").await;
    let tcp = fast(
        Probe::Tcp(TcpProbe {
            port: u32::from(addr.port()),
        }),
        1,
    );
    assert_eq!(first_change(tcp).await.0, HealthState::Healthy);

    let exec = |command: &[&str]| {
        fast(
            Probe::Exec(orch::v1::ExecProbe {
                command: command.iter().map(|s| s.to_string()).collect(),
            }),
            1,
        )
    };
    assert_eq!(first_change(exec(&["true"])).await.0, HealthState::Healthy);
    assert_eq!(
        first_change(exec(&["exit", "3"])).await,
        (
            HealthState::Unhealthy,
            "command `exit 3` exited with code 3: oops".to_owned()
        )
    );
}

#[test]
fn status_lines() {
    assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(status_code(b"HTTP/1.0 500\r\n"), Some(500));
    assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
    assert_eq!(status_code(b"FTP 200 OK\r\n"), None);
    assert_eq!(status_code(b""), None);
}
