//! Contract tests: the HTTP client and the simulator held to the fixtures written from
//! Connexease's documentation (`fixtures/`). The client's every call is pinned, method,
//! host, path, headers and body, against a server that records what it gets and answers
//! the documented examples; the simulator's answers are held to the same examples' shapes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_connexease::client::documented::TemplateMessage;
use switchboard_connexease::client::{
    AssignTo, Auth, ClientError, ConnexeaseApi, HttpConnexease, RetryPolicy, Target,
};
use switchboard_connexease::sim::{self, SimConfig};
use switchboard_secrets::Secret;
use tokio_util::sync::CancellationToken;

fn documented() -> Value {
    serde_json::from_str(include_str!("fixtures/documented.json")).unwrap()
}

/// One request as the recording server got it.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    raw: Vec<u8>,
}

/// Answers by path: status, body, and the headers to add.
type Answers = HashMap<String, Vec<(u16, Value)>>;

#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<Answers>>,
}

async fn record(
    State(recorder): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    recorder.got.lock().unwrap().push(Got {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
    });
    let mut answers = recorder.answers.lock().unwrap();
    let queue = answers.entry(path).or_default();
    let (status, body) = if queue.len() > 1 {
        queue.remove(0)
    } else {
        queue
            .first()
            .cloned()
            .unwrap_or((404, json!({"detail": "Not found."})))
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

impl Recorder {
    async fn start(shutdown: &CancellationToken) -> (Self, SocketAddr) {
        let recorder = Recorder::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(recorder.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap()
        });
        (recorder, addr)
    }

    fn answer(&self, path: &str, answers: Vec<(u16, Value)>) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_owned(), answers);
    }

    fn got(&self) -> Vec<Got> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

fn client(attempts: u32) -> HttpConnexease {
    HttpConnexease::new(
        common::outbound(),
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            ..RetryPolicy::default()
        },
    )
}

fn bearer(addr: SocketAddr) -> Target {
    Target {
        workspace_id: "ws_contract".into(),
        base_url: format!("http://{addr}"),
        auth: Auth::Bearer(Secret::new(String::from("cx_contract_token"))),
        rate_per_second: 80,
    }
}

/// Checks what every request carries: the host it was sent to, `Accept`, and no header
/// Connexease does not document (no idempotency key).
fn common_headers(got: &Got, addr: SocketAddr) {
    assert_eq!(got.headers["host"], addr.to_string(), "{got:?}");
    assert_eq!(got.headers["accept"], "application/json", "{got:?}");
    assert!(!got.headers.contains_key("idempotency-key"), "{got:?}");
    if !got.body.is_null() {
        assert_eq!(got.headers["content-type"], "application/json", "{got:?}");
    }
}

