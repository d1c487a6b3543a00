//! The flows service: flows and their versions, assistants, action workflows and
//! knowledge collections.

use std::time::Duration;

use switchboard_proto::flows::v1::flows_client::FlowsClient as Stub;
use switchboard_proto::flows::v1::{
    Assistant, AssistantRef, CollectionRef, CreateCollectionRequest, CreateFlowRequest,
    DeleteAssistantRequest, DeleteDocumentsRequest, DeleteDocumentsResponse, DeleteFlowRequest,
    DeleteModelProviderRequest, Document, DocumentRef, Flow, FlowRef, FlowVersion,
    GetVersionRequest, InvokeActionWorkflowRequest, InvokeActionWorkflowResponse,
    KnowledgeCollection, ListAssistantsRequest, ListAssistantsResponse, ListCollectionsRequest,
    ListCollectionsResponse, ListDocumentsRequest, ListDocumentsResponse, ListFlowsRequest,
    ListFlowsResponse, ListModelProvidersRequest, ListModelProvidersResponse, ListVersionsResponse,
    ModelCallResult, ModelProvider, ModelProviderRef, PublishAssistantRequest, PublishRequest,
    ReplayAssistantDraftRequest, ReplayDraftRequest, ReplayReport, RollbackRequest,
    SaveAssistantRequest, SaveDraftRequest, SaveModelProviderRequest, SearchDocumentsRequest,
    SearchDocumentsResponse, UpdateCollectionRequest, UpsertDocumentsRequest,
    UpsertDocumentsResponse,
};

/// How much longer than the workflow's own deadline `invoke_action_workflow` waits for
/// the answer: the flows service answers "timed out" at that deadline, and that answer
/// must still arrive.
pub const WORKFLOW_DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// The deadline the flows service applies to a workflow whose request names none.
const DEFAULT_WORKFLOW_DEADLINE: Duration = Duration::from_secs(10);

typed_client! {
    /// The flows service (`switchboard.flows.v1.Flows`).
    FlowsClient for "flows" via Stub {
        /// Creates a flow.
        fn create_flow(CreateFlowRequest) -> Flow;
        /// Replaces the draft's graph.
        fn save_draft(SaveDraftRequest) -> Flow;
        /// Publishes the draft as the next version.
        fn publish(PublishRequest) -> Flow;
        /// Drops the draft.
        @once fn discard_draft(FlowRef) -> Flow;
        /// Publishes an older version's graph again, as a new version.
        @once fn rollback(RollbackRequest) -> Flow;
        /// One flow.
        fn get_flow(FlowRef) -> Flow;
        /// One page of a workspace's flows.
        fn list_flows(ListFlowsRequest) -> ListFlowsResponse;
        /// A flow's published versions.
        fn list_versions(FlowRef) -> ListVersionsResponse;
        /// One published version.
        fn get_version(GetVersionRequest) -> FlowVersion;
        /// Re-runs recorded conversations against the draft and reports the differences.
        fn replay_draft(ReplayDraftRequest) -> ReplayReport;
        /// Creates or replaces an assistant.
        fn save_assistant(SaveAssistantRequest) -> Assistant;
        /// One assistant.
        fn get_assistant(AssistantRef) -> Assistant;
        /// One page of a workspace's assistants.
        fn list_assistants(ListAssistantsRequest) -> ListAssistantsResponse;
        /// Saves a draft of an assistant, not in effect until published.
        fn save_assistant_draft(SaveAssistantRequest) -> Assistant;
        /// An assistant's draft.
        fn get_assistant_draft(AssistantRef) -> Assistant;
        /// Puts an assistant's draft in effect; retried, once per request id.
        fn publish_assistant(PublishAssistantRequest) -> Assistant;
        /// Replays an assistant's recent runs against its draft and reports the
        /// differences; changes nothing.
        fn replay_assistant_draft(ReplayAssistantDraftRequest) -> ReplayReport;
        /// Drops an assistant's draft. Not retried: a second discard has no draft.
        @once fn discard_assistant_draft(AssistantRef) -> Assistant;
        /// Creates or replaces a model provider.
        fn save_model_provider(SaveModelProviderRequest) -> ModelProvider;
        /// One model provider (never its key).
        fn get_model_provider(ModelProviderRef) -> ModelProvider;
        /// A workspace's model providers.
        fn list_model_providers(ListModelProvidersRequest) -> ListModelProvidersResponse;
        /// Deletes a model provider; retried, as `delete_flow` is.
        fn delete_model_provider(DeleteModelProviderRequest) -> ModelProvider;
        /// One short completion: whether the provider answers. Not retried: it is a call
        /// to the provider.
        @once fn test_model_provider(ModelProviderRef) -> ModelCallResult;
        /// Creates a knowledge collection.
        fn create_collection(CreateCollectionRequest) -> KnowledgeCollection;
        /// One knowledge collection.
        fn get_collection(CollectionRef) -> KnowledgeCollection;
        /// One page of a workspace's knowledge collections.
        fn list_collections(ListCollectionsRequest) -> ListCollectionsResponse;
        /// Adds or replaces up to 1,000 documents, idempotent by external id.
        fn upsert_documents(UpsertDocumentsRequest) -> UpsertDocumentsResponse;
        /// Deletes up to 1,000 documents by external id.
        fn delete_documents(DeleteDocumentsRequest) -> DeleteDocumentsResponse;
        /// One document.
        fn get_document(DocumentRef) -> Document;
        /// Full-text search in one collection, best matches first.
        fn search_documents(SearchDocumentsRequest) -> SearchDocumentsResponse;
        /// Changes a collection's name or description; idempotent by request id.
        fn update_collection(UpdateCollectionRequest) -> KnowledgeCollection;
        /// Deletes a collection and all its documents. Not retried: a second delete
        /// answers `NOT_FOUND`.
        @once fn delete_collection(CollectionRef) -> KnowledgeCollection;
        /// One page of a collection's documents, by external id.
        fn list_documents(ListDocumentsRequest) -> ListDocumentsResponse;
        /// Deletes a flow (runs already started on it go on); answers with the flow as it
        /// was deleted. Retried: with a request id, a repeat answers as the first did
        /// (without one, a repeat answers `NOT_FOUND`).
        fn delete_flow(DeleteFlowRequest) -> Flow;
        /// Deletes an assistant; answers with it as it was deleted. Retried, as
        /// `delete_flow` is.
        fn delete_assistant(DeleteAssistantRequest) -> Assistant;
    }
}

impl FlowsClient {
    /// Runs a published action workflow and answers with its response, or says it did not
    /// finish in time. The call waits for the workflow's own deadline (`deadline_ms`, 10 s
    /// when 0) plus [`WORKFLOW_DEADLINE_MARGIN`], or this client's deadline if that is
    /// longer, so a slow workflow's "timed out" answer is not lost to the transport.
    pub async fn invoke_action_workflow(
        &self,
        request: InvokeActionWorkflowRequest,
    ) -> Result<InvokeActionWorkflowResponse, tonic::Status> {
        let workflow = match request.deadline_ms {
            0 => DEFAULT_WORKFLOW_DEADLINE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let deadline = self.deadline().max(workflow + WORKFLOW_DEADLINE_MARGIN);
        self.0
            .unary(
                "invoke_action_workflow",
                deadline,
                crate::MAX_ATTEMPTS,
                request,
                |channel, request| async move {
                    Stub::new(channel).invoke_action_workflow(request).await
                },
            )
            .await
    }
}
