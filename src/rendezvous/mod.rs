//! Where daemon and clients meet: the runtime directory and the rendezvous file.
//!
//! The runtime directory holds the rendezvous file, the spool directories and the lock.
//! It is, first that applies: `$PACKET_IPC_RUNTIME_DIR`; for the daemon `[daemon]
//! runtime-dir`, then `$RUNTIME_DIRECTORY` (set by systemd); `/run/packet-ipc` when running
//! as root (daemon) or when it holds a rendezvous file (client); `$XDG_RUNTIME_DIR/packet-ipc`;
//! else `/tmp/packet-ipc-<uid>`. The rendezvous file is `<runtime dir>/rendezvous.json`
//! unless `$PACKET_IPC_RENDEZVOUS` names another path, for daemon and clients alike.
//!
//! The file is JSON, rewritten atomically (a temporary file renamed over it):
//!
//! ```json
//! {"version": 1, "generation": 2, "pid": 4242, "runtime_dir": "/run/packet-ipc",
//!  "control": "/run/packet-ipc/ctl",
//!  "servers": [{"name": "default", "linktype": 1, "snaplen": 65535,
//!               "overflow": "drop-oldest",
//!               "producers": "/run/packet-ipc/srv/default/pub",
//!               "subscribers": "/run/packet-ipc/srv/default/sub",
//!               "producer_group": null, "subscriber_group": null}]}
//! ```
//!
//! Every path in it is absolute. A client that finds a file whose `pid` is not a running
//! process knows the daemon died without cleaning up.

pub mod fsafe;
pub mod spool;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Variable naming the runtime directory, for daemon and clients.
pub const ENV_RUNTIME_DIR: &str = "PACKET_IPC_RUNTIME_DIR";
/// Variable naming the rendezvous file, for daemon and clients.
pub const ENV_RENDEZVOUS: &str = "PACKET_IPC_RENDEZVOUS";
/// The system runtime directory.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/packet-ipc";
/// Name of the rendezvous file in the runtime directory.
pub const RENDEZVOUS_FILE: &str = "rendezvous.json";

/// Version of the rendezvous file's layout.
pub const RENDEZVOUS_VERSION: u32 = 1;

/// One named server as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server's name.
    pub name: String,
    /// pcap link type of its packets.
    pub linktype: u32,
    /// Longest captured length.
    pub snaplen: u32,
    /// Its overflow policy.
    pub overflow: String,
    /// Spool directory where producers drop their requests.
    pub producers: PathBuf,
    /// Spool directory where subscribers drop their requests.
    pub subscribers: PathBuf,
    /// Group allowed to produce, if restricted.
    pub producer_group: Option<String>,
    /// Group allowed to subscribe, if restricted.
    pub subscriber_group: Option<String>,
}

/// The most a rendezvous file may hold.
const MAX_RENDEZVOUS: u64 = 1 << 20;

/// The rendezvous file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendezvous {
    /// Layout version ([`RENDEZVOUS_VERSION`]).
    pub version: u32,
    /// Grows by one at every rewrite by the same daemon.
    pub generation: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's runtime directory.
    pub runtime_dir: PathBuf,
    /// Spool directory for control requests (stats).
    pub control: PathBuf,
    /// The servers.
    pub servers: Vec<ServerEntry>,
    /// The user that owns the file: the daemon's (not in the file; filled in by
    /// [`Rendezvous::read`]).
    #[serde(skip)]
    pub owner: u32,
}

/// Why the rendezvous file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// No file: no daemon has started here (or it stopped cleanly).
    #[error("no packet-ipcd is running (no rendezvous file at {0})")]
    Missing(PathBuf),
    /// The file is left by a daemon that is gone.
    #[error("no packet-ipcd is running (the rendezvous file {path} was left by process {pid}, which is gone)")]
    Stale {
        /// The file.
        path: PathBuf,
        /// The dead daemon's pid.
        pid: u32,
    },
    /// The file cannot be read.
    #[error("cannot read the rendezvous file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or its directory could have been planted by another user.
    #[error("refusing the rendezvous file: {0}")]
    Untrusted(String),
    /// The file is not a rendezvous file of this version.
    #[error("the rendezvous file {path} is not valid: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn uid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::geteuid() }
}

fn user_fallbacks() -> PathBuf {
    if let Some(xdg) = env_path("XDG_RUNTIME_DIR") {
        return xdg.join("packet-ipc");
    }
    PathBuf::from(format!("/tmp/packet-ipc-{}", uid()))
}

/// The daemon's runtime directory (see the module docs), given its configured one.
pub fn daemon_runtime_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = env_path(ENV_RUNTIME_DIR) {
        return dir;
    }
    if let Some(dir) = configured {
        return dir.to_owned();
    }
    if let Some(dirs) = std::env::var_os("RUNTIME_DIRECTORY").filter(|v| !v.is_empty()) {
        // systemd separates several directories with colons; ours is the first.
        if let Some(first) = dirs.to_string_lossy().split(':').next() {
            return PathBuf::from(first);
        }
    }
    if is_root() {
        return PathBuf::from(SYSTEM_RUNTIME_DIR);
    }
    user_fallbacks()
}

