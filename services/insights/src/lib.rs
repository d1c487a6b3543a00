//! The insights service: the classified, analysed view of a workspace's conversations.
//!
//! - [`MODULE`]: the service as the binary runs it (its gRPC API, the subscriptions that
//!   keep its read model, the scheduled detection of findings, declared in `start`).
//! - [`domain`]: dimensions and filters, a conversation's classification, trend buckets,
//!   segments and findings; pure.
//! - [`service`]: the questions (summary, breakdown, trends, dimensions), the segments'
//!   and findings' commands, and the detection.
//! - [`consumers`]: conversations' public events and flow run starts, into the read model.
//! - [`store`]: the read model and the SQL of every question, one text for both backends.
//! - [`grpc`]: the tonic service.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_contract::{consumers as durable, services, streams, subjects};
use switchboard_eventlog::{EventLog, EventLogError, RecordedEvent, StoreConfig};
use switchboard_runtime::service::{
    BoxError, Inbox, Order, ReadModels, ServiceModule, Source, Subscribe, Wiring,
};
use tokio_util::sync::CancellationToken;

pub use grpc::InsightsApi;
pub use service::InsightsService;
pub use store::{InsightsProjection, InsightsStore};

pub const SERVICE: &str = services::INSIGHTS;
pub const GRPC_SERVICE: &str = "switchboard.insights.v1.Insights";

/// The insights service, as the binary composes it.
pub const MODULE: Insights = Insights;

/// The insights service module.
pub struct Insights;

#[async_trait]
impl ServiceModule for Insights {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn read_models(&self) -> ReadModels {
        ReadModels::new(store::read_model_ddl(), InsightsProjection)
    }

    fn describe(&self, event: &RecordedEvent) -> String {
        match domain::Event::decode(event) {
            Ok(Some(event)) => format!("{event:?}"),
            Ok(None) => format!("<{} bytes of unknown type>", event.payload.len()),
            Err(e) => format!("<undecodable: {e}>"),
        }
    }

    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError> {
        let service = InsightsService::new(wiring.log().clone());
        wiring.serve_grpc(InsightsApi::new(service.clone()).into_server());
        wiring.subscribe(Subscribe {
            consumer: durable::INSIGHTS_CONVERSATIONS.to_owned(),
            source: Source::Stream {
                stream: streams::CONVERSATIONS,
                subject: subjects::CONVERSATION_EVENTS,
            },
            handler: Arc::new(consumers::ConversationEvents),
            inbox: Inbox::Log,
            order: Order::PerStream,
        });
        wiring.subscribe(Subscribe {
            consumer: durable::INSIGHTS_FLOW_RUNS.to_owned(),
            source: Source::Stream {
                stream: streams::FLOWS,
                subject: subjects::FLOW_RUN_STARTED,
            },
            handler: Arc::new(consumers::FlowRuns),
            inbox: Inbox::Log,
            order: Order::PerStream,
        });
        wiring.subscribe(Subscribe {
            consumer: durable::INSIGHTS_CONNEXEASE_STATS.to_owned(),
            source: Source::Stream {
                stream: streams::CONNEXEASE,
                subject: subjects::CONNEXEASE_STATS,
            },
            handler: Arc::new(consumers::ConnexeaseStats),
            inbox: Inbox::Log,
            order: Order::PerStream,
        });
        let every = wiring.config().insights_findings_every_secs;
        if every > 0 {
            wiring.spawn(
                "findings",
                detect_every(service, Duration::from_secs(every), wiring.shutdown()),
            );
        }
        Ok(())
    }
}

/// Runs the detection of findings for every workspace active in the last weeks, every
/// `period`, until `shutdown`.
async fn detect_every(service: InsightsService, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = service::now_ms();
        let since = now - 15 * domain::dimensions::DAY_MS;
        let workspaces = match service.store().active_workspaces(since).await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(error = %e, "findings: could not list the active workspaces");
                continue;
            }
        };
        for ws in workspaces {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = service.detect(&ws, now).await {
                tracing::warn!(workspace = %ws, error = %e, "findings: the detection failed");
            }
        }
    }
}

/// Opens the service's log with its read models and projection.
pub async fn open_log(config: &StoreConfig) -> Result<EventLog, EventLogError> {
    switchboard_runtime::service::open_log(&MODULE, config).await
}
