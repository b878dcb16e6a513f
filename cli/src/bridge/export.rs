//! `packet-ipc bridge export SERVER --nats URL [--stream NAME] [--subject SUBJ]
//! [--max-bytes N] [--max-age DUR] [auth and TLS flags] [--json]`: subscribes to a local
//! server and publishes each batch to JetStream.
//!
//! A reader thread receives the server's batches (`Subscriber::recv_timeout` blocks) and
//! cuts each into messages that fit the NATS server's `max_payload`: as many whole
//! packets as fit, in order; a packet alone too large for one message has its captured
//! bytes cut to fit (its original length kept) and is counted in `cut_packets`. The
//! messages go to the publisher through a channel of [`QUEUE`] places; the publisher keeps
//! at most `--window` publishes unacknowledged. So while NATS is unreachable the reader
//! stops reading, and the exporter falls under its server's overflow policy like any slow
//! subscriber: with `overflow = "block"` the producers are paced and nothing is lost.
//!
//! Every message has a `Nats-Msg-Id` of `<host>/<server>/<epoch>/<bridge seq>` (the epoch
//! is the exporter's start): a publish retried after a fault (same id) is stored once
//! within the stream's duplicate window. Failed publishes are retried in order, with
//! backoff, until they are acknowledged.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Args;
use packet_ipc::batch::{encode, HEADER_LEN};
use packet_ipc::connect::DEFAULT_RECONNECT_WAIT;
use packet_ipc::{AsIpcPacket, Batch, ConnectOptions, PacketRef, Received, Subscriber};
use tokio::sync::mpsc;

use super::nats::{self, StreamSpec};
use super::{
    hostname, parse_age, parse_size, runtime, NatsArgs, Status, H_BATCH_SEQ, H_BRIDGE_SEQ, H_CUT,
    H_EPOCH, H_HOST, H_LINKTYPE, H_LOST, H_PACKETS, H_PART, H_SERVER, H_SNAPLEN,
};
use crate::{exit, human, parse_seconds, stop_flag, Failure, Outcome};

/// Messages cut and waiting for the publisher (beyond the window).
const QUEUE: usize = 4;
/// The longest one wait for a batch lasts, so that a signal is noticed promptly.
const SLICE: Duration = Duration::from_millis(100);
/// After a signal, the batches the server has queued for the export are still taken, for
/// at most this long, until none comes within [`DRAIN_IDLE`].
const DRAIN_READ: Duration = Duration::from_secs(2);
/// See [`DRAIN_READ`].
const DRAIN_IDLE: Duration = Duration::from_millis(50);
/// After a signal, how long in-flight messages may take to be acknowledged.
const DRAIN: Duration = Duration::from_secs(30);
/// Bytes of a record's fixed head in the batch format (timestamp, caplen, origlen).
const RECORD_HEAD: usize = 16;

/// `bridge export` arguments.
#[derive(Args)]
pub struct ExportArgs {
    /// The local server whose batches are exported.
    server: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// When the stream is created: its size limit (`512M`, `2G`, bytes; K/M/G/T are
    /// powers of 1024) [default: none].
    #[arg(long, value_name = "N", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// When the stream is created: how long messages are kept (`30s`, `10m`, `2h`, `1d`)
    /// [default: forever].
    #[arg(long, value_name = "DUR", value_parser = parse_age)]
    max_age: Option<Duration>,
    /// Publishes that may await their acknowledgement at once.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    window: u16,
    /// How long to wait for the local daemon to come back when it stops [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    reconnect_wait: Option<Duration>,
}

/// One NATS message: a batch, or part of one.
struct Outgoing {
    bridge_seq: u64,
    msg_id: String,
    headers: HeaderMap,
    payload: Bytes,
    packets: u64,
    /// Captured bytes of its packets (as sent).
    bytes: u64,
}

