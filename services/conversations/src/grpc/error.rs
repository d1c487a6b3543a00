//! The one place where this service's errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{DomainError, FieldViolation};
use crate::service::ServiceError;
use crate::store::QueryError;

/// `INVALID_ARGUMENT` with every field violation in the standard `BadRequest` detail.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    let message = format!(
        "SB-CONV-0001: invalid request: {}",
        violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

pub fn not_found() -> Status {
    Status::not_found("SB-CONV-0404: conversation not found")
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(DomainError::Invalid(violations)) => invalid(violations),
            ServiceError::Domain(DomainError::NotFound) => not_found(),
            ServiceError::Domain(DomainError::FailedPrecondition(reason)) => {
                Status::failed_precondition(reason)
            }
            ServiceError::Contended => Status::aborted(e.to_string()),
            ServiceError::Log(e) => internal(e),
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(violation) => invalid(vec![violation]),
            QueryError::Log(e) => internal(e),
        }
    }
}

/// Logs the cause and answers without internals: retryable when the store was out of
/// reach, internal when what it holds cannot be used (retrying will not help).
fn internal(e: switchboard_eventlog::EventLogError) -> Status {
    use switchboard_eventlog::EventLogError as E;
    tracing::error!(error = %e, "conversations: internal error");
    match e {
        E::Database(_) | E::Nats(_) => {
            Status::unavailable("SB-CONV-0500: the conversation store is unavailable; retry")
        }
        E::Conflict { .. } => {
            Status::aborted("SB-CONV-0005: the conversation is changing too fast; retry")
        }
        E::Corrupt { .. } | E::Projection { .. } | E::Invalid { .. } => Status::internal(
            "SB-CONV-0501: the conversation store refused the change; see the server log",
        ),
    }
}
