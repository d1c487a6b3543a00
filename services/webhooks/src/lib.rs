//! The webhooks service: every public event, delivered to the endpoints a workspace
//! registers, signed per the Standard Webhooks specification, at least once.
//!
//! - [`domain`]: endpoint checks, event filters, signing, the retry schedule; pure.
//! - [`payload`]: the JSON form of public events, from the protobuf descriptors.
//! - [`service`]: the command handler: endpoints, fan-out into messages, replay.
//! - [`delivery`]: the dispatcher: attempts, retries as durable timers, breakers.
//! - [`consumers`]: the fan-out subscription to other services' public events.
//! - [`store`]: the read models (endpoints, messages, lanes, attempts).
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod delivery;
pub mod domain;
pub mod grpc;
pub mod payload;
pub mod service;
pub mod store;

use std::sync::Arc;

use switchboard_eventlog::{EventLog, EventLogError, StoreConfig};

pub use delivery::{DeliveryConfig, Dispatcher};
pub use grpc::WebhooksApi;
pub use service::{Settings, WebhooksService};
pub use store::{WebhooksProjection, WebhooksStore};

pub const SERVICE: &str = "webhooks";
pub const GRPC_SERVICE: &str = "switchboard.webhooks.v1.Webhooks";

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    let (postgres, sqlite) = store::read_model_ddl();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&postgres, &sqlite)
        .with_projection(Arc::new(WebhooksProjection)))
}

/// Where the webhooks service publishes: only the operational `endpoint.disabled`, on
/// `events.<workspace>.endpoint.disabled`. Messages and attempts stay in the log.
pub struct PublicEvents;

impl switchboard_eventlog::Router for PublicEvents {
    fn subject(&self, event: &switchboard_eventlog::RecordedEvent) -> Option<String> {
        (event.event_type == domain::event_types::PUBLIC_ENDPOINT_DISABLED).then(|| {
            format!(
                "events.{}.{}",
                event.metadata.workspace_id,
                domain::event_types::PUBLIC_ENDPOINT_DISABLED
            )
        })
    }
}

/// The JetStream stream the service publishes to.
pub fn stream_spec(replicas: usize) -> switchboard_eventlog::StreamSpec {
    switchboard_eventlog::StreamSpec {
        name: "WEBHOOKS".into(),
        subjects: vec!["events.*.endpoint.>".into()],
        replicas,
    }
}

/// The producers whose public events are delivered: `(service, JetStream stream)`.
pub const PRODUCERS: &[(&str, &str)] = &[
    ("conversations", "CONVERSATIONS"),
    ("actions", "ACTIONS"),
    ("connexease", "CONNEXEASE"),
];

/// A stored event's payload for people (`switchboard events tail`): sealed secrets are
/// never shown.
pub fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
    use domain::event_types as t;
    use switchboard_proto::webhooks::v1 as pb;
    let shown = match event.event_type.as_str() {
        kind if t::is_endpoint_change(kind) => event
            .decode::<pb::EndpointChanged>()
            .map(|c| format!("{:?}", c.endpoint.map(service::public_view))),
        t::PUBLIC_ENDPOINT_DISABLED => event
            .decode::<pb::EndpointDisabledEvent>()
            .map(|d| format!("{d:?}")),
        t::MESSAGE_CREATED => event
            .decode::<pb::MessageCreated>()
            .map(|m| format!("{m:?}")),
        t::MESSAGE_ATTEMPTED => event.decode::<pb::Attempt>().map(|a| format!("{a:?}")),
        t::MESSAGE_DEFERRED => event
            .decode::<pb::MessageDeferred>()
            .map(|d| format!("{d:?}")),
        t::MESSAGE_FAILED => event
            .decode::<pb::MessageFailed>()
            .map(|f| format!("{f:?}")),
        t::MESSAGE_SUPERSEDED => event
            .decode::<pb::MessageSuperseded>()
            .map(|s| format!("{s:?}")),
        t::MESSAGE_RESEND_REQUESTED => event
            .decode::<pb::ResendRequested>()
            .map(|r| format!("{r:?}")),
        _ => return format!("<{} bytes of unknown type>", event.payload.len()),
    };
    shown.unwrap_or_else(|e| format!("<undecodable: {e}>"))
}
