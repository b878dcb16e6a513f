//! A producer's link to the daemon: batches written into its pool, descriptors through its
//! ring, slots back through the release ring, and a socket for the rare rest.
//!
//! Per batch the producer takes a free slot (the most recently freed first: its pages are
//! the likeliest to be in cache), writes the batch into it in one pass, publishes a
//! 32-byte descriptor and moves the ring's head. It makes a system call only to wake a
//! daemon that said it sleeps, and to sleep itself when every slot is out (which is how
//! `overflow = "block"` paces it).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::memfd::{self, Access, Mapping};
use super::region::{
    ProducerDesc, ProducerRegion, FLAG_INDEX_IPPAIR, FLAG_NOTICE, FLAG_WANT_INDEX, PDESC_INDEXED,
    PDESC_IPPAIR,
};
use super::sock::{Conn, Recv};
use super::wait;
use super::wire::{self, Frame, NoticeCode, PoolShape, WelcomeRole, WireInfo, MAX_DAEMON_FRAME};
use super::{io_err, TransportError};
use crate::batch::{self, EncodeOptions};
use crate::options::WaitMode;
use crate::packet::AsIpcPacket;

/// How long a sleeping producer sleeps before it looks at its socket again (a daemon that
/// died wakes nobody).
const LIVENESS: Duration = Duration::from_millis(100);
/// The socket is looked at every this many batches even when nothing says so.
const CHECK_EVERY: u32 = 64;

/// Something the daemon told a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProducerNotice {
    /// The daemon is stopping.
    Stopping,
    /// The server is gone.
    ServerGone,
    /// The daemon cut this producer off.
    Refused(String),
}

/// What a sent batch asks of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IndexWanted {
    /// No index.
    No,
    /// An index of flow hashes.
    Flow,
    /// An index of address-pair hashes.
    IpPair,
}

/// A producer's connection to the daemon.
pub(crate) struct ProducerLink {
    /// The id the daemon gave this producer.
    pub id: u64,
    /// The server.
    pub info: WireInfo,
    conn: Conn,
    region: ProducerRegion,
    pool: Mapping,
    /// The region's and the pool's descriptors (sealed: nobody can shrink them; kept so
    /// that the memory is the daemon's as long as the link lives).
    memory: [OwnedFd; 2],
    shape: PoolShape,
    /// Free small and large slots, the most recently freed last (taken first: its pages
    /// are the likeliest to be in cache).
    small_free: Vec<u32>,
    large_free: Vec<u32>,
    /// Packets in each slot the daemon holds (`None`: the slot is ours).
    held: Vec<Option<u32>>,
    desc_head: u64,
    rel_tail: u64,
    seq: u64,
    wait: WaitMode,
    since_check: u32,
    /// Frames received.
    buf: Vec<u8>,
    /// Frames to send.
    out: Vec<u8>,
    interrupt: Option<Arc<AtomicBool>>,
}

impl ProducerLink {
    /// Sets up the link from a welcome.
    pub(crate) fn new(
        conn: Conn,
        id: u64,
        info: WireInfo,
        role: WelcomeRole,
        fds: Vec<OwnedFd>,
        wait: WaitMode,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> Result<ProducerLink, TransportError> {
        let WelcomeRole::Producer { layout, shape, .. } = role else {
            return Err(TransportError::Protocol(
                "expected a producer welcome".into(),
            ));
        };
        let [region_fd, pool_fd] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| {
            TransportError::Protocol("a producer welcome without its memory".into())
        })?;
        let region = super::map_region(&region_fd, layout.valid(), layout.len(), |map| {
            ProducerRegion::new(map, layout)
        })?;
        let slots = shape.slots();
        let pool_len = shape
            .len()
            .filter(|&n| n > 0 && slots <= layout.rel_cap && slots <= layout.desc_cap)
            .ok_or_else(|| TransportError::Protocol("a pool of impossible size".into()))?;
        let size = memfd::check_sealed(pool_fd.as_fd()).map_err(io_err("checking the pool"))?;
        if size < pool_len {
            return Err(TransportError::Protocol(
                "a pool smaller than announced".into(),
            ));
        }
        let pool = Mapping::new(pool_fd.as_fd(), pool_len, Access::ReadWrite)
            .map_err(io_err("mapping the pool"))?;
        Ok(ProducerLink {
            id,
            info,
            conn,
            memory: [region_fd, pool_fd],
            desc_head: region.desc_head().load(Ordering::Relaxed),
            rel_tail: region.rel_tail().load(Ordering::Relaxed),
            region,
            pool,
            shape,
            // Slot 0 is taken first.
            small_free: (0..shape.small_slots).rev().collect(),
            large_free: (shape.small_slots..slots).rev().collect(),
            held: vec![None; slots as usize],
            seq: 0,
            wait,
            since_check: 0,
            buf: vec![0; MAX_DAEMON_FRAME],
            out: Vec::with_capacity(wire::HEAD_LEN),
            interrupt,
        })
    }

