//! The other systems integration kinds act on, each behind a trait so the executor does not
//! care whether it is wired: the conversations service (gRPC), Connexease (the connexease
//! service), action workflows (the flows service) and the operator's query databases.
//!
//! What is not wired answers a clear "not connected" failure instead of pretending.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value as Json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use switchboard_clients::{ConnexeaseClient, ConversationsClient, FlowsClient};
use switchboard_proto::connexease::v1::RunOperationRequest;
use switchboard_proto::conversations::v1::{
    GetConversationRequest, RemoveMetafieldsRequest, SetMetafieldsRequest, SetStatusRequest,
};
use switchboard_proto::events::v1::ConversationStatus;

/// Why another system did not do what an action asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Nothing is configured to reach it.
    #[error("{0}")]
    NotConnected(String),
    /// It answered and refused (an ended conversation, an unknown group, a bad statement).
    #[error("{0}")]
    Rejected(String),
    /// It could not be reached or failed inside.
    #[error("{0}")]
    Unavailable(String),
    /// It did not answer in time.
    #[error("{0}")]
    Timeout(String),
}

/// Whom a call is for; `idempotency_key` makes a repeated call change nothing twice.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub workspace_id: &'a str,
    pub conversation_id: &'a str,
    pub idempotency_key: &'a str,
    pub traceparent: &'a str,
}

/// A change to a conversation: status and metafields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationUpdate {
    pub status: Option<ConversationStatus>,
    pub set_metafields: BTreeMap<String, String>,
    pub remove_metafields: Vec<String>,
}

#[async_trait]
pub trait Conversations: Send + Sync {
    async fn update(&self, call: &Call<'_>, update: &ConversationUpdate) -> Result<(), PortError>;

    /// The conversation's secure metadata in plain text, for rendering the inputs a flow
    /// sealed. Kept in memory only for the run it is fetched for.
    async fn secure_metadata(&self, call: &Call<'_>) -> Result<Map<String, Json>, PortError>;
}

#[async_trait]
pub trait Connexease: Send + Sync {
    /// Runs one operation with its rendered arguments; answers what Connexease reported.
    async fn run(
        &self,
        call: &Call<'_>,
        operation: &str,
        arguments: &BTreeMap<String, String>,
    ) -> Result<Json, PortError>;
}

#[async_trait]
pub trait Workflows: Send + Sync {
    /// Runs an action workflow to its answer within `deadline`, with `inputs` as its
    /// `input` and `context` (the conversation's variables: `conversation`, `lead`, …)
    /// beside them.
    async fn invoke(
        &self,
        call: &Call<'_>,
        workflow: &str,
        inputs: &Map<String, Json>,
        context: &Map<String, Json>,
        deadline: Duration,
    ) -> Result<Json, PortError>;
}

/// An integration with nothing behind it yet.
pub struct NotConnected {
    /// The registered code its errors carry.
    code: switchboard_runtime::codes::Code,
    what: &'static str,
}

impl NotConnected {
    /// Connexease: the connexease service is not deployed or not configured.
    pub const CONNEXEASE: NotConnected = NotConnected {
        code: switchboard_runtime::codes::ACT_CONNEXEASE_NOT_CONNECTED,
        what: "Connexease is not connected (the connexease service is not configured)",
    };
    /// Action workflows: the flows service is not deployed or not configured.
    pub const WORKFLOWS: NotConnected = NotConnected {
        code: switchboard_runtime::codes::ACT_WORKFLOWS_NOT_CONNECTED,
        what: "action workflows are not connected (the flows service is not configured)",
    };
    /// Conversations: no conversations service address is configured.
    pub const CONVERSATIONS: NotConnected = NotConnected {
        code: switchboard_runtime::codes::ACT_CONVERSATIONS_NOT_CONNECTED,
        what: "the conversations service is not connected (set SWITCHBOARD_CONVERSATIONS_URL)",
    };
}

#[async_trait]
impl Conversations for NotConnected {
    async fn update(&self, _: &Call<'_>, _: &ConversationUpdate) -> Result<(), PortError> {
        Err(PortError::NotConnected(self.code.message(self.what)))
    }

    async fn secure_metadata(&self, _: &Call<'_>) -> Result<Map<String, Json>, PortError> {
        Err(PortError::NotConnected(self.code.message(self.what)))
    }
}

#[async_trait]
impl Connexease for NotConnected {
    async fn run(
        &self,
        _: &Call<'_>,
        _: &str,
        _: &BTreeMap<String, String>,
    ) -> Result<Json, PortError> {
        Err(PortError::NotConnected(self.code.message(self.what)))
    }
}

#[async_trait]
impl Workflows for NotConnected {
    async fn invoke(
        &self,
        _: &Call<'_>,
        _: &str,
        _: &Map<String, Json>,
        _: &Map<String, Json>,
        _: Duration,
    ) -> Result<Json, PortError> {
        Err(PortError::NotConnected(self.code.message(self.what)))
    }
}

/// A request id for one step of an execution: the same key always gives the same id, so a
/// repeated execution is answered by the conversation's recorded result.
fn step_request_id(call: &Call<'_>, step: &str) -> String {
    let key = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, call.idempotency_key.as_bytes());
    format!("action-{step}-{key}")
}

/// The conversations service over gRPC; every call joins the trace of the execution
/// (`call.traceparent`).
#[async_trait]
impl Conversations for ConversationsClient {
    async fn secure_metadata(&self, call: &Call<'_>) -> Result<Map<String, Json>, PortError> {
        let values = self
            .with_traceparent(call.traceparent)
            .get_secure_metadata(GetConversationRequest {
                workspace_id: call.workspace_id.to_owned(),
                conversation_id: call.conversation_id.to_owned(),
            })
            .await
            .map_err(status_error)?
            .values;
        Ok(values
            .into_iter()
            .map(|(k, v)| (k, Json::String(v)))
            .collect())
    }

