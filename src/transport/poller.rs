//! The daemon's reading of its clients: one epoll set per server, and a look at every
//! message before ipc-channel is allowed to read it.
//!
//! # Why not `IpcReceiverSet`
//!
//! A client holds the sending end of sockets the daemon reads, and can write anything on
//! them, not only what ipc-channel would write. ipc-channel's reader trusts the framing
//! it finds there: a message whose header claims more bytes than it carries makes it
//! block until they come (hanging the server's hub), or unwrap a channel that is not
//! there (a panic), or reserve whatever total length the header names (an abort when
//! the allocation fails); a socket descriptor attached where none is expected is
//! dropped unused, which ipc-channel asserts against (and leaks in release builds).
//! `IpcReceiverSet` reads every ready socket in one call, so one such message would
//! also take with it what the other clients had sent.
//!
//! So the poller keeps each receiver on its own, waits with its own epoll set, and
//! before every read peeks at the next message ([`peek`]): only a message that
//! ipc-channel reads in one piece and that carries exactly the descriptors its channel
//! allows is passed on; anything else drops that client alone, with a reason. A client
//! that floods is read at most [`MAX_PER_ROUND`] messages per round, so it cannot starve
//! the others.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::mem;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use ipc_channel::platform::OsIpcSender;
use ipc_channel::{IpcError, TryRecvError};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use serde_bytes::ByteBuf;

use super::broker::{SegAnnounce, SharedSegment};
use super::frame::{self, Frame};
use super::{io_err, TransportError};

/// Messages read from one channel per round, at most.
pub(crate) const MAX_PER_ROUND: usize = 64;

/// The header ipc-channel puts before every message: this fragment's size (header
/// included) and the whole message's size (header excluded), native `usize`s.
const IPC_HEADER: usize = 2 * mem::size_of::<usize>();

/// Which channel an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Token {
    /// The poller's own wake-up channel.
    Wake,
    /// A producer's descriptors.
    ProducerData(u64),
    /// A producer's segment announcements.
    ProducerCtrl(u64),
    /// A subscriber's releases.
    SubscriberReleases(u64),
}

impl Token {
    /// The client this channel belongs to (none for the wake-up channel).
    fn client(self) -> Option<u64> {
        match self {
            Token::Wake => None,
            Token::ProducerData(id) | Token::ProducerCtrl(id) | Token::SubscriberReleases(id) => {
                Some(id)
            }
        }
    }
}

/// What the poller saw.
pub(crate) enum Event {
    /// Someone called [`Waker::wake`].
    Wake,
    /// A frame (descriptors or releases); parse it with [`parse_frame`].
    Frame(Token, Vec<u8>),
    /// A producer announced a segment.
    Segment(Token, u32, SharedSegment),
    /// The channel closed: its peer is gone.
    Closed(Token),
    /// The peer sent something that is not a message of this channel; the poller no
    /// longer reads that channel.
    Malformed(Token, String),
}

/// Reads a frame received by the poller.
pub(crate) fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>, TransportError> {
    Ok(frame::parse(bytes)?)
}

/// Wakes a [`Poller`] from another thread.
#[derive(Clone)]
pub(crate) struct Waker(IpcSender<()>);

impl Waker {
    /// Wakes the poller (it returns [`Event::Wake`]).
    pub(crate) fn wake(&self) {
        let _ = self.0.send(());
    }
}

/// A receiver, typed as its channel is.
enum Rx {
    Wake(IpcReceiver<()>),
    Frames(IpcReceiver<ByteBuf>),
    Segments(IpcReceiver<SegAnnounce>),
}

/// One channel the poller reads.
struct Channel {
    token: Token,
    /// The receiver's socket (owned by `rx`).
    fd: RawFd,
    rx: Rx,
}

/// Every channel the daemon reads for one server.
pub(crate) struct Poller {
    epoll: Epoll,
    channels: HashMap<u64, Channel>,
    next_key: u64,
    ready: Vec<EpollEvent>,
    /// Longest message ipc-channel reads in one piece.
    max_message: usize,
}

