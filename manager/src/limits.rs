//! The manager's limits on load: how large a message may be, how many
//! requests one connection may have in flight, how long a request may take,
//! how fast workers may register, how many pushes a session may have
//! waiting, and how large a reply or a session message may grow. The limits
//! on each field of a request are the core's (`orch::limits`), enforced by
//! `orch::validate`.
//!
//! [`Guard`] is the tower layer that `run` puts in front of every service:
//! per connection it refuses a request beyond [`Limits::requests_per_connection`]
//! at once (`RESOURCE_EXHAUSTED`, rather than queue it), ends a handler that
//! takes longer than [`Limits::request_timeout`] (`DEADLINE_EXCEEDED`), and
//! answers a message over [`MAX_MESSAGE_BYTES`] with `RESOURCE_EXHAUSTED`
//! naming the limit (tonic's own answer is `OUT_OF_RANGE`). The timeout
//! covers a handler until it answers: a streaming call (`Session`,
//! `WatchEvents`) has answered once its stream begins, and the stream is not
//! cut. [`TokenBucket`] limits `Register`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use orch::v1::cluster_server::ClusterServer;
use orch::v1::dispatcher_server::DispatcherServer;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::layer::util::{Identity, Stack};

/// The largest message the manager decodes or encodes, per service: 4 MiB,
/// gRPC's usual default, made explicit. Every request the manager takes fits
/// in it (a spec is at most `orch::limits::MAX_SPEC_BYTES`), and every reply
/// is kept under it: task lists are paged by [`MAX_PAGE_BYTES`], a session's
/// messages are cut at [`MAX_CHUNK_BYTES`].
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// A page of `ListTasks` or `ListServices` ends once it holds this many
/// encoded bytes; with one more object of at most a spec and its status it
/// stays under [`MAX_MESSAGE_BYTES`].
pub const MAX_PAGE_BYTES: usize = 3 << 20;
/// The dispatcher cuts the assignments of one push into messages of about
/// this many bytes (always at least one assignment each; one is at most a
/// spec, `orch::limits::MAX_SPEC_BYTES`, and its ids).
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// How many pushes a session may have waiting to be sent. The engine never
/// waits on a session: one whose worker reads too slowly to keep below this
/// is ended, and the worker gets a full set when it opens the next one.
pub const SESSION_BUFFER: usize = 65_536;

/// The limits on load that a deployment may tune; see the module
/// documentation. The defaults suit a cluster of thousands of nodes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a handler may take before its caller gets
    /// `DEADLINE_EXCEEDED`. Longer than any wait a handler makes on purpose
    /// (a session's `open` message: 10 s).
    pub request_timeout: Duration,
    /// How many requests one connection may have in flight (waiting for
    /// their answer); one more is refused with `RESOURCE_EXHAUSTED`.
    pub requests_per_connection: usize,
    /// How many HTTP/2 streams one connection may have open, streaming calls
    /// included (the client waits for a free one).
    pub streams_per_connection: u32,
    /// `Register` calls per second, over the whole manager, on average.
    pub registers_per_second: u32,
    /// How many `Register` calls may come at once before the rate applies.
    pub register_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            requests_per_connection: 256,
            streams_per_connection: 1024,
            registers_per_second: 100,
            register_burst: 1000,
        }
    }
}

/// The server with the limits that apply to every connection.
pub fn server(limits: &Limits) -> Server<Stack<GuardLayer, Identity>> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.streams_per_connection))
        .layer(GuardLayer { limits: *limits })
}

/// The `Cluster` service, decoding and encoding messages up to [`MAX_MESSAGE_BYTES`].
pub fn cluster(api: crate::api::ClusterApi) -> ClusterServer<crate::api::ClusterApi> {
    ClusterServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `Dispatcher` service, decoding and encoding messages up to [`MAX_MESSAGE_BYTES`].
pub fn dispatcher(
    api: crate::dispatcher::DispatcherApi,
) -> DispatcherServer<crate::dispatcher::DispatcherApi> {
    DispatcherServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Makes the [`Guard`] of the server. Tonic applies a server's layer once
/// and clones the service it made for every connection, so the guard cannot
/// hold a connection's count itself: it keeps one per connection, by the
/// peer's address, in [`InFlight`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    limits: Limits,
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            in_flight: Arc::new(InFlight::default()),
            limits: self.limits,
        }
    }
}

