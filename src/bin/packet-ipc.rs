//! `packet-ipc`, the command-line tool.
//!
//! Not built yet: this binary only parses its command line (the contract of DESIGN.md
//! 1.1) and says so, exiting with EX_UNAVAILABLE.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// packet-ipc: list servers, publish and subscribe to captures, stats and benchmarks.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The servers of the running daemon.
    Servers,
    /// Send the packets of a pcap or pcapng file to a server.
    Publish,
    /// Receive the packets of a server.
    Subscribe,
    /// Live counters of the daemon.
    Stats,
    /// The built-in benchmark.
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Cmd::Servers => "servers",
        Cmd::Publish => "publish",
        Cmd::Subscribe => "subscribe",
        Cmd::Stats => "stats",
        Cmd::Bench => "bench",
    };
    eprintln!("packet-ipc {name}: not implemented in this build yet (it needs the daemon)");
    ExitCode::from(69)
}
