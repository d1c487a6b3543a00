//! The one place where this service's errors become gRPC statuses.

use tonic::Status;

use crate::client::ClientError;
use crate::domain::FieldViolation;
use crate::service::ServiceError;

pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    switchboard_runtime::requests::invalid_argument(
        "SB-CX-0003",
        violations.into_iter().map(|v| (v.field, v.description)),
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => invalid(v),
            ServiceError::NotConnected => Status::failed_precondition(e.to_string()),
            ServiceError::Connexease(ClientError::Unauthorized) => {
                Status::failed_precondition(format!("SB-CX-0004: {}", ClientError::Unauthorized))
            }
            ServiceError::Connexease(ClientError::Blocked(reason)) => {
                Status::failed_precondition(format!("SB-CX-0006: {reason}"))
            }
            ServiceError::Connexease(other) => Status::unavailable(format!("SB-CX-0002: {other}")),
            ServiceError::InProgress | ServiceError::Contended => Status::aborted(e.to_string()),
            ServiceError::Log(e) => {
                tracing::error!(error = %e, "connexease: internal error");
                match e {
                    switchboard_eventlog::EventLogError::Database(_) => Status::unavailable(
                        "SB-CX-0500: the connexease store is unavailable; retry",
                    ),
                    _ => Status::internal(
                        "SB-CX-0501: the connexease store refused the change; see the server log",
                    ),
                }
            }
        }
    }
}
