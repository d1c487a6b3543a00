//! Deliveries to a real receiver on loopback: signatures checked by the specification's
//! algorithm written here, the retry schedule on a clock the test moves, restarts, 410 and
//! 3xx, ordered lanes, coalescing, rotation, SSRF, the attempts log, replay and recovery.

mod common;

use std::time::Duration;

use common::*;
use switchboard_eventlog::micros;
use switchboard_proto::webhooks::v1::webhooks_server::Webhooks as _;
use switchboard_proto::webhooks::v1::{
    AttemptOutcome, CreateEndpointRequest, ErrorClass, MessageStatus, RotateSecretRequest,
};
use switchboard_webhooks::WebhooksApi;
use switchboard_webhooks::store::{AttemptFilter, MessageFilter};
use tonic_types::StatusExt as _;

async fn messages(h: &Harness) -> Vec<switchboard_proto::webhooks::v1::WebhookMessage> {
    let mut all = h
        .service
        .store()
        .messages(WS, &MessageFilter::default(), None, 500)
        .await
        .unwrap();
    all.sort_by_key(|m| m.sequence);
    all
}

async fn attempts(h: &Harness, message_id: &str) -> Vec<switchboard_proto::webhooks::v1::Attempt> {
    let mut all = h
        .service
        .store()
        .attempts(
            WS,
            &AttemptFilter {
                message_id: message_id.into(),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    all.sort_by_key(|a| a.attempt);
    all
}

#[tokio::test]
async fn deliveries_are_signed_per_the_specification_and_logged() {
    let h = Harness::new().await;
    let (endpoint, secret) = h
        .endpoint(|r| r.event_types = vec!["conversation.*".into()])
        .await;
    assert!(secret.starts_with("whsec_"));
    let event = h.conversation_updated("conv_1", 1).await;
    // Even past the processed record (another consumer), a redelivered event records
    // nothing twice: message ids are derived from the event and the endpoint.
    h.publish("fanout-again", &event).await;
    // An event the filter does not want records nothing.
    let mut unwanted = updated_event("conv_1", 2);
    unwanted.event_type = "message.created".into();
    h.publish("fanout", &unwanted).await;
    assert_eq!(h.deliver().await, 1);

    let got = h.receiver.got();
    assert_eq!(got.len(), 1);
    let received = &got[0];
    assert!(verifies(&secret, received), "{received:?}");
    assert!(!verifies(
        &switchboard_webhooks::service::generate_secret(),
        received
    ));
    let body = received.json();
    assert_eq!(body["type"], "conversation.updated");
    assert_eq!(body["data"]["conversation"]["id"], "conv_1");
    assert_eq!(body["data"]["changed_fields"][0], "message_count");
    assert_eq!(
        received.header("webhook-timestamp"),
        (START / 1_000_000).to_string()
    );
    assert_eq!(received.header("content-type"), "application/json");

    let all = messages(&h).await;
    assert_eq!(all.len(), 1);
    let message = &all[0];
    assert_eq!(received.header("webhook-id"), message.id);
    assert_eq!(message.status(), MessageStatus::Delivered);
    assert_eq!(message.endpoint_id, endpoint.id);
    let log = attempts(&h, &message.id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].response_status, 200);
    assert_eq!(log[0].response_body, "answered 200");
    assert_eq!(log[0].outcome(), AttemptOutcome::Delivered);
    assert_eq!(log[0].request_headers["webhook-id"], message.id);
    h.stop().await;
}

#[tokio::test]
async fn retries_follow_the_schedule_on_the_clock_and_survive_a_restart() {
    let mut h = Harness::new().await;
    h.endpoint(|_| {}).await;
    h.receiver.answer(500);
    h.receiver.answer_with(503, &[("retry-after", "600")]);
    h.conversation_updated("conv_1", 1).await;
    assert_eq!(h.deliver().await, 1);
    let id = messages(&h).await[0].id.clone();
    let first = &attempts(&h, &id).await[0];
    assert_eq!(first.outcome(), AttemptOutcome::Retry);
    assert_eq!(first.error_class(), ErrorClass::HttpStatus);
    let wait = micros(first.next_attempt_at.as_ref().unwrap()) - START;
    assert!(
        (4_000_000..=6_000_000).contains(&wait),
        "the first retry comes 5 s ± 20% later, not {wait} µs"
    );
    // Nothing is due before its time.
    assert_eq!(h.deliver().await, 0);
    h.clock.advance(Duration::from_secs(6));
    assert_eq!(h.deliver().await, 1);
    let second = attempts(&h, &id).await[1].clone();
    assert_eq!(second.response_status, 503);
    let wait = micros(second.next_attempt_at.as_ref().unwrap())
        - micros(second.attempted_at.as_ref().unwrap());
    // The schedule says 5 min ± 20%; Retry-After asks for 10 min and is honoured.
    assert_eq!(wait, 600_000_000);

    // A restart: a new service and dispatcher on the same log resume the pending retry.
    let (service, dispatcher) = Harness::open(
        &h.schema,
        &h.clock,
        settings(),
        switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
    )
    .await;
    h.service = service;
    h.dispatcher = dispatcher;
    h.clock.advance(Duration::from_secs(599));
    assert_eq!(h.deliver().await, 0, "not due yet after the restart");
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(h.deliver().await, 1);
    let got = h.receiver.got();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.header("webhook-id") == id),
        "one id on every attempt"
    );
    assert_eq!(messages(&h).await[0].status(), MessageStatus::Delivered);
    h.stop().await;
}

