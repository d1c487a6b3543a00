//! The connexease read models: which workspaces are connected (for the periodic directory
//! sync), the links, found by either side's conversation id (inbound webhooks name
//! Connexease's), and the last delivery of each hook and subject (to tell a retry from a
//! change back).

use async_trait::async_trait;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::connexease::v1::{ConnectionChanged, Link, Linked, WebhookReceived};

use crate::domain::event_types;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS connections (
    workspace_id TEXT PRIMARY KEY,
    connected INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    workspace_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    external_conversation_id TEXT NOT NULL,
    external_customer_id TEXT NOT NULL,
    external_status TEXT NOT NULL,
    group_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (workspace_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS links_by_external ON links (workspace_id, external_conversation_id);
CREATE TABLE IF NOT EXISTS webhook_latest (
    workspace_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    PRIMARY KEY (workspace_id, hook, subject_id)
);
";

pub fn read_model_ddl() -> (String, String) {
    (DDL.to_owned(), DDL.to_owned())
}

pub struct ConnexeaseProjection;

#[async_trait]
impl Projection for ConnexeaseProjection {
    fn name(&self) -> &str {
        "connexease"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for event in events {
            match event.event_type.as_str() {
                event_types::CONNECTED | event_types::DISCONNECTED => {
                    let Some(connection) = event.decode::<ConnectionChanged>()?.connection else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO connections (workspace_id, connected) VALUES ($1, $2)
                         ON CONFLICT (workspace_id) DO UPDATE SET connected = excluded.connected",
                    )
                    .bind(event.workspace_id())
                    .bind(i32::from(connection.connected))
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                event_types::LINKED => {
                    let Some(link) = event.decode::<Linked>()?.link else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO links (workspace_id, conversation_id, external_conversation_id,
                             external_customer_id, external_status, group_id, agent_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (workspace_id, conversation_id) DO UPDATE SET
                             external_conversation_id = excluded.external_conversation_id,
                             external_customer_id = excluded.external_customer_id,
                             external_status = excluded.external_status,
                             group_id = excluded.group_id, agent_id = excluded.agent_id",
                    )
                    .bind(event.workspace_id())
                    .bind(&link.conversation_id)
                    .bind(&link.external_conversation_id)
                    .bind(&link.external_customer_id)
                    .bind(&link.external_status)
                    .bind(&link.group_id)
                    .bind(&link.agent_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                event_types::WEBHOOK_RECEIVED => {
                    let received = event.decode::<WebhookReceived>()?;
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO webhook_latest (workspace_id, hook, subject_id, delivery_id)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (workspace_id, hook, subject_id)
                         DO UPDATE SET delivery_id = excluded.delivery_id",
                    )
                    .bind(event.workspace_id())
                    .bind(&received.event)
                    .bind(&received.subject_id)
                    .bind(&received.delivery_id)
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
        on_conn!(tx, conn => sqlx::query("DELETE FROM connections").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM links").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        on_conn!(tx, conn => sqlx::query("DELETE FROM webhook_latest").execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct ConnexeaseStore {
    log: EventLog,
}

type LinkRow = (String, String, String, String, String, String);

impl ConnexeaseStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// Our conversation linked to Connexease's `external_conversation_id`, if any.
    pub async fn link_by_external(
        &self,
        workspace_id: &str,
        external_conversation_id: &str,
    ) -> Result<Option<Link>, EventLogError> {
        let row: Option<LinkRow> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT conversation_id, external_conversation_id, external_customer_id,
                    external_status, group_id, agent_id
             FROM links WHERE workspace_id = $1 AND external_conversation_id = $2",
        )
        .bind(workspace_id)
        .bind(external_conversation_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(c, e, cu, s, g, a)| Link {
            conversation_id: c,
            external_conversation_id: e,
            external_customer_id: cu,
            external_status: s,
            group_id: g,
            agent_id: a,
        }))
    }

    /// The last delivery recorded for `hook` about `subject_id`, if any.
    pub async fn latest_delivery(
        &self,
        workspace_id: &str,
        hook: &str,
        subject_id: &str,
    ) -> Result<Option<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT delivery_id FROM webhook_latest
             WHERE workspace_id = $1 AND hook = $2 AND subject_id = $3",
        )
        .bind(workspace_id)
        .bind(hook)
        .bind(subject_id)
        .fetch_optional(pool)
        .await)?)
    }

    /// Every connected workspace, for the periodic directory sync.
    pub async fn connected_workspaces(&self) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT workspace_id FROM connections WHERE connected = 1 ORDER BY workspace_id",
        )
        .fetch_all(pool)
        .await)?)
    }
}
