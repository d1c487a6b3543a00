//! The kinds besides `http`, each against what it really acts on: a real conversations
//! service over gRPC, the test Postgres as an operator-configured query database, a real
//! HTTP server on loopback for forms and buttons; and the audit view and retention of the
//! execution log.

mod common;

use std::net::SocketAddr;

use axum::Json;
use axum::routing::post;
use common::{Harness, QUERY_DB, WS};
use serde_json::json;
use switchboard_actions::ActionStore;
use switchboard_eventlog::testing::TestSchema;
use switchboard_proto::actions::v1::*;
use switchboard_proto::conversations::v1::{
    EndConversationRequest, GetConversationRequest, StartConversationRequest,
};
use switchboard_proto::events::v1::{Channel, ConversationStatus};

fn action(name: &str, kind: ActionKind) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: format!("{name} for the tests"),
        kind: kind as i32,
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
        .unwrap_or_else(|status| panic!("refused: {status:?}"))
        .into_inner()
        .action
        .unwrap()
}

async fn refused_fields(h: &mut Harness, definition: ActionDefinition) -> Vec<String> {
    let status = h
        .client
        .create_action(CreateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            definition: Some(definition),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn execute(
    h: &mut Harness,
    action: &ActionDefinition,
    key: &str,
    conversation_id: &str,
    variables: serde_json::Value,
) -> ExecutionResult {
    h.client
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            variables_json: variables.to_string(),
            idempotency_key: key.into(),
            conversation_id: conversation_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn test_run(
    h: &mut Harness,
    action: &ActionDefinition,
    variables: serde_json::Value,
) -> ExecutionResult {
    h.client
        .test_action(TestActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            variables_json: variables.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn outputs(result: &ExecutionResult) -> serde_json::Value {
    serde_json::from_str(&result.outputs_json).unwrap()
}

fn assert_failed(result: &ExecutionResult, reason: FailureReason) {
    assert_eq!(
        (result.outcome(), result.reason()),
        (Outcome::Failure, reason),
        "{result:?}"
    );
}

fn assert_succeeded(result: &ExecutionResult) {
    assert_eq!(result.outcome(), Outcome::Success, "{result:?}");
}

async fn start_conversation(h: &mut Harness) -> String {
    h.conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            channel: Channel::Api as i32,
            user_id: "user-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id
}

async fn conversation(h: &mut Harness, id: &str) -> switchboard_proto::events::v1::Conversation {
    h.conversations
        .get_conversation(GetConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
}

#[tokio::test]
async fn update_conversation_changes_the_conversation_once_per_key() {
    let mut h = Harness::start(true).await;
    let mut definition = action("resolve_order", ActionKind::UpdateConversation);
    definition.update_conversation = Some(UpdateConversationSpec {
        status: "{{ input.status }}".into(),
        set_metafields: [("order_number".to_owned(), "{{ input.order }}".to_owned())].into(),
        remove_metafields: vec!["draft".into()],
    });
    let action = define(&mut h, definition).await;
    let id = start_conversation(&mut h).await;

    // A test run renders the change and touches no conversation.
    let before = conversation(&mut h, &id).await;
    let dry = test_run(
        &mut h,
        &action,
        json!({"input": {"status": "resolved", "order": "A-1"}}),
    )
    .await;
    assert_succeeded(&dry);
    assert!(dry.dry_run);
    assert_eq!(outputs(&dry)["status"], "resolved");
    assert_eq!(conversation(&mut h, &id).await.version, before.version);

    let vars = json!({"input": {"status": "resolved", "order": "A-1"}});
    let first = execute(&mut h, &action, "key-1", &id, vars.clone()).await;
    assert_succeeded(&first);
    let after = conversation(&mut h, &id).await;
    assert_eq!(after.status(), ConversationStatus::Resolved);
    assert_eq!(after.metafields["order_number"], "A-1");
    // The same key changes nothing twice.
    let again = execute(&mut h, &action, "key-1", &id, vars.clone()).await;
    assert_eq!(again.execution_id, first.execution_id);
    assert_eq!(conversation(&mut h, &id).await.version, after.version);

    // What the conversation refuses is a failure with its reason.
    let bad = execute(
        &mut h,
        &action,
        "key-2",
        &id,
        json!({"input": {"status": "closed", "order": "A-1"}}),
    )
    .await;
    assert_failed(&bad, FailureReason::InvalidInput);
    assert!(bad.error.contains("closed"), "{}", bad.error);
    h.conversations
        .end_conversation(EndConversationRequest {
            workspace_id: WS.into(),
            conversation_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let missing = execute(
        &mut h,
        &action,
        "key-3",
        "conv_does_not_exist",
        vars.clone(),
    )
    .await;
    assert_failed(&missing, FailureReason::Rejected);
    let none = execute(&mut h, &action, "key-4", "", vars).await;
    assert_failed(&none, FailureReason::InvalidInput);
    assert!(none.error.contains("conversation_id"), "{}", none.error);

    assert!(
        refused_fields(&mut h, {
            let mut d = action_named("bad_status", ActionKind::UpdateConversation);
            d.update_conversation = Some(UpdateConversationSpec {
                status: "closed".into(),
                ..Default::default()
            });
            d
        })
        .await
        .contains(&"update_conversation.status".to_owned())
    );
    h.stop().await;
}

fn action_named(name: &str, kind: ActionKind) -> ActionDefinition {
    action(name, kind)
}

#[tokio::test]
async fn calculations_and_validations_compute_on_both_backends() {
    for postgres in [true, false] {
        let mut h = Harness::start(postgres).await;
        let mut calc = action("price_with_tax", ActionKind::Calculation);
        calc.calculation = Some(CalculationSpec {
            outputs: vec![
                Calculation {
                    name: "subtotal".into(),
                    expression: "input.price * input.quantity".into(),
                },
                Calculation {
                    name: "total".into(),
                    expression: "(outputs.subtotal * 1.2) | round(2)".into(),
                },
                Calculation {
                    name: "due".into(),
                    expression: "date_add(input.ordered, days=30)".into(),
                },
            ],
        });
        let calc = define(&mut h, calc).await;
        let result = execute(
            &mut h,
            &calc,
            "calc-1",
            "",
            json!({"input": {"price": 10, "quantity": 3, "ordered": "2024-02-15"}}),
        )
        .await;
        assert_succeeded(&result);
        assert_eq!(
            outputs(&result),
            json!({"subtotal": 30, "total": 36.0, "due": "2024-03-16"})
        );
        let missing = execute(&mut h, &calc, "calc-2", "", json!({"input": {}})).await;
        assert_failed(&missing, FailureReason::InvalidInput);
        assert!(missing.error.contains("input.price"), "{}", missing.error);

        let mut check = action("check_contact", ActionKind::Validation);
        check.validation = Some(ValidationSpec {
            rules: vec![
                ValidationRule {
                    field: "input.email".into(),
                    rule: "email".into(),
                    ..Default::default()
                },
                ValidationRule {
                    field: "input.phone".into(),
                    rule: "phone_e164".into(),
                    message: "Give the number with its country code".into(),
                    ..Default::default()
                },
                ValidationRule {
                    field: "input.name".into(),
                    rule: "required".into(),
                    ..Default::default()
                },
            ],
        });
        let check = define(&mut h, check).await;
        let good = execute(
            &mut h,
            &check,
            "check-1",
            "",
            json!({"input": {"email": "ada@example.com", "phone": "+442071838750", "name": "Ada"}}),
        )
        .await;
        assert_succeeded(&good);
        assert_eq!(outputs(&good)["valid"], true);
        let bad = execute(
            &mut h,
            &check,
            "check-2",
            "",
            json!({"input": {"email": "ada@", "phone": "020 7183"}}),
        )
        .await;
        assert_failed(&bad, FailureReason::InvalidInput);
        let errors = outputs(&bad)["errors"].clone();
        assert_eq!(errors.as_array().unwrap().len(), 3, "{errors}");
        assert_eq!(
            errors[1]["message"],
            "Give the number with its country code"
        );
        h.stop().await;
    }
}

async fn echo_server() -> SocketAddr {
    let app = axum::Router::new().route(
        "/tickets",
        post(|Json(body): Json<serde_json::Value>| async move {
            Json(json!({"ticket": {"id": "T-9", "received": body}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn forms_check_answers_and_send_them_on_and_buttons_open_urls() {
    let mut h = Harness::start(true).await;
    let addr = echo_server().await;
    let mut form = action("return_request", ActionKind::Form);
    form.form = Some(FormSpec {
        title: "Return an item".into(),
        fields: vec![
            FormField {
                name: "order".into(),
                label: "Order number".into(),
                r#type: "text".into(),
                required: true,
                pattern: "[A-Z]-[0-9]+".into(),
                ..Default::default()
            },
            FormField {
                name: "quantity".into(),
                r#type: "integer".into(),
                required: true,
                min: Some(1.0),
                max: Some(5.0),
                ..Default::default()
            },
        ],
        submit_label: "Send".into(),
        on_submit: Some(HttpSpec {
            method: "POST".into(),
            url: format!("http://{addr}/tickets"),
            body: r#"{"order": "{{ input.order }}", "quantity": "{{ input.quantity }}"}"#.into(),
            response_mapping: vec![ResponseMapping {
                name: "ticket_id".into(),
                path: "ticket.id".into(),
                kind: "string".into(),
                required: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
    });
    let form = define(&mut h, form).await;
    // The catalogue describes the form's fields.
    let schema: serde_json::Value = serde_json::from_str(&form.input_schema).unwrap();
    assert_eq!(schema["required"], json!(["order", "quantity"]));

    let sent = execute(
        &mut h,
        &form,
        "form-1",
        "",
        json!({"input": {"order": "A-17", "quantity": "2"}}),
    )
    .await;
    assert_succeeded(&sent);
    assert_eq!(
        outputs(&sent),
        json!({"order": "A-17", "quantity": 2, "ticket_id": "T-9"})
    );
    // The converted answer kept its type in the request.
    assert!(
        sent.response_body.contains(r#""quantity":2"#),
        "{}",
        sent.response_body
    );
    let wrong = execute(
        &mut h,
        &form,
        "form-2",
        "",
        json!({"input": {"order": "17", "quantity": "9"}}),
    )
    .await;
    assert_failed(&wrong, FailureReason::InvalidInput);
    let fields: Vec<String> = outputs(&wrong)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["order", "quantity"]);

    let mut button = action("track_parcel", ActionKind::Button);
    button.button = Some(ButtonSpec {
        label: "Track".into(),
        open_url: "https://track.example.com/{{ input.parcel }}?lang=en".into(),
        on_click: None,
    });
    let button = define(&mut h, button).await;
    let opened = execute(
        &mut h,
        &button,
        "button-1",
        "",
        json!({"input": {"parcel": "P 1/2"}}),
    )
    .await;
    assert_succeeded(&opened);
    assert_eq!(
        outputs(&opened)["url"],
        "https://track.example.com/P%201%2F2?lang=en"
    );
    let mut both = action_named("both_ways", ActionKind::Button);
    both.button = Some(ButtonSpec {
        label: "Both".into(),
        open_url: "https://x.example.com".into(),
        on_click: Some(HttpSpec::default()),
    });
    assert_eq!(refused_fields(&mut h, both).await, ["button.open_url"]);
    h.stop().await;
}

#[tokio::test]
async fn database_queries_are_read_only_bound_and_bounded() {
    let mut h = Harness::start(true).await;
    let schema = TestSchema::new().await;
    let table = format!("{}.orders", schema.name);
    let pool = &sqlx::PgPool::connect(&schema.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {};
         CREATE SEQUENCE {}.numbers;
         CREATE TABLE {table} (id INT PRIMARY KEY, status TEXT NOT NULL, customer TEXT NOT NULL);
         INSERT INTO {table} SELECT i, CASE WHEN i % 2 = 0 THEN 'shipped' ELSE 'open' END, 'c' || i
           FROM generate_series(1, 50) AS i;",
        schema.name, schema.name
    )))
    .execute(pool)
    .await
    .unwrap();

    let query = |name: &str, statement: String, parameters: Vec<&str>, max_rows: u32| {
        let mut d = action(name, ActionKind::DatabaseQuery);
        d.database_query = Some(DatabaseQuerySpec {
            connection: QUERY_DB.into(),
            statement,
            parameters: parameters.into_iter().map(str::to_owned).collect(),
            max_rows,
            timeout_ms: 300,
            response_mapping: vec![],
        });
        d
    };
    let lookup = define(
        &mut h,
        query(
            "order_status",
            format!("SELECT id, status FROM {table} WHERE id = $1 OR customer = $2"),
            vec!["{{ input.id }}", "{{ input.customer }}"],
            10,
        ),
    )
    .await;
    let found = execute(
        &mut h,
        &lookup,
        "q-1",
        "",
        json!({"input": {"id": 4, "customer": "none"}}),
    )
    .await;
    assert_succeeded(&found);
    assert_eq!(
        outputs(&found),
        json!({"rows": [{"id": 4, "status": "shipped"}], "row_count": 1, "truncated": false})
    );
    // A value is bound, never spliced: an injection attempt is just a string that matches
    // no customer.
    let injected = execute(
        &mut h,
        &lookup,
        "q-2",
        "",
        json!({"input": {"id": 0, "customer": "x' OR '1'='1"}}),
    )
    .await;
    assert_succeeded(&injected);
    assert_eq!(outputs(&injected)["row_count"], 0);

    let all = define(
        &mut h,
        query(
            "all_orders",
            format!("SELECT id FROM {table} ORDER BY id"),
            vec![],
            5,
        ),
    )
    .await;
    let some = execute(&mut h, &all, "q-3", "", json!({})).await;
    assert_eq!(outputs(&some)["row_count"], 5);
    assert_eq!(outputs(&some)["truncated"], true);

    let writer = define(
        &mut h,
        query(
            "sneaky_write",
            format!("WITH gone AS (DELETE FROM {table} RETURNING id) SELECT id FROM gone"),
            vec![],
            5,
        ),
    )
    .await;
    let refused = execute(&mut h, &writer, "q-4", "", json!({})).await;
    assert_failed(&refused, FailureReason::Query);
    let side_effect = define(
        &mut h,
        query(
            "sneaky_sequence",
            format!("SELECT nextval('{}.numbers') AS n", schema.name),
            vec![],
            5,
        ),
    )
    .await;
    let refused = execute(&mut h, &side_effect, "q-4b", "", json!({})).await;
    assert_failed(&refused, FailureReason::Query);
    assert!(refused.error.contains("read-only"), "{}", refused.error);
    let count: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(count, 50, "nothing was deleted");

    let slow = define(
        &mut h,
        query(
            "slow_query",
            "SELECT pg_sleep(3)::text AS slept".into(),
            vec![],
            5,
        ),
    )
    .await;
    let timed_out = execute(&mut h, &slow, "q-5", "", json!({})).await;
    assert_failed(&timed_out, FailureReason::Timeout);

    let mut unknown = query("elsewhere", "SELECT 1".into(), vec![], 5);
    unknown.database_query.as_mut().unwrap().connection = "billing".into();
    assert_eq!(
        refused_fields(&mut h, unknown).await,
        ["database_query.connection"]
    );
    let spliced = query(
        "spliced",
        "SELECT * FROM t WHERE id = {{ input.id }}".into(),
        vec![],
        5,
    );
    assert_eq!(
        refused_fields(&mut h, spliced).await,
        ["database_query.statement"]
    );
    schema.drop().await;
    h.stop().await;
}

#[tokio::test]
async fn connexease_and_workflows_say_they_are_not_connected() {
    let mut h = Harness::start(true).await;
    let mut assign = action("assign_billing", ActionKind::Connexease);
    assign.connexease = Some(ConnexeaseSpec {
        operation: "assign_group".into(),
        arguments: [("group".to_owned(), "{{ input.group }}".to_owned())].into(),
    });
    let assign = define(&mut h, assign).await;
    let result = execute(
        &mut h,
        &assign,
        "cx-1",
        "conv_1",
        json!({"input": {"group": "billing"}}),
    )
    .await;
    assert_failed(&result, FailureReason::NotConnected);
    assert!(result.error.contains("SB-ACT-0020"), "{}", result.error);
    let dry = test_run(&mut h, &assign, json!({"input": {"group": "billing"}})).await;
    assert_succeeded(&dry);
    assert!(dry.dry_run);
    assert_eq!(outputs(&dry)["arguments"], json!({"group": "billing"}));

    let mut bad = action_named("bad_op", ActionKind::Connexease);
    bad.connexease = Some(ConnexeaseSpec {
        operation: "assign_group".into(),
        arguments: [("agent_email".to_owned(), "a@b.c".to_owned())].into(),
    });
    assert_eq!(
        refused_fields(&mut h, bad).await,
        ["connexease.arguments[agent_email]"]
    );

    let mut workflow = action("lookup_flow", ActionKind::Workflow);
    workflow.workflow = Some(WorkflowSpec {
        workflow: "lookup_order".into(),
        inputs: [("order".to_owned(), "{{ input.order }}".to_owned())].into(),
        timeout_ms: 0,
    });
    let workflow = define(&mut h, workflow).await;
    assert_eq!(workflow.workflow.as_ref().unwrap().timeout_ms, 30_000);
    let result = execute(
        &mut h,
        &workflow,
        "wf-1",
        "conv_1",
        json!({"input": {"order": "A-1"}}),
    )
    .await;
    assert_failed(&result, FailureReason::NotConnected);
    assert!(result.error.contains("SB-ACT-0021"), "{}", result.error);
    h.stop().await;
}

#[tokio::test]
async fn refusals_are_audited_and_retention_prunes_the_queryable_log() {
    let mut h = Harness::start(true).await;
    let mut guarded = action("refund_order", ActionKind::Calculation);
    guarded.confirmation_required = true;
    guarded.permission_level = PermissionLevel::Human as i32;
    guarded.calculation = Some(CalculationSpec {
        outputs: vec![Calculation {
            name: "refund".into(),
            expression: "input.amount".into(),
        }],
    });
    let guarded = define(&mut h, guarded).await;
    let vars = json!({"input": {"amount": 5}});
    let unconfirmed = execute(&mut h, &guarded, "r-1", "", vars.clone()).await;
    assert_failed(&unconfirmed, FailureReason::ConfirmationRequired);
    let mut request = ExecuteActionRequest {
        workspace_id: WS.into(),
        action_id: guarded.id.clone(),
        variables_json: vars.to_string(),
        idempotency_key: "r-2".into(),
        confirmed: true,
        caller_permission: PermissionLevel::Agent as i32,
        ..Default::default()
    };
    let forbidden = h
        .client
        .execute_action(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_failed(&forbidden, FailureReason::Forbidden);
    request.idempotency_key = "r-3".into();
    request.caller_permission = PermissionLevel::Human as i32;
    request.inject_result = true;
    let allowed = h.client.execute_action(request).await.unwrap().into_inner();
    assert_succeeded(&allowed);
    assert!(allowed.injected_into_conversation);
    assert!(!forbidden.injected_into_conversation);

    let list = |refusals_only| ListExecutionsRequest {
        workspace_id: WS.into(),
        action_id: guarded.id.clone(),
        refusals_only,
        limit: 10,
        ..Default::default()
    };
    let mut audit = Vec::new();
    for _ in 0..200 {
        audit = h
            .client
            .list_executions(list(true))
            .await
            .unwrap()
            .into_inner()
            .executions;
        if audit.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let reasons: Vec<(FailureReason, PermissionLevel, bool)> = audit
        .iter()
        .map(|e| (e.reason(), e.caller_permission(), e.confirmed))
        .collect();
    assert_eq!(
        reasons,
        [
            (FailureReason::Forbidden, PermissionLevel::Agent, true),
            // Recorded at the level it ran at: a call that claims none runs at the agent's.
            (
                FailureReason::ConfirmationRequired,
                PermissionLevel::Agent,
                false
            ),
        ]
    );
    assert_eq!(audit[0].kind(), ActionKind::Calculation);

    // Retention empties the queryable log; the events stay as the audit trail.
    let store = ActionStore::new(h.log.clone());
    let removed = store
        .prune_executions(switchboard_eventlog::now_micros() + 1)
        .await
        .unwrap();
    assert!(removed >= 3, "{removed}");
    assert!(
        h.client
            .list_executions(list(false))
            .await
            .unwrap()
            .into_inner()
            .executions
            .is_empty()
    );
    let events = common::events_until(&h.log, |events| {
        events
            .iter()
            .filter(|e| e.event_type == "action_execution.completed")
            .count()
            >= 3
    })
    .await;
    assert!(events.iter().any(|e| e.event_type == "action.executed"));
    h.stop().await;
}

/// Plants a claim on `key` as a run that died after claiming it would have left.
async fn plant_claim(h: &Harness, action: &ActionDefinition, key: &str, lease_until: i64) {
    use prost::Message as _;
    use switchboard_eventlog::{ExpectedVersion, Metadata, NewEvent, StreamRef};
    let started = ExecutionStarted {
        execution_id: format!("exec_planted_{key}"),
        action_id: action.id.clone(),
        idempotency_key: key.into(),
        lease_until,
        claim: 1,
        ..Default::default()
    };
    h.log
        .append(
            &StreamRef::new("action_execution", format!("{WS}/{key}")),
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "action_execution.started".into(),
                schema_version: 1,
                payload: started.encode_to_vec(),
                metadata: Metadata {
                    workspace_id: WS.into(),
                    occurred_at: switchboard_eventlog::now_micros(),
                    ..Default::default()
                },
            }],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_whose_run_died_is_taken_over_after_its_lease() {
    let mut h = Harness::start(true).await;
    let mut calc = action("double_it", ActionKind::Calculation);
    calc.calculation = Some(CalculationSpec {
        outputs: vec![Calculation {
            name: "doubled".into(),
            expression: "input.n * 2".into(),
        }],
    });
    let calc = define(&mut h, calc).await;
    let now = switchboard_eventlog::now_micros();
    plant_claim(&h, &calc, "held", now + 600_000_000).await;
    plant_claim(&h, &calc, "abandoned", now - 1).await;

    let held = h
        .client
        .execute_action(ExecuteActionRequest {
            workspace_id: WS.into(),
            action_id: calc.id.clone(),
            variables_json: json!({"input": {"n": 2}}).to_string(),
            idempotency_key: "held".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(held.code(), tonic::Code::Aborted, "{held:?}");

    let resumed = execute(&mut h, &calc, "abandoned", "", json!({"input": {"n": 2}})).await;
    assert_succeeded(&resumed);
    assert_eq!(resumed.execution_id, "exec_planted_abandoned");
    assert_eq!(outputs(&resumed)["doubled"], 4);
    let again = execute(&mut h, &calc, "abandoned", "", json!({"input": {"n": 3}})).await;
    assert_eq!(
        outputs(&again)["doubled"],
        4,
        "the recorded outcome answers"
    );
    let stream =
        switchboard_eventlog::StreamRef::new("action_execution", format!("{WS}/abandoned"));
    let types: Vec<String> = h
        .log
        .read_stream(&stream, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        [
            "action_execution.started",
            "action_execution.started",
            "action_execution.completed",
            "action.executed"
        ]
    );
    h.stop().await;
}
