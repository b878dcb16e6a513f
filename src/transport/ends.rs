//! The daemon's ends of its clients: the memory it creates for them, and checked access to
//! what they write into it.
//!
//! Every value read here from a client's region was written by a process the daemon does
//! not trust: heads and tails are checked against what the daemon itself last wrote
//! ([`check_index`]), descriptors against the client's own pool. A check that fails is a
//! [`RingError`]; the hub then cuts that client off, alone.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::memfd::{self, Access, Mapping};
use super::region::{
    check_index, ProducerDesc, ProducerLayout, ProducerRegion, RingError, SubscriberDesc,
    SubscriberLayout, SubscriberRegion, FLAG_NOTICE,
};
use super::sock::{Conn, Recv};
use super::wire::{
    self, Frame, NoticeCode, PoolInfo, PoolShape, Welcome, WelcomeRole, WireInfo, PROTOCOL,
};
use super::{io_err, TransportError};
use crate::options::WaitMode;

/// A producer's pool as the daemon holds it: the memory (read-only here), and what to send
/// subscribers so that they map it.
pub(crate) struct PoolMemory {
    /// Its id, unique for the daemon's lifetime: a new producer never reuses one.
    pub id: u64,
    /// How it is cut into slots.
    pub shape: PoolShape,
    /// A read-only descriptor, for subscribers.
    read_only: OwnedFd,
    /// The daemon's read-only mapping (it reads batch headers and flow indexes).
    map: Mapping,
}

impl PoolMemory {
    /// The announcement subscribers receive.
    pub(crate) fn info(&self) -> PoolInfo {
        PoolInfo {
            pool: self.id,
            shape: self.shape,
        }
    }

    /// The bytes of slot `slot`, the first `len` of them, if that lies within the slot.
    ///
    /// The producer may write them at any time: read them as data that may change.
    pub(crate) fn slot(&self, slot: u32, len: usize) -> Option<&[u8]> {
        let (at, size) = self.shape.slot(slot)?;
        if len > size {
            return None;
        }
        // SAFETY: within the mapping (checked by `bytes`); the values read from it are
        // checked by every reader.
        unsafe { self.map.bytes(at, len) }
    }
}

impl std::fmt::Debug for PoolMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMemory")
            .field("id", &self.id)
            .field("shape", &self.shape)
            .finish()
    }
}

/// Sends a frame without ever blocking the daemon: a client whose socket is full is not
/// reading, and is treated as broken.
fn send(
    conn: &Conn,
    frame: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), TransportError> {
    conn.send(frame, fds).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            TransportError::Protocol("the client does not read its socket".into())
        } else {
            super::send_err(e)
        }
    })
}

/// What a client sent on its socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientFrame {
    /// It published something while the daemon slept.
    Wake,
    /// It received and mapped its welcome.
    Ready,
    /// Nothing more to read now.
    Empty,
    /// It hung up.
    Closed,
}

/// Reads one frame a client sent, without waiting. Anything but a wake-up or "ready",
/// small and without descriptors, is an error.
pub(crate) fn read_client(
    conn: &Conn,
    buf: &mut [u8; wire::MAX_CLIENT_FRAME],
) -> Result<ClientFrame, TransportError> {
    let mut fds = Vec::new();
    let got = conn
        .recv(buf, &mut fds, std::time::Duration::ZERO)
        .map_err(io_err("reading a client"))?;
    if !fds.is_empty() {
        return Err(TransportError::Protocol(
            "sent descriptors, which clients never send".into(),
        ));
    }
    match got {
        Recv::Empty => Ok(ClientFrame::Empty),
        Recv::Closed => Ok(ClientFrame::Closed),
        Recv::Oversized => Err(TransportError::Protocol("sent an oversized frame".into())),
        Recv::Message(n) => match wire::parse(&buf[..n])? {
            Frame::Wake => Ok(ClientFrame::Wake),
            Frame::Ready => Ok(ClientFrame::Ready),
            other => Err(TransportError::Protocol(format!(
                "sent a frame clients never send ({other:?})"
            ))),
        },
    }
}

