//! What the journeys share: a `switchboard` process started and restarted the same way,
//! loopback receivers and a partner API that record what reaches them, gRPC clients, and
//! the steps every journey takes (start a conversation, say something, publish a flow, read
//! what the agent said, drop a test's schemas).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchboard_proto::actions::v1::actions_client::ActionsClient;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, AuthKind, CreateActionRequest, HttpAuth, HttpSpec,
};
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_proto::conversations::v1::*;
use switchboard_proto::events::v1::{Author, Channel, MessageKind};
use tonic::transport::Channel as GrpcChannel;

/// The workspace every journey works in (each test has its own schemas or data directory).
pub const WS: &str = "ws_e2e";

/// A loopback port that was free a moment ago, below the kernel's ephemeral range
/// (32768 and up), so an outgoing connection of another test cannot take it before the
/// process that is to listen on it starts.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// One `switchboard` process and how to start it again the same way.
pub struct Process {
    /// The `switchboard` binary (see [`switchboard_tests::switchboard_bin`]).
    bin: std::path::PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub grpc_port: u16,
    /// Where the REST API (the gateway) listens.
    pub api_port: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub http_port: u16,
    /// Where `dev` runs the Connexease simulator.
    pub sim_port: u16,
    child: Option<Child>,
    /// Where the process's log (its stdout) goes, appended; nowhere when unset.
    log_file: Option<std::path::PathBuf>,
}

