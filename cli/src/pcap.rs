//! Captures: reading pcap (microsecond or nanosecond, either byte order) and pcapng, and
//! writing pcap.
//!
//! The `pcap-file` crate (2.x) does the framing and the streaming buffer. Records are
//! taken raw and interpreted here, because its checked forms get two things wrong for us:
//! a pcap packet whose original length is above the file's snaplen (any `tcpdump -s`
//! capture) is refused, and a pcapng timestamp is taken as nanoseconds whatever the
//! interface's `if_tsresol` says (the default is microseconds).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pcap_file::pcap::{PcapHeader, PcapReader, PcapWriter, RawPcapPacket};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::{
    ENHANCED_PACKET_BLOCK, INTERFACE_DESCRIPTION_BLOCK, PACKET_BLOCK, SECTION_HEADER_BLOCK,
    SIMPLE_PACKET_BLOCK,
};
use pcap_file::pcapng::PcapNgReader;
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};

use crate::{exit, Failure, Outcome};

/// Where a capture is read from.
pub type Input = Box<dyn Read + Send>;

/// One packet's record, apart from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// Length on the wire (at least the captured length of the file's record).
    pub orig_len: u32,
    /// Link type of the interface the packet was captured on.
    pub linktype: u32,
}

/// A pcapng interface, as far as its packets need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interface {
    linktype: u32,
    /// `if_tsresol`: a power of 10 (of 2 when the top bit is set) below the second; 6 by
    /// default.
    tsresol: u8,
    /// `if_tsoffset`: seconds added to every timestamp.
    tsoffset: i64,
}

enum Kind {
    Pcap {
        reader: PcapReader<Input>,
        nanos: bool,
        linktype: u32,
    },
    PcapNg {
        reader: PcapNgReader<Input>,
        big_endian: bool,
        interfaces: Vec<Interface>,
    },
}

/// Reads the packets of a pcap or pcapng capture one at a time, as they arrive (so a
/// capture streamed on a pipe is read record by record).
pub struct CaptureReader {
    /// How messages name the capture.
    name: String,
    kind: Kind,
    /// Records (pcap) or blocks (pcapng) read so far, the file header not counted.
    position: u64,
    /// Bytes of the capture read so far (as far as the records go, not the read-ahead).
    offset: u64,
    /// Set once the input said it had no more: a record "ended" before this is one too
    /// large for the reader's buffer, not one cut short.
    input_ended: Arc<AtomicBool>,
}

/// The largest record or block the reader holds at once: `pcap-file`'s buffer. (libpcap
/// refuses records above 262144 bytes; a packet is never near this.)
const LARGEST_RECORD: usize = 8_000_000;

/// The capture's input, noting when it ends.
struct WatchEnd {
    inner: Input,
    ended: Arc<AtomicBool>,
}

impl Read for WatchEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// The first four bytes of the formats we read (pcap in either byte order).
const PCAP_MICRO: u32 = 0xa1b2_c3d4;
const PCAP_NANO: u32 = 0xa1b2_3c4d;
const PCAPNG: u32 = 0x0a0d_0d0a;

/// What one pcapng block was, for us.
enum Block {
    Packet(Meta),
    Section,
    Interface,
    Other,
}

