//! Inbound Connexease webhooks, `POST /connexease/webhooks/{workspace_id}`, in the shape
//! Connexease publishes ([`crate::hooks`]): the signature is verified against the
//! workspace's webhook secret over the connection's signed input, the delivery is read, a
//! retry is recognised by its payload, and the delivery is recorded as one
//! `connexease.webhook_received` event (published as `events.<ws>.connexease.<hook>`).
//! The answer goes back as soon as that record is committed; what the delivery changes
//! here (links, our conversations, the directory) is done after, by [`Apply`], from the
//! log, so a slow or failing dependency never makes Connexease retry and drop.
//!
//! `conversation.auto_assign` is Connexease asking which agent to assign: it is answered
//! in the response, by the workspace's rule, and the answer is recorded (a retry gets the
//! same answer).
//!
//! Answers: 200 (also for a retry), 400 (not JSON, not a delivery, dated outside the
//! replay window), 401 (missing or bad signature), 404 (no connection), 413 (over
//! [`hooks::MAX_BODY`]), 503 (our store failed: Connexease retries).

use std::sync::Arc;

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
use switchboard_eventlog::{
    Command, CommandError, Decision, EventLogError, ExpectedVersion, HandleError, Handler,
    RecordedEvent, StreamRef, Tx, VersionOnly,
};
use switchboard_proto::connexease::v1::{
    AutoAssignAnswered, AutoAssignRule, Link, WebhookBody, WebhookReceived,
};
use switchboard_proto::conversations::v1::{AddMessageRequest, AssignRequest, SetStatusRequest};
use switchboard_proto::events::v1::{Author, ConversationStatus, MessageKind};

use crate::domain::event_types;
use crate::hooks::{self, Delivery, Malformed};
use crate::service::{ConnexeaseService, State as Connected, daily_stream, event, metadata};
use crate::signature;
use crate::store::ConnexeaseStore;

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
    /// Adds what a human agent wrote in Connexease to our conversation.
    async fn add_human_message(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        text: &str,
        request_id: &str,
    ) -> Result<(), String>;
}

/// The stream of one delivery.
pub fn delivery_stream(workspace_id: &str, delivery_id: &str) -> StreamRef {
    StreamRef::new(
        "connexease_webhook",
        format!("{workspace_id}/{delivery_id}"),
    )
}

/// The most of a delivery's `channel` kept: it travels in every published event.
const CHANNEL_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct Inbound {
    service: ConnexeaseService,
    store: ConnexeaseStore,
}

/// The webhook route, to merge into the service's HTTP server.
pub fn router(service: ConnexeaseService, store: ConnexeaseStore) -> Router {
    Router::new()
        .route("/connexease/webhooks/{workspace_id}", post(receive))
        .layer(DefaultBodyLimit::max(hooks::MAX_BODY))
        .with_state(Inbound { service, store })
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "connexease webhook: {what}; Connexease will retry");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "retry later",
    )
}

