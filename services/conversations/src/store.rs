//! The conversations read model: one row per conversation and one per message, kept by an
//! inline projection of the public events (each carries the conversation as it now is),
//! and the paginated queries over it.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::events::v1::{
    Conversation, ConversationCreatedEvent, ConversationEndedEvent, ConversationUpdatedEvent,
    Message, MessageCreatedEvent,
};

use crate::domain::{FieldViolation, event_types};

/// Read-model DDL; `{bytes}` is the binary column type of the backend.
const DDL: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    status INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    state {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE INDEX IF NOT EXISTS conversations_by_updated ON conversations (workspace_id, updated_at);
CREATE TABLE IF NOT EXISTS messages (
    workspace_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    id TEXT NOT NULL,
    body {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, conversation_id, sequence)
);
";

/// The read-model DDL for Postgres and for SQLite.
pub fn read_model_ddl() -> (String, String) {
    (
        DDL.replace("{bytes}", "BYTEA"),
        DDL.replace("{bytes}", "BLOB"),
    )
}

/// Keeps the read model in the same transaction as every append.
pub struct ConversationsProjection;

#[async_trait]
impl Projection for ConversationsProjection {
    fn name(&self) -> &str {
        "conversations"
    }

    /// Folds a batch into at most one upsert per conversation and one insert of its new
    /// messages per chunk, so a rebuild writes in bulk and an append in two statements.
    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        let mut latest: HashMap<(String, String), Conversation> = HashMap::new();
        let mut messages: HashMap<(String, String, u64), Message> = HashMap::new();
        for event in events {
            let conversation = match event.event_type.as_str() {
                event_types::CREATED => event.decode::<ConversationCreatedEvent>()?.conversation,
                event_types::UPDATED => event.decode::<ConversationUpdatedEvent>()?.conversation,
                event_types::ENDED => event.decode::<ConversationEndedEvent>()?.conversation,
                event_types::MESSAGE_CREATED => {
                    if let Some(m) = event.decode::<MessageCreatedEvent>()?.message {
                        let key = (
                            event.workspace_id().to_owned(),
                            m.conversation_id.clone(),
                            m.sequence,
                        );
                        messages.entry(key).or_insert(m);
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(c) = conversation else {
                return Err(EventLogError::Projection {
                    name: "conversations".into(),
                    reason: format!("{} without a conversation", event.event_id),
                });
            };
            // Later events carry later states: keep the last one per conversation.
            latest.insert((c.workspace_id.clone(), c.id.clone()), c);
        }
        let conversations: Vec<Conversation> = latest.into_values().collect();
        for chunk in conversations.chunks(WRITE_CHUNK) {
            upsert_conversations(tx, chunk).await?;
        }
        let messages: Vec<((String, String, u64), Message)> = messages.into_iter().collect();
        for chunk in messages.chunks(WRITE_CHUNK) {
            insert_messages(tx, chunk).await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        on_conn!(tx, conn => sqlx::query("DELETE FROM messages").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM conversations").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

/// Rows per multi-row statement: well under SQLite's limit of 32766 parameters.
const WRITE_CHUNK: usize = 500;

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
        .unwrap_or_default()
}

async fn upsert_conversations(tx: &mut Tx<'_>, rows: &[Conversation]) -> Result<(), EventLogError> {
    on_conn!(tx, conn => {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO conversations (workspace_id, id, status, channel, created_at, updated_at, state) ",
        );
        query.push_values(rows, |mut row, c| {
            row.push_bind(c.workspace_id.clone())
                .push_bind(c.id.clone())
                .push_bind(c.status)
                .push_bind(c.channel)
                .push_bind(micros(&c.created_at))
                .push_bind(micros(&c.updated_at))
                .push_bind(c.encode_to_vec());
        });
        query.push(
            " ON CONFLICT (workspace_id, id) DO UPDATE SET status = excluded.status,
              channel = excluded.channel, updated_at = excluded.updated_at, state = excluded.state",
        );
        query.build().execute(conn).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

async fn insert_messages(
    tx: &mut Tx<'_>,
    rows: &[((String, String, u64), Message)],
) -> Result<(), EventLogError> {
    on_conn!(tx, conn => {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO messages (workspace_id, conversation_id, sequence, id, body) ",
        );
        query.push_values(rows, |mut row, ((workspace_id, conversation_id, sequence), m)| {
            row.push_bind(workspace_id.clone())
                .push_bind(conversation_id.clone())
                .push_bind(*sequence as i64)
                .push_bind(m.id.clone())
                .push_bind(m.encode_to_vec());
        });
        query.push(" ON CONFLICT (workspace_id, conversation_id, sequence) DO NOTHING");
        query.build().execute(conn).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Filters of a conversation listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// A bit per status (`1 << status`); 0 for every status.
    pub statuses: i64,
    pub channel: i32,
    /// Microseconds since the epoch; 0 for no bound.
    pub updated_since: i64,
    pub updated_before: i64,
    pub created_after: i64,
    pub created_before: i64,
}

impl ListFilter {
    /// Whether `c` passes the filter, as the list's SQL would decide.
    pub fn admits(&self, c: &Conversation) -> bool {
        let micros = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
        };
        let (created, updated) = (micros(&c.created_at), micros(&c.updated_at));
        (self.statuses == 0 || (self.statuses >> c.status) & 1 == 1)
            && (self.channel == 0 || c.channel == self.channel)
            && updated >= self.updated_since
            && (self.updated_before == 0 || updated < self.updated_before)
            && created >= self.created_after
            && (self.created_before == 0 || created < self.created_before)
    }
}

/// One page of results and the cursor of the next, empty on the last page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: String,
}

/// The opaque cursor: a versioned position, base64url-encoded JSON. Clients must not
/// build or parse it; its shape may change between versions.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after_sequence: Option<u64>,
}

fn encode_cursor(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default())
}

fn decode_cursor(raw: &str) -> Result<Cursor, FieldViolation> {
    let bad = || {
        FieldViolation::new(
            "cursor",
            "malformed cursor; pass a next_cursor exactly as returned",
        )
    };
    if raw.len() > 512 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if cursor.v != 1 {
        return Err(bad());
    }
    Ok(cursor)
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("invalid {}: {}", .0.field, .0.description)]
    Invalid(FieldViolation),
    #[error(transparent)]
    Log(#[from] EventLogError),
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Log(e.into())
    }
}

/// Queries over the read model.
#[derive(Clone)]
pub struct ConversationStore {
    log: EventLog,
}

impl ConversationStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    pub async fn get(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<Conversation>, QueryError> {
        let state: Option<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT state FROM conversations WHERE workspace_id = $1 AND id = $2",
        )
        .bind(workspace_id)
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        state.map(|s| decode_conversation(&s)).transpose()
    }

    /// Conversations newest first. The order is by id, which is time-ordered and never
    /// changes, so a page boundary stays put while conversations are added or updated.
    pub async fn list(
        &self,
        workspace_id: &str,
        filter: &ListFilter,
        limit: u32,
        cursor: &str,
    ) -> Result<Page<Conversation>, QueryError> {
        let before = if cursor.is_empty() {
            None
        } else {
            Some(
                decode_cursor(cursor)
                    .map_err(QueryError::Invalid)?
                    .before_id
                    .ok_or_else(|| {
                        QueryError::Invalid(FieldViolation::new(
                            "cursor",
                            "not a conversations cursor",
                        ))
                    })?,
            )
        };
        let rows: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query(
            "SELECT state FROM conversations
             WHERE workspace_id = $1
               AND ($2 = 0 OR ((CAST(1 AS BIGINT) << status) & $2) <> 0)
               AND ($3 = 0 OR channel = $3)
               AND updated_at >= $4 AND ($5 = '' OR id < $5)
               AND ($7 = 0 OR updated_at < $7)
               AND created_at >= $8
               AND ($9 = 0 OR created_at < $9)
             ORDER BY id DESC LIMIT $6",
        )
        .bind(workspace_id)
        .bind(filter.statuses)
        .bind(filter.channel)
        .bind(filter.updated_since)
        .bind(before.unwrap_or_default())
        .bind(i64::from(limit) + 1)
        .bind(filter.updated_before)
        .bind(filter.created_after)
        .bind(filter.created_before)
        .fetch_all(pool)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get::<Vec<u8>, _>(0)).collect()))?;
        let mut items = rows
            .iter()
            .map(|s| decode_conversation(s))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            encode_cursor(&Cursor {
                v: 1,
                before_id: items.last().map(|c| c.id.clone()),
                after_sequence: None,
            })
        } else {
            String::new()
        };
        Ok(Page { items, next_cursor })
    }

    /// Messages of one conversation, oldest first.
    pub async fn messages(
        &self,
        workspace_id: &str,
        conversation_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<Page<Message>, QueryError> {
        let after = if cursor.is_empty() {
            0
        } else {
            decode_cursor(cursor)
                .map_err(QueryError::Invalid)?
                .after_sequence
                .ok_or_else(|| {
                    QueryError::Invalid(FieldViolation::new("cursor", "not a messages cursor"))
                })?
        };
        let rows: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query(
            "SELECT body FROM messages WHERE workspace_id = $1 AND conversation_id = $2
               AND sequence > $3 ORDER BY sequence LIMIT $4",
        )
        .bind(workspace_id)
        .bind(conversation_id)
        .bind(after as i64)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get::<Vec<u8>, _>(0)).collect()))?;
        let mut items = rows
            .iter()
            .map(|b| {
                Message::decode(b.as_slice()).map_err(|e| {
                    QueryError::Log(EventLogError::Projection {
                        name: "conversations".into(),
                        reason: format!("stored message cannot be decoded: {e}"),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            encode_cursor(&Cursor {
                v: 1,
                before_id: None,
                after_sequence: items.last().map(|m| m.sequence),
            })
        } else {
            String::new()
        };
        Ok(Page { items, next_cursor })
    }
}

fn decode_conversation(bytes: &[u8]) -> Result<Conversation, QueryError> {
    Conversation::decode(bytes).map_err(|e| {
        QueryError::Log(EventLogError::Projection {
            name: "conversations".into(),
            reason: format!("stored conversation cannot be decoded: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let raw = encode_cursor(&Cursor {
            v: 1,
            before_id: Some("conv_1".into()),
            after_sequence: None,
        });
        assert_eq!(
            decode_cursor(&raw).unwrap().before_id.as_deref(),
            Some("conv_1")
        );
        for bad in [
            "%%%",
            "bm90IGpzb24",
            &"a".repeat(600),
            &URL_SAFE_NO_PAD.encode(br#"{"v":2}"#),
        ] {
            assert_eq!(decode_cursor(bad).unwrap_err().field, "cursor");
        }
    }
}
