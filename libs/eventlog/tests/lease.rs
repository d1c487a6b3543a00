//! Leases on the real Postgres: one holder at a time, taken over after a term without
//! renewal (a holder that froze or lost its connection), fenced writes refused from a
//! deposed holder, released at once when dropped; and lag as a relay would report it.

use std::time::{Duration, Instant};

use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{
    EventLog, EventLogError, ExpectedVersion, LogPosition, Metadata, NewEvent, StreamRef,
};
use uuid::Uuid;

async fn open(schema: &TestSchema, term: Duration) -> EventLog {
    let log = EventLog::open(&schema.store_config())
        .await
        .unwrap()
        .with_lease_term(term);
    log.migrate().await.unwrap();
    log
}

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "thing.happened".into(),
        schema_version: 1,
        payload: b"payload".to_vec(),
        metadata: Metadata {
            workspace_id: "ws_test".into(),
            occurred_at: 1,
            ..Default::default()
        },
    }
}

/// What a holder whose renewals stop reaching the database (frozen, cut off) leaves: a
/// lease whose term has run out.
async fn let_run_out(log: &EventLog, name: &str) {
    sqlx::query(
        "UPDATE leases SET expires_at = clock_timestamp() - interval '1 second' WHERE name = $1",
    )
    .bind(name)
    .execute(log.postgres_pool().unwrap())
    .await
    .unwrap();
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_dropped_lease_is_free_at_once() {
    let schema = TestSchema::new().await;
    let a = open(&schema, Duration::from_secs(30)).await;
    let b = open(&schema, Duration::from_secs(30)).await;
    let lease = a.try_lead("relay:things").await.unwrap().unwrap();
    assert_eq!(lease.token(), 1);
    assert!(lease.is_held());
    assert!(b.try_lead("relay:things").await.unwrap().is_none());
    // Another role is another lease.
    assert!(b.try_lead("relay:others").await.unwrap().is_some());

    // Released on drop: the standby need not wait out the 30 s term.
    drop(lease);
    let started = Instant::now();
    let taken = loop {
        if let Some(taken) = b.try_lead("relay:things").await.unwrap() {
            break taken;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(taken.token(), 2, "every holder gets the next token");
    schema.drop().await;
}

#[tokio::test]
async fn a_holder_that_stops_renewing_is_taken_over_and_its_late_writes_are_refused() {
    let schema = TestSchema::new().await;
    let a = open(&schema, Duration::from_secs(3)).await;
    let b = open(&schema, Duration::from_secs(3)).await;
    let old = a.try_lead("webhooks-dispatcher").await.unwrap().unwrap();
    let stream = StreamRef::new("thing", "ws_test/one");
    a.append_fenced(
        &stream,
        ExpectedVersion::NoStream,
        vec![event()],
        old.fence(),
    )
    .await
    .unwrap();

    // Still held: nobody else may take it, however often they ask.
    assert!(b.try_lead("webhooks-dispatcher").await.unwrap().is_none());
    let_run_out(&a, "webhooks-dispatcher").await;
    let new = b.try_lead("webhooks-dispatcher").await.unwrap().unwrap();
    assert_eq!(new.token(), old.token() + 1);

    // The deposed holder's writes are refused, whatever it still believes.
    let refused = a
        .append_fenced(
            &stream,
            ExpectedVersion::Exact(1),
            vec![event()],
            old.fence(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EventLogError::Fenced { ref lease, token } if lease == "webhooks-dispatcher" && token == 1),
        "{refused}"
    );
    let position = LogPosition {
        transaction_id: u64::MAX / 2,
        global_position: 1,
    };
    let refused = a
        .save_checkpoint_fenced("relay:things", position, old.fence())
        .await
        .unwrap_err();
    assert!(matches!(refused, EventLogError::Fenced { .. }), "{refused}");
    assert_eq!(
        a.checkpoint("relay:things").await.unwrap(),
        LogPosition::START,
        "nothing was written"
    );
    // The new holder's go through.
    b.append_fenced(
        &stream,
        ExpectedVersion::Exact(1),
        vec![event()],
        new.fence(),
    )
    .await
    .unwrap();
    b.save_checkpoint_fenced("relay:things", position, new.fence())
        .await
        .unwrap();

    // The deposed holder learns it at its next renewal (a third of the term) and stops.
    tokio::time::timeout(Duration::from_secs(3), old.lost())
        .await
        .expect("the old holder noticed it was taken over");
    assert!(!old.is_held());
    assert!(new.is_held());
    // Dropping the deposed lease does not release its successor's.
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.try_lead("webhooks-dispatcher").await.unwrap().is_none());
    schema.drop().await;
}

#[tokio::test]
async fn a_held_lease_is_renewed_past_its_term() {
    let schema = TestSchema::new().await;
    let a = open(&schema, Duration::from_secs(1)).await;
    let b = open(&schema, Duration::from_secs(1)).await;
    let lease = a.try_lead("flows-timers").await.unwrap().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        assert!(b.try_lead("flows-timers").await.unwrap().is_none());
        assert!(lease.is_held());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    schema.drop().await;
}

#[tokio::test]
async fn lag_counts_what_a_reader_has_not_read() {
    let schema = TestSchema::new().await;
    let log = open(&schema, Duration::from_secs(5)).await;
    let none = log.lag(LogPosition::START).await.unwrap();
    assert_eq!(none.events, 0);
    let mut last = None;
    for i in 0..5 {
        let stream = StreamRef::new("thing", format!("ws_test/{i}"));
        let appended = log
            .append(&stream, ExpectedVersion::NoStream, vec![event()])
            .await
            .unwrap();
        last = appended.events.last().map(|e| e.position());
        if i == 1 {
            let lag = log.lag(LogPosition::START).await.unwrap();
            assert_eq!(lag.events, 2);
        }
    }
    let lag = log.lag(LogPosition::START).await.unwrap();
    assert_eq!(lag.events, 5);
    assert_eq!(lag.held_back, 0);
    assert!(lag.oldest_secs >= 0.0);
    assert_eq!(log.lag(last.unwrap()).await.unwrap().events, 0);

    // An open transaction that has written holds back what commits after it.
    let pool = log.postgres_pool().unwrap();
    let mut open_tx = pool.begin().await.unwrap();
    // Taking a transaction id is what a transaction that writes does first.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open_tx)
        .await
        .unwrap();
    let stream = StreamRef::new("thing", "ws_test/late");
    log.append(&stream, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    let lag = log.lag(last.unwrap()).await.unwrap();
    assert_eq!(lag.events, 1);
    assert_eq!(lag.held_back, 1, "{lag:?}");
    open_tx.rollback().await.unwrap();
    let lag = log.lag(last.unwrap()).await.unwrap();
    assert_eq!(lag.held_back, 0);
    schema.drop().await;
}
