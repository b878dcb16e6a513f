//! `packet-ipc`, the command-line tool: list the daemon's servers, publish a capture to
//! one, capture from an interface into one, subscribe to one (into a pcap file or stdout),
//! and read the daemon's live counters.
//!
//! Subcommands, flags and `--json` keys are a contract that scripts rely on (the README
//! and each subcommand's `--help` document them; the tests check them). Every error is
//! one line on stderr, `packet-ipc: ...`, and a sysexits exit code (see [`Failure`]).
//!
//! - `servers.rs`, `publish.rs`, `capture.rs`, `subscribe.rs`, `stats.rs`, `bench.rs`:
//!   one subcommand each.
//! - `bridge/`: `bridge export` and `bridge import`, through NATS JetStream.
//! - [`extcap`]: `packet-ipc-extcap`, the servers as Wireshark capture interfaces.
//! - `pcap.rs`: reading pcap/pcapng captures and writing pcap.
//! - `human.rs`: numbers for people (bytes, rates, durations).
//! - [`traffic`]: synthetic Ethernet traffic (seeded) for the tests and benchmarks, and a
//!   pcap writer for it.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod baseline;
mod bench;
pub mod benchcore;
mod bridge;
mod capture;
pub mod extcap;
mod human;
mod pcap;
mod publish;
mod servers;
mod stats;
mod subscribe;
pub mod traffic;

/// packet-ipc: list servers, publish and subscribe to captures, stats and benchmarks.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The servers of the running daemon (name, link type, snaplen, overflow policy).
    Servers {
        /// Print a JSON list instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send the packets of a pcap or pcapng file (or `-`, stdin) to a server.
    Publish(publish::PublishArgs),
    /// Capture from a network interface (libpcap) into a server.
    Capture(capture::CaptureArgs),
    /// Receive the packets of a server, optionally into a pcap file (or `-`, stdout).
    Subscribe(subscribe::SubscribeArgs),
    /// Live counters of the daemon, per server and per subscriber.
    Stats(stats::StatsArgs),
    /// The built-in benchmark: its own daemon, N subscriber processes, in-run baselines.
    Bench(bench::BenchArgs),
    /// NATS JetStream: export a server's batches, import them into a server elsewhere.
    Bridge(bridge::BridgeArgs),
    /// A child process of `bench` (internal).
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
}

/// sysexits(3) codes.
pub mod exit {
    /// Command line usage error.
    pub const USAGE: u8 = 64;
    /// Data format error (a corrupt capture, a link type the server does not take).
    pub const DATAERR: u8 = 65;
    /// An input file did not exist or was not readable.
    pub const NOINPUT: u8 = 66;
    /// A service is unavailable (no daemon, unknown or vanished server).
    pub const UNAVAILABLE: u8 = 69;
    /// Internal software error.
    pub const SOFTWARE: u8 = 70;
    /// An output file cannot be created.
    pub const CANTCREAT: u8 = 73;
    /// An error while doing I/O on some file.
    pub const IOERR: u8 = 74;
    /// Permission denied.
    pub const NOPERM: u8 = 77;
}

/// Why a subcommand failed: a one-line message and the exit code that goes with it.
#[derive(Debug)]
pub struct Failure {
    /// sysexits code.
    pub code: u8,
    /// One line, without the `packet-ipc: ` prefix.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<packet_ipc::Error> for Failure {
    fn from(e: packet_ipc::Error) -> Failure {
        use packet_ipc::Error as E;
        let code = match &e {
            E::NoDaemon(_)
            | E::UnknownServer { .. }
            | E::Refused { .. }
            | E::NoAnswer { .. }
            | E::ServerGone { .. }
            | E::Disconnected { .. }
            | E::DaemonGone { .. }
            | E::Spool(_) => exit::UNAVAILABLE,
            E::PermissionDenied { .. } => exit::NOPERM,
            E::BatchTooLarge { .. } => exit::DATAERR,
            E::Filter(f) => return filter_failure(f),
            _ => exit::SOFTWARE,
        };
        Failure::new(code, e.to_string())
    }
}

