//! The action aggregate: a definition, validated as a whole and versioned with every
//! change. Pure: no I/O, no clock (time comes in as an argument), no keys (the command
//! handler seals secrets after validation).

use std::collections::BTreeSet;

use prost::Message as _;
use switchboard_eventlog::{EventLogError, RecordedEvent};
use switchboard_proto::actions::v1::{
    ActionChanged, ActionDefinition, ActionKind, AuthKind, BatchSpec, HttpAuth, HttpSpec,
    PermissionLevel, ResponseMapping, RetryPolicy,
};
use switchboard_template::{Kind, Mapping, Renderer};

pub mod compute;
pub mod integration;
pub mod kinds;

pub use kinds::{CONNEXEASE_OPERATIONS, CONVERSATION_STATUSES, VALIDATION_RULES};

pub mod limits {
    pub const NAME_CHARS: usize = 64;
    pub const DESCRIPTION_BYTES: usize = 1024;
    pub const EXAMPLES: usize = 10;
    pub const EXAMPLE_BYTES: usize = 512;
    pub const SCHEMA_BYTES: usize = 64 * 1024;
    pub const URL_BYTES: usize = 2048;
    pub const HEADERS: usize = 50;
    pub const HEADER_VALUE_BYTES: usize = 4096;
    pub const BODY_BYTES: usize = 64 * 1024;
    pub const TIMEOUT_MS_DEFAULT: u32 = 10_000;
    pub const TIMEOUT_MS_MAX: u32 = 120_000;
    pub const ATTEMPTS_MAX: u32 = 5;
    pub const BACKOFF_MS_MAX: u32 = 60_000;
    pub const RATE_PER_MINUTE_MAX: u32 = 10_000;
    pub const CACHE_TTL_MAX: u32 = 86_400;
    pub const MAPPINGS: usize = 50;
    pub const SECRET_BYTES: usize = 8 * 1024;
    pub const BATCH_WINDOW_MS_DEFAULT: u32 = 20;
    pub const BATCH_WINDOW_MS_MAX: u32 = 1_000;
    pub const BATCH_SIZE_DEFAULT: u32 = 50;
    pub const BATCH_SIZE_MAX: u32 = 100;
}

/// Namespaces a template may read: what the flow runtime provides when it runs an action.
pub const VARIABLE_NAMESPACES: [&str; 10] = [
    "conversation",
    "message",
    "lead",
    "agent",
    "session",
    "nodes",
    "input",
    "analysis",
    "secure",
    "workspace",
];

/// What an action's sealed auth secret is bound to (its associated data): its workspace,
/// action and purpose. Sealing (the command handler) and opening (execution) must agree.
pub fn secret_owner(workspace_id: &str, action_id: &str) -> String {
    format!("{workspace_id}/action/{action_id}/auth")
}

pub use switchboard_contract::event_types::actions as event_types;

/// One invalid field of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid definition: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error(
        "{code}: action not found",
        code = switchboard_runtime::codes::ACT_NOT_FOUND.id
    )]
    NotFound,
    #[error(
        "{code}: the action already exists",
        code = switchboard_runtime::codes::ACT_ALREADY_EXISTS.id
    )]
    AlreadyExists,
    #[error(
        "{code}: the action is at version {actual}, not {expected}",
        code = switchboard_runtime::codes::ACT_STALE_VERSION.id
    )]
    StaleVersion { expected: u64, actual: u64 },
    #[error(
        "{code}: integration not found",
        code = switchboard_runtime::codes::ACT_INTEGRATION_NOT_FOUND.id
    )]
    IntegrationNotFound,
    #[error(
        "{code}: the integration is used by {}; point them elsewhere or delete them first",
        .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
        code = switchboard_runtime::codes::ACT_INTEGRATION_IN_USE.id
    )]
    IntegrationInUse(Vec<String>),
}

/// What a caller asks of an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `definition` carries any secret in plain text; it has been sealed into
    /// `auth.sealed_secret` by the handler before `decide`.
    Create {
        definition: ActionDefinition,
    },
    Update {
        definition: ActionDefinition,
        expected_version: Option<u64>,
    },
    SetEnabled {
        enabled: bool,
    },
    /// Ends the action: later commands on it answer `NotFound`; its executions stay.
    Delete,
}

/// A decided change: its event type and the definition as it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event_type: &'static str,
    pub definition: ActionDefinition,
}

