//! The REST API over real HTTP: a gateway on loopback in front of a real conversations
//! service (gRPC on loopback), both on SQLite logs in a temporary directory. Every JSON
//! answer is checked against the OpenAPI document the gateway serves.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_clients::{
    ActionsClient, ClientConfig, ConversationsClient, FlowsClient, InsightsClient, WebhooksClient,
};
use switchboard_eventlog::StoreConfig;
use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_gateway::ApiKeys;
use switchboard_gateway::rest::{AppState, router};
use switchboard_runtime::GrpcServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A gateway and a conversations service, and keys of two workspaces.
struct Api {
    base: String,
    http: reqwest::Client,
    keys: ApiKeys,
    /// The conversations service's log, to see what a request recorded.
    conversations_log: switchboard_eventlog::EventLog,
    /// The insights service's log, fed from the conversations log by [`Api::project`].
    insights_log: switchboard_eventlog::EventLog,
    /// Workspace A: `read` + `write` (key id `a_id`), and `admin`.
    a: String,
    a_id: String,
    a_admin: String,
    /// Workspace B: `read` + `write`.
    b: String,
    document: Value,
    shutdown: CancellationToken,
    /// The Postgres schemas of the services' logs, dropped with the API.
    schemas: Vec<TestSchema>,
    /// What another gateway replica is made of: the services, the gateway's store, the rate.
    replica: (SocketAddr, StoreConfig, u32),
    _dir: tempdir::Dir,
}

/// Where the services keep their logs.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named test on both backends: `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Backend::Sqlite).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await
                }
            }
        )*
    };
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("gateway-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Api {
    async fn start(backend: Backend) -> Self {
        Self::with_rate(backend, 1_000_000).await
    }

    /// A gateway whose keys may make `rate_per_minute` requests a minute.
    async fn with_rate(backend: Backend, rate_per_minute: u32) -> Self {
        switchboard_outbound::install_crypto_provider();
        let dir = tempdir::Dir::new();
        let mut schemas = Vec::new();
        // Sweeps stale schemas and checks Postgres is there, once.
        let postgres_url = match backend {
            Backend::Postgres => {
                let probe = TestSchema::new().await;
                probe.url.clone()
            }
            Backend::Sqlite => String::new(),
        };
        let mut store = |name: &str| match backend {
            Backend::Sqlite => StoreConfig::Sqlite {
                path: dir.0.join(format!("{name}.db")),
            },
            Backend::Postgres => {
                let schema = TestSchema {
                    url: postgres_url.clone(),
                    name: format!("{}_{name}", unique_name()),
                };
                let config = schema.store_config();
                schemas.push(schema);
                config
            }
        };
        let shutdown = CancellationToken::new();
        let conversations_log = switchboard_conversations::open_log(&store("conversations"))
            .await
            .unwrap();
        conversations_log.migrate().await.unwrap();
        let conversations_log_clone = conversations_log.clone();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let flows_log = switchboard_flows::open_log(&store("flows")).await.unwrap();
        flows_log.migrate().await.unwrap();
        let webhooks_log = switchboard_webhooks::open_log(&store("webhooks"))
            .await
            .unwrap();
        webhooks_log.migrate().await.unwrap();
        let insights_log = switchboard_insights::open_log(&store("insights"))
            .await
            .unwrap();
        insights_log.migrate().await.unwrap();
        let keyring = std::sync::Arc::new(
            switchboard_secrets::Keyring::from_base64(&[base64_key()]).unwrap(),
        );
        let keyring_for_flows = keyring.clone();
        let webhooks_settings = switchboard_webhooks::Settings {
            urls: switchboard_webhooks::domain::UrlRules {
                allow_http_hosts: vec!["127.0.0.1".into()],
                policy: switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
            },
            ..Default::default()
        };
        let actions_log = switchboard_actions::open_log(&store("actions"))
            .await
            .unwrap();
        actions_log.migrate().await.unwrap();
        let outbound = switchboard_outbound::GuardedClient::new(
            switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
            &switchboard_outbound::ClientOptions::default(),
        )
        .unwrap();
        let actions_api = switchboard_actions::ActionsApi::over(
            actions_log,
            keyring.clone(),
            outbound,
            Default::default(),
        );
        let server = GrpcServer::new()
            .add_service(
                switchboard_conversations::GRPC_SERVICE,
                switchboard_conversations::ConversationsApi::over(conversations_log.clone())
                    .into_server(),
            )
            .add_service(switchboard_actions::GRPC_SERVICE, actions_api.into_server())
            .add_service(
                switchboard_webhooks::GRPC_SERVICE,
                switchboard_webhooks::WebhooksApi::new(switchboard_webhooks::WebhooksService::new(
                    webhooks_log,
                    keyring,
                    webhooks_settings,
                ))
                .into_server(),
            )
            .add_service(
                switchboard_insights::GRPC_SERVICE,
                switchboard_insights::InsightsApi::over(insights_log.clone()).into_server(),
            )
            .add_service(
                switchboard_flows::GRPC_SERVICE,
                switchboard_flows::FlowsApi::new(switchboard_flows::FlowsService::new(
                    flows_log.clone(),
                    None,
                ))
                .with_providers(switchboard_flows::providers::Providers::new(
                    flows_log,
                    Some(keyring_for_flows),
                    std::sync::Arc::new(switchboard_flows::model::OpenAiCompatible::new(
                        switchboard_outbound::GuardedClient::new(
                            switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
                            &Default::default(),
                        )
                        .unwrap(),
                    )),
                ))
                .into_server(),
            );
        tokio::spawn(server.serve(grpc, shutdown.clone()));
        let log_for_test = conversations_log_clone;

        let gateway_config = store("gateway");
        let gateway_log = switchboard_gateway::open_log(&gateway_config)
            .await
            .unwrap();
        gateway_log.migrate().await.unwrap();
        let keys = ApiKeys::new(gateway_log);
        let addr = serve_gateway(grpc_addr, keys.clone(), rate_per_minute, &shutdown).await;
        let key = |ws: &'static str, scopes: &'static [&'static str]| {
            let keys = keys.clone();
            async move {
                let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
                keys.create(
                    ws,
                    &uuid::Uuid::now_v7().to_string(),
                    "test",
                    &scopes,
                    0,
                    "cli",
                )
                .await
                .unwrap()
            }
        };
        let a_created = key("ws_a", &["read", "write"]).await;
        let (a, a_id) = (a_created.key, a_created.record.id);
        let a_admin = key("ws_a", &["admin"]).await.key;
        let b = key("ws_b", &[]).await.key;
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let document: Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            base,
            http,
            keys,
            conversations_log: log_for_test,
            insights_log,
            a,
            a_id,
            a_admin,
            b,
            document,
            shutdown,
            schemas,
            replica: (grpc_addr, gateway_config, rate_per_minute),
            _dir: dir,
        }
    }

    /// Sends a request with `key` (none when empty) and checks the answer against the
    /// OpenAPI document: a JSON body must match the operation's schema for its status, an
    /// error must be problem+json with a request id equal to the `Request-Id` header.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.call_at(&self.base, method, path, key, body, headers)
            .await
    }

    /// [`Api::call`] on the gateway at `base` (another replica).
    async fn call_at(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.request(method.clone(), format!("{base}{path}"));
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(request_id.starts_with("req_"), "{path}: no Request-Id");
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        if !status.is_success() && status != StatusCode::NOT_MODIFIED {
            assert_eq!(content_type, "application/problem+json", "{path}: {text}");
            assert_eq!(body["request_id"], request_id.as_str());
            assert_eq!(body["status"], status.as_u16());
            let code = body["code"].as_str().unwrap();
            assert!(
                switchboard_runtime::codes::find(code).is_some(),
                "{path}: `{code}` is not a registered code"
            );
        }
        self.check_against_document(&method, path, status, &body);
        Answer {
            status,
            headers,
            body,
        }
    }

    fn check_against_document(
        &self,
        method: &reqwest::Method,
        path: &str,
        status: StatusCode,
        body: &Value,
    ) {
        if body.is_null() {
            return;
        }
        let path = path.split('?').next().unwrap();
        let paths = self.document["paths"].as_object().unwrap();
        let Some((_, operations)) = paths
            .iter()
            .find(|(template, _)| matches_template(template, path))
        else {
            // A path the API does not have: its 404 was checked as a problem above.
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{path} is not in the document"
            );
            return;
        };
        let operation = &operations[method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let responses = &operation["responses"];
        let response = if responses[status.as_str()].is_object() {
            &responses[status.as_str()]
        } else {
            &responses[format!("{}XX", status.as_u16() / 100)]
        };
        assert!(
            response.is_object(),
            "{method} {path}: status {status} is not documented"
        );
        let content = response["content"].as_object().unwrap();
        let (_, media) = content.iter().next().unwrap();
        let mut schema = media["schema"].clone();
        schema
            .as_object_mut()
            .unwrap()
            .insert("components".into(), self.document["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the answer does not match the document: {errors:?}\n{body}"
        );
    }

    async fn get(&self, path: &str, key: &str) -> Answer {
        self.call(reqwest::Method::GET, path, key, None, &[]).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, path, key, Some(body), &[])
            .await
    }

    /// Another gateway replica (its own process state, the same store and services); its
    /// base URL.
    async fn replica(&self) -> String {
        let (grpc_addr, config, rate) = &self.replica;
        let log = switchboard_gateway::open_log(config).await.unwrap();
        let addr = serve_gateway(*grpc_addr, ApiKeys::new(log), *rate, &self.shutdown).await;
        format!("http://{addr}")
    }

    /// Delivers every event of the conversations log to the insights service's
    /// subscription, as `dev`'s tail does (each once: the consumer's marks).
    async fn project(&self) {
        let mut after = switchboard_eventlog::LogPosition::START;
        loop {
            let events = self.conversations_log.read_all(after, 500).await.unwrap();
            let Some(last) = events.last() else { break };
            after = last.position();
            for event in &events {
                let handler = switchboard_insights::consumers::ConversationEvents;
                if switchboard_eventlog::Handler::wants(&handler, event).await {
                    self.insights_log
                        .process_once("insights-conversations", event, &handler)
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
        }
    }

    async fn start_conversation(&self, key: &str, user: &str) -> Value {
        let answer = self
            .post("/v1/conversations", key, json!({"user_id": user}))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let schemas = std::mem::take(&mut self.schemas);
        if !schemas.is_empty() {
            // Dropping a schema is async; the test's runtime is finishing.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    for schema in schemas {
                        schema.drop().await;
                    }
                })
            })
            .join();
        }
    }
}

