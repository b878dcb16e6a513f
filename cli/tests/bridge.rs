//! `packet-ipc bridge export|import` against a real `nats-server -js` (Debian package
//! `nats-server`), started by each test on a free port with a store directory of its own
//! and killed at the end; two `packet-ipcd` daemons in two runtime directories stand for
//! two hosts. Without nats-server each test says it is skipped and passes, unless
//! `PACKET_IPC_REQUIRE_TOOLS=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, wait_output, wait_stderr_line, Daemon, Stderr, DEADLINE};

/// The capture the tests publish, and its packet count.
const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/loopback-udp.pcap"
);
const CAPTURE_PACKETS: u64 = 38;

/// The daemons' configuration: `tap.0` (Ethernet, lossless: the exporter paces the
/// producer), `copy` (Ethernet, for replays) and `raw` (another link type).
const CONFIG: &str = r#"
[servers."tap.0"]
linktype = 1
snaplen = 65535
overflow = "block"
queue-depth = 64

[servers.copy]
linktype = 1
snaplen = 65535
overflow = "block"

[servers.raw]
linktype = 101
"#;

/// True when nats-server can be run; otherwise says the test is skipped (or fails it
/// under `PACKET_IPC_REQUIRE_TOOLS=1`).
fn have_nats(what: &str) -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("PACKET_IPC_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{what}: needs nats-server (apt-get install nats-server)"
        );
        eprintln!("skipped: {what}: needs nats-server (apt-get install nats-server)");
    }
    found
}

/// A `nats-server -js` on 127.0.0.1, killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    max_payload: Option<usize>,
    /// More arguments for nats-server.
    extra: Vec<String>,
}

impl Nats {
    fn start(max_payload: Option<usize>) -> Nats {
        Nats::start_with(max_payload, &[])
    }

