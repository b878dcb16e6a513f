//! `packet-ipc capture SERVER -i IFACE [--filter EXPR] [--snaplen N] [--no-promisc]
//! [--buffer-mib N] [--batch N] [--count N] [--timeout SECS] [--json]`: captures from a
//! network interface with libpcap (loaded at run time) and publishes the packets to a
//! server of the daemon.
//!
//! The capture runs with nanosecond time stamps, the filter (if any) in the kernel. The
//! kernel fills blocks of a TPACKET_V3 ring and hands a block over when it is full or
//! [`packet_ipc::libpcap::BLOCK_TIMEOUT_MS`] after its first packet, as tcpdump's ring does; `--immediate`
//! hands each packet over at once, at the price of a ring slot of the snaplen per packet
//! (TPACKET_V2: libpcap's default 2 MiB then holds about 32 packets on an interface with
//! offloads, and bursts are dropped). The link type of the interface must be the server's (`-i any` is Linux
//! cooked capture, link type 113): else nothing is sent and the command fails (exit 65).
//! The snapshot length is the server's unless `--snaplen` asks for less.
//!
//! # Where the bytes go
//!
//! libpcap hands each packet over as a slice of its ring, valid only while its callback
//! runs: libpcap gives the ring frame (in immediate mode) or block back to the kernel once
//! it has been handed over, and under load the kernel writes the next packets into it at
//! once. A batch of views into the ring can therefore not outlive the
//! packet it was made for. So each packet is copied once, within its callback, into an
//! arena that is allocated once and reused, and the batch is sent as [`PacketRef`]s into
//! that arena, which `Producer::send` copies into shared memory: two copies of each byte
//! (the second is the batch encoding every producer does), no allocation per packet or per
//! batch. One copy only would need a producer API that lets the callback write records
//! straight into a shared-memory slot.
//!
//! A batch goes out when it holds `--batch` packets, when the next packet would not fit
//! in the server's `max-batch-bytes`, or when its first packet has waited [`IDLE_FLUSH`].
//!
//! # Ending
//!
//! SIGINT or SIGTERM (a second one ends the process at once), `--count` packets or
//! `--timeout` end the capture normally (exit 0) with a summary: packets published and
//! libpcap's counters (see [`packet_ipc::libpcap::CaptureStats`]). The kernel's and the
//! interface's drops are also reported to the daemon about once a second
//! ([`Producer::report_source_drops`]), where `packet-ipc stats` shows them.
//!
//! # Errors
//!
//! One line and a sysexits code: 64 an invalid filter, 65 a link type the server does not
//! take, 66 no such interface (the input does not exist, as for a missing capture file),
//! 69 no daemon, an unknown server, libpcap not installed (the line names the package) or
//! the interface failing, 77 no permission to capture (root or CAP_NET_RAW is needed) or
//! to produce.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::ProgressBar;
use packet_ipc::libpcap::{CaptureError, CaptureOptions, CaptureStats, LiveCapture};
use packet_ipc::{batch, ConnectOptions, PacketRef, Producer};

use crate::pcap::linktype_text;
use crate::{exit, human, parse_seconds, stop_flag, Failure, Outcome};

/// How long the first packet of a partial batch may wait for more.
pub const IDLE_FLUSH: Duration = Duration::from_millis(10);
/// The longest one wait for packets lasts, so that a signal is noticed promptly.
const SLICE: Duration = Duration::from_millis(100);
/// How often libpcap's counters are read and the drops reported to the daemon.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// `capture` arguments.
#[derive(Args)]
pub struct CaptureArgs {
    /// The server to publish to.
    server: String,
    /// The interface to capture on (`any`: all of them, as Linux cooked capture).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    iface: String,
    /// A tcpdump filter expression (pcap-filter(7)), applied in the kernel.
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Bytes kept of each packet [default: the server's snaplen; more is cut to it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    snaplen: Option<u32>,
    /// Do not put the interface in promiscuous mode.
    #[arg(long)]
    no_promisc: bool,
    /// Hand each packet over as it arrives (libpcap's immediate mode) instead of in
    /// blocks that the kernel fills for at most 10 ms; needs a larger --buffer-mib at
    /// high rates.
    #[arg(long)]
    immediate: bool,
    /// Size of the kernel's capture buffer in MiB [default: libpcap's, 2 MiB]. With
    /// `--immediate` every packet takes a slot of the snaplen (up to 64 KiB on an
    /// interface with offloads), so 2 MiB holds about 32 packets: raise it (or lower
    /// `--snaplen`) for high rates.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=2047))]
    buffer_mib: Option<u32>,
    /// Packets per batch, at most.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Stop after exactly N packets.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Why capturing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `--count` packets published.
    Count,
    /// `--timeout` passed.
    Timeout,
    /// SIGINT or SIGTERM.
    Signal,
}

impl End {
    fn word(self) -> &'static str {
        match self {
            End::Count => "count",
            End::Timeout => "timeout",
            End::Signal => "signal",
        }
    }
}

