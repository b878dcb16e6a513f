//! Subscriber groups against the real daemon: members are `packet-ipc subscribe --group`
//! processes writing pcap files (or `Subscriber`s in this process where a test must see
//! batches), fed by `packet-ipc publish` with a generated capture whose every packet's flow
//! and datagram are known (`traffic::mixed`, unique nanosecond timestamps).
//!
//! Each group as a whole gets every packet exactly once, whole flows to one member, beside
//! other groups and plain subscribers; a member killed mid-stream leaves its queue to the
//! others and loses at most what it held; a newcomer takes over about 1/N of the flows and
//! the members it took them from are told; `batch` and `ip-pair` balancing keep their
//! own rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use packet_ipc::batch::BatchView;
use packet_ipc::{AsIpcPacket, ConnectOptions, Packet, Received, Subscriber};
use packet_ipc_cli::traffic::{self, Synth};

use crate::cli::{json_stdout, publish, run_json, subscribe};
use crate::util::{self, wait_output, Daemon, Stderr, DEADLINE};

/// `BLOCK_WINDOW` of the hub: the most batches a subscriber holds delivered and unreleased
/// under `block`.
const BLOCK_WINDOW: u64 = 256;

/// One pcap record: timestamp in nanoseconds, original length, captured bytes.
type Record = (u64, u32, Vec<u8>);

/// A server of its own for each test: Ethernet, nothing dropped.
fn config(balance: &str) -> String {
    format!("[servers.s]\nlinktype = 1\noverflow = \"block\"\ngroup-balance = \"{balance}\"\n")
}

/// The records of a nanosecond pcap in this machine's byte order (as `subscribe --write`
/// writes them). A record cut short at the end (its writer was killed) is left out.
fn read_records(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    if bytes.len() < 24 {
        return Vec::new();
    }
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_3c4d, "{path:?}: a nanosecond pcap");
    assert_eq!(u32_at(20), 1, "{path:?}: link type Ethernet");
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32_at(at + 8) as usize;
        if at + 16 + incl > bytes.len() {
            break;
        }
        let ts = u64::from(u32_at(at)) * 1_000_000_000 + u64::from(u32_at(at + 4));
        records.push((ts, u32_at(at + 12), bytes[at + 16..at + 16 + incl].to_vec()));
        at += 16 + incl;
    }
    records
}

/// The counters of server `s` from `packet-ipc stats s --json`.
fn server_stats(daemon: &Daemon) -> serde_json::Value {
    run_json(daemon.cli(), &["stats", "s", "--json"])["servers"][0].clone()
}

/// The counters of group `name` in `stats` (null when it is not listed).
fn group_of<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// The counters of the subscriber whose `key` (`pid` or `id`) is `value`.
fn subscriber_of<'a>(stats: &'a serde_json::Value, key: &str, value: u64) -> &'a serde_json::Value {
    stats["subscribers"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s[key] == value))
        .unwrap_or(&serde_json::Value::Null)
}

