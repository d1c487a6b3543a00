//! Workflows: an action workflow called through a `workflow` action answers with its
//! response, and an ended conversation starts the post-conversation workflows with its
//! transcript, analysis and variables.

use std::time::Duration;

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, CreateActionRequest, ExecuteActionRequest, Outcome,
};
use switchboard_proto::conversations::v1::{EndConversationRequest, RecordAnalysisRequest};

use crate::common::{
    Partner, Process, WS, actions_client, agent_says, customer_says, flow_edge, flow_node,
    new_conversation, post_action, published_flow, say_node, start_and_talk,
};

/// A `workflow` action invokes an action workflow of the flows service and answers with
/// the workflow's response.
#[tokio::test]
async fn dev_workflow_actions_answer_with_the_action_workflows_response() {
    use switchboard_proto::actions::v1::WorkflowSpec;
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let conversation = start_and_talk(&mut conversations).await;
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "greet".into(),
            kind: FlowKind::ActionWorkflow as i32,
            draft: Some(Graph {
                nodes: vec![
                    flow_node("start", node::Kind::Start(Start {})),
                    flow_node(
                        "set",
                        node::Kind::SetVariable(SetVariable {
                            variable: "session.greeting".into(),
                            value: "Hello {{ input.name }}".into(),
                        }),
                    ),
                    flow_node("end", node::Kind::End(End::default())),
                ],
                edges: vec![flow_edge("start", "set", ""), flow_edge("set", "end", "")],
                response_schema_json: r#"{"type":"object","required":["greeting"]}"#.into(),
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
            flow_id: flow.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut actions = actions_client(process.grpc_port).await;
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "greet_customer".into(),
                description: "Greets by name through a workflow".into(),
                kind: ActionKind::Workflow as i32,
                workflow: Some(WorkflowSpec {
                    workflow: "greet".into(),
                    inputs: [("name".to_owned(), "{{ input.name }}".to_owned())].into(),
                    timeout_ms: 10_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let result = actions
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: action.id,
            variables_json: serde_json::json!({"input": {"name": "Ada"}}).to_string(),
            idempotency_key: "greet-1".into(),
            conversation_id: conversation,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
    assert!(
        result.outputs_json.contains("Hello Ada"),
        "{}",
        result.outputs_json
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ended conversation starts the post-conversation workflows with the transcript, the
/// analysis and the variables its flow collected.
#[tokio::test]
async fn post_conversation_workflows_start_with_the_transcript_analysis_and_variables() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let note = post_action(
        &mut actions,
        "crm_note",
        format!("http://{api}/notes"),
        r#"{"transcript": "{{ input.transcript }}", "order": "{{ input.order }}", "topic": "{{ input.topic }}", "truncated": "{{ input.truncated }}"}"#,
        None,
        &[],
    )
    .await;
    published_flow(
        process.grpc_port,
        "orders",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                say_node("ask", "What is your order number?"),
                flow_node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.order".into(),
                        validation: "number".into(),
                        ..Default::default()
                    }),
                ),
                say_node("thanks", "Thanks, noted."),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "ask", ""),
                flow_edge("ask", "capture", ""),
                flow_edge("capture", "thanks", ""),
                flow_edge("thanks", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    published_flow(
        process.grpc_port,
        "crm_follow_up",
        FlowKind::PostConversationWorkflow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "note",
                    node::Kind::ApiCall(ApiCall {
                        action_id: note,
                        inputs: [
                            (
                                "transcript".to_owned(),
                                "{% for m in transcript %}{{ m.author }}: {{ m.text }}\n{% endfor %}"
                                    .to_owned(),
                            ),
                            ("order".to_owned(), "{{ session.order }}".to_owned()),
                            ("topic".to_owned(), "{{ analysis.topic }}".to_owned()),
                            (
                                "truncated".to_owned(),
                                "{{ transcript_truncated }} of {{ transcript_total }}".to_owned(),
                            ),
                        ]
                        .into(),
                    }),
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "note", ""),
                flow_edge("note", "end", "success"),
                flow_edge("note", "end", "failure"),
            ],
            ..Default::default()
        },
    )
    .await;

    let conversation = new_conversation(&mut conversations, "post-conversation").await;
    agent_says(&mut conversations, &conversation, 1).await;
    customer_says(&mut conversations, &conversation, "4711").await;
    agent_says(&mut conversations, &conversation, 2).await;
    conversations
        .record_analysis(RecordAnalysisRequest {
            workspace_id: WS.into(),
            request_id: "analysis".into(),
            conversation_id: conversation.clone(),
            topic: "order status".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    conversations
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            request_id: "end".into(),
            conversation_id: conversation.clone(),
            reason: "answered".into(),
        })
        .await
        .unwrap();
    for _ in 0..600 {
        if !partner.notes.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes = partner.notes.lock().unwrap().clone();
    assert_eq!(
        notes,
        [serde_json::json!({
            "transcript": "agent: What is your order number?\ncustomer: 4711\nagent: Thanks, noted.\n",
            "order": "4711",
            "topic": "order status",
            "truncated": "False of 3",
        })]
    );

    // A transcript past the documented 128 KiB: the oldest messages are left out, and the
    // cut is recorded for the workflow to see.
    let long = new_conversation(&mut conversations, "post-conversation-long").await;
    agent_says(&mut conversations, &long, 1).await;
    customer_says(&mut conversations, &long, "4712").await;
    agent_says(&mut conversations, &long, 2).await;
    for i in 0..6 {
        let text = format!("{i}{}", "x".repeat(30_000));
        customer_says(&mut conversations, &long, &text).await;
    }
    conversations
        .record_analysis(RecordAnalysisRequest {
            workspace_id: WS.into(),
            request_id: "analysis-long".into(),
            conversation_id: long.clone(),
            topic: "long".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    conversations
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            request_id: "end-long".into(),
            conversation_id: long.clone(),
            reason: "answered".into(),
        })
        .await
        .unwrap();
    for _ in 0..600 {
        if partner.notes.lock().unwrap().len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes = partner.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 2, "the long conversation's note");
    assert_eq!(
        notes[1]["truncated"], "True of 9",
        "{}",
        notes[1]["truncated"]
    );
    let kept = notes[1]["transcript"].as_str().unwrap();
    assert!(kept.len() <= 128 * 1024 + 1024, "{} bytes", kept.len());
    assert!(
        !kept.contains(&format!("0{}", "x".repeat(100))),
        "the oldest went first"
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ended conversation nobody analysed is analysed by the built-in analyser: the
/// analysis is recorded on the conversation, and a post-conversation workflow reads it as
/// `analysis.*` after a delay, routing on it with a condition.
#[tokio::test]
async fn an_ended_conversation_is_analysed_and_its_workflow_routes_on_the_analysis() {
    analysed_and_routed(false).await;
}

/// The same with a model provider in the workspace: the model extracts the analysis
/// (within the assistant's schema), and the workflow routes on what it found.
#[tokio::test]
async fn a_model_analyses_an_ended_conversation_and_its_workflow_routes_on_it() {
    analysed_and_routed(true).await;
}

async fn analysed_and_routed(with_model: bool) {
    use switchboard_proto::conversations::v1::GetConversationRequest;
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let note = post_action(
        &mut actions,
        "crm_note",
        format!("http://{api}/notes"),
        r#"{"route": "{{ input.route }}", "topic": "{{ input.topic }}", "sentiment": "{{ input.sentiment }}", "urgency": "{{ input.urgency }}", "summary": "{{ input.summary }}"}"#,
        None,
        &[],
    )
    .await;
    published_flow(
        process.grpc_port,
        "hello",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                say_node("greet", "How can I help?"),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "greet", ""),
                flow_edge("greet", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let note_node = |id: &str, route: &str| {
        flow_node(
            id,
            node::Kind::ApiCall(ApiCall {
                action_id: note.clone(),
                inputs: [
                    ("route".to_owned(), route.to_owned()),
                    ("topic".to_owned(), "{{ analysis.topic }}".to_owned()),
                    (
                        "sentiment".to_owned(),
                        "{{ analysis.sentiment }}".to_owned(),
                    ),
                    ("urgency".to_owned(), "{{ analysis.urgency }}".to_owned()),
                    ("summary".to_owned(), "{{ analysis.summary }}".to_owned()),
                ]
                .into(),
            }),
        )
    };
    published_flow(
        process.grpc_port,
        "escalate_problems",
        FlowKind::PostConversationWorkflow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node("wait", node::Kind::Delay(Delay { seconds: 1 })),
                flow_node(
                    "problem",
                    node::Kind::Condition(Condition {
                        rules: vec![Rule {
                            variable: "analysis.request_type".into(),
                            operator: Operator::Equals as i32,
                            value: "problem".into(),
                        }],
                        any: false,
                    }),
                ),
                note_node("escalate", "escalated"),
                note_node("file", "filed"),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "wait", ""),
                flow_edge("wait", "problem", ""),
                flow_edge("problem", "escalate", "true"),
                flow_edge("problem", "file", "false"),
                flow_edge("escalate", "end", "success"),
                flow_edge("escalate", "end", "failure"),
                flow_edge("file", "end", "success"),
                flow_edge("file", "end", "failure"),
            ],
            ..Default::default()
        },
    )
    .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let model = if with_model {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let model = switchboard_flows::model_sim::serve(listener, None, shutdown.clone())
            .await
            .unwrap();
        model.script([switchboard_flows::model_sim::Reply::Text(
            serde_json::json!({
                "summary": "The customer's parcel is late.",
                "topics": ["delivery"],
                "sentiment": "negative",
                "request_type": "request",
                "urgency": "low",
                "customer_effort": "low",
                "churn_risk": "medium",
                "resolution": "unresolved",
                "knowledge_gap": "",
                "carrier": "DHL",
            })
            .to_string(),
        )]);
        let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
            .await
            .unwrap();
        crate::common::model_provider(&mut flows, "local", &model, None).await;
        // The assistant's schema: a custom field beside the standard ones.
        let mut assistant = flows
            .list_assistants(ListAssistantsRequest {
                workspace_id: WS.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .assistants
            .remove(0);
        assistant.analysis = Some(AnalysisSchema {
            fields: vec![AnalysisField {
                name: "carrier".into(),
                description: "The delivery company named".into(),
                options: vec![],
            }],
            ..Default::default()
        });
        flows
            .save_assistant(SaveAssistantRequest {
                assistant: Some(assistant),
                ..Default::default()
            })
            .await
            .unwrap();
        Some(model)
    } else {
        None
    };

    let conversation = new_conversation(&mut conversations, "analysed").await;
    agent_says(&mut conversations, &conversation, 1).await;
    customer_says(
        &mut conversations,
        &conversation,
        "My order never arrived and I'm really frustrated, please fix it ASAP",
    )
    .await;
    conversations
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            request_id: "end".into(),
            conversation_id: conversation.clone(),
            reason: "customer left".into(),
        })
        .await
        .unwrap();
    for _ in 0..600 {
        if !partner.notes.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes = partner.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 1, "{notes:?}");
    if let Some(model) = model {
        assert_eq!(
            notes[0]["route"], "filed",
            "the model found a request: {notes:?}"
        );
        assert_eq!(notes[0]["topic"], "delivery");
        assert_eq!(notes[0]["urgency"], "low");
        assert_eq!(notes[0]["summary"], "The customer's parcel is late.");
        let asked = model.received()[0].body.to_string();
        assert!(
            asked.contains("never arrived") && asked.contains("carrier"),
            "{asked}"
        );
        let analysis = conversations
            .get_conversation(GetConversationRequest {
                workspace_id: WS.into(),
                conversation_id: conversation.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .analysis
            .unwrap();
        assert_eq!(analysis.topics, ["delivery"]);
        assert_eq!(analysis.custom["analysed_by"], "model");
        assert_eq!(analysis.custom["carrier"], "DHL");
        shutdown.cancel();
        assert_eq!(process.terminate().code(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    assert_eq!(notes[0]["route"], "escalated");
    assert_eq!(notes[0]["topic"], "order status");
    assert_eq!(notes[0]["sentiment"], "negative");
    assert_eq!(notes[0]["urgency"], "high");
    assert!(
        notes[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("A problem about order status"),
        "{notes:?}"
    );
    // The analysis is the conversation's too, for insights and the API.
    let analysis = conversations
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: conversation.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .analysis
        .unwrap();
    assert_eq!(analysis.topic, "order status");
    assert_eq!(analysis.custom["request_type"], "problem");
    assert_eq!(analysis.custom["analysed_by"], "built-in");
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
