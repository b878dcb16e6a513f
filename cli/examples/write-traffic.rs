//! `write-traffic OUT.pcap [--size BYTES] [--count N] [--seed N] [--mixed FLOWS]`: writes
//! generated Ethernet traffic to a nanosecond pcap file, for replaying with tcpreplay
//! (see `cli/scripts/capture-vs-tcpdump.sh`).
//!
//! By default `--count` frames of exactly `--size` bytes, TCP and UDP over IPv4 and IPv6
//! in many flows ([`packet_ipc_cli::traffic::flow_shaped`]); with `--mixed FLOWS` the
//! varied conversations of [`packet_ipc_cli::traffic::mixed`] instead (tags, fragments,
//! ICMP, ARP; 60 to 1514 bytes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use packet_ipc_cli::traffic;

/// Writes generated traffic to a pcap file.
#[derive(Parser)]
#[command(about = "Write generated Ethernet traffic to a pcap file")]
struct Args {
    /// The pcap file to write (replaced if it exists).
    out: PathBuf,
    /// Bytes per frame (64 to 65549).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Frames to write.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Seed of the generator: the same seed writes the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write this many mixed conversations instead (`--size` and `--count` are ignored).
    #[arg(long, value_name = "FLOWS")]
    mixed: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let packets = match args.mixed {
        Some(flows) => traffic::mixed(args.seed, flows).packets,
        None => traffic::flow_shaped(args.seed, args.size, args.count),
    };
    match traffic::write_pcap(&args.out, &packets) {
        Ok(()) => {
            eprintln!(
                "{} packets written to {}",
                packets.len(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("write-traffic: cannot write {}: {e}", args.out.display());
            ExitCode::from(74)
        }
    }
}