impl Change {
    pub fn payload(&self) -> Vec<u8> {
        ActionChanged {
            definition: Some(self.definition.clone()),
        }
        .encode_to_vec()
    }
}

/// Whether `event` ends its action (its definition is the one deleted).
pub fn is_deletion(event: &RecordedEvent) -> bool {
    event.event_type == event_types::DELETED
}

/// The definition stored in `event`, or `None` for a type this code does not know. For
/// `action.deleted` it is the definition as it was deleted ([`is_deletion`]).
pub fn decode(event: &RecordedEvent) -> Result<Option<ActionDefinition>, EventLogError> {
    if !event_types::ALL.contains(&event.event_type.as_str()) {
        return Ok(None);
    }
    Ok(event.decode::<ActionChanged>()?.definition)
}

/// Decides `command` against the current definition (`None`: no such action) at `now`
/// (microseconds). `None` means nothing changes.
pub fn decide(
    current: Option<&ActionDefinition>,
    command: Command,
    now: i64,
) -> Result<Option<Change>, DomainError> {
    let at = Some(timestamp(now));
    match (current, command) {
        (Some(_), Command::Create { .. }) => Err(DomainError::AlreadyExists),
        (None, Command::Create { mut definition }) => {
            validate(&definition, Previous::None)?;
            normalize(&mut definition);
            definition.enabled = true;
            definition.version = 1;
            definition.created_at = at;
            definition.updated_at = at;
            Ok(Some(Change {
                event_type: event_types::CREATED,
                definition,
            }))
        }
        (None, _) => Err(DomainError::NotFound),
        (
            Some(current),
            Command::Update {
                mut definition,
                expected_version,
            },
        ) => {
            if let Some(expected) = expected_version.filter(|v| *v != current.version) {
                return Err(DomainError::StaleVersion {
                    expected,
                    actual: current.version,
                });
            }
            definition.id = current.id.clone();
            definition.workspace_id = current.workspace_id.clone();
            definition.enabled = current.enabled;
            validate(&definition, Previous::Stored(current))?;
            normalize(&mut definition);
            definition.version = current.version + 1;
            definition.created_at = current.created_at;
            definition.updated_at = at;
            Ok(Some(Change {
                event_type: event_types::UPDATED,
                definition,
            }))
        }
        (Some(current), Command::SetEnabled { enabled }) => {
            if current.enabled == enabled {
                return Ok(None);
            }
            let mut definition = current.clone();
            definition.enabled = enabled;
            definition.version += 1;
            definition.updated_at = at;
            Ok(Some(Change {
                event_type: if enabled {
                    event_types::ENABLED
                } else {
                    event_types::DISABLED
                },
                definition,
            }))
        }
        (Some(current), Command::Delete) => {
            let mut definition = current.clone();
            definition.version += 1;
            definition.updated_at = at;
            Ok(Some(Change {
                event_type: event_types::DELETED,
                definition,
            }))
        }
    }
}

/// The definition as callers see it: no secret, sealed or not.
pub fn public_view(mut definition: ActionDefinition) -> ActionDefinition {
    if let Some(auth) = request_spec_mut(&mut definition).and_then(|h| h.auth.as_mut()) {
        auth.secret_set = !auth.sealed_secret.is_empty();
        auth.secret.clear();
        auth.sealed_secret.clear();
    }
    definition
}

/// Fills defaults so a stored definition says exactly how it runs.
fn normalize(definition: &mut ActionDefinition) {
    if definition.input_schema.trim().is_empty()
        && let Some(form) = &definition.form
    {
        definition.input_schema = kinds::form_schema(form).to_string();
    }
    if definition.input_schema.trim().is_empty() {
        definition.input_schema = r#"{"type":"object","properties":{}}"#.into();
    }
    if definition.permission_level == 0 {
        definition.permission_level = PermissionLevel::Agent as i32;
    }
    kinds::normalize(definition);
    if let Some(http) = request_spec_mut(definition) {
        http.method = http.method.to_ascii_uppercase();
        if http.timeout_ms == 0 {
            http.timeout_ms = limits::TIMEOUT_MS_DEFAULT;
        }
        let retry = http.retry.get_or_insert_with(RetryPolicy::default);
        retry.max_attempts = retry.max_attempts.max(1);
        if retry.initial_backoff_ms == 0 {
            retry.initial_backoff_ms = 200;
        }
        if retry.max_backoff_ms == 0 {
            retry.max_backoff_ms = 5_000;
        }
        let auth = http.auth.get_or_insert_with(HttpAuth::default);
        if auth.kind == 0 {
            auth.kind = AuthKind::None as i32;
        }
        // The plain secret never reaches the log; the handler sealed it already.
        auth.secret.clear();
        auth.secret_set = !auth.sealed_secret.is_empty();
        if let Some(batch) = http.batch.as_mut() {
            if batch.window_ms == 0 {
                batch.window_ms = limits::BATCH_WINDOW_MS_DEFAULT;
            }
            if batch.max_size == 0 {
                batch.max_size = limits::BATCH_SIZE_DEFAULT;
            }
            if batch.separator.is_empty() {
                batch.separator = ",".into();
            }
        }
    }
}

