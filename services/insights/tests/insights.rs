//! The insights service over real gRPC, on SQLite and on Postgres: a workspace's
//! conversations arrive as the conversations service publishes them (created, then updated
//! per message, analysis, assignment and status; some delivered twice, some late), and every
//! answer is checked against counts computed here, independently, from the seed itself.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use prost_types::Timestamp;
use switchboard_clients::{ClientConfig, InsightsClient};
use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{EventLog, Metadata, RecordedEvent, StoreConfig, StreamRef};
use switchboard_insights::consumers::{ConversationEvents, FlowRuns};
use switchboard_proto::events::v1 as ev;
use switchboard_proto::flows::v1::run_event_record::Event as Record;
use switchboard_proto::flows::v1::{RunEventRecord, RunStarted};
use switchboard_proto::insights::v1 as pb;
use switchboard_runtime::GrpcServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WS: &str = "ws_insights";
const OTHER_WS: &str = "ws_other";
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z: the seed's first conversation.
const BASE: i64 = 1_793_491_200_000;
const CONVERSATIONS: i64 = 480;

/// One seeded conversation, as the test knows it.
#[derive(Debug, Clone)]
struct Seed {
    id: String,
    channel: ev::Channel,
    channel_name: &'static str,
    sentiment: Option<&'static str>,
    topics: BTreeSet<&'static str>,
    assistant: String,
    urgency: Option<&'static str>,
    created: i64,
    /// Milliseconds from the customer's first message to the first answer.
    first_response: i64,
    resolved: bool,
    human: bool,
    plan: &'static str,
}

impl Seed {
    fn resolution(&self) -> &'static str {
        match (self.resolved, self.human) {
            (true, false) => "resolved_by_agent",
            (true, true) => "resolved_by_human",
            (false, true) => "handed_over",
            (false, false) => "unresolved",
        }
    }

    /// Resolved 20 minutes after the start.
    fn resolution_ms(&self) -> Option<i64> {
        self.resolved.then_some(20 * MINUTE)
    }
}

fn seeds() -> Vec<Seed> {
    (0..CONVERSATIONS)
        .map(|i| {
            let (channel, channel_name) = [
                (ev::Channel::Widget, "widget"),
                (ev::Channel::Whatsapp, "whatsapp"),
                (ev::Channel::Api, "api"),
            ][(i % 3) as usize];
            let mut topics = BTreeSet::new();
            if i % 5 == 0 {
                topics.insert("billing");
            }
            if i % 7 == 0 {
                topics.insert("refunds");
            }
            if i % 2 == 0 {
                topics.insert("login");
            }
            Seed {
                id: format!("conv_{:06}", i),
                channel,
                channel_name,
                sentiment: [Some("positive"), Some("neutral"), Some("negative"), None]
                    [(i % 4) as usize],
                topics,
                assistant: format!("asst_{}", i % 2),
                urgency: (i % 6 == 0).then_some("high"),
                // 480 conversations, one every 90 minutes: 30 days.
                created: BASE + i * 90 * MINUTE,
                first_response: (i % 13 + 1) * 1000,
                resolved: i % 3 != 2,
                human: i % 10 == 0,
                plan: if i % 4 == 0 { "pro" } else { "free" },
            }
        })
        .collect()
}

fn ts(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

fn recorded(ws: &str, stream: &str, event_type: &str, payload: Vec<u8>) -> RecordedEvent {
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream: StreamRef::new("conversation", stream),
        stream_version: 1,
        global_position: 0,
        transaction_id: 0,
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: Metadata {
            workspace_id: ws.to_owned(),
            ..Default::default()
        },
        recorded_at: 0,
    }
}

