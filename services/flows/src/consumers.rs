//! What the flows service does with conversations' events: a new conversation starts the
//! workspace's assistant flow; a customer's message goes to the conversation's runs, in
//! order; an ended conversation starts the post-conversation workflows with its
//! transcript, its analysis and every session variable its flows collected.
//!
//! Which flow a conversation runs: the flow of the assistant named by its `assistant_id`
//! metafield, otherwise of the workspace's first assistant (by id) that has one.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx};
use switchboard_proto::events::v1::{
    Author, Conversation, ConversationCreatedEvent, ConversationEndedEvent, ConversationStatus,
    ConversationUpdatedEvent, Message, MessageCreatedEvent, Sentiment,
};
use switchboard_proto::flows::v1::{AnalysisSchema, Assistant, FlowKind};

use crate::analysis;
use crate::domain::run::{Input, form_message};
use crate::ports::{AnalysisUpdate, Conversations, PortError};
use crate::providers::Providers;
use crate::runtime::RunService;
use crate::service::{FlowsService, ServiceError};

pub use switchboard_contract::event_types::conversations::{
    CREATED as CONVERSATION_CREATED, ENDED as CONVERSATION_ENDED, MESSAGE_CREATED,
    UPDATED as CONVERSATION_UPDATED,
};

pub struct ConversationEvents {
    flows: FlowsService,
    runs: RunService,
    conversations: Option<Arc<dyn Conversations>>,
    providers: Option<Providers>,
}

impl ConversationEvents {
    pub fn new(flows: FlowsService, runs: RunService) -> Self {
        Self {
            flows,
            runs,
            conversations: None,
            providers: None,
        }
    }

