//! End to end: the `switchboard` binary as a real process, called over gRPC, its events
//! seen on NATS, killed with SIGKILL and restarted, and everything still there.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use prost::Message as _;
use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::actions::v1::actions_client::ActionsClient;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, AuthKind, ConnexeaseSpec, CreateActionRequest,
    ExecuteActionRequest, GetActionRequest, HttpAuth, HttpSpec, Outcome,
};
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_proto::conversations::v1::*;
use switchboard_proto::events::v1::{
    Author, Channel, ConversationUpdatedEvent, EventEnvelope, MessageKind,
};
use tonic::transport::Channel as GrpcChannel;

const WS: &str = "ws_e2e";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `switchboard` process and how to start it again the same way.
struct Process {
    args: Vec<String>,
    env: Vec<(String, String)>,
    grpc_port: u16,
    /// Where `dev` runs the Connexease simulator.
    sim_port: u16,
    child: Option<Child>,
    /// Where the process's log (its stdout) goes, appended; nowhere when unset.
    log_file: Option<std::path::PathBuf>,
}

impl Process {
    fn new(args: &[&str], env: Vec<(String, String)>) -> Self {
        let grpc_port = free_port();
        let mut env = env;
        env.push((
            "SWITCHBOARD_GRPC_ADDR".into(),
            format!("127.0.0.1:{grpc_port}"),
        ));
        env.push((
            "SWITCHBOARD_HTTP_ADDR".into(),
            format!("127.0.0.1:{}", free_port()),
        ));
        if !env.iter().any(|(k, _)| k == "SWITCHBOARD_LOG_FILTER") {
            env.push(("SWITCHBOARD_LOG_FILTER".into(), "warn".into()));
        }
        let sim_port = free_port();
        env.push((
            "SWITCHBOARD_CONNEXEASE_SIM_ADDR".into(),
            format!("127.0.0.1:{sim_port}"),
        ));
        Self {
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            grpc_port,
            sim_port,
            child: None,
            log_file: None,
        }
    }

    /// Keeps the process's log in `path`.
    fn log_to(mut self, path: std::path::PathBuf) -> Self {
        self.log_file = Some(path);
        self
    }

    async fn start(&mut self) -> ConversationsClient<GrpcChannel> {
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdout(match &self.log_file {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                None => Stdio::null(),
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchboard");
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}", self.grpc_port);
        // Up to a minute: the suite starts many processes at once on two cores.
        for _ in 0..1200 {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut health =
                    tonic_health::pb::health_client::HealthClient::new(channel.clone());
                let check = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "switchboard.conversations.v1.Conversations".into(),
                    })
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == 1) {
                    return ConversationsClient::new(channel);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("switchboard did not become healthy on {url}");
    }

    /// SIGKILL: no drain, no flush.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status of the graceful shutdown.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    fn run_to_end(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("run switchboard")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn start_and_talk(client: &mut ConversationsClient<GrpcChannel>) -> String {
    let conversation = client
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "e2e-start".into(),
            channel: Channel::Api as i32,
            user_id: "user-e2e".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    client
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: conversation.id.clone(),
            author: Author::Customer as i32,
            kind: MessageKind::Text as i32,
            text: "hello from the other side".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    conversation.id
}

