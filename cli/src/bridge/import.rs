//! `packet-ipc bridge import SERVER --nats URL [--stream NAME] [--subject SUBJ]
//! [--deliver new|all|last:N|since:RFC3339] [--durable NAME] [auth and TLS flags]
//! [--json]`: hands the messages of a JetStream subject to a local server.
//!
//! A durable pull consumer (explicit acks) delivers the messages; each one's packets are
//! read in place from the message and handed to `Producer::send` on a thread of its own,
//! and the message is acknowledged only once `send` returned. The durable consumer keeps
//! the position: a restarted import resumes after its last acknowledged message.
//!
//! Messages are put back in the exporter's order before they are sent. NATS does not
//! promise it after a fault: a message redelivered after a connection loss, or a publish
//! the exporter retried, can arrive after later ones. Every message says who exported it
//! (host, server, epoch) and its number there (the bridge sequence, with no holes), so the
//! import ([`Sequencer`]) sends a message only after its predecessor, holds early ones
//! (at most [`HOLD_MESSAGES`], for at most [`HOLD`]) until the missing ones arrive, and
//! drops those it has already sent (duplicates: acknowledged, not sent again).
//!
//! A real gap — messages the stream no longer has, aged out or discarded while the import
//! was away or behind — is reported on stderr and counted (`gaps`, `missed_messages`):
//! within an exporter's sequence, as a jump of the bridge sequence that does not fill in
//! time (an exporter that started after the import is expected from its message 1); after
//! the import's restart, when the first message comes from an exporter it does not know,
//! as the stream sequences between the last message sent and that one that the stream has
//! deleted (exact when the stream holds only this subject, an upper bound otherwise).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{stream, Message};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use packet_ipc::batch::{BatchView, HEADER_LEN};
use packet_ipc::connect::DEFAULT_RECONNECT_WAIT;
use packet_ipc::{AsIpcPacket, ConnectOptions, PacketRef, Producer, ServerInfo};
use tokio::sync::mpsc;

use super::nats::{self, StreamSpec};
use super::{
    escape_token, header_str, header_u64, runtime, warn, NatsArgs, Status, H_BRIDGE_SEQ, H_EPOCH,
    H_HOST, H_LINKTYPE, H_SERVER,
};
use crate::pcap::linktype_text;
use crate::{exit, human, parse_seconds, stop_flag, Failure, Outcome};

/// How long an early message waits for the ones before it.
pub const HOLD: Duration = Duration::from_secs(30);
/// How many early messages may wait at most.
pub const HOLD_MESSAGES: usize = 128;
/// How long NATS waits for an acknowledgement before delivering a message again (well
/// within [`HOLD`], so that a message lost on the way comes back before the hold ends).
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Messages handed to the sending thread and not yet sent.
const JOBS: usize = 16;
/// Messages asked of the consumer at once.
const PULL_BATCH: usize = 64;

/// `bridge import` arguments.
#[derive(Args)]
pub struct ImportArgs {
    /// The local server the packets are sent to.
    server: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// Where a new consumer starts: `new` (what is published from now on), `all`, `last:N`
    /// (the last N messages), `since:RFC3339` (`since:2026-01-31T12:00:00Z`). An existing
    /// durable consumer resumes where it was.
    #[arg(long, value_name = "WHERE", default_value = "new", value_parser = parse_deliver)]
    deliver: Deliver,
    /// The durable consumer's name [default: `packet-ipc-<SERVER>`, the name escaped].
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,
    /// How long to wait for the local daemon to come back when it stops [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    reconnect_wait: Option<Duration>,
}

/// Where a new consumer starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Deliver {
    /// Messages published from now on.
    New,
    /// Every message the stream has.
    All,
    /// The last N messages of the subject.
    Last(u64),
    /// Messages stored at or after this time.
    Since(time::OffsetDateTime),
}

