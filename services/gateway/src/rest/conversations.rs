//! `/v1/conversations`: the workspace's conversations and their messages, over the
//! conversations service's gRPC API.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_proto::conversations::v1 as api;
use switchboard_proto::events::v1 as pb;
use switchboard_runtime::codes;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem, stale_as_412};
use super::{
    AppState, List, Page, RequestKey, cursor_of, if_match, page, page_limit, parse_time, rfc3339,
    tagged,
};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "conversations";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversations, start_conversation))
        .routes(routes!(get_conversation, update_conversation))
        .routes(routes!(list_messages, add_message))
}

/// Where a conversation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Widget,
    Whatsapp,
    Slack,
    Email,
    Voice,
    Api,
}

impl Channel {
    fn from_pb(value: i32) -> Option<Self> {
        Some(match pb::Channel::try_from(value).ok()? {
            pb::Channel::Widget => Self::Widget,
            pb::Channel::Whatsapp => Self::Whatsapp,
            pb::Channel::Slack => Self::Slack,
            pb::Channel::Email => Self::Email,
            pb::Channel::Voice => Self::Voice,
            pb::Channel::Api => Self::Api,
            pb::Channel::Unspecified => return None,
        })
    }

    fn to_pb(self) -> pb::Channel {
        match self {
            Self::Widget => pb::Channel::Widget,
            Self::Whatsapp => pb::Channel::Whatsapp,
            Self::Slack => pb::Channel::Slack,
            Self::Email => pb::Channel::Email,
            Self::Voice => pb::Channel::Voice,
            Self::Api => pb::Channel::Api,
        }
    }
}

/// Where a conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    OnHold,
    Resolved,
    Archived,
}

impl Status {
    fn from_pb(value: i32) -> Option<Self> {
        Some(match pb::ConversationStatus::try_from(value).ok()? {
            pb::ConversationStatus::Active => Self::Active,
            pb::ConversationStatus::OnHold => Self::OnHold,
            pb::ConversationStatus::Resolved => Self::Resolved,
            pb::ConversationStatus::Archived => Self::Archived,
            pb::ConversationStatus::Unspecified => return None,
        })
    }

    fn to_pb(self) -> pb::ConversationStatus {
        match self {
            Self::Active => pb::ConversationStatus::Active,
            Self::OnHold => pb::ConversationStatus::OnHold,
            Self::Resolved => pb::ConversationStatus::Resolved,
            Self::Archived => pb::ConversationStatus::Archived,
        }
    }
}

/// How a customer or a message feels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sentiment {
    Positive,
    Neutral,
    Negative,
    Mixed,
}

impl Sentiment {
    fn from_pb(value: i32) -> Option<Self> {
        Some(match pb::Sentiment::try_from(value).ok()? {
            pb::Sentiment::Positive => Self::Positive,
            pb::Sentiment::Neutral => Self::Neutral,
            pb::Sentiment::Negative => Self::Negative,
            pb::Sentiment::Mixed => Self::Mixed,
            pb::Sentiment::Unspecified => return None,
        })
    }

    fn to_pb(self) -> pb::Sentiment {
        match self {
            Self::Positive => pb::Sentiment::Positive,
            Self::Neutral => pb::Sentiment::Neutral,
            Self::Negative => pb::Sentiment::Negative,
            Self::Mixed => pb::Sentiment::Mixed,
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    Customer,
    /// The AI agent.
    Agent,
    /// A person of the workspace (an operator).
    Human,
    System,
}

impl Author {
    fn from_pb(value: i32) -> Option<Self> {
        Some(match pb::Author::try_from(value).ok()? {
            pb::Author::Customer => Self::Customer,
            pb::Author::Agent => Self::Agent,
            pb::Author::Human => Self::Human,
            pb::Author::System => Self::System,
            pb::Author::Unspecified => return None,
        })
    }

    fn to_pb(self) -> pb::Author {
        match self {
            Self::Customer => pb::Author::Customer,
            Self::Agent => pb::Author::Agent,
            Self::Human => pb::Author::Human,
            Self::System => pb::Author::System,
        }
    }
}

/// The customer, as far as they told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lead {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: String,
}

/// Who handles the conversation on the help desk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Assignment {
    pub group: String,
    pub agent: String,
}

/// What the analysis found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Analysis {
    /// The main topic.
    pub topic: String,
    /// Every topic, the main one among them.
    pub topics: Vec<String>,
    pub sentiment: Option<Sentiment>,
    pub custom: BTreeMap<String, String>,
}

