//! The SQLite backend for embedded mode: one file per service in WAL mode, one writer
//! connection (so appends are serialized and positions commit in order), many readers.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::EventLogError;
use crate::event::{
    ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamRef, now_micros,
};
use crate::store::{DeadLetter, Snapshot};

const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL UNIQUE,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload BLOB NOT NULL,
    metadata TEXT NOT NULL,
    transaction_id INTEGER NOT NULL DEFAULT 0,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_type, stream_id, stream_version)
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only: UPDATE on events refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only: DELETE on events refused'); END;

CREATE TABLE IF NOT EXISTS snapshots (
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    state_version INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    transaction_id INTEGER NOT NULL,
    global_position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_events (
    consumer TEXT NOT NULL,
    event_id BLOB NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer TEXT NOT NULL,
    event_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    failed_at INTEGER NOT NULL
);
"#;

/// The columns of an event row, in the order `decode_row` reads them.
macro_rules! event_columns {
    () => {
        "global_position, event_id, stream_type, stream_id, stream_version, \
             event_type, schema_version, payload, metadata, transaction_id, recorded_at"
    };
}

pub(crate) struct SqliteLog {
    /// The single writer: every append goes through it, so positions commit in order.
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

impl SqliteLog {
    pub(crate) async fn open(path: &Path) -> Result<Self, EventLogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EventLogError::Invalid {
                field: "data_dir",
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a killed process; only power loss can lose the
            // last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self { writer, reader })
    }

    pub(crate) async fn migrate(&self, extra: &str) -> Result<(), EventLogError> {
        let mut tx = self.writer.begin().await?;
        sqlx::raw_sql(MIGRATION).execute(&mut *tx).await?;
        if !extra.trim().is_empty() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(extra.to_owned()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn find_events(
        conn: &mut SqliteConnection,
        ids: &[Uuid],
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE event_id = $1"
        );
        let mut found = Vec::new();
        for id in ids {
            if let Some(row) = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await? {
                found.push(decode_row(&row)?);
            }
        }
        found.sort_by_key(|e| e.global_position);
        Ok(found)
    }

    pub(crate) async fn insert(
        conn: &mut SqliteConnection,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<Vec<RecordedEvent>>, EventLogError> {
        for event in events {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT global_position FROM events WHERE event_id = $1")
                    .bind(event.event_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if exists.is_some() {
                return Ok(None);
            }
        }
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT max(stream_version) FROM events WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(&stream.stream_type)
        .bind(&stream.stream_id)
        .fetch_one(&mut *conn)
        .await?;
        let current = current.unwrap_or(0) as u64;
        if current != expected.as_u64() {
            return Err(EventLogError::Conflict {
                stream: stream.to_string(),
                expected: expected.to_string(),
                actual: current,
            });
        }
        let recorded_at = now_micros();
        let mut recorded = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let version = current + 1 + i as u64;
            let metadata =
                serde_json::to_string(&event.metadata).map_err(|e| EventLogError::Invalid {
                    field: "metadata",
                    reason: e.to_string(),
                })?;
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
                                     schema_version, payload, metadata, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING global_position",
            )
            .bind(event.event_id)
            .bind(&stream.stream_type)
            .bind(&stream.stream_id)
            .bind(version as i64)
            .bind(&event.event_type)
            .bind(event.schema_version as i64)
            .bind(&event.payload)
            .bind(metadata)
            .bind(recorded_at)
            .fetch_one(&mut *conn)
            .await?;
            recorded.push(RecordedEvent {
                event_id: event.event_id,
                stream: stream.clone(),
                stream_version: version,
                global_position: position,
                transaction_id: 0,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                payload: event.payload.clone(),
                metadata: event.metadata.clone(),
                recorded_at,
            });
        }
        Ok(Some(recorded))
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
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// With one writer, positions commit in order: the position alone is gap-safe.
    pub(crate) async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventLogError> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE global_position > $1
             ORDER BY global_position LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(after.global_position)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    pub(crate) async fn read_committed(
        conn: &mut SqliteConnection,
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

    pub(crate) async fn load_snapshot(
        &self,
        stream: &StreamRef,
        state_version: u32,
    ) -> Result<Option<Snapshot>, EventLogError> {
        let row = sqlx::query(
            "SELECT stream_version, state_version, state FROM snapshots
             WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(&stream.stream_type)
        .bind(&stream.stream_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<i64, _>(1)? as u32 != state_version {
            sqlx::query("DELETE FROM snapshots WHERE stream_type = $1 AND stream_id = $2")
                .bind(&stream.stream_type)
                .bind(&stream.stream_id)
                .execute(&self.writer)
                .await?;
            return Ok(None);
        }
        Ok(Some(Snapshot {
            stream_version: row.try_get::<i64, _>(0)? as u64,
            state: row.try_get(2)?,
        }))
    }

    pub(crate) async fn save_snapshot(
        &self,
        stream: &StreamRef,
        stream_version: u64,
        state_version: u32,
        state: &[u8],
    ) -> Result<(), EventLogError> {
        sqlx::query(
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
        .bind(state_version as i64)
        .bind(state)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub(crate) async fn checkpoint(&self, name: &str) -> Result<LogPosition, EventLogError> {
        let row =
            sqlx::query("SELECT transaction_id, global_position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?;
        Ok(match row {
            Some(row) => LogPosition {
                transaction_id: row.try_get::<i64, _>(0)? as u64,
                global_position: row.try_get(1)?,
            },
            None => LogPosition::START,
        })
    }

    pub(crate) async fn save_checkpoint(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<(), EventLogError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, transaction_id, global_position) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id,
                 global_position = excluded.global_position
             WHERE (checkpoints.transaction_id, checkpoints.global_position)
                 < (excluded.transaction_id, excluded.global_position)",
        )
        .bind(name)
        .bind(position.transaction_id as i64)
        .bind(position.global_position)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub(crate) async fn mark_processed(
        conn: &mut SqliteConnection,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, EventLogError> {
        let done = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn insert_dead_letter(
        conn: &mut SqliteConnection,
        letter: &DeadLetter,
    ) -> Result<(), EventLogError> {
        sqlx::query(
            "INSERT INTO dead_letters (consumer, event_id, event_type, stream_id, reason, attempts,
                                       envelope, failed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&letter.consumer)
        .bind(letter.event_id)
        .bind(&letter.event_type)
        .bind(&letter.stream_id)
        .bind(&letter.reason)
        .bind(letter.attempts as i64)
        .bind(&letter.envelope)
        .bind(now_micros())
        .execute(conn)
        .await?;
        Ok(())
    }

    pub(crate) async fn dead_letters(
        &self,
        consumer: &str,
    ) -> Result<Vec<DeadLetter>, EventLogError> {
        let rows = sqlx::query(
            "SELECT consumer, event_id, event_type, stream_id, reason, attempts, envelope
             FROM dead_letters WHERE consumer = $1 ORDER BY id",
        )
        .bind(consumer)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    consumer: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    stream_id: row.try_get(3)?,
                    reason: row.try_get(4)?,
                    attempts: row.try_get::<i64, _>(5)? as u32,
                    envelope: row.try_get(6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn count_events(&self) -> Result<u64, EventLogError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.reader)
            .await?;
        Ok(n as u64)
    }
}

fn decode_row(row: &SqliteRow) -> Result<RecordedEvent, EventLogError> {
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
        schema_version: row.try_get::<i64, _>(6)? as u32,
        payload: row.try_get(7)?,
        metadata,
        transaction_id: row.try_get::<i64, _>(9)? as u64,
        recorded_at: row.try_get(10)?,
    })
}
