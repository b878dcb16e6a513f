//! Hostile producers against the real daemon: each is cut off with a reason and logged
//! once, the daemon stays up, and a well-behaved subscriber running meanwhile loses
//! nothing.

use std::process::Child;
use std::time::{Duration, Instant};

use packet_ipc::broker::testing::HostileProducer;
use packet_ipc::ConnectOptions;

use crate::util::{open_fds, packets, summary, wait_output, wait_stderr_line, Daemon, DEADLINE};

type Attack = fn(&mut HostileProducer) -> packet_ipc::Result<()>;

fn valid_batch() -> Vec<u8> {
    let mut buf = Vec::new();
    packet_ipc::batch::encode(&packets(10, 100, 7), 0, 0, &mut buf).unwrap();
    buf
}

fn garbage_in_the_envelope(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.frame(b"\xde\xad\xbe\xef not a frame at all \x00\x01\x02", true)
}

fn garbage_without_envelope(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.frame(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f garbage", false)
}

fn a_frame_of_the_wrong_kind(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    // A release frame (kind 5, one id) where descriptors are expected.
    p.frame(&[5, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0], true)
}

fn a_header_that_lies_about_its_length(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    let mut batch = valid_batch();
    let real = batch.len() as u32;
    batch[12..16].copy_from_slice(&(real * 2).to_le_bytes());
    p.batch(&batch, real)
}

fn a_batch_over_max_batch_bytes(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    p.batch(&valid_batch(), 2 << 20)
}

fn a_thousand_file_descriptors(p: &mut HostileProducer) -> packet_ipc::Result<()> {
    // The daemon cuts it off past its pool; later sends may then fail, which is fine.
    let _ = p.flood(0, 1000);
    Ok(())
}

/// A daemon on `config` (with a server `h`), a subscriber of `h` waiting for 12800 packets,
/// and a producer sending them over a second, started before any attack.
fn well_behaved_pair(config: &str) -> (Daemon, ConnectOptions, Child, Child) {
    let daemon = Daemon::start(Some(config));
    let options = daemon.options(Duration::ZERO);
    let mut sub = daemon.peer(&["subscribe", "h", "--count", "12800"]);
    wait_stderr_line(&mut sub, "subscribed to");
    let mut good = daemon.peer(&[
        "produce",
        "h",
        "--batches",
        "50",
        "--pause-us",
        "20000",
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
    assert_eq!(
        s["packets"], 12800,
        "the well-behaved subscriber got everything"
    );
    assert_eq!(s["lost_batches"], 0);
}

#[test]
fn hostile_producers_are_cut_off_and_hurt_nobody() {
    let (daemon, options, sub, good) =
        well_behaved_pair("[servers.h]\nmax-batch-bytes = 1048576\nmax-producers = 16\n");

    let attacks: [(&str, Attack); 6] = [
        ("garbage in the envelope", garbage_in_the_envelope),
        ("garbage without envelope", garbage_without_envelope),
        ("a frame of the wrong kind", a_frame_of_the_wrong_kind),
        ("a lying header", a_header_that_lies_about_its_length),
        ("over max-batch-bytes", a_batch_over_max_batch_bytes),
        ("a thousand fds", a_thousand_file_descriptors),
    ];
    let mut ids = Vec::new();
    for (what, attack) in attacks {
        let mut hostile = HostileProducer::connect("h", &options).unwrap();
        ids.push(hostile.id());
        attack(&mut hostile).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match hostile.cut_off() {
                Ok(Some(reason)) => {
                    eprintln!("{what}: cut off: {reason}");
                    break;
                }
                // The daemon closed the connection already: cut off too.
                Err(_) => break,
                Ok(None) => {}
            }
            assert!(Instant::now() < deadline, "{what}: never cut off");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            // SAFETY: kill with signal 0 only checks that the process exists.
            unsafe { libc::kill(daemon.pid() as i32, 0) },
            0,
            "{what}: daemon gone"
        );
    }

    assert_pair_unharmed(good, sub);
    let stats = packet_ipc::stats(&options, Some("h")).unwrap();
    assert_eq!(stats[0].dropped_clients, 6);
    let log = daemon.log_text();
    for id in ids {
        let lines = log
            .lines()
            .filter(|l| l.contains("dropping producer") && l.contains(&format!("producer={id} ")))
            .count();
        assert_eq!(lines, 1, "producer {id} logged once:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn hostile_subscribers_are_cut_off_and_hurt_nobody() {
    use packet_ipc::broker::testing::HostileSubscriber;
    let (daemon, options, sub, good) = well_behaved_pair("[servers.h]\n");

    let attacks: [(&str, &[u8], bool); 4] = [
        ("garbage in the envelope", b"\xde\xad\xbe\xef garbage", true),
        (
            "garbage without envelope",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
            false,
        ),
        // A release of segment 12345, which it was never given.
        (
            "a release of a segment it does not hold",
            &[5, 0, 0, 0, 1, 0, 0, 0, 0x39, 0x30, 0, 0],
            true,
        ),
        // A descriptor frame (kind 2, none) where releases are expected.
        ("a frame of the wrong kind", &[2, 0, 0, 0, 0, 0, 0, 0], true),
    ];
    let mut ids = Vec::new();
    for (what, bytes, sealed) in attacks {
        let mut hostile = HostileSubscriber::connect("h", &options).unwrap();
        ids.push(hostile.id());
        hostile.release(bytes, sealed).unwrap();
        let reason = hostile.cut_off(DEADLINE).unwrap();
        eprintln!("{what}: cut off: {reason:?}");
        assert!(reason.is_some(), "{what}: never cut off");
    }

    assert_pair_unharmed(good, sub);
    let stats = packet_ipc::stats(&options, Some("h")).unwrap();
    assert_eq!(stats[0].dropped_clients, 4);
    let log = daemon.log_text();
    for id in ids {
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("dropping subscriber") && l.contains(&format!("subscriber={id} "))
            })
            .count();
        assert_eq!(lines, 1, "subscriber {id} logged once:\n{log}");
    }
}

#[test]
fn bytes_below_ipc_channel_cut_off_that_client_only() {
    // ipc-channel's reader trusts the framing on its socket: a lying header made it
    // block, panic or abort, and an attached socket made it assert. The daemon looks
    // before it lets ipc-channel read, so each such client is dropped like any other.
    let daemon = Daemon::start(Some("[servers.h]\n"));
    let options = daemon.options(Duration::ZERO);
    // One client in and out first, so that what the daemon keeps for good is open.
    let warm = daemon.peer(&["subscribe", "h", "--count", "1", "--idle-ms", "100"]);
    let _ = wait_output(warm, DEADLINE);
    wait_for_no_clients(&options);
    let fds_before = open_fds(daemon.pid());

    let mut sub = daemon.peer(&["subscribe", "h", "--count", "38400"]);
    wait_stderr_line(&mut sub, "subscribed to");
    let mut good = daemon.peer(&[
        "produce",
        "h",
        "--batches",
        "150",
        "--pause-us",
        "20000",
        "--size",
        "64",
    ]);
    wait_stderr_line(&mut good, "connected to");
    let attack = wait_output(daemon.peer(&["hostile-raw", "h"]), DEADLINE);
    assert!(attack.status.success(), "{attack:?}");
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&attack.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        reports.len(),
        12,
        "6 attacks, as producer and as subscriber"
    );
    for r in &reports {
        assert!(r["sockets_written"].as_u64().unwrap() > 0, "{r}");
        assert!(r["cut_off"].is_string(), "told it was cut off: {r}");
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, 0) }, 0);

    assert!(wait_output(good, DEADLINE).status.success());
    let s = summary(&wait_output(sub, DEADLINE));
    assert_eq!(
        s["packets"], 38400,
        "the well-behaved subscriber got everything"
    );
    assert_eq!(s["lost_batches"], 0);
    assert_eq!(s["reconnects"], 0, "its server never restarted");

    let stats = packet_ipc::stats(&options, Some("h")).unwrap();
    assert_eq!(stats[0].dropped_clients, 12);
    let log = daemon.log_text();
    for r in &reports {
        let who = format!("{}={} ", r["role"].as_str().unwrap(), r["id"]);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dropping") && l.contains(&who))
            .collect();
        assert_eq!(lines.len(), 1, "{r} logged once:\n{log}");
        assert!(lines[0].contains("ipc-channel"), "{}", lines[0]);
    }
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("restarting the server"), "{log}");
    wait_for_no_clients(&options);
    assert_eq!(
        open_fds(daemon.pid()),
        fds_before,
        "every descriptor of the dropped clients is closed"
    );
}

