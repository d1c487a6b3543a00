//! The webhooks read models, kept inline with the log: endpoints (for matching events),
//! messages (status, next attempt, ordered-lane sequence: the durable timers the
//! dispatcher follows), lanes (the last sequence per endpoint and conversation) and the
//! attempts log. All of it can be dropped and rebuilt from the log.

use async_trait::async_trait;
use prost::Message as _;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, micros, on_conn, on_pool, timestamp,
};
use switchboard_proto::webhooks::v1::{
    Attempt, AttemptOutcome, EndpointChanged, MessageCreated, MessageDeferred, MessageFailed,
    MessageStatus, MessageSuperseded, ResendRequested, WebhookMessage,
};

use crate::domain::event_types as t;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS endpoints (
    workspace_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    ordered INTEGER NOT NULL,
    coalesce INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    failing_since BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, endpoint_id)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    status INTEGER NOT NULL,
    attempts BIGINT NOT NULL,
    round_attempts BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    superseded_by TEXT NOT NULL,
    last_error TEXT NOT NULL,
    payload TEXT NOT NULL,
    stream_version BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS messages_by_endpoint ON messages (workspace_id, endpoint_id, created_at);
CREATE INDEX IF NOT EXISTS messages_by_lane ON messages (endpoint_id, conversation_id, sequence);
CREATE TABLE IF NOT EXISTS lanes (
    endpoint_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    workspace_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    outcome INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (message_id, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_by_endpoint ON attempts (workspace_id, endpoint_id, attempted_at);
CREATE TABLE IF NOT EXISTS message_traces (
    message_id TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL
);
";

pub fn read_model_ddl() -> (String, String) {
    (DDL.replace("BLOB", "BYTEA"), DDL.to_owned())
}

const PENDING: i32 = MessageStatus::Pending as i32;
const DELIVERED: i32 = MessageStatus::Delivered as i32;
const FAILED: i32 = MessageStatus::Failed as i32;
const SUPERSEDED: i32 = MessageStatus::Superseded as i32;

pub struct WebhooksProjection;

async fn exec(tx: &mut Tx<'_>, sql: &str, binds: &[Bind<'_>]) -> Result<u64, EventLogError> {
    Ok(on_conn!(tx, conn => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(*s),
                Bind::Int(i) => q.bind(*i),
                Bind::Bytes(b) => q.bind(*b),
            };
        }
        q.execute(&mut *conn).await.map(|r| r.rows_affected())
    })?)
}

