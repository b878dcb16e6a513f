//! Files and directories that other users may have planted: opened without following
//! symbolic links, checked on the open descriptor, read to a bounded size.
//!
//! The daemon works inside its runtime directory through a [`Dir`] (a descriptor of the
//! directory, opened with `O_NOFOLLOW`), creating and opening its entries relative to it
//! with `O_NOFOLLOW`, so that a symbolic link planted in its place is never followed. A
//! client decides whether to believe a runtime directory and a rendezvous file by who owns
//! them and who may write them ([`trusted_dir`], [`read_trusted`]).

use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What `fstat` says about an entry.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode, type bits included.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the epoch.
    pub mtime: i64,
}

impl Meta {
    fn from_stat(st: &libc::stat) -> Meta {
        Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            size: st.st_size as u64,
            mtime: st.st_mtime,
        }
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// A socket.
    pub fn is_socket(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFSOCK
    }

    /// Writable by users other than the owner and the group.
    pub fn others_write(&self) -> bool {
        self.mode & 0o002 != 0
    }

    /// Writable by the group.
    pub fn group_write(&self) -> bool {
        self.mode & 0o020 != 0
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    // SAFETY: an all-zero stat is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid storage; fstat on a borrowed descriptor.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Meta::from_stat(&st))
}

/// `lstat` of a path (the link itself, when it is one).
pub fn lstat(path: &Path) -> io::Result<Meta> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: an all-zero stat is valid storage for lstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` valid storage.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(Meta::from_stat(&st))
}

/// An open directory, through which entries are reached without following links.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens the directory at `path`; fails if the last component is a symbolic link.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: a descriptor just returned by open, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd })
    }

    /// What the directory itself is.
    pub fn meta(&self) -> io::Result<Meta> {
        fstat(self.fd.as_fd())
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        if name.contains('/') || name.is_empty() || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain name",
            ));
        }
        let c = cstr(OsStr::new(name))?;
        // SAFETY: `c` is NUL-terminated; openat relative to our directory descriptor.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        })?;
        // SAFETY: a descriptor just returned by openat, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The sub-directory `name`, created with `mode` if missing; an entry of that name that
    /// is not a directory of the daemon's user (a planted file or link) is removed first.
    /// The mode and group are then set on the open directory (`fchmod`, `fchown`).
    pub fn subdir(&self, name: &str, mode: u32, gid: Option<u32>) -> io::Result<Dir> {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        match self.stat(name) {
            Ok(m) if m.is_dir() && m.uid == me => {}
            Ok(m) if m.is_dir() => self.remove_tree(name)?,
            Ok(_) => self.unlink(name)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let c = cstr(OsStr::new(name))?;
        // SAFETY: `c` is NUL-terminated; mkdirat relative to our directory.
        match cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let fd = self.openat(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        if let Some(gid) = gid {
            // SAFETY: fchown on our own descriptor; -1 keeps the owner.
            cvt(unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, gid) })?;
        }
        // SAFETY: fchmod on our own descriptor.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
        Ok(Dir { fd })
    }

    /// `lstat` of the entry `name`.
    pub fn stat(&self, name: &str) -> io::Result<Meta> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: an all-zero stat is valid storage.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c` NUL-terminated, `st` valid storage, relative to our directory.
        cvt(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Meta::from_stat(&st))
    }

    /// Opens (creating if needed, with `mode`) the regular file `name` for reading and
    /// writing, never through a link.
    pub fn open_file(&self, name: &str, mode: u32) -> io::Result<std::fs::File> {
        let fd = self.openat(name, libc::O_RDWR | libc::O_CREAT, mode as libc::mode_t)?;
        if !fstat(fd.as_fd())?.is_file() {
            return Err(io::Error::other(format!("{name} is not a regular file")));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Creates the new file `name` (it must not exist), for writing.
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<std::fs::File> {
        let fd = self.openat(
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode as libc::mode_t,
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// Reads the regular file `name`, at most `max` bytes, without blocking on whatever
    /// else it might be (a FIFO, a device): returns its bytes and who owns it.
    pub fn read_file(&self, name: &str, max: u64) -> io::Result<(Vec<u8>, Meta)> {
        let fd = self.openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        read_bounded(fd, name, max)
    }

    /// Renames `from` to `to` within the directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(OsStr::new(from))?, cstr(OsStr::new(to))?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names NUL-terminated, relative to our directory.
        cvt(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) }).map(|_| ())
    }

    /// Removes the entry `name` (not a directory).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: `c` NUL-terminated, relative to our directory.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes the directory `name` and everything in it (links are removed, not followed).
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        let sub = Dir {
            fd: self.openat(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?,
        };
        for entry in sub.entries()? {
            match sub.stat(&entry) {
                Ok(m) if m.is_dir() => sub.remove_tree(&entry)?,
                Ok(_) => sub.unlink(&entry)?,
                Err(_) => {}
            }
        }
        let c = cstr(OsStr::new(name))?;
        // SAFETY: `c` NUL-terminated, relative to our directory.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(|_| ())
    }

    /// The names in the directory (not `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn read_bounded(fd: OwnedFd, what: &str, max: u64) -> io::Result<(Vec<u8>, Meta)> {
    let meta = fstat(fd.as_fd())?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{what} is not a regular file")));
    }
    if meta.size > max {
        return Err(io::Error::other(format!(
            "{what} is {} bytes, over the {max} read",
            meta.size
        )));
    }
    let mut bytes = Vec::with_capacity(meta.size as usize);
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("{what} grew past {max} bytes")));
    }
    Ok((bytes, meta))
}