/// Creates sealed memory of `len` bytes and maps it.
fn create(
    name: &std::ffi::CStr,
    len: usize,
    access: Access,
) -> Result<(OwnedFd, Mapping), TransportError> {
    let fd = memfd::create(name, len).map_err(io_err("creating shared memory"))?;
    let map = Mapping::new(fd.as_fd(), len, access).map_err(io_err("mapping shared memory"))?;
    Ok((fd, map))
}

/// The daemon's end of a producer.
pub(crate) struct ProducerEnd {
    /// The producer's socket (non-blocking).
    pub conn: Conn,
    region: ProducerRegion,
    /// Its pool.
    pub pool: Arc<PoolMemory>,
    /// Descriptors taken (what the daemon last wrote as the ring's tail).
    desc_tail: u64,
    /// Slots given back (what the daemon wrote as the release ring's head, published or
    /// not).
    rel_head: u64,
    /// The release ring's head as last published.
    rel_published: u64,
}

impl ProducerEnd {
    /// Creates the producer's memory (a pool cut as `shape` says, and its region) and
    /// welcomes it. The pool's id is `pool_id`.
    pub(crate) fn welcome(
        conn: Conn,
        id: u64,
        info: WireInfo,
        pool_id: u64,
        shape: PoolShape,
    ) -> Result<ProducerEnd, TransportError> {
        let cap = shape.slots().next_power_of_two();
        let layout = ProducerLayout {
            desc_cap: cap,
            rel_cap: cap,
        };
        let (region_fd, region_map) =
            create(c"packet-ipc-producer", layout.len(), Access::ReadWrite)?;
        let region = ProducerRegion::new(Arc::new(region_map), layout)
            .ok_or_else(|| TransportError::Protocol("region layout".into()))?;
        let pool_len = shape
            .len()
            .ok_or_else(|| TransportError::Protocol("pool too large".into()))?;
        let (pool_fd, _) = create(c"packet-ipc-pool", pool_len, Access::Read)?;
        let read_only = memfd::read_only(pool_fd.as_fd()).map_err(io_err("sharing a pool"))?;
        let map = Mapping::new(read_only.as_fd(), pool_len, Access::Read)
            .map_err(io_err("mapping a pool"))?;
        let pool = Arc::new(PoolMemory {
            id: pool_id,
            shape,
            read_only,
            map,
        });
        let role = WelcomeRole::Producer {
            layout,
            pool: pool_id,
            shape,
        };
        send_welcome(&conn, id, info, role, &[region_fd.as_fd(), pool_fd.as_fd()])?;
        Ok(ProducerEnd {
            conn,
            region,
            pool,
            desc_tail: 0,
            rel_head: 0,
            rel_published: 0,
        })
    }

    /// The next descriptor the producer published, if any (its values unchecked, but the
    /// ring's head checked): the daemon must deal with it before asking again.
    pub(crate) fn next(&mut self) -> Result<Option<ProducerDesc>, RingError> {
        let head = self.region.desc_head().load(Ordering::Acquire);
        if head == self.desc_tail {
            return Ok(None);
        }
        let cap = u64::from(self.region.layout().desc_cap);
        check_index(
            "descriptor ring head",
            head,
            self.desc_tail,
            self.desc_tail.wrapping_add(cap),
        )?;
        let d = self.region.read_desc(self.desc_tail);
        self.desc_tail = self.desc_tail.wrapping_add(1);
        Ok(Some(d))
    }

    /// True when the producer published something the daemon has not taken.
    pub(crate) fn pending(&self) -> bool {
        self.region.desc_head().load(Ordering::Relaxed) != self.desc_tail
    }

    /// Publishes the ring's tail (what was taken).
    pub(crate) fn commit_taken(&self) {
        self.region
            .desc_tail()
            .store(self.desc_tail, Ordering::Release);
    }

    /// Gives slot `slot` back to the producer (published by [`ProducerEnd::publish`]).
    pub(crate) fn release(&mut self, slot: u32) -> Result<(), RingError> {
        let tail = self.region.rel_tail().load(Ordering::Acquire);
        let cap = u64::from(self.region.layout().rel_cap);
        // The producer takes released slots back before it can publish them again, so a
        // full release ring means it lies about its tail.
        let low = self.rel_head.wrapping_sub(cap);
        check_index("release ring tail", tail, low, self.rel_head)?;
        if self.rel_head.wrapping_sub(tail) >= cap {
            return Err(RingError::Index {
                what: "release ring (full: the producer does not take its slots back)",
                value: tail,
                low: self.rel_head.wrapping_sub(cap) + 1,
                high: self.rel_head,
            });
        }
        self.region.write_release(self.rel_head, slot);
        self.rel_head = self.rel_head.wrapping_add(1);
        Ok(())
    }