impl Poller {
    /// A new poller and its waker.
    pub(crate) fn new() -> Result<(Poller, Waker), TransportError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| io_err("creating an epoll set")(e.into()))?;
        let mut poller = Poller {
            epoll,
            channels: HashMap::new(),
            next_key: 0,
            ready: vec![EpollEvent::empty(); 64],
            max_message: IPC_HEADER + OsIpcSender::get_max_fragment_size(),
        };
        let (tx, rx) = ipc::channel::<()>().map_err(io_err("creating a channel"))?;
        let fd = receiver_fd(&rx)?;
        poller.insert(Token::Wake, fd, Rx::Wake(rx))?;
        Ok((poller, Waker(tx)))
    }

    /// Reads `rx` (a producer's or subscriber's frames) as `token`.
    pub(crate) fn add_frames(
        &mut self,
        rx: IpcReceiver<ByteBuf>,
        token: Token,
    ) -> Result<(), TransportError> {
        let fd = receiver_fd(&rx)?;
        self.insert(token, fd, Rx::Frames(rx))
    }

    /// Reads `rx` (a producer's segment announcements) as `token`.
    pub(super) fn add_segments(
        &mut self,
        rx: IpcReceiver<SegAnnounce>,
        token: Token,
    ) -> Result<(), TransportError> {
        let fd = receiver_fd(&rx)?;
        self.insert(token, fd, Rx::Segments(rx))
    }

    fn insert(&mut self, token: Token, fd: RawFd, rx: Rx) -> Result<(), TransportError> {
        let key = self.next_key;
        self.next_key += 1;
        // SAFETY: `fd` is the socket owned by `rx`, which is kept in `channels` for as
        // long as the descriptor is registered (see `remove`).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        self.epoll
            .add(borrowed, EpollEvent::new(EpollFlags::EPOLLIN, key))
            .map_err(|e| io_err("adding to an epoll set")(e.into()))?;
        self.channels.insert(key, Channel { token, fd, rx });
        Ok(())
    }

    fn remove(&mut self, key: u64) -> Option<Token> {
        let channel = self.channels.remove(&key)?;
        // SAFETY: `channel.rx` still owns the descriptor; it is closed after this, when
        // `channel` drops.
        let borrowed = unsafe { BorrowedFd::borrow_raw(channel.fd) };
        let _ = self.epoll.delete(borrowed);
        Some(channel.token)
    }

    /// Stops reading every channel of `client` (closing them: its writes then fail).
    pub(crate) fn forget(&mut self, client: u64) {
        let keys: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.token.client() == Some(client))
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Waits up to `timeout` and appends what happened to `out`.
    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        out: &mut Vec<Event>,
    ) -> Result<(), TransportError> {
        let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
        let n = match self.epoll.wait(&mut self.ready, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(io_err("waiting for clients")(e.into())),
        };
        for i in 0..n {
            let key = self.ready[i].data();
            self.read(key, out);
        }
        Ok(())
    }

    /// Reads what channel `key` has, up to [`MAX_PER_ROUND`] messages.
    fn read(&mut self, key: u64, out: &mut Vec<Event>) {
        for _ in 0..MAX_PER_ROUND {
            let Some(channel) = self.channels.get(&key) else {
                return;
            };
            let token = channel.token;
            let memory = matches!(channel.rx, Rx::Segments(_));
            match peek(channel.fd, memory, self.max_message) {
                Peek::Empty => return,
                Peek::Closed => {
                    self.remove(key);
                    return out.push(Event::Closed(token));
                }
                Peek::Unsound(why) => {
                    self.remove(key);
                    return out.push(Event::Malformed(token, why));
                }
                Peek::Sound => {}
            }
            let event = match &channel.rx {
                Rx::Wake(rx) => rx.try_recv().map(|()| Event::Wake),
                Rx::Frames(rx) => rx
                    .try_recv()
                    .map(|bytes| Event::Frame(token, bytes.into_vec())),
                Rx::Segments(rx) => rx.try_recv().map(|SegAnnounce { id, shm }| {
                    Event::Segment(token, id, SharedSegment(Arc::new(shm)))
                }),
            };
            match event {
                Ok(event) => out.push(event),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::IpcError(IpcError::Disconnected)) => {
                    self.remove(key);
                    return out.push(Event::Closed(token));
                }
                Err(TryRecvError::IpcError(e)) => {
                    self.remove(key);
                    return out.push(Event::Malformed(token, e.to_string()));
                }
            }
        }
    }
}

