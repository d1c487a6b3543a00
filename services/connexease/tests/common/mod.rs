//! A real connexease service (its gRPC API and its webhook endpoint) against the Connexease
//! simulator over real HTTP on loopback, with a real conversations service beside it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use switchboard_connexease::client::{HttpConnexease, RetryPolicy};
use switchboard_connexease::sim::{self, RunningSim, SimConfig};
use switchboard_connexease::{ConnexeaseService, ConnexeaseStore};
use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_eventlog::{
    EventLog, LogTailSubscription, StoreConfig, Subscription, SubscriptionConfig,
};
use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient;
use switchboard_proto::connexease::v1::{ConnectRequest, Connection};
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_runtime::GrpcServer;
use switchboard_secrets::Keyring;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const WS: &str = "ws_helpdesk";
pub const TOKEN: &str = "cx_live_token_never_logged_7";
pub const WEBHOOK_SECRET: &str = "whsec_connexease_sim_0123456789";

pub struct Harness {
    pub client: ConnexeaseClient<Channel>,
    pub conversations: ConversationsClient<Channel>,
    pub log: EventLog,
    pub sim: RunningSim,
    /// Where our webhook endpoint listens.
    pub webhooks: SocketAddr,
    pub http: reqwest::Client,
    pub schema: TestSchema,
    conversations_db: PathBuf,
    shutdown: CancellationToken,
}

/// Every event of `log`, in log order. The log's reads are gap-safe: while another
/// transaction of the database is open (other tests run beside this one) they hold back
/// what committed after it, so this reads until it has every event the log holds.
pub async fn all_events(log: &EventLog) -> Vec<switchboard_eventlog::RecordedEvent> {
    for _ in 0..400 {
        let mut all = Vec::new();
        let mut after = switchboard_eventlog::LogPosition::START;
        loop {
            let batch = log.read_all(after, 500).await.unwrap();
            let Some(last) = batch.last() else { break };
            after = last.position();
            all.extend(batch);
        }
        if all.len() as u64 == log.count_events().await.unwrap() {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the log's events could not all be read within 10 s");
}

/// Fast retries, so tests of 429 and 5xx take milliseconds.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(100),
        // A stalled change is given up on quickly, then read back.
        timeout: std::time::Duration::from_secs(2),
        ..RetryPolicy::default()
    }
}

pub fn keyring() -> Arc<Keyring> {
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    Arc::new(Keyring::from_base64(&[key]).unwrap())
}

pub fn outbound() -> switchboard_outbound::GuardedClient {
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap()
}

impl Harness {
    pub async fn start(sim_rate: u32) -> Self {
        Self::start_on(TestSchema::new().await, sim_rate).await
    }