    /// Publishes the releases written since the last call, waking the producer if it
    /// sleeps for want of a slot.
    pub(crate) fn publish(&mut self) {
        if self.rel_head != self.rel_published {
            self.region
                .rel_head()
                .store(self.rel_head, Ordering::Release);
            self.rel_published = self.rel_head;
            self.region.bell().ring();
        }
    }

    /// Asks for (or stops asking for) a flow index in every batch.
    pub(crate) fn set_index(&self, flags: u32) {
        let mask = super::region::FLAG_WANT_INDEX | super::region::FLAG_INDEX_IPPAIR;
        let old = self.region.flags().load(Ordering::Relaxed);
        if old & mask != flags {
            self.region
                .flags()
                .store((old & !mask) | flags, Ordering::Relaxed);
        }
    }

    /// True when the producer waits for a free slot (as it says): releases then matter at
    /// once, so subscribers are asked to wake the daemon when they release.
    pub(crate) fn starving(&self) -> bool {
        self.region.waiting().load(Ordering::Relaxed) != 0
    }

    /// Packets the producer says its source lost (a total it reports).
    pub(crate) fn source_dropped(&self) -> u64 {
        self.region.source_dropped().load(Ordering::Relaxed)
    }

    /// Asks the producer for a wake-up frame when it next publishes (before sleeping).
    pub(crate) fn want_wake(&self, on: bool) {
        self.region
            .hub_wake()
            .store(u32::from(on), Ordering::Relaxed);
    }

    /// Tells the producer something; it looks at its socket when the flag says so.
    pub(crate) fn notice(&self, code: NoticeCode, why: &str) {
        notice(
            &self.conn,
            self.region.flags(),
            self.region.bell(),
            code,
            why,
        );
    }
}

/// Welcomes a client as `role`, handing over the memory its role needs (`fds`).
fn send_welcome(
    conn: &Conn,
    id: u64,
    server: WireInfo,
    role: WelcomeRole,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), TransportError> {
    let mut buf = Vec::new();
    let welcome = Welcome {
        version: PROTOCOL,
        id,
        server,
        role,
    };
    wire::welcome(&mut buf, &welcome);
    send(conn, &buf, fds)
}

