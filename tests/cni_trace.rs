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

/// A one-shot OTLP/HTTP collector on the loopback: records the bodies of the requests it gets
/// (at most `max`, for at most 20 s) and answers 200.
fn collector(max: usize) -> (String, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut bodies = Vec::new();
        while bodies.len() < max && started.elapsed() < std::time::Duration::from_secs(20) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                bodies.push(body);
            }
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        bodies
    });
    (endpoint, handle)
}

#[test]
fn the_binary_exports_its_spans_under_traceparent_over_otlp() {
    use std::io::Write as _;
    let (endpoint, collected) = collector(1);
    let dir = tempfile::tempdir().unwrap();
    let stdin = json!({"cniVersion": "1.1.0", "name": "n", "type": "sandbox-net-cni", "stateDir": dir.path()});
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-net-cni"))
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_IFNAME", "eth0")
        .env("TRACEPARENT", format!("00-{TRACE}-{PARENT}-01"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "DEL prints nothing on stdout, spans included"
    );
    let bodies = collected.join().unwrap();
    assert_eq!(bodies.len(), 1, "one export request");
    let body = &bodies[0];
    let bytes = |hex: &str| -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    // OTLP protobuf carries ids as raw bytes: the runtime's trace id, and its span as a parent.
    assert!(
        contains(&bytes(TRACE)),
        "the spans are in TRACEPARENT's trace"
    );
    assert!(contains(&bytes(PARENT)), "TRACEPARENT's span is a parent");
    assert!(
        contains(b"cni.plugin") && contains(b"cni.del"),
        "the plugin's spans"
    );
}
