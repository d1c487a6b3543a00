//! The relay and subscriptions against the real NATS server (a prefix of their own per
//! test) and real Postgres; the log-tail subscription on SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;

use prost::Message;
use switchboard_eventlog::testing::{TestNats, TestSchema, unique_name};
use switchboard_eventlog::{
    EventLog, ExpectedVersion, HandleError, Handler, JetStreamSubscription, LogTailSubscription,
    Metadata, NewEvent, RecordedEvent, Relay, RelayConfig, Router, StoreConfig, StreamRef,
    StreamSpec, Subscription, SubscriptionConfig, Tx, ensure_stream, on_conn,
};
use switchboard_proto::events::v1::EventEnvelope;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const EFFECTS_DDL: &str = "CREATE TABLE IF NOT EXISTS effects (event_id TEXT NOT NULL);";

/// Routes every event to `events.<workspace>.<type>`.
struct AllEvents;

impl Router for AllEvents {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        Some(format!(
            "events.{}.{}",
            event.metadata.workspace_id, event.event_type
        ))
    }
}

fn spec() -> StreamSpec {
    StreamSpec {
        name: "THINGS".into(),
        subjects: vec!["events.>".into()],
        replicas: 1,
        retention: Default::default(),
    }
}

fn event(event_type: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: b"payload".to_vec(),
        metadata: Metadata {
            workspace_id: "ws_test".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            occurred_at: 1,
            ..Default::default()
        },
    }
}

async fn open(config: &StoreConfig) -> EventLog {
    let log = EventLog::open(config)
        .await
        .unwrap()
        .with_read_models(EFFECTS_DDL, EFFECTS_DDL);
    log.migrate().await.unwrap();
    log
}

async fn append_n(log: &EventLog, n: usize, event_type: &str) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    for i in 0..n {
        let s = StreamRef::new("thing", format!("ws_test/{}-{i}", unique_name()));
        out.extend(
            log.append(&s, ExpectedVersion::NoStream, vec![event(event_type)])
                .await
                .unwrap()
                .events,
        );
    }
    out
}

fn relay(log: &EventLog, nats: &TestNats) -> Relay {
    Relay::new(
        log.clone(),
        nats.js.clone(),
        Arc::new(AllEvents),
        RelayConfig {
            service: "things".into(),
            prefix: nats.prefix.clone(),
            batch_size: 4,
            poll_interval: Duration::from_millis(20),
        },
    )
}

