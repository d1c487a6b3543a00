//! `switchboard connexease-sim`: a real HTTP server that behaves as Connexease does, with
//! in-memory state, so every Connexease call can be built and tested against something
//! that answers like it.
//!
//! It serves, by default, what Connexease documents (see [`crate::client::documented`]):
//! the account access token (`Authorization: Bearer`) and the legacy `POST /jwt/` flow
//! (`Authorization: JWT`, 24 hours), `GET /stats`, `GET /templates/`, `POST
//! /template_message/single/`; `uuid` ids, paths ending in a slash, bare JSON, errors as
//! `{"detail": …}`, `{"non_field_errors": […]}` or a field's messages, 429 with
//! `Retry-After` and the delay in `detail`; and webhook deliveries in the published shape
//! (`{"hook", "payload", "channel"}`, signed base64 in `X-Connexease-Webhook-Sign`), each
//! retried up to 30 times until answered 2xx. It also serves the **assumed** operations
//! and directory reads of [`crate::client::assumed`], marked as such on their routes.
//!
//! `/sim/...` is the simulator's own control surface for tests and demos: people writing
//! and acting in Connexease (conversations, messages, archiving, agents' statuses,
//! feedback, auto-assignment), failures and stalls to inject, and what it saw.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hooks;
use crate::signature;

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The account access token it accepts (`Authorization: Bearer`).
    pub token: String,
    /// The username and password `POST /jwt/` accepts.
    pub username: String,
    pub password: String,
    /// Signs the webhooks it sends.
    pub webhook_secret: String,
    /// Where it sends webhooks; `None` for nowhere.
    pub webhook_url: Option<String>,
    /// Requests a second before it answers 429.
    pub rate_per_second: u32,
    /// Webhook deliveries are tried this many times (Connexease: 30).
    pub webhook_attempts: u32,
    /// The first wait between two tries of a delivery; doubled each time, up to a minute.
    pub webhook_retry_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token: "cx_sim_token".into(),
            username: "sim@connexease.example".into(),
            password: "cx_sim_password".into(),
            webhook_secret: "cx_sim_webhook_secret".into(),
            webhook_url: None,
            rate_per_second: 80,
            webhook_attempts: 30,
            webhook_retry_delay: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConversation {
    pub uuid: String,
    /// open or archived.
    pub status: String,
    /// The conversation's type (`conversation.type_changed`).
    #[serde(rename = "type")]
    pub kind: String,
    pub customer: String,
    pub channel: String,
    pub group: Option<String>,
    pub agent: Option<String>,
    pub custom_fields: BTreeMap<String, Value>,
    /// Our conversation id, when the conversation came from Switchboard.
    pub external_id: Option<String>,
    pub messages: Vec<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimCustomer {
    pub uuid: String,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub social: BTreeMap<String, String>,
    pub custom_fields: BTreeMap<String, Value>,
}

/// One request the simulator answered.
#[derive(Debug, Clone, Serialize)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// `Bearer`, `JWT` or empty: the scheme of the `Authorization` header.
    pub auth: String,
    pub body: Value,
    pub status: u16,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// One try of one webhook delivery.
#[derive(Debug, Clone, Serialize)]
pub struct SeenDelivery {
    pub hook: String,
    pub attempt: u32,
    /// What our endpoint answered; 0 when it could not be reached.
    pub status: u16,
    pub bytes: usize,
}

/// What to do to the next change requests: fail them, or apply them (or not) and never
/// answer.
#[derive(Default, Clone, Copy)]
struct Injected {
    failures: Option<(u16, u32)>,
    stalls: Option<(bool, u32)>,
}

#[derive(Default)]
struct World {
    channels: Vec<Value>,
    groups: Vec<Value>,
    agents: Vec<Value>,
    fields: Vec<Value>,
    templates: Vec<Value>,
    conversations: BTreeMap<String, SimConversation>,
    customers: BTreeMap<String, SimCustomer>,
    /// JWTs issued, and until when each is valid.
    jwts: HashMap<String, Instant>,
    injected: Injected,
    requests: Vec<SeenRequest>,
    deliveries: Vec<SeenDelivery>,
    template_messages: Vec<Value>,
}

#[derive(Clone)]
struct Sim {
    config: Arc<SimConfig>,
    world: Arc<Mutex<World>>,
    limiter: Arc<DefaultDirectRateLimiter>,
    http: reqwest::Client,
}

/// A running simulator.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub config: SimConfig,
}

