//! Event types, `<aggregate>.<past tense>`, grouped by the service whose log holds them.
//! Public integration events (the ones consumers and webhooks see) say so; the rest are
//! domain events that stay in their service's log unless the service's router publishes
//! them on an `internal.` subject.

/// The conversations service's log.
pub mod conversations {
    pub const STARTED: &str = "conversation.started";
    pub const MESSAGE_ADDED: &str = "conversation.message_added";
    pub const STATUS_CHANGED: &str = "conversation.status_changed";
    pub const METAFIELDS_SET: &str = "conversation.metafields_set";
    pub const METAFIELDS_REMOVED: &str = "conversation.metafields_removed";
    pub const ASSIGNED: &str = "conversation.assigned";
    pub const ANALYSIS_RECORDED: &str = "conversation.analysis_recorded";
    pub const CLOSED: &str = "conversation.closed";

    /// Public: published on `events.<workspace>.conversation.created`.
    pub const CREATED: &str = "conversation.created";
    /// Public: the conversation as it now is, and what changed.
    pub const UPDATED: &str = "conversation.updated";
    /// Public.
    pub const ENDED: &str = "conversation.ended";
    /// Public.
    pub const MESSAGE_CREATED: &str = "message.created";
    /// The public integration events of the conversations service.
    pub const PUBLIC: [&str; 4] = [CREATED, UPDATED, ENDED, MESSAGE_CREATED];
}

/// The actions service's log: definitions and executions.
pub mod actions {
    pub const CREATED: &str = "action.created";
    pub const UPDATED: &str = "action.updated";
    pub const ENABLED: &str = "action.enabled";
    pub const DISABLED: &str = "action.disabled";
    /// The definition is gone (its execution log stays); the last event of its stream.
    pub const DELETED: &str = "action.deleted";
    /// Every change of a definition.
    pub const ALL: [&str; 5] = [CREATED, UPDATED, ENABLED, DISABLED, DELETED];

    /// An integration created or replaced: the whole of it, its secret sealed.
    pub const INTEGRATION_SAVED: &str = "integration.saved";
    /// The integration as it was deleted; the last event of its stream.
    pub const INTEGRATION_DELETED: &str = "integration.deleted";

    pub const EXECUTION_STARTED: &str = "action_execution.started";
    /// An execution's outcome; a live one's goes to the flow run that asked, on
    /// `internal.actions.action_completed`.
    pub const EXECUTION_COMPLETED: &str = "action_execution.completed";
    /// Public: beside every live completion.
    pub const EXECUTED: &str = "action.executed";
}

/// The connexease service's log.
pub mod connexease {
    pub const CONNECTED: &str = "connexease.connected";
    pub const DISCONNECTED: &str = "connexease.disconnected";
    pub const DIRECTORY_SYNCED: &str = "connexease.directory_synced";
    pub const OPERATION_STARTED: &str = "connexease_operation.started";
    pub const OPERATION_COMPLETED: &str = "connexease_operation.completed";
    /// A transient failure (Connexease unreachable after the retries): the key may run again.
    pub const OPERATION_ABANDONED: &str = "connexease_operation.abandoned";
    pub const LINKED: &str = "connexease.linked";
    /// A verified inbound webhook; public as `connexease.<event>`.
    pub const WEBHOOK_RECEIVED: &str = "connexease.webhook_received";
    /// The whole body of a delivery too large to publish; stays in the log.
    pub const WEBHOOK_BODY: &str = "connexease.webhook_body";
    /// One answer to `conversation.auto_assign`: a turn of the workspace's rule.
    pub const AUTO_ASSIGN_ANSWERED: &str = "connexease.auto_assign_answered";
    /// Connexease's `/stats`, read when it changed; public as `connexease.stats.read`.
    pub const STATS_READ: &str = "connexease.stats_read";
}

