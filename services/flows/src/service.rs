//! The command handler of definitions: flows (create, save the draft, publish, discard,
//! roll back, delete) and assistants (save, delete).
//!
//! Streams: `flow/<ws>/<flow>` (a flow: its draft and every published version) and
//! `assistant/<ws>/<asst>`. A delete is the last event of its stream: the API answers
//! `NotFound` for it afterwards, while runs already started on a deleted flow's versions
//! still find their graphs ([`FlowsService::pinned_version`]).

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, Executed, ExpectedVersion,
    Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, VersionOnly, derive_event_id, now_micros,
    timestamp,
};
use switchboard_proto::actions::v1::{ActionKind, AgentTool};
use switchboard_proto::flows::v1::{
    Assistant, AssistantSaved, CreateFlowRequest, DeleteAssistantRequest, DeleteFlowRequest, Flow,
    FlowChanged, FlowKind, FlowPublished, FlowVersion, Graph, PublishAssistantRequest,
    PublishRequest, RollbackRequest, SaveDraftRequest,
};
use uuid::Uuid;

use crate::domain::{self, FieldViolation, Violations, event_types as t, limits};
use crate::store::FlowsStore;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error(
        "{code}: no such {0} in the workspace",
        code = switchboard_runtime::codes::FLOW_NOT_FOUND.id
    )]
    NotFound(&'static str),
    #[error(
        "{code}: it changed since version {expected}; it is at {actual}",
        code = switchboard_runtime::codes::FLOW_STALE_VERSION.id
    )]
    Conflict { expected: u64, actual: u64 },
    #[error(
        "{code}: a flow named `{0}` already exists in the workspace",
        code = switchboard_runtime::codes::FLOW_NAME_TAKEN.id
    )]
    NameTaken(String),
    #[error("{code}: {0}", code = switchboard_runtime::codes::FLOW_FAILED_PRECONDITION.id)]
    FailedPrecondition(String),
    #[error(
        "{code}: cannot check the referenced actions: {0}",
        code = switchboard_runtime::codes::FLOW_ACTIONS_UNAVAILABLE.id
    )]
    ActionsUnavailable(String),
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// What the flows service knows of the actions service: an action's kind, or that it does
/// not exist.
#[async_trait]
pub trait ActionCatalog: Send + Sync {
    async fn kind_of(
        &self,
        workspace_id: &str,
        action_id: &str,
    ) -> Result<Option<ActionKind>, String>;

    /// The agent tools of the enabled actions among `action_ids`, in that order.
    async fn tools(
        &self,
        workspace_id: &str,
        action_ids: &[String],
    ) -> Result<Vec<AgentTool>, String>;
}

/// The actions service over gRPC: an action it does not know is `None`, any other
/// failure is the status's message.
#[async_trait]
impl ActionCatalog for switchboard_clients::ActionsClient {
    async fn kind_of(
        &self,
        workspace_id: &str,
        action_id: &str,
    ) -> Result<Option<ActionKind>, String> {
        let request = switchboard_proto::actions::v1::GetActionRequest {
            workspace_id: workspace_id.to_owned(),
            action_id: action_id.to_owned(),
        };
        match self.get_action(request).await {
            Ok(response) => Ok(response
                .action
                .map(|a| ActionKind::try_from(a.kind).unwrap_or(ActionKind::Unspecified))),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.message().to_owned()),
        }
    }

    async fn tools(
        &self,
        workspace_id: &str,
        action_ids: &[String],
    ) -> Result<Vec<AgentTool>, String> {
        if action_ids.is_empty() {
            return Ok(Vec::new());
        }
        let request = switchboard_proto::actions::v1::ListAgentToolsRequest {
            workspace_id: workspace_id.to_owned(),
            action_ids: action_ids.to_vec(),
        };
        self.list_agent_tools(request)
            .await
            .map(|r| r.tools)
            .map_err(|status| status.message().to_owned())
    }
}

pub fn flow_stream(workspace_id: &str, flow_id: &str) -> StreamRef {
    StreamRef::new("flow", format!("{workspace_id}/{flow_id}"))
}

pub fn assistant_stream(workspace_id: &str, assistant_id: &str) -> StreamRef {
    StreamRef::new("assistant", format!("{workspace_id}/{assistant_id}"))
}

/// A flow as its events left it: the flow, every published version, the stream version,
/// and whether it was deleted (its versions stay, for the runs pinned to them).
#[derive(Debug, Clone, Default)]
pub struct FlowState {
    pub flow: Flow,
    pub versions: Vec<FlowVersion>,
    pub version: u64,
    pub deleted: bool,
}

