//! The command handler: load the conversation, decide, append (domain and public events in
//! one append), and retry a bounded number of times when another writer wins the race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchboard_eventlog::{
    EventLog, EventLogError, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamRef,
    derive_event_id,
};
use switchboard_proto::events::v1::{
    Conversation, ConversationCreatedEvent, ConversationUpdatedEvent, Message, MessageCreatedEvent,
};

use prost::Message as _;
use uuid::Uuid;

use crate::domain::{self, Command, DomainError, DomainEvent, State, event_types};

/// Attempts before a command that keeps losing the race gives up with `ABORTED`.
const MAX_ATTEMPTS: usize = 5;
/// Events after which a new snapshot is written, so loads stay short on long streams.
const SNAPSHOT_EVERY: u64 = 100;

/// The stream type of every conversation.
pub const STREAM_TYPE: &str = "conversation";

/// Why a command or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Writers kept racing on the stream.
    #[error("SB-CONV-0005: the conversation is changing too fast; retry")]
    Contended,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// Who asked, for event metadata and idempotency.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub workspace_id: String,
    /// The caller's idempotency key; empty when the request is not to be deduplicated.
    pub request_id: String,
    pub traceparent: String,
}

/// The result of a command: the conversation as it now is, and the message it added.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub conversation: Conversation,
    pub message: Option<Message>,
}

/// Runs conversation commands against the log.
#[derive(Clone)]
pub struct ConversationService {
    log: EventLog,
    cache: Arc<StateCache>,
}

/// Recently used conversation states with the stream version they are at, so a command
/// reads only the events appended since (usually none) instead of the snapshot and the
/// tail of the stream. Entries may be stale (another process appended); the read after
/// the cached version brings them up to date, and the append's version check catches
/// any race.
struct StateCache {
    inner: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    entries: HashMap<StreamRef, (State, u64, usize)>,
    /// Encoded size of every cached state, the bound that matters for memory.
    bytes: usize,
}

impl StateCache {
    /// Memory the cache may hold, measured as encoded state sizes.
    const MAX_BYTES: usize = 64 * 1024 * 1024;

    fn get(&self, stream: &StreamRef) -> Option<(State, u64)> {
        let inner = self.inner.lock().ok()?;
        inner
            .entries
            .get(stream)
            .map(|(state, version, _)| (state.clone(), *version))
    }

    fn put(&self, stream: StreamRef, state: State, version: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner
            .entries
            .get(&stream)
            .is_some_and(|(_, cached, _)| *cached >= version)
        {
            return;
        }
        let size = state.conversation.encoded_len()
            + state
                .interactive
                .values()
                .map(|m| m.encoded_len())
                .sum::<usize>()
            + 64;
        if let Some((_, _, old)) = inner.entries.remove(&stream) {
            inner.bytes -= old;
        }
        // Evict arbitrary entries until the new one fits: cheap, and a miss only costs a
        // snapshot read.
        while inner.bytes + size > Self::MAX_BYTES {
            let Some(victim) = inner.entries.keys().next().cloned() else {
                break;
            };
            if let Some((_, _, freed)) = inner.entries.remove(&victim) {
                inner.bytes -= freed;
            }
        }
        inner.bytes += size;
        inner.entries.insert(stream, (state, version, size));
    }
}

/// The stream of one conversation: the workspace is part of the id, so a conversation of
/// another workspace is simply not found.
pub fn stream_of(workspace_id: &str, conversation_id: &str) -> StreamRef {
    StreamRef::new(STREAM_TYPE, format!("{workspace_id}/{conversation_id}"))
}

/// A new prefixed, time-ordered id such as `conv_01jd…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

impl ConversationService {
    pub fn new(log: EventLog) -> Self {
        Self {
            log,
            cache: Arc::new(StateCache {
                inner: Mutex::new(CacheEntries::default()),
            }),
        }
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Folds the conversation's stream, from its snapshot when one is valid.
    pub async fn load(
        &self,
        workspace_id: &str,
        conversation_id: &str,
    ) -> Result<(Option<State>, u64), ServiceError> {
        let stream = stream_of(workspace_id, conversation_id);
        let (mut state, mut version, from) = match self.cache.get(&stream) {
            // A cached state has no snapshot debt: count from the last snapshot we know of
            // as if it were at this version.
            Some((state, version)) => (Some(state), version, version),
            None => match self
                .log
                .load_snapshot(&stream, domain::STATE_VERSION)
                .await?
            {
                Some(snapshot) => match State::from_snapshot(&snapshot.state) {
                    Some(state) => (
                        Some(state),
                        snapshot.stream_version,
                        snapshot.stream_version,
                    ),
                    None => (None, 0, 0),
                },
                None => (None, 0, 0),
            },
        };
        loop {
            let events = self.log.read_stream(&stream, version, 1000).await?;
            let Some(last) = events.last() else { break };
            version = last.stream_version;
            for event in &events {
                if let Some(domain_event) = DomainEvent::decode(event)? {
                    domain::apply(&mut state, &domain_event, event.metadata.occurred_at);
                }
            }
            if events.len() < 1000 {
                break;
            }
        }
        if let Some(state) = state.as_mut() {
            state.conversation.version = version;
            self.cache.put(stream.clone(), state.clone(), version);
            if version - from >= SNAPSHOT_EVERY {
                // Best effort: a failed snapshot only makes the next load longer.
                if let Err(e) = self
                    .log
                    .save_snapshot(
                        &stream,
                        version,
                        domain::STATE_VERSION,
                        &state.to_snapshot(),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "could not save conversation snapshot");
                }
            }
        }
        Ok((state, version))
    }

