//! Carries out what runs decided, and tells them how it went: their messages go to the
//! conversation, conversation updates and Connexease operations are made, and each
//! effect's outcome goes back into its run. [`Effects`] follows the flows log itself (a
//! subscription on its own events), so an effect recorded just before a crash is carried
//! out after it; every call names a request id derived from the event or the effect key,
//! so carrying one out twice changes nothing twice.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx};
use switchboard_proto::flows::v1::RunEventRecord;
use switchboard_proto::flows::v1::run_event_record::Event as Record;

use crate::agent::Agent;
use crate::domain::run::{Input, Status};
use crate::ports::{Connexease, Conversations, PortError};
use crate::providers::Providers;
use crate::runtime::{RunService, RunState};
use crate::service::ServiceError;

/// The event types [`Effects`] carries out.
use switchboard_contract::event_types::flow_runs::{
    EFFECT_REQUESTED, ENDED, MESSAGE_SENT, REASKED,
};

/// Carries out runs' messages and non-action effects: conversation updates, Connexease
/// operations, agents' model calls and the workflows agents call.
pub struct Effects {
    runs: RunService,
    conversations: Arc<dyn Conversations>,
    connexease: Option<Arc<dyn Connexease>>,
    agent: Agent,
}

impl Effects {
    pub fn new(
        runs: RunService,
        conversations: Arc<dyn Conversations>,
        connexease: Option<Arc<dyn Connexease>>,
        providers: Providers,
    ) -> Self {
        let agent = Agent::new(runs.flows().clone(), providers, conversations.clone());
        Self {
            runs,
            conversations,
            connexease,
            agent,
        }
    }

    /// Starts the action workflow an agent called, as a child of the run: its end comes
    /// back as the call's outcome. `Some` when it has ended already (a redelivery).
    async fn workflow(
        &self,
        workspace_id: &str,
        parent: &RunState,
        key: &str,
        workflow_id: &str,
        arguments: HashMap<String, Json>,
    ) -> Result<Option<Json>, PortError> {
        let child = self
            .runs
            .start_child(
                workspace_id,
                workflow_id,
                parent,
                key,
                Json::Object(arguments.into_iter().collect()),
            )
            .await
            .map_err(PortError::from)?;
        match self
            .runs
            .workflow_answer(workspace_id, &child)
            .await
            .map_err(PortError::from)?
        {
            None => Ok(None),
            Some(answer) => workflow_outcome(&child.run.run_id, answer).map(Some),
        }
    }

    /// `(workspace, run)` from the stream id `ws_…/run_…`.
    fn run_of(event: &RecordedEvent) -> (&str, &str) {
        event.stream.stream_id.split_once('/').unwrap_or_default()
    }

    /// A run that ended: when an agent's tool call started it, its answer goes back to
    /// the run that called.
    async fn child_ended(&self, workspace_id: &str, child: &RunState) -> Result<(), HandleError> {
        let parent = &child.run.vars["parent"];
        let (Some(parent_run), Some(key)) = (parent["run_id"].as_str(), parent["key"].as_str())
        else {
            return Ok(());
        };
        let Some(answer) = self
            .runs
            .workflow_answer(workspace_id, child)
            .await
            .map_err(service_error)?
        else {
            return Ok(());
        };
        let input = done(key, workflow_outcome(&child.run.run_id, answer));
        match self.runs.handle(workspace_id, parent_run, input).await {
            Ok(_) | Err(ServiceError::NotFound(_)) => Ok(()),
            Err(e) => Err(service_error(e)),
        }
    }
}

/// A child workflow's answer as its caller's outcome.
fn workflow_outcome(run_id: &str, answer: Result<Json, String>) -> Result<Json, PortError> {
    match answer {
        Ok(response) => Ok(json!({"run_id": run_id, "response": response})),
        Err(reason) => Err(PortError::Refused(format!("the workflow failed: {reason}"))),
    }
}

/// An effect's outcome as the input that feeds it back to its run.
fn done(key: &str, outcome: Result<Json, PortError>) -> Input {
    let key = key.to_owned();
    match outcome {
        Ok(outputs) => Input::EffectDone {
            key,
            success: true,
            outputs,
            error: String::new(),
            needs_confirmation: false,
        },
        Err(e) => Input::EffectDone {
            key,
            success: false,
            outputs: json!({}),
            error: match e {
                PortError::Refused(why) | PortError::Unavailable(why) => why,
            },
            needs_confirmation: false,
        },
    }
}

fn retry(e: PortError) -> HandleError {
    HandleError::Retry(e.to_string())
}

