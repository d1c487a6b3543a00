//! The flows service: assistants, and the flows and workflows that make them behave, each
//! with a draft and immutable published versions.
//!
//! - [`domain`]: what a valid graph is (every error naming its node), and in
//!   [`domain::run`] how a run moves through one; pure.
//! - [`service`]: the command handler of definitions: create, save the draft, publish,
//!   discard, roll back; assistants.
//! - [`runtime`]: the command handler of runs: start, apply inputs, fire timers, invoke
//!   action workflows.
//! - [`effects`]: carries out what runs decided (messages, conversation updates,
//!   Connexease) from the flows log itself.
//! - [`knowledge`]: collections and documents, and their search.
//! - [`consumers`]: what conversations' events do to runs.
//! - [`store`]: the read models (flows, assistants, runs, timers, knowledge).
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod domain;
pub mod effects;
pub mod grpc;
pub mod knowledge;
pub mod runtime;
pub mod service;
pub mod store;

use std::sync::Arc;

use switchboard_eventlog::{EventLog, EventLogError, StoreConfig};

pub use grpc::FlowsApi;
pub use service::{ActionCatalog, FlowsService, GrpcActions};
pub use store::{FlowsProjection, FlowsStore};

pub const SERVICE: &str = "flows";
pub const GRPC_SERVICE: &str = "switchboard.flows.v1.Flows";

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    let (postgres, sqlite) = store::read_model_ddl();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&postgres, &sqlite)
        .with_projection(Arc::new(FlowsProjection)))
}

/// Where the flows service publishes: the actions its runs request, on
/// `internal.flows.action_requested` for the actions service. Definitions and run steps
/// stay in the log.
pub struct PublicEvents;

impl switchboard_eventlog::Router for PublicEvents {
    fn subject(&self, event: &switchboard_eventlog::RecordedEvent) -> Option<String> {
        (event.event_type == runtime::ACTION_REQUESTED)
            .then(|| "internal.flows.action_requested".to_owned())
    }
}

/// The JetStream stream the service publishes to (the runtime's action requests will go
/// to `internal.flows.>`).
pub fn stream_spec(replicas: usize) -> switchboard_eventlog::StreamSpec {
    switchboard_eventlog::StreamSpec {
        name: "FLOWS".into(),
        subjects: vec!["internal.flows.>".into(), "events.*.flow_run.>".into()],
        replicas,
    }
}

/// A stored event's payload for people (`switchboard events tail`).
pub fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
    use domain::event_types as t;
    use switchboard_proto::flows::v1 as pb;
    let shown = match event.event_type.as_str() {
        t::FLOW_CREATED | t::FLOW_DRAFT_SAVED | t::FLOW_DRAFT_DISCARDED => {
            event.decode::<pb::FlowChanged>().map(|f| format!("{f:?}"))
        }
        t::FLOW_PUBLISHED => event
            .decode::<pb::FlowPublished>()
            .map(|p| format!("{p:?}")),
        t::ASSISTANT_SAVED => event
            .decode::<pb::AssistantSaved>()
            .map(|a| format!("{a:?}")),
        _ => return format!("<{} bytes of unknown type>", event.payload.len()),
    };
    shown.unwrap_or_else(|e| format!("<undecodable: {e}>"))
}
