//! The daemon, started for real, with producers and subscribers in other processes.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use packet_ipc::{ConnectOptions, Producer};

use crate::util::{
    assert_same_packets, daemon_bin, packets, read_batch_file, summary, wait_output,
    wait_stderr_line, Daemon, Stderr, DEADLINE,
};

/// Starts `packet-ipc-peer subscribe SERVER ARGS` and waits until it is subscribed.
fn subscriber(daemon: &Daemon, server: &str, args: &[&str]) -> Child {
    subscriber_with_stderr(daemon, server, args).0
}

/// Same, keeping what it writes on stderr.
fn subscriber_with_stderr(daemon: &Daemon, server: &str, args: &[&str]) -> (Child, Stderr) {
    let mut all = vec!["subscribe", server];
    all.extend_from_slice(args);
    let mut child = daemon.peer(&all);
    let stderr = wait_stderr_line(&mut child, "subscribed to");
    (child, stderr)
}

fn options(daemon: &Daemon) -> ConnectOptions {
    daemon.options(Duration::ZERO)
}

#[test]
fn three_subscribers_receive_identical_packets() {
    let daemon = Daemon::start(None);
    let outs: Vec<_> = (0..3)
        .map(|i| daemon.runtime().join(format!("sub{i}.batch")))
        .collect();
    let subs: Vec<Child> = outs
        .iter()
        .map(|out| {
            subscriber(
                &daemon,
                "default",
                &["--count", "3000", "--out", out.to_str().unwrap()],
            )
        })
        .collect();
    let mut producer = Producer::connect_with("default", options(&daemon)).unwrap();
    let mut sent = Vec::new();
    for b in 0..30 {
        // Mixed sizes: some batches small, some over 300 KB.
        let batch = packets(100, if b % 3 == 0 { 3000 } else { 200 }, b);
        producer.send(&batch).unwrap();
        sent.extend(batch);
    }
    for (sub, out) in subs.into_iter().zip(&outs) {
        let output = wait_output(sub, DEADLINE);
        assert!(output.status.success(), "{output:?}");
        let s = summary(&output);
        assert_eq!(s["packets"], 3000, "{s}");
        assert_eq!(s["lost_batches"], 0);
        assert_eq!(s["seqs_ordered"], true);
        assert_same_packets(&read_batch_file(out), &sent);
    }
}

#[test]
fn two_producers_feed_one_server() {
    let daemon = Daemon::start(None);
    let sub = subscriber(&daemon, "default", &["--count", "20480"]);
    let producers: Vec<Child> = (0..2)
        .map(|_| {
            daemon.peer(&[
                "produce",
                "default",
                "--batches",
                "40",
                "--packets",
                "256",
                "--size",
                "64",
            ])
        })
        .collect();
    for p in producers {
        let out = wait_output(p, DEADLINE);
        assert!(out.status.success(), "{out:?}");
    }
    let s = summary(&wait_output(sub, DEADLINE));
    assert_eq!(s["packets"], 2 * 40 * 256);
    assert_eq!(s["batches"], 80);
    assert_eq!(s["seqs_ordered"], true);
}

const TWO_SERVERS: &str = r#"
[servers.alpha]
[servers.beta]
linktype = 101
"#;

#[test]
fn two_servers_are_kept_apart() {
    let daemon = Daemon::start(Some(TWO_SERVERS));
    let a = subscriber(&daemon, "alpha", &["--idle-ms", "1500"]);
    let b = subscriber(&daemon, "beta", &["--idle-ms", "1500"]);
    let mut to_alpha = Producer::connect_with("alpha", options(&daemon)).unwrap();
    let mut to_beta = Producer::connect_with("beta", options(&daemon)).unwrap();
    assert_eq!(to_beta.info().linktype, 101);
    to_alpha.send(&packets(10, 100, 1)).unwrap();
    to_beta.send(&packets(7, 100, 2)).unwrap();
    to_beta.send(&packets(7, 100, 3)).unwrap();
    assert_eq!(summary(&wait_output(a, DEADLINE))["packets"], 10);
    assert_eq!(summary(&wait_output(b, DEADLINE))["packets"], 14);
}

#[test]
fn unknown_server_is_a_clear_error() {
    let daemon = Daemon::start(Some(TWO_SERVERS));
    let err = match Producer::connect_with("gamma", options(&daemon)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to a server that does not exist"),
    };
    assert!(
        err.contains("gamma") && err.contains("alpha, beta"),
        "{err}"
    );
}

