//! The broker's channels: bootstrap, the daemon's poller, and the four channel ends.
//!
//! # Bootstrap
//!
//! A client creates its own one-shot server inside the server's spool directory
//! ([`listen_in`]) and drops a request naming it there (`crate::broker::spool`); the
//! daemon validates the request, connects ([`connect_pending`]) and, once the client is
//! registered, sends the welcome that carries every channel the client needs. The daemon
//! never waits on a client; a client waits for its welcome with a timeout.
//!
//! # Channels
//!
//! ```text
//! producer --data (descriptors)--------> daemon --data (descriptors)--------> subscriber
//! producer --ctrl (segments, typed)----> daemon --ctrl (segments, typed)----> subscriber
//! producer <--back (releases, notices)-- daemon <--releases------------------ subscriber
//! ```
//!
//! The daemon reads every channel of a server from one [`Poller`] (which checks each
//! message before ipc-channel reads it), with typed receivers; writers send raw frames in an envelope that makes them a valid encoding of
//! a byte buffer (see [`super::frame`]). A channel is made raw at one end and typed at the
//! other by declaring it so in the two views of the welcome ([`WelcomeOut`] is what the
//! daemon serializes, [`WelcomeIn`] what the client deserializes): both encode a channel
//! as the same index into the message's file descriptors.

use std::io;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
    IpcSharedMemory,
};
use ipc_channel::{IpcError, TryRecvError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::frame::{self, Desc, Frame, FrameBuf, NoticeCode};
pub(crate) use super::poller::{parse_frame, Event, Poller, Token, Waker};
use super::shm::{Lease, PoolLimits, Releases, SegmentPool, SegmentTable};
use super::{io_err, ipc_err, send_err, TransportError};
use crate::batch;
use crate::packet::AsIpcPacket;

/// Version of the broker protocol; a welcome of another version is refused.
const PROTOCOL: u32 = 1;

/// What a client learns of its server in the welcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireInfo {
    /// The server's name.
    pub name: String,
    /// pcap link type of its packets.
    pub linktype: u32,
    /// Longest captured length.
    pub snaplen: u32,
    /// Largest batch a producer may send, in bytes.
    pub max_batch_bytes: u64,
}

/// A shared-memory segment announced on a control channel.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SegAnnounce {
    pub(super) id: u32,
    pub(super) shm: IpcSharedMemory,
}

/// The welcome as the daemon writes it.
#[derive(Serialize, Deserialize)]
enum WelcomeOut {
    Subscriber {
        version: u32,
        id: u64,
        info: WireInfo,
        data: IpcBytesReceiver,
        ctrl: IpcReceiver<SegAnnounce>,
        releases: IpcSender<ByteBuf>,
    },
    Producer {
        version: u32,
        id: u64,
        info: WireInfo,
        segments: u32,
        data: IpcSender<ByteBuf>,
        ctrl: IpcSender<SegAnnounce>,
        back: IpcBytesReceiver,
    },
    Refused(String),
    /// Sent by a client to its own one-shot server to stop waiting.
    Abort,
    /// The answer to a control request: the daemon's counters, as JSON.
    Stats(String),
}

/// The welcome as a client reads it: the same layout, the punned channels typed for this
/// end (see the module docs).
#[derive(Serialize, Deserialize)]
enum WelcomeIn {
    Subscriber {
        version: u32,
        id: u64,
        info: WireInfo,
        data: IpcReceiver<ByteBuf>,
        ctrl: IpcReceiver<SegAnnounce>,
        releases: IpcBytesSender,
    },
    Producer {
        version: u32,
        id: u64,
        info: WireInfo,
        segments: u32,
        data: IpcBytesSender,
        ctrl: IpcSender<SegAnnounce>,
        back: IpcReceiver<ByteBuf>,
    },
    Refused(String),
    Abort,
    Stats(String),
}

/// Testing only: sends `bytes` on `tx` as they are, or inside the envelope.
fn send_raw(
    frame: &mut FrameBuf,
    tx: &IpcBytesSender,
    bytes: &[u8],
    sealed: bool,
) -> Result<(), TransportError> {
    frame.start().extend_from_slice(bytes);
    let msg = if sealed {
        frame.sealed()
    } else {
        frame.plain()
    };
    tx.send(msg).map_err(send_err)
}

fn bad_frame(kind: u8) -> TransportError {
    frame::FrameError::Unexpected(kind).into()
}

// ---------------------------------------------------------------------------------------
// Client side: bootstrap.

