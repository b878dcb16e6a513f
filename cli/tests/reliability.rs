//! Restarts, storms and limits, with the real daemon and real client processes.

use std::process::Child;
use std::time::{Duration, Instant};

use packet_ipc::{ConnectOptions, Error, Producer, Subscriber};

use crate::util::{
    open_fds, packets, settled_fds, signal, summary, wait_output, wait_stderr_line, Daemon,
    DEADLINE,
};

fn options(daemon: &Daemon, reconnect_wait: Duration) -> ConnectOptions {
    daemon.options(reconnect_wait)
}

#[test]
fn a_storm_of_100_subscribers_all_get_in_and_get_the_next_batch() {
    let daemon = Daemon::start(Some("[servers.storm]\nmax-subscribers = 128\n"));
    let started = Instant::now();
    let mut subs: Vec<Child> = (0..100)
        .map(|_| daemon.peer(&["subscribe", "storm", "--count", "10"]))
        .collect();
    // Every one of them is in (it prints once `connect` returned).
    let stderr: Vec<_> = subs
        .iter_mut()
        .map(|s| wait_stderr_line(s, "subscribed to"))
        .collect();
    eprintln!("100 subscribers connected in {:?}", started.elapsed());
    let stats = packet_ipc::stats(&options(&daemon, Duration::ZERO), Some("storm")).unwrap();
    assert_eq!(stats[0].subscribers.len(), 100);
    Producer::connect_with("storm", options(&daemon, Duration::ZERO))
        .unwrap()
        .send(&packets(10, 64, 0))
        .unwrap();
    for (sub, err) in subs.into_iter().zip(stderr) {
        let out = wait_output(sub, DEADLINE);
        assert!(out.status.success(), "{out:?} {}", err.text());
        assert_eq!(summary(&out)["packets"], 10);
    }
}

#[test]
fn a_silent_client_delays_nobody() {
    let daemon = Daemon::start(None);
    // A request naming a socket that listens but never accepts: the daemon connects
    // (the backlog takes it) and moves on.
    let spool = daemon.runtime().join("srv/default/sub");
    let dir = spool.join(".tmpSILENT");
    std::fs::create_dir(&dir).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
    std::fs::write(
        spool.join(".x.part"),
        format!(
            r#"{{"version":1,"socket":"{}","pid":1}}"#,
            dir.join("socket").display()
        ),
    )
    .unwrap();
    std::fs::rename(spool.join(".x.part"), spool.join("silent.req")).unwrap();
    // A garbage request too.
    std::fs::write(spool.join("junk.req"), b"\x00garbage").unwrap();
    let started = Instant::now();
    let mut sub = daemon.peer(&["subscribe", "default", "--count", "1"]);
    wait_stderr_line(&mut sub, "subscribed to");
    assert!(started.elapsed() < DEADLINE);
    Producer::connect_with("default", options(&daemon, Duration::ZERO))
        .unwrap()
        .send(&packets(1, 10, 0))
        .unwrap();
    assert_eq!(summary(&wait_output(sub, DEADLINE))["packets"], 1);
    drop(listener);
}

