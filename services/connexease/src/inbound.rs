//! Inbound Connexease webhooks, `POST /connexease/webhooks/{workspace_id}`: the signature
//! is verified against the workspace's webhook secret, stale or unsigned calls are refused,
//! retries of one delivery are recognised by its id, and each delivery becomes a
//! `connexease.webhook_received` event (published as `events.<ws>.connexease.<event>`).
//! Where it should, the linked conversation here follows: archived there becomes archived
//! here, an assignment there is recorded here.
//!
//! Answers: 200 (also for a duplicate), 400 (not JSON, missing fields, stale), 401
//! (missing or bad signature), 404 (no connection), 503 (our conversations service
//! failed: Connexease retries the delivery).

use std::sync::Arc;
use switchboard_contract::event_types::connexease_hooks as hooks;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message as _;
use serde_json::{Value as Json, json};
use switchboard_clients::ConversationsClient;
use switchboard_eventlog::{EventLogError, ExpectedVersion, Metadata, NewEvent, StreamRef};
use switchboard_proto::connexease::v1::{Link, WebhookReceived};
use switchboard_proto::conversations::v1::{AssignRequest, SetStatusRequest};
use switchboard_proto::events::v1::ConversationStatus;
use uuid::Uuid;

use crate::domain::event_types;
use crate::service::ConnexeaseService;
use crate::signature;
use crate::store::ConnexeaseStore;

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// What a webhook may change in our conversations.
#[async_trait]
pub trait Conversations: Send + Sync {
    /// Archives our conversation; `request_id` makes a repeat change nothing.
    async fn archive(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
    ) -> Result<(), String>;
    /// Records who Connexease assigned the conversation to.
    async fn assign(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        group: &str,
        agent: &str,
        request_id: &str,
    ) -> Result<(), String>;
}

#[derive(Clone)]
struct Inbound {
    service: ConnexeaseService,
    store: ConnexeaseStore,
    conversations: Option<Arc<dyn Conversations>>,
}

/// The webhook routes, to merge into the service's HTTP server.
pub fn router(
    service: ConnexeaseService,
    store: ConnexeaseStore,
    conversations: Option<Arc<dyn Conversations>>,
) -> Router {
    Router::new()
        .route("/connexease/webhooks/{workspace_id}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Inbound {
            service,
            store,
            conversations,
        })
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn receive(
    State(inbound): State<Inbound>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !switchboard_runtime::requests::valid_prefixed_id(&workspace_id, "ws_") {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no such workspace");
    }
    let state = match inbound.service.load(&workspace_id).await {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(error = %e, "connexease webhook: cannot load the connection");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            );
        }
    };
    let Some(secret) = state
        .connected()
        .and_then(|c| inbound.service.webhook_secret(c))
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_connected",
            "the workspace has no Connexease connection",
        );
    };
    let Some(sign) = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "X-Connexease-Webhook-Sign is required",
        );
    };
    if !signature::verify(secret.expose(), &body, sign) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not match the body",
        );
    }
    let payload: Json = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "not_json", e.to_string()),
    };
    let (Some(delivery_id), Some(kind), Some(created_at)) = (
        payload["id"].as_str().filter(|id| valid_delivery_id(id)),
        payload["event"].as_str().filter(|e| valid_event(e)),
        payload["created_at"].as_i64(),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a webhook needs `id`, `event` and `created_at` (unix seconds)",
        );
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - created_at).abs() > signature::TOLERANCE_SECS {
        return refuse(
            StatusCode::BAD_REQUEST,
            "stale",
            format!(
                "created_at is more than {} s from now; replayed deliveries are refused",
                signature::TOLERANCE_SECS
            ),
        );
    }
    let stream = StreamRef::new(
        "connexease_webhook",
        format!("{workspace_id}/{delivery_id}"),
    );
    match inbound.service.log().read_stream(&stream, 0, 1).await {
        Ok(seen) if !seen.is_empty() => {
            return (StatusCode::OK, axum::Json(json!({"duplicate": true}))).into_response();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "connexease webhook: cannot read the log");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            );
        }
    }
    let data = payload["data"].clone();
    let conversation_id = match inbound
        .apply(&workspace_id, delivery_id, kind, &data, &state)
        .await
    {
        Ok(conversation_id) => conversation_id,
        Err(e) => {
            tracing::warn!(error = %e, event = kind, "connexease webhook: not applied; Connexease will retry");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            );
        }
    };
    let received = WebhookReceived {
        delivery_id: delivery_id.to_owned(),
        event: kind.to_owned(),
        data_json: data.to_string(),
        sent_at: Some(prost_types::Timestamp {
            seconds: created_at,
            nanos: 0,
        }),
        conversation_id,
    };
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_types::WEBHOOK_RECEIVED.into(),
        schema_version: 1,
        payload: received.encode_to_vec(),
        metadata: Metadata {
            workspace_id: workspace_id.clone(),
            correlation_id: delivery_id.to_owned(),
            occurred_at: switchboard_eventlog::now_micros(),
            ..Default::default()
        },
    };
    match inbound
        .service
        .log()
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
    {
        Ok(_) => (StatusCode::OK, axum::Json(json!({"received": true}))).into_response(),
        // A retry of the same delivery won the race; its effects are the same.
        Err(EventLogError::Conflict { .. }) => {
            (StatusCode::OK, axum::Json(json!({"duplicate": true}))).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "connexease webhook: cannot record it");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            )
        }
    }
}