/// A gateway over the services at `grpc_addr` with `keys`, on a loopback port, until
/// `shutdown`; its address.
async fn serve_gateway(
    grpc_addr: SocketAddr,
    keys: ApiKeys,
    rate_per_minute: u32,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let config = ClientConfig::new(format!("http://{grpc_addr}"), None, "gateway");
    let app = router(AppState {
        keys,
        conversations: ConversationsClient::connect_lazy(&config).unwrap(),
        flows: Some(FlowsClient::connect_lazy(&config).unwrap()),
        actions: Some(ActionsClient::connect_lazy(&config).unwrap()),
        webhooks: Some(WebhooksClient::connect_lazy(&config).unwrap()),
        insights: Some(InsightsClient::connect_lazy(&config).unwrap()),
        rate_per_minute,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .unwrap();
    });
    addr
}

/// A test encryption key: base64 of 32 bytes.
fn base64_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

async fn a_request_without_a_live_key_is_401_problem_json(backend: Backend) {
    let api = Api::start(backend).await;
    let none = api.get("/v1/conversations", "").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["code"], "SB-API-0401");
    for bad in [
        "sbk_live_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not a key",
        &api.a[..api.a.len() - 1],
    ] {
        let answer = api.get("/v1/conversations", bad).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(answer.header("www-authenticate"), "Bearer");
    }
    let unknown_path = api.get("/v2/nothing", &api.a).await;
    assert_eq!(unknown_path.status, StatusCode::NOT_FOUND);
}

