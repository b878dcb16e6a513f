//! A one-way link of packet batches between two processes: the point-to-point transport.
//!
//! The reader (the client) creates three channels and connects to the writer's one-shot
//! server with a [`Hello`] carrying their ends: `data` (writer → reader, raw frames),
//! `ctrl` (writer → reader, typed, rare: the welcome and each new shared-memory segment)
//! and `releases` (reader → writer, raw: segments the reader is done with). The writer
//! answers with a welcome on `ctrl`, so a reader whose writer never accepts gets a clear
//! error after its timeout instead of hanging.
//!
//! A batch at most `inline_threshold` bytes long travels inline in its data frame; a
//! larger one is written straight into a reused shared-memory segment and only a
//! descriptor travels (see [`super::shm`]). A reader thread receives frames and hands
//! batches to the consumer through a bounded or unbounded queue, as the original crate did.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
    IpcSharedMemory,
};
use ipc_channel::{IpcError, TryRecvError};
use serde::{Deserialize, Serialize};

use super::frame::{self, Desc, Frame, FrameBuf};
use super::shm::{PoolLimits, Releases, SegmentPool, SegmentTable};
use super::{io_err, ipc_err, send_err, TransportError};
use crate::batch::{self, Header};
use crate::packet::{AsIpcPacket, BatchStorage};

/// Version of the link protocol; a peer speaking another is refused.
const PROTOCOL: u32 = 1;

/// Batches up to this many bytes travel inline by default. Measured on the 2-core
/// reference machine with `cargo bench --bench point_to_point` (see README, Benchmarks):
/// inline wins below it, a reused segment above it.
pub const DEFAULT_INLINE_THRESHOLD: usize = 2 * 1024;

/// A writer reads the releases at least every this many shared-memory sends, and a
/// bounded reader sends them in groups of this many (or when its queue runs dry).
const RECLAIM_EVERY: u32 = 8;

/// How long a reader waits for a writer's segment announcement that must already be on
/// its way (it is sent before the descriptor that names it).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// What a reader sends to connect.
#[derive(Serialize, Deserialize)]
struct Hello {
    version: u32,
    /// A bounded reader's bound: most segments the writer may have it hold.
    buffer: Option<u32>,
    data: IpcBytesSender,
    ctrl: IpcSender<Ctrl>,
    releases: IpcBytesReceiver,
}

/// Rare, typed messages from writer to reader.
#[derive(Serialize, Deserialize)]
enum Ctrl {
    /// The writer accepted the reader.
    Welcome { version: u32 },
    /// A new segment, or a larger one replacing the segment of that id.
    Segment { id: u32, shm: IpcSharedMemory },
}

/// A writer's listening end: one reader may connect to it.
pub(crate) struct Listener {
    server: IpcOneShotServer<Hello>,
    name: String,
}

/// How a writer sends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriterOptions {
    /// Batches up to this many bytes go inline.
    pub inline_threshold: usize,
    /// Bounds on the shared-memory segments.
    pub pool: PoolLimits,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            pool: PoolLimits::default(),
        }
    }
}

impl Listener {
    /// A new listening end; its socket lives in a fresh directory under `$TMPDIR`.
    pub(crate) fn new() -> Result<Listener, TransportError> {
        let (server, name) = IpcOneShotServer::new().map_err(io_err("creating a server"))?;
        Ok(Listener { server, name })
    }

    /// The name a reader connects to.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a reader, then welcomes it.
    pub(crate) fn accept(self, options: WriterOptions) -> Result<LinkWriter, TransportError> {
        let (_conn, hello) = self
            .server
            .accept()
            .map_err(|e| ipc_err("accepting a connection", e))?;
        if hello.version != PROTOCOL {
            return Err(TransportError::Protocol(format!(
                "client speaks protocol {}, this build speaks {PROTOCOL}",
                hello.version
            )));
        }
        hello
            .ctrl
            .send(Ctrl::Welcome { version: PROTOCOL })
            .map_err(|e| ipc_err("welcoming the client", e))?;
        let mut pool = options.pool;
        if let Some(n) = hello.buffer {
            pool.max_segments = pool.max_segments.min(n.max(1) as usize);
        }
        Ok(LinkWriter {
            data: hello.data,
            ctrl: hello.ctrl,
            releases: hello.releases,
            pool: SegmentPool::new(pool),
            frame: FrameBuf::default(),
            descs: Vec::with_capacity(1),
            seq: 0,
            inline_threshold: options.inline_threshold,
            closed: false,
            since_reclaim: 0,
        })
    }
}

