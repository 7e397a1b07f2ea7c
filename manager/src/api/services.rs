//! The `Cluster` service's service calls: apply (create, update), get,
//! list, scale, roll back, delete, versions. Each validates its request
//! completely first, then asks the engine under the lock, then waits for
//! durability after releasing it, as the task calls do.

use orch::v1::{
    ApplyServiceRequest, ApplyServiceResponse, DeleteServiceRequest, DeleteServiceResponse,
    GetServiceRequest, GetServiceResponse, ListServiceVersionsRequest, ListServiceVersionsResponse,
    ListServicesRequest, ListServicesResponse, PlanServiceRequest, PlanServiceResponse,
    RollbackServiceRequest, RollbackServiceResponse, ScaleServiceRequest, ScaleServiceResponse,
    ServiceSpec,
};
use orch::validate::{self, FieldError};
use tonic::{Response, Status};

pub use crate::engine::How;
use crate::{Error, Shared};

/// A service name given to a call, checked as a spec's name is.
fn name(field: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required").into());
    }
    validate::service_name(value).map_err(|e| FieldError::new(field, e.rule))?;
    Ok(value.to_owned())
}

pub async fn apply(
    shared: &Shared,
    req: ApplyServiceRequest,
    how: How,
) -> Result<Response<ApplyServiceResponse>, Status> {
    let spec = valid_spec(req.spec)?;
    let (service, change, durable) = shared.lock().apply_service(spec, how)?;
    durable.wait().await.map_err(Error::from)?;
    Ok(Response::new(ApplyServiceResponse {
        service: Some(service),
        change: change as i32,
    }))
}

/// A request's service spec, present and valid (as `ApplyService` and
/// `PlanService` check it).
fn valid_spec(spec: Option<ServiceSpec>) -> Result<ServiceSpec, Error> {
    let spec = spec.ok_or_else(|| Error::from(FieldError::new("spec", "is required")))?;
    validate::service_spec(&spec).map_err(|e| Error::from(e.within("spec")))?;
    Ok(spec)
}

/// What `ApplyService` would do with the spec; changes nothing.
pub fn plan(
    shared: &Shared,
    req: PlanServiceRequest,
) -> Result<Response<PlanServiceResponse>, Status> {
    let spec = valid_spec(req.spec)?;
    let plan = shared.lock().plan_service(&spec)?;
    Ok(Response::new(plan))
}

pub fn get(
    shared: &Shared,
    req: GetServiceRequest,
) -> Result<Response<GetServiceResponse>, Status> {
    let name = name("name", &req.name)?;
    let service = shared
        .lock()
        .service(&name)
        .ok_or_else(|| Error::NotFound(format!("service {name} not found")))?;
    Ok(Response::new(GetServiceResponse {
        service: Some(service),
    }))
}

pub fn list(
    shared: &Shared,
    req: ListServicesRequest,
) -> Result<Response<ListServicesResponse>, Status> {
    let limit = super::page_size(req.page_size)?;
    let after = if req.page_token.is_empty() {
        None
    } else {
        Some(name("page_token", &req.page_token)?)
    };
    let (services, more) =
        shared
            .lock()
            .list_services(after.as_deref(), limit, crate::limits::MAX_PAGE_BYTES);
    let next_page_token = match (more, services.last()) {
        (true, Some(last)) => last
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    Ok(Response::new(ListServicesResponse {
        services,
        next_page_token,
    }))
}

pub async fn scale(
    shared: &Shared,
    req: ScaleServiceRequest,
) -> Result<Response<ScaleServiceResponse>, Status> {
    let name = name("name", &req.name)?;
    let (service, durable) = shared.lock().scale_service(&name, req.count)?;
    durable.wait().await.map_err(Error::from)?;
    Ok(Response::new(ScaleServiceResponse {
        service: Some(service),
    }))
}

pub async fn rollback(
    shared: &Shared,
    req: RollbackServiceRequest,
) -> Result<Response<RollbackServiceResponse>, Status> {
    let name = name("name", &req.name)?;
    let (service, durable) = shared.lock().rollback_service(&name, req.to_version)?;
    durable.wait().await.map_err(Error::from)?;
    Ok(Response::new(RollbackServiceResponse {
        service: Some(service),
    }))
}

pub async fn delete(
    shared: &Shared,
    req: DeleteServiceRequest,
) -> Result<Response<DeleteServiceResponse>, Status> {
    let name = name("name", &req.name)?;
    let (service, durable) = shared.lock().delete_service(&name)?;
    durable.wait().await.map_err(Error::from)?;
    Ok(Response::new(DeleteServiceResponse {
        service: Some(service),
    }))
}

pub fn versions(
    shared: &Shared,
    req: ListServiceVersionsRequest,
) -> Result<Response<ListServiceVersionsResponse>, Status> {
    let name = name("name", &req.name)?;
    let (versions, current) = shared.lock().service_versions(&name)?;
    Ok(Response::new(ListServiceVersionsResponse {
        versions,
        current,
    }))
}
