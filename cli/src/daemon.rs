//! `orchctl manager`, `orchctl worker` and `orchctl dev`: start the daemons
//! and stop them cleanly on Ctrl-C or SIGTERM. `--metrics-listen` hands the
//! manager and the worker their metrics port; `dev` serves both of their
//! registries on one port itself.

use std::collections::HashMap;
use std::sync::Arc;

use orch_worker::retention::Retention;
use orch_worker::runtime::docker::{DockerRuntime, LogRotation};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinError;

use crate::CliError;
use crate::args::{DevArgs, LogKeepArgs, ManagerArgs, WorkerArgs};

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError(format!("cannot listen on {addr}: {e}")))
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Writes the client configuration for a manager that just made an admin
/// token, so `orchctl` works with no flags. Returns where it went.
fn write_client_config(access: &orch_manager::ClientAccess) -> Result<Option<String>, CliError> {
    let (Some(token), Some(path)) = (&access.admin_token, crate::config::path()) else {
        return Ok(None);
    };
    let config = crate::config::FileConfig {
        manager: Some(access.url.clone()),
        token: Some(token.clone()),
        ca: access
            .url
            .starts_with("https://")
            .then(|| access.ca_pem.clone()),
    };
    crate::config::save(&path, &config)?;
    Ok(Some(path.display().to_string()))
}

/// Starts a manager, or says in one line why it could not.
async fn start_manager(
    config: orch_manager::Config,
    listener: TcpListener,
) -> Result<orch_manager::Manager, CliError> {
    let failed = could_not_start(&config);
    orch_manager::start(config, listener).await.map_err(failed)
}

/// The one line orchctl says of a manager that could not start.
fn could_not_start(
    config: &orch_manager::Config,
) -> impl FnOnce(orch_manager::ServeError) -> CliError + use<> {
    let dir = config
        .data_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    move |e| {
        CliError(format!(
            "the manager could not start (data directory {dir}): {e}"
        ))
    }
}

pub async fn manager(args: ManagerArgs, insecure: bool) -> Result<(), CliError> {
    let listener = bind(args.listen).await?;
    let config = orch_manager::Config {
        data_dir: Some(args.data_dir),
        strategy: args.scheduler,
        heartbeat_period: args.heartbeat_period,
        missed_heartbeats: args.missed_heartbeats,
        tls: !insecure,
        advertise: args.advertise,
        node_cert_lifetime: args.node_cert_ttl,
        admin_token: if args.new_admin_token {
            orch_manager::AdminToken::ThisStart
        } else {
            orch_manager::AdminToken::FirstStart
        },
        metrics_listen: args.metrics_listen,
        events_kept: args.events_kept,
        etcd: args.store,
        etcd_client: orch_manager::EtcdClientConfig {
            ca_file: args.etcd_ca,
            cert_file: args.etcd_cert,
            key_file: args.etcd_key,
            user: args.etcd_user,
            password_file: args.etcd_password_file,
            plaintext: args.etcd_plaintext,
        },
        leader_lease: args.leader_lease,
        failover_grace: args.failover_grace,
        ..orch_manager::Config::default()
    };
    if config.etcd.is_some() {
        return replica(config, listener).await;
    }
    let manager = start_manager(config, listener).await?;
    if let Some(addr) = manager.metrics_addr() {
        eprintln!("orch: metrics on http://{addr}/metrics");
    }
    if let Some(path) = write_client_config(manager.client())? {
        eprintln!("orch: a new admin token and the cluster's CA are in {path}");
    }
    eprintln!(
        "orch: manager on {}; add workers with the token `orchctl join-token worker` prints",
        manager.client().url
    );
    manager.serve(terminated()).await?;
    Ok(())
}

/// A manager on etcd: follows, and leads when elected.
#[cfg(feature = "etcd")]
async fn replica(config: orch_manager::Config, listener: TcpListener) -> Result<(), CliError> {
    let store = config.etcd.clone().unwrap_or_default();
    let failed = could_not_start(&config);
    let replica = orch_manager::replica::start(config, listener)
        .await
        .map_err(failed)?;
    if let Some(addr) = replica.metrics_addr() {
        eprintln!("orch: metrics on http://{addr}/metrics");
    }
    eprintln!(
        "orch: manager on {} (id {}), on {store}: following until elected",
        replica.url(),
        replica.id()
    );
    let mut config_error = None;
    let served = replica
        .serve(terminated(), |access| {
            eprintln!("orch: leading the cluster");
            match write_client_config(access) {
                Ok(Some(path)) => {
                    eprintln!(
                        "orch: a new admin token and the cluster's CA are in {path}; it names this manager only: give orchctl every one (--manager or ORCH_MANAGER: URL,URL,...)"
                    );
                }
                Ok(None) => {}
                Err(e) => config_error = Some(e),
            }
        })
        .await;
    served?;
    config_error.map_or(Ok(()), Err)
}

#[cfg(not(feature = "etcd"))]
async fn replica(config: orch_manager::Config, listener: TcpListener) -> Result<(), CliError> {
    // `start` says in words that this build has no etcd store.
    start_manager(config, listener).await.map(drop)
}

