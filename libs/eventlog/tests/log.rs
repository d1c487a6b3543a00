//! The event log against real Postgres (its own schema per test) and SQLite (a temporary
//! file): every case runs on both backends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{
    EventLog, EventLogError, ExpectedVersion, LogPosition, Metadata, NewEvent, Projection,
    RecordedEvent, StoreConfig, StreamRef, Tx, Upcaster, on_conn,
};
use uuid::Uuid;

/// A store for one test, on either backend, removed at the end.
enum Fixture {
    Postgres(TestSchema),
    Sqlite(std::path::PathBuf),
}

impl Fixture {
    async fn postgres() -> Self {
        Self::Postgres(TestSchema::new().await)
    }

    fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!(
            "{}.db",
            switchboard_eventlog::testing::unique_name()
        ));
        Self::Sqlite(path)
    }

    fn config(&self) -> StoreConfig {
        match self {
            Self::Postgres(schema) => schema.store_config(),
            Self::Sqlite(path) => StoreConfig::Sqlite { path: path.clone() },
        }
    }

    async fn open(&self) -> EventLog {
        let log = EventLog::open(&self.config())
            .await
            .expect("open")
            .with_read_models(COUNTS_DDL, COUNTS_DDL);
        log.migrate().await.expect("migrate");
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

const COUNTS_DDL: &str =
    "CREATE TABLE IF NOT EXISTS counts (stream_id TEXT PRIMARY KEY, n BIGINT NOT NULL);";

fn event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: payload.to_vec(),
        metadata: Metadata {
            workspace_id: "ws_test".into(),
            occurred_at: 1,
            ..Default::default()
        },
    }
}

fn stream(id: &str) -> StreamRef {
    StreamRef::new("thing", format!("ws_test/{id}"))
}

async fn conflict_case(fixture: Fixture) {
    let log = fixture.open().await;
    let s = stream("a");
    log.append(
        &s,
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"1")],
    )
    .await
    .unwrap();
    let again = log
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("thing.made", b"2")],
        )
        .await;
    assert!(
        matches!(again, Err(EventLogError::Conflict { actual: 1, .. })),
        "{again:?}"
    );
    let ahead = log
        .append(
            &s,
            ExpectedVersion::Exact(5),
            vec![event("thing.changed", b"3")],
        )
        .await;
    assert!(
        matches!(ahead, Err(EventLogError::Conflict { actual: 1, .. })),
        "{ahead:?}"
    );
    let ok = log
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![event("thing.changed", b"4"), event("thing.changed", b"5")],
        )
        .await
        .unwrap();
    assert_eq!(
        ok.events
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    let stored = log.read_stream(&s, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 3, "the refused appends stored nothing");
    fixture.cleanup().await;
}

#[tokio::test]
async fn conflict_postgres() {
    conflict_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn conflict_sqlite() {
    conflict_case(Fixture::sqlite()).await;
}

async fn idempotent_case(fixture: Fixture) {
    let log = fixture.open().await;
    let s = stream("b");
    let events = vec![event("thing.made", b"1"), event("thing.changed", b"2")];
    let first = log
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    // The retry states the same expected version as the original: it would conflict if it
    // were not recognised as a duplicate.
    let retry = log
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.events, first.events);
    assert_eq!(log.count_events().await.unwrap(), 2);
    let counted = count_of(&log, &s.stream_id).await;
    assert_eq!(counted, 0, "no projection registered, nothing counted");
    fixture.cleanup().await;
}

