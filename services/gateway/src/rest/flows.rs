//! `/v1/flows`: flows and workflows, each a draft and immutable published versions, over
//! the flows service's gRPC API. A flow is the `Flow` message as JSON (see
//! [`super::proto_json`]); its graph is the `Graph` message.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use switchboard_clients::FlowsClient;
use switchboard_proto::flows::v1 as pb;
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

const RESOURCE: &str = "flows";
const FLOW: &str = "switchboard.flows.v1.Flow";
const VERSION: &str = "switchboard.flows.v1.FlowVersion";
const CREATE: &str = "switchboard.flows.v1.CreateFlowRequest";
const GRAPH: &str = "switchboard.flows.v1.Graph";

proto_schema!(
    /// A flow: its draft graph, and which version is published.
    FlowJson = "switchboard.flows.v1.Flow" as "Flow",
    omit [],
    strict = false
);
proto_schema!(
    /// A flow to create: its name, kind, description and first draft.
    FlowInput = "switchboard.flows.v1.CreateFlowRequest" as "FlowInput",
    omit ["workspace_id", "request_id"],
    strict = true
);
proto_schema!(
    /// A flow's graph: nodes and edges.
    Graph = "switchboard.flows.v1.Graph" as "Graph",
    omit [],
    strict = true
);
proto_schema!(
    /// A published version of a flow.
    FlowVersion = "switchboard.flows.v1.FlowVersion" as "FlowVersion",
    omit [],
    strict = false
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flows, create_flow))
        .routes(routes!(get_flow, save_draft, patch_draft, delete_flow))
        .routes(routes!(publish))
        .routes(routes!(undo))
        .routes(routes!(list_versions))
}

fn flow_ref(caller: &Caller, id: &str) -> pb::FlowRef {
    pb::FlowRef {
        workspace_id: caller.workspace_id.clone(),
        flow_id: id.to_owned(),
    }
}

fn with_etag(status: StatusCode, flow: pb::Flow) -> Response {
    let version = flow.version;
    tagged(status, proto_json::to_json(FLOW, &flow), version)
}

/// Filters of the flow list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    /// `FLOW_KIND_CONVERSATION_FLOW`, `FLOW_KIND_ACTION_WORKFLOW` or
    /// `FLOW_KIND_POST_CONVERSATION_WORKFLOW`.
    pub kind: Option<String>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists the workspace's flows.
