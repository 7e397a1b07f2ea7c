//! The metrics endpoint of the manager, the worker and `orchctl dev`: an
//! HTTP server, on its own port (never the gRPC one), that answers
//! `GET /metrics` with the registries it was given, and 404 to every other
//! path. A client that accepts OpenMetrics (Prometheus itself) gets the
//! OpenMetrics text that `prometheus_client` writes; any other (curl,
//! `promtool check metrics`) gets the same metrics in the Prometheus text
//! format 0.0.4 ([`prometheus_text`]), whose parsers want a counter's
//! `# TYPE` to name its `_total` sample.
//!
//! It owns the socket and the HTTP side only: which metrics exist is for the
//! crate that registers them (`orch_manager::metrics`,
//! `orch_worker::telemetry`). A scrape only reads the metrics themselves, so it never waits
//! on the manager's engine lock. [`Endpoint::bind`] is separate from
//! [`Endpoint::serve`] so that an address in use is a start-up error, before
//! the process says it runs; `serve` stops with the shutdown future it is
//! handed, as the gRPC server does, and drops the connections still open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use prometheus_client;

/// The path the metrics are served at.
pub const PATH: &str = "/metrics";

/// The content type of a scrape's answer: OpenMetrics text 1.0.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format, for other clients.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most connections served at once; a further one is closed at once.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it could not be bound.
    #[source]
    pub source: std::io::Error,
}

/// A bound metrics port, to [`serve`](Endpoint::serve).
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Binds the metrics port.
    ///
    /// # Errors
    /// [`BindError`], naming the address, if it cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        TcpListener::bind(addr)
            .await
            .map(|listener| Self { listener })
            .map_err(|source| BindError { addr, source })
    }

    /// The address the port is bound to (the port the system chose for port 0).
    ///
    /// # Errors
    /// If the socket cannot say.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `registries`, one after the other in one exposition, until
    /// `shutdown` resolves; then closes the port and every open connection.
    pub async fn serve(
        self,
        registries: Vec<Arc<Registry>>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let registries: Arc<[Arc<Registry>]> = registries.into();
        self.serve_with(Arc::new(move || registries.to_vec()), shutdown)
            .await;
    }

    /// As [`serve`](Endpoint::serve), asking `registries` at every scrape
    /// which to render: for a process whose metrics come and go (a manager
    /// on etcd serves its term's while it leads).
    pub async fn serve_with(
        self,
        registries: Arc<dyn Fn() -> Vec<Arc<Registry>> + Send + Sync>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let addr = self.listener.local_addr().ok();
        tracing::info!(?addr, "metrics listening");
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next() => continue,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: the next accept may work.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if connections.len() >= MAX_CONNECTIONS {
                continue;
            }
            let registries = registries.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = answer(&req, &registries());
                    async move { Ok::<_, Infallible>(answer) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics: connection ended");
                }
            });
        }
        tracing::info!(?addr, "metrics stopped");
        // Dropping the set aborts the connections still open.
    }
}

/// The exposition of `registries`: each one's metrics, then the `# EOF`
/// that ends an OpenMetrics message.
pub fn render(registries: &[Arc<Registry>]) -> String {
    let mut text = String::new();
    let encoded = registries
        .iter()
        .try_for_each(|r| prometheus_client::encoding::text::encode_registry(&mut text, r))
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    if encoded.is_err() {
        // Writing to a String does not fail; a metric's encoder could.
        tracing::error!("metrics: a registry failed to encode");
    }
    text
}

/// `OpenMetrics` text, as [`render`] writes it, in the Prometheus text
/// format 0.0.4: a counter's `# HELP` and `# TYPE` name its `_total`
/// sample, and the `# UNIT` and `# EOF` lines (comments there) go. Samples
/// are written the same in both formats.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match comment.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, rest))) if counters.contains(name) => {
                out.push_str(p);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Why a [`scrape`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The connection failed.
    #[error("scraping {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint answered, but not 200 with a body.
    #[error("scraping {addr}: the answer was {head:?}")]
    Status {
        /// The endpoint.
        addr: SocketAddr,
        /// The answer's status line.
        head: String,
    },
}

