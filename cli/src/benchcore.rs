//! `packet-ipc bench`: the built-in benchmark.
//!
//! [`run`] starts its own `packet-ipcd` in a temporary runtime directory with one server
//! (`overflow = "block"`), N subscriber processes and one producer (this process), and
//! measures, in one run:
//!
//! 1. baselines: memcpy bandwidth of one core; raw ipc-channel point to point with the
//!    same batches; an ipc-channel 64-byte ping-pong between two processes;
//! 2. throughput, flat out, for `seconds`: every byte of every packet is written into the
//!    batch (from a pool of source packets, as a capture program copies from its ring),
//!    and every subscriber reads every packet's first and last byte;
//! 3. latency, paced at `latency_rate` batches per second: the producer stamps the first
//!    packet of each batch with `CLOCK_MONOTONIC` (shared by all processes) just before
//!    sending, the subscriber reads the clock as it receives the batch.
//!
//! The subscriber processes are this same program run as [`subscriber_main`]; the
//! baseline child runs [`baseline_child`]. The first byte of a batch's first packet says
//! which phase it belongs to (read from the whole batch, so that a filtered subscriber or
//! a group member sees it too).
//!
//! With `group`, the subscribers are the members of one group (each gets its share of the
//! flows); with `filter`, each applies the filter. Both send flow-shaped IPv4/IPv6
//! TCP/UDP traffic ([`crate::traffic::flow_shaped`]), so that the hash and the filter have
//! something to work on.
//!
//! The CPU time of each role is read from the kernel (`/proc/PID/task/*/schedstat`, in
//! nanoseconds) at the start and the end of the throughput phase, and the machine's idle
//! share from `/proc/stat`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::baseline;
use packet_ipc::batch::BatchView;
use packet_ipc::{AsIpcPacket, ConnectOptions, Producer, Received, Subscriber, WaitMode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PHASE_THROUGHPUT: u8 = 0;
const PHASE_LATENCY: u8 = 1;
const PHASE_END: u8 = 2;
/// Latency samples kept per phase per subscriber (a uniform reservoir).
const RESERVOIR: usize = 8192;
/// The server the bench creates.
const SERVER: &str = "bench";

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Subscriber processes.
    pub subscribers: usize,
    /// Bytes per packet (at least 1: its first byte carries the phase).
    pub packet_size: usize,
    /// Packets per batch.
    pub batch: usize,
    /// Length of the throughput phase.
    pub seconds: f64,
    /// Batches per second in the latency phase.
    pub latency_rate: u32,
    /// Batches in the latency phase.
    pub latency_batches: u32,
    /// The subscribers are the members of one group (balanced by flow).
    pub group: bool,
    /// Every subscriber applies this filter.
    pub filter: Option<String>,
    /// How subscribers wait (`None`: the server's default).
    pub wait: Option<WaitMode>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            subscribers: 8,
            packet_size: 64,
            batch: 256,
            seconds: 5.0,
            latency_rate: 1000,
            latency_batches: 2000,
            group: false,
            filter: None,
            wait: None,
        }
    }
}

impl BenchOptions {
    /// Checks the sizes: a usage error (one line) when one is out of range.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=65535).contains(&self.packet_size) {
            return Err(format!(
                "--packet-size {} is out of range (1 to 65535)",
                self.packet_size
            ));
        }
        if !(1..=65536).contains(&self.batch) {
            return Err(format!(
                "--batch {} is out of range (1 to 65536)",
                self.batch
            ));
        }
        if !(1..=1024).contains(&self.subscribers) {
            return Err(format!(
                "--subscribers {} is out of range (1 to 1024)",
                self.subscribers
            ));
        }
        if !(self.seconds > 0.0 && self.seconds <= 3600.0) {
            return Err(format!(
                "--seconds {} is out of range (above 0, at most 3600)",
                self.seconds
            ));
        }
        let batch_bytes = self.batch * packet_ipc::batch::record_len(self.packet_size);
        if batch_bytes > 1 << 30 {
            return Err(format!(
                "--batch {} of --packet-size {} makes batches of {batch_bytes} bytes, over 1 GiB",
                self.batch, self.packet_size
            ));
        }
        Ok(())
    }
}