#[test]
fn clients_reconnect_across_a_daemon_restart() {
    let daemon = Daemon::start(None);
    let mut sub = daemon.peer(&["subscribe", "default", "--count", "200"]);
    let sub_err = wait_stderr_line(&mut sub, "subscribed to");
    let mut producer =
        Producer::connect_with("default", options(&daemon, Duration::from_secs(30))).unwrap();
    producer.send(&packets(100, 64, 1)).unwrap();
    // Restart: a clean stop, then a new daemon over the same directory.
    let daemon = daemon.restart(None);
    // The producer finds the new daemon by itself and sends there; the subscriber is
    // back in by then, or the batch waits... so keep sending until it has what it needs.
    let deadline = Instant::now() + DEADLINE;
    let mut done = None;
    while done.is_none() {
        producer.send(&packets(100, 64, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        done = sub.try_wait().unwrap();
        assert!(
            Instant::now() < deadline,
            "subscriber never finished: {}",
            daemon.log_text()
        );
    }
    let out = wait_output(sub, DEADLINE);
    assert!(out.status.success(), "{}", sub_err.text());
    let s = summary(&out);
    assert_eq!(s["packets"], 200);
    assert_eq!(
        s["reconnects"], 1,
        "the subscriber is told it may have missed packets"
    );
}

#[test]
fn a_killed_daemon_leaves_a_stale_file_that_the_next_one_replaces() {
    let mut daemon = Daemon::start(None);
    let opts = options(&daemon, Duration::ZERO);
    let mut sub = Subscriber::connect_with("default", opts.clone()).unwrap();
    let mut child = daemon.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The subscriber sees the end (it does not wait), and a new client is told no daemon
    // runs, naming the dead pid.
    assert!(sub.recv().unwrap().is_none());
    match Producer::connect_with("default", opts.clone()) {
        Err(Error::NoDaemon(msg)) => assert!(msg.contains("gone"), "{msg}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to a dead daemon"),
    }
    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());
    let daemon = Daemon::start_in(dir, None);
    let mut sub = Subscriber::connect_with("default", options(&daemon, Duration::ZERO)).unwrap();
    Producer::connect_with("default", options(&daemon, Duration::ZERO))
        .unwrap()
        .send(&packets(3, 10, 0))
        .unwrap();
    assert_eq!(sub.recv().unwrap().unwrap().len(), 3);
}

#[test]
fn limits_are_refused_with_a_clear_error_and_counted() {
    let daemon = Daemon::start(Some(
        "[servers.small]\nmax-subscribers = 2\nmax-producers = 1\nmax-batch-bytes = 65536\n",
    ));
    let opts = options(&daemon, Duration::ZERO);
    let _a = Subscriber::connect_with("small", opts.clone()).unwrap();
    let _b = Subscriber::connect_with("small", opts.clone()).unwrap();
    let err = Subscriber::connect_with("small", opts.clone())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Refused { reason, .. } if reason.contains("max-subscribers")),
        "{err}"
    );
    let mut producer = Producer::connect_with("small", opts.clone()).unwrap();
    let err = Producer::connect_with("small", opts.clone()).err().unwrap();
    assert!(err.to_string().contains("max-producers"), "{err}");
    let err = producer.send(&packets(200, 1500, 0)).unwrap_err();
    assert!(
        matches!(err, Error::BatchTooLarge { max: 65536, .. }),
        "{err}"
    );
    let stats = packet_ipc::stats(&opts, Some("small")).unwrap();
    assert_eq!(stats[0].refused, 2);
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_stopped_subscriber_loses_an_exact_count_and_the_others_nothing() {
    let daemon = Daemon::start(Some(
        "[servers.s]\nqueue-depth = 64\noverflow = \"drop-oldest\"\n",
    ));
    let opts = options(&daemon, Duration::ZERO);
    let mut fine = daemon.peer(&["subscribe", "s", "--count", "6400"]);
    wait_stderr_line(&mut fine, "subscribed to");
    let mut stalled = daemon.peer(&["subscribe", "s", "--idle-ms", "2000"]);
    wait_stderr_line(&mut stalled, "subscribed to");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(stalled.id() as i32, libc::SIGSTOP) };
    let mut producer = Producer::connect_with("s", opts.clone()).unwrap();
    for b in 0..400 {
        producer.send(&packets(16, 64, b)).unwrap();
        // Paced a little, so that the subscriber that keeps up does so even on a loaded
        // machine: only the stopped one overflows its queue.
        std::thread::sleep(Duration::from_micros(500));
    }
    let fine = summary(&wait_output(fine, DEADLINE));
    assert_eq!(fine["packets"], 6400, "the others receive everything");
    assert_eq!(fine["lost_batches"], 0);
    let deadline = Instant::now() + DEADLINE;
    let stats = loop {
        let s = packet_ipc::stats(&opts, Some("s")).unwrap();
        if s[0].batches_in == 400 {
            break s;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    let stalled_stats = stats[0]
        .subscribers
        .iter()
        .find(|s| s.pid == Some(stalled.id()))
        .cloned()
        .unwrap();
    // Stopped, it holds its credit window and its queue; everything else was dropped.
    assert_eq!(stalled_stats.queued, 64);
    assert_eq!(
        stalled_stats.lost_batches + stalled_stats.queued + stalled_stats.in_flight,
        400
    );
    assert_eq!(stalled_stats.lost_packets, stalled_stats.lost_batches * 16);
    // SAFETY: as above.
    unsafe { libc::kill(stalled.id() as i32, libc::SIGCONT) };
    let s = summary(&wait_output(stalled, DEADLINE));
    eprintln!(
        "drop-oldest, stopped subscriber: {} of 400 batches lost ({} packets), {} queued, \
         {} in flight; in band: received {}, told lost {}; the other: {} packets, 0 lost",
        stalled_stats.lost_batches,
        stalled_stats.lost_packets,
        stalled_stats.queued,
        stalled_stats.in_flight,
        s["batches"],
        s["lost_batches"],
        fine["packets"],
    );
    assert_eq!(
        s["lost_batches"].as_u64().unwrap(),
        stalled_stats.lost_batches
    );
    assert_eq!(
        s["batches"].as_u64().unwrap() + stalled_stats.lost_batches,
        400,
        "what it did not receive, it was told it lost"
    );
}

#[test]
fn a_thousand_connect_kill_cycles_leave_nothing_behind() {
    let daemon = Daemon::start(None);
    let pid = daemon.pid();
    let opts = options(&daemon, Duration::ZERO);
    let settle = |want_subs: usize| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = packet_ipc::stats(&opts, Some("default")).unwrap();
            if s[0].subscribers.len() == want_subs && s[0].producers == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "clients never went away: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Warm up (first allocations, thread stacks), then take the baseline.
    let cycle = |n: u64| {
        let mut sub = daemon.peer(&["subscribe", "default"]);
        wait_stderr_line(&mut sub, "subscribed to");
        if n.is_multiple_of(2) {
            // Every other cycle a producer is killed mid-stream too.
            let mut p = daemon.peer(&["produce", "default", "--batches", "1000000"]);
            wait_stderr_line(&mut p, "connected to");
            p.kill().unwrap();
            p.wait().unwrap();
        }
        sub.kill().unwrap();
        sub.wait().unwrap();
    };
    for n in 0..20 {
        cycle(n);
    }
    settle(0);
    // The baseline once what the warm-up's clients held has been let go.
    let fds = settled_fds(pid);
    let rss = proc_status(pid, "VmRSS:");
    let started = Instant::now();
    for n in 0..1000 {
        cycle(n);
    }
    settle(0);
    // What departed clients held is let go within a few of the hub's rounds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) != fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds_after, rss_after) = (open_fds(pid), proc_status(pid, "VmRSS:"));
    eprintln!(
        "1000 cycles in {:?}: fds {fds} -> {fds_after}, RSS {rss} kB -> {rss_after} kB",
        started.elapsed()
    );
    if fds_after != fds {
        let targets: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_link(e.path()).unwrap_or_default())
            .collect();
        eprintln!("open fds: {targets:?}");
    }
    assert_eq!(fds_after, fds, "open fds back at the baseline");
    assert!(
        rss_after < rss + 16 * 1024,
        "RSS back near the baseline: {rss} kB -> {rss_after} kB"
    );
}

