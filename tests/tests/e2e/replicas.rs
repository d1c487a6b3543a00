//! Replicas share what must be shared: an action's rate limit holds across two `serve`
//! processes on the same store, whichever replica a call reaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, CreateActionRequest, ExecuteActionRequest, FailureReason,
    HttpSpec, Outcome,
};

use crate::common::{Process, WS, actions_client, drop_schema, webhooks_env};

/// Four calls a minute: ten calls spread over two replicas, five each, reach the target
/// four times; the other six are refused as rate limited, by either replica.
#[tokio::test]
async fn a_rate_limit_holds_across_two_serve_replicas() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let args = [
        "serve",
        "--services",
        "conversations,actions",
        "--allow-unauthenticated",
    ];
    let mut first = Process::new(&args, env.clone());
    first.start().await;
    let mut second = Process::new(&args, env);
    second.start().await;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/stock",
        axum::routing::get(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                r#"{"in_stock": true}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut replicas = [
        actions_client(first.grpc_port).await,
        actions_client(second.grpc_port).await,
    ];
    let action = replicas[0]
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "stock".into(),
                description: "Whether an item is in stock".into(),
                kind: ActionKind::Http as i32,
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: format!("http://{target}/stock"),
                    rate_limit_per_minute: 4,
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
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let result = replicas[i % 2]
            .execute_action(ExecuteActionRequest {
                workspace_id: WS.into(),
                action_id: action.id.clone(),
                idempotency_key: format!("stock-{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        outcomes.push((result.outcome, result.reason));
    }
    let succeeded = outcomes
        .iter()
        .filter(|(outcome, _)| *outcome == Outcome::Success as i32)
        .count();
    let limited = outcomes
        .iter()
        .filter(|(_, reason)| *reason == FailureReason::RateLimited as i32)
        .count();
    assert_eq!((succeeded, limited), (4, 6), "{outcomes:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    assert_eq!(first.terminate().code(), Some(0));
    assert_eq!(second.terminate().code(), Some(0));
    for service in ["conversations", "actions"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}
