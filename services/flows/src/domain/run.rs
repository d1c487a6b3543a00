//! The flow runtime's pure core. A run is pinned to one published graph; its state is a
//! fold of its events ([`Run::apply`]), and [`decide`] says which events an input causes:
//! a message captured, a node's effect requested, a timer armed, a route taken. No I/O,
//! no clock, no randomness: the same graph and events always give the same state, which
//! is what makes runs replayable after a restart and drafts replayable against recorded
//! conversations.
//!
//! Effects (actions, conversation updates, Connexease operations) are requested with a key
//! derived from the run, the node and the attempt, and the run waits for their outcome.
//! Values read from `secure.*` are never put in an event: inputs that read them travel as
//! templates and are rendered only when the request is sent.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Map, Value as Json, json};
use switchboard_proto::flows::v1::node::Kind;
use switchboard_proto::flows::v1::{
    AgentNode, ButtonOption, FormFieldSpec, Graph, Node, Operator, Rule,
};

/// Nodes one input may pass through before the run is stopped as a loop.
pub const STEP_LIMIT: u32 = 1000;

/// How long a run waits for an effect's outcome before it takes the failure route
/// (`effect_timeout`): longer than any action may run with its retries, so only a lost
/// request or outcome gets here, and the run does not wait for ever.
pub const EFFECT_DEADLINE_SECONDS: i64 = 15 * 60;

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Status {
    #[default]
    NotStarted,
    /// Passing through nodes (only inside `decide`).
    Running,
    /// At a capture node, waiting for the customer.
    WaitingInput,
    /// Waiting for the outcome of the effect requested with this key.
    WaitingEffect {
        key: String,
    },
    /// Waiting for a timer (microseconds since the epoch).
    WaitingTimer {
        due_at: i64,
    },
    Ended {
        reason: String,
    },
}

/// A side effect a node asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run an action of the actions service.
    Action { action_id: String },
    /// Change the conversation (status and metafields).
    UpdateConversation,
    /// Run a Connexease operation.
    Connexease { operation: String },
    /// Ask the model for the agent's next step (an answer or tool calls).
    Model,
    /// Run a published action workflow (a tool the agent called).
    Workflow { workflow_id: String },
}

/// A tool the agent's model called, as the catalogue resolved it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentCall {
    /// The model's id for the call (its result answers it).
    pub call_id: String,
    pub name: String,
    /// The arguments the model wrote: a JSON object, or its text when it is not one.
    pub arguments: Json,
    /// What runs it; both empty for a tool the catalogue does not have.
    pub action_id: String,
    pub workflow_id: String,
    pub confirmation_required: bool,
    /// The effect key it runs under.
    pub key: String,
    /// The model call (within the turn) that asked for it.
    pub round: u32,
    /// The customer's message that confirmed it.
    pub confirmed_by: Option<String>,
    /// `{"ok", "outputs", "error"}` once it ran, or what stood in for running it.
    pub result: Option<Json>,
}

/// An agent node's turn in progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentTurn {
    /// Turns taken since the node was entered (the first is 1).
    pub turn: u32,
    /// Model calls made this turn.
    pub rounds: u32,
    /// The tools the model called this turn, in order.
    pub calls: Vec<AgentCall>,
    /// The call the customer is asked to confirm.
    pub confirming: Option<String>,
    /// When it was asked (microseconds; 0 for runs recorded before this was kept): a
    /// message the customer sent before it answers nothing.
    pub asked_at: i64,
}

/// The built-in tool an agent with a `handover` route offers its model.
pub const HANDOVER_TOOL: &str = "handover";

/// Model calls an agent's turn makes when its node sets none, and the most it may set.
pub const AGENT_ROUNDS_DEFAULT: u32 = 8;
pub const AGENT_ROUNDS_MAX: u32 = 32;

/// Tool calls of one model answer that are run; the rest are not.
pub const AGENT_CALLS_PER_ROUND: usize = 8;

/// How long a confirmation waits by default, and at most.
pub const CONFIRMATION_SECONDS_DEFAULT: u32 = 600;
pub const CONFIRMATION_SECONDS_MAX: u32 = 86_400;

/// What happened in a run, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Started {
        run_id: String,
        context: Json,
    },
    Entered {
        node: String,
    },
    MessageSent {
        node: String,
        text: String,
        buttons: Vec<ButtonOption>,
        /// The form's fields, when the message is a form.
        form: Vec<FormFieldSpec>,
    },
    /// A customer message that arrived while the run was not waiting for one.
    InputQueued {
        text: String,
    },
    /// The run waits for the customer at a capture node.
    AwaitingInput {
        node: String,
    },
    Captured {
        node: String,
        variable: String,
        value: String,
    },
    /// A message that did not validate after the last ask.
    InputRejected {
        node: String,
    },
    Reasked {
        node: String,
        text: String,
    },
    VariableSet {
        variable: String,
        value: Json,
    },
    ConditionEvaluated {
        node: String,
        result: bool,
    },
    EffectRequested {
        node: String,
        key: String,
        effect: Effect,
        /// Rendered inputs (or status/metafields/arguments), without secure values.
        inputs: BTreeMap<String, Json>,
        /// Inputs that read `secure.*`: their templates, rendered only when sent.
        sealed_inputs: BTreeMap<String, String>,
    },
    EffectCompleted {
        node: String,
        key: String,
        success: bool,
        outputs: Json,
        error: String,
    },
    TimerArmed {
        node: String,
        due_at: i64,
    },
    TimerFired {
        node: String,
    },
    Ended {
        reason: String,
    },
    /// An agent's turn begins, with the customer's messages that were waiting.
    AgentTurnStarted {
        node: String,
        heard: Vec<String>,
    },
    ToolCalled {
        node: String,
        call: AgentCall,
    },
    /// The customer is asked to confirm a call, at `asked_at`, until `due_at`.
    ConfirmationAsked {
        node: String,
        call_id: String,
        asked_at: i64,
        due_at: i64,
    },
    /// Yes or no, by the message `message_id` (empty: nobody answered in time).
    ConfirmationAnswered {
        node: String,
        call_id: String,
        yes: bool,
        message_id: String,
        text: String,
    },
    /// A call's result that no effect gave: declined, an unknown tool, bad arguments.
    ToolResult {
        node: String,
        call_id: String,
        result: Json,
    },
}

/// What reaches a run from outside.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start {
        run_id: String,
        context: Json,
    },
    /// A customer's message (a click as its value, a form as [`form_message`]), with the
    /// sentiment the conversation recorded for it (`positive`, …; empty when unknown).
    Message {
        text: String,
        sentiment: String,
        /// The conversation's id for the message (what a confirmation records).
        message_id: String,
        /// A click on a button (its value is `text`), not typed words.
        clicked: bool,
        /// When the customer sent it (microseconds; 0 when unknown).
        sent_at: i64,
    },
    EffectDone {
        key: String,
        success: bool,
        outputs: Json,
        error: String,
        /// The action was refused for want of the customer's confirmation.
        needs_confirmation: bool,
    },
    TimerDue {
        node: String,
    },
    /// The conversation as it now is (`conversation`, `lead`, `agent`): what changed is
    /// set, so templates and conditions read it as it is, not as it was at the start.
    Context {
        vars: Json,
    },
}

/// A run's state: a fold of its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub run_id: String,
    pub status: Status,
    /// The node the run is at.
    pub at: String,
    /// `conversation`, `lead`, … from the start, plus `session` and `nodes`.
    pub vars: Json,
    /// Asks made at the current capture node.
    pub asks: u32,
    /// Times each node was entered (the attempt in effect keys).
    pub entered: HashMap<String, u32>,
    pub queued: VecDeque<String>,
    /// The agent's turn, while the run is at an agent node.
    pub agent: Option<AgentTurn>,
    /// The buttons of the last message sent (what a click can be of).
    pub buttons: Vec<ButtonOption>,
    /// A flow's own action node waiting for the customer's yes: the refused effect's key,
    /// and when the question was asked.
    pub node_confirming: Option<(String, i64)>,
    /// Effects of a flow's own nodes the customer confirmed, by key: the confirming
    /// message's id.
    pub confirmed: BTreeMap<String, String>,
}

