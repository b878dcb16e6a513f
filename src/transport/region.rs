//! The memory a client shares with its daemon: single-producer single-consumer rings of
//! descriptors, and the words with which each side wakes the other.
//!
//! The daemon creates one region per client (a sealed memfd, see [`super::memfd`]), maps it
//! and hands it over in the welcome. Both sides then move descriptors through it without
//! a system call; the socket carries only rare messages (welcome, memory announcements,
//! notices, and a wake-up when the other side said it sleeps).
//!
//! Everything the other side can write is untrusted: the daemon checks every index, head,
//! tail and length it reads from a client's region before using it, and cuts the client
//! off when one does not hold ([`RingError`]). A client can only confuse its own region:
//! no region is shared by two clients.
//!
//! # Producer region
//!
//! ```text
//! offset  written by  what
//!    0    daemon      hub_wake: 1 while the daemon sleeps and wants a wake-up frame
//!  128    producer    desc_head  (u64, batches published)
//!  256    daemon      desc_tail  (u64, batches taken)
//!  384    daemon      rel_head   (u64, slots given back)
//!  512    producer    rel_tail   (u64, slots taken back)
//!  640    daemon/prod bell: word (u32) at 640, parked flag (u32) at 704: the producer
//!                     sleeps there when it has no free slot
//!  768    daemon      flags (u32): WANT_INDEX (bit 0), index mode (bits 1-2), NOTICE
//!  896    producer    source_dropped (u64): packets its source lost, as it reports them
//!  960    producer    waiting (u32): 1 while it waits for a free slot
//! 1024    producer    descriptor ring: desc_cap entries of 32 bytes
//!   ..    daemon      release ring: rel_cap slot ids (u32)
//! ```
//!
//! # Subscriber region
//!
//! ```text
//!    0    daemon      hub_wake
//!  128    daemon      desc_head
//!  256    subscriber  desc_tail: everything before it is released
//!  384    daemon/sub  bell: word (u32) at 384, parked flag (u32) at 448
//!  512    daemon      flags (u32): NOTICE (bit 2): read the socket
//!  640    subscriber  counters: skipped (u64) at 640, cut short (u64) at 648
//! 1024    daemon      descriptor ring: desc_cap entries of 64 bytes
//!   ..    daemon      selection ring: sel_cap packet indices (u32), group members only
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::memfd::Mapping;
use super::wait::Bell;

/// Heads, tails and wait words each get a line of their own (two cache lines, against
/// false sharing and the adjacent-line prefetcher).
const LINE: usize = 128;
/// Where the rings start.
const RINGS: usize = 1024;
/// Length of a producer's descriptor.
pub(crate) const PDESC_LEN: usize = 32;
/// Length of a subscriber's descriptor.
pub(crate) const SDESC_LEN: usize = 64;

/// Region flag: the daemon wants a flow index in every batch (see `crate::batch`).
pub(crate) const FLAG_WANT_INDEX: u32 = 1;
/// Region flags: which hash the index must hold (bits 1-2: 0 flow, 1 ip-pair).
pub(crate) const FLAG_INDEX_IPPAIR: u32 = 1 << 1;
/// Region flag: the daemon sent frames on the socket; read them.
pub(crate) const FLAG_NOTICE: u32 = 1 << 2;

/// What is wrong with a ring a peer writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A head or tail that moved backwards or beyond what the ring holds.
    #[error("{what} {value} is out of bounds (expected {low}..={high})")]
    Index {
        /// Which index.
        what: &'static str,
        /// What the peer wrote.
        value: u64,
        /// Lowest acceptable value.
        low: u64,
        /// Highest acceptable value.
        high: u64,
    },
    /// A descriptor naming something that does not exist or is not the peer's to name.
    #[error("descriptor {0}")]
    Descriptor(String),
}

/// Checks an index the peer moves: it may only stay or advance, never past `high`.
pub(crate) fn check_index(
    what: &'static str,
    value: u64,
    low: u64,
    high: u64,
) -> Result<u64, RingError> {
    if value.wrapping_sub(low) <= high.wrapping_sub(low) {
        Ok(value)
    } else {
        Err(RingError::Index {
            what,
            value,
            low,
            high,
        })
    }
}

