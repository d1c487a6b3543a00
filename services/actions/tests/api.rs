//! The actions API over real gRPC, on Postgres and on SQLite.

mod common;

use std::collections::HashMap;

use common::{Harness, SECRET, WS};
use switchboard_proto::actions::v1::*;
use tonic::Code;
use tonic_types::StatusExt;

fn lookup_order(name: &str) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: "Looks up the status of a customer's order".into(),
        when_not_to_use: "The customer has not given an order number".into(),
        trigger: "The customer asks about an order".into(),
        input_schema: r#"{"type":"object","properties":{"order_number":{"type":"string"}},"required":["order_number"]}"#.into(),
        kind: ActionKind::Http as i32,
        http: Some(HttpSpec {
            method: "GET".into(),
            url: "https://shop.example.com/orders/{{ input.order_number }}?c={{ conversation.id }}".into(),
            headers: HashMap::from([("X-Workspace".into(), "{{ workspace.id }}".into())]),
            auth: Some(HttpAuth {
                kind: AuthKind::Bearer as i32,
                secret: SECRET.into(),
                ..Default::default()
            }),
            response_mapping: vec![ResponseMapping {
                name: "status".into(),
                path: "data.status".into(),
                kind: "string".into(),
                required: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create(
    h: &mut Harness,
    workspace: &str,
    definition: ActionDefinition,
) -> Result<ActionDefinition, tonic::Status> {
    h.client
        .create_action(CreateActionRequest {
            workspace_id: workspace.into(),
            request_id: String::new(),
            definition: Some(definition),
        })
        .await
        .map(|r| r.into_inner().action.unwrap())
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test]
            async fn postgres() { super::$name(true).await }
            #[tokio::test]
            async fn sqlite() { super::$name(false).await }
        }
    )*};
}

on_both_backends!(
    definitions_are_versioned_and_secrets_never_leave,
    bad_definitions_are_refused_field_by_field,
    names_are_unique_per_workspace,
    the_tool_catalogue_lists_enabled_actions,
    a_deleted_action_is_gone_its_name_free_and_its_executions_kept
);