impl Run {
    pub fn apply(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Started { run_id, context } => {
                self.run_id = run_id.clone();
                let mut vars = context.as_object().cloned().unwrap_or_default();
                vars.entry("session").or_insert_with(|| json!({}));
                vars.insert("nodes".into(), json!({}));
                self.vars = Json::Object(vars);
                self.status = Status::Running;
            }
            RunEvent::Entered { node } => {
                self.at = node.clone();
                self.asks = 0;
                self.agent = None;
                self.node_confirming = None;
                *self.entered.entry(node.clone()).or_default() += 1;
                self.status = Status::Running;
            }
            RunEvent::InputQueued { text } => self.queued.push_back(text.clone()),
            RunEvent::AwaitingInput { .. } => self.status = Status::WaitingInput,
            RunEvent::InputRejected { .. } => {
                self.queued.pop_front();
                self.status = Status::Running;
            }
            RunEvent::Captured {
                variable, value, ..
            } => {
                self.queued.pop_front();
                set_path(&mut self.vars, variable, Json::String(value.clone()));
                set_path(
                    &mut self.vars,
                    "message.content",
                    Json::String(value.clone()),
                );
                self.status = Status::Running;
            }
            RunEvent::Reasked { .. } => {
                self.queued.pop_front();
                self.asks += 1;
                self.status = Status::WaitingInput;
            }
            RunEvent::VariableSet { variable, value } => {
                set_path(&mut self.vars, variable, value.clone())
            }
            RunEvent::EffectRequested { key, effect, .. } => {
                if let (Some(agent), Effect::Model) = (&mut self.agent, effect) {
                    agent.rounds += 1;
                }
                self.status = Status::WaitingEffect { key: key.clone() }
            }
            RunEvent::EffectCompleted {
                node,
                key,
                success,
                outputs,
                error,
            } => {
                let recorded = json!({"ok": success, "outputs": outputs, "error": error});
                self.status = Status::Running;
                // A tool's outcome is the agent's to give the model, not a node's output.
                if let Some(call) = self.agent_call_mut(|c| c.key == *key) {
                    call.result = Some(recorded);
                    return;
                }
                let mut merged = outputs.as_object().cloned().unwrap_or_default();
                for (k, v) in recorded.as_object().into_iter().flatten() {
                    merged.insert(k.clone(), v.clone());
                }
                set_path(
                    &mut self.vars,
                    &format!("nodes.{node}"),
                    Json::Object(merged),
                );
            }
            RunEvent::TimerArmed { due_at, .. } => {
                self.status = Status::WaitingTimer { due_at: *due_at }
            }
            RunEvent::TimerFired { .. } => self.status = Status::Running,
            RunEvent::Ended { reason } => {
                self.status = Status::Ended {
                    reason: reason.clone(),
                }
            }
            RunEvent::AgentTurnStarted { heard, .. } => {
                for _ in heard {
                    self.queued.pop_front();
                }
                if let Some(last) = heard.last() {
                    set_path(
                        &mut self.vars,
                        "message.content",
                        Json::String(last.clone()),
                    );
                }
                let turn = self.agent.as_ref().map_or(0, |a| a.turn) + 1;
                self.agent = Some(AgentTurn {
                    turn,
                    ..Default::default()
                });
                self.status = Status::Running;
            }
            RunEvent::ToolCalled { call, .. } => {
                if let Some(agent) = &mut self.agent {
                    agent.calls.push(call.clone());
                }
            }
            RunEvent::ConfirmationAsked {
                call_id, asked_at, ..
            } => {
                match &mut self.agent {
                    Some(agent) => {
                        agent.confirming = Some(call_id.clone());
                        agent.asked_at = *asked_at;
                    }
                    None => self.node_confirming = Some((call_id.clone(), *asked_at)),
                }
                self.status = Status::WaitingInput;
            }
            RunEvent::ConfirmationAnswered {
                call_id,
                yes,
                message_id,
                ..
            } => {
                // The answer is the message that just arrived, not one queued before.
                if !message_id.is_empty() {
                    self.queued.pop_back();
                }
                if let Some(agent) = &mut self.agent {
                    agent.confirming = None;
                }
                if self.node_confirming.take().is_some() && *yes {
                    self.confirmed
                        .insert(confirmed_key(call_id), message_id.clone());
                }
                if let Some(call) = self.agent_call_mut(|c| c.call_id == *call_id)
                    && *yes
                {
                    call.confirmed_by = Some(message_id.clone());
                }
                self.status = Status::Running;
            }
            RunEvent::ToolResult {
                call_id, result, ..
            } => {
                if let Some(call) = self.agent_call_mut(|c| c.call_id == *call_id) {
                    call.result = Some(result.clone());
                }
            }
            RunEvent::MessageSent { buttons, .. } => self.buttons = buttons.clone(),
            RunEvent::ConditionEvaluated { .. } => {}
        }
    }

    fn agent_call_mut(&mut self, pick: impl Fn(&AgentCall) -> bool) -> Option<&mut AgentCall> {
        self.agent.as_mut()?.calls.iter_mut().find(|c| pick(c))
    }

    /// The state after `events`, from nothing.
    pub fn fold<'e>(events: impl IntoIterator<Item = &'e RunEvent>) -> Self {
        let mut run = Run::default();
        for event in events {
            run.apply(event);
        }
        run
    }
}

/// Renders templates for the runtime; `libs/template` in production.
pub trait Render {
    /// Renders text; `Err(name)` names a missing variable, `Err` otherwise says why.
    fn text(&self, template: &str, vars: &Json) -> Result<String, RenderError>;
    /// The variables a template reads.
    fn reads(&self, template: &str) -> Vec<String>;
}

#[derive(Debug, Clone, PartialEq)]
pub enum RenderError {
    Missing(String),
    Other(String),
}

impl Render for switchboard_template::Renderer {
    fn text(&self, template: &str, vars: &Json) -> Result<String, RenderError> {
        self.render_text(template, vars).map_err(|e| match e {
            switchboard_template::TemplateError::MissingVariable { name, .. } => {
                RenderError::Missing(name)
            }
            other => RenderError::Other(other.to_string()),
        })
    }

    fn reads(&self, template: &str) -> Vec<String> {
        self.variables(template)
            .map(|v| v.into_iter().collect())
            .unwrap_or_default()
    }
}

/// Decides what `input` does to `run` on `graph` at time `now` (microseconds).
pub fn decide(
    graph: &Graph,
    run: &Run,
    input: &Input,
    now: i64,
    render: &dyn Render,
) -> Vec<RunEvent> {
    let mut d = Decider {
        graph,
        render,
        now,
        run: run.clone(),
        out: Vec::new(),
        steps: 0,
        nodes: graph.nodes.iter().map(|n| (n.id.as_str(), n)).collect(),
    };
    d.input(input);
    d.out
}

struct Decider<'g> {
    graph: &'g Graph,
    render: &'g dyn Render,
    now: i64,
    run: Run,
    out: Vec<RunEvent>,
    steps: u32,
    nodes: HashMap<&'g str, &'g Node>,
}

impl<'g> Decider<'g> {
    fn emit(&mut self, event: RunEvent) {
        self.run.apply(&event);
        self.out.push(event);
    }

    fn end(&mut self, reason: impl Into<String>) {
        self.emit(RunEvent::Ended {
            reason: reason.into(),
        });
    }

    fn input(&mut self, input: &Input) {
        let next = match (&self.run.status, input) {
            (Status::NotStarted, Input::Start { run_id, context }) => {
                // Secure metadata stays out of the run: inputs that read it are sealed
                // templates, rendered from the sealed store only when sent.
                let mut context = context.clone();
                if let Some(map) = context.as_object_mut() {
                    map.remove("secure");
                }
                self.emit(RunEvent::Started {
                    run_id: run_id.clone(),
                    context,
                });
                let start = self
                    .graph
                    .nodes
                    .iter()
                    .find(|n| matches!(n.kind, Some(Kind::Start(_))));
                match start {
                    Some(start) => Some(start.id.clone()),
                    None => {
                        self.end("no_start_node");
                        None
                    }
                }
            }
            (Status::Ended { .. }, _) => None,
            (
                status,
                Input::Message {
                    text,
                    sentiment,
                    message_id,
                    clicked,
                    sent_at,
                },
            ) => {
                let waiting = *status == Status::WaitingInput;
                let confirming = self.confirming().map(str::to_owned);
                // A click on a button with an action, while a capture waits: the action
                // runs first, and the click is captured once it has an outcome.
                let action = self
                    .run
                    .buttons
                    .iter()
                    .find(|b| *clicked && b.value == *text && !b.action_id.is_empty())
                    .filter(|_| waiting && confirming.is_none() && self.at_capture())
                    .cloned();
                if !sentiment.is_empty() {
                    self.emit(RunEvent::VariableSet {
                        variable: "message.sentiment".into(),
                        value: Json::String(sentiment.clone()),
                    });
                }
                self.emit(RunEvent::InputQueued { text: text.clone() });
                if let Some(button) = action {
                    let next = self.click(&button);
                    return self.go(next);
                }
                // Typed before the question was asked (it crossed the question on its
                // way), it answers nothing: it waits for the turn after.
                let asked_at = match (&self.run.agent, &self.run.node_confirming) {
                    (Some(agent), _) => agent.asked_at,
                    (None, Some((_, asked_at))) => *asked_at,
                    (None, None) => 0,
                };
                let before_question = !*clicked && *sent_at > 0 && *sent_at < asked_at;
                match (waiting, confirming) {
                    (true, Some(_)) if before_question => None,
                    (true, Some(key)) if self.run.agent.is_none() => {
                        self.answer_node_confirmation(&key, message_id, text, *clicked)
                    }
                    (true, Some(call_id)) => {
                        self.answer_confirmation(&call_id, message_id, text, *clicked)
                    }
                    (true, None) => self.capture(),
                    (false, _) => None,
                }
            }
            (
                Status::WaitingEffect { key },
                Input::EffectDone {
                    key: done,
                    success,
                    outputs,
                    error,
                    needs_confirmation,
                },
            ) if key == done => {
                let node = self.run.at.clone();
                self.emit(RunEvent::EffectCompleted {
                    node: node.clone(),
                    key: done.clone(),
                    success: *success,
                    outputs: outputs.clone(),
                    error: error.clone(),
                });
                if self.run.agent.is_some() {
                    self.agent_outcome(&node, done, *success, outputs, error)
                } else if self.at_capture() {
                    self.clicked(&node)
                } else if *success {
                    self.route(&node, "success")
                } else if *needs_confirmation && !self.run.confirmed.contains_key(done) {
                    self.ask_node_confirmation(&node, done)
                } else {
                    self.fail(&node, error)
                }
            }
            (Status::WaitingEffect { key }, Input::TimerDue { node }) if *node == self.run.at => {
                let key = key.clone();
                let error = format!(
                    "effect_timeout: no outcome for `{key}` within {EFFECT_DEADLINE_SECONDS} s"
                );
                self.emit(RunEvent::EffectCompleted {
                    node: node.clone(),
                    key: key.clone(),
                    success: false,
                    outputs: json!({}),
                    error: error.clone(),
                });
                if self.run.agent.is_some() {
                    self.agent_outcome(&node.clone(), &key, false, &json!({}), &error)
                } else if self.at_capture() {
                    self.clicked(&node.clone())
                } else {
                    self.fail(&node.clone(), &error)
                }
            }
            // Nobody answered a flow node's confirmation in time: a no.
            (Status::WaitingInput, Input::TimerDue { node })
                if *node == self.run.at && self.run.node_confirming.is_some() =>
            {
                let key = self.confirming().unwrap_or_default().to_owned();
                let node = node.clone();
                self.emit(RunEvent::ConfirmationAnswered {
                    node: node.clone(),
                    call_id: key,
                    yes: false,
                    message_id: String::new(),
                    text: String::new(),
                });
                self.declined(
                    &node,
                    "the customer did not confirm in time; nothing was done",
                )
            }
            // Nobody answered a confirmation in time: a no.
            (Status::WaitingInput, Input::TimerDue { node })
                if *node == self.run.at && self.confirming().is_some() =>
            {
                let call_id = self.confirming().unwrap_or_default().to_owned();
                let node = node.clone();
                self.emit(RunEvent::ConfirmationAnswered {
                    node: node.clone(),
                    call_id: call_id.clone(),
                    yes: false,
                    message_id: String::new(),
                    text: String::new(),
                });
                self.emit(RunEvent::ToolResult {
                    node: node.clone(),
                    call_id,
                    result: json!({"ok": false, "declined": true,
                        "error": "the customer did not confirm in time; nothing was done"}),
                });
                self.next_tool(&node)
            }
            (Status::WaitingTimer { .. }, Input::TimerDue { node }) if *node == self.run.at => {
                self.emit(RunEvent::TimerFired { node: node.clone() });
                self.route(&node.clone(), "next")
            }
            (Status::NotStarted, _) => None,
            (_, Input::Context { vars }) => {
                // Field by field (`conversation.status`), so what the run's start added
                // beside them (`conversation.end_reason`) stays. Never secure metadata,
                // whatever the caller sent.
                let mut changed = Vec::new();
                for (key, value) in vars.as_object().into_iter().flatten() {
                    if key == "secure" {
                        continue;
                    }
                    match value.as_object() {
                        Some(fields) => {
                            for (field, value) in fields {
                                let path = format!("{key}.{field}");
                                if lookup(&self.run.vars, &path) != Some(value) {
                                    changed.push((path, value.clone()));
                                }
                            }
                        }
                        None if self.run.vars.get(key) != Some(value) => {
                            changed.push((key.clone(), value.clone()));
                        }
                        None => {}
                    }
                }
                for (variable, value) in changed {
                    self.emit(RunEvent::VariableSet { variable, value });
                }
                None
            }
            // Outcomes of old attempts, timers of other nodes, a second start: nothing.
            _ => None,
        };
        self.go(next);
    }

