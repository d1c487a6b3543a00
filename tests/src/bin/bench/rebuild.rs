//! Rebuilding the conversations read model from its log, against a raw SELECT of the same
//! rows.

use std::time::Instant;

use switchboard_eventlog::testing::TestSchema;
use switchboard_proto::conversations::v1::StartConversationRequest;
use switchboard_proto::events::v1::Channel;

use crate::common::{serve_conversations, text};
use crate::{Row, per_sec};

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
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
