//! What each kind of action needs in its definition: the checks (every violation named by
//! its field) and the defaults filled in before a definition is stored.

use std::collections::BTreeSet;

use serde_json::{Value as Json, json};
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, ButtonSpec, CalculationSpec, ConnexeaseSpec, DatabaseQuerySpec,
    FormSpec, UpdateConversationSpec, ValidationSpec, WorkflowSpec,
};
use switchboard_template::Renderer;

use super::{StoredAuth, Violations, mapping, valid_name, validate_http};

pub mod limits {
    pub const FORM_FIELDS: usize = 30;
    pub const LABEL_BYTES: usize = 200;
    pub const OPTIONS: usize = 50;
    pub const PATTERN_BYTES: usize = 1024;
    pub const CALCULATIONS: usize = 50;
    pub const EXPRESSION_BYTES: usize = 4096;
    pub const RULES: usize = 50;
    pub const METAFIELDS: usize = 50;
    pub const METAFIELD_KEY_CHARS: usize = 64;
    pub const ARGUMENTS: usize = 50;
    pub const STATEMENT_BYTES: usize = 16 * 1024;
    pub const PARAMETERS: usize = 32;
    pub const ROWS_DEFAULT: u32 = 100;
    pub const ROWS_MAX: u32 = 1000;
    pub const QUERY_TIMEOUT_MS_DEFAULT: u32 = 5_000;
    pub const QUERY_TIMEOUT_MS_MAX: u32 = 30_000;
    pub const WORKFLOW_TIMEOUT_MS_DEFAULT: u32 = 30_000;
    pub const WORKFLOW_TIMEOUT_MS_MAX: u32 = 120_000;
    /// A compiled regular expression may take this many bytes at most.
    pub const REGEX_SIZE: usize = 256 * 1024;
}

pub const FORM_FIELD_TYPES: [&str; 8] = [
    "text", "email", "phone", "number", "integer", "boolean", "date", "select",
];

pub const CONVERSATION_STATUSES: [&str; 4] = ["active", "on_hold", "resolved", "archived"];

/// Connexease operations and the arguments each takes (`fields.*`: any field name).
pub const CONNEXEASE_OPERATIONS: [(&str, &[&str]); 8] = [
    ("assign_group", &["group"]),
    ("assign_agent", &["agent_email"]),
    ("auto_assign", &["group"]),
    ("archive", &[]),
    ("unarchive", &[]),
    ("set_conversation_fields", &["fields.*"]),
    ("update_customer", &["name", "email", "phone", "social.*"]),
    ("set_customer_fields", &["fields.*"]),
];

pub const VALIDATION_RULES: [&str; 7] = [
    "required",
    "email",
    "phone_e164",
    "regex",
    "range",
    "length",
    "one_of",
];

/// Checks the part of `definition` its kind needs, and that no other kind's part is set.
pub(crate) fn validate(
    v: &mut Violations,
    kind: ActionKind,
    definition: &ActionDefinition,
    previous_auth: StoredAuth<'_>,
) {
    let set: [(&str, bool); 9] = [
        ("http", definition.http.is_some()),
        ("form", definition.form.is_some()),
        ("button", definition.button.is_some()),
        (
            "update_conversation",
            definition.update_conversation.is_some(),
        ),
        ("connexease", definition.connexease.is_some()),
        ("calculation", definition.calculation.is_some()),
        ("validation", definition.validation.is_some()),
        ("database_query", definition.database_query.is_some()),
        ("workflow", definition.workflow.is_some()),
    ];
    let own = field_of(kind);
    for (field, present) in set {
        if present && field != own {
            v.push(field, format!("a {own} action has no {field} part"));
        }
    }
    let missing = |v: &mut Violations| v.push(own, format!("a {own} action needs its {own} part"));
    match kind {
        ActionKind::Http => match &definition.http {
            Some(http) => v.within("http.", |v| validate_http(v, http, previous_auth)),
            None => missing(v),
        },
        ActionKind::Form => match &definition.form {
            Some(form) => v.within("form.", |v| validate_form(v, form, previous_auth)),
            None => missing(v),
        },
        ActionKind::Button => match &definition.button {
            Some(button) => v.within("button.", |v| validate_button(v, button, previous_auth)),
            None => missing(v),
        },
        ActionKind::UpdateConversation => match &definition.update_conversation {
            Some(update) => v.within("update_conversation.", |v| {
                validate_update_conversation(v, update)
            }),
            None => missing(v),
        },
        ActionKind::Connexease => match &definition.connexease {
            Some(spec) => v.within("connexease.", |v| validate_connexease(v, spec)),
            None => missing(v),
        },
        ActionKind::Calculation => match &definition.calculation {
            Some(spec) => v.within("calculation.", |v| validate_calculation(v, spec)),
            None => missing(v),
        },
        ActionKind::Validation => match &definition.validation {
            Some(spec) => v.within("validation.", |v| validate_rules(v, spec)),
            None => missing(v),
        },
        ActionKind::DatabaseQuery => match &definition.database_query {
            Some(spec) => v.within("database_query.", |v| validate_query(v, spec)),
            None => missing(v),
        },
        ActionKind::Workflow => match &definition.workflow {
            Some(spec) => v.within("workflow.", |v| validate_workflow(v, spec)),
            None => missing(v),
        },
        ActionKind::Unspecified => v.push("kind", "required"),
    }
}

