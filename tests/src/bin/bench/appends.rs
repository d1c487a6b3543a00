//! Appends to the event log: batches of 100 from one writer and single events from 32
//! concurrent writers, against raw multi-row and single-row INSERTs of the same rows.

use std::time::Instant;

use sqlx::postgres::PgPoolOptions;
use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{EventLog, ExpectedVersion, NewEvent, StreamRef};
use uuid::Uuid;

use crate::common::event;
use crate::{Row, per_sec};

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

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
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