    /// Passes through nodes until the run waits or ends.
    fn go(&mut self, mut next: Option<String>) {
        while let Some(id) = next {
            self.steps += 1;
            if self.steps > STEP_LIMIT {
                return self.end("step_limit: the flow went round in circles");
            }
            next = self.enter(&id);
        }
    }

    /// The node after `node` by `port`, or the run ends saying why.
    fn route(&mut self, node: &str, port: &str) -> Option<String> {
        let next = self
            .graph
            .edges
            .iter()
            .find(|e| e.from == node && (e.port == port || (e.port.is_empty() && port == "next")))
            .map(|e| e.to.clone());
        if next.is_none() {
            self.end(format!("no `{port}` route from `{node}`"));
        }
        next
    }

    fn fail(&mut self, node: &str, error: &str) -> Option<String> {
        let has_route = self
            .graph
            .edges
            .iter()
            .any(|e| e.from == node && e.port == "failure");
        if has_route {
            self.route(node, "failure")
        } else {
            self.end(format!("failed at `{node}`: {error}"));
            None
        }
    }

    /// Variables without `secure`: what messages and session variables may read.
    fn open_vars(&self) -> Json {
        let mut vars = self.run.vars.clone();
        if let Some(map) = vars.as_object_mut() {
            map.remove("secure");
        }
        vars
    }

    /// Enters a node; returns the node to enter next, if the run goes straight on.
    fn enter(&mut self, id: &str) -> Option<String> {
        let Some(node) = self.nodes.get(id).copied() else {
            self.end(format!("no node `{id}` in the graph"));
            return None;
        };
        self.emit(RunEvent::Entered {
            node: id.to_owned(),
        });
        let Some(kind) = &node.kind else {
            self.end(format!("node `{id}` has no kind"));
            return None;
        };
        match kind {
            Kind::Start(_) => self.route(id, "next"),
            Kind::End(end) => {
                self.end(if end.reason.is_empty() {
                    "completed".to_owned()
                } else {
                    end.reason.clone()
                });
                None
            }
            Kind::SendMessage(m) => match self.render.text(&m.text, &self.open_vars()) {
                Ok(text) => {
                    let mut buttons = m.buttons.clone();
                    for button in &mut buttons {
                        if button.url.is_empty() {
                            continue;
                        }
                        match self.render.text(&button.url, &self.open_vars()) {
                            Ok(url) => button.url = url,
                            Err(e) => {
                                self.end(render_failure(id, e));
                                return None;
                            }
                        }
                    }
                    self.emit(RunEvent::MessageSent {
                        node: id.to_owned(),
                        text,
                        buttons,
                        form: m.form.clone(),
                    });
                    self.route(id, "next")
                }
                Err(e) => {
                    self.end(render_failure(id, e));
                    None
                }
            },
            Kind::SetVariable(s) => match self.render.text(&s.value, &self.open_vars()) {
                Ok(value) => {
                    self.emit(RunEvent::VariableSet {
                        variable: s.variable.clone(),
                        value: Json::String(value),
                    });
                    self.route(id, "next")
                }
                Err(e) => {
                    self.end(render_failure(id, e));
                    None
                }
            },
            Kind::Condition(c) => {
                let results: Vec<bool> = c.rules.iter().map(|r| self.holds(r)).collect();
                let result = if c.any {
                    results.iter().any(|r| *r)
                } else {
                    results.iter().all(|r| *r)
                };
                self.emit(RunEvent::ConditionEvaluated {
                    node: id.to_owned(),
                    result,
                });
                self.route(id, if result { "true" } else { "false" })
            }
            Kind::CaptureInput(_) => {
                self.emit(RunEvent::AwaitingInput {
                    node: id.to_owned(),
                });
                if self.run.queued.is_empty() {
                    None
                } else {
                    self.capture()
                }
            }
            Kind::Delay(delay) => {
                let due_at = self.now + (delay.seconds as i64) * 1_000_000;
                self.emit(RunEvent::TimerArmed {
                    node: id.to_owned(),
                    due_at,
                });
                None
            }
            Kind::ApiCall(a) => self.request(
                node,
                Effect::Action {
                    action_id: a.action_id.clone(),
                },
                &a.inputs.iter().collect(),
            ),
            Kind::CustomAction(a) => self.request(
                node,
                Effect::Action {
                    action_id: a.action_id.clone(),
                },
                &a.inputs.iter().collect(),
            ),
            Kind::UpdateConversation(u) => {
                let status_key = "status".to_owned();
                let prefixed: Vec<(String, &String)> = u
                    .set_metafields
                    .iter()
                    .map(|(k, v)| (format!("metafields.{k}"), v))
                    .collect();
                let mut fields: BTreeMap<&String, &String> = BTreeMap::new();
                if !u.status.is_empty() {
                    fields.insert(&status_key, &u.status);
                }
                for (k, v) in &prefixed {
                    fields.insert(k, v);
                }
                self.request(node, Effect::UpdateConversation, &fields)
            }
            Kind::Connexease(c) => self.request(
                node,
                Effect::Connexease {
                    operation: c.operation.clone(),
                },
                &c.arguments.iter().collect(),
            ),
            Kind::Agent(a) => {
                if a.wait_for_customer && self.run.queued.is_empty() {
                    self.emit(RunEvent::AwaitingInput {
                        node: id.to_owned(),
                    });
                    None
                } else {
                    self.agent_turn(id)
                }
            }
        }
    }

    /// Whether the run is at a capture node.
    fn at_capture(&self) -> bool {
        matches!(
            self.nodes
                .get(self.run.at.as_str())
                .and_then(|n| n.kind.as_ref()),
            Some(Kind::CaptureInput(_))
        )
    }

    /// A click on a button with an action: the action runs as the capture node's effect,
    /// with the button's value and label as its input.
    fn click(&mut self, button: &ButtonOption) -> Option<String> {
        let id = self.run.at.clone();
        let attempt = self.run.entered.get(&id).copied().unwrap_or(1);
        // Each click at this visit its own key (a re-ask may be answered by another).
        let key = format!(
            "{}/{id}/{attempt}/click{}",
            self.run.run_id,
            self.run.asks + 1
        );
        self.emit(RunEvent::EffectRequested {
            node: id,
            key,
            effect: Effect::Action {
                action_id: button.action_id.clone(),
            },
            inputs: BTreeMap::from([
                ("value".to_owned(), Json::String(button.value.clone())),
                ("label".to_owned(), Json::String(button.label.clone())),
            ]),
            sealed_inputs: BTreeMap::new(),
        });
        None
    }

    /// A clicked button's action has its outcome (recorded as the capture node's): the
    /// click is captured.
    fn clicked(&mut self, id: &str) -> Option<String> {
        self.emit(RunEvent::AwaitingInput {
            node: id.to_owned(),
        });
        self.capture()
    }

    /// Whether `node` has a route by `port`.
    fn wired(&self, node: &str, port: &str) -> bool {
        self.graph
            .edges
            .iter()
            .any(|e| e.from == node && (e.port == port || (e.port.is_empty() && port == "next")))
    }

    /// The call (an agent's) or effect key (a flow node's) the customer is asked to
    /// confirm, if the run waits for that.
    fn confirming(&self) -> Option<&str> {
        match &self.run.agent {
            Some(agent) => agent.confirming.as_deref(),
            None => self
                .run
                .node_confirming
                .as_ref()
                .map(|(key, _)| key.as_str()),
        }
    }

    /// A flow's own action node was refused for want of the customer's yes: the customer
    /// is asked (the node's inputs in words, Yes/No buttons naming the effect), and the
    /// run waits for the answer until the default confirmation timeout.
    fn ask_node_confirmation(&mut self, id: &str, key: &str) -> Option<String> {
        let templates = match self.nodes.get(id).copied().and_then(|n| n.kind.as_ref()) {
            Some(Kind::ApiCall(a)) => &a.inputs,
            Some(Kind::CustomAction(a)) => &a.inputs,
            _ => return self.fail(id, "the action needs the customer's confirmation"),
        };
        let vars = self.open_vars();
        let mut arguments = Map::new();
        let mut names: Vec<&String> = templates.keys().collect();
        names.sort();
        for name in names {
            let template = &templates[name];
            let secure = self.reads_secure(template);
            if let (false, Ok(value)) = (secure, self.render.text(template, &vars)) {
                arguments.insert(name.clone(), Json::String(value));
            }
        }
        let question = confirmation_question(&id.replace('_', " "), &arguments);
        self.ask_confirmation(id, key, key, question, CONFIRMATION_SECONDS_DEFAULT);
        None
    }

    /// Whether `template` reads the conversation's secure metadata (`secure.*`).
    fn reads_secure(&self, template: &str) -> bool {
        self.render
            .reads(template)
            .iter()
            .any(|v| v == "secure" || v.starts_with("secure."))
    }

    /// Asks the customer `question` with Yes/No buttons whose values name `key` (so a
    /// click on an older question's Yes is no yes to this one), and waits for the answer
    /// to `call_id` until `timeout_seconds` from now.
    fn ask_confirmation(
        &mut self,
        node: &str,
        key: &str,
        call_id: &str,
        question: String,
        timeout_seconds: u32,
    ) {
        let button = |label: &str, yes: bool| ButtonOption {
            label: label.into(),
            value: confirmation_value(key, yes),
            ..Default::default()
        };
        self.emit(RunEvent::MessageSent {
            node: node.to_owned(),
            text: question,
            buttons: vec![button("Yes", true), button("No", false)],
            form: Vec::new(),
        });
        self.emit(RunEvent::ConfirmationAsked {
            node: node.to_owned(),
            call_id: call_id.to_owned(),
            asked_at: self.now,
            due_at: self.now + i64::from(timeout_seconds) * 1_000_000,
        });
    }

