//! The daemon's descriptor fan-out: one [`packet_ipc::Producer`] sends tiny batches (one
//! 64 B packet each) to a server of `packet-ipcd`, and N [`packet_ipc::Subscriber`]s
//! (N = 1, 2, 4, 8), each on its own thread, receive every one of them. With batches this
//! small the cost is the descriptor path: producer to hub, hub to every subscriber, and
//! every release back to the producer.
//!
//! The daemon is `packet-ipcd`'s own code (`packet_ipc::broker::daemon::run`), running on
//! a thread of this process in a temporary runtime directory, with one server under
//! `overflow = "block"`, so nothing is dropped: the producer is paced by the slowest
//! subscriber. A measurement runs from the first batch sent until every subscriber has
//! received every batch. Throughput is in batches delivered (N per batch sent).
//!
//! Run with `cargo bench --bench fanout` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a shorter run).

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use packet_ipc::broker::config::{self, Source};
use packet_ipc::broker::testing::InProcessDaemon;
use packet_ipc::connect::ConnectOptions;
use packet_ipc::{Packet, Producer, Subscriber};

/// The server of the daemon.
const SERVER: &str = "fanout";
/// Subscriber counts measured.
const FANOUT: [usize; 4] = [1, 2, 4, 8];
/// Bytes of the one packet of each batch.
const PACKET_SIZE: usize = 64;
/// Generous deadline for anything that should take milliseconds (a shared 2-core machine):
/// a hang fails the bench instead of stalling it.
const DEADLINE: Duration = Duration::from_secs(60);

/// The daemon's configuration: one lossless server, room for every subscriber.
const CONFIG: &str = r#"
[daemon]
shutdown-timeout-ms = 1000

[servers.fanout]
linktype = 1
snaplen = 65535
queue-depth = 256
overflow = "block"
max-subscribers = 16
max-producers = 1
max-batch-bytes = 1048576
"#;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

/// `packet-ipcd`'s code on [`CONFIG`], on a thread of this process.
struct Daemon {
    daemon: InProcessDaemon,
    /// The configuration file's directory, kept while the daemon runs.
    _config_dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("pipc-fanout")
            .tempdir_in("/tmp")
            .expect("a directory for the configuration");
        let file = dir.path().join("packet-ipcd.toml");
        std::fs::write(&file, CONFIG).expect("writing the configuration");
        let source = Source::File(file);
        // No environment overrides: the bench measures this configuration.
        let config = config::load_with_env(&source, &[]).expect("a valid configuration");
        Daemon {
            daemon: InProcessDaemon::start(source, config).expect("the daemon"),
            _config_dir: dir,
        }
    }

    fn options(&self) -> ConnectOptions {
        self.daemon.options()
    }

    /// Waits until the server lists exactly `n` subscribers.
    fn wait_for_subscribers(&self, n: usize) {
        let options = self.options();
        let start = Instant::now();
        loop {
            let stats = packet_ipc::stats(&options, Some(SERVER)).expect("stats");
            let listed = stats.first().map_or(0, |s| s.subscribers.len());
            if listed == n {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the server lists {listed} subscribers, not {n}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the daemon; panics if it stopped with an error.
    fn stop(self) {
        self.daemon.stop().expect("the daemon stopped cleanly");
    }
}

/// N subscriber threads, connected, each receiving as many batches as it is told.
struct Subscribers {
    /// One per subscriber: how many batches to receive next.
    work: Vec<mpsc::Sender<u64>>,
    /// One message per subscriber per round, once it has received them all.
    done: mpsc::Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Subscribers {
    fn start(daemon: &Daemon, n: usize) -> Subscribers {
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let mut work = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (work_tx, work_rx) = mpsc::channel::<u64>();
            let options = daemon.options();
            let done_tx = done_tx.clone();
            let ready_tx = ready_tx.clone();
            let thread = thread::Builder::new()
                .name(format!("subscriber-{i}"))
                .spawn(move || {
                    let mut sub =
                        Subscriber::connect_with(SERVER, options).expect("connecting a subscriber");
                    ready_tx.send(()).expect("reporting ready");
                    let mut last_seq = None;
                    while let Ok(count) = work_rx.recv() {
                        for _ in 0..count {
                            let batch = sub
                                .recv()
                                .expect("receiving a batch")
                                .expect("the server ended");
                            assert_eq!(batch.lost(), 0, "a batch was dropped under block");
                            assert!(
                                last_seq.is_none_or(|s| batch.seq() > s),
                                "batches out of order"
                            );
                            last_seq = Some(batch.seq());
                            for p in &batch {
                                black_box(p);
                            }
                        }
                        if done_tx.send(()).is_err() {
                            break;
                        }
                    }
                })
                .expect("starting a subscriber thread");
            work.push(work_tx);
            threads.push(thread);
        }
        for _ in 0..n {
            ready
                .recv_timeout(DEADLINE)
                .expect("a subscriber did not connect");
        }
        // The daemon delivers only to the subscribers present when a batch arrives.
        daemon.wait_for_subscribers(n);
        Subscribers {
            work,
            done,
            threads,
        }
    }

    /// Tells every subscriber to receive `count` batches.
    fn expect(&self, count: u64) {
        for w in &self.work {
            w.send(count).expect("a subscriber thread is gone");
        }
    }

    /// Waits until every subscriber has received what it was told to.
    fn wait(&self) {
        for _ in 0..self.work.len() {
            self.done
                .recv_timeout(DEADLINE)
                .expect("a subscriber did not receive every batch");
        }
    }

    /// Disconnects every subscriber and joins its thread.
    fn stop(self) {
        drop(self.work);
        for t in self.threads {
            t.join().expect("a subscriber thread panicked");
        }
    }
}

fn fanout(c: &mut Criterion) {
    let daemon = Daemon::start();
    let mut producer =
        Producer::connect_with(SERVER, daemon.options()).expect("connecting the producer");
    let batch = [Packet::new(
        SystemTime::now(),
        (0..PACKET_SIZE).map(|i| i as u8).collect(),
    )];

    let mut group = c.benchmark_group("fanout");
    for n in FANOUT {
        let subs = Subscribers::start(&daemon, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("1x64B_batches", n), |b| {
            b.iter_custom(|iters| {
                subs.expect(iters);
                let start = Instant::now();
                for _ in 0..iters {
                    producer.send(&batch).expect("sending a batch");
                }
                subs.wait();
                start.elapsed()
            })
        });
        subs.stop();
        // Nothing was dropped for anyone, and the next N starts with no subscriber left.
        daemon.wait_for_subscribers(0);
        let stats = packet_ipc::stats(&daemon.options(), Some(SERVER)).expect("stats");
        assert_eq!(
            stats.first().map(|s| s.unsubscribed_batches),
            Some(0),
            "batches reached no subscriber"
        );
    }
    group.finish();

    drop(producer);
    daemon.stop();
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