/// The figures of one run; the JSON keys are a contract (scripts read them, and
/// `bench_reports_every_contract_key` checks them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// Packets per second delivered, summed over subscribers.
    pub delivered_pps: f64,
    /// GB/s (10^9 bytes) of packet data delivered, summed over subscribers.
    pub delivered_gbps: f64,
    /// Mean packets per second of one subscriber.
    pub per_subscriber_pps: f64,
    /// Packets per second the producer sent.
    pub producer_pps: f64,
    /// Median send→receive latency in the paced phase, µs.
    pub latency_p50_us: f64,
    /// 99th percentile send→receive latency in the paced phase, µs.
    pub latency_p99_us: f64,
    /// 99th percentile latency in the saturated phase (queueing included), µs.
    pub saturated_latency_p99_us: f64,
    /// Batches lost, summed over subscribers (0 expected under `block`).
    pub lost_batches: u64,
    /// The daemon's peak resident memory.
    pub daemon_peak_rss_bytes: u64,
    /// memcpy bandwidth of one core, GB/s.
    pub baseline_memcpy_gbps: f64,
    /// Raw ipc-channel point to point with the same batches, packets per second.
    pub baseline_ipc_channel_pps: f64,
    /// ipc-channel 64-byte round trip between two processes, 99th percentile, µs.
    pub baseline_ipc_channel_rtt_p99_us: f64,
    /// ipc-channel 64-byte round trip, median, µs.
    pub baseline_ipc_channel_rtt_p50_us: f64,
    /// Subscribers in the run.
    pub subscribers: usize,
    /// Bytes per packet.
    pub packet_size: usize,
    /// Packets per batch.
    pub batch: usize,
    /// Length of the throughput phase, s.
    pub seconds: f64,
    /// The subscribers were the members of one group.
    pub group: bool,
    /// The subscribers' filter.
    pub filter: Option<String>,
    /// Packets per second the filter kept, summed over subscribers.
    pub matched_pps: f64,
    /// CPU time of the producer during the throughput phase, % of one core.
    pub cpu_percent_producer: f64,
    /// CPU time of the daemon, % of one core.
    pub cpu_percent_daemon: f64,
    /// CPU time of all subscribers, % of one core.
    pub cpu_percent_subscribers: f64,
    /// The producer's CPU time per delivered packet, ns.
    pub ns_per_packet_producer: f64,
    /// The daemon's CPU time per delivered packet, ns.
    pub ns_per_packet_daemon: f64,
    /// The subscribers' CPU time per delivered packet, ns.
    pub ns_per_packet_subscribers: f64,
    /// The machine's idle share during the throughput phase, %.
    pub idle_percent: f64,
}

