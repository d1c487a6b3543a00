//! The other services as runs use them: the conversations service (messages, updates,
//! transcripts, analysis) and the connexease service (operations), each a trait with its
//! gRPC client's implementation, and [`PortError`], how a call failed (refused: the run
//! takes its failure route; unavailable: retried).

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use switchboard_proto::conversations::v1::{
    AddMessageRequest, ListMessagesRequest, RecordAnalysisRequest, SetMetafieldsRequest,
    SetStatusRequest,
};
use switchboard_proto::events::v1::{
    Author, Button, ConversationStatus, Form, FormField, Message, MessageKind, Sentiment,
};
use switchboard_proto::flows::v1::{ButtonOption, FormFieldSpec};

/// Why an effect did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// Might work later: try the event again.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Will not work: the effect failed (its run takes the failure route).
    #[error("{0}")]
    Refused(String),
}

/// Another part of this service failing: a refusal (missing, invalid, not possible) takes
/// the run's failure route; anything else is retried.
impl From<crate::service::ServiceError> for PortError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        match e {
            E::NotFound(_) | E::Invalid(_) | E::FailedPrecondition(_) => {
                PortError::Refused(e.to_string())
            }
            other => PortError::Unavailable(other.to_string()),
        }
    }
}

fn from_status(status: tonic::Status) -> PortError {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::Internal
        | tonic::Code::Unknown => PortError::Unavailable(status.message().to_owned()),
        _ => PortError::Refused(status.message().to_owned()),
    }
}

/// The conversations service, as runs use it.
#[async_trait]
pub trait Conversations: Send + Sync {
    async fn say(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        text: &str,
        buttons: &[ButtonOption],
        form: &[FormFieldSpec],
    ) -> Result<(), PortError>;

    async fn update(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        status: Option<&str>,
        metafields: HashMap<String, String>,
    ) -> Result<(), PortError>;

    /// One page of a conversation's messages, oldest first, and the next page's cursor
    /// (empty on the last page).
    async fn messages(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        cursor: &str,
    ) -> Result<(Vec<Message>, String), PortError>;

    /// Records analysis on the conversation (kept keys and topics stay unless given);
    /// `request_id` makes a repeat change nothing.
    async fn record_analysis(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        analysis: AnalysisUpdate,
    ) -> Result<(), PortError>;
}

/// What [`Conversations::record_analysis`] records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalysisUpdate {
    pub topic: String,
    pub topics: Vec<String>,
    /// `positive`, `neutral`, `negative` or `mixed`; empty to keep the recorded one.
    pub sentiment: String,
    pub custom: HashMap<String, String>,
    /// Recorded only on this version of the conversation (0: any); another is refused.
    pub expected_version: u64,
}

/// The connexease service, as runs use it.
#[async_trait]
pub trait Connexease: Send + Sync {
    async fn run(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        idempotency_key: &str,
        operation: &str,
        arguments: HashMap<String, String>,
    ) -> Result<Json, PortError>;
}

