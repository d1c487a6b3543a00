//! The one command skeleton every service's command handlers use: load the aggregate
//! (snapshot, or a cached state, plus the tail of its stream), decide with a pure function,
//! append at the version that was read, and go round again when another writer won the
//! race, a bounded number of times.
//!
//! Retried requests append nothing: a command given a request key ([`Command::request`])
//! has its events' ids derived from the key ([`derive_event_id`]), so the log recognises
//! a repeat and answers with what the original stored ([`Executed::Duplicate`]). A repeat
//! that the current state refuses (a second start, say) is refused with the original's
//! events beside the refusal ([`CommandError::Rejected`]), so the caller can answer with
//! the original result instead.
//!
//! What differs between commands is chosen by the caller: how the state is loaded
//! ([`Aggregate::load`]: stream fold by default, snapshots, a cache, or a read model), the
//! bound on attempts, whether the first attempt starts from a state already in hand
//! ([`Command::starting_from`]), and whether the append joins a subscription handler's
//! transaction ([`Command::run_in`]). `decide` itself is the caller's pure function: it
//! gets the state and its version, and the clock and ids it needs come from the caller.

use std::future::Future;

use crate::{
    Appended, EventLog, EventLogError, ExpectedVersion, Fence, NewEvent, RecordedEvent, StreamRef,
    Tx, derive_event_id,
};

/// Attempts a command makes before giving up when every one loses the race.
pub const DEFAULT_ATTEMPTS: u32 = 5;

/// Events of a repeated request read back at most: more than any one command appends.
const ORIGINAL_EVENTS_MAX: usize = 64;

/// When an aggregate's state is worth storing as a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// The version of the state's encoding: snapshots written by another are discarded.
    pub state_version: u32,
    /// Events folded since the state the load started from before a new snapshot is saved.
    pub every: u64,
}

/// A state and the stream version it is at (0: the stream has no events).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded<S> {
    pub state: S,
    pub version: u64,
}

impl<S> Loaded<S> {
    pub fn new(state: S, version: u64) -> Self {
        Self { state, version }
    }

    /// The version an append decided on this state expects the stream to be at.
    pub fn expected(&self) -> ExpectedVersion {
        match self.version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        }
    }
}

/// How the events of one stream fold into the state its commands decide on.
///
/// Only [`Aggregate::apply`] is required: loading then reads the whole stream. An aggregate
/// can start from a snapshot ([`Aggregate::snapshots`]) or a cached state
/// ([`Aggregate::cached`]) and read only the tail, or load from elsewhere altogether by
/// overriding [`Aggregate::load`] (a read model that already knows the version).
pub trait Aggregate: Send + Sync {
    /// The state before the first event is `Default`.
    type State: Default + Send + Sync;

    /// Events read per page while folding the stream.
    const READ_PAGE: usize = 500;

    /// Folds one stored event into the state. Pure: no clock, no I/O. Events this
    /// aggregate does not know are left out, not refused.
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent) -> Result<(), EventLogError>;

    /// Called once the state has folded everything up to `version`, for states that carry
    /// their own version.
    fn at_version(&self, _state: &mut Self::State, _version: u64) {}

    /// Whether and how often to snapshot the state. `None` (the default): never.
    fn snapshots(&self) -> Option<SnapshotPolicy> {
        None
    }

    /// The state's snapshot encoding; `None` when there is nothing worth storing.
    fn to_snapshot(&self, _state: &Self::State) -> Option<Vec<u8>> {
        None
    }

    /// The state of a stored snapshot; `None` when it cannot be read (the stream is then
    /// folded from the start).
    fn restore_snapshot(&self, _bytes: &[u8]) -> Option<Self::State> {
        None
    }

    /// A state of the stream this process already holds, possibly stale: the load reads
    /// the events after it, and the append's version check catches any race.
    fn cached(&self, _stream: &StreamRef) -> Option<Loaded<Self::State>> {
        None
    }

    /// Told every state loaded or appended, to cache it.
    fn remember(&self, _stream: &StreamRef, _loaded: &Loaded<Self::State>) {}

    /// Loads the stream's current state. The default is [`load_stream`].
    fn load(
        &self,
        log: &EventLog,
        stream: &StreamRef,
    ) -> impl Future<Output = Result<Loaded<Self::State>, EventLogError>> + Send {
        load_stream(self, log, stream)
    }
}

