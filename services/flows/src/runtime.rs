//! Flow runs in the log: the command handler around the pure core in [`crate::domain::run`].
//!
//! A run lives in `flow_run/<ws>/<run>`, pinned by its first event to one published
//! version. Handling an input loads the run, asks [`crate::domain::run::decide`] what happens, and
//! appends the result at the version it read (another writer in between: load and decide
//! again), so inputs for one run are applied one at a time, in order. An action the run
//! asks for is also appended as `flow_run.action_requested`, which the relay publishes on
//! `internal.flows.action_requested` for the actions service; its
//! `internal.actions.action_completed` answer comes back through [`ActionOutcomes`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use serde_json::{Value as Json, json};
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, Executed, ExpectedVersion,
    HandleError, Handler, Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, Tx,
    derive_event_id, micros, now_micros, timestamp,
};
use switchboard_proto::actions::v1::{
    ActionRequested, ExecutionCompleted, Outcome, PermissionLevel, Trigger,
};
use switchboard_proto::flows::v1::run_event_record::Event as Record;
use switchboard_proto::flows::v1::{
    FlowKind, Graph, ReplayReport, RunAgentTurn, RunCaptured, RunCondition, RunConfirmation,
    RunEffectCompleted, RunEffectRequested, RunEventRecord, RunMessage, RunNode, RunReplay,
    RunStarted, RunText, RunTimer, RunToolCall, RunToolResult, RunVariable,
};

use crate::domain::replay;
use crate::domain::run::{self, AgentCall, Effect, Input, Run, RunEvent};
use crate::service::{FlowsService, ServiceError};

/// The event type of an action request, on `internal.flows.action_requested`.
pub use switchboard_contract::event_types::flow_runs::ACTION_REQUESTED;

pub fn run_stream(workspace_id: &str, run_id: &str) -> StreamRef {
    StreamRef::new("flow_run", format!("{workspace_id}/{run_id}"))
}

/// A run as stored: the pure state, what it is pinned to, and its stream version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    pub run: Run,
    pub flow_id: String,
    pub flow_version: u32,
    pub conversation_id: String,
    pub version: u64,
}

/// The event type a run event is stored as.
pub fn event_type(event: &RunEvent) -> &'static str {
    use switchboard_contract::event_types::flow_runs as t;
    match event {
        RunEvent::Started { .. } => t::STARTED,
        RunEvent::Entered { .. } => t::NODE_ENTERED,
        RunEvent::MessageSent { .. } => t::MESSAGE_SENT,
        RunEvent::InputQueued { .. } => t::INPUT_QUEUED,
        RunEvent::AwaitingInput { .. } => t::AWAITING_INPUT,
        RunEvent::Captured { .. } => t::INPUT_CAPTURED,
        RunEvent::InputRejected { .. } => t::INPUT_REJECTED,
        RunEvent::Reasked { .. } => t::REASKED,
        RunEvent::VariableSet { .. } => t::VARIABLE_SET,
        RunEvent::ConditionEvaluated { .. } => t::CONDITION_EVALUATED,
        RunEvent::EffectRequested { .. } => t::EFFECT_REQUESTED,
        RunEvent::EffectCompleted { .. } => t::EFFECT_COMPLETED,
        RunEvent::TimerArmed { .. } => t::TIMER_ARMED,
        RunEvent::TimerFired { .. } => t::TIMER_FIRED,
        RunEvent::Ended { .. } => t::ENDED,
        RunEvent::AgentTurnStarted { .. } => t::AGENT_TURN_STARTED,
        RunEvent::ToolCalled { .. } => t::TOOL_CALLED,
        RunEvent::ConfirmationAsked { .. } => t::CONFIRMATION_ASKED,
        RunEvent::ConfirmationAnswered { .. } => t::CONFIRMATION_ANSWERED,
        RunEvent::ToolResult { .. } => t::TOOL_RESULT,
    }
}

fn node(node: &str) -> RunNode {
    RunNode {
        node: node.to_owned(),
    }
}

fn effect_name(effect: &Effect) -> (&'static str, String) {
    match effect {
        Effect::Action { action_id } => ("action", action_id.clone()),
        Effect::UpdateConversation => ("update_conversation", String::new()),
        Effect::Connexease { operation } => ("connexease", operation.clone()),
        Effect::Model => ("model", String::new()),
        Effect::Workflow { workflow_id } => ("workflow", workflow_id.clone()),
    }
}

