//! The insights read model, one SQL for Postgres and SQLite:
//!
//! - `insights_conversations`: one row per conversation, its dimensions as columns and
//!   its measures (messages, resolved, handed over, first-response and resolution
//!   times), written by the subscription to the conversations' public events;
//! - `insights_labels`: the dimensions a conversation can have several values of (topics,
//!   `analysis.<key>`, `metafields.<key>`), one row per value;
//! - `insights_flows`: the flow each conversation runs, from the flows' run starts (which
//!   may arrive before the conversation does);
//! - `insights_segments`, `insights_findings`: the projection of the service's own log.
//!
//! Questions are answered by [`InsightsStore::measure`] (counts, sums, and histograms of
//! times for medians, per group, in one pass) over a [`Scope`]: a workspace, a window of
//! creation times and a filter's clauses.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use sqlx::Row as _;
use switchboard_eventlog::{
    EventLog, EventLogError, Projection, RecordedEvent, Tx, on_conn, on_pool,
};
use switchboard_proto::insights::v1 as pb;

use crate::domain::dimensions::{Clause, Target, Window};
use crate::domain::facts::{self, Fact, History};
use crate::domain::{Event, FieldViolation};

const DDL: &str = "
CREATE TABLE IF NOT EXISTS insights_conversations (
    workspace_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    assistant TEXT NOT NULL,
    flow TEXT NOT NULL,
    sentiment TEXT NOT NULL,
    request_type TEXT NOT NULL,
    urgency TEXT NOT NULL,
    customer_effort TEXT NOT NULL,
    churn_risk TEXT NOT NULL,
    knowledge_gap TEXT NOT NULL,
    resolution TEXT NOT NULL,
    resolved TEXT NOT NULL,
    {measures}
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    first_customer_at BIGINT,
    first_response_at BIGINT,
    resolved_at BIGINT,
    handed_over BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, conversation_id)
);
-- Covers what a summary or a trend reads, so they scan the index and not the rows.
CREATE INDEX IF NOT EXISTS insights_conversations_measures
    ON insights_conversations (workspace_id, created_at, {measure_columns});
CREATE INDEX IF NOT EXISTS insights_conversations_by_updated
    ON insights_conversations (updated_at);
-- A conversation's labels carry its creation time and measures too, so a breakdown by
-- topic alone reads this index and nothing else.
CREATE TABLE IF NOT EXISTS insights_labels (
    workspace_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    {measures}
    PRIMARY KEY (workspace_id, conversation_id, dimension, value)
);
-- Which conversations have a value, in a window: what a label condition reads.
CREATE INDEX IF NOT EXISTS insights_labels_members
    ON insights_labels (workspace_id, dimension, value, created_at, conversation_id);
CREATE INDEX IF NOT EXISTS insights_labels_measures
    ON insights_labels (workspace_id, dimension, created_at, value, {measure_columns});
