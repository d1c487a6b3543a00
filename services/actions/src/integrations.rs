//! Integrations: the connected services a workspace's HTTP actions share, event-sourced in
//! `integration/<ws>/<int>` (`integration.saved`, `integration.deleted`). The secret is
//! sealed for its integration before it is stored and never returned; a replace without
//! one keeps the stored one. Its actions are listed as its operations, and an integration
//! some action still uses cannot be deleted.

use prost::Message as _;
use switchboard_eventlog::{
    Aggregate, EventLogError, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamRef,
    derive_event_id, now_micros,
};
use switchboard_proto::actions::v1::{Integration, IntegrationSaved};
use uuid::Uuid;

use crate::domain::integration::{self, PER_WORKSPACE, secret_owner};
use crate::domain::{DomainError, FieldViolation, event_types as t};
use crate::service::{ActionService, RequestContext, ServiceError, request_id_reused};
use crate::store::{ActionStore, QueryError};

pub fn stream_of(workspace_id: &str, integration_id: &str) -> StreamRef {
    StreamRef::new("integration", format!("{workspace_id}/{integration_id}"))
}

pub use crate::domain::integration::decode;

/// The id a create with `request_id` makes, so a retried create makes one integration.
fn created_id(workspace_id: &str, request_id: &str) -> String {
    let key = derive_event_id(workspace_id, &format!("integration:{request_id}"), 0);
    format!("int_{}", key.simple())
}

/// An integration for loading: as last saved, none once deleted.
struct IntegrationHistory;

impl Aggregate for IntegrationHistory {
    type State = Option<Integration>;

    fn apply(&self, state: &mut Self::State, e: &RecordedEvent) -> Result<(), EventLogError> {
        if let Some((integration, deleted)) = decode(e)? {
            *state = (!deleted).then_some(integration);
        }
        Ok(())
    }

    fn at_version(&self, state: &mut Self::State, version: u64) {
        if let Some(integration) = state {
            integration.version = version;
        }
    }
}

fn invalid(field: &str, description: impl Into<String>) -> ServiceError {
    DomainError::Invalid(vec![FieldViolation {
        field: field.into(),
        description: description.into(),
    }])
    .into()
}

fn query_error(e: QueryError) -> ServiceError {
    match e {
        QueryError::Log(e) => ServiceError::Log(e),
        QueryError::Cursor(e) => invalid("cursor", e.to_string()),
    }
}

fn event(event_type: &str, integration: &Integration, ctx: &RequestContext) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: IntegrationSaved {
            integration: Some(integration.clone()),
        }
        .encode_to_vec(),
        metadata: Metadata {
            workspace_id: ctx.workspace_id.clone(),
            correlation_id: ctx.request_id.clone(),
            traceparent: ctx.traceparent.clone(),
            occurred_at: now_micros(),
            actor: switchboard_runtime::requests::current_actor(),
            request_hash: switchboard_runtime::requests::current_request_hash(),
            ..Default::default()
        },
    }
}

impl ActionService {
    fn store(&self) -> ActionStore {
        ActionStore::new(self.log().clone())
    }

