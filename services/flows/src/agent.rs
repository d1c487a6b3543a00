//! One step of an agent's turn: what the model is sent, and its answer as the run records
//! it.
//!
//! The model gets the assistant's instructions and the node's, the conversation so far
//! (the most recent messages that fit [`TRANSCRIPT_BUDGET`]), the assistant's tools, and
//! what the tools it called this turn answered. Secure metadata is in none of these: runs
//! never hold it, and a tool that needs it gets it from the actions service's sealed
//! channel. The answer is recorded as the step's outputs: its text, or its tool calls,
//! each resolved against the catalogue (which action or workflow runs it, whether the
//! customer must confirm it), with the tokens used, the latency and the provider.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use switchboard_proto::actions::v1::AgentTool;

use crate::consumers::{transcript, within_budget};
use crate::domain::run::{AgentTurn, HANDOVER_TOOL};
use crate::model::{ChatMessage, ChatRequest, Completion, Role, ToolCall, ToolSpec};
use crate::ports::{Conversations, PortError};
use crate::providers::Providers;
use crate::runtime::RunState;
use crate::service::{FlowsService, ServiceError};

/// The bytes of transcript one model call carries at most: the most recent messages that
/// fit.
pub const TRANSCRIPT_BUDGET: usize = 48 * 1024;

/// The bytes of one tool result the model is given; a longer one is cut, and says so.
pub const RESULT_BYTES: usize = 16 * 1024;

/// How the agent works, ahead of the assistant's own instructions.
const GUIDANCE: &str = "You are a customer service agent speaking with a customer. \
Use a tool when the customer's request needs one, and answer from what it returns; never \
make up a tool's result. When a tool needs a detail you do not have, ask the customer for \
it. Answer briefly, in the customer's language.";

/// Everything one model call is built from.
pub struct Prompt<'a> {
    pub assistant_instructions: &'a str,
    pub node_instructions: &'a str,
    /// `{author, text}` lines, oldest first.
    pub transcript: &'a [Json],
    pub tools: &'a [AgentTool],
    pub turn: &'a AgentTurn,
    /// The model may hand the conversation over.
    pub handover: bool,
}

/// The chat request for one step of the turn.
pub fn request(prompt: &Prompt<'_>) -> ChatRequest {
    let mut system = GUIDANCE.to_owned();
    for extra in [prompt.assistant_instructions, prompt.node_instructions] {
        if !extra.trim().is_empty() {
            system.push_str("\n\n");
            system.push_str(extra.trim());
        }
    }
    if prompt.handover {
        system.push_str(&format!(
            "\n\nCall `{HANDOVER_TOOL}` when the customer asks for a person or you cannot help."
        ));
    }
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    for line in prompt.transcript {
        let text = line["text"].as_str().unwrap_or_default();
        let message = match line["author"].as_str().unwrap_or_default() {
            "customer" => ChatMessage::new(Role::User, text),
            "agent" => ChatMessage::new(Role::Assistant, text),
            "human" => ChatMessage::new(Role::Assistant, format!("(a teammate wrote) {text}")),
            _ => continue,
        };
        messages.push(message);
    }
    // This turn's tool calls, round by round, each answered by its result.
    let mut rounds: Vec<u32> = prompt.turn.calls.iter().map(|c| c.round).collect();
    rounds.dedup();
    for round in rounds {
        let calls: Vec<_> = prompt
            .turn
            .calls
            .iter()
            .filter(|c| c.round == round && c.result.is_some())
            .collect();
        if calls.is_empty() {
            continue;
        }
        let mut asked = ChatMessage::new(Role::Assistant, "");
        asked.tool_calls = calls
            .iter()
            .map(|c| ToolCall {
                id: c.call_id.clone(),
                name: c.name.clone(),
                arguments: match &c.arguments {
                    Json::String(text) => text.clone(),
                    other => other.to_string(),
                },
            })
            .collect();
        messages.push(asked);
        for call in calls {
            let mut answer = ChatMessage::new(
                Role::Tool,
                capped(&call.result.clone().unwrap_or_default().to_string()),
            );
            answer.tool_call_id = call.call_id.clone();
            messages.push(answer);
        }
    }
    let mut tools: Vec<ToolSpec> = prompt
        .tools
        .iter()
        .map(|t| ToolSpec {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: serde_json::from_str(&t.parameters)
                .unwrap_or_else(|_| json!({"type": "object", "properties": {}})),
        })
        .collect();
    if prompt.handover {
        tools.push(ToolSpec {
            name: HANDOVER_TOOL.into(),
            description: "Pass the conversation to a human teammate.".into(),
            parameters: json!({"type": "object",
                "properties": {"reason": {"type": "string", "description": "Why, in a few words."}}}),
        });
    }
    ChatRequest {
        messages,
        tools,
        max_tokens: 0,
    }
}

