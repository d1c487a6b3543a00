//! Secure metadata: given when a conversation starts, it reaches the partner API through an
//! action input, and no file the cluster writes (events, read models, logs) holds it.

use std::path::Path;

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::conversations::v1::StartConversationRequest;
use switchboard_proto::events::v1::Channel;

use crate::common::{
    Partner, Process, WS, actions_client, agent_says, flow_edge, flow_node, post_action,
    published_flow, say_node,
};

/// Secure metadata given when a conversation starts reaches the partner API through an
/// action input that reads `secure.*`, and is nowhere in plain text on disk: not in any
/// service's events, read models, inboxes or execution records.
#[tokio::test]
async fn secure_metadata_reaches_the_partner_and_no_file_holds_it() {
    use switchboard_proto::flows::v1::*;

    const TOKEN: &str = "tok-SECRET-4711-do-not-store";
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    // Everything the process logs, spans and their fields included, down to debug.
    let log = std::env::temp_dir().join(format!("{}.log", unique_name()));
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![
            ("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into()),
            ("SWITCHBOARD_LOG_FILTER".into(), "debug".into()),
        ],
    )
    .log_to(log.clone());
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let whoami = post_action(
        &mut actions,
        "whoami",
        format!("http://{api}/whoami"),
        "{}",
        Some(("name", "$.name")),
        &[("Authorization", "Bearer {{ input.token }}")],
    )
    .await;
    published_flow(
        process.grpc_port,
        "greeter",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "whoami",
                    node::Kind::ApiCall(ApiCall {
                        action_id: whoami,
                        inputs: [("token".to_owned(), "{{ secure.api_token }}".to_owned())].into(),
                    }),
                ),
                say_node("hello", "Hello {{ nodes.whoami.name }}!"),
                say_node("sorry", "I could not sign you in."),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "whoami", ""),
                flow_edge("whoami", "hello", "success"),
                flow_edge("whoami", "sorry", "failure"),
                flow_edge("hello", "end", ""),
                flow_edge("sorry", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;

    // Bad secure metadata is refused naming the key, never echoing the value.
    let refused = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "too-long".into(),
            channel: Channel::Api as i32,
            secure_metadata: [("api_token".to_owned(), "x".repeat(5000))].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(!refused.message().contains("xxxx"), "{refused:?}");

    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "secure".into(),
            channel: Channel::Api as i32,
            secure_metadata: [("api_token".to_owned(), TOKEN.to_owned())].into(),
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
        ["Hello Ada!"]
    );
    assert_eq!(
        *partner.authorizations.lock().unwrap(),
        [format!("Bearer {TOKEN}")]
    );
    assert_eq!(process.terminate().code(), Some(0));

    fn files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut stored = Vec::new();
    files(&dir, &mut stored);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("action executed") && logged.contains("whoami"),
        "the log has the run's spans and events"
    );
    stored.push(log.clone());
    assert!(
        stored.len() > 3,
        "the services wrote their logs: {stored:?}"
    );
    for file in stored {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the secure value in plain text",
            file.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
