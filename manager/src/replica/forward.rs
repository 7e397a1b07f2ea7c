//! What a follower serves: every `Cluster` call forwarded to the leader
//! ([`Forward`]), every `Dispatcher` call refused with the leader's URL
//! ([`Refuse`]).
//!
//! A follower forwards each client connection's calls on a connection to
//! the leader of its own ([`ClientConnection`]), made at the connection's
//! first call and closed with it. The leader's limits per connection
//! (`Limits::requests_per_connection`, `Limits::streams_per_connection`)
//! then apply to each client as they would without a follower between
//! them: a follower that funnelled all its clients into one connection
//! would have them share one client's allowance (past 1,024 watches through
//! it, every further call through that follower would wait for a stream).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::store::etcd::election::LeaderRecord;

/// How long a follower waits for the leader to begin answering a forwarded
/// call (a stream's headers come at once; a unary call's with its answer).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An `UNAVAILABLE` saying where the leader is (with its URL in the
/// metadata), or that there is none yet.
pub(super) fn not_leading(leader: Option<&LeaderRecord>, doing: &str) -> tonic::Status {
    match leader {
        Some(leader) => naming(
            leader,
            format!(
                "this manager does not lead; {doing} the leader, {}",
                leader.manager.url
            ),
        ),
        None => tonic::Status::unavailable(
            "no manager leads yet: the managers are electing one (or etcd has no quorum); retry shortly",
        ),
    }
}

/// An `UNAVAILABLE` for a call that this follower could not forward: the
/// leader `what` (with its URL in the metadata, as [`not_leading`]'s).
fn not_forwarded(leader: &LeaderRecord, what: &str) -> tonic::Status {
    naming(
        leader,
        format!(
            "this manager does not lead, and the leader, {}, {what}",
            leader.manager.url
        ),
    )
}

/// `UNAVAILABLE` with `message` and the leader's URL in the metadata
/// [`orch::api::LEADER_METADATA`], where clients and workers look for it.
fn naming(leader: &LeaderRecord, message: String) -> tonic::Status {
    let mut status = tonic::Status::unavailable(message);
    if let Ok(value) = leader.manager.url.parse() {
        status
            .metadata_mut()
            .insert(orch::api::LEADER_METADATA, value);
    }
    status
}

/// A client's connection to a follower, and the channel its calls are
/// forwarded to the leader on. The follower serves these instead of bare
/// `TcpStream`s; its requests carry [`ClientConnectInfo`].
pub(super) struct ClientConnection {
    stream: TcpStream,
    upstream: Upstream,
}

impl ClientConnection {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            upstream: Upstream::default(),
        }
    }
}

/// The connection information of a [`ClientConnection`]: the peer, as a
/// `TcpStream`'s, and the connection's [`Upstream`]. Every request holds a
/// clone, so the channel to the leader lives until the client's connection
/// and its last forwarded call have ended.
#[derive(Clone)]
pub struct ClientConnectInfo {
    tcp: TcpConnectInfo,
    upstream: Upstream,
}

impl ClientConnectInfo {
    /// The request's, served over TLS or not.
    fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Self>>()
                .map(TlsConnectInfo::get_ref)
        })
    }
}

/// The address of the client whose connection to a follower `extensions`
/// came on, if they came on one (the limits count requests per peer).
pub fn peer(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    ClientConnectInfo::of(extensions).and_then(|info| info.tcp.remote_addr())
}

impl Connected for ClientConnection {
    type ConnectInfo = ClientConnectInfo;

    fn connect_info(&self) -> ClientConnectInfo {
        ClientConnectInfo {
            tcp: self.stream.connect_info(),
            upstream: self.upstream.clone(),
        }
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One client connection's channel to the leader, by the leader's URL:
/// made (lazily) at the first call, and again for a new leader.
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<Option<(String, Channel)>>>);

impl Upstream {
    fn channel_to(
        &self,
        url: &str,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Channel, tonic::Status> {
        let mut cached = self
            .0
            .lock()
            .map_err(|_| tonic::Status::internal("the forwarding channel's lock was poisoned"))?;
        if let Some((cached_url, channel)) = cached.as_ref()
            && cached_url == url
        {
            return Ok(channel.clone());
        }
        let bad = |e: tonic::transport::Error| {
            tonic::Status::unavailable(format!("cannot reach the leader at {url}: {e}"))
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(bad)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(3));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = endpoint.connect_lazy();
        *cached = Some((url.to_owned(), channel.clone()));
        Ok(channel)
    }
}

/// A follower's `Cluster`: every call forwarded to the leader as it came,
/// on its client connection's own channel.
#[derive(Clone)]
pub(super) struct Forward {
    pub(super) leader: watch::Receiver<Option<LeaderRecord>>,
    pub(super) tls: Option<ClientTlsConfig>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let leader = self.leader.borrow().clone();
        // Every connection a follower serves is a `ClientConnection`.
        let to = match (leader, ClientConnectInfo::of(request.extensions())) {
            (None, _) => Err(not_leading(None, "call")),
            (Some(_), None) => Err(tonic::Status::internal(
                "a call reached the follower without its connection's information",
            )),
            (Some(leader), Some(info)) => info
                .upstream
                .channel_to(&leader.manager.url, self.tls.as_ref())
                .map(|channel| (leader, channel)),
        };
        Box::pin(async move {
            let (leader, channel) = match to {
                Ok(to) => to,
                Err(status) => return Ok(status.into_http()),
            };
            let forwarded = tower::ServiceExt::oneshot(channel, request);
            match tokio::time::timeout(FORWARD_TIMEOUT, forwarded).await {
                Ok(Ok(response)) => Ok(response),
                Err(_) => Ok(not_forwarded(
                    &leader,
                    &format!("gave no answer within {FORWARD_TIMEOUT:?}"),
                )
                .into_http()),
                Ok(Err(e)) => {
                    Ok(not_forwarded(&leader, &format!("could not be reached ({e})")).into_http())
                }
            }
        })
    }
}

impl NamedService for Forward {
    const NAME: &'static str = "orch.v1.Cluster";
}

/// A follower's `Dispatcher`: every call refused with the leader's URL.
#[derive(Clone)]
pub(super) struct Refuse {
    pub(super) leader: watch::Receiver<Option<LeaderRecord>>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Refuse {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let leader = self.leader.borrow().clone();
        std::future::ready(Ok(
            not_leading(leader.as_ref(), "open the session with").into_http()
        ))
    }
}

impl NamedService for Refuse {
    const NAME: &'static str = "orch.v1.Dispatcher";
}
