//! Flows and assistants over the real gRPC API on Postgres, with the real actions service
//! beside it (over gRPC) checking the actions a graph refers to.

mod common;

use std::collections::BTreeSet;

use common::*;
use switchboard_proto::actions::v1::ActionKind;
use switchboard_proto::flows::v1::flows_client::FlowsClient;
use switchboard_proto::flows::v1::*;

#[tokio::test]
async fn drafts_publish_into_immutable_versions_discard_and_roll_back() {
    let mut h = Harness::start().await;
    let flow = h
        .create("welcome", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    assert!(flow.has_draft);
    assert_eq!(flow.published_version, 0);
    let v1 = h.publish(&flow).await.unwrap();
    assert_eq!((v1.published_version, v1.has_draft), (1, false));
    // Nothing new to publish.
    let again = h.publish(&flow).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    let saved = h
        .flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(greeting("Hi there!")),
            expected_version: v1.version,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(saved.has_draft);
    // A stale expected version is refused.
    let stale = h
        .flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(greeting("Lost update")),
            expected_version: v1.version,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted);
    let v2 = h.publish(&flow).await.unwrap();
    assert_eq!(v2.published_version, 2);

    // A draft, discarded: back to version 2.
    h.flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(greeting("Half-finished")),
            ..Default::default()
        })
        .await
        .unwrap();
    let discarded = h
        .flows
        .discard_draft(FlowRef {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!discarded.has_draft);
    assert_eq!(text_of(&discarded.draft, "greet"), "Hi there!");

    // Roll back to 1: published again as version 3; versions 1 and 2 are unchanged.
    let rolled = h
        .flows
        .rollback(RollbackRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            to_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.published_version, 3);
    let versions = h
        .flows
        .list_versions(FlowRef {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let texts: Vec<String> = versions
        .iter()
        .map(|v| text_of(&v.graph, "greet"))
        .collect();
    assert_eq!(texts, ["Hello!", "Hi there!", "Hello!"]);
    assert_eq!(versions[2].rolled_back_from, 1);
    let published = h
        .flows
        .get_version(GetVersionRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            number: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.number, 3);
    let bad = h
        .flows
        .rollback(RollbackRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            to_version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), BTreeSet::from(["to_version".to_owned()]));
    h.stop().await;
}

#[tokio::test]
async fn invalid_graphs_are_refused_naming_the_node_and_change_nothing() {
    let mut h = Harness::start().await;
    let flow = h
        .create("orders", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    let mut broken = lookup("act_whatever");
    broken.edges.retain(|e| e.port != "failure");
    broken.nodes.push(node("island", say("nobody comes here")));
    let refused = h
        .flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(broken),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let found = fields(&refused);
    assert!(found.contains("draft.nodes[lookup]"), "{found:?}");
    assert!(found.contains("draft.nodes[island]"), "{found:?}");
    let unchanged = h
        .flows
        .get_flow(FlowRef {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text_of(&unchanged.draft, "greet"), "Hello!");

    // Names are unique in a workspace; kinds are required.
    let taken = h
        .flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "orders".into(),
            kind: FlowKind::ActionWorkflow as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    let nameless = h
        .flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "has spaces".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&nameless),
        BTreeSet::from(["name".to_owned(), "kind".to_owned()])
    );
    h.stop().await;
}

#[tokio::test]
async fn publishing_checks_the_referenced_actions_in_the_actions_service() {
    let mut h = Harness::start().await;
    let calculation = h.action("vat", ActionKind::Calculation).await;
    let http = h.action("lookup_order", ActionKind::Http).await;
    let missing = h
        .create(
            "missing",
            FlowKind::ConversationFlow,
            lookup("act_nothing_here"),
        )
        .await;
    let refused = h.publish(&missing).await.unwrap_err();
    assert_eq!(
        fields(&refused),
        BTreeSet::from(["draft.nodes[lookup].api_call.action_id".to_owned()])
    );
    assert!(
        refused.message().contains("no action"),
        "{}",
        refused.message()
    );
    let wrong_kind = h
        .create(
            "wrong_kind",
            FlowKind::ConversationFlow,
            lookup(&calculation),
        )
        .await;
    let refused = h.publish(&wrong_kind).await.unwrap_err();
    assert!(
        refused.message().contains("not an http action"),
        "{}",
        refused.message()
    );
    let good = h
        .create("good", FlowKind::ConversationFlow, lookup(&http))
        .await;
    assert_eq!(h.publish(&good).await.unwrap().published_version, 1);
    h.stop().await;
}

#[tokio::test]
async fn assistants_refer_only_to_what_exists_and_state_survives_a_restart() {
    let mut h = Harness::start().await;
    let conversation = h
        .create("main", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    let workflow = h
        .create(
            "lookup_order",
            FlowKind::ActionWorkflow,
            greeting("Looking"),
        )
        .await;
    let action = h.action("lookup", ActionKind::Http).await;
    let assistant = |instructions: &str| Assistant {
        workspace_id: WS.into(),
        name: "Ada".into(),
        instructions: instructions.into(),
        flow_id: conversation.id.clone(),
        enabled_action_ids: vec![action.clone()],
        ..Default::default()
    };
    let save = |a: Assistant| SaveAssistantRequest {
        assistant: Some(a),
        ..Default::default()
    };
    // `@lookup_order` is not published yet; `@nobody` does not exist.
    let refused = h
        .flows
        .save_assistant(save(assistant("Use @lookup_order, never @nobody.")))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("not published yet"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("`@nobody`"),
        "{}",
        refused.message()
    );
    h.publish(&workflow).await.unwrap();
    let saved = h
        .flows
        .save_assistant(save(assistant("Use @lookup_order for orders.")))
        .await
        .unwrap()
        .into_inner();
    assert!(saved.id.starts_with("asst_"));
    // Only a conversation flow can drive an assistant; actions must exist.
    let mut wrong = assistant("Hi");
    wrong.flow_id = workflow.id.clone();
    wrong.enabled_action_ids = vec!["act_gone".into()];
    let refused = h.flows.save_assistant(save(wrong)).await.unwrap_err();
    assert_eq!(
        fields(&refused),
        BTreeSet::from([
            "assistant.flow_id".to_owned(),
            "assistant.enabled_action_ids[0]".to_owned()
        ])
    );

    // A restart: a new server on the same logs folds the same state.
    let before = h
        .flows
        .get_flow(FlowRef {
            workspace_id: WS.into(),
            flow_id: workflow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Harness::server(&h.flows_schema, &h.actions_schema, addr).await;
    let token = h.shutdown.clone();
    tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
    let mut again = FlowsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let after = again
        .get_flow(FlowRef {
            workspace_id: WS.into(),
            flow_id: workflow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
    let listed = again
        .list_assistants(ListAssistantsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.assistants, vec![saved]);
    let _ = h.addr;
    h.stop().await;
}
