//! `make bench`: Switchboard's hot paths measured against raw baselines run in the same
//! process on the same servers, reported as ratios (ours / baseline time; 1.00 = as fast
//! as the raw operation) and written to BENCHMARKS.md.
//!
//! Needs Postgres on 127.0.0.1:5432 and NATS on 127.0.0.1:4222, like the test suite.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use prost::Message as _;
use sqlx::postgres::PgPoolOptions;
use switchboard_conversations::{PublicEvents, stream_spec};
use switchboard_eventlog::testing::{TestNats, TestSchema};
use switchboard_eventlog::{
    EventLog, ExpectedVersion, Metadata, NewEvent, Relay, RelayConfig, StreamRef, ensure_stream,
};
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_proto::conversations::v1::{AddMessageRequest, StartConversationRequest};
use switchboard_proto::events::v1::{
    Author, Channel, ConversationUpdatedEvent, EventEnvelope, MessageKind,
};
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// Write the results as Markdown to this file.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Scale every workload (1.0 = the recorded size).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Requests per second of the latency benchmark.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Run only the benchmarks whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

struct Row {
    name: String,
    ours: String,
    baseline: String,
    ratio: f64,
    note: String,
}

fn per_sec(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn event(i: usize, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "bench.happened".into(),
        schema_version: 1,
        payload: payload.to_vec(),
        metadata: Metadata {
            workspace_id: "ws_bench".into(),
            correlation_id: format!("req-{i}"),
            occurred_at: 1,
            ..Default::default()
        },
    }
}

const RAW_TABLE: &str = "CREATE TABLE raw_events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE, stream_type TEXT NOT NULL, stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL, event_type TEXT NOT NULL, schema_version INT NOT NULL,
    payload BYTEA NOT NULL, metadata JSONB NOT NULL,
    UNIQUE (stream_type, stream_id, stream_version))";

async fn raw_insert(pool: &sqlx::PgPool, events: &[NewEvent], stream: &str) {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let versions: Vec<i64> = (1..=events.len() as i64).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let schemas: Vec<i32> = events.iter().map(|_| 1).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    let metadata: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata).unwrap())
        .collect();
    sqlx::query(
        "INSERT INTO raw_events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata)
         SELECT e, 'bench', $1, v, t, s, p, m::jsonb
         FROM UNNEST($2::uuid[], $3::int8[], $4::text[], $5::int4[], $6::bytea[], $7::text[]) AS u(e, v, t, s, p, m)",
    )
    .bind(stream)
    .bind(&ids)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&metadata)
    .execute(pool)
    .await
    .unwrap();
}

async fn appends(rows: &mut Vec<Row>, scale: f64) {
    let schema = TestSchema::new().await;
    let log = EventLog::open(&schema.store_config()).await.unwrap();
    log.migrate().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .after_connect({
            let schema = schema.name.clone();
            move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SET search_path TO \"{schema}\""
                    )))
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            }
        })
        .connect(&schema.url)
        .await
        .unwrap();
    sqlx::query(RAW_TABLE).execute(&pool).await.unwrap();
    let payload = vec![7u8; 200];

    // Batches of 100, one writer.
    let batches = (40.0 * scale).max(1.0) as usize;
    let prepared: Vec<Vec<NewEvent>> = (0..batches)
        .map(|b| (0..100).map(|i| event(b * 100 + i, &payload)).collect())
        .collect();
    let raw_prepared: Vec<Vec<NewEvent>> = (0..batches)
        .map(|b| (0..100).map(|i| event(b * 100 + i, &payload)).collect())
        .collect();
    let started = Instant::now();
    for (b, batch) in raw_prepared.iter().enumerate() {
        raw_insert(&pool, batch, &format!("ws_bench/raw-{b}")).await;
    }
    let raw = started.elapsed();
    let started = Instant::now();
    for (b, batch) in prepared.into_iter().enumerate() {
        log.append(
            &StreamRef::new("bench", format!("ws_bench/b-{b}")),
            ExpectedVersion::NoStream,
            batch,
        )
        .await
        .unwrap();
    }
    let ours = started.elapsed();
    rows.push(Row {
        name: format!(
            "append, batches of 100 ({} events, 1 writer)",
            batches * 100
        ),
        ours: per_sec(batches * 100, ours),
        baseline: per_sec(batches * 100, raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
        note: "baseline: raw sqlx UNNEST multi-row INSERT of the same rows".into(),
    });

    // Single appends from 32 concurrent writers.
    let writers = 32;
    let per_writer = (50.0 * scale).max(1.0) as usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                raw_insert(
                    &pool,
                    &[event(i, &payload)],
                    &format!("ws_bench/raw-w{w}-{i}"),
                )
                .await;
            }
        }));
    }
    futures::future::join_all(tasks).await;
    let raw = started.elapsed();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                log.append(
                    &StreamRef::new("bench", format!("ws_bench/w{w}-{i}")),
                    ExpectedVersion::NoStream,
                    vec![event(i, &payload)],
                )
                .await
                .unwrap();
            }
        }));
    }
    futures::future::join_all(tasks).await;
    let ours = started.elapsed();
    rows.push(Row {
        name: format!(
            "append, single events from {writers} concurrent writers ({} events)",
            writers * per_writer
        ),
        ours: per_sec(writers * per_writer, ours),
        baseline: per_sec(writers * per_writer, raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
        note: "baseline: raw single-row INSERT, same pool size (16)".into(),
    });
    pool.close().await;
    schema.drop().await;
}

