//! Spool directories: how a client asks the daemon to connect to it.
//!
//! Each server has two spool directories, one per role, and the daemon one for control
//! requests (`ctl`). A client listens on a socket of its own in the spool directory
//! (`crate::transport::bootstrap`), then drops a request file naming it there (written
//! under a dot-name and renamed, so the daemon never sees half a request):
//!
//! ```json
//! {"version": 2, "socket": "1f2e-0.sock", "pid": 4242, "group": null}
//! ```
//!
//! The daemon reads it through the directory's descriptor without following links and
//! without blocking (a regular file of at most 4 KiB, [`take_request`]), deletes it,
//! checks that the socket is a socket in this very directory owned by the user who owns
//! the request, and connects — without waiting, and checking who listens. The spool
//! directory's group and mode are the access control: with a group configured it is
//! `rwxrws--T` owned by that group, so only its members can ask; the control directory is
//! open to all (the counters are for everyone; who may see which process ids is decided
//! per request).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::fsafe::Dir;

/// Version of the request layout.
const REQUEST_VERSION: u32 = 2;
/// Largest request file the daemon reads.
const MAX_REQUEST: u64 = 4096;
/// Extension of request files.
pub const REQUEST_EXT: &str = "req";
/// Extension of clients' sockets.
pub const SOCKET_EXT: &str = "sock";
/// Requests and sockets older than this are left by clients that gave up or died.
const STALE_SECS: i64 = 60;

/// A client's request, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    version: u32,
    socket: String,
    pid: u32,
    #[serde(default)]
    group: Option<String>,
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's socket (in the spool directory).
    pub socket: PathBuf,
    /// The client's process id (as it says; the kernel tells the truth on connect).
    pub pid: u32,
    /// The user owning the request and the socket.
    pub uid: u32,
    /// The subscriber group it asks to join.
    pub group: Option<String>,
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

