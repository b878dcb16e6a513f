//! `packet-ipcd`, the packet-ipc broker daemon.
//!
//! Not built yet: this binary only parses its command line (the contract of DESIGN.md
//! 1.1) and says so, exiting with EX_UNAVAILABLE.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// packet-ipc broker daemon: hosts named servers and fans packet batches out to subscribers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (default: $PACKET_IPC_CONFIG, /etc/packet-ipc/packet-ipcd.toml,
    /// else the embedded default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print `ok` or the problem, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("packet-ipcd: the broker daemon is not implemented in this build yet");
    ExitCode::from(69)
}
