//! What the actions service does with other services' events: it runs the actions flow
//! runs request (`flow_run.action_requested` on `internal.flows.action_requested`), exactly
//! like `ExecuteAction`, so a redelivered request is answered by the recorded outcome and
//! never calls the target twice.

use std::time::Duration;

use async_trait::async_trait;
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx, now_micros};
use switchboard_proto::actions::v1::{ActionRequested, PermissionLevel};

use crate::domain::DomainError;
use crate::service::{ActionService, RequestContext, RunRequest, ServiceError};

/// The event type flow runs publish.
pub const ACTION_REQUESTED: &str = "flow_run.action_requested";
/// Where they publish it.
pub const ACTION_REQUESTED_SUBJECT: &str = "internal.flows.action_requested";
/// The flows service's JetStream stream.
pub const FLOWS_STREAM: &str = "FLOWS";
/// The durable consumer of action requests.
pub const CONSUMER: &str = "actions-action-requested";

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
        let variables = if request.variables_json.trim().is_empty() {
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
            traceparent: event.metadata.traceparent.clone(),
        };
        let run = RunRequest {
            action_id: request.action_id,
            variables,
            idempotency_key: request.idempotency_key,
            confirmed: request.confirmed,
            caller: PermissionLevel::try_from(request.caller_permission)
                .unwrap_or(PermissionLevel::Agent),
            conversation_id: request.conversation_id,
            test: false,
            run_id: request.run_id,
            node_id: request.node_id,
            inject_result: request.inject_result,
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
                "SB-ACT-0404: no such action in the workspace".into(),
            )),
            Err(e @ ServiceError::Domain(_)) => Err(HandleError::Reject(e.to_string())),
            Err(e) => Err(HandleError::Retry(e.to_string())),
        }
    }
}
