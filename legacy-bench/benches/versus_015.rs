//! packet-ipc next to the original packet-ipc 0.15, measured in the same run on the same
//! packets: point-to-point throughput between two processes, 256-packet batches of 64 B
//! and of 1500 B packets.
//!
//! The parent process sends the same pre-built batch over and over for a fixed time, then
//! closes; a child process (this very binary, re-executed) receives with `recv(256)` until
//! the end of the stream and touches the first and last byte of every packet. The rate is
//! the child's: packets over the time from its first packet to the end.
//!
//! Run with `cargo bench -p legacy-bench --bench versus_015`. Add `-- --quick` (or set
//! `PIPC_BENCH_QUICK=1`) for one run per cell instead of the median of three, and
//! `PIPC_BENCH_UNBOUNDED=1` for the default unbounded clients (`Client::new`).

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Set in the child: the name of the server to connect to.
const CHILD_ENV: &str = "PIPC_BENCH_CHILD";
/// Set in the child: which crate to receive with (`ours` or `legacy`).
const IMPL_ENV: &str = "PIPC_BENCH_IMPL";
/// Set to anything for one run per cell.
const QUICK_ENV: &str = "PIPC_BENCH_QUICK";
/// Set to anything for unbounded clients (`Client::new(name)`, as both crates default
/// to) instead of clients bounded to [`CLIENT_BUFFER`] batches.
const UNBOUNDED_ENV: &str = "PIPC_BENCH_UNBOUNDED";

fn unbounded() -> bool {
    std::env::var_os(UNBOUNDED_ENV).is_some()
}
/// How long the server keeps sending in one run. The 0.15 client drains its queue a little
/// after that, so its runs last somewhat longer.
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Batches either client buffers.
const CLIENT_BUFFER: usize = 64;
/// Packets per batch, and per `recv`.
const BATCH: usize = 256;
/// Packet sizes measured.
const SIZES: [usize; 2] = [64, 1500];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    /// This workspace's packet-ipc.
    Ours,
    /// packet-ipc 0.15.0 from crates.io.
    Legacy,
}

impl Impl {
    fn as_str(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Legacy => "legacy",
        }
    }
}

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

type BoxError = Box<dyn std::error::Error>;

/// Tallies received packets, from the first one on.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    start: Option<Instant>,
}

impl Tally {
    #[inline]
    fn touch(&mut self, data: &[u8]) {
        black_box(data.first());
        black_box(data.last());
        self.bytes += data.len() as u64;
        self.packets += 1;
    }

    fn finish(self) -> Received {
        Received {
            packets: self.packets,
            bytes: self.bytes,
            seconds: self.start.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        }
    }
}

fn child_ours(name: &str) -> Result<Received, BoxError> {
    use packet_ipc::AsIpcPacket;
    let mut client = if unbounded() {
        packet_ipc::Client::new(name)?
    } else {
        packet_ipc::Client::new_with_size(name, Some(CLIENT_BUFFER))?
    };
    let mut tally = Tally::default();
    while let Some(batch) = client.recv(BATCH)? {
        tally.start.get_or_insert_with(Instant::now);
        for p in &batch {
            tally.touch(p.data());
        }
    }
    Ok(tally.finish())
}

fn child_legacy(name: &str) -> Result<Received, BoxError> {
    use packet_ipc_015::AsIpcPacket;
    let mut client = if unbounded() {
        packet_ipc_015::Client::new(name.to_owned())?
    } else {
        packet_ipc_015::Client::new_with_size(name.to_owned(), Some(CLIENT_BUFFER))?
    };
    let mut tally = Tally::default();
    while let Some(batch) = client.recv(BATCH)? {
        tally.start.get_or_insert_with(Instant::now);
        for p in &batch {
            tally.touch(p.data());
        }
    }
    Ok(tally.finish())
}

/// The client role: receive everything, report on stdout.
fn child(name: &str) -> Result<(), BoxError> {
    let which = std::env::var(IMPL_ENV)?;
    let got = match which.as_str() {
        "ours" => child_ours(name)?,
        "legacy" => child_legacy(name)?,
        other => return Err(format!("unknown {IMPL_ENV}={other}").into()),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", got.to_json())?;
    out.flush()?;
    Ok(())
}

fn spawn_child(name: &str, which: Impl) -> std::process::Child {
    let exe = std::env::current_exe().expect("locating the bench binary");
    Command::new(exe)
        .env(CHILD_ENV, name)
        .env(IMPL_ENV, which.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the client process")
}

fn collect(mut child: std::process::Child, sent_packets: u64) -> Received {
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
        got.packets, sent_packets,
        "the client did not receive every packet sent"
    );
    got
}

/// Sends `send` until `RUN_FOR` has passed; returns the number of batches sent.
fn send_for(mut send: impl FnMut()) -> u64 {
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..4 {
            send();
            sent += 1;
        }
    }
    sent
}

