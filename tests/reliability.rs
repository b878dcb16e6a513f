//! Restarts, storms and limits, with the real daemon and real client processes.

use std::process::Child;
use std::time::{Duration, Instant};

use packet_ipc::{ConnectOptions, Error, Producer, Subscriber};

use crate::util::{packets, summary, wait_output, wait_stderr_line, Daemon, DEADLINE};

fn options(daemon: &Daemon, reconnect_wait: Duration) -> ConnectOptions {
    ConnectOptions {
        rendezvous: Some(daemon.runtime().join("rendezvous.json")),
        reconnect_wait,
        ..ConnectOptions::default()
    }
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
    let stats =
        packet_ipc::broker::stats(&options(&daemon, Duration::ZERO), Some("storm")).unwrap();
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
    let dir = {
        let mut daemon = daemon;
        daemon.signal(libc::SIGTERM);
        let child = daemon.child.take().unwrap();
        assert!(wait_output(child, DEADLINE).status.success());
        std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap())
    };
    let daemon = Daemon::start_in(dir, None);
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
    let stats = packet_ipc::broker::stats(&opts, Some("small")).unwrap();
    assert_eq!(stats[0].refused, 2);
}
