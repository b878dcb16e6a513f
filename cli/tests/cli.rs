//! The `packet-ipc` tool against a real daemon, checked with real tools: captures made by
//! `tcpdump -i lo`, compared with `tshark` and `capinfos` (package `tshark`, which brings
//! `wireshark-common`; and `tcpdump`).

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, wait_output, wait_stderr_line, Daemon, Stderr, DEADLINE};

/// A capture made with `tcpdump -i lo -w` of UDP datagrams between two local sockets:
/// 38 packets of 42 to 9042 bytes.
pub(crate) fn loopback_pcap() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/loopback-udp.pcap")
}

pub(crate) const LOOPBACK_PACKETS: u64 = 38;

/// Fails the test with a clear message when a tool is missing.
pub(crate) fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed (apt-get install tcpdump tshark)"
    );
    Command::new(name)
}

/// Runs a tool to completion and returns its stdout.
pub(crate) fn run_tool(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tool");
    // Read its output as it comes (a full pipe would stall it), within the deadline.
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = { stdout }.read_to_string(&mut text);
        text
    });
    let out = wait_output(child, DEADLINE);
    let text = reader.join().unwrap();
    assert!(out.status.success(), "{cmd:?} (pid {pid}) failed: {out:?}");
    text
}

/// Every frame as tshark sees it: absolute time to the nanosecond, wire length,
/// captured length, then the summary line and a hex dump of the bytes.
pub(crate) fn frames(path: &Path) -> (Vec<String>, String) {
    let fields = run_tool(tool("tshark").arg("-r").arg(path).args([
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
    ]));
    let dump = run_tool(tool("tshark").arg("-r").arg(path).arg("-x"));
    (fields.lines().map(str::to_owned).collect(), dump)
}

/// `capinfos` facts: packet count, encapsulation, data bytes.
pub(crate) fn capinfos(path: &Path) -> (u64, String, u64) {
    let text = run_tool(tool("capinfos").args(["-M", "-c", "-E", "-d"]).arg(path));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("capinfos printed no {key:?}: {text}"))
    };
    let number = |s: String| -> u64 {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a number: {s}"))
    };
    (
        number(value("Number of packets:")),
        value("File encapsulation:"),
        number(value("Data size:")),
    )
}

/// Asserts two captures hold the same packets: count, link type, lengths, bytes and
/// timestamps, as tshark and capinfos read them.
pub(crate) fn assert_same_capture(got: &Path, want: &Path) {
    let (got_info, want_info) = (capinfos(got), capinfos(want));
    assert_eq!(got_info, want_info, "capinfos of {got:?} and {want:?}");
    let (got_fields, got_dump) = frames(got);
    let (want_fields, want_dump) = frames(want);
    assert_eq!(got_fields.len(), want_fields.len(), "frame count");
    for (i, (g, w)) in got_fields.iter().zip(&want_fields).enumerate() {
        assert_eq!(g, w, "time, length and captured length of frame {}", i + 1);
    }
    assert!(got_dump == want_dump, "tshark -x output differs");
}

/// The JSON document a command printed on stdout.
pub(crate) fn json_stdout(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {text:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `packet-ipc ARGS` to completion.
pub(crate) fn run(mut cmd: Command, args: &[&str]) -> Output {
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc");
    wait_output(child, DEADLINE)
}

/// Runs `packet-ipc ARGS` that must succeed and print JSON.
pub(crate) fn run_json(cmd: Command, args: &[&str]) -> serde_json::Value {
    let out = run(cmd, args);
    assert!(out.status.success(), "packet-ipc {args:?}: {out:?}");
    json_stdout(&out)
}

/// Asserts a command failed with `code` and one line on stderr containing every `words`.
pub(crate) fn assert_error(out: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr:?}");
    assert!(lines[0].starts_with("packet-ipc: "), "{stderr:?}");
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in {stderr:?}");
    }
}

/// Starts `packet-ipc subscribe SERVER ARGS` and waits until it is subscribed; the rest
/// of its stderr is in the `Stderr`.
pub(crate) fn subscribe(daemon: &Daemon, server: &str, args: &[&str]) -> (Child, Stderr) {
    let mut child = daemon
        .cli()
        .arg("subscribe")
        .arg(server)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc subscribe");
    let stderr = wait_stderr_line(&mut child, &format!("subscribed to {server}"));
    (child, stderr)
}

