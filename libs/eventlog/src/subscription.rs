//! Subscriptions: how a service receives another service's events, behind one trait.
//!
//! [`JetStreamSubscription`] reads a durable pull consumer (explicit ack, bounded
//! redelivery with backoff). [`LogTailSubscription`] tails the producer's log directly, for
//! embedded mode where there is no NATS. Either way each event goes through
//! [`EventLog::process_once`] on the consumer's own store, so its effect and the record that
//! it was processed commit together, and an event that can never be handled ends in the
//! dead-letter table with its reason instead of being dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;
use switchboard_proto::events::v1::EventEnvelope;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};
use uuid::Uuid;

use crate::EventLogError;
use crate::backfill::{Backfill, Progress, checkpoint_name, record_progress};
use crate::event::{LogPosition, RecordedEvent};
use crate::handler::{HandleError, Handler};
use crate::relay::{envelope_bytes, prefixed_subject};
use crate::store::{DeadLetter, EventLog};

/// A source of events delivered to a [`Handler`].
#[async_trait]
pub trait Subscription: Send {
    /// Delivers events until `shutdown`, finishing the event in hand before returning.
    async fn run(
        self: Box<Self>,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), EventLogError>;
}

/// Who consumes, where its processed records and dead letters live, and how hard it tries.
#[derive(Clone)]
pub struct SubscriptionConfig {
    /// Durable consumer name, unique per consuming service and purpose.
    pub consumer: String,
    /// The consumer's own store.
    pub inbox: EventLog,
    /// Attempts before a retried event is dead-lettered.
    pub max_attempts: u32,
    /// Delay before attempt n+1 is `backoff[n-1]` (the last entry repeats).
    pub backoff: Vec<Duration>,
    /// Events handled at once, each lane taking the events of some streams: events of one
    /// stream stay in order, events of different streams overlap. 1 (the default) handles
    /// one event at a time. More than one suits a Postgres inbox (SQLite has one writer).
    pub lanes: usize,
}

impl SubscriptionConfig {
    pub fn new(consumer: impl Into<String>, inbox: EventLog) -> Self {
        Self {
            consumer: consumer.into(),
            inbox,
            max_attempts: 5,
            backoff: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            lanes: 1,
        }
    }

