//! `sandbox-net-cni`: the CNI plugin binary. It reads the protocol's environment and the
//! request on stdin, runs the library's plugin, and prints the result or the CNI error on
//! stdout (logs go to stderr). Exit status 0 on success, 1 on error.
//!
//! Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, continuing the
//! runtime's trace from `TRACEPARENT`; stdout belongs to the protocol, so there is no stdout
//! exporter here.

use std::{io::Read, process::ExitCode};

use sandbox_net::{
    cni::{
        CniError, CniVersion, code,
        plugin::{self, Faults, request::CniEnv},
    },
    telemetry,
};

fn main() -> ExitCode {
    let export = match telemetry::export_from_env(false) {
        telemetry::Export::Stdout => telemetry::Export::None,
        other => other,
    };
    let _telemetry = telemetry::install(0, export)
        .or_else(|err| {
            eprintln!("warning: spans will not be exported: {err:#}");
            telemetry::install(0, telemetry::Export::None)
        })
        .ok();
    let env = CniEnv::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => plugin::Outcome {
            stdout: Some(
                CniError::caused(
                    code::IO_FAILURE,
                    "cannot read the configuration from stdin",
                    &e,
                )
                .to_json(CniVersion::LATEST),
            ),
            exit_code: 1,
            error: None,
        },
        Ok(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(plugin::run(&env, &stdin, faults())),
            Err(e) => plugin::Outcome {
                stdout: Some(
                    CniError::caused(code::IO_FAILURE, "cannot start the async runtime", &e)
                        .to_json(CniVersion::LATEST),
                ),
                exit_code: 1,
                error: None,
            },
        },
    };
    if let Some(out) = &outcome.stdout {
        println!("{out}");
    }
    if let Some(error) = &outcome.error {
        eprintln!("sandbox-net-cni: {error}");
    }
    ExitCode::from(outcome.exit_code)
}

/// With the `fault-injection` feature, `SANDBOX_NET_CNI_KILL_BEFORE_STEP=N` makes the process
/// kill itself with SIGKILL before kernel step N of ADD (0 is the first), for the crash tests.
#[cfg(feature = "fault-injection")]
fn faults() -> Faults {
    use std::sync::atomic::AtomicUsize;
    let countdown = std::env::var("SANDBOX_NET_CNI_KILL_BEFORE_STEP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| &*Box::leak(Box::new(AtomicUsize::new(n))));
    Faults {
        apply: sandbox_net_interworking::ApplyHooks {
            kill_countdown: countdown,
            ..Default::default()
        },
    }
}

#[cfg(not(feature = "fault-injection"))]
fn faults() -> Faults {
    Faults::default()
}
