//! Spool directories: how a client asks the daemon to connect to it.
//!
//! Each server has two spool directories, one per role. A client creates its one-shot
//! socket in a fresh `.tmpXXXXXX` directory inside the spool directory, then drops a
//! request file there (written under a dot-name and renamed, so the daemon never sees half
//! a request):
//!
//! ```json
//! {"version": 1, "socket": "/run/packet-ipc/srv/default/sub/.tmpAbC123/socket", "pid": 4242}
//! ```
//!
//! The daemon validates it (a regular file; the socket a socket inside a `.tmp` directory
//! of this very spool directory, owned by the user who owns the request), deletes it, and
//! connects. The spool directory's group and mode are the access control: with a group
//! configured it is `rwxrws--T` owned by that group, so only its members can ask.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Version of the request layout.
const REQUEST_VERSION: u32 = 1;
/// Largest request file the daemon reads.
const MAX_REQUEST: u64 = 4096;
/// Extension of request files.
pub const REQUEST_EXT: &str = "req";

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    version: u32,
    socket: PathBuf,
    pid: u32,
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's one-shot socket.
    pub socket: PathBuf,
    /// The client's process id (as it says).
    pub pid: u32,
    /// The user owning the request and the socket.
    pub uid: u32,
}

/// Why a request cannot be written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory does not let this user in.
    #[error("permission denied on {0}")]
    PermissionDenied(PathBuf),
    /// An I/O error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A request that does not hold up.
    #[error("invalid request {path}: {why}")]
    Invalid {
        /// The request file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            SpoolError::PermissionDenied(path.to_owned())
        } else {
            SpoolError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// A submitted request; the file is removed on drop if the daemon has not taken it.
pub struct Submitted {
    path: PathBuf,
}

impl Drop for Submitted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Drops a request naming `socket` into `spool` (client side).
pub fn submit(spool: &Path, socket: &str) -> Result<Submitted, SpoolError> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let stem = format!(
        "{pid}-{}-{}",
        COUNT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    );
    let tmp = spool.join(format!(".{stem}.part"));
    let path = spool.join(format!("{stem}.{REQUEST_EXT}"));
    let body = serde_json::to_vec(&RequestFile {
        version: REQUEST_VERSION,
        socket: PathBuf::from(socket),
        pid,
    })
    .map_err(|e| SpoolError::Invalid {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing a request in", spool)(e));
    }
    std::fs::rename(&tmp, &path).map_err(io("submitting a request in", spool))?;
    Ok(Submitted { path })
}

/// Reads and checks the request file `name` in `spool` (daemon side), then deletes it.
pub fn take_request(spool: &Path, name: &str) -> Result<Request, SpoolError> {
    let path = spool.join(name);
    let result = check_request(spool, &path);
    let _ = std::fs::remove_file(&path);
    result
}

fn invalid(path: &Path, why: impl Into<String>) -> SpoolError {
    SpoolError::Invalid {
        path: path.to_owned(),
        why: why.into(),
    }
}

fn check_request(spool: &Path, path: &Path) -> Result<Request, SpoolError> {
    let meta = std::fs::symlink_metadata(path).map_err(io("reading", path))?;
    if !meta.file_type().is_file() {
        return Err(invalid(path, "not a regular file"));
    }
    if meta.len() > MAX_REQUEST {
        return Err(invalid(path, format!("{} bytes is too long", meta.len())));
    }
    let text = std::fs::read(path).map_err(io("reading", path))?;
    let req: RequestFile =
        serde_json::from_slice(&text).map_err(|e| invalid(path, e.to_string()))?;
    if req.version != REQUEST_VERSION {
        return Err(invalid(path, format!("version {}", req.version)));
    }
    // The socket must be <spool>/.tmpXXXX/socket: the daemon connects to nothing else.
    let dir = req.socket.parent();
    let in_spool = dir.and_then(Path::parent) == Some(spool)
        && dir
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        && req.socket.file_name() == Some("socket".as_ref());
    if !in_spool {
        return Err(invalid(
            path,
            format!(
                "socket {} is not in this spool directory",
                req.socket.display()
            ),
        ));
    }
    let sock = std::fs::symlink_metadata(&req.socket).map_err(io("checking", &req.socket))?;
    use std::os::unix::fs::FileTypeExt;
    if !sock.file_type().is_socket() {
        return Err(invalid(path, "the named socket is not a socket"));
    }
    if sock.uid() != meta.uid() {
        return Err(invalid(
            path,
            format!(
                "socket owned by uid {} but request by uid {}",
                sock.uid(),
                meta.uid()
            ),
        ));
    }
    Ok(Request {
        socket: req.socket,
        pid: req.pid,
        uid: meta.uid(),
    })
}

/// Creates (or fixes) a spool directory: owned by `group` with mode `rwxrws--T` when a
/// group is given, else `rwxrwxrwt` (anyone may ask; nobody removes another's files).
pub fn prepare(dir: &Path, group: Option<u32>) -> Result<(), SpoolError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(dir, None, Some(gid))
                .map_err(io("changing the group of", dir))?;
            0o3770
        }
        None => 0o1777,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", dir))
}

/// Removes what dead clients left in a spool directory: requests, and `.tmp` directories
/// whose socket no longer accepts connections. Returns how many entries were removed.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with(".tmp") && !socket_alive(&path.join("socket")) {
            if std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        } else if name.ends_with(".part") || name.ends_with(REQUEST_EXT) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(60))
                .unwrap_or(true);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// True if something listens on the Unix socket at `path` (of any socket type).
fn socket_alive(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        // A listening seqpacket socket refuses a stream socket with EPROTOTYPE.
        Err(e) => e.raw_os_error() == Some(libc::EPROTOTYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        let sockdir = spool.join(".tmpAAAAAA");
        std::fs::create_dir(&sockdir).unwrap();
        let sock = sockdir.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();

        let sub = submit(spool, sock.to_str().unwrap()).unwrap();
        let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
        let req = take_request(spool, &name).unwrap();
        assert_eq!(req.socket, sock);
        assert_eq!(req.pid, std::process::id());
        assert!(!sub.path.exists(), "the daemon deletes what it took");

        // A socket elsewhere is refused.
        let sub = submit(spool, "/run/elsewhere/.tmpX/socket").unwrap();
        let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(matches!(
            take_request(spool, &name),
            Err(SpoolError::Invalid { .. })
        ));
        // Garbage is refused.
        std::fs::write(spool.join("junk.req"), b"\x00\xffgarbage").unwrap();
        assert!(matches!(
            take_request(spool, "junk.req"),
            Err(SpoolError::Invalid { .. })
        ));
        assert!(!spool.join("junk.req").exists());
        // A regular file named like a socket is refused.
        let fake = spool.join(".tmpBBBBBB");
        std::fs::create_dir(&fake).unwrap();
        std::fs::write(fake.join("socket"), b"").unwrap();
        let sub = submit(spool, fake.join("socket").to_str().unwrap()).unwrap();
        let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(matches!(
            take_request(spool, &name),
            Err(SpoolError::Invalid { .. })
        ));
    }

    #[test]
    fn sweep_removes_dead_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(".tmpLIVE00");
        let dead = dir.path().join(".tmpDEAD00");
        std::fs::create_dir(&live).unwrap();
        std::fs::create_dir(&dead).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(live.join("socket")).unwrap();
        drop(std::os::unix::net::UnixListener::bind(dead.join("socket")).unwrap());
        assert_eq!(sweep(dir.path()), 1);
        assert!(live.exists());
        assert!(!dead.exists());
    }
}