/// The definition field that holds a kind's part.
pub fn field_of(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Unspecified => "kind",
        ActionKind::Http => "http",
        ActionKind::Form => "form",
        ActionKind::Button => "button",
        ActionKind::UpdateConversation => "update_conversation",
        ActionKind::Connexease => "connexease",
        ActionKind::Calculation => "calculation",
        ActionKind::Validation => "validation",
        ActionKind::DatabaseQuery => "database_query",
        ActionKind::Workflow => "workflow",
    }
}

/// Fills the defaults of the kind's part.
pub(crate) fn normalize(definition: &mut ActionDefinition) {
    if let Some(query) = definition.database_query.as_mut() {
        if query.max_rows == 0 {
            query.max_rows = limits::ROWS_DEFAULT;
        }
        if query.timeout_ms == 0 {
            query.timeout_ms = limits::QUERY_TIMEOUT_MS_DEFAULT;
        }
    }
    if let Some(workflow) = definition.workflow.as_mut()
        && workflow.timeout_ms == 0
    {
        workflow.timeout_ms = limits::WORKFLOW_TIMEOUT_MS_DEFAULT;
    }
    if let Some(update) = definition.update_conversation.as_mut() {
        update.status = update.status.trim().to_owned();
    }
}

/// The JSON Schema of a form's submission, for the tool catalogue: every answer arrives as
/// text from the chat, so the schema describes what each must look like.
pub fn form_schema(form: &FormSpec) -> Json {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for field in &form.fields {
        let mut property = json!({"description": field.label});
        let object = property.as_object_mut().expect("an object");
        match field.r#type.as_str() {
            "number" => {
                object.insert("type".into(), json!(["number", "string"]));
            }
            "integer" => {
                object.insert("type".into(), json!(["integer", "string"]));
            }
            "boolean" => {
                object.insert("type".into(), json!(["boolean", "string"]));
            }
            "select" => {
                object.insert("enum".into(), json!(field.options));
            }
            "email" => {
                object.insert("type".into(), json!("string"));
                object.insert("format".into(), json!("email"));
            }
            "date" => {
                object.insert("type".into(), json!("string"));
                object.insert("format".into(), json!("date"));
            }
            _ => {
                object.insert("type".into(), json!("string"));
            }
        }
        if field.required {
            required.push(field.name.clone());
        }
        properties.insert(field.name.clone(), property);
    }
    json!({"type": "object", "properties": properties, "required": required})
}

fn validate_form(v: &mut Violations, form: &FormSpec, previous_auth: StoredAuth<'_>) {
    v.max_bytes("title", &form.title, limits::LABEL_BYTES);
    v.max_bytes("submit_label", &form.submit_label, limits::LABEL_BYTES);
    if form.fields.is_empty() || form.fields.len() > limits::FORM_FIELDS {
        v.push("fields", format!("1 to {} fields", limits::FORM_FIELDS));
    }
    let mut names = BTreeSet::new();
    for (i, field) in form.fields.iter().enumerate() {
        v.within(&format!("fields[{i}]."), |v| {
            if !valid_name(&field.name) {
                v.push("name", "a letter, then up to 63 of a-z, 0-9 and `_`");
            } else if !names.insert(field.name.as_str()) {
                v.push("name", "another field has this name");
            }
            v.max_bytes("label", &field.label, limits::LABEL_BYTES);
            if !FORM_FIELD_TYPES.contains(&field.r#type.as_str()) {
                v.push("type", format!("one of {}", FORM_FIELD_TYPES.join(", ")));
            }
            if field.r#type == "select" && field.options.is_empty() {
                v.push("options", "a select needs its options");
            }
            if field.options.len() > limits::OPTIONS {
                v.push("options", format!("at most {}", limits::OPTIONS));
            }
            if !field.pattern.is_empty() {
                check_regex(v, "pattern", &field.pattern);
            }
            if let (Some(min), Some(max)) = (field.min, field.max)
                && min > max
            {
                v.push("min", "greater than max");
            }
        });
    }
    if let Some(http) = &form.on_submit {
        v.within("on_submit.", |v| validate_http(v, http, previous_auth));
        for (i, m) in http.response_mapping.iter().enumerate() {
            if names.contains(m.name.as_str()) {
                v.push(
                    format!("on_submit.response_mapping[{i}]"),
                    "a form field has this name; outputs would clash",
                );
            }
        }
    }
}

