//! The batch wire format: many packets in one contiguous buffer, written once, read in place.
//!
//! A batch is what travels between processes, in a shared-memory slot or inline in a
//! message. The sender writes it in one pass from a slice of [`AsIpcPacket`]; every reader
//! walks it where it lies, with no allocation and no copy per packet.
//!
//! # Byte layout (version 2)
//!
//! All integers are **little-endian**. Offsets are from the start of the batch.
//!
//! ```text
//! header, 40 bytes:
//!   0  [u8; 4]  magic      "PKTB" (0x50 0x4B 0x54 0x42)
//!   4  u16      version    2
//!   6  u16      header_len 40 (the offset of the first record)
//!   8  u32      count      number of records
//!  12  u32      total_len  length of the whole batch in bytes, header and index included
//!  16  u64      seq        sequence number the sender gave the batch
//!  24  u64      lost       batches lost just before this one (0 when none)
//!  32  u32      index_off  offset of the flow index, or 0 when the batch has none
//!  36  u32      flags      bit 0: the index holds address-pair hashes (else flow hashes)
//!
//! then `count` records, back to back, each starting at an offset that is a multiple of 8:
//!   0  u64      ts_nanos   capture time, nanoseconds since 1970-01-01T00:00:00Z
//!   8  u32      caplen     number of captured bytes that follow
//!  12  u32      origlen    length of the packet on the wire (>= caplen when cut by a snaplen)
//!  16  [u8; caplen]        the captured bytes
//!      [u8; pad]           0 to 7 zero bytes, so that the next record starts on a multiple of 8
//!
//! then, when index_off is not 0 (it is where the records end), `count` index entries:
//!   0  u32      offset     where the record of packet i starts
//!   4  u32      hash       packet i's flow hash (see `crate::flow`)
//! ```
//!
//! The record of packet *i+1* starts at `offset_i + 16 + round_up(caplen_i, 8)`. The
//! records end exactly at `index_off` when there is an index, else at `total_len`, which is
//! always a multiple of 8. A reader must check, before reading a record, that its 16-byte
//! head and its `caplen` bytes lie within the records (which must themselves lie within
//! the buffer it was given). [`BatchView::parse`] checks the whole batch at once; the
//! iterator checks each record as it goes.
//!
//! The index lets a reader jump to packet *i* without walking the ones before it, and
//! carries the hash by which the broker spreads flows over the members of a subscriber
//! group: the producer computes it once per packet while the bytes are in its cache. A
//! producer writes one only when the daemon asks for it.
//!
//! Version 1 is version 2 with a 32-byte header (no `index_off`, no `flags`) and no index;
//! this crate still reads it. A reader that meets a version it does not know must refuse
//! the batch: a later version may change the record layout. `header_len` lets a later
//! version grow the header.
//!
//! The layout maps directly onto libpcap's `pcap_pkthdr`: `ts.tv_sec = ts_nanos /
//! 1_000_000_000`, `ts.tv_usec = (ts_nanos % 1_000_000_000) / 1000`, `caplen`, `len = origlen`.

use std::time::SystemTime;

use crate::packet::{time_from_nanos, AsIpcPacket, PacketRef};

/// The four bytes every batch starts with.
pub const MAGIC: [u8; 4] = *b"PKTB";
/// The format version this crate writes.
pub const VERSION: u16 = 2;
/// Length of the batch header in bytes (version 2).
pub const HEADER_LEN: usize = 40;
/// Length of the header of a version 1 batch, which this crate still reads.
pub const V1_HEADER_LEN: usize = 32;
/// Length of a record's fixed head (timestamp, caplen, origlen) in bytes.
pub const RECORD_HEAD_LEN: usize = 16;
/// Length of one index entry (record offset, hash).
pub const INDEX_ENTRY_LEN: usize = 8;
/// Records start at multiples of this.
pub const ALIGN: usize = 8;
/// The largest batch the format can describe (`total_len` is a `u32`).
pub const MAX_BATCH_LEN: usize = u32::MAX as usize & !(ALIGN - 1);
/// Header flag: the index holds address-pair hashes rather than flow hashes.
pub const FLAG_INDEX_IPPAIR: u32 = 1;

