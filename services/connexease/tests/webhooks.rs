//! Inbound Connexease webhooks over real HTTP: good, bad, missing and stale signatures,
//! duplicates, and the round trip from Connexease to our conversations (archived there is
//! archived here; a conversation created from ours is linked). The token and the webhook
//! secret appear in no log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Harness, TOKEN, WEBHOOK_SECRET, WS};
use serde_json::json;
use switchboard_connexease::signature;
use switchboard_proto::connexease::v1::{GetLinkRequest, RunOperationRequest};
use switchboard_proto::conversations::v1::{GetConversationRequest, StartConversationRequest};
use switchboard_proto::events::v1::{Channel, ConversationStatus};

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

fn delivery(id: &str, event: &str, created_at: i64, data: serde_json::Value) -> String {
    json!({"id": id, "event": event, "created_at": created_at, "data": data}).to_string()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn signatures_staleness_and_duplicates_are_checked() {
    logs();
    let mut h = Harness::start(80).await;
    let body = delivery("evt_a1", "customer.updated", now(), json!({"id": "cus_9"}));
    // No connection yet: nothing to verify against.
    let sign = signature::sign(WEBHOOK_SECRET, body.as_bytes());
    assert_eq!(post(&h, WS, &body, Some(sign.clone())).await.0, 404);
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
    let tampered = body.replace("cus_9", "cus_8");
    assert_eq!(post(&h, WS, &tampered, Some(sign.clone())).await.0, 401);
    let stale = delivery("evt_a2", "customer.updated", now() - 3600, json!({}));
    let stale_sign = signature::sign(WEBHOOK_SECRET, stale.as_bytes());
    let (status, answer) = post(&h, WS, &stale, Some(stale_sign)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("stale"))
    );

    let (status, answer) = post(&h, WS, &body, Some(sign.clone())).await;
    assert_eq!((status, answer), (200, json!({"received": true})));
    let (status, answer) = post(&h, WS, &body, Some(sign)).await;
    assert_eq!((status, answer), (200, json!({"duplicate": true})));
    let received = h
        .log
        .read_stream(
            &switchboard_eventlog::StreamRef::new("connexease_webhook", format!("{WS}/evt_a1")),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event_type, "connexease.webhook_received");
    assert_no_secret_logged();
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
    // the conversation.created webhook alone.
    let external = h.sim_conversation(Some(&ours)).await;
    let external_id = external["id"].as_str().unwrap().to_owned();
    let mut linked = None;
    for _ in 0..200 {
        if let Ok(link) = h
            .client
            .get_link(GetLinkRequest {
                workspace_id: WS.into(),
                conversation_id: ours.clone(),
            })
            .await
        {
            linked = Some(link.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let link = linked.expect("the conversation.created webhook linked the conversation");
    assert_eq!(link.external_conversation_id, external_id);

    // An assignment there is recorded here.
    h.client
        .run_operation(RunOperationRequest {
            workspace_id: WS.into(),
            idempotency_key: "assign-1".into(),
            conversation_id: ours.clone(),
            operation: "assign_group".into(),
            arguments: [("group".to_owned(), "returns".to_owned())].into(),
        })
        .await
        .unwrap();
    // A human agent archives it in Connexease: archived here too.
    h.http
        .post(format!(
            "{}/sim/conversations/{external_id}/archive",
            h.sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    let (mut conversation, mut last) = (None, None);
    for _ in 0..200 {
        let current = h
            .conversations
            .get_conversation(GetConversationRequest {
                workspace_id: WS.into(),
                conversation_id: ours.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap();
        // The two webhooks travel concurrently, so either may land first.
        let assigned = current.assignment.as_ref().map(|a| a.group.as_str()) == Some("returns");
        if current.status() == ConversationStatus::Archived && assigned {
            conversation = Some(current);
            break;
        }
        last = Some(current);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        conversation.is_some(),
        "archived and assigned in Connexease, so here too; last seen: {last:?}"
    );
    assert_no_secret_logged();
    h.stop().await;
}