async fn docker(logs: &LogKeepArgs) -> Result<Arc<DockerRuntime>, CliError> {
    let rotation = LogRotation {
        max_size: u64::try_from(logs.log_max_size).unwrap_or(u64::MAX),
        max_files: logs.log_max_files,
    };
    DockerRuntime::connect()
        .await
        .map(|d| Arc::new(d.with_log_rotation(rotation)))
        .map_err(|e| {
            CliError(format!(
                "{e} (is Docker running, and may this user use it?)"
            ))
        })
}

/// What the worker keeps of ended attempts, from the flags.
fn retention(logs: &LogKeepArgs) -> Retention {
    Retention {
        keep_attempts: logs.log_keep_attempts,
        max_age: logs.log_retention,
    }
}

pub async fn worker(args: WorkerArgs, manager: &str, insecure: bool) -> Result<(), CliError> {
    let runtime = docker(&args.logs).await?;
    let config = orch_worker::Config {
        manager: manager.to_string(),
        name: args.name.unwrap_or_else(host_name),
        address: args.address,
        labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
        milli_cpus: args.cpus,
        memory_bytes: args.memory,
        disk_bytes: args.disk,
        data_dir: Some(args.data_dir),
        join_token: args.join_token,
        insecure,
        retention: retention(&args.logs),
        metrics_listen: args.metrics_listen,
    };
    orch_worker::run(config, runtime, terminated()).await?;
    Ok(())
}

/// Why a manager task ended.
fn manager_ended(ended: Result<Result<(), orch_manager::ServeError>, JoinError>) -> CliError {
    match ended {
        Ok(Err(e)) => CliError(format!("the manager could not start: {e}")),
        Ok(Ok(())) => CliError("the manager stopped".into()),
        Err(e) => CliError(format!("the manager failed: {e}")),
    }
}

pub async fn dev(args: DevArgs, insecure: bool) -> Result<(), CliError> {
    let runtime = docker(&args.logs).await?;
    let listener = bind(args.listen).await?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            orch_metrics::Endpoint::bind(addr)
                .await
                .map_err(|e| CliError(e.to_string()))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let manager_config = orch_manager::Config {
        data_dir: Some(args.data_dir.clone()),
        strategy: args.scheduler,
        tls: !insecure,
        admin_token: orch_manager::AdminToken::EveryStart,
        events_kept: args.events_kept,
        ..orch_manager::Config::default()
    };
    let manager = start_manager(manager_config, listener).await?;
    let access = manager.client().clone();
    let config_path = write_client_config(&access)?;
    let telemetry = orch_worker::telemetry::Telemetry::new();
    let metrics_note = match metrics {
        Some(endpoint) => {
            let note = endpoint
                .local_addr()
                .map(|a| format!("; metrics on http://{a}/metrics"))
                .unwrap_or_default();
            let registries = vec![manager.registry(), telemetry.registry()];
            tokio::spawn(endpoint.serve(registries, stopped(stop_rx.clone())));
            note
        }
        None => String::new(),
    };
    let mut manager = tokio::spawn(manager.serve(stopped(stop_rx.clone())));
    let worker_config = orch_worker::Config {
        manager: access.url.clone(),
        name: host_name(),
        address: String::new(),
        labels: args.labels.into_iter().collect(),
        milli_cpus: None,
        memory_bytes: None,
        disk_bytes: None,
        data_dir: Some(args.data_dir.join("worker")),
        join_token: Some(access.join_token.clone()),
        insecure,
        retention: retention(&args.logs),
        metrics_listen: None,
    };
    let mut worker = tokio::spawn(orch_worker::run_measured(
        worker_config,
        runtime,
        telemetry,
        stopped(stop_rx),
    ));
    let config_note = config_path
        .map(|p| format!("; orchctl's configuration (an admin token) is in {p}"))
        .unwrap_or_default();
    eprintln!(
        "orch is running: manager on {}, one local worker{metrics_note}{config_note}; Ctrl-C stops it",
        access.url
    );
    // Until Ctrl-C, or until either of them ends by itself (a failure); then
    // both are stopped and waited for, so the store is closed cleanly.
    let early = tokio::select! {
        () = terminated() => None,
        ended = &mut manager => Some((manager_ended(ended), true)),
        ended = &mut worker => Some((
            CliError(match ended {
                Ok(Err(e)) => format!("the worker failed: {e}"),
                Ok(Ok(())) => "the worker stopped".into(),
                Err(e) => format!("the worker failed: {e}"),
            }),
            false,
        )),
    };
    let _ = stop_tx.send(true);
    match early {
        Some((e, manager_ended)) => {
            if manager_ended {
                let _ = worker.await;
            } else {
                let _ = manager.await;
            }
            return Err(e);
        }
        None => {
            let (w, m) = (worker.await, manager.await);
            w.map_err(|e| CliError(e.to_string()))??;
            m.map_err(|e| CliError(e.to_string()))??;
        }
    }
    Ok(())
}
