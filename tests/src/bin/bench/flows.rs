//! Flows in production mode: conversations through a five-node flow in `switchboard serve`,
//! against plain GETs of the stub the flow calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message as _;
use switchboard_eventlog::testing::{TestNats, TestSchema};
use switchboard_proto::conversations::v1::StartConversationRequest;
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_proto::events::v1::{Channel, EventEnvelope};

use crate::common::text;
use crate::{Row, p50_p99, per_sec, percentile};

/// Flows in production mode: `switchboard serve --services conversations,actions,flows`
/// (the release binary, built by `make bench`) on Postgres and NATS. Each conversation
/// runs a five-node flow (start, capture, one API call to a loopback stub, answer, end);
/// a customer message goes in and the time until the answer is appended is one step.
/// Baseline: plain GETs of the stub at the same concurrency.
pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
    use switchboard_proto::actions::v1::actions_client::ActionsClient;
    use switchboard_proto::actions::v1::{
        ActionDefinition, ActionKind, CreateActionRequest, HttpSpec, ResponseMapping,
    };
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let binary = match switchboard_tests::find_switchboard_bin() {
        Ok(binary) => binary,
        Err(missing) => {
            eprintln!("flows benchmark skipped: {missing} (make bench builds it first)");
            return;
        }
    };
    switchboard_outbound::install_crypto_provider();
    let stub = axum::Router::new().route(
        "/orders/{n}",
        axum::routing::get(|| async { r#"{"status":"shipped"}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, stub).await.unwrap() });

    let nats = TestNats::new().await;
    let schema = TestSchema::new().await;
    let prefix = format!("{}_", schema.name);
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let grpc = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let http = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    use base64::Engine as _;
    let mut child = std::process::Command::new(&binary)
        .args([
            "serve",
            "--services",
            "conversations,actions,flows",
            "--allow-unauthenticated",
        ])
        .env("SWITCHBOARD_DATABASE_URL", &schema.url)
        .env("SWITCHBOARD_DATABASE_SCHEMA_PREFIX", &prefix)
        .env(
            "SWITCHBOARD_NATS_URL",
            switchboard_eventlog::testing::nats_url(),
        )
        .env("SWITCHBOARD_NATS_PREFIX", &nats.prefix)
        .env("SWITCHBOARD_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("SWITCHBOARD_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("SWITCHBOARD_RELAY_POLL_MS", "20")
        .env("SWITCHBOARD_LOG_FILTER", "error")
        .env("SWITCHBOARD_OUTBOUND_ALLOW", "127.0.0.0/8")
        .env(
            "SWITCHBOARD_ENCRYPTION_KEY",
            base64::engine::general_purpose::STANDARD.encode([4u8; 32]),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{grpc}");
    let channel = loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut actions = ActionsClient::new(channel.clone());
    let mut flows = FlowsClient::new(channel.clone());
    let conversations = ConversationsClient::new(channel);
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: "ws_bench".into(),
            definition: Some(ActionDefinition {
                name: "order_status".into(),
                description: "Looks up an order".into(),
                kind: ActionKind::Http as i32,
                input_schema: r#"{"type":"object","properties":{"order":{"type":"string"}}}"#
                    .into(),
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: format!("http://{stub_addr}/orders/{{{{ input.order }}}}"),
                    response_mapping: vec![ResponseMapping {
                        name: "status".into(),
                        path: "$.status".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let node = |id: &str, kind: node::Kind| Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    };
    let edge = |from: &str, to: &str, port: &str| Edge {
        from: from.into(),
        to: to.into(),
        port: port.into(),
    };
    let graph = Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    ..Default::default()
                }),
            ),
            node(
                "lookup",
                node::Kind::ApiCall(ApiCall {
                    action_id: action.id.clone(),
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            node(
                "answer",
                node::Kind::SendMessage(SendMessage {
                    text: "Order {{ session.order }}: {{ nodes.lookup.status }}".into(),
                    ..Default::default()
                }),
            ),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            edge("start", "capture", ""),
            edge("capture", "lookup", ""),
            edge("lookup", "answer", "success"),
            edge("lookup", "end", "failure"),
            edge("answer", "end", ""),
        ],
        ..Default::default()
    };
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: "ws_bench".into(),
            name: "orders".into(),
            kind: FlowKind::ConversationFlow as i32,
            draft: Some(graph),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    flows
        .publish(PublishRequest {
            workspace_id: "ws_bench".into(),
            flow_id: flow.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: "ws_bench".into(),
                name: "Bench".into(),
                flow_id: flow.id,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    // The answers, as the conversations service publishes them.
    let mut created = nats
        .client
        .subscribe(format!("{}.events.ws_bench.message.created", nats.prefix))
        .await
        .unwrap();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let n = (400.0 * scale).max(20.0) as usize;
    let paced = (100.0 * scale).max(10.0) as usize;
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let answers = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = 0;
            while latencies < n + paced {
                let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_secs(30), created.next()).await
                else {
                    break;
                };
                let now = Instant::now();
                let envelope = EventEnvelope::decode(msg.payload.as_ref()).unwrap();
                let event = switchboard_proto::events::v1::MessageCreatedEvent::decode(
                    envelope.payload.as_slice(),
                )
                .unwrap();
                let text = event.message.map(|m| m.text).unwrap_or_default();
                if let Some(order) = text
                    .strip_prefix("Order ")
                    .and_then(|t| t.strip_suffix(": shipped"))
                    && let Some(at) = sent.lock().unwrap().remove(order)
                {
                    latencies += 1;
                    let _ = answered_tx.send(now - at);
                }
            }
        })
    };
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let mut c = conversations.clone();
            let sent = sent.clone();
            async move {
                let id = c
                    .start_conversation(StartConversationRequest {
                        workspace_id: "ws_bench".into(),
                        channel: Channel::Api as i32,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .conversation
                    .unwrap()
                    .id;
                let mut message = text(&id, i);
                message.text = format!("{}", 100_000 + i);
                sent.lock()
                    .unwrap()
                    .insert(message.text.clone(), Instant::now());
                c.add_message(message).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut burst = Vec::with_capacity(n);
    while burst.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), answered.recv()).await {
            Ok(Some(latency)) => burst.push(latency),
            _ => break,
        }
    }
    let ours = started.elapsed();
    // Then one conversation every 100 ms: the latency of a step when nothing queues.
    let started = Instant::now();
    for i in 0..paced {
        tokio::time::sleep_until((started + Duration::from_millis(100 * i as u64)).into()).await;
        let mut c = conversations.clone();
        let id = c
            .start_conversation(StartConversationRequest {
                workspace_id: "ws_bench".into(),
                channel: Channel::Api as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .id;
        // Let the run reach its capture before the message arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut message = text(&id, i);
        message.text = format!("{}", 900_000 + i);
        sent.lock()
            .unwrap()
            .insert(message.text.clone(), Instant::now());
        c.add_message(message).await.unwrap();
    }
    let mut steps = Vec::with_capacity(paced);
    while steps.len() < paced {
        match tokio::time::timeout(Duration::from_secs(30), answered.recv()).await {
            Ok(Some(latency)) => steps.push(latency),
            _ => break,
        }
    }
    answers.abort();
    steps.sort();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    // Baseline: the stub alone, same concurrency; and one call at a time for latency.
    let client = reqwest::Client::new();
    let stub_url = format!("http://{stub_addr}/orders/1");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let request = client.get(&stub_url);
            async move { request.send().await.unwrap().bytes().await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let raw = started.elapsed();
    let mut raw_latency = Vec::new();
    for _ in 0..n.min(200) {
        let at = Instant::now();
        client
            .get(&stub_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        raw_latency.push(at.elapsed());
    }
    raw_latency.sort();
    rows.push(Row {
        name: format!(
            "flows: conversations through a five-node flow with one API call, 32 at once ({n})"
        ),
        ours: format!("{} ({} answered)", per_sec(burst.len(), ours), burst.len()),
        baseline: per_sec(n, raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
        note: "baseline: plain GETs of the same loopback stub, 32 at once; ours starts a \
               conversation, runs its flow, calls the stub through the actions service and \
               appends the answer, every hop over JetStream"
            .into(),
    });
    if !steps.is_empty() {
        rows.push(Row {
            name: format!(
                "flows: a step, customer message to the answer appended (API call included), \
                 {paced} conversations at 10/s"
            ),
            ours: p50_p99(&steps),
            baseline: p50_p99(&raw_latency),
            ratio: percentile(&steps, 0.5).as_secs_f64()
                / percentile(&raw_latency, 0.5).as_secs_f64(),
            note: "baseline: one plain GET of the stub (ratio of p50s)".into(),
        });
    }
    for service in ["conversations", "actions", "flows"] {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url)
            .await
            .unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{prefix}{service}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
    schema.drop().await;
    nats.drop().await;
}