    async fn update(&self, call: &Call<'_>, update: &ConversationUpdate) -> Result<(), PortError> {
        let client = self.with_traceparent(call.traceparent);
        let ids = |step| {
            (
                call.workspace_id.to_owned(),
                step_request_id(call, step),
                call.conversation_id.to_owned(),
            )
        };
        if !update.set_metafields.is_empty() {
            let (workspace_id, request_id, conversation_id) = ids("set");
            let request = SetMetafieldsRequest {
                expected_version: 0,
                workspace_id,
                request_id,
                conversation_id,
                metafields: update.set_metafields.clone().into_iter().collect(),
            };
            client.set_metafields(request).await.map_err(status_error)?;
        }
        if !update.remove_metafields.is_empty() {
            let (workspace_id, request_id, conversation_id) = ids("remove");
            let request = RemoveMetafieldsRequest {
                expected_version: 0,
                workspace_id,
                request_id,
                conversation_id,
                keys: update.remove_metafields.clone(),
            };
            client
                .remove_metafields(request)
                .await
                .map_err(status_error)?;
        }
        if let Some(status) = update.status {
            let (workspace_id, request_id, conversation_id) = ids("status");
            let request = SetStatusRequest {
                expected_version: 0,
                workspace_id,
                request_id,
                conversation_id,
                status: status as i32,
            };
            client.set_status(request).await.map_err(status_error)?;
        }
        Ok(())
    }
}

fn status_error(status: tonic::Status) -> PortError {
    use tonic::Code;
    let message = format!("conversations: {}", status.message());
    match status.code() {
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
            PortError::Rejected(message)
        }
        Code::DeadlineExceeded => PortError::Timeout(message),
        Code::Unauthenticated | Code::PermissionDenied => PortError::NotConnected(format!(
            "{message} (check SWITCHBOARD_SERVICE_TOKEN on both services)"
        )),
        _ => PortError::Unavailable(message),
    }
}

/// The Postgres databases the operator lets `database_query` actions read, by name.
#[derive(Clone, Default)]
pub struct QueryDatabases {
    pools: BTreeMap<String, PgPool>,
}

/// A malformed `SWITCHBOARD_QUERY_DATABASES`.
#[derive(Debug, thiserror::Error)]
#[error("SWITCHBOARD_QUERY_DATABASES: {0}")]
pub struct QueryDatabasesError(String);

