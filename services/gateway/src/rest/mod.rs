//! The REST API under `/v1`: one module per resource, each handler with its request and
//! response types beside it and its OpenAPI entry generated from them (utoipa), one list
//! shape ([`List`]) and one error shape ([`problem::Problem`]) for every resource.
//!
//! Every request passes, outermost first: the request id (`Request-Id`, and the error body
//! rendered with it), the body limit, authentication (the workspace comes from the key,
//! never from the request), and for a `POST` with `Idempotency-Key` the replay of the first
//! answer.

pub mod actions;
pub mod api_keys;
pub mod assistants;
pub mod collections;
pub mod conversations;
pub mod extract;
pub mod flows;
pub mod insights;
pub mod integrations;
pub mod model_providers;
pub mod problem;
pub mod proto_json;
pub mod webhook_endpoints;

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_clients::{
    ActionsClient, ConversationsClient, FlowsClient, InsightsClient, WebhooksClient,
};
use switchboard_eventlog::now_micros;
use switchboard_runtime::codes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::domain::Access;
use crate::service::{ApiKeys, Caller};
use crate::store::{IdempotentAnswer, Reservation};
use problem::ApiError;

/// The largest body a request may have.
pub const MAX_BODY: usize = 1024 * 1024;
/// The largest body of a bulk request (1,000 documents).
pub const BULK_MAX_BODY: usize = 16 * 1024 * 1024;

/// What every handler reaches.
#[derive(Clone)]
pub struct AppState {
    pub keys: ApiKeys,
    pub conversations: ConversationsClient,
    /// Knowledge (and later flows and assistants); `None` when the gateway reaches no flows
    /// service, and those resources answer 503.
    pub flows: Option<FlowsClient>,
    /// Actions; `None` when the gateway reaches no actions service.
    pub actions: Option<ActionsClient>,
    /// Webhook endpoints; `None` when the gateway reaches no webhooks service.
    pub webhooks: Option<WebhooksClient>,
    /// Insights (and conversation lists by segment or assistant); `None` when the gateway
    /// reaches no insights service.
    pub insights: Option<InsightsClient>,
    /// Requests one key may make a minute, across replicas.
    pub rate_per_minute: u32,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard API",
        version = "1.0.0",
        description = "The REST API of a Switchboard workspace. Authenticate with an API key \
            (`Authorization: Bearer sbk_live_...`); the key's workspace is the one every request \
            acts on. Lists are cursor-paginated (`limit`, `cursor`; answers `{data, has_more, \
            next_cursor}` and a `Link: rel=\"next\"` header). Errors are RFC 9457 \
            `application/problem+json` with a registered `code`. A `POST` with an \
            `Idempotency-Key` header is answered once: the same key and body replay the first \
            answer for 24 hours, another body with the same key is refused."
    ),
    tags(
        (name = "conversations", description = "Conversations and their messages"),
        (name = "knowledge", description = "Knowledge collections and their documents"),
        (name = "webhooks", description = "Webhook endpoints, their messages and attempts"),
        (name = "actions", description = "What the agent can do, test runs and the execution log"),
        (name = "flows", description = "Flows and workflows: drafts, published versions"),
        (name = "assistants", description = "Assistants: instructions, actions, knowledge and their flow"),
        (name = "insights", description = "The classified, analysed view of conversations: summaries, breakdowns, trends, segments and findings"),
        (name = "api-keys", description = "The workspace's API keys (`admin` scope)"),
    ),
    components(schemas(problem::Problem, problem::FieldError)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
struct ApiDoc;

struct BearerAuth;

/// Documents what [`conditional_get`] does for every `GET`: the 304.
struct ConditionalGets;

impl Modify for ConditionalGets {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            if let Some(get) = item.get.as_mut() {
                get.responses
                    .responses
                    .entry("304".to_owned())
                    .or_insert_with(|| {
                        utoipa::openapi::ResponseBuilder::new()
                            .description(
                                "Not modified: the `If-None-Match` tag is the resource's `ETag`",
                            )
                            .into()
                    });
            }
        }
    }
}

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("sbk_live_...")
                        .build(),
                ),
            );
    }
}

/// The OpenAPI document and the routes it describes.
pub fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .merge(conversations::routes())
        .merge(collections::routes())
        .merge(webhook_endpoints::routes())
        .merge(actions::routes())
        .merge(integrations::routes())
        .merge(flows::routes())
        .merge(assistants::routes())
        .merge(model_providers::routes())
        .merge(insights::routes())
        .merge(api_keys::routes());
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1", v1)
        .split_for_parts();
    // After the routes' paths are in.
    ConditionalGets.modify(&mut openapi);
    (router, openapi)
}