fn validate_button(v: &mut Violations, button: &ButtonSpec, previous_auth: StoredAuth<'_>) {
    if button.label.trim().is_empty() {
        v.push("label", "required");
    }
    v.max_bytes("label", &button.label, limits::LABEL_BYTES);
    match (&button.on_click, button.open_url.is_empty()) {
        (Some(_), false) => v.push(
            "open_url",
            "either a URL to open or a request on click, not both",
        ),
        (None, true) => v.push("open_url", "either a URL to open or a request on click"),
        (Some(http), true) => v.within("on_click.", |v| validate_http(v, http, previous_auth)),
        (None, false) => {
            if button.open_url.len() > super::limits::URL_BYTES {
                v.push(
                    "open_url",
                    format!("at most {} bytes", super::limits::URL_BYTES),
                );
            } else if !(button.open_url.starts_with("https://")
                || button.open_url.starts_with("http://"))
            {
                v.push("open_url", "must start with https:// or http://");
            } else {
                v.template("open_url", Renderer::default().variables(&button.open_url));
            }
        }
    }
}

fn validate_update_conversation(v: &mut Violations, update: &UpdateConversationSpec) {
    let renderer = Renderer::default();
    let status = update.status.trim();
    if update.status.is_empty()
        && update.set_metafields.is_empty()
        && update.remove_metafields.is_empty()
    {
        v.push("status", "set a status, metafields or metafields to remove");
    }
    if status.contains("{{") {
        v.template("status", renderer.variables(status));
    } else if !status.is_empty() && !CONVERSATION_STATUSES.contains(&status) {
        v.push(
            "status",
            format!("one of {}", CONVERSATION_STATUSES.join(", ")),
        );
    }
    if update.set_metafields.len() > limits::METAFIELDS
        || update.remove_metafields.len() > limits::METAFIELDS
    {
        v.push(
            "set_metafields",
            format!(
                "at most {} to set and {} to remove",
                limits::METAFIELDS,
                limits::METAFIELDS
            ),
        );
    }
    for (key, value) in &update.set_metafields {
        let field = format!("set_metafields[{key}]");
        if !valid_key(key) {
            v.push(field.clone(), metafield_key_rule());
        }
        v.max_bytes(&field, value, super::limits::HEADER_VALUE_BYTES);
        v.template(&field, renderer.variables(value));
    }
    for (i, key) in update.remove_metafields.iter().enumerate() {
        if !valid_key(key) {
            v.push(format!("remove_metafields[{i}]"), metafield_key_rule());
        }
        if update.set_metafields.contains_key(key) {
            v.push(
                format!("remove_metafields[{i}]"),
                "also set by set_metafields",
            );
        }
    }
}