async fn conversations_start_read_change_and_talk_with_etags(backend: Backend) {
    let api = Api::start(backend).await;
    let started = api.start_conversation(&api.a, "user_1").await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["channel"], "api");
    assert_eq!(started["status"], "active");
    assert_eq!(started["url"], format!("/v1/conversations/{id}"));

    let read = api.get(&format!("/v1/conversations/{id}"), &api.a).await;
    assert_eq!(read.status, StatusCode::OK);
    let etag = read.header("etag");
    assert_eq!(etag, format!("\"{}\"", read.body["version"]));
    let unchanged = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/conversations/{id}"),
            &api.a,
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);

    let changed = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/conversations/{id}"),
            &api.a,
            Some(json!({"status": "on_hold", "metafields": {"plan": "pro"}})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["status"], "on_hold");
    assert_eq!(changed.body["metafields"]["plan"], "pro");
    assert_ne!(changed.header("etag"), etag);

    let stale = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/conversations/{id}"),
            &api.a,
            Some(json!({"status": "resolved"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.body["code"], "SB-API-0412");

    let removed = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/conversations/{id}"),
            &api.a,
            Some(json!({"metafields": {"plan": null}})),
            &[],
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    assert!(removed.body["metafields"].get("plan").is_none());

    for text in ["first", "second"] {
        let added = api
            .post(
                &format!("/v1/conversations/{id}/messages"),
                &api.a,
                json!({"text": text}),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
        assert_eq!(added.body["author"], "human");
    }
    let messages = api
        .get(&format!("/v1/conversations/{id}/messages"), &api.a)
        .await;
    let texts: Vec<&str> = messages.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second"]);

    // The conversations service recorded who acted: the key, not the gateway.
    let events = api
        .conversations_log
        .read_all(switchboard_eventlog::LogPosition::default(), 1000)
        .await
        .unwrap();
    let actors: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e.metadata.actor.as_str()).collect();
    assert_eq!(
        actors,
        [format!("api_key:{}", api.a_id).as_str()]
            .into_iter()
            .collect()
    );

    let agent = api
        .post(
            &format!("/v1/conversations/{id}/messages"),
            &api.a,
            json!({"text": "hi", "author": "agent"}),
        )
        .await;
    assert_eq!(agent.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(agent.body["errors"][0]["field"], "author");
}

async fn lists_page_by_cursor_with_a_link_to_the_next_page(backend: Backend) {
    let api = Api::start(backend).await;
    let mut started = Vec::new();
    for i in 0..5 {
        started.push(
            api.start_conversation(&api.a, &format!("user_{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/conversations?limit=2".to_owned();
    loop {
        let page = api.get(&path, &api.a).await;
        assert_eq!(page.status, StatusCode::OK);
        let data = page.body["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        if !page.body["has_more"].as_bool().unwrap() {
            assert!(page.body["next_cursor"].is_null());
            assert_eq!(page.header("link"), "");
            break;
        }
        let cursor = page.body["next_cursor"].as_str().unwrap();
        let link = page.header("link");
        assert!(
            link.contains(cursor) && link.ends_with("rel=\"next\""),
            "{link}"
        );
        path = format!("/v1/conversations?limit=2&cursor={cursor}");
    }
    seen.sort();
    started.sort();
    assert_eq!(seen, started);

    // Conversations started while a client pages: every one that existed when paging
    // began is seen once, none twice (the cursor is a position, not an offset).
    let mut paged = Vec::new();
    let mut path = "/v1/conversations?limit=2".to_owned();
    loop {
        let page = api.get(&path, &api.a).await;
        assert_eq!(page.status, StatusCode::OK);
        paged.extend(
            page.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        let (first, second) = tokio::join!(
            api.start_conversation(&api.a, "late_1"),
            api.start_conversation(&api.a, "late_2")
        );
        assert!(first["id"].is_string() && second["id"].is_string());
        if !page.body["has_more"].as_bool().unwrap() {
            break;
        }
        path = format!(
            "/v1/conversations?limit=2&cursor={}",
            page.body["next_cursor"].as_str().unwrap()
        );
    }
    let unique: std::collections::BTreeSet<&String> = paged.iter().collect();
    assert_eq!(
        unique.len(),
        paged.len(),
        "a conversation was paged twice: {paged:?}"
    );
    for id in &started {
        assert!(
            paged.contains(id),
            "{id} was skipped while others were inserted"
        );
    }

    for (id, status) in [(&started[0], "resolved"), (&started[1], "on_hold")] {
        let changed = api
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/conversations/{id}"),
                &api.a,
                Some(json!({"status": status})),
                &[],
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK);
    }
    let filtered = api
        .get("/v1/conversations?status=resolved,on_hold", &api.a)
        .await;
    let mut found: Vec<String> = filtered.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    let mut expected = vec![started[0].clone(), started[1].clone()];
    expected.sort();
    assert_eq!(found, expected);
    let first_page = api
        .get("/v1/conversations?status=resolved,on_hold&limit=1", &api.a)
        .await;
    let link = first_page.header("link");
    assert!(
        link.contains("status=resolved,on_hold") && link.contains("limit=1"),
        "the next page keeps the filters: {link}"
    );
    let future = api
        .get(
            "/v1/conversations?created_after=2100-01-01T00:00:00Z",
            &api.a,
        )
        .await;
    assert_eq!(future.body["data"], json!([]));
    let bad_status = api
        .get("/v1/conversations?status=active,gone", &api.a)
        .await;
    assert_eq!(bad_status.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_time = api
        .get("/v1/conversations?created_before=yesterday", &api.a)
        .await;
    assert_eq!(bad_time.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_time.body["errors"][0]["field"], "query.created_before");

    let too_many = api.get("/v1/conversations?limit=1000", &api.a).await;
    assert_eq!(too_many.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_many.body["errors"][0]["field"], "query.limit");
    let not_a_number = api.get("/v1/conversations?limit=many", &api.a).await;
    assert_eq!(not_a_number.status, StatusCode::BAD_REQUEST);
    let unknown_filter = api.get("/v1/conversations?colour=red", &api.a).await;
    assert_eq!(unknown_filter.status, StatusCode::BAD_REQUEST);
}

async fn another_workspaces_resources_are_404_like_missing_ones(backend: Backend) {
    let api = Api::start(backend).await;
    let id = api.start_conversation(&api.a, "user_1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = api.get("/v1/conversations/conv_nothing", &api.b).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let foreign = api.get(&format!("/v1/conversations/{id}"), &api.b).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign.body["code"], missing.body["code"]);
    assert!(!foreign.body.to_string().contains("user_1"));
    for (method, path, body) in [
        (
            reqwest::Method::PATCH,
            format!("/v1/conversations/{id}"),
            Some(json!({"status": "resolved"})),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/conversations/{id}/messages"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/conversations/{id}/messages"),
            Some(json!({"text": "hi"})),
        ),
    ] {
        let answer = api.call(method.clone(), &path, &api.b, body, &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let list = api.get("/v1/conversations", &api.b).await;
    assert_eq!(list.body["data"], json!([]));
    // A's conversation is untouched.
    let read = api.get(&format!("/v1/conversations/{id}"), &api.a).await;
    assert_eq!(read.body["status"], "active");
    assert_eq!(read.body["message_count"], 0);
}

async fn scopes_limit_what_a_key_may_do(backend: Backend) {
    let api = Api::start(backend).await;
    let create = |scopes: &'static [&'static str]| {
        let keys = api.keys.clone();
        async move {
            let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
            keys.create(
                "ws_a",
                &uuid::Uuid::now_v7().to_string(),
                "scoped",
                &scopes,
                0,
                "cli",
            )
            .await
            .unwrap()
            .key
        }
    };
    let reader = create(&["conversations:read"]).await;
    let flows_writer = create(&["flows:write"]).await;
    assert_eq!(
        api.get("/v1/conversations", &reader).await.status,
        StatusCode::OK
    );
    let refused = api
        .post("/v1/conversations", &reader, json!({"user_id": "u"}))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["code"], "SB-API-0403");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("conversations:write")
    );
    assert_eq!(
        api.get("/v1/conversations", &flows_writer).await.status,
        StatusCode::FORBIDDEN
    );
    // Only admin manages keys.
    assert_eq!(
        api.get("/v1/api-keys", &api.a).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/v1/api-keys", &api.a_admin).await.status,
        StatusCode::OK
    );
}

async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body(backend: Backend) {
    let api = Api::start(backend).await;
    let send = |body: Value| {
        api.call(
            reqwest::Method::POST,
            "/v1/conversations",
            &api.a,
            Some(body),
            &[("idempotency-key", "order-4711")],
        )
    };
    let first = send(json!({"user_id": "user_1"})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(json!({"user_id": "user_1"})).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(
        again.header("etag"),
        first.header("etag"),
        "a replay keeps its headers"
    );
    // Another key of the workspace, even one that may write, does not get the answer.
    let other_key = api
        .keys
        .create("ws_a", "other-key", "other", &["write".into()], 0, "cli")
        .await
        .unwrap()
        .key;
    let stolen = api
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            &other_key,
            Some(json!({"user_id": "user_1"})),
            &[("idempotency-key", "order-4711")],
        )
        .await;
    assert_eq!(
        stolen.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        stolen.body
    );
    let other = send(json!({"user_id": "user_2"})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "SB-API-0006");
    let list = api.get("/v1/conversations", &api.a).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    // Keys are per workspace: B's same key is B's own.
    let b = api
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            &api.b,
            Some(json!({"user_id": "user_2"})),
            &[("idempotency-key", "order-4711")],
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_ne!(b.body["id"], first.body["id"]);
}

async fn bad_bodies_name_the_field_and_store_nothing(backend: Backend) {
    let api = Api::start(backend).await;
    let raw = api
        .http
        .post(format!("{}/v1/conversations", api.base))
        .bearer_auth(&api.a)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        raw.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let unknown = api
        .post(
            "/v1/conversations",
            &api.a,
            json!({"user_id": "u", "colour": "red"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.body["errors"][0]["field"], "colour");
    let wrong_type = api
        .post("/v1/conversations", &api.a, json!({"channel": "pigeon"}))
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_metafield = api
        .post(
            "/v1/conversations",
            &api.a,
            json!({"metafields": {"Not A Key!": "x"}}),
        )
        .await;
    assert_eq!(
        bad_metafield.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad_metafield.body
    );
    assert!(!bad_metafield.body["errors"].as_array().unwrap().is_empty());
    let list = api.get("/v1/conversations", &api.a).await;
    assert_eq!(list.body["data"], json!([]));
}

async fn keys_are_created_shown_once_rotated_and_revoked_at_once(backend: Backend) {
    let api = Api::start(backend).await;
    let created = api
        .post(
            "/v1/api-keys",
            &api.a_admin,
            json!({"name": "reporting", "scopes": ["conversations:read"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created.body["prefix"].as_str().unwrap()));
    assert_eq!(
        api.get("/v1/conversations", &key).await.status,
        StatusCode::OK
    );

    let listed = api.get("/v1/api-keys?limit=1", &api.a_admin).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(listed.body["has_more"].as_bool().unwrap());
    assert!(
        !listed.body.to_string().contains(&key),
        "a list shows no secret"
    );
    let shown = api.get(&format!("/v1/api-keys/{id}"), &api.a_admin).await;
    assert!(shown.body.get("key").is_none());
    assert!(shown.body["last_used_at"].is_i64());

    let foreign = api.get(&format!("/v1/api-keys/{id}"), &api.b).await;
    assert_eq!(
        foreign.status,
        StatusCode::FORBIDDEN,
        "B's key has no admin scope"
    );

    let rotated = api
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &api.a_admin,
            json!({"overlap_seconds": 3600}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let successor = rotated.body["key"].as_str().unwrap().to_owned();
    let twice = api
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &api.a_admin,
            json!({}),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.body);
    assert_eq!(rotated.body["rotated_from"], id.as_str());
    assert_eq!(rotated.body["scopes"], json!(["conversations:read"]));
    assert_eq!(
        api.get("/v1/conversations", &key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/v1/conversations", &successor).await.status,
        StatusCode::OK
    );

    let revoked = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            &api.a_admin,
            None,
            &[],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_i64());
    assert_eq!(
        api.get("/v1/conversations", &key).await.status,
        StatusCode::UNAUTHORIZED,
        "a revoked key is refused on the next request"
    );
    // ... on every replica, at once.
    let replica = api.replica().await;
    let elsewhere = api
        .call_at(
            &replica,
            reqwest::Method::GET,
            "/v1/conversations",
            &key,
            None,
            &[],
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.get("/v1/conversations", &successor).await.status,
        StatusCode::OK
    );

    let bad = api
        .post(
            "/v1/api-keys",
            &api.a_admin,
            json!({"name": "", "scopes": ["root"]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "scopes[0]"]);
}

async fn the_openapi_document_describes_every_route_and_the_docs_page_loads_it(backend: Backend) {
    let api = Api::start(backend).await;
    let doc = &api.document;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/conversations",
        "/v1/conversations/{id}",
        "/v1/conversations/{id}/messages",
        "/v1/api-keys",
        "/v1/api-keys/{id}",
        "/v1/api-keys/{id}/rotate",
        "/v1/collections",
        "/v1/collections/{id}",
        "/v1/collections/{id}/documents",
        "/v1/collections/{id}/documents/{external_id}",
        "/v1/collections/{id}/documents/bulk",
        "/v1/collections/{id}/search",
        "/v1/webhook-endpoints",
        "/v1/webhook-endpoints/{id}",
        "/v1/webhook-endpoints/{id}/rotate-secret",
        "/v1/webhook-endpoints/{id}/secret",
        "/v1/webhook-endpoints/{id}/messages",
        "/v1/webhook-endpoints/{id}/attempts",
        "/v1/actions",
        "/v1/actions/{id}",
        "/v1/actions/{id}/test",
        "/v1/actions/{id}/execute",
        "/v1/actions/{id}/executions",
        "/v1/flows",
        "/v1/flows/{id}",
        "/v1/flows/{id}/publish",
        "/v1/flows/{id}/undo",
        "/v1/flows/{id}/versions",
        "/v1/assistants",
        "/v1/assistants/{id}",
        "/v1/assistants/{id}/draft",
        "/v1/assistants/{id}/publish",
        "/v1/assistants/{id}/undo",
        "/v1/assistants/{id}/draft/replay",
        "/v1/integrations",
        "/v1/integrations/{id}",
        "/v1/model-providers",
        "/v1/model-providers/{id}",
        "/v1/model-providers/{id}/test",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
        for (method, operation) in doc["paths"][path].as_object().unwrap() {
            let problem = &operation["responses"]["4XX"]["content"]["application/problem+json"];
            assert!(
                problem.is_object(),
                "{method} {path} documents no problem+json"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    for request in [
        "StartConversation",
        "ActionInput",
        "CreateEndpoint",
        "BulkDocuments",
    ] {
        assert_eq!(
            doc["components"]["schemas"][request]["additionalProperties"], false,
            "{request}: request schemas are strict"
        );
    }
    let docs = api
        .http
        .get(format!("{}/docs", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
}

/// The seeds' CMS journey: 5,000 documents pushed in bulk, 1,000 removed, then searched;
/// every bulk result per item, a repeated request changing nothing.
async fn a_cms_pushes_5000_documents_removes_1000_and_searches_them(backend: Backend) {
    let api = Api::start(backend).await;
    let created = api
        .post(
            "/v1/collections",
            &api.a,
            json!({"name": "Help center", "description": "help.example.com"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let bulk = format!("/v1/collections/{id}/documents/bulk");
    let document = |i: usize| {
        let topic = if i.is_multiple_of(10) {
            "refund"
        } else {
            "shipping"
        };
        json!({
            "external_id": format!("doc-{i:05}"),
            "title": format!("Article {i}"),
            "body": format!("How {topic} works, part {i}."),
            "url": format!("https://help.example.com/{i}"),
        })
    };
    for batch in 0..5 {
        let upsert: Vec<Value> = (batch * 1000..(batch + 1) * 1000).map(document).collect();
        let answer = api.post(&bulk, &api.a, json!({"upsert": upsert})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let results = answer.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1000);
        assert!(results.iter().all(|r| r["result"] == "created"));
        assert_eq!(
            results[0]["external_id"],
            format!("doc-{:05}", batch * 1000)
        );
    }
    let again: Vec<Value> = (0..1000).map(document).collect();
    let repeated = api.post(&bulk, &api.a, json!({"upsert": again})).await;
    assert!(
        repeated.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "unchanged")
    );
    let delete: Vec<String> = (0..1000).map(|i| format!("doc-{i:05}")).collect();
    let deleted = api.post(&bulk, &api.a, json!({"delete": delete})).await;
    assert!(
        deleted.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "deleted")
    );
    let gone = api
        .post(&bulk, &api.a, json!({"delete": ["doc-00000"]}))
        .await;
    assert_eq!(gone.body["results"][0]["result"], "not_found");
    let too_many: Vec<String> = (0..1001).map(|i| format!("x-{i}")).collect();
    let refused = api.post(&bulk, &api.a, json!({"delete": too_many})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    let collection = api.get(&format!("/v1/collections/{id}"), &api.a).await;
    assert_eq!(collection.body["document_count"], 4000);
    let mut seen = std::collections::BTreeSet::new();
    let mut path = format!("/v1/collections/{id}/documents?limit=100");
    loop {
        let page = api.get(&path, &api.a).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for doc in page.body["data"].as_array().unwrap() {
            assert!(seen.insert(doc["external_id"].as_str().unwrap().to_owned()));
        }
        let Some(cursor) = page.body["next_cursor"].as_str() else {
            break;
        };
        path = format!("/v1/collections/{id}/documents?limit=100&cursor={cursor}");
    }
    assert_eq!(seen.len(), 4000);
    assert_eq!(seen.first().map(String::as_str), Some("doc-01000"));

    let hits = api
        .get(
            &format!("/v1/collections/{id}/search?q=refund&limit=50"),
            &api.a,
        )
        .await;
    assert_eq!(hits.status, StatusCode::OK, "{}", hits.body);
    let hits = hits.body["data"].as_array().unwrap();
    assert_eq!(hits.len(), 50);
    for hit in hits {
        let n: usize = hit["external_id"].as_str().unwrap()[4..].parse().unwrap();
        assert!(n >= 1000 && n.is_multiple_of(10), "{hit}");
    }
}

async fn documents_are_put_patched_read_and_deleted_by_external_id(backend: Backend) {
    let api = Api::start(backend).await;
    let id = api
        .post("/v1/collections", &api.a, json!({"name": "FAQ"}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = format!("/v1/collections/{id}/documents/faq-1");
    let put = api
        .call(
            reqwest::Method::PUT,
            &doc,
            &api.a,
            Some(json!({"title": "Hours", "body": "We open at nine."})),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    let replaced = api
        .call(
            reqwest::Method::PUT,
            &doc,
            &api.a,
            Some(json!({"title": "Hours", "body": "We open at ten."})),
            &[],
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    let patched = api
        .call(
            reqwest::Method::PATCH,
            &doc,
            &api.a,
            Some(json!({"url": "https://example.com/hours"})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["body"], "We open at ten.");
    assert_eq!(patched.body["url"], "https://example.com/hours");
    let renamed = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/collections/{id}"),
            &api.a,
            Some(json!({"name": "Questions"})),
            &[],
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    assert_eq!(renamed.body["name"], "Questions");

    // Tenancy and scopes.
    assert_eq!(api.get(&doc, &api.b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&format!("/v1/collections/{id}"), &api.b)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v1/collections", &api.b).await.body["data"],
        json!([])
    );

    let deleted = api
        .call(reqwest::Method::DELETE, &doc, &api.a, None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(api.get(&doc, &api.a).await.status, StatusCode::NOT_FOUND);
    let again = api
        .call(reqwest::Method::DELETE, &doc, &api.a, None, &[])
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let dropped = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/collections/{id}"),
            &api.a,
            None,
            &[],
        )
        .await;
    assert_eq!(dropped.status, StatusCode::OK, "{}", dropped.body);
    assert_eq!(
        api.get(&format!("/v1/collections/{id}"), &api.a)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn a_key_past_its_rate_is_429_with_retry_after_and_others_go_on(backend: Backend) {
    let api = Api::with_rate(backend, 5).await;
    // Two replicas share one budget per key: requests alternate between them.
    let other = api.replica().await;
    let mut served = 0;
    let refused = loop {
        let answer = if served % 2 == 0 {
            api.get("/v1/conversations", &api.a).await
        } else {
            api.call_at(
                &other,
                reqwest::Method::GET,
                "/v1/conversations",
                &api.a,
                None,
                &[],
            )
            .await
        };
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break answer;
        }
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("ratelimit-limit"), "5");
        let remaining: u32 = answer.header("ratelimit-remaining").parse().unwrap();
        assert!(remaining < 5);
        served += 1;
        // A minute boundary may pass once during the loop, never twice.
        assert!(served <= 10, "no 429 after {served} requests");
    };
    assert!(served >= 5, "refused after {served}");
    assert_eq!(refused.body["code"], "SB-API-0429");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        api.get("/v1/conversations", &api.b).await.status,
        StatusCode::OK,
        "another key has its own budget"
    );
}

async fn webhook_endpoints_are_managed_with_etags_and_their_secrets_rotate(backend: Backend) {
    let api = Api::start(backend).await;
    let created = api
        .post(
            "/v1/webhook-endpoints",
            &api.a,
            json!({"url": "http://127.0.0.1:9/hooks", "event_types": ["conversation.updated"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/webhook-endpoints/{id}");

    let read = api.get(&path, &api.a).await;
    let etag = read.header("etag");
    assert_eq!(etag, format!("\"{}\"", read.body["version"]));
    let changed = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"event_types": ["conversation.*"], "description": "CRM"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["event_types"], json!(["conversation.*"]));
    assert_eq!(
        changed.body["url"], "http://127.0.0.1:9/hooks",
        "untouched fields stay"
    );
    let stale = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"description": "late"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let disabled = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"enabled": false})),
            &[],
        )
        .await;
    assert_eq!(disabled.body["enabled"], false);
    assert_eq!(disabled.body["disabled_reason"], "api");
    let bad = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"url": "ftp://example.com"})),
            &[],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);

    let rotated = api
        .post(&format!("{path}/rotate-secret"), &api.a, json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    let secrets = api.get(&format!("{path}/secret"), &api.a).await;
    assert_eq!(secrets.body["secret"], new_secret);
    assert_eq!(secrets.body["previous"], json!([secret]));

    let messages = api.get(&format!("{path}/messages"), &api.a).await;
    assert_eq!(messages.status, StatusCode::OK, "{}", messages.body);
    assert_eq!(messages.body["data"], json!([]));
    let attempts = api.get(&format!("{path}/attempts"), &api.a).await;
    assert_eq!(attempts.status, StatusCode::OK, "{}", attempts.body);
    let listed = api.get("/v1/webhook-endpoints", &api.a).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);

    for foreign in [
        path.clone(),
        format!("{path}/secret"),
        format!("{path}/messages"),
        format!("{path}/attempts"),
    ] {
        assert_eq!(
            api.get(&foreign, &api.b).await.status,
            StatusCode::NOT_FOUND,
            "{foreign}"
        );
    }
    assert_eq!(
        api.get("/v1/webhook-endpoints", &api.b).await.body["data"],
        json!([])
    );

    // Recovery of failed messages: none failed yet, so it is done at once.
    let recovered = api
        .post(
            &format!("{path}/recover"),
            &api.a,
            json!({"since": "2026-01-01T00:00:00Z", "dry_run": true}),
        )
        .await;
    assert_eq!(recovered.status, StatusCode::OK, "{}", recovered.body);
    assert_eq!(
        recovered.body,
        json!({"total": 0, "done": 0, "dry_run": true, "finished": true})
    );
    let bad = api
        .post(
            &format!("{path}/recover"),
            &api.a,
            json!({"since": "yesterday"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["field"], "since");
    let foreign = api
        .post(
            &format!("{path}/recover"),
            &api.b,
            json!({"since": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);

    let deleted = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(api.get(&path, &api.a).await.status, StatusCode::NOT_FOUND);
}

async fn actions_are_defined_patched_tested_and_deleted_as_their_json(backend: Backend) {
    let api = Api::start(backend).await;
    let definition = json!({
        "name": "price_with_tax",
        "description": "What an order costs with tax",
        "kind": "ACTION_KIND_CALCULATION",
        "permission_level": "PERMISSION_LEVEL_AGENT",
        "calculation": {"outputs": [
            {"name": "subtotal", "expression": "input.price * input.quantity"},
            {"name": "total", "expression": "(outputs.subtotal * 1.2) | round(2)"}
        ]}
    });
    let created = api.post("/v1/actions", &api.a, definition.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/actions/{id}");
    assert_eq!(created.body["calculation"]["outputs"][1]["name"], "total");

    let tested = api
        .post(
            &format!("{path}/test"),
            &api.a,
            json!({"variables": {"input": {"price": 10, "quantity": 3}}}),
        )
        .await;
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.body);
    assert_eq!(tested.body["outcome"], "OUTCOME_SUCCESS", "{}", tested.body);
    let executions = api.get(&format!("{path}/executions"), &api.a).await;
    assert_eq!(executions.status, StatusCode::OK, "{}", executions.body);
    assert_eq!(executions.body["data"].as_array().unwrap().len(), 1);

    // A run for real, as an API caller: at a human teammate's level, an admin key's at an
    // administrator's; once per Idempotency-Key.
    let run = json!({"variables": {"input": {"price": 10, "quantity": 3}}});
    let executed = api
        .call(
            reqwest::Method::POST,
            &format!("{path}/execute"),
            &api.a,
            Some(run.clone()),
            &[("idempotency-key", "exec-1")],
        )
        .await;
    assert_eq!(executed.status, StatusCode::OK, "{}", executed.body);
    assert_eq!(
        executed.body["outcome"], "OUTCOME_SUCCESS",
        "{}",
        executed.body
    );
    assert_eq!(executed.body["triggered_by"], "TRIGGER_API");
    assert_eq!(executed.body["caller_permission"], "PERMISSION_LEVEL_HUMAN");
    assert_eq!(executed.body["test"], false);
    let mut admin_only = definition.clone();
    admin_only["name"] = json!("admin_total");
    admin_only["permission_level"] = json!("PERMISSION_LEVEL_ADMIN");
    let admin_only = api.post("/v1/actions", &api.a, admin_only).await;
    let admin_path = format!("/v1/actions/{}", admin_only.body["id"].as_str().unwrap());
    let refused = api
        .call(
            reqwest::Method::POST,
            &format!("{admin_path}/execute"),
            &api.a,
            Some(run.clone()),
            &[("idempotency-key", "exec-2")],
        )
        .await;
    assert_eq!(
        refused.body["reason"], "FAILURE_REASON_FORBIDDEN",
        "{}",
        refused.body
    );
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .ends_with("an API caller at the level of a human teammate"),
        "{}",
        refused.body
    );
    let by_admin = api
        .call(
            reqwest::Method::POST,
            &format!("{admin_path}/execute"),
            &api.a_admin,
            Some(run),
            &[("idempotency-key", "exec-3")],
        )
        .await;
    assert_eq!(
        by_admin.body["outcome"], "OUTCOME_SUCCESS",
        "{}",
        by_admin.body
    );
    assert_eq!(by_admin.body["caller_permission"], "PERMISSION_LEVEL_ADMIN");
    let removed = api
        .call(reqwest::Method::DELETE, &admin_path, &api.a, None, &[])
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);

    let etag = api.get(&path, &api.a).await.header("etag");
    let patched = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"description": "Order total with 20% tax", "enabled": false})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["description"], "Order total with 20% tax");
    assert_eq!(
        patched.body["calculation"]["outputs"][0]["name"],
        "subtotal"
    );
    let stale = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"description": "late"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );

    let unknown = api
        .post("/v1/actions", &api.a, json!({"name": "x", "colour": "red"}))
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.body
    );
    let server_field = api
        .post("/v1/actions", &api.a, json!({"name": "y", "version": 3}))
        .await;
    assert_eq!(server_field.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server_field.body["errors"][0]["field"], "version");
    let invalid = api
        .post(
            "/v1/actions",
            &api.a,
            json!({"name": "Not A Name", "kind": "ACTION_KIND_HTTP"}),
        )
        .await;
    assert_eq!(
        invalid.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        invalid.body
    );
    assert!(!invalid.body["errors"].as_array().unwrap().is_empty());

    assert_eq!(api.get(&path, &api.b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&format!("{path}/executions"), &api.b).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = api.get("/v1/actions", &api.a).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);

    let deleted = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(api.get(&path, &api.a).await.status, StatusCode::NOT_FOUND);
    let again = api.post("/v1/actions", &api.a, definition).await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "the name is free again: {}",
        again.body
    );
}

fn greeting(text: &str) -> Value {
    json!({
        "nodes": [
            {"id": "start", "start": {}},
            {"id": "greet", "send_message": {"text": text}},
            {"id": "end", "end": {}}
        ],
        "edges": [
            {"from": "start", "to": "greet"},
            {"from": "greet", "to": "end"}
        ]
    })
}

async fn flows_are_drafted_published_and_run_by_assistants_over_rest(backend: Backend) {
    let api = Api::start(backend).await;
    let created = api
        .post(
            "/v1/flows",
            &api.a,
            json!({
                "name": "main",
                "kind": "FLOW_KIND_CONVERSATION_FLOW",
                "draft": greeting("Hello!")
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/flows/{id}");

    let etag = created.header("etag");
    let published = api
        .call(
            reqwest::Method::POST,
            &format!("{path}/publish"),
            &api.a,
            Some(json!({"note": "first"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    assert_eq!(published.body["published_version"], 1);

    let drafted = api
        .call(
            reqwest::Method::PUT,
            &path,
            &api.a,
            Some(greeting("Welcome back!")),
            &[("if-match", &published.header("etag"))],
        )
        .await;
    assert_eq!(drafted.status, StatusCode::OK, "{}", drafted.body);
    assert_eq!(drafted.body["has_draft"], true);
    let stale = api
        .call(
            reqwest::Method::PUT,
            &path,
            &api.a,
            Some(greeting("Too late")),
            &[("if-match", &published.header("etag"))],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let broken = api
        .call(
            reqwest::Method::PATCH,
            &path,
            &api.a,
            Some(json!({"edges": []})),
            &[],
        )
        .await;
    assert_eq!(
        broken.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        broken.body
    );
    let undone = api.post(&format!("{path}/undo"), &api.a, json!({})).await;
    assert_eq!(undone.status, StatusCode::OK, "{}", undone.body);
    assert_eq!(undone.body["has_draft"], false);
    let versions = api.get(&format!("{path}/versions"), &api.a).await;
    assert_eq!(versions.status, StatusCode::OK, "{}", versions.body);
    assert_eq!(versions.body["data"][0]["number"], 1);

    let assistant = api
        .post(
            "/v1/assistants",
            &api.a,
            json!({"name": "Ada", "instructions": "Be kind.", "flow_id": id}),
        )
        .await;
    assert_eq!(assistant.status, StatusCode::CREATED, "{}", assistant.body);
    let assistant_path = format!("/v1/assistants/{}", assistant.body["id"].as_str().unwrap());
    let patched = api
        .call(
            reqwest::Method::PATCH,
            &assistant_path,
            &api.a,
            Some(json!({"instructions": "Be brief."})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["instructions"], "Be brief.");
    assert_eq!(patched.body["flow_id"], id.as_str());

    // A draft: kept beside the assistant in effect until published.
    let drafted = api
        .call(
            reqwest::Method::PUT,
            &format!("{assistant_path}/draft"),
            &api.a,
            Some(json!({"name": "Ada", "instructions": "Be warm.", "flow_id": id})),
            &[],
        )
        .await;
    assert_eq!(drafted.status, StatusCode::OK, "{}", drafted.body);
    assert_eq!(drafted.body["has_draft"], true);
    let replayed = api
        .post(
            &format!("{assistant_path}/draft/replay?limit=10"),
            &api.a,
            json!({}),
        )
        .await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.body);
    assert!(replayed.body["replayed"].is_u64(), "{}", replayed.body);
    let too_many = api
        .post(
            &format!("{assistant_path}/draft/replay?limit=100000"),
            &api.a,
            json!({}),
        )
        .await;
    assert_eq!(
        too_many.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        too_many.body
    );
    let current = api.get(&assistant_path, &api.a).await;
    assert_eq!(current.body["instructions"], "Be brief.");
    assert_eq!(current.body["has_draft"], true);
    let draft = api.get(&format!("{assistant_path}/draft"), &api.a).await;
    assert_eq!(draft.body["instructions"], "Be warm.");
    let published = api
        .post(&format!("{assistant_path}/publish"), &api.a, json!({}))
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    assert_eq!(published.body["instructions"], "Be warm.");
    assert_eq!(published.body["has_draft"], false);
    let none = api.get(&format!("{assistant_path}/draft"), &api.a).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.body);
    let nothing = api
        .post(&format!("{assistant_path}/undo"), &api.a, json!({}))
        .await;
    assert_eq!(nothing.status, StatusCode::CONFLICT, "{}", nothing.body);
    let server_field = api
        .post(
            "/v1/assistants",
            &api.a,
            json!({"name": "B", "id": "asst_mine"}),
        )
        .await;
    assert_eq!(server_field.status, StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(api.get(&path, &api.b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&assistant_path, &api.b).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get("/v1/flows", &api.b).await.body["data"], json!([]));

    let in_use = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    let gone = api
        .call(reqwest::Method::DELETE, &assistant_path, &api.a, None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    let deleted = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(api.get(&path, &api.a).await.status, StatusCode::NOT_FOUND);
}

async fn model_providers_are_kept_over_rest_and_their_keys_never_shown(backend: Backend) {
    let api = Api::start(backend).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let model = switchboard_flows::model_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some("sk-rest-secret".into()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let created = api
        .post(
            "/v1/model-providers",
            &api.a,
            json!({"name": "local", "base_url": model.base_url(), "model": "m-1",
                   "api_key": "sk-rest-secret"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["api_key_set"], true);
    assert!(
        !created.body.to_string().contains("sk-rest-secret"),
        "{}",
        created.body
    );
    let path = format!(
        "/v1/model-providers/{}",
        created.body["id"].as_str().unwrap()
    );
    let tested = api.post(&format!("{path}/test"), &api.a, json!({})).await;
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.body);
    assert_eq!(tested.body["ok"], true, "{}", tested.body);
    let listed = api.get("/v1/model-providers", &api.a).await;
    assert_eq!(listed.body["data"][0]["name"], "local");
    // Another workspace sees none of it; a bad provider is refused field by field.
    assert_eq!(api.get(&path, &api.b).await.status, StatusCode::NOT_FOUND);
    let bad = api
        .post(
            "/v1/model-providers",
            &api.a,
            json!({"name": "", "base_url": "ftp://x", "model": ""}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let replaced = api
        .call(
            reqwest::Method::PUT,
            &path,
            &api.a,
            Some(json!({"name": "local", "base_url": model.base_url(), "model": "m-2"})),
            &[],
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["model"], "m-2");
    assert_eq!(replaced.body["api_key_set"], true, "the stored key stays");
    let gone = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    assert_eq!(api.get(&path, &api.a).await.status, StatusCode::NOT_FOUND);
    shutdown.cancel();
}

async fn integrations_are_kept_over_rest_and_their_secrets_never_shown(backend: Backend) {
    let api = Api::start(backend).await;
    let created = api
        .post(
            "/v1/integrations",
            &api.a,
            json!({"name": "shop", "base_url": "https://shop.example.com/api",
                   "headers": {"X-Shop": "main"},
                   "auth": {"kind": "AUTH_KIND_BEARER", "secret": "sk-integration-secret"},
                   "allowed_methods": ["GET"], "rate_limit_per_minute": 60}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["auth"]["secret_set"], true);
    assert!(
        !created.body.to_string().contains("sk-integration-secret"),
        "{}",
        created.body
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/integrations/{id}");
    let action = api
        .post(
            "/v1/actions",
            &api.a,
            json!({"name": "order_status", "description": "Where an order is",
                   "kind": "ACTION_KIND_HTTP",
                   "http": {"method": "GET", "url": "/orders/{{ input.number }}",
                            "integration_id": id}}),
        )
        .await;
    assert_eq!(action.status, StatusCode::CREATED, "{}", action.body);
    let posting = api
        .post(
            "/v1/actions",
            &api.a,
            json!({"name": "cancel", "description": "Cancels an order",
                   "kind": "ACTION_KIND_HTTP",
                   "http": {"method": "POST", "url": "/orders/cancel", "integration_id": id}}),
        )
        .await;
    assert_eq!(
        posting.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        posting.body
    );
    assert!(
        posting.body.to_string().contains("http.method"),
        "{}",
        posting.body
    );

    let got = api.get(&path, &api.a).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["operations"][0]["name"], "order_status");
    assert_eq!(
        api.get("/v1/integrations", &api.a).await.body["data"][0]["id"],
        id.as_str()
    );
    assert_eq!(api.get(&path, &api.b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/integrations", &api.b).await.body["data"],
        json!([])
    );

    let bad = api
        .post(
            "/v1/integrations",
            &api.a,
            json!({"name": "Bad Name", "base_url": "ftp://x", "operations": []}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let replaced = api
        .call(
            reqwest::Method::PUT,
            &path,
            &api.a,
            Some(
                json!({"name": "shop", "base_url": "https://shop.example.com/v2",
                        "auth": {"kind": "AUTH_KIND_BEARER"}}),
            ),
            &[("if-match", &got.header("etag"))],
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(
        replaced.body["auth"]["secret_set"], true,
        "the stored secret stays"
    );
    assert_eq!(replaced.body["version"], 2);

    let in_use = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    assert!(
        in_use.body.to_string().contains("order_status"),
        "{}",
        in_use.body
    );
    let action_path = format!("/v1/actions/{}", action.body["id"].as_str().unwrap());
    let removed = api
        .call(reqwest::Method::DELETE, &action_path, &api.a, None, &[])
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    let gone = api
        .call(reqwest::Method::DELETE, &path, &api.a, None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    assert_eq!(api.get(&path, &api.a).await.status, StatusCode::NOT_FOUND);
}

async fn insights_answer_over_rest_and_conversation_lists_filter_by_assistant_and_segment(
    backend: Backend,
) {
    let api = Api::start(backend).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let assistant = if i % 2 == 0 { "asst_1" } else { "asst_2" };
        let started = api
            .post(
                "/v1/conversations",
                &api.a,
                json!({"user_id": format!("user_{i}"), "metafields": {"assistant_id": assistant}}),
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
        let id = started.body["id"].as_str().unwrap().to_owned();
        let sentiment = if i < 3 { "negative" } else { "positive" };
        let mut change = json!({"analysis": {
            "topics": if i % 3 == 0 { json!(["billing", "refunds"]) } else { json!(["login"]) },
            "sentiment": sentiment,
            "custom": {"urgency": "high"}
        }});
        if i < 2 {
            change["status"] = json!("resolved");
        }
        let changed = api
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/conversations/{id}"),
                &api.a,
                Some(change),
                &[],
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        assert_eq!(changed.body["analysis"]["sentiment"], sentiment);
        ids.push(id);
    }
    // Workspace B has one of its own.
    api.start_conversation(&api.b, "b_user").await;
    api.project().await;

    let summary = api.get("/v1/insights/summary", &api.a).await;
    assert_eq!(summary.status, StatusCode::OK, "{}", summary.body);
    let measures = &summary.body["measures"];
    assert_eq!(measures["conversations"], 6);
    assert!((measures["resolution_rate"].as_f64().unwrap() - 2.0 / 6.0).abs() < 1e-9);
    assert_eq!(summary.body["previous"]["conversations"], 0);
    let of_b = api.get("/v1/insights/summary", &api.b).await;
    assert_eq!(
        of_b.body["measures"]["conversations"], 1,
        "B sees only its own"
    );
    let filtered = api
        .get(
            "/v1/insights/summary?assistant=asst_1&sentiment=negative,mixed",
            &api.a,
        )
        .await;
    assert_eq!(
        filtered.body["measures"]["conversations"], 2,
        "{}",
        filtered.body
    );

    // Conditional GET: the same answer is 304 with its tag (a fixed window: the default
    // one moves with the clock, and so does its answer).
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    let fixed = format!(
        "/v1/insights/summary?from={}&to={}",
        rfc3339(now - time::Duration::days(1)),
        rfc3339(now + time::Duration::days(1))
    );
    let first = api.get(&fixed, &api.a).await;
    assert_eq!(first.body["measures"], summary.body["measures"]);
    let tag = first.header("etag");
    assert!(tag.starts_with("W/\""), "{tag}");
    let again = api
        .call(
            reqwest::Method::GET,
            &fixed,
            &api.a,
            None,
            &[("If-None-Match", &tag)],
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.header("etag"), tag);

    let breakdown = api
        .get("/v1/insights/breakdown?by=topic,sentiment", &api.a)
        .await;
    assert_eq!(breakdown.status, StatusCode::OK, "{}", breakdown.body);
    let rows: Vec<(String, String, u64)> = breakdown.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["values"][0].as_str().unwrap().to_owned(),
                r["values"][1].as_str().unwrap().to_owned(),
                r["measures"]["conversations"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("login".into(), "negative".into(), 2),
            ("login".into(), "positive".into(), 2),
            ("billing".into(), "negative".into(), 1),
            ("billing".into(), "positive".into(), 1),
            ("refunds".into(), "negative".into(), 1),
            ("refunds".into(), "positive".into(), 1),
        ]
    );

    let trends = api
        .get(
            "/v1/insights/trends?interval=hour&time_zone=Asia/Kolkata&compare=previous",
            &api.a,
        )
        .await;
    assert_eq!(trends.status, StatusCode::OK, "{}", trends.body);
    let points = trends.body["points"].as_array().unwrap();
    assert_eq!(points.len(), 721, "30 days of hours, cut at both ends");
    let total: u64 = points
        .iter()
        .map(|p| p["measures"]["conversations"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6);
    assert_eq!(trends.body["previous"].as_array().unwrap().len(), 721);

    let dimensions = api.get("/v1/insights/dimensions", &api.a).await;
    let topic = dimensions.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"] == "topic")
        .unwrap()
        .clone();
    assert_eq!(topic["values"], json!(["login", "billing", "refunds"]));

    // A segment, and the conversation list by segment and by assistant.
    let segment = api
        .post(
            "/v1/insights/segments",
            &api.a,
            json!({"name": "Unhappy", "conditions": [{"dimension": "sentiment", "values": ["negative"]}]}),
        )
        .await;
    assert_eq!(segment.status, StatusCode::CREATED, "{}", segment.body);
    let segment_id = segment.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        segment.header("location"),
        format!("/v1/insights/segments/{segment_id}")
    );
    let listed = api
        .get(
            &format!("/v1/conversations?segment_id={segment_id}"),
            &api.a,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let got: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids[..3].iter().rev().map(String::as_str).collect();
    assert_eq!(got, want, "newest first");
    let mut by_assistant = Vec::new();
    let mut path = "/v1/conversations?assistant_id=asst_1&limit=2".to_owned();
    loop {
        let page = api.get(&path, &api.a).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for c in page.body["data"].as_array().unwrap() {
            assert_eq!(c["metafields"]["assistant_id"], "asst_1");
            by_assistant.push(c["id"].as_str().unwrap().to_owned());
        }
        let link = page.header("link");
        if link.is_empty() {
            break;
        }
        assert!(link.contains("assistant_id=asst_1"), "{link}");
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
    }
    assert_eq!(
        by_assistant,
        [ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );
    // Another workspace's segment is a missing one, everywhere.
    assert_eq!(
        api.get(&format!("/v1/insights/segments/{segment_id}"), &api.b)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let foreign = api
        .get(
            &format!("/v1/conversations?segment_id={segment_id}"),
            &api.b,
        )
        .await;
    assert_eq!(
        foreign.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        foreign.body
    );
    assert_eq!(foreign.body["errors"][0]["field"], "query.segment_id");

    // Every problem of a bad question, named as this API names its parameters.
    let bad = api
        .get("/v1/insights/breakdown?by=colour&sentiment=furious&from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z", &api.a)
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["query.by", "query.sentiment", "query.to"] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    let unknown = api.get("/v1/insights/summary?colour=red", &api.a).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    // A key for insights only sees no metafield values and may not filter by them.
    let analyst = api
        .keys
        .create(
            "ws_a",
            "analyst",
            "analyst",
            &["insights:read".to_owned()],
            0,
            "cli",
        )
        .await
        .unwrap()
        .key;
    let seen = api.get("/v1/insights/dimensions", &analyst).await;
    assert_eq!(seen.status, StatusCode::OK);
    let assistant_ids = seen.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"] == "metafields.assistant_id")
        .unwrap()
        .clone();
    assert_eq!(assistant_ids["values"], json!([]));
    let full = api.get("/v1/insights/dimensions", &api.a).await;
    assert!(full.body["data"].as_array().unwrap().iter().any(|d| {
        d["key"] == "metafields.assistant_id" && d["values"].as_array().unwrap().len() == 2
    }));
    let refused = api
        .get(
            "/v1/insights/summary?metafields=assistant_id:asst_1",
            &analyst,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let refused = api
        .get(
            "/v1/insights/breakdown?by=metafields.assistant_id",
            &analyst,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/v1/insights/breakdown?by=topic", &analyst)
            .await
            .status,
        StatusCode::OK
    );

    // Findings: none in a quiet workspace; detection runs on demand.
    let findings = api.get("/v1/insights/findings", &api.a).await;
    assert_eq!(findings.body["data"], json!([]));
    let detected = api
        .post("/v1/insights/findings/detect", &api.a, json!({}))
        .await;
    assert_eq!(detected.status, StatusCode::OK, "{}", detected.body);
    let missing = api
        .post(
            "/v1/insights/findings/fnd_nothing/dismiss",
            &api.a,
            json!({}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Scopes: insights need `insights:read` (or `read`).
    let deleted = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/insights/segments/{segment_id}"),
            &api.a,
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(
        api.get(&format!("/v1/insights/segments/{segment_id}"), &api.a)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(
    a_request_without_a_live_key_is_401_problem_json,
    conversations_start_read_change_and_talk_with_etags,
    lists_page_by_cursor_with_a_link_to_the_next_page,
    another_workspaces_resources_are_404_like_missing_ones,
    scopes_limit_what_a_key_may_do,
    an_idempotency_key_replays_the_first_answer_and_refuses_another_body,
    bad_bodies_name_the_field_and_store_nothing,
    keys_are_created_shown_once_rotated_and_revoked_at_once,
    the_openapi_document_describes_every_route_and_the_docs_page_loads_it,
    a_cms_pushes_5000_documents_removes_1000_and_searches_them,
    documents_are_put_patched_read_and_deleted_by_external_id,
    a_key_past_its_rate_is_429_with_retry_after_and_others_go_on,
    webhook_endpoints_are_managed_with_etags_and_their_secrets_rotate,
    actions_are_defined_patched_tested_and_deleted_as_their_json,
    flows_are_drafted_published_and_run_by_assistants_over_rest,
    model_providers_are_kept_over_rest_and_their_keys_never_shown,
    integrations_are_kept_over_rest_and_their_secrets_never_shown,
    insights_answer_over_rest_and_conversation_lists_filter_by_assistant_and_segment,
);
