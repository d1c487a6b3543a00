//! Running an action: guards, input validation, then what its kind does. For requests:
//! rendering, auth, the call with its timeout and retries, and response mapping; for the
//! integration kinds, the call to the system they act on; the pure kinds are computed.
//! Every failure is an outcome with a reason, never an error of the caller's request; what
//! is recorded has its secrets redacted.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value as Json};
use switchboard_eventlog::{EventLog, now_micros};
use switchboard_outbound::{GuardedClient, OutboundError};
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, AuthKind, BatchSpec, ExecutionResult, FailureReason, HttpAuth,
    HttpSpec, Integration, Outcome, PermissionLevel, RenderedRequest, ResponseMapping, Trigger,
};
use switchboard_proto::events::v1::ConversationStatus;
use switchboard_secrets::{Keyring, REDACTED, Secret, redact};
use switchboard_template::{Renderer, map_response};

use crate::batch::{Batches, Delivered, KeyOutcome, Role};
use crate::domain::{self, compute, integration, request_spec, secret_owner};
use crate::ports::{Call, ConversationUpdate, PortError, Ports};

/// Response bytes kept in the result and the log.
pub const RESPONSE_KEEP_BYTES: usize = 64 * 1024;
/// Response bytes read at most (for mapping); the rest is not read.
pub const RESPONSE_READ_BYTES: usize = 1024 * 1024;

/// One run of an action.
pub struct Invocation<'a> {
    pub definition: &'a ActionDefinition,
    /// The integration the definition's request goes to, as stored now; `None` when it
    /// names none, or names one that no longer exists (the run then fails as not
    /// connected).
    pub integration: Option<&'a Integration>,
    /// Variables by namespace (`input`, `conversation`, `secure`, ...).
    pub variables: Json,
    pub idempotency_key: String,
    pub traceparent: String,
    pub confirmed: bool,
    pub caller: PermissionLevel,
    /// Who made the run happen; its level caps `caller`.
    pub trigger: Trigger,
    /// The conversation the action runs for; empty for none.
    pub conversation_id: String,
    /// A test run: guards for confirmation and permission do not apply, the action may be
    /// disabled.
    pub test: bool,
}

/// Runs actions' HTTP requests through the SSRF guard.
#[derive(Clone)]
pub struct Executor {
    client: GuardedClient,
    keyring: Arc<Keyring>,
    renderer: Arc<Renderer>,
    limits: Arc<Throttles>,
    /// Calls of batched actions gathering to go out together.
    batches: Arc<Batches>,
    ports: Ports,
    /// Where rate limits are kept for every replica; without it, in this process.
    shared_limits: Option<EventLog>,
}

/// Per-action rate limiters (when no store shares them) and the GET response cache, in
/// this process.
#[derive(Default)]
struct Throttles {
    /// By what is limited (an action version, an integration) and the limit.
    limiters: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
    cache: Mutex<HashMap<String, Cached>>,
    /// OAuth2 access tokens by action version, until shortly before they expire.
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

/// A successful GET answer, reusable until `expires`.
#[derive(Clone)]
struct Cached {
    expires: Instant,
    status_code: u32,
    body: String,
    truncated: bool,
    outputs: Map<String, Json>,
}

const CACHE_ENTRIES: usize = 10_000;

impl Throttles {
    /// Whether one more call counted under `key` fits `per_minute`.
    fn admit(&self, key: &str, per_minute: u32) -> bool {
        let Some(limit) = NonZeroU32::new(per_minute) else {
            return true;
        };
        let Ok(mut limiters) = self.limiters.lock() else {
            return true;
        };
        let limiter = limiters
            .entry((key.to_owned(), per_minute))
            .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_minute(limit))))
            .clone();
        drop(limiters);
        limiter.check().is_ok()
    }

    fn cached(&self, key: &str) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|c| c.expires > Instant::now())
            .cloned()
    }

    fn remember(&self, key: String, entry: Cached) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, entry);
    }
}

/// The secrets of one run.
struct Secrets {
    /// The action's own credential (API key, token, password, client secret).
    credential: Option<Secret>,
    /// Everything to redact from what is recorded.
    all: Vec<Secret>,
}

/// A failure outcome under way.
struct Failure {
    reason: FailureReason,
    error: String,
    /// What the failure leaves for the caller (a validation's errors); `{}` when unset.
    outputs: Option<Map<String, Json>>,
}

fn fail(reason: FailureReason, error: impl Into<String>) -> Failure {
    Failure {
        reason,
        error: error.into(),
        outputs: None,
    }
}

impl From<PortError> for Failure {
    fn from(e: PortError) -> Self {
        let reason = match &e {
            PortError::NotConnected(_) => FailureReason::NotConnected,
            PortError::Rejected(_) => FailureReason::Rejected,
            PortError::Unavailable(_) => FailureReason::Network,
            PortError::Timeout(_) => FailureReason::Timeout,
        };
        fail(reason, e.to_string())
    }
}

/// Problems with values, as a failure whose outputs list them.
fn invalid_values(summary: &str, problems: Vec<compute::Invalid>) -> Failure {
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    let error = format!("{summary}: {}", messages.join("; "));
    let mut outputs = Map::new();
    outputs.insert("valid".into(), Json::Bool(false));
    outputs.insert(
        "errors".into(),
        serde_json::to_value(&problems).unwrap_or_default(),
    );
    Failure {
        reason: FailureReason::InvalidInput,
        error,
        outputs: Some(outputs),
    }
}

impl Executor {
    pub fn new(client: GuardedClient, keyring: Arc<Keyring>) -> Self {
        Self {
            client,
            keyring,
            renderer: Arc::new(Renderer::default()),
            limits: Arc::default(),
            batches: Arc::default(),
            ports: Ports::default(),
            shared_limits: None,
        }
    }

    /// Keeps rate limits in `log`'s store, so they hold across every replica on it.
    pub fn with_shared_limits(mut self, log: EventLog) -> Self {
        self.shared_limits = Some(log);
        self
    }

    /// Whether one more call counted under `key` (an action, an integration) fits
    /// `per_minute`: counted in the shared store when there is one (falling back to this
    /// process when it cannot be reached), else here.
    async fn admit(&self, key: &str, per_minute: u32) -> bool {
        if per_minute == 0 {
            return true;
        }
        if let Some(log) = &self.shared_limits {
            match crate::rate_limits::admit_call(log, key, per_minute, now_micros()).await {
                Ok(admitted) => return admitted,
                Err(e) => {
                    tracing::warn!(error = %e, key, "the shared rate limit cannot be read; this process counts alone");
                }
            }
        }
        self.limits.admit(key, per_minute)
    }

