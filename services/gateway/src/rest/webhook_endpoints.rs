//! `/v1/webhook-endpoints`: where a workspace's events are delivered, signed (Standard
//! Webhooks), with each endpoint's messages and delivery attempts; over the webhooks
//! service's gRPC API.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_proto::webhooks::v1 as pb;
use switchboard_runtime::codes;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::collections::Deleted;
use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem};
use super::{
    AppState, List, NotKept, Page, RequestKey, cursor_of, page, page_limit, parse_time, rfc3339,
    tagged,
};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "webhooks";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(get_secret))
        .routes(routes!(list_endpoint_messages))
        .routes(routes!(list_endpoint_attempts))
        .routes(routes!(recover_endpoint))
}

/// An endpoint events are delivered to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Endpoint {
    /// `ep_...`
    pub id: String,
    pub url: String,
    /// Exact types (`conversation.updated`) or families (`conversation.*`); empty: all.
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it was disabled: `api`, `gone` (it answered 410) or `failing`.
    pub disabled_reason: Option<String>,
    /// Deliveries a second; 0: no limit.
    pub rate_limit_per_second: u32,
    /// One conversation's deliveries in order (`webhook-sequence`).
    pub ordered: bool,
    /// While failing, a conversation's queued updates collapse into the latest.
    pub coalesce: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Its version: the `ETag`, and what `If-Match` names.
    pub version: u64,
}

impl From<pb::Endpoint> for Endpoint {
    fn from(e: pb::Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: (!e.disabled_reason.is_empty()).then_some(e.disabled_reason),
            rate_limit_per_second: e.rate_limit_per_second,
            ordered: e.ordered,
            coalesce: e.coalesce,
            created_at: rfc3339(e.created_at.as_ref()).unwrap_or_default(),
            updated_at: rfc3339(e.updated_at.as_ref()).unwrap_or_default(),
            version: e.version,
        }
    }
}

/// An endpoint and its signing secret, shown when it is made or rotated.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    /// `whsec_` + base64: verify each delivery's `webhook-signature` with it.
    pub secret: String,
    #[serde(flatten)]
    pub endpoint: Endpoint,
}

/// The secrets that sign an endpoint's deliveries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointSecret {
    pub secret: String,
    /// Earlier secrets still signing during their grace period.
    pub previous: Vec<String>,
}

/// An endpoint to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://example.com/hooks", "event_types": ["conversation.*"]}))]
pub struct CreateEndpoint {
    /// https (http only for hosts the operator allows).
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// Default true.
    pub enabled: Option<bool>,
    #[serde(default)]
    pub rate_limit_per_second: u32,
    #[serde(default)]
    pub ordered: bool,
    #[serde(default)]
    pub coalesce: bool,
    /// `whsec_` + base64 of 24 to 64 bytes; generated when absent.
    pub secret: Option<String>,
}

/// A change to an endpoint: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub rate_limit_per_second: Option<u32>,
    pub ordered: Option<bool>,
    pub coalesce: Option<bool>,
}

/// How a secret rotation overlaps.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret; generated when absent.
    pub secret: Option<String>,
    /// How long the old secret keeps signing (default 86,400 s, at most 7 days).
    pub grace_period_seconds: Option<u32>,
}

fn endpoint_ref(caller: &Caller, id: String) -> pb::EndpointRef {
    pb::EndpointRef {
        workspace_id: caller.workspace_id.clone(),
        endpoint_id: id,
    }
}

fn with_etag(status: StatusCode, endpoint: pb::Endpoint) -> Response {
    let version = endpoint.version;
    tagged(status, Endpoint::from(endpoint), version)
}

/// An answer carrying a secret: never kept for an `Idempotency-Key` replay (the service
/// answers a retried create with the same endpoint itself).
fn secret_answer(status: StatusCode, answer: pb::EndpointWithSecret) -> Response {
    let body = EndpointWithSecret {
        secret: answer.secret,
        endpoint: answer.endpoint.unwrap_or_default().into(),
    };
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(NotKept);
    response
}

