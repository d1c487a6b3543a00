//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::domain::{DomainError, FieldViolation};
use crate::service::ServiceError;

/// `INVALID_ARGUMENT` with every field violation in the standard `BadRequest` detail.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::INS_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(DomainError::Invalid(violations)) => invalid(violations),
            ServiceError::Domain(e @ DomainError::NotFound(_)) => codes::INS_NOT_FOUND.status(e),
            ServiceError::Domain(DomainError::Quota(why)) => {
                codes::INS_TOO_MANY_SEGMENTS.status(why)
            }
            ServiceError::Contended(_) => codes::INS_CONTENDED.status(e),
            ServiceError::RequestIdReused => codes::INS_REQUEST_ID_REUSED.status(e),
            ServiceError::Log(e) => internal(e),
        }
    }
}

/// Logs the cause and answers without internals: retryable when the store was out of
/// reach, internal when what it holds cannot be used.
fn internal(e: switchboard_eventlog::EventLogError) -> Status {
    use switchboard_eventlog::EventLogError as E;
    match e {
        E::Database(_) | E::Nats(_) => {
            tracing::warn!(error = %e, "insights: store unavailable");
            codes::INS_STORE_UNAVAILABLE.status("the insights store is unavailable; retry")
        }
        E::Conflict { .. } => {
            codes::INS_CONTENDED.status("the workspace's insights are changing too fast; retry")
        }
        E::Corrupt { .. } | E::Projection { .. } | E::Invalid { .. } | E::Fenced { .. } => {
            tracing::error!(error = %e, "insights: internal error");
            codes::INS_STORE_REFUSED
                .status("the insights store refused the request; see the server log")
        }
    }
}
