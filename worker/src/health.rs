//! Health checks: the worker's side. For each running attempt whose task has
//! a [`HealthCheck`], the executor starts a [`Monitor`] that probes the
//! container every interval and calls back on each change of health.
//!
//! It owns the probes (HTTP, TCP, exec) and the rules that turn their
//! results into a health ([`Tracker`]); it only observes. It neither reports
//! to the manager (the executor does, as a `running` status with `health`
//! set) nor stops anything: whether an unhealthy task is restarted is the
//! manager's decision.
//!
//! Probes run from the worker's machine: HTTP and TCP connect to the
//! container's own IP address (from [`Runtime::address`]) on the container
//! port, so a check needs no published port; exec probes run inside the
//! container through [`Runtime::exec`]. The HTTP probe is a hand-written
//! HTTP/1.0 GET that reads only the status line: a health endpoint needs no
//! more, and a full HTTP client would be a large dependency for it.
//!
//! Timing uses tokio's clock, so tests can pause it and advance it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use orch::health::Settings;
use orch::v1::{HealthCheck, HealthState, health_check::Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::runtime::Runtime;

/// Most bytes of an HTTP answer read while looking for its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Most characters of a failed command's output kept in the reason.
const MAX_REASON_OUTPUT: usize = 200;

/// What a probe found: `Ok` if healthy, else why not, for people (it becomes
/// the task's message), for example "HTTP 500 from /health".
pub type ProbeResult = Result<(), String>;

/// Turns probe results into a health, by Docker's rules: `starting` until
/// the first success; `healthy` after any success; `unhealthy` after
/// `retries` failures in a row. Failures before the start period has passed
/// do not count, unless a probe has already succeeded.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    health: HealthState,
    failures: u32,
    succeeded: bool,
}

impl Tracker {
    /// A tracker for a container that just started: `starting`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            health: HealthState::Starting,
            failures: 0,
            succeeded: false,
        }
    }

    /// The health now.
    pub fn health(&self) -> HealthState {
        self.health
    }

    /// Records a probe's result, `since_start` after the container started.
    /// Returns the new health if it changed.
    pub fn record(&mut self, since_start: Duration, result: &ProbeResult) -> Option<HealthState> {
        let next = match result {
            Ok(()) => {
                self.failures = 0;
                self.succeeded = true;
                HealthState::Healthy
            }
            Err(_) if !self.succeeded && since_start < self.settings.start_period => {
                return None;
            }
            Err(_) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.settings.retries {
                    HealthState::Unhealthy
                } else {
                    self.health
                }
            }
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

/// A running health monitor; dropping it stops the probes.
#[derive(Debug)]
pub struct Monitor(JoinHandle<()>);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes every `settings.interval` (the first one interval after the
/// start), each bounded by `settings.timeout`, and calls `changed` with each
/// new health and, for `unhealthy`, the last failure's reason (empty
/// otherwise). Runs until dropped.
pub async fn watch<P, Fut>(
    settings: Settings,
    mut probe: P,
    mut changed: impl FnMut(HealthState, String),
) where
    P: FnMut() -> Fut,
    Fut: Future<Output = ProbeResult>,
{
    let start = Instant::now();
    let mut tracker = Tracker::new(settings);
    let mut ticks = tokio::time::interval_at(start + settings.interval, settings.interval);
    // A probe that took long (up to its timeout) delays the next one rather
    // than causing a burst to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(settings.timeout, probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
        };
        if let Some(health) = tracker.record(start.elapsed(), &result) {
            let reason = match (health, result) {
                (HealthState::Unhealthy, Err(reason)) => reason,
                _ => String::new(),
            };
            changed(health, reason);
        }
    }
}

/// Starts monitoring container `container_id` with `check`; `changed` is
/// called on each change of health (see [`watch`]). Returns `None` if the
/// check has no probe (validation refuses those).
pub fn spawn<R: Runtime>(
    runtime: Arc<R>,
    container_id: String,
    check: &HealthCheck,
    changed: impl FnMut(HealthState, String) + Send + 'static,
) -> Option<Monitor> {
    let probe = check.probe.clone()?;
    let settings = orch::health::settings(check);
    // The address of a running container does not change: look it up once.
    let address: Arc<OnceLock<IpAddr>> = Arc::default();
    let probe_once = move || {
        let runtime = runtime.clone();
        let container_id = container_id.clone();
        let probe = probe.clone();
        let address = address.clone();
        async move { run(&*runtime, &container_id, &probe, &address).await }
    };
    Some(Monitor(tokio::spawn(watch(settings, probe_once, changed))))
}

/// Runs one probe against a container.
async fn run<R: Runtime>(
    runtime: &R,
    container_id: &str,
    probe: &Probe,
    address: &OnceLock<IpAddr>,
) -> ProbeResult {
    let ip = || async {
        if let Some(ip) = address.get() {
            return Ok(*ip);
        }
        match runtime.address(container_id).await {
            Ok(Some(ip)) => Ok(*address.get_or_init(|| ip)),
            Ok(None) => Err("the container has no IP address to probe".to_owned()),
            Err(e) => Err(format!("finding the container's address: {e}")),
        }
    };
    match probe {
        Probe::Http(http) => {
            let port = u16::try_from(http.port).map_err(|_| format!("bad port {}", http.port))?;
            http_get(SocketAddr::new(ip().await?, port), &http.path).await
        }
        Probe::Tcp(tcp) => {
            let port = u16::try_from(tcp.port).map_err(|_| format!("bad port {}", tcp.port))?;
            tcp_connect(SocketAddr::new(ip().await?, port)).await
        }
        Probe::Exec(exec) => match runtime.exec(container_id, &exec.command).await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => {
                let mut reason = format!(
                    "command `{}` exited with code {}",
                    exec.command.join(" "),
                    out.exit_code
                );
                if !out.output.is_empty() {
                    let output: String = out.output.chars().take(MAX_REASON_OUTPUT).collect();
                    reason.push_str(": ");
                    reason.push_str(&output);
                }
                Err(reason)
            }
            Err(e) => Err(format!("running the check command: {e}")),
        },
    }
}

/// An HTTP/1.0 GET of `path` (empty means "/") from `addr`: healthy if the
/// status is 200-399.
pub async fn http_get(addr: SocketAddr, path: &str) -> ProbeResult {
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // HTTP/1.0 and `Connection: close`: the server answers once and hangs
    // up, with no chunked encoding or keep-alive to handle.
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: orch-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer to GET {path} from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let code = status_code(&answer).ok_or_else(|| {
        let line = String::from_utf8_lossy(&answer);
        let line = line.lines().next().unwrap_or_default();
        if line.is_empty() {
            format!("no HTTP answer to GET {path} from {addr}")
        } else {
            format!("not an HTTP answer from {path}: {line:?}")
        }
    })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code} from {path}"))
    }
}

/// The status code of an HTTP answer's status line ("HTTP/1.1 200 OK").
fn status_code(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// A TCP connection to `addr`: healthy if it is accepted.
pub async fn tcp_connect(addr: SocketAddr) -> ProbeResult {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