    /// The model providers analysis asks, when the workspace has one; without, the
    /// built-in analyser does it all.
    pub fn with_providers(mut self, providers: Providers) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Whether the assistant's agent has a model to ask: its own provider, or the
    /// workspace's first.
    async fn has_model(&self, ws: &str, assistant_id: &str) -> Result<bool, HandleError> {
        let Some(providers) = &self.providers else {
            return Ok(false);
        };
        let named = match self.flows.load_assistant(ws, assistant_id).await {
            Ok((assistant, _)) => assistant.model_provider_id,
            Err(ServiceError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(retry_or_reject(e)),
        };
        Ok(providers
            .resolve(ws, &named)
            .await
            .map_err(retry_or_reject)?
            .is_some())
    }

    /// The assistant whose conversation `conversation` was.
    async fn assistant_of(
        &self,
        ws: &str,
        conversation: &Conversation,
    ) -> Result<Option<Assistant>, HandleError> {
        let retry = |e: switchboard_eventlog::EventLogError| HandleError::Retry(e.to_string());
        let preferred = conversation
            .metafields
            .get("assistant_id")
            .map(String::as_str);
        let Some((id, _)) = self
            .flows
            .store()
            .conversation_assistant(ws, preferred)
            .await
            .map_err(retry)?
        else {
            return Ok(None);
        };
        match self.flows.load_assistant(ws, &id).await {
            Ok((assistant, _)) => Ok(Some(assistant)),
            Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(retry_or_reject(e)),
        }
    }

    /// The model's analysis of `lines`, when a provider is configured (the assistant's,
    /// else the workspace's first); `None` when there is none or it failed (the built-in
    /// analysis stands, and the failure is logged).
    async fn model_analysis(
        &self,
        ws: &str,
        assistant: Option<&Assistant>,
        lines: &[analysis::Line],
        built: &analysis::Analysis,
        schema: &AnalysisSchema,
    ) -> Result<Option<analysis::Analysis>, HandleError> {
        let Some(providers) = &self.providers else {
            return Ok(None);
        };
        let named = assistant.map_or("", |a| a.model_provider_id.as_str());
        let Some(provider) = providers
            .resolve(ws, named)
            .await
            .map_err(retry_or_reject)?
        else {
            return Ok(None);
        };
        let endpoint = match providers.endpoint(ws, &provider).await {
            Ok(endpoint) => endpoint,
            Err(ServiceError::Log(e)) => return Err(HandleError::Retry(e.to_string())),
            Err(e) => {
                tracing::info!(provider = %provider, reason = %e, "analysis falls back to the built-in analyser");
                return Ok(None);
            }
        };
        let answer = providers
            .model()
            .complete(&endpoint, &analysis::model_request(lines, schema))
            .await
            .map_err(|e| e.to_string())
            .and_then(|completion| analysis::from_model(&completion.content, built, schema));
        match answer {
            Ok(analysed) => Ok(Some(analysed)),
            Err(reason) => {
                tracing::info!(provider = %provider, %reason, "analysis falls back to the built-in analyser");
                Ok(None)
            }
        }
    }

    /// Where post-conversation workflows' transcripts come from; without it their
    /// `transcript` is empty.
    pub fn with_transcripts(mut self, conversations: Arc<dyn Conversations>) -> Self {
        self.conversations = Some(conversations);
        self
    }

    /// The published post-conversation workflows that run when `conversation` ends: all
    /// but those its assistant disabled.
    async fn workflows_for(
        &self,
        ws: &str,
        assistant: Option<&Assistant>,
    ) -> Result<Vec<String>, HandleError> {
        let mut workflows = self
            .flows
            .store()
            .published_flows(ws, FlowKind::PostConversationWorkflow)
            .await
            .map_err(|e| HandleError::Retry(e.to_string()))?;
        if let Some(assistant) = assistant {
            workflows.retain(|id| !assistant.disabled_workflow_ids.contains(id));
        }
        Ok(workflows)
    }

    /// The conversation's messages for a post-conversation workflow: the most recent that
    /// fit [`TRANSCRIPT_BUDGET`], oldest first, and how many it had in all.
    async fn transcript_of(
        &self,
        ws: &str,
        conversation_id: &str,
    ) -> Result<(Json, usize), HandleError> {
        let Some(conversations) = &self.conversations else {
            return Ok((json!([]), 0));
        };
        let messages = transcript(conversations.as_ref(), ws, conversation_id)
            .await
            .map_err(|e| match e {
                PortError::Unavailable(why) => HandleError::Retry(why),
                PortError::Refused(why) => HandleError::Reject(why),
            })?;
        let total = messages.len();
        Ok((
            Json::Array(within_budget(messages, TRANSCRIPT_BUDGET)),
            total,
        ))
    }

    /// The ended conversation's analysis, as post-conversation workflows read it
    /// (`analysis.*`): what was recorded stands, and what is missing is filled by the
    /// built-in analyser from the transcript and recorded on the conversation (once: the
    /// request id is the conversation's).
    async fn analysis(
        &self,
        ws: &str,
        conversation: &Conversation,
        assistant: Option<&Assistant>,
        transcript: &Json,
    ) -> Result<Json, HandleError> {
        let lines: Vec<analysis::Line> = transcript
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| analysis::Line {
                author: l["author"].as_str().unwrap_or_default().to_owned(),
                text: l["text"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let outcome = analysis::Outcome {
            resolved: conversation.status() == ConversationStatus::Resolved,
            human: conversation.assignment.is_some() || lines.iter().any(|l| l.author == "human"),
        };
        let schema = assistant
            .and_then(|a| a.analysis.clone())
            .unwrap_or_default();
        let built = analysis::analyse_with(&lines, outcome, &schema);
        let built = match self
            .model_analysis(ws, assistant, &lines, &built, &schema)
            .await?
        {
            Some(analysed) => analysed,
            None => built,
        };
        let recorded = conversation.analysis.clone().unwrap_or_default();
        let mut update = AnalysisUpdate {
            expected_version: conversation.version,
            ..Default::default()
        };
        // Within the conversation's budget of custom keys: recorded ones stand.
        let room = ANALYSIS_KEYS.saturating_sub(recorded.custom.len());
        for (key, value) in built
            .custom()
            .into_iter()
            .filter(|(key, _)| !recorded.custom.contains_key(key))
            .take(room)
        {
            update.custom.insert(key, value);
        }
        if recorded.topic.is_empty() && recorded.topics.is_empty() {
            update.topics = built.topics.clone();
        }
        if recorded.sentiment() == Sentiment::Unspecified {
            update.sentiment = built.sentiment.to_owned();
        }
        let changes =
            !update.custom.is_empty() || !update.topics.is_empty() || !update.sentiment.is_empty();
        if let Some(conversations) = &self.conversations
            && changes
        {
            match conversations
                .record_analysis(
                    ws,
                    &conversation.id,
                    &format!("built-in-analysis-{}", conversation.id),
                    update.clone(),
                )
                .await
            {
                Ok(()) => {}
                Err(PortError::Unavailable(why)) => return Err(HandleError::Retry(why)),
                // Analysis recorded since the conversation ended (it stands), or refused:
                // the workflows still start, with what was built.
                Err(PortError::Refused(why)) => {
                    tracing::info!(conversation = %conversation.id, reason = %why, "the built-in analysis was not recorded");
                }
            }
        }
        let mut custom = recorded.custom.clone();
        custom.extend(update.custom);
        let topics = if update.topics.is_empty() {
            recorded.topics.clone()
        } else {
            update.topics
        };
        let topic = match recorded.topic.as_str() {
            "" => topics.first().cloned().unwrap_or_default(),
            topic => topic.to_owned(),
        };
        let sentiment = match recorded.sentiment() {
            Sentiment::Unspecified => built.sentiment.to_owned(),
            other => other
                .as_str_name()
                .trim_start_matches("SENTIMENT_")
                .to_ascii_lowercase(),
        };
        let field = |key: &str| custom.get(key).cloned().unwrap_or_default();
        Ok(json!({
            "topic": topic,
            "topics": topics,
            "sentiment": sentiment,
            "summary": field("summary"),
            "request_type": field("request_type"),
            "urgency": field("urgency"),
            "customer_effort": field("customer_effort"),
            "churn_risk": field("churn_risk"),
            "resolution": field("resolution"),
            "knowledge_gap": field("knowledge_gap"),
            "custom": custom,
        }))
    }

    /// Every session variable the conversation's flows collected (later runs' values win).
    async fn session(&self, ws: &str, conversation_id: &str) -> Result<Json, HandleError> {
        let mut session = serde_json::Map::new();
        let run_ids = self
            .runs
            .store()
            .conversation_runs(ws, conversation_id)
            .await
            .map_err(|e| HandleError::Retry(e.to_string()))?;
        for run_id in run_ids {
            let state = self.runs.load(ws, &run_id).await.map_err(retry_or_reject)?;
            if let Some(vars) = state.run.vars.get("session").and_then(Json::as_object) {
                session.extend(vars.clone());
            }
        }
        Ok(Json::Object(session))
    }
}

/// The custom analysis keys a conversation holds at most (the conversations service's
/// limit).
const ANALYSIS_KEYS: usize = 50;

/// The bytes of transcript a post-conversation workflow starts with (its start event holds
/// it): the most recent messages that fit.
pub const TRANSCRIPT_BUDGET: usize = 128 * 1024;

/// What a message says, as runs read it: a click is its button's value, a form
/// submission its values as JSON ([`form_message`]).
fn said(message: &Message) -> String {
    if let Some(click) = &message.button_click {
        click.value.clone()
    } else if let Some(form) = &message.form_submission {
        form_message(&form.values)
    } else {
        message.text.clone()
    }
}

/// Every message of a conversation, oldest first, as [`transcript_line`]s.
pub async fn transcript(
    conversations: &dyn Conversations,
    ws: &str,
    conversation_id: &str,
) -> Result<Vec<Json>, PortError> {
    let mut messages = Vec::new();
    let mut cursor = String::new();
    loop {
        let (page, next) = conversations.messages(ws, conversation_id, &cursor).await?;
        messages.extend(page.iter().map(transcript_line));
        if next.is_empty() || next == cursor {
            return Ok(messages);
        }
        cursor = next;
    }
}

/// One message as workflows read it: `{author, text, at}`.
fn transcript_line(message: &Message) -> Json {
    let author = match message.author() {
        Author::Customer => "customer",
        Author::Agent => "agent",
        Author::Human => "human",
        Author::System | Author::Unspecified => "system",
    };
    let text = said(message);
    let at = message
        .created_at
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({"author": author, "text": text, "at": at})
}

/// The most recent `lines` whose JSON fits in `budget` bytes, oldest first.
pub fn within_budget(lines: Vec<Json>, budget: usize) -> Vec<Json> {
    let mut used = 0;
    let mut kept: Vec<Json> = lines
        .into_iter()
        .rev()
        .take_while(|line| {
            used += line.to_string().len() + 1;
            used <= budget
        })
        .collect();
    kept.reverse();
    kept
}

/// What a run knows of its conversation at the start (never secure metadata).
pub fn context(conversation: &Conversation) -> Json {
    let lead = conversation.lead.clone().unwrap_or_default();
    // The names the seeds and the REST API use: `widget`, `whatsapp`; `active`, `on_hold`.
    let named = |proto: &str, prefix: &str| proto.trim_start_matches(prefix).to_ascii_lowercase();
    json!({
        "conversation": {
            "id": conversation.id,
            "user_id": conversation.user_id,
            "channel": named(conversation.channel().as_str_name(), "CHANNEL_"),
            "status": named(conversation.status().as_str_name(), "CONVERSATION_STATUS_"),
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
            // What runs read of the conversation: its status, metafields and agent.
            CONVERSATION_UPDATED => event.decode::<ConversationUpdatedEvent>().is_ok_and(|u| {
                u.changed_fields
                    .iter()
                    .any(|f| ["status", "metafields", "assignment"].contains(&f.as_str()))
            }),
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
                let Some((assistant_id, flow_id)) = self
                    .flows
                    .store()
                    .conversation_assistant(ws, preferred.as_deref())
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?
                else {
                    return Ok(());
                };
                // An assistant without a flow is its own agent, when there is a model.
                if flow_id.is_empty() && !self.has_model(ws, &assistant_id).await? {
                    return Ok(());
                }
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
                let text = said(&message);
                let sentiment = match message.sentiment() {
                    Sentiment::Unspecified => String::new(),
                    known => known
                        .as_str_name()
                        .trim_start_matches("SENTIMENT_")
                        .to_ascii_lowercase(),
                };
                for run_id in self
                    .runs
                    .store()
                    .open_runs(ws, &created.conversation_id)
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?
                {
                    self.runs
                        .handle_in(
                            tx,
                            ws,
                            &run_id,
                            Input::Message {
                                text: text.clone(),
                                sentiment: sentiment.clone(),
                                message_id: message.id.clone(),
                                clicked: message.button_click.is_some(),
                                sent_at: message.created_at.as_ref().map_or(0, |t| {
                                    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
                                }),
                            },
                        )
                        .await
                        .map_err(retry_or_reject)?;
                }
                Ok(())
            }
            CONVERSATION_UPDATED => {
                let Some(conversation) = event
                    .decode::<ConversationUpdatedEvent>()
                    .map_err(decode_error)?
                    .conversation
                else {
                    return Ok(());
                };
                let vars = context(&conversation);
                for run_id in self
                    .runs
                    .store()
                    .open_runs(ws, &conversation.id)
                    .await
                    .map_err(|e| HandleError::Retry(e.to_string()))?
                {
                    let input = Input::Context { vars: vars.clone() };
                    self.runs
                        .handle_in(tx, ws, &run_id, input)
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
                let assistant = self.assistant_of(ws, &conversation).await?;
                let workflows = self.workflows_for(ws, assistant.as_ref()).await?;
                // Every ended conversation is analysed (insights read it), whether or not
                // a workflow follows.
                let (transcript, total) = self.transcript_of(ws, &conversation.id).await?;
                let analysis = self
                    .analysis(ws, &conversation, assistant.as_ref(), &transcript)
                    .await?;
                if workflows.is_empty() {
                    return Ok(());
                }
                let mut ended = context(&conversation);
                ended["analysis"] = analysis;
                ended["conversation"]["end_reason"] = json!(conversation.end_reason);
                // The cap is documented, and its cut recorded in the run's start.
                let kept = transcript.as_array().map_or(0, Vec::len);
                ended["transcript_total"] = json!(total);
                ended["transcript_truncated"] = json!(kept < total);
                ended["transcript"] = transcript;
                ended["session"] = self.session(ws, &conversation.id).await?;
                for flow_id in workflows {
                    let context = ended.clone();
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

#[cfg(test)]
mod tests {
    use switchboard_proto::events::v1::{Channel, ConversationStatus};

    use super::*;

    #[test]
    fn a_conversation_is_named_as_the_seeds_name_it() {
        let conversation = Conversation {
            id: "conv_1".into(),
            channel: Channel::Whatsapp as i32,
            status: ConversationStatus::OnHold as i32,
            ..Default::default()
        };
        let context = context(&conversation);
        assert_eq!(context["conversation"]["channel"], "whatsapp");
        assert_eq!(context["conversation"]["status"], "on_hold");
    }
}
