//! The `switchboard.flows.v1.Flows` gRPC service.

mod error;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use switchboard_proto::flows::v1::flows_server::{self, FlowsServer};
use switchboard_proto::flows::v1::*;
use switchboard_runtime::requests::valid_prefixed_id;
use tonic::{Request, Response, Status};

use crate::domain::FieldViolation;
use crate::knowledge::{self, KnowledgeService};
use crate::service::{FlowsService, ServiceError};

fn collection_ref(workspace_id: &str, collection_id: &str) -> Result<(), Status> {
    check_ids(&[
        ("workspace_id", workspace_id, "ws_"),
        ("collection_id", collection_id, "kc_"),
    ])
}

/// A collection's ids checked with the rest of a request, so that one answer names every
/// violation: the ids', then `rest`'s (the service's own checks of the other fields).
fn collection_request<T>(
    workspace_id: &str,
    collection_id: &str,
    rest: impl FnOnce() -> Result<T, Vec<FieldViolation>>,
) -> Result<(), Status> {
    let mut violations = id_violations(&[
        ("workspace_id", workspace_id, "ws_"),
        ("collection_id", collection_id, "kc_"),
    ]);
    if violations.is_empty() {
        // The service checks the rest itself.
        return Ok(());
    }
    violations.extend(rest().err().unwrap_or_default());
    Err(error::invalid(violations))
}

#[derive(Clone)]
pub struct FlowsApi {
    service: FlowsService,
    knowledge: KnowledgeService,
    runs: crate::runtime::RunService,
    providers: Option<crate::providers::Providers>,
}

impl FlowsApi {
    pub fn new(service: FlowsService) -> Self {
        Self {
            knowledge: KnowledgeService::new(service.log().clone()),
            runs: crate::runtime::RunService::new(service.clone()),
            service,
            providers: None,
        }
    }

    /// With the model providers' API.
    pub fn with_providers(mut self, providers: crate::providers::Providers) -> Self {
        self.providers = Some(providers);
        self
    }

    fn providers(&self) -> Result<&crate::providers::Providers, Status> {
        self.providers
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this server does not keep model providers"))
    }

    /// Graphs of up to 500 nodes of up to 64 KiB each fit.
    pub fn into_server(self) -> FlowsServer<Self> {
        FlowsServer::new(self).max_decoding_message_size(8 * 1024 * 1024)
    }
}

/// The `(field, value, prefix)` that are not plain prefixed ids.
fn id_violations(ids: &[(&str, &str, &str)]) -> Vec<FieldViolation> {
    ids.iter()
        .filter(|(_, value, prefix)| !valid_prefixed_id(value, prefix))
        .map(|(field, _, prefix)| FieldViolation {
            field: (*field).to_owned(),
            description: format!(
                "required: `{prefix}` followed by 1 to 64 letters, digits, `_` or `-`"
            ),
        })
        .collect()
}

/// Each `(field, value, prefix)` must be a plain prefixed id, answered with what `rest`
/// (the request's own fields) found.
fn checked(
    ids: &[(&str, &str, &str)],
    rest: Result<(), Vec<FieldViolation>>,
) -> Result<(), Status> {
    let mut violations = id_violations(ids);
    violations.extend(rest.err().unwrap_or_default());
    if violations.is_empty() {
        Ok(())
    } else {
        Err(error::invalid(violations))
    }
}

/// Each `(field, value, prefix)` must be a plain prefixed id.
fn check_ids(ids: &[(&str, &str, &str)]) -> Result<(), Status> {
    let violations = id_violations(ids);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(error::invalid(violations))
    }
}

fn flow_ref(workspace_id: &str, flow_id: &str) -> Result<(), Status> {
    check_ids(&[
        ("workspace_id", workspace_id, "ws_"),
        ("flow_id", flow_id, "flow_"),
    ])
}

fn assistant_ref(workspace_id: &str, assistant_id: &str) -> Result<(), Status> {
    check_ids(&[
        ("workspace_id", workspace_id, "ws_"),
        ("assistant_id", assistant_id, "asst_"),
    ])
}

/// A message field the request must carry.
fn required<T>(field: Option<T>, name: &str) -> Result<T, Status> {
    field.ok_or_else(|| {
        error::invalid(vec![FieldViolation {
            field: name.into(),
            description: "required".into(),
        }])
    })
}

fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 50,
        n => n.min(500),
    }
}

fn decode_cursor(cursor: &str) -> Result<String, Vec<FieldViolation>> {
    if cursor.is_empty() {
        return Ok(String::new());
    }
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            vec![FieldViolation {
                field: "cursor".into(),
                description: "not a cursor this API returned".into(),
            }]
        })
}

/// A listing's workspace and cursor, checked together; the cursor's position.
fn listing(workspace_id: &str, cursor: &str) -> Result<String, Status> {
    let after = decode_cursor(cursor);
    checked(
        &[("workspace_id", workspace_id, "ws_")],
        after.as_ref().map(drop).map_err(Clone::clone),
    )?;
    Ok(after.unwrap_or_default())
}

fn next_cursor(ids: &[String], size: u32) -> String {
    match ids.last() {
        Some(last) if ids.len() as u32 == size => URL_SAFE_NO_PAD.encode(last),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl flows_server::Flows for FlowsApi {
    async fn create_flow(
        &self,
        request: Request<CreateFlowRequest>,
    ) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        // The service checks the workspace with the rest of the request.
        Ok(Response::new(self.service.create_flow(r).await?))
    }

    async fn save_draft(
        &self,
        request: Request<SaveDraftRequest>,
    ) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(self.service.save_draft(r).await?))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        crate::service::check_publish(&r)?;
        Ok(Response::new(self.service.publish(r).await?))
    }

    async fn discard_draft(&self, request: Request<FlowRef>) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(
            self.service
                .discard_draft(&r.workspace_id, &r.flow_id)
                .await?,
        ))
    }

    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(self.service.rollback(r).await?))
    }

    async fn get_flow(&self, request: Request<FlowRef>) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(
            self.service.load(&r.workspace_id, &r.flow_id).await?.flow,
        ))
    }

    async fn list_flows(
        &self,
        request: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        let r = request.into_inner();
        let after = listing(&r.workspace_id, &r.cursor)?;
        let size = page_size(r.page_size);
        let ids = self
            .service
            .store()
            .flow_ids(&r.workspace_id, r.kind, &after, size)
            .await
            .map_err(ServiceError::from)?;
        let mut flows = Vec::with_capacity(ids.len());
        for id in &ids {
            flows.push(self.service.load(&r.workspace_id, id).await?.flow);
        }
        Ok(Response::new(ListFlowsResponse {
            flows,
            next_cursor: next_cursor(&ids, size),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<FlowRef>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        let state = self.service.load(&r.workspace_id, &r.flow_id).await?;
        Ok(Response::new(ListVersionsResponse {
            versions: state.versions,
        }))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<FlowVersion>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(
            self.service
                .version(&r.workspace_id, &r.flow_id, r.number)
                .await?,
        ))
    }

    async fn replay_draft(
        &self,
        request: Request<ReplayDraftRequest>,
    ) -> Result<Response<ReplayReport>, Status> {
        use crate::runtime::REPLAY_LIMIT;
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        let mut violations = Vec::new();
        if r.run_ids.len() > REPLAY_LIMIT as usize {
            violations.push(FieldViolation {
                field: "run_ids".into(),
                description: format!("at most {REPLAY_LIMIT} runs a replay"),
            });
        }
        if r.limit > REPLAY_LIMIT {
            violations.push(FieldViolation {
                field: "limit".into(),
                description: format!("at most {REPLAY_LIMIT}"),
            });
        }
        violations.extend(
            r.run_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !valid_prefixed_id(id, "run_"))
                .take(10)
                .map(|(i, _)| FieldViolation {
                    field: format!("run_ids[{i}]"),
                    description:
                        "not a run id (`run_` followed by 1 to 64 letters, digits, `_` or `-`)"
                            .into(),
                }),
        );
        if !violations.is_empty() {
            return Err(error::invalid(violations));
        }
        Ok(Response::new(
            self.runs
                .replay_draft(&r.workspace_id, &r.flow_id, &r.run_ids, r.limit)
                .await?,
        ))
    }

    async fn save_assistant(
        &self,
        request: Request<SaveAssistantRequest>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        let assistant = required(r.assistant, "assistant")?;
        // The service checks its ids and the request id with the rest of the request.
        Ok(Response::new(
            self.service
                .save_assistant(assistant, r.expected_version, &r.request_id)
                .await?,
        ))
    }

    async fn save_assistant_draft(
        &self,
        request: Request<SaveAssistantRequest>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        let assistant = required(r.assistant, "assistant")?;
        Ok(Response::new(
            self.service
                .save_assistant_draft(assistant, r.expected_version, &r.request_id)
                .await?,
        ))
    }

    async fn get_assistant_draft(
        &self,
        request: Request<AssistantRef>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        let (history, _) = self
            .service
            .assistant_history(&r.workspace_id, &r.assistant_id)
            .await?;
        match history.draft {
            Some(draft) => Ok(Response::new(draft)),
            None => Err(Status::from(ServiceError::NotFound("assistant draft"))),
        }
    }

    async fn publish_assistant(
        &self,
        request: Request<PublishAssistantRequest>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        Ok(Response::new(self.service.publish_assistant(r).await?))
    }

    async fn discard_assistant_draft(
        &self,
        request: Request<AssistantRef>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        Ok(Response::new(
            self.service
                .discard_assistant_draft(&r.workspace_id, &r.assistant_id)
                .await?,
        ))
    }

    async fn replay_assistant_draft(
        &self,
        request: Request<ReplayAssistantDraftRequest>,
    ) -> Result<Response<ReplayReport>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        if r.limit > crate::runtime::REPLAY_LIMIT {
            return Err(error::invalid(vec![FieldViolation {
                field: "limit".into(),
                description: format!("at most {}", crate::runtime::REPLAY_LIMIT),
            }]));
        }
        Ok(Response::new(
            self.runs
                .replay_assistant_draft(&r.workspace_id, &r.assistant_id, r.limit)
                .await?,
        ))
    }

    async fn get_assistant(
        &self,
        request: Request<AssistantRef>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        Ok(Response::new(
            self.service
                .load_assistant(&r.workspace_id, &r.assistant_id)
                .await?
                .0,
        ))
    }

    async fn list_assistants(
        &self,
        request: Request<ListAssistantsRequest>,
    ) -> Result<Response<ListAssistantsResponse>, Status> {
        let r = request.into_inner();
        let after = listing(&r.workspace_id, &r.cursor)?;
        let size = page_size(r.page_size);
        let ids = self
            .service
            .store()
            .assistant_ids(&r.workspace_id, &after, size)
            .await
            .map_err(ServiceError::from)?;
        let mut assistants = Vec::with_capacity(ids.len());
        for id in &ids {
            assistants.push(self.service.load_assistant(&r.workspace_id, id).await?.0);
        }
        Ok(Response::new(ListAssistantsResponse {
            assistants,
            next_cursor: next_cursor(&ids, size),
        }))
    }

    async fn create_collection(
        &self,
        request: Request<CreateCollectionRequest>,
    ) -> Result<Response<KnowledgeCollection>, Status> {
        let r = request.into_inner();
        checked(
            &[("workspace_id", &r.workspace_id, "ws_")],
            knowledge::check_new_collection(&r.name, &r.description, &r.request_id),
        )?;
        Ok(Response::new(
            self.knowledge
                .create_collection(&r.workspace_id, &r.name, &r.description, &r.request_id)
                .await?,
        ))
    }

    async fn get_collection(
        &self,
        request: Request<CollectionRef>,
    ) -> Result<Response<KnowledgeCollection>, Status> {
        let r = request.into_inner();
        collection_ref(&r.workspace_id, &r.collection_id)?;
        Ok(Response::new(
            self.knowledge
                .collection(&r.workspace_id, &r.collection_id)
                .await?
                .0,
        ))
    }

    async fn list_collections(
        &self,
        request: Request<ListCollectionsRequest>,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        let ids = self
            .knowledge
            .store()
            .collection_ids(&r.workspace_id)
            .await
            .map_err(ServiceError::from)?;
        let mut collections = Vec::with_capacity(ids.len());
        for id in &ids {
            collections.push(self.knowledge.collection(&r.workspace_id, id).await?.0);
        }
        Ok(Response::new(ListCollectionsResponse { collections }))
    }

    async fn upsert_documents(
        &self,
        request: Request<UpsertDocumentsRequest>,
    ) -> Result<Response<UpsertDocumentsResponse>, Status> {
        let r = request.into_inner();
        collection_request(&r.workspace_id, &r.collection_id, || {
            knowledge::check_documents(&r.documents)
        })?;
        Ok(Response::new(
            self.knowledge
                .upsert(&r.workspace_id, &r.collection_id, r.documents)
                .await?,
        ))
    }

    async fn delete_documents(
        &self,
        request: Request<DeleteDocumentsRequest>,
    ) -> Result<Response<DeleteDocumentsResponse>, Status> {
        let r = request.into_inner();
        collection_request(&r.workspace_id, &r.collection_id, || {
            knowledge::check_external_ids(&r.external_ids)
        })?;
        Ok(Response::new(
            self.knowledge
                .delete(&r.workspace_id, &r.collection_id, r.external_ids)
                .await?,
        ))
    }

    async fn get_document(
        &self,
        request: Request<DocumentRef>,
    ) -> Result<Response<Document>, Status> {
        let r = request.into_inner();
        collection_ref(&r.workspace_id, &r.collection_id)?;
        self.knowledge
            .collection(&r.workspace_id, &r.collection_id)
            .await?;
        let document = self
            .knowledge
            .store()
            .document(&r.workspace_id, &r.collection_id, &r.external_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound("document"))?;
        Ok(Response::new(document))
    }

    async fn search_documents(
        &self,
        request: Request<SearchDocumentsRequest>,
    ) -> Result<Response<SearchDocumentsResponse>, Status> {
        let r = request.into_inner();
        collection_request(&r.workspace_id, &r.collection_id, || {
            knowledge::check_query(&r.query)
        })?;
        let hits = self
            .knowledge
            .search(&r.workspace_id, &r.collection_id, &r.query, r.limit)
            .await?;
        Ok(Response::new(SearchDocumentsResponse { hits }))
    }

    async fn update_collection(
        &self,
        request: Request<UpdateCollectionRequest>,
    ) -> Result<Response<KnowledgeCollection>, Status> {
        let r = request.into_inner();
        collection_request(&r.workspace_id, &r.collection_id, || {
            knowledge::check_update(&r)
        })?;
        Ok(Response::new(self.knowledge.update_collection(r).await?))
    }

    async fn delete_collection(
        &self,
        request: Request<CollectionRef>,
    ) -> Result<Response<KnowledgeCollection>, Status> {
        let r = request.into_inner();
        collection_ref(&r.workspace_id, &r.collection_id)?;
        Ok(Response::new(
            self.knowledge
                .delete_collection(&r.workspace_id, &r.collection_id)
                .await?,
        ))
    }

    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let r = request.into_inner();
        collection_request(&r.workspace_id, &r.collection_id, || {
            knowledge::check_page(r.limit, &r.cursor)
        })?;
        Ok(Response::new(
            self.knowledge
                .list_documents(&r.workspace_id, &r.collection_id, r.limit, &r.cursor)
                .await?,
        ))
    }

    async fn delete_flow(
        &self,
        request: Request<DeleteFlowRequest>,
    ) -> Result<Response<Flow>, Status> {
        let r = request.into_inner();
        flow_ref(&r.workspace_id, &r.flow_id)?;
        Ok(Response::new(self.service.delete_flow(r).await?))
    }

    async fn delete_assistant(
        &self,
        request: Request<DeleteAssistantRequest>,
    ) -> Result<Response<Assistant>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        Ok(Response::new(self.service.delete_assistant(r).await?))
    }

    async fn invoke_action_workflow(
        &self,
        request: Request<InvokeActionWorkflowRequest>,
    ) -> Result<Response<InvokeActionWorkflowResponse>, Status> {
        use crate::runtime::Invocation;
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        let mut violations = Vec::new();
        if r.deadline_ms > 60_000 {
            violations.push(FieldViolation {
                field: "deadline_ms".into(),
                description: "at most 60000".into(),
            });
        }
        if r.variables_json.len() > 256 * 1024 || r.request_id.len() > 128 {
            violations.push(FieldViolation {
                field: "variables_json".into(),
                description: "at most 256 KiB (and request_id at most 128 bytes)".into(),
            });
        }
        let variables = if r.variables_json.trim().is_empty() {
            serde_json::json!({})
        } else {
            match serde_json::from_str(&r.variables_json) {
                Ok(v) => v,
                Err(e) => {
                    violations.push(FieldViolation {
                        field: "variables_json".into(),
                        description: format!("not JSON: {e}"),
                    });
                    serde_json::Value::Null
                }
            }
        };
        let context = match serde_json::from_str::<serde_json::Value>(&r.context_json) {
            _ if r.context_json.trim().is_empty() => serde_json::Map::new(),
            _ if r.context_json.len() > 256 * 1024 => {
                violations.push(FieldViolation {
                    field: "context_json".into(),
                    description: "at most 256 KiB".into(),
                });
                serde_json::Map::new()
            }
            Ok(serde_json::Value::Object(context)) => {
                crate::runtime::inherited(&serde_json::Value::Object(context))
            }
            Ok(_) => {
                violations.push(FieldViolation {
                    field: "context_json".into(),
                    description: "a JSON object of namespaces".into(),
                });
                serde_json::Map::new()
            }
            Err(e) => {
                violations.push(FieldViolation {
                    field: "context_json".into(),
                    description: format!("not JSON: {e}"),
                });
                serde_json::Map::new()
            }
        };
        if !violations.is_empty() {
            return Err(error::invalid(violations));
        }
        let deadline = std::time::Duration::from_millis(match r.deadline_ms {
            0 => 10_000,
            ms => u64::from(ms),
        });
        let answer = self
            .runs
            .invoke(
                &r.workspace_id,
                crate::runtime::InvokeRequest {
                    name: r.name.clone(),
                    variables,
                    context,
                    conversation_id: r.conversation_id.clone(),
                    request_id: r.request_id.clone(),
                    deadline,
                },
            )
            .await?;
        Ok(Response::new(match answer {
            Invocation::Completed { run_id, response } => InvokeActionWorkflowResponse {
                run_id,
                status: InvocationStatus::Completed as i32,
                response_json: response.to_string(),
                reason: String::new(),
            },
            Invocation::Failed { run_id, reason } => InvokeActionWorkflowResponse {
                run_id,
                status: InvocationStatus::Failed as i32,
                response_json: String::new(),
                reason,
            },
            Invocation::TimedOut { run_id } => InvokeActionWorkflowResponse {
                run_id,
                status: InvocationStatus::TimedOut as i32,
                response_json: String::new(),
                reason: "still running at the deadline; the run goes on".into(),
            },
        }))
    }

    async fn save_model_provider(
        &self,
        request: Request<SaveModelProviderRequest>,
    ) -> Result<Response<ModelProvider>, Status> {
        let r = request.into_inner();
        let provider = required(r.provider, "provider")?;
        // The service checks its ids and the request id with the rest of the request.
        Ok(Response::new(
            self.providers()?
                .save(provider, r.expected_version, &r.request_id)
                .await?,
        ))
    }

    async fn get_model_provider(
        &self,
        request: Request<ModelProviderRef>,
    ) -> Result<Response<ModelProvider>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("provider_id", &r.provider_id, "mp_"),
        ])?;
        Ok(Response::new(
            self.providers()?
                .get(&r.workspace_id, &r.provider_id)
                .await?,
        ))
    }

    async fn list_model_providers(
        &self,
        request: Request<ListModelProvidersRequest>,
    ) -> Result<Response<ListModelProvidersResponse>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        Ok(Response::new(ListModelProvidersResponse {
            providers: self.providers()?.list(&r.workspace_id).await?,
        }))
    }

    async fn delete_model_provider(
        &self,
        request: Request<DeleteModelProviderRequest>,
    ) -> Result<Response<ModelProvider>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("provider_id", &r.provider_id, "mp_"),
        ])?;
        Ok(Response::new(self.providers()?.delete(r).await?))
    }

    async fn test_model_provider(
        &self,
        request: Request<ModelProviderRef>,
    ) -> Result<Response<ModelCallResult>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("provider_id", &r.provider_id, "mp_"),
        ])?;
        Ok(Response::new(
            self.providers()?
                .test(&r.workspace_id, &r.provider_id)
                .await?,
        ))
    }

    async fn list_agent_tools(
        &self,
        request: Request<AssistantRef>,
    ) -> Result<Response<switchboard_proto::actions::v1::ListAgentToolsResponse>, Status> {
        let r = request.into_inner();
        assistant_ref(&r.workspace_id, &r.assistant_id)?;
        Ok(Response::new(
            switchboard_proto::actions::v1::ListAgentToolsResponse {
                tools: self
                    .service
                    .agent_tools(&r.workspace_id, &r.assistant_id)
                    .await?,
            },
        ))
    }
}
