//! Every RPC of the conversations service and every error it promises, over real gRPC, on
//! both backends.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Backend, Harness};
use prost::Message as _;
use switchboard_proto::conversations::v1::*;
use switchboard_proto::events::v1::{
    Author, Button, Channel, ConversationStatus, Form, FormField, Lead, MessageKind, Sentiment,
};
use tonic::Code;
use tonic_types::StatusExt;

const WS: &str = "ws_acme";

fn start(channel: Channel) -> StartConversationRequest {
    StartConversationRequest {
        workspace_id: WS.into(),
        channel: channel as i32,
        user_id: "user-1".into(),
        lead: Some(Lead {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        }),
        ..Default::default()
    }
}

fn text(conversation_id: &str, body: &str) -> AddMessageRequest {
    AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: conversation_id.into(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: body.into(),
        ..Default::default()
    }
}

async fn started(h: &mut Harness) -> String {
    h.client
        .start_conversation(start(Channel::Widget))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id
}

/// The field names of an INVALID_ARGUMENT status's BadRequest detail.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("field violations attached")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

on_both_backends!(
    conversation_lifecycle,
    messages_forms_and_buttons,
    invalid_input_is_refused_with_field_violations,
    ended_conversations_refuse_messages,
    other_workspaces_see_nothing,
    retried_requests_change_nothing,
    pagination_is_stable_while_rows_are_inserted,
    list_filters,
    racing_writers_are_retried_or_aborted,
    bad_input_is_the_callers_mistake_not_an_outage,
);

/// A message whose field 3 is a string where `StartConversationRequest` has an enum: not a
/// valid request of that method.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAStartRequest {
    #[prost(string, tag = "3")]
    channel: String,
}