impl FlowState {
    /// Folds one event (pure).
    pub fn apply(&mut self, event_type: &str, payload: &[u8]) -> Result<(), prost::DecodeError> {
        match event_type {
            t::FLOW_CREATED | t::FLOW_DRAFT_SAVED | t::FLOW_DRAFT_DISCARDED => {
                if let Some(flow) = FlowChanged::decode(payload)?.flow {
                    self.flow = flow;
                }
            }
            t::FLOW_DELETED => {
                if let Some(flow) = FlowChanged::decode(payload)?.flow {
                    self.flow = flow;
                }
                self.deleted = true;
            }
            t::FLOW_PUBLISHED => {
                if let Some(version) = FlowPublished::decode(payload)?.version {
                    self.flow.published_version = version.number;
                    if !self.flow.has_draft || version.rolled_back_from == 0 {
                        self.flow.draft = version.graph.clone();
                        self.flow.has_draft = false;
                    }
                    self.flow.updated_at = version.published_at;
                    self.versions.push(version);
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn published(&self) -> Option<&FlowVersion> {
        self.versions.last()
    }
}

/// Flows for the command skeleton: [`FlowState::apply`] over the flow's stream.
struct Flows;

impl Aggregate for Flows {
    type State = FlowState;

    fn apply(&self, state: &mut FlowState, e: &RecordedEvent) -> Result<(), EventLogError> {
        state
            .apply(&e.event_type, &e.payload)
            .map_err(|err| EventLogError::Corrupt {
                event_id: e.event_id.to_string(),
                event_type: e.event_type.clone(),
                reason: err.to_string(),
            })
    }

    fn at_version(&self, state: &mut FlowState, version: u64) {
        state.version = version;
        state.flow.version = version;
    }
}

#[derive(Clone)]
pub struct FlowsService {
    log: EventLog,
    store: FlowsStore,
    actions: Option<Arc<dyn ActionCatalog>>,
    renderer: Arc<switchboard_template::Renderer>,
}

pub(crate) fn metadata(workspace_id: &str, correlation_id: &str) -> Metadata {
    Metadata {
        workspace_id: workspace_id.to_owned(),
        correlation_id: correlation_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
        occurred_at: now_micros(),
        actor: switchboard_runtime::requests::current_actor(),
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

pub(crate) fn is_unique_violation(e: &EventLogError) -> bool {
    matches!(e, EventLogError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

impl FlowsService {
    /// `actions`: where referenced actions are checked on publish; `None` refuses to
    /// publish graphs that refer to actions (it cannot check them).
    pub fn new(log: EventLog, actions: Option<Arc<dyn ActionCatalog>>) -> Self {
        Self {
            store: FlowsStore::new(log.clone()),
            log,
            actions,
            renderer: Arc::new(switchboard_template::Renderer::new(Default::default())),
        }
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    pub fn store(&self) -> &FlowsStore {
        &self.store
    }

    /// The flow as the API sees it: `NotFound` once deleted.
    pub async fn load(&self, workspace_id: &str, flow_id: &str) -> Result<FlowState, ServiceError> {
        let state = self.load_any(workspace_id, flow_id).await?;
        if state.deleted {
            return Err(ServiceError::NotFound("flow"));
        }
        Ok(state)
    }

    /// The flow, deleted or not: `NotFound` only when it never existed.
    async fn load_any(&self, workspace_id: &str, flow_id: &str) -> Result<FlowState, ServiceError> {
        let loaded = Flows
            .load(&self.log, &flow_stream(workspace_id, flow_id))
            .await?;
        if loaded.version == 0 {
            return Err(ServiceError::NotFound("flow"));
        }
        Ok(loaded.state)
    }

    fn check_graph(&self, kind: FlowKind, graph: &Graph) -> Result<(), ServiceError> {
        self.graph_violations(kind, graph)
            .map_err(ServiceError::Invalid)
    }

    /// What is wrong with `graph` as a draft of a `kind` flow, its fields under `draft.`.
    fn graph_violations(&self, kind: FlowKind, graph: &Graph) -> Result<(), Vec<FieldViolation>> {
        domain::validate_graph(kind, graph, self.renderer.as_ref()).map_err(|v| {
            v.into_iter()
                .map(|v| FieldViolation {
                    field: format!("draft.{}", v.field),
                    description: v.description,
                })
                .collect()
        })
    }

    /// Appends `events`, decided by the caller on the stream at `expected`, in one
    /// attempt: callers state (or check) the version they decided on, so a lost race is a
    /// `Conflict` to report, not a retry. Returns the stream's version after the append.
    async fn append(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<u64, ServiceError> {
        let version = match expected {
            ExpectedVersion::Exact(v) => v,
            ExpectedVersion::NoStream => 0,
        };
        let mut events = Some(events);
        Command::new(&self.log, stream)
            .attempts(1)
            .starting_from(Loaded::new((), version))
            .run(&VersionOnly, |_| {
                Ok::<_, Infallible>(Decision::events(events.take().unwrap_or_default()))
            })
            .await
            .map(|executed| executed.version())
            .map_err(|e| match e {
                CommandError::Rejected { error, .. } => match error {},
                CommandError::Contended { actual, .. } => ServiceError::Conflict {
                    expected: version,
                    actual,
                },
                CommandError::RequestReused => request_id_reused(),
                CommandError::Log(e) => e.into(),
            })
    }

    pub async fn create_flow(&self, r: CreateFlowRequest) -> Result<Flow, ServiceError> {
        let mut v = Violations::default();
        v.id("workspace_id", &r.workspace_id, "ws_");
        if !domain::valid_flow_name(&r.name) {
            v.push(
                "name",
                "required: 1 to 100 letters, digits, `_` or `-` (assistants refer to it as `@name`)",
            );
        }
        let kind = FlowKind::try_from(r.kind).unwrap_or(FlowKind::Unspecified);
        if kind == FlowKind::Unspecified {
            v.push(
                "kind",
                "required: conversation_flow, action_workflow or post_conversation_workflow",
            );
        }
        if r.description.len() > limits::DESCRIPTION_BYTES {
            v.push(
                "description",
                format!("at most {} bytes", limits::DESCRIPTION_BYTES),
            );
        }
        if r.request_id.len() > 128 {
            v.push("request_id", "at most 128 bytes");
        }
        let draft = r.draft.unwrap_or_default();
        if !draft.nodes.is_empty() && kind != FlowKind::Unspecified {
            v.extend(self.graph_violations(kind, &draft));
        }
        v.finish().map_err(ServiceError::Invalid)?;
        let request_id = if r.request_id.is_empty() {
            Uuid::now_v7().to_string()
        } else {
            r.request_id.clone()
        };
        let key = derive_event_id(&r.workspace_id, &format!("flow:{request_id}"), 0);
        let flow_id = format!("flow_{}", key.simple());
        // A retried create answers with the flow it made, even deleted since.
        if let Ok(existing) = self.load_any(&r.workspace_id, &flow_id).await {
            return Ok(existing.flow);
        }
        if self
            .store
            .flow_named(&r.workspace_id, &r.name)
            .await?
            .is_some()
        {
            return Err(ServiceError::NameTaken(r.name));
        }
        let now = timestamp(now_micros());
        let flow = Flow {
            id: flow_id.clone(),
            workspace_id: r.workspace_id.clone(),
            name: r.name.clone(),
            kind: kind as i32,
            description: r.description,
            draft: Some(draft),
            has_draft: true,
            published_version: 0,
            created_at: Some(now),
            updated_at: Some(now),
            version: 1,
        };
        let new = NewEvent {
            event_id: key,
            ..event(
                t::FLOW_CREATED,
                FlowChanged {
                    flow: Some(flow.clone()),
                }
                .encode_to_vec(),
                metadata(&r.workspace_id, &request_id),
            )
        };
        match self
            .append(
                &flow_stream(&r.workspace_id, &flow_id),
                ExpectedVersion::NoStream,
                vec![new],
            )
            .await
        {
            Ok(_) => Ok(flow),
            // The read model's unique index, inside the append: another flow took the name.
            Err(ServiceError::Log(e)) if is_unique_violation(&e) => {
                Err(ServiceError::NameTaken(r.name))
            }
            Err(e) => Err(e),
        }
    }

    fn expect(state: &FlowState, expected_version: u64) -> Result<(), ServiceError> {
        if expected_version != 0 && expected_version != state.version {
            return Err(ServiceError::Conflict {
                expected: expected_version,
                actual: state.version,
            });
        }
        Ok(())
    }

    pub async fn save_draft(&self, r: SaveDraftRequest) -> Result<Flow, ServiceError> {
        let state = self.load(&r.workspace_id, &r.flow_id).await?;
        Self::expect(&state, r.expected_version)?;
        let draft = r.draft.unwrap_or_default();
        self.check_graph(state.flow.kind(), &draft)?;
        let mut flow = state.flow.clone();
        flow.draft = Some(draft);
        flow.has_draft = true;
        flow.updated_at = Some(timestamp(now_micros()));
        self.change(&state, t::FLOW_DRAFT_SAVED, flow).await
    }

    async fn change(
        &self,
        state: &FlowState,
        event_type: &str,
        mut flow: Flow,
    ) -> Result<Flow, ServiceError> {
        flow.version = state.version + 1;
        self.append(
            &flow_stream(&flow.workspace_id, &flow.id),
            ExpectedVersion::Exact(state.version),
            vec![event(
                event_type,
                FlowChanged {
                    flow: Some(flow.clone()),
                }
                .encode_to_vec(),
                metadata(&flow.workspace_id, ""),
            )],
        )
        .await?;
        Ok(flow)
    }

    /// Every action the graph refers to exists, and API call nodes refer to `http` ones.
    /// The action nodes of `graph` that name no action of the workspace, or one of the
    /// wrong kind.
    async fn action_violations(
        &self,
        workspace_id: &str,
        graph: &Graph,
    ) -> Result<Result<(), Vec<FieldViolation>>, ServiceError> {
        let referenced = domain::referenced_actions(graph);
        if referenced.is_empty() {
            return Ok(Ok(()));
        }
        let Some(actions) = &self.actions else {
            return Err(ServiceError::ActionsUnavailable(
                "no actions service is configured (SWITCHBOARD_ACTIONS_URL)".into(),
            ));
        };
        let mut v = Violations::default();
        for (field, action_id, needs_http) in referenced {
            let field = format!("draft.{field}");
            match actions
                .kind_of(workspace_id, &action_id)
                .await
                .map_err(ServiceError::ActionsUnavailable)?
            {
                None => v.push(field, format!("no action `{action_id}` in the workspace")),
                Some(kind) if needs_http && kind != ActionKind::Http => v.push(
                    field,
                    format!("`{action_id}` is not an http action; use a custom_action node"),
                ),
                Some(_) => {}
            }
        }
        Ok(v.finish())
    }

    /// Publishes the draft as the next immutable version.
    pub async fn publish(&self, r: PublishRequest) -> Result<Flow, ServiceError> {
        let state = self.load(&r.workspace_id, &r.flow_id).await?;
        Self::expect(&state, r.expected_version)?;
        if !state.flow.has_draft {
            return Err(ServiceError::FailedPrecondition(format!(
                "nothing to publish: the draft is version {} as published",
                state.flow.published_version
            )));
        }
        let graph = state.flow.draft.clone().unwrap_or_default();
        let mut v = Violations::default();
        v.extend(publish_violations(&r));
        v.extend(self.graph_violations(state.flow.kind(), &graph));
        v.extend(self.action_violations(&r.workspace_id, &graph).await?);
        v.finish().map_err(ServiceError::Invalid)?;
        self.publish_version(&state, graph, 0, r.note).await
    }

    async fn publish_version(
        &self,
        state: &FlowState,
        graph: Graph,
        rolled_back_from: u32,
        note: String,
    ) -> Result<Flow, ServiceError> {
        let version = FlowVersion {
            flow_id: state.flow.id.clone(),
            number: state.flow.published_version + 1,
            graph: Some(graph),
            published_at: Some(timestamp(now_micros())),
            rolled_back_from,
            note,
        };
        let ws = state.flow.workspace_id.clone();
        self.append(
            &flow_stream(&ws, &state.flow.id),
            ExpectedVersion::Exact(state.version),
            vec![event(
                t::FLOW_PUBLISHED,
                FlowPublished {
                    version: Some(version),
                }
                .encode_to_vec(),
                metadata(&ws, ""),
            )],
        )
        .await?;
        Ok(self.load(&ws, &state.flow.id).await?.flow)
    }

    /// Drops the draft: back to the last published version.
    pub async fn discard_draft(
        &self,
        workspace_id: &str,
        flow_id: &str,
    ) -> Result<Flow, ServiceError> {
        let state = self.load(workspace_id, flow_id).await?;
        let Some(published) = state.published() else {
            return Err(ServiceError::FailedPrecondition(
                "never published: there is no version to go back to".into(),
            ));
        };
        if !state.flow.has_draft {
            return Ok(state.flow);
        }
        let mut flow = state.flow.clone();
        flow.draft = published.graph.clone();
        flow.has_draft = false;
        flow.updated_at = Some(timestamp(now_micros()));
        self.change(&state, t::FLOW_DRAFT_DISCARDED, flow).await
    }

    /// Publishes version `to_version`'s graph again as a new version. A draft in progress
    /// stays as it is.
    pub async fn rollback(&self, r: RollbackRequest) -> Result<Flow, ServiceError> {
        let state = self.load(&r.workspace_id, &r.flow_id).await?;
        let Some(old) = state.versions.iter().find(|v| v.number == r.to_version) else {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "to_version".into(),
                description: format!(
                    "no version {}; published versions are 1 to {}",
                    r.to_version, state.flow.published_version
                ),
            }]));
        };
        if r.to_version == state.flow.published_version {
            return Err(ServiceError::FailedPrecondition(format!(
                "version {} is the published one already",
                r.to_version
            )));
        }
        let graph = old.graph.clone().unwrap_or_default();
        self.publish_version(
            &state,
            graph,
            r.to_version,
            format!("rollback to {}", r.to_version),
        )
        .await
    }

    /// Version `number` (0: the published one) of a flow the API sees.
    pub async fn version(
        &self,
        workspace_id: &str,
        flow_id: &str,
        number: u32,
    ) -> Result<FlowVersion, ServiceError> {
        Self::version_of(self.load(workspace_id, flow_id).await?, number)
    }

    /// Version `number` (0: the published one) of a flow even if it was deleted since: the
    /// graph a run pinned to it goes on with.
    pub async fn pinned_version(
        &self,
        workspace_id: &str,
        flow_id: &str,
        number: u32,
    ) -> Result<FlowVersion, ServiceError> {
        Self::version_of(self.load_any(workspace_id, flow_id).await?, number)
    }

    fn version_of(state: FlowState, number: u32) -> Result<FlowVersion, ServiceError> {
        let wanted = if number == 0 {
            state.flow.published_version
        } else {
            number
        };
        state
            .versions
            .into_iter()
            .find(|v| v.number == wanted)
            .ok_or(ServiceError::NotFound("version"))
    }

    /// Deletes the flow and answers with it as it was deleted. Refused while an assistant
    /// runs it. Its versions stay in its stream for the runs pinned to them; the read
    /// model forgets it, which frees its name. Idempotent by request id.
    pub async fn delete_flow(&self, r: DeleteFlowRequest) -> Result<Flow, ServiceError> {
        check_request_id(&r.request_id)?;
        let ws = r.workspace_id.as_str();
        // Assistants are other streams: the read model says which run the flow. (An
        // assistant saved in the same instant can still slip by; it then runs nothing new,
        // as its flow is gone.)
        let holders = self.store.assistants_running(ws, &r.flow_id).await?;
        let stream = flow_stream(ws, &r.flow_id);
        let metadata = metadata(ws, &r.request_id);
        let key = request_key("flow_delete", &r.flow_id, &r.request_id);
        let executed = Command::new(&self.log, &stream)
            .request(ws, &key)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&Flows, |loaded: &Loaded<FlowState>| {
                let state = &loaded.state;
                if loaded.version == 0 || state.deleted {
                    return Err(ServiceError::NotFound("flow"));
                }
                if let Some((assistant_id, name)) = holders.first() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "flow `{}` is the conversation flow of assistant `{name}` \
                         ({assistant_id}): delete the assistant or give it another flow first",
                        state.flow.name
                    )));
                }
                let mut flow = state.flow.clone();
                flow.version = loaded.version + 1;
                flow.updated_at = Some(timestamp(now_micros()));
                let deleted = event(
                    t::FLOW_DELETED,
                    FlowChanged {
                        flow: Some(flow.clone()),
                    }
                    .encode_to_vec(),
                    metadata.clone(),
                );
                Ok(Decision::new(vec![deleted], flow))
            })
            .await;
        answer_recorded(&stream, executed, |event| {
            Ok((event.event_type == t::FLOW_DELETED)
                .then(|| event.decode::<FlowChanged>())
                .transpose()?
                .and_then(|changed| changed.flow))
        })
    }

    // -----------------------------------------------------------------------------------
    // Assistants
    // -----------------------------------------------------------------------------------

    /// The assistant and its stream version; `NotFound` when there is none or it was
    /// deleted.
    pub async fn load_assistant(
        &self,
        workspace_id: &str,
        assistant_id: &str,
    ) -> Result<(Assistant, u64), ServiceError> {
        let (history, version) = self.assistant_history(workspace_id, assistant_id).await?;
        Ok((history.published.unwrap_or_default(), version))
    }

    /// The assistant and its draft; `NotFound` when it does not exist (or was deleted).
    pub async fn assistant_history(
        &self,
        workspace_id: &str,
        assistant_id: &str,
    ) -> Result<(AssistantHistory, u64), ServiceError> {
        let loaded = Assistants
            .load(&self.log, &assistant_stream(workspace_id, assistant_id))
            .await?;
        if loaded.state.published.is_none() {
            return Err(ServiceError::NotFound("assistant"));
        }
        Ok((loaded.state, loaded.version))
    }

    /// Saves a draft of an existing assistant, checked like a save; it is not in effect
    /// until published.
    pub async fn save_assistant_draft(
        &self,
        mut draft: Assistant,
        expected_version: u64,
        request_id: &str,
    ) -> Result<Assistant, ServiceError> {
        if draft.id.is_empty() {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "assistant.id".into(),
                description: "required: a draft is of an assistant that exists".into(),
            }]));
        }
        self.check_assistant(&draft, request_id).await?;
        let ws = draft.workspace_id.clone();
        let (_, version) = self.assistant_history(&ws, &draft.id).await?;
        if expected_version != 0 && expected_version != version {
            return Err(ServiceError::Conflict {
                expected: expected_version,
                actual: version,
            });
        }
        draft.updated_at = Some(timestamp(now_micros()));
        draft.has_draft = true;
        let saved = event(
            t::ASSISTANT_DRAFT_SAVED,
            AssistantSaved {
                assistant: Some(draft.clone()),
            }
            .encode_to_vec(),
            metadata(&ws, request_id),
        );
        draft.version = self
            .append(
                &assistant_stream(&ws, &draft.id),
                ExpectedVersion::Exact(version),
                vec![saved],
            )
            .await?;
        Ok(draft)
    }

    /// Puts the assistant's draft in effect, checked again (what it names may be gone
    /// since). Idempotent by request id.
    pub async fn publish_assistant(
        &self,
        r: PublishAssistantRequest,
    ) -> Result<Assistant, ServiceError> {
        check_request_id(&r.request_id)?;
        let ws = r.workspace_id.as_str();
        let (history, _) = self.assistant_history(ws, &r.assistant_id).await?;
        // Without a draft the command still runs: a retried publish gets its answer.
        if let Some(draft) = &history.draft {
            self.check_assistant(draft, &r.request_id).await?;
        }
        let checked = history.draft;
        let stream = assistant_stream(ws, &r.assistant_id);
        let metadata = metadata(ws, &r.request_id);
        let key = request_key("assistant_publish", &r.assistant_id, &r.request_id);
        let executed = Command::new(&self.log, &stream)
            .request(ws, &key)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&Assistants, |loaded: &Loaded<AssistantHistory>| {
                let Some(draft) = &loaded.state.draft else {
                    return Err(ServiceError::FailedPrecondition(
                        "the assistant has no draft to publish: save one first".into(),
                    ));
                };
                // Another draft saved since this one was checked: check it first.
                if checked.as_ref().map(|c| &c.updated_at) != Some(&draft.updated_at) {
                    return Err(ServiceError::Conflict {
                        expected: loaded.version,
                        actual: loaded.version,
                    });
                }
                let mut assistant = draft.clone();
                assistant.version = loaded.version + 1;
                assistant.has_draft = false;
                assistant.updated_at = Some(timestamp(now_micros()));
                let published = event(
                    t::ASSISTANT_PUBLISHED,
                    AssistantSaved {
                        assistant: Some(assistant.clone()),
                    }
                    .encode_to_vec(),
                    metadata.clone(),
                );
                Ok(Decision::new(vec![published], assistant))
            })
            .await;
        answer_recorded(&stream, executed, |event| {
            Ok((event.event_type == t::ASSISTANT_PUBLISHED)
                .then(|| event.decode::<AssistantSaved>())
                .transpose()?
                .and_then(|saved| saved.assistant))
        })
    }

    /// Drops the assistant's draft: it is as last published (which it answers).
    pub async fn discard_assistant_draft(
        &self,
        workspace_id: &str,
        assistant_id: &str,
    ) -> Result<Assistant, ServiceError> {
        let (history, version) = self.assistant_history(workspace_id, assistant_id).await?;
        let mut assistant = history.published.unwrap_or_default();
        if history.draft.is_none() {
            return Err(ServiceError::FailedPrecondition(
                "the assistant has no draft to discard".into(),
            ));
        }
        let discarded = event(
            t::ASSISTANT_DRAFT_DISCARDED,
            Vec::new(),
            metadata(workspace_id, ""),
        );
        assistant.version = self
            .append(
                &assistant_stream(workspace_id, assistant_id),
                ExpectedVersion::Exact(version),
                vec![discarded],
            )
            .await?;
        assistant.has_draft = false;
        Ok(assistant)
    }

    /// Deletes the assistant and answers with it as it was deleted; conversations no longer
    /// start its flow. Idempotent by request id.
    pub async fn delete_assistant(
        &self,
        r: DeleteAssistantRequest,
    ) -> Result<Assistant, ServiceError> {
        check_request_id(&r.request_id)?;
        let ws = r.workspace_id.as_str();
        let stream = assistant_stream(ws, &r.assistant_id);
        let metadata = metadata(ws, &r.request_id);
        let key = request_key("assistant_delete", &r.assistant_id, &r.request_id);
        let executed = Command::new(&self.log, &stream)
            .request(ws, &key)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&Assistants, |loaded: &Loaded<AssistantHistory>| {
                let Some(current) = &loaded.state.published else {
                    return Err(ServiceError::NotFound("assistant"));
                };
                let mut assistant = current.clone();
                assistant.version = loaded.version + 1;
                assistant.updated_at = Some(timestamp(now_micros()));
                let deleted = event(
                    t::ASSISTANT_DELETED,
                    AssistantSaved {
                        assistant: Some(assistant.clone()),
                    }
                    .encode_to_vec(),
                    metadata.clone(),
                );
                Ok(Decision::new(vec![deleted], assistant))
            })
            .await;
        answer_recorded(&stream, executed, |event| {
            Ok((event.event_type == t::ASSISTANT_DELETED)
                .then(|| event.decode::<AssistantSaved>())
                .transpose()?
                .and_then(|saved| saved.assistant))
        })
    }

    /// Checks an assistant whole, every mistake named: its ids, bounds, and that what it
    /// names exists (flow, actions, workflows, model provider).
    async fn check_assistant(
        &self,
        assistant: &Assistant,
        request_id: &str,
    ) -> Result<(), ServiceError> {
        let ws = assistant.workspace_id.clone();
        let mut v = Violations::default();
        v.id("assistant.workspace_id", &ws, "ws_");
        if !assistant.id.is_empty() {
            v.id("assistant.id", &assistant.id, "asst_");
        }
        if !assistant.flow_id.is_empty() {
            v.id("assistant.flow_id", &assistant.flow_id, "flow_");
        }
        if request_id.len() > 128 {
            v.push("request_id", "at most 128 bytes");
        }
        if assistant.name.trim().is_empty() || assistant.name.len() > limits::NAME_BYTES {
            v.push("assistant.name", "required: at most 100 bytes");
        }
        if assistant.instructions.len() > limits::INSTRUCTIONS_BYTES {
            v.push(
                "assistant.instructions",
                format!("at most {} bytes", limits::INSTRUCTIONS_BYTES),
            );
        }
        if assistant.enabled_action_ids.len() > 100 {
            v.push("assistant.enabled_action_ids", "at most 100");
        }
        for (i, id) in assistant.enabled_action_ids.iter().enumerate() {
            if !switchboard_runtime::requests::valid_prefixed_id(id, "act_") {
                v.push(
                    format!("assistant.enabled_action_ids[{i}]"),
                    "an action id (`act_…`)",
                );
            }
        }
        if assistant.disabled_workflow_ids.len() > 100 {
            v.push("assistant.disabled_workflow_ids", "at most 100");
        }
        for (i, id) in assistant.disabled_workflow_ids.iter().enumerate() {
            if !switchboard_runtime::requests::valid_prefixed_id(id, "flow_") {
                v.push(
                    format!("assistant.disabled_workflow_ids[{i}]"),
                    "a flow id (`flow_…`)",
                );
            }
        }
        if !assistant.model_provider_id.is_empty() {
            v.id(
                "assistant.model_provider_id",
                &assistant.model_provider_id,
                "mp_",
            );
        }
        if let Some(schema) = &assistant.analysis {
            for (field, description) in crate::analysis::schema_violations(schema) {
                v.push(format!("assistant.analysis.{field}"), description);
            }
        }
        for (i, id) in assistant.knowledge_collection_ids.iter().enumerate() {
            if !switchboard_runtime::requests::valid_prefixed_id(id, "kc_") {
                v.push(
                    format!("assistant.knowledge_collection_ids[{i}]"),
                    "a knowledge collection id (`kc_…`)",
                );
            }
        }
        // What the ids name can only be looked up when they are ids.
        if v.0.iter().any(|f| {
            matches!(
                f.field.as_str(),
                "assistant.workspace_id" | "assistant.id" | "assistant.flow_id"
            )
        }) {
            return Err(ServiceError::Invalid(v.0));
        }

        // References must name what exists: published action workflows, actions, the flow;
        // answered with the request's other mistakes.
        for name in domain::workflow_references(&assistant.instructions) {
            match self.store.flow_named(&ws, &name).await? {
                Some((_, kind, published))
                    if kind == FlowKind::ActionWorkflow as i32 && published > 0 => {}
                Some((_, kind, _)) if kind != FlowKind::ActionWorkflow as i32 => v.push(
                    "assistant.instructions",
                    format!("`@{name}` is not an action workflow"),
                ),
                Some(_) => v.push(
                    "assistant.instructions",
                    format!("`@{name}` is not published yet"),
                ),
                None => v.push(
                    "assistant.instructions",
                    format!("`@{name}`: no action workflow by that name"),
                ),
            }
        }
        for (i, id) in assistant.disabled_workflow_ids.iter().enumerate() {
            if !switchboard_runtime::requests::valid_prefixed_id(id, "flow_") {
                continue;
            }
            match self.load(&ws, id).await {
                Ok(state) if state.flow.kind() == FlowKind::PostConversationWorkflow => {}
                Ok(_) => v.push(
                    format!("assistant.disabled_workflow_ids[{i}]"),
                    "not a post-conversation workflow",
                ),
                Err(ServiceError::NotFound(_)) => v.push(
                    format!("assistant.disabled_workflow_ids[{i}]"),
                    "no such flow in the workspace",
                ),
                Err(e) => return Err(e),
            }
        }
        if switchboard_runtime::requests::valid_prefixed_id(&assistant.model_provider_id, "mp_")
            && !self
                .store
                .model_providers(&ws)
                .await?
                .iter()
                .any(|(id, _)| *id == assistant.model_provider_id)
        {
            v.push(
                "assistant.model_provider_id",
                "no model provider by that id in the workspace",
            );
        }
        if !assistant.flow_id.is_empty() {
            match self.load(&ws, &assistant.flow_id).await {
                Ok(state) if state.flow.kind() == FlowKind::ConversationFlow => {}
                Ok(_) => v.push("assistant.flow_id", "not a conversation flow"),
                Err(ServiceError::NotFound(_)) => {
                    v.push("assistant.flow_id", "no such flow in the workspace")
                }
                Err(e) => return Err(e),
            }
        }
        if !assistant.enabled_action_ids.is_empty() {
            let Some(actions) = &self.actions else {
                return Err(ServiceError::ActionsUnavailable(
                    "no actions service is configured (SWITCHBOARD_ACTIONS_URL)".into(),
                ));
            };
            for (i, id) in assistant.enabled_action_ids.iter().enumerate() {
                if actions
                    .kind_of(&ws, id)
                    .await
                    .map_err(ServiceError::ActionsUnavailable)?
                    .is_none()
                {
                    v.push(
                        format!("assistant.enabled_action_ids[{i}]"),
                        format!("no action `{id}` in the workspace"),
                    );
                }
            }
        }
        v.finish().map_err(ServiceError::Invalid)
    }

    pub async fn save_assistant(
        &self,
        mut assistant: Assistant,
        expected_version: u64,
        request_id: &str,
    ) -> Result<Assistant, ServiceError> {
        let ws = assistant.workspace_id.clone();
        self.check_assistant(&assistant, request_id).await?;
        // Read-only: whether a draft waits is the stream's to say.
        assistant.has_draft = false;

        let (expected, event_id) = if assistant.id.is_empty() {
            let request_id = if request_id.is_empty() {
                Uuid::now_v7().to_string()
            } else {
                request_id.to_owned()
            };
            let key = derive_event_id(&ws, &format!("assistant:{request_id}"), 0);
            assistant.id = format!("asst_{}", key.simple());
            (ExpectedVersion::NoStream, key)
        } else {
            let (_, version) = self.load_assistant(&ws, &assistant.id).await?;
            if expected_version != 0 && expected_version != version {
                return Err(ServiceError::Conflict {
                    expected: expected_version,
                    actual: version,
                });
            }
            (ExpectedVersion::Exact(version), Uuid::now_v7())
        };
        assistant.updated_at = Some(timestamp(now_micros()));
        let new = NewEvent {
            event_id,
            ..event(
                t::ASSISTANT_SAVED,
                AssistantSaved {
                    assistant: Some(assistant.clone()),
                }
                .encode_to_vec(),
                metadata(&ws, request_id),
            )
        };
        let version = self
            .append(&assistant_stream(&ws, &assistant.id), expected, vec![new])
            .await?;
        assistant.version = version;
        Ok(assistant)
    }
}

