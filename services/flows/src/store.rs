//! The flows read models: flows by workspace (names unique, enforced by the unique index
//! inside the append) with their kind and published version, and assistants. A deleted
//! flow leaves `flows` (freeing its name) for `deleted_flows`, which keeps its kind for the
//! runs still going on its versions; a deleted assistant leaves `assistants`.

use async_trait::async_trait;
use prost::Message as _;
use switchboard_contract::event_types::knowledge as k;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, micros, on_conn, on_pool,
};
use switchboard_proto::flows::v1::run_event_record::Event as Record;
use switchboard_proto::flows::v1::{
    AssistantSaved, CollectionCreated, CollectionUpdated, Document, DocumentDeleted,
    DocumentUpserted, FlowChanged, FlowKind, FlowPublished, KnowledgeCollection,
    ModelProviderSaved, RunEventRecord, SearchHit,
};

use crate::domain::event_types as t;
use switchboard_contract::event_types::flow_runs as runs;

/// The entity's own id from its stream id `ws_…/<id>`: a collection's `kc_…`, a run's
/// `run_…`.
fn last_part(event: &RecordedEvent) -> &str {
    event
        .stream
        .stream_id
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

async fn upsert_document(
    tx: &mut Tx<'_>,
    ws: &str,
    collection: &str,
    d: &Document,
    hash: &str,
) -> Result<(), EventLogError> {
    let record = d.encode_to_vec();
    on_conn!(tx, conn => sqlx::query(
        "INSERT INTO documents (workspace_id, collection_id, external_id, title, body, url,
             record, content_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (workspace_id, collection_id, external_id) DO UPDATE SET
             title = excluded.title, body = excluded.body, url = excluded.url,
             record = excluded.record, content_hash = excluded.content_hash",
    )
    .bind(ws)
    .bind(collection)
    .bind(&d.external_id)
    .bind(&d.title)
    .bind(&d.body)
    .bind(&d.url)
    .bind(&record)
    .bind(hash)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    if let Tx::Sqlite(conn) = tx {
        sqlx::query(
            "DELETE FROM documents_fts
             WHERE workspace_id = $1 AND collection_id = $2 AND external_id = $3",
        )
        .bind(ws)
        .bind(collection)
        .bind(&d.external_id)
        .execute(&mut **conn)
        .await?;
        sqlx::query(
            "INSERT INTO documents_fts (workspace_id, collection_id, external_id, title, body)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ws)
        .bind(collection)
        .bind(&d.external_id)
        .bind(&d.title)
        .bind(&d.body)
        .execute(&mut **conn)
        .await?;
    }
    Ok(())
}

async fn delete_document(
    tx: &mut Tx<'_>,
    ws: &str,
    collection: &str,
    external_id: &str,
) -> Result<(), EventLogError> {
    on_conn!(tx, conn => sqlx::query(
        "DELETE FROM documents WHERE workspace_id = $1 AND collection_id = $2 AND external_id = $3",
    )
    .bind(ws)
    .bind(collection)
    .bind(external_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    if let Tx::Sqlite(conn) = tx {
        sqlx::query(
            "DELETE FROM documents_fts
             WHERE workspace_id = $1 AND collection_id = $2 AND external_id = $3",
        )
        .bind(ws)
        .bind(collection)
        .bind(external_id)
        .execute(&mut **conn)
        .await?;
    }
    Ok(())
}

/// Forgets a deleted collection: its row, its documents and their search index.
async fn delete_collection(
    tx: &mut Tx<'_>,
    ws: &str,
    collection: &str,
) -> Result<(), EventLogError> {
    for table in ["collections", "collection_updates", "documents"] {
        on_conn!(tx, conn => sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE workspace_id = $1 AND collection_id = $2"
        )))
        .bind(ws)
        .bind(collection)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
    }
    // Postgres's index is a generated column of `documents`, gone with the rows.
    if let Tx::Sqlite(conn) = tx {
        sqlx::query("DELETE FROM documents_fts WHERE workspace_id = $1 AND collection_id = $2")
            .bind(ws)
            .bind(collection)
            .execute(&mut **conn)
            .await?;
    }
    Ok(())
}

fn decode_document(record: &[u8]) -> Result<Document, EventLogError> {
    Document::decode(record).map_err(|e| EventLogError::Projection {
        name: "flows".into(),
        reason: format!("a documents row does not decode: {e}"),
    })
}

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
    flow_id TEXT NOT NULL,
    PRIMARY KEY (workspace_id, assistant_id)
);
CREATE TABLE IF NOT EXISTS runs (
    workspace_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    ended INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, run_id)
);
CREATE INDEX IF NOT EXISTS runs_by_conversation ON runs (workspace_id, conversation_id);
CREATE TABLE IF NOT EXISTS run_starts (
    workspace_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, flow_id, run_id)
);
CREATE INDEX IF NOT EXISTS run_starts_recent ON run_starts (workspace_id, flow_id, started_at);
CREATE TABLE IF NOT EXISTS timers (
    workspace_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    node TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, run_id)
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due_at);
CREATE TABLE IF NOT EXISTS model_providers (
    workspace_id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (workspace_id, provider_id),
    CONSTRAINT model_providers_name_unique UNIQUE (workspace_id, name)
);
CREATE TABLE IF NOT EXISTS deleted_flows (
    workspace_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, flow_id)
);
";

