//! Forms and buttons: a flow sends a form and buttons; the customer's submission is
//! captured as an object and the click as the button's value; a link button opens its
//! URL, and an action button's click runs its HTTP action before the flow goes on.

use switchboard_eventlog::testing::unique_name;
use switchboard_proto::conversations::v1::{ClickButtonRequest, SubmitFormRequest};
use switchboard_proto::events::v1::MessageKind;

use crate::common::{
    Partner, Process, WS, agent_messages, agent_says, flow_edge, flow_node, new_conversation,
    post_action, published_flow, say_node,
};

/// A flow sends a form and buttons; the customer's form submission is captured as an
/// object and the button click as its value.
#[tokio::test]
async fn dev_runs_capture_form_submissions_and_button_clicks() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    let field = |name: &str, kind: &str| FormFieldSpec {
        name: name.into(),
        label: name.into(),
        r#type: kind.into(),
        required: true,
        ..Default::default()
    };
    let capture = |variable: &str, validation: &str| {
        node::Kind::CaptureInput(CaptureInput {
            variable: variable.into(),
            validation: validation.into(),
            ..Default::default()
        })
    };
    published_flow(
        process.grpc_port,
        "sign_up",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "ask",
                    node::Kind::SendMessage(SendMessage {
                        text: "Who are you?".into(),
                        form: vec![field("name", "text"), field("email", "email")],
                        ..Default::default()
                    }),
                ),
                flow_node("contact", capture("session.contact", "form")),
                flow_node(
                    "offer",
                    node::Kind::SendMessage(SendMessage {
                        text: "News by email?".into(),
                        buttons: vec![
                            ButtonOption {
                                label: "Yes please".into(),
                                value: "yes".into(),
                                ..Default::default()
                            },
                            ButtonOption {
                                label: "No thanks".into(),
                                value: "no".into(),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                ),
                flow_node("news", capture("session.news", "none")),
                say_node(
                    "thanks",
                    "Thanks {{ session.contact.name }} ({{ session.contact.email }}), news: {{ session.news }}",
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "ask", ""),
                flow_edge("ask", "contact", ""),
                flow_edge("contact", "offer", ""),
                flow_edge("offer", "news", ""),
                flow_edge("news", "thanks", ""),
                flow_edge("thanks", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = new_conversation(&mut conversations, "sign-up").await;
    let form = agent_messages(&mut conversations, &conversation, 1).await[0].clone();
    assert_eq!(form.kind(), MessageKind::Form);
    let fields: Vec<String> = form
        .form
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(fields, ["name", "email"]);
    conversations
        .submit_form(SubmitFormRequest {
            workspace_id: WS.into(),
            request_id: "form".into(),
            conversation_id: conversation.clone(),
            form_message_id: form.id,
            values: [
                ("name".to_owned(), "Ada".to_owned()),
                ("email".to_owned(), "ada@example.com".to_owned()),
            ]
            .into(),
        })
        .await
        .unwrap();
    let offer = agent_messages(&mut conversations, &conversation, 2).await[1].clone();
    assert_eq!(offer.kind(), MessageKind::Buttons);
    let yes = offer
        .buttons
        .iter()
        .find(|b| b.label == "Yes please")
        .unwrap();
    conversations
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            request_id: "click".into(),
            conversation_id: conversation.clone(),
            buttons_message_id: offer.id.clone(),
            button_id: yes.button_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &conversation, 3).await[2],
        "Thanks Ada (ada@example.com), news: yes"
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A link button carries its URL, rendered with the conversation's variables; an action
/// button's click runs its HTTP action (with the button's value) once, and the flow goes
/// on with the click captured and the action's outcome in the capture node's outputs.
#[tokio::test]
async fn buttons_open_a_link_or_run_an_http_action() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = crate::common::actions_client(process.grpc_port).await;
    let callback = post_action(
        &mut actions,
        "call_me_back",
        format!("http://{api}/notes"),
        r#"{"asked": "{{ input.value }}", "conversation": "{{ conversation.id }}"}"#,
        None,
        &[],
    )
    .await;
    published_flow(
        process.grpc_port,
        "reach_us",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "offer",
                    node::Kind::SendMessage(SendMessage {
                        text: "Track your parcel, or shall we call you?".into(),
                        buttons: vec![
                            ButtonOption {
                                label: "Track".into(),
                                url: "https://track.example/{{ conversation.id }}".into(),
                                ..Default::default()
                            },
                            ButtonOption {
                                label: "Call me".into(),
                                value: "callback".into(),
                                action_id: callback,
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                ),
                flow_node(
                    "choice",
                    node::Kind::CaptureInput(CaptureInput {
                        variable: "session.choice".into(),
                        ..Default::default()
                    }),
                ),
                say_node(
                    "thanks",
                    "You chose {{ session.choice }}; request sent: {{ nodes.choice.ok }}",
                ),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "offer", ""),
                flow_edge("offer", "choice", ""),
                flow_edge("choice", "thanks", ""),
                flow_edge("thanks", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = new_conversation(&mut conversations, "reach-us").await;
    let offer = agent_messages(&mut conversations, &conversation, 1).await[0].clone();
    assert_eq!(offer.kind(), MessageKind::Buttons);
    let track = &offer.buttons[0];
    assert_eq!(track.url, format!("https://track.example/{conversation}"));
    assert!(track.value.is_empty(), "a link sends nothing back");
    assert!(partner.notes.lock().unwrap().is_empty());
    conversations
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            request_id: "call-me".into(),
            conversation_id: conversation.clone(),
            buttons_message_id: offer.id.clone(),
            button_id: offer.buttons[1].button_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await[1],
        "You chose callback; request sent: True"
    );
    let notes = partner.notes.lock().unwrap().clone();
    assert_eq!(
        notes,
        [serde_json::json!({"asked": "callback", "conversation": conversation})]
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flow's own action node whose action needs the customer's yes asks first: on Yes it
/// runs once, confirmed by the click; on No it never runs and the flow takes `declined`.
#[tokio::test]
async fn a_flow_node_asks_before_an_action_that_needs_confirmation() {
    use switchboard_proto::actions::v1::{
        ActionDefinition, ActionKind, CreateActionRequest, HttpSpec, ListExecutionsRequest,
        Outcome, Trigger,
    };
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    let api = partner.serve().await;
    let mut actions = crate::common::actions_client(process.grpc_port).await;
    let refund = actions
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            definition: Some(ActionDefinition {
                name: "refund".into(),
                description: "Refunds an order".into(),
                kind: ActionKind::Http as i32,
                confirmation_required: true,
                http: Some(HttpSpec {
                    method: "POST".into(),
                    url: format!("http://{api}/notes"),
                    body: r#"{"refund": "{{ input.order }}"}"#.into(),
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
    published_flow(
        process.grpc_port,
        "refunds",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node(
                    "refund",
                    node::Kind::CustomAction(CustomAction {
                        action_id: refund.clone(),
                        inputs: [("order".to_owned(), "4711".to_owned())].into(),
                    }),
                ),
                say_node("done", "Refunded."),
                say_node("kept", "Nothing was refunded."),
                say_node("sorry", "Something went wrong."),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "refund", ""),
                flow_edge("refund", "done", "success"),
                flow_edge("refund", "kept", "declined"),
                flow_edge("refund", "sorry", "failure"),
                flow_edge("done", "end", ""),
                flow_edge("kept", "end", ""),
                flow_edge("sorry", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;

    // Yes: asked, then run once, confirmed by the click.
    let yes = new_conversation(&mut conversations, "refund-yes").await;
    let asked = agent_messages(&mut conversations, &yes, 1).await[0].clone();
    assert_eq!(asked.text, "Shall I go ahead and refund (order: 4711)?");
    assert_eq!(asked.kind(), MessageKind::Buttons);
    assert!(
        partner.notes.lock().unwrap().is_empty(),
        "nothing before the yes"
    );
    conversations
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            request_id: "refund-click".into(),
            conversation_id: yes.clone(),
            buttons_message_id: asked.id.clone(),
            button_id: asked.buttons[0].button_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        agent_says(&mut conversations, &yes, 2).await[1],
        "Refunded."
    );
    assert_eq!(
        *partner.notes.lock().unwrap(),
        [serde_json::json!({"refund": "4711"})]
    );
    let executions = actions
        .list_executions(ListExecutionsRequest {
            workspace_id: WS.into(),
            action_id: refund.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions;
    let ran = executions
        .iter()
        .find(|e| e.outcome == Outcome::Success as i32)
        .expect("the confirmed run");
    assert!(ran.confirmed && !ran.confirmed_by.is_empty(), "{ran:?}");
    assert_eq!(ran.triggered_by, Trigger::Flow as i32);

    // No: never run, the declined route.
    let no = new_conversation(&mut conversations, "refund-no").await;
    agent_messages(&mut conversations, &no, 1).await;
    crate::common::customer_says(&mut conversations, &no, "no").await;
    assert_eq!(
        agent_says(&mut conversations, &no, 2).await[1],
        "Nothing was refunded."
    );
    assert_eq!(
        partner.notes.lock().unwrap().len(),
        1,
        "the declined refund never ran"
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