fn parse_deliver(text: &str) -> Result<Deliver, String> {
    match text {
        "new" => return Ok(Deliver::New),
        "all" => return Ok(Deliver::All),
        _ => {}
    }
    if let Some(n) = text.strip_prefix("last:") {
        return match n.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Deliver::Last(n)),
            _ => Err(format!(
                "{text:?}: last:N needs a number of messages above 0"
            )),
        };
    }
    if let Some(t) = text.strip_prefix("since:") {
        let format = time::format_description::well_known::Rfc3339;
        return time::OffsetDateTime::parse(t, &format)
            .map(Deliver::Since)
            .map_err(|e| format!("{text:?}: not an RFC 3339 time ({e})"));
    }
    Err(format!(
        "{text:?}: expected new, all, last:N or since:RFC3339"
    ))
}

/// Imports into the server.
pub fn run(args: ImportArgs) -> Outcome {
    let stop = stop_flag()?;
    let options = ConnectOptions {
        reconnect_wait: args.reconnect_wait.unwrap_or(DEFAULT_RECONNECT_WAIT),
        ..ConnectOptions::default()
    };
    // First: an unknown server fails at once, before NATS is even tried.
    let producer = Producer::connect_with(&args.server, options)?;
    let rt = runtime()?;
    let result = rt.block_on(import(&args, producer, &stop));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `bridge import --json`.
#[derive(serde::Serialize)]
struct ImportSummary<'a> {
    server: &'a str,
    nats: &'a str,
    stream: &'a str,
    subject: &'a str,
    durable: &'a str,
    batches: u64,
    sends: u64,
    packets: u64,
    bytes: u64,
    last_sequence: u64,
    gaps: u64,
    missed_messages: u64,
    duplicates: u64,
    held: usize,
    seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    end: &'a str,
}

/// Counters of the run.
#[derive(Default)]
struct Totals {
    messages: u64,
    sends: u64,
    packets: u64,
    bytes: u64,
    last_sequence: u64,
    gaps: u64,
    missed_messages: u64,
    duplicates: u64,
    pending: u64,
    /// Acknowledgements that could not be sent.
    unacked: u64,
}

/// A message for the sending thread.
struct Job {
    stream_seq: u64,
    payload: Bytes,
}

/// What the sending thread did with one: packets, bytes, `send` calls.
type Sent = Outcome<(u64, u64, u64)>;

