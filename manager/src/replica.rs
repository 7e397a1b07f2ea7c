//! Several managers on one etcd store (the `etcd` feature): each one is a
//! replica that follows until it is elected, then leads until its term ends,
//! then follows again, on the same port all along.
//!
//! - **Following**, a manager serves its port with what needs no state:
//!   `Cluster` calls are forwarded to the leader as they are (the leader
//!   authenticates them; streams included), each client connection's on a
//!   connection to the leader of its own ([`forward`]), so a client may use
//!   any manager; `Dispatcher` calls are refused with `UNAVAILABLE` and the
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

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig};

mod forward;
#[cfg(test)]
mod tests;

pub(crate) use forward::peer;

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
            .add_service(forward::Forward {
                leader: seen.clone(),
                tls: forward_tls,
            })
            .add_service(forward::Refuse { leader: seen });
        // Each client connection with its own channel to the leader.
        let incoming = futures::TryStreamExt::map_ok(
            crate::incoming(self.listener.clone()),
            forward::ClientConnection::new,
        );
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
