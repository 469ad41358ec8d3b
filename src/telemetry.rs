//! Logging and tracing output of the `sandbox-net` binary.
//!
//! [`install`] sets the process-wide `tracing` subscriber: human-readable logs on stderr
//! (filtered by `RUST_LOG`, or by `-v`), and, when an exporter is configured, every span of
//! the library crates as an OpenTelemetry span (`endpoint.attach`, `interworking.apply`,
//! `netns.tap_create`, `ratelimit.htb_add`, ...), with its fields as attributes.
//!
//! ## Behavior
//!
//! - [`Export::Stdout`] prints the spans on stdout when the command ends (or every five
//!   seconds in a long run); it needs no network.
//! - [`Export::Otlp`] sends them over OTLP/HTTP (protobuf) to the collector named by the
//!   standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://localhost:4318`; the
//!   exporter appends `/v1/traces`) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, headers from
//!   `OTEL_EXPORTER_OTLP_HEADERS`. A request gives up after
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` milliseconds (3 s when unset), so an unreachable collector
//!   costs the command a few seconds at exit and a warning on stderr, never its result.
//! - The resource has `service.name = sandbox-net` unless `OTEL_SERVICE_NAME` or
//!   `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
//! - The exported spans do not depend on the log filter: spans and events at `info` and above
//!   are exported (`debug` too with `-vv`), whatever `RUST_LOG` or `-v` let through to stderr.
//!
//! ## Limitations
//!
//! - OTLP over HTTP only (no gRPC: `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` is not honoured), and
//!   plain `http://` only: no TLS client is built in.

use std::{
    ffi::OsStr,
    future::Future,
    io::IsTerminal as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt as _, filter_fn},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// The service name of the exported spans (unless `OTEL_SERVICE_NAME` sets another).
pub const SERVICE_NAME: &str = "sandbox-net";

/// The standard variable that names the OTLP collector.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long one OTLP export may take when no `OTEL_EXPORTER_OTLP_*TIMEOUT` variable says.
const OTLP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the exit may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the spans go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Nowhere: logs on stderr only.
    None,
    /// Printed on stdout (the `opentelemetry-stdout` format), at exit.
    Stdout,
    /// Sent over OTLP/HTTP to the collector of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    Otlp,
}

/// Chooses the export from the environment and the command line: OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set and not empty, else stdout when `stdout_flag` (the
/// CLI's `--otel-stdout`) is set, else none.
pub fn export_from_env(stdout_flag: bool) -> Export {
    export_from(std::env::var_os(OTLP_ENDPOINT_VAR).as_deref(), stdout_flag)
}

/// [`export_from_env`] with the variable's value given (testable without touching the
/// process environment).
fn export_from(otlp_endpoint: Option<&OsStr>, stdout_flag: bool) -> Export {
    match otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => Export::Otlp,
        _ if stdout_flag => Export::Stdout,
        _ => Export::None,
    }
}

/// Keeps the span exporter running; dropping it exports the spans still queued (waiting at
/// most a few seconds), shuts the exporter down, and warns on stderr if spans could not be
/// exported. Keep it alive until the end of `main`.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    failures: Arc<Mutex<ExportFailures>>,
    /// Where the spans go, for the warning.
    destination: String,
}

impl TelemetryGuard {
    /// A guard for `provider` (`None`: nothing to flush), whose exporter reports to
    /// `failures`.
    fn new(
        provider: Option<SdkTracerProvider>,
        failures: Arc<Mutex<ExportFailures>>,
        destination: String,
    ) -> Self {
        Self {
            provider,
            failures,
            destination,
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The command's own result stands: lost spans are only worth a warning.
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            // `cause`, not `error`: the log leaves `error` fields to `main`.
            tracing::warn!(to = %self.destination, cause = %e, "cannot export the last spans");
        }
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = &failures.last {
            tracing::warn!(
                to = %self.destination,
                failed_batches = failures.count,
                cause = %last,
                "spans could not be exported"
            );
        }
    }
}

/// The exports that failed, for the guard's warning.
#[derive(Debug, Default)]
struct ExportFailures {
    /// How many exports failed.
    count: usize,
    /// Why the last one did.
    last: Option<String>,
}