#[test]
fn reload_adds_and_removes_servers_without_disturbing_the_others() {
    let daemon = Daemon::start(Some(TWO_SERVERS));
    let steady = subscriber(&daemon, "alpha", &["--count", "2000"]);
    let doomed = subscriber(&daemon, "beta", &["--reconnect-wait-ms", "60000"]);
    let mut producer = Producer::connect_with("alpha", options(&daemon)).unwrap();
    producer.send(&packets(1000, 64, 1)).unwrap();

    let config = daemon.runtime().join("packet-ipcd.toml");
    std::fs::write(&config, "[servers.alpha]\n[servers.gamma]\n").unwrap();
    let before = Instant::now();
    daemon.signal(libc::SIGHUP);
    // The subscriber of the removed server sees the end at once, though it would wait
    // a minute for a daemon that stopped.
    let out = wait_output(doomed, DEADLINE);
    assert!(
        before.elapsed() < Duration::from_secs(30),
        "end seen only after {:?}",
        before.elapsed()
    );
    assert_eq!(summary(&out)["end"], "end");
    // The new server is there, and alpha's producer and subscriber carry on.
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(daemon.runtime().join("rendezvous.json"))
        .unwrap()
        .contains("gamma")
    {
        assert!(Instant::now() < deadline, "gamma never appeared");
        thread::sleep(Duration::from_millis(20));
    }
    let gamma = subscriber(&daemon, "gamma", &["--idle-ms", "500"]);
    producer.send(&packets(1000, 64, 2)).unwrap();
    let s = summary(&wait_output(steady, DEADLINE));
    assert_eq!(s["packets"], 2000);
    assert_eq!(s["reconnects"], 0);
    assert_eq!(summary(&wait_output(gamma, DEADLINE))["packets"], 0);
}

