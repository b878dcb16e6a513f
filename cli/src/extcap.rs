//! `packet-ipc-extcap`: the daemon's servers as Wireshark capture interfaces, through
//! Wireshark's extcap protocol (extcap(4); the developer's guide, "Adding Capture
//! Interfaces And Log Sources Using Extcap").
//!
//! Wireshark (tshark, dumpcap) runs every program of its extcap folder, in turn:
//!
//! - `--extcap-interfaces [--extcap-version=X.Y]`: one interface per server of the running
//!   daemon, `packet-ipc-<SERVER>`, found as the other tools find the daemon
//!   (`PACKET_IPC_RUNTIME_DIR`, `PACKET_IPC_RENDEZVOUS`, else the default runtime
//!   directory). Without a daemon it lists none, says why on stderr and exits 0, so that
//!   `tshark -D` still works.
//! - `--extcap-interface IFACE --extcap-dlts`: the server's link type.
//! - `--extcap-interface IFACE --extcap-config`: the options of the capture dialog:
//!   `--group` (join a flow-balanced subscriber group), `--reconnect-wait` (seconds to wait
//!   for a daemon that restarts), `--wait` (adaptive, spin, park, or the server's setting).
//! - `--extcap-interface IFACE --extcap-capture-filter EXPR` (no `--capture`): checks a
//!   capture filter. As Wireshark reads the answer (its `extcap_verify_capture_filter`),
//!   nothing on stdout means valid; an invalid filter is one line on stdout, and the exit
//!   status is 0 (Wireshark discards the output of a program that fails).
//! - `--extcap-interface IFACE --capture --fifo PATH [--extcap-capture-filter EXPR]
//!   [options]`: subscribes to the server (the filter becomes the subscriber's filter) and
//!   writes a pcap stream into the fifo (the server's link type and snaplen, nanosecond
//!   timestamps), flushed after every batch, until Wireshark stops it: SIGTERM or SIGINT,
//!   or the fifo's reader gone (EPIPE, or POLLERR while idle). Either ends with exit 0.
//!   Errors are one line on stderr and a sysexits status, which Wireshark shows.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use packet_ipc::libpcap::Filter;
use packet_ipc::{AsIpcPacket, ConnectOptions, Received, Subscriber, WaitMode};

use crate::pcap::{linktype_name, PcapOut};
use crate::{exit, parse_seconds, stop_flag, Failure, Outcome};

/// What every interface name starts with; the rest is the server's name.
pub const PREFIX: &str = "packet-ipc-";
/// The longest one wait for a batch lasts, so that a stop is noticed promptly.
const SLICE: Duration = Duration::from_millis(100);
/// How long the capture waits for the fifo's reader to open it.
const FIFO_OPEN_LIMIT: Duration = Duration::from_secs(30);

