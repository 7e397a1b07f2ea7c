//! The manager's errors and their one mapping to gRPC status codes.

use orch::validate::FieldError;
use tonic::Status;

use crate::store::StoreError;

/// Why a request to the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field breaks a rule; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such task or node.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (for example an unknown session).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The object to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The store failed; the request was not acknowledged and may be retried (the
    /// message says whether the change was dropped or is kept to be written).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(f) => Status::invalid_argument(f.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Store(s) => Status::unavailable(format!("{s}; retry later")),
        }
    }
}
