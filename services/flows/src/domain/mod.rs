//! The pure part of flows: what a valid graph is (checked on save and on publish, every
//! error naming its node) and, in [`run`], how a run moves through one. No I/O.

pub mod replay;
pub mod run;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use prost::Message as _;
use switchboard_proto::flows::v1::node::Kind;
use switchboard_proto::flows::v1::{Edge, FlowKind, Graph, Node, Operator};

/// Event types of the flows service's log.
pub use switchboard_contract::event_types::flows as event_types;

/// Bounds of every definition.
pub mod limits {
    pub const NODES: usize = 500;
    pub const EDGES: usize = 2000;
    /// Encoded configuration of one node.
    pub const NODE_CONFIG_BYTES: usize = 64 * 1024;
    pub const NAME_BYTES: usize = 100;
    pub const DESCRIPTION_BYTES: usize = 2000;
    pub const INSTRUCTIONS_BYTES: usize = 32 * 1024;
    pub const RULES: usize = 50;
    pub const MAP_ENTRIES: usize = 50;
    pub const BUTTONS: usize = 10;
    pub const FORM_FIELDS: usize = 30;
    pub const SCHEMA_BYTES: usize = 64 * 1024;
    /// A delay of up to a year.
    pub const DELAY_SECONDS: u64 = 366 * 24 * 3600;
    pub const MAX_ASKS: u32 = 10;
}

/// Namespaces templates and variable paths may read at run time.
pub const VARIABLE_NAMESPACES: &[&str] = &[
    "conversation",
    "message",
    "lead",
    "agent",
    "session",
    "nodes",
    "analysis",
    "secure",
    "workspace",
    "input",
    "transcript",
    // Post-conversation workflows: how many messages the conversation had, and whether
    // `transcript` was cut to its documented budget.
    "transcript_total",
    "transcript_truncated",
];

/// Connexease operations a node may run.
pub const CONNEXEASE_OPERATIONS: &[&str] = &[
    "assign_group",
    "assign_agent",
    "auto_assign",
    "archive",
    "unarchive",
    "set_conversation_fields",
    "update_customer",
    "set_customer_fields",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }

    /// `value` must be `prefix` and a plain id (what every id of the API looks like).
    pub fn id(&mut self, field: &str, value: &str, prefix: &str) {
        if !switchboard_runtime::requests::valid_prefixed_id(value, prefix) {
            self.push(
                field,
                format!("required: `{prefix}` followed by 1 to 64 letters, digits, `_` or `-`"),
            );
        }
    }

    /// Adds the violations a check found, if it found any.
    pub fn extend(&mut self, found: Result<(), Vec<FieldViolation>>) {
        if let Err(found) = found {
            self.0.extend(found);
        }
    }
}

/// What a node kind is called in errors and events.
pub fn kind_name(node: &Node) -> &'static str {
    match &node.kind {
        Some(Kind::Start(_)) => "start",
        Some(Kind::SendMessage(_)) => "send_message",
        Some(Kind::CaptureInput(_)) => "capture_input",
        Some(Kind::Condition(_)) => "condition",
        Some(Kind::SetVariable(_)) => "set_variable",
        Some(Kind::ApiCall(_)) => "api_call",
        Some(Kind::UpdateConversation(_)) => "update_conversation",
        Some(Kind::Connexease(_)) => "connexease",
        Some(Kind::CustomAction(_)) => "custom_action",
        Some(Kind::Delay(_)) => "delay",
        Some(Kind::End(_)) => "end",
        Some(Kind::Agent(_)) => "agent",
        None => "unspecified",
    }
}

/// Whether a node acts on the outside world (and so routes on success and failure).
pub fn acts(node: &Node) -> bool {
    matches!(
        node.kind,
        Some(
            Kind::ApiCall(_)
                | Kind::UpdateConversation(_)
                | Kind::Connexease(_)
                | Kind::CustomAction(_)
        )
    )
}