    /// Handles up to `lanes` events at once, one stream per lane at a time.
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// The lane of an event: the same stream always takes the same lane.
    fn lane_of(&self, event: &RecordedEvent) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.stream.stream_type.hash(&mut hasher);
        event.stream.stream_id.hash(&mut hasher);
        (hasher.finish() % self.lanes.max(1) as u64) as usize
    }

    fn delay_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Hands `event` to `handler` once, in a consumer span continuing `parent` (the
/// `traceparent` the event came with). `Ok(None)` means finished (handled, already
/// handled, or dead-lettered); `Ok(Some(delay))` means try again after `delay`.
pub(crate) async fn deliver(
    config: &SubscriptionConfig,
    handler: &dyn Handler,
    event: &RecordedEvent,
    attempt: u32,
    parent: &str,
) -> Result<Option<Duration>, EventLogError> {
    if !handler.wants(event).await {
        return Ok(None);
    }
    let span = tracing::info_span!(
        "eventlog.consume",
        otel.kind = "consumer",
        messaging.consumer.group.name = %config.consumer,
        event_type = %event.event_type,
        event_id = %event.event_id,
        attempt,
    );
    crate::trace::set_parent_from_traceparent(&span, parent);
    handle_and_settle(config, handler, event, attempt)
        .instrument(span)
        .await
}

async fn handle_and_settle(
    config: &SubscriptionConfig,
    handler: &dyn Handler,
    event: &RecordedEvent,
    attempt: u32,
) -> Result<Option<Duration>, EventLogError> {
    let outcome = config
        .inbox
        .process_once(&config.consumer, event, handler)
        .await?;
    let reason = match outcome {
        Ok(_) => return Ok(None),
        Err(HandleError::Reject(reason)) => reason,
        Err(HandleError::Retry(reason)) if attempt < config.max_attempts => {
            debug!(consumer = %config.consumer, event_id = %event.event_id, attempt, %reason, "will retry");
            return Ok(Some(config.delay_after(attempt)));
        }
        Err(HandleError::Retry(reason)) => {
            format!("gave up after {attempt} attempts: {reason}")
        }
    };
    warn!(consumer = %config.consumer, event_id = %event.event_id, %reason, "dead-lettering event");
    config
        .inbox
        .dead_letter(&DeadLetter {
            consumer: config.consumer.clone(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            stream_id: event.stream.stream_id.clone(),
            reason,
            attempts: attempt,
            envelope: envelope_bytes(event),
        })
        .await?;
    Ok(None)
}

/// Events from a JetStream durable pull consumer.
pub struct JetStreamSubscription {
    js: jetstream::Context,
    stream: String,
    filter_subject: String,
    config: SubscriptionConfig,
    backfill: Option<Backfill>,
}

impl JetStreamSubscription {
    /// `stream` is the full stream name; `filter_subject` is without the deployment prefix,
    /// which `prefix` supplies.
    pub fn new(
        js: jetstream::Context,
        stream: impl Into<String>,
        prefix: &str,
        filter_subject: &str,
        config: SubscriptionConfig,
    ) -> Self {
        Self {
            js,
            stream: stream.into(),
            filter_subject: prefixed_subject(prefix, filter_subject),
            config,
            backfill: None,
        }
    }

    /// Re-feeds the consumer from the producer's log when its stream lost messages it had
    /// not acknowledged (see [`crate::backfill`]).
    pub fn with_backfill(mut self, backfill: Backfill) -> Self {
        self.backfill = Some(backfill);
        self
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, EventLogError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(EventLogError::nats)?;
        let durable: String = self
            .config
            .consumer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: self.filter_subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    // Unlimited here: our own attempt limit dead-letters, and a message
                    // redelivered past it without an outcome (the consumer crashed on it)
                    // is dead-lettered before it reaches the handler again. JetStream's
                    // own limit would drop it silently.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(EventLogError::nats)
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn run(
        self: Box<Self>,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), EventLogError> {
        let mut consumer = self.consumer().await?;
        if let Some(backfill) = &self.backfill {
            refeed(
                &self.js,
                &self.stream,
                &mut consumer,
                backfill,
                &self.config,
                handler.as_ref(),
                &shutdown,
            )
            .await?;
        }
        let mut messages = consumer.messages().await.map_err(EventLogError::nats)?;
        let config = Arc::new(self.config.clone());
        let progress = Arc::new(Mutex::new(Progress::default()));
        let recording = shutdown.child_token();
        let recorder = tokio::spawn(record_progress(
            self.config.consumer.clone(),
            self.config.inbox.clone(),
            progress.clone(),
            recording.clone(),
        ));
        // One task per lane past the first; with one lane, events are settled in place.
        let mut lanes = Vec::new();
        let mut workers = tokio::task::JoinSet::new();
        if config.lanes > 1 {
            for _ in 0..config.lanes {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Received>(32);
                lanes.push(tx);
                let config = config.clone();
                let handler = handler.clone();
                let shutdown = shutdown.clone();
                workers.spawn(async move {
                    while let Some(received) = rx.recv().await {
                        settle(&config, handler.as_ref(), received, &shutdown).await;
                    }
                });
            }
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            let message = match next {
                None => break,
                Some(Err(e)) => {
                    warn!(error = %e, "subscription stream error");
                    continue;
                }
                Some(Ok(message)) => message,
            };
            let event = EventEnvelope::decode(message.payload.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|env| RecordedEvent::from_envelope(env).map_err(|e| e.to_string()));
            if let (Ok(info), Ok(event)) = (message.info(), &event) {
                progress
                    .lock()
                    .expect("not poisoned")
                    .received(info.stream_sequence, event.global_position);
            }
            let received = Received {
                message,
                event,
                progress: progress.clone(),
            };
            if lanes.is_empty() {
                settle(&config, handler.as_ref(), received, &shutdown).await;
                continue;
            }
            let lane = received
                .event
                .as_ref()
                .map_or(0, |event| config.lane_of(event));
            if lanes[lane].send(received).await.is_err() {
                break;
            }
        }
        // Finish the events in hand: closing the lanes lets each drain and stop.
        drop(lanes);
        while workers.join_next().await.is_some() {}
        recording.cancel();
        let _ = recorder.await;
        Ok(())
    }
}

/// Re-feeds the consumer from the producer's log if its stream lost messages it had not
/// acknowledged. Returns how many events it handed to the handler.
async fn refeed(
    js: &jetstream::Context,
    stream_name: &str,
    consumer: &mut consumer::PullConsumer,
    backfill: &Backfill,
    config: &SubscriptionConfig,
    handler: &dyn Handler,
    shutdown: &CancellationToken,
) -> Result<u64, EventLogError> {
    let acknowledged = consumer
        .info()
        .await
        .map_err(EventLogError::nats)?
        .ack_floor
        .stream_sequence;
    let mut stream = js
        .get_stream(stream_name)
        .await
        .map_err(EventLogError::nats)?;
    let state = stream
        .info()
        .await
        .map_err(EventLogError::nats)?
        .state
        .clone();
    if state.first_sequence <= acknowledged + 1 {
        return Ok(0);
    }
    warn!(
        consumer = %config.consumer,
        acknowledged,
        first_kept = state.first_sequence,
        "the stream no longer holds messages this consumer had not acknowledged; re-feeding it from the log"
    );
    let started = Instant::now();
    let producer = (backfill.open)().await?;
    // From the last event before which everything was settled (the start without a record).
    let recorded = config
        .inbox
        .checkpoint(&checkpoint_name(&config.consumer))
        .await?
        .global_position;
    let from = match recorded {
        0 => LogPosition::START,
        position => producer
            .position_of(position)
            .await?
            .unwrap_or(LogPosition::START),
    };
    // Up to the stream's first message, which the consumer will get from the stream.
    let until = match stream.get_raw_message(state.first_sequence).await {
        Ok(message) => {
            let envelope = EventEnvelope::decode(message.payload.as_ref()).map_err(|e| {
                EventLogError::Corrupt {
                    event_id: String::new(),
                    event_type: String::new(),
                    reason: format!("the stream's first message is not an event: {e}"),
                }
            })?;
            producer.position_of(envelope.global_position).await?
        }
        // Nothing left in the stream: everything the log holds now.
        Err(_) => None,
    };
    let mut after = from;
    let mut fed = 0u64;
    'log: loop {
        let batch = producer.read_all(after, 500).await?;
        let Some(last) = batch.last() else { break };
        after = last.position();
        for event in &batch {
            if until.is_some_and(|until| event.position() >= until) {
                break 'log;
            }
            if !(backfill.filter)(event) {
                continue;
            }
            let mut attempt = 1;
            while let Some(delay) =
                deliver(config, handler, event, attempt, &event.metadata.traceparent).await?
            {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(fed),
                    _ = tokio::time::sleep(delay) => {}
                }
                attempt += 1;
            }
            fed += 1;
        }
    }
    metrics::counter!("subscription_refed_events_total", "consumer" => config.consumer.clone())
        .increment(fed);
    info!(
        consumer = %config.consumer,
        events = fed,
        took_ms = started.elapsed().as_millis() as u64,
        "re-fed the consumer from the log"
    );
    Ok(fed)
}

/// A message as received, with its event decoded (or why it does not decode).
struct Received {
    message: jetstream::Message,
    event: Result<RecordedEvent, String>,
    /// What the consumer has settled, in stream order.
    progress: Arc<Mutex<Progress>>,
}

/// Delivers one received message and acknowledges it once it is done or dead-lettered.
/// An event to retry is retried here, after its backoff, rather than Nak'd: a Nak would
/// let the next events of its stream overtake it, and a stream's events are handled in
/// order. Meanwhile the message is kept ours (progress acks). On shutdown it is handed
/// back for redelivery.
async fn settle(
    config: &SubscriptionConfig,
    handler: &dyn Handler,
    received: Received,
    shutdown: &CancellationToken,
) {
    let Received {
        message,
        event,
        progress,
    } = received;
    let mut attempt = message
        .info()
        .map(|info| info.delivered as u32)
        .unwrap_or(1);
    let finished = match event {
        Ok(event) if attempt > config.max_attempts + 1 => config
            .inbox
            .dead_letter(&DeadLetter {
                consumer: config.consumer.clone(),
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                stream_id: event.stream.stream_id.clone(),
                reason: format!("delivered {attempt} times without an outcome"),
                attempts: attempt,
                envelope: message.payload.to_vec(),
            })
            .await
            .is_ok(),
        Ok(event) => loop {
            // The relay's span when it published with one, else the appending call's.
            let parent = message
                .headers
                .as_ref()
                .and_then(|h| h.get(switchboard_contract::headers::TRACEPARENT))
                .map_or(event.metadata.traceparent.as_str(), |v| v.as_str());
            let outcome = deliver(config, handler, &event, attempt, parent).await;
            // Our own store failing is no reason to give up on the event: try again
            // after a backoff (it counts no attempt against the event).
            let retry = outcome.unwrap_or_else(|e| {
                warn!(consumer = %config.consumer, error = %e, "could not process event; retrying");
                Some(config.delay_after(attempt))
            });
            let Some(delay) = retry else { break true };
            if !hold_for(&message, delay, shutdown).await {
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
            attempt += 1;
        },
        Err(reason) => config
            .inbox
            .dead_letter(&undecodable(&config.consumer, &message, reason, attempt))
            .await
            .is_ok(),
    };
    let ack = if finished {
        if let Ok(info) = message.info() {
            progress
                .lock()
                .expect("not poisoned")
                .settled(info.stream_sequence);
        }
        message.ack().await
    } else {
        // The dead-letter table could not be written: redeliver later.
        message
            .ack_with(AckKind::Nak(Some(config.delay_after(attempt))))
            .await
    };
    if let Err(e) = ack {
        // The message will be redelivered; processed records make that harmless.
        warn!(error = %e, "could not acknowledge message");
    }
}

/// Waits `delay` while keeping `message` ours (JetStream would redeliver it after its
/// ack wait). `false` when `shutdown` came first.
async fn hold_for(
    message: &jetstream::Message,
    delay: Duration,
    shutdown: &CancellationToken,
) -> bool {
    const PROGRESS_EVERY: Duration = Duration::from_secs(10);
    let until = tokio::time::Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            debug!(error = %e, "could not extend the ack wait");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(left.min(PROGRESS_EVERY)) => {}
        }
    }
}