/// A conversation as it now is.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "conv_01jd2x4p5r8m6k3v9c7b1n0q2w", "url": "/v1/conversations/conv_01jd2x4p5r8m6k3v9c7b1n0q2w",
    "channel": "api", "status": "active", "user_id": "user_42",
    "lead": {"name": "Ada", "email": "ada@example.com"}, "agent_id": "",
    "metafields": {"plan": "pro"}, "assignment": null, "analysis": null,
    "message_count": 2, "ended": false, "end_reason": null,
    "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:01:00Z",
    "ended_at": null, "version": 3
}))]
pub struct Conversation {
    pub id: String,
    /// This conversation in the API.
    pub url: String,
    pub channel: Option<Channel>,
    pub status: Option<Status>,
    pub user_id: String,
    pub lead: Lead,
    pub agent_id: String,
    pub metafields: BTreeMap<String, String>,
    pub assignment: Option<Assignment>,
    pub analysis: Option<Analysis>,
    pub message_count: u64,
    pub ended: bool,
    pub end_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    pub ended_at: Option<String>,
    /// The conversation's version: its `ETag`, and what `If-Match` names.
    pub version: u64,
}

impl From<pb::Conversation> for Conversation {
    fn from(c: pb::Conversation) -> Self {
        Self {
            url: format!("/v1/conversations/{}", c.id),
            id: c.id,
            channel: Channel::from_pb(c.channel),
            status: Status::from_pb(c.status),
            user_id: c.user_id,
            lead: c
                .lead
                .map(|l| Lead {
                    name: l.name,
                    email: l.email,
                })
                .unwrap_or_default(),
            agent_id: c.agent_id,
            metafields: c.metafields.into_iter().collect(),
            assignment: c
                .assignment
                .filter(|a| !a.group.is_empty() || !a.agent.is_empty())
                .map(|a| Assignment {
                    group: a.group,
                    agent: a.agent,
                }),
            analysis: c.analysis.map(|a| Analysis {
                topic: a.topic,
                topics: a.topics,
                sentiment: Sentiment::from_pb(a.sentiment),
                custom: a.custom.into_iter().collect(),
            }),
            message_count: c.message_count,
            ended: c.ended,
            end_reason: (!c.end_reason.is_empty()).then_some(c.end_reason),
            created_at: rfc3339(c.created_at.as_ref()).unwrap_or_default(),
            updated_at: rfc3339(c.updated_at.as_ref()).unwrap_or_default(),
            ended_at: rfc3339(c.ended_at.as_ref()),
            version: c.version,
        }
    }
}

/// A message of a conversation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    /// Its place in the conversation, from 1.
    pub sequence: u64,
    pub author: Option<Author>,
    /// `text`, `form`, `buttons`, `form_submission` or `button_click`.
    pub kind: String,
    pub text: String,
    pub sentiment: Option<Sentiment>,
    pub created_at: String,
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Self {
        let kind = match pb::MessageKind::try_from(m.kind) {
            Ok(pb::MessageKind::Form) => "form",
            Ok(pb::MessageKind::Buttons) => "buttons",
            Ok(pb::MessageKind::FormSubmission) => "form_submission",
            Ok(pb::MessageKind::ButtonClick) => "button_click",
            _ => "text",
        };
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            sequence: m.sequence,
            author: Author::from_pb(m.author),
            kind: kind.to_owned(),
            text: m.text,
            sentiment: Sentiment::from_pb(m.sentiment),
            created_at: rfc3339(m.created_at.as_ref()).unwrap_or_default(),
        }
    }
}

fn with_etag(status: StatusCode, conversation: pb::Conversation) -> Response {
    let version = conversation.version;
    tagged(status, Conversation::from(conversation), version)
}

/// Filters of the conversation list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// Only conversations in one of these statuses, comma-separated
    /// (`active,on_hold`).
    #[param(example = "active,on_hold")]
    pub status: Option<String>,
    /// Only conversations on this channel.
    pub channel: Option<Channel>,
    /// Only conversations created at or after this time (RFC 3339).
    pub created_after: Option<String>,
    /// Only conversations created before this time (RFC 3339).
    pub created_before: Option<String>,
    /// Only conversations updated at or after this time (RFC 3339).
    pub updated_after: Option<String>,
    /// Only conversations updated before this time (RFC 3339).
    pub updated_before: Option<String>,
    /// Only conversations of this assistant (their `assistant_id` metafield). Answered from
    /// the insights read model, which trails new conversations by moments.
    pub assistant_id: Option<String>,
    /// Only conversations in this saved segment (`/v1/insights/segments`). Answered from the
    /// insights read model, which trails new conversations by moments.
    pub segment_id: Option<String>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists the workspace's conversations, newest first.