/// The public events the conversations service publishes for `seed`, in order.
fn events_of(ws: &str, seed: &Seed) -> Vec<RecordedEvent> {
    let mut c = ev::Conversation {
        id: seed.id.clone(),
        workspace_id: ws.to_owned(),
        channel: seed.channel as i32,
        status: ev::ConversationStatus::Active as i32,
        metafields: [
            ("assistant_id".to_owned(), seed.assistant.clone()),
            ("plan".to_owned(), seed.plan.to_owned()),
        ]
        .into(),
        created_at: ts(seed.created),
        updated_at: ts(seed.created),
        version: 1,
        ..Default::default()
    };
    let mut out = vec![recorded(
        ws,
        &seed.id,
        "conversation.created",
        ev::ConversationCreatedEvent {
            conversation: Some(c.clone()),
        }
        .encode_to_vec(),
    )];
    let mut update = |c: &mut ev::Conversation, at: i64, message: Option<ev::Message>| {
        c.version += 1;
        c.updated_at = ts(at);
        if message.is_some() {
            c.message_count += 1;
        }
        out.push(recorded(
            ws,
            &seed.id,
            "conversation.updated",
            ev::ConversationUpdatedEvent {
                conversation: Some(c.clone()),
                message,
                ..Default::default()
            }
            .encode_to_vec(),
        ));
    };
    let message = |author: ev::Author, at: i64| ev::Message {
        author: author as i32,
        created_at: ts(at),
        ..Default::default()
    };
    let said = seed.created + 10_000;
    update(&mut c, said, Some(message(ev::Author::Customer, said)));
    let answered = said + seed.first_response;
    let author = if seed.human {
        ev::Author::Human
    } else {
        ev::Author::Agent
    };
    update(&mut c, answered, Some(message(author, answered)));
    c.analysis = Some(ev::Analysis {
        topics: seed.topics.iter().map(|t| (*t).to_owned()).collect(),
        sentiment: match seed.sentiment {
            Some("positive") => ev::Sentiment::Positive,
            Some("neutral") => ev::Sentiment::Neutral,
            Some("negative") => ev::Sentiment::Negative,
            _ => ev::Sentiment::Unspecified,
        } as i32,
        custom: seed
            .urgency
            .map(|u| ("urgency".to_owned(), u.to_owned()))
            .into_iter()
            .collect(),
        ..Default::default()
    });
    update(&mut c, answered + 1000, None);
    if seed.resolved {
        c.status = ev::ConversationStatus::Resolved as i32;
        update(&mut c, seed.created + 20 * MINUTE, None);
    }
    out
}

struct Cluster {
    log: EventLog,
    client: InsightsClient,
    shutdown: CancellationToken,
}

impl Cluster {
    async fn start(config: StoreConfig) -> Self {
        let log = switchboard_insights::open_log(&config).await.unwrap();
        log.migrate().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = GrpcServer::new().add_service(
            switchboard_insights::GRPC_SERVICE,
            switchboard_insights::InsightsApi::over(log.clone()).into_server(),
        );
        tokio::spawn(server.serve(listener, shutdown.clone()));
        let client = InsightsClient::connect_lazy(&ClientConfig::new(
            format!("http://{addr}"),
            None,
            "test",
        ))
        .unwrap();
        Self {
            log,
            client,
            shutdown,
        }
    }

    async fn deliver(&self, event: &RecordedEvent) {
        let handler: &dyn switchboard_eventlog::Handler =
            if event.event_type.starts_with("flow_run.") {
                &FlowRuns
            } else {
                &ConversationEvents
            };
        let consumer = if event.event_type.starts_with("flow_run.") {
            "insights-flow-runs"
        } else {
            "insights-conversations"
        };
        self.log
            .process_once(consumer, event, handler)
            .await
            .unwrap()
            .unwrap();
    }

    /// Seeds `WS` (and a little of another workspace, which must never show).
    async fn seed(&self, seeds: &[Seed]) {
        for (i, seed) in seeds.iter().enumerate() {
            let events = events_of(WS, seed);
            // Every 7th conversation's flow is known before the conversation is.
            if i % 7 == 0 {
                self.deliver(&flow_started(seed, "flow_support")).await;
            }
            for event in &events {
                self.deliver(event).await;
            }
            // A late, older update (a redelivery under another id) changes nothing.
            if i % 11 == 0 {
                let mut late = events[1].clone();
                late.event_id = uuid::Uuid::now_v7();
                self.deliver(&late).await;
            }
            if i % 7 == 3 {
                self.deliver(&flow_started(seed, "flow_sales")).await;
            }
        }
        for seed in seeds.iter().take(30) {
            for event in events_of(OTHER_WS, seed) {
                self.deliver(&event).await;
            }
        }
    }
}

