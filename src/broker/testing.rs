//! Hooks for tests: clients that misbehave on purpose, to test the daemon's defences, and
//! the daemon's own code run in-process, for tests and benches of packages that cannot rely
//! on the `packet-ipcd` binary being built.
//!
//! Not part of the API: hidden from the documentation, and of no use outside tests.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::connect::ConnectOptions;
use crate::packet::AsIpcPacket;
use crate::transport::plink::ProducerNotice;
use crate::transport::region::ProducerDesc;
use crate::{Error, Producer, Result, Subscriber};

/// A producer that can write what the library never would into its ring, its pool and
/// its socket.
pub struct HostileProducer {
    producer: Producer,
}

impl HostileProducer {
    /// Connects to `server` as a producer.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileProducer> {
        Ok(HostileProducer {
            producer: Producer::connect_with(server, options.clone())?,
        })
    }

    /// The id the daemon gave this producer.
    pub fn id(&self) -> u64 {
        self.producer.id().unwrap_or(0)
    }

    /// Sends a well-formed batch, as a producer would.
    pub fn send<T: AsIpcPacket>(&mut self, packets: &[T]) -> Result<()> {
        self.producer.send(packets)
    }

    fn link(&mut self) -> Result<&mut crate::transport::plink::ProducerLink> {
        self.producer
            .link_mut()
            .ok_or_else(|| Error::Spool("not connected".into()))
    }

    /// Writes `bytes` at the start of slot `slot` of its pool (whoever holds it).
    pub fn write_slot(&mut self, slot: u32, bytes: &[u8]) -> Result<()> {
        let link = self.link()?;
        let shape = link.shape();
        let (_, pool, _, _) = link.raw();
        let Some((at, size)) = shape.slot(slot) else {
            return Err(Error::Spool("outside the pool".into()));
        };
        if at + bytes.len() > pool.len() || bytes.len() > size {
            return Err(Error::Spool("outside the pool".into()));
        }
        // SAFETY: within the pool mapping (checked); a test writing on purpose what the
        // daemon and subscribers must survive.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), pool.as_ptr().add(at), bytes.len())
        };
        Ok(())
    }

    /// Publishes a descriptor with these values, whatever they are.
    pub fn publish(&mut self, slot: u32, len: u32, count: u32) -> Result<()> {
        let link = self.link()?;
        let (region, _, head, _) = link.raw();
        region.write_desc(
            *head,
            &ProducerDesc {
                slot,
                len,
                count,
                flags: 0,
                seq: 0,
                bytes: 0,
            },
        );
        *head += 1;
        region.desc_head().store(*head, Ordering::Release);
        self.wake()
    }

    /// Moves its ring's head to `head`.
    pub fn set_head(&mut self, head: u64) -> Result<()> {
        let link = self.link()?;
        let (region, _, _, _) = link.raw();
        region.desc_head().store(head, Ordering::Release);
        self.wake()
    }

    /// Moves its release ring's tail to `tail` (slots it says it took back).
    pub fn set_release_tail(&mut self, tail: u64) -> Result<()> {
        let link = self.link()?;
        let (region, _, _, _) = link.raw();
        region.rel_tail().store(tail, Ordering::Release);
        self.wake()
    }

    /// Tries to shrink its region and its pool to nothing (what would make every process
    /// that maps them die of `SIGBUS`, were they not sealed): the errors, one per memory.
    pub fn truncate(&mut self) -> Result<Vec<std::io::Error>> {
        let link = self.link()?;
        Ok(link
            .memory()
            .iter()
            .filter_map(|fd| {
                nix::unistd::ftruncate(fd, 0)
                    .err()
                    .map(std::io::Error::from)
            })
            .collect())
    }

    /// Writes pseudo-random bytes over its whole region: heads, tails, flags, rings.
    pub fn scribble(&mut self, seed: u64) -> Result<()> {
        let link = self.link()?;
        let (region, _, _, _) = link.raw();
        scribble(region.mapping(), seed);
        self.wake()
    }

    /// Sends a wake-up frame whether the daemon sleeps or not.
    fn wake(&mut self) -> Result<()> {
        self.raw_frame(&wake_frame(), false)
    }

    /// Sends `bytes` on its socket as they are, with a descriptor attached if `fd`.
    pub fn raw_frame(&mut self, bytes: &[u8], fd: bool) -> Result<()> {
        let (_, _, _, conn) = self.link()?.raw();
        send_raw(conn, bytes, fd)
    }

    /// Leaves without a word: shuts its socket down, but keeps its pool mapped and
    /// writable, as a producer that means to write into it once it is gone.
    pub fn hang_up(&mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let link = self.link()?;
        let (_, _, _, conn) = link.raw();
        nix::sys::socket::shutdown(conn.as_fd().as_raw_fd(), nix::sys::socket::Shutdown::Both)
            .map_err(|e| Error::Spool(format!("shutdown: {e}")))
    }

    /// Writes `bytes` at the start of every slot of its pool that holds them: the slots
    /// written.
    pub fn write_everywhere(&mut self, bytes: &[u8]) -> Result<u32> {
        let slots = self.link()?.shape().slots();
        Ok((0..slots)
            .filter(|&slot| self.write_slot(slot, bytes).is_ok())
            .count() as u32)
    }

    /// Waits up to `timeout` for the daemon's word that it cut this producer off.
    pub fn cut_off(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        let link = self.link()?;
        loop {
            match link.notice_now() {
                Ok(Some(ProducerNotice::Refused(why))) => return Ok(Some(why)),
                Ok(_) => {}
                Err(crate::TransportError::Disconnected) => {
                    return Ok(Some("the daemon closed the connection".into()))
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A wake-up frame.
fn wake_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    crate::transport::wire::wake(&mut frame);
    frame
}

/// Sends `bytes` on `conn` as they are, with a descriptor (of a temporary file) attached
/// if `fd`.
fn send_raw(conn: &crate::transport::sock::Conn, bytes: &[u8], fd: bool) -> Result<()> {
    let file = tempfile_fd()?;
    let fds = if fd { vec![file.as_fd()] } else { Vec::new() };
    conn.send(bytes, &fds).map_err(|e| {
        Error::Transport(crate::TransportError::Io {
            what: "raw frame",
            source: e,
        })
    })
}

/// A client that connects and then never says it is ready (nor anything else).
pub struct SilentClient {
    _connected: crate::connect::Connected,
}

impl SilentClient {
    /// Connects to `server` as a producer or a subscriber, and stays silent.
    pub fn connect(server: &str, producer: bool, options: &ConnectOptions) -> Result<SilentClient> {
        let role = if producer {
            crate::connect::Role::Producer
        } else {
            crate::connect::Role::Subscriber
        };
        Ok(SilentClient {
            _connected: crate::connect::connect_once(server, role, options)?,
        })
    }
}

/// Fills `map` with bytes from a splitmix64 generator.
fn scribble(map: &crate::transport::memfd::Mapping, seed: u64) {
    let mut x = seed;
    for off in (0..map.len()).step_by(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // SAFETY: within the mapping (off + 8 <= len, the length is a multiple of the
        // page size); the region is shared memory written on purpose by a test.
        unsafe { (map.as_ptr().add(off) as *mut u64).write_unaligned(z) };
    }
}

fn tempfile_fd() -> Result<std::fs::File> {
    std::fs::File::open("/dev/null").map_err(|e| {
        Error::Transport(crate::TransportError::Io {
            what: "opening /dev/null",
            source: e,
        })
    })
}

/// A subscriber that can write what the library never would into its ring and socket.
pub struct HostileSubscriber {
    subscriber: Subscriber,
}

impl HostileSubscriber {
    /// Connects to `server` as a subscriber.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileSubscriber> {
        Ok(HostileSubscriber {
            subscriber: Subscriber::connect_with(server, options.clone())?,
        })
    }

    /// The id the daemon gave this subscriber.
    pub fn id(&self) -> u64 {
        self.subscriber.id().unwrap_or(0)
    }

    /// Receives one batch as a subscriber would, holding it (`None` on a timeout).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<crate::Batch>> {
        match self.subscriber.recv_timeout(timeout)? {
            crate::Received::Batch(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    fn link(&mut self) -> Result<&mut crate::transport::slink::SubscriberLink> {
        self.subscriber
            .link_mut()
            .ok_or_else(|| Error::Spool("not connected".into()))
    }

    /// Writes pseudo-random bytes over its whole region: heads, tails, flags, rings.
    pub fn scribble(&mut self, seed: u64) -> Result<()> {
        let (region, conn) = self.link()?.raw();
        scribble(region.mapping(), seed);
        send_raw(conn, &wake_frame(), false)
    }

    /// Moves its ring's tail to `tail` (batches it says it released).
    pub fn set_tail(&mut self, tail: u64) -> Result<()> {
        let (region, conn) = self.link()?.raw();
        region.desc_tail().store(tail, Ordering::Release);
        send_raw(conn, &wake_frame(), false)
    }

    /// Sends `bytes` on its socket as they are, with a descriptor attached if `fd`.
    pub fn raw_frame(&mut self, bytes: &[u8], fd: bool) -> Result<()> {
        let (_, conn) = self.link()?.raw();
        send_raw(conn, bytes, fd)
    }

    /// Waits up to `timeout` for the daemon's word: the reason it cut this subscriber
    /// off, if it did (batches received meanwhile are dropped).
    pub fn cut_off(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.subscriber.recv_timeout(left) {
                Ok(crate::Received::Timeout) => return Ok(None),
                Ok(crate::Received::End) => return Ok(Some("the server ended".into())),
                Ok(crate::Received::Batch(_)) => {}
                Err(Error::Disconnected { reason, .. }) => return Ok(Some(reason)),
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// `packet-ipcd`'s own code ([`crate::broker::daemon::run`]) on a thread of this process,
/// with its own tokio runtime, in a temporary runtime directory.
pub struct InProcessDaemon {
    rendezvous: std::path::PathBuf,
    control: tokio::sync::mpsc::Sender<crate::broker::daemon::Control>,
    thread: Option<std::thread::JoinHandle<std::result::Result<(), String>>>,
    // Dropped last: the daemon is gone before its directory is.
    _dir: tempdir::TempDir,
}

/// How long [`InProcessDaemon`] waits for the daemon to start or stop.
const IN_PROCESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl InProcessDaemon {
    /// Starts the daemon on `config` (read from `source`, which a reload reads again) in a
    /// fresh runtime directory, and waits until it has published its rendezvous file.
    pub fn start(
        source: crate::broker::config::Source,
        mut config: crate::broker::config::Config,
    ) -> std::result::Result<InProcessDaemon, String> {
        use crate::rendezvous::{self, Rendezvous};
        let dir = tempdir::TempDir::new().map_err(|e| format!("a runtime directory: {e}"))?;
        config.daemon.runtime_dir = Some(dir.0.clone());
        // What the daemon will use (the environment has the last word, as for packet-ipcd).
        let runtime = rendezvous::daemon_runtime_dir(Some(&dir.0));
        let rendezvous = rendezvous::rendezvous_path(&runtime);
        let (control, rx) = tokio::sync::mpsc::channel(4);
        let thread = std::thread::Builder::new()
            .name("packet-ipcd".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let result = rt.block_on(crate::broker::daemon::run(source, config, rx));
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
                result.map_err(|e| e.to_string())
            })
            .map_err(|e| format!("starting the daemon thread: {e}"))?;
        let mut daemon = InProcessDaemon {
            rendezvous,
            control,
            thread: Some(thread),
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while !Rendezvous::read(&daemon.rendezvous).is_ok_and(|r| r.pid == std::process::id()) {
            if daemon.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let result = daemon.thread.take().map(|t| t.join());
                return Err(format!("the daemon stopped: {result:?}"));
            }
            if start.elapsed() > IN_PROCESS_DEADLINE {
                return Err("the daemon never got ready".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// Its rendezvous file.
    pub fn rendezvous(&self) -> &std::path::Path {
        &self.rendezvous
    }

    /// Options that reach this daemon, and fail at once rather than wait for another.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            rendezvous: Some(self.rendezvous.clone()),
            reconnect_wait: std::time::Duration::ZERO,
            ..ConnectOptions::default()
        }
    }

    /// Asks the daemon to stop and waits for it: its result.
    pub fn stop(mut self) -> std::result::Result<(), String> {
        let _ = self
            .control
            .try_send(crate::broker::daemon::Control::Shutdown);
        let Some(thread) = self.thread.take() else {
            return Err("the daemon had stopped already".into());
        };
        let start = std::time::Instant::now();
        while !thread.is_finished() {
            if start.elapsed() > IN_PROCESS_DEADLINE {
                return Err("the daemon did not stop".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        thread
            .join()
            .map_err(|_| "the daemon thread panicked".to_owned())?
    }
}

impl Drop for InProcessDaemon {
    /// Without [`InProcessDaemon::stop`] (a failing test): stops the daemon if it still
    /// runs, waiting a little.
    fn drop(&mut self) {
        let _ = self
            .control
            .try_send(crate::broker::daemon::Control::Shutdown);
        if let Some(thread) = self.thread.take() {
            let start = std::time::Instant::now();
            while !thread.is_finished() && start.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Packet `i` of batch `batch` from the test producer tagged `tag`: 12 to `size` bytes (a
/// length that varies with `i`), starting with the tag, the batch and `i` (little-endian
/// u32s), then bytes that follow from all three. `packet-ipc-peer produce --tag` sends
/// these, and a test checks each packet it receives against this, byte for byte, and
/// tells whose it is.
pub fn tagged_packet(tag: u32, batch: u32, i: u32, size: usize) -> Vec<u8> {
    let len = size.saturating_sub(i as usize % 7).max(12);
    let mut data: Vec<u8> = (0..len)
        .map(|k| (tag.wrapping_mul(31) ^ batch.wrapping_mul(7) ^ i ^ k as u32) as u8)
        .collect();
    data[..4].copy_from_slice(&tag.to_le_bytes());
    data[4..8].copy_from_slice(&batch.to_le_bytes());
    data[8..12].copy_from_slice(&i.to_le_bytes());
    data
}

/// What another local user can do to the bootstrap: flood the spool with requests,
/// swap request files under the daemon, answer other users' clients first. The tests run
/// these as another user (`packet-ipc-peer attack ...` under `setpriv`).
pub mod attack {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use crate::connect::ConnectOptions;
    use crate::rendezvous::{spool, Rendezvous};
    use crate::transport::sock::{Conn, Listener};
    use crate::{Error, Result};

    fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::Spool(format!("{what}: {e}"))
    }

    /// The daemon's control directory and `server`'s two spool directories.
    pub fn spools(options: &ConnectOptions, server: &str) -> Result<Vec<PathBuf>> {
        let r = Rendezvous::read(&options.rendezvous_path())
            .map_err(|e| Error::NoDaemon(e.to_string()))?;
        let entry = r
            .server(server)
            .ok_or_else(|| Error::Spool(format!("no server {server}")))?;
        Ok(vec![
            r.control.clone(),
            entry.producers.clone(),
            entry.subscribers.clone(),
        ])
    }

    /// Requests naming sockets that never accept: held until dropped.
    pub struct Flood {
        _requests: Vec<(Listener, spool::Submitted)>,
        /// How many requests were written.
        pub written: usize,
    }

    /// Drops `n` requests into `dir`, each naming a socket of its own that listens with a
    /// backlog of 0 and never accepts: the daemon's connect gets in (a backlog of 0 holds
    /// one), and then nothing is ever said on it.
    pub fn flood(dir: &Path, n: usize) -> Result<Flood> {
        let mut requests = Vec::with_capacity(n);
        for k in 0..n {
            let name = format!("{:x}-flood-{k}.sock", std::process::id());
            let listener = Listener::bind(&dir.join(&name), 0o666).map_err(io("listening"))?;
            listener.set_backlog(0).map_err(io("listen(0)"))?;
            match spool::submit(dir, &name, None) {
                Ok(s) => requests.push((listener, s)),
                Err(e) => return Err(Error::Spool(e.to_string())),
            }
        }
        Ok(Flood {
            written: requests.len(),
            _requests: requests,
        })
    }

    fn c_path(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
    }

    /// Until `until`: in `dir`, exchanges a request file with a FIFO
    /// (`renameat2(RENAME_EXCHANGE)`) as fast as it can, so that the name the daemon was
    /// told about is a FIFO when it opens it; and plants a link to `/dev/zero` named as a
    /// request. The exchanges made.
    pub fn swap_requests(dir: &Path, until: Instant) -> Result<u64> {
        let stem = format!("{:x}-swap", std::process::id());
        let request = dir.join(format!("{stem}.{}", spool::REQUEST_EXT));
        let fifo = dir.join(format!(".{stem}.fifo"));
        let zero = dir.join(format!("{stem}-zero.{}", spool::REQUEST_EXT));
        let body = format!(
            "{{\"version\": 2, \"socket\": \"{stem}.sock\", \"pid\": {}}}",
            std::process::id()
        );
        let (request_c, fifo_c) = (c_path(&request), c_path(&fifo));
        let mut swaps = 0;
        while Instant::now() < until {
            // The daemon takes (removes) what it is given: put back what is missing.
            if std::fs::symlink_metadata(&fifo).is_err() {
                // SAFETY: a valid C string.
                unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o666) };
            }
            if std::fs::symlink_metadata(&request).is_err() {
                let _ = std::fs::write(&request, &body);
            }
            if std::fs::symlink_metadata(&zero).is_err() {
                let _ = std::os::unix::fs::symlink("/dev/zero", &zero);
            }
            // SAFETY: valid C strings; RENAME_EXCHANGE swaps two existing names.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    request_c.as_ptr(),
                    libc::AT_FDCWD,
                    fifo_c.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            if rc == 0 {
                swaps += 1;
            }
        }
        for p in [&request, &fifo, &zero] {
            let _ = std::fs::remove_file(p);
        }
        Ok(swaps)
    }

    /// The name of the one server in the counters [`impersonate`] forges.
    pub const FORGED_SERVER: &str = "forged-by-an-impostor";

    /// Until `until`: connects to every client socket it finds in `dirs` and answers in
    /// the daemon's place (counters naming [`FORGED_SERVER`] in sealed memory, a welcome,
    /// a refusal), as a user who wants to answer other users' clients before the daemon
    /// does. The connections made.
    pub fn impersonate(dirs: &[PathBuf], until: Instant) -> Result<u64> {
        use crate::transport::bootstrap::{send_refused, send_stats};
        let stats = crate::stats::Stats {
            servers: vec![crate::stats::ServerStats {
                name: FORGED_SERVER.into(),
                packets_in: 424_242,
                ..Default::default()
            }],
        };
        let forged_stats = serde_json::to_string(&stats).unwrap_or_default();
        let forged_welcome = b"\x01\x00\x00\x00\x00\x00\x00\x00{\"forged\": true}";
        let mut connected = 0;
        while Instant::now() < until {
            for dir in dirs {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name();
                    if !name.as_bytes().ends_with(spool::SOCKET_EXT.as_bytes()) {
                        continue;
                    }
                    let Ok(conn) = Conn::connect_nonblocking(&e.path()) else {
                        continue;
                    };
                    connected += 1;
                    let _ = send_stats(&conn, &forged_stats);
                    let _ = conn.send(forged_welcome, &[]);
                    send_refused(&conn, "the impostor says no");
                    // Held a moment, as if it had something more to say.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    drop::<Conn>(conn);
                }
            }
        }
        Ok(connected)
    }
}

mod tempdir {
    use std::path::PathBuf;

    /// A temporary runtime directory, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> std::io::Result<TempDir> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let path = std::env::temp_dir().join(format!("pit-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&path)?;
            Ok(TempDir(path))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
