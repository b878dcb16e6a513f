//! `packet-ipc subscribe SERVER [--write FILE.pcap] [--count N] [--timeout SECS]
//! [--reconnect-wait SECS] [--filter EXPR] [--group NAME] [--wait adaptive|spin|park]
//! [--json]`: receives the packets of a server.
//!
//! Receiving ends normally (exit 0, with the summary) after exactly `--count` packets, at
//! the end of the stream, at `--timeout`, or on SIGINT/SIGTERM. The pcap file is written
//! batch by batch, each batch as whole records followed by a flush, so it is complete and
//! valid whatever ends the command; when a write fails (a full disk), the file is cut back
//! to its last complete record before the error is reported.
//!
//! `--filter` keeps the packets that match a tcpdump expression (matched in this process
//! with libpcap, for the server's link type; an invalid one is a usage error, exit 64);
//! `--group` joins a flow-balanced group, whose members share the server's packets;
//! `--count` counts the packets kept, of this member. The summary says how many the
//! filter left out, and when the daemon went away meanwhile (packets may be missing).

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use packet_ipc::connect::DEFAULT_RECONNECT_WAIT;
use packet_ipc::{AsIpcPacket, ConnectOptions, Received, Subscriber, WaitMode};

use crate::pcap::PcapOut;
use crate::{exit, human, parse_seconds, stop_flag, Failure, Outcome};

/// The longest one wait for a batch lasts, so that a signal is noticed promptly.
const SLICE: Duration = Duration::from_millis(100);