/// The answer to a delivery recorded now (`duplicate` false) or before: what an
/// auto-assign chose travels with it.
fn answered(duplicate: bool, received: &WebhookReceived) -> Response {
    let mut body = if duplicate {
        json!({"duplicate": true})
    } else {
        json!({"received": true})
    };
    if let Some(answer) = &received.auto_assign {
        // Assumed: how Connexease reads the chosen agent from the answer is not documented.
        body["agent"] = if answer.agent_id.is_empty() {
            Json::Null
        } else {
            json!({"uuid": answer.agent_id, "email": answer.agent_email})
        };
    }
    (StatusCode::OK, axum::Json(body)).into_response()
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
        Err(e) => return unavailable("cannot load the connection", e),
    };
    let Some((connection, secret)) = state
        .connected()
        .and_then(|c| Some((c, inbound.service.webhook_secret(c)?)))
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
    let signed = hooks::signed_input(&body, connection.webhook_signed_input());
    if !signed.is_some_and(|signed| signature::verify(secret.expose(), &signed, sign)) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not match the body",
        );
    }
    let delivery = match Delivery::parse(&body) {
        Ok(delivery) => delivery,
        Err(e @ Malformed::NotJson(_)) => {
            return refuse(StatusCode::BAD_REQUEST, "not_json", e.to_string());
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
    };
    if delivery.stale(time::OffsetDateTime::now_utc().unix_timestamp()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "stale",
            format!(
                "the delivery's timestamp is more than {} days old or from the future; \
                 replayed deliveries are refused",
                hooks::REPLAY_WINDOW_SECS / 86_400
            ),
        );
    }
    // A retry is the same delivery as the last one recorded for its hook and subject; the
    // same payload after another one about the subject is the subject changing back: a
    // new occurrence of the delivery, the next event of its stream.
    let stream = delivery_stream(&workspace_id, &delivery.id);
    let subject = delivery.subject.clone().unwrap_or_default();
    let latest = match inbound
        .store
        .latest_delivery(&workspace_id, &delivery.hook, &subject)
        .await
    {
        Ok(latest) => latest,
        Err(e) => return unavailable("cannot read the last deliveries", e),
    };
    let version = match recorded(&inbound, &stream).await {
        Ok((Some(last), _)) if latest.as_deref() == Some(delivery.id.as_str()) => {
            return answered(true, &last);
        }
        Ok((_, version)) => version,
        Err(e) => return unavailable("cannot read the log", e),
    };
    let link = match &delivery.conversation {
        Some(external) => match inbound
            .store
            .link_by_external(&workspace_id, external)
            .await
        {
            Ok(link) => link,
            Err(e) => return unavailable("cannot read the links", e),
        },
        None => None,
    };
    let auto_assign = if delivery.hook == hooks::CONVERSATION_AUTO_ASSIGN {
        match choose_agent(&inbound.service, &workspace_id, &delivery, &state).await {
            Ok(answer) => Some(answer),
            Err(e) => return unavailable("cannot record the auto-assign answer", e),
        }
    } else {
        None
    };
    let (data_json, mut abridged_fields) = delivery.published_payload();
    let channel_json = if delivery.channel.is_null() {
        String::new()
    } else {
        let channel = delivery.channel.to_string();
        if channel.len() > CHANNEL_BYTES {
            abridged_fields.push("channel".into());
            String::new()
        } else {
            channel
        }
    };
    let received = WebhookReceived {
        delivery_id: delivery.id.clone(),
        event: delivery.hook.clone(),
        data_json,
        sent_at: delivery
            .timestamp
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        conversation_id: link.map(|l| l.conversation_id).unwrap_or_default(),
        external_conversation_id: delivery.conversation.clone().unwrap_or_default(),
        external_customer_id: delivery.customer.clone().unwrap_or_default(),
        channel_json,
        body_bytes: body.len() as u64,
        abridged_fields,
        auto_assign,
        subject_id: subject,
    };
    let metadata = metadata(&workspace_id, &delivery.id);
    let mut events = vec![event(
        event_types::WEBHOOK_RECEIVED,
        received.encode_to_vec(),
        metadata.clone(),
    )];
    if !received.abridged_fields.is_empty() {
        let whole = WebhookBody {
            delivery_id: delivery.id.clone(),
            body: body.to_vec(),
        };
        events.push(event(
            event_types::WEBHOOK_BODY,
            whole.encode_to_vec(),
            metadata,
        ));
    }
    let expected = match version {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(v),
    };
    match inbound
        .service
        .log()
        .append(&stream, expected, events)
        .await
    {
        Ok(_) => answered(false, &received),
        // A retry of the same delivery was recorded first: answer what it recorded.
        Err(EventLogError::Conflict { .. }) => match recorded(&inbound, &stream).await {
            Ok((Some(first), _)) => answered(true, &first),
            Ok((None, _)) => answered(true, &received),
            Err(e) => unavailable("cannot read the log", e),
        },
        Err(e) => unavailable("cannot record it", e),
    }
}

/// The last occurrence of the delivery recorded in `stream`, if any, and the stream's
/// version.
async fn recorded(
    inbound: &Inbound,
    stream: &StreamRef,
) -> Result<(Option<WebhookReceived>, u64), EventLogError> {
    let events = inbound.service.log().read_stream(stream, 0, 1000).await?;
    let version = events.last().map_or(0, |e| e.stream_version);
    let last = events
        .iter()
        .rev()
        .find(|e| e.event_type == event_types::WEBHOOK_RECEIVED)
        .map(|e| e.decode())
        .transpose()?;
    Ok((last, version))
}