/// Fetches `GET /metrics` from `addr` once, over HTTP/1.1 on a fresh
/// connection, and returns the body: how the tests (and anyone without a
/// Prometheus at hand) read an endpoint.
///
/// # Errors
/// [`ScrapeError`] if the connection fails or the answer is not a 200.
pub async fn scrape(addr: SocketAddr) -> Result<String, ScrapeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |source| ScrapeError::Io { addr, source };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.map_err(io)?;
    let head = answer.lines().next().unwrap_or_default().to_owned();
    match answer.split_once("\r\n\r\n") {
        Some((_, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_owned()),
        _ => Err(ScrapeError::Status { addr, head }),
    }
}

/// The answer to one request.
fn answer<B>(req: &Request<B>, registries: &[Arc<Registry>]) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        });
    let (text, kind) = if openmetrics {
        (render(registries), OPENMETRICS)
    } else {
        (prometheus_text(&render(registries)), PROMETHEUS_TEXT)
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    r
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 request over a fresh connection; the whole answer.
    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        get_accepting(addr, method, path, "*/*").await
    }

    async fn get_accepting(addr: SocketAddr, method: &str, path: &str, accept: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_every_registry_at_metrics_and_404_elsewhere_until_shutdown() {
        let (a, b) = (Counter::<u64>::default(), Counter::<u64>::default());
        let mut first = Registry::with_prefix("first");
        first.register("things", "Things", a.clone());
        let mut second = Registry::with_prefix("second");
        second.register("others", "Others", b.clone());
        a.inc_by(3);
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(endpoint.serve(vec![first.into(), second.into()], async {
            let _ = stopped.await;
        }));

        // Prometheus asks for OpenMetrics.
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let got = get_accepting(addr, "GET", "/metrics", accept).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains(OPENMETRICS), "{got}");
        assert!(got.contains("\n# TYPE first_things counter\n"), "{got}");
        assert!(got.contains("\nfirst_things_total 3\n"), "{got}");
        assert!(got.contains("\nsecond_others_total 0\n"), "{got}");
        assert!(got.ends_with("# EOF\n"), "one EOF, at the end: {got}");
        assert_eq!(got.matches("# EOF").count(), 1, "{got}");
        b.inc();
        // Anyone else gets the Prometheus text format.
        let got = get(addr, "GET", "/metrics").await;
        assert!(got.contains(PROMETHEUS_TEXT), "{got}");
        assert!(
            got.contains("\n# TYPE first_things_total counter\nfirst_things_total 3\n"),
            "{got}"
        );
        assert!(!got.contains("# EOF"), "{got}");
        let body = scrape(addr).await.unwrap();
        assert!(
            body.starts_with("# HELP first_things_total Things.\n"),
            "{body}"
        );
        assert!(body.contains("\nsecond_others_total 1\n"), "{body}");
        assert!(
            get(addr, "GET", "/metrics?x=1")
                .await
                .contains("\nsecond_others_total 1\n")
        );
        assert!(get(addr, "GET", "/").await.starts_with("HTTP/1.1 404 "));
        assert!(
            get(addr, "GET", "/metricsx")
                .await
                .starts_with("HTTP/1.1 404 ")
        );
        assert!(
            get(addr, "POST", "/metrics")
                .await
                .starts_with("HTTP/1.1 405 ")
        );

        // A connection left open does not hold up the shutdown.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples_and_drops_units_and_eof() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
            a_requests_total{code=\"ok\"} 2\n\
            # HELP a_wait_seconds Waits.\n# TYPE a_wait_seconds histogram\n# UNIT a_wait_seconds seconds\n\
            a_wait_seconds_sum 0.5\na_wait_seconds_count 1\na_wait_seconds_bucket{le=\"+Inf\"} 1\n\
            # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
            a_requests_total{code=\"ok\"} 2\n\
            # HELP a_wait_seconds Waits.\n# TYPE a_wait_seconds histogram\n\
            a_wait_seconds_sum 0.5\na_wait_seconds_count 1\na_wait_seconds_bucket{le=\"+Inf\"} 1\n\
            # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_it() {
        let taken = Endpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Endpoint::bind(addr).await.unwrap_err();
        assert_eq!(err.addr, addr);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot serve metrics on {addr}: ")),
            "{err}"
        );
    }
}