enum Bind<'a> {
    Text(&'a str),
    Int(i64),
    Bytes(&'a [u8]),
}
use Bind::{Bytes, Int, Text};

#[async_trait]
impl Projection for WebhooksProjection {
    fn name(&self) -> &str {
        "webhooks"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for event in events {
            let ws = event.workspace_id();
            let message_id = event
                .stream
                .stream_id
                .rsplit('/')
                .next()
                .unwrap_or_default();
            match event.event_type.as_str() {
                kind if t::is_endpoint_change(kind) => {
                    let Some(e) = event.decode::<EndpointChanged>()?.endpoint else {
                        continue;
                    };
                    let types = serde_json::to_string(&e.event_types).unwrap_or_default();
                    exec(
                        tx,
                        "INSERT INTO endpoints (workspace_id, endpoint_id, url, event_types, enabled,
                             deleted, ordered, coalesce, created_at, failing_since, version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)
                         ON CONFLICT (workspace_id, endpoint_id) DO UPDATE SET
                             url = excluded.url, event_types = excluded.event_types,
                             version = excluded.version,
                             enabled = excluded.enabled, deleted = excluded.deleted,
                             ordered = excluded.ordered, coalesce = excluded.coalesce,
                             failing_since = CASE WHEN excluded.enabled = 1 AND endpoints.enabled = 0
                                 THEN 0 ELSE endpoints.failing_since END",
                        &[
                            Text(ws),
                            Text(&e.id),
                            Text(&e.url),
                            Text(&types),
                            Int(e.enabled.into()),
                            Int(e.deleted.into()),
                            Int(e.ordered.into()),
                            Int(e.coalesce.into()),
                            Int(e.created_at.map(|t| micros(&t)).unwrap_or_default()),
                            Int(event.stream_version as i64),
                        ],
                    )
                    .await?;
                }
                t::MESSAGE_CREATED => {
                    let m: MessageCreated = event.decode()?;
                    let sequence: i64 = if m.conversation_id.is_empty() {
                        0
                    } else {
                        let sql = "INSERT INTO lanes (endpoint_id, conversation_id, last_sequence)
                                   VALUES ($1, $2, 1)
                                   ON CONFLICT (endpoint_id, conversation_id)
                                   DO UPDATE SET last_sequence = lanes.last_sequence + 1
                                   RETURNING last_sequence";
                        on_conn!(tx, conn => sqlx::query_scalar(sql)
                            .bind(&m.endpoint_id)
                            .bind(&m.conversation_id)
                            .fetch_one(&mut *conn)
                            .await)?
                    };
                    let created = m.created_at.map(|t| micros(&t)).unwrap_or_default();
                    exec(
                        tx,
                        "INSERT INTO messages (message_id, workspace_id, endpoint_id, event_type,
                             event_id, conversation_id, sequence, status, attempts, round_attempts,
                             created_at, next_attempt_at, superseded_by, last_error, payload,
                             stream_version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $9, '', '', $10, $11)
                         ON CONFLICT (message_id) DO NOTHING",
                        &[
                            Text(&m.message_id),
                            Text(ws),
                            Text(&m.endpoint_id),
                            Text(&m.event_type),
                            Text(&m.event_id),
                            Text(&m.conversation_id),
                            Int(sequence),
                            Int(PENDING.into()),
                            Int(created),
                            Text(&m.payload_json),
                            Int(event.stream_version as i64),
                        ],
                    )
                    .await?;
                    // The trace the delivery continues: the fan-out's, of the event's.
                    if !event.metadata.traceparent.is_empty() {
                        exec(
                            tx,
                            "INSERT INTO message_traces (message_id, traceparent) VALUES ($1, $2)
                             ON CONFLICT (message_id) DO NOTHING",
                            &[Text(&m.message_id), Text(&event.metadata.traceparent)],
                        )
                        .await?;
                    }
                }
                t::MESSAGE_ATTEMPTED => {
                    let a: Attempt = event.decode()?;
                    let at = a.attempted_at.map(|t| micros(&t)).unwrap_or_default();
                    let next = a.next_attempt_at.map(|t| micros(&t)).unwrap_or(at);
                    let outcome = a.outcome();
                    let status = match outcome {
                        AttemptOutcome::Delivered => DELIVERED,
                        AttemptOutcome::Retry => PENDING,
                        _ => FAILED,
                    };
                    exec(
                        tx,
                        "INSERT INTO attempts (message_id, attempt, workspace_id, endpoint_id,
                             attempted_at, outcome, record)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (message_id, attempt) DO NOTHING",
                        &[
                            Text(&a.message_id),
                            Int(a.attempt.into()),
                            Text(ws),
                            Text(&a.endpoint_id),
                            Int(at),
                            Int(a.outcome.into()),
                            Bytes(&a.encode_to_vec()),
                        ],
                    )
                    .await?;
                    // A message superseded while its attempt was in flight stays superseded
                    // unless that attempt delivered it.
                    exec(
                        tx,
                        "UPDATE messages SET attempts = attempts + 1,
                             round_attempts = round_attempts + 1,
                             status = CASE WHEN status = $2 AND $3 <> $4 THEN status ELSE $3 END,
                             next_attempt_at = $5, last_error = $6, stream_version = $7
                         WHERE message_id = $1",
                        &[
                            Text(&a.message_id),
                            Int(SUPERSEDED.into()),
                            Int(status.into()),
                            Int(DELIVERED.into()),
                            Int(next),
                            Text(&a.error),
                            Int(event.stream_version as i64),
                        ],
                    )
                    .await?;
                    // Only a change of state writes the endpoint's row, so concurrent
                    // deliveries to a healthy endpoint do not queue on its row lock.
                    let (set, unless) = if outcome == AttemptOutcome::Delivered {
                        ("0", "failing_since <> 0")
                    } else {
                        ("$3", "failing_since = 0")
                    };
                    exec(
                        tx,
                        &format!(
                            "UPDATE endpoints SET failing_since = {set}
                             WHERE workspace_id = $1 AND endpoint_id = $2 AND {unless}"
                        ),
                        &[Text(ws), Text(&a.endpoint_id), Int(at)],
                    )
                    .await?;
                }
                t::MESSAGE_DEFERRED => {
                    exec(
                        tx,
                        "UPDATE messages SET stream_version = $2 WHERE message_id = $1",
                        &[Text(message_id), Int(event.stream_version as i64)],
                    )
                    .await?;
                    let d: MessageDeferred = event.decode()?;
                    let next = d.next_attempt_at.map(|t| micros(&t)).unwrap_or_default();
                    exec(
                        tx,
                        "UPDATE messages SET next_attempt_at = $2, last_error = $3
                         WHERE message_id = $1 AND status = $4",
                        &[
                            Text(message_id),
                            Int(next),
                            Text(&d.reason),
                            Int(PENDING.into()),
                        ],
                    )
                    .await?;
                }
                t::MESSAGE_FAILED => {
                    exec(
                        tx,
                        "UPDATE messages SET stream_version = $2 WHERE message_id = $1",
                        &[Text(message_id), Int(event.stream_version as i64)],
                    )
                    .await?;
                    let f: MessageFailed = event.decode()?;
                    exec(
                        tx,
                        "UPDATE messages SET status = $2, last_error = $3
                         WHERE message_id = $1 AND status = $4",
                        &[
                            Text(message_id),
                            Int(FAILED.into()),
                            Text(&f.reason),
                            Int(PENDING.into()),
                        ],
                    )
                    .await?;
                }
                t::MESSAGE_SUPERSEDED => {
                    exec(
                        tx,
                        "UPDATE messages SET stream_version = $2 WHERE message_id = $1",
                        &[Text(message_id), Int(event.stream_version as i64)],
                    )
                    .await?;
                    let s: MessageSuperseded = event.decode()?;
                    exec(
                        tx,
                        "UPDATE messages SET status = $2, superseded_by = $3
                         WHERE message_id = $1 AND status = $4",
                        &[
                            Text(message_id),
                            Int(SUPERSEDED.into()),
                            Text(&s.superseded_by),
                            Int(PENDING.into()),
                        ],
                    )
                    .await?;
                }
                t::MESSAGE_RESEND_REQUESTED => {
                    let r: ResendRequested = event.decode()?;
                    let at = r.at.map(|t| micros(&t)).unwrap_or_default();
                    exec(
                        tx,
                        "UPDATE messages SET status = $2, round_attempts = 0, next_attempt_at = $3,
                             superseded_by = '', stream_version = $4
                         WHERE message_id = $1",
                        &[
                            Text(message_id),
                            Int(PENDING.into()),
                            Int(at),
                            Int(event.stream_version as i64),
                        ],
                    )
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        for table in [
            "endpoints",
            "messages",
            "lanes",
            "attempts",
            "message_traces",
        ] {
            exec(tx, &format!("DELETE FROM {table}"), &[]).await?;
        }
        Ok(())
    }
}

/// An endpoint as matching sees it.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub endpoint_id: String,
    pub event_types: Vec<String>,
    pub coalesce: bool,
    pub failing_since: i64,
}

