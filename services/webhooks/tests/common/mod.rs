//! A real webhooks service on its own Postgres schema, its dispatcher on a clock the test
//! moves, and a real HTTP receiver on loopback whose answers the test scripts.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;
use switchboard_eventlog::testing::TestSchema;
use switchboard_eventlog::{Metadata, RecordedEvent, Router, StreamRef};
use switchboard_proto::events::v1::{Conversation, ConversationUpdatedEvent};
use switchboard_proto::webhooks::v1::{CreateEndpointRequest, Endpoint};
use switchboard_secrets::Keyring;
use switchboard_webhooks::consumers::FanOut;
use switchboard_webhooks::domain::{RetrySchedule, UrlRules};
use switchboard_webhooks::service::Clock;
use switchboard_webhooks::{DeliveryConfig, Dispatcher, Settings, WebhooksService};

pub const WS: &str = "ws_hooks";

/// Routes every event as public, under its own type (`events.<ws>.<event_type>`), as the
/// producers' routers do for their public events.
pub struct ByType;

impl Router for ByType {
    fn subject(&self, event: &RecordedEvent) -> Option<String> {
        Some(format!(
            "events.{}.{}",
            event.metadata.workspace_id, event.event_type
        ))
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
    pub path: String,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// How the receiver answers: scripted statuses first (per conversation when keyed), then
/// 200. A delay makes it hang.
#[derive(Default)]
pub struct Script {
    pub statuses: VecDeque<(u16, Vec<(String, String)>)>,
    pub by_conversation: HashMap<String, VecDeque<u16>>,
    pub always: Option<u16>,
    pub delay: Option<Duration>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<Script>>,
}

impl Receiver {
    pub fn got(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn answer(&self, status: u16) {
        self.script
            .lock()
            .unwrap()
            .statuses
            .push_back((status, vec![]));
    }

    pub fn answer_with(&self, status: u16, headers: &[(&str, &str)]) {
        self.script.lock().unwrap().statuses.push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ));
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = String::from_utf8_lossy(&body).into_owned();
    let conversation = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .map(|v| switchboard_webhooks::domain::lane_of(&v["data"]))
        .unwrap_or_default();
    receiver.received.lock().unwrap().push(Received {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body,
        path: uri.path().to_owned(),
    });
    let (status, extra, delay) = {
        let mut script = receiver.script.lock().unwrap();
        let delay = script.delay;
        let keyed = script
            .by_conversation
            .get_mut(&conversation)
            .and_then(VecDeque::pop_front);
        match (keyed, script.statuses.pop_front(), script.always) {
            (Some(status), _, _) => (status, vec![], delay),
            (None, Some((status, extra)), _) => (status, extra, delay),
            (None, None, Some(status)) => (status, vec![], delay),
            (None, None, None) => (200, vec![], delay),
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        format!("answered {status}"),
    )
        .into_response();
    for (k, v) in extra {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

pub async fn start_receiver() -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .route("/other", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, addr)
}

pub fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::from_base64(&[BASE64.encode([7u8; 32])]).unwrap())
}

/// Loopback allowed (the receiver lives there), plain http to 127.0.0.1 allowed.
pub fn settings() -> Settings {
    Settings {
        urls: UrlRules {
            allow_http_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            policy: switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
        },
        schedule: RetrySchedule::default(),
        disable_after: Duration::from_secs(5 * 24 * 3600),
        api_url: String::new(),
    }
}

pub struct Harness {
    pub service: WebhooksService,
    pub dispatcher: Arc<Dispatcher>,
    pub clock: Arc<ManualClock>,
    pub schema: TestSchema,
    pub receiver: Receiver,
    pub addr: SocketAddr,
}

/// 2026-01-01T00:00:00Z.
pub const START: i64 = 1_767_225_600_000_000;

impl Harness {
    pub async fn new() -> Self {
        Self::with(
            settings(),
            switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
        )
        .await
    }

    pub async fn with(settings: Settings, policy: switchboard_outbound::Policy) -> Self {
        let schema = TestSchema::new().await;
        let clock = Arc::new(ManualClock::starting_at(START));
        let (receiver, addr) = start_receiver().await;
        let (service, dispatcher) = Self::open(&schema, &clock, settings, policy).await;
        Self {
            service,
            dispatcher,
            clock,
            schema,
            receiver,
            addr,
        }
    }

    /// Opens the service and its dispatcher on the schema: again after a "restart".
    pub async fn open(
        schema: &TestSchema,
        clock: &Arc<ManualClock>,
        settings: Settings,
        policy: switchboard_outbound::Policy,
    ) -> (WebhooksService, Arc<Dispatcher>) {
        let log = switchboard_webhooks::open_log(&schema.store_config())
            .await
            .unwrap();
        log.migrate().await.unwrap();
        let service = WebhooksService::new(log, keyring(), settings).with_clock(clock.clone() as _);
        let client = switchboard_outbound::GuardedClient::new(
            policy,
            &switchboard_outbound::ClientOptions {
                timeout: Duration::from_millis(1500),
                ..Default::default()
            },
        )
        .unwrap();
        let dispatcher = Arc::new(Dispatcher::new(
            service.clone(),
            client,
            DeliveryConfig::default(),
        ));
        (service, dispatcher)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub async fn endpoint(
        &self,
        tweak: impl FnOnce(&mut CreateEndpointRequest),
    ) -> (Endpoint, String) {
        let mut request = CreateEndpointRequest {
            workspace_id: WS.into(),
            url: self.url(),
            ..Default::default()
        };
        tweak(&mut request);
        self.service.create_endpoint(request).await.unwrap()
    }

    /// A `conversation.updated` of `conversation_id` (its n-th), fanned out.
    pub async fn conversation_updated(&self, conversation_id: &str, n: u64) -> RecordedEvent {
        let event = updated_event(conversation_id, n);
        self.publish("fanout", &event).await;
        event
    }

    /// Hands `event` to the fan-out as a subscription named `consumer` would: once per
    /// consumer, in the transaction that records it processed.
    pub async fn publish(&self, consumer: &str, event: &RecordedEvent) {
        let fan_out = FanOut::new(self.service.clone(), Arc::new(ByType));
        self.service
            .log()
            .process_once(consumer, event, &fan_out)
            .await
            .unwrap()
            .unwrap();
    }

    pub async fn deliver(&self) -> usize {
        self.dispatcher.deliver_due().await.unwrap()
    }

    pub async fn stop(self) {
        self.schema.drop().await;
    }
}

/// A recorded `conversation.updated` (the n-th of its conversation).
pub fn updated_event(conversation_id: &str, n: u64) -> RecordedEvent {
    let payload = ConversationUpdatedEvent {
        conversation: Some(Conversation {
            id: conversation_id.into(),
            message_count: n,
            ..Default::default()
        }),
        changed_fields: vec!["message_count".into()],
        ..Default::default()
    };
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream: StreamRef::new("conversation", format!("{WS}/{conversation_id}")),
        stream_version: n,
        global_position: n as i64,
        transaction_id: 0,
        event_type: "conversation.updated".into(),
        schema_version: 1,
        payload: payload.encode_to_vec(),
        metadata: Metadata {
            workspace_id: WS.into(),
            occurred_at: START,
            ..Default::default()
        },
        recorded_at: START,
    }
}

/// The Standard Webhooks verification, written from the specification (not our signer):
/// base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the base64-decoded secret after
/// `whsec_`, compared with each space-separated `v1,` signature.
pub fn verifies(secret: &str, received: &Received) -> bool {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    let expected = BASE64.encode(mac.finalize().into_bytes());
    received
        .header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// A clock that only moves when told to.
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_at(micros: i64) -> Self {
        Self(AtomicI64::new(micros))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