#[utoipa::path(
    get, path = "/conversations", tag = "conversations",
    params(ListFilter),
    responses(
        (status = 200, description = "One page of conversations", body = List<Conversation>,
            headers(("Link" = String, description = "`<...>; rel=\"next\"` when more follow"))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<ListFilter>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let page_size = page_limit(filter.limit)?;
    let time = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| parse_time(&format!("query.{field}"), v))
            .transpose()
    };
    let updated_since = time("updated_after", &filter.updated_after)?;
    let updated_before = time("updated_before", &filter.updated_before)?;
    let created_after = time("created_after", &filter.created_after)?;
    let created_before = time("created_before", &filter.created_before)?;
    let statuses = filter
        .status
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            serde_json::from_value::<Status>(serde_json::Value::String(s.to_owned()))
                .map(|status| status.to_pb() as i32)
                .map_err(|_| {
                    ApiError::field(
                        "query.status",
                        format!("`{s}` is not one of active, on_hold, resolved, archived"),
                    )
                })
        })
        .collect::<Result<Vec<i32>, ApiError>>()?;
    let mut request = api::ListConversationsRequest {
        workspace_id: caller.workspace_id.clone(),
        statuses,
        channel: filter.channel.map_or(0, |c| c.to_pb() as i32),
        updated_since,
        updated_before,
        created_after,
        created_before,
        limit: page_size,
        cursor: filter.cursor.clone().unwrap_or_default(),
        status: 0,
        ids: vec![],
    };
    // By assistant or segment: the page of ids comes from insights, the conversations
    // from their own service (the other filters apply on both sides).
    let mut next_cursor = None;
    if filter.assistant_id.is_some() || filter.segment_id.is_some() {
        let page_of_ids = conversation_ids(&state, &caller, &filter, &request).await?;
        next_cursor = Some(page_of_ids.next_cursor);
        request.ids = page_of_ids.conversation_ids;
        request.cursor = String::new();
        if request.ids.is_empty() {
            return Ok(page(
                "/v1/conversations",
                page_size,
                Vec::<Conversation>::new(),
                None,
            ));
        }
    }
    let answer = state
        .conversations
        .with_actor(&caller.actor())
        .list_conversations(request)
        .await?;
    let data: Vec<Conversation> = answer.conversations.into_iter().map(Into::into).collect();
    let next = cursor_of(next_cursor.unwrap_or(answer.next_cursor));
    Ok(page("/v1/conversations", page_size, data, next))
}

/// The ids of one page of the conversations of an assistant or a segment, from insights.
async fn conversation_ids(
    state: &AppState,
    caller: &Caller,
    filter: &ListFilter,
    request: &api::ListConversationsRequest,
) -> Result<switchboard_proto::insights::v1::ListConversationIdsResponse, ApiError> {
    use switchboard_proto::insights::v1 as insights;
    // Each condition, and the parameter that made it (for errors).
    let mut conditions = Vec::new();
    let mut made_by = Vec::new();
    let mut condition = |dimension: &str, values: Vec<String>, parameter: &'static str| {
        conditions.push(insights::Condition {
            dimension: dimension.to_owned(),
            values,
        });
        made_by.push(parameter);
    };
    if let Some(assistant) = &filter.assistant_id {
        condition("assistant", vec![assistant.clone()], "assistant_id");
    }
    if let Some(channel) = filter.channel {
        let name = serde_json::to_value(channel)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        condition("channel", vec![name], "channel");
    }
    if let Some(statuses) = filter.status.as_deref().filter(|s| !s.trim().is_empty()) {
        let values = statuses.split(',').map(|s| s.trim().to_owned()).collect();
        condition("status", values, "status");
    }
    state
        .insights_for(caller)?
        .list_conversation_ids(insights::ListConversationIdsRequest {
            workspace_id: caller.workspace_id.clone(),
            filter: Some(insights::Filter {
                conditions,
                from: request.created_after,
                to: request.created_before,
                segment_id: filter.segment_id.clone().unwrap_or_default(),
            }),
            updated_after: request.updated_since,
            updated_before: request.updated_before,
            limit: request.limit,
            cursor: request.cursor.clone(),
        })
        .await
        .map_err(|status| {
            super::insights::renamed(
                status.into(),
                &made_by,
                &[
                    ("filter.from", "created_after"),
                    ("filter.to", "created_before"),
                    ("cursor", "cursor"),
                ],
            )
        })
}