/// The failure of opening or reading a capture.
fn capture_failure(e: CaptureError) -> Failure {
    let code = match &e {
        CaptureError::PermissionDenied { .. } => exit::NOPERM,
        CaptureError::NoSuchDevice { .. } => exit::NOINPUT,
        CaptureError::Filter(f) => return crate::filter_failure(f),
        _ => exit::UNAVAILABLE,
    };
    Failure::new(code, e.to_string())
}

/// One packet of the batch being gathered: where its bytes are in the arena.
/// `capture --json`.
#[derive(serde::Serialize)]
struct CaptureSummary<'a> {
    server: &'a str,
    interface: &'a str,
    filter: Option<&'a str>,
    snaplen: u32,
    packets: u64,
    bytes: u64,
    batches: u64,
    received: u64,
    dropped_kernel: u64,
    dropped_interface: u64,
    seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    #[serde(flatten)]
    reconnected: crate::ReconnectSummary,
    end: &'a str,
}

#[derive(Clone, Copy)]
struct Record {
    ts_nanos: u64,
    orig_len: u32,
    start: usize,
    len: usize,
}

/// The batch being gathered, in memory allocated once and reused.
struct Gather {
    /// The captured bytes of the batch's packets, back to back.
    arena: Vec<u8>,
    /// Each packet's place in `arena`.
    records: Vec<Record>,
    /// Always empty: the allocation that holds the batch's views while it is sent.
    views: Vec<PacketRef<'static>>,
    /// The encoded size of the batch (header and records).
    encoded: usize,
    /// The server's `max-batch-bytes`.
    max_bytes: usize,
    /// When the first packet of the batch came.
    since: Option<Instant>,
    /// Packets, bytes and batches sent so far.
    packets: u64,
    bytes: u64,
    batches: u64,
    /// A send that failed within a dispatch round (the round's other packets are let go).
    failed: Option<packet_ipc::Error>,
}

/// An empty vector of views of any lifetime, reusing the allocation of `views`.
fn recycle<'b>(mut views: Vec<PacketRef<'_>>) -> Vec<PacketRef<'b>> {
    views.clear();
    // An empty vector mapped to a type of the same size and alignment is collected in
    // place: no allocation.
    views.into_iter().map(|_| unreachable!()).collect()
}

