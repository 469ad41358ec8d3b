//! Continuing the runtime's trace: libcni passes `TRACEPARENT`/`TRACESTATE` (W3C trace
//! context) to plugins, and the plugin's spans become children of the runtime's span when an
//! OpenTelemetry exporter is installed.

use std::collections::HashMap;

use opentelemetry::{propagation::TextMapPropagator as _, trace::TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes the span of `traceparent` (`00-<trace id>-<span id>-<flags>`) the parent of `span`.
/// Returns whether it did: nothing happens for a missing or malformed value, or when no
/// OpenTelemetry layer is installed.
pub fn continue_trace(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> bool {
    let Some(traceparent) = traceparent.filter(|t| !t.is_empty()) else {
        return false;
    };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate.filter(|s| !s.is_empty()) {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    if !context.span().span_context().is_valid() {
        tracing::debug!(
            traceparent,
            "TRACEPARENT is not a valid trace context; a new trace starts"
        );
        return false;
    }
    let _ = span.set_parent(context);
    true
}
