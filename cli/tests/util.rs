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

/// The test peer, `packet-ipc-peer`: an example of this package (so that `cargo install`
/// leaves it out), which `cargo test` builds beside the test binary. Built here when a
/// narrower command (`cargo test --test integration`) did not.
pub fn peer_path() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/integration-HASH -> target/<profile>/examples/
        let profile = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target directory");
        let path = profile.join("examples").join("packet-ipc-peer");
        if !path.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "-p",
                "packet-ipc-cli",
                "--example",
                "packet-ipc-peer",
            ]);
            if profile.file_name() == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo to build packet-ipc-peer");
            assert!(status.success(), "cannot build the packet-ipc-peer example");
        }
        path
    })
    .clone()
}

/// The point-to-point peer binary.
pub fn peer() -> Command {
    Command::new(peer_path())
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

/// The daemon binary. It belongs to the library's package (`packet-ipc`, feature
/// `daemon`), so it is not this package's to name: it lies beside this package's
/// `packet-ipc`, in the same target directory, where `cargo test --workspace` (and
/// `cargo build`) put it.
pub fn daemon_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_BIN_EXE_packet-ipc")).with_file_name("packet-ipcd");
        assert!(
            bin.is_file(),
            "{} is not built: run `cargo test --workspace`, or `cargo build --bin packet-ipcd` \
             first",
            bin.display()
        );
        bin.to_string_lossy().into_owned()
    })
}

/// The group of the tests that run clients as other users, a member and an outsider.
pub const GROUP: &str = "pipc-cap";
/// A member of [`GROUP`].
pub const ALLOWED: &str = "pipc-alice";
/// A user in no group of ours: the other local user of the trust tests.
pub const DENIED: &str = "pipc-bob";

/// Creates [`GROUP`], [`ALLOWED`] and [`DENIED`] (once; they may exist from an earlier
/// run), for test `what`. False when this process may not (not root: `skipped: ...`), or
/// cannot ([`available`]: no useradd, no setpriv): the caller returns.
pub fn users(what: &str) -> bool {
    if !is_root(what) {
        return false;
    }
    let run = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    // Exit status 9 means "already exists".
    let ok = |s: std::io::Result<std::process::ExitStatus>| {
        s.is_ok_and(|s| s.success() || s.code() == Some(9))
    };
    let user = |name: &str, groups: &[&str]| {
        let mut cmd = Command::new("useradd");
        cmd.args(["-M", "-s", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            cmd.arg("-G").arg(groups.join(","));
        }
        ok(run(cmd.arg(name)))
    };
    let made = ok(run(Command::new("groupadd").arg(GROUP)))
        && user(ALLOWED, &[GROUP])
        && user(DENIED, &[]);
    available(
        what,
        "groupadd and useradd (apt-get install passwd)",
        (!made).then(|| "cannot create the test users".to_owned()),
    ) && tool_available(what, "setpriv", &["--version"], "util-linux")
}

/// The uid of `user`.
pub fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no user {user}"))
        .uid
        .as_raw()
}

/// `program` run as `user`, with that user's groups (`setpriv`), and an environment with
/// no runtime directory of ours in it.
pub fn as_user(user: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        "--",
    ])
    .arg(program)
    .env_remove("PACKET_IPC_RUNTIME_DIR")
    .env_remove("PACKET_IPC_RENDEZVOUS")
    .env_remove("XDG_RUNTIME_DIR");
    cmd
}

/// `packet-ipc-peer ARGS` run as `user` (with that user's groups) against `daemon`.
pub fn peer_as(daemon: &Daemon, user: &str, args: &[&str]) -> Child {
    as_user(user, peer_path())
        .args(args)
        .env("PACKET_IPC_RUNTIME_DIR", daemon.runtime())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a client as another user")
}

/// A `packet-ipcd` running in a temporary runtime directory, stopped (SIGKILL) on drop.
pub struct Daemon {
    /// The daemon process.
    pub child: Option<Child>,
    /// Holds the runtime directory (and the config file).
    pub dir: tempfile::TempDir,
    /// Where its log goes.
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Starts a daemon on `config` (TOML text; `None`: the embedded default) and waits
    /// until its rendezvous file is written.
    pub fn start(config: Option<&str>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("pipc")
            .tempdir_in("/tmp")
            .expect("a temporary runtime directory");
        Daemon::start_in(dir, config)
    }

