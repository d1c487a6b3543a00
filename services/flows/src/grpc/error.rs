//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::domain::FieldViolation;
use crate::service::ServiceError;

pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::FLOW_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => invalid(v),
            ServiceError::NotFound(_) => Status::not_found(e.to_string()),
            ServiceError::Conflict { .. } => Status::aborted(e.to_string()),
            ServiceError::NameTaken(_) => Status::already_exists(e.to_string()),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            ServiceError::ActionsUnavailable(_) => Status::unavailable(e.to_string()),
            ServiceError::Log(e) => {
                tracing::error!(error = %e, "flows: internal error");
                match e {
                    switchboard_eventlog::EventLogError::Database(_) => {
                        codes::FLOW_STORE_UNAVAILABLE
                            .status("the flows store is unavailable; retry")
                    }
                    _ => codes::FLOW_STORE_REFUSED
                        .status("the flows store refused the change; see the server log"),
                }
            }
        }
    }
}
