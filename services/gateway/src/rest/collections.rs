//! `/v1/collections`: knowledge collections and their documents (a CMS keeps them in step
//! with bulk upserts and deletes by its own ids), over the flows service's gRPC API.

use std::collections::BTreeMap;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_clients::FlowsClient;
use switchboard_proto::flows::v1 as pb;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem};
use super::{AppState, BULK_MAX_BODY, List, Page, RequestKey, cursor_of, page, rfc3339};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "collections";
/// Items in one bulk request, upserts and deletes together.
pub const BULK_ITEMS: usize = 1000;

pub fn routes() -> OpenApiRouter<AppState> {
    let bulk = OpenApiRouter::new()
        .routes(routes!(bulk_documents))
        .layer(DefaultBodyLimit::max(BULK_MAX_BODY));
    OpenApiRouter::new()
        .routes(routes!(list_collections, create_collection))
        .routes(routes!(
            get_collection,
            update_collection,
            delete_collection
        ))
        .routes(routes!(list_documents, create_document))
        .routes(routes!(
            get_document,
            put_document,
            patch_document,
            delete_document
        ))
        .routes(routes!(search_documents))
        .merge(bulk)
}

/// A knowledge collection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Collection {
    /// `kc_...`
    pub id: String,
    pub name: String,
    pub description: String,
    pub document_count: u64,
    pub created_at: String,
}

impl From<pb::KnowledgeCollection> for Collection {
    fn from(c: pb::KnowledgeCollection) -> Self {
        Self {
            id: c.id,
            name: c.name,
            description: c.description,
            document_count: c.document_count,
            created_at: rfc3339(c.created_at.as_ref()).unwrap_or_default(),
        }
    }
}

/// A document of a collection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Document {
    /// Your id for it: upserts and deletes name it.
    pub external_id: String,
    pub title: String,
    pub body: String,
    pub url: String,
    pub metadata: BTreeMap<String, String>,
    pub updated_at: Option<String>,
}

impl From<pb::Document> for Document {
    fn from(d: pb::Document) -> Self {
        Self {
            external_id: d.external_id,
            title: d.title,
            body: d.body,
            url: d.url,
            metadata: d.metadata.into_iter().collect(),
            updated_at: rfc3339(d.updated_at.as_ref()),
        }
    }
}

/// What became of one document of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentResult {
    pub external_id: String,
    /// `created`, `updated`, `unchanged`, `deleted` or `not_found`.
    pub result: String,
}

/// A deleted resource.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// A collection to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Help center", "description": "Articles of help.example.com"}))]
pub struct CreateCollection {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A change to a collection: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCollection {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A document's content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"title": "Refunds", "body": "Refunds take 5 days.", "url": "https://help.example.com/refunds"}))]
pub struct DocumentContent {
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A document with your id for it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"external_id": "article-17", "title": "Refunds", "body": "Refunds take 5 days."}))]
pub struct NewDocument {
    pub external_id: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl NewDocument {
    fn into_pb(self) -> pb::Document {
        pb::Document {
            external_id: self.external_id,
            title: self.title,
            body: self.body,
            url: self.url,
            metadata: self.metadata.into_iter().collect(),
            updated_at: None,
        }
    }
}

/// A change to a document: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDocument {
    pub title: Option<String>,
    pub body: Option<String>,
    pub url: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Documents to upsert and delete in one request.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"upsert": [{"external_id": "article-17", "title": "Refunds", "body": "Refunds take 5 days."}], "delete": ["article-3"]}))]
pub struct BulkDocuments {
    #[serde(default)]
    pub upsert: Vec<NewDocument>,
    /// External ids.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// What a bulk request did, one result per item: upserts first, then deletes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BulkResult {
    pub results: Vec<DocumentResult>,
}