    /// Starts a daemon in an existing directory (for restarts over what was left).
    pub fn start_in(dir: tempfile::TempDir, config: Option<&str>) -> Daemon {
        let log = dir.path().join("daemon.log");
        let mut cmd = Command::new(daemon_bin());
        if let Some(text) = config {
            let path = dir.path().join("packet-ipcd.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        let child = cmd
            .env("PACKET_IPC_RUNTIME_DIR", dir.path())
            .env_remove("PACKET_IPC_CONFIG")
            .env_remove("PACKET_IPC_RENDEZVOUS")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start packet-ipcd");
        let daemon = Daemon {
            child: Some(child),
            dir,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    /// The runtime directory.
    pub fn runtime(&self) -> &Path {
        self.dir.path()
    }

    /// Options that reach this daemon (and wait `reconnect_wait` for a successor).
    pub fn options(&self, reconnect_wait: Duration) -> packet_ipc::ConnectOptions {
        packet_ipc::ConnectOptions {
            rendezvous: Some(self.runtime().join("rendezvous.json")),
            reconnect_wait,
            ..packet_ipc::ConnectOptions::default()
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the rendezvous file names this daemon's pid.
    pub fn wait_ready(&self) {
        let path = self.runtime().join("rendezvous.json");
        let pid = self.pid();
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if text.contains(&format!("\"pid\": {pid}")) {
                    return;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "daemon not ready; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command with this daemon's runtime directory in its environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PACKET_IPC_RUNTIME_DIR", self.runtime())
            .env_remove("PACKET_IPC_RENDEZVOUS");
        cmd
    }

    /// `packet-ipc-peer ARGS` against this daemon, output captured.
    pub fn peer(&self, args: &[&str]) -> Child {
        self.command(peer_path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start packet-ipc-peer")
    }

    /// `packet-ipc ARGS` against this daemon.
    pub fn cli(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_packet-ipc"))
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal the daemon");
    }

    /// Stops the daemon with SIGTERM (it must exit 0) and starts a new one over the same
    /// runtime directory, as a service restart does.
    pub fn restart(mut self, config: Option<&str>) -> Daemon {
        self.signal(libc::SIGTERM);
        let child = self.child.take().expect("running");
        let status = wait_output(child, DEADLINE).status;
        assert!(status.success(), "the daemon stopped with {status:?}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a directory"));
        Daemon::start_in(dir, config)
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let child = self.child.take().expect("running");
        wait_output(child, DEADLINE).status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a child writes on stderr, collected by a thread.
pub struct Stderr {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Stderr {
    /// Everything the child wrote, once its stderr is closed (it has exited).
    pub fn text(mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.text.lock().unwrap().clone()
    }
}

/// Waits until a child printed a line starting with `line` on stderr; the rest of its
/// stderr is collected in the returned [`Stderr`]. Fails after the deadline.
pub fn wait_stderr_line(child: &mut Child, line: &str) -> Stderr {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    let want = line.to_owned();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let theirs = std::sync::Arc::clone(&text);
    let reader = thread::spawn(move || {
        let mut seen = false;
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            if !seen && l.starts_with(&want) {
                seen = true;
                let _ = tx.send(());
            }
            let mut t = theirs.lock().unwrap();
            t.push_str(&l);
            t.push('\n');
        }
    });
    if rx.recv_timeout(DEADLINE).is_err() {
        let _ = child.kill();
        panic!("child never printed {line:?}: {}", text.lock().unwrap());
    }
    Stderr {
        text,
        reader: Some(reader),
    }
}

/// Sends a signal to a child process (a `packet-ipc` under test).
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "signal the child");
}

/// How many files process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What the open descriptors of process `pid` point at (`/proc/PID/fd` links), sorted:
/// for a message that says what was left open.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The open descriptors of process `pid` once they stop changing (the same count over
/// half a second, several of the daemon's 100 ms housekeeping rounds; 10 s at most):
/// a baseline that what departed clients held no longer inflates.
pub fn settled_fds(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = open_fds(pid);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = open_fds(pid);
        if now == fds || Instant::now() > deadline {
            return now;
        }
        fds = now;
    }
}

/// Whether a test has what it needs. `missing` says why not (`None`: it is there). When
/// it is missing the test prints `skipped: <what>: needs <needs>` and should return (it
/// passes), unless `PACKET_IPC_REQUIRE_TOOLS=1` (CI sets it): then it fails here.
pub fn available(what: &str, needs: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    if std::env::var_os("PACKET_IPC_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("{what}: needs {needs}, and PACKET_IPC_REQUIRE_TOOLS=1: {why}");
    }
    eprintln!("skipped: {what}: needs {needs}");
    false
}

/// [`available`] for a program, which must be installed and run (`program PROBE...` exits
/// 0): `skipped: <what>: needs <program> (apt-get install <package>)`.
pub fn tool_available(what: &str, program: &str, probe: &[&str], package: &str) -> bool {
    let missing = match Command::new(program)
        .args(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!(
            "{program} {} exited with {status}",
            probe.join(" ")
        )),
        Err(e) => Some(format!("{program}: {e}")),
    };
    available(
        what,
        &format!("{program} (apt-get install {package})"),
        missing,
    )
}

/// [`available`] for libpcap, which `packet-ipc capture` and `--filter` load at run time.
pub fn libpcap_available(what: &str) -> bool {
    let package = packet_ipc::libpcap::DEBIAN_PACKAGE;
    available(
        what,
        &format!("libpcap (apt-get install {package})"),
        packet_ipc::libpcap::version().err().map(|e| e.to_string()),
    )
}

/// Whether this process runs as root (capturing needs it); if not, prints `skipped: <what>:
/// needs root`.
pub fn is_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {what}: needs root");
    }
    root
}

/// [`tool_available`] for a program that answers `--version`.
pub fn have_tool(what: &str, tool: &str, package: &str) -> bool {
    tool_available(what, tool, &["--version"], package)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over a plain TCP connection: see [`http`].
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    http(addr, "GET", path)
}

/// One HTTP/1.1 request over a plain TCP connection (`Connection: close`): the status
/// code, the headers (lower-cased names) and the body.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Write;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the endpoint");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