/// Publishes a capture and checks the summary.
pub(crate) fn publish(daemon: &Daemon, server: &str, file: &Path, args: &[&str], packets: u64) {
    let mut all = vec!["publish", server, file.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let summary = run_json(daemon.cli(), &all);
    assert_eq!(summary["packets"], packets, "{summary}");
}

/// Publishes `input` while `subscribe --write` runs, and returns the written file.
fn through_daemon(daemon: &Daemon, server: &str, input: &Path, count: u64, dir: &Path) -> PathBuf {
    let out = dir.join(format!(
        "out-{}.pcap",
        input.file_name().unwrap().to_string_lossy()
    ));
    let (sub, _) = subscribe(
        daemon,
        server,
        &[
            "--write",
            out.to_str().unwrap(),
            "--count",
            &count.to_string(),
            "--json",
        ],
    );
    publish(daemon, server, input, &["--batch", "8"], count);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    assert_eq!(summary["packets"], count, "{summary}");
    assert_eq!(summary["lost_batches"], 0, "{summary}");
    assert_eq!(summary["lost_packets"], 0, "{summary}");
    assert_eq!(summary["end"], "count", "{summary}");
    out
}

fn editcap(args: &[&str], input: &Path, output: &Path) {
    run_tool(tool("editcap").args(args).arg(input).arg(output));
}

#[test]
fn tcpdump_capture_goes_through_identical_as_pcap_nanosecond_pcap_and_pcapng() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let original = loopback_pcap();
    let ng = dir.path().join("capture.pcapng");
    editcap(&["-F", "pcapng"], &original, &ng);
    // Timestamps with nanoseconds (shifted by 123 ns), in nanosecond pcap and in pcapng
    // (if_tsresol 9).
    let nano = dir.path().join("nano.pcap");
    editcap(&["-t", "0.000000123", "-F", "nsecpcap"], &original, &nano);
    let nano_ng = dir.path().join("nano.pcapng");
    editcap(&["-F", "pcapng"], &nano, &nano_ng);
    for (input, want) in [
        (&original, &original),
        (&ng, &original),
        (&nano, &nano),
        (&nano_ng, &nano),
    ] {
        let out = through_daemon(&daemon, "default", input, LOOPBACK_PACKETS, dir.path());
        assert_same_capture(&out, want);
    }
}

#[test]
fn cut_packets_keep_their_original_length_and_the_server_snaplen_cuts_longer_ones() {
    let daemon = Daemon::start(Some("[servers.short]\nlinktype = 1\nsnaplen = 128\n"));
    let dir = tempfile::tempdir().unwrap();
    // A capture cut at 100 bytes by its snaplen (original lengths above it): through a
    // server of snaplen 128 it is unchanged.
    let cut = dir.path().join("cut100.pcap");
    editcap(&["-s", "100"], &loopback_pcap(), &cut);
    let out = through_daemon(&daemon, "short", &cut, LOOPBACK_PACKETS, dir.path());
    let (fields, _) = frames(&out);
    assert_eq!(fields, frames(&cut).0);
    // The full capture (file snaplen 262144) is not refused; its packets come out cut
    // to 128 bytes, original lengths kept: what editcap -s 128 makes of it.
    let out = through_daemon(
        &daemon,
        "short",
        &loopback_pcap(),
        LOOPBACK_PACKETS,
        dir.path(),
    );
    let want = dir.path().join("cut128.pcap");
    editcap(&["-s", "128"], &loopback_pcap(), &want);
    assert_same_capture(&out, &want);
    let snaplen = run_tool(tool("capinfos").args(["-M", "-l"]).arg(&out));
    assert!(snaplen.contains("128"), "{snaplen}");
}

/// The 24-byte header and the records of a pcap file, as bytes.
fn pcap_records(path: &Path) -> (Vec<u8>, Vec<Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    let little = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || bytes[..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let len: [u8; 4] = bytes[at + 8..at + 12].try_into().unwrap();
        let len = if little {
            u32::from_le_bytes(len)
        } else {
            u32::from_be_bytes(len)
        } as usize;
        records.push(bytes[at..at + 16 + len].to_vec());
        at += 16 + len;
    }
    (bytes[..24].to_vec(), records)
}