fn undecodable(
    consumer: &str,
    message: &jetstream::Message,
    reason: String,
    attempts: u32,
) -> DeadLetter {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    DeadLetter {
        consumer: consumer.to_owned(),
        event_id: Uuid::parse_str(&header(switchboard_contract::headers::MSG_ID))
            .unwrap_or_else(|_| Uuid::now_v7()),
        event_type: header(switchboard_contract::headers::EVENT_TYPE),
        stream_id: String::new(),
        reason: format!("undecodable message on {}: {reason}", message.subject),
        attempts,
        envelope: message.payload.to_vec(),
    }
}

/// Events read straight from the producer's log (embedded mode: no NATS). The position
/// is checkpointed in the consumer's store after each event.
pub struct LogTailSubscription {
    source: EventLog,
    filter: Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>,
    config: SubscriptionConfig,
    poll_interval: Duration,
}

impl LogTailSubscription {
    pub fn new(
        source: EventLog,
        filter: Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>,
        config: SubscriptionConfig,
    ) -> Self {
        Self {
            source,
            filter,
            config,
            poll_interval: Duration::from_millis(200),
        }
    }
}

#[async_trait]
impl Subscription for LogTailSubscription {
    async fn run(
        self: Box<Self>,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), EventLogError> {
        let checkpoint = format!("subscription:{}", self.config.consumer);
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.follow(&checkpoint, handler.as_ref(), &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Either store failing is transient from here: the checkpoint and the
                    // processed records make resuming safe.
                    warn!(consumer = %self.config.consumer, error = %e, retry_in = ?backoff, "subscription failed; resuming");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

impl LogTailSubscription {
    /// Delivers `events` one after the other, each retried after its backoff until it is
    /// settled. `false` when `shutdown` came first.
    async fn deliver_in_order(
        &self,
        events: Vec<&RecordedEvent>,
        handler: &dyn Handler,
        shutdown: &CancellationToken,
    ) -> Result<bool, EventLogError> {
        for event in events {
            let mut attempt = 1;
            while let Some(delay) = deliver(
                &self.config,
                handler,
                event,
                attempt,
                &event.metadata.traceparent,
            )
            .await?
            {
                attempt += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Ok(true)
    }

    /// Delivers from the checkpoint on until `shutdown`, or until a store fails.
    async fn follow(
        &self,
        checkpoint: &str,
        handler: &dyn Handler,
        shutdown: &CancellationToken,
    ) -> Result<(), EventLogError> {
        let mut after = self.config.inbox.checkpoint(checkpoint).await?;
        loop {
            let appended = self.source.appended();
            let batch = self.source.read_all(after, 100).await?;
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = appended => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
                continue;
            }
            if self.config.lanes > 1 {
                // The batch's events at once, lane by lane (each stream in order), and the
                // checkpoint past the batch only once all are settled.
                let mut lanes: Vec<Vec<&RecordedEvent>> = vec![Vec::new(); self.config.lanes];
                for event in batch.iter().filter(|e| (self.filter)(e)) {
                    lanes[self.config.lane_of(event)].push(event);
                }
                let settled = futures::future::try_join_all(
                    lanes
                        .into_iter()
                        .map(|lane| self.deliver_in_order(lane, handler, shutdown)),
                )
                .await?;
                if settled.contains(&false) {
                    return Ok(());
                }
                after = batch.last().map_or(after, RecordedEvent::position);
                self.config.inbox.save_checkpoint(checkpoint, after).await?;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            for event in &batch {
                if (self.filter)(event)
                    && !self
                        .deliver_in_order(vec![event], handler, shutdown)
                        .await?
                {
                    return Ok(());
                }
                after = event.position();
                self.config.inbox.save_checkpoint(checkpoint, after).await?;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
            }
        }
    }
}