    /// The customer's answer to a flow node's confirmation: a yes runs the action again,
    /// confirmed (under a key of its own); anything else takes the `declined` route, or
    /// the failure route when there is none.
    fn answer_node_confirmation(
        &mut self,
        key: &str,
        message_id: &str,
        text: &str,
        clicked: bool,
    ) -> Option<String> {
        let id = self.run.at.clone();
        let yes = confirms(key, text, clicked);
        self.emit(RunEvent::ConfirmationAnswered {
            node: id.clone(),
            call_id: key.to_owned(),
            yes,
            message_id: message_id.to_owned(),
            text: text.to_owned(),
        });
        if !yes {
            return self.declined(&id, "the customer declined; nothing was done");
        }
        let Some(node) = self.nodes.get(id.as_str()).copied() else {
            return self.fail(&id, "no such node");
        };
        let (action_id, templates) = match node.kind.as_ref() {
            Some(Kind::ApiCall(a)) => (&a.action_id, &a.inputs),
            Some(Kind::CustomAction(a)) => (&a.action_id, &a.inputs),
            _ => return self.fail(&id, "the action needs the customer's confirmation"),
        };
        let effect = Effect::Action {
            action_id: action_id.clone(),
        };
        self.request_as(
            node,
            effect,
            &templates.iter().collect(),
            Some(confirmed_key(key)),
        )
    }

    /// A declined confirmation at a flow's node: its `declined` route when wired, else its
    /// failure route.
    fn declined(&mut self, id: &str, why: &str) -> Option<String> {
        self.emit(RunEvent::VariableSet {
            variable: format!("nodes.{id}.declined"),
            value: Json::Bool(true),
        });
        if self.wired(id, "declined") {
            self.route(id, "declined")
        } else {
            self.fail(id, why)
        }
    }

    fn agent_node(&self, id: &str) -> Option<&'g AgentNode> {
        match self.nodes.get(id)?.kind.as_ref()? {
            Kind::Agent(a) => Some(a),
            _ => None,
        }
    }

    /// The start of an agent's turn, taking the messages that waited: ask the model.
    fn agent_turn(&mut self, id: &str) -> Option<String> {
        let heard = self.run.queued.iter().cloned().collect();
        self.emit(RunEvent::AgentTurnStarted {
            node: id.to_owned(),
            heard,
        });
        self.ask_model(id)
    }

    /// The effect key of the agent's next step: run, node, attempt, turn and step.
    fn agent_key(&self, id: &str, step: &str) -> String {
        let attempt = self.run.entered.get(id).copied().unwrap_or(1);
        let turn = self.run.agent.as_ref().map_or(0, |a| a.turn);
        format!("{}/{id}/{attempt}/{turn}.{step}", self.run.run_id)
    }

    /// Asks the model for the turn's next step, within the node's rounds.
    fn ask_model(&mut self, id: &str) -> Option<String> {
        let Some(agent) = self.agent_node(id) else {
            return self.fail(id, "not an agent node");
        };
        let rounds = match agent.max_rounds {
            0 => AGENT_ROUNDS_DEFAULT,
            n => n.min(AGENT_ROUNDS_MAX),
        };
        let done = self.run.agent.as_ref().map_or(0, |a| a.rounds);
        if done >= rounds {
            return self.fail(
                id,
                &format!("agent_round_limit: {rounds} model calls at `{id}` gave no answer"),
            );
        }
        let instructions = match self.render.text(&agent.instructions, &self.open_vars()) {
            Ok(text) => text,
            Err(e) => return self.fail(id, &render_failure(id, e)),
        };
        let inputs = BTreeMap::from([
            ("instructions".to_owned(), Json::String(instructions)),
            (
                "provider_id".to_owned(),
                Json::String(agent.provider_id.clone()),
            ),
            (
                "handover".to_owned(),
                Json::Bool(self.wired(id, "handover")),
            ),
        ]);
        let key = self.agent_key(id, &format!("m{}", done + 1));
        self.emit(RunEvent::EffectRequested {
            node: id.to_owned(),
            key,
            effect: Effect::Model,
            inputs,
            sealed_inputs: BTreeMap::new(),
        });
        None
    }

    /// An outcome at an agent node: a tool's (on to the next call) or the model's.
    fn agent_outcome(
        &mut self,
        id: &str,
        key: &str,
        success: bool,
        outputs: &Json,
        error: &str,
    ) -> Option<String> {
        let tool = self
            .run
            .agent
            .as_ref()
            .is_some_and(|a| a.calls.iter().any(|c| c.key == key));
        if tool {
            return self.next_tool(id);
        }
        if !success {
            return self.fail(id, error);
        }
        let calls = outputs["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(handover) = calls
            .iter()
            .find(|c| c["name"] == HANDOVER_TOOL && c["action_id"] == "" && c["workflow_id"] == "")
            && self.wired(id, "handover")
        {
            let reason = serde_json::from_str::<Json>(handover["arguments"].as_str().unwrap_or(""))
                .ok()
                .and_then(|a| a["reason"].as_str().map(str::to_owned))
                .unwrap_or_default();
            self.emit(RunEvent::VariableSet {
                variable: format!("nodes.{id}.handover_reason"),
                value: Json::String(reason),
            });
            return self.route(id, "handover");
        }
        if !calls.is_empty() {
            let round = self.run.agent.as_ref().map_or(0, |a| a.rounds);
            for call in calls.iter().take(AGENT_CALLS_PER_ROUND) {
                let index = self.run.agent.as_ref().map_or(0, |a| a.calls.len()) + 1;
                let text = |field: &str| call[field].as_str().unwrap_or_default().to_owned();
                let arguments = text("arguments");
                // Calls are told apart by id: one the model left out or used before in
                // this turn (some servers number from call_0 each answer) is made unique.
                let taken = |d: &Self, id: &str| {
                    id.is_empty()
                        || d.run
                            .agent
                            .as_ref()
                            .is_some_and(|a| a.calls.iter().any(|c| c.call_id == id))
                };
                let mut call_id = text("id");
                let mut n = index;
                while taken(self, &call_id) {
                    call_id = format!("call_{n}");
                    n += 1;
                }
                let call = AgentCall {
                    call_id,
                    name: text("name"),
                    arguments: serde_json::from_str::<Json>(&arguments)
                        .ok()
                        .filter(Json::is_object)
                        .unwrap_or(Json::String(arguments)),
                    action_id: text("action_id"),
                    workflow_id: text("workflow_id"),
                    confirmation_required: call["confirmation_required"] == true,
                    key: self.agent_key(id, &format!("t{index}")),
                    round,
                    confirmed_by: None,
                    result: None,
                };
                self.emit(RunEvent::ToolCalled {
                    node: id.to_owned(),
                    call,
                });
            }
            return self.next_tool(id);
        }
        let answer = outputs["content"].as_str().unwrap_or_default().trim();
        if answer.is_empty() {
            return self.fail(id, "the model answered nothing");
        }
        self.emit(RunEvent::MessageSent {
            node: id.to_owned(),
            text: answer.to_owned(),
            buttons: Vec::new(),
            form: Vec::new(),
        });
        if self.wired(id, "next") {
            self.route(id, "next")
        } else if !self.run.queued.is_empty() {
            self.agent_turn(id)
        } else {
            self.emit(RunEvent::AwaitingInput {
                node: id.to_owned(),
            });
            None
        }
    }

    /// Runs the turn's next call without a result (asking first when it needs the
    /// customer's yes); with every call answered, the model again.
    fn next_tool(&mut self, id: &str) -> Option<String> {
        // Each pass answers one call, so this ends; the bound says so.
        let calls = self.run.agent.as_ref().map_or(0, |a| a.calls.len());
        for _ in 0..=calls {
            let pending = self
                .run
                .agent
                .as_ref()
                .and_then(|a| a.calls.iter().find(|c| c.result.is_none()))
                .cloned();
            let Some(call) = pending else {
                return self.ask_model(id);
            };
            let stand_in = |d: &mut Self, error: String| {
                d.emit(RunEvent::ToolResult {
                    node: id.to_owned(),
                    call_id: call.call_id.clone(),
                    result: json!({"ok": false, "error": error}),
                });
            };
            let effect = if !call.action_id.is_empty() {
                Effect::Action {
                    action_id: call.action_id.clone(),
                }
            } else if !call.workflow_id.is_empty() {
                Effect::Workflow {
                    workflow_id: call.workflow_id.clone(),
                }
            } else {
                stand_in(self, format!("there is no tool named `{}`", call.name));
                continue;
            };
            let Some(arguments) = call.arguments.as_object() else {
                stand_in(self, "the arguments are not a JSON object".into());
                continue;
            };
            if call.confirmation_required && call.confirmed_by.is_none() {
                let timeout = match self
                    .agent_node(id)
                    .map_or(0, |a| a.confirmation_timeout_seconds)
                {
                    0 => CONFIRMATION_SECONDS_DEFAULT,
                    s => s.min(CONFIRMATION_SECONDS_MAX),
                };
                let question = confirmation_question(&call.name, arguments);
                self.ask_confirmation(id, &call.key, &call.call_id, question, timeout);
                return None;
            }
            // The node's sealed inputs go to actions (rendered there from secure
            // metadata); a workflow takes only what the model gave.
            let sealed_inputs = match (&effect, self.agent_node(id)) {
                (Effect::Action { .. }, Some(agent)) => agent
                    .sealed_inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                _ => BTreeMap::new(),
            };
            let inputs = arguments
                .iter()
                .filter(|(k, _)| !sealed_inputs.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.emit(RunEvent::EffectRequested {
                node: id.to_owned(),
                key: call.key.clone(),
                effect,
                inputs,
                sealed_inputs,
            });
            return None;
        }
        self.fail(id, "the agent's tool calls could not be settled")
    }

    /// The customer's answer to a confirmation: a yes runs the call, anything else
    /// declines it (the model is told what the customer said).
    fn answer_confirmation(
        &mut self,
        call_id: &str,
        message_id: &str,
        text: &str,
        clicked: bool,
    ) -> Option<String> {
        let id = self.run.at.clone();
        let key = self
            .run
            .agent
            .as_ref()
            .and_then(|a| a.calls.iter().find(|c| c.call_id == call_id))
            .map(|c| c.key.clone())
            .unwrap_or_default();
        let yes = confirms(&key, text, clicked);
        self.emit(RunEvent::ConfirmationAnswered {
            node: id.clone(),
            call_id: call_id.to_owned(),
            yes,
            message_id: message_id.to_owned(),
            text: text.to_owned(),
        });
        if !yes {
            self.emit(RunEvent::ToolResult {
                node: id.clone(),
                call_id: call_id.to_owned(),
                result: json!({"ok": false, "declined": true, "customer_said": text,
                    "error": "the customer declined; nothing was done"}),
            });
        }
        self.next_tool(&id)
    }

    /// Renders an acting node's inputs and asks for its effect; a missing variable takes
    /// the failure route with reason `missing_variable`.
    fn request(
        &mut self,
        node: &Node,
        effect: Effect,
        templates: &BTreeMap<&String, &String>,
    ) -> Option<String> {
        self.request_as(node, effect, templates, None)
    }

    /// [`Decider::request`] under `key` when given (a confirmed second request), else the
    /// node's attempt key.
    fn request_as(
        &mut self,
        node: &Node,
        effect: Effect,
        templates: &BTreeMap<&String, &String>,
        key: Option<String>,
    ) -> Option<String> {
        let id = node.id.clone();
        let attempt = self.run.entered.get(&id).copied().unwrap_or(1);
        let key = key.unwrap_or_else(|| format!("{}/{}/{}", self.run.run_id, id, attempt));
        let mut inputs = BTreeMap::new();
        let mut sealed_inputs = BTreeMap::new();
        for (name, template) in templates {
            let reads_secure = self.reads_secure(template);
            if reads_secure {
                sealed_inputs.insert((*name).clone(), (*template).clone());
                continue;
            }
            match self.render.text(template, &self.run.vars) {
                Ok(value) => {
                    inputs.insert((*name).clone(), Json::String(value));
                }
                Err(e) => {
                    let error = render_failure(&id, e);
                    self.emit(RunEvent::EffectCompleted {
                        node: id.clone(),
                        key,
                        success: false,
                        outputs: json!({}),
                        error: error.clone(),
                    });
                    return self.fail(&id, &error);
                }
            }
        }
        self.emit(RunEvent::EffectRequested {
            node: id,
            key,
            effect,
            inputs,
            sealed_inputs,
        });
        None
    }

    /// The run waits at a capture node with a queued message: validate it. Returns the
    /// node to go on to, if the message settled the capture.
    fn capture(&mut self) -> Option<String> {
        loop {
            let text = self.run.queued.front().cloned()?;
            let id = self.run.at.clone();
            let c = match self.nodes.get(id.as_str()).and_then(|n| n.kind.as_ref()) {
                Some(Kind::CaptureInput(c)) => c,
                // The agent answers every message that waited, in one turn.
                Some(Kind::Agent(_)) => return self.agent_turn(&id),
                _ => return None,
            };
            let c = c.clone();
            if valid_input(&c.validation, &c.pattern, &text) {
                let form = (c.validation == "form")
                    .then(|| form_values(&text))
                    .flatten();
                self.emit(RunEvent::Captured {
                    node: id.clone(),
                    variable: c.variable.clone(),
                    value: text,
                });
                if let Some(values) = form {
                    self.emit(RunEvent::VariableSet {
                        variable: c.variable.clone(),
                        value: values,
                    });
                }
                return self.route(&id, "next");
            }
            let max = if c.max_attempts == 0 {
                3
            } else {
                c.max_attempts
            };
            if self.run.asks + 1 >= max {
                // Asks ran out: the message goes to the `invalid` route (or the end).
                self.emit(RunEvent::InputRejected { node: id.clone() });
                let has_invalid = self
                    .graph
                    .edges
                    .iter()
                    .any(|e| e.from == id && e.port == "invalid");
                if has_invalid {
                    return self.route(&id, "invalid");
                }
                self.end(format!("invalid_input at `{id}`"));
                return None;
            }
            let reask = if c.reask_text.is_empty() {
                "Sorry, I did not get that. Could you say it again?".to_owned()
            } else {
                self.render
                    .text(&c.reask_text, &self.open_vars())
                    .unwrap_or_else(|_| c.reask_text.clone())
            };
            self.emit(RunEvent::Reasked {
                node: id,
                text: reask,
            });
            // Another queued message answers the re-ask.
        }
    }

    fn holds(&self, rule: &Rule) -> bool {
        let value = lookup(&self.run.vars, &rule.variable);
        let operator = Operator::try_from(rule.operator).unwrap_or(Operator::Unspecified);
        if operator == Operator::Exists {
            return value.is_some_and(|v| !v.is_null() && v != &Json::String(String::new()));
        }
        // A missing variable matches nothing (the rule is false).
        let Some(value) = value else {
            return false;
        };
        let actual = match value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let expected = self
            .render
            .text(&rule.value, &self.open_vars())
            .unwrap_or_default();
        let numbers = || {
            Some((
                actual.trim().parse::<f64>().ok()?,
                expected.trim().parse::<f64>().ok()?,
            ))
        };
        match operator {
            Operator::Equals => actual == expected,
            Operator::NotEquals => actual != expected,
            Operator::Contains => actual.contains(&expected),
            Operator::Regex => regex::Regex::new(&rule.value).is_ok_and(|r| r.is_match(&actual)),
            Operator::GreaterThan => numbers().is_some_and(|(a, b)| a > b),
            Operator::GreaterOrEqual => numbers().is_some_and(|(a, b)| a >= b),
            Operator::LessThan => numbers().is_some_and(|(a, b)| a < b),
            Operator::LessOrEqual => numbers().is_some_and(|(a, b)| a <= b),
            Operator::Exists | Operator::Unspecified => false,
        }
    }
}

fn render_failure(node: &str, e: RenderError) -> String {
    match e {
        RenderError::Missing(name) => format!("missing_variable: `{name}` at `{node}`"),
        RenderError::Other(reason) => format!("render_failed at `{node}`: {reason}"),
    }
}

/// The question an action that needs the customer's yes is asked with: the action and
/// its inputs in words.
fn confirmation_question(name: &str, arguments: &Map<String, Json>) -> String {
    let words = |s: &str| s.replace(['_', '-'], " ");
    let inputs: Vec<String> = arguments
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}: {v}", words(k))
        })
        .collect();
    if inputs.is_empty() {
        format!("Shall I go ahead and {}?", words(name))
    } else {
        format!(
            "Shall I go ahead and {} ({})?",
            words(name),
            inputs.join(", ")
        )
    }
}

