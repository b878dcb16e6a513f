//! `packet-ipc publish SERVER FILE [--batch N] [--rate PPS] [--loop N] [--json]`: sends
//! the packets of a pcap or pcapng capture (a file, or `-` for stdin) to a server.
//!
//! A reader thread parses the capture and hands packets over a bounded channel; this
//! thread gathers them into batches and sends them. Batches are sent when full, when the
//! next packet would make them too large for the server (`max-batch-bytes`), or when their
//! first packet has waited [`IDLE_FLUSH`] (so a live capture on a pipe is passed on
//! promptly). Packet buffers go back to the reader through a pool once their batch is
//! sent, so a long run allocates nothing per packet.
//!
//! SIGINT or SIGTERM ends it normally (exit 0, the summary says "interrupted"), also while
//! it waits for a free slot under `overflow = "block"`: the batch it was waiting to send is
//! then not sent. The summary says when the daemon went away meanwhile and batches sent to
//! it may not have been delivered ([`Producer::report`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use packet_ipc::packet::time_from_nanos;
use packet_ipc::{batch, AsIpcPacket, ConnectOptions, Packet, Producer, ProducerReport};

use crate::pcap::{linktype_text, CaptureReader, Input};
use crate::{exit, human, stop_flag, Failure, Outcome};

/// How long the first packet of a partial batch may wait for more.
pub const IDLE_FLUSH: Duration = Duration::from_millis(50);
/// With `--rate`, the longest a batch may span (so packets are not sent in bunches).
const PACE_SLICE: f64 = 0.01;

/// `publish` arguments.
#[derive(Args)]
pub struct PublishArgs {
    /// The server to send to.
    server: String,
    /// The capture: a pcap or pcapng file, or `-` to read one streamed on stdin.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Packets per batch.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Send at most this many packets per second, evenly.
    #[arg(long, value_name = "PPS", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Send the file N times in all (not for stdin).
    #[arg(long = "loop", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    loops: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{text:?} is not a positive number of packets per second"
        )),
    }
}

/// What the reader thread hands over.
enum Msg {
    /// A packet, and how far into the capture (all passes) it ends, for the progress bar.
    Packet(Packet, u64),
    /// The capture (all its passes) is read.
    End,
    /// Reading failed; nothing follows.
    Fail(Failure),
}

/// Buffers of sent packets, for the reader to fill again.
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// Where the capture comes from.
struct Source {
    /// The file, or `None` for stdin.
    path: Option<PathBuf>,
    /// How messages name it.
    name: String,
}

impl Source {
    fn open(&self) -> Outcome<CaptureReader> {
        let input: Input = match &self.path {
            None => Box::new(std::io::stdin()),
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    Failure::new(exit::NOINPUT, format!("cannot open {}: {e}", self.name))
                })?;
                Box::new(file)
            }
        };
        CaptureReader::open(&self.name, input)
    }
}

