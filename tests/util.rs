//! Helpers shared by the integration tests.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use packet_ipc::batch::BatchView;
use packet_ipc::{AsIpcPacket, Packet};

/// Generous deadline for anything a test waits on: long enough for a loaded 2-core CI
/// machine, short enough that a hang fails instead of stalling the run.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The point-to-point peer binary.
pub fn peer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_packet-ipc-peer"))
}

/// Starts `packet-ipc-peer client NAME ARGS...` with its output captured.
pub fn spawn_client(name: &str, args: &[&str]) -> Child {
    peer()
        .arg("client")
        .arg(name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start packet-ipc-peer client")
}

/// Waits for a child, killing it and failing the test after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait for child").is_some() {
            return child.wait_with_output().expect("collect child output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect child output");
            panic!(
                "child still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The JSON summary a `packet-ipc-peer client` printed.
pub fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no summary ({e}): stdout {text:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `f` on a thread and fails the test if it does not finish within `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// `count` packets of varied sizes (up to `max_len` bytes), timestamps with nanoseconds,
/// and some cut short (original length above the captured length). `seed` varies content.
pub fn packets(count: usize, max_len: usize, seed: u64) -> Vec<Packet> {
    let base = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001 + seed);
    (0..count)
        .map(|i| {
            let len = (i * 37 + seed as usize) % (max_len + 1);
            let data = (0..len)
                .map(|k| (k as u64 ^ seed ^ i as u64) as u8)
                .collect();
            let ts = base + Duration::from_nanos(i as u64 * 1_001);
            if i % 5 == 0 {
                Packet::with_orig_len(ts, data, len + 100)
            } else {
                Packet::new(ts, data)
            }
        })
        .collect()
}

/// Every packet of a batch file written by `packet-ipc-peer client --out`.
pub fn read_batch_file(path: &Path) -> Vec<Packet> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("read batch file");
    let view = BatchView::parse(&bytes).expect("a valid batch");
    view.iter().map(|p| p.to_packet()).collect()
}

/// Asserts two packet lists are identical: bytes, original lengths and timestamps.
pub fn assert_same_packets(got: &[Packet], want: &[Packet]) {
    assert_eq!(got.len(), want.len(), "packet count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.data(), w.data(), "bytes of packet {i}");
        assert_eq!(g.orig_len(), w.orig_len(), "original length of packet {i}");
        assert_eq!(g.timestamp(), w.timestamp(), "timestamp of packet {i}");
    }
}
