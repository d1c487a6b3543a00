//! A real conversations service on an ephemeral port, on Postgres (its own schema) or on
//! SQLite (its own file), and a gRPC client to it.

#![allow(dead_code)]

use std::path::PathBuf;

use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_eventlog::{EventLog, StoreConfig};
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_runtime::GrpcServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

enum Storage {
    Postgres(TestSchema),
    Sqlite(PathBuf),
}

pub struct Harness {
    pub client: ConversationsClient<Channel>,
    /// The service's URL, for clients other than `client`.
    pub url: String,
    pub log: EventLog,
    storage: Storage,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl Harness {
    pub async fn start(backend: Backend) -> Self {
        let storage = match backend {
            Backend::Postgres => Storage::Postgres(TestSchema::new().await),
            Backend::Sqlite => {
                Storage::Sqlite(std::env::temp_dir().join(format!("{}.db", unique_name())))
            }
        };
        let config = match &storage {
            Storage::Postgres(schema) => schema.store_config(),
            Storage::Sqlite(path) => StoreConfig::Sqlite { path: path.clone() },
        };
        let log = switchboard_conversations::open_log(&config)
            .await
            .expect("open log");
        log.migrate().await.expect("migrate");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = GrpcServer::new().add_service(
            switchboard_conversations::GRPC_SERVICE,
            switchboard_conversations::ConversationsApi::over(log.clone()).into_server(),
        );
        let token = shutdown.clone();
        let server = tokio::spawn(async move {
            server.serve(listener, token).await.expect("serve");
        });
        let client = ConversationsClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        Self {
            client,
            url: format!("http://{addr}"),
            log,
            storage,
            shutdown,
            server,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        match self.storage {
            Storage::Postgres(schema) => schema.drop().await,
            Storage::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
    }
}

/// Runs an async test body once on Postgres and once on SQLite.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::common::Backend::Postgres).await;
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            }
        )*
    };
}
