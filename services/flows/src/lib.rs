//! The flows service: assistants, and the flows and workflows that make them behave, each
//! with a draft and immutable published versions.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, HTTP routes,
//!   subscriptions and background tasks, declared in `start`).
//! - [`domain`]: what a valid graph is (every error naming its node), and in
//!   [`domain::run`] how a run moves through one; pure.
//! - [`service`]: the command handler of definitions: create, save the draft, publish,
//!   discard, roll back, delete; assistants (save, delete).
//! - [`runtime`]: the command handler of runs: start, apply inputs, fire timers, invoke
//!   action workflows.
//! - [`ports`]: the conversations and connexease services as runs use them.
//! - [`effects`]: carries out what runs decided (messages, conversation updates,
//!   Connexease, agents' model calls and workflows) from the flows log itself; [`agent`]:
//!   what an agent's model is sent and how its answer is recorded.
//! - [`knowledge`]: collections and documents, and their search.
//! - [`providers`]: the workspaces' model providers; [`model`]: the OpenAI-compatible
//!   chat client the agent calls them with; [`model_sim`]: a scripted fake model server.
//! - [`consumers`]: what conversations' events do to runs; an ended conversation is
//!   analysed ([`analysis`], the built-in analyser, when nothing recorded it).
//! - [`store`]: the read models (flows, assistants, runs, timers, knowledge).
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod agent;
pub mod analysis;
pub mod consumers;
pub mod domain;
pub mod effects;
pub mod grpc;
pub mod knowledge;
pub mod model;
pub mod model_sim;
pub mod ports;
pub mod providers;
pub mod runtime;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_clients::{ActionsClient, ClientConfig, ConnexeaseClient, ConversationsClient};
use switchboard_contract::{consumers as durable, event_types, services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, Router, StoreConfig};
use switchboard_outbound::ClientOptions;
use switchboard_runtime::service::{
    BoxError, Inbox, Order, Publication, ReadModels, Secrets, ServiceModule, Source, Subscribe,
    Wiring,
};
use tracing::warn;

pub use grpc::FlowsApi;
pub use service::{ActionCatalog, FlowsService};
pub use store::{FlowsProjection, FlowsStore};

pub const SERVICE: &str = services::FLOWS;
pub const GRPC_SERVICE: &str = "switchboard.flows.v1.Flows";

/// The flows service, as the binary composes it.
pub const MODULE: Flows = Flows;

/// The flows service module: its gRPC API and the flow runtime (conversations' events
/// start runs and feed them, the actions service's answers go back to the runs that
/// asked, runs' messages and effects are carried out from the flows log, timers fire).
pub struct Flows;

#[async_trait]
impl ServiceModule for Flows {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), FlowsProjection)
    }

    fn publication(&self) -> Option<Publication> {
        Some(Publication::new(streams::FLOWS, PublicEvents))
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        describe_payload(event)
    }

    /// Model providers' API keys are sealed at rest.
    fn secrets(&self) -> Secrets {
        Secrets::Optional
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        // Publishing checks the actions a graph refers to in the actions service.
        let actions = match wiring.peer(services::ACTIONS) {
            Some(peer) => {
                Some(Arc::new(ActionsClient::connect_lazy(&peer.into())?) as Arc<dyn ActionCatalog>)
            }
            None => None,
        };
        let flows = FlowsService::new(wiring.log().clone(), actions);
        // A model's answer can take minutes; each provider's own timeout bounds a call.
        let outbound = wiring.outbound(
            &ClientOptions {
                timeout: Duration::from_secs(300),
                ..Default::default()
            },
            &[],
        )?;
        let providers = providers::Providers::new(
            wiring.log().clone(),
            wiring.keyring(),
            Arc::new(model::OpenAiCompatible::new(outbound)),
        );
        wiring.serve_grpc(
            FlowsApi::new(flows.clone())
                .with_providers(providers.clone())
                .into_server(),
        );

        let runs = runtime::RunService::new(flows.clone());
        wiring.spawn("timers", runs.clone().run_timers(wiring.shutdown()));
        let mut conversation_events = consumers::ConversationEvents::new(flows, runs.clone())
            .with_providers(providers.clone());
        match wiring.peer(services::CONVERSATIONS) {
            Some(peer) => {
                let conversations: Arc<dyn ports::Conversations> =
                    Arc::new(ConversationsClient::connect_lazy(&peer.into())?);
                conversation_events = conversation_events.with_transcripts(conversations.clone());
                let connexease = match wiring.peer(services::CONNEXEASE) {
                    // The connexease service retries Connexease's 429s and 5xx within this.
                    Some(peer) => {
                        let config =
                            ClientConfig::from(peer).with_deadline(Duration::from_secs(30));
                        Some(Arc::new(ConnexeaseClient::connect_lazy(&config)?)
                            as Arc<dyn ports::Connexease>)
                    }
                    None => None,
                };
                wiring.subscribe(Subscribe {
                    consumer: durable::FLOWS_EFFECTS.to_owned(),
                    source: Source::OwnLog(Arc::new(|e: &RecordedEvent| {
                        e.event_type.starts_with(event_types::flow_runs::PREFIX)
                    })),
                    handler: Arc::new(effects::Effects::new(
                        runs.clone(),
                        conversations,
                        connexease,
                        providers,
                    )),
                    // Model calls and outside operations are not held in a transaction
                    // of the log: outcomes are appended on their own.
                    inbox: Inbox::Dedicated,
                    order: Order::PerStream,
                });
            }
            None => warn!(
                "flows: no conversations service (SWITCHBOARD_CONVERSATIONS_URL); runs' messages wait"
            ),
        }
        wiring.subscribe(Subscribe {
            consumer: durable::FLOWS_CONVERSATIONS.to_owned(),
            source: Source::Stream {
                stream: streams::CONVERSATIONS,
                subject: subjects::PUBLIC,
            },
            handler: Arc::new(conversation_events),
            inbox: Inbox::Log,
            order: Order::PerStream,
        });
        wiring.subscribe(Subscribe {
            consumer: durable::FLOWS_ACTION_OUTCOMES.to_owned(),
            source: Source::Stream {
                stream: streams::ACTIONS,
                subject: subjects::ACTION_COMPLETED,
            },
            handler: Arc::new(runtime::ActionOutcomes::new(runs)),
            inbox: Inbox::Log,
            order: Order::PerStream,
        });
        Ok(())
    }
}

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}

