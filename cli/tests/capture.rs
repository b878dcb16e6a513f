//! `packet-ipc capture` and `packet-ipc subscribe --filter`, checked against tcpdump: the
//! same filters over a generated capture, live captures on `lo` and on a veth pair in a
//! network namespace beside a tcpdump on the same traffic, the errors (bad filter, link
//! type, privilege) and the source drops a capture reports to the daemon.
//!
//! What is missing (tcpdump, libpcap, `ip netns`) skips a test with a `skipped:` line,
//! unless `PACKET_IPC_REQUIRE_TOOLS=1`; live captures need root.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use packet_ipc_cli::traffic;

use crate::cli::{assert_error, free_port, json_stdout, publish, run, run_json, subscribe};
use crate::util::{
    self, available, is_root, libpcap_available, tool_available, wait_output, wait_stderr_line,
    Daemon, Stderr, DEADLINE,
};

/// One pcap record: time stamp in nanoseconds, original length, captured bytes.
type Record = (u64, u32, Vec<u8>);

/// The link type and records of a pcap file (microsecond or nanosecond).
fn read_pcap(path: &Path) -> (u32, Vec<Record>) {
    use pcap_file::pcap::PcapReader;
    use pcap_file::TsResolution;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut reader = PcapReader::new(file).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let header = reader.header();
    let nanos = header.ts_resolution == TsResolution::NanoSecond;
    let mut records = Vec::new();
    while let Some(raw) = reader.next_raw_packet() {
        let raw = raw.unwrap_or_else(|e| panic!("{path:?} record {}: {e}", records.len() + 1));
        let frac = u64::from(raw.ts_frac) * if nanos { 1 } else { 1000 };
        records.push((
            u64::from(raw.ts_sec) * 1_000_000_000 + frac,
            raw.orig_len,
            raw.data.into_owned(),
        ));
    }
    (u32::from(header.datalink), records)
}

/// Asserts two lists of records are the same: count, then time stamp, original length
/// and bytes of each.
fn assert_same_records(got: &[Record], want: &[Record], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: packet count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.0, w.0, "{what}: time stamp of packet {}", i + 1);
        assert_eq!(g.1, w.1, "{what}: original length of packet {}", i + 1);
        assert!(g.2 == w.2, "{what}: bytes of packet {}", i + 1);
    }
}