/// Waits until `check` holds of server `s`'s counters; returns them.
fn wait_stats(
    daemon: &Daemon,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = server_stats(daemon);
        if check(&s) {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "never {what}: {s:#}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `check` holds.
fn wait_until(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "never {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `synth`'s capture into `dir`.
fn capture_file(dir: &Path, synth: &Synth) -> PathBuf {
    let path = dir.join("mixed.pcap");
    traffic::write_pcap(&path, &synth.packets).unwrap();
    path
}

/// A `packet-ipc subscribe s --write FILE [--group NAME]` process.
struct Member {
    child: Child,
    stderr: Stderr,
    file: PathBuf,
}

impl Member {
    /// Starts one and waits until it is subscribed.
    fn start(daemon: &Daemon, dir: &Path, name: &str, group: Option<&str>) -> Member {
        let file = dir.join(format!("{name}.pcap"));
        let mut args = vec!["--write", file.to_str().unwrap(), "--json"];
        if let Some(g) = group {
            args.extend(["--group", g]);
        }
        let (child, stderr) = subscribe(daemon, "s", &args);
        Member {
            child,
            stderr,
            file,
        }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// Ends a member whose counters in the daemon are `counted` (taken when nothing more
    /// was to come): waits until its file holds every packet it was delivered, then
    /// SIGINT; it must exit 0 with a summary that says as much, losses included. Its
    /// records.
    fn finish(self, counted: &serde_json::Value) -> Vec<Record> {
        let packets = counted["packets_out"].as_u64().unwrap();
        let file = self.file.clone();
        wait_until(&format!("{packets} packets in {file:?}"), || {
            read_records(&file).len() as u64 >= packets
        });
        util::signal(&self.child, libc::SIGINT);
        let out = wait_output(self.child, DEADLINE);
        let stderr = self.stderr.text();
        assert!(out.status.success(), "{out:?} {stderr}");
        let summary = json_stdout(&out);
        assert_eq!(summary["packets"], packets, "{summary} {stderr}");
        assert_eq!(
            summary["lost_batches"], counted["lost_batches"],
            "{summary} {counted}"
        );
        assert_eq!(summary["end"], "signal", "{summary}");
        let records = read_records(&file);
        assert_eq!(records.len() as u64, packets, "{file:?}");
        records
    }
}

/// Waits until group `name` took all `total` packets, then ends its `members` (still
/// subscribed) once each has written what it was delivered. Their records.
fn finish_group(daemon: &Daemon, name: &str, members: Vec<Member>, total: u64) -> Vec<Vec<Record>> {
    let stats = wait_stats(
        daemon,
        &format!("all {total} packets out to group {name}"),
        |s| group_of(s, name)["packets_out"] == total,
    );
    finish_members(&stats, name, members)
}

/// Ends `members` of group `name`, each once it has written what `stats` (taken when
/// nothing more was to come) says it was delivered. Their records.
fn finish_members(stats: &serde_json::Value, name: &str, members: Vec<Member>) -> Vec<Vec<Record>> {
    let counted: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let sub = subscriber_of(stats, "pid", m.pid());
            assert_eq!(sub["group"], name, "{stats:#}");
            sub.clone()
        })
        .collect();
    members
        .into_iter()
        .zip(&counted)
        .map(|(m, c)| m.finish(c))
        .collect()
}

/// Published packets by timestamp (unique in `traffic::mixed`).
fn by_time(synth: &Synth) -> HashMap<u64, usize> {
    let map: HashMap<u64, usize> = synth
        .packets
        .iter()
        .enumerate()
        .map(|(i, p)| (p.timestamp_nanos(), i))
        .collect();
    assert_eq!(map.len(), synth.packets.len(), "unique timestamps");
    map
}

/// Which of `members` got each published packet (`None`: none did). Every record must be
/// a published packet, unchanged, and no packet may reach two members or one twice.
fn owners(synth: &Synth, members: &[&[Record]]) -> Vec<Option<usize>> {
    let index = by_time(synth);
    let mut owner = vec![None; synth.packets.len()];
    for (m, records) in members.iter().enumerate() {
        for (ts, orig, data) in records.iter() {
            let &i = index
                .get(ts)
                .unwrap_or_else(|| panic!("member {m} got a packet never published ({ts})"));
            let p = &synth.packets[i];
            assert!(
                p.data() == data.as_slice() && p.orig_len() == *orig as usize,
                "member {m}: packet {i} differs from what was published"
            );
            if let Some(other) = owner[i] {
                panic!(
                    "packet {i} (flow {}) reached member {other} and member {m}",
                    synth.flow[i]
                );
            }
            owner[i] = Some(m);
        }
    }
    owner
}

/// Every packet reached exactly one member.
fn assert_all_once(owner: &[Option<usize>], what: &str) {
    let missing: Vec<usize> = (0..owner.len()).filter(|&i| owner[i].is_none()).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} packets reached no member (first: {:?})",
        missing.len(),
        owner.len(),
        &missing[..missing.len().min(10)]
    );
}

/// The members each flow's packets reached (flows with no packet received left out).
fn flow_members(synth: &Synth, owner: &[Option<usize>]) -> BTreeMap<u64, BTreeSet<usize>> {
    let mut map: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for (i, o) in owner.iter().enumerate() {
        if let Some(m) = o {
            map.entry(synth.flow[i]).or_default().insert(*m);
        }
    }
    map
}

/// Every flow (both directions) and every fragmented datagram is on one member; each of
/// the `n` members has its fair share of the flows within a factor of two.
fn assert_flows_whole_and_spread(synth: &Synth, owner: &[Option<usize>], n: usize, what: &str) {
    let flows = flow_members(synth, owner);
    for (flow, members) in &flows {
        assert_eq!(
            members.len(),
            1,
            "{what}: flow {flow} is split over members {members:?}"
        );
    }
    let mut datagrams: HashMap<u64, BTreeSet<usize>> = HashMap::new();
    for (i, d) in synth.datagram.iter().enumerate() {
        if let (Some(d), Some(m)) = (d, owner[i]) {
            datagrams.entry(*d).or_default().insert(m);
        }
    }
    assert!(!datagrams.is_empty(), "the capture has fragments");
    for (d, members) in &datagrams {
        assert_eq!(
            members.len(),
            1,
            "{what}: datagram {d} is split over {members:?}"
        );
    }
    let mut per_member = vec![0usize; n];
    for members in flows.values() {
        per_member[*members.first().unwrap()] += 1;
    }
    let fair = flows.len() as f64 / n as f64;
    for (m, &got) in per_member.iter().enumerate() {
        assert!(
            (got as f64) >= fair / 2.0 && (got as f64) <= fair * 2.0,
            "{what}: member {m} has {got} flows, the fair share is {fair:.0} ({per_member:?})"
        );
    }
    eprintln!("{what}: flows per member {per_member:?} (fair share {fair:.1})");
}