/// The ports a node routes by, and which of them must be wired.
fn ports(node: &Node) -> (&'static [&'static str], &'static [&'static str]) {
    match &node.kind {
        Some(Kind::End(_)) | None => (&[], &[]),
        Some(Kind::Condition(_)) => (&["true", "false"], &["true", "false"]),
        Some(Kind::CaptureInput(_)) => (&["next", "invalid"], &["next"]),
        // Without `next` the agent keeps the conversation; `handover` is a tool it gets.
        Some(Kind::Agent(_)) => (
            &["next", "handover", "failure"],
            if node.end_on_failure {
                &[]
            } else {
                &["failure"]
            },
        ),
        // An action that needs the customer's yes may be declined: `declined` when wired,
        // else `failure`.
        Some(Kind::ApiCall(_) | Kind::CustomAction(_)) => {
            if node.end_on_failure {
                (&["success", "failure", "declined"], &["success"])
            } else {
                (&["success", "failure", "declined"], &["success", "failure"])
            }
        }
        Some(_) if acts(node) => {
            if node.end_on_failure {
                (&["success", "failure"], &["success"])
            } else {
                (&["success", "failure"], &["success", "failure"])
            }
        }
        Some(_) => (&["next"], &["next"]),
    }
}

/// Finds the variables a template reads (`conversation.id`), for checking namespaces.
pub trait TemplateCheck {
    fn variables(&self, template: &str) -> Result<BTreeSet<String>, String>;
}

impl TemplateCheck for switchboard_template::Renderer {
    fn variables(&self, template: &str) -> Result<BTreeSet<String>, String> {
        switchboard_template::Renderer::variables(self, template).map_err(|e| e.to_string())
    }
}

fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `session.<name>`: where captured input and set variables go.
fn valid_session_variable(path: &str) -> bool {
    path.strip_prefix("session.").is_some_and(|name| {
        (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

struct Checker<'a> {
    v: Violations,
    templates: &'a dyn TemplateCheck,
}

impl Checker<'_> {
    /// A template that must parse and read known namespaces, and not `secure.*`: it may
    /// end up in a message, a variable or a log.
    fn template(&mut self, field: &str, template: &str) {
        self.checked_template(field, template, false);
    }

    fn checked_template(&mut self, field: &str, template: &str, secure_allowed: bool) {
        match self.templates.variables(template) {
            Err(e) => self.v.push(field, e),
            Ok(variables) => {
                for variable in variables {
                    let namespace = variable.split('.').next().unwrap_or_default();
                    if namespace == "secure" && !secure_allowed {
                        self.v.push(
                            field,
                            format!(
                                "`{variable}` is secure metadata: only the inputs of API call \
                                 and custom action nodes may read it, never text anyone or \
                                 anything reads or keeps"
                            ),
                        );
                    } else if !VARIABLE_NAMESPACES.contains(&namespace) {
                        self.v.push(
                            field,
                            format!(
                                "unknown variable namespace `{namespace}` in `{variable}`; known: {}",
                                VARIABLE_NAMESPACES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }

    fn map(&mut self, field: &str, entries: &HashMap<String, String>, secure_allowed: bool) {
        if entries.len() > limits::MAP_ENTRIES {
            self.v
                .push(field, format!("at most {} entries", limits::MAP_ENTRIES));
        }
        let sorted: BTreeMap<_, _> = entries.iter().collect();
        for (key, value) in sorted {
            if key.is_empty() || key.len() > 64 {
                self.v
                    .push(format!("{field}.{key}"), "keys are 1 to 64 bytes");
            }
            self.checked_template(&format!("{field}.{key}"), value, secure_allowed);
        }
    }

    fn action_id(&mut self, field: &str, id: &str) {
        if !switchboard_runtime::requests::valid_prefixed_id(id, "act_") {
            self.v.push(field, "required: an action id (`act_…`)");
        }
    }

    fn node(&mut self, at: &str, node: &Node) {
        let Some(kind) = &node.kind else {
            self.v
                .push(format!("{at}.kind"), "required: which kind of node this is");
            return;
        };
        match kind {
            Kind::Start(_) | Kind::End(_) => {}
            Kind::SendMessage(m) => {
                if m.text.trim().is_empty() && m.form.is_empty() {
                    self.v
                        .push(format!("{at}.send_message.text"), "required: what to send");
                }
                self.template(&format!("{at}.send_message.text"), &m.text);
                if m.buttons.len() > limits::BUTTONS {
                    self.v.push(
                        format!("{at}.send_message.buttons"),
                        format!("at most {}", limits::BUTTONS),
                    );
                }
                for (i, b) in m.buttons.iter().enumerate() {
                    let field = format!("{at}.send_message.buttons[{i}]");
                    if b.label.trim().is_empty() {
                        self.v.push(format!("{field}.label"), "required");
                    }
                    if !b.url.is_empty() {
                        self.template(&format!("{field}.url"), &b.url);
                        if !b.action_id.is_empty() {
                            self.v.push(
                                format!("{field}.action_id"),
                                "a link button opens its URL and sends nothing back: no action",
                            );
                        }
                    } else if !b.action_id.is_empty() {
                        self.action_id(&format!("{field}.action_id"), &b.action_id);
                    }
                }
                if m.form.len() > limits::FORM_FIELDS {
                    self.v.push(
                        format!("{at}.send_message.form"),
                        format!("at most {} fields", limits::FORM_FIELDS),
                    );
                }
                for (i, f) in m.form.iter().enumerate() {
                    let field = format!("{at}.send_message.form[{i}]");
                    if f.name.is_empty() || !valid_node_id(&f.name) {
                        self.v.push(
                            format!("{field}.name"),
                            "1 to 64 letters, digits, `_` or `-`",
                        );
                    }
                    if !["text", "email", "phone", "number", "date", "select"]
                        .contains(&f.r#type.as_str())
                    {
                        self.v.push(
                            format!("{field}.type"),
                            "one of text, email, phone, number, date, select",
                        );
                    }
                    if f.r#type == "select" && f.options.is_empty() {
                        self.v
                            .push(format!("{field}.options"), "a select needs options");
                    }
                }
            }
            Kind::CaptureInput(c) => {
                if !valid_session_variable(&c.variable) {
                    self.v.push(
                        format!("{at}.capture_input.variable"),
                        "required: `session.<name>` (letters, digits, `_`)",
                    );
                }
                match c.validation.as_str() {
                    "" | "none" | "email" | "phone" | "number" | "form" => {}
                    "regex" => {
                        if let Err(e) = regex::Regex::new(&c.pattern) {
                            self.v.push(
                                format!("{at}.capture_input.pattern"),
                                format!("not a regex: {e}"),
                            );
                        }
                    }
                    _ => self.v.push(
                        format!("{at}.capture_input.validation"),
                        "one of none, email, phone, number, regex, form",
                    ),
                }
                if c.max_attempts > limits::MAX_ASKS {
                    self.v.push(
                        format!("{at}.capture_input.max_attempts"),
                        format!("at most {}", limits::MAX_ASKS),
                    );
                }
                self.template(&format!("{at}.capture_input.reask_text"), &c.reask_text);
            }
            Kind::Condition(c) => {
                if c.rules.is_empty() || c.rules.len() > limits::RULES {
                    self.v.push(
                        format!("{at}.condition.rules"),
                        format!("1 to {} rules", limits::RULES),
                    );
                }
                for (i, rule) in c.rules.iter().enumerate() {
                    let field = format!("{at}.condition.rules[{i}]");
                    let namespace = rule.variable.split('.').next().unwrap_or_default();
                    if rule.variable.is_empty() || !VARIABLE_NAMESPACES.contains(&namespace) {
                        self.v.push(
                            format!("{field}.variable"),
                            format!(
                                "a variable path in a known namespace ({})",
                                VARIABLE_NAMESPACES.join(", ")
                            ),
                        );
                    }
                    match Operator::try_from(rule.operator) {
                        Ok(Operator::Unspecified) | Err(_) => {
                            self.v.push(format!("{field}.operator"), "required")
                        }
                        Ok(Operator::Regex) => {
                            if let Err(e) = regex::Regex::new(&rule.value) {
                                self.v
                                    .push(format!("{field}.value"), format!("not a regex: {e}"));
                            }
                        }
                        Ok(_) => self.template(&format!("{field}.value"), &rule.value),
                    }
                }
            }
            Kind::SetVariable(s) => {
                if !valid_session_variable(&s.variable) {
                    self.v.push(
                        format!("{at}.set_variable.variable"),
                        "required: `session.<name>` (letters, digits, `_`)",
                    );
                }
                self.template(&format!("{at}.set_variable.value"), &s.value);
            }
            Kind::ApiCall(a) => {
                self.action_id(&format!("{at}.api_call.action_id"), &a.action_id);
                self.map(&format!("{at}.api_call.inputs"), &a.inputs, true);
            }
            Kind::CustomAction(a) => {
                self.action_id(&format!("{at}.custom_action.action_id"), &a.action_id);
                self.map(&format!("{at}.custom_action.inputs"), &a.inputs, true);
            }
            Kind::UpdateConversation(u) => {
                if u.status.is_empty() && u.set_metafields.is_empty() {
                    self.v.push(
                        format!("{at}.update_conversation"),
                        "set a status or metafields: nothing to update",
                    );
                }
                self.template(&format!("{at}.update_conversation.status"), &u.status);
                self.map(
                    &format!("{at}.update_conversation.set_metafields"),
                    &u.set_metafields,
                    false,
                );
            }
            Kind::Connexease(c) => {
                if !CONNEXEASE_OPERATIONS.contains(&c.operation.as_str()) {
                    self.v.push(
                        format!("{at}.connexease.operation"),
                        format!("one of {}", CONNEXEASE_OPERATIONS.join(", ")),
                    );
                }
                // Connexease keeps what it is sent (a customer's email, a custom field):
                // secure metadata would end up stored in plain text there.
                self.map(&format!("{at}.connexease.arguments"), &c.arguments, false);
            }
            Kind::Agent(a) => {
                self.template(&format!("{at}.agent.instructions"), &a.instructions);
                if a.instructions.len() > limits::INSTRUCTIONS_BYTES {
                    self.v.push(
                        format!("{at}.agent.instructions"),
                        format!("at most {} bytes", limits::INSTRUCTIONS_BYTES),
                    );
                }
                if !a.provider_id.is_empty()
                    && !switchboard_runtime::requests::valid_prefixed_id(&a.provider_id, "mp_")
                {
                    self.v.push(
                        format!("{at}.agent.provider_id"),
                        "a model provider id (`mp_…`), or empty for the assistant's",
                    );
                }
                if a.max_rounds > run::AGENT_ROUNDS_MAX {
                    self.v.push(
                        format!("{at}.agent.max_rounds"),
                        format!("at most {}", run::AGENT_ROUNDS_MAX),
                    );
                }
                self.map(&format!("{at}.agent.sealed_inputs"), &a.sealed_inputs, true);
                if a.confirmation_timeout_seconds > run::CONFIRMATION_SECONDS_MAX {
                    self.v.push(
                        format!("{at}.agent.confirmation_timeout_seconds"),
                        format!("at most {} (a day)", run::CONFIRMATION_SECONDS_MAX),
                    );
                }
            }
            Kind::Delay(d) => {
                if d.seconds == 0 || d.seconds > limits::DELAY_SECONDS {
                    self.v.push(
                        format!("{at}.delay.seconds"),
                        format!("1 to {} (a year)", limits::DELAY_SECONDS),
                    );
                }
            }
        }
    }
}

/// Checks a graph whole: limits, node configurations, one start, routes that land,
/// nothing unreachable, acting nodes with a failure route (or `end_on_failure`). Fields
/// name the node (`nodes[lookup].api_call.action_id`, `edges[3].to`).
pub fn validate_graph(
    kind: FlowKind,
    graph: &Graph,
    templates: &dyn TemplateCheck,
) -> Result<(), Vec<FieldViolation>> {
    let mut c = Checker {
        v: Violations::default(),
        templates,
    };
    if graph.nodes.is_empty() {
        c.v.push("nodes", "a graph needs at least a start node");
        return c.v.finish();
    }
    if graph.nodes.len() > limits::NODES {
        c.v.push(
            "nodes",
            format!(
                "at most {} nodes; this graph has {}",
                limits::NODES,
                graph.nodes.len()
            ),
        );
        return c.v.finish();
    }
    if graph.edges.len() > limits::EDGES {
        c.v.push("edges", format!("at most {} edges", limits::EDGES));
        return c.v.finish();
    }
    let mut by_id: HashMap<&str, &Node> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !valid_node_id(&node.id) {
            c.v.push(
                format!("nodes[{i}].id"),
                "1 to 64 letters, digits, `_` or `-`",
            );
            continue;
        }
        if by_id.insert(&node.id, node).is_some() {
            c.v.push(format!("nodes[{}].id", node.id), "used by another node");
        }
        let at = format!("nodes[{}]", node.id);
        if node.encoded_len() > limits::NODE_CONFIG_BYTES {
            c.v.push(
                at.clone(),
                format!(
                    "at most {} bytes of configuration",
                    limits::NODE_CONFIG_BYTES
                ),
            );
            continue;
        }
        if node.name.len() > limits::NAME_BYTES {
            c.v.push(
                format!("{at}.name"),
                format!("at most {} bytes", limits::NAME_BYTES),
            );
        }
        c.node(&at, node);
        if node.end_on_failure && !acts(node) {
            c.v.push(
                format!("{at}.end_on_failure"),
                "only acting nodes (api_call, update_conversation, connexease, custom_action) fail",
            );
        }
    }
    let starts: Vec<&Node> = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, Some(Kind::Start(_))))
        .collect();
    match starts.len() {
        1 => {}
        0 => c.v.push("nodes", "needs one start node; there is none"),
        n => {
            c.v.push("nodes", format!("needs one start node; there are {n}"))
        }
    }
    if kind != FlowKind::ConversationFlow
        && graph
            .nodes
            .iter()
            .any(|n| matches!(n.kind, Some(Kind::CaptureInput(_))))
    {
        c.v.push(
            "nodes",
            "capture_input waits for the customer: only conversation flows have one",
        );
    }
    if kind != FlowKind::ConversationFlow
        && graph
            .nodes
            .iter()
            .any(|n| matches!(n.kind, Some(Kind::Agent(_))))
    {
        c.v.push(
            "nodes",
            "an agent talks with the customer: only conversation flows have one",
        );
    }
    for (field, schema) in [
        ("input_schema_json", &graph.input_schema_json),
        ("response_schema_json", &graph.response_schema_json),
    ] {
        if schema.is_empty() {
            continue;
        }
        if kind != FlowKind::ActionWorkflow {
            c.v.push(field, "only action workflows declare inputs and a response");
        } else if schema.len() > limits::SCHEMA_BYTES {
            c.v.push(field, format!("at most {} bytes", limits::SCHEMA_BYTES));
        } else {
            match serde_json::from_str::<serde_json::Value>(schema) {
                Err(e) => c.v.push(field, format!("not JSON: {e}")),
                Ok(value) => {
                    if let Err(e) = jsonschema::options().build(&value) {
                        c.v.push(field, format!("not a JSON Schema: {e}"));
                    }
                }
            }
        }
    }

    // Routes: every edge leaves a known node by one of its ports and lands on a node.
    let mut routes: HashMap<(&str, &str), &str> = HashMap::new();
    for (i, edge) in graph.edges.iter().enumerate() {
        check_edge(&mut c.v, i, edge, &by_id, &mut routes);
    }
    for node in &graph.nodes {
        let (_, required) = ports(node);
        for port in required {
            if !routes.contains_key(&(node.id.as_str(), *port)) {
                let why = if *port == "failure" {
                    " (or set end_on_failure to end the run when it fails)"
                } else {
                    ""
                };
                c.v.push(
                    format!("nodes[{}]", node.id),
                    format!("{} needs a `{port}` route{why}", kind_name(node)),
                );
            }
        }
    }
    if let [start] = starts.as_slice() {
        let reachable = reachable_from(&start.id, &graph.edges);
        for node in &graph.nodes {
            if !reachable.contains(node.id.as_str()) {
                c.v.push(
                    format!("nodes[{}]", node.id),
                    "unreachable from the start node",
                );
            }
        }
    }
    c.v.finish()
}

fn check_edge<'g>(
    v: &mut Violations,
    i: usize,
    edge: &'g Edge,
    by_id: &HashMap<&str, &Node>,
    routes: &mut HashMap<(&'g str, &'g str), &'g str>,
) {
    let Some(from) = by_id.get(edge.from.as_str()) else {
        v.push(
            format!("edges[{i}].from"),
            format!("no node `{}`", edge.from),
        );
        return;
    };
    if !by_id.contains_key(edge.to.as_str()) {
        v.push(format!("edges[{i}].to"), format!("no node `{}`", edge.to));
    }
    if matches!(
        by_id.get(edge.to.as_str()).and_then(|n| n.kind.as_ref()),
        Some(Kind::Start(_))
    ) {
        v.push(
            format!("edges[{i}].to"),
            "no route may lead back to the start node",
        );
    }
    let port = if edge.port.is_empty() {
        "next"
    } else {
        edge.port.as_str()
    };
    let (allowed, _) = ports(from);
    if !allowed.contains(&port) {
        v.push(
            format!("edges[{i}].port"),
            if allowed.is_empty() {
                format!("{} `{}` routes nowhere", kind_name(from), from.id)
            } else {
                format!(
                    "{} `{}` routes by {}, not `{port}`",
                    kind_name(from),
                    from.id,
                    allowed.join(", ")
                )
            },
        );
        return;
    }
    if routes.insert((&edge.from, port), &edge.to).is_some() {
        v.push(
            format!("edges[{i}]"),
            format!("`{}` already has a `{port}` route", edge.from),
        );
    }
}

fn reachable_from<'g>(start: &'g str, edges: &'g [Edge]) -> BTreeSet<&'g str> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in edges {
        out.entry(e.from.as_str()).or_default().push(e.to.as_str());
    }
    let mut seen = BTreeSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        for next in out.get(id).into_iter().flatten() {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen
}

/// The action ids a graph refers to, each with the field that names it
/// (`nodes[lookup].api_call.action_id`) and whether it must be an `http` action (API call
/// nodes need one).
pub fn referenced_actions(graph: &Graph) -> Vec<(String, String, bool)> {
    let mut found = Vec::new();
    for n in &graph.nodes {
        match &n.kind {
            Some(Kind::ApiCall(a)) => found.push((
                format!("nodes[{}].api_call.action_id", n.id),
                a.action_id.clone(),
                true,
            )),
            Some(Kind::CustomAction(a)) => found.push((
                format!("nodes[{}].custom_action.action_id", n.id),
                a.action_id.clone(),
                false,
            )),
            Some(Kind::SendMessage(m)) => {
                for (i, b) in m.buttons.iter().enumerate() {
                    if !b.action_id.is_empty() {
                        found.push((
                            format!("nodes[{}].send_message.buttons[{i}].action_id", n.id),
                            b.action_id.clone(),
                            false,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// `@name` references in an assistant's instructions.
pub fn workflow_references(instructions: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = instructions.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let rest = &instructions[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if end > 0 {
                out.insert(rest[..end].to_owned());
            }
            i += end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// A flow name: 1 to 100 bytes of letters, digits, `_` and `-` (assistants write `@name`).
pub fn valid_flow_name(name: &str) -> bool {
    (1..=limits::NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
pub(crate) mod tests {
    use switchboard_proto::flows::v1::*;

    use super::*;

    struct Plain;

    impl TemplateCheck for Plain {
        fn variables(&self, template: &str) -> Result<BTreeSet<String>, String> {
            switchboard_template::Renderer::new(Default::default())
                .variables(template)
                .map_err(|e| e.to_string())
        }
    }

    pub fn node(id: &str, kind: node::Kind) -> Node {
        Node {
            id: id.into(),
            kind: Some(kind),
            ..Default::default()
        }
    }

    pub fn edge(from: &str, to: &str, port: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            port: port.into(),
        }
    }

    /// The "look it up and act" pattern: capture the order number, call the order API; on
    /// success send the status and resolve; on failure apologise and hand over.
    pub fn look_up_and_act() -> Graph {
        Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node(
                    "ask",
                    node::Kind::SendMessage(SendMessage {
                        text: "What is your order number?".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.order_number".into(),
                        validation: "regex".into(),
                        pattern: "^[0-9]{4,10}$".into(),
                        reask_text: "That does not look like an order number.".into(),
                        max_attempts: 3,
                    }),
                ),
                node(
                    "lookup",
                    node::Kind::ApiCall(ApiCall {
                        action_id: "act_lookup".into(),
                        inputs: [("order".to_owned(), "{{ session.order_number }}".to_owned())]
                            .into(),
                    }),
                ),
                node(
                    "status",
                    node::Kind::SendMessage(SendMessage {
                        text: "Your order is {{ nodes.lookup.status }}.".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "resolve",
                    node::Kind::UpdateConversation(UpdateConversation {
                        status: "resolved".into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "sorry",
                    node::Kind::SendMessage(SendMessage {
                        text: "I'm having trouble reaching that right now, let me get a teammate"
                            .into(),
                        ..Default::default()
                    }),
                ),
                node(
                    "handover",
                    node::Kind::Connexease(ConnexeaseOperation {
                        operation: "assign_group".into(),
                        arguments: [("group".to_owned(), "support".to_owned())].into(),
                    }),
                ),
                node("done", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "ask", ""),
                edge("ask", "capture", "next"),
                edge("capture", "lookup", "next"),
                edge("capture", "sorry", "invalid"),
                edge("lookup", "status", "success"),
                edge("lookup", "sorry", "failure"),
                edge("status", "resolve", "next"),
                edge("resolve", "done", "success"),
                edge("resolve", "done", "failure"),
                edge("sorry", "handover", "next"),
                edge("handover", "done", "success"),
                edge("handover", "done", "failure"),
            ],
            ..Default::default()
        }
    }

    fn problems(graph: &Graph) -> Vec<(String, String)> {
        validate_graph(FlowKind::ConversationFlow, graph, &Plain)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    #[test]
    fn the_look_up_and_act_pattern_is_valid() {
        assert_eq!(problems(&look_up_and_act()), vec![]);
    }

    #[test]
    fn errors_name_the_node() {
        let mut graph = look_up_and_act();
        // No failure route for the lookup, a dangling edge, an unknown namespace, an
        // unreachable node, and a second start.
        graph
            .edges
            .retain(|e| !(e.from == "lookup" && e.port == "failure"));
        graph.edges.push(edge("status", "nowhere", "next"));
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[4].kind {
            m.text = "{{ secrets.key }}".into();
        }
        graph
            .nodes
            .push(node("island", node::Kind::End(End::default())));
        let found = problems(&graph);
        let fields: BTreeSet<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        for expected in [
            "nodes[lookup]",
            "edges[11].to",
            "edges[11]",
            "nodes[status].send_message.text",
            "nodes[island]",
        ] {
            assert!(
                fields.contains(expected),
                "{expected} missing from {found:#?}"
            );
        }
        let mut two_starts = look_up_and_act();
        two_starts
            .nodes
            .push(node("start2", node::Kind::Start(Start {})));
        assert!(
            problems(&two_starts)
                .iter()
                .any(|(f, d)| f == "nodes" && d.contains("there are 2"))
        );
        assert!(
            found
                .iter()
                .any(|(f, d)| f == "nodes[lookup]" && d.contains("`failure` route")),
            "{found:#?}"
        );
        // end_on_failure is the explicit alternative to a failure route.
        let mut graph = look_up_and_act();
        graph
            .edges
            .retain(|e| !(e.from == "lookup" && e.port == "failure"));
        graph.nodes[3].end_on_failure = true;
        let found = problems(&graph);
        assert!(
            !found.iter().any(|(f, _)| f == "nodes[lookup]"),
            "{found:#?}"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let mut graph = look_up_and_act();
        for i in 0..limits::NODES {
            graph
                .nodes
                .push(node(&format!("n{i}"), node::Kind::End(End::default())));
        }
        assert!(problems(&graph)[0].1.contains("at most 500 nodes"));
        let mut graph = look_up_and_act();
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
            m.text = "x".repeat(limits::NODE_CONFIG_BYTES + 1);
        }
        assert!(
            problems(&graph)
                .iter()
                .any(|(f, d)| f == "nodes[ask]" && d.contains("bytes of configuration"))
        );
    }

    #[test]
    fn ports_must_match_the_node() {
        let mut graph = look_up_and_act();
        graph.edges.push(edge("ask", "done", "true"));
        let found = problems(&graph);
        assert!(
            found
                .iter()
                .any(|(f, d)| f == "edges[12].port" && d.contains("routes by next")),
            "{found:#?}"
        );
    }

    #[test]
    fn buttons_are_a_value_a_link_or_an_action_and_agents_are_checked() {
        let mut graph = look_up_and_act();
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
            m.buttons = vec![
                ButtonOption {
                    label: "Both".into(),
                    url: "https://example.com/{{ secure.token }}".into(),
                    action_id: "act_x".into(),
                    ..Default::default()
                },
                ButtonOption {
                    label: "Act".into(),
                    action_id: "nope".into(),
                    ..Default::default()
                },
            ];
        }
        graph.nodes.push(node(
            "agent",
            node::Kind::Agent(AgentNode {
                provider_id: "openai".into(),
                max_rounds: 99,
                ..Default::default()
            }),
        ));
        graph.edges.push(edge("done", "agent", ""));
        let fields: BTreeSet<String> = problems(&graph).into_iter().map(|(f, _)| f).collect();
        for expected in [
            "nodes[ask].send_message.buttons[0].url",
            "nodes[ask].send_message.buttons[0].action_id",
            "nodes[ask].send_message.buttons[1].action_id",
            "nodes[agent].agent.provider_id",
            "nodes[agent].agent.max_rounds",
        ] {
            assert!(fields.contains(expected), "{expected} in {fields:#?}");
        }
        let refs: Vec<String> = referenced_actions(&graph)
            .into_iter()
            .map(|(field, _, _)| field)
            .collect();
        assert!(refs.contains(&"nodes[ask].send_message.buttons[1].action_id".to_owned()));
    }

    #[test]
    fn capture_input_belongs_to_conversation_flows() {
        let found = validate_graph(
            FlowKind::PostConversationWorkflow,
            &look_up_and_act(),
            &Plain,
        )
        .unwrap_err();
        assert!(
            found
                .iter()
                .any(|v| v.description.contains("capture_input"))
        );
    }

    #[test]
    fn secure_metadata_is_refused_where_anyone_would_read_it() {
        let mut graph = look_up_and_act();
        if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
            m.text = "Your key is {{ secure.api_key }}".into();
        }
        if let Some(node::Kind::ApiCall(a)) = &mut graph.nodes[3].kind {
            a.inputs.insert("key".into(), "{{ secure.api_key }}".into());
        }
        if let Some(node::Kind::Connexease(c)) = &mut graph.nodes[7].kind {
            c.arguments
                .insert("email".into(), "{{ secure.api_key }}".into());
        }
        let found = problems(&graph);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].0, "nodes[ask].send_message.text");
        assert!(found[0].1.contains("secure metadata"));
        assert_eq!(found[1].0, "nodes[handover].connexease.arguments.email");
    }

    #[test]
    fn workflow_references_are_found() {
        let refs = workflow_references("Use @lookup_order, then @refund-v2. Mail a@b.c");
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            ["lookup_order", "refund-v2"]
        );
    }
}