/// The whole REST server: `/v1` behind authentication, `/openapi.json` and `/docs` open.
pub fn router(state: AppState) -> axum::Router {
    let (v1, openapi) = api();
    let document: Arc<str> = openapi.to_pretty_json().unwrap_or_default().into();
    let v1 = v1
        .layer(middleware::from_fn(conditional_get))
        .layer(middleware::from_fn_with_state(state.clone(), idempotency))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    axum::Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                &codes::API_NOT_FOUND,
                "no such path; the API is under /v1 (see /docs)",
            )
        })
        .with_state(state)
        .layer(middleware::from_fn(request_id))
}

/// The API reference, rendered in the browser from `/openapi.json`.
const DOCS_PAGE: &str = r#"<!doctype html>
<html>
  <head><meta charset="utf-8"/><title>Switchboard API</title></head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
  </body>
</html>
"#;

/// The `Request-Id` header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// This request's id, `req_<ulid>`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id, answers it in `Request-Id`, and renders errors with it.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = format!("req_{}", ulid::Ulid::new().to_string().to_lowercase());
    request.extensions_mut().insert(RequestId(id.clone()));
    let filters: Vec<String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("cursor=") && !p.starts_with("limit="))
        .map(str::to_owned)
        .collect();
    let mut response = next.run(request).await;
    // The next page is the same list: its `Link` keeps the request's filters.
    if !filters.is_empty()
        && let Some(link) = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
        && let Some((target, rest)) = link.split_once('>')
    {
        let with_filters = format!("{target}&{}>{rest}", filters.join("&"));
        if let Ok(value) = HeaderValue::from_str(&with_filters) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        let headers = std::mem::take(response.headers_mut());
        response = problem::render(&error, &id);
        for (name, value) in &headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// Checks the bearer key; the caller it stands for goes into the request's extensions.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let unauthenticated = |detail: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            &codes::API_UNAUTHENTICATED,
            detail,
        )
    };
    let Some(presented) = presented else {
        return Err(unauthenticated(
            "send your API key as `Authorization: Bearer sbk_live_...`",
        ));
    };
    let Some(caller) = state.keys.authenticate(presented).await? else {
        return Err(unauthenticated(
            "the API key is not live: unknown, revoked or expired",
        ));
    };
    let budget = rate_limit(&state, &caller.key_id).await?;
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    budget.write(response.headers_mut());
    Ok(response)
}

/// A key's rate window: a minute, counted in the gateway's store so every replica sees
/// the same count.
const RATE_WINDOW_SECS: i64 = 60;

/// Where a key stands in its window, for the `RateLimit-*` headers.
struct Budget {
    limit: u32,
    remaining: u32,
    reset_secs: i64,
}

impl Budget {
    fn write(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("ratelimit-limit", i64::from(self.limit)),
            ("ratelimit-remaining", i64::from(self.remaining)),
            ("ratelimit-reset", self.reset_secs),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

/// Counts the request against its key's window; 429 with `Retry-After` when the window is
/// spent.
async fn rate_limit(state: &AppState, key_id: &str) -> Result<Budget, ApiError> {
    let now = now_micros() / 1_000_000;
    let window_start = now - now.rem_euclid(RATE_WINDOW_SECS);
    let reset_secs = window_start + RATE_WINDOW_SECS - now;
    let used = state
        .keys
        .store()
        .count_request(key_id, window_start)
        .await?;
    let limit = state.rate_per_minute;
    if used > i64::from(limit) {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            &codes::API_RATE_LIMITED,
            format!("this key may make {limit} requests a minute; wait {reset_secs} s"),
        );
        error.retry_after = Some(reset_secs.max(1) as u64);
        return Err(error);
    }
    Ok(Budget {
        limit,
        remaining: limit.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
        reset_secs,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                &codes::API_UNAUTHENTICATED,
                "send your API key as `Authorization: Bearer sbk_live_...`",
            )
        })
    }
}

impl Caller {
    /// Refuses (403) unless the key's scopes allow `access` to `resource`.
    pub fn require(&self, resource: &str, access: Access) -> Result<(), ApiError> {
        if self.may(resource, access) {
            return Ok(());
        }
        let needed = match (resource, access) {
            ("api_keys", _) => "admin".to_owned(),
            (resource, Access::Read) => format!("read or {resource}:read"),
            (resource, Access::Write) => format!("write or {resource}:write"),
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            &codes::API_FORBIDDEN,
            format!("this key's scopes do not allow this; it needs `{needed}`"),
        ))
    }
}

