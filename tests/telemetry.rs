//! The spans of an attach, as an OpenTelemetry exporter receives them: one trace whose
//! `endpoint.attach` span names the endpoint, link, kind, model and namespace, with the
//! interworking, tap and HTB spans below it; and, when a step fails, the error status on the
//! failed spans and the rollback as a child span.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{endpoints, keeping_vmm, options};
use opentelemetry::trace::{SpanId, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sandbox_net::{Plug, Sandbox, SandboxError};
use sandbox_net_endpoints::AttachOptions;
use sandbox_net_endpoints::EndpointFailure;
#[cfg(feature = "fault-injection")]
use sandbox_net_interworking::ApplyHooks;
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};
use tracing::{Instrument as _, subscriber::DefaultGuard};
use tracing_subscriber::layer::SubscriberExt as _;

/// An in-memory exporter behind the OpenTelemetry layer, as this thread's default subscriber.
/// The tests run on tokio's current-thread runtime, so every poll happens on this thread, and
/// `Netns::run` carries the subscriber and the span into its own threads.
struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _default: DefaultGuard,
}

impl Capture {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let default = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _default: default,
        }
    }

    /// The finished spans of the trace whose root is the span called `root`.
    fn trace_of(&self, root: &str) -> Trace {
        self.provider.force_flush().unwrap();
        let all = self.exporter.get_finished_spans().unwrap();
        let roots: Vec<&SpanData> = all
            .iter()
            .filter(|s| s.name == root && s.parent_span_id == SpanId::INVALID)
            .collect();
        assert_eq!(roots.len(), 1, "one root span {root}: {}", names(&all));
        let trace_id = roots[0].span_context.trace_id();
        Trace {
            trace_id,
            spans: all
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace_id)
                .collect(),
        }
    }
}