/// What is wrong with a buffer that was supposed to hold a batch, or with packets that do
/// not fit in one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a header.
    #[error("batch truncated: {len} bytes, shorter than its header")]
    ShortHeader {
        /// Bytes available.
        len: usize,
    },
    /// The buffer does not start with the magic bytes.
    #[error("not a packet batch (bad magic {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version this crate does not read.
    #[error(
        "unsupported batch format version {found} (this build reads versions 1 and {VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
    },
    /// The header's length field is not one this version knows.
    #[error("bad batch header length {found}")]
    BadHeaderLen {
        /// The header length in the header.
        found: u16,
    },
    /// `total_len` is not a multiple of 8, is shorter than the header or longer than the
    /// buffer.
    #[error("batch claims {claimed} bytes but {available} are available")]
    BadTotalLen {
        /// What the header says.
        claimed: usize,
        /// What the buffer holds.
        available: usize,
    },
    /// The index does not fit where the header says it is.
    #[error("batch index at {index_off} for {count} packets does not fit in {total_len} bytes")]
    BadIndex {
        /// Where the header puts the index.
        index_off: usize,
        /// Packets in the batch.
        count: u32,
        /// Length of the batch.
        total_len: usize,
    },
    /// A record runs past the end of the batch.
    #[error("record {index} at offset {offset} runs past the end of the batch")]
    RecordOverrun {
        /// Index of the record.
        index: u32,
        /// Its offset in the batch.
        offset: usize,
    },
    /// Bytes left over after the last record.
    #[error("batch holds {count} records but {extra} bytes are left after them")]
    TrailingBytes {
        /// Records in the batch.
        count: u32,
        /// Bytes left.
        extra: usize,
    },
    /// The packets given to the encoder do not fit in the buffer or in the format.
    #[error("batch of {needed} bytes does not fit in {capacity}")]
    TooLarge {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes there are.
        capacity: usize,
    },
}

#[inline]
const fn pad8(n: usize) -> usize {
    (n + (ALIGN - 1)) & !(ALIGN - 1)
}

/// The length of one packet's record, padding included.
#[inline]
pub fn record_len(caplen: usize) -> usize {
    RECORD_HEAD_LEN + pad8(caplen)
}

/// How [`encode_into_with`] writes a batch.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    /// Packets are cut to at most this many captured bytes (their original length kept).
    pub snaplen: usize,
    /// Write a flow index (see the module docs).
    pub index: bool,
    /// Header flags ([`FLAG_INDEX_IPPAIR`]).
    pub flags: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            snaplen: usize::MAX,
            index: false,
            flags: 0,
        }
    }
}

/// The number of bytes [`encode_into`] writes for these packets.
pub fn encoded_len<T: AsIpcPacket>(packets: &[T]) -> usize {
    encoded_len_cut(packets, usize::MAX)
}

/// The number of bytes [`encode_into_cut`] writes for these packets.
pub fn encoded_len_cut<T: AsIpcPacket>(packets: &[T], snaplen: usize) -> usize {
    packets.iter().fold(HEADER_LEN, |n, p| {
        n.saturating_add(record_len(p.data().len().min(snaplen)))
    })
}

/// The number of bytes [`encode_into_with`] writes for these packets.
pub fn encoded_len_with<T: AsIpcPacket>(packets: &[T], options: &EncodeOptions) -> usize {
    let records = encoded_len_cut(packets, options.snaplen);
    if options.index {
        records.saturating_add(packets.len().saturating_mul(INDEX_ENTRY_LEN))
    } else {
        records
    }
}

