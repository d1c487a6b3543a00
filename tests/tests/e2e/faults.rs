//! Work in flight when the cluster is hurt: NATS goes away and comes back; the process is
//! killed with SIGKILL in the middle of a webhook delivery, a delay or an action call;
//! Postgres goes silent. After the restart nothing is lost, what should happen once happens
//! once, and while the database is out of reach calls fail fast and `/readyz` says why.

use std::time::Duration;

use switchboard_eventlog::testing::{TestNats, unique_name};
use switchboard_proto::conversations::v1::{AddMessageRequest, StartConversationRequest};
use switchboard_proto::events::v1::{Author, Channel, MessageKind};

use crate::common::{
    Load, Partner, Process, SilentLink, WS, actions_client, agent_says, create_endpoint,
    customer_says, drop_schema, flow_edge, flow_node, free_port, header, lanes, lease_holder_pid,
    metrics, new_conversation, post_action, published_flow, readyz, say_node, serve_env,
    start_and_talk, webhook_receiver, webhooks_env,
};

/// NATS goes away and comes back, and the process is killed in the middle of a delivery:
/// no message is lost, and a message sent twice carries the same `webhook-id`.
#[tokio::test]
async fn webhooks_survive_a_nats_outage_and_kill_9_mid_delivery() {
    let nats_port = free_port();
    let store = std::env::temp_dir().join(unique_name());
    let mut nats_server = switchboard_eventlog::testing::spawn_nats_server(nats_port, &store);
    let schema_prefix = format!("{}_", unique_name());
    let env = webhooks_env(&schema_prefix, &format!("nats://127.0.0.1:{nats_port}"), "");
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut conversations = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let id = start_and_talk(&mut conversations).await;
    assert_eq!(hooks.wait_for(2).await.len(), 2);

    // NATS down: writes go on (the log is the truth); their webhooks wait for NATS.
    nats_server.kill().unwrap();
    nats_server.wait().unwrap();
    let say = |text: &str| AddMessageRequest {
        workspace_id: WS.into(),
        conversation_id: id.clone(),
        author: Author::Customer as i32,
        kind: MessageKind::Text as i32,
        text: text.into(),
        ..Default::default()
    };
    conversations
        .add_message(say("while NATS was down"))
        .await
        .unwrap();
    let mut nats_server = switchboard_eventlog::testing::spawn_nats_server(nats_port, &store);
    let got = hooks.wait_for(3).await;
    assert_eq!(got.len(), 3, "the change made while NATS was down arrived");
    assert!(got[2].1.contains("while NATS was down"));

    // Killed while the receiver holds a delivery: after the restart the same message
    // comes again, with the same webhook-id.
    hooks.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    conversations
        .add_message(say("in flight at the kill"))
        .await
        .unwrap();
    let got = hooks.wait_for(4).await;
    assert_eq!(got.len(), 4);
    let in_flight = header(&got[3].0, "webhook-id");
    process.kill9();
    hooks.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    process.start().await;
    for _ in 0..1200 {
        if hooks.times(&in_flight) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hooks.times(&in_flight) >= 2,
        "the delivery cut by the kill came again, with the same webhook-id"
    );
    let got = hooks.distinct();
    assert!(got.last().unwrap().1.contains("in flight at the kill"));
    let sequences: Vec<String> = got
        .iter()
        .map(|(h, _)| header(h, "webhook-sequence"))
        .collect();
    assert_eq!(sequences, ["1", "2", "3", "4"], "nothing lost, in order");

    assert_eq!(process.terminate().code(), Some(0));
    nats_server.kill().unwrap();
    nats_server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&store);
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
}