/// Runs the relay until it has passed `n` events. A gap-safe read holds events back while
/// any older transaction on the server is open (other tests run beside this one), so one
/// pass may see fewer.
async fn publish_all(relay: &Relay, n: usize) {
    let mut passed = 0;
    for _ in 0..400 {
        passed += relay.publish_pending(None).await.unwrap();
        if passed >= n {
            assert_eq!(passed, n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the relay passed {passed} of {n} events");
}

async fn stream_messages(nats: &TestNats) -> u64 {
    let mut stream = nats
        .js
        .get_stream(spec().prefixed_name(&nats.prefix))
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn relay_publishes_with_headers_and_restart_mid_batch_publishes_nothing_twice() {
    let schema = TestSchema::new().await;
    let nats = TestNats::new().await;
    let log = open(&schema.store_config()).await;
    ensure_stream(&nats.js, &nats.prefix, &spec())
        .await
        .unwrap();
    let events = append_n(&log, 10, "thing.made").await;

    // A relay that died after publishing four events but before its checkpoint.
    for e in &events[..4] {
        nats.js
            .publish_with_headers(
                format!("{}.events.ws_test.thing.made", nats.prefix),
                switchboard_eventlog_headers(e),
                e.to_envelope().encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let relay = relay(&log, &nats);
    publish_all(&relay, 10).await;
    assert_eq!(
        stream_messages(&nats).await,
        10,
        "the four republished were deduplicated"
    );
    // Nothing new: a second pass publishes nothing.
    assert_eq!(relay.publish_pending(None).await.unwrap(), 0);

    // Headers and body as the NATS contract says.
    let stream = nats
        .js
        .get_stream(spec().prefixed_name(&nats.prefix))
        .await
        .unwrap();
    let raw = stream.get_raw_message(10).await.unwrap();
    let headers = raw.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        events[9].event_id.to_string()
    );
    assert_eq!(headers.get("sb-event-type").unwrap().as_str(), "thing.made");
    assert_eq!(headers.get("sb-workspace").unwrap().as_str(), "ws_test");
    assert_eq!(
        headers.get("content-type").unwrap().as_str(),
        "application/protobuf"
    );
    assert!(headers.get("traceparent").is_some());
    let envelope = EventEnvelope::decode(raw.payload.as_ref()).unwrap();
    assert_eq!(
        RecordedEvent::from_envelope(envelope).unwrap().event_id,
        events[9].event_id
    );

    nats.drop().await;
    schema.drop().await;
}

fn switchboard_eventlog_headers(e: &RecordedEvent) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", e.event_id.to_string().as_str());
    h
}

#[tokio::test]
async fn relay_dead_letters_what_nats_can_never_take_and_goes_on() {
    let schema = TestSchema::new().await;
    let nats = TestNats::new().await;
    let log = open(&schema.store_config()).await;
    ensure_stream(&nats.js, &nats.prefix, &spec())
        .await
        .unwrap();
    let mut huge = event("thing.made");
    huge.payload = vec![0u8; 2 * 1024 * 1024]; // over NATS's 1 MB max_payload
    let s = StreamRef::new("thing", "ws_test/huge");
    log.append(&s, ExpectedVersion::NoStream, vec![huge])
        .await
        .unwrap();
    append_n(&log, 2, "thing.made").await;
    publish_all(&relay(&log, &nats), 3).await;
    assert_eq!(
        stream_messages(&nats).await,
        2,
        "the events behind it went out"
    );
    let letters = log.dead_letters("relay:things").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("max payload"),
        "{}",
        letters[0].reason
    );
    nats.drop().await;
    schema.drop().await;
}

/// Records each handled event in `effects`; rejects `thing.poison`; asks to retry
/// `thing.flaky` forever.
struct Recorder {
    calls: AtomicU32,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match event.event_type.as_str() {
            "thing.poison" => return Err(HandleError::Reject("poison is never valid".into())),
            "thing.flaky" => return Err(HandleError::Retry("dependency down".into())),
            _ => {}
        }
        on_conn!(tx, conn => sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.event_id.to_string())
            .execute(conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| HandleError::Retry(e.to_string()))?;
        Ok(())
    }
}

async fn effects(log: &EventLog) -> i64 {
    let sql = "SELECT count(*) FROM effects";
    match (log.postgres_pool(), log.sqlite_pool()) {
        (Some(pool), _) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        (_, Some(pool)) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        _ => unreachable!(),
    }
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 15 s");
}

fn quick(consumer: &str, inbox: EventLog) -> SubscriptionConfig {
    let mut config = SubscriptionConfig::new(consumer, inbox);
    config.max_attempts = 3;
    config.backoff = vec![Duration::from_millis(20)];
    config
}

#[tokio::test]
async fn jetstream_subscription_dedupes_redeliveries_and_dead_letters_poison() {
    let producer = TestSchema::new().await;
    let consumer = TestSchema::new().await;
    let nats = TestNats::new().await;
    let source = open(&producer.store_config()).await;
    let inbox = open(&consumer.store_config()).await;
    ensure_stream(&nats.js, &nats.prefix, &spec())
        .await
        .unwrap();

    let good = append_n(&source, 3, "thing.made").await;
    append_n(&source, 1, "thing.poison").await;
    append_n(&source, 1, "thing.flaky").await;
    publish_all(&relay(&source, &nats), 5).await;
    // The same event again under another message id: JetStream cannot dedupe it, the
    // processed-event record must.
    nats.js
        .publish(
            format!("{}.events.ws_test.thing.made", nats.prefix),
            good[0].to_envelope().encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // And bytes that are no envelope at all.
    nats.js
        .publish(
            format!("{}.events.ws_test.garbage", nats.prefix),
            "not protobuf \u{1}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let handler = Arc::new(Recorder {
        calls: AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let subscription = Box::new(JetStreamSubscription::new(
        nats.js.clone(),
        spec().prefixed_name(&nats.prefix),
        &nats.prefix,
        "events.ws_test.>",
        quick("things-consumer", inbox.clone()),
    ));
    let running = tokio::spawn(subscription.run(handler.clone(), shutdown.clone()));

    wait_for(async || inbox.dead_letters("things-consumer").await.unwrap().len() == 3).await;
    assert_eq!(effects(&inbox).await, 3, "each good event applied once");
    let letters = inbox.dead_letters("things-consumer").await.unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("poison is never valid")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("gave up after 3 attempts")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("undecodable")),
        "{reasons:?}"
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
    nats.drop().await;
    producer.drop().await;
    consumer.drop().await;
}

#[tokio::test]
async fn log_tail_subscription_in_embedded_mode() {
    let dir = std::env::temp_dir().join(unique_name());
    let source = open(&StoreConfig::Sqlite {
        path: dir.join("producer.db"),
    })
    .await;
    let inbox = open(&StoreConfig::Sqlite {
        path: dir.join("consumer.db"),
    })
    .await;
    append_n(&source, 2, "thing.made").await;
    append_n(&source, 1, "thing.poison").await;
    append_n(&source, 1, "thing.ignored").await;

    let handler = Arc::new(Recorder {
        calls: AtomicU32::new(0),
    });
    let run = |shutdown: CancellationToken| {
        let subscription = Box::new(LogTailSubscription::new(
            source.clone(),
            Arc::new(|e: &RecordedEvent| e.event_type != "thing.ignored"),
            quick("tail", inbox.clone()),
        ));
        tokio::spawn(subscription.run(handler.clone(), shutdown))
    };
    let shutdown = CancellationToken::new();
    let running = run(shutdown.clone());
    wait_for(async || inbox.dead_letters("tail").await.unwrap().len() == 1).await;
    append_n(&source, 1, "thing.made").await;
    wait_for(async || effects(&inbox).await == 3).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // Restarted, it resumes from its checkpoint: nothing is handled again.
    let calls = handler.calls.load(Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let running = run(shutdown.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(handler.calls.load(Ordering::SeqCst), calls);
    assert_eq!(effects(&inbox).await, 3);
    let _ = std::fs::remove_dir_all(dir);
}

/// NATS down: appends still succeed, and the relay catches up when it returns, publishing
/// each event once. Runs its own nats-server, since it stops it.
#[tokio::test]
async fn relay_catches_up_after_nats_outage() {
    let schema = TestSchema::new().await;
    let log = open(&schema.store_config()).await;
    let port = free_port();
    let store_dir = std::env::temp_dir().join(unique_name());
    let mut server = start_nats(port, &store_dir);
    let client = connect_retrying(port).await;
    let js = jetstream::new(client);
    let prefix = unique_name();
    ensure_stream(&js, &prefix, &spec()).await.unwrap();

    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        log.clone(),
        js.clone(),
        Arc::new(AllEvents),
        RelayConfig {
            service: "things".into(),
            prefix: prefix.clone(),
            batch_size: 50,
            poll_interval: Duration::from_millis(20),
        },
    );
    let running = tokio::spawn(relay.run(shutdown.clone()));
    append_n(&log, 5, "thing.made").await;
    let name = spec().prefixed_name(&prefix);
    wait_for(async || count(&js, &name).await == Some(5)).await;

    server.kill().unwrap();
    server.wait().unwrap();
    append_n(&log, 7, "thing.made").await; // the log is the truth: writes succeed
    server = start_nats(port, &store_dir);
    wait_for(async || count(&js, &name).await == Some(12)).await;

    shutdown.cancel();
    running.await.unwrap();
    server.kill().unwrap();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(store_dir);
    schema.drop().await;
}

async fn count(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut stream = js.get_stream(name).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nats(port: u16, store: &std::path::Path) -> std::process::Child {
    switchboard_eventlog::testing::spawn_nats_server(port, store)
}

async fn connect_retrying(port: u16) -> async_nats::Client {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server on port {port} did not start");
}

/// Records the order each stream's events are handled in, and how many are handled at
/// once at most; each event takes a few milliseconds.
#[derive(Default)]
struct LaneWatcher {
    seen: std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>,
    running: AtomicU32,
    most_at_once: AtomicU32,
    /// Asks to retry each stream's first event once (its dependency is down).
    first_fails_once: bool,
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl Handler for LaneWatcher {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        if self.first_fails_once
            && event.stream_version == 1
            && self
                .failed
                .lock()
                .unwrap()
                .insert(event.stream.stream_id.clone())
        {
            return Err(HandleError::Retry("the dependency is down".into()));
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.seen
            .lock()
            .unwrap()
            .entry(event.stream.stream_id.clone())
            .or_default()
            .push(event.stream_version);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Appends `per_stream` events to each of `streams` streams, interleaved.
async fn append_interleaved(log: &EventLog, streams: usize, per_stream: u64) {
    let ids: Vec<String> = (0..streams)
        .map(|i| format!("ws_test/{}-{i}", unique_name()))
        .collect();
    for version in 0..per_stream {
        for id in &ids {
            let expected = match version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            log.append(
                &StreamRef::new("thing", id.clone()),
                expected,
                vec![event("thing.made")],
            )
            .await
            .unwrap();
        }
    }
}

fn assert_in_order_and_overlapping(watcher: &LaneWatcher, streams: usize, per_stream: u64) {
    let seen = watcher.seen.lock().unwrap();
    assert_eq!(seen.len(), streams);
    for (stream, versions) in seen.iter() {
        let expected: Vec<u64> = (1..=per_stream).collect();
        assert_eq!(*versions, expected, "{stream} handled out of order");
    }
    assert!(
        watcher.most_at_once.load(Ordering::SeqCst) > 1,
        "lanes handle events of different streams at once"
    );
}

#[tokio::test]
async fn lanes_handle_streams_at_once_and_each_stream_in_order() {
    const STREAMS: usize = 12;
    const PER_STREAM: u64 = 6;
    let producer = TestSchema::new().await;
    let consumer = TestSchema::new().await;
    let nats = TestNats::new().await;
    let source = open(&producer.store_config()).await;
    let inbox = open(&consumer.store_config()).await;
    ensure_stream(&nats.js, &nats.prefix, &spec())
        .await
        .unwrap();
    append_interleaved(&source, STREAMS, PER_STREAM).await;
    let total = STREAMS * PER_STREAM as usize;

    // Over JetStream, each stream's first event retried once: the stream's next events
    // wait behind it instead of overtaking it.
    publish_all(&relay(&source, &nats), total).await;
    let watcher = Arc::new(LaneWatcher {
        first_fails_once: true,
        ..Default::default()
    });
    let shutdown = CancellationToken::new();
    let subscription = Box::new(JetStreamSubscription::new(
        nats.js.clone(),
        spec().prefixed_name(&nats.prefix),
        &nats.prefix,
        "events.ws_test.>",
        quick("lanes-js", inbox.clone()).with_lanes(4),
    ));
    let running = tokio::spawn(subscription.run(watcher.clone(), shutdown.clone()));
    let counted = watcher.clone();
    wait_for(async || {
        counted
            .seen
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == total
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_in_order_and_overlapping(&watcher, STREAMS, PER_STREAM);
    assert_eq!(watcher.failed.lock().unwrap().len(), STREAMS);

    // Tailing the log, with the checkpoint past each batch once all of it is settled.
    let watcher = Arc::new(LaneWatcher::default());
    let shutdown = CancellationToken::new();
    let subscription = Box::new(LogTailSubscription::new(
        source.clone(),
        Arc::new(|_: &RecordedEvent| true),
        quick("lanes-tail", inbox.clone()).with_lanes(4),
    ));
    let running = tokio::spawn(subscription.run(watcher.clone(), shutdown.clone()));
    let counted = watcher.clone();
    wait_for(async || {
        counted
            .seen
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == total
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_in_order_and_overlapping(&watcher, STREAMS, PER_STREAM);
    assert_eq!(
        inbox.checkpoint("subscription:lanes-tail").await.unwrap(),
        source
            .read_all(Default::default(), 1000)
            .await
            .unwrap()
            .last()
            .unwrap()
            .position()
    );

    nats.drop().await;
    producer.drop().await;
    consumer.drop().await;
}

/// A consumer whose stream dropped messages it had not acknowledged (retention: here the
/// stream keeps three messages) is re-fed the missing events from the producer's log
/// when it starts, each handled once; a second absence after it recorded its progress
/// re-feeds only what it missed.
#[tokio::test]
async fn a_consumer_behind_retention_is_re_fed_from_the_log() {
    use switchboard_eventlog::Retention;
    use switchboard_eventlog::backfill::Backfill;

    let producer = TestSchema::new().await;
    let consumer = TestSchema::new().await;
    let nats = TestNats::new().await;
    let source = open(&producer.store_config()).await;
    let inbox = open(&consumer.store_config()).await;
    let kept = spec().with_retention(Retention {
        max_messages: 3,
        ..Retention::default()
    });
    ensure_stream(&nats.js, &nats.prefix, &kept).await.unwrap();
    let info = nats
        .js
        .get_stream(kept.prefixed_name(&nats.prefix))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.max_messages, 3, "the stream keeps what its spec says");

    append_n(&source, 10, "thing.made").await;
    let relay = relay(&source, &nats);
    publish_all(&relay, 10).await;
    assert_eq!(
        stream_messages(&nats).await,
        3,
        "seven went with the retention"
    );

    let backfill = {
        let config = producer.store_config();
        Backfill {
            open: Arc::new(move || {
                let config = config.clone();
                Box::pin(async move { Ok(open(&config).await) })
            }),
            filter: Arc::new(|_: &RecordedEvent| true),
        }
    };
    let handler = Arc::new(Recorder {
        calls: AtomicU32::new(0),
    });
    let run = |shutdown: CancellationToken| {
        let subscription = Box::new(
            JetStreamSubscription::new(
                nats.js.clone(),
                kept.prefixed_name(&nats.prefix),
                &nats.prefix,
                "events.ws_test.>",
                quick("behind", inbox.clone()),
            )
            .with_backfill(backfill.clone()),
        );
        tokio::spawn(subscription.run(handler.clone(), shutdown))
    };
    let shutdown = CancellationToken::new();
    let running = run(shutdown.clone());
    wait_for(async || effects(&inbox).await == 10).await;
    // Its progress is recorded every few seconds: wait for it, then stop.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(effects(&inbox).await, 10, "each event handled once");

    // Away again while ten more are published; the stream keeps the last three.
    append_n(&source, 10, "thing.made").await;
    publish_all(&relay, 10).await;
    let shutdown = CancellationToken::new();
    let running = run(shutdown.clone());
    wait_for(async || effects(&inbox).await == 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(effects(&inbox).await, 20, "none twice");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let calls = handler.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 20, "no event reached the handler twice");
    nats.drop().await;
    producer.drop().await;
    consumer.drop().await;
}