impl Inbound {
    /// Makes the linked conversation follow; answers our conversation's id when linked.
    async fn apply(
        &self,
        workspace_id: &str,
        delivery_id: &str,
        kind: &str,
        data: &Json,
        state: &crate::service::State,
    ) -> Result<String, String> {
        let text = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
        if !kind.starts_with(hooks::CONVERSATION_PREFIX) {
            return Ok(String::new());
        }
        let external = text("id");
        let existing = self
            .store
            .link_by_external(workspace_id, &external)
            .await
            .map_err(|e| e.to_string())?;
        let mut link = match (existing, kind) {
            (Some(link), _) => link,
            // Created from one of our conversations (its id travels as `external_id`):
            // link it now.
            (None, hooks::CONVERSATION_CREATED) if data["external_id"].is_string() => Link {
                conversation_id: text("external_id"),
                external_conversation_id: external.clone(),
                ..Default::default()
            },
            (None, _) => return Ok(String::new()),
        };
        let before = link.clone();
        link.external_customer_id = text("customer_id");
        link.external_status = text("status");
        link.group_id = text("group_id");
        link.agent_id = text("agent_id");
        if link != before {
            self.service
                .record_link(workspace_id, link.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        let request_id = format!("connexease-{delivery_id}");
        if let Some(conversations) = &self.conversations {
            match kind {
                hooks::CONVERSATION_ARCHIVED => {
                    conversations
                        .archive(workspace_id, &link.conversation_id, &request_id)
                        .await?;
                }
                hooks::CONVERSATION_ASSIGNED
                | hooks::CONVERSATION_AUTO_ASSIGN
                | hooks::CONVERSATION_GROUP_CHANGED => {
                    let directory = state.directory.clone().unwrap_or_default();
                    let group = directory
                        .groups
                        .iter()
                        .find(|g| g.id == link.group_id)
                        .map_or(link.group_id.clone(), |g| g.name.clone());
                    let agent = directory
                        .agents
                        .iter()
                        .find(|a| a.id == link.agent_id)
                        .map_or(link.agent_id.clone(), |a| a.email.clone());
                    conversations
                        .assign(
                            workspace_id,
                            &link.conversation_id,
                            &group,
                            &agent,
                            &request_id,
                        )
                        .await?;
                }
                _ => {}
            }
        }
        Ok(link.conversation_id)
    }
}

fn valid_delivery_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

fn valid_event(event: &str) -> bool {
    (1..=64).contains(&event.len())
        && event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
}

/// Not found and failed preconditions are final (the conversation is gone or ended); the
/// rest may pass, so Connexease's retry is worth it.
fn settled(status: tonic::Status) -> Result<(), String> {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            tracing::info!(error = %status.message(), "connexease webhook: the conversation did not take the change");
            Ok(())
        }
        _ => Err(format!("conversations: {}", status.message())),
    }
}

/// The conversations service over gRPC: the service token, the caller's name and the
/// current span's trace context go with every call.
#[async_trait]
impl Conversations for ConversationsClient {
    async fn archive(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
    ) -> Result<(), String> {
        let request = SetStatusRequest {
            expected_version: 0,
            workspace_id: workspace_id.into(),
            request_id: format!("{request_id}-status"),
            conversation_id: conversation_id.into(),
            status: ConversationStatus::Archived as i32,
        };
        match self.set_status(request).await {
            Ok(_) => Ok(()),
            Err(status) => settled(status),
        }
    }

    async fn assign(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        group: &str,
        agent: &str,
        request_id: &str,
    ) -> Result<(), String> {
        let request = AssignRequest {
            workspace_id: workspace_id.into(),
            request_id: format!("{request_id}-assign"),
            conversation_id: conversation_id.into(),
            group: group.into(),
            agent: agent.into(),
        };
        // The client's own `assign`, not this trait's.
        match ConversationsClient::assign(self, request).await {
            Ok(_) => Ok(()),
            Err(status) => settled(status),
        }
    }
}
