//! The relay: events appended to the log published to JetStream, against raw JetStream
//! publishes of the same envelopes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use switchboard_conversations::PublicEvents;
use switchboard_eventlog::testing::{TestNats, TestSchema};
use switchboard_eventlog::{
    EventLog, ExpectedVersion, NewEvent, Relay, RelayConfig, StreamRef, ensure_stream,
};

use crate::common::event;
use crate::{Row, per_sec};

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
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
    ensure_stream(
        &nats.js,
        &nats.prefix,
        &switchboard_eventlog::StreamSpec::of(&switchboard_contract::streams::CONVERSATIONS, 1),
    )
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
        passed += relay.publish_pending(None).await.unwrap();
    }
    let ours = started.elapsed();
    assert_eq!(passed, n / 100 * 100);

    // Baseline: the same payloads published raw, all acks awaited, to a stream of its own.
    let baseline_prefix = format!("{}b", nats.prefix);
    ensure_stream(
        &nats.js,
        &baseline_prefix,
        &switchboard_eventlog::StreamSpec::of(&switchboard_contract::streams::CONVERSATIONS, 1),
    )
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