/// A message whose attempt is due.
#[derive(Debug, Clone)]
pub struct Due {
    pub message_id: String,
    pub workspace_id: String,
    pub endpoint_id: String,
    pub conversation_id: String,
    pub sequence: i64,
    pub attempts: i64,
    pub round_attempts: i64,
    pub payload: String,
    pub ordered: bool,
    /// The message stream's version, for the next append.
    pub stream_version: i64,
    /// The endpoint's stream version: a cache of it is current while this matches.
    pub endpoint_version: i64,
    /// The W3C trace context the message was created in (empty: none).
    pub traceparent: String,
}

type MessageRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i32,
    i64,
    i64,
    i64,
    String,
    String,
    String,
);

const MESSAGE_COLUMNS: &str = "message_id, workspace_id, endpoint_id, event_type, event_id,
    conversation_id, sequence, status, attempts, created_at, next_attempt_at, superseded_by,
    last_error, payload";

fn message_from(row: MessageRow) -> WebhookMessage {
    let (
        id,
        ws,
        ep,
        event_type,
        event_id,
        conv,
        seq,
        status,
        attempts,
        created,
        next,
        sup,
        err,
        payload,
    ) = row;
    WebhookMessage {
        id,
        workspace_id: ws,
        endpoint_id: ep,
        event_type,
        event_id,
        payload_json: payload,
        conversation_id: conv,
        sequence: seq as u64,
        status,
        attempts: attempts as u32,
        created_at: Some(timestamp(created)),
        next_attempt_at: (status == PENDING).then(|| timestamp(next)),
        superseded_by: sup,
        last_error: err,
    }
}

