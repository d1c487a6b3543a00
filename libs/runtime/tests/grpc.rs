//! Starts the real `GrpcServer` on an ephemeral port and talks to it as a client would.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_runtime::GrpcServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const TOKEN: &str = "s3cret-token";

struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), switchboard_runtime::RuntimeError>>,
}

async fn start(server: GrpcServer) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
    RunningServer {
        addr,
        shutdown,
        handle,
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// Calls a method that no service implements, so the only thing deciding the outcome is
/// the auth layer (UNAUTHENTICATED) or, once past it, the router (UNIMPLEMENTED).
async fn call_unknown(channel: Channel, authorization: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii header"));
    }
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    grpc.unary(
        request,
        PathAndQuery::from_static("/switchboard.test.v1.Secret/Get"),
        codec,
    )
    .await
    .expect_err("no service implements this method")
}

#[tokio::test]
async fn health_is_open_and_other_calls_need_the_token() {
    let metrics = switchboard_runtime::metrics::prometheus();
    let server = start(GrpcServer::new().with_service_token(Some(TOKEN.to_owned()))).await;
    let channel = connect(server.addr).await;

    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health check needs no token")
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);

    let status = call_unknown(channel.clone(), None).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let status = call_unknown(channel.clone(), Some("Bearer wrong-token!")).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let status = call_unknown(channel.clone(), Some(&format!("Basic {TOKEN}"))).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let status = call_unknown(channel, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    let rendered = metrics.render();
    assert!(
        rendered.contains(
            r#"grpc_server_requests_total{method="grpc.health.v1.Health/Check",code="OK"}"#
        ),
        "{rendered}"
    );
    assert!(
        rendered
            .contains(r#"grpc_server_requests_total{method="unknown",code="UNAUTHENTICATED"} 3"#),
        "{rendered}"
    );
    assert!(
        rendered.contains("grpc_server_request_duration_seconds_bucket"),
        "{rendered}"
    );

    server.shutdown.cancel();
    server
        .handle
        .await
        .expect("serve task")
        .expect("serve result");
}

#[tokio::test]
async fn without_a_token_every_call_passes_auth() {
    let server = start(GrpcServer::new()).await;
    let channel = connect(server.addr).await;

    let status = call_unknown(channel, None).await;
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    server.shutdown.cancel();
    server
        .handle
        .await
        .expect("serve task")
        .expect("serve result");
}

#[tokio::test]
async fn cancelling_the_token_stops_the_server() {
    let server = start(GrpcServer::new().with_shutdown_grace(Duration::from_secs(5))).await;
    let channel = connect(server.addr).await;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("serving before shutdown");

    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.handle)
        .await
        .expect("serve returns promptly after cancellation")
        .expect("serve task")
        .expect("serve result");

    // The listener is closed: new connections are refused.
    let refused = Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(refused.is_err(), "server still accepts connections");
}

#[tokio::test]
async fn health_turns_not_serving_before_the_drain() {
    // A Watch stream stays open through shutdown, so it sees NOT_SERVING before the
    // connection is closed; the bounded grace then lets serve return.
    let server = start(GrpcServer::new().with_shutdown_grace(Duration::from_millis(500))).await;
    let channel = connect(server.addr).await;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("first status").expect("open");
    assert_eq!(first.status(), ServingStatus::Serving);

    server.shutdown.cancel();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("status change arrives")
        .expect("stream ok")
        .expect("stream open");
    assert_eq!(next.status(), ServingStatus::NotServing);

    tokio::time::timeout(Duration::from_secs(10), server.handle)
        .await
        .expect("serve returns after the grace")
        .expect("serve task")
        .expect("serve result");
}

/// Reflection names exactly the services this server runs (and health, and itself), not
/// every service of the descriptor set it was given.
#[tokio::test]
async fn reflection_lists_only_the_services_served_here() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start(
        GrpcServer::new()
            .with_descriptor(switchboard_proto::FILE_DESCRIPTOR_SET)
            .with_service_token(None),
    )
    .await;
    let mut client = ServerReflectionClient::new(connect(server.addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a message")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"
        ],
        "a process lists what it serves, nothing else"
    );
    server.shutdown.cancel();
}