#[tokio::test]
async fn redirects_fail_gone_disables_and_a_hanging_receiver_is_cut() {
    let h = Harness::new().await;
    let (endpoint, _) = h.endpoint(|_| {}).await;
    h.receiver
        .answer_with(302, &[("location", &format!("http://{}/other", h.addr))]);
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    let got = h.receiver.got();
    assert_eq!(got.len(), 1, "the redirect was not followed");
    let id = messages(&h).await[0].id.clone();
    let first = attempts(&h, &id).await[0].clone();
    assert_eq!(
        (first.response_status, first.outcome()),
        (302, AttemptOutcome::Retry)
    );

    // A receiver that hangs is cut at the timeout.
    h.receiver.script.lock().unwrap().delay = Some(Duration::from_secs(5));
    h.clock.advance(Duration::from_secs(6));
    h.deliver().await;
    let second = attempts(&h, &id).await[1].clone();
    assert_eq!(second.error_class(), ErrorClass::Timeout, "{second:?}");
    h.receiver.script.lock().unwrap().delay = None;

    // 410 Gone: the message fails and the endpoint is disabled, with the public event.
    h.receiver.answer(410);
    h.clock.advance(Duration::from_secs(600));
    h.deliver().await;
    let message = messages(&h).await[0].clone();
    assert_eq!(message.status(), MessageStatus::Failed);
    let (endpoint, _) = h.service.endpoint(WS, &endpoint.id).await.unwrap();
    assert!(!endpoint.enabled);
    assert_eq!(endpoint.disabled_reason, "gone");
    // The public event is in the endpoint's stream (read by stream: a gap-safe read of
    // the whole log could still be holding it back behind other tests' transactions).
    let stream = switchboard_webhooks::service::endpoint_stream(WS, &endpoint.id);
    let events = h.service.log().read_stream(&stream, 0, 100).await.unwrap();
    assert!(events.iter().any(|e| e.event_type == "endpoint.disabled"));
    // A disabled endpoint gets no new messages.
    h.conversation_updated("conv_1", 2).await;
    assert_eq!(messages(&h).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn ordered_lanes_hold_one_conversation_and_not_the_others() {
    let h = Harness::new().await;
    h.endpoint(|r| r.ordered = true).await;
    h.receiver
        .script
        .lock()
        .unwrap()
        .by_conversation
        .insert("conv_a".into(), [500].into());
    for n in 1..=3 {
        h.conversation_updated("conv_a", n).await;
        h.conversation_updated("conv_b", n).await;
    }
    h.deliver().await;
    let got = h.receiver.got();
    let lane = |conversation: &str, got: &[Received]| -> Vec<String> {
        got.iter()
            .filter(|r| r.header("webhook-conversation") == conversation)
            .map(|r| r.header("webhook-sequence").to_owned())
            .collect()
    };
    assert_eq!(lane("conv_b", &got), ["1", "2", "3"], "conv_b did not wait");
    assert_eq!(
        lane("conv_a", &got),
        ["1"],
        "conv_a waits for its failed head"
    );

    h.clock.advance(Duration::from_secs(6));
    h.deliver().await;
    let got = h.receiver.got();
    assert_eq!(lane("conv_a", &got), ["1", "1", "2", "3"]);
    let counts: Vec<u64> = got
        .iter()
        .filter(|r| r.header("webhook-conversation") == "conv_a")
        .map(|r| {
            r.json()["data"]["conversation"]["message_count"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(counts, [1, 1, 2, 3], "in the order they happened");
    h.stop().await;
}

#[tokio::test]
async fn coalescing_collapses_queued_updates_while_the_endpoint_fails() {
    let h = Harness::new().await;
    h.endpoint(|r| r.coalesce = true).await;
    h.receiver.script.lock().unwrap().always = Some(500);
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    // Failing now: newer updates of the conversation replace the queued ones.
    h.conversation_updated("conv_1", 2).await;
    h.conversation_updated("conv_1", 3).await;
    h.conversation_updated("conv_2", 1).await;
    let all = messages(&h).await;
    let of = |conversation: &str| -> Vec<_> {
        all.iter()
            .filter(|m| m.conversation_id == conversation)
            .cloned()
            .collect()
    };
    let conv_1 = of("conv_1");
    assert_eq!(
        conv_1.iter().map(|m| m.status()).collect::<Vec<_>>(),
        [
            MessageStatus::Superseded,
            MessageStatus::Superseded,
            MessageStatus::Pending
        ]
    );
    assert_eq!(conv_1[0].superseded_by, conv_1[1].id);
    assert_eq!(conv_1[1].superseded_by, conv_1[2].id);
    assert_eq!(of("conv_2")[0].status(), MessageStatus::Pending);

    h.receiver.script.lock().unwrap().always = None;
    h.clock.advance(Duration::from_secs(6));
    h.deliver().await;
    let counts: Vec<u64> = h
        .receiver
        .got()
        .iter()
        .filter(|r| r.json()["data"]["conversation"]["id"] == "conv_1")
        .map(|r| {
            r.json()["data"]["conversation"]["message_count"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        counts,
        [1, 3],
        "the first failed attempt, then only the latest"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_the_grace_period() {
    let h = Harness::new().await;
    let (endpoint, old) = h.endpoint(|_| {}).await;
    let (_, new) = h
        .service
        .rotate_secret(RotateSecretRequest {
            workspace_id: WS.into(),
            endpoint_id: endpoint.id.clone(),
            grace_period_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_ne!(old, new);
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    let during = h.receiver.got()[0].clone();
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(verifies(&old, &during) && verifies(&new, &during));

    h.clock.advance(Duration::from_secs(3601));
    h.conversation_updated("conv_1", 2).await;
    h.deliver().await;
    let after = h.receiver.got()[1].clone();
    assert!(verifies(&new, &after));
    assert!(!verifies(&old, &after), "the old secret stopped signing");
    h.stop().await;
}

#[tokio::test]
async fn invalid_endpoints_are_refused_with_field_violations_and_store_nothing() {
    let h = Harness::new().await;
    let api = WebhooksApi::new(h.service.clone());
    let refused = api
        .create_endpoint(tonic::Request::new(CreateEndpointRequest {
            workspace_id: WS.into(),
            url: "https://10.1.2.3/hook".into(),
            event_types: vec!["conversation.exploded".into()],
            secret: "whsec_c2hvcnQ=".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["url", "event_types[0]", "secret"]);
    for url in ["ftp://example.com/", "http://example.com/hook", "not a url"] {
        let refused = api
            .create_endpoint(tonic::Request::new(CreateEndpointRequest {
                workspace_id: WS.into(),
                url: url.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
    }
    assert_eq!(h.service.store().count_endpoints(WS).await.unwrap(), 0);
    h.stop().await;
}

/// The fields an INVALID_ARGUMENT answer's BadRequest detail names, in order.
fn violated_fields(refused: tonic::Status) -> Vec<String> {
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    refused
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// A caller fixing one field at a time would call again for each: the ids, the cursor
/// and the body's own checks all come back in the first answer.
#[tokio::test]
async fn every_violation_of_a_request_is_named_in_one_answer() {
    use switchboard_proto::webhooks::v1::{
        ListAttemptsRequest, ListEndpointsRequest, ListMessagesRequest, RecoverFailedRequest,
        UpdateEndpointRequest,
    };
    let h = Harness::new().await;
    let api = WebhooksApi::new(h.service.clone());
    let refused = api
        .create_endpoint(tonic::Request::new(CreateEndpointRequest {
            workspace_id: "not a workspace".into(),
            url: "ftp://example.com/hook".into(),
            event_types: vec!["conversation.exploded".into()],
            description: "d".repeat(501),
            rate_limit_per_second: 10_001,
            secret: "whsec_c2hvcnQ=".into(),
            request_id: "r".repeat(129),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(refused),
        [
            "workspace_id",
            "url",
            "event_types[0]",
            "description",
            "rate_limit_per_second",
            "secret",
            "request_id",
        ]
    );
    let refused = api
        .update_endpoint(tonic::Request::new(UpdateEndpointRequest {
            workspace_id: "not a workspace".into(),
            endpoint_id: "nope".into(),
            event_types: vec!["conversation.exploded".into()],
            description: "d".repeat(501),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(refused),
        [
            "workspace_id",
            "endpoint_id",
            "url",
            "event_types[0]",
            "description"
        ]
    );
    let refused = api
        .rotate_secret(tonic::Request::new(RotateSecretRequest {
            workspace_id: WS.into(),
            endpoint_id: "nope".into(),
            secret: "whsec_c2hvcnQ=".into(),
            grace_period_seconds: 8 * 24 * 3600,
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(refused),
        ["endpoint_id", "secret", "grace_period_seconds"]
    );
    let refused = api
        .list_endpoints(tonic::Request::new(ListEndpointsRequest {
            workspace_id: "not a workspace".into(),
            cursor: "not a cursor".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(refused), ["workspace_id", "cursor"]);
    let refused = api
        .list_messages(tonic::Request::new(ListMessagesRequest {
            workspace_id: "not a workspace".into(),
            endpoint_id: "nope".into(),
            cursor: "not a cursor".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(refused),
        ["workspace_id", "endpoint_id", "cursor"]
    );
    let refused = api
        .list_attempts(tonic::Request::new(ListAttemptsRequest {
            workspace_id: WS.into(),
            endpoint_id: "nope".into(),
            message_id: "nope".into(),
            cursor: "not a cursor".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(refused),
        ["endpoint_id", "message_id", "cursor"]
    );
    // Its stream is not `Debug`, so no `unwrap_err`.
    let refused = api
        .recover_failed(tonic::Request::new(RecoverFailedRequest {
            workspace_id: "not a workspace".into(),
            endpoint_id: "nope".into(),
            since: None,
            dry_run: true,
        }))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        violated_fields(refused),
        ["workspace_id", "endpoint_id", "since"]
    );
    assert_eq!(h.service.store().count_endpoints(WS).await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_is_refused_after_dns() {
    // Plain http to `localhost` is allowed, but the SSRF policy allows no private range.
    let h = Harness::with(settings(), switchboard_outbound::Policy::public_only()).await;
    h.endpoint(|r| r.url = format!("http://localhost:{}/hook", h.addr.port()))
        .await;
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    assert!(h.receiver.got().is_empty());
    let message = messages(&h).await[0].clone();
    assert_eq!(message.status(), MessageStatus::Failed);
    let attempt = attempts(&h, &message.id).await[0].clone();
    assert_eq!(attempt.error_class(), ErrorClass::SsrfBlocked);
    h.stop().await;
}

#[tokio::test]
async fn failed_messages_are_resent_one_by_one_or_recovered_in_bulk() {
    let mut settings = settings();
    settings.schedule.delays = vec![Duration::from_secs(1)];
    let h = Harness::with(
        settings,
        switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
    )
    .await;
    let (endpoint, _) = h.endpoint(|_| {}).await;
    h.receiver.script.lock().unwrap().always = Some(500);
    for n in 1..=3 {
        h.conversation_updated(&format!("conv_{n}"), 1).await;
    }
    h.deliver().await;
    h.clock.advance(Duration::from_secs(2));
    h.deliver().await;
    let failed: Vec<_> = messages(&h)
        .await
        .into_iter()
        .filter(|m| m.status() == MessageStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 3, "two attempts each, then failed");
    h.receiver.script.lock().unwrap().always = None;

    // One message, by hand. Six failures in a row opened the endpoint's circuit: the
    // resend waits for the cool-down, then goes through as the probe.
    h.service.resend(WS, &failed[0].id, "").await.unwrap();
    h.deliver().await;
    let waiting = h.service.message(WS, &failed[0].id).await.unwrap();
    assert_eq!(waiting.status(), MessageStatus::Pending);
    assert!(waiting.last_error.contains("circuit"), "{waiting:?}");
    assert_eq!(h.receiver.got().len(), 6, "the open circuit held it back");
    h.clock.advance(Duration::from_secs(31));
    h.deliver().await;
    assert_eq!(
        h.service.message(WS, &failed[0].id).await.unwrap().status(),
        MessageStatus::Delivered
    );

    // The rest: a dry run reports and sends nothing; the real run sends both.
    let mut pages = Vec::new();
    let planned = h
        .service
        .recover(WS, &endpoint.id, START, true, &mut |total, done, ids| {
            pages.push((total, done, ids))
        })
        .await
        .unwrap();
    assert_eq!(planned, 2);
    assert_eq!(pages.len(), 1);
    assert_eq!(h.deliver().await, 0, "a dry run sends nothing");
    let recovered = h
        .service
        .recover(WS, &endpoint.id, START, false, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(recovered, 2);
    assert_eq!(h.deliver().await, 2);
    assert!(
        messages(&h)
            .await
            .iter()
            .all(|m| m.status() == MessageStatus::Delivered)
    );
    // Every attempt is in the log, newest first, with its outcome.
    let all = h
        .service
        .store()
        .attempts(WS, &AttemptFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 9);
    assert!(
        all.windows(2)
            .all(|w| micros(w[0].attempted_at.as_ref().unwrap())
                >= micros(w[1].attempted_at.as_ref().unwrap()))
    );
    h.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_and_can_be_enabled_again() {
    let mut settings = settings();
    settings.disable_after = Duration::from_secs(3600);
    let h = Harness::with(
        settings,
        switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
    )
    .await;
    let (endpoint, _) = h.endpoint(|_| {}).await;
    h.receiver.script.lock().unwrap().always = Some(500);
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    assert!(
        h.service
            .endpoint(WS, &endpoint.id)
            .await
            .unwrap()
            .0
            .enabled
    );
    // Failing for 30 min: still enabled. Past the hour with no success: disabled.
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(30 * 60));
        h.service
            .resend(WS, &messages(&h).await[0].id, "")
            .await
            .unwrap();
        h.deliver().await;
    }
    let (disabled, _) = h.service.endpoint(WS, &endpoint.id).await.unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason, "failing");
    let api = WebhooksApi::new(h.service.clone());
    let enabled = api
        .enable_endpoint(tonic::Request::new(
            switchboard_proto::webhooks::v1::EndpointRef {
                workspace_id: WS.into(),
                endpoint_id: endpoint.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(enabled.enabled && enabled.disabled_reason.is_empty());
    assert!(
        enabled.secrets.is_empty(),
        "sealed secrets are never returned"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_429_pauses_the_whole_endpoint_until_retry_after() {
    let h = Harness::new().await;
    h.endpoint(|_| {}).await;
    h.receiver.answer_with(429, &[("retry-after", "60")]);
    h.conversation_updated("conv_1", 1).await;
    h.deliver().await;
    // Another conversation's message waits too: the endpoint asked us to slow down.
    h.conversation_updated("conv_2", 1).await;
    h.deliver().await;
    assert_eq!(h.receiver.got().len(), 1);
    let waiting = messages(&h)
        .await
        .into_iter()
        .find(|m| m.conversation_id == "conv_2")
        .unwrap();
    assert_eq!(waiting.status(), MessageStatus::Pending);
    assert!(waiting.last_error.contains("slow down"), "{waiting:?}");
    assert_eq!(
        micros(waiting.next_attempt_at.as_ref().unwrap()),
        START + 60_000_000
    );
    h.clock.advance(Duration::from_secs(61));
    h.deliver().await;
    assert_eq!(h.receiver.got().len(), 3);
    assert!(
        messages(&h)
            .await
            .iter()
            .all(|m| m.status() == MessageStatus::Delivered)
    );
    h.stop().await;
}

#[tokio::test]
async fn messages_and_attempts_are_listed_newest_first_by_cursor() {
    use switchboard_proto::webhooks::v1::{ListAttemptsRequest, ListMessagesRequest};
    let h = Harness::new().await;
    let (endpoint, _) = h.endpoint(|_| {}).await;
    for n in 1..=3 {
        h.conversation_updated(&format!("conv_{n}"), 1).await;
        h.clock.advance(Duration::from_secs(1));
    }
    h.deliver().await;
    let api = WebhooksApi::new(h.service.clone());
    let page = |cursor: String| ListMessagesRequest {
        workspace_id: WS.into(),
        endpoint_id: endpoint.id.clone(),
        page_size: 2,
        cursor,
        ..Default::default()
    };
    let first = api
        .list_messages(tonic::Request::new(page(String::new())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.messages.len(), 2);
    assert_eq!(first.messages[0].conversation_id, "conv_3", "newest first");
    let second = api
        .list_messages(tonic::Request::new(page(first.next_cursor.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.messages.len(), 1);
    assert_eq!(second.messages[0].conversation_id, "conv_1");
    assert!(second.next_cursor.is_empty());

    let attempts_page = |cursor: String| ListAttemptsRequest {
        workspace_id: WS.into(),
        outcome: AttemptOutcome::Delivered as i32,
        page_size: 2,
        cursor,
        ..Default::default()
    };
    let first = api
        .list_attempts(tonic::Request::new(attempts_page(String::new())))
        .await
        .unwrap()
        .into_inner();
    let second = api
        .list_attempts(tonic::Request::new(attempts_page(first.next_cursor)))
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<String> = first
        .attempts
        .iter()
        .chain(&second.attempts)
        .map(|a| a.message_id.clone())
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 3, "every attempt once across the pages");

    let refused = api
        .list_messages(tonic::Request::new(page("not-a-cursor".into())))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Another workspace sees nothing of this one.
    let other = api
        .list_messages(tonic::Request::new(ListMessagesRequest {
            workspace_id: "ws_other".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(other.messages.is_empty());
    let hidden = api
        .get_message(tonic::Request::new(
            switchboard_proto::webhooks::v1::MessageRef {
                workspace_id: "ws_other".into(),
                message_id: first_message_id(&h).await,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    h.stop().await;
}

async fn first_message_id(h: &Harness) -> String {
    messages(h).await[0].id.clone()
}

/// The dispatcher as it runs in production, under steady load and while a backlog
/// drains: every request the receivers get is one recorded attempt, no message is sent
/// twice without a fault, and an ordered endpoint sees each conversation's sequence once
/// and in order.
#[tokio::test]
async fn under_load_every_request_is_one_recorded_attempt_and_none_is_sent_twice() {
    let h = Harness::new().await;
    h.endpoint(|_| {}).await;
    h.endpoint(|r| {
        r.url = format!("http://{}/other", h.addr);
        r.ordered = true;
    })
    .await;
    // A backlog first, then more while it drains.
    for n in 1..=4 {
        for c in 0..30 {
            h.conversation_updated(&format!("conv_{c}"), n).await;
        }
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(h.dispatcher.clone().run(shutdown.clone()));
    for n in 5..=8 {
        for c in 0..30 {
            h.conversation_updated(&format!("conv_{c}"), n).await;
        }
    }
    // Two endpoints, eight events of thirty conversations (the listing shows 500).
    let expected = 2 * 8 * 30;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = messages(&h)
            .await
            .iter()
            .filter(|m| m.status() == MessageStatus::Delivered)
            .count();
        if delivered == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{delivered} of {expected} delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything sent twice off a stale read would have gone out by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    running.await.unwrap();

    let got = h.receiver.got();
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for received in &got {
        *seen.entry(received.header("webhook-id")).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(got.len(), expected);
    for message in messages(&h).await.iter().take(50) {
        assert_eq!(attempts(&h, &message.id).await.len(), 1, "{}", message.id);
    }
    for c in 0..30 {
        let conversation = format!("conv_{c}");
        let sequence: Vec<String> = got
            .iter()
            .filter(|r| r.path == "/other" && r.header("webhook-conversation") == conversation)
            .map(|r| r.header("webhook-sequence").to_owned())
            .collect();
        let in_order: Vec<String> = (1..=8).map(|n| n.to_string()).collect();
        assert_eq!(sequence, in_order, "{conversation}");
    }
    h.stop().await;
}