/// A conversation to start.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": "user_42", "lead": {"name": "Ada"}, "metafields": {"plan": "pro"}}))]
pub struct StartConversation {
    /// Defaults to `api`.
    pub channel: Option<Channel>,
    /// Your id of the customer.
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub lead: Lead,
    /// Up to 100 keys (`[a-z0-9_.-]{1,64}`), values up to 4 KiB.
    #[serde(default)]
    pub metafields: BTreeMap<String, String>,
}

/// Starts a conversation (on the `api` channel unless another is given).
#[utoipa::path(
    post, path = "/conversations", tag = "conversations",
    request_body = StartConversation,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Started", body = Conversation, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn start_conversation(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<StartConversation>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let answer = state
        .conversations
        .with_actor(&caller.actor())
        .start_conversation(api::StartConversationRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            channel: body.channel.unwrap_or(Channel::Api).to_pb() as i32,
            user_id: body.user_id,
            lead: Some(pb::Lead {
                name: body.lead.name,
                email: body.lead.email,
            }),
            metafields: body.metafields.into_iter().collect(),
            ..Default::default()
        })
        .await?;
    Ok(with_etag(
        StatusCode::CREATED,
        answer.conversation.unwrap_or_default(),
    ))
}

async fn fetch(state: &AppState, caller: &Caller, id: &str) -> Result<pb::Conversation, ApiError> {
    Ok(state
        .conversations
        .with_actor(&caller.actor())
        .get_conversation(api::GetConversationRequest {
            workspace_id: caller.workspace_id.clone(),
            conversation_id: id.to_owned(),
        })
        .await?
        .conversation
        .unwrap_or_default())
}

/// Gets a conversation. `If-None-Match` with its `ETag` answers 304.
#[utoipa::path(
    get, path = "/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "The conversation's id, `conv_...`")),
    responses(
        (status = 200, description = "The conversation", body = Conversation, headers(("ETag" = String))),
        (status = 304, description = "Not modified since the `If-None-Match` version"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    // `If-None-Match` is answered for every GET, from this `ETag` (see `conditional_get`).
    let conversation = fetch(&state, &caller, &id).await?;
    Ok(with_etag(StatusCode::OK, conversation))
}

/// A change to a conversation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "status": "resolved", "metafields": {"plan": "enterprise", "trial": null},
    "analysis": {"topics": ["billing", "refunds"], "sentiment": "negative", "custom": {"urgency": "high"}}
}))]
pub struct UpdateConversation {
    pub status: Option<Status>,
    /// Metafields to set; a `null` value removes the key.
    #[serde(default)]
    pub metafields: BTreeMap<String, Option<String>>,
    /// Analysis labels to record: fields left out keep their value, custom keys are
    /// merged, `topics` replaces the list.
    pub analysis: Option<AnalysisChange>,
}

/// Analysis labels to record on a conversation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisChange {
    /// The main topic; the first of `topics` when left out.
    #[serde(default)]
    pub topic: String,
    /// Every topic, at most 20.
    #[serde(default)]
    pub topics: Vec<String>,
    pub sentiment: Option<Sentiment>,
    /// Custom analysis fields (`urgency`, `request_type`, `churn_risk`, ... or your own).
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
}