impl Outgoing {
    fn publish(&self) -> PublishMessage {
        PublishMessage::build()
            .payload(self.payload.clone())
            .headers(self.headers.clone())
            .message_id(&self.msg_id)
    }
}

/// What the reader thread counts.
#[derive(Default)]
struct ReadCounters {
    batches: AtomicU64,
    lost_batches: AtomicU64,
    cut_packets: AtomicU64,
    reconnections: AtomicU64,
}

/// Why the reader stopped.
enum ReadEnd {
    /// SIGINT or SIGTERM.
    Signal,
    /// The server is gone for good.
    ServerGone,
    /// The publisher stopped taking messages.
    Closed,
}

/// Exports the server.
pub fn run(args: ExportArgs) -> Outcome {
    let stop = stop_flag()?;
    let subject = args.nats.subject_for(&args.server);
    if subject.contains(['*', '>']) || subject.split('.').any(str::is_empty) {
        return Err(Failure::new(
            exit::USAGE,
            format!("cannot publish to {subject:?}: a subject without wildcards or empty tokens is needed"),
        ));
    }
    let options = ConnectOptions {
        reconnect_wait: args.reconnect_wait.unwrap_or(DEFAULT_RECONNECT_WAIT),
        ..ConnectOptions::default()
    };
    let subscriber = Subscriber::connect_with(&args.server, options)?;
    let rt = runtime()?;
    let result = rt.block_on(export(&args, subject, subscriber, &stop));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn export(
    args: &ExportArgs,
    subject: String,
    subscriber: Subscriber,
    stop: &Arc<AtomicBool>,
) -> Outcome {
    let started = Instant::now();
    let mut status = Status::new();
    let info = subscriber.info().clone();
    let nats = nats::connect(&args.nats, "packet-ipc bridge export").await?;
    let deadline = Instant::now() + args.nats.connect_wait();
    let spec = StreamSpec {
        name: args.nats.stream_name(),
        subject: &subject,
        max_bytes: args.max_bytes,
        max_age: args.max_age,
    };
    nats::ensure_stream(&nats, &spec, deadline, &mut status).await?;
    let max_payload = nats.client.server_info().max_payload;
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let cutter = Cutter::new(
        hostname(),
        info.name.clone(),
        epoch,
        info.linktype,
        info.snaplen,
        max_payload,
    )?;

    let counters = Arc::new(ReadCounters::default());
    let (tx, rx) = mpsc::channel::<Outgoing>(QUEUE);
    // Raised by a signal, or by the publisher when it stops for good.
    let quit = Arc::new(AtomicBool::new(false));
    let reader = {
        let counters = Arc::clone(&counters);
        let stop = Arc::clone(stop);
        let quit = Arc::clone(&quit);
        std::thread::Builder::new()
            .name("bridge reader".into())
            .spawn(move || read_loop(subscriber, cutter, &tx, &stop, &quit, &counters))
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot start a thread: {e}")))?
    };
    eprintln!("exporting {} to {} as {subject}", args.server, nats.url);

    let mut publisher = Publisher {
        js: nats.js.clone(),
        subject: subject.clone(),
        window: usize::from(args.window),
        inflight: VecDeque::new(),
        rx,
        rx_done: false,
        stopping: None,
        stop: Arc::clone(stop),
        totals: Totals::default(),
        counters: Arc::clone(&counters),
        status,
        last_tick: Instant::now(),
        first_message: None,
        last_ack: None,
        fault_shown: None,
    };
    let published = publisher.run().await;
    // Whatever the publisher's outcome, the reader ends: its channel is closed.
    quit.store(true, Ordering::Relaxed);
    publisher.rx.close();
    let read = reader
        .join()
        .map_err(|_| Failure::new(exit::SOFTWARE, "the bridge reader panicked"))?;
    publisher.status.clear();
    // Bounded: a client that lost its server would wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.client.flush()).await;
    published?;
    let end = match read? {
        ReadEnd::Signal => "signal",
        ReadEnd::ServerGone => "end",
        ReadEnd::Closed if publisher.stopping.is_some() => "signal",
        ReadEnd::Closed => "closed",
    };

    let elapsed = started.elapsed();
    // From the first batch to the last acknowledgement: the rate while there was work.
    let active = match (publisher.first_message, publisher.last_ack) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let t = &publisher.totals;
    let batches = counters.batches.load(Ordering::Relaxed);
    let lost = counters.lost_batches.load(Ordering::Relaxed);
    let cut = counters.cut_packets.load(Ordering::Relaxed);
    if args.nats.json {
        crate::print_json(&ExportSummary {
            server: &args.server,
            nats: &nats.url,
            stream: args.nats.stream_name(),
            subject: &subject,
            batches,
            messages: t.messages,
            packets: t.packets,
            bytes: t.bytes,
            last_sequence: t.last_sequence,
            cut_packets: cut,
            lost_batches: lost,
            reconnections: counters.reconnections.load(Ordering::Relaxed),
            retries: t.retries,
            duplicates: t.duplicates,
            max_payload,
            seconds: elapsed.as_secs_f64(),
            active_seconds: active.as_secs_f64(),
            packets_per_second: human::per_second(t.packets, elapsed),
            bits_per_second: human::per_second(t.bytes, elapsed) * 8.0,
            end,
        })?;
    } else {
        println!(
            "exported {batches} batches as {} messages, {} packets, {} bytes ({}) from {} to {subject} \
             in {}: {}; last sequence {}, {cut} packets cut, {lost} lost batches, {} retries (end: {end})",
            t.messages,
            t.packets,
            t.bytes,
            human::bytes(t.bytes),
            args.server,
            human::duration(elapsed),
            human::rate(t.packets, t.bytes, elapsed),
            t.last_sequence,
            t.retries,
        );
    }
    Ok(())
}

/// Receives batches and hands their messages to the publisher, until a signal, the end of
/// the server or the publisher closing the channel.
fn read_loop(
    mut subscriber: Subscriber,
    mut cutter: Cutter,
    tx: &mpsc::Sender<Outgoing>,
    stop: &AtomicBool,
    quit: &AtomicBool,
    counters: &ReadCounters,
) -> Outcome<ReadEnd> {
    // After a signal: since when the batches already queued for us are taken.
    let mut draining: Option<Instant> = None;
    loop {
        if quit.load(Ordering::Relaxed) {
            return Ok(ReadEnd::Closed);
        }
        if draining.is_none() && stop.load(Ordering::Relaxed) {
            draining = Some(Instant::now());
        }
        if draining.is_some_and(|t| t.elapsed() > DRAIN_READ) {
            return Ok(ReadEnd::Signal);
        }
        let wait = if draining.is_some() {
            DRAIN_IDLE
        } else {
            SLICE
        };
        match subscriber.recv_timeout(wait)? {
            Received::Batch(batch) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .lost_batches
                    .fetch_add(batch.lost(), Ordering::Relaxed);
                counters
                    .reconnections
                    .fetch_add(u64::from(batch.reconnected()), Ordering::Relaxed);
                let mut closed = false;
                let cut = cutter.cut(&batch, &mut |message| {
                    closed = closed || tx.blocking_send(message).is_err();
                    !closed
                });
                counters.cut_packets.fetch_add(cut, Ordering::Relaxed);
                if closed {
                    return Ok(ReadEnd::Closed);
                }
            }
            Received::Timeout if draining.is_some() => return Ok(ReadEnd::Signal),
            Received::Timeout => {}
            Received::End => return Ok(ReadEnd::ServerGone),
        }
    }
}