/// Lists the workspace's collections, by id.
#[utoipa::path(
    get, path = "/collections", tag = "knowledge", params(Page),
    responses(
        (status = 200, description = "One page of collections", body = List<Collection>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_collections(
    State(state): State<AppState>,
    caller: Caller,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let mut all = state
        .flows_for(&caller)?
        .list_collections(pb::ListCollectionsRequest {
            workspace_id: caller.workspace_id.clone(),
        })
        .await?
        .collections;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let after = page_of.cursor.unwrap_or_default();
    let rest: Vec<_> = all.into_iter().filter(|c| c.id > after).collect();
    let more = rest.len() > limit as usize;
    let data: Vec<Collection> = rest
        .into_iter()
        .take(limit as usize)
        .map(Into::into)
        .collect();
    let next = more.then(|| data.last().map(|c| c.id.clone())).flatten();
    Ok(page("/v1/collections", limit, data, next))
}

/// Creates a collection.
#[utoipa::path(
    post, path = "/collections", tag = "knowledge", request_body = CreateCollection,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = Collection),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_collection(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<CreateCollection>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let created = state
        .flows_for(&caller)?
        .create_collection(pb::CreateCollectionRequest {
            workspace_id: caller.workspace_id.clone(),
            name: body.name,
            description: body.description,
            request_id,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Collection::from(created))).into_response())
}

fn collection_ref(caller: &Caller, id: String) -> pb::CollectionRef {
    pb::CollectionRef {
        workspace_id: caller.workspace_id.clone(),
        collection_id: id,
    }
}

/// Gets a collection.
#[utoipa::path(
    get, path = "/collections/{id}", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`")),
    responses(
        (status = 200, description = "The collection", body = Collection),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_collection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Collection>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let collection = state
        .flows_for(&caller)?
        .get_collection(collection_ref(&caller, id))
        .await?;
    Ok(Json(collection.into()))
}

/// Renames a collection or changes its description.
#[utoipa::path(
    patch, path = "/collections/{id}", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`")),
    request_body = UpdateCollection,
    responses(
        (status = 200, description = "The collection after the change", body = Collection),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_collection(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
    Json(change): Json<UpdateCollection>,
) -> Result<Json<Collection>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut fields = Vec::new();
    if change.name.is_some() {
        fields.push("name".to_owned());
    }
    if change.description.is_some() {
        fields.push("description".to_owned());
    }
    let updated = state
        .flows_for(&caller)?
        .update_collection(pb::UpdateCollectionRequest {
            workspace_id: caller.workspace_id.clone(),
            collection_id: id,
            name: change.name.unwrap_or_default(),
            description: change.description.unwrap_or_default(),
            fields,
            request_id,
        })
        .await?;
    Ok(Json(updated.into()))
}

/// Deletes a collection and every document in it.
#[utoipa::path(
    delete, path = "/collections/{id}", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_collection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let deleted = state
        .flows_for(&caller)?
        .delete_collection(collection_ref(&caller, id))
        .await?;
    Ok(Json(Deleted {
        id: deleted.id,
        deleted: true,
    }))
}

/// Lists a collection's documents, by external id.
#[utoipa::path(
    get, path = "/collections/{id}/documents", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`"), Page),
    responses(
        (status = 200, description = "One page of documents", body = List<Document>,
            headers(("Link" = String, description = "`<...>; rel=\"next\"` when more follow"))),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_documents(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page_of): Query<Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let answer = state
        .flows_for(&caller)?
        .list_documents(pb::ListDocumentsRequest {
            workspace_id: caller.workspace_id.clone(),
            collection_id: id.clone(),
            limit,
            cursor: page_of.cursor.unwrap_or_default(),
        })
        .await?;
    let data: Vec<Document> = answer.documents.into_iter().map(Into::into).collect();
    let next = cursor_of(answer.next_cursor);
    Ok(page(
        &format!("/v1/collections/{id}/documents"),
        limit,
        data,
        next,
    ))
}

