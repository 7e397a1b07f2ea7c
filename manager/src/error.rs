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
    /// The store failed; the request was not stored and may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest status message sent, in bytes. A message travels in the
/// reply's HTTP/2 headers, percent-encoded: one that quotes a huge value (an
/// id of a thousand emoji) would make them too large, and the client would
/// get a protocol error instead of the answer. A longer one is cut.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message`, cut to [`MAX_STATUS_MESSAGE`] bytes (on a character boundary,
/// ending with `…`) if it is longer.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE - '…'.len_utf8();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::Store(_) => tonic::Code::Unavailable,
        };
        let message = match e {
            Error::Store(s) => format!("{s}; nothing was stored, retry later"),
            other => other.to_string(),
        };
        Status::new(code, bounded(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_quoting_a_huge_value_is_cut_but_still_names_the_field() {
        let value = "\u{1F600}".repeat(100_000);
        let status = Status::from(Error::Invalid(
            orch::validate::id("id", &value).expect_err("not an id"),
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= MAX_STATUS_MESSAGE);
        assert!(status.message().starts_with("id: "), "{}", status.message());
        assert!(status.message().ends_with('…'));
        let short = Status::from(Error::NotFound("task x not found".into()));
        assert_eq!(
            (short.code(), short.message()),
            (tonic::Code::NotFound, "task x not found")
        );
    }
}
