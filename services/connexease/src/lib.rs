//! The connexease service: the help desk a workspace connects, so the AI can triage and
//! route there as a human agent would.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, HTTP routes,
//!   subscriptions and background tasks, declared in `start`).
//! - [`domain`]: the connection's checks and the resolution of an operation against the
//!   directory (names to ids, every reference checked); pure.
//! - [`service`]: the command handler: connect, sync, run operations once per key, link.
//! - [`client`]: the Connexease API behind a trait, and its HTTP implementation.
//! - [`hooks`]: Connexease's webhook deliveries as published, read; pure.
//! - [`inbound`]: the signed webhooks Connexease sends: verified, deduplicated and
//!   recorded, answered, then carried out from the log.
//! - [`sim`]: `switchboard connexease-sim`, a simulator of Connexease: the documented
//!   calls and deliveries, and the assumed operations, marked.
//! - [`store`]: the read models (connections, links).
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod client;
pub mod domain;
pub mod grpc;
pub mod hooks;
pub mod inbound;
pub mod service;
pub mod signature;
pub mod sim;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_clients::ConversationsClient;
use switchboard_contract::{consumers, services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, Router, StoreConfig};
use switchboard_outbound::ClientOptions;
use switchboard_runtime::service::{
    BoxError, Inbox, Mode, Order, Publication, ReadModels, Secrets, ServiceModule, Source,
    Subscribe, Wiring, loopback,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use grpc::ConnexeaseApi;
pub use service::ConnexeaseService;
pub use store::{ConnexeaseProjection, ConnexeaseStore};

pub const SERVICE: &str = services::CONNEXEASE;
pub const GRPC_SERVICE: &str = "switchboard.connexease.v1.Connexease";

/// The connexease service, as the binary composes it.
pub const MODULE: Connexease = Connexease;

/// The connexease service module: its gRPC API, the inbound webhooks on the HTTP server,
/// the directory sync, and in `dev` the simulator standing in for Connexease.
pub struct Connexease;

#[async_trait]
impl ServiceModule for Connexease {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), ConnexeaseProjection)
    }

    fn publication(&self) -> Option<Publication> {
        Some(Publication::new(streams::CONNEXEASE, PublicEvents))
    }

    fn secrets(&self) -> Secrets {
        Secrets::Required
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        describe_payload(event)
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        let sim = match wiring.mode() {
            Mode::Dev => Some(start_simulator(wiring).await?),
            Mode::Serve => None,
        };
        let also_allow: Vec<String> = sim
            .iter()
            .map(|sim| loopback(sim.addr).ip().to_string())
            .collect();
        let outbound = wiring.outbound(
            &ClientOptions {
                timeout: Duration::from_secs(125),
                ..Default::default()
            },
            &also_allow,
        )?;
        let api = client::HttpConnexease::new(outbound, client::RetryPolicy::default());
        let mut service = ConnexeaseService::new(
            wiring.log().clone(),
            wiring.required_keyring()?,
            Arc::new(api),
        );
        if let Some(sim) = &sim {
            // Workspaces with no connection are connected to the simulator on first use.
            service =
                service.with_default_connection(switchboard_proto::connexease::v1::Connection {
                    base_url: sim.base_url(),
                    access_token: sim.config.token.clone(),
                    webhook_secret: sim.config.webhook_secret.clone(),
                    ..Default::default()
                });
        }
        wiring.serve_grpc(ConnexeaseApi::new(service.clone()).into_server());
        let conversations = match wiring.peer(services::CONVERSATIONS) {
            Some(peer) => Some(Arc::new(ConversationsClient::connect_lazy(&peer.into())?)
                as Arc<dyn inbound::Conversations>),
            None => None,
        };
        let store = ConnexeaseStore::new(wiring.log().clone());
        wiring.serve_http(inbound::router(service.clone(), store.clone()));
        // Deliveries are carried out after they are answered, in the order recorded (a
        // conversation is linked before its archive is applied), by one lane; their
        // effects append to this log outside the handler's transaction.
        wiring.subscribe(Subscribe {
            consumer: consumers::CONNEXEASE_INBOUND.to_owned(),
            source: Source::OwnLog(Arc::new(inbound::Apply::wants)),
            handler: Arc::new(inbound::Apply::new(service.clone(), store, conversations)),
            inbox: Inbox::Dedicated,
            order: Order::Total,
        });
        wiring.spawn(
            "directory sync",
            sync_directories(service, wiring.shutdown()),
        );
        Ok(())
    }
}

/// The Connexease simulator of `dev`, sending its webhooks to
/// `SWITCHBOARD_CONNEXEASE_SIM_WORKSPACE` through this process's HTTP server.
async fn start_simulator(wiring: &mut Wiring) -> Result<sim::RunningSim, BoxError> {
    let config = wiring.config();
    let addr = config.connexease_sim_addr;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("binding the Connexease simulator to {addr} (SWITCHBOARD_CONNEXEASE_SIM_ADDR): {e}")
    })?;
    let workspace = config.connexease_sim_workspace.clone();
    let settings = sim::SimConfig {
        webhook_url: Some(format!(
            "http://{}/connexease/webhooks/{workspace}",
            loopback(config.http_addr)
        )),
        ..sim::SimConfig::default()
    };
    let sim = sim::serve(listener, settings, wiring.shutdown()).await?;
    wiring.announce(format!(
        "  Connexease sim  {} (token {}; its webhooks go to {workspace})",
        sim.base_url(),
        sim.config.token,
    ));
    Ok(sim)
}

/// Pulls the directory of every connected workspace, and reads its `/stats`, every 15
/// minutes (and at start).
async fn sync_directories(service: ConnexeaseService, shutdown: CancellationToken) {
    let store = ConnexeaseStore::new(service.log().clone());
    loop {
        match store.connected_workspaces().await {
            Ok(workspaces) => {
                for workspace in workspaces {
                    if let Err(e) = service.sync_directory(&workspace).await {
                        warn!(workspace, error = %e, "could not sync the Connexease directory");
                    }
                    if let Err(e) = service.read_stats(&workspace).await {
                        warn!(workspace, error = %e, "could not read Connexease's stats");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not list the connected workspaces"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15 * 60)) => {}
        }
    }
}

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}

/// Where the connexease service publishes: every verified inbound webhook as
/// `events.<workspace>.connexease.<event>` (dots in Connexease's event names become `_`:
/// `connexease.conversation_archived`), and each changed `/stats` reading as
/// `events.<workspace>.connexease.stats.read`. Connections, directories, operations,
/// links, whole bodies and auto-assign turns stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        match event.event_type.as_str() {
            domain::event_types::WEBHOOK_RECEIVED => {
                let received: switchboard_proto::connexease::v1::WebhookReceived =
                    event.decode().ok()?;
                Some(subjects::connexease(
                    &event.metadata.workspace_id,
                    &received.event,
                ))
            }
            domain::event_types::STATS_READ => Some(subjects::public(
                &event.metadata.workspace_id,
                subjects::CONNEXEASE_STATS_TYPE,
            )),
            _ => None,
        }
    }
}

/// A stored event's payload for people (`switchboard events tail`): secrets, sealed or
/// not, are never shown.
fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
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
        t::WEBHOOK_BODY => event
            .decode::<pb::WebhookBody>()
            .map(|b| format!("{} ({} bytes of body)", b.delivery_id, b.body.len())),
        t::STATS_READ => event.decode::<pb::StatsRead>().map(|s| format!("{s:?}")),
        t::AUTO_ASSIGN_ANSWERED => event
            .decode::<pb::AutoAssignAnswered>()
            .map(|a| format!("{a:?}")),
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
