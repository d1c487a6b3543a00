//! Insight questions over a month of 100,000 conversations, on Postgres and on SQLite,
//! asked over gRPC as the gateway asks them, against a raw aggregate of the same rows
//! (one `COUNT`/`SUM` over the month's index range) on the same store.

use std::time::{Duration, Instant};

use switchboard_clients::{ClientConfig, InsightsClient};
use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{EventLog, StoreConfig, Tx};
use switchboard_insights::domain::dimensions::DAY_MS;
use switchboard_insights::domain::facts::{Fact, History};
use switchboard_insights::store::write_fact;
use switchboard_proto::insights::v1 as pb;
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;

use crate::{Row, p50_p99, percentile};

const WS: &str = "ws_bench";
/// 2026-11-01T00:00:00Z.
const MONTH_START: i64 = 1_793_491_200_000;

fn fact(i: usize, conversations: usize) -> Fact {
    let pick = |values: &[&str], k: usize| values[k % values.len()].to_owned();
    let created = MONTH_START + (i as i64 * 30 * DAY_MS) / conversations as i64;
    let resolved = !i.is_multiple_of(3);
    let handed = i.is_multiple_of(7);
    let mut labels = std::collections::BTreeSet::new();
    labels.insert((
        "topic".to_owned(),
        pick(
            &[
                "billing", "login", "shipping", "refunds", "account", "other",
            ],
            i,
        ),
    ));
    if i.is_multiple_of(4) {
        labels.insert(("topic".to_owned(), "refunds".to_owned()));
    }
    labels.insert((
        "metafields.plan".to_owned(),
        pick(&["free", "pro", "team"], i / 3),
    ));
    Fact {
        workspace_id: WS.into(),
        conversation_id: format!("conv_{i:08}"),
        channel: pick(&["widget", "whatsapp", "email", "api"], i),
        status: if resolved {
            "resolved".into()
        } else {
            "active".into()
        },
        assistant: pick(&["asst_sales", "asst_support"], i / 5),
        sentiment: pick(&["positive", "neutral", "negative", "mixed", ""], i / 2),
        request_type: pick(&["question", "complaint", "order"], i / 11),
        urgency: pick(&["low", "medium", "high"], i / 13),
        customer_effort: pick(&["low", "medium", "high"], i / 17),
        churn_risk: pick(&["low", "medium", "high"], i / 19),
        knowledge_gap: String::new(),
        resolution: match (resolved, handed) {
            (true, false) => "resolved_by_agent",
            (true, true) => "resolved_by_human",
            (false, true) => "handed_over",
            (false, false) => "unresolved",
        },
        messages: (i % 9 + 2) as i64,
        created_at: created,
        updated_at: created + 600_000,
        history: History {
            version: 5,
            first_customer_at: Some(created + 1_000),
            first_response_at: Some(created + 1_000 + (i % 30 + 1) as i64 * 1_000),
            resolved_at: resolved.then_some(created + (i % 50 + 5) as i64 * 60_000),
            handed_over: handed,
            flow: pick(&["flow_a", "flow_b", "flow_c"], i),
        },
        labels,
    }
}

