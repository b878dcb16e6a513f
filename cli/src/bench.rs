//! `packet-ipc bench`: runs [`crate::benchcore`] with this program as its subscriber and
//! baseline child processes, and `packet-ipcd` from beside this program (else `$PATH`).

use std::path::PathBuf;
use std::process::Command;

use crate::benchcore::{self as bench, BenchOptions};
use clap::Args;

use crate::{exit, Failure, Outcome};

/// `packet-ipc bench` options.
#[derive(Args)]
pub struct BenchArgs {
    /// Subscriber processes.
    #[arg(long, default_value_t = 8)]
    subscribers: usize,
    /// Bytes per packet.
    #[arg(long, default_value_t = 64)]
    packet_size: usize,
    /// Packets per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Batches per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Batches in the latency phase.
    #[arg(long, default_value_t = 2000)]
    latency_batches: u32,
    /// The subscribers are the N members of one group, balanced by flow (flow-shaped
    /// traffic is sent).
    #[arg(long, value_name = "N")]
    group: Option<usize>,
    /// Every subscriber applies this tcpdump filter (flow-shaped traffic is sent).
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// How subscribers wait: adaptive, spin or park.
    #[arg(long, value_name = "MODE")]
    wait: Option<packet_ipc::WaitMode>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// The hidden roles the bench starts this program in.
#[derive(Args)]
pub struct ChildArgs {
    /// `subscriber` or `baseline`.
    role: String,
    /// The rendezvous file (subscriber) or the server name (baseline).
    arg: String,
    /// Subscriber: join this group.
    #[arg(long)]
    group: Option<String>,
    /// Subscriber: this filter.
    #[arg(long)]
    filter: Option<String>,
    /// Subscriber: this wait mode.
    #[arg(long)]
    wait: Option<packet_ipc::WaitMode>,
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(exit::SOFTWARE, format!("bench: {e}"))
}

fn daemon_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("packet-ipcd"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("packet-ipcd"))
}

/// Runs the benchmark and prints its report.
pub fn run(args: BenchArgs) -> Outcome {
    let exe = std::env::current_exe().map_err(failure)?;
    let options = BenchOptions {
        subscribers: args.group.unwrap_or(args.subscribers),
        packet_size: args.packet_size,
        batch: args.batch,
        seconds: args.seconds,
        latency_rate: args.latency_rate,
        latency_batches: args.latency_batches,
        group: args.group.is_some(),
        filter: args.filter,
        wait: args.wait,
    };
    options
        .check()
        .map_err(|e| Failure::new(exit::USAGE, format!("bench: {e}")))?;
    if let Some(expr) = &options.filter {
        packet_ipc::libpcap::Filter::compile(expr, 1, 65535).map_err(|e| {
            let code = match e {
                packet_ipc::libpcap::FilterError::Invalid { .. } => exit::USAGE,
                _ => exit::UNAVAILABLE,
            };
            Failure::new(code, format!("bench: {e}"))
        })?;
    }
    let program = || {
        let mut c = Command::new(&exe);
        c.arg("bench-child");
        c
    };
    let report = bench::run(&options, &program, &daemon_binary()).map_err(failure)?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// Runs one of the bench's child roles.
pub fn child(args: ChildArgs) -> Outcome {
    match args.role.as_str() {
        "subscriber" => bench::subscriber_main(
            args.arg.as_ref(),
            bench::SubscriberOptions {
                group: args.group,
                filter: args.filter,
                wait: args.wait,
            },
        )
        .map_err(failure),
        "baseline" => bench::baseline_child(&args.arg).map_err(failure),
        other => Err(Failure::new(
            exit::USAGE,
            format!("bench-child: unknown role {other:?}"),
        )),
    }
}
