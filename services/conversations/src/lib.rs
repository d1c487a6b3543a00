//! The conversations service: every conversation, its messages, status, metafields,
//! assignment and analysis, as an event-sourced aggregate with an inline read model.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, HTTP routes,
//!   subscriptions and background tasks, declared in `start`).
//! - [`domain`]: the aggregate: commands, events, pure `decide` and `apply`.
//! - [`service`]: the command handler (load, decide, append, retry).
//! - [`store`]: the read model and its paginated queries.
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use async_trait::async_trait;
use switchboard_contract::{services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, Router, StoreConfig};
use switchboard_runtime::service::{
    BoxError, Publication, ReadModels, Secrets, ServiceModule, Wiring,
};

pub use grpc::ConversationsApi;
pub use service::ConversationService;
pub use store::{ConversationStore, ConversationsProjection};

/// The service's name: its Postgres schema, SQLite file and relay are named after it.
pub const SERVICE: &str = services::CONVERSATIONS;
/// The gRPC service's full name, for health and reflection.
pub const GRPC_SERVICE: &str = "switchboard.conversations.v1.Conversations";

/// The conversations service, as the binary composes it.
pub const MODULE: Conversations = Conversations;

/// The conversations service module: its gRPC API, sealing secure metadata when the
/// process has a key.
pub struct Conversations;

#[async_trait]
impl ServiceModule for Conversations {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), ConversationsProjection)
    }

    fn publication(&self) -> Option<Publication> {
        Some(Publication::new(streams::CONVERSATIONS, PublicEvents))
    }

    fn secrets(&self) -> Secrets {
        Secrets::Optional
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        domain::describe_payload(event)
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        let mut api = ConversationsApi::over(wiring.log().clone());
        if let Some(keyring) = wiring.keyring() {
            api = api.with_keyring(keyring);
        }
        wiring.serve_grpc(api.into_server());
        Ok(())
    }
}

/// Opens the service's log with its read model and projection. Call `migrate` on it
/// before serving.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}

/// Routes the public events to `events.<workspace>.<type>`; domain events stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        domain::event_types::PUBLIC
            .contains(&event.event_type.as_str())
            .then(|| subjects::public(&event.metadata.workspace_id, &event.event_type))
    }
}
