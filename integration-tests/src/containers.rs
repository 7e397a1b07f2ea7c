//! The containers orch left on given nodes, as the Docker engine lists them:
//! what tests check ("exactly these tasks run") and what they clean up.
//! Shared by the in-process harness (`cluster`) and the process harness of
//! the `orchctl` tests.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};

/// Every orch container (`all`: exited ones too) on one of `nodes`.
///
/// # Panics
/// If the engine cannot list containers: this is test code.
pub async fn on_nodes(docker: &Docker, nodes: &[String], all: bool) -> Vec<ContainerSummary> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let filters = HashMap::from([("label", vec![format!("{}=true", orch::labels::MANAGED)])]);
    let options = ListContainersOptionsBuilder::default()
        .all(all)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(orch::labels::NODE_ID))
                .is_some_and(|n| nodes.contains(n))
        })
        .collect()
}

/// Force-removes every orch container on one of `nodes`, running or not.
pub async fn remove_on_nodes(docker: &Docker, nodes: &[String]) {
    for c in on_nodes(docker, nodes, true).await {
        if let Some(id) = c.id {
            let force = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(force)).await;
        }
    }
}