/// A NUL character in a string (which Postgres cannot store) and a body that is not the
/// method's message are the caller's mistakes: `INVALID_ARGUMENT` naming the fields,
/// never the `UNAVAILABLE` a retrying caller would send again, nor `INTERNAL`.
async fn bad_input_is_the_callers_mistake_not_an_outage(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let mut request = start(Channel::Api);
    request.user_id = "user\0one".into();
    request.metafields = HashMap::from([("plan".into(), "pro\0".into())]);
    let refused = h.client.start_conversation(request).await.unwrap_err();
    let mut fields = violated_fields(&refused);
    fields.sort();
    assert_eq!(fields, ["metafields[plan]", "user_id"]);
    assert!(refused.message().starts_with("SB-RPC-0400"), "{refused:?}");

    let channel = tonic::transport::Channel::from_shared(h.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let garbage = grpc
        .unary(
            tonic::Request::new(NotAStartRequest {
                channel: "not an enum".into(),
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/switchboard.conversations.v1.Conversations/StartConversation",
            ),
            tonic_prost::ProstCodec::<NotAStartRequest, ConversationResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    // Nothing was stored.
    assert_eq!(h.log.count_events().await.unwrap(), 0);
    h.stop().await;
}

async fn conversation_lifecycle(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let mut request = start(Channel::Whatsapp);
    request.metafields = HashMap::from([("order.id".into(), "A-1".into())]);
    let c = h
        .client
        .start_conversation(request)
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert!(c.id.starts_with("conv_"));
    assert_eq!(c.status, ConversationStatus::Active as i32);
    assert_eq!(c.channel, Channel::Whatsapp as i32);
    assert_eq!(c.lead.as_ref().unwrap().email, "ada@example.com");

    let id = c.id.clone();
    let with = |status: ConversationStatus| SetStatusRequest {
        workspace_id: WS.into(),
        conversation_id: id.clone(),
        status: status as i32,
        ..Default::default()
    };
    let c = h
        .client
        .set_status(with(ConversationStatus::OnHold))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(c.status, ConversationStatus::OnHold as i32);

    let c = h
        .client
        .set_metafields(SetMetafieldsRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            metafields: HashMap::from([
                ("plan".into(), "pro".into()),
                ("order.id".into(), "A-2".into()),
            ]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(
        c.metafields.get("order.id").map(String::as_str),
        Some("A-2")
    );
    let c = h
        .client
        .remove_metafields(RemoveMetafieldsRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            keys: vec!["plan".into(), "never-set".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(c.metafields.len(), 1);

    let c = h
        .client
        .assign(AssignRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            group: "billing".into(),
            agent: "grace@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(c.assignment.as_ref().unwrap().group, "billing");

    let c = h
        .client
        .record_analysis(RecordAnalysisRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            topic: "refund".into(),
            sentiment: Sentiment::Negative as i32,
            custom: HashMap::from([("intent".into(), "cancel".into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let analysis = c.analysis.clone().unwrap();
    assert_eq!(
        (analysis.topic.as_str(), analysis.sentiment),
        ("refund", Sentiment::Negative as i32)
    );

    let c = h
        .client
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            reason: "resolved by agent".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert!(c.ended);
    assert!(c.ended_at.is_some());

    // What the read model serves is what the commands returned.
    let got = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(got, c);
    // And equals the fold of the log.
    let (state, _) = switchboard_conversations::ConversationService::new(h.log.clone())
        .load(WS, &id)
        .await
        .unwrap();
    assert_eq!(state.unwrap().conversation, got);
    h.stop().await;
}

async fn messages_forms_and_buttons(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let id = started(&mut h).await;
    let mut first = text(&id, "Where is my order?");
    first.sentiment = Sentiment::Neutral as i32;
    let m1 = h
        .client
        .add_message(first)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!((m1.sequence, m1.author), (1, Author::Customer as i32));

    let form = h
        .client
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            author: Author::Agent as i32,
            kind: MessageKind::Form as i32,
            text: "Tell me the order number".into(),
            form: Some(Form {
                title: "Order".into(),
                fields: vec![
                    FormField {
                        name: "order_number".into(),
                        label: "Order number".into(),
                        r#type: "text".into(),
                        required: true,
                        options: vec![],
                    },
                    FormField {
                        name: "note".into(),
                        label: "Note".into(),
                        r#type: "text".into(),
                        required: false,
                        options: vec![],
                    },
                ],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let submitted = h
        .client
        .submit_form(SubmitFormRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            form_message_id: form.id.clone(),
            values: HashMap::from([("order_number".into(), "A-42".into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(submitted.kind, MessageKind::FormSubmission as i32);
    assert_eq!(
        submitted.form_submission.unwrap().values["order_number"],
        "A-42"
    );

    let buttons = h
        .client
        .add_message(AddMessageRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            author: Author::Agent as i32,
            kind: MessageKind::Buttons as i32,
            text: "Anything else?".into(),
            buttons: vec![
                Button {
                    button_id: "yes".into(),
                    label: "Yes".into(),
                    value: "yes".into(),
                    url: String::new(),
                },
                Button {
                    button_id: "no".into(),
                    label: "No".into(),
                    value: "no".into(),
                    url: String::new(),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let click = h
        .client
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            buttons_message_id: buttons.id.clone(),
            button_id: "no".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let clicked = click.message.unwrap();
    assert_eq!(clicked.button_click.unwrap().value, "no");
    assert_eq!(click.conversation.unwrap().message_count, 5);

    // Paging through messages, oldest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = h
            .client
            .list_messages(ListMessagesRequest {
                workspace_id: WS.into(),
                conversation_id: id.clone(),
                limit: 2,
                cursor: cursor.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.messages.into_iter().map(|m| (m.sequence, m.kind)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let kinds = [
        MessageKind::Text,
        MessageKind::Form,
        MessageKind::FormSubmission,
        MessageKind::Buttons,
        MessageKind::ButtonClick,
    ];
    assert_eq!(
        seen,
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u64 + 1, *k as i32))
            .collect::<Vec<_>>()
    );

    // Submissions and clicks must refer to what exists.
    let bad = h
        .client
        .submit_form(SubmitFormRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            form_message_id: form.id.clone(),
            values: HashMap::from([("nope".into(), "x".into())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields = violated_fields(&bad);
    assert!(fields.contains(&"values[nope]".to_string()), "{fields:?}");
    assert!(
        fields.contains(&"values[order_number]".to_string()),
        "required field missing: {fields:?}"
    );
    let bad = h
        .client
        .click_button(ClickButtonRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            buttons_message_id: buttons.id.clone(),
            button_id: "maybe".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), vec!["button_id"]);
    let bad = h
        .client
        .submit_form(SubmitFormRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            form_message_id: m1.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), vec!["form_message_id"]);
    h.stop().await;
}

async fn invalid_input_is_refused_with_field_violations(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let id = started(&mut h).await;

    let cases: Vec<(&str, tonic::Status)> = vec![
        (
            "text",
            h.client.add_message(text(&id, "")).await.unwrap_err(),
        ),
        (
            "text",
            h.client
                .add_message(text(&id, &"x".repeat(32 * 1024 + 1)))
                .await
                .unwrap_err(),
        ),
        (
            "channel",
            h.client
                .start_conversation(StartConversationRequest {
                    channel: 42,
                    ..start(Channel::Api)
                })
                .await
                .unwrap_err(),
        ),
        (
            "channel",
            h.client
                .start_conversation(StartConversationRequest {
                    channel: 0,
                    ..start(Channel::Api)
                })
                .await
                .unwrap_err(),
        ),
        (
            "lead.email",
            h.client
                .start_conversation(StartConversationRequest {
                    lead: Some(Lead {
                        name: String::new(),
                        email: "not-an-email".into(),
                    }),
                    ..start(Channel::Api)
                })
                .await
                .unwrap_err(),
        ),
        (
            "workspace_id",
            h.client
                .start_conversation(StartConversationRequest {
                    workspace_id: "acme; drop".into(),
                    ..start(Channel::Api)
                })
                .await
                .unwrap_err(),
        ),
        (
            "conversation_id",
            h.client
                .add_message(text("conv_../../x", "hi"))
                .await
                .unwrap_err(),
        ),
        (
            "status",
            h.client
                .set_status(SetStatusRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    status: 99,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "author",
            h.client
                .add_message(AddMessageRequest {
                    author: 0,
                    ..text(&id, "hi")
                })
                .await
                .unwrap_err(),
        ),
        (
            "metafields[Bad Key]",
            h.client
                .set_metafields(SetMetafieldsRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    metafields: HashMap::from([("Bad Key".into(), "v".into())]),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "metafields[big]",
            h.client
                .set_metafields(SetMetafieldsRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    metafields: HashMap::from([("big".into(), "v".repeat(4097))]),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "metafields",
            h.client
                .set_metafields(SetMetafieldsRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    metafields: (0..101).map(|i| (format!("k{i}"), "v".into())).collect(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "cursor",
            h.client
                .list_conversations(ListConversationsRequest {
                    workspace_id: WS.into(),
                    cursor: "not-a-cursor!".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "cursor",
            h.client
                .list_messages(ListMessagesRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    cursor: "eyJ2IjoxfQ".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "limit",
            h.client
                .list_conversations(ListConversationsRequest {
                    workspace_id: WS.into(),
                    limit: 101,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "limit",
            h.client
                .list_messages(ListMessagesRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "buttons",
            h.client
                .add_message(AddMessageRequest {
                    kind: MessageKind::Buttons as i32,
                    ..text(&id, "pick")
                })
                .await
                .unwrap_err(),
        ),
        (
            "custom",
            h.client
                .record_analysis(RecordAnalysisRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    custom: (0..51).map(|i| (format!("k{i}"), "v".into())).collect(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "custom[long]",
            h.client
                .record_analysis(RecordAnalysisRequest {
                    workspace_id: WS.into(),
                    conversation_id: id.clone(),
                    custom: HashMap::from([("long".into(), "v".repeat(1025))]),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "form",
            h.client
                .add_message(AddMessageRequest {
                    kind: MessageKind::Form as i32,
                    ..text(&id, "fill")
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (field, status) in cases {
        let fields = violated_fields(&status);
        assert!(
            fields.iter().any(|f| f == field),
            "expected a violation of {field}, got {fields:?}"
        );
        assert!(
            status.message().starts_with("SB-CONV-0400"),
            "{}",
            status.message()
        );
    }

    // Several mistakes in one request: every one named in the same answer, the fields
    // every request carries beside the request's own.
    let start_fields = violated_fields(
        &h.client
            .start_conversation(StartConversationRequest {
                workspace_id: "acme; drop".into(),
                request_id: "r".repeat(129),
                channel: 42,
                lead: Some(Lead {
                    name: String::new(),
                    email: "not-an-email".into(),
                }),
                secure_metadata: HashMap::from([("Bad Key".into(), "v".into())]),
                ..start(Channel::Api)
            })
            .await
            .unwrap_err(),
    );
    for field in [
        "workspace_id",
        "request_id",
        "channel",
        "lead.email",
        "secure_metadata",
    ] {
        assert!(
            start_fields.iter().any(|f| f == field),
            "{field}: {start_fields:?}"
        );
    }
    let add_fields = violated_fields(
        &h.client
            .add_message(AddMessageRequest {
                workspace_id: "acme; drop".into(),
                conversation_id: "conv_../../x".into(),
                author: 0,
                sentiment: 99,
                ..text(&id, "")
            })
            .await
            .unwrap_err(),
    );
    for field in [
        "workspace_id",
        "conversation_id",
        "author",
        "sentiment",
        "text",
    ] {
        assert!(
            add_fields.iter().any(|f| f == field),
            "{field}: {add_fields:?}"
        );
    }
    let end_fields = violated_fields(
        &h.client
            .end_conversation(EndConversationRequest {
                workspace_id: WS.into(),
                conversation_id: "nope".into(),
                reason: "x".repeat(10_000),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(end_fields, ["conversation_id", "reason"]);

    // 100 metafields fit; the 101st is refused and nothing stored changed.
    let fill: HashMap<String, String> = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    h.client
        .set_metafields(SetMetafieldsRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            metafields: fill,
            ..Default::default()
        })
        .await
        .unwrap();
    let over = h
        .client
        .set_metafields(SetMetafieldsRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            metafields: HashMap::from([("one-more".into(), "v".into())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&over), vec!["metafields"]);
    let c = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(c.metafields.len(), 100);
    assert_eq!(c.message_count, 0, "no refused message was stored");
    h.stop().await;
}

async fn ended_conversations_refuse_messages(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let id = started(&mut h).await;
    let end = EndConversationRequest {
        workspace_id: WS.into(),
        conversation_id: id.clone(),
        ..Default::default()
    };
    h.client.end_conversation(end.clone()).await.unwrap();
    let refused = h.client.add_message(text(&id, "hello?")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("ended"), "{}", refused.message());
    assert_eq!(
        h.client.end_conversation(end).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // Post-conversation work still records analysis and status.
    h.client
        .record_analysis(RecordAnalysisRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            topic: "billing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.client
        .set_status(SetStatusRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            status: ConversationStatus::Archived as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    h.stop().await;
}

async fn other_workspaces_see_nothing(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let id = started(&mut h).await;
    h.client.add_message(text(&id, "private")).await.unwrap();
    let other = "ws_other";
    let get = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: other.into(),
            conversation_id: id.clone(),
        })
        .await
        .unwrap_err();
    let missing = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: other.into(),
            conversation_id: "conv_doesnotexist".into(),
        })
        .await
        .unwrap_err();
    // Indistinguishable from a conversation that does not exist.
    assert_eq!(
        (get.code(), get.message()),
        (missing.code(), missing.message())
    );
    assert_eq!(get.code(), Code::NotFound);
    let add = h
        .client
        .add_message(AddMessageRequest {
            workspace_id: other.into(),
            ..text(&id, "intrusion")
        })
        .await
        .unwrap_err();
    assert_eq!(add.code(), Code::NotFound);
    let list = h
        .client
        .list_conversations(ListConversationsRequest {
            workspace_id: other.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.conversations.is_empty());
    let messages = h
        .client
        .list_messages(ListMessagesRequest {
            workspace_id: other.into(),
            conversation_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(messages.code(), Code::NotFound);
    let c = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(c.message_count, 1, "the intrusion stored nothing");
    h.stop().await;
}

async fn retried_requests_change_nothing(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let mut request = start(Channel::Email);
    request.request_id = "req-start-1".into();
    let a = h
        .client
        .start_conversation(request.clone())
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let b = h
        .client
        .start_conversation(request)
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(
        a.id, b.id,
        "a retried start returns the original conversation"
    );

    let mut add = text(&a.id, "only once");
    add.request_id = "req-msg-1".into();
    let m1 = h
        .client
        .add_message(add.clone())
        .await
        .unwrap()
        .into_inner();
    let m2 = h.client.add_message(add).await.unwrap().into_inner();
    assert_eq!(m1.message.unwrap().id, m2.message.unwrap().id);

    // The same request id on the same conversation with another body: refused (the
    // Stripe rule), not answered with the first request's result; likewise a start.
    let mut changed = text(&a.id, "something else entirely");
    changed.request_id = "req-msg-1".into();
    let refused = h.client.add_message(changed).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("SB-CONV-0006"),
        "{}",
        refused.message()
    );
    let mut restarted = start(Channel::Api);
    restarted.request_id = "req-start-1".into();
    let refused = h.client.start_conversation(restarted).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let list = h
        .client
        .list_conversations(ListConversationsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations.len(), 1);
    assert_eq!(list.conversations[0].message_count, 1);

    // The same request id for another request, even on another conversation, is refused
    // rather than answered with the first request's result.
    let other = started(&mut h).await;
    let mut reused = text(&other, "not the same request");
    reused.request_id = "req-msg-1".into();
    let refused = h.client.add_message(reused).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("SB-CONV-0006"),
        "{}",
        refused.message()
    );
    let status = SetStatusRequest {
        workspace_id: WS.into(),
        conversation_id: a.id.clone(),
        request_id: "req-msg-1".into(),
        status: ConversationStatus::Resolved as i32,
        ..Default::default()
    };
    assert_eq!(
        h.client.set_status(status).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    h.stop().await;
}

async fn pagination_is_stable_while_rows_are_inserted(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let mut original = HashSet::new();
    for _ in 0..25 {
        original.insert(started(&mut h).await);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = h
            .client
            .list_conversations(ListConversationsRequest {
                workspace_id: WS.into(),
                limit: 10,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.conversations.iter().map(|c| c.id.clone()));
        // Writers keep going between pages: new conversations and updates to old ones.
        for _ in 0..3 {
            started(&mut h).await;
        }
        if let Some(c) = page.conversations.last() {
            h.client.add_message(text(&c.id, "bump")).await.unwrap();
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(pages, 3);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no conversation twice");
    assert_eq!(
        unique, original,
        "every conversation that existed, none skipped"
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    h.stop().await;
}

async fn list_filters(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let widget = started(&mut h).await;
    let slack = h
        .client
        .start_conversation(start(Channel::Slack))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    h.client
        .set_status(SetStatusRequest {
            workspace_id: WS.into(),
            conversation_id: widget.clone(),
            status: ConversationStatus::Resolved as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let list = |status: ConversationStatus,
                channel: Channel,
                since: Option<prost_types::Timestamp>| ListConversationsRequest {
        workspace_id: WS.into(),
        status: status as i32,
        channel: channel as i32,
        updated_since: since,
        ..Default::default()
    };
    let ids = |r: ListConversationsResponse| {
        r.conversations
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let resolved = h
        .client
        .list_conversations(list(
            ConversationStatus::Resolved,
            Channel::Unspecified,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(resolved), vec![widget.clone()]);
    let on_slack = h
        .client
        .list_conversations(list(ConversationStatus::Unspecified, Channel::Slack, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(on_slack), vec![slack.id.clone()]);
    let future = prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    };
    let none = h
        .client
        .list_conversations(list(
            ConversationStatus::Unspecified,
            Channel::Unspecified,
            Some(future),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.conversations.is_empty());
    let since = slack.updated_at;
    let recent = h
        .client
        .list_conversations(list(
            ConversationStatus::Unspecified,
            Channel::Unspecified,
            since,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        recent.conversations.len(),
        2,
        "the widget one was updated after the slack one started"
    );
    let several = h
        .client
        .list_conversations(ListConversationsRequest {
            workspace_id: WS.into(),
            statuses: vec![
                ConversationStatus::Resolved as i32,
                ConversationStatus::Active as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(several.conversations.len(), 2, "resolved or active");
    let on_hold_only = h
        .client
        .list_conversations(ListConversationsRequest {
            workspace_id: WS.into(),
            statuses: vec![ConversationStatus::OnHold as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(on_hold_only.conversations.is_empty());
    let created = |after: Option<prost_types::Timestamp>,
                   before: Option<prost_types::Timestamp>| {
        ListConversationsRequest {
            workspace_id: WS.into(),
            created_after: after,
            created_before: before,
            ..Default::default()
        }
    };
    let before_slack = h
        .client
        .list_conversations(created(None, slack.created_at))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(before_slack),
        vec![widget.clone()],
        "created before the slack one"
    );
    let from_slack = h
        .client
        .list_conversations(created(slack.created_at, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(from_slack), vec![slack.id.clone()]);
    let bad = h
        .client
        .list_conversations(ListConversationsRequest {
            workspace_id: WS.into(),
            statuses: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("statuses[0]"), "{}", bad.message());

    // A change for a version the conversation is no longer at is refused, in the append.
    let current = slack.version;
    let stale = h
        .client
        .set_status(SetStatusRequest {
            workspace_id: WS.into(),
            conversation_id: slack.id.clone(),
            status: ConversationStatus::OnHold as i32,
            expected_version: current + 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted);
    assert!(
        stale.message().starts_with("SB-CONV-0409"),
        "{}",
        stale.message()
    );
    let at_current = h
        .client
        .set_status(SetStatusRequest {
            workspace_id: WS.into(),
            conversation_id: slack.id.clone(),
            status: ConversationStatus::OnHold as i32,
            expected_version: current,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert!(at_current.version > current);
    h.stop().await;
}

async fn racing_writers_are_retried_or_aborted(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let id = started(&mut h).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut client = h.client.clone();
        let request = text(&id, &format!("message {i}"));
        tasks.push(tokio::spawn(
            async move { client.add_message(request).await },
        ));
    }
    let mut sequences = HashSet::new();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                ok += 1;
                assert!(sequences.insert(r.into_inner().message.unwrap().sequence));
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(ok > 0);
    let c = h
        .client
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(
        c.message_count, ok,
        "every acknowledged message is there, no other"
    );
    let _ = c.encode_to_vec();
    h.stop().await;
}
