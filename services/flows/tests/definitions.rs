//! Flows and assistants over the real gRPC API on Postgres, with the real actions service
//! beside it (over gRPC) checking the actions a graph refers to; deletes, and the runs of
//! a deleted flow, on Postgres and SQLite.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;
use switchboard_eventlog::{EventLog, StoreConfig};
use switchboard_flows::domain::run::{Input, RunEvent, Status};
use switchboard_flows::runtime::RunService;
use switchboard_flows::service::ServiceError;
use switchboard_flows::{FlowsProjection, FlowsService};
use switchboard_proto::actions::v1::ActionKind;
use switchboard_proto::flows::v1::flows_client::FlowsClient;
use switchboard_proto::flows::v1::*;
use tonic::Code;

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

    // Several mistakes at once are named at once: the workspace beside the body's fields
    // and the draft's nodes; a publish's ids beside its note.
    let mut island = greeting("Hello!");
    island.nodes.push(node("island", say("nobody comes here")));
    let several = h
        .flows
        .create_flow(CreateFlowRequest {
            workspace_id: "acme; drop".into(),
            name: "has spaces".into(),
            kind: FlowKind::ConversationFlow as i32,
            request_id: "r".repeat(129),
            draft: Some(island),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let found = fields(&several);
    for field in ["workspace_id", "name", "request_id", "draft.nodes[island]"] {
        assert!(found.contains(field), "{field}: {found:?}");
    }
    let publish = h
        .flows
        .publish(PublishRequest {
            workspace_id: "acme; drop".into(),
            flow_id: flow.id.clone(),
            note: "n".repeat(10_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&publish),
        BTreeSet::from(["workspace_id".to_owned(), "note".to_owned()])
    );
    let assistant = h
        .flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                flow_id: "not-a-flow".into(),
                enabled_action_ids: vec!["nope".into()],
                ..Default::default()
            }),
            request_id: "r".repeat(129),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&assistant),
        BTreeSet::from([
            "assistant.flow_id".to_owned(),
            "assistant.name".to_owned(),
            "assistant.enabled_action_ids[0]".to_owned(),
            "request_id".to_owned(),
        ])
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
    // A model provider must exist; an analysis schema is checked field by field.
    let mut wrong = assistant("Hi");
    wrong.flow_id = workflow.id.clone();
    wrong.enabled_action_ids = vec!["act_gone".into()];
    wrong.model_provider_id = "mp_nowhere".into();
    wrong.analysis = Some(AnalysisSchema {
        topics: vec![String::new()],
        fields: vec![AnalysisField {
            name: "sentiment".into(),
            ..Default::default()
        }],
    });
    let refused = h.flows.save_assistant(save(wrong)).await.unwrap_err();
    assert_eq!(
        fields(&refused),
        BTreeSet::from([
            "assistant.flow_id".to_owned(),
            "assistant.enabled_action_ids[0]".to_owned(),
            "assistant.model_provider_id".to_owned(),
            "assistant.analysis.topics[0]".to_owned(),
            "assistant.analysis.fields[0].name".to_owned(),
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

#[tokio::test]
async fn deleted_flows_and_assistants_are_gone_and_their_names_free() {
    let mut h = Harness::start().await;
    let main = h
        .create("main", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    let main = h.publish(&main).await.unwrap();
    let saved = h
        .flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                name: "Ada".into(),
                flow_id: main.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let delete_flow = |workspace: &str, request_id: &str| DeleteFlowRequest {
        workspace_id: workspace.into(),
        flow_id: main.id.clone(),
        request_id: request_id.into(),
    };
    let delete_assistant = |workspace: &str, request_id: &str| DeleteAssistantRequest {
        workspace_id: workspace.into(),
        assistant_id: saved.id.clone(),
        request_id: request_id.into(),
    };

    // The assistant runs the flow: it stays, and the refusal names the assistant.
    let refused = h
        .flows
        .delete_flow(delete_flow(WS, "flow-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("`Ada`") && refused.message().contains(&saved.id),
        "{}",
        refused.message()
    );

    // Another workspace has neither.
    let elsewhere = h
        .flows
        .delete_flow(delete_flow("ws_other", "flow-1"))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);
    let elsewhere = h
        .flows
        .delete_assistant(delete_assistant("ws_other", "asst-1"))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);

    // The assistant goes; a retry answers as the first delete did.
    let deleted = h
        .flows
        .delete_assistant(delete_assistant(WS, "asst-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (deleted.id.as_str(), deleted.name.as_str(), deleted.version),
        (saved.id.as_str(), "Ada", saved.version + 1)
    );
    let retried = h
        .flows
        .delete_assistant(delete_assistant(WS, "asst-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, deleted);
    let again = h
        .flows
        .delete_assistant(delete_assistant(WS, "asst-2"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let get = h
        .flows
        .get_assistant(AssistantRef {
            workspace_id: WS.into(),
            assistant_id: saved.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let mut update = saved.clone();
    update.instructions = "Be brief.".into();
    let update = h
        .flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(update),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound);
    let listed = h
        .flows
        .list_assistants(ListAssistantsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.assistants.is_empty(), "{listed:?}");

    // Nothing runs the flow now: it goes, and a retry answers the same.
    let gone = h
        .flows
        .delete_flow(delete_flow(WS, "flow-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (gone.id.as_str(), gone.name.as_str(), gone.version),
        (main.id.as_str(), "main", main.version + 1)
    );
    assert_eq!(gone.published_version, 1);
    let retried = h
        .flows
        .delete_flow(delete_flow(WS, "flow-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, gone);
    let again = h
        .flows
        .delete_flow(delete_flow(WS, "flow-2"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Every read and write of the flow answers NOT_FOUND.
    let flow_ref = || FlowRef {
        workspace_id: WS.into(),
        flow_id: main.id.clone(),
    };
    let mut client = h.flows.clone();
    let codes = [
        client.get_flow(flow_ref()).await.map(drop),
        client.list_versions(flow_ref()).await.map(drop),
        client
            .get_version(GetVersionRequest {
                workspace_id: WS.into(),
                flow_id: main.id.clone(),
                number: 1,
            })
            .await
            .map(drop),
        client
            .save_draft(SaveDraftRequest {
                workspace_id: WS.into(),
                flow_id: main.id.clone(),
                draft: Some(greeting("Back?")),
                ..Default::default()
            })
            .await
            .map(drop),
        h.publish(&main).await.map(drop),
        client.discard_draft(flow_ref()).await.map(drop),
        client
            .rollback(RollbackRequest {
                workspace_id: WS.into(),
                flow_id: main.id.clone(),
                to_version: 1,
            })
            .await
            .map(drop),
    ]
    .map(|answer| answer.unwrap_err().code());
    assert_eq!(codes, [Code::NotFound; 7]);
    // An assistant cannot take it up again.
    let refused = h
        .flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                name: "Ada".into(),
                flow_id: main.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&refused),
        BTreeSet::from(["assistant.flow_id".to_owned()])
    );

    // The names are free again.
    let successor = h
        .create("main", FlowKind::ConversationFlow, greeting("Hello again!"))
        .await;
    assert_ne!(successor.id, main.id);
    let ada = h
        .flows
        .save_assistant(SaveAssistantRequest {
            assistant: Some(Assistant {
                workspace_id: WS.into(),
                name: "Ada".into(),
                flow_id: successor.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(ada.id, saved.id);
    let flows = h
        .flows
        .list_flows(ListFlowsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .flows;
    assert_eq!(
        flows.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        [successor.id.as_str()]
    );
    let assistants = h
        .flows
        .list_assistants(ListAssistantsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .assistants;
    assert_eq!(assistants, vec![ada]);
    h.stop().await;
}

/// start → capture the order number → thank → end: a run that waits for the customer.
fn intake() -> Graph {
    Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    ..Default::default()
                }),
            ),
            node("thank", say("Thanks for {{ session.order }}")),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            edge("start", "capture", ""),
            edge("capture", "thank", ""),
            edge("thank", "end", ""),
        ],
        ..Default::default()
    }
}

/// A run started on a flow's version goes on after the flow is deleted: the customer's
/// message still finds it (the read model of open runs) and a fresh runtime still loads
/// its pinned graph; no new run starts on the flow.
async fn a_run_started_before_its_flow_was_deleted_goes_on(log: EventLog) {
    let flows = FlowsService::new(log.clone(), None);
    let flow = flows
        .create_flow(CreateFlowRequest {
            workspace_id: WS.into(),
            name: "intake".into(),
            kind: FlowKind::ConversationFlow as i32,
            draft: Some(intake()),
            ..Default::default()
        })
        .await
        .unwrap();
    flows
        .publish(PublishRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = RunService::new(flows.clone())
        .start(WS, &flow.id, "conv_1", json!({}))
        .await
        .unwrap();
    assert_eq!(started.run.status, Status::WaitingInput);
    let run_id = started.run.run_id.clone();
    flows
        .delete_flow(DeleteFlowRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            request_id: "delete-intake".into(),
        })
        .await
        .unwrap();

    // A runtime that has cached nothing.
    let runs = RunService::new(FlowsService::new(log.clone(), None));
    assert_eq!(
        runs.store().open_runs(WS, "conv_1").await.unwrap(),
        std::slice::from_ref(&run_id)
    );
    let events = runs
        .handle(
            WS,
            &run_id,
            Input::Message {
                text: "4711".into(),
                sentiment: String::new(),
                message_id: String::new(),
                clicked: false,
                sent_at: 0,
            },
        )
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            RunEvent::MessageSent { text, .. } if text == "Thanks for 4711"
        )),
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(RunEvent::Ended { .. })));
    assert!(
        runs.store()
            .open_runs(WS, "conv_1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        runs.store().conversation_runs(WS, "conv_1").await.unwrap(),
        std::slice::from_ref(&run_id)
    );
    // Starting the same run again is still that run; a new one does not start.
    let same = runs.start(WS, &flow.id, "conv_1", json!({})).await.unwrap();
    assert_eq!(same.run.run_id, run_id);
    let refused = runs
        .start(WS, &flow.id, "conv_2", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(refused, ServiceError::NotFound(_)), "{refused}");

    // Rebuilt from the log, the read models say the same.
    log.rebuild(&FlowsProjection, &mut |_| {}).await.unwrap();
    let store = runs.store();
    assert_eq!(store.flow_named(WS, "intake").await.unwrap(), None);
    assert_eq!(
        store.conversation_runs(WS, "conv_1").await.unwrap(),
        [run_id]
    );
}

#[tokio::test]
async fn a_run_started_before_its_flow_was_deleted_goes_on_postgres() {
    let schema = switchboard_eventlog::testing::TestSchema::new().await;
    let log = switchboard_flows::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    a_run_started_before_its_flow_was_deleted_goes_on(log).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_run_started_before_its_flow_was_deleted_goes_on_sqlite() {
    let path = std::env::temp_dir().join(format!(
        "{}.db",
        switchboard_eventlog::testing::unique_name()
    ));
    let log = switchboard_flows::open_log(&StoreConfig::Sqlite { path: path.clone() })
        .await
        .unwrap();
    log.migrate().await.unwrap();
    a_run_started_before_its_flow_was_deleted_goes_on(log).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Each assistant's agent sees only its own tools: its enabled actions, in its order (an
/// action disabled in the actions service left out), with their example requests, then
/// the published action workflows its instructions name; taking an action away from one
/// assistant leaves the others as they were.
#[tokio::test]
async fn each_assistant_lists_only_its_own_tools() {
    use switchboard_proto::actions::v1::{
        ActionDefinition, CreateActionRequest, HttpSpec, SetActionEnabledRequest,
    };

    let mut h = Harness::start().await;
    let conversation = h
        .create("main", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    let mut stock = greeting("Checking");
    stock.input_schema_json =
        json!({"type": "object", "properties": {"sku": {"type": "string"}}}).to_string();
    let workflow = h
        .create("check_stock", FlowKind::ActionWorkflow, stock)
        .await;
    h.publish(&workflow).await.unwrap();
    let lookup = h
        .actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "lookup_order".into(),
                description: "Looks up an order's status".into(),
                example_requests: vec!["Where is my order?".into(), "Has A-17 shipped?".into()],
                kind: ActionKind::Http as i32,
                http: Some(HttpSpec {
                    method: "GET".into(),
                    url: "https://shop.example.com/orders/{{ input.order }}".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap()
        .id;
    let refund = h.action("refund", ActionKind::Calculation).await;
    let retired = h.action("old_lookup", ActionKind::Calculation).await;
    h.actions
        .set_action_enabled(SetActionEnabledRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: retired.clone(),
            enabled: false,
        })
        .await
        .unwrap();
    let save = |id: &str, name: &str, actions: Vec<String>, instructions: &str| {
        let assistant = Assistant {
            id: id.into(),
            workspace_id: WS.into(),
            name: name.into(),
            instructions: instructions.into(),
            flow_id: conversation.id.clone(),
            enabled_action_ids: actions,
            ..Default::default()
        };
        let mut flows = h.flows.clone();
        async move {
            flows
                .save_assistant(SaveAssistantRequest {
                    assistant: Some(assistant),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let ada = save(
        "",
        "Ada",
        vec![refund.clone(), lookup.clone(), retired.clone()],
        "Check stock with @check_stock.",
    )
    .await;
    let bob = save("", "Bob", vec![lookup.clone()], "Orders only.").await;
    let tools = |assistant: String| {
        let mut flows = h.flows.clone();
        async move {
            flows
                .list_agent_tools(AssistantRef {
                    workspace_id: WS.into(),
                    assistant_id: assistant,
                })
                .await
                .unwrap()
                .into_inner()
                .tools
        }
    };
    let ada_tools = tools(ada.id.clone()).await;
    assert_eq!(
        ada_tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["refund", "lookup_order", "check_stock"]
    );
    let order = &ada_tools[1];
    assert_eq!(order.action_id, lookup);
    assert_eq!(
        order.example_requests,
        ["Where is my order?", "Has A-17 shipped?"]
    );
    assert!(
        order.description.contains("\"Has A-17 shipped?\""),
        "{}",
        order.description
    );
    let stock_tool = &ada_tools[2];
    assert_eq!(stock_tool.workflow_id, workflow.id);
    let parameters: serde_json::Value = serde_json::from_str(&stock_tool.parameters).unwrap();
    assert_eq!(parameters["properties"]["sku"]["type"], "string");
    assert_eq!(
        tools(bob.id.clone())
            .await
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["lookup_order"]
    );

    // Ada no longer has the lookup; Bob keeps it.
    save(
        &ada.id,
        "Ada",
        vec![refund.clone()],
        "Check stock with @check_stock.",
    )
    .await;
    assert_eq!(
        tools(ada.id.clone())
            .await
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["refund", "check_stock"]
    );
    assert_eq!(
        tools(bob.id.clone())
            .await
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["lookup_order"]
    );
    let missing = h
        .flows
        .list_agent_tools(AssistantRef {
            workspace_id: WS.into(),
            assistant_id: "asst_gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    h.stop().await;
}

/// Assistants have a draft and publish like flows: a draft is checked and kept beside the
/// assistant in effect, replays its recent conversations on the flow it names, is
/// discarded (back to the last published) or published (in effect, once per request id).
#[tokio::test]
async fn assistants_have_a_draft_replayed_published_or_discarded() {
    let schema = switchboard_eventlog::testing::TestSchema::new().await;
    let log = switchboard_flows::open_log(&schema.store_config())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    let flows = FlowsService::new(log.clone(), None);
    let published = |name: &'static str, text: &'static str| {
        let flows = flows.clone();
        async move {
            let flow = flows
                .create_flow(CreateFlowRequest {
                    workspace_id: WS.into(),
                    name: name.into(),
                    kind: FlowKind::ConversationFlow as i32,
                    draft: Some(greeting(text)),
                    ..Default::default()
                })
                .await
                .unwrap();
            flows
                .publish(PublishRequest {
                    workspace_id: WS.into(),
                    flow_id: flow.id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            flow.id
        }
    };
    let hello = published("hello", "Hello!").await;
    let hi = published("hi", "Hi there!").await;
    let assistant = flows
        .save_assistant(
            Assistant {
                workspace_id: WS.into(),
                name: "Ada".into(),
                flow_id: hello.clone(),
                ..Default::default()
            },
            0,
            "",
        )
        .await
        .unwrap();
    let runs = RunService::new(flows.clone());
    runs.start(WS, &hello, "conv_1", json!({})).await.unwrap();

    // A draft: kept beside the assistant in effect, which conversations still get.
    let draft = Assistant {
        flow_id: hi.clone(),
        instructions: "Be brief.".into(),
        ..assistant.clone()
    };
    let saved = flows
        .save_assistant_draft(draft.clone(), 0, "")
        .await
        .unwrap();
    assert!(saved.has_draft);
    let (current, _) = flows.load_assistant(WS, &assistant.id).await.unwrap();
    assert_eq!(
        (current.flow_id.as_str(), current.has_draft),
        (hello.as_str(), true)
    );
    assert_eq!(
        flows
            .store()
            .conversation_assistant(WS, None)
            .await
            .unwrap(),
        Some((assistant.id.clone(), hello.clone()))
    );

    // Replayed: the recorded conversation says something else on the draft's flow.
    let report = runs
        .replay_assistant_draft(WS, &assistant.id, 0)
        .await
        .unwrap();
    assert_eq!((report.replayed, report.different), (1, 1), "{report:#?}");
    assert!(report.runs[0].published.contains("Hello!"), "{report:#?}");
    assert!(report.runs[0].draft.contains("Hi there!"), "{report:#?}");

    // Discarded: as last published.
    let back = flows
        .discard_assistant_draft(WS, &assistant.id)
        .await
        .unwrap();
    assert_eq!(
        (back.flow_id.as_str(), back.has_draft),
        (hello.as_str(), false)
    );
    assert!(matches!(
        flows.discard_assistant_draft(WS, &assistant.id).await,
        Err(ServiceError::FailedPrecondition(_))
    ));

    // Published: in effect, once for its request id.
    flows.save_assistant_draft(draft, 0, "").await.unwrap();
    let publish = PublishAssistantRequest {
        workspace_id: WS.into(),
        assistant_id: assistant.id.clone(),
        request_id: "publish-1".into(),
    };
    let live = flows.publish_assistant(publish.clone()).await.unwrap();
    assert_eq!(
        (live.flow_id.as_str(), live.has_draft),
        (hi.as_str(), false)
    );
    assert_eq!(live.instructions, "Be brief.");
    assert_eq!(
        flows
            .store()
            .conversation_assistant(WS, None)
            .await
            .unwrap(),
        Some((assistant.id.clone(), hi.clone()))
    );
    let again = flows.publish_assistant(publish).await.unwrap();
    assert_eq!(
        again.version, live.version,
        "a retried publish is the same publish"
    );
    assert!(matches!(
        flows
            .publish_assistant(PublishAssistantRequest {
                workspace_id: WS.into(),
                assistant_id: assistant.id.clone(),
                request_id: "publish-2".into(),
            })
            .await,
        Err(ServiceError::FailedPrecondition(_))
    ));
    // A draft is of an assistant that exists, and is checked like a save.
    let orphan = Assistant {
        id: String::new(),
        ..assistant.clone()
    };
    assert!(matches!(
        flows.save_assistant_draft(orphan, 0, "").await,
        Err(ServiceError::Invalid(_))
    ));
    let broken = Assistant {
        flow_id: "flow_gone".into(),
        ..assistant
    };
    assert!(matches!(
        flows.save_assistant_draft(broken, 0, "").await,
        Err(ServiceError::Invalid(v)) if v.iter().any(|f| f.field == "assistant.flow_id")
    ));
    schema.drop().await;
}
