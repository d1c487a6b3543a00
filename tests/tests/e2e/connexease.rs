//! Connexease: `dev` runs the simulator and connects workspaces to it on first use, so a
//! `connexease` action works end to end with nothing else installed.

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, ConnexeaseSpec, CreateActionRequest, ExecuteActionRequest,
    Outcome,
};

use crate::common::{
    Process, WS, actions_client, agent_says, customer_says, flow_edge, flow_node, new_conversation,
    published_flow, say_node, start_and_talk,
};

/// `dev` runs the Connexease simulator and connects workspaces to it on first use: a
/// `connexease` action assigns a group there, end to end through actions, connexease and
/// the simulator over real HTTP.
#[tokio::test]
async fn dev_runs_connexease_actions_against_the_simulator() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let ours = start_and_talk(&mut conversations).await;
    switchboard_outbound::install_crypto_provider();
    let http = reqwest::Client::new();
    let sim = format!("http://127.0.0.1:{}", process.sim_port);
    let created: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{sim}/sim/conversations"))
            .header("content-type", "application/json")
            .body(r#"{"customer_name": "Lin"}"#)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let external = created["uuid"].as_str().unwrap().to_owned();

    let mut actions = actions_client(process.grpc_port).await;
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            definition: Some(ActionDefinition {
                name: "route_to_billing".into(),
                description: "Hands the conversation to the billing team".into(),
                kind: ActionKind::Connexease as i32,
                connexease: Some(ConnexeaseSpec {
                    operation: "assign_group".into(),
                    arguments: [
                        ("group".to_owned(), "billing".to_owned()),
                        (
                            "external_conversation_id".to_owned(),
                            "{{ input.connexease_id }}".to_owned(),
                        ),
                    ]
                    .into(),
                }),
                ..Default::default()
            }),
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
            variables_json: serde_json::json!({"input": {"connexease_id": external}}).to_string(),
            idempotency_key: "route-1".into(),
            conversation_id: ours,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome(), Outcome::Success, "{result:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{sim}/sim/state"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["conversations"][&external]["group"]["uuid"],
        switchboard_connexease::sim::seeded_ids::BILLING
    );
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A flow's Connexease node routes on the operation's outcome: one Connexease refuses
/// (an unknown conversation) takes the failure route with Connexease's error in the run's
/// variables; one it carries out takes the success route.
#[tokio::test]
async fn dev_flows_route_connexease_operations_on_their_outcome() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    switchboard_outbound::install_crypto_provider();
    let sim = format!("http://127.0.0.1:{}", process.sim_port);
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{sim}/sim/conversations"))
        .header("content-type", "application/json")
        .body(r#"{"customer_name": "Lin"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let external = created["uuid"].as_str().unwrap().to_owned();

    published_flow(
        process.grpc_port,
        "route_to_billing",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "which",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.external".into(),
                        validation: "none".into(),
                        ..Default::default()
                    }),
                ),
                flow_node(
                    "assign",
                    node::Kind::Connexease(ConnexeaseOperation {
                        operation: "assign_group".into(),
                        arguments: [
                            ("group".to_owned(), "billing".to_owned()),
                            (
                                "external_conversation_id".to_owned(),
                                "{{ session.external }}".to_owned(),
                            ),
                        ]
                        .into(),
                    }),
                ),
                say_node("assigned", "Billing has it."),
                say_node("refused", "Not assigned: {{ nodes.assign.error }}"),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "which", ""),
                flow_edge("which", "assign", ""),
                flow_edge("assign", "assigned", "success"),
                flow_edge("assign", "refused", "failure"),
                flow_edge("assigned", "end", ""),
                flow_edge("refused", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;

    let refused = new_conversation(&mut conversations, "unknown-conversation").await;
    customer_says(&mut conversations, &refused, "no-such-conversation").await;
    let said = agent_says(&mut conversations, &refused, 1).await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("Not assigned: "), "{said:?}");
    assert!(
        said[0].len() > "Not assigned: ".len(),
        "the error is named: {said:?}"
    );

    let assigned = new_conversation(&mut conversations, "known-conversation").await;
    customer_says(&mut conversations, &assigned, &external).await;
    assert_eq!(
        agent_says(&mut conversations, &assigned, 1).await,
        ["Billing has it."]
    );
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Connexease's `/stats` reaches insights: the connexease service reads it (here on
/// demand; every 15 minutes on its own) and records it, the insights service keeps it,
/// and a workspace developer reads the response times by agent over REST.
#[tokio::test]
async fn dev_offers_connexease_response_times_to_insights() {
    use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient;
    use switchboard_proto::connexease::v1::{ConnectRequest, Connection, ReadStatsRequest};

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    process.start().await;
    switchboard_outbound::install_crypto_provider();
    let http = reqwest::Client::new();
    let sim = format!("http://127.0.0.1:{}", process.sim_port);
    let workspace = "ws_stats";
    let mut connexease =
        ConnexeaseClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
            .await
            .unwrap();
    let defaults = switchboard_connexease::sim::SimConfig::default();
    connexease
        .connect_workspace(ConnectRequest {
            workspace_id: workspace.into(),
            request_id: String::new(),
            connection: Some(Connection {
                base_url: sim.clone(),
                access_token: defaults.token.clone(),
                webhook_secret: defaults.webhook_secret.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // A customer writes, Ada answers.
    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let answer = http
                .post(path)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&answer.bytes().await.unwrap()).unwrap()
        }
    };
    let created = post(format!("{sim}/sim/conversations"), serde_json::json!({})).await;
    let id = created["uuid"].as_str().unwrap();
    post(
        format!("{sim}/sim/conversations/{id}/messages"),
        serde_json::json!({"text": "Hello?"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    post(
        format!("{sim}/sim/conversations/{id}/messages"),
        serde_json::json!({"text": "Hi, Ada here.", "sender": "agent"}),
    )
    .await;
    let read = connexease
        .read_stats(ReadStatsRequest {
            workspace_id: workspace.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ada = read
        .agents
        .iter()
        .find(|a| a.email == "ada@shop.example")
        .expect("Ada's stats, with her email from the directory");
    assert!(ada.first_response_seconds >= 0.05, "{ada:?}");
    assert_eq!(read.channels[0].message_count, 2, "{read:?}");

    let key = crate::rest_api::create_key(&process, workspace, &["--data-dir", &data_dir]);
    let api = format!("http://127.0.0.1:{}", process.api_port);
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last =
            crate::rest_api::get_json(&api, "/v1/insights/connexease/stats?by=agent", &key).await;
        if last["rows"].as_array().is_some_and(|rows| !rows.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows = last["rows"].as_array().expect("rows");
    assert_eq!(
        rows[0]["email"], "ada@shop.example",
        "slowest first: {last}"
    );
    assert_eq!(rows.len(), 3, "every agent: {last}");
    assert!(last["read_at"].is_string(), "{last}");
    let by_channel =
        crate::rest_api::get_json(&api, "/v1/insights/connexease/stats?by=channel", &key).await;
    assert_eq!(by_channel["rows"][0]["message_count"], 2, "{by_channel}");
    let wrong =
        crate::rest_api::get_json(&api, "/v1/insights/connexease/stats?by=group", &key).await;
    assert_eq!(
        (&wrong["status"], &wrong["errors"][0]["field"]),
        (&serde_json::json!(422), &serde_json::json!("by")),
        "{wrong}"
    );
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}