impl CaptureReader {
    /// Recognises the format by its magic number and reads the file header.
    pub fn open(name: &str, mut input: Input) -> Outcome<CaptureReader> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Failure::new(
                        exit::NOINPUT,
                        format!("cannot read {name}: {e}"),
                    ))
                }
            }
        }
        if got == 0 {
            return Err(Failure::new(
                exit::DATAERR,
                format!("{name} is empty: no pcap or pcapng header"),
            ));
        }
        if got < magic.len() {
            return Err(Failure::new(
                exit::DATAERR,
                format!("{name} is not a capture: it ends after {got} bytes"),
            ));
        }
        let be = u32::from_be_bytes(magic);
        let le = u32::from_le_bytes(magic);
        let input_ended = Arc::new(AtomicBool::new(false));
        let chained: Input = Box::new(io::Cursor::new(magic).chain(WatchEnd {
            inner: input,
            ended: input_ended.clone(),
        }));
        let header_error = |e: PcapError, what: &str| {
            Failure::new(
                exit::DATAERR,
                format!("{name}: invalid {what} header: {}", describe(&e)),
            )
        };
        let mut offset = 0;
        let kind = if be == PCAPNG {
            let reader = PcapNgReader::new(chained).map_err(|e| header_error(e, "pcapng"))?;
            let big_endian = reader.section().endianness == Endianness::Big;
            Kind::PcapNg {
                reader,
                big_endian,
                interfaces: Vec::new(),
            }
        } else if [be, le].iter().any(|m| *m == PCAP_MICRO || *m == PCAP_NANO) {
            let reader = PcapReader::new(chained).map_err(|e| header_error(e, "pcap"))?;
            let header: PcapHeader = reader.header();
            offset = 24;
            Kind::Pcap {
                nanos: header.ts_resolution == TsResolution::NanoSecond,
                linktype: u32::from(header.datalink),
                reader,
            }
        } else {
            return Err(Failure::new(
                exit::DATAERR,
                format!("{name} is not a pcap or pcapng capture (it starts with 0x{be:08x})"),
            ));
        };
        Ok(CaptureReader {
            name: name.to_owned(),
            kind,
            position: 0,
            offset,
            input_ended,
        })
    }

    /// "pcap", "pcap (nanosecond)" or "pcapng".
    pub fn format(&self) -> &'static str {
        match self.kind {
            Kind::Pcap { nanos: false, .. } => "pcap",
            Kind::Pcap { nanos: true, .. } => "pcap (nanosecond)",
            Kind::PcapNg { .. } => "pcapng",
        }
    }

    /// The link type of a pcap file (pcapng has one per interface, known as they come).
    pub fn linktype(&self) -> Option<u32> {
        match self.kind {
            Kind::Pcap { linktype, .. } => Some(linktype),
            Kind::PcapNg { .. } => None,
        }
    }

    /// Bytes of the capture up to the end of the last packet read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the last packet was: `record N` (pcap) or `block N` (pcapng).
    pub fn position(&self) -> String {
        match self.kind {
            Kind::Pcap { .. } => format!("record {}", self.position),
            Kind::PcapNg { .. } => format!("block {}", self.position),
        }
    }

    /// Reads the next packet: its bytes replace the contents of `data`, cut to `max_len`
    /// (the original length is kept in the returned [`Meta`]). `None` at the end.
    pub fn next_packet(&mut self, data: &mut Vec<u8>, max_len: usize) -> Outcome<Option<Meta>> {
        loop {
            self.position += 1;
            let result = match &mut self.kind {
                Kind::Pcap {
                    reader,
                    nanos,
                    linktype,
                    ..
                } => match reader.next_raw_packet() {
                    None => return Ok(None),
                    Some(Err(e)) => Err(e),
                    Some(Ok(raw)) => {
                        self.offset += 16 + raw.data.len() as u64;
                        let frac = u64::from(raw.ts_frac);
                        let frac = if *nanos { frac } else { frac * 1000 };
                        let ts_nanos = u64::from(raw.ts_sec) * 1_000_000_000 + frac;
                        let meta = store(data, &raw.data, max_len, ts_nanos, raw.orig_len);
                        Ok(Block::Packet(Meta {
                            linktype: *linktype,
                            ..meta
                        }))
                    }
                },
                Kind::PcapNg {
                    reader,
                    big_endian,
                    interfaces,
                } => {
                    let result = match reader.next_raw_block() {
                        None => return Ok(None),
                        Some(Err(e)) => Err(e),
                        Some(Ok(block)) => ng_block(
                            block.type_,
                            &block.body,
                            *big_endian,
                            interfaces,
                            data,
                            max_len,
                        ),
                    };
                    // The reader has parsed sections and interfaces for itself: take what
                    // we need from it.
                    match result {
                        Ok(Block::Section) => {
                            *big_endian = reader.section().endianness == Endianness::Big;
                            interfaces.clear();
                        }
                        Ok(Block::Interface) => {
                            if let Some(idb) = reader.interfaces().last() {
                                interfaces.push(interface(idb));
                            }
                        }
                        _ => {}
                    }
                    result
                }
            };
            match result {
                Ok(Block::Packet(meta)) => return Ok(Some(meta)),
                Ok(_) => continue,
                Err(e) => return Err(self.record_error(&e)),
            }
        }
    }

    /// A failure naming the record (or block) being read.
    fn record_error(&self, e: &PcapError) -> Failure {
        let unit = match self.kind {
            Kind::Pcap { .. } => "record",
            Kind::PcapNg { .. } => "block",
        };
        let (name, n) = (&self.name, self.position);
        match e {
            PcapError::IoError(io)
                if io.kind() == io::ErrorKind::UnexpectedEof
                    && !self.input_ended.load(Ordering::Relaxed) =>
            {
                Failure::new(
                    exit::DATAERR,
                    format!(
                        "{name}: {unit} {n} is larger than {LARGEST_RECORD} bytes, more than \
                         any packet record (libpcap allows 262144): not read"
                    ),
                )
            }
            PcapError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => Failure::new(
                exit::DATAERR,
                format!("{name}: {unit} {n} is cut short or corrupt (the capture ends inside it)"),
            ),
            PcapError::IoError(io) => Failure::new(
                exit::IOERR,
                format!("cannot read {name} at {unit} {n}: {io}"),
            ),
            e => Failure::new(
                exit::DATAERR,
                format!("{name}: {unit} {n} is corrupt: {}", describe(e)),
            ),
        }
    }
}