/// Changes a conversation's status, metafields and analysis labels. With `If-Match`, only if the
/// conversation is still at that version (412 otherwise).
#[utoipa::path(
    patch, path = "/conversations/{id}", tag = "conversations",
    params(
        ("id" = String, Path, description = "The conversation's id, `conv_...`"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on"),
    ),
    request_body = UpdateConversation,
    responses(
        (status = 200, description = "The conversation after the change", body = Conversation, headers(("ETag" = String))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_conversation(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(change): Json<UpdateConversation>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    // Each step is one append at the version the previous one left (the first at the
    // `If-Match` version, when given), so a concurrent change is never overwritten.
    let mut expected = if_match(&headers)?.unwrap_or(0);
    let client = state.conversations.with_actor(&caller.actor());
    let stale = |status: tonic::Status| stale_as_412(status, &codes::CONV_STALE_VERSION);
    let workspace_id = caller.workspace_id.clone();
    let (set, remove): (Vec<_>, Vec<_>) = change
        .metafields
        .into_iter()
        .partition(|(_, value)| value.is_some());
    let mut current = None;
    if !set.is_empty() {
        let changed = client
            .set_metafields(api::SetMetafieldsRequest {
                workspace_id: workspace_id.clone(),
                request_id: format!("{request_id}:metafields"),
                conversation_id: id.clone(),
                metafields: set
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect(),
                expected_version: expected,
            })
            .await
            .map_err(stale)?
            .conversation
            .unwrap_or_default();
        expected = changed.version;
        current = Some(changed);
    }
    if !remove.is_empty() {
        let changed = client
            .remove_metafields(api::RemoveMetafieldsRequest {
                workspace_id: workspace_id.clone(),
                request_id: format!("{request_id}:remove"),
                conversation_id: id.clone(),
                keys: remove.into_iter().map(|(k, _)| k).collect(),
                expected_version: expected,
            })
            .await
            .map_err(stale)?
            .conversation
            .unwrap_or_default();
        expected = changed.version;
        current = Some(changed);
    }
    if let Some(analysis) = change.analysis {
        let changed = client
            .record_analysis(api::RecordAnalysisRequest {
                workspace_id: workspace_id.clone(),
                request_id: format!("{request_id}:analysis"),
                conversation_id: id.clone(),
                topic: analysis.topic,
                sentiment: analysis.sentiment.map_or(0, |s| s.to_pb() as i32),
                custom: analysis.custom.into_iter().collect(),
                topics: analysis.topics,
                expected_version: expected,
            })
            .await
            .map_err(stale)?
            .conversation
            .unwrap_or_default();
        expected = changed.version;
        current = Some(changed);
    }
    if let Some(status) = change.status {
        let changed = client
            .set_status(api::SetStatusRequest {
                workspace_id,
                request_id: format!("{request_id}:status"),
                conversation_id: id.clone(),
                status: status.to_pb() as i32,
                expected_version: expected,
            })
            .await
            .map_err(stale)?
            .conversation
            .unwrap_or_default();
        current = Some(changed);
    }
    let current = match current {
        Some(current) => current,
        // Nothing to change: the conversation as it is, if still at the `If-Match` version.
        None => {
            let current = fetch(&state, &caller, &id).await?;
            if expected != 0 && current.version != expected {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    &codes::API_PRECONDITION_FAILED,
                    format!(
                        "the conversation is at version {}, not {expected}",
                        current.version
                    ),
                ));
            }
            current
        }
    };
    Ok(with_etag(StatusCode::OK, current))
}

/// Lists a conversation's messages, oldest first.
#[utoipa::path(
    get, path = "/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "The conversation's id, `conv_...`"), Page),
    responses(
        (status = 200, description = "One page of messages", body = List<Message>,
            headers(("Link" = String, description = "`<...>; rel=\"next\"` when more follow"))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let answer = state
        .conversations
        .with_actor(&caller.actor())
        .list_messages(api::ListMessagesRequest {
            workspace_id: caller.workspace_id.clone(),
            conversation_id: id.clone(),
            limit,
            cursor: page_of.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Message> = answer.messages.into_iter().map(Into::into).collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page(
        &format!("/v1/conversations/{id}/messages"),
        limit,
        data,
        next,
    ))
}

/// A message to add.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "An operator here: your refund is on its way.", "author": "human"}))]
pub struct AddMessage {
    /// Up to 32 KiB.
    pub text: String,
    /// `human` (an operator, the default), `customer` (an API channel's customer) or
    /// `system`.
    pub author: Option<Author>,
}

/// Adds an operator's (or an API channel customer's) message.
#[utoipa::path(
    post, path = "/conversations/{id}/messages", tag = "conversations",
    params(
        ("id" = String, Path, description = "The conversation's id, `conv_...`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request"),
    ),
    request_body = AddMessage,
    responses(
        (status = 201, description = "Added", body = Message),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn add_message(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    Json(body): Json<AddMessage>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let author = body.author.unwrap_or(Author::Human);
    if author == Author::Agent {
        return Err(ApiError::field(
            "author",
            "the agent speaks through flows; use human, customer or system",
        ));
    }
    let answer = state
        .conversations
        .with_actor(&caller.actor())
        .add_message(api::AddMessageRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            conversation_id: id,
            author: author.to_pb() as i32,
            kind: pb::MessageKind::Text as i32,
            text: body.text,
            ..Default::default()
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Message::from(answer.message.unwrap_or_default())),
    )
        .into_response())
}
