//! `packet-ipc bridge export|import`: a server's batches to NATS JetStream and back, so
//! that a capture crosses hosts and can be replayed later.
//!
//! No network protocol of our own: JetStream does delivery, persistence, retention and
//! clustering. A NATS message is one batch in the format of [`packet_ipc::batch`] (cut to
//! the server's `max_payload` when needed), described by the headers below.
//!
//! - `export.rs`: a subscriber of a local server that publishes to JetStream.
//! - `import.rs`: a durable pull consumer that hands its messages to a local producer, in
//!   order, skipping duplicates and reporting gaps.
//! - `nats.rs`: connection, authentication and TLS options, stream setup.
//!
//! The async-nats client runs on a tokio runtime inside the command; the library's
//! blocking calls (`Subscriber::recv_timeout`, `Producer::send`) run on a thread of their
//! own.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::{exit, parse_seconds, Failure, Outcome};

mod export;
mod import;
mod nats;

/// Header: the pcap link type of the packets (decimal).
pub const H_LINKTYPE: &str = "Packet-Ipc-Linktype";
/// Header: the snap length of the source server (decimal).
pub const H_SNAPLEN: &str = "Packet-Ipc-Snaplen";
/// Header: the host name of the exporter.
pub const H_HOST: &str = "Packet-Ipc-Host";
/// Header: the name of the source server.
pub const H_SERVER: &str = "Packet-Ipc-Server";
/// Header: the source server's sequence number of the batch the packets came in.
pub const H_BATCH_SEQ: &str = "Packet-Ipc-Batch-Seq";
/// Header: `i/n`, this message is part `i` of the `n` a batch was cut into.
pub const H_PART: &str = "Packet-Ipc-Part";
/// Header: the exporter's epoch (its start, nanoseconds since 1970): with the host and
/// server, the identity of a sequence of bridge messages.
pub const H_EPOCH: &str = "Packet-Ipc-Epoch";
/// Header: the exporter's sequence number of the message in its epoch, from 1, no holes.
pub const H_BRIDGE_SEQ: &str = "Packet-Ipc-Bridge-Seq";
/// Header: the number of packets in the message.
pub const H_PACKETS: &str = "Packet-Ipc-Packets";
/// Header: batches the exporter lost (its server's overflow policy) just before this one.
pub const H_LOST: &str = "Packet-Ipc-Lost";
/// Header: packets of this message whose captured bytes were cut to fit `max_payload`.
pub const H_CUT: &str = "Packet-Ipc-Cut";

/// The default stream and the subjects it is created over.
pub const DEFAULT_STREAM: &str = "PACKET_IPC";
/// The prefix of the default subjects.
pub const SUBJECT_PREFIX: &str = "packet-ipc";

/// `bridge` arguments.
#[derive(Args)]
pub struct BridgeArgs {
    #[command(subcommand)]
    command: BridgeCmd,
}

#[derive(Subcommand)]
enum BridgeCmd {
    /// Publish the batches of a local server to NATS JetStream.
    Export(export::ExportArgs),
    /// Publish the messages of a JetStream subject into a local server.
    Import(import::ImportArgs),
}

/// Runs `bridge export` or `bridge import`.
pub fn run(args: BridgeArgs) -> Outcome {
    match args.command {
        BridgeCmd::Export(a) => export::run(a),
        BridgeCmd::Import(a) => import::run(a),
    }
}

/// Where and how to reach NATS, shared by both directions.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// The NATS server: `nats://[USER:PASSWORD@]HOST[:PORT]`, `tls://...`; several
    /// separated by commas.
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The JetStream stream [default: PACKET_IPC, over `packet-ipc.>`].
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    /// The subject [default: `packet-ipc.<SERVER>`, the name escaped].
    #[arg(long, value_name = "SUBJ")]
    subject: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    creds: Option<PathBuf>,
    /// Trust this CA (PEM) for the server's certificate; implies TLS.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), with --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long to keep trying to reach NATS (and its stream) at start before giving up
    /// with exit code 69 [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    connect_wait: Option<Duration>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl NatsArgs {
    /// The subject for `server`: `--subject`, else `packet-ipc.<escaped server>`.
    pub fn subject_for(&self, server: &str) -> String {
        self.subject
            .clone()
            .unwrap_or_else(|| default_subject(server))
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        self.stream.as_deref().unwrap_or(DEFAULT_STREAM)
    }

    /// The bounded wait at start.
    pub fn connect_wait(&self) -> Duration {
        self.connect_wait.unwrap_or(Duration::from_secs(30))
    }
}

