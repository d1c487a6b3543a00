//! Integrations: a connected service its HTTP actions share (base URL, credentials,
//! headers, allowed methods, permission level, one rate limit), against a real HTTP server
//! on loopback, on both backends.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use common::{Harness, SECRET, WS};
use switchboard_proto::actions::v1::*;
use tonic::Code;

type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// A shop API: `/api/orders/{n}` and `/api/orders/{n}/items`, recording what it got.
async fn shop() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/api/orders/{number}",
            get(
                |State(s): State<Seen>, Path(number): Path<String>, h: HeaderMap| async move {
                    s.lock().unwrap().push((format!("orders/{number}"), h));
                    Json(serde_json::json!({"status": "shipped", "number": number}))
                },
            ),
        )
        .route(
            "/api/orders",
            get(
                |State(s): State<Seen>, Query(q): Query<HashMap<String, String>>, h: HeaderMap| async move {
                    let ids = q.get("ids").cloned().unwrap_or_default();
                    s.lock().unwrap().push((format!("batch/{ids}"), h));
                    let orders: Vec<serde_json::Value> = ids
                        .split(',')
                        .filter(|id| *id != "missing")
                        .map(|id| serde_json::json!({"number": id, "status": format!("status of {id}")}))
                        .collect();
                    Json(serde_json::json!({"orders": orders}))
                },
            ),
        )
        .route(
            "/api/orders/{number}/items",
            get(
                |State(s): State<Seen>, Path(number): Path<String>, h: HeaderMap| async move {
                    s.lock().unwrap().push((format!("items/{number}"), h));
                    Json(serde_json::json!({"items": [{"sku": "A1"}]}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn integration(name: &str, addr: SocketAddr) -> Integration {
    Integration {
        workspace_id: WS.into(),
        name: name.into(),
        description: "The shop's order API".into(),
        base_url: format!("http://127.0.0.1:{}/api/", addr.port()),
        headers: [("X-Shop".to_owned(), "main".to_owned())].into(),
        auth: Some(HttpAuth {
            kind: AuthKind::Bearer as i32,
            secret: SECRET.into(),
            ..Default::default()
        }),
        allowed_methods: vec!["GET".into()],
        ..Default::default()
    }
}

async fn save(h: &mut Harness, given: Integration, request_id: &str) -> Integration {
    h.client
        .save_integration(SaveIntegrationRequest {
            integration: Some(given),
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn operation(name: &str, integration_id: &str, method: &str, path: &str) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: "An operation of the shop".into(),
        input_schema: r#"{"type":"object","properties":{"number":{"type":"string"}}}"#.into(),
        kind: ActionKind::Http as i32,
        http: Some(HttpSpec {
            method: method.into(),
            url: path.into(),
            integration_id: integration_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create(
    h: &mut Harness,
    definition: ActionDefinition,
) -> Result<ActionDefinition, tonic::Status> {
    h.client
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            definition: Some(definition),
        })
        .await
        .map(|r| r.into_inner().action.unwrap())
}

async fn execute(
    h: &mut Harness,
    action: &ActionDefinition,
    key: &str,
    caller: PermissionLevel,
) -> ExecutionResult {
    h.client
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            variables_json: serde_json::json!({"input": {"number": key}}).to_string(),
            idempotency_key: key.into(),
            caller_permission: caller as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn fields(status: &tonic::Status) -> Vec<String> {
    let details = tonic_types::StatusExt::get_error_details(status);
    details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_integration_is_shared_by_its_actions() {
    for postgres in [true, false] {
        let (addr, seen) = shop().await;
        let mut h = Harness::start(postgres).await;
        let mut given = integration("shop", addr);
        given.rate_limit_per_minute = 3;
        let shop = save(&mut h, given.clone(), "create-shop").await;
        assert!(shop.id.starts_with("int_"), "{}", shop.id);
        assert_eq!(shop.version, 1);
        assert_eq!(
            shop.base_url,
            format!("http://127.0.0.1:{}/api", addr.port())
        );
        let auth = shop.auth.clone().unwrap();
        assert!(auth.secret_set && auth.secret.is_empty() && auth.sealed_secret.is_empty());
        // The same create again makes no second integration.
        let again = save(&mut h, given, "create-shop").await;
        assert_eq!(again.id, shop.id);

        let status = create(
            &mut h,
            operation(
                "order_status",
                &shop.id,
                "GET",
                "/orders/{{ input.number }}",
            ),
        )
        .await
        .unwrap();
        let items = create(
            &mut h,
            operation(
                "order_items",
                &shop.id,
                "GET",
                "/orders/{{ input.number }}/items",
            ),
        )
        .await
        .unwrap();

        // Its operations are its actions.
        let listed = h
            .client
            .get_integration(GetIntegrationRequest {
                workspace_id: WS.into(),
                integration_id: shop.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = listed.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["order_items", "order_status"]);
        assert_eq!(listed.operations[1].path, "/orders/{{ input.number }}");

        let result = execute(&mut h, &status, "n1", PermissionLevel::Agent).await;
        assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
        assert_eq!(result.integration_id, shop.id);
        let request = result.request.clone().unwrap();
        assert_eq!(
            request.url,
            format!("http://127.0.0.1:{}/api/orders/n1", addr.port())
        );
        assert_eq!(request.headers["Authorization"], "[redacted]");
        {
            let seen = seen.lock().unwrap();
            let (route, headers) = &seen[0];
            assert_eq!(route, "orders/n1");
            assert_eq!(headers["authorization"], format!("Bearer {SECRET}"));
            assert_eq!(headers["x-shop"], "main");
        }

        // One limit for all its actions: 3 a minute, whichever action calls.
        let mut reasons = Vec::new();
        for (i, action) in [&items, &status, &items].into_iter().enumerate() {
            let result = execute(&mut h, action, &format!("m{i}"), PermissionLevel::Agent).await;
            reasons.push((result.reason, result.error));
        }
        assert_eq!(reasons[0].0, 0);
        assert_eq!(reasons[1].0, 0);
        assert_eq!(reasons[2].0, FailureReason::RateLimited as i32);
        assert!(
            reasons[2].1.contains("integration `shop`"),
            "{}",
            reasons[2].1
        );
        assert_eq!(seen.lock().unwrap().len(), 3);

        // What the integration allows, and what an action under it may not say.
        let refused = create(
            &mut h,
            operation(
                "cancel_order",
                &shop.id,
                "DELETE",
                "/orders/{{ input.number }}",
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(fields(&refused), ["http.method"], "{refused:?}");
        assert!(refused.message().contains("allows only GET"), "{refused:?}");
        let refused = create(&mut h, operation("ghost", "int_nope", "GET", "/x"))
            .await
            .unwrap_err();
        assert_eq!(fields(&refused), ["http.integration_id"], "{refused:?}");
        let mut own_auth = operation("own_auth", &shop.id, "GET", "https://elsewhere.example/x");
        own_auth.http.as_mut().unwrap().auth = Some(HttpAuth {
            kind: AuthKind::Bearer as i32,
            secret: "another-secret".into(),
            ..Default::default()
        });
        let refused = create(&mut h, own_auth).await.unwrap_err();
        let mut found = fields(&refused);
        found.sort();
        assert_eq!(found, ["http.auth", "http.url"], "{refused:?}");

        // Used, it cannot be deleted; unused, it can, once per request id.
        let delete = |request_id: &str| DeleteIntegrationRequest {
            workspace_id: WS.into(),
            integration_id: shop.id.clone(),
            request_id: request_id.into(),
        };
        let in_use = h.client.delete_integration(delete("d1")).await.unwrap_err();
        assert_eq!(in_use.code(), Code::FailedPrecondition);
        assert!(
            in_use.message().contains("`order_items`")
                && in_use.message().contains("`order_status`"),
            "{in_use:?}"
        );
        for action in [&status, &items] {
            h.client
                .delete_action(DeleteActionRequest {
                    workspace_id: WS.into(),
                    action_id: action.id.clone(),
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
        let deleted = h
            .client
            .delete_integration(delete("d2"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (deleted.id.as_str(), deleted.version),
            (shop.id.as_str(), 2)
        );
        let retried = h
            .client
            .delete_integration(delete("d2"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried.version, 2);
        let gone = h
            .client
            .get_integration(GetIntegrationRequest {
                workspace_id: WS.into(),
                integration_id: shop.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert!(gone.message().starts_with("SB-ACT-0405"), "{gone:?}");

        // The secret is in no event in the clear.
        let events = common::events_until(&h.log, |e| {
            e.iter().any(|e| e.event_type == "integration.deleted")
        })
        .await;
        for event in &events {
            assert!(
                !event
                    .payload
                    .windows(SECRET.len())
                    .any(|w| w == SECRET.as_bytes()),
                "the secret in {}",
                event.event_type
            );
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn an_integration_s_permission_level_raises_its_actions() {
    let (addr, seen) = shop().await;
    let mut h = Harness::start(false).await;
    let crm = save(
        &mut h,
        Integration {
            permission_level: PermissionLevel::Human as i32,
            ..integration("crm", addr)
        },
        "",
    )
    .await;
    let lookup = create(
        &mut h,
        operation("crm_lookup", &crm.id, "GET", "/orders/{{ input.number }}"),
    )
    .await
    .unwrap();
    let by_agent = execute(&mut h, &lookup, "a1", PermissionLevel::Agent).await;
    assert_eq!(by_agent.reason, FailureReason::Forbidden as i32);
    assert!(
        by_agent.error.contains("a human teammate")
            && by_agent.error.contains("its integration `crm`"),
        "{}",
        by_agent.error
    );
    assert!(seen.lock().unwrap().is_empty());
    let by_human = execute(&mut h, &lookup, "a2", PermissionLevel::Human).await;
    assert_eq!(by_human.outcome, Outcome::Success as i32, "{by_human:?}");

    // The agent is not offered what it may not run.
    let tools = h
        .client
        .list_agent_tools(ListAgentToolsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(tools.iter().all(|t| t.name != "crm_lookup"), "{tools:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_replace_keeps_the_secret_and_bad_input_names_every_field() {
    let (addr, seen) = shop().await;
    let mut h = Harness::start(true).await;
    let shop = save(&mut h, integration("shop", addr), "").await;
    // A replace without a secret keeps it; with a new header, the header is sent.
    let mut replaced = integration("shop", addr);
    replaced.id = shop.id.clone();
    replaced.auth.as_mut().unwrap().secret.clear();
    replaced.headers.insert("X-Region".into(), "eu".into());
    let replaced = h
        .client
        .save_integration(SaveIntegrationRequest {
            integration: Some(replaced),
            expected_version: 1,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.version, 2);
    assert!(replaced.auth.unwrap().secret_set);
    let lookup = create(
        &mut h,
        operation("lookup", &shop.id, "GET", "/orders/{{ input.number }}"),
    )
    .await
    .unwrap();
    let result = execute(&mut h, &lookup, "r1", PermissionLevel::Agent).await;
    assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].1["authorization"], format!("Bearer {SECRET}"));
        assert_eq!(seen[0].1["x-region"], "eu");
    }
    // A stale version is refused.
    let mut stale = integration("shop", addr);
    stale.id = shop.id.clone();
    let refused = h
        .client
        .save_integration(SaveIntegrationRequest {
            integration: Some(stale),
            expected_version: 1,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted);

    // A second integration of the same name, and every other mistake, at once.
    let bad = Integration {
        workspace_id: WS.into(),
        name: "shop".into(),
        base_url: "ftp://files.example".into(),
        headers: [("Authorization".to_owned(), "Bearer x".to_owned())].into(),
        allowed_methods: vec!["TRACE".into()],
        auth: Some(HttpAuth {
            kind: AuthKind::ApiKeyHeader as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let refused = h
        .client
        .save_integration(SaveIntegrationRequest {
            integration: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let mut found = fields(&refused);
    found.sort();
    assert_eq!(
        found,
        [
            "integration.allowed_methods[0]",
            "integration.auth.name",
            "integration.auth.secret",
            "integration.base_url",
            "integration.headers[Authorization]",
            "integration.name",
        ],
        "{refused:?}"
    );
    let listed = h
        .client
        .list_integrations(ListIntegrationsRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .integrations;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].operations.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn similar_lookups_made_together_go_as_one_batch() {
    for postgres in [true, false] {
        let (addr, seen) = shop().await;
        let mut h = Harness::start(postgres).await;
        let shop = save(&mut h, integration("shop", addr), "").await;
        let mut lookup = operation(
            "order_status",
            &shop.id,
            "GET",
            "/orders/{{ input.number }}",
        );
        let http = lookup.http.as_mut().unwrap();
        http.response_mapping = vec![ResponseMapping {
            name: "status".into(),
            path: "$.status".into(),
            kind: "string".into(),
            required: true,
            ..Default::default()
        }];
        http.batch = Some(BatchSpec {
            url: "/orders?ids={{ batch.keys }}".into(),
            key: "{{ input.number }}".into(),
            items_path: "$.orders".into(),
            item_key_path: "$.number".into(),
            window_ms: 1000,
            max_size: 5,
            separator: String::new(),
        });
        let lookup = create(&mut h, lookup).await.unwrap();
        assert_eq!(
            lookup
                .http
                .as_ref()
                .unwrap()
                .batch
                .as_ref()
                .unwrap()
                .separator,
            ","
        );

        // Five lookups at once (one of an order the shop does not know): one request.
        let keys = ["n1", "n2", "n3", "n4", "missing"];
        let calls = keys.iter().map(|key| {
            let mut client = h.client.clone();
            let request = ExecuteActionRequest {
                workspace_id: WS.into(),
                action_id: lookup.id.clone(),
                variables_json: serde_json::json!({"input": {"number": key}}).to_string(),
                idempotency_key: format!("batch-{key}"),
                ..Default::default()
            };
            async move { client.execute_action(request).await.unwrap().into_inner() }
        });
        let results = futures::future::join_all(calls).await;
        let routes: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        assert_eq!(routes.len(), 1, "one request for the five: {routes:?}");
        let mut sent: Vec<&str> = routes[0].trim_start_matches("batch/").split(',').collect();
        sent.sort();
        assert_eq!(sent, ["missing", "n1", "n2", "n3", "n4"]);
        for (key, result) in keys.iter().zip(&results) {
            assert_eq!(result.batch_size, 5, "{result:?}");
            if *key == "missing" {
                assert_eq!(result.reason, FailureReason::Mapping as i32, "{result:?}");
                assert!(
                    result.error.contains("no item with key `missing`"),
                    "{}",
                    result.error
                );
                continue;
            }
            assert_eq!(result.outcome, Outcome::Success as i32, "{result:?}");
            let outputs: serde_json::Value = serde_json::from_str(&result.outputs_json).unwrap();
            assert_eq!(outputs["status"], format!("status of {key}"));
            assert!(
                result.response_body.contains(&format!("\"{key}\"")),
                "{}",
                result.response_body
            );
            assert!(
                result
                    .request
                    .as_ref()
                    .unwrap()
                    .url
                    .contains("/api/orders?ids=")
            );
        }
        assert_eq!(
            seen.lock().unwrap()[0].1["authorization"],
            format!("Bearer {SECRET}"),
            "the batch goes with the integration's credentials"
        );

        // A lookup alone goes to the action's own URL; a repeated key answers as recorded.
        let alone = execute(&mut h, &lookup, "n9", PermissionLevel::Agent).await;
        assert_eq!(alone.outcome, Outcome::Success as i32, "{alone:?}");
        assert_eq!(alone.batch_size, 1);
        assert_eq!(seen.lock().unwrap().last().unwrap().0, "orders/n9");
        h.stop().await;
    }
}

#[tokio::test]
async fn a_batch_spec_is_checked_field_by_field() {
    let (addr, _) = shop().await;
    let mut h = Harness::start(false).await;
    let shop = save(&mut h, integration("shop", addr), "").await;
    let mut bad = operation("bad_batch", &shop.id, "GET", "/orders/{{ input.number }}");
    let http = bad.http.as_mut().unwrap();
    http.cache_ttl_seconds = 60;
    http.batch = Some(BatchSpec {
        url: "https://elsewhere.example/orders".into(),
        key: String::new(),
        items_path: "$[".into(),
        item_key_path: String::new(),
        window_ms: 5000,
        max_size: 1,
        separator: "0123456789".into(),
    });
    let refused = create(&mut h, bad).await.unwrap_err();
    let mut found = fields(&refused);
    found.sort();
    assert_eq!(
        found,
        [
            "http.batch",
            "http.batch.item_key_path",
            "http.batch.items_path",
            "http.batch.key",
            "http.batch.max_size",
            "http.batch.separator",
            "http.batch.url",
            "http.batch.window_ms",
        ],
        "{refused:?}"
    );
    h.stop().await;
}