impl Gather {
    fn new(limit: usize, max_bytes: usize) -> Gather {
        Gather {
            arena: Vec::new(),
            records: Vec::with_capacity(limit),
            views: Vec::with_capacity(limit),
            encoded: batch::HEADER_LEN,
            max_bytes,
            since: None,
            packets: 0,
            bytes: 0,
            batches: 0,
            failed: None,
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    /// Adds a packet (the one copy out of libpcap's ring), sending the batch first when
    /// the packet would not fit in it.
    fn push(&mut self, producer: &mut Producer, ts_nanos: u64, data: &[u8], orig_len: u32) {
        if self.failed.is_some() {
            return;
        }
        let record = batch::record_len(data.len());
        if !self.records.is_empty() && self.encoded + record > self.max_bytes {
            if let Err(e) = self.send(producer) {
                self.failed = Some(e);
                return;
            }
        }
        if self.records.is_empty() {
            self.since = Some(Instant::now());
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        self.records.push(Record {
            ts_nanos,
            orig_len,
            start,
            len: data.len(),
        });
        self.encoded += record;
    }

    /// Sends the gathered packets as one batch.
    fn send(&mut self, producer: &mut Producer) -> packet_ipc::Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut views = recycle(std::mem::take(&mut self.views));
        views.extend(self.records.iter().map(|r| {
            PacketRef::new(
                r.ts_nanos,
                r.orig_len,
                &self.arena[r.start..r.start + r.len],
            )
        }));
        let sent = producer.send(&views);
        self.views = recycle(views);
        sent?;
        self.packets += self.records.len() as u64;
        self.bytes += self.records.iter().map(|r| r.len as u64).sum::<u64>();
        self.batches += 1;
        self.records.clear();
        self.arena.clear();
        self.encoded = batch::HEADER_LEN;
        self.since = None;
        Ok(())
    }

    /// The error of a send made during the last dispatch round, if any.
    fn take_failure(&mut self) -> packet_ipc::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

/// Captures into the server.
pub fn run(args: CaptureArgs) -> Outcome {
    let stop = stop_flag()?;
    let options = ConnectOptions {
        interrupt: Some(Arc::clone(&stop)),
        ..ConnectOptions::default()
    };
    let mut producer = Producer::connect_with(&args.server, options)?;
    let info = producer.info().clone();

    // The server's snaplen, or less; and never more than fits in one batch.
    let fits = info
        .max_batch_bytes
        .saturating_sub(batch::HEADER_LEN + batch::RECORD_HEAD_LEN)
        & !(batch::ALIGN - 1);
    let fits = u32::try_from(fits).unwrap_or(u32::MAX);
    let snaplen = match (args.snaplen, info.snaplen) {
        (Some(asked), 0) => asked,
        (Some(asked), server) => asked.min(server),
        (None, server) => server,
    };
    let snaplen = if snaplen == 0 {
        fits
    } else {
        snaplen.min(fits)
    };

    let mut options = CaptureOptions::new()
        .snaplen(snaplen)
        .promisc(!args.no_promisc)
        .immediate(args.immediate)
        .nanosecond(true);
    if let Some(mib) = args.buffer_mib {
        options = options.buffer_mib(mib);
    }
    if let Some(expr) = &args.filter {
        options = options.filter(expr.clone());
    }
    let mut capture = options.open(&args.iface).map_err(capture_failure)?;
    if capture.datalink() != info.linktype {
        return Err(Failure::new(
            exit::DATAERR,
            format!(
                "interface {} has link type {}, but server {} takes link type {}: nothing sent",
                args.iface,
                linktype_text(capture.datalink()),
                info.name,
                linktype_text(info.linktype)
            ),
        ));
    }
    eprintln!("capturing on {} into {}", args.iface, args.server);

    let started = Instant::now();
    let limit = args.batch as usize;
    let mut gather = Gather::new(limit, info.max_batch_bytes);
    let progress = if std::io::stderr().is_terminal() {
        crate::publish::progress_bar(0)
    } else {
        ProgressBar::hidden()
    };
    let mut run = Running {
        capture: &mut capture,
        producer: &mut producer,
        gather: &mut gather,
        progress: &progress,
        started,
        stats: CaptureStats::default(),
        last_report: (Instant::now(), 0, 0),
    };
    let result = run.capture_until(&args, &stop);
    progress.finish_and_clear();
    let end = match result {
        Ok(end) => end,
        Err(LoopError::Send(packet_ipc::Error::Interrupted)) => End::Signal,
        Err(LoopError::Send(e)) => return Err(e.into()),
        Err(LoopError::Capture(e)) => return Err(capture_failure(e)),
    };
    // What a signal caught while still gathering goes out too (unless it came while
    // waiting for a free slot: then the send is interrupted again and it is let go).
    match gather.send(&mut producer) {
        Ok(()) | Err(packet_ipc::Error::Interrupted) => {}
        Err(e) => return Err(e.into()),
    }
    let stats = capture.stats().map_err(capture_failure)?;
    producer.report_source_drops(stats.dropped_kernel + stats.dropped_interface);
    let elapsed = started.elapsed();
    let report = producer.report();
    drop(capture);
    drop(producer);

    let (packets, bytes) = (gather.packets, gather.bytes);
    if args.json {
        crate::print_json(&CaptureSummary {
            server: &args.server,
            interface: &args.iface,
            filter: args.filter.as_deref(),
            snaplen,
            packets,
            bytes,
            batches: gather.batches,
            received: stats.received,
            dropped_kernel: stats.dropped_kernel,
            dropped_interface: stats.dropped_interface,
            seconds: elapsed.as_secs_f64(),
            packets_per_second: human::per_second(packets, elapsed),
            bits_per_second: human::per_second(bytes, elapsed) * 8.0,
            reconnected: (&report).into(),
            end: end.word(),
        })?;
    } else {
        println!(
            "captured {packets} packets, {bytes} bytes ({}) on {} into {} in {}: {} (end: {})",
            human::bytes(bytes),
            args.iface,
            args.server,
            human::duration(elapsed),
            human::rate(packets, bytes, elapsed),
            end.word()
        );
        println!(
            "libpcap: {} received, {} dropped by the kernel, {} dropped by the interface",
            stats.received, stats.dropped_kernel, stats.dropped_interface
        );
        if let Some(line) = crate::publish::reconnect_line(&report) {
            println!("{line}");
        }
    }
    Ok(())
}

/// The capture loop and what it works with.
struct Running<'a> {
    capture: &'a mut LiveCapture,
    producer: &'a mut Producer,
    gather: &'a mut Gather,
    progress: &'a ProgressBar,
    started: Instant,
    /// libpcap's counters when last read.
    stats: CaptureStats,
    /// When the counters were last read, and the packets and bytes sent then.
    last_report: (Instant, u64, u64),
}

impl Running<'_> {
    /// Captures and sends until the count, the timeout or a signal; a send interrupted by
    /// a signal is `Error::Interrupted`.
    fn capture_until(
        &mut self,
        args: &CaptureArgs,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<End, LoopError> {
        let limit = args.batch as usize;
        // The last round read packets: more are likely waiting, read them without
        // polling first (libpcap looks at the ring without a system call when a packet
        // is there).
        let mut more = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(End::Signal);
            }
            let taken = self.gather.packets + self.gather.len() as u64;
            if args.count.is_some_and(|n| taken >= n) {
                self.gather.send(self.producer)?;
                return Ok(End::Count);
            }
            let mut wait = match self.gather.since {
                Some(t) => (t + IDLE_FLUSH).saturating_duration_since(Instant::now()),
                None => SLICE,
            };
            if let Some(limit) = args.timeout {
                let left = limit.saturating_sub(self.started.elapsed());
                if left.is_zero() {
                    return Ok(End::Timeout);
                }
                wait = wait.min(left);
            }
            let ready = more || self.capture.wait(wait)?;
            more = false;
            if ready {
                let mut max = limit - self.gather.len();
                if let Some(n) = args.count {
                    max = max.min(usize::try_from(n - taken).unwrap_or(usize::MAX));
                }
                let gather = &mut *self.gather;
                let producer = &mut *self.producer;
                let n = self.capture.dispatch(max, |ts, data, orig_len| {
                    gather.push(producer, ts, data, orig_len)
                })?;
                self.gather.take_failure()?;
                more = n > 0;
                if self.gather.len() >= limit {
                    self.gather.send(self.producer)?;
                }
            }
            if self.gather.since.is_some_and(|t| t.elapsed() >= IDLE_FLUSH) {
                self.gather.send(self.producer)?;
            }
            if self.last_report.0.elapsed() >= REPORT_EVERY {
                self.report()?;
            }
        }
    }

