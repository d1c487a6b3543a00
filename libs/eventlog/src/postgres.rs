//! The Postgres backend: one schema per service, appends with `UNNEST` batches, gap-safe
//! tailing by `(transaction_id, global_position)` under `pg_snapshot_xmin`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::EventLogError;
use crate::event::{ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamRef};

/// Tables, indexes and the append-only guard. Idempotent; run under an advisory lock so
/// replicas starting together do not race on DDL.
const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id UUID NOT NULL CONSTRAINT events_event_id_unique UNIQUE,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INT NOT NULL,
    payload BYTEA NOT NULL,
    metadata JSONB NOT NULL,
    transaction_id XID8 NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version_unique UNIQUE (stream_type, stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS events_tail_idx ON events (transaction_id, global_position);

CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$fn$;
CREATE OR REPLACE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

CREATE TABLE IF NOT EXISTS snapshots (
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    state_version INT NOT NULL,
    state BYTEA NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    transaction_id BIGINT NOT NULL,
    global_position BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS processed_events (
    consumer TEXT NOT NULL,
    event_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer TEXT NOT NULL,
    event_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INT NOT NULL,
    envelope BYTEA NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// The columns of an event row, in the order `decode_row` reads them.
macro_rules! event_columns {
    () => {
        "global_position, event_id, stream_type, stream_id, stream_version, \
             event_type, schema_version, payload, metadata::text, transaction_id::text::int8, \
             (extract(epoch from recorded_at) * 1000000)::int8"
    };
}

/// What an insert did, short of an error that aborts its transaction.
pub(crate) enum Inserted {
    Recorded(Vec<RecordedEvent>),
    /// One of the event ids is stored already: nothing was inserted.
    Duplicate,
    /// The stream is at this version, not the expected one: nothing was inserted.
    Conflict(u64),
}

pub(crate) struct PgLog {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
}

/// How long a transaction may sit idle (its client silent between statements) before the
/// server aborts it, in milliseconds; see [`set_idle_in_transaction_timeout`].
static IDLE_IN_TRANSACTION_MS: AtomicU64 = AtomicU64::new(600_000);

/// How long a transaction of this process may sit idle before Postgres aborts it, for every
/// pool opened from now on. A process frozen inside a transaction (SIGSTOP, a hung host)
/// otherwise holds back every gap-safe reader on the cluster, and any lease whose fenced
/// write it was in, for as long as it stays frozen. Ten minutes unless set
/// (`SWITCHBOARD_DATABASE_IDLE_IN_TRANSACTION_SECS`); it must exceed the longest outside
/// call a handler makes inside its transaction.
pub fn set_idle_in_transaction_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    IDLE_IN_TRANSACTION_MS.store(ms, Ordering::Relaxed);
}

/// How long a call waits for a pooled connection (or a new one) before the store counts
/// as unreachable, in milliseconds; see [`set_acquire_timeout`].
static ACQUIRE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(5_000);

/// How long a call waits for a Postgres connection before it fails (and the service
/// answers `UNAVAILABLE`), for every pool this process opens from now on. Five seconds
/// unless set (`SWITCHBOARD_DATABASE_ACQUIRE_TIMEOUT_SECS`).
pub fn set_acquire_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    ACQUIRE_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

impl PgLog {
    pub(crate) async fn connect(url: &str, schema: &str) -> Result<Self, EventLogError> {
        validate_schema(schema)?;
        let idle = format!("{}ms", IDLE_IN_TRANSACTION_MS.load(Ordering::Relaxed));
        let options = PgConnectOptions::from_str(url)?
            .options([
                ("search_path", schema),
                // The server aborts a transaction left idle this long; the process's next
                // statement fails and is retried like any lost connection.
                ("idle_in_transaction_session_timeout", idle.as_str()),
            ])
            .application_name("switchboard");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_millis(
                ACQUIRE_TIMEOUT_MS.load(Ordering::Relaxed),
            ))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
    }

    pub(crate) async fn migrate(&self, extra: &str) -> Result<(), EventLogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('switchboard:migrate'))")
            .execute(&mut *tx)
            .await?;
        // The schema name was validated as a plain identifier in `connect`.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\";\n{MIGRATION}\n{extra}",
            self.schema
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns the already-stored events among `ids`, for idempotent retries.
    pub(crate) async fn find_events(
        conn: &mut PgConnection,
        ids: &[Uuid],
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE event_id = ANY($1) ORDER BY global_position"
        );
        let rows = sqlx::query(sql).bind(ids).fetch_all(conn).await?;
        rows.iter().map(decode_row).collect()
    }

    /// Checks the expected version and inserts the batch. Returns `Ok(None)` when one of the
    /// event ids is already stored (a retried request); the caller then returns the stored
    /// events instead.
    pub(crate) async fn insert(
        conn: &mut PgConnection,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<Vec<RecordedEvent>>, EventLogError> {
        match Self::try_insert(conn, stream, expected, events).await {
            Ok(Inserted::Recorded(recorded)) => Ok(Some(recorded)),
            Ok(Inserted::Duplicate) => Ok(None),
            Ok(Inserted::Conflict(actual)) => Err(conflict(stream, expected, actual)),
            Err(EventLogError::Database(sqlx::Error::Database(db)))
                if db.constraint() == Some("events_event_id_unique") =>
            {
                Ok(None)
            }
            Err(EventLogError::Database(sqlx::Error::Database(db)))
                if db.constraint() == Some("events_stream_version_unique") =>
            {
                Err(conflict(stream, expected, expected.as_u64() + 1))
            }
            Err(e) => Err(e),
        }
    }

    /// [`PgLog::insert`] telling apart what leaves the transaction usable (a duplicate, a
    /// version the statement itself found stale) from what aborts it (`Err`: any database
    /// error, a racing writer's unique key included).
    pub(crate) async fn try_insert(
        conn: &mut PgConnection,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Inserted, EventLogError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let first = expected.as_u64() as i64;
        let versions: Vec<i64> = (1..=events.len() as i64).map(|i| first + i).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let schema_versions: Vec<i32> = events.iter().map(|e| e.schema_version as i32).collect();
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
        let metadata: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata))
            .collect::<Result<_, _>>()
            .map_err(|e| EventLogError::Invalid {
                field: "metadata",
                reason: e.to_string(),
            })?;
        // One round trip: check the version and the ids, and insert only if both allow it.
        // A writer racing between the check and the insert hits the unique constraints.
        let inserted = sqlx::query(
            "WITH state AS (
                 SELECT (SELECT max(stream_version) FROM events
                         WHERE stream_type = $1 AND stream_id = $2) AS current,
                        EXISTS (SELECT 1 FROM events WHERE event_id = ANY($3)) AS duplicate
             ), inserted AS (
                 INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
                                     schema_version, payload, metadata)
                 SELECT e, $1, $2, v, t, s, p, m::jsonb
                 FROM UNNEST($3::uuid[], $4::int8[], $5::text[], $6::int4[], $7::bytea[],
                             $8::text[]) AS u(e, v, t, s, p, m), state
                 WHERE NOT state.duplicate AND coalesce(state.current, 0) = $9
                 ORDER BY v
                 RETURNING stream_version, global_position, transaction_id::text::int8,
                           (extract(epoch from recorded_at) * 1000000)::int8
             )
             SELECT state.current, state.duplicate, inserted.*
             FROM state LEFT JOIN inserted ON true",
        )
        .bind(&stream.stream_type)
        .bind(&stream.stream_id)
        .bind(&ids)
        .bind(&versions)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(first)
        .fetch_all(&mut *conn)
        .await?;
        let rows = inserted;
        let Some(head) = rows.first() else {
            return Err(EventLogError::Invalid {
                field: "append",
                reason: "the append statement returned no row".into(),
            });
        };
        if head.try_get::<bool, _>(1)? {
            return Ok(Inserted::Duplicate);
        }
        let current = head.try_get::<Option<i64>, _>(0)?.unwrap_or(0) as u64;
        if current != expected.as_u64() {
            return Ok(Inserted::Conflict(current));
        }

        let mut recorded = Vec::with_capacity(events.len());
        for (event, row) in events.iter().zip(sort_by_version(rows)?) {
            recorded.push(RecordedEvent {
                event_id: event.event_id,
                stream: stream.clone(),
                stream_version: row.0 as u64,
                global_position: row.1,
                transaction_id: row.2 as u64,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                payload: event.payload.clone(),
                metadata: event.metadata.clone(),
                recorded_at: row.3,
            });
        }
        Ok(Inserted::Recorded(recorded))
    }

    pub(crate) async fn read_stream(
        &self,
        stream: &StreamRef,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events
             WHERE stream_type = $1 AND stream_id = $2 AND stream_version > $3
             ORDER BY stream_version LIMIT $4"
        );
        let rows = sqlx::query(sql)
            .bind(&stream.stream_type)
            .bind(&stream.stream_id)
            .bind(after_version as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Events after `after`, in `(transaction_id, global_position)` order, from transactions
    /// that finished before every still-running one began: an event that commits late is
    /// held back until it is visible, never skipped.
    pub(crate) async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events
             WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
               AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY transaction_id, global_position LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Events after `after_position` in position order, inside a transaction that has locked
    /// out writers (used by rebuilds, where every event is already committed).
    pub(crate) async fn read_committed(
        conn: &mut PgConnection,
        after_position: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE global_position > $1
             ORDER BY global_position LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(after_position)
            .bind(limit as i64)
            .fetch_all(conn)
            .await?;
        rows.iter().map(decode_row).collect()
    }
}

