//! `packet-ipc-peer`: a point-to-point peer for demos and tests.
//!
//! - `packet-ipc-peer demo` sends packets from this process to a client process it starts,
//!   and prints what the client received: the point-to-point API end to end.
//! - `packet-ipc-peer client NAME` connects to a server by name, receives until the end of
//!   the stream and prints a JSON summary (and, with `--out`, every packet as one batch file).
//! - `packet-ipc-peer serve` creates a server, prints its name, and sends generated packets
//!   to the client that connects.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use packet_ipc::{AsIpcPacket, Client, ClientOptions, Packet, Server};

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
    /// Create a server, print its name, and send generated packets to its client.
    Serve {
        #[command(flatten)]
        gen: Gen,
        /// Exit abruptly after this many batches, without closing the stream.
        #[arg(long)]
        abort_after: Option<u64>,
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
    if let Some(path) = out {
        let mut buf = Vec::new();
        packet_ipc::batch::encode(&kept, 0, 0, &mut buf)?;
        std::fs::write(path, buf)?;
    }
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
