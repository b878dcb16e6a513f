//! Shared-memory segments, created once and reused.
//!
//! Creating shared memory is what makes a naive data path slow: a fresh memfd costs page
//! faults on both sides, 16x a plain copy at 387 KB and over 100x at 19 KB on our machines.
//! So the writer keeps a [`SegmentPool`]: a segment is created the first time it is needed,
//! passed to the reader once, and from then on only a 16-byte descriptor travels per batch.
//! The reader keeps the mapping in a [`SegmentTable`] and hands a segment back (a release
//! frame) when the last packet read from it is dropped; only then does the writer write
//! into it again. The writer never waits for a release: when every segment is out, the
//! batch travels inline instead.

use std::sync::{Arc, Mutex};

use ipc_channel::ipc::IpcSharedMemory;

use super::frame;

/// The smallest segment created; batches smaller than this share nothing but its size.
pub(crate) const MIN_SEGMENT: usize = 64 * 1024;
/// The most segments a reader maps at once.
pub(crate) const MAX_MAPPED: usize = 1 << 16;

struct Segment {
    shm: IpcSharedMemory,
}

/// How many segments, and bytes of them, a writer may have.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolLimits {
    /// Most segments.
    pub max_segments: usize,
    /// Most bytes over all segments.
    pub max_bytes: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_segments: 64,
            max_bytes: 64 << 20,
        }
    }
}

/// The writer's segments: which exist, which are free to write.
pub(crate) struct SegmentPool {
    segs: Vec<Segment>,
    /// Ids of segments the reader has given back, most recently freed last (reused first,
    /// as their pages are the likeliest to be in cache).
    free: Vec<u32>,
    bytes: usize,
    limits: PoolLimits,
}

/// A segment the writer may fill, and whether the reader must first be told of it.
pub(crate) struct Acquired<'a> {
    /// The segment's id.
    pub id: u32,
    /// Its memory.
    pub buf: &'a mut [u8],
    /// A new (or grown) segment the reader does not know yet: send it before the
    /// descriptor.
    pub announce: Option<IpcSharedMemory>,
}

impl SegmentPool {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        SegmentPool {
            segs: Vec::new(),
            free: Vec::new(),
            bytes: 0,
            limits,
        }
    }

    /// Number of segments created so far.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.segs.len()
    }

    /// Marks a segment as given back by the reader. Ids it does not know, or that are
    /// already free, are ignored (and reported as false).
    pub(crate) fn release(&mut self, id: u32) -> bool {
        let known = (id as usize) < self.segs.len() && !self.free.contains(&id);
        if known {
            self.free.push(id);
        }
        known
    }

    /// True when [`SegmentPool::acquire`] would give a segment for `len` bytes.
    pub(crate) fn can_acquire(&self, len: usize) -> bool {
        let size = len.max(MIN_SEGMENT).next_power_of_two();
        let fits = |id: &u32| self.segs[*id as usize].shm.len() >= len;
        let replaceable = |id: &u32| {
            self.bytes - self.segs[*id as usize].shm.len() + size <= self.limits.max_bytes
        };
        self.free.iter().any(fits)
            || (self.segs.len() < self.limits.max_segments
                && self.bytes.saturating_add(size) <= self.limits.max_bytes)
            || self.free.iter().any(replaceable)
    }

    /// A segment of at least `len` bytes that the reader does not hold, or `None` when
    /// every segment is out and no more may be created.
    pub(crate) fn acquire(&mut self, len: usize) -> Option<Acquired<'_>> {
        let size = len.max(MIN_SEGMENT).next_power_of_two();
        // A free segment that is large enough, the most recently freed first.
        if let Some(pos) = self
            .free
            .iter()
            .rposition(|&id| self.segs[id as usize].shm.len() >= len)
        {
            let id = self.free.remove(pos);
            return Some(self.writable(id, None));
        }
        // Grow: a new segment, or a free one too small replaced by a larger one.
        if self.segs.len() < self.limits.max_segments
            && self.bytes.saturating_add(size) <= self.limits.max_bytes
        {
            let id = u32::try_from(self.segs.len()).ok()?;
            // The mapping that wrote the zeros keeps its pages: the writer writes through
            // it and sends a second mapping to the reader.
            let shm = IpcSharedMemory::from_byte(0, size);
            let announce = shm.clone();
            self.bytes += size;
            self.segs.push(Segment { shm });
            return Some(self.writable(id, Some(announce)));
        }
        let pos = self
            .free
            .iter()
            .enumerate()
            .min_by_key(|(_, &id)| self.segs[id as usize].shm.len())?
            .0;
        let id = self.free[pos];
        let old = self.segs[id as usize].shm.len();
        if self.bytes - old + size > self.limits.max_bytes {
            return None;
        }
        self.free.remove(pos);
        let shm = IpcSharedMemory::from_byte(0, size);
        let announce = shm.clone();
        self.bytes = self.bytes - old + size;
        self.segs[id as usize] = Segment { shm };
        Some(self.writable(id, Some(announce)))
    }

    fn writable(&mut self, id: u32, announce: Option<IpcSharedMemory>) -> Acquired<'_> {
        let seg = &mut self.segs[id as usize];
        // SAFETY: the segment is not free-listed, so the reader has released it (or never
        // had it): nobody else reads or writes it until the descriptor we are about to
        // send. Our own copy (`announce`) is only serialized, never read through.
        let buf = unsafe { seg.shm.deref_mut() };
        Acquired { id, buf, announce }
    }
}

/// Where released segment ids wait until they are sent back to the writer.
#[derive(Default)]
pub(crate) struct Releases {
    ids: Mutex<Vec<u32>>,
}

