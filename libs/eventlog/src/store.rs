//! [`EventLog`]: the one handle a service holds on its log, whichever backend is under it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::EventLogError;
use crate::event::{ExpectedVersion, LogPosition, NewEvent, RecordedEvent, StreamRef};
use crate::handler::{HandleError, Handler};
use crate::lease::{DEFAULT_LEASE_TERM, Fence, Lease};
use crate::on_conn;
use crate::postgres::PgLog;
use crate::projection::{Projection, RebuildProgress, Upcaster};
use crate::sqlite::SqliteLog;
use crate::tx::Tx;

mod group;

/// Runs the same query on the pool a backend reads with. Most of the log's SQL is
/// written once for both backends; only appends and tailing differ.
macro_rules! on_read_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Postgres(pg) => {
                let $pool = &pg.pool;
                $body
            }
            Backend::Sqlite(lite) => {
                let $pool = &lite.reader;
                $body
            }
        }
    };
}

/// Like `on_read_pool!`, on the pool a backend writes with (SQLite's single writer).
macro_rules! on_write_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Postgres(pg) => {
                let $pool = &pg.pool;
                $body
            }
            Backend::Sqlite(lite) => {
                let $pool = &lite.writer;
                $body
            }
        }
    };
}

/// Where a service's log lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A schema of a Postgres database (production).
    Postgres { url: String, schema: String },
    /// A SQLite file (embedded mode).
    Sqlite { path: PathBuf },
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The events as stored. For a duplicate, the events stored by the original request.
    pub events: Vec<RecordedEvent>,
    /// True when the events were already in the log (a retried request): nothing was
    /// appended and no projection ran.
    pub duplicate: bool,
}

/// A stored state of one stream, valid while its `state_version` matches the code's.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream_version: u64,
    pub state: Vec<u8>,
}

/// An event a consumer could never handle, kept with the reason instead of being dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub consumer: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub stream_id: String,
    pub reason: String,
    pub attempts: u32,
    /// The encoded `EventEnvelope`, or the raw message when it could not be decoded.
    pub envelope: Vec<u8>,
}

enum Backend {
    Postgres(PgLog),
    Sqlite(SqliteLog),
}

/// A service's event log. Cheap to clone; clones share the connection pools.
#[derive(Clone)]
pub struct EventLog {
    backend: Arc<Backend>,
    projections: Arc<Vec<Arc<dyn Projection>>>,
    upcasters: Arc<Vec<Arc<dyn Upcaster>>>,
    /// Woken after every append in this process, so local tailers need not poll.
    appended: Arc<Notify>,
    /// DDL of the service's own read models, applied by [`EventLog::migrate`].
    read_model_ddl: Arc<ReadModelDdl>,
    /// Handler transactions open at once ([`EventLog::process_once`]). A handler holds
    /// its transaction's connection while it reads through the pool; bounding them below
    /// the pool's size leaves connections for those reads (and for the relay and the API),
    /// so consumers handling events in several lanes cannot take every connection and
    /// wait on each other.
    handler_slots: Arc<tokio::sync::Semaphore>,
    /// How long a lease taken through this log lasts without renewal.
    lease_term: Duration,
    /// Appends waiting to be committed together ([`group`]).
    group: Arc<group::Queue>,
}

/// Handler transactions at once on Postgres (the pool has 16 connections).
const HANDLER_SLOTS: usize = 6;

#[derive(Default)]
struct ReadModelDdl {
    postgres: String,
    sqlite: String,
}

impl EventLog {
    /// Connects to the store. Call [`EventLog::migrate`] before the first append.
    pub async fn open(config: &StoreConfig) -> Result<Self, EventLogError> {
        let backend = match config {
            StoreConfig::Postgres { url, schema } => {
                Backend::Postgres(PgLog::connect(url, schema).await?)
            }
            StoreConfig::Sqlite { path } => Backend::Sqlite(SqliteLog::open(path).await?),
        };
        Ok(Self {
            backend: Arc::new(backend),
            projections: Arc::default(),
            upcasters: Arc::default(),
            appended: Arc::default(),
            read_model_ddl: Arc::default(),
            handler_slots: Arc::new(tokio::sync::Semaphore::new(HANDLER_SLOTS)),
            lease_term: DEFAULT_LEASE_TERM,
            group: Arc::default(),
        })
    }