/// Sizes of a producer region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProducerLayout {
    /// Descriptor ring entries (a power of two).
    pub desc_cap: u32,
    /// Release ring entries (a power of two, at least the number of slots).
    pub rel_cap: u32,
}

impl ProducerLayout {
    /// Bytes the region needs (whole pages).
    pub(crate) fn len(&self) -> usize {
        page(RINGS + self.desc_cap as usize * PDESC_LEN + self.rel_cap as usize * 4)
    }

    /// True when the sizes are ones this build creates and accepts.
    pub(crate) fn valid(&self) -> bool {
        let ok = |n: u32| n.is_power_of_two() && n <= 1 << 20;
        ok(self.desc_cap) && ok(self.rel_cap)
    }
}

/// Sizes of a subscriber region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SubscriberLayout {
    /// Descriptor ring entries (a power of two): the credit window.
    pub desc_cap: u32,
    /// Selection ring entries (a power of two, or 0 for a subscriber outside any group).
    pub sel_cap: u32,
}

impl SubscriberLayout {
    /// Bytes the region needs (whole pages).
    pub(crate) fn len(&self) -> usize {
        page(RINGS + self.desc_cap as usize * SDESC_LEN + self.sel_cap as usize * 4)
    }

    /// True when the sizes are ones this build creates and accepts.
    pub(crate) fn valid(&self) -> bool {
        self.desc_cap.is_power_of_two()
            && self.desc_cap <= 1 << 16
            && (self.sel_cap == 0 || self.sel_cap.is_power_of_two())
            && self.sel_cap <= 1 << 26
    }
}

fn page(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

/// Typed access to words of a mapped region.
#[derive(Clone)]
struct Words {
    map: Arc<Mapping>,
}

impl Words {
    fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.map.len() && off.is_multiple_of(4));
        // SAFETY: within the mapping (checked), 4-aligned (the mapping is page-aligned),
        // and the memory lives as long as `self.map`; AtomicU32 has the layout of u32, and
        // every process accesses these words atomically.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }
    fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.map.len() && off.is_multiple_of(8));
        // SAFETY: as in `u32`, 8-aligned.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }
    /// `n` consecutive words from `off`, checked once.
    fn u32s(&self, off: usize, n: usize) -> &[AtomicU32] {
        assert!(n <= self.map.len() / 4 && off <= self.map.len() - n * 4 && off.is_multiple_of(4));
        // SAFETY: as in `u32`, for each of the `n` words (all within the mapping, checked).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off) as *const AtomicU32, n) }
    }
}

/// A producer's descriptor: one batch in one slot of its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ProducerDesc {
    /// Slot of the producer's pool.
    pub slot: u32,
    /// Length of the batch at the start of the slot.
    pub len: u32,
    /// Packets in the batch.
    pub count: u32,
    /// `crate::batch` index flags the producer says the batch carries.
    pub flags: u32,
    /// The producer's own sequence number of the batch.
    pub seq: u64,
    /// Captured bytes of its packets (for the counters).
    pub bytes: u64,
}

/// A subscriber's descriptor: one batch delivered to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct SubscriberDesc {
    /// The pool (producer memory) the batch lies in.
    pub pool: u64,
    /// Slot of that pool.
    pub slot: u32,
    /// Length of the batch.
    pub len: u32,
    /// The server's sequence number of the batch.
    pub seq: u64,
    /// Packets in the whole batch.
    pub count: u32,
    /// `DESC_*` flags.
    pub flags: u32,
    /// Batches dropped for this subscriber just before this one.
    pub lost_batches: u64,
    /// Packets in them.
    pub lost_packets: u64,
    /// Where this member's selection starts in the selection ring.
    pub sel_start: u64,
    /// Packets selected for this member (all of them without a selection).
    pub sel_count: u32,
}

/// Producer descriptor flag: the batch carries a flow index.
pub(crate) const PDESC_INDEXED: u32 = 1;
/// Producer descriptor flag: its index holds address-pair hashes.
pub(crate) const PDESC_IPPAIR: u32 = 2;

/// Descriptor flag: a group member's packets are listed in the selection ring.
pub(crate) const DESC_SELECTED: u32 = 1;
/// Descriptor flag: the group's assignment of flows to members changed before this batch.
pub(crate) const DESC_REASSIGNED: u32 = 2;

