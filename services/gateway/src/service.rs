//! The API keys' command handler: load a workspace's key ring, decide, append, retry on a
//! race (the command skeleton), and authenticate presented keys against the read model.

use switchboard_eventlog::{
    Aggregate, Command as Skeleton, CommandError, Decision, EventLog, EventLogError, Executed,
    Metadata, NewEvent, RecordedEvent, StreamRef, now_micros,
};

use crate::domain::{
    self, Access, Actor, Command, DomainError, Event, IssuedKey, KeyRing, LOOKUP_BYTES,
    SECRET_BYTES,
};
use crate::store::{GatewayStore, KeyRecord};

/// Why a key command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Another writer kept changing the workspace's keys.
    #[error("the workspace's API keys are changing too fast; try again")]
    Contended,
    /// This request id already did something else.
    #[error("this request id was already used for another request")]
    RequestIdReused,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// A key just created: the key itself, shown once, and its record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: String,
    pub record: KeyRecord,
}

/// Who presented a key, once it checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub workspace_id: String,
    pub key_id: String,
    pub scopes: Vec<String>,
}

impl Caller {
    /// `api_key:<id>`, as events record who acted.
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
    }

    /// Whether the key allows `access` to `resource`.
    pub fn may(&self, resource: &str, access: Access) -> bool {
        domain::allows(&self.scopes, resource, access)
    }
}

/// A workspace's key ring, as the command skeleton loads it.
struct KeyRingAggregate;

impl Aggregate for KeyRingAggregate {
    type State = KeyRing;

    fn apply(&self, state: &mut KeyRing, event: &RecordedEvent) -> Result<(), EventLogError> {
        if let Some(event) = Event::decode(event)? {
            domain::apply(state, &event);
        }
        Ok(())
    }
}

fn ring_stream(workspace_id: &str) -> StreamRef {
    StreamRef::new("api_keys", workspace_id)
}

/// A new key id: `key_` and a ULID.
pub fn new_key_id() -> String {
    format!("key_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A key made of fresh random bytes.
pub fn new_key() -> IssuedKey {
    domain::issue(
        rand::random::<[u8; LOOKUP_BYTES]>(),
        rand::random::<[u8; SECRET_BYTES]>(),
    )
}

/// Creates, revokes, rotates and checks API keys.
#[derive(Clone)]
pub struct ApiKeys {
    log: EventLog,
    store: GatewayStore,
}

impl ApiKeys {
    pub fn new(log: EventLog) -> Self {
        Self {
            store: GatewayStore::new(log.clone()),
            log,
        }
    }

    pub fn store(&self) -> &GatewayStore {
        &self.store
    }

    /// Creates a key named `name` with `scopes` (the defaults when empty), expiring at
    /// `expires_at` (0: never). `request_id` makes a retry append nothing new; the key
    /// itself exists only in this answer, so a retried request is refused rather than
    /// answered with a key nobody can show again.
    pub async fn create(
        &self,
        workspace_id: &str,
        request_id: &str,
        name: &str,
        scopes: &[String],
        expires_at: i64,
        by: &str,
    ) -> Result<CreatedKey, KeyError> {
        let scopes = if scopes.is_empty() {
            domain::DEFAULT_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            scopes.to_vec()
        };
        let issued = new_key();
        let id = new_key_id();
        let command = Command::Create {
            id: id.clone(),
            name: name.to_owned(),
            scopes,
            expires_at,
            issued: issued.clone(),
        };
        self.execute(workspace_id, request_id, by, command).await?;
        Ok(CreatedKey {
            key: issued.key,
            record: self.expect_record(workspace_id, &id).await?,
        })
    }

    /// Revokes key `id`: refused at once on every replica.
    pub async fn revoke(
        &self,
        workspace_id: &str,
        request_id: &str,
        id: &str,
        by: &str,
    ) -> Result<KeyRecord, KeyError> {
        let command = Command::Revoke { id: id.to_owned() };
        self.execute(workspace_id, request_id, by, command).await?;
        self.expect_record(workspace_id, id).await
    }

    /// Replaces key `id` with a new one of the same name and scopes; `id` keeps working for
    /// `overlap_secs`.
    pub async fn rotate(
        &self,
        workspace_id: &str,
        request_id: &str,
        id: &str,
        overlap_secs: u64,
        by: &str,
    ) -> Result<CreatedKey, KeyError> {
        let issued = new_key();
        let successor_id = new_key_id();
        let command = Command::Rotate {
            id: id.to_owned(),
            successor_id: successor_id.clone(),
            overlap_secs,
            issued: issued.clone(),
        };
        self.execute(workspace_id, request_id, by, command).await?;
        Ok(CreatedKey {
            key: issued.key,
            record: self.expect_record(workspace_id, &successor_id).await?,
        })
    }

    /// The caller a presented key stands for, or `None` when it is not a live key: malformed,
    /// unknown, wrong secret, revoked or expired all look the same to the presenter.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Caller>, EventLogError> {
        let Some(prefix) = domain::prefix_of(presented) else {
            return Ok(None);
        };
        let Some(record) = self.store.by_prefix(prefix).await? else {
            return Ok(None);
        };
        let now = now_micros();
        if !domain::verifies(&record.secret_hash, presented) || record.refused_at(now) {
            return Ok(None);
        }
        if let Err(e) = self.store.touch(&record.id, now).await {
            tracing::warn!(key = %record.id, error = %e, "could not record the key's last use");
        }
        Ok(Some(Caller {
            workspace_id: record.workspace_id,
            key_id: record.id,
            scopes: record.scopes,
        }))
    }

    async fn expect_record(&self, workspace_id: &str, id: &str) -> Result<KeyRecord, KeyError> {
        self.store
            .get(workspace_id, id)
            .await?
            .ok_or(KeyError::Domain(DomainError::NotFound))
    }

    async fn execute(
        &self,
        workspace_id: &str,
        request_id: &str,
        by: &str,
        command: Command,
    ) -> Result<(), KeyError> {
        let stream = ring_stream(workspace_id);
        let executed = Skeleton::new(&self.log, &stream)
            .request(workspace_id, request_id)
            .run(&KeyRingAggregate, |loaded| {
                let actor = Actor {
                    workspace_id: workspace_id.to_owned(),
                    by: by.to_owned(),
                    now: now_micros(),
                };
                let events = domain::decide(&loaded.state, &command, &actor)?;
                Ok::<_, DomainError>(Decision::events(
                    events
                        .iter()
                        .map(|event| NewEvent {
                            event_id: uuid::Uuid::now_v7(),
                            event_type: event.event_type().to_owned(),
                            schema_version: 1,
                            payload: event.encode(),
                            metadata: Metadata {
                                workspace_id: workspace_id.to_owned(),
                                correlation_id: request_id.to_owned(),
                                occurred_at: actor.now,
                                actor: by.to_owned(),
                                ..Default::default()
                            },
                        })
                        .collect(),
                ))
            })
            .await;
        match executed {
            Ok(Executed::Appended { .. } | Executed::Unchanged { .. }) => Ok(()),
            // The key of a retried creation or rotation was shown once, to the first
            // request; a revocation's retry is answered as the first was.
            Ok(Executed::Duplicate { .. }) => match command {
                Command::Revoke { .. } => Ok(()),
                _ => Err(KeyError::RequestIdReused),
            },
            Err(CommandError::Rejected { error, .. }) => Err(error.into()),
            Err(CommandError::Contended { .. }) => Err(KeyError::Contended),
            Err(CommandError::RequestReused) => Err(KeyError::RequestIdReused),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }
}