async fn import(args: &ImportArgs, producer: Producer, stop: &Arc<AtomicBool>) -> Outcome {
    let started = Instant::now();
    let mut status = Status::new();
    let info = producer.info().clone();
    let subject = args.nats.subject_for(&args.server);
    let nats = nats::connect(&args.nats, "packet-ipc bridge import").await?;
    let deadline = Instant::now() + args.nats.connect_wait();
    let spec = StreamSpec {
        name: args.nats.stream_name(),
        subject: &subject,
        max_bytes: None,
        max_age: None,
    };
    let stream = nats::ensure_stream(&nats, &spec, deadline, &mut status).await?;
    let durable = args
        .durable
        .clone()
        .unwrap_or_else(|| format!("packet-ipc-{}", escape_token(&args.server)));
    // Tried again until the deadline while JetStream is not ready (a server starting).
    let (consumer, resumed) = loop {
        match consumer(&stream, &durable, &subject, &args.deliver).await {
            Ok(c) => break c,
            Err(f) if f.code == exit::UNAVAILABLE && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(f) => return Err(f),
        }
    };

    let mut sequencer = Sequencer::new(HOLD, HOLD_MESSAGES);
    // The last message sent, as far as the stream sequence goes: the consumer's ack floor
    // when it resumes, and the sequencer knows where its exporter was.
    let mut last_sent = 0;
    // When this import started, in the exporters' epoch unit (nanoseconds since 1970).
    let import_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut first_after_resume = resumed;
    if resumed {
        last_sent = consumer.cached_info().ack_floor.stream_sequence;
        if last_sent > 0 {
            if let Ok(m) = stream.get_raw_message(last_sent).await {
                if let (Some(key), Some(seq)) = (
                    source_key(Some(&m.headers)),
                    header_u64(Some(&m.headers), H_BRIDGE_SEQ),
                ) {
                    sequencer.seed(key, seq + 1, Instant::now());
                }
            }
        }
    }
    let mut messages = pull_stream(&consumer).await?;
    eprintln!("importing {subject} from {} into {}", nats.url, args.server);

    let (job_tx, job_rx) = mpsc::channel::<Job>(JOBS);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Sent>();
    let sender = std::thread::Builder::new()
        .name("bridge sender".into())
        .spawn(move || send_loop(producer, job_rx, &done_tx))
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot start a thread: {e}")))?;

    let mut totals = Totals::default();
    // Messages handed to the sending thread, in order, awaiting their acknowledgement.
    let mut waiting: VecDeque<Message> = VecDeque::new();
    let mut steps = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();
    let mut stopping = false;
    let mut failure: Option<Failure> = None;
    let mut last_error = Instant::now() - Duration::from_secs(60);
    loop {
        if stopping && waiting.is_empty() {
            break;
        }
        let room = !stopping && waiting.len() < JOBS;
        tokio::select! {
            biased;
            sent = done_rx.recv() => {
                let Some(sent) = sent else {
                    failure.get_or_insert_with(|| Failure::new(exit::SOFTWARE, "the bridge sender stopped"));
                    break;
                };
                let message = waiting.pop_front().expect("a message was sent");
                match sent {
                    Ok((packets, bytes, sends)) => {
                        totals.packets += packets;
                        totals.bytes += bytes;
                        totals.sends += sends;
                        totals.messages += 1;
                        if let Err(e) = message.ack().await {
                            totals.unacked += 1;
                            status.line(&format!("packet-ipc: warning: cannot acknowledge a message: {e}"));
                        }
                    }
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
            next = messages.next(), if room => match next {
                Some(Ok(message)) => {
                    let Ok(meta) = message.info() else { continue };
                    let (stream_seq, pending) = (meta.stream_sequence, meta.pending);
                    totals.pending = pending;
                    if let Err(f) = check_linktype(&message, stream_seq, &info) {
                        failure = Some(f);
                        break;
                    }
                    let headers = message.headers.as_ref();
                    let key = source_key(headers);
                    let seq = header_u64(headers, H_BRIDGE_SEQ);
                    let now = Instant::now();
                    // A new exporter (or the first message after a restart): did the
                    // stream drop messages since the last one sent?
                    let known = key.as_ref().is_some_and(|k| sequencer.knows(k));
                    // The first message after a resume, from an exporter not seen yet: did
                    // the stream drop messages after the last one sent?
                    if !known && first_after_resume && last_sent > 0 && stream_seq > last_sent + 1 {
                        if let Ok(first) = first_sequence(&stream).await {
                            let deleted = stream_seq.min(first).saturating_sub(last_sent + 1);
                            if deleted > 0 {
                                totals.gaps += 1;
                                totals.missed_messages += deleted;
                                status.line(&format!(
                                    "packet-ipc: warning: gap: up to {deleted} messages after \
                                     stream sequence {last_sent} are no longer in stream {} \
                                     (aged out or discarded)",
                                    args.nats.stream_name()
                                ));
                            }
                        }
                    }
                    first_after_resume = false;
                    // An exporter that started after this import: every one of its
                    // messages is expected, from its first.
                    if let (false, Some(k)) = (known, &key) {
                        if header_u64(headers, H_EPOCH).is_some_and(|e| e > import_epoch) {
                            sequencer.seed(k.clone(), 1, now);
                        }
                    }
                    match (key, seq) {
                        (Some(key), Some(seq)) => sequencer.offer(key, seq, message, now, &mut steps),
                        _ => steps.push(Step::Deliver(message)),
                    }
                    for step in steps.drain(..) {
                        act(step, &mut totals, &mut waiting, &job_tx, &mut last_sent, &mut status).await;
                    }
                }
                Some(Err(e)) => {
                    if last_error.elapsed() > Duration::from_secs(5) {
                        last_error = Instant::now();
                        status.line(&format!("packet-ipc: warning: NATS consumer: {e}"));
                    }
                }
                None => {
                    // The pull stream ended (the client closed it): ask again.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(m) = pull_stream(&consumer).await {
                        messages = m;
                    }
                }
            },
            _ = tick.tick() => {
                if !stopping && stop.load(Ordering::Relaxed) {
                    // What was taken is sent and acknowledged; early messages held are not
                    // acknowledged, so NATS delivers them again next time.
                    stopping = true;
                }
                sequencer.expire(Instant::now(), &mut steps);
                for step in steps.drain(..) {
                    act(step, &mut totals, &mut waiting, &job_tx, &mut last_sent, &mut status).await;
                }
                if last_status.elapsed() >= Duration::from_secs(1) {
                    last_status = Instant::now();
                    status.show(&format!(
                        "{} batches, {} packets, {}, last sequence {}, lag {} messages",
                        totals.messages, totals.packets, human::bytes(totals.bytes),
                        totals.last_sequence, totals.pending,
                    ));
                }
            }
        }
    }
    drop(messages);
    drop(job_tx);
    let _ = sender.join();
    status.clear();
    let flushed = tokio::time::timeout(Duration::from_secs(5), nats.client.flush()).await;
    if totals.unacked > 0 || !matches!(flushed, Ok(Ok(()))) {
        warn(&format!(
            "packet-ipc: warning: NATS may not have every acknowledgement ({} could not be \
             sent): those messages will be imported again next time",
            totals.unacked
        ));
    }
    if let Some(f) = failure {
        return Err(f);
    }

    let elapsed = started.elapsed();
    let t = &totals;
    if args.nats.json {
        crate::print_json(&ImportSummary {
            server: &args.server,
            nats: &nats.url,
            stream: args.nats.stream_name(),
            subject: &subject,
            durable: &durable,
            batches: t.messages,
            sends: t.sends,
            packets: t.packets,
            bytes: t.bytes,
            last_sequence: t.last_sequence,
            gaps: t.gaps,
            missed_messages: t.missed_messages,
            duplicates: t.duplicates,
            held: sequencer.held(),
            seconds: elapsed.as_secs_f64(),
            packets_per_second: human::per_second(t.packets, elapsed),
            bits_per_second: human::per_second(t.bytes, elapsed) * 8.0,
            end: "signal",
        })?;
    } else {
        println!(
            "imported {} batches, {} packets, {} bytes ({}) from {subject} into {} in {}: {}; \
             last sequence {}, {} gaps ({} missed messages), {} duplicates dropped (end: signal)",
            t.messages,
            t.packets,
            t.bytes,
            human::bytes(t.bytes),
            args.server,
            human::duration(elapsed),
            human::rate(t.packets, t.bytes, elapsed),
            t.last_sequence,
            t.gaps,
            t.missed_messages,
            t.duplicates,
        );
    }
    Ok(())
}

/// Carries out one step of the sequencer.
async fn act(
    step: Step<Message>,
    totals: &mut Totals,
    waiting: &mut VecDeque<Message>,
    jobs: &mpsc::Sender<Job>,
    last_sent: &mut u64,
    status: &mut Status,
) {
    match step {
        Step::Deliver(message) => {
            let stream_seq = message.info().map_or(0, |i| i.stream_sequence);
            *last_sent = (*last_sent).max(stream_seq);
            totals.last_sequence = totals.last_sequence.max(stream_seq);
            let job = Job {
                stream_seq,
                payload: message.payload.clone(),
            };
            waiting.push_back(message);
            // The thread only stops on an error, which the loop then reads.
            let _ = jobs.send(job).await;
        }
        Step::Duplicate(message) => {
            totals.duplicates += 1;
            let _ = message.ack().await;
        }
        Step::Redelivered(_) => {}
        Step::Gap {
            source,
            after,
            missed,
        } => {
            totals.gaps += 1;
            totals.missed_messages += missed;
            status.line(&format!(
                "packet-ipc: warning: gap: {missed} messages of {source} after its message \
                 {after} never arrived (aged out, or lost by the exporter)"
            ));
        }
    }
}

/// The exporter a message comes from: `host/server/epoch`.
fn source_key(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    Some(format!(
        "{}/{}/{}",
        header_str(headers, H_HOST)?,
        header_str(headers, H_SERVER)?,
        header_str(headers, H_EPOCH)?
    ))
}

/// Refuses a message whose packets are of another link type than the server's.
fn check_linktype(message: &Message, stream_seq: u64, info: &ServerInfo) -> Outcome {
    match header_u64(message.headers.as_ref(), H_LINKTYPE) {
        Some(l) if l == u64::from(info.linktype) => Ok(()),
        Some(l) => Err(Failure::new(
            exit::DATAERR,
            format!(
                "message {stream_seq} on {} has link type {}, but server {} takes link type \
                 {}: not imported",
                message.subject,
                u32::try_from(l).map_or(l.to_string(), linktype_text),
                info.name,
                linktype_text(info.linktype)
            ),
        )),
        None => Err(Failure::new(
            exit::DATAERR,
            format!(
                "message {stream_seq} on {} has no {H_LINKTYPE} header: not a message of \
                 packet-ipc bridge export; not imported",
                message.subject
            ),
        )),
    }
}

/// The stream's first sequence now.
async fn first_sequence(stream: &stream::Stream) -> Result<u64, String> {
    let mut stream = stream.clone();
    let info = stream.info().await.map_err(|e| e.to_string())?;
    Ok(info.state.first_sequence)
}

/// The pull consumer's message stream.
async fn pull_stream(consumer: &PullConsumer) -> Outcome<pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("cannot pull messages: {e}")))
}

