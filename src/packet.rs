//! The packet model: what a capture program hands in and what a reader gets back.
//!
//! A packet is anything that implements [`AsIpcPacket`]: a capture timestamp, the captured
//! bytes and the original (on-the-wire) length, exactly what a pcap record carries. The
//! library never needs to own a packet to send it: [`crate::ConnectedIpc::send`] and the
//! broker's producer write the bytes of a whole slice of packets into one batch in one pass.
//!
//! [`Packet`] is the owned form. [`PacketRef`] is a zero-copy view into a received batch,
//! and [`SharedPacket`] is a view that keeps its batch alive by reference counting, so it
//! can be held while more packets are received.

use std::cell::OnceCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Something that can be sent as a packet: a timestamp, captured bytes and the original
/// length on the wire.
pub trait AsIpcPacket {
    /// When the packet was captured. Kept to the nanosecond.
    fn timestamp(&self) -> &SystemTime;
    /// The captured bytes (at most the snap length of the capture).
    fn data(&self) -> &[u8];
    /// The length of the packet on the wire, which is larger than `data().len()` when the
    /// capture cut the packet short. Defaults to the captured length.
    fn orig_len(&self) -> usize {
        self.data().len()
    }
    /// The timestamp as nanoseconds since the Unix epoch (saturating), which is how a batch
    /// stores it. The default converts [`AsIpcPacket::timestamp`]; a type that has the
    /// capture's nanoseconds at hand (a pcap record does) should return them directly,
    /// which spares a conversion per packet on the send path.
    fn timestamp_nanos(&self) -> u64 {
        nanos_since_epoch(self.timestamp())
    }
}

/// An owned packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    ts: SystemTime,
    /// `ts` as stored in a batch, computed once.
    ts_nanos: u64,
    data: Vec<u8>,
    orig_len: usize,
}

impl Packet {
    /// A packet whose original length is the length of `data`.
    pub fn new(timestamp: SystemTime, data: Vec<u8>) -> Packet {
        let orig_len = data.len();
        Packet::with_orig_len(timestamp, data, orig_len)
    }

    /// A packet that was cut short by the capture: `orig_len` is its length on the wire.
    pub fn with_orig_len(timestamp: SystemTime, data: Vec<u8>, orig_len: usize) -> Packet {
        Packet {
            ts: timestamp,
            ts_nanos: nanos_since_epoch(&timestamp),
            data,
            orig_len,
        }
    }

    /// Copies any packet into an owned one.
    pub fn from_packet<P: AsIpcPacket + ?Sized>(packet: &P) -> Packet {
        Packet::with_orig_len(
            *packet.timestamp(),
            packet.data().to_vec(),
            packet.orig_len(),
        )
    }

    /// Gives up the packet's bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

impl AsIpcPacket for Packet {
    fn timestamp(&self) -> &SystemTime {
        &self.ts
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn orig_len(&self) -> usize {
        self.orig_len
    }
    fn timestamp_nanos(&self) -> u64 {
        self.ts_nanos
    }
}

impl<P: AsIpcPacket + ?Sized> AsIpcPacket for &P {
    fn timestamp(&self) -> &SystemTime {
        (**self).timestamp()
    }
    fn data(&self) -> &[u8] {
        (**self).data()
    }
    fn orig_len(&self) -> usize {
        (**self).orig_len()
    }
    fn timestamp_nanos(&self) -> u64 {
        (**self).timestamp_nanos()
    }
}

impl<P: AsIpcPacket + ?Sized> AsIpcPacket for Arc<P> {
    fn timestamp(&self) -> &SystemTime {
        (**self).timestamp()
    }
    fn data(&self) -> &[u8] {
        (**self).data()
    }
    fn orig_len(&self) -> usize {
        (**self).orig_len()
    }
    fn timestamp_nanos(&self) -> u64 {
        (**self).timestamp_nanos()
    }
}

/// A packet read in place from a batch: nothing is copied, the bytes borrow the batch.
///
/// The timestamp is kept as the batch stores it, in nanoseconds
/// ([`PacketRef::timestamp_nanos`]); a `SystemTime` is built only when
/// [`AsIpcPacket::timestamp`] asks for one.
#[derive(Clone, Debug)]
pub struct PacketRef<'a> {
    ts: OnceCell<SystemTime>,
    ts_nanos: u64,
    orig_len: u32,
    data: &'a [u8],
}

impl PartialEq for PacketRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.ts_nanos == other.ts_nanos
            && self.orig_len == other.orig_len
            && self.data == other.data
    }
}

impl Eq for PacketRef<'_> {}

impl<'a> PacketRef<'a> {
    /// A view of a packet: its capture time in nanoseconds since the Unix epoch, its
    /// length on the wire and its captured bytes.
    #[inline]
    pub fn new(ts_nanos: u64, orig_len: u32, data: &'a [u8]) -> PacketRef<'a> {
        PacketRef {
            ts: OnceCell::new(),
            ts_nanos,
            orig_len,
            data,
        }
    }

    /// The captured bytes, borrowed from the batch for its whole lifetime.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The timestamp as nanoseconds since the Unix epoch, as it is stored in the batch.
    pub fn timestamp_nanos(&self) -> u64 {
        self.ts_nanos
    }

    /// Copies the packet into an owned [`Packet`].
    pub fn to_packet(&self) -> Packet {
        Packet::from_packet(self)
    }
}

impl AsIpcPacket for PacketRef<'_> {
    fn timestamp(&self) -> &SystemTime {
        self.ts.get_or_init(|| time_from_nanos(self.ts_nanos))
    }
    fn data(&self) -> &[u8] {
        self.data
    }
    fn orig_len(&self) -> usize {
        self.orig_len as usize
    }
    fn timestamp_nanos(&self) -> u64 {
        self.ts_nanos
    }
}

