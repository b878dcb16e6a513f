//! Point-to-point throughput between two real processes: a [`packet_ipc::Server`] in this
//! process sends the same pre-built batch over and over for about a second, a
//! [`packet_ipc::Client`] in a child process (this very binary, re-executed) receives every
//! packet and touches its first and last byte.
//!
//! Run with `cargo bench --bench point_to_point`. Add `-- --quick` (or set
//! `PIPC_BENCH_QUICK=1`) for one run per cell instead of the median of three.
//!
//! It measures (a) 256-packet batches of 64 B and 1500 B packets with the default options,
//! and (b) batches of about 1 KiB to 1 MiB of 64 B packets sent always inline
//! (`inline_threshold = usize::MAX`) and always through shared memory
//! (`inline_threshold = 0`), to show where the two paths cross.

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use packet_ipc::batch::encoded_len;
use packet_ipc::{AsIpcPacket, Client, Packet, Server, ServerOptions, DEFAULT_INLINE_THRESHOLD};

/// Set in the child: the name of the server to connect to.
const CHILD_ENV: &str = "PIPC_BENCH_CHILD";
/// Set to anything for one run per cell.
const QUICK_ENV: &str = "PIPC_BENCH_QUICK";
/// How long the server keeps sending in one run.
const RUN_FOR: Duration = Duration::from_secs(1);
/// Batches the client buffers.
const CLIENT_BUFFER: usize = 64;
/// Packets the client asks for per `recv`.
const RECV_SIZE: usize = 256;
/// Batch sizes of the inline vs shared-memory sweep (each batch is as many 64 B packets as
/// fit in that many bytes).
const SWEEP: [usize; 6] = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

/// What the child reports.
#[derive(Clone, Copy, Debug)]
struct Received {
    packets: u64,
    bytes: u64,
    seconds: f64,
}

impl Received {
    fn to_json(self) -> String {
        format!(
            "{{\"packets\":{},\"bytes\":{},\"seconds\":{}}}",
            self.packets, self.bytes, self.seconds
        )
    }

    /// Reads the line [`Received::to_json`] wrote (no general JSON needed).
    fn from_json(line: &str) -> Option<Received> {
        let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
        let (mut packets, mut bytes, mut seconds) = (None, None, None);
        for field in body.split(',') {
            let (key, value) = field.split_once(':')?;
            match key.trim().trim_matches('"') {
                "packets" => packets = value.trim().parse().ok(),
                "bytes" => bytes = value.trim().parse().ok(),
                "seconds" => seconds = value.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Received {
            packets: packets?,
            bytes: bytes?,
            seconds: seconds?,
        })
    }
}

/// The client role: receive everything, touch every packet, report on stdout.
fn child(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = Client::new_with_size(name, Some(CLIENT_BUFFER))?;
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut start = None;
    while let Some(batch) = client.recv(RECV_SIZE)? {
        start.get_or_insert_with(Instant::now);
        for p in &batch {
            let data = p.data();
            black_box(data.first());
            black_box(data.last());
            bytes += data.len() as u64;
        }
        packets += batch.len() as u64;
    }
    let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let line = Received {
        packets,
        bytes,
        seconds,
    }
    .to_json();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// A batch of `count` packets of `size` bytes each.
fn make_batch(count: usize, size: usize) -> Vec<Packet> {
    let now = SystemTime::now();
    (0..count)
        .map(|i| Packet::new(now, (0..size).map(|j| (i * 7 + j) as u8).collect()))
        .collect()
}

/// One run: a fresh server and child, `RUN_FOR` of sending. Returns what the child saw.
fn run_once(batch: &[Packet], inline_threshold: usize) -> Received {
    let server = Server::with_options(ServerOptions {
        inline_threshold,
        ..ServerOptions::default()
    })
    .expect("creating the server");
    let exe = std::env::current_exe().expect("locating the bench binary");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, server.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the client process");
    let mut conn = server.accept().expect("accepting the client");
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN_FOR {
        // A handful of sends between clock reads keeps the clock out of the measurement.
        for _ in 0..8 {
            conn.send(batch).expect("sending a batch");
            sent += 1;
        }
    }
    conn.close().expect("closing the stream");
    drop(conn);
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("child stdout")
        .read_to_string(&mut out)
        .expect("reading the child's report");
    let status = child.wait().expect("waiting for the client process");
    assert!(status.success(), "client process failed: {status}");
    let got = Received::from_json(&out)
        .unwrap_or_else(|| panic!("unreadable report from the client: {out:?}"));
    assert_eq!(
        got.packets,
        sent * batch.len() as u64,
        "the client did not receive every packet sent"
    );
    got
}

/// Rates of one cell: the median run by packets per second.
#[derive(Clone, Copy, Debug)]
struct Rates {
    /// Packets per second.
    pps: f64,
    /// Batches per second.
    bps: f64,
    /// Encoded batch bytes per second.
    batch_bytes_ps: f64,
    /// Captured (payload) bytes per second.
    payload_ps: f64,
    /// Duration of the median run, seconds.
    seconds: f64,
}

fn measure(batch: &[Packet], inline_threshold: usize, runs: usize) -> Rates {
    let batch_len = encoded_len(batch) as f64;
    let mut all: Vec<Rates> = (0..runs)
        .map(|_| {
            let r = run_once(batch, inline_threshold);
            let pps = r.packets as f64 / r.seconds;
            let bps = pps / batch.len() as f64;
            Rates {
                pps,
                bps,
                batch_bytes_ps: bps * batch_len,
                payload_ps: r.bytes as f64 / r.seconds,
                seconds: r.seconds,
            }
        })
        .collect();
    all.sort_by(|a, b| a.pps.total_cmp(&b.pps));
    all[all.len() / 2]
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / (1 << 10) as f64)
    } else {
        format!("{n} B")
    }
}