fn names(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| s.name.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spans of one trace.
struct Trace {
    trace_id: TraceId,
    spans: Vec<SpanData>,
}

impl Trace {
    fn all(&self, name: &str) -> Vec<&SpanData> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    fn one(&self, name: &str) -> &SpanData {
        let found = self.all(name);
        assert_eq!(
            found.len(),
            1,
            "exactly one span {name} in the trace: {}",
            names(&self.spans)
        );
        found[0]
    }

    fn parent_of(&self, span: &SpanData) -> Option<&SpanData> {
        self.spans
            .iter()
            .find(|s| s.span_context.span_id() == span.parent_span_id)
    }

    /// Whether `ancestor` is on `span`'s path to the root.
    fn descends_from(&self, span: &SpanData, ancestor: &SpanData) -> bool {
        let mut current = self.parent_of(span);
        while let Some(parent) = current {
            if parent.span_context.span_id() == ancestor.span_context.span_id() {
                return true;
            }
            current = self.parent_of(parent);
        }
        false
    }

    /// Every span's parent is in the trace, and the trace is the root's.
    fn assert_connected(&self) {
        let ids: HashMap<SpanId, &str> = self
            .spans
            .iter()
            .map(|s| (s.span_context.span_id(), s.name.as_ref()))
            .collect();
        for span in &self.spans {
            assert_eq!(span.span_context.trace_id(), self.trace_id);
            assert!(
                span.parent_span_id == SpanId::INVALID || ids.contains_key(&span.parent_span_id),
                "span {} has a parent outside the trace (lost or orphaned)",
                span.name
            );
        }
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn assert_attrs(span: &SpanData, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            attr(span, key).as_deref(),
            Some(*value),
            "attribute {key} of span {}: {:?}",
            span.name,
            span.attributes
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn an_attach_is_one_span_tree() {
    let capture = Capture::install();
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let netns_path = fx.pod.netns().path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::create(
        dir.path().join("state.json"),
        "traced",
        fx.pod.netns().clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    // No limiter in the VMM: the limits become HTB trees on the host side.
    let vmm = keeping_vmm(10_000_000, 10_000_000);
    let opts = options(InterworkingModel::TcFilter);
    let endpoint = endpoints(fx.pod.netns()).await.remove(0);
    let id = endpoint.id.to_string();
    sandbox
        .attach(endpoint, &vmm, &opts, Plug::Cold)
        .instrument(tracing::info_span!("test.attach"))
        .await
        .unwrap();

    let trace = capture.trace_of("test.attach");
    trace.assert_connected();
    let root = trace.one("test.attach");
    let attach = trace.one("endpoint.attach");
    assert_eq!(attach.parent_span_id, root.span_context.span_id());
    assert_attrs(
        attach,
        &[
            ("endpoint", &id),
            ("link", "eth0"),
            ("kind", "veth"),
            ("model", "TcFilter"),
            ("netns", &netns_path),
        ],
    );
    assert_eq!(attach.status, Status::Unset, "no error");

    let apply = trace.one("interworking.apply");
    assert_eq!(apply.parent_span_id, attach.span_context.span_id());
    assert_attrs(apply, &[("netns", &netns_path)]);
    assert_eq!(apply.status, Status::Unset);

    let tap = trace.one("netns.tap_create");
    assert!(trace.descends_from(tap, attach));
    assert_attrs(tap, &[("tap", "tap0_kata"), ("queues", "2")]);

    // rx on the tap, tx on the pod link (tcfilter redirects the pod's ingress to the tap).
    let htb = trace.all("ratelimit.htb_add");
    let mut shaped: Vec<String> = htb.iter().filter_map(|s| attr(s, "link")).collect();
    shaped.sort();
    assert_eq!(shaped, ["eth0", "tap0_kata"]);
    for span in &htb {
        assert!(trace.descends_from(span, attach));
        assert_attrs(span, &[("bytes_per_second", "1250000")]);
    }
    assert!(
        trace.all("interworking.undo").is_empty(),
        "nothing rolled back"
    );

    // Teardown is its own trace, from the record.
    sandbox
        .teardown(&opts)
        .instrument(tracing::info_span!("test.teardown"))
        .await
        .unwrap();
    let teardown = capture.trace_of("test.teardown");
    teardown.assert_connected();
    let endpoint_teardown = teardown.one("endpoint.teardown");
    assert_attrs(endpoint_teardown, &[("endpoint", &id), ("link", "eth0")]);
    let undo = teardown.one("interworking.undo");
    assert!(teardown.descends_from(undo, endpoint_teardown));
    assert_eq!(undo.status, Status::Unset);
    drop(sandbox);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg(feature = "fault-injection")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_failed_step_is_an_error_status_and_the_rollback_a_child_span() {
    let capture = Capture::install();
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::create(
        dir.path().join("state.json"),
        "traced-failure",
        fx.pod.netns().clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let vmm = keeping_vmm(10_000_000, 10_000_000);
    let failing = AttachOptions {
        hooks: ApplyHooks {
            fail_before: Some(3),
            ..ApplyHooks::default()
        },
        ..options(InterworkingModel::TcFilter)
    };
    let endpoint = endpoints(fx.pod.netns()).await.remove(0);
    let id = endpoint.id.to_string();
    let err = sandbox
        .attach(endpoint, &vmm, &failing, Plug::Cold)
        .instrument(tracing::info_span!("test.attach"))
        .await
        .unwrap_err();
    let SandboxError::Endpoint(err) = err else {
        panic!("not an endpoint failure: {err:?}");
    };
    let EndpointFailure::Steps(failed) = err.first() else {
        panic!("not a failed step: {err:?}");
    };
    assert_eq!(failed.position, 4, "fail_before counts from 0");
    assert!(failed.rollback.is_empty(), "clean rollback: {failed}");

    let trace = capture.trace_of("test.attach");
    trace.assert_connected();
    let attach = trace.one("endpoint.attach");
    assert_attrs(
        attach,
        &[("endpoint", &id), ("link", "eth0"), ("kind", "veth")],
    );
    let apply = trace.one("interworking.apply");
    assert_eq!(apply.parent_span_id, attach.span_context.span_id());
    let step = format!("failed to {} (step 4 of {})", failed.step, failed.total);
    for span in [apply, attach] {
        let Status::Error { description } = &span.status else {
            panic!("span {} has status {:?}, not Error", span.name, span.status);
        };
        assert!(
            description.contains(&step),
            "the status of {} names the failed step ({step}): {description}",
            span.name
        );
    }
    assert!(
        matches!(&attach.status, Status::Error { description } if description.contains(&id)),
        "the attach status names the endpoint"
    );
    // The tap was made (step 1) before the failure, in the attach.
    let tap = trace.one("netns.tap_create");
    assert_eq!(tap.parent_span_id, apply.span_context.span_id());
    assert_eq!(tap.status, Status::Unset);
    // The rollback of the three applied steps is a child of the failed apply, and succeeded.
    let undo = trace.one("interworking.undo");
    assert_eq!(undo.parent_span_id, apply.span_context.span_id());
    assert_attrs(undo, &[("steps", "3")]);
    assert_eq!(
        undo.status,
        Status::Unset,
        "rollback without error (OpenTelemetry leaves a successful span Unset, not Ok)"
    );
    assert!(undo.start_time >= tap.end_time);
    assert_same_snapshot(&before, &fx.pod.snapshot());

    sandbox
        .teardown(&options(InterworkingModel::TcFilter))
        .await
        .unwrap();
    drop(sandbox);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
