//! The actions read model: one row per action (names unique in a workspace, enforced by the
//! database inside the append's transaction; a deleted action's row goes, freeing its
//! name) and the queries over it.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::actions::v1::{
    ActionDefinition, ExecutionCompleted, ExecutionResult, FailureReason, Integration,
};

use crate::domain;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS actions (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    definition {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, id),
    CONSTRAINT actions_name_unique UNIQUE (workspace_id, name)
);
DROP TABLE IF EXISTS executions;
CREATE TABLE IF NOT EXISTS execution_log (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    action_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    test INTEGER NOT NULL,
    refusal INTEGER NOT NULL,
    result {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE INDEX IF NOT EXISTS execution_log_by_time ON execution_log (workspace_id, started_at, id);
CREATE INDEX IF NOT EXISTS execution_log_by_action ON execution_log (workspace_id, action_id, started_at);
CREATE INDEX IF NOT EXISTS execution_log_for_retention ON execution_log (started_at);
CREATE TABLE IF NOT EXISTS integrations (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id),
    CONSTRAINT integrations_name_unique UNIQUE (workspace_id, name)
);
CREATE TABLE IF NOT EXISTS rate_limits (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
";

/// Failure reasons that are refusals by a guard (what the audit view lists).
pub const REFUSALS: [FailureReason; 3] = [
    FailureReason::Disabled,
    FailureReason::ConfirmationRequired,
    FailureReason::Forbidden,
];

pub fn read_model_ddl() -> (String, String) {
    (
        DDL.replace("{bytes}", "BYTEA"),
        DDL.replace("{bytes}", "BLOB"),
    )
}

pub struct ActionsProjection;

#[async_trait]
impl Projection for ActionsProjection {
    fn name(&self) -> &str {
        "actions"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for event in events {
            if event.event_type == crate::service::execution_events::COMPLETED {
                record_execution(tx, event).await?;
                continue;
            }
            if let Some((integration, deleted)) = domain::integration::decode(event)? {
                record_integration(tx, &integration, deleted).await?;
                continue;
            }
            let Some(d) = domain::decode(event)? else {
                continue;
            };
            if domain::is_deletion(event) {
                // Its name is free again; its executions stay in the execution log.
                on_conn!(tx, conn => sqlx::query(
                    "DELETE FROM actions WHERE workspace_id = $1 AND id = $2",
                )
                .bind(&d.workspace_id)
                .bind(&d.id)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))?;
                continue;
            }
            let bytes = d.encode_to_vec();
            on_conn!(tx, conn => sqlx::query(
                "INSERT INTO actions (workspace_id, id, name, enabled, definition) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (workspace_id, id) DO UPDATE SET name = excluded.name,
                     enabled = excluded.enabled, definition = excluded.definition",
            )
            .bind(&d.workspace_id)
            .bind(&d.id)
            .bind(&d.name)
            .bind(i32::from(d.enabled))
            .bind(&bytes)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        on_conn!(tx, conn => sqlx::query("DELETE FROM actions").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM execution_log").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM integrations").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

/// An integration's row: its name taken while it lives, freed when it is deleted.
async fn record_integration(
    tx: &mut Tx<'_>,
    integration: &Integration,
    deleted: bool,
) -> Result<(), EventLogError> {
    if deleted {
        on_conn!(tx, conn => sqlx::query(
            "DELETE FROM integrations WHERE workspace_id = $1 AND id = $2",
        )
        .bind(&integration.workspace_id)
        .bind(&integration.id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
        return Ok(());
    }
    on_conn!(tx, conn => sqlx::query(
        "INSERT INTO integrations (workspace_id, id, name) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, id) DO UPDATE SET name = excluded.name",
    )
    .bind(&integration.workspace_id)
    .bind(&integration.id)
    .bind(&integration.name)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

async fn record_execution(tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), EventLogError> {
    let completed: ExecutionCompleted = event.decode()?;
    let Some(result) = completed.result else {
        return Ok(());
    };
    let started_at = result
        .started_at
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
        .unwrap_or(event.metadata.occurred_at);
    let bytes = result.encode_to_vec();
    let refusal = REFUSALS.iter().any(|r| *r as i32 == result.reason);
    on_conn!(tx, conn => sqlx::query(
        "INSERT INTO execution_log (workspace_id, id, action_id, conversation_id, started_at, test, refusal, result)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (workspace_id, id) DO NOTHING",
    )
    .bind(event.workspace_id())
    .bind(&result.execution_id)
    .bind(&result.action_id)
    .bind(&result.conversation_id)
    .bind(started_at)
    .bind(i32::from(result.test))
    .bind(i32::from(refusal))
    .bind(&bytes)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Filters of the execution log.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub action_id: String,
    pub conversation_id: String,
    /// Microseconds; 0 for no bound.
    pub since: i64,
    pub until: i64,
    pub include_tests: bool,
    /// Only refusals by a guard (the audit view).
    pub refusals_only: bool,
}

/// A malformed cursor.
#[derive(Debug, thiserror::Error)]
#[error("malformed cursor; pass a next_cursor exactly as returned")]
pub struct BadCursor;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Cursor(#[from] BadCursor),
    #[error(transparent)]
    Log(#[from] EventLogError),
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Log(e.into())
    }
}

#[derive(Clone)]
pub struct ActionStore {
    log: EventLog,
}

impl ActionStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    pub async fn get(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<ActionDefinition>, QueryError> {
        let row: Option<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT definition FROM actions WHERE workspace_id = $1 AND id = $2",
        )
        .bind(workspace_id)
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        row.map(|b| decode(&b)).transpose()
    }

    /// Actions by name, after the cursor's name.
    pub async fn list(
        &self,
        workspace_id: &str,
        enabled_only: bool,
        limit: u32,
        cursor: &str,
    ) -> Result<(Vec<ActionDefinition>, String), QueryError> {
        let after = if cursor.is_empty() {
            String::new()
        } else {
            let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BadCursor)?;
            String::from_utf8(bytes)
                .ok()
                .filter(|n| domain::valid_name(n))
                .ok_or(BadCursor)?
        };
        let rows: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT definition FROM actions WHERE workspace_id = $1 AND ($2 = 0 OR enabled = 1)
               AND name > $3 ORDER BY name LIMIT $4",
        )
        .bind(workspace_id)
        .bind(i32::from(enabled_only))
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await)?;
        let mut items = rows
            .iter()
            .map(|b| decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|a| URL_SAFE_NO_PAD.encode(&a.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((items, next))
    }
}

impl ActionStore {
    /// The workspace's integrations, `(id, name)` by name.
    pub async fn integrations(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<(String, String)>, QueryError> {
        let rows: Vec<(String, String)> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT id, name FROM integrations WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id)
        .fetch_all(pool)
        .await)?;
        Ok(rows)
    }

    /// The workspace's actions whose request goes to the integration `integration_id`,
    /// by name.
    pub async fn using_integration(
        &self,
        workspace_id: &str,
        integration_id: &str,
    ) -> Result<Vec<ActionDefinition>, QueryError> {
        let rows: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT definition FROM actions WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id)
        .fetch_all(pool)
        .await)?;
        let mut using = Vec::new();
        for bytes in &rows {
            let definition = decode(bytes)?;
            if domain::integration::of(&definition) == Some(integration_id) {
                using.push(definition);
            }
        }
        Ok(using)
    }
}

impl ActionStore {
    /// Executions newest first; the cursor is the last `(started_at, id)` returned.
    pub async fn executions(
        &self,
        workspace_id: &str,
        filter: &ExecutionFilter,
        limit: u32,
        cursor: &str,
    ) -> Result<(Vec<ExecutionResult>, String), QueryError> {
        let (before_at, before_id) = if cursor.is_empty() {
            (i64::MAX, String::new())
        } else {
            let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BadCursor)?)
                .map_err(|_| BadCursor)?;
            let (at, id) = raw.split_once('/').ok_or(BadCursor)?;
            (at.parse().map_err(|_| BadCursor)?, id.to_owned())
        };
        let rows: Vec<(i64, Vec<u8>)> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT started_at, result FROM execution_log
             WHERE workspace_id = $1 AND ($2 = '' OR action_id = $2) AND ($3 = '' OR conversation_id = $3)
               AND started_at >= $4 AND ($5 = 0 OR started_at < $5) AND ($6 = 1 OR test = 0)
               AND (started_at < $7 OR (started_at = $7 AND id < $8)) AND ($10 = 0 OR refusal = 1)
             ORDER BY started_at DESC, id DESC LIMIT $9",
        )
        .bind(workspace_id)
        .bind(&filter.action_id)
        .bind(&filter.conversation_id)
        .bind(filter.since)
        .bind(filter.until)
        .bind(i32::from(filter.include_tests))
        .bind(before_at)
        .bind(&before_id)
        .bind(i64::from(limit) + 1)
        .bind(i32::from(filter.refusals_only))
        .fetch_all(pool)
        .await)?;
        let mut items = Vec::with_capacity(rows.len());
        for (at, bytes) in &rows {
            let result = ExecutionResult::decode(bytes.as_slice()).map_err(|e| {
                QueryError::Log(EventLogError::Projection {
                    name: "actions".into(),
                    reason: format!("stored execution cannot be decoded: {e}"),
                })
            })?;
            items.push((*at, result));
        }
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|(at, r)| URL_SAFE_NO_PAD.encode(format!("{at}/{}", r.execution_id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((items.into_iter().map(|(_, r)| r).collect(), next))
    }
}

impl ActionStore {
    /// Removes from the queryable execution log every execution started before `before`
    /// (microseconds), a batch at a time; answers how many went. The events stay in the
    /// log as the audit trail.
    pub async fn prune_executions(&self, before: i64) -> Result<u64, QueryError> {
        let mut removed = 0;
        loop {
            let batch = on_pool!(self.log, pool => sqlx::query(
                "DELETE FROM execution_log WHERE (workspace_id, id) IN
                   (SELECT workspace_id, id FROM execution_log WHERE started_at < $1 LIMIT 1000)",
            )
            .bind(before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
            removed += batch;
            if batch < 1000 {
                return Ok(removed);
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Result<ActionDefinition, QueryError> {
    ActionDefinition::decode(bytes).map_err(|e| {
        QueryError::Log(EventLogError::Projection {
            name: "actions".into(),
            reason: format!("stored action cannot be decoded: {e}"),
        })
    })
}
