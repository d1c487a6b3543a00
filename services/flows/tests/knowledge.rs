//! Knowledge on both backends: bulk upserts idempotent by external id, deletes, full-text
//! search (Postgres full-text search; SQLite FTS5), and an index rebuilt from the log;
//! collections renamed and deleted (with their documents and index), documents listed in
//! pages, and what became of each document of a bulk call.

use std::collections::BTreeSet;

use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_eventlog::{EventLog, StoreConfig};
use switchboard_flows::knowledge::KnowledgeService;
use switchboard_flows::service::ServiceError;
use switchboard_proto::flows::v1::flows_client::FlowsClient;
use switchboard_proto::flows::v1::{
    CollectionRef, CreateCollectionRequest, Document, DocumentResult, KnowledgeCollection,
    ListDocumentsRequest, SearchDocumentsRequest, UpdateCollectionRequest, UpsertDocumentsRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const WS: &str = "ws_know";

enum Fixture {
    Postgres(TestSchema),
    Sqlite(std::path::PathBuf),
}

impl Fixture {
    fn config(&self) -> StoreConfig {
        match self {
            Self::Postgres(schema) => schema.store_config(),
            Self::Sqlite(path) => StoreConfig::Sqlite { path: path.clone() },
        }
    }

    async fn open(&self) -> EventLog {
        let log = switchboard_flows::open_log(&self.config()).await.unwrap();
        log.migrate().await.unwrap();
        log
    }

    async fn cleanup(self) {
        match self {
            Self::Postgres(schema) => schema.drop().await,
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
    }
}

fn doc(id: &str, title: &str, body: &str) -> Document {
    Document {
        external_id: id.into(),
        title: title.into(),
        body: body.into(),
        url: format!("https://help.example.com/{id}"),
        ..Default::default()
    }
}

fn articles() -> Vec<Document> {
    vec![
        doc(
            "refunds",
            "Refund policy",
            "Refunds are paid back to the original card within five working days.",
        ),
        doc(
            "shipping",
            "Shipping times",
            "Orders ship within two days; express shipping arrives next day.",
        ),
        doc(
            "returns",
            "Returning an item",
            "Print the label, pack the item, and we refund you once it arrives.",
        ),
    ]
}

async fn knowledge_case(fixture: Fixture) {
    let log = fixture.open().await;
    let knowledge = KnowledgeService::new(log.clone());
    let collection = knowledge
        .create_collection(WS, "Help center", "", "create-help")
        .await
        .unwrap();
    let again = knowledge
        .create_collection(WS, "Help center", "", "create-help")
        .await
        .unwrap();
    assert_eq!(
        again.id, collection.id,
        "a retried create is the same collection"
    );
    let taken = knowledge
        .create_collection(WS, "Help center", "", "another")
        .await;
    assert!(
        matches!(taken, Err(ServiceError::NameTaken(_))),
        "{taken:?}"
    );

    let first = knowledge
        .upsert(WS, &collection.id, articles())
        .await
        .unwrap();
    assert_eq!((first.created, first.updated, first.unchanged), (3, 0, 0));
    let same = knowledge
        .upsert(WS, &collection.id, articles())
        .await
        .unwrap();
    assert_eq!((same.created, same.updated, same.unchanged), (0, 0, 3));
    let events_before = log.count_events().await.unwrap();
    let mut changed = articles();
    changed[1].body = "Orders ship within one day now.".into();
    let second = knowledge.upsert(WS, &collection.id, changed).await.unwrap();
    assert_eq!(
        (second.created, second.updated, second.unchanged),
        (0, 1, 2)
    );
    assert_eq!(
        log.count_events().await.unwrap(),
        events_before + 1,
        "only the changed document is recorded"
    );

    let hits = knowledge
        .search(WS, &collection.id, "refund", 10)
        .await
        .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.external_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{hits:#?}");
    assert_eq!(ids[0], "refunds", "the title match ranks first: {hits:#?}");
    assert!(hits[0].snippet.contains('['), "{:?}", hits[0].snippet);
    assert_eq!(hits[0].url, "https://help.example.com/refunds");
    // Prefixes match; every term must; search syntax in the query is just text.
    let prefix = knowledge
        .search(WS, &collection.id, "ship", 10)
        .await
        .unwrap();
    assert_eq!(prefix.len(), 1);
    let both = knowledge
        .search(WS, &collection.id, "refund card", 10)
        .await
        .unwrap();
    assert_eq!(both.len(), 1);
    let odd = knowledge
        .search(WS, &collection.id, r#"refund" OR (card* -x) NEAR:"#, 10)
        .await
        .unwrap();
    assert!(odd.iter().all(|h| h.external_id == "refunds"));

    let deleted = knowledge
        .delete(WS, &collection.id, vec!["returns".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!((deleted.deleted, deleted.not_found), (1, 1));
    let hits = knowledge
        .search(WS, &collection.id, "refund", 10)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);

    // A thousand documents in one call; a thousand and one refused.
    let many: Vec<Document> = (0..1000)
        .map(|i| {
            doc(
                &format!("faq-{i}"),
                &format!("Question {i}"),
                "Answer about widgets.",
            )
        })
        .collect();
    let bulk = knowledge.upsert(WS, &collection.id, many).await.unwrap();
    assert_eq!(bulk.created, 1000);
    let too_many: Vec<Document> = (0..1001)
        .map(|i| doc(&format!("x-{i}"), "t", "b"))
        .collect();
    assert!(matches!(
        knowledge.upsert(WS, &collection.id, too_many).await,
        Err(ServiceError::Invalid(_))
    ));
    let (shown, _) = knowledge.collection(WS, &collection.id).await.unwrap();
    assert_eq!(shown.document_count, 1002);

    // The index is a read model: rebuilt from the log, it answers the same.
    let before = knowledge
        .search(WS, &collection.id, "widgets question 7", 5)
        .await
        .unwrap();
    log.rebuild(&switchboard_flows::FlowsProjection, &mut |_| {})
        .await
        .unwrap();
    let after = knowledge
        .search(WS, &collection.id, "widgets question 7", 5)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert!(!after.is_empty());

    // Another workspace sees nothing of it.
    assert!(matches!(
        knowledge
            .search("ws_other", &collection.id, "refund", 10)
            .await,
        Err(ServiceError::NotFound(_))
    ));
    fixture.cleanup().await;
}

#[tokio::test]
async fn knowledge_on_postgres() {
    knowledge_case(Fixture::Postgres(TestSchema::new().await)).await;
}

#[tokio::test]
async fn knowledge_on_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name()));
    knowledge_case(Fixture::Sqlite(path)).await;
}

/// Rows of `table` in one collection, read straight from the read model.
async fn rows(log: &EventLog, table: &str, collection_id: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE collection_id = $1");
    match (log.postgres_pool(), log.sqlite_pool()) {
        (Some(pool), _) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(collection_id)
            .fetch_one(pool)
            .await
            .unwrap(),
        (_, Some(pool)) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(collection_id)
            .fetch_one(pool)
            .await
            .unwrap(),
        (None, None) => unreachable!(),
    }
}

/// The flows gRPC API over `log` on an ephemeral port.
async fn serve(log: &EventLog) -> (FlowsClient<Channel>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flows = switchboard_flows::FlowsService::new(log.clone(), None);
    let server = switchboard_runtime::GrpcServer::new().add_service(
        switchboard_flows::GRPC_SERVICE,
        switchboard_flows::FlowsApi::new(flows).into_server(),
    );
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    let client = FlowsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, shutdown)
}

fn violated(status: &tonic::Status) -> BTreeSet<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn update(
    collection_id: &str,
    fields: &[&str],
    name: &str,
    description: &str,
) -> UpdateCollectionRequest {
    UpdateCollectionRequest {
        workspace_id: WS.into(),
        collection_id: collection_id.into(),
        name: name.into(),
        description: description.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        request_id: String::new(),
    }
}

fn results(results: &[DocumentResult]) -> Vec<(&str, &str)> {
    results
        .iter()
        .map(|r| (r.external_id.as_str(), r.result.as_str()))
        .collect()
}

async fn collection_case(fixture: Fixture) {
    let log = fixture.open().await;
    let knowledge = KnowledgeService::new(log.clone());
    let help = knowledge
        .create_collection(WS, "Help center", "Answers", "create-help")
        .await
        .unwrap();
    assert_eq!(help.updated_at, help.created_at);
    let other = knowledge
        .create_collection(WS, "Internal", "", "create-internal")
        .await
        .unwrap();

    // Only the fields named change.
    let renamed = knowledge
        .update_collection(update(&help.id, &["name"], "Help", "ignored"))
        .await
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.description.as_str()),
        ("Help", "Answers")
    );
    let micros = |c: &KnowledgeCollection| switchboard_eventlog::micros(&c.updated_at.unwrap());
    assert!(micros(&renamed) > micros(&help), "{renamed:?}");
    let described = knowledge
        .update_collection(update(&help.id, &["description"], "ignored", ""))
        .await
        .unwrap();
    assert_eq!(
        (described.name.as_str(), described.description.as_str()),
        ("Help", "")
    );
    let (shown, _) = knowledge.collection(WS, &help.id).await.unwrap();
    assert_eq!(shown, described, "the read model says what the answer said");
    // Nothing named, or nothing different: nothing recorded.
    let events = log.count_events().await.unwrap();
    let same = knowledge
        .update_collection(update(&help.id, &[], "x", "y"))
        .await
        .unwrap();
    assert_eq!(same, shown);
    let same = knowledge
        .update_collection(update(&help.id, &["name", "description"], "Help", ""))
        .await
        .unwrap();
    assert_eq!(same, shown);
    assert_eq!(log.count_events().await.unwrap(), events);
    // A retried request is answered as the first time, and records nothing again, even
    // when the collection changed in between.
    let mut retried = update(&help.id, &["description"], "", "Once");
    retried.request_id = "describe-once".into();
    let first = knowledge.update_collection(retried.clone()).await.unwrap();
    assert_eq!(first.description, "Once");
    knowledge
        .update_collection(update(&help.id, &["description"], "", "Changed since"))
        .await
        .unwrap();
    let events = log.count_events().await.unwrap();
    let again = knowledge.update_collection(retried).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        log.count_events().await.unwrap(),
        events,
        "the retry appended nothing"
    );
    let (shown, _) = knowledge.collection(WS, &help.id).await.unwrap();
    assert_eq!(shown.description, "Changed since");
    // Every violation at once; a taken name; another workspace's collection.
    let mut bad = update(
        &help.id,
        &["name", "colour", "description"],
        " ",
        &"d".repeat(2001),
    );
    bad.request_id = "r".repeat(129);
    let Err(ServiceError::Invalid(found)) = knowledge.update_collection(bad).await else {
        panic!("an invalid update was accepted");
    };
    let fields: BTreeSet<&str> = found.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["name", "fields[1]", "description", "request_id"])
    );
    let taken = knowledge
        .update_collection(update(&help.id, &["name"], "Internal", ""))
        .await;
    assert!(
        matches!(taken, Err(ServiceError::NameTaken(_))),
        "{taken:?}"
    );
    let mut elsewhere = update(&help.id, &["name"], "Theirs", "");
    elsewhere.workspace_id = "ws_other".into();
    let missing = knowledge.update_collection(elsewhere).await;
    assert!(
        matches!(missing, Err(ServiceError::NotFound(_))),
        "{missing:?}"
    );

    // Delete: the collection, its documents and their index go; everything after answers
    // NotFound; the name is free again.
    knowledge.upsert(WS, &help.id, articles()).await.unwrap();
    knowledge.upsert(WS, &other.id, articles()).await.unwrap();
    assert!(matches!(
        knowledge.delete_collection("ws_other", &help.id).await,
        Err(ServiceError::NotFound(_))
    ));
    let deleted = knowledge.delete_collection(WS, &help.id).await.unwrap();
    assert_eq!(
        (deleted.id.as_str(), deleted.document_count),
        (help.id.as_str(), 3)
    );
    let gone = |r: Result<_, ServiceError>| matches!(r, Err(ServiceError::NotFound(_)));
    assert!(gone(
        knowledge.delete_collection(WS, &help.id).await.map(|_| ())
    ));
    assert!(gone(knowledge.collection(WS, &help.id).await.map(|_| ())));
    assert!(gone(
        knowledge
            .search(WS, &help.id, "refund", 10)
            .await
            .map(|_| ())
    ));
    assert!(gone(
        knowledge
            .list_documents(WS, &help.id, 0, "")
            .await
            .map(|_| ())
    ));
    assert!(gone(
        knowledge.upsert(WS, &help.id, articles()).await.map(|_| ())
    ));
    assert!(gone(
        knowledge
            .update_collection(update(&help.id, &["name"], "Back", ""))
            .await
            .map(|_| ())
    ));
    let check_gone = async |log: &EventLog| {
        let store = switchboard_flows::store::KnowledgeStore::new(log.clone());
        let terms = vec!["refund".to_owned()];
        assert!(
            store
                .search(WS, &help.id, &terms, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .documents(WS, &help.id, "", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(rows(log, "documents", &help.id).await, 0);
        if log.sqlite_pool().is_some() {
            assert_eq!(rows(log, "documents_fts", &help.id).await, 0);
        }
        // The other collection keeps its documents and their index.
        assert_eq!(
            store.search(WS, &other.id, &terms, 10).await.unwrap().len(),
            2
        );
        assert_eq!(
            knowledge.store().collection_ids(WS).await.unwrap(),
            vec![other.id.clone()]
        );
    };
    check_gone(&log).await;
    // Rebuilt from the log, it stays gone.
    log.rebuild(&switchboard_flows::FlowsProjection, &mut |_| {})
        .await
        .unwrap();
    check_gone(&log).await;
    let (kept, _) = knowledge.collection(WS, &other.id).await.unwrap();
    assert_eq!(kept.document_count, 3);
    let anew = knowledge
        .create_collection(WS, "Help", "", "create-help-again")
        .await
        .unwrap();
    assert_ne!(anew.id, help.id);
    let retried = knowledge
        .create_collection(WS, "Help center", "Answers", "create-help")
        .await;
    assert!(
        matches!(retried, Err(ServiceError::FailedPrecondition(_))),
        "a retried create of a deleted collection: {retried:?}"
    );

    // Over gRPC: every violation in one answer, ids included; NOT_FOUND for another
    // workspace's collection and after a delete.
    let (mut api, shutdown) = serve(&log).await;
    let mut bad = update(&other.id, &["name", "size"], "", "");
    bad.workspace_id = "nope".into();
    let status = api.update_collection(bad).await.unwrap_err();
    assert_eq!(
        violated(&status),
        BTreeSet::from(["workspace_id".into(), "fields[1]".into(), "name".into()])
    );
    let status = api
        .list_documents(ListDocumentsRequest {
            workspace_id: WS.into(),
            collection_id: other.id.clone(),
            limit: 101,
            cursor: "not a cursor!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated(&status),
        BTreeSet::from(["limit".into(), "cursor".into()])
    );
    let status = api
        .list_documents(ListDocumentsRequest {
            workspace_id: WS.into(),
            collection_id: "kc_".into(),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated(&status),
        BTreeSet::from(["collection_id".into(), "limit".into()])
    );
    // The ids and the request's own fields in one answer, for every call that has both.
    let upsert = api
        .upsert_documents(UpsertDocumentsRequest {
            workspace_id: "acme; drop".into(),
            collection_id: other.id.clone(),
            documents: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated(&upsert),
        BTreeSet::from(["workspace_id".into(), "documents".into()])
    );
    let search = api
        .search_documents(SearchDocumentsRequest {
            workspace_id: WS.into(),
            collection_id: "kc_".into(),
            query: " ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated(&search),
        BTreeSet::from(["collection_id".into(), "query".into()])
    );
    let created = api
        .create_collection(CreateCollectionRequest {
            workspace_id: "acme; drop".into(),
            name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated(&created),
        BTreeSet::from(["workspace_id".into(), "name".into()])
    );
    let theirs = CollectionRef {
        workspace_id: "ws_other".into(),
        collection_id: other.id.clone(),
    };
    let status = api.delete_collection(theirs).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let ours = CollectionRef {
        workspace_id: WS.into(),
        collection_id: other.id.clone(),
    };
    let deleted = api
        .delete_collection(ours.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, other.id);
    for status in [
        api.delete_collection(ours.clone()).await.unwrap_err(),
        api.get_collection(ours.clone()).await.unwrap_err(),
        api.update_collection(update(&other.id, &["name"], "Back", ""))
            .await
            .unwrap_err(),
        api.list_documents(ListDocumentsRequest {
            workspace_id: WS.into(),
            collection_id: other.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    shutdown.cancel();
    fixture.cleanup().await;
}

async fn documents_case(fixture: Fixture) {
    let log = fixture.open().await;
    let knowledge = KnowledgeService::new(log.clone());
    let collection = knowledge
        .create_collection(WS, "Manuals", "", "create-manuals")
        .await
        .unwrap();
    let kc = collection.id.as_str();

    // Per-item results, in request order.
    let first = knowledge
        .upsert(WS, kc, vec![doc("b", "B", "b"), doc("a", "A", "a")])
        .await
        .unwrap();
    assert_eq!(
        results(&first.results),
        [("b", "created"), ("a", "created")]
    );
    let mut changed_a = doc("a", "A", "a");
    changed_a.body = "changed".into();
    let second = knowledge
        .upsert(
            WS,
            kc,
            vec![doc("c", "C", "c"), doc("b", "B", "b"), changed_a],
        )
        .await
        .unwrap();
    assert_eq!(
        results(&second.results),
        [("c", "created"), ("b", "unchanged"), ("a", "updated")]
    );
    assert_eq!(
        (second.created, second.updated, second.unchanged),
        (1, 1, 1)
    );
    let deleted = knowledge
        .delete(
            WS,
            kc,
            vec!["zz".into(), "a".into(), "c".into(), "a".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        results(&deleted.results),
        [
            ("zz", "not_found"),
            ("a", "deleted"),
            ("c", "deleted"),
            ("a", "not_found")
        ]
    );
    assert_eq!((deleted.deleted, deleted.not_found), (2, 1));
    knowledge.delete(WS, kc, vec!["b".into()]).await.unwrap();

    // 250 documents in pages of 100: every one once, in external id order; one inserted
    // behind the cursor meanwhile is not seen, one ahead of it is.
    let many: Vec<Document> = (0..250)
        .map(|i| doc(&format!("doc-{i:03}"), &format!("Doc {i}"), "body"))
        .collect();
    knowledge.upsert(WS, kc, many).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = Vec::new();
    loop {
        let page = knowledge
            .list_documents(WS, kc, 100, &cursor)
            .await
            .unwrap();
        pages.push(page.documents.len());
        seen.extend(page.documents.into_iter().map(|d| d.external_id));
        if pages.len() == 1 {
            knowledge
                .upsert(
                    WS,
                    kc,
                    vec![
                        doc("doc-000a", "Behind", "b"),
                        doc("doc-200a", "Ahead", "b"),
                    ],
                )
                .await
                .unwrap();
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(pages, [100, 100, 51]);
    let mut expected: Vec<String> = (0..250).map(|i| format!("doc-{i:03}")).collect();
    expected.push("doc-200a".into());
    expected.sort();
    assert_eq!(seen, expected, "no duplicates, no gaps, in order");
    // The default page; the full documents come back.
    let page = knowledge.list_documents(WS, kc, 0, "").await.unwrap();
    assert_eq!(page.documents.len(), 20);
    assert_eq!(page.documents[0].external_id, "doc-000");
    assert_eq!(page.documents[0].url, "https://help.example.com/doc-000");
    assert!(page.documents[0].updated_at.is_some());
    assert!(matches!(
        knowledge.list_documents(WS, kc, 101, "").await,
        Err(ServiceError::Invalid(_))
    ));
    // 252 documents in pages of 84: three full pages, the last saying it is the last.
    let mut sizes = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = knowledge.list_documents(WS, kc, 84, &cursor).await.unwrap();
        sizes.push(page.documents.len());
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(sizes, [84, 84, 84]);
    fixture.cleanup().await;
}

#[tokio::test]
async fn collections_change_and_go_on_postgres() {
    collection_case(Fixture::Postgres(TestSchema::new().await)).await;
}

#[tokio::test]
async fn collections_change_and_go_on_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name()));
    collection_case(Fixture::Sqlite(path)).await;
}

#[tokio::test]
async fn documents_page_and_report_per_item_on_postgres() {
    documents_case(Fixture::Postgres(TestSchema::new().await)).await;
}

#[tokio::test]
async fn documents_page_and_report_per_item_on_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name()));
    documents_case(Fixture::Sqlite(path)).await;
}
