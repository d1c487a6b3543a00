//! What the actions service does with other services' events: it runs the actions flow
//! runs request (`flow_run.action_requested` on `internal.flows.action_requested`), exactly
//! like `ExecuteAction`, so a redelivered request is answered by the recorded outcome and
//! never calls the target twice.

use std::time::Duration;

use async_trait::async_trait;
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx, now_micros};
use switchboard_proto::actions::v1::{ActionRequested, PermissionLevel};

use serde_json::{Map, Value as Json};

use crate::domain::DomainError;
use crate::ports::{Call, PortError};
use crate::service::{ActionService, RequestContext, RunRequest, ServiceError};

/// The event type flow runs publish.
pub use switchboard_contract::event_types::flow_runs::ACTION_REQUESTED;

/// Leases a request waits out before it is retried with the subscription's backoff (a
/// live holder renews nothing: after its lease the key is taken over, so one wait is
/// normally enough).
const LEASE_WAITS: usize = 3;

/// Runs requested actions.
pub struct ActionRequests {
    service: ActionService,
}

impl ActionRequests {
    pub fn new(service: ActionService) -> Self {
        Self { service }
    }
}

impl ActionRequests {
    /// Renders the inputs a flow sealed with the conversation's secure metadata, fetched
    /// now and kept only in this run's variables (as `secure`, which the executor redacts
    /// from everything it records). Metadata that cannot be had leaves those inputs
    /// unset, and the action fails naming them, so the run takes its failure route.
    async fn unseal_inputs(
        &self,
        ctx: &RequestContext,
        request: &ActionRequested,
        variables: &mut Json,
    ) -> Result<(), HandleError> {
        let call = Call {
            workspace_id: &ctx.workspace_id,
            conversation_id: &request.conversation_id,
            idempotency_key: &request.idempotency_key,
            traceparent: &ctx.traceparent,
        };
        let secure = match self
            .service
            .ports()
            .conversations
            .secure_metadata(&call)
            .await
        {
            Ok(secure) => secure,
            Err(e @ (PortError::Unavailable(_) | PortError::Timeout(_))) => {
                return Err(HandleError::Retry(e.to_string()));
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %request.idempotency_key, "secure metadata unavailable; sealed inputs stay unset");
                Map::new()
            }
        };
        if !variables.is_object() {
            *variables = Json::Object(Map::new());
        }
        variables["secure"] = Json::Object(secure);
        let renderer = switchboard_template::Renderer::default();
        let mut rendered = Map::new();
        for (name, template) in &request.sealed_inputs {
            if let Ok(value) = renderer.render_text(template, variables) {
                rendered.insert(name.clone(), Json::String(value));
            }
        }
        if !variables["input"].is_object() {
            variables["input"] = Json::Object(Map::new());
        }
        if let Some(input) = variables["input"].as_object_mut() {
            input.extend(rendered);
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for ActionRequests {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        if event.event_type != ACTION_REQUESTED {
            return Err(HandleError::Reject(format!(
                "not an action request: {}",
                event.event_type
            )));
        }
        let request: ActionRequested = event
            .decode()
            .map_err(|e| HandleError::Reject(e.to_string()))?;
        let mut variables = if request.variables_json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&request.variables_json)
                .map_err(|e| HandleError::Reject(format!("variables_json is not JSON: {e}")))?
        };
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 128 {
            return Err(HandleError::Reject(
                "the idempotency key must be 1 to 128 bytes".into(),
            ));
        }
        let ctx = RequestContext {
            workspace_id: event.metadata.workspace_id.clone(),
            request_id: String::new(),
            // This consumer's span, continuing the requester's trace.
            traceparent: switchboard_runtime::telemetry::current_traceparent()
                .unwrap_or_else(|| event.metadata.traceparent.clone()),
        };
        if !request.sealed_inputs.is_empty() {
            self.unseal_inputs(&ctx, &request, &mut variables).await?;
        }
        let trigger = request.triggered_by();
        let run = RunRequest {
            action_id: request.action_id,
            variables,
            idempotency_key: request.idempotency_key,
            confirmed: request.confirmed,
            caller: PermissionLevel::try_from(request.caller_permission)
                .unwrap_or(PermissionLevel::Agent),
            trigger,
            conversation_id: request.conversation_id,
            test: false,
            run_id: request.run_id,
            node_id: request.node_id,
            inject_result: request.inject_result,
            confirmed_by: request.confirmed_by,
        };
        // The outcome, success or failure, is recorded and published by the run itself.
        // A key another run holds is waited out here, lease by lease, instead of retried
        // with the subscription's backoff: a holder that died (kill -9 mid-call) leaves a
        // claim that only lapses with its lease, which can outlast every retry, and a
        // dead-lettered request would leave its flow run waiting for ever.
        let mut outcome = self.service.run(&ctx, run.clone()).await;
        for _ in 0..LEASE_WAITS {
            let Err(ServiceError::InProgress { lease_until }) = outcome else {
                break;
            };
            let wait = u64::try_from(lease_until - now_micros()).unwrap_or(0);
            tokio::time::sleep(Duration::from_micros(wait.clamp(50_000, 300_000_000))).await;
            outcome = self.service.run(&ctx, run.clone()).await;
        }
        match outcome {
            Ok(_) => Ok(()),
            Err(ServiceError::Domain(DomainError::NotFound)) => Err(HandleError::Reject(
                switchboard_runtime::codes::ACT_NOT_FOUND
                    .message("no such action in the workspace"),
            )),
            Err(e @ ServiceError::Domain(_)) => Err(HandleError::Reject(e.to_string())),
            Err(e) => Err(HandleError::Retry(e.to_string())),
        }
    }
}
