//! The tower layer that checks every `Cluster` call's bearer token and role
//! before the call reaches its handler. Other services pass through:
//! `grpc.health.v1` and reflection stay open (as load balancers expect), and
//! the `Dispatcher` checks its callers' certificates itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use orch::auth::Role;
use tower::{Layer, Service};

use crate::Shared;

/// The path prefix of the `Cluster` service's methods.
const CLUSTER: &str = "/orch.v1.Cluster/";

/// The role each `Cluster` method needs. A method missing here needs
/// `admin`: a new method is closed until it is placed.
pub fn required_role(method: &str) -> Role {
    match method {
        "GetTask"
        | "ListTasks"
        | "ListNodes"
        | "ListManagers"
        | "WatchEvents"
        | "GetService"
        | "ListServices"
        | "ListServiceVersions"
        | "Logs"
        | "PlanTask"
        | "PlanService" => Role::ReadOnly,
        "SubmitTask" | "SubmitTasks" | "StopTask" | "ApplyService" | "CreateService"
        | "UpdateService" | "ScaleService" | "RollbackService" | "DeleteService" => Role::Operator,
        _ => Role::Admin,
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

impl AuthLayer {
    /// A layer that checks calls against `shared`'s credentials.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(method) = request.uri().path().strip_prefix(CLUSTER) {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if let Err(status) = self
                .shared
                .authorize(authorization, required_role(method), method)
            {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of the `Cluster` service, from the API's own descriptor.
    fn cluster_methods() -> Vec<String> {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(orch::api::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "Cluster")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect()
    }

    #[test]
    fn every_cluster_method_has_its_role_and_admin_calls_are_the_admin_ones() {
        let methods = cluster_methods();
        assert!(methods.len() > 20, "{methods:?}");
        let admin: Vec<&str> = methods
            .iter()
            .map(String::as_str)
            .filter(|m| required_role(m) == Role::Admin)
            .collect();
        assert_eq!(
            admin,
            [
                "DrainNode",
                "ActivateNode",
                "RemoveNode",
                "CreateToken",
                "ListTokens",
                "RevokeToken",
                "GetJoinToken"
            ],
            "a method falls back to admin only if it is one of these"
        );
        for read in [
            "ListTasks",
            "WatchEvents",
            "GetService",
            "PlanTask",
            "PlanService",
        ] {
            assert!(methods.iter().any(|m| m == read), "{read} is a method");
            assert_eq!(required_role(read), Role::ReadOnly);
        }
        for write in ["SubmitTask", "StopTask", "ApplyService", "DeleteService"] {
            assert_eq!(required_role(write), Role::Operator);
        }
    }
}
