//! Hostile clients against the real daemon: garbage on their sockets, descriptors where
//! none belong, and lies and garbage written into the rings they share with it. Each is
//! cut off alone, with a reason, logged once; the daemon stays up, and a well-behaved
//! producer and subscriber running meanwhile lose nothing.

use std::process::Child;
use std::time::{Duration, Instant};

use packet_ipc::broker::testing::{HostileProducer, HostileSubscriber, SilentClient};
use packet_ipc::ConnectOptions;

use crate::util::{
    open_fds, packets, settled_fds, summary, wait_output, wait_stderr_line, Daemon, DEADLINE,
};

/// What a test does to a hostile producer.
type ProducerAttack = fn(&mut HostileProducer) -> packet_ipc::Result<()>;
/// What a test does to a hostile subscriber.
type SubscriberAttack = fn(&mut HostileSubscriber) -> packet_ipc::Result<()>;

fn garbage(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.raw_frame(b"\xde\xad\xbe\xef not a frame at all \x00\x01\x02", false)
}

fn a_descriptor_attached(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    // A well-formed wake-up, but carrying a file descriptor.
    p.raw_frame(&[6, 0, 0, 0, 0, 0, 0, 0], true)
}

fn an_oversized_frame(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    let mut big = vec![6u8, 0, 0, 0, 0, 0, 0, 0];
    big.resize(4096, 0x41);
    p.raw_frame(&big, false)
}

fn a_frame_only_the_daemon_sends(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    // A "refused" frame (kind 2).
    p.raw_frame(&[2, 0, 0, 0, 0, 0, 0, 0, b'x'], false)
}

fn a_wild_ring_head(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.set_head(1_000_000_000_000)
}

fn a_slot_beyond_its_pool(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.publish(u32::MAX - 3, 4096, 1)
}

fn a_batch_over_max_batch_bytes(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.publish(0, 2 << 20, 1)
}

fn more_packets_than_the_length_holds(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.publish(0, 4096, 1_000_000)
}

fn scribbled_region(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.scribble(42)
}

fn a_wild_release_tail(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    // Publish a real batch so that the daemon writes a release, then lie about taking
    // releases back.
    p.send(&packets(4, 100, 3))?;
    p.set_release_tail(u64::MAX / 3)?;
    p.send(&packets(4, 100, 4))
}