/// An aggregate whose commands need only the stream's version: appends whose events do not
/// depend on what the stream holds (a message's next record, a link's latest value).
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionOnly;

impl Aggregate for VersionOnly {
    type State = ();

    fn apply(&self, _state: &mut (), _event: &RecordedEvent) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// Folds `stream` for `aggregate`: from its cached state, else its snapshot, else the
/// start; then every event after it. Remembers the result ([`Aggregate::remember`]) and,
/// when enough events were folded, saves a snapshot (best effort: a failed save only makes
/// the next load longer).
pub async fn load_stream<A: Aggregate + ?Sized>(
    aggregate: &A,
    log: &EventLog,
    stream: &StreamRef,
) -> Result<Loaded<A::State>, EventLogError> {
    let policy = aggregate.snapshots();
    let base = match aggregate.cached(stream) {
        Some(cached) => Some(cached),
        None => match policy {
            Some(policy) => log
                .load_snapshot(stream, policy.state_version)
                .await?
                .and_then(|snapshot| {
                    aggregate
                        .restore_snapshot(&snapshot.state)
                        .map(|state| Loaded::new(state, snapshot.stream_version))
                }),
            None => None,
        },
    };
    let Loaded {
        mut state,
        mut version,
    } = base.unwrap_or_default();
    let from = version;
    loop {
        let events = log.read_stream(stream, version, A::READ_PAGE).await?;
        let Some(last) = events.last() else { break };
        version = last.stream_version;
        for event in &events {
            aggregate.apply(&mut state, event)?;
        }
        if events.len() < A::READ_PAGE {
            break;
        }
    }
    aggregate.at_version(&mut state, version);
    let loaded = Loaded::new(state, version);
    aggregate.remember(stream, &loaded);
    if let Some(policy) = policy
        && version - from >= policy.every
        && let Some(bytes) = aggregate.to_snapshot(&loaded.state)
        && let Err(e) = log
            .save_snapshot(stream, version, policy.state_version, &bytes)
            .await
    {
        tracing::warn!(error = %e, stream = %stream, "could not save a snapshot");
    }
    Ok(loaded)
}

/// What `decide` wants appended, and what the caller wants back from it (the message a
/// command added, the definition it stored, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<T = ()> {
    /// The events to append, in order. Empty: the command changes nothing.
    pub events: Vec<NewEvent>,
    pub output: T,
}

impl<T> Decision<T> {
    pub fn new(events: Vec<NewEvent>, output: T) -> Self {
        Self { events, output }
    }

    /// A decision to append nothing.
    pub fn nothing(output: T) -> Self {
        Self::new(Vec::new(), output)
    }
}

impl Decision<()> {
    /// A decision to append `events`, with nothing else to report.
    pub fn events(events: Vec<NewEvent>) -> Self {
        Self::new(events, ())
    }
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed<S, T> {
    /// The decided events were appended. `state` is the loaded state with the stored events
    /// folded in, at `version`, the stream's version after the append.
    Appended {
        state: S,
        version: u64,
        events: Vec<RecordedEvent>,
        output: T,
    },
    /// `decide` had nothing to append; `state` is as loaded, at `version`.
    Unchanged { state: S, version: u64, output: T },
    /// The request had already been executed: nothing was appended, and `events` are what
    /// the original stored, possibly on another stream. Callers check that it was the same
    /// request before answering with its result. `output` is what `decide` said this time.
    Duplicate {
        events: Vec<RecordedEvent>,
        output: T,
    },
}

impl<S, T> Executed<S, T> {
    /// The stream version the command left: after the append, as loaded, or after the
    /// original's events.
    pub fn version(&self) -> u64 {
        match self {
            Self::Appended { version, .. } | Self::Unchanged { version, .. } => *version,
            Self::Duplicate { events, .. } => events.last().map_or(0, |e| e.stream_version),
        }
    }

