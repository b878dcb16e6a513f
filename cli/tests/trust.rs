//! Trust: every subscriber gets each producer's own bytes, however producers come and go,
//! and another local user (a real one: these tests create users and run the attacker
//! under `setpriv`) cannot stall, spy on, answer for, or redirect the broker.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use packet_ipc::broker::testing::{
    attack::FORGED_SERVER, tagged_packet as tagged, HostileProducer,
};
use packet_ipc::{AsIpcPacket, Packet};

use crate::util::{
    as_user, daemon_bin, fd_targets, open_fds, peer_as, read_batch_file, settled_fds, summary,
    uid_of, users, wait_output, wait_stderr_line, Daemon, ALLOWED, DEADLINE, DENIED,
};

/// One producer's part: its tag, its batches, packets per batch, largest packet.
#[derive(Clone, Copy, Debug)]
struct Plan {
    tag: u32,
    batches: u32,
    packets: u32,
    size: usize,
}

impl Plan {
    /// Producer `tag`'s plan: 1 to 4 batches of 1 to 200 packets of 12 to 611 bytes.
    fn of(tag: u32) -> Plan {
        Plan {
            tag,
            batches: 1 + tag % 4,
            packets: 1 + (tag * 37) % 200,
            size: 12 + (tag as usize * 97) % 600,
        }
    }

    fn total(&self) -> u64 {
        u64::from(self.batches) * u64::from(self.packets)
    }