/// Lists the workspace's endpoints.
#[utoipa::path(
    get, path = "/webhook-endpoints", tag = "webhooks", params(Page),
    responses(
        (status = 200, description = "One page of endpoints", body = List<Endpoint>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_endpoints(
    State(state): State<AppState>,
    caller: Caller,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let answer = state
        .webhooks_for(&caller)?
        .list_endpoints(pb::ListEndpointsRequest {
            workspace_id: caller.workspace_id.clone(),
            page_size: limit,
            cursor: page_of.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Endpoint> = answer.endpoints.into_iter().map(Into::into).collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page("/v1/webhook-endpoints", limit, data, next))
}

/// Creates an endpoint; its signing secret is in the answer.
#[utoipa::path(
    post, path = "/webhook-endpoints", tag = "webhooks", request_body = CreateEndpoint,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create answer the same endpoint")),
    responses(
        (status = 201, description = "Created", body = EndpointWithSecret),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<CreateEndpoint>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let created = state
        .webhooks_for(&caller)?
        .create_endpoint(pb::CreateEndpointRequest {
            workspace_id: caller.workspace_id.clone(),
            url: body.url,
            event_types: body.event_types,
            description: body.description,
            enabled: body.enabled,
            rate_limit_per_second: body.rate_limit_per_second,
            ordered: body.ordered,
            coalesce: body.coalesce,
            secret: body.secret.unwrap_or_default(),
            request_id,
        })
        .await?;
    Ok(secret_answer(StatusCode::CREATED, created))
}

/// Gets an endpoint.
#[utoipa::path(
    get, path = "/webhook-endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let endpoint = state
        .webhooks_for(&caller)?
        .get_endpoint(endpoint_ref(&caller, id))
        .await?;
    Ok(with_etag(StatusCode::OK, endpoint))
}

/// Changes an endpoint. With `If-Match`, only if it is still at that version (412
/// otherwise): the version check and the change are one append.
#[utoipa::path(
    patch, path = "/webhook-endpoints/{id}", tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint's id, `ep_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = UpdateEndpoint,
    responses(
        (status = 200, description = "The endpoint after the change", body = Endpoint, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(change): Json<UpdateEndpoint>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.webhooks_for(&caller)?;
    let current = client
        .get_endpoint(endpoint_ref(&caller, id.clone()))
        .await?;
    let expected =
        match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
            Some(tag) => tag.trim().trim_matches('"').parse::<u64>().map_err(|_| {
                ApiError::field("header.If-Match", "the endpoint's ETag, e.g. \"3\"")
            })?,
            None => current.version,
        };
    let mut endpoint = current;
    let touches_definition = change.url.is_some()
        || change.event_types.is_some()
        || change.description.is_some()
        || change.rate_limit_per_second.is_some()
        || change.ordered.is_some()
        || change.coalesce.is_some();
    if touches_definition {
        endpoint = client
            .update_endpoint(pb::UpdateEndpointRequest {
                workspace_id: caller.workspace_id.clone(),
                endpoint_id: id.clone(),
                url: change.url.unwrap_or(endpoint.url),
                event_types: change.event_types.unwrap_or(endpoint.event_types),
                description: change.description.unwrap_or(endpoint.description),
                rate_limit_per_second: change
                    .rate_limit_per_second
                    .unwrap_or(endpoint.rate_limit_per_second),
                ordered: change.ordered.unwrap_or(endpoint.ordered),
                coalesce: change.coalesce.unwrap_or(endpoint.coalesce),
                expected_version: expected,
            })
            .await
            .map_err(|status| stale_or(status, expected))?;
    } else if endpoint.version != expected {
        return Err(stale(expected, endpoint.version));
    }
    match change.enabled {
        Some(true) if !endpoint.enabled => {
            endpoint = client.enable_endpoint(endpoint_ref(&caller, id)).await?;
        }
        Some(false) if endpoint.enabled => {
            endpoint = client.disable_endpoint(endpoint_ref(&caller, id)).await?;
        }
        _ => {}
    }
    Ok(with_etag(StatusCode::OK, endpoint))
}

fn stale(expected: u64, actual: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        &codes::API_PRECONDITION_FAILED,
        format!("the endpoint is at version {actual}, not {expected}"),
    )
}

/// The service's stale-version refusal is the API's 412.
fn stale_or(status: tonic::Status, expected: u64) -> ApiError {
    if status.message().starts_with(codes::WH_STALE_VERSION.id) {
        let mut error = ApiError::from(status);
        error.status = StatusCode::PRECONDITION_FAILED;
        error.detail = format!(
            "the endpoint is not at version {expected}: {}",
            error.detail
        );
        return error;
    }
    status.into()
}

/// Deletes an endpoint; its queued messages fail.
#[utoipa::path(
    delete, path = "/webhook-endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let deleted = state
        .webhooks_for(&caller)?
        .delete_endpoint(endpoint_ref(&caller, id))
        .await?;
    Ok(Json(Deleted {
        id: deleted.id,
        deleted: true,
    }))
}

