//! Running the binary: `serve` against Postgres and NATS and `dev` with nothing else
//! installed, each killed with SIGKILL and started again with every acknowledged write
//! still there; the event log read back and rebuilt from the command line; a clean stop on
//! SIGTERM; and a configuration that cannot work refused, naming the variable.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use prost::Message as _;
use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::actions::v1::GetActionRequest;
use switchboard_proto::conversations::v1::AddMessageRequest;
use switchboard_proto::events::v1::{Author, ConversationUpdatedEvent, EventEnvelope, MessageKind};

use crate::common::{
    Process, WS, actions_client, create_action, drop_schema, everything, serve_env, start_and_talk,
};

#[tokio::test]
async fn serve_publishes_survives_kill_9_and_rebuilds() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = serve_env(&schema_prefix, &nats);
    env.push(("SWITCHBOARD_STREAM_MAX_AGE_HOURS".into(), "48".into()));
    env.push(("SWITCHBOARD_STREAM_MAX_BYTES".into(), "1000000".into()));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut client = process.start().await;
    let mut updates = nats
        .client
        .subscribe(format!("{}.events.{WS}.conversation.updated", nats.prefix))
        .await
        .unwrap();

    let id = start_and_talk(&mut client).await;
    let message = tokio::time::timeout(Duration::from_secs(20), updates.next())
        .await
        .expect("conversation.updated on NATS")
        .unwrap();
    let headers = message.headers.clone().unwrap();
    assert_eq!(
        headers.get("sb-event-type").unwrap().as_str(),
        "conversation.updated"
    );
    let envelope = EventEnvelope::decode(message.payload.as_ref()).unwrap();
    let updated = ConversationUpdatedEvent::decode(envelope.payload.as_slice()).unwrap();
    let conversation = updated.conversation.unwrap();
    assert_eq!(conversation.id, id);
    assert_eq!(
        conversation.message_count, 1,
        "the consumer gets the state, not a diff"
    );
    assert!(
        updated
            .changed_fields
            .contains(&"message_count".to_string())
    );
    assert_eq!(updated.message.unwrap().text, "hello from the other side");
    let before = everything(&mut client, &id).await;

    process.kill9();
    let mut client = process.start().await;
    assert_eq!(
        everything(&mut client, &id).await,
        before,
        "every acknowledged write survived"
    );
    // The relay resumes where it stopped: three public events so far, two more now, and
    // never one twice.
    client
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            author: Author::Agent as i32,
            kind: MessageKind::Text as i32,
            text: "after the crash".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stream_name = format!("{}_CONVERSATIONS", nats.prefix);
    let mut published = 0;
    for _ in 0..200 {
        published = nats
            .js
            .get_stream(&stream_name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        if published >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published_later = nats
        .js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!((published, published_later), (5, 5));
    // The stream keeps what the configuration says, no more.
    let kept = nats
        .js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(kept.max_age, Duration::from_secs(48 * 3600));
    assert_eq!(kept.max_bytes, 1_000_000);

    // The read model equals a rebuild from position 0.
    let live = everything(&mut client, &id).await;
    let rebuild = process.run_to_end(&["events", "rebuild", "--service", "conversations", "--yes"]);
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(String::from_utf8_lossy(&rebuild.stdout).contains("rebuilt conversations from"));
    assert_eq!(everything(&mut client, &id).await, live);

    // The log reads back as JSON lines.
    let tail = process.run_to_end(&["events", "tail", "--service", "conversations"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event_type"] == "conversation.message_added")
    );

    assert!(process.terminate().success(), "SIGTERM shuts down cleanly");
    drop_schema(&format!("{schema_prefix}conversations")).await;
    nats.drop().await;
}

#[tokio::test]
async fn dev_mode_needs_nothing_and_survives_kill_9() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut client = process.start().await;
    let id = start_and_talk(&mut client).await;
    let before = everything(&mut client, &id).await;
    let mut actions = actions_client(process.grpc_port).await;
    let action = create_action(&mut actions).await;
    process.kill9();
    let mut client = process.start().await;
    assert_eq!(everything(&mut client, &id).await, before);
    let mut actions = actions_client(process.grpc_port).await;
    let again = actions
        .get_action(GetActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(again, action, "the action and its sealed secret survived");
    assert!(again.http.unwrap().auth.unwrap().secret_set);
    assert!(Path::new(&dir).join("conversations.db").exists());
    assert!(Path::new(&dir).join("encryption.key").exists());
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serve_refuses_to_run_without_a_service_token() {
    let process = Process::new(&[], vec![]);
    let out = process.run_to_end(&["serve", "--services", "conversations"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SWITCHBOARD_SERVICE_TOKEN"));
}

#[tokio::test]
async fn bad_configuration_names_the_variable() {
    let process = Process::new(&[], vec![("SWITCHBOARD_NATS_REPLICAS".into(), "9".into())]);
    let out = process.run_to_end(&["migrate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SWITCHBOARD_NATS_REPLICAS"), "{stderr}");
}

/// A subscriber whose producer runs elsewhere (insights reading the flows' run starts, no
/// flows service here) creates the producer's stream itself and consumes at once: no
/// warning on start, no waiting for another deployment to come up first.
#[tokio::test]
async fn a_subscription_creates_the_stream_it_reads_and_starts_quietly() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = serve_env(&schema_prefix, &nats);
    env.push(("SWITCHBOARD_SERVICE_TOKEN".into(), "e2e-token".into()));
    let log = std::env::temp_dir().join(format!("{}.log", unique_name()));
    let mut process =
        Process::new(&["serve", "--services", "conversations,insights"], env).log_to(log.clone());
    process.start().await;
    let flows_stream = format!("{}_FLOWS", nats.prefix);
    let mut found = false;
    for _ in 0..100 {
        if nats.js.get_stream(&flows_stream).await.is_ok() {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the consumer did not create {flows_stream}");
    // Time for a retry loop to have spoken, were there one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(process.terminate().success());
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings: Vec<&str> = written
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("\"level\":\"WARN\""))
        .collect();
    assert!(
        warnings.is_empty(),
        "warnings on a clean start: {warnings:#?}"
    );
    let _ = std::fs::remove_file(log);
    for service in ["conversations", "insights"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
}
