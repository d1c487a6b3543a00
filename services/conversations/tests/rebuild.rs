//! Live state equals rebuild: random command sequences, then the read model must equal
//! both the fold of each stream and a rebuild of the read model from position 0.

mod common;

use std::collections::HashMap;

use common::{Backend, Harness};
use proptest::prelude::*;
use switchboard_conversations::domain::Command;
use switchboard_conversations::service::{RequestContext, new_id};
use switchboard_conversations::{ConversationService, ConversationStore, ConversationsProjection};
use switchboard_eventlog::EventLog;
use switchboard_proto::events::v1::{Author, Channel, Conversation, Lead, Message, MessageKind};

const WS: &str = "ws_prop";

#[derive(Debug, Clone)]
enum Op {
    Message(usize, String),
    Status(usize, i32),
    SetMeta(usize, u8, String),
    RemoveMeta(usize, u8),
    Assign(usize, u8),
    Analysis(usize, u8, i32),
    End(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let conv = 0usize..3;
    prop_oneof![
        (conv.clone(), "[a-z ]{1,20}").prop_map(|(c, t)| Op::Message(c, t)),
        (conv.clone(), 1i32..=4).prop_map(|(c, s)| Op::Status(c, s)),
        (conv.clone(), 0u8..6, "[a-z0-9]{0,8}").prop_map(|(c, k, v)| Op::SetMeta(c, k, v)),
        (conv.clone(), 0u8..6).prop_map(|(c, k)| Op::RemoveMeta(c, k)),
        (conv.clone(), 0u8..3).prop_map(|(c, g)| Op::Assign(c, g)),
        (conv.clone(), 0u8..3, 0i32..=4).prop_map(|(c, t, s)| Op::Analysis(c, t, s)),
        conv.prop_map(Op::End),
    ]
}

fn command(op: &Op) -> (usize, Command) {
    match op.clone() {
        Op::Message(c, text) => (
            c,
            Command::AddMessage {
                message_id: new_id("msg"),
                author: Author::Customer as i32,
                kind: MessageKind::Text as i32,
                text,
                form: None,
                buttons: vec![],
                sentiment: 0,
            },
        ),
        Op::Status(c, status) => (c, Command::SetStatus { status }),
        Op::SetMeta(c, k, v) => (
            c,
            Command::SetMetafields {
                metafields: HashMap::from([(format!("k{k}"), v)]),
            },
        ),
        Op::RemoveMeta(c, k) => (
            c,
            Command::RemoveMetafields {
                keys: vec![format!("k{k}")],
            },
        ),
        Op::Assign(c, g) => (
            c,
            Command::Assign {
                group: format!("group-{g}"),
                agent: String::new(),
            },
        ),
        Op::Analysis(c, t, s) => (
            c,
            Command::RecordAnalysis {
                topic: format!("topic-{t}"),
                sentiment: s,
                custom: HashMap::new(),
                topics: vec![format!("topic-{t}"), "shared".to_owned()],
            },
        ),
        Op::End(c) => (
            c,
            Command::End {
                reason: "done".into(),
            },
        ),
    }
}

async fn snapshot(store: &ConversationStore) -> Vec<(Conversation, Vec<Message>)> {
    let mut out = Vec::new();
    let page = store.list(WS, &Default::default(), 100, "").await.unwrap();
    for c in page.items {
        let messages = store.messages(WS, &c.id, 100, "").await.unwrap().items;
        out.push((c, messages));
    }
    out
}

async fn check(backend: Backend, ops: Vec<Op>) {
    let h = Harness::start(backend).await;
    let log: EventLog = h.log.clone();
    let service = ConversationService::new(log.clone());
    let store = ConversationStore::new(log.clone());
    let ctx = RequestContext {
        workspace_id: WS.into(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = new_id("conv");
        let start = Command::Start {
            conversation_id: id.clone(),
            workspace_id: WS.into(),
            channel: Channel::Api as i32,
            user_id: "u".into(),
            lead: Lead::default(),
            agent_id: String::new(),
            metafields: HashMap::new(),
            sealed_secure_metadata: Vec::new(),
        };
        service.execute(&ctx, &id, start).await.unwrap();
        ids.push(id);
    }
    for op in &ops {
        let (c, command) = command(op);
        // Refusals (a message after the end, say) are part of the game: they must leave
        // no trace.
        let _ = service.execute(&ctx, &ids[c], command).await;
    }
    for id in &ids {
        let (folded, _) = service.load(WS, id).await.unwrap();
        let served = store.get(WS, id).await.unwrap();
        assert_eq!(
            served,
            Some(folded.unwrap().conversation),
            "read model equals the fold"
        );
    }
    let live = snapshot(&store).await;
    log.rebuild(&ConversationsProjection, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        snapshot(&store).await,
        live,
        "read model equals a rebuild from position 0"
    );
    h.stop().await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn live_state_equals_rebuild_sqlite(ops in prop::collection::vec(op(), 0..40)) {
        runtime().block_on(check(Backend::Sqlite, ops));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn live_state_equals_rebuild_postgres(ops in prop::collection::vec(op(), 0..40)) {
        runtime().block_on(check(Backend::Postgres, ops));
    }
}
