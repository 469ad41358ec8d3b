//! The plugin continues the runtime's trace: with `TRACEPARENT` set, its spans are children of
//! the runtime's span, in the runtime's trace.

#![allow(clippy::unwrap_used)]

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sandbox_net::cni::plugin::{self, Faults, request::CniEnv};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn env(traceparent: Option<&str>, state_dir: &std::path::Path) -> (CniEnv, Vec<u8>) {
    let env = CniEnv {
        command: Some("DEL".into()),
        container_id: Some("c1".into()),
        ifname: Some("eth0".into()),
        traceparent: traceparent.map(String::from),
        tracestate: Some("vendor=x".into()),
        ..CniEnv::default()
    };
    let stdin = json!({"cniVersion": "1.1.0", "name": "n", "type": "sandbox-net-cni", "stateDir": state_dir});
    (env, stdin.to_string().into_bytes())
}

#[tokio::test]
async fn the_plugin_span_is_a_child_of_traceparent() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();

    // DEL of an attachment never made: succeeds, and needs no namespace.
    let (with_parent, stdin) = env(Some(&format!("00-{TRACE}-{PARENT}-01")), dir.path());
    let outcome = plugin::run(&with_parent, &stdin, Faults::default()).await;
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    let (without, stdin) = env(None, dir.path());
    plugin::run(&without, &stdin, Faults::default()).await;
    let (malformed, stdin) = env(Some("00-nothex-01"), dir.path());
    plugin::run(&malformed, &stdin, Faults::default()).await;

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let plugin_spans: Vec<_> = spans.iter().filter(|s| s.name == "cni.plugin").collect();
    assert_eq!(
        plugin_spans.len(),
        3,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let continued = plugin_spans[0];
    assert_eq!(
        continued.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(continued.parent_span_id, SpanId::from_hex(PARENT).unwrap());
    assert_eq!(
        continued.span_context.trace_state().get("vendor"),
        Some("x")
    );
    // Its own children are in the same trace.
    let del = spans.iter().find(|s| s.name == "cni.del").unwrap();
    assert_eq!(
        del.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(del.parent_span_id, continued.span_context.span_id());
    // Without (or with a malformed) TRACEPARENT: a new trace of its own.
    for fresh in &plugin_spans[1..] {
        assert_eq!(fresh.parent_span_id, SpanId::INVALID);
        assert_ne!(
            fresh.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap()
        );
    }
}
