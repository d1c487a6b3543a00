//! The connection's checks and the resolution of an operation against the directory: names
//! become ids, values take the type of their field, and every reference is checked with a
//! specific error. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use switchboard_proto::connexease::v1::{AuthScheme, Connection, Directory};

pub mod limits {
    pub const URL_BYTES: usize = 2048;
    pub const TOKEN_BYTES: usize = 4096;
    pub const WEBHOOK_SECRET_MIN: usize = 16;
    pub const WEBHOOK_SECRET_MAX: usize = 256;
    pub const RATE_DEFAULT: u32 = 20;
    /// Our own ceiling: Connexease publishes no rate limit for its REST API (the 80
    /// requests a second sometimes quoted is its WhatsApp gateway's, another product).
    pub const RATE_MAX: u32 = 80;
    pub const USERNAME_BYTES: usize = 254;
    pub const PASSWORD_BYTES: usize = 1024;
    pub const ARGUMENTS: usize = 50;
    pub const VALUE_BYTES: usize = 4096;
    pub const TAGS: usize = 50;
}

pub const OPERATIONS: [&str; 8] = [
    "assign_group",
    "assign_agent",
    "auto_assign",
    "archive",
    "unarchive",
    "set_conversation_fields",
    "update_customer",
    "set_customer_fields",
];

pub use switchboard_contract::event_types::connexease as event_types;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

fn violation(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// Checks a connection as given; `previous` is the stored one (its secrets are kept when
/// none are given).
pub fn validate_connection(
    connection: &Connection,
    previous: Option<&Connection>,
) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    let url = connection.base_url.trim();
    if url.len() > limits::URL_BYTES {
        v.push(violation(
            "base_url",
            format!("at most {} bytes", limits::URL_BYTES),
        ));
    } else if !(url.starts_with("https://") || url.starts_with("http://")) {
        v.push(violation(
            "base_url",
            "an https:// URL (http:// only for hosts the operator allows)",
        ));
    } else if url::Url::parse(url).is_err() {
        v.push(violation("base_url", "not a URL"));
    }
    let had = |f: fn(&Connection) -> bool| previous.is_some_and(|p| p.connected && f(p));
    let jwt = connection.auth_scheme() == AuthScheme::Jwt;
    if jwt {
        let username = connection.username.trim();
        if username.is_empty() || username.len() > limits::USERNAME_BYTES {
            v.push(violation(
                "username",
                format!(
                    "required with AUTH_SCHEME_JWT: the account's username, at most {} bytes",
                    limits::USERNAME_BYTES
                ),
            ));
        }
        if connection.password.is_empty() && !had(|p| !p.sealed_password.is_empty()) {
            v.push(violation(
                "password",
                "required with AUTH_SCHEME_JWT: the account's password",
            ));
        }
        if connection.password.len() > limits::PASSWORD_BYTES {
            v.push(violation(
                "password",
                format!("at most {} bytes", limits::PASSWORD_BYTES),
            ));
        }
    } else if connection.access_token.is_empty() && !had(|p| !p.sealed_access_token.is_empty()) {
        v.push(violation(
            "access_token",
            "required: the account access token",
        ));
    }
    if connection.access_token.len() > limits::TOKEN_BYTES
        || connection.access_token.contains(char::is_whitespace)
    {
        v.push(violation(
            "access_token",
            format!("at most {} bytes, no spaces", limits::TOKEN_BYTES),
        ));
    }
    if connection.webhook_secret.is_empty() && !had(|p| !p.sealed_webhook_secret.is_empty()) {
        v.push(violation(
            "webhook_secret",
            "required: it verifies Connexease's webhooks",
        ));
    }
    if !connection.webhook_secret.is_empty()
        && !(limits::WEBHOOK_SECRET_MIN..=limits::WEBHOOK_SECRET_MAX)
            .contains(&connection.webhook_secret.len())
    {
        v.push(violation(
            "webhook_secret",
            format!(
                "{} to {} bytes",
                limits::WEBHOOK_SECRET_MIN,
                limits::WEBHOOK_SECRET_MAX
            ),
        ));
    }
    if connection.rate_limit_per_second > limits::RATE_MAX {
        v.push(violation(
            "rate_limit_per_second",
            format!("at most {}", limits::RATE_MAX),
        ));
    }
    v
}