/// A member's records come in the order they were published.
fn assert_in_order(records: &[Record], index: &HashMap<u64, usize>, what: &str) {
    let positions: Vec<usize> = records.iter().map(|r| index[&r.0]).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{what}: packets out of order"
    );
}

#[test]
fn two_groups_and_a_plain_subscriber_each_get_every_packet_once() {
    let daemon = Daemon::start(Some(&config("flow")));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(31, 400);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;
    assert!(synth.flows() >= 400);

    let a: Vec<Member> = (0..3)
        .map(|i| Member::start(&daemon, dir.path(), &format!("a{i}"), Some("a")))
        .collect();
    let b: Vec<Member> = (0..2)
        .map(|i| Member::start(&daemon, dir.path(), &format!("b{i}"), Some("b")))
        .collect();
    let plain_file = dir.path().join("plain.pcap");
    let (plain, _plain_err) = subscribe(
        &daemon,
        "s",
        &[
            "--write",
            plain_file.to_str().unwrap(),
            "--count",
            &total.to_string(),
            "--json",
        ],
    );
    publish(&daemon, "s", &input, &["--batch", "64"], total);

    let index = by_time(&synth);
    for (name, members) in [("a", a), ("b", b)] {
        let n = members.len();
        let records = finish_group(&daemon, name, members, total);
        for (m, r) in records.iter().enumerate() {
            assert!(!r.is_empty(), "group {name}: member {m} got nothing");
            assert_in_order(r, &index, &format!("group {name}, member {m}"));
        }
        let views: Vec<&[Record]> = records.iter().map(Vec::as_slice).collect();
        let owner = owners(&synth, &views);
        let what = format!("group {name}");
        assert_all_once(&owner, &what);
        assert_flows_whole_and_spread(&synth, &owner, n, &what);
    }
    let stats = server_stats(&daemon);
    for name in ["a", "b"] {
        let g = group_of(&stats, name);
        assert_eq!(g["packets_out"], total, "{stats:#}");
        assert_eq!(g["lost_packets"], 0, "{stats:#}");
    }

    // The plain subscriber got the capture itself.
    let out = wait_output(plain, DEADLINE);
    assert!(out.status.success(), "{out:?}");
    let summary = json_stdout(&out);
    assert_eq!(summary["packets"], total, "{summary}");
    assert_eq!(summary["end"], "count", "{summary}");
    let got = read_records(&plain_file);
    assert_eq!(
        got.len(),
        synth.packets.len(),
        "plain subscriber: packet count"
    );
    for (i, ((ts, orig, data), p)) in got.iter().zip(&synth.packets).enumerate() {
        assert_eq!(
            *ts,
            p.timestamp_nanos(),
            "plain subscriber: timestamp of packet {i}"
        );
        assert_eq!(
            *orig as usize,
            p.orig_len(),
            "plain subscriber: length of packet {i}"
        );
        assert!(data == p.data(), "plain subscriber: bytes of packet {i}");
    }
}