/// Answers an auto-assign by the workspace's rule and records the answer: round robin
/// takes the directory's online agents in turn.
async fn choose_agent(
    service: &ConnexeaseService,
    workspace_id: &str,
    delivery: &Delivery,
    state: &Connected,
) -> Result<AutoAssignAnswered, CommandError<std::convert::Infallible>> {
    let rule = state
        .connected()
        .map(|c| c.auto_assign_rule())
        .unwrap_or_default();
    let rule = match rule {
        AutoAssignRule::Unspecified => AutoAssignRule::RoundRobin,
        rule => rule,
    };
    let online: Vec<_> = state
        .directory
        .iter()
        .flat_map(|d| &d.agents)
        .filter(|a| a.availability == "online")
        .cloned()
        .collect();
    let stream = daily_stream("connexease_auto_assign", workspace_id);
    let executed = Command::new(service.log(), &stream)
        .attempts(10)
        .run(&VersionOnly, |loaded| {
            let mut answer = AutoAssignAnswered {
                delivery_id: delivery.id.clone(),
                external_conversation_id: delivery.conversation.clone().unwrap_or_default(),
                rule: rule as i32,
                ..Default::default()
            };
            match (rule, online.len()) {
                (AutoAssignRule::Decline, _) => {
                    answer.reason = "the workspace leaves auto-assignment to Connexease".into();
                }
                (_, 0) => answer.reason = "no agent of the directory is online".into(),
                (_, n) => {
                    let agent = &online[(loaded.version % n as u64) as usize];
                    answer.agent_id = agent.id.clone();
                    answer.agent_email = agent.email.clone();
                }
            }
            let answered = event(
                event_types::AUTO_ASSIGN_ANSWERED,
                answer.encode_to_vec(),
                metadata(workspace_id, &delivery.id),
            );
            Ok(Decision::new(vec![answered], answer))
        })
        .await?;
    Ok(executed.into_output())
}

/// Carries out recorded deliveries, after they were answered: links a conversation
/// Connexease created from ours, keeps links in step, archives and assigns our linked
/// conversations as Connexease did, adds what a human agent wrote there, and refreshes the
/// directory when an agent's status changes. Every change here is idempotent by the
/// delivery, so a redelivery changes nothing.
pub struct Apply {
    service: ConnexeaseService,
    store: ConnexeaseStore,
    conversations: Option<Arc<dyn Conversations>>,
}

impl Apply {
    pub fn new(
        service: ConnexeaseService,
        store: ConnexeaseStore,
        conversations: Option<Arc<dyn Conversations>>,
    ) -> Self {
        Self {
            service,
            store,
            conversations,
        }
    }

    /// Which events of the connexease log it carries out.
    pub fn wants(event: &RecordedEvent) -> bool {
        event.event_type == event_types::WEBHOOK_RECEIVED
    }

