//! `orchctl manager`, `orchctl worker` and `orchctl dev`: start the daemons
//! and stop them cleanly on Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::sync::Arc;

use orch_worker::runtime::docker::DockerRuntime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::CliError;
use crate::args::{DevArgs, ManagerArgs, WorkerArgs};

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

pub async fn manager(args: ManagerArgs) -> Result<(), CliError> {
    let listener = bind(args.listen).await?;
    let config = orch_manager::Config {
        data_dir: Some(args.data_dir),
        strategy: args.scheduler,
        heartbeat_period: args.heartbeat_period,
        missed_heartbeats: args.missed_heartbeats,
        ..orch_manager::Config::default()
    };
    orch_manager::run(config, listener, terminated()).await?;
    Ok(())
}

async fn docker() -> Result<Arc<DockerRuntime>, CliError> {
    DockerRuntime::connect().await.map(Arc::new).map_err(|e| {
        CliError(format!(
            "{e} (is Docker running, and may this user use it?)"
        ))
    })
}

pub async fn worker(args: WorkerArgs, manager: &str) -> Result<(), CliError> {
    let runtime = docker().await?;
    let config = orch_worker::Config {
        manager: manager.to_string(),
        name: args.name.unwrap_or_else(host_name),
        address: args.address,
        labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
        milli_cpus: args.cpus,
        memory_bytes: args.memory,
        disk_bytes: args.disk,
        data_dir: Some(args.data_dir),
    };
    orch_worker::run(config, runtime, terminated()).await?;
    Ok(())
}

pub async fn dev(args: DevArgs) -> Result<(), CliError> {
    let runtime = docker().await?;
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let manager_config = orch_manager::Config {
        data_dir: Some(args.data_dir.clone()),
        strategy: args.scheduler,
        ..orch_manager::Config::default()
    };
    let manager = tokio::spawn(orch_manager::run(
        manager_config,
        listener,
        stopped(stop_rx.clone()),
    ));
    let worker_config = orch_worker::Config {
        manager: format!("http://{addr}"),
        name: host_name(),
        address: String::new(),
        labels: args.labels.into_iter().collect(),
        milli_cpus: None,
        memory_bytes: None,
        disk_bytes: None,
        data_dir: Some(args.data_dir.join("worker")),
    };
    let worker = tokio::spawn(orch_worker::run(worker_config, runtime, stopped(stop_rx)));
    eprintln!("orch is running: manager on http://{addr}, one local worker; Ctrl-C stops it");
    terminated().await;
    let _ = stop_tx.send(true);
    let (w, m) = (worker.await, manager.await);
    w.map_err(|e| CliError(e.to_string()))??;
    m.map_err(|e| CliError(e.to_string()))??;
    Ok(())
}