    /// Wires the systems integration kinds act on.
    pub fn with_ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Runs the invocation to an outcome. `result.execution_id`, timestamps and the test
    /// flag are filled by the caller.
    pub async fn run(&self, invocation: Invocation<'_>) -> ExecutionResult {
        let started = Instant::now();
        let definition = invocation.definition;
        let mut result = ExecutionResult {
            action_id: definition.id.clone(),
            action_version: definition.version,
            test: invocation.test,
            kind: definition.kind,
            caller_permission: effective_level(&invocation) as i32,
            triggered_by: invocation.trigger as i32,
            confirmed: invocation.confirmed,
            integration_id: integration::of(definition).unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let secrets = match self.secrets(&invocation) {
            Ok(secrets) => secrets,
            Err(failure) => return finish(result, Err(failure), started),
        };
        let outcome = match guards(&invocation) {
            Ok(()) => self.run_kind(&invocation, &secrets, &mut result).await,
            Err(refusal) => Err(refusal),
        };
        let secret_refs: Vec<&Secret> = secrets.all.iter().collect();
        result.error = redact(&result.error, &secret_refs);
        let mut result = finish(result, outcome, started);
        result.error = redact(&result.error, &secret_refs);
        // A target that echoes a credential or a secure value keeps it out of the
        // outputs, which runs record and the agent's model reads.
        result.outputs_json = redact(&result.outputs_json, &secret_refs);
        result
    }

    /// The action's own credential, and everything to redact: the credential, every
    /// secure variable, and the forms they take once encoded.
    fn secrets(&self, invocation: &Invocation<'_>) -> Result<Secrets, Failure> {
        let mut credential = None;
        let mut all = Vec::new();
        let definition = invocation.definition;
        let (auth, owner) = match invocation.integration {
            Some(integration) => (
                integration.auth.as_ref(),
                integration::secret_owner(&integration.workspace_id, &integration.id),
            ),
            None => (
                auth_of(definition),
                secret_owner(&definition.workspace_id, &definition.id),
            ),
        };
        if let Some(auth) = auth.filter(|a| !a.sealed_secret.is_empty()) {
            let secret = self
                .keyring
                .open(&auth.sealed_secret, &owner)
                .map_err(|e| {
                    fail(
                        FailureReason::InvalidInput,
                        format!("the credential cannot be opened: {e}"),
                    )
                })?;
            let secret = Secret::new(String::from_utf8_lossy(&secret).into_owned());
            if auth.kind == AuthKind::Basic as i32 {
                let pair = format!("{}:{}", auth.username, secret.expose());
                all.push(Secret::new(
                    base64::engine::general_purpose::STANDARD.encode(pair),
                ));
            }
            all.push(secret.clone());
            credential = Some(secret);
        }
        collect_strings(invocation.variables.get("secure"), &mut all);
        Ok(Secrets {
            credential,
            all: with_encodings(all),
        })
    }

    /// What the action's kind does, once the guards let it run.
    async fn run_kind(
        &self,
        invocation: &Invocation<'_>,
        secrets: &Secrets,
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, Failure> {
        let definition = invocation.definition;
        let vars = &invocation.variables;
        let kind = ActionKind::try_from(definition.kind).unwrap_or(ActionKind::Unspecified);
        let missing = || {
            fail(
                FailureReason::InvalidInput,
                format!(
                    "the definition has no {} part",
                    domain::kinds::field_of(kind)
                ),
            )
        };
        // A form checks its own fields (answers arrive as text and are converted).
        if kind != ActionKind::Form {
            validate_input(definition, vars)?;
        }
        match kind {
            ActionKind::Http => {
                let http = definition.http.as_ref().ok_or_else(missing)?;
                self.request(invocation, http, vars, secrets, result).await
            }
            ActionKind::Form => {
                let form = definition.form.as_ref().ok_or_else(missing)?;
                let empty = Json::Object(Map::new());
                let submission = compute::check_form(form, vars.get("input").unwrap_or(&empty))
                    .map_err(|problems| {
                        invalid_values("the form is not filled in right", problems)
                    })?;
                let Some(http) = &form.on_submit else {
                    return Ok(submission);
                };
                let mut scope = vars.clone();
                if let Some(object) = scope.as_object_mut() {
                    object.insert("input".into(), Json::Object(submission.clone()));
                }
                let mut outputs = submission;
                outputs.extend(
                    self.request(invocation, http, &scope, secrets, result)
                        .await?,
                );
                Ok(outputs)
            }
            ActionKind::Button => {
                let button = definition.button.as_ref().ok_or_else(missing)?;
                if let Some(http) = &button.on_click {
                    return self.request(invocation, http, vars, secrets, result).await;
                }
                let url = self
                    .renderer
                    .render_url(&button.open_url, vars)
                    .map_err(|e| fail(FailureReason::InvalidInput, e.to_string()))?;
                let secret_refs: Vec<&Secret> = secrets.all.iter().collect();
                Ok(Map::from_iter([(
                    "url".to_owned(),
                    Json::String(redact(url.as_str(), &secret_refs)),
                )]))
            }
            ActionKind::UpdateConversation => {
                let spec = definition
                    .update_conversation
                    .as_ref()
                    .ok_or_else(missing)?;
                self.update_conversation(invocation, spec, result).await
            }
            ActionKind::Connexease => {
                let spec = definition.connexease.as_ref().ok_or_else(missing)?;
                let arguments = self.render_map(&spec.arguments, vars)?;
                let mut outputs = Map::new();
                outputs.insert("operation".into(), Json::String(spec.operation.clone()));
                outputs.insert(
                    "arguments".into(),
                    serde_json::to_value(&arguments).unwrap_or_default(),
                );
                if invocation.test {
                    result.dry_run = true;
                    return Ok(outputs);
                }
                let call = self.call(invocation)?;
                let answer = self
                    .ports
                    .connexease
                    .run(&call, &spec.operation, &arguments)
                    .await?;
                outputs.insert("result".into(), answer);
                Ok(outputs)
            }
            ActionKind::Calculation => {
                let spec = definition.calculation.as_ref().ok_or_else(missing)?;
                compute::calculate(&self.renderer, spec, vars)
                    .map_err(|e| fail(FailureReason::InvalidInput, e))
            }
            ActionKind::Validation => {
                let spec = definition.validation.as_ref().ok_or_else(missing)?;
                let problems = compute::check_rules(spec, vars);
                if !problems.is_empty() {
                    return Err(invalid_values("the values do not pass", problems));
                }
                Ok(Map::from_iter([
                    ("valid".to_owned(), Json::Bool(true)),
                    ("errors".to_owned(), Json::Array(vec![])),
                ]))
            }
            ActionKind::DatabaseQuery => {
                let spec = definition.database_query.as_ref().ok_or_else(missing)?;
                let parameters = spec
                    .parameters
                    .iter()
                    .map(|p| self.renderer.render_json(&Json::String(p.clone()), vars))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(FailureReason::InvalidInput, e.to_string()))?;
                let rows = self
                    .ports
                    .databases
                    .query(
                        &spec.connection,
                        &spec.statement,
                        &parameters,
                        spec.max_rows.max(1),
                        Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
                    )
                    .await
                    .map_err(|e| match e {
                        PortError::Rejected(message) => fail(FailureReason::Query, message),
                        other => other.into(),
                    })?;
                let answer = serde_json::json!({
                    "rows": rows.rows,
                    "row_count": rows.rows.len(),
                    "truncated": rows.truncated,
                });
                let mut outputs = Map::new();
                if spec.response_mapping.is_empty() {
                    if let Json::Object(all) = answer {
                        outputs = all;
                    }
                } else {
                    let mappings = spec
                        .response_mapping
                        .iter()
                        .map(domain::mapping)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| fail(FailureReason::Mapping, e))?;
                    outputs = map_response(&answer, &mappings)
                        .map_err(|e| fail(FailureReason::Mapping, e.to_string()))?;
                }
                Ok(outputs)
            }
            ActionKind::Workflow => {
                let spec = definition.workflow.as_ref().ok_or_else(missing)?;
                let mut inputs = Map::new();
                for (name, template) in &spec.inputs {
                    let value = self
                        .renderer
                        .render_json(&Json::String(template.clone()), vars)
                        .map_err(|e| fail(FailureReason::InvalidInput, e.to_string()))?;
                    inputs.insert(name.clone(), value);
                }
                if invocation.test {
                    result.dry_run = true;
                    return Ok(Map::from_iter([
                        ("workflow".to_owned(), Json::String(spec.workflow.clone())),
                        ("inputs".to_owned(), Json::Object(inputs)),
                    ]));
                }
                let call = self.call(invocation)?;
                let answer = self
                    .ports
                    .workflows
                    .invoke(
                        &call,
                        &spec.workflow,
                        &inputs,
                        &conversation_context(vars),
                        Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
                    )
                    .await?;
                Ok(match answer {
                    Json::Object(outputs) => outputs,
                    other => Map::from_iter([("result".to_owned(), other)]),
                })
            }
            ActionKind::Unspecified => Err(missing()),
        }
    }

