//! `switchboard connexease-sim`: a real HTTP server that implements the endpoint set of
//! `services/connexease/README.md` with in-memory state, so every Connexease operation can be
//! built and tested against something that behaves like Connexease: bearer tokens (401),
//! unknown groups, agents and fields (404), invalid values (422), a request rate over which
//! it answers 429 with `Retry-After`, 5xx on demand, `Idempotency-Key` replay, and signed
//! webhooks sent when its state changes (retried like Connexease does).
//!
//! `/sim/...` is the simulator's own control surface for tests and demos: create
//! conversations, act as a human agent, inject failures, read the state and the requests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_contract::event_types::connexease_hooks as hooks;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::signature;

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The account access token it accepts.
    pub token: String,
    /// Signs the webhooks it sends.
    pub webhook_secret: String,
    /// Where it sends webhooks; `None` for nowhere.
    pub webhook_url: Option<String>,
    /// Requests a second before it answers 429.
    pub rate_per_second: u32,
    /// Webhook deliveries are tried this many times (Connexease: 30).
    pub webhook_attempts: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token: "cx_sim_token".into(),
            webhook_secret: "cx_sim_webhook_secret".into(),
            webhook_url: None,
            rate_per_second: 80,
            webhook_attempts: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConversation {
    pub id: String,
    pub customer_id: String,
    /// open or archived.
    pub status: String,
    pub group_id: Option<String>,
    pub agent_id: Option<String>,
    pub custom_fields: BTreeMap<String, Value>,
    /// Our conversation id, when the conversation came from Switchboard.
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimCustomer {
    pub id: String,
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
    pub idempotency_key: Option<String>,
    pub status: u16,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

#[derive(Default)]
struct World {
    groups: Vec<Value>,
    agents: Vec<Value>,
    fields: Vec<Value>,
    conversations: BTreeMap<String, SimConversation>,
    customers: BTreeMap<String, SimCustomer>,
    /// Answers by idempotency key: a repeated request changes nothing and answers the same.
    replies: HashMap<String, (u16, Value)>,
    /// Failures still to inject: (status, remaining).
    failures: Option<(u16, u32)>,
    requests: Vec<SeenRequest>,
    next_id: u64,
}

impl World {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }
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

fn seeded() -> World {
    World {
        groups: vec![
            json!({"id": "grp_billing", "name": "billing"}),
            json!({"id": "grp_support", "name": "support"}),
            json!({"id": "grp_returns", "name": "returns"}),
        ],
        agents: vec![
            json!({"id": "agt_ada", "email": "ada@shop.example", "name": "Ada", "availability": "online"}),
            json!({"id": "agt_bob", "email": "bob@shop.example", "name": "Bob", "availability": "away"}),
            json!({"id": "agt_cy", "email": "cy@shop.example", "name": "Cy", "availability": "offline"}),
        ],
        fields: vec![
            json!({"key": "order_number", "label": "Order number", "type": "text", "scope": "conversation"}),
            json!({"key": "topics", "label": "Topics", "type": "tags", "scope": "conversation"}),
            json!({"key": "tier", "label": "Tier", "type": "text", "scope": "customer"}),
            json!({"key": "interests", "label": "Interests", "type": "tags", "scope": "customer"}),
        ],
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
            .timeout(Duration::from_secs(10))
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
        .route("/v1/me", get(me))
        .route("/v1/groups", get(groups))
        .route("/v1/agents", get(agents))
        .route("/v1/custom-fields", get(fields))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/conversations/{id}/assign", post(assign))
        .route("/v1/conversations/{id}/archive", post(archive))
        .route("/v1/conversations/{id}/unarchive", post(unarchive))
        .route(
            "/v1/conversations/{id}/custom-fields",
            patch(conversation_fields),
        )
        .route("/v1/customers/{id}", patch(update_customer))
        .route("/v1/customers/{id}/custom-fields", patch(customer_fields))
        .route("/sim/conversations", post(sim_create_conversation))
        .route("/sim/conversations/{id}/archive", post(sim_archive))
        .route("/sim/failures", post(sim_failures))
        .route("/sim/state", get(sim_state))
        .route("/sim/requests", get(sim_requests))
        .with_state(sim)
}

/// A Connexease-style error answer.
struct SimError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> SimError {
    SimError {
        status,
        code,
        message: message.into(),
    }
}

impl Sim {
    /// Authentication, rate limit, injected failures and idempotent replay around one API
    /// request; `apply` changes the world and answers.
    fn handle(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        apply: impl FnOnce(&mut World) -> Result<(Value, Vec<Value>), SimError>,
    ) -> Response {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let response = self.answer(key.as_deref(), headers, apply);
        let mut world = self.world.lock().expect("sim state");
        world.requests.push(SeenRequest {
            method: method.into(),
            path: path.into(),
            idempotency_key: key,
            status: response.status().as_u16(),
            at_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        });
        response
    }

    fn answer(
        &self,
        key: Option<&str>,
        headers: &HeaderMap,
        apply: impl FnOnce(&mut World) -> Result<(Value, Vec<Value>), SimError>,
    ) -> Response {
        let expected = format!("Bearer {}", self.config.token);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the access token is missing or not valid",
            )
            .into_response();
        }
        if self.limiter.check().is_err() {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the given seconds",
            )
            .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return response;
        }
        let mut world = self.world.lock().expect("sim state");
        if let Some((status, remaining)) = world.failures {
            world.failures = (remaining > 1).then_some((status, remaining - 1));
            return error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "unavailable",
                "injected failure",
            )
            .into_response();
        }
        if let Some((status, body)) = key.and_then(|k| world.replies.get(k)).cloned() {
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                Json(body),
            )
                .into_response();
        }
        match apply(&mut world) {
            Ok((body, webhooks)) => {
                if let Some(key) = key {
                    world.replies.insert(key.to_owned(), (200, body.clone()));
                }
                drop(world);
                for webhook in webhooks {
                    self.send_webhook(webhook);
                }
                Json(body).into_response()
            }
            Err(e) => e.into_response(),
        }
    }

    /// Sends a signed webhook, retrying on failure like Connexease (up to
    /// `webhook_attempts` times).
    fn send_webhook(&self, event: Value) {
        let Some(url) = self.config.webhook_url.clone() else {
            return;
        };
        let body = event.to_string();
        let sign = signature::sign(&self.config.webhook_secret, body.as_bytes());
        let http = self.http.clone();
        let attempts = self.config.webhook_attempts.max(1);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for _ in 0..attempts {
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(signature::HEADER, &sign)
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }
}

