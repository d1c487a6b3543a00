//! The `switchboard.actions.v1.Actions` gRPC service.

mod error;

use switchboard_proto::actions::v1::actions_server::{self, ActionsServer};
use switchboard_proto::actions::v1::*;
use switchboard_runtime::requests::valid_prefixed_id;
use tonic::{Request, Response, Status};

use crate::domain::{self, Command, FieldViolation};
use crate::service::{ActionService, RequestContext, RunRequest, new_action_id};
use crate::store::{ActionStore, ExecutionFilter};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Clone)]
pub struct ActionsApi {
    service: ActionService,
    store: ActionStore,
}

impl ActionsApi {
    /// The API over the service's log, sealing secrets with `keyring`, calling out through
    /// `client` and acting on the systems in `ports`.
    pub fn over(
        log: switchboard_eventlog::EventLog,
        keyring: std::sync::Arc<switchboard_secrets::Keyring>,
        client: switchboard_outbound::GuardedClient,
        ports: crate::ports::Ports,
    ) -> Self {
        Self::new(
            ActionService::new(log.clone(), keyring, client).with_ports(ports),
            ActionStore::new(log),
        )
    }

    pub fn new(service: ActionService, store: ActionStore) -> Self {
        Self { service, store }
    }

    pub fn into_server(self) -> ActionsServer<Self> {
        ActionsServer::new(self).max_decoding_message_size(1024 * 1024)
    }
}

fn context(
    workspace_id: &str,
    request_id: &str,
    action_id: Option<&str>,
) -> Result<RequestContext, Status> {
    context_with(workspace_id, request_id, action_id, Vec::new())
}

