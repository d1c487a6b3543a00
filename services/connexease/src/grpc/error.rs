//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::client::ClientError;
use crate::domain::FieldViolation;
use crate::service::ServiceError;

pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::CX_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => invalid(v),
            ServiceError::NotConnected => Status::failed_precondition(e.to_string()),
            ServiceError::Connexease(unauthorized @ ClientError::Unauthorized(_)) => {
                codes::CX_UNAUTHORIZED.status(unauthorized)
            }
            ServiceError::Connexease(ClientError::Blocked(reason)) => {
                codes::CX_DESTINATION_BLOCKED.status(reason)
            }
            ServiceError::Connexease(other) => codes::CX_UPSTREAM_FAILED.status(other),
            ServiceError::InProgress | ServiceError::Contended => Status::aborted(e.to_string()),
            ServiceError::Log(e) => {
                tracing::error!(error = %e, "connexease: internal error");
                match e {
                    switchboard_eventlog::EventLogError::Database(_) => codes::CX_STORE_UNAVAILABLE
                        .status("the connexease store is unavailable; retry"),
                    _ => codes::CX_STORE_REFUSED
                        .status("the connexease store refused the change; see the server log"),
                }
            }
        }
    }
}
