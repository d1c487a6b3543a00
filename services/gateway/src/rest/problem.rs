//! One error shape for every answer that is not a success: RFC 9457
//! `application/problem+json` with a registered code (`docs/errors.md`), the request id,
//! and every invalid field. axum's own rejections (bad JSON, query or path) become the
//! same shape in the `extract` module.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchboard_runtime::codes::{self, Code};
use tonic_types::StatusExt as _;
use utoipa::ToSchema;

use crate::service::KeyError;

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://docs.switchboard.dev/errors#SB-API-0400",
    "title": "Invalid request",
    "status": 422,
    "detail": "2 fields are invalid",
    "code": "SB-API-0400",
    "request_id": "req_01jd2x4p5r8m6k3v9c7b1n0q2w",
    "errors": [{"field": "status", "detail": "one of active, on_hold, resolved, archived"}]
}))]
pub struct Problem {
    /// A URI naming the error's code; its page says what it means and what to do.
    #[serde(rename = "type")]
    pub kind: String,
    /// The code's meaning in a few words.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The registered code, `SB-<AREA>-<NNNN>`.
    pub code: String,
    /// The request's id (also in the `Request-Id` header): quote it to support.
    pub request_id: String,
    /// Every invalid field, when the request had some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request (`metafields.plan`, `scopes[1]`, `query.limit`).
    pub field: String,
    pub detail: String,
}

/// An error a handler answers with; the request id is added on the way out.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub title: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Seconds to wait, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a registered `code`, answered with `status`.
    pub fn new(status: StatusCode, code: &Code, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.id.to_owned(),
            title: title_of(code),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// The request's fields are invalid (422), each one named.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].field, errors[0].detail),
            n => format!("{n} fields are invalid"),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                &codes::API_INVALID_REQUEST,
                detail,
            )
        }
    }

    /// One invalid field.
    pub fn field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError {
            field: field.into(),
            detail: detail.into(),
        }])
    }

    /// The resource does not exist in the caller's workspace (nor, as far as the caller can
    /// tell, anywhere).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            &codes::API_NOT_FOUND,
            format!("no such {what}"),
        )
    }

    /// The problem document of this error for request `request_id`.
    pub fn problem(&self, request_id: &str) -> Problem {
        Problem {
            kind: format!("https://docs.switchboard.dev/errors#{}", self.code),
            title: self.title.clone(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
            request_id: request_id.to_owned(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    /// The request id is not known here: the request-id layer fills it in (it finds the
    /// error in the response's extensions and writes the body).
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// A code's meaning in a few words: its first clause.
fn title_of(code: &Code) -> String {
    code.meaning
        .split(['.', ':'])
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The body of an error response, once the request id is known.
pub fn render(error: &ApiError, request_id: &str) -> Response {
    let body = serde_json::to_vec(&error.problem(request_id)).unwrap_or_default();
    let mut response = (error.status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if error.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// A service's answer, in HTTP terms: its code stays (the message starts with it), its
/// field violations become `errors`, and its status maps to the HTTP status a client
/// expects (a refusal is never retryable; only an outage is).
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code as G;
        let (http, fallback) = match status.code() {
            G::InvalidArgument | G::OutOfRange => (
                StatusCode::UNPROCESSABLE_ENTITY,
                &codes::API_INVALID_REQUEST,
            ),
            G::NotFound => (StatusCode::NOT_FOUND, &codes::API_NOT_FOUND),
            G::AlreadyExists | G::Aborted | G::FailedPrecondition => {
                (StatusCode::CONFLICT, &codes::API_CONFLICT)
            }
            G::PermissionDenied => (StatusCode::FORBIDDEN, &codes::API_FORBIDDEN),
            G::Unauthenticated => (StatusCode::BAD_GATEWAY, &codes::API_UPSTREAM),
            // A service's quota (endpoints per workspace): waiting does not help.
            G::ResourceExhausted => (StatusCode::CONFLICT, &codes::API_CONFLICT),
            G::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, &codes::API_UNAVAILABLE),
            G::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, &codes::API_UNAVAILABLE),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, &codes::API_INTERNAL),
        };
        let message = status.message();
        let (code, detail) = match message.split_once(": ") {
            Some((code, rest)) if codes::find(code).is_some() => (code.to_owned(), rest),
            _ => (fallback.id.to_owned(), message),
        };
        let errors = status
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| FieldError {
                        field: v.field,
                        detail: v.description,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let title = codes::find(&code).map(title_of).unwrap_or_default();
        let detail = match http {
            // An internal failure's text is for the server log.
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY => {
                tracing::warn!(status = ?status.code(), message, "a service failed a gateway call");
                "the request could not be completed; quote the request id to support".to_owned()
            }
            _ => detail.to_owned(),
        };
        let retry_after = (http == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        Self {
            status: http,
            code,
            title,
            detail,
            errors,
            retry_after,
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        use crate::domain::DomainError as D;
        match error {
            KeyError::Domain(D::Invalid(violations)) => Self::invalid(
                violations
                    .into_iter()
                    .map(|v| FieldError {
                        field: v.field,
                        detail: v.description,
                    })
                    .collect(),
            ),
            KeyError::Domain(D::NotFound) => Self::not_found("API key"),
            KeyError::Domain(e @ D::Revoked) => {
                Self::new(StatusCode::CONFLICT, &codes::API_CONFLICT, e.to_string())
            }
            KeyError::Domain(e @ (D::TooMany(_) | D::Rotated(_))) => {
                Self::new(StatusCode::CONFLICT, &codes::API_CONFLICT, e.to_string())
            }
            KeyError::Contended => Self::new(
                StatusCode::CONFLICT,
                &codes::API_CONFLICT,
                KeyError::Contended.to_string(),
            ),
            KeyError::RequestIdReused => Self::new(
                StatusCode::CONFLICT,
                &codes::API_IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key already created a key; its secret was shown once, to that \
                 request: rotate or create another",
            ),
            KeyError::Log(e) => e.into(),
        }
    }
}

impl From<switchboard_eventlog::EventLogError> for ApiError {
    fn from(error: switchboard_eventlog::EventLogError) -> Self {
        tracing::warn!(error = %error, "the gateway's store failed");
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &codes::API_UNAVAILABLE,
            "the gateway's store is unavailable; try again",
        );
        error.retry_after = Some(1);
        error
    }
}

/// A service's answer in HTTP terms, its stale-version refusal (`stale`) being the API's
/// 412: the `If-Match` version was not the resource's.
pub fn stale_as_412(status: tonic::Status, stale: &Code) -> ApiError {
    if !status.message().starts_with(stale.id) {
        return status.into();
    }
    let detail = ApiError::from(status).detail;
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        &codes::API_PRECONDITION_FAILED,
        detail,
    )
}