/// The sending end of a link.
pub(crate) struct LinkWriter {
    data: IpcBytesSender,
    ctrl: IpcSender<Ctrl>,
    releases: IpcBytesReceiver,
    pool: SegmentPool,
    /// Reused for every frame, so that sending allocates nothing once warm.
    frame: FrameBuf,
    descs: Vec<Desc>,
    seq: u64,
    inline_threshold: usize,
    closed: bool,
    /// Shared-memory sends since releases were last read.
    since_reclaim: u32,
}

impl LinkWriter {
    /// Sends one batch of packets (nothing for an empty slice).
    pub(crate) fn send<T: AsIpcPacket>(&mut self, packets: &[T]) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        if packets.is_empty() {
            return Ok(());
        }
        let len = batch::encoded_len(packets);
        if len > batch::MAX_BATCH_LEN {
            return Err(batch::BatchError::TooLarge {
                needed: len,
                capacity: batch::MAX_BATCH_LEN,
            }
            .into());
        }
        let seq = self.seq;
        if len > self.inline_threshold && self.send_shared(packets, len, seq)? {
            self.seq += 1;
            return Ok(());
        }
        let buf = self.frame.start();
        frame::push_inline_head(buf);
        batch::encode(packets, seq, 0, buf)?;
        self.data.send(self.frame.plain()).map_err(send_err)?;
        self.seq += 1;
        Ok(())
    }

    /// Writes the batch into a free segment and sends its descriptor; false when no
    /// segment is free (the caller sends inline).
    fn send_shared<T: AsIpcPacket>(
        &mut self,
        packets: &[T],
        len: usize,
        seq: u64,
    ) -> Result<bool, TransportError> {
        // Releases are read every few sends, or when no segment is free: ipc-channel's
        // non-blocking receive costs three system calls, too many to spend on every batch.
        self.since_reclaim += 1;
        if self.since_reclaim >= RECLAIM_EVERY || !self.pool.can_acquire(len) {
            self.since_reclaim = 0;
            self.reclaim()?;
        }
        let Some(seg) = self.pool.acquire(len) else {
            return Ok(false);
        };
        let written = batch::encode_into(packets, seq, 0, seg.buf)?;
        let id = seg.id;
        let fresh = seg.announce.is_some();
        if let Some(shm) = seg.announce {
            self.ctrl
                .send(Ctrl::Segment { id, shm })
                .map_err(|e| ipc_err("announcing a segment", e))?;
        }
        self.descs.clear();
        self.descs.push(Desc {
            seg: id,
            len: written as u32,
            seq,
            lost: 0,
            fresh,
        });
        frame::push_descs(self.frame.start(), &self.descs);
        self.data.send(self.frame.plain()).map_err(send_err)?;
        Ok(true)
    }

    /// Takes back every segment the reader has released so far, without waiting.
    fn reclaim(&mut self) -> Result<(), TransportError> {
        loop {
            match self.releases.try_recv() {
                Ok(msg) => match frame::parse(&msg)? {
                    Frame::Releases(ids) => {
                        for id in ids {
                            self.pool.release(id);
                        }
                    }
                    other => return Err(frame::FrameError::Unexpected(other.kind()).into()),
                },
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::IpcError(IpcError::Disconnected)) => {
                    return Err(TransportError::Disconnected)
                }
                Err(TryRecvError::IpcError(e)) => return Err(ipc_err("reading releases", e)),
            }
        }
    }

    /// Tells the reader the stream is over. Later sends fail.
    pub(crate) fn close(&mut self) -> Result<(), TransportError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        frame::push_end(self.frame.start());
        self.data.send(self.frame.plain()).map_err(send_err)
    }
}

/// What the reader thread hands the consumer.
pub(crate) enum Incoming {
    /// A batch whose header was checked, and that header.
    Batch(Arc<dyn BatchStorage>, Header),
    /// The writer closed the stream.
    End,
    /// The link failed; nothing more will come.
    Failed(TransportError),
}

/// A batch received inline: the message itself, frame head and all.
struct InlineBatch(Vec<u8>);

impl BatchStorage for InlineBatch {
    fn bytes(&self) -> &[u8] {
        self.0.get(frame::HEAD_LEN..).unwrap_or_default()
    }
}

/// Where a reader's batches come from.
enum Source {
    /// A reader thread drains the socket into a queue (unbounded clients: the writer
    /// never waits for the consumer).
    Thread(mpsc::Receiver<Incoming>),
    /// The consumer reads the socket itself (bounded clients: no thread, no hand-off).
    Direct(Box<Direct>),
}