#[utoipa::path(
    get, path = "/flows", tag = "flows", params(FlowFilter),
    responses(
        (status = 200, description = "One page of flows", body = List<FlowJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_flows(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_limit(filter.limit)?;
    let kind = match filter.kind.as_deref() {
        None => pb::FlowKind::Unspecified,
        Some(name) => pb::FlowKind::from_str_name(name)
            .filter(|k| *k != pb::FlowKind::Unspecified)
            .ok_or_else(|| ApiError::field("query.kind", "a FLOW_KIND_... name"))?,
    };
    let answer = state
        .flows_for(&caller)?
        .list_flows(pb::ListFlowsRequest {
            workspace_id: caller.workspace_id.clone(),
            kind: kind as i32,
            page_size: limit,
            cursor: filter.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Value> = answer
        .flows
        .iter()
        .map(|f| proto_json::to_json(FLOW, f))
        .collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page("/v1/flows", limit, data, next))
}

/// Creates a flow with its first draft.
#[utoipa::path(
    post, path = "/flows", tag = "flows", request_body = FlowInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_flow(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut request: pb::CreateFlowRequest =
        proto_json::from_json(CREATE, body, &["workspace_id", "request_id"])?;
    request.workspace_id = caller.workspace_id.clone();
    request.request_id = request_id;
    let created = state.flows_for(&caller)?.create_flow(request).await?;
    Ok(with_etag(StatusCode::CREATED, created))
}

/// Gets a flow.
#[utoipa::path(
    get, path = "/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "The flow's id, `flow_...`")),
    responses(
        (status = 200, description = "The flow", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_flow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let flow = state
        .flows_for(&caller)?
        .get_flow(flow_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, flow))
}

async fn store_draft(
    client: &FlowsClient,
    caller: &Caller,
    id: String,
    draft: pb::Graph,
    expected: Option<u64>,
) -> Result<Response, ApiError> {
    let saved = client
        .save_draft(pb::SaveDraftRequest {
            workspace_id: caller.workspace_id.clone(),
            flow_id: id,
            draft: Some(draft),
            expected_version: expected.unwrap_or(0),
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::FLOW_STALE_VERSION))?;
    Ok(with_etag(StatusCode::OK, saved))
}

/// Replaces the flow's draft with this graph. With `If-Match`, only at that version.
#[utoipa::path(
    put, path = "/flows/{id}", tag = "flows",
    params(
        ("id" = String, Path, description = "The flow's id, `flow_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = Graph,
    responses(
        (status = 200, description = "The flow with its new draft", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn save_draft(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let draft: pb::Graph = proto_json::from_json(GRAPH, body, &[])?;
    let client = state.flows_for(&caller)?;
    store_draft(&client, &caller, id, draft, if_match(&headers)?).await
}

/// Changes the flow's draft by a JSON merge patch (RFC 7396) of its graph. With
/// `If-Match`, only at that version.
#[utoipa::path(
    patch, path = "/flows/{id}", tag = "flows",
    params(
        ("id" = String, Path, description = "The flow's id, `flow_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body(content = Object, description = "A merge patch of the draft `Graph`"),
    responses(
        (status = 200, description = "The flow with its new draft", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_draft(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(patch): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    if !patch.is_object() {
        return Err(ApiError::field("body", "a JSON object (a merge patch)"));
    }
    let client = state.flows_for(&caller)?;
    let current = client.get_flow(flow_ref(&caller, &id)).await?;
    let expected = if_match(&headers)?.unwrap_or(current.version);
    let mut graph = proto_json::to_json(GRAPH, &current.draft.unwrap_or_default());
    merge_patch(&mut graph, patch);
    let draft: pb::Graph = proto_json::from_json(GRAPH, graph, &[])?;
    store_draft(&client, &caller, id, draft, Some(expected)).await
}

/// Deletes a flow (refused while an assistant runs it). Runs already started go on.
#[utoipa::path(
    delete, path = "/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "The flow's id, `flow_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_flow(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    state
        .flows_for(&caller)?
        .delete_flow(pb::DeleteFlowRequest {
            workspace_id: caller.workspace_id.clone(),
            flow_id: id.clone(),
            request_id,
        })
        .await?;
    Ok(Json(Deleted { id, deleted: true }))
}

/// A publication.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// What changed, for the version list.
    #[serde(default)]
    pub note: String,
}

/// Publishes the draft as the next version. With `If-Match`, only at that version.
#[utoipa::path(
    post, path = "/flows/{id}/publish", tag = "flows",
    params(
        ("id" = String, Path, description = "The flow's id, `flow_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the draft was read at"),
    ),
    request_body = Publish,
    responses(
        (status = 200, description = "The flow, its draft published", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Publish>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let published = state
        .flows_for(&caller)?
        .publish(pb::PublishRequest {
            workspace_id: caller.workspace_id.clone(),
            flow_id: id,
            note: body.note,
            expected_version: if_match(&headers)?.unwrap_or(0),
        })
        .await
        .map_err(|s| stale_as_412(s, &codes::FLOW_STALE_VERSION))?;
    Ok(with_etag(StatusCode::OK, published))
}

/// Discards the draft: back to the last published version.
#[utoipa::path(
    post, path = "/flows/{id}/undo", tag = "flows",
    params(("id" = String, Path, description = "The flow's id, `flow_...`")),
    responses(
        (status = 200, description = "The flow without its draft", body = FlowJson, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn undo(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let flow = state
        .flows_for(&caller)?
        .discard_draft(flow_ref(&caller, &id))
        .await?;
    Ok(with_etag(StatusCode::OK, flow))
}

/// Lists a flow's published versions, newest first.
#[utoipa::path(
    get, path = "/flows/{id}/versions", tag = "flows",
    params(("id" = String, Path, description = "The flow's id, `flow_...`"), Page),
    responses(
        (status = 200, description = "One page of versions", body = List<FlowVersion>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let after: u32 = match page_of.cursor.as_deref() {
        None => u32::MAX,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::field("query.cursor", "not a cursor this list gave"))?,
    };
    let mut versions = state
        .flows_for(&caller)?
        .list_versions(flow_ref(&caller, &id))
        .await?
        .versions;
    versions.sort_by_key(|v| std::cmp::Reverse(v.number));
    let rest: Vec<_> = versions.into_iter().filter(|v| v.number < after).collect();
    let more = rest.len() > limit as usize;
    let page_items: Vec<_> = rest.into_iter().take(limit as usize).collect();
    let next = more
        .then(|| page_items.last().map(|v| v.number.to_string()))
        .flatten();
    let data: Vec<Value> = page_items
        .iter()
        .map(|v| proto_json::to_json(VERSION, v))
        .collect();
    Ok(page(&format!("/v1/flows/{id}/versions"), limit, data, next))
}