/// Writes the month's conversations, a few thousand per transaction.
async fn seed(log: &EventLog, conversations: usize) {
    const BATCH: usize = 5_000;
    for start in (0..conversations).step_by(BATCH) {
        let end = (start + BATCH).min(conversations);
        match (log.postgres_pool(), log.sqlite_pool()) {
            (Some(pool), _) => {
                let mut tx = pool.begin().await.unwrap();
                for i in start..end {
                    write_fact(&mut Tx::Postgres(&mut tx), &fact(i, conversations))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            (_, Some(pool)) => {
                let mut tx = pool.begin().await.unwrap();
                for i in start..end {
                    write_fact(&mut Tx::Sqlite(&mut tx), &fact(i, conversations))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            _ => unreachable!(),
        }
    }
    // Fresh statistics, as autovacuum or `ANALYZE` would leave them.
    match (log.postgres_pool(), log.sqlite_pool()) {
        (Some(pool), _) => {
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        (_, Some(pool)) => {
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        _ => unreachable!(),
    }
}

/// The raw baseline: one aggregate over the month's rows by the same index.
async fn raw(log: &EventLog) -> Duration {
    let sql = "SELECT COUNT(*), CAST(SUM(messages) AS BIGINT) FROM insights_conversations
               WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3";
    let started = Instant::now();
    let (n, _): (i64, Option<i64>) = match (log.postgres_pool(), log.sqlite_pool()) {
        (Some(pool), _) => sqlx::query_as(sql)
            .bind(WS)
            .bind(MONTH_START)
            .bind(MONTH_START + 30 * DAY_MS)
            .fetch_one(pool)
            .await
            .unwrap(),
        (_, Some(pool)) => sqlx::query_as(sql)
            .bind(WS)
            .bind(MONTH_START)
            .bind(MONTH_START + 30 * DAY_MS)
            .fetch_one(pool)
            .await
            .unwrap(),
        _ => unreachable!(),
    };
    assert!(n > 0);
    started.elapsed()
}

fn month(conditions: &[(&str, &[&str])]) -> Option<pb::Filter> {
    Some(pb::Filter {
        from: Some(prost_types::Timestamp {
            seconds: MONTH_START / 1000,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: (MONTH_START + 30 * DAY_MS) / 1000,
            nanos: 0,
        }),
        conditions: conditions
            .iter()
            .map(|(d, v)| pb::Condition {
                dimension: (*d).into(),
                values: v.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
        segment_id: String::new(),
    })
}

async fn timed<F, Fut>(runs: usize, mut ask: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    ask().await; // warm
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        ask().await;
        times.push(started.elapsed());
    }
    times.sort();
    times
}

async fn questions(rows: &mut Vec<Row>, backend: &str, config: StoreConfig, conversations: usize) {
    let log = switchboard_insights::open_log(&config).await.unwrap();
    log.migrate().await.unwrap();
    let seeding = Instant::now();
    seed(&log, conversations).await;
    eprintln!(
        "insights/{backend}: {conversations} conversations seeded in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new().add_service(
        switchboard_insights::GRPC_SERVICE,
        switchboard_insights::InsightsApi::over(log.clone()).into_server(),
    );
    tokio::spawn(server.serve(listener, shutdown.clone()));
    let client =
        InsightsClient::connect_lazy(&ClientConfig::new(format!("http://{addr}"), None, "bench"))
            .unwrap();
    const RUNS: usize = 15;
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        baseline.push(raw(&log).await);
    }
    baseline.sort();
    let base = percentile(&baseline, 0.5);
    let mut row = |name: &str, times: Vec<Duration>| {
        let p50 = percentile(&times, 0.5);
        rows.push(Row {
            name: format!("insights on {backend}, {conversations} conversations: {name}"),
            ours: p50_p99(&times),
            baseline: p50_p99(&baseline),
            ratio: p50.as_secs_f64() / base.as_secs_f64(),
            note: "baseline: one raw COUNT/SUM over the month's rows".into(),
        });
    };
    let times = timed(RUNS, || async {
        let s = client
            .get_summary(pb::SummaryRequest {
                workspace_id: WS.into(),
                filter: month(&[]),
            })
            .await
            .unwrap();
        assert_eq!(s.measures.unwrap().conversations, conversations as u64);
    })
    .await;
    row("summary of the month, with the month before", times);
    let times = timed(RUNS, || async {
        client
            .get_summary(pb::SummaryRequest {
                workspace_id: WS.into(),
                filter: month(&[
                    ("sentiment", &["negative", "mixed"]),
                    ("topic", &["refunds"]),
                    ("metafields.plan", &["pro"]),
                ]),
            })
            .await
            .unwrap();
    })
    .await;
    row(
        "summary filtered by sentiment, topic and a metafield",
        times,
    );
    let times = timed(RUNS, || async {
        client
            .get_breakdown(pb::BreakdownRequest {
                workspace_id: WS.into(),
                filter: month(&[]),
                dimensions: vec!["topic".into()],
                top: 5,
            })
            .await
            .unwrap();
    })
    .await;
    row(
        "breakdown by topic (several per conversation), top 5",
        times,
    );
    let times = timed(RUNS, || async {
        client
            .get_breakdown(pb::BreakdownRequest {
                workspace_id: WS.into(),
                filter: month(&[]),
                dimensions: vec!["channel".into(), "resolution".into()],
                top: 10,
            })
            .await
            .unwrap();
    })
    .await;
    row("breakdown by channel x resolution", times);
    let times = timed(RUNS, || async {
        let t = client
            .get_trends(pb::TrendsRequest {
                workspace_id: WS.into(),
                filter: month(&[]),
                interval: "day".into(),
                time_zone: "America/New_York".into(),
                compare_previous: true,
            })
            .await
            .unwrap();
        assert!(t.points.len() >= 30);
    })
    .await;
    row("trend by day in New York, with the month before", times);
    shutdown.cancel();
}

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
    let conversations = (100_000.0 * scale).max(1_000.0) as usize;
    let dir = std::env::temp_dir().join(format!("bench-insights-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    questions(
        rows,
        "SQLite",
        StoreConfig::Sqlite {
            path: dir.join("insights.db"),
        },
        conversations,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let schema = TestSchema::new().await;
    questions(rows, "Postgres", schema.store_config(), conversations).await;
    schema.drop().await;
}
