//! Rate limits are kept in the store, so every replica on it counts the same calls: two
//! logs opened on one store (two replicas) together admit a minute's quota and no more,
//! then one call an interval; on Postgres and on SQLite.

use switchboard_actions::rate_limits::admit_call;
use switchboard_eventlog::StoreConfig;
use switchboard_eventlog::testing::{TestSchema, unique_name};

const MINUTE: i64 = 60_000_000;
const NOW: i64 = 1_767_225_600_000_000;

async fn two_replicas_share_one_limit(config: StoreConfig) {
    let a = switchboard_actions::open_log(&config).await.unwrap();
    a.migrate().await.unwrap();
    let b = switchboard_actions::open_log(&config).await.unwrap();
    let key = format!("ws_1/act_{}", unique_name());
    // Five a minute: five at once, alternating replicas; the sixth is refused by either.
    let mut admitted = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        admitted.push(admit_call(replica, &key, 5, NOW).await.unwrap());
    }
    assert_eq!(admitted, [true, true, true, true, true, false]);
    assert!(!admit_call(&b, &key, 5, NOW + MINUTE / 10).await.unwrap());
    // One interval (12 s) later, one more; not two.
    assert!(admit_call(&a, &key, 5, NOW + MINUTE / 5).await.unwrap());
    assert!(!admit_call(&b, &key, 5, NOW + MINUTE / 5).await.unwrap());
    // Another action's limit is its own.
    assert!(admit_call(&b, "ws_1/act_other", 5, NOW).await.unwrap());
    // A quiet minute gives the whole quota back.
    let later = NOW + 3 * MINUTE;
    for _ in 0..5 {
        assert!(admit_call(&a, &key, 5, later).await.unwrap());
    }
    assert!(!admit_call(&b, &key, 5, later).await.unwrap());
}

#[tokio::test]
async fn two_replicas_share_one_rate_limit_on_postgres() {
    let schema = TestSchema::new().await;
    two_replicas_share_one_limit(schema.store_config()).await;
    schema.drop().await;
}

#[tokio::test]
async fn two_replicas_share_one_rate_limit_on_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name()));
    two_replicas_share_one_limit(StoreConfig::Sqlite { path: path.clone() }).await;
    let _ = std::fs::remove_file(&path);
}