#[test]
fn a_capture_streamed_on_stdin_is_passed_on_before_it_ends() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("streamed.pcap");
    let (sub, _) = subscribe(
        &daemon,
        "default",
        &["--write", out.to_str().unwrap(), "--count", "3", "--json"],
    );
    let mut publisher = daemon
        .cli()
        .args(["publish", "default", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start publish");
    let (header, records) = pcap_records(&loopback_pcap());
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(&header).unwrap();
    for r in &records[..3] {
        stdin.write_all(r).unwrap();
        stdin.flush().unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    // The stream stays open: the three packets must arrive anyway (idle flush).
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json_stdout(&output)["packets"], 3);
    stdin.write_all(&records[3]).unwrap();
    drop(stdin);
    let output = wait_output(publisher, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json_stdout(&output)["packets"], 4);
    let (n, _, _) = capinfos(&out);
    assert_eq!(n, 3);
}

/// Sends UDP datagrams on the loopback until `until` says stop.
fn udp_traffic(port: u16, stop: Arc<Mutex<bool>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let rx = UdpSocket::bind(("127.0.0.1", port)).expect("bind receiver");
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let mut i = 0usize;
        while !*stop.lock().unwrap() && start.elapsed() < DEADLINE {
            let len = (i * 97) % 1500;
            let _ = tx.send_to(&vec![i as u8; len], ("127.0.0.1", port));
            let mut buf = [0u8; 2048];
            while rx.recv(&mut buf).is_ok() {}
            i += 1;
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// A free UDP port on the loopback.
pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tcpdump -i lo -c COUNT ARGS udp port PORT` while UDP traffic runs; `None` if this
/// machine does not let tcpdump capture (not root, no CAP_NET_RAW).
fn live_tcpdump(
    count: u64,
    args: &[&str],
    stdout: Stdio,
) -> Option<(Child, u16, Arc<Mutex<bool>>)> {
    let port = free_port();
    let mut child = tool("tcpdump")
        .args(["-i", "lo", "-n", "-c", &count.to_string()])
        .args(args)
        .args(["udp", "port", &port.to_string()])
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    // tcpdump says "listening on lo" once it captures, or fails at once.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        match stderr.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => {
                let _ = child.wait();
                eprintln!(
                    "tcpdump cannot capture here, live capture not tested: {}",
                    String::from_utf8_lossy(&seen)
                );
                return None;
            }
        }
    }
    thread::spawn(move || {
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    });
    let stop = Arc::new(Mutex::new(false));
    Some((child, port, stop))
}

#[test]
fn a_live_tcpdump_capture_goes_through_to_a_file_and_through_a_pipe() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    // A capture file made live.
    let live = dir.path().join("live.pcap");
    let Some((tcpdump, port, stop)) =
        live_tcpdump(20, &["-w", live.to_str().unwrap()], Stdio::null())
    else {
        return;
    };
    let traffic = udp_traffic(port, Arc::clone(&stop));
    let out = wait_output(tcpdump, DEADLINE);
    *stop.lock().unwrap() = true;
    traffic.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = through_daemon(&daemon, "default", &live, 20, dir.path());
    assert_same_capture(&got, &live);

    // tcpdump -U -w - | packet-ipc publish default -
    let piped = dir.path().join("piped.pcap");
    let (sub, _) = subscribe(
        &daemon,
        "default",
        &[
            "--write",
            piped.to_str().unwrap(),
            "--count",
            "10",
            "--json",
        ],
    );
    let Some((mut tcpdump, port, stop)) = live_tcpdump(10, &["-U", "-w", "-"], Stdio::piped())
    else {
        return;
    };
    let publisher = daemon
        .cli()
        .args(["publish", "default", "-", "--json"])
        .stdin(Stdio::from(tcpdump.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start publish");
    let traffic = udp_traffic(port, Arc::clone(&stop));
    let sub_out = wait_output(sub, DEADLINE);
    *stop.lock().unwrap() = true;
    traffic.join().unwrap();
    assert!(sub_out.status.success(), "{sub_out:?}");
    assert_eq!(json_stdout(&sub_out)["packets"], 10);
    let _ = wait_output(tcpdump, DEADLINE);
    let pub_out = wait_output(publisher, DEADLINE);
    assert!(pub_out.status.success(), "{pub_out:?}");
    assert_eq!(json_stdout(&pub_out)["packets"], 10);
    assert_eq!(capinfos(&piped).0, 10);
}

#[test]
fn rate_paces_publishing() {
    let daemon = Daemon::start(None);
    // 38 packets x 53 passes = 2014 packets at 1000/s: about 2 s.
    let start = Instant::now();
    let summary = run_json(
        daemon.cli(),
        &[
            "publish",
            "default",
            loopback_pcap().to_str().unwrap(),
            "--rate",
            "1000",
            "--loop",
            "53",
            "--json",
        ],
    );
    let elapsed = start.elapsed();
    assert_eq!(summary["packets"], LOOPBACK_PACKETS * 53);
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_secs(8),
        "2014 packets at 1000/s took {elapsed:?}"
    );
    // No bunching: batches of at most rate/100 packets.
    assert!(
        summary["batches"].as_u64().unwrap() >= 2014 / 10,
        "{summary}"
    );
}

#[test]
fn count_cuts_a_batch_exactly() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seven.pcap");
    let (sub, _) = subscribe(
        &daemon,
        "default",
        &["--write", out.to_str().unwrap(), "--count", "7", "--json"],
    );
    // One batch of all 38 packets.
    publish(&daemon, "default", &loopback_pcap(), &[], LOOPBACK_PACKETS);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json_stdout(&output)["packets"], 7);
    let (fields, _) = frames(&out);
    assert_eq!(fields, frames(&loopback_pcap()).0[..7].to_vec());
}

#[test]
fn subscribe_to_stdout_streams_a_pcap_and_a_signal_ends_it_cleanly() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (mut sub, stderr) = subscribe(&daemon, "default", &["--write", "-", "--json"]);
    let mut stdout = sub.stdout.take().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let got = Arc::clone(&got);
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    publish(
        &daemon,
        "default",
        &loopback_pcap(),
        &["--batch", "5"],
        LOOPBACK_PACKETS,
    );
    // Flushed per batch: everything is on the pipe while the subscriber still runs.
    let want = std::fs::metadata(loopback_pcap()).unwrap().len() as usize;
    let start = Instant::now();
    while got.lock().unwrap().len() < want {
        assert!(
            start.elapsed() < DEADLINE,
            "the pcap never reached the pipe"
        );
        thread::sleep(Duration::from_millis(10));
    }
    util::signal(&sub, libc::SIGTERM);
    let output = wait_output(sub, DEADLINE);
    reader.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    // The summary went to stderr.
    let stderr = stderr.text();
    let last = stderr.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON summary on stderr ({e}): {stderr:?}"));
    assert_eq!(summary["packets"], LOOPBACK_PACKETS);
    assert_eq!(summary["end"], "signal");
    let file = dir.path().join("stdout.pcap");
    std::fs::write(&file, &*got.lock().unwrap()).unwrap();
    assert_same_capture(&file, &loopback_pcap());
}

#[test]
fn ctrl_c_leaves_a_complete_file() {
    let daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("interrupted.pcap");
    let (sub, _) = subscribe(&daemon, "default", &["--write", out.to_str().unwrap()]);
    publish(
        &daemon,
        "default",
        &loopback_pcap(),
        &["--batch", "3"],
        LOOPBACK_PACKETS,
    );
    let want = std::fs::metadata(loopback_pcap()).unwrap().len();
    let start = Instant::now();
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < want {
        assert!(
            start.elapsed() < DEADLINE,
            "the file never got every packet"
        );
        thread::sleep(Duration::from_millis(10));
    }
    util::signal(&sub, libc::SIGINT);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("received 38 packets"), "{text}");
    assert_same_capture(&out, &loopback_pcap());
}

#[test]
fn timeout_and_end_of_stream_are_normal_ends() {
    let daemon = Daemon::start(None);
    let start = Instant::now();
    let summary = run_json(
        daemon.cli(),
        &["subscribe", "default", "--timeout", "0.5", "--json"],
    );
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(summary["end"], "timeout");
    assert_eq!(summary["packets"], 0);

    // The daemon stops and none comes back within the reconnect wait: the end.
    let (sub, _) = subscribe(&daemon, "default", &["--reconnect-wait", "0", "--json"]);
    assert!(daemon.terminate().success());
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json_stdout(&output)["end"], "end");
}

#[test]
fn servers_lists_the_configured_servers() {
    let daemon = Daemon::start(Some(
        "[servers.eth]\nlinktype = 1\nsnaplen = 1500\n\n\
         [servers.wifi]\nlinktype = 105\nsnaplen = 4096\noverflow = \"block\"\n",
    ));
    let list = run_json(daemon.cli(), &["servers", "--json"]);
    let list = list.as_array().expect("a list");
    let mut got: Vec<(String, u64, u64)> = list
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["linktype"].as_u64().unwrap(),
                s["snaplen"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("eth".to_owned(), 1, 1500), ("wifi".to_owned(), 105, 4096)]
    );
    let table = run(daemon.cli(), &["servers"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("wifi") && text.contains("105") && text.contains("block"),
        "{text}"
    );
}

#[test]
fn errors_are_one_line_with_a_sysexits_code() {
    let daemon = Daemon::start(Some(
        "[servers.default]\nlinktype = 1\n\n[servers.wifi]\nlinktype = 105\n",
    ));
    let dir = tempfile::tempdir().unwrap();
    let capture = loopback_pcap();
    let capture = capture.to_str().unwrap();

    // Unknown server: the known ones are listed.
    let out = run(daemon.cli(), &["publish", "nope", capture]);
    assert_error(&out, 69, &["unknown server \"nope\"", "default", "wifi"]);
    let out = run(daemon.cli(), &["subscribe", "nope"]);
    assert_error(&out, 69, &["unknown server \"nope\"", "default, wifi"]);
    let out = run(daemon.cli(), &["stats", "nope"]);
    assert_error(&out, 69, &["unknown server \"nope\""]);

    // A link type the server does not take: refused before anything is sent.
    let out = run(daemon.cli(), &["publish", "wifi", capture]);
    assert_error(&out, 65, &["link type 1", "105", "wifi"]);
    let ng = dir.path().join("c.pcapng");
    editcap(&["-F", "pcapng"], &loopback_pcap(), &ng);
    let out = run(daemon.cli(), &["publish", "wifi", ng.to_str().unwrap()]);
    assert_error(&out, 65, &["link type 1", "105"]);
    let stats = run_json(daemon.cli(), &["stats", "wifi", "--json"]);
    assert_eq!(stats["servers"][0]["packets_in"], 0, "{stats}");

    // A missing file, garbage, a truncated capture.
    let out = run(daemon.cli(), &["publish", "default", "/nonexistent.pcap"]);
    assert_error(&out, 66, &["/nonexistent.pcap"]);
    let garbage = dir.path().join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture at all").unwrap();
    let out = run(
        daemon.cli(),
        &["publish", "default", garbage.to_str().unwrap()],
    );
    assert_error(&out, 65, &["not a pcap or pcapng"]);
    let (header, records) = pcap_records(&loopback_pcap());
    let truncated = dir.path().join("truncated.pcap");
    let mut bytes = header.clone();
    for r in &records[..4] {
        bytes.extend_from_slice(r);
    }
    bytes.extend_from_slice(&records[4][..records[4].len() / 2]);
    std::fs::write(&truncated, &bytes).unwrap();
    let out = run(
        daemon.cli(),
        &["publish", "default", truncated.to_str().unwrap()],
    );
    assert_error(&out, 65, &["record 5"]);
    let cut_ng = dir.path().join("truncated.pcapng");
    let ng_bytes = std::fs::read(&ng).unwrap();
    std::fs::write(&cut_ng, &ng_bytes[..ng_bytes.len() - 7]).unwrap();
    let out = run(
        daemon.cli(),
        &["publish", "default", cut_ng.to_str().unwrap()],
    );
    assert_error(&out, 65, &["block"]);

    // Usage.
    let out = run(daemon.cli(), &["publish", "default"]);
    assert_error(&out, 64, &[]);
    let out = run(daemon.cli(), &["publish", "default", "-", "--loop", "2"]);
    assert_error(&out, 64, &["stdin"]);

    // No daemon where the tool looks.
    let empty = dir.path().join("nodaemon");
    std::fs::create_dir(&empty).unwrap();
    for args in [
        &["servers"][..],
        &["servers", "--json"],
        &["stats"],
        &["subscribe", "default"],
        &["publish", "default", capture],
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_packet-ipc"));
        cmd.env("PACKET_IPC_RUNTIME_DIR", &empty)
            .env_remove("PACKET_IPC_RENDEZVOUS");
        let out = run(cmd, args);
        assert_error(&out, 69, &["no packet-ipcd", empty.to_str().unwrap()]);
    }
}

#[test]
fn stats_count_what_was_sent() {
    let daemon = Daemon::start(None);
    let (sub, _) = subscribe(&daemon, "default", &["--json"]);
    publish(
        &daemon,
        "default",
        &loopback_pcap(),
        &["--batch", "10"],
        LOOPBACK_PACKETS,
    );
    let start = Instant::now();
    let stats = loop {
        let stats = run_json(daemon.cli(), &["stats", "--json"]);
        let server = &stats["servers"][0];
        if server["subscribers"][0]["packets_out"] == LOOPBACK_PACKETS && server["producers"] == 0 {
            break stats;
        }
        assert!(start.elapsed() < DEADLINE, "stats never caught up: {stats}");
        thread::sleep(Duration::from_millis(50));
    };
    let server = &stats["servers"][0];
    assert_eq!(server["name"], "default");
    assert_eq!(server["packets_in"], LOOPBACK_PACKETS);
    assert_eq!(server["batches_in"], 4, "38 packets in batches of 10");
    let subscriber = &server["subscribers"][0];
    assert_eq!(server["subscribers"].as_array().unwrap().len(), 1);
    assert_eq!(subscriber["lost_batches"], 0);
    assert_eq!(subscriber["lost_packets"], 0);
    assert!(
        subscriber["id"].is_u64() && subscriber["queued"].is_u64(),
        "{stats}"
    );
    let one = run_json(daemon.cli(), &["stats", "default", "--json"]);
    assert_eq!(one["servers"].as_array().unwrap().len(), 1);
    let table = run(daemon.cli(), &["stats"]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("PACKETS IN"));

    util::signal(&sub, libc::SIGTERM);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    assert_eq!(summary["packets"], LOOPBACK_PACKETS);
    assert_eq!(summary["bytes"], capinfos(&loopback_pcap()).2);
}

#[test]
fn stats_watch_prints_one_table_when_stdout_is_not_a_terminal() {
    let daemon = Daemon::start(None);
    let out = run(daemon.cli(), &["stats", "--watch"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("PACKETS IN").count(), 1, "{text}");
    assert!(
        text.contains("SOURCE DROPPED") && text.contains("default"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no terminal control on a pipe: {text:?}"
    );
    let out = run(daemon.cli(), &["stats", "--watch", "--json"]);
    assert_error(&out, 64, &["--json"]);
}

#[test]
fn stats_watch_redraws_on_a_terminal_until_ctrl_c() {
    if !util::have_tool("stats --watch on a terminal", "script", "bsdutils") {
        return;
    }
    let daemon = Daemon::start(None);
    let (sub, _) = subscribe(&daemon, "default", &["--json"]);
    publish(
        &daemon,
        "default",
        &loopback_pcap(),
        &["--batch", "10"],
        LOOPBACK_PACKETS,
    );
    // script(1) runs the command on a pseudo-terminal and copies its output to ours. It
    // runs it through $SHELL or /bin/sh, and dash, not exec'ing it, would take the Ctrl-C
    // too and die of it: `exec` leaves the terminal to the command alone.
    let command = format!(
        "exec {} stats --watch --interval 0.2",
        env!("CARGO_BIN_EXE_packet-ipc")
    );
    let mut child = daemon
        .command("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let theirs = Arc::clone(&seen);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            theirs
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    const CLEAR: &str = "\x1b[H\x1b[2J";
    let start = Instant::now();
    while seen.lock().unwrap().matches(CLEAR).count() < 3 {
        assert!(
            start.elapsed() < DEADLINE,
            "fewer than 3 frames: {:?}",
            seen.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C, typed on the terminal.
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let out = wait_output(child, DEADLINE);
    reader.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = seen.lock().unwrap().clone();
    let frames: Vec<&str> = text.split(CLEAR).filter(|f| !f.is_empty()).collect();
    assert!(frames.len() >= 3, "{text:?}");
    // From the second frame on, the rates; every frame shows what was published.
    assert!(
        !frames[0].contains("IN/s") && frames[1].contains("IN/s"),
        "{text:?}"
    );
    for frame in &frames {
        assert!(
            frame.contains(&format!(" {LOOPBACK_PACKETS} ")),
            "{frame:?}"
        );
    }
    util::signal(&sub, libc::SIGTERM);
    let _ = wait_output(sub, DEADLINE);
}

#[test]
fn lost_batches_and_their_packets_are_reported() {
    let daemon = Daemon::start(Some(
        "[servers.small]\nlinktype = 1\nqueue-depth = 2\noverflow = \"drop-oldest\"\n",
    ));
    let (sub, _) = subscribe(&daemon, "small", &["--json"]);
    // A stopped subscriber: it holds at most its credit window (32 batches) and its queue
    // (2); the other batches of the 3 x 38 sent one per batch are dropped, oldest first.
    util::signal(&sub, libc::SIGSTOP);
    publish(
        &daemon,
        "small",
        &loopback_pcap(),
        &["--batch", "1", "--loop", "3"],
        3 * LOOPBACK_PACKETS,
    );
    util::signal(&sub, libc::SIGCONT);
    // Until it has taken (and released) everything that was not dropped.
    let start = Instant::now();
    let counters = loop {
        let stats = run_json(daemon.cli(), &["stats", "small", "--json"]);
        let s = stats["servers"][0]["subscribers"][0].clone();
        if s["queued"] == 0 && s["in_flight"] == 0 && s["batches_out"].as_u64() > Some(0) {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the subscriber never caught up: {stats}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    util::signal(&sub, libc::SIGTERM);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    let lost = summary["lost_batches"].as_u64().unwrap();
    assert!(lost > 0, "a stopped subscriber lost nothing: {summary}");
    assert_eq!(
        summary["lost_batches"], counters["lost_batches"],
        "{summary}"
    );
    assert_eq!(summary["lost_packets"], lost, "{summary}");
    assert_eq!(
        summary["packets"].as_u64().unwrap() + lost,
        3 * LOOPBACK_PACKETS,
        "{summary}"
    );
}

#[test]
fn bench_reports_every_contract_key() {
    // A short run: the figures themselves are measured by `packet-ipc bench`, not here.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_packet-ipc")),
        &[
            "bench",
            "--subscribers",
            "2",
            "--seconds",
            "0.3",
            "--latency-batches",
            "50",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r = json_stdout(&out);
    for key in [
        "delivered_pps",
        "delivered_gbps",
        "per_subscriber_pps",
        "producer_pps",
        "latency_p50_us",
        "latency_p99_us",
        "saturated_latency_p99_us",
        "daemon_peak_rss_bytes",
        "baseline_memcpy_gbps",
        "baseline_ipc_channel_pps",
        "baseline_ipc_channel_rtt_p99_us",
    ] {
        assert!(r[key].is_number(), "{key} in {r}");
    }
    assert_eq!(r["lost_batches"], 0, "block loses nothing: {r}");
    assert!(r["delivered_pps"].as_f64().unwrap() > 0.0);
    assert!(r["daemon_peak_rss_bytes"].as_u64().unwrap() > 0);
}

/// A tmpfs of `size` mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or says why not (not root, or mounting not permitted here).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_a_complete_pcap() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let _tmpfs = match Tmpfs::mount(&small, "200k") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipped: a full disk: mounting a 200 KiB tmpfs is not permitted here: {e}");
            return;
        }
    };
    let daemon = Daemon::start(Some("[servers.full]\nlinktype = 1\noverflow = \"block\"\n"));
    let out = small.join("out.pcap");
    let (sub, stderr) = subscribe(&daemon, "full", &["--write", out.to_str().unwrap()]);
    // 10 x 40 KB of capture for 200 KiB of disk; batches of 5 packets, up to 45 KB.
    let publisher = daemon
        .cli()
        .args(["publish", "full", loopback_pcap().to_str().unwrap()])
        .args(["--loop", "10", "--batch", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_output(sub, DEADLINE);
    let stderr = stderr.text();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("packet-ipc: "))
        .unwrap_or_else(|| panic!("no error: {stderr:?}"));
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(
        error.contains(out.to_str().unwrap()) && error.contains("No space left on device"),
        "{error}"
    );
    assert_eq!(
        stderr.lines().count(),
        2,
        "subscribed, then one line: {stderr}"
    );
    // The file ends on a record boundary, and the message says how many it holds.
    let len = std::fs::metadata(&out).unwrap().len() as usize;
    let (_, records) = pcap_records(&out);
    let whole: usize = 24 + records.iter().map(Vec::len).sum::<usize>();
    assert_eq!(whole, len, "the records fill the file exactly");
    assert!(
        !records.is_empty() && error.contains(&format!("its {} complete packets", records.len())),
        "{} records: {error}",
        records.len()
    );
    let (n, _, _) = capinfos(&out);
    assert_eq!(n, records.len() as u64);
    // Nobody reads any more: the publisher, paced by the departed subscriber, ends.
    let output = wait_output(publisher, DEADLINE);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn a_signal_ends_a_publish_waiting_for_a_free_slot() {
    let daemon = Daemon::start(Some("[servers.slow]\nlinktype = 1\noverflow = \"block\"\n"));
    let (sub, _) = subscribe(&daemon, "slow", &["--json"]);
    util::signal(&sub, libc::SIGSTOP);
    // One packet per batch: the stopped subscriber's window and the producer's slots
    // fill long before the 3800 batches are sent.
    let publisher = daemon
        .cli()
        .args(["publish", "slow", loopback_pcap().to_str().unwrap()])
        .args(["--loop", "100", "--batch", "1", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until it is stuck: nothing more comes in for half a second.
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let stats = run_json(daemon.cli(), &["stats", "slow", "--json"]);
        let batches = stats["servers"][0]["batches_in"].as_u64().unwrap_or(0);
        if batches != last.0 {
            last = (batches, Instant::now());
        } else if batches > 0 && last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the publisher never blocked");
        thread::sleep(Duration::from_millis(50));
    }
    util::signal(&publisher, libc::SIGINT);
    let output = wait_output(publisher, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert_eq!(summary["packets"], last.0, "{summary}");
    for key in ["reconnects", "uncertain_batches", "uncertain_packets"] {
        assert_eq!(summary[key], 0, "{key}: {summary}");
    }
    util::signal(&sub, libc::SIGCONT);
    util::signal(&sub, libc::SIGTERM);
    assert!(wait_output(sub, DEADLINE).status.success());
}

#[test]
fn summaries_say_when_the_daemon_went_away() {
    let daemon = Daemon::start(None);
    let (sub, _) = subscribe(&daemon, "default", &[]);
    // Publishing for about 2 s, across a restart of the daemon.
    let publisher = daemon
        .cli()
        .args(["publish", "default", loopback_pcap().to_str().unwrap()])
        .args(["--loop", "4", "--rate", "75", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let daemon = daemon.restart(None);
    let output = wait_output(publisher, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    assert_eq!(summary["reconnects"], 1, "{summary}");
    assert!(summary["uncertain_batches"].is_u64(), "{summary}");
    assert!(summary["uncertain_packets"].is_u64(), "{summary}");
    util::signal(&sub, libc::SIGTERM);
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("(end: signal)\nreconnected 1 times: packets may be missing"),
        "{text}"
    );
    // The human summary of a publisher that reconnected says what may be lost.
    let publisher = daemon
        .cli()
        .args(["publish", "default", loopback_pcap().to_str().unwrap()])
        .args(["--loop", "4", "--rate", "75"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let daemon = daemon.restart(None);
    let output = wait_output(publisher, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("reconnected 1 times; up to ")
            && text.contains("sent to the daemon that went away may not have been delivered"),
        "{text}"
    );
    drop(daemon);
}