async fn definitions_are_versioned_and_secrets_never_leave(postgres: bool) {
    let mut h = Harness::start(postgres).await;
    let created = create(&mut h, WS, lookup_order("lookup_order"))
        .await
        .unwrap();
    assert!(created.id.starts_with("act_"));
    assert_eq!((created.version, created.enabled), (1, true));
    let auth = created.http.as_ref().unwrap().auth.clone().unwrap();
    assert!(auth.secret_set && auth.secret.is_empty() && auth.sealed_secret.is_empty());
    assert_eq!(created.http.as_ref().unwrap().timeout_ms, 10_000);

    // An update without a secret keeps the stored one; a stale expected version is refused.
    let mut changed = lookup_order("lookup_order");
    changed.description = "Finds an order".into();
    changed
        .http
        .as_mut()
        .unwrap()
        .auth
        .as_mut()
        .unwrap()
        .secret
        .clear();
    let update = |version: u64, definition: ActionDefinition| UpdateActionRequest {
        workspace_id: WS.into(),
        request_id: String::new(),
        action_id: created.id.clone(),
        definition: Some(definition),
        expected_version: version,
    };
    let updated = h
        .client
        .update_action(update(1, changed.clone()))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(updated.version, 2);
    assert!(
        updated
            .http
            .as_ref()
            .unwrap()
            .auth
            .as_ref()
            .unwrap()
            .secret_set
    );
    let stale = h
        .client
        .update_action(update(1, changed))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    // Another workspace sees nothing.
    let other = h
        .client
        .get_action(GetActionRequest {
            workspace_id: "ws_other".into(),
            action_id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);

    // The secret is in no event and no row, only sealed.
    let events = common::events_until(&h.log, |e| e.len() >= 2).await;
    assert_eq!(events.len(), 2);
    for event in &events {
        assert!(
            !event
                .payload
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes()),
            "secret in {}",
            event.event_type
        );
    }

    // Rebuilt from the log, the read model serves the same.
    let before = h
        .client
        .get_action(GetActionRequest {
            workspace_id: WS.into(),
            action_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    h.log
        .rebuild(&switchboard_actions::ActionsProjection, &mut |_| {})
        .await
        .unwrap();
    let after = h
        .client
        .get_action(GetActionRequest {
            workspace_id: WS.into(),
            action_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
    h.stop().await;
}

async fn bad_definitions_are_refused_field_by_field(postgres: bool) {
    let mut h = Harness::start(postgres).await;
    let mut bad = lookup_order("lookup_order");
    bad.input_schema = r#"{"type":"object","properties":{"n":{"type":12}}}"#.into();
    let http = bad.http.as_mut().unwrap();
    http.url = "ftp://shop.example.com/{{ env.HOME }}".into();
    http.timeout_ms = 120_001;
    http.headers
        .insert("X-Thing".into(), "{{ cookies.session }}".into());
    http.method = "POST".into();
    http.cache_ttl_seconds = 60;
    let err = create(&mut h, WS, bad).await.unwrap_err();
    let found = fields(&err);
    for expected in [
        "input_schema",
        "http.url",
        "http.timeout_ms",
        "http.headers[X-Thing]",
        "http.cache_ttl_seconds",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} not in {found:?}"
        );
    }
    // The fields every request carries, the definition's own and its query database, all
    // in one answer, on a creation and on an update.
    let mut several = lookup_order("lookup_order");
    several.description.clear();
    several.http.as_mut().unwrap().url = "ftp://shop.example.com/".into();
    several.database_query = Some(DatabaseQuerySpec {
        connection: "not_configured".into(),
        ..Default::default()
    });
    let err = create(&mut h, "acme; drop", several.clone())
        .await
        .unwrap_err();
    let found = fields(&err);
    for expected in [
        "workspace_id",
        "description",
        "http.url",
        "database_query.connection",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} not in {found:?}"
        );
    }
    let err = h
        .client
        .update_action(UpdateActionRequest {
            workspace_id: WS.into(),
            request_id: "r".repeat(129),
            action_id: "not-an-action".into(),
            definition: Some(several),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    let found = fields(&err);
    for expected in [
        "request_id",
        "action_id",
        "description",
        "http.url",
        "database_query.connection",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} not in {found:?}"
        );
    }
    let mut unknown = lookup_order("uses_unknown_namespace");
    unknown.http.as_mut().unwrap().url = "https://x.example/{{ env.HOME }}".into();
    let err = create(&mut h, WS, unknown).await.unwrap_err();
    assert!(
        err.message().contains("unknown variable namespace `env`"),
        "{}",
        err.message()
    );
    let list = h
        .client
        .list_actions(ListActionsRequest {
            workspace_id: WS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.actions.is_empty(), "nothing refused was stored");
    h.stop().await;
}

async fn names_are_unique_per_workspace(postgres: bool) {
    let mut h = Harness::start(postgres).await;
    create(&mut h, WS, lookup_order("lookup_order"))
        .await
        .unwrap();
    let err = create(&mut h, WS, lookup_order("lookup_order"))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["name"]);
    create(&mut h, "ws_elsewhere", lookup_order("lookup_order"))
        .await
        .unwrap();
    // Renaming onto a taken name is refused too.
    let second = create(&mut h, WS, lookup_order("cancel_order"))
        .await
        .unwrap();
    let err = h
        .client
        .update_action(UpdateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: second.id.clone(),
            definition: Some(lookup_order("lookup_order")),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["name"]);
    h.stop().await;
}