    /// Adds an inline projection: it runs inside every append's transaction, so its read
    /// model is never behind the log.
    pub fn with_projection(mut self, projection: Arc<dyn Projection>) -> Self {
        let mut all = self.projections.as_ref().clone();
        all.push(projection);
        self.projections = Arc::new(all);
        self
    }

    /// Adds an upcaster, run on every event read from the log.
    pub fn with_upcaster(mut self, upcaster: Arc<dyn Upcaster>) -> Self {
        let mut all = self.upcasters.as_ref().clone();
        all.push(upcaster);
        self.upcasters = Arc::new(all);
        self
    }

    /// Adds the DDL of the service's read models (idempotent statements), one text per
    /// backend, applied by [`EventLog::migrate`].
    pub fn with_read_models(mut self, postgres: &str, sqlite: &str) -> Self {
        self.read_model_ddl = Arc::new(ReadModelDdl {
            postgres: format!("{}\n{postgres}", self.read_model_ddl.postgres),
            sqlite: format!("{}\n{sqlite}", self.read_model_ddl.sqlite),
        });
        self
    }

    /// Creates the log's tables and the read models' if absent. Safe to run concurrently
    /// and repeatedly.
    /// Whether the log takes concurrent writers (Postgres) or one at a time (SQLite):
    /// what decides whether a consumer may handle events in several lanes.
    pub fn takes_concurrent_writers(&self) -> bool {
        matches!(*self.backend, Backend::Postgres(_))
    }

    pub async fn migrate(&self) -> Result<(), EventLogError> {
        match self.backend.as_ref() {
            Backend::Postgres(pg) => pg.migrate(&self.read_model_ddl.postgres).await,
            Backend::Sqlite(lite) => lite.migrate(&self.read_model_ddl.sqlite).await,
        }
    }

