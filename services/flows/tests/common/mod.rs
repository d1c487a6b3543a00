//! The flows service and the real actions service beside it, over gRPC on loopback, each
//! on its own Postgres schema.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use switchboard_eventlog::testing::TestSchema;
use switchboard_proto::actions::v1::actions_client::ActionsClient;
use switchboard_proto::actions::v1::{
    ActionDefinition, ActionKind, Calculation, CalculationSpec, CreateActionRequest, HttpSpec,
};
use switchboard_proto::flows::v1::flows_client::FlowsClient;
use switchboard_proto::flows::v1::*;
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

pub const WS: &str = "ws_flows";

pub struct Harness {
    pub flows: FlowsClient<Channel>,
    pub actions: ActionsClient<Channel>,
    pub flows_schema: TestSchema,
    pub actions_schema: TestSchema,
    pub shutdown: CancellationToken,
    pub addr: std::net::SocketAddr,
}

impl Harness {
    pub async fn start() -> Self {
        let flows_schema = TestSchema::new().await;
        let actions_schema = TestSchema::new().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = Self::server(&flows_schema, &actions_schema, addr).await;
        let token = shutdown.clone();
        tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
        let url = format!("http://{addr}");
        Self {
            flows: FlowsClient::connect(url.clone()).await.unwrap(),
            actions: ActionsClient::connect(url).await.unwrap(),
            flows_schema,
            actions_schema,
            shutdown,
            addr,
        }
    }

    pub async fn server(
        flows_schema: &TestSchema,
        actions_schema: &TestSchema,
        addr: std::net::SocketAddr,
    ) -> GrpcServer {
        let flows_log = switchboard_flows::open_log(&flows_schema.store_config())
            .await
            .unwrap();
        flows_log.migrate().await.unwrap();
        let actions_log = switchboard_actions::open_log(&actions_schema.store_config())
            .await
            .unwrap();
        actions_log.migrate().await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
        let outbound = switchboard_outbound::GuardedClient::new(
            switchboard_outbound::Policy::public_only(),
            &Default::default(),
        )
        .unwrap();
        let catalog = switchboard_clients::ActionsClient::connect_lazy(
            &switchboard_clients::ClientConfig::new(format!("http://{addr}"), None, "flows"),
        )
        .unwrap();
        let flows = switchboard_flows::FlowsService::new(flows_log, Some(Arc::new(catalog)));
        GrpcServer::new()
            .add_service(
                switchboard_flows::GRPC_SERVICE,
                switchboard_flows::FlowsApi::new(flows).into_server(),
            )
            .add_service(
                switchboard_actions::GRPC_SERVICE,
                switchboard_actions::ActionsApi::over(
                    actions_log,
                    keyring,
                    outbound,
                    Default::default(),
                )
                .into_server(),
            )
    }

    pub async fn action(&mut self, name: &str, kind: ActionKind) -> String {
        let mut definition = ActionDefinition {
            name: name.into(),
            description: format!("{name} for the tests"),
            kind: kind as i32,
            ..Default::default()
        };
        match kind {
            ActionKind::Http => {
                definition.http = Some(HttpSpec {
                    method: "GET".into(),
                    url: "https://shop.example.com/orders/{{ input.order }}".into(),
                    ..Default::default()
                })
            }
            _ => {
                definition.calculation = Some(CalculationSpec {
                    outputs: vec![Calculation {
                        name: "total".into(),
                        expression: "1 + 1".into(),
                    }],
                })
            }
        }
        self.actions
            .create_action(CreateActionRequest {
                workspace_id: WS.into(),
                definition: Some(definition),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .action
            .unwrap()
            .id
    }

    pub async fn create(&mut self, name: &str, kind: FlowKind, draft: Graph) -> Flow {
        self.flows
            .create_flow(CreateFlowRequest {
                workspace_id: WS.into(),
                name: name.into(),
                kind: kind as i32,
                draft: Some(draft),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn publish(&mut self, flow: &Flow) -> Result<Flow, tonic::Status> {
        self.flows
            .publish(PublishRequest {
                workspace_id: WS.into(),
                flow_id: flow.id.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.flows_schema.drop().await;
        self.actions_schema.drop().await;
    }
}

pub fn node(id: &str, kind: node::Kind) -> Node {
    Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

pub fn edge(from: &str, to: &str, port: &str) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        port: port.into(),
    }
}

pub fn say(text: &str) -> node::Kind {
    node::Kind::SendMessage(SendMessage {
        text: text.into(),
        ..Default::default()
    })
}

/// start → greet → end.
pub fn greeting(text: &str) -> Graph {
    Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node("greet", say(text)),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![edge("start", "greet", ""), edge("greet", "end", "")],
        ..Default::default()
    }
}

/// start → lookup (api call) → answer | sorry → end.
pub fn lookup(action_id: &str) -> Graph {
    Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node(
                "lookup",
                node::Kind::ApiCall(ApiCall {
                    action_id: action_id.into(),
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            node("answer", say("It is {{ nodes.lookup.status }}")),
            node("sorry", say("I'm having trouble reaching that right now")),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            edge("start", "lookup", ""),
            edge("lookup", "answer", "success"),
            edge("lookup", "sorry", "failure"),
            edge("answer", "end", ""),
            edge("sorry", "end", ""),
        ],
        ..Default::default()
    }
}

pub fn fields(status: &tonic::Status) -> BTreeSet<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

pub fn text_of(graph: &Option<Graph>, id: &str) -> String {
    graph
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .find(|n| n.id == id)
        .and_then(|n| match &n.kind {
            Some(node::Kind::SendMessage(m)) => Some(m.text.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
