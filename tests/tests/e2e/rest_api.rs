//! The REST API as a workspace developer meets it: a key made with `switchboard api-keys
//! create` (while `dev` runs, or against Postgres for `serve`), the first calls with it
//! over HTTP, and its revocation refusing the very next request.

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_eventlog::testing::{TestNats, unique_name};

use crate::common::{Process, WS, create_endpoint, drop_schema, serve_env, webhook_receiver};

/// Creates a key with the CLI (in `process`'s environment plus `extra` arguments) and
/// returns it: the last line of stdout.
pub(crate) fn create_key(process: &Process, workspace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "api-keys",
        "create",
        "--workspace",
        workspace,
        "--name",
        "first",
    ];
    args.extend_from_slice(extra);
    let output = process.run_to_end(&args);
    assert!(
        output.status.success(),
        "api-keys create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("sbk_live_"), "{stdout}");
    key
}

/// The first minute of a developer: list (empty), start a conversation, post a message,
/// read it back.
async fn first_calls(api: &str, key: &str) -> String {
    switchboard_outbound::install_crypto_provider();
    let http = reqwest::Client::new();
    let empty = get_json(api, "/v1/conversations", key).await;
    assert_eq!(
        empty,
        json!({"data": [], "has_more": false, "next_cursor": null})
    );
    let started = http
        .post(format!("{api}/v1/conversations"))
        .bearer_auth(key)
        .json(&json!({"user_id": "user_1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::CREATED);
    let started: Value = started.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    let added = http
        .post(format!("{api}/v1/conversations/{id}/messages"))
        .bearer_auth(key)
        .json(&json!({"text": "Hello from the API"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let messages = get_json(api, &format!("/v1/conversations/{id}/messages"), key).await;
    assert_eq!(messages["data"][0]["text"], "Hello from the API");
    id
}

/// `GET {api}{path}` with `key`, as JSON.
pub(crate) async fn get_json(api: &str, path: &str, key: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{api}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until insights count `conversations` in the key's workspace (they trail the
/// conversations by the time an event takes to arrive), then checks a breakdown and a
/// segment's conversation list agree.
async fn insights_count(api: &str, key: &str, conversations: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let summary = get_json(api, "/v1/insights/summary", key).await;
        if summary["measures"]["conversations"] == conversations {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "insights never counted {conversations}: {summary}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let breakdown = get_json(api, "/v1/insights/breakdown?by=channel", key).await;
    assert_eq!(
        breakdown["rows"][0]["values"],
        json!(["api"]),
        "{breakdown}"
    );
    let segment: Value = reqwest::Client::new()
        .post(format!("{api}/v1/insights/segments"))
        .bearer_auth(key)
        .json(&json!({"name": "API", "conditions": [{"dimension": "channel", "values": ["api"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let segment_id = segment["id"].as_str().unwrap();
    let listed = get_json(
        api,
        &format!("/v1/conversations?segment_id={segment_id}"),
        key,
    )
    .await;
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(conversations as usize),
        "{listed}"
    );
}

async fn status_with(api: &str, key: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{api}/v1/conversations"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn dev_serves_the_rest_api_with_a_key_made_while_it_runs() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    process.start().await;
    let api = format!("http://127.0.0.1:{}", process.api_port);
    let key = create_key(&process, "ws_rest", &["--data-dir", &data_dir]);
    first_calls(&api, &key).await;
    insights_count(&api, &key, 1).await;

    let listed = process.run_to_end(&[
        "api-keys",
        "list",
        "--workspace",
        "ws_rest",
        "--data-dir",
        &data_dir,
    ]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    let id = listed.split_whitespace().next().unwrap().to_owned();
    assert!(
        id.starts_with("key_") && listed.contains("live"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "a list never shows a key");

    let revoked = process.run_to_end(&[
        "api-keys",
        "revoke",
        &id,
        "--workspace",
        "ws_rest",
        "--data-dir",
        &data_dir,
    ]);
    assert!(revoked.status.success());
    assert_eq!(status_with(&api, &key).await, StatusCode::UNAUTHORIZED);
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serve_runs_the_gateway_against_postgres_with_a_key_from_the_cli() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = serve_env(&schema_prefix, &nats);
    env.push(("SWITCHBOARD_SERVICE_TOKEN".into(), "e2e-token".into()));
    let mut process = Process::new(
        &["serve", "--services", "conversations,insights,gateway"],
        env,
    );
    process.start().await;
    let api = format!("http://127.0.0.1:{}", process.api_port);
    let key = create_key(&process, "ws_rest", &["--scope", "conversations:write"]);
    first_calls(&api, &key).await;
    // Insights over NATS: the conversations' relay, a durable consumer, the read model.
    let analyst = create_key(
        &process,
        "ws_rest",
        &["--scope", "insights:write", "--scope", "conversations:read"],
    );
    insights_count(&api, &analyst, 1).await;
    let other = create_key(&process, "ws_other", &[]);
    assert_eq!(status_with(&api, &other).await, StatusCode::OK);
    assert_eq!(
        status_with(&api, "sbk_live_nope").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(process.terminate().success());
    for service in ["conversations", "insights", "gateway"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
}

/// The seeds' webhook-then-fetch journey: a `conversation.updated` webhook names the
/// conversation's URL in the REST API, and the receiver fetches it and its messages with a
/// key.
#[tokio::test]
async fn a_webhook_receiver_fetches_the_whole_conversation_over_rest() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    process.start().await;
    let api = format!("http://127.0.0.1:{}", process.api_port);
    let (receiver, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, receiver).await;
    let key = create_key(&process, WS, &["--data-dir", &data_dir]);
    let id = first_calls(&api, &key).await;

    let delivered = hooks.wait_for(2).await;
    let updated: Value = delivered
        .iter()
        .map(|(_, body)| serde_json::from_str::<Value>(body).unwrap())
        .find(|body| body["type"] == "conversation.updated")
        .expect("a conversation.updated webhook");
    let url = updated["data"]["conversation"]["url"].as_str().unwrap();
    assert_eq!(url, format!("{api}/v1/conversations/{id}"));

    let conversation = get_json(url, "", &key).await;
    assert_eq!(conversation["id"], id.as_str());
    let messages = get_json(url, "/messages", &key).await;
    assert_eq!(messages["data"][0]["text"], "Hello from the API");
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}
