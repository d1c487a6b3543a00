//! Flow runs in the log: pinned to a published version, inputs applied in order, action
//! requests published for the actions service, outcomes fed back, state rebuilt after a
//! restart exactly as it was.

mod common;

use common::*;
use prost::Message as _;
use serde_json::json;
use switchboard_eventlog::{EventLog, HandleError, Handler, Metadata, RecordedEvent, StreamRef};
use switchboard_flows::domain::run::{Effect, Input, Run, RunEvent, Status};
use switchboard_flows::runtime::{ACTION_COMPLETED, ACTION_REQUESTED, ActionOutcomes, RunService};
use switchboard_proto::actions::v1::{
    ActionKind, ActionRequested, ExecutionCompleted, ExecutionResult, Outcome, Trigger,
};
use switchboard_proto::flows::v1::*;

async fn open_runs(h: &Harness) -> (RunService, EventLog) {
    let log = switchboard_flows::open_log(&h.flows_schema.store_config())
        .await
        .unwrap();
    (
        RunService::new(switchboard_flows::FlowsService::new(log.clone(), None)),
        log,
    )
}

fn sent(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RunEvent::MessageSent { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// The seeds' pattern, with the order lookup as a real http action.
fn look_up_and_act(action_id: &str) -> Graph {
    let mut graph = lookup(action_id);
    graph.nodes.insert(
        1,
        node(
            "capture",
            node::Kind::CaptureInput(CaptureInput {
                variable: "session.order".into(),
                validation: "number".into(),
                ..Default::default()
            }),
        ),
    );
    graph.edges[0] = edge("start", "capture", "");
    graph.edges.push(edge("capture", "lookup", ""));
    graph
}

fn completed(run_id: &str, key: &str, outcome: Outcome, outputs: &str) -> RecordedEvent {
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream: StreamRef::new("action_execution", format!("{WS}/{key}")),
        stream_version: 2,
        global_position: 1,
        transaction_id: 0,
        event_type: ACTION_COMPLETED.into(),
        schema_version: 1,
        payload: ExecutionCompleted {
            result: Some(ExecutionResult {
                outcome: outcome as i32,
                outputs_json: outputs.into(),
                ..Default::default()
            }),
            run_id: run_id.into(),
            node_id: "lookup".into(),
            idempotency_key: key.into(),
        }
        .encode_to_vec(),
        metadata: Metadata {
            workspace_id: WS.into(),
            ..Default::default()
        },
        recorded_at: 0,
    }
}

#[tokio::test]
async fn a_run_asks_for_its_action_and_goes_on_with_the_outcome_after_a_restart() {
    let mut h = Harness::start().await;
    let action = h.action("order_status", ActionKind::Http).await;
    let flow = h
        .create(
            "orders",
            FlowKind::ConversationFlow,
            look_up_and_act(&action),
        )
        .await;
    h.publish(&flow).await.unwrap();
    let (runs, log) = open_runs(&h).await;
    let started = runs
        .start(
            WS,
            &flow.id,
            "conv_1",
            json!({"conversation": {"id": "conv_1"}, "secure": {"key": "k-123"}}),
        )
        .await
        .unwrap();
    assert_eq!(started.run.status, Status::WaitingInput);
    assert_eq!(started.flow_version, 1);
    let run_id = started.run.run_id.clone();
    // Starting again is the same run.
    let again = runs.start(WS, &flow.id, "conv_1", json!({})).await.unwrap();
    assert_eq!(again, started);

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
    let key = format!("{run_id}/lookup/1");
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::EffectRequested { key: k, effect: Effect::Action { action_id }, .. }
            if *k == key && *action_id == action
    )));
    // The request for the actions service is in the run's stream, routed to NATS.
    let stream = switchboard_flows::runtime::run_stream(WS, &run_id);
    let stored = log.read_stream(&stream, 0, 100).await.unwrap();
    let request = stored
        .iter()
        .find(|e| e.event_type == ACTION_REQUESTED)
        .expect("an action request");
    assert_eq!(
        switchboard_eventlog::Router::subject(&switchboard_flows::PublicEvents, request).as_deref(),
        Some("internal.flows.action_requested")
    );
    let asked: ActionRequested = request.decode().unwrap();
    assert_eq!(asked.idempotency_key, key);
    assert_eq!(asked.conversation_id, "conv_1");
    // The flow's own node: it runs at the agent's level, named as the flow's.
    assert_eq!(asked.triggered_by(), Trigger::Flow);
    let variables: serde_json::Value = serde_json::from_str(&asked.variables_json).unwrap();
    assert_eq!(variables["input"]["order"], "4711");
    assert_eq!(variables["session"]["order"], "4711");
    assert!(
        !stored
            .iter()
            .any(|e| String::from_utf8_lossy(&e.payload).contains("k-123")),
        "secure metadata is in no stored event"
    );

    // A restart: another service on the same log, fed the outcome by the consumer.
    let (restarted, _) = runs_after_restart(&h).await;
    let outcomes = ActionOutcomes::new(restarted.clone());
    let stale = completed(
        &run_id,
        &format!("{run_id}/lookup/0"),
        Outcome::Success,
        "{}",
    );
    assert!(outcomes.wants(&stale).await);
    let done = completed(&run_id, &key, Outcome::Success, r#"{"status":"shipped"}"#);
    let (_, fresh_log) = open_runs(&h).await;
    fresh_log
        .process_once("flows-action-outcomes", &stale, &outcomes)
        .await
        .unwrap()
        .unwrap();
    fresh_log
        .process_once("flows-action-outcomes", &done, &outcomes)
        .await
        .unwrap()
        .unwrap();
    let state = restarted.load(WS, &run_id).await.unwrap();
    assert_eq!(
        state.run.status,
        Status::Ended {
            reason: "completed".into()
        }
    );
    let all = log.read_stream(&stream, 0, 100).await.unwrap();
    let events: Vec<RunEvent> = all
        .iter()
        .filter(|e| e.event_type != ACTION_REQUESTED)
        .filter_map(|e| switchboard_flows::runtime::decode(e.decode().unwrap()))
        .collect();
    assert_eq!(sent(&events), ["It is shipped"]);
    assert_eq!(
        Run::fold(&events),
        state.run,
        "the state is a fold of the stored events"
    );

    // Completions nobody in flows asked for are not ours.
    let mut foreign = completed("", "", Outcome::Success, "{}");
    foreign.event_type = ACTION_COMPLETED.into();
    assert!(!outcomes.wants(&foreign).await);
    let unknown = completed("run_gone", "run_gone/lookup/1", Outcome::Success, "{}");
    let outcome = fresh_log
        .process_once("flows-action-outcomes", &unknown, &outcomes)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(HandleError::Reject(_))),
        "{outcome:?}"
    );
    h.stop().await;
}

