//! The relay: the log is the outbox, and the relay carries it to NATS JetStream.
//!
//! One relay is active per service (the holder of its [`Lease`]; the others stand by and
//! take over within a lease term when it dies or freezes). It tails the log gap-safely, publishes each routed event with `Nats-Msg-Id = event_id`,
//! and advances its checkpoint only after JetStream acknowledged the whole batch. A crash
//! between publish and checkpoint republishes the batch, and JetStream's duplicate window
//! drops the copies; consumers dedupe by event id beyond it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::EventLogError;
use crate::event::RecordedEvent;
use crate::lease::{Fence, Lease};
use crate::store::{DeadLetter, EventLog, RelayLag};

/// Decides where each event of a service's log goes on NATS.
pub trait Router: Send + Sync {
    /// The subject for `event` (without the deployment prefix), or `None` to keep it in the
    /// log only. Public events go to `events.<workspace>.<type>`, service-to-service ones
    /// to `internal.<service>.<event>`.
    fn subject(&self, event: &RecordedEvent) -> Option<String>;
}

/// A JetStream stream a service publishes to.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name, e.g. `CONVERSATIONS`.
    pub name: String,
    /// Subjects without the deployment prefix, e.g. `events.*.conversation.>`.
    pub subjects: Vec<String>,
    /// Replicas (3 in production).
    pub replicas: usize,
    /// How much the stream keeps before the oldest messages go.
    pub retention: Retention,
}

/// How much a stream keeps: messages older than `max_age`, or beyond `max_bytes` or
/// `max_messages`, are removed, the oldest first (the log stays the truth, and a consumer
/// that falls behind is re-fed from it). Zero or less: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
}

/// The window in which JetStream drops a message published again with the same id (the
/// relay republishing a batch after a crash); never longer than the stream keeps messages.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl StreamSpec {
    /// The spec of a stream of the bus contract, with `replicas` and no retention limit.
    pub fn of(stream: &switchboard_contract::Stream, replicas: usize) -> Self {
        Self {
            name: stream.name.to_owned(),
            subjects: stream.subjects.iter().map(|s| (*s).to_owned()).collect(),
            replicas,
            retention: Retention::default(),
        }
    }

    /// The same stream keeping at most what `retention` says.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The stream's name under a deployment prefix.
    pub fn prefixed_name(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            self.name.clone()
        } else {
            format!("{prefix}_{}", self.name)
        }
    }
}

/// `subject` under a deployment prefix (tests isolate themselves with one).
pub fn prefixed_subject(prefix: &str, subject: &str) -> String {
    if prefix.is_empty() {
        subject.to_owned()
    } else {
        format!("{prefix}.{subject}")
    }
}

/// Creates the stream with file storage, the given replicas, retention and a two-minute
/// duplicate window, or brings an existing one's subjects, replicas and retention up to
/// date.
pub async fn ensure_stream(
    js: &jetstream::Context,
    prefix: &str,
    spec: &StreamSpec,
) -> Result<stream::Stream, EventLogError> {
    let limit = |n: i64| if n > 0 { n } else { -1 };
    let max_age = spec.retention.max_age;
    let config = stream::Config {
        name: spec.prefixed_name(prefix),
        subjects: spec
            .subjects
            .iter()
            .map(|s| prefixed_subject(prefix, s))
            .collect(),
        storage: stream::StorageType::File,
        num_replicas: spec.replicas,
        duplicate_window: if max_age.is_zero() {
            DUPLICATE_WINDOW
        } else {
            DUPLICATE_WINDOW.min(max_age)
        },
        max_age,
        max_bytes: limit(spec.retention.max_bytes),
        max_messages: limit(spec.retention.max_messages),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let current = existing
                .info()
                .await
                .map_err(EventLogError::nats)?
                .config
                .clone();
            let changed = current.subjects != config.subjects
                || current.num_replicas != config.num_replicas
                || current.max_age != config.max_age
                || limit(current.max_bytes) != config.max_bytes
                || limit(current.max_messages) != config.max_messages;
            if changed {
                info!(
                    stream = %config.name,
                    max_age_secs = config.max_age.as_secs(),
                    max_bytes = config.max_bytes,
                    "updating stream subjects, replicas and retention"
                );
                js.update_stream(config)
                    .await
                    .map_err(EventLogError::nats)?;
            }
            Ok(existing)
        }
        Err(_) => js
            .get_or_create_stream(config)
            .await
            .map_err(EventLogError::nats),
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The service whose log is relayed; names the leader lock and the checkpoint.
    pub service: String,
    /// Deployment prefix of every subject.
    pub prefix: String,
    pub batch_size: usize,
    /// How often to look for events appended by other processes.
    pub poll_interval: Duration,
}

