//! "Look it up and act", the seeds' pattern: a conversation starts the assistant's flow,
//! which asks for an order number, looks the order up through an http action, answers and
//! resolves the conversation, or apologises and hands over when the API fails; in `dev`
//! and in `serve` over NATS.

use std::time::Duration;

use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::conversations::v1::{
    AddMessageRequest, GetConversationRequest, StartConversationRequest,
};
use switchboard_proto::events::v1::{Author, Channel, MessageKind};

use crate::common::{
    Process, WS, agent_says, drop_schema, flow_edge, flow_node, order_status_action,
    published_flow, webhooks_env,
};

/// The seeds' "look it up and act" pattern, end to end in `dev`: a conversation starts
/// the assistant's flow, which asks for the order number, looks the order up through an
/// http action against a loopback API, answers and resolves the conversation; when the
/// API fails, it apologises and hands over.
#[tokio::test]
async fn dev_runs_the_look_it_up_and_act_flow_end_to_end() {
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

/// The same in production mode: three services against Postgres and NATS, every hop
/// between them over JetStream.
#[tokio::test]
async fn serve_runs_the_look_it_up_and_act_flow_over_nats() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    env.push(("SWITCHBOARD_LOG_FILTER".into(), "warn".into()));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,actions,flows,connexease",
            "--allow-unauthenticated",
        ],
        env,
    );
    look_it_up_and_act(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    for service in ["conversations", "actions", "flows", "connexease"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}

async fn look_it_up_and_act(process: &mut Process) {
    use switchboard_proto::flows::v1::*;

    let mut conversations = process.start().await;
    let api = order_api().await;
    let action = order_status_action(process.grpc_port, api).await;

    let say = |text: &str| {
        node::Kind::SendMessage(SendMessage {
            text: text.into(),
            ..Default::default()
        })
    };
    let graph = Graph {
        nodes: vec![
            flow_node("start", node::Kind::Start(Start {})),
            flow_node("ask", say("What is your order number?")),
            flow_node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    validation: "number".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "lookup",
                node::Kind::ApiCall(ApiCall {
                    action_id: action.id.clone(),
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            flow_node("status", say("Your order is {{ nodes.lookup.status }}.")),
            flow_node(
                "resolve",
                node::Kind::UpdateConversation(UpdateConversation {
                    status: "resolved".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "sorry",
                say("I'm having trouble reaching that right now, let me get a teammate"),
            ),
            flow_node(
                "handover",
                node::Kind::Connexease(ConnexeaseOperation {
                    operation: "assign_group".into(),
                    arguments: [("group".to_owned(), "billing".to_owned())].into(),
                }),
            ),
            flow_node("done", node::Kind::End(End::default())),
        ],
        edges: vec![
            flow_edge("start", "ask", ""),
            flow_edge("ask", "capture", ""),
            flow_edge("capture", "lookup", ""),
            flow_edge("lookup", "status", "success"),
            flow_edge("lookup", "sorry", "failure"),
            flow_edge("status", "resolve", ""),
            flow_edge("resolve", "done", "success"),
            flow_edge("resolve", "done", "failure"),
            flow_edge("sorry", "handover", ""),
            flow_edge("handover", "done", "success"),
            flow_edge("handover", "done", "failure"),
        ],
        ..Default::default()
    };
    published_flow(
        process.grpc_port,
        "orders",
        FlowKind::ConversationFlow,
        graph,
    )
    .await;

    let start = |request_id: &str| StartConversationRequest {
        workspace_id: WS.into(),
        request_id: request_id.into(),
        channel: Channel::Api as i32,
        ..Default::default()
    };
    let customer = |conversation_id: &str, text: &str| AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: conversation_id.into(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: text.into(),
        ..Default::default()
    };

    // Success: looked up, answered, resolved.
    let happy = conversations
        .start_conversation(start("happy"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    assert_eq!(
        agent_says(&mut conversations, &happy, 1).await,
        ["What is your order number?"]
    );
    conversations
        .add_message(customer(&happy, "4711"))
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &happy, 2).await,
        ["What is your order number?", "Your order is shipped."]
    );
    use switchboard_proto::events::v1::ConversationStatus;
    let mut status = ConversationStatus::Active;
    for _ in 0..600 {
        status = conversations
            .get_conversation(GetConversationRequest {
                workspace_id: WS.into(),
                conversation_id: happy.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .status();
        if status == ConversationStatus::Resolved {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ConversationStatus::Resolved);

    // Failure: the API is down; the run apologises and hands over.
    let unhappy = conversations
        .start_conversation(start("unhappy"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    agent_says(&mut conversations, &unhappy, 1).await;
    conversations
        .add_message(customer(&unhappy, "9999"))
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &unhappy, 2).await[1],
        "I'm having trouble reaching that right now, let me get a teammate"
    );
}

/// A loopback order API: order 4711 is shipped; any other number is a 503.
async fn order_api() -> std::net::SocketAddr {
    async fn order(
        axum::extract::Path(number): axum::extract::Path<String>,
    ) -> (axum::http::StatusCode, String) {
        if number == "4711" {
            (
                axum::http::StatusCode::OK,
                r#"{"status":"shipped"}"#.to_owned(),
            )
        } else {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "down".to_owned(),
            )
        }
    }
    let app = axum::Router::new().route("/orders/{number}", axum::routing::get(order));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