/// Starts `packet-ipc publish s FILE ARGS --json` without waiting for it.
fn start_publish(daemon: &Daemon, input: &Path, args: &[&str]) -> Child {
    daemon
        .cli()
        .args(["publish", "s", input.to_str().unwrap(), "--json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc publish")
}

/// Waits for a publisher started by [`start_publish`]: it must have sent all `total`
/// packets; returns its summary.
fn end_publish(publisher: Child, total: u64) -> serde_json::Value {
    let out = wait_output(publisher, DEADLINE);
    assert!(out.status.success(), "{out:?}");
    let summary = json_stdout(&out);
    assert_eq!(summary["packets"], total, "{summary}");
    summary
}

/// A member stopped (SIGSTOP) mid-stream, so that it holds what it was delivered, then
/// killed (SIGKILL), in a group of three under `overflow`: `held` says when it holds
/// enough. Checks the accounting and the survivors; returns (lost, moved flows).
fn kill_a_member(overflow: &str, queue_depth: u32, held: fn(&serde_json::Value) -> bool) {
    let daemon = Daemon::start(Some(&format!(
        "[servers.s]\nlinktype = 1\noverflow = \"{overflow}\"\nqueue-depth = {queue_depth}\n"
    )));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(47, 500);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;
    // Paced: batches of rate/100 packets, over a few seconds.
    let rate = 2500;
    let batch = rate / 100;

    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::start(&daemon, dir.path(), &format!("m{i}"), Some("g")))
        .collect();
    let publisher = start_publish(&daemon, &input, &["--rate", &rate.to_string()]);
    wait_stats(&daemon, "a third of the stream out", |s| {
        group_of(s, "g")["packets_out"].as_u64() >= Some(total / 3)
    });
    let mut dead = members.remove(0);
    util::signal(&dead.child, libc::SIGSTOP);
    let pid = dead.pid();
    let before = wait_stats(&daemon, "the stopped member holding batches", |s| {
        held(subscriber_of(s, "pid", pid))
    });
    dead.child.kill().unwrap();
    let _ = dead.child.wait();
    let dead_records = read_records(&dead.file);
    let written = dead_records.len() as u64;
    // Every batch taken after the daemon let the dead member go is the survivors'.
    let gone = wait_stats(&daemon, "the dead member gone", |s| {
        group_of(s, "g")["members"] == 2
    });
    let after_kill = gone["packets_in"].as_u64().unwrap() as usize;

    let summary = end_publish(publisher, total);
    assert!(
        summary["batches"].as_u64().unwrap() >= total / batch,
        "{summary}"
    );

    // Done when the survivors' packets, what the dead member wrote and what the group lost
    // make up the capture (the counters only grow; only the end makes them add up).
    let survivors_out = |s: &serde_json::Value| -> u64 {
        members
            .iter()
            .map(|m| {
                subscriber_of(s, "pid", m.pid())["packets_out"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let stats = wait_stats(&daemon, "the stream accounted for", |s| {
        let g = group_of(s, "g");
        g["members"] == 2
            && survivors_out(s) + g["lost_packets"].as_u64().unwrap_or(0) + written == total
    });
    let group = group_of(&stats, "g").clone();
    let (out, lost) = (
        group["packets_out"].as_u64().unwrap(),
        group["lost_packets"].as_u64().unwrap(),
    );
    // What the dead member had been delivered: the group's total less the survivors'.
    let dead_out = out - survivors_out(&stats);
    let dead_lost = dead_out - written;
    let victim = subscriber_of(&before, "pid", pid);
    let survivors = finish_members(&stats, "g", members);
    eprintln!(
        "{overflow}: the stopped member held {victim}; it was delivered {dead_out} packets, \
         wrote {written}; group: {group}; survivors {:?}, of {total}",
        survivors.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // What it held delivered and unreleased is lost: one window of batches at most, and
    // not nothing (it was stopped holding batches). Under `block` nothing else is lost:
    // what was queued for it went to the others.
    assert!(dead_lost > 0, "the stopped member held packets");
    assert!(
        dead_lost <= BLOCK_WINDOW * batch,
        "lost {dead_lost} packets it held: {stats:#}"
    );
    if overflow == "block" {
        assert_eq!(out, total, "nothing dropped under block: {stats:#}");
        assert_eq!(lost, dead_lost, "{stats:#}");
        for sub in stats["subscribers"].as_array().unwrap() {
            assert_eq!(sub["lost_batches"], 0, "a survivor lost nothing: {stats:#}");
        }
    } else {
        // The batches dropped for it while it was stopped are lost too (and, on a busy
        // machine, some for a survivor when the dead member's queue landed on it at once:
        // each survivor's summary says what the daemon counted for it).
        let dropped = victim["lost_packets"].as_u64().unwrap();
        assert!(lost >= dead_lost + dropped, "{stats:#}");
    }

    // Survivors + the dead member's file + what it lost = the capture, nothing twice.
    let mut views: Vec<&[Record]> = survivors.iter().map(Vec::as_slice).collect();
    views.push(&dead_records);
    let owner = owners(&synth, &views);
    let missing = owner.iter().filter(|o| o.is_none()).count() as u64;
    assert_eq!(
        missing, lost,
        "the packets in no file are those counted lost"
    );
    for (m, r) in survivors.iter().enumerate() {
        assert!(!r.is_empty(), "survivor {m} got nothing");
    }
    // The survivors went on to the end of the stream.
    assert!(
        after_kill < synth.packets.len(),
        "the stream went on after the kill"
    );
    assert!(
        owner[after_kill..].iter().all(|o| matches!(o, Some(0 | 1))),
        "what came after the kill is on the survivors"
    );

    // Among the survivors every flow is whole: the dead member's flows moved to one of
    // them (their first packets may be in its file, or lost).
    let survivors_only: Vec<Option<usize>> = owner.iter().map(|o| o.filter(|&m| m < 2)).collect();
    for (flow, members) in flow_members(&synth, &survivors_only) {
        assert_eq!(members.len(), 1, "flow {flow} is on both survivors");
    }
    let _ = dead.stderr.text();
}

#[test]
fn a_member_killed_mid_stream_under_block_loses_only_what_it_held() {
    kill_a_member("block", 64, |s| s["in_flight"].as_u64() >= Some(8));
}

#[test]
fn a_member_killed_mid_stream_leaves_its_queue_to_the_others() {
    // Its window (64 batches) full, then its queue, then batches dropped for it.
    kill_a_member("drop-oldest", 16, |s| s["lost_packets"].as_u64() > Some(0));
}

/// A `Subscriber` of server `s` in group `group`, read on a thread: what it receives, batch
/// by batch, until told to stop.
struct InProcess {
    id: u64,
    /// Batches received so far.
    batches: Arc<AtomicU64>,
    /// Packets received so far.
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    reader: thread::JoinHandle<Vec<Got>>,
}

/// One batch as an [`InProcess`] member received it.
struct Got {
    seq: u64,
    reassigned: bool,
    /// Packets in the whole batch (its header).
    count: u32,
    records: Vec<Record>,
}

impl InProcess {
    fn start(daemon: &Daemon, group: &str) -> InProcess {
        let options = ConnectOptions {
            group: Some(group.to_owned()),
            ..daemon.options(Duration::ZERO)
        };
        let mut subscriber = Subscriber::connect_with("s", options).expect("subscribe");
        let id = subscriber.id().expect("connected");
        let batches = Arc::new(AtomicU64::new(0));
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, p, s) = (batches.clone(), packets.clone(), stop.clone());
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) && start.elapsed() < DEADLINE {
                match subscriber.recv_timeout(Duration::from_millis(20)).unwrap() {
                    Received::Batch(batch) => {
                        let view = BatchView::parse(batch.as_bytes()).expect("a valid batch");
                        let records: Vec<Record> = batch
                            .iter()
                            .map(|p| (p.timestamp_nanos(), p.orig_len() as u32, p.data().to_vec()))
                            .collect();
                        assert_eq!(records.len(), batch.len());
                        p.fetch_add(records.len() as u64, Ordering::SeqCst);
                        got.push(Got {
                            seq: batch.seq(),
                            reassigned: batch.reassigned(),
                            count: view.header().count,
                            records,
                        });
                        b.fetch_add(1, Ordering::SeqCst);
                    }
                    Received::Timeout => {}
                    Received::End => break,
                }
            }
            got
        });
        InProcess {
            id,
            batches,
            packets,
            stop,
            reader,
        }
    }

    /// Stops once it received what `stats` says it was delivered; its batches.
    fn finish(self, stats: &serde_json::Value) -> Vec<Got> {
        let delivered = subscriber_of(stats, "id", self.id)["packets_out"]
            .as_u64()
            .unwrap();
        let packets = self.packets.clone();
        wait_until(&format!("{delivered} packets received in process"), || {
            packets.load(Ordering::SeqCst) >= delivered
        });
        self.stop.store(true, Ordering::SeqCst);
        let got = self.reader.join().expect("the reader thread");
        let received: usize = got.iter().map(|b| b.records.len()).sum();
        assert_eq!(received as u64, delivered);
        got
    }
}

/// Every record of `batches`, in the order received.
fn records_of(batches: &[Got]) -> Vec<Record> {
    batches.iter().flat_map(|b| b.records.clone()).collect()
}

#[test]
fn a_member_joining_mid_stream_takes_flows_and_the_first_is_told() {
    let daemon = Daemon::start(Some(&config("flow")));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(53, 500);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;

    let first = InProcess::start(&daemon, "g");
    let publisher = start_publish(&daemon, &input, &["--rate", "2500"]);
    let packets = first.packets.clone();
    wait_until("a quarter of the stream received", || {
        packets.load(Ordering::SeqCst) >= total / 4
    });
    // Batches received before the newcomer started cannot say the group changed.
    let before_join = first.batches.load(Ordering::SeqCst) as usize;
    let newcomer = Member::start(&daemon, dir.path(), "newcomer", Some("g"));
    end_publish(publisher, total);

    let stats = wait_stats(&daemon, "every packet out to the group", |s| {
        group_of(s, "g")["packets_out"] == total
    });
    let batches = first.finish(&stats);
    let theirs = finish_members(&stats, "g", vec![newcomer]).remove(0);

    let told: Vec<usize> = (0..batches.len())
        .filter(|&i| batches[i].reassigned)
        .collect();
    assert_eq!(
        told.len(),
        1,
        "one batch says the assignment changed: {told:?} of {}",
        batches.len()
    );
    assert!(
        told[0] >= before_join,
        "batch {} says so, before the newcomer came ({before_join})",
        told[0]
    );
    assert!(told[0] < batches.len() - 1, "batches came after it");

    let mine = records_of(&batches);
    let owner = owners(&synth, &[&mine, &theirs]);
    assert_all_once(&owner, "first + newcomer");
    assert!(!theirs.is_empty(), "the newcomer got packets");
    // A flow moves at most once, from the first member to the newcomer, never back.
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, o) in owner.iter().enumerate() {
        let m = o.unwrap();
        let before = last.insert(synth.flow[i], m).unwrap_or(m);
        assert!(
            before <= m,
            "flow {} went back to the first member",
            synth.flow[i]
        );
    }
    // From the newcomer's first packet on, batches are split with it: flows that start
    // there are whole, on either member.
    let join = owner.iter().position(|o| *o == Some(1)).unwrap();
    let mut started_after: HashMap<u64, BTreeSet<usize>> = HashMap::new();
    let first_packet: HashMap<u64, usize> = {
        let mut m = HashMap::new();
        for (i, &f) in synth.flow.iter().enumerate() {
            m.entry(f).or_insert(i);
        }
        m
    };
    for (i, o) in owner.iter().enumerate() {
        let flow = synth.flow[i];
        if first_packet[&flow] >= join {
            started_after.entry(flow).or_default().insert(o.unwrap());
        }
    }
    for (flow, members) in &started_after {
        assert_eq!(
            members.len(),
            1,
            "flow {flow} (started after the join) is split"
        );
    }
    let on_newcomer = started_after.values().filter(|m| m.contains(&1)).count();
    assert!(
        on_newcomer > 0 && on_newcomer < started_after.len(),
        "new flows on both members: {on_newcomer} of {} on the newcomer",
        started_after.len()
    );
    let moved = flow_members(&synth, &owner)
        .values()
        .filter(|m| m.len() > 1)
        .count();
    eprintln!(
        "join: told on batch {} of {} ({before_join} before the newcomer); {} new flows, \
         {on_newcomer} on the newcomer; {moved} flows moved; packets {} + {}",
        told[0],
        batches.len(),
        started_after.len(),
        mine.len(),
        theirs.len()
    );
}

