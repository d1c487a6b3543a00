//! Running http actions against a real HTTP server on loopback (allowed explicitly by the
//! test's outbound policy).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{Harness, SECRET, WS};
use switchboard_proto::actions::v1::*;

/// What the stub received.
#[derive(Default)]
struct Seen {
    calls: HashMap<String, u32>,
    headers: Vec<HeaderMap>,
    queries: Vec<HashMap<String, String>>,
}

type Shared = Arc<Mutex<Seen>>;

fn record(seen: &Shared, route: &str, headers: &HeaderMap, query: HashMap<String, String>) {
    let mut seen = seen.lock().unwrap();
    *seen.calls.entry(route.into()).or_default() += 1;
    seen.headers.push(headers.clone());
    seen.queries.push(query);
}

async fn stub() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/orders/{number}",
            get(|State(s): State<Shared>, Path(number): Path<String>, Query(q): Query<HashMap<String, String>>, h: HeaderMap| async move {
                record(&s, "orders", &h, q);
                Json(serde_json::json!({"data": {"status": "shipped", "number": number, "eta_days": "2"}}))
            }),
        )
        .route(
            "/echo",
            post(|State(s): State<Shared>, h: HeaderMap, Json(body): Json<serde_json::Value>| async move {
                record(&s, "echo", &h, HashMap::new());
                Json(serde_json::json!({"received": body}))
            }),
        )
        .route(
            "/slow",
            get(|State(s): State<Shared>, h: HeaderMap| async move {
                record(&s, "slow", &h, HashMap::new());
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/broken",
            get(|State(s): State<Shared>, h: HeaderMap| async move {
                record(&s, "broken", &h, HashMap::new());
                (StatusCode::INTERNAL_SERVER_ERROR, format!("boom, your key was {SECRET}"))
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn calls(seen: &Shared, route: &str) -> u32 {
    seen.lock().unwrap().calls.get(route).copied().unwrap_or(0)
}

fn http_action(name: &str, method: &str, url: String) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: "Test action".into(),
        input_schema: r#"{"type":"object","properties":{"number":{"type":"string"}}}"#.into(),
        kind: ActionKind::Http as i32,
        http: Some(HttpSpec {
            method: method.into(),
            url,
            auth: Some(HttpAuth {
                kind: AuthKind::Bearer as i32,
                secret: SECRET.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn define(h: &mut Harness, definition: ActionDefinition) -> ActionDefinition {
    h.client
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            definition: Some(definition),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap()
}

fn run(action: &ActionDefinition, key: &str, variables: serde_json::Value) -> ExecuteActionRequest {
    ExecuteActionRequest {
        workspace_id: WS.into(),
        action_id: action.id.clone(),
        variables_json: variables.to_string(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn execute(h: &mut Harness, request: ExecuteActionRequest) -> ExecutionResult {
    h.client.execute_action(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_call_renders_authenticates_maps_and_runs_once_per_key() {
    for postgres in [true, false] {
        let (addr, seen) = stub().await;
        let mut h = Harness::start(postgres).await;
        let mut definition = http_action(
            "lookup_order",
            "GET",
            format!(
                "http://127.0.0.1:{}/orders/{{{{ input.number }}}}?c={{{{ conversation.id }}}}",
                addr.port()
            ),
        );
        let spec = definition.http.as_mut().unwrap();
        spec.headers
            .insert("X-Customer".into(), "{{ secure.customer_token }}".into());
        spec.response_mapping = vec![
            ResponseMapping {
                name: "status".into(),
                path: "data.status".into(),
                kind: "string".into(),
                required: true,
                ..Default::default()
            },
            ResponseMapping {
                name: "eta_days".into(),
                path: "$.data.eta_days".into(),
                kind: "integer".into(),
                required: true,
                ..Default::default()
            },
        ];
        let action = define(&mut h, definition).await;
        let variables = serde_json::json!({
            "input": {"number": "A/42"},
            "conversation": {"id": "conv_9"},
            "secure": {"customer_token": "tok-secure-777"},
        });
        let result = execute(&mut h, run(&action, "run-1", variables.clone())).await;
        assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&result.outputs_json).unwrap(),
            serde_json::json!({"status": "shipped", "eta_days": 2})
        );
        assert_eq!((result.status_code, result.attempts), (200, 1));
        {
            let seen = seen.lock().unwrap();
            let headers = &seen.headers[0];
            assert_eq!(headers["authorization"], format!("Bearer {SECRET}"));
            assert_eq!(headers["idempotency-key"], "run-1");
            assert_eq!(headers["x-customer"], "tok-secure-777");
            assert_eq!(seen.queries[0]["c"], "conv_9");
        }
        // What is kept shows no credential and no secure value.
        let request = result.request.clone().unwrap();
        assert_eq!(request.headers["Authorization"], "[redacted]");
        assert_eq!(request.headers["X-Customer"], "[redacted]");
        assert!(
            request.url.contains("/orders/A%2F42?c=conv_9"),
            "{}",
            request.url
        );

        // The same key: the recorded outcome, no second call.
        let again = execute(&mut h, run(&action, "run-1", variables)).await;
        assert_eq!(again.execution_id, result.execution_id);
        assert_eq!(calls(&seen, "orders"), 1);

        let events = common::events_until(&h.log, |e| {
            e.iter()
                .any(|e| e.event_type == "action_execution.completed")
        })
        .await;
        for event in &events {
            for secret in [SECRET.as_bytes(), b"tok-secure-777".as_slice()] {
                assert!(
                    !event.payload.windows(secret.len()).any(|w| w == secret),
                    "a secret in {}",
                    event.event_type
                );
            }
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn failures_have_reasons() {
    let (addr, seen) = stub().await;
    let mut h = Harness::start(false).await;
    let base = format!("http://127.0.0.1:{}", addr.port());

    let mut slow = http_action("slow_one", "GET", format!("{base}/slow"));
    slow.http.as_mut().unwrap().timeout_ms = 200;
    let slow = define(&mut h, slow).await;
    let result = execute(&mut h, run(&slow, "slow-1", serde_json::json!({}))).await;
    assert_eq!(result.reason, FailureReason::Timeout as i32, "{result:?}");

    let mut broken = http_action("broken_one", "GET", format!("{base}/broken"));
    broken.http.as_mut().unwrap().retry = Some(RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 10,
        max_backoff_ms: 20,
    });
    let broken = define(&mut h, broken).await;
    let result = execute(&mut h, run(&broken, "broken-1", serde_json::json!({}))).await;
    assert_eq!(
        (result.reason, result.status_code, result.attempts),
        (FailureReason::HttpStatus as i32, 500, 3)
    );
    assert_eq!(calls(&seen, "broken"), 3, "retried exactly as configured");
    assert!(
        !result.response_body.contains(SECRET),
        "the echoed key is redacted: {}",
        result.response_body
    );

    let mut confirm = http_action("refund", "GET", format!("{base}/orders/1"));
    confirm.confirmation_required = true;
    let confirm = define(&mut h, confirm).await;
    let result = execute(&mut h, run(&confirm, "refund-1", serde_json::json!({}))).await;
    assert_eq!(result.reason, FailureReason::ConfirmationRequired as i32);
    let mut confirmed = run(&confirm, "refund-2", serde_json::json!({}));
    confirmed.confirmed = true;
    assert_eq!(
        execute(&mut h, confirmed).await.outcome,
        Outcome::Success as i32
    );

    let mut admin = http_action("admin_only", "GET", format!("{base}/orders/1"));
    admin.permission_level = PermissionLevel::Admin as i32;
    let admin = define(&mut h, admin).await;
    let mut by_agent = run(&admin, "admin-1", serde_json::json!({}));
    by_agent.triggered_by = Trigger::Agent as i32;
    let result = execute(&mut h, by_agent).await;
    assert_eq!(result.reason, FailureReason::Forbidden as i32);
    assert_eq!(
        result.error,
        "`admin_only` may be run only by a workspace administrator or above; this call came \
         from the AI agent"
    );
    // Who triggers caps the level a call claims: a flow's node runs at the agent's.
    let mut by_flow = run(&admin, "admin-2", serde_json::json!({}));
    by_flow.triggered_by = Trigger::Flow as i32;
    by_flow.caller_permission = PermissionLevel::Admin as i32;
    let result = execute(&mut h, by_flow).await;
    assert_eq!(result.reason, FailureReason::Forbidden as i32);
    assert!(
        result.error.ends_with(
            "this call came from a flow's action node, which runs at the AI agent's level"
        ),
        "{}",
        result.error
    );
    assert_eq!(result.caller_permission, PermissionLevel::Agent as i32);
    assert_eq!(result.triggered_by, Trigger::Flow as i32);
    let mut by_human = run(&admin, "admin-3", serde_json::json!({}));
    by_human.triggered_by = Trigger::Operator as i32;
    by_human.caller_permission = PermissionLevel::Human as i32;
    let result = execute(&mut h, by_human).await;
    assert!(
        result
            .error
            .ends_with("this call came from a human operator at the level of a human teammate"),
        "{}",
        result.error
    );
    let mut by_admin = run(&admin, "admin-4", serde_json::json!({}));
    by_admin.triggered_by = Trigger::Operator as i32;
    by_admin.caller_permission = PermissionLevel::Admin as i32;
    let result = execute(&mut h, by_admin).await;
    assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
    assert_eq!(
        (result.caller_permission, result.triggered_by),
        (PermissionLevel::Admin as i32, Trigger::Operator as i32)
    );

    let lookup = define(
        &mut h,
        http_action(
            "typed_input",
            "GET",
            format!("{base}/orders/{{{{ input.number }}}}"),
        ),
    )
    .await;
    let result = execute(
        &mut h,
        run(
            &lookup,
            "bad-input",
            serde_json::json!({"input": {"number": 42}}),
        ),
    )
    .await;
    assert_eq!(
        result.reason,
        FailureReason::InvalidInput as i32,
        "{result:?}"
    );
    let result = execute(&mut h, run(&lookup, "missing-var", serde_json::json!({}))).await;
    assert_eq!(result.reason, FailureReason::InvalidInput as i32);
    assert!(result.error.contains("input.number"), "{}", result.error);

    let metadata = define(
        &mut h,
        http_action(
            "metadata",
            "GET",
            "http://169.254.169.254/latest/meta-data".into(),
        ),
    )
    .await;
    let result = execute(&mut h, run(&metadata, "meta-1", serde_json::json!({}))).await;
    assert_eq!(result.reason, FailureReason::DestinationBlocked as i32);
    assert_eq!(
        calls(&seen, "orders"),
        2,
        "refused runs made no call (the confirmed one and the administrator's did)"
    );
    h.stop().await;
}

#[tokio::test]
async fn bodies_keep_their_types_and_test_runs_work_on_disabled_actions() {
    let (addr, _seen) = stub().await;
    let mut h = Harness::start(false).await;
    let mut echo = http_action(
        "create_ticket",
        "POST",
        format!("http://127.0.0.1:{}/echo", addr.port()),
    );
    echo.http.as_mut().unwrap().body = r#"{"count": "{{ input.count }}", "note": "for {{ input.name }}", "tags": "{{ input.tags }}"}"#.into();
    echo.input_schema = r#"{"type":"object"}"#.into();
    echo.http.as_mut().unwrap().response_mapping = vec![ResponseMapping {
        name: "count".into(),
        path: "received.count".into(),
        kind: "integer".into(),
        required: true,
        ..Default::default()
    }];
    let action = define(&mut h, echo).await;
    h.client
        .set_action_enabled(SetActionEnabledRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: action.id.clone(),
            enabled: false,
        })
        .await
        .unwrap();
    let variables =
        serde_json::json!({"input": {"count": 3, "name": "Ada \"Lovelace\"", "tags": ["a"]}});
    let live = execute(&mut h, run(&action, "live-1", variables.clone())).await;
    assert_eq!(live.reason, FailureReason::Disabled as i32);
    let test = h
        .client
        .test_action(TestActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            variables_json: variables.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(test.test);
    assert_eq!(test.outcome, Outcome::Success as i32, "{test:?}");
    let echoed: serde_json::Value = serde_json::from_str(&test.response_body).unwrap();
    assert_eq!(
        echoed["received"],
        serde_json::json!({"count": 3, "note": "for Ada \"Lovelace\"", "tags": ["a"]})
    );
    let bad = h
        .client
        .execute_action(run(&action, "", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn rate_limits_and_the_get_cache_save_calls() {
    let (addr, seen) = stub().await;
    let mut h = Harness::start(false).await;
    let base = format!("http://127.0.0.1:{}", addr.port());

    let mut limited = http_action(
        "limited",
        "GET",
        format!("{base}/orders/{{{{ input.number }}}}"),
    );
    limited.http.as_mut().unwrap().rate_limit_per_minute = 2;
    let limited = define(&mut h, limited).await;
    let mut reasons = Vec::new();
    for i in 0..3 {
        let result = execute(
            &mut h,
            run(
                &limited,
                &format!("limit-{i}"),
                serde_json::json!({"input": {"number": format!("n{i}")}}),
            ),
        )
        .await;
        reasons.push(result.reason);
    }
    assert_eq!(reasons, vec![0, 0, FailureReason::RateLimited as i32]);
    assert_eq!(calls(&seen, "orders"), 2);

    let mut cached = http_action(
        "cached",
        "GET",
        format!("{base}/orders/{{{{ input.number }}}}"),
    );
    cached.http.as_mut().unwrap().cache_ttl_seconds = 60;
    let cached = define(&mut h, cached).await;
    let same = serde_json::json!({"input": {"number": "c1"}});
    let first = execute(&mut h, run(&cached, "cache-1", same.clone())).await;
    let second = execute(&mut h, run(&cached, "cache-2", same)).await;
    let other = execute(
        &mut h,
        run(
            &cached,
            "cache-3",
            serde_json::json!({"input": {"number": "c2"}}),
        ),
    )
    .await;
    assert!(!first.cached && second.cached && !other.cached);
    assert_eq!(second.response_body, first.response_body);
    assert_eq!(
        calls(&seen, "orders"),
        4,
        "one call for the two identical GETs, one for the other"
    );

    // Whom a request is for is part of it: another customer's token is never answered
    // from the first one's cached response.
    let mut personal = http_action(
        "personal",
        "GET",
        format!("{base}/orders/{{{{ input.number }}}}"),
    );
    let spec = personal.http.as_mut().unwrap();
    spec.cache_ttl_seconds = 60;
    spec.headers
        .insert("X-Customer".into(), "{{ secure.customer_token }}".into());
    let personal = define(&mut h, personal).await;
    let as_customer = |token: &str| serde_json::json!({"input": {"number": "p1"}, "secure": {"customer_token": token}});
    let ada = execute(&mut h, run(&personal, "personal-1", as_customer("tok-ada"))).await;
    let bob = execute(&mut h, run(&personal, "personal-2", as_customer("tok-bob"))).await;
    let ada_again = execute(&mut h, run(&personal, "personal-3", as_customer("tok-ada"))).await;
    assert!(!ada.cached && !bob.cached && ada_again.cached);
    assert_eq!(calls(&seen, "orders"), 6);
    h.stop().await;
}

#[tokio::test]
async fn the_execution_log_is_queryable_and_rebuilt() {
    for postgres in [true, false] {
        let (addr, _seen) = stub().await;
        let mut h = Harness::start(postgres).await;
        let base = format!("http://127.0.0.1:{}", addr.port());
        let a = define(
            &mut h,
            http_action("first", "GET", format!("{base}/orders/1")),
        )
        .await;
        let b = define(
            &mut h,
            http_action("second", "GET", format!("{base}/orders/2")),
        )
        .await;
        for i in 0..3 {
            let mut request = run(&a, &format!("a-{i}"), serde_json::json!({}));
            request.conversation_id = if i == 0 {
                "conv_x".into()
            } else {
                "conv_y".into()
            };
            execute(&mut h, request).await;
        }
        execute(&mut h, run(&b, "b-0", serde_json::json!({}))).await;
        h.client
            .test_action(TestActionRequest {
                workspace_id: WS.into(),
                action_id: b.id.clone(),
                variables_json: String::new(),
            })
            .await
            .unwrap();
        let list = |action_id: &str,
                    conversation_id: &str,
                    include_tests: bool,
                    limit: u32,
                    cursor: String| ListExecutionsRequest {
            workspace_id: WS.into(),
            action_id: action_id.into(),
            conversation_id: conversation_id.into(),
            include_tests,
            limit,
            cursor,
            ..Default::default()
        };
        let all = h
            .client
            .list_executions(list("", "", true, 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.executions.len(), 5);
        let live = h
            .client
            .list_executions(list("", "", false, 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(live.executions.len(), 4);
        let by_action = h
            .client
            .list_executions(list(&a.id, "", false, 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_action.executions.len(), 3);
        let by_conversation = h
            .client
            .list_executions(list("", "conv_y", false, 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_conversation.executions.len(), 2);
        // Pages of two, newest first, nothing twice.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = h
                .client
                .list_executions(list("", "", true, 2, cursor))
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.executions.iter().map(|e| e.execution_id.clone()));
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        assert_eq!(
            seen,
            all.executions
                .iter()
                .map(|e| e.execution_id.clone())
                .collect::<Vec<_>>()
        );
        h.log
            .rebuild(&switchboard_actions::ActionsProjection, &mut |_| {})
            .await
            .unwrap();
        let rebuilt = h
            .client
            .list_executions(list("", "", true, 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rebuilt, all);
        let bad = h
            .client
            .list_executions(list("", "", true, 0, "garbage".into()))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        h.stop().await;
    }
}

#[derive(Default)]
struct OAuthState {
    issued: u32,
    valid: String,
}

#[tokio::test]
async fn oauth2_tokens_are_cached_and_refreshed_once_on_401() {
    use axum::extract::State as S;
    let state: Arc<Mutex<OAuthState>> = Arc::new(Mutex::new(OAuthState {
        issued: 0,
        valid: "tok-1".into(),
    }));
    let app = Router::new()
        .route(
            "/token",
            post(|S(state): S<Arc<Mutex<OAuthState>>>, headers: HeaderMap, body: String| async move {
                use base64::Engine as _;
                let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("client-1:{SECRET}")));
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) || !body.contains("grant_type=client_credentials") {
                    return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "invalid_client"})));
                }
                let mut state = state.lock().unwrap();
                state.issued += 1;
                (StatusCode::OK, Json(serde_json::json!({"access_token": format!("tok-{}", state.issued), "expires_in": 3600, "token_type": "Bearer"})))
            }),
        )
        .route(
            "/protected",
            get(|S(state): S<Arc<Mutex<OAuthState>>>, headers: HeaderMap| async move {
                let valid = format!("Bearer {}", state.lock().unwrap().valid);
                if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(valid.as_str()) {
                    (StatusCode::OK, Json(serde_json::json!({"ok": true})))
                } else {
                    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "expired"})))
                }
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut h = Harness::start(false).await;
    let mut definition = http_action(
        "oauth_call",
        "GET",
        format!("http://127.0.0.1:{}/protected", addr.port()),
    );
    definition.http.as_mut().unwrap().auth = Some(HttpAuth {
        kind: AuthKind::Oauth2ClientCredentials as i32,
        token_url: format!("http://127.0.0.1:{}/token", addr.port()),
        client_id: "client-1".into(),
        secret: SECRET.into(),
        ..Default::default()
    });
    let action = define(&mut h, definition).await;
    let first = execute(&mut h, run(&action, "o-1", serde_json::json!({}))).await;
    let second = execute(&mut h, run(&action, "o-2", serde_json::json!({}))).await;
    assert_eq!(
        (first.outcome, second.outcome),
        (Outcome::Success as i32, Outcome::Success as i32),
        "{first:?}"
    );
    assert_eq!(state.lock().unwrap().issued, 1, "the token is reused");
    // The target stops accepting it: one refresh, one more call, success.
    state.lock().unwrap().valid = "tok-2".into();
    let third = execute(&mut h, run(&action, "o-3", serde_json::json!({}))).await;
    assert_eq!(third.outcome, Outcome::Success as i32, "{third:?}");
    assert_eq!((state.lock().unwrap().issued, third.attempts), (2, 2));
    assert_eq!(
        third.request.unwrap().headers["Authorization"],
        "[redacted]"
    );
    // A target that refuses every token fails after exactly one refresh.
    state.lock().unwrap().valid = "never".into();
    let fourth = execute(&mut h, run(&action, "o-4", serde_json::json!({}))).await;
    assert_eq!(
        (fourth.reason, fourth.status_code),
        (FailureReason::HttpStatus as i32, 401)
    );
    assert_eq!(state.lock().unwrap().issued, 3);
    h.stop().await;
}