async fn the_tool_catalogue_lists_enabled_actions(postgres: bool) {
    let mut h = Harness::start(postgres).await;
    let mut confirm = lookup_order("refund_order");
    confirm.confirmation_required = true;
    let refund = create(&mut h, WS, confirm).await.unwrap();
    let lookup = create(&mut h, WS, lookup_order("lookup_order"))
        .await
        .unwrap();
    create(&mut h, WS, lookup_order("zz_last")).await.unwrap();
    // Only a human may run it: never offered to the model.
    let mut human_only = lookup_order("close_account");
    human_only.permission_level = PermissionLevel::Human as i32;
    create(&mut h, WS, human_only).await.unwrap();
    h.client
        .set_action_enabled(SetActionEnabledRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: lookup.id.clone(),
            enabled: false,
        })
        .await
        .unwrap();
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
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["refund_order", "zz_last"]);
    let refund_tool = &tools[0];
    assert!(refund_tool.confirmation_required);
    assert!(
        refund_tool
            .description
            .contains("Do not use when: The customer has not given an order number")
    );
    assert!(
        refund_tool
            .description
            .contains("Use when: The customer asks about an order")
    );
    let function: serde_json::Value = serde_json::from_str(&refund_tool.function_json).unwrap();
    assert_eq!(function["function"]["name"], "refund_order");
    assert_eq!(
        function["function"]["parameters"]["required"][0],
        "order_number"
    );
    assert!(!refund_tool.function_json.contains(SECRET));
    let _ = refund;

    // Pages by name.
    let page = h
        .client
        .list_actions(ListActionsRequest {
            workspace_id: WS.into(),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.actions.len(), 2);
    let rest = h
        .client
        .list_actions(ListActionsRequest {
            workspace_id: WS.into(),
            limit: 2,
            cursor: page.next_cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.actions
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        vec!["refund_order", "zz_last"]
    );
    assert!(rest.next_cursor.is_empty());
    h.stop().await;
}

/// An action that runs without the network.
fn total(name: &str) -> ActionDefinition {
    ActionDefinition {
        name: name.into(),
        description: "Adds the order's lines up".into(),
        kind: ActionKind::Calculation as i32,
        calculation: Some(CalculationSpec {
            outputs: vec![Calculation {
                name: "total".into(),
                expression: "input.price * 2".into(),
            }],
        }),
        ..Default::default()
    }
}

async fn a_deleted_action_is_gone_its_name_free_and_its_executions_kept(postgres: bool) {
    use switchboard_actions::domain::event_types::DELETED;
    let mut h = Harness::start(postgres).await;
    let action = create(&mut h, WS, total("order_total")).await.unwrap();
    let kept = create(&mut h, WS, total("other_total")).await.unwrap();
    let execute = |key: &str| ExecuteActionRequest {
        workspace_id: WS.into(),
        action_id: action.id.clone(),
        variables_json: r#"{"input": {"price": 4}}"#.into(),
        idempotency_key: key.into(),
        caller_permission: PermissionLevel::Agent as i32,
        ..Default::default()
    };
    let ran = h
        .client
        .execute_action(execute("before-delete"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ran.outcome(), Outcome::Success, "{ran:?}");
    let delete = |workspace: &str, request_id: &str| DeleteActionRequest {
        workspace_id: workspace.into(),
        action_id: action.id.clone(),
        request_id: request_id.into(),
    };

    // Another workspace's action is not there to delete.
    let elsewhere = h
        .client
        .delete_action(delete("ws_other", "del-1"))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);

    // The answer is the definition as it was deleted; a retry answers the same.
    let deleted = h
        .client
        .delete_action(delete(WS, "del-1"))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(
        (deleted.id.as_str(), deleted.name.as_str(), deleted.version),
        (action.id.as_str(), "order_total", 2)
    );
    let retried = h
        .client
        .delete_action(delete(WS, "del-1"))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(retried, deleted);
    // A new request is refused: there is nothing left to delete.
    let again = h
        .client
        .delete_action(delete(WS, "del-2"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Every read and write treats it as gone.
    let get = h
        .client
        .get_action(GetActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let update = h
        .client
        .update_action(UpdateActionRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: action.id.clone(),
            definition: Some(total("order_total")),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound);
    let enable = h
        .client
        .set_action_enabled(SetActionEnabledRequest {
            workspace_id: WS.into(),
            request_id: String::new(),
            action_id: action.id.clone(),
            enabled: false,
        })
        .await
        .unwrap_err();
    assert_eq!(enable.code(), Code::NotFound);
    let run = h
        .client
        .execute_action(execute("after-delete"))
        .await
        .unwrap_err();
    assert_eq!(run.code(), Code::NotFound);
    let test = h
        .client
        .test_action(TestActionRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            variables_json: r#"{"input": {"price": 4}}"#.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(test.code(), Code::NotFound);
    let listed = |h: &Harness| {
        let mut client = h.client.clone();
        async move {
            let actions = client
                .list_actions(ListActionsRequest {
                    workspace_id: WS.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .actions;
            let tools = client
                .list_agent_tools(ListAgentToolsRequest {
                    workspace_id: WS.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tools;
            (
                actions.into_iter().map(|a| a.id).collect::<Vec<_>>(),
                tools.into_iter().map(|t| t.name).collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(
        listed(&h).await,
        (vec![kept.id.clone()], vec!["other_total".to_owned()])
    );

    // Its execution stays in the log, for the audit.
    let executions = h
        .client
        .list_executions(ListExecutionsRequest {
            workspace_id: WS.into(),
            action_id: action.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions;
    assert_eq!(
        executions
            .iter()
            .map(|e| e.execution_id.as_str())
            .collect::<Vec<_>>(),
        vec![ran.execution_id.as_str()]
    );

    // Its name is free: a new action takes it, with a new id.
    let successor = create(&mut h, WS, total("order_total")).await.unwrap();
    assert_ne!(successor.id, action.id);
    assert_eq!(successor.version, 1);

    // Rebuilt from the log, the read model says the same.
    let before = listed(&h).await;
    h.log
        .rebuild(&switchboard_actions::ActionsProjection, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(listed(&h).await, before);
    assert_eq!(before.0.len(), 2);
    let events = common::events_until(&h.log, |e| e.iter().any(|e| e.event_type == DELETED)).await;
    assert_eq!(
        events.iter().filter(|e| e.event_type == DELETED).count(),
        1,
        "the retry appended nothing"
    );
    h.stop().await;
}
