//! What the flows service does with conversations' events: a new conversation starts the
//! workspace's assistant flow; a customer's message goes to the conversation's runs, in
//! order; an ended conversation starts the post-conversation workflows.
//!
//! Which flow a conversation runs: the flow of the assistant named by its `assistant_id`
//! metafield, otherwise of the workspace's first assistant (by id) that has one.

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx};
use switchboard_proto::events::v1::{
    Author, Conversation, ConversationCreatedEvent, ConversationEndedEvent, MessageCreatedEvent,
};
use switchboard_proto::flows::v1::FlowKind;

use crate::domain::run::Input;
use crate::runtime::RunService;
use crate::service::{FlowsService, ServiceError};

pub const CONVERSATION_CREATED: &str = "conversation.created";
pub const MESSAGE_CREATED: &str = "message.created";
pub const CONVERSATION_ENDED: &str = "conversation.ended";

/// The durable consumer of conversations' events.
pub const CONSUMER: &str = "flows-conversations";

pub struct ConversationEvents {
    flows: FlowsService,
    runs: RunService,
}

impl ConversationEvents {
    pub fn new(flows: FlowsService, runs: RunService) -> Self {
        Self { flows, runs }
    }
}

/// What a run knows of its conversation at the start (never secure metadata).
pub fn context(conversation: &Conversation) -> Json {
    let lead = conversation.lead.clone().unwrap_or_default();
    json!({
        "conversation": {
            "id": conversation.id,
            "user_id": conversation.user_id,
            "channel": conversation.channel().as_str_name(),
            "status": conversation.status().as_str_name(),
            "metafields": conversation.metafields,
        },
        "lead": { "name": lead.name, "email": lead.email },
        "agent": { "id": conversation.agent_id },
    })
}

fn retry_or_reject(e: ServiceError) -> HandleError {
    match e {
        ServiceError::Log(_)
        | ServiceError::Conflict { .. }
        | ServiceError::ActionsUnavailable(_) => HandleError::Retry(e.to_string()),
        other => HandleError::Reject(other.to_string()),
    }
}

#[async_trait]
impl Handler for ConversationEvents {
    async fn wants(&self, event: &RecordedEvent) -> bool {
        match event.event_type.as_str() {
            CONVERSATION_CREATED | CONVERSATION_ENDED => true,
            // Only what customers say: the runs' own messages come back here too.
            MESSAGE_CREATED => event
                .decode::<MessageCreatedEvent>()
                .ok()
                .and_then(|m| m.message)
                .is_some_and(|m| m.author() == Author::Customer),
            _ => false,
        }
    }

    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let ws = event.workspace_id();
        let decode_error =
            |e: switchboard_eventlog::EventLogError| HandleError::Reject(e.to_string());
        match event.event_type.as_str() {
            CONVERSATION_CREATED => {
                let Some(conversation) = event
                    .decode::<ConversationCreatedEvent>()
                    .map_err(decode_error)?
                    .conversation
                else {
                    return Ok(());
                };
                let preferred = conversation.metafields.get("assistant_id").cloned();
                let Some(flow_id) = self
                    .flows
                    .store()
                    .assistant_flow(ws, preferred.as_deref())
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?
                else {
                    return Ok(());
                };
                match self
                    .runs
                    .start_in(tx, ws, &flow_id, &conversation.id, context(&conversation))
                    .await
                {
                    // A flow never published yet runs nothing.
                    Ok(_) | Err(ServiceError::FailedPrecondition(_)) => Ok(()),
                    Err(e) => Err(retry_or_reject(e)),
                }
            }
            MESSAGE_CREATED => {
                let created = event
                    .decode::<MessageCreatedEvent>()
                    .map_err(decode_error)?;
                let Some(message) = created.message else {
                    return Ok(());
                };
                let text = message
                    .button_click
                    .as_ref()
                    .map(|c| c.value.clone())
                    .unwrap_or(message.text.clone());
                for run_id in self
                    .runs
                    .store()
                    .open_runs(ws, &created.conversation_id)
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?
                {
                    self.runs
                        .handle_in(tx, ws, &run_id, Input::Message { text: text.clone() })
                        .await
                        .map_err(retry_or_reject)?;
                }
                Ok(())
            }
            CONVERSATION_ENDED => {
                let Some(conversation) = event
                    .decode::<ConversationEndedEvent>()
                    .map_err(decode_error)?
                    .conversation
                else {
                    return Ok(());
                };
                let workflows = self
                    .flows
                    .store()
                    .published_flows(ws, FlowKind::PostConversationWorkflow)
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?;
                for flow_id in workflows {
                    let mut context = context(&conversation);
                    context["analysis"] = json!(conversation.analysis.clone().map(|a| json!({
                        "topic": a.topic,
                        "sentiment": a.sentiment().as_str_name(),
                        "custom": a.custom,
                    })));
                    self.runs
                        .start_in(tx, ws, &flow_id, &conversation.id, context)
                        .await
                        .map_err(retry_or_reject)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