/// A pcap-file error in words (its own Display hides the I/O cause).
fn describe(e: &PcapError) -> String {
    match e {
        PcapError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            "the capture ends inside it".to_owned()
        }
        PcapError::IoError(io) => io.to_string(),
        PcapError::InvalidField(what) => (*what).to_owned(),
        e => e.to_string(),
    }
}

/// Copies a packet's bytes into `data` (cut to `max_len`) and returns its record.
fn store(data: &mut Vec<u8>, bytes: &[u8], max_len: usize, ts_nanos: u64, orig_len: u32) -> Meta {
    let take = bytes.len().min(max_len);
    data.clear();
    data.extend_from_slice(&bytes[..take]);
    let caplen = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    Meta {
        ts_nanos,
        orig_len: orig_len.max(caplen),
        linktype: 0,
    }
}

fn interface(idb: &InterfaceDescriptionBlock<'_>) -> Interface {
    let mut iface = Interface {
        linktype: u32::from(idb.linktype),
        tsresol: 6,
        tsoffset: 0,
    };
    for option in &idb.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
            // The option is a signed number of seconds stored in 64 bits.
            InterfaceDescriptionOption::IfTsOffset(s) => iface.tsoffset = *s as i64,
            _ => {}
        }
    }
    iface
}

/// A pcapng timestamp in the interface's units, as nanoseconds since the epoch.
fn ng_nanos(raw: u64, iface: &Interface) -> u64 {
    let raw = u128::from(raw);
    let p = u32::from(iface.tsresol & 0x7f);
    let nanos: u128 = if iface.tsresol & 0x80 != 0 {
        // 2^-p seconds per unit.
        if p >= 128 {
            0
        } else {
            raw.saturating_mul(1_000_000_000) >> p
        }
    } else if p <= 9 {
        raw * 10u128.pow(9 - p)
    } else {
        10u128.checked_pow(p - 9).map_or(0, |d| raw / d)
    };
    let nanos = i128::try_from(nanos).unwrap_or(i128::MAX);
    let total = nanos.saturating_add(i128::from(iface.tsoffset) * 1_000_000_000);
    u64::try_from(total.max(0)).unwrap_or(u64::MAX)
}

/// Interprets one pcapng block (its body, without type and lengths).
fn ng_block(
    kind: u32,
    body: &[u8],
    big_endian: bool,
    interfaces: &[Interface],
    data: &mut Vec<u8>,
    max_len: usize,
) -> Result<Block, PcapError> {
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let iface = |id: usize| {
        interfaces
            .get(id)
            .copied()
            .ok_or(PcapError::InvalidInterfaceId(id as u32))
    };
    match kind {
        SECTION_HEADER_BLOCK => Ok(Block::Section),
        INTERFACE_DESCRIPTION_BLOCK => Ok(Block::Interface),
        ENHANCED_PACKET_BLOCK | PACKET_BLOCK => {
            let too_short = || PcapError::InvalidField("packet block shorter than its header");
            let first = u32_at(0).ok_or_else(too_short)?;
            let id = if kind == ENHANCED_PACKET_BLOCK {
                first
            } else if big_endian {
                // The obsolete Packet Block: a 16-bit interface id, then a drop count.
                first >> 16
            } else {
                first & 0xffff
            };
            let ts_at = 4;
            let high = u32_at(ts_at).ok_or_else(too_short)?;
            let low = u32_at(ts_at + 4).ok_or_else(too_short)?;
            let caplen = u32_at(ts_at + 8).ok_or_else(too_short)?;
            let orig_len = u32_at(ts_at + 12).ok_or_else(too_short)?;
            let start = ts_at + 16;
            let bytes = body
                .get(start..start + caplen as usize)
                .ok_or(PcapError::InvalidField(
                    "captured length goes past the end of the block",
                ))?;
            let iface = iface(id as usize)?;
            let raw = (u64::from(high) << 32) | u64::from(low);
            let meta = store(data, bytes, max_len, ng_nanos(raw, &iface), orig_len);
            Ok(Block::Packet(Meta {
                linktype: iface.linktype,
                ..meta
            }))
        }
        SIMPLE_PACKET_BLOCK => {
            let orig_len = u32_at(0).ok_or(PcapError::InvalidField(
                "simple packet block shorter than its header",
            ))?;
            let rest = &body[4..];
            let bytes = &rest[..rest.len().min(orig_len as usize)];
            let iface = iface(0)?;
            // A simple packet has no timestamp.
            let meta = store(data, bytes, max_len, 0, orig_len);
            Ok(Block::Packet(Meta {
                linktype: iface.linktype,
                ..meta
            }))
        }
        _ => Ok(Block::Other),
    }
}

