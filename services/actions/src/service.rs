//! The command handler: load the action, seal any new secret, decide, append, retry a
//! bounded number of times when another writer wins the race.

use std::sync::Arc;

use prost::Message as _;
use switchboard_eventlog::{
    EventLog, EventLogError, ExpectedVersion, Metadata, NewEvent, StreamRef, derive_event_id,
    now_micros,
};
use switchboard_outbound::GuardedClient;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionExecutedEvent, ExecutionCompleted, ExecutionResult, ExecutionStarted,
    PermissionLevel,
};
use switchboard_secrets::Keyring;
use uuid::Uuid;

use crate::domain::{self, Command, DomainError, FieldViolation};
use crate::execute::{Executor, Invocation};

const MAX_ATTEMPTS: usize = 5;
pub const STREAM_TYPE: &str = "action";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("SB-ACT-0005: the action is changing too fast; retry")]
    Contended,
    #[error("SB-ACT-0007: an execution with this idempotency key is still running; retry later")]
    InProgress,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// Who asked, for event metadata and idempotency.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub workspace_id: String,
    pub request_id: String,
    pub traceparent: String,
}

pub fn stream_of(workspace_id: &str, action_id: &str) -> StreamRef {
    StreamRef::new(STREAM_TYPE, format!("{workspace_id}/{action_id}"))
}