/// The state of a reader without a thread.
struct Direct {
    data: IpcBytesReceiver,
    ctrl: IpcReceiver<Ctrl>,
    table: SegmentTable,
    /// Batches of a received frame not handed out yet.
    pending: std::collections::VecDeque<Incoming>,
    /// Nothing more will come.
    done: bool,
}

/// The consumer's side of a connected reader.
pub(crate) struct LinkReader {
    source: Source,
    /// Releases gathered before they are sent: at most half of what the writer may keep
    /// for this reader, so that the writer always has a segment free.
    release_group: usize,
    releases: Arc<Releases>,
    release_tx: IpcBytesSender,
    release_frame: FrameBuf,
}

impl LinkReader {
    /// Connects to the writer named `name`; fails if it does not welcome us within
    /// `timeout`. With `buffer = Some(n)` the consumer reads the socket itself and the
    /// writer keeps at most `n` batches for it in shared memory (beyond that it sends
    /// inline, and the socket's buffer is the bound); with `None` a reader thread drains
    /// the socket into an unbounded queue.
    pub(crate) fn connect(
        name: &str,
        buffer: Option<usize>,
        timeout: Duration,
    ) -> Result<LinkReader, TransportError> {
        let (data_tx, data_rx) = ipc::bytes_channel().map_err(io_err("creating a channel"))?;
        let (ctrl_tx, ctrl_rx) = ipc::channel::<Ctrl>().map_err(io_err("creating a channel"))?;
        let (release_tx, release_rx) =
            ipc::bytes_channel().map_err(io_err("creating a channel"))?;
        let server = IpcSender::<Hello>::connect(name.to_owned()).map_err(|source| {
            TransportError::Connect {
                name: name.to_owned(),
                source,
            }
        })?;
        server
            .send(Hello {
                version: PROTOCOL,
                buffer: buffer.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                data: data_tx,
                ctrl: ctrl_tx,
                releases: release_rx,
            })
            .map_err(|e| ipc_err("sending the hello", e))?;
        match super::retry_timeout(timeout, |left| ctrl_rx.try_recv_timeout(left)) {
            Ok(Ctrl::Welcome { version: PROTOCOL }) => {}
            Ok(Ctrl::Welcome { version }) => {
                return Err(TransportError::Protocol(format!(
                    "server speaks protocol {version}, this build speaks {PROTOCOL}"
                )))
            }
            Ok(Ctrl::Segment { .. }) => {
                return Err(TransportError::Protocol("segment before welcome".into()))
            }
            Err(TryRecvError::Empty) => {
                return Err(TransportError::AcceptTimeout {
                    name: name.to_owned(),
                    waited: timeout,
                })
            }
            Err(TryRecvError::IpcError(e)) => return Err(ipc_err("waiting for the welcome", e)),
        }
        let releases = Arc::new(Releases::default());
        let source = match buffer {
            Some(_) => Source::Direct(Box::new(Direct {
                data: data_rx,
                ctrl: ctrl_rx,
                table: SegmentTable::default(),
                pending: std::collections::VecDeque::new(),
                done: false,
            })),
            None => {
                let (tx, incoming) = mpsc::channel();
                let thread_releases = Arc::clone(&releases);
                thread::Builder::new()
                    .name("packet-ipc-reader".into())
                    .spawn(move || read_loop(&data_rx, &ctrl_rx, &tx, &thread_releases))
                    .map_err(io_err("starting the reader thread"))?;
                Source::Thread(incoming)
            }
        };
        let writer_keeps = buffer.unwrap_or(PoolLimits::default().max_segments);
        Ok(LinkReader {
            source,
            release_group: (writer_keeps / 2).clamp(1, RECLAIM_EVERY as usize),
            releases,
            release_tx,
            release_frame: FrameBuf::default(),
        })
    }