/// A tool result within [`RESULT_BYTES`].
fn capped(text: &str) -> String {
    if text.len() <= RESULT_BYTES {
        return text.to_owned();
    }
    let mut end = RESULT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut: {} bytes in all)", &text[..end], text.len())
}

/// The model's answer as the step's recorded outputs, its tool calls resolved against
/// `tools`.
pub fn outputs(
    completion: &Completion,
    tools: &[AgentTool],
    provider_id: &str,
    model: &str,
) -> Json {
    let calls: Vec<Json> = completion
        .tool_calls
        .iter()
        .map(|call| {
            let tool = tools.iter().find(|t| t.name == call.name);
            json!({
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "action_id": tool.map(|t| t.action_id.as_str()).unwrap_or_default(),
                "workflow_id": tool.map(|t| t.workflow_id.as_str()).unwrap_or_default(),
                "confirmation_required": tool.is_some_and(|t| t.confirmation_required),
            })
        })
        .collect();
    json!({
        "content": completion.content,
        "tool_calls": calls,
        "finish_reason": completion.finish_reason,
        "usage": {
            "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens,
        },
        "latency_ms": u64::try_from(completion.latency.as_millis()).unwrap_or(u64::MAX),
        "attempts": completion.attempts,
        "provider_id": provider_id,
        "model": model,
    })
}

/// Takes agents' steps: finds the assistant, its tools and provider, reads the
/// conversation, and asks the model.
#[derive(Clone)]
pub struct Agent {
    flows: FlowsService,
    providers: Providers,
    conversations: Arc<dyn Conversations>,
}

impl Agent {
    pub fn new(
        flows: FlowsService,
        providers: Providers,
        conversations: Arc<dyn Conversations>,
    ) -> Self {
        Self {
            flows,
            providers,
            conversations,
        }
    }

