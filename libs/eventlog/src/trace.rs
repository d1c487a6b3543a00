//! W3C trace context for events: what the relay and every consumer use to continue the
//! trace of the call that appended an event, whatever process they run in.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C `traceparent` of the current span, to store in an outgoing event or request.
///
/// `None` when there is no valid span context, e.g. outside any span (or before the
/// process installed its subscriber).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span described by `traceparent`.
///
/// Call it right after creating the span and before entering it. An invalid
/// `traceparent`, or a subscriber without the OpenTelemetry layer, leaves the span as
/// it was: a malformed header from a peer must never fail the work it came with.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started; nothing to do then.
        let _ = span.set_parent(parent);
    }
}