/// The webhooks service's log.
pub mod webhooks {
    pub const ENDPOINT_CREATED: &str = "webhook_endpoint.created";
    pub const ENDPOINT_UPDATED: &str = "webhook_endpoint.updated";
    pub const ENDPOINT_SECRET_ROTATED: &str = "webhook_endpoint.secret_rotated";
    pub const ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";
    pub const ENDPOINT_ENABLED: &str = "webhook_endpoint.enabled";
    pub const ENDPOINT_DELETED: &str = "webhook_endpoint.deleted";
    /// Public: the operational event beside `webhook_endpoint.disabled`.
    pub const PUBLIC_ENDPOINT_DISABLED: &str = "endpoint.disabled";

    pub const MESSAGE_CREATED: &str = "webhook_message.created";
    pub const MESSAGE_ATTEMPTED: &str = "webhook_message.attempted";
    pub const MESSAGE_DEFERRED: &str = "webhook_message.deferred";
    pub const MESSAGE_FAILED: &str = "webhook_message.failed";
    pub const MESSAGE_SUPERSEDED: &str = "webhook_message.superseded";
    pub const MESSAGE_RESEND_REQUESTED: &str = "webhook_message.resend_requested";

    /// Whether `event_type` belongs to an endpoint stream and carries `EndpointChanged`.
    pub fn is_endpoint_change(event_type: &str) -> bool {
        matches!(
            event_type,
            ENDPOINT_CREATED
                | ENDPOINT_UPDATED
                | ENDPOINT_SECRET_ROTATED
                | ENDPOINT_DISABLED
                | ENDPOINT_ENABLED
                | ENDPOINT_DELETED
        )
    }
}

/// The flows service's log: definitions and assistants.
pub mod flows {
    pub const FLOW_CREATED: &str = "flow.created";
    pub const FLOW_DRAFT_SAVED: &str = "flow.draft_saved";
    pub const FLOW_DRAFT_DISCARDED: &str = "flow.draft_discarded";
    pub const FLOW_PUBLISHED: &str = "flow.published";
    /// The flow is gone from the API and its name is free; runs already started on its
    /// versions go on. The last event of its stream.
    pub const FLOW_DELETED: &str = "flow.deleted";
    /// Saved and in effect at once (`SaveAssistant`).
    pub const ASSISTANT_SAVED: &str = "assistant.saved";
    /// A draft of the assistant, not in effect until published.
    pub const ASSISTANT_DRAFT_SAVED: &str = "assistant.draft_saved";
    /// The draft is in effect; there is no draft any more.
    pub const ASSISTANT_PUBLISHED: &str = "assistant.published";
    /// The draft is dropped: the assistant is as last published.
    pub const ASSISTANT_DRAFT_DISCARDED: &str = "assistant.draft_discarded";
    /// The assistant is gone; the last event of its stream.
    pub const ASSISTANT_DELETED: &str = "assistant.deleted";
    pub const MODEL_PROVIDER_SAVED: &str = "model_provider.saved";
    /// The provider is gone; the last event of its stream.
    pub const MODEL_PROVIDER_DELETED: &str = "model_provider.deleted";
}

/// The flows service's log: knowledge collections and documents.
pub mod knowledge {
    pub const COLLECTION_CREATED: &str = "knowledge.collection_created";
    /// Its name or description changed.
    pub const COLLECTION_UPDATED: &str = "knowledge.collection_updated";
    /// The collection and all its documents are gone; the last event of its stream.
    pub const COLLECTION_DELETED: &str = "knowledge.collection_deleted";
    pub const DOCUMENT_UPSERTED: &str = "knowledge.document_upserted";
    pub const DOCUMENT_DELETED: &str = "knowledge.document_deleted";
}

