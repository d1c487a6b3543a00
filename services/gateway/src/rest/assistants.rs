//! `/v1/assistants`: what an assistant knows and may do (instructions, enabled actions,
//! knowledge collections) and the conversation flow it runs, over the flows service's gRPC
//! API. An assistant is the `Assistant` message as JSON (see [`super::proto_json`]).

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
use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem, stale_as_412};
use super::proto_json::{self, proto_schema};
use super::{AppState, List, Page, RequestKey, cursor_of, if_match, merge_patch, page, tagged};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "assistants";
const ASSISTANT: &str = "switchboard.flows.v1.Assistant";
/// Fields of an assistant the service sets.
const SERVER_FIELDS: &[&str] = &["id", "workspace_id", "updated_at", "version", "has_draft"];

proto_schema!(
    /// An assistant.
    AssistantJson = "switchboard.flows.v1.Assistant" as "Assistant",
    omit [],
    strict = false
);
proto_schema!(
    /// An assistant to store.
    AssistantInput = "switchboard.flows.v1.Assistant" as "AssistantInput",
    omit ["id", "workspace_id", "updated_at", "version", "has_draft"],
    strict = true
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_assistants, create_assistant))
        .routes(routes!(
            get_assistant,
            replace_assistant,
            patch_assistant,
            delete_assistant
        ))
        .routes(routes!(get_draft, save_draft))
        .routes(routes!(publish))
        .routes(routes!(undo))
        .routes(routes!(replay_draft))
}

fn assistant_ref(caller: &Caller, id: &str) -> pb::AssistantRef {
    pb::AssistantRef {
        workspace_id: caller.workspace_id.clone(),
        assistant_id: id.to_owned(),
    }
}