/// The failure of a filter expression: a usage error (exit 64), unless libpcap is missing.
fn filter_failure(e: &packet_ipc::libpcap::FilterError) -> Failure {
    use packet_ipc::libpcap::FilterError;
    let code = match e {
        FilterError::Invalid { .. } => exit::USAGE,
        FilterError::Libpcap(_) => exit::UNAVAILABLE,
        _ => exit::SOFTWARE,
    };
    Failure::new(code, e.to_string())
}

/// The result of a subcommand.
pub type Outcome<T = ()> = Result<T, Failure>;

/// One JSON document on one line: how every `--json` output is written (a typed,
/// `Serialize` struct per subcommand).
pub fn json_line(value: &impl serde::Serialize) -> Outcome<String> {
    serde_json::to_string(value)
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot write JSON: {e}")))
}

/// Prints the `--json` output of a subcommand on stdout ([`json_line`]).
pub fn print_json(value: &impl serde::Serialize) -> Outcome {
    println!("{}", json_line(value)?);
    Ok(())
}

/// What a producer's summary says about the daemon going away meanwhile (`publish`,
/// `capture`).
#[derive(serde::Serialize)]
pub struct ReconnectSummary {
    /// Times it reconnected to a daemon.
    pub reconnects: u64,
    /// Batches sent to a daemon that went away, which may not have been delivered.
    pub uncertain_batches: u64,
    /// The packets in them.
    pub uncertain_packets: u64,
}

impl From<&packet_ipc::ProducerReport> for ReconnectSummary {
    fn from(r: &packet_ipc::ProducerReport) -> Self {
        ReconnectSummary {
            reconnects: r.reconnects,
            uncertain_batches: r.uncertain_batches,
            uncertain_packets: r.uncertain_packets,
        }
    }
}

/// Parses a number of seconds (`1.5`, `0`) into a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a valid duration"))
}

/// Installs SIGINT and SIGTERM handlers that raise the returned flag; a second signal
/// while the flag is raised ends the process at once (exit 130), for a command stuck in a
/// long wait.
///
/// The signals are then taken by a thread of their own: the calling thread, and every
/// thread it starts afterwards (the library's included), has them blocked, so that no
/// system call of theirs fails with EINTR (the library does not retry one; see the
/// report). Call this first, before connecting.
pub fn stop_flag() -> Outcome<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let failed = |e: std::io::Error| {
        Failure::new(
            exit::SOFTWARE,
            format!("cannot install signal handlers: {e}"),
        )
    };
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)))
            .map_err(failed)?;
    }
    // Started before the signals are blocked here, so it is the one thread that takes them.
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| loop {
            std::thread::park();
        })
        .map_err(failed)?;
    // SAFETY: `set` is a local sigset_t, initialised by sigemptyset before use;
    // pthread_sigmask only changes the signal mask of the calling thread.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGINT);
        libc::sigaddset(&mut set, SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(failed(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(flag)
}

/// A clap error as one line: its first line without the `error: ` prefix.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let first = first.strip_prefix("error: ").unwrap_or(first).trim();
    format!("{first} (see packet-ipc --help)")
}

/// The `packet-ipc` program: parses the command line, runs the subcommand, and maps its
/// failure to one line on stderr and a sysexits code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    eprintln!(
                        "packet-ipc: a subcommand is needed: servers, publish, capture, \
                         subscribe, stats, bench or bridge (see packet-ipc --help)"
                    );
                    return ExitCode::from(exit::USAGE);
                }
                _ => {}
            }
            eprintln!("packet-ipc: {}", usage_line(&e));
            return ExitCode::from(exit::USAGE);
        }
    };
    let result = match cli.command {
        Cmd::Servers { json } => servers::run(json),
        Cmd::Publish(args) => publish::run(args),
        Cmd::Capture(args) => capture::run(args),
        Cmd::Subscribe(args) => subscribe::run(args),
        Cmd::Stats(args) => stats::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::BenchChild(args) => bench::child(args),
        Cmd::Bridge(args) => bridge::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("packet-ipc: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