async fn relay(rows: &mut Vec<Row>, scale: f64) {
    let schema = TestSchema::new().await;
    let nats = TestNats::new().await;
    let log = EventLog::open(&schema.store_config()).await.unwrap();
    log.migrate().await.unwrap();
    let n = (5000.0 * scale).max(100.0) as usize;
    let payload = vec![7u8; 200];
    for b in 0..n / 100 {
        let batch: Vec<NewEvent> = (0..100)
            .map(|i| {
                let mut e = event(b * 100 + i, &payload);
                e.event_type = "conversation.updated".into();
                e
            })
            .collect();
        log.append(
            &StreamRef::new("conversation", format!("ws_bench/conv_{b}")),
            ExpectedVersion::NoStream,
            batch,
        )
        .await
        .unwrap();
    }
    ensure_stream(&nats.js, &nats.prefix, &stream_spec(1))
        .await
        .unwrap();
    let relay = Relay::new(
        log.clone(),
        nats.js.clone(),
        Arc::new(PublicEvents),
        RelayConfig {
            service: "bench".into(),
            prefix: nats.prefix.clone(),
            batch_size: 256,
            poll_interval: Duration::from_millis(20),
        },
    );
    let started = Instant::now();
    let mut passed = 0;
    while passed < n / 100 * 100 {
        passed += relay.publish_pending().await.unwrap();
    }
    let ours = started.elapsed();
    assert_eq!(passed, n / 100 * 100);

    // Baseline: the same payloads published raw, all acks awaited, to a stream of its own.
    let baseline_prefix = format!("{}b", nats.prefix);
    ensure_stream(&nats.js, &baseline_prefix, &stream_spec(1))
        .await
        .unwrap();
    let events = log.read_all(Default::default(), n).await.unwrap();
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|e| e.to_envelope().encode_to_vec())
        .collect();
    let subject = format!("{baseline_prefix}.events.ws_bench.conversation.updated");
    let started = Instant::now();
    for chunk in bodies.chunks(256) {
        let mut acks = Vec::new();
        for body in chunk {
            acks.push(
                nats.js
                    .publish(subject.clone(), body.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    let raw = started.elapsed();
    rows.push(Row {
        name: format!("relay to JetStream ({} events)", passed),
        ours: per_sec(passed, ours),
        baseline: per_sec(passed, raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
        note: "baseline: raw async JetStream publishes of the same envelopes, acks awaited per 256"
            .into(),
    });
    let _ = nats
        .js
        .delete_stream(format!("{baseline_prefix}_CONVERSATIONS"))
        .await;
    nats.drop().await;
    schema.drop().await;
}

async fn serve_conversations(
    log: EventLog,
) -> (
    ConversationsClient<tonic::transport::Channel>,
    CancellationToken,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new().add_service(
        switchboard_conversations::GRPC_SERVICE,
        switchboard_conversations::api(log).into_server(),
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    (
        ConversationsClient::connect(format!("http://{addr}"))
            .await
            .unwrap(),
        shutdown,
    )
}

async fn rebuild(rows: &mut Vec<Row>, scale: f64) {
    let schema = TestSchema::new().await;
    let log = switchboard_conversations::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    let (client, shutdown) = serve_conversations(log.clone()).await;
    let conversations = (100.0 * scale).max(4.0) as usize;
    let mut tasks = Vec::new();
    for _ in 0..conversations {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let c = client
                .start_conversation(StartConversationRequest {
                    workspace_id: "ws_bench".into(),
                    channel: Channel::Api as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .conversation
                .unwrap();
            for i in 0..10 {
                client.add_message(text(&c.id, i)).await.unwrap();
            }
        }));
    }
    futures::future::join_all(tasks).await;
    let total = log.count_events().await.unwrap() as usize;
    let started = Instant::now();
    let folded = log
        .rebuild(
            &switchboard_conversations::ConversationsProjection,
            &mut |_| {},
        )
        .await
        .unwrap() as usize;
    let ours = started.elapsed();
    let pool = log.postgres_pool().unwrap();
    let started = Instant::now();
    let raw: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT global_position, payload FROM events ORDER BY global_position")
            .fetch_all(pool)
            .await
            .unwrap();
    let raw_time = started.elapsed();
    assert_eq!((folded, raw.len()), (total, total));
    rows.push(Row {
        name: format!("rebuild the conversations read model ({total} events)"),
        ours: per_sec(total, ours),
        baseline: per_sec(total, raw_time),
        ratio: ours.as_secs_f64() / raw_time.as_secs_f64(),
        note: "baseline: raw SELECT of the same rows; ours decodes and writes the read model"
            .into(),
    });
    shutdown.cancel();
    schema.drop().await;
}

fn text(conversation_id: &str, i: usize) -> AddMessageRequest {
    AddMessageRequest {
        workspace_id: "ws_bench".into(),
        conversation_id: conversation_id.into(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: format!("message {i} with a little text in it"),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `p50 1.23 ms, p99 4.56 ms` of sorted latencies.
fn p50_p99(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99))
    )
}

async fn latency(rows: &mut Vec<Row>, scale: f64, rate: f64) {
    let schema = TestSchema::new().await;
    let nats = TestNats::new().await;
    let log = switchboard_conversations::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    ensure_stream(&nats.js, &nats.prefix, &stream_spec(1))
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

/// A loopback HTTP target answering a small JSON document.
async fn stub_target() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/orders/{number}",
        axum::routing::get(
            |axum::extract::Path(number): axum::extract::Path<String>| async move {
                axum::Json(serde_json::json!({"data": {"status": "shipped", "number": number}}))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn actions(rows: &mut Vec<Row>, scale: f64) {
    use base64::Engine as _;
    use switchboard_proto::actions::v1::actions_client::ActionsClient;
    use switchboard_proto::actions::v1::*;

    let target = stub_target().await;
    let schema = TestSchema::new().await;
    let log = switchboard_actions::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    let outbound = switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new().add_service(
        switchboard_actions::GRPC_SERVICE,
        switchboard_actions::api(log.clone(), keyring, outbound, Default::default()).into_server(),
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    let mut client = ActionsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let action = client
        .create_action(CreateActionRequest {
            workspace_id: "ws_bench".into(),
            request_id: String::new(),
            definition: Some(ActionDefinition {
                name: "lookup_order".into(),
                description: "Looks up an order".into(),
                kind: ActionKind::Http as i32,
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: format!(
                        "http://127.0.0.1:{}/orders/{{{{ input.number }}}}",
                        target.port()
                    ),
                    auth: Some(HttpAuth {
                        kind: AuthKind::Bearer as i32,
                        secret: "bench-secret-token".into(),
                        ..Default::default()
                    }),
                    response_mapping: vec![ResponseMapping {
                        name: "status".into(),
                        path: "data.status".into(),
                        kind: "string".into(),
                        required: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let direct = reqwest::Client::new();
    let n = (1000.0 * scale).max(50.0) as usize;

    // Sequential latency: a direct call against ExecuteAction (render, guard, call, map,
    // and two appends recording the claim and the outcome).
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let bytes = direct
            .get(format!("http://127.0.0.1:{}/orders/n{i}", target.port()))
            .bearer_auth("bench-secret-token")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["data"]["status"], "shipped");
        raw.push(at.elapsed());
    }
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let result = client
            .execute_action(ExecuteActionRequest {
                workspace_id: "ws_bench".into(),
                action_id: action.id.clone(),
                variables_json: format!(r#"{{"input": {{"number": "n{i}"}}}}"#),
                idempotency_key: format!("seq-{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(result.outcome, Outcome::Success as i32);
        ours.push(at.elapsed());
    }
    raw.sort();
    ours.sort();
    rows.push(Row {
        name: format!("http action latency, {n} sequential executions"),
        ours: p50_p99(&ours),
        baseline: p50_p99(&raw),
        ratio: percentile(&ours, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        note: "baseline: a direct reqwest call to the same loopback target (ratio of p50s)".into(),
    });

    // Throughput with 64 in flight.
    let total = (2000.0 * scale).max(128.0) as usize;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let direct = direct.clone();
        let url = format!("http://127.0.0.1:{}/orders/p{i}", target.port());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            direct
                .get(url)
                .bearer_auth("bench-secret-token")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
        }));
    }
    futures::future::join_all(tasks).await;
    let raw_time = started.elapsed();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let mut client = client.clone();
        let action_id = action.id.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let result = client
                .execute_action(ExecuteActionRequest {
                    workspace_id: "ws_bench".into(),
                    action_id,
                    variables_json: format!(r#"{{"input": {{"number": "p{i}"}}}}"#),
                    idempotency_key: format!("par-{i}"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(result.outcome, Outcome::Success as i32);
        }));
    }
    futures::future::join_all(tasks).await;
    let ours_time = started.elapsed();
    rows.push(Row {
        name: format!("http action executions, 64 in flight ({total})"),
        ours: per_sec(total, ours_time),
        baseline: per_sec(total, raw_time),
        ratio: ours_time.as_secs_f64() / raw_time.as_secs_f64(),
        note: "baseline: direct reqwest calls, 64 in flight; ours records two events per execution"
            .into(),
    });
    shutdown.cancel();
    schema.drop().await;
}

/// Connexease operations through the connexease service (gRPC in, claim and outcome
/// recorded, the simulator called over HTTP) against the same HTTP request sent directly to
/// the simulator.
/// Webhook deliveries: the dispatcher sending pending messages (signing, attempting,
/// recording each attempt) to a loopback receiver, against plain POSTs of the same bodies
/// to the same receiver at the same concurrency.
async fn webhooks(rows: &mut Vec<Row>, scale: f64) {
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
async fn webhook_latency(rows: &mut Vec<Row>, scale: f64) {
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
    ensure_stream(&nats.js, &nats.prefix, &stream_spec(1))
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
        stream_spec(1).prefixed_name(&nats.prefix),
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

async fn connexease(rows: &mut Vec<Row>, scale: f64) {
    use switchboard_connexease::client::{HttpConnexease, RetryPolicy};
    use switchboard_connexease::sim::{SimConfig, serve};
    use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient;
    use switchboard_proto::connexease::v1::{ConnectRequest, Connection, RunOperationRequest};

    let shutdown = CancellationToken::new();
    let sim = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            rate_per_second: 1_000_000,
            ..SimConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let schema = TestSchema::new().await;
    let log = switchboard_connexease::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    let outbound = switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap();
    // Unpaced, to measure our overhead rather than the per-connection rate (at most 80/s
    // against the real Connexease).
    let api = HttpConnexease::new(outbound, RetryPolicy::default()).without_pacing();
    let service = switchboard_connexease::ConnexeaseService::new(log, keyring, Arc::new(api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(
        switchboard_connexease::GRPC_SERVICE,
        switchboard_connexease::ConnexeaseApi::new(service).into_server(),
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    let mut client = ConnexeaseClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .connect_workspace(ConnectRequest {
            workspace_id: "ws_bench".into(),
            request_id: String::new(),
            connection: Some(Connection {
                base_url: sim.base_url(),
                access_token: sim.config.token.clone(),
                webhook_secret: sim.config.webhook_secret.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let created: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{}/sim/conversations", sim.base_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let external = created["data"]["id"].as_str().unwrap().to_owned();
    let operation = |key: String, value: String| RunOperationRequest {
        workspace_id: "ws_bench".into(),
        idempotency_key: key,
        conversation_id: "conv_bench".into(),
        operation: "set_conversation_fields".into(),
        arguments: [
            ("fields.order_number".to_owned(), value),
            ("external_conversation_id".to_owned(), external.clone()),
        ]
        .into(),
    };
    let direct = |key: String, value: String| {
        http.patch(format!(
            "{}/v1/conversations/{external}/custom-fields",
            sim.base_url()
        ))
        .bearer_auth(&sim.config.token)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(serde_json::json!({"fields": {"order_number": value}}).to_string())
    };
    let n = (500.0 * scale).max(50.0) as usize;
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let response = direct(format!("raw-{i}"), i.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.bytes().await.unwrap();
        raw.push(at.elapsed());
    }
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let result = client
            .run_operation(operation(format!("seq-{i}"), i.to_string()))
            .await
            .unwrap()
            .into_inner();
        assert!(result.ok);
        ours.push(at.elapsed());
    }
    raw.sort();
    ours.sort();
    rows.push(Row {
        name: format!("connexease operation latency, {n} sequential"),
        ours: p50_p99(&ours),
        baseline: p50_p99(&raw),
        ratio: percentile(&ours, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        note: "baseline: the same PATCH sent directly to the simulator (ratio of p50s)".into(),
    });

    let total = (2000.0 * scale).max(128.0) as usize;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let request = direct(format!("rawp-{i}"), i.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            request.send().await.unwrap().bytes().await.unwrap();
        }));
    }
    futures::future::join_all(tasks).await;
    let raw_time = started.elapsed();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let mut client = client.clone();
        let request = operation(format!("par-{i}"), i.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            assert!(client.run_operation(request).await.unwrap().into_inner().ok);
        }));
    }
    futures::future::join_all(tasks).await;
    let ours_time = started.elapsed();
    rows.push(Row {
        name: format!("connexease operations, 32 in flight ({total})"),
        ours: per_sec(total, ours_time),
        baseline: per_sec(total, raw_time),
        ratio: ours_time.as_secs_f64() / raw_time.as_secs_f64(),
        note: "baseline: direct PATCHes to the simulator, 32 in flight; ours reads the \
               connection, checks the directory and records two events per operation; \
               unpaced here (production paces each connection at <= 80/s)"
            .into(),
    });
    shutdown.cancel();
    schema.drop().await;
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut rows = Vec::new();
    let run = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    if run("append") {
        appends(&mut rows, args.scale).await;
    }
    if run("relay") {
        relay(&mut rows, args.scale).await;
    }
    if run("rebuild") {
        rebuild(&mut rows, args.scale).await;
    }
    if run("latency") {
        latency(&mut rows, args.scale, args.rate).await;
    }
    if run("action") {
        actions(&mut rows, args.scale).await;
    }
    if run("webhooks") {
        webhooks(&mut rows, args.scale).await;
        webhook_latency(&mut rows, args.scale).await;
    }
    if run("flows") {
        flows(&mut rows, args.scale).await;
    }
    if run("connexease") {
        connexease(&mut rows, args.scale).await;
    }
    let mut out = String::new();
    writeln!(
        out,
        "| benchmark | Switchboard | baseline | ratio (time, ours / baseline) | baseline is |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for r in &rows {
        let ratio = if r.ratio.is_nan() {
            "-".into()
        } else {
            format!("{:.2}", r.ratio)
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.baseline, ratio, r.note
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nPeak RSS of the benchmark process: {:.0} MiB.",
        peak_rss_mib()
    )
    .unwrap();
    print!("{out}");
    if let Some(path) = args.write {
        let header = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split("<!-- results -->").next().map(str::to_owned))
            .unwrap_or_default();
        std::fs::write(&path, format!("{header}<!-- results -->\n{out}")).unwrap();
    }
}

/// Flows in production mode: `switchboard serve --services conversations,actions,flows`
/// (the release binary, built by `make bench`) on Postgres and NATS. Each conversation
/// runs a five-node flow (start, capture, one API call to a loopback stub, answer, end);
/// a customer message goes in and the time until the answer is appended is one step.
/// Baseline: plain GETs of the stub at the same concurrency.
async fn flows(rows: &mut Vec<Row>, scale: f64) {
    use switchboard_proto::actions::v1::actions_client::ActionsClient;
    use switchboard_proto::actions::v1::{
        ActionDefinition, ActionKind, CreateActionRequest, HttpSpec, ResponseMapping,
    };
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let binary = std::env::var("SWITCHBOARD_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/switchboard").to_owned()
    });
    if !std::path::Path::new(&binary).exists() {
        eprintln!("flows benchmark skipped: no {binary} (make bench builds it first)");
        return;
    }
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
