//! The conversations service: every conversation, its messages, status, metafields,
//! assignment and analysis, as an event-sourced aggregate with an inline read model.
//!
//! - [`domain`]: the aggregate: commands, events, pure `decide` and `apply`.
//! - [`service`]: the command handler (load, decide, append, retry).
//! - [`store`]: the read model and its paginated queries.
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use switchboard_eventlog::{
    EventLog, EventLogError, RecordedEvent, Router, StoreConfig, StreamSpec,
};

pub use grpc::ConversationsApi;
pub use service::ConversationService;
pub use store::{ConversationStore, ConversationsProjection};

/// The service's name: its Postgres schema, SQLite file and relay are named after it.
pub const SERVICE: &str = "conversations";
/// The gRPC service's full name, for health and reflection.
pub const GRPC_SERVICE: &str = "switchboard.conversations.v1.Conversations";

/// Opens the service's log with its read model and projection. Call `migrate` on it
/// before serving.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    let (postgres, sqlite) = store::read_model_ddl();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&postgres, &sqlite)
        .with_projection(Arc::new(ConversationsProjection)))
}

/// The gRPC API over `log`.
pub fn api(log: EventLog) -> ConversationsApi {
    ConversationsApi::new(
        ConversationService::new(log.clone()),
        ConversationStore::new(log),
    )
}

/// Routes the public events to `events.<workspace>.<type>`; domain events stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        domain::event_types::PUBLIC
            .contains(&event.event_type.as_str())
            .then(|| {
                format!(
                    "events.{}.{}",
                    event.metadata.workspace_id, event.event_type
                )
            })
    }
}

/// The JetStream stream the service publishes to.
pub fn stream_spec(replicas: usize) -> StreamSpec {
    StreamSpec {
        name: "CONVERSATIONS".into(),
        subjects: vec![
            "events.*.conversation.>".into(),
            "events.*.message.>".into(),
        ],
        replicas,
    }
}
