//! `/v1/integrations`: the connected services a workspace's HTTP actions share (base URL,
//! credentials, default headers, allowed methods, permission level, one rate limit), over
//! the actions service's gRPC API. An integration is the `Integration` message as JSON
//! (see [`super::proto_json`]); its secret is write-only (`auth.secret_set` says one is
//! kept) and never in an answer; `operations` lists the actions that use it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use switchboard_clients::ActionsClient;
use switchboard_proto::actions::v1 as pb;
use switchboard_runtime::codes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::collections::Deleted;
use super::extract::{Json, Path};
use super::problem::{ApiError, Problem, stale_as_412};
use super::proto_json::{self, proto_schema};
use super::{AppState, List, RequestKey, if_match, tagged};
use crate::domain::Access;
use crate::service::Caller;

/// Scoped with actions: an integration is where their requests go.
const RESOURCE: &str = "actions";
const INTEGRATION: &str = "switchboard.actions.v1.Integration";
/// Fields of an integration the service sets.
const SERVER_FIELDS: &[&str] = &[
    "id",
    "workspace_id",
    "version",
    "created_at",
    "updated_at",
    "operations",
];

proto_schema!(
    /// An integration; its secret is never shown.
    IntegrationJson = "switchboard.actions.v1.Integration" as "Integration",
    omit [],
    strict = false
);
proto_schema!(
    /// An integration to store: `auth.secret` is kept sealed (left out, the stored one
    /// stays for the same kind of auth).
    IntegrationInput = "switchboard.actions.v1.Integration" as "IntegrationInput",
    omit ["id", "workspace_id", "version", "created_at", "updated_at", "operations"],
    strict = true
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_integrations, create_integration))
        .routes(routes!(
            get_integration,
            replace_integration,
            delete_integration
        ))
}

fn with_etag(status: StatusCode, integration: pb::Integration) -> Response {
    let version = integration.version;
    tagged(
        status,
        proto_json::to_json(INTEGRATION, &integration),
        version,
    )
}

async fn save(
    client: &ActionsClient,
    request_id: String,
    integration: pb::Integration,
    expected: Option<u64>,
) -> Result<pb::Integration, ApiError> {
    client
        .save_integration(pb::SaveIntegrationRequest {
            integration: Some(integration),
            expected_version: expected.unwrap_or(0),
            request_id,
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::ACT_STALE_VERSION))
}

/// Lists the workspace's integrations by name, each with its operations.
#[utoipa::path(
    get, path = "/integrations", tag = "actions",
    responses(
        (status = 200, description = "Every integration of the workspace", body = List<IntegrationJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_integrations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<List<Value>>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let answer = state
        .actions_for(&caller)?
        .list_integrations(pb::ListIntegrationsRequest {
            workspace_id: caller.workspace_id.clone(),
        })
        .await?;
    let data: Vec<Value> = answer
        .integrations
        .iter()
        .map(|i| proto_json::to_json(INTEGRATION, i))
        .collect();
    // At most 100 a workspace: one page.
    Ok(axum::Json(List {
        data,
        has_more: false,
        next_cursor: None,
    }))
}

/// Creates an integration.
#[utoipa::path(
    post, path = "/integrations", tag = "actions", request_body = IntegrationInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = IntegrationJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_integration(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut integration: pb::Integration = proto_json::from_json(INTEGRATION, body, SERVER_FIELDS)?;
    integration.workspace_id = caller.workspace_id.clone();
    let client = state.actions_for(&caller)?;
    let created = save(&client, request_id, integration, None).await?;
    Ok(with_etag(StatusCode::CREATED, created))
}

fn integration_ref(caller: &Caller, id: &str) -> pb::GetIntegrationRequest {
    pb::GetIntegrationRequest {
        workspace_id: caller.workspace_id.clone(),
        integration_id: id.to_owned(),
    }
}

/// Gets an integration with its operations.
#[utoipa::path(
    get, path = "/integrations/{id}", tag = "actions",
    params(("id" = String, Path, description = "The integration's id, `int_...`")),
    responses(
        (status = 200, description = "The integration", body = IntegrationJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_integration(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let integration = state
        .actions_for(&caller)?
        .get_integration(integration_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, integration))
}

/// Replaces an integration (without `auth.secret`, the stored secret stays for the same
/// kind of auth). With `If-Match`, only at that version.
#[utoipa::path(
    put, path = "/integrations/{id}", tag = "actions",
    params(
        ("id" = String, Path, description = "The integration's id, `int_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = IntegrationInput,
    responses(
        (status = 200, description = "The integration after the change", body = IntegrationJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_integration(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.actions_for(&caller)?;
    // It must exist in this workspace: a PUT never creates one under a chosen id.
    let current = client
        .get_integration(integration_ref(&caller, &id))
        .await?;
    let mut integration: pb::Integration = proto_json::from_json(INTEGRATION, body, SERVER_FIELDS)?;
    integration.id = current.id;
    integration.workspace_id = caller.workspace_id.clone();
    let saved = save(&client, request_id, integration, if_match(&headers)?).await?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Deletes an integration no action uses (409 naming the actions that still do).
#[utoipa::path(
    delete, path = "/integrations/{id}", tag = "actions",
    params(("id" = String, Path, description = "The integration's id, `int_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_integration(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    state
        .actions_for(&caller)?
        .delete_integration(pb::DeleteIntegrationRequest {
            workspace_id: caller.workspace_id.clone(),
            integration_id: id.clone(),
            request_id,
        })
        .await?;
    Ok(Json(Deleted { id, deleted: true }))
}
