//! http actions through the actions service (render, guard, call, map, record), one at a
//! time and 64 in flight, against direct calls to the same loopback target.

use std::sync::Arc;
use std::time::Instant;

use switchboard_eventlog::testing::TestSchema;
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;

use crate::{Row, p50_p99, per_sec, percentile};

pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
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
        switchboard_actions::ActionsApi::over(log.clone(), keyring, outbound, Default::default())
            .into_server(),
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
