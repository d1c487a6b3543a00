//! `/v1/api-keys`: the workspace's API keys, for a key with the `admin` scope. A key's
//! secret is in the answer that creates it and nowhere else.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem};
use super::{AppState, List, Page, RequestKey, page};
use crate::domain::Access;
use crate::service::{Caller, CreatedKey};
use crate::store::KeyRecord;

const RESOURCE: &str = "api_keys";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, revoke_key))
        .routes(routes!(rotate_key))
}

/// An API key, without its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_...`
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The key's public start, `sbk_live_<16 hex>`: tells keys apart.
    pub prefix: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
    /// `null`: never.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// `cli` or `api_key:<id>`.
    pub created_by: String,
    /// The key this one replaced.
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    pub rotated_to: Option<String>,
}

impl From<KeyRecord> for ApiKey {
    fn from(k: KeyRecord) -> Self {
        let some = |v: i64| (v != 0).then_some(v);
        let text = |v: String| (!v.is_empty()).then_some(v);
        Self {
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            prefix: k.prefix,
            created_at: k.created_at,
            expires_at: some(k.expires_at),
            revoked_at: some(k.revoked_at),
            last_used_at: some(k.last_used_at),
            created_by: k.created_by,
            rotated_from: text(k.rotated_from),
            rotated_to: text(k.rotated_to),
        }
    }
}

/// A key just made: the key itself is here, and only here.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewApiKey {
    /// The key: keep it now, it is not shown again.
    pub key: String,
    #[serde(flatten)]
    pub api_key: ApiKey,
}

impl From<CreatedKey> for NewApiKey {
    fn from(created: CreatedKey) -> Self {
        Self {
            key: created.key,
            api_key: created.record.into(),
        }
    }
}

/// A key to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "reporting job", "scopes": ["conversations:read"]}))]
pub struct CreateApiKey {
    pub name: String,
    /// `read`, `write`, `admin`, or `<resource>:read|write` (conversations, collections,
    /// flows, assistants, actions, webhooks, insights). Default: `read`, `write`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When it stops working (microseconds since the epoch); never when absent.
    pub expires_at: Option<i64>,
}

/// Lists the workspace's keys, newest first.
#[utoipa::path(
    get, path = "/api-keys", tag = "api-keys", params(Page),
    responses(
        (status = 200, description = "One page of keys", body = List<ApiKey>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let after = page_of.cursor.as_deref().map(decode_cursor).transpose()?;
    let (keys, more) = state
        .keys
        .store()
        .list(&caller.workspace_id, after, limit)
        .await?;
    let next = more
        .then(|| keys.last().map(|k| encode_cursor(k.created_at, &k.id)))
        .flatten();
    let data: Vec<ApiKey> = keys.into_iter().map(Into::into).collect();
    Ok(page("/v1/api-keys", limit, data, next))
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::field("query.cursor", "not a cursor this list gave");
    let text = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_owned()))
}

/// Creates a key; its secret is in this answer only.
#[utoipa::path(
    post, path = "/api-keys", tag = "api-keys", request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created", body = NewApiKey),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<CreateApiKey>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let created = state
        .keys
        .create(
            &caller.workspace_id,
            &request_id,
            &body.name,
            &body.scopes,
            body.expires_at.unwrap_or(0),
            &caller.actor(),
        )
        .await?;
    Ok(secret_answer(created))
}

/// The answer that carries a key's secret: never kept for an `Idempotency-Key` replay.
fn secret_answer(created: CreatedKey) -> Response {
    let mut response = (StatusCode::CREATED, Json(NewApiKey::from(created))).into_response();
    response.extensions_mut().insert(super::NotKept);
    response
}

/// Gets a key.
#[utoipa::path(
    get, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "The key's id, `key_...`")),
    responses(
        (status = 200, description = "The key", body = ApiKey),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let key = state
        .keys
        .store()
        .get(&caller.workspace_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    Ok(Json(key.into()))
}

/// Revokes a key: every request with it is refused from now on.
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "The key's id, `key_...`")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let key = state
        .keys
        .revoke(&caller.workspace_id, &request_id, &id, &caller.actor())
        .await?;
    Ok(Json(key.into()))
}

/// How a rotation overlaps.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateApiKey {
    /// How long the old key keeps working, in seconds (default 86,400; at most 7 days).
    pub overlap_seconds: Option<u64>,
}

/// Replaces a key with a new one of the same name and scopes; the old one keeps working for
/// the overlap.
#[utoipa::path(
    post, path = "/api-keys/{id}/rotate", tag = "api-keys",
    params(("id" = String, Path, description = "The key's id, `key_...`")),
    request_body = RotateApiKey,
    responses(
        (status = 201, description = "The new key", body = NewApiKey),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    Json(body): Json<RotateApiKey>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let created = state
        .keys
        .rotate(
            &caller.workspace_id,
            &request_id,
            &id,
            body.overlap_seconds.unwrap_or(86_400),
            &caller.actor(),
        )
        .await?;
    Ok(secret_answer(created))
}
