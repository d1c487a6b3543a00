//! The command handler: connect and disconnect a workspace, sync its directory, run
//! operations once per idempotency key, and link our conversations to Connexease's.
//!
//! Streams: `connexease/<ws>` (the connection and its directory),
//! `connexease_operation/<ws>/<key>` (one operation run), `connexease_link/<ws>/<conv>` (a
//! link), `connexease_webhook/<ws>/<delivery>` (one inbound webhook).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use prost::Message as _;
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, ExpectedVersion, Loaded,
    Metadata, NewEvent, RecordedEvent, StreamRef, VersionOnly, now_micros, timestamp,
};
use switchboard_proto::connexease::v1::{
    Agent, AuthScheme, Connection, ConnectionChanged, CustomField, Directory, DirectorySynced,
    Group, Link, Linked, OperationRecorded, OperationResult, ResponseStats, RunOperationRequest,
    StatsRead, TestConnectionResponse,
};
use switchboard_runtime::requests::valid_prefixed_id;
use switchboard_secrets::{Keyring, Secret};
use uuid::Uuid;

use crate::client::{Answer, Auth, ClientError, ConnexeaseApi, Target, uuid_at};
use crate::domain::{self, FieldViolation, Plan, event_types};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error(
        "{code}: the workspace has no Connexease connection; connect it first",
        code = switchboard_runtime::codes::CX_NOT_CONNECTED.id
    )]
    NotConnected,
    #[error("{code}: {0}", code = switchboard_runtime::codes::CX_UPSTREAM_FAILED.id)]
    Connexease(ClientError),
    #[error(
        "{code}: an operation with this idempotency key is still running; retry later",
        code = switchboard_runtime::codes::CX_IN_PROGRESS.id
    )]
    InProgress,
    #[error(
        "{code}: the connection is changing too fast; retry",
        code = switchboard_runtime::codes::CX_CONTENDED.id
    )]
    Contended,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

fn invalid(field: &str, description: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(vec![FieldViolation {
        field: field.into(),
        description: description.into(),
    }])
}

pub fn connection_stream(workspace_id: &str) -> StreamRef {
    StreamRef::new("connexease", workspace_id.to_owned())
}

fn operation_stream(workspace_id: &str, key: &str) -> StreamRef {
    StreamRef::new("connexease_operation", format!("{workspace_id}/{key}"))
}

pub fn link_stream(workspace_id: &str, conversation_id: &str) -> StreamRef {
    StreamRef::new(
        "connexease_link",
        format!("{workspace_id}/{conversation_id}"),
    )
}

fn token_owner(workspace_id: &str) -> String {
    format!("{workspace_id}/connexease/access_token")
}

fn webhook_secret_owner(workspace_id: &str) -> String {
    format!("{workspace_id}/connexease/webhook_secret")
}

fn password_owner(workspace_id: &str) -> String {
    format!("{workspace_id}/connexease/password")
}

/// A workspace's connection and directory as their events left them.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub connection: Option<Connection>,
    pub directory: Option<Directory>,
    pub version: u64,
}

impl State {
    pub fn connected(&self) -> Option<&Connection> {
        self.connection.as_ref().filter(|c| c.connected)
    }
}

#[derive(Clone)]
pub struct ConnexeaseService {
    log: EventLog,
    keyring: Arc<Keyring>,
    api: Arc<dyn ConnexeaseApi>,
    /// `dev`: the simulator, connected on first use by a workspace that has no connection.
    default_connection: Option<Arc<Connection>>,
}

/// The connection as callers see it: no secret, sealed or not.
pub fn public_view(mut connection: Connection) -> Connection {
    connection.access_token_set = !connection.sealed_access_token.is_empty();
    connection.webhook_secret_set = !connection.sealed_webhook_secret.is_empty();
    connection.password_set = !connection.sealed_password.is_empty();
    connection.access_token.clear();
    connection.webhook_secret.clear();
    connection.password.clear();
    connection.sealed_access_token.clear();
    connection.sealed_webhook_secret.clear();
    connection.sealed_password.clear();
    connection
}