fn service_error(e: ServiceError) -> HandleError {
    match e {
        ServiceError::NotFound(_) | ServiceError::Invalid(_) => HandleError::Reject(e.to_string()),
        other => HandleError::Retry(other.to_string()),
    }
}

#[async_trait]
impl Handler for Effects {
    async fn wants(&self, event: &RecordedEvent) -> bool {
        match event.event_type.as_str() {
            // An ended run may be a workflow an agent's tool call is waiting for.
            MESSAGE_SENT | REASKED | ENDED => true,
            // Actions go to the actions service over NATS; the rest are ours.
            EFFECT_REQUESTED => event.decode::<RunEventRecord>().is_ok_and(
                |r| matches!(r.event, Some(Record::EffectRequested(e)) if e.effect != "action"),
            ),
            _ => false,
        }
    }

    async fn handle(&self, _tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let record: RunEventRecord = event
            .decode()
            .map_err(|e| HandleError::Reject(e.to_string()))?;
        let (workspace_id, run_id) = Self::run_of(event);
        let state = self
            .runs
            .load(workspace_id, run_id)
            .await
            .map_err(service_error)?;
        let conversation_id = state.conversation_id.clone();
        if conversation_id.is_empty() {
            return Err(HandleError::Reject(
                "the run has no conversation to speak in".into(),
            ));
        }
        match record.event {
            Some(Record::MessageSent(m)) | Some(Record::Reasked(m)) => self
                .conversations
                .say(
                    workspace_id,
                    &conversation_id,
                    &format!("flow-{}", event.event_id),
                    &m.text,
                    &m.buttons,
                    &m.form,
                )
                .await
                .map_err(retry),
            Some(Record::EffectRequested(e)) => {
                // A model's step or a workflow the run no longer waits for (its deadline
                // passed) is not worth its cost: the run would not take its outcome.
                let waiting =
                    matches!(&state.run.status, Status::WaitingEffect { key } if *key == e.key);
                if (e.effect == "model" || e.effect == "workflow") && !waiting {
                    return Ok(());
                }
                let inputs: HashMap<String, Json> =
                    serde_json::from_str(&e.inputs_json).unwrap_or_default();
                let text = |v: &Json| match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let outcome = if !e.sealed_inputs.is_empty() {
                    Err(PortError::Refused(
                        "inputs that read secure metadata are only supported by action nodes"
                            .into(),
                    ))
                } else if e.effect == "model" {
                    self.agent.step(workspace_id, &state, &inputs).await
                } else if e.effect == "workflow" {
                    match self
                        .workflow(workspace_id, &state, &e.key, &e.target, inputs)
                        .await
                    {
                        // It runs; its end is its outcome (`child_ended`).
                        Ok(None) => return Ok(()),
                        Ok(Some(outputs)) => Ok(outputs),
                        Err(e) => Err(e),
                    }
                } else if e.effect == "update_conversation" {
                    let status = inputs.get("status").map(text);
                    let metafields = inputs
                        .iter()
                        .filter_map(|(k, v)| {
                            k.strip_prefix("metafields.")
                                .map(|k| (k.to_owned(), text(v)))
                        })
                        .collect();
                    self.conversations
                        .update(
                            workspace_id,
                            &conversation_id,
                            &format!("flow-{}", e.key.replace('/', "-")),
                            status.as_deref(),
                            metafields,
                        )
                        .await
                        .map(|_| json!({}))
                } else if e.effect != "connexease" {
                    Err(PortError::Refused(format!(
                        "`{}` is not an effect this service carries out",
                        e.effect
                    )))
                } else {
                    match &self.connexease {
                        None => Err(PortError::Refused(
                            "no connexease service is configured (SWITCHBOARD_CONNEXEASE_URL)"
                                .into(),
                        )),
                        Some(connexease) => {
                            let arguments =
                                inputs.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                            connexease
                                .run(workspace_id, &conversation_id, &e.key, &e.target, arguments)
                                .await
                        }
                    }
                };
                let outcome = match outcome {
                    Err(unavailable @ PortError::Unavailable(_)) => return Err(retry(unavailable)),
                    outcome => outcome,
                };
                // Its own commit: this subscription's inbox is not the log (a model's
                // answer can take a while, and SQLite has one writer). A redelivery decides
                // nothing twice: the run no longer waits for the key.
                self.runs
                    .handle(workspace_id, run_id, done(&e.key, outcome))
                    .await
                    .map(|_| ())
                    .map_err(service_error)
            }
            Some(Record::Ended(_)) => self.child_ended(workspace_id, &state).await,
            _ => Ok(()),
        }
    }
}
