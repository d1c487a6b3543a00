//! `telemetry::init` without an OTLP exporter, in its own process because it installs the
//! global subscriber: spans still carry W3C trace context, continued from a `traceparent`
//! and passed on, even when the log filter is quieter than the spans.

use switchboard_runtime::telemetry::{self, current_traceparent, set_parent_from_traceparent};
use switchboard_runtime::{Config, LogFormat};

#[tokio::test]
async fn trace_context_flows_with_no_exporter_and_a_quiet_log() {
    let config = Config {
        otlp_endpoint: None,
        log_format: LogFormat::Text,
        log_filter: "warn".to_owned(),
        ..Config::default()
    };
    let guard = telemetry::init("runtime-test", &config).expect("init without OTLP");
    assert!(guard.is_active());

    let span = tracing::info_span!("handle_event");
    set_parent_from_traceparent(
        &span,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let (inner, child) = {
        let _entered = span.enter();
        let inner = current_traceparent().expect("a span has trace context without an exporter");
        let child = tracing::info_span!("call_out");
        let child = child
            .in_scope(current_traceparent)
            .expect("so does its child");
        (inner, child)
    };
    assert!(
        inner.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "continued from the traceparent: {inner}"
    );
    assert!(
        child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child != inner,
        "one trace, another span: {child} after {inner}"
    );
    // A fresh span outside any trace starts one of its own.
    let root = tracing::info_span!("timer")
        .in_scope(current_traceparent)
        .expect("a root span");
    assert!(!root.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{root}");
    guard.shutdown();
}