/// The producer's view of its region.
#[derive(Clone)]
pub(crate) struct ProducerRegion {
    words: Words,
    layout: ProducerLayout,
}

/// The daemon's and the subscriber's view of a subscriber region.
#[derive(Clone)]
pub(crate) struct SubscriberRegion {
    words: Words,
    layout: SubscriberLayout,
}

macro_rules! word {
    ($name:ident, $ty:ident, $atomic:ty, $off:expr, $doc:literal) => {
        #[doc = $doc]
        pub(crate) fn $name(&self) -> &$atomic {
            self.words.$ty($off)
        }
    };
}

impl ProducerRegion {
    /// A view of `map`, which must be at least `layout.len()` bytes.
    pub(crate) fn new(map: Arc<Mapping>, layout: ProducerLayout) -> Option<ProducerRegion> {
        (layout.valid() && map.len() >= layout.len()).then(|| ProducerRegion {
            words: Words { map },
            layout,
        })
    }

    /// The mapping (tests write into it what a hostile producer would).
    #[cfg(feature = "daemon")]
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.words.map
    }

    /// Its sizes.
    pub(crate) fn layout(&self) -> ProducerLayout {
        self.layout
    }

    word!(
        hub_wake,
        u32,
        AtomicU32,
        0,
        "1 while the daemon sleeps and wants a wake-up frame."
    );
    word!(
        desc_head,
        u64,
        AtomicU64,
        LINE,
        "Descriptors published (producer)."
    );
    word!(
        desc_tail,
        u64,
        AtomicU64,
        2 * LINE,
        "Descriptors taken (daemon)."
    );
    word!(
        rel_head,
        u64,
        AtomicU64,
        3 * LINE,
        "Slots given back (daemon)."
    );
    word!(
        rel_tail,
        u64,
        AtomicU64,
        4 * LINE,
        "Slots taken back (producer)."
    );
    word!(flags, u32, AtomicU32, 6 * LINE, "Daemon flags (`FLAG_*`).");
    word!(
        source_dropped,
        u64,
        AtomicU64,
        7 * LINE,
        "Packets the producer's source lost."
    );
    word!(
        waiting,
        u32,
        AtomicU32,
        7 * LINE + 64,
        "1 while the producer waits for a free slot (set before it asks for a wake-up)."
    );

    /// The bell on which the producer sleeps, waiting for free slots.
    pub(crate) fn bell(&self) -> Bell<'_> {
        Bell {
            word: self.words.u32(5 * LINE),
            parked: self.words.u32(5 * LINE + 64),
        }
    }

    fn desc_at(&self, pos: u64) -> usize {
        RINGS + (pos as usize & (self.layout.desc_cap as usize - 1)) * PDESC_LEN
    }

    /// Writes the descriptor at ring position `pos` (producer).
    pub(crate) fn write_desc(&self, pos: u64, d: &ProducerDesc) {
        let at = self.desc_at(pos);
        let w = |i: usize, v: u64| self.words.u64(at + 8 * i).store(v, Ordering::Relaxed);
        w(0, u64::from(d.slot) | u64::from(d.len) << 32);
        w(1, u64::from(d.count) | u64::from(d.flags) << 32);
        w(2, d.seq);
        w(3, d.bytes);
    }

    /// Reads the descriptor at ring position `pos` (daemon; unchecked values).
    pub(crate) fn read_desc(&self, pos: u64) -> ProducerDesc {
        let at = self.desc_at(pos);
        let r = |i: usize| self.words.u64(at + 8 * i).load(Ordering::Relaxed);
        let (w0, w1) = (r(0), r(1));
        ProducerDesc {
            slot: w0 as u32,
            len: (w0 >> 32) as u32,
            count: w1 as u32,
            flags: (w1 >> 32) as u32,
            seq: r(2),
            bytes: r(3),
        }
    }

    fn rel_at(&self, pos: u64) -> usize {
        RINGS
            + self.layout.desc_cap as usize * PDESC_LEN
            + (pos as usize & (self.layout.rel_cap as usize - 1)) * 4
    }

    /// Writes a released slot at ring position `pos` (daemon).
    pub(crate) fn write_release(&self, pos: u64, slot: u32) {
        self.words
            .u32(self.rel_at(pos))
            .store(slot, Ordering::Relaxed);
    }

    /// Reads the released slot at ring position `pos` (producer).
    pub(crate) fn read_release(&self, pos: u64) -> u32 {
        self.words.u32(self.rel_at(pos)).load(Ordering::Relaxed)
    }
}