    /// Sets the conversation's status and metafields; a test run only renders them.
    async fn update_conversation(
        &self,
        invocation: &Invocation<'_>,
        spec: &switchboard_proto::actions::v1::UpdateConversationSpec,
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, Failure> {
        let vars = &invocation.variables;
        let status_name = self
            .renderer
            .render_text(&spec.status, vars)
            .map_err(|e| fail(FailureReason::InvalidInput, e.to_string()))?;
        let status_name = status_name.trim().to_ascii_lowercase();
        let status = match status_name.as_str() {
            "" => None,
            "active" => Some(ConversationStatus::Active),
            "on_hold" => Some(ConversationStatus::OnHold),
            "resolved" => Some(ConversationStatus::Resolved),
            "archived" => Some(ConversationStatus::Archived),
            other => {
                return Err(fail(
                    FailureReason::InvalidInput,
                    format!(
                        "status `{other}` is not one of {}",
                        domain::CONVERSATION_STATUSES.join(", ")
                    ),
                ));
            }
        };
        let update = ConversationUpdate {
            status,
            set_metafields: self.render_map(&spec.set_metafields, vars)?,
            remove_metafields: spec.remove_metafields.clone(),
        };
        let mut outputs = Map::new();
        if status.is_some() {
            outputs.insert("status".into(), Json::String(status_name));
        }
        outputs.insert(
            "set_metafields".into(),
            serde_json::to_value(&update.set_metafields).unwrap_or_default(),
        );
        outputs.insert(
            "remove_metafields".into(),
            serde_json::to_value(&update.remove_metafields).unwrap_or_default(),
        );
        if invocation.test {
            // A test touches no conversation.
            result.dry_run = true;
            return Ok(outputs);
        }
        let call = self.call(invocation)?;
        self.ports.conversations.update(&call, &update).await?;
        Ok(outputs)
    }

    /// Who an integration call is for; integration kinds run only for a conversation.
    fn call<'a>(&self, invocation: &'a Invocation<'_>) -> Result<Call<'a>, Failure> {
        if invocation.conversation_id.is_empty() {
            return Err(fail(
                FailureReason::InvalidInput,
                "this action acts on a conversation: give conversation_id",
            ));
        }
        Ok(Call {
            workspace_id: &invocation.definition.workspace_id,
            conversation_id: &invocation.conversation_id,
            idempotency_key: &invocation.idempotency_key,
            traceparent: &invocation.traceparent,
        })
    }

    /// Renders a map of text templates.
    fn render_map(
        &self,
        templates: &std::collections::HashMap<String, String>,
        vars: &Json,
    ) -> Result<std::collections::BTreeMap<String, String>, Failure> {
        templates
            .iter()
            .map(|(name, template)| {
                self.renderer
                    .render_text(template, vars)
                    .map(|value| (name.clone(), value))
                    .map_err(|e| fail(FailureReason::InvalidInput, format!("{name}: {e}")))
            })
            .collect()
    }

    /// Makes the action's HTTP request with `vars`, batched with others when the action
    /// says so (never for a test run).
    async fn request(
        &self,
        invocation: &Invocation<'_>,
        http: &HttpSpec,
        vars: &Json,
        secrets: &Secrets,
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, Failure> {
        match &http.batch {
            Some(batch) if !invocation.test => {
                self.batched(invocation, http, batch, vars, secrets, result)
                    .await
            }
            _ => self.send(invocation, http, vars, secrets, result).await,
        }
    }

    /// One call of a batched action: it joins the open group of calls that would send the
    /// same request but for their keys (or leads a new one), and takes its item of the
    /// answer; alone, or when its leader went away, it is sent as usual.
    async fn batched(
        &self,
        invocation: &Invocation<'_>,
        http: &HttpSpec,
        batch: &BatchSpec,
        vars: &Json,
        secrets: &Secrets,
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, Failure> {
        let definition = invocation.definition;
        let invalid = |e: switchboard_template::TemplateError| {
            fail(FailureReason::InvalidInput, format!("batch: {e}"))
        };
        let key = self
            .renderer
            .render_text(&batch.key, vars)
            .map_err(invalid)?
            .trim()
            .to_owned();
        if key.is_empty() {
            return Err(fail(
                FailureReason::InvalidInput,
                "batch: the call's key renders empty",
            ));
        }
        let mut shape = vars.clone();
        if let Some(object) = shape.as_object_mut() {
            object.insert("batch".into(), serde_json::json!({"keys": ""}));
        }
        let mut group = format!(
            "{}/{}@{} {}",
            definition.workspace_id,
            definition.id,
            definition.version,
            self.renderer
                .render_text(&batch.url, &shape)
                .map_err(invalid)?
        );
        let mut names: Vec<&String> = http.headers.keys().collect();
        names.sort();
        for name in names {
            let value = self
                .renderer
                .render_text(&http.headers[name], vars)
                .map_err(invalid)?;
            group.push_str(&format!("\n{name}: {value}"));
        }
        let max_size = batch.max_size.clamp(2, domain::limits::BATCH_SIZE_MAX) as usize;
        let outcome = match self.batches.join(&group, &key, max_size) {
            Role::Leader(leader) => {
                let full = leader.full.clone();
                let window = Duration::from_millis(u64::from(batch.window_ms.max(1)));
                tokio::select! {
                    _ = tokio::time::sleep(window) => {}
                    _ = full.notified() => {}
                }
                let taken = leader.take();
                let keys = if taken.keys.is_empty() {
                    vec![key.clone()]
                } else {
                    taken.keys.clone()
                };
                let delivered: Delivered = Arc::new(
                    self.send_batch(invocation, http, batch, vars, secrets, &keys)
                        .await,
                );
                taken.deliver(&delivered);
                delivered.get(&key).cloned()
            }
            Role::Follower(waiting) => {
                match tokio::time::timeout(lease_for(definition), waiting).await {
                    Ok(Ok(delivered)) => delivered.get(&key).cloned(),
                    _ => None,
                }
            }
        };
        let Some(outcome) = outcome else {
            result.batch_size = 1;
            return self.send(invocation, http, vars, secrets, result).await;
        };
        result.status_code = outcome.status_code;
        result.response_body = outcome.response_body;
        result.response_truncated = outcome.response_truncated;
        result.attempts = outcome.attempts;
        result.request = outcome.request;
        result.batch_size = outcome.batch_size;
        outcome
            .outputs
            .map_err(|(reason, error)| fail(reason, error))
    }

    /// Sends one request for `keys` and answers each key's outcome: a single key goes to
    /// the action's own URL, several to the batch URL, and each takes its item.
    async fn send_batch(
        &self,
        invocation: &Invocation<'_>,
        http: &HttpSpec,
        batch: &BatchSpec,
        vars: &Json,
        secrets: &Secrets,
        keys: &[String],
    ) -> HashMap<String, KeyOutcome> {
        let mut sent = ExecutionResult::default();
        let outcome = |sent: &ExecutionResult, outputs, body: String, truncated| KeyOutcome {
            outputs,
            status_code: sent.status_code,
            response_body: body,
            response_truncated: truncated,
            attempts: sent.attempts,
            request: sent.request.clone(),
            batch_size: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        };
        let as_pair = |f: Failure| (f.reason, f.error);
        if let [key] = keys {
            let outputs = self
                .send(invocation, http, vars, secrets, &mut sent)
                .await
                .map_err(as_pair);
            let (body, truncated) = (sent.response_body.clone(), sent.response_truncated);
            return HashMap::from([(key.clone(), outcome(&sent, outputs, body, truncated))]);
        }
        let separator = if batch.separator.is_empty() {
            ","
        } else {
            &batch.separator
        };
        let mut batch_vars = vars.clone();
        if let Some(object) = batch_vars.as_object_mut() {
            object.insert(
                "batch".into(),
                serde_json::json!({"keys": keys.join(separator)}),
            );
        }
        let batch_http = HttpSpec {
            url: batch.url.clone(),
            batch: None,
            cache_ttl_seconds: 0,
            response_mapping: vec![ResponseMapping {
                name: "items".into(),
                path: batch.items_path.clone(),
                kind: "array".into(),
                required: true,
                ..Default::default()
            }],
            ..http.clone()
        };
        // The batch's own key: the same keys make the same request.
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut sorted = keys.to_vec();
            sorted.sort();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            sorted.hash(&mut hasher);
            invocation.definition.id.hash(&mut hasher);
            hasher.finish()
        };
        let batch_invocation = Invocation {
            definition: invocation.definition,
            integration: invocation.integration,
            variables: batch_vars.clone(),
            idempotency_key: format!("batch-{digest:016x}"),
            traceparent: invocation.traceparent.clone(),
            confirmed: invocation.confirmed,
            caller: invocation.caller,
            trigger: invocation.trigger,
            conversation_id: String::new(),
            test: false,
        };
        let answer = self
            .send(
                &batch_invocation,
                &batch_http,
                &batch_vars,
                secrets,
                &mut sent,
            )
            .await;
        let mut items = match answer {
            Ok(mut mapped) => match mapped.remove("items") {
                Some(Json::Array(items)) => items,
                _ => Vec::new(),
            },
            Err(failure) => {
                let failure = as_pair(failure);
                let (body, truncated) = (sent.response_body.clone(), sent.response_truncated);
                return keys
                    .iter()
                    .map(|k| {
                        let failed = outcome(&sent, Err(failure.clone()), body.clone(), truncated);
                        (k.clone(), failed)
                    })
                    .collect();
            }
        };
        let key_of = domain::mapping(&ResponseMapping {
            name: "key".into(),
            path: batch.item_key_path.clone(),
            ..Default::default()
        });
        let mappings: Result<Vec<_>, String> =
            http.response_mapping.iter().map(domain::mapping).collect();
        let secret_refs: Vec<&Secret> = secrets.all.iter().collect();
        let mut by_key: HashMap<String, Json> = HashMap::new();
        if let Ok(key_of) = &key_of {
            for item in items.drain(..) {
                let found = map_response(&item, std::slice::from_ref(key_of))
                    .ok()
                    .and_then(|mut m| m.remove("key"));
                let text = match found {
                    Some(Json::String(text)) => text,
                    Some(Json::Null) | None => continue,
                    Some(other) => other.to_string(),
                };
                by_key.entry(text).or_insert(item);
            }
        }
        keys.iter()
            .map(|k| {
                let Some(item) = by_key.get(k) else {
                    let missing = Err((
                        FailureReason::Mapping,
                        format!("the batch answer has no item with key `{k}`"),
                    ));
                    return (k.clone(), outcome(&sent, missing, String::new(), false));
                };
                let outputs = match &mappings {
                    Ok(m) if m.is_empty() => Ok(Map::new()),
                    Ok(m) => {
                        map_response(item, m).map_err(|e| (FailureReason::Mapping, e.to_string()))
                    }
                    Err(e) => Err((FailureReason::Mapping, e.clone())),
                };
                let text = item.to_string();
                let (kept, truncated) = keep(&text);
                let body = redact(&kept, &secret_refs);
                (k.clone(), outcome(&sent, outputs, body, truncated))
            })
            .collect()
    }

    /// Makes the action's HTTP request with `vars`: rate limit, cache, retries, mapping.
    async fn send(
        &self,
        invocation: &Invocation<'_>,
        http: &HttpSpec,
        vars: &Json,
        secrets: &Secrets,
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, Failure> {
        let definition = invocation.definition;
        // Under an integration: its base URL, headers and credentials.
        let applied;
        let http = match (http.integration_id.as_str(), invocation.integration) {
            ("", _) => http,
            (_, Some(integration)) if integration.id == http.integration_id => {
                applied = integration::apply(http, integration);
                &applied
            }
            (id, _) => {
                return Err(fail(
                    FailureReason::NotConnected,
                    format!("the integration `{id}` no longer exists"),
                ));
            }
        };
        if let Some(refusal) = invocation
            .integration
            .and_then(|i| integration::refusal(i, http))
        {
            return Err(fail(FailureReason::Forbidden, refusal));
        }
        let auth = http.auth.clone().unwrap_or_default();
        let secret_refs: Vec<&Secret> = secrets.all.iter().collect();
        let credential = (!auth.sealed_secret.is_empty())
            .then_some(secrets.credential.as_ref())
            .flatten();
        let oauth = auth.kind == AuthKind::Oauth2ClientCredentials as i32;
        // An integration's token serves all its actions.
        let token_key = match invocation.integration {
            Some(i) if !http.integration_id.is_empty() => {
                format!("{}/{}@{}", i.workspace_id, i.id, i.version)
            }
            _ => format!(
                "{}/{}@{}",
                definition.workspace_id, definition.id, definition.version
            ),
        };
        let mut token = match (oauth, credential) {
            (true, Some(client_secret)) => Some(
                self.oauth_token(&token_key, &auth, client_secret, false)
                    .await?,
            ),
            _ => None,
        };
        let mut prepared = self.prepare(invocation, http, vars, credential, token.as_ref())?;
        result.request = Some(prepared.redacted(&secret_refs));

        // The same request: the URL and every header that says whom it is for (templated
        // ones may read `input.*` or `secure.*`: another customer's token is another
        // request), kept as a digest so no credential sits in the key.
        let cache_key = (http.cache_ttl_seconds > 0 && prepared.method == reqwest::Method::GET)
            .then(|| {
                use sha2::Digest as _;
                let mut digest = sha2::Sha256::new();
                digest.update(prepared.url.as_str());
                for (name, value) in &prepared.headers {
                    if name.eq_ignore_ascii_case("idempotency-key")
                        || name.eq_ignore_ascii_case("traceparent")
                    {
                        continue;
                    }
                    digest.update([0]);
                    digest.update(name.to_ascii_lowercase());
                    digest.update([0]);
                    digest.update(value);
                }
                if let Some((user, password)) = &prepared.basic {
                    digest.update([1]);
                    digest.update(user);
                    digest.update([0]);
                    digest.update(password.expose());
                }
                format!(
                    "{}/{}@{} {:x}",
                    definition.workspace_id,
                    definition.id,
                    definition.version,
                    digest.finalize()
                )
            });
        if let Some(hit) = cache_key.as_deref().and_then(|key| self.limits.cached(key)) {
            result.cached = true;
            result.status_code = hit.status_code;
            result.response_body = hit.body;
            result.response_truncated = hit.truncated;
            return Ok(hit.outputs);
        }
        let action_key = format!("{}/{}", definition.workspace_id, definition.id);
        if !self.admit(&action_key, http.rate_limit_per_minute).await {
            return Err(fail(
                FailureReason::RateLimited,
                format!(
                    "the action's limit of {} calls a minute is reached",
                    http.rate_limit_per_minute
                ),
            ));
        }
        if let Some(integration) = invocation
            .integration
            .filter(|_| !http.integration_id.is_empty())
            && !self
                .admit(
                    &integration::rate_limit_key(integration),
                    integration.rate_limit_per_minute,
                )
                .await
        {
            return Err(fail(
                FailureReason::RateLimited,
                format!(
                    "the integration `{}`'s limit of {} calls a minute, shared by its actions, \
                     is reached",
                    integration.name, integration.rate_limit_per_minute
                ),
            ));
        }

        let retry = http.retry.unwrap_or_default();
        let attempts = retry.max_attempts.clamp(1, domain::limits::ATTEMPTS_MAX);
        let mut backoff = Duration::from_millis(u64::from(retry.initial_backoff_ms.max(1)));
        let max_backoff = Duration::from_millis(u64::from(
            retry.max_backoff_ms.max(retry.initial_backoff_ms),
        ));
        let mut last = fail(FailureReason::Network, "not attempted");
        let mut remaining = attempts;
        let mut refreshed = false;
        while remaining > 0 {
            remaining -= 1;
            result.attempts += 1;
            let mut redactable = secret_refs.clone();
            redactable.extend(token.as_ref());
            match self.attempt(&prepared, http, &redactable, result).await {
                Ok(outputs) => {
                    if let Some(key) = cache_key {
                        self.limits.remember(
                            key,
                            Cached {
                                expires: Instant::now()
                                    + Duration::from_secs(u64::from(http.cache_ttl_seconds)),
                                status_code: result.status_code,
                                body: result.response_body.clone(),
                                truncated: result.response_truncated,
                                outputs: outputs.clone(),
                            },
                        );
                    }
                    return Ok(outputs);
                }
                Err((failure, retryable)) => {
                    // An OAuth2 token the target no longer accepts is refreshed once, and
                    // the call made again; that call does not count against the policy.
                    if let (true, false, 401, Some(client_secret)) =
                        (oauth, refreshed, result.status_code, credential)
                    {
                        refreshed = true;
                        token = Some(
                            self.oauth_token(&token_key, &auth, client_secret, true)
                                .await?,
                        );
                        prepared =
                            self.prepare(invocation, http, vars, credential, token.as_ref())?;
                        remaining += 1;
                        last = failure;
                        continue;
                    }
                    last = failure;
                    if !retryable || remaining == 0 {
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
        Err(last)
    }

    /// One call. `Err((failure, retryable))`.
    async fn attempt(
        &self,
        prepared: &Prepared,
        http: &HttpSpec,
        secrets: &[&Secret],
        result: &mut ExecutionResult,
    ) -> Result<Map<String, Json>, (Failure, bool)> {
        let request = prepared
            .build(&self.client)
            .map_err(|e| (fail(FailureReason::InvalidInput, e), false))?;
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(OutboundError::Blocked(blocked)) => {
                return Err((
                    fail(FailureReason::DestinationBlocked, blocked.to_string()),
                    false,
                ));
            }
            Err(OutboundError::Http(e)) if e.is_timeout() => {
                return Err((
                    fail(
                        FailureReason::Timeout,
                        format!("no answer within {} ms", http.timeout_ms),
                    ),
                    true,
                ));
            }
            Err(OutboundError::Http(e)) => {
                return Err((fail(FailureReason::Network, describe_network(&e)), true));
            }
        };
        let status = response.status();
        result.status_code = u32::from(status.as_u16());
        let (body, truncated) = match read_body(response).await {
            Ok(read) => read,
            Err(e) if e.is_timeout() => {
                return Err((
                    fail(
                        FailureReason::Timeout,
                        format!("the body did not arrive within {} ms", http.timeout_ms),
                    ),
                    true,
                ));
            }
            Err(e) => return Err((fail(FailureReason::Network, describe_network(&e)), true)),
        };
        let text = String::from_utf8_lossy(&body);
        let (kept, cut) = keep(&text);
        result.response_truncated = truncated || cut;
        result.response_body = redact(&kept, secrets);
        if status.as_u16() == 429 {
            return Err((
                fail(
                    FailureReason::RateLimited,
                    "the target answered 429 Too Many Requests",
                ),
                true,
            ));
        }
        if !status.is_success() {
            let retryable = status.is_server_error();
            return Err((
                fail(
                    FailureReason::HttpStatus,
                    format!("the target answered {status}"),
                ),
                retryable,
            ));
        }
        if http.response_mapping.is_empty() {
            return Ok(Map::new());
        }
        if truncated {
            return Err((
                fail(
                    FailureReason::Mapping,
                    format!("the response is larger than {RESPONSE_READ_BYTES} bytes"),
                ),
                false,
            ));
        }
        let json: Json = serde_json::from_slice(&body).map_err(|e| {
            (
                fail(
                    FailureReason::Mapping,
                    format!("the response is not JSON: {e}"),
                ),
                false,
            )
        })?;
        let mappings = http
            .response_mapping
            .iter()
            .map(domain::mapping)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (fail(FailureReason::Mapping, e), false))?;
        map_response(&json, &mappings)
            .map_err(|e| (fail(FailureReason::Mapping, e.to_string()), false))
    }

    /// An OAuth2 client-credentials access token for the action: cached until 30 s before
    /// it expires, fetched anew when `refresh` is set. The token endpoint is called through
    /// the same SSRF guard.
    async fn oauth_token(
        &self,
        key: &str,
        auth: &HttpAuth,
        client_secret: &Secret,
        refresh: bool,
    ) -> Result<Secret, Failure> {
        let cached = self
            .limits
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(key).cloned());
        if !refresh
            && let Some((token, expires)) = cached
            && expires > Instant::now()
        {
            return Ok(token);
        }
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if !auth.scope.is_empty() {
                form.append_pair("scope", &auth.scope);
            }
            form.finish()
        };
        let request = self
            .client
            .inner()
            .post(&auth.token_url)
            .basic_auth(&auth.client_id, Some(client_secret.expose()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .build()
            .map_err(|e| {
                fail(
                    FailureReason::InvalidInput,
                    format!("the token request cannot be built: {e}"),
                )
            })?;
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(OutboundError::Blocked(blocked)) => {
                return Err(fail(FailureReason::DestinationBlocked, blocked.to_string()));
            }
            Err(OutboundError::Http(e)) if e.is_timeout() => {
                return Err(fail(
                    FailureReason::Timeout,
                    "the token endpoint did not answer in time",
                ));
            }
            Err(OutboundError::Http(e)) => {
                return Err(fail(
                    FailureReason::Network,
                    format!("token endpoint: {}", describe_network(&e)),
                ));
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(fail(
                FailureReason::HttpStatus,
                format!("the token endpoint answered {status}"),
            ));
        }
        let (body, _) = read_body(response).await.map_err(|e| {
            fail(
                FailureReason::Network,
                format!("token endpoint: {}", describe_network(&e)),
            )
        })?;
        let answer: Json = serde_json::from_slice(&body).map_err(|_| {
            fail(
                FailureReason::HttpStatus,
                "the token endpoint did not answer JSON",
            )
        })?;
        let token = answer
            .get("access_token")
            .and_then(Json::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                fail(
                    FailureReason::HttpStatus,
                    "the token endpoint answered no access_token",
                )
            })?;
        let lifetime = answer
            .get("expires_in")
            .and_then(Json::as_u64)
            .unwrap_or(3600);
        let token = Secret::new(token);
        if let Ok(mut tokens) = self.limits.tokens.lock() {
            let expires = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30));
            tokens.insert(key.to_owned(), (token.clone(), expires));
        }
        Ok(token)
    }

    fn prepare(
        &self,
        invocation: &Invocation<'_>,
        http: &HttpSpec,
        vars: &Json,
        credential: Option<&Secret>,
        oauth_token: Option<&Secret>,
    ) -> Result<Prepared, Failure> {
        let invalid = |e: switchboard_template::TemplateError| {
            fail(FailureReason::InvalidInput, e.to_string())
        };
        let mut url = self.renderer.render_url(&http.url, vars).map_err(invalid)?;
        let mut headers = Vec::new();
        let mut names: Vec<&String> = http.headers.keys().collect();
        names.sort();
        for name in names {
            headers.push((
                name.clone(),
                self.renderer
                    .render_header(name, &http.headers[name], vars)
                    .map_err(invalid)?,
            ));
        }
        let body = if http.body.trim().is_empty() {
            None
        } else {
            let template: Json = serde_json::from_str(&http.body).map_err(|e| {
                fail(
                    FailureReason::InvalidInput,
                    format!("the body template is not JSON: {e}"),
                )
            })?;
            Some(
                self.renderer
                    .render_json(&template, vars)
                    .map_err(invalid)?,
            )
        };
        let auth = http.auth.clone().unwrap_or_default();
        let mut basic = None;
        match (
            AuthKind::try_from(auth.kind).unwrap_or(AuthKind::None),
            credential,
        ) {
            (AuthKind::ApiKeyHeader, Some(secret)) => {
                headers.push((auth.name.clone(), secret.expose().to_owned()))
            }
            (AuthKind::ApiKeyQuery, Some(secret)) => {
                url.query_pairs_mut()
                    .append_pair(&auth.name, secret.expose());
            }
            (AuthKind::Bearer, Some(secret)) => headers.push((
                "Authorization".into(),
                format!("Bearer {}", secret.expose()),
            )),
            (AuthKind::Basic, Some(secret)) => {
                basic = Some((auth.username.clone(), secret.clone()))
            }
            (AuthKind::Oauth2ClientCredentials, Some(_)) => {
                let token = oauth_token
                    .ok_or_else(|| fail(FailureReason::InvalidInput, "no OAuth2 token"))?;
                headers.push(("Authorization".into(), format!("Bearer {}", token.expose())));
            }
            (AuthKind::None | AuthKind::Unspecified, _) => {}
            (kind, _) => {
                return Err(fail(
                    FailureReason::InvalidInput,
                    format!("auth {} has no credential stored", kind.as_str_name()),
                ));
            }
        }
        headers.push(("Idempotency-Key".into(), invocation.idempotency_key.clone()));
        // The execution's own span when there is one, so the partner's spans hang under it.
        let traceparent = switchboard_runtime::telemetry::current_traceparent()
            .unwrap_or_else(|| invocation.traceparent.clone());
        if !traceparent.is_empty() {
            headers.push(("traceparent".into(), traceparent));
        }
        let method = reqwest::Method::from_bytes(http.method.as_bytes()).map_err(|_| {
            fail(
                FailureReason::InvalidInput,
                format!("method {} is not valid", http.method),
            )
        })?;
        Ok(Prepared {
            method,
            url,
            headers,
            body,
            basic,
            timeout: Duration::from_millis(u64::from(http.timeout_ms.max(1))),
        })
    }
}

/// A rendered request, ready to send once per attempt.
struct Prepared {
    method: reqwest::Method,
    url: url::Url,
    headers: Vec<(String, String)>,
    body: Option<Json>,
    basic: Option<(String, Secret)>,
    timeout: Duration,
}

impl Prepared {
    fn build(&self, client: &GuardedClient) -> Result<reqwest::Request, String> {
        let mut builder = client
            .inner()
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        if let Some((user, password)) = &self.basic {
            builder = builder.basic_auth(user, Some(password.expose()));
        }
        if let Some(body) = &self.body {
            builder = builder
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        }
        builder
            .build()
            .map_err(|e| format!("the request cannot be built: {e}"))
    }

    /// What the log may keep: credentials and secure values replaced by the redaction mark.
    fn redacted(&self, secrets: &[&Secret]) -> RenderedRequest {
        let mut headers: HashMap<String, String> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let sensitive = ["authorization", "proxy-authorization", "cookie"]
                    .contains(&name.to_ascii_lowercase().as_str());
                (
                    name.clone(),
                    if sensitive {
                        REDACTED.to_owned()
                    } else {
                        redact(value, secrets)
                    },
                )
            })
            .collect();
        if self.basic.is_some() {
            headers.insert("Authorization".into(), REDACTED.into());
        }
        RenderedRequest {
            method: self.method.to_string(),
            url: redact(self.url.as_str(), secrets),
            headers,
            body: self
                .body
                .as_ref()
                .map(|b| redact(&b.to_string(), secrets))
                .unwrap_or_default(),
        }
    }
}