/// The default subject of a server: `packet-ipc.` and the server's name as one token,
/// escaped with [`escape_token`].
pub fn default_subject(server: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}", escape_token(server))
}

/// A server name as one NATS subject token (or consumer name): every byte that is not
/// allowed or not safe there — `.`, `*`, `>`, `/`, `\\`, `%`, whitespace, control and
/// non-ASCII bytes — becomes `_XX` (two upper-case hex digits, the byte's value), and so
/// does a `_` that two such digits follow (so that the mapping stays one to one): `lo.0`
/// → `lo_2E0`, `a_1F` → `a_5F1F`, `tap_0` stays `tap_0`. (`%` is escaped because
/// nats-server 2.9 takes it for a format directive in a consumer's acknowledgement
/// subject.) An empty name, which no server has, becomes `_00`.
pub fn escape_token(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    for (i, &b) in bytes.iter().enumerate() {
        let hex = |k: usize| {
            bytes
                .get(k)
                .is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
        };
        let unsafe_byte =
            !b.is_ascii_graphic() || matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\' | b'%');
        if unsafe_byte || (b == b'_' && hex(i + 1) && hex(i + 2)) {
            out.push_str(&format!("_{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    if out.is_empty() {
        out.push_str("_00");
    }
    out
}

/// Parses a size: plain bytes, or with a `K`, `M`, `G` or `T` suffix (powers of 1024; a
/// trailing `B` or `iB` is allowed): `512M`, `2G`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: unknown size suffix {c:?} (K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 512M, 2G, 1048576)"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{text:?}: a size must be above 0"));
    }
    Ok(bytes)
}

/// Parses an age: a number and a unit, `s`, `m`, `h` or `d`: `30s`, `10m`, `2h`, `1d`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not an age (like 30s, 10m, 2h, 1d)");
    let (digits, unit) = t.split_at(t.len().saturating_sub(1));
    let secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?}: an age must be above 0"));
    }
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// This host's name (`/proc/sys/kernel/hostname`), for the headers and message ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A tokio runtime for one command: one thread for the NATS client and the command's
/// tasks; the library's blocking calls get threads of their own.
pub fn runtime() -> Outcome<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot start a runtime: {e}")))
}

/// The progress line: rewritten in place once a second on a terminal, nothing otherwise.
pub struct Status {
    live: bool,
    shown: bool,
}

impl Status {
    /// A status line on stderr when it is a terminal.
    pub fn new() -> Status {
        Status {
            live: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Replaces the line with `text`.
    pub fn show(&mut self, text: &str) {
        if self.live {
            eprint!("\r\x1b[2K{text}");
            self.shown = true;
        }
    }

    /// Prints a line of its own (a warning) above the status line.
    pub fn line(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }

    /// Removes the line.
    pub fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Prints a line on stderr, first clearing a status line there may be on a terminal.
pub fn warn(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\r\x1b[2K{text}");
    } else {
        eprintln!("{text}");
    }
}

/// Reads a header as a number.
pub fn header_u64(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().trim().parse().ok()
}

/// Reads a header as text.
pub fn header_str<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_become_one_subject_token() {
        assert_eq!(escape_token("default"), "default");
        assert_eq!(escape_token("eth0_tap-1"), "eth0_tap-1");
        assert_eq!(escape_token("lo.0"), "lo_2E0");
        assert_eq!(escape_token("a*b>c"), "a_2Ab_3Ec");
        assert_eq!(escape_token("a b\tc"), "a_20b_09c");
        assert_eq!(escape_token("50%"), "50_25");
        assert_eq!(escape_token("a/b\\c"), "a_2Fb_5Cc");
        assert_eq!(escape_token("é"), "_C3_A9");
        assert_eq!(escape_token(""), "_00");
        // One to one: an escape in the name is escaped again.
        assert_eq!(escape_token("lo_2E0"), "lo_5F2E0");
        assert_ne!(escape_token("lo_2E0"), escape_token("lo.0"));
        assert_eq!(escape_token("a_2"), "a_2");
        assert_eq!(escape_token("a_2g"), "a_2g");
        assert_eq!(default_subject("lo.0"), "packet-ipc.lo_2E0");
        for name in ["x.y", "a b", "*", ">", "%", "tap.0 *>"] {
            let token = escape_token(name);
            assert!(!token.contains(['.', '*', '>', ' ', '\t', '%']), "{token}");
        }
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_age("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_age("10").is_err());
        assert!(parse_age("0s").is_err());
        assert!(parse_age("1w").is_err());
    }
}
