//! Inbound Connexease webhooks over real HTTP, in the shape Connexease publishes: every
//! hook recorded once (retries too), bad and missing signatures refused with nothing
//! recorded, a multi-megabyte `conversation.archived` kept whole and published abridged,
//! the signed input configurable per connection, the simulator's deliveries retried until
//! answered, auto-assignment answered by round robin, and the round trip from Connexease
//! to our conversations. The token and the webhook secret appear in no log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use common::{Harness, TOKEN, WEBHOOK_SECRET, WS};
use prost::Message as _;
use serde_json::{Value, json};
use switchboard_connexease::signature;
use switchboard_connexease::sim::seeded_ids;
use switchboard_eventlog::{RecordedEvent, Router as _};
use switchboard_proto::connexease::v1::{
    AutoAssignRule, ConnectRequest, Connection, GetDirectoryRequest, GetLinkRequest, SignedInput,
    WebhookBody, WebhookReceived,
};
use switchboard_proto::conversations::v1::{
    GetConversationRequest, ListMessagesRequest, StartConversationRequest,
};
use switchboard_proto::events::v1::{Author, Channel, ConversationStatus};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test process, at every level.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

fn assert_no_secret_logged() {
    let text = String::from_utf8(logs().0.lock().unwrap().clone()).unwrap();
    assert!(!text.is_empty(), "the process logged");
    assert!(!text.contains(TOKEN), "the access token is in the logs");
    assert!(
        !text.contains(WEBHOOK_SECRET),
        "the webhook secret is in the logs"
    );
}

async fn post(
    h: &Harness,
    workspace: &str,
    body: &str,
    sign: Option<String>,
) -> (u16, serde_json::Value) {
    let mut request = h
        .http
        .post(format!(
            "http://{}/connexease/webhooks/{workspace}",
            h.webhooks
        ))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(sign) = sign {
        request = request.header(signature::HEADER, sign);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// `body` signed as Connexease signs it: base64 HMAC-SHA256 of the raw body.
async fn deliver(h: &Harness, body: &str) -> (u16, Value) {
    post(
        h,
        WS,
        body,
        Some(signature::sign(WEBHOOK_SECRET, body.as_bytes())),
    )
    .await
}

/// The published deliveries of the fixtures, one per hook.
fn fixtures() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/deliveries.json")).unwrap()
}

fn fixture(hook: &str) -> Value {
    fixtures()
        .into_iter()
        .find(|d| d["hook"] == hook)
        .unwrap_or_else(|| panic!("no fixture for {hook}"))
}

/// Every event of the connexease log.
async fn events(h: &Harness) -> Vec<RecordedEvent> {
    common::all_events(&h.log).await
}

/// Every delivery recorded.
async fn received(h: &Harness) -> Vec<WebhookReceived> {
    events(h)
        .await
        .iter()
        .filter(|e| e.event_type == "connexease.webhook_received")
        .map(|e| e.decode().unwrap())
        .collect()
}

/// Waits until `check` holds, polling.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn signatures_are_checked_and_a_delivery_is_recorded_once_whatever_its_retries() {
    logs();
    let mut h = Harness::start(80).await;
    let body = fixture("customer.updated").to_string();
    // No connection yet: nothing to verify against.
    assert_eq!(deliver(&h, &body).await.0, 404);
    h.connect().await;

    let (status, answer) = post(&h, WS, &body, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("missing_signature"))
    );
    let forged = signature::sign("not-the-secret-at-all", body.as_bytes());
    let (status, answer) = post(&h, WS, &body, Some(forged)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("bad_signature"))
    );
    let good = signature::sign(WEBHOOK_SECRET, body.as_bytes());
    let tampered = body.replace("Grace Hopper", "Grace Brewster");
    assert_eq!(post(&h, WS, &tampered, Some(good.clone())).await.0, 401);
    assert!(
        received(&h).await.is_empty(),
        "nothing is recorded from a delivery that is not signed right"
    );

    let (status, answer) = post(&h, WS, &body, Some(good.clone())).await;
    assert_eq!((status, answer), (200, json!({"received": true})));
    // Connexease's retry: the same body, then the same payload spaced and ordered
    // otherwise, signed in hex (the fallback).
    let (status, answer) = post(&h, WS, &body, Some(good)).await;
    assert_eq!((status, answer), (200, json!({"duplicate": true})));
    let delivery = fixture("customer.updated");
    let respaced = serde_json::to_string_pretty(&json!({
        "channel": delivery["channel"], "payload": delivery["payload"], "hook": delivery["hook"],
    }))
    .unwrap();
    let hex = {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(respaced.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let (status, answer) = post(&h, WS, &respaced, Some(hex)).await;
    assert_eq!((status, answer), (200, json!({"duplicate": true})));
    let recorded = received(&h).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].event, "customer.updated");
    assert_eq!(
        recorded[0].external_customer_id,
        delivery["payload"]["uuid"].as_str().unwrap()
    );

    // Not a delivery: the old envelope, a body that is not JSON, a hook that is not one.
    for (body, code) in [
        (
            json!({"id": "evt_1", "event": "customer.updated", "created_at": 1, "data": {}})
                .to_string(),
            "invalid",
        ),
        ("{not json".to_owned(), "not_json"),
        (
            json!({"hook": "Customer Updated!", "payload": {}}).to_string(),
            "invalid",
        ),
    ] {
        let (status, answer) = deliver(&h, &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    // Only a dated delivery can be stale; an undated one never is.
    let mut dated = fixture("feedback.received");
    dated["timestamp"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 30 * 86_400);
    let (status, answer) = deliver(&h, &dated.to_string()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("stale"))
    );
    dated["timestamp"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 3600);
    assert_eq!(deliver(&h, &dated.to_string()).await.0, 200);
    assert_eq!(received(&h).await.len(), 2);
    assert_no_secret_logged();
    h.stop().await;
}