/// Exports how far the relay is behind its log, at most every two seconds, and says so in
/// the log when it falls behind, catches up, or is held back by an open transaction.
struct LagWatch {
    service: String,
    last: Option<std::time::Instant>,
    behind: bool,
    held: bool,
}

impl LagWatch {
    /// Seconds behind the log's newest event after which the relay counts as behind.
    const BEHIND_SECS: f64 = 10.0;

    fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            last: None,
            behind: false,
            held: false,
        }
    }

    async fn observe(&mut self, log: &EventLog, checkpoint: &str) {
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let lag = match log.checkpoint(checkpoint).await {
            Ok(position) => log.lag(position).await,
            Err(e) => Err(e),
        };
        let lag = match lag {
            Ok(lag) => lag,
            Err(e) => {
                warn!(service = %self.service, error = %e, "relay could not measure its lag");
                return;
            }
        };
        self.export(&lag);
        let behind = lag.oldest_secs >= Self::BEHIND_SECS;
        if behind && !self.behind {
            warn!(service = %self.service, events = lag.events, seconds = lag.oldest_secs, "relay is falling behind the log");
        } else if !behind && self.behind {
            info!(service = %self.service, "relay caught up with the log");
        }
        self.behind = behind;
        let held = lag.held_back > 0 && lag.oldest_transaction_secs >= Self::BEHIND_SECS;
        if held && !self.held {
            warn!(
                service = %self.service,
                events = lag.held_back,
                transaction_secs = lag.oldest_transaction_secs,
                "relay is held back: committed events wait behind an older open transaction \
                 (gap safety); see pg_stat_activity for the oldest xact_start"
            );
        }
        self.held = held;
    }

    fn export(&self, lag: &RelayLag) {
        let service = self.service.clone();
        metrics::gauge!("relay_lag_events", "service" => service.clone()).set(lag.events as f64);
        metrics::gauge!("relay_lag_seconds", "service" => service.clone()).set(lag.oldest_secs);
        metrics::gauge!("relay_held_back_events", "service" => service.clone())
            .set(lag.held_back as f64);
        metrics::gauge!("relay_held_back_seconds", "service" => service)
            .set(lag.oldest_transaction_secs);
    }
}

/// Publishes one service's log to JetStream.
pub struct Relay {
    log: EventLog,
    js: jetstream::Context,
    router: Arc<dyn Router>,
    config: RelayConfig,
}

impl Relay {
    pub fn new(
        log: EventLog,
        js: jetstream::Context,
        router: Arc<dyn Router>,
        config: RelayConfig,
    ) -> Self {
        Self {
            log,
            js,
            router,
            config,
        }
    }

    fn checkpoint_name(&self) -> String {
        format!("relay:{}", self.config.service)
    }