    /// The next batch (or the end): waits for it if `block`, else `None` when nothing
    /// has arrived.
    pub(crate) fn next(&mut self, block: bool) -> Option<Incoming> {
        match &mut self.source {
            Source::Thread(rx) => {
                let got = if block {
                    rx.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
                } else {
                    rx.try_recv()
                };
                match got {
                    Ok(item) => Some(item),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        Some(Incoming::Failed(TransportError::Disconnected))
                    }
                }
            }
            Source::Direct(d) => loop {
                if let Some(item) = d.pending.pop_front() {
                    return Some(item);
                }
                if d.done {
                    return Some(Incoming::Failed(TransportError::Closed));
                }
                let msg = if block {
                    super::retry(|| d.data.recv())
                } else {
                    match d.data.try_recv() {
                        Ok(msg) => Ok(msg),
                        Err(TryRecvError::Empty) => return None,
                        Err(TryRecvError::IpcError(e)) => Err(e),
                    }
                };
                let result = match msg {
                    Ok(msg) => {
                        let pending = &mut d.pending;
                        receive(
                            msg,
                            &d.ctrl,
                            &mut d.table,
                            &mut |item| {
                                pending.push_back(item);
                                true
                            },
                            &self.releases,
                        )
                    }
                    Err(IpcError::Disconnected) => Err(TransportError::Disconnected),
                    Err(e) => Err(ipc_err("receiving a frame", e)),
                };
                match result {
                    Ok(true) => {}
                    Ok(false) => d.done = true,
                    Err(e) => {
                        d.done = true;
                        d.pending.push_back(Incoming::Failed(e));
                    }
                }
            },
        }
    }

    /// Sends the releases when enough of them have gathered to be worth a message.
    pub(crate) fn flush_some_releases(&mut self) {
        if self.releases.len() >= self.release_group {
            self.flush_releases();
        }
    }

    /// Sends the writer every segment released since the last call (one message, or none).
    pub(crate) fn flush_releases(&mut self) {
        if self.releases.take_into(self.release_frame.start()) {
            // A writer that is gone needs no releases; the data channel reports its end.
            let _ = self.release_tx.send(self.release_frame.plain());
        }
    }
}

/// The reader thread: frames in, checked batches out, until the end, a failure, or the
/// consumer is gone.
fn read_loop(
    data: &IpcBytesReceiver,
    ctrl: &IpcReceiver<Ctrl>,
    out: &mpsc::Sender<Incoming>,
    releases: &Arc<Releases>,
) {
    let mut table = SegmentTable::default();
    let mut emit = |item| out.send(item).is_ok();
    loop {
        let result = match super::retry(|| data.recv()) {
            Ok(msg) => receive(msg, ctrl, &mut table, &mut emit, releases),
            Err(IpcError::Disconnected) => Err(TransportError::Disconnected),
            Err(e) => Err(ipc_err("receiving a frame", e)),
        };
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = out.send(Incoming::Failed(e));
                return;
            }
        }
    }
}

/// Handles one data frame, handing its batches to `emit` (which says false when nobody
/// takes them any more); false when reading is over (end of stream, or nobody to take).
fn receive(
    mut msg: Vec<u8>,
    ctrl: &IpcReceiver<Ctrl>,
    table: &mut SegmentTable,
    emit: &mut dyn FnMut(Incoming) -> bool,
    releases: &Arc<Releases>,
) -> Result<bool, TransportError> {
    match frame::parse(&msg)? {
        Frame::Inline(bytes) => {
            // Only the header is checked here; the walk that hands the packets out checks
            // each record (see `Client::recv`), so a batch is walked once, not twice.
            let header = Header::parse(bytes)?;
            // The receive buffer is sized for the largest message; give the rest back
            // (glibc shrinks in place) so that queued inline batches cost what they hold.
            if msg.capacity() > 2 * msg.len() + 4096 {
                msg.shrink_to_fit();
            }
            Ok(emit(Incoming::Batch(Arc::new(InlineBatch(msg)), header)))
        }
        Frame::Descs(descs) => {
            for d in descs {
                if d.fresh {
                    wait_announcement(ctrl, table, d.seg)?;
                }
                let lease = table.lease(&d, releases)?;
                let header = Header::parse(lease.bytes())?;
                if !emit(Incoming::Batch(Arc::new(lease), header)) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Frame::End => {
            emit(Incoming::End);
            Ok(false)
        }
        other => Err(frame::FrameError::Unexpected(other.kind()).into()),
    }
}

/// Reads segment announcements until the one for `seg` (sent just before the descriptor
/// that names it) has arrived.
fn wait_announcement(
    ctrl: &IpcReceiver<Ctrl>,
    table: &mut SegmentTable,
    seg: u32,
) -> Result<(), TransportError> {
    loop {
        match super::retry_timeout(ANNOUNCE_WAIT, |left| ctrl.try_recv_timeout(left)) {
            Ok(Ctrl::Segment { id, shm }) => {
                table.insert(id, shm)?;
                if id == seg {
                    return Ok(());
                }
            }
            Ok(Ctrl::Welcome { .. }) => {
                return Err(TransportError::Protocol("second welcome".into()))
            }
            Err(TryRecvError::Empty) => return Err(super::shm::SegmentError::Unknown(seg).into()),
            Err(TryRecvError::IpcError(e)) => {
                return Err(ipc_err("reading a segment announcement", e))
            }
        }
    }
}