#[tokio::test]
async fn idempotent_retry_postgres() {
    idempotent_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn idempotent_retry_sqlite() {
    idempotent_case(Fixture::sqlite()).await;
}

async fn append_only_case(fixture: Fixture) {
    let log = fixture.open().await;
    log.append(
        &stream("c"),
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"1")],
    )
    .await
    .unwrap();
    let statements = ["UPDATE events SET event_type = 'x'", "DELETE FROM events"];
    for sql in statements {
        let refused = match (log.postgres_pool(), &fixture) {
            (Some(pool), _) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            (None, Fixture::Sqlite(path)) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                sqlx::query(sql)
                    .execute(&pool)
                    .await
                    .map(|r| r.rows_affected())
            }
            _ => unreachable!(),
        };
        let err = refused.expect_err(sql).to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    if let Some(pool) = log.postgres_pool() {
        let err = sqlx::query("TRUNCATE events")
            .execute(pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(log.count_events().await.unwrap(), 1);
    fixture.cleanup().await;
}

#[tokio::test]
async fn update_and_delete_refused_postgres() {
    append_only_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn update_and_delete_refused_sqlite() {
    append_only_case(Fixture::sqlite()).await;
}

/// Concurrent writers, a third of which take their transaction id early and hold the
/// transaction open around the insert, so positions commit out of order. A tailer
/// following the log must see every event exactly once.
#[tokio::test]
async fn tailing_is_gap_safe_with_late_commits() {
    let fixture = Fixture::postgres().await;
    let log = fixture.open().await;
    let pool = log.postgres_pool().unwrap().clone();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;

    let tailer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = LogPosition::START;
            while seen.len() < WRITERS * PER_WRITER {
                let batch = log.read_all(after, 7).await.unwrap();
                if let Some(last) = batch.last() {
                    assert!(last.position() > after);
                    after = last.position();
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen.extend(batch.into_iter().map(|e| e.event_id));
            }
            seen
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let s = stream(&format!("w{w}-{i}"));
                if (w + i) % 3 == 0 {
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    sqlx::query(
                        "INSERT INTO events (event_id, stream_type, stream_id, stream_version,
                             event_type, schema_version, payload, metadata)
                         VALUES ($1, $2, $3, 1, 'thing.made', 1, '\\x00',
                                 '{\"workspace_id\":\"ws_test\",\"occurred_at\":1}')",
                    )
                    .bind(Uuid::now_v7())
                    .bind(&s.stream_type)
                    .bind(&s.stream_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    tx.commit().await.unwrap();
                } else {
                    log.append(
                        &s,
                        ExpectedVersion::NoStream,
                        vec![event("thing.made", b"x")],
                    )
                    .await
                    .unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), tailer)
        .await
        .expect("tailer saw every event")
        .unwrap();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), WRITERS * PER_WRITER);
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    fixture.cleanup().await;
}

async fn snapshot_case(fixture: Fixture) {
    let log = fixture.open().await;
    let s = stream("snap");
    log.save_snapshot(&s, 10, 1, b"state-at-10").await.unwrap();
    log.save_snapshot(&s, 5, 1, b"older").await.unwrap();
    let snap = log.load_snapshot(&s, 1).await.unwrap().unwrap();
    assert_eq!(
        (snap.stream_version, snap.state.as_slice()),
        (10, &b"state-at-10"[..])
    );
    assert!(
        log.load_snapshot(&s, 2).await.unwrap().is_none(),
        "new state version ignores it"
    );
    assert!(
        log.load_snapshot(&s, 1).await.unwrap().is_none(),
        "and discarded it"
    );
    fixture.cleanup().await;
}