impl SpoolError {
    /// True when the request was already taken (by a rescan racing an event).
    pub fn is_gone(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
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

/// Drops a request naming the socket `socket` (a file name in `spool`) into `spool`
/// (client side), asking to join `group` if any.
pub fn submit(spool: &Path, socket: &str, group: Option<&str>) -> Result<Submitted, SpoolError> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let stem = format!("{pid:x}-{:x}", COUNT.fetch_add(1, Ordering::Relaxed));
    let tmp = spool.join(format!(".{stem}.part"));
    let path = spool.join(format!("{stem}.{REQUEST_EXT}"));
    let body = serde_json::to_vec(&RequestFile {
        version: REQUEST_VERSION,
        socket: socket.to_owned(),
        pid,
        group: group.map(str::to_owned),
    })
    .map_err(|e| SpoolError::Invalid {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing a request in", spool)(e));
    }
    std::fs::rename(&tmp, &path).map_err(io("submitting a request in", spool))?;
    Ok(Submitted { path })
}

fn invalid(path: &Path, why: impl Into<String>) -> SpoolError {
    SpoolError::Invalid {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// Reads and checks the request file `name` in the spool directory `dir` (at `path`),
/// then deletes it (daemon side). Never follows a link, never blocks, never reads more
/// than 4 KiB.
pub fn take_request(dir: &Dir, path: &Path, name: &str) -> Result<Request, SpoolError> {
    let file = path.join(name);
    let read = dir.read_file(name, MAX_REQUEST);
    let _ = dir.unlink(name);
    let (text, meta) = read.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            io("reading", &file)(e)
        } else {
            invalid(&file, e.to_string())
        }
    })?;
    let req: RequestFile =
        serde_json::from_slice(&text).map_err(|e| invalid(&file, e.to_string()))?;
    if req.version != REQUEST_VERSION {
        return Err(invalid(&file, format!("version {}", req.version)));
    }
    let plain = !req.socket.is_empty()
        && req.socket.len() <= 64
        && !req.socket.starts_with('.')
        && req
            .socket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && req.socket.ends_with(SOCKET_EXT);
    if !plain {
        return Err(invalid(
            &file,
            format!(
                "socket {:?} is not a socket name of this directory",
                req.socket
            ),
        ));
    }
    let sock = dir
        .stat(&req.socket)
        .map_err(|e| invalid(&file, format!("socket {}: {e}", req.socket)))?;
    if !sock.is_socket() {
        return Err(invalid(&file, "the named socket is not a socket"));
    }
    if sock.uid != meta.uid {
        return Err(invalid(
            &file,
            format!(
                "socket owned by uid {} but request by uid {}",
                sock.uid, meta.uid
            ),
        ));
    }
    Ok(Request {
        socket: path.join(&req.socket),
        pid: req.pid,
        uid: meta.uid,
        group: req.group,
    })
}

/// Creates (or fixes) a spool directory `name` under `parent`: owned by `group` with mode
/// `rwxrws--T` when a group is given, else `rwxrwxrwt` (anyone may ask; nobody removes
/// another's files). A planted link or file of that name is replaced, never followed.
pub fn prepare(parent: &Dir, name: &str, group: Option<u32>) -> std::io::Result<Dir> {
    match group {
        Some(gid) => parent.subdir(name, 0o3770, Some(gid)),
        None => parent.subdir(name, 0o1777, None),
    }
}

/// Removes what dead or departed clients left in a spool directory: requests, parts and
/// sockets older than a minute (a client waits seconds for its answer). Returns how many
/// entries were removed.
pub fn sweep(dir: &Dir) -> usize {
    let Ok(names) = dir.entries() else {
        return 0;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut removed = 0;
    for name in names {
        let ours =
            name.ends_with(REQUEST_EXT) || name.ends_with(".part") || name.ends_with(SOCKET_EXT);
        if !ours {
            continue;
        }
        let old = dir
            .stat(&name)
            .is_ok_and(|m| !m.is_dir() && now - m.mtime > STALE_SECS);
        if old && dir.unlink(&name).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path();
        let dir = Dir::open(spool).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(spool.join("1-0.sock")).unwrap();

        let sub = submit(spool, "1-0.sock", Some("ids")).unwrap();
        let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
        let req = take_request(&dir, spool, &name).unwrap();
        assert_eq!(req.socket, spool.join("1-0.sock"));
        assert_eq!(req.pid, std::process::id());
        assert_eq!(req.group.as_deref(), Some("ids"));
        assert!(!sub.path.exists(), "the daemon deletes what it took");

        // A socket elsewhere is refused, however it is spelled.
        for bad in ["../x.sock", "/run/x.sock", ".hidden.sock", "x.txt"] {
            let sub = submit(spool, bad, None).unwrap();
            let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(
                matches!(
                    take_request(&dir, spool, &name),
                    Err(SpoolError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        // Garbage is refused and removed.
        std::fs::write(spool.join("junk.req"), b"\x00\xffgarbage").unwrap();
        assert!(matches!(
            take_request(&dir, spool, "junk.req"),
            Err(SpoolError::Invalid { .. })
        ));
        assert!(!spool.join("junk.req").exists());
        // A regular file named like a socket is refused.
        std::fs::write(spool.join("2-0.sock"), b"").unwrap();
        let sub = submit(spool, "2-0.sock", None).unwrap();
        let name = sub.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(matches!(
            take_request(&dir, spool, &name),
            Err(SpoolError::Invalid { .. })
        ));
        // A FIFO or a link in place of a request is refused at once.
        nix::unistd::mkfifo(
            &spool.join("fifo.req"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(take_request(&dir, spool, "fifo.req").is_err());
        std::os::unix::fs::symlink("/dev/zero", spool.join("zero.req")).unwrap();
        assert!(take_request(&dir, spool, "zero.req").is_err());
        assert!(matches!(take_request(&dir, spool, "gone.req"), Err(e) if e.is_gone()));
    }

    #[test]
    fn sweep_removes_only_old_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("new.req"), b"{}").unwrap();
        std::fs::write(tmp.path().join("old.req"), b"{}").unwrap();
        std::fs::write(tmp.path().join("keep.txt"), b"").unwrap();
        let old = std::fs::File::options()
            .write(true)
            .open(tmp.path().join("old.req"))
            .unwrap();
        old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(sweep(&dir), 1);
        assert!(tmp.path().join("new.req").exists());
        assert!(tmp.path().join("keep.txt").exists());
    }
}