/// The key a flow node's effect runs under once the customer confirmed the refused `key`.
pub fn confirmed_key(key: &str) -> String {
    format!("{key}.yes")
}

/// The value a confirmation's Yes or No button sends back for the call `key`.
fn confirmation_value(key: &str, yes: bool) -> String {
    format!("{}:{key}", if yes { "yes" } else { "no" })
}

/// Whether a reply to the confirmation of `key` says yes: a click on its Yes button, or
/// typed words for yes.
fn confirms(key: &str, text: &str, clicked: bool) -> bool {
    if clicked {
        text == confirmation_value(key, true)
    } else {
        is_yes(text)
    }
}

/// Whether a reply to a confirmation is a yes (a button's `yes` or the words for it).
fn is_yes(text: &str) -> bool {
    let said = text
        .trim()
        .trim_end_matches(['.', '!'])
        .trim()
        .to_lowercase();
    const YES: &[&str] = &[
        "yes",
        "y",
        "yeah",
        "yep",
        "sure",
        "ok",
        "okay",
        "confirm",
        "confirmed",
        "go ahead",
        "please do",
        "do it",
        "yes please",
        "evet",
        "tamam",
    ];
    YES.contains(&said.as_str())
}

fn valid_input(validation: &str, pattern: &str, text: &str) -> bool {
    let text = text.trim();
    match validation {
        "" | "none" => !text.is_empty(),
        "email" => email_address::EmailAddress::is_valid(text),
        "phone" => {
            let digits = text.chars().filter(char::is_ascii_digit).count();
            (6..=15).contains(&digits)
                && text
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-()".contains(c))
        }
        "number" => text.parse::<f64>().is_ok_and(f64::is_finite),
        "regex" => regex::Regex::new(pattern).is_ok_and(|r| r.is_match(text)),
        "form" => form_values(text).is_some(),
        _ => false,
    }
}

/// A form submission as it reaches a run: a JSON object of text fields (see
/// [`form_message`]); anything else is not a form.
fn form_values(text: &str) -> Option<Json> {
    let value: Json = serde_json::from_str(text).ok()?;
    let fields = value.as_object()?;
    (!fields.is_empty() && fields.values().all(Json::is_string)).then_some(value)
}

/// How a form submission is handed to a run: its values as one JSON object, keys sorted
/// (so the same submission is always the same text).
pub fn form_message(values: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = values.iter().collect();
    serde_json::to_string(&sorted).unwrap_or_default()
}

fn lookup<'v>(vars: &'v Json, path: &str) -> Option<&'v Json> {
    path.split('.').try_fold(vars, |v, key| v.get(key))
}