/// A packet whose captured bytes may be cut short (its original length kept).
#[derive(Clone)]
struct Capped<'a> {
    packet: PacketRef<'a>,
    caplen: usize,
}

impl AsIpcPacket for Capped<'_> {
    fn timestamp(&self) -> &SystemTime {
        self.packet.timestamp()
    }
    fn data(&self) -> &[u8] {
        &self.packet.bytes()[..self.caplen]
    }
    fn orig_len(&self) -> usize {
        self.packet.orig_len().max(self.packet.bytes().len())
    }
    fn timestamp_nanos(&self) -> u64 {
        self.packet.timestamp_nanos()
    }
}

/// The length of a packet's record in a batch: its head and its bytes padded to 8.
fn record_len(caplen: usize) -> usize {
    RECORD_HEAD + caplen.div_ceil(8) * 8
}

/// Cuts batches into messages that fit `max_payload`, headers included.
struct Cutter {
    host: String,
    server: String,
    epoch: u64,
    linktype: u32,
    snaplen: u32,
    /// Room for the batch in one message.
    budget: usize,
    /// The longest captured length a packet alone in a message may keep.
    max_caplen: usize,
    /// The next message's bridge sequence number.
    next_seq: u64,
}

impl Cutter {
    fn new(
        host: String,
        server: String,
        epoch: u64,
        linktype: u32,
        snaplen: u32,
        max_payload: usize,
    ) -> Outcome<Cutter> {
        let mut cutter = Cutter {
            host,
            server,
            epoch,
            linktype,
            snaplen,
            budget: 0,
            max_caplen: 0,
            next_seq: 1,
        };
        // The headers at their longest: every number at its widest.
        let widest = cutter.headers(
            u64::MAX,
            u64::MAX,
            u32::MAX,
            u32::MAX,
            u64::MAX,
            u64::MAX,
            u64::MAX,
        );
        let overhead =
            wire_len(&widest) + cutter.msg_id(u64::MAX).len() + "Nats-Msg-Id: \r\n".len();
        let budget = max_payload.saturating_sub(overhead) & !7;
        if budget < HEADER_LEN + record_len(64) {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "the NATS server's max_payload ({max_payload} bytes) leaves no room for \
                     packets after {overhead} bytes of headers"
                ),
            ));
        }
        cutter.budget = budget;
        cutter.max_caplen = budget - HEADER_LEN - RECORD_HEAD;
        Ok(cutter)
    }

    fn msg_id(&self, bridge_seq: u64) -> String {
        format!("{}/{}/{}/{bridge_seq}", self.host, self.server, self.epoch)
    }

    #[expect(clippy::too_many_arguments, reason = "one header each")]
    fn headers(
        &self,
        bridge_seq: u64,
        batch_seq: u64,
        part: u32,
        parts: u32,
        packets: u64,
        lost: u64,
        cut: u64,
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_LINKTYPE, self.linktype.to_string().as_str());
        h.insert(H_SNAPLEN, self.snaplen.to_string().as_str());
        h.insert(H_HOST, self.host.as_str());
        h.insert(H_SERVER, self.server.as_str());
        h.insert(H_EPOCH, self.epoch.to_string().as_str());
        h.insert(H_BRIDGE_SEQ, bridge_seq.to_string().as_str());
        h.insert(H_BATCH_SEQ, batch_seq.to_string().as_str());
        h.insert(H_PART, format!("{part}/{parts}").as_str());
        h.insert(H_PACKETS, packets.to_string().as_str());
        if lost > 0 {
            h.insert(H_LOST, lost.to_string().as_str());
        }
        if cut > 0 {
            h.insert(H_CUT, cut.to_string().as_str());
        }
        h
    }

    /// Cuts a batch into messages, hands each to `emit` (which returns false to stop) and
    /// returns the number of packets whose bytes were cut.
    fn cut(&mut self, batch: &Batch, emit: &mut dyn FnMut(Outgoing) -> bool) -> u64 {
        let packets: Vec<Capped<'_>> = batch
            .iter()
            .map(|packet| Capped {
                caplen: packet.bytes().len().min(self.max_caplen),
                packet,
            })
            .collect();
        self.cut_packets(&packets, batch.seq(), batch.lost(), emit)
    }

    fn cut_packets(
        &mut self,
        packets: &[Capped<'_>],
        batch_seq: u64,
        lost: u64,
        emit: &mut dyn FnMut(Outgoing) -> bool,
    ) -> u64 {
        // Where each message starts: as many whole packets as fit the budget.
        let mut starts = vec![0];
        let mut size = HEADER_LEN;
        for (i, p) in packets.iter().enumerate() {
            let record = record_len(p.caplen);
            if size + record > self.budget && size > HEADER_LEN {
                starts.push(i);
                size = HEADER_LEN;
            }
            size += record;
        }
        let parts = starts.len() as u32;
        let mut total_cut = 0;
        for (part, &start) in starts.iter().enumerate() {
            let end = starts.get(part + 1).copied().unwrap_or(packets.len());
            let group = &packets[start..end];
            let cut = group
                .iter()
                .filter(|p| p.caplen < p.packet.bytes().len())
                .count() as u64;
            total_cut += cut;
            let lost = if part == 0 { lost } else { 0 };
            let mut payload = Vec::new();
            if let Err(e) = encode(group, batch_seq, lost, &mut payload) {
                // Cannot happen: the group fits the budget, far below the format's limit.
                unreachable!("a cut batch does not encode: {e}");
            }
            let bridge_seq = self.next_seq;
            self.next_seq += 1;
            let message = Outgoing {
                bridge_seq,
                msg_id: self.msg_id(bridge_seq),
                headers: self.headers(
                    bridge_seq,
                    batch_seq,
                    part as u32 + 1,
                    parts,
                    group.len() as u64,
                    lost,
                    cut,
                ),
                payload: Bytes::from(payload),
                packets: group.len() as u64,
                bytes: group.iter().map(|p| p.caplen as u64).sum(),
            };
            if !emit(message) {
                break;
            }
        }
        total_cut
    }
}

