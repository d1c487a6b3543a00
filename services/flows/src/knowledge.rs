//! Knowledge: collections of documents an assistant searches. Documents are events in the
//! collection's stream (`knowledge/<ws>/<kc>`), upserted and deleted in bulk, idempotent
//! by external id; the search index is a read model (Postgres full-text search in cluster
//! mode, SQLite FTS5 embedded), rebuilt from the log like any other. A collection's name
//! and description change by event too; deleting it is its stream's last event, and takes
//! its documents and their index out of the read models.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use sha2::{Digest, Sha256};
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, Executed, ExpectedVersion,
    Loaded, Metadata, NewEvent, RecordedEvent, StreamRef, derive_event_id, now_micros, timestamp,
};
use switchboard_proto::flows::v1::{
    CollectionCreated, CollectionDeleted, CollectionUpdated, DeleteDocumentsResponse, Document,
    DocumentDeleted, DocumentResult, DocumentUpserted, KnowledgeCollection, ListDocumentsResponse,
    SearchHit, UpdateCollectionRequest, UpsertDocumentsResponse,
};
use uuid::Uuid;

use crate::domain::{FieldViolation, Violations};
use crate::service::ServiceError;
use crate::store::KnowledgeStore;

pub use switchboard_contract::event_types::knowledge as event_types;

/// Bounds of knowledge inputs.
pub mod limits {
    pub const DOCUMENTS_PER_CALL: usize = 1000;
    pub const EXTERNAL_ID_BYTES: usize = 256;
    pub const TITLE_BYTES: usize = 1000;
    pub const BODY_BYTES: usize = 256 * 1024;
    pub const URL_BYTES: usize = 2048;
    pub const METADATA_ENTRIES: usize = 50;
    pub const QUERY_BYTES: usize = 1000;
    pub const SEARCH_LIMIT: u32 = 50;
    pub const NAME_BYTES: usize = 100;
    pub const DESCRIPTION_BYTES: usize = 2000;
    pub const REQUEST_ID_BYTES: usize = 128;
    /// Documents a page of `ListDocuments`, and how many when the request says 0.
    pub const DOCUMENTS_PAGE: u32 = 100;
    pub const DOCUMENTS_PAGE_DEFAULT: u32 = 20;
}

/// What became of one document of an upsert or a delete (`DocumentResult.result`).
pub mod results {
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const UNCHANGED: &str = "unchanged";
    pub const DELETED: &str = "deleted";
    pub const NOT_FOUND: &str = "not_found";
}

/// The fields of a collection `UpdateCollection` may change.
pub mod fields {
    pub const NAME: &str = "name";
    pub const DESCRIPTION: &str = "description";
}

use event_types as t;

pub fn knowledge_stream(workspace_id: &str, collection_id: &str) -> StreamRef {
    StreamRef::new("knowledge", format!("{workspace_id}/{collection_id}"))
}