impl RunningSim {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Stable uuids for the seeded directory, so demos and tests can name them.
pub mod seeded_ids {
    pub const CHANNEL: &str = "5e0c8a52-6b0e-4d61-9f5a-0c1a2b3c4d01";
    pub const BILLING: &str = "7b1d3f6e-0a4c-4b8e-9d21-5f6a7b8c9d01";
    pub const SUPPORT: &str = "7b1d3f6e-0a4c-4b8e-9d21-5f6a7b8c9d02";
    pub const RETURNS: &str = "7b1d3f6e-0a4c-4b8e-9d21-5f6a7b8c9d03";
    pub const ADA: &str = "a9e2c4d6-1b3f-4a5c-8e7d-0f1e2d3c4b01";
    pub const BOB: &str = "a9e2c4d6-1b3f-4a5c-8e7d-0f1e2d3c4b02";
    pub const CY: &str = "a9e2c4d6-1b3f-4a5c-8e7d-0f1e2d3c4b03";
    pub const TEMPLATE: &str = "c3f5a7b9-2d4e-4f60-8a1b-3c5d7e9f0a01";
}

fn seeded() -> World {
    use seeded_ids::*;
    World {
        channels: vec![json!({"uuid": CHANNEL, "name": "Web chat", "type": "custom"})],
        groups: vec![
            json!({"uuid": BILLING, "name": "billing"}),
            json!({"uuid": SUPPORT, "name": "support"}),
            json!({"uuid": RETURNS, "name": "returns"}),
        ],
        agents: vec![
            json!({"uuid": ADA, "email": "ada@shop.example", "name": "Ada", "status": "online"}),
            json!({"uuid": BOB, "email": "bob@shop.example", "name": "Bob", "status": "away"}),
            json!({"uuid": CY, "email": "cy@shop.example", "name": "Cy", "status": "offline"}),
        ],
        fields: vec![
            json!({"key": "order_number", "label": "Order number", "type": "text", "scope": "conversation"}),
            json!({"key": "topics", "label": "Topics", "type": "tags", "scope": "conversation"}),
            json!({"key": "tier", "label": "Tier", "type": "text", "scope": "customer"}),
            json!({"key": "interests", "label": "Interests", "type": "tags", "scope": "customer"}),
        ],
        templates: vec![json!({
            "uuid": TEMPLATE, "name": "order_update", "language": "en",
            "body": "Your order {{1}} is {{2}}.", "parameter_count": 2,
        })],
        ..World::default()
    }
}

/// Starts the simulator on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<RunningSim> {
    let addr = listener.local_addr()?;
    switchboard_outbound::install_crypto_provider();
    let rate = NonZeroU32::new(config.rate_per_second.max(1)).expect("at least one");
    let sim = Sim {
        config: Arc::new(config.clone()),
        world: Arc::new(Mutex::new(seeded())),
        limiter: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client"),
    };
    let app = router(sim);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(RunningSim { addr, config })
}

fn router(sim: Sim) -> Router {
    Router::new()
        // Documented.
        .route("/jwt/", post(jwt))
        .route("/stats", get(stats))
        .route("/templates/", get(templates))
        .route("/template_message/single/", post(template_message))
        // Assumed (client::assumed): no Connexease page publishes these.
        .route("/groups/", get(groups))
        .route("/agents/", get(agents))
        .route("/custom_fields/", get(fields))
        .route("/conversations/{id}/", get(get_conversation))
        .route("/conversations/{id}/assign/", post(assign))
        .route("/conversations/{id}/archive/", post(archive))
        .route("/conversations/{id}/unarchive/", post(unarchive))
        .route(
            "/conversations/{id}/custom_fields/",
            patch(conversation_fields),
        )
        .route("/customers/{id}/", get(get_customer).patch(update_customer))
        .route("/customers/{id}/custom_fields/", patch(customer_fields))
        // The simulator's own.
        .route("/sim/conversations", post(sim_create_conversation))
        .route("/sim/conversations/{id}/messages", post(sim_message))
        .route("/sim/conversations/{id}/archive", post(sim_archive))
        .route("/sim/conversations/{id}/auto_assign", post(sim_auto_assign))
        .route("/sim/conversations/{id}/type", post(sim_type))
        .route("/sim/conversations/{id}/feedback", post(sim_feedback))
        .route("/sim/agents/{id}/status", post(sim_agent_status))
        .route("/sim/failures", post(sim_failures))
        .route("/sim/stalls", post(sim_stalls))
        .route("/sim/state", get(sim_state))
        .route("/sim/requests", get(sim_requests))
        .route("/sim/deliveries", get(sim_deliveries))
        .with_state(sim)
}

