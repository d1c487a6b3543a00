//! The webhooks service: every public event, delivered to the endpoints a workspace
//! registers, signed per the Standard Webhooks specification, at least once.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, HTTP routes,
//!   subscriptions and background tasks, declared in `start`).
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
use std::time::Duration;

use async_trait::async_trait;
use switchboard_contract::{Stream, consumers as durable, services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, Router, StoreConfig};
use switchboard_outbound::ClientOptions;
use switchboard_runtime::service::{
    BoxError, Inbox, Mode, Order, Publication, ReadModels, Secrets, ServiceModule, Source,
    Subscribe, Wiring, loopback,
};

pub use delivery::{DeliveryConfig, Dispatcher};
pub use grpc::WebhooksApi;
pub use service::{Settings, WebhooksService};
pub use store::{WebhooksProjection, WebhooksStore};

pub const SERVICE: &str = services::WEBHOOKS;
pub const GRPC_SERVICE: &str = "switchboard.webhooks.v1.Webhooks";

/// The producers whose public events are delivered.
const PRODUCERS: [Stream; 3] = [
    streams::CONVERSATIONS,
    streams::ACTIONS,
    streams::CONNEXEASE,
];

/// The webhooks service, as the binary composes it.
pub const MODULE: Webhooks = Webhooks;

/// The webhooks service module: its gRPC API, the fan-out of every producer's public
/// events into messages, and the dispatcher that delivers them.
pub struct Webhooks;

#[async_trait]
impl ServiceModule for Webhooks {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), WebhooksProjection)
    }

    fn publication(&self) -> Option<Publication> {
        Some(Publication::new(streams::WEBHOOKS, PublicEvents))
    }

    fn secrets(&self) -> Secrets {
        Secrets::Required
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        describe_payload(event)
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        let config = wiring.config();
        // In `dev`, endpoints may use plain http to a receiver on the laptop.
        let dev = wiring.mode() == Mode::Dev;
        let mut allow_http_hosts = config.webhook_http_hosts();
        let mut also_allow = Vec::new();
        if dev {
            allow_http_hosts.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
            also_allow.extend(["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        }
        let settings = Settings {
            urls: domain::UrlRules {
                allow_http_hosts,
                policy: wiring.outbound_policy(&also_allow)?,
            },
            schedule: domain::RetrySchedule {
                delays: config
                    .webhook_retry_delays()
                    .map_err(|e| format!("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE: {e}"))?,
                ..domain::RetrySchedule::default()
            },
            disable_after: Duration::from_secs(config.webhook_disable_after_hours * 3600),
            api_url: match (&config.api_public_url, dev) {
                (Some(url), _) => url.clone(),
                (None, true) => format!("http://{}", loopback(config.api_addr)),
                (None, false) => String::new(),
            },
        };
        // A receiver that hangs is cut here; redirects are failures, never followed.
        let outbound = wiring.outbound(
            &ClientOptions {
                timeout: Duration::from_secs(config.webhook_timeout_secs),
                max_redirects: 0,
                ..Default::default()
            },
            &also_allow,
        )?;
        let service =
            WebhooksService::new(wiring.log().clone(), wiring.required_keyring()?, settings);
        wiring.serve_grpc(WebhooksApi::new(service.clone()).into_server());
        let dispatcher = Arc::new(Dispatcher::new(
            service.clone(),
            outbound,
            DeliveryConfig::default(),
        ));
        wiring.spawn("dispatcher", dispatcher.run(wiring.shutdown()));
        for producer in PRODUCERS {
            let router = wiring
                .router_of(producer.producer)
                .ok_or_else(|| format!("no router for the {} service", producer.producer))?;
            wiring.subscribe(Subscribe {
                consumer: durable::webhooks_fan_out(producer.producer),
                source: Source::Stream {
                    stream: producer,
                    subject: subjects::PUBLIC,
                },
                handler: Arc::new(consumers::FanOut::new(service.clone(), router)),
                inbox: Inbox::Log,
                order: Order::Total,
            });
        }
        Ok(())
    }
}

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}

/// Where the webhooks service publishes: only the operational `endpoint.disabled`, on
/// `events.<workspace>.endpoint.disabled`. Messages and attempts stay in the log.
pub struct PublicEvents;

impl Router for PublicEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == domain::event_types::PUBLIC_ENDPOINT_DISABLED).then(|| {
            subjects::public(
                &event.metadata.workspace_id,
                domain::event_types::PUBLIC_ENDPOINT_DISABLED,
            )
        })
    }
}

/// A stored event's payload for people (`switchboard events tail`): sealed secrets are
/// never shown.
fn describe_payload(event: &switchboard_eventlog::RecordedEvent) -> String {
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