/// Replaces the signing secret; the old one keeps signing for the grace period.
#[utoipa::path(
    post, path = "/webhook-endpoints/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`")),
    request_body = RotateSecret,
    responses(
        (status = 200, description = "The endpoint and its new secret", body = EndpointWithSecret),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<RotateSecret>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let rotated = state
        .webhooks_for(&caller)?
        .rotate_secret(pb::RotateSecretRequest {
            workspace_id: caller.workspace_id.clone(),
            endpoint_id: id,
            secret: body.secret.unwrap_or_default(),
            grace_period_seconds: body.grace_period_seconds.unwrap_or(0),
        })
        .await?;
    Ok(secret_answer(StatusCode::OK, rotated))
}

/// Failed messages to send again.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"since": "2026-12-01T00:00:00Z"}))]
pub struct Recover {
    /// Every message that failed and was created at or after this time (RFC 3339).
    pub since: String,
    /// Only count them.
    #[serde(default)]
    pub dry_run: bool,
}

/// How a recovery stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recovery {
    /// Failed messages found since the time.
    pub total: u64,
    /// Resent so far (in a dry run: that would be).
    pub done: u64,
    pub dry_run: bool,
    /// Whether every one was resent; if not, the recovery goes on in the background.
    pub finished: bool,
}

/// How long a recovery request waits for the recovery to finish before answering 202.
const RECOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends every message that failed since a time again, each with a fresh retry schedule
/// (Svix's recover). Answers 200 when done within a few seconds, else 202 with the progress
/// so far while the recovery goes on.
#[utoipa::path(
    post, path = "/webhook-endpoints/{id}/recover", tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint's id, `ep_...`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request"),
    ),
    request_body = Recover,
    responses(
        (status = 200, description = "Recovered", body = Recovery),
        (status = 202, description = "Recovering: the rest goes on in the background", body = Recovery),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recover_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Recover>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let since = parse_time("since", &body.since)?;
    let mut progress = state
        .webhooks_for(&caller)?
        .recover_failed(pb::RecoverFailedRequest {
            workspace_id: caller.workspace_id.clone(),
            endpoint_id: id,
            since: Some(since),
            dry_run: body.dry_run,
        })
        .await?;
    let mut recovery = Recovery {
        total: 0,
        done: 0,
        dry_run: body.dry_run,
        finished: false,
    };
    let waited = tokio::time::timeout(RECOVERY_WAIT, async {
        while let Some(update) = progress.message().await? {
            recovery.total = update.total;
            recovery.done = update.done;
            if update.finished {
                recovery.finished = true;
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    })
    .await;
    if let Ok(Err(status)) = waited {
        return Err(status.into());
    }
    let status = if recovery.finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(recovery)).into_response())
}

