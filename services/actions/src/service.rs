//! The command handler: load the action, seal any new secret, decide, append, retry a
//! bounded number of times when another writer wins the race.

use std::sync::Arc;

use prost::Message as _;
use switchboard_eventlog::{
    self as eventlog, Aggregate, CommandError, Decision, EventLog, EventLogError, Executed,
    ExpectedVersion, Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, now_micros,
};
use switchboard_outbound::GuardedClient;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionExecutedEvent, ExecutionCompleted, ExecutionResult, ExecutionStarted,
    PermissionLevel, Trigger,
};
use switchboard_secrets::Keyring;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{self, Command, DomainError, FieldViolation, secret_owner};
use crate::execute::{Executor, Invocation};

const MAX_ATTEMPTS: u32 = 5;
pub const STREAM_TYPE: &str = "action";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(
        "{code}: the action is changing too fast; retry",
        code = switchboard_runtime::codes::ACT_CONTENDED.id
    )]
    Contended,
    #[error(
        "{code}: an execution with this idempotency key is still running; retry later",
        code = switchboard_runtime::codes::ACT_IN_PROGRESS.id
    )]
    InProgress {
        /// When the running execution's claim lapses (microseconds since the epoch): if it
        /// has not recorded an outcome by then, the key may be run again.
        lease_until: i64,
    },
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

#[derive(Clone)]
pub struct ActionService {
    log: EventLog,
    keyring: Arc<Keyring>,
    executor: Executor,
}

/// Where an execution stream stands.
enum ClaimState {
    Unclaimed,
    Held {
        /// The stream version of the latest claim.
        version: u64,
        claim: u32,
        execution_id: String,
        lease_until: i64,
    },
    Completed(Box<ExecutionResult>),
}

impl ClaimState {
    /// The error for a key someone else is running (or has just claimed).
    fn in_progress(&self) -> ServiceError {
        ServiceError::InProgress {
            lease_until: match self {
                ClaimState::Held { lease_until, .. } => *lease_until,
                _ => now_micros() + 1_000_000,
            },
        }
    }
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
    /// Who made the run happen; its level caps `caller`.
    pub trigger: Trigger,
    pub conversation_id: String,
    pub test: bool,
    /// The flow run and node that asked, when a flow did.
    pub run_id: String,
    pub node_id: String,
    /// The caller will put the result into the conversation.
    pub inject_result: bool,
    /// The conversation's message that confirmed the run, when one did.
    pub confirmed_by: String,
}

pub mod execution_events {
    pub use switchboard_contract::event_types::actions::{
        EXECUTED, EXECUTION_COMPLETED as COMPLETED, EXECUTION_STARTED as STARTED,
    };
}

impl ActionService {
    pub fn new(log: EventLog, keyring: Arc<Keyring>, client: GuardedClient) -> Self {
        let executor = Executor::new(client, keyring.clone()).with_shared_limits(log.clone());
        Self {
            log,
            keyring,
            executor,
        }
    }

    /// Wires the systems integration kinds act on (conversations, Connexease, workflows,
    /// query databases); without it they answer "not connected".
    pub fn with_ports(mut self, ports: crate::ports::Ports) -> Self {
        self.executor = self.executor.with_ports(ports);
        self
    }

    /// The systems integration kinds act on.
    pub fn ports(&self) -> &crate::ports::Ports {
        self.executor.ports()
    }

