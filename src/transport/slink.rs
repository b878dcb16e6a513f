//! A subscriber's link to the daemon: descriptors through its ring, the producers' pools
//! mapped read-only, releases by moving the ring's tail, and a socket for the rare rest.
//!
//! A delivered batch is released when the [`Delivered`] handed out for it is dropped, in
//! any order: the tail moves over every released position before the oldest one still
//! held, so a batch held for long holds the window (and the daemon's overflow policy then
//! acts on what waits behind it).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::memfd::{self, Access, Mapping};
use super::region::{SubscriberDesc, SubscriberRegion, FLAG_NOTICE};
use super::sock::{Conn, Recv};
use super::wait;
use super::wait::Deadline;
use super::wire::{
    self, Frame, NoticeCode, PoolInfo, PoolShape, WelcomeRole, WireInfo, MAX_DAEMON_FRAME,
};
use super::{io_err, TransportError};
use crate::options::WaitMode;

/// How long a sleeping subscriber sleeps before it looks at its socket again.
const LIVENESS: Duration = Duration::from_millis(100);
/// How long a descriptor may wait for the announcement of its pool (which the daemon
/// sends before the descriptor).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);
/// The most pools a subscriber maps at once.
const MAX_POOLS: usize = 1024;

/// A producer's pool, mapped read-only.
pub(crate) struct Pool {
    id: u64,
    map: Arc<Mapping>,
    shape: PoolShape,
}

/// Moves the ring's tail over the batches the reader is done with.
struct Releaser {
    region: SubscriberRegion,
    conn: Arc<Conn>,
    state: Mutex<Released>,
}

struct Released {
    /// The ring's tail as this side last wrote it.
    tail: u64,
    /// For each position from `tail` on that was handed out: released yet?
    done: VecDeque<bool>,
}

impl Releaser {
    fn hand_out(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done.push_back(false);
        s.tail + s.done.len() as u64 - 1
    }

    fn release(&self, pos: u64) {
        let moved = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = pos.checked_sub(s.tail) else {
                return;
            };
            if let Some(d) = s.done.get_mut(i as usize) {
                *d = true;
            }
            let before = s.tail;
            while s.done.front() == Some(&true) {
                s.done.pop_front();
                s.tail += 1;
            }
            if s.tail != before {
                self.region.desc_tail().store(s.tail, Ordering::Release);
                true
            } else {
                false
            }
        };
        if moved {
            fence(Ordering::SeqCst);
            let wake = self.region.hub_wake();
            if wake.load(Ordering::Relaxed) != 0 && wake.swap(0, Ordering::Relaxed) != 0 {
                let mut buf = Vec::with_capacity(wire::HEAD_LEN);
                wire::wake(&mut buf);
                let _ = self.conn.send(&buf, &[]);
            }
        }
    }
}

/// A delivered batch, held by the reader; dropping it releases it.
pub(crate) struct Delivered {
    /// Its descriptor.
    pub desc: SubscriberDesc,
    /// The pool it lies in.
    pub pool: Arc<Mapping>,
    /// Where in the pool.
    pub offset: usize,
    /// The subscriber's region (the selection ring lives there).
    pub region: SubscriberRegion,
    pos: u64,
    releaser: Arc<Releaser>,
}

impl Delivered {
    /// The batch's bytes, `desc.len` of them (in memory the producer can still write:
    /// read them as data that may change).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the link checked that the slot lies within the pool; the mapping lives
        // as long as `self.pool`. The bytes may change under the reader (the producer can
        // write them), which every reader of batches allows for.
        unsafe { self.pool.bytes(self.offset, self.desc.len as usize) }.unwrap_or(&[])
    }

    /// Reports a batch that could not be read (skipped, or cut short) in the counters the
    /// daemon shows.
    pub(crate) fn report(&self, skipped: bool) {
        let c = if skipped {
            self.region.skipped()
        } else {
            self.region.cut_short()
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        self.releaser.release(self.pos);
    }
}

/// What a subscriber receives.
pub(crate) enum SubEvent {
    /// A batch.
    Batch(Delivered),
    /// Something the daemon told it.
    Notice(NoticeCode, String),
    /// Nothing within the timeout.
    Timeout,
}