/// How long a claim on an idempotency key is held: the longest the run can take (every
/// attempt timing out, every backoff at its longest) and a margin. After it, a run that
/// never recorded its outcome is taken to have died, and the key may be run again.
pub fn lease_for(definition: &ActionDefinition) -> Duration {
    const MARGIN: Duration = Duration::from_secs(30);
    let work = match request_spec(definition) {
        Some(http) => {
            let retry = http.retry.unwrap_or_default();
            let attempts = retry.max_attempts.clamp(1, domain::limits::ATTEMPTS_MAX);
            // One more attempt for an OAuth2 refresh, and the token request.
            let calls = u64::from(attempts) + 2;
            Duration::from_millis(
                u64::from(http.timeout_ms.max(1)) * calls
                    + u64::from(retry.max_backoff_ms) * u64::from(attempts),
            )
        }
        None => {
            let query = definition
                .database_query
                .as_ref()
                .map_or(0, |q| q.timeout_ms);
            let workflow = definition.workflow.as_ref().map_or(0, |w| w.timeout_ms);
            Duration::from_millis(u64::from(query.max(workflow))) + Duration::from_secs(10)
        }
    };
    work + MARGIN
}

/// Confirmation and permission, recorded as refusals when they fail.
fn guards(invocation: &Invocation<'_>) -> Result<(), Failure> {
    let definition = invocation.definition;
    if invocation.test {
        return Ok(());
    }
    if !definition.enabled {
        return Err(fail(FailureReason::Disabled, "the action is disabled"));
    }
    if definition.confirmation_required && !invocation.confirmed {
        return Err(fail(
            FailureReason::ConfirmationRequired,
            "the action needs the user's confirmation first",
        ));
    }
    let caller = effective_level(invocation) as i32;
    let required = integration::permission_level(definition, invocation.integration)
        .max(PermissionLevel::Agent as i32);
    if caller < required {
        let who = |level: i32| match PermissionLevel::try_from(level) {
            Ok(PermissionLevel::Human) => "a human teammate",
            Ok(PermissionLevel::Admin) => "a workspace administrator",
            _ => "the AI agent",
        };
        let through = match invocation.integration {
            Some(i) if i.permission_level > definition.permission_level => {
                format!(" (its integration `{}` asks that)", i.name)
            }
            _ => String::new(),
        };
        let from = match invocation.trigger {
            Trigger::Flow => "a flow's action node, which runs at the AI agent's level".into(),
            Trigger::Operator => format!("a human operator at the level of {}", who(caller)),
            Trigger::Api | Trigger::Unspecified => {
                format!("an API caller at the level of {}", who(caller))
            }
            Trigger::Agent => "the AI agent".to_owned(),
        };
        return Err(fail(
            FailureReason::Forbidden,
            format!(
                "`{}` may be run only by {} or above{through}; this call came from {from}",
                definition.name,
                who(required),
            ),
        ));
    }
    Ok(())
}