/// A run event as stored. `pinned` adds what only the stored start says.
pub fn encode(event: &RunEvent, pinned: Option<(&str, u32, &str)>) -> RunEventRecord {
    let record = match event {
        RunEvent::Started { run_id, context } => {
            let (flow_id, flow_version, conversation_id) = pinned.unwrap_or_default();
            Record::Started(RunStarted {
                run_id: run_id.clone(),
                flow_id: flow_id.to_owned(),
                flow_version,
                conversation_id: conversation_id.to_owned(),
                context_json: context.to_string(),
            })
        }
        RunEvent::Entered { node: n } => Record::Entered(node(n)),
        RunEvent::MessageSent {
            node: n,
            text,
            buttons,
            form,
        } => Record::MessageSent(RunMessage {
            form: form.clone(),
            node: n.clone(),
            text: text.clone(),
            buttons: buttons.clone(),
        }),
        RunEvent::InputQueued { text } => Record::InputQueued(RunText { text: text.clone() }),
        RunEvent::AwaitingInput { node: n } => Record::AwaitingInput(node(n)),
        RunEvent::Captured {
            node: n,
            variable,
            value,
        } => Record::Captured(RunCaptured {
            node: n.clone(),
            variable: variable.clone(),
            value: value.clone(),
        }),
        RunEvent::InputRejected { node: n } => Record::InputRejected(node(n)),
        RunEvent::Reasked { node: n, text } => Record::Reasked(RunMessage {
            node: n.clone(),
            text: text.clone(),
            ..Default::default()
        }),
        RunEvent::VariableSet { variable, value } => Record::VariableSet(RunVariable {
            variable: variable.clone(),
            value_json: value.to_string(),
        }),
        RunEvent::ConditionEvaluated { node: n, result } => {
            Record::ConditionEvaluated(RunCondition {
                node: n.clone(),
                result: *result,
            })
        }
        RunEvent::EffectRequested {
            node: n,
            key,
            effect,
            inputs,
            sealed_inputs,
        } => {
            let (name, target) = effect_name(effect);
            Record::EffectRequested(RunEffectRequested {
                node: n.clone(),
                key: key.clone(),
                effect: name.to_owned(),
                target,
                inputs_json: serde_json::to_string(inputs).unwrap_or_default(),
                sealed_inputs: sealed_inputs.clone().into_iter().collect(),
            })
        }
        RunEvent::EffectCompleted {
            node: n,
            key,
            success,
            outputs,
            error,
        } => Record::EffectCompleted(RunEffectCompleted {
            node: n.clone(),
            key: key.clone(),
            success: *success,
            outputs_json: outputs.to_string(),
            error: error.clone(),
        }),
        RunEvent::TimerArmed { node: n, due_at } => Record::TimerArmed(RunTimer {
            node: n.clone(),
            due_at: Some(timestamp(*due_at)),
        }),
        RunEvent::TimerFired { node: n } => Record::TimerFired(node(n)),
        RunEvent::Ended { reason } => Record::Ended(RunText {
            text: reason.clone(),
        }),
        RunEvent::AgentTurnStarted { node: n, heard } => Record::AgentTurn(RunAgentTurn {
            node: n.clone(),
            heard: heard.clone(),
        }),
        RunEvent::ToolCalled { node: n, call } => Record::ToolCalled(RunToolCall {
            node: n.clone(),
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments_json: call.arguments.to_string(),
            action_id: call.action_id.clone(),
            workflow_id: call.workflow_id.clone(),
            confirmation_required: call.confirmation_required,
            key: call.key.clone(),
            round: call.round,
        }),
        RunEvent::ConfirmationAsked {
            node: n,
            call_id,
            asked_at,
            due_at,
        } => Record::ConfirmationAsked(RunConfirmation {
            node: n.clone(),
            call_id: call_id.clone(),
            asked_at: Some(timestamp(*asked_at)),
            due_at: Some(timestamp(*due_at)),
            ..Default::default()
        }),
        RunEvent::ConfirmationAnswered {
            node: n,
            call_id,
            yes,
            message_id,
            text,
        } => Record::ConfirmationAnswered(RunConfirmation {
            node: n.clone(),
            call_id: call_id.clone(),
            yes: *yes,
            message_id: message_id.clone(),
            text: text.clone(),
            ..Default::default()
        }),
        RunEvent::ToolResult {
            node: n,
            call_id,
            result,
        } => Record::ToolResult(RunToolResult {
            node: n.clone(),
            call_id: call_id.clone(),
            result_json: result.to_string(),
        }),
    };
    RunEventRecord {
        event: Some(record),
    }
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}

/// A stored run event back as the runtime's.
pub fn decode(record: RunEventRecord) -> Option<RunEvent> {
    Some(match record.event? {
        Record::Started(s) => RunEvent::Started {
            run_id: s.run_id,
            context: json(&s.context_json),
        },
        Record::Entered(n) => RunEvent::Entered { node: n.node },
        Record::MessageSent(m) => RunEvent::MessageSent {
            node: m.node,
            text: m.text,
            buttons: m.buttons,
            form: m.form,
        },
        Record::InputQueued(t) => RunEvent::InputQueued { text: t.text },
        Record::AwaitingInput(n) => RunEvent::AwaitingInput { node: n.node },
        Record::Captured(c) => RunEvent::Captured {
            node: c.node,
            variable: c.variable,
            value: c.value,
        },
        Record::InputRejected(n) => RunEvent::InputRejected { node: n.node },
        Record::Reasked(m) => RunEvent::Reasked {
            node: m.node,
            text: m.text,
        },
        Record::VariableSet(v) => RunEvent::VariableSet {
            variable: v.variable,
            value: json(&v.value_json),
        },
        Record::ConditionEvaluated(c) => RunEvent::ConditionEvaluated {
            node: c.node,
            result: c.result,
        },
        Record::EffectRequested(e) => RunEvent::EffectRequested {
            node: e.node,
            key: e.key,
            effect: match e.effect.as_str() {
                "action" => Effect::Action {
                    action_id: e.target,
                },
                "connexease" => Effect::Connexease {
                    operation: e.target,
                },
                "model" => Effect::Model,
                "workflow" => Effect::Workflow {
                    workflow_id: e.target,
                },
                "update_conversation" => Effect::UpdateConversation,
                // A kind this build does not know: not something to carry out.
                _ => return None,
            },
            inputs: serde_json::from_str(&e.inputs_json).unwrap_or_default(),
            sealed_inputs: e.sealed_inputs.into_iter().collect(),
        },
        Record::EffectCompleted(e) => RunEvent::EffectCompleted {
            node: e.node,
            key: e.key,
            success: e.success,
            outputs: json(&e.outputs_json),
            error: e.error,
        },
        Record::TimerArmed(t) => RunEvent::TimerArmed {
            node: t.node,
            due_at: t.due_at.as_ref().map(micros).unwrap_or_default(),
        },
        Record::TimerFired(n) => RunEvent::TimerFired { node: n.node },
        Record::Ended(t) => RunEvent::Ended { reason: t.text },
        Record::AgentTurn(t) => RunEvent::AgentTurnStarted {
            node: t.node,
            heard: t.heard,
        },
        Record::ToolCalled(c) => RunEvent::ToolCalled {
            node: c.node,
            call: AgentCall {
                call_id: c.call_id,
                name: c.name,
                arguments: json(&c.arguments_json),
                action_id: c.action_id,
                workflow_id: c.workflow_id,
                confirmation_required: c.confirmation_required,
                key: c.key,
                round: c.round,
                confirmed_by: None,
                result: None,
            },
        },
        Record::ConfirmationAsked(c) => RunEvent::ConfirmationAsked {
            node: c.node,
            call_id: c.call_id,
            asked_at: c.asked_at.as_ref().map(micros).unwrap_or_default(),
            due_at: c.due_at.as_ref().map(micros).unwrap_or_default(),
        },
        Record::ConfirmationAnswered(c) => RunEvent::ConfirmationAnswered {
            node: c.node,
            call_id: c.call_id,
            yes: c.yes,
            message_id: c.message_id,
            text: c.text,
        },
        Record::ToolResult(r) => RunEvent::ToolResult {
            node: r.node,
            call_id: r.call_id,
            result: json(&r.result_json),
        },
    })
}