fn webhook(world: &mut World, event: &str, data: Value) -> Value {
    let id = world.id("evt");
    json!({
        "id": id,
        "event": event,
        "created_at": time::OffsetDateTime::now_utc().unix_timestamp(),
        "data": data,
    })
}

fn conversation_mut<'a>(
    world: &'a mut World,
    id: &str,
) -> Result<&'a mut SimConversation, SimError> {
    world.conversations.get_mut(id).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            format!("conversation {id} does not exist"),
        )
    })
}

async fn me(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle("GET", "/v1/me", &headers, |_| {
        Ok((
            json!({"data": {"id": "acc_sim", "name": "Connexease simulator"}}),
            vec![],
        ))
    })
}

async fn groups(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle("GET", "/v1/groups", &headers, |w| {
        Ok((json!({"data": w.groups}), vec![]))
    })
}

async fn agents(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle("GET", "/v1/agents", &headers, |w| {
        Ok((json!({"data": w.agents}), vec![]))
    })
}

async fn fields(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    sim.handle("GET", "/v1/custom-fields", &headers, |w| {
        Ok((json!({"data": w.fields}), vec![]))
    })
}

async fn get_conversation(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    sim.handle("GET", &format!("/v1/conversations/{id}"), &headers, |w| {
        let conversation = conversation_mut(w, &id)?.clone();
        Ok((json!({"data": conversation}), vec![]))
    })
}

