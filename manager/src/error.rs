//! The manager's errors and their one mapping to gRPC status codes.

use orch::validate::FieldError;
use tonic::{Code, Status};

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
    /// Something the request needs cannot be reached now (a node that is
    /// down); the message says what.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; the request was not acknowledged and may be retried (the
    /// message says whether the change was dropped or is kept to be written).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for Status {
    /// Every message is cut to `orch::limits::MAX_ERROR_BYTES`, so that no
    /// value quoted in it can make the reply's headers too large for the
    /// client (values are quoted short already: `orch::limits::quote`).
    fn from(e: Error) -> Self {
        let (code, mut message) = match e {
            Error::Invalid(f) => (Code::InvalidArgument, f.to_string()),
            Error::NotFound(m) => (Code::NotFound, m),
            Error::FailedPrecondition(m) => (Code::FailedPrecondition, m),
            Error::AlreadyExists(m) => (Code::AlreadyExists, m),
            Error::Unavailable(m) => (Code::Unavailable, m),
            Error::Store(s) => (Code::Unavailable, format!("{s}; retry later")),
        };
        orch::limits::truncate(&mut message, orch::limits::MAX_ERROR_BYTES);
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_status_message_is_longer_than_the_limit() {
        let status = Status::from(Error::NotFound(format!(
            "service {} not found",
            "x".repeat(3 << 20)
        )));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().len() <= orch::limits::MAX_ERROR_BYTES);
        assert!(status.message().starts_with("service xxx"));
        let status = Status::from(Error::FailedPrecondition("short".into()));
        assert_eq!(status.message(), "short");
    }
}