impl FlowsService {
    /// The tools the assistant's agent may use: its enabled actions, in its order, then
    /// the published action workflows its instructions name (`@name`), each with its
    /// description and input schema. A workflow unpublished or deleted since the assistant
    /// was saved is left out.
    pub async fn agent_tools(
        &self,
        workspace_id: &str,
        assistant_id: &str,
    ) -> Result<Vec<AgentTool>, ServiceError> {
        let (assistant, _) = self.load_assistant(workspace_id, assistant_id).await?;
        let mut tools = match (&self.actions, assistant.enabled_action_ids.is_empty()) {
            (_, true) => Vec::new(),
            (Some(actions), false) => actions
                .tools(workspace_id, &assistant.enabled_action_ids)
                .await
                .map_err(ServiceError::ActionsUnavailable)?,
            (None, false) => {
                return Err(ServiceError::ActionsUnavailable(
                    "no actions service is configured (SWITCHBOARD_ACTIONS_URL)".into(),
                ));
            }
        };
        for name in domain::workflow_references(&assistant.instructions) {
            let Some((flow_id, kind, published)) =
                self.store.flow_named(workspace_id, &name).await?
            else {
                continue;
            };
            // A tool's name is the model's only handle on it: an action of the same name wins.
            if kind != FlowKind::ActionWorkflow as i32
                || published == 0
                || tools.iter().any(|t| t.name == name)
            {
                continue;
            }
            let state = self.load(workspace_id, &flow_id).await?;
            let Some(version) = state.versions.iter().find(|v| v.number as i32 == published) else {
                continue;
            };
            let graph = version.graph.clone().unwrap_or_default();
            let parameters: serde_json::Value = serde_json::from_str(&graph.input_schema_json)
                .unwrap_or_else(|_| serde_json::json!({"type": "object", "properties": {}}));
            let description = state.flow.description.trim().to_owned();
            tools.push(AgentTool {
                name: name.clone(),
                function_json: serde_json::json!({
                    "type": "function",
                    "function": {"name": name, "description": description, "parameters": parameters},
                })
                .to_string(),
                description,
                parameters: parameters.to_string(),
                confirmation_required: false,
                example_requests: Vec::new(),
                action_id: String::new(),
                workflow_id: flow_id,
            });
        }
        Ok(tools)
    }
}