#[test]
fn an_invalid_reload_keeps_the_running_configuration() {
    let daemon = Daemon::start(Some(TWO_SERVERS));
    let config = daemon.runtime().join("packet-ipcd.toml");
    std::fs::write(&config, "[servers.alpha]\nqueue-depth = \"deep\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + DEADLINE;
    while !daemon.log_text().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no log line for the refused reload"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let sub = subscriber(&daemon, "beta", &["--count", "5"]);
    Producer::connect_with("beta", options(&daemon))
        .unwrap()
        .send(&packets(5, 10, 0))
        .unwrap();
    assert_eq!(summary(&wait_output(sub, DEADLINE))["packets"], 5);
}

#[test]
fn sigterm_exits_zero_and_ends_subscribers_that_do_not_wait() {
    let daemon = Daemon::start(None);
    let sub = subscriber(&daemon, "default", &["--reconnect-wait-ms", "0"]);
    let rendezvous = daemon.runtime().join("rendezvous.json");
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let s = summary(&wait_output(sub, DEADLINE));
    assert_eq!(s["end"], "end");
    assert!(
        !rendezvous.exists(),
        "the daemon removes its rendezvous file"
    );
}

#[test]
fn a_second_daemon_on_the_same_directory_is_refused() {
    let daemon = Daemon::start(None);
    let started = Instant::now();
    let out = std::process::Command::new(daemon_bin())
        .env("PACKET_IPC_RUNTIME_DIR", daemon.runtime())
        .env_remove("PACKET_IPC_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&daemon.pid().to_string()), "{err}");
}

#[test]
fn check_reports_bad_configurations_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(daemon_bin())
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = check("[servers.a]\nqueue-depth = 8\n");
    assert_eq!((code, out.trim()), (Some(0), "ok"));
    let (code, _, err) = check("[servers.a]\nlinktype = 1\nqueue-dept = 8\n");
    assert_eq!(code, Some(78));
    assert!(
        err.contains("line 3") && err.contains("queue-dept"),
        "{err}"
    );
    let (code, _, err) = check("[servers.a]\n\noverflow = 7\n");
    assert_eq!(code, Some(78));
    assert!(err.contains("line 3") && err.contains("overflow"), "{err}");
    let (code, _, err) = check("[servers.a\n");
    assert_eq!(code, Some(78));
    assert!(err.contains("line 1"), "{err}");
    let (code, out, err) = check("[servers.a]\nsubscriber-group = \"no-such-group-pipc\"\n");
    assert_eq!(
        (code, out.trim()),
        (Some(0), "ok"),
        "a missing group only warns"
    );
    assert!(err.contains("no-such-group-pipc"), "{err}");

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/packet-ipcd.toml");
    let out = std::process::Command::new(daemon_bin())
        .args(["--config", shipped, "--check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Runs `packet-ipcd --config PATH --check`, failing the test if it does not exit within
/// ten seconds: (exit code, stdout, stderr).
fn run_check(path: &std::path::Path) -> (Option<i32>, String, String) {
    let mut child = std::process::Command::new(daemon_bin())
        .arg("--config")
        .arg(path)
        .arg("--check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("packet-ipcd --check {} hangs", path.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_the_new_keys_and_integers_that_fit_no_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        run_check(&path)
    };
    let (code, out, err) = check(
        "[metrics]\nlisten = \"127.0.0.1:9464\"\n\
         [servers.a]\ngroup-balance = \"ip-pair\"\nwait = \"spin\"\n",
    );
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
    let bad = [
        (
            "[servers.a]\n\n[metrics]\nlisten = \"localhost\"\n",
            4,
            "metrics.listen",
        ),
        (
            "[metrics]\nlisten = \"1.2.3.4:99999\"\n[servers.a]\n",
            2,
            "metrics.listen",
        ),
        ("[metrics]\nfoo = 1\n[servers.a]\n", 2, "metrics.foo"),
        ("[servers.a]\nwait = \"block\"\n", 2, "servers.a.wait"),
        (
            "[servers.a]\ngroup-balance = \"rr\"\n",
            2,
            "servers.a.group-balance",
        ),
        (
            "[servers.a]\n\nmax-batch-bytes = 99999999999999999999\n",
            3,
            "servers.a.max-batch-bytes",
        ),
        (
            "[servers.a]\nmax-batch-bytes = 9223372036854775808\n",
            2,
            "servers.a.max-batch-bytes",
        ),
        (
            "[servers.a]\nmax-batch-bytes = -1\n",
            2,
            "servers.a.max-batch-bytes",
        ),
    ];
    for (text, line, key) in bad {
        let (code, _, err) = check(text);
        assert_eq!(code, Some(78), "{text}: {err}");
        let expected = format!("{}: line {line}: {key}: ", path.display());
        assert!(err.contains(&expected), "{text}: {err}");
    }
}

#[test]
fn check_refuses_what_is_not_a_regular_file_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, _, err) = run_check(&fifo);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&fifo.display().to_string()) && err.contains("FIFO"),
        "{err}"
    );

    let (code, _, err) = run_check(std::path::Path::new("/dev/zero"));
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("/dev/zero") && err.contains("character device"),
        "{err}"
    );

    let big = dir.path().join("big.toml");
    let mut text = String::from("[servers.a]\n");
    while text.len() <= 1 << 20 {
        text.push_str("# padding\n");
    }
    std::fs::write(&big, text).unwrap();
    let (code, _, err) = run_check(&big);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn a_missing_group_stops_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[servers.a]\nproducer-group = \"no-such-group-pipc\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(daemon_bin())
        .arg("--config")
        .arg(&path)
        .env("PACKET_IPC_RUNTIME_DIR", dir.path().join("rt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-group-pipc"));
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[servers.a]\n").unwrap();
    let mut child = std::process::Command::new(daemon_bin())
        .arg("--config")
        .arg(&config)
        .env("PACKET_IPC_RUNTIME_DIR", dir.path().join("rt"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = String::new();
    let listen_until = |what: &str, heard: &mut String| {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while !heard.contains(what) {
            assert!(
                Instant::now() < deadline,
                "never heard {what}; heard {heard:?}"
            );
            if let Ok(n) = sock.recv(&mut buf) {
                heard.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    };
    listen_until("READY=1", &mut heard);
    listen_until("WATCHDOG=1", &mut heard);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    listen_until("RELOADING=1", &mut heard);
    assert!(heard.contains("MONOTONIC_USEC="), "{heard}");
    let after_reload = heard.rfind("RELOADING=1").unwrap();
    listen_until("STATUS", &mut heard);
    while !heard[after_reload..].contains("READY=1") {
        listen_until("READY=1", &mut heard);
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    listen_until("STOPPING=1", &mut heard);
    assert!(child.wait().unwrap().success());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_daemon_runs() {
    // Daemon::start removes NOTIFY_SOCKET; the daemon must simply run.
    let daemon = Daemon::start(None);
    let status = daemon.terminate();
    assert!(status.success());
}

fn policy_config(overflow: &str) -> String {
    format!("[servers.p]\nqueue-depth = 16\noverflow = \"{overflow}\"\n")
}

/// A subscriber that keeps up and one that sleeps 20 ms per batch, on a server with a
/// queue of 16 batches; a producer sends 200 batches, one every 2 ms.
fn run_policy(overflow: &str) -> (serde_json::Value, std::process::Output, String, u64) {
    let daemon = Daemon::start(Some(&policy_config(overflow)));
    let fast = subscriber(&daemon, "p", &["--idle-ms", "3000"]);
    let (slow, slow_err) =
        subscriber_with_stderr(&daemon, "p", &["--idle-ms", "3000", "--slow-us", "20000"]);
    let producer = daemon.peer(&[
        "produce",
        "p",
        "--batches",
        "200",
        "--packets",
        "16",
        "--size",
        "64",
        "--pause-us",
        "2000",
    ]);
    let produced = wait_output(producer, DEADLINE);
    assert!(produced.status.success(), "{produced:?}");
    // Once the server has taken all 200 batches, what each subscriber lost is final
    // (drops happen as batches come in); read it while both are still connected.
    let deadline = Instant::now() + DEADLINE;
    let stats = loop {
        let stats = packet_ipc::stats(&options(&daemon), Some("p")).unwrap();
        if stats[0].batches_in == 200 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the server never took 200 batches"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let lost_by_stats = stats[0]
        .subscribers
        .iter()
        .map(|s| s.lost_batches)
        .max()
        .unwrap_or(0);
    let fast = summary(&wait_output(fast, DEADLINE));
    let slow = wait_output(slow, DEADLINE);
    let slow_summary = serde_json::from_slice::<serde_json::Value>(&slow.stdout).ok();
    eprintln!(
        "{overflow}: fast subscriber {} packets, {} lost; slow subscriber: lost {lost_by_stats} \
         of 200 batches by stats, {} in band, received {}",
        fast["packets"],
        fast["lost_batches"],
        slow_summary
            .as_ref()
            .map_or("-".into(), |s| s["lost_batches"].to_string()),
        slow_summary
            .as_ref()
            .map_or("-".into(), |s| s["batches"].to_string()),
    );
    (fast, slow, slow_err.text(), lost_by_stats)
}

#[test]
fn drop_oldest_and_drop_newest_lose_only_for_the_slow_subscriber_and_say_how_much() {
    for policy in ["drop-oldest", "drop-newest"] {
        let (fast, slow, _, lost_by_stats) = run_policy(policy);
        assert_eq!(fast["packets"], 200 * 16, "{policy}: the fast one gets all");
        assert_eq!(fast["lost_batches"], 0);
        assert!(slow.status.success(), "{policy}: {slow:?}");
        let slow = summary(&slow);
        let got = slow["batches"].as_u64().unwrap();
        let lost_in_band = slow["lost_batches"].as_u64().unwrap();
        assert!(
            lost_by_stats > 0,
            "{policy}: the slow one lost some: {slow}"
        );
        assert_eq!(
            got + lost_by_stats,
            200,
            "{policy}: every batch is received or counted lost in stats"
        );
        // In band, a loss is told on the next batch received: exact under drop-oldest
        // (the newest batches are kept), at most the truth under drop-newest (the last
        // batches may be the dropped ones, with no batch after them to say so).
        if policy == "drop-oldest" {
            assert_eq!(lost_in_band, lost_by_stats, "{policy}");
        } else {
            assert!(lost_in_band <= lost_by_stats, "{policy}");
        }
    }
}

#[test]
fn disconnect_cuts_the_slow_subscriber_off_with_a_reason() {
    let (fast, slow, err, _) = run_policy("disconnect");
    assert_eq!(fast["packets"], 200 * 16);
    assert!(!slow.status.success());
    assert!(err.contains("queue") && err.contains("full"), "{err}");
}

#[test]
fn block_loses_nothing_and_paces_the_producer() {
    let (fast, slow, _, lost) = run_policy("block");
    assert_eq!(lost, 0);
    assert_eq!(fast["packets"], 200 * 16);
    assert!(slow.status.success(), "{slow:?}");
    let slow = summary(&slow);
    assert_eq!(slow["packets"], 200 * 16);
    assert_eq!(slow["lost_batches"], 0);
}

#[test]
fn stats_count_what_was_sent() {
    let daemon = Daemon::start(None);
    let sub = subscriber(&daemon, "default", &["--count", "500"]);
    let mut producer = Producer::connect_with("default", options(&daemon)).unwrap();
    for b in 0..5 {
        producer.send(&packets(100, 64, b)).unwrap();
    }
    wait_output(sub, DEADLINE);
    let stats = packet_ipc::stats(&options(&daemon), Some("default")).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].packets_in, 500);
    assert_eq!(stats[0].batches_in, 5);
    assert_eq!(stats[0].producers, 1);
    let err = packet_ipc::stats(&options(&daemon), Some("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"));
}