/// kill -9 while a run waits on its delay: after the restart the timer fires, once.
#[tokio::test]
async fn a_delay_survives_kill_9_and_fires_once() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(&["dev", "--data-dir", &data_dir], vec![]);
    let mut conversations = process.start().await;
    published_flow(
        process.grpc_port,
        "later",
        FlowKind::ConversationFlow,
        Graph {
            nodes: vec![
                flow_node("start", node::Kind::Start(Start {})),
                flow_node("wait", node::Kind::Delay(Delay { seconds: 2 })),
                say_node("hello", "Sorry for the wait!"),
                flow_node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                flow_edge("start", "wait", ""),
                flow_edge("wait", "hello", ""),
                flow_edge("hello", "end", ""),
            ],
            ..Default::default()
        },
    )
    .await;
    let conversation = conversations
        .start_conversation(StartConversationRequest {
            workspace_id: WS.into(),
            request_id: "delayed".into(),
            channel: Channel::Api as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .id;
    // The run has armed its timer (it waits); kill the process before it fires.
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.kill9();
    let mut conversations = process.start().await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Sorry for the wait!"]
    );
    // Well past the delay: still exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 1).await,
        ["Sorry for the wait!"]
    );
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// kill -9 while a run waits on its action: after the restart the run goes on from the
/// action's outcome, the partner sees the same idempotency key again (so the refund
/// happens once) and the customer hears the answer once.
#[tokio::test]
async fn a_run_waiting_on_an_action_survives_kill_9_and_its_effect_happens_once() {
    use switchboard_proto::flows::v1::*;

    let dir = std::env::temp_dir().join(unique_name());
    let data_dir = dir.to_string_lossy().to_string();
    let mut process = Process::new(
        &["dev", "--data-dir", &data_dir],
        vec![("SWITCHBOARD_OUTBOUND_ALLOW".into(), "127.0.0.0/8".into())],
    );
    let mut conversations = process.start().await;
    let partner = Partner::default();
    partner
        .hold_first_refund
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let api = partner.serve().await;
    let mut actions = actions_client(process.grpc_port).await;
    let refund = post_action(
        &mut actions,
        "refund",
        format!("http://{api}/refunds"),
        r#"{"order": "{{ input.order }}"}"#,
        Some(("refund_id", "$.refund_id")),
        &[],
    )
    .await;
    let graph = Graph {
        nodes: vec![
            flow_node("start", node::Kind::Start(Start {})),
            say_node("ask", "Which order should we refund?"),
            flow_node(
                "capture",
                node::Kind::CaptureInput(CaptureInput {
                    variable: "session.order".into(),
                    validation: "number".into(),
                    ..Default::default()
                }),
            ),
            flow_node(
                "refund",
                node::Kind::ApiCall(ApiCall {
                    action_id: refund,
                    inputs: [("order".to_owned(), "{{ session.order }}".to_owned())].into(),
                }),
            ),
            say_node("done", "Refund {{ nodes.refund.refund_id }} is on its way."),
            say_node("sorry", "The refund did not go through."),
            flow_node("end", node::Kind::End(End::default())),
        ],
        edges: vec![
            flow_edge("start", "ask", ""),
            flow_edge("ask", "capture", ""),
            flow_edge("capture", "refund", ""),
            flow_edge("refund", "done", "success"),
            flow_edge("refund", "sorry", "failure"),
            flow_edge("done", "end", ""),
            flow_edge("sorry", "end", ""),
        ],
        ..Default::default()
    };
    published_flow(
        process.grpc_port,
        "refunds",
        FlowKind::ConversationFlow,
        graph,
    )
    .await;
    let conversation = new_conversation(&mut conversations, "refund-kill").await;
    agent_says(&mut conversations, &conversation, 1).await;
    customer_says(&mut conversations, &conversation, "4711").await;

    // The refund request is at the partner, unanswered: kill the whole cluster.
    for _ in 0..600 {
        if !partner.refund_requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(partner.refund_requests.lock().unwrap().len(), 1);
    process.kill9();

    let mut conversations = process.start().await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await,
        [
            "Which order should we refund?",
            "Refund rf_1 is on its way."
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent_says(&mut conversations, &conversation, 2).await.len(),
        2,
        "the answer is said once"
    );
    let requests = partner.refund_requests.lock().unwrap().clone();
    assert!(
        requests.len() >= 2,
        "the request was made again: {requests:?}"
    );
    assert!(
        requests.iter().all(|key| *key == requests[0]),
        "every attempt carries the same idempotency key: {requests:?}"
    );
    assert!(requests[0].ends_with("/refund/1"), "{requests:?}");
    assert_eq!(partner.refunds_applied.lock().unwrap().len(), 1);
    assert_eq!(process.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Postgres goes silent (no FIN: a frozen host): a call answers `UNAVAILABLE` after the
/// acquire timeout, long before the caller's deadline, and `/readyz` turns 503 naming the
/// store; when the database is back, so is the service.
#[tokio::test]
async fn a_silent_database_fails_calls_fast_and_readyz_says_so() {
    let nats = TestNats::new().await;
    let link = SilentLink::to_postgres().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = serve_env(&schema_prefix, &nats);
    env.retain(|(k, _)| k != "SWITCHBOARD_DATABASE_URL");
    env.push(("SWITCHBOARD_DATABASE_URL".into(), link.database_url()));
    env.push((
        "SWITCHBOARD_DATABASE_ACQUIRE_TIMEOUT_SECS".into(),
        "2".into(),
    ));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations",
            "--allow-unauthenticated",
        ],
        env,
    );
    let mut client = process.start().await;
    assert_eq!(readyz(process.http_port).await.0, 200);
    let start = || {
        let mut request = tonic::Request::new(StartConversationRequest {
            workspace_id: WS.into(),
            channel: Channel::Api as i32,
            ..Default::default()
        });
        // Half the old 30 s wait: only a prompt answer fits.
        request.set_timeout(Duration::from_secs(15));
        request
    };
    client.start_conversation(start()).await.unwrap();

    link.cut();
    let status = client.start_conversation(start()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let mut seen = (0, String::new());
    for _ in 0..60 {
        seen = readyz(process.http_port).await;
        if seen.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen.0, 503, "{}", seen.1);
    assert!(seen.1.contains("conversations store"), "{}", seen.1);

    link.restore();
    let mut back = false;
    for _ in 0..120 {
        if readyz(process.http_port).await.0 == 200
            && client.start_conversation(start()).await.is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "the service did not come back with its database");
    assert!(process.terminate().success());
    drop_schema(&format!("{schema_prefix}conversations")).await;
}

/// Two replicas of the same services share the store; the one leading every role (the
/// conversations relay, the webhook dispatcher) is frozen with SIGSTOP under load, its
/// connections open and silent. The other takes over within the lease term, every change
/// reaches the receiver in order, and a webhook is sent twice only if the frozen one had
/// an attempt of it in hand (a fault, like a crash); after SIGCONT it stands by.
#[tokio::test]
async fn a_frozen_leader_is_taken_over_within_its_lease_and_nothing_is_lost() {
    leader_fault(LeaderFault::Freeze).await;
}

/// The same with the leader killed (SIGKILL) under load.
#[tokio::test]
async fn a_killed_leader_is_taken_over_within_its_lease_and_nothing_is_lost() {
    leader_fault(LeaderFault::Kill).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaderFault {
    Freeze,
    Kill,
}

async fn leader_fault(fault: LeaderFault) {
    use std::collections::HashMap;

    let nats = TestNats::new().await;
    let schema_prefix = format!("{}_", unique_name());
    let conversations_schema = format!("{schema_prefix}conversations");
    let webhooks_schema = format!("{schema_prefix}webhooks");
    let mut env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    env.push(("SWITCHBOARD_LEASE_TERM_SECS".into(), "2".into()));
    // Frozen inside a transaction, the leader holds back the relays and its lease until
    // Postgres ends that transaction: after this, here.
    env.push((
        "SWITCHBOARD_DATABASE_IDLE_IN_TRANSACTION_SECS".into(),
        "3".into(),
    ));
    let args = [
        "serve",
        "--services",
        "conversations,webhooks",
        "--allow-unauthenticated",
    ];
    let mut leader = Process::new(&args, env.clone());
    leader.start().await;
    let holds = |pid: u32| {
        let (conversations_schema, webhooks_schema) =
            (conversations_schema.clone(), webhooks_schema.clone());
        async move {
            lease_holder_pid(&conversations_schema, "relay:conversations").await == Some(pid)
                && lease_holder_pid(&webhooks_schema, "webhooks-dispatcher").await == Some(pid)
        }
    };
    let mut led = false;
    for _ in 0..200 {
        if holds(leader.pid()).await {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(led, "the first replica leads every role");
    let mut standby = Process::new(&args, env);
    let client = standby.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(standby.grpc_port, addr).await;

    // Steady load through the standby: five conversations, a message every 20 ms.
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(new_conversation(&mut client.clone(), &format!("{fault:?}-{n}")).await);
    }
    let load = Load::start(client.clone(), &ids, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;

    match fault {
        LeaderFault::Freeze => leader.signal("STOP"),
        LeaderFault::Kill => leader.kill9(),
    }
    let frozen_at = std::time::Instant::now();
    let frozen_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut taken = None;
    while frozen_at.elapsed() < Duration::from_secs(30) {
        if holds(standby.pid()).await {
            taken = Some(frozen_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = taken.expect("the standby took every role over");
    // The term (2 s), or the idle transaction's end (3 s) if the leader froze inside a
    // fenced write, then a standby's next ask (1 s) and a slow machine's slack.
    assert!(taken < Duration::from_secs(10), "took over after {taken:?}");
    // The new holder says so, and how far behind its relay is.
    let mut exported = String::new();
    for _ in 0..100 {
        exported = metrics(standby.http_port).await;
        if exported.contains("relay_lag_events{service=\"conversations\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exported.contains("lease_held{lease=\"relay:conversations\"} 1"),
        "{exported}"
    );
    assert!(exported.contains("relay_lag_events{service=\"conversations\"}"));

    tokio::time::sleep(Duration::from_secs(2)).await;
    if fault == LeaderFault::Freeze {
        leader.signal("CONT");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = load.stop().await;
    assert!(
        holds(standby.pid()).await,
        "the replica that woke up stands by"
    );

    // Per conversation: created, then one update per message.
    let expected: usize = ids.iter().map(|id| 1 + sent.get(id).unwrap_or(&0)).sum();
    let got = hooks.wait_for(expected).await;
    let lanes = lanes(&hooks);
    assert_eq!(got.len(), expected, "every change arrived");
    for id in &ids {
        let lane = &lanes[id];
        let in_order: Vec<u64> = (1..=lane.len() as u64).collect();
        assert_eq!(lane, &in_order, "{id}: nothing lost, in order");
    }
    // A message goes out twice only if the frozen leader had an attempt of it in hand:
    // one of its copies was signed (webhook-timestamp) by the time of the freeze.
    let mut copies: HashMap<String, Vec<u64>> = HashMap::new();
    for (headers, _) in hooks.got() {
        copies
            .entry(header(&headers, "webhook-id"))
            .or_default()
            .push(header(&headers, "webhook-timestamp").parse().unwrap());
    }
    for (id, stamps) in copies {
        assert!(
            stamps.len() == 1 || stamps.iter().any(|&at| at <= frozen_unix),
            "{id} was sent {} times, none of them prepared before the freeze",
            stamps.len()
        );
    }

    assert_eq!(standby.terminate().code(), Some(0));
    if fault == LeaderFault::Freeze {
        assert_eq!(leader.terminate().code(), Some(0));
    }
    drop_schema(&conversations_schema).await;
    drop_schema(&webhooks_schema).await;
}

/// Postgres restarts under load and stays down (`SWITCHBOARD_FAULT_HOLD_SECS`, 8 s in
/// `make test`, a minute in `make faults`): calls fail fast with UNAVAILABLE meanwhile,
/// and once it is back every acknowledged message reaches the webhook receiver, each
/// conversation's sequence whole and in order, and no webhook is POSTed twice (no process
/// crashed: an attempt that went out waits for the database to record it).
#[tokio::test]
async fn postgres_held_down_under_load_loses_nothing_and_sends_nothing_twice() {
    let hold = std::env::var("SWITCHBOARD_FAULT_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8u64);
    let nats = TestNats::new().await;
    let link = SilentLink::to_postgres().await;
    let schema_prefix = format!("{}_", unique_name());
    let mut env = webhooks_env(
        &schema_prefix,
        &switchboard_eventlog::testing::nats_url(),
        &nats.prefix,
    );
    env.retain(|(k, _)| k != "SWITCHBOARD_DATABASE_URL");
    env.push(("SWITCHBOARD_DATABASE_URL".into(), link.database_url()));
    env.push((
        "SWITCHBOARD_DATABASE_ACQUIRE_TIMEOUT_SECS".into(),
        "2".into(),
    ));
    let mut process = Process::new(
        &[
            "serve",
            "--services",
            "conversations,webhooks",
            "--allow-unauthenticated",
        ],
        env,
    );
    let client = process.start().await;
    let (addr, hooks) = webhook_receiver().await;
    create_endpoint(process.grpc_port, addr).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(new_conversation(&mut client.clone(), &format!("held-{n}")).await);
    }
    let load = Load::through_faults(client.clone(), &ids, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;

    link.down();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let (status, why) = readyz(process.http_port).await;
    assert_eq!(status, 503, "not ready while the database is down: {why}");
    link.restore();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = load.stop().await;

    // Each acknowledged message arrived; each conversation's sequence is whole.
    let expected: usize = ids.iter().map(|id| 1 + sent.get(id).unwrap_or(&0)).sum();
    let got = hooks.wait_for(expected).await;
    assert!(got.len() >= expected, "{} of {expected} arrived", got.len());
    let lanes = lanes(&hooks);
    for id in &ids {
        let lane = &lanes[id];
        assert!(lane.len() > *sent.get(id).unwrap_or(&0), "{id}: {lane:?}");
        let in_order: Vec<u64> = (1..=lane.len() as u64).collect();
        assert_eq!(lane, &in_order, "{id}: nothing lost, in order");
    }
    let twice: Vec<String> = hooks
        .got()
        .iter()
        .map(|(h, _)| header(h, "webhook-id"))
        .filter(|id| hooks.times(id) > 1)
        .collect();
    assert!(twice.is_empty(), "POSTed twice without a crash: {twice:?}");
    assert_eq!(readyz(process.http_port).await.0, 200);

    assert_eq!(process.terminate().code(), Some(0));
    drop_schema(&format!("{schema_prefix}conversations")).await;
    drop_schema(&format!("{schema_prefix}webhooks")).await;
}