/// An assistant's stream folded: the assistant in effect (none once deleted) and its
/// draft, if one waits.
#[derive(Debug, Clone, Default)]
pub struct AssistantHistory {
    pub published: Option<Assistant>,
    pub draft: Option<Assistant>,
}

/// Assistants for the command skeleton.
struct Assistants;

impl Aggregate for Assistants {
    type State = AssistantHistory;

    fn apply(&self, state: &mut AssistantHistory, e: &RecordedEvent) -> Result<(), EventLogError> {
        let saved = || -> Result<Assistant, EventLogError> {
            Ok(e.decode::<AssistantSaved>()?.assistant.unwrap_or_default())
        };
        match e.event_type.as_str() {
            t::ASSISTANT_SAVED => state.published = Some(saved()?),
            t::ASSISTANT_PUBLISHED => {
                state.published = Some(saved()?);
                state.draft = None;
            }
            t::ASSISTANT_DRAFT_SAVED => state.draft = Some(saved()?),
            t::ASSISTANT_DRAFT_DISCARDED => state.draft = None,
            t::ASSISTANT_DELETED => *state = AssistantHistory::default(),
            _ => {}
        }
        Ok(())
    }

    fn at_version(&self, state: &mut AssistantHistory, version: u64) {
        let has_draft = state.draft.is_some();
        for assistant in [&mut state.published, &mut state.draft]
            .into_iter()
            .flatten()
        {
            assistant.version = version;
            assistant.has_draft = has_draft;
        }
    }
}