/// The stored definition a new one replaces, as far as checking the new one needs it: its
/// auth, whose sealed secret is kept when the new one gives none.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// A creation: nothing was stored.
    None,
    /// An update of this stored definition.
    Stored(&'a ActionDefinition),
    /// An update of a definition not read yet (the checks made before the state is
    /// loaded): a secret may be stored, so a missing one is not a violation here.
    Unknown,
}

/// What a definition's auth may fall back on when it gives no secret.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoredAuth<'a> {
    None,
    Known(&'a HttpAuth),
    Unknown,
}

/// Every violation of a definition at once.
pub fn validate(definition: &ActionDefinition, previous: Previous<'_>) -> Result<(), DomainError> {
    let mut v = Violations::default();
    if !valid_name(&definition.name) {
        v.push(
            "name",
            "required: a letter, then up to 63 of a-z, 0-9 and `_` (it is the agent's tool name)",
        );
    }
    if definition.description.trim().is_empty() {
        v.push(
            "description",
            "required: the agent reads it to decide when to call the action",
        );
    }
    v.max_bytes(
        "description",
        &definition.description,
        limits::DESCRIPTION_BYTES,
    );
    v.max_bytes(
        "when_not_to_use",
        &definition.when_not_to_use,
        limits::DESCRIPTION_BYTES,
    );
    v.max_bytes("trigger", &definition.trigger, limits::DESCRIPTION_BYTES);
    if definition.example_requests.len() > limits::EXAMPLES {
        v.push("example_requests", format!("at most {}", limits::EXAMPLES));
    }
    for (i, example) in definition.example_requests.iter().enumerate() {
        v.max_bytes(
            &format!("example_requests[{i}]"),
            example,
            limits::EXAMPLE_BYTES,
        );
    }
    if PermissionLevel::try_from(definition.permission_level).is_err() {
        v.push(
            "permission_level",
            format!("unknown value {}", definition.permission_level),
        );
    }
    validate_schema(&mut v, &definition.input_schema);
    let previous_auth = match previous {
        Previous::None => StoredAuth::None,
        Previous::Unknown => StoredAuth::Unknown,
        Previous::Stored(stored) => request_spec(stored)
            .and_then(|h| h.auth.as_ref())
            .map_or(StoredAuth::None, StoredAuth::Known),
    };
    match ActionKind::try_from(definition.kind) {
        Ok(ActionKind::Unspecified) => v.push("kind", "required"),
        Ok(kind) => kinds::validate(&mut v, kind, definition, previous_auth),
        Err(_) => v.push("kind", format!("unknown value {}", definition.kind)),
    }
    v.finish()
}

/// The HTTP request an action makes, if it makes one: an `http` action's request, a form's
/// `on_submit`, a button's `on_click`.
pub fn request_spec(definition: &ActionDefinition) -> Option<&HttpSpec> {
    match ActionKind::try_from(definition.kind).ok()? {
        ActionKind::Http => definition.http.as_ref(),
        ActionKind::Form => definition.form.as_ref()?.on_submit.as_ref(),
        ActionKind::Button => definition.button.as_ref()?.on_click.as_ref(),
        _ => None,
    }
}

/// Where [`request_spec`] is in a definition, for naming its fields (`http.url`).
pub fn request_spec_field(definition: &ActionDefinition) -> &'static str {
    match ActionKind::try_from(definition.kind) {
        Ok(ActionKind::Form) => "form.on_submit",
        Ok(ActionKind::Button) => "button.on_click",
        _ => "http",
    }
}

pub fn request_spec_mut(definition: &mut ActionDefinition) -> Option<&mut HttpSpec> {
    match ActionKind::try_from(definition.kind).ok()? {
        ActionKind::Http => definition.http.as_mut(),
        ActionKind::Form => definition.form.as_mut()?.on_submit.as_mut(),
        ActionKind::Button => definition.button.as_mut()?.on_click.as_mut(),
        _ => None,
    }
}

