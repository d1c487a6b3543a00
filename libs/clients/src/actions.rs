//! The actions service: action definitions, the agent tool catalogue and executions.

use switchboard_proto::actions::v1::actions_client::ActionsClient as Stub;
use switchboard_proto::actions::v1::{
    ActionResponse, CreateActionRequest, DeleteActionRequest, DeleteIntegrationRequest,
    ExecuteActionRequest, ExecutionResult, GetActionRequest, GetIntegrationRequest, Integration,
    ListActionsRequest, ListActionsResponse, ListAgentToolsRequest, ListAgentToolsResponse,
    ListExecutionsRequest, ListExecutionsResponse, ListIntegrationsRequest,
    ListIntegrationsResponse, SaveIntegrationRequest, SetActionEnabledRequest, TestActionRequest,
    UpdateActionRequest,
};

typed_client! {
    /// The actions service (`switchboard.actions.v1.Actions`).
    ActionsClient for "actions" via Stub {
        /// Creates an action.
        fn create_action(CreateActionRequest) -> ActionResponse;
        /// Replaces an action's definition.
        fn update_action(UpdateActionRequest) -> ActionResponse;
        /// Enables or disables an action.
        fn set_action_enabled(SetActionEnabledRequest) -> ActionResponse;
        /// One action (`NOT_FOUND` when the workspace has no such action).
        fn get_action(GetActionRequest) -> ActionResponse;
        /// One page of a workspace's actions.
        fn list_actions(ListActionsRequest) -> ListActionsResponse;
        /// The actions an agent may call, as tools.
        fn list_agent_tools(ListAgentToolsRequest) -> ListAgentToolsResponse;
        /// Runs an action. A repeated idempotency key answers with the recorded outcome
        /// (or `ABORTED` while the first call still runs).
        fn execute_action(ExecuteActionRequest) -> ExecutionResult;
        /// Runs an action for real with sample variables, as a test touching no
        /// conversation.
        @once fn test_action(TestActionRequest) -> ExecutionResult;
        /// The execution log, newest first.
        fn list_executions(ListExecutionsRequest) -> ListExecutionsResponse;
        /// Deletes an action (its executions stay in the log); answers with the
        /// definition as it was deleted. Retried: with a request id, a repeat answers as
        /// the first did (without one, a repeat answers `NOT_FOUND`).
        fn delete_action(DeleteActionRequest) -> ActionResponse;
        /// Creates (no id; idempotent by request id) or replaces an integration.
        fn save_integration(SaveIntegrationRequest) -> Integration;
        /// One integration with its operations (`NOT_FOUND` when there is none).
        fn get_integration(GetIntegrationRequest) -> Integration;
        /// The workspace's integrations by name.
        fn list_integrations(ListIntegrationsRequest) -> ListIntegrationsResponse;
        /// Deletes an integration no action uses (`FAILED_PRECONDITION` naming those that
        /// do); idempotent by request id.
        fn delete_integration(DeleteIntegrationRequest) -> Integration;
    }
}