fn check_request_id(request_id: &str) -> Result<(), ServiceError> {
    let mut v = Violations::default();
    if request_id.len() > 128 {
        v.push("request_id", "at most 128 bytes");
    }
    v.finish().map_err(ServiceError::Invalid)
}

/// The key a delete's events derive their ids from: the request id, scoped to what it
/// deletes (empty: no key, the delete is not deduplicated).
fn request_key(what: &str, id: &str, request_id: &str) -> String {
    if request_id.is_empty() {
        String::new()
    } else {
        format!("{what}:{id}:{request_id}")
    }
}

/// The answer to a request executed at most once per request id (a delete, an
/// assistant's publish): what `decide` said, or, for a request executed before, what its
/// original stored on `stream` (`original` reads it from the first event), however the
/// state refuses it now.
fn answer_recorded<S, T>(
    stream: &StreamRef,
    executed: Result<Executed<S, T>, CommandError<ServiceError>>,
    original: impl Fn(&RecordedEvent) -> Result<Option<T>, EventLogError>,
) -> Result<T, ServiceError> {
    let stored = |events: &[RecordedEvent]| -> Result<Option<T>, ServiceError> {
        match events.first() {
            Some(first) if first.stream == *stream => Ok(original(first)?),
            _ => Ok(None),
        }
    };
    match executed {
        // The key is scoped to the stream, so its events are that request's.
        Ok(Executed::Duplicate { events, .. }) => stored(&events)?.ok_or_else(request_id_reused),
        Ok(executed) => Ok(executed.into_output()),
        Err(CommandError::Rejected {
            error,
            original: Some(events),
        }) => stored(&events)?.ok_or(error),
        Err(CommandError::Rejected { error, .. }) => Err(error),
        Err(CommandError::Contended {
            expected, actual, ..
        }) => Err(ServiceError::Conflict {
            expected: match expected {
                ExpectedVersion::Exact(version) => version,
                ExpectedVersion::NoStream => 0,
            },
            actual,
        }),
        Err(CommandError::RequestReused) => Err(request_id_reused()),
        Err(CommandError::Log(e)) => Err(e.into()),
    }
}

/// A request id sent again with another request: refused, not answered with the first
/// request's result.
pub(crate) fn request_id_reused() -> ServiceError {
    ServiceError::Invalid(vec![FieldViolation {
        field: "request_id".into(),
        description: "already used for a different request; use a new request id for each \
                      distinct request"
            .into(),
    }])
}

/// What is wrong with a publish request that needs no state.
fn publish_violations(r: &PublishRequest) -> Result<(), Vec<FieldViolation>> {
    let mut v = Violations::default();
    v.id("workspace_id", &r.workspace_id, "ws_");
    v.id("flow_id", &r.flow_id, "flow_");
    if r.note.len() > limits::DESCRIPTION_BYTES {
        v.push(
            "note",
            format!("at most {} bytes", limits::DESCRIPTION_BYTES),
        );
    }
    v.finish()
}

/// The publish request's mistakes that need no state, for the API to answer before the
/// flow is read (its ids and its note together).
pub fn check_publish(r: &PublishRequest) -> Result<(), ServiceError> {
    publish_violations(r).map_err(ServiceError::Invalid)
}