#[test]
fn batch_balancing_gives_whole_batches_in_turn() {
    let daemon = Daemon::start(Some(&config("batch")));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(59, 200);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;

    let members = [
        InProcess::start(&daemon, "g"),
        InProcess::start(&daemon, "g"),
    ];
    publish(&daemon, "s", &input, &["--batch", "16"], total);
    let stats = wait_stats(&daemon, "every packet out to the group", |s| {
        group_of(s, "g")["packets_out"] == total
    });
    let got: Vec<Vec<Got>> = members.into_iter().map(|m| m.finish(&stats)).collect();

    // Every batch whole to one member, the members in turn.
    let mut seqs: Vec<(u64, usize)> = Vec::new();
    for (m, batches) in got.iter().enumerate() {
        assert!(
            batches.len() > 1,
            "member {m} got {} batches",
            batches.len()
        );
        for b in batches {
            assert_eq!(
                b.records.len(),
                b.count as usize,
                "batch {} is whole",
                b.seq
            );
            // The first member is told when the second joins; nothing changes after.
            assert!(!b.reassigned || (m == 0 && b.seq == batches[0].seq));
            seqs.push((b.seq, m));
        }
    }
    seqs.sort();
    for w in seqs.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "every batch once: {seqs:?}");
        assert_ne!(
            w[1].1, w[0].1,
            "batch {} to the same member as the one before",
            w[1].0
        );
    }
    let records: Vec<Vec<Record>> = got.iter().map(|b| records_of(b)).collect();
    let views: Vec<&[Record]> = records.iter().map(Vec::as_slice).collect();
    assert_all_once(&owners(&synth, &views), "batch balancing");
}

