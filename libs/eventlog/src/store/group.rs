//! Group commit: appends from many tasks to one log, gathered and committed together.
//!
//! An append joins the log's queue and, when fewer than [`FLUSHERS`] flushes are running,
//! starts one (a spawned task, so a caller that goes away never strands the others). A
//! flush takes what is queued, at most one append per stream and [`MAX_EVENTS`] events or
//! [`MAX_BYTES`] of payload, inserts each in one transaction, runs the projections once
//! over all of them, commits once, and answers every caller with its own result. It takes
//! the next batch as soon as it is done and ends when the queue is empty: no timer, so an
//! append alone waits for nothing. A stale expected version or a duplicate is that
//! caller's answer only. An append that spoils the transaction (a racing writer's key, a
//! projection refusing its events) rolls it back: it is made alone, for its own answer,
//! and the rest are committed together again; a failure no append can be blamed for (the
//! connection, the commit) has each made alone. Nobody is answered before the commit, so a
//! crash mid-flush loses nothing that was answered.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{Appended, Backend, EventLog, rollback_quietly};
use crate::EventLogError;
use crate::event::{ExpectedVersion, NewEvent, RecordedEvent, StreamRef};
use crate::postgres::{Inserted, PgLog};
use crate::sqlite::SqliteLog;
use crate::tx::Tx;

/// Flushes at once on Postgres (each holds one connection while it writes); SQLite has
/// one writer, so one.
const FLUSHERS: usize = 4;
/// Events in one flush at most.
const MAX_EVENTS: usize = 1_000;
/// Payload bytes in one flush at most.
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// One append waiting for its flush.
struct Pending {
    stream: StreamRef,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Appended, EventLogError>>,
}

/// What a flush did with one append, before it is answered.
enum Outcome {
    Recorded(Vec<RecordedEvent>),
    Duplicate,
    Conflict(u64),
}

/// The appends waiting, and how many flushes run.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    flushing: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch, or `None` (this flush ends) when nothing waits.
    fn take(&self) -> Option<Vec<Pending>> {
        let mut state = self.lock();
        if state.pending.is_empty() {
            state.flushing -= 1;
            return None;
        }
        let mut batch = Vec::new();
        let mut streams = HashSet::new();
        let mut skipped = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        while let Some(next) = state.pending.pop_front() {
            let size: usize = next.events.iter().map(|e| e.payload.len()).sum();
            if !batch.is_empty()
                && (events + next.events.len() > MAX_EVENTS || bytes + size > MAX_BYTES)
            {
                state.pending.push_front(next);
                break;
            }
            // A second append to a stream may expect the version the first makes: it
            // waits for the next flush.
            if !streams.insert(next.stream.clone()) {
                skipped.push(next);
                continue;
            }
            events += next.events.len();
            bytes += size;
            batch.push(next);
        }
        for next in skipped.into_iter().rev() {
            state.pending.push_front(next);
        }
        Some(batch)
    }
}