/// The serialized length of a header block: `NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`.
fn wire_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for v in values {
            len += AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2;
        }
    }
    len
}

/// `bridge export --json`.
#[derive(serde::Serialize)]
struct ExportSummary<'a> {
    server: &'a str,
    nats: &'a str,
    stream: &'a str,
    subject: &'a str,
    batches: u64,
    messages: u64,
    packets: u64,
    bytes: u64,
    last_sequence: u64,
    cut_packets: u64,
    lost_batches: u64,
    reconnections: u64,
    retries: u64,
    duplicates: u64,
    max_payload: usize,
    seconds: f64,
    active_seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    end: &'a str,
}

/// What reached JetStream.
#[derive(Default)]
struct Totals {
    messages: u64,
    packets: u64,
    bytes: u64,
    last_sequence: u64,
    retries: u64,
    duplicates: u64,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A published message awaiting its acknowledgement (`None`: the publish itself failed).
struct InFlight {
    out: Outgoing,
    ack: Option<AckFuture>,
}

/// Publishes the reader's messages, at most `window` unacknowledged, retrying in order.
struct Publisher {
    js: async_nats::jetstream::Context,
    subject: String,
    window: usize,
    inflight: VecDeque<InFlight>,
    rx: mpsc::Receiver<Outgoing>,
    /// The reader is done (the channel is closed and empty).
    rx_done: bool,
    /// Since when a signal asked to stop.
    stopping: Option<Instant>,
    stop: Arc<AtomicBool>,
    totals: Totals,
    counters: Arc<ReadCounters>,
    status: Status,
    last_tick: Instant,
    /// When the first message came from the reader, and when the last was acknowledged.
    first_message: Option<Instant>,
    last_ack: Option<Instant>,
    /// When a failed publish was last reported (not since NATS took messages again).
    fault_shown: Option<Instant>,
}

/// The front message's acknowledgement; never ready when nothing is in flight.
async fn front_ack(inflight: &mut VecDeque<InFlight>) -> Result<PublishAck, PublishError> {
    match inflight.front_mut() {
        Some(InFlight { ack: Some(ack), .. }) => ack.await,
        Some(InFlight { ack: None, .. }) => Err(PublishError::new(PublishErrorKind::Other)),
        None => std::future::pending().await,
    }
}

impl Publisher {
    async fn run(&mut self) -> Outcome {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.rx_done && self.inflight.is_empty() {
                return Ok(());
            }
            let room = self.inflight.len() < self.window && !self.rx_done;
            tokio::select! {
                biased;
                result = front_ack(&mut self.inflight) => {
                    self.settle(result).await?;
                }
                message = self.rx.recv(), if room => match message {
                    Some(out) => {
                        self.first_message.get_or_insert_with(Instant::now);
                        self.publish(out).await
                    }
                    None => self.rx_done = true,
                },
                _ = tick.tick() => self.tick()?,
            }
        }
    }