/// packet-ipc-extcap: the servers of packet-ipcd as Wireshark capture interfaces (extcap).
///
/// Install it in Wireshark's extcap folder (`tshark -G folders`, "Extcap path"); Wireshark
/// runs it with the options below.
#[derive(Parser, Debug)]
#[command(name = "packet-ipc-extcap", version)]
struct Args {
    /// List the interfaces: one per server of the running daemon.
    #[arg(long)]
    extcap_interfaces: bool,
    /// The calling Wireshark's version (X.Y).
    #[arg(long, value_name = "X.Y", num_args = 0..=1, default_missing_value = "")]
    extcap_version: Option<String>,
    /// The interface (packet-ipc-SERVER).
    #[arg(long, value_name = "IFACE")]
    extcap_interface: Option<String>,
    /// List the interface's link type.
    #[arg(long)]
    extcap_dlts: bool,
    /// List the interface's options.
    #[arg(long)]
    extcap_config: bool,
    /// Reload the values of an option (none here).
    #[arg(long, value_name = "OPTION")]
    extcap_reload_option: Option<String>,
    /// Capture into --fifo.
    #[arg(long)]
    capture: bool,
    /// Where to write the pcap stream (a fifo Wireshark reads, or a file).
    #[arg(long, value_name = "PATH")]
    fifo: Option<PathBuf>,
    /// A capture filter (tcpdump syntax); without --capture, check it.
    #[arg(long, value_name = "EXPR")]
    extcap_capture_filter: Option<String>,
    /// Control pipe from Wireshark's toolbar (unused: no toolbar).
    #[arg(long, value_name = "PATH")]
    extcap_control_in: Option<PathBuf>,
    /// Control pipe to Wireshark's toolbar (unused: no toolbar).
    #[arg(long, value_name = "PATH")]
    extcap_control_out: Option<PathBuf>,
    /// Wireshark's debug flag (this program logs nothing more).
    #[arg(long)]
    debug: bool,
    /// Wireshark's debug file (unused).
    #[arg(long, value_name = "PATH")]
    debug_file: Option<PathBuf>,
    /// Join this flow-balanced subscriber group: capture its share of the flows.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Seconds to wait for the daemon to come back when it stops [default: 30; 0: not at
    /// all].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    reconnect_wait: Option<Duration>,
    /// How to wait for batches: adaptive, spin, park, or server (the server's setting).
    #[arg(long, value_name = "MODE", value_parser = parse_wait)]
    wait: Option<Wait>,
}

/// `--wait`: a mode, or the server's.
#[derive(Clone, Copy, Debug)]
struct Wait(Option<WaitMode>);

fn parse_wait(text: &str) -> Result<Wait, String> {
    if text == "server" {
        return Ok(Wait(None));
    }
    text.parse()
        .map(|m| Wait(Some(m)))
        .map_err(|_| format!("{text:?} is not adaptive, spin, park or server"))
}

/// The `packet-ipc-extcap` program.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first = first.strip_prefix("error: ").unwrap_or(first).trim();
            eprintln!("packet-ipc-extcap: {first} (see packet-ipc-extcap --help)");
            return ExitCode::from(exit::USAGE);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("packet-ipc-extcap: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(args: Args) -> Outcome {
    if args.extcap_interfaces {
        print!("{}", interfaces());
        return Ok(());
    }
    let Some(iface) = args.extcap_interface.as_deref() else {
        return Err(Failure::new(
            exit::USAGE,
            "--extcap-interfaces, or --extcap-interface with --extcap-dlts, --extcap-config, \
             --capture or --extcap-capture-filter, is needed (see packet-ipc-extcap --help)",
        ));
    };
    let server = server_of(iface)?;
    if args.extcap_dlts {
        print!("{}", dlts(server)?);
        return Ok(());
    }
    if args.extcap_config {
        // No option's values can be reloaded: an empty answer.
        if args.extcap_reload_option.is_none() {
            print!("{}", config());
        }
        return Ok(());
    }
    let filter = args
        .extcap_capture_filter
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty());
    if args.capture {
        let Some(fifo) = args.fifo.as_deref() else {
            return Err(Failure::new(exit::USAGE, "--capture needs --fifo PATH"));
        };
        let options = ConnectOptions {
            filter: filter.map(str::to_owned),
            group: args.group.filter(|g| !g.is_empty()),
            wait: args.wait.and_then(|w| w.0),
            reconnect_wait: args
                .reconnect_wait
                .unwrap_or(packet_ipc::connect::DEFAULT_RECONNECT_WAIT),
            ..ConnectOptions::default()
        };
        return capture(server, fifo, options);
    }
    if args.extcap_capture_filter.is_some() {
        // Wireshark checking a filter: the problem on stdout, or nothing.
        if let Some(problem) = filter.and_then(|f| filter_problem(server, f)) {
            println!("{problem}");
        }
        return Ok(());
    }
    Err(Failure::new(
        exit::USAGE,
        "--extcap-interface needs --extcap-dlts, --extcap-config, --capture or \
         --extcap-capture-filter (see packet-ipc-extcap --help)",
    ))
}