#[derive(Deserialize, Default)]
struct AssignBody {
    group_id: Option<String>,
    agent_id: Option<String>,
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
    sim.handle(
        "POST",
        &format!("/v1/conversations/{id}/assign"),
        &headers,
        |w| {
            if let Some(group) = &body.group_id
                && !w.groups.iter().any(|g| g["id"] == json!(group))
            {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    "group_not_found",
                    format!("group {group} does not exist"),
                ));
            }
            let agent = match (&body.agent_id, body.auto) {
                (Some(agent), _) => {
                    if !w.agents.iter().any(|a| a["id"] == json!(agent)) {
                        return Err(error(
                            StatusCode::NOT_FOUND,
                            "agent_not_found",
                            format!("agent {agent} does not exist"),
                        ));
                    }
                    Some(agent.clone())
                }
                // Auto-assign: the first agent online.
                (None, true) => w
                    .agents
                    .iter()
                    .find(|a| a["availability"] == "online")
                    .and_then(|a| a["id"].as_str())
                    .map(str::to_owned),
                (None, false) if body.group_id.is_none() => {
                    return Err(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        "give group_id, agent_id or auto",
                    ));
                }
                (None, false) => None,
            };
            let conversation = conversation_mut(w, &id)?;
            if body.group_id.is_some() {
                conversation.group_id = body.group_id.clone();
            }
            if agent.is_some() {
                conversation.agent_id = agent;
            }
            let data = json!(conversation.clone());
            let event = if body.auto {
                hooks::CONVERSATION_AUTO_ASSIGN
            } else if body.group_id.is_some() && body.agent_id.is_none() {
                hooks::CONVERSATION_GROUP_CHANGED
            } else {
                hooks::CONVERSATION_ASSIGNED
            };
            let hook = webhook(w, event, data.clone());
            Ok((json!({"data": data}), vec![hook]))
        },
    )
}

fn set_status(sim: &Sim, id: &str, headers: &HeaderMap, status: &str) -> Response {
    let action = if status == "archived" {
        "archive"
    } else {
        "unarchive"
    };
    sim.handle(
        "POST",
        &format!("/v1/conversations/{id}/{action}"),
        headers,
        |w| {
            let conversation = conversation_mut(w, id)?;
            conversation.status = status.into();
            let data = json!(conversation.clone());
            let event = if status == "archived" {
                hooks::CONVERSATION_ARCHIVED
            } else {
                hooks::CONVERSATION_UNARCHIVED
            };
            let hook = webhook(w, event, data.clone());
            Ok((json!({"data": data}), vec![hook]))
        },
    )
}

async fn archive(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    set_status(&sim, &id, &headers, "archived")
}

async fn unarchive(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    set_status(&sim, &id, &headers, "open")
}

#[derive(Deserialize)]
struct FieldsBody {
    fields: BTreeMap<String, Value>,
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
            .find(|f| f["key"] == json!(key) && f["scope"] == json!(scope))
        else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "field_not_found",
                format!("{scope} field {key} does not exist"),
            ));
        };
        let fits = match field["type"].as_str() {
            Some("tags") => value
                .as_array()
                .is_some_and(|tags| tags.iter().all(Value::is_string)),
            _ => value.is_string(),
        };
        if !fits {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                format!("{key} takes {}", field["type"]),
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
    let path = format!("/v1/conversations/{id}/custom-fields");
    sim.handle("PATCH", &path, &headers, |w| {
        check_fields(w, "conversation", &body.fields)?;
        let conversation = conversation_mut(w, &id)?;
        conversation.custom_fields.extend(body.fields.clone());
        let data = json!(conversation.clone());
        let hook = webhook(w, hooks::CONVERSATION_CUSTOM_FIELDS_UPDATED, data.clone());
        Ok((json!({"data": data}), vec![hook]))
    })
}