#[test]
fn a_soak_with_churning_clients_balances_every_counter() {
    let daemon = Daemon::start(Some(
        "[servers.soak]\nqueue-depth = 32\noverflow = \"drop-oldest\"\n\
         max-producers = 8\nmax-subscribers = 32\n",
    ));
    let opts = options(&daemon, Duration::ZERO);
    // Subscribers there from the first batch to the last: two that keep up, one slow.
    let mut steady: Vec<Child> = [&[][..], &[][..], &["--slow-us", "20000"][..]]
        .iter()
        .map(|extra| {
            let mut args = vec!["subscribe", "soak", "--idle-ms", "3000"];
            args.extend_from_slice(extra);
            let mut c = daemon.peer(&args);
            wait_stderr_line(&mut c, "subscribed to");
            c
        })
        .collect();
    // Twelve seconds of churn: producers come and go, so do short-lived subscribers,
    // some of them killed.
    let started = Instant::now();
    let (mut producers, mut visitors) = (Vec::new(), Vec::new());
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(12) {
        producers.push(daemon.peer(&[
            "produce",
            "soak",
            "--batches",
            "30",
            "--packets",
            "16",
            "--size",
            "64",
            "--pause-us",
            "2000",
        ]));
        let mut v = daemon.peer(&["subscribe", "soak", "--count", "64", "--idle-ms", "2000"]);
        wait_stderr_line(&mut v, "subscribed to");
        if n.is_multiple_of(3) {
            v.kill().unwrap();
        }
        visitors.push(v);
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut published = 0u64;
    for p in producers {
        let out = wait_output(p, DEADLINE);
        assert!(out.status.success(), "{out:?}");
        published += summary(&out)["packets"].as_u64().unwrap();
    }
    for v in visitors {
        let _ = wait_output(v, DEADLINE);
    }
    // Once the steady subscribers have drained, what they lost is final.
    let deadline = Instant::now() + DEADLINE;
    let stats = loop {
        let s = packet_ipc::stats(&opts, Some("soak")).unwrap();
        let drained = s[0].packets_in == published
            && s[0]
                .subscribers
                .iter()
                .all(|sub| sub.queued == 0 && sub.in_flight == 0);
        if drained {
            break s;
        }
        assert!(Instant::now() < deadline, "never drained: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "soak: {n} producers and {n} visiting subscribers in {:?}, {published} packets",
        started.elapsed()
    );
    let slow_pid = steady[2].id();
    let slow = stats[0]
        .subscribers
        .iter()
        .find(|s| s.pid == Some(slow_pid))
        .unwrap();
    assert!(
        slow.lost_batches > 0,
        "the slow subscriber lost some: {slow:?}"
    );
    for sub in steady.drain(..) {
        let pid = sub.id();
        let counters = stats[0]
            .subscribers
            .iter()
            .find(|s| s.pid == Some(pid))
            .cloned()
            .unwrap();
        let out = summary(&wait_output(sub, DEADLINE));
        let received = out["packets"].as_u64().unwrap();
        eprintln!(
            "subscriber {pid}: received {received}, lost {}",
            counters.lost_packets
        );
        assert_eq!(
            received + counters.lost_packets,
            published,
            "subscriber {pid}: received {received} + lost {} = published",
            counters.lost_packets
        );
        assert_eq!(counters.packets_out, received);
        assert_eq!(out["lost_batches"].as_u64().unwrap(), counters.lost_batches);
    }
}

#[test]
fn the_subscribe_command_keeps_running_across_a_daemon_restart() {
    let daemon = Daemon::start(None);
    let mut sub = daemon
        .cli()
        .args(["subscribe", "default", "--count", "200", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sub_err = wait_stderr_line(&mut sub, "subscribed to");
    let mut producer =
        Producer::connect_with("default", options(&daemon, Duration::from_secs(30))).unwrap();
    producer.send(&packets(100, 64, 1)).unwrap();
    let daemon = daemon.restart(None);
    let deadline = Instant::now() + DEADLINE;
    while sub.try_wait().unwrap().is_none() {
        producer.send(&packets(100, 64, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            Instant::now() < deadline,
            "never finished: {}",
            daemon.log_text()
        );
    }
    let out = wait_output(sub, DEADLINE);
    assert!(out.status.success(), "{}", sub_err.text());
    let s = summary(&out);
    assert_eq!(s["packets"], 200);
    assert_eq!(s["reconnections"], 1, "{s}");
}

/// A stopping daemon first publishes what it had queued, then says it stops: a subscriber
/// that was not reading then reads those batches before it goes looking for the next
/// daemon (it used to drop them, or fail on one whose pool it had not met yet).
#[test]
fn a_stopping_daemon_s_last_batches_are_read_before_its_notice() {
    let daemon = Daemon::start(Some("[servers.s]\nqueue-depth = 64\n"));
    let opts = options(&daemon, Duration::ZERO);
    let mut sub = daemon.peer(&["subscribe", "s", "--count", "500"]);
    wait_stderr_line(&mut sub, "subscribed to");
    signal(&sub, libc::SIGSTOP);
    // A producer of its own, whose pool the stopped subscriber has not heard of yet.
    let mut producer = Producer::connect_with("s", opts.clone()).unwrap();
    for b in 0..5 {
        producer.send(&packets(100, 64, b)).unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    while packet_ipc::stats(&opts, Some("s")).unwrap()[0].subscribers[0].batches_out < 5 {
        assert!(
            Instant::now() < deadline,
            "the batches never reached the ring"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(producer);
    assert!(daemon.terminate().success());
    signal(&sub, libc::SIGCONT);
    let out = wait_output(sub, DEADLINE);
    let s = summary(&out);
    assert!(out.status.success(), "{s}");
    assert_eq!(
        s["packets"],
        500,
        "{s}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["lost_batches"], 0, "{s}");
}