#[tokio::test]
async fn every_published_hook_is_recorded_once_and_published_under_its_name() {
    logs();
    let mut h = Harness::start(80).await;
    h.connect().await;
    let fixtures = fixtures();
    assert_eq!(
        fixtures
            .iter()
            .map(|d| d["hook"].as_str().unwrap())
            .collect::<Vec<_>>(),
        switchboard_connexease::hooks::PUBLISHED,
        "one fixture per published hook"
    );
    for delivery in &fixtures {
        let body = delivery.to_string();
        let (status, first) = deliver(&h, &body).await;
        assert_eq!(status, 200, "{delivery}: {first}");
        assert_eq!(first["received"], true, "{delivery}");
        let (status, again) = deliver(&h, &body).await;
        assert_eq!((status, &again["duplicate"]), (200, &json!(true)));
    }
    let recorded = events(&h).await;
    let received: Vec<&RecordedEvent> = recorded
        .iter()
        .filter(|e| e.event_type == "connexease.webhook_received")
        .collect();
    assert_eq!(received.len(), fixtures.len());
    for (event, delivery) in received.iter().zip(&fixtures) {
        let webhook: WebhookReceived = event.decode().unwrap();
        assert_eq!(webhook.event, delivery["hook"]);
        assert_eq!(
            serde_json::from_str::<Value>(&webhook.data_json).unwrap(),
            delivery["payload"],
            "a payload is kept as Connexease sent it"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&webhook.channel_json).unwrap(),
            delivery["channel"]
        );
        let hook = delivery["hook"].as_str().unwrap();
        let names_conversation = hook.starts_with("conversation.")
            || hook.starts_with("message.")
            || hook == "feedback.received";
        assert_eq!(
            !webhook.external_conversation_id.is_empty(),
            names_conversation,
            "{hook}"
        );
        assert_eq!(
            switchboard_connexease::PublicEvents.subject(event),
            Some(format!("events.{WS}.connexease.{}", hook.replace('.', "_")))
        );
    }
    assert_no_secret_logged();
    h.stop().await;
}