/// An error answer in the documented shapes.
struct SimError {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// `{"detail": message}`.
fn detail(status: StatusCode, message: impl Into<String>) -> SimError {
    SimError {
        status,
        body: json!({"detail": message.into()}),
    }
}

/// `{"<field>": [message]}`, as a 400.
fn field_error(field: &str, message: impl Into<String>) -> SimError {
    SimError {
        status: StatusCode::BAD_REQUEST,
        body: json!({ field: [message.into()] }),
    }
}

fn not_found() -> SimError {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What a change did: its answer, and the deliveries it causes.
type Changed = (Value, Vec<(String, Value)>);

impl Sim {
    /// Authentication, the rate limit and injected failures around one API request;
    /// `apply` reads or changes the world and answers.
    async fn handle(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Value,
        apply: impl FnOnce(&mut World) -> Result<Changed, SimError>,
    ) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let scheme = auth.split(' ').next().unwrap_or_default().to_owned();
        let (response, deliveries, stall) = self.answer(&method, &auth, apply);
        self.world
            .lock()
            .expect("sim state")
            .requests
            .push(SeenRequest {
                method: method.to_string(),
                path: path.into(),
                auth: scheme,
                body,
                status: response.status().as_u16(),
                at_ms: now_ms(),
            });
        for (hook, payload) in deliveries {
            self.deliver(hook, payload);
        }
        if stall {
            // Applied or not, the answer never comes: the caller's timeout ends it.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        response
    }

    fn answer(
        &self,
        method: &Method,
        auth: &str,
        apply: impl FnOnce(&mut World) -> Result<Changed, SimError>,
    ) -> (Response, Vec<(String, Value)>, bool) {
        let mut world = self.world.lock().expect("sim state");
        let authorized = match auth.split_once(' ') {
            Some(("Bearer", token)) => token == self.config.token,
            Some(("JWT", token)) => world
                .jwts
                .get(token)
                .is_some_and(|until| Instant::now() < *until),
            _ => false,
        };
        if !authorized {
            let message = if auth.is_empty() {
                "Authentication credentials were not provided."
            } else {
                "Invalid token."
            };
            return (
                detail(StatusCode::UNAUTHORIZED, message).into_response(),
                vec![],
                false,
            );
        }
        if self.limiter.check().is_err() {
            let mut response = detail(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled. Expected available in 1 second.",
            )
            .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return (response, vec![], false);
        }
        if let Some((status, remaining)) = world.injected.failures {
            world.injected.failures = (remaining > 1).then_some((status, remaining - 1));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (
                detail(status, "A server error occurred.").into_response(),
                vec![],
                false,
            );
        }
        let stall = match world.injected.stalls {
            Some((apply, remaining)) if *method != Method::GET => {
                world.injected.stalls = (remaining > 1).then_some((apply, remaining - 1));
                Some(apply)
            }
            _ => None,
        };
        if stall == Some(false) {
            return (StatusCode::OK.into_response(), vec![], true);
        }
        match apply(&mut world) {
            Ok((body, deliveries)) => (Json(body).into_response(), deliveries, stall.is_some()),
            Err(e) => (e.into_response(), vec![], false),
        }
    }

    /// Sends a delivery in the published shape, signed, trying until answered 2xx, up to
    /// `webhook_attempts` times.
    fn deliver(&self, hook: String, payload: Value) {
        let Some(url) = self.config.webhook_url.clone() else {
            return;
        };
        let body = self.delivery_body(&hook, payload);
        let sim = self.clone();
        tokio::spawn(async move {
            sim.send_delivery(&url, &hook, body).await;
        });
    }

    fn delivery_body(&self, hook: &str, payload: Value) -> String {
        let channel = self.world.lock().expect("sim state").channels[0].clone();
        json!({"hook": hook, "payload": payload, "channel": channel}).to_string()
    }

    /// Tries `body` until answered 2xx; the last answer's body.
    async fn send_delivery(&self, url: &str, hook: &str, body: String) -> Option<Value> {
        let sign = signature::sign(&self.config.webhook_secret, body.as_bytes());
        let mut delay = self.config.webhook_retry_delay;
        for attempt in 1..=self.config.webhook_attempts.max(1) {
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header(signature::HEADER, &sign)
                .body(body.clone())
                .send()
                .await;
            let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
            self.world
                .lock()
                .expect("sim state")
                .deliveries
                .push(SeenDelivery {
                    hook: hook.into(),
                    attempt,
                    status,
                    bytes: body.len(),
                });
            if let Ok(response) = sent
                && response.status().is_success()
            {
                let answer = response.bytes().await.ok()?;
                return serde_json::from_slice(&answer).ok();
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        None
    }
}

impl World {
    fn agent(&self, uuid: &str) -> Option<&Value> {
        self.agents.iter().find(|a| a["uuid"] == uuid)
    }

    /// A conversation as Connexease shows it (and sends it in `conversation.*` payloads).
    fn conversation_view(&self, c: &SimConversation) -> Value {
        let customer = self.customers.get(&c.customer);
        let group = c
            .group
            .as_ref()
            .and_then(|g| self.groups.iter().find(|x| x["uuid"] == g.as_str()));
        let agent = c.agent.as_ref().and_then(|a| self.agent(a));
        json!({
            "uuid": c.uuid,
            "status": c.status,
            "type": c.kind,
            "customer": customer.map(|u| json!({"uuid": u.uuid, "name": u.name, "email": u.email})),
            "group": group,
            "agent": agent.map(|a| json!({"uuid": a["uuid"], "name": a["name"], "email": a["email"]})),
            "custom_fields": c.custom_fields,
            "external_id": c.external_id,
        })
    }

    fn conversation(&mut self, id: &str) -> Result<&mut SimConversation, SimError> {
        self.conversations.get_mut(id).ok_or_else(not_found)
    }

    /// The view of conversation `id` and a delivery of it as `hook`.
    fn conversation_changed(&self, id: &str, hook: &str) -> Changed {
        let view = self.conversation_view(&self.conversations[id]);
        (view.clone(), vec![(hook.to_owned(), view)])
    }
}

fn new_uuid() -> String {
    Uuid::new_v4().to_string()
}

// Documented.

#[derive(Deserialize)]
struct Credentials {
    username: Option<String>,
    password: Option<String>,
}

/// `POST /jwt/` (docs.connexease.com, "Authentication"): a token valid for 24 hours.
async fn jwt(State(sim): State<Sim>, body: Option<Json<Credentials>>) -> Response {
    let (username, password) = body
        .map(|Json(c)| (c.username, c.password))
        .unwrap_or_default();
    let mut errors = serde_json::Map::new();
    for (field, value) in [("username", &username), ("password", &password)] {
        if value.as_deref().is_none_or(str::is_empty) {
            errors.insert(field.into(), json!(["This field is required."]));
        }
    }
    let seen = json!({"username": username});
    let response = if !errors.is_empty() {
        SimError {
            status: StatusCode::BAD_REQUEST,
            body: Value::Object(errors),
        }
        .into_response()
    } else if username.as_deref() != Some(&sim.config.username)
        || password.as_deref() != Some(&sim.config.password)
    {
        SimError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"non_field_errors": ["Unable to log in with provided credentials."]}),
        }
        .into_response()
    } else {
        let token = format!("jwt.{}", Uuid::new_v4().simple());
        sim.world.lock().expect("sim state").jwts.insert(
            token.clone(),
            Instant::now() + Duration::from_secs(24 * 3600),
        );
        Json(json!({"token": token})).into_response()
    };
    sim.world
        .lock()
        .expect("sim state")
        .requests
        .push(SeenRequest {
            method: "POST".into(),
            path: "/jwt/".into(),
            auth: String::new(),
            body: seen,
            status: response.status().as_u16(),
            at_ms: now_ms(),
        });
    response
}

/// `GET /stats` (help.connexease.com/dev, "Endpoints"): per-channel message and customer
/// counters and response times, and the agents by uuid and name.
async fn stats(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle(Method::GET, "/stats", &headers, Value::Null, |w| {
        let channels: Vec<Value> = w
            .channels
            .iter()
            .map(|channel| {
                let on: Vec<&SimConversation> = w
                    .conversations
                    .values()
                    .filter(|c| channel["uuid"] == c.channel.as_str())
                    .collect();
                let messages: usize = on.iter().map(|c| c.messages.len()).sum();
                let customers = on
                    .iter()
                    .map(|c| &c.customer)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                let (first, average) = response_times(on.iter().copied(), None);
                json!({
                    "uuid": channel["uuid"], "name": channel["name"],
                    "message_count": messages, "customer_count": customers,
                    "first_response_time": first, "average_response_time": average,
                })
            })
            .collect();
        let agents: Vec<Value> = w
            .agents
            .iter()
            .map(|agent| {
                let uuid = agent["uuid"].as_str().unwrap_or_default();
                let (first, average) = response_times(w.conversations.values(), Some(uuid));
                json!({
                    "uuid": uuid, "name": agent["name"],
                    "first_response_time": first, "average_response_time": average,
                })
            })
            .collect();
        Ok((json!({"channels": channels, "agents": agents}), vec![]))
    })
    .await
}

/// Seconds from a customer's message to the agents' answer: the first answer of each
/// conversation, and every answer, averaged; of `agent` only when given.
fn response_times<'a>(
    conversations: impl Iterator<Item = &'a SimConversation>,
    agent: Option<&str>,
) -> (f64, f64) {
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for conversation in conversations {
        let mut waiting: Option<i64> = None;
        let mut answered = false;
        for message in &conversation.messages {
            let at = message["created_at"].as_i64().unwrap_or_default();
            let by_agent = message["sender"]["type"] == "agent";
            match (by_agent, waiting) {
                (false, None) => waiting = Some(at),
                (true, Some(since)) => {
                    if agent.is_none_or(|a| message["sender"]["uuid"] == a) {
                        let seconds = (at - since) as f64 / 1000.0;
                        if !answered {
                            first.push(seconds);
                        }
                        all.push(seconds);
                    }
                    answered = true;
                    waiting = None;
                }
                _ => {}
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (mean(&first), mean(&all))
}

/// `GET /templates/` (help.connexease.com/dev, "Templates").
async fn templates(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle(Method::GET, "/templates/", &headers, Value::Null, |w| {
        Ok((json!(w.templates), vec![]))
    })
    .await
}

/// `POST /template_message/single/` (help.connexease.com/dev, "Templates").
async fn template_message(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let seen = body.clone();
    sim.handle(
        Method::POST,
        "/template_message/single/",
        &headers,
        seen,
        move |w| {
            let mut errors = serde_json::Map::new();
            for field in ["channel", "template", "phone"] {
                if body[field].as_str().is_none_or(str::is_empty) {
                    errors.insert(field.into(), json!(["This field is required."]));
                }
            }
            if !errors.is_empty() {
                return Err(SimError {
                    status: StatusCode::BAD_REQUEST,
                    body: Value::Object(errors),
                });
            }
            let Some(template) = w.templates.iter().find(|t| t["uuid"] == body["template"]) else {
                return Err(field_error("template", "Template not found."));
            };
            let given = body["parameters"].as_array().map_or(0, Vec::len);
            if Some(given as u64) != template["parameter_count"].as_u64() {
                return Err(SimError {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({"non_field_errors": [format!(
                        "The template takes {} parameters.", template["parameter_count"]
                    )]}),
                });
            }
            let sent = json!({"uuid": new_uuid(), "status": "queued"});
            w.template_messages.push(body.clone());
            Ok((sent, vec![]))
        },
    )
    .await
}

// Assumed (client::assumed): no Connexease page publishes these.

async fn groups(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle(Method::GET, "/groups/", &headers, Value::Null, |w| {
        Ok((json!(w.groups), vec![]))
    })
    .await
}

async fn agents(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle(Method::GET, "/agents/", &headers, Value::Null, |w| {
        Ok((json!(w.agents), vec![]))
    })
    .await
}

async fn fields(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle(Method::GET, "/custom_fields/", &headers, Value::Null, |w| {
        Ok((json!(w.fields), vec![]))
    })
    .await
}

async fn get_conversation(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/conversations/{id}/");
    sim.handle(Method::GET, &path, &headers, Value::Null, |w| {
        let conversation = w.conversations.get(&id).ok_or_else(not_found)?;
        Ok((w.conversation_view(conversation), vec![]))
    })
    .await
}

#[derive(Deserialize, Default, Serialize)]
struct AssignBody {
    group: Option<String>,
    agent: Option<String>,
    #[serde(default)]
    auto: bool,
}

async fn assign(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<AssignBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let path = format!("/conversations/{id}/assign/");
    sim.handle(Method::POST, &path, &headers, json!(body), |w| {
        if let Some(group) = &body.group
            && !w.groups.iter().any(|g| g["uuid"] == group.as_str())
        {
            return Err(field_error("group", "Group not found."));
        }
        let agent = match (&body.agent, body.auto) {
            (Some(agent), _) => {
                if w.agent(agent).is_none() {
                    return Err(field_error("agent", "Agent not found."));
                }
                Some(agent.clone())
            }
            // Auto-assign: the first agent online.
            (None, true) => w
                .agents
                .iter()
                .find(|a| a["status"] == "online")
                .and_then(|a| a["uuid"].as_str())
                .map(str::to_owned),
            (None, false) if body.group.is_none() => {
                return Err(detail(
                    StatusCode::BAD_REQUEST,
                    "Give a group, an agent or auto.",
                ));
            }
            (None, false) => None,
        };
        let conversation = w.conversation(&id)?;
        if body.group.is_some() {
            conversation.group = body.group.clone();
        }
        if agent.is_some() {
            conversation.agent = agent;
        }
        let hook = if body.group.is_some() && body.agent.is_none() && !body.auto {
            hooks::CONVERSATION_GROUP_CHANGED
        } else {
            hooks::CONVERSATION_ASSIGNED
        };
        Ok(w.conversation_changed(&id, hook))
    })
    .await
}

async fn set_status(sim: &Sim, id: &str, headers: &HeaderMap, archived: bool) -> Response {
    let action = if archived { "archive" } else { "unarchive" };
    let path = format!("/conversations/{id}/{action}/");
    sim.handle(Method::POST, &path, headers, Value::Null, |w| {
        let conversation = w.conversation(id)?;
        conversation.status = if archived { "archived" } else { "open" }.into();
        Ok(archived_or_reopened(w, id, archived))
    })
    .await
}

/// An archived conversation's delivery carries every message (and attachment) it had;
/// reopening one is not a published hook, so nothing is sent.
fn archived_or_reopened(w: &World, id: &str, archived: bool) -> Changed {
    let conversation = &w.conversations[id];
    let view = w.conversation_view(conversation);
    if !archived {
        return (view, vec![]);
    }
    let mut payload = view.clone();
    payload["messages"] = json!(conversation.messages);
    (
        view,
        vec![(hooks::CONVERSATION_ARCHIVED.to_owned(), payload)],
    )
}

async fn archive(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    set_status(&sim, &id, &headers, true).await
}

async fn unarchive(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    set_status(&sim, &id, &headers, false).await
}

#[derive(Deserialize, Serialize)]
struct FieldsBody {
    custom_fields: BTreeMap<String, Value>,
}

/// Checks values against the field definitions of `scope`: text takes a string, tags a
/// list of strings.
fn check_fields(
    world: &World,
    scope: &str,
    fields: &BTreeMap<String, Value>,
) -> Result<(), SimError> {
    for (key, value) in fields {
        let Some(field) = world
            .fields
            .iter()
            .find(|f| f["key"] == key.as_str() && f["scope"] == scope)
        else {
            return Err(field_error(key, "No such custom field."));
        };
        let fits = match field["type"].as_str() {
            Some("tags") => value
                .as_array()
                .is_some_and(|tags| tags.iter().all(Value::is_string)),
            _ => value.is_string(),
        };
        if !fits {
            return Err(field_error(
                key,
                format!("Expected {}.", field["type"].as_str().unwrap_or("text")),
            ));
        }
    }
    Ok(())
}

async fn conversation_fields(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FieldsBody>,
) -> Response {
    let path = format!("/conversations/{id}/custom_fields/");
    sim.handle(Method::PATCH, &path, &headers, json!(body), |w| {
        check_fields(w, "conversation", &body.custom_fields)?;
        let conversation = w.conversation(&id)?;
        conversation
            .custom_fields
            .extend(body.custom_fields.clone());
        Ok(w.conversation_changed(&id, hooks::CONVERSATION_CUSTOM_FIELDS_UPDATED))
    })
    .await
}

#[derive(Deserialize, Serialize)]
struct CustomerBody {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    social: BTreeMap<String, String>,
}

fn customer_changed(w: &mut World, id: &str) -> Changed {
    let view = json!(w.customers[id]);
    (
        view.clone(),
        vec![(hooks::CUSTOMER_UPDATED.to_owned(), view)],
    )
}

async fn get_customer(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/customers/{id}/");
    sim.handle(Method::GET, &path, &headers, Value::Null, |w| {
        let customer = w.customers.get(&id).ok_or_else(not_found)?;
        Ok((json!(customer), vec![]))
    })
    .await
}

async fn update_customer(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CustomerBody>,
) -> Response {
    let path = format!("/customers/{id}/");
    sim.handle(Method::PATCH, &path, &headers, json!(body), |w| {
        if let Some(email) = &body.email
            && !email_address::EmailAddress::is_valid(email)
        {
            return Err(field_error("email", "Enter a valid email address."));
        }
        let customer = w.customers.get_mut(&id).ok_or_else(not_found)?;
        if let Some(name) = &body.name {
            customer.name = name.clone();
        }
        if let Some(email) = &body.email {
            customer.email = email.clone();
        }
        if let Some(phone) = &body.phone {
            customer.phone = phone.clone();
        }
        customer.social.extend(body.social.clone());
        Ok(customer_changed(w, &id))
    })
    .await
}

async fn customer_fields(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FieldsBody>,
) -> Response {
    let path = format!("/customers/{id}/custom_fields/");
    sim.handle(Method::PATCH, &path, &headers, json!(body), |w| {
        check_fields(w, "customer", &body.custom_fields)?;
        let customer = w.customers.get_mut(&id).ok_or_else(not_found)?;
        customer.custom_fields.extend(body.custom_fields.clone());
        Ok(customer_changed(w, &id))
    })
    .await
}

// The simulator's own control surface.

#[derive(Deserialize, Default)]
struct NewConversation {
    #[serde(default)]
    customer_name: String,
    #[serde(default)]
    customer_email: String,
    external_id: Option<String>,
}

/// Runs `change` on the world and sends its deliveries; answers its view, or the error.
fn act(sim: &Sim, change: impl FnOnce(&mut World) -> Result<Changed, SimError>) -> Response {
    let changed = change(&mut sim.world.lock().expect("sim state"));
    match changed {
        Ok((view, deliveries)) => {
            for (hook, payload) in deliveries {
                sim.deliver(hook, payload);
            }
            Json(view).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// A customer writes in: a conversation and its customer are created, and
/// `conversation.created` is sent.
async fn sim_create_conversation(
    State(sim): State<Sim>,
    body: Option<Json<NewConversation>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    act(&sim, |w| {
        let customer = new_uuid();
        let id = new_uuid();
        w.customers.insert(
            customer.clone(),
            SimCustomer {
                uuid: customer.clone(),
                name: body.customer_name,
                email: body.customer_email,
                ..Default::default()
            },
        );
        let channel = w.channels[0]["uuid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        w.conversations.insert(
            id.clone(),
            SimConversation {
                uuid: id.clone(),
                status: "open".into(),
                kind: "chat".into(),
                customer,
                channel,
                group: None,
                agent: None,
                custom_fields: BTreeMap::new(),
                external_id: body.external_id,
                messages: Vec::new(),
            },
        );
        Ok(w.conversation_changed(&id, hooks::CONVERSATION_CREATED))
    })
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
    /// `customer` (the default) or `agent`.
    #[serde(default)]
    sender: String,
    /// The agent writing, for `agent`; the conversation's agent by default.
    agent: Option<String>,
    /// Attachments' names, each with a body of `attachment_bytes` bytes.
    #[serde(default)]
    attachments: Vec<String>,
    #[serde(default)]
    attachment_bytes: usize,
}

/// Someone writes in a conversation: `message.created`, and for an agent's message
/// `message.state_changed` (delivered) after it.
async fn sim_message(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(body): Json<NewMessage>,
) -> Response {
    act(&sim, |w| {
        let conversation = w.conversation(&id)?;
        let sender = if body.sender == "agent" {
            let agent = body
                .agent
                .clone()
                .or_else(|| conversation.agent.clone())
                .unwrap_or_else(|| seeded_ids::ADA.to_owned());
            json!({"type": "agent", "uuid": agent})
        } else {
            json!({"type": "customer", "uuid": conversation.customer})
        };
        let attachments: Vec<Value> = body
            .attachments
            .iter()
            .map(|name| json!({"name": name, "content": "a".repeat(body.attachment_bytes)}))
            .collect();
        let message = json!({
            "uuid": new_uuid(),
            "conversation": {"uuid": id},
            "sender": sender,
            "text": body.text,
            "attachments": attachments,
            "created_at": now_ms(),
        });
        conversation.messages.push(message.clone());
        let mut deliveries = vec![(hooks::MESSAGE_CREATED.to_owned(), message.clone())];
        if body.sender == "agent" {
            deliveries.push((
                hooks::MESSAGE_STATE_CHANGED.to_owned(),
                json!({"uuid": message["uuid"], "conversation": {"uuid": id}, "state": "delivered"}),
            ));
        }
        Ok((message, deliveries))
    })
}

/// A human agent archives the conversation in Connexease: `conversation.archived`, with
/// every message.
async fn sim_archive(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    act(&sim, |w| {
        w.conversation(&id)?.status = "archived".into();
        Ok(archived_or_reopened(w, &id, true))
    })
}

/// Connexease asks which agent to assign (`conversation.auto_assign`) and assigns the one
/// the answer names (`{"agent": {"uuid"}}`, assumed), sending `conversation.assigned`.
async fn sim_auto_assign(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let Some(url) = sim.config.webhook_url.clone() else {
        return detail(StatusCode::CONFLICT, "the simulator has no webhook URL").into_response();
    };
    let payload = {
        let w = sim.world.lock().expect("sim state");
        match w.conversations.get(&id) {
            Some(c) => w.conversation_view(c),
            None => return not_found().into_response(),
        }
    };
    let body = sim.delivery_body(hooks::CONVERSATION_AUTO_ASSIGN, payload);
    let answer = sim
        .send_delivery(&url, hooks::CONVERSATION_AUTO_ASSIGN, body)
        .await
        .unwrap_or_default();
    let chosen = answer["agent"]["uuid"].as_str().map(str::to_owned);
    act(&sim, |w| {
        let known = chosen.as_deref().is_some_and(|a| w.agent(a).is_some());
        if !known {
            let view = w.conversation_view(&w.conversations[&id]);
            return Ok((json!({"answer": answer, "conversation": view}), vec![]));
        }
        w.conversation(&id)?.agent = chosen;
        let (view, deliveries) = w.conversation_changed(&id, hooks::CONVERSATION_ASSIGNED);
        Ok((json!({"answer": answer, "conversation": view}), deliveries))
    })
}

#[derive(Deserialize)]
struct TypeChange {
    #[serde(rename = "type")]
    kind: String,
}

async fn sim_type(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(body): Json<TypeChange>,
) -> Response {
    act(&sim, |w| {
        w.conversation(&id)?.kind = body.kind;
        Ok(w.conversation_changed(&id, hooks::CONVERSATION_TYPE_CHANGED))
    })
}

#[derive(Deserialize)]
struct Feedback {
    score: i64,
    #[serde(default)]
    comment: String,
}

/// The customer rates the conversation: `feedback.received`.
async fn sim_feedback(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(body): Json<Feedback>,
) -> Response {
    act(&sim, |w| {
        let conversation = w.conversation(&id)?;
        let feedback = json!({
            "uuid": new_uuid(),
            "conversation": {"uuid": id},
            "customer": {"uuid": conversation.customer},
            "score": body.score,
            "comment": body.comment,
        });
        Ok((
            feedback.clone(),
            vec![(hooks::FEEDBACK_RECEIVED.to_owned(), feedback)],
        ))
    })
}

#[derive(Deserialize)]
struct AgentStatus {
    status: String,
}

/// An agent goes online, away or offline: `agent.status_changed`.
async fn sim_agent_status(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(body): Json<AgentStatus>,
) -> Response {
    act(&sim, |w| {
        let agent = w
            .agents
            .iter_mut()
            .find(|a| a["uuid"] == id.as_str())
            .ok_or_else(not_found)?;
        agent["status"] = json!(body.status);
        let view = json!({"uuid": agent["uuid"], "name": agent["name"], "status": agent["status"]});
        Ok((
            view.clone(),
            vec![(hooks::AGENT_STATUS_CHANGED.to_owned(), view)],
        ))
    })
}

#[derive(Deserialize)]
struct Failures {
    count: u32,
    #[serde(default = "unavailable")]
    status: u16,
}

fn unavailable() -> u16 {
    503
}

/// The next `count` API requests fail with `status`.
async fn sim_failures(State(sim): State<Sim>, Query(f): Query<Failures>) -> StatusCode {
    let mut w = sim.world.lock().expect("sim state");
    w.injected.failures = (f.count > 0).then_some((f.status, f.count));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Stalls {
    count: u32,
    /// Whether the stalled changes are applied before the silence.
    #[serde(default)]
    apply: bool,
}

/// The next `count` changes (not reads) get no answer, applied or not.
async fn sim_stalls(State(sim): State<Sim>, Query(s): Query<Stalls>) -> StatusCode {
    let mut w = sim.world.lock().expect("sim state");
    w.injected.stalls = (s.count > 0).then_some((s.apply, s.count));
    StatusCode::NO_CONTENT
}

async fn sim_state(State(sim): State<Sim>) -> Json<Value> {
    let w = sim.world.lock().expect("sim state");
    let conversations: BTreeMap<&String, Value> = w
        .conversations
        .iter()
        .map(|(id, c)| (id, w.conversation_view(c)))
        .collect();
    Json(json!({
        "conversations": conversations,
        "customers": w.customers,
        "channels": w.channels,
        "groups": w.groups,
        "agents": w.agents,
        "fields": w.fields,
        "templates": w.templates,
        "template_messages": w.template_messages,
    }))
}

async fn sim_requests(State(sim): State<Sim>) -> Json<Value> {
    let w = sim.world.lock().expect("sim state");
    Json(json!(w.requests))
}

async fn sim_deliveries(State(sim): State<Sim>) -> Json<Value> {
    let w = sim.world.lock().expect("sim state");
    Json(json!(w.deliveries))
}