/// The durable consumer: the existing one (true), else a new one starting at `deliver`.
async fn consumer(
    stream: &stream::Stream,
    name: &str,
    subject: &str,
    deliver: &Deliver,
) -> Outcome<(PullConsumer, bool)> {
    let unavailable = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::UNAVAILABLE,
            format!("cannot set up consumer {name}: {e}"),
        )
    };
    match stream.consumer_info(name).await {
        Ok(info) => {
            if info.config.filter_subject != subject {
                warn(&format!(
                    "packet-ipc: warning: consumer {name} takes {:?}, not {subject}: it is \
                     used as it is",
                    info.config.filter_subject
                ));
            }
            let consumer = stream
                .get_consumer::<pull::Config>(name)
                .await
                .map_err(|e| unavailable(&e))?;
            return Ok((consumer, true));
        }
        Err(e) => match e.kind() {
            ConsumerInfoErrorKind::NotFound => {}
            ConsumerInfoErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND => {}
            ConsumerInfoErrorKind::InvalidName => {
                return Err(Failure::new(
                    exit::USAGE,
                    format!("invalid consumer name {name:?}"),
                ))
            }
            _ => return Err(unavailable(&e)),
        },
    }
    let deliver_policy = match deliver {
        Deliver::New => DeliverPolicy::New,
        Deliver::All => DeliverPolicy::All,
        Deliver::Since(t) => DeliverPolicy::ByStartTime { start_time: *t },
        Deliver::Last(n) => start_of_last(stream, subject, *n)
            .await
            .map_err(|e| unavailable(&e))?,
    };
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some("packet-ipc bridge import".to_owned()),
        filter_subject: subject.to_owned(),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 1024,
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok((consumer, false))
}