    async fn apply(&self, event: &RecordedEvent, received: &WebhookReceived) -> Result<(), String> {
        let workspace_id = event.workspace_id();
        let payload = self.payload(event, received).await?;
        // One request id per occurrence of the delivery: a redelivery changes nothing, a
        // change back (the same payload again, later) is carried out.
        let request_id = format!(
            "connexease-{}-{}",
            received.delivery_id, event.stream_version
        );
        if received.event == hooks::AGENT_STATUS_CHANGED {
            // Pulled in the background: a slow Connexease must not hold up the deliveries
            // of every workspace behind this one (the periodic sync catches a failure).
            let service = self.service.clone();
            let workspace_id = workspace_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = service.sync_directory(&workspace_id).await {
                    tracing::warn!(workspace = %workspace_id, error = %e, "could not sync the Connexease directory after agent.status_changed");
                }
            });
            return Ok(());
        }
        let Some(link) = self.link(workspace_id, received, &payload).await? else {
            return Ok(());
        };
        let Some(conversations) = &self.conversations else {
            return Ok(());
        };
        let ours = &link.conversation_id;
        match received.event.as_str() {
            hooks::CONVERSATION_ARCHIVED => {
                conversations.archive(workspace_id, ours, &request_id).await
            }
            hooks::CONVERSATION_ASSIGNED | hooks::CONVERSATION_GROUP_CHANGED => {
                let directory = self
                    .service
                    .load(workspace_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .directory
                    .unwrap_or_default();
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
                    .assign(workspace_id, ours, &group, &agent, &request_id)
                    .await
            }
            hooks::MESSAGE_CREATED if hooks::written_by_agent(&payload) => {
                match hooks::message_text(&payload) {
                    Some(text) => {
                        conversations
                            .add_human_message(workspace_id, ours, text, &request_id)
                            .await
                    }
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The delivery's whole payload: as recorded, or, for one abridged to be published,
    /// from the body kept beside it (the next event of its stream).
    async fn payload(
        &self,
        event: &RecordedEvent,
        received: &WebhookReceived,
    ) -> Result<Json, String> {
        let recorded = || serde_json::from_str(&received.data_json).unwrap_or_default();
        if received.abridged_fields.is_empty() {
            return Ok(recorded());
        }
        let next = self
            .service
            .log()
            .read_stream(&event.stream, event.stream_version, 1)
            .await
            .map_err(|e| e.to_string())?;
        Ok(next
            .first()
            .filter(|e| e.event_type == event_types::WEBHOOK_BODY)
            .and_then(|e| e.decode::<WebhookBody>().ok())
            .and_then(|whole| Delivery::parse(&whole.body).ok())
            .map_or_else(recorded, |delivery| delivery.payload))
    }

    /// The link the delivery concerns, kept in step with what it says: made for a
    /// `conversation.created` that names one of our conversations (assumed:
    /// `external_id`), updated when Connexease's status, group, agent or customer changed.
    async fn link(
        &self,
        workspace_id: &str,
        received: &WebhookReceived,
        payload: &Json,
    ) -> Result<Option<Link>, String> {
        let external = &received.external_conversation_id;
        if external.is_empty() {
            return Ok(None);
        }
        let existing = self
            .store
            .link_by_external(workspace_id, external)
            .await
            .map_err(|e| e.to_string())?;
        let ours = payload["external_id"]
            .as_str()
            .filter(|id| switchboard_runtime::requests::valid_prefixed_id(id, "conv_"));
        let mut link = match (existing, ours) {
            (Some(link), _) => link,
            (None, Some(ours)) if received.event == hooks::CONVERSATION_CREATED => Link {
                conversation_id: ours.to_owned(),
                external_conversation_id: external.clone(),
                ..Default::default()
            },
            (None, _) => return Ok(None),
        };
        let before = link.clone();
        if !received.external_customer_id.is_empty() {
            link.external_customer_id = received.external_customer_id.clone();
        }
        if received.event.starts_with("conversation.") {
            if let Some(status) = payload["status"].as_str() {
                link.external_status = status.to_owned();
            }
            if let Some(group) = hooks::uuid_at(payload, "group") {
                link.group_id = group;
            }
            if let Some(agent) = hooks::uuid_at(payload, "agent") {
                link.agent_id = agent;
            }
            if received.event == hooks::CONVERSATION_ARCHIVED {
                link.external_status = "archived".into();
            }
        }
        if link != before {
            self.service
                .record_link(workspace_id, link.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(Some(link))
    }
}

#[async_trait]
impl Handler for Apply {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let received: WebhookReceived = event
            .decode()
            .map_err(|e| HandleError::Reject(e.to_string()))?;
        self.apply(event, &received)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, hook = %received.event, "connexease webhook: not carried out yet; retrying");
                HandleError::Retry(e)
            })
    }

    async fn wants(&self, event: &RecordedEvent) -> bool {
        Self::wants(event)
    }
}

/// Not found and failed preconditions are final (the conversation is gone or ended); the
/// rest may pass, so trying again is worth it.
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

    async fn add_human_message(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        text: &str,
        request_id: &str,
    ) -> Result<(), String> {
        let request = AddMessageRequest {
            workspace_id: workspace_id.into(),
            request_id: format!("{request_id}-message"),
            conversation_id: conversation_id.into(),
            author: Author::Human as i32,
            kind: MessageKind::Text as i32,
            text: text.into(),
            ..Default::default()
        };
        match self.add_message(request).await {
            Ok(_) => Ok(()),
            Err(status) => settled(status),
        }
    }
}