    /// A future that completes after the next append made through this process.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// The Postgres pool, for services whose read-model queries need it.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match self.backend.as_ref() {
            Backend::Postgres(pg) => Some(&pg.pool),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite pool used for reads, for services whose read-model queries need it.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self.backend.as_ref() {
            Backend::Postgres(_) => None,
            Backend::Sqlite(lite) => Some(&lite.reader),
        }
    }

    /// Appends `events` to `stream` if it is at `expected`, running every inline projection
    /// in the same transaction.
    ///
    /// Idempotent: if any of the event ids is already stored, nothing is appended and the
    /// stored events are returned with `duplicate: true`. A stream at another version is a
    /// [`EventLogError::Conflict`].
    pub async fn append(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventLogError> {
        self.append_checked(stream, expected, events, None).await
    }

    /// Appends like [`EventLog::append`], only while `fence`'s lease is still held at its
    /// token: the write of a role's current holder, refused with
    /// [`EventLogError::Fenced`] once another process has taken the role over.
    pub async fn append_fenced(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        fence: &Fence,
    ) -> Result<Appended, EventLogError> {
        self.append_checked(stream, expected, events, Some(fence))
            .await
    }

    async fn append_checked(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        fence: Option<&Fence>,
    ) -> Result<Appended, EventLogError> {
        if events.is_empty() {
            return Err(EventLogError::Invalid {
                field: "events",
                reason: "an append needs at least one event".into(),
            });
        }
        // A fenced write locks its lease's row until its commit: it goes alone.
        match fence {
            None => self.append_grouped(stream, expected, events).await,
            Some(fence) => {
                self.append_alone(stream, expected, events, Some(fence))
                    .await
            }
        }
    }

    /// One append in a transaction of its own.
    async fn append_alone(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        fence: Option<&Fence>,
    ) -> Result<Appended, EventLogError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let appended = match self.backend.as_ref() {
            Backend::Postgres(pg) if self.projections.is_empty() && fence.is_none() => {
                // Nothing else to write: the one statement is its own transaction.
                let mut conn = pg.pool.acquire().await?;
                match PgLog::insert(&mut conn, stream, expected, &events).await? {
                    Some(recorded) => Appended {
                        events: recorded,
                        duplicate: false,
                    },
                    None => Appended {
                        events: PgLog::find_events(&mut conn, &ids).await?,
                        duplicate: true,
                    },
                }
            }
            Backend::Postgres(pg) => {
                let mut tx = pg.pool.begin().await?;
                // Roll back explicitly on every failure: a failed insert has taken a
                // transaction id, and until the ROLLBACK reaches the server it holds back
                // every gap-safe reader of the log.
                let inserted = PgLog::insert(&mut tx, stream, expected, &events).await;
                let inserted = match inserted {
                    Ok(inserted) => inserted,
                    Err(e) => {
                        rollback_quietly(tx).await;
                        return Err(e);
                    }
                };
                match inserted {
                    Some(recorded) => {
                        if let Err(e) = self.project(&mut Tx::Postgres(&mut tx), &recorded).await {
                            rollback_quietly(tx).await;
                            return Err(e);
                        }
                        // Last, so the lease's row is locked only for the commit.
                        if let Some(fence) = fence
                            && let Err(e) = fence.check(&mut tx).await
                        {
                            rollback_quietly(tx).await;
                            return Err(e);
                        }
                        tx.commit().await?;
                        Appended {
                            events: recorded,
                            duplicate: false,
                        }
                    }
                    None => {
                        tx.rollback().await?;
                        let mut conn = pg.pool.acquire().await?;
                        Appended {
                            events: PgLog::find_events(&mut conn, &ids).await?,
                            duplicate: true,
                        }
                    }
                }
            }
            Backend::Sqlite(lite) => {
                let mut tx = lite.writer.begin().await?;
                match SqliteLog::insert(&mut tx, stream, expected, &events).await? {
                    Some(recorded) => {
                        self.project(&mut Tx::Sqlite(&mut tx), &recorded).await?;
                        tx.commit().await?;
                        Appended {
                            events: recorded,
                            duplicate: false,
                        }
                    }
                    None => Appended {
                        events: SqliteLog::find_events(&mut tx, &ids).await?,
                        duplicate: true,
                    },
                }
            }
        };
        if appended.duplicate {
            return Ok(Appended {
                events: self.upcast_all(appended.events),
                duplicate: true,
            });
        }
        metrics::counter!("eventlog_appended_events_total").increment(appended.events.len() as u64);
        self.appended.notify_waiters();
        Ok(appended)
    }

    /// Appends like [`EventLog::append`], inside `tx`: a subscription handler's
    /// transaction, so the events commit together with the handler's processed record and
    /// its other effects (one commit instead of two, and no second writer on SQLite's
    /// single connection). Local tailers are woken when [`EventLog::process_once`]
    /// commits. On Postgres a writer racing for the same stream can abort `tx`; the
    /// handler's next statement then fails and the subscription tries the event again.
    pub async fn append_in(
        &self,
        tx: &mut Tx<'_>,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventLogError> {
        if events.is_empty() {
            return Err(EventLogError::Invalid {
                field: "events",
                reason: "an append needs at least one event".into(),
            });
        }
        let inserted = match tx {
            Tx::Postgres(conn) => PgLog::insert(conn, stream, expected, &events).await?,
            Tx::Sqlite(conn) => SqliteLog::insert(conn, stream, expected, &events).await?,
        };
        match inserted {
            Some(recorded) => {
                self.project(tx, &recorded).await?;
                metrics::counter!("eventlog_appended_events_total")
                    .increment(recorded.len() as u64);
                Ok(Appended {
                    events: recorded,
                    duplicate: false,
                })
            }
            None => {
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                let found = match tx {
                    Tx::Postgres(conn) => PgLog::find_events(conn, &ids).await?,
                    Tx::Sqlite(conn) => SqliteLog::find_events(conn, &ids).await?,
                };
                Ok(Appended {
                    events: self.upcast_all(found),
                    duplicate: true,
                })
            }
        }
    }

    async fn project(
        &self,
        tx: &mut Tx<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), EventLogError> {
        if self.projections.is_empty() {
            return Ok(());
        }
        let events = self.upcast_all(events.to_vec());
        for projection in self.projections.iter() {
            projection.apply(tx, &events).await?;
        }
        Ok(())
    }

    /// The stored events among `ids`, upcast, in log order.
    async fn stored(&self, ids: &[Uuid]) -> Result<Vec<RecordedEvent>, EventLogError> {
        let found = match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let mut conn = pg.pool.acquire().await?;
                PgLog::find_events(&mut conn, ids).await?
            }
            Backend::Sqlite(lite) => {
                let mut conn = lite.reader.acquire().await?;
                SqliteLog::find_events(&mut conn, ids).await?
            }
        };
        Ok(self.upcast_all(found))
    }

    /// The stored event with id `event_id`, if any.
    pub async fn find_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, EventLogError> {
        let found = match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let mut conn = pg.pool.acquire().await?;
                PgLog::find_events(&mut conn, &[event_id]).await?
            }
            Backend::Sqlite(lite) => {
                let mut conn = lite.reader.acquire().await?;
                SqliteLog::find_events(&mut conn, &[event_id]).await?
            }
        };
        Ok(self.upcast_all(found).into_iter().next())
    }

    /// The events of `stream` after `after_version` (0 for all), oldest first, at most
    /// `limit`.
    pub async fn read_stream(
        &self,
        stream: &StreamRef,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let events = match self.backend.as_ref() {
            Backend::Postgres(pg) => pg.read_stream(stream, after_version, limit).await?,
            Backend::Sqlite(lite) => lite.read_stream(stream, after_version, limit).await?,
        };
        Ok(self.upcast_all(events))
    }

    /// Up to `limit` events after `after` in log order. Gap-safe: an event whose
    /// transaction is still open is not returned yet, and nothing returned later can sort
    /// before what was returned now.
    pub async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let events = match self.backend.as_ref() {
            Backend::Postgres(pg) => pg.read_all(after, limit).await?,
            Backend::Sqlite(lite) => lite.read_all(after, limit).await?,
        };
        Ok(self.upcast_all(events))
    }

    /// The log position of the event at `global_position`, if the log holds one.
    pub async fn position_of(
        &self,
        global_position: i64,
    ) -> Result<Option<LogPosition>, EventLogError> {
        let row: Option<(i64, i64)> =
            match self.backend.as_ref() {
                Backend::Postgres(pg) => {
                    sqlx::query_as(
                        "SELECT transaction_id::text::int8, global_position FROM events
                     WHERE global_position = $1",
                    )
                    .bind(global_position)
                    .fetch_optional(&pg.pool)
                    .await?
                }
                Backend::Sqlite(lite) => sqlx::query_as(
                    "SELECT transaction_id, global_position FROM events WHERE global_position = $1",
                )
                .bind(global_position)
                .fetch_optional(&lite.reader)
                .await?,
            };
        Ok(row.map(|(transaction_id, global_position)| LogPosition {
            transaction_id: transaction_id as u64,
            global_position,
        }))
    }

    /// Whether the store answers: one trivial query on the read pool, within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), EventLogError> {
        let query = async {
            let _: i32 = on_read_pool!(self.backend.as_ref(), pool => sqlx::query_scalar("SELECT 1")
                .fetch_one(pool)
                .await)?;
            Ok::<_, EventLogError>(())
        };
        tokio::time::timeout(within, query)
            .await
            .map_err(|_| EventLogError::Database(sqlx::Error::PoolTimedOut))?
    }

    /// How many events the log holds.
    pub async fn count_events(&self) -> Result<u64, EventLogError> {
        let n: i64 = on_read_pool!(self.backend.as_ref(), pool => sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await)?;
        Ok(n as u64)
    }

    /// The stored snapshot of `stream`, unless it was made by another `state_version` of
    /// the code, in which case it is discarded.
    pub async fn load_snapshot(
        &self,
        stream: &StreamRef,
        state_version: u32,
    ) -> Result<Option<Snapshot>, EventLogError> {
        let row: Option<(i64, i32, Vec<u8>)> = on_read_pool!(self.backend.as_ref(), pool => sqlx::query_as(
            "SELECT stream_version, state_version, state FROM snapshots
             WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(&stream.stream_type)
        .bind(&stream.stream_id)
        .fetch_optional(pool)
        .await)?;
        let Some((stream_version, stored_state_version, state)) = row else {
            return Ok(None);
        };
        if stored_state_version as u32 != state_version {
            on_write_pool!(self.backend.as_ref(), pool => sqlx::query(
                "DELETE FROM snapshots WHERE stream_type = $1 AND stream_id = $2 AND state_version = $3",
            )
            .bind(&stream.stream_type)
            .bind(&stream.stream_id)
            .bind(stored_state_version)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
            return Ok(None);
        }
        Ok(Some(Snapshot {
            stream_version: stream_version as u64,
            state,
        }))
    }

    /// Stores the state of `stream` at `stream_version`. An older snapshot never replaces a
    /// newer one of the same state version.
    pub async fn save_snapshot(
        &self,
        stream: &StreamRef,
        stream_version: u64,
        state_version: u32,
        state: &[u8],
    ) -> Result<(), EventLogError> {
        on_write_pool!(self.backend.as_ref(), pool => sqlx::query(
            "INSERT INTO snapshots (stream_type, stream_id, stream_version, state_version, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (stream_type, stream_id) DO UPDATE
             SET stream_version = excluded.stream_version, state_version = excluded.state_version,
                 state = excluded.state
             WHERE snapshots.stream_version <= excluded.stream_version
                OR snapshots.state_version <> excluded.state_version",
        )
        .bind(&stream.stream_type)
        .bind(&stream.stream_id)
        .bind(stream_version as i64)
        .bind(state_version as i32)
        .bind(state)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The last position the reader `name` finished, or the start.
    pub async fn checkpoint(&self, name: &str) -> Result<LogPosition, EventLogError> {
        let row: Option<(i64, i64)> = on_read_pool!(self.backend.as_ref(), pool => sqlx::query_as(
            "SELECT transaction_id, global_position FROM checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await)?;
        Ok(
            row.map_or(LogPosition::START, |(transaction_id, global_position)| {
                LogPosition {
                    transaction_id: transaction_id as u64,
                    global_position,
                }
            }),
        )
    }

    /// Records that the reader `name` finished `position`. Checkpoints only move forward,
    /// so a stale writer cannot rewind one.
    pub async fn save_checkpoint(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<(), EventLogError> {
        self.save_checkpoint_checked(name, position, None).await
    }

    /// Records `position` like [`EventLog::save_checkpoint`], only while `fence`'s lease is
    /// still held: a relay that lost its role cannot move the checkpoint.
    pub async fn save_checkpoint_fenced(
        &self,
        name: &str,
        position: LogPosition,
        fence: &Fence,
    ) -> Result<(), EventLogError> {
        self.save_checkpoint_checked(name, position, Some(fence))
            .await
    }

    async fn save_checkpoint_checked(
        &self,
        name: &str,
        position: LogPosition,
        fence: Option<&Fence>,
    ) -> Result<(), EventLogError> {
        const UPSERT: &str = "INSERT INTO checkpoints (name, transaction_id, global_position)
             VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id,
                 global_position = excluded.global_position
             WHERE (checkpoints.transaction_id, checkpoints.global_position)
                 < (excluded.transaction_id, excluded.global_position)";
        match (self.backend.as_ref(), fence) {
            // One statement: the lease row read `FOR SHARE` and the checkpoint written only
            // while it is still this holder's, atomically, without a transaction of its own
            // (the relay checkpoints after every batch).
            (Backend::Postgres(pg), Some(fence)) => {
                let held: bool = sqlx::query_scalar(
                    "WITH held AS (
                         SELECT 1 FROM leases WHERE name = $4 AND holder = $5 AND token = $6
                         FOR SHARE
                     ), saved AS (
                         INSERT INTO checkpoints (name, transaction_id, global_position)
                         SELECT $1, $2, $3 FROM held
                         ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id,
                             global_position = excluded.global_position
                         WHERE (checkpoints.transaction_id, checkpoints.global_position)
                             < (excluded.transaction_id, excluded.global_position)
                         RETURNING 1
                     )
                     SELECT EXISTS (SELECT 1 FROM held)",
                )
                .bind(name)
                .bind(position.transaction_id as i64)
                .bind(position.global_position)
                .bind(&fence.name)
                .bind(&fence.holder)
                .bind(fence.token)
                .fetch_one(&pg.pool)
                .await?;
                if !held {
                    return Err(EventLogError::Fenced {
                        lease: fence.name.clone(),
                        token: fence.token,
                    });
                }
            }
            _ => {
                on_write_pool!(self.backend.as_ref(), pool => sqlx::query(UPSERT)
                    .bind(name)
                    .bind(position.transaction_id as i64)
                    .bind(position.global_position)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()))?;
            }
        }
        Ok(())
    }

    /// Runs `handler` on `event` in a transaction that also records `(consumer, event_id)`,
    /// so a redelivered event changes nothing. Returns `Ok(Ok(false))` when the event had
    /// already been processed (the handler did not run), and the handler's error, with its
    /// effects rolled back, when it failed.
    pub async fn process_once(
        &self,
        consumer: &str,
        event: &RecordedEvent,
        handler: &dyn Handler,
    ) -> Result<Result<bool, HandleError>, EventLogError> {
        match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let _slot = self
                    .handler_slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let mut tx = pg.pool.begin().await?;
                if !mark_processed(&mut Tx::Postgres(&mut tx), consumer, event.event_id).await? {
                    tx.rollback().await?;
                    return Ok(Ok(false));
                }
                match handler.handle(&mut Tx::Postgres(&mut tx), event).await {
                    Ok(()) => {
                        tx.commit().await?;
                        // The handler may have appended (`append_in`).
                        self.appended.notify_waiters();
                        Ok(Ok(true))
                    }
                    Err(e) => {
                        rollback_quietly(tx).await;
                        Ok(Err(e))
                    }
                }
            }
            Backend::Sqlite(lite) => {
                let mut tx = lite.writer.begin().await?;
                if !mark_processed(&mut Tx::Sqlite(&mut tx), consumer, event.event_id).await? {
                    tx.rollback().await?;
                    return Ok(Ok(false));
                }
                match handler.handle(&mut Tx::Sqlite(&mut tx), event).await {
                    Ok(()) => {
                        tx.commit().await?;
                        self.appended.notify_waiters();
                        Ok(Ok(true))
                    }
                    Err(e) => {
                        rollback_quietly(tx).await;
                        Ok(Err(e))
                    }
                }
            }
        }
    }

    /// Stores a dead letter and marks its event processed for the consumer, atomically.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), EventLogError> {
        match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let mut tx = pg.pool.begin().await?;
                insert_dead_letter(&mut Tx::Postgres(&mut tx), letter).await?;
                tx.commit().await?;
            }
            Backend::Sqlite(lite) => {
                let mut tx = lite.writer.begin().await?;
                insert_dead_letter(&mut Tx::Sqlite(&mut tx), letter).await?;
                tx.commit().await?;
            }
        }
        metrics::counter!("eventlog_dead_letters_total", "consumer" => letter.consumer.clone())
            .increment(1);
        Ok(())
    }

    /// The dead letters of `consumer`, oldest first.
    pub async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>, EventLogError> {
        type Row = (String, Uuid, String, String, String, i32, Vec<u8>);
        let rows: Vec<Row> = on_read_pool!(self.backend.as_ref(), pool => sqlx::query_as(
            "SELECT consumer, event_id, event_type, stream_id, reason, attempts, envelope
             FROM dead_letters WHERE consumer = $1 ORDER BY id",
        )
        .bind(consumer)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(consumer, event_id, event_type, stream_id, reason, attempts, envelope)| {
                    DeadLetter {
                        consumer,
                        event_id,
                        event_type,
                        stream_id,
                        reason,
                        attempts: attempts as u32,
                        envelope,
                    }
                },
            )
            .collect())
    }

    /// Drops `projection`'s read model and folds every event into it again, in one
    /// transaction that holds writers off, so readers see the old model until the new one
    /// is complete. `progress` is called after each batch.
    pub async fn rebuild(
        &self,
        projection: &dyn Projection,
        progress: &mut (dyn FnMut(RebuildProgress) + Send),
    ) -> Result<u64, EventLogError> {
        const BATCH: usize = 1000;
        let total = self.count_events().await?;
        let mut done = 0u64;
        let mut after = 0i64;
        match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let mut tx = pg.pool.begin().await?;
                sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                projection.reset(&mut Tx::Postgres(&mut tx)).await?;
                loop {
                    let batch = PgLog::read_committed(&mut tx, after, BATCH).await?;
                    let Some(last) = batch.last() else { break };
                    after = last.global_position;
                    done += batch.len() as u64;
                    let batch = self.upcast_all(batch);
                    projection.apply(&mut Tx::Postgres(&mut tx), &batch).await?;
                    progress(RebuildProgress { done, total });
                }
                tx.commit().await?;
            }
            Backend::Sqlite(lite) => {
                let mut tx = lite.writer.begin().await?;
                projection.reset(&mut Tx::Sqlite(&mut tx)).await?;
                loop {
                    let batch = SqliteLog::read_committed(&mut tx, after, BATCH).await?;
                    let Some(last) = batch.last() else { break };
                    after = last.global_position;
                    done += batch.len() as u64;
                    let batch = self.upcast_all(batch);
                    projection.apply(&mut Tx::Sqlite(&mut tx), &batch).await?;
                    progress(RebuildProgress { done, total });
                }
                tx.commit().await?;
            }
        }
        Ok(done)
    }

    /// Tries to become the one active holder of `name` (the relay of a service, say) among
    /// every process sharing this store: a [`Lease`] with this log's term, renewed while
    /// it is held. `None` while another holder's term runs. SQLite is single-process and
    /// always grants it.
    pub async fn try_lead(&self, name: &str) -> Result<Option<Lease>, EventLogError> {
        match self.backend.as_ref() {
            Backend::Postgres(pg) => Lease::try_acquire(&pg.pool, name, self.lease_term).await,
            Backend::Sqlite(_) => Ok(Some(Lease::sole(name))),
        }
    }

    /// How far a reader at `after` is behind the log: the events after it (counted up to
    /// a bound), how old the oldest of them is, and on Postgres how many of them are
    /// committed but not yet readable because an older transaction is still open (gap
    /// safety holds them back), with that transaction's age.
    pub async fn lag(&self, after: LogPosition) -> Result<RelayLag, EventLogError> {
        /// Counting stops here: beyond it the number only says "far behind".
        const COUNT_BOUND: i64 = 1_000_000;
        match self.backend.as_ref() {
            Backend::Postgres(pg) => {
                let row: (i64, Option<f64>, i64, Option<f64>) = sqlx::query_as(
                    "WITH behind AS (
                         SELECT transaction_id, recorded_at FROM events
                         WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                         LIMIT $3)
                     SELECT (SELECT count(*) FROM behind),
                         (SELECT extract(epoch FROM clock_timestamp() - min(recorded_at))::float8
                            FROM behind),
                         (SELECT count(*) FROM behind
                            WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())),
                         (SELECT extract(epoch FROM clock_timestamp() - min(xact_start))::float8
                            FROM pg_stat_activity WHERE backend_xid IS NOT NULL)",
                )
                .bind(after.transaction_id.to_string())
                .bind(after.global_position)
                .bind(COUNT_BOUND)
                .fetch_one(&pg.pool)
                .await?;
                let held_back = row.2 as u64;
                Ok(RelayLag {
                    events: row.0 as u64,
                    oldest_secs: row.1.unwrap_or_default().max(0.0),
                    held_back,
                    oldest_transaction_secs: if held_back > 0 {
                        row.3.unwrap_or_default().max(0.0)
                    } else {
                        0.0
                    },
                })
            }
            Backend::Sqlite(lite) => {
                let row: (i64, Option<i64>) = sqlx::query_as(
                    "SELECT count(*), min(recorded_at) FROM (
                         SELECT recorded_at FROM events WHERE global_position > $1 LIMIT $2)",
                )
                .bind(after.global_position)
                .bind(COUNT_BOUND)
                .fetch_one(&lite.reader)
                .await?;
                let oldest_secs = row
                    .1
                    .map(|at| (crate::now_micros() - at) as f64 / 1e6)
                    .unwrap_or_default()
                    .max(0.0);
                Ok(RelayLag {
                    events: row.0 as u64,
                    oldest_secs,
                    held_back: 0,
                    oldest_transaction_secs: 0.0,
                })
            }
        }
    }

    /// Sets how long a lease taken through this log lasts without renewal: how soon a
    /// standby takes over from a holder that died or froze. Five seconds unless set.
    pub fn with_lease_term(mut self, term: Duration) -> Self {
        self.lease_term = term.max(Duration::from_millis(300));
        self
    }

    fn upcast_all(&self, mut events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
        if self.upcasters.is_empty() {
            return events;
        }
        for event in &mut events {
            for upcaster in self.upcasters.iter() {
                upcaster.upcast(event);
            }
        }
        events
    }
}

