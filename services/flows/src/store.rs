//! The flows read models: flows by workspace (names unique, enforced by the unique index
//! inside the append) with their kind and published version, and assistants.

use async_trait::async_trait;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::flows::v1::{AssistantSaved, FlowChanged, FlowPublished};

use crate::domain::event_types as t;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS flows (
    workspace_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    published_version INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, flow_id),
    CONSTRAINT flows_name_unique UNIQUE (workspace_id, name)
);
CREATE TABLE IF NOT EXISTS assistants (
    workspace_id TEXT NOT NULL,
    assistant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (workspace_id, assistant_id)
);
";

pub fn read_model_ddl() -> (String, String) {
    (DDL.to_owned(), DDL.to_owned())
}

pub struct FlowsProjection;

#[async_trait]
impl Projection for FlowsProjection {
    fn name(&self) -> &str {
        "flows"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for event in events {
            let ws = event.workspace_id();
            match event.event_type.as_str() {
                t::FLOW_CREATED => {
                    let Some(flow) = event.decode::<FlowChanged>()?.flow else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO flows (workspace_id, flow_id, name, kind, published_version)
                         VALUES ($1, $2, $3, $4, 0)",
                    )
                    .bind(ws)
                    .bind(&flow.id)
                    .bind(&flow.name)
                    .bind(flow.kind)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::FLOW_PUBLISHED => {
                    let Some(version) = event.decode::<FlowPublished>()?.version else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE flows SET published_version = $3
                         WHERE workspace_id = $1 AND flow_id = $2",
                    )
                    .bind(ws)
                    .bind(&version.flow_id)
                    .bind(version.number as i32)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::ASSISTANT_SAVED => {
                    let Some(assistant) = event.decode::<AssistantSaved>()?.assistant else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO assistants (workspace_id, assistant_id, name) VALUES ($1, $2, $3)
                         ON CONFLICT (workspace_id, assistant_id) DO UPDATE SET name = excluded.name",
                    )
                    .bind(ws)
                    .bind(&assistant.id)
                    .bind(&assistant.name)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        on_conn!(tx, conn => sqlx::query("DELETE FROM flows").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM assistants").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct FlowsStore {
    log: EventLog,
}

impl FlowsStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// `(flow_id, kind, published_version)` of the flow named `name`.
    pub async fn flow_named(
        &self,
        workspace_id: &str,
        name: &str,
    ) -> Result<Option<(String, i32, i32)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT flow_id, kind, published_version FROM flows
             WHERE workspace_id = $1 AND name = $2",
        )
        .bind(workspace_id)
        .bind(name)
        .fetch_optional(pool)
        .await)?)
    }

    /// Flow ids of a workspace after `after`, in id order, of one kind (0: any).
    pub async fn flow_ids(
        &self,
        workspace_id: &str,
        kind: i32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT flow_id FROM flows
             WHERE workspace_id = $1 AND ($2 = 0 OR kind = $2) AND flow_id > $3
             ORDER BY flow_id LIMIT $4",
        )
        .bind(workspace_id)
        .bind(kind)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    pub async fn assistant_ids(
        &self,
        workspace_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT assistant_id FROM assistants
             WHERE workspace_id = $1 AND assistant_id > $2
             ORDER BY assistant_id LIMIT $3",
        )
        .bind(workspace_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }
}
