//! axum's extractors with the API's error shape: a body that is not JSON, a query or a path
//! that does not parse, answer problem+json with the field named, like every other error.
//! They keep axum's names (`Json`, `Query`, `Path`) so the OpenAPI generator reads them as
//! it reads axum's.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_runtime::codes;

use super::problem::{ApiError, FieldError};

/// A JSON body; in a response, serialized as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // "missing field `x` at line 1 column 2" and friends: name the path serde saw.
            let text = e.body_text();
            let detail = text
                .split_once(": ")
                .map_or(text.as_str(), |(_, rest)| rest)
                .to_owned();
            ApiError::field(field_of(&detail).unwrap_or_else(|| "body".into()), detail)
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            &codes::API_INVALID_REQUEST,
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &codes::API_INVALID_REQUEST,
            "send the body as `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                &codes::API_TOO_LARGE,
                "the body is larger than the API takes",
            )
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            &codes::API_INVALID_REQUEST,
            other.body_text(),
        ),
    }
}

/// The field serde names in `detail` (`unknown field `colour``, `missing field `name``).
fn field_of(detail: &str) -> Option<String> {
    let (_, rest) = detail.split_once('`')?;
    let (field, _) = rest.split_once('`')?;
    Some(field.to_owned())
}

/// Query parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let detail = text
        .split_once(": ")
        .map_or(text.as_str(), |(_, rest)| rest)
        .to_owned();
    let field = field_of(&detail).map_or_else(|| "query".to_owned(), |f| format!("query.{f}"));
    ApiError {
        status: StatusCode::BAD_REQUEST,
        errors: vec![FieldError {
            field,
            detail: detail.clone(),
        }],
        ..ApiError::new(StatusCode::BAD_REQUEST, &codes::API_INVALID_REQUEST, detail)
    }
}

/// Path parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        &codes::API_INVALID_REQUEST,
        format!("the path does not parse: {}", rejection.body_text()),
    )
}