    /// `packet-ipc-peer produce` with this plan.
    fn start(&self, daemon: &Daemon, server: &str) -> Child {
        daemon.peer(&[
            "produce",
            server,
            "--tag",
            &self.tag.to_string(),
            "--batches",
            &self.batches.to_string(),
            "--packets",
            &self.packets.to_string(),
            "--size",
            &self.size.to_string(),
            "--reconnect-wait-ms",
            "0",
        ])
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// `got` is exactly what the producers of `plans` published: every packet byte for byte,
/// each producer's packets in its order, none missing, none from anyone else.
fn assert_each_producers_own(who: &str, got: &[Packet], plans: &HashMap<u32, Plan>) {
    let mut next: HashMap<u32, (u32, u32)> = HashMap::new();
    for (n, p) in got.iter().enumerate() {
        let data = p.data();
        assert!(
            data.len() >= 12,
            "{who}: packet {n} of {} bytes",
            data.len()
        );
        let (tag, batch, i) = (u32_at(data, 0), u32_at(data, 4), u32_at(data, 8));
        let plan = plans
            .get(&tag)
            .unwrap_or_else(|| panic!("{who}: packet {n} is from nobody who published: {tag}"));
        let expected = next.entry(tag).or_insert((0, 0));
        assert_eq!(
            (batch, i),
            *expected,
            "{who}: packet {n}: producer {tag} out of order"
        );
        assert!(
            data == tagged(tag, batch, i, plan.size).as_slice(),
            "{who}: packet {n} (producer {tag}, batch {batch}, packet {i}) differs"
        );
        assert_eq!(p.orig_len(), data.len());
        *expected = if i + 1 == plan.packets {
            (batch + 1, 0)
        } else {
            (batch, i + 1)
        };
    }
    for plan in plans.values() {
        assert_eq!(
            next.get(&plan.tag).copied(),
            Some((plan.batches, 0)),
            "{who}: producer {} delivered in full",
            plan.tag
        );
    }
}

/// `packet-ipc-peer subscribe SERVER --count COUNT` as `user` (else as this process's
/// user), once it has subscribed.
fn subscribed(daemon: &Daemon, server: &str, user: Option<&str>, count: u64) -> Child {
    let count = count.to_string();
    let args = [
        "subscribe",
        server,
        "--count",
        &count,
        "--reconnect-wait-ms",
        "0",
    ];
    let mut sub = match user {
        Some(user) => peer_as(daemon, user, &args),
        None => daemon.peer(&args),
    };
    wait_stderr_line(&mut sub, "subscribed to");
    sub
}

/// Waits until `check` holds for the stats of server `server`.
fn wait_stats(
    options: &packet_ipc::ConnectOptions,
    server: &str,
    what: &str,
    check: impl Fn(&packet_ipc::broker::ServerStats) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = packet_ipc::stats(options, Some(server)).unwrap();
        if check(&s[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 1 of the trust review: a producer that takes a departed one's place must never
/// have its batches read from the departed one's memory, nor the departed one write into
/// what subscribers read.
#[test]
fn hundreds_of_producers_in_turn_and_side_by_side_each_deliver_their_own_bytes() {
    const HOSTILE: u32 = 0xF0F1;
    const FORGED: u32 = 0xF0F0;
    let daemon = Daemon::start(Some(
        "[servers.t]\noverflow = \"block\"\nmax-producers = 64\n",
    ));
    let options = daemon.options(Duration::ZERO);
    let in_turn: Vec<Plan> = (1..=200).map(Plan::of).collect();
    let side_by_side: Vec<Plan> = (201..=300).map(Plan::of).collect();
    let hostile_plan = Plan {
        tag: HOSTILE,
        batches: 1,
        packets: 20,
        size: 100,
    };
    let plans: HashMap<u32, Plan> = in_turn
        .iter()
        .chain(&side_by_side)
        .chain([&hostile_plan])
        .map(|p| (p.tag, *p))
        .collect();
    let total: u64 = plans.values().map(Plan::total).sum();

    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<_> = (0..2).map(|n| dir.path().join(format!("sub{n}"))).collect();
    let subs: Vec<Child> = outs
        .iter()
        .map(|out| {
            let mut sub = daemon.peer(&[
                "subscribe",
                "t",
                "--count",
                &total.to_string(),
                "--idle-ms",
                "30000",
                "--reconnect-wait-ms",
                "0",
                "--out",
                out.to_str().unwrap(),
            ]);
            wait_stderr_line(&mut sub, "subscribed to");
            sub
        })
        .collect();

    // A producer publishes once; once both subscribers are done with its batch, it leaves
    // without a word, keeping its pool mapped and writable.
    let mut hostile = HostileProducer::connect("t", &options).unwrap();
    let batch: Vec<Packet> = (0..hostile_plan.packets)
        .map(|i| Packet::new(std::time::SystemTime::now(), tagged(HOSTILE, 0, i, 100)))
        .collect();
    hostile.send(&batch).unwrap();
    wait_stats(&options, "t", "the first batch read", |s| {
        s.subscribers.len() == 2
            && s.subscribers
                .iter()
                .all(|c| c.batches_out == 1 && c.queued == 0 && c.in_flight == 0)
    });
    hostile.hang_up().unwrap();
    wait_stats(&options, "t", "the producer gone", |s| s.producers == 0);

    // From now on it writes a forged batch into every slot of its old pool, over and over.
    let forged: Vec<Packet> = (0..8)
        .map(|i| Packet::new(std::time::SystemTime::now(), tagged(FORGED, 0, i, 64)))
        .collect();
    let mut forged_bytes = Vec::new();
    packet_ipc::batch::encode(&forged, 0, 0, &mut forged_bytes).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert!(hostile.write_everywhere(&forged_bytes).unwrap() > 0);
                rounds += 1;
                std::thread::yield_now();
            }
            rounds
        })
    };

    // Two hundred producers one after the other, then a hundred in two waves of fifty.
    for plan in &in_turn {
        let out = wait_output(plan.start(&daemon, "t"), DEADLINE);
        assert!(out.status.success(), "producer {}: {out:?}", plan.tag);
    }
    for wave in side_by_side.chunks(50) {
        let running: Vec<(u32, Child)> = wave
            .iter()
            .map(|plan| (plan.tag, plan.start(&daemon, "t")))
            .collect();
        for (tag, child) in running {
            let out = wait_output(child, DEADLINE);
            assert!(out.status.success(), "producer {tag}: {out:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(forger.join().unwrap() > 0, "the forger wrote its old pool");

    for (n, sub) in subs.into_iter().enumerate() {
        let out = wait_output(sub, DEADLINE);
        let s = summary(&out);
        assert_eq!(s["packets"], total, "subscriber {n}: {s}");
        assert_eq!(s["lost_batches"], 0, "subscriber {n}: {s}");
        let got = read_batch_file(&outs[n]);
        assert_each_producers_own(&format!("subscriber {n}"), &got, &plans);
    }
    let s = packet_ipc::stats(&options, Some("t")).unwrap();
    assert_eq!(s[0].packets_in, total, "{s:?}");
    assert!(s[0].subscribers.iter().all(|c| c.skipped == 0), "{s:?}");
}

/// Item 3: requests flooding the spool, each naming a socket that takes a connection and
/// never says a word, cannot stall the daemon: its own user and another user get in,
/// stats answer, the attacker's excess waits its turns against its own uid, what it held
/// is released once it gives up, and SIGTERM works in the middle of a flood.
#[test]
fn a_flood_of_requests_from_another_user_stalls_nobody() {
    if !users("a flood from another user") {
        return;
    }
    let daemon = Daemon::start(Some("[servers.open]\n"));
    let options = daemon.options(Duration::ZERO);
    drop(packet_ipc::stats(&options, None).unwrap());
    // Once what the daemon opens for its first client is open (CI once saw one more
    // descriptor for the whole test after a baseline taken at once).
    let fds_before = settled_fds(daemon.pid());
    let targets_before = fd_targets(daemon.pid());
    let flood = || {
        let mut attacker = Killed(peer_as(
            &daemon,
            DENIED,
            &[
                "attack",
                "flood",
                "open",
                "--requests",
                "600",
                "--hold-ms",
                "60000",
            ],
        ));
        wait_stderr_line(&mut attacker.0, "flooded");
        attacker
    };
    let attacker = flood();

    // Meanwhile the daemon's user and another user both subscribe and publish.
    let mine = subscribed(&daemon, "open", None, 512);
    let theirs = subscribed(&daemon, "open", Some(ALLOWED), 512);
    let producer = peer_as(
        &daemon,
        ALLOWED,
        &[
            "produce",
            "open",
            "--batches",
            "2",
            "--reconnect-wait-ms",
            "0",
        ],
    );
    assert!(wait_output(producer, DEADLINE).status.success());
    for sub in [mine, theirs] {
        assert_eq!(summary(&wait_output(sub, DEADLINE))["packets"], 512);
    }
    let s = packet_ipc::stats(&options, Some("open")).unwrap();
    assert_eq!(s[0].packets_in, 512);

    // The attacker's requests beyond its bound wait their turns, against its uid.
    let bob = uid_of(DENIED);
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("wait their turn") && l.contains(&format!("uid={bob}"))),
        "{log}"
    );
    // Once it gives up, what its requests held is released: the daemon's descriptors
    // come back to what they were.
    drop(attacker);
    let deadline = Instant::now() + DEADLINE;
    while open_fds(daemon.pid()) > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        open_fds(daemon.pid()),
        fds_before,
        "before: {targets_before:?}\nafter: {:?}",
        fd_targets(daemon.pid())
    );
    // SIGTERM in the middle of another flood.
    let _attacker = flood();
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM during the flood: {status:?}");
}

/// Item 4: request files exchanged with FIFOs (`renameat2(RENAME_EXCHANGE)`) in a loop, and
/// links to `/dev/zero` named as requests, in every spool directory, cannot block the
/// daemon: everyone else gets in and gets answers all along.
#[test]
fn swapping_requests_for_fifos_and_links_blocks_nothing() {
    if !users("request swaps by another user") {
        return;
    }
    let daemon = Daemon::start(Some("[servers.open]\n"));
    let options = daemon.options(Duration::ZERO);
    let mut attacker = peer_as(&daemon, DENIED, &["attack", "swap", "open", "--ms", "6000"]);
    wait_stderr_line(&mut attacker, "swapping");
    for round in 0..5 {
        let sub = subscribed(&daemon, "open", None, 256);
        let producer = daemon.peer(&["produce", "open", "--batches", "1"]);
        assert!(wait_output(producer, DEADLINE).status.success(), "{round}");
        assert_eq!(summary(&wait_output(sub, DEADLINE))["packets"], 256);
        let s = packet_ipc::stats(&options, Some("open")).unwrap();
        assert_eq!(s[0].packets_in, 256 * (round + 1));
    }
    let out = wait_output(attacker, DEADLINE);
    let swaps = summary(&out)["swaps"].as_u64().unwrap();
    assert!(swaps > 100, "the attacker swapped {swaps} times");
    let log = daemon.log_text();
    assert!(log.contains("refusing a request"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(daemon.terminate().success());
}

/// Item 5: another user who connects to clients' sockets first and answers in the
/// daemon's place is not listened to: ten subscribers and three stats runs all get the
/// daemon's real answers.
#[test]
fn another_user_cannot_answer_for_the_daemon() {
    if !users("an impostor answering for the daemon") {
        return;
    }
    let daemon = Daemon::start(Some("[servers.open]\n"));
    let mut attacker = peer_as(
        &daemon,
        DENIED,
        &["attack", "impersonate", "open", "--ms", "8000"],
    );
    wait_stderr_line(&mut attacker, "impersonating");
    for run in 0..10 {
        let sub = subscribed(&daemon, "open", None, 64);
        let producer = daemon.peer(&["produce", "open", "--batches", "1", "--packets", "64"]);
        assert!(
            wait_output(producer, DEADLINE).status.success(),
            "run {run}"
        );
        let out = wait_output(sub, DEADLINE);
        assert!(out.status.success(), "run {run}: {out:?}");
        assert_eq!(summary(&out)["packets"], 64, "run {run}");
    }
    for run in 0..3 {
        let out = daemon.cli().args(["stats", "--json"]).output().unwrap();
        assert!(out.status.success(), "stats run {run}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(FORGED_SERVER), "forged counters: {text}");
        let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(stats["servers"][0]["name"], "open", "{stats}");
        assert_eq!(stats["servers"][0]["packets_in"], 640, "{stats}");
    }
    let out = wait_output(attacker, DEADLINE);
    let connected = summary(&out)["connected"].as_u64().unwrap();
    assert!(
        connected > 0,
        "the impostor reached the clients' sockets ({connected} times) and was ignored"
    );
}

/// A process killed when dropped (when the test ends, passed or failed).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes `path` (a test's directory in /tmp) when dropped.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Item 6: with no runtime directory configured, a client falls back on
/// `/tmp/packet-ipc-<uid>`; another user who made that directory first (and runs a daemon
/// in it) gets nothing: the victim's clients and daemon refuse it, naming its owner.
#[test]
fn a_runtime_directory_planted_by_another_user_is_refused() {
    if !users("a runtime directory planted by another user") {
        return;
    }
    if Path::new(packet_ipc::rendezvous::SYSTEM_RUNTIME_DIR)
        .join("rendezvous.json")
        .exists()
    {
        eprintln!("skipped: a system daemon's rendezvous file comes before /tmp");
        return;
    }
    let (alice, bob) = (uid_of(ALLOWED), uid_of(DENIED));
    let planted = std::path::PathBuf::from(format!("/tmp/packet-ipc-{alice}"));
    let _ = std::fs::remove_dir_all(&planted);
    let _cleanup = Cleanup(planted.clone());
    assert!(as_user(DENIED, "mkdir")
        .arg(&planted)
        .status()
        .unwrap()
        .success());
    let _bobs = Killed(
        as_user(DENIED, daemon_bin())
            .env("PACKET_IPC_RUNTIME_DIR", &planted)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rendezvous = planted.join("rendezvous.json");
    let deadline = Instant::now() + DEADLINE;
    while !rendezvous.exists() {
        assert!(Instant::now() < deadline, "the other user's daemon started");
        std::thread::sleep(Duration::from_millis(20));
    }

    let owner = format!("uid {bob}");
    let capture = std::fs::File::open(crate::cli::loopback_pcap()).unwrap();
    let publish = as_user(ALLOWED, env!("CARGO_BIN_EXE_packet-ipc"))
        .args(["publish", "default", "-"])
        .stdin(capture)
        .output()
        .unwrap();
    let servers = as_user(ALLOWED, env!("CARGO_BIN_EXE_packet-ipc"))
        .arg("servers")
        .output()
        .unwrap();
    for (what, out) in [("publish", &publish), ("servers", &servers)] {
        assert_eq!(out.status.code(), Some(69), "{what}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(planted.to_str().unwrap()) && err.contains(&owner),
            "{what}: {err}"
        );
    }
    // (Asked as its user: nobody else trusts that directory.)
    let out = as_user(DENIED, env!("CARGO_BIN_EXE_packet-ipc"))
        .args(["stats", "--json"])
        .env("PACKET_IPC_RUNTIME_DIR", &planted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stats["servers"][0]["packets_in"], 0,
        "nothing reached the other user's daemon: {stats}"
    );

    let out = as_user(ALLOWED, daemon_bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(planted.to_str().unwrap()) && err.contains(&format!("uid {bob}")),
        "{err}"
    );
}

/// Item 7: a root daemon pointed at a directory another user made (or one that others may
/// write, holding their links) refuses it, and never writes through the links planted in
/// it: a root-only file keeps its bytes, a root-only directory its mode.
#[test]
fn a_root_daemon_follows_no_link_another_user_planted() {
    if !users("links planted by another user") {
        return;
    }
    let private = tempfile::tempdir().unwrap(); // root's, 0700
    let secret = private.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vault = private.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plant = |dir: &Path| {
        for (link, target) in [
            ("packet-ipcd.lock", &secret),
            ("ctl", &vault),
            ("rendezvous.json", &secret),
            ("srv", &vault),
        ] {
            let ok = as_user(DENIED, "ln")
                .arg("-s")
                .arg(target)
                .arg(dir.join(link))
                .status()
                .unwrap()
                .success();
            assert!(ok, "plant {link}");
        }
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    // A directory the other user made.
    let theirs = std::path::PathBuf::from(format!("/tmp/pipc-planted-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&theirs);
    let _cleanup = Cleanup(theirs.clone());
    assert!(as_user(DENIED, "mkdir")
        .arg(&theirs)
        .status()
        .unwrap()
        .success());
    plant(&theirs);
    let out = Command::new(daemon_bin())
        .env("PACKET_IPC_RUNTIME_DIR", &theirs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("belongs to uid {}", uid_of(DENIED))),
        "{err}"
    );

    // A directory of root's that everyone may write, where the other user planted links.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    plant(open.path());
    let out = Command::new(daemon_bin())
        .env("PACKET_IPC_RUNTIME_DIR", open.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&vault), 0o700);
    assert_eq!(std::fs::read_dir(&vault).unwrap().count(), 0);
}

/// Item 10: a rendezvous file that is a FIFO or a device gets a prompt, clear error (not
/// a hang, not an endless read); sizes nobody could mean are usage errors.
#[test]
fn unbounded_inputs_get_a_prompt_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rendezvous.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        for args in [&["servers"][..], &["stats"], &["subscribe", "x"]] {
            let child = Command::new(env!("CARGO_BIN_EXE_packet-ipc"))
                .args(args)
                .env("PACKET_IPC_RENDEZVOUS", path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = wait_output(child, DEADLINE);
            assert_eq!(out.status.code(), Some(69), "{args:?} on {path:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("not a regular file"), "{args:?}: {err}");
        }
    }
    for (args, what) in [
        (
            &["bench", "--packet-size", "4000000000"][..],
            "--packet-size",
        ),
        (&["bench", "--subscribers", "0"], "--subscribers"),
        (&["bench", "--batch", "0"], "--batch"),
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_packet-ipc"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child, DEADLINE);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(what));
    }
}

/// Item 12: a start that fails half-way (here: the machine will not give the 60th
/// server's thread) leaves no spool directory and no rendezvous file behind.
#[test]
fn a_failed_start_leaves_nothing_behind() {
    let what = "a failed start as another user";
    if !users(what) || !crate::util::have_tool(what, "prlimit", "util-linux") {
        return;
    }
    let runtime = std::path::PathBuf::from(format!("/tmp/pipc-failed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runtime);
    let _cleanup = Cleanup(runtime.clone());
    let config = tempfile::NamedTempFile::new().unwrap();
    let servers: String = (0..2000).map(|i| format!("[servers.s{i}]\n")).collect();
    std::fs::write(config.path(), servers).unwrap();
    std::fs::set_permissions(config.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("prlimit")
        .arg("--nproc=60")
        .arg("--")
        .arg("setpriv")
        .args([
            &format!("--reuid={DENIED}"),
            &format!("--regid={DENIED}"),
            "--init-groups",
            "--",
        ])
        .arg(daemon_bin())
        .arg("--config")
        .arg(config.path())
        .env("PACKET_IPC_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(71), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("packet-ipcd: server s"), "{err}");
    let left: Vec<_> = std::fs::read_dir(runtime.join("srv"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool directories left: {}", left.len());
    assert!(!runtime.join("rendezvous.json").exists());
}

/// Item 12: `stats` shows the pids of a server's clients only to its members (and to
/// root); the counters are for everyone.
#[test]
fn stats_show_pids_only_to_members() {
    if !users("pids in stats for members only") {
        return;
    }
    let daemon = Daemon::start(Some(&format!(
        "[servers.secure]\nproducer-group = \"{g}\"\nsubscriber-group = \"{g}\"\n[servers.open]\n",
        g = crate::util::GROUP
    )));
    let mut member = subscribed(&daemon, "secure", Some(ALLOWED), 1);
    let mut plain = subscribed(&daemon, "open", None, 1);
    let stats_as = |user: &str| -> serde_json::Value {
        let out = as_user(user, env!("CARGO_BIN_EXE_packet-ipc"))
            .args(["stats", "--json"])
            .env("PACKET_IPC_RUNTIME_DIR", daemon.runtime())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let server = |v: &serde_json::Value, name: &str| {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    let outsider = stats_as(DENIED);
    let secure = server(&outsider, "secure");
    assert_eq!(
        secure["subscribers"].as_array().unwrap().len(),
        1,
        "{secure}"
    );
    assert!(secure["subscribers"][0]["pid"].is_null(), "{secure}");
    assert!(server(&outsider, "open")["subscribers"][0]["pid"].is_u64());
    let insider = stats_as(ALLOWED);
    assert_eq!(
        server(&insider, "secure")["subscribers"][0]["pid"],
        member.id(),
        "{insider}"
    );
    for child in [&mut member, &mut plain] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