    /// What `decide` said, however the command ended.
    pub fn into_output(self) -> T {
        match self {
            Self::Appended { output, .. }
            | Self::Unchanged { output, .. }
            | Self::Duplicate { output, .. } => output,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// `decide` refused the command. `original`: when the request's key had already stored
    /// events (a retried request the new state refuses), those events, oldest first.
    #[error("{error}")]
    Rejected {
        error: E,
        original: Option<Vec<RecordedEvent>>,
    },
    /// Every attempt lost the race to another writer. Services answer `ABORTED`: the
    /// caller may retry.
    #[error(
        "{stream} kept changing: {attempts} attempts lost the race (last expected {expected}, \
         found {actual})"
    )]
    Contended {
        stream: StreamRef,
        attempts: u32,
        /// The version the last attempt expected.
        expected: ExpectedVersion,
        /// The version the stream was at instead.
        actual: u64,
    },
    /// The request id was already used by a request with another body: answering with
    /// that request's result would be wrong, and so would doing this one.
    #[error("the request id was already used for a different request")]
    RequestReused,
    /// The log failed (not a race).
    #[error(transparent)]
    Log(#[from] EventLogError),
}

impl<E> CommandError<E> {
    /// The error in the log's terms, for callers that report [`EventLogError`]: a command
    /// that gave up is the [`EventLogError::Conflict`] its last attempt met. A refusal is
    /// not a log error and comes back as `Err`.
    pub fn into_log_error(self) -> Result<EventLogError, E> {
        match self {
            Self::Rejected { error, .. } => Err(error),
            Self::Contended {
                stream,
                expected,
                actual,
                ..
            } => Ok(EventLogError::Conflict {
                stream: stream.to_string(),
                expected: expected.to_string(),
                actual,
            }),
            Self::RequestReused => Ok(EventLogError::Invalid {
                field: "request_id",
                reason: "already used for a different request".into(),
            }),
            Self::Log(e) => Ok(e),
        }
    }
}

/// Refuses events found under this request's ids that a request with another body stored.
/// Events stored without a digest (before digests were kept, or by a caller that gives
/// none) are not compared.
fn refuse_reuse<E>(fingerprint: &str, original: &[RecordedEvent]) -> Result<(), CommandError<E>> {
    let stored = original
        .first()
        .map_or("", |e| e.metadata.request_hash.as_str());
    if fingerprint.is_empty() || stored.is_empty() || stored == fingerprint {
        return Ok(());
    }
    Err(CommandError::RequestReused)
}

/// The idempotency key of a request: its events' ids are derived from it.
#[derive(Debug, Clone)]
struct RequestKey {
    workspace_id: String,
    request_id: String,
}

impl RequestKey {
    fn event_id(&self, index: usize) -> uuid::Uuid {
        derive_event_id(&self.workspace_id, &self.request_id, index)
    }
}

/// One command on one stream: load, decide, append at the version read, retry on a race.
///
/// ```text
/// let executed = Command::new(&log, &stream)
///     .request(workspace_id, request_id)
///     .run(&ConversationAggregate, |loaded| decide(&loaded.state, &command, now))
///     .await?;
/// ```
#[must_use = "a command does nothing until it is run"]
pub struct Command<'a, S> {
    log: &'a EventLog,
    stream: &'a StreamRef,
    attempts: u32,
    key: Option<RequestKey>,
    start: Option<Loaded<S>>,
    fence: Option<&'a Fence>,
    /// Digest of the request's body, kept with its events and compared on a repeat.
    fingerprint: String,
}

impl<'a, S> Command<'a, S> {
    /// A command on `stream` with [`DEFAULT_ATTEMPTS`] attempts and no request key.
    pub fn new(log: &'a EventLog, stream: &'a StreamRef) -> Self {
        Self {
            log,
            stream,
            attempts: DEFAULT_ATTEMPTS,
            key: None,
            start: None,
            fence: None,
            fingerprint: String::new(),
        }
    }

