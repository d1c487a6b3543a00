//! The gateway service: the public REST API of a workspace, over the services' gRPC APIs.
//!
//! - [`MODULE`]: the service as the binary runs it (the REST server on
//!   `SWITCHBOARD_API_ADDR`, declared in `start`).
//! - [`domain`]: API keys (their shape, scopes, the key ring's `decide` and `apply`); pure.
//! - [`service`]: the keys' command handler and the check of a presented key.
//! - [`store`]: the read models (keys by prefix, last use, `Idempotency-Key` answers).
//! - [`rest`]: the `/v1` resources, their OpenAPI document, errors, paging, idempotency.
#![forbid(unsafe_code)]

pub mod domain;
pub mod rest;
pub mod service;
pub mod store;

use async_trait::async_trait;
use switchboard_clients::{
    ActionsClient, ConversationsClient, FlowsClient, InsightsClient, WebhooksClient,
};
use switchboard_contract::services;
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, StoreConfig};
use switchboard_runtime::service::{BoxError, ReadModels, ServiceModule, Wiring};

pub use service::ApiKeys;
pub use store::{GatewayProjection, GatewayStore};

pub const SERVICE: &str = services::GATEWAY;

/// The gateway, as the binary composes it.
pub const MODULE: Gateway = Gateway;

/// The gateway service module: the REST server and the API keys' log.
pub struct Gateway;

#[async_trait]
impl ServiceModule for Gateway {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), GatewayProjection)
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        // Keys' hashes are not secrets, but nobody needs to read them either.
        match domain::Event::decode(event) {
            Ok(Some(domain::Event::Created(mut created))) => {
                if let Some(key) = created.key.as_mut() {
                    key.secret_hash.clear();
                }
                format!("{created:?}")
            }
            Ok(Some(domain::Event::Rotated(mut rotated))) => {
                if let Some(key) = rotated.successor.as_mut() {
                    key.secret_hash.clear();
                }
                format!("{rotated:?}")
            }
            Ok(Some(other)) => format!("{other:?}"),
            Ok(None) => format!("<{} bytes of unknown type>", event.payload.len()),
            Err(e) => format!("<undecodable: {e}>"),
        }
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        let conversations = wiring.peer(services::CONVERSATIONS).ok_or(
            "the gateway needs the conversations service: set SWITCHBOARD_CONVERSATIONS_URL",
        )?;
        let state = rest::AppState {
            keys: ApiKeys::new(wiring.log().clone()),
            conversations: ConversationsClient::connect_lazy(&conversations.into())?,
            flows: match wiring.peer(services::FLOWS) {
                Some(peer) => Some(FlowsClient::connect_lazy(&peer.into())?),
                None => None,
            },
            actions: match wiring.peer(services::ACTIONS) {
                Some(peer) => Some(ActionsClient::connect_lazy(&peer.into())?),
                None => None,
            },
            webhooks: match wiring.peer(services::WEBHOOKS) {
                Some(peer) => Some(WebhooksClient::connect_lazy(&peer.into())?),
                None => None,
            },
            insights: match wiring.peer(services::INSIGHTS) {
                Some(peer) => Some(InsightsClient::connect_lazy(&peer.into())?),
                None => None,
            },
            rate_per_minute: wiring.config().api_rate_per_minute,
        };
        let addr = wiring.config().api_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding the REST API to {addr} (SWITCHBOARD_API_ADDR): {e}"))?;
        let local = listener.local_addr()?;
        wiring.announce(format!(
            "  REST API        http://{local} (/v1, /openapi.json, /docs)"
        ));
        let shutdown = wiring.shutdown();
        let app = rest::router(state);
        wiring.spawn("REST API", async move {
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "the REST API stopped");
            }
        });
        Ok(())
    }
}

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}