/// A query's rows as JSON objects, at most the action's row limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: Vec<Json>,
    /// More rows matched than the limit let through.
    pub truncated: bool,
}

impl QueryDatabases {
    /// Parses `name=postgres://...` pairs separated by commas or whitespace; pools connect
    /// on first use (at most four connections each).
    pub fn from_config(spec: &str) -> Result<Self, QueryDatabasesError> {
        let mut pools = BTreeMap::new();
        for entry in spec
            .split([',', ' ', '\n'])
            .filter(|e| !e.trim().is_empty())
        {
            let (name, url) = entry.trim().split_once('=').ok_or_else(|| {
                QueryDatabasesError(format!("`{entry}` is not name=postgres://..."))
            })?;
            if !crate::domain::valid_name(name) {
                return Err(QueryDatabasesError(format!(
                    "`{name}` is not a connection name (a letter, then a-z, 0-9 and `_`)"
                )));
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(QueryDatabasesError(format!(
                    "the URL of `{name}` must start with postgres://"
                )));
            }
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(url)
                .map_err(|e| QueryDatabasesError(format!("{name}: {e}")))?;
            pools.insert(name.to_owned(), pool);
        }
        Ok(Self { pools })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    /// Runs `statement` read-only with `parameters` bound (never interpolated), under a
    /// statement timeout, returning at most `max_rows` rows.
    pub async fn query(
        &self,
        connection: &str,
        statement: &str,
        parameters: &[Json],
        max_rows: u32,
        timeout: Duration,
    ) -> Result<Rows, PortError> {
        let pool = self.pools.get(connection).ok_or_else(|| {
            PortError::NotConnected(
                switchboard_runtime::codes::ACT_QUERY_DATABASE_UNKNOWN.message(format_args!(
                    "no query database named `{connection}` is configured"
                )),
            )
        })?;
        let statement = statement.trim().trim_end_matches(';');
        // The statement is the action author's; it is wrapped, never concatenated with
        // values, and the transaction is read-only before it runs.
        let sql = format!(
            "SELECT coalesce(json_agg(sb_row), '[]')::text FROM \
             (SELECT * FROM ({statement}\n) AS sb_query LIMIT {}) AS sb_row",
            u64::from(max_rows) + 1
        );
        let run = async {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION READ ONLY")
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET LOCAL statement_timeout = {}",
                timeout.as_millis().max(1)
            )))
            .execute(&mut *tx)
            .await?;
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
            for parameter in parameters {
                query = match parameter {
                    Json::Null => query.bind(None::<String>),
                    Json::Bool(b) => query.bind(*b),
                    Json::Number(n) => match n.as_i64() {
                        Some(i) => query.bind(i),
                        None => query.bind(n.as_f64().unwrap_or_default()),
                    },
                    Json::String(s) => query.bind(s.clone()),
                    other => query.bind(other.to_string()),
                };
            }
            let text = query.fetch_one(&mut *tx).await?;
            tx.rollback().await?;
            Ok::<_, sqlx::Error>(text)
        };
        let text = match tokio::time::timeout(timeout + Duration::from_secs(5), run).await {
            Err(_) => {
                return Err(PortError::Timeout(format!(
                    "the query did not finish within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(query_error(e, timeout)),
            Ok(Ok(text)) => text,
        };
        let mut rows: Vec<Json> = serde_json::from_str(&text)
            .map_err(|e| PortError::Unavailable(format!("the rows are not JSON: {e}")))?;
        let truncated = rows.len() > max_rows as usize;
        rows.truncate(max_rows as usize);
        Ok(Rows { rows, truncated })
    }
}

fn query_error(e: sqlx::Error, timeout: Duration) -> PortError {
    match e.as_database_error() {
        Some(db) if db.code().as_deref() == Some("57014") => PortError::Timeout(format!(
            "the statement ran longer than {} ms",
            timeout.as_millis()
        )),
        Some(db) if db.code().as_deref() == Some("25006") => {
            PortError::Rejected("the statement tried to write; query actions are read-only".into())
        }
        Some(db) => PortError::Rejected(format!(
            "the database refused the statement: {}",
            db.message()
        )),
        None => PortError::Unavailable(format!("the query database cannot be reached: {e}")),
    }
}

/// Everything integration kinds reach, wired by the binary.
#[derive(Clone)]
pub struct Ports {
    pub conversations: Arc<dyn Conversations>,
    pub connexease: Arc<dyn Connexease>,
    pub workflows: Arc<dyn Workflows>,
    pub databases: QueryDatabases,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            conversations: Arc::new(NotConnected::CONVERSATIONS),
            connexease: Arc::new(NotConnected::CONNEXEASE),
            workflows: Arc::new(NotConnected::WORKFLOWS),
            databases: QueryDatabases::default(),
        }
    }
}