/// What makes two versions of a document the same.
pub fn content_hash(d: &Document) -> String {
    let mut hash = Sha256::new();
    for part in [&d.title, &d.body, &d.url] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let metadata: BTreeMap<_, _> = d.metadata.iter().collect();
    for (k, v) in metadata {
        hash.update((k.len() as u64).to_be_bytes());
        hash.update(k.as_bytes());
        hash.update((v.len() as u64).to_be_bytes());
        hash.update(v.as_bytes());
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(v: &mut Violations, name: &str) {
    if name.trim().is_empty() || name.len() > limits::NAME_BYTES {
        v.push(
            fields::NAME,
            format!("required: at most {} bytes", limits::NAME_BYTES),
        );
    }
}

fn check_description(v: &mut Violations, description: &str) {
    if description.len() > limits::DESCRIPTION_BYTES {
        v.push(
            fields::DESCRIPTION,
            format!("at most {} bytes", limits::DESCRIPTION_BYTES),
        );
    }
}

fn check_request_id(v: &mut Violations, request_id: &str) {
    if request_id.len() > limits::REQUEST_ID_BYTES {
        v.push(
            "request_id",
            format!("at most {} bytes", limits::REQUEST_ID_BYTES),
        );
    }
}

/// What an `UpdateCollection` changes: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionChange {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// The change an update asks for, or every field violation in it (ids aside: the gRPC
/// layer checks those).
pub fn check_update(r: &UpdateCollectionRequest) -> Result<CollectionChange, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let mut change = CollectionChange::default();
    for (i, field) in r.fields.iter().enumerate() {
        match field.as_str() {
            fields::NAME => {
                if change.name.is_none() {
                    check_name(&mut v, &r.name);
                }
                change.name = Some(r.name.clone());
            }
            fields::DESCRIPTION => {
                if change.description.is_none() {
                    check_description(&mut v, &r.description);
                }
                change.description = Some(r.description.clone());
            }
            _ => v.push(
                format!("fields[{i}]"),
                format!(
                    "not a field a collection update changes: `{}` or `{}`",
                    fields::NAME,
                    fields::DESCRIPTION
                ),
            ),
        }
    }
    check_request_id(&mut v, &r.request_id);
    v.finish().map(|()| change)
}

/// A page of documents asked for: at most `limit`, those after the external id `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentsPage {
    pub limit: u32,
    pub after: String,
}

/// The page a `ListDocuments` asks for, or every field violation in it.
pub fn check_page(limit: u32, cursor: &str) -> Result<DocumentsPage, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let limit = match limit {
        0 => limits::DOCUMENTS_PAGE_DEFAULT,
        n if n > limits::DOCUMENTS_PAGE => {
            v.push(
                "limit",
                format!(
                    "1 to {} (0: {})",
                    limits::DOCUMENTS_PAGE,
                    limits::DOCUMENTS_PAGE_DEFAULT
                ),
            );
            n
        }
        n => n,
    };
    let after = match decode_cursor(cursor) {
        Some(after) => after,
        None => {
            v.push("cursor", "not a cursor this API returned");
            String::new()
        }
    };
    v.finish().map(|()| DocumentsPage { limit, after })
}

/// The cursor after `external_id`: the id itself, opaque to callers.
fn encode_cursor(external_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(external_id)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    if cursor.is_empty() {
        return Some(String::new());
    }
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|id| !id.is_empty() && id.len() <= limits::EXTERNAL_ID_BYTES)
}

/// The decision on an update: the collection as it would be, and the event that says so
/// when anything changes. Pure: the time and metadata come from the caller.
fn decide_update(
    current: Option<&KnowledgeCollection>,
    change: &CollectionChange,
    now: i64,
    metadata: &Metadata,
) -> Result<Decision<KnowledgeCollection>, ServiceError> {
    let current = current.ok_or(ServiceError::NotFound("knowledge collection"))?;
    let mut next = current.clone();
    if let Some(name) = &change.name {
        next.name.clone_from(name);
    }
    if let Some(description) = &change.description {
        next.description.clone_from(description);
    }
    if next == *current {
        return Ok(Decision::nothing(next));
    }
    next.updated_at = Some(timestamp(now));
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: t::COLLECTION_UPDATED.into(),
        schema_version: 1,
        payload: CollectionUpdated {
            collection: Some(next.clone()),
        }
        .encode_to_vec(),
        metadata: metadata.clone(),
    };
    Ok(Decision::new(vec![event], next))
}

/// The decision on a delete: the collection as it was, and the event that ends it.
fn decide_delete(
    current: Option<&KnowledgeCollection>,
    metadata: &Metadata,
) -> Result<Decision<KnowledgeCollection>, ServiceError> {
    let current = current.ok_or(ServiceError::NotFound("knowledge collection"))?;
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: t::COLLECTION_DELETED.into(),
        schema_version: 1,
        payload: CollectionDeleted {
            collection_id: current.id.clone(),
        }
        .encode_to_vec(),
        metadata: metadata.clone(),
    };
    Ok(Decision::new(vec![event], current.clone()))
}

