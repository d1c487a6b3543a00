//! Knowledge on both backends: bulk upserts idempotent by external id, deletes, full-text
//! search (Postgres full-text search; SQLite FTS5), and an index rebuilt from the log.

use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_eventlog::{EventLog, StoreConfig};
use switchboard_flows::knowledge::KnowledgeService;
use switchboard_flows::service::ServiceError;
use switchboard_proto::flows::v1::Document;

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