pub(crate) fn metadata(workspace_id: &str, correlation_id: &str) -> Metadata {
    Metadata {
        workspace_id: workspace_id.to_owned(),
        correlation_id: correlation_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
        occurred_at: now_micros(),
        ..Default::default()
    }
}

pub(crate) fn event(event_type: &str, payload: Vec<u8>, metadata: Metadata) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        payload,
        metadata,
    }
}

impl ConnexeaseService {
    pub fn new(log: EventLog, keyring: Arc<Keyring>, api: Arc<dyn ConnexeaseApi>) -> Self {
        Self {
            log,
            keyring,
            api,
            default_connection: None,
        }
    }

    /// Connects a workspace that was never connected to `connection` on its first
    /// operation (for `dev`, where the simulator stands in for Connexease).
    pub fn with_default_connection(mut self, connection: Connection) -> Self {
        self.default_connection = Some(Arc::new(connection));
        self
    }

    /// The workspace's state, connecting it to the default connection first when it was
    /// never connected and one is configured.
    async fn load_or_connect(&self, workspace_id: &str) -> Result<State, ServiceError> {
        let state = self.load(workspace_id).await?;
        match (&state.connection, &self.default_connection) {
            (None, Some(default)) => {
                match self
                    .connect(workspace_id, "default-connection", (**default).clone())
                    .await
                {
                    Ok(_) | Err(ServiceError::Contended) => self.load(workspace_id).await,
                    Err(e) => Err(e),
                }
            }
            _ => Ok(state),
        }
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The connection and directory of a workspace.
    pub async fn load(&self, workspace_id: &str) -> Result<State, ServiceError> {
        let loaded = Connections
            .load(&self.log, &connection_stream(workspace_id))
            .await?;
        Ok(loaded.state)
    }

    /// Appends `event` to the workspace's connection, decided on it at `version` around a
    /// call to Connexease, in one attempt: a lost race is the caller's to answer.
    async fn append_once(
        &self,
        workspace_id: &str,
        version: u64,
        event: NewEvent,
    ) -> Result<(), CommandError<Infallible>> {
        let stream = connection_stream(workspace_id);
        let mut event = Some(event);
        Command::new(&self.log, &stream)
            .attempts(1)
            .starting_from(Loaded::new((), version))
            .run(&VersionOnly, |_| {
                Ok(Decision::events(event.take().into_iter().collect()))
            })
            .await
            .map(drop)
    }

    /// Opens a secret of the connection sealed for `owner`.
    fn open(&self, sealed: &[u8], owner: &str, what: &str) -> Result<Secret, ServiceError> {
        let opened = self.keyring.open(sealed, owner).map_err(|e| {
            ServiceError::Log(EventLogError::Corrupt {
                event_id: String::new(),
                event_type: event_types::CONNECTED.into(),
                reason: format!("the {what} cannot be opened: {e}"),
            })
        })?;
        Ok(Secret::new(String::from_utf8_lossy(&opened).into_owned()))
    }

    fn target(&self, connection: &Connection) -> Result<Target, ServiceError> {
        let workspace_id = &connection.workspace_id;
        let auth = match connection.auth_scheme() {
            AuthScheme::Jwt => Auth::Jwt {
                username: connection.username.clone(),
                password: self.open(
                    &connection.sealed_password,
                    &password_owner(workspace_id),
                    "password",
                )?,
            },
            AuthScheme::Bearer | AuthScheme::Unspecified => Auth::Bearer(self.open(
                &connection.sealed_access_token,
                &token_owner(workspace_id),
                "access token",
            )?),
        };
        Ok(Target {
            workspace_id: connection.workspace_id.clone(),
            base_url: connection.base_url.clone(),
            auth,
            rate_per_second: match connection.rate_limit_per_second {
                0 => domain::limits::RATE_DEFAULT,
                n => n,
            },
        })
    }

    /// The webhook signing secret of a connected workspace.
    pub fn webhook_secret(&self, connection: &Connection) -> Option<Secret> {
        self.keyring
            .open(
                &connection.sealed_webhook_secret,
                &webhook_secret_owner(&connection.workspace_id),
            )
            .ok()
            .map(|s| Secret::new(String::from_utf8_lossy(&s).into_owned()))
    }

    /// Checks `connection` as [`Self::connect`] will, pushing every violation into `v` beside
    /// the request's others: whether its secrets may be left out depends on the stored
    /// connection. An id that names no workspace was never connected: nothing is loaded.
    pub async fn check_connection(
        &self,
        workspace_id: &str,
        connection: &Connection,
        v: &mut Vec<FieldViolation>,
    ) -> Result<(), ServiceError> {
        let previous = if valid_prefixed_id(workspace_id, "ws_") {
            self.load(workspace_id).await?.connection
        } else {
            None
        };
        v.extend(domain::validate_connection(connection, previous.as_ref()));
        Ok(())
    }

    /// Connects the workspace: checks the token against Connexease, records the
    /// connection (secrets sealed), then pulls the directory.
    pub async fn connect(
        &self,
        workspace_id: &str,
        request_id: &str,
        mut connection: Connection,
    ) -> Result<(Connection, Option<Directory>), ServiceError> {
        let state = self.load(workspace_id).await?;
        let previous = state.connection.as_ref();
        let violations = domain::validate_connection(&connection, previous);
        if !violations.is_empty() {
            return Err(ServiceError::Invalid(violations));
        }
        connection.workspace_id = workspace_id.to_owned();
        connection.base_url = connection.base_url.trim().trim_end_matches('/').to_owned();
        connection.sealed_access_token = if connection.access_token.is_empty() {
            previous
                .map(|p| p.sealed_access_token.clone())
                .unwrap_or_default()
        } else {
            self.keyring.seal(
                connection.access_token.as_bytes(),
                &token_owner(workspace_id),
            )
        };
        connection.sealed_webhook_secret = if connection.webhook_secret.is_empty() {
            previous
                .map(|p| p.sealed_webhook_secret.clone())
                .unwrap_or_default()
        } else {
            self.keyring.seal(
                connection.webhook_secret.as_bytes(),
                &webhook_secret_owner(workspace_id),
            )
        };
        connection.sealed_password = if connection.password.is_empty() {
            previous
                .map(|p| p.sealed_password.clone())
                .unwrap_or_default()
        } else {
            self.keyring.seal(
                connection.password.as_bytes(),
                &password_owner(workspace_id),
            )
        };
        connection.access_token.clear();
        connection.webhook_secret.clear();
        connection.password.clear();
        // Connexease documents no call that names the account: the connection is checked
        // with a documented read.
        self.api
            .check(&self.target(&connection)?)
            .await
            .map_err(|e| match e {
                ClientError::Unauthorized(_) => {
                    let field = match connection.auth_scheme() {
                        AuthScheme::Jwt => "password",
                        _ => "access_token",
                    };
                    invalid(field, e.to_string())
                }
                ClientError::Blocked(reason) => invalid("base_url", reason),
                other => ServiceError::Connexease(other),
            })?;
        connection.connected = true;
        connection.version = state.version + 1;
        connection.connected_at = Some(timestamp(now_micros()));
        let payload = ConnectionChanged {
            connection: Some(connection.clone()),
        }
        .encode_to_vec();
        let connected = event(
            event_types::CONNECTED,
            payload,
            metadata(workspace_id, request_id),
        );
        match self
            .append_once(workspace_id, state.version, connected)
            .await
        {
            Ok(()) => {}
            Err(CommandError::Rejected { error, .. }) => match error {},
            Err(CommandError::Contended { .. }) => return Err(ServiceError::Contended),
            Err(CommandError::RequestReused) => return Err(reused()),
            Err(CommandError::Log(e)) => return Err(e.into()),
        }
        let directory = self.sync_directory(workspace_id).await?;
        Ok((connection, Some(directory)))
    }

    pub async fn disconnect(
        &self,
        workspace_id: &str,
        request_id: &str,
    ) -> Result<Connection, ServiceError> {
        let stream = connection_stream(workspace_id);
        // One attempt: a change in between is `Contended`, as it always was.
        let executed = Command::new(&self.log, &stream)
            .attempts(1)
            .run(
                &Connections,
                |loaded: &Loaded<State>| -> Result<_, ServiceError> {
                    let mut connection = loaded
                        .state
                        .connected()
                        .cloned()
                        .ok_or(ServiceError::NotConnected)?;
                    connection.connected = false;
                    // Disconnecting forgets the credentials.
                    connection.sealed_access_token.clear();
                    connection.sealed_webhook_secret.clear();
                    connection.sealed_password.clear();
                    connection.version = loaded.version + 1;
                    let payload = ConnectionChanged {
                        connection: Some(connection.clone()),
                    }
                    .encode_to_vec();
                    let disconnected = event(
                        event_types::DISCONNECTED,
                        payload,
                        metadata(workspace_id, request_id),
                    );
                    Ok(Decision::new(vec![disconnected], connection))
                },
            )
            .await;
        match executed {
            Ok(executed) => Ok(executed.into_output()),
            Err(CommandError::Rejected { error, .. }) => Err(error),
            Err(CommandError::Contended { .. }) => Err(ServiceError::Contended),
            Err(CommandError::RequestReused) => Err(reused()),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }

    pub async fn test_connection(
        &self,
        workspace_id: &str,
    ) -> Result<TestConnectionResponse, ServiceError> {
        let state = self.load(workspace_id).await?;
        let connection = state.connected().ok_or(ServiceError::NotConnected)?;
        let started = Instant::now();
        let answer = self.api.check(&self.target(connection)?).await;
        let duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        Ok(match answer {
            Ok(_) => TestConnectionResponse {
                ok: true,
                duration_ms,
                ..Default::default()
            },
            Err(e) => TestConnectionResponse {
                ok: false,
                error: e.to_string(),
                duration_ms,
                ..Default::default()
            },
        })
    }

    /// Pulls groups, agents and custom fields; records them when they changed.
    pub async fn sync_directory(&self, workspace_id: &str) -> Result<Directory, ServiceError> {
        let state = self.load(workspace_id).await?;
        let connection = state.connected().ok_or(ServiceError::NotConnected)?;
        let answer = self
            .api
            .directory(&self.target(connection)?)
            .await
            .map_err(ServiceError::Connexease)?;
        let mut directory = directory_from(&answer.body);
        let unchanged = state.directory.as_ref().is_some_and(|d| {
            d.groups == directory.groups
                && d.agents == directory.agents
                && d.fields == directory.fields
        });
        if unchanged {
            return Ok(state.directory.unwrap_or(directory));
        }
        directory.synced_at = Some(timestamp(now_micros()));
        let payload = DirectorySynced {
            directory: Some(directory.clone()),
        }
        .encode_to_vec();
        let synced = event(
            event_types::DIRECTORY_SYNCED,
            payload,
            metadata(workspace_id, ""),
        );
        match self.append_once(workspace_id, state.version, synced).await {
            // Another sync recorded the same directory first: either is right.
            Ok(()) | Err(CommandError::Contended { .. }) => Ok(directory),
            Err(CommandError::Rejected { error, .. }) => match error {},
            Err(CommandError::RequestReused) => Err(reused()),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }

    /// Reads Connexease's `/stats` and records the reading in `connexease_stats/<ws>/<day>`
    /// when it differs from the day's last one; answers it. An answer without the lists
    /// is refused, so it never replaces the last reading. An agent's email comes from the
    /// directory.
    pub async fn read_stats(&self, workspace_id: &str) -> Result<StatsRead, ServiceError> {
        let state = self.load(workspace_id).await?;
        let connection = state.connected().ok_or(ServiceError::NotConnected)?;
        let answer = self
            .api
            .stats(&self.target(connection)?)
            .await
            .map_err(ServiceError::Connexease)?;
        let mut read = stats_from(&answer.body, state.directory.as_ref()).ok_or_else(|| {
            ServiceError::Connexease(ClientError::Server {
                status: 200,
                message: "/stats answered without `channels` and `agents` lists".into(),
                attempts: answer.attempts,
            })
        })?;
        let stream = daily_stream("connexease_stats", workspace_id);
        let (last, version) = self.last_event(&stream).await?;
        if let Some(last) = last {
            let before: StatsRead = last.decode()?;
            if before.channels == read.channels && before.agents == read.agents {
                return Ok(before);
            }
        }
        read.read_at = Some(timestamp(now_micros()));
        let recorded = event(
            event_types::STATS_READ,
            read.encode_to_vec(),
            metadata(workspace_id, ""),
        );
        let expected = match version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        match self.log.append(&stream, expected, vec![recorded]).await {
            // Another reading was recorded at the same moment: either is right.
            Ok(_) | Err(EventLogError::Conflict { .. }) => Ok(read),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs an operation once per idempotency key. Invalid references are refused before
    /// anything is claimed; a transient failure releases the key for a later retry; any
    /// other outcome is recorded and answers every repeat.
    pub async fn run_operation(
        &self,
        workspace_id: &str,
        request: RunOperationRequest,
    ) -> Result<OperationResult, ServiceError> {
        let state = self.load_or_connect(workspace_id).await?;
        let Some(connection) = state.connected().cloned() else {
            return Err(unconnected(&request));
        };
        let directory = match state.directory.clone() {
            Some(directory) => directory,
            None => self.sync_directory(workspace_id).await?,
        };
        let arguments = arguments_of(&request);
        let plan = domain::resolve(&directory, &request.operation, &arguments)
            .map_err(ServiceError::Invalid)?;
        let stream = operation_stream(workspace_id, &request.idempotency_key);
        let expected = match self.claim_state(&stream).await? {
            Claim::Completed(mut result) => {
                result.replayed = true;
                return Ok(*result);
            }
            Claim::Running => return Err(ServiceError::InProgress),
            Claim::Free(0) => ExpectedVersion::NoStream,
            Claim::Free(version) => ExpectedVersion::Exact(version),
        };
        let meta = metadata(workspace_id, &request.idempotency_key);
        let started = OperationRecorded {
            request: Some(request.clone()),
            result: None,
        };
        let claimed = match self
            .log
            .append(
                &stream,
                expected,
                vec![event(
                    event_types::OPERATION_STARTED,
                    started.encode_to_vec(),
                    meta.clone(),
                )],
            )
            .await
        {
            Ok(appended) => appended.events.last().map_or(1, |e| e.stream_version),
            Err(EventLogError::Conflict { .. }) => return Err(ServiceError::InProgress),
            Err(e) => return Err(e.into()),
        };
        let clock = Instant::now();
        let target = self.target(&connection)?;
        let outcome = self.apply(workspace_id, &target, &request, &plan).await;
        let duration_ms = u32::try_from(clock.elapsed().as_millis()).unwrap_or(u32::MAX);
        let (event_type, result, error) = match outcome {
            Ok((link, answer)) => (
                event_types::OPERATION_COMPLETED,
                OperationResult {
                    operation: request.operation.clone(),
                    ok: true,
                    external_conversation_id: link.external_conversation_id,
                    external_customer_id: link.external_customer_id,
                    attempts: answer.attempts,
                    duration_ms,
                    response_json: answer.body.to_string(),
                    ..Default::default()
                },
                None,
            ),
            Err(Failure::Permanent(message)) => (
                event_types::OPERATION_COMPLETED,
                OperationResult {
                    operation: request.operation.clone(),
                    ok: false,
                    error: message,
                    duration_ms,
                    ..Default::default()
                },
                None,
            ),
            Err(Failure::Transient(e)) => (
                event_types::OPERATION_ABANDONED,
                OperationResult {
                    operation: request.operation.clone(),
                    ok: false,
                    error: e.to_string(),
                    duration_ms,
                    ..Default::default()
                },
                Some(e),
            ),
            Err(Failure::Refused(e)) => (
                event_types::OPERATION_ABANDONED,
                OperationResult {
                    operation: request.operation.clone(),
                    ok: false,
                    error: e.to_string(),
                    duration_ms,
                    ..Default::default()
                },
                Some(e),
            ),
        };
        let recorded = OperationRecorded {
            request: Some(request),
            result: Some(result.clone()),
        };
        self.log
            .append(
                &stream,
                ExpectedVersion::Exact(claimed),
                vec![event(event_type, recorded.encode_to_vec(), meta)],
            )
            .await?;
        match error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    async fn apply(
        &self,
        workspace_id: &str,
        target: &Target,
        request: &RunOperationRequest,
        plan: &Plan,
    ) -> Result<(Link, Answer), Failure> {
        let link = self
            .link_for(
                workspace_id,
                target,
                &request.conversation_id,
                request
                    .arguments
                    .get("external_conversation_id")
                    .map(String::as_str),
            )
            .await?;
        let conversation = &link.external_conversation_id;
        let customer = &link.external_customer_id;
        let answer = match plan {
            Plan::Assign(to) => self.api.assign(target, conversation, to).await,
            Plan::Archive(archived) => self.api.set_archived(target, conversation, *archived).await,
            Plan::ConversationFields(fields) => {
                self.api
                    .set_conversation_fields(target, conversation, fields)
                    .await
            }
            Plan::UpdateCustomer(update) => {
                self.api.update_customer(target, customer, update).await
            }
            Plan::CustomerFields(fields) => {
                self.api.set_customer_fields(target, customer, fields).await
            }
        };
        answer.map(|a| (link, a)).map_err(Failure::from)
    }

    /// The Connexease conversation (and customer) linked to ours: recorded, or created on
    /// first use from `external_conversation_id` (Connexease is asked for its customer).
    async fn link_for(
        &self,
        workspace_id: &str,
        target: &Target,
        conversation_id: &str,
        external_conversation_id: Option<&str>,
    ) -> Result<Link, Failure> {
        if let Some(link) = self
            .link(workspace_id, conversation_id)
            .await
            .map_err(Failure::Refused)?
            && external_conversation_id.is_none_or(|id| id == link.external_conversation_id)
        {
            return Ok(link);
        }
        let Some(external) = external_conversation_id.filter(|id| !id.trim().is_empty()) else {
            return Err(Failure::Refused(invalid(
                "conversation_id",
                format!(
                    "conversation `{conversation_id}` is not linked to a Connexease conversation; \
                     pass arguments[external_conversation_id] (or let Connexease's \
                     conversation.created webhook link it)"
                ),
            )));
        };
        let found = self
            .api
            .conversation(target, external)
            .await
            .map_err(Failure::from)?;
        let link = Link {
            conversation_id: conversation_id.to_owned(),
            external_conversation_id: external.to_owned(),
            external_customer_id: uuid_at(&found.body, "customer").unwrap_or_default(),
            external_status: found.body["status"].as_str().unwrap_or_default().into(),
            group_id: uuid_at(&found.body, "group").unwrap_or_default(),
            agent_id: uuid_at(&found.body, "agent").unwrap_or_default(),
        };
        self.record_link(workspace_id, link.clone())
            .await
            .map_err(Failure::Refused)?;
        Ok(link)
    }

    /// Records a link (a new one, or a change of what Connexease last told us).
    pub async fn record_link(&self, workspace_id: &str, link: Link) -> Result<(), ServiceError> {
        let stream = link_stream(workspace_id, &link.conversation_id);
        let payload = Linked { link: Some(link) }.encode_to_vec();
        // The latest link stands, whatever came before it: only the version matters.
        let executed = Command::new(&self.log, &stream)
            .attempts(5)
            .run(&VersionOnly, |_| {
                let linked = event(
                    event_types::LINKED,
                    payload.clone(),
                    metadata(workspace_id, ""),
                );
                Ok::<_, Infallible>(Decision::events(vec![linked]))
            })
            .await;
        match executed {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected { error, .. }) => match error {},
            Err(CommandError::Contended { .. }) => Err(ServiceError::Contended),
            Err(CommandError::RequestReused) => Err(reused()),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }

    pub async fn link(
        &self,
        workspace_id: &str,
        conversation_id: &str,
    ) -> Result<Option<Link>, ServiceError> {
        let (last, _) = self
            .last_event(&link_stream(workspace_id, conversation_id))
            .await?;
        Ok(match last {
            Some(event) => event.decode::<Linked>()?.link,
            None => None,
        })
    }

    /// The last event of a short stream, and its version.
    async fn last_event(
        &self,
        stream: &StreamRef,
    ) -> Result<(Option<switchboard_eventlog::RecordedEvent>, u64), ServiceError> {
        let mut last = None;
        let mut version = 0;
        loop {
            let events = self.log.read_stream(stream, version, 500).await?;
            let full = events.len() == 500;
            if let Some(event) = events.into_iter().last() {
                version = event.stream_version;
                last = Some(event);
            }
            if !full {
                return Ok((last, version));
            }
        }
    }

    async fn claim_state(&self, stream: &StreamRef) -> Result<Claim, ServiceError> {
        let mut claim = Claim::Free(0);
        let mut from = 0;
        loop {
            let events = self.log.read_stream(stream, from, 100).await?;
            let Some(last) = events.last() else { break };
            from = last.stream_version;
            for event in &events {
                claim = match event.event_type.as_str() {
                    event_types::OPERATION_STARTED => Claim::Running,
                    event_types::OPERATION_ABANDONED => Claim::Free(event.stream_version),
                    event_types::OPERATION_COMPLETED => {
                        let recorded: OperationRecorded = event.decode()?;
                        Claim::Completed(Box::new(recorded.result.unwrap_or_default()))
                    }
                    _ => claim,
                };
            }
            if events.len() < 100 {
                break;
            }
        }
        Ok(claim)
    }
}

/// Checks what an operation's request holds by itself (the operation and its arguments'
/// shape), needing no directory, pushing every violation into `v` beside the request's
/// others; [`ConnexeaseService::run_operation`] checks its references in the directory
/// with these.
pub fn check_operation(request: &RunOperationRequest, v: &mut Vec<FieldViolation>) {
    domain::check_operation(&request.operation, &arguments_of(request), v);
}

/// Why an operation of a workspace that is not connected is refused: what is wrong with
/// the request itself comes first (it is wrong whatever the connection), then the missing
/// connection.
fn unconnected(request: &RunOperationRequest) -> ServiceError {
    let mut v = Vec::new();
    check_operation(request, &mut v);
    if v.is_empty() {
        ServiceError::NotConnected
    } else {
        ServiceError::Invalid(v)
    }
}

/// An operation's arguments in name order, as the domain takes them.
fn arguments_of(request: &RunOperationRequest) -> BTreeMap<String, String> {
    request
        .arguments
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A workspace's connection and directory for the command skeleton.
struct Connections;

impl Aggregate for Connections {
    type State = State;

    fn apply(&self, state: &mut State, event: &RecordedEvent) -> Result<(), EventLogError> {
        match event.event_type.as_str() {
            event_types::CONNECTED | event_types::DISCONNECTED => {
                state.connection = event.decode::<ConnectionChanged>()?.connection;
            }
            event_types::DIRECTORY_SYNCED => {
                state.directory = event.decode::<DirectorySynced>()?.directory;
            }
            _ => {}
        }
        Ok(())
    }

    fn at_version(&self, state: &mut State, version: u64) {
        state.version = version;
    }
}

enum Claim {
    /// Never run, or released after a transient failure (the stream's version).
    Free(u64),
    Running,
    Completed(Box<OperationResult>),
}

/// How an operation did not happen.
enum Failure {
    /// Connexease refused it for good (404, 422): recorded as the key's outcome.
    Permanent(String),
    /// Connexease could not be reached after the retries: the key is released.
    Transient(ServiceError),
    /// We refused it before calling (not linked); the key is released.
    Refused(ServiceError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            // An unknown outcome is recorded, not retried: running it again could do it twice.
            ClientError::NotFound(_) | ClientError::Invalid(_) | ClientError::Unknown { .. } => {
                Failure::Permanent(e.to_string())
            }
            other => Failure::Transient(ServiceError::Connexease(other)),
        }
    }
}

/// A workspace's stream of `category` for today (UTC): `<category>/<ws>/<date>`, for
/// records kept in turn through a day (a day's stream stays short to fold).
pub(crate) fn daily_stream(category: &str, workspace_id: &str) -> StreamRef {
    let today = time::OffsetDateTime::now_utc().date();
    StreamRef::new(category, format!("{workspace_id}/{today}"))
}

/// A `/stats` answer (help.connexease.com/dev, "Endpoints": per-channel message, customer
/// and response-time counters, agents by uuid and name; the member names are assumed as
/// the fixtures write them), agents' emails taken from `directory`.
fn stats_from(body: &serde_json::Value, directory: Option<&Directory>) -> Option<StatsRead> {
    // An answer of another shape is no reading: it must not replace the last one.
    if !(body["channels"].is_array() && body["agents"].is_array()) {
        return None;
    }
    let list = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    let seconds = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or_default();
    let count = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or_default();
    let id = |v: &serde_json::Value| uuid_at(v, "uuid").unwrap_or_default();
    let name = |v: &serde_json::Value| v["name"].as_str().unwrap_or_default().to_owned();
    Some(StatsRead {
        channels: list("channels")
            .iter()
            .map(|c| ResponseStats {
                id: id(c),
                name: name(c),
                email: String::new(),
                first_response_seconds: seconds(c, "first_response_time"),
                average_response_seconds: seconds(c, "average_response_time"),
                message_count: count(c, "message_count"),
                customer_count: count(c, "customer_count"),
            })
            .collect(),
        agents: list("agents")
            .iter()
            .map(|a| {
                let id = id(a);
                let email = directory
                    .and_then(|d| d.agents.iter().find(|known| known.id == id))
                    .map(|known| known.email.clone())
                    .unwrap_or_default();
                ResponseStats {
                    email,
                    name: name(a),
                    first_response_seconds: seconds(a, "first_response_time"),
                    average_response_seconds: seconds(a, "average_response_time"),
                    message_count: count(a, "message_count"),
                    customer_count: count(a, "customer_count"),
                    id,
                }
            })
            .collect(),
        read_at: None,
    })
}

/// The directory in Connexease's answer.
fn directory_from(body: &serde_json::Value) -> Directory {
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let list = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    Directory {
        groups: list("groups")
            .iter()
            .map(|g| Group {
                id: text(g, "id"),
                name: text(g, "name"),
            })
            .collect(),
        agents: list("agents")
            .iter()
            .map(|a| Agent {
                id: text(a, "id"),
                email: text(a, "email"),
                name: text(a, "name"),
                availability: text(a, "availability"),
            })
            .collect(),
        fields: list("fields")
            .iter()
            .map(|f| CustomField {
                key: text(f, "key"),
                label: text(f, "label"),
                r#type: text(f, "type"),
                scope: text(f, "scope"),
            })
            .collect(),
        synced_at: None,
    }
}

/// Connexease's commands carry no request digest, so none finds its request id reused;
/// were one to, it is the caller's mistake, as the log reports it.
fn reused() -> ServiceError {
    EventLogError::Invalid {
        field: "request_id",
        reason: "already used for a different request".into(),
    }
    .into()
}