/// Gets an assistant's draft: what it will be once published.
#[utoipa::path(
    get, path = "/assistants/{id}/draft", tag = "assistants",
    params(("id" = String, Path, description = "The assistant's id, `asst_...`")),
    responses(
        (status = 200, description = "The draft", body = AssistantJson),
        (status = "4XX", description = "Refused; 404 when there is no draft", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_draft(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let draft = state
        .flows_for(&caller)?
        .get_assistant_draft(assistant_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, draft))
}

/// Saves a draft of an assistant, checked like the assistant; it is not in effect until
/// published. With `If-Match`, only at that version.
#[utoipa::path(
    put, path = "/assistants/{id}/draft", tag = "assistants",
    params(
        ("id" = String, Path, description = "The assistant's id, `asst_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = AssistantInput,
    responses(
        (status = 200, description = "The draft", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn save_draft(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    let current = fetch(&client, &caller, &id).await?;
    let mut draft: pb::Assistant = proto_json::from_json(ASSISTANT, body, SERVER_FIELDS)?;
    draft.id = current.id;
    draft.workspace_id = caller.workspace_id.clone();
    let saved = client
        .save_assistant_draft(pb::SaveAssistantRequest {
            assistant: Some(draft),
            expected_version: if_match(&headers)?.unwrap_or(0),
            request_id,
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::FLOW_STALE_VERSION))?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Puts the assistant's draft in effect. With `Idempotency-Key`, a retry is the same
/// publish.
#[utoipa::path(
    post, path = "/assistants/{id}/publish", tag = "assistants",
    params(
        ("id" = String, Path, description = "The assistant's id, `asst_...`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request"),
    ),
    responses(
        (status = 200, description = "The assistant, its draft in effect", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused; 409 when there is no draft", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let published = state
        .flows_for(&caller)?
        .publish_assistant(pb::PublishAssistantRequest {
            workspace_id: caller.workspace_id.clone(),
            assistant_id: id,
            request_id,
        })
        .await?;
    Ok(with_etag(StatusCode::OK, published))
}

/// Drops the assistant's draft: it stays as last published.
#[utoipa::path(
    post, path = "/assistants/{id}/undo", tag = "assistants",
    params(("id" = String, Path, description = "The assistant's id, `asst_...`")),
    responses(
        (status = 200, description = "The assistant without its draft", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused; 409 when there is no draft", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn undo(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let assistant = state
        .flows_for(&caller)?
        .discard_assistant_draft(assistant_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, assistant))
}

proto_schema!(
    /// Recorded runs replayed on what was published and on the draft, and where they part.
    ReplayReportJson = "switchboard.flows.v1.ReplayReport" as "ReplayReport",
    omit [],
    strict = false
);

/// How many recent runs a replay takes.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReplayParams {
    /// Recent runs to replay: 50 by default, at most 500.
    limit: Option<u32>,
}

/// Replays the assistant's recent recorded conversations against its draft (its
/// instructions, tools and flow) and reports where the draft would behave differently.
/// Changes nothing: no message is sent and no action runs.
#[utoipa::path(
    post, path = "/assistants/{id}/draft/replay", tag = "assistants",
    params(("id" = String, Path, description = "The assistant's id, `asst_...`"), ReplayParams),
    responses(
        (status = 200, description = "What the draft would do differently", body = ReplayReportJson),
        (status = "4XX", description = "Refused; 409 when there is no draft", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay_draft(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<ReplayParams>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let report = state
        .flows_for(&caller)?
        .replay_assistant_draft(pb::ReplayAssistantDraftRequest {
            workspace_id: caller.workspace_id.clone(),
            assistant_id: id,
            limit: params.limit.unwrap_or(0),
        })
        .await?;
    Ok(axum::Json(proto_json::to_json(
        "switchboard.flows.v1.ReplayReport",
        &report,
    )))
}

fn with_etag(status: StatusCode, assistant: pb::Assistant) -> Response {
    let version = assistant.version;
    tagged(status, proto_json::to_json(ASSISTANT, &assistant), version)
}

/// Lists the workspace's assistants.
#[utoipa::path(
    get, path = "/assistants", tag = "assistants", params(Page),
    responses(
        (status = 200, description = "One page of assistants", body = List<AssistantJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_assistants(
    State(state): State<AppState>,
    caller: Caller,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let answer = state
        .flows_for(&caller)?
        .list_assistants(pb::ListAssistantsRequest {
            workspace_id: caller.workspace_id.clone(),
            page_size: limit,
            cursor: page_of.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Value> = answer
        .assistants
        .iter()
        .map(|a| proto_json::to_json(ASSISTANT, a))
        .collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page("/v1/assistants", limit, data, next))
}

/// Saves `assistant` (a new one when its id is empty), at `expected` when given.
async fn save(
    client: &FlowsClient,
    request_id: String,
    assistant: pb::Assistant,
    expected: Option<u64>,
) -> Result<pb::Assistant, ApiError> {
    client
        .save_assistant(pb::SaveAssistantRequest {
            assistant: Some(assistant),
            expected_version: expected.unwrap_or(0),
            request_id,
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::FLOW_STALE_VERSION))
}

/// Creates an assistant.
#[utoipa::path(
    post, path = "/assistants", tag = "assistants", request_body = AssistantInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_assistant(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut assistant: pb::Assistant = proto_json::from_json(ASSISTANT, body, SERVER_FIELDS)?;
    assistant.workspace_id = caller.workspace_id.clone();
    let client = state.flows_for(&caller)?;
    let created = save(&client, request_id, assistant, None).await?;
    Ok(with_etag(StatusCode::CREATED, created))
}

async fn fetch(client: &FlowsClient, caller: &Caller, id: &str) -> Result<pb::Assistant, ApiError> {
    Ok(client
        .get_assistant(pb::AssistantRef {
            workspace_id: caller.workspace_id.clone(),
            assistant_id: id.to_owned(),
        })
        .await?)
}

/// Gets an assistant.
#[utoipa::path(
    get, path = "/assistants/{id}", tag = "assistants",
    params(("id" = String, Path, description = "The assistant's id, `asst_...`")),
    responses(
        (status = 200, description = "The assistant", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_assistant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let client = state.flows_for(&caller)?;
    Ok(with_etag(
        StatusCode::OK,
        fetch(&client, &caller, &id).await?,
    ))
}

/// Replaces an assistant. With `If-Match`, only at that version.
#[utoipa::path(
    put, path = "/assistants/{id}", tag = "assistants",
    params(
        ("id" = String, Path, description = "The assistant's id, `asst_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = AssistantInput,
    responses(
        (status = 200, description = "The assistant after the change", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_assistant(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    // The assistant must exist in this workspace: a PUT never creates one under a chosen id.
    let current = fetch(&client, &caller, &id).await?;
    let mut assistant: pb::Assistant = proto_json::from_json(ASSISTANT, body, SERVER_FIELDS)?;
    assistant.id = current.id;
    assistant.workspace_id = caller.workspace_id.clone();
    let expected = if_match(&headers)?;
    let saved = save(&client, request_id, assistant, expected).await?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Changes some fields of an assistant: a JSON merge patch (RFC 7396). With `If-Match`,
/// only at that version.
#[utoipa::path(
    patch, path = "/assistants/{id}", tag = "assistants",
    params(
        ("id" = String, Path, description = "The assistant's id, `asst_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body(content = Object, description = "A merge patch of the assistant (fields of `AssistantInput`)"),
    responses(
        (status = 200, description = "The assistant after the change", body = AssistantJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_assistant(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(patch): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    if !patch.is_object() {
        return Err(ApiError::field("body", "a JSON object (a merge patch)"));
    }
    let client = state.flows_for(&caller)?;
    let current = fetch(&client, &caller, &id).await?;
    let expected = if_match(&headers)?.unwrap_or(current.version);
    let mut document = proto_json::to_json(ASSISTANT, &current);
    if let Some(object) = document.as_object_mut() {
        for field in SERVER_FIELDS {
            object.remove(*field);
        }
    }
    merge_patch(&mut document, patch);
    let mut assistant: pb::Assistant = proto_json::from_json(ASSISTANT, document, SERVER_FIELDS)?;
    assistant.id = current.id;
    assistant.workspace_id = caller.workspace_id.clone();
    let saved = save(&client, request_id, assistant, Some(expected)).await?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Deletes an assistant.
#[utoipa::path(
    delete, path = "/assistants/{id}", tag = "assistants",
    params(("id" = String, Path, description = "The assistant's id, `asst_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_assistant(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    state
        .flows_for(&caller)?
        .delete_assistant(pb::DeleteAssistantRequest {
            workspace_id: caller.workspace_id.clone(),
            assistant_id: id.clone(),
            request_id,
        })
        .await?;
    Ok(Json(Deleted { id, deleted: true }))
}