    /// Tells the daemon the welcome arrived and the memory is mapped.
    pub(crate) fn ready(&mut self) -> Result<(), TransportError> {
        wire::ready(&mut self.out);
        send(&self.conn, &self.out)
    }

    /// The largest batch a slot holds.
    pub(crate) fn max_batch(&self) -> usize {
        self.shape.max_batch()
    }

    /// How the pool is cut.
    #[cfg(feature = "daemon")]
    pub(crate) fn shape(&self) -> PoolShape {
        self.shape
    }

    /// What the daemon wants in the index of the next batch.
    pub(crate) fn index_wanted(&self) -> IndexWanted {
        let flags = self.region.flags().load(Ordering::Relaxed);
        match (flags & FLAG_WANT_INDEX != 0, flags & FLAG_INDEX_IPPAIR != 0) {
            (false, _) => IndexWanted::No,
            (true, false) => IndexWanted::Flow,
            (true, true) => IndexWanted::IpPair,
        }
    }

    /// Batches (and their packets) published and not yet given back: what the daemon may
    /// have swallowed if it died now.
    pub(crate) fn in_flight(&self) -> (u64, u64) {
        self.held
            .iter()
            .flatten()
            .fold((0, 0), |(b, p), n| (b + 1, p + u64::from(*n)))
    }

    /// Reports the packets the producer's source lost so far (a running total).
    pub(crate) fn report_source_drops(&self, total: u64) {
        self.region.source_dropped().store(total, Ordering::Relaxed);
    }

    /// Writes the batch into a free slot and publishes it. When every slot is out, waits
    /// for one to come back (that is how `block` paces the producer). A notice from the
    /// daemon is returned instead of sending.
    pub(crate) fn send<T: AsIpcPacket>(
        &mut self,
        packets: &[T],
        options: &EncodeOptions,
        hash: impl FnMut(&[u8]) -> u32,
    ) -> Result<Option<ProducerNotice>, TransportError> {
        self.since_check += 1;
        if self.since_check >= CHECK_EVERY
            || self.region.flags().load(Ordering::Relaxed) & FLAG_NOTICE != 0
        {
            self.since_check = 0;
            if let Some(notice) = self.read_socket()? {
                return Ok(Some(notice));
            }
        }
        let needed = batch::encoded_len_with(packets, options);
        if needed > self.shape.max_batch() {
            return Err(batch::BatchError::TooLarge {
                needed,
                capacity: self.shape.max_batch(),
            }
            .into());
        }
        let slot = match self.take_slot(needed)? {
            Ok(slot) => slot,
            Err(notice) => return Ok(Some(notice)),
        };
        let Some((at, size)) = self.shape.slot(slot) else {
            return Err(TransportError::Protocol("a slot outside the pool".into()));
        };
        // SAFETY: the slot is ours (it is free: the daemon gave it back, or never had it),
        // so nobody reads or writes it until we publish its descriptor; it lies within the
        // pool mapping (the shape was checked against it), which lives as long as `self`.
        let out = unsafe { std::slice::from_raw_parts_mut(self.pool.as_ptr().add(at), size) };
        let len = match batch::encode_into_with(packets, self.seq, 0, out, options, hash) {
            Ok(len) => len,
            Err(e) => {
                self.put_back(slot);
                return Err(e.into());
            }
        };
        let bytes = packets
            .iter()
            .map(|p| p.data().len().min(options.snaplen) as u64)
            .sum();
        let count = packets.len() as u32;
        let flags = match (options.index, options.flags & batch::FLAG_INDEX_IPPAIR != 0) {
            (false, _) => 0,
            (true, false) => PDESC_INDEXED,
            (true, true) => PDESC_INDEXED | PDESC_IPPAIR,
        };
        self.region.write_desc(
            self.desc_head,
            &ProducerDesc {
                slot,
                len: len as u32,
                count,
                flags,
                seq: self.seq,
                bytes,
            },
        );
        self.held[slot as usize] = Some(count);
        self.desc_head += 1;
        self.region
            .desc_head()
            .store(self.desc_head, Ordering::Release);
        self.seq += 1;
        self.wake_daemon()?;
        Ok(None)
    }

    /// Sends a wake-up frame if the daemon sleeps and asked for one.
    fn wake_daemon(&mut self) -> Result<(), TransportError> {
        fence(Ordering::SeqCst);
        let wake = self.region.hub_wake();
        if wake.load(Ordering::Relaxed) != 0 && wake.swap(0, Ordering::Relaxed) != 0 {
            wire::wake(&mut self.out);
            send(&self.conn, &self.out)?;
        }
        Ok(())
    }