/// Who a conversation is assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignTo {
    Group(String),
    Agent(String),
    /// The next available agent, optionally within a group.
    Auto(Option<String>),
}

/// An operation resolved against the directory, ready to call.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Assign(AssignTo),
    Archive(bool),
    ConversationFields(BTreeMap<String, Json>),
    /// `{"name", "email", "phone", "social": {...}}`, only what was given.
    UpdateCustomer(Json),
    CustomerFields(BTreeMap<String, Json>),
}

impl Plan {
    /// Whether the plan acts on the customer rather than the conversation.
    pub fn on_customer(&self) -> bool {
        matches!(self, Plan::UpdateCustomer(_) | Plan::CustomerFields(_))
    }
}

/// Arguments every operation may take besides its own.
pub const COMMON_ARGUMENTS: [&str; 1] = ["external_conversation_id"];

/// Resolves `operation` with its rendered `arguments` against `directory`: every group,
/// agent and field must exist there, and every value fit its field. The checks that need
/// no directory ([`check_operation`]) run first, so every violation is named at once.
pub fn resolve(
    directory: &Directory,
    operation: &str,
    arguments: &BTreeMap<String, String>,
) -> Result<Plan, Vec<FieldViolation>> {
    let mut v = Vec::new();
    check_operation(operation, arguments, &mut v);
    match plan(directory, operation, arguments, &mut v) {
        Some(plan) if v.is_empty() => Ok(plan),
        _ => Err(v),
    }
}

/// Checks what an operation's request holds by itself, needing no directory: the
/// operation exists, it is given only the arguments it takes and the ones it needs, and
/// every value is short enough. Pushed into `v` so a caller can name these beside the
/// request's other mistakes before anything is loaded.
pub fn check_operation(
    operation: &str,
    arguments: &BTreeMap<String, String>,
    v: &mut Vec<FieldViolation>,
) {
    if arguments.len() > limits::ARGUMENTS {
        v.push(violation(
            "arguments",
            format!("at most {}", limits::ARGUMENTS),
        ));
    }
    for (name, value) in arguments {
        if value.len() > limits::VALUE_BYTES {
            v.push(violation(
                format!("arguments[{name}]"),
                format!("at most {} bytes", limits::VALUE_BYTES),
            ));
        }
    }
    let Some(taken) = takes(operation) else {
        v.push(violation(
            "operation",
            format!("`{operation}` is not one of {}", OPERATIONS.join(", ")),
        ));
        return;
    };
    for name in arguments.keys() {
        if !COMMON_ARGUMENTS.contains(&name.as_str()) && !accepts(operation, name) {
            v.push(violation(
                format!("arguments[{name}]"),
                format!("{operation} takes {taken}"),
            ));
        }
    }
    check_needed(operation, arguments, v);
}

/// What `operation` takes besides [`COMMON_ARGUMENTS`], as its violations say it; `None`
/// for an operation that does not exist.
fn takes(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "assign_group" => "group",
        "assign_agent" => "agent_email",
        "auto_assign" => "an optional group",
        "archive" | "unarchive" => "no arguments",
        "set_conversation_fields" | "set_customer_fields" => "fields.<key>",
        "update_customer" => "name, email, phone and social.<network>",
        _ => return None,
    })
}

/// Whether `operation` takes the argument `name` (besides [`COMMON_ARGUMENTS`]).
fn accepts(operation: &str, name: &str) -> bool {
    match operation {
        "assign_group" | "auto_assign" => name == "group",
        "assign_agent" => name == "agent_email",
        "set_conversation_fields" | "set_customer_fields" => name.starts_with("fields."),
        "update_customer" => {
            ["name", "email", "phone"].contains(&name)
                || name.strip_prefix("social.").is_some_and(|s| !s.is_empty())
        }
        _ => false,
    }
}

/// The argument `name`, trimmed, when it holds something.
fn named<'a>(arguments: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    arguments
        .get(name)
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
}