/// A client's runtime directory (see the module docs).
pub fn client_runtime_dir() -> PathBuf {
    if let Some(dir) = env_path(ENV_RUNTIME_DIR) {
        return dir;
    }
    let system = Path::new(SYSTEM_RUNTIME_DIR);
    if system.join(RENDEZVOUS_FILE).exists() {
        return system.to_owned();
    }
    user_fallbacks()
}

/// The rendezvous file in `runtime_dir`, unless `$PACKET_IPC_RENDEZVOUS` says otherwise.
pub fn rendezvous_path(runtime_dir: &Path) -> PathBuf {
    env_path(ENV_RENDEZVOUS).unwrap_or_else(|| runtime_dir.join(RENDEZVOUS_FILE))
}

/// The rendezvous file a client reads.
pub fn client_rendezvous_path() -> PathBuf {
    env_path(ENV_RENDEZVOUS).unwrap_or_else(|| client_runtime_dir().join(RENDEZVOUS_FILE))
}

/// True if a process with this id exists (possibly another user's).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Rendezvous {
    /// Reads the file, if it is one to believe, and checks that its daemon is alive.
    ///
    /// The directory holding it must be one only root, this user, or the owner of a
    /// sheltered directory could have made ([`fsafe::trusted_dir`]); the file must be a
    /// regular file of at most 1 MiB owned by that directory's owner (or root) and writable
    /// by nobody else; every path in it must be absolute, and the spool directories must
    /// lie in its runtime directory.
    pub fn read(path: &Path) -> Result<Rendezvous, RendezvousError> {
        let invalid = |why: String| RendezvousError::Invalid {
            path: path.to_owned(),
            why,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        let dir_meta = match fsafe::trusted_dir(dir, uid()) {
            Ok(m) => m,
            Err(e) if std::fs::symlink_metadata(dir).is_err() => {
                let _ = e;
                return Err(RendezvousError::Missing(path.to_owned()));
            }
            Err(e) => return Err(RendezvousError::Untrusted(e.to_string())),
        };
        let (text, meta) = match fsafe::read_trusted(path, dir_meta.uid, MAX_RENDEZVOUS) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RendezvousError::Missing(path.to_owned()))
            }
            Err(e) if e.raw_os_error().is_some() => {
                return Err(RendezvousError::Io {
                    path: path.to_owned(),
                    source: e,
                })
            }
            Err(e) => return Err(invalid(e.to_string())),
        };
        let mut r: Rendezvous =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if r.version != RENDEZVOUS_VERSION {
            return Err(invalid(format!(
                "version {} (this build reads {RENDEZVOUS_VERSION})",
                r.version
            )));
        }
        r.owner = meta.uid;
        let inside = |p: &Path| p.is_absolute() && p.starts_with(&r.runtime_dir);
        let paths_ok = r.runtime_dir.is_absolute()
            && inside(&r.control)
            && r.servers
                .iter()
                .all(|s| inside(&s.producers) && inside(&s.subscribers));
        if !paths_ok {
            return Err(invalid(
                "a path in it is not absolute or not in its runtime directory".into(),
            ));
        }
        if !process_alive(r.pid) {
            return Err(RendezvousError::Stale {
                path: path.to_owned(),
                pid: r.pid,
            });
        }
        Ok(r)
    }

    /// The server of that name.
    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Writes the file atomically at `path`: a new temporary file beside it (never through
    /// a link), renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = fsafe::Dir::open(path.parent().unwrap_or(Path::new("/")))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("a rendezvous path without a file name"))?;
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let _ = dir.unlink(&tmp);
        let mut f = dir.create_new(&tmp, 0o644)?;
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        let written = f.write_all(&json).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| dir.rename(&tmp, name)) {
            let _ = dir.unlink(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32) -> Rendezvous {
        Rendezvous {
            version: RENDEZVOUS_VERSION,
            generation: 1,
            pid,
            runtime_dir: "/run/x".into(),
            control: "/run/x/ctl".into(),
            servers: vec![ServerEntry {
                name: "default".into(),
                linktype: 1,
                snaplen: 65535,
                overflow: "drop-oldest".into(),
                producers: "/run/x/srv/default/pub".into(),
                subscribers: "/run/x/srv/default/sub".into(),
                producer_group: None,
                subscriber_group: Some("analytics".into()),
            }],
            owner: 0,
        }
    }

    #[test]
    fn written_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RENDEZVOUS_FILE);
        let mut r = sample(std::process::id());
        r.write(&path).unwrap();
        // SAFETY: geteuid cannot fail.
        r.owner = unsafe { libc::geteuid() };
        assert_eq!(Rendezvous::read(&path).unwrap(), r);
        assert!(r.server("default").is_some());
        assert!(r.server("nope").is_none());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_dead_daemon_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RENDEZVOUS_FILE);
        // A child that has exited and been reaped: its pid is not a process any more.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        sample(pid).write(&path).unwrap();
        assert!(matches!(
            Rendezvous::read(&path),
            Err(RendezvousError::Stale { pid: p, .. }) if p == pid
        ));
        assert!(matches!(
            Rendezvous::read(&dir.path().join("none.json")),
            Err(RendezvousError::Missing(_))
        ));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Rendezvous::read(&path),
            Err(RendezvousError::Invalid { .. })
        ));
    }
}
