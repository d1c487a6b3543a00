//! Model providers: the OpenAI-compatible chat-completions servers a workspace's agent
//! talks to, event-sourced in `model_provider/<ws>/<mp>` (`model_provider.saved`,
//! `.deleted`). The API key is sealed for its provider before it is stored, never returned,
//! never logged; saving without a key keeps the stored one. [`Providers::endpoint`] opens
//! it for a call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, Executed, ExpectedVersion,
    Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, derive_event_id, now_micros, timestamp,
};
use switchboard_proto::flows::v1::{
    DeleteModelProviderRequest, ModelCallResult, ModelProvider, ModelProviderSaved,
};
use switchboard_secrets::{Keyring, Secret};
use uuid::Uuid;

use crate::domain::{FieldViolation, Violations, event_types as t};
use crate::model::{ChatMessage, ChatModel, ChatRequest, Endpoint, Role};
use crate::service::{ServiceError, is_unique_violation, request_id_reused};
use crate::store::FlowsStore;

pub mod limits {
    pub const PER_WORKSPACE: usize = 20;
    pub const NAME_BYTES: usize = 100;
    pub const URL_BYTES: usize = 2048;
    pub const MODEL_BYTES: usize = 200;
    pub const KEY_BYTES: usize = 4096;
    pub const TIMEOUT_MS_DEFAULT: u32 = 30_000;
    pub const TIMEOUT_MS_MAX: u32 = 300_000;
}

pub fn provider_stream(workspace_id: &str, provider_id: &str) -> StreamRef {
    StreamRef::new("model_provider", format!("{workspace_id}/{provider_id}"))
}

/// Whether an API key may be sent to `url`: over https://, or in clear over http:// to a
/// loopback or private address (a model server beside us), never to a public host.
fn key_may_go_to(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match (parsed.scheme(), parsed.host()) {
        ("https", _) => true,
        ("http", Some(url::Host::Ipv4(ip))) => {
            switchboard_outbound::special_purpose(ip.into()).is_some()
        }
        ("http", Some(url::Host::Ipv6(ip))) => {
            switchboard_outbound::special_purpose(ip.into()).is_some()
        }
        ("http", Some(url::Host::Domain(host))) => host.eq_ignore_ascii_case("localhost"),
        _ => false,
    }
}

/// The id of the provider a create with `request_id` makes.
fn created_id(workspace_id: &str, request_id: &str) -> String {
    let key = derive_event_id(workspace_id, &format!("model_provider:{request_id}"), 0);
    format!("mp_{}", key.simple())
}

fn key_owner(workspace_id: &str, provider_id: &str) -> String {
    format!("{workspace_id}/model_provider/{provider_id}/api_key")
}

/// The provider as callers see it: no key, sealed or not.
pub fn public_view(mut provider: ModelProvider) -> ModelProvider {
    provider.api_key_set = !provider.sealed_api_key.is_empty();
    provider.api_key.clear();
    provider.sealed_api_key.clear();
    provider
}

/// Every mistake of a provider as given, needing no state.
pub fn violations(provider: &ModelProvider) -> Vec<FieldViolation> {
    let mut v = Violations::default();
    v.id("provider.workspace_id", &provider.workspace_id, "ws_");
    if !provider.id.is_empty() {
        v.id("provider.id", &provider.id, "mp_");
    }
    let name = provider.name.trim();
    if name.is_empty() || name.len() > limits::NAME_BYTES {
        v.push(
            "provider.name",
            format!("required: at most {} bytes", limits::NAME_BYTES),
        );
    }
    let url = provider.base_url.trim();
    let parsed = url::Url::parse(url).ok();
    if url.len() > limits::URL_BYTES {
        v.push(
            "provider.base_url",
            format!("at most {} bytes", limits::URL_BYTES),
        );
    } else if !(url.starts_with("https://") || url.starts_with("http://")) || parsed.is_none() {
        v.push(
            "provider.base_url",
            "the chat-completions base URL, `https://…/v1` (or `http://` for hosts the \
             operator allows)",
        );
    } else if parsed.as_ref().is_some_and(|u| {
        u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
            || u.password().is_some()
    }) {
        v.push(
            "provider.base_url",
            "no query, fragment or credentials: the key goes in api_key",
        );
    } else if !provider.api_key.is_empty() && !key_may_go_to(url) {
        v.push(
            "provider.api_key",
            "sent only over https://, or over http:// to a loopback or private address \
             given as an IP",
        );
    }
    let model = provider.model.trim();
    if model.is_empty() || model.len() > limits::MODEL_BYTES || model.contains(char::is_whitespace)
    {
        v.push(
            "provider.model",
            format!(
                "required: the model's name at the provider, at most {} bytes, no spaces",
                limits::MODEL_BYTES
            ),
        );
    }
    if provider.api_key.len() > limits::KEY_BYTES
        || !provider.api_key.bytes().all(|b| b.is_ascii_graphic())
    {
        v.push(
            "provider.api_key",
            format!(
                "at most {} bytes of printable ASCII, no spaces",
                limits::KEY_BYTES
            ),
        );
    }
    if provider.timeout_ms > limits::TIMEOUT_MS_MAX {
        v.push(
            "provider.timeout_ms",
            format!(
                "at most {} (0: {})",
                limits::TIMEOUT_MS_MAX,
                limits::TIMEOUT_MS_DEFAULT
            ),
        );
    }
    if !(provider.temperature.is_finite() && (0.0..=2.0).contains(&provider.temperature)) {
        v.push("provider.temperature", "0 to 2");
    }
    v.0
}

