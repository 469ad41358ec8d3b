//! The `sandbox-net` command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sandbox_net_netns::{Netns, ScanOptions};

/// Exit status for a failed operation; usage errors exit with 2 (from the argument parser).
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "sandbox-net",
    version,
    about = "Network wiring for microVM sandboxes",
    after_help = "Exit status: 0 on success, 1 when the operation failed (the error names the \
                  namespace, device or file and the cause), 2 on a usage error.\n\
                  Logging: -v for info, -vv for debug; RUST_LOG overrides (e.g. RUST_LOG=sandbox_net_netns=trace)."
)]
struct Cli {
    /// More logging on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the interfaces of a network namespace, with addresses, routes and neighbours.
    ///
    /// By default Kata's rules apply: loopback and interfaces without an IP address are skipped,
    /// `proto kernel` routes and non-permanent neighbours are left out.
    Scan {
        /// The namespace: a name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long, value_name = "PATH-OR-NAME")]
        netns: String,
        /// Print the scan as JSON (the data model of sandbox-net-persist) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep everything the kernel reports: no interface, route or neighbour is left out.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain is printed once, here: "error: what failed: why: deeper cause".
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match command {
            Command::Scan { netns, json, all } => scan(&netns, json, all).await,
        }
    })
}

async fn scan(netns: &str, json: bool, all: bool) -> anyhow::Result<()> {
    let netns = Netns::open_path_or_name(netns)?;
    let options = if all {
        ScanOptions::unfiltered()
    } else {
        ScanOptions::default()
    };
    let scan = netns.rtnl().await?.scan(&options).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&scan).context("cannot encode the scan as JSON")?
        );
    } else {
        println!("namespace {} {}", netns.path().display(), netns.id());
        print!("{}", sandbox_net::render::scan_table(&scan));
    }
    Ok(())
}
