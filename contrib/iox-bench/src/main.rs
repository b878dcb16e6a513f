//! iox-bench: iceoryx2 0.10 counterpart of `packet-ipc bench` (throughput phase only).
//!
//! One publisher process (this process) and N subscriber processes (this binary run
//! again as `__sub ...`), one publish-subscribe service whose payload is a `[u8]` slice
//! holding one batch of packets. Each packet is a 16-byte header (ts: u64, caplen: u32,
//! origlen: u32, native endian) followed by `packet_size` payload bytes. The publisher
//! loans each sample uninitialised and writes every byte of every packet in place, from a
//! ring of 64 batches' worth of distinct pre-generated packets. Every subscriber walks the
//! batch by `caplen` and reads each packet's first and last payload byte (summed into a
//! checksum that every subscriber reports, so the parent can check they saw the same data).
//!
//! Lossless: the service has `enable_safe_overflow(false)` and the publisher uses
//! `BackpressureStrategy::RetryUntilDelivered`, so a full subscriber buffer makes the
//! publisher wait instead of overwriting. Each sample carries a sequence number in its user
//! header; subscribers count gaps (`lost`), and the publisher counts sends that reached
//! fewer than N subscribers (`undelivered`). Both must be 0.
//!
//! Modes:
//! * `event`: the publisher calls `Notifier::notify()` on an iceoryx2 event service after
//!   each sample; subscribers drain `receive()` and then sleep in `Listener::blocking_wait`.
//! * `busy`: subscribers poll `receive()` and call `std::thread::yield_now()` when empty.
//!
//! Rates are computed like `packet-ipc bench`: each subscriber's packets divided by its own
//! window from the first to the last throughput sample it received, summed over subscribers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::backpressure_strategy::BackpressureStrategy as Bp;
use iceoryx2::port::BackpressureAction;
use iceoryx2::prelude::*;

type BoxError = Box<dyn std::error::Error>;

const HDR: usize = 16;
const KIND_DATA: u64 = 0;
const KIND_END: u64 = 1;
/// Source ring: this many batches of distinct packets.
const RING_BATCHES: usize = 64;
/// An event-mode subscriber checks at least this often that its publisher is alive.
const PARENT_CHECK: Duration = Duration::from_millis(500);
/// The publisher gives up (error exit) if one subscriber's buffer stays full this long.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// User header of every sample.
#[derive(Debug, Default, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct BatchHeader {
    /// Sequence number of a data sample (0, 1, 2, ...).
    seq: u64,
    /// KIND_DATA or KIND_END.
    kind: u64,
    /// For KIND_END: the number of data samples sent.
    total: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Event,
    Busy,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, BoxError> {
        match s {
            "event" => Ok(Mode::Event),
            "busy" => Ok(Mode::Busy),
            _ => Err(format!("--mode must be event or busy, not {s:?}").into()),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Mode::Event => "event",
            Mode::Busy => "busy",
        }
    }
}

struct Options {
    mode: Mode,
    packet_size: usize,
    subscribers: usize,
    seconds: f64,
    batch: usize,
    buffer: usize,
}

const USAGE: &str = "usage: iox-bench [--mode event|busy] [--packet-size BYTES] [--seconds S] \
[--subscribers N] [--batch PACKETS] [--buffer SAMPLES]\n\
defaults: --mode event --packet-size 64 --seconds 5 --subscribers 8 --batch 256 --buffer 64";

fn parse_options(args: &[String]) -> Result<Options, BoxError> {
    let mut o = Options {
        mode: Mode::Event,
        packet_size: 64,
        subscribers: 8,
        seconds: 5.0,
        batch: 256,
        buffer: 64,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        if key == "-h" || key == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || -> Result<String, BoxError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{key} needs a value").into()),
            }
        };
        match key {
            "--mode" => o.mode = Mode::parse(&value()?)?,
            "--packet-size" => o.packet_size = value()?.parse()?,
            "--subscribers" => o.subscribers = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--batch" => o.batch = value()?.parse()?,
            "--buffer" => o.buffer = value()?.parse()?,
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}").into()),
        }
    }
    if o.packet_size < 1 || o.packet_size > 65535 {
        return Err("--packet-size must be 1..=65535".into());
    }
    if o.subscribers < 1 || o.subscribers > 64 {
        return Err("--subscribers must be 1..=64".into());
    }
    if o.batch < 1 || o.seconds <= 0.0 || o.buffer < 1 {
        return Err("--batch, --seconds and --buffer must be positive".into());
    }
    Ok(o)
}