fn valid_key(key: &str) -> bool {
    (1..=limits::METAFIELD_KEY_CHARS).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn metafield_key_rule() -> String {
    format!(
        "1 to {} of a-z, A-Z, 0-9, `_`, `-` and `.`",
        limits::METAFIELD_KEY_CHARS
    )
}

fn validate_connexease(v: &mut Violations, spec: &ConnexeaseSpec) {
    let renderer = Renderer::default();
    let Some((_, accepted)) = CONNEXEASE_OPERATIONS
        .iter()
        .find(|(name, _)| *name == spec.operation)
    else {
        v.push(
            "operation",
            format!(
                "one of {}",
                CONNEXEASE_OPERATIONS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return;
    };
    if spec.arguments.len() > limits::ARGUMENTS {
        v.push("arguments", format!("at most {}", limits::ARGUMENTS));
    }
    // Any operation may name Connexease's conversation, to link ours on first use.
    let takes = |name: &str| {
        name == "external_conversation_id"
            || accepted.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => name.strip_prefix(prefix).is_some_and(valid_key),
                None => *a == name,
            })
    };
    for (name, value) in &spec.arguments {
        let field = format!("arguments[{name}]");
        if !takes(name) {
            v.push(
                field.clone(),
                format!(
                    "{} takes {}",
                    spec.operation,
                    if accepted.is_empty() {
                        "no arguments".to_owned()
                    } else {
                        accepted.join(", ")
                    }
                ),
            );
        }
        v.max_bytes(&field, value, super::limits::HEADER_VALUE_BYTES);
        v.template(&field, renderer.variables(value));
    }
    let needs_one = match spec.operation.as_str() {
        "assign_group" => Some("group"),
        "assign_agent" => Some("agent_email"),
        "set_conversation_fields" | "set_customer_fields" => Some("fields.<name>"),
        "update_customer" => Some("name, email, phone or social.<network>"),
        _ => None,
    };
    if let Some(needed) = needs_one
        && spec.arguments.is_empty()
    {
        v.push("arguments", format!("{} needs {needed}", spec.operation));
    }
}

fn validate_calculation(v: &mut Violations, spec: &CalculationSpec) {
    let renderer = Renderer::default();
    if spec.outputs.is_empty() || spec.outputs.len() > limits::CALCULATIONS {
        v.push(
            "outputs",
            format!("1 to {} calculations", limits::CALCULATIONS),
        );
    }
    let mut earlier = BTreeSet::new();
    for (i, calculation) in spec.outputs.iter().enumerate() {
        let field = format!("outputs[{i}]");
        if !valid_name(&calculation.name) {
            v.push(
                format!("{field}.name"),
                "a letter, then up to 63 of a-z, 0-9 and `_`",
            );
        }
        if calculation.expression.len() > limits::EXPRESSION_BYTES {
            v.push(
                format!("{field}.expression"),
                format!("at most {} bytes", limits::EXPRESSION_BYTES),
            );
            continue;
        }
        let variables = renderer.expression_variables(&calculation.expression);
        if let Ok(variables) = &variables {
            for variable in variables {
                if let Some(name) = variable.strip_prefix("outputs.") {
                    let name = name.split('.').next().unwrap_or_default();
                    if !earlier.contains(name) {
                        v.push(
                            format!("{field}.expression"),
                            format!("`outputs.{name}` is not an earlier calculation"),
                        );
                    }
                }
            }
        }
        v.extra_namespaces.push("outputs");
        v.template(&format!("{field}.expression"), variables);
        v.extra_namespaces.pop();
        if !earlier.insert(calculation.name.as_str()) {
            v.push(format!("{field}.name"), "another calculation has this name");
        }
    }
}

fn validate_rules(v: &mut Violations, spec: &ValidationSpec) {
    if spec.rules.is_empty() || spec.rules.len() > limits::RULES {
        v.push("rules", format!("1 to {} rules", limits::RULES));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        v.within(&format!("rules[{i}]."), |v| {
            let namespace = rule.field.split('.').next().unwrap_or_default();
            if rule.field.is_empty()
                || rule.field.len() > 256
                || !rule.field.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
            {
                v.push("field", "a variable path such as `input.email`");
            } else if !super::VARIABLE_NAMESPACES.contains(&namespace) {
                v.push(
                    "field",
                    format!(
                        "unknown variable namespace `{namespace}`; known: {}",
                        super::VARIABLE_NAMESPACES.join(", ")
                    ),
                );
            }
            v.max_bytes("message", &rule.message, limits::LABEL_BYTES);
            match rule.rule.as_str() {
                "regex" => check_regex(v, "pattern", &rule.pattern),
                "range" | "length" if rule.min.is_none() && rule.max.is_none() => {
                    v.push("min", "a range needs min, max or both")
                }
                "one_of" if rule.options.is_empty() => v.push("options", "the allowed values"),
                rule_name if !VALIDATION_RULES.contains(&rule_name) => {
                    v.push("rule", format!("one of {}", VALIDATION_RULES.join(", ")))
                }
                _ => {}
            }
            if rule.options.len() > limits::OPTIONS {
                v.push("options", format!("at most {}", limits::OPTIONS));
            }
            if let (Some(min), Some(max)) = (rule.min, rule.max)
                && min > max
            {
                v.push("min", "greater than max");
            }
        });
    }
}

fn validate_query(v: &mut Violations, spec: &DatabaseQuerySpec) {
    if !valid_name(&spec.connection) {
        v.push(
            "connection",
            "the name of a connection the operator configured (SWITCHBOARD_QUERY_DATABASES)",
        );
    }
    let statement = spec.statement.trim().trim_end_matches(';').trim_end();
    let first_word = statement
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if spec.statement.len() > limits::STATEMENT_BYTES {
        v.push(
            "statement",
            format!("at most {} bytes", limits::STATEMENT_BYTES),
        );
    } else if !(first_word == "select" || first_word == "with") {
        v.push(
            "statement",
            "one read-only SELECT (or WITH ... SELECT) statement",
        );
    } else if statement.contains(';') {
        v.push("statement", "one statement only");
    }
    if statement.contains("{{") {
        v.push(
            "statement",
            "values are never interpolated into SQL: use $1, $2, ... and `parameters`",
        );
    }
    if spec.parameters.len() > limits::PARAMETERS {
        v.push("parameters", format!("at most {}", limits::PARAMETERS));
    }
    let highest = placeholders(statement);
    if highest > spec.parameters.len() {
        v.push(
            "parameters",
            format!(
                "the statement uses ${highest} but {} parameters are given",
                spec.parameters.len()
            ),
        );
    }
    let renderer = Renderer::default();
    for (i, parameter) in spec.parameters.iter().enumerate() {
        let field = format!("parameters[{i}]");
        v.max_bytes(&field, parameter, super::limits::HEADER_VALUE_BYTES);
        v.template(&field, renderer.variables(parameter));
    }
    if spec.max_rows > limits::ROWS_MAX {
        v.push(
            "max_rows",
            format!(
                "1 to {}, or 0 for {}",
                limits::ROWS_MAX,
                limits::ROWS_DEFAULT
            ),
        );
    }
    if spec.timeout_ms > limits::QUERY_TIMEOUT_MS_MAX {
        v.push(
            "timeout_ms",
            format!(
                "1 to {} ms, or 0 for {}",
                limits::QUERY_TIMEOUT_MS_MAX,
                limits::QUERY_TIMEOUT_MS_DEFAULT
            ),
        );
    }
    if spec.response_mapping.len() > super::limits::MAPPINGS {
        v.push(
            "response_mapping",
            format!("at most {}", super::limits::MAPPINGS),
        );
    }
    for (i, m) in spec.response_mapping.iter().enumerate() {
        match mapping(m) {
            Ok(mapping) => {
                if let Err(e) = mapping.validate() {
                    v.push(format!("response_mapping[{i}]"), e.to_string());
                }
            }
            Err(reason) => v.push(format!("response_mapping[{i}]"), reason),
        }
    }
}

/// The highest `$n` placeholder in a statement.
pub fn placeholders(statement: &str) -> usize {
    let bytes = statement.as_bytes();
    let mut highest = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits: String = statement[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                highest = highest.max(n);
            }
            i += 1 + digits.len();
        } else {
            i += 1;
        }
    }
    highest
}