/// Knowledge: collections (names unique), when each last changed (a table of its own, so
/// that stores made before it need no change of `collections`), documents, and the search
/// index: a generated `tsvector` with a GIN index on Postgres, an FTS5 table on SQLite.
const KNOWLEDGE_DDL: &str = "
CREATE TABLE IF NOT EXISTS collections (
    workspace_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    stream_version BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, collection_id),
    CONSTRAINT collections_name_unique UNIQUE (workspace_id, name)
);
CREATE TABLE IF NOT EXISTS collection_updates (
    workspace_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, collection_id)
);
";

const DOCUMENTS_POSTGRES: &str = "
CREATE TABLE IF NOT EXISTS documents (
    workspace_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    url TEXT NOT NULL,
    record BYTEA NOT NULL,
    content_hash TEXT NOT NULL,
    search tsvector GENERATED ALWAYS AS
        (setweight(to_tsvector('simple', title), 'A') || to_tsvector('simple', body)) STORED,
    PRIMARY KEY (workspace_id, collection_id, external_id)
);
CREATE INDEX IF NOT EXISTS documents_search ON documents USING GIN (search);
";

const DOCUMENTS_SQLITE: &str = "
CREATE TABLE IF NOT EXISTS documents (
    workspace_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    url TEXT NOT NULL,
    record BLOB NOT NULL,
    content_hash TEXT NOT NULL,
    PRIMARY KEY (workspace_id, collection_id, external_id)
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    workspace_id UNINDEXED, collection_id UNINDEXED, external_id UNINDEXED, title, body
);
";