/// The socket under an ipc-channel receiver.
///
/// ipc-channel keeps it private, but shows it in its `Debug` form
/// (`IpcReceiver { os_receiver: OsIpcReceiver { fd: Cell { value: 7 } }, .. }`). The
/// number read there is used only if it is a sequenced-packet socket, and a unit test
/// checks that it is the receiver's own; should a later ipc-channel show it otherwise,
/// every client is refused with this error rather than read unchecked.
fn receiver_fd<T: Debug>(rx: &IpcReceiver<T>) -> Result<RawFd, TransportError> {
    let shown = format!("{rx:?}");
    let unknown = || TransportError::Io {
        what: "finding a receiver's socket",
        source: io::Error::other(format!("ipc-channel shows a receiver as {shown}")),
    };
    const MARK: &str = "fd: Cell { value: ";
    let at = shown.find(MARK).ok_or_else(unknown)? + MARK.len();
    let digits = shown[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("");
    let fd: RawFd = digits.parse().map_err(|_| unknown())?;
    // SAFETY: only inspected while `rx`, which owns the descriptor if the number is
    // right, is borrowed by this call; a wrong number is at worst another open file.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Ok(fd),
        _ => Err(unknown()),
    }
}

/// What a look at the next message of a socket found.
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    /// Nothing to read now.
    Empty,
    /// The peer hung up (an empty message reads the same to ipc-channel).
    Closed,
    /// A message ipc-channel reads in one piece, carrying what its channel allows.
    Sound,
    /// A message that must not reach ipc-channel's reader, and why.
    Unsound(String),
}