    /// The model's next step for the run's agent: `inputs` are the step's request
    /// (`instructions`, `provider_id`, `handover`). A refusal takes the node's failure
    /// route; `Unavailable` is retried.
    pub async fn step(
        &self,
        workspace_id: &str,
        state: &RunState,
        inputs: &HashMap<String, Json>,
    ) -> Result<Json, PortError> {
        let text = |v: Option<&Json>| v.and_then(Json::as_str).unwrap_or_default().to_owned();
        let preferred = state.run.vars["conversation"]["metafields"]["assistant_id"].as_str();
        let found = self
            .flows
            .store()
            .conversation_assistant(workspace_id, preferred)
            .await
            .map_err(|e| PortError::Unavailable(e.to_string()))?;
        let assistant = match found {
            Some((id, _)) => match self.flows.load_assistant(workspace_id, &id).await {
                Ok((assistant, _)) => Some(assistant),
                Err(ServiceError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let tools = match &assistant {
            Some(a) => self
                .flows
                .agent_tools(workspace_id, &a.id)
                .await
                .map_err(PortError::from)?,
            None => Vec::new(),
        };
        let mut named = text(inputs.get("provider_id"));
        if named.is_empty() {
            named = assistant
                .as_ref()
                .map(|a| a.model_provider_id.clone())
                .unwrap_or_default();
        }
        let provider_id = self
            .providers
            .resolve(workspace_id, &named)
            .await?
            .ok_or_else(|| {
                PortError::Refused(
                    "no model provider is configured in the workspace (SaveModelProvider)".into(),
                )
            })?;
        let endpoint = self
            .providers
            .endpoint(workspace_id, &provider_id)
            .await
            .map_err(PortError::from)?;
        let lines = transcript(
            self.conversations.as_ref(),
            workspace_id,
            &state.conversation_id,
        )
        .await?;
        let lines = within_budget(lines, TRANSCRIPT_BUDGET);
        let turn = state.run.agent.clone().unwrap_or_default();
        // The assistant's instructions are a template too (`{{ lead.name }}`, metafields):
        // rendered with the run's variables, as they are now; one that does not render is
        // sent as written.
        let instructions = assistant.as_ref().map_or(String::new(), |a| {
            let mut vars = state.run.vars.clone();
            if let Some(map) = vars.as_object_mut() {
                map.remove("secure");
            }
            switchboard_template::Renderer::default()
                .render_text(&a.instructions, &vars)
                .unwrap_or_else(|_| a.instructions.clone())
        });
        let request = request(&Prompt {
            assistant_instructions: &instructions,
            node_instructions: &text(inputs.get("instructions")),
            transcript: &lines,
            tools: &tools,
            turn: &turn,
            handover: inputs.get("handover").and_then(Json::as_bool) == Some(true),
        });
        let completion = self
            .providers
            .model()
            .complete(&endpoint, &request)
            .await
            .map_err(|e| PortError::Refused(e.to_string()))?;
        Ok(outputs(&completion, &tools, &provider_id, &endpoint.model))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::run::AgentCall;
    use crate::model::Usage;

    fn tool(name: &str, confirm: bool) -> AgentTool {
        AgentTool {
            name: name.into(),
            description: format!("{name} does things"),
            parameters: r#"{"type":"object","properties":{"order_number":{"type":"string"}}}"#
                .into(),
            confirmation_required: confirm,
            action_id: format!("act_{name}"),
            ..Default::default()
        }
    }

    #[test]
    fn the_model_gets_instructions_the_conversation_and_this_turns_results() {
        let transcript = [
            json!({"author": "customer", "text": "Where is order 12345?"}),
            json!({"author": "system", "text": "assigned"}),
            json!({"author": "human", "text": "Looking"}),
        ];
        let turn = AgentTurn {
            turn: 1,
            rounds: 1,
            calls: vec![AgentCall {
                call_id: "call_1".into(),
                name: "order_status".into(),
                arguments: json!({"order_number": "12345"}),
                action_id: "act_order_status".into(),
                round: 1,
                result: Some(json!({"ok": true, "outputs": {"status": "shipped"}})),
                ..Default::default()
            }],
            confirming: None,
            asked_at: 0,
        };
        let tools = [tool("order_status", false)];
        let request = request(&Prompt {
            assistant_instructions: "Be kind.",
            node_instructions: "Orders only.",
            transcript: &transcript,
            tools: &tools,
            turn: &turn,
            handover: true,
        });
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Assistant,
                Role::Tool
            ]
        );
        let system = &request.messages[0].content;
        assert!(system.contains("Be kind.") && system.contains("Orders only."));
        assert!(system.contains(HANDOVER_TOOL));
        assert_eq!(request.messages[3].tool_calls[0].id, "call_1");
        assert_eq!(
            request.messages[3].tool_calls[0].arguments,
            r#"{"order_number":"12345"}"#
        );
        assert_eq!(request.messages[4].tool_call_id, "call_1");
        assert!(request.messages[4].content.contains("shipped"));
        let names: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["order_status", HANDOVER_TOOL]);
    }

    #[test]
    fn tool_calls_are_resolved_against_the_catalogue() {
        let completion = Completion {
            content: String::new(),
            tool_calls: vec![
                ToolCall {
                    id: "c1".into(),
                    name: "refund".into(),
                    arguments: "{}".into(),
                },
                ToolCall {
                    id: "c2".into(),
                    name: "made_up".into(),
                    arguments: "{}".into(),
                },
            ],
            finish_reason: "tool_calls".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
            },
            latency: Duration::from_millis(7),
            attempts: 1,
        };
        let out = outputs(&completion, &[tool("refund", true)], "mp_1", "m");
        assert_eq!(out["tool_calls"][0]["action_id"], "act_refund");
        assert_eq!(out["tool_calls"][0]["confirmation_required"], true);
        assert_eq!(out["tool_calls"][1]["action_id"], "");
        assert_eq!(out["usage"]["prompt_tokens"], 10);
        assert_eq!(out["latency_ms"], 7);
    }

    #[test]
    fn a_long_result_is_cut_and_says_so() {
        let long = "é".repeat(RESULT_BYTES);
        let cut = capped(&long);
        assert!(cut.len() < long.len() && cut.contains("cut"));
    }
}