async fn runs_after_restart(h: &Harness) -> (RunService, EventLog) {
    open_runs(h).await
}

#[tokio::test]
async fn runs_stay_on_their_version_while_new_ones_take_the_new_one() {
    let mut h = Harness::start().await;
    let mut graph = greeting("Hello from version 1");
    // Wait for the customer so the run stays open.
    graph.nodes.insert(
        2,
        node(
            "wait",
            node::Kind::CaptureInput(CaptureInput {
                variable: "session.answer".into(),
                ..Default::default()
            }),
        ),
    );
    graph.edges = vec![
        edge("start", "greet", ""),
        edge("greet", "wait", ""),
        edge("wait", "end", ""),
    ];
    let flow = h
        .create("hello", FlowKind::ConversationFlow, graph.clone())
        .await;
    h.publish(&flow).await.unwrap();
    let (runs, _) = open_runs(&h).await;
    let old = runs
        .start(WS, &flow.id, "conv_old", json!({}))
        .await
        .unwrap();

    if let Some(node::Kind::SendMessage(m)) = &mut graph.nodes[1].kind {
        m.text = "Hello from version 2".into();
    }
    h.flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(graph),
            ..Default::default()
        })
        .await
        .unwrap();
    h.publish(&flow).await.unwrap();
    let new = runs
        .start(WS, &flow.id, "conv_new", json!({}))
        .await
        .unwrap();
    assert_eq!((old.flow_version, new.flow_version), (1, 2));
    let finished = runs
        .handle(
            WS,
            &old.run.run_id,
            Input::Message {
                text: "ok".into(),
                sentiment: String::new(),
                message_id: String::new(),
                clicked: false,
                sent_at: 0,
            },
        )
        .await
        .unwrap();
    assert!(matches!(finished.last(), Some(RunEvent::Ended { .. })));
    assert_eq!(
        runs.load(WS, &old.run.run_id).await.unwrap().flow_version,
        1,
        "pinned"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_ended_conversation_starts_post_conversation_workflows_whose_delays_fire_once() {
    use switchboard_flows::consumers::{CONVERSATION_ENDED, ConversationEvents};
    use switchboard_proto::events::v1::{Conversation, ConversationEndedEvent};

    let mut h = Harness::start().await;
    let graph = Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node("wait", node::Kind::Delay(Delay { seconds: 86_400 })),
            node(
                "follow_up",
                say("How did it go, {{ conversation.user_id }}?"),
            ),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            edge("start", "wait", ""),
            edge("wait", "follow_up", ""),
            edge("follow_up", "end", ""),
        ],
        ..Default::default()
    };
    let workflow = h
        .create("follow_up", FlowKind::PostConversationWorkflow, graph)
        .await;
    h.publish(&workflow).await.unwrap();
    let (runs, log) = open_runs(&h).await;
    let ended = RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream: StreamRef::new("conversation", format!("{WS}/conv_9")),
        stream_version: 5,
        global_position: 5,
        transaction_id: 0,
        event_type: CONVERSATION_ENDED.into(),
        schema_version: 1,
        payload: ConversationEndedEvent {
            conversation: Some(Conversation {
                id: "conv_9".into(),
                user_id: "ada".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        metadata: Metadata {
            workspace_id: WS.into(),
            ..Default::default()
        },
        recorded_at: 0,
    };
    let trigger = ConversationEvents::new(
        switchboard_flows::FlowsService::new(log.clone(), None),
        runs.clone(),
    );
    assert!(trigger.wants(&ended).await);
    log.process_once("flows-conversations", &ended, &trigger)
        .await
        .unwrap()
        .unwrap();
    let run_id = runs
        .start(WS, &workflow.id, "conv_9", json!({}))
        .await
        .unwrap()
        .run
        .run_id;
    let state = runs.load(WS, &run_id).await.unwrap();
    let Status::WaitingTimer { due_at } = state.run.status else {
        panic!("waiting for its timer: {:?}", state.run.status);
    };

    // A test clock: nothing is due before the day has passed; then it fires once, also
    // from a service started after the timer was armed.
    assert_eq!(runs.fire_due_timers(due_at - 1).await.unwrap(), 0);
    let (restarted, _) = open_runs(&h).await;
    assert_eq!(restarted.fire_due_timers(due_at).await.unwrap(), 1);
    assert_eq!(restarted.fire_due_timers(due_at + 1).await.unwrap(), 0);
    let stream = switchboard_flows::runtime::run_stream(WS, &run_id);
    let events: Vec<RunEvent> = log
        .read_stream(&stream, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| switchboard_flows::runtime::decode(e.decode().unwrap()))
        .collect();
    assert_eq!(sent(&events), ["How did it go, ada?"]);
    assert!(matches!(
        restarted.load(WS, &run_id).await.unwrap().run.status,
        Status::Ended { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn action_workflows_answer_in_their_response_schema_within_a_deadline() {
    let mut h = Harness::start().await;
    let workflow = |value: &str, response_schema: &str| Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node(
                "set",
                node::Kind::SetVariable(SetVariable {
                    variable: "session.greeting".into(),
                    value: value.into(),
                }),
            ),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![edge("start", "set", ""), edge("set", "end", "")],
        input_schema_json:
            r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"}}}"#
                .into(),
        response_schema_json: response_schema.into(),
    };
    for (name, graph) in [
        (
            "greet",
            workflow(
                "Hello {{ input.name }}",
                r#"{"type":"object","required":["greeting"]}"#,
            ),
        ),
        (
            "broken",
            workflow("Hi", r#"{"type":"object","required":["total"]}"#),
        ),
        (
            "greet_lead",
            workflow(
                "Hello {{ input.name }} of {{ lead.company }}",
                r#"{"type":"object","required":["greeting"]}"#,
            ),
        ),
    ] {
        let flow = h.create(name, FlowKind::ActionWorkflow, graph).await;
        h.publish(&flow).await.unwrap();
    }
    let slow = Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node("wait", node::Kind::Delay(Delay { seconds: 3600 })),
            node("end", node::Kind::End(End::default())),
        ],
        edges: vec![edge("start", "wait", ""), edge("wait", "end", "")],
        ..Default::default()
    };
    let flow = h.create("slow", FlowKind::ActionWorkflow, slow).await;
    h.publish(&flow).await.unwrap();

    let invoke = |name: &str, variables: &str, deadline_ms: u32| InvokeActionWorkflowRequest {
        workspace_id: WS.into(),
        name: name.into(),
        variables_json: variables.into(),
        deadline_ms,
        ..Default::default()
    };
    let answer = h
        .flows
        .invoke_action_workflow(invoke("greet", r#"{"name":"Ada"}"#, 5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), InvocationStatus::Completed, "{answer:?}");
    let response: serde_json::Value = serde_json::from_str(&answer.response_json).unwrap();
    assert_eq!(response["greeting"], "Hello Ada");

    // The conversation's variables come beside the inputs; its working state does not.
    let with_context = h
        .flows
        .invoke_action_workflow(InvokeActionWorkflowRequest {
            context_json: r#"{"lead": {"company": "Acme"}, "session": {"greeting": "no"}}"#.into(),
            ..invoke("greet_lead", r#"{"name":"Ada"}"#, 5000)
        })
        .await
        .unwrap()
        .into_inner();
    let response: serde_json::Value = serde_json::from_str(&with_context.response_json).unwrap();
    assert_eq!(
        response["greeting"], "Hello Ada of Acme",
        "{with_context:?}"
    );
    let bad_context = h
        .flows
        .invoke_action_workflow(InvokeActionWorkflowRequest {
            context_json: "[1]".into(),
            ..invoke("greet_lead", r#"{"name":"Ada"}"#, 5000)
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&bad_context),
        std::collections::BTreeSet::from(["context_json".to_owned()])
    );

    let refused = h
        .flows
        .invoke_action_workflow(invoke("greet", "{}", 5000))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&refused),
        std::collections::BTreeSet::from(["variables_json".to_owned()])
    );
    let unknown = h
        .flows
        .invoke_action_workflow(invoke("nobody", "{}", 5000))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&unknown),
        std::collections::BTreeSet::from(["name".to_owned()])
    );

    let mismatch = h
        .flows
        .invoke_action_workflow(invoke("broken", r#"{"name":"Ada"}"#, 5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mismatch.status(), InvocationStatus::Failed);
    assert!(mismatch.reason.contains("response schema"), "{mismatch:?}");

    let late = h
        .flows
        .invoke_action_workflow(invoke("slow", r#"{"name":"Ada"}"#, 200))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.status(), InvocationStatus::TimedOut);
    assert!(late.run_id.starts_with("run_"));
    h.stop().await;
}

#[tokio::test]
async fn a_draft_replayed_on_recorded_conversations_reports_where_it_would_differ() {
    let mut h = Harness::start().await;
    let action = h.action("order_status", ActionKind::Http).await;
    let published = look_up_and_act(&action);
    let flow = h
        .create("orders", FlowKind::ConversationFlow, published.clone())
        .await;
    h.publish(&flow).await.unwrap();

    // Nothing to replay before there is a draft.
    let replay = |flow_id: &str, run_ids: Vec<String>| ReplayDraftRequest {
        workspace_id: WS.into(),
        flow_id: flow_id.into(),
        run_ids,
        ..Default::default()
    };
    let refused = h
        .flows
        .replay_draft(replay(&flow.id, vec![]))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // Two recorded conversations: the lookup answered, the lookup failed.
    let (runs, log) = open_runs(&h).await;
    let mut recorded = Vec::new();
    for (conversation, order, outcome) in [("conv_ok", "4711", true), ("conv_down", "4712", false)]
    {
        let run_id = runs
            .start(
                WS,
                &flow.id,
                conversation,
                json!({"conversation": {"id": conversation}}),
            )
            .await
            .unwrap()
            .run
            .run_id;
        runs.handle(
            WS,
            &run_id,
            Input::Message {
                text: order.into(),
                sentiment: String::new(),
                message_id: String::new(),
                clicked: false,
                sent_at: 0,
            },
        )
        .await
        .unwrap();
        runs.handle(
            WS,
            &run_id,
            Input::EffectDone {
                key: format!("{run_id}/lookup/1"),
                success: outcome,
                outputs: json!({"status": "shipped"}),
                error: if outcome { "" } else { "HTTP 503" }.into(),
                needs_confirmation: false,
            },
        )
        .await
        .unwrap();
        recorded.push(run_id);
    }

    // The draft apologises differently when the lookup fails.
    let mut draft = published.clone();
    for n in &mut draft.nodes {
        if let ("sorry", Some(node::Kind::SendMessage(m))) = (n.id.as_str(), n.kind.as_mut()) {
            m.text = "Our order system is down; a teammate will take over.".into()
        }
    }
    h.flows
        .save_draft(SaveDraftRequest {
            workspace_id: WS.into(),
            flow_id: flow.id.clone(),
            draft: Some(draft),
            ..Default::default()
        })
        .await
        .unwrap();

    let head = log.count_events().await.unwrap();
    let report = h
        .flows
        .replay_draft(replay(&flow.id, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (report.replayed, report.different, report.incomplete),
        (2, 1, 0)
    );
    let by_conversation = |c: &str| {
        report
            .runs
            .iter()
            .find(|r| r.conversation_id == c)
            .unwrap()
            .clone()
    };
    let ok = by_conversation("conv_ok");
    assert!(ok.same, "{ok:?}");
    assert_eq!(ok.version, 1);
    assert_eq!(ok.published_stop, "ended (completed)");
    let down = by_conversation("conv_down");
    assert!(!down.same);
    assert_eq!(down.run_id, recorded[1]);
    assert_eq!(
        down.published_steps,
        [
            format!("runs action `{action}` with {{\"order\":\"4712\"}}"),
            "says \"I'm having trouble reaching that right now\"".to_owned(),
            "ends (completed)".to_owned(),
        ]
    );
    assert_eq!(down.step, 1);
    assert_eq!(down.published, down.published_steps[1]);
    assert_eq!(
        down.draft,
        "says \"Our order system is down; a teammate will take over.\""
    );
    assert_eq!(
        log.count_events().await.unwrap(),
        head,
        "a replay records nothing"
    );

    // Named runs: only this flow's, and well-formed.
    let report = h
        .flows
        .replay_draft(replay(&flow.id, vec![recorded[0].clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.replayed, report.different), (1, 0));
    let other = h
        .create("greeter", FlowKind::ConversationFlow, greeting("Hello"))
        .await;
    h.publish(&other).await.unwrap();
    let foreign = runs
        .start(WS, &other.id, "conv_ok", json!({}))
        .await
        .unwrap()
        .run
        .run_id;
    for run_ids in [
        vec![foreign],
        vec!["run_missing".into()],
        vec!["not a run".into()],
    ] {
        let refused = h
            .flows
            .replay_draft(replay(&flow.id, run_ids))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(fields(&refused), ["run_ids[0]".to_owned()].into());
    }
    h.stop().await;
}

#[tokio::test]
async fn a_run_whose_action_never_answers_takes_its_failure_route_at_the_deadline() {
    use switchboard_flows::domain::run::EFFECT_DEADLINE_SECONDS;

    let mut h = Harness::start().await;
    let action = h.action("order_status", ActionKind::Http).await;
    let flow = h
        .create(
            "orders",
            FlowKind::ConversationFlow,
            look_up_and_act(&action),
        )
        .await;
    h.publish(&flow).await.unwrap();
    let (runs, log) = open_runs(&h).await;
    let run_id = runs
        .start(WS, &flow.id, "conv_lost", json!({}))
        .await
        .unwrap()
        .run
        .run_id;
    runs.handle(
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
    let asked = switchboard_eventlog::now_micros();
    let deadline = asked + EFFECT_DEADLINE_SECONDS * 1_000_000;

    // A test clock: nothing before the deadline; at it the run gives up on the outcome
    // (the request or its answer was lost) and says so, once, also after a restart.
    assert_eq!(runs.fire_due_timers(asked + 1_000_000).await.unwrap(), 0);
    let (restarted, _) = runs_after_restart(&h).await;
    assert_eq!(
        restarted
            .fire_due_timers(deadline + 5_000_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        restarted
            .fire_due_timers(deadline + 6_000_000)
            .await
            .unwrap(),
        0
    );
    let stream = switchboard_flows::runtime::run_stream(WS, &run_id);
    let events: Vec<RunEvent> = log
        .read_stream(&stream, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type != ACTION_REQUESTED)
        .filter_map(|e| switchboard_flows::runtime::decode(e.decode().unwrap()))
        .collect();
    assert_eq!(
        sent(&events),
        ["I'm having trouble reaching that right now"]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::EffectCompleted { success: false, error, .. } if error.starts_with("effect_timeout")
    )));
    h.stop().await;
}

/// Post-conversation workflows are enabled or disabled per assistant: a workflow one
/// assistant disabled does not run when its conversations end, and runs for the others';
/// the transcript's cap is recorded in the run's start.
#[tokio::test]
async fn post_conversation_workflows_follow_the_conversations_assistant() {
    use switchboard_flows::consumers::{CONVERSATION_ENDED, ConversationEvents};
    use switchboard_proto::events::v1::{Conversation, ConversationEndedEvent};

    let mut h = Harness::start().await;
    let conversation_flow = h
        .create("main", FlowKind::ConversationFlow, greeting("Hello!"))
        .await;
    h.publish(&conversation_flow).await.unwrap();
    let survey = h
        .create(
            "survey",
            FlowKind::PostConversationWorkflow,
            greeting("How did we do?"),
        )
        .await;
    h.publish(&survey).await.unwrap();
    let save = |name: &str, disabled: Vec<String>| {
        let mut flows = h.flows.clone();
        let assistant = Assistant {
            workspace_id: WS.into(),
            name: name.into(),
            flow_id: conversation_flow.id.clone(),
            disabled_workflow_ids: disabled,
            ..Default::default()
        };
        async move {
            flows
                .save_assistant(SaveAssistantRequest {
                    assistant: Some(assistant),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let quiet = save("quiet", vec![survey.id.clone()]).await.unwrap();
    let chatty = save("chatty", vec![]).await.unwrap();
    // Only post-conversation workflows can be disabled.
    let refused = save("wrong", vec![conversation_flow.id.clone()])
        .await
        .unwrap_err();
    assert!(
        refused
            .message()
            .contains("not a post-conversation workflow"),
        "{refused:?}"
    );

    let (runs, log) = open_runs(&h).await;
    let trigger = ConversationEvents::new(
        switchboard_flows::FlowsService::new(log.clone(), None),
        runs.clone(),
    );
    for (conversation, assistant) in [("conv_q", &quiet.id), ("conv_c", &chatty.id)] {
        let ended = RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream: StreamRef::new("conversation", format!("{WS}/{conversation}")),
            stream_version: 3,
            global_position: 3,
            transaction_id: 0,
            event_type: CONVERSATION_ENDED.into(),
            schema_version: 1,
            payload: ConversationEndedEvent {
                conversation: Some(Conversation {
                    id: conversation.into(),
                    metafields: [("assistant_id".to_owned(), assistant.clone())].into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            metadata: Metadata {
                workspace_id: WS.into(),
                ..Default::default()
            },
            recorded_at: 0,
        };
        log.process_once("flows-conversations", &ended, &trigger)
            .await
            .unwrap()
            .unwrap();
    }
    // A run's id derives from its flow and conversation.
    let run_of = |conversation: &str| {
        let key = switchboard_eventlog::derive_event_id(
            WS,
            &format!("run:{}:{conversation}", survey.id),
            0,
        );
        format!("run_{}", key.simple())
    };
    assert!(
        runs.load(WS, &run_of("conv_q")).await.is_err(),
        "disabled for the quiet assistant"
    );
    let state = runs.load(WS, &run_of("conv_c")).await.unwrap();
    assert_eq!(state.run.vars["transcript_truncated"], false);
    assert_eq!(state.run.vars["transcript_total"], 0);
    h.stop().await;
}

/// A conversation flow that ends with reason `agent` hands the conversation to the
/// assistant's own agent: its run starts with the flow's variables and waits for the
/// customer; a flow that ends otherwise leaves nothing running.
#[tokio::test]
async fn a_flow_that_ends_for_the_agent_hands_the_conversation_over() {
    let mut h = Harness::start().await;
    let handing = |reason: &str| Graph {
        nodes: vec![
            node("start", node::Kind::Start(Start {})),
            node(
                "remember",
                node::Kind::SetVariable(SetVariable {
                    variable: "session.topic".into(),
                    value: "orders".into(),
                }),
            ),
            node("hello", say("Our assistant will take it from here.")),
            node(
                "end",
                node::Kind::End(End {
                    reason: reason.into(),
                }),
            ),
        ],
        edges: vec![
            edge("start", "remember", ""),
            edge("remember", "hello", ""),
            edge("hello", "end", ""),
        ],
        ..Default::default()
    };
    let to_agent = h
        .create("to_agent", FlowKind::ConversationFlow, handing("agent"))
        .await;
    h.publish(&to_agent).await.unwrap();
    let done = h
        .create("done", FlowKind::ConversationFlow, handing("completed"))
        .await;
    h.publish(&done).await.unwrap();
    let (runs, _log) = open_runs(&h).await;

    let ended = runs
        .start(
            WS,
            &to_agent.id,
            "conv_handed",
            json!({"conversation": {"id": "conv_handed"}}),
        )
        .await
        .unwrap();
    assert!(
        matches!(ended.run.status, Status::Ended { .. }),
        "{:?}",
        ended.run.status
    );
    let open = runs.store().open_runs(WS, "conv_handed").await.unwrap();
    assert_eq!(open.len(), 1, "the agent's run: {open:?}");
    let agent = runs.load(WS, &open[0]).await.unwrap();
    assert_eq!((agent.flow_id.as_str(), agent.flow_version), ("", 0));
    assert_eq!(agent.run.status, Status::WaitingInput);
    assert_eq!(agent.run.vars["session"]["topic"], "orders");
    assert_eq!(agent.run.vars["conversation"]["id"], "conv_handed");

    runs.start(
        WS,
        &done.id,
        "conv_done",
        json!({"conversation": {"id": "conv_done"}}),
    )
    .await
    .unwrap();
    assert!(
        runs.store()
            .open_runs(WS, "conv_done")
            .await
            .unwrap()
            .is_empty()
    );
    h.stop().await;
}