pub fn read_model_ddl() -> (String, String) {
    (
        format!("{DDL}{KNOWLEDGE_DDL}{DOCUMENTS_POSTGRES}"),
        format!("{DDL}{KNOWLEDGE_DDL}{DOCUMENTS_SQLITE}"),
    )
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
                t::FLOW_DELETED => {
                    let flow_id = last_part(event);
                    let kind = event
                        .decode::<FlowChanged>()?
                        .flow
                        .map_or(0, |flow| flow.kind);
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO deleted_flows (workspace_id, flow_id, kind)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (workspace_id, flow_id) DO NOTHING",
                    )
                    .bind(ws)
                    .bind(flow_id)
                    .bind(kind)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                    on_conn!(tx, conn => sqlx::query(
                        "DELETE FROM flows WHERE workspace_id = $1 AND flow_id = $2",
                    )
                    .bind(ws)
                    .bind(flow_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::ASSISTANT_DELETED => {
                    on_conn!(tx, conn => sqlx::query(
                        "DELETE FROM assistants WHERE workspace_id = $1 AND assistant_id = $2",
                    )
                    .bind(ws)
                    .bind(last_part(event))
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::ASSISTANT_SAVED | t::ASSISTANT_PUBLISHED => {
                    let Some(assistant) = event.decode::<AssistantSaved>()?.assistant else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO assistants (workspace_id, assistant_id, name, flow_id)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (workspace_id, assistant_id) DO UPDATE SET
                             name = excluded.name, flow_id = excluded.flow_id",
                    )
                    .bind(ws)
                    .bind(&assistant.id)
                    .bind(&assistant.name)
                    .bind(&assistant.flow_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::MODEL_PROVIDER_SAVED => {
                    let Some(provider) = event.decode::<ModelProviderSaved>()?.provider else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO model_providers (workspace_id, provider_id, name)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (workspace_id, provider_id) DO UPDATE SET name = excluded.name",
                    )
                    .bind(ws)
                    .bind(&provider.id)
                    .bind(&provider.name)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                t::MODEL_PROVIDER_DELETED => {
                    on_conn!(tx, conn => sqlx::query(
                        "DELETE FROM model_providers WHERE workspace_id = $1 AND provider_id = $2",
                    )
                    .bind(ws)
                    .bind(last_part(event))
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                // A delay arms a timer; so does a request for an effect, as the deadline
                // for its outcome, which the runtime fires like a delay's. The outcome
                // (or any later step) clears it.
                runs::TIMER_ARMED | runs::EFFECT_REQUESTED | runs::CONFIRMATION_ASKED => {
                    let record: RunEventRecord = event.decode()?;
                    let (node, due) = match record.event {
                        Some(Record::TimerArmed(timer)) => (
                            timer.node,
                            timer.due_at.as_ref().map(micros).unwrap_or_default(),
                        ),
                        // A confirmation's deadline: nobody answering by then is a no.
                        Some(Record::ConfirmationAsked(asked)) => (
                            asked.node,
                            asked.due_at.as_ref().map(micros).unwrap_or_default(),
                        ),
                        Some(Record::EffectRequested(effect)) => (
                            effect.node,
                            event.recorded_at
                                + crate::domain::run::EFFECT_DEADLINE_SECONDS * 1_000_000,
                        ),
                        _ => continue,
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO timers (workspace_id, run_id, node, due_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (workspace_id, run_id) DO UPDATE SET
                             node = excluded.node, due_at = excluded.due_at",
                    )
                    .bind(ws)
                    .bind(last_part(event))
                    .bind(&node)
                    .bind(due)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                runs::TIMER_FIRED | runs::EFFECT_COMPLETED | runs::CONFIRMATION_ANSWERED => {
                    let run_id = last_part(event);
                    on_conn!(tx, conn => sqlx::query(
                        "DELETE FROM timers WHERE workspace_id = $1 AND run_id = $2",
                    )
                    .bind(ws)
                    .bind(run_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                runs::STARTED | runs::ENDED => {
                    let record: RunEventRecord = event.decode()?;
                    let run_id = last_part(event);
                    match record.event {
                        Some(Record::Started(started)) => {
                            on_conn!(tx, conn => sqlx::query(
                                "INSERT INTO runs (workspace_id, run_id, conversation_id, flow_id, ended)
                                 VALUES ($1, $2, $3, $4, 0)
                                 ON CONFLICT (workspace_id, run_id) DO NOTHING",
                            )
                            .bind(ws)
                            .bind(run_id)
                            .bind(&started.conversation_id)
                            .bind(&started.flow_id)
                            .execute(&mut *conn)
                            .await
                            .map(|r| r.rows_affected()))?;
                            on_conn!(tx, conn => sqlx::query(
                                "INSERT INTO run_starts (workspace_id, flow_id, run_id, started_at)
                                 VALUES ($1, $2, $3, $4)
                                 ON CONFLICT (workspace_id, flow_id, run_id) DO NOTHING",
                            )
                            .bind(ws)
                            .bind(&started.flow_id)
                            .bind(run_id)
                            .bind(event.recorded_at)
                            .execute(&mut *conn)
                            .await
                            .map(|r| r.rows_affected()))?;
                        }
                        Some(Record::Ended(_)) => {
                            on_conn!(tx, conn => sqlx::query(
                                "UPDATE runs SET ended = 1 WHERE workspace_id = $1 AND run_id = $2",
                            )
                            .bind(ws)
                            .bind(run_id)
                            .execute(&mut *conn)
                            .await
                            .map(|r| r.rows_affected()))?;
                            on_conn!(tx, conn => sqlx::query(
                                "DELETE FROM timers WHERE workspace_id = $1 AND run_id = $2",
                            )
                            .bind(ws)
                            .bind(run_id)
                            .execute(&mut *conn)
                            .await
                            .map(|r| r.rows_affected()))?;
                        }
                        _ => {}
                    }
                }
                k::COLLECTION_CREATED => {
                    let Some(c) = event.decode::<CollectionCreated>()?.collection else {
                        continue;
                    };
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO collections (workspace_id, collection_id, name, description,
                             created_at, stream_version)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(ws)
                    .bind(&c.id)
                    .bind(&c.name)
                    .bind(&c.description)
                    .bind(c.created_at.as_ref().map(micros).unwrap_or_default())
                    .bind(event.stream_version as i64)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                k::COLLECTION_UPDATED => {
                    let Some(c) = event.decode::<CollectionUpdated>()?.collection else {
                        continue;
                    };
                    let collection = last_part(event);
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE collections SET name = $3, description = $4, stream_version = $5
                         WHERE workspace_id = $1 AND collection_id = $2",
                    )
                    .bind(ws)
                    .bind(collection)
                    .bind(&c.name)
                    .bind(&c.description)
                    .bind(event.stream_version as i64)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO collection_updates (workspace_id, collection_id, updated_at)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (workspace_id, collection_id) DO UPDATE SET
                             updated_at = excluded.updated_at",
                    )
                    .bind(ws)
                    .bind(collection)
                    .bind(c.updated_at.as_ref().map_or(event.recorded_at, micros))
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                k::COLLECTION_DELETED => {
                    delete_collection(tx, ws, last_part(event)).await?;
                }
                k::DOCUMENT_UPSERTED | k::DOCUMENT_DELETED => {
                    let collection = last_part(event);
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE collections SET stream_version = $3
                         WHERE workspace_id = $1 AND collection_id = $2",
                    )
                    .bind(ws)
                    .bind(collection)
                    .bind(event.stream_version as i64)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                    if event.event_type == k::DOCUMENT_UPSERTED {
                        let upserted: DocumentUpserted = event.decode()?;
                        let Some(d) = upserted.document.as_ref() else {
                            continue;
                        };
                        upsert_document(tx, ws, collection, d, &upserted.content_hash).await?;
                    } else {
                        let deleted: DocumentDeleted = event.decode()?;
                        delete_document(tx, ws, collection, &deleted.external_id).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        for table in [
            "flows",
            "deleted_flows",
            "assistants",
            "model_providers",
            "collections",
            "collection_updates",
            "documents",
            "runs",
            "run_starts",
            "timers",
        ] {
            on_conn!(tx, conn => sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *conn).await.map(|r| r.rows_affected()))?;
        }
        if let Tx::Sqlite(conn) = tx {
            sqlx::query("DELETE FROM documents_fts")
                .execute(&mut **conn)
                .await?;
        }
        Ok(())
    }
}

/// The condition that the run `r` (in workspace `$1`) is of a flow of kind `$3`, the flow
/// deleted or not.
/// A run of a flow of kind `$3`; a run of no flow is an assistant's own agent, a
/// conversation flow's kind.
const RUN_OF_KIND: &str = "((r.flow_id = '' AND $3 = 1)
     OR EXISTS (SELECT 1 FROM flows f
        WHERE f.workspace_id = r.workspace_id AND f.flow_id = r.flow_id AND f.kind = $3)
     OR EXISTS (SELECT 1 FROM deleted_flows d
        WHERE d.workspace_id = r.workspace_id AND d.flow_id = r.flow_id AND d.kind = $3))";
const _: () = assert!(FlowKind::ConversationFlow as i32 == 1);

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

    /// The assistant a conversation has and the flow it runs (empty: none, its own agent
    /// answers): the `preferred` assistant (its `assistant_id` metafield), otherwise the
    /// workspace's first assistant (by id) with a flow, otherwise its first.
    pub async fn conversation_assistant(
        &self,
        workspace_id: &str,
        preferred: Option<&str>,
    ) -> Result<Option<(String, String)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT assistant_id, flow_id FROM assistants
             WHERE workspace_id = $1
             ORDER BY CASE WHEN assistant_id = $2 THEN 0 WHEN flow_id <> '' THEN 1 ELSE 2 END,
                 assistant_id
             LIMIT 1",
        )
        .bind(workspace_id)
        .bind(preferred.unwrap_or_default())
        .fetch_optional(pool)
        .await)?)
    }

    /// Published flows of a kind.
    pub async fn published_flows(
        &self,
        workspace_id: &str,
        kind: FlowKind,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT flow_id FROM flows
             WHERE workspace_id = $1 AND kind = $2 AND published_version > 0
             ORDER BY flow_id",
        )
        .bind(workspace_id)
        .bind(kind as i32)
        .fetch_all(pool)
        .await)?)
    }

    /// Timers due at `now`: `(workspace, run, node)`, earliest first.
    pub async fn due_timers(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String, String)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT workspace_id, run_id, node FROM timers WHERE due_at <= $1
             ORDER BY due_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    /// A flow's most recent runs, newest first.
    pub async fn recent_runs(
        &self,
        workspace_id: &str,
        flow_id: &str,
        limit: u32,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT run_id FROM run_starts WHERE workspace_id = $1 AND flow_id = $2
             ORDER BY started_at DESC, run_id LIMIT $3",
        )
        .bind(workspace_id)
        .bind(flow_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    /// Every conversation flow run of a conversation, ended or not (its flow deleted or
    /// not).
    pub async fn conversation_runs(
        &self,
        workspace_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(
            on_pool!(self.log, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.run_id FROM runs r
             WHERE r.workspace_id = $1 AND r.conversation_id = $2 AND {RUN_OF_KIND}
             ORDER BY r.run_id",
        )))
        .bind(workspace_id)
        .bind(conversation_id)
        .bind(FlowKind::ConversationFlow as i32)
        .fetch_all(pool)
        .await)?,
        )
    }

    /// The conversation flow runs of a conversation that have not ended (their flow
    /// deleted or not: they go on).
    pub async fn open_runs(
        &self,
        workspace_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<String>, EventLogError> {
        Ok(
            on_pool!(self.log, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.run_id FROM runs r
             WHERE r.workspace_id = $1 AND r.conversation_id = $2 AND r.ended = 0
               AND {RUN_OF_KIND}
             ORDER BY r.run_id",
        )))
        .bind(workspace_id)
        .bind(conversation_id)
        .bind(FlowKind::ConversationFlow as i32)
        .fetch_all(pool)
        .await)?,
        )
    }

    /// `(assistant_id, name)` of the assistants whose conversation flow is `flow_id`.
    pub async fn assistants_running(
        &self,
        workspace_id: &str,
        flow_id: &str,
    ) -> Result<Vec<(String, String)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT assistant_id, name FROM assistants
             WHERE workspace_id = $1 AND flow_id = $2
             ORDER BY assistant_id",
        )
        .bind(workspace_id)
        .bind(flow_id)
        .fetch_all(pool)
        .await)?)
    }

    /// The model providers of a workspace, by name: id and name.
    pub async fn model_providers(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<(String, String)>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_as(
            "SELECT provider_id, name FROM model_providers
             WHERE workspace_id = $1 ORDER BY name, provider_id",
        )
        .bind(workspace_id)
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

/// Knowledge queries.
#[derive(Clone)]
pub struct KnowledgeStore {
    log: EventLog,
}

type CollectionRow = (String, String, String, i64, i64, i64, i64);

impl KnowledgeStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// The collection and its stream version.
    pub async fn collection(
        &self,
        workspace_id: &str,
        collection_id: &str,
    ) -> Result<Option<(KnowledgeCollection, u64)>, EventLogError> {
        let row: Option<CollectionRow> = on_pool!(self.log, pool => sqlx::query_as(
            "SELECT c.collection_id, c.name, c.description, c.created_at, c.stream_version,
                    (SELECT COUNT(*) FROM documents d
                     WHERE d.workspace_id = c.workspace_id AND d.collection_id = c.collection_id),
                    COALESCE(u.updated_at, c.created_at)
             FROM collections c
             LEFT JOIN collection_updates u
                 ON u.workspace_id = c.workspace_id AND u.collection_id = c.collection_id
             WHERE c.workspace_id = $1 AND c.collection_id = $2",
        )
        .bind(workspace_id)
        .bind(collection_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(
            |(id, name, description, created, version, count, updated)| {
                (
                    KnowledgeCollection {
                        id,
                        workspace_id: workspace_id.to_owned(),
                        name,
                        description,
                        document_count: count as u64,
                        created_at: Some(switchboard_eventlog::timestamp(created)),
                        updated_at: Some(switchboard_eventlog::timestamp(updated)),
                    },
                    version as u64,
                )
            },
        ))
    }

    pub async fn collection_ids(&self, workspace_id: &str) -> Result<Vec<String>, EventLogError> {
        Ok(on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT collection_id FROM collections WHERE workspace_id = $1 ORDER BY collection_id",
        )
        .bind(workspace_id)
        .fetch_all(pool)
        .await)?)
    }

    /// `(external_id, content_hash)` of those of `ids` the collection holds.
    pub async fn hashes(
        &self,
        workspace_id: &str,
        collection_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, EventLogError> {
        let mut found = Vec::new();
        // Bounded batches keep every statement under the backends' parameter limits.
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT external_id, content_hash FROM documents
                 WHERE workspace_id = $1 AND collection_id = $2 AND external_id IN ({})",
                placeholders.join(", ")
            );
            let rows: Vec<(String, String)> = on_pool!(self.log, pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(workspace_id)
                    .bind(collection_id);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(pool).await
            })?;
            found.extend(rows);
        }
        Ok(found)
    }

    pub async fn document(
        &self,
        workspace_id: &str,
        collection_id: &str,
        external_id: &str,
    ) -> Result<Option<Document>, EventLogError> {
        let record: Option<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT record FROM documents
             WHERE workspace_id = $1 AND collection_id = $2 AND external_id = $3",
        )
        .bind(workspace_id)
        .bind(collection_id)
        .bind(external_id)
        .fetch_optional(pool)
        .await)?;
        record.map(|r| decode_document(&r)).transpose()
    }

    /// Up to `limit` documents whose external id sorts after `after` (empty: from the
    /// first), in external id order.
    pub async fn documents(
        &self,
        workspace_id: &str,
        collection_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, EventLogError> {
        let records: Vec<Vec<u8>> = on_pool!(self.log, pool => sqlx::query_scalar(
            "SELECT record FROM documents
             WHERE workspace_id = $1 AND collection_id = $2 AND external_id > $3
             ORDER BY external_id LIMIT $4",
        )
        .bind(workspace_id)
        .bind(collection_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        records.iter().map(|r| decode_document(r)).collect()
    }

    /// Documents matching every term, best first.
    pub async fn search(
        &self,
        workspace_id: &str,
        collection_id: &str,
        terms: &[String],
        limit: u32,
    ) -> Result<Vec<SearchHit>, EventLogError> {
        type Row = (String, String, String, String, f64);
        let rows: Vec<Row> = match (self.log.postgres_pool(), self.log.sqlite_pool()) {
            (Some(pool), _) => {
                // Each term as a prefix, all required: `refund & polic:*`.
                let query = terms
                    .iter()
                    .map(|t| format!("{}:*", t.replace('\'', "")))
                    .collect::<Vec<_>>()
                    .join(" & ");
                sqlx::query_as(
                    "SELECT external_id, title, url,
                            ts_headline('simple', body, to_tsquery('simple', $3),
                                'MaxWords=24, MinWords=8, StartSel=[, StopSel=]'),
                            ts_rank(search, to_tsquery('simple', $3))::float8
                     FROM documents
                     WHERE workspace_id = $1 AND collection_id = $2
                       AND search @@ to_tsquery('simple', $3)
                     ORDER BY 5 DESC, external_id LIMIT $4",
                )
                .bind(workspace_id)
                .bind(collection_id)
                .bind(&query)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            (_, Some(pool)) => {
                // Each term quoted (so nothing is FTS5 syntax) and as a prefix.
                let query = terms
                    .iter()
                    .map(|t| format!("\"{}\"*", t.replace('"', "")))
                    .collect::<Vec<_>>()
                    .join(" ");
                sqlx::query_as(
                    "SELECT f.external_id, f.title, d.url,
                            snippet(documents_fts, 4, '[', ']', '…', 16),
                            -bm25(documents_fts, 0.0, 0.0, 0.0, 2.0, 1.0)
                     FROM documents_fts f
                     JOIN documents d ON d.workspace_id = f.workspace_id
                         AND d.collection_id = f.collection_id AND d.external_id = f.external_id
                     WHERE documents_fts MATCH $3 AND f.workspace_id = $1 AND f.collection_id = $2
                     ORDER BY 5 DESC, f.external_id LIMIT $4",
                )
                .bind(workspace_id)
                .bind(collection_id)
                .bind(&query)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            (None, None) => unreachable!("a log has one backend"),
        };
        Ok(rows
            .into_iter()
            .map(|(external_id, title, url, snippet, score)| SearchHit {
                external_id,
                title,
                url,
                snippet,
                score,
            })
            .collect())
    }
}