#[tokio::test]
async fn snapshots_invalidate_postgres() {
    snapshot_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn snapshots_invalidate_sqlite() {
    snapshot_case(Fixture::sqlite()).await;
}

/// Version 1 of `thing.renamed` stored the name in lowercase bytes; version 2 stores it
/// prefixed with `name:`.
struct RenamedV1ToV2;

impl Upcaster for RenamedV1ToV2 {
    fn upcast(&self, event: &mut RecordedEvent) {
        if event.event_type == "thing.renamed" && event.schema_version == 1 {
            let mut payload = b"name:".to_vec();
            payload.extend_from_slice(&event.payload);
            event.payload = payload;
            event.schema_version = 2;
        }
    }
}

async fn upcast_case(fixture: Fixture) {
    let log = fixture.open().await;
    let s = stream("up");
    log.append(
        &s,
        ExpectedVersion::NoStream,
        vec![event("thing.renamed", b"bob")],
    )
    .await
    .unwrap();
    let upcasting = log.clone().with_upcaster(Arc::new(RenamedV1ToV2));
    let read = upcasting.read_stream(&s, 0, 10).await.unwrap();
    assert_eq!(read[0].schema_version, 2);
    assert_eq!(read[0].payload, b"name:bob");
    // A gap-safe read holds events back while any older transaction on the server is
    // open (other tests run beside this one), so wait for it to become visible.
    let mut all = Vec::new();
    for _ in 0..200 {
        all = upcasting.read_all(LogPosition::START, 10).await.unwrap();
        if !all.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(all[0].payload, b"name:bob");
    // The log itself is never rewritten.
    assert_eq!(log.read_stream(&s, 0, 10).await.unwrap()[0].payload, b"bob");
    fixture.cleanup().await;
}

#[tokio::test]
async fn upcaster_runs_on_read_postgres() {
    upcast_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn upcaster_runs_on_read_sqlite() {
    upcast_case(Fixture::sqlite()).await;
}

/// Counts events per stream.
struct Counts;

#[async_trait]
impl Projection for Counts {
    fn name(&self) -> &str {
        "counts"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError> {
        for e in events {
            if e.event_type == "thing.poison" {
                return Err(EventLogError::Projection {
                    name: "counts".into(),
                    reason: "poison".into(),
                });
            }
            on_conn!(tx, conn => sqlx::query(
                "INSERT INTO counts (stream_id, n) VALUES ($1, 1)
                 ON CONFLICT (stream_id) DO UPDATE SET n = counts.n + 1",
            )
            .bind(&e.stream.stream_id)
            .execute(conn)
            .await
            .map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError> {
        on_conn!(tx, conn => sqlx::query("DELETE FROM counts").execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

async fn count_of(log: &EventLog, stream_id: &str) -> i64 {
    let sql = "SELECT n FROM counts WHERE stream_id = $1";
    let row = match (log.postgres_pool(), log.sqlite_pool()) {
        (Some(pool), _) => sqlx::query(sql)
            .bind(stream_id)
            .fetch_optional(pool)
            .await
            .unwrap()
            .map(|r| r.get::<i64, _>(0)),
        (_, Some(pool)) => sqlx::query(sql)
            .bind(stream_id)
            .fetch_optional(pool)
            .await
            .unwrap()
            .map(|r| r.get::<i64, _>(0)),
        _ => unreachable!(),
    };
    row.unwrap_or(0)
}

async fn projection_case(fixture: Fixture) {
    let log = fixture.open().await.with_projection(Arc::new(Counts));
    let s = stream("p");
    log.append(
        &s,
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"1"), event("thing.changed", b"2")],
    )
    .await
    .unwrap();
    assert_eq!(
        count_of(&log, &s.stream_id).await,
        2,
        "inline projection ran in the append"
    );
    // A failing projection rolls the append back: the log and the model stay in step.
    let failed = log
        .append(
            &s,
            ExpectedVersion::Exact(2),
            vec![event("thing.poison", b"3")],
        )
        .await;
    assert!(
        matches!(failed, Err(EventLogError::Projection { .. })),
        "{failed:?}"
    );
    assert_eq!(log.read_stream(&s, 0, 10).await.unwrap().len(), 2);

    // Rebuild from position 0 gives the same model, reporting progress.
    log.append(
        &stream("q"),
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"1")],
    )
    .await
    .unwrap();
    let mut reports = Vec::new();
    let folded = log
        .rebuild(&Counts, &mut |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(folded, 3);
    assert_eq!(reports.last().map(|p| (p.done, p.total)), Some((3, 3)));
    assert_eq!(count_of(&log, &s.stream_id).await, 2);
    assert_eq!(count_of(&log, "ws_test/q").await, 1);
    fixture.cleanup().await;
}

#[tokio::test]
async fn projection_and_rebuild_postgres() {
    projection_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn projection_and_rebuild_sqlite() {
    projection_case(Fixture::sqlite()).await;
}

async fn checkpoint_case(fixture: Fixture) {
    let log = fixture.open().await;
    let at = |p| LogPosition {
        transaction_id: 0,
        global_position: p,
    };
    log.save_checkpoint("reader", at(5)).await.unwrap();
    // A stale writer (a relay that lost its lock) cannot move it back.
    log.save_checkpoint("reader", at(3)).await.unwrap();
    assert_eq!(log.checkpoint("reader").await.unwrap(), at(5));
    log.save_checkpoint("reader", at(8)).await.unwrap();
    assert_eq!(log.checkpoint("reader").await.unwrap(), at(8));
    fixture.cleanup().await;
}

#[tokio::test]
async fn checkpoints_only_move_forward_postgres() {
    checkpoint_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn checkpoints_only_move_forward_sqlite() {
    checkpoint_case(Fixture::sqlite()).await;
}

/// A handler that appends the event it handles to its own stream, inside the handler's
/// transaction; `fail` makes it fail after appending.
struct Copier {
    log: EventLog,
    fail: bool,
}

#[async_trait]
impl switchboard_eventlog::Handler for Copier {
    async fn handle(
        &self,
        tx: &mut Tx<'_>,
        handled: &RecordedEvent,
    ) -> Result<(), switchboard_eventlog::HandleError> {
        let copy = NewEvent {
            event_id: switchboard_eventlog::derive_event_id(
                "ws_test",
                &handled.event_id.to_string(),
                0,
            ),
            ..event("thing.copied", &handled.payload)
        };
        let appended = self
            .log
            .append_in(
                tx,
                &stream("copies"),
                ExpectedVersion::NoStream,
                vec![copy.clone()],
            )
            .await
            .map_err(|e| switchboard_eventlog::HandleError::Retry(e.to_string()))?;
        assert!(!appended.duplicate);
        let again = self
            .log
            .append_in(tx, &stream("copies"), ExpectedVersion::NoStream, vec![copy])
            .await
            .unwrap();
        assert!(
            again.duplicate,
            "the same id again is a duplicate, in the same tx too"
        );
        if self.fail {
            return Err(switchboard_eventlog::HandleError::Retry(
                "after appending".into(),
            ));
        }
        Ok(())
    }
}

async fn append_in_case(fixture: Fixture) {
    let log = fixture.open().await.with_projection(Arc::new(Counts));
    let source = log
        .append(
            &stream("source"),
            ExpectedVersion::NoStream,
            vec![event("thing.made", b"1")],
        )
        .await
        .unwrap()
        .events
        .remove(0);
    // A failing handler's appends roll back with it.
    let failing = Copier {
        log: log.clone(),
        fail: true,
    };
    let outcome = log.process_once("copier", &source, &failing).await.unwrap();
    assert!(outcome.is_err());
    assert!(
        log.read_stream(&stream("copies"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count_of(&log, "ws_test/copies").await, 0);
    // A succeeding one commits its append, projected, with the processed record.
    let copier = Copier {
        log: log.clone(),
        fail: false,
    };
    let woken = log.appended();
    assert_eq!(
        log.process_once("copier", &source, &copier).await.unwrap(),
        Ok(true)
    );
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("local tailers are woken when the handler's append commits");
    assert_eq!(
        log.read_stream(&stream("copies"), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(count_of(&log, "ws_test/copies").await, 1);
    fixture.cleanup().await;
}

#[tokio::test]
async fn append_in_a_handlers_transaction_postgres() {
    append_in_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn append_in_a_handlers_transaction_sqlite() {
    append_in_case(Fixture::sqlite()).await;
}

/// Appends made at once are committed together, and each caller is answered with its own
/// result: a stale expected version, a duplicate and a projection that refuses touch that
/// caller only, and every event is in the log and projected exactly once.
async fn group_commit_case(fixture: Fixture) {
    let log = fixture.open().await.with_projection(Arc::new(Counts));
    let taken = stream("taken");
    log.append(
        &taken,
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"0")],
    )
    .await
    .unwrap();
    let retried = event("thing.made", b"r");
    log.append(
        &stream("retried"),
        ExpectedVersion::NoStream,
        vec![retried.clone()],
    )
    .await
    .unwrap();

    let append = |id: String, expected: ExpectedVersion, events: Vec<NewEvent>| {
        let log = log.clone();
        tokio::spawn(async move { log.append(&stream(&id), expected, events).await })
    };
    let mut many = Vec::new();
    for i in 0..200 {
        many.push(append(
            format!("g{i}"),
            ExpectedVersion::NoStream,
            vec![event("thing.made", b"x"), event("thing.changed", b"y")],
        ));
    }
    let stale = append(
        "taken".into(),
        ExpectedVersion::NoStream,
        vec![event("thing.made", b"late")],
    );
    let again = append("retried".into(), ExpectedVersion::NoStream, vec![retried]);
    let poisoned = append(
        "poisoned".into(),
        ExpectedVersion::NoStream,
        vec![event("thing.poison", b"p")],
    );

    let mut transactions = HashSet::new();
    for task in many {
        let appended = task.await.unwrap().unwrap();
        assert!(!appended.duplicate);
        let versions: Vec<u64> = appended.events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, [1, 2]);
        transactions.insert(appended.events[0].transaction_id);
    }
    let stale = stale.await.unwrap();
    assert!(
        matches!(stale, Err(EventLogError::Conflict { actual: 1, .. })),
        "{stale:?}"
    );
    let again = again.await.unwrap().unwrap();
    assert!(again.duplicate && again.events.len() == 1);
    let poisoned = poisoned.await.unwrap();
    assert!(
        matches!(poisoned, Err(EventLogError::Projection { .. })),
        "{poisoned:?}"
    );

    for i in [0, 99, 199] {
        assert_eq!(count_of(&log, &format!("ws_test/g{i}")).await, 2);
    }
    assert_eq!(count_of(&log, "ws_test/taken").await, 1);
    assert_eq!(count_of(&log, "ws_test/poisoned").await, 0);
    // A gap-safe read holds events back while any older transaction on the server is
    // open (other tests run beside this one): read until it has caught up.
    let mut all = Vec::new();
    for _ in 0..400 {
        all = log.read_all(LogPosition::START, 10_000).await.unwrap();
        if all.len() >= 402 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        all.len(),
        2 + 400,
        "each event once, nothing of the refused appends"
    );
    if log.postgres_pool().is_some() {
        assert!(
            transactions.len() < 200,
            "200 appends at once share commits ({} transactions)",
            transactions.len()
        );
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn group_commit_postgres() {
    group_commit_case(Fixture::postgres().await).await;
}

#[tokio::test]
async fn group_commit_sqlite() {
    group_commit_case(Fixture::sqlite()).await;
}
