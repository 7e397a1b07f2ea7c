//! Docker Swarm on this machine, the third system: a one-node swarm
//! (`docker swarm init --advertise-addr 127.0.0.1`) running replicated
//! services of the same image and command.
//!
//! Everything goes through the Engine API rather than the `docker` CLI, so
//! the CLI's own start-up is not counted against Swarm: the service is
//! created as `docker service create --no-resolve-image --replicas N IMAGE
//! sleep 3600` creates it (the API never resolves the image against a
//! registry; `--no-resolve-image` only keeps the CLI from doing so), with
//! [`LABEL`] on its containers. A swarm this module initialised it also
//! leaves; one that was already active it leaves alone.

use std::collections::HashMap;

use bollard::models::{
    LocalNodeState, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, SwarmInitRequest,
    TaskSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::LeaveSwarmOptionsBuilder;

use super::docker::{COMMAND, Engine, LABEL};
use crate::Error;

/// The address the swarm listens on and advertises: loopback only.
const ADDR: &str = "127.0.0.1";

/// A swarm to create services in.
#[derive(Debug)]
pub struct Swarm {
    /// Whether this run initialised it (and so must leave it).
    ours: bool,
}

impl Swarm {
    /// Makes this engine a one-node swarm manager, unless it already is one.
    ///
    /// # Errors
    /// A sentence saying why Swarm cannot be measured here (the engine
    /// refused `swarm init`, or is part of a swarm it does not manage).
    pub async fn join(engine: &Engine) -> Result<Self, String> {
        let info = engine
            .docker
            .info()
            .await
            .map_err(|e| format!("docker info: {e}"))?;
        let swarm = info.swarm.unwrap_or_default();
        match swarm.local_node_state {
            Some(LocalNodeState::ACTIVE) if swarm.control_available == Some(true) => {
                return Ok(Self { ours: false });
            }
            Some(LocalNodeState::ACTIVE) => {
                return Err("this engine is a swarm worker, not a manager".into());
            }
            _ => {}
        }
        let request = SwarmInitRequest {
            listen_addr: Some(format!("{ADDR}:2377")),
            advertise_addr: Some(ADDR.into()),
            ..SwarmInitRequest::default()
        };
        engine
            .docker
            .init_swarm(request)
            .await
            .map_err(|e| format!("swarm init --advertise-addr {ADDR} failed: {e}"))?;
        Ok(Self { ours: true })
    }

    /// Creates a service of `replicas` containers of the engine's image,
    /// named `name`.
    ///
    /// # Errors
    /// If the engine refuses the service.
    pub async fn create_service(
        &self,
        engine: &Engine,
        name: &str,
        replicas: usize,
    ) -> Result<(), Error> {
        let spec = ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(Engine::labels("swarm")),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(engine.image.clone()),
                    args: Some(COMMAND.map(String::from).to_vec()),
                    labels: Some(Engine::labels("swarm")),
                    ..TaskSpecContainerSpec::default()
                }),
                ..TaskSpec::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::try_from(replicas).unwrap_or(i64::MAX)),
                }),
                ..ServiceSpecMode::default()
            }),
            ..ServiceSpec::default()
        };
        engine
            .docker
            .create_service(spec, None)
            .await
            .map(|_| ())
            .map_err(|e| Error::Io(format!("docker: service create {name}: {e}")))
    }

    /// Removes every service carrying [`LABEL`] (the swarm then stops their
    /// containers; the scenario force-removes them at once).
    ///
    /// # Errors
    /// If the engine cannot list or remove services.
    pub async fn remove_services(&self, engine: &Engine) -> Result<(), Error> {
        let filters = HashMap::from([("label", vec![LABEL.to_string()])]);
        let options = bollard::query_parameters::ListServicesOptionsBuilder::new()
            .filters(&filters)
            .build();
        let services = engine
            .docker
            .list_services(Some(options))
            .await
            .map_err(|e| Error::Io(format!("docker: service ls: {e}")))?;
        for id in services.into_iter().filter_map(|s| s.id) {
            engine
                .docker
                .delete_service(&id)
                .await
                .map_err(|e| Error::Io(format!("docker: service rm {id}: {e}")))?;
        }
        Ok(())
    }

    /// Removes the services and, if this run initialised the swarm, leaves
    /// it (`docker swarm leave --force`). Returns what went wrong, if
    /// anything, for the caller to report; it never stops half-way.
    pub async fn leave(self, engine: &Engine) -> Result<(), String> {
        let removed = self.remove_services(engine).await;
        if !self.ours {
            return removed.map_err(|e| e.to_string());
        }
        let options = LeaveSwarmOptionsBuilder::new().force(true).build();
        let left = engine.docker.leave_swarm(Some(options)).await.map_err(|e| {
            format!("swarm leave --force failed: {e}; run `docker swarm leave --force`")
        });
        removed.map_err(|e| e.to_string()).and(left)
    }
}