/// Where a frame's two addresses are (offset and length of each), after the Ethernet
/// header and its VLAN tags: IPv4's and IPv6's source and destination, ARP's sender and
/// target IPv4 addresses; and whether it is ARP. `None` for anything else.
fn address_fields(frame: &[u8]) -> Option<([(usize, usize); 2], bool)> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([frame[at], frame[at + 1]]);
    while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
        at += 4;
        ethertype = u16::from_be_bytes([frame[at], frame[at + 1]]);
    }
    let l3 = at + 2;
    match ethertype {
        0x0800 => Some(([(l3 + 12, 4), (l3 + 16, 4)], false)),
        0x86dd => Some(([(l3 + 8, 16), (l3 + 24, 16)], false)),
        0x0806 => Some(([(l3 + 14, 4), (l3 + 24, 4)], true)),
        _ => None,
    }
}

/// An address pair, either way round, and whether it is ARP's.
type Pair = (bool, Vec<u8>, Vec<u8>);

/// A frame's address pair, either way round (ARP apart: it hashes by its own rule).
fn address_pair(frame: &[u8]) -> Pair {
    let ([(a, n), (b, _)], arp) = address_fields(frame).expect("IP or ARP");
    let (x, y) = (frame[a..a + n].to_vec(), frame[b..b + n].to_vec());
    (arp, x.clone().min(y.clone()), x.max(y))
}