/// Where the last `n` messages of `subject` start: a binary search on the stream sequence,
/// counting with short-lived consumers what lies at and after a sequence.
async fn start_of_last(
    stream: &stream::Stream,
    subject: &str,
    n: u64,
) -> Result<DeliverPolicy, String> {
    let mut s = stream.clone();
    let state = s.info().await.map_err(|e| e.to_string())?.state.clone();
    let count = |seq: u64| async move {
        let probe = pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        };
        let mut consumer = stream
            .create_consumer(probe)
            .await
            .map_err(|e| e.to_string())?;
        let info = consumer.info().await.map_err(|e| e.to_string())?;
        let (pending, name) = (info.num_pending, info.name.clone());
        let _ = stream.delete_consumer(&name).await;
        Ok::<u64, String>(pending)
    };
    let first = state.first_sequence.max(1);
    if state.messages == 0 || count(first).await? <= n {
        return Ok(DeliverPolicy::All);
    }
    // count(lo) >= n > count(hi); count drops by at most one per sequence.
    let (mut lo, mut hi) = (first, state.last_sequence + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if count(mid).await? >= n {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(DeliverPolicy::ByStartSequence { start_sequence: lo })
}

/// Sends each job's packets to the server, in order, and says how it went; stops after a
/// failure or when the jobs end.
fn send_loop(
    mut producer: Producer,
    mut jobs: mpsc::Receiver<Job>,
    done: &mpsc::UnboundedSender<Sent>,
) {
    let max = producer.info().max_batch_bytes;
    while let Some(job) = jobs.blocking_recv() {
        let sent = send_one(&mut producer, &job, max);
        let failed = sent.is_err();
        if done.send(sent).is_err() || failed {
            return;
        }
    }
}

/// Sends one message's packets, read in place: one `send`, or several when the batch is
/// larger than the server takes.
fn send_one(producer: &mut Producer, job: &Job, max: usize) -> Sent {
    let view = BatchView::parse(&job.payload).map_err(|e| {
        Failure::new(
            exit::DATAERR,
            format!(
                "message {} is not a packet batch ({e}): not imported",
                job.stream_seq
            ),
        )
    })?;
    let packets: Vec<PacketRef<'_>> = view.iter().collect();
    let bytes = packets.iter().map(|p| p.data().len() as u64).sum();
    let mut sends = 0;
    if view.as_bytes().len() <= max {
        producer.send(&packets)?;
        sends += 1;
    } else {
        let mut start = 0;
        let mut size = HEADER_LEN;
        for (i, p) in packets.iter().enumerate() {
            let record = 16 + p.data().len().div_ceil(8) * 8;
            if size + record > max && i > start {
                producer.send(&packets[start..i])?;
                sends += 1;
                start = i;
                size = HEADER_LEN;
            }
            size += record;
        }
        producer.send(&packets[start..])?;
        sends += 1;
    }
    Ok((packets.len() as u64, bytes, sends))
}

/// What the [`Sequencer`] decided about a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Send it now (and acknowledge it once sent).
    Deliver(T),
    /// Already sent: acknowledge it, do not send it.
    Duplicate(T),
    /// Another delivery of a message held: drop it, do not acknowledge it (the held one
    /// will be).
    Redelivered(T),
    /// These messages of a source will not be waited for any longer.
    Gap {
        /// The source.
        source: String,
        /// The last bridge sequence sent before the gap.
        after: u64,
        /// How many are missing.
        missed: u64,
    },
}