/// The connexease service over gRPC; every call joins the trace of the execution. The
/// service retries Connexease's 429 and 5xx itself, within the client's deadline (wire it
/// with room for that: 60 s).
#[async_trait]
impl Connexease for ConnexeaseClient {
    async fn run(
        &self,
        call: &Call<'_>,
        operation: &str,
        arguments: &BTreeMap<String, String>,
    ) -> Result<Json, PortError> {
        let request = RunOperationRequest {
            workspace_id: call.workspace_id.to_owned(),
            idempotency_key: call.idempotency_key.to_owned(),
            conversation_id: call.conversation_id.to_owned(),
            operation: operation.to_owned(),
            arguments: arguments.clone().into_iter().collect(),
        };
        let answer = self
            .with_traceparent(call.traceparent)
            .run_operation(request)
            .await;
        let result = match answer {
            Ok(result) => result,
            Err(status) => {
                use tonic::Code;
                let message = format!("connexease: {}", status.message());
                return Err(match status.code() {
                    Code::FailedPrecondition => PortError::NotConnected(message),
                    Code::InvalidArgument | Code::NotFound => PortError::Rejected(message),
                    Code::DeadlineExceeded => PortError::Timeout(message),
                    _ => PortError::Unavailable(message),
                });
            }
        };
        if !result.ok {
            return Err(PortError::Rejected(format!("connexease: {}", result.error)));
        }
        Ok(serde_json::json!({
            "external_conversation_id": result.external_conversation_id,
            "external_customer_id": result.external_customer_id,
            "attempts": result.attempts,
            "response": serde_json::from_str::<Json>(&result.response_json).unwrap_or(Json::Null),
        }))
    }
}

/// The flows service's `InvokeActionWorkflow` over gRPC; every call joins the trace of
/// the execution, and waits for the workflow's deadline plus a margin (see
/// [`FlowsClient::invoke_action_workflow`]).
#[async_trait]
impl Workflows for FlowsClient {
    async fn invoke(
        &self,
        call: &Call<'_>,
        workflow: &str,
        inputs: &Map<String, Json>,
        context: &Map<String, Json>,
        deadline: Duration,
    ) -> Result<Json, PortError> {
        use switchboard_proto::flows::v1::{InvocationStatus, InvokeActionWorkflowRequest};
        let request = InvokeActionWorkflowRequest {
            workspace_id: call.workspace_id.to_owned(),
            name: workflow.to_owned(),
            variables_json: Json::Object(inputs.clone()).to_string(),
            deadline_ms: deadline.as_millis().min(60_000) as u32,
            conversation_id: call.conversation_id.to_owned(),
            request_id: call.idempotency_key.to_owned(),
            context_json: Json::Object(context.clone()).to_string(),
        };
        let answer = self
            .with_traceparent(call.traceparent)
            .invoke_action_workflow(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::NotFound => PortError::Rejected(status.message().to_owned()),
                _ => PortError::Unavailable(status.message().to_owned()),
            })?;
        match answer.status() {
            InvocationStatus::Completed => serde_json::from_str(&answer.response_json)
                .map_err(|e| PortError::Unavailable(format!("the workflow's answer: {e}"))),
            InvocationStatus::TimedOut => Err(PortError::Timeout(format!(
                "action workflow `{workflow}` did not answer in time (run {})",
                answer.run_id
            ))),
            _ => Err(PortError::Rejected(format!(
                "action workflow `{workflow}` failed: {}",
                answer.reason
            ))),
        }
    }
}