#[test]
fn ip_pair_balancing_keeps_each_address_pair_on_one_member() {
    let daemon = Daemon::start(Some(&config("ip-pair")));
    let dir = tempfile::tempdir().unwrap();
    // Every address mapped into a few, so that each pair carries many flows (ports,
    // protocols, fragments). Checksums no longer hold; the daemon does not look.
    let mut synth = traffic::mixed(61, 300);
    let pool = |addr: &[u8]| -> Vec<u8> {
        let h = addr.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut new = addr.to_vec();
        let last = new.len() - 1;
        new[..last].fill(0x0a);
        new[last] = (h % 10) as u8 + 1;
        new
    };
    for p in synth.packets.iter_mut() {
        let mut data = p.data().to_vec();
        let (fields, _) = address_fields(&data).expect("mixed is IP and ARP");
        for (at, n) in fields {
            let new = pool(&data[at..at + n]);
            data[at..at + n].copy_from_slice(&new);
        }
        *p = Packet::with_orig_len(*p.timestamp(), data, p.orig_len());
    }
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;

    let members: Vec<Member> = (0..2)
        .map(|i| Member::start(&daemon, dir.path(), &format!("m{i}"), Some("g")))
        .collect();
    publish(&daemon, "s", &input, &["--batch", "64"], total);
    let records = finish_group(&daemon, "g", members, total);
    let views: Vec<&[Record]> = records.iter().map(Vec::as_slice).collect();
    let owner = owners(&synth, &views);
    assert_all_once(&owner, "ip-pair");

    let mut pairs: BTreeMap<Pair, (BTreeSet<usize>, BTreeSet<u64>)> = BTreeMap::new();
    for (i, p) in synth.packets.iter().enumerate() {
        let entry = pairs.entry(address_pair(p.data())).or_default();
        entry.0.insert(owner[i].unwrap());
        entry.1.insert(synth.flow[i]);
    }
    let mut per_member = [0usize; 2];
    for (pair, (members, _)) in &pairs {
        assert_eq!(
            members.len(),
            1,
            "address pair {pair:?} is split over members"
        );
        per_member[*members.first().unwrap()] += 1;
    }
    let shared = pairs.values().filter(|(_, flows)| flows.len() > 1).count();
    assert!(shared > 10, "{shared} pairs carry more than one flow");
    assert!(
        per_member.iter().all(|&n| n > pairs.len() / 4),
        "pairs per member {per_member:?}"
    );
    eprintln!(
        "ip-pair: {} pairs, {shared} with several flows, per member {per_member:?}",
        pairs.len()
    );
}

#[test]
fn members_that_joined_under_batch_balancing_take_flows_after_a_reload() {
    let daemon = Daemon::start(Some(&config("batch")));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(67, 200);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;
    let members = [
        InProcess::start(&daemon, "g"),
        InProcess::start(&daemon, "g"),
    ];

    std::fs::write(daemon.runtime().join("packet-ipcd.toml"), config("flow")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the server reconfigured", || {
        daemon.log_text().contains("configuration changed")
    });
    publish(&daemon, "s", &input, &["--batch", "32"], total);
    let stats = wait_stats(&daemon, "every packet out to the group", |s| {
        group_of(s, "g")["packets_out"] == total
    });
    let got: Vec<Vec<Got>> = members.into_iter().map(|m| m.finish(&stats)).collect();
    for (m, batches) in got.iter().enumerate() {
        // Each is told that its flows changed, once.
        let told: Vec<bool> = batches.iter().map(|b| b.reassigned).collect();
        assert!(told[0], "member {m} is told on its first batch");
        assert_eq!(
            told.iter().filter(|t| **t).count(),
            1,
            "member {m}: {told:?}"
        );
    }
    let records: Vec<Vec<Record>> = got.iter().map(|b| records_of(b)).collect();
    let views: Vec<&[Record]> = records.iter().map(Vec::as_slice).collect();
    let owner = owners(&synth, &views);
    assert_all_once(&owner, "after the reload");
    assert_flows_whole_and_spread(&synth, &owner, 2, "after the reload");
}

/// A frame's transport flow, either way round: its address pair, port pair and protocol
/// (IPv4 or IPv6, TCP or UDP, no tags, as `traffic::flow_shaped` makes them).
fn five_tuple(frame: &[u8]) -> (Vec<u8>, u8) {
    let ([(a, n), (b, _)], _) = address_fields(frame).expect("IP");
    let (protocol, l4) = if n == 4 {
        (frame[14 + 9], 14 + usize::from(frame[14] & 0x0f) * 4)
    } else {
        (frame[14 + 6], 14 + 40)
    };
    let mut ends = [
        [&frame[a..a + n], &frame[l4..l4 + 2]].concat(),
        [&frame[b..b + n], &frame[l4 + 2..l4 + 4]].concat(),
    ];
    ends.sort();
    (ends.concat(), protocol)
}