/// `tcpdump -r INPUT -w OUT EXPR`, nanosecond time stamps kept.
fn tcpdump_filter(input: &Path, expr: &str, out: &Path) -> Vec<Record> {
    let output = Command::new("tcpdump")
        .args(["--time-stamp-precision=nano", "-r"])
        .arg(input)
        .arg("-w")
        .arg(out)
        .arg(expr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    let output = wait_output(output, DEADLINE);
    assert!(output.status.success(), "tcpdump {expr:?}: {output:?}");
    read_pcap(out).1
}

/// The counters of server `server` from `packet-ipc stats --json`.
fn server_stats(daemon: &Daemon, server: &str) -> serde_json::Value {
    let stats = run_json(daemon.cli(), &["stats", server, "--json"]);
    stats["servers"][0].clone()
}

/// Waits until every subscriber of `server` has taken and released all `packets`, and
/// there are `subscribers` of them.
fn wait_delivered(daemon: &Daemon, server: &str, subscribers: usize, packets: u64) {
    let start = Instant::now();
    loop {
        let s = server_stats(daemon, server);
        let subs = s["subscribers"].as_array().cloned().unwrap_or_default();
        let done = subs.len() == subscribers
            && subs.iter().all(|sub| {
                sub["packets_out"] == packets && sub["queued"] == 0 && sub["in_flight"] == 0
            });
        if done {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the subscribers never took every packet: {s}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The filters compared with tcpdump's: tags, IPv6, fragments, port sets, lengths,
/// negation, ICMP of both versions.
const FILTERS: &[&str] = &[
    "vlan",
    "ip6",
    "ip[6:2] & 0x3fff != 0",
    "ip6 and ip6[6] == 44",
    "tcp port 443 or udp port 53",
    "portrange 40000-44999",
    "len > 500",
    "not arp",
    "icmp or icmp6",
    "vlan and udp",
];

#[test]
fn subscribe_filters_give_what_tcpdump_gives() {
    let what = "subscribe --filter against tcpdump";
    if !libpcap_available(what) || !tool_available(what, "tcpdump", &["--version"], "tcpdump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.pcap");
    let synth = traffic::mixed(7, 300);
    traffic::write_pcap(&input, &synth.packets).unwrap();
    let total = synth.packets.len() as u64;

    let wants: Vec<Vec<Record>> = FILTERS
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let want = tcpdump_filter(&input, expr, &dir.path().join(format!("want{i}.pcap")));
            assert!(
                !want.is_empty() && (want.len() as u64) < total,
                "{expr:?} should keep some packets and leave some: {} of {total}",
                want.len()
            );
            want
        })
        .collect();

    // Lossless, so that every subscriber sees every packet.
    let daemon = Daemon::start(Some("[servers.mix]\nlinktype = 1\noverflow = \"block\"\n"));
    let mut subscribers: Vec<(Child, Stderr)> = FILTERS
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let out = dir.path().join(format!("got{i}.pcap"));
            subscribe(
                &daemon,
                "mix",
                &["--filter", expr, "--write", out.to_str().unwrap(), "--json"],
            )
        })
        .collect();
    // --count counts the packets after the filter.
    let counted = dir.path().join("counted.pcap");
    let (counting, _) = subscribe(
        &daemon,
        "mix",
        &[
            "--filter",
            FILTERS[4],
            "--count",
            "5",
            "--write",
            counted.to_str().unwrap(),
            "--json",
        ],
    );

    publish(&daemon, "mix", &input, &["--batch", "64"], total);
    let output = wait_output(counting, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let summary = json_stdout(&output);
    assert_eq!(summary["packets"], 5, "{summary}");
    assert_eq!(summary["end"], "count", "{summary}");
    assert_same_records(&read_pcap(&counted).1, &wants[4][..5], "--count 5");

    wait_delivered(&daemon, "mix", FILTERS.len(), total);
    for (child, _) in &subscribers {
        util::signal(child, libc::SIGTERM);
    }
    for (i, ((child, stderr), expr)) in subscribers.drain(..).zip(FILTERS).enumerate() {
        let output = wait_output(child, DEADLINE);
        assert!(output.status.success(), "{expr:?}: {}", stderr.text());
        let summary = json_stdout(&output);
        let want = &wants[i];
        assert_eq!(summary["packets"], want.len() as u64, "{expr:?}: {summary}");
        assert_eq!(
            summary["filtered_out"],
            total - want.len() as u64,
            "{expr:?}: {summary}"
        );
        assert_eq!(summary["lost_batches"], 0, "{expr:?}: {summary}");
        let (linktype, got) = read_pcap(&dir.path().join(format!("got{i}.pcap")));
        assert_eq!(linktype, 1);
        assert_same_records(&got, want, expr);
        eprintln!("{expr:?}: {} of {total} packets, as tcpdump", want.len());
    }
}

#[test]
fn subscribe_with_a_bad_filter_is_a_usage_error() {
    if !libpcap_available("subscribe with a bad filter") {
        return;
    }
    let daemon = Daemon::start(None);
    let out = run(
        daemon.cli(),
        &["subscribe", "default", "--filter", "tcp port"],
    );
    assert_error(&out, 64, &["invalid filter \"tcp port\"", "syntax error"]);
    // Nothing is left subscribed.
    assert_eq!(
        server_stats(&daemon, "default")["subscribers"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}

#[test]
fn group_members_share_the_packets_and_wait_is_taken() {
    let daemon = Daemon::start(Some("[servers.g]\nlinktype = 1\noverflow = \"block\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.pcap");
    let synth = traffic::mixed(11, 200);
    traffic::write_pcap(&input, &synth.packets).unwrap();
    let total = synth.packets.len() as u64;
    let members: Vec<(Child, Stderr)> = ["park", "adaptive"]
        .iter()
        .map(|wait| {
            subscribe(
                &daemon,
                "g",
                &["--group", "workers", "--wait", wait, "--json"],
            )
        })
        .collect();
    publish(&daemon, "g", &input, &["--batch", "32"], total);
    // Until the members have taken every packet between them.
    let start = Instant::now();
    let stats = loop {
        let s = server_stats(&daemon, "g");
        let subs = s["subscribers"].as_array().cloned().unwrap_or_default();
        let out: u64 = subs.iter().filter_map(|m| m["packets_out"].as_u64()).sum();
        if out == total && subs.iter().all(|m| m["in_flight"] == 0 && m["queued"] == 0) {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "never delivered: {s}");
        thread::sleep(Duration::from_millis(50));
    };
    for m in stats["subscribers"].as_array().unwrap() {
        assert_eq!(m["group"], "workers", "{stats}");
    }
    let mut sum = 0;
    for (child, _) in members {
        util::signal(&child, libc::SIGTERM);
        let output = wait_output(child, DEADLINE);
        assert!(output.status.success(), "{output:?}");
        let summary = json_stdout(&output);
        let packets = summary["packets"].as_u64().unwrap();
        assert!(
            packets > 0 && packets < total,
            "a member's share: {summary}"
        );
        sum += packets;
    }
    assert_eq!(sum, total);

    // Names the daemon would refuse are refused here, as usage errors.
    let out = run(daemon.cli(), &["subscribe", "g", "--group", "no spaces"]);
    assert_error(&out, 64, &["group"]);
    let out = run(daemon.cli(), &["subscribe", "g", "--wait", "block"]);
    assert_error(&out, 64, &["block"]);
}

/// `tcpdump -i IFACE -c COUNT -w OUT FILTER` (nanosecond time stamps), once it listens.
fn start_tcpdump(iface: &str, count: usize, filter: &str, out: &Path) -> Child {
    let mut child = Command::new("tcpdump")
        .args(["-i", iface, "-n", "-U", "--time-stamp-precision=nano"])
        .args(["-c", &count.to_string(), "-w"])
        .arg(out)
        .arg(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    wait_stderr_line(&mut child, "tcpdump: listening on");
    child
}

/// `packet-ipc capture SERVER ARGS`, once it says it captures.
fn start_capture(daemon: &Daemon, server: &str, iface: &str, args: &[&str]) -> (Child, Stderr) {
    let mut child = daemon
        .cli()
        .args(["capture", server, "-i", iface])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc capture");
    let stderr = wait_stderr_line(&mut child, &format!("capturing on {iface} into {server}"));
    (child, stderr)
}

/// Captures `count` packets on `iface` matching `filter`, through the daemon into a
/// subscriber's file and with tcpdump beside it, while `send` makes the traffic; asserts
/// both files hold the same records.
/// `extra`: more arguments for `capture` (the mode).
fn capture_beside_tcpdump(
    iface: &str,
    filter: &str,
    count: usize,
    extra: &[&str],
    send: impl FnOnce(),
) {
    let daemon = Daemon::start(Some("[servers.live]\nlinktype = 1\noverflow = \"block\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.pcap");
    let want = dir.path().join("want.pcap");
    let n = count.to_string();
    let (sub, sub_err) = subscribe(
        &daemon,
        "live",
        &["--write", got.to_str().unwrap(), "--count", &n, "--json"],
    );
    let tcpdump = start_tcpdump(iface, count, filter, &want);
    // More than the server's snaplen is cut to it.
    let mut args = vec![
        "--filter",
        filter,
        "--count",
        &n,
        "--snaplen",
        "100000",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (capture, capture_err) = start_capture(&daemon, "live", iface, &args);
    send();
    let output = wait_output(capture, DEADLINE);
    assert!(output.status.success(), "capture: {}", capture_err.text());
    let summary = json_stdout(&output);
    assert_eq!(summary["packets"], count as u64, "{summary}");
    assert_eq!(summary["end"], "count", "{summary}");
    assert_eq!(summary["dropped_kernel"], 0, "{summary}");
    assert_eq!(summary["snaplen"], 65535, "{summary}");
    for key in ["bytes", "received", "dropped_interface"] {
        assert!(summary[key].is_u64(), "{key} in {summary}");
    }
    let output = wait_output(sub, DEADLINE);
    assert!(output.status.success(), "subscribe: {}", sub_err.text());
    let output = wait_output(tcpdump, DEADLINE);
    assert!(output.status.success(), "tcpdump: {output:?}");
    let (linktype, got) = read_pcap(&got);
    assert_eq!(linktype, 1);
    let (_, want) = read_pcap(&want);
    assert_same_records(&got, &want, &format!("capture on {iface}"));
    eprintln!("{count} packets on {iface}: the same as tcpdump's");
}

/// Whether live captures can be tested here: root, libpcap and tcpdump.
fn live(what: &str) -> bool {
    is_root(what)
        && libpcap_available(what)
        && tool_available(what, "tcpdump", &["--version"], "tcpdump")
}

/// Sends `count` UDP datagrams of varied sizes to `port` on the loopback.
fn send_udp(port: u16, count: usize, size: impl Fn(usize) -> usize) {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..count {
        tx.send_to(&vec![i as u8; size(i)], ("127.0.0.1", port))
            .unwrap();
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn capture_on_lo_is_what_tcpdump_captures_beside_it() {
    if !live("capture on lo") {
        return;
    }
    let port = free_port();
    let filter = format!("udp dst port {port}");
    // The default mode: blocks of the ring, handed over full or after 10 ms.
    capture_beside_tcpdump("lo", &filter, 40, &[], || {
        send_udp(port, 40, |i| (i * 211) % 9000)
    });
}

/// A network namespace with a veth pair: one end outside (in this namespace), the other
/// inside, each with an address of a /30. Removed on drop, whatever happened.
struct Netns {
    name: String,
    outside: String,
    inside_addr: String,
    outside_addr: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 10_000 * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10;
        // A /30 of 10.231.0.0/16 picked by the number, so parallel runs do not collide.
        let subnet = (n % 16_384) * 4;
        let net = Netns {
            name: format!("pipc-test-{n}"),
            outside: format!("pipc{n}o"),
            outside_addr: format!("10.231.{}.{}", subnet / 256, subnet % 256 + 1),
            inside_addr: format!("10.231.{}.{}", subnet / 256, subnet % 256 + 2),
        };
        let inside = format!("pipc{n}i");
        net.ip(&["netns", "add", &net.name])?;
        net.ip(&[
            "link",
            "add",
            &net.outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            &net.name,
        ])?;
        net.ip(&[
            "addr",
            "add",
            &format!("{}/30", net.outside_addr),
            "dev",
            &net.outside,
        ])?;
        net.ip(&["link", "set", &net.outside, "up"])?;
        let ns = ["netns", "exec", &net.name, "ip"];
        let inside_cidr = format!("{}/30", net.inside_addr);
        net.ip(&[&ns[..], &["addr", "add", &inside_cidr, "dev", &inside]].concat())?;
        net.ip(&[&ns[..], &["link", "set", &inside, "up"]].concat())?;
        net.ip(&[&ns[..], &["link", "set", "lo", "up"]].concat())?;
        Ok(net)
    }

    /// `ip ARGS`; its stderr is the error.
    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of the pair deletes both, at once (a namespace that goes takes
        // its end with it only later).
        let _ = self.ip(&["link", "del", &self.outside]);
        let _ = self.ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn capture_on_a_veth_in_a_namespace_is_what_tcpdump_captures() {
    let what = "capture on a veth pair from a network namespace";
    if !live(what) || !tool_available(what, "ip", &["-V"], "iproute2") {
        return;
    }
    let net = match Netns::create() {
        Ok(net) => net,
        Err(e) => {
            available(what, "ip netns (apt-get install iproute2)", Some(e));
            return;
        }
    };
    let port = free_port();
    let filter = format!("udp dst port {port}");
    let count = 20;
    // From inside the namespace, to the outer end's address: datagrams of 50 to 1000
    // bytes, written by bash's /dev/udp.
    let script = format!(
        "for i in $(seq 1 {count}); do printf '%*s' $((i * 50)) x > /dev/udp/{}/{port}; \
         sleep 0.01; done",
        net.outside_addr
    );
    let ns = net.name.clone();
    // Immediate mode: each packet as it comes.
    capture_beside_tcpdump(&net.outside, &filter, count, &["--immediate"], move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "bash", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("run bash in the namespace");
        assert!(out.status.success(), "sending from the namespace: {out:?}");
    });
    drop(net);
}

#[test]
fn capture_errors_are_one_line_with_a_sysexits_code() {
    if !live("capture errors") {
        return;
    }
    let daemon = Daemon::start(Some(
        "[servers.default]\nlinktype = 1\n\n[servers.cooked]\nlinktype = 113\n",
    ));
    // A bad filter names itself and libpcap's reason.
    let out = run(
        daemon.cli(),
        &["capture", "default", "-i", "lo", "--filter", "udp port"],
    );
    assert_error(&out, 64, &["invalid filter \"udp port\"", "syntax error"]);
    // The link type of the interface must be the server's: refused, naming both.
    let out = run(daemon.cli(), &["capture", "cooked", "-i", "lo"]);
    assert_error(&out, 65, &["lo", "link type 1", "cooked", "113"]);
    let out = run(daemon.cli(), &["capture", "default", "-i", "any"]);
    assert_error(
        &out,
        65,
        &["any", "link type 113", "default", "link type 1 "],
    );
    for server in ["default", "cooked"] {
        assert_eq!(server_stats(&daemon, server)["packets_in"], 0);
    }
    // No such interface.
    let out = run(daemon.cli(), &["capture", "default", "-i", "nosuchif0"]);
    assert_error(&out, 66, &["nosuchif0"]);
    // Usage.
    let out = run(daemon.cli(), &["capture", "default"]);
    assert_error(&out, 64, &["-i"]);
    let out = run(
        daemon.cli(),
        &["capture", "default", "-i", "lo", "--batch", "0"],
    );
    assert_error(&out, 64, &["--batch"]);

    // -i any goes into a server of Linux cooked captures.
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("cooked.pcap");
    let (sub, _) = subscribe(
        &daemon,
        "cooked",
        &["--write", got.to_str().unwrap(), "--count", "3"],
    );
    let port = free_port();
    let (capture, capture_err) = start_capture(
        &daemon,
        "cooked",
        "any",
        &["--filter", &format!("udp dst port {port}"), "--count", "3"],
    );
    send_udp(port, 3, |i| 100 + i);
    let output = wait_output(capture, DEADLINE);
    assert!(output.status.success(), "{}", capture_err.text());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("captured 3 packets") && text.contains("dropped by the kernel"),
        "{text}"
    );
    assert!(wait_output(sub, DEADLINE).status.success());
    let (linktype, records) = read_pcap(&got);
    assert_eq!(linktype, 113);
    assert_eq!(records.len(), 3);
    // The cooked header (16 bytes), then IPv4, UDP and the payload.
    assert_eq!(records[0].2.len(), 16 + 20 + 8 + 100);
}

#[test]
fn capture_without_privilege_is_refused_with_77() {
    let what = "capture as an unprivileged user";
    if !is_root(what)
        || !libpcap_available(what)
        || !tool_available(what, "setpriv", &["--version"], "util-linux")
    {
        return;
    }
    let daemon = Daemon::start(None);
    let output = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_packet-ipc"))
        .args(["capture", "default", "-i", "lo"])
        .env("PACKET_IPC_RUNTIME_DIR", daemon.runtime())
        .env_remove("PACKET_IPC_RENDEZVOUS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc capture as nobody");
    let output = wait_output(output, DEADLINE);
    assert_error(
        &output,
        77,
        &["permission denied capturing on lo", "CAP_NET_RAW"],
    );
    assert_eq!(server_stats(&daemon, "default")["packets_in"], 0);
}

/// Waits until `check` holds of the counters of `server`; returns them.
fn wait_stats(
    daemon: &Daemon,
    server: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = server_stats(daemon, server);
        if check(&s) {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "never {what}: {s}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reported_source_drops_show_in_stats() {
    let daemon = Daemon::start(None);
    let options = daemon.options(Duration::ZERO);
    let mut producer = packet_ipc::Producer::connect_with("default", options).unwrap();
    producer.report_source_drops(1234);
    let s = wait_stats(&daemon, "default", "1234 source drops", |s| {
        s["source_dropped"] == 1234
    });
    let list = s["producer_list"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{s}");
    assert_eq!(list[0]["source_dropped"], 1234, "{s}");
    assert_eq!(list[0]["id"], producer.id().unwrap(), "{s}");
    // A running total: the last one counts.
    producer.report_source_drops(5000);
    wait_stats(&daemon, "default", "5000 source drops", |s| {
        s["source_dropped"] == 5000 && s["producer_list"][0]["source_dropped"] == 5000
    });
    // A producer that left keeps its drops in the server's total.
    drop(producer);
    wait_stats(&daemon, "default", "the producer gone", |s| {
        s["producers"] == 0 && s["source_dropped"] == 5000
    });
}

#[test]
fn a_capture_that_falls_behind_reports_its_kernel_drops() {
    if !live("kernel drops of a stopped capture") {
        return;
    }
    let daemon = Daemon::start(None);
    let port = free_port();
    // 1 MiB of ring: 20000 copies of 1 KiB datagrams on lo (each is seen going out and
    // coming in) do not fit.
    let (capture, capture_err) = start_capture(
        &daemon,
        "default",
        "lo",
        &[
            "--filter",
            &format!("udp dst port {port}"),
            "--buffer-mib",
            "1",
            "--json",
        ],
    );
    util::signal(&capture, libc::SIGSTOP);
    let sent = 10_000;
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..sent {
        let _ = tx.send_to(&[i as u8; 1000], ("127.0.0.1", port));
    }
    util::signal(&capture, libc::SIGCONT);
    // Reported about once a second.
    let s = wait_stats(&daemon, "default", "source drops", |s| {
        s["source_dropped"].as_u64() > Some(0)
    });
    assert_eq!(
        s["producer_list"][0]["source_dropped"], s["source_dropped"],
        "{s}"
    );
    util::signal(&capture, libc::SIGINT);
    let output = wait_output(capture, DEADLINE);
    assert!(output.status.success(), "{}", capture_err.text());
    let summary = json_stdout(&output);
    assert_eq!(summary["end"], "signal", "{summary}");
    let packets = summary["packets"].as_u64().unwrap();
    let dropped = summary["dropped_kernel"].as_u64().unwrap();
    let interface = summary["dropped_interface"].as_u64().unwrap();
    assert!(dropped > 0 && packets < sent, "{summary}");
    // Every datagram was published or dropped (on lo the kernel also counts, and may
    // drop, the outgoing copy, which libpcap does not hand over).
    assert!(packets + dropped >= sent, "{summary}");
    // The final count reached the daemon, and stays once the capture is gone.
    wait_stats(&daemon, "default", "the capture's final drops", |s| {
        s["producers"] == 0 && s["source_dropped"] == dropped + interface
    });
    eprintln!("{packets} published, {dropped} dropped by the kernel");
}

/// The file libpcap was loaded from in this process (after `libpcap_available`).
fn libpcap_file() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains("libpcap"))
        .map(str::to_owned)
}

#[test]
fn without_libpcap_capture_and_filters_name_the_package() {
    let what = "capture and filters without libpcap";
    if !is_root(what)
        || !libpcap_available(what)
        || !tool_available(what, "unshare", &["--version"], "util-linux")
    {
        return;
    }
    let Some(lib) = libpcap_file() else {
        available(
            what,
            "libpcap mapped from a file",
            Some("not in /proc/self/maps".into()),
        );
        return;
    };
    let daemon = Daemon::start(None);
    // In a mount namespace of their own, libpcap's file is /dev/null: it does not load.
    let without = |args: &[&str]| {
        let mut cmd = daemon.command("unshare");
        cmd.args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount --bind /dev/null \"$0\" && exec \"$@\"",
        ])
        .arg(&lib)
        .arg(env!("CARGO_BIN_EXE_packet-ipc"));
        run(cmd, args)
    };
    let out = without(&["capture", "default", "-i", "lo"]);
    assert_error(
        &out,
        69,
        &["libpcap is not installed (apt-get install libpcap0.8)"],
    );
    let out = without(&["subscribe", "default", "--filter", "udp"]);
    assert_error(
        &out,
        69,
        &["libpcap is not installed (apt-get install libpcap0.8)"],
    );
    // Plain subscribing does not need it.
    let out = without(&["subscribe", "default", "--timeout", "0.1"]);
    assert!(out.status.success(), "{out:?}");
}