/// `subscribe` arguments.
#[derive(Args)]
pub struct SubscribeArgs {
    /// The server to receive from.
    server: String,
    /// Write the packets to this pcap file (nanosecond timestamps; `-`: stdout).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Stop after exactly N packets.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// How long to wait for a daemon to come back when it stops [default: 30; 0: not at all].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    reconnect_wait: Option<Duration>,
    /// Keep only the packets that match this tcpdump filter expression (pcap-filter(7)).
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Join this subscriber group: its members share the server's packets, by flow.
    #[arg(long, value_name = "NAME", value_parser = group_name)]
    group: Option<String>,
    /// How to wait for batches: adaptive, spin or park [default: the server's `wait`].
    #[arg(long, value_name = "MODE")]
    wait: Option<WaitMode>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// A group name as the daemon takes it: 1 to 64 letters, digits, `-`, `_` or `.`.
fn group_name(text: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a group name (1 to 64 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// Why receiving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `--count` packets received.
    Count,
    /// The server is gone for good.
    Stream,
    /// `--timeout` passed.
    Timeout,
    /// SIGINT or SIGTERM.
    Signal,
    /// The reader of `--write -` went away.
    OutputClosed,
}

impl End {
    fn word(self) -> &'static str {
        match self {
            End::Count => "count",
            End::Stream => "end",
            End::Timeout => "timeout",
            End::Signal => "signal",
            End::OutputClosed => "output-closed",
        }
    }
}

/// Counters of the run.
#[derive(Default)]
struct Totals {
    packets: u64,
    bytes: u64,
    lost_batches: u64,
    batches: u64,
    reconnections: u64,
}

/// Receives from the server.
pub fn run(args: SubscribeArgs) -> Outcome {
    let stop = stop_flag()?;
    let options = ConnectOptions {
        reconnect_wait: args.reconnect_wait.unwrap_or(DEFAULT_RECONNECT_WAIT),
        filter: args.filter.clone(),
        group: args.group.clone(),
        wait: args.wait,
        interrupt: Some(Arc::clone(&stop)),
        ..ConnectOptions::default()
    };
    let mut subscriber = Subscriber::connect_with(&args.server, options.clone())?;
    let info = subscriber.info().clone();
    let to_stdout = args.write.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let mut out = match &args.write {
        None => None,
        Some(path) => Some(Output::open(path, to_stdout, &info)?),
    };
    eprintln!("subscribed to {}", args.server);

    let started = Instant::now();
    let live = args.write.is_none() && std::io::stderr().is_terminal();
    let mut last_tick = (Instant::now(), 0u64, 0u64);
    let mut totals = Totals::default();
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break End::Signal;
        }
        if args.count.is_some_and(|n| totals.packets >= n) {
            break End::Count;
        }
        let mut wait = SLICE;
        if let Some(limit) = args.timeout {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                break End::Timeout;
            }
            wait = wait.min(left);
        }
        let received = match subscriber.recv_timeout(wait) {
            Ok(received) => received,
            // A signal came while the subscriber waited for a daemon to come back.
            Err(packet_ipc::Error::Interrupted) => break End::Signal,
            Err(e) => return Err(e.into()),
        };
        match received {
            Received::Batch(batch) => {
                totals.batches += 1;
                totals.lost_batches += batch.lost();
                totals.reconnections += u64::from(batch.reconnected());
                let take = match args.count {
                    Some(n) => batch.len().min((n - totals.packets) as usize),
                    None => batch.len(),
                };
                for packet in batch.iter().take(take) {
                    let data = packet.data();
                    totals.bytes += data.len() as u64;
                    if let Some(out) = &mut out {
                        let orig = u32::try_from(packet.orig_len()).unwrap_or(u32::MAX);
                        out.pcap
                            .push(packet.timestamp_nanos(), data, orig)
                            .map_err(|e| out.failure(&e))?;
                    }
                }
                totals.packets += take as u64;
                // Written out before the batch is released: what the daemon counts as
                // delivered and released is in the file, whenever this process dies.
                if let Some(out) = &mut out {
                    match out.commit(take as u64) {
                        Ok(()) => {}
                        Err(e) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {
                            break End::OutputClosed;
                        }
                        Err(e) => return Err(out.failure(&e)),
                    }
                }
                drop(batch);
            }
            Received::Timeout => {}
            Received::End => break End::Stream,
        }
        if live && last_tick.0.elapsed() >= Duration::from_secs(1) {
            let (at, packets, bytes) = last_tick;
            let span = at.elapsed();
            eprintln!(
                "{} packets, {}, {} lost batches; last second: {}",
                totals.packets,
                human::bytes(totals.bytes),
                totals.lost_batches,
                human::rate(totals.packets - packets, totals.bytes - bytes, span)
            );
            last_tick = (Instant::now(), totals.packets, totals.bytes);
        }
    };
    let elapsed = started.elapsed();
    let lost_packets = if totals.lost_batches > 0 {
        lost_packets(&options, &args.server, subscriber.id())
    } else {
        0
    };
    let filtered_out = subscriber.filtered_out();
    let reconnects = subscriber.reconnects();
    drop(subscriber);
    drop(out);

    let summary = if args.json {
        crate::json_line(&SubscribeSummary {
            server: &args.server,
            packets: totals.packets,
            bytes: totals.bytes,
            lost_batches: totals.lost_batches,
            lost_packets,
            batches: totals.batches,
            reconnections: totals.reconnections,
            reconnects,
            filtered_out,
            seconds: elapsed.as_secs_f64(),
            packets_per_second: human::per_second(totals.packets, elapsed),
            bits_per_second: human::per_second(totals.bytes, elapsed) * 8.0,
            end: end.word(),
        })?
    } else {
        let lost = if totals.lost_batches > 0 {
            format!(
                "{} lost batches ({lost_packets} packets)",
                totals.lost_batches
            )
        } else {
            "0 lost batches".to_owned()
        };
        let filtered = if args.filter.is_some() {
            format!(", {filtered_out} filtered out")
        } else {
            String::new()
        };
        let mut text = format!(
            "received {} packets, {} bytes ({}), {lost}{filtered} from {} in {}: {} (end: {})",
            totals.packets,
            totals.bytes,
            human::bytes(totals.bytes),
            args.server,
            human::duration(elapsed),
            human::rate(totals.packets, totals.bytes, elapsed),
            end.word()
        );
        if reconnects > 0 {
            text.push_str(&format!(
                "\nreconnected {reconnects} times: packets may be missing"
            ));
        }
        text
    };
    if to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// `subscribe --json` (on stderr when the pcap goes to stdout).
