//! A real actions service on an ephemeral port, on Postgres or SQLite.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use switchboard_actions::ports::{Ports, QueryDatabases};
use switchboard_eventlog::testing::{TestSchema, unique_name};
use switchboard_eventlog::{EventLog, StoreConfig};
use switchboard_proto::actions::v1::actions_client::ActionsClient;
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_runtime::GrpcServer;
use switchboard_secrets::Keyring;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const WS: &str = "ws_shop";
pub const SECRET: &str = "sk_live_do_not_leak_42";

enum Storage {
    Postgres(TestSchema),
    Sqlite(PathBuf),
}

pub struct Harness {
    pub client: ActionsClient<Channel>,
    /// The real conversations service `update_conversation` actions change, on the same
    /// gRPC server.
    pub conversations: ConversationsClient<Channel>,
    pub log: EventLog,
    storage: Storage,
    conversations_db: PathBuf,
    shutdown: CancellationToken,
}

/// The query database tests configure: the shared test Postgres.
pub const QUERY_DB: &str = "testdb";

impl Harness {
    pub async fn start(postgres: bool) -> Self {
        let storage = if postgres {
            Storage::Postgres(TestSchema::new().await)
        } else {
            Storage::Sqlite(std::env::temp_dir().join(format!("{}.db", unique_name())))
        };
        let config = match &storage {
            Storage::Postgres(s) => s.store_config(),
            Storage::Sqlite(p) => StoreConfig::Sqlite { path: p.clone() },
        };
        let log = switchboard_actions::open_log(&config).await.unwrap();
        log.migrate().await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let keyring = Arc::new(Keyring::from_base64(&[key]).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let conversations_db = std::env::temp_dir().join(format!("{}-conv.db", unique_name()));
        let conversations_log = switchboard_conversations::open_log(&StoreConfig::Sqlite {
            path: conversations_db.clone(),
        })
        .await
        .unwrap();
        conversations_log.migrate().await.unwrap();
        let ports = Ports {
            conversations: Arc::new(
                switchboard_clients::ConversationsClient::connect_lazy(
                    &switchboard_clients::ClientConfig::new(
                        format!("http://{addr}"),
                        None,
                        "actions",
                    ),
                )
                .unwrap(),
            ),
            databases: QueryDatabases::from_config(&format!(
                "{QUERY_DB}={}",
                switchboard_eventlog::testing::database_url()
            ))
            .unwrap(),
            ..Ports::default()
        };
        let server = GrpcServer::new()
            .add_service(
                switchboard_actions::GRPC_SERVICE,
                switchboard_actions::ActionsApi::over(log.clone(), keyring, outbound(), ports)
                    .into_server(),
            )
            .add_service(
                switchboard_conversations::GRPC_SERVICE,
                switchboard_conversations::ConversationsApi::over(conversations_log).into_server(),
            );
        let token = shutdown.clone();
        tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
        let client = ActionsClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let conversations = ConversationsClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            client,
            conversations,
            log,
            storage,
            conversations_db,
            shutdown,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.conversations_db.display()));
        }
        match self.storage {
            Storage::Postgres(s) => s.drop().await,
            Storage::Sqlite(p) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
                }
            }
        }
    }
}

/// Test receivers listen on loopback, which the operator allows explicitly here.
pub fn outbound() -> switchboard_outbound::GuardedClient {
    let policy = switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap();
    switchboard_outbound::GuardedClient::new(policy, &Default::default()).unwrap()
}

/// Every event of the log once `done` holds for them. A gap-safe read holds events back
/// while an older transaction anywhere on the server is open (other tests run beside this
/// one), so a single read may see fewer.
pub async fn events_until(
    log: &EventLog,
    done: impl Fn(&[switchboard_eventlog::RecordedEvent]) -> bool,
) -> Vec<switchboard_eventlog::RecordedEvent> {
    for _ in 0..400 {
        let events = log
            .read_all(switchboard_eventlog::LogPosition::START, 10_000)
            .await
            .unwrap();
        if done(&events) {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the log never showed the expected events");
}