fn validate_schema(v: &mut Violations, schema: &str) {
    if schema.trim().is_empty() {
        return;
    }
    if schema.len() > limits::SCHEMA_BYTES {
        v.push(
            "input_schema",
            format!("at most {} bytes", limits::SCHEMA_BYTES),
        );
        return;
    }
    let parsed: serde_json::Value = match serde_json::from_str(schema) {
        Ok(parsed) => parsed,
        Err(e) => {
            v.push("input_schema", format!("not JSON: {e}"));
            return;
        }
    };
    if parsed.get("type").and_then(|t| t.as_str()) != Some("object") {
        v.push(
            "input_schema",
            "must describe an object (`\"type\": \"object\"`): tools take named parameters",
        );
    }
    if let Err(e) = jsonschema::validator_for(&parsed) {
        v.push("input_schema", format!("not a valid JSON Schema: {e}"));
    }
}

/// Checks a request; fields are named relative to it (`url`, `auth.secret`).
pub(crate) fn validate_http(v: &mut Violations, http: &HttpSpec, previous_auth: StoredAuth<'_>) {
    let renderer = Renderer::default();
    let method = http.method.to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        v.push("method", "one of GET, POST, PUT, PATCH, DELETE");
    }
    let under_integration = !http.integration_id.is_empty();
    if under_integration
        && !switchboard_runtime::requests::valid_prefixed_id(&http.integration_id, "int_")
    {
        v.push(
            "integration_id",
            "`int_` followed by 1 to 64 letters, digits, `_` or `-`",
        );
    }
    if http.url.len() > limits::URL_BYTES {
        v.push("url", format!("at most {} bytes", limits::URL_BYTES));
    } else if under_integration && !http.url.starts_with('/') {
        v.push(
            "url",
            "under an integration, a path starting with `/`, joined to its base URL",
        );
    } else if !(under_integration
        || http.url.starts_with("https://")
        || http.url.starts_with("http://"))
    {
        v.push("url", "must start with https:// or http://");
    } else {
        v.template("url", renderer.variables(&http.url));
    }
    if under_integration
        && http.auth.as_ref().is_some_and(|a| {
            !a.secret.is_empty()
                || !matches!(
                    AuthKind::try_from(a.kind),
                    Ok(AuthKind::None | AuthKind::Unspecified)
                )
        })
    {
        v.push(
            "auth",
            "an action under an integration is sent with the integration's credentials: \
             leave auth unset",
        );
    }
    if http.headers.len() > limits::HEADERS {
        v.push("headers", format!("at most {}", limits::HEADERS));
    }
    for (name, value) in &http.headers {
        let field = format!("headers[{name}]");
        if !valid_header_name(name) {
            v.push(field.clone(), "not a valid header name");
        }
        if value.len() > limits::HEADER_VALUE_BYTES {
            v.push(
                field.clone(),
                format!("at most {} bytes", limits::HEADER_VALUE_BYTES),
            );
        } else {
            v.template(&field, renderer.variables(value));
        }
    }
    if !http.body.trim().is_empty() {
        if http.body.len() > limits::BODY_BYTES {
            v.push("body", format!("at most {} bytes", limits::BODY_BYTES));
        } else {
            match serde_json::from_str::<serde_json::Value>(&http.body) {
                Ok(body) => v.template("body", renderer.json_variables(&body)),
                Err(e) => v.push("body", format!("a JSON template must be JSON: {e}")),
            }
        }
        if method == "GET" || method == "DELETE" {
            v.push("body", format!("{method} requests carry no body"));
        }
    }
    if http.timeout_ms > limits::TIMEOUT_MS_MAX {
        v.push(
            "timeout_ms",
            format!(
                "1 to {} ms, or 0 for {}",
                limits::TIMEOUT_MS_MAX,
                limits::TIMEOUT_MS_DEFAULT
            ),
        );
    }
    if let Some(retry) = &http.retry {
        if retry.max_attempts > limits::ATTEMPTS_MAX {
            v.push(
                "retry.max_attempts",
                format!("at most {}", limits::ATTEMPTS_MAX),
            );
        }
        if retry.initial_backoff_ms > limits::BACKOFF_MS_MAX
            || retry.max_backoff_ms > limits::BACKOFF_MS_MAX
        {
            v.push(
                "retry",
                format!("backoffs of at most {} ms", limits::BACKOFF_MS_MAX),
            );
        }
    }
    if http.rate_limit_per_minute > limits::RATE_PER_MINUTE_MAX {
        v.push(
            "rate_limit_per_minute",
            format!("at most {}", limits::RATE_PER_MINUTE_MAX),
        );
    }
    if http.cache_ttl_seconds > 0 && method != "GET" {
        v.push("cache_ttl_seconds", "only GET responses are cached");
    }
    if http.cache_ttl_seconds > limits::CACHE_TTL_MAX {
        v.push(
            "cache_ttl_seconds",
            format!("at most {} seconds", limits::CACHE_TTL_MAX),
        );
    }
    if http.response_mapping.len() > limits::MAPPINGS {
        v.push("response_mapping", format!("at most {}", limits::MAPPINGS));
    }
    let mut names = BTreeSet::new();
    for (i, m) in http.response_mapping.iter().enumerate() {
        let field = format!("response_mapping[{i}]");
        match mapping(m) {
            Ok(mapping) => {
                if let Err(e) = mapping.validate() {
                    v.push(field.clone(), e.to_string());
                }
            }
            Err(reason) => v.push(field.clone(), reason),
        }
        if !names.insert(&m.name) {
            v.push(field, "duplicate variable name");
        }
    }
    validate_auth(v, http.auth.as_ref(), previous_auth);
    if let Some(batch) = &http.batch {
        if method != "GET" {
            v.push("batch", "only GET lookups are batched");
        }
        if http.cache_ttl_seconds > 0 {
            v.push(
                "batch",
                "a batched action is not cached: set cache_ttl_seconds to 0",
            );
        }
        v.within("batch.", |v| validate_batch(v, batch, under_integration));
    }
}