/// Sends a notice on a client's socket, raises its region's NOTICE flag, and rings its
/// bell: a client looks at its socket only when the flag says so.
fn notice(
    conn: &Conn,
    flags: &std::sync::atomic::AtomicU32,
    bell: crate::transport::wait::Bell<'_>,
    code: NoticeCode,
    why: &str,
) {
    let mut buf = Vec::new();
    wire::notice(&mut buf, code, why);
    let _ = send(conn, &buf, &[]);
    flags.fetch_or(FLAG_NOTICE, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    bell.ring();
}

impl Drop for ProducerEnd {
    fn drop(&mut self) {
        // What the producer sent and the daemon did not read would reset the connection
        // on close, and the producer would miss the notice telling it why.
        self.conn.drain();
    }
}

/// The daemon's end of a subscriber.
pub(crate) struct SubscriberEnd {
    /// The subscriber's socket (non-blocking).
    pub conn: Conn,
    region: SubscriberRegion,
    /// Descriptors written (published or not).
    head: u64,
    /// The ring's head as last published.
    published: u64,
    /// The subscriber's tail as last read (and checked).
    tail: u64,
}

impl SubscriberEnd {
    /// Creates the subscriber's region and welcomes it.
    pub(crate) fn welcome(
        conn: Conn,
        id: u64,
        info: WireInfo,
        layout: SubscriberLayout,
        group: Option<String>,
        wait: WaitMode,
    ) -> Result<SubscriberEnd, TransportError> {
        let (fd, map) = create(c"packet-ipc-subscriber", layout.len(), Access::ReadWrite)?;
        let region = SubscriberRegion::new(Arc::new(map), layout)
            .ok_or_else(|| TransportError::Protocol("region layout".into()))?;
        let role = WelcomeRole::Subscriber {
            layout,
            group,
            wait,
        };
        send_welcome(&conn, id, info, role, &[fd.as_fd()])?;
        Ok(SubscriberEnd {
            conn,
            region,
            head: 0,
            published: 0,
            tail: 0,
        })
    }

    /// Descriptors that fit in the ring now.
    pub(crate) fn room(&self) -> u64 {
        u64::from(self.region.layout().desc_cap) - self.head.wrapping_sub(self.tail)
    }

    /// The selection ring's size (0 outside groups).
    pub(crate) fn sel_cap(&self) -> u64 {
        u64::from(self.region.layout().sel_cap)
    }

    /// Reads how far the subscriber released: the number of newly released descriptors
    /// (the oldest delivered first).
    pub(crate) fn released(&mut self) -> Result<u64, RingError> {
        let tail = self.region.desc_tail().load(Ordering::Acquire);
        if tail == self.tail {
            return Ok(0);
        }
        check_index("descriptor ring tail", tail, self.tail, self.published)?;
        let n = tail.wrapping_sub(self.tail);
        self.tail = tail;
        Ok(n)
    }

    /// True when the subscriber released something not read yet.
    pub(crate) fn pending(&self) -> bool {
        self.region.desc_tail().load(Ordering::Relaxed) != self.tail
    }

    /// Writes a descriptor (published by [`SubscriberEnd::publish`]).
    pub(crate) fn push(&mut self, d: &SubscriberDesc) {
        self.region.write_desc(self.head, d);
        self.head = self.head.wrapping_add(1);
    }

    /// Writes selected packet indices at selection positions from `pos`.
    pub(crate) fn write_sels(&self, pos: u64, indices: &[u32]) {
        self.region.write_sels(pos, indices);
    }

    /// Publishes what was pushed, waking the subscriber if it sleeps.
    pub(crate) fn publish(&mut self) {
        if self.head != self.published {
            self.region.desc_head().store(self.head, Ordering::Release);
            self.published = self.head;
            self.region.bell().ring();
        }
    }

    /// Passes a pool to the subscriber (before the first descriptor that names it).
    pub(crate) fn announce(&self, pool: &PoolMemory) -> Result<(), TransportError> {
        let mut buf = Vec::new();
        wire::pool(&mut buf, &pool.info());
        send(&self.conn, &buf, &[pool.read_only.as_fd()])
    }

    /// Tells the subscriber no descriptor names `pool` any more.
    pub(crate) fn retire(&self, pool: u64) -> Result<(), TransportError> {
        let mut buf = Vec::new();
        wire::retire(&mut buf, pool);
        send(&self.conn, &buf, &[])
    }

    /// Asks the subscriber for a wake-up frame when it next releases (before sleeping).
    pub(crate) fn want_wake(&self, on: bool) {
        self.region
            .hub_wake()
            .store(u32::from(on), Ordering::Relaxed);
    }

    /// Batches the subscriber skipped as malformed, and batches whose records ran out
    /// early (its own counts).
    pub(crate) fn reported(&self) -> (u64, u64) {
        (
            self.region.skipped().load(Ordering::Relaxed),
            self.region.cut_short().load(Ordering::Relaxed),
        )
    }

    /// Tells the subscriber something; it reads its socket when the flag says so.
    pub(crate) fn notice(&self, code: NoticeCode, why: &str) {
        notice(
            &self.conn,
            self.region.flags(),
            self.region.bell(),
            code,
            why,
        );
    }
}

impl Drop for SubscriberEnd {
    fn drop(&mut self) {
        self.conn.drain();
    }
}

/// A pool for unit tests of the hub's bookkeeping.
#[cfg(test)]
pub(crate) fn test_pool(id: u64, slots: u32) -> Arc<PoolMemory> {
    let fd = memfd::create(c"test-pool", slots as usize * 4096).unwrap();
    let read_only = memfd::read_only(fd.as_fd()).unwrap();
    let map = Mapping::new(read_only.as_fd(), slots as usize * 4096, Access::Read).unwrap();
    Arc::new(PoolMemory {
        id,
        shape: PoolShape {
            small_slots: slots,
            small_size: 4096,
            large_slots: 0,
            large_size: 0,
        },
        read_only,
        map,
    })
}
