//! `/v1/actions`: what the agent can do in the outside world (HTTP calls, forms, buttons,
//! conversation updates, Connexease operations, calculations, validations, queries,
//! workflows), their test runs and execution log, over the actions service's gRPC API.
//! A definition is the `ActionDefinition` message as JSON (see [`super::proto_json`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use switchboard_clients::ActionsClient;
use switchboard_proto::actions::v1 as pb;
use switchboard_runtime::codes;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::collections::Deleted;
use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem, stale_as_412};
use super::proto_json::{self, proto_schema};
use super::{
    AppState, List, Page, RequestKey, cursor_of, if_match, merge_patch, page, page_limit, tagged,
};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "actions";
const DEFINITION: &str = "switchboard.actions.v1.ActionDefinition";
const EXECUTION: &str = "switchboard.actions.v1.ExecutionResult";
/// Fields of a definition the service sets.
const SERVER_FIELDS: &[&str] = &["id", "workspace_id", "version", "created_at", "updated_at"];

proto_schema!(
    /// An action definition.
    Action = "switchboard.actions.v1.ActionDefinition" as "Action",
    omit [],
    strict = false
);
proto_schema!(
    /// An action definition to store: `kind` and the one spec matching it.
    ActionInput = "switchboard.actions.v1.ActionDefinition" as "ActionInput",
    omit ["id", "workspace_id", "version", "created_at", "updated_at"],
    strict = true
);
proto_schema!(
    /// One execution of an action (or a test run).
    Execution = "switchboard.actions.v1.ExecutionResult" as "Execution",
    omit [],
    strict = false
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_actions, create_action))
        .routes(routes!(
            get_action,
            replace_action,
            patch_action,
            delete_action
        ))
        .routes(routes!(test_action))
        .routes(routes!(execute_action))
        .routes(routes!(list_executions))
}

fn with_etag(status: StatusCode, action: pb::ActionDefinition) -> Response {
    let version = action.version;
    tagged(status, proto_json::to_json(DEFINITION, &action), version)
}

/// Filters of the action list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActionFilter {
    /// Only enabled actions.
    #[serde(default)]
    pub enabled_only: bool,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists the workspace's actions, by name.