/// The arguments `operation` cannot do without, and the values that are wrong whatever the
/// directory holds.
fn check_needed(
    operation: &str,
    arguments: &BTreeMap<String, String>,
    v: &mut Vec<FieldViolation>,
) {
    let any_accepted = arguments.keys().any(|name| accepts(operation, name));
    match operation {
        "assign_group" if named(arguments, "group").is_none() => {
            v.push(violation(
                "arguments[group]",
                "required: the group's name or id",
            ));
        }
        "assign_agent" if named(arguments, "agent_email").is_none() => {
            v.push(violation(
                "arguments[agent_email]",
                "required: the agent's email",
            ));
        }
        "set_conversation_fields" | "set_customer_fields" if !any_accepted => {
            v.push(violation(
                "arguments",
                format!("{operation} needs fields.<key>"),
            ));
        }
        "update_customer" => {
            if let Some(email) = arguments.get("email")
                && !email_address::EmailAddress::is_valid(email.trim())
            {
                v.push(violation(
                    "arguments[email]",
                    format!("`{email}` is not an email address"),
                ));
            }
            if !any_accepted {
                v.push(violation(
                    "arguments",
                    "update_customer needs name, email, phone or social.<network>",
                ));
            }
        }
        _ => {}
    }
}

/// The plan of an operation [`check_operation`] passed, its references looked up in
/// `directory` (each one missing named in `v`); `None` when there is nothing to plan.
fn plan(
    directory: &Directory,
    operation: &str,
    arguments: &BTreeMap<String, String>,
    v: &mut Vec<FieldViolation>,
) -> Option<Plan> {
    match operation {
        "assign_group" => {
            let id = group(directory, named(arguments, "group")?, v)?;
            Some(Plan::Assign(AssignTo::Group(id)))
        }
        "assign_agent" => {
            let id = agent(directory, named(arguments, "agent_email")?, v)?;
            Some(Plan::Assign(AssignTo::Agent(id)))
        }
        "auto_assign" => match named(arguments, "group") {
            Some(name) => {
                let id = group(directory, name, v)?;
                Some(Plan::Assign(AssignTo::Auto(Some(id))))
            }
            None => Some(Plan::Assign(AssignTo::Auto(None))),
        },
        "archive" | "unarchive" => Some(Plan::Archive(operation == "archive")),
        "set_conversation_fields" => {
            let typed = fields(directory, "conversation", arguments, v);
            Some(Plan::ConversationFields(typed))
        }
        "set_customer_fields" => {
            let typed = fields(directory, "customer", arguments, v);
            Some(Plan::CustomerFields(typed))
        }
        "update_customer" => Some(Plan::UpdateCustomer(customer_update(arguments))),
        _ => None,
    }
}

/// The id of the group named (or identified) `name`.
fn group(directory: &Directory, name: &str, v: &mut Vec<FieldViolation>) -> Option<String> {
    let found = directory
        .groups
        .iter()
        .find(|g| g.id == name || g.name.eq_ignore_ascii_case(name));
    if found.is_none() {
        v.push(violation(
            "arguments[group]",
            format!("group `{name}` does not exist in Connexease"),
        ));
    }
    found.map(|g| g.id.clone())
}

/// The id of the agent whose email is `email`.
fn agent(directory: &Directory, email: &str, v: &mut Vec<FieldViolation>) -> Option<String> {
    let found = directory
        .agents
        .iter()
        .find(|a| a.email.eq_ignore_ascii_case(email));
    if found.is_none() {
        v.push(violation(
            "arguments[agent_email]",
            format!("agent `{email}` does not exist in Connexease"),
        ));
    }
    found.map(|a| a.id.clone())
}

/// The `fields.<key>` arguments as values of the `scope`'s fields, each typed as its field
/// is (tags become a list).
fn fields(
    directory: &Directory,
    scope: &str,
    arguments: &BTreeMap<String, String>,
    v: &mut Vec<FieldViolation>,
) -> BTreeMap<String, Json> {
    let mut fields = BTreeMap::new();
    for (name, value) in arguments {
        let Some(key) = name.strip_prefix("fields.") else {
            continue;
        };
        let Some(field) = directory
            .fields
            .iter()
            .find(|f| f.key == key && f.scope == scope)
        else {
            v.push(violation(
                format!("arguments[{name}]"),
                format!("{scope} field `{key}` does not exist in Connexease"),
            ));
            continue;
        };
        let typed = if field.r#type == "tags" {
            let tags: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            if tags.len() > limits::TAGS {
                v.push(violation(
                    format!("arguments[{name}]"),
                    format!("at most {} tags", limits::TAGS),
                ));
            }
            json!(tags)
        } else {
            json!(value)
        };
        fields.insert(key.to_owned(), typed);
    }
    fields
}