/// Where the flows service publishes: the actions its runs request, on
/// `internal.flows.action_requested` for the actions service, and runs starting, on
/// `internal.flows.flow_run_started` for the insights service. Definitions and the other
/// run steps stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        match event.event_type.as_str() {
            event_types::flow_runs::ACTION_REQUESTED => Some(subjects::ACTION_REQUESTED.to_owned()),
            event_types::flow_runs::STARTED => Some(subjects::FLOW_RUN_STARTED.to_owned()),
            _ => None,
        }
    }
}

/// A stored event's payload for people (`switchboard events tail`).
fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
    use domain::event_types as t;
    use knowledge::event_types as k;
    use switchboard_proto::flows::v1 as pb;
    let shown = match event.event_type.as_str() {
        t::FLOW_CREATED | t::FLOW_DRAFT_SAVED | t::FLOW_DRAFT_DISCARDED | t::FLOW_DELETED => {
            event.decode::<pb::FlowChanged>().map(|f| format!("{f:?}"))
        }
        t::FLOW_PUBLISHED => event
            .decode::<pb::FlowPublished>()
            .map(|p| format!("{p:?}")),
        t::ASSISTANT_SAVED
        | t::ASSISTANT_DELETED
        | t::ASSISTANT_DRAFT_SAVED
        | t::ASSISTANT_PUBLISHED => event
            .decode::<pb::AssistantSaved>()
            .map(|a| format!("{a:?}")),
        // The sealed key is never shown.
        t::MODEL_PROVIDER_SAVED | t::MODEL_PROVIDER_DELETED => event
            .decode::<pb::ModelProviderSaved>()
            .map(|p| format!("{:?}", p.provider.map(providers::public_view))),
        k::COLLECTION_CREATED => event
            .decode::<pb::CollectionCreated>()
            .map(|c| format!("{c:?}")),
        k::COLLECTION_UPDATED => event
            .decode::<pb::CollectionUpdated>()
            .map(|c| format!("{c:?}")),
        k::COLLECTION_DELETED => event
            .decode::<pb::CollectionDeleted>()
            .map(|c| format!("{c:?}")),
        // A document's body can be long: its id and hash say which version it is.
        k::DOCUMENT_UPSERTED => event.decode::<pb::DocumentUpserted>().map(|u| {
            format!(
                "DocumentUpserted {{ external_id: {:?}, content_hash: {:?} }}",
                u.document.map(|d| d.external_id).unwrap_or_default(),
                u.content_hash
            )
        }),
        k::DOCUMENT_DELETED => event
            .decode::<pb::DocumentDeleted>()
            .map(|d| format!("{d:?}")),
        _ => return format!("<{} bytes of unknown type>", event.payload.len()),
    };
    shown.unwrap_or_else(|e| format!("<undecodable: {e}>"))
}
