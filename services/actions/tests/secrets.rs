//! Credentials and secure values never leave in the clear: not in the logs (every level,
//! every crate), not in the spans an OpenTelemetry exporter receives, not in any event of
//! the log, not in what the API answers. The target echoes them back and fails with them
//! in its body; they must still be redacted everywhere.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use common::{Harness, SECRET, WS};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use switchboard_proto::actions::v1::*;
use tracing_subscriber::layer::SubscriberExt as _;

const SECURE_VALUE: &str = "4111-1111-1111-1111";

/// Every log line the process writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A target that echoes every credential it gets, in its answer and in its errors.
async fn leaky_target() -> std::net::SocketAddr {
    let echo = |headers: HeaderMap, query: Option<String>, body: String| {
        format!(
            "{{\"headers\": {:?}, \"query\": {:?}, \"body\": {:?}}}",
            format!("{headers:?}"),
            query.unwrap_or_default(),
            body
        )
    };
    let app =
        Router::new()
            .route(
                "/echo",
                post(
                    move |h: HeaderMap, RawQuery(q): RawQuery, body: String| async move {
                        echo(h, q, body)
                    },
                ),
            )
            .route(
                "/fail",
                get(move |h: HeaderMap, RawQuery(q): RawQuery| async move {
                    (StatusCode::BAD_GATEWAY, echo(h, q, String::new()))
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn action(name: &str, method: &str, url: String, auth: HttpAuth, body: &str) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: "leaks if it can".into(),
        kind: ActionKind::Http as i32,
        http: Some(HttpSpec {
            method: method.into(),
            url,
            body: body.into(),
            headers: [("X-Card".to_owned(), "{{ secure.card }}".to_owned())].into(),
            auth: Some(auth),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn secrets_appear_in_no_log_span_event_or_answer() {
    let logs = Captured::default();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("secrets-test")))
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut h = Harness::start(true).await;
    let addr = leaky_target().await;
    let auths = [
        HttpAuth {
            kind: AuthKind::ApiKeyQuery as i32,
            name: "api_key".into(),
            secret: SECRET.into(),
            ..Default::default()
        },
        HttpAuth {
            kind: AuthKind::Bearer as i32,
            secret: SECRET.into(),
            ..Default::default()
        },
        HttpAuth {
            kind: AuthKind::Basic as i32,
            username: "shop".into(),
            secret: SECRET.into(),
            ..Default::default()
        },
        HttpAuth {
            kind: AuthKind::ApiKeyHeader as i32,
            name: "X-Api-Key".into(),
            secret: SECRET.into(),
            ..Default::default()
        },
    ];
    let mut answers = Vec::new();
    for (i, auth) in auths.into_iter().enumerate() {
        for (route, method, body) in [
            ("echo", "POST", r#"{"card": "{{ secure.card }}"}"#),
            ("fail", "GET", ""),
        ] {
            let definition = action(
                &format!("leak_{route}_{i}"),
                method,
                format!("http://{addr}/{route}"),
                auth.clone(),
                body,
            );
            let created = h
                .client
                .create_action(CreateActionRequest {
                    workspace_id: WS.into(),
                    request_id: String::new(),
                    definition: Some(definition),
                })
                .await
                .unwrap()
                .into_inner()
                .action
                .unwrap();
            let variables = json!({"secure": {"card": SECURE_VALUE}}).to_string();
            let live = h
                .client
                .execute_action(ExecuteActionRequest {
                    workspace_id: WS.into(),
                    action_id: created.id.clone(),
                    variables_json: variables.clone(),
                    idempotency_key: format!("leak-{route}-{i}"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let test = h
                .client
                .test_action(TestActionRequest {
                    workspace_id: WS.into(),
                    action_id: created.id.clone(),
                    variables_json: variables,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                live.trace_id.len(),
                32,
                "the log links to the trace: {live:?}"
            );
            // The target did get the real values: what is redacted was really sent.
            if route == "echo" {
                assert_eq!(live.outcome(), Outcome::Success, "{live:?}");
                assert!(
                    live.response_body.contains("[redacted]"),
                    "{}",
                    live.response_body
                );
            } else {
                assert_eq!(live.reason(), FailureReason::HttpStatus, "{live:?}");
            }
            answers.push(format!("{created:?} {live:?} {test:?}"));
        }
    }
    let listed = h
        .client
        .list_executions(ListExecutionsRequest {
            workspace_id: WS.into(),
            include_tests: true,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    answers.push(format!("{listed:?}"));
    let events = common::events_until(&h.log, |events| {
        events
            .iter()
            .filter(|e| e.event_type == "action_execution.completed")
            .count()
            >= 16
    })
    .await;
    h.stop().await;
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    assert!(
        spans.iter().any(|s| s.name == "action.execute"),
        "the executions were traced"
    );
    let exported: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {:?} {:?}", s.name, s.attributes, s.events.events))
        .collect();
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("action executed"),
        "the executions were logged"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("shop:{SECRET}"));
    for leaked in [SECRET, SECURE_VALUE, basic.as_str()] {
        assert!(!logs.contains(leaked), "`{leaked}` is in the logs");
        for span in &exported {
            assert!(
                !span.contains(leaked),
                "`{leaked}` is in an exported span: {span}"
            );
        }
        for event in &events {
            let payload = String::from_utf8_lossy(&event.payload);
            assert!(
                !payload.contains(leaked),
                "`{leaked}` is in the stored event {}",
                event.event_type
            );
        }
        for answer in &answers {
            assert!(
                !answer.contains(leaked),
                "`{leaked}` is in an answer: {answer}"
            );
        }
    }
}