CREATE TABLE IF NOT EXISTS insights_flows (
    workspace_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    PRIMARY KEY (workspace_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS insights_segments (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    body {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE TABLE IF NOT EXISTS insights_connexease_stats (
    workspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    first_response_seconds DOUBLE PRECISION NOT NULL,
    average_response_seconds DOUBLE PRECISION NOT NULL,
    message_count BIGINT NOT NULL,
    customer_count BIGINT NOT NULL,
    read_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, kind, id)
);
CREATE TABLE IF NOT EXISTS insights_findings (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    dismissed INTEGER NOT NULL,
    body {bytes} NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
";

/// What a conversation measures, kept on its row and on each of its labels.
const MEASURES: &str = "messages BIGINT NOT NULL,
    is_resolved BIGINT NOT NULL,
    is_agent_resolved BIGINT NOT NULL,
    is_handed_over BIGINT NOT NULL,
    first_response_ms BIGINT,
    resolution_ms BIGINT,
    first_response_bucket BIGINT,
    resolution_bucket BIGINT,";

/// The read models' DDL for Postgres and SQLite.
pub fn read_model_ddl() -> (String, String) {
    let columns: Vec<&str> = MEASURES
        .split(',')
        .filter_map(|c| c.split_whitespace().next())
        .collect();
    let ddl = DDL
        .replace("{measures}", MEASURES)
        .replace("{measure_columns}", &columns.join(", "));
    (
        ddl.replace("{bytes}", "BYTEA"),
        ddl.replace("{bytes}", "BLOB"),
    )
}

/// Keeps segments and findings in step with the service's log. (The conversations' rows
/// are the subscription's, not this projection's: a rebuild of the log leaves them.)
pub struct InsightsProjection;

#[async_trait]
impl Projection for InsightsProjection {
    fn name(&self) -> &str {
        "insights"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for recorded in events {
            let ws = &recorded.metadata.workspace_id;
            match Event::decode(recorded)? {
                Some(Event::SegmentCreated(created)) => {
                    let segment = created.segment.unwrap_or_default();
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO insights_segments (workspace_id, id, body) VALUES ($1, $2, $3)
                         ON CONFLICT (workspace_id, id) DO UPDATE SET body = excluded.body",
                    )
                    .bind(ws)
                    .bind(&segment.id)
                    .bind(segment.encode_to_vec())
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                Some(Event::SegmentDeleted(deleted)) => {
                    on_conn!(tx, conn => sqlx::query(
                        "DELETE FROM insights_segments WHERE workspace_id = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&deleted.segment_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                Some(Event::FindingRaised(raised)) => {
                    let finding = raised.finding.unwrap_or_default();
                    on_conn!(tx, conn => sqlx::query(
                        "INSERT INTO insights_findings (workspace_id, id, dismissed, body)
                         VALUES ($1, $2, 0, $3)
                         ON CONFLICT (workspace_id, id) DO UPDATE SET body = excluded.body",
                    )
                    .bind(ws)
                    .bind(&finding.id)
                    .bind(finding.encode_to_vec())
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                Some(Event::FindingDismissed(dismissed)) => {
                    let body: Option<Vec<u8>> = on_conn!(tx, conn => sqlx::query(
                        "SELECT body FROM insights_findings WHERE workspace_id = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&dismissed.finding_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .and_then(|row| row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()))?;
                    let Some(body) = body else { continue };
                    let mut finding = decode_body::<pb::Finding>(&body)?;
                    finding.dismissed_at = dismissed.dismissed_at;
                    finding.dismissed_by = dismissed.dismissed_by.clone();
                    on_conn!(tx, conn => sqlx::query(
                        "UPDATE insights_findings SET dismissed = 1, body = $3
                         WHERE workspace_id = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&dismissed.finding_id)
                    .bind(finding.encode_to_vec())
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        for table in ["insights_segments", "insights_findings"] {
            on_conn!(tx, conn => sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))?;
        }
        Ok(())
    }
}

fn decode_body<M: prost::Message + Default>(body: &[u8]) -> Result<M, EventLogError> {
    M::decode(body).map_err(|e| EventLogError::Projection {
        name: "insights".to_owned(),
        reason: format!("a stored segment or finding does not decode: {e}"),
    })
}

// ---------------------------------------------------------------------------------------
// The conversations' rows, written by the subscription in its transaction.
// ---------------------------------------------------------------------------------------

/// What is known of a conversation's history, read in the subscription's transaction.
pub async fn history(
    tx: &mut Tx<'_>,
    workspace_id: &str,
    conversation_id: &str,
) -> Result<Option<History>, EventLogError> {
    let known = on_conn!(tx, conn => sqlx::query(
        "SELECT version, first_customer_at, first_response_at, resolved_at, handed_over, flow
         FROM insights_conversations WHERE workspace_id = $1 AND conversation_id = $2",
    )
    .bind(workspace_id)
    .bind(conversation_id)
    .fetch_optional(&mut *conn)
    .await
    .and_then(|row| row.map(|r| -> Result<History, sqlx::Error> {
        Ok(History {
            version: r.try_get(0)?,
            first_customer_at: r.try_get(1)?,
            first_response_at: r.try_get(2)?,
            resolved_at: r.try_get(3)?,
            handed_over: r.try_get::<i64, _>(4)? != 0,
            flow: r.try_get(5)?,
        })
    }).transpose()))?;
    // Its flow may have arrived before the conversation, or beside its last event.
    match known {
        Some(history) if !history.flow.is_empty() => Ok(Some(history)),
        Some(mut history) => {
            history.flow = flow_of(tx, workspace_id, conversation_id)
                .await?
                .unwrap_or_default();
            Ok(Some(history))
        }
        None => Ok(flow_of(tx, workspace_id, conversation_id)
            .await?
            .map(|flow| History {
                flow,
                version: -1,
                ..History::default()
            })),
    }
}

async fn flow_of(
    tx: &mut Tx<'_>,
    workspace_id: &str,
    conversation_id: &str,
) -> Result<Option<String>, EventLogError> {
    Ok(on_conn!(tx, conn => sqlx::query(
        "SELECT flow_id FROM insights_flows WHERE workspace_id = $1 AND conversation_id = $2",
    )
    .bind(workspace_id)
    .bind(conversation_id)
    .fetch_optional(&mut *conn)
    .await
    .and_then(|row| row.map(|r| r.try_get::<String, _>(0)).transpose()))?)
}

/// Binds what `f` measures, in [`MEASURES`]' order, to `query`.
macro_rules! bind_measures {
    ($query:expr, $f:expr) => {
        $query
            .bind($f.messages)
            .bind(i64::from($f.resolved()))
            .bind(i64::from($f.agent_resolved()))
            .bind(i64::from($f.handed_over()))
            .bind($f.first_response_ms())
            .bind($f.resolution_ms())
            .bind($f.first_response_ms().map(facts::bucket))
            .bind($f.resolution_ms().map(facts::bucket))
    };
}

/// Writes a conversation's row and replaces its labels.
pub async fn write_fact(tx: &mut Tx<'_>, f: &Fact) -> Result<(), EventLogError> {
    on_conn!(tx, conn => bind_measures!(sqlx::query(
        "INSERT INTO insights_conversations (workspace_id, conversation_id, channel, status,
            assistant, flow, sentiment, request_type, urgency, customer_effort, churn_risk,
            knowledge_gap, resolution, resolved, messages, is_resolved, is_agent_resolved,
            is_handed_over, first_response_ms, resolution_ms, first_response_bucket,
            resolution_bucket, created_at, updated_at, first_customer_at, first_response_at,
            resolved_at, handed_over, version)
         VALUES ($1, $2, $3, $4, $5,
            COALESCE((SELECT f.flow_id FROM insights_flows f
                      WHERE f.workspace_id = $1 AND f.conversation_id = $2), $6),
            $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
            $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)
         ON CONFLICT (workspace_id, conversation_id) DO UPDATE SET
            channel = excluded.channel, status = excluded.status,
            assistant = excluded.assistant, flow = excluded.flow,
            sentiment = excluded.sentiment, request_type = excluded.request_type,
            urgency = excluded.urgency, customer_effort = excluded.customer_effort,
            churn_risk = excluded.churn_risk, knowledge_gap = excluded.knowledge_gap,
            resolution = excluded.resolution, resolved = excluded.resolved,
            messages = excluded.messages, is_resolved = excluded.is_resolved,
            is_agent_resolved = excluded.is_agent_resolved,
            is_handed_over = excluded.is_handed_over,
            first_response_ms = excluded.first_response_ms,
            resolution_ms = excluded.resolution_ms,
            first_response_bucket = excluded.first_response_bucket,
            resolution_bucket = excluded.resolution_bucket, created_at = excluded.created_at,
            updated_at = excluded.updated_at, first_customer_at = excluded.first_customer_at,
            first_response_at = excluded.first_response_at,
            resolved_at = excluded.resolved_at, handed_over = excluded.handed_over,
            version = excluded.version
         WHERE insights_conversations.version < excluded.version",
    )
    .bind(&f.workspace_id)
    .bind(&f.conversation_id)
    .bind(&f.channel)
    .bind(&f.status)
    .bind(&f.assistant)
    .bind(&f.history.flow)
    .bind(&f.sentiment)
    .bind(&f.request_type)
    .bind(&f.urgency)
    .bind(&f.customer_effort)
    .bind(&f.churn_risk)
    .bind(&f.knowledge_gap)
    .bind(f.resolution)
    .bind(if f.resolved() { "true" } else { "false" }), f)
    .bind(f.created_at)
    .bind(f.updated_at)
    .bind(f.history.first_customer_at)
    .bind(f.history.first_response_at)
    .bind(f.history.resolved_at)
    .bind(i64::from(f.history.handed_over))
    .bind(f.history.version)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    on_conn!(tx, conn => sqlx::query(
        "DELETE FROM insights_labels WHERE workspace_id = $1 AND conversation_id = $2",
    )
    .bind(&f.workspace_id)
    .bind(&f.conversation_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    for (dimension, value) in &f.labels {
        on_conn!(tx, conn => bind_measures!(sqlx::query(
            "INSERT INTO insights_labels (workspace_id, conversation_id, dimension, value,
                created_at, messages, is_resolved, is_agent_resolved, is_handed_over,
                first_response_ms, resolution_ms, first_response_bucket, resolution_bucket)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&f.workspace_id)
        .bind(&f.conversation_id)
        .bind(dimension)
        .bind(value)
        .bind(f.created_at), f)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

/// Connexease's stats by agent or by channel.
pub mod connexease_kinds {
    pub const AGENT: &str = "agent";
    pub const CHANNEL: &str = "channel";
}

/// Replaces the workspace's Connexease stats with `read` (read at `read_at`, micros),
/// unless a later reading is already kept.
pub async fn record_connexease_stats(
    tx: &mut Tx<'_>,
    workspace_id: &str,
    read: &switchboard_proto::connexease::v1::StatsRead,
    read_at: i64,
) -> Result<(), EventLogError> {
    let later: Option<i64> = on_conn!(tx, conn => sqlx::query_scalar(
        "SELECT MAX(read_at) FROM insights_connexease_stats WHERE workspace_id = $1",
    )
    .bind(workspace_id)
    .fetch_one(&mut *conn)
    .await)?;
    if later.is_some_and(|later| later > read_at) {
        return Ok(());
    }
    on_conn!(tx, conn => sqlx::query("DELETE FROM insights_connexease_stats WHERE workspace_id = $1")
        .bind(workspace_id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
    let rows = read
        .agents
        .iter()
        .map(|a| (connexease_kinds::AGENT, a))
        .chain(read.channels.iter().map(|c| (connexease_kinds::CHANNEL, c)));
    for (kind, row) in rows {
        on_conn!(tx, conn => sqlx::query(
            "INSERT INTO insights_connexease_stats (workspace_id, kind, id, name, email,
                 first_response_seconds, average_response_seconds, message_count,
                 customer_count, read_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (workspace_id, kind, id) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(kind)
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.email)
        .bind(row.first_response_seconds)
        .bind(row.average_response_seconds)
        .bind(i64::try_from(row.message_count).unwrap_or(i64::MAX))
        .bind(i64::try_from(row.customer_count).unwrap_or(i64::MAX))
        .bind(read_at)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

/// Records the flow a conversation runs (the first one seen wins), on its row when it has
/// one already.
pub async fn record_flow(
    tx: &mut Tx<'_>,
    workspace_id: &str,
    conversation_id: &str,
    flow_id: &str,
) -> Result<(), EventLogError> {
    let inserted = on_conn!(tx, conn => sqlx::query(
        "INSERT INTO insights_flows (workspace_id, conversation_id, flow_id) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, conversation_id) DO NOTHING",
    )
    .bind(workspace_id)
    .bind(conversation_id)
    .bind(flow_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted > 0 {
        on_conn!(tx, conn => sqlx::query(
            "UPDATE insights_conversations SET flow = $3
             WHERE workspace_id = $1 AND conversation_id = $2 AND flow = ''",
        )
        .bind(workspace_id)
        .bind(conversation_id)
        .bind(flow_id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Questions.
// ---------------------------------------------------------------------------------------

/// Which conversations a question is about.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub workspace_id: &'a str,
    /// Creation times; `None`: any.
    pub window: Option<Window>,
    pub clauses: &'a [Clause],
}

/// What rows are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    Dimension(Target),
    /// An SQL expression over `c` (a trend's bucket key), built by this crate.
    Expr(String),
}

/// What one group of conversations measures: counts, sums, and the histograms of its
/// first-response and resolution times (`(bucket, conversations)`, see
/// [`facts::bucket`]) that medians are read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    pub conversations: i64,
    pub messages: i64,
    pub resolved: i64,
    pub agent_resolved: i64,
    pub handed_over: i64,
    pub first_response_total_ms: i64,
    pub with_first_response: i64,
    pub resolution_total_ms: i64,
    pub with_resolution: i64,
    pub first_response_histogram: Vec<(i64, i64)>,
    pub resolution_histogram: Vec<(i64, i64)>,
}

impl Measured {
    /// Adds `other`'s conversations: every figure, histograms included, adds up.
    pub fn merge(&mut self, other: &Measured) {
        self.conversations += other.conversations;
        self.messages += other.messages;
        self.resolved += other.resolved;
        self.agent_resolved += other.agent_resolved;
        self.handed_over += other.handed_over;
        self.first_response_total_ms += other.first_response_total_ms;
        self.with_first_response += other.with_first_response;
        self.resolution_total_ms += other.resolution_total_ms;
        self.with_resolution += other.with_resolution;
        self.first_response_histogram
            .extend_from_slice(&other.first_response_histogram);
        self.resolution_histogram
            .extend_from_slice(&other.resolution_histogram);
    }
}

#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(i64),
}

/// SQL text and its parameters, numbered as they are added.
#[derive(Debug, Clone, Default)]
struct Sql {
    binds: Vec<Value>,
}

impl Sql {
    fn text(&mut self, value: &str) -> String {
        self.binds.push(Value::Text(value.to_owned()));
        format!("${}", self.binds.len())
    }

    fn int(&mut self, value: i64) -> String {
        self.binds.push(Value::Int(value));
        format!("${}", self.binds.len())
    }

    fn list(&mut self, values: &[String]) -> String {
        values
            .iter()
            .map(|v| self.text(v))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `$text` with `$sql`'s parameters on the log's pool, mapping each row with `$map`.
/// The text is this module's own: table and column names from the catalogue, numbers it
/// computed, and `$n` placeholders for every value that came from a caller.
macro_rules! fetch {
    ($log:expr, $sql:expr, $text:expr, |$row:ident| $map:expr) => {
        on_pool!($log, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe($text.clone()));
            for value in &$sql.binds {
                query = match value {
                    Value::Text(s) => query.bind(s.clone()),
                    Value::Int(i) => query.bind(*i),
                };
            }
            query.fetch_all(pool).await.and_then(|rows| {
                rows.iter()
                    .map(|$row| -> Result<_, sqlx::Error> { Ok($map) })
                    .collect::<Result<Vec<_>, _>>()
            })
        }).map_err(EventLogError::from)
    };
}

/// The `FROM ...` of a scope with the joins `groups` need, its `WHERE ...`, and the
/// groups' expressions.
fn from_where(sql: &mut Sql, scope: &Scope<'_>, groups: &[Group]) -> (String, String, Vec<String>) {
    // Grouped by topic alone, unfiltered: the labels hold every conversation (those
    // without a topic under "") and its measures, so they are the rows.
    if let ([Group::Dimension(Target::Label(dimension))], []) = (groups, scope.clauses)
        && dimension == facts::TOPIC
    {
        let (ws, d) = (sql.text(scope.workspace_id), sql.text(dimension));
        let mut filter = format!("WHERE c.workspace_id = {ws} AND c.dimension = {d}");
        if let Some(window) = scope.window {
            let (from_ms, to_ms) = (sql.int(window.from), sql.int(window.to));
            filter.push_str(&format!(
                " AND c.created_at >= {from_ms} AND c.created_at < {to_ms}"
            ));
        }
        return (
            "FROM insights_labels c".to_owned(),
            filter,
            vec!["c.value".to_owned()],
        );
    }
    let mut from = String::from("FROM insights_conversations c");
    let mut exprs = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        match group {
            Group::Dimension(Target::Column(column)) => exprs.push(format!("c.{column}")),
            Group::Dimension(Target::Label(dimension)) => {
                let d = sql.text(dimension);
                from.push_str(&format!(
                    " LEFT JOIN insights_labels l{i} ON l{i}.workspace_id = c.workspace_id
                      AND l{i}.conversation_id = c.conversation_id AND l{i}.dimension = {d}"
                ));
                exprs.push(format!("COALESCE(l{i}.value, '')"));
            }
            Group::Expr(expr) => exprs.push(format!("CAST({expr} AS TEXT)")),
        }
    }
    let ws = sql.text(scope.workspace_id);
    let mut conditions = vec![format!("c.workspace_id = {ws}")];
    if let Some(window) = scope.window {
        let (from_ms, to_ms) = (sql.int(window.from), sql.int(window.to));
        conditions.push(format!(
            "c.created_at >= {from_ms} AND c.created_at < {to_ms}"
        ));
    }
    for clause in scope.clauses {
        conditions.push(condition(sql, clause, &ws, scope.window));
    }
    (from, format!("WHERE {}", conditions.join(" AND ")), exprs)
}

/// The SQL of one clause. A label clause is a semi-join on the conversations that have one
/// of the values (bounded by the window, which labels carry); "" of a label dimension other
/// than topics is "has none", an anti-join.
fn condition(sql: &mut Sql, clause: &Clause, ws: &str, window: Option<Window>) -> String {
    let values: Vec<String> = clause
        .values
        .iter()
        .filter(|v| !v.is_empty())
        .cloned()
        .collect();
    let none = values.len() < clause.values.len();
    match &clause.target {
        Target::Column(column) => {
            let all = sql.list(&clause.values);
            format!("c.{column} IN ({all})")
        }
        Target::Label(dimension) => {
            let d = sql.text(dimension);
            let within = match window {
                Some(w) => format!(
                    " AND x.created_at >= {} AND x.created_at < {}",
                    sql.int(w.from),
                    sql.int(w.to)
                ),
                None => String::new(),
            };
            let having = |sql: &mut Sql, values: &[String]| {
                let listed = sql.list(values);
                format!(
                    "c.conversation_id IN (SELECT x.conversation_id FROM insights_labels x
                     WHERE x.workspace_id = {ws} AND x.dimension = {d}{within}
                     AND x.value IN ({listed}))"
                )
            };
            // Every conversation has a topic row ("" for none): values are plain values.
            if dimension == facts::TOPIC {
                return having(sql, &clause.values);
            }
            let mut any = Vec::new();
            if !values.is_empty() {
                any.push(having(sql, &values));
            }
            if none {
                any.push(format!(
                    "NOT EXISTS (SELECT 1 FROM insights_labels x WHERE x.workspace_id = c.workspace_id
                     AND x.conversation_id = c.conversation_id AND x.dimension = {d})"
                ));
            }
            format!("({})", any.join(" OR "))
        }
    }
}

/// Cursors of id-ordered lists: the last id of the page, opaque.
pub fn encode_cursor(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("i1:{last_id}"))
}

pub fn decode_cursor(cursor: &str) -> Result<String, FieldViolation> {
    if cursor.is_empty() {
        return Ok(String::new());
    }
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix("i1:").map(str::to_owned))
        .ok_or_else(|| FieldViolation::new("cursor", "not a cursor of this list"))
}

/// One page of ids (newest first) and the cursor of the next, if any.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: String,
}

fn page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|last| encode_cursor(id(last)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Page { items, next_cursor }
}

/// Reads the insights read model.
#[derive(Clone)]
pub struct InsightsStore {
    log: EventLog,
}

impl InsightsStore {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// What the conversations in `scope` measure, per distinct values of `groups` (one
    /// entry, under no values, when `groups` is empty; none for a group without
    /// conversations).
    ///
    /// Two aggregates run at once over the same scope: every sum per group and
    /// first-response bucket (the group's sums are the buckets' sums), and the counts per
    /// group and resolution bucket. Medians come from those histograms, so no query sorts
    /// the rows themselves.
    pub async fn measure(
        &self,
        scope: &Scope<'_>,
        groups: &[Group],
    ) -> Result<BTreeMap<Vec<String>, Measured>, EventLogError> {
        let mut sql = Sql::default();
        let (from, filter, exprs) = from_where(&mut sql, scope, groups);
        // Grouped by the bucket first: no index's order can then stand in for the grouping,
        // so the planner picks the index that narrows and covers the scan (SQLite would
        // otherwise walk the labels in value order and fetch every row).
        let by = |extra: &str| {
            let mut select = exprs.clone();
            select.push(extra.to_owned());
            let grouped = std::iter::once(select.len())
                .chain(1..select.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            (select, grouped)
        };
        let (mut select, grouped) = by("c.first_response_bucket");
        select.extend(
            [
                "COUNT(*)",
                "CAST(COALESCE(SUM(c.messages), 0) AS BIGINT)",
                "CAST(COALESCE(SUM(c.is_resolved), 0) AS BIGINT)",
                "CAST(COALESCE(SUM(c.is_agent_resolved), 0) AS BIGINT)",
                "CAST(COALESCE(SUM(c.is_handed_over), 0) AS BIGINT)",
                "CAST(COALESCE(SUM(c.first_response_ms), 0) AS BIGINT)",
                "COUNT(c.first_response_ms)",
                "CAST(COALESCE(SUM(c.resolution_ms), 0) AS BIGINT)",
                "COUNT(c.resolution_ms)",
            ]
            .map(str::to_owned),
        );
        let sums = format!(
            "SELECT {} {from} {filter} GROUP BY {grouped}",
            select.join(", ")
        );
        let (mut select, grouped) = by("c.resolution_bucket");
        select.push("COUNT(*)".to_owned());
        let resolutions = format!(
            "SELECT {} {from} {filter} AND c.resolution_bucket IS NOT NULL GROUP BY {grouped}",
            select.join(", ")
        );
        let n = exprs.len();
        let (sums, resolutions) = tokio::try_join!(
            async {
                fetch!(self.log, sql, sums, |r| {
                    let mut values = Vec::with_capacity(n);
                    for i in 0..n {
                        values.push(r.try_get::<String, _>(i)?);
                    }
                    let bucket: Option<i64> = r.try_get(n)?;
                    let mut f = [0i64; 9];
                    for (k, figure) in f.iter_mut().enumerate() {
                        *figure = r.try_get(n + 1 + k)?;
                    }
                    (values, bucket, f)
                })
            },
            async {
                fetch!(self.log, sql, resolutions, |r| {
                    let mut values = Vec::with_capacity(n);
                    for i in 0..n {
                        values.push(r.try_get::<String, _>(i)?);
                    }
                    (values, r.try_get::<i64, _>(n)?, r.try_get::<i64, _>(n + 1)?)
                })
            },
        )?;
        let mut out: BTreeMap<Vec<String>, Measured> = BTreeMap::new();
        for (values, bucket, f) in sums {
            out.entry(values).or_default().merge(&Measured {
                conversations: f[0],
                messages: f[1],
                resolved: f[2],
                agent_resolved: f[3],
                handed_over: f[4],
                first_response_total_ms: f[5],
                with_first_response: f[6],
                resolution_total_ms: f[7],
                with_resolution: f[8],
                first_response_histogram: bucket.map(|b| (b, f[0])).into_iter().collect(),
                resolution_histogram: vec![],
            });
        }
        for (values, bucket, count) in resolutions {
            if let Some(m) = out.get_mut(&values) {
                m.resolution_histogram.push((bucket, count));
            }
        }
        out.retain(|_, m| m.conversations > 0);
        Ok(out)
    }

    /// One page of the ids of the conversations in `scope`, newest first, optionally only
    /// those last updated in `[updated_after, updated_before)` (0: unbounded).
    pub async fn conversation_ids(
        &self,
        scope: &Scope<'_>,
        updated: (i64, i64),
        limit: u32,
        cursor: &str,
    ) -> Result<Page<String>, EventLogError> {
        let mut sql = Sql::default();
        let (from, filter, _) = from_where(&mut sql, scope, &[]);
        let mut text = format!("SELECT c.conversation_id {from} {filter}");
        if updated.0 > 0 {
            text.push_str(&format!(" AND c.updated_at >= {}", sql.int(updated.0)));
        }
        if updated.1 > 0 {
            text.push_str(&format!(" AND c.updated_at < {}", sql.int(updated.1)));
        }
        if !cursor.is_empty() {
            text.push_str(&format!(" AND c.conversation_id < {}", sql.text(cursor)));
        }
        text.push_str(&format!(
            " ORDER BY c.conversation_id DESC LIMIT {}",
            sql.int(i64::from(limit) + 1)
        ));
        let ids = fetch!(self.log, sql, text, |r| r.try_get::<String, _>(0)?)?;
        Ok(page(ids, limit, |id| id))
    }

    /// The most frequent values of open column `column` in a workspace.
    pub async fn top_values(
        &self,
        workspace_id: &str,
        column: &str,
        limit: i64,
    ) -> Result<Vec<String>, EventLogError> {
        let mut sql = Sql::default();
        let ws = sql.text(workspace_id);
        let text = format!(
            "SELECT c.{column}, COUNT(*) FROM insights_conversations c
             WHERE c.workspace_id = {ws} AND c.{column} <> ''
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {}",
            sql.int(limit)
        );
        fetch!(self.log, sql, text, |r| r.try_get::<String, _>(0)?)
    }

    /// The label dimensions of a workspace's conversations created since `since`, and
    /// their most frequent values, most used first: at most `per_dimension` for each.
    pub async fn label_values(
        &self,
        workspace_id: &str,
        since: i64,
        per_dimension: usize,
    ) -> Result<BTreeMap<String, Vec<String>>, EventLogError> {
        let mut sql = Sql::default();
        let ws = sql.text(workspace_id);
        let since = sql.int(since);
        let text = format!(
            "SELECT l.dimension, l.value, COUNT(*) FROM insights_labels l
             JOIN insights_conversations c ON c.workspace_id = l.workspace_id
              AND c.conversation_id = l.conversation_id
             WHERE l.workspace_id = {ws} AND c.created_at >= {since} AND l.value <> ''
             GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 5000"
        );
        let rows = fetch!(self.log, sql, text, |r| (
            r.try_get::<String, _>(0)?,
            r.try_get::<String, _>(1)?
        ))?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (dimension, value) in rows {
            let values = out.entry(dimension).or_default();
            if values.len() < per_dimension {
                values.push(value);
            }
        }
        Ok(out)
    }

    /// When the workspace's first conversation started; `None` before any.
    pub async fn first_created_at(&self, workspace_id: &str) -> Result<Option<i64>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT MIN(created_at) FROM insights_conversations WHERE workspace_id = {}",
            sql.text(workspace_id)
        );
        let rows = fetch!(self.log, sql, text, |r| r.try_get::<Option<i64>, _>(0)?)?;
        Ok(rows.into_iter().next().flatten())
    }

    /// The workspace's Connexease stats of `kind`, slowest first response first, and when
    /// they were read (micros).
    pub async fn connexease_stats(
        &self,
        workspace_id: &str,
        kind: &str,
    ) -> Result<
        (
            Vec<switchboard_proto::connexease::v1::ResponseStats>,
            Option<i64>,
        ),
        EventLogError,
    > {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT id, name, email, first_response_seconds, average_response_seconds,
                    message_count, customer_count, read_at
             FROM insights_connexease_stats WHERE workspace_id = {} AND kind = {}
             ORDER BY first_response_seconds DESC, name, id",
            sql.text(workspace_id),
            sql.text(kind)
        );
        let rows = fetch!(self.log, sql, text, |r| (
            switchboard_proto::connexease::v1::ResponseStats {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                email: r.try_get(2)?,
                first_response_seconds: r.try_get(3)?,
                average_response_seconds: r.try_get(4)?,
                message_count: u64::try_from(r.try_get::<i64, _>(5)?).unwrap_or_default(),
                customer_count: u64::try_from(r.try_get::<i64, _>(6)?).unwrap_or_default(),
            },
            r.try_get::<i64, _>(7)?
        ))?;
        let read_at = rows.iter().map(|(_, at)| *at).max();
        Ok((rows.into_iter().map(|(row, _)| row).collect(), read_at))
    }

    /// Workspaces with a conversation updated at or after `since`.
    pub async fn active_workspaces(&self, since: i64) -> Result<Vec<String>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT DISTINCT workspace_id FROM insights_conversations WHERE updated_at >= {}",
            sql.int(since)
        );
        fetch!(self.log, sql, text, |r| r.try_get::<String, _>(0)?)
    }

    pub async fn segment(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<pb::Segment>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT body FROM insights_segments WHERE workspace_id = {} AND id = {}",
            sql.text(workspace_id),
            sql.text(id)
        );
        let rows = fetch!(self.log, sql, text, |r| r.try_get::<Vec<u8>, _>(0)?)?;
        rows.first().map(|b| decode_body(b)).transpose()
    }

    pub async fn segments(
        &self,
        workspace_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<Page<pb::Segment>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT body FROM insights_segments WHERE workspace_id = {} AND ({c} = '' OR id < {c})
             ORDER BY id DESC LIMIT {}",
            sql.text(workspace_id),
            sql.int(i64::from(limit) + 1),
            c = sql.text(cursor),
        );
        let rows = fetch!(self.log, sql, text, |r| r.try_get::<Vec<u8>, _>(0)?)?;
        let items = rows
            .iter()
            .map(|b| decode_body(b))
            .collect::<Result<Vec<pb::Segment>, _>>()?;
        Ok(page(items, limit, |s| &s.id))
    }

    pub async fn finding(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<pb::Finding>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT body FROM insights_findings WHERE workspace_id = {} AND id = {}",
            sql.text(workspace_id),
            sql.text(id)
        );
        let rows = fetch!(self.log, sql, text, |r| r.try_get::<Vec<u8>, _>(0)?)?;
        rows.first().map(|b| decode_body(b)).transpose()
    }

    pub async fn findings(
        &self,
        workspace_id: &str,
        include_dismissed: bool,
        limit: u32,
        cursor: &str,
    ) -> Result<Page<pb::Finding>, EventLogError> {
        let mut sql = Sql::default();
        let text = format!(
            "SELECT body FROM insights_findings WHERE workspace_id = {}
               AND ({} = 1 OR dismissed = 0) AND ({c} = '' OR id < {c})
             ORDER BY id DESC LIMIT {}",
            sql.text(workspace_id),
            sql.int(i64::from(include_dismissed)),
            sql.int(i64::from(limit) + 1),
            c = sql.text(cursor),
        );
        let rows = fetch!(self.log, sql, text, |r| r.try_get::<Vec<u8>, _>(0)?)?;
        let items = rows
            .iter()
            .map(|b| decode_body(b))
            .collect::<Result<Vec<pb::Finding>, _>>()?;
        Ok(page(items, limit, |f| &f.id))
    }
}