/// The server an interface name stands for.
fn server_of(iface: &str) -> Outcome<&str> {
    iface
        .strip_prefix(PREFIX)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                format!("{iface:?} is not a packet-ipc interface (they are named {PREFIX}SERVER)"),
            )
        })
}

/// Values in extcap sentences: `{` and `}` would end the field.
fn field(text: &str) -> String {
    text.replace(['{', '}'], "")
}

/// The answer to `--extcap-interfaces`.
fn interfaces() -> String {
    let mut out = format!(
        "extcap {{version={}}}{{help={}}}{{display=packet-ipc}}\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_REPOSITORY")
    );
    match packet_ipc::list_servers(None) {
        Ok(servers) => {
            for s in servers {
                out.push_str(&format!(
                    "interface {{value={PREFIX}{}}}{{display=packet-ipc: {}}}\n",
                    field(&s.name),
                    field(&s.name)
                ));
            }
        }
        // Wireshark lists its other interfaces all the same.
        Err(e) => eprintln!("packet-ipc-extcap: no interface listed: {e}"),
    }
    out
}

/// The answer to `--extcap-dlts`: the server's link type.
fn dlts(server: &str) -> Outcome<String> {
    let servers = packet_ipc::list_servers(None)?;
    let Some(s) = servers.iter().find(|s| s.name == server) else {
        return Err(packet_ipc::Error::UnknownServer {
            name: server.to_owned(),
            known: servers.iter().map(|s| s.name.clone()).collect(),
        }
        .into());
    };
    let name = linktype_name(s.linktype)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("LINKTYPE_{}", s.linktype));
    Ok(format!(
        "dlt {{number={}}}{{name={name}}}{{display=packet-ipc server {} (link type {}, snaplen {})}}\n",
        s.linktype,
        field(server),
        s.linktype,
        s.snaplen
    ))
}

/// The answer to `--extcap-config`: the capture dialog's options.
fn config() -> String {
    let mut out = String::new();
    out.push_str(
        "arg {number=0}{call=--group}{display=Subscriber group}\
         {tooltip=Join this flow-balanced group: each member captures its share of the \
         flows. Empty: every packet}{type=string}{group=Subscriber}\n",
    );
    out.push_str(&format!(
        "arg {{number=1}}{{call=--reconnect-wait}}{{display=Reconnect wait (seconds)}}\
         {{tooltip=How long to wait for packet-ipcd to come back when it stops; 0: end the \
         capture at once}}{{type=unsigned}}{{default={}}}{{range=0,3600}}{{group=Subscriber}}\n",
        packet_ipc::connect::DEFAULT_RECONNECT_WAIT.as_secs()
    ));
    out.push_str(
        "arg {number=2}{call=--wait}{display=Wait mode}{tooltip=How to wait for batches: \
         spin for the lowest latency (a busy core), park for the least CPU}{type=selector}\
         {group=Subscriber}\n",
    );
    out.push_str("value {arg=2}{value=server}{display=The server's setting}{default=true}\n");
    for mode in WaitMode::ALL {
        out.push_str(&format!(
            "value {{arg=2}}{{value={mode}}}{{display={mode}}}{{default=false}}\n"
        ));
    }
    out
}