/// The secrets that sign the endpoint's deliveries (`write` scope: they are secrets).
#[utoipa::path(
    get, path = "/webhook-endpoints/{id}/secret", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`")),
    responses(
        (status = 200, description = "The secrets", body = EndpointSecret),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointSecret>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let secret = state
        .webhooks_for(&caller)?
        .get_endpoint_secret(endpoint_ref(&caller, id))
        .await?;
    Ok(Json(EndpointSecret {
        secret: secret.secret,
        previous: secret.previous,
    }))
}

/// A message to an endpoint: one public event, delivered at least once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMessage {
    /// `whmsg_...`, the `webhook-id` of every attempt.
    pub id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub event_id: String,
    /// `pending`, `delivered`, `failed` or `superseded`.
    pub status: String,
    pub attempts: u32,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// The body delivered: `{type, timestamp, data}`.
    pub payload: serde_json::Value,
}

impl From<pb::WebhookMessage> for WebhookMessage {
    fn from(m: pb::WebhookMessage) -> Self {
        let status = match pb::MessageStatus::try_from(m.status) {
            Ok(pb::MessageStatus::Delivered) => "delivered",
            Ok(pb::MessageStatus::Failed) => "failed",
            Ok(pb::MessageStatus::Superseded) => "superseded",
            _ => "pending",
        };
        Self {
            id: m.id,
            endpoint_id: m.endpoint_id,
            event_type: m.event_type,
            event_id: m.event_id,
            status: status.to_owned(),
            attempts: m.attempts,
            created_at: rfc3339(m.created_at.as_ref()).unwrap_or_default(),
            next_attempt_at: rfc3339(m.next_attempt_at.as_ref()),
            last_error: (!m.last_error.is_empty()).then_some(m.last_error),
            payload: serde_json::from_str(&m.payload_json).unwrap_or_default(),
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub message_id: String,
    pub attempt: u32,
    pub attempted_at: String,
    pub url: String,
    /// 0 when no answer came.
    pub response_status: u32,
    pub duration_ms: u32,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
}

impl From<pb::Attempt> for DeliveryAttempt {
    fn from(a: pb::Attempt) -> Self {
        let outcome = match pb::AttemptOutcome::try_from(a.outcome) {
            Ok(pb::AttemptOutcome::Delivered) => "delivered",
            Ok(pb::AttemptOutcome::Retry) => "retry",
            _ => "failed",
        };
        Self {
            message_id: a.message_id,
            attempt: a.attempt,
            attempted_at: rfc3339(a.attempted_at.as_ref()).unwrap_or_default(),
            url: a.url,
            response_status: a.response_status,
            duration_ms: a.duration_ms,
            outcome: outcome.to_owned(),
            error: (!a.error.is_empty()).then_some(a.error),
        }
    }
}

/// Filters of an endpoint's messages.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessageFilter {
    /// `pending`, `delivered`, `failed` or `superseded`.
    pub status: Option<String>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists an endpoint's messages, newest first.
#[utoipa::path(
    get, path = "/webhook-endpoints/{id}/messages", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`"), MessageFilter),
    responses(
        (status = 200, description = "One page of messages", body = List<WebhookMessage>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_endpoint_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(filter): Query<MessageFilter>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_limit(filter.limit)?;
    let status = match filter.status.as_deref() {
        None => pb::MessageStatus::Unspecified,
        Some("pending") => pb::MessageStatus::Pending,
        Some("delivered") => pb::MessageStatus::Delivered,
        Some("failed") => pb::MessageStatus::Failed,
        Some("superseded") => pb::MessageStatus::Superseded,
        Some(_) => {
            return Err(ApiError::field(
                "query.status",
                "pending, delivered, failed or superseded",
            ));
        }
    };
    let client = state.webhooks_for(&caller)?;
    // The endpoint itself first: another workspace's, or a missing one, is a 404.
    client
        .get_endpoint(endpoint_ref(&caller, id.clone()))
        .await?;
    let answer = client
        .list_messages(pb::ListMessagesRequest {
            workspace_id: caller.workspace_id.clone(),
            endpoint_id: id.clone(),
            status: status as i32,
            page_size: limit,
            cursor: filter.cursor.unwrap_or_default(),
            ..Default::default()
        })
        .await?;
    let data: Vec<WebhookMessage> = answer.messages.into_iter().map(Into::into).collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page(
        &format!("/v1/webhook-endpoints/{id}/messages"),
        limit,
        data,
        next,
    ))
}

/// Lists an endpoint's delivery attempts, newest first.
#[utoipa::path(
    get, path = "/webhook-endpoints/{id}/attempts", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id, `ep_...`"), Page),
    responses(
        (status = 200, description = "One page of attempts", body = List<DeliveryAttempt>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_endpoint_attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let client = state.webhooks_for(&caller)?;
    client
        .get_endpoint(endpoint_ref(&caller, id.clone()))
        .await?;
    let answer = client
        .list_attempts(pb::ListAttemptsRequest {
            workspace_id: caller.workspace_id.clone(),
            endpoint_id: id.clone(),
            page_size: limit,
            cursor: page_of.cursor.unwrap_or_default(),
            ..Default::default()
        })
        .await?;
    let data: Vec<DeliveryAttempt> = answer.attempts.into_iter().map(Into::into).collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page(
        &format!("/v1/webhook-endpoints/{id}/attempts"),
        limit,
        data,
        next,
    ))
}
