//! Webhooks: a conversation's public events delivered to a receiver, signed and in the
//! conversation's order, by `serve` (fanned out from JetStream) and by `dev` (with nothing
//! else running).

use switchboard_eventlog::testing::{TestNats, unique_name};

use crate::common::{
    Load, Process, WS, create_endpoint, drop_schema, flow_edge, flow_node, header, lanes,
    new_conversation, start_and_talk, webhook_receiver, webhooks_env,
};

/// Production mode: conversations publish to NATS, the webhooks service fans their public
/// events out from JetStream and delivers them signed to a receiver.
#[tokio::test]
async fn serve_delivers_conversation_events_as_signed_webhooks() {
    use base64::Engine as _;
    use hmac::Mac as _;

    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    let created = create_endpoint(process.grpc_port, addr).await;

    let id = start_and_talk(&mut conversations).await;
    let received = hooks.wait_for(2).await;
    assert_eq!(
        received.len(),
        2,
        "conversation.created and conversation.updated"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(created.secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut types = Vec::new();
    for (headers, body) in &received {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.{body}",
                header("webhook-id"),
                header("webhook-timestamp")
            )
            .as_bytes(),
        );
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(header("webhook-signature"), format!("v1,{expected}"));
        assert_eq!(header("webhook-conversation"), id);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["data"]["conversation"]["id"], id.as_str());
        types.push((
            header("webhook-sequence"),
            body["type"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        types,
        [
            ("1".to_owned(), "conversation.created".to_owned()),
            ("2".to_owned(), "conversation.updated".to_owned())
        ],
        "in order, with the conversation's sequence"
    );
    assert_eq!(process.terminate().code(), Some(0));
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
    nats.drop().await;
}

/// `dev` delivers webhooks with nothing else running: the fan-out tails the producers'
/// logs, and a receiver on the laptop (plain http to 127.0.0.1) is allowed.
#[tokio::test]
async fn dev_delivers_webhooks_and_serves_flows() {
    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let id = start_and_talk(&mut conversations).await;
    let got = hooks.wait_for(2).await;
    let types: Vec<String> = got
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["conversation.created", "conversation.updated"]);
    assert!(
        got.iter()
            .all(|(h, _)| header(h, "webhook-conversation") == id)
    );

    // The flows service is there too: a flow is drafted and published.
    use switchboard_proto::flows::v1::flows_client::FlowsClient;
    use switchboard_proto::flows::v1::{
        CreateFlowRequest, End, FlowKind, Graph, PublishRequest, Start, node,
    };
    let mut flows = FlowsClient::connect(format!("http://127.0.0.1:{}", process.grpc_port))
        .await
        .unwrap();
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "hello".into(),
            kind: FlowKind::ConversationFlow as i32,
            draft: Some(Graph {
                nodes: vec![
                    flow_node("start", node::Kind::Start(Start {})),
                    flow_node("end", node::Kind::End(End::default())),
                ],
                edges: vec![flow_edge("start", "end", "")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let published = flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.published_version, 1);
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With no fault at all, under steady load and while a backlog drains, every webhook is
/// POSTed exactly once, and each conversation's sequence arrives whole and in order.
#[tokio::test]
async fn under_load_without_a_fault_no_webhook_is_posted_twice() {
    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let client = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(new_conversation(&mut client.clone(), &format!("steady-{n}")).await);
    }
    // As fast as one caller goes (a backlog builds), then paced.
    let burst = Load::start(client.clone(), &ids, std::time::Duration::ZERO);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut sent = burst.stop().await;
    let paced = Load::start(client.clone(), &ids, std::time::Duration::from_millis(5));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for (id, n) in paced.stop().await {
        *sent.entry(id).or_default() += n;
    }

    let expected: usize = ids.iter().map(|id| 1 + sent.get(id).unwrap_or(&0)).sum();
    assert_eq!(hooks.wait_for(expected).await.len(), expected);
    // Anything sent twice would have come right behind.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = hooks.got();
    let twice: Vec<String> = got
        .iter()
        .map(|(h, _)| header(h, "webhook-id"))
        .filter(|id| hooks.times(id) > 1)
        .collect();
    assert!(twice.is_empty(), "POSTed more than once: {twice:?}");
    assert_eq!(got.len(), expected);
    let lanes = lanes(&hooks);
    for id in &ids {
        let in_order: Vec<u64> = (1..=lanes[id].len() as u64).collect();
        assert_eq!(lanes[id], in_order, "{id}");
    }

    assert_eq!(process.terminate().code(), Some(0));
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
}