/// Sends the capture.
pub fn run(args: PublishArgs) -> Outcome {
    let stdin = args.file.as_os_str() == "-";
    if stdin && args.loops > 1 {
        return Err(Failure::new(
            exit::USAGE,
            "--loop cannot repeat a capture read from stdin",
        ));
    }
    let source = Source {
        path: (!stdin).then(|| args.file.clone()),
        name: if stdin {
            "stdin".to_owned()
        } else {
            args.file.display().to_string()
        },
    };
    let stop = stop_flag()?;
    let reader = source.open()?;
    let format = reader.format();
    let options = ConnectOptions {
        interrupt: Some(Arc::clone(&stop)),
        ..ConnectOptions::default()
    };
    let mut producer = Producer::connect_with(&args.server, options)?;
    let info = producer.info().clone();
    if let Some(linktype) = reader.linktype() {
        if linktype != info.linktype {
            return Err(linktype_mismatch(&source.name, None, linktype, &info));
        }
    }
    let started = Instant::now();

    let limit = match args.rate {
        Some(rate) => (args.batch as usize).min(((rate * PACE_SLICE) as usize).max(1)),
        None => args.batch as usize,
    };
    let pool: Pool = Arc::default();
    let (tx, rx) = mpsc::sync_channel::<Msg>(limit.max(1024));
    let file_len = match &source.path {
        Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        None => 0,
    };
    let snaplen = match info.snaplen {
        0 => usize::MAX,
        n => n as usize,
    };
    {
        let pool = Arc::clone(&pool);
        let info = info.clone();
        let loops = args.loops;
        thread::Builder::new()
            .name("capture reader".into())
            .spawn(move || {
                reader_thread(reader, source, loops, file_len, snaplen, &info, &tx, &pool)
            })
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot start a thread: {e}")))?;
    }

    let progress = progress_bar(file_len.saturating_mul(args.loops));
    let mut out = Outgoing {
        producer: &mut producer,
        pending: Vec::with_capacity(limit),
        pending_bytes: batch::HEADER_LEN,
        max_bytes: info.max_batch_bytes,
        spare: Vec::with_capacity(limit),
        pool,
        rate: args.rate,
        paced_from: None,
        packets: 0,
        bytes: 0,
        batches: 0,
        stop: Arc::clone(&stop),
        interrupted: false,
    };
    let result = send_all(&rx, &mut out, &progress, limit, &stop);
    progress.finish_and_clear();
    let interrupted = result? || out.interrupted;
    let elapsed = started.elapsed();
    let (packets, bytes, batches) = (out.packets, out.bytes, out.batches);
    drop(out);
    let report = producer.report();
    drop(producer);
    if args.json {
        crate::print_json(&PublishSummary {
            server: &args.server,
            format,
            packets,
            bytes,
            batches,
            seconds: elapsed.as_secs_f64(),
            packets_per_second: human::per_second(packets, elapsed),
            bits_per_second: human::per_second(bytes, elapsed) * 8.0,
            interrupted,
            reconnected: (&report).into(),
        })?;
    } else {
        println!(
            "sent {packets} packets ({format}), {bytes} bytes ({}) to {} in {}: {}{}",
            human::bytes(bytes),
            args.server,
            human::duration(elapsed),
            human::rate(packets, bytes, elapsed),
            if interrupted { " (interrupted)" } else { "" }
        );
        if let Some(line) = reconnect_line(&report) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `publish --json`.
#[derive(serde::Serialize)]
struct PublishSummary<'a> {
    server: &'a str,
    format: &'a str,
    packets: u64,
    bytes: u64,
    batches: u64,
    seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    interrupted: bool,
    #[serde(flatten)]
    reconnected: crate::ReconnectSummary,
}

/// For a producer's human summary: whether the daemon went away meanwhile, and what may
/// have been lost with it; `None` if it never did.
pub(crate) fn reconnect_line(report: &ProducerReport) -> Option<String> {
    if report.reconnects == 0 && report.uncertain_batches == 0 {
        return None;
    }
    Some(format!(
        "reconnected {} times; up to {} batches ({} packets) sent to the daemon that went \
         away may not have been delivered",
        report.reconnects, report.uncertain_batches, report.uncertain_packets
    ))
}

/// Gathers the reader's packets into batches and sends them, until the capture ends or a
/// signal (then true) or an error.
fn send_all(
    rx: &mpsc::Receiver<Msg>,
    out: &mut Outgoing<'_>,
    progress: &ProgressBar,
    limit: usize,
    stop: &AtomicBool,
) -> Outcome<bool> {
    let mut interrupted = false;
    // How far into the capture the packets read so far go (sent soon after).
    let mut progress_at = 0;
    let mut last_draw = Instant::now();
    let mut oldest: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            out.flush()?;
            break;
        }
        let wait = match oldest {
            Some(t) => (t + IDLE_FLUSH).saturating_duration_since(Instant::now()),
            None => Duration::from_millis(100),
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Packet(packet, offset)) => {
                progress_at = offset;
                let record = batch::record_len(packet.data().len());
                if !out.pending.is_empty() && out.pending_bytes + record > out.max_bytes {
                    out.flush()?;
                }
                if out.pending.is_empty() {
                    oldest = Some(Instant::now());
                }
                out.pending.push(packet);
                out.pending_bytes += record;
                if out.pending.len() >= limit {
                    out.flush()?;
                    oldest = None;
                }
            }
            Ok(Msg::End) => {
                out.flush()?;
                break;
            }
            Ok(Msg::Fail(failure)) => {
                // What was read before the bad record goes out; then the error.
                out.flush()?;
                return Err(failure);
            }
            Err(RecvTimeoutError::Timeout) => {
                if oldest.is_some_and(|t| t.elapsed() >= IDLE_FLUSH) {
                    out.flush()?;
                    oldest = None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::new(
                    exit::SOFTWARE,
                    "the capture reader stopped unexpectedly",
                ))
            }
        }
        if out.pending.is_empty() {
            oldest = None;
        }
        if !progress.is_hidden() && last_draw.elapsed() >= Duration::from_millis(100) {
            last_draw = Instant::now();
            progress.set_position(progress_at);
            progress.set_message(format!(
                "{} packets, {}",
                out.packets,
                human::bytes(out.bytes)
            ));
        }
    }
    Ok(interrupted)
}

fn linktype_mismatch(
    name: &str,
    at: Option<String>,
    linktype: u32,
    info: &packet_ipc::ServerInfo,
) -> Failure {
    let at = at.map(|a| format!(" at {a}")).unwrap_or_default();
    Failure::new(
        exit::DATAERR,
        format!(
            "{name} has link type {}{at}, but server {} takes link type {}: not sent",
            linktype_text(linktype),
            info.name,
            linktype_text(info.linktype)
        ),
    )
}

