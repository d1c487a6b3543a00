//! The command handler: endpoints (create, update, enable, disable, delete, rotate the
//! secret), fan-out of public events into messages, and replay.
//!
//! Streams: `webhook_endpoint/<ws>/<ep>` (one endpoint) and `webhook_message/<ws>/<msg>`
//! (one message to one endpoint: created, each attempt, and its end).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use switchboard_eventlog::{
    Command, CommandError, Decision, EventLog, EventLogError, Executed, ExpectedVersion, Fence,
    Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, Tx, VersionOnly, derive_event_id, micros,
    now_micros, timestamp,
};
use switchboard_proto::webhooks::v1::{
    CreateEndpointRequest, Endpoint, EndpointChanged, EndpointDisabledEvent, MessageCreated,
    MessageSuperseded, ResendRequested, RotateSecretRequest, SealedSecret, UpdateEndpointRequest,
    WebhookMessage,
};
use switchboard_secrets::Keyring;
use uuid::Uuid;

use crate::domain::{self, FieldViolation, UrlRules, Violations, event_types as t, limits};
use crate::payload::PublicJson;
use crate::store::WebhooksStore;

/// What time it is, for everything that schedules: real time in production, a clock the
/// test moves in tests of the retry schedule.
pub trait Clock: Send + Sync {
    fn now_micros(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        now_micros()
    }
}

/// Attempts of an append to a message's stream that reads its version first.
const MESSAGE_ATTEMPTS: u32 = 11;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error(
        "{code}: no such {0} in the workspace",
        code = switchboard_runtime::codes::WH_NOT_FOUND.id
    )]
    NotFound(&'static str),
    #[error(
        "{code}: the endpoint changed since version {expected}; it is at {actual}",
        code = switchboard_runtime::codes::WH_STALE_VERSION.id
    )]
    Conflict { expected: u64, actual: u64 },
    #[error(
        "{code}: a workspace has at most {0} endpoints",
        code = switchboard_runtime::codes::WH_TOO_MANY_ENDPOINTS.id
    )]
    TooManyEndpoints(u64),
    #[error(
        "{code}: a stored secret cannot be opened; check SWITCHBOARD_ENCRYPTION_KEY",
        code = switchboard_runtime::codes::WH_SECRET_UNREADABLE.id
    )]
    Sealed,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

pub fn endpoint_stream(workspace_id: &str, endpoint_id: &str) -> StreamRef {
    StreamRef::new("webhook_endpoint", format!("{workspace_id}/{endpoint_id}"))
}

pub fn message_stream(workspace_id: &str, message_id: &str) -> StreamRef {
    StreamRef::new("webhook_message", format!("{workspace_id}/{message_id}"))
}

/// A new signing secret of 32 random bytes. Randomness is I/O: it is drawn here, at the
/// edge, and the domain only encodes it ([`domain::secret_from_key`]).
pub fn generate_secret() -> String {
    use rand::Rng as _;
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    domain::secret_from_key(&key)
}

fn secret_owner(workspace_id: &str, endpoint_id: &str) -> String {
    format!("{workspace_id}/webhooks/{endpoint_id}")
}

/// The endpoint as callers see it: no secret, sealed or not.
pub fn public_view(mut endpoint: Endpoint) -> Endpoint {
    endpoint.secrets.clear();
    endpoint
}

/// How the service behaves; the operator's settings.
#[derive(Clone)]
pub struct Settings {
    pub urls: UrlRules,
    pub schedule: domain::RetrySchedule,
    /// An endpoint failing for this long (with no success between) is disabled.
    pub disable_after: Duration,
    /// The public REST API's base URL, for the `url` of conversations in bodies; empty for
    /// paths relative to it.
    pub api_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            urls: UrlRules::default(),
            schedule: domain::RetrySchedule::default(),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            api_url: String::new(),
        }
    }
}

#[derive(Clone)]
pub struct WebhooksService {
    log: EventLog,
    store: WebhooksStore,
    keyring: Arc<Keyring>,
    json: PublicJson,
    clock: Arc<dyn Clock>,
    settings: Arc<Settings>,
}

