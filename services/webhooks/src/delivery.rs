//! The dispatcher: sends due messages, records every attempt, and schedules the next.
//!
//! The schedule lives in the log: each attempt's event says when the next one is due, and
//! the messages read model (rebuilt from the log) is what the dispatcher polls, so after a
//! restart every pending retry resumes on time. One dispatcher is active per deployment:
//! the holder of the `webhooks-dispatcher` lease. A dispatcher whose lease ran out sends
//! nothing more and its deferrals and give-ups are fenced; the attempts it had already
//! sent are recorded all the same (they happened), and a successor waits a moment after
//! taking over before it reads what is due, so those records land first.
//! A message is sent again only after its previous attempt ended (answered, timed out,
//! or its process died); a crash mid-attempt sends it again with the same `webhook-id`,
//! which is the at-least-once contract receivers dedupe on.
//!
//! Per endpoint: a token-bucket rate limit, a circuit breaker (after consecutive failures
//! the endpoint is left alone for a cool-down, then one probe goes through), and automatic
//! disabling once it has failed, with no success, for `disable_after`.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message as _;
use rand::Rng as _;
use switchboard_eventlog::{EventLogError, Fence, Lease, NewEvent, derive_event_id, timestamp};
use switchboard_outbound::{GuardedClient, OutboundError};
use switchboard_proto::webhooks::v1::{
    Attempt, AttemptOutcome, Endpoint, ErrorClass, MessageDeferred, MessageFailed,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use crate::domain::{self, Verdict, event_types as t, limits};
use crate::service::{ServiceError, WebhooksService};
use crate::store::Due;

/// How long an attempt that went out waits for the database to record it, before the
/// message is left to be sent again.
const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// How long a dispatcher that took the role over from another holder waits before it
/// reads what is due: long enough for the previous holder's attempts, recorded as soon
/// as the database answers (its retries are at most two seconds apart), to land.
const SETTLE_AFTER_TAKEOVER: Duration = Duration::from_secs(3);

/// How the dispatcher works.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Attempts in flight at once, over all endpoints.
    pub concurrency: usize,
    /// How often to look for due messages when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// Consecutive failures that open an endpoint's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit stays open before one probe is let through.
    pub breaker_cooldown: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            poll_interval: Duration::from_millis(200),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Breaker {
    consecutive_failures: u32,
    /// Open until then (microseconds on the service clock).
    open_until: i64,
    /// Half-open: one probe is in flight; the rest wait for its answer.
    probing: bool,
}

/// What the breaker lets an attempt do.
enum Gate {
    Go,
    WaitUntil(i64),
}

pub struct Dispatcher {
    service: WebhooksService,
    client: GuardedClient,
    config: DeliveryConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
    limiters: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
    attempts: Mutex<InFlight>,
    /// The lease the dispatcher holds while it runs as the active one: nothing is sent
    /// once it is lost, and records are refused once another process has taken the role.
    lease: Mutex<Option<Arc<Lease>>>,
    /// Endpoints and their opened signing keys, by id, valid while the version matches
    /// the read model's.
    endpoints: Mutex<HashMap<String, Arc<CachedEndpoint>>>,
}

/// What the dispatcher has in hand, so no message is sent while its previous attempt is
/// still going, nor again off a read of the due messages taken before that attempt was
/// recorded.
#[derive(Default)]
struct InFlight {
    /// Messages being attempted.
    messages: HashSet<String>,
    /// Ordered lanes (endpoint, conversation) held by an attempt.
    lanes: HashSet<(String, String)>,
    /// Messages whose attempt ended since the current read of due messages began, with the
    /// stream version the attempt was made at: a row read at that version (or before) is
    /// stale, and sending it would send the message twice.
    settled: HashMap<String, i64>,
}

impl InFlight {
    /// Takes `message` in hand unless it, or its ordered lane, is already, or the row is
    /// older than an attempt that has ended.
    fn take(&mut self, message: &Due) -> bool {
        if self.messages.contains(&message.message_id)
            || self
                .settled
                .get(&message.message_id)
                .is_some_and(|&version| version >= message.stream_version)
        {
            return false;
        }
        if let Some(lane) = lane(message)
            && !self.lanes.insert(lane)
        {
            return false;
        }
        self.messages.insert(message.message_id.clone());
        true
    }

    /// Lets `message` go after its attempt; `recorded` when the attempt's outcome is in
    /// the log, so reads taken before then must not send it again.
    fn release(&mut self, message: &Due, recorded: bool) {
        if recorded {
            self.settled
                .insert(message.message_id.clone(), message.stream_version);
        }
        self.messages.remove(&message.message_id);
        if let Some(lane) = lane(message) {
            self.lanes.remove(&lane);
        }
    }
}

/// The ordered lane a message holds while it is attempted, if its endpoint is ordered.
fn lane(message: &Due) -> Option<(String, String)> {
    (message.ordered && !message.conversation_id.is_empty())
        .then(|| (message.endpoint_id.clone(), message.conversation_id.clone()))
}

struct CachedEndpoint {
    version: i64,
    endpoint: Endpoint,
    /// Signing keys with when each stops signing (`None`: the current one).
    keys: Vec<(Vec<u8>, Option<i64>)>,
}

impl Dispatcher {
    pub fn new(service: WebhooksService, client: GuardedClient, config: DeliveryConfig) -> Self {
        Self {
            service,
            client,
            config,
            breakers: Mutex::default(),
            limiters: Mutex::default(),
            attempts: Mutex::default(),
            lease: Mutex::default(),
            endpoints: Mutex::default(),
        }
    }

    /// Delivers until `shutdown`, while this process holds the dispatcher role.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.service.log().try_lead("webhooks-dispatcher").await {
                Ok(Some(lease)) => {
                    info!(token = lease.token(), "webhook dispatcher is active");
                    if lease.token() > 1 {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(SETTLE_AFTER_TAKEOVER) => {}
                        }
                    }
                    let lease = Arc::new(lease);
                    *self.lease.lock().expect("not poisoned") = Some(lease.clone());
                    let mut tasks = JoinSet::new();
                    while !shutdown.is_cancelled() {
                        if !lease.is_held() {
                            warn!("webhook dispatcher lost its lease; standing by");
                            break;
                        }
                        let appended = self.service.log().appended();
                        while tasks.try_join_next().is_some() {}
                        match self.start_due(&mut tasks).await {
                            Ok(0) => {
                                tokio::select! {
                                    _ = shutdown.cancelled() => {}
                                    _ = lease.lost() => {}
                                    _ = appended => {}
                                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                                }
                            }
                            Ok(_) => tokio::task::yield_now().await,
                            Err(e) => {
                                warn!(error = %e, "webhook dispatcher could not read due messages");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    // Finish the attempts in hand: cutting them would only send them again.
                    while tasks.join_next().await.is_some() {}
                    *self.lease.lock().expect("not poisoned") = None;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "webhook dispatcher could not ask for the lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Attempts every message due now and waits for them, again and again until nothing is
    /// due (the next in an ordered lane becomes due when its head settles). For tests and
    /// tools that move a clock by hand.
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let mut total = 0;
        loop {
            let mut tasks = JoinSet::new();
            let started = self.start_due(&mut tasks).await?;
            while tasks.join_next().await.is_some() {}
            if started == 0 {
                return Ok(total);
            }
            total += started;
        }
    }

    /// Starts an attempt for each due message not already in flight, up to the
    /// concurrency limit. Returns how many it started.
    async fn start_due(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<usize, ServiceError> {
        let room = self.config.concurrency.saturating_sub(tasks.len());
        if room == 0 {
            return Ok(0);
        }
        // Attempts that end from here on may have been read as due by the read below,
        // before their outcome was recorded: those are kept in `settled`. The ones that
        // ended before it began are in what it reads.
        self.attempts.lock().expect("not poisoned").settled.clear();
        let now = self.service.now();
        let due = self
            .service
            .store()
            .due(now, (room * 4).min(1000) as u32)
            .await?;
        let mut started = 0;
        for message in due {
            if started == room {
                break;
            }
            if !self.attempts.lock().expect("not poisoned").take(&message) {
                continue;
            }
            started += 1;
            let this = self.clone();
            let span = tracing::info_span!(
                "webhook.deliver",
                otel.kind = "client",
                message_id = %message.message_id,
                endpoint_id = %message.endpoint_id,
                attempt = message.attempts + 1,
            );
            switchboard_runtime::telemetry::set_parent_from_traceparent(
                &span,
                &message.traceparent,
            );
            tasks.spawn(async move {
                let recorded = match this.attempt(&message).instrument(span).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(message_id = %message.message_id, error = %e, "webhook attempt could not be recorded; it will be tried again");
                        false
                    }
                };
                this.attempts
                    .lock()
                    .expect("not poisoned")
                    .release(&message, recorded);
            });
        }
        Ok(started)
    }

    fn fence(&self) -> Option<Fence> {
        let lease = self.lease.lock().expect("not poisoned");
        lease.as_ref().map(|lease| lease.fence().clone())
    }

    /// Refuses to send once the dispatcher's lease is lost (a dispatcher that was frozen
    /// past its term and woke up): its successor sends instead.
    fn check_still_active(&self) -> Result<(), ServiceError> {
        let lease = self.lease.lock().expect("not poisoned");
        match lease.as_ref() {
            Some(lease) if !lease.is_held() => Err(EventLogError::Fenced {
                lease: "webhooks-dispatcher".into(),
                token: lease.token(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Open (after repeated failures, or while the endpoint asked us to slow down): wait.
    /// Closed: go. Past the cool-down after repeated failures (half-open): the first
    /// attempt goes as the probe, the others wait a second for its answer.
    fn gate(&self, endpoint_id: &str) -> Gate {
        let now = self.service.now();
        let mut breakers = self.breakers.lock().expect("not poisoned");
        let Some(breaker) = breakers.get_mut(endpoint_id) else {
            return Gate::Go;
        };
        if breaker.open_until > now {
            return Gate::WaitUntil(breaker.open_until);
        }
        if breaker.consecutive_failures < self.config.breaker_threshold {
            return Gate::Go;
        }
        if breaker.probing {
            return Gate::WaitUntil(now + 1_000_000);
        }
        breaker.probing = true;
        Gate::Go
    }

    fn limiter(&self, endpoint: &Endpoint) -> Option<Arc<DefaultDirectRateLimiter>> {
        let rate = NonZeroU32::new(endpoint.rate_limit_per_second)?;
        let mut limiters = self.limiters.lock().expect("not poisoned");
        Some(
            limiters
                .entry((endpoint.id.clone(), rate.get()))
                .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(rate))))
                .clone(),
        )
    }

    /// The message's endpoint with its opened keys: from the cache while its version is
    /// the read model's, otherwise loaded from its stream.
    async fn endpoint_for(
        &self,
        message: &Due,
    ) -> Result<Option<Arc<CachedEndpoint>>, ServiceError> {
        let cached = self
            .endpoints
            .lock()
            .expect("not poisoned")
            .get(&message.endpoint_id)
            .filter(|c| c.version == message.endpoint_version)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some((endpoint, version)) = self
            .service
            .load_endpoint(&message.workspace_id, &message.endpoint_id)
            .await?
        else {
            return Ok(None);
        };
        let keys = self
            .service
            .all_secrets(&endpoint)?
            .into_iter()
            .filter_map(|(secret, expires)| Some((domain::secret_key(&secret).ok()?, expires)))
            .collect();
        let cached = Arc::new(CachedEndpoint {
            version: version as i64,
            endpoint,
            keys,
        });
        self.endpoints
            .lock()
            .expect("not poisoned")
            .insert(message.endpoint_id.clone(), cached.clone());
        Ok(Some(cached))
    }

    /// One attempt of one message, recorded.
    async fn attempt(&self, message: &Due) -> Result<(), ServiceError> {
        let ws = message.workspace_id.clone();
        let Some(cached) = self.endpoint_for(message).await? else {
            return self.give_up(message, "the endpoint does not exist").await;
        };
        let endpoint = &cached.endpoint;
        if endpoint.deleted || !endpoint.enabled {
            let reason = if endpoint.deleted {
                "the endpoint was deleted".to_owned()
            } else {
                format!("the endpoint is disabled ({})", endpoint.disabled_reason)
            };
            return self.give_up(message, &reason).await;
        }
        if let Gate::WaitUntil(until) = self.gate(&endpoint.id) {
            return self.defer(message, until).await;
        }
        if let Some(limiter) = self.limiter(endpoint) {
            limiter.until_ready().await;
        }
        let sent_at = self.service.now();
        let keys: Vec<&[u8]> = cached
            .keys
            .iter()
            .filter(|(_, expires)| expires.is_none_or(|at| at > sent_at))
            .map(|(key, _)| key.as_slice())
            .collect();
        let unix = sent_at.div_euclid(1_000_000);
        let body = message.payload.as_bytes();
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "application/json".into()),
            ("webhook-id", message.message_id.clone()),
            ("webhook-timestamp", unix.to_string()),
            (
                "webhook-signature",
                domain::signature_header(&keys, &message.message_id, unix, body),
            ),
        ];
        if let Some(traceparent) = switchboard_runtime::telemetry::current_traceparent() {
            headers.push(("traceparent", traceparent));
        }
        if message.ordered && !message.conversation_id.is_empty() {
            headers.push(("webhook-sequence", message.sequence.to_string()));
            headers.push(("webhook-conversation", message.conversation_id.clone()));
        }
        let mut request = self.client.inner().post(&endpoint.url).body(body.to_vec());
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        self.check_still_active()?;
        let started = Instant::now();
        let result = match request.build() {
            Ok(request) => self.client.execute(request).await,
            Err(e) => Err(OutboundError::Http(e)),
        };
        let mut attempt = Attempt {
            message_id: message.message_id.clone(),
            endpoint_id: endpoint.id.clone(),
            attempt: (message.attempts + 1) as u32,
            attempted_at: Some(timestamp(sent_at)),
            url: endpoint.url.clone(),
            request_headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        };
        let (verdict, retry_after) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = domain::throttles(status)
                    .then(|| retry_after(response.headers()))
                    .flatten();
                let read = switchboard_outbound::read_capped(response, limits::RESPONSE_BODY_BYTES)
                    .await
                    .unwrap_or_default();
                attempt.response_status = u32::from(status);
                let (text, cut) = domain::truncate(&read.0, limits::RESPONSE_BODY_BYTES);
                attempt.response_body = text;
                attempt.response_truncated = cut || read.1;
                let verdict = domain::judge_status(status);
                if verdict != Verdict::Delivered {
                    attempt.error_class = ErrorClass::HttpStatus as i32;
                    attempt.error = format!("the endpoint answered {status}");
                }
                (verdict, retry_after)
            }
            Err(e) => {
                let class = match &e {
                    OutboundError::Blocked(_) => ErrorClass::SsrfBlocked,
                    OutboundError::Http(inner) => {
                        domain::classify_failure(&transport_failure(inner))
                    }
                };
                attempt.error_class = class as i32;
                attempt.error = e.to_string();
                // A refused destination stays refused: retrying would only knock again.
                let verdict = if class == ErrorClass::SsrfBlocked {
                    Verdict::Fail
                } else {
                    Verdict::Retry
                };
                (verdict, None)
            }
        };
        attempt.duration_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        let next_delay = (verdict == Verdict::Retry)
            .then(|| {
                self.service.settings().schedule.next_delay(
                    (message.round_attempts + 1) as u32,
                    retry_after,
                    rand::rng().random::<f64>(),
                )
            })
            .flatten();
        attempt.outcome = match (verdict, next_delay) {
            (Verdict::Delivered, _) => AttemptOutcome::Delivered,
            (Verdict::Retry, Some(delay)) => {
                attempt.next_attempt_at = Some(timestamp(sent_at + delay.as_micros() as i64));
                AttemptOutcome::Retry
            }
            _ => AttemptOutcome::Failed,
        } as i32;
        let delivered = verdict == Verdict::Delivered;
        // 429, 502, 503 and 504 throttle the whole endpoint, not only this message: its
        // other messages wait until this one's next attempt (which honours Retry-After).
        let throttle_until = (domain::throttles(attempt.response_status as u16) && !delivered)
            .then(|| {
                attempt
                    .next_attempt_at
                    .as_ref()
                    .map(switchboard_eventlog::micros)
            })
            .flatten();
        self.record(message, &attempt).await?;
        let outcome = match AttemptOutcome::try_from(attempt.outcome) {
            Ok(AttemptOutcome::Delivered) => "delivered",
            Ok(AttemptOutcome::Retry) => "retry",
            _ => "failed",
        };
        metrics::counter!("webhook_attempts_total", "outcome" => outcome).increment(1);
        metrics::histogram!("webhook_attempt_duration_seconds")
            .record(f64::from(attempt.duration_ms) / 1000.0);
        // The attempt is recorded: what follows must not make it look unrecorded (and be
        // sent again); a failure here is said and left to the next attempt.
        if let Err(e) = self
            .track(endpoint, delivered, sent_at, throttle_until)
            .await
        {
            warn!(endpoint_id = %endpoint.id, error = %e, "could not update the endpoint's health");
        }
        if verdict == Verdict::Gone {
            info!(endpoint_id = %endpoint.id, "endpoint answered 410 Gone; disabling it");
            metrics::counter!("webhook_endpoints_disabled_total", "reason" => "gone").increment(1);
            if let Err(e) = self
                .service
                .set_enabled(&ws, &endpoint.id, false, "gone")
                .await
            {
                warn!(endpoint_id = %endpoint.id, error = %e, "could not disable the endpoint");
            }
        }
        Ok(())
    }

    async fn record(&self, message: &Due, attempt: &Attempt) -> Result<(), ServiceError> {
        let ws = &message.workspace_id;
        let event = NewEvent {
            event_id: derive_event_id(
                ws,
                &format!("attempt:{}/{}", message.message_id, attempt.attempt),
                0,
            ),
            event_type: t::MESSAGE_ATTEMPTED.into(),
            schema_version: 1,
            payload: attempt.encode_to_vec(),
            metadata: switchboard_eventlog::Metadata {
                workspace_id: ws.clone(),
                occurred_at: self.service.now(),
                traceparent: switchboard_runtime::telemetry::current_traceparent()
                    .unwrap_or_default(),
                ..Default::default()
            },
        };
        // The request has gone out: try hard to record it, since an unrecorded attempt is
        // sent again (same webhook-id, but a duplicate all the same). Through a database
        // outage of up to RECORD_PATIENCE the record waits for the database. It is not
        // fenced: the attempt happened, whoever holds the role now, and a successor waits
        // a moment after taking the role over (SETTLE_AFTER_TAKEOVER) for such records to
        // land before it reads what is due. The event id makes a retried append a no-op
        // if an earlier try did commit.
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .service
                .append_to_message_at(
                    ws,
                    &message.message_id,
                    Some(message.stream_version as u64),
                    event.clone(),
                    None,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < RECORD_PATIENCE => {
                    warn!(message_id = %message.message_id, error = %e, retry_in = ?delay, "recording an attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Updates the endpoint's breaker, and disables an endpoint that has failed for
    /// longer than the operator allows.
    async fn track(
        &self,
        endpoint: &Endpoint,
        delivered: bool,
        at: i64,
        throttle_until: Option<i64>,
    ) -> Result<(), ServiceError> {
        {
            let mut breakers = self.breakers.lock().expect("not poisoned");
            let breaker = breakers.entry(endpoint.id.clone()).or_default();
            if let Some(until) = throttle_until {
                breaker.open_until = breaker.open_until.max(until);
            }
            if delivered {
                *breaker = Breaker::default();
            } else {
                breaker.consecutive_failures += 1;
                breaker.probing = false;
                if breaker.consecutive_failures >= self.config.breaker_threshold {
                    breaker.open_until = at + self.config.breaker_cooldown.as_micros() as i64;
                }
            }
        }
        if delivered {
            return Ok(());
        }
        let failing_since = self
            .service
            .store()
            .live_endpoints(&endpoint.workspace_id)
            .await?
            .into_iter()
            .find(|e| e.endpoint_id == endpoint.id)
            .map(|e| e.failing_since)
            .unwrap_or(0);
        let limit = self.service.settings().disable_after.as_micros() as i64;
        if failing_since != 0 && at - failing_since >= limit {
            warn!(endpoint_id = %endpoint.id, "endpoint has failed for too long; disabling it");
            metrics::counter!("webhook_endpoints_disabled_total", "reason" => "failing")
                .increment(1);
            self.service
                .set_enabled(&endpoint.workspace_id, &endpoint.id, false, "failing")
                .await?;
        }
        Ok(())
    }

    async fn defer(&self, message: &Due, until: i64) -> Result<(), ServiceError> {
        let ws = &message.workspace_id;
        let event = NewEvent {
            event_id: derive_event_id(
                ws,
                &format!(
                    "deferred:{}/{}/{until}",
                    message.message_id, message.attempts
                ),
                0,
            ),
            event_type: t::MESSAGE_DEFERRED.into(),
            schema_version: 1,
            payload: MessageDeferred {
                next_attempt_at: Some(timestamp(until)),
                reason: "the endpoint is paused: its circuit is open after repeated failures, \
                         or it asked us to slow down (429/502/503/504)"
                    .into(),
            }
            .encode_to_vec(),
            metadata: switchboard_eventlog::Metadata {
                workspace_id: ws.clone(),
                occurred_at: self.service.now(),
                ..Default::default()
            },
        };
        Ok(self
            .service
            .append_to_message_at(
                ws,
                &message.message_id,
                Some(message.stream_version as u64),
                event,
                self.fence().as_ref(),
            )
            .await?)
    }

    async fn give_up(&self, message: &Due, reason: &str) -> Result<(), ServiceError> {
        let ws = &message.workspace_id;
        let event = NewEvent {
            event_id: derive_event_id(
                ws,
                &format!("failed:{}/{}", message.message_id, message.attempts),
                0,
            ),
            event_type: t::MESSAGE_FAILED.into(),
            schema_version: 1,
            payload: MessageFailed {
                reason: reason.to_owned(),
            }
            .encode_to_vec(),
            metadata: switchboard_eventlog::Metadata {
                workspace_id: ws.clone(),
                occurred_at: self.service.now(),
                ..Default::default()
            },
        };
        Ok(self
            .service
            .append_to_message_at(
                ws,
                &message.message_id,
                Some(message.stream_version as u64),
                event,
                self.fence().as_ref(),
            )
            .await?)
    }
}

/// What the domain judges a transport failure by, read off the HTTP client's error: the
/// guard's refusal anywhere in its causes, the client's own timeout flag, and the text of
/// the error and its causes.
fn transport_failure(error: &reqwest::Error) -> domain::TransportFailure {
    let mut causes = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        causes.push_str(&e.to_string().to_ascii_lowercase());
        causes.push(' ');
        current = e.source();
    }
    domain::TransportFailure {
        blocked: switchboard_outbound::blocked_cause(error).is_some(),
        timed_out: error.is_timeout(),
        causes,
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate_seconds(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_seconds(value: &str) -> Option<u64> {
    httpdate::parse_http_date(value)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        assert_eq!(
            httpdate_seconds("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(httpdate_seconds("tomorrow"), None);
    }
}