/// Checks a batch spec; fields are named relative to it.
fn validate_batch(v: &mut Violations, batch: &BatchSpec, under_integration: bool) {
    let renderer = Renderer::default();
    if batch.url.len() > limits::URL_BYTES {
        v.push("url", format!("at most {} bytes", limits::URL_BYTES));
    } else if under_integration && !batch.url.starts_with('/') {
        v.push("url", "under an integration, a path starting with `/`");
    } else if !(under_integration
        || batch.url.starts_with("https://")
        || batch.url.starts_with("http://"))
    {
        v.push("url", "must start with https:// or http://");
    } else {
        let variables = renderer.variables(&batch.url);
        if let Ok(found) = &variables
            && !found.contains("batch.keys")
        {
            v.push("url", "must place the keys: `{{ batch.keys }}`");
        }
        v.extra_namespaces.push("batch");
        v.template("url", variables);
        v.extra_namespaces.pop();
    }
    if batch.key.trim().is_empty() {
        v.push("key", "required: the call's key, `{{ input.number }}`");
    } else {
        v.max_bytes("key", &batch.key, limits::HEADER_VALUE_BYTES);
        v.template("key", renderer.variables(&batch.key));
    }
    for (field, path) in [
        ("items_path", &batch.items_path),
        ("item_key_path", &batch.item_key_path),
    ] {
        let probe = ResponseMapping {
            name: "probe".into(),
            path: path.clone(),
            ..Default::default()
        };
        match mapping(&probe).map(|m| m.validate()) {
            _ if path.trim().is_empty() => v.push(field, "required: a JSONPath"),
            Ok(Err(e)) => v.push(field, e.to_string()),
            Err(e) => v.push(field, e),
            Ok(Ok(())) => {}
        }
    }
    if batch.window_ms > limits::BATCH_WINDOW_MS_MAX {
        v.push(
            "window_ms",
            format!(
                "1 to {} ms, or 0 for {}",
                limits::BATCH_WINDOW_MS_MAX,
                limits::BATCH_WINDOW_MS_DEFAULT
            ),
        );
    }
    if batch.max_size == 1 || batch.max_size > limits::BATCH_SIZE_MAX {
        v.push(
            "max_size",
            format!(
                "2 to {}, or 0 for {}",
                limits::BATCH_SIZE_MAX,
                limits::BATCH_SIZE_DEFAULT
            ),
        );
    }
    if batch.separator.len() > 8 {
        v.push("separator", "at most 8 bytes");
    }
}

