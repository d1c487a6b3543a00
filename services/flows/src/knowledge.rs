//! Knowledge: collections of documents an assistant searches. Documents are events in the
//! collection's stream (`knowledge/<ws>/<kc>`), upserted and deleted in bulk, idempotent
//! by external id; the search index is a read model (Postgres full-text search in cluster
//! mode, SQLite FTS5 embedded), rebuilt from the log like any other.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;
use sha2::{Digest, Sha256};
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, ExpectedVersion, Loaded,
    Metadata, NewEvent, RecordedEvent, StreamRef, derive_event_id, now_micros, timestamp,
};
use switchboard_proto::flows::v1::{
    CollectionCreated, DeleteDocumentsResponse, Document, DocumentDeleted, DocumentUpserted,
    KnowledgeCollection, SearchHit, UpsertDocumentsResponse,
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

fn check_documents(documents: &[Document]) -> Result<(), Vec<FieldViolation>> {
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
        let mut v = Violations::default();
        if name.trim().is_empty() || name.len() > 100 {
            v.push("name", "required: at most 100 bytes");
        }
        if description.len() > 2000 {
            v.push("description", "at most 2000 bytes");
        }
        if request_id.len() > 128 {
            v.push("request_id", "at most 128 bytes");
        }
        v.finish().map_err(ServiceError::Invalid)?;
        let request_id = if request_id.is_empty() {
            Uuid::now_v7().to_string()
        } else {
            request_id.to_owned()
        };
        let key = derive_event_id(workspace_id, &format!("collection:{request_id}"), 0);
        let collection = KnowledgeCollection {
            id: format!("kc_{}", key.simple()),
            workspace_id: workspace_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            document_count: 0,
            created_at: Some(timestamp(now_micros())),
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
                Ok(stored.collection.unwrap_or(collection))
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

    /// Appends `events` at the collection's version, up to twice more after a race.
    async fn append(
        &self,
        workspace_id: &str,
        collection_id: &str,
        make: impl Fn() -> Vec<NewEvent>,
    ) -> Result<(), ServiceError> {
        let stream = knowledge_stream(workspace_id, collection_id);
        let collection = Collection {
            store: &self.store,
            workspace_id,
            collection_id,
        };
        let executed = Command::new(&self.log, &stream)
            .attempts(3)
            .run(
                &collection,
                |loaded: &Loaded<Option<KnowledgeCollection>>| match loaded.state {
                    Some(_) => Ok(Decision::events(make())),
                    None => Err(ServiceError::NotFound("knowledge collection")),
                },
            )
            .await;
        match executed {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected { error, .. }) => Err(error),
            Err(CommandError::Contended { .. }) => Err(ServiceError::FailedPrecondition(
                "the collection is changing too fast; retry".into(),
            )),
            Err(CommandError::Log(e)) => Err(e.into()),
        }
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
            match known.get(&d.external_id) {
                Some(old) if *old == hash => response.unchanged += 1,
                Some(_) => response.updated += 1,
                None => response.created += 1,
            }
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
        if external_ids.is_empty() || external_ids.len() > limits::DOCUMENTS_PER_CALL {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "external_ids".into(),
                description: format!("1 to {} ids a call", limits::DOCUMENTS_PER_CALL),
            }]));
        }
        self.collection(workspace_id, collection_id).await?;
        let unique: Vec<String> = external_ids
            .into_iter()
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
        let response = DeleteDocumentsResponse {
            deleted: present.len() as u32,
            not_found: (unique.len() - present.len()) as u32,
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
        if query.trim().is_empty() || query.len() > limits::QUERY_BYTES {
            return Err(ServiceError::Invalid(vec![FieldViolation {
                field: "query".into(),
                description: format!("required: at most {} bytes", limits::QUERY_BYTES),
            }]));
        }
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
}
