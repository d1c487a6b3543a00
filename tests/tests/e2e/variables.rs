//! Variables as the seeds define them: `conversation.channel` is the channel's name,
//! metafields are read as they are when a message is answered (not as they were when the
//! run started), and `message.content` is the customer's message being answered.

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::conversations::v1::{SetMetafieldsRequest, StartConversationRequest};
use switchboard_proto::events::v1::Channel;

use crate::common::{
    Process, WS, agent_says, customer_says, flow_edge, flow_node, published_flow, say_node,
};

#[tokio::test]
async fn runs_read_the_conversation_as_it_now_is() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    published_flow(
        process.grpc_port,
        "plans",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                say_node(
                    "ask",
                    "Which order, on the {{ conversation.metafields.plan }} plan?",
                ),
                flow_node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.order".into(),
                        ..Default::default()
                    }),
                ),
                say_node(
                    "answer",
                    "Order {{ session.order }} on the {{ conversation.metafields.plan }} plan \
                     via {{ conversation.channel }}; you said {{ message.content }}.",
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "ask", ""),
                flow_edge("ask", "capture", ""),
                flow_edge("capture", "answer", ""),
                flow_edge("answer", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "plans".into(),
            channel: Channel::Widget as i32,
            metafields: [("plan".to_owned(), "free".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Which order, on the free plan?"]
    );
    // The customer upgrades mid-conversation; the flow reads the plan as it now is.
    conversations
        .set_metafields(SetMetafieldsRequest {
            workspace_id: WS.into(),
            request_id: "upgrade".into(),
            conversation_id: conversation.clone(),
            metafields: [("plan".to_owned(), "pro".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    customer_says(&mut conversations, &conversation, "4711").await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await[1],
        "Order 4711 on the pro plan via widget; you said 4711."
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