async fn everything(
    client: &mut ConversationsClient<GrpcChannel>,
    id: &str,
) -> (ListConversationsResponse, ListMessagesResponse) {
    let list = client
        .list_conversations(ListConversationsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let messages = client
        .list_messages(ListMessagesRequest {
            workspace_id: WS.into(),
            conversation_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (list, messages)
}

#[tokio::test]
async fn serve_publishes_survives_kill_9_and_rebuilds() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = vec![
        (
            "SWITCHBOARD_DATABASE_URL".into(),
            switchboard_eventlog::testing::database_url(),
        ),
        (
            "SWITCHBOARD_DATABASE_SCHEMA_PREFIX".into(),
            schema_prefix.clone(),
        ),
        (
            "SWITCHBOARD_NATS_URL".into(),
            switchboard_eventlog::testing::nats_url(),
        ),
        ("SWITCHBOARD_NATS_PREFIX".into(), nats.prefix.clone()),
        ("SWITCHBOARD_RELAY_POLL_MS".into(), "20".into()),
    ];
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut client = process.start().await;
    let mut updates = nats
        .client
        .subscribe(format!("{}.events.{WS}.conversation.updated", nats.prefix))
        .await
        .unwrap();

    let id = start_and_talk(&mut client).await;
    let message = tokio::time::timeout(Duration::from_secs(20), updates.next())
        .await
        .expect("conversation.updated on NATS")
        .unwrap();
    let headers = message.headers.clone().unwrap();
    assert_eq!(
        headers.get("sb-event-type").unwrap().as_str(),
        "conversation.updated"
    );
    let envelope = EventEnvelope::decode(message.payload.as_ref()).unwrap();
    let updated = ConversationUpdatedEvent::decode(envelope.payload.as_slice()).unwrap();
    let conversation = updated.conversation.unwrap();
    assert_eq!(conversation.id, id);
    assert_eq!(
        conversation.message_count, 1,
        "the consumer gets the state, not a diff"
    );
    assert!(
        updated
            .changed_fields
            .contains(&"message_count".to_string())
    );
    assert_eq!(updated.message.unwrap().text, "hello from the other side");
    let before = everything(&mut client, &id).await;

    process.kill9();
    let mut client = process.start().await;
    assert_eq!(
        everything(&mut client, &id).await,
        before,
        "every acknowledged write survived"
    );
    // The relay resumes where it stopped: three public events so far, two more now, and
    // never one twice.
    client
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            author: Author::Agent as i32,
            kind: MessageKind::Text as i32,
            text: "after the crash".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stream_name = format!("{}_CONVERSATIONS", nats.prefix);
    let mut published = 0;
    for _ in 0..200 {
        published = nats
            .js
            .get_stream(&stream_name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        if published >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published_later = nats
        .js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!((published, published_later), (5, 5));

    // The read model equals a rebuild from position 0.
    let live = everything(&mut client, &id).await;
    let rebuild = process.run_to_end(&["events", "rebuild", "--service", "conversations", "--yes"]);
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(String::from_utf8_lossy(&rebuild.stdout).contains("rebuilt conversations from"));
    assert_eq!(everything(&mut client, &id).await, live);

    // The log reads back as JSON lines.
    let tail = process.run_to_end(&["events", "tail", "--service", "conversations"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event_type"] == "conversation.message_added")
    );

    assert!(process.terminate().success(), "SIGTERM shuts down cleanly");
    drop_schema(&format!("{schema_prefix}conversations")).await;
    nats.drop().await;
}

#[tokio::test]
async fn dev_mode_needs_nothing_and_survives_kill_9() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut client = process.start().await;
    let id = start_and_talk(&mut client).await;
    let before = everything(&mut client, &id).await;
    let mut actions = actions_client(process.grpc_port).await;
    let action = create_action(&mut actions).await;
    process.kill9();
    let mut client = process.start().await;
    assert_eq!(everything(&mut client, &id).await, before);
    let mut actions = actions_client(process.grpc_port).await;
    let again = actions
        .get_action(GetActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(again, action, "the action and its sealed secret survived");
    assert!(again.http.unwrap().auth.unwrap().secret_set);
    assert!(Path::new(&dir).join("conversations.db").exists());
    assert!(Path::new(&dir).join("encryption.key").exists());
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serve_refuses_to_run_without_a_service_token() {
    let process = Process::new(&[], vec![]);
    let out = process.run_to_end(&["serve", "--services", "conversations"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SWITCHBOARD_SERVICE_TOKEN"));
}

#[tokio::test]
async fn bad_configuration_names_the_variable() {
    let process = Process::new(&[], vec![("SWITCHBOARD_NATS_REPLICAS".into(), "9".into())]);
    let out = process.run_to_end(&["migrate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SWITCHBOARD_NATS_REPLICAS"), "{stderr}");
}

async fn actions_client(port: u16) -> ActionsClient<GrpcChannel> {
    ActionsClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

async fn create_action(client: &mut ActionsClient<GrpcChannel>) -> ActionDefinition {
    client
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: "e2e-action".into(),
            definition: Some(ActionDefinition {
                name: "lookup_order".into(),
                description: "Looks up an order".into(),
                kind: ActionKind::Http as i32,
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: "https://shop.example.com/orders/{{ input.number }}".into(),
                    auth: Some(HttpAuth {
                        kind: AuthKind::Bearer as i32,
                        secret: "secret-token-value".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap()
}

async fn drop_schema(name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&switchboard_eventlog::testing::database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// `dev` runs the Connexease simulator and connects workspaces to it on first use: a
/// `connexease` action assigns a group there, end to end through actions, connexease and
/// the simulator over real HTTP.
#[tokio::test]
async fn dev_runs_connexease_actions_against_the_simulator() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let ours = start_and_talk(&mut conversations).await;
    switchboard_outbound::install_crypto_provider();
    let http = reqwest::Client::new();
    let sim = format!("http://127.0.0.1:{}", process.sim_port);
    let created: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{sim}/sim/conversations"))
            .header("content-type", "application/json")
            .body(r#"{"customer_name": "Lin"}"#)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let external = created["data"]["id"].as_str().unwrap().to_owned();

    let mut actions = actions_client(process.grpc_port).await;
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            definition: Some(ActionDefinition {
                name: "route_to_billing".into(),
                description: "Hands the conversation to the billing team".into(),
                kind: ActionKind::Connexease as i32,
                connexease: Some(ConnexeaseSpec {
                    operation: "assign_group".into(),
                    arguments: [
                        ("group".to_owned(), "billing".to_owned()),
                        (
                            "external_conversation_id".to_owned(),
                            "{{ input.connexease_id }}".to_owned(),
                        ),
                    ]
                    .into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let result = actions
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: action.id,
            variables_json: serde_json::json!({"input": {"connexease_id": external}}).to_string(),
            idempotency_key: "route-1".into(),
            conversation_id: ours,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome(), Outcome::Success, "{result:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{sim}/sim/state"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["conversations"][&external]["group_id"], "grp_billing");
    assert!(process.terminate().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A webhook receiver: what it got (headers and body of each request), and whether it
/// hangs instead of answering.
#[derive(Clone, Default)]
struct Hooks {
    got: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hooks {
    fn got(&self) -> Vec<(axum::http::HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }

    /// What arrived, a repeated delivery (at least once: the same webhook-id again, right
    /// after the first) counted once.
    fn distinct(&self) -> Vec<(axum::http::HeaderMap, String)> {
        let mut got = self.got();
        got.dedup_by(|a, b| header(&a.0, "webhook-id") == header(&b.0, "webhook-id"));
        got
    }

    /// Waits until at least `n` distinct messages arrived (up to a minute); returns them.
    async fn wait_for(&self, n: usize) -> Vec<(axum::http::HeaderMap, String)> {
        for _ in 0..1200 {
            let got = self.distinct();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.distinct()
    }

    /// How many times a message with this webhook-id arrived.
    fn times(&self, webhook_id: &str) -> usize {
        self.got()
            .iter()
            .filter(|(h, _)| header(h, "webhook-id") == webhook_id)
            .count()
    }
}

async fn keep(
    axum::extract::State(hooks): axum::extract::State<Hooks>,
    headers: axum::http::HeaderMap,
    body: String,
) -> &'static str {
    hooks.got.lock().unwrap().push((headers, body));
    if hooks.hang.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    "ok"
}

/// A webhook receiver on loopback.
async fn webhook_receiver() -> (std::net::SocketAddr, Hooks) {
    let hooks = Hooks::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(keep))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hooks)
}

/// The environment of `serve` with webhooks: Postgres, NATS at `nats_url`, the key, and
/// loopback receivers allowed.
fn webhooks_env(schema_prefix: &str, nats_url: &str, nats_prefix: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    vec![
        (
            "SWITCHBOARD_DATABASE_URL".into(),
            switchboard_eventlog::testing::database_url(),
        ),
        (
            "SWITCHBOARD_DATABASE_SCHEMA_PREFIX".into(),
            schema_prefix.to_owned(),
        ),
        ("SWITCHBOARD_NATS_URL".into(), nats_url.to_owned()),
        ("SWITCHBOARD_NATS_PREFIX".into(), nats_prefix.to_owned()),
        ("SWITCHBOARD_RELAY_POLL_MS".into(), "20".into()),
        (
            "SWITCHBOARD_ENCRYPTION_KEY".into(),
            base64::engine::general_purpose::STANDARD.encode([5u8; 32]),
        ),
        ("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into()),
        (
            "SWITCHBOARD_WEBHOOK_ALLOW_HTTP_HOSTS".into(),
            "127.0.0.1".into(),
        ),
        ("SWITCHBOARD_WEBHOOK_TIMEOUT_SECS".into(), "60".into()),
    ]
}

async fn create_endpoint(
    grpc_port: u16,
    receiver: std::net::SocketAddr,
) -> switchboard_proto::webhooks::v1::EndpointWithSecret {
    use switchboard_proto::webhooks::v1::CreateEndpointRequest;
    use switchboard_proto::webhooks::v1::webhooks_client::WebhooksClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    WebhooksClient::new(channel)
        .create_endpoint(CreateEndpointRequest {
            workspace_id: WS.into(),
            url: format!("http://{receiver}/hook"),
            event_types: vec!["conversation.*".into()],
            ordered: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn header(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Production mode: conversations publish to NATS, the webhooks service fans their public
/// events out from JetStream and delivers them signed to a receiver.
#[tokio::test]
async fn serve_delivers_conversation_events_as_signed_webhooks() {
    use base64::Engine as _;
    use hmac::Mac as _;

    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    let created = create_endpoint(process.grpc_port, addr).await;

    let id = start_and_talk(&mut conversations).await;
    let received = hooks.wait_for(2).await;
    assert_eq!(
        received.len(),
        2,
        "conversation.created and conversation.updated"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(created.secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut types = Vec::new();
    for (headers, body) in &received {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.{body}",
                header("webhook-id"),
                header("webhook-timestamp")
            )
            .as_bytes(),
        );
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(header("webhook-signature"), format!("v1,{expected}"));
        assert_eq!(header("webhook-conversation"), id);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["data"]["conversation"]["id"], id.as_str());
        types.push((
            header("webhook-sequence"),
            body["type"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        types,
        [
            ("1".to_owned(), "conversation.created".to_owned()),
            ("2".to_owned(), "conversation.updated".to_owned())
        ],
        "in order, with the conversation's sequence"
    );
    assert_eq!(process.terminate().code(), Some(0));
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
    nats.drop().await;
}

/// NATS goes away and comes back, and the process is killed in the middle of a delivery:
/// no message is lost, and a message sent twice carries the same `webhook-id`.
#[tokio::test]
async fn webhooks_survive_a_nats_outage_and_kill_9_mid_delivery() {
    let nats_port = free_port();
    let store = std::env::temp_dir().join(unique_name());
    let mut nats_server = switchboard_eventlog::testing::spawn_nats_server(nats_port, &store);
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(&schema_prefix, &format!("nats://127.0.0.1:{nats_port}"), "");
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let id = start_and_talk(&mut conversations).await;
    assert_eq!(hooks.wait_for(2).await.len(), 2);

    // NATS down: writes go on (the log is the truth); their webhooks wait for NATS.
    nats_server.kill().unwrap();
    nats_server.wait().unwrap();
    let say = |text: &str| AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: id.clone(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: text.into(),
        ..Default::default()
    };
    conversations
        .add_message(say("while NATS was down"))
        .await
        .unwrap();
    let mut nats_server = switchboard_eventlog::testing::spawn_nats_server(nats_port, &store);
    let got = hooks.wait_for(3).await;
    assert_eq!(got.len(), 3, "the change made while NATS was down arrived");
    assert!(got[2].1.contains("while NATS was down"));

    // Killed while the receiver holds a delivery: after the restart the same message
    // comes again, with the same webhook-id.
    hooks.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    conversations
        .add_message(say("in flight at the kill"))
        .await
        .unwrap();
    let got = hooks.wait_for(4).await;
    assert_eq!(got.len(), 4);
    let in_flight = header(&got[3].0, "webhook-id");
    process.kill9();
    hooks.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    process.start().await;
    for _ in 0..1200 {
        if hooks.times(&in_flight) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hooks.times(&in_flight) >= 2,
        "the delivery cut by the kill came again, with the same webhook-id"
    );
    let got = hooks.distinct();
    assert!(got.last().unwrap().1.contains("in flight at the kill"));
    let sequences: Vec<String> = got
        .iter()
        .map(|(h, _)| header(h, "webhook-sequence"))
        .collect();
    assert_eq!(sequences, ["1", "2", "3", "4"], "nothing lost, in order");

    assert_eq!(process.terminate().code(), Some(0));
    nats_server.kill().unwrap();
    nats_server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&store);
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
}

/// `dev` delivers webhooks with nothing else running: the fan-out tails the producers'
/// logs, and a receiver on the laptop (plain http to 127.0.0.1) is allowed.
#[tokio::test]
async fn dev_delivers_webhooks_and_serves_flows() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let id = start_and_talk(&mut conversations).await;
    let got = hooks.wait_for(2).await;
    let types: Vec<String> = got
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["conversation.created", "conversation.updated"]);
    assert!(
        got.iter()
            .all(|(h, _)| header(h, "webhook-conversation") == id)
    );

    // The flows service is there too: a flow is drafted and published.
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::{
        CreateFlowRequest, End, FlowKind, Graph, PublishRequest, Start, node,
    };
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "hello".into(),
            kind: FlowKind::ConversationFlow as i32,
            draft: Some(Graph {
                nodes: vec![
                    flow_node("start", node::Kind::Start(Start {})),
                    flow_node("end", node::Kind::End(End::default())),
                ],
                edges: vec![flow_edge("start", "end", "")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let published = flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.published_version, 1);
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback order API: order 4711 is shipped; any other number is a 503.
async fn order_api() -> std::net::SocketAddr {
    async fn order(
        axum::extract::Path(number): axum::extract::Path<String>,
    ) -> (axum::http::StatusCode, String) {
        if number == "4711" {
            (
                axum::http::StatusCode::OK,
                r#"{"status":"shipped"}"#.to_owned(),
            )
        } else {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "down".to_owned(),
            )
        }
    }
    let app = axum::Router::new().route("/orders/{number}", axum::routing::get(order));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The agent's messages in a conversation, once at least `n` arrived (up to a minute).
async fn agent_says(
    client: &mut ConversationsClient<GrpcChannel>,
    conversation_id: &str,
    n: usize,
) -> Vec<String> {
    let mut said = Vec::new();
    for _ in 0..1200 {
        let messages = client
            .list_messages(ListMessagesRequest {
                workspace_id: WS.into(),
                conversation_id: conversation_id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        said = messages
            .into_iter()
            .filter(|m| m.author() == Author::Agent)
            .map(|m| m.text)
            .collect();
        if said.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    said
}

/// The seeds' "look it up and act" pattern, end to end in `dev`: a conversation starts
/// the assistant's flow, which asks for the order number, looks the order up through an
/// http action against a loopback API, answers and resolves the conversation; when the
/// API fails, it apologises and hands over.
#[tokio::test]
async fn dev_runs_the_look_it_up_and_act_flow_end_to_end() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    look_it_up_and_act(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same in production mode: three services against Postgres and NATS, every hop
/// between them over JetStream.
#[tokio::test]
async fn serve_runs_the_look_it_up_and_act_flow_over_nats() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    env.push(("SWITCHBOARD_LOG_FILTER".into(), "warn".into()));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,actions,flows,connexease",
            "--allow-unauthenticated",
        ],
        env,
    );
    look_it_up_and_act(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    for service in ["conversations", "actions", "flows", "connexease"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}

async fn look_it_up_and_act(process: &mut Process) {
    use switchboard_proto::actions::v1::ResponseMapping;
    use switchboard_proto::flows::v1::*;

    let mut conversations = process.start().await;
    let api = order_api().await;
    let mut actions = actions_client(process.grpc_port).await;
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "order_status".into(),
                description: "Looks up an order's status".into(),
                kind: ActionKind::Http as i32,
                input_schema: r#"{"type":"object","properties":{"order":{"type":"string"}},"required":["order"]}"#.into(),
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: format!("http://{api}/orders/{{{{ input.order }}}}"),
                    response_mapping: vec![ResponseMapping {
                        name: "status".into(),
                        path: "$.status".into(),
                        kind: "string".into(),
                        ..Default::default()
                    }],
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

    let say = |text: &str| {
        node::Kind::SendMessage(SendMessage {
            text: text.into(),
            ..Default::default()
        })
    };
    let graph = Graph {
        nodes: vec![
            flow_node("start", node::Kind::Start(Start {})),
            flow_node("ask", say("What is your order number?")),
            flow_node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    validation: "number".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "lookup",
                node::Kind::ApiCall(ApiCall {
                    action_id: action.id.clone(),
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            flow_node("status", say("Your order is {{ nodes.lookup.status }}.")),
            flow_node(
                "resolve",
                node::Kind::UpdateConversation(UpdateConversation {
                    status: "resolved".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "sorry",
                say("I'm having trouble reaching that right now, let me get a teammate"),
            ),
            flow_node(
                "handover",
                node::Kind::Connexease(ConnexeaseOperation {
                    operation: "assign_group".into(),
                    arguments: [("group".to_owned(), "billing".to_owned())].into(),
                }),
            ),
            flow_node("done", node::Kind::End(End::default())),
        ],
        edges: vec![
            flow_edge("start", "ask", ""),
            flow_edge("ask", "capture", ""),
            flow_edge("capture", "lookup", ""),
            flow_edge("lookup", "status", "success"),
            flow_edge("lookup", "sorry", "failure"),
            flow_edge("status", "resolve", ""),
            flow_edge("resolve", "done", "success"),
            flow_edge("resolve", "done", "failure"),
            flow_edge("sorry", "handover", ""),
            flow_edge("handover", "done", "success"),
            flow_edge("handover", "done", "failure"),
        ],
        ..Default::default()
    };
    published_flow(
        process.grpc_port,
        "orders",
        FlowKind::ConversationFlow,
        graph,
    )
    .await;

    let start = |request_id: &str| StartConversationRequest {
        workspace_id: WS.into(),
        request_id: request_id.into(),
        channel: Channel::Api as i32,
        ..Default::default()
    };
    let customer = |conversation_id: &str, text: &str| AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: conversation_id.into(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: text.into(),
        ..Default::default()
    };

    // Success: looked up, answered, resolved.
    let happy = conversations
        .start_conversation(start("happy"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    assert_eq!(
        agent_says(&mut conversations, &happy, 1).await,
        ["What is your order number?"]
    );
    conversations
        .add_message(customer(&happy, "4711"))
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &happy, 2).await,
        ["What is your order number?", "Your order is shipped."]
    );
    use switchboard_proto::events::v1::ConversationStatus;
    let mut status = ConversationStatus::Active;
    for _ in 0..600 {
        status = conversations
            .get_conversation(GetConversationRequest {
                workspace_id: WS.into(),
                conversation_id: happy.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .status();
        if status == ConversationStatus::Resolved {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ConversationStatus::Resolved);

    // Failure: the API is down; the run apologises and hands over.
    let unhappy = conversations
        .start_conversation(start("unhappy"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    agent_says(&mut conversations, &unhappy, 1).await;
    conversations
        .add_message(customer(&unhappy, "9999"))
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &unhappy, 2).await[1],
        "I'm having trouble reaching that right now, let me get a teammate"
    );
}

/// A `workflow` action invokes an action workflow of the flows service and answers with
/// the workflow's response.
#[tokio::test]
async fn dev_workflow_actions_answer_with_the_action_workflows_response() {
    use switchboard_proto::actions::v1::WorkflowSpec;
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let conversation = start_and_talk(&mut conversations).await;
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "greet".into(),
            kind: FlowKind::ActionWorkflow as i32,
            draft: Some(Graph {
                nodes: vec![
                    flow_node("start", node::Kind::Start(Start {})),
                    flow_node(
                        "set",
                        node::Kind::SetVariable(SetVariable {
                            variable: "session.greeting".into(),
                            value: "Hello {{ input.name }}".into(),
                        }),
                    ),
                    flow_node("end", node::Kind::End(End::default())),
                ],
                edges: vec![flow_edge("start", "set", ""), flow_edge("set", "end", "")],
                response_schema_json: r#"{"type":"object","required":["greeting"]}"#.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut actions = actions_client(process.grpc_port).await;
    let action = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "greet_customer".into(),
                description: "Greets by name through a workflow".into(),
                kind: ActionKind::Workflow as i32,
                workflow: Some(WorkflowSpec {
                    workflow: "greet".into(),
                    inputs: [("name".to_owned(), "{{ input.name }}".to_owned())].into(),
                    timeout_ms: 10_000,
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
    let result = actions
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: action.id,
            variables_json: serde_json::json!({"input": {"name": "Ada"}}).to_string(),
            idempotency_key: "greet-1".into(),
            conversation_id: conversation,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
    assert!(
        result.outputs_json.contains("Hello Ada"),
        "{}",
        result.outputs_json
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// kill -9 while a run waits on its delay: after the restart the timer fires, once.
#[tokio::test]
async fn a_delay_survives_kill_9_and_fires_once() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    published_flow(
        process.grpc_port,
        "later",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node("wait", node::Kind::Delay(Delay { seconds: 2 })),
                say_node("hello", "Sorry for the wait!"),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "wait", ""),
                flow_edge("wait", "hello", ""),
                flow_edge("hello", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "delayed".into(),
            channel: Channel::Api as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    // The run has armed its timer (it waits); kill the process before it fires.
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.kill9();
    let mut conversations = process.start().await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Sorry for the wait!"]
    );
    // Well past the delay: still exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Sorry for the wait!"]
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

fn flow_node(
    id: &str,
    kind: switchboard_proto::flows::v1::node::Kind,
) -> switchboard_proto::flows::v1::Node {
    switchboard_proto::flows::v1::Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

fn flow_edge(from: &str, to: &str, port: &str) -> switchboard_proto::flows::v1::Edge {
    switchboard_proto::flows::v1::Edge {
        from: from.into(),
        to: to.into(),
        port: port.into(),
    }
}

/// A loopback partner API that records what reaches it: refunds (deduplicated by their
/// `Idempotency-Key`, the way a careful API applies them once; the first one can be held
/// unanswered) and notes.
#[derive(Clone, Default)]
struct Partner {
    refund_requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refunds_applied: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    hold_first_refund: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notes: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    authorizations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Partner {
    async fn serve(&self) -> std::net::SocketAddr {
        async fn refund(
            axum::extract::State(partner): axum::extract::State<Partner>,
            headers: axum::http::HeaderMap,
        ) -> (axum::http::StatusCode, String) {
            let key = header(&headers, "idempotency-key");
            partner.refund_requests.lock().unwrap().push(key.clone());
            if partner
                .hold_first_refund
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                // Never answered: the caller is killed while it waits.
                std::future::pending::<()>().await;
            }
            partner.refunds_applied.lock().unwrap().insert(key);
            (
                axum::http::StatusCode::OK,
                r#"{"refund_id":"rf_1"}"#.to_owned(),
            )
        }
        async fn note(
            axum::extract::State(partner): axum::extract::State<Partner>,
            axum::Json(body): axum::Json<serde_json::Value>,
        ) -> axum::http::StatusCode {
            partner.notes.lock().unwrap().push(body);
            axum::http::StatusCode::NO_CONTENT
        }
        async fn whoami(
            axum::extract::State(partner): axum::extract::State<Partner>,
            headers: axum::http::HeaderMap,
        ) -> String {
            let authorization = header(&headers, "authorization");
            partner.authorizations.lock().unwrap().push(authorization);
            r#"{"name":"Ada"}"#.to_owned()
        }
        let app = axum::Router::new()
            .route("/refunds", axum::routing::post(refund))
            .route("/whoami", axum::routing::post(whoami))
            .route("/notes", axum::routing::post(note))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }
}

/// Creates an http POST action to `url` whose JSON body is `body`.
async fn post_action(
    actions: &mut ActionsClient<GrpcChannel>,
    name: &str,
    url: String,
    body: &str,
    mapping: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> String {
    use switchboard_proto::actions::v1::ResponseMapping;
    actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: name.into(),
                description: format!("{name} at the partner"),
                kind: ActionKind::Http as i32,
                http: Some(HttpSpec {
                    method: "POST".into(),
                    url,
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    body: body.into(),
                    // A short timeout keeps the claim lease of a killed call short:
                    // three timeouts and 30 s.
                    timeout_ms: 1_000,
                    response_mapping: mapping
                        .map(|(name, path)| ResponseMapping {
                            name: name.into(),
                            path: path.into(),
                            kind: "string".into(),
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
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
        .unwrap()
        .id
}

/// Creates and publishes a flow; a conversation flow becomes the workspace assistant's.
async fn published_flow(
    port: u16,
    name: &str,
    kind: switchboard_proto::flows::v1::FlowKind,
    graph: switchboard_proto::flows::v1::Graph,
) -> String {
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::*;
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: name.into(),
            kind: kind as i32,
            draft: Some(graph),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    if kind == FlowKind::ConversationFlow {
        flows
            .save_assistant(SaveAssistantRequest {
                assistant: Some(Assistant {
                    workspace_id: WS.into(),
                    name: format!("{name} assistant"),
                    flow_id: flow.id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    flow.id
}

fn say_node(id: &str, text: &str) -> switchboard_proto::flows::v1::Node {
    flow_node(
        id,
        switchboard_proto::flows::v1::node::Kind::SendMessage(
            switchboard_proto::flows::v1::SendMessage {
                text: text.into(),
                ..Default::default()
            },
        ),
    )
}

async fn customer_says(
    conversations: &mut ConversationsClient<GrpcChannel>,
    conversation_id: &str,
    text: &str,
) {
    conversations
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: conversation_id.into(),
            author: Author::Customer as i32,
            kind: MessageKind::Text as i32,
            text: text.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn new_conversation(
    conversations: &mut ConversationsClient<GrpcChannel>,
    request_id: &str,
) -> String {
    conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: request_id.into(),
            channel: Channel::Api as i32,
            user_id: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id
}

/// kill -9 while a run waits on its action: after the restart the run goes on from the
/// action's outcome, the partner sees the same idempotency key again (so the refund
/// happens once) and the customer hears the answer once.
#[tokio::test]
async fn a_run_waiting_on_an_action_survives_kill_9_and_its_effect_happens_once() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    partner
        .hold_first_refund
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let refund = post_action(
        &mut actions,
        "refund",
        format!("http://{api}/refunds"),
        r#"{"order": "{{ input.order }}"}"#,
        Some(("refund_id", "$.refund_id")),
        &[],
    )
    .await;
    let graph = Graph {
        nodes: vec![
            flow_node("start", node::Kind::Start(Start {})),
            say_node("ask", "Which order should we refund?"),
            flow_node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    validation: "number".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "refund",
                node::Kind::ApiCall(ApiCall {
                    action_id: refund,
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            say_node("done", "Refund {{ nodes.refund.refund_id }} is on its way."),
            say_node("sorry", "The refund did not go through."),
            flow_node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            flow_edge("start", "ask", ""),
            flow_edge("ask", "capture", ""),
            flow_edge("capture", "refund", ""),
            flow_edge("refund", "done", "success"),
            flow_edge("refund", "sorry", "failure"),
            flow_edge("done", "end", ""),
            flow_edge("sorry", "end", ""),
        ],
        ..Default::default()
    };
    published_flow(
        process.grpc_port,
        "refunds",
        FlowKind::ConversationFlow,
        graph,
    )
    .await;
    let conversation = new_conversation(&mut conversations, "refund-kill").await;
    agent_says(&mut conversations, &conversation, 1).await;
    customer_says(&mut conversations, &conversation, "4711").await;

    // The refund request is at the partner, unanswered: kill the whole cluster.
    for _ in 0..600 {
        if !partner.refund_requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(partner.refund_requests.lock().unwrap().len(), 1);
    process.kill9();

    let mut conversations = process.start().await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await,
        [
            "Which order should we refund?",
            "Refund rf_1 is on its way."
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await.len(),
        2,
        "the answer is said once"
    );
    let requests = partner.refund_requests.lock().unwrap().clone();
    assert!(
        requests.len() >= 2,
        "the request was made again: {requests:?}"
    );
    assert!(
        requests.iter().all(|key| *key == requests[0]),
        "every attempt carries the same idempotency key: {requests:?}"
    );
    assert!(requests[0].ends_with("/refund/1"), "{requests:?}");
    assert_eq!(partner.refunds_applied.lock().unwrap().len(), 1);
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ended conversation starts the post-conversation workflows with the transcript, the
/// analysis and the variables its flow collected.
#[tokio::test]
async fn post_conversation_workflows_start_with_the_transcript_analysis_and_variables() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let note = post_action(
        &mut actions,
        "crm_note",
        format!("http://{api}/notes"),
        r#"{"transcript": "{{ input.transcript }}", "order": "{{ input.order }}", "topic": "{{ input.topic }}"}"#,
        None,
        &[],
    )
    .await;
    published_flow(
        process.grpc_port,
        "orders",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                say_node("ask", "What is your order number?"),
                flow_node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.order".into(),
                        validation: "number".into(),
                        ..Default::default()
                    }),
                ),
                say_node("thanks", "Thanks, noted."),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "ask", ""),
                flow_edge("ask", "capture", ""),
                flow_edge("capture", "thanks", ""),
                flow_edge("thanks", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    published_flow(
        process.grpc_port,
        "crm_follow_up",
        FlowKind::PostConversationWorkflow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "note",
                    node::Kind::ApiCall(ApiCall {
                        action_id: note,
                        inputs: [
                            (
                                "transcript".to_owned(),
                                "{% for m in transcript %}{{ m.author }}: {{ m.text }}\n{% endfor %}"
                                    .to_owned(),
                            ),
                            ("order".to_owned(), "{{ session.order }}".to_owned()),
                            ("topic".to_owned(), "{{ analysis.topic }}".to_owned()),
                        ]
                        .into(),
                    }),
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "note", ""),
                flow_edge("note", "end", "success"),
                flow_edge("note", "end", "failure"),
            ],
            ..Default::default()
        },
    )
    .await;

    let conversation = new_conversation(&mut conversations, "post-conversation").await;
    agent_says(&mut conversations, &conversation, 1).await;
    customer_says(&mut conversations, &conversation, "4711").await;
    agent_says(&mut conversations, &conversation, 2).await;
    conversations
        .record_analysis(RecordAnalysisRequest {
            workspace_id: WS.into(),
            request_id: "analysis".into(),
            conversation_id: conversation.clone(),
            topic: "order status".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    conversations
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            request_id: "end".into(),
            conversation_id: conversation.clone(),
            reason: "answered".into(),
        })
        .await
        .unwrap();
    for _ in 0..600 {
        if !partner.notes.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes = partner.notes.lock().unwrap().clone();
    assert_eq!(
        notes,
        [serde_json::json!({
            "transcript": "agent: What is your order number?\ncustomer: 4711\nagent: Thanks, noted.\n",
            "order": "4711",
            "topic": "order status",
        })]
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages sent to one conversation all at once reach its run one at a time, in the
/// conversation's order: a flow that captures five answers gets them in sequence order.
async fn concurrent_messages_are_captured_in_order(process: &mut Process) {
    use switchboard_proto::flows::v1::*;

    let mut conversations = process.start().await;
    let mut nodes = vec![
        flow_node("start", node::Kind::Start(Start {})),
        say_node("ask", "Tell me five things."),
    ];
    let mut edges = vec![flow_edge("start", "ask", "")];
    let mut previous = "ask".to_owned();
    for i in 1..=5 {
        let id = format!("capture_{i}");
        nodes.push(flow_node(
            &id,
            node::Kind::CaptureInput(CaptureInput {
                variable: format!("session.m{i}"),
                ..Default::default()
            }),
        ));
        edges.push(flow_edge(&previous, &id, ""));
        previous = id;
    }
    nodes.push(say_node(
        "echo",
        "{{ session.m1 }},{{ session.m2 }},{{ session.m3 }},{{ session.m4 }},{{ session.m5 }}",
    ));
    nodes.push(flow_node("end", node::Kind::End(End::default())));
    edges.push(flow_edge(&previous, "echo", ""));
    edges.push(flow_edge("echo", "end", ""));
    published_flow(
        process.grpc_port,
        "five_things",
        FlowKind::ConversationFlow,
        Graph {
            nodes,
            edges,
            ..Default::default()
        },
    )
    .await;
    let conversation = new_conversation(&mut conversations, "ordering").await;
    agent_says(&mut conversations, &conversation, 1).await;

    let sends = (1..=5).map(|i| {
        let mut client = conversations.clone();
        let conversation = conversation.clone();
        tokio::spawn(async move {
            customer_says(&mut client, &conversation, &format!("thing {i}")).await;
        })
    });
    for send in futures::future::join_all(sends).await {
        send.unwrap();
    }
    let said = agent_says(&mut conversations, &conversation, 2).await;
    let in_sequence: Vec<String> = conversations
        .list_messages(ListMessagesRequest {
            workspace_id: WS.into(),
            conversation_id: conversation.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .filter(|m| m.author() == Author::Customer)
        .map(|m| m.text)
        .collect();
    assert_eq!(in_sequence.len(), 5);
    assert_eq!(said[1], in_sequence.join(","));
}

#[tokio::test]
async fn dev_hands_concurrent_messages_to_a_run_in_order() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    concurrent_messages_are_captured_in_order(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serve_hands_concurrent_messages_to_a_run_in_order_over_nats() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,flows",
            "--allow-unauthenticated",
        ],
        env,
    );
    concurrent_messages_are_captured_in_order(&mut process).await;
    assert_eq!(process.terminate().code(), Some(0));
    for service in ["conversations", "flows"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}

/// Secure metadata given when a conversation starts reaches the partner API through an
/// action input that reads `secure.*`, and is nowhere in plain text on disk: not in any
/// service's events, read models, inboxes or execution records.
#[tokio::test]
async fn secure_metadata_reaches_the_partner_and_no_file_holds_it() {
    use switchboard_proto::flows::v1::*;

    const TOKEN: &str = "tok-SECRET-4711-do-not-store";
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    // Everything the process logs, spans and their fields included, down to debug.
    let log = std::env::temp_dir().join(format!("{}.log", unique_name()));
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![
            ("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into()),
            ("SWITCHBOARD_LOG_FILTER".into(), "debug".into()),
        ],
    )
    .log_to(log.clone());
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let whoami = post_action(
        &mut actions,
        "whoami",
        format!("http://{api}/whoami"),
        "{}",
        Some(("name", "$.name")),
        &[("Authorization", "Bearer {{ input.token }}")],
    )
    .await;
    published_flow(
        process.grpc_port,
        "greeter",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "whoami",
                    node::Kind::ApiCall(ApiCall {
                        action_id: whoami,
                        inputs: [("token".to_owned(), "{{ secure.api_token }}".to_owned())].into(),
                    }),
                ),
                say_node("hello", "Hello {{ nodes.whoami.name }}!"),
                say_node("sorry", "I could not sign you in."),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "whoami", ""),
                flow_edge("whoami", "hello", "success"),
                flow_edge("whoami", "sorry", "failure"),
                flow_edge("hello", "end", ""),
                flow_edge("sorry", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;

    // Bad secure metadata is refused naming the key, never echoing the value.
    let refused = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "too-long".into(),
            channel: Channel::Api as i32,
            secure_metadata: [("api_token".to_owned(), "x".repeat(5000))].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(!refused.message().contains("xxxx"), "{refused:?}");

    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "secure".into(),
            channel: Channel::Api as i32,
            secure_metadata: [("api_token".to_owned(), TOKEN.to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Hello Ada!"]
    );
    assert_eq!(
        *partner.authorizations.lock().unwrap(),
        [format!("Bearer {TOKEN}")]
    );
    assert_eq!(process.terminate().code(), Some(0));

    fn files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut stored = Vec::new();
    files(&dir, &mut stored);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("action executed") && logged.contains("whoami"),
        "the log has the run's spans and events"
    );
    stored.push(log.clone());
    assert!(
        stored.len() > 3,
        "the services wrote their logs: {stored:?}"
    );
    for file in stored {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the secure value in plain text",
            file.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// The agent's messages themselves (forms and buttons included), once `n` arrived.
async fn agent_messages(
    client: &mut ConversationsClient<GrpcChannel>,
    conversation_id: &str,
    n: usize,
) -> Vec<switchboard_proto::events::v1::Message> {
    agent_says(client, conversation_id, n).await;
    client
        .list_messages(ListMessagesRequest {
            workspace_id: WS.into(),
            conversation_id: conversation_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .filter(|m| m.author() == Author::Agent)
        .collect()
}

/// A flow sends a form and buttons; the customer's form submission is captured as an
/// object and the button click as its value.
#[tokio::test]
async fn dev_runs_capture_form_submissions_and_button_clicks() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let field = |name: &str, kind: &str| FormFieldSpec {
        name: name.into(),
        label: name.into(),
        r#type: kind.into(),
        required: true,
        ..Default::default()
    };
    let capture = |variable: &str, validation: &str| {
        node::Kind::CaptureInput(CaptureInput {
            variable: variable.into(),
            validation: validation.into(),
            ..Default::default()
        })
    };
    published_flow(
        process.grpc_port,
        "sign_up",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "ask",
                    node::Kind::SendMessage(SendMessage {
                        text: "Who are you?".into(),
                        form: vec![field("name", "text"), field("email", "email")],
                        ..Default::default()
                    }),
                ),
                flow_node("contact", capture("session.contact", "form")),
                flow_node(
                    "offer",
                    node::Kind::SendMessage(SendMessage {
                        text: "News by email?".into(),
                        buttons: vec![
                            ButtonOption {
                                label: "Yes please".into(),
                                value: "yes".into(),
                            },
                            ButtonOption {
                                label: "No thanks".into(),
                                value: "no".into(),
                            },
                        ],
                        ..Default::default()
                    }),
                ),
                flow_node("news", capture("session.news", "none")),
                say_node(
                    "thanks",
                    "Thanks {{ session.contact.name }} ({{ session.contact.email }}), news: {{ session.news }}",
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "ask", ""),
                flow_edge("ask", "contact", ""),
                flow_edge("contact", "offer", ""),
                flow_edge("offer", "news", ""),
                flow_edge("news", "thanks", ""),
                flow_edge("thanks", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = new_conversation(&mut conversations, "sign-up").await;
    let form = agent_messages(&mut conversations, &conversation, 1).await[0].clone();
    assert_eq!(form.kind(), MessageKind::Form);
    let fields: Vec<String> = form
        .form
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(fields, ["name", "email"]);
    conversations
        .submit_form(SubmitFormRequest {
            workspace_id: WS.into(),
            request_id: "form".into(),
            conversation_id: conversation.clone(),
            form_message_id: form.id,
            values: [
                ("name".to_owned(), "Ada".to_owned()),
                ("email".to_owned(), "ada@example.com".to_owned()),
            ]
            .into(),
        })
        .await
        .unwrap();
    let offer = agent_messages(&mut conversations, &conversation, 2).await[1].clone();
    assert_eq!(offer.kind(), MessageKind::Buttons);
    let yes = offer
        .buttons
        .iter()
        .find(|b| b.label == "Yes please")
        .unwrap();
    conversations
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            request_id: "click".into(),
            conversation_id: conversation.clone(),
            buttons_message_id: offer.id.clone(),
            button_id: yes.button_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &conversation, 3).await[2],
        "Thanks Ada (ada@example.com), news: yes"
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