    /// The digest of the request's body (empty: not compared). Stored in the metadata of
    /// the events; a repeated request (its events found under their ids, derived from its
    /// request id) with another digest is [`CommandError::RequestReused`] instead of the
    /// original's result (the Stripe rule).
    pub fn fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = fingerprint.to_owned();
        self
    }

    /// Appends only while `fence`'s lease is held ([`EventLog::append_fenced`]): the write
    /// of a role's current holder. Not for [`Command::run_in`], whose transaction is the
    /// handler's.
    pub fn fenced(mut self, fence: Option<&'a Fence>) -> Self {
        self.fence = fence;
        self
    }

    /// Gives up after `attempts` lost races (at least 1). 1: the first conflict is the
    /// answer, for commands whose caller stated the version it expects.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Makes the command idempotent by `request_id` (empty: not deduplicated): the `i`-th
    /// decided event gets the id `derive_event_id(workspace_id, request_id, i)`, replacing
    /// whatever id `decide` gave it, so a repeated request appends nothing.
    pub fn request(mut self, workspace_id: &str, request_id: &str) -> Self {
        self.key = (!request_id.is_empty()).then(|| RequestKey {
            workspace_id: workspace_id.to_owned(),
            request_id: request_id.to_owned(),
        });
        self
    }

    /// Decides the first attempt on `loaded` (a state the caller has just read) instead of
    /// loading; a lost race loads afresh.
    pub fn starting_from(mut self, loaded: Loaded<S>) -> Self {
        self.start = Some(loaded);
        self
    }

    /// Runs the command: appends through the log on its own.
    pub async fn run<A, T, E, D>(
        self,
        aggregate: &A,
        decide: D,
    ) -> Result<Executed<S, T>, CommandError<E>>
    where
        A: Aggregate<State = S>,
        D: FnMut(&Loaded<S>) -> Result<Decision<T>, E>,
    {
        self.run_with(None, aggregate, decide).await
    }

    /// Runs the command appending inside `tx`, a subscription handler's transaction, so the
    /// events commit with the handler's other effects. Loads still read committed state.
    pub async fn run_in<A, T, E, D>(
        self,
        tx: &mut Tx<'_>,
        aggregate: &A,
        decide: D,
    ) -> Result<Executed<S, T>, CommandError<E>>
    where
        A: Aggregate<State = S>,
        D: FnMut(&Loaded<S>) -> Result<Decision<T>, E>,
    {
        self.run_with(Some(tx), aggregate, decide).await
    }

