//! The actions read model: one row per action (names unique in a workspace, enforced by the
//! database inside the append's transaction) and the queries over it.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use switchboard_eventlog::{EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn};
use switchboard_proto::actions::v1::ActionDefinition;

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
";

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
            let Some(d) = domain::decode(event)? else {
                continue;
            };
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
        Ok(())
    }
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

macro_rules! on_pool {
    ($log:expr, $pool:ident => $body:expr) => {
        match ($log.postgres_pool(), $log.sqlite_pool()) {
            (Some($pool), _) => $body,
            (_, Some($pool)) => $body,
            (None, None) => unreachable!("a log has one backend"),
        }
    };
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

fn decode(bytes: &[u8]) -> Result<ActionDefinition, QueryError> {
    ActionDefinition::decode(bytes).map_err(|e| {
        QueryError::Log(EventLogError::Projection {
            name: "actions".into(),
            reason: format!("stored action cannot be decoded: {e}"),
        })
    })
}