    /// Decides and appends `command` on the conversation, retrying on conflicts. A repeated
    /// request id returns the original outcome without appending.
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        conversation_id: &str,
        command: Command,
    ) -> Result<Outcome, ServiceError> {
        let stream = stream_of(&ctx.workspace_id, conversation_id);
        for _ in 0..MAX_ATTEMPTS {
            let (state, version) = self.load(&ctx.workspace_id, conversation_id).await?;
            let now = domain::now();
            let decided = match domain::decide(state.as_ref(), &command, now) {
                Ok(events) => events,
                Err(e) => {
                    // A retried request whose original already succeeded may be refused by
                    // the new state (a second Start, say): answer with the original.
                    if let Some(original) = self.original_outcome(ctx, &command, &stream).await? {
                        return Ok(original);
                    }
                    return Err(e.into());
                }
            };
            if decided.is_empty() {
                let state = state.ok_or(DomainError::NotFound)?;
                return Ok(Outcome {
                    conversation: state.conversation,
                    message: None,
                });
            }
            let mut after = state.clone();
            for event in &decided {
                domain::apply(&mut after, event, now);
            }
            let Some(mut after) = after else {
                return Err(DomainError::NotFound.into());
            };
            let public_count = domain::integration_events(
                state.as_ref().map(|s| &s.conversation),
                &after.conversation,
                &decided,
            )
            .len();
            after.conversation.version = version + (decided.len() + public_count) as u64;
            let public = domain::integration_events(
                state.as_ref().map(|s| &s.conversation),
                &after.conversation,
                &decided,
            );
            let message = decided.iter().find_map(|e| match e {
                DomainEvent::MessageAdded(m) => m.message.clone(),
                _ => None,
            });
            let metadata = Metadata {
                workspace_id: ctx.workspace_id.clone(),
                correlation_id: ctx.request_id.clone(),
                causation_id: String::new(),
                traceparent: ctx.traceparent.clone(),
                tracestate: String::new(),
                occurred_at: now,
            };
            let events: Vec<NewEvent> = decided
                .iter()
                .map(|e| (e.event_type(), e.encode()))
                .chain(public.into_iter().map(|p| (p.event_type, p.payload)))
                .enumerate()
                .map(|(i, (event_type, payload))| NewEvent {
                    event_id: event_id(ctx, i),
                    event_type: event_type.to_owned(),
                    schema_version: 1,
                    payload,
                    metadata: metadata.clone(),
                })
                .collect();
            let expected = match version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            match self.log.append(&stream, expected, events).await {
                Ok(appended) if appended.duplicate => {
                    return same_request(&command, &stream, &appended.events)
                        .then(|| outcome_from_recorded(&appended.events))
                        .flatten()
                        .ok_or_else(request_id_reused);
                }
                Ok(_) => {
                    metrics::counter!("conversations_commands_total").increment(1);
                    self.cache
                        .put(stream.clone(), after.clone(), after.conversation.version);
                    return Ok(Outcome {
                        conversation: after.conversation,
                        message,
                    });
                }
                Err(EventLogError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contended)
    }

    /// The outcome recorded for this request id, if it was already executed.
    async fn original_outcome(
        &self,
        ctx: &RequestContext,
        command: &Command,
        stream: &StreamRef,
    ) -> Result<Option<Outcome>, ServiceError> {
        if ctx.request_id.is_empty() {
            return Ok(None);
        }
        let first = derive_event_id(&ctx.workspace_id, &ctx.request_id, 0);
        let Some(event) = self.log.find_event(first).await? else {
            return Ok(None);
        };
        let events = self
            .log
            .read_stream(&event.stream, event.stream_version - 1, 16)
            .await?;
        let own: Vec<RecordedEvent> = events
            .into_iter()
            .take_while(|e| e.metadata.correlation_id == ctx.request_id)
            .collect();
        if !same_request(command, stream, &own) {
            return Err(request_id_reused());
        }
        Ok(outcome_from_recorded(&own))
    }
}

/// Whether `recorded`, found under this request's event ids, was stored by the same kind
/// of command on the same conversation: a request id reused for something else must not
/// answer with another request's result.
fn same_request(command: &Command, stream: &StreamRef, recorded: &[RecordedEvent]) -> bool {
    let Some(first) = recorded.first() else {
        return false;
    };
    // A retried start picks a new conversation id, so only its kind can be compared.
    let same_stream = matches!(command, Command::Start { .. }) || first.stream == *stream;
    same_stream && first.event_type == command.event_type()
}

fn request_id_reused() -> ServiceError {
    DomainError::FailedPrecondition(
        "SB-CONV-0006: this request id was already used for another request".into(),
    )
    .into()
}

fn event_id(ctx: &RequestContext, index: usize) -> Uuid {
    if ctx.request_id.is_empty() {
        Uuid::now_v7()
    } else {
        derive_event_id(&ctx.workspace_id, &ctx.request_id, index)
    }
}

/// Rebuilds a command's outcome from the public events it stored.
fn outcome_from_recorded(events: &[RecordedEvent]) -> Option<Outcome> {
    let mut conversation = None;
    let mut message = None;
    for event in events {
        match event.event_type.as_str() {
            event_types::CREATED => {
                conversation = event
                    .decode::<ConversationCreatedEvent>()
                    .ok()?
                    .conversation;
            }
            event_types::UPDATED => {
                conversation = event
                    .decode::<ConversationUpdatedEvent>()
                    .ok()?
                    .conversation;
            }
            event_types::MESSAGE_CREATED => {
                message = event.decode::<MessageCreatedEvent>().ok()?.message;
            }
            _ => {}
        }
    }
    Some(Outcome {
        conversation: conversation?,
        message,
    })
}
