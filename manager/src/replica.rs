//! Several managers on one etcd store (the `etcd` feature): each one is a
//! replica that follows until it is elected, then leads until its term ends,
//! then follows again, on the same port all along.
//!
//! - **Following**, a manager serves its port with what needs no state:
//!   `Cluster` calls are forwarded to the leader as they are (the leader
//!   authenticates them; streams included), so a client may use any
//!   manager; `Dispatcher` calls are refused with `UNAVAILABLE` and the
//!   leader's URL in the metadata [`orch::api::LEADER_METADATA`], so that a
//!   worker opens its session with the leader itself. While no leader is
//!   elected, both are `UNAVAILABLE`, saying so.
//! - **Leading** is a whole manager as [`crate::start`] makes one, over the
//!   shared store, with every commit fenced by the term
//!   ([`store::etcd::Fence`]): it loads the state that the previous leader
//!   committed, gives every worker `Config::failover_grace` to come back
//!   before declaring its node down, and serves until the term is over
//!   ([`Leadership::lost`]) or the manager is stopped.
//!
//! Only the leader schedules, holds sessions and writes; a follower holds
//! nothing but its lease and its record in `ListManagers`.
//!
//! The metrics port (`Config::metrics_listen`) is the replica's, bound at
//! [`start`] and served for its whole life: [`ReplicaMetrics`] (whether it
//! leads, how many terms it took up) always, and the term's manager's
//! metrics while it leads.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::Ca;
use crate::metrics::ReplicaMetrics;
use crate::store::etcd::EtcdStore;
use crate::store::etcd::election::{Candidate, LeaderRecord, Leadership};
use crate::{AdminToken, ClientAccess, Config, ServeError, store};

/// A manager on etcd that has connected to its store and read the cluster's
/// CA: [`start`], then [`Replica::serve`].
pub struct Replica {
    config: Config,
    store: Arc<EtcdStore>,
    /// The cluster's CA, certificate and key (PEM): each term makes its own
    /// `Ca` of them.
    ca: (String, String),
    listener: Arc<TcpListener>,
    candidate: Candidate,
    /// The follower's TLS settings (the leader makes its own at each term).
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// The metrics port, served from [`Replica::serve`] on.
    metrics_endpoint: Option<orch_metrics::Endpoint>,
    metrics: ReplicaMetrics,
    /// The registry of the term's manager, while this one leads.
    term_metrics: Arc<Mutex<Option<Arc<prometheus_client::registry::Registry>>>>,
}

/// Connects to the etcd store, checks that it holds this manager's cluster
/// (or founds it) and reads the CA: everything that can fail at start.
///
/// # Errors
/// If etcd does not answer, holds another cluster, or the CA is unusable.
pub async fn start(config: Config, listener: TcpListener) -> Result<Replica, ServeError> {
    let Some(url) = config.etcd.clone() else {
        return Err(ServeError::Cluster(
            "a replica needs an etcd store (--store etcd://...)".into(),
        ));
    };
    let (store, ca) = crate::open_etcd(&config, &url).await?;
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(orch_metrics::Endpoint::bind(addr).await?),
        None => None,
    };
    let addr = listener.local_addr().ok();
    let tls = crate::server_tls(&config, &ca, addr, std::time::SystemTime::now())?;
    let url = advertised_url(&config, addr);
    let candidate = Candidate::new(store.clone(), url, config.leader_lease);
    Ok(Replica {
        config,
        store,
        ca: (ca.cert_pem().to_owned(), ca.key_pem()),
        listener: Arc::new(listener),
        candidate,
        tls,
        metrics_endpoint,
        metrics: ReplicaMetrics::new(),
        term_metrics: Arc::default(),
    })
}