#[tokio::test]
async fn a_multi_megabyte_archived_conversation_is_kept_whole_and_published_abridged() {
    logs();
    let mut h = Harness::start(80).await;
    h.connect().await;
    let mut delivery = fixture("conversation.archived");
    let attachment = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 6 * 1024]);
    delivery["payload"]["messages"] = (0..800)
        .map(|i| {
            json!({
                "uuid": format!("00000000-0000-4000-8000-{i:012}"),
                "sender": {"type": if i % 2 == 0 { "customer" } else { "agent" }},
                "text": format!("message {i}"),
                "attachments": [{"name": format!("photo-{i}.jpg"), "content": attachment}],
            })
        })
        .collect();
    let body = delivery.to_string();
    assert!(body.len() > 6 * 1024 * 1024, "{} bytes", body.len());
    let (status, answer) = deliver(&h, &body).await;
    assert_eq!((status, answer), (200, json!({"received": true})));
    assert_eq!(deliver(&h, &body).await.1, json!({"duplicate": true}));

    let recorded = events(&h).await;
    let webhook: WebhookReceived = recorded
        .iter()
        .find(|e| e.event_type == "connexease.webhook_received")
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(webhook.abridged_fields, ["messages"]);
    assert_eq!(webhook.body_bytes, body.len() as u64);
    assert!(webhook.encode_to_vec().len() < 300 * 1024);
    let published: Value = serde_json::from_str(&webhook.data_json).unwrap();
    assert_eq!(published["status"], "archived");
    assert_eq!(published["messages"], Value::Null);
    let whole: Vec<WebhookBody> = recorded
        .iter()
        .filter(|e| e.event_type == "connexease.webhook_body")
        .map(|e| e.decode().unwrap())
        .collect();
    assert_eq!(whole.len(), 1);
    assert_eq!(
        whole[0].body,
        body.as_bytes(),
        "the whole body is in the log"
    );
    assert_eq!(whole[0].delivery_id, webhook.delivery_id);
    // The body event stays in the log; only the abridged one is published.
    let body_event = recorded
        .iter()
        .find(|e| e.event_type == "connexease.webhook_body")
        .unwrap();
    assert_eq!(
        switchboard_connexease::PublicEvents.subject(body_event),
        None
    );
    h.stop().await;
}

#[tokio::test]
async fn the_signed_input_is_configured_per_connection() {
    logs();
    let mut h = Harness::start(80).await;
    h.client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                webhook_signed_input: SignedInput::Payload as i32,
                ..h.connection()
            }),
        })
        .await
        .unwrap();
    let body = r#"{"hook": "customer.updated", "payload": {"uuid": "8c2d4e6f-1a3b-4c5d-9e8f-7a6b5c4d3e2f", "name": "Ada"}, "channel": null}"#;
    let payload = r#"{"uuid": "8c2d4e6f-1a3b-4c5d-9e8f-7a6b5c4d3e2f", "name": "Ada"}"#;
    // Signed over the raw body: not what this connection takes.
    assert_eq!(deliver(&h, body).await.0, 401);
    let over_payload = signature::sign(WEBHOOK_SECRET, payload.as_bytes());
    assert_eq!(post(&h, WS, body, Some(over_payload)).await.0, 200);

    // Compact JSON: the body without its spaces is what is signed.
    h.client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                webhook_signed_input: SignedInput::CompactBody as i32,
                access_token: String::new(),
                webhook_secret: String::new(),
                ..h.connection()
            }),
        })
        .await
        .unwrap();
    let other = body.replace("Ada", "Bea");
    let compact = r#"{"hook":"customer.updated","payload":{"uuid":"8c2d4e6f-1a3b-4c5d-9e8f-7a6b5c4d3e2f","name":"Bea"},"channel":null}"#;
    let sign = signature::sign(WEBHOOK_SECRET, compact.as_bytes());
    assert_eq!(post(&h, WS, &other, Some(sign)).await.0, 200);
    assert_eq!(received(&h).await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn the_simulator_retries_a_delivery_until_it_is_answered() {
    logs();
    let mut h = Harness::start(80).await;
    // Not connected yet: the delivery of this conversation.created is refused (404)...
    let created = h.sim_conversation(None).await;
    eventually("a refused try", || async {
        h.sim_deliveries().await.iter().any(|d| d["status"] == 404)
    })
    .await;
    // ...and tried again until it is taken.
    h.connect().await;
    eventually("a taken try", || async {
        h.sim_deliveries().await.iter().any(|d| d["status"] == 200)
    })
    .await;
    let tries = h.sim_deliveries().await;
    assert!(tries.len() >= 2, "{tries:?}");
    assert!(tries.iter().all(|d| d["hook"] == "conversation.created"));
    let recorded = received(&h).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].external_conversation_id, created["uuid"]);
    h.stop().await;
}