/// Reads the file at `path`, at most `max` bytes, refusing anything but a regular file
/// (never blocking on a FIFO, never following a link in the last component).
pub fn read_file(path: &Path, max: u64) -> io::Result<(Vec<u8>, Meta)> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `c` NUL-terminated; open returns a new descriptor or -1.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a descriptor just returned by open, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    read_bounded(fd, &path.display().to_string(), max)
}

/// Why a directory or file is not to be believed.
#[derive(Debug, thiserror::Error)]
#[error("{path} is not safe to use: {why}")]
pub struct Untrusted {
    /// The path.
    pub path: std::path::PathBuf,
    /// Why.
    pub why: String,
}

/// Checks that the directory `path` could only have been made by root, by this user, or by
/// someone root let write its parent: it is a real directory (not a link), not writable by
/// others, and owned by root or by `uid` — or its parent is itself trusted and writable by
/// nobody but its owner (as `/run` is), so only its owner could have put it there.
///
/// A runtime directory in `/tmp` made by another user fails this: another user could have
/// made it first, and run a daemon in it that would take every packet sent there.
pub fn trusted_dir(path: &Path, uid: u32) -> Result<Meta, Untrusted> {
    let untrusted = |why: String| Untrusted {
        path: path.to_owned(),
        why,
    };
    let m = lstat(path).map_err(|e| untrusted(e.to_string()))?;
    if !m.is_dir() {
        return Err(untrusted("not a directory".into()));
    }
    if m.others_write() {
        return Err(untrusted("writable by every user".into()));
    }
    if m.uid == 0 || m.uid == uid {
        return Ok(m);
    }
    // Someone else's: believable only if nobody but root could have created it there.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let sheltered = parent.is_some_and(|p| {
        lstat(p)
            .is_ok_and(|pm| pm.is_dir() && pm.uid == 0 && !pm.others_write() && !pm.group_write())
    });
    if sheltered {
        Ok(m)
    } else {
        Err(untrusted(format!(
            "owned by uid {}, which is neither root nor uid {uid}, in a directory others can write",
            m.uid
        )))
    }
}

/// Reads a file another process wrote for this one to believe (the rendezvous file): a
/// regular file, not a link, owned by root or by `owner`, writable by nobody else.
pub fn read_trusted(path: &Path, owner: u32, max: u64) -> Result<(Vec<u8>, Meta), io::Error> {
    let (bytes, meta) = read_file(path, max)?;
    if meta.uid != 0 && meta.uid != owner {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by the runtime directory's owner (uid {owner})",
            meta.uid
        )));
    }
    if meta.others_write() || meta.group_write() {
        return Err(io::Error::other("writable by other users"));
    }
    Ok((bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn planted_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("lock")).unwrap();
        assert!(d.open_file("lock", 0o644).is_err(), "a link is not opened");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A link where a directory should be is replaced, its target untouched.
        let victim = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let before = mode(victim.path());
        std::os::unix::fs::symlink(victim.path(), dir.path().join("ctl")).unwrap();
        let ctl = d.subdir("ctl", 0o1777, None).unwrap();
        assert!(ctl.meta().unwrap().is_dir());
        assert_eq!(
            mode(victim.path()),
            before,
            "the victim's mode is unchanged"
        );
        assert!(Dir::open(&dir.path().join("ctl")).is_ok());
    }

    #[test]
    fn fifos_and_oversized_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(read_file(&fifo, 1024).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 2000]).unwrap();
        assert!(read_file(&big, 1024).is_err());
        assert!(read_file(Path::new("/dev/zero"), 1024).is_err());
        let (bytes, meta) = read_file(&big, 4096).unwrap();
        assert_eq!((bytes.len(), meta.size), (2000, 2000));
        let d = Dir::open(dir.path()).unwrap();
        assert!(d.read_file("f", 10).is_err());
    }

    #[test]
    fn only_directories_of_root_or_of_this_user_are_trusted_in_tmp() {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let dir = tempfile::tempdir().unwrap();
        assert!(trusted_dir(dir.path(), me).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(trusted_dir(dir.path(), me).is_err(), "writable by all");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if me == 0 {
            // Owned by someone else, in /tmp (others may write there): refused.
            std::os::unix::fs::chown(dir.path(), Some(4242), None).unwrap();
            assert!(trusted_dir(dir.path(), 1000).is_err());
            // Owned by someone else in a root-owned 0755 directory: only root put it there.
            let root_owned = tempfile::tempdir().unwrap();
            let sub = root_owned.path().join("run");
            std::fs::create_dir(&sub).unwrap();
            std::os::unix::fs::chown(&sub, Some(4242), None).unwrap();
            std::fs::set_permissions(root_owned.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            assert!(trusted_dir(&sub, 1000).is_ok());
        }
    }
}