/// Serializes the processes' changes of `TMPDIR` (see [`listen_in`]).
static TMPDIR_LOCK: Mutex<()> = Mutex::new(());

/// A one-shot server inside a spool directory, waiting for the daemon's welcome.
pub(crate) struct Awaiting {
    name: String,
    welcome: mpsc::Receiver<Result<WelcomeIn, IpcError>>,
}

/// Creates a one-shot server whose socket lies in `dir` (a fresh `.tmpXXXXXX` directory
/// in it), so that a daemon with a private `/tmp` can reach it.
///
/// ipc-channel places one-shot sockets under `$TMPDIR`; it is pointed at `dir` for the
/// moment of creation, under a lock that serializes this crate's own connections. (A
/// program that reads `TMPDIR` from another thread at that very moment may see `dir`.)
pub(crate) fn listen_in(dir: &Path) -> Result<Awaiting, TransportError> {
    // ipc-channel panics (an assertion on the error kind) when it cannot create its
    // directory, so find out first whether we may, and contain a panic all the same.
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| TransportError::Protocol("spool path contains a NUL byte".into()))?;
    // SAFETY: `path` is a valid NUL-terminated string; access only reads it.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(io_err("creating the bootstrap socket")(
            io::Error::last_os_error(),
        ));
    }
    let (server, name) = {
        let _guard = TMPDIR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let saved = std::env::var_os("TMPDIR");
        // SAFETY (of intent; the call itself is safe in edition 2021): see above.
        std::env::set_var("TMPDIR", dir);
        let made = std::panic::catch_unwind(IpcOneShotServer::<WelcomeIn>::new);
        match saved {
            Some(v) => std::env::set_var("TMPDIR", v),
            None => std::env::remove_var("TMPDIR"),
        }
        match made {
            Ok(made) => made.map_err(io_err("creating the bootstrap socket"))?,
            Err(_) => {
                return Err(TransportError::Protocol(format!(
                    "ipc-channel failed to create a socket in {}",
                    dir.display()
                )))
            }
        }
    };
    // The daemon may run as another user: let it through the directory and into the
    // socket. The spool directory's own mode keeps everyone else out.
    let socket = Path::new(&name);
    if let Some(parent) = socket.parent() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("opening the bootstrap directory to the daemon"))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o777))
            .map_err(io_err("opening the bootstrap socket to the daemon"))?;
    }
    let (tx, welcome) = mpsc::channel();
    thread::Builder::new()
        .name("packet-ipc-bootstrap".into())
        .spawn(move || {
            let _ = tx.send(server.accept().map(|(_, w)| w));
        })
        .map_err(io_err("starting the bootstrap thread"))?;
    Ok(Awaiting { name, welcome })
}

/// Why a bootstrap did not give a connection.
#[derive(Debug)]
pub(crate) enum BootstrapError {
    /// No welcome within the timeout.
    NoAnswer,
    /// The daemon refused, saying why.
    Refused(String),
    /// The welcome was not of the expected kind or version, or the link failed.
    Transport(TransportError),
}

impl From<TransportError> for BootstrapError {
    fn from(e: TransportError) -> Self {
        BootstrapError::Transport(e)
    }
}

impl Awaiting {
    /// The socket path to name in the request.
    pub(crate) fn socket(&self) -> &str {
        &self.name
    }