/// The id that makes a write idempotent in the services: derived from the
/// `Idempotency-Key` when the request has one, fresh otherwise.
#[derive(Debug, Clone)]
pub struct RequestKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestKey>()
            .cloned()
            .unwrap_or_else(|| {
                RequestKey(format!(
                    "api_{}",
                    ulid::Ulid::new().to_string().to_lowercase()
                ))
            }))
    }
}

/// Marks an answer that must not be kept for replay (it shows a secret once).
#[derive(Debug, Clone, Copy)]
pub struct NotKept;

/// The longest `Idempotency-Key` taken.
const IDEMPOTENCY_KEY_BYTES: usize = 255;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Stripe's rule for a `POST` with `Idempotency-Key`: the same key and body (from the same
/// API key) replay the first answer for 24 hours; another body, or another API key, with
/// the same key is refused (422); a request still running with the key is 409. The key is
/// reserved before the handler runs, so two at once never both run. Answers that are the
/// server's failure (5xx), refusals, and answers showing a secret are not kept: the key
/// is released and a retry runs again.
async fn idempotency(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.method() != Method::POST {
        return Ok(next.run(request).await);
    }
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES)
        .ok_or_else(|| {
            ApiError::field(
                "header.Idempotency-Key",
                format!("1 to {IDEMPOTENCY_KEY_BYTES} visible ASCII characters"),
            )
        })?
        .to_owned();
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, &codes::API_UNAUTHENTICATED, ""))?;
    let limit = if request.uri().path().ends_with("/documents/bulk") {
        BULK_MAX_BODY
    } else {
        MAX_BODY
    };
    let (mut parts, body) = request.into_parts();
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            &codes::API_TOO_LARGE,
            "the body is larger than the API takes",
        )
    })?;
    let fingerprint = {
        let mut hash = Sha256::new();
        for part in [
            caller.key_id.as_bytes(),
            parts.uri.path().as_bytes(),
            parts.uri.query().unwrap_or("").as_bytes(),
            &bytes,
        ] {
            hash.update(part);
            hash.update([0]);
        }
        hex::encode(hash.finalize())
    };
    let store = state.keys.store();
    let now = now_micros();
    match store
        .reserve_idempotency_key(&caller.workspace_id, &key, &fingerprint, now)
        .await?
    {
        Reservation::Reserved => {}
        Reservation::Taken(first) if first.request_hash != fingerprint => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                &codes::API_IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was used with another request (or another API key); use \
                 a new key for a new request",
            ));
        }
        Reservation::Taken(first) if first.status == 0 => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                &codes::API_IDEMPOTENCY_KEY_IN_FLIGHT,
                "a request with this Idempotency-Key is still being answered; send it again in \
                 a moment",
            ));
        }
        Reservation::Taken(first) => return Ok(replay(first)),
    }
    // The services deduplicate by a request id derived from the key (bounded in length).
    let derived = hex::encode(&Sha256::digest(format!("{}:{key}", caller.workspace_id))[..16]);
    parts
        .extensions
        .insert(RequestKey(format!("idem_{derived}")));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.status().is_server_error()
        || response.extensions().get::<ApiError>().is_some()
        || response.extensions().get::<NotKept>().is_some()
    {
        store
            .release_idempotency_key(&caller.workspace_id, &key)
            .await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let headers = [header::ETAG, header::LOCATION, header::LINK]
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    store
        .keep_answer(
            &caller.workspace_id,
            &key,
            &IdempotentAnswer {
                request_hash: fingerprint,
                status: parts.status.as_u16(),
                headers,
                body: body.to_vec(),
            },
        )
        .await?;
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Every successful `GET` answers an `ETag`: the resource's version where it has one (set
/// by the handler), else a weak tag of the body; `If-None-Match` naming it (or `*`) answers
/// `304 Not Modified` without the body.
async fn conditional_get(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let wanted = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body = match parts.headers.get(header::ETAG) {
        Some(_) => body,
        None => {
            let Ok(bytes) = to_bytes(body, usize::MAX).await else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let tag = format!("W/\"{}\"", hex::encode(&Sha256::digest(&bytes)[..12]));
            if let Ok(value) = HeaderValue::from_str(&tag) {
                parts.headers.insert(header::ETAG, value);
            }
            Body::from(bytes)
        }
    };
    let tag = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Weak comparison (RFC 9110 13.1.2): `W/` does not count.
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let unchanged = wanted.is_some_and(|wanted| {
        wanted
            .split(',')
            .any(|t| t.trim() == "*" || opaque(t) == opaque(tag))
    });
    if unchanged {
        let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
        if let Some(value) = parts.headers.get(header::ETAG) {
            not_modified
                .headers_mut()
                .insert(header::ETAG, value.clone());
        }
        return not_modified;
    }
    Response::from_parts(parts, body)
}

/// The first answer again, with the headers it had.
fn replay(first: IdempotentAnswer) -> Response {
    let mut response = (
        StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        first.body,
    )
        .into_response();
    for (name, value) in first.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// One page of any list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    /// The page's items, in the list's order.
    pub data: Vec<T>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Paging of every list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Page {
    /// The page size asked for, checked.
    pub fn limit(&self) -> Result<u32, ApiError> {
        page_limit(self.limit)
    }
}

/// A page size asked for (`limit`), checked: 1 to 100, 20 when absent.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(20),
        Some(n @ 1..=100) => Ok(n),
        Some(_) => Err(ApiError::field("query.limit", "1 to 100")),
    }
}