    async fn run_with<A, T, E, D>(
        self,
        mut tx: Option<&mut Tx<'_>>,
        aggregate: &A,
        mut decide: D,
    ) -> Result<Executed<S, T>, CommandError<E>>
    where
        A: Aggregate<State = S>,
        D: FnMut(&Loaded<S>) -> Result<Decision<T>, E>,
    {
        let Command {
            log,
            stream,
            attempts,
            key,
            mut start,
            fence,
            fingerprint,
        } = self;
        let mut lost = (ExpectedVersion::NoStream, 0);
        for _ in 0..attempts {
            let mut loaded = match start.take() {
                Some(loaded) => loaded,
                None => aggregate.load(log, stream).await?,
            };
            let Decision { mut events, output } = match decide(&loaded) {
                Ok(decision) => decision,
                Err(error) => {
                    let original = match &key {
                        Some(key) => original_events(log, key).await?,
                        None => None,
                    };
                    if let Some(original) = &original {
                        refuse_reuse(&fingerprint, original)?;
                    }
                    return Err(CommandError::Rejected { error, original });
                }
            };
            if events.is_empty() {
                // A repeat whose new body changes nothing is still another request.
                if let Some(key) = &key
                    && !fingerprint.is_empty()
                    && let Some(original) = original_events(log, key).await?
                {
                    refuse_reuse(&fingerprint, &original)?;
                }
                return Ok(Executed::Unchanged {
                    state: loaded.state,
                    version: loaded.version,
                    output,
                });
            }
            for (index, event) in events.iter_mut().enumerate() {
                if let Some(key) = &key {
                    event.event_id = key.event_id(index);
                }
                event.metadata.request_hash.clone_from(&fingerprint);
            }
            let expected = loaded.expected();
            let appended = match tx.as_deref_mut() {
                Some(tx) => log.append_in(tx, stream, expected, events).await,
                None => match fence {
                    Some(fence) => log.append_fenced(stream, expected, events, fence).await,
                    None => log.append(stream, expected, events).await,
                },
            };
            match appended {
                Ok(Appended {
                    events,
                    duplicate: true,
                }) => {
                    refuse_reuse(&fingerprint, &events)?;
                    return Ok(Executed::Duplicate { events, output });
                }
                Ok(Appended { events, .. }) => {
                    for event in &events {
                        aggregate.apply(&mut loaded.state, event)?;
                    }
                    loaded.version = events.last().map_or(loaded.version, |e| e.stream_version);
                    aggregate.at_version(&mut loaded.state, loaded.version);
                    aggregate.remember(stream, &loaded);
                    return Ok(Executed::Appended {
                        state: loaded.state,
                        version: loaded.version,
                        events,
                        output,
                    });
                }
                Err(EventLogError::Conflict { actual, .. }) => {
                    metrics::counter!("eventlog_command_conflicts_total").increment(1);
                    lost = (expected, actual);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contended {
            stream: stream.clone(),
            attempts,
            expected: lost.0,
            actual: lost.1,
        })
    }
}

/// The events a request with `key` stored, if it was executed before: the one with the
/// key's first id and those the same append stored after it.
async fn original_events(
    log: &EventLog,
    key: &RequestKey,
) -> Result<Option<Vec<RecordedEvent>>, EventLogError> {
    let Some(first) = log.find_event(key.event_id(0)).await? else {
        return Ok(None);
    };
    let following = log
        .read_stream(
            &first.stream,
            first.stream_version.saturating_sub(1),
            ORIGINAL_EVENTS_MAX,
        )
        .await?;
    let own: Vec<RecordedEvent> = following
        .into_iter()
        .enumerate()
        .take_while(|(index, event)| event.event_id == key.event_id(*index))
        .map(|(_, event)| event)
        .collect();
    Ok(Some(if own.is_empty() { vec![first] } else { own }))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use super::*;
    use crate::{Metadata, StoreConfig};

    /// Counts the events of its stream; snapshots every 2 events.
    struct Counter {
        snapshots: bool,
        remembered: Mutex<Vec<u64>>,
    }

    impl Counter {
        fn new(snapshots: bool) -> Self {
            Self {
                snapshots,
                remembered: Mutex::new(Vec::new()),
            }
        }
    }

    impl Aggregate for Counter {
        type State = u64;

        fn apply(&self, state: &mut u64, _event: &RecordedEvent) -> Result<(), EventLogError> {
            *state += 1;
            Ok(())
        }

        fn snapshots(&self) -> Option<SnapshotPolicy> {
            self.snapshots.then_some(SnapshotPolicy {
                state_version: 1,
                every: 2,
            })
        }

        fn to_snapshot(&self, state: &u64) -> Option<Vec<u8>> {
            Some(state.to_be_bytes().to_vec())
        }

        fn restore_snapshot(&self, bytes: &[u8]) -> Option<u64> {
            // Snapshots say 100 more than was folded, so a test can see one was used.
            Some(u64::from_be_bytes(bytes.try_into().ok()?) + 100)
        }

        fn remember(&self, _stream: &StreamRef, loaded: &Loaded<u64>) {
            self.remembered
                .lock()
                .expect("not poisoned")
                .push(loaded.version);
        }
    }

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "counter.counted".into(),
            schema_version: 1,
            payload: n.to_be_bytes().to_vec(),
            metadata: Metadata {
                workspace_id: "ws_1".into(),
                ..Default::default()
            },
        }
    }