/// `/proc/loadavg`, to tell a quiet machine from a busy one when reading the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        if let Err(e) = child(&name) {
            eprintln!("point_to_point client: {e}");
            std::process::exit(1);
        }
        return;
    }
    // Cargo passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os(QUICK_ENV).is_some();
    let runs = if quick { 1 } else { 3 };
    println!(
        "point_to_point: two processes, {}s of sending per run, {} of {runs} run(s) per cell, \
         client buffer {CLIENT_BUFFER} batches, recv({RECV_SIZE})",
        RUN_FOR.as_secs_f64(),
        if runs == 1 { "result" } else { "median" },
    );
    println!("load average at the start: {}", load_average());

    println!();
    println!(
        "(a) 256-packet batches, default options (inline_threshold = {DEFAULT_INLINE_THRESHOLD} B)"
    );
    println!(
        "{:>8} {:>11} {:>7} {:>9} {:>11} {:>12} {:>7}",
        "pkt size", "batch", "path", "Mpps", "batches/s", "payload GB/s", "run s"
    );
    for size in [64usize, 1500] {
        let batch = make_batch(256, size);
        let len = encoded_len(&batch);
        let path = if len > DEFAULT_INLINE_THRESHOLD {
            "shm"
        } else {
            "inline"
        };
        let r = measure(&batch, DEFAULT_INLINE_THRESHOLD, runs);
        println!(
            "{:>8} {:>11} {:>7} {:>9.3} {:>11.0} {:>12.3} {:>7.2}",
            format!("{size} B"),
            human_bytes(len),
            path,
            r.pps / 1e6,
            r.bps,
            r.payload_ps / 1e9,
            r.seconds
        );
    }

    println!();
    println!("(b) inline vs shared memory: 64 B packets, batch size varied by packets per batch");
    println!("    inline: inline_threshold = usize::MAX; shm: inline_threshold = 0");
    println!("    GB/s counts encoded batch bytes (headers and padding included)");
    println!(
        "{:>11} {:>7} {:>12} {:>11} {:>12} {:>11} {:>11}",
        "batch", "pkts", "inline b/s", "inline GB/s", "shm b/s", "shm GB/s", "shm/inline"
    );
    let mut sweep = Vec::new();
    for target in SWEEP {
        // A 64 B packet takes an 80-byte record; the header takes 32 bytes.
        let count = (target - packet_ipc::batch::HEADER_LEN) / packet_ipc::batch::record_len(64);
        let batch = make_batch(count, 64);
        let len = encoded_len(&batch);
        let inline = measure(&batch, usize::MAX, runs);
        let shm = measure(&batch, 0, runs);
        println!(
            "{:>11} {:>7} {:>12.0} {:>11.3} {:>12.0} {:>11.3} {:>11.2}",
            human_bytes(len),
            count,
            inline.bps,
            inline.batch_bytes_ps / 1e9,
            shm.bps,
            shm.batch_bytes_ps / 1e9,
            shm.bps / inline.bps
        );
        sweep.push((len, inline, shm));
    }
    // The smallest batch from which shared memory wins at every larger size too.
    let crossover = sweep
        .iter()
        .rposition(|(_, inline, shm)| shm.bps <= inline.bps)
        .map_or(Some(0), |last_inline| {
            (last_inline + 1 < sweep.len()).then_some(last_inline + 1)
        })
        .map(|i| human_bytes(sweep[i].0));
    println!();
    match crossover {
        Some(at) => println!("shared memory wins from a batch of {at} up"),
        None => println!("inline wins at the largest batch of the sweep"),
    }
    println!("load average at the end: {}", load_average());
}