/// A failed knowledge command as the service reports it.
fn command_failed(e: CommandError<ServiceError>) -> ServiceError {
    match e {
        CommandError::Rejected { error, .. } => error,
        CommandError::Contended { .. } => {
            ServiceError::FailedPrecondition("the collection is changing too fast; retry".into())
        }
        CommandError::RequestReused => crate::service::request_id_reused(),
        CommandError::Log(e) => e.into(),
    }
}

/// A new collection's fields.
pub fn check_new_collection(
    name: &str,
    description: &str,
    request_id: &str,
) -> Result<(), Vec<FieldViolation>> {
    let mut v = Violations::default();
    check_name(&mut v, name);
    check_description(&mut v, description);
    check_request_id(&mut v, request_id);
    v.finish()
}

/// The documents to delete: named, and not too many at once.
pub fn check_external_ids(external_ids: &[String]) -> Result<(), Vec<FieldViolation>> {
    let mut v = Violations::default();
    if external_ids.is_empty() || external_ids.len() > limits::DOCUMENTS_PER_CALL {
        v.push(
            "external_ids",
            format!("1 to {} ids a call", limits::DOCUMENTS_PER_CALL),
        );
    }
    v.finish()
}

/// A search's query: given, and not too long.
pub fn check_query(query: &str) -> Result<(), Vec<FieldViolation>> {
    let mut v = Violations::default();
    if query.trim().is_empty() || query.len() > limits::QUERY_BYTES {
        v.push(
            "query",
            format!("required: at most {} bytes", limits::QUERY_BYTES),
        );
    }
    v.finish()
}

pub fn check_documents(documents: &[Document]) -> Result<(), Vec<FieldViolation>> {
    let mut v = Violations::default();
    if documents.is_empty() || documents.len() > limits::DOCUMENTS_PER_CALL {
        v.push(
            "documents",
            format!("1 to {} documents a call", limits::DOCUMENTS_PER_CALL),
        );
        return v.finish();
    }
    let mut seen = HashSet::new();
    for (i, d) in documents.iter().enumerate() {
        let at = format!("documents[{i}]");
        if d.external_id.is_empty() || d.external_id.len() > limits::EXTERNAL_ID_BYTES {
            v.push(
                format!("{at}.external_id"),
                format!("required: 1 to {} bytes", limits::EXTERNAL_ID_BYTES),
            );
        } else if !seen.insert(d.external_id.as_str()) {
            v.push(
                format!("{at}.external_id"),
                format!("`{}` appears twice in this call", d.external_id),
            );
        }
        if d.title.len() > limits::TITLE_BYTES {
            v.push(
                format!("{at}.title"),
                format!("at most {} bytes", limits::TITLE_BYTES),
            );
        }
        if d.body.len() > limits::BODY_BYTES {
            v.push(
                format!("{at}.body"),
                format!("at most {} bytes", limits::BODY_BYTES),
            );
        }
        if d.title.trim().is_empty() && d.body.trim().is_empty() {
            v.push(at.clone(), "a document needs a title or a body");
        }
        if !d.url.is_empty()
            && (d.url.len() > limits::URL_BYTES
                || !(d.url.starts_with("https://") || d.url.starts_with("http://"))
                || url::Url::parse(&d.url).is_err())
        {
            v.push(format!("{at}.url"), "an http(s) URL of at most 2048 bytes");
        }
        if d.metadata.len() > limits::METADATA_ENTRIES {
            v.push(
                format!("{at}.metadata"),
                format!("at most {} entries", limits::METADATA_ENTRIES),
            );
        }
    }
    v.finish()
}

/// A collection for the command skeleton, loaded from the read model, which knows the
/// stream's version without reading every document's event again.
struct Collection<'a> {
    store: &'a KnowledgeStore,
    workspace_id: &'a str,
    collection_id: &'a str,
}