    /// Reads libpcap's counters, reports the drops to the daemon and shows the progress.
    fn report(&mut self) -> Result<(), LoopError> {
        self.stats = self.capture.stats()?;
        self.producer
            .report_source_drops(self.stats.dropped_kernel + self.stats.dropped_interface);
        let (at, packets, bytes) = self.last_report;
        let (now_packets, now_bytes) = (self.gather.packets, self.gather.bytes);
        if !self.progress.is_hidden() {
            self.progress.set_message(format!(
                "{now_packets} packets, {}, {} dropped by the kernel; last second: {}",
                human::bytes(now_bytes),
                self.stats.dropped_kernel,
                human::rate(now_packets - packets, now_bytes - bytes, at.elapsed())
            ));
        }
        self.last_report = (Instant::now(), now_packets, now_bytes);
        Ok(())
    }
}

/// What ends the capture loop early.
enum LoopError {
    /// Sending to the daemon failed (or a signal interrupted the wait for a free slot).
    Send(packet_ipc::Error),
    /// Reading the capture failed.
    Capture(CaptureError),
}

impl From<packet_ipc::Error> for LoopError {
    fn from(e: packet_ipc::Error) -> LoopError {
        LoopError::Send(e)
    }
}

impl From<CaptureError> for LoopError {
    fn from(e: CaptureError) -> LoopError {
        LoopError::Capture(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_recycled_in_place() {
        let data = [7u8; 10];
        let mut views: Vec<PacketRef<'_>> = Vec::with_capacity(16);
        views.push(PacketRef::new(1, 10, &data));
        let at = views.as_ptr() as usize;
        let again: Vec<PacketRef<'static>> = recycle(views);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 16);
        assert_eq!(again.as_ptr() as usize, at, "the same allocation");
    }
}
