//! The daemon's lifecycle: startup, requests, reload, systemd notification, shutdown.
//!
//! [`run`] is the whole daemon. It owns no signal handler: the binary turns signals into
//! [`Control`] messages. One tokio task owns the lifecycle, the rendezvous file, the
//! spool watcher (inotify) and the timers; each named server runs in a hub thread of its
//! own (`super::hub`), which is where the packets go.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::config::{self, Config, ServerConfig, Source};
use super::hub::{self, ClientInfo, Command, HubHandle};
use crate::rendezvous::{self, spool, Rendezvous, ServerEntry, RENDEZVOUS_VERSION};
use crate::stats::ServerStats;
use crate::transport::broker::connect_pending;

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
            DaemonError::Config(_) | DaemonError::Setup(_) => 78,
            DaemonError::AlreadyRunning { .. } => 75,
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
/// What ipc-channel adds to a spool directory: `/.tmpXXXXXX/socket`.
const ONESHOT_SUFFIX: usize = "/.tmpXXXXXX/socket".len();
/// How long connecting to a client's socket may take before it is given up.
const CONNECT_LIMIT: Duration = Duration::from_secs(2);
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
        let longest = p.subscribers.as_os_str().len() + ONESHOT_SUFFIX;
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

/// Takes the runtime directory's lock, or says who holds it.
fn lock(runtime: &Path) -> Result<File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = runtime.join("packet-ipcd.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("opening the lock", &path))?;
    if file.try_lock().is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(DaemonError::AlreadyRunning {
            dir: runtime.to_owned(),
            pid: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    file.set_len(0).map_err(io_err("writing the lock", &path))?;
    file.rewind().map_err(io_err("writing the lock", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("writing the lock", &path))?;
    Ok(file)
}

/// Creates the runtime directory, writable by its owner only.
fn prepare_runtime(runtime: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(runtime).map_err(io_err("creating", runtime))?;
    std::fs::set_permissions(runtime, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", runtime))?;
    let srv = runtime.join("srv");
    std::fs::create_dir_all(&srv).map_err(io_err("creating", &srv))?;
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &srv))?;
    // Anyone may ask for the counters.
    spool::prepare(&runtime.join("ctl"), None).map_err(|e| DaemonError::Setup(e.to_string()))
}

/// Which spool directory an inotify watch is on.
#[derive(Clone, Debug)]
struct Watched {
    /// The server, or `None` for the control directory.
    server: Option<String>,
    producer: bool,
    dir: PathBuf,
}

/// A running server: its hub and its spool watches.
struct Running {
    config: ServerConfig,
    hub: HubHandle,
    watches: Vec<WatchDescriptor>,
}

/// The daemon's state, owned by its one lifecycle task.
struct Daemon {
    source: Source,
    config: Config,
    runtime: PathBuf,
    rendezvous: PathBuf,
    generation: u64,
    servers: BTreeMap<String, Running>,
    watched: HashMap<WatchDescriptor, Watched>,
    ids: Arc<AtomicU64>,
    epoch: Instant,
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Runs the daemon until it is told to shut down.
///
/// Everything up to READY=1 is startup: an error there ends `run` with the error (the
/// binary maps it to an exit status). After that, nothing a client does ends it.
pub async fn run(
    source: Source,
    config: Config,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let runtime = rendezvous::daemon_runtime_dir(config.daemon.runtime_dir.as_deref());
    check_fits(&config, &runtime)?;
    prepare_runtime(&runtime)?;
    let _lock = lock(&runtime)?;
    let rendezvous_path = rendezvous::rendezvous_path(&runtime);

    let inotify = Inotify::init().map_err(io_err("starting inotify for", &runtime))?;
    let mut events = inotify
        .into_event_stream([0u8; 8192])
        .map_err(io_err("starting inotify for", &runtime))?;
    let mut daemon = Daemon {
        source,
        config: config.clone(),
        runtime: runtime.clone(),
        rendezvous: rendezvous_path,
        generation: 0,
        servers: BTreeMap::new(),
        watched: HashMap::new(),
        ids: Arc::new(AtomicU64::new(1)),
        epoch: Instant::now(),
    };
    daemon.remove_strays(&config);
    let ctl = runtime.join("ctl");
    spool::sweep(&ctl);
    let wd = events
        .watches()
        .add(&ctl, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
        .map_err(io_err("watching", &ctl))?;
    daemon.watched.insert(
        wd,
        Watched {
            server: None,
            producer: false,
            dir: ctl,
        },
    );
    for (name, server) in &config.servers {
        daemon.start_server(&mut events, name, server)?;
    }
    daemon.write_rendezvous()?;
    for name in daemon.servers.keys().cloned().collect::<Vec<_>>() {
        daemon.scan(&name);
    }
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
    loop {
        tokio::select! {
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

/// Asks every hub for its counters (blocking: run off the lifecycle task).
fn collect_stats(hubs: &[hub::HubSender]) -> Vec<ServerStats> {
    let replies: Vec<_> = hubs
        .iter()
        .filter_map(|h| {
            let (tx, rx) = std::sync::mpsc::channel();
            h.send(Command::Stats(tx)).then_some(rx)
        })
        .collect();
    replies
        .into_iter()
        .filter_map(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
        .collect()
}

impl Daemon {
    /// Removes spool directories of servers that are not configured (left by an earlier
    /// run with another configuration).
    fn remove_strays(&self, config: &Config) {
        let Ok(entries) = std::fs::read_dir(self.runtime.join("srv")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !config.servers.contains_key(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
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
        let setup = |e: spool::SpoolError| DaemonError::Setup(format!("server {name}: {e}"));
        // Every user must be able to reach the spool directories (their own modes decide
        // who may write), whatever the umask (systemd's UMask=0007 would say 0770).
        let base = self.runtime.join("srv").join(name);
        std::fs::create_dir_all(&base).map_err(io_err("creating", &base))?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting the mode of", &base))?;
        let gid = |g: &Option<String>| g.as_deref().and_then(config::group_id);
        spool::prepare(&paths.producers, gid(&server.producer_group)).map_err(setup)?;
        spool::prepare(&paths.subscribers, gid(&server.subscriber_group)).map_err(setup)?;
        for dir in [&paths.producers, &paths.subscribers] {
            spool::sweep(dir);
        }
        let hub = hub::spawn(
            name.to_owned(),
            server.clone(),
            Arc::clone(&self.ids),
            self.epoch,
        )
        .map_err(|e| DaemonError::Setup(format!("server {name}: {e}")))?;
        let mut watches = Vec::new();
        for (dir, producer) in [(&paths.producers, true), (&paths.subscribers, false)] {
            let wd = events
                .watches()
                .add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
                .map_err(io_err("watching", dir))?;
            self.watched.insert(
                wd.clone(),
                Watched {
                    server: Some(name.to_owned()),
                    producer,
                    dir: dir.clone(),
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
            },
        );
        Ok(())
    }

    /// Handles requests already waiting in a server's spool directories.
    fn scan(&self, name: &str) {
        let paths = server_paths(&self.runtime, name);
        for (dir, producer) in [(&paths.producers, true), (&paths.subscribers, false)] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.ends_with(spool::REQUEST_EXT) && !file.starts_with('.') {
                    self.request(name, producer, dir, &file);
                }
            }
        }
    }

    fn scan_control(&self) {
        let ctl = self.runtime.join("ctl");
        let Ok(entries) = std::fs::read_dir(&ctl) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(spool::REQUEST_EXT) && !file.starts_with('.') {
                self.control_request(&ctl, &file);
            }
        }
    }

    fn on_event(&mut self, wd: &WatchDescriptor, mask: EventMask, name: Option<&std::ffi::OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("spool events overflowed; rescanning");
            for server in self.servers.keys() {
                self.scan(server);
            }
            self.scan_control();
            return;
        }
        let Some(w) = self.watched.get(wd) else {
            return;
        };
        let Some(file) = name.map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        if file.starts_with('.') || !file.ends_with(spool::REQUEST_EXT) {
            return;
        }
        match &w.server {
            Some(server) => self.request(server, w.producer, &w.dir, &file),
            None => self.control_request(&w.dir, &file),
        }
    }

    /// Answers a control request (the counters of every server).
    fn control_request(&self, dir: &Path, file: &str) {
        let request = match spool::take_request(dir, file) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "ignoring a control request");
                return;
            }
        };
        let hubs: Vec<_> = self.servers.values().map(|r| r.hub.sender()).collect();
        tokio::spawn(async move {
            let answer = tokio::task::spawn_blocking(move || {
                let stats = collect_stats(&hubs);
                let json = serde_json::to_string(&stats).unwrap_or_else(|_| "[]".into());
                connect_pending(&request.socket).and_then(|p| p.send_stats(json))
            });
            match tokio::time::timeout(CONNECT_LIMIT * 2, answer).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => debug!(error = %e, "stats requester gone"),
                Ok(Err(e)) => warn!(error = %e, "stats task failed"),
                Err(_) => warn!("stats requester does not accept; ignored"),
            }
        });
    }

    /// Takes a request and, off this task, connects to the client and hands it to the hub.
    fn request(&self, server: &str, producer: bool, dir: &Path, file: &str) {
        let request = match spool::take_request(dir, file) {
            Ok(r) => r,
            Err(spool::SpoolError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return; // taken already (a rescan and an event for the same file)
            }
            Err(e) => {
                warn!(server, error = %e, "refusing a request");
                return;
            }
        };
        let Some(running) = self.servers.get(server) else {
            return;
        };
        let commands = running.hub.sender();
        let server = server.to_owned();
        tokio::spawn(async move {
            let socket = request.socket.clone();
            let connect = tokio::task::spawn_blocking(move || connect_pending(&socket));
            let pending = match tokio::time::timeout(CONNECT_LIMIT, connect).await {
                Ok(Ok(Ok(p))) => p,
                Ok(Ok(Err(e))) => {
                    debug!(server = %server, pid = request.pid, error = %e, "client gone before welcome");
                    return;
                }
                Ok(Err(e)) => {
                    warn!(server = %server, error = %e, "connect task failed");
                    return;
                }
                Err(_) => {
                    warn!(server = %server, pid = request.pid, "client socket does not accept; ignored");
                    return;
                }
            };
            let who = ClientInfo {
                pid: request.pid,
                uid: request.uid,
            };
            commands.send(if producer {
                Command::AddProducer(pending, who)
            } else {
                Command::AddSubscriber(pending, who)
            });
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
        let _ = std::fs::remove_dir_all(self.runtime.join("srv").join(name));
        tokio::task::spawn_blocking(move || running.hub.join());
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
                    running.hub.send(Command::Reconfigure(c.clone()));
                    let paths = server_paths(&self.runtime, &name);
                    let gid = |g: &Option<String>| g.as_deref().and_then(config::group_id);
                    for (dir, group) in [
                        (&paths.producers, &c.producer_group),
                        (&paths.subscribers, &c.subscriber_group),
                    ] {
                        if let Err(e) = spool::prepare(dir, gid(group)) {
                            warn!(server = %name, error = %e, "cannot update a spool directory");
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
        self.config = new;
        self.source = source;
        if let Err(e) = self.write_rendezvous() {
            error!(error = %e, "cannot rewrite the rendezvous file");
        }
        info!(servers = self.servers.len(), "configuration reloaded");
        notify(&[NotifyState::Ready]);
    }

    /// Starts again every server whose hub thread died (a panic below it): its clients see
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
        for name in self.servers.keys() {
            let p = server_paths(&self.runtime, name);
            let n = spool::sweep(&p.producers) + spool::sweep(&p.subscribers);
            if n > 0 {
                debug!(server = %name, removed = n, "swept spool leftovers");
            }
        }
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
        info!("packet-ipcd stopped");
    }
}
