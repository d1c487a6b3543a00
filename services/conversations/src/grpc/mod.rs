//! The `switchboard.conversations.v1.Conversations` gRPC service: decode and check the
//! request envelope, call the command handler or the read model, encode the answer.

mod error;

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_proto::conversations::v1::conversations_server::{self, ConversationsServer};
use switchboard_proto::conversations::v1::*;
use switchboard_proto::events::v1::{Conversation, MessageKind};
use switchboard_runtime::requests::valid_prefixed_id;
use switchboard_secrets::{Keyring, Zeroizing};
use tonic::{Request, Response, Status};

pub use error::invalid;

use crate::domain::{Command, FieldViolation, Violations};
use crate::service::{ConversationService, Outcome, RequestContext, new_id};
use crate::store::{ConversationStore, ListFilter};

/// Default and bounds of a page.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// The tonic service.
#[derive(Clone)]
pub struct ConversationsApi {
    service: ConversationService,
    store: ConversationStore,
    keyring: Option<Arc<Keyring>>,
}

/// Bounds of the secure metadata of one conversation.
const SECURE_KEYS: usize = 20;
const SECURE_VALUE_BYTES: usize = 4096;

/// What sealed secure metadata is bound to: a copy moved to another conversation (or
/// workspace) does not open.
fn secure_owner(workspace_id: &str, conversation_id: &str) -> String {
    format!("{workspace_id}/conversation/{conversation_id}/secure")
}

impl ConversationsApi {
    /// The API over the service's log: its command handler and its read model.
    pub fn over(log: switchboard_eventlog::EventLog) -> Self {
        Self::new(
            ConversationService::new(log.clone()),
            ConversationStore::new(log),
        )
    }

    pub fn new(service: ConversationService, store: ConversationStore) -> Self {
        Self {
            service,
            store,
            keyring: None,
        }
    }

