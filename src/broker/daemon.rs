//! The daemon's lifecycle: startup, requests, reload, systemd notification, shutdown.
//!
//! [`run`] is the whole daemon. It owns no signal handler: the binary turns signals into
//! [`Control`] messages. One tokio task owns the lifecycle, the rendezvous file, the
//! spool watcher (inotify) and the timers; each named server runs in a hub thread of its
//! own (`super::hub`), which is where the packets go.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::config::{self, Config, ServerConfig, Source};
use super::hub::board::{Board, Viewer};
use super::hub::{self, ClientInfo, Command, HubHandle};
use super::metrics::{self, MetricsError, SharedBoards};
use crate::rendezvous::fsafe::{self, Dir};
use crate::rendezvous::{self, spool, Rendezvous, ServerEntry, RENDEZVOUS_VERSION};
use crate::stats::Stats;
use crate::transport::bootstrap::{connect_client, send_stats};

/// What the daemon can be told while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Read the configuration again and apply the difference (SIGHUP).
    Reload,
    /// Deliver what is queued, tell the clients, and stop (SIGTERM, SIGINT).
    Shutdown,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot be used here.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Another daemon holds the runtime directory.
    #[error("another packet-ipcd{pid} is already running on {dir}")]
    AlreadyRunning {
        /// The runtime directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        pid: String,
    },
    /// The configuration is valid but does not fit this machine.
    #[error("{0}")]
    Setup(String),
    /// The machine would not give what a server needs (a thread, an inotify watch).
    #[error("{0}")]
    Resources(String),
    /// The metrics endpoint cannot start (`metrics.listen`).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// An I/O error at startup.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DaemonError {
    /// The process exit status for this error (sysexits).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Setup(_) | DaemonError::Metrics(_) => 78,
            DaemonError::AlreadyRunning { .. } => 75,
            DaemonError::Resources(_) => 71,
            DaemonError::Io { .. } => 73,
        }
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The longest Unix socket path (sun_path less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;
/// The longest name a client gives its socket in a spool directory, with its slash:
/// `/<pid, hex>-<counter, hex>.sock`.
const CLIENT_SOCKET_SUFFIX: usize = "/ffffffff-ffffffffffffffff.sock".len();
/// Requests of one user not done yet (not welcomed, or not yet ready), at most: the rest
/// wait their turn.
const PENDING_PER_UID: usize = 32;
/// Requests of one user waiting for a turn, at most: past this, more are refused.
const DEFERRED_PER_UID: usize = 4096;
/// How often the spool directories are swept of what dead clients left.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the daemon checks that every hub thread is alive.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// A hub silent this long is stuck: the watchdog stops being fed.
const HUB_STUCK_MS: u64 = 10_000;

/// Initializes logging: `RUST_LOG` filters (default `info`), text with colours only on a
/// terminal, or one JSON object per line.
pub fn init_logging(format: config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Problems `packet-ipcd --check` reports without failing: groups that do not exist here.
pub fn warnings(config: &Config) -> Vec<String> {
    config::missing_groups(config)
        .into_iter()
        .map(|(server, key, group)| {
            format!(
                "warning: servers.{server}.{key}: group {group:?} does not exist on this machine"
            )
        })
        .collect()
}

/// Paths of one server in the runtime directory.
struct ServerPaths {
    producers: PathBuf,
    subscribers: PathBuf,
}

fn server_paths(runtime: &Path, name: &str) -> ServerPaths {
    let base = runtime.join("srv").join(name);
    ServerPaths {
        producers: base.join("pub"),
        subscribers: base.join("sub"),
    }
}

/// Checks what only this machine can tell: groups exist, socket paths fit.
fn check_fits(config: &Config, runtime: &Path) -> Result<(), DaemonError> {
    if let Some((server, key, group)) = config::missing_groups(config).into_iter().next() {
        return Err(DaemonError::Setup(format!(
            "servers.{server}.{key}: group {group:?} does not exist on this machine"
        )));
    }
    for name in config.servers.keys() {
        let p = server_paths(runtime, name);
        let longest = p.subscribers.as_os_str().len() + CLIENT_SOCKET_SUFFIX;
        if longest > MAX_SOCKET_PATH {
            return Err(DaemonError::Setup(format!(
                "runtime directory {} with server name {name:?} makes socket paths of {longest} \
                 bytes, over the {MAX_SOCKET_PATH} a Unix socket allows: use a shorter \
                 runtime-dir or server name",
                runtime.display()
            )));
        }
    }
    Ok(())
}

/// Takes the runtime directory's lock, or says who holds it. The lock file is opened
/// without following a link: a planted link cannot make the daemon write elsewhere.
fn lock(runtime: &Dir, path: &Path) -> Result<File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let lock_path = path.join("packet-ipcd.lock");
    let mut file = runtime
        .open_file("packet-ipcd.lock", 0o644)
        .map_err(io_err("opening the lock", &lock_path))?;
    if file.try_lock().is_err() {
        let mut pid = String::new();
        let _ = (&mut file).take(32).read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(DaemonError::AlreadyRunning {
            dir: path.to_owned(),
            pid: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    file.set_len(0)
        .map_err(io_err("writing the lock", &lock_path))?;
    file.rewind()
        .map_err(io_err("writing the lock", &lock_path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("writing the lock", &lock_path))?;
    Ok(file)
}

/// Creates the runtime directory if needed and opens it. A directory that exists must be
/// this user's and writable by nobody else: the daemon never works in a directory another
/// user prepared (and could have filled with links).
fn prepare_runtime(runtime: &Path) -> Result<Dir, DaemonError> {
    if fsafe::lstat(runtime).is_err() {
        std::fs::create_dir_all(runtime).map_err(io_err("creating", runtime))?;
        std::fs::set_permissions(runtime, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting the mode of", runtime))?;
    }
    let dir = Dir::open(runtime).map_err(|e| {
        DaemonError::Setup(format!(
            "runtime directory {}: {e} (it must be a directory, not a link)",
            runtime.display()
        ))
    })?;
    let meta = dir.meta().map_err(io_err("checking", runtime))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid != me {
        return Err(DaemonError::Setup(format!(
            "runtime directory {} belongs to uid {}, not to this daemon's user (uid {me}); \
             refusing to use a directory another user made",
            runtime.display(),
            meta.uid
        )));
    }
    if meta.group_write() || meta.others_write() {
        // SAFETY: fchmod on our own directory descriptor.
        let rc = unsafe { libc::fchmod(dir.as_fd().as_raw_fd(), 0o755) };
        if rc != 0 {
            return Err(io_err("setting the mode of", runtime)(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(dir)
}

/// Which spool directory an inotify watch is on.
#[derive(Clone, Debug)]
struct Watched {
    /// The server, or `None` for the control directory.
    server: Option<String>,
    producer: bool,
    path: PathBuf,
    dir: Arc<Dir>,
}

/// A running server: its hub and its spool watches.
struct Running {
    config: ServerConfig,
    hub: HubHandle,
    watches: Vec<WatchDescriptor>,
    spools: [Arc<Dir>; 2],
}

/// The per-user bound on requests that are not done yet (not welcomed, or welcomed and
/// not yet ready): a user who floods the spool with requests for sockets that never
/// answer holds a few slots and waits for its own turns, and delays nobody else. A burst
/// of ordinary clients of one user is served in turns too.
#[derive(Default)]
struct Pending {
    by_uid: Mutex<HashMap<u32, usize>>,
    /// Requests taken from their spool, waiting for one of their user's slots.
    deferred: Mutex<HashMap<u32, std::collections::VecDeque<Deferred>>>,
    /// Told whenever a slot is released.
    freed: tokio::sync::Notify,
}

/// A request taken from its spool directory: for a server and role, or for the counters.
struct Deferred {
    server: Option<String>,
    producer: bool,
    request: spool::Request,
}

/// One slot of [`Pending`], released when dropped.
struct PendingSlot {
    pending: Arc<Pending>,
    uid: u32,
}

impl Pending {
    fn take(self: &Arc<Self>, uid: u32) -> Option<PendingSlot> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_uid.entry(uid).or_default();
        if *n >= PENDING_PER_UID {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            pending: Arc::clone(self),
            uid,
        })
    }

    /// Queues a request whose user has no slot free: false when its queue is full too.
    /// The first request of a run of waiting ones is logged.
    fn defer(&self, d: Deferred) -> bool {
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        let queue = deferred.entry(d.request.uid).or_default();
        if queue.len() >= DEFERRED_PER_UID {
            return false;
        }
        if queue.is_empty() {
            warn!(
                uid = d.request.uid,
                pid = d.request.pid,
                "{PENDING_PER_UID} requests of this user are not done yet: its next ones \
                 wait their turn"
            );
        }
        queue.push_back(d);
        true
    }

    /// The next waiting request whose user has a slot free now, with that slot.
    fn next_ready(self: &Arc<Self>) -> Option<(Deferred, PendingSlot)> {
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        let uids: Vec<u32> = deferred.keys().copied().collect();
        for uid in uids {
            let Some(slot) = self.take(uid) else {
                continue;
            };
            let queue = deferred.get_mut(&uid)?;
            let next = queue.pop_front();
            if queue.is_empty() {
                deferred.remove(&uid);
            }
            return next.map(|d| (d, slot));
        }
        None
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut by_uid = self
            .pending
            .by_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
        drop(by_uid);
        self.pending.freed.notify_one();
    }
}

impl hub::PendingToken for PendingSlot {}

/// The daemon's state, owned by its one lifecycle task.
struct Daemon {
    source: Source,
    config: Config,
    runtime: PathBuf,
    runtime_dir: Dir,
    srv: Dir,
    rendezvous: PathBuf,
    generation: u64,
    servers: BTreeMap<String, Running>,
    watched: HashMap<WatchDescriptor, Watched>,
    ids: Arc<AtomicU64>,
    epoch: Instant,
    pending: Arc<Pending>,
    /// The boards the metrics endpoint reads (kept current by `sync_metrics`).
    metrics: SharedBoards,
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// The counters of every server, as `viewer` may see them (JSON for `packet-ipc stats`).
fn stats_json(boards: &[Arc<Board>], viewer: &Viewer) -> String {
    let stats = Stats {
        servers: boards.iter().map(|b| b.snapshot(viewer)).collect(),
    };
    serde_json::to_string(&stats).unwrap_or_else(|_| r#"{"servers":[]}"#.into())
}

/// Who `uid` is, for the stats: root and the daemon's own user see everything; others see
/// the process ids of the servers whose groups they are in.
fn viewer(uid: u32) -> Viewer {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid == 0 || uid == me {
        return Viewer {
            all: true,
            gids: Vec::new(),
        };
    }
    let gids = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            nix::unistd::getgrouplist(&name, u.gid).ok()
        })
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    Viewer { all: false, gids }
}

/// Runs the daemon until it is told to shut down.
///
/// Everything up to READY=1 is startup: an error there ends `run` with the error (the
/// binary maps it to an exit status), and removes what the start created. After that,
/// nothing a client does ends it.
pub async fn run(
    source: Source,
    config: Config,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let runtime = rendezvous::daemon_runtime_dir(config.daemon.runtime_dir.as_deref());
    check_fits(&config, &runtime)?;
    let runtime_dir = prepare_runtime(&runtime)?;
    let _lock = lock(&runtime_dir, &runtime)?;
    let srv = runtime_dir
        .subdir("srv", 0o755, None)
        .map_err(io_err("creating", &runtime.join("srv")))?;
    let rendezvous_path = rendezvous::rendezvous_path(&runtime);

    let inotify = Inotify::init().map_err(io_err("starting inotify for", &runtime))?;
    let mut events = inotify
        .into_event_stream([0u8; 8192])
        .map_err(io_err("starting inotify for", &runtime))?;
    let mut daemon = Daemon {
        source,
        config: config.clone(),
        runtime: runtime.clone(),
        runtime_dir,
        srv,
        rendezvous: rendezvous_path,
        generation: 0,
        servers: BTreeMap::new(),
        watched: HashMap::new(),
        ids: Arc::new(AtomicU64::new(1)),
        epoch: Instant::now(),
        pending: Arc::new(Pending::default()),
        metrics: SharedBoards::default(),
    };
    // metrics: bound before anything is started (an address that cannot be used stops the
    // daemon with nothing to undo), served once the servers run, before READY=1.
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(metrics::bind(addr, daemon.metrics.clone()).await?),
        None => None,
    };
    // metrics: end
    daemon.remove_strays(&config);
    let started = daemon.start(&mut events, &config);
    if let Err(e) = started {
        daemon.clean_up();
        return Err(e);
    }
    // metrics: serve
    let _metrics_endpoint = metrics_listener.map(metrics::serve);
    // metrics: end
    info!(
        runtime_dir = %runtime.display(),
        servers = daemon.servers.len(),
        config = %daemon.source,
        "packet-ipcd ready"
    );
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving {} servers", daemon.servers.len())),
    ]);

    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    let mut health_tick = tokio::time::interval(HEALTH_EVERY);
    let pending = Arc::clone(&daemon.pending);
    loop {
        tokio::select! {
            () = pending.freed.notified() => daemon.serve_deferred(),
            ctl = control.recv() => match ctl {
                Some(Control::Reload) => daemon.reload(&mut events).await,
                Some(Control::Shutdown) | None => break,
            },
            event = events.next() => match event {
                Some(Ok(event)) => daemon.on_event(&event.wd, event.mask, event.name.as_deref()),
                Some(Err(e)) => warn!(error = %e, "reading spool events failed"),
                None => break,
            },
            _ = watchdog_tick.tick(), if watchdog.is_some() => daemon.feed_watchdog(),
            _ = sweep_tick.tick() => daemon.sweep(),
            _ = health_tick.tick() => daemon.restart_dead_hubs(&mut events),
        }
    }
    daemon.shutdown().await;
    Ok(())
}

impl Daemon {
    /// The control directory, the servers, the rendezvous file, and requests already
    /// waiting.
    fn start(
        &mut self,
        events: &mut inotify::EventStream<[u8; 8192]>,
        config: &Config,
    ) -> Result<(), DaemonError> {
        let ctl_path = self.runtime.join("ctl");
        // Anyone may ask for the counters (who sees which pids is decided per request).
        let ctl = spool::prepare(&self.runtime_dir, "ctl", None)
            .map_err(io_err("creating", &ctl_path))?;
        spool::sweep(&ctl);
        let wd = events
            .watches()
            .add(&ctl_path, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
            .map_err(io_err("watching", &ctl_path))?;
        self.watched.insert(
            wd,
            Watched {
                server: None,
                producer: false,
                path: ctl_path,
                dir: Arc::new(ctl),
            },
        );
        for (name, server) in &config.servers {
            self.start_server(events, name, server)?;
        }
        self.write_rendezvous()?;
        self.scan_all();
        Ok(())
    }

    /// Removes what a failed start created (the servers' spool directories), so that a
    /// daemon that could not start leaves nothing behind.
    fn clean_up(&mut self) {
        for (name, running) in std::mem::take(&mut self.servers) {
            running.hub.send(Command::Stop {
                removed: true,
                deadline: Instant::now(),
            });
            running.hub.join();
            let _ = self.srv.remove_tree(&name);
        }
        for name in self.srv.entries().unwrap_or_default() {
            let _ = self.srv.remove_tree(&name);
        }
    }

    /// Removes spool directories of servers that are not configured (left by an earlier
    /// run with another configuration).
    fn remove_strays(&self, config: &Config) {
        for name in self.srv.entries().unwrap_or_default() {
            if !config.servers.contains_key(&name) {
                let _ = self.srv.remove_tree(&name);
            }
        }
    }

    fn start_server(
        &mut self,
        events: &mut inotify::EventStream<[u8; 8192]>,
        name: &str,
        server: &ServerConfig,
    ) -> Result<(), DaemonError> {
        let paths = server_paths(&self.runtime, name);
        let setup = |e: std::io::Error| DaemonError::Setup(format!("server {name}: {e}"));
        // Every user must be able to reach the spool directories (their own modes decide
        // who may write), whatever the umask (systemd's UMask=0007 would say 0770).
        let base = self.srv.subdir(name, 0o755, None).map_err(setup)?;
        let gid = |g: &Option<String>| g.as_deref().and_then(config::group_id);
        let producers =
            Arc::new(spool::prepare(&base, "pub", gid(&server.producer_group)).map_err(setup)?);
        let subscribers =
            Arc::new(spool::prepare(&base, "sub", gid(&server.subscriber_group)).map_err(setup)?);
        spool::sweep(&producers);
        spool::sweep(&subscribers);
        let hub = hub::spawn(
            name.to_owned(),
            server.clone(),
            Arc::clone(&self.ids),
            self.epoch,
        )
        .map_err(|e| DaemonError::Resources(format!("server {name}: {e}")))?;
        let mut watches = Vec::new();
        for (path, dir, producer) in [
            (&paths.producers, &producers, true),
            (&paths.subscribers, &subscribers, false),
        ] {
            let wd = match events
                .watches()
                .add(path, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
            {
                Ok(wd) => wd,
                Err(e) => {
                    for wd in watches {
                        self.watched.remove(&wd);
                        let _ = events.watches().remove(wd);
                    }
                    hub.send(Command::Stop {
                        removed: true,
                        deadline: Instant::now(),
                    });
                    hub.join();
                    let _ = self.srv.remove_tree(name);
                    return Err(DaemonError::Resources(format!(
                        "server {name}: watching {}: {e} (see fs.inotify.max_user_watches)",
                        path.display()
                    )));
                }
            };
            self.watched.insert(
                wd.clone(),
                Watched {
                    server: Some(name.to_owned()),
                    producer,
                    path: path.clone(),
                    dir: Arc::clone(dir),
                },
            );
            watches.push(wd);
        }
        info!(server = name, overflow = %server.overflow, "server started");
        self.servers.insert(
            name.to_owned(),
            Running {
                config: server.clone(),
                hub,
                watches,
                spools: [producers, subscribers],
            },
        );
        self.sync_metrics();
        Ok(())
    }

    /// Handles requests already waiting in every spool directory.
    fn scan_all(&self) {
        let watched: Vec<Watched> = self.watched.values().cloned().collect();
        for w in watched {
            for file in w.dir.entries().unwrap_or_default() {
                if file.ends_with(spool::REQUEST_EXT) && !file.starts_with('.') {
                    self.dispatch(&w, &file);
                }
            }
        }
    }

    /// Handles requests already waiting in one server's spool directories.
    fn scan(&self, name: &str) {
        let watched: Vec<Watched> = self
            .watched
            .values()
            .filter(|w| w.server.as_deref() == Some(name))
            .cloned()
            .collect();
        for w in watched {
            for file in w.dir.entries().unwrap_or_default() {
                if file.ends_with(spool::REQUEST_EXT) && !file.starts_with('.') {
                    self.dispatch(&w, &file);
                }
            }
        }
    }

    fn on_event(&mut self, wd: &WatchDescriptor, mask: EventMask, name: Option<&std::ffi::OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("spool events overflowed; rescanning");
            self.scan_all();
            return;
        }
        let Some(w) = self.watched.get(wd).cloned() else {
            return;
        };
        let Some(file) = name.map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        if file.starts_with('.') || !file.ends_with(spool::REQUEST_EXT) {
            return;
        }
        self.dispatch(&w, &file);
    }

    /// Takes a request file (checked and removed), and serves it now if its user has a
    /// slot free, else queues it for its turn.
    fn dispatch(&self, w: &Watched, file: &str) {
        let request = match spool::take_request(&w.dir, &w.path, file) {
            Ok(r) => r,
            Err(e) if e.is_gone() => return, // a rescan and an event for one file
            Err(e) => {
                warn!(server = ?w.server, error = %e, "refusing a request");
                return;
            }
        };
        let (uid, pid) = (request.uid, request.pid);
        let d = Deferred {
            server: w.server.clone(),
            producer: w.producer,
            request,
        };
        match self.pending.take(uid) {
            Some(slot) => self.serve(d, slot),
            None => {
                if !self.pending.defer(d) {
                    debug!(
                        server = ?w.server,
                        uid,
                        pid,
                        "refusing a request: {DEFERRED_PER_UID} of this user's requests are \
                         already waiting"
                    );
                }
            }
        }
    }

    /// Serves requests that waited for a turn, as far as their users' slots allow.
    fn serve_deferred(&self) {
        while let Some((d, slot)) = self.pending.next_ready() {
            self.serve(d, slot);
        }
    }

    fn serve(&self, d: Deferred, slot: PendingSlot) {
        match &d.server {
            Some(server) => self.request(server, d.producer, d.request, slot),
            None => self.control_request(d.request, slot),
        }
    }

    /// Answers a control request (the counters of every server) at once: the answer is
    /// read from counters the hubs keep, without asking them.
    fn control_request(&self, request: spool::Request, _slot: PendingSlot) {
        let conn = match connect_client(&request.socket, request.uid) {
            Ok((conn, _)) => conn,
            Err(e) => {
                debug!(error = %e, "stats requester not reachable");
                return;
            }
        };
        let boards: Vec<Arc<Board>> = self
            .servers
            .values()
            .map(|r| Arc::clone(&r.hub.board))
            .collect();
        let json = stats_json(&boards, &viewer(request.uid));
        if let Err(e) = send_stats(&conn, &json) {
            debug!(error = %e, "stats requester gone");
        }
    }

    /// Connects to the client (never waiting) and hands it to the hub.
    fn request(&self, server: &str, producer: bool, request: spool::Request, slot: PendingSlot) {
        let Some(running) = self.servers.get(server) else {
            return;
        };
        let (conn, peer) = match connect_client(&request.socket, request.uid) {
            Ok(c) => c,
            Err(e) => {
                debug!(server, pid = request.pid, error = %e, "client not reachable");
                return;
            }
        };
        let who = ClientInfo {
            pid: peer.pid,
            uid: peer.uid,
            pending: Box::new(slot),
        };
        running.hub.send(if producer {
            Command::AddProducer(conn, who)
        } else {
            Command::AddSubscriber(conn, who, request.group)
        });
    }

    fn write_rendezvous(&mut self) -> Result<(), DaemonError> {
        self.generation += 1;
        let servers = self
            .servers
            .iter()
            .map(|(name, r)| {
                let p = server_paths(&self.runtime, name);
                ServerEntry {
                    name: name.clone(),
                    linktype: r.config.linktype,
                    snaplen: r.config.snaplen,
                    overflow: r.config.overflow.as_str().to_owned(),
                    producers: p.producers,
                    subscribers: p.subscribers,
                    producer_group: r.config.producer_group.clone(),
                    subscriber_group: r.config.subscriber_group.clone(),
                }
            })
            .collect();
        let r = Rendezvous {
            version: RENDEZVOUS_VERSION,
            generation: self.generation,
            pid: std::process::id(),
            runtime_dir: self.runtime.clone(),
            control: self.runtime.join("ctl"),
            servers,
            owner: 0,
        };
        r.write(&self.rendezvous)
            .map_err(io_err("writing the rendezvous file", &self.rendezvous))
    }

    fn stop_server(&mut self, events: &mut inotify::EventStream<[u8; 8192]>, name: &str) {
        let Some(running) = self.servers.remove(name) else {
            return;
        };
        for wd in running.watches {
            self.watched.remove(&wd);
            let _ = events.watches().remove(wd);
        }
        running.hub.send(Command::Stop {
            removed: true,
            deadline: Instant::now(),
        });
        let _ = self.srv.remove_tree(name);
        tokio::task::spawn_blocking(move || running.hub.join());
        self.sync_metrics();
        info!(server = name, "server removed");
    }

    async fn reload(&mut self, events: &mut inotify::EventStream<[u8; 8192]>) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[NotifyState::Reloading, now]),
            Err(_) => notify(&[NotifyState::Reloading]),
        }
        let source = config::locate(match &self.source {
            Source::File(p) => Some(p.as_path()),
            Source::Embedded => None,
        });
        let loaded = config::load(&source).and_then(|c| {
            let runtime = self.runtime.clone();
            check_fits(&c, &runtime).map_err(|e| config::ConfigError {
                source_name: source.to_string(),
                line: None,
                key: None,
                message: e.to_string(),
            })?;
            Ok(c)
        });
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reload refused; the running configuration stays");
                notify(&[NotifyState::Ready]);
                return;
            }
        };
        if new.daemon != self.config.daemon {
            warn!("[daemon] settings change only at restart");
        }
        // metrics
        if new.metrics != self.config.metrics {
            warn!(
                running = ?self.config.metrics.listen,
                configured = ?new.metrics.listen,
                "[metrics] settings change only at restart"
            );
        }
        let old = std::mem::take(&mut self.servers);
        let mut keep = BTreeMap::new();
        for (name, running) in old {
            match new.servers.get(&name) {
                Some(c) if c == &running.config => {
                    keep.insert(name, running);
                }
                Some(c)
                    if c.linktype == running.config.linktype
                        && c.snaplen == running.config.snaplen =>
                {
                    running.hub.send(Command::Reconfigure(Box::new(c.clone())));
                    let gid = |g: &Option<String>| g.as_deref().and_then(config::group_id);
                    if let Ok(base) = Dir::open(&self.runtime.join("srv").join(&name)) {
                        for (dir, group) in
                            [("pub", &c.producer_group), ("sub", &c.subscriber_group)]
                        {
                            if let Err(e) = spool::prepare(&base, dir, gid(group)) {
                                warn!(server = %name, error = %e, "cannot update a spool directory");
                            }
                        }
                    }
                    keep.insert(
                        name,
                        Running {
                            config: c.clone(),
                            ..running
                        },
                    );
                }
                _ => {
                    self.servers.insert(name.clone(), running);
                    self.stop_server(events, &name);
                }
            }
        }
        self.servers = keep;
        for (name, c) in &new.servers {
            if !self.servers.contains_key(name) {
                if let Err(e) = self.start_server(events, name, c) {
                    error!(server = %name, error = %e, "cannot start server");
                } else {
                    self.scan(name);
                }
            }
        }
        self.sync_metrics();
        self.config = new;
        self.source = source;
        if let Err(e) = self.write_rendezvous() {
            error!(error = %e, "cannot rewrite the rendezvous file");
        }
        info!(servers = self.servers.len(), "configuration reloaded");
        notify(&[NotifyState::Ready]);
    }

    /// Starts again every server whose hub thread died (a bug below it): its clients see
    /// their connection end and reconnect, told they may have missed packets.
    fn restart_dead_hubs(&mut self, events: &mut inotify::EventStream<[u8; 8192]>) {
        let dead: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, r)| r.hub.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in dead {
            let Some(running) = self.servers.remove(&name) else {
                continue;
            };
            for wd in running.watches {
                self.watched.remove(&wd);
                let _ = events.watches().remove(wd);
            }
            running.hub.join();
            error!(server = %name, "restarting the server after its hub died");
            match self.start_server(events, &name, &running.config) {
                Ok(()) => self.scan(&name),
                Err(e) => error!(server = %name, error = %e, "cannot restart server"),
            }
        }
    }

    fn feed_watchdog(&self) {
        let now = hub::clock_ms(self.epoch);
        let stuck: Vec<&String> = self
            .servers
            .iter()
            .filter(|(_, r)| r.hub.idle_ms(now) > HUB_STUCK_MS)
            .map(|(n, _)| n)
            .collect();
        if stuck.is_empty() {
            notify(&[NotifyState::Watchdog]);
        } else {
            error!(servers = ?stuck, "hubs stuck; not feeding the watchdog");
        }
    }

    fn sweep(&self) {
        for (name, running) in &self.servers {
            let n: usize = running.spools.iter().map(|d| spool::sweep(d)).sum();
            if n > 0 {
                debug!(server = %name, removed = n, "swept spool leftovers");
            }
        }
    }

    /// The counters of every server (for the metrics endpoint).
    fn boards(&self) -> Vec<Arc<Board>> {
        self.servers
            .values()
            .map(|r| Arc::clone(&r.hub.board))
            .collect()
    }

    /// Shows the metrics endpoint the servers running now.
    fn sync_metrics(&self) {
        self.metrics.set(self.boards());
    }

    async fn shutdown(mut self) {
        notify(&[NotifyState::Stopping]);
        info!("stopping: delivering what is queued");
        let deadline =
            Instant::now() + Duration::from_millis(self.config.daemon.shutdown_timeout_ms);
        let hubs: Vec<HubHandle> = std::mem::take(&mut self.servers)
            .into_values()
            .map(|r| r.hub)
            .collect();
        for hub in &hubs {
            hub.send(Command::Stop {
                removed: false,
                deadline,
            });
        }
        let _ =
            tokio::task::spawn_blocking(move || hubs.into_iter().for_each(HubHandle::join)).await;
        if let Err(e) = std::fs::remove_file(&self.rendezvous) {
            warn!(error = %e, "cannot remove the rendezvous file");
        }
        let _ = &self.runtime_dir;
        info!("packet-ipcd stopped");
    }
}
