//! The command handler: load the conversation, decide, append (domain and public events in
//! one append), and retry a bounded number of times when another writer wins the race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchboard_eventlog::{
    self as eventlog, Aggregate, CommandError, Decision, EventLog, EventLogError, Executed, Loaded,
    Metadata, NewEvent, RecordedEvent, SnapshotPolicy, StreamRef, now_micros,
};
use switchboard_proto::events::v1::{
    Conversation, ConversationCreatedEvent, ConversationUpdatedEvent, Message, MessageCreatedEvent,
};

use prost::Message as _;
use uuid::Uuid;

use crate::domain::{self, Command, DomainError, DomainEvent, State, event_types};

/// Attempts before a command that keeps losing the race gives up with `ABORTED`.
const MAX_ATTEMPTS: u32 = 5;
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
    #[error(
        "{code}: the conversation is changing too fast; retry",
        code = switchboard_runtime::codes::CONV_CONTENDED.id
    )]
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
    /// Who the call acts for (`api_key:<id>`), recorded in the events; empty for a
    /// service acting for itself.
    pub actor: String,
    /// The conversation version the change is for; 0 for any.
    pub expected_version: u64,
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

    /// The conversation aggregate, over this service's cache of recent states.
    fn aggregate(&self) -> Conversations<'_> {
        Conversations { cache: &self.cache }
    }

    /// Folds the conversation's stream, from its cached state or its snapshot when one is
    /// valid.
    pub async fn load(
        &self,
        workspace_id: &str,
        conversation_id: &str,
    ) -> Result<(Option<State>, u64), ServiceError> {
        let stream = stream_of(workspace_id, conversation_id);
        let loaded = self.aggregate().load(&self.log, &stream).await?;
        Ok((loaded.state, loaded.version))
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
        let executed = eventlog::Command::new(&self.log, &stream)
            .attempts(MAX_ATTEMPTS)
            .request(&ctx.workspace_id, &ctx.request_id)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&self.aggregate(), |loaded| {
                decide(ctx, &command, loaded, now_micros())
            })
            .await;
        match executed {
            Ok(Executed::Appended { state, output, .. }) => {
                metrics::counter!("conversations_commands_total").increment(1);
                Ok(Outcome {
                    conversation: state.ok_or(DomainError::NotFound)?.conversation,
                    message: output,
                })
            }
            Ok(Executed::Unchanged { state, .. }) => Ok(Outcome {
                conversation: state.ok_or(DomainError::NotFound)?.conversation,
                message: None,
            }),
            Ok(Executed::Duplicate { events, .. }) => same_request(&command, &stream, &events)
                .then(|| outcome_from_recorded(&events))
                .flatten()
                .ok_or_else(request_id_reused),
            // A retried request whose original already succeeded may be refused by the new
            // state (a second Start, say): answer with the original.
            Err(CommandError::Rejected { error, original }) => match original {
                Some(own) if !same_request(&command, &stream, &own) => Err(request_id_reused()),
                Some(own) => outcome_from_recorded(&own).ok_or_else(|| error.into()),
                None => Err(error.into()),
            },
            Err(CommandError::Contended { .. }) => Err(ServiceError::Contended),
            Err(CommandError::RequestReused) => Err(request_id_reused()),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
    }
}

/// Conversations for the command skeleton: the domain's fold, a snapshot every
/// [`SNAPSHOT_EVERY`] events, and the service's cache of recent states.
struct Conversations<'a> {
    cache: &'a StateCache,
}

impl Aggregate for Conversations<'_> {
    type State = Option<State>;
    const READ_PAGE: usize = 1000;

    fn apply(&self, state: &mut Option<State>, event: &RecordedEvent) -> Result<(), EventLogError> {
        if let Some(domain_event) = DomainEvent::decode(event)? {
            domain::apply(state, &domain_event, event.metadata.occurred_at);
        }
        Ok(())
    }

    fn at_version(&self, state: &mut Option<State>, version: u64) {
        if let Some(state) = state {
            state.conversation.version = version;
        }
    }

    fn snapshots(&self) -> Option<SnapshotPolicy> {
        Some(SnapshotPolicy {
            state_version: domain::STATE_VERSION,
            every: SNAPSHOT_EVERY,
        })
    }

    fn to_snapshot(&self, state: &Option<State>) -> Option<Vec<u8>> {
        state.as_ref().map(State::to_snapshot)
    }

    fn restore_snapshot(&self, bytes: &[u8]) -> Option<Option<State>> {
        State::from_snapshot(bytes).map(Some)
    }

    /// A cached state has no snapshot debt: the load counts from it as if it were a
    /// snapshot at its version.
    fn cached(&self, stream: &StreamRef) -> Option<Loaded<Option<State>>> {
        self.cache
            .get(stream)
            .map(|(state, version)| Loaded::new(Some(state), version))
    }

    fn remember(&self, stream: &StreamRef, loaded: &Loaded<Option<State>>) {
        if let Some(state) = &loaded.state {
            self.cache
                .put(stream.clone(), state.clone(), loaded.version);
        }
    }
}

/// Decides `command` on the loaded conversation at `now`: the domain events and, in the
/// same append, the public integration events of the change; beside them the message the
/// command added. Pure: the time comes in as `now`, and the events' ids are the command
/// skeleton's to derive from the request id.
fn decide(
    ctx: &RequestContext,
    command: &Command,
    loaded: &Loaded<Option<State>>,
    now: i64,
) -> Result<Decision<Option<Message>>, DomainError> {
    let state = &loaded.state;
    if ctx.expected_version != 0 && state.is_some() && loaded.version != ctx.expected_version {
        return Err(DomainError::StaleVersion {
            expected: ctx.expected_version,
            actual: loaded.version,
        });
    }
    let decided = domain::decide(state.as_ref(), command, now)?;
    if decided.is_empty() {
        return Ok(Decision::nothing(None));
    }
    let mut after = state.clone();
    for event in &decided {
        domain::apply(&mut after, event, now);
    }
    let Some(mut after) = after else {
        return Err(DomainError::NotFound);
    };
    let public_count = domain::integration_events(
        state.as_ref().map(|s| &s.conversation),
        &after.conversation,
        &decided,
    )
    .len();
    after.conversation.version = loaded.version + (decided.len() + public_count) as u64;
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
        actor: ctx.actor.clone(),
        // Set by the command from the request's digest.
        request_hash: String::new(),
    };
    let events: Vec<NewEvent> = decided
        .iter()
        .map(|e| (e.event_type(), e.encode()))
        .chain(public.into_iter().map(|p| (p.event_type, p.payload)))
        .map(|(event_type, payload)| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload,
            metadata: metadata.clone(),
        })
        .collect();
    Ok(Decision::new(events, message))
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
        switchboard_runtime::codes::CONV_REQUEST_ID_REUSED
            .message("this request id was already used for another request"),
    )
    .into()
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
