//! The actions service: what an agent can do in the outside world.
//!
//! It keeps the action definitions (event-sourced and versioned, names unique per
//! workspace, secrets sealed), serves the tool catalogue, runs actions of every kind once
//! per idempotency key (over gRPC and from flow runs over NATS), and keeps the execution
//! log, refusals included.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, HTTP routes,
//!   subscriptions and background tasks, declared in `start`).
//! - [`domain`]: validation of every kind, `decide`, the agent-tool shape, and the pure
//!   kinds (calculation, validation, form checking); pure.
//! - [`service`]: the command handler (load, seal secrets, decide, append, retry).
//! - [`execute`]: running an action (guards, rendering, auth, retries, mapping, and the
//!   dispatch to each kind).
//! - [`integrations`]: the connected services HTTP actions share (base URL, credentials,
//!   allowed methods, permission level, a shared rate limit).
//! - [`ports`]: the systems integration kinds act on, behind traits.
//! - [`store`]: the read model and its queries.
//! - [`consumers`]: actions requested by flow runs over NATS.
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod batch;
pub mod consumers;
pub mod domain;
pub mod execute;
pub mod grpc;
pub mod integrations;
pub mod ports;
pub mod rate_limits;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_clients::{ClientConfig, ConnexeaseClient, ConversationsClient, FlowsClient};
use switchboard_contract::{consumers as durable, event_types, services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, Router, StoreConfig};
use switchboard_outbound::ClientOptions;
use switchboard_runtime::service::{
    BoxError, Inbox, Order, Publication, ReadModels, Secrets, ServiceModule, Source, Subscribe,
    Wiring,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use grpc::ActionsApi;
pub use service::ActionService;
pub use store::{ActionStore, ActionsProjection};

pub const SERVICE: &str = services::ACTIONS;
pub const GRPC_SERVICE: &str = "switchboard.actions.v1.Actions";

/// The actions service, as the binary composes it.
pub const MODULE: Actions = Actions;

/// The actions service module: its gRPC API, the action requests of flow runs, and the
/// execution log's retention.
pub struct Actions;

#[async_trait]
impl ServiceModule for Actions {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), ActionsProjection)
    }

    fn publication(&self) -> Option<Publication> {
        Some(Publication::new(streams::ACTIONS, PublicEvents))
    }

    fn secrets(&self) -> Secrets {
        Secrets::Required
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        match domain::decode(event) {
            Ok(Some(definition)) => format!("{:?}", domain::public_view(definition)),
            Ok(None) => format!("<{} bytes of unknown type>", event.payload.len()),
            Err(e) => format!("<undecodable: {e}>"),
        }
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        // Each action sets its own timeout (at most 120 s); this only bounds the client.
        let outbound = wiring.outbound(
            &ClientOptions {
                timeout: Duration::from_secs(125),
                ..Default::default()
            },
            &[],
        )?;
        let ports = ports_for(wiring)?;
        let keyring = wiring.required_keyring()?;
        let service = ActionService::new(wiring.log().clone(), keyring, outbound).with_ports(ports);
        wiring.serve_grpc(
            ActionsApi::new(service.clone(), ActionStore::new(wiring.log().clone())).into_server(),
        );
        wiring.subscribe(Subscribe {
            consumer: durable::ACTIONS_ACTION_REQUESTED.to_owned(),
            source: Source::Stream {
                stream: streams::FLOWS,
                subject: subjects::ACTION_REQUESTED,
            },
            handler: Arc::new(consumers::ActionRequests::new(service)),
            // The handler appends to the actions log itself; the service's claim by
            // idempotency key keeps a redelivered request from running twice.
            inbox: Inbox::Dedicated,
            order: Order::PerStream,
        });
        let retention_days = wiring.config().execution_retention_days;
        wiring.spawn(
            "execution log retention",
            prune_execution_log(
                ActionStore::new(wiring.log().clone()),
                retention_days,
                wiring.shutdown(),
            ),
        );
        Ok(())
    }
}

/// What the integration kinds reach: the conversations, flows (action workflows) and
/// connexease services over gRPC, wherever they run, and the operator's query databases.
/// A service that is nowhere answers "not connected".
fn ports_for(wiring: &Wiring) -> Result<ports::Ports, BoxError> {
    let mut ports = ports::Ports {
        databases: ports::QueryDatabases::from_config(&wiring.config().query_databases)?,
        ..ports::Ports::default()
    };
    if let Some(peer) = wiring.peer(services::CONVERSATIONS) {
        ports.conversations = Arc::new(ConversationsClient::connect_lazy(&peer.into())?);
    }
    if let Some(peer) = wiring.peer(services::FLOWS) {
        ports.workflows = Arc::new(FlowsClient::connect_lazy(&peer.into())?);
    }
    if let Some(peer) = wiring.peer(services::CONNEXEASE) {
        // The connexease service retries 429 and 5xx itself, within this.
        let config = ClientConfig::from(peer).with_deadline(Duration::from_secs(60));
        ports.connexease = Arc::new(ConnexeaseClient::connect_lazy(&config)?);
    }
    Ok(ports)
}

/// Keeps the queryable execution log to its retention: prunes at start and every hour.
async fn prune_execution_log(store: ActionStore, retention_days: u32, shutdown: CancellationToken) {
    let retention = i64::from(retention_days) * 86_400 * 1_000_000;
    loop {
        let before = switchboard_eventlog::now_micros() - retention;
        match store.prune_executions(before).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, retention_days, "pruned the execution log"),
            Err(e) => warn!(error = %e, "could not prune the execution log"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Opens the service's log with its read model and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}

/// Where the actions service publishes: a live execution's completion goes to the flow
/// runtime on `internal.actions.action_completed`, and the public `action.executed` to
/// `events.<workspace>.action.executed`. Definitions and test runs stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        match event.event_type.as_str() {
            event_types::actions::EXECUTION_COMPLETED
                if event.stream.stream_type == "action_execution" =>
            {
                Some(subjects::ACTION_COMPLETED.to_owned())
            }
            event_types::actions::EXECUTED => Some(subjects::public(
                &event.metadata.workspace_id,
                event_types::actions::EXECUTED,
            )),
            _ => None,
        }
    }
}
