//! How a client and the daemon meet, without either one waiting on the other.
//!
//! The client listens on a socket of its own, inside the spool directory of the server and
//! role it asks for, and drops a request file naming it (`crate::rendezvous::spool`). The
//! daemon, watching the spool, checks the request and connects ([`connect_client`]): the
//! connect never blocks (a full backlog fails at once) and the kernel tells both ends who
//! the other is. The client accepts only a connection from the daemon the rendezvous file
//! names (its user and process), and keeps listening past anyone else
//! ([`Awaiting::wait`]); the daemon accepts only a listener owned by the user who wrote
//! the request. The daemon then sends the welcome with the client's memory attached, and
//! the connection stays: it is the client's socket from then on.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::memfd::{self, Access, Mapping};
use super::sock::{Conn, Listener, Peer, Recv};
use super::wire::{self, Frame, Welcome, MAX_DAEMON_FRAME, PROTOCOL};
use super::{io_err, TransportError};

/// The daemon a client expects to answer, as the rendezvous file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DaemonId {
    /// The user it runs as (the owner of its rendezvous file).
    pub uid: u32,
    /// Its process id.
    pub pid: u32,
}

/// A client's listening socket, waiting for the daemon.
pub(crate) struct Awaiting {
    listener: Listener,
    name: String,
    daemon: DaemonId,
}

/// What the daemon answered.
pub(crate) enum Answer {
    /// The client is in: its connection, its welcome, and the memory that came with it.
    Welcome {
        /// The connection, from now on the client's socket.
        conn: Conn,
        /// The welcome.
        welcome: Welcome,
        /// The attached memory, in the order the welcome's role says.
        fds: Vec<OwnedFd>,
    },
    /// The answer to a control request: the daemon's counters, as JSON.
    Stats(String),
}

/// Why a bootstrap did not give a connection.
#[derive(Debug)]
pub(crate) enum BootstrapError {
    /// No answer within the timeout.
    NoAnswer,
    /// The daemon refused, saying why.
    Refused(String),
    /// The answer was malformed, or the link failed.
    Transport(TransportError),
}

impl From<TransportError> for BootstrapError {
    fn from(e: TransportError) -> Self {
        BootstrapError::Transport(e)
    }
}

/// Listens in `dir` (a spool directory) for `daemon`.
pub(crate) fn listen_in(dir: &Path, daemon: DaemonId) -> Result<Awaiting, TransportError> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:x}-{:x}.sock",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    // Anyone who can reach the spool directory may connect (the daemon may run as another
    // user); who actually did is checked on every accepted connection.
    let listener =
        Listener::bind(&dir.join(&name), 0o666).map_err(io_err("creating the bootstrap socket"))?;
    Ok(Awaiting {
        listener,
        name,
        daemon,
    })
}

impl Awaiting {
    /// The socket's file name, to put in the request.
    pub(crate) fn socket_name(&self) -> &str {
        &self.name
    }

    /// Waits for the daemon's answer, at most `timeout`. Connections from anyone but the
    /// expected daemon are closed unanswered.
    pub(crate) fn wait(self, timeout: Duration) -> Result<Answer, BootstrapError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_DAEMON_FRAME];
        loop {
            let Some(conn) = self
                .listener
                .accept(deadline)
                .map_err(io_err("waiting for the daemon"))?
            else {
                return Err(BootstrapError::NoAnswer);
            };
            let peer = conn.peer().map_err(io_err("checking who connected"))?;
            if !self.expected(&peer) {
                tracing::warn!(
                    pid = peer.pid,
                    uid = peer.uid,
                    socket = %self.listener.path().display(),
                    "a process that is not the daemon connected to this client's socket; ignored"
                );
                continue;
            }
            let mut fds = Vec::new();
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match conn
                .recv(&mut buf, &mut fds, left.max(Duration::from_millis(1)))
                .map_err(io_err("reading the welcome"))?
            {
                Recv::Message(n) => n,
                Recv::Empty | Recv::Closed => return Err(BootstrapError::NoAnswer),
                Recv::Oversized => return Err(protocol("the daemon's answer is malformed").into()),
            };
            return match wire::parse(&buf[..n]).map_err(TransportError::from)? {
                Frame::Welcome(json) => {
                    let welcome: Welcome = serde_json::from_slice(json)
                        .map_err(|e| protocol(&format!("welcome: {e}")))?;
                    if welcome.version != PROTOCOL {
                        return Err(protocol(&format!(
                            "the daemon speaks protocol {}, this build {PROTOCOL}",
                            welcome.version
                        ))
                        .into());
                    }
                    // The socket stays blocking for the client: it sleeps on it only with a
                    // timeout (see the links).
                    conn.set_nonblocking(false)
                        .map_err(io_err("setting up the connection"))?;
                    Ok(Answer::Welcome { conn, welcome, fds })
                }
                Frame::Refused(why) => Err(BootstrapError::Refused(why.to_owned())),
                Frame::Stats(len) => {
                    let [fd] = <[OwnedFd; 1]>::try_from(fds)
                        .map_err(|_| protocol("a stats answer without its memory"))?;
                    Ok(Answer::Stats(read_text(&fd, len as usize)?))
                }
                other => Err(protocol(&format!("unexpected answer {other:?}")).into()),
            };
        }
    }

    fn expected(&self, peer: &Peer) -> bool {
        peer.uid == self.daemon.uid && peer.pid == self.daemon.pid
    }
}