impl Aggregate for Collection<'_> {
    type State = Option<KnowledgeCollection>;

    /// Documents change only the search index: commands decide on nothing but whether the
    /// collection exists.
    fn apply(
        &self,
        _state: &mut Option<KnowledgeCollection>,
        _event: &RecordedEvent,
    ) -> Result<(), EventLogError> {
        Ok(())
    }

    async fn load(
        &self,
        _log: &EventLog,
        _stream: &StreamRef,
    ) -> Result<Loaded<Option<KnowledgeCollection>>, EventLogError> {
        Ok(
            match self
                .store
                .collection(self.workspace_id, self.collection_id)
                .await?
            {
                Some((collection, version)) => Loaded::new(Some(collection), version),
                None => Loaded::default(),
            },
        )
    }
}

#[derive(Clone)]
pub struct KnowledgeService {
    log: EventLog,
    store: KnowledgeStore,
}

fn metadata(workspace_id: &str) -> Metadata {
    Metadata {
        workspace_id: workspace_id.to_owned(),
        traceparent: switchboard_runtime::telemetry::current_traceparent().unwrap_or_default(),
        occurred_at: now_micros(),
        actor: switchboard_runtime::requests::current_actor(),
        ..Default::default()
    }
}

impl KnowledgeService {
    pub fn new(log: EventLog) -> Self {
        Self {
            store: KnowledgeStore::new(log.clone()),
            log,
        }
    }

    pub fn store(&self) -> &KnowledgeStore {
        &self.store
    }