/// `{"name", "email", "phone", "social": {...}}`, only what was given.
fn customer_update(arguments: &BTreeMap<String, String>) -> Json {
    let mut update = serde_json::Map::new();
    let mut social = serde_json::Map::new();
    for (name, value) in arguments {
        match name.as_str() {
            "name" | "email" | "phone" => {
                update.insert(name.clone(), json!(value.trim()));
            }
            other => {
                if let Some(network) = other.strip_prefix("social.") {
                    social.insert(network.to_owned(), json!(value.trim()));
                }
            }
        }
    }
    if !social.is_empty() {
        update.insert("social".into(), Json::Object(social));
    }
    Json::Object(update)
}

#[cfg(test)]
mod tests {
    use switchboard_proto::connexease::v1::{Agent, CustomField, Group};

    use super::*;

    fn directory() -> Directory {
        Directory {
            groups: vec![Group {
                id: "grp_1".into(),
                name: "Billing".into(),
            }],
            agents: vec![Agent {
                id: "agt_1".into(),
                email: "ada@shop.example".into(),
                ..Default::default()
            }],
            fields: vec![
                CustomField {
                    key: "topics".into(),
                    r#type: "tags".into(),
                    scope: "conversation".into(),
                    ..Default::default()
                },
                CustomField {
                    key: "tier".into(),
                    r#type: "text".into(),
                    scope: "customer".into(),
                    ..Default::default()
                },
            ],
            synced_at: None,
        }
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_resolve_to_ids_and_values_to_their_field_type() {
        let d = directory();
        assert_eq!(
            resolve(&d, "assign_group", &args(&[("group", "billing")])),
            Ok(Plan::Assign(AssignTo::Group("grp_1".into())))
        );
        assert_eq!(
            resolve(
                &d,
                "assign_agent",
                &args(&[("agent_email", "ADA@shop.example")])
            ),
            Ok(Plan::Assign(AssignTo::Agent("agt_1".into())))
        );
        assert_eq!(
            resolve(
                &d,
                "set_conversation_fields",
                &args(&[("fields.topics", "refund, late ,")])
            ),
            Ok(Plan::ConversationFields(
                [("topics".to_owned(), json!(["refund", "late"]))].into()
            ))
        );
    }

    #[test]
    fn every_bad_reference_is_named() {
        let d = directory();
        let errors = |op: &str, a: &[(&str, &str)]| -> Vec<String> {
            resolve(&d, op, &args(a))
                .unwrap_err()
                .into_iter()
                .map(|v| v.description)
                .collect()
        };
        assert_eq!(
            errors("assign_group", &[("group", "sales")]),
            ["group `sales` does not exist in Connexease"]
        );
        assert_eq!(
            errors("assign_agent", &[("agent_email", "zed@x.example")]),
            ["agent `zed@x.example` does not exist in Connexease"]
        );
        assert_eq!(
            errors("set_conversation_fields", &[("fields.tier", "gold")]),
            ["conversation field `tier` does not exist in Connexease"]
        );
        assert_eq!(
            errors("archive", &[("group", "x")]),
            ["archive takes no arguments"]
        );
        assert_eq!(
            errors("update_customer", &[("email", "nope")]),
            ["`nope` is not an email address"]
        );
        assert_eq!(errors("explode", &[]).len(), 1);
    }

    #[test]
    fn what_needs_no_directory_is_checked_without_one() {
        let fields = |op: &str, a: &[(&str, &str)]| -> Vec<String> {
            let mut v = Vec::new();
            check_operation(op, &args(a), &mut v);
            v.into_iter().map(|v| v.field).collect()
        };
        assert_eq!(
            fields("assign_group", &[("agent_email", "ada@shop.example")]),
            ["arguments[agent_email]", "arguments[group]"]
        );
        assert_eq!(
            fields("update_customer", &[("email", "nope"), ("colour", "red")]),
            ["arguments[colour]", "arguments[email]"]
        );
        assert_eq!(
            fields("set_customer_fields", &[("external_conversation_id", "c1")]),
            ["arguments"]
        );
        assert_eq!(fields("explode", &[]), ["operation"]);
        // Whether a group exists only the directory knows.
        assert!(fields("assign_group", &[("group", "sales")]).is_empty());
    }
}