/// The server's guard; see the module documentation.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    /// Every connection's requests in flight.
    in_flight: Arc<InFlight>,
    limits: Limits,
}

/// The requests in flight on each connection, as a semaphore per peer
/// address (a TCP connection's is its own while it is open). An entry lives
/// while its connection has a request in flight: the permits hold the
/// semaphore, the map only a weak reference, and dead entries are swept as
/// the map grows. Requests without connection information (in tests) share
/// one entry.
#[derive(Debug, Default)]
pub struct InFlight {
    by_peer: std::sync::Mutex<Peers>,
}

#[derive(Debug, Default)]
struct Peers {
    semaphores: HashMap<Option<SocketAddr>, Weak<Semaphore>>,
    /// How many entries were left by the last sweep.
    swept_to: usize,
}

impl InFlight {
    /// The semaphore of `peer`'s connection, made with `permits` if it has
    /// no request in flight.
    fn of(&self, peer: Option<SocketAddr>, permits: usize) -> Arc<Semaphore> {
        // A map of weak references is whole whatever panicked while it was
        // held, so a poisoned lock is taken as it is.
        let mut peers = self
            .by_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(semaphore) = peers.semaphores.get(&peer).and_then(Weak::upgrade) {
            return semaphore;
        }
        let semaphore = Arc::new(Semaphore::new(permits));
        peers.semaphores.insert(peer, Arc::downgrade(&semaphore));
        if peers.semaphores.len() > 2 * peers.swept_to.max(64) {
            peers.semaphores.retain(|_, s| s.strong_count() > 0);
            peers.swept_to = peers.semaphores.len();
        }
        semaphore
    }
}

/// The address of the peer a request came from, over TLS or not.
fn peer<R>(request: &http::Request<R>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .or_else(|| follower_peer(extensions))
}

/// The peer of a request to a follower, whose connections carry more.
#[cfg(feature = "etcd")]
fn follower_peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    crate::replica::peer(extensions)
}

#[cfg(not(feature = "etcd"))]
fn follower_peer(_: &http::Extensions) -> Option<SocketAddr> {
    None
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R, B> tower::Service<http::Request<R>> for Guard<S>
where
    S: tower::Service<http::Request<R>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<R>) -> Self::Future {
        let in_flight = self
            .in_flight
            .of(peer(&request), self.limits.requests_per_connection);
        let Ok(permit) = in_flight.try_acquire_owned() else {
            let status = Status::resource_exhausted(format!(
                "more than {} requests in flight on one connection; wait for answers before sending more",
                self.limits.requests_per_connection
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let method = request.uri().path().to_owned();
        let timeout = self.limits.request_timeout;
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let answer = std::mem::replace(&mut self.inner, clone).call(request);
        Box::pin(async move {
            let _permit = permit;
            // A worker's SendLogs answers only once the output it streams
            // ends, which a followed task's may do after days.
            if method == UNTIMED {
                return answer.await.map(|r| over_size(r, &method));
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(response)) => Ok(over_size(response, &method)),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "{method} took longer than the manager's limit of {} s per request",
                    timeout.as_secs_f64()
                ))
                .into_http()),
            }
        })
    }
}

/// The one call the request timeout does not apply to: it is answered
/// when the stream it reads ends.
const UNTIMED: &str = "/orch.v1.Dispatcher/SendLogs";

/// Tonic answers a request message over the limit with `OUT_OF_RANGE`
/// ("decoded message length too large: found N bytes, the limit is: M
/// bytes"); this turns it into `RESOURCE_EXHAUSTED` naming the limit. Any
/// other answer is left as it is.
fn over_size<B: Default>(response: http::Response<B>, method: &str) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let message = status.message();
    if !(status.code() == tonic::Code::OutOfRange
        && message.contains("decoded message length too large"))
    {
        return response;
    }
    let found = message
        .split_once("found ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or("?");
    Status::resource_exhausted(format!(
        "the request to {method} is {found} bytes, more than the limit of {MAX_MESSAGE_BYTES} bytes ({}) per message",
        orch::limits::size(MAX_MESSAGE_BYTES)
    ))
    .into_http()
}