impl EventLog {
    /// Appends through the queue: committed with whatever else is waiting.
    pub(super) async fn append_grouped(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventLogError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.group.lock();
            state.pending.push_back(Pending {
                stream: stream.clone(),
                expected,
                events,
                reply,
            });
            let flushers = match self.backend.as_ref() {
                Backend::Postgres(_) => FLUSHERS,
                Backend::Sqlite(_) => 1,
            };
            let start = state.flushing < flushers;
            if start {
                state.flushing += 1;
            }
            start
        };
        if start {
            let log = self.clone();
            tokio::spawn(async move {
                while let Some(batch) = log.group.take() {
                    // A flush that panics (a projection's bug) answers its batch with an
                    // error (their replies dropped) and leaves this flusher running, so
                    // its slot is never lost and the queue never stalls.
                    let flushed = std::panic::AssertUnwindSafe(log.flush(batch));
                    if futures::FutureExt::catch_unwind(flushed).await.is_err() {
                        tracing::error!(
                            "an append flush panicked; its appends were answered with an error"
                        );
                    }
                }
            });
        }
        answer.await.unwrap_or_else(|_| {
            Err(EventLogError::Invalid {
                field: "append",
                reason: "the flush carrying this append stopped before answering".into(),
            })
        })
    }

    /// Commits `batch` together and answers each append. An append that spoiled the
    /// transaction is made alone and the rest committed together again; when no append can
    /// be blamed, each is made alone.
    async fn flush(&self, mut batch: Vec<Pending>) {
        // Alone in its flush, an append takes the shortest way (one statement when no
        // projection runs).
        if batch.len() == 1 {
            if let Some(pending) = batch.pop() {
                self.alone(pending).await;
            }
            return;
        }
        let outcomes = loop {
            let together = match self.backend.as_ref() {
                Backend::Postgres(pg) => self.flush_postgres(pg, &batch).await,
                Backend::Sqlite(lite) => self.flush_sqlite(lite, &batch).await,
            };
            match together {
                Ok(outcomes) => break outcomes,
                Err(Some(culprit)) => {
                    self.alone(batch.remove(culprit)).await;
                    if batch.is_empty() {
                        return;
                    }
                }
                Err(None) => {
                    for pending in batch {
                        self.alone(pending).await;
                    }
                    return;
                }
            }
        };
        let appended: usize = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Recorded(events) => events.len(),
                _ => 0,
            })
            .sum();
        if appended > 0 {
            metrics::counter!("eventlog_appended_events_total").increment(appended as u64);
            metrics::histogram!("eventlog_group_commit_appends").record(batch.len() as f64);
            self.appended.notify_waiters();
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let answer = match outcome {
                Outcome::Recorded(events) => Ok(Appended {
                    events,
                    duplicate: false,
                }),
                Outcome::Conflict(actual) => Err(EventLogError::Conflict {
                    stream: pending.stream.to_string(),
                    expected: pending.expected.to_string(),
                    actual,
                }),
                Outcome::Duplicate => {
                    let ids: Vec<uuid::Uuid> = pending.events.iter().map(|e| e.event_id).collect();
                    self.stored(&ids).await.map(|events| Appended {
                        events,
                        duplicate: true,
                    })
                }
            };
            let _ = pending.reply.send(answer);
        }
    }

    /// One append in a transaction of its own, answered with its own outcome.
    async fn alone(&self, pending: Pending) {
        let alone = self
            .append_alone(&pending.stream, pending.expected, pending.events, None)
            .await;
        let _ = pending.reply.send(alone);
    }

    /// The batch in one Postgres transaction. `Err(Some(i))`: the `i`th append spoiled it
    /// and it was rolled back; `Err(None)`: it failed on its own.
    async fn flush_postgres(
        &self,
        pg: &PgLog,
        batch: &[Pending],
    ) -> Result<Vec<Outcome>, Option<usize>> {
        let mut tx = pg.pool.begin().await.map_err(|_| None)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, pending) in batch.iter().enumerate() {
            let inserted =
                PgLog::try_insert(&mut tx, &pending.stream, pending.expected, &pending.events)
                    .await;
            let outcome = match inserted {
                Ok(Inserted::Recorded(events)) => {
                    // Each append's events projected on their own, so a projection that
                    // refuses names its append.
                    if self
                        .project(&mut Tx::Postgres(&mut tx), &events)
                        .await
                        .is_err()
                    {
                        rollback_quietly(tx).await;
                        return Err(Some(i));
                    }
                    Outcome::Recorded(events)
                }
                Ok(Inserted::Duplicate) => Outcome::Duplicate,
                Ok(Inserted::Conflict(actual)) => Outcome::Conflict(actual),
                Err(_) => {
                    rollback_quietly(tx).await;
                    return Err(Some(i));
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await.map_err(|_| None)?;
        Ok(outcomes)
    }

    /// The batch in one SQLite transaction on the writer, as [`EventLog::flush_postgres`].
    async fn flush_sqlite(
        &self,
        lite: &SqliteLog,
        batch: &[Pending],
    ) -> Result<Vec<Outcome>, Option<usize>> {
        let mut tx = lite.writer.begin().await.map_err(|_| None)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, pending) in batch.iter().enumerate() {
            // Checked before anything is written: a stale version leaves the transaction
            // as it was.
            let inserted =
                SqliteLog::insert(&mut tx, &pending.stream, pending.expected, &pending.events)
                    .await;
            let outcome = match inserted {
                Ok(Some(events)) => {
                    if self
                        .project(&mut Tx::Sqlite(&mut tx), &events)
                        .await
                        .is_err()
                    {
                        rollback_quietly(tx).await;
                        return Err(Some(i));
                    }
                    Outcome::Recorded(events)
                }
                Ok(None) => Outcome::Duplicate,
                Err(EventLogError::Conflict { actual, .. }) => Outcome::Conflict(actual),
                Err(_) => {
                    rollback_quietly(tx).await;
                    return Err(Some(i));
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await.map_err(|_| None)?;
        Ok(outcomes)
    }
}