    fn start_with(max_payload: Option<usize>, extra: &[&str]) -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("nats")
            .tempdir_in("/tmp")
            .expect("a store directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats {
            child: None,
            port,
            dir,
            max_payload,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("store");
        let mut cmd = Command::new("nats-server");
        if let Some(max) = self.max_payload {
            let conf = self.dir.path().join("nats.conf");
            std::fs::write(&conf, format!("max_payload: {max}\n")).expect("write nats.conf");
            cmd.arg("-c").arg(conf);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log");
        let child = cmd
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "nats-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new server on the same port and store.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `packet-ipc` process under test, killed on drop (a failed test leaves none behind).
struct Proc {
    child: Option<Child>,
    stderr: Option<Stderr>,
}

impl Proc {
    /// Takes the child and its stderr, no longer killed on drop.
    fn take(mut self) -> (Child, Stderr) {
        (
            self.child.take().expect("running"),
            self.stderr.take().expect("stderr"),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(stderr) = self.stderr.take() {
                eprintln!("killed a packet-ipc process; its stderr: {}", stderr.text());
            }
        }
    }
}

/// `packet-ipc bridge ARGS` against a daemon, stdout and stderr piped; waits for `ready`
/// on stderr.
fn bridge(daemon: &Daemon, args: &[&str], ready: &str) -> Proc {
    let mut child = daemon
        .cli()
        .arg("bridge")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc bridge");
    let stderr = wait_stderr_line(&mut child, ready);
    Proc {
        child: Some(child),
        stderr: Some(stderr),
    }
}

/// Stops a bridge with SIGINT; it must exit 0 with a JSON summary.
fn stop(proc: Proc) -> serde_json::Value {
    let (child, stderr) = proc.take();
    util::signal(&child, libc::SIGINT);
    let out = wait_output(child, DEADLINE);
    let text = stderr.text();
    assert!(out.status.success(), "bridge exit {:?}: {text}", out.status);
    let summary = util::summary(&out);
    eprintln!("bridge summary: {summary}\nbridge stderr: {text}");
    summary
}

/// `packet-ipc subscribe SERVER --write FILE --count N`, once subscribed.
fn subscribe(daemon: &Daemon, server: &str, file: &Path, count: u64) -> Proc {
    let mut child = daemon
        .cli()
        .args([
            "subscribe",
            server,
            "--count",
            &count.to_string(),
            "--write",
        ])
        .arg(file)
        .args(["--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc subscribe");
    let stderr = wait_stderr_line(&mut child, &format!("subscribed to {server}"));
    Proc {
        child: Some(child),
        stderr: Some(stderr),
    }
}

/// Waits for a subscriber to receive its count.
fn finish(proc: Proc, limit: Duration) {
    let (child, stderr) = proc.take();
    let out = wait_output(child, limit);
    let text = stderr.text();
    assert!(out.status.success(), "subscribe: {text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(end: count)"),
        "subscribe ended early: {stdout} {text}"
    );
}

/// `packet-ipc publish SERVER CAPTURE ARGS` to completion.
fn publish(daemon: &Daemon, server: &str, args: &[&str]) {
    let out = daemon
        .cli()
        .args(["publish", server, CAPTURE])
        .args(args)
        .output()
        .expect("run packet-ipc publish");
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pcap record: timestamp in nanoseconds, original length, bytes.
type Record = (u64, u32, Vec<u8>);

/// The records of a pcap file (microsecond or nanosecond, either byte order).
fn records(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).expect("read pcap");
    assert!(bytes.len() >= 24, "{} has no pcap header", path.display());
    let magic_le = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let magic_be = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
    let (le, nanos) = match (magic_le, magic_be) {
        (0xa1b2_c3d4, _) => (true, false),
        (0xa1b2_3c4d, _) => (true, true),
        (_, 0xa1b2_c3d4) => (false, false),
        (_, 0xa1b2_3c4d) => (false, true),
        _ => panic!("{} is not a pcap", path.display()),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let secs = u64::from(u32_at(at));
        let frac = u64::from(u32_at(at + 4));
        let caplen = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12);
        let ts = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        out.push((ts, orig, bytes[at + 16..at + 16 + caplen].to_vec()));
        at += 16 + caplen;
    }
    out
}

/// The capture `loops` times over.
fn expected(loops: u64) -> Vec<Record> {
    let one = records(Path::new(CAPTURE));
    assert_eq!(one.len() as u64, CAPTURE_PACKETS);
    (0..loops).flat_map(|_| one.clone()).collect()
}

/// Asserts two captures hold the same records, in order.
fn assert_same(got: &[Record], want: &[Record]) {
    assert_eq!(got.len(), want.len(), "record count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "record {i} differs: {:?} vs {:?}",
            (g.0, g.1, g.2.len()),
            (w.0, w.1, w.2.len())
        );
    }
}

/// Two hosts: daemon A (the capture side) and daemon B.
fn hosts() -> (Daemon, Daemon) {
    (Daemon::start(Some(CONFIG)), Daemon::start(Some(CONFIG)))
}

fn out_file(daemon: &Daemon, name: &str) -> PathBuf {
    daemon.runtime().join(name)
}

#[test]
fn bridge_carries_a_capture_between_two_daemons() {
    if !have_nats("bridge between two daemons") {
        return;
    }
    let nats = Nats::start(None);
    let url = nats.url();
    let (a, b) = hosts();
    let loops = 100;
    let import = bridge(
        &b,
        &["import", "tap.0", "--nats", &url, "--json"],
        "importing packet-ipc.tap_2E0 from",
    );
    let out = out_file(&b, "out.pcap");
    let sub = subscribe(&b, "tap.0", &out, loops * CAPTURE_PACKETS);
    let export = bridge(
        &a,
        &["export", "tap.0", "--nats", &url, "--json"],
        &format!("exporting tap.0 to {url} as packet-ipc.tap_2E0"),
    );
    publish(&a, "tap.0", &["--loop", &loops.to_string()]);
    finish(sub, DEADLINE);
    assert_same(&records(&out), &expected(loops));

    let exported = stop(export);
    let imported = stop(import);
    let packets = loops * CAPTURE_PACKETS;
    assert_eq!(exported["packets"], packets);
    assert_eq!(exported["cut_packets"], 0);
    assert_eq!(exported["lost_batches"], 0);
    assert_eq!(imported["packets"], packets);
    assert_eq!(imported["bytes"], exported["bytes"]);
    assert_eq!(imported["last_sequence"], exported["last_sequence"]);
    assert_eq!(imported["gaps"], 0);
    assert_eq!(imported["missed_messages"], 0);
}

#[test]
fn bridge_survives_a_nats_crash_and_replays() {
    if !have_nats("bridge across a nats-server crash") {
        return;
    }
    let mut nats = Nats::start(None);
    let url = nats.url();
    let (a, b) = hosts();
    let loops: u64 = 150;
    let packets = loops * CAPTURE_PACKETS;
    let import = bridge(
        &b,
        &["import", "tap.0", "--nats", &url, "--json"],
        "importing",
    );
    let out = out_file(&b, "out.pcap");
    let sub = subscribe(&b, "tap.0", &out, packets);
    let export = bridge(
        &a,
        &["export", "tap.0", "--nats", &url, "--json"],
        "exporting",
    );
    // About 4 s of packets; NATS dies a second in, for a second.
    let publisher = {
        let mut cmd = a.cli();
        cmd.args([
            "publish",
            "tap.0",
            CAPTURE,
            "--loop",
            &loops.to_string(),
            "--rate",
            "1500",
        ]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().expect("start publish")
    };
    thread::sleep(Duration::from_secs(1));
    nats.kill();
    thread::sleep(Duration::from_secs(1));
    nats.restart();
    let published = wait_output(publisher, DEADLINE * 2);
    assert!(
        published.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    finish(sub, DEADLINE * 2);
    assert_same(&records(&out), &expected(loops));
    let exported = stop(export);
    let imported = stop(import);
    assert_eq!(exported["packets"], packets);
    assert_eq!(imported["packets"], packets);
    assert_eq!(imported["gaps"], 0);

    // Replay: the whole stream again, into another server, from the start.
    let replay = out_file(&b, "replay.pcap");
    let sub = subscribe(&b, "copy", &replay, packets);
    let import = bridge(
        &b,
        &[
            "import",
            "copy",
            "--nats",
            &url,
            "--subject",
            "packet-ipc.tap_2E0",
            "--deliver",
            "all",
            "--durable",
            "other",
            "--json",
        ],
        "importing",
    );
    finish(sub, DEADLINE);
    assert_same(&records(&replay), &expected(loops));
    let replayed = stop(import);
    assert_eq!(replayed["packets"], packets);
    assert_eq!(replayed["gaps"], 0);
}

#[test]
fn bridge_cuts_batches_to_max_payload() {
    if !have_nats("bridge with a small max_payload") {
        return;
    }
    let nats = Nats::start(Some(64 * 1024));
    let url = nats.url();
    let (a, b) = hosts();
    let loops = 20;
    let import = bridge(
        &b,
        &["import", "tap.0", "--nats", &url, "--json"],
        "importing",
    );
    let out = out_file(&b, "out.pcap");
    let sub = subscribe(&b, "tap.0", &out, loops * CAPTURE_PACKETS);
    let export = bridge(
        &a,
        &["export", "tap.0", "--nats", &url, "--json"],
        "exporting",
    );
    // 256-packet batches of about 1 kB packets: about 4 messages each.
    publish(
        &a,
        "tap.0",
        &["--loop", &loops.to_string(), "--batch", "256"],
    );
    finish(sub, DEADLINE);
    assert_same(&records(&out), &expected(loops));
    let exported = stop(export);
    let imported = stop(import);
    assert_eq!(exported["max_payload"], 64 * 1024);
    let (batches, messages) = (
        exported["batches"].as_u64().unwrap(),
        exported["messages"].as_u64().unwrap(),
    );
    assert!(
        messages > batches,
        "{messages} messages for {batches} batches"
    );
    assert_eq!(exported["cut_packets"], 0);
    assert_eq!(imported["batches"], messages);
    assert_eq!(imported["packets"], loops * CAPTURE_PACKETS);
}

#[test]
fn bridge_import_refuses_another_link_type() {
    if !have_nats("bridge link type check") {
        return;
    }
    let nats = Nats::start(None);
    let url = nats.url();
    let (a, b) = hosts();
    let export = bridge(
        &a,
        &["export", "tap.0", "--nats", &url, "--json"],
        "exporting",
    );
    publish(&a, "tap.0", &[]);
    // Time for the export to have it stored.
    thread::sleep(Duration::from_secs(2));
    let exported = stop(export);
    assert_eq!(exported["packets"], CAPTURE_PACKETS);
    let out = b
        .cli()
        .args([
            "bridge",
            "import",
            "raw",
            "--nats",
            &url,
            "--subject",
            "packet-ipc.tap_2E0",
            "--deliver",
            "all",
        ])
        .output()
        .expect("run bridge import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "stderr: {stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("packet-ipc: message 1 on packet-ipc.tap_2E0 has link type")
            && last.contains("server raw takes link type"),
        "stderr: {stderr}"
    );
}

#[test]
fn bridge_import_reports_messages_aged_out_while_it_was_away() {
    if !have_nats("bridge gap report") {
        return;
    }
    let nats = Nats::start(None);
    let url = nats.url();
    let (a, b) = hosts();
    // A stream of its own, for this subject only, that keeps about 6 one-batch messages.
    let export = bridge(
        &a,
        &[
            "export",
            "tap.0",
            "--nats",
            &url,
            "--stream",
            "GAPS",
            "--subject",
            "gaps.tap",
            "--max-bytes",
            "256K",
            "--json",
        ],
        "exporting",
    );
    let import_args = [
        "import",
        "tap.0",
        "--nats",
        &url,
        "--stream",
        "GAPS",
        "--subject",
        "gaps.tap",
        "--durable",
        "away",
        "--json",
    ];
    let import = bridge(&b, &import_args, "importing");
    let out = out_file(&b, "first.pcap");
    let sub = subscribe(&b, "tap.0", &out, CAPTURE_PACKETS);
    publish(&a, "tap.0", &[]);
    finish(sub, DEADLINE);
    let first = stop(import);
    assert_eq!(first["batches"], 1);

    // While the import is away: 20 messages of about 40 kB each.
    publish(
        &a,
        "tap.0",
        &["--loop", "20", "--batch", &CAPTURE_PACKETS.to_string()],
    );
    thread::sleep(Duration::from_secs(2));
    let exported = stop(export);
    assert_eq!(exported["messages"], 21);

    let import = bridge(&b, &import_args, "importing");
    thread::sleep(Duration::from_secs(3));
    let (child, stderr) = import.take();
    util::signal(&child, libc::SIGINT);
    let out = wait_output(child, DEADLINE);
    let text = stderr.text();
    assert!(out.status.success(), "{text}");
    let again = util::summary(&out);
    let (batches, missed) = (
        again["batches"].as_u64().unwrap(),
        again["missed_messages"].as_u64().unwrap(),
    );
    assert!(batches > 0 && batches < 20, "{again}");
    assert_eq!(batches + missed, 20, "{again}");
    assert_eq!(again["gaps"], 1, "{again}");
    assert_eq!(again["packets"], batches * CAPTURE_PACKETS);
    assert!(
        text.contains(&format!(
            "packet-ipc: warning: gap: up to {missed} messages after stream sequence 1"
        )),
        "{text}"
    );

    // A new consumer for the last 3 messages gets exactly those.
    let out = out_file(&b, "last.pcap");
    let sub = subscribe(&b, "copy", &out, 3 * CAPTURE_PACKETS);
    let tail = bridge(
        &b,
        &[
            "import",
            "copy",
            "--nats",
            &url,
            "--stream",
            "GAPS",
            "--subject",
            "gaps.tap",
            "--durable",
            "tail",
            "--deliver",
            "last:3",
            "--json",
        ],
        "importing",
    );
    finish(sub, DEADLINE);
    let last = stop(tail);
    assert_eq!(last["batches"], 3, "{last}");
    assert_eq!(last["gaps"], 0, "{last}");
    assert_same(&records(&out), &expected(3));
}

#[test]
fn bridge_logs_in_with_the_password_in_the_url() {
    if !have_nats("bridge with a user and password") {
        return;
    }
    let nats = Nats::start_with(None, &["--user", "alice", "--pass", "s3cret"]);
    let (a, _) = hosts();
    let good = format!("nats://alice:s3cret@127.0.0.1:{}", nats.port);
    // Ready, and the password is not printed.
    let export = bridge(
        &a,
        &["export", "tap.0", "--nats", &good, "--json"],
        &format!(
            "exporting tap.0 to nats://alice:***@127.0.0.1:{} as packet-ipc.tap_2E0",
            nats.port
        ),
    );
    publish(&a, "tap.0", &[]);
    thread::sleep(Duration::from_secs(1));
    let exported = stop(export);
    assert_eq!(exported["packets"], CAPTURE_PACKETS);

    let bad = format!("nats://alice:wrong@127.0.0.1:{}", nats.port);
    let out = a
        .cli()
        .args(["bridge", "export", "tap.0", "--nats", &bad])
        .output()
        .expect("run bridge export");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.starts_with("packet-ipc: cannot connect to NATS at nats://alice:***@"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A CA, and a server and a client certificate it signed (openssl), in `dir`.
fn certificates(dir: &Path) -> bool {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ok = openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=packet-ipc test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!(
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .expect("write an extension file");
        ok =
            ok && openssl(
                &[
                    &["req"],
                    &ec[..],
                    &[
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        "/CN=127.0.0.1",
                    ],
                ]
                .concat(),
            ) && openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
    }
    ok
}

#[test]
fn bridge_over_mutual_tls() {
    if !have_nats("bridge over TLS") {
        return;
    }
    let certs = tempfile::tempdir().expect("a directory");
    if !certificates(certs.path()) {
        assert!(
            std::env::var("PACKET_IPC_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "bridge over TLS: needs openssl"
        );
        eprintln!("skipped: bridge over TLS: needs openssl (apt-get install openssl)");
        return;
    }
    let path = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let nats = Nats::start_with(
        None,
        &[
            "--tlscert",
            &path("server.pem"),
            "--tlskey",
            &path("server.key"),
            "--tlscacert",
            &path("ca.pem"),
            "--tlsverify",
        ],
    );
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let (a, b) = hosts();
    let tls = [
        "--tls-ca",
        &path("ca.pem"),
        "--tls-cert",
        &path("client.pem"),
        "--tls-key",
        &path("client.key"),
    ];
    let import = bridge(
        &b,
        &[&["import", "tap.0", "--nats", &url, "--json"], &tls[..]].concat(),
        "importing",
    );
    let out = out_file(&b, "out.pcap");
    let sub = subscribe(&b, "tap.0", &out, 2 * CAPTURE_PACKETS);
    let export = bridge(
        &a,
        &[&["export", "tap.0", "--nats", &url, "--json"], &tls[..]].concat(),
        "exporting",
    );
    publish(&a, "tap.0", &["--loop", "2"]);
    finish(sub, DEADLINE);
    assert_same(&records(&out), &expected(2));
    stop(export);
    stop(import);

    // Without a client certificate the server refuses the connection.
    let out = a
        .cli()
        .args([
            "bridge",
            "export",
            "tap.0",
            "--nats",
            &url,
            "--connect-wait",
            "1",
            "--tls-ca",
            &path("ca.pem"),
        ])
        .output()
        .expect("run bridge export");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bridge_import_of_an_unknown_server_fails_at_once() {
    let daemon = Daemon::start(Some(CONFIG));
    // No NATS needed: the server is looked up first.
    let out = daemon
        .cli()
        .args(["bridge", "import", "nope", "--nats", "nats://127.0.0.1:1"])
        .output()
        .expect("run bridge import");
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("packet-ipc: unknown server \"nope\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bridge_export_without_nats_gives_up_after_its_wait() {
    let daemon = Daemon::start(Some(CONFIG));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = daemon
        .cli()
        .args([
            "bridge",
            "export",
            "tap.0",
            "--nats",
            &url,
            "--connect-wait",
            "1",
        ])
        .output()
        .expect("run bridge export");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.starts_with(&format!("packet-ipc: cannot reach NATS at {url}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