    fn wait(self, timeout: Duration) -> Result<WelcomeIn, BootstrapError> {
        let got = match self.welcome.recv_timeout(timeout) {
            Ok(got) => got,
            Err(_) => {
                // Unblock our own accept: connect and say we give up. If the daemon's
                // welcome won the race, take it after all.
                if let Ok(tx) = IpcSender::<WelcomeIn>::connect(self.name.clone()) {
                    let _ = tx.send(WelcomeIn::Abort);
                }
                self.welcome
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| BootstrapError::NoAnswer)?
            }
        };
        match got {
            Ok(WelcomeIn::Abort) => Err(BootstrapError::NoAnswer),
            Ok(WelcomeIn::Refused(why)) => Err(BootstrapError::Refused(why)),
            Ok(w) => Ok(w),
            Err(e) => Err(ipc_err("receiving the welcome", e).into()),
        }
    }

    /// Waits for the answer to a control request.
    pub(crate) fn stats(self, timeout: Duration) -> Result<String, BootstrapError> {
        match self.wait(timeout)? {
            WelcomeIn::Stats(json) => Ok(json),
            _ => Err(TransportError::Protocol("expected a stats answer".into()).into()),
        }
    }

    /// Waits for a producer's welcome.
    pub(crate) fn producer(self, timeout: Duration) -> Result<ProducerConn, BootstrapError> {
        match self.wait(timeout)? {
            WelcomeIn::Producer {
                version: PROTOCOL,
                id,
                info,
                segments,
                data,
                ctrl,
                back,
            } => Ok(ProducerConn {
                id,
                pool: SegmentPool::new(PoolLimits {
                    max_segments: segments.max(1) as usize,
                    max_bytes: usize::MAX,
                }),
                info,
                data,
                ctrl,
                back,
                frame: FrameBuf::default(),
                descs: Vec::with_capacity(1),
                seq: 0,
                since_drain: 0,
            }),
            _ => Err(TransportError::Protocol("expected a producer welcome".into()).into()),
        }
    }

    /// Waits for a subscriber's welcome.
    pub(crate) fn subscriber(self, timeout: Duration) -> Result<SubscriberConn, BootstrapError> {
        match self.wait(timeout)? {
            WelcomeIn::Subscriber {
                version: PROTOCOL,
                id,
                info,
                data,
                ctrl,
                releases,
            } => Ok(SubscriberConn {
                id,
                info,
                data,
                ctrl,
                release_tx: releases,
                table: SegmentTable::default(),
                releases: Arc::new(Releases::default()),
                frame: FrameBuf::default(),
                pending: std::collections::VecDeque::new(),
            }),
            _ => Err(TransportError::Protocol("expected a subscriber welcome".into()).into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client side: connections.

/// A producer's connection to the daemon.
pub(crate) struct ProducerConn {
    /// The id the daemon gave this producer.
    pub id: u64,
    /// The server.
    pub info: WireInfo,
    data: IpcBytesSender,
    ctrl: IpcSender<SegAnnounce>,
    back: IpcReceiver<ByteBuf>,
    pool: SegmentPool,
    frame: FrameBuf,
    descs: Vec<Desc>,
    seq: u64,
    /// Batches sent since the back channel was last read.
    since_drain: u32,
}

/// A producer reads its back channel at least every this many batches.
const DRAIN_EVERY: u32 = 8;

/// Something the daemon told a producer.
#[derive(Debug)]
pub(crate) enum ProducerNotice {
    /// The daemon is stopping.
    Stopping,
    /// The server is gone.
    ServerGone,
    /// The daemon cut this producer off or refused a batch.
    Refused(String),
}

impl ProducerConn {
    /// Testing only: sends `bytes` as they are on the data channel (`sealed`: inside the
    /// envelope, so that they reach the daemon's frame parser).
    pub(crate) fn raw_frame(&mut self, bytes: &[u8], sealed: bool) -> Result<(), TransportError> {
        send_raw(&mut self.frame, &self.data, bytes, sealed)
    }

    /// Testing only: writes `bytes` into a segment and sends a descriptor that claims
    /// `claimed_len` bytes.
    pub(crate) fn raw_batch(
        &mut self,
        bytes: &[u8],
        claimed_len: u32,
    ) -> Result<(), TransportError> {
        let Some(seg) = self.pool.acquire(bytes.len().max(claimed_len as usize)) else {
            return Err(TransportError::Protocol("no free segment".into()));
        };
        seg.buf[..bytes.len()].copy_from_slice(bytes);
        let (id, announce) = (seg.id, seg.announce);
        self.publish(id, announce, claimed_len)
    }

    /// Testing only: announces `n` fresh segments of one page, each carrying a file
    /// descriptor, with ids counting up from `first`.
    pub(crate) fn announce_flood(&mut self, first: u32, n: u32) -> Result<(), TransportError> {
        for id in first..first + n {
            self.ctrl
                .send(SegAnnounce {
                    id,
                    shm: IpcSharedMemory::from_byte(0, 4096),
                })
                .map_err(|e| ipc_err("announcing a segment", e))?;
        }
        Ok(())
    }

    /// Testing only: true once the daemon has said this producer is cut off.
    pub(crate) fn cut_off(&mut self) -> Result<Option<String>, TransportError> {
        match self.drain_back(false)? {
            Some(ProducerNotice::Refused(why)) => Ok(Some(why)),
            _ => Ok(None),
        }
    }

    /// Writes the batch into a free segment (each packet cut to the server's snaplen) and
    /// sends its descriptor. When every segment
    /// is held by subscribers, waits for one to come back (that is how `block` paces the
    /// producer). A notice from the daemon is returned instead of sending.
    pub(crate) fn send<T: AsIpcPacket>(
        &mut self,
        packets: &[T],
    ) -> Result<Option<ProducerNotice>, TransportError> {
        // What the daemon sent back is read every few batches, or when no segment is free:
        // ipc-channel's non-blocking receive costs three system calls.
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY {
            self.since_drain = 0;
            if let Some(notice) = self.drain_back(false)? {
                return Ok(Some(notice));
            }
        }
        let snaplen = self.info.snaplen as usize;
        let len = batch::encoded_len_cut(packets, snaplen);
        while !self.pool.can_acquire(len) {
            if let Some(notice) = self.drain_back(true)? {
                return Ok(Some(notice));
            }
        }
        let Some(seg) = self.pool.acquire(len) else {
            return Err(TransportError::Protocol("segment pool inconsistent".into()));
        };
        let written = batch::encode_into_cut(packets, self.seq, 0, seg.buf, snaplen)?;
        let (id, announce) = (seg.id, seg.announce);
        if let Err(e) = self.publish(id, announce, written as u32) {
            // The daemon may have said why before it went: that is the better answer.
            if let Ok(Some(notice)) = self.drain_back(false) {
                return Ok(Some(notice));
            }
            return Err(e);
        }
        self.seq += 1;
        Ok(None)
    }

    /// Sends the daemon the descriptor of the batch now in segment `id`, after the
    /// segment itself when it is new to the daemon.
    fn publish(
        &mut self,
        id: u32,
        announce: Option<IpcSharedMemory>,
        len: u32,
    ) -> Result<(), TransportError> {
        let fresh = announce.is_some();
        if let Some(shm) = announce {
            self.ctrl
                .send(SegAnnounce { id, shm })
                .map_err(|e| ipc_err("announcing a segment", e))?;
        }
        self.descs.clear();
        self.descs.push(Desc {
            seg: id,
            len,
            seq: self.seq,
            lost: 0,
            fresh,
        });
        frame::push_descs(self.frame.start(), &self.descs);
        self.data.send(self.frame.sealed()).map_err(send_err)
    }

    /// Reads what the daemon sent back: releases go to the pool, a notice is returned.
    /// With `block`, waits for at least one message.
    fn drain_back(&mut self, block: bool) -> Result<Option<ProducerNotice>, TransportError> {
        let mut block = block;
        loop {
            let msg = if block {
                block = false;
                self.back
                    .recv()
                    .map_err(|e| ipc_err("reading releases", e))?
            } else {
                match self.back.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty) => return Ok(None),
                    Err(TryRecvError::IpcError(e)) => return Err(ipc_err("reading releases", e)),
                }
            };
            match frame::parse(&msg)? {
                Frame::Releases(ids) => {
                    for id in ids {
                        self.pool.release(id);
                    }
                }
                Frame::Notice(code, text) => {
                    return Ok(Some(match code {
                        NoticeCode::Stopping => ProducerNotice::Stopping,
                        NoticeCode::ServerGone => ProducerNotice::ServerGone,
                        _ => ProducerNotice::Refused(text.to_owned()),
                    }));
                }
                other => return Err(bad_frame(other.kind())),
            }
        }
    }
}

/// What a subscriber receives.
pub(crate) enum SubEvent {
    /// A batch and its descriptor.
    Batch(Lease, Desc),
    /// Something the daemon must tell it.
    Notice(NoticeCode, String),
    /// Nothing within the timeout.
    Timeout,
}

/// A subscriber's connection to the daemon.
pub(crate) struct SubscriberConn {
    /// The id the daemon gave this subscriber.
    pub id: u64,
    /// The server.
    pub info: WireInfo,
    data: IpcReceiver<ByteBuf>,
    ctrl: IpcReceiver<SegAnnounce>,
    release_tx: IpcBytesSender,
    table: SegmentTable,
    releases: Arc<Releases>,
    frame: FrameBuf,
    /// Descriptors of a received frame not handed out yet.
    pending: std::collections::VecDeque<Desc>,
}

impl SubscriberConn {
    /// The next batch or notice; `None` waits without limit.
    ///
    /// Releases are sent in one message when this would otherwise wait, or once half of
    /// the daemon's credit window is waiting to go back: one message per several batches
    /// when they come fast, and never a stall for want of credit.
    pub(crate) fn next(&mut self, timeout: Option<Duration>) -> Result<SubEvent, TransportError> {
        if self.releases.len() >= super::CREDIT_WINDOW / 2 {
            self.flush_releases()?;
        }
        loop {
            if let Some(d) = self.pending.pop_front() {
                if d.fresh {
                    self.wait_announcement(d.seg)?;
                }
                let lease = self.table.lease(&d, &self.releases)?;
                return Ok(SubEvent::Batch(lease, d));
            }
            let msg = match self.data.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    self.flush_releases()?;
                    match timeout {
                        None => super::retry(|| self.data.recv())
                            .map_err(|e| ipc_err("receiving", e))?,
                        Some(t) => match super::retry_timeout(t, |left| {
                            self.data.try_recv_timeout(left)
                        }) {
                            Ok(msg) => msg,
                            Err(TryRecvError::Empty) => return Ok(SubEvent::Timeout),
                            Err(TryRecvError::IpcError(e)) => return Err(ipc_err("receiving", e)),
                        },
                    }
                }
                Err(TryRecvError::IpcError(e)) => return Err(ipc_err("receiving", e)),
            };
            match frame::parse(&msg)? {
                Frame::Descs(descs) => self.pending.extend(descs),
                Frame::Notice(code, text) => return Ok(SubEvent::Notice(code, text.to_owned())),
                other => return Err(bad_frame(other.kind())),
            }
        }
    }

    /// Testing only: sends `bytes` as they are on the release channel (`sealed`: inside
    /// the envelope, so that they reach the daemon's frame parser).
    pub(crate) fn raw_release(&mut self, bytes: &[u8], sealed: bool) -> Result<(), TransportError> {
        send_raw(&mut self.frame, &self.release_tx, bytes, sealed)
    }

    /// Sends the daemon every segment released since the last call.
    pub(crate) fn flush_releases(&mut self) -> Result<(), TransportError> {
        if self.releases.take_into(self.frame.start()) {
            self.release_tx
                .send(self.frame.sealed())
                .map_err(send_err)?;
        }
        Ok(())
    }

    fn wait_announcement(&mut self, seg: u32) -> Result<(), TransportError> {
        loop {
            match super::retry_timeout(Duration::from_secs(5), |left| {
                self.ctrl.try_recv_timeout(left)
            }) {
                Ok(SegAnnounce { id, shm }) => {
                    self.table.insert(id, shm)?;
                    if id == seg {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => {
                    return Err(super::shm::SegmentError::Unknown(seg).into())
                }
                Err(TryRecvError::IpcError(e)) => {
                    return Err(ipc_err("reading a segment announcement", e))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Daemon side.

/// A client the daemon has connected to, waiting for its welcome.
pub(crate) struct Pending {
    tx: IpcSender<WelcomeOut>,
}

/// Connects to the one-shot server a client named in its request. Never waits on the
/// client: the socket is listening (or refuses at once) and the welcome is small.
pub(crate) fn connect_pending(socket: &Path) -> Result<Pending, TransportError> {
    let name = socket.to_string_lossy().into_owned();
    let tx = IpcSender::connect(name.clone())
        .map_err(|source| TransportError::Connect { name, source })?;
    Ok(Pending { tx })
}

/// A shared-memory segment received from a producer, as the daemon holds it.
#[derive(Clone)]
pub(crate) struct SharedSegment(pub(super) Arc<IpcSharedMemory>);

impl SharedSegment {
    /// The segment's bytes (the daemon reads batch headers only).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The daemon's end of a subscriber.
pub(crate) struct SubscriberEnd {
    data: IpcBytesSender,
    ctrl: IpcSender<SegAnnounce>,
    frame: FrameBuf,
}

/// The daemon's end of a producer.
pub(crate) struct ProducerEnd {
    back: IpcBytesSender,
    frame: FrameBuf,
}

impl Pending {
    /// Registers a subscriber's channels with the poller and welcomes it.
    pub(crate) fn accept_subscriber(
        self,
        id: u64,
        info: &WireInfo,
        poller: &mut Poller,
    ) -> Result<SubscriberEnd, TransportError> {
        let (data_tx, data_rx) = ipc::bytes_channel().map_err(io_err("creating a channel"))?;
        let (ctrl_tx, ctrl_rx) = ipc::channel().map_err(io_err("creating a channel"))?;
        let (rel_tx, rel_rx) = ipc::channel::<ByteBuf>().map_err(io_err("creating a channel"))?;
        poller.add_frames(rel_rx, Token::SubscriberReleases(id))?;
        self.tx
            .send(WelcomeOut::Subscriber {
                version: PROTOCOL,
                id,
                info: info.clone(),
                data: data_rx,
                ctrl: ctrl_rx,
                releases: rel_tx,
            })
            .map_err(|e| ipc_err("welcoming a subscriber", e))?;
        Ok(SubscriberEnd {
            data: data_tx,
            ctrl: ctrl_tx,
            frame: FrameBuf::default(),
        })
    }

    /// Registers a producer's channels with the poller and welcomes it; it may keep
    /// `segments` shared-memory segments.
    pub(crate) fn accept_producer(
        self,
        id: u64,
        info: &WireInfo,
        segments: u32,
        poller: &mut Poller,
    ) -> Result<ProducerEnd, TransportError> {
        let (data_tx, data_rx) = ipc::channel::<ByteBuf>().map_err(io_err("creating a channel"))?;
        let (ctrl_tx, ctrl_rx) = ipc::channel().map_err(io_err("creating a channel"))?;
        let (back_tx, back_rx) = ipc::bytes_channel().map_err(io_err("creating a channel"))?;
        poller.add_frames(data_rx, Token::ProducerData(id))?;
        poller.add_segments(ctrl_rx, Token::ProducerCtrl(id))?;
        self.tx
            .send(WelcomeOut::Producer {
                version: PROTOCOL,
                id,
                info: info.clone(),
                segments,
                data: data_tx,
                ctrl: ctrl_tx,
                back: back_rx,
            })
            .map_err(|e| ipc_err("welcoming a producer", e))?;
        Ok(ProducerEnd {
            back: back_tx,
            frame: FrameBuf::default(),
        })
    }

    /// Answers a control request with the daemon's counters (JSON).
    pub(crate) fn send_stats(self, json: String) -> Result<(), TransportError> {
        self.tx
            .send(WelcomeOut::Stats(json))
            .map_err(|e| ipc_err("answering a stats request", e))
    }

    /// Tells the client why it is not let in.
    pub(crate) fn refuse(self, reason: &str) {
        let _ = self.tx.send(WelcomeOut::Refused(reason.to_owned()));
    }
}

impl SubscriberEnd {
    /// Passes a segment to the subscriber (before the first descriptor naming it).
    pub(crate) fn announce(&mut self, id: u32, seg: &SharedSegment) -> Result<(), TransportError> {
        self.ctrl
            .send(SegAnnounce {
                id,
                shm: (*seg.0).clone(),
            })
            .map_err(|e| ipc_err("announcing a segment", e))
    }

    /// Sends descriptors, all in one message.
    pub(crate) fn deliver(&mut self, descs: &[Desc]) -> Result<(), TransportError> {
        frame::push_descs(self.frame.start(), descs);
        self.data.send(self.frame.sealed()).map_err(send_err)
    }

    /// Tells the subscriber something out of band.
    pub(crate) fn notice(&mut self, code: NoticeCode, text: &str) -> Result<(), TransportError> {
        frame::push_notice(self.frame.start(), code, text);
        self.data.send(self.frame.sealed()).map_err(send_err)
    }
}

impl ProducerEnd {
    /// Gives segments back to the producer, all in one message.
    pub(crate) fn release(&mut self, ids: &[u32]) -> Result<(), TransportError> {
        frame::push_releases(self.frame.start(), ids.iter().copied());
        self.back.send(self.frame.sealed()).map_err(send_err)
    }

    /// Tells the producer something out of band.
    pub(crate) fn notice(&mut self, code: NoticeCode, text: &str) -> Result<(), TransportError> {
        frame::push_notice(self.frame.start(), code, text);
        self.back.send(self.frame.sealed()).map_err(send_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enveloped_raw_frame_reads_as_a_typed_byte_buffer() {
        // The daemon's trick, in one process: a raw sender whose receiver is re-typed by
        // travelling through a channel declared with the typed receiver.
        let (carrier_tx, carrier_rx) = ipc::channel::<IpcReceiver<ByteBuf>>().unwrap();
        let carrier_tx: IpcSender<IpcBytesReceiver> = carrier_tx.to_opaque().to();
        let (raw_tx, raw_rx) = ipc::bytes_channel().unwrap();
        carrier_tx.send(raw_rx).unwrap();
        let typed = carrier_rx.recv().unwrap();
        for len in [0usize, 1, 127, 128, 300, 20_000] {
            let mut fb = FrameBuf::default();
            fb.start().extend(std::iter::repeat_n(0xAB, len));
            raw_tx.send(fb.sealed()).unwrap();
            let got = typed.recv().unwrap();
            assert_eq!(got.as_slice(), fb.plain());
        }
    }
}
