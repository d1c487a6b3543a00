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
    failed_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
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
