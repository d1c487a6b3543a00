//! Webhooks: deliveries by the dispatcher against plain POSTs of the same bodies, and the
//! latency from `AddMessage` to its webhook at a receiver through the production path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message as _;
use switchboard_conversations::PublicEvents;
use switchboard_eventlog::testing::{TestNats, TestSchema};
use switchboard_eventlog::{Metadata, Relay, RelayConfig, StreamRef, ensure_stream};
use switchboard_proto::conversations::v1::StartConversationRequest;
use switchboard_proto::events::v1::{Channel, ConversationUpdatedEvent};
use uuid::Uuid;

use crate::common::{serve_conversations, text};
use crate::{Row, p50_p99, per_sec, percentile};

/// Webhook deliveries: the dispatcher sending pending messages (signing, attempting,
/// recording each attempt) to a loopback receiver, against plain POSTs of the same bodies
/// to the same receiver at the same concurrency.
pub(crate) async fn deliveries(rows: &mut Vec<Row>, scale: f64) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use switchboard_proto::events::v1::Conversation;
    use switchboard_proto::webhooks::v1::CreateEndpointRequest;
    use switchboard_webhooks::{DeliveryConfig, Dispatcher, Settings, WebhooksService};

    let received = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |_body: axum::body::Bytes| {
                received.fetch_add(1, Ordering::Relaxed);
                async { "ok" }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let schema = TestSchema::new().await;
    let log = switchboard_webhooks::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    let settings = Settings {
        urls: switchboard_webhooks::domain::UrlRules {
            allow_http_hosts: vec!["127.0.0.1".into()],
            policy: policy.clone(),
        },
        ..Settings::default()
    };
    let service = WebhooksService::new(log, keyring, settings);
    service
        .create_endpoint(CreateEndpointRequest {
            workspace_id: "ws_bench".into(),
            url: format!("http://{addr}/hook"),
            ..Default::default()
        })
        .await
        .unwrap();
    let n = (2000.0 * scale).max(10.0) as usize;
    let mut bodies = Vec::with_capacity(n);
    let fan_out =
        switchboard_webhooks::consumers::FanOut::new(service.clone(), Arc::new(PublicEvents));
    for i in 0..n {
        let updated = ConversationUpdatedEvent {
            conversation: Some(Conversation {
                id: format!("conv_{}", i % 100),
                message_count: i as u64,
                ..Default::default()
            }),
            changed_fields: vec!["message_count".into()],
            ..Default::default()
        };
        let event = switchboard_eventlog::RecordedEvent {
            event_id: Uuid::now_v7(),
            stream: StreamRef::new("conversation", format!("ws_bench/conv_{}", i % 100)),
            stream_version: i as u64 + 1,
            global_position: i as i64 + 1,
            transaction_id: 0,
            event_type: "conversation.updated".into(),
            schema_version: 1,
            payload: updated.encode_to_vec(),
            metadata: Metadata {
                workspace_id: "ws_bench".into(),
                occurred_at: 1,
                ..Default::default()
            },
            recorded_at: 1,
        };
        service
            .log()
            .process_once("webhooks-fanout-conversations", &event, &fan_out)
            .await
            .unwrap()
            .unwrap();
    }
    let messages = service
        .store()
        .messages(
            "ws_bench",
            &switchboard_webhooks::store::MessageFilter::default(),
            None,
            500,
        )
        .await
        .unwrap();
    bodies.extend(messages.iter().map(|m| m.payload_json.clone()));
    let client = switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap();
    let dispatcher = Arc::new(Dispatcher::new(
        service.clone(),
        client.clone(),
        DeliveryConfig::default(),
    ));
    let started = Instant::now();
    let delivered = dispatcher.deliver_due().await.unwrap();
    let ours = started.elapsed();
    assert_eq!(delivered, n);
    assert!(received.load(Ordering::Relaxed) >= n);

    let url = format!("http://{addr}/hook");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let request = client
                .inner()
                .post(&url)
                .header("content-type", "application/json")
                .body(bodies[i % bodies.len()].clone());
            async move {
                let response = request.send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let raw = started.elapsed();
    rows.push(Row {
        name: format!("webhook deliveries, 64 in flight ({n})"),
        ours: per_sec(n, ours),
        baseline: per_sec(n, raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
        note: "baseline: plain POSTs of the same bodies to the same loopback receiver, 64 in \
               flight; ours signs, attempts and records each attempt as an event"
            .into(),
    });
    schema.drop().await;
}

/// From `AddMessage` to its `conversation.updated` webhook at a loopback receiver, through
/// the production path: the conversations log, its relay to JetStream, the webhooks
/// fan-out consumer, the dispatcher and HTTP. Paced at 200 requests/s over 100
/// conversations; the baseline is a plain POST to the same receiver at the same rate.
pub(crate) async fn latency(rows: &mut Vec<Row>, scale: f64) {
    use switchboard_eventlog::{JetStreamSubscription, Subscription, SubscriptionConfig};
    use switchboard_proto::webhooks::v1::CreateEndpointRequest;
    use switchboard_webhooks::consumers::FanOut;
    use switchboard_webhooks::{DeliveryConfig, Dispatcher, Settings, WebhooksService};

    let rate = 200.0;
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let sent = sent.clone();
            move |body: axum::body::Bytes| {
                let now = Instant::now();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let key = body["data"]["message"]["text"]
                    .as_str()
                    .or(body["probe"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(at) = sent.lock().unwrap().remove(&key) {
                    let _ = arrived_tx.send(now - at);
                }
                async { "ok" }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let nats = TestNats::new().await;
    let conversations_schema = TestSchema::new().await;
    let log = switchboard_conversations::open_log(&conversations_schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    ensure_stream(
        &nats.js,
        &nats.prefix,
        &switchboard_eventlog::StreamSpec::of(&switchboard_contract::streams::CONVERSATIONS, 1),
    )
    .await
    .unwrap();
    let (client, shutdown) = serve_conversations(log.clone()).await;
    let relay = Relay::new(
        log.clone(),
        nats.js.clone(),
        Arc::new(PublicEvents),
        RelayConfig {
            service: "conversations".into(),
            prefix: nats.prefix.clone(),
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
        },
    );
    tokio::spawn(relay.run(shutdown.clone()));

    let webhooks_schema = TestSchema::new().await;
    let webhooks_log = switchboard_webhooks::open_log(&webhooks_schema.store_config())
        .await
        .unwrap();
    webhooks_log.migrate().await.unwrap();
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    let service = WebhooksService::new(
        webhooks_log.clone(),
        keyring,
        Settings {
            urls: switchboard_webhooks::domain::UrlRules {
                allow_http_hosts: vec!["127.0.0.1".into()],
                policy: policy.clone(),
            },
            ..Settings::default()
        },
    );
    service
        .create_endpoint(CreateEndpointRequest {
            workspace_id: "ws_bench".into(),
            url: format!("http://{addr}/hook"),
            event_types: vec!["conversation.updated".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let outbound = switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap();
    let dispatcher = Arc::new(Dispatcher::new(
        service.clone(),
        outbound.clone(),
        DeliveryConfig::default(),
    ));
    tokio::spawn(dispatcher.run(shutdown.clone()));
    let fan_out = Box::new(JetStreamSubscription::new(
        nats.js.clone(),
        switchboard_eventlog::StreamSpec::of(&switchboard_contract::streams::CONVERSATIONS, 1)
            .prefixed_name(&nats.prefix),
        &nats.prefix,
        "events.>",
        SubscriptionConfig::new("webhooks-fanout-conversations", webhooks_log),
    ));
    {
        let shutdown = shutdown.clone();
        let handler = Arc::new(FanOut::new(service.clone(), Arc::new(PublicEvents)));
        tokio::spawn(async move { fan_out.run(handler, shutdown).await.unwrap() });
    }

    let mut ids = Vec::new();
    for _ in 0..100 {
        let mut c = client.clone();
        ids.push(
            c.start_conversation(StartConversationRequest {
                workspace_id: "ws_bench".into(),
                channel: Channel::Api as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .id,
        );
    }
    let requests = (2000.0 * scale).max(100.0) as usize;
    let started = Instant::now();
    for i in 0..requests {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let mut c = client.clone();
        let mut request = text(&ids[i % ids.len()], i);
        request.text = format!("webhook probe {i}");
        sent.lock()
            .unwrap()
            .insert(request.text.clone(), Instant::now());
        tokio::spawn(async move { c.add_message(request).await.map(|_| ()) });
    }
    let mut ours = Vec::with_capacity(requests);
    while ours.len() < requests {
        match tokio::time::timeout(Duration::from_secs(20), arrived.recv()).await {
            Ok(Some(latency)) => ours.push(latency),
            _ => break,
        }
    }
    ours.sort();
    let received = ours.len();

    let url = format!("http://{addr}/hook");
    let started = Instant::now();
    for i in 0..requests {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let key = format!("raw probe {i}");
        sent.lock().unwrap().insert(key.clone(), Instant::now());
        let request = outbound
            .inner()
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "probe": key }).to_string());
        tokio::spawn(async move {
            let _ = request.send().await;
        });
    }
    let mut raw = Vec::with_capacity(requests);
    while raw.len() < requests {
        match tokio::time::timeout(Duration::from_secs(20), arrived.recv()).await {
            Ok(Some(latency)) => raw.push(latency),
            _ => break,
        }
    }
    raw.sort();
    shutdown.cancel();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    rows.push(Row {
        name: format!(
            "latency: AddMessage to its conversation.updated webhook received, {requests} requests at {rate}/s"
        ),
        ours: format!(
            "p50 {:.2} ms, p99 {:.2} ms ({received} received)",
            ms(percentile(&ours, 0.5)),
            ms(percentile(&ours, 0.99))
        ),
        baseline: p50_p99(&raw),
        ratio: percentile(&ours, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        note: "baseline: a plain POST to the same receiver at the same rate (ratio of p50s); \
               ours goes through the log, the relay, JetStream, the fan-out, the dispatcher"
            .into(),
    });
    conversations_schema.drop().await;
    webhooks_schema.drop().await;
    nats.drop().await;
}