    /// The key that seals secure metadata; without one, conversations with secure
    /// metadata are refused.
    pub fn with_keyring(mut self, keyring: Arc<Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Checks a change to a conversation (its envelope with the command's own fields, every
    /// violation at once) and runs it, for `expected_version` of the conversation (0: any).
    async fn change(
        &self,
        workspace_id: &str,
        request_id: &str,
        conversation_id: &str,
        expected_version: u64,
        command: Command,
    ) -> Result<Outcome, Status> {
        let mut ctx = context(
            workspace_id,
            request_id,
            Some(conversation_id),
            Some(&command),
        )?;
        ctx.expected_version = expected_version;
        Ok(self.service.execute(&ctx, conversation_id, command).await?)
    }

    /// Seals a conversation's secure metadata, checked by [`check_secure`] (empty:
    /// nothing to seal).
    fn seal_secure(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        values: &HashMap<String, String>,
    ) -> Result<Vec<u8>, Status> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let keyring = self.keyring.as_ref().ok_or_else(|| {
            switchboard_runtime::codes::CONV_NO_ENCRYPTION_KEY.status(
                "secure metadata needs the service's encryption key \
                 (SWITCHBOARD_ENCRYPTION_KEY)",
            )
        })?;
        let plain = Zeroizing::new(serde_json::to_vec(values).unwrap_or_default());
        Ok(keyring.seal(&plain, &secure_owner(workspace_id, conversation_id)))
    }

    pub fn into_server(self) -> ConversationsServer<Self> {
        ConversationsServer::new(self)
            .max_decoding_message_size(1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

/// Checks a conversation's secure metadata: its keys and the size of its values (never
/// naming a value).
fn check_secure(v: &mut Violations, values: &HashMap<String, String>) {
    if values.len() > SECURE_KEYS {
        v.push("secure_metadata", format!("at most {SECURE_KEYS} keys"));
    }
    for (key, value) in values {
        let key_ok = (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            v.push(
                "secure_metadata",
                "keys are 1 to 64 of `a-z`, `0-9` and `_`",
            );
        }
        if value.len() > SECURE_VALUE_BYTES {
            v.push(
                format!("secure_metadata[{key}]"),
                format!("at most {SECURE_VALUE_BYTES} bytes"),
            );
        }
    }
}

/// Checks the fields every request carries, with what `command` holds that can be checked
/// without the conversation (every violation in one answer), and builds the request
/// context.
fn context(
    workspace_id: &str,
    request_id: &str,
    conversation_id: Option<&str>,
    command: Option<&Command>,
) -> Result<RequestContext, Status> {
    let mut v = Violations::default();
    context_violations(&mut v, workspace_id, request_id, conversation_id, command);
    finish(v)?;
    Ok(request_context(workspace_id, request_id))
}

/// The context of a request whose fields were checked.
fn request_context(workspace_id: &str, request_id: &str) -> RequestContext {
    RequestContext {
        workspace_id: workspace_id.to_owned(),
        request_id: request_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
        actor: switchboard_runtime::requests::current_actor(),
        expected_version: 0,
    }
}

fn context_violations(
    v: &mut Violations,
    workspace_id: &str,
    request_id: &str,
    conversation_id: Option<&str>,
    command: Option<&Command>,
) {
    check_workspace(v, workspace_id);
    if request_id.len() > 128 {
        v.push("request_id", "at most 128 bytes");
    }
    if let Some(id) = conversation_id {
        check_conversation_id(v, id);
    }
    if let Some(command) = command {
        crate::domain::check(command, v);
    }
}

fn check_workspace(v: &mut Violations, workspace_id: &str) {
    if !valid_prefixed_id(workspace_id, "ws_") {
        v.push(
            "workspace_id",
            "required: `ws_` followed by 1 to 64 letters, digits, `_` or `-`",
        );
    }
}

fn check_conversation_id(v: &mut Violations, id: &str) {
    if !valid_prefixed_id(id, "conv_") {
        v.push(
            "conversation_id",
            "required: `conv_` followed by 1 to 64 letters, digits, `_` or `-`",
        );
    }
}

fn finish(v: Violations) -> Result<(), Status> {
    v.finish().map_err(|e| match e {
        crate::domain::DomainError::Invalid(violations) => invalid(violations),
        other => Status::internal(other.to_string()),
    })
}

fn limit(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(DEFAULT_LIMIT),
        1..=MAX_LIMIT => Ok(requested),
        _ => Err(invalid(vec![FieldViolation::new(
            "limit",
            format!("between 1 and {MAX_LIMIT}, or 0 for the default of {DEFAULT_LIMIT}"),
        )])),
    }
}

fn conversation(outcome: Outcome) -> Response<ConversationResponse> {
    Response::new(ConversationResponse {
        conversation: Some(outcome.conversation),
    })
}

fn message(outcome: Outcome) -> Response<MessageResponse> {
    Response::new(MessageResponse {
        message: outcome.message,
        conversation: Some(outcome.conversation),
    })
}

#[tonic::async_trait]
impl conversations_server::Conversations for ConversationsApi {
    async fn start_conversation(
        &self,
        request: Request<StartConversationRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let id = new_id("conv");
        let mut command = Command::Start {
            conversation_id: id.clone(),
            workspace_id: r.workspace_id.clone(),
            channel: r.channel,
            user_id: r.user_id,
            lead: r.lead.unwrap_or_default(),
            agent_id: r.agent_id,
            metafields: r.metafields,
            sealed_secure_metadata: Vec::new(),
        };
        let mut v = Violations::default();
        context_violations(&mut v, &r.workspace_id, &r.request_id, None, Some(&command));
        check_secure(&mut v, &r.secure_metadata);
        finish(v)?;
        let ctx = request_context(&r.workspace_id, &r.request_id);
        if let Command::Start {
            sealed_secure_metadata,
            ..
        } = &mut command
        {
            *sealed_secure_metadata = self.seal_secure(&r.workspace_id, &id, &r.secure_metadata)?;
        }
        Ok(conversation(
            self.service.execute(&ctx, &id, command).await?,
        ))
    }

    async fn add_message(
        &self,
        request: Request<AddMessageRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let r = request.into_inner();
        let command = Command::AddMessage {
            message_id: new_id("msg"),
            author: r.author,
            kind: if r.kind == 0 {
                MessageKind::Text as i32
            } else {
                r.kind
            },
            text: r.text,
            form: r.form,
            buttons: r.buttons,
            sentiment: r.sentiment,
        };
        Ok(message(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                0,
                command,
            )
            .await?,
        ))
    }

    async fn submit_form(
        &self,
        request: Request<SubmitFormRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let r = request.into_inner();
        let command = Command::SubmitForm {
            message_id: new_id("msg"),
            form_message_id: r.form_message_id,
            values: r.values,
        };
        Ok(message(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                0,
                command,
            )
            .await?,
        ))
    }

    async fn click_button(
        &self,
        request: Request<ClickButtonRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let r = request.into_inner();
        let command = Command::ClickButton {
            message_id: new_id("msg"),
            buttons_message_id: r.buttons_message_id,
            button_id: r.button_id,
        };
        Ok(message(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                0,
                command,
            )
            .await?,
        ))
    }