/// A bar on a terminal (by how far into the file the packets go; a spinner for stdin and
/// a total of 0), else nothing.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    if total == 0 {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        return bar;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {percent:>3}% {elapsed} (eta {eta}) {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// The batch being gathered, and what has been sent.
struct Outgoing<'a> {
    producer: &'a mut Producer,
    pending: Vec<Packet>,
    /// Encoded size of `pending` as a batch.
    pending_bytes: usize,
    max_bytes: usize,
    /// Buffers of sent packets, on their way back to the pool.
    spare: Vec<Vec<u8>>,
    pool: Pool,
    rate: Option<f64>,
    /// When the first batch went out (the origin of the `--rate` schedule).
    paced_from: Option<Instant>,
    packets: u64,
    bytes: u64,
    batches: u64,
    stop: Arc<AtomicBool>,
    /// A signal interrupted the wait for a free slot.
    interrupted: bool,
}

impl Outgoing<'_> {
    /// Sends the pending packets as one batch, at its time under `--rate`.
    fn flush(&mut self) -> Outcome {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(rate) = self.rate {
            // Packet n is due n/rate seconds after the first: the schedule follows the
            // clock, so time spent reading and sending is not added to it.
            let origin = *self.paced_from.get_or_insert_with(Instant::now);
            let due = origin + Duration::from_secs_f64(self.packets as f64 / rate);
            loop {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                thread::sleep(left.min(Duration::from_millis(100)));
            }
        }
        match self.producer.send(&self.pending) {
            Ok(()) => {}
            Err(packet_ipc::Error::Interrupted) => {
                // Not sent: the loop sees the stop flag and ends.
                self.interrupted = true;
                self.recycle();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.packets += self.pending.len() as u64;
        self.bytes += self
            .pending
            .iter()
            .map(|p| p.data().len() as u64)
            .sum::<u64>();
        self.batches += 1;
        self.recycle();
        Ok(())
    }

    /// Gives the buffers of the pending packets back to the reader; nothing is pending
    /// after.
    fn recycle(&mut self) {
        self.spare
            .extend(self.pending.drain(..).map(Packet::into_data));
        if let Ok(mut pool) = self.pool.lock() {
            pool.append(&mut self.spare);
        }
        self.spare.clear();
        self.pending_bytes = batch::HEADER_LEN;
    }
}

/// Reads every pass of the capture into the channel; ends with `End` or `Fail`.
#[expect(clippy::too_many_arguments, reason = "one call, all of them needed")]
fn reader_thread(
    first: CaptureReader,
    source: Source,
    loops: u64,
    file_len: u64,
    snaplen: usize,
    info: &packet_ipc::ServerInfo,
    tx: &SyncSender<Msg>,
    pool: &Pool,
) {
    let mut reader = first;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut pass = 1;
    loop {
        let before = (pass - 1) * file_len;
        match pump(
            &mut reader,
            &source,
            before,
            snaplen,
            info,
            tx,
            pool,
            &mut spare,
        ) {
            Ok(true) => {}
            // The receiving side is gone: nothing more to do.
            Ok(false) => return,
            Err(mut failure) => {
                if loops > 1 {
                    failure
                        .message
                        .push_str(&format!(" (pass {pass} of {loops})"));
                }
                let _ = tx.send(Msg::Fail(failure));
                return;
            }
        }
        if pass >= loops {
            break;
        }
        pass += 1;
        reader = match source.open() {
            Ok(r) => r,
            Err(failure) => {
                let _ = tx.send(Msg::Fail(failure));
                return;
            }
        };
    }
    let _ = tx.send(Msg::End);
}

/// Sends the packets of one pass; false if the receiver is gone.
#[expect(clippy::too_many_arguments, reason = "one call, all of them needed")]
fn pump(
    reader: &mut CaptureReader,
    source: &Source,
    before: u64,
    snaplen: usize,
    info: &packet_ipc::ServerInfo,
    tx: &SyncSender<Msg>,
    pool: &Pool,
    spare: &mut Vec<Vec<u8>>,
) -> Outcome<bool> {
    loop {
        if spare.is_empty() {
            if let Ok(mut shared) = pool.lock() {
                std::mem::swap(spare, &mut *shared);
            }
        }
        let mut data = spare.pop().unwrap_or_default();
        let Some(meta) = reader.next_packet(&mut data, snaplen)? else {
            return Ok(true);
        };
        if meta.linktype != info.linktype {
            return Err(linktype_mismatch(
                &source.name,
                Some(reader.position()),
                meta.linktype,
                info,
            ));
        }
        let packet =
            Packet::with_orig_len(time_from_nanos(meta.ts_nanos), data, meta.orig_len as usize);
        if tx
            .send(Msg::Packet(packet, before + reader.offset()))
            .is_err()
        {
            return Ok(false);
        }
    }
}
