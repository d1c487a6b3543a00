//! The one place where this service's errors become gRPC statuses.

use switchboard_runtime::codes;
use tonic::Status;

use crate::domain::{DomainError, FieldViolation};
use crate::service::ServiceError;
use crate::store::QueryError;

pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        codes::ACT_INVALID_REQUEST.id,
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

pub fn not_found() -> Status {
    Status::not_found(DomainError::NotFound.to_string())
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(DomainError::Invalid(v)) => invalid(v),
            ServiceError::Domain(DomainError::NotFound) => not_found(),
            ServiceError::Domain(e @ DomainError::AlreadyExists) => {
                Status::already_exists(e.to_string())
            }
            ServiceError::Domain(e @ DomainError::IntegrationNotFound) => {
                Status::not_found(e.to_string())
            }
            ServiceError::Domain(e @ DomainError::IntegrationInUse(_)) => {
                Status::failed_precondition(e.to_string())
            }
            ServiceError::Domain(e @ DomainError::StaleVersion { .. }) => {
                Status::aborted(e.to_string())
            }
            ServiceError::Contended | ServiceError::InProgress { .. } => {
                Status::aborted(e.to_string())
            }
            ServiceError::Log(e) => internal(e),
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Cursor(e) => invalid(vec![FieldViolation {
                field: "cursor".into(),
                description: e.to_string(),
            }]),
            QueryError::Log(e) => internal(e),
        }
    }
}

fn internal(e: switchboard_eventlog::EventLogError) -> Status {
    use switchboard_eventlog::EventLogError as E;
    tracing::error!(error = %e, "actions: internal error");
    match e {
        E::Database(_) | E::Nats(_) => {
            codes::ACT_STORE_UNAVAILABLE.status("the action store is unavailable; retry")
        }
        E::Conflict { .. } => codes::ACT_CONTENDED.status("the action is changing too fast; retry"),
        _ => codes::ACT_STORE_REFUSED
            .status("the action store refused the change; see the server log"),
    }
}