fn service_names(tag: &str) -> (String, String) {
    (format!("iox-bench/{tag}/data"), format!("iox-bench/{tag}/wake"))
}

fn main() {
    iceoryx2::prelude::set_log_level_from_env_or(LogLevel::Warn);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("__sub") {
        subscriber_main(&args[1..])
    } else {
        parse_options(&args).and_then(|o| publisher_main(&o))
    };
    if let Err(e) = result {
        eprintln!("iox-bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- subscriber

fn subscriber_main(args: &[String]) -> Result<(), BoxError> {
    let [tag, mode] = args else {
        return Err("__sub TAG MODE".into());
    };
    let mode = Mode::parse(mode)?;
    let (data_name, wake_name) = service_names(tag);

    let node = NodeBuilder::new().config(&Config::default()).create::<ipc::Service>()?;
    let service = node
        .service_builder(&data_name.as_str().try_into()?)
        .publish_subscribe::<[u8]>()
        .user_header::<BatchHeader>()
        .open()?;
    let subscriber = service.subscriber_builder().create()?;
    let wake = match mode {
        Mode::Event => Some(
            node.service_builder(&wake_name.as_str().try_into()?)
                .event()
                .open()?,
        ),
        Mode::Busy => None,
    };
    let listener = match &wake {
        Some(w) => Some(w.listener_builder().create()?),
        None => None,
    };

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }

    let mut packets: u64 = 0;
    let mut samples: u64 = 0;
    let mut lost: u64 = 0;
    let mut bad: u64 = 0;
    let mut sum: u64 = 0;
    let mut expected: u64 = 0;
    let ppid = std::os::unix::process::parent_id();
    let mut empty_polls: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();

    'outer: loop {
        // Drain everything that is there.
        loop {
            let Some(sample) = subscriber.receive()? else {
                break;
            };
            let h = *sample.user_header();
            if h.kind == KIND_END {
                if h.total > expected {
                    lost += h.total - expected;
                }
                break 'outer;
            }
            if h.seq > expected {
                lost += h.seq - expected;
            } else if h.seq < expected {
                bad += 1;
            }
            expected = h.seq + 1;

            let data = sample.payload();
            let mut off = 0usize;
            let mut n = 0u64;
            while off + HDR <= data.len() {
                let caplen =
                    u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
                let p = &data[off + HDR..off + HDR + caplen];
                sum = sum
                    .wrapping_add(u64::from(p[0]))
                    .wrapping_add(u64::from(p[caplen - 1]));
                off += HDR + caplen;
                n += 1;
            }
            if off != data.len() {
                bad += 1;
            }
            drop(sample);
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
            }
            last = now;
            packets += n;
            samples += 1;
        }
        match &listener {
            Some(l) => {
                // Same syscalls as blocking_wait; the timeout only lets us notice a
                // vanished publisher.
                l.timed_wait(|_| {}, PARENT_CHECK)?;
                if std::os::unix::process::parent_id() != ppid {
                    return Err("the publisher went away".into());
                }
            }
            None => {
                std::thread::yield_now();
                empty_polls += 1;
                if empty_polls % 4096 == 0 && std::os::unix::process::parent_id() != ppid {
                    return Err("the publisher went away".into());
                }
            }
        }
    }
    let sum = std::hint::black_box(sum);
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());

    let mut out = std::io::stdout().lock();
    writeln!(out, "report {packets} {samples} {lost} {bad} {secs} {sum}")?;
    out.flush()?;
    drop(listener);
    drop(subscriber);
    Ok(())
}

// ---------------------------------------------------------------- publisher

/// Ends the children we started if we bail out early.
struct Children(Vec<(Child, BufReader<std::process::ChildStdout>)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (c, _) in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

struct SubReport {
    packets: u64,
    samples: u64,
    lost: u64,
    bad: u64,
    secs: f64,
    sum: u64,
}

fn parse_report(line: &str) -> Result<SubReport, BoxError> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 7 || f[0] != "report" {
        return Err(format!("a subscriber reported {line:?}").into());
    }
    Ok(SubReport {
        packets: f[1].parse()?,
        samples: f[2].parse()?,
        lost: f[3].parse()?,
        bad: f[4].parse()?,
        secs: f[5].parse()?,
        sum: f[6].parse()?,
    })
}

/// CPU time of every thread of process `pid` so far, ns (0 when gone).
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