/// Filters of a message listing.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub endpoint_id: String,
    pub status: i32,
    pub since: i64,
    pub until: i64,
}

/// Filters of an attempts listing.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub endpoint_id: String,
    pub message_id: String,
    pub outcome: i32,
    pub since: i64,
    pub until: i64,
}

#[derive(Clone)]
pub struct WebhooksStore {
    log: EventLog,
}

impl WebhooksStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// The enabled endpoints of a workspace.
    pub async fn live_endpoints(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<EndpointRow>, EventLogError> {
        let rows: Vec<(String, String, i32, i64)> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT endpoint_id, event_types, coalesce, failing_since FROM endpoints
             WHERE workspace_id = $1 AND enabled = 1 AND deleted = 0 ORDER BY endpoint_id",
        )
        .bind(workspace_id)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(endpoint_id, types, coalesce, failing_since)| EndpointRow {
                    endpoint_id,
                    event_types: serde_json::from_str(&types).unwrap_or_default(),
                    coalesce: coalesce == 1,
                    failing_since,
                },
            )
            .collect())
    }

    pub async fn count_endpoints(&self, workspace_id: &str) -> Result<u64, EventLogError> {
        let n: i64 = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM endpoints WHERE workspace_id = $1 AND deleted = 0",
        )
        .bind(workspace_id)
        .fetch_one(pool)
        .await)?;
        Ok(n as u64)
    }

    /// Endpoint ids of a workspace after `after`, in id order.
    pub async fn endpoint_ids(
        &self,
        workspace_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT endpoint_id FROM endpoints
             WHERE workspace_id = $1 AND deleted = 0 AND endpoint_id > $2
             ORDER BY endpoint_id LIMIT $3",
        )
        .bind(workspace_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    /// Pending messages due at `now`, oldest due first. For an ordered endpoint only the
    /// head of each conversation's lane is due: later messages wait for it to settle.
    pub async fn due(&self, now: i64, limit: u32) -> Result<Vec<Due>, EventLogError> {
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            String,
            i32,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT m.message_id, m.workspace_id, m.endpoint_id, m.conversation_id, m.sequence,
                    m.attempts, m.round_attempts, m.payload, e.ordered, m.stream_version, e.version,
                    t.traceparent
             FROM messages m
             JOIN endpoints e ON e.workspace_id = m.workspace_id AND e.endpoint_id = m.endpoint_id
             LEFT JOIN message_traces t ON t.message_id = m.message_id
             WHERE m.status = $1 AND m.next_attempt_at <= $2
               AND (e.ordered = 0 OR m.conversation_id = '' OR NOT EXISTS (
                   SELECT 1 FROM messages p
                   WHERE p.endpoint_id = m.endpoint_id AND p.conversation_id = m.conversation_id
                     AND p.status = $1 AND p.sequence < m.sequence))
             ORDER BY m.next_attempt_at, m.message_id
             LIMIT $3",
        )
        .bind(PENDING)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    message_id,
                    workspace_id,
                    endpoint_id,
                    conversation_id,
                    sequence,
                    attempts,
                    round_attempts,
                    payload,
                    ordered,
                    stream_version,
                    endpoint_version,
                    traceparent,
                )| Due {
                    message_id,
                    workspace_id,
                    endpoint_id,
                    conversation_id,
                    sequence,
                    attempts,
                    round_attempts,
                    payload,
                    ordered: ordered == 1,
                    stream_version,
                    endpoint_version,
                    traceparent: traceparent.unwrap_or_default(),
                },
            )
            .collect())
    }

    pub async fn message(
        &self,
        workspace_id: &str,
        message_id: &str,
    ) -> Result<Option<WebhookMessage>, EventLogError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE workspace_id = $1 AND message_id = $2"
        );
        let row: Option<MessageRow> = on_pool!(self.log, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(workspace_id)
            .bind(message_id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(message_from))
    }

    /// Messages newest first, after the cursor `(created_at, message_id)`.
    pub async fn messages(
        &self,
        workspace_id: &str,
        filter: &MessageFilter,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<WebhookMessage>, EventLogError> {
        let (before_at, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE workspace_id = $1
               AND ($2 = '' OR endpoint_id = $2)
               AND ($3 = 0 OR status = $3)
               AND created_at >= $4 AND created_at < $5
               AND (created_at < $6 OR (created_at = $6 AND message_id < $7))
             ORDER BY created_at DESC, message_id DESC LIMIT $8"
        );
        let rows: Vec<MessageRow> = on_pool!(self.log, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(workspace_id)
            .bind(&filter.endpoint_id)
            .bind(filter.status)
            .bind(filter.since)
            .bind(if filter.until == 0 { i64::MAX } else { filter.until })
            .bind(before_at)
            .bind(&before_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(message_from).collect())
    }

    /// Attempts newest first, after the cursor `(attempted_at, message_id, attempt)`.
    pub async fn attempts(
        &self,
        workspace_id: &str,
        filter: &AttemptFilter,
        before: Option<(i64, String, i64)>,
        limit: u32,
    ) -> Result<Vec<Attempt>, EventLogError> {
        let (before_at, before_id, before_n) = before.unwrap_or((i64::MAX, String::new(), 0));
        let records: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT record FROM attempts
             WHERE workspace_id = $1
               AND ($2 = '' OR endpoint_id = $2)
               AND ($3 = '' OR message_id = $3)
               AND ($4 = 0 OR outcome = $4)
               AND attempted_at >= $5 AND attempted_at < $6
               AND (attempted_at < $7
                    OR (attempted_at = $7 AND (message_id < $8 OR (message_id = $8 AND attempt < $9))))
             ORDER BY attempted_at DESC, message_id DESC, attempt DESC LIMIT $10",
        )
        .bind(workspace_id)
        .bind(&filter.endpoint_id)
        .bind(&filter.message_id)
        .bind(filter.outcome)
        .bind(filter.since)
        .bind(if filter.until == 0 { i64::MAX } else { filter.until })
        .bind(before_at)
        .bind(&before_id)
        .bind(before_n)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        records
            .into_iter()
            .map(|r| {
                Attempt::decode(r.as_slice()).map_err(|e| EventLogError::Projection {
                    name: "webhooks".into(),
                    reason: format!("an attempts row does not decode: {e}"),
                })
            })
            .collect()
    }

    /// Failed messages of an endpoint created since `since`, oldest first, after the
    /// cursor `(created_at, message_id)`.
    pub async fn failed_since(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
        since: i64,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<(i64, String)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT created_at, message_id FROM messages
             WHERE workspace_id = $1 AND endpoint_id = $2 AND status = $3 AND created_at >= $4
               AND (created_at > $5 OR (created_at = $5 AND message_id > $6))
             ORDER BY created_at, message_id LIMIT $7",
        )
        .bind(workspace_id)
        .bind(endpoint_id)
        .bind(FAILED)
        .bind(since)
        .bind(after.0)
        .bind(&after.1)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    pub async fn count_failed_since(
        &self,
        workspace_id: &str,
        endpoint_id: &str,
        since: i64,
    ) -> Result<u64, EventLogError> {
        let n: i64 = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages
             WHERE workspace_id = $1 AND endpoint_id = $2 AND status = $3 AND created_at >= $4",
        )
        .bind(workspace_id)
        .bind(endpoint_id)
        .bind(FAILED)
        .bind(since)
        .fetch_one(pool)
        .await)?;
        Ok(n as u64)
    }
}

/// Pending `conversation.updated` messages of a lane older than `sequence_below`, with
/// their stream versions: what a newer update supersedes when the endpoint coalesces.
/// Read in `tx`, which has just recorded the newer one.
pub async fn supersedable_in(
    tx: &mut Tx<'_>,
    endpoint_id: &str,
    conversation_id: &str,
    sequence_below: i64,
) -> Result<Vec<(String, i64)>, EventLogError> {
    Ok(on_conn!(tx, conn => sqlx::query_as(
        "SELECT message_id, stream_version FROM messages
         WHERE endpoint_id = $1 AND conversation_id = $2 AND status = $3
           AND event_type = 'conversation.updated' AND sequence < $4
         ORDER BY sequence",
    )
    .bind(endpoint_id)
    .bind(conversation_id)
    .bind(PENDING)
    .bind(sequence_below)
    .fetch_all(&mut *conn)
    .await)?)
}

/// The sequence a message got in its lane (0 outside lanes), read in `tx`.
pub async fn sequence_in(tx: &mut Tx<'_>, message_id: &str) -> Result<Option<i64>, EventLogError> {
    Ok(on_conn!(tx, conn => sqlx::query_scalar(
        "SELECT sequence FROM messages WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(&mut *conn)
    .await)?)
}
