//! The connexease service against the simulator over real HTTP: connecting, the directory,
//! every operation, every reference error, retries on 429 and 5xx, idempotency, state
//! rebuilt after a restart, and the token kept out of every event.

mod common;

use std::collections::HashMap;

use common::{Harness, TOKEN, WEBHOOK_SECRET, WS};
use serde_json::json;
use switchboard_connexease::sim::seeded_ids;
use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient;
use switchboard_proto::connexease::v1::*;
use tonic::Code;

/// Arguments of an operation, as name and value.
type Args = Vec<(&'static str, &'static str)>;

fn operation(
    key: &str,
    conversation: &str,
    op: &str,
    args: &[(&str, &str)],
) -> RunOperationRequest {
    RunOperationRequest {
        workspace_id: WS.into(),
        idempotency_key: key.into(),
        conversation_id: conversation.into(),
        operation: op.into(),
        arguments: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    tonic_types::StatusExt::get_error_details(status)
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn connecting_checks_the_token_pulls_the_directory_and_hides_secrets() {
    let mut h = Harness::start(80).await;
    // Every operation of an unconnected workspace is a clear failed precondition.
    let status = h
        .client
        .run_operation(operation("k0", "conv_1", "archive", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("SB-CX-0001"));

    let bad = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                access_token: "wrong".into(),
                ..h.connection()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&bad)[0].0, "access_token", "{bad:?}");
    let missing = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                base_url: "ftp://x".into(),
                webhook_secret: "short".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = violations(&missing).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["base_url", "access_token", "webhook_secret"]);

    // The base URL goes through the SSRF guard: a metadata address is refused.
    let blocked = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                base_url: "http://169.254.169.254".into(),
                ..h.connection()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&blocked)[0].0, "base_url", "{blocked:?}");

    let connection = h.connect().await;
    assert!(connection.connected);
    // The connection is checked with a documented call.
    let checked = h.sim_requests().await;
    assert!(
        checked.iter().any(|r| r["method"] == "GET"
            && r["path"] == "/templates/"
            && r["auth"] == "Bearer"
            && r["status"] == 200),
        "{checked:?}"
    );
    assert!(connection.access_token_set && connection.webhook_secret_set);
    assert!(connection.access_token.is_empty() && connection.sealed_access_token.is_empty());
    let directory = h
        .client
        .get_directory(GetDirectoryRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .directory
        .unwrap();
    assert_eq!(directory.groups.len(), 3);
    assert_eq!(directory.agents[0].email, "ada@shop.example");
    let test = h
        .client
        .test_connection(TestConnectionRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(test.ok, "{test:?}");

    let disconnected = h
        .client
        .disconnect_workspace(DisconnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(!disconnected.connected && !disconnected.access_token_set);
    let status = h
        .client
        .sync_directory(SyncDirectoryRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The token and the webhook secret are in no event, sealed or not.
    let events = h
        .log
        .read_stream(
            &switchboard_connexease::service::connection_stream(WS),
            0,
            100,
        )
        .await
        .unwrap();
    assert!(events.len() >= 3);
    for event in &events {
        let payload = String::from_utf8_lossy(&event.payload);
        assert!(!payload.contains(TOKEN) && !payload.contains(WEBHOOK_SECRET));
    }
    h.stop().await;
}

#[tokio::test]
async fn every_operation_changes_connexease_once_per_key() {
    let mut h = Harness::start(80).await;
    h.connect().await;
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    let customer_id = external["customer"]["uuid"].as_str().unwrap().to_owned();

    // Not linked yet: the first operation names Connexease's conversation and links it.
    let status = h
        .client
        .run_operation(operation("k-unlinked", "conv_a", "archive", &[]))
        .await
        .unwrap_err();
    assert_eq!(violations(&status)[0].0, "conversation_id");
    let assigned = h
        .client
        .run_operation(operation(
            "k1",
            "conv_a",
            "assign_group",
            &[
                ("group", "Billing"),
                ("external_conversation_id", &external_id),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(assigned.ok, "{assigned:?}");
    assert_eq!(assigned.external_customer_id, customer_id);
    let link = h
        .client
        .get_link(GetLinkRequest {
            workspace_id: WS.into(),
            conversation_id: "conv_a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(link.external_conversation_id, external_id);

    let steps: [(&str, &str, Args); 7] = [
        (
            "k2",
            "assign_agent",
            vec![("agent_email", "bob@shop.example")],
        ),
        ("k3", "auto_assign", vec![("group", "support")]),
        (
            "k4",
            "set_conversation_fields",
            vec![
                ("fields.order_number", "A-17"),
                ("fields.topics", "refund, late"),
            ],
        ),
        (
            "k5",
            "update_customer",
            vec![
                ("name", "Grace Hopper"),
                ("email", "grace@navy.example"),
                ("social.instagram", "@grace"),
            ],
        ),
        (
            "k6",
            "set_customer_fields",
            vec![
                ("fields.tier", "gold"),
                ("fields.interests", "cobol,compilers"),
            ],
        ),
        ("k7", "archive", vec![]),
        ("k8", "unarchive", vec![]),
    ];
    for (key, op, args) in &steps {
        let result = h
            .client
            .run_operation(operation(key, "conv_a", op, args))
            .await
            .unwrap_or_else(|s| panic!("{op}: {s:?}"))
            .into_inner();
        assert!(result.ok, "{op}: {result:?}");
    }
    let state = h.sim_state().await;
    let conversation = &state["conversations"][&external_id];
    assert_eq!(conversation["group"]["uuid"], seeded_ids::SUPPORT);
    assert_eq!(
        conversation["agent"]["uuid"],
        seeded_ids::ADA,
        "auto-assign picks the agent online"
    );
    assert_eq!(conversation["status"], "open");
    assert_eq!(
        conversation["custom_fields"],
        json!({"order_number": "A-17", "topics": ["refund", "late"]})
    );
    let customer = &state["customers"][&customer_id];
    assert_eq!(customer["name"], "Grace Hopper");
    assert_eq!(customer["social"]["instagram"], "@grace");
    assert_eq!(
        customer["custom_fields"],
        json!({"tier": "gold", "interests": ["cobol", "compilers"]})
    );

    // A repeated key is answered from the record: Connexease is not called again.
    let before = h.sim_requests().await.len();
    let again = h
        .client
        .run_operation(operation("k7", "conv_a", "archive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(again.ok && again.replayed);
    assert_eq!(h.sim_requests().await.len(), before);
    assert_eq!(
        h.sim_state().await["conversations"][&external_id]["status"],
        "open"
    );
    h.stop().await;
}

#[tokio::test]
async fn every_reference_is_checked_against_the_directory() {
    let mut h = Harness::start(80).await;
    h.connect().await;
    let cases: [(&str, Args, &str); 5] = [
        (
            "assign_group",
            vec![("group", "sales")],
            "group `sales` does not exist in Connexease",
        ),
        (
            "assign_agent",
            vec![("agent_email", "zed@shop.example")],
            "agent `zed@shop.example` does not exist in Connexease",
        ),
        (
            "set_conversation_fields",
            vec![("fields.tier", "gold")],
            "conversation field `tier` does not exist in Connexease",
        ),
        (
            "set_customer_fields",
            vec![("fields.colour", "red")],
            "customer field `colour` does not exist in Connexease",
        ),
        (
            "update_customer",
            vec![("email", "not-an-email")],
            "`not-an-email` is not an email address",
        ),
    ];
    for (i, (op, args, expected)) in cases.iter().enumerate() {
        let status = h
            .client
            .run_operation(operation(&format!("ref-{i}"), "conv_b", op, args))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{op}");
        assert_eq!(violations(&status)[0].1, *expected, "{op}");
    }
    // Nothing reached Connexease but the connect and directory calls.
    let calls: Vec<String> = h
        .sim_requests()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        calls.iter().all(|p| !p.starts_with("/conversations/")),
        "{calls:?}"
    );
    h.stop().await;
}

/// The names of the fields an `INVALID_ARGUMENT` answer names, in order.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    violations(status).into_iter().map(|(f, _)| f).collect()
}

/// A request with several mistakes names every one in the same answer: the fields every
/// request carries beside the request's own, the arguments' shape beside the directory's
/// references, and a workspace never connected still hears what is wrong with its request.
#[tokio::test]
async fn every_mistake_of_a_request_is_named_in_one_answer() {
    let mut h = Harness::start(80).await;
    let bad_arguments = h
        .client
        .run_operation(RunOperationRequest {
            workspace_id: "acme; drop".into(),
            idempotency_key: String::new(),
            ..operation("k1", "conv_1", "assign_group", &[("colour", "red")])
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad_arguments),
        [
            "workspace_id",
            "idempotency_key",
            "arguments[colour]",
            "arguments[group]"
        ]
    );
    let unknown = h
        .client
        .run_operation(RunOperationRequest {
            workspace_id: "ws_".into(),
            conversation_id: "chat-9".into(),
            ..operation("k2", "conv_1", "explode", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&unknown),
        ["workspace_id", "conversation_id", "operation"]
    );
    let not_connected = h
        .client
        .run_operation(operation(
            "k3",
            "conv_1",
            "update_customer",
            &[("email", "nope")],
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&not_connected), ["arguments[email]"]);

    let bad_connection = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: "acme".into(),
            request_id: "r".repeat(129),
            connection: Some(Connection {
                base_url: "ftp://x".into(),
                webhook_secret: "short".into(),
                rate_limit_per_second: 500,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad_connection),
        [
            "workspace_id",
            "request_id",
            "base_url",
            "access_token",
            "webhook_secret",
            "rate_limit_per_second"
        ]
    );
    let no_connection = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: "acme".into(),
            request_id: String::new(),
            connection: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&no_connection),
        ["workspace_id", "connection"]
    );

    h.connect().await;
    let mixed = h
        .client
        .run_operation(operation(
            "k4",
            "conv_1",
            "set_conversation_fields",
            &[("colour", "red"), ("fields.tier", "gold")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&mixed),
        ["arguments[colour]", "arguments[fields.tier]"]
    );
    h.stop().await;
}

#[tokio::test]
async fn rate_limited_requests_are_retried_after_retry_after() {
    // Two requests a second: a burst meets 429s with Retry-After.
    let mut h = Harness::start(2).await;
    h.connect().await;
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let link = operation(
        "r0",
        "conv_c",
        "set_conversation_fields",
        &[
            ("fields.order_number", "1"),
            ("external_conversation_id", &external_id),
        ],
    );
    h.client.run_operation(link).await.unwrap();
    let mut results = Vec::new();
    for i in 1..=3 {
        let mut client = h.client.clone();
        let value = i.to_string();
        results.push(tokio::spawn(async move {
            client
                .run_operation(operation(
                    &format!("r{i}"),
                    "conv_c",
                    "set_conversation_fields",
                    &[("fields.order_number", &value)],
                ))
                .await
        }));
    }
    for result in results {
        let result = result.await.unwrap().unwrap().into_inner();
        assert!(result.ok, "{result:?}");
    }
    let limited = h
        .sim_requests()
        .await
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert!(limited > 0, "the burst met the simulator's rate limit");
    // After a 429 the same request came again no sooner than its Retry-After (1 s).
    let requests = h.sim_requests().await;
    let same = |a: &serde_json::Value, b: &serde_json::Value| {
        a["method"] == b["method"] && a["path"] == b["path"] && a["body"] == b["body"]
    };
    for (i, request) in requests.iter().enumerate() {
        if request["status"] != 429 || request["method"] == "GET" {
            continue;
        }
        let next = requests[i + 1..]
            .iter()
            .find(|r| same(r, request))
            .expect("the rate-limited request was retried");
        let waited = next["at_ms"].as_i64().unwrap() - request["at_ms"].as_i64().unwrap();
        assert!(
            waited >= 1000,
            "retried {waited} ms after a 429 with Retry-After: 1"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_then_the_key_is_released_when_retries_give_up() {
    let mut h = Harness::start(80).await;
    h.connect().await;
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    h.client
        .run_operation(operation(
            "r0",
            "conv_c",
            "set_conversation_fields",
            &[
                ("fields.order_number", "1"),
                ("external_conversation_id", &external_id),
            ],
        ))
        .await
        .unwrap();

    // 5xx twice, then success: three attempts, one change.
    h.fail_next(2, 503).await;
    let result = h
        .client
        .run_operation(operation("r5", "conv_c", "archive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok && result.attempts == 3, "{result:?}");

    // A change answered 502 (a proxy's, say) may have happened: it is read back, found
    // not done, and sent again.
    h.fail_next(1, 502).await;
    let result = h
        .client
        .run_operation(operation("r5b", "conv_c", "unarchive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok, "{result:?}");
    let unarchive = |requests: &[serde_json::Value]| -> Vec<(String, u64)> {
        requests
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("/conversations/{external_id}/"))
            })
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_owned(),
                    r["status"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let seen = unarchive(&h.sim_requests().await);
    assert_eq!(
        seen[seen.len() - 3..],
        [
            ("POST".to_owned(), 502),
            ("GET".to_owned(), 200),
            ("POST".to_owned(), 200)
        ]
    );

    // Failing beyond the retries: UNAVAILABLE, and the key can run again later.
    h.fail_next(20, 503).await;
    let status = h
        .client
        .run_operation(operation("r6", "conv_c", "unarchive", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    h.fail_next(0, 503).await;
    let retried = h
        .client
        .run_operation(operation("r6", "conv_c", "unarchive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.ok && !retried.replayed, "{retried:?}");
    h.stop().await;
}

#[tokio::test]
async fn state_is_rebuilt_after_a_restart() {
    let mut h = Harness::start(80).await;
    h.connect().await;
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    h.client
        .run_operation(operation(
            "s1",
            "conv_d",
            "archive",
            &[("external_conversation_id", &external_id)],
        ))
        .await
        .unwrap();
    let schema = h.stop_keeping_schema().await;

    let mut h = Harness::start_on(schema, 80).await;
    let connection = h
        .client
        .get_connection(GetConnectionRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(connection.connected && connection.access_token_set);
    let link = h
        .client
        .get_link(GetLinkRequest {
            workspace_id: WS.into(),
            conversation_id: "conv_d".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(link.external_conversation_id, external_id);
    // The recorded outcome still answers the key (the new simulator never saw it).
    let again = h
        .client
        .run_operation(operation("s1", "conv_d", "archive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    // The read models rebuild from the log alone.
    let rebuilt = h
        .log
        .rebuild(&switchboard_connexease::ConnexeaseProjection, &mut |_| {})
        .await
        .unwrap();
    assert!(rebuilt > 0);
    let store = switchboard_connexease::ConnexeaseStore::new(h.log.clone());
    assert_eq!(store.connected_workspaces().await.unwrap(), [WS]);
    h.stop().await;
}

/// The legacy JWT flow (documented): `POST /jwt/` with the username and password, the
/// token sent as `Authorization: JWT`, fetched once and used until close to its expiry;
/// wrong credentials are the password's violation.
#[tokio::test]
async fn the_jwt_flow_logs_in_once_and_sends_its_token() {
    let mut h = Harness::start(80).await;
    let sim = switchboard_connexease::sim::SimConfig::default();
    let base = h.connection();
    let jwt = |password: &str| Connection {
        auth_scheme: AuthScheme::Jwt as i32,
        username: sim.username.clone(),
        password: password.into(),
        access_token: String::new(),
        ..base.clone()
    };
    let refused = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(jwt("wrong password")),
        })
        .await
        .unwrap_err();
    let refused = violations(&refused);
    assert_eq!(refused[0].0, "password", "{refused:?}");
    assert!(
        refused[0]
            .1
            .contains("Unable to log in with provided credentials."),
        "Connexease's non_field_errors are read: {refused:?}"
    );
    let missing = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(Connection {
                username: String::new(),
                ..jwt("")
            }),
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = violations(&missing).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["username", "password"]);

    let connection = h
        .client
        .connect_workspace(ConnectRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            connection: Some(jwt(&sim.password)),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(connection.password_set && connection.password.is_empty());
    assert!(!connection.access_token_set);
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    let result = h
        .client
        .run_operation(operation(
            "j1",
            "conv_j",
            "archive",
            &[("external_conversation_id", &external_id)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok, "{result:?}");
    let requests = h.sim_requests().await;
    let logins: Vec<&serde_json::Value> =
        requests.iter().filter(|r| r["path"] == "/jwt/").collect();
    assert_eq!(
        logins
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [400, 200],
        "one refused login, then one for every later call"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r["path"] != "/jwt/")
            .all(|r| r["auth"] == "JWT" && r["status"] == 200),
        "{requests:?}"
    );
    // The password is in no event.
    let events = h
        .log
        .read_stream(
            &switchboard_connexease::service::connection_stream(WS),
            0,
            100,
        )
        .await
        .unwrap();
    for event in &events {
        assert!(!String::from_utf8_lossy(&event.payload).contains(&sim.password));
    }
    h.stop().await;
}

/// A change whose answer never came is read back before it is sent again: applied, it is
/// not sent twice; not applied, it is sent once more.
#[tokio::test]
async fn a_change_that_got_no_answer_is_read_back_before_it_is_sent_again() {
    let mut h = Harness::start(80).await;
    h.connect().await;
    let external = h.sim_conversation(None).await;
    let external_id = external["uuid"].as_str().unwrap().to_owned();
    h.client
        .run_operation(operation(
            "u0",
            "conv_u",
            "set_conversation_fields",
            &[
                ("fields.order_number", "0"),
                ("external_conversation_id", &external_id),
            ],
        ))
        .await
        .unwrap();
    let posts = |requests: &[serde_json::Value], path: &str| {
        requests
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == path)
            .count()
    };
    let archive = format!("/conversations/{external_id}/archive/");

    // Applied, then silence: read back, found archived, done; one POST.
    h.stall_next(1, true).await;
    let result = h
        .client
        .run_operation(operation("u1", "conv_u", "archive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok, "{result:?}");
    assert_eq!(posts(&h.sim_requests().await, &archive), 1);
    assert_eq!(
        h.sim_state().await["conversations"][&external_id]["status"],
        "archived"
    );

    // Not applied, then silence: read back, not there, sent again; two POSTs, one change.
    let unarchive = format!("/conversations/{external_id}/unarchive/");
    h.stall_next(1, false).await;
    let result = h
        .client
        .run_operation(operation("u2", "conv_u", "unarchive", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok, "{result:?}");
    let requests = h.sim_requests().await;
    assert_eq!(posts(&requests, &unarchive), 2);
    assert!(
        requests
            .iter()
            .any(|r| r["method"] == "GET" && r["path"] == format!("/conversations/{external_id}/")),
        "it was read back"
    );
    assert_eq!(
        h.sim_state().await["conversations"][&external_id]["status"],
        "open"
    );

    // A customer's change is read back too.
    let customer = h.sim_state().await["conversations"][&external_id]["customer"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    h.stall_next(1, true).await;
    let result = h
        .client
        .run_operation(operation(
            "u3",
            "conv_u",
            "set_customer_fields",
            &[("fields.tier", "gold")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(result.ok, "{result:?}");
    let path = format!("/customers/{customer}/custom_fields/");
    let requests = h.sim_requests().await;
    assert_eq!(
        requests
            .iter()
            .filter(|r| r["method"] == "PATCH" && r["path"] == path)
            .count(),
        1
    );
    h.stop().await;
}

/// `/stats` is read, its agents named by the directory's emails, and recorded (and
/// published for insights) only when it changed.
#[tokio::test]
async fn stats_are_recorded_when_they_change_and_published() {
    use switchboard_eventlog::Router as _;

    let mut h = Harness::start(80).await;
    h.connect().await;
    let read = |mut client: ConnexeaseClient<tonic::transport::Channel>| async move {
        client
            .read_stats(ReadStatsRequest {
                workspace_id: WS.into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let first = read(h.client.clone()).await;
    assert_eq!(
        first
            .agents
            .iter()
            .map(|a| a.email.as_str())
            .collect::<Vec<_>>(),
        ["ada@shop.example", "bob@shop.example", "cy@shop.example"]
    );
    let again = read(h.client.clone()).await;
    assert_eq!(
        again.read_at, first.read_at,
        "unchanged: the first reading stands"
    );
    let external = h.sim_conversation(None).await;
    let id = external["uuid"].as_str().unwrap();
    h.sim_post(
        &format!("/sim/conversations/{id}/messages"),
        json!({"text": "Hello?"}),
    )
    .await;
    let changed = read(h.client.clone()).await;
    assert_eq!(changed.channels[0].message_count, 1);
    let recorded: Vec<_> = common::all_events(&h.log)
        .await
        .into_iter()
        .filter(|e| e.event_type == "connexease.stats_read")
        .collect();
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        switchboard_connexease::PublicEvents.subject(&recorded[1]),
        Some(format!("events.{WS}.connexease.stats.read"))
    );
    h.stop().await;
}
