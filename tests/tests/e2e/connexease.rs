//! Connexease: `dev` runs the simulator and connects workspaces to it on first use, so a
//! `connexease` action works end to end with nothing else installed.

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, ConnexeaseSpec, CreateActionRequest, ExecuteActionRequest,
    Outcome,
};

use crate::common::{Process, WS, actions_client, start_and_talk};

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
    let external = created["data"]["id"].as_str().unwrap().to_owned();

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
    assert_eq!(state["conversations"][&external]["group_id"], "grp_billing");
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}