/// The inserted rows' `(stream_version, global_position, transaction_id, recorded_at)`,
/// which follow the version and duplicate columns.
fn sort_by_version(rows: Vec<PgRow>) -> Result<Vec<(i64, i64, i64, i64)>, EventLogError> {
    let mut out = rows
        .iter()
        .map(|r| Ok((r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    out.sort_by_key(|r| r.0);
    Ok(out)
}

fn conflict(stream: &StreamRef, expected: ExpectedVersion, actual: u64) -> EventLogError {
    EventLogError::Conflict {
        stream: stream.to_string(),
        expected: expected.to_string(),
        actual,
    }
}

fn decode_row(row: &PgRow) -> Result<RecordedEvent, EventLogError> {
    let metadata_json: String = row.try_get(8)?;
    let event_id: Uuid = row.try_get(1)?;
    let event_type: String = row.try_get(5)?;
    let metadata: Metadata =
        serde_json::from_str(&metadata_json).map_err(|e| EventLogError::Corrupt {
            event_id: event_id.to_string(),
            event_type: event_type.clone(),
            reason: format!("metadata: {e}"),
        })?;
    Ok(RecordedEvent {
        global_position: row.try_get(0)?,
        event_id,
        stream: StreamRef::new(row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?),
        stream_version: row.try_get::<i64, _>(4)? as u64,
        event_type,
        schema_version: row.try_get::<i32, _>(6)? as u32,
        payload: row.try_get(7)?,
        metadata,
        transaction_id: row.try_get::<i64, _>(9)? as u64,
        recorded_at: row.try_get(10)?,
    })
}

/// Schema names are spliced into DDL, so only plain lowercase identifiers are accepted.
fn validate_schema(schema: &str) -> Result<(), EventLogError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(EventLogError::Invalid {
            field: "schema",
            reason: format!("`{schema}` is not a lowercase identifier of at most 63 characters"),
        })
    }
}
