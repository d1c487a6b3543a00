//! One trace across every hop: a customer's message, sent with a `traceparent`, goes
//! through conversations, the relay onto NATS, the flow that looks the order up through an
//! http action (the partner API gets the trace), the agent's answer, and its webhook (the
//! receiver gets the trace). An OTLP collector in this process receives the spans.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::conversations::v1::{AddMessageRequest, StartConversationRequest};
use switchboard_proto::events::v1::{Author, Channel, MessageKind};

use crate::common::{
    Process, WS, agent_says, drop_schema, flow_edge, flow_node, free_port, header,
    order_status_action, published_flow, webhook_receiver, webhooks_env,
};

/// The trace the customer's client started.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/gRPC trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn serve() -> (Self, u16) {
        let collector = Self::default();
        let port = free_port();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(([127, 0, 0, 1], port).into())
                .await
                .unwrap()
        });
        (collector, port)
    }

    /// The spans of `trace` (hex), by their span id (hex).
    fn trace(&self, trace: &str) -> HashMap<String, Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .map(|s| (hex(&s.span_id), s.clone()))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback order API that keeps the `traceparent` of each call.
async fn order_api() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/orders/{number}",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(header(&headers, "traceparent"));
                r#"{"status":"shipped"}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test]
async fn one_trace_runs_from_a_message_through_the_flow_its_action_and_the_webhook() {
    use switchboard_proto::flows::v1::*;
    use switchboard_proto::webhooks::v1::CreateEndpointRequest;
    use switchboard_proto::webhooks::v1::webhooks_client::WebhooksClient;

    let (collector, collector_port) = Collector::serve().await;
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    env.push((
        "SWITCHBOARD_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{collector_port}"),
    ));
    // Batches every 100 ms, with room and time to spare on a machine running the whole
    // suite at once: a full queue or a slow export drops spans, and this test counts them.
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    env.push(("OTEL_BSP_MAX_QUEUE_SIZE".into(), "65536".into()));
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "60000".into()));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,actions,flows,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut conversations = process.start().await;
    let (api, api_traces) = order_api().await;
    let (receiver, hooks) = webhook_receiver().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", process.grpc_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    WebhooksClient::new(channel)
        .create_endpoint(CreateEndpointRequest {
            workspace_id: WS.into(),
            url: format!("http://{receiver}/hook"),
            event_types: vec!["message.created".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let action = order_status_action(process.grpc_port, api).await;
    let say = |text: &str| {
        node::Kind::SendMessage(SendMessage {
            text: text.into(),
            ..Default::default()
        })
    };
    published_flow(
        process.grpc_port,
        "orders",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "capture",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.order".into(),
                        validation: "number".into(),
                        ..Default::default()
                    }),
                ),
                flow_node(
                    "lookup",
                    node::Kind::ApiCall(ApiCall {
                        action_id: action.id.clone(),
                        inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                    }),
                ),
                flow_node("status", say("Your order is {{ nodes.lookup.status }}.")),
                flow_node("done", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "capture", ""),
                flow_edge("capture", "lookup", ""),
                flow_edge("lookup", "status", "success"),
                flow_edge("lookup", "done", "failure"),
                flow_edge("status", "done", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            channel: Channel::Api as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;

    // The customer's client sends its trace with the message.
    let mut message = tonic::Request::new(AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: conversation.clone(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: "4711".into(),
        ..Default::default()
    });
    message.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    conversations.add_message(message).await.unwrap();
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Your order is shipped."]
    );

    // The partner API and the webhook receiver were called inside the customer's trace.
    let in_trace = |traceparent: &str| traceparent.split('-').nth(1) == Some(TRACE);
    let called = api_traces.lock().unwrap().clone();
    assert!(called.iter().any(|t| in_trace(t)), "{called:?}");
    let mut answer = None;
    for _ in 0..600 {
        answer = hooks
            .got()
            .into_iter()
            .find(|(_, body)| body.contains("Your order is shipped."));
        if answer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, _) = answer.expect("the answer's webhook arrived");
    assert!(
        in_trace(&header(&headers, "traceparent")),
        "{:?}",
        header(&headers, "traceparent")
    );

    // Every hop is a span of that trace, each under one of the others or the caller's.
    // Spans go out in batches (every 100 ms here), so wait for the last hops to arrive.
    let hops = [
        "switchboard.conversations.v1.Conversations/AddMessage",
        "eventlog.publish",
        "eventlog.consume",
        "action.execute",
        "webhook.deliver",
    ];
    for _ in 0..600 {
        let spans = collector.trace(TRACE);
        if hops
            .iter()
            .all(|hop| spans.values().any(|s| s.name == *hop))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(process.terminate().code(), Some(0));
    let spans = collector.trace(TRACE);
    let names: HashSet<&str> = spans.values().map(|s| s.name.as_str()).collect();
    for hop in hops {
        assert!(names.contains(hop), "no {hop} span in the trace: {names:?}");
    }
    for span in spans.values() {
        let parent = hex(&span.parent_span_id);
        assert!(
            parent == CALLER_SPAN || spans.contains_key(&parent),
            "{} hangs under {parent}, outside the trace",
            span.name
        );
    }
    let consumers: HashSet<String> = spans
        .values()
        .filter(|s| s.name == "eventlog.consume")
        .flat_map(|s| s.attributes.iter())
        .filter(|a| a.key == "messaging.consumer.group.name")
        .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v) => {
                Some(v.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        consumers.iter().any(|c| c.starts_with("webhooks")),
        "the webhook fan-out continued the trace: {consumers:?}"
    );
    assert!(
        consumers.iter().any(|c| c.starts_with("flows")),
        "the flow continued the trace: {consumers:?}"
    );

    for service in ["conversations", "actions", "flows", "webhooks"] {
        drop_schema(&format!("{schema_prefix}{service}")).await;
    }
    nats.drop().await;
}