fn flow_started(seed: &Seed, flow: &str) -> RecordedEvent {
    recorded(
        WS,
        &seed.id,
        "flow_run.started",
        // As the flows service stores it: one step of a run, in its record.
        RunEventRecord {
            event: Some(Record::Started(RunStarted {
                run_id: format!("run_{}", seed.id),
                flow_id: flow.to_owned(),
                conversation_id: seed.id.clone(),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    )
}

fn filter(from: i64, to: i64, conditions: &[(&str, &[&str])]) -> Option<pb::Filter> {
    Some(pb::Filter {
        from: ts(from),
        to: ts(to),
        conditions: conditions
            .iter()
            .map(|(d, v)| pb::Condition {
                dimension: (*d).to_owned(),
                values: v.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
        segment_id: String::new(),
    })
}

fn median(mut values: Vec<i64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2] as f64
    } else {
        (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0
    })
}

/// The measures of `seeds`, computed here.
fn expected(seeds: &[&Seed]) -> pb::Measures {
    let n = seeds.len() as f64;
    let rate = |k: usize| if n > 0.0 { k as f64 / n } else { 0.0 };
    let firsts: Vec<i64> = seeds.iter().map(|s| s.first_response).collect();
    let resolutions: Vec<i64> = seeds.iter().filter_map(|s| s.resolution_ms()).collect();
    let mean =
        |v: &[i64]| (!v.is_empty()).then(|| v.iter().sum::<i64>() as f64 / v.len() as f64 / 1000.0);
    pb::Measures {
        conversations: seeds.len() as u64,
        messages: seeds.len() as u64 * 2,
        resolution_rate: rate(seeds.iter().filter(|s| s.resolved).count()),
        agent_resolution_rate: rate(seeds.iter().filter(|s| s.resolved && !s.human).count()),
        handover_rate: rate(seeds.iter().filter(|s| s.human).count()),
        first_response_mean_seconds: mean(&firsts),
        first_response_median_seconds: median(firsts).map(|m| m / 1000.0),
        resolution_mean_seconds: mean(&resolutions),
        resolution_median_seconds: median(resolutions).map(|m| m / 1000.0),
    }
}

fn assert_measures(got: &pb::Measures, want: &pb::Measures, what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    let close_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (None, None) => true,
        _ => false,
    };
    assert!(
        got.conversations == want.conversations
            && got.messages == want.messages
            && close(got.resolution_rate, want.resolution_rate)
            && close(got.agent_resolution_rate, want.agent_resolution_rate)
            && close(got.handover_rate, want.handover_rate)
            && close_opt(
                got.first_response_mean_seconds,
                want.first_response_mean_seconds
            )
            && close_opt(
                got.first_response_median_seconds,
                want.first_response_median_seconds
            )
            && close_opt(got.resolution_mean_seconds, want.resolution_mean_seconds)
            && close_opt(
                got.resolution_median_seconds,
                want.resolution_median_seconds
            ),
        "{what}:\n got {got:?}\nwant {want:?}"
    );
}

async fn answers_match_counts_made_independently(config: StoreConfig) {
    let cluster = Cluster::start(config).await;
    let seeds = seeds();
    cluster.seed(&seeds).await;
    let client = &cluster.client;
    let end = BASE + 30 * DAY;

    // The summary of everything, and of a filtered part.
    let all: Vec<&Seed> = seeds.iter().collect();
    let summary = client
        .get_summary(pb::SummaryRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, end, &[]),
        })
        .await
        .unwrap();
    assert_measures(summary.measures.as_ref().unwrap(), &expected(&all), "all");
    assert_eq!(summary.previous.unwrap().conversations, 0);
    let angry_billing: Vec<&Seed> = seeds
        .iter()
        .filter(|s| s.sentiment == Some("negative") && s.topics.contains("billing"))
        .filter(|s| s.channel_name != "api")
        .collect();
    let summary = client
        .get_summary(pb::SummaryRequest {
            workspace_id: WS.into(),
            filter: filter(
                BASE,
                end,
                &[
                    ("sentiment", &["negative"]),
                    ("topic", &["billing"]),
                    ("channel", &["widget", "whatsapp"]),
                ],
            ),
        })
        .await
        .unwrap();
    assert!(!angry_billing.is_empty());
    assert_measures(
        summary.measures.as_ref().unwrap(),
        &expected(&angry_billing),
        "negative billing off the API",
    );
    // A metafield, an open dimension, and "none recorded".
    let pro_without_sentiment: Vec<&Seed> = seeds
        .iter()
        .filter(|s| s.plan == "pro" && s.sentiment.is_none() && s.assistant == "asst_1")
        .collect();
    let summary = client
        .get_summary(pb::SummaryRequest {
            workspace_id: WS.into(),
            filter: filter(
                BASE,
                end,
                &[
                    ("metafields.plan", &["pro"]),
                    ("sentiment", &[""]),
                    ("assistant", &["asst_1"]),
                ],
            ),
        })
        .await
        .unwrap();
    assert_measures(
        summary.measures.as_ref().unwrap(),
        &expected(&pro_without_sentiment),
        "pro plan, no sentiment, assistant 1",
    );

    // Breakdown by topic (several per conversation; none as ""), top 2 and other.
    let breakdown = client
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, end, &[]),
            dimensions: vec!["topic".into()],
            top: 2,
        })
        .await
        .unwrap();
    let mut by_topic: BTreeMap<&str, Vec<&Seed>> = BTreeMap::new();
    for s in &seeds {
        if s.topics.is_empty() {
            by_topic.entry("").or_default().push(s);
        }
        for t in &s.topics {
            by_topic.entry(t).or_default().push(s);
        }
    }
    let mut ranked: Vec<(&str, usize)> = by_topic.iter().map(|(t, s)| (*t, s.len())).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rows = &breakdown.rows;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, (topic, _)) in rows.iter().zip(&ranked[..2]) {
        assert_eq!((row.values[0].as_str(), row.other[0]), (*topic, false));
        assert_measures(
            row.measures.as_ref().unwrap(),
            &expected(&by_topic[topic]),
            &format!("topic {topic}"),
        );
    }
    // "Other" adds up the folded topics' rows: a conversation in two of them counts twice.
    let other: Vec<&Seed> = ranked[2..]
        .iter()
        .flat_map(|(topic, _)| by_topic[topic].iter().copied())
        .collect();
    assert!(rows[2].other[0]);
    assert_measures(
        rows[2].measures.as_ref().unwrap(),
        &expected(&other),
        "other topics",
    );
    assert_measures(breakdown.total.as_ref().unwrap(), &expected(&all), "total");

    // Two dimensions: channel x resolution.
    let breakdown = client
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, end, &[]),
            dimensions: vec!["channel".into(), "resolution".into()],
            top: 0,
        })
        .await
        .unwrap();
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in &seeds {
        *pairs
            .entry((s.channel_name.to_owned(), s.resolution().to_owned()))
            .or_default() += 1;
    }
    let got: BTreeMap<(String, String), u64> = breakdown
        .rows
        .iter()
        .map(|r| {
            (
                (r.values[0].clone(), r.values[1].clone()),
                r.measures.as_ref().unwrap().conversations,
            )
        })
        .collect();
    assert_eq!(got, pairs);

    // The flow each conversation runs, whichever arrived first.
    let breakdown = client
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, end, &[]),
            dimensions: vec!["flow".into()],
            top: 0,
        })
        .await
        .unwrap();
    let flows: BTreeMap<String, u64> = breakdown
        .rows
        .iter()
        .map(|r| {
            (
                r.values[0].clone(),
                r.measures.as_ref().unwrap().conversations,
            )
        })
        .collect();
    let support = (0..CONVERSATIONS).filter(|i| i % 7 == 0).count() as u64;
    let sales = (0..CONVERSATIONS).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(
        flows,
        BTreeMap::from([
            ("".to_owned(), CONVERSATIONS as u64 - support - sales),
            ("flow_sales".to_owned(), sales),
            ("flow_support".to_owned(), support),
        ])
    );

    // Trends by day in Istanbul (UTC+3): every bucket, empty ones as zeros.
    let trends = client
        .get_trends(pb::TrendsRequest {
            workspace_id: WS.into(),
            filter: filter(BASE - 5 * DAY, end, &[("urgency", &["high"])]),
            interval: "day".into(),
            time_zone: "Europe/Istanbul".into(),
            compare_previous: true,
        })
        .await
        .unwrap();
    let offset = 3 * 3_600_000;
    let mut per_day: BTreeMap<i64, Vec<&Seed>> = BTreeMap::new();
    for s in seeds.iter().filter(|s| s.urgency == Some("high")) {
        let local_day = (s.created + offset).div_euclid(DAY);
        per_day.entry(local_day * DAY - offset).or_default().push(s);
    }
    assert_eq!(
        trends.points.len(),
        36,
        "35 days from a UTC midnight span 36 local days"
    );
    assert_eq!(trends.previous.len(), 36);
    let first_start = (BASE - 5 * DAY + offset).div_euclid(DAY) * DAY - offset;
    for (i, point) in trends.points.iter().enumerate() {
        let start = first_start + i as i64 * DAY;
        let start_ts = point.start.unwrap();
        assert_eq!(start_ts.seconds * 1000, start, "bucket {i}");
        let want = per_day.get(&start).cloned().unwrap_or_default();
        assert_measures(
            point.measures.as_ref().unwrap(),
            &expected(&want),
            &format!("day {i}"),
        );
    }
    assert!(
        trends.points[..5]
            .iter()
            .all(|p| p.measures.as_ref().unwrap().conversations == 0)
    );

    // By month: November 2026 is one bucket; the window before is one bucket of October.
    let months = client
        .get_trends(pb::TrendsRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, end, &[]),
            interval: "month".into(),
            time_zone: "UTC".into(),
            compare_previous: true,
        })
        .await
        .unwrap();
    assert_eq!(months.points.len(), 1);
    assert_eq!(months.points[0].start.unwrap().seconds * 1000, BASE);
    assert_measures(
        months.points[0].measures.as_ref().unwrap(),
        &expected(&all),
        "November",
    );
    assert_eq!(months.previous.len(), 1);
    assert_eq!(months.previous[0].measures.unwrap().conversations, 0);

    // Segments: saved, used as a filter, listed, and their conversations paged.
    let create = pb::CreateSegmentRequest {
        workspace_id: WS.into(),
        request_id: "seg-1".into(),
        name: "Unhappy on WhatsApp".into(),
        conditions: vec![
            pb::Condition {
                dimension: "channel".into(),
                values: vec!["whatsapp".into()],
            },
            pb::Condition {
                dimension: "resolved".into(),
                values: vec!["false".into()],
            },
        ],
        from: ts(BASE),
        to: ts(end),
        ..Default::default()
    };
    let segment = client.create_segment(create.clone()).await.unwrap();
    let again = client.create_segment(create.clone()).await.unwrap();
    // The same request id with another body is refused, not answered with this one.
    let reused = client
        .create_segment(pb::CreateSegmentRequest {
            name: "Something else".into(),
            ..create
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists, "{reused:?}");
    assert!(reused.message().contains("SB-INS-0006"), "{reused:?}");
    assert_eq!(
        again.id, segment.id,
        "a retried request creates nothing new"
    );
    let members: Vec<&Seed> = seeds
        .iter()
        .filter(|s| s.channel_name == "whatsapp" && !s.resolved)
        .collect();
    let summary = client
        .get_summary(pb::SummaryRequest {
            workspace_id: WS.into(),
            filter: Some(pb::Filter {
                segment_id: segment.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_measures(
        summary.measures.as_ref().unwrap(),
        &expected(&members),
        "segment",
    );
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_conversation_ids(pb::ListConversationIdsRequest {
                workspace_id: WS.into(),
                filter: Some(pb::Filter {
                    segment_id: segment.id.clone(),
                    ..Default::default()
                }),
                limit: 7,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.conversation_ids.len() <= 7);
        ids.extend(page.conversation_ids);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut want: Vec<String> = members.iter().map(|s| s.id.clone()).collect();
    want.sort();
    want.reverse();
    assert_eq!(ids, want, "newest first, every member once");
    // Another workspace sees neither the segment nor the conversations.
    let other = client
        .get_segment(pb::SegmentRef {
            workspace_id: OTHER_WS.into(),
            segment_id: segment.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);
    let theirs = client
        .get_summary(pb::SummaryRequest {
            workspace_id: OTHER_WS.into(),
            filter: filter(BASE, end, &[]),
        })
        .await
        .unwrap();
    assert_eq!(theirs.measures.unwrap().conversations, 30);

    // Dimensions: the catalogue with this workspace's open values.
    let dimensions = client
        .list_dimensions(pb::ListDimensionsRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .dimensions;
    let find = |key: &str| dimensions.iter().find(|d| d.key == key).unwrap();
    assert!(find("topic").open && find("topic").multiple);
    let topics: BTreeSet<&str> = find("topic").values.iter().map(String::as_str).collect();
    assert_eq!(topics, BTreeSet::from(["billing", "login", "refunds"]));
    assert!(!find("sentiment").open);
    assert_eq!(find("metafields.plan").values.len(), 2);

    // Bad questions name every problem.
    let error = client
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: WS.into(),
            filter: filter(end, BASE, &[("mood", &["x"]), ("urgency", &["extreme"])]),
            dimensions: vec!["colour".into(), "topic".into(), "channel".into()],
            top: 500,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    for field in [
        "filter.conditions[0].dimension",
        "filter.conditions[1].values[0]",
        "filter.to",
        "dimensions[0]",
        "top",
    ] {
        assert!(
            error.message().contains(field),
            "{field} in {}",
            error.message()
        );
    }
    let error = client
        .get_trends(pb::TrendsRequest {
            workspace_id: WS.into(),
            filter: filter(BASE, BASE + 60 * DAY, &[]),
            interval: "hour".into(),
            time_zone: "Nowhere/Else".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(error.message().contains("time_zone"), "{}", error.message());
    cluster.shutdown.cancel();
}

#[tokio::test]
async fn answers_match_counts_made_independently_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("insights-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    answers_match_counts_made_independently(StoreConfig::Sqlite {
        path: dir.join("insights.db"),
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn answers_match_counts_made_independently_on_postgres() {
    let schema = TestSchema::new().await;
    answers_match_counts_made_independently(schema.store_config()).await;
    schema.drop().await;
}

/// `google.rpc.Status` as an error's details carry it: only what is read here.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.BadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<Violation>,
}

/// `google.rpc.BadRequest.FieldViolation`: the field it names.
#[derive(Clone, PartialEq, prost::Message)]
struct Violation {
    #[prost(string, tag = "1")]
    field: String,
}

/// The fields an `INVALID_ARGUMENT` answer's `BadRequest` detail names, in order.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = <RpcStatus as prost::Message>::decode(status.details())
        .expect("the details are a google.rpc.Status");
    let bad_requests: Vec<BadRequest> = details
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("/google.rpc.BadRequest"))
        .map(|any| {
            <BadRequest as prost::Message>::decode(any.value.as_slice())
                .expect("a google.rpc.BadRequest")
        })
        .collect();
    assert_eq!(bad_requests.len(), 1, "{status:?}");
    bad_requests
        .into_iter()
        .flat_map(|b| b.field_violations)
        .map(|v| v.field)
        .collect()
}

/// A request with several mistakes names every one in the same answer: the fields every
/// request carries beside the request's own, and what needs the store (a missing segment)
/// beside what does not.
#[tokio::test]
async fn every_mistake_of_a_request_is_named_in_one_answer() {
    let dir = std::env::temp_dir().join(format!("insights-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = Cluster::start(StoreConfig::Sqlite {
        path: dir.join("insights.db"),
    })
    .await;
    let client = &cluster.client;

    let breakdown = client
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: "acme".into(),
            filter: filter(BASE + DAY, BASE, &[("mood", &["x"])]),
            dimensions: vec!["colour".into()],
            top: 500,
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&breakdown),
        [
            "workspace_id",
            "filter.conditions[0].dimension",
            "filter.to",
            "dimensions[0]",
            "top"
        ]
    );
    let summary = client
        .get_summary(pb::SummaryRequest {
            workspace_id: "ws_".into(),
            filter: filter(BASE, BASE + DAY, &[("sentiment", &["furious"])]),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&summary),
        ["workspace_id", "filter.conditions[0].values[0]"]
    );
    // Sixty days of hours are more buckets than an answer holds.
    let trends = client
        .get_trends(pb::TrendsRequest {
            workspace_id: "acme".into(),
            filter: filter(BASE, BASE + 60 * DAY, &[]),
            interval: "hour".into(),
            time_zone: "UTC".into(),
            compare_previous: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&trends), ["workspace_id", "interval"]);
    let segment = client
        .create_segment(pb::CreateSegmentRequest {
            workspace_id: "acme".into(),
            request_id: "r".repeat(129),
            name: " ".into(),
            last_days: 500,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&segment),
        ["workspace_id", "request_id", "name", "last_days"]
    );
    let ids = client
        .list_conversation_ids(pb::ListConversationIdsRequest {
            workspace_id: "acme".into(),
            limit: 500,
            cursor: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&ids), ["workspace_id", "limit", "cursor"]);
    let segments = client
        .list_segments(pb::ListSegmentsRequest {
            workspace_id: "acme".into(),
            limit: 101,
            cursor: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&segments),
        ["workspace_id", "limit", "cursor"]
    );
    let findings = client
        .list_findings(pb::ListFindingsRequest {
            workspace_id: "acme".into(),
            limit: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&findings), ["workspace_id", "limit"]);

    // A clean envelope: the segment the filter names is looked for, and its absence named
    // beside the filter's own mistake.
    let missing = client
        .get_summary(pb::SummaryRequest {
            workspace_id: WS.into(),
            filter: Some(pb::Filter {
                segment_id: "seg_missing".into(),
                ..filter(BASE, BASE + DAY, &[("mood", &["x"])]).unwrap()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&missing),
        ["filter.segment_id", "filter.conditions[0].dimension"]
    );
    cluster.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A day with four times the usual billing conversations is a finding, raised once;
/// dismissed, it stays dismissed.
#[tokio::test]
async fn a_rising_topic_is_found_once_and_can_be_dismissed() {
    let dir = std::env::temp_dir().join(format!("insights-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = Cluster::start(StoreConfig::Sqlite {
        path: dir.join("insights.db"),
    })
    .await;
    let now = switchboard_insights::service::now_ms();
    let mut n = 0;
    let mut seed_at = |created: i64, billing: bool| {
        n += 1;
        Seed {
            id: format!("conv_{n:06}"),
            channel: ev::Channel::Widget,
            channel_name: "widget",
            sentiment: Some("neutral"),
            topics: if billing {
                BTreeSet::from(["billing"])
            } else {
                BTreeSet::new()
            },
            assistant: "asst_0".into(),
            urgency: None,
            created,
            first_response: 1000,
            resolved: true,
            human: false,
            plan: "free",
        }
    };
    // The detection day is the last full day that ended a day ago.
    let day = now - 2 * DAY;
    let mut seeds = Vec::new();
    // The workspace's first conversation, before the baseline.
    seeds.push(seed_at(day - 20 * DAY, false));
    // Fourteen usual days: 10 billing conversations and 10 others a day.
    for before in 1..=14 {
        for k in 0..20 {
            seeds.push(seed_at(day - before * DAY + (k + 1) * 60_000, k < 10));
        }
    }
    // The detection day: 40 billing conversations.
    let spike: Vec<Seed> = (0..40)
        .map(|k| seed_at(day + (k + 1) * 60_000, true))
        .collect();
    seeds.extend(spike.iter().cloned());
    // Today's conversations are too fresh to count.
    seeds.push(seed_at(now - 60_000, true));
    for seed in &seeds {
        for event in events_of(WS, seed) {
            cluster.deliver(&event).await;
        }
    }
    // A workspace with only the spike has no usual range: no trend finding.
    for seed in &spike {
        for event in events_of(OTHER_WS, seed) {
            cluster.deliver(&event).await;
        }
    }
    let young = cluster
        .client
        .detect_findings(pb::DetectFindingsRequest {
            workspace_id: OTHER_WS.into(),
        })
        .await
        .unwrap()
        .raised;
    assert!(
        young.iter().all(|f| f.kind == "co_occurrence"),
        "{young:#?}"
    );
    let raised = cluster
        .client
        .detect_findings(pb::DetectFindingsRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .raised;
    // Everything of that day rose (the channel, the assistant...); nothing fell.
    assert!(raised.iter().all(|f| f.kind == "rising"), "{raised:#?}");
    let billing: Vec<&pb::Finding> = raised
        .iter()
        .filter(|f| f.fingerprint == "rising:topic=billing")
        .collect();
    assert_eq!(billing.len(), 1, "{raised:#?}");
    let finding = billing[0];
    assert_eq!(finding.pattern[0].values, ["billing"]);
    assert_eq!(finding.observed, 40.0);
    assert!(
        (finding.expected - 10.0).abs() < 1e-9,
        "{}",
        finding.expected
    );
    // Run again: nothing new.
    let again = cluster
        .client
        .detect_findings(pb::DetectFindingsRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .raised;
    assert!(again.is_empty(), "{again:#?}");
    let dismissed = cluster
        .client
        .dismiss_finding(pb::DismissFindingRequest {
            workspace_id: WS.into(),
            request_id: "dismiss-1".into(),
            finding_id: finding.id.clone(),
        })
        .await
        .unwrap();
    assert!(dismissed.dismissed_at.is_some());
    let open = cluster
        .client
        .list_findings(pb::ListFindingsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .findings;
    assert!(open.iter().all(|f| f.id != finding.id));
    let all = cluster
        .client
        .list_findings(pb::ListFindingsRequest {
            workspace_id: WS.into(),
            include_dismissed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .findings;
    assert!(
        all.iter()
            .any(|f| f.id == finding.id && f.dismissed_at.is_some())
    );
    cluster.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connexease's `/stats` readings: the latest kept per agent and channel, an older
/// reading arriving late changes nothing, and another workspace's never shows.
#[tokio::test]
async fn connexease_stats_keep_the_latest_reading_of_each_workspace() {
    use switchboard_insights::consumers::ConnexeaseStats;
    use switchboard_proto::connexease::v1::{ResponseStats, StatsRead};

    let schema = TestSchema::new().await;
    let cluster = Cluster::start(schema.store_config()).await;
    let reading = |ws: &str, at: i64, ada: f64| {
        let read = StatsRead {
            agents: vec![
                ResponseStats {
                    id: "agent-ada".into(),
                    name: "Ada".into(),
                    email: "ada@shop.example".into(),
                    first_response_seconds: ada,
                    average_response_seconds: ada * 2.0,
                    ..Default::default()
                },
                ResponseStats {
                    id: "agent-bob".into(),
                    name: "Bob".into(),
                    first_response_seconds: 30.0,
                    ..Default::default()
                },
            ],
            channels: vec![ResponseStats {
                id: "channel-web".into(),
                name: "Web chat".into(),
                message_count: 12,
                customer_count: 3,
                ..Default::default()
            }],
            read_at: Some(Timestamp {
                seconds: at,
                nanos: 0,
            }),
        };
        recorded(ws, "stats", "connexease.stats_read", read.encode_to_vec())
    };
    let deliver = |event: RecordedEvent| {
        let log = cluster.log.clone();
        async move {
            log.process_once("insights-connexease-stats", &event, &ConnexeaseStats)
                .await
                .unwrap()
                .unwrap();
        }
    };
    deliver(reading(WS, 2_000, 90.0)).await;
    // An older reading, late: the later one stands.
    deliver(reading(WS, 1_000, 5.0)).await;
    deliver(reading(OTHER_WS, 3_000, 1.0)).await;
    let stats = |by: &str| {
        let client = cluster.client.clone();
        let by = by.to_owned();
        async move {
            client
                .get_connexease_stats(pb::ConnexeaseStatsRequest {
                    workspace_id: WS.into(),
                    by,
                })
                .await
                .unwrap()
        }
    };
    let agents = stats("agent").await;
    assert_eq!(
        agents
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.first_response_seconds))
            .collect::<Vec<_>>(),
        [("Ada", 90.0), ("Bob", 30.0)],
        "slowest first, from the later reading"
    );
    assert_eq!(agents.read_at.map(|t| t.seconds), Some(2_000));
    let channels = stats("channel").await;
    assert_eq!(channels.rows.len(), 1);
    assert_eq!(channels.rows[0].message_count, 12);
    let refused = cluster
        .client
        .get_connexease_stats(pb::ConnexeaseStatsRequest {
            workspace_id: WS.into(),
            by: "group".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    cluster.shutdown.cancel();
    schema.drop().await;
}
