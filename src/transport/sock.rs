//! Unix sequenced-packet sockets carrying frames and file descriptors, and who is at the
//! other end.
//!
//! The broker's connections are plain `SOCK_SEQPACKET` sockets: one message is one frame,
//! file descriptors travel with it (`SCM_RIGHTS`), the kernel tells each end who the peer
//! is (`SO_PEERCRED`), and nothing here ever blocks longer than the caller allows:
//! connecting never waits for a full backlog, receiving never waits for bytes a header
//! promised. (ipc-channel, which carries the point-to-point API, cannot do those things:
//! its connect and accept block without a timeout, its reader trusts the framing it
//! finds, and it maps every descriptor it receives read-write.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The most descriptors one received frame may carry; more is a protocol error.
pub(crate) const MAX_FDS: usize = 4;

/// Who is at the other end of a connection, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Process id (in this process's pid namespace).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recv {
    /// A message of this many bytes (its descriptors were appended to the caller's list).
    Message(usize),
    /// Nothing to read now.
    Empty,
    /// The peer closed the connection.
    Closed,
    /// A message that does not fit the buffer, or with more descriptors than allowed
    /// (they were closed): the peer does not follow the protocol.
    Oversized,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long or invalid: {}", path.display()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn new_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket has no memory arguments.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: a descriptor just returned by socket, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable (or hung up), at most `timeout`; false on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: a wait never ends before its deadline.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}