/// One exporter's messages, as far as they were sent.
struct Source<T> {
    /// The bridge sequence of the next message to send.
    next: u64,
    /// Early messages, by bridge sequence.
    held: BTreeMap<u64, T>,
    /// Since when the first of them has waited.
    since: Option<Instant>,
    /// Last heard of.
    seen: Instant,
}

/// Puts each source's messages back in order: see the module's documentation.
pub struct Sequencer<T> {
    sources: HashMap<String, Source<T>>,
    hold: Duration,
    max_held: usize,
}

/// Sources remembered at most (the oldest without held messages are forgotten).
const MAX_SOURCES: usize = 64;

impl<T> Sequencer<T> {
    /// A sequencer that holds early messages up to `hold`, and at most `max_held` of them.
    pub fn new(hold: Duration, max_held: usize) -> Sequencer<T> {
        Sequencer {
            sources: HashMap::new(),
            hold,
            max_held,
        }
    }

    /// Starts a source at `next` (where a previous run left it).
    pub fn seed(&mut self, source: String, next: u64, now: Instant) {
        self.sources.insert(
            source,
            Source {
                next,
                held: BTreeMap::new(),
                since: None,
                seen: now,
            },
        );
    }

    /// Whether the source has been seen.
    pub fn knows(&self, source: &str) -> bool {
        self.sources.contains_key(source)
    }

