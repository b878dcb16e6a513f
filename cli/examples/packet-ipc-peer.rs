//! `packet-ipc-peer`: a point-to-point peer for demos and tests.
//!
//! - `packet-ipc-peer demo` sends packets from this process to a client process it starts,
//!   and prints what the client received: the point-to-point API end to end.
//! - `packet-ipc-peer client NAME` connects to a server by name, receives until the end of
//!   the stream and prints a JSON summary (and, with `--out`, every packet as one batch file).
//! - `packet-ipc-peer serve` creates a server, prints its name, and sends generated packets
//!   to the client that connects.
//! - `packet-ipc-peer produce SERVER` and `packet-ipc-peer subscribe SERVER` are a producer
//!   and a subscriber of the daemon `packet-ipcd`, for tests.
//! - `packet-ipc-peer attack flood|swap|impersonate SERVER` is a hostile local user, for
//!   the trust tests (which run it as another user).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use packet_ipc::{
    AsIpcPacket, Client, ClientOptions, ConnectOptions, Packet, Producer, Received, Server,
    Subscriber,
};

#[derive(Parser)]
#[command(version, about = "Point-to-point packet-ipc peer, for demos and tests")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send packets to a client process started here, and print what it received.
    Demo(Gen),
    /// Connect to a server and receive until the end of the stream.
    Client {
        /// The server's name.
        name: String,
        /// Most batches buffered in the client (default: no bound).
        #[arg(long)]
        buffer: Option<usize>,
        /// Most packets taken per `recv` call.
        #[arg(long, default_value_t = 256)]
        recv: usize,
        /// How long to wait for the server to accept, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        connect_timeout_ms: u64,
        /// Write every received packet into this file, as one batch.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send generated packets to a server of the daemon.
    Produce {
        /// The server's name.
        server: String,
        #[command(flatten)]
        gen: Gen,
        /// Pause this long between batches, in microseconds.
        #[arg(long, default_value_t = 0)]
        pause_us: u64,
        /// How long to wait for a daemon to come back, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        reconnect_wait_ms: u64,
        /// Make every packet say who sent it: this tag, its batch and its index in the
        /// first 12 bytes, and bytes that follow from them (`testing::tagged_packet`).
        #[arg(long)]
        tag: Option<u32>,
    },
    /// Attack the bootstrap as a hostile local user would.
    Attack {
        #[command(subcommand)]
        how: Attack,
    },
    /// Receive from a server of the daemon until the end, a count or a timeout.
    Subscribe {
        /// The server's name.
        server: String,
        /// Stop after this many packets.
        #[arg(long)]
        count: Option<u64>,
        /// Stop when nothing came for this long, in milliseconds.
        #[arg(long)]
        idle_ms: Option<u64>,
        /// How long to wait for a daemon to come back, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        reconnect_wait_ms: u64,
        /// Sleep this long after each batch, in microseconds (a slow reader).
        #[arg(long, default_value_t = 0)]
        slow_us: u64,
        /// Write every received packet into this file, as one batch.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Join this flow-balanced subscriber group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Create a server, print its name, and send generated packets to its client.
    Serve {
        #[command(flatten)]
        gen: Gen,
        /// Exit abruptly after this many batches, without closing the stream.
        #[arg(long)]
        abort_after: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Attack {
    /// Drop requests naming a socket that never accepts, in the control directory and the
    /// server's subscriber spool, and hold them.
    Flood {
        /// The server.
        server: String,
        /// Requests in all.
        #[arg(long, default_value_t = 600)]
        requests: usize,
        /// Hold the socket this long, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        hold_ms: u64,
    },
    /// Exchange request files with FIFOs, and plant links to /dev/zero, in every spool.
    Swap {
        /// The server.
        server: String,
        /// For this long, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        ms: u64,
    },
    /// Answer other users' clients in the daemon's place.
    Impersonate {
        /// The server.
        server: String,
        /// For this long, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        ms: u64,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct Gen {
    /// Batches to send.
    #[arg(long, default_value_t = 1000)]
    batches: u64,
    /// Packets per batch.
    #[arg(long, default_value_t = 256)]
    packets: usize,
    /// Bytes per packet.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo(gen) => demo(gen),
        Cmd::Client {
            name,
            buffer,
            recv,
            connect_timeout_ms,
            out,
        } => client(
            &name,
            ClientOptions {
                buffer,
                connect_timeout: Duration::from_millis(connect_timeout_ms),
            },
            recv,
            out,
        ),
        Cmd::Serve { gen, abort_after } => serve(gen, abort_after),
        Cmd::Produce {
            server,
            gen,
            pause_us,
            reconnect_wait_ms,
            tag,
        } => produce(&server, gen, pause_us, reconnect_wait_ms, tag),
        Cmd::Attack { how } => attack(how),
        Cmd::Subscribe {
            server,
            count,
            idle_ms,
            reconnect_wait_ms,
            slow_us,
            out,
            group,
        } => subscribe(
            &server,
            count,
            idle_ms,
            ConnectOptions {
                group,
                ..options(reconnect_wait_ms)
            },
            slow_us,
            out,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("packet-ipc-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn generated(gen: Gen) -> Vec<Packet> {
    let now = SystemTime::now();
    (0..gen.packets)
        .map(|i| {
            let data = (0..gen.size).map(|k| (i + k) as u8).collect();
            Packet::new(now + Duration::from_micros(i as u64), data)
        })
        .collect()
}

fn send_generated(gen: Gen, server: Server, abort_after: Option<u64>) -> AnyResult<u64> {
    let mut connection = server.accept()?;
    let packets = generated(gen);
    for b in 0..gen.batches {
        if abort_after == Some(b) {
            // No destructor runs: the client sees the connection drop, not an end.
            std::process::exit(3);
        }
        connection.send(&packets)?;
    }
    connection.close()?;
    Ok(gen.batches * gen.packets as u64)
}

fn serve(gen: Gen, abort_after: Option<u64>) -> AnyResult {
    let server = Server::new()?;
    println!("{}", server.name());
    std::io::stdout().flush()?;
    send_generated(gen, server, abort_after)?;
    Ok(())
}

fn demo(gen: Gen) -> AnyResult {
    let server = Server::new()?;
    let name = server.name().clone();
    let child = Command::new(std::env::current_exe()?)
        .args(["client", &name])
        .stdout(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let sent = send_generated(gen, server, None)?;
    let out = child.wait_with_output()?;
    let secs = started.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("sent {sent} packets of {} bytes in {secs:.3} s", gen.size);
    println!("client process reported: {}", report.trim());
    if !out.status.success() {
        return Err(format!("client failed: {}", out.status).into());
    }
    Ok(())
}

fn client(name: &str, options: ClientOptions, size: usize, out: Option<PathBuf>) -> AnyResult {
    let mut client = Client::with_options(name, options)?;
    let (mut packets, mut bytes, mut calls, mut max) = (0u64, 0u64, 0u64, 0usize);
    let mut kept = Vec::new();
    let result = loop {
        match client.recv(size) {
            Ok(Some(got)) => {
                calls += 1;
                max = max.max(got.len());
                packets += got.len() as u64;
                bytes += got.iter().map(|p| p.data().len() as u64).sum::<u64>();
                if out.is_some() {
                    kept.extend(got.iter().map(Packet::from_packet));
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    write_kept(out, &kept)?;
    let summary = serde_json::json!({
        "packets": packets,
        "bytes": bytes,
        "recv_calls": calls,
        "max_recv": max,
        "end": if result.is_ok() { "closed" } else { "error" },
    });
    println!("{summary}");
    result.map_err(Into::into)
}

fn options(reconnect_wait_ms: u64) -> ConnectOptions {
    ConnectOptions {
        reconnect_wait: Duration::from_millis(reconnect_wait_ms),
        ..ConnectOptions::default()
    }
}

fn produce(
    server: &str,
    gen: Gen,
    pause_us: u64,
    reconnect_wait_ms: u64,
    tag: Option<u32>,
) -> AnyResult {
    let mut producer = Producer::connect_with(server, options(reconnect_wait_ms))?;
    eprintln!("connected to {server}");
    if let Some(tag) = tag {
        use packet_ipc::broker::testing::tagged_packet;
        let now = SystemTime::now();
        for b in 0..gen.batches as u32 {
            let packets: Vec<Packet> = (0..gen.packets as u32)
                .map(|i| Packet::new(now, tagged_packet(tag, b, i, gen.size)))
                .collect();
            producer.send(&packets)?;
        }
        if !producer.flush(Duration::from_secs(30)) {
            return Err("the daemon did not take every batch within 30 s".into());
        }
        println!("{}", serde_json::json!({ "batches": gen.batches }));
        return Ok(());
    }
    let packets = generated(gen);
    for _ in 0..gen.batches {
        producer.send(&packets)?;
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(pause_us));
        }
    }
    let summary = serde_json::json!({
        "packets": gen.batches * gen.packets as u64,
        "batches": gen.batches,
    });
    println!("{summary}");
    Ok(())
}

fn subscribe(
    server: &str,
    count: Option<u64>,
    idle_ms: Option<u64>,
    options: ConnectOptions,
    slow_us: u64,
    out: Option<PathBuf>,
) -> AnyResult {
    let mut sub = Subscriber::connect_with(server, options)?;
    eprintln!("subscribed to {server}");
    let (mut packets, mut batches, mut lost, mut reconnects) = (0u64, 0u64, 0u64, 0u64);
    let mut seqs_ordered = true;
    let mut last_seq = None;
    let mut kept = Vec::new();
    let wait = Duration::from_millis(idle_ms.unwrap_or(3_600_000));
    let end = loop {
        if count.is_some_and(|c| packets >= c) {
            break "count";
        }
        match sub.recv_timeout(wait)? {
            Received::Batch(batch) => {
                batches += 1;
                lost += batch.lost();
                reconnects += u64::from(batch.reconnected());
                if last_seq.is_some_and(|s| batch.seq() <= s) && !batch.reconnected() {
                    seqs_ordered = false;
                }
                last_seq = Some(batch.seq());
                packets += batch.len() as u64;
                if out.is_some() {
                    kept.extend(batch.iter().map(|p| p.to_packet()));
                }
                if slow_us > 0 {
                    std::thread::sleep(Duration::from_micros(slow_us));
                }
            }
            Received::Timeout => break "idle",
            Received::End => break "end",
        }
    };
    write_kept(out, &kept)?;
    let summary = serde_json::json!({
        "packets": packets,
        "batches": batches,
        "lost_batches": lost,
        "reconnects": reconnects,
        "seqs_ordered": seqs_ordered,
        "end": end,
    });
    println!("{summary}");
    Ok(())
}

fn attack(how: Attack) -> AnyResult {
    use packet_ipc::broker::testing::attack;
    let options = ConnectOptions::default();
    let summary = match how {
        Attack::Flood {
            server,
            requests,
            hold_ms,
        } => {
            let spools = attack::spools(&options, &server)?;
            let control = attack::flood(&spools[0], requests / 2)?;
            let subscribers = attack::flood(&spools[2], requests - requests / 2)?;
            eprintln!("flooded");
            std::thread::sleep(Duration::from_millis(hold_ms));
            serde_json::json!({ "written": control.written + subscribers.written })
        }
        Attack::Swap { server, ms } => {
            let until = Instant::now() + Duration::from_millis(ms);
            let spools = attack::spools(&options, &server)?;
            eprintln!("swapping");
            let swaps: Vec<std::thread::JoinHandle<u64>> = spools
                .into_iter()
                .map(|dir| {
                    std::thread::spawn(move || attack::swap_requests(&dir, until).unwrap_or(0))
                })
                .collect();
            let swaps: u64 = swaps.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            serde_json::json!({ "swaps": swaps })
        }
        Attack::Impersonate { server, ms } => {
            let until = Instant::now() + Duration::from_millis(ms);
            let spools = attack::spools(&options, &server)?;
            eprintln!("impersonating");
            serde_json::json!({ "connected": attack::impersonate(&spools, until)? })
        }
    };
    println!("{summary}");
    Ok(())
}

/// Writes the packets a client kept into `out`, as one batch.
fn write_kept(out: Option<PathBuf>, kept: &[Packet]) -> AnyResult {
    if let Some(path) = out {
        let mut buf = Vec::new();
        packet_ipc::batch::encode(kept, 0, 0, &mut buf)?;
        std::fs::write(path, buf)?;
    }
    Ok(())
}
