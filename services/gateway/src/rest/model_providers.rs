//! `/v1/model-providers`: the OpenAI-compatible model servers a workspace's agents use,
//! over the flows service's gRPC API. A provider is the `ModelProvider` message as JSON
//! (see [`super::proto_json`]); its API key is write-only (`api_key_set` says one is
//! kept) and never in an answer.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use switchboard_clients::FlowsClient;
use switchboard_proto::flows::v1 as pb;
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

/// Scoped with assistants: a provider is what an assistant's agent answers with.
const RESOURCE: &str = "assistants";
const PROVIDER: &str = "switchboard.flows.v1.ModelProvider";
const RESULT: &str = "switchboard.flows.v1.ModelCallResult";
/// Fields of a provider the service sets (or never shows).
const SERVER_FIELDS: &[&str] = &[
    "id",
    "workspace_id",
    "updated_at",
    "version",
    "api_key_set",
    "sealed_api_key",
];

proto_schema!(
    /// A model provider; its key is never shown.
    ModelProviderJson = "switchboard.flows.v1.ModelProvider" as "ModelProvider",
    omit ["sealed_api_key", "api_key"],
    strict = false
);
proto_schema!(
    /// A model provider to store: `api_key` is kept sealed (left out, the stored one stays).
    ModelProviderInput = "switchboard.flows.v1.ModelProvider" as "ModelProviderInput",
    omit ["id", "workspace_id", "updated_at", "version", "api_key_set", "sealed_api_key"],
    strict = true
);
proto_schema!(
    /// What one test call to the provider brought.
    ModelCallResult = "switchboard.flows.v1.ModelCallResult" as "ModelCallResult",
    omit [],
    strict = false
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers, create_provider))
        .routes(routes!(get_provider, replace_provider, delete_provider))
        .routes(routes!(test_provider))
}

fn with_etag(status: StatusCode, provider: pb::ModelProvider) -> Response {
    let version = provider.version;
    tagged(status, proto_json::to_json(PROVIDER, &provider), version)
}

fn provider_ref(caller: &Caller, id: &str) -> pb::ModelProviderRef {
    pb::ModelProviderRef {
        workspace_id: caller.workspace_id.clone(),
        provider_id: id.to_owned(),
    }
}

async fn save(
    client: &FlowsClient,
    request_id: String,
    provider: pb::ModelProvider,
    expected: Option<u64>,
) -> Result<pb::ModelProvider, ApiError> {
    client
        .save_model_provider(pb::SaveModelProviderRequest {
            provider: Some(provider),
            expected_version: expected.unwrap_or(0),
            request_id,
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::FLOW_STALE_VERSION))
}

/// Lists the workspace's model providers, by name.
#[utoipa::path(
    get, path = "/model-providers", tag = "assistants",
    responses(
        (status = 200, description = "Every provider of the workspace", body = List<ModelProviderJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_providers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<List<Value>>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let answer = state
        .flows_for(&caller)?
        .list_model_providers(pb::ListModelProvidersRequest {
            workspace_id: caller.workspace_id.clone(),
        })
        .await?;
    let data: Vec<Value> = answer
        .providers
        .iter()
        .map(|p| proto_json::to_json(PROVIDER, p))
        .collect();
    // At most 20 a workspace: one page.
    Ok(axum::Json(List {
        data,
        has_more: false,
        next_cursor: None,
    }))
}

/// Creates a model provider.
#[utoipa::path(
    post, path = "/model-providers", tag = "assistants", request_body = ModelProviderInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = ModelProviderJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_provider(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut provider: pb::ModelProvider = proto_json::from_json(PROVIDER, body, SERVER_FIELDS)?;
    provider.workspace_id = caller.workspace_id.clone();
    let client = state.flows_for(&caller)?;
    let created = save(&client, request_id, provider, None).await?;
    Ok(with_etag(StatusCode::CREATED, created))
}

/// Gets a model provider.
#[utoipa::path(
    get, path = "/model-providers/{id}", tag = "assistants",
    params(("id" = String, Path, description = "The provider's id, `mp_...`")),
    responses(
        (status = 200, description = "The provider", body = ModelProviderJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let provider = state
        .flows_for(&caller)?
        .get_model_provider(provider_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, provider))
}

/// Replaces a model provider (without `api_key`, the stored key stays). With `If-Match`,
/// only at that version.
#[utoipa::path(
    put, path = "/model-providers/{id}", tag = "assistants",
    params(
        ("id" = String, Path, description = "The provider's id, `mp_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = ModelProviderInput,
    responses(
        (status = 200, description = "The provider after the change", body = ModelProviderJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_provider(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    // It must exist in this workspace: a PUT never creates one under a chosen id.
    let current = client
        .get_model_provider(provider_ref(&caller, &id))
        .await?;
    let mut provider: pb::ModelProvider = proto_json::from_json(PROVIDER, body, SERVER_FIELDS)?;
    provider.id = current.id;
    provider.workspace_id = caller.workspace_id.clone();
    let saved = save(&client, request_id, provider, if_match(&headers)?).await?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Deletes a model provider.
#[utoipa::path(
    delete, path = "/model-providers/{id}", tag = "assistants",
    params(("id" = String, Path, description = "The provider's id, `mp_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_provider(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    state
        .flows_for(&caller)?
        .delete_model_provider(pb::DeleteModelProviderRequest {
            workspace_id: caller.workspace_id.clone(),
            provider_id: id.clone(),
            request_id,
        })
        .await?;
    Ok(Json(Deleted { id, deleted: true }))
}

/// Sends one short completion to the provider: whether it answered, in how long, with
/// how many tokens, or why not. Changes nothing.
#[utoipa::path(
    post, path = "/model-providers/{id}/test", tag = "assistants",
    params(("id" = String, Path, description = "The provider's id, `mp_...`")),
    responses(
        (status = 200, description = "What the call brought", body = ModelCallResult),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn test_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let result = state
        .flows_for(&caller)?
        .test_model_provider(provider_ref(&caller, &id))
        .await?;
    Ok(axum::Json(proto_json::to_json(RESULT, &result)))
}