/// Upserts `documents`; the results, one per document.
async fn upsert(
    client: &FlowsClient,
    caller: &Caller,
    collection_id: &str,
    documents: Vec<pb::Document>,
) -> Result<Vec<pb::DocumentResult>, ApiError> {
    Ok(client
        .upsert_documents(pb::UpsertDocumentsRequest {
            workspace_id: caller.workspace_id.clone(),
            collection_id: collection_id.to_owned(),
            documents,
        })
        .await?
        .results)
}

/// The answer to a single upsert: 201 with the document when it was created, 200 otherwise.
async fn upserted(
    client: &FlowsClient,
    caller: &Caller,
    collection_id: &str,
    document: pb::Document,
) -> Result<Response, ApiError> {
    let external_id = document.external_id.clone();
    let results = upsert(client, caller, collection_id, vec![document]).await?;
    let created = results.first().is_some_and(|r| r.result == "created");
    let stored = fetch_document(client, caller, collection_id, &external_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Document::from(stored))).into_response())
}

async fn fetch_document(
    client: &FlowsClient,
    caller: &Caller,
    collection_id: &str,
    external_id: &str,
) -> Result<pb::Document, ApiError> {
    Ok(client
        .get_document(pb::DocumentRef {
            workspace_id: caller.workspace_id.clone(),
            collection_id: collection_id.to_owned(),
            external_id: external_id.to_owned(),
        })
        .await?)
}

/// Adds a document (or replaces the one with its external id).
#[utoipa::path(
    post, path = "/collections/{id}/documents", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`")),
    request_body = NewDocument,
    responses(
        (status = 201, description = "Created", body = Document),
        (status = 200, description = "Replaced the document with this external id", body = Document),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_document(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<NewDocument>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    upserted(&client, &caller, &id, body.into_pb()).await
}

/// Gets a document by its external id.
#[utoipa::path(
    get, path = "/collections/{id}/documents/{external_id}", tag = "knowledge",
    params(
        ("id" = String, Path, description = "The collection's id, `kc_...`"),
        ("external_id" = String, Path, description = "Your id for the document"),
    ),
    responses(
        (status = 200, description = "The document", body = Document),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, external_id)): Path<(String, String)>,
) -> Result<Json<Document>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let client = state.flows_for(&caller)?;
    Ok(Json(
        fetch_document(&client, &caller, &id, &external_id)
            .await?
            .into(),
    ))
}

/// Creates or replaces the document with this external id.
#[utoipa::path(
    put, path = "/collections/{id}/documents/{external_id}", tag = "knowledge",
    params(
        ("id" = String, Path, description = "The collection's id, `kc_...`"),
        ("external_id" = String, Path, description = "Your id for the document"),
    ),
    request_body = DocumentContent,
    responses(
        (status = 201, description = "Created", body = Document),
        (status = 200, description = "Replaced", body = Document),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, external_id)): Path<(String, String)>,
    Json(body): Json<DocumentContent>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    let document = pb::Document {
        external_id,
        title: body.title,
        body: body.body,
        url: body.url,
        metadata: body.metadata.into_iter().collect(),
        updated_at: None,
    };
    upserted(&client, &caller, &id, document).await
}

/// Changes some fields of a document.
#[utoipa::path(
    patch, path = "/collections/{id}/documents/{external_id}", tag = "knowledge",
    params(
        ("id" = String, Path, description = "The collection's id, `kc_...`"),
        ("external_id" = String, Path, description = "Your id for the document"),
    ),
    request_body = PatchDocument,
    responses(
        (status = 200, description = "The document after the change", body = Document),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, external_id)): Path<(String, String)>,
    Json(change): Json<PatchDocument>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let client = state.flows_for(&caller)?;
    let mut document = fetch_document(&client, &caller, &id, &external_id).await?;
    if let Some(title) = change.title {
        document.title = title;
    }
    if let Some(body) = change.body {
        document.body = body;
    }
    if let Some(url) = change.url {
        document.url = url;
    }
    if let Some(metadata) = change.metadata {
        document.metadata = metadata.into_iter().collect();
    }
    document.updated_at = None;
    upsert(&client, &caller, &id, vec![document]).await?;
    let stored = fetch_document(&client, &caller, &id, &external_id).await?;
    Ok(Json(Document::from(stored)).into_response())
}

/// Deletes a document.
#[utoipa::path(
    delete, path = "/collections/{id}/documents/{external_id}", tag = "knowledge",
    params(
        ("id" = String, Path, description = "The collection's id, `kc_...`"),
        ("external_id" = String, Path, description = "Your id for the document"),
    ),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, external_id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let answer = state
        .flows_for(&caller)?
        .delete_documents(pb::DeleteDocumentsRequest {
            workspace_id: caller.workspace_id.clone(),
            collection_id: id,
            external_ids: vec![external_id.clone()],
        })
        .await?;
    if answer.deleted == 0 {
        return Err(ApiError::not_found("document"));
    }
    Ok(Json(Deleted {
        id: external_id,
        deleted: true,
    }))
}

/// Upserts and deletes up to 1,000 documents by external id, idempotently: sending the same
/// request again changes nothing (`unchanged`, `not_found`).
#[utoipa::path(
    post, path = "/collections/{id}/documents/bulk", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`")),
    request_body = BulkDocuments,
    responses(
        (status = 200, description = "One result per item, upserts first", body = BulkResult),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn bulk_documents(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<BulkDocuments>,
) -> Result<Json<BulkResult>, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let items = body.upsert.len() + body.delete.len();
    if items == 0 || items > BULK_ITEMS {
        return Err(ApiError::field(
            "body",
            format!("1 to {BULK_ITEMS} documents to upsert and delete in all"),
        ));
    }
    let client = state.flows_for(&caller)?;
    let mut results = Vec::with_capacity(items);
    if !body.upsert.is_empty() {
        let documents = body.upsert.into_iter().map(NewDocument::into_pb).collect();
        results.extend(upsert(&client, &caller, &id, documents).await?);
    }
    if !body.delete.is_empty() {
        let answer = client
            .delete_documents(pb::DeleteDocumentsRequest {
                workspace_id: caller.workspace_id.clone(),
                collection_id: id,
                external_ids: body.delete,
            })
            .await?;
        results.extend(answer.results);
    }
    Ok(Json(BulkResult {
        results: results
            .into_iter()
            .map(|r| DocumentResult {
                external_id: r.external_id,
                result: r.result,
            })
            .collect(),
    }))
}

