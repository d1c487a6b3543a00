//! Execution through NATS: a flow run's `internal.flows.action_requested` runs the action
//! and its outcome comes back on `internal.actions.action_completed`, with the public
//! `action.executed` beside it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::{Harness, WS};
use futures::StreamExt;
use prost::Message as _;
use switchboard_actions::consumers::{ACTION_REQUESTED, ActionRequests};
use switchboard_eventlog::testing::TestNats;
use switchboard_eventlog::{
    JetStreamSubscription, Metadata, RecordedEvent, Relay, RelayConfig, StreamRef, StreamSpec,
    Subscription, SubscriptionConfig, ensure_stream,
};
use switchboard_proto::actions::v1::*;
use switchboard_proto::events::v1::EventEnvelope;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_requested_action_runs_once_and_answers_on_nats() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = {
        let calls = calls.clone();
        axum::Router::new().route(
            "/orders/{n}",
            axum::routing::get(move |axum::extract::Path(n): axum::extract::Path<String>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({"data": {"status": "shipped", "n": n}}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut h = Harness::start(true).await;
    let nats = TestNats::new().await;
    let action = h
        .client
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
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

    // The streams: ours, and the flows service's (it does not exist yet; the test stands in).
    let flows = StreamSpec {
        name: "FLOWS".into(),
        subjects: vec!["internal.flows.>".into()],
        replicas: 1,
        retention: Default::default(),
    };
    ensure_stream(&nats.js, &nats.prefix, &flows).await.unwrap();
    ensure_stream(
        &nats.js,
        &nats.prefix,
        &switchboard_eventlog::StreamSpec::of(&switchboard_contract::streams::ACTIONS, 1),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        h.log.clone(),
        nats.js.clone(),
        Arc::new(switchboard_actions::PublicEvents),
        RelayConfig {
            service: "actions".into(),
            prefix: nats.prefix.clone(),
            batch_size: 100,
            poll_interval: Duration::from_millis(20),
        },
    );
    tokio::spawn(relay.run(shutdown.clone()));
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let service =
        switchboard_actions::ActionService::new(h.log.clone(), keyring, common::outbound());
    let subscription = Box::new(JetStreamSubscription::new(
        nats.js.clone(),
        flows.prefixed_name(&nats.prefix),
        &nats.prefix,
        "internal.flows.action_requested",
        SubscriptionConfig::new("actions-requests", h.log.clone()),
    ));
    let consuming =
        tokio::spawn(subscription.run(Arc::new(ActionRequests::new(service)), shutdown.clone()));

    let mut completed = nats
        .client
        .subscribe(format!("{}.internal.actions.action_completed", nats.prefix))
        .await
        .unwrap();
    let mut executed = nats
        .client
        .subscribe(format!("{}.events.{WS}.action.executed", nats.prefix))
        .await
        .unwrap();

    let request = ActionRequested {
        action_id: action.id.clone(),
        variables_json: r#"{"input": {"number": "A-7"}}"#.into(),
        idempotency_key: "run_1:node_3:1".into(),
        run_id: "run_1".into(),
        node_id: "node_3".into(),
        ..Default::default()
    };
    let publish = |n: u64| {
        let event = RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream: StreamRef::new("flow_run", format!("{WS}/run_1")),
            stream_version: n,
            global_position: n as i64,
            transaction_id: 0,
            event_type: ACTION_REQUESTED.into(),
            schema_version: 1,
            payload: request.encode_to_vec(),
            metadata: Metadata {
                workspace_id: WS.into(),
                occurred_at: 1,
                ..Default::default()
            },
            recorded_at: 1,
        };
        let js = nats.js.clone();
        let subject = format!("{}.internal.flows.action_requested", nats.prefix);
        async move {
            js.publish(subject, event.to_envelope().encode_to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    publish(1).await;

    let message = tokio::time::timeout(Duration::from_secs(20), completed.next())
        .await
        .expect("action_completed")
        .unwrap();
    let envelope = EventEnvelope::decode(message.payload.as_ref()).unwrap();
    let done = ExecutionCompleted::decode(envelope.payload.as_slice()).unwrap();
    assert_eq!(
        (
            done.run_id.as_str(),
            done.node_id.as_str(),
            done.idempotency_key.as_str()
        ),
        ("run_1", "node_3", "run_1:node_3:1")
    );
    let result = done.result.unwrap();
    assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
    assert_eq!(result.outputs_json, r#"{"status":"shipped"}"#);
    let public = tokio::time::timeout(Duration::from_secs(20), executed.next())
        .await
        .expect("action.executed")
        .unwrap();
    assert_eq!(
        public
            .headers
            .unwrap()
            .get("sb-event-type")
            .unwrap()
            .as_str(),
        "action.executed"
    );

    // Redelivered (under a new message id, so JetStream cannot dedupe it): no second call.
    publish(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    shutdown.cancel();
    consuming.await.unwrap().unwrap();
    nats.drop().await;
    h.stop().await;
}