    async fn set_status(
        &self,
        request: Request<SetStatusRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::SetStatus { status: r.status };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                r.expected_version,
                command,
            )
            .await?,
        ))
    }

    async fn set_metafields(
        &self,
        request: Request<SetMetafieldsRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::SetMetafields {
            metafields: r.metafields,
        };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                r.expected_version,
                command,
            )
            .await?,
        ))
    }

    async fn remove_metafields(
        &self,
        request: Request<RemoveMetafieldsRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::RemoveMetafields { keys: r.keys };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                r.expected_version,
                command,
            )
            .await?,
        ))
    }

    async fn assign(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::Assign {
            group: r.group,
            agent: r.agent,
        };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                0,
                command,
            )
            .await?,
        ))
    }

    async fn record_analysis(
        &self,
        request: Request<RecordAnalysisRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::RecordAnalysis {
            topic: r.topic,
            sentiment: r.sentiment,
            custom: r.custom,
            topics: r.topics,
        };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                r.expected_version,
                command,
            )
            .await?,
        ))
    }

    async fn end_conversation(
        &self,
        request: Request<EndConversationRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        let command = Command::End { reason: r.reason };
        Ok(conversation(
            self.change(
                &r.workspace_id,
                &r.request_id,
                &r.conversation_id,
                0,
                command,
            )
            .await?,
        ))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<ConversationResponse>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", Some(&r.conversation_id), None)?;
        let found: Option<Conversation> =
            self.store.get(&r.workspace_id, &r.conversation_id).await?;
        let conversation = found.ok_or_else(error::not_found)?;
        Ok(Response::new(ConversationResponse {
            conversation: Some(conversation),
        }))
    }

    async fn get_secure_metadata(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<SecureMetadata>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", Some(&r.conversation_id), None)?;
        let (state, _) = self
            .service
            .load(&r.workspace_id, &r.conversation_id)
            .await?;
        let state = state.ok_or_else(error::not_found)?;
        if state.sealed_secure_metadata.is_empty() {
            return Ok(Response::new(SecureMetadata::default()));
        }
        let keyring = self.keyring.as_ref().ok_or_else(|| {
            switchboard_runtime::codes::CONV_NO_ENCRYPTION_KEY.status(
                "the secure metadata cannot be opened without the service's \
                 encryption key (SWITCHBOARD_ENCRYPTION_KEY)",
            )
        })?;
        let plain = keyring
            .open(
                &state.sealed_secure_metadata,
                &secure_owner(&r.workspace_id, &r.conversation_id),
            )
            .map_err(|e| {
                tracing::error!(error = %e, "secure metadata does not open");
                switchboard_runtime::codes::CONV_SECURE_METADATA_UNREADABLE
                    .status("the secure metadata does not open with our keys")
            })?;
        let values = serde_json::from_slice(&plain).map_err(|_| {
            switchboard_runtime::codes::CONV_SECURE_METADATA_NOT_A_MAP
                .status("the secure metadata is not a map")
        })?;
        Ok(Response::new(SecureMetadata { values }))
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        check_workspace(&mut v, &r.workspace_id);
        let mut statuses: i64 = 0;
        for (field, status) in std::iter::once(("status".to_owned(), r.status)).chain(
            r.statuses
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("statuses[{i}]"), *s)),
        ) {
            match switchboard_proto::events::v1::ConversationStatus::try_from(status) {
                _ if status == 0 => {}
                Ok(_) => statuses |= 1 << status,
                Err(_) => v.push(&field, format!("unknown value {status}")),
            }
        }
        if r.channel != 0 && switchboard_proto::events::v1::Channel::try_from(r.channel).is_err() {
            v.push("channel", format!("unknown value {}", r.channel));
        }
        let mut micros = |field: &str, at: &Option<prost_types::Timestamp>| match at {
            None => 0,
            Some(t) if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) => {
                v.push(field, "not a valid timestamp");
                0
            }
            Some(t) => t
                .seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(t.nanos) / 1000),
        };
        let updated_since = micros("updated_since", &r.updated_since);
        let updated_before = micros("updated_before", &r.updated_before);
        let created_after = micros("created_after", &r.created_after);
        let created_before = micros("created_before", &r.created_before);
        if r.ids.len() > MAX_LIMIT as usize {
            v.push("ids", format!("at most {MAX_LIMIT}"));
        }
        for (i, id) in r.ids.iter().enumerate() {
            if !valid_prefixed_id(id, "conv_") {
                v.push(
                    format!("ids[{i}]"),
                    "`conv_` followed by 1 to 64 letters, digits, `_` or `-`",
                );
            }
        }
        finish(v)?;
        let limit = limit(r.limit)?;
        let filter = ListFilter {
            statuses,
            channel: r.channel,
            updated_since,
            updated_before,
            created_after,
            created_before,
        };
        if !r.ids.is_empty() {
            let mut conversations = Vec::with_capacity(r.ids.len());
            for id in &r.ids {
                if let Some(c) = self.store.get(&r.workspace_id, id).await?
                    && filter.admits(&c)
                {
                    conversations.push(c);
                }
            }
            return Ok(Response::new(ListConversationsResponse {
                conversations,
                next_cursor: String::new(),
            }));
        }
        let page = self
            .store
            .list(&r.workspace_id, &filter, limit, &r.cursor)
            .await?;
        Ok(Response::new(ListConversationsResponse {
            conversations: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", Some(&r.conversation_id), None)?;
        let limit = limit(r.limit)?;
        if self
            .store
            .get(&r.workspace_id, &r.conversation_id)
            .await?
            .is_none()
        {
            return Err(error::not_found());
        }
        let page = self
            .store
            .messages(&r.workspace_id, &r.conversation_id, limit, &r.cursor)
            .await?;
        Ok(Response::new(ListMessagesResponse {
            messages: page.items,
            next_cursor: page.next_cursor,
        }))
    }
}
