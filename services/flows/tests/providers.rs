//! Model providers over gRPC, against a scripted OpenAI-compatible model on loopback: saved
//! with every mistake named, the API key sealed (never returned, in no event, in no
//! error), kept when a save leaves it out; a call retried on 429 and 5xx within its
//! deadline, its tokens and latency answered; a refused key and a dead provider reported,
//! not thrown.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use switchboard_eventlog::testing::TestSchema;
use switchboard_flows::model::OpenAiCompatible;
use switchboard_flows::model_sim::{self, FakeModel, Reply};
use switchboard_flows::providers::Providers;
use switchboard_proto::flows::v1::flows_client::FlowsClient;
use switchboard_proto::flows::v1::*;
use switchboard_runtime::GrpcServer;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const WS: &str = "ws_models";
const KEY: &str = "sk-test-never-shown-0123456789";

struct Harness {
    flows: FlowsClient<Channel>,
    model: FakeModel,
    schema: TestSchema,
    log: switchboard_eventlog::EventLog,
    shutdown: CancellationToken,
}

impl Harness {
    async fn start() -> Self {
        let schema = TestSchema::new().await;
        let log = switchboard_flows::open_log(&schema.store_config())
            .await
            .unwrap();
        log.migrate().await.unwrap();
        let shutdown = CancellationToken::new();
        let model = model_sim::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(KEY.into()),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        let keyring = Arc::new(switchboard_secrets::Keyring::from_base64(&[key]).unwrap());
        let outbound = switchboard_outbound::GuardedClient::new(
            switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
            &Default::default(),
        )
        .unwrap();
        let client = OpenAiCompatible::new(outbound)
            .with_backoff(Duration::from_millis(20), Duration::from_millis(100));
        let providers = Providers::new(log.clone(), Some(keyring), Arc::new(client));
        let flows = switchboard_flows::FlowsService::new(log.clone(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = GrpcServer::new().add_service(
            switchboard_flows::GRPC_SERVICE,
            switchboard_flows::FlowsApi::new(flows)
                .with_providers(providers)
                .into_server(),
        );
        let token = shutdown.clone();
        tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
        Self {
            flows: FlowsClient::connect(format!("http://{addr}"))
                .await
                .unwrap(),
            model,
            schema,
            log,
            shutdown,
        }
    }

    fn provider(&self) -> ModelProvider {
        ModelProvider {
            workspace_id: WS.into(),
            name: "local".into(),
            base_url: self.model.base_url(),
            model: "llama3.1:8b".into(),
            api_key: KEY.into(),
            temperature: 0.2,
            ..Default::default()
        }
    }

    async fn save(
        &mut self,
        provider: ModelProvider,
        request_id: &str,
    ) -> Result<ModelProvider, tonic::Status> {
        self.flows
            .save_model_provider(SaveModelProviderRequest {
                provider: Some(provider),
                expected_version: 0,
                request_id: request_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn test(&mut self, id: &str) -> ModelCallResult {
        self.flows
            .test_model_provider(ModelProviderRef {
                workspace_id: WS.into(),
                provider_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.schema.drop().await;
    }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn providers_are_saved_with_their_key_sealed_and_every_mistake_named() {
    let mut h = Harness::start().await;
    let bad = h
        .save(
            ModelProvider {
                name: " ".into(),
                base_url: "ftp://models".into(),
                model: "two words".into(),
                api_key: "has space".into(),
                timeout_ms: 900_000,
                temperature: 3.0,
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(
        fields(&bad),
        [
            "provider.name",
            "provider.base_url",
            "provider.model",
            "provider.api_key",
            "provider.timeout_ms",
            "provider.temperature"
        ]
    );

    // A key never goes in clear to a public host; a URL carries no credentials.
    let public = h
        .save(
            ModelProvider {
                base_url: "http://api.models.example/v1".into(),
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&public), ["provider.api_key"]);
    let with_credentials = h
        .save(
            ModelProvider {
                base_url: "https://user:pass@api.models.example/v1?key=x".into(),
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&with_credentials), ["provider.base_url"]);

    let saved = h.save(h.provider(), "create-1").await.unwrap();
    assert!(saved.id.starts_with("mp_"), "{saved:?}");
    assert!(saved.api_key_set && saved.api_key.is_empty() && saved.sealed_api_key.is_empty());
    // The same create again makes no second provider.
    let again = h.save(h.provider(), "create-1").await.unwrap();
    assert_eq!(again.id, saved.id);
    // The same request id with another request is refused.
    let reused = h
        .save(
            ModelProvider {
                model: "another-model".into(),
                ..h.provider()
            },
            "create-1",
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&reused), ["request_id"]);
    let taken = h.save(h.provider(), "create-2").await.unwrap_err();
    assert_eq!(fields(&taken), ["provider.name"]);

    // A save without the key keeps it.
    let renamed = h
        .save(
            ModelProvider {
                id: saved.id.clone(),
                name: "local-2".into(),
                api_key: String::new(),
                ..h.provider()
            },
            "rename",
        )
        .await
        .unwrap();
    assert!(renamed.api_key_set && renamed.version == 2, "{renamed:?}");
    assert!(h.test(&saved.id).await.ok, "the kept key still opens");

    let listed = h
        .flows
        .list_model_providers(ListModelProvidersRequest {
            workspace_id: WS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "local-2");

    // The key is in no event, sealed only.
    let events = h
        .log
        .read_stream(
            &switchboard_flows::providers::provider_stream(WS, &saved.id),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    for event in &events {
        assert!(!String::from_utf8_lossy(&event.payload).contains(KEY));
    }
    // The key went with the request to the model, as a bearer token only.
    let sent = h.model.received();
    assert_eq!(
        sent[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(!sent[0].body.to_string().contains(KEY));

    let deleted = h
        .flows
        .delete_model_provider(DeleteModelProviderRequest {
            workspace_id: WS.into(),
            provider_id: saved.id.clone(),
            request_id: "delete-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.name, "local-2");
    let gone = h
        .flows
        .get_model_provider(ModelProviderRef {
            workspace_id: WS.into(),
            provider_id: saved.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn a_call_is_retried_within_its_deadline_and_its_cost_answered() {
    let mut h = Harness::start().await;
    let provider = h.save(h.provider(), "").await.unwrap();
    // 429 with Retry-After: 1, then a 502, then the answer: three attempts.
    h.model.script([
        Reply::Status(429, Some(1)),
        Reply::Status(502, None),
        Reply::Text("ok".into()),
    ]);
    let result = h.test(&provider.id).await;
    assert!(result.ok, "{result:?}");
    assert_eq!((result.attempts, result.content.as_str()), (3, "ok"));
    assert!(
        result.prompt_tokens > 0 && result.completion_tokens == 5,
        "{result:?}"
    );
    assert!(
        result.latency_ms >= 1000,
        "the Retry-After was waited: {result:?}"
    );

    // A wait past the deadline ends the call at once, with why.
    let short = h
        .save(
            ModelProvider {
                id: provider.id.clone(),
                timeout_ms: 500,
                api_key: String::new(),
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap();
    h.model.script([Reply::Status(429, Some(30))]);
    let limited = h.test(&short.id).await;
    assert!(!limited.ok);
    assert!(limited.error.contains("429"), "{limited:?}");
    assert!(limited.latency_ms < 500, "{limited:?}");

    // A refused key: reported, and the key is not in the report.
    let wrong = h
        .save(
            ModelProvider {
                id: provider.id.clone(),
                api_key: "sk-wrong-key-000000".into(),
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap();
    let refused = h.test(&wrong.id).await;
    assert!(
        !refused.ok && refused.error.contains("refused the API key"),
        "{refused:?}"
    );
    assert!(!refused.error.contains("sk-wrong-key"));

    // A provider nobody answers for: reported as unreachable.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = h
        .save(
            ModelProvider {
                id: provider.id.clone(),
                base_url: format!("http://{free}/v1"),
                timeout_ms: 1_000,
                api_key: String::new(),
                ..h.provider()
            },
            "",
        )
        .await
        .unwrap();
    let unreachable = h.test(&dead.id).await;
    assert!(
        !unreachable.ok && unreachable.error.contains("cannot be reached"),
        "{unreachable:?}"
    );
    h.stop().await;
}
