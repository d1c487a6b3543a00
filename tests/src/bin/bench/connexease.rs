//! Connexease operations through the connexease service against its simulator, one at a
//! time and 32 in flight, against the same requests sent directly to the simulator.

use std::sync::Arc;
use std::time::Instant;

use switchboard_eventlog::testing::TestSchema;
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;

use crate::{Row, p50_p99, per_sec, percentile};

/// Connexease operations through the connexease service (gRPC in, claim and outcome
/// recorded, the simulator called over HTTP) against the same HTTP request sent directly to
/// the simulator.
pub(crate) async fn run(rows: &mut Vec<Row>, scale: f64) {
    use switchboard_connexease::client::{HttpConnexease, RetryPolicy};
    use switchboard_connexease::sim::{SimConfig, serve};
    use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient;
    use switchboard_proto::connexease::v1::{ConnectRequest, Connection, RunOperationRequest};

    let shutdown = CancellationToken::new();
    let sim = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            rate_per_second: 1_000_000,
            ..SimConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let schema = TestSchema::new().await;
    let log = switchboard_connexease::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    let outbound = switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap();
    // Unpaced, to measure our overhead rather than the per-connection rate (at most 80/s
    // against the real Connexease).
    let api = HttpConnexease::new(outbound, RetryPolicy::default()).without_pacing();
    let service = switchboard_connexease::ConnexeaseService::new(log, keyring, Arc::new(api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(
        switchboard_connexease::GRPC_SERVICE,
        switchboard_connexease::ConnexeaseApi::new(service).into_server(),
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    let mut client = ConnexeaseClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .connect_workspace(ConnectRequest {
            workspace_id: "ws_bench".into(),
            request_id: String::new(),
            connection: Some(Connection {
                base_url: sim.base_url(),
                access_token: sim.config.token.clone(),
                webhook_secret: sim.config.webhook_secret.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let created: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{}/sim/conversations", sim.base_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let external = created["uuid"].as_str().unwrap().to_owned();
    let operation = |key: String, value: String| RunOperationRequest {
        workspace_id: "ws_bench".into(),
        idempotency_key: key,
        conversation_id: "conv_bench".into(),
        operation: "set_conversation_fields".into(),
        arguments: [
            ("fields.order_number".to_owned(), value),
            ("external_conversation_id".to_owned(), external.clone()),
        ]
        .into(),
    };
    let direct = |_key: String, value: String| {
        http.patch(format!(
            "{}/conversations/{external}/custom_fields/",
            sim.base_url()
        ))
        .bearer_auth(&sim.config.token)
        .header("content-type", "application/json")
        .body(serde_json::json!({"custom_fields": {"order_number": value}}).to_string())
    };
    let n = (500.0 * scale).max(50.0) as usize;
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let response = direct(format!("raw-{i}"), i.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.bytes().await.unwrap();
        raw.push(at.elapsed());
    }
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let at = Instant::now();
        let result = client
            .run_operation(operation(format!("seq-{i}"), i.to_string()))
            .await
            .unwrap()
            .into_inner();
        assert!(result.ok);
        ours.push(at.elapsed());
    }
    raw.sort();
    ours.sort();
    rows.push(Row {
        name: format!("connexease operation latency, {n} sequential"),
        ours: p50_p99(&ours),
        baseline: p50_p99(&raw),
        ratio: percentile(&ours, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        note: "baseline: the same PATCH sent directly to the simulator (ratio of p50s)".into(),
    });

    let total = (2000.0 * scale).max(128.0) as usize;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let request = direct(format!("rawp-{i}"), i.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            request.send().await.unwrap().bytes().await.unwrap();
        }));
    }
    futures::future::join_all(tasks).await;
    let raw_time = started.elapsed();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let mut client = client.clone();
        let request = operation(format!("par-{i}"), i.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            assert!(client.run_operation(request).await.unwrap().into_inner().ok);
        }));
    }
    futures::future::join_all(tasks).await;
    let ours_time = started.elapsed();
    rows.push(Row {
        name: format!("connexease operations, 32 in flight ({total})"),
        ours: per_sec(total, ours_time),
        baseline: per_sec(total, raw_time),
        ratio: ours_time.as_secs_f64() / raw_time.as_secs_f64(),
        note: "baseline: direct PATCHes to the simulator, 32 in flight; ours reads the \
               connection, checks the directory and records two events per operation; \
               unpaced here (production paces each connection at <= 80/s)"
            .into(),
    });
    shutdown.cancel();
    schema.drop().await;
}
