//! The `Cluster` gRPC service: what clients call.
//!
//! Each handler validates its request completely before touching the state, so
//! a refused request stores nothing; then it takes the state lock briefly,
//! never across an await, and waits for durability after releasing it.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use orch::v1::cluster_server::Cluster;
use orch::v1::{
    ActivateNodeRequest, ActivateNodeResponse, ApplyServiceRequest, ApplyServiceResponse,
    DeleteServiceRequest, DeleteServiceResponse, DrainNodeRequest, DrainNodeResponse, Event,
    GetServiceRequest, GetServiceResponse, GetTaskRequest, GetTaskResponse, ListManagersRequest,
    ListManagersResponse, ListNodesRequest, ListNodesResponse, ListServiceVersionsRequest,
    ListServiceVersionsResponse, ListServicesRequest, ListServicesResponse, ListTasksRequest,
    ListTasksResponse, PlanServiceRequest, PlanServiceResponse, PlanTaskRequest, PlanTaskResponse,
    RollbackServiceRequest, RollbackServiceResponse, ScaleServiceRequest, ScaleServiceResponse,
    StopTaskRequest, StopTaskResponse, SubmitTaskRequest, SubmitTaskResponse, SubmitTasksRequest,
    SubmitTasksResponse, TaskSpec, TaskState, WatchEventsRequest,
};
use orch::v1::{
    CreateTokenRequest, CreateTokenResponse, GetJoinTokenRequest, GetJoinTokenResponse,
    ListTokensRequest, ListTokensResponse, RemoveNodeRequest, RemoveNodeResponse,
    RevokeTokenRequest, RevokeTokenResponse,
};
use orch::validate::{self, FieldError};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::engine::Engine;
use crate::limits::MAX_PAGE_BYTES;

mod access;
mod events;
mod logs;
pub use events::catch_ups;
mod services;
use crate::{Error, Shared};

/// Most specs in one `SubmitTasks` call.
pub const MAX_BATCH_SPECS: usize = 10_000;
/// Most tasks in one `ListTasks` page, or services in one `ListServices` page.
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// The page size of a `ListTasks` or `ListServices` call that sets none.
pub const DEFAULT_PAGE_SIZE: u32 = 1_000;

/// The number of objects a page may hold, from a request's `page_size`.
fn page_size(asked: u32) -> Result<usize, Error> {
    if asked > MAX_PAGE_SIZE {
        return Err(
            FieldError::new("page_size", format!("{asked} is more than {MAX_PAGE_SIZE}")).into(),
        );
    }
    Ok(if asked == 0 { DEFAULT_PAGE_SIZE } else { asked } as usize)
}

/// A request's task spec, present and valid (as `SubmitTask` and `PlanTask`
/// check it).
fn valid_spec(spec: Option<TaskSpec>) -> Result<TaskSpec, Error> {
    let spec = spec.ok_or_else(|| Error::from(FieldError::new("spec", "is required")))?;
    validate::task_spec(&spec).map_err(|e| Error::from(e.within("spec")))?;
    Ok(spec)
}

/// The `Cluster` service over the manager's shared state.
pub struct ClusterApi {
    shared: Arc<Shared>,
}

impl ClusterApi {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Stores new tasks durably, then schedules them.
    async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<orch::v1::Task>, Error> {
        let tasks = Engine::new_tasks(specs, self.shared.now().wall);
        let created = tasks
            .iter()
            .cloned()
            .map(|t| crate::store::Write::TaskCreated(Box::new(t)))
            .collect();
        // Durable before visible: the tasks join the state (and can be
        // scheduled and reported on) only once the store holds them; if the
        // commit fails they are dropped, and never existed.
        let durable = self.shared.lock().committer().queue_tentative(created);
        durable.wait().await?;
        Ok(self.shared.lock().admit(tasks))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let spec = valid_spec(request.into_inner().spec)?;
        let task = self.submit(vec![spec]).await?.pop();
        Ok(Response::new(SubmitTaskResponse { task }))
    }

    async fn submit_tasks(
        &self,
        request: Request<SubmitTasksRequest>,
    ) -> Result<Response<SubmitTasksResponse>, Status> {
        let specs = request.into_inner().specs;
        if specs.is_empty() || specs.len() > MAX_BATCH_SPECS {
            return Err(Error::from(FieldError::new(
                "specs",
                format!(
                    "{} specs given; send 1 to {MAX_BATCH_SPECS} per call",
                    specs.len()
                ),
            ))
            .into());
        }
        for (i, spec) in specs.iter().enumerate() {
            validate::task_spec(spec).map_err(|e| Error::from(e.within(&format!("specs[{i}]"))))?;
        }
        let tasks = self.submit(specs).await?;
        Ok(Response::new(SubmitTasksResponse { tasks }))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let id = validate::id("id", &request.into_inner().id).map_err(Error::from)?;
        let (task, durable) = self.shared.lock().stop(id)?;
        durable.wait().await.map_err(Error::from)?;
        Ok(Response::new(StopTaskResponse { task: Some(task) }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let id = validate::id("id", &request.into_inner().id).map_err(Error::from)?;
        let (task, attempts, placement) = self
            .shared
            .lock()
            .task_detail(id)
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))?;
        Ok(Response::new(GetTaskResponse {
            task: Some(task),
            attempts,
            placement,
        }))
    }

    async fn plan_task(
        &self,
        request: Request<PlanTaskRequest>,
    ) -> Result<Response<PlanTaskResponse>, Status> {
        let spec = valid_spec(request.into_inner().spec)?;
        let placement = self.shared.lock().plan_task(&spec);
        Ok(Response::new(PlanTaskResponse {
            placement: Some(placement),
        }))
    }