#[derive(Deserialize)]
struct CustomerBody {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    social: BTreeMap<String, String>,
}

fn customer_mut<'a>(world: &'a mut World, id: &str) -> Result<&'a mut SimCustomer, SimError> {
    world.customers.get_mut(id).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("customer {id} does not exist"),
        )
    })
}

async fn update_customer(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CustomerBody>,
) -> Response {
    sim.handle("PATCH", &format!("/v1/customers/{id}"), &headers, |w| {
        if let Some(email) = &body.email
            && !email_address::EmailAddress::is_valid(email)
        {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                format!("`{email}` is not an email address"),
            ));
        }
        let customer = customer_mut(w, &id)?;
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
        let data = json!(customer.clone());
        let hook = webhook(w, hooks::CUSTOMER_UPDATED, data.clone());
        Ok((json!({"data": data}), vec![hook]))
    })
}

async fn customer_fields(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FieldsBody>,
) -> Response {
    let path = format!("/v1/customers/{id}/custom-fields");
    sim.handle("PATCH", &path, &headers, |w| {
        check_fields(w, "customer", &body.fields)?;
        let customer = customer_mut(w, &id)?;
        customer.custom_fields.extend(body.fields.clone());
        let data = json!(customer.clone());
        let hook = webhook(w, hooks::CUSTOMER_UPDATED, data.clone());
        Ok((json!({"data": data}), vec![hook]))
    })
}

#[derive(Deserialize, Default)]
struct NewConversation {
    #[serde(default)]
    customer_name: String,
    #[serde(default)]
    customer_email: String,
    external_id: Option<String>,
}

/// A customer writes in: a conversation and its customer are created, and
/// `conversation.created` is sent.
async fn sim_create_conversation(
    State(sim): State<Sim>,
    body: Option<Json<NewConversation>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let (data, hook) = {
        let mut w = sim.world.lock().expect("sim state");
        let customer_id = w.id("cus");
        let id = w.id("cnv");
        w.customers.insert(
            customer_id.clone(),
            SimCustomer {
                id: customer_id.clone(),
                name: body.customer_name,
                email: body.customer_email,
                ..Default::default()
            },
        );
        let conversation = SimConversation {
            id: id.clone(),
            customer_id,
            status: "open".into(),
            group_id: None,
            agent_id: None,
            custom_fields: BTreeMap::new(),
            external_id: body.external_id,
        };
        w.conversations.insert(id, conversation.clone());
        let data = json!(conversation);
        let hook = webhook(&mut w, hooks::CONVERSATION_CREATED, data.clone());
        (data, hook)
    };
    sim.send_webhook(hook);
    (StatusCode::CREATED, Json(json!({"data": data}))).into_response()
}

/// A human agent archives the conversation in Connexease.
async fn sim_archive(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let result = {
        let mut w = sim.world.lock().expect("sim state");
        match conversation_mut(&mut w, &id) {
            Ok(conversation) => {
                conversation.status = "archived".into();
                let data = json!(conversation.clone());
                Ok((
                    data.clone(),
                    webhook(&mut w, hooks::CONVERSATION_ARCHIVED, data),
                ))
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok((data, hook)) => {
            sim.send_webhook(hook);
            Json(json!({"data": data})).into_response()
        }
        Err(e) => e.into_response(),
    }
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
    w.failures = (f.count > 0).then_some((f.status, f.count));
    StatusCode::NO_CONTENT
}

async fn sim_state(State(sim): State<Sim>) -> Json<Value> {
    let w = sim.world.lock().expect("sim state");
    Json(json!({
        "conversations": w.conversations,
        "customers": w.customers,
        "groups": w.groups,
        "agents": w.agents,
        "fields": w.fields,
    }))
}

async fn sim_requests(State(sim): State<Sim>) -> Json<Value> {
    let w = sim.world.lock().expect("sim state");
    Json(json!(w.requests))
}