/// A provider for the command skeleton: as last saved, none once deleted.
struct ProviderHistory;

impl Aggregate for ProviderHistory {
    type State = Option<ModelProvider>;

    fn apply(&self, state: &mut Self::State, e: &RecordedEvent) -> Result<(), EventLogError> {
        match e.event_type.as_str() {
            t::MODEL_PROVIDER_SAVED => {
                *state = e.decode::<ModelProviderSaved>()?.provider;
            }
            t::MODEL_PROVIDER_DELETED => *state = None,
            _ => {}
        }
        Ok(())
    }

    fn at_version(&self, state: &mut Self::State, version: u64) {
        if let Some(provider) = state {
            provider.version = version;
        }
    }
}

/// The model providers of every workspace, and calls to them.
#[derive(Clone)]
pub struct Providers {
    log: EventLog,
    store: FlowsStore,
    keyring: Option<Arc<Keyring>>,
    model: Arc<dyn ChatModel>,
}

/// The service's metadata, with the request's digest: a create's request id sent again
/// with another request is told apart by it.
fn metadata(workspace_id: &str, request_id: &str) -> Metadata {
    Metadata {
        request_hash: switchboard_runtime::requests::current_request_hash(),
        ..crate::service::metadata(workspace_id, request_id)
    }
}

fn saved(event_type: &str, provider: &ModelProvider, metadata: Metadata) -> NewEvent {
    let payload = ModelProviderSaved {
        provider: Some(provider.clone()),
    };
    crate::service::event(event_type, payload.encode_to_vec(), metadata)
}

impl Providers {
    pub fn new(log: EventLog, keyring: Option<Arc<Keyring>>, model: Arc<dyn ChatModel>) -> Self {
        Self {
            store: FlowsStore::new(log.clone()),
            log,
            keyring,
            model,
        }
    }