/// The first page of `items`: at most `limit` of them, and none more once
/// the page holds `max_bytes` encoded (so always at least one, and at most
/// `max_bytes` and one more). Also whether more follow.
pub fn page<'a, T>(
    items: impl Iterator<Item = &'a T>,
    limit: usize,
    max_bytes: usize,
) -> (Vec<T>, bool)
where
    T: prost::Message + Clone + 'a,
{
    let mut out = Vec::new();
    let mut bytes = 0;
    for item in items {
        if out.len() >= limit || (!out.is_empty() && bytes >= max_bytes) {
            return (out, true);
        }
        bytes += item.encoded_len();
        out.push(item.clone());
    }
    (out, false)
}

/// A token bucket: `burst` calls at once, then `per_second` on average.
/// The caller hands in the time, read from the engine's clock.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token at `now`.
    ///
    /// # Errors
    /// If there is none: how long until there is.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.per_second,
        ))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    type Response = http::Response<String>;

    fn limits() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(5),
            requests_per_connection: 2,
            ..Limits::default()
        }
    }

    fn request() -> http::Request<()> {
        http::Request::builder()
            .uri("/orch.v1.Cluster/ListNodes")
            .body(())
            .unwrap()
    }

    fn status(response: &Response) -> (Code, String) {
        let status = Status::from_header_map(response.headers()).unwrap();
        (status.code(), status.message().to_owned())
    }

    /// A service whose answers wait until `release` is told.
    fn waiting(
        release: tokio::sync::watch::Receiver<bool>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_req: http::Request<()>| {
            let mut release = release.clone();
            async move {
                let _ = release.wait_for(|r| *r).await;
                Ok(http::Response::new("answer".to_owned()))
            }
        })
    }

    #[tokio::test]
    async fn a_request_beyond_the_connections_limit_is_refused_at_once() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut guard = GuardLayer { limits: limits() }.layer(waiting(rx));
        let first = guard.ready().await.unwrap().call(request());
        let second = guard.ready().await.unwrap().call(request());
        let refused = guard.ready().await.unwrap().call(request()).await.unwrap();
        let (code, message) = status(&refused);
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            message.contains("more than 2 requests in flight"),
            "{message}"
        );
        tx.send(true).unwrap();
        assert_eq!(first.await.unwrap().body(), "answer");
        assert_eq!(second.await.unwrap().body(), "answer");
        // Answered, they free their places.
        let again = guard.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(again.body(), "answer");
    }

    /// A request from the peer at `port`, as tonic hands it on.
    fn request_from(port: u16) -> http::Request<()> {
        let mut request = request();
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        });
        request
    }

    /// Tonic layers a server once and clones the result for each
    /// connection: the limit must still be each connection's.
    #[tokio::test]
    async fn each_connection_has_its_own_limit() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let server = GuardLayer { limits: limits() }.layer(waiting(rx));
        let mut one = server.clone();
        let a = one.ready().await.unwrap().call(request_from(1000));
        let b = one.ready().await.unwrap().call(request_from(1000));
        let refused = one.ready().await.unwrap().call(request_from(1000));
        let (code, _) = status(&refused.await.unwrap());
        assert_eq!(code, Code::ResourceExhausted);
        // Another connection, through another clone, is not refused.
        let mut other = server.clone();
        let mut third = Box::pin(other.ready().await.unwrap().call(request_from(2000)));
        assert!(futures::poll!(&mut third).is_pending());
        tx.send(true).unwrap();
        assert_eq!(third.await.unwrap().body(), "answer");
        assert_eq!(a.await.unwrap().body(), "answer");
        assert_eq!(b.await.unwrap().body(), "answer");
        // Done, the first connection has its places back.
        let again = one.ready().await.unwrap().call(request_from(1000));
        assert_eq!(again.await.unwrap().body(), "answer");
    }

    /// Entries of connections with nothing in flight do not pile up.
    #[test]
    fn the_counts_of_idle_connections_are_swept() {
        let in_flight = InFlight::default();
        let busy = in_flight.of(Some(SocketAddr::from(([127, 0, 0, 1], 1))), 2);
        for port in 2..10_000 {
            drop(in_flight.of(Some(SocketAddr::from(([127, 0, 0, 1], port))), 2));
        }
        let peers = in_flight.by_peer.lock().unwrap();
        assert!(peers.semaphores.len() <= 2 * peers.swept_to.max(64) + 1);
        assert!(peers.semaphores.len() < 200, "{}", peers.semaphores.len());
        assert!(
            peers
                .semaphores
                .get(&Some(SocketAddr::from(([127, 0, 0, 1], 1))))
                .and_then(Weak::upgrade)
                .is_some_and(|s| Arc::ptr_eq(&s, &busy)),
            "a busy connection keeps its count"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_ends_at_the_timeout_naming_it() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let guard = GuardLayer { limits: limits() }.layer(waiting(rx));
        let started = Instant::now();
        let response = guard.oneshot(request()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let (code, message) = status(&response);
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(
            message,
            "/orch.v1.Cluster/ListNodes took longer than the manager's limit of 5 s per request"
        );
    }

    /// A response body that arrives later, as a stream's messages do.
    #[derive(Default)]
    struct Later(Option<tokio::sync::oneshot::Receiver<String>>);

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_began_in_time_is_not_cut_by_the_timeout() {
        // The handler answers at once with a body that comes long after the
        // timeout, as a session's or a watch's messages do.
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            let (tx, rx) = tokio::sync::oneshot::channel::<String>();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let _ = tx.send("late message".to_owned());
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(Later(Some(rx))))
        });
        let guard = GuardLayer { limits: limits() }.layer(inner);
        let started = Instant::now();
        let response = guard.oneshot(request()).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
        let body = response.into_body().0.unwrap().await.unwrap();
        assert_eq!(body, "late message");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn an_oversized_message_is_resource_exhausted_naming_the_limit() {
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            let status = Status::out_of_range(
                "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
            );
            Ok::<_, std::convert::Infallible>(status.into_http::<String>())
        });
        let response = GuardLayer { limits: limits() }
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap();
        let (code, message) = status(&response);
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(
            message,
            "the request to /orch.v1.Cluster/ListNodes is 5000000 bytes, more than the limit of 4194304 bytes (4 MiB) per message"
        );
        // Any other status passes unchanged.
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(Status::out_of_range("other").into_http::<String>())
        });
        let response = GuardLayer { limits: limits() }
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(status(&response), (Code::OutOfRange, "other".to_owned()));
    }

    #[test]
    fn a_page_ends_at_its_count_or_its_bytes() {
        let task = |n: usize| orch::v1::Task {
            id: n.to_string(),
            message: "m".repeat(1000),
            ..Default::default()
        };
        let tasks: Vec<_> = (0..10).map(task).collect();
        let ids = |p: &[orch::v1::Task]| p.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        let (p, more) = page(tasks.iter(), 3, usize::MAX);
        assert_eq!(
            (ids(&p), more),
            (vec!["0".into(), "1".into(), "2".into()], true)
        );
        let (p, more) = page(tasks.iter(), 100, usize::MAX);
        assert_eq!((p.len(), more), (10, false));
        let (p, more) = page(tasks.iter(), 10, usize::MAX);
        assert_eq!((p.len(), more), (10, false));
        // Each is just over 1000 bytes: the page stops once it has 2500.
        let (p, more) = page(tasks.iter(), 100, 2500);
        assert_eq!((p.len(), more), (3, true));
        // One larger than the budget still makes a page.
        let (p, more) = page(tasks.iter(), 100, 10);
        assert_eq!((p.len(), more), (1, true));
        let (p, more) = page(std::iter::empty::<&orch::v1::Task>(), 100, 10);
        assert_eq!((p.len(), more), (0, false));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(bucket.take(start + Duration::from_millis(50)).is_err());
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        // A long quiet fills it up to the burst, no more.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }
}