fn validate_workflow(v: &mut Violations, spec: &WorkflowSpec) {
    if !valid_name(&spec.workflow) {
        v.push("workflow", "the action workflow's name");
    }
    if spec.inputs.len() > limits::ARGUMENTS {
        v.push("inputs", format!("at most {}", limits::ARGUMENTS));
    }
    let renderer = Renderer::default();
    for (name, value) in &spec.inputs {
        let field = format!("inputs[{name}]");
        if !valid_name(name) {
            v.push(
                field.clone(),
                "an input name: a letter, then a-z, 0-9 and `_`",
            );
        }
        v.max_bytes(&field, value, super::limits::HEADER_VALUE_BYTES);
        v.template(&field, renderer.variables(value));
    }
    if spec.timeout_ms > limits::WORKFLOW_TIMEOUT_MS_MAX {
        v.push(
            "timeout_ms",
            format!(
                "1 to {} ms, or 0 for {}",
                limits::WORKFLOW_TIMEOUT_MS_MAX,
                limits::WORKFLOW_TIMEOUT_MS_DEFAULT
            ),
        );
    }
}

fn check_regex(v: &mut Violations, field: &str, pattern: &str) {
    if pattern.len() > limits::PATTERN_BYTES {
        v.push(field, format!("at most {} bytes", limits::PATTERN_BYTES));
        return;
    }
    if let Err(e) = compile_regex(pattern) {
        v.push(field, format!("not a valid regular expression: {e}"));
    }
}

/// A pattern anchored to the whole value, with its compiled size bounded.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(limits::REGEX_SIZE)
        .build()
}