/// The conversations service over gRPC: the service token, the caller's name and the
/// current span's trace context go with every call.
#[async_trait]
impl Conversations for switchboard_clients::ConversationsClient {
    async fn say(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        text: &str,
        buttons: &[ButtonOption],
        form: &[FormFieldSpec],
    ) -> Result<(), PortError> {
        let kind = if !form.is_empty() {
            MessageKind::Form
        } else if !buttons.is_empty() {
            MessageKind::Buttons
        } else {
            MessageKind::Text
        };
        let form = (!form.is_empty()).then(|| Form {
            title: String::new(),
            fields: form
                .iter()
                .map(|f| FormField {
                    name: f.name.clone(),
                    label: f.label.clone(),
                    r#type: f.r#type.clone(),
                    required: f.required,
                    options: f.options.clone(),
                })
                .collect(),
        });
        self.add_message(AddMessageRequest {
            workspace_id: workspace_id.to_owned(),
            request_id: request_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            author: Author::Agent as i32,
            kind: kind as i32,
            text: text.to_owned(),
            form,
            buttons: buttons
                .iter()
                .filter(|_| kind == MessageKind::Buttons)
                .enumerate()
                .map(|(i, b)| Button {
                    button_id: format!("b{i}"),
                    label: b.label.clone(),
                    // A link sends nothing back.
                    value: if b.url.is_empty() {
                        b.value.clone()
                    } else {
                        String::new()
                    },
                    url: b.url.clone(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(from_status)
    }

    async fn update(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        status: Option<&str>,
        metafields: HashMap<String, String>,
    ) -> Result<(), PortError> {
        if let Some(status) = status {
            let parsed = ConversationStatus::from_str_name(&format!(
                "CONVERSATION_STATUS_{}",
                status.trim().to_ascii_uppercase()
            ))
            .filter(|s| *s != ConversationStatus::Unspecified)
            .ok_or_else(|| {
                PortError::Refused(format!(
                    "`{status}` is not a status: active, on_hold, resolved or archived"
                ))
            })?;
            self.set_status(SetStatusRequest {
                expected_version: 0,
                workspace_id: workspace_id.to_owned(),
                request_id: format!("{request_id}-status"),
                conversation_id: conversation_id.to_owned(),
                status: parsed as i32,
            })
            .await
            .map_err(from_status)?;
        }
        if !metafields.is_empty() {
            self.set_metafields(SetMetafieldsRequest {
                expected_version: 0,
                workspace_id: workspace_id.to_owned(),
                request_id: format!("{request_id}-metafields"),
                conversation_id: conversation_id.to_owned(),
                metafields,
            })
            .await
            .map_err(from_status)?;
        }
        Ok(())
    }

    async fn messages(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        cursor: &str,
    ) -> Result<(Vec<Message>, String), PortError> {
        let page = self
            .list_messages(ListMessagesRequest {
                workspace_id: workspace_id.to_owned(),
                conversation_id: conversation_id.to_owned(),
                limit: 100,
                cursor: cursor.to_owned(),
            })
            .await
            .map_err(from_status)?;
        Ok((page.messages, page.next_cursor))
    }

    async fn record_analysis(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        request_id: &str,
        analysis: AnalysisUpdate,
    ) -> Result<(), PortError> {
        let sentiment = match analysis.sentiment.as_str() {
            "positive" => Sentiment::Positive,
            "negative" => Sentiment::Negative,
            "neutral" => Sentiment::Neutral,
            "mixed" => Sentiment::Mixed,
            _ => Sentiment::Unspecified,
        };
        // The client's own `record_analysis`, not this trait's.
        switchboard_clients::ConversationsClient::record_analysis(
            self,
            RecordAnalysisRequest {
                workspace_id: workspace_id.to_owned(),
                request_id: request_id.to_owned(),
                conversation_id: conversation_id.to_owned(),
                topic: analysis.topic,
                sentiment: sentiment as i32,
                custom: analysis.custom,
                topics: analysis.topics,
                expected_version: analysis.expected_version,
            },
        )
        .await
        .map(drop)
        .map_err(|status| {
            // Changed since the version given: not this caller's to overwrite.
            if status.code() == tonic::Code::Aborted && status.message().contains("SB-CONV-0409") {
                PortError::Refused(status.message().to_owned())
            } else {
                from_status(status)
            }
        })
    }
}

/// The connexease service over gRPC, as the conversations client above.
#[async_trait]
impl Connexease for switchboard_clients::ConnexeaseClient {
    async fn run(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        idempotency_key: &str,
        operation: &str,
        arguments: HashMap<String, String>,
    ) -> Result<Json, PortError> {
        let result = self
            .run_operation(switchboard_proto::connexease::v1::RunOperationRequest {
                workspace_id: workspace_id.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
                conversation_id: conversation_id.to_owned(),
                operation: operation.to_owned(),
                arguments,
            })
            .await
            .map_err(from_status)?;
        operation_outcome(result)
    }
}

/// A Connexease operation's result as the run sees it: a failed operation takes the
/// failure route with Connexease's error (in `nodes.<id>.error`); a done one gives what
/// Connexease answered as the node's outputs.
fn operation_outcome(
    result: switchboard_proto::connexease::v1::OperationResult,
) -> Result<Json, PortError> {
    if !result.ok {
        return Err(PortError::Refused(if result.error.is_empty() {
            format!("the Connexease operation {} failed", result.operation)
        } else {
            result.error
        }));
    }
    let response = serde_json::from_str::<Json>(&result.response_json)
        .unwrap_or(Json::String(result.response_json));
    Ok(json!({
        "operation": result.operation,
        "external_conversation_id": result.external_conversation_id,
        "external_customer_id": result.external_customer_id,
        "attempts": result.attempts,
        "replayed": result.replayed,
        "response": response,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::connexease::v1::OperationResult;

    #[test]
    fn a_failed_operation_is_a_refusal_and_a_done_one_gives_its_answer() {
        let failed = operation_outcome(OperationResult {
            operation: "assign_group".into(),
            ok: false,
            error: "no group `billing`".into(),
            ..Default::default()
        });
        assert!(matches!(failed, Err(PortError::Refused(e)) if e == "no group `billing`"));
        let done = operation_outcome(OperationResult {
            operation: "assign_group".into(),
            ok: true,
            external_conversation_id: "c_1".into(),
            response_json: r#"{"group_id": "grp_billing"}"#.into(),
            attempts: 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(done["response"]["group_id"], "grp_billing");
        assert_eq!(done["external_conversation_id"], "c_1");
    }
}
