//! What the benchmarks share: events to append, messages to add, and the conversations
//! service on a loopback port.

use switchboard_eventlog::{EventLog, Metadata, NewEvent};
use switchboard_proto::conversations::v1::AddMessageRequest;
use switchboard_proto::conversations::v1::conversations_client::ConversationsClient;
use switchboard_proto::events::v1::{Author, MessageKind};
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) fn event(i: usize, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "bench.happened".into(),
        schema_version: 1,
        payload: payload.to_vec(),
        metadata: Metadata {
            workspace_id: "ws_bench".into(),
            correlation_id: format!("req-{i}"),
            occurred_at: 1,
            ..Default::default()
        },
    }
}

pub(crate) fn text(conversation_id: &str, i: usize) -> AddMessageRequest {
    AddMessageRequest {
        workspace_id: "ws_bench".into(),
        conversation_id: conversation_id.into(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: format!("message {i} with a little text in it"),
        ..Default::default()
    }
}

pub(crate) async fn serve_conversations(
    log: EventLog,
) -> (
    ConversationsClient<tonic::transport::Channel>,
    CancellationToken,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new().add_service(
        switchboard_conversations::GRPC_SERVICE,
        switchboard_conversations::ConversationsApi::over(log).into_server(),
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    (
        ConversationsClient::connect(format!("http://{addr}"))
            .await
            .unwrap(),
        shutdown,
    )
}
