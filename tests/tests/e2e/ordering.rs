//! Ordering: messages sent to one conversation all at once reach its run one at a time, in
//! the conversation's order, in `dev` and in `serve` over NATS.

use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::conversations::v1::ListMessagesRequest;
use switchboard_proto::events::v1::Author;

use crate::common::{
    Process, WS, agent_says, customer_says, drop_schema, flow_edge, flow_node, new_conversation,
    published_flow, say_node, webhooks_env,
};

/// Messages sent to one conversation all at once reach its run one at a time, in the
/// conversation's order: a flow that captures five answers gets them in sequence order.
async fn concurrent_messages_are_captured_in_order(process: &mut Process) {
    use switchboard_proto::flows::v1::*;

    let mut conversations = process.start().await;
    let mut nodes = vec![
        flow_node("start", node::Kind::Start(Start {})),
        say_node("ask", "Tell me five things."),
    ];
    let mut edges = vec![flow_edge("start", "ask", "")];
    let mut previous = "ask".to_owned();
    for i in 1..=5 {
        let id = format!("capture_{i}");
        nodes.push(flow_node(
            &id,
            node::Kind::CaptureInput(CaptureInput {
                variable: format!("session.m{i}"),
                ..Default::default()
            }),
        ));
        edges.push(flow_edge(&previous, &id, ""));
        previous = id;
    }
    nodes.push(say_node(
        "echo",
        "{{ session.m1 }},{{ session.m2 }},{{ session.m3 }},{{ session.m4 }},{{ session.m5 }}",
    ));
    nodes.push(flow_node("end", node::Kind::End(End::default())));
    edges.push(flow_edge(&previous, "echo", ""));
    edges.push(flow_edge("echo", "end", ""));
    published_flow(
        process.grpc_port,
        "five_things",
        FlowKind::ConversationFlow,
        Graph {
            nodes,
            edges,
            ..Default::default()
        },
    )
    .await;
    let conversation = new_conversation(&mut conversations, "ordering").await;
    agent_says(&mut conversations, &conversation, 1).await;

    let sends = (1..=5).map(|i| {
        let mut client = conversations.clone();
        let conversation = conversation.clone();
        tokio::spawn(async move {
            customer_says(&mut client, &conversation, &format!("thing {i}")).await;
        })
    });
    for send in futures::future::join_all(sends).await {
        send.unwrap();
    }
    let said = agent_says(&mut conversations, &conversation, 2).await;
    let in_sequence: Vec<String> = conversations
        .list_messages(ListMessagesRequest {
            workspace_id: WS.into(),
            conversation_id: conversation.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .filter(|m| m.author() == Author::Customer)
        .map(|m| m.text)
        .collect();
    assert_eq!(in_sequence.len(), 5);
    assert_eq!(said[1], in_sequence.join(","));
}

#[tokio::test]
async fn dev_hands_concurrent_messages_to_a_run_in_order() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    concurrent_messages_are_captured_in_order(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serve_hands_concurrent_messages_to_a_run_in_order_over_nats() {
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
            "conversations,flows",
            "--allow-unauthenticated",
        ],
        env,
    );
    concurrent_messages_are_captured_in_order(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    for service in ["conversations", "flows"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}