/// The documented calls, as the client sends them.
#[tokio::test]
async fn the_client_sends_every_documented_call_as_documented() {
    switchboard_outbound::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let (server, addr) = Recorder::start(&shutdown).await;
    let fixtures = documented();
    for call in ["jwt", "stats", "templates", "template_message_single"] {
        let fixture = &fixtures[call];
        server.answer(
            fixture["request"]["path"].as_str().unwrap(),
            vec![(200, fixture["response"].clone())],
        );
    }
    let api = client(3);
    let target = bearer(addr);

    // GET /templates/, the connection's check.
    let checked = api.check(&target).await.unwrap();
    assert_eq!(checked.body, json!({"templates": 1}));
    // GET /stats.
    let stats = api.stats(&target).await.unwrap();
    assert_eq!(stats.body, fixtures["stats"]["response"]);
    // POST /template_message/single/.
    let message = &fixtures["template_message_single"]["request"]["body"];
    let sent = api
        .send_template(
            &target,
            &TemplateMessage {
                channel: message["channel"].as_str().unwrap().into(),
                template: message["template"].as_str().unwrap().into(),
                phone: message["phone"].as_str().unwrap().into(),
                parameters: vec!["A-17".into(), "shipped".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(sent.body, fixtures["template_message_single"]["response"]);
    let got = server.got();
    assert_eq!(got.len(), 3);
    for (got, call) in got
        .iter()
        .zip(["templates", "stats", "template_message_single"])
    {
        let request = &fixtures[call]["request"];
        assert_eq!(got.method, request["method"], "{call}");
        assert_eq!(got.path, request["path"], "{call}");
        assert_eq!(got.body, request["body"], "{call}");
        assert_eq!(
            got.headers["authorization"], "Bearer cx_contract_token",
            "{call}"
        );
        common_headers(got, addr);
    }

    // The legacy flow: POST /jwt/ once, then `Authorization: JWT <token>` on every call.
    let jwt = &fixtures["jwt"];
    let target = Target {
        auth: Auth::Jwt {
            username: jwt["request"]["body"]["username"].as_str().unwrap().into(),
            password: Secret::new(
                jwt["request"]["body"]["password"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
        },
        ..bearer(addr)
    };
    api.stats(&target).await.unwrap();
    api.check(&target).await.unwrap();
    let got = server.got();
    assert_eq!(
        got.iter()
            .map(|g| format!("{} {}", g.method, g.path))
            .collect::<Vec<_>>(),
        ["POST /jwt/", "GET /stats", "GET /templates/"]
    );
    assert_eq!(got[0].body, jwt["request"]["body"]);
    assert!(!got[0].headers.contains_key("authorization"));
    let token = jwt["response"]["token"].as_str().unwrap();
    for later in &got[1..] {
        assert_eq!(later.headers["authorization"], format!("JWT {token}"));
        common_headers(later, addr);
    }
    // A refused JWT (expired early, revoked) is fetched again once.
    server.answer(
        "/stats",
        vec![
            (401, json!({"detail": "Signature has expired."})),
            (200, fixtures["stats"]["response"].clone()),
        ],
    );
    api.stats(&target).await.unwrap();
    assert_eq!(
        server
            .got()
            .iter()
            .map(|g| format!("{} {}", g.method, g.path))
            .collect::<Vec<_>>(),
        ["GET /stats", "POST /jwt/", "GET /stats"]
    );
    shutdown.cancel();
}

/// The documented error bodies become clear errors; a throttled answer's delay is read
/// from its body when no `Retry-After` comes.
#[tokio::test]
async fn documented_errors_are_read_and_a_throttled_body_sets_the_delay() {
    switchboard_outbound::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let (server, addr) = Recorder::start(&shutdown).await;
    let errors = &documented()["errors"];
    let api = client(3);
    let target = bearer(addr);
    let status = |name: &str| errors[name]["status"].as_u64().unwrap() as u16;

    server.answer(
        "/stats",
        vec![(status("not_found"), errors["not_found"]["body"].clone())],
    );
    assert_eq!(
        api.stats(&target).await.unwrap_err(),
        ClientError::NotFound("Not found.".into())
    );
    server.answer(
        "/stats",
        vec![(
            status("unauthenticated"),
            errors["unauthenticated"]["body"].clone(),
        )],
    );
    assert_eq!(
        api.stats(&target).await.unwrap_err(),
        ClientError::Unauthorized("Authentication credentials were not provided.".into())
    );
    server.answer(
        "/template_message/single/",
        vec![(status("field"), errors["field"]["body"].clone())],
    );
    let refused = api
        .send_template(
            &target,
            &TemplateMessage {
                channel: "c".into(),
                template: "t".into(),
                phone: String::new(),
                parameters: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        ClientError::Invalid("phone: This field is required.".into())
    );
    let jwt = Target {
        auth: Auth::Jwt {
            username: "u".into(),
            password: Secret::new(String::from("wrong")),
        },
        ..bearer(addr)
    };
    server.answer(
        "/jwt/",
        vec![(
            status("bad_credentials"),
            errors["bad_credentials"]["body"].clone(),
        )],
    );
    assert_eq!(
        api.stats(&jwt).await.unwrap_err(),
        ClientError::Unauthorized("Unable to log in with provided credentials.".into())
    );
    server.got();

    // Throttled with the delay only in the body: the retry waits it (1 s).
    server.answer(
        "/templates/",
        vec![
            (status("throttled"), errors["throttled"]["body"].clone()),
            (200, json!([])),
        ],
    );
    let started = Instant::now();
    api.check(&target).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(server.got().len(), 2);
    shutdown.cancel();
}

/// The assumed calls (`client::assumed`), pinned as we assume them, so a change to them is
/// a deliberate one.
#[tokio::test]
async fn the_client_sends_every_assumed_call_as_assumed() {
    switchboard_outbound::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let (server, addr) = Recorder::start(&shutdown).await;
    let conversation = "3f8a1c2e-9b7d-4e6f-8a5c-2d1e0f9a8b7c";
    let customer = "8c2d4e6f-1a3b-4c5d-9e8f-7a6b5c4d3e2f";
    let group = "7b1d3f6e-0a4c-4b8e-9d21-5f6a7b8c9d01";
    for path in ["/groups/", "/agents/", "/custom_fields/"] {
        server.answer(path, vec![(200, json!([]))]);
    }
    for path in [
        format!("/conversations/{conversation}/"),
        format!("/conversations/{conversation}/assign/"),
        format!("/conversations/{conversation}/archive/"),
        format!("/conversations/{conversation}/custom_fields/"),
        format!("/customers/{customer}/"),
        format!("/customers/{customer}/custom_fields/"),
    ] {
        server.answer(&path, vec![(200, json!({"uuid": conversation}))]);
    }
    let api = client(2);
    let target = bearer(addr);
    let fields: BTreeMap<String, Value> = [("topics".to_owned(), json!(["refund"]))].into();
    api.directory(&target).await.unwrap();
    api.conversation(&target, conversation).await.unwrap();
    api.assign(&target, conversation, &AssignTo::Group(group.into()))
        .await
        .unwrap();
    api.set_archived(&target, conversation, true).await.unwrap();
    api.set_conversation_fields(&target, conversation, &fields)
        .await
        .unwrap();
    api.update_customer(&target, customer, &json!({"name": "Grace"}))
        .await
        .unwrap();
    api.set_customer_fields(&target, customer, &fields)
        .await
        .unwrap();
    let got: Vec<(String, String, Value)> = server
        .got()
        .into_iter()
        .inspect(|g| common_headers(g, addr))
        .map(|g| (g.method, g.path, g.body))
        .collect();
    let call = |method: &str, path: String, body: Value| (method.to_owned(), path, body);
    assert_eq!(
        got,
        [
            call("GET", "/groups/".into(), Value::Null),
            call("GET", "/agents/".into(), Value::Null),
            call("GET", "/custom_fields/".into(), Value::Null),
            call(
                "GET",
                format!("/conversations/{conversation}/"),
                Value::Null
            ),
            call(
                "POST",
                format!("/conversations/{conversation}/assign/"),
                json!({"group": group})
            ),
            call(
                "POST",
                format!("/conversations/{conversation}/archive/"),
                Value::Null
            ),
            call(
                "PATCH",
                format!("/conversations/{conversation}/custom_fields/"),
                json!({"custom_fields": {"topics": ["refund"]}})
            ),
            call(
                "PATCH",
                format!("/customers/{customer}/"),
                json!({"name": "Grace"})
            ),
            call(
                "PATCH",
                format!("/customers/{customer}/custom_fields/"),
                json!({"custom_fields": {"topics": ["refund"]}})
            ),
        ]
    );
    shutdown.cancel();
}

/// Whether `value` has the shape of `example`: the same members (recursively; a list's
/// items like the example's first) of the same JSON types.
fn same_shape(example: &Value, value: &Value, at: &str) -> Result<(), String> {
    match (example, value) {
        (Value::Object(want), Value::Object(have)) => want.iter().try_for_each(|(key, want)| {
            let have = have
                .get(key)
                .ok_or_else(|| format!("{at}.{key} is missing"))?;
            same_shape(want, have, &format!("{at}.{key}"))
        }),
        (Value::Array(want), Value::Array(have)) => match (want.first(), have.first()) {
            (Some(want), Some(have)) => same_shape(want, have, &format!("{at}[0]")),
            _ => Ok(()),
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{at}: {value} is not shaped like {example}")),
    }
}

/// The simulator answers the documented calls as the documentation's examples are shaped,
/// and its errors are the documented bodies.
#[tokio::test]
async fn the_simulator_answers_documented_calls_in_the_documented_shapes() {
    switchboard_outbound::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let config = SimConfig::default();
    let sim = sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        config.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let fixtures = documented();
    let http = reqwest::Client::new();
    let send = |request: &Value, authorization: Option<String>| {
        let method =
            reqwest::Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut builder = http.request(
            method,
            format!("{}{}", sim.base_url(), request["path"].as_str().unwrap()),
        );
        if let Some(authorization) = authorization {
            builder = builder.header("authorization", authorization);
        }
        if !request["body"].is_null() {
            builder = builder
                .header("content-type", "application/json")
                .body(request["body"].to_string());
        }
        builder.send()
    };
    let answer = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let bearer = Some(format!("Bearer {}", config.token));
    for call in ["stats", "templates", "template_message_single"] {
        let fixture = &fixtures[call];
        let (status, body) = answer(send(&fixture["request"], bearer.clone()).await.unwrap()).await;
        assert_eq!(status, 200, "{call}: {body}");
        same_shape(&fixture["response"], &body, call).unwrap_or_else(|e| panic!("{e}"));
    }
    let (status, token) = answer(send(&fixtures["jwt"]["request"], None).await.unwrap()).await;
    assert_eq!(status, 200);
    same_shape(&fixtures["jwt"]["response"], &token, "jwt").unwrap();
    let jwt = Some(format!("JWT {}", token["token"].as_str().unwrap()));
    let (status, _) = answer(send(&fixtures["stats"]["request"], jwt).await.unwrap()).await;
    assert_eq!(status, 200, "the JWT is taken");

    // The documented error bodies.
    let errors = &fixtures["errors"];
    let unauthenticated = answer(send(&fixtures["stats"]["request"], None).await.unwrap()).await;
    assert_eq!(
        unauthenticated,
        (401, errors["unauthenticated"]["body"].clone())
    );
    let mut wrong = fixtures["jwt"]["request"].clone();
    wrong["body"]["password"] = json!("wrong");
    assert_eq!(
        answer(send(&wrong, None).await.unwrap()).await,
        (400, errors["bad_credentials"]["body"].clone())
    );
    let mut missing = fixtures["template_message_single"]["request"].clone();
    missing["body"]["phone"] = json!("");
    assert_eq!(
        answer(send(&missing, bearer.clone()).await.unwrap()).await,
        (400, errors["field"]["body"].clone())
    );
    let unknown = json!({"method": "GET", "path": "/conversations/00000000-0000-4000-8000-000000000000/", "body": null});
    assert_eq!(
        answer(send(&unknown, bearer.clone()).await.unwrap()).await,
        (404, errors["not_found"]["body"].clone())
    );
    shutdown.cancel();
}

/// The simulator's deliveries are the published shape the fixtures hold, signed base64.
#[tokio::test]
async fn the_simulator_delivers_the_published_shape() {
    switchboard_outbound::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let (server, addr) = Recorder::start(&shutdown).await;
    server.answer("/hooks", vec![(200, json!({"received": true}))]);
    let config = SimConfig {
        webhook_url: Some(format!("http://{addr}/hooks")),
        ..SimConfig::default()
    };
    let sim = sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        config.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    reqwest::Client::new()
        .post(format!("{}/sim/conversations", sim.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"customer_name": "Grace"}"#)
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        got = server.got();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let delivery = &got[0];
    let fixtures: Vec<Value> =
        serde_json::from_str(include_str!("fixtures/deliveries.json")).unwrap();
    same_shape(&fixtures[0], &delivery.body, "delivery").unwrap_or_else(|e| panic!("{e}"));
    let sign = &delivery.headers[switchboard_connexease::signature::HEADER];
    assert_eq!(sign.len(), 44, "base64 of 32 bytes: {sign}");
    assert!(switchboard_connexease::signature::verify(
        &config.webhook_secret,
        &delivery.raw,
        sign
    ));
    shutdown.cancel();
}
