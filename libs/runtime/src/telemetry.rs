//! Logging and distributed tracing for every Switchboard process.
//!
//! [`init`] installs one global `tracing` subscriber: a text or JSON formatter on stdout
//! behind the log filter, and a `tracing-opentelemetry` layer (INFO spans and above, its
//! own filter) that gives every span W3C trace and span ids and, when an OTLP endpoint is
//! configured, batches them to the collector over gRPC. Trace context travels between
//! services as a W3C `traceparent` whether or not anything is exported: gRPC calls carry
//! it in a header (read by [`grpc_trace_layer`]), events carry it in their metadata and
//! NATS headers ([`current_traceparent`] when publishing, [`set_parent_from_traceparent`]
//! when consuming), outbound HTTP calls and webhooks in a `traceparent` header. A process
//! without an exporter still continues and passes on the trace it was handed, so the
//! processes that do export show one trace.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Config, LogFormat};
use crate::error::TelemetryError;
use crate::grpc_wire::{grpc_status_code, split_grpc_path};

/// How long [`TelemetryGuard::shutdown`] waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the tracer provider alive; flush it with [`TelemetryGuard::shutdown`] before exit.
///
/// Dropping the guard also flushes, best effort, so an early return from `main` does not
/// lose the spans that explain it. A guard returned by a second [`init`] owns nothing.
#[must_use = "dropping the guard flushes and stops trace export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    /// The provider this guard installed, `None` when OTLP is off or init was a no-op.
    provider: Option<SdkTracerProvider>,
    /// Whether the `init` that returned this guard installed the global subscriber.
    installed: bool,
}

impl TelemetryGuard {
    /// Flushes pending spans and shuts the exporter down (at most a few seconds).
    ///
    /// Failures are logged, not returned: there is nothing useful a caller on its way out
    /// can do about a collector that is unreachable.
    pub fn shutdown(mut self) {
        self.shutdown_provider();
    }

    /// Whether this guard installed the global subscriber (false for a repeated [`init`]).
    pub fn is_active(&self) -> bool {
        self.installed
    }

    fn shutdown_provider(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let result = block_outside_runtime(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT));
        if let Err(error) = result {
            tracing::warn!(%error, "flushing traces to the OTLP collector failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_provider();
    }
}

/// Runs a blocking call without starving a multi-threaded Tokio runtime whose tasks the
/// call may need (the OTLP gRPC channel runs on it).
fn block_outside_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Installs the global subscriber for `service_name` as `config` describes.
///
/// Safe to call more than once (tests do): only the first call installs anything, later
/// calls return an inactive guard. With `otlp_endpoint` set this must run inside a Tokio
/// runtime, because the exporter's gRPC channel lives on it.
pub fn init(service_name: &str, config: &Config) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(&config.log_filter).map_err(|error| TelemetryError::InvalidFilter {
            filter: config.log_filter.clone(),
            reason: error.to_string(),
        })?;
    if tracing::dispatcher::has_been_set() {
        return Ok(TelemetryGuard {
            provider: None,
            installed: false,
        });
    }

    let provider = tracer_provider(service_name, config.otlp_endpoint.as_deref())?;
    // Never export the exporter's own spans and logs: that would feed back into itself.
    // Events are logs, not spans: the formatter has them.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name.to_owned()))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("opentelemetry", LevelFilter::OFF)
                .with_target("opentelemetry_sdk", LevelFilter::OFF)
                .with_target("opentelemetry_otlp", LevelFilter::OFF)
                .with_target("tonic", LevelFilter::OFF)
                .with_target("h2", LevelFilter::OFF)
                .with_target("hyper", LevelFilter::OFF)
                .with_target("tower", LevelFilter::OFF),
        )
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span()
        }));
    let format: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        match config.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        };

    let init_result = tracing_subscriber::registry()
        .with(format.with_filter(filter))
        .with(otel_layer)
        .try_init();
    // `try_init` can fail after installing the subscriber (when another `log` logger is
    // already set); what matters is whether our subscriber is the global one.
    if init_result.is_err() && !tracing::dispatcher::has_been_set() {
        let _ = provider.shutdown();
        return Ok(TelemetryGuard {
            provider: None,
            installed: false,
        });
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let provider = Some(provider);
    Ok(TelemetryGuard {
        provider,
        installed: true,
    })
}

/// The tracer provider: always, so every span has trace ids to pass on; with a batch
/// exporter to `endpoint` when there is one.
fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint else {
        return Ok(builder.build());
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime {
            endpoint: endpoint.to_owned(),
        });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

pub use switchboard_eventlog::trace::{current_traceparent, set_parent_from_traceparent};

/// A tower layer that opens one `grpc.server` span per request, child of the caller's
/// `traceparent` header when there is one. Use with `tonic::transport::Server::layer`.
pub fn grpc_trace_layer() -> GrpcTraceLayer {
    GrpcTraceLayer
}

/// See [`grpc_trace_layer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTraceService { inner }
    }
}

/// The service produced by [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTraceService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcTraceService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = split_grpc_path(path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }

        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let result = tracing::Instrument::instrument(future, span.clone()).await;
            if let Ok(response) = &result {
                span.record("rpc.grpc.status_code", grpc_status_code(response.headers()));
            }
            result
        })
    }
}

/// Reads propagation fields from HTTP headers (opentelemetry-http is not a dependency).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A subscriber with the OpenTelemetry layer but no exporter, local to one test.
    fn traced_subscriber() -> (impl tracing::Subscriber + Send + Sync, SdkTracerProvider) {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        (subscriber, provider)
    }

    #[test]
    fn no_traceparent_outside_spans() {
        let (subscriber, _provider) = traced_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_traceparent(), None);
        });
    }

    #[test]
    fn traceparent_round_trips_through_a_span() {
        let (subscriber, _provider) = traced_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("consume");
            set_parent_from_traceparent(&span, PARENT);
            let _entered = span.enter();
            let traceparent = current_traceparent().expect("span has a context");
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{traceparent}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1], TRACE_ID, "same trace as the remote parent");
            assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id for the child");
        });
    }

    #[test]
    fn malformed_traceparent_is_ignored() {
        let (subscriber, _provider) = traced_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("consume");
            set_parent_from_traceparent(&span, "garbage");
            let _entered = span.enter();
            let traceparent = current_traceparent().expect("a fresh root span");
            assert!(!traceparent.contains(TRACE_ID));
        });
    }

    #[test]
    fn init_twice_does_not_panic() {
        let config = Config::default();
        let first = init("test", &config).expect("first init");
        let second = init("test", &config).expect("second init");
        assert!(!second.is_active());
        second.shutdown();
        first.shutdown();
    }

    #[test]
    fn init_rejects_bad_filter() {
        let config = Config {
            log_filter: "=[{".to_owned(),
            ..Config::default()
        };
        assert!(matches!(
            init("test", &config),
            Err(TelemetryError::InvalidFilter { .. })
        ));
    }
}
