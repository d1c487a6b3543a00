//! The connexease service: the help desk a workspace connects, so the AI can triage and
//! route there as a human agent would.
//!
//! - [`domain`]: the connection's checks and the resolution of an operation against the
//!   directory (names to ids, every reference checked); pure.
//! - [`service`]: the command handler: connect, sync, run operations once per key, link.
//! - [`client`]: the Connexease API behind a trait, and its HTTP implementation.
//! - [`inbound`]: the signed webhooks Connexease sends, verified, deduplicated, applied.
//! - [`sim`]: `switchboard connexease-sim`, a faithful simulator of the endpoint set.
//! - [`store`]: the read models (connections, links).
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod client;
pub mod domain;
pub mod grpc;
pub mod inbound;
pub mod service;
pub mod signature;
pub mod sim;
pub mod store;

use std::sync::Arc;

use switchboard_eventlog::{EventLog, EventLogError, StoreConfig};

pub use grpc::ConnexeaseApi;
pub use service::ConnexeaseService;
pub use store::{ConnexeaseProjection, ConnexeaseStore};

pub const SERVICE: &str = "connexease";
pub const GRPC_SERVICE: &str = "switchboard.connexease.v1.Connexease";

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    let (postgres, sqlite) = store::read_model_ddl();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&postgres, &sqlite)
        .with_projection(Arc::new(ConnexeaseProjection)))
}

/// Where the connexease service publishes: every verified inbound webhook as
/// `events.<workspace>.connexease.<event>` (dots in Connexease's event names become `_`:
/// `connexease.conversation_archived`). Connections, directories, operations and links
/// stay in the log.
pub struct PublicEvents;

impl switchboard_eventlog::Router for PublicEvents {
    fn subject(&self, event: &switchboard_eventlog::RecordedEvent) -> Option<String> {
        if event.event_type != domain::event_types::WEBHOOK_RECEIVED {
            return None;
        }
        let received: switchboard_proto::connexease::v1::WebhookReceived = event.decode().ok()?;
        Some(format!(
            "events.{}.connexease.{}",
            event.metadata.workspace_id,
            received.event.replace('.', "_")
        ))
    }
}

/// The JetStream stream the service publishes to.
pub fn stream_spec(replicas: usize) -> switchboard_eventlog::StreamSpec {
    switchboard_eventlog::StreamSpec {
        name: "CONNEXEASE".into(),
        subjects: vec!["events.*.connexease.>".into()],
        replicas,
    }
}

/// A stored event's payload for people (`switchboard events tail`): secrets, sealed or
/// not, are never shown.
pub fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
    use domain::event_types as t;
    use switchboard_proto::connexease::v1 as pb;
    let shown = match event.event_type.as_str() {
        t::CONNECTED | t::DISCONNECTED => event
            .decode::<pb::ConnectionChanged>()
            .map(|c| format!("{:?}", c.connection.map(service::public_view))),
        t::DIRECTORY_SYNCED => event
            .decode::<pb::DirectorySynced>()
            .map(|d| format!("{d:?}")),
        t::OPERATION_STARTED | t::OPERATION_COMPLETED | t::OPERATION_ABANDONED => event
            .decode::<pb::OperationRecorded>()
            .map(|o| format!("{o:?}")),
        t::LINKED => event.decode::<pb::Linked>().map(|l| format!("{l:?}")),
        t::WEBHOOK_RECEIVED => event
            .decode::<pb::WebhookReceived>()
            .map(|w| format!("{w:?}")),
        _ => return format!("<{} bytes of unknown type>", event.payload.len()),
    };
    shown.unwrap_or_else(|e| format!("<undecodable: {e}>"))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use switchboard_eventlog::{Metadata, RecordedEvent, Router, StreamRef};
    use switchboard_proto::connexease::v1::WebhookReceived;

    use super::*;

    fn recorded(event_type: &str, payload: Vec<u8>) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream: StreamRef::new("connexease_webhook", "ws_1/d1"),
            stream_version: 1,
            global_position: 1,
            transaction_id: 0,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata {
                workspace_id: "ws_1".into(),
                ..Default::default()
            },
            recorded_at: 0,
        }
    }

    #[test]
    fn only_inbound_webhooks_are_public_and_their_dots_become_underscores() {
        let webhook = WebhookReceived {
            event: "conversation.archived".into(),
            ..Default::default()
        };
        let public = recorded(
            domain::event_types::WEBHOOK_RECEIVED,
            webhook.encode_to_vec(),
        );
        assert_eq!(
            PublicEvents.subject(&public).as_deref(),
            Some("events.ws_1.connexease.conversation_archived")
        );
        let private = recorded(domain::event_types::LINKED, webhook.encode_to_vec());
        assert_eq!(PublicEvents.subject(&private), None);
    }
}