#[derive(Clone)]
pub struct RunService {
    log: EventLog,
    flows: FlowsService,
    render: Arc<switchboard_template::Renderer>,
    /// Published graphs by (workspace, flow, version): versions never change, so every
    /// input of every run need not read its flow's stream again.
    graphs: Arc<std::sync::Mutex<HashMap<VersionKey, Arc<Graph>>>>,
    /// What an assistant without a conversation flow runs: [`assistant_agent`].
    agent_graph: Arc<Graph>,
}

/// What a run started for another passes on: the conversation's variables as the other
/// has them (`conversation`, `lead`, `agent`, `workspace`, `message`, `analysis`), not its
/// own working state (`session`, `nodes`, `input`, `parent`) and never `secure`.
pub fn inherited(vars: &Json) -> serde_json::Map<String, Json> {
    const OWN: [&str; 5] = ["session", "nodes", "input", "parent", "secure"];
    vars.as_object()
        .map(|all| {
            all.iter()
                .filter(|(name, _)| !OWN.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The reason of an End node that hands the conversation to the assistant's own agent.
pub const HANDED_TO_AGENT: &str = "agent";

/// The graph of an assistant without a conversation flow: its agent keeps the
/// conversation, answering each customer message; when the model cannot answer, the
/// customer is told a teammate will follow up.
pub fn assistant_agent() -> Graph {
    use switchboard_proto::flows::v1::node::Kind;
    use switchboard_proto::flows::v1::{AgentNode, Edge, End, Node, SendMessage, Start};
    let node = |id: &str, kind: Kind| Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    };
    let edge = |from: &str, to: &str, port: &str| Edge {
        from: from.into(),
        to: to.into(),
        port: port.into(),
    };
    Graph {
        nodes: vec![
            node("start", Kind::Start(Start {})),
            node(
                "agent",
                Kind::Agent(AgentNode {
                    wait_for_customer: true,
                    ..Default::default()
                }),
            ),
            node(
                "unavailable",
                Kind::SendMessage(SendMessage {
                    text: "Sorry, I cannot answer right now. A teammate will get back to you."
                        .into(),
                    ..Default::default()
                }),
            ),
            node("end", Kind::End(End::default())),
        ],
        edges: vec![
            edge("start", "agent", ""),
            edge("agent", "unavailable", "failure"),
            edge("unavailable", "end", ""),
        ],
        ..Default::default()
    }
}

/// A published version: workspace, flow, number.
type VersionKey = (String, String, u32);

/// Published graphs kept in memory; past it the cache starts over.
const GRAPH_CACHE: usize = 1024;

impl RunService {
    pub fn new(flows: FlowsService) -> Self {
        Self {
            log: flows.log().clone(),
            flows,
            render: Arc::new(switchboard_template::Renderer::new(Default::default())),
            graphs: Arc::default(),
            agent_graph: Arc::new(assistant_agent()),
        }
    }

    /// The read models (runs by conversation, flows, assistants).
    pub fn store(&self) -> &crate::store::FlowsStore {
        self.flows.store()
    }

    /// The definitions: flows and assistants.
    pub fn flows(&self) -> &FlowsService {
        &self.flows
    }

    /// Fires every timer due at `now` (microseconds): each run goes on from its delay
    /// node, once (a fired timer leaves the read model; a second firing finds the run no
    /// longer waiting and changes nothing). Returns how many fired.
    pub async fn fire_due_timers(&self, now: i64) -> Result<usize, ServiceError> {
        let due = self.store().due_timers(now, 500).await?;
        let mut fired = 0;
        for (workspace_id, run_id, node) in due {
            let events = self
                .handle(&workspace_id, &run_id, Input::TimerDue { node })
                .await?;
            fired += usize::from(!events.is_empty());
        }
        Ok(fired)
    }

    /// Fires due timers every second while this process holds the timer role (one per
    /// deployment), until `shutdown`. Timers are in the log, so a restart re-arms them.
    pub async fn run_timers(self, shutdown: tokio_util::sync::CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Ok(Some(lease)) = self.log.try_lead("flows-timers").await {
                // A deposed holder firing a timer late changes nothing: firing is decided
                // on the run's state at its version, so a timer fires once.
                while !shutdown.is_cancelled() && lease.is_held() {
                    if let Err(e) = self.fire_due_timers(now_micros()).await {
                        tracing::warn!(error = %e, "flow timers could not fire; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = lease.lost() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// A run's state, folded from its stream.
    pub async fn load(&self, workspace_id: &str, run_id: &str) -> Result<RunState, ServiceError> {
        self.read(workspace_id, run_id, |_| {}).await
    }

    /// A run's state and every event it recorded.
    pub async fn recorded(
        &self,
        workspace_id: &str,
        run_id: &str,
    ) -> Result<(RunState, Vec<RunEvent>), ServiceError> {
        let mut events = Vec::new();
        let state = self
            .read(workspace_id, run_id, |e| events.push(e.clone()))
            .await?;
        Ok((state, events))
    }

    async fn read(
        &self,
        workspace_id: &str,
        run_id: &str,
        mut each: impl FnMut(&RunEvent),
    ) -> Result<RunState, ServiceError> {
        let stream = run_stream(workspace_id, run_id);
        let mut state = RunState::default();
        loop {
            let events = self.log.read_stream(&stream, state.version, 500).await?;
            let Some(last) = events.last() else { break };
            state.version = last.stream_version;
            for e in &events {
                if let Some(event) = fold(&mut state, e)? {
                    each(&event);
                }
            }
            if events.len() < 500 {
                break;
            }
        }
        if state.version == 0 {
            return Err(ServiceError::NotFound("run"));
        }
        Ok(state)
    }

    /// The published graph a run is pinned to.
    async fn graph(
        &self,
        workspace_id: &str,
        state: &RunState,
    ) -> Result<Arc<Graph>, ServiceError> {
        let key = (
            workspace_id.to_owned(),
            state.flow_id.clone(),
            state.flow_version,
        );
        if state.flow_id.is_empty() {
            return Ok(self.agent_graph.clone());
        }
        if let Some(graph) = self.graphs.lock().expect("not poisoned").get(&key) {
            return Ok(graph.clone());
        }
        // Pinned: found even when the flow was deleted after the run started.
        let graph = Arc::new(
            self.flows
                .pinned_version(workspace_id, &state.flow_id, state.flow_version)
                .await?
                .graph
                .unwrap_or_default(),
        );
        let mut graphs = self.graphs.lock().expect("not poisoned");
        if graphs.len() >= GRAPH_CACHE {
            graphs.clear();
        }
        graphs.insert(key, graph.clone());
        Ok(graph)
    }

    /// Starts a run of the flow's published version for a conversation (one run per flow
    /// and conversation: starting it again returns the same run).
    pub async fn start(
        &self,
        workspace_id: &str,
        flow_id: &str,
        conversation_id: &str,
        context: Json,
    ) -> Result<RunState, ServiceError> {
        self.start_with(None, workspace_id, flow_id, conversation_id, context)
            .await
    }

    /// [`RunService::start`] inside a subscription handler's transaction. Returns the run
    /// id (the run is readable once the transaction commits).
    pub async fn start_in(
        &self,
        tx: &mut Tx<'_>,
        workspace_id: &str,
        flow_id: &str,
        conversation_id: &str,
        context: Json,
    ) -> Result<String, ServiceError> {
        self.start_with(Some(tx), workspace_id, flow_id, conversation_id, context)
            .await
            .map(|state| state.run.run_id)
    }

    async fn start_with(
        &self,
        mut tx: Option<&mut Tx<'_>>,
        workspace_id: &str,
        flow_id: &str,
        conversation_id: &str,
        context: Json,
    ) -> Result<RunState, ServiceError> {
        let key = derive_event_id(workspace_id, &format!("run:{flow_id}:{conversation_id}"), 0);
        let run_id = format!("run_{}", key.simple());
        // The run started already (even if its flow was deleted since): the same run.
        if let Ok(existing) = self.load(workspace_id, &run_id).await {
            return Ok(existing);
        }
        // No flow: the assistant's own agent (version 0 of no flow).
        let published = if flow_id.is_empty() {
            0
        } else {
            let flow = self.flows.load(workspace_id, flow_id).await?.flow;
            if flow.published_version == 0 {
                return Err(ServiceError::FailedPrecondition(format!(
                    "flow `{}` has no published version to run",
                    flow.name
                )));
            }
            flow.published_version
        };
        let pinned = RunState {
            flow_id: flow_id.to_owned(),
            flow_version: published,
            conversation_id: conversation_id.to_owned(),
            ..Default::default()
        };
        let graph = self.graph(workspace_id, &pinned).await?;
        let input = Input::Start {
            run_id: run_id.clone(),
            context,
        };
        let stream = run_stream(workspace_id, &run_id);
        // One attempt: a run started in between is a conflict, as a start always was.
        let command = Command::new(&self.log, &stream)
            .attempts(1)
            .starting_from(Loaded::new(pinned, 0));
        let decide = |loaded: &Loaded<RunState>| -> Result<_, Infallible> {
            let now = now_micros();
            let events = run::decide(&graph, &loaded.state.run, &input, now, self.render.as_ref());
            let new = new_events(workspace_id, &run_id, &loaded.state, &events, now);
            Ok(Decision::new(new, events))
        };
        let in_tx = tx.is_some();
        let executed = match tx.as_deref_mut() {
            Some(tx) => command.run_in(tx, &Runs, decide).await,
            None => command.run(&Runs, decide).await,
        }
        .map_err(run_command_error)?;
        match executed {
            Executed::Appended { state, output, .. } => {
                self.hand_over(tx, workspace_id, &state, &output).await?;
                // Not committed yet: what was decided is what the run will be.
                if in_tx {
                    return Ok(state);
                }
                self.load(workspace_id, &run_id).await
            }
            _ => self.load(workspace_id, &run_id).await,
        }
    }

    /// A conversation flow's run that just ended with reason `agent` hands the
    /// conversation to the assistant's own agent: its run starts (in the same transaction)
    /// with the flow's variables, and answers from the customer's next message on.
    async fn hand_over(
        &self,
        tx: Option<&mut Tx<'_>>,
        workspace_id: &str,
        ended: &RunState,
        events: &[RunEvent],
    ) -> Result<(), ServiceError> {
        let handed = events
            .iter()
            .any(|e| matches!(e, RunEvent::Ended { reason } if reason == HANDED_TO_AGENT));
        if !handed || ended.flow_id.is_empty() {
            return Ok(());
        }
        let flow = self.flows.load(workspace_id, &ended.flow_id).await?.flow;
        if flow.kind() != FlowKind::ConversationFlow {
            return Ok(());
        }
        let mut context = ended.run.vars.clone();
        if let Some(map) = context.as_object_mut() {
            map.remove("nodes");
        }
        Box::pin(self.start_with(tx, workspace_id, "", &ended.conversation_id, context)).await?;
        Ok(())
    }

    /// Applies `input` to the run: decides at the version it read and appends there,
    /// deciding again when another input got in first. Returns what happened.
    pub async fn handle(
        &self,
        workspace_id: &str,
        run_id: &str,
        input: Input,
    ) -> Result<Vec<RunEvent>, ServiceError> {
        self.handle_with(None, workspace_id, run_id, input).await
    }

    /// [`RunService::handle`] inside a subscription handler's transaction.
    pub async fn handle_in(
        &self,
        tx: &mut Tx<'_>,
        workspace_id: &str,
        run_id: &str,
        input: Input,
    ) -> Result<Vec<RunEvent>, ServiceError> {
        self.handle_with(Some(tx), workspace_id, run_id, input)
            .await
    }

    async fn handle_with(
        &self,
        mut tx: Option<&mut Tx<'_>>,
        workspace_id: &str,
        run_id: &str,
        input: Input,
    ) -> Result<Vec<RunEvent>, ServiceError> {
        let state = self.load(workspace_id, run_id).await?;
        // The graph is pinned by the run's first event: one fetch serves every attempt.
        let graph = self.graph(workspace_id, &state).await?;
        let stream = run_stream(workspace_id, run_id);
        let version = state.version;
        let command = Command::new(&self.log, &stream)
            .attempts(RUN_ATTEMPTS)
            .starting_from(Loaded::new(state, version));
        let decide = |loaded: &Loaded<RunState>| -> Result<_, Infallible> {
            let now = now_micros();
            let events = run::decide(&graph, &loaded.state.run, &input, now, self.render.as_ref());
            let new = new_events(workspace_id, run_id, &loaded.state, &events, now);
            Ok(Decision::new(new, events))
        };
        let executed = match tx.as_deref_mut() {
            Some(tx) => command.run_in(tx, &Runs, decide).await,
            None => command.run(&Runs, decide).await,
        };
        match executed {
            Ok(Executed::Appended { state, output, .. }) => {
                self.hand_over(tx, workspace_id, &state, &output).await?;
                Ok(output)
            }
            Ok(Executed::Unchanged { output, .. }) => Ok(output),
            // Run events have ids of their own: never a repeat.
            Ok(Executed::Duplicate { .. }) => Ok(Vec::new()),
            Err(CommandError::Contended { .. }) => Err(ServiceError::FailedPrecondition(
                "the run is changing too fast; retry".into(),
            )),
            Err(e) => Err(run_command_error(e)),
        }
    }
}

/// Attempts an input makes on a run before giving up when other inputs keep getting in
/// first.
const RUN_ATTEMPTS: u32 = 10;

/// Runs for the command skeleton: the run's fold, and what its start pinned it to.
struct Runs;

impl Aggregate for Runs {
    type State = RunState;

    fn apply(&self, state: &mut RunState, event: &RecordedEvent) -> Result<(), EventLogError> {
        fold(state, event).map(drop)
    }

    fn at_version(&self, state: &mut RunState, version: u64) {
        state.version = version;
    }
}

/// Folds one stored event of a run's stream into `state` (pure), returning the run event
/// it recorded (`None` for the action requests stored beside them).
fn fold(state: &mut RunState, e: &RecordedEvent) -> Result<Option<RunEvent>, EventLogError> {
    if e.event_type == ACTION_REQUESTED {
        return Ok(None);
    }
    let record: RunEventRecord = e.decode()?;
    if let Some(Record::Started(s)) = &record.event {
        state.flow_id = s.flow_id.clone();
        state.flow_version = s.flow_version;
        state.conversation_id = s.conversation_id.clone();
    }
    let event = decode(record);
    if let Some(event) = &event {
        state.run.apply(event);
    }
    Ok(event)
}

/// A run command's failure as the service reports it: a lost race is a `Conflict` at the
/// version the command read.
fn run_command_error(e: CommandError<Infallible>) -> ServiceError {
    match e {
        CommandError::Rejected { error, .. } => match error {},
        CommandError::Contended {
            expected, actual, ..
        } => ServiceError::Conflict {
            expected: match expected {
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::NoStream => 0,
            },
            actual,
        },
        CommandError::RequestReused => crate::service::request_id_reused(),
        CommandError::Log(e) => e.into(),
    }
}

/// The events that store `events`, decided on `state` at `now`: each run event, and beside
/// every action it asks for, the `flow_run.action_requested` the actions service runs.
fn new_events(
    workspace_id: &str,
    run_id: &str,
    state: &RunState,
    events: &[RunEvent],
    now: i64,
) -> Vec<NewEvent> {
    let metadata = Metadata {
        workspace_id: workspace_id.to_owned(),
        correlation_id: run_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
        occurred_at: now,
        ..Default::default()
    };
    let pinned = Some((
        state.flow_id.as_str(),
        state.flow_version,
        state.conversation_id.as_str(),
    ));
    let mut new = Vec::with_capacity(events.len() + 1);
    let mut after = state.run.clone();
    for event in events {
        after.apply(event);
        new.push(NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: event_type(event).into(),
            schema_version: 1,
            payload: encode(event, pinned).encode_to_vec(),
            metadata: metadata.clone(),
        });
        if let RunEvent::EffectRequested {
            node,
            key,
            effect: Effect::Action { action_id },
            inputs,
            sealed_inputs,
        } = event
        {
            // An agent's tool call the customer confirmed runs as confirmed; the agent's
            // calls are its own, every other the flow's.
            let call = after
                .agent
                .as_ref()
                .and_then(|a| a.calls.iter().find(|c| c.key == *key));
            // Confirmed by the customer: an agent's call, or a flow node's second request.
            let confirmed_by = call
                .and_then(|c| c.confirmed_by.clone())
                .or_else(|| after.confirmed.get(key).cloned());
            let triggered_by = if call.is_some() {
                Trigger::Agent
            } else {
                Trigger::Flow
            };
            // What the actions service runs: the node's inputs under `input`, beside the
            // run's variables (which never hold `secure`); inputs that read `secure.*` go
            // as templates, rendered by the actions service.
            let mut variables = after.vars.clone();
            if let Some(map) = variables.as_object_mut() {
                map.insert("input".into(), json!(inputs));
            }
            new.push(NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: ACTION_REQUESTED.into(),
                schema_version: 1,
                payload: ActionRequested {
                    action_id: action_id.clone(),
                    variables_json: variables.to_string(),
                    idempotency_key: key.clone(),
                    conversation_id: state.conversation_id.clone(),
                    run_id: run_id.to_owned(),
                    node_id: node.clone(),
                    confirmed: confirmed_by.is_some(),
                    confirmed_by: confirmed_by.unwrap_or_default(),
                    caller_permission: PermissionLevel::Agent as i32,
                    triggered_by: triggered_by as i32,
                    inject_result: false,
                    sealed_inputs: sealed_inputs.clone().into_iter().collect(),
                }
                .encode_to_vec(),
                metadata: metadata.clone(),
            });
        }
    }
    new
}

/// The actions service's answers (`internal.actions.action_completed`), fed back into the
/// runs that asked.
pub struct ActionOutcomes {
    runs: RunService,
}

impl ActionOutcomes {
    pub fn new(runs: RunService) -> Self {
        Self { runs }
    }
}

/// The event type of the actions service's answers.
pub use switchboard_contract::event_types::actions::EXECUTION_COMPLETED as ACTION_COMPLETED;

#[async_trait]
impl Handler for ActionOutcomes {
    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let done: ExecutionCompleted = event
            .decode()
            .map_err(|e| HandleError::Reject(e.to_string()))?;
        let result = done.result.unwrap_or_default();
        let input = Input::EffectDone {
            key: done.idempotency_key.clone(),
            success: result.outcome == Outcome::Success as i32,
            outputs: serde_json::from_str(&result.outputs_json).unwrap_or(json!({})),
            error: result.error.clone(),
            // A flow's own action node asks the customer, then runs it again confirmed.
            needs_confirmation: result.reason
                == switchboard_proto::actions::v1::FailureReason::ConfirmationRequired as i32,
        };
        match self
            .runs
            .handle_in(tx, event.workspace_id(), &done.run_id, input)
            .await
        {
            Ok(_) => Ok(()),
            Err(ServiceError::NotFound(_)) => Err(HandleError::Reject(format!(
                "no run `{}` in the workspace",
                done.run_id
            ))),
            Err(e) => Err(HandleError::Retry(e.to_string())),
        }
    }

    /// Only the completions flows asked for.
    async fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == ACTION_COMPLETED
            && event
                .decode::<ExecutionCompleted>()
                .is_ok_and(|done| !done.run_id.is_empty() && !done.idempotency_key.is_empty())
    }
}

/// What an action workflow answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Completed { run_id: String, response: Json },
    Failed { run_id: String, reason: String },
    TimedOut { run_id: String },
}

/// A call of an action workflow ([`RunService::invoke`]).
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The workflow's name.
    pub name: String,
    /// Its `input`, checked against its input schema.
    pub variables: Json,
    /// The conversation's variables it may read beside them (`conversation`, `lead`, …).
    pub context: serde_json::Map<String, Json>,
    /// The conversation it acts for; empty for none.
    pub conversation_id: String,
    /// Makes a retried call the same run; empty for a new one.
    pub request_id: String,
    /// How long to wait for its answer.
    pub deadline: std::time::Duration,
}

impl RunService {
    /// Runs a published action workflow with its variables beside the context it may
    /// read and waits, up to the deadline, for its answer: the run's `session`
    /// variables, checked against its response schema.
    pub async fn invoke(
        &self,
        workspace_id: &str,
        request: InvokeRequest,
    ) -> Result<Invocation, ServiceError> {
        let InvokeRequest {
            name,
            variables,
            mut context,
            conversation_id,
            request_id,
            deadline,
        } = request;
        let (name, conversation_id, request_id) =
            (name.as_str(), conversation_id.as_str(), request_id.as_str());
        let invalid = |field: &str, description: String| {
            ServiceError::Invalid(vec![crate::domain::FieldViolation {
                field: field.into(),
                description,
            }])
        };
        let Some((flow_id, kind, published)) = self.store().flow_named(workspace_id, name).await?
        else {
            return Err(invalid("name", format!("no action workflow `{name}`")));
        };
        if kind != FlowKind::ActionWorkflow as i32 {
            return Err(invalid(
                "name",
                format!("`{name}` is not an action workflow"),
            ));
        }
        if published == 0 {
            return Err(ServiceError::FailedPrecondition(format!(
                "`{name}` has no published version"
            )));
        }
        if !variables.is_object() {
            return Err(invalid("variables_json", "must be a JSON object".into()));
        }
        let version = self.flows.version(workspace_id, &flow_id, 0).await?;
        let graph = version.graph.unwrap_or_default();
        if let Some(schema) = schema_of(&graph.input_schema_json)?
            && let Err(problem) = schema.validate(&variables)
        {
            return Err(invalid(
                "variables_json",
                format!("does not match the workflow's input schema: {problem}"),
            ));
        }
        let key = if request_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            request_id.to_owned()
        };
        let subject = if conversation_id.is_empty() {
            format!("invocation:{key}")
        } else {
            format!("{conversation_id}:invocation:{key}")
        };
        let state = self
            .start(workspace_id, &flow_id, &subject, {
                context.insert("input".into(), variables);
                Json::Object(context)
            })
            .await?;
        let run_id = state.run.run_id.clone();
        let until = std::time::Instant::now() + deadline;
        let mut state = state;
        loop {
            match self.workflow_answer(workspace_id, &state).await? {
                Some(Ok(response)) => return Ok(Invocation::Completed { run_id, response }),
                Some(Err(reason)) => return Ok(Invocation::Failed { run_id, reason }),
                None => {}
            }
            if std::time::Instant::now() >= until {
                return Ok(Invocation::TimedOut { run_id });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            state = self.load(workspace_id, &run_id).await?;
        }
    }
}

impl RunService {
    /// Starts the published action workflow `workflow_id` for an agent's tool call, as a
    /// child of the run `parent`: its variables are `input` (checked against the
    /// workflow's input schema) beside the conversation's as the parent has them
    /// (`conversation`, `lead`, `agent`, …; not its `session` or `nodes`), and its end is
    /// fed back to the parent as the outcome of `key` (see
    /// [`RunService::workflow_answer`]). Starting it again (a redelivery) is the same run.
    pub async fn start_child(
        &self,
        workspace_id: &str,
        workflow_id: &str,
        parent: &RunState,
        key: &str,
        input: Json,
    ) -> Result<RunState, ServiceError> {
        let conversation_id = parent.conversation_id.as_str();
        let parent_run_id = parent.run.run_id.as_str();
        use switchboard_proto::flows::v1::FlowKind;
        let flow = self.flows.load(workspace_id, workflow_id).await?.flow;
        if flow.kind() != FlowKind::ActionWorkflow || flow.published_version == 0 {
            return Err(ServiceError::FailedPrecondition(format!(
                "`{}` is not a published action workflow",
                flow.name
            )));
        }
        let version = self.flows.version(workspace_id, workflow_id, 0).await?;
        let graph = version.graph.unwrap_or_default();
        if let Some(schema) = schema_of(&graph.input_schema_json)?
            && let Err(problem) = schema.validate(&input)
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "the arguments do not match the workflow's input schema: {problem}"
            )));
        }
        let subject = format!("{conversation_id}:invocation:{key}");
        let mut context = inherited(&parent.run.vars);
        context.insert("input".into(), input);
        context.insert(
            "parent".into(),
            json!({"run_id": parent_run_id, "key": key}),
        );
        self.start(workspace_id, workflow_id, &subject, Json::Object(context))
            .await
    }

    /// What an ended action workflow answered: its `session` variables, checked against
    /// its response schema; `Err` says why it did not complete. `None` while it runs.
    pub async fn workflow_answer(
        &self,
        workspace_id: &str,
        state: &RunState,
    ) -> Result<Option<Result<Json, String>>, ServiceError> {
        let run::Status::Ended { reason } = &state.run.status else {
            return Ok(None);
        };
        if reason != "completed" {
            return Ok(Some(Err(reason.clone())));
        }
        let response = state.run.vars.get("session").cloned().unwrap_or(json!({}));
        let graph = self.graph(workspace_id, state).await?;
        if let Some(schema) = schema_of(&graph.response_schema_json)?
            && let Err(problem) = schema.validate(&response)
        {
            return Ok(Some(Err(format!(
                "the response does not match the response schema: {problem}"
            ))));
        }
        Ok(Some(Ok(response)))
    }
}