    /// On an existing schema (a restart).
    pub async fn start_on(schema: TestSchema, sim_rate: u32) -> Self {
        switchboard_outbound::install_crypto_provider();
        let log = switchboard_connexease::open_log(&schema.store_config())
            .await
            .unwrap();
        log.migrate().await.unwrap();
        let shutdown = CancellationToken::new();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhooks = http_listener.local_addr().unwrap();
        let sim = sim::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            SimConfig {
                token: TOKEN.into(),
                webhook_secret: WEBHOOK_SECRET.into(),
                webhook_url: Some(format!("http://{webhooks}/connexease/webhooks/{WS}")),
                rate_per_second: sim_rate,
                webhook_attempts: 5,
                webhook_retry_delay: std::time::Duration::from_millis(50),
                ..SimConfig::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let api = Arc::new(HttpConnexease::new(outbound(), quick_retries()));
        let service = ConnexeaseService::new(log.clone(), keyring(), api);
        let conversations_db = std::env::temp_dir().join(format!("{}-conv.db", unique_name()));
        let conversations_log = switchboard_conversations::open_log(&StoreConfig::Sqlite {
            path: conversations_db.clone(),
        })
        .await
        .unwrap();
        conversations_log.migrate().await.unwrap();
        let store = ConnexeaseStore::new(log.clone());
        let inbound = switchboard_connexease::inbound::router(service.clone(), store.clone());
        // What the deliveries change is carried out from the log, as the host runs it.
        let apply = switchboard_connexease::inbound::Apply::new(
            service.clone(),
            store,
            Some(Arc::new(
                switchboard_clients::ConversationsClient::connect_lazy(
                    &switchboard_clients::ClientConfig::new(
                        format!("http://{grpc_addr}"),
                        None,
                        "connexease",
                    ),
                )
                .unwrap(),
            )),
        );
        let tail = LogTailSubscription::new(
            log.clone(),
            Arc::new(switchboard_connexease::inbound::Apply::wants),
            SubscriptionConfig::new("connexease-inbound", log.clone()),
        );
        let token = shutdown.clone();
        tokio::spawn(async move { Box::new(tail).run(Arc::new(apply), token).await });
        let server = GrpcServer::new()
            .add_service(
                switchboard_connexease::GRPC_SERVICE,
                switchboard_connexease::ConnexeaseApi::new(service).into_server(),
            )
            .add_service(
                switchboard_conversations::GRPC_SERVICE,
                switchboard_conversations::ConversationsApi::over(conversations_log).into_server(),
            );
        let token = shutdown.clone();
        tokio::spawn(async move { server.serve(grpc_listener, token).await.unwrap() });
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(http_listener, inbound)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap()
        });
        Self {
            client: ConnexeaseClient::connect(format!("http://{grpc_addr}"))
                .await
                .unwrap(),
            conversations: ConversationsClient::connect(format!("http://{grpc_addr}"))
                .await
                .unwrap(),
            log,
            sim,
            webhooks,
            http: reqwest::Client::new(),
            schema,
            conversations_db,
            shutdown,
        }
    }

    pub fn connection(&self) -> Connection {
        Connection {
            base_url: self.sim.base_url(),
            access_token: TOKEN.into(),
            webhook_secret: WEBHOOK_SECRET.into(),
            ..Default::default()
        }
    }

    pub async fn connect(&mut self) -> Connection {
        self.client
            .connect_workspace(ConnectRequest {
                workspace_id: WS.into(),
                request_id: String::new(),
                connection: Some(self.connection()),
            })
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap()
    }

    /// A conversation a customer starts in Connexease, as Connexease shows it.
    pub async fn sim_conversation(&self, external_id: Option<&str>) -> serde_json::Value {
        let body = serde_json::json!({
            "customer_name": "Grace", "customer_email": "grace@example.com",
            "external_id": external_id,
        });
        self.sim_post("/sim/conversations", body).await
    }

    /// POSTs `body` to the simulator's `path`; its answer.
    pub async fn sim_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&answer).unwrap_or_default()
    }

    /// The simulator's deliveries so far: hook, attempt, status, bytes.
    pub async fn sim_deliveries(&self) -> Vec<serde_json::Value> {
        self.get_json("/sim/deliveries")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The next `count` changes the simulator gets are not answered; `apply`: whether
    /// they happen anyway.
    pub async fn stall_next(&self, count: u32, apply: bool) {
        self.http
            .post(format!(
                "{}/sim/stalls?count={count}&apply={apply}",
                self.sim.base_url()
            ))
            .send()
            .await
            .unwrap();
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        let answer = self
            .http
            .get(format!("{}{path}", self.sim.base_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    pub async fn sim_state(&self) -> serde_json::Value {
        self.get_json("/sim/state").await
    }

    pub async fn sim_requests(&self) -> Vec<serde_json::Value> {
        self.get_json("/sim/requests")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn fail_next(&self, count: u32, status: u16) {
        self.http
            .post(format!(
                "{}/sim/failures?count={count}&status={status}",
                self.sim.base_url()
            ))
            .send()
            .await
            .unwrap();
    }

    /// Stops the servers, keeping the schema for a restart.
    pub async fn stop_keeping_schema(self) -> TestSchema {
        self.shutdown.cancel();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.conversations_db.display()));
        }
        self.schema
    }

    pub async fn stop(self) {
        self.stop_keeping_schema().await.drop().await;
    }
}