/// An exporter that counts the failed exports of the one it wraps (the batch processor
/// drops them silently).
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    failures: Arc<Mutex<ExportFailures>>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let export = self.inner.export(batch);
        let failures = Arc::clone(&self.failures);
        async move {
            let result = export.await;
            if let Err(e) = &result {
                let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
                failures.count += 1;
                failures.last = Some(e.to_string());
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Installs the process-wide subscriber: logs on stderr with `RUST_LOG` (or, without it,
/// `warn`, `info` with `-v`, `debug` with `-vv`), and the spans sent to `export`.
///
/// Call it once, before the async runtime starts; keep the guard until the end of `main`.
/// Fails, having installed nothing, if the exporter cannot be built (a malformed
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the caller may report it and call again with
/// [`Export::None`]); fails too if a global subscriber is already set. A collector that is
/// unreachable is no failure here: see [`TelemetryGuard`].
pub fn install(verbose: u8, export: Export) -> anyhow::Result<TelemetryGuard> {
    let failures = Arc::new(Mutex::new(ExportFailures::default()));
    let (provider, destination) = match export {
        Export::None => (None, String::new()),
        Export::Stdout => (Some(stdout_provider(&failures)), "stdout".to_owned()),
        Export::Otlp => (
            Some(otlp_provider(&failures)?),
            otlp_destination(std::env::var_os(OTLP_ENDPOINT_VAR).as_deref()),
        ),
    };
    subscriber(verbose, provider.as_ref())
        .try_init()
        .context("cannot install the tracing subscriber")?;
    Ok(TelemetryGuard::new(provider, failures, destination))
}

/// The subscriber [`install`] sets: the stderr log layer and, with a provider, the
/// OpenTelemetry layer. Each layer has its own filter, so that `RUST_LOG=warn` does not
/// hide the spans from the exporter, and the exporter still gets the `error` events that
/// the log leaves out (they become the spans' status).
fn subscriber(
    verbose: u8,
    provider: Option<&SdkTracerProvider>,
) -> impl tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a> {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Errors returned by instrumented operations are recorded on their spans (`err`, as an
    // `error` field) and printed once by `main`; the log does not repeat them.
    // It lets every level through (the hint says so): without a hint the subscriber's
    // maximum level is unknown, the `log` bridge then passes on every `debug!` of the netlink
    // crates, and each is formatted and filtered at run time.
    let not_returned_errors =
        filter_fn(|meta| !(meta.is_event() && meta.fields().field("error").is_some()))
            .with_max_level_hint(LevelFilter::TRACE);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(not_returned_errors.and(log_filter));
    let export_level = if verbose >= 2 {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let spans = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(export_level)
    });
    tracing_subscriber::registry().with(logs).with(spans)
}

/// The collector, as the warning names it.
fn otlp_destination(endpoint: Option<&OsStr>) -> String {
    let traces = std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    match traces.as_deref().or(endpoint) {
        Some(url) => format!("OTLP collector {}", url.to_string_lossy()),
        None => "OTLP collector".to_owned(),
    }
}

/// The resource of every exported span.
fn resource() -> Resource {
    let builder = Resource::builder();
    // The SDK's detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the
    // default in place of "unknown_service".
    let named_by_env = std::env::var_os("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if named_by_env {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}

/// Spans printed on stdout by a batch processor (its own thread): at exit, after the
/// command's output, rather than interleaved with it.
fn stdout_provider(failures: &Arc<Mutex<ExportFailures>>) -> SdkTracerProvider {
    batch_provider(opentelemetry_stdout::SpanExporter::default(), failures)
}

/// Spans sent over OTLP/HTTP by a batch processor (its own thread, a blocking HTTP client
/// with a timeout): an unreachable collector never blocks the command's work.
fn otlp_provider(failures: &Arc<Mutex<ExportFailures>>) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;

    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let timeout_set = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some());
    if !timeout_set {
        builder = builder.with_timeout(OTLP_TIMEOUT);
    }
    let exporter = builder
        .build()
        .context("cannot set up the OTLP span exporter")?;
    Ok(batch_provider(exporter, failures))
}

/// A provider that exports through `exporter` from a batch processor's own thread.
fn batch_provider(
    exporter: impl SpanExporter + 'static,
    failures: &Arc<Mutex<ExportFailures>>,
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource())
        .with_batch_exporter(Reporting {
            inner: exporter,
            failures: Arc::clone(failures),
        })
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    #[test]
    fn export_is_chosen_from_the_endpoint_variable_then_the_flag() {
        let set = Some(OsStr::new("http://localhost:4318"));
        assert_eq!(export_from(set, false), Export::Otlp);
        assert_eq!(
            export_from(set, true),
            Export::Otlp,
            "OTLP wins over the flag"
        );
        assert_eq!(export_from(Some(OsStr::new("")), true), Export::Stdout);
        assert_eq!(export_from(Some(OsStr::new("")), false), Export::None);
        assert_eq!(export_from(None, true), Export::Stdout);
        assert_eq!(export_from(None, false), Export::None);
    }

    /// The subscriber `install` sets, scoped to this thread: the log filter (`warn` by
    /// default) does not keep `info` spans from the exporter, fields become attributes, an
    /// `err` return becomes the span status, and the guard shuts the exporter down.
    #[test]
    fn spans_reach_the_exporter_whatever_the_log_level() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = subscriber(0, Some(&provider));
        tracing::subscriber::with_default(subscriber, || {
            #[tracing::instrument(name = "test.fails", fields(endpoint = "e1"), err)]
            fn fails() -> Result<(), std::io::Error> {
                Err(std::io::Error::other("step 2 refused"))
            }
            tracing::info_span!("test.outer", netns = "/run/netns/x").in_scope(|| {
                tracing::debug_span!("test.debug_only").in_scope(|| {});
                let _ = fails();
            });
        });
        let spans = exporter.get_finished_spans().unwrap();
        drop(TelemetryGuard::new(
            Some(provider),
            Arc::default(),
            String::new(),
        ));
        assert!(
            exporter.is_shutdown_called(),
            "the guard shuts the exporter down"
        );
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["test.fails", "test.outer"], "debug spans stay out");
        let (inner, outer) = (&spans[0], &spans[1]);
        assert_eq!(inner.parent_span_id, outer.span_context.span_id());
        assert_eq!(inner.span_kind, SpanKind::Internal);
        assert_eq!(inner.status, Status::error("step 2 refused"));
        let attr = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr(inner, "endpoint").as_deref(), Some("e1"));
        assert_eq!(attr(outer, "netns").as_deref(), Some("/run/netns/x"));
    }

    /// The stdout exporter needs no network and its guard returns promptly.
    #[test]
    fn stdout_export_flushes_on_drop() {
        let failures = Arc::default();
        let provider = stdout_provider(&failures);
        let guard =
            TelemetryGuard::new(Some(provider.clone()), Arc::clone(&failures), "test".into());
        tracing::subscriber::with_default(subscriber(0, Some(&provider)), || {
            tracing::info_span!("test.stdout", endpoint = "e1").in_scope(|| {
                tracing::info!("inside");
            });
        });
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < SHUTDOWN_TIMEOUT);
        assert_eq!(failures.lock().unwrap().count, 0);
        // Shut down: a second shutdown says so.
        assert!(provider.shutdown().is_err());
    }

    /// A collector that refuses every batch.
    #[derive(Debug)]
    struct Refusing;

    impl SpanExporter for Refusing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "connection refused".into(),
            ))
        }
    }

    /// Failed exports do not fail the command; the guard counts them for its warning.
    #[test]
    fn failed_exports_are_counted_for_the_warning() {
        let failures = Arc::default();
        let provider = batch_provider(Refusing, &failures);
        let guard =
            TelemetryGuard::new(Some(provider.clone()), Arc::clone(&failures), "test".into());
        tracing::subscriber::with_default(subscriber(0, Some(&provider)), || {
            tracing::info_span!("test.lost").in_scope(|| {});
        });
        drop(guard);
        let failures = failures.lock().unwrap();
        assert_eq!(failures.count, 1, "one batch, refused");
        assert!(
            failures
                .last
                .as_deref()
                .is_some_and(|e| e.contains("connection refused")),
            "{failures:?}"
        );
    }
}