/// The flows service's log: flow runs.
pub mod flow_runs {
    pub const STARTED: &str = "flow_run.started";
    pub const NODE_ENTERED: &str = "flow_run.node_entered";
    pub const MESSAGE_SENT: &str = "flow_run.message_sent";
    pub const INPUT_QUEUED: &str = "flow_run.input_queued";
    pub const AWAITING_INPUT: &str = "flow_run.awaiting_input";
    pub const INPUT_CAPTURED: &str = "flow_run.input_captured";
    pub const INPUT_REJECTED: &str = "flow_run.input_rejected";
    pub const REASKED: &str = "flow_run.reasked";
    pub const VARIABLE_SET: &str = "flow_run.variable_set";
    pub const CONDITION_EVALUATED: &str = "flow_run.condition_evaluated";
    pub const EFFECT_REQUESTED: &str = "flow_run.effect_requested";
    pub const EFFECT_COMPLETED: &str = "flow_run.effect_completed";
    pub const TIMER_ARMED: &str = "flow_run.timer_armed";
    pub const TIMER_FIRED: &str = "flow_run.timer_fired";
    pub const ENDED: &str = "flow_run.ended";
    pub const AGENT_TURN_STARTED: &str = "flow_run.agent_turn_started";
    pub const TOOL_CALLED: &str = "flow_run.tool_called";
    pub const CONFIRMATION_ASKED: &str = "flow_run.confirmation_asked";
    pub const CONFIRMATION_ANSWERED: &str = "flow_run.confirmation_answered";
    pub const TOOL_RESULT: &str = "flow_run.tool_result";
    /// A run asking the actions service to run an action, on
    /// `internal.flows.action_requested`.
    pub const ACTION_REQUESTED: &str = "flow_run.action_requested";
    /// The prefix every run event's type starts with.
    pub const PREFIX: &str = "flow_run.";
}

/// The hooks Connexease sends (its own names). Each one verified becomes
/// `connexease.webhook_received` in the connexease log and the public
/// `connexease.<hook with dots as _>` (see [`crate::subjects::connexease`]).
pub mod connexease_hooks {
    pub const CONVERSATION_CREATED: &str = "conversation.created";
    pub const MESSAGE_CREATED: &str = "message.created";
    pub const MESSAGE_STATE_CHANGED: &str = "message.state_changed";
    /// Connexease asking which agent to assign: answered by the workspace's rule.
    pub const CONVERSATION_AUTO_ASSIGN: &str = "conversation.auto_assign";
    pub const CONVERSATION_ASSIGNED: &str = "conversation.assigned";
    pub const CONVERSATION_ARCHIVED: &str = "conversation.archived";
    pub const CONVERSATION_TYPE_CHANGED: &str = "conversation.type_changed";
    pub const CONVERSATION_CUSTOM_FIELDS_UPDATED: &str = "conversation.custom_fields_updated";
    pub const CUSTOMER_UPDATED: &str = "customer.updated";
    pub const FEEDBACK_RECEIVED: &str = "feedback.received";
    pub const AGENT_STATUS_CHANGED: &str = "agent.status_changed";
    pub const CONVERSATION_GROUP_CHANGED: &str = "conversation.group_changed";
    /// Every hook Connexease publishes (help.connexease.com/dev, "Webhooks").
    pub const PUBLISHED: [&str; 12] = [
        CONVERSATION_CREATED,
        MESSAGE_CREATED,
        MESSAGE_STATE_CHANGED,
        CONVERSATION_AUTO_ASSIGN,
        CONVERSATION_ASSIGNED,
        CONVERSATION_ARCHIVED,
        CONVERSATION_TYPE_CHANGED,
        CONVERSATION_CUSTOM_FIELDS_UPDATED,
        CUSTOMER_UPDATED,
        FEEDBACK_RECEIVED,
        AGENT_STATUS_CHANGED,
        CONVERSATION_GROUP_CHANGED,
    ];
}

/// The insights service's log: saved segments and findings.
pub mod insights {
    pub const SEGMENT_CREATED: &str = "segment.created";
    pub const SEGMENT_DELETED: &str = "segment.deleted";
    pub const FINDING_RAISED: &str = "finding.raised";
    pub const FINDING_DISMISSED: &str = "finding.dismissed";
}

/// The gateway's log: API keys.
pub mod api_keys {
    pub const CREATED: &str = "api_key.created";
    pub const REVOKED: &str = "api_key.revoked";
    pub const ROTATED: &str = "api_key.rotated";
}
