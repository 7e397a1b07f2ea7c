//! The `Cluster` service's service calls: apply, get, list, scale, roll
//! back, delete, versions.

use orch::v1::{
    ApplyServiceRequest, ApplyServiceResponse, DeleteServiceRequest, DeleteServiceResponse,
    GetServiceRequest, GetServiceResponse, ListServiceVersionsRequest, ListServiceVersionsResponse,
    ListServicesResponse, RollbackServiceRequest, RollbackServiceResponse, ScaleServiceRequest,
    ScaleServiceResponse,
};
use tonic::{Response, Status};

use crate::Shared;

/// Which of the three apply calls: whether the service may or must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Create or update.
    Apply,
    /// Create; ALREADY_EXISTS if it exists.
    Create,
    /// Update; NOT_FOUND if it does not exist.
    Update,
}

fn not_yet() -> Status {
    Status::unimplemented("services are not served by this manager yet")
}

pub async fn apply(
    _shared: &Shared,
    _req: ApplyServiceRequest,
    _how: How,
) -> Result<Response<ApplyServiceResponse>, Status> {
    Err(not_yet())
}

pub fn get(
    _shared: &Shared,
    _req: GetServiceRequest,
) -> Result<Response<GetServiceResponse>, Status> {
    Err(not_yet())
}

pub fn list(_shared: &Shared) -> Result<Response<ListServicesResponse>, Status> {
    Err(not_yet())
}

pub async fn scale(
    _shared: &Shared,
    _req: ScaleServiceRequest,
) -> Result<Response<ScaleServiceResponse>, Status> {
    Err(not_yet())
}

pub async fn rollback(
    _shared: &Shared,
    _req: RollbackServiceRequest,
) -> Result<Response<RollbackServiceResponse>, Status> {
    Err(not_yet())
}

pub async fn delete(
    _shared: &Shared,
    _req: DeleteServiceRequest,
) -> Result<Response<DeleteServiceResponse>, Status> {
    Err(not_yet())
}

pub fn versions(
    _shared: &Shared,
    _req: ListServiceVersionsRequest,
) -> Result<Response<ListServiceVersionsResponse>, Status> {
    Err(not_yet())
}
