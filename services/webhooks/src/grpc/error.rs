//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::domain::FieldViolation;
use crate::service::ServiceError;

pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::WH_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => invalid(v),
            ServiceError::NotFound(_) => Status::not_found(e.to_string()),
            ServiceError::Conflict { .. } => Status::aborted(e.to_string()),
            ServiceError::TooManyEndpoints(_) => Status::resource_exhausted(e.to_string()),
            ServiceError::Sealed => {
                tracing::error!("webhooks: a stored secret cannot be opened");
                Status::internal(e.to_string())
            }
            ServiceError::Log(e) => {
                tracing::error!(error = %e, "webhooks: internal error");
                match e {
                    switchboard_eventlog::EventLogError::Database(_) => codes::WH_STORE_UNAVAILABLE
                        .status("the webhooks store is unavailable; retry"),
                    _ => codes::WH_STORE_REFUSED
                        .status("the webhooks store refused the change; see the server log"),
                }
            }
        }
    }
}