/// The bytes a [`SharedPacket`] points into. Implemented by the receive buffers of the
/// transport (a private copy of an inline batch, or a lease on a shared-memory segment).
pub(crate) trait BatchStorage: Send + Sync {
    /// The whole batch buffer.
    fn bytes(&self) -> &[u8];
}

/// A received packet that keeps its batch alive by reference counting.
///
/// [`crate::Client::recv`] hands these out: they cost no copy and no allocation each, and
/// they stay valid after `recv` is called again. The batch's memory is given back to the
/// sender once the last packet of the batch is dropped, so holding packets for a long time
/// makes the sender fall back to slower paths; copy what must be kept
/// ([`Packet::from_packet`]).
#[derive(Clone)]
pub struct SharedPacket {
    /// Keeps the batch, and so `data`, alive and unchanged.
    #[allow(
        dead_code,
        reason = "held for what it keeps alive; read only by a debug check"
    )]
    storage: Arc<dyn BatchStorage>,
    /// Built from `ts_nanos` when first asked for.
    ts: OnceLock<SystemTime>,
    ts_nanos: u64,
    /// The captured bytes, inside `storage`: read without going through it again.
    data: *const u8,
    caplen: u32,
    orig_len: u32,
}

// SAFETY: `data` points into the bytes of `storage`, which is `Send + Sync` and which no one
// writes or moves while any `SharedPacket` holds the `Arc` (an inline batch is a Vec that
// is never touched again; a shared-memory segment is written again only after the last
// reference is dropped and its release sent). So the pointer may be read from any thread.
unsafe impl Send for SharedPacket {}
// SAFETY: as above; `SharedPacket` gives out only shared references to those bytes.
unsafe impl Sync for SharedPacket {}

impl SharedPacket {
    /// A packet of the batch in `storage`; `at` must borrow from `storage.bytes()`.
    pub(crate) fn new(storage: Arc<dyn BatchStorage>, at: &PacketRef<'_>) -> Self {
        debug_assert!({
            let all = storage.bytes().as_ptr_range();
            at.data.is_empty() || all.contains(&at.data.as_ptr())
        });
        SharedPacket {
            storage,
            ts: OnceLock::new(),
            ts_nanos: at.ts_nanos,
            data: at.data.as_ptr(),
            caplen: at.data.len() as u32,
            orig_len: at.orig_len,
        }
    }

    /// A borrowed view of the packet.
    pub fn as_ref(&self) -> PacketRef<'_> {
        PacketRef::new(self.ts_nanos, self.orig_len, self.data())
    }
}

impl AsIpcPacket for SharedPacket {
    fn timestamp(&self) -> &SystemTime {
        self.ts.get_or_init(|| time_from_nanos(self.ts_nanos))
    }
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: `data` and `caplen` describe bytes inside the batch that `storage` keeps
        // alive and unchanged for as long as `self` lives (see the `Send` impl above), and
        // they were checked to lie within it when the batch was read.
        unsafe { std::slice::from_raw_parts(self.data, self.caplen as usize) }
    }
    fn orig_len(&self) -> usize {
        self.orig_len as usize
    }
    fn timestamp_nanos(&self) -> u64 {
        self.ts_nanos
    }
}

impl std::fmt::Debug for SharedPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPacket")
            .field("ts_nanos", &self.ts_nanos)
            .field("caplen", &self.caplen)
            .field("orig_len", &self.orig_len)
            .finish()
    }
}

/// Nanoseconds since the Unix epoch, saturating: times before 1970 become 0 and times after
/// the year 2554 become `u64::MAX`.
#[inline]
pub fn nanos_since_epoch(ts: &SystemTime) -> u64 {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => d
            .as_secs()
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(u64::from(d.subsec_nanos())))
            .unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// The `SystemTime` of a count of nanoseconds since the Unix epoch.
pub fn time_from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_packet_keeps_original_length() {
        let ts = time_from_nanos(1_700_000_000_123_456_789);
        let p = Packet::new(ts, vec![1, 2, 3]);
        assert_eq!(p.orig_len(), 3);
        let cut = Packet::with_orig_len(ts, vec![1, 2], 1514);
        assert_eq!(cut.orig_len(), 1514);
        assert_eq!(cut.data(), &[1, 2]);
        assert_eq!(
            nanos_since_epoch(cut.timestamp()),
            1_700_000_000_123_456_789
        );
    }

    #[test]
    fn timestamps_saturate() {
        assert_eq!(nanos_since_epoch(&(UNIX_EPOCH - Duration::from_secs(1))), 0);
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert_eq!(nanos_since_epoch(&far), u64::MAX);
    }
}
