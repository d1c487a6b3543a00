//! The agent, end to end: the seeds' "look it up and act" with an agent node instead of a
//! fixed graph, against a loopback OpenAI-compatible model that answers with scripted tool
//! calls. The model looks the order up and answers from the result; a refund that
//! requires confirmation is asked, confirmed by the customer and run once; a declined one
//! never runs; and the customer's secure metadata reaches the order API through the
//! sealed channel but never the model.

use std::sync::{Arc, Mutex};

use serde_json::json;
use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_flows::model_sim::{self, Reply};
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, CreateActionRequest, HttpSpec, ListExecutionsRequest, Outcome,
    PermissionLevel, ResponseMapping, Trigger,
};
use switchboard_proto::conversations::v1::{ClickButtonRequest, StartConversationRequest};
use switchboard_proto::events::v1::Channel;
use tokio_util::sync::CancellationToken;

use crate::common::{
    Partner, Process, WS, actions_client, agent_messages, agent_says, customer_says, drop_schema,
    flow_edge, flow_node, model_provider, say_node, webhooks_env,
};

const TOKEN: &str = "tok-SECRET-8812-for-the-order-api-only";
const MODEL_KEY: &str = "sk-test-model-key";

/// A loopback order API: every order is shipped; it keeps the `Authorization` it got.
async fn order_api(authorizations: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/orders/{number}",
        axum::routing::get(
            move |axum::extract::Path(number): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap| {
                let authorizations = authorizations.clone();
                async move {
                    let got = crate::common::header(&headers, "authorization");
                    authorizations.lock().unwrap().push(got);
                    axum::Json(json!({"number": number, "status": "shipped"}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn create_action(port: u16, definition: ActionDefinition) -> String {
    actions_client(port)
        .await
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(definition),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap()
        .id
}

/// In `dev`, every hop a log tail.
#[tokio::test]
async fn dev_agent_looks_up_confirms_and_acts_and_never_sees_secure_metadata() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    look_it_up_and_act(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// In `serve`, the tool calls and their outcomes over JetStream between services.
#[tokio::test]
async fn serve_agent_looks_up_confirms_and_acts_over_nats() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,actions,flows",
            "--allow-unauthenticated",
        ],
        env,
    );
    look_it_up_and_act(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    for service in ["conversations", "actions", "flows"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}

async fn look_it_up_and_act(process: &mut Process) {
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let mut conversations = process.start().await;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = model_sim::serve(listener, Some(MODEL_KEY.into()), shutdown.clone())
        .await
        .unwrap();
    let authorizations = Arc::new(Mutex::new(Vec::new()));
    let orders = order_api(authorizations.clone()).await;
    let partner = Partner::default();
    let partner_api = partner.serve().await;

    let order_status = create_action(
        process.grpc_port,
        ActionDefinition {
            name: "order_status".into(),
            description: "Looks up where an order is".into(),
            kind: ActionKind::Http as i32,
            input_schema:
                r#"{"type":"object","properties":{"order":{"type":"string"}},"required":["order"]}"#
                    .into(),
            http: Some(HttpSpec {
                method: "GET".into(),
                url: format!("http://{orders}/orders/{{{{ input.order }}}}"),
                headers: [(
                    "Authorization".to_owned(),
                    "Bearer {{ input.token }}".to_owned(),
                )]
                .into(),
                response_mapping: vec![ResponseMapping {
                    name: "status".into(),
                    path: "$.status".into(),
                    kind: "string".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let refund = create_action(
        process.grpc_port,
        ActionDefinition {
            name: "refund".into(),
            description: "Refunds an order in full".into(),
            kind: ActionKind::Http as i32,
            confirmation_required: true,
            input_schema:
                r#"{"type":"object","properties":{"order":{"type":"string"}},"required":["order"]}"#
                    .into(),
            http: Some(HttpSpec {
                method: "POST".into(),
                url: format!("http://{partner_api}/refunds"),
                body: r#"{"order": "{{ input.order }}"}"#.into(),
                response_mapping: vec![ResponseMapping {
                    name: "refund_id".into(),
                    path: "$.refund_id".into(),
                    kind: "string".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    let provider = model_provider(&mut flows, "fake", &model, Some(MODEL_KEY)).await;
    let graph = Graph {
        nodes: vec![
            flow_node("start", node::Kind::Start(Start {})),
            flow_node(
                "agent",
                node::Kind::Agent(AgentNode {
                    instructions: "Orders only.".into(),
                    wait_for_customer: true,
                    sealed_inputs: [("token".to_owned(), "{{ secure.api_token }}".to_owned())]
                        .into(),
                    ..Default::default()
                }),
            ),
            say_node("sorry", "Let me get a teammate."),
            flow_node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            flow_edge("start", "agent", ""),
            flow_edge("agent", "sorry", "failure"),
            flow_edge("sorry", "end", ""),
        ],
        ..Default::default()
    };
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "agent".into(),
            kind: FlowKind::ConversationFlow as i32,
            draft: Some(graph),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // An action workflow the assistant's instructions name: a tool too.
    let points = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "loyalty_points".into(),
            kind: FlowKind::ActionWorkflow as i32,
            description: "A customer's loyalty points".into(),
            draft: Some(Graph {
                nodes: vec![
                    flow_node("start", node::Kind::Start(Start {})),
                    flow_node(
                        "count",
                        node::Kind::SetVariable(SetVariable {
                            variable: "session.points".into(),
                            value: "{{ input.customer | length * 40 }}".into(),
                        }),
                    ),
                    flow_node("end", node::Kind::End(End::default())),
                ],
                edges: vec![flow_edge("start", "count", ""), flow_edge("count", "end", "")],
                input_schema_json: r#"{"type":"object","properties":{"customer":{"type":"string"}},"required":["customer"]}"#.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: points.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                name: "Orders".into(),
                instructions: "You help customers with their orders and @loyalty_points.".into(),
                enabled_action_ids: vec![order_status.clone(), refund.clone()],
                flow_id: flow.id.clone(),
                model_provider_id: provider.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    let start = |request_id: &str| StartConversationRequest {
        workspace_id: WS.into(),
        request_id: request_id.into(),
        channel: Channel::Widget as i32,
        secure_metadata: [("api_token".to_owned(), TOKEN.to_owned())].into(),
        ..Default::default()
    };

    // Looked up, and answered from the result.
    let happy = conversations
        .start_conversation(start("agent-happy"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    model.script([
        Reply::ToolCalls(vec![("order_status".into(), json!({"order": "4711"}))]),
        Reply::Text("Your order 4711 has shipped.".into()),
    ]);
    customer_says(&mut conversations, &happy, "Where is my order 4711?").await;
    assert_eq!(
        agent_says(&mut conversations, &happy, 1).await,
        ["Your order 4711 has shipped."]
    );
    assert_eq!(*authorizations.lock().unwrap(), [format!("Bearer {TOKEN}")]);

    // A refund needs the customer's yes: asked with buttons, run once on the yes.
    model.script([
        Reply::ToolCalls(vec![("refund".into(), json!({"order": "4711"}))]),
        Reply::Text("Done: order 4711 is refunded.".into()),
    ]);
    customer_says(&mut conversations, &happy, "Please refund it").await;
    let asked = agent_messages(&mut conversations, &happy, 2).await;
    assert_eq!(asked[1].text, "Shall I go ahead and refund (order: 4711)?");
    let labels: Vec<&str> = asked[1].buttons.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["Yes", "No"]);
    assert!(
        partner.refund_requests.lock().unwrap().is_empty(),
        "nothing is refunded before the customer says yes"
    );
    // The customer clicks Yes.
    conversations
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            request_id: "refund-yes".into(),
            conversation_id: happy.clone(),
            buttons_message_id: asked[1].id.clone(),
            button_id: asked[1].buttons[0].button_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &happy, 3).await[2],
        "Done: order 4711 is refunded."
    );
    assert_eq!(partner.refund_requests.lock().unwrap().len(), 1);
    // The log says who: the agent, confirmed by the customer, at the agent's level.
    let executions = actions_client(process.grpc_port)
        .await
        .list_executions(ListExecutionsRequest {
            workspace_id: WS.into(),
            action_id: refund.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions;
    let run = executions
        .iter()
        .find(|e| e.outcome == Outcome::Success as i32)
        .expect("the refund's execution");
    assert_eq!(
        (run.triggered_by, run.confirmed, run.caller_permission),
        (Trigger::Agent as i32, true, PermissionLevel::Agent as i32)
    );
    assert!(
        !run.confirmed_by.is_empty() && run.confirmed_by != asked[1].id,
        "the customer's click is the confirming message: {run:?}"
    );

    // Declined: never run, and the model is told.
    let declined = conversations
        .start_conversation(start("agent-declined"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    model.script([
        Reply::ToolCalls(vec![("refund".into(), json!({"order": "4712"}))]),
        Reply::Text("All right, I have not refunded it.".into()),
    ]);
    customer_says(&mut conversations, &declined, "Refund order 4712").await;
    agent_says(&mut conversations, &declined, 1).await;
    customer_says(&mut conversations, &declined, "no").await;
    assert_eq!(
        agent_says(&mut conversations, &declined, 2).await[1],
        "All right, I have not refunded it."
    );
    assert_eq!(
        partner.refund_requests.lock().unwrap().len(),
        1,
        "the declined refund never ran"
    );

    // What the model was sent: the conversation, the tools, their results; the key in
    // the header only; secure metadata nowhere.
    let received = model.received();
    assert_eq!(received.len(), 6, "{received:#?}");
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {MODEL_KEY}")))
    );
    let first = received[0].body.to_string();
    assert!(first.contains("Where is my order 4711?") && first.contains("Orders only."));
    let tools: Vec<&str> = received[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["order_status", "refund", "loyalty_points"]);
    assert!(received[1].body.to_string().contains("shipped"));
    assert!(
        received[3].body.to_string().contains("rf_1"),
        "the refund's result"
    );
    assert!(received[5].body.to_string().contains("declined"));
    for request in &received {
        let body = request.body.to_string();
        assert!(
            !body.contains(TOKEN),
            "secure metadata reached the model: {body}"
        );
        assert!(!body.contains(MODEL_KEY));
    }

    // A workflow as a tool: it runs as a child of the agent's run, and its response goes
    // back to the model.
    model.script([
        Reply::ToolCalls(vec![("loyalty_points".into(), json!({"customer": "ada"}))]),
        Reply::Text("You have 120 points.".into()),
    ]);
    customer_says(&mut conversations, &declined, "How many points do I have?").await;
    assert_eq!(
        agent_says(&mut conversations, &declined, 3).await[2],
        "You have 120 points."
    );
    let received = model.received();
    let result = received[7].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(result.contains(r#""points":"120""#), "{result}");

    shutdown.cancel();
}

/// An assistant with instructions and a model but no flow is its own agent: it answers
/// each customer message.
#[tokio::test]
async fn an_assistant_without_a_flow_is_its_own_agent() {
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = model_sim::serve(listener, None, shutdown.clone())
        .await
        .unwrap();
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    model_provider(&mut flows, "local", &model, None).await;
    flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                name: "Concierge".into(),
                // A template: rendered with the run's variables for each turn.
                instructions: "You are the hotel's concierge (conversation {{ conversation.id }})."
                    .into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    model.script([
        Reply::Text("Good evening! How can I help?".into()),
        Reply::Text("Breakfast is from 7 to 10.".into()),
    ]);
    let conversation = crate::common::new_conversation(&mut conversations, "concierge").await;
    customer_says(&mut conversations, &conversation, "Hello").await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Good evening! How can I help?"]
    );
    customer_says(&mut conversations, &conversation, "When is breakfast?").await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await[1],
        "Breakfast is from 7 to 10."
    );
    let second = model.received()[1].body.to_string();
    assert!(
        second.contains(&format!(
            "You are the hotel's concierge (conversation {conversation})."
        )),
        "{second}"
    );
    assert!(
        second.contains("Good evening! How can I help?") && second.contains("When is breakfast?")
    );
    // A provider that refuses the call: the agent's failure route, said to the customer.
    model.script([Reply::Status(400, None)]);
    customer_says(&mut conversations, &conversation, "Is the pool open?").await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 3).await[2],
        "Sorry, I cannot answer right now. A teammate will get back to you."
    );
    shutdown.cancel();
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