/// Checks the fields every request carries, adding their violations to those the request's
/// own fields already have (`v`), and answers every one of them at once.
fn context_with(
    workspace_id: &str,
    request_id: &str,
    action_id: Option<&str>,
    mut v: Vec<FieldViolation>,
) -> Result<RequestContext, Status> {
    if !valid_prefixed_id(workspace_id, "ws_") {
        v.push(violation(
            "workspace_id",
            "required: `ws_` followed by 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if request_id.len() > 128 {
        v.push(violation("request_id", "at most 128 bytes"));
    }
    if let Some(id) = action_id.filter(|id| !valid_prefixed_id(id, "act_")) {
        let _ = id;
        v.push(violation(
            "action_id",
            "required: `act_` followed by 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if !v.is_empty() {
        v.sort_by_key(|violation| body_field_rank(&violation.field));
        return Err(error::invalid(v));
    }
    Ok(RequestContext {
        workspace_id: workspace_id.to_owned(),
        request_id: request_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
    })
}

/// The envelope's fields first, then the request's own, as they were found.
fn body_field_rank(field: &str) -> u8 {
    u8::from(!matches!(
        field,
        "workspace_id" | "request_id" | "action_id"
    ))
}

/// Every violation of a definition that can be known before the stored one is read: its
/// own fields (a secret may be stored, on an update) and its query database.
fn definition_violations(
    service: &ActionService,
    definition: &ActionDefinition,
    previous: domain::Previous<'_>,
) -> Vec<FieldViolation> {
    let mut found = match domain::validate(definition, previous) {
        Err(domain::DomainError::Invalid(violations)) => violations,
        _ => Vec::new(),
    };
    found.extend(service.connection_violation(definition));
    found
}

/// An `integration_id` field's violation, if it is not an integration's id.
fn integration_id(id: &str) -> Vec<FieldViolation> {
    if valid_prefixed_id(id, "int_") {
        return Vec::new();
    }
    vec![violation(
        "integration_id",
        "required: `int_` followed by 1 to 64 letters, digits, `_` or `-`",
    )]
}

fn violation(field: &str, description: &str) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// Variables: a JSON object of at most 1 MiB (the gRPC limit), empty for none.
fn variables(json: &str, v: &mut Vec<FieldViolation>) -> serde_json::Value {
    if json.trim().is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        Ok(_) => {
            v.push(violation(
                "variables_json",
                "must be a JSON object of namespaces",
            ));
            serde_json::Value::Null
        }
        Err(e) => {
            v.push(violation("variables_json", &format!("not JSON: {e}")));
            serde_json::Value::Null
        }
    }
}

fn answer(definition: ActionDefinition) -> Response<ActionResponse> {
    Response::new(ActionResponse {
        action: Some(domain::public_view(definition)),
    })
}

#[tonic::async_trait]
impl actions_server::Actions for ActionsApi {
    async fn create_action(
        &self,
        request: Request<CreateActionRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let r = request.into_inner();
        let mut definition = r.definition.unwrap_or_default();
        let found = definition_violations(&self.service, &definition, domain::Previous::None);
        let ctx = context_with(&r.workspace_id, &r.request_id, None, found)?;
        let id = new_action_id();
        definition.id = id.clone();
        definition.workspace_id = r.workspace_id;
        Ok(answer(
            self.service
                .execute(&ctx, &id, Command::Create { definition })
                .await?,
        ))
    }

    async fn update_action(
        &self,
        request: Request<UpdateActionRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let r = request.into_inner();
        let definition = r.definition.unwrap_or_default();
        let found = definition_violations(&self.service, &definition, domain::Previous::Unknown);
        let ctx = context_with(&r.workspace_id, &r.request_id, Some(&r.action_id), found)?;
        let command = Command::Update {
            definition,
            expected_version: (r.expected_version > 0).then_some(r.expected_version),
        };
        Ok(answer(
            self.service.execute(&ctx, &r.action_id, command).await?,
        ))
    }

    async fn set_action_enabled(
        &self,
        request: Request<SetActionEnabledRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let r = request.into_inner();
        let ctx = context(&r.workspace_id, &r.request_id, Some(&r.action_id))?;
        let command = Command::SetEnabled { enabled: r.enabled };
        Ok(answer(
            self.service.execute(&ctx, &r.action_id, command).await?,
        ))
    }

    async fn delete_action(
        &self,
        request: Request<DeleteActionRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let r = request.into_inner();
        let ctx = context(&r.workspace_id, &r.request_id, Some(&r.action_id))?;
        Ok(answer(
            self.service
                .execute(&ctx, &r.action_id, Command::Delete)
                .await?,
        ))
    }

    async fn get_action(
        &self,
        request: Request<GetActionRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", Some(&r.action_id))?;
        let found = self.store.get(&r.workspace_id, &r.action_id).await?;
        Ok(answer(found.ok_or_else(error::not_found)?))
    }

    async fn list_actions(
        &self,
        request: Request<ListActionsRequest>,
    ) -> Result<Response<ListActionsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            1..=MAX_LIMIT => r.limit,
            _ => {
                v.push(violation(
                    "limit",
                    "between 1 and 200, or 0 for the default of 50",
                ));
                DEFAULT_LIMIT
            }
        };
        context_with(&r.workspace_id, "", None, v)?;
        let (actions, next_cursor) = self
            .store
            .list(&r.workspace_id, r.enabled_only, limit, &r.cursor)
            .await?;
        Ok(Response::new(ListActionsResponse {
            actions: actions.into_iter().map(domain::public_view).collect(),
            next_cursor,
        }))
    }

    async fn execute_action(
        &self,
        request: Request<ExecuteActionRequest>,
    ) -> Result<Response<ExecutionResult>, Status> {
        let r = request.into_inner();
        let key_ok = (1..=128).contains(&r.idempotency_key.len())
            && r.idempotency_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        let mut v = Vec::new();
        if !key_ok {
            v.push(violation(
                "idempotency_key",
                "required: 1 to 128 of letters, digits, `_`, `-`, `.` and `:`",
            ));
        }
        if PermissionLevel::try_from(r.caller_permission).is_err() {
            v.push(violation("caller_permission", "unknown value"));
        }
        if Trigger::try_from(r.triggered_by).is_err() {
            v.push(violation("triggered_by", "unknown value"));
        }
        let variables = variables(&r.variables_json, &mut v);
        let ctx = context_with(&r.workspace_id, "", Some(&r.action_id), v)?;
        let trigger = r.triggered_by();
        let run = RunRequest {
            action_id: r.action_id,
            variables,
            idempotency_key: r.idempotency_key,
            confirmed: r.confirmed,
            caller: PermissionLevel::try_from(r.caller_permission)
                .unwrap_or(PermissionLevel::Agent),
            trigger,
            conversation_id: r.conversation_id,
            inject_result: r.inject_result,
            test: false,
            ..Default::default()
        };
        Ok(Response::new(self.service.run(&ctx, run).await?))
    }

    async fn test_action(
        &self,
        request: Request<TestActionRequest>,
    ) -> Result<Response<ExecutionResult>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        let variables = variables(&r.variables_json, &mut v);
        let ctx = context_with(&r.workspace_id, "", Some(&r.action_id), v)?;
        let run = RunRequest {
            action_id: r.action_id,
            variables,
            test: true,
            ..Default::default()
        };
        Ok(Response::new(self.service.run(&ctx, run).await?))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        if !r.action_id.is_empty() && !valid_prefixed_id(&r.action_id, "act_") {
            v.push(violation(
                "action_id",
                "`act_` followed by 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        if r.conversation_id.len() > 128 {
            v.push(violation("conversation_id", "at most 128 bytes"));
        }
        let micros = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().map_or(0, |t| {
                t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos) / 1000
            })
        };
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            1..=MAX_LIMIT => r.limit,
            _ => {
                v.push(violation(
                    "limit",
                    "between 1 and 200, or 0 for the default of 50",
                ));
                0
            }
        };
        context_with(&r.workspace_id, "", None, v)?;
        let filter = ExecutionFilter {
            action_id: r.action_id,
            conversation_id: r.conversation_id,
            since: micros(&r.since),
            until: micros(&r.until),
            include_tests: r.include_tests,
            refusals_only: r.refusals_only,
        };
        let (executions, next_cursor) = self
            .store
            .executions(&r.workspace_id, &filter, limit, &r.cursor)
            .await?;
        Ok(Response::new(ListExecutionsResponse {
            executions,
            next_cursor,
        }))
    }

    async fn list_agent_tools(
        &self,
        request: Request<ListAgentToolsRequest>,
    ) -> Result<Response<ListAgentToolsResponse>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", None)?;
        if r.action_ids.len() > 100 {
            return Err(error::invalid(vec![FieldViolation {
                field: "action_ids".into(),
                description: "at most 100".into(),
            }]));
        }
        let mut tools = Vec::new();
        let mut levels = std::collections::HashMap::new();
        let mut cursor = String::new();
        loop {
            let (page, next) = self
                .store
                .list(&r.workspace_id, true, MAX_LIMIT, &cursor)
                .await?;
            // The agent may run only what its permission level allows (raised by an
            // integration's): the rest is not offered to the model at all.
            for definition in &page {
                let integration = match domain::integration::of(definition) {
                    None => None,
                    Some(id) => match levels.get(id) {
                        Some(level) => Some(*level),
                        None => {
                            let found = self
                                .service
                                .load_integration(&r.workspace_id, id)
                                .await?
                                .map_or(PermissionLevel::Agent as i32, |i| i.permission_level);
                            levels.insert(id.to_owned(), found);
                            Some(found)
                        }
                    },
                };
                let level = definition.permission_level.max(integration.unwrap_or(0));
                if level <= PermissionLevel::Agent as i32 {
                    tools.push(domain::agent_tool(definition));
                }
            }
            if next.is_empty() {
                break;
            }
            cursor = next;
        }
        // An assistant's tools: its own actions, in its order.
        if !r.action_ids.is_empty() {
            // Each once: a function name twice is refused by the model APIs.
            let mut seen = std::collections::HashSet::new();
            tools = r
                .action_ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| tools.iter().find(|t| t.action_id == *id).cloned())
                .collect();
        }
        Ok(Response::new(ListAgentToolsResponse { tools }))
    }
    async fn save_integration(
        &self,
        request: Request<SaveIntegrationRequest>,
    ) -> Result<Response<Integration>, Status> {
        let r = request.into_inner();
        let given = r.integration.unwrap_or_default();
        let ctx = context(&given.workspace_id, &r.request_id, None)?;
        let saved = self
            .service
            .save_integration(&ctx, given, r.expected_version)
            .await?;
        Ok(Response::new(saved))
    }

    async fn get_integration(
        &self,
        request: Request<GetIntegrationRequest>,
    ) -> Result<Response<Integration>, Status> {
        let r = request.into_inner();
        context_with(&r.workspace_id, "", None, integration_id(&r.integration_id))?;
        let found = self
            .service
            .integration(&r.workspace_id, &r.integration_id)
            .await?;
        Ok(Response::new(found))
    }

    async fn list_integrations(
        &self,
        request: Request<ListIntegrationsRequest>,
    ) -> Result<Response<ListIntegrationsResponse>, Status> {
        let r = request.into_inner();
        context(&r.workspace_id, "", None)?;
        let integrations = self.service.integrations(&r.workspace_id).await?;
        Ok(Response::new(ListIntegrationsResponse { integrations }))
    }

    async fn delete_integration(
        &self,
        request: Request<DeleteIntegrationRequest>,
    ) -> Result<Response<Integration>, Status> {
        let r = request.into_inner();
        let ctx = context_with(
            &r.workspace_id,
            &r.request_id,
            None,
            integration_id(&r.integration_id),
        )?;
        let deleted = self
            .service
            .delete_integration(&ctx, &r.integration_id)
            .await?;
        Ok(Response::new(deleted))
    }
}