    pub async fn create_collection(
        &self,
        workspace_id: &str,
        name: &str,
        description: &str,
        request_id: &str,
    ) -> Result<KnowledgeCollection, ServiceError> {
        check_new_collection(name, description, request_id).map_err(ServiceError::Invalid)?;
        let request_id = if request_id.is_empty() {
            Uuid::now_v7().to_string()
        } else {
            request_id.to_owned()
        };
        let key = derive_event_id(workspace_id, &format!("collection:{request_id}"), 0);
        let now = timestamp(now_micros());
        let collection = KnowledgeCollection {
            id: format!("kc_{}", key.simple()),
            workspace_id: workspace_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            document_count: 0,
            created_at: Some(now),
            updated_at: Some(now),
        };
        let event = NewEvent {
            event_id: key,
            event_type: t::COLLECTION_CREATED.into(),
            schema_version: 1,
            payload: CollectionCreated {
                collection: Some(collection.clone()),
            }
            .encode_to_vec(),
            metadata: metadata(workspace_id),
        };
        let stream = knowledge_stream(workspace_id, &collection.id);
        match self
            .log
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
        {
            Ok(appended) => {
                let stored: CollectionCreated = appended.events[0].decode()?;
                let stored = stored.collection.unwrap_or(collection);
                // A retried create of a collection deleted since would answer with a
                // collection that is gone.
                if appended.duplicate
                    && self
                        .store
                        .collection(workspace_id, &stored.id)
                        .await?
                        .is_none()
                {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "the collection this request created ({}) has been deleted since; \
                         send a new request id to create another",
                        stored.id
                    )));
                }
                Ok(stored)
            }
            Err(EventLogError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                Err(ServiceError::NameTaken(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn collection(
        &self,
        workspace_id: &str,
        collection_id: &str,
    ) -> Result<(KnowledgeCollection, u64), ServiceError> {
        self.store
            .collection(workspace_id, collection_id)
            .await?
            .ok_or(ServiceError::NotFound("knowledge collection"))
    }

    /// Runs one command on the collection's stream: loaded from the read model, decided by
    /// `decide`, appended at the version read, up to twice more after a race. A
    /// `request_key` makes a retried request append nothing.
    async fn execute<T>(
        &self,
        workspace_id: &str,
        collection_id: &str,
        request_key: Option<&str>,
        decide: impl FnMut(&Loaded<Option<KnowledgeCollection>>) -> Result<Decision<T>, ServiceError>,
    ) -> Result<Executed<Option<KnowledgeCollection>, T>, CommandError<ServiceError>> {
        let stream = knowledge_stream(workspace_id, collection_id);
        let collection = Collection {
            store: &self.store,
            workspace_id,
            collection_id,
        };
        let mut command = Command::new(&self.log, &stream)
            .attempts(3)
            .fingerprint(&switchboard_runtime::requests::current_request_hash());
        if let Some(key) = request_key {
            command = command.request(workspace_id, key);
        }
        command.run(&collection, decide).await
    }

    /// Appends `events` at the collection's version, up to twice more after a race.
    async fn append(
        &self,
        workspace_id: &str,
        collection_id: &str,
        make: impl Fn() -> Vec<NewEvent>,
    ) -> Result<(), ServiceError> {
        self.execute(workspace_id, collection_id, None, |loaded| {
            match loaded.state {
                Some(_) => Ok(Decision::events(make())),
                None => Err(ServiceError::NotFound("knowledge collection")),
            }
        })
        .await
        .map(|_| ())
        .map_err(command_failed)
    }

    /// Changes the fields the request names. Idempotent by request id; a change that
    /// changes nothing appends nothing.
    pub async fn update_collection(
        &self,
        r: UpdateCollectionRequest,
    ) -> Result<KnowledgeCollection, ServiceError> {
        let change = check_update(&r).map_err(ServiceError::Invalid)?;
        let metadata = metadata(&r.workspace_id);
        let now = now_micros();
        let key = (!r.request_id.is_empty())
            .then(|| format!("collection_update:{}:{}", r.collection_id, r.request_id));
        let executed = self
            .execute(
                &r.workspace_id,
                &r.collection_id,
                key.as_deref(),
                |loaded| decide_update(loaded.state.as_ref(), &change, now, &metadata),
            )
            .await;
        match executed {
            // The original's answer: the collection as that change left it.
            Ok(Executed::Duplicate { events, output }) => Ok(events
                .first()
                .map(|e| e.decode::<CollectionUpdated>())
                .transpose()?
                .and_then(|u| u.collection)
                .unwrap_or(output)),
            Ok(executed) => Ok(executed.into_output()),
            Err(CommandError::Log(EventLogError::Database(sqlx::Error::Database(db))))
                if db.is_unique_violation() =>
            {
                Err(ServiceError::NameTaken(change.name.unwrap_or_default()))
            }
            Err(e) => Err(command_failed(e)),
        }
    }

    /// Deletes the collection and every document in it, and answers with the collection
    /// as it was. Its stream takes no more events: later calls answer `NotFound`.
    pub async fn delete_collection(
        &self,
        workspace_id: &str,
        collection_id: &str,
    ) -> Result<KnowledgeCollection, ServiceError> {
        let metadata = metadata(workspace_id);
        self.execute(workspace_id, collection_id, None, |loaded| {
            decide_delete(loaded.state.as_ref(), &metadata)
        })
        .await
        .map(Executed::into_output)
        .map_err(command_failed)
    }

    /// One page of the collection's documents in external id order, and the cursor of
    /// the next (empty on the last page).
    pub async fn list_documents(
        &self,
        workspace_id: &str,
        collection_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<ListDocumentsResponse, ServiceError> {
        let page = check_page(limit, cursor).map_err(ServiceError::Invalid)?;
        self.collection(workspace_id, collection_id).await?;
        // One more than the page says whether another follows.
        let mut documents = self
            .store
            .documents(workspace_id, collection_id, &page.after, page.limit + 1)
            .await?;
        let mut next_cursor = String::new();
        if documents.len() > page.limit as usize {
            documents.truncate(page.limit as usize);
            if let Some(last) = documents.last() {
                next_cursor = encode_cursor(&last.external_id);
            }
        }
        Ok(ListDocumentsResponse {
            documents,
            next_cursor,
        })
    }

    pub async fn upsert(
        &self,
        workspace_id: &str,
        collection_id: &str,
        documents: Vec<Document>,
    ) -> Result<UpsertDocumentsResponse, ServiceError> {
        check_documents(&documents).map_err(ServiceError::Invalid)?;
        self.collection(workspace_id, collection_id).await?;
        let ids: Vec<String> = documents.iter().map(|d| d.external_id.clone()).collect();
        let known: HashMap<String, String> = self
            .store
            .hashes(workspace_id, collection_id, &ids)
            .await?
            .into_iter()
            .collect();
        let now = timestamp(now_micros());
        let mut response = UpsertDocumentsResponse::default();
        let mut changed = Vec::new();
        for mut d in documents {
            let hash = content_hash(&d);
            let result = match known.get(&d.external_id) {
                Some(old) if *old == hash => {
                    response.unchanged += 1;
                    results::UNCHANGED
                }
                Some(_) => {
                    response.updated += 1;
                    results::UPDATED
                }
                None => {
                    response.created += 1;
                    results::CREATED
                }
            };
            response.results.push(DocumentResult {
                external_id: d.external_id.clone(),
                result: result.to_owned(),
            });
            if known.get(&d.external_id) != Some(&hash) {
                d.updated_at = Some(now);
                changed.push(DocumentUpserted {
                    document: Some(d),
                    content_hash: hash,
                });
            }
        }
        if changed.is_empty() {
            return Ok(response);
        }
        self.append(workspace_id, collection_id, || {
            changed
                .iter()
                .map(|upserted| NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: t::DOCUMENT_UPSERTED.into(),
                    schema_version: 1,
                    payload: upserted.encode_to_vec(),
                    metadata: metadata(workspace_id),
                })
                .collect()
        })
        .await?;
        Ok(response)
    }

    pub async fn delete(
        &self,
        workspace_id: &str,
        collection_id: &str,
        external_ids: Vec<String>,
    ) -> Result<DeleteDocumentsResponse, ServiceError> {
        check_external_ids(&external_ids).map_err(ServiceError::Invalid)?;
        self.collection(workspace_id, collection_id).await?;
        let unique: Vec<String> = external_ids
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let present: Vec<String> = self
            .store
            .hashes(workspace_id, collection_id, &unique)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // In request order, as if deleted one at a time: a repeated id is gone already.
        let mut remaining: HashSet<&str> = present.iter().map(String::as_str).collect();
        let results = external_ids
            .iter()
            .map(|id| DocumentResult {
                external_id: id.clone(),
                result: if remaining.remove(id.as_str()) {
                    results::DELETED
                } else {
                    results::NOT_FOUND
                }
                .to_owned(),
            })
            .collect();
        let response = DeleteDocumentsResponse {
            deleted: present.len() as u32,
            not_found: (unique.len() - present.len()) as u32,
            results,
        };
        if present.is_empty() {
            return Ok(response);
        }
        self.append(workspace_id, collection_id, || {
            present
                .iter()
                .map(|id| NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: t::DOCUMENT_DELETED.into(),
                    schema_version: 1,
                    payload: DocumentDeleted {
                        external_id: id.clone(),
                    }
                    .encode_to_vec(),
                    metadata: metadata(workspace_id),
                })
                .collect()
        })
        .await?;
        Ok(response)
    }

    pub async fn search(
        &self,
        workspace_id: &str,
        collection_id: &str,
        query: &str,
        limit: u32,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        check_query(query).map_err(ServiceError::Invalid)?;
        self.collection(workspace_id, collection_id).await?;
        let limit = match limit {
            0 => 10,
            n => n.min(limits::SEARCH_LIMIT),
        };
        let terms = search_terms(query);
        if terms.is_empty() {
            return Ok(vec![]);
        }
        Ok(self
            .store
            .search(workspace_id, collection_id, &terms, limit)
            .await?)
    }
}

/// The words of a query, lowercased: letters and digits in any script. Punctuation and
/// query syntax are dropped, so no input can break the search engine's own syntax.
pub fn search_terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_see_every_part_and_only_the_content() {
        let d = Document {
            external_id: "a".into(),
            title: "T".into(),
            body: "B".into(),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        };
        let mut renamed = d.clone();
        renamed.external_id = "b".into();
        assert_eq!(content_hash(&d), content_hash(&renamed));
        let mut moved = d.clone();
        moved.title = "TB".into();
        moved.body = String::new();
        assert_ne!(content_hash(&d), content_hash(&moved));
    }

    #[test]
    fn search_terms_drop_syntax() {
        assert_eq!(
            search_terms(r#"refund" OR NEAR(x) -policy İade"#),
            ["refund", "or", "near", "x", "policy", "i̇ade"]
        );
    }

    #[test]
    fn documents_are_bounded_and_unique_per_call() {
        let doc = |id: &str| Document {
            external_id: id.into(),
            title: "t".into(),
            ..Default::default()
        };
        let found = check_documents(&[doc("a"), doc("a"), doc("")]).unwrap_err();
        let fields: Vec<_> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["documents[1].external_id", "documents[2].external_id"]
        );
        assert!(check_documents(&vec![doc("x"); 1001]).is_err());
    }

    fn collection() -> KnowledgeCollection {
        KnowledgeCollection {
            id: "kc_1".into(),
            workspace_id: "ws_1".into(),
            name: "Help".into(),
            description: "Answers".into(),
            document_count: 3,
            created_at: Some(timestamp(1)),
            updated_at: Some(timestamp(1)),
        }
    }

    #[test]
    fn updates_change_only_what_they_name_and_record_only_changes() {
        let current = collection();
        let metadata = Metadata::default();
        let renamed = CollectionChange {
            name: Some("Support".into()),
            description: None,
        };
        let decided = decide_update(Some(&current), &renamed, 5, &metadata).unwrap();
        assert_eq!(decided.events.len(), 1);
        assert_eq!(decided.events[0].event_type, t::COLLECTION_UPDATED);
        assert_eq!(
            (
                decided.output.name.as_str(),
                decided.output.description.as_str()
            ),
            ("Support", "Answers")
        );
        assert_eq!(decided.output.updated_at, Some(timestamp(5)));
        let recorded = CollectionUpdated::decode(decided.events[0].payload.as_slice()).unwrap();
        assert_eq!(recorded.collection, Some(decided.output));

        let same = CollectionChange {
            name: Some("Help".into()),
            description: Some("Answers".into()),
        };
        let decided = decide_update(Some(&current), &same, 5, &metadata).unwrap();
        assert!(decided.events.is_empty());
        assert_eq!(decided.output, current);
        assert!(matches!(
            decide_update(None, &same, 5, &metadata),
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            decide_delete(None, &metadata),
            Err(ServiceError::NotFound(_))
        ));
        let deleted = decide_delete(Some(&current), &metadata).unwrap();
        assert_eq!(deleted.events[0].event_type, t::COLLECTION_DELETED);
        assert_eq!(deleted.output, current);
    }

    #[test]
    fn an_update_names_every_violation() {
        let request = UpdateCollectionRequest {
            name: String::new(),
            description: "d".repeat(2001),
            fields: vec!["name".into(), "colour".into(), "description".into()],
            request_id: "r".repeat(129),
            ..Default::default()
        };
        let found = check_update(&request).unwrap_err();
        let fields: Vec<_> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "fields[1]", "description", "request_id"]);
        // Values of fields not named are not looked at.
        let request = UpdateCollectionRequest {
            name: String::new(),
            description: "Fine".into(),
            fields: vec!["description".into()],
            ..Default::default()
        };
        assert_eq!(
            check_update(&request).unwrap(),
            CollectionChange {
                name: None,
                description: Some("Fine".into())
            }
        );
    }

    #[test]
    fn pages_are_bounded_and_cursors_round_trip() {
        assert_eq!(
            check_page(0, "").unwrap().limit,
            limits::DOCUMENTS_PAGE_DEFAULT
        );
        assert_eq!(check_page(100, "").unwrap().limit, 100);
        let cursor = encode_cursor("faq/ü 7");
        assert_eq!(check_page(1, &cursor).unwrap().after, "faq/ü 7");
        let found = check_page(101, "not a cursor!").unwrap_err();
        let fields: Vec<_> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["limit", "cursor"]);
    }
}