pub(crate) fn validate_auth(v: &mut Violations, auth: Option<&HttpAuth>, previous: StoredAuth<'_>) {
    let Some(auth) = auth else { return };
    let kind = match AuthKind::try_from(auth.kind) {
        Ok(kind) => kind,
        Err(_) => {
            v.push("auth.kind", format!("unknown value {}", auth.kind));
            return;
        }
    };
    // A secret is kept across updates of the same kind when none is given.
    let has_secret = !auth.secret.is_empty()
        || !auth.sealed_secret.is_empty()
        || match previous {
            StoredAuth::None => false,
            StoredAuth::Known(p) => p.kind == auth.kind && !p.sealed_secret.is_empty(),
            StoredAuth::Unknown => true,
        };
    if auth.secret.len() > limits::SECRET_BYTES {
        v.push(
            "auth.secret",
            format!("at most {} bytes", limits::SECRET_BYTES),
        );
    }
    if !auth.secret.is_empty() && auth.secret.len() < 4 {
        v.push("auth.secret", "at least 4 characters");
    }
    let needs_secret = !matches!(kind, AuthKind::Unspecified | AuthKind::None);
    if needs_secret && !has_secret {
        v.push("auth.secret", "required for this kind of auth");
    }
    match kind {
        AuthKind::ApiKeyHeader | AuthKind::ApiKeyQuery if auth.name.trim().is_empty() => {
            v.push(
                "auth.name",
                "the header or query parameter that carries the key",
            );
        }
        AuthKind::Basic if auth.username.is_empty() => v.push("auth.username", "required"),
        AuthKind::Oauth2ClientCredentials => {
            if !(auth.token_url.starts_with("https://") || auth.token_url.starts_with("http://")) {
                v.push("auth.token_url", "an http(s) URL");
            }
            if auth.client_id.is_empty() {
                v.push("auth.client_id", "required");
            }
            v.max_bytes("auth.scope", &auth.scope, 1024);
        }
        _ => {}
    }
}

/// The template-library mapping of a stored one.
pub fn mapping(m: &switchboard_proto::actions::v1::ResponseMapping) -> Result<Mapping, String> {
    let kind: Kind = serde_json::from_value(serde_json::Value::String(if m.kind.is_empty() {
        "any".into()
    } else {
        m.kind.clone()
    }))
    .map_err(|_| {
        format!(
            "kind `{}` is not one of any, string, number, integer, boolean, object, array",
            m.kind
        )
    })?;
    let default = if m.default_json.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&m.default_json)
                .map_err(|e| format!("default_json is not JSON: {e}"))?,
        )
    };
    Ok(Mapping {
        name: m.name.clone(),
        path: m.path.clone(),
        kind,
        required: m.required,
        default,
    })
}

/// An LLM tool name: a letter, then a-z, 0-9 and `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=limits::NAME_CHARS).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An HTTP header name (an RFC 9110 token).
pub(crate) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Violations collected while checking a definition; fields are named relative to the part
/// being checked (`prefix`), so one checker serves `http`, `form.on_submit` and
/// `button.on_click`.
#[derive(Default)]
pub(crate) struct Violations {
    found: Vec<FieldViolation>,
    prefix: String,
    /// Namespaces templates may read besides [`VARIABLE_NAMESPACES`].
    extra_namespaces: Vec<&'static str>,
}