    /// Publishes a message (its acknowledgement is awaited later, in order).
    async fn publish(&mut self, out: Outgoing) {
        let ack = match self
            .js
            .send_publish(self.subject.clone(), out.publish())
            .await
        {
            Ok(future) => Some(Box::pin(future.into_future()) as AckFuture),
            Err(_) => None,
        };
        self.inflight.push_back(InFlight { out, ack });
    }

    /// The front message's outcome: counted when stored, else published again (same
    /// message id) with backoff until it is.
    async fn settle(&mut self, result: Result<PublishAck, PublishError>) -> Outcome {
        let mut result = result;
        let mut delay = Duration::from_millis(100);
        loop {
            match result {
                Ok(ack) => {
                    let done = self.inflight.pop_front().expect("a message in flight");
                    let t = &mut self.totals;
                    t.messages += 1;
                    t.packets += done.out.packets;
                    t.bytes += done.out.bytes;
                    t.last_sequence = t.last_sequence.max(ack.sequence);
                    t.duplicates += u64::from(ack.duplicate);
                    self.last_ack = Some(Instant::now());
                    if self.fault_shown.take().is_some() {
                        self.status.line("packet-ipc: NATS stores messages again");
                    }
                    return Ok(());
                }
                Err(e) => {
                    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                        return Err(Failure::new(
                            exit::UNAVAILABLE,
                            format!(
                                "the NATS server now takes smaller messages than when the \
                                 export started: {e}"
                            ),
                        ));
                    }
                    let front = &self.inflight[0].out;
                    if self
                        .fault_shown
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        self.fault_shown = Some(Instant::now());
                        self.status.line(&format!(
                            "packet-ipc: warning: message {} not stored yet ({e}); retrying",
                            front.bridge_seq
                        ));
                    }
                    if let Some(since) = self.stopping {
                        if since.elapsed() > DRAIN {
                            return Err(Failure::new(
                                exit::UNAVAILABLE,
                                format!(
                                    "stopped before NATS acknowledged every message: {} \
                                     not acknowledged (the first: {})",
                                    self.inflight.len(),
                                    front.msg_id
                                ),
                            ));
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    self.tick()?;
                    self.totals.retries += 1;
                    let publish = self.inflight[0].out.publish();
                    result = match self.js.send_publish(self.subject.clone(), publish).await {
                        Ok(future) => future.await,
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    /// Notices a signal; shows the status line once a second.
    fn tick(&mut self) -> Outcome {
        if self.stopping.is_none() && self.stop.load(Ordering::Relaxed) {
            // The reader stops at its next look at the flag; what it cut is still sent.
            self.stopping = Some(Instant::now());
        }
        if self.last_tick.elapsed() >= Duration::from_secs(1) {
            self.last_tick = Instant::now();
            let t = &self.totals;
            self.status.show(&format!(
                "{} batches, {} packets, {}, last sequence {}, lag {} messages",
                self.counters.batches.load(Ordering::Relaxed),
                t.packets,
                human::bytes(t.bytes),
                t.last_sequence,
                self.inflight.len() + self.rx.len(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet_ipc::batch::BatchView;
    use packet_ipc::packet::time_from_nanos;
    use packet_ipc::Packet;

    fn batch_bytes(packets: &[Packet]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(packets, 7, 3, &mut out).unwrap();
        out
    }

    /// Cuts the packets of an encoded batch with the given max_payload; returns the
    /// messages.
    fn cut(packets: &[Packet], max_payload: usize) -> (Vec<Outgoing>, u64) {
        let bytes = batch_bytes(packets);
        let view = BatchView::parse(&bytes).unwrap();
        let mut cutter = Cutter::new("h".into(), "s.1".into(), 42, 1, 65535, max_payload).unwrap();
        let capped: Vec<Capped<'_>> = view
            .iter()
            .map(|packet| Capped {
                caplen: packet.bytes().len().min(cutter.max_caplen),
                packet,
            })
            .collect();
        let mut out = Vec::new();
        let n = cutter.cut_packets(&capped, 7, 3, &mut |m| {
            out.push(m);
            true
        });
        (out, n)
    }

    fn packet(i: usize, len: usize) -> Packet {
        Packet::with_orig_len(
            time_from_nanos(1_700_000_000_000_000_000 + i as u64),
            vec![i as u8; len],
            len + 4,
        )
    }

    #[test]
    fn a_batch_that_fits_is_one_message() {
        let packets: Vec<Packet> = (0..10).map(|i| packet(i, 100)).collect();
        let (msgs, cut) = cut(&packets, 1 << 20);
        assert_eq!((msgs.len(), cut), (1, 0));
        let m = &msgs[0];
        assert_eq!(m.payload.as_ref(), batch_bytes(&packets).as_slice());
        assert_eq!(m.msg_id, "h/s.1/42/1");
        assert_eq!(m.headers.get(H_PART).unwrap().as_str(), "1/1");
        assert_eq!(m.headers.get(H_PACKETS).unwrap().as_str(), "10");
        assert_eq!(m.headers.get(H_LOST).unwrap().as_str(), "3");
        assert!(m.headers.get(H_CUT).is_none());
    }

    #[test]
    fn a_large_batch_is_split_between_packets() {
        let packets: Vec<Packet> = (0..100).map(|i| packet(i, 1000 + i)).collect();
        let max_payload = 8192;
        let (msgs, cut) = cut(&packets, max_payload);
        assert_eq!(cut, 0);
        assert!(msgs.len() > 10, "{} messages", msgs.len());
        let mut again = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.payload.len() + wire_len(&m.headers) + m.msg_id.len() + 15 <= max_payload);
            assert_eq!(m.bridge_seq, i as u64 + 1);
            let view = BatchView::parse(&m.payload).unwrap();
            assert_eq!(view.header().seq, 7);
            assert_eq!(view.header().lost, if i == 0 { 3 } else { 0 });
            assert_eq!(
                m.headers.get(H_PART).unwrap().as_str(),
                format!("{}/{}", i + 1, msgs.len())
            );
            again.extend(view.iter().map(|p| p.to_packet()));
        }
        assert_eq!(again, packets);
    }

    #[test]
    fn a_packet_too_large_is_cut_and_counted() {
        let packets = vec![packet(0, 10), packet(1, 20_000), packet(2, 10)];
        let (msgs, cut) = cut(&packets, 4096);
        assert_eq!(cut, 1);
        assert_eq!(msgs.len(), 3);
        let view = BatchView::parse(&msgs[1].payload).unwrap();
        let p = view.iter().next().unwrap();
        assert!(p.bytes().len() < 4096 && p.bytes().len() > 3000);
        assert_eq!(p.orig_len(), 20_004);
        assert_eq!(p.bytes(), &packets[1].data()[..p.bytes().len()]);
        assert_eq!(msgs[1].headers.get(H_CUT).unwrap().as_str(), "1");
    }
}