#[test]
fn a_long_stream_goes_round_the_selection_rings() {
    // More packets per member than the part of its selection ring it keeps to, so that
    // the hub goes back to the ring's start many times.
    let daemon = Daemon::start(Some(&config("flow")));
    let dir = tempfile::tempdir().unwrap();
    let packets = traffic::flow_shaped(3, 64, 150_000);
    let input = dir.path().join("shaped.pcap");
    traffic::write_pcap(&input, &packets).unwrap();
    let total = packets.len() as u64;
    let members: Vec<Member> = (0..2)
        .map(|i| Member::start(&daemon, dir.path(), &format!("m{i}"), Some("g")))
        .collect();
    publish(&daemon, "s", &input, &["--batch", "256"], total);
    let records = finish_group(&daemon, "g", members, total);

    let index: HashMap<u64, usize> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| (p.timestamp_nanos(), i))
        .collect();
    let mut owner = vec![None; packets.len()];
    let mut flows: HashMap<(Vec<u8>, u8), BTreeSet<usize>> = HashMap::new();
    for (m, r) in records.iter().enumerate() {
        assert!(r.len() > 40_000, "member {m} got {} packets", r.len());
        assert_in_order(r, &index, &format!("member {m}"));
        for (ts, _, data) in r {
            let i = index[ts];
            assert!(data == packets[i].data(), "packet {i} as published");
            assert!(owner[i].replace(m).is_none(), "packet {i} twice");
            flows.entry(five_tuple(data)).or_default().insert(m);
        }
    }
    assert_all_once(&owner, "a long stream");
    assert!(flows.len() > 1000, "{} flows", flows.len());
    for (flow, members) in &flows {
        assert_eq!(members.len(), 1, "flow {flow:?} is split");
    }
}

#[test]
fn eight_members_share_the_flows_fairly() {
    let daemon = Daemon::start(Some(&config("flow")));
    let dir = tempfile::tempdir().unwrap();
    let synth = traffic::mixed(71, 2000);
    let input = capture_file(dir.path(), &synth);
    let total = synth.packets.len() as u64;
    let members: Vec<Member> = (0..8)
        .map(|i| Member::start(&daemon, dir.path(), &format!("m{i}"), Some("g")))
        .collect();
    publish(&daemon, "s", &input, &[], total);
    let records = finish_group(&daemon, "g", members, total);
    let views: Vec<&[Record]> = records.iter().map(Vec::as_slice).collect();
    let owner = owners(&synth, &views);
    assert_all_once(&owner, "eight members");
    assert_flows_whole_and_spread(&synth, &owner, 8, "eight members");
    eprintln!(
        "eight members: packets per member {:?} of {total}",
        records.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn a_share_larger_than_a_member_joined_for_is_lost_for_it_not_waited_for() {
    // A member's selection ring is sized by the server's max-batch-bytes when it joins; a
    // reload may raise it. Under block, a share that can never fit must not stall the
    // server: it is lost for that member (counted and said), and everyone else goes on.
    let daemon = Daemon::start(Some(
        "[servers.s]\noverflow = \"block\"\nmax-batch-bytes = 65536\n",
    ));
    let options = daemon.options(Duration::ZERO);
    let mut member = Subscriber::connect_with(
        "s",
        ConnectOptions {
            group: Some("g".into()),
            ..options.clone()
        },
    )
    .unwrap();
    let mut plain = Subscriber::connect_with("s", options.clone()).unwrap();
    std::fs::write(
        daemon.runtime().join("packet-ipcd.toml"),
        "[servers.s]\noverflow = \"block\"\nmax-batch-bytes = 16777216\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the server reconfigured", || {
        daemon.log_text().contains("configuration changed")
    });
    let mut producer = packet_ipc::Producer::connect_with("s", options).unwrap();
    let big = util::packets(20_000, 40, 1);
    let small = util::packets(10, 60, 2);
    producer.send(&big).unwrap();
    producer.send(&small).unwrap();
    let recv = |s: &mut Subscriber| match s.recv_timeout(DEADLINE).unwrap() {
        Received::Batch(b) => b,
        other => panic!("expected a batch, got {other:?}"),
    };
    assert_eq!(recv(&mut plain).len(), 20_000);
    assert_eq!(recv(&mut plain).len(), 10);
    let got = recv(&mut member);
    assert_eq!(got.len(), 10, "the member's next batch is the small one");
    assert_eq!((got.lost(), got.lost_packets()), (1, 20_000));
    assert!(daemon.log_text().contains("larger than it joined for"));
}