/// Common link types by name, for messages.
pub fn linktype_name(linktype: u32) -> Option<&'static str> {
    Some(match linktype {
        0 => "NULL",
        1 => "EN10MB",
        101 => "RAW",
        105 => "IEEE802_11",
        113 => "LINUX_SLL",
        127 => "IEEE802_11_RADIOTAP",
        228 => "IPV4",
        229 => "IPV6",
        276 => "LINUX_SLL2",
        _ => return None,
    })
}

/// `1 (EN10MB)`, or just the number.
pub fn linktype_text(linktype: u32) -> String {
    match linktype_name(linktype) {
        Some(name) => format!("{linktype} ({name})"),
        None => linktype.to_string(),
    }
}

/// Collects what the pcap writer writes, until [`PcapOut::commit`] passes it on.
#[derive(Clone, Default)]
struct Pending(Rc<RefCell<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A pcap file being written: nanosecond timestamps, native byte order. Records are
/// collected in memory and written out whole by [`PcapOut::commit`], so that what is in
/// the file (or the pipe) always ends on a record boundary.
pub struct PcapOut {
    writer: PcapWriter<Pending>,
    pending: Pending,
    out: Box<dyn Write>,
    /// Bytes written out by the commits that succeeded: the header and whole records.
    committed: u64,
}

impl PcapOut {
    /// Writes the file header (the server's link type and snaplen) to `out`.
    pub fn new(out: Box<dyn Write>, linktype: u32, snaplen: u32) -> io::Result<PcapOut> {
        let pending = Pending::default();
        let header = PcapHeader {
            snaplen,
            datalink: DataLink::from(linktype),
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(pending.clone(), header).map_err(to_io)?;
        let mut out = PcapOut {
            writer,
            pending,
            out,
            committed: 0,
        };
        out.commit()?;
        Ok(out)
    }

    /// Adds one record (written out at the next commit).
    pub fn push(&mut self, ts_nanos: u64, data: &[u8], orig_len: u32) -> io::Result<()> {
        let secs = ts_nanos / 1_000_000_000;
        let raw = RawPcapPacket {
            ts_sec: u32::try_from(secs).unwrap_or(u32::MAX),
            ts_frac: (ts_nanos % 1_000_000_000) as u32,
            incl_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            orig_len,
            data: Cow::Borrowed(data),
        };
        self.writer.write_raw_packet(&raw).map_err(to_io)?;
        Ok(())
    }

    /// Writes the records pushed so far and flushes. After a failure part of them may
    /// have been written: [`PcapOut::committed`] says where the last complete one ends.
    pub fn commit(&mut self) -> io::Result<()> {
        let mut pending = self.pending.0.borrow_mut();
        if !pending.is_empty() {
            let len = pending.len() as u64;
            let written = self.out.write_all(&pending);
            pending.clear();
            written?;
            self.committed += len;
        }
        self.out.flush()
    }

    /// The bytes written out by the commits that succeeded (header included): where the
    /// last complete record ends.
    pub fn committed(&self) -> u64 {
        self.committed
    }
}

fn to_io(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(io) => io,
        e => io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(tsresol: u8, tsoffset: i64) -> Interface {
        Interface {
            linktype: 1,
            tsresol,
            tsoffset,
        }
    }

    #[test]
    fn pcapng_timestamp_units() {
        assert_eq!(ng_nanos(1_500_000, &iface(6, 0)), 1_500_000_000);
        assert_eq!(ng_nanos(7, &iface(9, 0)), 7);
        assert_eq!(ng_nanos(12_345, &iface(12, 0)), 12);
        assert_eq!(ng_nanos(3, &iface(6, 10)), 10_000_003_000);
        // 2^-10 s units: 1024 of them are one second.
        assert_eq!(ng_nanos(1024, &iface(0x80 | 10, 0)), 1_000_000_000);
    }

    /// A writer into a buffer the test keeps a handle on.
    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pcap_written_then_read_back() {
        let buf = Rc::new(RefCell::new(Vec::new()));
        let mut out = PcapOut::new(Box::new(Shared(Rc::clone(&buf))), 1, 64).unwrap();
        out.push(1_700_000_000_123_456_789, b"abc", 1500).unwrap();
        out.push(1_700_000_001_000_000_001, b"", 0).unwrap();
        out.commit().unwrap();
        let bytes = buf.borrow().clone();
        let mut reader = CaptureReader::open("t", Box::new(io::Cursor::new(bytes))).unwrap();
        assert_eq!(reader.linktype(), Some(1));
        assert_eq!(reader.format(), "pcap (nanosecond)");
        let mut data = Vec::new();
        let m = reader.next_packet(&mut data, 2).unwrap().unwrap();
        assert_eq!(m.ts_nanos, 1_700_000_000_123_456_789);
        assert_eq!(m.orig_len, 1500);
        assert_eq!(data, b"ab", "cut to max_len");
        let m = reader.next_packet(&mut data, 2).unwrap().unwrap();
        assert_eq!(
            (m.ts_nanos, m.orig_len, data.len()),
            (1_700_000_001_000_000_001, 0, 0)
        );
        assert!(reader.next_packet(&mut data, 2).unwrap().is_none());
    }

    #[test]
    fn garbage_and_truncation_are_data_errors() {
        let e = CaptureReader::open("g", Box::new(io::Cursor::new(b"hello world".to_vec())))
            .err()
            .unwrap();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("not a pcap or pcapng"), "{}", e.message);
        let e = CaptureReader::open("e", Box::new(io::empty()))
            .err()
            .unwrap();
        assert_eq!(e.code, exit::DATAERR);

        let buf = Rc::new(RefCell::new(Vec::new()));
        let mut out = PcapOut::new(Box::new(Shared(Rc::clone(&buf))), 1, 65535).unwrap();
        for i in 0..3 {
            out.push(i, &[7; 100], 100).unwrap();
        }
        out.commit().unwrap();
        let mut bytes = buf.borrow().clone();
        bytes.truncate(bytes.len() - 10);
        let mut reader = CaptureReader::open("cut.pcap", Box::new(io::Cursor::new(bytes))).unwrap();
        let mut data = Vec::new();
        assert!(reader.next_packet(&mut data, 65535).unwrap().is_some());
        assert!(reader.next_packet(&mut data, 65535).unwrap().is_some());
        let e = reader.next_packet(&mut data, 65535).err().unwrap();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("record 3"), "{}", e.message);
        assert!(e.message.contains("cut short"), "{}", e.message);
    }

    /// A pcap of one record of `len` bytes, of which `present` follow its header.
    fn one_record(len: u32, present: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [PCAP_MICRO, 0x0004_0002, 0, 0, 262_144, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [1u32, 0, len, len] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(b.len() + present, 0x5a);
        b
    }

    #[test]
    fn a_complete_record_too_large_to_read_is_not_called_cut_short() {
        let huge = LARGEST_RECORD as u32 + 4096;
        let read = |bytes: Vec<u8>| {
            let mut r = CaptureReader::open("big.pcap", Box::new(io::Cursor::new(bytes))).unwrap();
            r.next_packet(&mut Vec::new(), 65535).err().unwrap()
        };
        let whole = read(one_record(huge, huge as usize));
        assert_eq!(whole.code, exit::DATAERR);
        assert!(
            whole.message.contains("record 1 is larger than"),
            "{}",
            whole.message
        );
        let cut = read(one_record(huge, 1000));
        assert!(
            cut.message.contains("record 1 is cut short"),
            "{}",
            cut.message
        );
    }
}