#[tokio::test]
async fn auto_assign_is_answered_by_the_workspace_rule_and_recorded() {
    logs();
    let mut h = Harness::start(80).await;
    h.connect().await;
    // Bob comes online: agent.status_changed refreshes the directory.
    h.sim_post(
        &format!("/sim/agents/{}/status", seeded_ids::BOB),
        json!({"status": "online"}),
    )
    .await;
    let mut client = h.client.clone();
    eventually("the directory shows Bob online", || {
        let mut client = client.clone();
        async move {
            let directory = client
                .get_directory(GetDirectoryRequest {
                    workspace_id: WS.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .directory
                .unwrap();
            directory
                .agents
                .iter()
                .any(|a| a.email == "bob@shop.example" && a.availability == "online")
        }
    })
    .await;
    // Round robin over the online agents, Ada then Bob then Ada.
    let mut chosen = Vec::new();
    for _ in 0..3 {
        let conversation = h.sim_conversation(None).await;
        let id = conversation["uuid"].as_str().unwrap();
        let answer = h
            .sim_post(&format!("/sim/conversations/{id}/auto_assign"), json!({}))
            .await;
        assert_eq!(
            answer["conversation"]["agent"]["uuid"], answer["answer"]["agent"]["uuid"],
            "Connexease assigns the agent answered: {answer}"
        );
        chosen.push(
            answer["answer"]["agent"]["email"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        chosen,
        ["ada@shop.example", "bob@shop.example", "ada@shop.example"]
    );
    // A retry of an answered delivery gets the same answer, and no new turn.
    let asked = fixture("conversation.auto_assign").to_string();
    let (_, first) = deliver(&h, &asked).await;
    let (_, again) = deliver(&h, &asked).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(first["agent"], again["agent"]);
    assert_eq!(first["agent"]["email"], "bob@shop.example");
    let turns = events(&h)
        .await
        .iter()
        .filter(|e| e.event_type == "connexease.auto_assign_answered")
        .count();
    assert_eq!(turns, 4);

    // A workspace that leaves it to Connexease chooses no one.
    client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                auto_assign_rule: AutoAssignRule::Decline as i32,
                ..h.connection()
            }),
        })
        .await
        .unwrap();
    let mut other = fixture("conversation.auto_assign");
    other["payload"]["uuid"] = json!("11111111-2222-4333-8444-555555555555");
    let (status, declined) = deliver(&h, &other.to_string()).await;
    assert_eq!((status, &declined["agent"]), (200, &Value::Null));
    h.stop().await;
}