fn publisher_main(o: &Options) -> Result<(), BoxError> {
    let tag = format!("{}", std::process::id());
    let (data_name, wake_name) = service_names(&tag);
    let rec = HDR + o.packet_size;
    let batch_bytes = o.batch * rec;

    // Source ring: distinct packets (payload bytes depend on packet index and offset).
    let ring_len = RING_BATCHES * o.batch;
    let payloads: Vec<u8> = (0..ring_len)
        .flat_map(|i| (0..o.packet_size).map(move |k| (i.wrapping_mul(31) + k) as u8 | 0x10))
        .collect();
    let stamps: Vec<u64> = (0..ring_len as u64)
        .map(|i| 1_700_000_000_000_000_000 + i * 1_000)
        .collect();

    let node = NodeBuilder::new().config(&Config::default()).create::<ipc::Service>()?;
    // Remove what crashed earlier runs may have left.
    let _ = node.try_cleanup_dead_nodes();

    let service = node
        .service_builder(&data_name.as_str().try_into()?)
        .publish_subscribe::<[u8]>()
        .user_header::<BatchHeader>()
        .max_publishers(1)
        .max_subscribers(o.subscribers)
        .max_nodes(o.subscribers + 2)
        .history_size(0)
        .subscriber_max_buffer_size(o.buffer)
        .subscriber_max_borrowed_samples(2)
        .enable_safe_overflow(false)
        .create()?;

    // Counts delivery incidents (a subscriber's buffer was full and the publisher had to
    // wait: iceoryx2 retries in an adaptive wait, yield_now() 10000 times, then 100 us and
    // later 10 ms sleeps). Retry is what RetryUntilDelivered does; the handler only adds a
    // stall limit so that a dead subscriber cannot hang the publisher forever.
    let incidents = Arc::new(AtomicU64::new(0));
    let publisher = service
        .publisher_builder()
        .initial_max_slice_len(batch_bytes)
        .allocation_strategy(AllocationStrategy::Static)
        .max_loaned_samples(2)
        .backpressure_strategy(Bp::RetryUntilDelivered)
        .set_backpressure_handler({
            let incidents = incidents.clone();
            move |info| {
                if info.retries == 0 {
                    incidents.fetch_add(1, Ordering::Relaxed);
                }
                if info.elapsed_time < STALL_LIMIT {
                    BackpressureAction::Retry
                } else {
                    BackpressureAction::DiscardDataAndFail
                }
            }
        })
        .create()?;

    let wake = match o.mode {
        Mode::Event => Some(
            node.service_builder(&wake_name.as_str().try_into()?)
                .event()
                .max_notifiers(1)
                .max_listeners(o.subscribers)
                .max_nodes(o.subscribers + 2)
                .create()?,
        ),
        Mode::Busy => None,
    };
    let notifier = match &wake {
        Some(w) => Some(w.notifier_builder().create()?),
        None => None,
    };

    // Subscribers: separate processes, each ready before anything is sent.
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for _ in 0..o.subscribers {
        let mut child = Command::new(&exe)
            .arg("__sub")
            .arg(&tag)
            .arg(o.mode.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        children.0.push((child, out));
    }
    for (_, out) in &mut children.0 {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("a subscriber failed to start: {line:?}").into());
        }
    }
    let connected = service.dynamic_config().number_of_subscribers();
    if connected != o.subscribers {
        return Err(format!("{connected} subscribers connected, expected {}", o.subscribers).into());
    }
    if let Some(w) = &wake {
        let l = w.dynamic_config().number_of_listeners();
        if l != o.subscribers {
            return Err(format!("{l} listeners, expected {}", o.subscribers).into());
        }
    }

    let me = std::process::id();
    let sub_pids: Vec<u32> = children.0.iter().map(|(c, _)| c.id()).collect();
    let cpu_subs = |pids: &[u32]| pids.iter().map(|&p| cpu_ns(p)).sum::<u64>();

    // Throughput, flat out.
    let limit = Duration::from_secs_f64(o.seconds);
    let mut seq: u64 = 0;
    let mut undelivered: u64 = 0;
    let mut ring_pos = 0usize;
    let (pub_cpu0, subs_cpu0) = (cpu_ns(me), cpu_subs(&sub_pids));
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut sample = publisher.loan_slice_uninit(batch_bytes)?;
        *sample.user_header_mut() = BatchHeader {
            seq,
            kind: KIND_DATA,
            total: 0,
        };
        {
            let dst = sample.payload_mut();
            debug_assert_eq!(dst.len(), batch_bytes);
            let dst = dst.as_mut_ptr().cast::<u8>();
            for p in 0..o.batch {
                let i = ring_pos + p;
                let src = &payloads[i * o.packet_size..(i + 1) * o.packet_size];
                // SAFETY: dst has batch_bytes bytes; record p occupies
                // [p*rec, (p+1)*rec), inside it; src has packet_size bytes.
                unsafe {
                    let r = dst.add(p * rec);
                    r.cast::<u64>().write_unaligned(stamps[i]);
                    r.add(8).cast::<u32>().write_unaligned(o.packet_size as u32);
                    r.add(12).cast::<u32>().write_unaligned(o.packet_size as u32);
                    std::ptr::copy_nonoverlapping(src.as_ptr(), r.add(HDR), o.packet_size);
                }
            }
        }
        // SAFETY: every byte of the payload was written above.
        let sample = unsafe { sample.assume_init() };
        let recipients = sample.send().map_err(|e| {
            format!("send failed ({e:?}): a subscriber's buffer stayed full for {STALL_LIMIT:?} (dead?)")
        })?;
        if recipients < o.subscribers {
            undelivered += 1;
        }
        if let Some(n) = &notifier {
            n.notify()?;
        }
        seq += 1;
        ring_pos += o.batch;
        if ring_pos == ring_len {
            ring_pos = 0;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (pub_cpu1, subs_cpu1) = (cpu_ns(me), cpu_subs(&sub_pids));

    // End marker (also delivered losslessly).
    let mut end = publisher.loan_slice_uninit(1)?;
    *end.user_header_mut() = BatchHeader {
        seq,
        kind: KIND_END,
        total: seq,
    };
    end.payload_mut()[0].write(0);
    // SAFETY: the one payload byte was written.
    let end = unsafe { end.assume_init() };
    end.send()?;
    if let Some(n) = &notifier {
        n.notify()?;
    }

    // Reports.
    let mut reports = Vec::new();
    for (_, out) in &mut children.0 {
        let mut line = String::new();
        out.read_line(&mut line)?;
        reports.push(parse_report(line.trim())?);
    }
    for (c, _) in &mut children.0 {
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("a subscriber exited with {status}").into());
        }
    }
    drop(children);
    drop(notifier);
    drop(wake);
    drop(publisher);
    drop(service);
    drop(node);

    let rates: Vec<f64> = reports
        .iter()
        .map(|r| if r.secs > 0.0 { r.packets as f64 / r.secs } else { 0.0 })
        .collect();
    let total_pps: f64 = rates.iter().sum();
    let lost: u64 = reports.iter().map(|r| r.lost).sum();
    let bad: u64 = reports.iter().map(|r| r.bad).sum();
    let sent_packets = seq * o.batch as u64;
    let counts_ok = reports
        .iter()
        .all(|r| r.samples == seq && r.packets == sent_packets && r.sum == reports[0].sum)
        && bad == 0;
    let share = |ns: u64| ns as f64 / 1e9 / elapsed * 100.0;
    let each: Vec<String> = rates.iter().map(|r| format!("{:.4}", r / 1e6)).collect();

    println!(
        "{{\"mode\":\"{}\",\"packet_size\":{},\"subscribers\":{},\"seconds\":{},\
\"mpps_total\":{:.4},\"mpps_per_sub\":{:.4},\"lost\":{},\
\"mpps_each\":[{}],\"producer_mpps\":{:.4},\"batch\":{},\"buffer\":{},\
\"samples_sent\":{},\"undelivered\":{},\"backpressure_incidents\":{},\"counts_ok\":{},\
\"cpu_percent_publisher\":{:.1},\"cpu_percent_subscribers\":{:.1},\"iceoryx2\":\"0.10.0\"}}",
        o.mode.as_str(),
        o.packet_size,
        o.subscribers,
        o.seconds,
        total_pps / 1e6,
        total_pps / 1e6 / o.subscribers as f64,
        lost,
        each.join(","),
        sent_packets as f64 / elapsed / 1e6,
        o.batch,
        o.buffer,
        seq,
        undelivered,
        incidents.load(Ordering::Relaxed),
        counts_ok,
        share(pub_cpu1.saturating_sub(pub_cpu0)),
        share(subs_cpu1.saturating_sub(subs_cpu0)),
    );
    Ok(())
}