/// A subscriber's connection to the daemon.
pub(crate) struct SubscriberLink {
    /// The id the daemon gave this subscriber.
    pub id: u64,
    /// The server.
    pub info: WireInfo,
    conn: Arc<Conn>,
    region: SubscriberRegion,
    pools: Vec<Pool>,
    /// The next descriptor to read.
    next: u64,
    releaser: Arc<Releaser>,
    wait: WaitMode,
    /// Frames received.
    buf: Vec<u8>,
    interrupt: Option<Arc<AtomicBool>>,
    /// A stopping daemon's notice, read while descriptors it published before were still
    /// unread: given out once they have been.
    stopping: Option<SubEvent>,
}

impl SubscriberLink {
    /// Sets up the link from a welcome; `wait` overrides the server's default when set.
    pub(crate) fn new(
        conn: Conn,
        id: u64,
        info: WireInfo,
        role: WelcomeRole,
        fds: Vec<OwnedFd>,
        wait: Option<WaitMode>,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> Result<SubscriberLink, TransportError> {
        let WelcomeRole::Subscriber {
            layout,
            wait: server_wait,
            ..
        } = role
        else {
            return Err(TransportError::Protocol(
                "expected a subscriber welcome".into(),
            ));
        };
        let [region_fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| {
            TransportError::Protocol("a subscriber welcome without its memory".into())
        })?;
        let region = super::map_region(&region_fd, layout.valid(), layout.len(), |map| {
            SubscriberRegion::new(map, layout)
        })?;
        let tail = region.desc_tail().load(Ordering::Relaxed);
        let conn = Arc::new(conn);
        Ok(SubscriberLink {
            id,
            info,
            releaser: Arc::new(Releaser {
                region: region.clone(),
                conn: Arc::clone(&conn),
                state: Mutex::new(Released {
                    tail,
                    done: VecDeque::new(),
                }),
            }),
            conn,
            region,
            pools: Vec::new(),
            next: tail,
            wait: wait.unwrap_or(server_wait),
            buf: vec![0; MAX_DAEMON_FRAME],
            interrupt,
            stopping: None,
        })
    }

    /// Tells the daemon the welcome arrived and the memory is mapped.
    pub(crate) fn ready(&mut self) -> Result<(), TransportError> {
        let mut out = Vec::with_capacity(wire::HEAD_LEN);
        wire::ready(&mut out);
        super::plink::send(&self.conn, &out)
    }

    /// The next batch or notice, by `deadline`. A stopping daemon says so once it has
    /// published what it had queued: what is still in the ring comes first.
    pub(crate) fn next(&mut self, deadline: &mut Deadline) -> Result<SubEvent, TransportError> {
        loop {
            if self.region.flags().load(Ordering::Relaxed) & FLAG_NOTICE != 0 {
                if let Some(notice) = self.read_socket(Duration::ZERO)? {
                    if let Some(notice) = self.unless_held(notice) {
                        return Ok(notice);
                    }
                }
            }
            let head = self.region.desc_head().load(Ordering::Acquire);
            if head != self.next {
                let cap = u64::from(self.region.layout().desc_cap);
                if head.wrapping_sub(self.next) > cap {
                    return Err(TransportError::Protocol(
                        "the daemon's ring head is out of bounds".into(),
                    ));
                }
                return self.take();
            }
            if let Some(notice) = self.stopping.take() {
                return Ok(notice);
            }
            if self
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                return Err(TransportError::Interrupted);
            }
            let until = || {
                let slice = Instant::now() + LIVENESS;
                deadline.instant().map_or(slice, |d| d.min(slice))
            };
            let next = self.next;
            let region = &self.region;
            let ready = wait::wait(self.wait, region.bell(), until, || {
                region.desc_head().load(Ordering::Acquire) != next
                    || region.flags().load(Ordering::Relaxed) & FLAG_NOTICE != 0
            });
            if !ready {
                // A daemon that died wakes nobody: look at the socket now and then.
                if let Some(notice) = self.read_socket(Duration::ZERO)? {
                    if let Some(notice) = self.unless_held(notice) {
                        return Ok(notice);
                    }
                }
                if deadline.passed() {
                    return Ok(SubEvent::Timeout);
                }
            }
        }
    }