    /// A free slot of at least `len` bytes; waits while there is none. `Err(notice)` when
    /// the daemon said something that ends the wait.
    fn take_slot(&mut self, len: usize) -> Result<Result<u32, ProducerNotice>, TransportError> {
        let small = len <= self.shape.small_size as usize;
        let mut waited = false;
        loop {
            let slot = if small {
                self.small_free.pop().or_else(|| self.large_free.pop())
            } else {
                self.large_free.pop()
            };
            if let Some(slot) = slot {
                if waited {
                    self.region.waiting().store(0, Ordering::Relaxed);
                }
                return Ok(Ok(slot));
            }
            if self.reclaim()? {
                continue;
            }
            // Say so before asking for a wake-up: a daemon that goes to sleep after this
            // sees it, and asks the subscribers to wake it when they release.
            self.region.waiting().store(1, Ordering::Relaxed);
            waited = true;
            if self
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                self.region.waiting().store(0, Ordering::Relaxed);
                return Err(TransportError::Interrupted);
            }
            // Ask for a wake-up: the daemon rings when it writes releases.
            self.wake_daemon()?;
            let rel_tail = self.rel_tail;
            let region = &self.region;
            let until = || Instant::now() + LIVENESS;
            let ready = wait::wait(self.wait, region.bell(), until, || {
                region.rel_head().load(Ordering::Acquire) != rel_tail
            });
            if !ready {
                if let Some(notice) = self.read_socket()? {
                    return Ok(Err(notice));
                }
            }
        }
    }

    /// Puts a free slot back on its list.
    fn put_back(&mut self, slot: u32) {
        if slot < self.shape.small_slots {
            self.small_free.push(slot);
        } else {
            self.large_free.push(slot);
        }
    }

    /// Takes back the slots the daemon released; true when there were any.
    fn reclaim(&mut self) -> Result<bool, TransportError> {
        let head = self.region.rel_head().load(Ordering::Acquire);
        let n = head.wrapping_sub(self.rel_tail);
        if n == 0 {
            return Ok(false);
        }
        if n > u64::from(self.shape.slots()) {
            return Err(TransportError::Protocol(format!(
                "the daemon released {n} slots of {}",
                self.shape.slots()
            )));
        }
        while self.rel_tail != head {
            let slot = self.region.read_release(self.rel_tail);
            match self.held.get_mut(slot as usize) {
                Some(h @ Some(_)) => *h = None,
                _ => {
                    return Err(TransportError::Protocol(format!(
                        "the daemon released slot {slot}, which it does not hold"
                    )))
                }
            }
            self.put_back(slot);
            self.rel_tail = self.rel_tail.wrapping_add(1);
        }
        self.region
            .rel_tail()
            .store(self.rel_tail, Ordering::Release);
        Ok(true)
    }

    /// Reads what the daemon sent on the socket, without waiting: a notice is returned, a
    /// closed socket is `Disconnected`.
    fn read_socket(&mut self) -> Result<Option<ProducerNotice>, TransportError> {
        self.region
            .flags()
            .fetch_and(!FLAG_NOTICE, Ordering::Relaxed);
        loop {
            let mut fds = Vec::new();
            let n = match self
                .conn
                .recv(&mut self.buf, &mut fds, Duration::ZERO)
                .map_err(io_err("reading from the daemon"))?
            {
                Recv::Message(n) => n,
                Recv::Empty => return Ok(None),
                Recv::Closed => return Err(TransportError::Disconnected),
                Recv::Oversized => return Err(TransportError::Protocol("oversized frame".into())),
            };
            match wire::parse(&self.buf[..n])? {
                Frame::Notice(code, text) => {
                    return Ok(Some(match code {
                        NoticeCode::Stopping => ProducerNotice::Stopping,
                        NoticeCode::ServerGone => ProducerNotice::ServerGone,
                        _ => ProducerNotice::Refused(text.to_owned()),
                    }))
                }
                Frame::Wake => {}
                other => {
                    return Err(TransportError::Protocol(format!(
                        "unexpected frame {other:?}"
                    )))
                }
            }
        }
    }

    /// Waits until the daemon has taken every published batch (not necessarily delivered
    /// it), at most `timeout`; true if it did.
    pub(crate) fn flush(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.region.desc_tail().load(Ordering::Acquire) == self.desc_head {
                return true;
            }
            if Instant::now() >= until || self.wake_daemon().is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Testing: what the daemon said on the socket, read now.
    #[cfg(feature = "daemon")]
    pub(crate) fn notice_now(&mut self) -> Result<Option<ProducerNotice>, TransportError> {
        self.read_socket()
    }

    /// Testing: the descriptors of the producer's region and pool.
    #[cfg(feature = "daemon")]
    pub(crate) fn memory(&self) -> &[OwnedFd; 2] {
        &self.memory
    }

    /// Testing: the producer's region and pool, to write what the library never would.
    #[cfg(feature = "daemon")]
    pub(crate) fn raw(&mut self) -> (&ProducerRegion, &Mapping, &mut u64, &Conn) {
        (&self.region, &self.pool, &mut self.desc_head, &self.conn)
    }
}

/// Sends a frame on the link's socket: a peer that is gone is `Disconnected`.
pub(crate) fn send(conn: &Conn, frame: &[u8]) -> Result<(), TransportError> {
    conn.send(frame, &[]).map_err(super::send_err)
}