/// Looks at the next message on `fd` without taking it off the socket.
///
/// A sound message is one fragment of at most `max_len` bytes whose two header fields
/// agree with its real length, and carries one descriptor of shared memory if `memory`
/// (a segment announcement), none otherwise.
fn peek(fd: RawFd, memory: bool, max_len: usize) -> Peek {
    let mut head = [0usize; 2];
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: mem::size_of_val(&head),
    };
    // Room for one descriptor, aligned for a cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if memory {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<libc::c_int>() as u32) } as _;
    }
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    let len = loop {
        // SAFETY: `msg` points at `iov`, `head` and `control`, all alive and of the sizes
        // it states; MSG_TRUNC makes the result the message's length, not what was copied.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Peek::Empty,
            _ => return Peek::Closed,
        }
    };
    // A peek installs copies of the attached descriptors that fit: look, then close them
    // (when they drop).
    let attached = if memory { attached(&msg) } else { Vec::new() };
    if len == 0 {
        return Peek::Closed;
    }
    let unsound =
        |why: String| Peek::Unsound(format!("sent what ipc-channel cannot read safely: {why}"));
    if len < IPC_HEADER {
        return unsound(format!("a message of {len} bytes"));
    }
    if len > max_len {
        return unsound(format!("a message of {len} bytes, over {max_len}"));
    }
    if head[0] != len || head[1] != len - IPC_HEADER {
        return unsound(format!(
            "a message of {len} bytes whose header claims {} and {}",
            head[0], head[1]
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return unsound(if memory {
            "more than one descriptor attached to an announcement".to_owned()
        } else {
            "descriptors attached where none belong".to_owned()
        });
    }
    if !memory {
        return Peek::Sound;
    }
    match attached.as_slice() {
        [] => unsound("an announcement without its memory".to_owned()),
        [fd] => {
            let regular = nix::sys::stat::fstat(fd)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
            if regular {
                Peek::Sound
            } else {
                unsound("a descriptor that is not shared memory".to_owned())
            }
        }
        _ => unsound("more than one descriptor attached to an announcement".to_owned()),
    }
}

/// The descriptors a peek installed into `msg`'s control buffer, now owned.
fn attached(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros stay within msg_controllen,
    // and each descriptor read from an SCM_RIGHTS message was installed for this process
    // by that call and is owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;

    use ipc_channel::ipc::IpcSharedMemory;
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag,
    };

    const MAX: usize = 1 << 16;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    /// Writes `bytes` with `fds` attached straight onto `fd`, as a hostile client would.
    fn write_raw(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
        let iov = [io::IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    /// `body` framed as ipc-channel frames a message sent in one piece.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(IPC_HEADER + body.len()).to_ne_bytes());
        m.extend_from_slice(&body.len().to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    /// How many descriptors of this process refer to the same file as `fd` (other tests
    /// running meanwhile open files of their own, never these).
    fn copies_of(fd: &impl AsFd) -> usize {
        let target = nix::sys::stat::fstat(fd).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .filter(|m| m.dev() == target.st_dev && m.ino() == target.st_ino)
            .count()
    }

    fn unsound(p: Peek) -> String {
        match p {
            Peek::Unsound(why) => why,
            other => panic!("expected unsound, got {other:?}"),
        }
    }

    #[test]
    fn the_socket_found_is_the_receivers_own() {
        let (tx, rx) = ipc::channel::<ByteBuf>().unwrap();
        let fd = receiver_fd(&rx).unwrap();
        assert_eq!(peek(fd, false, MAX), Peek::Empty);
        tx.send(ByteBuf::from(vec![1, 2, 3])).unwrap();
        assert_eq!(peek(fd, false, MAX), Peek::Sound);
        assert_eq!(rx.try_recv().unwrap().into_vec(), vec![1, 2, 3]);
        assert_eq!(peek(fd, false, MAX), Peek::Empty);
        drop(tx);
        assert_eq!(peek(fd, false, MAX), Peek::Closed);
    }

    #[test]
    fn messages_that_lie_about_their_framing_are_unsound() {
        let (a, b) = pair();
        let b = b.as_raw_fd();
        write_raw(&a, &framed(b"fine"), &[]);
        assert_eq!(peek(b, false, MAX), Peek::Sound);
        // A peek leaves the message there.
        assert_eq!(peek(b, false, MAX), Peek::Sound);
        let mut buf = [0u8; 64];
        nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();

        let cases: [(&str, Vec<u8>); 4] = [
            ("shorter than the header", b"garbage".to_vec()),
            ("total beyond the fragment", {
                let mut m = framed(b"garbage!");
                m[8..16].copy_from_slice(&1000usize.to_ne_bytes());
                m
            }),
            ("fragment beyond the message", {
                let mut m = framed(b"garbage!");
                m[0..8].copy_from_slice(&4096usize.to_ne_bytes());
                m
            }),
            ("a huge total", {
                let mut m = framed(b"garbage!");
                m[8..16].copy_from_slice(&(1usize << 60).to_ne_bytes());
                m
            }),
        ];
        for (what, bytes) in cases {
            write_raw(&a, &bytes, &[]);
            let why = unsound(peek(b, false, MAX));
            assert!(
                why.contains("header") || why.contains("bytes"),
                "{what}: {why}"
            );
            nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        }
        write_raw(&a, &framed(&[0; 100]), &[]);
        assert!(unsound(peek(b, false, 64)).contains("over 64"));
        nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        write_raw(&a, &[], &[]);
        assert_eq!(peek(b, false, MAX), Peek::Closed, "an empty message");
    }

    #[test]
    fn descriptors_are_allowed_only_as_one_segment_of_memory() {
        let (a, b) = pair();
        let b = b.as_raw_fd();
        let mut buf = [0u8; 64];
        let (extra, _keep) = pair();
        let memfd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();

        write_raw(&a, &framed(b"x"), &[extra.as_raw_fd()]);
        assert!(unsound(peek(b, false, MAX)).contains("none belong"));
        assert_eq!(copies_of(&extra), 1, "a peek without room installs nothing");
        nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();

        write_raw(&a, &framed(b"x"), &[extra.as_raw_fd()]);
        assert!(unsound(peek(b, true, MAX)).contains("not shared memory"));
        assert_eq!(copies_of(&extra), 1, "the peeked copy is closed");
        nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();

        write_raw(&a, &framed(b"x"), &[]);
        assert!(unsound(peek(b, true, MAX)).contains("without its memory"));
        nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();

        for n in [2, 3, 10] {
            let fds = vec![memfd.as_raw_fd(); n];
            write_raw(&a, &framed(b"x"), &fds);
            assert!(unsound(peek(b, true, MAX)).contains("more than one"), "{n}");
            assert_eq!(copies_of(&memfd), 1, "{n}: the peeked copies are closed");
            nix::sys::socket::recv(b, &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        }

        // What ipc-channel itself sends with a shared memory region is sound.
        let (tx, rx) = ipc::channel::<IpcSharedMemory>().unwrap();
        let fd = receiver_fd(&rx).unwrap();
        tx.send(IpcSharedMemory::from_bytes(&[7; 4096])).unwrap();
        assert_eq!(peek(fd, true, MAX), Peek::Sound);
        assert_eq!(rx.try_recv().unwrap()[..], [7; 4096][..]);
    }
}