impl BenchReport {
    /// A readable summary, with our figures as ratios to the baselines.
    pub fn human(&self) -> String {
        let r = self;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<34} {v}\n"));
        line(
            "setup",
            format!(
                "{} {}, {} B packets, {} per batch, {:.1} s, overflow = block{}",
                r.subscribers,
                if r.group {
                    "members of one group"
                } else {
                    "subscribers"
                },
                r.packet_size,
                r.batch,
                r.seconds,
                r.filter
                    .as_deref()
                    .map(|f| format!(", filter {f:?}"))
                    .unwrap_or_default()
            ),
        );
        line(
            "delivered (all subscribers)",
            format!(
                "{:.1} Mpps, {:.2} GB/s ({:.2}x memcpy of one core)",
                r.delivered_pps / 1e6,
                r.delivered_gbps,
                r.delivered_gbps / r.baseline_memcpy_gbps.max(f64::MIN_POSITIVE)
            ),
        );
        line(
            "per subscriber",
            format!(
                "{:.1} Mpps ({:.2}x raw ipc-channel point to point)",
                r.per_subscriber_pps / 1e6,
                r.per_subscriber_pps / r.baseline_ipc_channel_pps.max(f64::MIN_POSITIVE)
            ),
        );
        line("producer", format!("{:.1} Mpps", r.producer_pps / 1e6));
        if r.filter.is_some() {
            line(
                "kept by the filter",
                format!("{:.1} Mpps", r.matched_pps / 1e6),
            );
        }
        line(
            "CPU, % of a core (ns/packet)",
            format!(
                "producer {:.0}% ({:.1}), daemon {:.0}% ({:.1}), subscribers {:.0}% ({:.1})",
                r.cpu_percent_producer,
                r.ns_per_packet_producer,
                r.cpu_percent_daemon,
                r.ns_per_packet_daemon,
                r.cpu_percent_subscribers,
                r.ns_per_packet_subscribers
            ),
        );
        line("idle", format!("{:.1}% of the machine", r.idle_percent));
        line(
            "latency, paced (p50 / p99)",
            format!(
                "{:.1} / {:.1} µs ({:.2}x ipc-channel round trip p99)",
                r.latency_p50_us,
                r.latency_p99_us,
                r.latency_p99_us / r.baseline_ipc_channel_rtt_p99_us.max(f64::MIN_POSITIVE)
            ),
        );
        line(
            "latency, saturated (p99)",
            format!("{:.1} µs", r.saturated_latency_p99_us),
        );
        line("lost batches", r.lost_batches.to_string());
        line(
            "daemon peak RSS",
            format!(
                "{:.1} MiB",
                r.daemon_peak_rss_bytes as f64 / (1 << 20) as f64
            ),
        );
        line(
            "baseline: memcpy, one core",
            format!("{:.2} GB/s", r.baseline_memcpy_gbps),
        );
        line(
            "baseline: ipc-channel p2p",
            format!("{:.1} Mpps", r.baseline_ipc_channel_pps / 1e6),
        );
        line(
            "baseline: ipc-channel RTT p50/p99",
            format!(
                "{:.1} / {:.1} µs",
                r.baseline_ipc_channel_rtt_p50_us, r.baseline_ipc_channel_rtt_p99_us
            ),
        );
        s
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A source packet: its bytes, and the timestamp the producer stamps at send time.
struct SourcePacket {
    ts: SystemTime,
    nanos: u64,
    data: Vec<u8>,
}

impl AsIpcPacket for SourcePacket {
    fn timestamp(&self) -> &SystemTime {
        &self.ts
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn timestamp_nanos(&self) -> u64 {
        self.nanos
    }
}

/// Percentile `p` (0..=1) of samples (sorted here).
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// memcpy bandwidth of one core, GB/s, over a buffer larger than the caches.
fn memcpy_gbps() -> f64 {
    let len = 64 << 20;
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    dst.copy_from_slice(&src); // fault the pages in first
    let start = Instant::now();
    let mut copied = 0usize;
    while start.elapsed() < Duration::from_millis(500) {
        dst.copy_from_slice(std::hint::black_box(&src));
        copied += len;
    }
    std::hint::black_box(&dst);
    copied as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// What one subscriber measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SubscriberReport {
    /// Packets of the stream this subscriber went through (before its filter).
    packets: u64,
    /// Packets its filter kept.
    matched: u64,
    bytes: u64,
    /// Monotonic ns of the first and last throughput batch received.
    first_ns: u64,
    last_ns: u64,
    lost_batches: u64,
    saturated_us: Vec<f64>,
    paced_us: Vec<f64>,
}

/// A uniform sample of at most [`RESERVOIR`] values.
struct Reservoir {
    kept: Vec<f64>,
    seen: u64,
    rng: u64,
}

impl Reservoir {
    fn new(seed: u64) -> Self {
        Reservoir {
            kept: Vec::with_capacity(RESERVOIR),
            seen: 0,
            rng: seed | 1,
        }
    }
    fn add(&mut self, v: f64) {
        self.seen += 1;
        if self.kept.len() < RESERVOIR {
            self.kept.push(v);
            return;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % self.seen;
        if (j as usize) < RESERVOIR {
            self.kept[j as usize] = v;
        }
    }
}

/// How a bench subscriber connects.
#[derive(Clone, Debug, Default)]
pub struct SubscriberOptions {
    /// The group it joins.
    pub group: Option<String>,
    /// Its filter.
    pub filter: Option<String>,
    /// How it waits.
    pub wait: Option<WaitMode>,
}

/// The subscriber process of the bench: says `ready` on stdout once subscribed, reads
/// every packet until the end marker (or, for a group member or a filtered subscriber that
/// may never see it, until the stream has been quiet for two seconds), then prints its
/// figures as one JSON line.
pub fn subscriber_main(rendezvous: &Path, how: SubscriberOptions) -> Result<(), BoxError> {
    let options = ConnectOptions {
        rendezvous: Some(rendezvous.to_owned()),
        reconnect_wait: Duration::ZERO,
        group: how.group,
        filter: how.filter,
        wait: how.wait,
        ..ConnectOptions::default()
    };
    let mut sub = Subscriber::connect_with(SERVER, options)?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut report = SubscriberReport::default();
    let mut saturated = Reservoir::new(std::process::id() as u64);
    let mut paced = Reservoir::new(!(std::process::id() as u64));
    let mut touched = 0u8;
    let mut seen = false;
    loop {
        let wait = if seen {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(3600)
        };
        let batch = match sub.recv_timeout(wait)? {
            Received::Batch(b) => b,
            Received::Timeout | Received::End => break,
        };
        seen = true;
        let now = monotonic_nanos();
        // The phase and the send time are in the batch's first packet, whoever gets it.
        let Some(first) = BatchView::unchecked(batch.as_bytes())
            .ok()
            .and_then(|v| v.iter().next())
        else {
            continue;
        };
        let phase = first.bytes().first().copied().unwrap_or(PHASE_END);
        if phase == PHASE_END {
            break;
        }
        let latency_us = now.saturating_sub(first.timestamp_nanos()) as f64 / 1e3;
        report.lost_batches += batch.lost();
        let mut bytes = 0u64;
        for p in &batch {
            let d = p.bytes();
            touched ^= d.first().copied().unwrap_or(0) ^ d.last().copied().unwrap_or(0);
            bytes += d.len() as u64;
        }
        if phase == PHASE_THROUGHPUT {
            let through = sub.filtered_out() + report.matched + batch.len() as u64;
            if report.packets == 0 {
                report.first_ns = now;
            }
            report.last_ns = now;
            report.matched += batch.len() as u64;
            report.packets = through;
            report.bytes += bytes;
            saturated.add(latency_us);
        } else {
            paced.add(latency_us);
        }
    }
    std::hint::black_box(touched);
    report.saturated_us = saturated.kept;
    report.paced_us = paced.kept;
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    Ok(())
}

/// The baseline child process of the bench.
pub fn baseline_child(name: &str) -> Result<(), BoxError> {
    Ok(baseline::child(name)?)
}

/// A temporary runtime directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> std::io::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!("pib-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop unless it was waited for.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Peak resident memory of a process, from `/proc/PID/status` (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs the whole benchmark. `program` is a command that runs this program (the
/// subscriber and baseline roles are selected by the arguments the bench appends:
/// `subscriber RENDEZVOUS` or `baseline NAME`); `daemon` is the `packet-ipcd` binary.
pub fn run(
    options: &BenchOptions,
    program: &dyn Fn() -> Command,
    daemon: &Path,
) -> Result<BenchReport, BoxError> {
    options.check()?;
    // Source packets: a ring of distinct packets, 64 batches' worth; flows of IPv4 and
    // IPv6 TCP and UDP when a group or a filter needs them.
    let ring = 64 * options.batch;
    let shaped = options.group || options.filter.is_some();
    let mut source: Vec<SourcePacket> = if shaped {
        crate::traffic::flow_shaped(7, options.packet_size, ring)
            .into_iter()
            .map(|p| SourcePacket {
                ts: SystemTime::UNIX_EPOCH,
                nanos: 0,
                data: p.into_data(),
            })
            .collect()
    } else {
        (0..ring)
            .map(|i| SourcePacket {
                ts: SystemTime::UNIX_EPOCH,
                nanos: 0,
                data: (0..options.packet_size)
                    .map(|k| (i.wrapping_mul(31) + k) as u8 | 0x10)
                    .collect(),
            })
            .collect()
    };
    for p in source.iter_mut().step_by(options.batch) {
        p.data[0] = PHASE_THROUGHPUT;
    }

    // Baselines.
    let baseline_memcpy_gbps = memcpy_gbps();
    let mut batch_bytes = Vec::new();
    packet_ipc::batch::encode(&source[..options.batch], 0, 0, &mut batch_bytes)?;
    let mut peer = baseline::Peer::start({
        let mut c = program();
        c.arg("baseline");
        c
    })?;
    let ipc_batches = peer.throughput(
        &batch_bytes,
        Duration::from_secs_f64(options.seconds.min(2.0)),
    )?;
    let mut rtt = peer.round_trips(2000)?;
    drop(peer);
    let baseline_ipc_channel_rtt_p50_us = percentile(&mut rtt, 0.5);
    let baseline_ipc_channel_rtt_p99_us = percentile(&mut rtt, 0.99);

    // The daemon, in a directory of its own.
    let dir = TempDir::new()?;
    let config = dir.0.join("bench.toml");
    let max_batch = packet_ipc::batch::encoded_len(&source[..options.batch]).max(16 << 20);
    std::fs::write(
        &config,
        format!(
            "[servers.{SERVER}]\noverflow = \"block\"\nqueue-depth = 64\n\
             max-subscribers = {}\nmax-batch-bytes = {max_batch}\nsnaplen = 65535\n",
            options.subscribers + 1
        ),
    )?;
    let log = std::fs::File::create(dir.0.join("daemon.log"))?;
    let mut daemon = Reaped(Some(
        Command::new(daemon)
            .arg("--config")
            .arg(&config)
            .env("PACKET_IPC_RUNTIME_DIR", &dir.0)
            .env_remove("PACKET_IPC_RENDEZVOUS")
            .env_remove("PACKET_IPC_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    ));
    let daemon_pid = daemon.0.as_ref().map_or(0, Child::id);
    let rendezvous = dir.0.join("rendezvous.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&rendezvous)
        .is_ok_and(|t| t.contains(&format!("\"pid\": {daemon_pid}")))
    {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the bench's packet-ipcd did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // Subscribers, each ready before anything is sent.
    let mut subs = Vec::new();
    for _ in 0..options.subscribers {
        let mut command = program();
        command.arg("subscriber").arg(&rendezvous);
        if options.group {
            command.args(["--group", "bench"]);
        }
        if let Some(f) = &options.filter {
            command.args(["--filter", f]);
        }
        if let Some(w) = options.wait {
            command.args(["--wait", w.as_str()]);
        }
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        lines.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("a bench subscriber failed to start: {line:?}").into());
        }
        subs.push((Reaped(Some(child)), lines));
    }

    let mut producer = Producer::connect_with(
        SERVER,
        ConnectOptions {
            rendezvous: Some(rendezvous.clone()),
            reconnect_wait: Duration::ZERO,
            ..ConnectOptions::default()
        },
    )?;
    let batches = source.len() / options.batch;
    let sub_pids: Vec<u32> = subs
        .iter()
        .filter_map(|(c, _)| c.0.as_ref().map(Child::id))
        .collect();
    let me = std::process::id();
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_ns(p)).sum::<u64>();

    // Throughput, flat out.
    let (cpu0, idle0) = (
        (cpu(&[me]), cpu(&[daemon_pid]), cpu(&sub_pids)),
        idle_jiffies(),
    );
    let start = Instant::now();
    let limit = Duration::from_secs_f64(options.seconds);
    let mut sent = 0u64;
    let mut i = 0;
    while start.elapsed() < limit {
        let chunk = &mut source[i * options.batch..(i + 1) * options.batch];
        chunk[0].nanos = monotonic_nanos();
        producer.send(chunk)?;
        sent += options.batch as u64;
        i = (i + 1) % batches;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, idle1) = (
        (cpu(&[me]), cpu(&[daemon_pid]), cpu(&sub_pids)),
        idle_jiffies(),
    );
    let producer_pps = sent as f64 / elapsed;

    // Latency, paced.
    let period = Duration::from_secs_f64(1.0 / f64::from(options.latency_rate.max(1)));
    let paced_start = Instant::now();
    for n in 0..options.latency_batches {
        let due = paced_start + period * n;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let chunk = &mut source[i * options.batch..(i + 1) * options.batch];
        chunk[0].data[0] = PHASE_LATENCY;
        chunk[0].nanos = monotonic_nanos();
        producer.send(chunk)?;
        chunk[0].data[0] = PHASE_THROUGHPUT;
        i = (i + 1) % batches;
    }
    let end = &mut source[..1];
    end[0].data[0] = PHASE_END;
    producer.send(end)?;

    // Reports.
    let mut reports = Vec::new();
    for (mut child, mut lines) in subs {
        let mut line = String::new();
        lines.read_line(&mut line)?;
        reports.push(
            serde_json::from_str::<SubscriberReport>(line.trim())
                .map_err(|e| format!("a bench subscriber reported {line:?}: {e}"))?,
        );
        if let Some(mut c) = child.0.take() {
            c.wait()?;
        }
    }
    let daemon_peak_rss_bytes = peak_rss(daemon_pid);
    if let Some(mut d) = daemon.0.take() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(d.id() as libc::pid_t, libc::SIGTERM) };
        let _ = d.wait();
    }

    let rates: Vec<f64> = reports
        .iter()
        .map(|r| {
            let secs = (r.last_ns.saturating_sub(r.first_ns)) as f64 / 1e9;
            if secs > 0.0 {
                r.packets as f64 / secs
            } else {
                0.0
            }
        })
        .collect();
    let delivered_pps: f64 = rates.iter().sum();
    let matched_pps: f64 = reports
        .iter()
        .zip(&rates)
        .map(|(r, rate)| {
            if r.packets > 0 {
                rate * r.matched as f64 / r.packets as f64
            } else {
                0.0
            }
        })
        .sum();
    let delivered = delivered_pps * elapsed;
    let share = |ns: u64| ns as f64 / 1e9 / elapsed * 100.0;
    let per_packet = |ns: u64| ns as f64 / delivered.max(1.0);
    let (producer_ns, daemon_ns, subs_ns) = (
        cpu1.0.saturating_sub(cpu0.0),
        cpu1.1.saturating_sub(cpu0.1),
        cpu1.2.saturating_sub(cpu0.2),
    );
    let idle_percent = match (idle0, idle1) {
        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => (i1 - i0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => 0.0,
    };
    let mut paced: Vec<f64> = reports.iter().flat_map(|r| r.paced_us.clone()).collect();
    let mut saturated: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.saturated_us.clone())
        .collect();
    Ok(BenchReport {
        delivered_pps,
        delivered_gbps: delivered_pps * options.packet_size as f64 / 1e9,
        per_subscriber_pps: delivered_pps / reports.len().max(1) as f64,
        producer_pps,
        latency_p50_us: percentile(&mut paced, 0.5),
        latency_p99_us: percentile(&mut paced, 0.99),
        saturated_latency_p99_us: percentile(&mut saturated, 0.99),
        lost_batches: reports.iter().map(|r| r.lost_batches).sum(),
        daemon_peak_rss_bytes,
        baseline_memcpy_gbps,
        baseline_ipc_channel_pps: ipc_batches * options.batch as f64,
        baseline_ipc_channel_rtt_p99_us,
        baseline_ipc_channel_rtt_p50_us,
        subscribers: options.subscribers,
        packet_size: options.packet_size,
        batch: options.batch,
        seconds: options.seconds,
        group: options.group,
        filter: options.filter.clone(),
        matched_pps,
        cpu_percent_producer: share(producer_ns),
        cpu_percent_daemon: share(daemon_ns),
        cpu_percent_subscribers: share(subs_ns),
        ns_per_packet_producer: per_packet(producer_ns),
        ns_per_packet_daemon: per_packet(daemon_ns),
        ns_per_packet_subscribers: per_packet(subs_ns),
        idle_percent,
    })
}

/// CPU time of every thread of process `pid` so far, ns (0 when it is gone).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The machine's idle and total time so far (jiffies), from `/proc/stat`.
fn idle_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().take(8).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_reservoir() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
        let mut r = Reservoir::new(7);
        for i in 0..(RESERVOIR as u64 * 4) {
            r.add(i as f64);
        }
        assert_eq!(r.kept.len(), RESERVOIR);
        assert_eq!(r.seen, RESERVOIR as u64 * 4);
        // A uniform sample of 0..4N has a mean near 2N.
        let mean = r.kept.iter().sum::<f64>() / RESERVOIR as f64;
        let n = RESERVOIR as f64;
        assert!((mean - 2.0 * n).abs() < 0.1 * n, "mean {mean}");
    }
}