#[tokio::test]
async fn connexease_changes_reach_our_conversations() {
    logs();
    let mut h = Harness::start(80).await;
    h.connect().await;
    let ours = h
        .conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            channel: Channel::Api as i32,
            user_id: "user-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;

    // A conversation Connexease creates from ours (its id as external_id) is linked by
    // the conversation.created delivery alone.
    let external = h.sim_conversation(Some(&ours)).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    let client = h.client.clone();
    eventually("the conversation is linked", || {
        let mut client = client.clone();
        let ours = ours.clone();
        async move {
            client
                .get_link(GetLinkRequest {
                    workspace_id: WS.into(),
                    conversation_id: ours,
                })
                .await
                .is_ok()
        }
    })
    .await;

    // A human agent answers there: the message is ours too, as a human's.
    h.sim_post(
        &format!("/sim/conversations/{external_id}/messages"),
        json!({"text": "Hello, Ada here. Let me check.", "sender": "agent"}),
    )
    .await;
    let conversations = h.conversations.clone();
    eventually("the agent's message is ours", || {
        let mut conversations = conversations.clone();
        let ours = ours.clone();
        async move {
            conversations
                .list_messages(ListMessagesRequest {
                    workspace_id: WS.into(),
                    conversation_id: ours,
                    limit: 50,
                    cursor: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .messages
                .iter()
                .any(|m| m.author() == Author::Human && m.text == "Hello, Ada here. Let me check.")
        }
    })
    .await;
    // An assignment there is recorded here; archived there is archived here.
    h.client
        .run_operation(switchboard_proto::connexease::v1::RunOperationRequest {
            workspace_id: WS.into(),
            idempotency_key: "assign-1".into(),
            conversation_id: ours.clone(),
            operation: "assign_group".into(),
            arguments: [("group".to_owned(), "returns".to_owned())].into(),
        })
        .await
        .unwrap();
    let client = h.client.clone();
    eventually("the assignment reached the link", || {
        let mut client = client.clone();
        let ours = ours.clone();
        async move {
            let link = client
                .get_link(GetLinkRequest {
                    workspace_id: WS.into(),
                    conversation_id: ours,
                })
                .await
                .unwrap()
                .into_inner();
            link.group_id == seeded_ids::RETURNS
        }
    })
    .await;
    // Deliveries travel concurrently, so the archive is made after the assignment landed.
    h.sim_post(
        &format!("/sim/conversations/{external_id}/archive"),
        json!({}),
    )
    .await;
    eventually("archived and assigned", || {
        let mut conversations = conversations.clone();
        let ours = ours.clone();
        async move {
            let current = conversations
                .get_conversation(GetConversationRequest {
                    workspace_id: WS.into(),
                    conversation_id: ours,
                })
                .await
                .unwrap()
                .into_inner()
                .conversation
                .unwrap();
            let assigned = current.assignment.as_ref().map(|a| a.group.as_str()) == Some("returns");
            current.status() == ConversationStatus::Archived && assigned
        }
    })
    .await;
    // The link follows what Connexease said last.
    let link = h
        .client
        .get_link(GetLinkRequest {
            workspace_id: WS.into(),
            conversation_id: ours.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(link.external_status, "archived");
    assert_eq!(link.group_id, seeded_ids::RETURNS);
    assert_no_secret_logged();
    h.stop().await;
}

/// Connexease sends no delivery id: a delivery equal to the last one about its subject is
/// a retry, but the same payload after another one (an agent online, away, online again)
/// is the subject changing back, and is carried out again.
#[tokio::test]
async fn a_change_back_is_not_taken_for_a_retry() {
    logs();
    let mut h = Harness::start(80).await;
    h.connect().await;
    let status = |status: &str| {
        json!({
            "hook": "agent.status_changed",
            "payload": {"uuid": seeded_ids::BOB, "name": "Bob", "status": status},
        })
        .to_string()
    };
    let mut answers = Vec::new();
    for body in [
        status("online"),
        status("online"),
        status("away"),
        status("online"),
    ] {
        answers.push(deliver(&h, &body).await.1);
    }
    assert_eq!(
        answers,
        [
            json!({"received": true}),
            json!({"duplicate": true}),
            json!({"received": true}),
            json!({"received": true}),
        ]
    );
    let recorded: Vec<String> = received(&h)
        .await
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.data_json).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(recorded, ["online", "away", "online"]);
    // Its retry is still a retry.
    assert_eq!(
        deliver(&h, &status("online")).await.1,
        json!({"duplicate": true})
    );
    h.stop().await;
}