    async fn load(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<(ModelProvider, u64), ServiceError> {
        let loaded = ProviderHistory
            .load(&self.log, &provider_stream(workspace_id, id))
            .await?;
        match loaded.state {
            Some(provider) => Ok((provider, loaded.version)),
            None => Err(ServiceError::NotFound("model provider")),
        }
    }

    /// Creates (no id) or replaces a provider; `expected_version` (0: any) guards a
    /// replace. A new provider's id derives from the request id, so a retried create makes
    /// one provider.
    pub async fn save(
        &self,
        mut provider: ModelProvider,
        expected_version: u64,
        request_id: &str,
    ) -> Result<ModelProvider, ServiceError> {
        let mut v = Violations(violations(&provider));
        if request_id.len() > 128 {
            v.push("request_id", "at most 128 bytes");
        }
        if v.0
            .iter()
            .any(|f| f.field == "provider.workspace_id" || f.field == "provider.id")
        {
            return Err(ServiceError::Invalid(v.0));
        }
        let ws = provider.workspace_id.clone();
        // A create sent again with its request id: the provider it made, if it is the
        // same request; another request under the same id is refused.
        if provider.id.is_empty() && !request_id.is_empty() {
            let made = provider_stream(&ws, &created_id(&ws, request_id));
            if let Some(first) = self.log.read_stream(&made, 0, 1).await?.first() {
                let hash = switchboard_runtime::requests::current_request_hash();
                if !hash.is_empty() && first.metadata.request_hash != hash {
                    return Err(request_id_reused());
                }
                let created = first.decode::<ModelProviderSaved>()?.provider;
                return created
                    .map(public_view)
                    .ok_or(ServiceError::NotFound("model provider"));
            }
        }
        provider.name = provider.name.trim().to_owned();
        provider.base_url = provider.base_url.trim().trim_end_matches('/').to_owned();
        provider.model = provider.model.trim().to_owned();
        let existing = self.store.model_providers(&ws).await?;
        let previous = if provider.id.is_empty() {
            if existing.len() >= limits::PER_WORKSPACE {
                v.push(
                    "provider",
                    format!(
                        "a workspace has at most {} model providers",
                        limits::PER_WORKSPACE
                    ),
                );
            }
            None
        } else {
            Some(self.load(&ws, &provider.id).await?)
        };
        if existing
            .iter()
            .any(|(id, name)| *name == provider.name && *id != provider.id)
        {
            v.push(
                "provider.name",
                format!("a model provider named `{}` already exists", provider.name),
            );
        }
        if !provider.api_key.is_empty() && self.keyring.is_none() {
            v.push(
                "provider.api_key",
                "cannot be kept: the server has no SWITCHBOARD_ENCRYPTION_KEY",
            );
        }
        v.finish().map_err(ServiceError::Invalid)?;

        let (expected, event_id) = match &previous {
            None => {
                let request_id = if request_id.is_empty() {
                    Uuid::now_v7().to_string()
                } else {
                    request_id.to_owned()
                };
                provider.id = created_id(&ws, &request_id);
                let key = derive_event_id(&ws, &format!("model_provider:{request_id}"), 0);
                (ExpectedVersion::NoStream, key)
            }
            Some((_, version)) => {
                if expected_version != 0 && expected_version != *version {
                    return Err(ServiceError::Conflict {
                        expected: expected_version,
                        actual: *version,
                    });
                }
                (ExpectedVersion::Exact(*version), Uuid::now_v7())
            }
        };
        provider.sealed_api_key = match (&self.keyring, provider.api_key.is_empty()) {
            (Some(keyring), false) => {
                keyring.seal(provider.api_key.as_bytes(), &key_owner(&ws, &provider.id))
            }
            _ => previous
                .as_ref()
                .map(|(p, _)| p.sealed_api_key.clone())
                .unwrap_or_default(),
        };
        if !provider.sealed_api_key.is_empty() && !key_may_go_to(&provider.base_url) {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "provider.base_url".into(),
                description: "the provider keeps an API key, sent only over https:// (or \
                              http:// to a loopback or private IP): give such a URL, or \
                              save the provider anew without a key"
                    .into(),
            }]));
        }
        provider.api_key.clear();
        provider.api_key_set = false;
        provider.updated_at = Some(timestamp(now_micros()));
        let new = NewEvent {
            event_id,
            ..saved(
                t::MODEL_PROVIDER_SAVED,
                &provider,
                metadata(&ws, request_id),
            )
        };
        let stream = provider_stream(&ws, &provider.id);
        let appended = self.log.append(&stream, expected, vec![new]).await;
        match appended {
            Ok(appended) => {
                provider.version = appended.events.last().map_or(1, |e| e.stream_version);
                Ok(public_view(provider))
            }
            Err(EventLogError::Conflict { actual, .. }) if previous.is_some() => {
                Err(ServiceError::Conflict {
                    expected: expected_version,
                    actual,
                })
            }
            // The same create again: the provider it made.
            Err(EventLogError::Conflict { .. }) => {
                let (stored, _) = self.load(&ws, &provider.id).await?;
                Ok(public_view(stored))
            }
            Err(e) if is_unique_violation(&e) => Err(ServiceError::Invalid(vec![FieldViolation {
                field: "provider.name".into(),
                description: format!("a model provider named `{}` already exists", provider.name),
            }])),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, workspace_id: &str, id: &str) -> Result<ModelProvider, ServiceError> {
        Ok(public_view(self.load(workspace_id, id).await?.0))
    }

    pub async fn list(&self, workspace_id: &str) -> Result<Vec<ModelProvider>, ServiceError> {
        let mut providers = Vec::new();
        for (id, _) in self.store.model_providers(workspace_id).await? {
            match self.load(workspace_id, &id).await {
                Ok((provider, _)) => providers.push(public_view(provider)),
                // Deleted between the list and the load.
                Err(ServiceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(providers)
    }

    /// Deletes a provider and answers it as it was deleted; idempotent by request id.
    pub async fn delete(
        &self,
        r: DeleteModelProviderRequest,
    ) -> Result<ModelProvider, ServiceError> {
        if r.request_id.len() > 128 {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "request_id".into(),
                description: "at most 128 bytes".into(),
            }]));
        }
        let ws = r.workspace_id.as_str();
        let stream = provider_stream(ws, &r.provider_id);
        let key = if r.request_id.is_empty() {
            String::new()
        } else {
            format!("model_provider_delete:{}:{}", r.provider_id, r.request_id)
        };
        let metadata = metadata(ws, &r.request_id);
        let executed = Command::new(&self.log, &stream)
            .request(ws, &key)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(
                &ProviderHistory,
                |loaded: &Loaded<Option<ModelProvider>>| {
                    let Some(current) = &loaded.state else {
                        return Err(ServiceError::NotFound("model provider"));
                    };
                    let mut provider = current.clone();
                    provider.version = loaded.version + 1;
                    provider.updated_at = Some(timestamp(now_micros()));
                    // The key goes with the provider: it is not kept in the deleted record.
                    provider.sealed_api_key.clear();
                    let deleted = saved(t::MODEL_PROVIDER_DELETED, &provider, metadata.clone());
                    Ok(Decision::new(vec![deleted], public_view(provider)))
                },
            )
            .await;
        match executed {
            Ok(Executed::Duplicate { events, .. }) => events
                .first()
                .and_then(|e| e.decode::<ModelProviderSaved>().ok()?.provider)
                .map(public_view)
                .ok_or_else(request_id_reused),
            Ok(executed) => Ok(executed.into_output()),
            Err(CommandError::Rejected { error, .. }) => Err(error),
            Err(CommandError::Contended { actual, .. }) => Err(ServiceError::Conflict {
                expected: 0,
                actual,
            }),
            Err(CommandError::RequestReused) => Err(request_id_reused()),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }

    /// The provider a call goes to: `named` (a node's, else an assistant's) when set,
    /// else the workspace's first by name; `None` when the workspace has none.
    pub async fn resolve(
        &self,
        workspace_id: &str,
        named: &str,
    ) -> Result<Option<String>, ServiceError> {
        if !named.is_empty() {
            return Ok(Some(named.to_owned()));
        }
        let providers = self.store.model_providers(workspace_id).await?;
        Ok(providers.into_iter().next().map(|(id, _)| id))
    }

    /// The chat client calls go through.
    pub fn model(&self) -> &Arc<dyn ChatModel> {
        &self.model
    }

    /// Where and as whom to call the provider `id`: its key opened.
    pub async fn endpoint(&self, workspace_id: &str, id: &str) -> Result<Endpoint, ServiceError> {
        let (provider, _) = self.load(workspace_id, id).await?;
        let api_key = match (&self.keyring, provider.sealed_api_key.is_empty()) {
            (_, true) => None,
            (Some(keyring), false) => {
                let opened = keyring
                    .open(&provider.sealed_api_key, &key_owner(workspace_id, id))
                    .map_err(|e| {
                        ServiceError::Log(EventLogError::Corrupt {
                            event_id: String::new(),
                            event_type: t::MODEL_PROVIDER_SAVED.into(),
                            reason: format!("the API key cannot be opened: {e}"),
                        })
                    })?;
                Some(Secret::new(String::from_utf8_lossy(&opened).into_owned()))
            }
            (None, false) => {
                return Err(ServiceError::FailedPrecondition(
                    "the provider's API key is sealed and the server has no \
                     SWITCHBOARD_ENCRYPTION_KEY to open it"
                        .into(),
                ));
            }
        };
        Ok(Endpoint {
            base_url: provider.base_url,
            model: provider.model,
            api_key,
            timeout: Duration::from_millis(u64::from(match provider.timeout_ms {
                0 => limits::TIMEOUT_MS_DEFAULT,
                ms => ms,
            })),
            temperature: provider.temperature,
        })
    }

    /// One short completion: whether the provider answers, in how long, with what tokens.
    pub async fn test(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<ModelCallResult, ServiceError> {
        let endpoint = self.endpoint(workspace_id, id).await?;
        let request = ChatRequest {
            messages: vec![ChatMessage::new(
                Role::User,
                "Answer with the single word: ok",
            )],
            tools: Vec::new(),
            max_tokens: 5,
        };
        let started = Instant::now();
        let answer = self.model.complete(&endpoint, &request).await;
        let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        Ok(match answer {
            Ok(completion) => ModelCallResult {
                ok: true,
                error: String::new(),
                content: completion.content,
                prompt_tokens: completion.usage.prompt_tokens,
                completion_tokens: completion.usage.completion_tokens,
                latency_ms,
                attempts: completion.attempts,
            },
            Err(e) => ModelCallResult {
                ok: false,
                error: e.to_string(),
                latency_ms,
                ..Default::default()
            },
        })
    }
}
