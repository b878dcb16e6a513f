//! How a producer or subscriber finds the daemon and gets in (client side).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rendezvous::{self, spool, Rendezvous, RendezvousError, ServerEntry};
use crate::transport::broker::{
    listen_in, Awaiting, BootstrapError, ProducerConn, SubscriberConn, WireInfo,
};
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            reconnect_wait: DEFAULT_RECONNECT_WAIT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rendezvous: None,
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

/// The live counters of the running daemon: every server, or only `server`.
pub fn stats(
    options: &ConnectOptions,
    server: Option<&str>,
) -> Result<Vec<crate::stats::ServerStats>, Error> {
    let r = Rendezvous::read(&options.rendezvous_path()).map_err(no_daemon)?;
    if let Some(name) = server {
        if r.server(name).is_none() {
            return Err(Error::UnknownServer {
                name: name.to_owned(),
                known: r.servers.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    let awaiting = listen_in(&r.control)?;
    let _request = match spool::submit(&r.control, awaiting.socket()) {
        Ok(s) => s,
        Err(e) => return Err(Error::Spool(e.to_string())),
    };
    let t = options.connect_timeout;
    let json = awaiting.stats(t).map_err(|e| match e {
        BootstrapError::NoAnswer => Error::NoDaemon(format!(
            "packet-ipcd (pid {}) did not answer a stats request within {t:?}",
            r.pid
        )),
        e => bootstrap_error(server.unwrap_or("(all)"), t, e),
    })?;
    let mut all: Vec<crate::stats::ServerStats> = serde_json::from_str(&json)
        .map_err(|e| TransportError::Protocol(format!("stats answer: {e}")))?;
    if let Some(name) = server {
        all.retain(|s| s.name == name);
    }
    Ok(all)
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

/// One attempt: rendezvous, spool request, welcome.
fn attempt(
    server: &str,
    role: Role,
    options: &ConnectOptions,
) -> Result<(Awaiting, spool::Submitted, u32), Error> {
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
    let awaiting = match listen_in(spool_dir) {
        Ok(a) => a,
        Err(TransportError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Err(denied())
        }
        Err(e) => return Err(e.into()),
    };
    // The daemon deletes the request when it takes it; the guard removes it if not.
    match spool::submit(spool_dir, awaiting.socket()) {
        Ok(submitted) => Ok((awaiting, submitted, r.pid)),
        Err(spool::SpoolError::PermissionDenied(_)) => Err(denied()),
        Err(e) => Err(Error::Spool(e.to_string())),
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

/// A connection, and the pid of the daemon that made it.
pub(crate) struct Connected<C> {
    pub conn: C,
    pub daemon_pid: u32,
}

/// Connects a producer once.
pub(crate) fn producer_once(
    server: &str,
    options: &ConnectOptions,
) -> Result<Connected<ProducerConn>, Error> {
    let (awaiting, _request, daemon_pid) = attempt(server, Role::Producer, options)?;
    let t = options.connect_timeout;
    let conn = awaiting
        .producer(t)
        .map_err(|e| bootstrap_error(server, t, e))?;
    Ok(Connected { conn, daemon_pid })
}

/// Connects a subscriber once.
pub(crate) fn subscriber_once(
    server: &str,
    options: &ConnectOptions,
) -> Result<Connected<SubscriberConn>, Error> {
    let (awaiting, _request, daemon_pid) = attempt(server, Role::Subscriber, options)?;
    let t = options.connect_timeout;
    let conn = awaiting
        .subscriber(t)
        .map_err(|e| bootstrap_error(server, t, e))?;
    Ok(Connected { conn, daemon_pid })
}

/// Retries `connect` until a daemon lets us in, the server turns out to be gone, or
/// `options.reconnect_wait` has passed since `since`. `stopped_pid` is the daemon that
/// said it was stopping: while its rendezvous file is still there, it is not asked.
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
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
