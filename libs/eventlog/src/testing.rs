//! Test support: every test gets its own Postgres schema and its own NATS prefix, so tests
//! run in parallel without seeing each other's data, and a sweep removes what killed runs
//! left behind.
//!
//! A test that needs Postgres or NATS and cannot reach it panics with the command that
//! starts it: it never passes silently.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::OnceCell;

/// Postgres used by tests: `SWITCHBOARD_TEST_DATABASE_URL`, else the local `test` database.
pub fn database_url() -> String {
    std::env::var("SWITCHBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// NATS used by tests: `SWITCHBOARD_TEST_NATS_URL`, else the local server.
pub fn nats_url() -> String {
    std::env::var("SWITCHBOARD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Leftovers older than this are swept at the start of a test binary.
const STALE_AFTER: Duration = Duration::from_secs(3600);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A unique lowercase name `t<unix seconds>_<random>`, usable as schema, prefix or name.
pub fn unique_name() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}_{}", unix_secs(), &random[..10])
}

fn created_at(name: &str) -> Option<u64> {
    name.strip_prefix('t')?.split('_').next()?.parse().ok()
}

async fn connect_postgres() -> PgConnection {
    let url = database_url();
    match PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "this test needs PostgreSQL at {url} ({e}). Start it with: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ),
    }
}

/// A schema of its own for one test. Drop it with [`TestSchema::drop`] at the end.
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    /// Reserves a fresh schema name (the event log creates the schema when it migrates)
    /// after sweeping stale test schemas once per process.
    pub async fn new() -> Self {
        static SWEPT: OnceCell<()> = OnceCell::const_new();
        SWEPT.get_or_init(sweep_postgres).await;
        // Fail here, naming what to start, rather than deep inside the test.
        drop(connect_postgres().await);
        Self {
            url: database_url(),
            name: unique_name(),
        }
    }

    pub fn store_config(&self) -> crate::StoreConfig {
        crate::StoreConfig::Postgres {
            url: self.url.clone(),
            schema: self.name.clone(),
        }
    }

    /// Drops the schema. A service of the test may still be stopping, inside a handler's
    /// transaction that waits on a read: a `DROP` queued for its locks would block that
    /// read behind it, and neither would ever finish (Postgres cannot see a wait in the
    /// client). So the `DROP` waits at most a moment for its locks, and tries again; if it
    /// never gets them, the schema is left to the sweep of stale ones.
    pub async fn drop(self) {
        let mut conn = connect_postgres().await;
        let _ = sqlx::query("SET lock_timeout = '1s'")
            .execute(&mut conn)
            .await;
        for _ in 0..20 {
            let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.name
            )))
            .execute(&mut conn)
            .await;
            if dropped.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn sweep_postgres() {
    let mut conn = connect_postgres().await;
    let Ok(rows) = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't%\\_%'")
        .fetch_all(&mut conn)
        .await
    else {
        return;
    };
    let now = unix_secs();
    for row in rows {
        let Ok(name) = row.try_get::<String, _>(0) else {
            continue;
        };
        if created_at(&name).is_some_and(|t| now.saturating_sub(t) > STALE_AFTER.as_secs()) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A NATS connection for one test, with a prefix of its own for subjects and streams.
pub struct TestNats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub prefix: String,
}

impl TestNats {
    pub async fn new() -> Self {
        let client = nats_client().await;
        let js = jetstream::new(client.clone());
        static SWEPT: OnceCell<()> = OnceCell::const_new();
        SWEPT.get_or_init(|| sweep_streams(js.clone())).await;
        Self {
            client,
            js,
            prefix: unique_name(),
        }
    }

    /// Deletes every stream this test created.
    pub async fn drop(self) {
        delete_streams(&self.js, |name| name.starts_with(&self.prefix)).await;
    }
}

/// Connects to the test NATS server, or panics naming the command that starts it.
pub async fn nats_client() -> async_nats::Client {
    let url = nats_url();
    match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
    {
        Ok(client) => client,
        Err(e) => panic!(
            "this test needs NATS with JetStream at {url} ({e}). Start it with: \
             start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
             -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        ),
    }
}

async fn sweep_streams(js: jetstream::Context) {
    let now = unix_secs();
    delete_streams(&js, |name| {
        created_at(name).is_some_and(|t| now.saturating_sub(t) > STALE_AFTER.as_secs())
    })
    .await;
}

async fn delete_streams(js: &jetstream::Context, doomed: impl Fn(&str) -> bool) {
    let Ok(names) = js.stream_names().try_collect::<Vec<String>>().await else {
        return;
    };
    for name in names.iter().filter(|n| doomed(n)) {
        let _ = js.delete_stream(name).await;
    }
}

/// Starts a nats-server of the test's own (JetStream on `port`, its store in `store`),
/// for tests that stop or restart NATS and must not touch the shared one.
pub fn spawn_nats_server(port: u16, store: &std::path::Path) -> std::process::Child {
    let binary = [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "nats-server",
    ]
    .into_iter()
    .find(|b| std::path::Path::new(b).exists())
    .unwrap_or("nats-server");
    std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("this test starts its own nats-server ({binary}): {e}; install nats-server")
        })
}