/// Writes a batch of `packets` at the start of `out` and returns its length.
///
/// `out` must hold at least [`encoded_len`] bytes. Captured lengths and original lengths
/// above `u32::MAX` cannot occur in a batch that fits the format; an original length shorter
/// than the captured one is raised to it.
pub fn encode_into<T: AsIpcPacket>(
    packets: &[T],
    seq: u64,
    lost: u64,
    out: &mut [u8],
) -> Result<usize, BatchError> {
    encode_into_cut(packets, seq, lost, out, usize::MAX)
}

/// Like [`encode_into`], cutting every packet to at most `snaplen` captured bytes (its
/// original length is kept), as a capture with that snap length would have.
pub fn encode_into_cut<T: AsIpcPacket>(
    packets: &[T],
    seq: u64,
    lost: u64,
    out: &mut [u8],
    snaplen: usize,
) -> Result<usize, BatchError> {
    let options = EncodeOptions {
        snaplen,
        ..EncodeOptions::default()
    };
    encode_into_with(packets, seq, lost, out, &options, |_| 0)
}

/// Writes a batch as `options` say; with an index, `hash` gives each packet's hash from
/// its captured bytes (called once per packet, while they are in cache).
pub fn encode_into_with<T: AsIpcPacket>(
    packets: &[T],
    seq: u64,
    lost: u64,
    out: &mut [u8],
    options: &EncodeOptions,
    mut hash: impl FnMut(&[u8]) -> u32,
) -> Result<usize, BatchError> {
    let needed = encoded_len_with(packets, options);
    if needed > out.len() || needed > MAX_BATCH_LEN {
        return Err(BatchError::TooLarge {
            needed,
            capacity: out.len().min(MAX_BATCH_LEN),
        });
    }
    let count = u32::try_from(packets.len()).map_err(|_| BatchError::TooLarge {
        needed,
        capacity: MAX_BATCH_LEN,
    })?;
    let records_end = if options.index {
        needed - packets.len() * INDEX_ENTRY_LEN
    } else {
        needed
    };
    let index_off = if options.index { records_end as u32 } else { 0 };
    write_header(
        out,
        count,
        needed as u32,
        seq,
        lost,
        index_off,
        options.flags,
    );
    let (records, index) = out[..needed].split_at_mut(records_end);
    let mut off = HEADER_LEN;
    for (i, p) in packets.iter().enumerate() {
        let whole = p.data();
        let orig = p.orig_len().max(whole.len()).min(u32::MAX as usize) as u32;
        let data = &whole[..whole.len().min(options.snaplen)];
        let caplen = data.len();
        let rec = &mut records[off..off + record_len(caplen)];
        rec[0..8].copy_from_slice(&p.timestamp_nanos().to_le_bytes());
        rec[8..12].copy_from_slice(&(caplen as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&orig.to_le_bytes());
        let (body, pad) = rec[RECORD_HEAD_LEN..].split_at_mut(caplen);
        body.copy_from_slice(data);
        pad.fill(0);
        if options.index {
            let entry = &mut index[i * INDEX_ENTRY_LEN..(i + 1) * INDEX_ENTRY_LEN];
            entry[0..4].copy_from_slice(&(off as u32).to_le_bytes());
            entry[4..8].copy_from_slice(&hash(data).to_le_bytes());
        }
        off += rec.len();
    }
    debug_assert_eq!(off, records_end);
    Ok(needed)
}

/// Appends a batch of `packets` to `out` (reusing its capacity) and returns its length.
pub fn encode<T: AsIpcPacket>(
    packets: &[T],
    seq: u64,
    lost: u64,
    out: &mut Vec<u8>,
) -> Result<usize, BatchError> {
    let needed = encoded_len(packets);
    if needed > MAX_BATCH_LEN {
        return Err(BatchError::TooLarge {
            needed,
            capacity: MAX_BATCH_LEN,
        });
    }
    let start = out.len();
    out.resize(start + needed, 0);
    match encode_into(packets, seq, lost, &mut out[start..]) {
        Ok(n) => Ok(n),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn write_header(
    out: &mut [u8],
    count: u32,
    total: u32,
    seq: u64,
    lost: u64,
    index_off: u32,
    flags: u32,
) {
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    out[8..12].copy_from_slice(&count.to_le_bytes());
    out[12..16].copy_from_slice(&total.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&lost.to_le_bytes());
    out[32..36].copy_from_slice(&index_off.to_le_bytes());
    out[36..40].copy_from_slice(&flags.to_le_bytes());
}

// One bounds check and one load each (indexing byte by byte checks every byte).
#[inline(always)]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("two bytes"))
}
#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}
#[inline(always)]
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

/// The fixed header of a batch, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Number of packets.
    pub count: u32,
    /// Length of the whole batch in bytes.
    pub total_len: u32,
    /// Sequence number written by the sender.
    pub seq: u64,
    /// Batches lost just before this one, as written by the sender.
    pub lost: u64,
    /// Where the first record starts (the header's length).
    pub header_len: u16,
    /// Where the records end and the index starts, or 0 without an index.
    pub index_off: u32,
    /// Header flags ([`FLAG_INDEX_IPPAIR`]).
    pub flags: u32,
}

impl Header {
    /// Reads and checks the header of the batch at the start of `buf` (the records are not
    /// looked at: see [`BatchView::parse`]). Checks that the index, if any, fits.
    pub fn parse(buf: &[u8]) -> Result<Header, BatchError> {
        if buf.len() < V1_HEADER_LEN {
            return Err(BatchError::ShortHeader { len: buf.len() });
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(BatchError::BadMagic { found: magic });
        }
        let version = u16_at(buf, 4);
        let header_len = u16_at(buf, 6);
        let expected = match version {
            1 => V1_HEADER_LEN,
            VERSION => HEADER_LEN,
            found => return Err(BatchError::UnsupportedVersion { found }),
        };
        if header_len as usize != expected {
            return Err(BatchError::BadHeaderLen { found: header_len });
        }
        if buf.len() < expected {
            return Err(BatchError::ShortHeader { len: buf.len() });
        }
        let total_len = u32_at(buf, 12);
        let total = total_len as usize;
        if total < expected || total > buf.len() || !total.is_multiple_of(ALIGN) {
            return Err(BatchError::BadTotalLen {
                claimed: total,
                available: buf.len(),
            });
        }
        let count = u32_at(buf, 8);
        let (index_off, flags) = if version == VERSION {
            (u32_at(buf, 32), u32_at(buf, 36))
        } else {
            (0, 0)
        };
        if index_off != 0 {
            let off = index_off as usize;
            let fits = off >= expected
                && off.is_multiple_of(ALIGN)
                && (count as usize)
                    .checked_mul(INDEX_ENTRY_LEN)
                    .and_then(|n| n.checked_add(off))
                    == Some(total);
            if !fits {
                return Err(BatchError::BadIndex {
                    index_off: off,
                    count,
                    total_len: total,
                });
            }
        }
        Ok(Header {
            count,
            total_len,
            seq: u64_at(buf, 16),
            lost: u64_at(buf, 24),
            header_len,
            index_off,
            flags,
        })
    }

    /// Where the records end: the index, or the end of the batch.
    pub fn records_end(&self) -> usize {
        if self.index_off != 0 {
            self.index_off as usize
        } else {
            self.total_len as usize
        }
    }
}

/// A checked batch, read in place.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    header: Header,
    /// Exactly the batch's `total_len` bytes.
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Checks the whole batch at the start of `buf`: header, and that every record lies
    /// within it and that they end exactly where the index (or the batch) starts. Never
    /// panics, whatever the bytes.
    pub fn parse(buf: &'a [u8]) -> Result<BatchView<'a>, BatchError> {
        let header = Header::parse(buf)?;
        let bytes = &buf[..header.total_len as usize];
        let records = &bytes[..header.records_end()];
        let mut off = header.header_len as usize;
        for index in 0..header.count {
            match next_record(records, off) {
                Some((_, next)) => off = next,
                None => return Err(BatchError::RecordOverrun { index, offset: off }),
            }
        }
        if off != records.len() {
            return Err(BatchError::TrailingBytes {
                count: header.count,
                extra: records.len() - off,
            });
        }
        Ok(BatchView { header, bytes })
    }

    /// A view whose header was checked but whose records were not: the iterator checks
    /// each record as it reads it, and stops at one that would overrun.
    pub fn unchecked(buf: &'a [u8]) -> Result<BatchView<'a>, BatchError> {
        let header = Header::parse(buf)?;
        Ok(BatchView {
            bytes: &buf[..header.total_len as usize],
            header,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    /// True when the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The batch's bytes (exactly `total_len` of them).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The packets, in order, borrowed from the batch.
    pub fn iter(&self) -> Records<'a> {
        Records {
            bytes: &self.bytes[..self.header.records_end()],
            off: self.header.header_len as usize,
            left: self.header.count,
        }
    }

    /// The packets with the offsets of their records, in order.
    pub fn iter_offsets(&self) -> impl Iterator<Item = (u32, PacketRef<'a>)> {
        let mut records = self.iter();
        std::iter::from_fn(move || records.next_with_offset())
    }

    /// The index entry of packet `i`: its record's offset and its hash, if the batch has an
    /// index and `i` is a packet of it (the values are as the writer put them: check the
    /// offset with [`BatchView::record_at`]).
    pub fn index_entry(&self, i: u32) -> Option<(u32, u32)> {
        if self.header.index_off == 0 || i >= self.header.count {
            return None;
        }
        let at = self.header.index_off as usize + i as usize * INDEX_ENTRY_LEN;
        Some((u32_at(self.bytes, at), u32_at(self.bytes, at + 4)))
    }

    /// The packet whose record starts at `offset`, if a whole record lies there within the
    /// records.
    #[inline]
    pub fn record_at(&self, offset: u32) -> Option<PacketRef<'a>> {
        let off = offset as usize;
        if off < self.header.header_len as usize || !off.is_multiple_of(ALIGN) {
            return None;
        }
        read_record(&self.bytes[..self.header.records_end()], off).map(|(p, _)| p)
    }
}

impl<'a> IntoIterator for &BatchView<'a> {
    type Item = PacketRef<'a>;
    type IntoIter = Records<'a>;
    fn into_iter(self) -> Records<'a> {
        self.iter()
    }
}

/// Reads the record at `off`: returns (caplen, offset of the next record) when it lies
/// within `bytes`.
///
/// No addition here can overflow: `off` is at most `bytes.len()` (else `get` fails), a
/// slice is shorter than `isize::MAX`, and `caplen` is a `u32`.
#[inline]
fn next_record(bytes: &[u8], off: usize) -> Option<(usize, usize)> {
    if off > bytes.len() {
        return None;
    }
    let head: &[u8; RECORD_HEAD_LEN] = bytes.get(off..off + RECORD_HEAD_LEN)?.try_into().ok()?;
    let caplen = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let next = off + RECORD_HEAD_LEN + pad8(caplen);
    (next <= bytes.len()).then_some((caplen, next))
}

/// The packet of the record at `off` and the offset of the next record, if it lies within
/// `bytes`. Each value is read once, so bytes that change under the reader cannot turn
/// into a read out of bounds: one check of the head, one of the data.
#[inline(always)]
fn read_record(bytes: &[u8], off: usize) -> Option<(PacketRef<'_>, usize)> {
    if off > bytes.len() {
        return None;
    }
    // No overflow below: see `next_record`.
    let head: &[u8; RECORD_HEAD_LEN] = bytes.get(off..off + RECORD_HEAD_LEN)?.try_into().ok()?;
    let ts_nanos = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    let caplen = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let orig_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let data_at = off + RECORD_HEAD_LEN;
    let next = data_at + pad8(caplen);
    if next > bytes.len() {
        return None;
    }
    // Within `bytes`: data_at + caplen <= next <= len.
    let data = bytes.get(data_at..data_at + caplen)?;
    Some((PacketRef::new(ts_nanos, orig_len, data), next))
}

/// Iterator over the packets of a [`BatchView`].
#[derive(Clone, Debug)]
pub struct Records<'a> {
    bytes: &'a [u8],
    off: usize,
    left: u32,
}

impl<'a> Records<'a> {
    /// Resumes iteration over the records in `bytes` (which end where the records end) at
    /// a record boundary, with `left` records still to come.
    pub(crate) fn resume(bytes: &'a [u8], off: usize, left: u32) -> Records<'a> {
        Records { bytes, off, left }
    }

    /// The next packet and the offset of its record.
    #[inline]
    pub fn next_with_offset(&mut self) -> Option<(u32, PacketRef<'a>)> {
        if self.left == 0 {
            return None;
        }
        let at = self.off;
        let (p, next) = read_record(self.bytes, at)?;
        self.off = next;
        self.left -= 1;
        Some((at as u32, p))
    }

    /// The offset of the next record and the number of records left.
    pub(crate) fn position(&self) -> (usize, u32) {
        (self.off, self.left)
    }

    /// True when the walk stopped before `left` reached 0: a record did not lie within the
    /// batch (a writer that lied, or changed the batch after sending it).
    pub fn cut_short(&self) -> bool {
        self.left != 0
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = PacketRef<'a>;
    #[inline]
    fn next(&mut self) -> Option<PacketRef<'a>> {
        if self.left == 0 {
            return None;
        }
        // The checks are made here, as the walk goes: the bytes may live in memory another
        // process can write to, and a lying writer must not turn into a read out of bounds.
        let (p, next) = read_record(self.bytes, self.off)?;
        self.off = next;
        self.left -= 1;
        Some(p)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// The timestamp of a record as a `SystemTime` (helper for readers of raw records).
pub fn record_time(ts_nanos: u64) -> SystemTime {
    time_from_nanos(ts_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{nanos_since_epoch, Packet};
    use proptest::prelude::*;

    fn packet(nanos: u64, data: Vec<u8>, orig: usize) -> Packet {
        Packet::with_orig_len(time_from_nanos(nanos), data, orig)
    }

    #[test]
    fn layout_is_as_documented() {
        let p = [packet(0x0102_0304_0506_0708, vec![0xAA; 3], 60)];
        let mut buf = Vec::new();
        let n = encode(&p, 7, 2, &mut buf).unwrap();
        assert_eq!(n, 40 + 16 + 8);
        assert_eq!(&buf[0..4], b"PKTB");
        assert_eq!(&buf[4..8], &[2, 0, 40, 0]);
        assert_eq!(&buf[8..12], &1u32.to_le_bytes());
        assert_eq!(&buf[12..16], &64u32.to_le_bytes());
        assert_eq!(&buf[16..24], &7u64.to_le_bytes());
        assert_eq!(&buf[24..32], &2u64.to_le_bytes());
        assert_eq!(&buf[32..36], &0u32.to_le_bytes(), "no index");
        assert_eq!(&buf[36..40], &0u32.to_le_bytes());
        assert_eq!(&buf[40..48], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[48..52], &3u32.to_le_bytes());
        assert_eq!(&buf[52..56], &60u32.to_le_bytes());
        assert_eq!(&buf[56..64], &[0xAA, 0xAA, 0xAA, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn an_index_lists_every_record_and_its_hash() {
        let p = [
            packet(1, vec![1; 3], 3),
            packet(2, vec![2; 20], 20),
            packet(3, vec![], 0),
        ];
        let options = EncodeOptions {
            index: true,
            flags: FLAG_INDEX_IPPAIR,
            ..EncodeOptions::default()
        };
        let mut buf = vec![0u8; encoded_len_with(&p, &options)];
        let n = encode_into_with(&p, 0, 0, &mut buf, &options, |d| d.len() as u32 * 10).unwrap();
        assert_eq!(n, 40 + 24 + 40 + 16 + 3 * 8);
        let view = BatchView::parse(&buf).unwrap();
        assert_eq!(view.header().index_off as usize, 40 + 24 + 40 + 16);
        assert_eq!(view.header().flags, FLAG_INDEX_IPPAIR);
        assert_eq!(view.iter().count(), 3, "the walk stops before the index");
        for (i, want) in p.iter().enumerate() {
            let (off, hash) = view.index_entry(i as u32).unwrap();
            assert_eq!(hash, want.data().len() as u32 * 10);
            let got = view.record_at(off).unwrap();
            assert_eq!(got.data(), want.data());
            assert_eq!(got.timestamp_nanos(), i as u64 + 1);
        }
        assert_eq!(view.index_entry(3), None);
        assert!(view.record_at(41).is_none(), "misaligned");
        assert!(view.record_at(8).is_none(), "inside the header");
        assert!(
            view.record_at(view.header().index_off).is_none(),
            "not a record: the index"
        );
        // An index that does not fit is refused.
        let mut bad = buf.clone();
        bad[32..36].copy_from_slice(&48u32.to_le_bytes());
        assert!(matches!(
            Header::parse(&bad),
            Err(BatchError::BadIndex { .. })
        ));
    }

    #[test]
    fn version_1_batches_are_still_read() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"PKTB");
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&32u16.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&56u32.to_le_bytes());
        v1.extend_from_slice(&9u64.to_le_bytes());
        v1.extend_from_slice(&0u64.to_le_bytes());
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&3u32.to_le_bytes());
        v1.extend_from_slice(&70u32.to_le_bytes());
        v1.extend_from_slice(&[7, 7, 7, 0, 0, 0, 0, 0]);
        let view = BatchView::parse(&v1).unwrap();
        assert_eq!(view.header().seq, 9);
        let p: Vec<_> = view.iter().collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].data(), &[7, 7, 7]);
        assert_eq!(p[0].orig_len(), 70);
        assert_eq!(p[0].timestamp_nanos(), 5);
    }

    #[test]
    fn empty_batch_round_trips() {
        let mut buf = Vec::new();
        encode::<Packet>(&[], 1, 0, &mut buf).unwrap();
        let view = BatchView::parse(&buf).unwrap();
        assert!(view.is_empty());
        assert_eq!(view.iter().count(), 0);
    }

    #[test]
    fn original_length_is_never_below_captured_length() {
        let p = [packet(1, vec![1; 10], 4)];
        let mut buf = Vec::new();
        encode(&p, 0, 0, &mut buf).unwrap();
        let view = BatchView::parse(&buf).unwrap();
        assert_eq!(view.iter().next().unwrap().orig_len(), 10);
    }

    #[test]
    fn packets_are_cut_to_the_snaplen_keeping_their_length() {
        let p = [packet(1, vec![7; 100], 100), packet(2, vec![8; 10], 10)];
        let mut buf = vec![0; encoded_len_cut(&p, 64)];
        assert_eq!(buf.len(), 40 + 16 + 64 + 16 + 16);
        encode_into_cut(&p, 0, 0, &mut buf, 64).unwrap();
        let view = BatchView::parse(&buf).unwrap();
        let got: Vec<_> = view
            .iter()
            .map(|p| (p.data().len(), p.orig_len()))
            .collect();
        assert_eq!(got, [(64, 100), (10, 10)]);
    }

    #[test]
    fn encoder_refuses_a_short_buffer() {
        let p = [packet(1, vec![1; 10], 10)];
        let mut small = [0u8; 40];
        assert!(matches!(
            encode_into(&p, 0, 0, &mut small),
            Err(BatchError::TooLarge { needed: 72, .. })
        ));
    }

    #[test]
    fn lying_headers_are_errors() {
        let p = [packet(1, vec![9; 20], 20), packet(2, vec![8; 5], 5)];
        let mut good = Vec::new();
        encode(&p, 0, 0, &mut good).unwrap();

        let mut more = good.clone();
        more[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            BatchView::parse(&more),
            Err(BatchError::RecordOverrun { index: 2, .. })
        ));

        let mut fewer = good.clone();
        fewer[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            BatchView::parse(&fewer),
            Err(BatchError::TrailingBytes { .. })
        ));

        let mut long = good.clone();
        long[12..16].copy_from_slice(&(good.len() as u32 + 8).to_le_bytes());
        assert!(matches!(
            BatchView::parse(&long),
            Err(BatchError::BadTotalLen { .. })
        ));

        let mut caplen = good.clone();
        caplen[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            BatchView::parse(&caplen),
            Err(BatchError::RecordOverrun { index: 0, .. })
        ));

        let mut version = good.clone();
        version[4] = 3;
        assert_eq!(
            BatchView::parse(&version).unwrap_err(),
            BatchError::UnsupportedVersion { found: 3 }
        );
        assert!(matches!(
            BatchView::parse(&good[..good.len() - 8]),
            Err(BatchError::BadTotalLen { .. })
        ));
        assert_eq!(
            BatchView::parse(&good[..31]).unwrap_err(),
            BatchError::ShortHeader { len: 31 }
        );
        assert_eq!(
            BatchView::parse(&good[..36]).unwrap_err(),
            BatchError::ShortHeader { len: 36 }
        );
        // The iterator of an unchecked view stops at a lying record and says so.
        let mut lying = good.clone();
        lying[8..12].copy_from_slice(&5u32.to_le_bytes());
        let view = BatchView::unchecked(&lying).unwrap();
        let mut walk = view.iter();
        assert_eq!(walk.by_ref().count(), 2);
        assert!(walk.cut_short());
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            0usize..5000,
        )
            .prop_map(|(ts, data, orig)| {
                let orig = orig.max(data.len());
                packet(ts, data, orig)
            })
    }

    proptest! {
        // Fuzzing within the test suite (cargo-fuzz needs a nightly toolchain): many
        // more cases than the default for the decoders of untrusted bytes.
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn round_trip(packets in proptest::collection::vec(arb_packet(), 0..40),
                      seq in any::<u64>(), lost in any::<u64>(), prefix in 0usize..3) {
            // A non-empty prefix checks that encode appends and leaves what was there.
            let mut buf = vec![0x55u8; prefix * 8];
            let n = encode(&packets, seq, lost, &mut buf).unwrap();
            prop_assert_eq!(n, encoded_len(&packets));
            prop_assert_eq!(n % ALIGN, 0);
            let view = BatchView::parse(&buf[prefix * 8..]).unwrap();
            prop_assert_eq!(view.header().seq, seq);
            prop_assert_eq!(view.header().lost, lost);
            prop_assert_eq!(view.len(), packets.len());
            let mut seen = 0;
            for (got, want) in view.iter().zip(&packets) {
                prop_assert_eq!(got.data(), want.data());
                prop_assert_eq!(got.orig_len(), want.orig_len());
                prop_assert_eq!(got.timestamp_nanos(), nanos_since_epoch(want.timestamp()));
                prop_assert_eq!(got.timestamp(), want.timestamp());
                seen += 1;
            }
            prop_assert_eq!(seen, packets.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(view) = BatchView::parse(&bytes) {
                let total: usize = view.iter().map(|p| p.data().len()).sum();
                prop_assert!(total <= bytes.len());
            }
        }

        #[test]
        fn corrupted_batches_never_panic(packets in proptest::collection::vec(arb_packet(), 1..10),
                                         flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut buf = Vec::new();
            encode(&packets, 0, 0, &mut buf).unwrap();
            for (at, byte) in flips {
                let i = at % buf.len();
                buf[i] = byte;
            }
            if let Ok(view) = BatchView::parse(&buf) {
                prop_assert!(view.iter().count() == view.len());
            }
        }
    }
}