    async fn plan_service(
        &self,
        request: Request<PlanServiceRequest>,
    ) -> Result<Response<PlanServiceResponse>, Status> {
        services::plan(&self.shared, request.into_inner())
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let req = request.into_inner();
        if req.states.len() > orch::limits::MAX_STATE_FILTERS {
            return Err(Error::from(FieldError::new(
                "states",
                format!(
                    "{} entries, at most {}",
                    req.states.len(),
                    orch::limits::MAX_STATE_FILTERS
                ),
            ))
            .into());
        }
        let mut states = Vec::with_capacity(req.states.len());
        for (i, s) in req.states.iter().enumerate() {
            match TaskState::try_from(*s) {
                Ok(state) if state != TaskState::Unspecified => states.push(state),
                _ => {
                    return Err(Error::from(FieldError::new(
                        format!("states[{i}]"),
                        format!("{s} is not a task state"),
                    ))
                    .into());
                }
            }
        }
        if !req.node_id.is_empty() {
            validate::id("node_id", &req.node_id).map_err(Error::from)?;
        }
        if !req.service.is_empty() {
            validate::service_name(&req.service)
                .map_err(|e| Error::from(FieldError::new("service", e.rule)))?;
        }
        let limit = page_size(req.page_size)?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(&req.page_token).map_err(|_| {
                Error::from(FieldError::new(
                    "page_token",
                    "is not a token ListTasks returned",
                ))
            })?)
        };
        let engine = self.shared.lock();
        let service_id = if req.service.is_empty() {
            None
        } else {
            Some(
                engine
                    .service_id(&req.service)
                    .ok_or_else(|| Error::NotFound(format!("service {} not found", req.service)))?,
            )
        };
        let (tasks, more) = engine.list_tasks(after, limit, MAX_PAGE_BYTES, |t| {
            (states.is_empty() || states.contains(&t.state()))
                && (req.node_id.is_empty() || t.node_id == req.node_id)
                && service_id.as_ref().is_none_or(|id| t.service_id == *id)
        });
        drop(engine);
        let next_page_token = match (more, tasks.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.shared.lock().list_nodes();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn list_managers(
        &self,
        _request: Request<ListManagersRequest>,
    ) -> Result<Response<ListManagersResponse>, Status> {
        let managers = self.shared.managers().list().await?;
        Ok(Response::new(ListManagersResponse { managers }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        let id = validate::id("id", &request.into_inner().id).map_err(Error::from)?;
        let (node, durable) = self.shared.lock().drain(id)?;
        durable.wait().await.map_err(Error::from)?;
        Ok(Response::new(DrainNodeResponse { node: Some(node) }))
    }

    async fn activate_node(
        &self,
        request: Request<ActivateNodeRequest>,
    ) -> Result<Response<ActivateNodeResponse>, Status> {
        let id = validate::id("id", &request.into_inner().id).map_err(Error::from)?;
        let (node, durable) = self.shared.lock().activate(id)?;
        durable.wait().await.map_err(Error::from)?;
        Ok(Response::new(ActivateNodeResponse { node: Some(node) }))
    }

    async fn apply_service(
        &self,
        request: Request<ApplyServiceRequest>,
    ) -> Result<Response<ApplyServiceResponse>, Status> {
        services::apply(&self.shared, request.into_inner(), services::How::Apply).await
    }

    async fn create_service(
        &self,
        request: Request<ApplyServiceRequest>,
    ) -> Result<Response<ApplyServiceResponse>, Status> {
        services::apply(&self.shared, request.into_inner(), services::How::Create).await
    }

    async fn update_service(
        &self,
        request: Request<ApplyServiceRequest>,
    ) -> Result<Response<ApplyServiceResponse>, Status> {
        services::apply(&self.shared, request.into_inner(), services::How::Update).await
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        services::get(&self.shared, request.into_inner())
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        services::list(&self.shared, request.into_inner())
    }

    async fn scale_service(
        &self,
        request: Request<ScaleServiceRequest>,
    ) -> Result<Response<ScaleServiceResponse>, Status> {
        services::scale(&self.shared, request.into_inner()).await
    }

    async fn rollback_service(
        &self,
        request: Request<RollbackServiceRequest>,
    ) -> Result<Response<RollbackServiceResponse>, Status> {
        services::rollback(&self.shared, request.into_inner()).await
    }

    async fn delete_service(
        &self,
        request: Request<DeleteServiceRequest>,
    ) -> Result<Response<DeleteServiceResponse>, Status> {
        services::delete(&self.shared, request.into_inner()).await
    }

    async fn list_service_versions(
        &self,
        request: Request<ListServiceVersionsRequest>,
    ) -> Result<Response<ListServiceVersionsResponse>, Status> {
        services::versions(&self.shared, request.into_inner())
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        access::remove_node(&self.shared, request.into_inner()).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        access::create_token(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        Ok(Response::new(access::list_tokens(&self.shared)))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        access::revoke_token(&self.shared, &request.into_inner().id).await?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn get_join_token(
        &self,
        request: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        access::join_token(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    type LogsStream = logs::LogsStream;

    async fn logs(
        &self,
        request: Request<orch::v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let stream = logs::start(self.shared.clone(), request.into_inner())?;
        Ok(Response::new(stream))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = request.into_inner();
        let filter = events::Filter::new(&req).map_err(Error::from)?;
        let watch = events::Watch::new(Arc::clone(&self.shared), req.since, filter)
            .counted(self.shared.lock().metrics().watch.clone());
        Ok(Response::new(Box::pin(events::stream(watch))))
    }
}