    struct TempLog {
        log: EventLog,
        path: std::path::PathBuf,
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    async fn temp_log() -> TempLog {
        let path = std::env::temp_dir().join(format!(
            "switchboard-command-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let log = EventLog::open(&StoreConfig::Sqlite { path: path.clone() })
            .await
            .unwrap();
        log.migrate().await.unwrap();
        TempLog { log, path }
    }

    fn count(n: u64) -> impl FnMut(&Loaded<u64>) -> Result<Decision<u64>, Infallible> {
        move |loaded| Ok(Decision::new((0..n).map(event).collect(), loaded.state))
    }

    #[test]
    fn expected_version_follows_the_loaded_version() {
        assert_eq!(Loaded::new((), 0).expected(), ExpectedVersion::NoStream);
        assert_eq!(Loaded::new((), 7).expected(), ExpectedVersion::Exact(7));
    }

    #[tokio::test]
    async fn appends_and_folds_what_was_stored() {
        let t = temp_log().await;
        let stream = StreamRef::new("counter", "ws_1/c_1");
        let counter = Counter::new(false);
        let executed = Command::new(&t.log, &stream)
            .run(&counter, count(3))
            .await
            .unwrap();
        let Executed::Appended {
            state,
            version,
            events,
            output,
        } = executed
        else {
            panic!("appended");
        };
        assert_eq!((state, version, events.len(), output), (3, 3, 3, 0));
        let executed = Command::new(&t.log, &stream)
            .run(&counter, count(0))
            .await
            .unwrap();
        assert_eq!(
            executed,
            Executed::Unchanged {
                state: 3,
                version: 3,
                output: 3
            }
        );
        // Told of every load (the empty stream's too) and of the append.
        assert_eq!(*counter.remembered.lock().unwrap(), vec![0, 3, 3]);
    }

    #[tokio::test]
    async fn a_lost_race_loads_again_up_to_the_bound() {
        let t = temp_log().await;
        let stream = StreamRef::new("counter", "ws_1/c_1");
        let counter = Counter::new(false);
        Command::new(&t.log, &stream)
            .run(&counter, count(2))
            .await
            .unwrap();

        // A stale state loses the first race, then decides again on the fresh one.
        let mut decided_on = Vec::new();
        let executed = Command::new(&t.log, &stream)
            .starting_from(Loaded::new(0, 0))
            .run(&counter, |loaded: &Loaded<u64>| {
                decided_on.push(loaded.version);
                Ok::<_, Infallible>(Decision::events(vec![event(9)]))
            })
            .await
            .unwrap();
        assert_eq!(decided_on, vec![0, 2]);
        assert_eq!(executed.version(), 3);

        // With one attempt, the first lost race is the answer.
        let err = Command::new(&t.log, &stream)
            .attempts(1)
            .starting_from(Loaded::new(0, 1))
            .run(&counter, count(1))
            .await
            .unwrap_err();
        let CommandError::Contended {
            attempts,
            expected,
            actual,
            ..
        } = &err
        else {
            panic!("contended: {err}");
        };
        assert_eq!(
            (*attempts, *expected, *actual),
            (1, ExpectedVersion::Exact(1), 3)
        );
        assert!(matches!(
            err.into_log_error(),
            Ok(EventLogError::Conflict { actual: 3, .. })
        ));
    }

    #[tokio::test]
    async fn a_request_id_sent_again_with_another_body_is_refused() {
        let t = temp_log().await;
        let stream = StreamRef::new("counter", "ws_1/c_2");
        let counter = Counter::new(false);
        let run = |fingerprint: &'static str| {
            Command::new(&t.log, &stream)
                .request("ws_1", "req_1")
                .fingerprint(fingerprint)
                .run(&counter, count(1))
        };
        let Executed::Appended { events, .. } = run("body-a").await.unwrap() else {
            panic!("appended");
        };
        assert_eq!(events[0].metadata.request_hash, "body-a");
        assert!(matches!(
            run("body-a").await.unwrap(),
            Executed::Duplicate { .. }
        ));
        assert!(matches!(
            run("body-b").await.unwrap_err(),
            CommandError::RequestReused
        ));
        // A caller that gives no digest is not compared.
        assert!(matches!(run("").await.unwrap(), Executed::Duplicate { .. }));
        // Refused by the new state, the original found: compared all the same.
        let refused = Command::new(&t.log, &stream)
            .request("ws_1", "req_1")
            .fingerprint("body-b")
            .run(&counter, |_: &Loaded<u64>| {
                Err::<Decision<()>, _>("already counted")
            })
            .await
            .unwrap_err();
        assert!(matches!(refused, CommandError::RequestReused));
        // A new body that would change nothing is another request all the same.
        let unchanged = Command::new(&t.log, &stream)
            .request("ws_1", "req_1")
            .fingerprint("body-c")
            .run(&counter, |_: &Loaded<u64>| {
                Ok::<_, &str>(Decision::nothing(()))
            })
            .await
            .unwrap_err();
        assert!(matches!(unchanged, CommandError::RequestReused));
        assert_eq!(t.log.read_stream(&stream, 0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_repeated_request_appends_nothing_and_finds_its_original() {
        let t = temp_log().await;
        let stream = StreamRef::new("counter", "ws_1/c_1");
        let counter = Counter::new(false);
        let first = Command::new(&t.log, &stream)
            .request("ws_1", "req_1")
            .run(&counter, count(2))
            .await
            .unwrap();
        let Executed::Appended { events: stored, .. } = first else {
            panic!("appended");
        };
        assert_eq!(stored[1].event_id, derive_event_id("ws_1", "req_1", 1));

        // Decided again on the new state: the same ids, so nothing is appended.
        let again = Command::new(&t.log, &stream)
            .request("ws_1", "req_1")
            .run(&counter, count(2))
            .await
            .unwrap();
        assert_eq!(
            again,
            Executed::Duplicate {
                events: stored.clone(),
                output: 2
            }
        );
        assert_eq!(t.log.read_stream(&stream, 0, 10).await.unwrap().len(), 2);

        // Refused by the new state: the refusal carries what the original stored.
        let refused = Command::new(&t.log, &stream)
            .request("ws_1", "req_1")
            .run(&counter, |_: &Loaded<u64>| {
                Err::<Decision<()>, _>("already counted")
            })
            .await
            .unwrap_err();
        let CommandError::Rejected { error, original } = refused else {
            panic!("rejected");
        };
        assert_eq!(error, "already counted");
        assert_eq!(original, Some(stored));

        // Without a key nothing is looked up.
        let refused = Command::new(&t.log, &stream)
            .run(&counter, |_: &Loaded<u64>| Err::<Decision<()>, _>("no"))
            .await
            .unwrap_err();
        assert!(matches!(
            refused,
            CommandError::Rejected { original: None, .. }
        ));
    }

    #[tokio::test]
    async fn loads_start_from_a_snapshot_once_enough_events_were_folded() {
        let t = temp_log().await;
        let stream = StreamRef::new("counter", "ws_1/c_1");
        let counter = Counter::new(true);
        Command::new(&t.log, &stream)
            .run(&counter, count(1))
            .await
            .unwrap();
        // One event folded since nothing: no snapshot yet.
        assert_eq!(
            load_stream(&counter, &t.log, &stream).await.unwrap().state,
            1
        );
        Command::new(&t.log, &stream)
            .run(&counter, count(1))
            .await
            .unwrap();
        // This load folds two events and saves a snapshot of 2 at version 2 ...
        assert_eq!(
            load_stream(&counter, &t.log, &stream).await.unwrap().state,
            2
        );
        // ... which the next load starts from (it says 102).
        let loaded = load_stream(&counter, &t.log, &stream).await.unwrap();
        assert_eq!((loaded.state, loaded.version), (102, 2));
    }
}