fn sub_garbage(s: &mut HostileSubscriber) -> packet_ipc::Result<()> {
    s.raw_frame(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f garbage", false)
}

fn sub_descriptor_attached(s: &mut HostileSubscriber) -> packet_ipc::Result<()> {
    s.raw_frame(&[8, 0, 0, 0, 0, 0, 0, 0], true)
}

fn sub_tail_beyond_head(s: &mut HostileSubscriber) -> packet_ipc::Result<()> {
    s.set_tail(12_345_678)
}

fn sub_scribbled_region(s: &mut HostileSubscriber) -> packet_ipc::Result<()> {
    s.scribble(7)
}

/// A daemon on `config` (with a server `h`), a subscriber of `h` waiting for 12800 packets,
/// and a producer sending them over a second, started before any attack.
fn well_behaved_pair(config: &str) -> (Daemon, ConnectOptions, Child, Child) {
    let daemon = Daemon::start(Some(config));
    let options = daemon.options(Duration::ZERO);
    // The producers' 12800 packets, and 8 of a hostile producer that sends real batches.
    let mut sub = daemon.peer(&["subscribe", "h", "--count", "12808", "--idle-ms", "3000"]);
    wait_stderr_line(&mut sub, "subscribed to");
    let mut good = daemon.peer(&[
        "produce",
        "h",
        "--batches",
        "50",
        "--pause-us",
        "40000",
        "--size",
        "64",
    ]);
    wait_stderr_line(&mut good, "connected to");
    (daemon, options, sub, good)
}

/// The well-behaved pair finished, and the subscriber got every packet.
fn assert_pair_unharmed(good: Child, sub: Child) {
    assert!(wait_output(good, DEADLINE).status.success());
    let s = summary(&wait_output(sub, DEADLINE));
    let packets = s["packets"].as_u64().unwrap();
    assert!(
        packets == 12800 || packets == 12808,
        "the well-behaved subscriber got everything: {s}"
    );
    assert_eq!(s["lost_batches"], 0);
    assert_eq!(s["reconnects"], 0, "its server never restarted");
}

/// Each `id` was logged as dropped exactly once, and nothing panicked.
fn assert_logged_once(daemon: &Daemon, role: &str, ids: &[u64]) {
    let log = daemon.log_text();
    for id in ids {
        let lines = log
            .lines()
            .filter(|l| l.contains("dropping") && l.contains(&format!("{role}={id} ")))
            .count();
        assert_eq!(lines, 1, "{role} {id} logged once:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("restarting the server"), "{log}");
}

fn alive(daemon: &Daemon) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(daemon.pid() as i32, 0) == 0 }
}

#[test]
fn hostile_producers_are_cut_off_and_hurt_nobody() {
    let (daemon, options, sub, good) =
        well_behaved_pair("[servers.h]\nmax-batch-bytes = 1048576\nmax-producers = 16\n");
    let attacks: [(&str, ProducerAttack); 10] = [
        ("garbage on the socket", garbage),
        ("a descriptor attached", a_descriptor_attached),
        ("an oversized frame", an_oversized_frame),
        (
            "a frame only the daemon sends",
            a_frame_only_the_daemon_sends,
        ),
        ("a wild ring head", a_wild_ring_head),
        ("a slot beyond its pool", a_slot_beyond_its_pool),
        ("over max-batch-bytes", a_batch_over_max_batch_bytes),
        (
            "more packets than the length holds",
            more_packets_than_the_length_holds,
        ),
        ("a scribbled region", scribbled_region),
        ("a wild release tail", a_wild_release_tail),
    ];
    let mut ids = Vec::new();
    for (what, attack) in attacks {
        let mut hostile = HostileProducer::connect("h", &options).unwrap();
        ids.push(hostile.id());
        // Later writes may fail once the daemon has cut it off: that is fine.
        let _ = attack(&mut hostile);
        let reason = hostile.cut_off(DEADLINE).unwrap();
        eprintln!("{what}: cut off: {reason:?}");
        assert!(reason.is_some(), "{what}: never cut off");
        assert!(alive(&daemon), "{what}: daemon gone");
    }
    assert_pair_unharmed(good, sub);
    let stats = packet_ipc::stats(&options, Some("h")).unwrap();
    assert_eq!(stats[0].dropped_clients, ids.len() as u64);
    assert_logged_once(&daemon, "producer", &ids);
}

#[test]
fn hostile_subscribers_are_cut_off_and_hurt_nobody() {
    let (daemon, options, sub, good) = well_behaved_pair("[servers.h]\n");
    let attacks: [(&str, SubscriberAttack); 4] = [
        ("garbage on the socket", sub_garbage),
        ("a descriptor attached", sub_descriptor_attached),
        ("a tail beyond the head", sub_tail_beyond_head),
        ("a scribbled region", sub_scribbled_region),
    ];
    let mut ids = Vec::new();
    // Kept until the end: one that hung up first would have left, not been dropped.
    let mut kept = Vec::new();
    for (what, attack) in attacks {
        let mut hostile = HostileSubscriber::connect("h", &options).unwrap();
        ids.push(hostile.id());
        // Let a batch or two reach it first, so that it holds something.
        let _ = hostile.recv(Duration::from_millis(200));
        let _ = attack(&mut hostile);
        // A subscriber that scribbled over its own ring may well confuse its own library
        // first: an error here is the attacker's problem.
        let reason = hostile
            .cut_off(DEADLINE)
            .unwrap_or_else(|e| Some(format!("its own library gave up: {e}")));
        eprintln!("{what}: cut off: {reason:?}");
        assert!(reason.is_some(), "{what}: never cut off");
        assert!(alive(&daemon), "{what}: daemon gone");
        kept.push(hostile);
    }
    assert_pair_unharmed(good, sub);
    // Every attacker was dropped by the daemon, and said so once in its log.
    let deadline = Instant::now() + DEADLINE;
    while packet_ipc::stats(&options, Some("h")).unwrap()[0].dropped_clients < ids.len() as u64 {
        assert!(Instant::now() < deadline, "not every attacker was dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_logged_once(&daemon, "subscriber", &ids);
    drop(kept);
}

#[test]
fn a_producer_cannot_shrink_shared_memory_or_reuse_a_held_slot() {
    let daemon = Daemon::start(Some("[servers.h]\n"));
    let options = daemon.options(Duration::ZERO);
    let mut holder = HostileSubscriber::connect("h", &options).unwrap();
    let mut hostile = HostileProducer::connect("h", &options).unwrap();
    hostile.send(&packets(8, 200, 1)).unwrap();
    let held = holder.recv(DEADLINE).unwrap().expect("a batch");
    // Truncating the memory every process maps is refused by its seals: nobody can be
    // killed by SIGBUS.
    let refused = hostile.truncate().unwrap();
    assert_eq!(
        refused.len(),
        2,
        "both the region and the pool refuse: {refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|e| e.raw_os_error() == Some(libc::EPERM)),
        "{refused:?}"
    );
    // Publishing the slot the subscriber still holds cuts the producer off.
    hostile.publish(0, held.as_bytes().len() as u32, 8).unwrap();
    let reason = hostile.cut_off(DEADLINE).unwrap();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("held")),
        "{reason:?}"
    );
    // The subscriber still reads what it holds, intact.
    assert_eq!(held.iter().count(), 8);
    held.check().unwrap();
    assert!(alive(&daemon));
}

#[test]
fn a_corrupt_or_rewritten_batch_is_skipped_and_counted_never_fatal() {
    let daemon = Daemon::start(Some("[servers.h]\n"));
    let options = daemon.options(Duration::ZERO);
    let mut sub = packet_ipc::Subscriber::connect_with("h", options.clone()).unwrap();
    let mut hostile = HostileProducer::connect("h", &options).unwrap();
    // A batch whose header is garbage, one whose header lies about its length, and one
    // whose fourth record runs past the end; then a good one.
    let good = {
        let mut buf = Vec::new();
        packet_ipc::batch::encode(&packets(10, 100, 7), 0, 0, &mut buf).unwrap();
        buf
    };
    hostile.write_slot(0, &[0xAB; 512]).unwrap();
    hostile.publish(0, 512, 3).unwrap();
    let mut lying = good.clone();
    lying[12..16].copy_from_slice(&((good.len() * 2) as u32).to_le_bytes());
    hostile.write_slot(1, &lying).unwrap();
    hostile.publish(1, good.len() as u32, 10).unwrap();
    let mut broken = good.clone();
    let view = packet_ipc::batch::BatchView::parse(&good).unwrap();
    let (fourth, _) = view.iter_offsets().nth(3).unwrap();
    let caplen_at = fourth as usize + 8;
    broken[caplen_at..caplen_at + 4].copy_from_slice(&0xFFFF_u32.to_le_bytes());
    hostile.write_slot(2, &broken).unwrap();
    hostile.publish(2, good.len() as u32, 10).unwrap();
    hostile.write_slot(3, &good).unwrap();
    hostile.publish(3, good.len() as u32, 10).unwrap();

    // The two malformed headers are skipped; the broken record cuts its walk short.
    let cut = sub.recv().unwrap().unwrap();
    assert_eq!(cut.len(), 10, "what the header says");
    assert_eq!(
        cut.iter().count(),
        3,
        "the walk stops before the broken record"
    );
    let err = cut.check().unwrap_err().to_string();
    assert!(err.contains("record 3"), "{err}");
    drop(cut);
    let whole = sub.recv().unwrap().unwrap();
    assert_eq!(whole.iter().count(), 10);
    whole.check().unwrap();
    assert_eq!(sub.skipped(), 2);
    // The daemon counts what subscribers skipped (reported within its housekeeping).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = packet_ipc::stats(&options, Some("h")).unwrap();
        if s[0].subscribers.first().is_some_and(|s| s.skipped == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "skipped never counted: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Descriptors the daemon could check were fine: the producer was not cut off.
    assert_eq!(hostile.cut_off(Duration::from_millis(300)).unwrap(), None);
}

#[test]
fn clients_that_never_say_ready_are_dropped_and_count_against_their_user_only() {
    let daemon = Daemon::start(Some("[servers.h]\nmax-subscribers = 8\n"));
    let options = daemon.options(Duration::ZERO);
    // Warm up, then take the baseline.
    drop(packet_ipc::Subscriber::connect_with("h", options.clone()).unwrap());
    wait_for_no_clients(&options);
    // Once what the warm-up's subscriber held has been let go (CI once saw 2 more here).
    let fds_before = settled_fds(daemon.pid());
    let silent: Vec<SilentClient> = (0..6)
        .map(|i| SilentClient::connect("h", i % 2 == 0, &options).unwrap())
        .collect();
    // Meanwhile everyone else gets in.
    let mut sub = packet_ipc::Subscriber::connect_with("h", options.clone()).unwrap();
    let mut producer = packet_ipc::Producer::connect_with("h", options.clone()).unwrap();
    producer.send(&packets(5, 64, 1)).unwrap();
    assert_eq!(sub.recv().unwrap().unwrap().len(), 5);
    drop((sub, producer));
    // The silent ones are dropped within a few seconds, every descriptor closed.
    wait_for_no_clients(&options);
    let deadline = Instant::now() + DEADLINE;
    while open_fds(daemon.pid()) != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_fds(daemon.pid()), fds_before);
    drop(silent);
    assert!(alive(&daemon));
}

/// Waits until no client is registered with server `h`.
fn wait_for_no_clients(options: &ConnectOptions) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = packet_ipc::stats(options, Some("h")).unwrap();
        if s[0].subscribers.is_empty() && s[0].producers == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "clients never left: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