    /// Messages held, all sources.
    pub fn held(&self) -> usize {
        self.sources.values().map(|s| s.held.len()).sum()
    }

    /// Takes message `seq` of `source`.
    pub fn offer(
        &mut self,
        source: String,
        seq: u64,
        item: T,
        now: Instant,
        out: &mut Vec<Step<T>>,
    ) {
        if !self.sources.contains_key(&source) {
            self.forget_old();
            self.seed(source.clone(), seq, now);
        }
        let held_total = self.held();
        let max_held = self.max_held;
        let s = self.sources.get_mut(&source).expect("just inserted");
        s.seen = now;
        if seq < s.next {
            out.push(Step::Duplicate(item));
            return;
        }
        if seq > s.next {
            if s.held.contains_key(&seq) {
                out.push(Step::Redelivered(item));
                return;
            }
            s.held.insert(seq, item);
            s.since.get_or_insert(now);
            if held_total < max_held {
                return;
            }
            // Too many held: give up waiting for the first missing ones.
            Self::skip_to_held(&source, s, now, out);
            return;
        }
        out.push(Step::Deliver(item));
        s.next += 1;
        Self::release(s, now, out);
    }

    /// Gives up on messages that held ones have waited for longer than the hold.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Step<T>>) {
        for (name, s) in &mut self.sources {
            while s.since.is_some_and(|t| now.duration_since(t) >= self.hold) {
                Self::skip_to_held(name, s, now, out);
            }
        }
    }

    /// Reports the messages before the first held one as a gap, then sends what is next
    /// in line from there. Called only while something is held.
    fn skip_to_held(source: &str, s: &mut Source<T>, now: Instant, out: &mut Vec<Step<T>>) {
        let first = *s.held.keys().next().expect("something held");
        out.push(Step::Gap {
            source: source.into(),
            after: s.next - 1,
            missed: first - s.next,
        });
        s.next = first;
        Self::release(s, now, out);
    }

    /// Sends the held messages that are next in line.
    fn release(s: &mut Source<T>, now: Instant, out: &mut Vec<Step<T>>) {
        while let Some(item) = s.held.remove(&s.next) {
            out.push(Step::Deliver(item));
            s.next += 1;
        }
        // Anything still held now waits for another hole, from now.
        s.since = if s.held.is_empty() { None } else { Some(now) };
    }

    fn forget_old(&mut self) {
        while self.sources.len() >= MAX_SOURCES {
            let oldest = self
                .sources
                .iter()
                .filter(|(_, s)| s.held.is_empty())
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.sources.remove(&k);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: &mut Sequencer<u64>, src: &str, n: u64, now: Instant) -> Vec<Step<u64>> {
        let mut out = Vec::new();
        seq.offer(src.to_owned(), n, n, now, &mut out);
        out
    }

    #[test]
    fn in_order_is_delivered_at_once() {
        let now = Instant::now();
        let mut s = Sequencer::new(HOLD, 8);
        for n in 5..10 {
            assert_eq!(run(&mut s, "a", n, now), vec![Step::Deliver(n)]);
        }
        assert_eq!(run(&mut s, "a", 7, now), vec![Step::Duplicate(7)]);
    }

    #[test]
    fn early_messages_wait_for_late_ones() {
        let now = Instant::now();
        let mut s = Sequencer::new(HOLD, 8);
        assert_eq!(run(&mut s, "a", 1, now), vec![Step::Deliver(1)]);
        assert!(run(&mut s, "a", 3, now).is_empty());
        assert!(run(&mut s, "a", 4, now).is_empty());
        assert_eq!(run(&mut s, "a", 4, now), vec![Step::Redelivered(4)]);
        // Another source is not held up.
        assert_eq!(run(&mut s, "b", 9, now), vec![Step::Deliver(9)]);
        assert_eq!(
            run(&mut s, "a", 2, now),
            vec![Step::Deliver(2), Step::Deliver(3), Step::Deliver(4)]
        );
        assert_eq!(s.held(), 0);
        let mut out = Vec::new();
        s.expire(now + HOLD * 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_hole_that_does_not_fill_is_a_gap() {
        let now = Instant::now();
        let mut s = Sequencer::new(HOLD, 8);
        run(&mut s, "a", 1, now);
        assert!(run(&mut s, "a", 5, now).is_empty());
        assert!(run(&mut s, "a", 6, now).is_empty());
        assert!(run(&mut s, "a", 9, now).is_empty());
        let mut out = Vec::new();
        s.expire(now + HOLD / 2, &mut out);
        assert!(out.is_empty());
        s.expire(now + HOLD, &mut out);
        // The first hole is given up; the second waits a hold of its own.
        assert_eq!(
            out,
            vec![
                Step::Gap {
                    source: "a".into(),
                    after: 1,
                    missed: 3
                },
                Step::Deliver(5),
                Step::Deliver(6)
            ]
        );
        out.clear();
        s.expire(now + HOLD + HOLD / 2, &mut out);
        assert!(out.is_empty());
        s.expire(now + HOLD * 2, &mut out);
        assert_eq!(
            out,
            vec![
                Step::Gap {
                    source: "a".into(),
                    after: 6,
                    missed: 2
                },
                Step::Deliver(9)
            ]
        );
        // Late ones after the gap are duplicates now.
        assert_eq!(run(&mut s, "a", 3, now), vec![Step::Duplicate(3)]);
    }

    #[test]
    fn too_many_held_is_a_gap_at_once() {
        let now = Instant::now();
        let mut s = Sequencer::new(HOLD, 3);
        run(&mut s, "a", 1, now);
        for n in 3..6 {
            assert!(run(&mut s, "a", n, now).is_empty());
        }
        assert_eq!(
            run(&mut s, "a", 6, now),
            vec![
                Step::Gap {
                    source: "a".into(),
                    after: 1,
                    missed: 1
                },
                Step::Deliver(3),
                Step::Deliver(4),
                Step::Deliver(5),
                Step::Deliver(6)
            ]
        );
    }

    #[test]
    fn a_seeded_source_resumes() {
        let now = Instant::now();
        let mut s = Sequencer::new(HOLD, 8);
        s.seed("a".into(), 11, now);
        assert!(s.knows("a"));
        assert_eq!(run(&mut s, "a", 10, now), vec![Step::Duplicate(10)]);
        assert_eq!(run(&mut s, "a", 11, now), vec![Step::Deliver(11)]);
    }

    #[test]
    fn deliver_options() {
        assert_eq!(parse_deliver("new"), Ok(Deliver::New));
        assert_eq!(parse_deliver("all"), Ok(Deliver::All));
        assert_eq!(parse_deliver("last:5"), Ok(Deliver::Last(5)));
        assert!(parse_deliver("last:0").is_err());
        assert!(matches!(
            parse_deliver("since:2026-01-31T12:00:00Z"),
            Ok(Deliver::Since(_))
        ));
        assert!(parse_deliver("since:yesterday").is_err());
        assert!(parse_deliver("first").is_err());
    }
}