impl Releases {
    /// Queues a segment id for release.
    pub(crate) fn push(&self, id: u32) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// Segment ids queued now.
    pub(crate) fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Appends a release frame of everything queued to `out`, emptying the queue; false
    /// (and nothing appended) when nothing is queued.
    pub(crate) fn take_into(&self, out: &mut Vec<u8>) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.is_empty() {
            return false;
        }
        frame::push_releases(out, ids.drain(..));
        true
    }
}

/// A batch in a shared-memory segment, held by a reader. Dropping it queues the release.
pub(crate) struct Lease {
    seg: Arc<IpcSharedMemory>,
    id: u32,
    len: usize,
    releases: Arc<Releases>,
}

impl Lease {
    /// The batch's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.seg[..self.len]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.releases.push(self.id);
    }
}

impl crate::packet::BatchStorage for Lease {
    fn bytes(&self) -> &[u8] {
        Lease::bytes(self)
    }
}

/// What a reader can do wrong with segments, or be told wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// A descriptor names a segment the writer never announced.
    #[error("descriptor names unknown segment {0}")]
    Unknown(u32),
    /// More segments than a reader maps.
    #[error("segment {0} would exceed the number of segments a reader maps")]
    OutOfRange(u32),
    /// A descriptor's length runs past the end of its segment.
    #[error("descriptor of {len} bytes overruns segment {seg} of {size} bytes")]
    Overrun {
        /// Segment id.
        seg: u32,
        /// Length in the descriptor.
        len: u32,
        /// Size of the segment.
        size: usize,
    },
}

/// The reader's mappings of the writer's segments.
#[derive(Default)]
pub(crate) struct SegmentTable {
    segs: std::collections::HashMap<u32, Arc<IpcSharedMemory>>,
}

impl SegmentTable {
    /// Records (or replaces) a segment the writer announced.
    pub(crate) fn insert(&mut self, id: u32, shm: IpcSharedMemory) -> Result<(), SegmentError> {
        if self.segs.len() >= MAX_MAPPED && !self.segs.contains_key(&id) {
            return Err(SegmentError::OutOfRange(id));
        }
        self.segs.insert(id, Arc::new(shm));
        Ok(())
    }

    /// A lease on the batch a descriptor names.
    pub(crate) fn lease(
        &self,
        d: &frame::Desc,
        releases: &Arc<Releases>,
    ) -> Result<Lease, SegmentError> {
        let seg = self.segs.get(&d.seg).ok_or(SegmentError::Unknown(d.seg))?;
        if d.len as usize > seg.len() {
            return Err(SegmentError::Overrun {
                seg: d.seg,
                len: d.len,
                size: seg.len(),
            });
        }
        Ok(Lease {
            seg: Arc::clone(seg),
            id: d.seg,
            len: d.len as usize,
            releases: Arc::clone(releases),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_segments: usize, max_bytes: usize) -> PoolLimits {
        PoolLimits {
            max_segments,
            max_bytes,
        }
    }

    #[test]
    fn segments_are_created_once_and_reused() {
        let mut pool = SegmentPool::new(limits(2, 1 << 20));
        assert!(pool.can_acquire(100));
        let a = pool.acquire(100).unwrap();
        assert_eq!((a.id, a.buf.len()), (0, MIN_SEGMENT));
        assert!(a.announce.is_some());
        let b = pool.acquire(100).unwrap();
        assert_eq!(b.id, 1);
        assert!(!pool.can_acquire(100));
        assert!(pool.acquire(100).is_none(), "both segments are out");
        assert!(pool.release(0));
        assert!(!pool.release(0), "a double release is refused");
        assert!(!pool.release(7), "an unknown id is refused");
        let again = pool.acquire(100).unwrap();
        assert_eq!(again.id, 0);
        assert!(
            again.announce.is_none(),
            "a reused segment is not announced again"
        );
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn a_free_segment_too_small_is_replaced_within_the_byte_limit() {
        let mut pool = SegmentPool::new(limits(1, 1 << 20));
        pool.acquire(10).unwrap();
        pool.release(0);
        let big = pool.acquire(300_000).unwrap();
        assert_eq!((big.id, big.buf.len()), (0, 512 * 1024));
        assert!(big.announce.is_some());
        pool.release(0);
        assert!(!pool.can_acquire(2 << 20));
        assert!(
            pool.acquire(2 << 20).is_none(),
            "over the byte limit: inline"
        );
    }

    #[test]
    fn the_table_checks_descriptors() {
        let releases = Arc::new(Releases::default());
        let mut table = SegmentTable::default();
        table
            .insert(2, IpcSharedMemory::from_bytes(&[1, 2, 3, 4]))
            .unwrap();
        let d = |seg, len| frame::Desc {
            seg,
            len,
            seq: 0,
            lost: 0,
            fresh: false,
        };
        assert_eq!(
            table.lease(&d(0, 1), &releases).err(),
            Some(SegmentError::Unknown(0))
        );
        assert!(matches!(
            table.lease(&d(2, 5), &releases),
            Err(SegmentError::Overrun { .. })
        ));
        let lease = table.lease(&d(2, 3), &releases).unwrap();
        assert_eq!(lease.bytes(), &[1, 2, 3]);
        drop(lease);
        let mut buf = Vec::new();
        assert!(releases.take_into(&mut buf));
        match frame::parse(&buf).unwrap() {
            frame::Frame::Releases(ids) => assert_eq!(ids.collect::<Vec<_>>(), [2]),
            other => panic!("{other:?}"),
        }
        assert!(!releases.take_into(&mut buf), "the queue was emptied");
    }
}
