//! Durable consumer names. A consumer's processed-event records and checkpoint are kept
//! under this name in the consuming service's log, and over NATS it is the durable
//! consumer's name, so renaming one replays its stream.

/// Flows: conversations' public events start runs and feed them customers' messages.
pub const FLOWS_CONVERSATIONS: &str = "flows-conversations";
/// Flows: the actions service's answers go back to the runs that asked.
pub const FLOWS_ACTION_OUTCOMES: &str = "flows-action-outcomes";
/// Flows: the runs' messages and effects, carried out from the flows log itself.
pub const FLOWS_EFFECTS: &str = "flows-effects";
/// Connexease: the webhooks it recorded, carried out from the connexease log itself.
pub const CONNEXEASE_INBOUND: &str = "connexease-inbound";
/// Actions: the action requests of flow runs.
pub const ACTIONS_ACTION_REQUESTED: &str = "actions-action-requested";

/// Insights: conversations' public events, projected into the insights read model.
pub const INSIGHTS_CONVERSATIONS: &str = "insights-conversations";
/// Insights: the flow each conversation runs, from the flows' run starts.
pub const INSIGHTS_FLOW_RUNS: &str = "insights-flow-runs";
/// Insights: Connexease's response times, as the connexease service reads them.
pub const INSIGHTS_CONNEXEASE_STATS: &str = "insights-connexease-stats";

/// Webhooks: the fan-out of one producer's public events.
pub fn webhooks_fan_out(producer: &str) -> String {
    format!("webhooks-fanout-{producer}")
}