impl WebhooksService {
    pub fn new(log: EventLog, keyring: Arc<Keyring>, settings: Settings) -> Self {
        Self {
            store: WebhooksStore::new(log.clone()),
            log,
            keyring,
            json: PublicJson::new().with_api_url(&settings.api_url),
            clock: Arc::new(SystemClock),
            settings: Arc::new(settings),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    pub fn store(&self) -> &WebhooksStore {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    fn metadata(&self, workspace_id: &str, correlation_id: &str) -> Metadata {
        Metadata {
            workspace_id: workspace_id.to_owned(),
            correlation_id: correlation_id.to_owned(),
            traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
            occurred_at: self.now(),
            actor: switchboard_runtime::requests::current_actor(),
            ..Default::default()
        }
    }

    // -----------------------------------------------------------------------------------
    // Endpoints
    // -----------------------------------------------------------------------------------

    /// The endpoint and its stream version, deleted ones included.
    pub async fn load_endpoint(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<(Endpoint, u64)>, ServiceError> {
        let stream = endpoint_stream(workspace_id, endpoint_id);
        let mut found = None;
        let mut version = 0;
        loop {
            let events = self.log.read_stream(&stream, version, 500).await?;
            let Some(last) = events.last() else { break };
            version = last.stream_version;
            for event in &events {
                if t::is_endpoint_change(&event.event_type) {
                    found = event.decode::<EndpointChanged>()?.endpoint;
                }
            }
            if events.len() < 500 {
                break;
            }
        }
        Ok(found.map(|e| (e, version)))
    }

    /// A live (not deleted) endpoint.
    pub async fn endpoint(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
    ) -> Result<(Endpoint, u64), ServiceError> {
        match self.load_endpoint(workspace_id, endpoint_id).await? {
            Some((e, v)) if !e.deleted => Ok((e, v)),
            _ => Err(ServiceError::NotFound("endpoint")),
        }
    }

    /// The checks of a create that need no stored state, pushed beside the caller's own,
    /// so the gRPC layer answers them with its envelope checks in one answer (and this
    /// service, called directly, still refuses the same requests).
    pub fn check_create(&self, v: &mut Violations, r: &CreateEndpointRequest) {
        self.check_settings(
            v,
            &r.url,
            &r.event_types,
            &r.description,
            r.rate_limit_per_second,
        );
        check_secret(v, &r.secret);
        if r.request_id.len() > 128 {
            v.push("request_id", "at most 128 bytes");
        }
    }

    /// The checks of an update that need no stored state (see
    /// [`WebhooksService::check_create`]).
    pub fn check_update(&self, v: &mut Violations, r: &UpdateEndpointRequest) {
        self.check_settings(
            v,
            &r.url,
            &r.event_types,
            &r.description,
            r.rate_limit_per_second,
        );
    }

    fn check_settings(
        &self,
        v: &mut Violations,
        url: &str,
        event_types: &[String],
        description: &str,
        rate: u32,
    ) {
        domain::check_url(v, "url", url, &self.settings.urls);
        domain::check_event_types(v, event_types);
        if description.len() > limits::DESCRIPTION_BYTES {
            v.push(
                "description",
                format!("at most {} bytes", limits::DESCRIPTION_BYTES),
            );
        }
        if rate > limits::RATE_LIMIT_PER_SECOND {
            v.push(
                "rate_limit_per_second",
                format!("at most {}", limits::RATE_LIMIT_PER_SECOND),
            );
        }
    }

    fn seal(&self, workspace_id: &str, endpoint_id: &str, secret: &str) -> Vec<u8> {
        self.keyring
            .seal(secret.as_bytes(), &secret_owner(workspace_id, endpoint_id))
    }

    async fn append_endpoint(
        &self,
        event_type: &str,
        endpoint: Endpoint,
        expected: ExpectedVersion,
        event_id: Uuid,
        correlation_id: &str,
    ) -> Result<(Endpoint, bool), ServiceError> {
        let workspace_id = endpoint.workspace_id.clone();
        let stream = endpoint_stream(&workspace_id, &endpoint.id);
        let mut events = vec![NewEvent {
            event_id,
            event_type: event_type.into(),
            schema_version: 1,
            payload: EndpointChanged {
                endpoint: Some(endpoint.clone()),
            }
            .encode_to_vec(),
            metadata: self.metadata(&workspace_id, correlation_id),
        }];
        if event_type == t::ENDPOINT_DISABLED && endpoint.disabled_reason != "api" {
            events.push(NewEvent {
                event_id: derive_event_id(&workspace_id, &event_id.to_string(), 1),
                event_type: t::PUBLIC_ENDPOINT_DISABLED.into(),
                schema_version: 1,
                payload: EndpointDisabledEvent {
                    endpoint_id: endpoint.id.clone(),
                    url: endpoint.url.clone(),
                    reason: endpoint.disabled_reason.clone(),
                    failing_since: None,
                }
                .encode_to_vec(),
                metadata: self.metadata(&workspace_id, correlation_id),
            });
        }
        let version = match expected {
            ExpectedVersion::Exact(v) => v,
            _ => 0,
        };
        // One attempt: the caller decided on (and may have stated) this version, so a
        // change in between is its `Conflict`.
        let mut events = Some(events);
        let executed = Command::new(&self.log, &stream)
            .attempts(1)
            .starting_from(Loaded::new((), version))
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&VersionOnly, |_| {
                Ok::<_, Infallible>(Decision::events(events.take().unwrap_or_default()))
            })
            .await;
        let (stored, duplicate) = match executed {
            Ok(Executed::Appended { events, .. }) => (events, false),
            Ok(Executed::Duplicate { events, .. }) => (events, true),
            Ok(Executed::Unchanged { .. }) => (Vec::new(), false),
            Err(CommandError::Rejected { error, .. }) => match error {},
            Err(CommandError::Contended { actual, .. }) => {
                return Err(ServiceError::Conflict {
                    expected: version,
                    actual,
                });
            }
            Err(CommandError::RequestReused) => {
                return Err(ServiceError::Invalid(vec![FieldViolation {
                    field: "request_id".into(),
                    description: "already used for a different request; use a new request id \
                                  for each distinct request"
                        .into(),
                }]));
            }
            Err(CommandError::Log(e)) => return Err(e.into()),
        };
        let stored = stored
            .first()
            .map(|e| e.decode::<EndpointChanged>())
            .transpose()?
            .and_then(|changed| changed.endpoint);
        Ok((stored.unwrap_or(endpoint), duplicate))
    }

    /// Creates an endpoint; returns it with its secret (generated unless given).
    pub async fn create_endpoint(
        &self,
        r: CreateEndpointRequest,
    ) -> Result<(Endpoint, String), ServiceError> {
        let mut v = Violations::default();
        self.check_create(&mut v, &r);
        v.finish().map_err(ServiceError::Invalid)?;
        let request_id = if r.request_id.is_empty() {
            Uuid::now_v7().to_string()
        } else {
            r.request_id.clone()
        };
        let key = derive_event_id(&r.workspace_id, &format!("endpoint:{request_id}"), 0);
        let endpoint_id = format!("ep_{}", key.simple());
        if let Some((existing, _)) = self.load_endpoint(&r.workspace_id, &endpoint_id).await? {
            // A retried create: the same endpoint and secret.
            let secret = self.current_secret(&existing)?;
            return Ok((existing, secret));
        }
        let count = self.store.count_endpoints(&r.workspace_id).await?;
        if count >= limits::ENDPOINTS_PER_WORKSPACE {
            return Err(ServiceError::TooManyEndpoints(
                limits::ENDPOINTS_PER_WORKSPACE,
            ));
        }
        let secret = if r.secret.is_empty() {
            generate_secret()
        } else {
            r.secret.clone()
        };
        let now = timestamp(self.now());
        let endpoint = Endpoint {
            id: endpoint_id.clone(),
            workspace_id: r.workspace_id.clone(),
            url: r.url,
            event_types: r.event_types,
            description: r.description,
            enabled: r.enabled.unwrap_or(true),
            rate_limit_per_second: r.rate_limit_per_second,
            ordered: r.ordered,
            coalesce: r.coalesce,
            disabled_reason: if r.enabled == Some(false) {
                "api".into()
            } else {
                String::new()
            },
            created_at: Some(now),
            updated_at: Some(now),
            version: 1,
            deleted: false,
            secrets: vec![SealedSecret {
                sealed: self.seal(&r.workspace_id, &endpoint_id, &secret),
                expires_at: None,
            }],
        };
        let (stored, _) = self
            .append_endpoint(
                t::ENDPOINT_CREATED,
                endpoint,
                ExpectedVersion::NoStream,
                key,
                &request_id,
            )
            .await?;
        let secret = self.current_secret(&stored)?;
        Ok((stored, secret))
    }

    pub async fn update_endpoint(
        &self,
        r: UpdateEndpointRequest,
    ) -> Result<Endpoint, ServiceError> {
        let mut v = Violations::default();
        self.check_update(&mut v, &r);
        v.finish().map_err(ServiceError::Invalid)?;
        let (mut endpoint, version) = self.endpoint(&r.workspace_id, &r.endpoint_id).await?;
        if r.expected_version != 0 && r.expected_version != version {
            return Err(ServiceError::Conflict {
                expected: r.expected_version,
                actual: version,
            });
        }
        endpoint.url = r.url;
        endpoint.event_types = r.event_types;
        endpoint.description = r.description;
        endpoint.rate_limit_per_second = r.rate_limit_per_second;
        endpoint.ordered = r.ordered;
        endpoint.coalesce = r.coalesce;
        self.change(t::ENDPOINT_UPDATED, endpoint, version).await
    }

    async fn change(
        &self,
        event_type: &str,
        mut endpoint: Endpoint,
        version: u64,
    ) -> Result<Endpoint, ServiceError> {
        endpoint.version = version + 1;
        endpoint.updated_at = Some(timestamp(self.now()));
        let (stored, _) = self
            .append_endpoint(
                event_type,
                endpoint,
                ExpectedVersion::Exact(version),
                Uuid::now_v7(),
                "",
            )
            .await?;
        Ok(stored)
    }

    /// Enables or disables an endpoint. `reason`: `api`, `gone` or `failing`.
    pub async fn set_enabled(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<Endpoint, ServiceError> {
        let (mut endpoint, version) = self.endpoint(workspace_id, endpoint_id).await?;
        if endpoint.enabled == enabled {
            return Ok(endpoint);
        }
        endpoint.enabled = enabled;
        endpoint.disabled_reason = if enabled {
            String::new()
        } else {
            reason.to_owned()
        };
        let event_type = if enabled {
            t::ENDPOINT_ENABLED
        } else {
            t::ENDPOINT_DISABLED
        };
        match self.change(event_type, endpoint, version).await {
            // Another change won the race; what it left is what stands.
            Err(ServiceError::Conflict { .. }) => {
                Ok(self.endpoint(workspace_id, endpoint_id).await?.0)
            }
            other => other,
        }
    }

    pub async fn delete_endpoint(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
    ) -> Result<Endpoint, ServiceError> {
        let (mut endpoint, version) = self.endpoint(workspace_id, endpoint_id).await?;
        endpoint.deleted = true;
        endpoint.enabled = false;
        endpoint.secrets.clear();
        self.change(t::ENDPOINT_DELETED, endpoint, version).await
    }

    /// Starts signing with a new secret; the current one keeps signing for the grace period.
    pub async fn rotate_secret(
        &self,
        r: RotateSecretRequest,
    ) -> Result<(Endpoint, String), ServiceError> {
        let mut v = Violations::default();
        check_rotation(&mut v, &r);
        v.finish().map_err(ServiceError::Invalid)?;
        let (mut endpoint, version) = self.endpoint(&r.workspace_id, &r.endpoint_id).await?;
        let now = self.now();
        let grace = if r.grace_period_seconds == 0 {
            limits::DEFAULT_GRACE_SECONDS
        } else {
            r.grace_period_seconds
        };
        let expires = timestamp(now + i64::from(grace) * 1_000_000);
        let mut secrets: Vec<SealedSecret> = endpoint
            .secrets
            .drain(..)
            .filter(|s| s.expires_at.is_none_or(|at| micros(&at) > now))
            .map(|mut s| {
                if s.expires_at.is_none() {
                    s.expires_at = Some(expires);
                }
                s
            })
            .collect();
        let secret = if r.secret.is_empty() {
            generate_secret()
        } else {
            r.secret
        };
        secrets.insert(
            0,
            SealedSecret {
                sealed: self.seal(&r.workspace_id, &r.endpoint_id, &secret),
                expires_at: None,
            },
        );
        endpoint.secrets = secrets;
        let stored = self
            .change(t::ENDPOINT_SECRET_ROTATED, endpoint, version)
            .await?;
        Ok((stored, secret))
    }

    fn open(&self, endpoint: &Endpoint, sealed: &SealedSecret) -> Result<String, ServiceError> {
        let owner = secret_owner(&endpoint.workspace_id, &endpoint.id);
        let plain = self
            .keyring
            .open(&sealed.sealed, &owner)
            .map_err(|_| ServiceError::Sealed)?;
        String::from_utf8(plain.to_vec()).map_err(|_| ServiceError::Sealed)
    }

    pub fn current_secret(&self, endpoint: &Endpoint) -> Result<String, ServiceError> {
        let current = endpoint
            .secrets
            .iter()
            .find(|s| s.expires_at.is_none())
            .ok_or(ServiceError::Sealed)?;
        self.open(endpoint, current)
    }

    /// The secrets signing now: the current one first, then those still in their grace
    /// period.
    pub fn signing_secrets(&self, endpoint: &Endpoint) -> Result<Vec<String>, ServiceError> {
        let now = self.now();
        Ok(self
            .all_secrets(endpoint)?
            .into_iter()
            .filter(|(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(secret, _)| secret)
            .collect())
    }

    /// Every stored secret, opened, with when it stops signing (`None`: current).
    pub fn all_secrets(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Vec<(String, Option<i64>)>, ServiceError> {
        endpoint
            .secrets
            .iter()
            .map(|s| Ok((self.open(endpoint, s)?, s.expires_at.map(|at| micros(&at)))))
            .collect()
    }

    // -----------------------------------------------------------------------------------
    // Fan-out
    // -----------------------------------------------------------------------------------

    /// Records one message per endpoint of the workspace that wants the public event
    /// (`public_type` is its name on NATS: `conversation.updated`), in `tx`, the
    /// subscription's transaction, so the messages and the record that the event was
    /// processed commit together. Ids are derived from the event and the endpoint, so
    /// even a redelivery past that record creates nothing twice.
    pub async fn fan_out(
        &self,
        tx: &mut Tx<'_>,
        public_type: &str,
        event: &RecordedEvent,
    ) -> Result<usize, FanOutError> {
        let workspace_id = event.workspace_id();
        let endpoints = self.store.live_endpoints(workspace_id).await?;
        let wanted: Vec<_> = endpoints
            .into_iter()
            .filter(|e| domain::wants(&e.event_types, public_type))
            .collect();
        if wanted.is_empty() {
            return Ok(0);
        }
        let body = self
            .json
            .body(public_type, event)
            .map_err(FanOutError::Unrenderable)?;
        let conversation_id = domain::lane_of(&body["data"]);
        let payload = body.to_string();
        let mut created = 0;
        for endpoint in wanted {
            let key = format!("{}/{}", event.event_id, endpoint.endpoint_id);
            let message_id = format!(
                "whmsg_{}",
                derive_event_id(workspace_id, &format!("message:{key}"), 0).simple()
            );
            let new = NewEvent {
                event_id: derive_event_id(workspace_id, &format!("message:{key}"), 1),
                event_type: t::MESSAGE_CREATED.into(),
                schema_version: 1,
                payload: MessageCreated {
                    message_id: message_id.clone(),
                    endpoint_id: endpoint.endpoint_id.clone(),
                    event_id: event.event_id.to_string(),
                    event_type: public_type.to_owned(),
                    payload_json: payload.clone(),
                    conversation_id: conversation_id.clone(),
                    created_at: Some(timestamp(self.now())),
                }
                .encode_to_vec(),
                metadata: Metadata {
                    causation_id: event.event_id.to_string(),
                    ..self.metadata(workspace_id, &event.metadata.correlation_id)
                },
            };
            let appended = self
                .log
                .append_in(
                    tx,
                    &message_stream(workspace_id, &message_id),
                    ExpectedVersion::NoStream,
                    vec![new],
                )
                .await;
            let appended = match appended {
                Ok(appended) => appended,
                // Created before by an earlier delivery of the event.
                Err(EventLogError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if appended.duplicate {
                continue;
            }
            created += 1;
            if endpoint.coalesce
                && endpoint.failing_since != 0
                && public_type == switchboard_contract::event_types::conversations::UPDATED
                && !conversation_id.is_empty()
            {
                self.supersede_older(
                    tx,
                    workspace_id,
                    &endpoint.endpoint_id,
                    &conversation_id,
                    &message_id,
                )
                .await?;
            }
        }
        Ok(created)
    }

    /// While an endpoint fails, a newer `conversation.updated` replaces the queued ones of
    /// the same conversation; each replaced message records what replaced it.
    async fn supersede_older(
        &self,
        tx: &mut Tx<'_>,
        workspace_id: &str,
        endpoint_id: &str,
        conversation_id: &str,
        newest: &str,
    ) -> Result<(), EventLogError> {
        let Some(sequence) = crate::store::sequence_in(tx, newest).await? else {
            return Ok(());
        };
        for (older, version) in
            crate::store::supersedable_in(tx, endpoint_id, conversation_id, sequence).await?
        {
            let event = NewEvent {
                event_id: derive_event_id(workspace_id, &format!("superseded:{older}"), 0),
                event_type: t::MESSAGE_SUPERSEDED.into(),
                schema_version: 1,
                payload: MessageSuperseded {
                    superseded_by: newest.to_owned(),
                }
                .encode_to_vec(),
                metadata: self.metadata(workspace_id, ""),
            };
            let stream = message_stream(workspace_id, &older);
            let expected = ExpectedVersion::Exact(version as u64);
            match self.log.append_in(tx, &stream, expected, vec![event]).await {
                // Its attempt is being recorded right now; it goes out as it is.
                Ok(_) | Err(EventLogError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends `event` to a message's stream at whatever version it is (its writers are
    /// the dispatcher, fan-out and replay; each event decides on its own), retrying when
    /// another writer got there first. The event id makes a retried append a no-op.
    pub async fn append_to_message(
        &self,
        workspace_id: &str,
        message_id: &str,
        event: NewEvent,
    ) -> Result<(), EventLogError> {
        self.append_to_message_at(workspace_id, message_id, None, event, None)
            .await
    }

    /// Like [`WebhooksService::append_to_message`], trying `known_version` (from the read
    /// model) first, so the common case reads nothing, and only while `fence`'s lease is
    /// held when there is one (the dispatcher's records).
    pub async fn append_to_message_at(
        &self,
        workspace_id: &str,
        message_id: &str,
        known_version: Option<u64>,
        event: NewEvent,
        fence: Option<&Fence>,
    ) -> Result<(), EventLogError> {
        let stream = message_stream(workspace_id, message_id);
        let known = known_version.filter(|v| *v > 0);
        // Loads after the known version's attempt: eleven, as before.
        let mut command = Command::new(&self.log, &stream)
            .attempts(MESSAGE_ATTEMPTS + u32::from(known.is_some()))
            .fenced(fence);
        if let Some(version) = known {
            command = command.starting_from(Loaded::new((), version));
        }
        command
            .run(&VersionOnly, |_| {
                Ok::<_, Infallible>(Decision::events(vec![event.clone()]))
            })
            .await
            .map(drop)
            .map_err(|e| match e.into_log_error() {
                Ok(e) => e,
                Err(never) => match never {},
            })
    }

    // -----------------------------------------------------------------------------------
    // Replay
    // -----------------------------------------------------------------------------------

    pub async fn message(
        &self,
        workspace_id: &str,
        message_id: &str,
    ) -> Result<WebhookMessage, ServiceError> {
        self.store
            .message(workspace_id, message_id)
            .await?
            .ok_or(ServiceError::NotFound("message"))
    }

    /// Sends a message again (same `webhook-id`), with a fresh retry schedule.
    pub async fn resend(
        &self,
        workspace_id: &str,
        message_id: &str,
        recovery_id: &str,
    ) -> Result<(), ServiceError> {
        self.message(workspace_id, message_id).await?;
        let event = NewEvent {
            event_id: if recovery_id.is_empty() {
                Uuid::now_v7()
            } else {
                derive_event_id(workspace_id, &format!("{recovery_id}/{message_id}"), 0)
            },
            event_type: t::MESSAGE_RESEND_REQUESTED.into(),
            schema_version: 1,
            payload: ResendRequested {
                at: Some(timestamp(self.now())),
                recovery_id: recovery_id.to_owned(),
            }
            .encode_to_vec(),
            metadata: self.metadata(workspace_id, recovery_id),
        };
        self.append_to_message(workspace_id, message_id, event)
            .await?;
        Ok(())
    }

    /// Resends every failed message of an endpoint created since `since`, page by page
    /// (no cap), calling `progress(total, done, page)` after each page. A dry run resends
    /// nothing and reports the same pages.
    pub async fn recover(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
        since: i64,
        dry_run: bool,
        progress: &mut (dyn FnMut(u64, u64, Vec<String>) + Send),
    ) -> Result<u64, ServiceError> {
        self.endpoint(workspace_id, endpoint_id).await?;
        let total = self
            .store
            .count_failed_since(workspace_id, endpoint_id, since)
            .await?;
        let recovery_id = format!("recovery_{}", Uuid::now_v7().simple());
        let mut cursor = (i64::MIN, String::new());
        let mut done = 0;
        loop {
            let page = self
                .store
                .failed_since(workspace_id, endpoint_id, since, &cursor, 500)
                .await?;
            let Some(last) = page.last() else { break };
            cursor = last.clone();
            // A dry run walks the same pages; resent messages leave the failed set, so a
            // real run's cursor only ever moves forward over what it has not seen.
            let ids: Vec<String> = page.into_iter().map(|(_, id)| id).collect();
            if !dry_run {
                for id in &ids {
                    self.resend(workspace_id, id, &recovery_id).await?;
                }
            }
            done += ids.len() as u64;
            progress(total.max(done), done, ids);
        }
        Ok(done)
    }
}

/// The checks of a rotation that need no stored state (see
/// [`WebhooksService::check_create`]).
pub fn check_rotation(v: &mut Violations, r: &RotateSecretRequest) {
    check_secret(v, &r.secret);
    if r.grace_period_seconds > limits::MAX_GRACE_SECONDS {
        v.push(
            "grace_period_seconds",
            format!("at most {} (7 days)", limits::MAX_GRACE_SECONDS),
        );
    }
}

/// A secret the caller chose must be one Standard Webhooks can sign with; empty means
/// "generate one".
fn check_secret(v: &mut Violations, secret: &str) {
    if !secret.is_empty()
        && let Err(reason) = domain::secret_key(secret)
    {
        v.push("secret", reason);
    }
}

/// Why fan-out failed.
#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    /// The event has no JSON form: it can never be sent.
    #[error("{0}")]
    Unrenderable(String),
    #[error(transparent)]
    Log(#[from] EventLogError),
}