/// The URL the others reach this manager at: the first `--advertise` name,
/// or the listen address (loopback for an unspecified one), on its port.
fn advertised_url(config: &Config, addr: Option<std::net::SocketAddr>) -> String {
    let scheme = if config.tls { "https" } else { "http" };
    let port = addr.map_or(7070, |a| a.port());
    let host = match (config.advertise.first(), addr) {
        (Some(name), _) => name.clone(),
        (None, Some(a)) if !a.ip().is_unspecified() => a.ip().to_string(),
        _ => "127.0.0.1".into(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{port}")
}

impl Replica {
    /// The URL the other managers, workers and clients reach this one at.
    pub fn url(&self) -> &str {
        &self.candidate.me().url
    }

    /// This manager's id in `ListManagers` (new at every start).
    pub fn id(&self) -> &str {
        &self.candidate.me().id
    }

    /// Where `Config::metrics_listen` serves the metrics, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .and_then(|e| e.local_addr().ok())
    }

    /// Follows and leads in turn until `shutdown` resolves. `on_lead` is
    /// called at the start of every term with how a local client reaches
    /// the manager (with an admin token if that term made one).
    ///
    /// # Errors
    /// If a leader's server fails in a way that is no term's end.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut on_lead: impl FnMut(&ClientAccess) + Send,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
        if let Some(endpoint) = self.metrics_endpoint.take() {
            let (own, term) = (self.metrics.registry(), self.term_metrics.clone());
            let registries = Arc::new(move || {
                let mut all = vec![own.clone()];
                if let Ok(term) = term.lock() {
                    all.extend(term.iter().cloned());
                }
                all
            });
            tokio::spawn(endpoint.serve_with(registries, stopped(stop.clone())));
        }
        let (seen_tx, seen) = watch::channel(None::<LeaderRecord>);
        let forward_tls = self.config.tls.then(|| {
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&self.ca.0))
                .domain_name(orch::auth::MANAGER_SERVER_NAME)
        });
        let mut admin_token = self.config.admin_token;
        loop {
            let (end_following, following_ended) = tokio::sync::oneshot::channel::<()>();
            let follower = self.follow(seen.clone(), forward_tls.clone(), following_ended)?;
            let leadership = tokio::select! {
                leadership = self.candidate.campaign(&seen_tx) => leadership,
                () = stopped(stop.clone()) => {
                    let _ = end_following.send(());
                    // A stream forwarded to the leader (`orchctl events`)
                    // would hold a graceful shutdown open: give the others
                    // a moment to end, then go.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), follower).await;
                    return Ok(());
                }
            };
            // Stop accepting as a follower; its forwarded streams end as the
            // old leader's connections do.
            let _ = end_following.send(());
            drop(follower);
            self.lead(leadership, admin_token, stop.clone(), &mut on_lead)
                .await;
            // Later terms make no admin token unless the cluster has none.
            admin_token = AdminToken::FirstStart;
            if *stop.borrow() {
                return Ok(());
            }
        }
    }

    /// Serves the port as a follower until `ended` resolves.
    fn follow(
        &self,
        seen: watch::Receiver<Option<LeaderRecord>>,
        forward_tls: Option<ClientTlsConfig>,
        ended: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let mut builder = crate::limits::server(&self.config.limits);
        if let Some(tls) = self.tls.clone() {
            builder = builder.tls_config(tls)?;
        }
        let (_health_reporter, health) = tonic_health::server::health_reporter();
        let router = builder
            .tcp_nodelay(true)
            .add_service(health)
            .add_service(Forward {
                leader: seen.clone(),
                tls: forward_tls,
                channel: Arc::default(),
            })
            .add_service(Refuse { leader: seen });
        let incoming = crate::incoming(self.listener.clone());
        Ok(tokio::spawn(async move {
            let shutdown = async {
                let _ = ended.await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(error = %e, "serving as a follower");
            }
        }))
    }

    /// One term: a whole manager over the fenced store, until the term is
    /// over or the manager is stopped.
    async fn lead(
        &self,
        mut leadership: Leadership,
        admin_token: AdminToken,
        stop: watch::Receiver<bool>,
        on_lead: &mut (impl FnMut(&ClientAccess) + Send),
    ) {
        let term = leadership.fence.term;
        self.store.set_fence(Some(leadership.fence.clone()));
        let config = Config {
            admin_token,
            // The replica serves the metrics port, the term's among them.
            metrics_listen: None,
            ..self.config.clone()
        };
        let store: Arc<dyn store::Store> = self.store.clone();
        let started = match Ca::from_pem(&self.ca.0, &self.ca.1) {
            Ok(ca) => {
                let managers: Arc<dyn crate::Managers> = Arc::new(OnEtcd(self.store.clone()));
                crate::start_inner(
                    config,
                    store,
                    Some(ca),
                    Some(managers),
                    self.listener.clone(),
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        let manager = match started {
            Ok(manager) => manager,
            Err(e) => {
                tracing::error!(term, error = %e, "could not take up the term; stepping down");
                leadership.resign().await;
                // Let another manager try before this one does again.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                return;
            }
        };
        manager.hold_nodes(self.config.failover_grace);
        self.set_term_metrics(Some(manager.registry()));
        self.metrics.terms.inc();
        on_lead(manager.client());
        // The leader keeps etcd's history from growing, for its term.
        let compacting = {
            let store = self.store.clone();
            tokio::spawn(async move {
                store::etcd::history::compact_every(&store, store::etcd::history::COMPACT_EVERY)
                    .await;
            })
        };
        let (over_tx, over) = tokio::sync::oneshot::channel::<()>();
        let watch_term = async move {
            tokio::select! {
                reason = leadership.lost() => {
                    tracing::warn!(term, %reason, "the term is over; following again");
                }
                () = stopped(stop) => {}
            }
            let _ = over_tx.send(());
            leadership
        };
        let served = manager.serve(async {
            let _ = over.await;
        });
        let (served, leadership) = tokio::join!(served, watch_term);
        compacting.abort();
        self.set_term_metrics(None);
        if let Err(e) = served {
            tracing::error!(term, error = %e, "the leader's server failed");
        }
        leadership.resign().await;
    }

    /// Serves `registry` (the term's manager's) beside the replica's own,
    /// or none; says whether this manager leads.
    fn set_term_metrics(&self, registry: Option<Arc<prometheus_client::registry::Registry>>) {
        self.metrics.leader.set(i64::from(registry.is_some()));
        match self.term_metrics.lock() {
            Ok(mut term) => *term = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
    }
}

/// Resolves once `stop` says so.
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// An `UNAVAILABLE` saying where the leader is (with its URL in the
/// metadata), or that there is none yet.
fn not_leading(leader: Option<&LeaderRecord>, doing: &str) -> tonic::Status {
    match leader {
        Some(leader) => {
            let mut status = tonic::Status::unavailable(format!(
                "this manager does not lead; {doing} the leader, {}",
                leader.manager.url
            ));
            if let Ok(value) = leader.manager.url.parse() {
                status
                    .metadata_mut()
                    .insert(orch::api::LEADER_METADATA, value);
            }
            status
        }
        None => tonic::Status::unavailable(
            "no manager leads yet: the managers are electing one (or etcd has no quorum); retry shortly",
        ),
    }
}

/// How long a follower waits for the leader to begin answering a forwarded
/// call (a stream's headers come at once; a unary call's with its answer).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A follower's `Cluster`: every call forwarded to the leader as it came.
#[derive(Clone)]
struct Forward {
    leader: watch::Receiver<Option<LeaderRecord>>,
    tls: Option<ClientTlsConfig>,
    /// The channel to the leader, by its URL.
    channel: Arc<Mutex<Option<(String, Channel)>>>,
}

impl Forward {
    /// The (lazy) channel to `url`, made once per leader.
    fn channel_to(&self, url: &str) -> Result<Channel, tonic::Status> {
        let mut cached = self
            .channel
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
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = endpoint.connect_lazy();
        *cached = Some((url.to_owned(), channel.clone()));
        Ok(channel)
    }
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
        let channel = leader.as_ref().map(|l| self.channel_to(&l.manager.url));
        Box::pin(async move {
            let Some(leader) = leader else {
                return Ok(not_leading(None, "call").into_http());
            };
            let channel = match channel {
                Some(Ok(channel)) => channel,
                Some(Err(status)) => return Ok(status.into_http()),
                None => return Ok(not_leading(Some(&leader), "call").into_http()),
            };
            let forwarded = tower::ServiceExt::oneshot(channel, request);
            match tokio::time::timeout(FORWARD_TIMEOUT, forwarded).await {
                Err(_) => Ok(not_leading(
                    Some(&leader),
                    &format!("and got no answer within {FORWARD_TIMEOUT:?} from"),
                )
                .into_http()),
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Ok(not_leading(
                    Some(&leader),
                    &format!("and could not forward the call ({e}) to"),
                )
                .into_http()),
            }
        })
    }
}

impl NamedService for Forward {
    const NAME: &'static str = "orch.v1.Cluster";
}

/// A follower's `Dispatcher`: every call refused with the leader's URL.
#[derive(Clone)]
struct Refuse {
    leader: watch::Receiver<Option<LeaderRecord>>,
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

/// The managers on etcd, as their records and the leader key say.
struct OnEtcd(Arc<EtcdStore>);

impl crate::Managers for OnEtcd {
    fn list(&self) -> BoxFuture<'static, Result<Vec<orch::v1::ManagerInfo>, crate::Error>> {
        let store = self.0.clone();
        Box::pin(async move {
            let (managers, leader) = crate::store::etcd::election::managers(&store).await?;
            let at = |ms: u64| {
                Some(orch::time::timestamp(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                ))
            };
            Ok(managers
                .into_iter()
                .map(|m| {
                    let leads = leader.as_ref().filter(|l| l.manager.id == m.id);
                    orch::v1::ManagerInfo {
                        leader: leads.is_some(),
                        leader_since: leads.and_then(|l| at(l.since_ms)),
                        started_at: at(m.started_ms),
                        id: m.id,
                        url: m.url,
                    }
                })
                .collect())
        })
    }
}