    /// Takes the descriptor at `next` (which the daemon published).
    fn take(&mut self) -> Result<SubEvent, TransportError> {
        let desc = self.region.read_desc(self.next);
        let pool = match self.pool(desc.pool) {
            Some(p) => p,
            None => {
                self.wait_pool(desc.pool)?;
                match self.pool(desc.pool) {
                    Some(p) => p,
                    None => {
                        return Err(TransportError::Protocol(format!(
                            "descriptor names unknown pool {}",
                            desc.pool
                        )))
                    }
                }
            }
        };
        let offset = match pool.shape.slot(desc.slot) {
            Some((at, size)) if desc.len as usize <= size => at,
            _ => {
                return Err(TransportError::Protocol(format!(
                    "descriptor of slot {} ({} bytes) does not fit pool {}",
                    desc.slot, desc.len, desc.pool
                )))
            }
        };
        let map = Arc::clone(&pool.map);
        self.next += 1;
        let pos = self.releaser.hand_out();
        Ok(SubEvent::Batch(Delivered {
            desc,
            pool: map,
            offset,
            region: self.region.clone(),
            pos,
            releaser: Arc::clone(&self.releaser),
        }))
    }

    fn pool(&self, id: u64) -> Option<&Pool> {
        self.pools.iter().rev().find(|p| p.id == id)
    }

    /// `notice`, unless it says the daemon stops while descriptors it published are still
    /// unread: then it is held (in `stopping`) until they have been read.
    fn unless_held(&mut self, notice: SubEvent) -> Option<SubEvent> {
        let unread = self.region.desc_head().load(Ordering::Acquire) != self.next;
        match notice {
            SubEvent::Notice(NoticeCode::Stopping, _) if unread => {
                self.stopping = Some(notice);
                None
            }
            notice => Some(notice),
        }
    }

    /// Reads the socket until the announcement of `pool` arrived (a stopping daemon's
    /// notice read with it is held: the descriptor naming the pool came before it).
    fn wait_pool(&mut self, pool: u64) -> Result<(), TransportError> {
        let until = Instant::now() + ANNOUNCE_WAIT;
        while self.pool(pool).is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Protocol(format!(
                    "pool {pool} was never announced"
                )));
            }
            if let Some(notice) = self.read_socket(left)? {
                if let Some(SubEvent::Notice(code, why)) = self.unless_held(notice) {
                    return Err(TransportError::Protocol(format!(
                        "notice {code:?} while waiting for a pool: {why}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads what the daemon sent on the socket (waiting up to `wait` for the first
    /// frame): pools are mapped, retired pools dropped, a notice is returned.
    fn read_socket(&mut self, wait: Duration) -> Result<Option<SubEvent>, TransportError> {
        self.region
            .flags()
            .fetch_and(!FLAG_NOTICE, Ordering::Relaxed);
        let mut wait = wait;
        loop {
            let mut fds = Vec::new();
            let got = self
                .conn
                .recv(&mut self.buf, &mut fds, wait)
                .map_err(io_err("reading from the daemon"))?;
            wait = Duration::ZERO;
            let n = match got {
                Recv::Message(n) => n,
                Recv::Empty => return Ok(None),
                Recv::Closed => return Err(TransportError::Disconnected),
                Recv::Oversized => return Err(TransportError::Protocol("oversized frame".into())),
            };
            match wire::parse(&self.buf[..n])? {
                Frame::Pool(info) => {
                    let [fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| {
                        TransportError::Protocol("a pool announced without its memory".into())
                    })?;
                    self.add_pool(info, fd)?;
                }
                Frame::Retire(id) => self.pools.retain(|p| p.id != id),
                Frame::Notice(code, text) => {
                    return Ok(Some(SubEvent::Notice(code, text.to_owned())))
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

    fn add_pool(&mut self, info: PoolInfo, fd: OwnedFd) -> Result<(), TransportError> {
        let len = info
            .shape
            .len()
            .filter(|&n| n > 0)
            .ok_or_else(|| TransportError::Protocol("a pool of impossible size".into()))?;
        let size = memfd::check_sealed(fd.as_fd()).map_err(io_err("checking a pool"))?;
        if size < len {
            return Err(TransportError::Protocol(
                "a pool smaller than announced".into(),
            ));
        }
        if self.pools.len() >= MAX_POOLS {
            return Err(TransportError::Protocol("too many pools".into()));
        }
        let map = Mapping::new(fd.as_fd(), len, Access::Read).map_err(io_err("mapping a pool"))?;
        self.pools.retain(|p| p.id != info.pool);
        self.pools.push(Pool {
            id: info.pool,
            map: Arc::new(map),
            shape: info.shape,
        });
        Ok(())
    }

    /// Testing: the subscriber's region, to write what the library never would.
    #[cfg(feature = "daemon")]
    pub(crate) fn raw(&self) -> (&SubscriberRegion, &Conn) {
        (&self.region, &self.conn)
    }
}