fn set_path(vars: &mut Json, path: &str, value: Json) {
    let mut current = vars;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, key) in parts.iter().enumerate() {
        if !current.is_object() {
            *current = Json::Object(Map::new());
        }
        let map = current.as_object_mut().expect("made an object above");
        if i == parts.len() - 1 {
            map.insert((*key).to_owned(), value);
            return;
        }
        current = map.entry((*key).to_owned()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use switchboard_proto::flows::v1::*;

    use super::*;
    use crate::domain::tests::{edge, look_up_and_act, node};

    const NOW: i64 = 1_767_225_600_000_000;

    fn renderer() -> switchboard_template::Renderer {
        switchboard_template::Renderer::new(Default::default())
    }

    /// Feeds inputs one by one, folding each decision, and returns every event.
    fn drive(graph: &Graph, inputs: &[Input]) -> (Run, Vec<RunEvent>) {
        let r = renderer();
        let mut run = Run::default();
        let mut all = Vec::new();
        for input in inputs {
            for event in decide(graph, &run, input, NOW, &r) {
                run.apply(&event);
                all.push(event);
            }
        }
        (run, all)
    }

    fn start() -> Input {
        Input::Start {
            run_id: "run_1".into(),
            context: json!({"conversation": {"id": "conv_1"}, "secure": {"token": "s3cret"}}),
        }
    }

    fn say(text: &str) -> Input {
        Input::Message {
            text: text.into(),
            sentiment: String::new(),
            message_id: "msg_1".into(),
            clicked: false,
            sent_at: 0,
        }
    }

    fn done(key: &str, success: bool, outputs: Json) -> Input {
        Input::EffectDone {
            key: key.into(),
            success,
            outputs,
            error: if success {
                String::new()
            } else {
                "HTTP 503".into()
            },
            needs_confirmation: false,
        }
    }

    fn sent(events: &[RunEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                RunEvent::MessageSent { text, .. } | RunEvent::Reasked { text, .. } => {
                    Some(text.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn requested(events: &[RunEvent]) -> Vec<(String, Effect, BTreeMap<String, Json>)> {
        events
            .iter()
            .filter_map(|e| match e {
                RunEvent::EffectRequested {
                    key,
                    effect,
                    inputs,
                    ..
                } => Some((key.clone(), effect.clone(), inputs.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn look_up_and_act_succeeds_then_resolves() {
        let graph = look_up_and_act();
        let (run, events) = drive(
            &graph,
            &[
                start(),
                say("12345"),
                done("run_1/lookup/1", true, json!({"status": "shipped"})),
                done("run_1/resolve/1", true, json!({})),
            ],
        );
        assert_eq!(
            sent(&events),
            ["What is your order number?", "Your order is shipped."]
        );
        let effects = requested(&events);
        assert_eq!(effects[0].0, "run_1/lookup/1");
        assert_eq!(effects[0].2["order"], json!("12345"));
        assert_eq!(effects[1].1, Effect::UpdateConversation);
        assert_eq!(effects[1].2["status"], json!("resolved"));
        assert_eq!(
            run.status,
            Status::Ended {
                reason: "completed".into()
            }
        );
        assert_eq!(run.vars["session"]["order_number"], "12345");
    }

    #[test]
    fn look_up_and_act_fails_over_to_a_teammate() {
        let graph = look_up_and_act();
        let (run, events) = drive(
            &graph,
            &[
                start(),
                say("12345"),
                done("run_1/lookup/1", false, json!({})),
                done("run_1/handover/1", true, json!({})),
            ],
        );
        assert_eq!(
            sent(&events)[1],
            "I'm having trouble reaching that right now, let me get a teammate"
        );
        let effects = requested(&events);
        assert_eq!(
            effects[1].1,
            Effect::Connexease {
                operation: "assign_group".into()
            }
        );
        assert_eq!(effects[1].2["group"], json!("support"));
        assert!(matches!(run.status, Status::Ended { .. }));
    }

    #[test]
    fn bad_input_is_reasked_then_takes_the_invalid_route() {
        let graph = look_up_and_act();
        // Three asks in all: the question and two re-asks.
        let (run, events) = drive(&graph, &[start(), say("no idea"), say("abc")]);
        assert_eq!(
            sent(&events)[1..],
            [
                "That does not look like an order number.",
                "That does not look like an order number."
            ]
        );
        assert_eq!(run.status, Status::WaitingInput);
        let (_, events) = drive(&graph, &[start(), say("a"), say("b"), say("c")]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, RunEvent::InputRejected { node } if node == "capture"))
        );
        assert_eq!(
            sent(&events).last().unwrap(),
            "I'm having trouble reaching that right now, let me get a teammate"
        );
    }

    #[test]
    fn messages_that_arrive_early_wait_their_turn_in_order() {
        // Two messages before the run reaches the capture: the first is captured, the
        // second is still queued afterwards.
        let graph = look_up_and_act();
        let r = renderer();
        let mut run = Run::default();
        for event in decide(&graph, &run, &start(), NOW, &r) {
            run.apply(&event);
        }
        // Waiting at the capture already; answer while an effect is pending elsewhere is
        // modelled by queueing: send two at once.
        for input in [say("777777"), say("and another thing")] {
            for event in decide(&graph, &run, &input, NOW, &r) {
                run.apply(&event);
            }
        }
        assert_eq!(run.vars["session"]["order_number"], "777777");
        assert_eq!(run.queued, ["and another thing"]);
        assert!(matches!(run.status, Status::WaitingEffect { .. }));
    }

    #[test]
    fn delays_arm_a_timer_and_fire_once() {
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node("wait", node::Kind::Delay(Delay { seconds: 86_400 })),
                node(
                    "follow_up",
                    node::Kind::SendMessage(SendMessage {
                        text: "How did it go?".into(),
                        ..Default::default()
                    }),
                ),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "wait", ""),
                edge("wait", "follow_up", ""),
                edge("follow_up", "end", ""),
            ],
            ..Default::default()
        };
        let (run, events) = drive(&graph, &[start()]);
        assert_eq!(
            run.status,
            Status::WaitingTimer {
                due_at: NOW + 86_400_000_000
            }
        );
        assert!(sent(&events).is_empty());
        let (run, events) = drive(
            &graph,
            &[
                start(),
                Input::TimerDue {
                    node: "elsewhere".into(),
                },
                Input::TimerDue {
                    node: "wait".into(),
                },
                Input::TimerDue {
                    node: "wait".into(),
                },
            ],
        );
        assert_eq!(sent(&events), ["How did it go?"], "fired once");
        assert!(matches!(run.status, Status::Ended { .. }));
    }

    #[test]
    fn missing_variables_end_or_fail_with_a_reason_never_panic() {
        let mut graph = look_up_and_act();
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
            m.text = "Hello {{ lead.name }}".into();
        }
        let (run, _) = drive(&graph, &[start()]);
        assert_eq!(
            run.status,
            Status::Ended {
                reason: "missing_variable: `lead.name` at `ask`".into()
            }
        );
        // An acting node's missing input takes its failure route, with the reason.
        let mut graph = look_up_and_act();
        if let Some(node::Kind::ApiCall(a)) = &mut graph.nodes[3].kind {
            a.inputs.insert("email".into(), "{{ lead.email }}".into());
        }
        let (run, events) = drive(&graph, &[start(), say("12345")]);
        assert!(
            events.iter().any(|e| matches!(
                e,
                RunEvent::EffectCompleted { success: false, error, .. } if error.contains("missing_variable")
            )),
            "{events:#?}"
        );
        assert_eq!(run.at, "handover", "the failure route was taken");
    }

    #[test]
    fn secure_values_never_enter_an_event_or_a_message() {
        let mut graph = look_up_and_act();
        if let Some(node::Kind::ApiCall(a)) = &mut graph.nodes[3].kind {
            a.inputs
                .insert("token".into(), "Bearer {{ secure.token }}".into());
        }
        let (_, events) = drive(&graph, &[start(), say("12345")]);
        let everything = format!("{events:?}");
        assert!(!everything.contains("s3cret"), "{everything}");
        let sealed = events
            .iter()
            .find_map(|e| match e {
                RunEvent::EffectRequested { sealed_inputs, .. } => Some(sealed_inputs.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(sealed["token"], "Bearer {{ secure.token }}");
        // A message cannot show it: secure metadata is not among a message's variables.
        let mut graph = look_up_and_act();
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
            m.text = "Token: {{ secure.token }}".into();
        }
        let (run, events) = drive(&graph, &[start()]);
        assert!(!format!("{events:?}").contains("s3cret"));
        assert!(
            matches!(&run.status, Status::Ended { reason } if reason.starts_with("missing_variable")),
            "{:?}",
            run.status
        );
    }

    #[test]
    fn an_effect_without_an_outcome_by_its_deadline_takes_the_failure_route() {
        let graph = look_up_and_act();
        let deadline = Input::TimerDue {
            node: "lookup".into(),
        };
        let (run, events) = drive(
            &graph,
            &[
                start(),
                say("12345"),
                deadline.clone(),
                done("run_1/handover/1", true, json!({})),
            ],
        );
        assert_eq!(
            sent(&events).last().unwrap(),
            "I'm having trouble reaching that right now, let me get a teammate"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            RunEvent::EffectCompleted { key, success: false, error, .. }
                if key == "run_1/lookup/1" && error.starts_with("effect_timeout")
        )));
        assert_eq!(
            run.status,
            Status::Ended {
                reason: "completed".into()
            }
        );
        // The outcome arriving after all changes nothing; nor does a deadline for a node
        // the run has left.
        let late = done("run_1/lookup/1", true, json!({"status": "shipped"}));
        let r = renderer();
        assert!(decide(&graph, &run, &late, NOW, &r).is_empty());
        let (waiting, _) = drive(&graph, &[start(), say("12345")]);
        let elsewhere = Input::TimerDue {
            node: "capture".into(),
        };
        assert!(decide(&graph, &waiting, &elsewhere, NOW, &r).is_empty());
    }

    #[test]
    fn the_sentiment_of_the_latest_message_is_a_variable_conditions_read() {
        let say_node = |id: &str, text: &str| {
            node(
                id,
                node::Kind::SendMessage(SendMessage {
                    text: text.into(),
                    ..Default::default()
                }),
            )
        };
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                say_node("ask", "How was it?"),
                node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.review".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "upset",
                    node::Kind::Condition(Condition {
                        rules: vec![Rule {
                            variable: "message.sentiment".into(),
                            operator: Operator::Equals as i32,
                            value: "negative".into(),
                        }],
                        any: false,
                    }),
                ),
                say_node("sorry", "Sorry to hear that; a teammate will call you."),
                say_node("glad", "Glad to hear it!"),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "ask", ""),
                edge("ask", "capture", ""),
                edge("capture", "upset", ""),
                edge("upset", "sorry", "true"),
                edge("upset", "glad", "false"),
                edge("sorry", "end", ""),
                edge("glad", "end", ""),
            ],
            ..Default::default()
        };
        let message = |sentiment: &str| Input::Message {
            text: "It was late again.".into(),
            sentiment: sentiment.into(),
            message_id: "msg_1".into(),
            clicked: false,
            sent_at: 0,
        };
        let (run, events) = drive(&graph, &[start(), message("negative")]);
        assert_eq!(
            sent(&events)[1],
            "Sorry to hear that; a teammate will call you."
        );
        assert_eq!(run.vars["message"]["sentiment"], "negative");
        let (_, events) = drive(&graph, &[start(), message("")]);
        assert_eq!(sent(&events)[1], "Glad to hear it!");
    }

    #[test]
    fn a_form_is_captured_as_an_object_and_a_plain_message_is_reasked() {
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "contact",
                    node::Kind::SendMessage(SendMessage {
                        text: "How can we reach you?".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.contact".into(),
                        validation: "form".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "thanks",
                    node::Kind::SendMessage(SendMessage {
                        text: "We will write to {{ session.contact.email }}.".into(),
                        ..Default::default()
                    }),
                ),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "contact", ""),
                edge("contact", "capture", ""),
                edge("capture", "thanks", ""),
                edge("thanks", "end", ""),
            ],
            ..Default::default()
        };
        let form = form_message(&HashMap::from([
            ("name".to_owned(), "Ada".to_owned()),
            ("email".to_owned(), "ada@example.com".to_owned()),
        ]));
        assert_eq!(form, r#"{"email":"ada@example.com","name":"Ada"}"#);
        let (run, events) = drive(&graph, &[start(), say("ada@example.com"), say(&form)]);
        assert_eq!(
            sent(&events),
            [
                "How can we reach you?",
                "Sorry, I did not get that. Could you say it again?",
                "We will write to ada@example.com."
            ]
        );
        assert_eq!(
            run.vars["session"]["contact"],
            json!({"email": "ada@example.com", "name": "Ada"})
        );
        assert_eq!(Run::fold(&events), run);
    }

    #[test]
    fn conditions_compare_text_numbers_patterns_and_presence() {
        let vars = json!({"session": {"total": "120", "email": "ada@example.com", "empty": ""}});
        let d = Decider {
            graph: &Graph::default(),
            render: &renderer(),
            now: NOW,
            run: Run {
                vars,
                ..Default::default()
            },
            out: vec![],
            steps: 0,
            nodes: HashMap::new(),
        };
        let rule = |variable: &str, operator: Operator, value: &str| Rule {
            variable: variable.into(),
            operator: operator as i32,
            value: value.into(),
        };
        assert!(d.holds(&rule("session.total", Operator::GreaterThan, "100")));
        assert!(!d.holds(&rule("session.total", Operator::LessThan, "100")));
        assert!(d.holds(&rule("session.email", Operator::Contains, "@example")));
        assert!(d.holds(&rule("session.email", Operator::Regex, "^[a-z]+@")));
        assert!(d.holds(&rule("session.total", Operator::Equals, "120")));
        assert!(d.holds(&rule("session.email", Operator::Exists, "")));
        assert!(!d.holds(&rule("session.empty", Operator::Exists, "")));
        assert!(!d.holds(&rule("session.nothing", Operator::Equals, "x")));
        assert!(!d.holds(&rule("session.email", Operator::GreaterThan, "1")));
    }

    #[test]
    fn loops_stop_at_the_step_limit() {
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "a",
                    node::Kind::SetVariable(SetVariable {
                        variable: "session.x".into(),
                        value: "1".into(),
                    }),
                ),
                node(
                    "b",
                    node::Kind::SetVariable(SetVariable {
                        variable: "session.y".into(),
                        value: "2".into(),
                    }),
                ),
            ],
            edges: vec![
                edge("start", "a", ""),
                edge("a", "b", ""),
                edge("b", "a", ""),
            ],
            ..Default::default()
        };
        let (run, _) = drive(&graph, &[start()]);
        assert!(
            matches!(&run.status, Status::Ended { reason } if reason.starts_with("step_limit")),
            "{:?}",
            run.status
        );
    }

    #[test]
    fn the_same_graph_and_events_give_the_same_state() {
        let graph = look_up_and_act();
        let inputs = [
            start(),
            say("bad"),
            say("12345"),
            done("run_1/lookup/9", true, json!({})), // a stale key: ignored
            done("run_1/lookup/1", true, json!({"status": "packed"})),
        ];
        let (run, events) = drive(&graph, &inputs);
        assert_eq!(Run::fold(&events), run, "the state is a fold of the events");
        let (again, events_again) = drive(&graph, &inputs);
        assert_eq!(
            (again, events_again),
            (run, events),
            "decisions are deterministic"
        );
    }

    /// start → agent (keeps the conversation), with `failure` and `handover` routes.
    fn agent_graph(next: bool) -> Graph {
        let say_node = |id: &str, text: &str| {
            node(
                id,
                node::Kind::SendMessage(SendMessage {
                    text: text.into(),
                    ..Default::default()
                }),
            )
        };
        let mut graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "agent",
                    node::Kind::Agent(AgentNode {
                        instructions: "Help with orders of {{ conversation.id }}.".into(),
                        max_rounds: 3,
                        ..Default::default()
                    }),
                ),
                say_node("sorry", "A teammate will take over."),
                say_node("human", "Passing you to a person."),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "agent", ""),
                edge("agent", "sorry", "failure"),
                edge("agent", "human", "handover"),
                edge("sorry", "end", ""),
                edge("human", "end", ""),
            ],
            ..Default::default()
        };
        if next {
            graph.edges.push(edge("agent", "end", "next"));
        }
        graph
    }

    fn model_text(key: &str, text: &str) -> Input {
        done(key, true, json!({"content": text, "tool_calls": []}))
    }

    fn model_calls(key: &str, calls: &[(&str, &str, Json, bool)]) -> Input {
        let calls: Vec<Json> = calls
            .iter()
            .map(|(id, name, args, confirm)| {
                let known = *name != "made_up" && *name != "handover";
                json!({"id": id, "name": name, "arguments": args.to_string(),
                       "action_id": if known { format!("act_{name}") } else { String::new() },
                       "workflow_id": "", "confirmation_required": confirm})
            })
            .collect();
        done(key, true, json!({"content": "", "tool_calls": calls}))
    }

    fn last_request(events: &[RunEvent]) -> (String, Effect, BTreeMap<String, Json>) {
        requested(events).pop().expect("an effect was requested")
    }

    #[test]
    fn an_agent_looks_up_answers_and_keeps_the_conversation() {
        let graph = agent_graph(false);
        let (run, events) = drive(&graph, &[start()]);
        let (key, effect, inputs) = last_request(&events);
        assert_eq!(
            (key.as_str(), effect),
            ("run_1/agent/1/1.m1", Effect::Model)
        );
        assert_eq!(inputs["instructions"], "Help with orders of conv_1.");
        assert_eq!(inputs["handover"], true);
        assert!(matches!(run.status, Status::WaitingEffect { .. }));

        let lookup = model_calls(
            "run_1/agent/1/1.m1",
            &[(
                "call_a",
                "order_status",
                json!({"order_number": "12345"}),
                false,
            )],
        );
        let shipped = done("run_1/agent/1/1.t1", true, json!({"status": "shipped"}));
        let answer = model_text("run_1/agent/1/1.m2", "Your order 12345 has shipped.");
        let (run, events) = drive(
            &graph,
            &[start(), lookup.clone(), shipped.clone(), answer.clone()],
        );
        let effects = requested(&events);
        assert_eq!(effects[1].0, "run_1/agent/1/1.t1");
        assert_eq!(
            effects[1].1,
            Effect::Action {
                action_id: "act_order_status".into()
            }
        );
        assert_eq!(effects[1].2["order_number"], "12345");
        assert_eq!(
            effects[2].0, "run_1/agent/1/1.m2",
            "the result went back to the model"
        );
        assert_eq!(sent(&events), ["Your order 12345 has shipped."]);
        assert_eq!(
            run.status,
            Status::WaitingInput,
            "it keeps the conversation"
        );
        let turn = run.agent.clone().unwrap();
        assert_eq!(
            turn.calls[0].result.as_ref().unwrap()["outputs"]["status"],
            "shipped"
        );
        assert!(run.vars["nodes"]["agent"]["content"] == "Your order 12345 has shipped.");

        // The next message is the next turn.
        let (run, events) = drive(&graph, &[start(), lookup, shipped, answer, say("thanks!")]);
        let (key, _, _) = last_request(&events);
        assert_eq!(key, "run_1/agent/1/2.m1");
        assert_eq!(run.agent.as_ref().unwrap().turn, 2);
        assert!(run.agent.as_ref().unwrap().calls.is_empty());
        assert_eq!(run.vars["message"]["content"], "thanks!");
        assert_eq!(Run::fold(&events), run, "the state is a fold of the events");
    }

    #[test]
    fn an_agent_with_a_next_route_answers_once_and_goes_on() {
        let graph = agent_graph(true);
        let (run, events) = drive(
            &graph,
            &[start(), model_text("run_1/agent/1/1.m1", "Hello!")],
        );
        assert_eq!(sent(&events), ["Hello!"]);
        assert!(matches!(run.status, Status::Ended { .. }));
    }

    #[test]
    fn an_action_that_needs_confirmation_runs_only_on_a_yes() {
        let graph = agent_graph(false);
        let refund = model_calls(
            "run_1/agent/1/1.m1",
            &[(
                "call_r",
                "refund",
                json!({"order_number": "12345", "amount": 20}),
                true,
            )],
        );
        let (run, events) = drive(&graph, &[start(), refund.clone()]);
        let asked = events
            .iter()
            .find_map(|e| match e {
                RunEvent::MessageSent { text, buttons, .. } => {
                    Some((text.clone(), buttons.clone()))
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            asked.0,
            "Shall I go ahead and refund (amount: 20, order number: 12345)?"
        );
        let buttons: Vec<(&str, &str)> = asked
            .1
            .iter()
            .map(|b| (b.label.as_str(), b.value.as_str()))
            .collect();
        assert_eq!(
            buttons,
            [
                ("Yes", "yes:run_1/agent/1/1.t1"),
                ("No", "no:run_1/agent/1/1.t1")
            ]
        );
        let click = |value: &str| Input::Message {
            text: value.into(),
            sentiment: String::new(),
            message_id: "msg_9".into(),
            clicked: true,
            sent_at: 0,
        };
        // The Yes button runs it; a Yes of another question declines it.
        let (_, yes) = drive(
            &graph,
            &[start(), refund.clone(), click("yes:run_1/agent/1/1.t1")],
        );
        assert_eq!(
            last_request(&yes).1,
            Effect::Action {
                action_id: "act_refund".into()
            }
        );
        let (stale, _) = drive(
            &graph,
            &[start(), refund.clone(), click("yes:run_1/agent/1/0.t7")],
        );
        let result = stale.agent.as_ref().unwrap().calls[0]
            .result
            .clone()
            .unwrap();
        assert_eq!(result["declined"], true);
        assert_eq!(run.status, Status::WaitingInput);
        assert_eq!(requested(&events).len(), 1, "nothing ran before the answer");
        assert!(events.iter().any(|e| matches!(e,
            RunEvent::ConfirmationAsked { due_at, .. } if *due_at == NOW + 600_000_000)));

        // Yes: it runs, confirmed by the message.
        let (run, events) = drive(&graph, &[start(), refund.clone(), say("yes")]);
        let (key, effect, _) = last_request(&events);
        assert_eq!(key, "run_1/agent/1/1.t1");
        assert_eq!(
            effect,
            Effect::Action {
                action_id: "act_refund".into()
            }
        );
        let call = &run.agent.as_ref().unwrap().calls[0];
        assert_eq!(call.confirmed_by.as_deref(), Some("msg_1"));
        assert!(
            run.queued.is_empty(),
            "the answer is not a message for a later turn"
        );

        // A yes sent before the question was asked crossed it: it confirms nothing.
        let early = Input::Message {
            text: "yes".into(),
            sentiment: String::new(),
            message_id: "msg_early".into(),
            clicked: false,
            sent_at: NOW - 1,
        };
        let (run, events) = drive(&graph, &[start(), refund.clone(), early]);
        assert_eq!(requested(&events).len(), 1, "nothing ran on the early yes");
        assert_eq!(run.status, Status::WaitingInput);
        let agent = run.agent.as_ref().unwrap();
        assert!(agent.confirming.is_some() && agent.calls[0].confirmed_by.is_none());
        assert_eq!(run.queued, ["yes"], "it waits for the turn after");

        // No: it never runs, and the model hears why.
        let (run, events) = drive(&graph, &[start(), refund.clone(), say("no, wait")]);
        let (key, effect, _) = last_request(&events);
        assert_eq!(
            (key.as_str(), effect),
            ("run_1/agent/1/1.m2", Effect::Model)
        );
        let result = run.agent.as_ref().unwrap().calls[0].result.clone().unwrap();
        assert_eq!(result["declined"], true);
        assert_eq!(result["customer_said"], "no, wait");
        assert!(
            !requested(&events)
                .iter()
                .any(|(_, e, _)| matches!(e, Effect::Action { .. }))
        );

        // Silence past the deadline: a no.
        let due = Input::TimerDue {
            node: "agent".into(),
        };
        let (run, events) = drive(&graph, &[start(), refund, due]);
        assert!(
            !requested(&events)
                .iter()
                .any(|(_, e, _)| matches!(e, Effect::Action { .. }))
        );
        let result = run.agent.as_ref().unwrap().calls[0].result.clone().unwrap();
        assert_eq!(result["declined"], true);
        assert_eq!(Run::fold(&events), run);
    }

    #[test]
    fn unknown_tools_and_bad_arguments_are_answered_without_running_anything() {
        let graph = agent_graph(false);
        let calls = model_calls(
            "run_1/agent/1/1.m1",
            &[
                ("c1", "made_up", json!({}), false),
                ("c2", "order_status", json!("12345"), false),
            ],
        );
        let (run, events) = drive(&graph, &[start(), calls]);
        let (key, effect, _) = last_request(&events);
        assert_eq!(
            (key.as_str(), effect),
            ("run_1/agent/1/1.m2", Effect::Model)
        );
        let calls = &run.agent.as_ref().unwrap().calls;
        assert!(
            calls[0].result.as_ref().unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("no tool")
        );
        assert!(
            calls[1].result.as_ref().unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("JSON object")
        );
    }

    #[test]
    fn an_agent_hands_over_fails_over_and_stops_at_its_rounds() {
        let graph = agent_graph(false);
        let handover = model_calls(
            "run_1/agent/1/1.m1",
            &[("h", "handover", json!({"reason": "wants a person"}), false)],
        );
        let (run, events) = drive(&graph, &[start(), handover]);
        assert_eq!(sent(&events), ["Passing you to a person."]);
        assert_eq!(
            run.vars["nodes"]["agent"]["handover_reason"],
            "wants a person"
        );

        let unreachable = done("run_1/agent/1/1.m1", false, json!({}));
        let (_, events) = drive(&graph, &[start(), unreachable]);
        assert_eq!(sent(&events), ["A teammate will take over."]);

        // Three rounds of tool calls and no answer: the failure route.
        let mut inputs = vec![start()];
        for round in 1..=3 {
            inputs.push(model_calls(
                &format!("run_1/agent/1/1.m{round}"),
                &[(&format!("c{round}"), "order_status", json!({}), false)],
            ));
            inputs.push(done(&format!("run_1/agent/1/1.t{round}"), true, json!({})));
        }
        let (run, events) = drive(&graph, &inputs);
        assert_eq!(sent(&events), ["A teammate will take over."]);
        assert!(matches!(run.status, Status::Ended { .. }));
    }

    #[test]
    fn messages_during_a_turn_wait_for_the_next_one() {
        let graph = agent_graph(false);
        let (run, events) = drive(
            &graph,
            &[
                start(),
                say("also, my address changed"),
                model_text("run_1/agent/1/1.m1", "Hello!"),
            ],
        );
        // The answer went out, and the message that waited started the next turn.
        assert_eq!(sent(&events), ["Hello!"]);
        assert_eq!(last_request(&events).0, "run_1/agent/1/2.m1");
        assert!(run.queued.is_empty());
    }

    #[test]
    fn the_conversation_is_read_as_it_now_is() {
        let graph = look_up_and_act();
        let now = Input::Context {
            vars: json!({
                "conversation": {"status": "on_hold", "metafields": {"plan": "pro"}},
                "agent": {"id": "u_7"},
                "secure": {"token": "s3cret"},
            }),
        };
        let (run, events) = drive(&graph, &[start(), now.clone()]);
        assert_eq!(run.vars["conversation"]["metafields"]["plan"], "pro");
        assert_eq!(
            run.vars["conversation"]["id"], "conv_1",
            "fields the update does not name stay"
        );
        assert_eq!(run.vars["agent"]["id"], "u_7");
        assert!(
            run.vars.get("secure").is_none(),
            "secure metadata never enters a run"
        );
        assert!(!format!("{events:?}").contains("s3cret"));
        // The same again changes nothing; an ended run takes nothing.
        let r = renderer();
        assert!(decide(&graph, &run, &now, NOW, &r).is_empty());
        let ended = Run {
            status: Status::Ended {
                reason: "completed".into(),
            },
            ..run
        };
        let newer = Input::Context {
            vars: json!({"agent": {"id": "u_8"}}),
        };
        assert!(decide(&graph, &ended, &newer, NOW, &r).is_empty());
    }

    #[test]
    fn a_link_button_is_rendered_and_an_action_button_runs_its_action_on_a_click() {
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "offer",
                    node::Kind::SendMessage(SendMessage {
                        text: "Track it, or shall we call you?".into(),
                        buttons: vec![
                            ButtonOption {
                                label: "Track".into(),
                                url: "https://track.example/{{ conversation.id }}".into(),
                                ..Default::default()
                            },
                            ButtonOption {
                                label: "Call me".into(),
                                value: "callback".into(),
                                action_id: "act_callback".into(),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                ),
                node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.choice".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "done",
                    node::Kind::SendMessage(SendMessage {
                        text: "{{ session.choice }}: ticket {{ nodes.capture.ticket }}".into(),
                        ..Default::default()
                    }),
                ),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "offer", ""),
                edge("offer", "capture", ""),
                edge("capture", "done", ""),
                edge("done", "end", ""),
            ],
            ..Default::default()
        };
        let (_, events) = drive(&graph, &[start()]);
        let buttons = events
            .iter()
            .find_map(|e| match e {
                RunEvent::MessageSent { buttons, .. } => Some(buttons.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(buttons[0].url, "https://track.example/conv_1");
        let click = Input::Message {
            text: "callback".into(),
            sentiment: String::new(),
            message_id: "msg_2".into(),
            clicked: true,
            sent_at: 0,
        };
        let (run, events) = drive(&graph, &[start(), click.clone()]);
        let (key, effect, inputs) = last_request(&events);
        assert_eq!(key, "run_1/capture/1/click1");
        assert_eq!(
            effect,
            Effect::Action {
                action_id: "act_callback".into()
            }
        );
        assert_eq!(inputs["value"], "callback");
        assert!(matches!(run.status, Status::WaitingEffect { .. }));
        let outcome = done("run_1/capture/1/click1", true, json!({"ticket": "T-1"}));
        let (run, events) = drive(&graph, &[start(), click, outcome]);
        assert_eq!(sent(&events).last().unwrap(), "callback: ticket T-1");
        assert!(matches!(run.status, Status::Ended { .. }));
        assert_eq!(Run::fold(&events), run);
        // Typed, the same word is only words.
        let (_, events) = drive(&graph, &[start(), say("callback")]);
        assert!(requested(&events).is_empty());
    }

    #[test]
    fn a_flow_node_whose_action_needs_confirmation_asks_first() {
        let graph = Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "refund_order",
                    node::Kind::CustomAction(CustomAction {
                        action_id: "act_refund".into(),
                        inputs: [("order".to_owned(), "4711".to_owned())].into(),
                    }),
                ),
                node(
                    "done",
                    node::Kind::SendMessage(SendMessage {
                        text: "Refunded.".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "kept",
                    node::Kind::SendMessage(SendMessage {
                        text: "Nothing was refunded.".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "sorry",
                    node::Kind::SendMessage(SendMessage {
                        text: "Something went wrong.".into(),
                        ..Default::default()
                    }),
                ),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "refund_order", ""),
                edge("refund_order", "done", "success"),
                edge("refund_order", "kept", "declined"),
                edge("refund_order", "sorry", "failure"),
                edge("done", "end", ""),
                edge("kept", "end", ""),
                edge("sorry", "end", ""),
            ],
            ..Default::default()
        };
        let refused = Input::EffectDone {
            key: "run_1/refund_order/1".into(),
            success: false,
            outputs: json!({}),
            error: "the action needs the user's confirmation first".into(),
            needs_confirmation: true,
        };
        let (run, events) = drive(&graph, &[start(), refused.clone()]);
        assert_eq!(
            sent(&events),
            ["Shall I go ahead and refund order (order: 4711)?"]
        );
        assert_eq!(run.status, Status::WaitingInput);
        let labels: Vec<&str> = run.buttons.iter().map(|b| b.value.as_str()).collect();
        assert_eq!(
            labels,
            ["yes:run_1/refund_order/1", "no:run_1/refund_order/1"]
        );

        // Yes: asked again under a key of its own, confirmed by the message.
        let (run, events) = drive(&graph, &[start(), refused.clone(), say("yes")]);
        let (key, effect, inputs) = requested(&events).pop().unwrap();
        assert_eq!(key, "run_1/refund_order/1.yes");
        assert_eq!(
            effect,
            Effect::Action {
                action_id: "act_refund".into()
            }
        );
        assert_eq!(inputs["order"], "4711");
        assert_eq!(run.confirmed.get(&key).map(String::as_str), Some("msg_1"));
        let (_, events) = drive(
            &graph,
            &[
                start(),
                refused.clone(),
                say("yes"),
                done(&key, true, json!({})),
            ],
        );
        assert_eq!(sent(&events).last().unwrap(), "Refunded.");

        // No, or silence: the declined route, nothing run again.
        let (run, events) = drive(&graph, &[start(), refused.clone(), say("no")]);
        assert_eq!(requested(&events).len(), 1);
        assert_eq!(sent(&events).last().unwrap(), "Nothing was refunded.");
        assert_eq!(run.vars["nodes"]["refund_order"]["declined"], true);
        let silence = Input::TimerDue {
            node: "refund_order".into(),
        };
        let (_, events) = drive(&graph, &[start(), refused.clone(), silence]);
        assert_eq!(sent(&events).last().unwrap(), "Nothing was refunded.");

        // Refused again once confirmed (the action changed): the failure route.
        let again = Input::EffectDone {
            key: "run_1/refund_order/1.yes".into(),
            success: false,
            outputs: json!({}),
            error: "the action needs the user's confirmation first".into(),
            needs_confirmation: true,
        };
        let (_, events) = drive(&graph, &[start(), refused, say("yes"), again]);
        assert_eq!(sent(&events).last().unwrap(), "Something went wrong.");
    }
}
