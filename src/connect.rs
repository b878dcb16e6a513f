//! How a producer or subscriber finds the daemon and gets in (client side).
//!
//! A client reads the rendezvous file (believing it only if its directory and owner say
//! it is the daemon's, see [`crate::rendezvous`]), listens on a socket of its own in the
//! spool directory of its server and role, drops a request naming it, and waits for the
//! daemon — the one the rendezvous file names, checked by the kernel — to connect and
//! welcome it (see `crate::transport::bootstrap`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::options::WaitMode;
use crate::rendezvous::{self, spool, Rendezvous, RendezvousError, ServerEntry};
use crate::stats::{ServerStats, Stats};
use crate::transport::bootstrap::{listen_in, Answer, BootstrapError, DaemonId};
use crate::transport::sock::Conn;
use crate::transport::wire::{Welcome, WireInfo};
use crate::transport::TransportError;
use crate::Error;

/// How long a client waits for a daemon to come back after it stopped, by default.
pub const DEFAULT_RECONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long a client waits for the daemon's welcome, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a producer or subscriber connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long to wait for a daemon to come back when it stops or dies (0: not at all).
    pub reconnect_wait: Duration,
    /// How long to wait for the daemon's welcome.
    pub connect_timeout: Duration,
    /// The rendezvous file; `None` finds it as the contract says
    /// (`$PACKET_IPC_RENDEZVOUS`, else the runtime directory's).
    pub rendezvous: Option<PathBuf>,
    /// Subscribers: join this flow-balanced group (each member gets its share of the
    /// flows) instead of receiving every packet.
    pub group: Option<String>,
    /// Subscribers: keep only the packets that match this tcpdump filter expression
    /// (compiled with libpcap, loaded at run time, for the server's link type).
    pub filter: Option<String>,
    /// How to wait for the daemon (subscribers waiting for batches, producers for free
    /// memory); `None` takes the server's `wait` setting.
    pub wait: Option<WaitMode>,
    /// When set and raised (by a signal handler, say), a blocking call returns
    /// [`Error::Interrupted`] within a tenth of a second.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            reconnect_wait: DEFAULT_RECONNECT_WAIT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rendezvous: None,
            group: None,
            filter: None,
            wait: None,
            interrupt: None,
        }
    }
}

impl ConnectOptions {
    /// The rendezvous file these options point at.
    pub fn rendezvous_path(&self) -> PathBuf {
        self.rendezvous
            .clone()
            .unwrap_or_else(rendezvous::client_rendezvous_path)
    }
}

/// What a client knows of its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's name.
    pub name: String,
    /// pcap link type of its packets.
    pub linktype: u32,
    /// Longest captured length.
    pub snaplen: u32,
    /// Largest batch a producer may send, in bytes.
    pub max_batch_bytes: usize,
}