/// A service's `next_cursor` (empty on the last page) as a list's `next_cursor`.
pub fn cursor_of(next: String) -> Option<String> {
    (!next.is_empty()).then_some(next)
}

/// A list answer: the page, and `Link: <path?cursor=..>; rel="next"` when more follow.
pub fn page<T: Serialize>(
    path: &str,
    limit: u32,
    data: Vec<T>,
    next_cursor: Option<String>,
) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(cursor) = &next_cursor {
        let link = format!("<{path}?limit={limit}&cursor={cursor}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    let list = List {
        has_more: next_cursor.is_some(),
        data,
        next_cursor,
    };
    (headers, axum::Json(list)).into_response()
}

/// An RFC 3339 time from the request's `field`.
pub fn parse_time(field: &str, value: &str) -> Result<prost_types::Timestamp, ApiError> {
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::field(field, "an RFC 3339 time, e.g. 2026-12-01T10:00:00Z"))?;
    Ok(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    })
}

/// A protobuf time as RFC 3339; `None` for an unset or zero time.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    if ts.seconds == 0 && ts.nanos == 0 {
        return None;
    }
    let at = time::OffsetDateTime::from_unix_timestamp(ts.seconds).ok()?
        + time::Duration::nanoseconds(i64::from(ts.nanos));
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The answer for a resource whose service this gateway does not reach (503: an operator
/// must set `variable`).
fn unreachable_peer(service: &str, variable: &str) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        &codes::API_UNAVAILABLE,
        format!(
            "this resource is served by the {service} service, which this gateway does not \
             reach ({variable})"
        ),
    );
    error.retry_after = Some(60);
    error
}

impl AppState {
    /// The flows service (knowledge, flows, assistants), acting for `caller`.
    pub fn flows_for(&self, caller: &Caller) -> Result<FlowsClient, ApiError> {
        let client = self.flows.as_ref();
        let client = client.ok_or_else(|| unreachable_peer("flows", "SWITCHBOARD_FLOWS_URL"))?;
        Ok(client.with_actor(&caller.actor()))
    }

    /// The actions service, acting for `caller`.
    pub fn actions_for(&self, caller: &Caller) -> Result<ActionsClient, ApiError> {
        let client = self.actions.as_ref();
        let client =
            client.ok_or_else(|| unreachable_peer("actions", "SWITCHBOARD_ACTIONS_URL"))?;
        Ok(client.with_actor(&caller.actor()))
    }

    /// The insights service, acting for `caller`.
    pub fn insights_for(&self, caller: &Caller) -> Result<InsightsClient, ApiError> {
        let client = self.insights.as_ref();
        let client =
            client.ok_or_else(|| unreachable_peer("insights", "SWITCHBOARD_INSIGHTS_URL"))?;
        Ok(client.with_actor(&caller.actor()))
    }

    /// The webhooks service, acting for `caller`.
    pub fn webhooks_for(&self, caller: &Caller) -> Result<WebhooksClient, ApiError> {
        let client = self.webhooks.as_ref();
        let client =
            client.ok_or_else(|| unreachable_peer("webhooks", "SWITCHBOARD_WEBHOOKS_URL"))?;
        Ok(client.with_actor(&caller.actor()))
    }
}

/// The version `If-Match` names, when the request has one.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::field("header.If-Match", "an ETag this API gave, e.g. \"3\"");
    let value = value.to_str().map_err(|_| bad())?;
    // `*` matches any version; of a list, the first tag counts; weak tags compare as strong.
    let first = value.split(',').next().unwrap_or("").trim();
    if first == "*" {
        return Ok(None);
    }
    first
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| bad())
}

/// RFC 7396: objects merge, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge_patch(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

/// An answer with the resource's version as its `ETag`.
pub fn tagged(status: StatusCode, body: impl Serialize, version: u64) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