/// The level a run goes at: what the call claims, at most what its trigger may (the agent
/// and a flow's node act with nobody approving each run: the agent's level).
fn effective_level(invocation: &Invocation<'_>) -> PermissionLevel {
    let claimed = invocation.caller.max(PermissionLevel::Agent);
    match invocation.trigger {
        Trigger::Agent | Trigger::Flow => PermissionLevel::Agent,
        Trigger::Operator | Trigger::Api | Trigger::Unspecified => claimed,
    }
}

/// What an action workflow may read of the run's variables beside its inputs: the
/// conversation's (never `secure`, nor the caller's own `session`, `nodes` or `input`).
fn conversation_context(vars: &Json) -> Map<String, Json> {
    const SHARED: [&str; 6] = [
        "conversation",
        "lead",
        "agent",
        "workspace",
        "message",
        "analysis",
    ];
    vars.as_object()
        .map(|all| {
            all.iter()
                .filter(|(name, _)| SHARED.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `variables.input` against the action's input JSON Schema.
fn validate_input(definition: &ActionDefinition, variables: &Json) -> Result<(), Failure> {
    let schema: Json = serde_json::from_str(&definition.input_schema).map_err(|e| {
        fail(
            FailureReason::InvalidInput,
            format!("the input schema is not JSON: {e}"),
        )
    })?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        fail(
            FailureReason::InvalidInput,
            format!("the input schema is invalid: {e}"),
        )
    })?;
    let empty = Json::Object(Map::new());
    let input = variables.get("input").unwrap_or(&empty);
    let errors: Vec<String> = validator
        .iter_errors(input)
        .take(10)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(fail(
            FailureReason::InvalidInput,
            format!("the input does not match the schema: {}", errors.join("; ")),
        ))
    }
}

fn auth_of(definition: &ActionDefinition) -> Option<&switchboard_proto::actions::v1::HttpAuth> {
    request_spec(definition).and_then(|h| h.auth.as_ref())
}

/// Each secret as it may appear once encoded for where it was sent (percent-encoded in a
/// URL, escaped in JSON), so redaction finds it there too; longest first, so a secret that
/// contains another is redacted whole.
fn with_encodings(secrets: Vec<Secret>) -> Vec<Secret> {
    let mut all: Vec<Secret> = Vec::with_capacity(secrets.len() * 2);
    for secret in secrets {
        let plain = secret.expose();
        let percent: String = url::form_urlencoded::byte_serialize(plain.as_bytes()).collect();
        let json = serde_json::to_string(plain).unwrap_or_default();
        let json = json.trim_matches('"');
        for variant in [percent.as_str(), json] {
            if variant != plain && !variant.is_empty() {
                all.push(Secret::new(variant.to_owned()));
            }
        }
        all.push(secret);
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
    all
}

fn collect_strings(value: Option<&Json>, out: &mut Vec<Secret>) {
    match value {
        Some(Json::String(s)) if !s.is_empty() => out.push(Secret::new(s.clone())),
        Some(Json::Array(items)) => items.iter().for_each(|i| collect_strings(Some(i), out)),
        Some(Json::Object(map)) => map.values().for_each(|v| collect_strings(Some(v), out)),
        Some(Json::Number(n)) => out.push(Secret::new(n.to_string())),
        _ => {}
    }
}

/// Reads at most [`RESPONSE_READ_BYTES`]; `true` when there was more.
/// The first [`RESPONSE_KEEP_BYTES`] of `text` (whole characters), and whether that cut it.
fn keep(text: &str) -> (String, bool) {
    let kept: String = text
        .chars()
        .scan(0usize, |n, c| {
            *n += c.len_utf8();
            (*n <= RESPONSE_KEEP_BYTES).then_some(c)
        })
        .collect();
    let cut = kept.len() < text.len();
    (kept, cut)
}

async fn read_body(response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    switchboard_outbound::read_capped(response, RESPONSE_READ_BYTES).await
}

fn describe_network(e: &reqwest::Error) -> String {
    let mut message = if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

fn finish(
    mut result: ExecutionResult,
    outcome: Result<Map<String, Json>, Failure>,
    started: Instant,
) -> ExecutionResult {
    result.duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    match outcome {
        Ok(outputs) => {
            result.outcome = Outcome::Success as i32;
            result.outputs_json = Json::Object(outputs).to_string();
        }
        Err(failure) => {
            result.outcome = Outcome::Failure as i32;
            result.reason = failure.reason as i32;
            result.error = failure.error;
            result.outputs_json = Json::Object(failure.outputs.unwrap_or_default()).to_string();
        }
    }
    result
}