    /// Runs until `shutdown`: waits to become the leader, then publishes as events arrive.
    /// Errors (NATS down, database restarting) are retried with backoff; the log keeps
    /// every write meanwhile and the relay catches up.
    pub async fn run(self, shutdown: CancellationToken) {
        let lock = self.checkpoint_name();
        while !shutdown.is_cancelled() {
            match self.log.try_lead(&lock).await {
                Ok(Some(lease)) => {
                    info!(service = %self.config.service, token = lease.token(), "relay is the active publisher");
                    self.lead(lease, &shutdown).await;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "relay could not ask for leadership"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn lead(&self, lease: Lease, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut watch = LagWatch::new(&self.config.service);
        loop {
            if !lease.is_held() {
                warn!(service = %self.config.service, "relay lost its lease; standing by");
                return;
            }
            let appended = self.log.appended();
            match self.publish_pending(Some(lease.fence())).await {
                Ok(passed) => {
                    backoff = Duration::from_millis(100);
                    watch.observe(&self.log, &self.checkpoint_name()).await;
                    if passed > 0 {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = lease.lost() => {}
                        _ = appended => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Err(EventLogError::Fenced { .. }) => {
                    warn!(service = %self.config.service, "relay was taken over; standing by");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "relay could not publish; will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = lease.lost() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Publishes everything readable now, batch by batch, advancing the checkpoint after
    /// each acknowledged batch. Returns how many log events it passed (routed or not).
    ///
    /// With a `fence`, each checkpoint is saved only while its lease is held, so a relay
    /// that lost its role stops at its next batch.
    pub async fn publish_pending(&self, fence: Option<&Fence>) -> Result<usize, EventLogError> {
        let name = self.checkpoint_name();
        let mut after = self.log.checkpoint(&name).await?;
        let mut passed = 0;
        loop {
            let batch = self.log.read_all(after, self.config.batch_size).await?;
            let Some(last) = batch.last() else {
                return Ok(passed);
            };
            let mut acks = Vec::with_capacity(batch.len());
            for event in &batch {
                let Some(subject) = self.router.subject(event) else {
                    continue;
                };
                let subject = prefixed_subject(&self.config.prefix, &subject);
                let mut headers = headers(event);
                let _span = publish_span(event, &subject, &mut headers);
                let published = self
                    .js
                    .publish_with_headers(subject, headers, envelope_bytes(event).into())
                    .await;
                match published {
                    Ok(ack) => acks.push(ack),
                    // Retrying can never send this one: keep it, say why, and go on, rather
                    // than hold back every event behind it.
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        self.dead_letter(event, &format!("cannot publish: {e}"))
                            .await?;
                    }
                    Err(e) => return Err(EventLogError::nats(e)),
                }
            }
            let published = acks.len();
            for ack in acks {
                ack.await.map_err(EventLogError::nats)?;
            }
            match fence {
                Some(fence) => {
                    self.log
                        .save_checkpoint_fenced(&name, last.position(), fence)
                        .await?
                }
                None => self.log.save_checkpoint(&name, last.position()).await?,
            }
            after = last.position();
            metrics::counter!("relay_published_total", "service" => self.config.service.clone())
                .increment(published as u64);
            passed += batch.len();
            if batch.len() < self.config.batch_size {
                return Ok(passed);
            }
        }
    }

    async fn dead_letter(&self, event: &RecordedEvent, reason: &str) -> Result<(), EventLogError> {
        warn!(event_id = %event.event_id, event_type = %event.event_type, %reason, "relay dead-letters an event");
        self.log
            .dead_letter(&DeadLetter {
                consumer: self.checkpoint_name(),
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                stream_id: event.stream.stream_id.clone(),
                reason: reason.to_owned(),
                attempts: 1,
                envelope: envelope_bytes(event),
            })
            .await
    }
}

/// The encoded envelope of `event`, the body of its NATS message.
pub fn envelope_bytes(event: &RecordedEvent) -> Vec<u8> {
    event.to_envelope().encode_to_vec()
}

/// The NATS headers of `event`: dedupe id, trace context and what a consumer needs to route
/// without decoding.
/// The relay's hop in the trace of the call that appended `event`: a producer span, child
/// of the event's `traceparent`, whose own `traceparent` the message carries, so the
/// consumers' spans hang under it. Events appended outside any trace get none.
fn publish_span(event: &RecordedEvent, subject: &str, headers: &mut HeaderMap) -> tracing::Span {
    if event.metadata.traceparent.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "eventlog.publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        event_type = %event.event_type,
        event_id = %event.event_id,
    );
    crate::trace::set_parent_from_traceparent(&span, &event.metadata.traceparent);
    if let Some(traceparent) = span.in_scope(crate::trace::current_traceparent) {
        headers.insert(
            switchboard_contract::headers::TRACEPARENT,
            traceparent.as_str(),
        );
    }
    span
}

pub fn headers(event: &RecordedEvent) -> HeaderMap {
    use switchboard_contract::headers as h;
    let mut headers = HeaderMap::new();
    headers.insert(h::MSG_ID, event.event_id.to_string().as_str());
    headers.insert(h::EVENT_TYPE, event.event_type.as_str());
    headers.insert(h::SCHEMA_VERSION, event.schema_version.to_string().as_str());
    headers.insert(h::WORKSPACE, event.metadata.workspace_id.as_str());
    headers.insert(h::CONTENT_TYPE, h::PROTOBUF);
    if !event.metadata.traceparent.is_empty() {
        headers.insert(h::TRACEPARENT, event.metadata.traceparent.as_str());
    }
    if !event.metadata.tracestate.is_empty() {
        headers.insert(h::TRACESTATE, event.metadata.tracestate.as_str());
    }
    headers
}