/// Waits until no client is registered with server `h`.
fn wait_for_no_clients(options: &ConnectOptions) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = packet_ipc::stats(options, Some("h")).unwrap();
        if s[0].subscribers.is_empty() && s[0].producers == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "clients never left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_batch_with_broken_records_is_read_within_bounds_and_check_says_so() {
    // The daemon checks headers only; a record that overruns the batch (a producer's bug
    // or malice) must stop a subscriber's walk, never take it out of bounds.
    let daemon = Daemon::start(Some("[servers.h]\n"));
    let options = daemon.options(Duration::ZERO);
    let mut sub = packet_ipc::Subscriber::connect_with("h", options.clone()).unwrap();
    let mut producer = HostileProducer::connect("h", &options).unwrap();
    let good = valid_batch();
    let mut broken = good.clone();
    // The fourth record's caplen: 16 bytes of head, then 10 packets of up to 100 bytes.
    let view = packet_ipc::batch::BatchView::parse(&good).unwrap();
    let mut records = view.iter();
    for _ in 0..3 {
        records.next_with_offset().unwrap();
    }
    let (_, fourth_data) = records.next_with_offset().unwrap();
    let caplen_at = fourth_data - 16 + 8;
    broken[caplen_at..caplen_at + 4].copy_from_slice(&0xFFFF_u32.to_le_bytes());
    for bytes in [&good, &broken] {
        producer.batch(bytes, bytes.len() as u32).unwrap();
    }

    let whole = sub.recv().unwrap().unwrap();
    assert_eq!(whole.iter().count(), 10);
    whole.check().unwrap();
    let cut = sub.recv().unwrap().unwrap();
    assert_eq!(cut.len(), 10, "what the header says");
    assert_eq!(
        cut.iter().count(),
        3,
        "the walk stops before the broken record"
    );
    let err = cut.check().unwrap_err().to_string();
    assert!(err.contains("record 3"), "{err}");
    assert_eq!(producer.cut_off().unwrap(), None, "headers were fine");
}