/// How far a reader is behind the log ([`EventLog::lag`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RelayLag {
    /// Events after the reader's position (at most a million are counted).
    pub events: u64,
    /// Age of the oldest of them, in seconds.
    pub oldest_secs: f64,
    /// Of those, the ones committed but held back by an older open transaction.
    pub held_back: u64,
    /// Age of the oldest open transaction holding them back, in seconds (0 if none).
    pub oldest_transaction_secs: f64,
}

/// Rolls back after a failure without hiding it: the caller returns the original error,
/// and a connection too broken to roll back is closed by the pool anyway.
async fn rollback_quietly<DB: sqlx::Database>(tx: sqlx::Transaction<'_, DB>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rollback after a failed append did not complete");
    }
}

/// Records that `consumer` handled `event_id`; false if it already had.
async fn mark_processed(
    tx: &mut Tx<'_>,
    consumer: &str,
    event_id: Uuid,
) -> Result<bool, EventLogError> {
    let inserted = on_conn!(tx, conn => sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(inserted == 1)
}

/// Stores a dead letter and marks its event processed for the consumer.
async fn insert_dead_letter(tx: &mut Tx<'_>, letter: &DeadLetter) -> Result<(), EventLogError> {
    mark_processed(tx, &letter.consumer, letter.event_id).await?;
    on_conn!(tx, conn => sqlx::query(
        "INSERT INTO dead_letters (consumer, event_id, event_type, stream_id, reason, attempts, envelope)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&letter.consumer)
    .bind(letter.event_id)
    .bind(&letter.event_type)
    .bind(&letter.stream_id)
    .bind(&letter.reason)
    .bind(letter.attempts as i32)
    .bind(&letter.envelope)
    .execute(conn)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