fn protocol(what: &str) -> TransportError {
    TransportError::Protocol(what.to_owned())
}

/// Reads `len` bytes of UTF-8 from sealed memory.
fn read_text(fd: &OwnedFd, len: usize) -> Result<String, TransportError> {
    let size = memfd::check_sealed(fd.as_fd()).map_err(io_err("reading the answer"))?;
    if len > size || len == 0 {
        return Err(protocol("a stats answer longer than its memory"));
    }
    let map = Mapping::new(fd.as_fd(), size, Access::Read).map_err(io_err("reading the answer"))?;
    // SAFETY: within the mapping; the daemon wrote it before sending and no longer writes.
    let bytes = unsafe { map.bytes(0, len) }.ok_or_else(|| protocol("short answer"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| protocol("a stats answer that is not UTF-8"))
}

// ---------------------------------------------------------------------------------------
// Daemon side.

/// Connects to the socket a client named, never waiting: the kernel must say at once
/// that the listener is owned by `uid` (the user who wrote the request), else the client
/// is not answered.
pub(crate) fn connect_client(path: &Path, uid: u32) -> Result<(Conn, Peer), TransportError> {
    let conn = Conn::connect_nonblocking(path).map_err(|source| TransportError::Connect {
        name: path.display().to_string(),
        source,
    })?;
    let peer = conn.peer().map_err(io_err("checking the client"))?;
    if peer.uid != uid {
        return Err(protocol(&format!(
            "the socket of a request by uid {uid} is held by uid {}",
            peer.uid
        )));
    }
    Ok((conn, peer))
}

/// Tells a client why it is not let in.
pub(crate) fn send_refused(conn: &Conn, why: &str) {
    let mut buf = Vec::new();
    wire::refused(&mut buf, why);
    let _ = conn.send(&buf, &[]);
}

/// Answers a control request with `json`, in sealed memory (a socket message could not
/// hold the counters of a large daemon).
pub(crate) fn send_stats(conn: &Conn, json: &str) -> Result<(), TransportError> {
    let len = u32::try_from(json.len()).map_err(|_| protocol("counters too large"))?;
    let fd = memfd::create(c"packet-ipc-stats", json.len().max(1))
        .map_err(io_err("answering a stats request"))?;
    std::fs::File::from(
        fd.try_clone()
            .map_err(io_err("answering a stats request"))?,
    )
    .write_all(json.as_bytes())
    .map_err(io_err("answering a stats request"))?;
    let mut buf = Vec::new();
    wire::stats(&mut buf, len);
    conn.send(&buf, &[fd.as_fd()])
        .map_err(io_err("answering a stats request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn me() -> DaemonId {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        DaemonId {
            uid,
            pid: std::process::id(),
        }
    }

    #[test]
    fn the_expected_daemon_is_let_through_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let awaiting = listen_in(dir.path(), me()).unwrap();
        let path = dir.path().join(awaiting.socket_name());
        let daemon = thread::spawn(move || {
            let (conn, peer) = connect_client(&path, me().uid).unwrap();
            assert_eq!(peer.pid, std::process::id());
            send_stats(&conn, r#"{"servers":[]}"#).unwrap();
            conn
        });
        match awaiting.wait(Duration::from_secs(10)) {
            Ok(Answer::Stats(json)) => assert_eq!(json, r#"{"servers":[]}"#),
            Ok(Answer::Welcome { .. }) => panic!("a welcome"),
            Err(e) => panic!("{e:?}"),
        }
        drop(daemon.join().unwrap());
    }

    #[test]
    fn anyone_else_is_ignored_and_the_wait_ends_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // Expects a daemon that is not this process.
        let awaiting = listen_in(dir.path(), DaemonId { pid: 1, ..me() }).unwrap();
        let path = dir.path().join(awaiting.socket_name());
        let impostor = thread::spawn(move || {
            let (conn, _) = connect_client(&path, me().uid).unwrap();
            let mut buf = Vec::new();
            wire::refused(&mut buf, "forged");
            let _ = conn.send(&buf, &[]);
            conn
        });
        let start = Instant::now();
        assert!(matches!(
            awaiting.wait(Duration::from_millis(300)),
            Err(BootstrapError::NoAnswer)
        ));
        assert!(start.elapsed() >= Duration::from_millis(300));
        drop(impostor.join().unwrap());
    }

    #[test]
    fn a_request_naming_another_users_socket_is_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let awaiting = listen_in(dir.path(), me()).unwrap();
        let path = dir.path().join(awaiting.socket_name());
        let err = connect_client(&path, me().uid.wrapping_add(1)).unwrap_err();
        assert!(err.to_string().contains("held by uid"), "{err}");
    }
}