    /// The integration as its events left it (secret sealed), with its stream version;
    /// `None` when there is none or it was deleted.
    pub async fn load_integration(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<Integration>, ServiceError> {
        let loaded = IntegrationHistory
            .load(self.log(), &stream_of(workspace_id, id))
            .await?;
        Ok(loaded.state)
    }

    /// The integration as callers see it: no secret, with its operations.
    pub async fn integration(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Integration, ServiceError> {
        let stored = self
            .load_integration(workspace_id, id)
            .await?
            .ok_or(DomainError::IntegrationNotFound)?;
        self.with_operations(stored).await
    }

    async fn with_operations(&self, stored: Integration) -> Result<Integration, ServiceError> {
        let mut view = integration::public_view(stored);
        view.operations = self
            .store()
            .using_integration(&view.workspace_id, &view.id)
            .await
            .map_err(query_error)?
            .iter()
            .filter_map(integration::operation)
            .collect();
        Ok(view)
    }

    /// The workspace's integrations by name.
    pub async fn integrations(&self, workspace_id: &str) -> Result<Vec<Integration>, ServiceError> {
        let mut all = Vec::new();
        for (id, _) in self
            .store()
            .integrations(workspace_id)
            .await
            .map_err(query_error)?
        {
            match self.integration(workspace_id, &id).await {
                Ok(found) => all.push(found),
                // Deleted between the list and the load.
                Err(ServiceError::Domain(DomainError::IntegrationNotFound)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }

    /// Creates (no id) or replaces an integration; `expected_version` (0: any) guards a
    /// replace. The secret is sealed for the integration; a replace that gives none for
    /// the same kind of auth keeps the stored one.
    pub async fn save_integration(
        &self,
        ctx: &RequestContext,
        mut given: Integration,
        expected_version: u64,
    ) -> Result<Integration, ServiceError> {
        given.workspace_id = ctx.workspace_id.clone();
        let ws = ctx.workspace_id.as_str();
        if !given.id.is_empty()
            && !switchboard_runtime::requests::valid_prefixed_id(&given.id, "int_")
        {
            return Err(invalid(
                "integration.id",
                "`int_` followed by 1 to 64 letters, digits, `_` or `-`; empty to create",
            ));
        }
        // A create sent again with its request id answers what it made, if it is the same
        // request; another request under the same id is refused.
        if given.id.is_empty() && !ctx.request_id.is_empty() {
            let made = stream_of(ws, &created_id(ws, &ctx.request_id));
            if let Some(first) = self.log().read_stream(&made, 0, 1).await?.first() {
                let hash = switchboard_runtime::requests::current_request_hash();
                if !hash.is_empty() && first.metadata.request_hash != hash {
                    return Err(request_id_reused());
                }
                let id = created_id(ws, &ctx.request_id);
                return self.integration(ws, &id).await;
            }
        }
        let previous = if given.id.is_empty() {
            None
        } else {
            let loaded = IntegrationHistory
                .load(self.log(), &stream_of(ws, &given.id))
                .await?;
            let stored = loaded.state.ok_or(DomainError::IntegrationNotFound)?;
            if expected_version != 0 && expected_version != loaded.version {
                return Err(DomainError::StaleVersion {
                    expected: expected_version,
                    actual: loaded.version,
                }
                .into());
            }
            Some((stored, loaded.version))
        };
        let mut found: Vec<FieldViolation> =
            integration::violations(&given, previous.as_ref().map(|(p, _)| p))
                .into_iter()
                .map(|v| FieldViolation {
                    field: format!("integration.{}", v.field),
                    ..v
                })
                .collect();
        let existing = self.store().integrations(ws).await.map_err(query_error)?;
        if previous.is_none() && existing.len() >= PER_WORKSPACE {
            found.push(FieldViolation {
                field: "integration".into(),
                description: format!("a workspace has at most {PER_WORKSPACE} integrations"),
            });
        }
        if existing
            .iter()
            .any(|(id, name)| *name == given.name.trim() && *id != given.id)
        {
            found.push(FieldViolation {
                field: "integration.name".into(),
                description: format!("an integration named `{}` already exists", given.name),
            });
        }
        if !found.is_empty() {
            return Err(DomainError::Invalid(found).into());
        }

        let (expected, id) = match &previous {
            None => {
                let request_id = if ctx.request_id.is_empty() {
                    Uuid::now_v7().to_string()
                } else {
                    ctx.request_id.clone()
                };
                (ExpectedVersion::NoStream, created_id(ws, &request_id))
            }
            Some((_, version)) => (ExpectedVersion::Exact(*version), given.id.clone()),
        };
        given.id = id;
        if let Some(auth) = given.auth.as_mut() {
            let stored = previous
                .as_ref()
                .and_then(|(p, _)| p.auth.as_ref())
                .filter(|p| p.kind == auth.kind);
            auth.sealed_secret = if !auth.secret.is_empty() {
                self.keyring()
                    .seal(auth.secret.as_bytes(), &secret_owner(ws, &given.id))
            } else {
                stored.map(|p| p.sealed_secret.clone()).unwrap_or_default()
            };
        }
        integration::normalize(&mut given);
        let now = Some(crate::domain::timestamp(now_micros()));
        given.created_at = previous.as_ref().map_or(now, |(p, _)| p.created_at);
        given.updated_at = now;
        let mut new = event(t::INTEGRATION_SAVED, &given, ctx);
        if previous.is_none() && !ctx.request_id.is_empty() {
            new.event_id = derive_event_id(ws, &format!("integration:{}", ctx.request_id), 0);
        }
        let stream = stream_of(ws, &given.id);
        match self.log().append(&stream, expected, vec![new]).await {
            Ok(_) => self.integration(ws, &given.id).await,
            Err(EventLogError::Conflict { actual, .. }) if previous.is_some() => {
                Err(DomainError::StaleVersion {
                    expected: expected_version,
                    actual,
                }
                .into())
            }
            // The same create, racing itself: what it made.
            Err(EventLogError::Conflict { .. }) => self.integration(ws, &given.id).await,
            Err(EventLogError::Database(e)) if crate::service::is_unique_violation(&e) => {
                Err(invalid(
                    "integration.name",
                    format!("an integration named `{}` already exists", given.name),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an integration no action uses, answering it as it was deleted (its secret
    /// gone with it). A retried delete with the same request id answers as the first did.
    pub async fn delete_integration(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Integration, ServiceError> {
        let ws = ctx.workspace_id.as_str();
        let stream = stream_of(ws, id);
        let loaded = IntegrationHistory.load(self.log(), &stream).await?;
        let Some(mut stored) = loaded.state else {
            // Deleted already: by this very request, it answers as it did then.
            let events = self.log().read_stream(&stream, 0, 1000).await?;
            let deleted_by_this = events.iter().rev().find(|e| {
                e.event_type == t::INTEGRATION_DELETED
                    && !ctx.request_id.is_empty()
                    && e.metadata.correlation_id == ctx.request_id
            });
            return match deleted_by_this.map(decode).transpose()?.flatten() {
                Some((deleted, _)) => Ok(integration::public_view(deleted)),
                None => Err(DomainError::IntegrationNotFound.into()),
            };
        };
        let using = self
            .store()
            .using_integration(ws, id)
            .await
            .map_err(query_error)?;
        if !using.is_empty() {
            return Err(
                DomainError::IntegrationInUse(using.into_iter().map(|a| a.name).collect()).into(),
            );
        }
        stored.version = loaded.version + 1;
        stored.updated_at = Some(crate::domain::timestamp(now_micros()));
        if let Some(auth) = stored.auth.as_mut() {
            auth.sealed_secret.clear();
        }
        let deleted = event(t::INTEGRATION_DELETED, &stored, ctx);
        match self
            .log()
            .append(
                &stream,
                ExpectedVersion::Exact(loaded.version),
                vec![deleted],
            )
            .await
        {
            Ok(_) => Ok(integration::public_view(stored)),
            Err(EventLogError::Conflict { .. }) => Err(ServiceError::Contended),
            Err(e) => Err(e.into()),
        }
    }

    /// The integration an action's request goes to: `Ok(None)` when it names none, an
    /// error naming the field when it names one the workspace does not have.
    pub async fn integration_of(
        &self,
        definition: &switchboard_proto::actions::v1::ActionDefinition,
    ) -> Result<Option<Integration>, ServiceError> {
        let Some(id) = integration::of(definition) else {
            return Ok(None);
        };
        self.load_integration(&definition.workspace_id, id).await
    }
}