impl SubscriberRegion {
    /// A view of `map`, which must be at least `layout.len()` bytes.
    pub(crate) fn new(map: Arc<Mapping>, layout: SubscriberLayout) -> Option<SubscriberRegion> {
        (layout.valid() && map.len() >= layout.len()).then(|| SubscriberRegion {
            words: Words { map },
            layout,
        })
    }

    /// The mapping (tests write into it what a hostile subscriber would).
    #[cfg(feature = "daemon")]
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.words.map
    }

    /// Its sizes.
    pub(crate) fn layout(&self) -> SubscriberLayout {
        self.layout
    }

    word!(
        hub_wake,
        u32,
        AtomicU32,
        0,
        "1 while the daemon sleeps and wants a wake-up frame."
    );
    word!(
        desc_head,
        u64,
        AtomicU64,
        LINE,
        "Descriptors delivered (daemon)."
    );
    word!(
        desc_tail,
        u64,
        AtomicU64,
        2 * LINE,
        "Descriptors released (subscriber)."
    );
    word!(
        flags,
        u32,
        AtomicU32,
        4 * LINE,
        "Daemon flags (`FLAG_NOTICE`)."
    );
    word!(
        skipped,
        u64,
        AtomicU64,
        5 * LINE,
        "Malformed batches the subscriber skipped."
    );
    word!(
        cut_short,
        u64,
        AtomicU64,
        5 * LINE + 8,
        "Batches whose records ran out early."
    );

    /// The bell on which the subscriber sleeps, waiting for batches.
    pub(crate) fn bell(&self) -> Bell<'_> {
        Bell {
            word: self.words.u32(3 * LINE),
            parked: self.words.u32(3 * LINE + 64),
        }
    }

    fn desc_at(&self, pos: u64) -> usize {
        RINGS + (pos as usize & (self.layout.desc_cap as usize - 1)) * SDESC_LEN
    }

    /// Writes the descriptor at ring position `pos` (daemon).
    pub(crate) fn write_desc(&self, pos: u64, d: &SubscriberDesc) {
        let at = self.desc_at(pos);
        let w = |i: usize, v: u64| self.words.u64(at + 8 * i).store(v, Ordering::Relaxed);
        w(0, d.pool);
        w(1, u64::from(d.slot) | u64::from(d.len) << 32);
        w(2, d.seq);
        w(3, u64::from(d.count) | u64::from(d.flags) << 32);
        w(4, d.lost_batches);
        w(5, d.lost_packets);
        w(6, d.sel_start);
        w(7, u64::from(d.sel_count));
    }

    /// Reads the descriptor at ring position `pos` (subscriber).
    pub(crate) fn read_desc(&self, pos: u64) -> SubscriberDesc {
        let at = self.desc_at(pos);
        let r = |i: usize| self.words.u64(at + 8 * i).load(Ordering::Relaxed);
        let (w1, w3) = (r(1), r(3));
        SubscriberDesc {
            pool: r(0),
            slot: w1 as u32,
            len: (w1 >> 32) as u32,
            seq: r(2),
            count: w3 as u32,
            flags: (w3 >> 32) as u32,
            lost_batches: r(4),
            lost_packets: r(5),
            sel_start: r(6),
            sel_count: r(7) as u32,
        }
    }

    fn sel_at(&self, pos: u64) -> usize {
        RINGS
            + self.layout.desc_cap as usize * SDESC_LEN
            + (pos as usize & (self.layout.sel_cap as usize - 1)) * 4
    }

    /// Reads the packet index at selection position `pos` (subscriber).
    pub(crate) fn read_sel(&self, pos: u64) -> u32 {
        self.words.u32(self.sel_at(pos)).load(Ordering::Relaxed)
    }

    /// The selection ring's words at positions `pos..pos + n` (at most the ring's size):
    /// two slices, the second one non-empty when the range wraps round the ring's end.
    pub(crate) fn sels(&self, pos: u64, n: u32) -> (&[AtomicU32], &[AtomicU32]) {
        let cap = self.layout.sel_cap as usize;
        let n = (n as usize).min(cap);
        if n == 0 {
            return (&[], &[]);
        }
        let base = RINGS + self.layout.desc_cap as usize * SDESC_LEN;
        let start = pos as usize & (cap - 1);
        let first = n.min(cap - start);
        (
            self.words.u32s(base + start * 4, first),
            self.words.u32s(base, n - first),
        )
    }

    /// Writes `indices` at selection positions from `pos` (daemon): one bounds check per
    /// run of words rather than one per word.
    pub(crate) fn write_sels(&self, pos: u64, indices: &[u32]) {
        let (a, b) = self.sels(pos, indices.len() as u32);
        assert_eq!(
            a.len() + b.len(),
            indices.len(),
            "selection beyond the ring"
        );
        for (w, &i) in a.iter().chain(b).zip(indices) {
            w.store(i, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::memfd::{self, Access};
    use std::os::fd::AsFd;

    fn map(len: usize) -> Arc<Mapping> {
        let fd = memfd::create(c"region", len).unwrap();
        Arc::new(Mapping::new(fd.as_fd(), len, Access::ReadWrite).unwrap())
    }

    #[test]
    fn descriptors_round_trip_through_the_rings() {
        let layout = ProducerLayout {
            desc_cap: 8,
            rel_cap: 16,
        };
        let p = ProducerRegion::new(map(layout.len()), layout).unwrap();
        let d = ProducerDesc {
            slot: 7,
            len: 4096,
            count: 3,
            flags: 1,
            seq: u64::MAX,
            bytes: 99,
        };
        p.write_desc(13, &d);
        assert_eq!(p.read_desc(13), d);
        assert_eq!(p.read_desc(5), d, "positions wrap around the ring");
        p.write_release(17, 42);
        assert_eq!(p.read_release(1), 42);

        let layout = SubscriberLayout {
            desc_cap: 4,
            sel_cap: 8,
        };
        let s = SubscriberRegion::new(map(layout.len()), layout).unwrap();
        let d = SubscriberDesc {
            pool: 1 << 40,
            slot: 2,
            len: 3,
            seq: 4,
            count: 5,
            flags: DESC_SELECTED | DESC_REASSIGNED,
            lost_batches: 6,
            lost_packets: 7,
            sel_start: 8,
            sel_count: 9,
        };
        s.write_desc(6, &d);
        assert_eq!(s.read_desc(2), d);
        s.write_sels(9, &[77]);
        assert_eq!(s.read_sel(1), 77);
        // A run that wraps round the ring's end.
        s.write_sels(14, &[1, 2, 3, 4]);
        assert_eq!(
            (0..4).map(|k| s.read_sel(22 + k)).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let (a, b) = s.sels(6, 4);
        let words: Vec<u32> = a
            .iter()
            .chain(b)
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        assert_eq!((a.len(), b.len(), words), (2, 2, vec![1, 2, 3, 4]));
        assert_eq!(s.sels(0, 0).0.len(), 0);
    }

    #[test]
    fn too_small_or_odd_layouts_are_refused() {
        let small = map(4096);
        let layout = ProducerLayout {
            desc_cap: 1024,
            rel_cap: 1024,
        };
        assert!(ProducerRegion::new(Arc::clone(&small), layout).is_none());
        let odd = SubscriberLayout {
            desc_cap: 3,
            sel_cap: 0,
        };
        assert!(SubscriberRegion::new(small, odd).is_none());
    }

    #[test]
    fn indices_may_only_advance_within_bounds() {
        assert_eq!(check_index("tail", 5, 3, 10), Ok(5));
        assert_eq!(check_index("tail", 3, 3, 10), Ok(3));
        assert!(check_index("tail", 2, 3, 10).is_err(), "backwards");
        assert!(check_index("tail", 11, 3, 10).is_err(), "beyond");
        // Across the wrap of u64.
        assert_eq!(check_index("head", 1, u64::MAX - 1, 4), Ok(1));
        assert!(check_index("head", 5, u64::MAX - 1, 4).is_err());
    }
}