fn run_ours(batch: &[packet_ipc::Packet]) -> Received {
    let server = packet_ipc::Server::new().expect("creating the server");
    let child = spawn_child(server.name(), Impl::Ours);
    let mut conn = server.accept().expect("accepting the client");
    let sent = send_for(|| conn.send(batch).expect("sending a batch"));
    conn.close().expect("closing the stream");
    drop(conn);
    collect(child, sent * batch.len() as u64)
}

fn run_legacy(batch: &[packet_ipc_015::Packet]) -> Received {
    let server = packet_ipc_015::Server::new().expect("creating the server");
    let child = spawn_child(server.name(), Impl::Legacy);
    let mut conn = server.accept().expect("accepting the client");
    let sent = send_for(|| conn.send(batch).expect("sending a batch"));
    conn.close().expect("closing the stream");
    drop(conn);
    collect(child, sent * batch.len() as u64)
}

/// The median run's packets per second, and its duration.
fn median(mut runs: Vec<Received>) -> (f64, f64) {
    runs.sort_by(|a, b| {
        let ra = a.packets as f64 / a.seconds;
        let rb = b.packets as f64 / b.seconds;
        ra.total_cmp(&rb)
    });
    let r = runs[runs.len() / 2];
    (r.packets as f64 / r.seconds, r.seconds)
}

fn payload(size: usize, i: usize) -> Vec<u8> {
    (0..size).map(|j| (i * 7 + j) as u8).collect()
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
            eprintln!("versus_015 client: {e}");
            std::process::exit(1);
        }
        return;
    }
    // Cargo passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os(QUICK_ENV).is_some();
    let runs = if quick { 1 } else { 3 };
    println!(
        "versus_015: two processes, {BATCH}-packet batches, {}s of sending per run, \
         {} of {runs} run(s), client buffer {}, recv({BATCH})",
        RUN_FOR.as_secs_f64(),
        if runs == 1 { "result" } else { "median" },
        if unbounded() {
            "unbounded (Client::new)".to_owned()
        } else {
            format!("{CLIENT_BUFFER} batches")
        },
    );
    println!("load average at the start: {}", load_average());
    println!();
    println!(
        "{:>8} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "pkt size", "ours Mpps", "0.15 Mpps", "ratio", "ours run s", "0.15 run s"
    );
    let mut json = Vec::new();
    for size in SIZES {
        let now = SystemTime::now();
        let ours: Vec<packet_ipc::Packet> = (0..BATCH)
            .map(|i| packet_ipc::Packet::new(now, payload(size, i)))
            .collect();
        let legacy: Vec<packet_ipc_015::Packet> = (0..BATCH)
            .map(|i| packet_ipc_015::Packet::new(now, payload(size, i)))
            .collect();
        // Alternate the two so that drift on the machine hits both alike.
        let mut ours_runs = Vec::new();
        let mut legacy_runs = Vec::new();
        for _ in 0..runs {
            ours_runs.push(run_ours(&ours));
            legacy_runs.push(run_legacy(&legacy));
        }
        let (ours_pps, ours_s) = median(ours_runs);
        let (legacy_pps, legacy_s) = median(legacy_runs);
        let ratio = ours_pps / legacy_pps;
        println!(
            "{:>8} {:>10.3} {:>10.3} {:>7.1}x {:>10.2} {:>10.2}",
            format!("{size} B"),
            ours_pps / 1e6,
            legacy_pps / 1e6,
            ratio,
            ours_s,
            legacy_s
        );
        json.push(format!(
            "\"ours_{size}_mpps\":{:.4},\"legacy_{size}_mpps\":{:.4},\"ratio_{size}\":{:.2}",
            ours_pps / 1e6,
            legacy_pps / 1e6,
            ratio
        ));
    }
    println!("load average at the end: {}", load_average());
    println!();
    println!("{{{}}}", json.join(","));
}
