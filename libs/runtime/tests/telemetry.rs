//! `telemetry::init` with OTLP export on, in its own process because it installs the
//! global subscriber. The collector address refuses connections: export fails, and the
//! test checks that this never blocks the service or its shutdown for long.

use std::time::{Duration, Instant};

use switchboard_runtime::telemetry::{self, current_traceparent, set_parent_from_traceparent};
use switchboard_runtime::{Config, LogFormat};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_tracing_propagates_and_shuts_down() {
    let config = Config {
        otlp_endpoint: Some("http://127.0.0.1:1".to_owned()),
        log_format: LogFormat::Json,
        log_filter: "info".to_owned(),
        ..Config::default()
    };
    let guard = telemetry::init("runtime-test", &config).expect("init with OTLP");
    assert!(guard.is_active());

    let span = tracing::info_span!("handle_event");
    set_parent_from_traceparent(
        &span,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let traceparent = {
        let _entered = span.enter();
        tracing::info!("inside a traced span");
        current_traceparent().expect("the OpenTelemetry layer gives spans a context")
    };
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    drop(span);

    let second = telemetry::init("runtime-test", &config).expect("second init");
    assert!(!second.is_active());

    let started = Instant::now();
    guard.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn otlp_outside_a_runtime_is_an_error_not_a_panic() {
    let config = Config {
        otlp_endpoint: Some("http://127.0.0.1:1".to_owned()),
        ..Config::default()
    };
    let result = telemetry::init("runtime-test", &config);
    assert!(
        matches!(
            result,
            Err(switchboard_runtime::TelemetryError::NoRuntime { .. })
                // The other test may have installed the global subscriber first, in
                // which case init returns early with an inactive guard.
                | Ok(_)
        ),
        "{result:?}"
    );
}