#[utoipa::path(
    get, path = "/actions", tag = "actions", params(ActionFilter),
    responses(
        (status = 200, description = "One page of actions", body = List<Action>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_actions(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<ActionFilter>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_limit(filter.limit)?;
    let answer = state
        .actions_for(&caller)?
        .list_actions(pb::ListActionsRequest {
            workspace_id: caller.workspace_id.clone(),
            enabled_only: filter.enabled_only,
            limit,
            cursor: filter.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Value> = answer
        .actions
        .iter()
        .map(|a| proto_json::to_json(DEFINITION, a))
        .collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page("/v1/actions", limit, data, next))
}

/// Creates an action.
#[utoipa::path(
    post, path = "/actions", tag = "actions", request_body = ActionInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = Action, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_action(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let definition: pb::ActionDefinition = proto_json::from_json(DEFINITION, body, SERVER_FIELDS)?;
    let created = state
        .actions_for(&caller)?
        .create_action(pb::CreateActionRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            definition: Some(definition),
        })
        .await?;
    Ok(with_etag(
        StatusCode::CREATED,
        created.action.unwrap_or_default(),
    ))
}

async fn fetch(
    client: &ActionsClient,
    caller: &Caller,
    id: &str,
) -> Result<pb::ActionDefinition, ApiError> {
    Ok(client
        .get_action(pb::GetActionRequest {
            workspace_id: caller.workspace_id.clone(),
            action_id: id.to_owned(),
        })
        .await?
        .action
        .unwrap_or_default())
}

/// Gets an action.
#[utoipa::path(
    get, path = "/actions/{id}", tag = "actions",
    params(("id" = String, Path, description = "The action's id, `act_...`")),
    responses(
        (status = 200, description = "The action", body = Action, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_action(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let client = state.actions_for(&caller)?;
    Ok(with_etag(
        StatusCode::OK,
        fetch(&client, &caller, &id).await?,
    ))
}

/// Stores `definition` as action `id`'s, at `expected` when given (412 otherwise).
async fn store(
    client: &ActionsClient,
    caller: &Caller,
    request_id: String,
    id: String,
    definition: pb::ActionDefinition,
    expected: Option<u64>,
) -> Result<Response, ApiError> {
    let updated = client
        .update_action(pb::UpdateActionRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            action_id: id,
            definition: Some(definition),
            expected_version: expected.unwrap_or(0),
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::ACT_STALE_VERSION))?;
    Ok(with_etag(
        StatusCode::OK,
        updated.action.unwrap_or_default(),
    ))
}

/// Replaces an action's definition. With `If-Match`, only at that version.
#[utoipa::path(
    put, path = "/actions/{id}", tag = "actions",
    params(
        ("id" = String, Path, description = "The action's id, `act_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = ActionInput,
    responses(
        (status = 200, description = "The action after the change", body = Action, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_action(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let definition: pb::ActionDefinition = proto_json::from_json(DEFINITION, body, SERVER_FIELDS)?;
    let client = state.actions_for(&caller)?;
    store(
        &client,
        &caller,
        request_id,
        id,
        definition,
        if_match(&headers)?,
    )
    .await
}

/// Changes some fields of an action: a JSON merge patch (RFC 7396) of its definition
/// (`{"enabled": false}`, `{"http": {"timeout_ms": 5000}}`). With `If-Match`, only at that
/// version.
#[utoipa::path(
    patch, path = "/actions/{id}", tag = "actions",
    params(
        ("id" = String, Path, description = "The action's id, `act_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body(content = Object, description = "A merge patch of the definition (fields of `ActionInput`)"),
    responses(
        (status = 200, description = "The action after the change", body = Action, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_action(
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
    let client = state.actions_for(&caller)?;
    let current = fetch(&client, &caller, &id).await?;
    let expected = if_match(&headers)?.unwrap_or(current.version);
    let mut document = proto_json::to_json(DEFINITION, &current);
    if let Some(object) = document.as_object_mut() {
        for field in SERVER_FIELDS {
            object.remove(*field);
        }
    }
    merge_patch(&mut document, patch);
    let definition: pb::ActionDefinition =
        proto_json::from_json(DEFINITION, document, SERVER_FIELDS)?;
    store(&client, &caller, request_id, id, definition, Some(expected)).await
}

/// Deletes an action; its execution log stays.
#[utoipa::path(
    delete, path = "/actions/{id}", tag = "actions",
    params(("id" = String, Path, description = "The action's id, `act_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_action(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    state
        .actions_for(&caller)?
        .delete_action(pb::DeleteActionRequest {
            workspace_id: caller.workspace_id.clone(),
            action_id: id.clone(),
            request_id,
        })
        .await?;
    Ok(Json(Deleted { id, deleted: true }))
}

/// A run's variables and what the caller vouches for.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"variables": {"input": {"order": "4711"}}, "conversation_id": "conv_01", "confirmed": true}))]
pub struct Run {
    /// What the action's templates read (`input.*`, `conversation.*`, ...).
    #[serde(default)]
    pub variables: serde_json::Map<String, Value>,
    /// The conversation it runs for (required by the kinds that act on one).
    #[serde(default)]
    pub conversation_id: String,
    /// The user confirmed it (required by actions with `confirmation_required`).
    #[serde(default)]
    pub confirmed: bool,
}

/// Runs an action for real, once per `Idempotency-Key` (a retry with the key answers the
/// recorded outcome). It runs as an API caller: at a human teammate's level, or a
/// workspace administrator's with an `admin` key; an action above that is refused with
/// outcome `forbidden`. A failed run is an outcome (200), not an error.
#[utoipa::path(
    post, path = "/actions/{id}/execute", tag = "actions",
    params(
        ("id" = String, Path, description = "The action's id, `act_...`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Runs the action once for the key"),
    ),
    request_body = Run,
    responses(
        (status = 200, description = "What the run did", body = Execution),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn execute_action(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    Json(body): Json<Run>,
) -> Result<Json<Value>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let level = if caller.scopes.iter().any(|s| s == "admin") {
        pb::PermissionLevel::Admin
    } else {
        pb::PermissionLevel::Human
    };
    let result = state
        .actions_for(&caller)?
        .execute_action(pb::ExecuteActionRequest {
            workspace_id: caller.workspace_id.clone(),
            action_id: id,
            variables_json: Value::Object(body.variables).to_string(),
            idempotency_key: request_id,
            confirmed: body.confirmed,
            caller_permission: level as i32,
            conversation_id: body.conversation_id,
            inject_result: false,
            triggered_by: pb::Trigger::Api as i32,
        })
        .await?;
    Ok(Json(proto_json::to_json(EXECUTION, &result)))
}

/// A test run's variables.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"variables": {"input": {"order": "4711"}}}))]
pub struct TestRun {
    /// What the action's templates read (`input.*`, `conversation.*`, ...).
    #[serde(default)]
    pub variables: serde_json::Map<String, Value>,
}

/// Runs an action once for real, as a test: recorded in the execution log as a test run.
#[utoipa::path(
    post, path = "/actions/{id}/test", tag = "actions",
    params(("id" = String, Path, description = "The action's id, `act_...`")),
    request_body = TestRun,
    responses(
        (status = 200, description = "What the run did", body = Execution),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn test_action(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<TestRun>,
) -> Result<Json<Value>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let result = state
        .actions_for(&caller)?
        .test_action(pb::TestActionRequest {
            workspace_id: caller.workspace_id.clone(),
            action_id: id,
            variables_json: Value::Object(body.variables).to_string(),
        })
        .await?;
    Ok(Json(proto_json::to_json(EXECUTION, &result)))
}

/// Lists an action's executions (test runs included), newest first.
#[utoipa::path(
    get, path = "/actions/{id}/executions", tag = "actions",
    params(("id" = String, Path, description = "The action's id, `act_...`"), Page),
    responses(
        (status = 200, description = "One page of executions", body = List<Execution>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_executions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let client = state.actions_for(&caller)?;
    // Another workspace's action (or a missing one) is a 404, not an empty list.
    fetch(&client, &caller, &id).await?;
    let answer = client
        .list_executions(pb::ListExecutionsRequest {
            workspace_id: caller.workspace_id.clone(),
            action_id: id.clone(),
            include_tests: true,
            limit,
            cursor: page_of.cursor.unwrap_or_default(),
            ..Default::default()
        })
        .await?;
    let data: Vec<Value> = answer
        .executions
        .iter()
        .map(|e| proto_json::to_json(EXECUTION, e))
        .collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page(
        &format!("/v1/actions/{id}/executions"),
        limit,
        data,
        next,
    ))
}
