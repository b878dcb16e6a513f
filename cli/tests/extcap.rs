//! `packet-ipc-extcap`, the servers as Wireshark capture interfaces: the extcap sentences
//! it prints, its capture into a fifo, and tshark (package `tshark`) using it from its
//! global extcap folder, compared with the published capture and with tcpdump.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{assert_same_capture, loopback_pcap, publish, run_json, LOOPBACK_PACKETS};
use crate::util::{self, wait_output, Daemon, DEADLINE};

fn extcap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_packet-ipc-extcap")
}

/// `packet-ipc-extcap ARGS` against `daemon`, to completion.
fn extcap(daemon: &Daemon, args: &[&str]) -> Output {
    let child = daemon
        .command(extcap_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc-extcap");
    wait_output(child, DEADLINE)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when libpcap can be loaded (filters need it), else the tools rule.
fn have_libpcap(what: &str) -> bool {
    if packet_ipc::libpcap::version().is_ok() {
        return true;
    }
    let message = format!("{what}: needs libpcap (apt-get install libpcap0.8)");
    assert!(
        std::env::var_os("PACKET_IPC_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
        "{message}, and PACKET_IPC_REQUIRE_TOOLS=1"
    );
    eprintln!("skipped: {message}");
    false
}

#[test]
fn extcap_lists_interfaces_link_types_and_options() {
    let daemon = Daemon::start(Some(
        "[servers.eth]\nlinktype = 1\nsnaplen = 1500\n\n\
         [servers.wifi]\nlinktype = 105\nsnaplen = 4096\n",
    ));
    let out = extcap(&daemon, &["--extcap-interfaces", "--extcap-version=4.0"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("extcap {version=") && lines[0].contains("{help="),
        "{text}"
    );
    assert_eq!(
        &lines[1..],
        [
            "interface {value=packet-ipc-eth}{display=packet-ipc: eth}",
            "interface {value=packet-ipc-wifi}{display=packet-ipc: wifi}",
        ]
    );

    let out = extcap(
        &daemon,
        &["--extcap-interface", "packet-ipc-wifi", "--extcap-dlts"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("dlt {number=105}{name=IEEE802_11}{display="),
        "{out:?}"
    );
    let out = extcap(
        &daemon,
        &["--extcap-interface", "packet-ipc-nope", "--extcap-dlts"],
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown server \"nope\""));

    let out = extcap(
        &daemon,
        &["--extcap-interface", "packet-ipc-eth", "--extcap-config"],
    );
    assert!(out.status.success(), "{out:?}");
    let config = stdout(&out);
    for call in ["{call=--group}", "{call=--reconnect-wait}", "{call=--wait}"] {
        assert!(config.contains(call), "{call}: {config}");
    }

    // Without a daemon: no interface, a word on stderr, and success (tshark -D goes on).
    let empty = tempfile::tempdir().unwrap();
    let out = wait_output(
        Command::new(extcap_bin())
            .arg("--extcap-interfaces")
            .env("PACKET_IPC_RUNTIME_DIR", empty.path())
            .env_remove("PACKET_IPC_RENDEZVOUS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        DEADLINE,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).lines().count(), 1, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no packet-ipcd"));
}

#[test]
fn extcap_checks_capture_filters_the_way_wireshark_reads_them() {
    if !have_libpcap("capture filter validation") {
        return;
    }
    let daemon = Daemon::start(None);
    let check = |filter: &str| {
        extcap(
            &daemon,
            &[
                "--extcap-interface",
                "packet-ipc-default",
                "--extcap-capture-filter",
                filter,
            ],
        )
    };
    // Valid: nothing on stdout. Invalid: the reason, one line. Both exit 0.
    let out = check("udp and port 53");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let out = check("udp and prot 53");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("invalid filter"), "{text}");

    // In a capture, an invalid filter is an error Wireshark shows (stderr, non-zero).
    let dir = tempfile::tempdir().unwrap();
    let out = extcap(
        &daemon,
        &[
            "--extcap-interface",
            "packet-ipc-default",
            "--capture",
            "--fifo",
            dir.path().join("out.pcap").to_str().unwrap(),
            "--extcap-capture-filter",
            "udp and prot 53",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("packet-ipc-extcap: ") && stderr.contains("invalid filter"),
        "{stderr}"
    );
}

/// mkfifo(3).
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Waits until the server has `n` subscribers.
fn wait_subscribers(daemon: &Daemon, server: &str, n: usize) {
    let start = Instant::now();
    loop {
        let stats = run_json(daemon.cli(), &["stats", server, "--json"]);
        if stats["servers"][0]["subscribers"]
            .as_array()
            .is_some_and(|s| s.len() == n)
        {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "never {n} subscribers: {stats}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a capture of `server` into a new fifo, opens the fifo's reading end, and waits
/// until the extcap is subscribed.
fn capture_into_fifo(daemon: &Daemon, dir: &Path) -> (Child, std::fs::File) {
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let child = daemon
        .command(extcap_bin())
        .args(["--extcap-interface", "packet-ipc-default", "--capture"])
        .arg("--fifo")
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks until the extcap opens the writing end, as Wireshark's does.
    let reader = std::fs::File::open(&fifo).unwrap();
    wait_subscribers(daemon, "default", 1);
    (child, reader)
}

#[test]
fn a_capture_ends_with_0_on_sigterm_and_when_its_reader_goes_away() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();

    // SIGTERM, after the header and a batch were read.
    let (child, mut reader) = capture_into_fifo(&daemon, dir.path());
    let mut header = [0u8; 24];
    reader.read_exact(&mut header).unwrap();
    // Nanosecond pcap, Ethernet, the server's snaplen.
    assert_eq!(&header[..4], &0xa1b2_3c4du32.to_ne_bytes());
    assert_eq!(u32::from_ne_bytes(header[20..24].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_ne_bytes(header[16..20].try_into().unwrap()),
        65535
    );
    publish(&daemon, "default", &loopback_pcap(), &[], LOOPBACK_PACKETS);
    let mut record = [0u8; 16];
    reader.read_exact(&mut record).unwrap();
    util::signal(&child, libc::SIGTERM);
    let out = wait_output(child, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    drop(reader);
    std::fs::remove_file(dir.path().join("fifo")).unwrap();

    // The reader goes while nothing is published: noticed without a write.
    let (child, reader) = capture_into_fifo(&daemon, dir.path());
    drop(reader);
    let out = wait_output(child, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    wait_subscribers(&daemon, "default", 0);
}

/// Links packet-ipc-extcap into tshark's global extcap folder (Debian 12's tshark 4.0
/// reads only that one) for as long as a test holds it: one link per test process,
/// removed when the last holder is done.
struct ExtcapLink {
    path: PathBuf,
}

static LINK_HOLDERS: Mutex<usize> = Mutex::new(0);

impl ExtcapLink {
    /// The link, or None (the test skips) when tshark is missing or the folder cannot be
    /// written (not root).
    fn install(what: &str) -> Option<ExtcapLink> {
        if !util::have_tool(what, "tshark", "tshark") {
            return None;
        }
        let folders = Command::new("tshark")
            .args(["-G", "folders"])
            .output()
            .expect("tshark -G folders");
        let folders = String::from_utf8_lossy(&folders.stdout);
        let dir = folders
            .lines()
            // "Extcap path:" (4.0), "Global Extcap path:" (4.2 and later).
            .find_map(|l| {
                l.strip_prefix("Extcap path:")
                    .or_else(|| l.strip_prefix("Global Extcap path:"))
            })
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|| panic!("no Extcap path in tshark -G folders: {folders}"));
        let path = dir.join(format!("packet-ipc-extcap-test-{}", std::process::id()));
        let mut holders = LINK_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if *holders == 0 {
            let _ = std::fs::remove_file(&path);
            if let Err(e) = std::os::unix::fs::symlink(extcap_bin(), &path) {
                let message = format!(
                    "{what}: needs root, to link packet-ipc-extcap into {} ({e})",
                    dir.display()
                );
                assert!(
                    std::env::var_os("PACKET_IPC_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
                    "{message}, and PACKET_IPC_REQUIRE_TOOLS=1"
                );
                eprintln!("skipped: {message}");
                return None;
            }
        }
        *holders += 1;
        Some(ExtcapLink { path })
    }
}

impl Drop for ExtcapLink {
    fn drop(&mut self) {
        let mut holders = LINK_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        *holders -= 1;
        if *holders == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// tshark with this daemon's runtime directory in its environment (which it passes on to
/// the extcap programs it runs).
fn tshark(daemon: &Daemon) -> Command {
    let mut cmd = daemon.command("tshark");
    cmd.stdin(Stdio::null());
    cmd
}

#[test]
fn tshark_lists_an_interface_per_server() {
    let Some(_link) = ExtcapLink::install("tshark -D") else {
        return;
    };
    let daemon = Daemon::start(Some(
        "[servers.eth]\nlinktype = 1\n\n[servers.wifi]\nlinktype = 105\n\n\
         [servers.lo-capture]\nlinktype = 1\n",
    ));
    let out = wait_output(
        tshark(&daemon)
            .arg("-D")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        DEADLINE,
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for server in ["eth", "wifi", "lo-capture"] {
        let want = format!(". packet-ipc-{server} (packet-ipc: {server})");
        assert!(text.lines().any(|l| l.ends_with(&want)), "{want}: {text}");
    }
}

/// `tshark -i packet-ipc-SERVER -c count -w OUT [args]` running; it exits after `count`
/// packets.
fn tshark_capture(daemon: &Daemon, server: &str, count: usize, out: &Path, args: &[&str]) -> Child {
    let child = tshark(daemon)
        .args([
            "-i",
            &format!("packet-ipc-{server}"),
            "-c",
            &count.to_string(),
        ])
        .args(args)
        .arg("-w")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tshark");
    wait_subscribers(daemon, server, 1);
    child
}

#[test]
fn tshark_captures_what_a_producer_publishes() {
    let Some(_link) = ExtcapLink::install("tshark -i packet-ipc-SERVER") else {
        return;
    };
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("captured.pcapng");
    let tshark = tshark_capture(&daemon, "default", LOOPBACK_PACKETS as usize, &out, &[]);
    publish(
        &daemon,
        "default",
        &loopback_pcap(),
        &["--batch", "7"],
        LOOPBACK_PACKETS,
    );
    let status = wait_output(tshark, DEADLINE);
    assert!(status.status.success(), "{status:?}");
    // Record by record: timestamps to the nanosecond, lengths, bytes.
    assert_same_capture(&out, &loopback_pcap());
    // The extcap ended when tshark stopped it.
    wait_subscribers(&daemon, "default", 0);
}

#[test]
fn a_tshark_capture_filter_selects_what_tcpdump_selects() {
    let Some(_link) = ExtcapLink::install("tshark -f") else {
        return;
    };
    if !util::have_tool("tshark -f", "tcpdump", "tcpdump") || !have_libpcap("tshark -f") {
        return;
    }
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    // Mixed traffic: TCP, UDP, ICMP, ARP, fragments, over IPv4 and IPv6.
    let published = dir.path().join("mixed.pcap");
    let synth = packet_ipc_cli::traffic::mixed(7, 40);
    packet_ipc_cli::traffic::write_pcap(&published, &synth.packets).unwrap();
    let want = dir.path().join("udp.pcap");
    let tcpdump = Command::new("tcpdump")
        .arg("--time-stamp-precision=nano")
        .arg("-r")
        .arg(&published)
        .arg("-w")
        .arg(&want)
        .arg("udp")
        .output()
        .unwrap();
    assert!(tcpdump.status.success(), "{tcpdump:?}");
    let udp = Command::new("tcpdump")
        .arg("-r")
        .arg(&want)
        .output()
        .unwrap()
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(
        udp > 0 && udp < synth.packets.len(),
        "{udp} of {}",
        synth.packets.len()
    );

    let out = dir.path().join("captured.pcapng");
    let tshark = tshark_capture(&daemon, "default", udp, &out, &["-f", "udp"]);
    publish(
        &daemon,
        "default",
        &published,
        &["--batch", "16"],
        synth.packets.len() as u64,
    );
    let status = wait_output(tshark, DEADLINE);
    assert!(status.status.success(), "{status:?}");
    assert_same_capture(&out, &want);
}