impl From<&WireInfo> for ServerInfo {
    fn from(w: &WireInfo) -> Self {
        ServerInfo {
            name: w.name.clone(),
            linktype: w.linktype,
            snaplen: w.snaplen,
            max_batch_bytes: usize::try_from(w.max_batch_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// The servers of the running daemon.
pub fn list_servers(rendezvous: Option<&Path>) -> Result<Vec<ServerEntry>, Error> {
    let path = rendezvous
        .map(Path::to_owned)
        .unwrap_or_else(rendezvous::client_rendezvous_path);
    Ok(Rendezvous::read(&path).map_err(no_daemon)?.servers)
}

fn no_daemon(e: RendezvousError) -> Error {
    Error::NoDaemon(e.to_string())
}

fn daemon_of(r: &Rendezvous) -> DaemonId {
    DaemonId {
        uid: r.owner,
        pid: r.pid,
    }
}

/// The live counters of the running daemon: every server, or only `server`. Process ids
/// are shown only for servers this user may use.
pub fn stats(options: &ConnectOptions, server: Option<&str>) -> Result<Vec<ServerStats>, Error> {
    let r = Rendezvous::read(&options.rendezvous_path()).map_err(no_daemon)?;
    if let Some(name) = server {
        if r.server(name).is_none() {
            return Err(Error::UnknownServer {
                name: name.to_owned(),
                known: r.servers.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    let awaiting = listen_in(&r.control, daemon_of(&r))?;
    let _request = match spool::submit(&r.control, awaiting.socket_name(), None) {
        Ok(s) => s,
        Err(e) => return Err(Error::Spool(e.to_string())),
    };
    let t = options.connect_timeout;
    let json = match awaiting.wait(t) {
        Ok(Answer::Stats(json)) => json,
        Ok(Answer::Welcome { .. }) => {
            return Err(TransportError::Protocol("expected a stats answer".into()).into())
        }
        Err(BootstrapError::NoAnswer) => {
            return Err(Error::NoDaemon(format!(
                "packet-ipcd (pid {}) did not answer a stats request within {t:?}",
                r.pid
            )))
        }
        Err(e) => return Err(bootstrap_error(server.unwrap_or("(all)"), t, e)),
    };
    let mut all: Stats = serde_json::from_str(&json)
        .map_err(|e| TransportError::Protocol(format!("stats answer: {e}")))?;
    if let Some(name) = server {
        all.servers.retain(|s| s.name == name);
    }
    Ok(all.servers)
}

/// The role a client connects as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Subscriber,
}

impl Role {
    fn spool<'a>(&self, e: &'a ServerEntry) -> (&'a Path, Option<&'a str>) {
        match self {
            Role::Producer => (&e.producers, e.producer_group.as_deref()),
            Role::Subscriber => (&e.subscribers, e.subscriber_group.as_deref()),
        }
    }
    fn word(&self) -> &'static str {
        match self {
            Role::Producer => "produce to",
            Role::Subscriber => "subscribe to",
        }
    }
}

fn bootstrap_error(server: &str, waited: Duration, e: BootstrapError) -> Error {
    match e {
        BootstrapError::NoAnswer => Error::NoAnswer {
            server: server.to_owned(),
            waited,
        },
        BootstrapError::Refused(reason) => Error::Refused {
            server: server.to_owned(),
            reason,
        },
        BootstrapError::Transport(e) => e.into(),
    }
}

/// A welcomed client: its connection and what came with it.
pub(crate) struct Connected {
    /// The connection.
    pub conn: Conn,
    /// The welcome.
    pub welcome: Welcome,
    /// The memory attached to it.
    pub fds: Vec<std::os::fd::OwnedFd>,
    /// The daemon that welcomed it.
    pub daemon_pid: u32,
}

/// Connects once: rendezvous, spool request, welcome.
pub(crate) fn connect_once(
    server: &str,
    role: Role,
    options: &ConnectOptions,
) -> Result<Connected, Error> {
    let r = Rendezvous::read(&options.rendezvous_path()).map_err(no_daemon)?;
    let Some(entry) = r.server(server) else {
        return Err(Error::UnknownServer {
            name: server.to_owned(),
            known: r.servers.iter().map(|s| s.name.clone()).collect(),
        });
    };
    let (spool_dir, group) = role.spool(entry);
    let denied = || Error::PermissionDenied {
        server: server.to_owned(),
        action: role.word(),
        group: group.map(str::to_owned),
        path: spool_dir.to_owned(),
    };
    let awaiting = match listen_in(spool_dir, daemon_of(&r)) {
        Ok(a) => a,
        Err(TransportError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Err(denied())
        }
        Err(e) => return Err(e.into()),
    };
    let join = match role {
        Role::Subscriber => options.group.as_deref(),
        Role::Producer => None,
    };
    // The daemon deletes the request when it takes it; the guard removes it if not.
    let _request = match spool::submit(spool_dir, awaiting.socket_name(), join) {
        Ok(submitted) => submitted,
        Err(spool::SpoolError::PermissionDenied(_)) => return Err(denied()),
        Err(e) => return Err(Error::Spool(e.to_string())),
    };
    let t = options.connect_timeout;
    match awaiting.wait(t) {
        Ok(Answer::Welcome { conn, welcome, fds }) => Ok(Connected {
            conn,
            welcome,
            fds,
            daemon_pid: r.pid,
        }),
        Ok(Answer::Stats(_)) => Err(TransportError::Protocol("expected a welcome".into()).into()),
        Err(e) => Err(bootstrap_error(server, t, e)),
    }
}

/// Retries `connect` until a daemon lets us in, the server turns out to be gone, or
/// `options.reconnect_wait` has passed since now. `stopped_pid` is the daemon that said it
/// was stopping: while its rendezvous file is still there, it is not asked.
pub(crate) fn reconnect<C>(
    server: &str,
    options: &ConnectOptions,
    stopped_pid: Option<u32>,
    connect: impl Fn(&str, &ConnectOptions) -> Result<C, Error>,
) -> Result<Option<C>, Error> {
    let deadline = Instant::now() + options.reconnect_wait;
    let mut pause = Duration::from_millis(20);
    let mut attempt_options = options.clone();
    loop {
        if options
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(Error::Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let path = options.rendezvous_path();
        let old = stopped_pid.is_some()
            && Rendezvous::read(&path).is_ok_and(|r| Some(r.pid) == stopped_pid);
        if !old {
            attempt_options.connect_timeout = options.connect_timeout.min(left.max(pause));
            match connect(server, &attempt_options) {
                Ok(c) => return Ok(Some(c)),
                // A daemon is back, and this server is not in it: gone for good.
                Err(Error::UnknownServer { .. }) => return Ok(None),
                Err(Error::NoDaemon(_) | Error::NoAnswer { .. } | Error::Transport(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(
            pause
                .min(Duration::from_millis(100))
                .min(deadline.saturating_duration_since(Instant::now())),
        );
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