#[derive(serde::Serialize)]
struct SubscribeSummary<'a> {
    server: &'a str,
    packets: u64,
    bytes: u64,
    lost_batches: u64,
    lost_packets: u64,
    batches: u64,
    /// Batches that came first after a reconnection.
    reconnections: u64,
    /// Times the subscriber reconnected.
    reconnects: u64,
    filtered_out: u64,
    seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    end: &'a str,
}

/// The packets in the batches dropped for this subscriber, from the daemon's counters
/// (the batches themselves say only how many batches were lost). 0 if it cannot tell.
fn lost_packets(options: &ConnectOptions, server: &str, id: Option<u64>) -> u64 {
    let Some(id) = id else { return 0 };
    let Ok(servers) = packet_ipc::connect::stats(options, Some(server)) else {
        return 0;
    };
    servers
        .iter()
        .flat_map(|s| &s.subscribers)
        .find(|s| s.id == id)
        .map_or(0, |s| s.lost_packets)
}

/// The pcap being written, and how to cut it back to its last complete record.
struct Output {
    /// How messages name it: the path, or "stdout".
    name: String,
    pcap: PcapOut,
    /// The file (`None` for stdout), to cut back after a failed write.
    file: Option<File>,
    /// Packets in the file's complete records.
    packets: u64,
}

impl Output {
    /// Creates the file (or takes stdout) and writes the pcap header.
    fn open(
        path: &std::path::Path,
        to_stdout: bool,
        info: &packet_ipc::ServerInfo,
    ) -> Outcome<Output> {
        let (name, sink, file): (String, Box<dyn std::io::Write>, Option<File>) = if to_stdout {
            // Unbuffered: every commit is written through at once.
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Failure::new(exit::IOERR, format!("cannot use stdout: {e}")))?;
            ("stdout".to_owned(), Box::new(File::from(fd)), None)
        } else {
            let name = path.display().to_string();
            let file = File::create(path)
                .map_err(|e| Failure::new(exit::CANTCREAT, format!("cannot create {name}: {e}")))?;
            let keep = file
                .try_clone()
                .map_err(|e| Failure::new(exit::IOERR, format!("cannot use {name}: {e}")))?;
            (name, Box::new(file), Some(keep))
        };
        match PcapOut::new(sink, info.linktype, info.snaplen) {
            Ok(pcap) => Ok(Output {
                name,
                pcap,
                file,
                packets: 0,
            }),
            Err(e) => {
                // Not even the header: leave an empty file rather than a part of one.
                if let Some(file) = &file {
                    let _ = file.set_len(0);
                }
                Err(Failure::new(
                    exit::IOERR,
                    format!("cannot write {name}: {e}"),
                ))
            }
        }
    }

    /// Writes out the records pushed since the last commit (`packets` of them).
    fn commit(&mut self, packets: u64) -> std::io::Result<()> {
        self.pcap.commit()?;
        self.packets += packets;
        Ok(())
    }

    /// A write failed: cuts the file back to the end of its last complete record and
    /// says so.
    fn failure(&self, e: &std::io::Error) -> Failure {
        let Some(file) = &self.file else {
            return Failure::new(exit::IOERR, format!("cannot write {}: {e}", self.name));
        };
        let kept = self.pcap.committed();
        let message = match file.set_len(kept) {
            Ok(()) => format!(
                "cannot write {}: {e} (the file is cut back to its {} complete packets, {kept} bytes)",
                self.name, self.packets
            ),
            Err(cut) => format!(
                "cannot write {}: {e}; it may end in a partial record (cutting it to {kept} \
                 bytes failed: {cut})",
                self.name
            ),
        };
        Failure::new(exit::IOERR, message)
    }
}