impl Process {
    pub fn new(args: &[&str], env: Vec<(String, String)>) -> Self {
        let grpc_port = free_port();
        let mut env = env;
        env.push((
            "SWITCHBOARD_GRPC_ADDR".into(),
            format!("127.0.0.1:{grpc_port}"),
        ));
        let http_port = free_port();
        env.push((
            "SWITCHBOARD_HTTP_ADDR".into(),
            format!("127.0.0.1:{http_port}"),
        ));
        let api_port = free_port();
        env.push((
            "SWITCHBOARD_API_ADDR".into(),
            format!("127.0.0.1:{api_port}"),
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
            bin: switchboard_tests::switchboard_bin(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            grpc_port,
            api_port,
            http_port,
            sim_port,
            child: None,
            log_file: None,
        }
    }

    /// Keeps the process's log in `path`.
    pub fn log_to(mut self, path: std::path::PathBuf) -> Self {
        self.log_file = Some(path);
        self
    }

    pub async fn start(&mut self) -> ConversationsClient<GrpcChannel> {
        let child = Command::new(&self.bin)
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
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status of the graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running process: `STOP` freezes it as a
    /// hung host would, its connections open and silent.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    pub fn run_to_end(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
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

pub async fn start_and_talk(client: &mut ConversationsClient<GrpcChannel>) -> String {
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

pub async fn everything(
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

pub async fn actions_client(port: u16) -> ActionsClient<GrpcChannel> {
    ActionsClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

pub async fn create_action(client: &mut ActionsClient<GrpcChannel>) -> ActionDefinition {
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

pub async fn drop_schema(name: &str) {
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

/// A webhook receiver: what it got (headers and body of each request), and whether it
/// hangs instead of answering.
#[derive(Clone, Default)]
pub struct Hooks {
    got: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    pub hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hooks {
    pub fn got(&self) -> Vec<(axum::http::HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }

    /// What arrived, a repeated delivery (at least once: the same webhook-id again)
    /// counted once, where it first arrived.
    pub fn distinct(&self) -> Vec<(axum::http::HeaderMap, String)> {
        let mut seen = std::collections::HashSet::new();
        self.got()
            .into_iter()
            .filter(|(h, _)| seen.insert(header(h, "webhook-id")))
            .collect()
    }

    /// Waits until at least `n` distinct messages arrived (up to a minute); returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<(axum::http::HeaderMap, String)> {
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
    pub fn times(&self, webhook_id: &str) -> usize {
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
pub async fn webhook_receiver() -> (std::net::SocketAddr, Hooks) {
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
pub fn webhooks_env(
    schema_prefix: &str,
    nats_url: &str,
    nats_prefix: &str,
) -> Vec<(String, String)> {
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

pub async fn create_endpoint(
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

pub fn header(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The agent's messages in a conversation, once at least `n` arrived (up to a minute).
pub async fn agent_says(
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

/// The agent's messages themselves (forms and buttons included), once `n` arrived.
pub async fn agent_messages(
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

pub async fn customer_says(
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

pub async fn new_conversation(
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

pub fn flow_node(
    id: &str,
    kind: switchboard_proto::flows::v1::node::Kind,
) -> switchboard_proto::flows::v1::Node {
    switchboard_proto::flows::v1::Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

pub fn flow_edge(from: &str, to: &str, port: &str) -> switchboard_proto::flows::v1::Edge {
    switchboard_proto::flows::v1::Edge {
        from: from.into(),
        to: to.into(),
        port: port.into(),
    }
}

pub fn say_node(id: &str, text: &str) -> switchboard_proto::flows::v1::Node {
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

/// Creates and publishes a flow; a conversation flow becomes the workspace assistant's.
pub async fn published_flow(
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

/// A loopback partner API that records what reaches it: refunds (deduplicated by their
/// `Idempotency-Key`, the way a careful API applies them once; the first one can be held
/// unanswered) and notes.
#[derive(Clone, Default)]
pub struct Partner {
    pub refund_requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub refunds_applied: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    pub hold_first_refund: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub notes: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub authorizations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Partner {
    pub async fn serve(&self) -> std::net::SocketAddr {
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
pub async fn post_action(
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

/// The environment of `serve` on the test Postgres (schemas `{schema_prefix}<service>`) and
/// `nats` (its subject prefix), with a fast relay.
pub fn serve_env(
    schema_prefix: &str,
    nats: &switchboard_eventlog::testing::TestNats,
) -> Vec<(String, String)> {
    vec![
        (
            "SWITCHBOARD_DATABASE_URL".into(),
            switchboard_eventlog::testing::database_url(),
        ),
        (
            "SWITCHBOARD_DATABASE_SCHEMA_PREFIX".into(),
            schema_prefix.to_owned(),
        ),
        (
            "SWITCHBOARD_NATS_URL".into(),
            switchboard_eventlog::testing::nats_url(),
        ),
        ("SWITCHBOARD_NATS_PREFIX".into(), nats.prefix.clone()),
        ("SWITCHBOARD_RELAY_POLL_MS".into(), "20".into()),
    ]
}

/// How a [`SilentLink`] treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Forwarding,
    /// A host frozen or cut off: connections held, nothing answered, no FIN.
    Silent,
    /// A database restarting and held down: connections closed at once.
    Down,
}

/// A TCP proxy to the test Postgres whose link can fail: [`SilentLink::cut`] drops every
/// connection it carried and takes new ones without ever answering (a host frozen or cut
/// off, no FIN), [`SilentLink::down`] drops them and closes new ones at once (a database
/// restarting, then down), [`SilentLink::restore`] forwards again.
pub struct SilentLink {
    pub port: u16,
    state: tokio::sync::watch::Sender<LinkState>,
}

impl SilentLink {
    pub async fn to_postgres() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, watch) = tokio::sync::watch::channel(LinkState::Forwarding);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let now = *watch.borrow();
                    match now {
                        LinkState::Down => return,
                        LinkState::Silent => {
                            let _ = watch.wait_for(|s| *s == LinkState::Forwarding).await;
                            return;
                        }
                        LinkState::Forwarding => {}
                    }
                    let Ok(mut upstream) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {}
                        _ = watch.wait_for(|s| *s != LinkState::Forwarding) => {}
                    }
                });
            }
        });
        Self { port, state }
    }

    /// The database URL through this link.
    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    pub fn cut(&self) {
        self.state.send_replace(LinkState::Silent);
    }

    pub fn down(&self) {
        self.state.send_replace(LinkState::Down);
    }

    pub fn restore(&self) {
        self.state.send_replace(LinkState::Forwarding);
    }
}

/// The seeds' `order_status` http action: GET `http://{api}/orders/{{ input.order }}`,
/// its `status` mapped from the answer.
pub async fn order_status_action(grpc_port: u16, api: std::net::SocketAddr) -> ActionDefinition {
    use switchboard_proto::actions::v1::ResponseMapping;
    actions_client(grpc_port)
        .await
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
        .unwrap()
}

/// Steady load: a customer message to each of `ids` in turn, every `every`, until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<std::collections::HashMap<String, usize>>,
}

impl Load {
    pub fn start(
        client: ConversationsClient<GrpcChannel>,
        ids: &[String],
        every: Duration,
    ) -> Self {
        Self::start_with(client, ids, every, false)
    }

    /// Load through a fault: a call that fails is not counted (it must fail as
    /// `UNAVAILABLE`).
    pub fn through_faults(
        client: ConversationsClient<GrpcChannel>,
        ids: &[String],
        every: Duration,
    ) -> Self {
        Self::start_with(client, ids, every, true)
    }

    fn start_with(
        client: ConversationsClient<GrpcChannel>,
        ids: &[String],
        every: Duration,
        tolerate_failures: bool,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (stop, ids, mut client) = (stop.clone(), ids.to_vec(), client);
            async move {
                let mut sent = std::collections::HashMap::<String, usize>::new();
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let id = &ids[n % ids.len()];
                    n += 1;
                    let mut request = tonic::Request::new(AddMessageRequest {
                        workspace_id: WS.into(),
                        conversation_id: id.clone(),
                        author: Author::Customer as i32,
                        kind: MessageKind::Text as i32,
                        text: format!("message {n}"),
                        ..Default::default()
                    });
                    request.set_timeout(Duration::from_secs(10));
                    match client.add_message(request).await {
                        Ok(_) => *sent.entry(id.clone()).or_default() += 1,
                        // Only a fault makes a call fail (the store out of reach): the
                        // message was not acknowledged, so it is not counted.
                        Err(status) if tolerate_failures => {
                            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        }
                        Err(status) => panic!("{status:?}"),
                    }
                    tokio::time::sleep(every).await;
                }
                sent
            }
        });
        Self { stop, task }
    }

    /// Stops the load; how many messages each conversation was sent.
    pub async fn stop(self) -> std::collections::HashMap<String, usize> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Each conversation's webhook sequence numbers, a message sent again counted once.
pub fn lanes(hooks: &Hooks) -> std::collections::HashMap<String, Vec<u64>> {
    let mut lanes = std::collections::HashMap::<String, Vec<u64>>::new();
    for (headers, _) in hooks.distinct() {
        lanes
            .entry(header(&headers, "webhook-conversation"))
            .or_default()
            .push(header(&headers, "webhook-sequence").parse().unwrap());
    }
    lanes
}

/// The process holding the lease `name` in `schema` (its holder names the pid), if any
/// holds it now.
pub async fn lease_holder_pid(schema: &str, name: &str) -> Option<u32> {
    let pool = sqlx::PgPool::connect(&switchboard_eventlog::testing::database_url())
        .await
        .unwrap();
    let holder: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT holder FROM \"{schema}\".leases WHERE name = $1 AND expires_at > clock_timestamp()"
    )))
    .bind(name)
    .fetch_optional(&pool)
    .await
    .ok()
    .flatten();
    pool.close().await;
    holder.and_then(|(holder,)| holder.split('/').nth(1)?.parse().ok())
}

/// A process's `/metrics` text.
pub async fn metrics(http_port: u16) -> String {
    switchboard_outbound::install_crypto_provider();
    reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `/readyz` of a process: its status and body.
pub async fn readyz(http_port: u16) -> (u16, String) {
    switchboard_outbound::install_crypto_provider();
    let response = reqwest::get(format!("http://127.0.0.1:{http_port}/readyz"))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Saves the scripted model `model` as the workspace's model provider named `name`, with
/// `api_key` when given; answers its id.
pub async fn model_provider(
    flows: &mut switchboard_proto::flows::v1::flows_client::FlowsClient<GrpcChannel>,
    name: &str,
    model: &switchboard_flows::model_sim::FakeModel,
    api_key: Option<&str>,
) -> String {
    use switchboard_proto::flows::v1::{ModelProvider, SaveModelProviderRequest};
    flows
        .save_model_provider(SaveModelProviderRequest {
            provider: Some(ModelProvider {
                workspace_id: WS.into(),
                name: name.into(),
                base_url: model.base_url(),
                model: "scripted-1".into(),
                api_key: api_key.unwrap_or_default().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}