/// A search.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// The words to find.
    pub q: String,
    /// Hits, 1 to 50 (default 10).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<u32>,
}

/// One document found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    pub external_id: String,
    pub title: String,
    pub url: String,
    /// A short extract around the matches.
    pub snippet: String,
    pub score: f64,
}

/// What a search found, best first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchResult {
    pub data: Vec<SearchHit>,
}

/// Searches a collection's documents (full text), best first.
#[utoipa::path(
    get, path = "/collections/{id}/search", tag = "knowledge",
    params(("id" = String, Path, description = "The collection's id, `kc_...`"), SearchQuery),
    responses(
        (status = 200, description = "The hits", body = SearchResult),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn search_documents(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<SearchResult>, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    if let Some(limit) = query.limit
        && !(1..=50).contains(&limit)
    {
        return Err(ApiError::field("query.limit", "1 to 50"));
    }
    let answer = state
        .flows_for(&caller)?
        .search_documents(pb::SearchDocumentsRequest {
            workspace_id: caller.workspace_id.clone(),
            collection_id: id,
            query: query.q,
            limit: query.limit.unwrap_or(10),
        })
        .await?;
    Ok(Json(SearchResult {
        data: answer
            .hits
            .into_iter()
            .map(|h| SearchHit {
                external_id: h.external_id,
                title: h.title,
                url: h.url,
                snippet: h.snippet,
                score: h.score,
            })
            .collect(),
    }))
}