pub fn new_action_id() -> String {
    format!("act_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// What a secret is bound to: its workspace, action and purpose.
pub fn secret_owner(workspace_id: &str, action_id: &str) -> String {
    format!("{workspace_id}/action/{action_id}/auth")
}

#[derive(Clone)]
pub struct ActionService {
    log: EventLog,
    keyring: Arc<Keyring>,
    executor: Executor,
}

/// What a caller asks to run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub action_id: String,
    pub variables: serde_json::Value,
    /// Empty for a test run.
    pub idempotency_key: String,
    pub confirmed: bool,
    pub caller: PermissionLevel,
    pub conversation_id: String,
    pub test: bool,
    /// The flow run and node that asked, when a flow did.
    pub run_id: String,
    pub node_id: String,
}

pub mod execution_events {
    pub const STARTED: &str = "action_execution.started";
    pub const COMPLETED: &str = "action_execution.completed";
    /// The public event beside every live completion.
    pub const EXECUTED: &str = "action.executed";
}

impl ActionService {
    pub fn new(log: EventLog, keyring: Arc<Keyring>, client: GuardedClient) -> Self {
        let executor = Executor::new(client, keyring.clone());
        Self {
            log,
            keyring,
            executor,
        }
    }

    /// The service's log, where consumers keep their processed records.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Runs an action once per idempotency key: the key is claimed in the log before the
    /// call, and the outcome recorded after it. A repeated key answers with the recorded
    /// outcome; while the first run is still going it is `InProgress`. Test runs get a
    /// stream of their own and are always new.
    pub async fn run(
        &self,
        ctx: &RequestContext,
        request: RunRequest,
    ) -> Result<ExecutionResult, ServiceError> {
        let (definition, _) = self.load(&ctx.workspace_id, &request.action_id).await?;
        let definition = definition.ok_or(DomainError::NotFound)?;
        let execution_id = format!("exec_{}", ulid::Ulid::new().to_string().to_lowercase());
        let (stream, key) = if request.test {
            (
                StreamRef::new(
                    "action_test",
                    format!("{}/{execution_id}", ctx.workspace_id),
                ),
                execution_id.clone(),
            )
        } else {
            (
                StreamRef::new(
                    "action_execution",
                    format!("{}/{}", ctx.workspace_id, request.idempotency_key),
                ),
                request.idempotency_key.clone(),
            )
        };
        if let Some(recorded) = self.recorded(&stream).await? {
            return recorded;
        }
        let metadata = Metadata {
            workspace_id: ctx.workspace_id.clone(),
            correlation_id: key.clone(),
            traceparent: ctx.traceparent.clone(),
            occurred_at: now_micros(),
            ..Default::default()
        };
        let started = ExecutionStarted {
            execution_id: execution_id.clone(),
            action_id: definition.id.clone(),
            idempotency_key: key.clone(),
            test: request.test,
            conversation_id: request.conversation_id.clone(),
        };
        let claim = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: execution_events::STARTED.into(),
            schema_version: 1,
            payload: started.encode_to_vec(),
            metadata: metadata.clone(),
        };
        match self
            .log
            .append(&stream, ExpectedVersion::NoStream, vec![claim])
            .await
        {
            Ok(_) => {}
            Err(EventLogError::Conflict { .. }) => {
                return match self.recorded(&stream).await? {
                    Some(recorded) => recorded,
                    None => Err(ServiceError::InProgress),
                };
            }
            Err(e) => return Err(e.into()),
        }
        let started_at = now_micros();
        let mut result = self
            .executor
            .run(Invocation {
                definition: &definition,
                variables: request.variables,
                idempotency_key: key,
                traceparent: ctx.traceparent.clone(),
                confirmed: request.confirmed,
                caller: request.caller,
                test: request.test,
            })
            .await;
        result.execution_id = execution_id;
        result.conversation_id = request.conversation_id;
        result.started_at = Some(prost_types::Timestamp {
            seconds: started_at.div_euclid(1_000_000),
            nanos: (started_at.rem_euclid(1_000_000) * 1000) as i32,
        });
        let metadata = Metadata {
            occurred_at: now_micros(),
            ..metadata
        };
        let mut events = vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: execution_events::COMPLETED.into(),
            schema_version: 1,
            payload: ExecutionCompleted {
                result: Some(result.clone()),
                run_id: request.run_id.clone(),
                node_id: request.node_id.clone(),
            }
            .encode_to_vec(),
            metadata: metadata.clone(),
        }];
        if !request.test {
            events.push(NewEvent {
                event_id: Uuid::now_v7(),
                event_type: execution_events::EXECUTED.into(),
                schema_version: 1,
                payload: ActionExecutedEvent {
                    result: Some(result.clone()),
                }
                .encode_to_vec(),
                metadata,
            });
        }
        self.log
            .append(&stream, ExpectedVersion::Exact(1), events)
            .await?;
        Ok(result)
    }

    /// The recorded outcome of an execution stream: `None` if it was never claimed,
    /// `Some(Err(InProgress))` while its run has not finished.
    async fn recorded(
        &self,
        stream: &StreamRef,
    ) -> Result<Option<Result<ExecutionResult, ServiceError>>, ServiceError> {
        let events = self.log.read_stream(stream, 0, 10).await?;
        if events.is_empty() {
            return Ok(None);
        }
        for event in &events {
            if event.event_type == execution_events::COMPLETED {
                let completed: ExecutionCompleted = event.decode()?;
                return Ok(Some(completed.result.ok_or_else(|| {
                    EventLogError::Corrupt {
                        event_id: event.event_id.to_string(),
                        event_type: event.event_type.clone(),
                        reason: "completed without a result".into(),
                    }
                    .into()
                })));
            }
        }
        Ok(Some(Err(ServiceError::InProgress)))
    }

    /// The definition as its events left it, with its stream version.
    pub async fn load(
        &self,
        workspace_id: &str,
        action_id: &str,
    ) -> Result<(Option<ActionDefinition>, u64), ServiceError> {
        let stream = stream_of(workspace_id, action_id);
        let mut current = None;
        let mut version = 0;
        loop {
            let events = self.log.read_stream(&stream, version, 500).await?;
            let Some(last) = events.last() else { break };
            version = last.stream_version;
            for event in &events {
                if let Some(definition) = domain::decode(event)? {
                    current = Some(definition);
                }
            }
            if events.len() < 500 {
                break;
            }
        }
        Ok((current, version))
    }

    /// Runs `command` on the action `action_id`, returning the definition as it now is
    /// (secrets sealed). A repeated request id returns the original result.
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        action_id: &str,
        command: Command,
    ) -> Result<ActionDefinition, ServiceError> {
        let stream = stream_of(&ctx.workspace_id, action_id);
        for _ in 0..MAX_ATTEMPTS {
            let (current, version) = self.load(&ctx.workspace_id, action_id).await?;
            let command = self.seal_secret(ctx, action_id, current.as_ref(), command.clone());
            let change = match domain::decide(current.as_ref(), command, now_micros()) {
                Ok(Some(change)) => change,
                Ok(None) => return current.ok_or_else(|| DomainError::NotFound.into()),
                Err(e) => {
                    if let Some(original) = self.original(ctx).await? {
                        return Ok(original);
                    }
                    return Err(e.into());
                }
            };
            let event = NewEvent {
                event_id: if ctx.request_id.is_empty() {
                    Uuid::now_v7()
                } else {
                    derive_event_id(&ctx.workspace_id, &ctx.request_id, 0)
                },
                event_type: change.event_type.to_owned(),
                schema_version: 1,
                payload: change.payload(),
                metadata: Metadata {
                    workspace_id: ctx.workspace_id.clone(),
                    correlation_id: ctx.request_id.clone(),
                    traceparent: ctx.traceparent.clone(),
                    occurred_at: now_micros(),
                    ..Default::default()
                },
            };
            let expected = match version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            match self.log.append(&stream, expected, vec![event]).await {
                Ok(appended) if appended.duplicate => {
                    let same = appended.events.first().is_some_and(|e| e.stream == stream);
                    return match appended
                        .events
                        .first()
                        .map(domain::decode)
                        .transpose()?
                        .flatten()
                    {
                        Some(original) if same => Ok(original),
                        _ => Err(request_id_reused()),
                    };
                }
                Ok(_) => return Ok(change.definition),
                Err(EventLogError::Conflict { .. }) => continue,
                Err(EventLogError::Database(e)) if is_unique_violation(&e) => {
                    return Err(DomainError::Invalid(vec![FieldViolation {
                        field: "name".into(),
                        description: "another action of the workspace has this name".into(),
                    }])
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contended)
    }

    /// Seals a plain secret in the command's definition, or carries the stored one over
    /// when the update gives none for the same kind of auth.
    fn seal_secret(
        &self,
        ctx: &RequestContext,
        action_id: &str,
        current: Option<&ActionDefinition>,
        command: Command,
    ) -> Command {
        let seal = |mut definition: ActionDefinition| {
            let previous = current
                .and_then(|c| c.http.as_ref())
                .and_then(|h| h.auth.as_ref());
            if let Some(auth) = definition.http.as_mut().and_then(|h| h.auth.as_mut()) {
                auth.sealed_secret.clear();
                if !auth.secret.is_empty() {
                    auth.sealed_secret = self.keyring.seal(
                        auth.secret.as_bytes(),
                        &secret_owner(&ctx.workspace_id, action_id),
                    );
                } else if let Some(previous) = previous.filter(|p| p.kind == auth.kind) {
                    auth.sealed_secret = previous.sealed_secret.clone();
                }
            }
            definition
        };
        match command {
            Command::Create { definition } => Command::Create {
                definition: seal(definition),
            },
            Command::Update {
                definition,
                expected_version,
            } => Command::Update {
                definition: seal(definition),
                expected_version,
            },
            other => other,
        }
    }

    async fn original(
        &self,
        ctx: &RequestContext,
    ) -> Result<Option<ActionDefinition>, ServiceError> {
        if ctx.request_id.is_empty() {
            return Ok(None);
        }
        let id = derive_event_id(&ctx.workspace_id, &ctx.request_id, 0);
        match self.log.find_event(id).await? {
            Some(event) => Ok(domain::decode(&event)?),
            None => Ok(None),
        }
    }
}

fn request_id_reused() -> ServiceError {
    DomainError::Invalid(vec![FieldViolation {
        field: "request_id".into(),
        description: "SB-ACT-0006: this request id was already used for another request".into(),
    }])
    .into()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}