/// Why `expr` cannot filter the packets of `server` (None: it can).
fn filter_problem(server: &str, expr: &str) -> Option<String> {
    let servers = match packet_ipc::list_servers(None) {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    let Some(s) = servers.iter().find(|s| s.name == server) else {
        return Some(format!("unknown server {server:?}"));
    };
    Filter::compile(expr, s.linktype, s.snaplen)
        .err()
        .map(|e| e.to_string())
}

/// Opens the fifo for writing once its reader has it open (a plain file at once), giving
/// up after [`FIFO_OPEN_LIMIT`] or when `stop` is raised.
fn open_fifo(path: &Path, stop: &AtomicBool) -> Outcome<std::fs::File> {
    let start = Instant::now();
    let file = loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        match opened {
            Ok(file) => break file,
            // A fifo nobody reads yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if stop.load(Ordering::Relaxed) || start.elapsed() > FIFO_OPEN_LIMIT {
                    return Err(Failure::new(
                        exit::IOERR,
                        format!("nobody opened {} for reading", path.display()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Failure::new(
                    exit::CANTCREAT,
                    format!("cannot open {}: {e}", path.display()),
                ))
            }
        }
    };
    // Blocking writes from here on: the reader paces the capture.
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; F_GETFL/F_SETFL take an int.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(Failure::new(
            exit::IOERR,
            format!(
                "cannot use {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(file)
}

/// True when the fifo's reader has gone (POLLERR on the write end of a pipe).
fn reader_gone(file: &std::fs::File) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Subscribes to `server` and writes its packets into `fifo` until stopped.
fn capture(server: &str, fifo: &Path, mut options: ConnectOptions) -> Outcome {
    let stop: Arc<AtomicBool> = stop_flag()?;
    options.interrupt = Some(Arc::clone(&stop));
    let mut subscriber = match Subscriber::connect_with(server, options) {
        Ok(s) => s,
        Err(packet_ipc::Error::Interrupted) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let info = subscriber.info().clone();
    let file = open_fifo(fifo, &stop)?;
    let sink = file
        .try_clone()
        .map_err(|e| Failure::new(exit::IOERR, format!("cannot use {}: {e}", fifo.display())))?;
    let name = fifo.display().to_string();
    let broken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    let mut pcap = match PcapOut::new(Box::new(sink), info.linktype, info.snaplen) {
        Ok(p) => p,
        Err(e) if broken(&e) => return Ok(()),
        Err(e) => return Err(write_failure(&name, &e)),
    };
    if std::io::stderr().is_terminal() {
        eprintln!("capturing {server} into {name}");
    }
    loop {
        if stop.load(Ordering::Relaxed) || reader_gone(&file) {
            return Ok(());
        }
        match subscriber.recv_timeout(SLICE) {
            Ok(Received::Batch(batch)) => {
                for packet in batch.iter() {
                    let orig = u32::try_from(packet.orig_len()).unwrap_or(u32::MAX);
                    pcap.push(packet.timestamp_nanos(), packet.data(), orig)
                        .map_err(|e| write_failure(&name, &e))?;
                }
                drop(batch);
                match pcap.commit() {
                    Ok(()) => {}
                    Err(e) if broken(&e) => return Ok(()),
                    Err(e) => return Err(write_failure(&name, &e)),
                }
            }
            Ok(Received::Timeout) => {}
            Ok(Received::End) => {
                return Err(Failure::new(
                    exit::UNAVAILABLE,
                    format!("server {server} is gone (removed, or no packet-ipcd came back)"),
                ))
            }
            Err(packet_ipc::Error::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn write_failure(name: &str, e: &std::io::Error) -> Failure {
    Failure::new(exit::IOERR, format!("cannot write {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_map_to_servers() {
        assert_eq!(server_of("packet-ipc-eth0").ok(), Some("eth0"));
        assert!(server_of("packet-ipc-").is_err());
        assert!(server_of("eth0").is_err());
    }

    #[test]
    fn config_sentences_are_well_formed() {
        let text = config();
        let mut args = 0;
        for line in text.lines() {
            let (kind, rest) = line.split_once(' ').unwrap();
            assert!(kind == "arg" || kind == "value", "{line}");
            args += usize::from(kind == "arg");
            // {key=value} fields, nothing between them.
            assert!(rest.starts_with('{') && rest.ends_with('}'), "{line}");
            for f in rest[1..rest.len() - 1].split("}{") {
                assert!(f.contains('=') && !f.contains(['{', '}']), "{line}");
            }
        }
        assert_eq!(args, 3);
        assert_eq!(text.matches("{default=true}").count(), 1, "{text}");
    }

    #[test]
    fn wait_takes_the_modes_and_server() {
        assert!(matches!(parse_wait("server"), Ok(Wait(None))));
        assert!(matches!(parse_wait("spin"), Ok(Wait(Some(WaitMode::Spin)))));
        assert!(parse_wait("fast").is_err());
    }
}
