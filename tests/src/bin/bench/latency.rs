//! The conversations service's latency: from `AddMessage` to its `conversation.updated`
//! received from NATS, paced, against a raw JetStream publish and a raw INSERT and COMMIT
//! at the same rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message as _;
use switchboard_conversations::PublicEvents;
use switchboard_eventlog::testing::{TestNats, TestSchema};
use switchboard_eventlog::{Relay, RelayConfig, ensure_stream};
use switchboard_proto::conversations::v1::StartConversationRequest;
use switchboard_proto::events::v1::{Channel, ConversationUpdatedEvent, EventEnvelope};

use crate::common::{serve_conversations, text};
use crate::{Row, p50_p99, percentile};

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64, rate: f64) {
    let schema = TestSchema::new().await;
    let nats = TestNats::new().await;
    let log = switchboard_conversations::open_log(&schema.store_config())
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
    let requests = (5000.0 * scale).max(200.0) as usize;
    let mut updates = nats
        .client
        .subscribe(format!(
            "{}.events.ws_bench.conversation.updated",
            nats.prefix
        ))
        .await
        .unwrap();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while latencies.len() < requests {
                let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_secs(10), updates.next()).await
                else {
                    break;
                };
                let now = Instant::now();
                let envelope = EventEnvelope::decode(msg.payload.as_ref()).unwrap();
                let updated =
                    ConversationUpdatedEvent::decode(envelope.payload.as_slice()).unwrap();
                let key = updated.message.map(|m| m.text).unwrap_or_default();
                if let Some(at) = sent.lock().unwrap().remove(&key) {
                    if std::env::var("BENCH_DEBUG").is_ok() && now - at > Duration::from_millis(50)
                    {
                        eprintln!("slow {key}: {:?}", now - at);
                    }
                    latencies.push(now - at);
                }
            }
            latencies
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..requests {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let mut c = client.clone();
        let mut request = text(&ids[i % ids.len()], i);
        request.text = format!("latency probe {i}");
        sent.lock()
            .unwrap()
            .insert(request.text.clone(), Instant::now());
        tasks.push(tokio::spawn(async move {
            c.add_message(request).await.map(|_| ())
        }));
    }
    let failures = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| !matches!(r, Ok(Ok(()))))
        .count();
    let mut ours = receiver.await.unwrap();
    ours.sort();

    // Baseline: raw JetStream publishes of a small body, received by a core subscriber, at
    // the same rate: the transport alone.
    let subject = format!("{}.events.ws_bench.conversation.updated", nats.prefix);
    let mut raw_sub = nats.client.subscribe(subject.clone()).await.unwrap();
    let raw_sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let raw_receiver = {
        let raw_sent = raw_sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while latencies.len() < requests {
                let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_secs(10), raw_sub.next()).await
                else {
                    break;
                };
                let now = Instant::now();
                let key = String::from_utf8_lossy(&msg.payload).to_string();
                if let Some(at) = raw_sent.lock().unwrap().remove(&key) {
                    latencies.push(now - at);
                }
            }
            latencies
        })
    };
    let started = Instant::now();
    let mut acks = Vec::new();
    for i in 0..requests {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let key = format!("raw probe {i}");
        raw_sent.lock().unwrap().insert(key.clone(), Instant::now());
        acks.push(nats.js.publish(subject.clone(), key.into()).await.unwrap());
    }
    for ack in acks {
        let _ = ack.await;
    }
    let mut raw = raw_receiver.await.unwrap();
    raw.sort();

    // Second baseline: a raw single-row INSERT and its COMMIT at the same rate, which is
    // what the disk's fsync latency does to any durable write on this machine.
    let pool = log.postgres_pool().unwrap().clone();
    sqlx::query("CREATE TABLE raw_commits (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..requests {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            sqlx::query("INSERT INTO raw_commits (body) VALUES ($1)")
                .bind(format!("probe {i}"))
                .execute(&pool)
                .await
                .unwrap();
            at.elapsed()
        }));
    }
    let mut commits: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    commits.sort();
    shutdown.cancel();
    nats.drop().await;
    schema.drop().await;

    let p50 = percentile(&ours, 0.50);
    let p99 = percentile(&ours, 0.99);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    rows.push(Row {
        name: format!("latency: AddMessage to conversation.updated received from NATS, {requests} requests at {rate:.0}/s"),
        ours: format!("p50 {:.2} ms, p99 {:.2} ms ({} received, {failures} failed)", ms(p50), ms(p99), ours.len()),
        baseline: p50_p99(&raw),
        ratio: p50.as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        note: "baseline: raw JetStream publish to a core subscriber at the same rate (ratio of p50s)".into(),
    });
    rows.push(Row {
        name: format!("latency, second baseline: raw INSERT + COMMIT at {rate:.0}/s"),
        ours: format!(
            "p50 {:.2} ms, p99 {:.2} ms (Switchboard, as above)",
            ms(p50),
            ms(p99)
        ),
        baseline: p50_p99(&commits),
        ratio: p50.as_secs_f64() / percentile(&commits, 0.5).as_secs_f64(),
        note: "baseline: one durable Postgres write, no NATS (ratio of p50s)".into(),
    });
}
