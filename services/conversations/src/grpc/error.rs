//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::domain::{DomainError, FieldViolation};
use crate::service::ServiceError;
use crate::store::QueryError;

/// `INVALID_ARGUMENT` with every field violation in the standard `BadRequest` detail.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::CONV_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

pub fn not_found() -> Status {
    codes::CONV_NOT_FOUND.status("conversation not found")
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(DomainError::Invalid(violations)) => invalid(violations),
            ServiceError::Domain(DomainError::NotFound) => not_found(),
            ServiceError::Domain(DomainError::FailedPrecondition(reason)) => {
                Status::failed_precondition(reason)
            }
            ServiceError::Domain(e @ DomainError::StaleVersion { .. }) => {
                codes::CONV_STALE_VERSION.status(e)
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
    match e {
        // An outage, not a fault of ours: said once per call at WARN, and answered as
        // retryable.
        E::Database(_) | E::Nats(_) => {
            tracing::warn!(error = %e, "conversations: the store is unavailable");
            codes::CONV_STORE_UNAVAILABLE.status("the conversation store is unavailable; retry")
        }
        E::Conflict { .. } => {
            codes::CONV_CONTENDED.status("the conversation is changing too fast; retry")
        }
        E::Corrupt { .. } | E::Projection { .. } | E::Invalid { .. } | E::Fenced { .. } => {
            tracing::error!(error = %e, "conversations: internal error");
            codes::CONV_STORE_REFUSED
                .status("the conversation store refused the change; see the server log")
        }
    }
}