    /// The keys secrets are sealed with.
    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
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
        let integration = self.integration_of(&definition).await?;
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
        let (expected, claim, execution_id) = match self.claim_state(&stream).await? {
            ClaimState::Completed(result) => return Ok(*result),
            ClaimState::Held { lease_until, .. } if lease_until > now_micros() => {
                return Err(ServiceError::InProgress { lease_until });
            }
            // The run that claimed the key died before recording an outcome: run it again
            // under the same key (the target sees the same Idempotency-Key).
            ClaimState::Held {
                version,
                claim,
                execution_id,
                ..
            } => (ExpectedVersion::Exact(version), claim + 1, execution_id),
            ClaimState::Unclaimed => (ExpectedVersion::NoStream, 1, execution_id),
        };
        let metadata = Metadata {
            workspace_id: ctx.workspace_id.clone(),
            correlation_id: key.clone(),
            traceparent: ctx.traceparent.clone(),
            occurred_at: now_micros(),
            ..Default::default()
        };
        let lease = crate::execute::lease_for(&definition);
        let started = ExecutionStarted {
            execution_id: execution_id.clone(),
            action_id: definition.id.clone(),
            idempotency_key: key.clone(),
            test: request.test,
            conversation_id: request.conversation_id.clone(),
            lease_until: now_micros() + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2),
            claim,
        };
        let claim_event = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: execution_events::STARTED.into(),
            schema_version: 1,
            payload: started.encode_to_vec(),
            metadata: metadata.clone(),
        };
        let claimed_version = match self.log.append(&stream, expected, vec![claim_event]).await {
            Ok(appended) => appended.events.last().map_or(1, |e| e.stream_version),
            Err(EventLogError::Conflict { .. }) => {
                return match self.claim_state(&stream).await? {
                    ClaimState::Completed(result) => Ok(*result),
                    other => Err(other.in_progress()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let started_at = now_micros();
        let span = tracing::info_span!(
            "action.execute",
            workspace_id = %ctx.workspace_id,
            action_id = %definition.id,
            action_version = definition.version,
            kind = definition.kind().as_str_name(),
            execution_id = %execution_id,
            claim,
            test = request.test,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
            status_code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let mut result = self
            .executor
            .run(Invocation {
                definition: &definition,
                integration: integration.as_ref(),
                variables: request.variables,
                idempotency_key: key,
                traceparent: ctx.traceparent.clone(),
                confirmed: request.confirmed,
                caller: request.caller,
                trigger: request.trigger,
                conversation_id: request.conversation_id.clone(),
                test: request.test,
            })
            .instrument(span.clone())
            .await;
        span.record("outcome", result.outcome().as_str_name());
        span.record("reason", result.reason().as_str_name());
        span.record("status_code", result.status_code);
        span.record("duration_ms", result.duration_ms);
        // What was sent and what went wrong, as recorded: credentials already redacted.
        span.in_scope(|| {
            let request = result.request.as_ref();
            tracing::info!(
                method = request.map_or("", |r| r.method.as_str()),
                url = request.map_or("", |r| r.url.as_str()),
                error = %result.error,
                "action executed"
            );
        });
        result.execution_id = execution_id;
        result.conversation_id = request.conversation_id;
        if result.confirmed {
            result.confirmed_by = request.confirmed_by;
        }
        result.injected_into_conversation = request.inject_result && !request.test;
        result.trace_id = ctx
            .traceparent
            .split('-')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
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
                idempotency_key: if request.test {
                    String::new()
                } else {
                    request.idempotency_key.clone()
                },
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
        match self
            .log
            .append(&stream, ExpectedVersion::Exact(claimed_version), events)
            .await
        {
            Ok(_) => Ok(result),
            // Our lease ran out and another run took the key over: its outcome stands.
            Err(EventLogError::Conflict { .. }) => match self.claim_state(&stream).await? {
                ClaimState::Completed(recorded) => Ok(*recorded),
                other => Err(other.in_progress()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Where an execution stream stands: never claimed, claimed (by whom, until when), or
    /// completed with its outcome.
    async fn claim_state(&self, stream: &StreamRef) -> Result<ClaimState, ServiceError> {
        let mut state = ClaimState::Unclaimed;
        let mut from = 0;
        loop {
            let events = self.log.read_stream(stream, from, 100).await?;
            let Some(last) = events.last() else { break };
            from = last.stream_version;
            for event in &events {
                match event.event_type.as_str() {
                    execution_events::COMPLETED => {
                        let completed: ExecutionCompleted = event.decode()?;
                        let result = completed.result.ok_or_else(|| EventLogError::Corrupt {
                            event_id: event.event_id.to_string(),
                            event_type: event.event_type.clone(),
                            reason: "completed without a result".into(),
                        })?;
                        return Ok(ClaimState::Completed(Box::new(result)));
                    }
                    execution_events::STARTED => {
                        let started: ExecutionStarted = event.decode()?;
                        state = ClaimState::Held {
                            version: event.stream_version,
                            claim: started.claim.max(1),
                            execution_id: started.execution_id,
                            // Claims recorded before leases existed never expire.
                            lease_until: if started.lease_until == 0 {
                                i64::MAX
                            } else {
                                started.lease_until
                            },
                        };
                    }
                    _ => {}
                }
            }
            if events.len() < 100 {
                break;
            }
        }
        Ok(state)
    }

    /// The definition as its events left it, with its stream version.
    pub async fn load(
        &self,
        workspace_id: &str,
        action_id: &str,
    ) -> Result<(Option<ActionDefinition>, u64), ServiceError> {
        let loaded = Actions
            .load(&self.log, &stream_of(workspace_id, action_id))
            .await?;
        Ok((loaded.state, loaded.version))
    }

    /// Runs `command` on the action `action_id`, returning the definition as it now is
    /// (secrets sealed; for a delete, as it was deleted). A repeated request id returns
    /// the original result.
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        action_id: &str,
        command: Command,
    ) -> Result<ActionDefinition, ServiceError> {
        self.check_connection(&command)?;
        self.check_integration(&ctx.workspace_id, &command).await?;
        let stream = stream_of(&ctx.workspace_id, action_id);
        let executed = eventlog::Command::new(&self.log, &stream)
            .attempts(MAX_ATTEMPTS)
            .request(&ctx.workspace_id, &ctx.request_id)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(
                &Actions,
                |loaded: &Loaded<Option<ActionDefinition>>| -> Result<_, DomainError> {
                    let current = loaded.state.as_ref();
                    let command = self.seal_secret(ctx, action_id, current, command.clone());
                    let now = now_micros();
                    let Some(change) = domain::decide(current, command, now)? else {
                        return Ok(Decision::nothing(None));
                    };
                    let event = NewEvent {
                        event_id: Uuid::now_v7(),
                        event_type: change.event_type.to_owned(),
                        schema_version: 1,
                        payload: change.payload(),
                        metadata: Metadata {
                            workspace_id: ctx.workspace_id.clone(),
                            correlation_id: ctx.request_id.clone(),
                            traceparent: ctx.traceparent.clone(),
                            occurred_at: now,
                            actor: switchboard_runtime::requests::current_actor(),
                            ..Default::default()
                        },
                    };
                    Ok(Decision::new(vec![event], Some(change.definition)))
                },
            )
            .await;
        match executed {
            Ok(Executed::Appended { output, .. }) => {
                output.ok_or_else(|| DomainError::NotFound.into())
            }
            Ok(Executed::Unchanged { state, .. }) => {
                state.ok_or_else(|| DomainError::NotFound.into())
            }
            Ok(Executed::Duplicate { events, .. }) => {
                let same = events.first().is_some_and(|e| e.stream == stream);
                match events.first().map(domain::decode).transpose()?.flatten() {
                    Some(original) if same => Ok(original),
                    _ => Err(request_id_reused()),
                }
            }
            // A retried request whose original already succeeded may be refused by the new
            // state: answer with the original.
            Err(CommandError::Rejected { error, original }) => {
                let first = original.as_deref().and_then(<[RecordedEvent]>::first);
                match first.map(domain::decode).transpose()?.flatten() {
                    Some(original) if first.is_some_and(|e| e.stream == stream) => Ok(original),
                    // The request id stored another action's change.
                    Some(_) => Err(request_id_reused()),
                    None => Err(error.into()),
                }
            }
            Err(CommandError::Contended { .. }) => Err(ServiceError::Contended),
            Err(CommandError::RequestReused) => Err(request_id_reused()),
            Err(CommandError::Log(EventLogError::Database(e))) if is_unique_violation(&e) => {
                Err(DomainError::Invalid(vec![FieldViolation {
                    field: "name".into(),
                    description: "another action of the workspace has this name".into(),
                }])
                .into())
            }
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }

    /// A `database_query` action may name only a connection the operator configured.
    fn check_connection(&self, command: &Command) -> Result<(), ServiceError> {
        let (Command::Create { definition } | Command::Update { definition, .. }) = command else {
            return Ok(());
        };
        match self.connection_violation(definition) {
            Some(violation) => Err(DomainError::Invalid(vec![violation]).into()),
            None => Ok(()),
        }
    }

    /// An action may name only an integration of its workspace, with a method it allows.
    async fn check_integration(
        &self,
        workspace_id: &str,
        command: &Command,
    ) -> Result<(), ServiceError> {
        let (Command::Create { definition } | Command::Update { definition, .. }) = command else {
            return Ok(());
        };
        let (Some(id), Some(http)) = (
            domain::integration::of(definition),
            domain::request_spec(definition),
        ) else {
            return Ok(());
        };
        let field = domain::request_spec_field(definition);
        let violation = match self.load_integration(workspace_id, id).await? {
            None => FieldViolation {
                field: format!("{field}.integration_id"),
                description: format!("the workspace has no integration `{id}`"),
            },
            Some(integration) => match domain::integration::refusal(&integration, http) {
                None => return Ok(()),
                Some(refusal) => FieldViolation {
                    field: format!("{field}.method"),
                    description: refusal,
                },
            },
        };
        Err(DomainError::Invalid(vec![violation]).into())
    }

    /// Why `definition`'s query database is not one the operator configured, if it is not.
    pub fn connection_violation(&self, definition: &ActionDefinition) -> Option<FieldViolation> {
        let query = definition.database_query.as_ref()?;
        let databases = &self.executor.ports().databases;
        if databases.contains(&query.connection) {
            return None;
        }
        let known: Vec<&str> = databases.names().collect();
        Some(FieldViolation {
            field: "database_query.connection".into(),
            description: if known.is_empty() {
                "no query database is configured (SWITCHBOARD_QUERY_DATABASES)".into()
            } else {
                format!(
                    "`{}` is not a configured connection; configured: {}",
                    query.connection,
                    known.join(", ")
                )
            },
        })
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
                .and_then(domain::request_spec)
                .and_then(|h| h.auth.as_ref());
            if let Some(auth) =
                domain::request_spec_mut(&mut definition).and_then(|h| h.auth.as_mut())
            {
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
}

/// Action definitions for the command skeleton: every change stores the whole definition,
/// so the latest one is the state; after `action.deleted` there is none.
struct Actions;

impl Aggregate for Actions {
    type State = Option<ActionDefinition>;

    fn apply(
        &self,
        state: &mut Option<ActionDefinition>,
        event: &RecordedEvent,
    ) -> Result<(), EventLogError> {
        if let Some(definition) = domain::decode(event)? {
            *state = (!domain::is_deletion(event)).then_some(definition);
        }
        Ok(())
    }
}

pub(crate) fn request_id_reused() -> ServiceError {
    DomainError::Invalid(vec![FieldViolation {
        field: "request_id".into(),
        description: switchboard_runtime::codes::ACT_REQUEST_ID_REUSED
            .message("this request id was already used for another request"),
    }])
    .into()
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}