/// Runs one replay may cover, and the default when it names none.
pub const REPLAY_LIMIT: u32 = 500;
pub const REPLAY_DEFAULT: u32 = 50;

impl RunService {
    /// Replays recorded runs of a flow on its draft (see [`crate::domain::replay`]): the
    /// named runs, or the flow's most recent ones. Reads only; nothing is sent or asked.
    pub async fn replay_draft(
        &self,
        workspace_id: &str,
        flow_id: &str,
        run_ids: &[String],
        limit: u32,
    ) -> Result<ReplayReport, ServiceError> {
        let flow = self.flows.load(workspace_id, flow_id).await?.flow;
        if !flow.has_draft {
            return Err(ServiceError::FailedPrecondition(format!(
                "flow `{}` has no draft to replay: save one first",
                flow.name
            )));
        }
        let draft = flow.draft.unwrap_or_default();
        let run_ids = if run_ids.is_empty() {
            let limit = if limit == 0 { REPLAY_DEFAULT } else { limit };
            self.store()
                .recent_runs(workspace_id, flow_id, limit.min(REPLAY_LIMIT))
                .await?
        } else {
            run_ids.to_vec()
        };
        let mut report = ReplayReport::default();
        for (i, run_id) in run_ids.iter().enumerate() {
            let not_ours = || {
                ServiceError::Invalid(vec![crate::domain::FieldViolation {
                    field: format!("run_ids[{i}]"),
                    description: format!("`{run_id}` is not a run of this flow"),
                }])
            };
            let (state, events) = match self.recorded(workspace_id, run_id).await {
                Ok(recorded) => recorded,
                Err(ServiceError::NotFound(_)) => return Err(not_ours()),
                Err(e) => return Err(e),
            };
            if state.flow_id != flow_id {
                return Err(not_ours());
            }
            self.replay_run(workspace_id, run_id, &state, &events, &draft, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Replays one recorded run on `draft` and adds what it found to `report`.
    async fn replay_run(
        &self,
        workspace_id: &str,
        run_id: &str,
        state: &RunState,
        events: &[RunEvent],
        draft: &Graph,
        report: &mut ReplayReport,
    ) -> Result<(), ServiceError> {
        let Some(recording) = replay::Recording::of(events) else {
            return Ok(());
        };
        let published = self.graph(workspace_id, state).await?;
        let comparison = replay::compare(&published, draft, &recording, self.render.as_ref());
        let steps = |s: &replay::Simulation| s.behaviors.iter().map(ToString::to_string).collect();
        let incomplete = matches!(comparison.draft.stop, replay::Stop::UnknownOutcome { .. });
        let difference = comparison.difference.clone();
        report.replayed += 1;
        report.different += u32::from(difference.is_some());
        report.incomplete += u32::from(incomplete);
        report.runs.push(RunReplay {
            run_id: run_id.to_owned(),
            conversation_id: state.conversation_id.clone(),
            version: state.flow_version,
            same: difference.is_none(),
            step: difference.as_ref().map_or(0, |d| d.step as u32),
            published: difference
                .as_ref()
                .map(|d| d.published.clone())
                .unwrap_or_default(),
            draft: difference.map(|d| d.draft).unwrap_or_default(),
            published_stop: comparison.published.stop.to_string(),
            draft_stop: comparison.draft.stop.to_string(),
            published_steps: steps(&comparison.published),
            draft_steps: steps(&comparison.draft),
        });
        Ok(())
    }

    /// Replays the recent conversations of the assistant's flow (or of its own agent) on
    /// the flow its draft names: how they would go once the draft is published. Model
    /// steps are answered as they were recorded; nothing is sent or called.
    pub async fn replay_assistant_draft(
        &self,
        workspace_id: &str,
        assistant_id: &str,
        limit: u32,
    ) -> Result<ReplayReport, ServiceError> {
        let (history, _) = self
            .flows
            .assistant_history(workspace_id, assistant_id)
            .await?;
        let Some(draft) = history.draft else {
            return Err(ServiceError::FailedPrecondition(
                "the assistant has no draft to replay: save one first".into(),
            ));
        };
        let current = history.published.unwrap_or_default();
        let graph = if draft.flow_id.is_empty() {
            assistant_agent()
        } else {
            self.flows
                .version(workspace_id, &draft.flow_id, 0)
                .await?
                .graph
                .unwrap_or_default()
        };
        let limit = if limit == 0 { REPLAY_DEFAULT } else { limit };
        // The recent runs of the flow (or of no flow) that were this assistant's
        // conversations: another assistant may run the same flow.
        let candidates = self
            .store()
            .recent_runs(workspace_id, &current.flow_id, REPLAY_LIMIT)
            .await?;
        let mut report = ReplayReport::default();
        let mut taken = 0;
        for run_id in candidates {
            if taken >= limit.min(REPLAY_LIMIT) {
                break;
            }
            let (state, events) = self.recorded(workspace_id, &run_id).await?;
            let preferred = state.run.vars["conversation"]["metafields"]["assistant_id"].as_str();
            let whose = self
                .flows
                .store()
                .conversation_assistant(workspace_id, preferred)
                .await?;
            if whose.as_ref().map(|(id, _)| id.as_str()) != Some(assistant_id) {
                continue;
            }
            taken += 1;
            self.replay_run(workspace_id, &run_id, &state, &events, &graph, &mut report)
                .await?;
        }
        Ok(report)
    }
}

fn schema_of(text: &str) -> Result<Option<jsonschema::Validator>, ServiceError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Json = serde_json::from_str(text).map_err(|e| {
        ServiceError::FailedPrecondition(format!("a stored schema is not JSON: {e}"))
    })?;
    jsonschema::options().build(&value).map(Some).map_err(|e| {
        ServiceError::FailedPrecondition(format!("a stored schema does not compile: {e}"))
    })
}