/// One end of a connection.
#[derive(Debug)]
pub(crate) struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Wraps a connected socket.
    pub(crate) fn from_fd(fd: OwnedFd) -> Conn {
        Conn { fd }
    }

    /// A connected pair (tests).
    #[cfg(test)]
    pub(crate) fn pair() -> io::Result<(Conn, Conn)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: both were just created and are owned by nobody else.
        unsafe {
            Ok((
                Conn::from_fd(OwnedFd::from_raw_fd(fds[0])),
                Conn::from_fd(OwnedFd::from_raw_fd(fds[1])),
            ))
        }
    }

    /// Connects to the listening socket at `path` without ever waiting: a listener whose
    /// backlog is full gives `WouldBlock` at once. The connection is left non-blocking.
    pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<Conn> {
        let fd = new_socket(true)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        cvt(rc)?;
        Ok(Conn { fd })
    }

    /// Puts the socket in (non-)blocking mode.
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        // SAFETY: fcntl on our own descriptor.
        let flags = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) })?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags) })?;
        Ok(())
    }

    /// Who is at the other end.
    pub(crate) fn peer(&self) -> io::Result<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` has room for the ucred getsockopt writes, `len` says so.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok(Peer {
            pid: cred.pid as u32,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// Sends one message with `fds` attached. Never raises `SIGPIPE`; on a non-blocking
    /// socket whose buffer is full, fails with `WouldBlock` having sent nothing.
    pub(crate) fn send(&self, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is a valid empty one.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            assert!(fds.len() <= MAX_FDS, "too many descriptors in one frame");
            let bytes = std::mem::size_of_val(fds) as u32;
            hdr.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            hdr.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
            // SAFETY: `control` is large enough for one cmsghdr with MAX_FDS descriptors
            // (8 u64 = 64 bytes >= CMSG_SPACE(16)); the macros stay within it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        loop {
            // SAFETY: `hdr` points at `iov` and `control`, alive for the call.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return if n as usize == msg.len() {
                    Ok(())
                } else {
                    Err(io::Error::other("short send on a packet socket"))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one message into `buf` (without waiting when `wait` is zero, else up to
    /// `wait`), appending the descriptors it carried to `fds`.
    pub(crate) fn recv(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        wait: Duration,
    ) -> io::Result<Recv> {
        if !wait.is_zero() && !wait_readable(self.fd.as_fd(), wait)? {
            return Ok(Recv::Empty);
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is a valid empty one.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&control) as _;
        let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
        let n = loop {
            // SAFETY: `hdr` points at `iov` (into `buf`) and `control`, alive for the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut hdr, flags) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    return Ok(Recv::Closed)
                }
                _ => return Err(e),
            }
        };
        let before = fds.len();
        // SAFETY: the control buffer was filled by recvmsg; the CMSG macros stay within
        // msg_controllen, and each descriptor in an SCM_RIGHTS message was installed in
        // this process by that call and is owned by nobody else.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        let truncated = hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        if truncated || fds.len() - before > MAX_FDS {
            fds.truncate(before);
            return Ok(Recv::Oversized);
        }
        if n == 0 && fds.len() == before {
            return Ok(Recv::Closed);
        }
        Ok(Recv::Message(n))
    }
}

impl Conn {
    /// Reads and discards what the peer sent and nobody read, without waiting (at most a
    /// bounded number of frames). A socket closed with unread data resets the connection,
    /// and the peer would then lose what was sent to it before (a last notice).
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 256];
        for _ in 0..1024 {
            let mut fds = Vec::new();
            match self.recv(&mut buf, &mut fds, Duration::ZERO) {
                Ok(Recv::Message(_)) | Ok(Recv::Oversized) => {}
                _ => return,
            }
        }
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening socket at a path, removed when dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens at `path` (which must not exist), with the socket file's mode set to
    /// `mode` (whoever may connect needs write permission on it).
    pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<Listener> {
        let fd = new_socket(true)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        let listener = Listener {
            fd,
            path: path.to_owned(),
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        // SAFETY: listen on our own socket.
        cvt(unsafe { libc::listen(listener.fd.as_raw_fd(), 8) })?;
        Ok(listener)
    }

    /// Testing: listens with a backlog of `n` (0: a listener that takes next to nothing,
    /// as an attacker's would).
    #[cfg(feature = "daemon")]
    pub(crate) fn set_backlog(&self, n: i32) -> io::Result<()> {
        // SAFETY: listen on our own socket.
        cvt(unsafe { libc::listen(self.fd.as_raw_fd(), n) }).map(drop)
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection, waiting at most until `deadline`; `None` when it passed.
    pub(crate) fn accept(&self, deadline: Instant) -> io::Result<Option<Conn>> {
        loop {
            // SAFETY: accept4 on our own listening socket, without an address buffer.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a descriptor just returned by accept4, owned by nobody else.
                return Ok(Some(Conn::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !wait_readable(self.fd.as_fd(), left)? {
                        return Ok(None);
                    }
                }
                _ => return Err(e),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_descriptors_and_the_peer_is_known() {
        let (a, b) = Conn::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        a.send(b"hello", &[file.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        assert_eq!(
            b.recv(&mut buf, &mut fds, Duration::from_secs(1)).unwrap(),
            Recv::Message(5)
        );
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(fds.len(), 1);
        let me = b.peer().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(
            b.recv(&mut buf, &mut fds, Duration::ZERO).unwrap(),
            Recv::Empty
        );
        // Too long for the buffer: refused, not cut silently.
        a.send(&[7u8; 100], &[]).unwrap();
        assert_eq!(
            b.recv(&mut buf, &mut fds, Duration::ZERO).unwrap(),
            Recv::Oversized
        );
        drop(a);
        assert_eq!(
            b.recv(&mut buf, &mut fds, Duration::from_secs(1)).unwrap(),
            Recv::Closed
        );
    }

    #[test]
    fn a_full_backlog_never_blocks_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = Listener::bind(&path, 0o600).unwrap();
        // Never accepted: the backlog fills, then connect fails at once.
        let mut held = Vec::new();
        let start = Instant::now();
        let refused = loop {
            match Conn::connect_nonblocking(&path) {
                Ok(c) => held.push(c),
                Err(e) => break e,
            }
            assert!(held.len() < 1000, "the backlog never filled");
        };
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let got = listener
            .accept(Instant::now() + Duration::from_secs(1))
            .unwrap();
        assert!(got.is_some());
        drop(listener);
        assert!(
            !path.exists(),
            "the socket file is removed with the listener"
        );
    }
}
