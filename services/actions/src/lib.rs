//! The actions service: what an agent can do in the outside world.
//!
//! It keeps the action definitions (event-sourced and versioned, names unique per
//! workspace, secrets sealed), serves the tool catalogue, runs actions of every kind once
//! per idempotency key (over gRPC and from flow runs over NATS), and keeps the execution
//! log, refusals included.
//!
//! - [`domain`]: validation of every kind, `decide`, the agent-tool shape, and the pure
//!   kinds (calculation, validation, form checking); pure.
//! - [`service`]: the command handler (load, seal secrets, decide, append, retry).
//! - [`execute`]: running an action (guards, rendering, auth, retries, mapping, and the
//!   dispatch to each kind).
//! - [`integrations`]: the systems integration kinds act on, behind traits.
//! - [`store`]: the read model and its queries.
//! - [`consumers`]: actions requested by flow runs over NATS.
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod domain;
pub mod execute;
pub mod grpc;
pub mod integrations;
pub mod service;
pub mod store;

use std::sync::Arc;

use switchboard_eventlog::{EventLog, EventLogError, StoreConfig};
use switchboard_secrets::Keyring;

pub use grpc::ActionsApi;
pub use service::ActionService;
pub use store::{ActionStore, ActionsProjection};

pub const SERVICE: &str = "actions";
pub const GRPC_SERVICE: &str = "switchboard.actions.v1.Actions";

/// Opens the service's log with its read model and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    let (postgres, sqlite) = store::read_model_ddl();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&postgres, &sqlite)
        .with_projection(Arc::new(ActionsProjection)))
}

/// The gRPC API over `log`, sealing secrets with `keyring`, calling out through `client`
/// and acting on the systems in `integrations`.
pub fn api(
    log: EventLog,
    keyring: Arc<Keyring>,
    client: switchboard_outbound::GuardedClient,
    integrations: integrations::Integrations,
) -> ActionsApi {
    ActionsApi::new(
        ActionService::new(log.clone(), keyring, client).with_integrations(integrations),
        ActionStore::new(log),
    )
}

/// Where the actions service publishes: a live execution's completion goes to the flow
/// runtime on `internal.actions.action_completed`, and the public `action.executed` to
/// `events.<workspace>.action.executed`. Definitions and test runs stay in the log.
pub struct PublicEvents;

impl switchboard_eventlog::Router for PublicEvents {
    fn subject(&self, event: &switchboard_eventlog::RecordedEvent) -> Option<String> {
        match event.event_type.as_str() {
            service::execution_events::COMPLETED
                if event.stream.stream_type == "action_execution" =>
            {
                Some("internal.actions.action_completed".into())
            }
            service::execution_events::EXECUTED => Some(format!(
                "events.{}.action.executed",
                event.metadata.workspace_id
            )),
            _ => None,
        }
    }
}

/// The JetStream stream the service publishes to.
pub fn stream_spec(replicas: usize) -> switchboard_eventlog::StreamSpec {
    switchboard_eventlog::StreamSpec {
        name: "ACTIONS".into(),
        subjects: vec!["events.*.action.>".into(), "internal.actions.>".into()],
        replicas,
    }
}