impl Violations {
    pub(crate) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        let field = field.into();
        self.found.push(FieldViolation {
            field: if self.prefix.is_empty() {
                field
            } else {
                format!("{}{field}", self.prefix)
            },
            description: description.into(),
        });
    }

    /// Checks a part of the definition with its fields named under `prefix` (`http.`).
    pub(crate) fn within(&mut self, prefix: &str, check: impl FnOnce(&mut Self)) {
        let inner = format!("{}{prefix}", self.prefix);
        let outer = std::mem::replace(&mut self.prefix, inner);
        check(self);
        self.prefix = outer;
    }

    pub(crate) fn max_bytes(&mut self, field: &str, value: &str, limit: usize) {
        if value.len() > limit {
            self.push(field, format!("at most {limit} bytes"));
        }
    }

    /// A template must parse and read only known namespaces.
    pub(crate) fn template(
        &mut self,
        field: &str,
        variables: Result<BTreeSet<String>, switchboard_template::TemplateError>,
    ) {
        match variables {
            Err(e) => self.push(field, e.to_string()),
            Ok(variables) => {
                for variable in variables {
                    let namespace = variable.split('.').next().unwrap_or_default();
                    if !VARIABLE_NAMESPACES.contains(&namespace)
                        && !self.extra_namespaces.contains(&namespace)
                    {
                        self.push(
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

    fn finish(self) -> Result<(), DomainError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.found))
        }
    }
}

/// The action as a tool an LLM agent can call: name, description with the when-not-to-use
/// guidance, JSON Schema parameters, and the function-calling JSON most APIs accept.
pub fn agent_tool(definition: &ActionDefinition) -> switchboard_proto::actions::v1::AgentTool {
    let mut description = definition.description.trim().to_owned();
    if !definition.trigger.trim().is_empty() {
        description.push_str("\n\nUse when: ");
        description.push_str(definition.trigger.trim());
    }
    if !definition.when_not_to_use.trim().is_empty() {
        description.push_str("\n\nDo not use when: ");
        description.push_str(definition.when_not_to_use.trim());
    }
    let examples: Vec<&str> = definition
        .example_requests
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    if !examples.is_empty() {
        description.push_str("\n\nFor requests like: ");
        description.push_str(
            &examples
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    if definition.confirmation_required {
        // The agent asks the customer itself, with the call's inputs, before it runs.
        description.push_str("\n\nThe customer is asked to confirm before it runs.");
    }
    let parameters: serde_json::Value = serde_json::from_str(&definition.input_schema)
        .unwrap_or_else(|_| serde_json::json!({"type": "object", "properties": {}}));
    let function = serde_json::json!({
        "type": "function",
        "function": {"name": definition.name, "description": description, "parameters": parameters},
    });
    switchboard_proto::actions::v1::AgentTool {
        name: definition.name.clone(),
        description,
        parameters: parameters.to_string(),
        confirmation_required: definition.confirmation_required,
        function_json: function.to_string(),
        example_requests: examples.iter().map(|e| (*e).to_owned()).collect(),
        action_id: definition.id.clone(),
        workflow_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn http_action() -> ActionDefinition {
        ActionDefinition {
            id: "act_1".into(),
            workspace_id: "ws_1".into(),
            name: "lookup_order".into(),
            description: "Looks up an order by its number".into(),
            kind: ActionKind::Http as i32,
            http: Some(HttpSpec {
                method: "get".into(),
                url: "https://shop.example.com/orders/{{ input.order_number }}".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fields(result: Result<Option<Change>, DomainError>) -> Vec<String> {
        match result {
            Err(DomainError::Invalid(v)) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_created_action_is_enabled_normalized_and_at_version_one() {
        let change = decide(
            None,
            Command::Create {
                definition: http_action(),
            },
            5,
        )
        .unwrap()
        .unwrap();
        let d = change.definition;
        assert_eq!(
            (d.version, d.enabled, change.event_type),
            (1, true, event_types::CREATED)
        );
        let http = d.http.unwrap();
        assert_eq!((http.method.as_str(), http.timeout_ms), ("GET", 10_000));
        assert_eq!(http.retry.unwrap().max_attempts, 1);
        assert_eq!(d.input_schema, r#"{"type":"object","properties":{}}"#);
    }

    #[test]
    fn bad_definitions_name_every_field() {
        let mut d = http_action();
        d.name = "Lookup Order".into();
        d.input_schema = r#"{"type": "object", "properties": {"n": {"type": "nonsense"}}}"#.into();
        let http = d.http.as_mut().unwrap();
        http.url = "https://x.example/{{ secrets.key }}".into();
        http.timeout_ms = 500_000;
        http.method = "TRACE".into();
        http.cache_ttl_seconds = 0;
        http.body = "{not json".into();
        let fields = fields(decide(None, Command::Create { definition: d }, 1));
        for expected in [
            "name",
            "input_schema",
            "http.url",
            "http.timeout_ms",
            "http.method",
            "http.body",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn auth_needs_its_secret_and_keeps_it_across_updates() {
        let mut d = http_action();
        d.http.as_mut().unwrap().auth = Some(HttpAuth {
            kind: AuthKind::Bearer as i32,
            ..Default::default()
        });
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec!["http.auth.secret"]
        );
        let auth = d.http.as_mut().unwrap().auth.as_mut().unwrap();
        auth.sealed_secret = vec![1, 2, 3];
        let created = decide(
            None,
            Command::Create {
                definition: d.clone(),
            },
            1,
        )
        .unwrap()
        .unwrap()
        .definition;
        // An update that says nothing about the secret keeps it (the handler carries it over).
        let mut update = d.clone();
        update
            .http
            .as_mut()
            .unwrap()
            .auth
            .as_mut()
            .unwrap()
            .sealed_secret
            .clear();
        assert!(validate(&update, Previous::Stored(&created)).is_ok());
        assert!(
            public_view(created)
                .http
                .unwrap()
                .auth
                .unwrap()
                .sealed_secret
                .is_empty()
        );
    }

    #[test]
    fn versions_move_and_stale_updates_are_refused() {
        let created = decide(
            None,
            Command::Create {
                definition: http_action(),
            },
            1,
        )
        .unwrap()
        .unwrap()
        .definition;
        let updated = decide(
            Some(&created),
            Command::Update {
                definition: http_action(),
                expected_version: Some(1),
            },
            2,
        )
        .unwrap()
        .unwrap()
        .definition;
        assert_eq!(updated.version, 2);
        assert_eq!(
            decide(
                Some(&updated),
                Command::Update {
                    definition: http_action(),
                    expected_version: Some(1)
                },
                3
            ),
            Err(DomainError::StaleVersion {
                expected: 1,
                actual: 2
            })
        );
        let disabled = decide(Some(&updated), Command::SetEnabled { enabled: false }, 4)
            .unwrap()
            .unwrap();
        assert_eq!(
            (disabled.event_type, disabled.definition.version),
            (event_types::DISABLED, 3)
        );
        assert_eq!(
            decide(
                Some(&disabled.definition),
                Command::SetEnabled { enabled: false },
                5
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_delete_answers_the_definition_as_it_was_and_needs_an_action() {
        let created = decide(
            None,
            Command::Create {
                definition: http_action(),
            },
            1,
        )
        .unwrap()
        .unwrap()
        .definition;
        let deleted = decide(Some(&created), Command::Delete, 2).unwrap().unwrap();
        assert_eq!(deleted.event_type, event_types::DELETED);
        assert_eq!(
            (deleted.definition.name.as_str(), deleted.definition.version),
            ("lookup_order", 2)
        );
        assert_eq!(deleted.definition.created_at, created.created_at);
        assert_eq!(decide(None, Command::Delete, 3), Err(DomainError::NotFound));
    }

    #[test]
    fn every_kind_checks_its_own_part() {
        use switchboard_proto::actions::v1::{
            Calculation, CalculationSpec, DatabaseQuerySpec, FormField, FormSpec,
            UpdateConversationSpec,
        };
        let mut d = http_action();
        d.kind = ActionKind::Calculation as i32;
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec!["http", "calculation"]
        );
        d.http = None;
        d.calculation = Some(CalculationSpec {
            outputs: vec![
                Calculation {
                    name: "total".into(),
                    expression: "input.price * outputs.tax".into(),
                },
                Calculation {
                    name: "tax".into(),
                    expression: "secrets.x +".into(),
                },
            ],
        });
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec![
                "calculation.outputs[0].expression",
                "calculation.outputs[1].expression"
            ]
        );
        d.kind = ActionKind::DatabaseQuery as i32;
        d.calculation = None;
        d.database_query = Some(DatabaseQuerySpec {
            connection: "orders".into(),
            statement: "DELETE FROM orders WHERE id = $1".into(),
            ..Default::default()
        });
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec!["database_query.statement", "database_query.parameters"]
        );
        d.kind = ActionKind::UpdateConversation as i32;
        d.database_query = None;
        d.update_conversation = Some(UpdateConversationSpec {
            status: "closed".into(),
            ..Default::default()
        });
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec!["update_conversation.status"]
        );
        d.kind = ActionKind::Form as i32;
        d.update_conversation = None;
        d.form = Some(FormSpec {
            fields: vec![
                FormField {
                    name: "order".into(),
                    r#type: "text".into(),
                    pattern: "[0-9]+".into(),
                    required: true,
                    ..Default::default()
                },
                FormField {
                    name: "size".into(),
                    r#type: "select".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(
            fields(decide(
                None,
                Command::Create {
                    definition: d.clone()
                },
                1
            )),
            vec!["form.fields[1].options"]
        );
        d.form.as_mut().unwrap().fields.pop();
        let created = decide(None, Command::Create { definition: d }, 1)
            .unwrap()
            .unwrap();
        let schema: serde_json::Value =
            serde_json::from_str(&created.definition.input_schema).unwrap();
        assert_eq!(schema["required"], serde_json::json!(["order"]));
    }
}
