//! The gateway's read models: `api_keys` (one row per key, kept by the projection of the
//! key rings; found by prefix on every request, so a revocation counts on every replica at
//! once) and two operational tables that are not event-sourced: keys' last use (written at
//! most once a minute per key) and `Idempotency-Key` records (the first answer to a POST,
//! kept 24 hours).

use async_trait::async_trait;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::gateway::v1::ApiKey;

use crate::domain::Event;

/// Read-model DDL; `{bytes}` is the binary column type of the backend.
const DDL: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    secret_hash {bytes} NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    rotated_from TEXT NOT NULL,
    rotated_to TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_workspace ON api_keys (workspace_id, created_at, id);
CREATE TABLE IF NOT EXISTS api_key_use (
    id TEXT PRIMARY KEY,
    last_used_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_windows (
    key_id TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
CREATE TABLE IF NOT EXISTS idempotency (
    workspace_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body {bytes} NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
";

/// The read models' DDL for Postgres and SQLite.
pub fn read_model_ddl() -> (String, String) {
    (
        DDL.replace("{bytes}", "BYTEA"),
        DDL.replace("{bytes}", "BLOB"),
    )
}

/// Keeps `api_keys` in step with the key rings.
pub struct GatewayProjection;

#[async_trait]
impl Projection for GatewayProjection {
    fn name(&self) -> &str {
        "gateway"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for recorded in events {
            match Event::decode(recorded)? {
                Some(Event::Created(created)) => {
                    if let Some(key) = created.key {
                        insert(tx, &key).await?;
                    }
                }
                Some(Event::Revoked(revoked)) => {
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1 WHERE id = $2",
                    )
                    .bind(revoked.revoked_at)
                    .bind(&revoked.id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                Some(Event::Rotated(rotated)) => {
                    let successor = rotated.successor.unwrap_or_default();
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE api_keys SET expires_at = $1, rotated_to = $2 WHERE id = $3",
                    )
                    .bind(rotated.expires_at)
                    .bind(&successor.id)
                    .bind(&rotated.id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                    insert(tx, &successor).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        on_conn!(tx, conn => sqlx::query("DELETE FROM api_keys")
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}

async fn insert(tx: &mut Tx<'_>, key: &ApiKey) -> Result<(), EventLogError> {
    let scopes = serde_json::to_string(&key.scopes).unwrap_or_else(|_| "[]".into());
    on_conn!(tx, conn => sqlx::query(
        "INSERT INTO api_keys (id, workspace_id, name, scopes, prefix, secret_hash, created_at,
             expires_at, revoked_at, created_by, rotated_from, rotated_to)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, '')
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&key.id)
    .bind(&key.workspace_id)
    .bind(&key.name)
    .bind(&scopes)
    .bind(&key.prefix)
    .bind(&key.secret_hash)
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(&key.created_by)
    .bind(&key.rotated_from)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// A key as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: i64,
    pub created_by: String,
    pub rotated_from: String,
    pub rotated_to: String,
    /// 0: never used.
    pub last_used_at: i64,
}

impl KeyRecord {
    /// Whether the key is refused at `now`.
    pub fn refused_at(&self, now: i64) -> bool {
        self.revoked_at != 0 || (self.expires_at != 0 && self.expires_at <= now)
    }
}

type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    Option<i64>,
);

const KEY_COLUMNS: &str = "k.id, k.workspace_id, k.name, k.scopes, k.prefix, k.secret_hash,
    k.created_at, k.expires_at, k.revoked_at, k.created_by, k.rotated_from, k.rotated_to,
    u.last_used_at";

fn record(row: KeyRow) -> KeyRecord {
    let (id, workspace_id, name, scopes, prefix, secret_hash, created_at, expires_at) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
    KeyRecord {
        id,
        workspace_id,
        name,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        prefix,
        secret_hash,
        created_at,
        expires_at,
        revoked_at: row.8,
        created_by: row.9,
        rotated_from: row.10,
        rotated_to: row.11,
        last_used_at: row.12.unwrap_or(0),
    }
}

/// A stored `Idempotency-Key` answer; status 0 while its request is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentAnswer {
    pub request_hash: String,
    pub status: u16,
    /// Headers replayed with it (`ETag`, `Location`, `Link`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Whether a request may run under an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// It is this request's now.
    Reserved,
    /// Another request has it: running (status 0) or answered.
    Taken(IdempotentAnswer),
}

/// A running request's reservation that is older than this (its process died) may be
/// taken over, in microseconds.
const RESERVATION_TTL: i64 = 5 * 60 * 1_000_000;

/// How long an `Idempotency-Key` answer is kept, in microseconds (24 hours, as Stripe).
pub const IDEMPOTENCY_TTL: i64 = 24 * 3600 * 1_000_000;
/// Last use is written at most this often per key, in microseconds.
const TOUCH_EVERY: i64 = 60 * 1_000_000;

/// Queries over the gateway's read models.
#[derive(Clone)]
pub struct GatewayStore {
    log: EventLog,
}

impl GatewayStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// The key with this public prefix, of any workspace.
    pub async fn by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, EventLogError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN api_key_use u ON u.id = k.id
             WHERE k.prefix = $1"
        );
        let row: Option<KeyRow> = on_pool!(self.log, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(prefix)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(record))
    }

    /// A workspace's key.
    pub async fn get(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<KeyRecord>, EventLogError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN api_key_use u ON u.id = k.id
             WHERE k.workspace_id = $1 AND k.id = $2"
        );
        let row: Option<KeyRow> = on_pool!(self.log, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(workspace_id)
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(record))
    }

    /// A page of a workspace's keys, newest first, after the key `after` (its
    /// `(created_at, id)`), and whether more follow.
    pub async fn list(
        &self,
        workspace_id: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<(Vec<KeyRecord>, bool), EventLogError> {
        let (created_at, id) = after.unwrap_or((i64::MAX, String::new()));
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN api_key_use u ON u.id = k.id
             WHERE k.workspace_id = $1
               AND (k.created_at < $2 OR (k.created_at = $2 AND k.id < $3))
             ORDER BY k.created_at DESC, k.id DESC
             LIMIT $4"
        );
        let rows: Vec<KeyRow> = on_pool!(self.log, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(workspace_id)
            .bind(created_at)
            .bind(&id)
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await)?;
        let more = rows.len() > limit as usize;
        Ok((
            rows.into_iter().take(limit as usize).map(record).collect(),
            more,
        ))
    }

    /// Records that key `id` was used at `now`, unless it was within the last minute.
    pub async fn touch(&self, id: &str, now: i64) -> Result<(), EventLogError> {
        on_pool!(self.log, pool => sqlx::query(
            "INSERT INTO api_key_use (id, last_used_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET last_used_at = excluded.last_used_at
             WHERE api_key_use.last_used_at < excluded.last_used_at - $3",
        )
        .bind(id)
        .bind(now)
        .bind(TOUCH_EVERY)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Counts one request of key `key_id` in the window starting at `window_start` and
    /// answers how many the key has made in it, this one included. Shared by every
    /// replica (one row per key and window); the key's older windows are dropped when a
    /// new one starts.
    pub async fn count_request(
        &self,
        key_id: &str,
        window_start: i64,
    ) -> Result<i64, EventLogError> {
        let requests: i64 = on_pool!(self.log, pool => sqlx::query_scalar(
            "INSERT INTO rate_windows (key_id, window_start, requests) VALUES ($1, $2, 1)
             ON CONFLICT (key_id, window_start)
             DO UPDATE SET requests = rate_windows.requests + 1
             RETURNING requests",
        )
        .bind(key_id)
        .bind(window_start)
        .fetch_one(pool)
        .await)?;
        if requests == 1 {
            on_pool!(self.log, pool => sqlx::query(
                "DELETE FROM rate_windows WHERE key_id = $1 AND window_start < $2",
            )
            .bind(key_id)
            .bind(window_start)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        }
        Ok(requests)
    }

    /// Reserves `key` for a request with `fingerprint`, or answers who has it. Expired
    /// answers (a day) and dead reservations (five minutes) give way; now and then the
    /// expired answers of every workspace are cleared.
    pub async fn reserve_idempotency_key(
        &self,
        workspace_id: &str,
        key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Reservation, EventLogError> {
        if rand::random::<u8>() == 0 {
            on_pool!(self.log, pool => sqlx::query(
                "DELETE FROM idempotency WHERE created_at <= $1",
            )
            .bind(now - IDEMPOTENCY_TTL)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        }
        on_pool!(self.log, pool => sqlx::query(
            "DELETE FROM idempotency WHERE workspace_id = $1 AND idempotency_key = $2
               AND (created_at <= $3 OR (status = 0 AND created_at <= $4))",
        )
        .bind(workspace_id)
        .bind(key)
        .bind(now - IDEMPOTENCY_TTL)
        .bind(now - RESERVATION_TTL)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        let inserted = on_pool!(self.log, pool => sqlx::query(
            "INSERT INTO idempotency (workspace_id, idempotency_key, request_hash, status,
                 headers, body, created_at)
             VALUES ($1, $2, $3, 0, '[]', $4, $5)
             ON CONFLICT (workspace_id, idempotency_key) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(key)
        .bind(fingerprint)
        .bind(Vec::<u8>::new())
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        if inserted == 1 {
            return Ok(Reservation::Reserved);
        }
        let row: Option<(String, i32, String, Vec<u8>)> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT request_hash, status, headers, body FROM idempotency
             WHERE workspace_id = $1 AND idempotency_key = $2",
        )
        .bind(workspace_id)
        .bind(key)
        .fetch_optional(pool)
        .await)?;
        Ok(match row {
            Some((request_hash, status, headers, body)) => Reservation::Taken(IdempotentAnswer {
                request_hash,
                status: u16::try_from(status).unwrap_or(500),
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                body,
            }),
            // Released between the insert and the read: the caller may try again.
            None => Reservation::Taken(IdempotentAnswer {
                request_hash: fingerprint.to_owned(),
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
            }),
        })
    }

    /// Gives `key` up: its request's answer is not kept, so a retry runs again.
    pub async fn release_idempotency_key(
        &self,
        workspace_id: &str,
        key: &str,
    ) -> Result<(), EventLogError> {
        on_pool!(self.log, pool => sqlx::query(
            "DELETE FROM idempotency WHERE workspace_id = $1 AND idempotency_key = $2
               AND status = 0",
        )
        .bind(workspace_id)
        .bind(key)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Keeps the answer of the request that reserved `key`.
    pub async fn keep_answer(
        &self,
        workspace_id: &str,
        key: &str,
        answer: &IdempotentAnswer,
    ) -> Result<(), EventLogError> {
        let headers = serde_json::to_string(&answer.headers).unwrap_or_else(|_| "[]".into());
        on_pool!(self.log, pool => sqlx::query(
            "UPDATE idempotency SET status = $3, headers = $4, body = $5
             WHERE workspace_id = $1 AND idempotency_key = $2 AND request_hash = $6",
        )
        .bind(workspace_id)
        .bind(key)
        .bind(i32::from(answer.status))
        .bind(&headers)
        .bind(&answer.body)
        .bind(&answer.request_hash)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
