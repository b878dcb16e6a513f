//! The frames of the hot path, hand-packed on raw byte channels.
//!
//! Typed ipc-channel messages serialize into a fresh buffer per send and copy on receive;
//! the data path instead sends bytes laid out here, read in place by the receiver.
//!
//! ```text
//! every frame starts with an 8-byte head:
//!   0  u8   kind    1 inline batch | 2 descriptors | 3 end of stream | 4 notice | 5 releases
//!   1  [u8; 3]      zero
//!   4  u32  count   kind 2: descriptors; kind 4: notice code; kind 5: segment ids; else 0
//! kind 1: the batch follows (see `crate::batch`)
//! kind 2: `count` descriptors of 24 bytes follow:
//!   0  u32  segment id
//!   4  u32  length of the batch at the start of that segment
//!   8  u64  sequence number of the batch
//!  16  u32  batches lost just before this one
//!  20  u32  flags: bit 0 set when the segment was just announced on the control channel
//!           (new, or replaced by a larger one): read that announcement first
//! kind 4: a UTF-8 text saying why follows
//! kind 5: `count` u32 segment ids follow: segments the reader is done with
//! ```
//! All integers little-endian.

/// Length of a frame's head.
pub(crate) const HEAD_LEN: usize = 8;
/// Length of one descriptor.
pub(crate) const DESC_LEN: usize = 24;

const KIND_INLINE: u8 = 1;
const KIND_DESCS: u8 = 2;
const KIND_END: u8 = 3;
const KIND_NOTICE: u8 = 4;
const KIND_RELEASES: u8 = 5;

const FLAG_FRESH: u32 = 1;

/// Says where a batch lies in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Which segment.
    pub seg: u32,
    /// Length of the batch, from the start of the segment.
    pub len: u32,
    /// Sequence number of the batch.
    pub seq: u64,
    /// Batches lost for this reader just before this one.
    pub lost: u32,
    /// The segment was announced just before this descriptor.
    pub fresh: bool,
}

/// Why a peer is told something out of band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoticeCode {
    /// The daemon is stopping; a client may wait for the next one.
    Stopping,
    /// The server was removed; nothing more will come.
    ServerGone,
    /// This client is cut off (for instance its queue overflowed under `disconnect`).
    Disconnected,
    /// A request of this client was refused; the connection goes on.
    Refused,
    /// A code this build does not know.
    Other(u32),
}

impl NoticeCode {
    pub(crate) fn to_u32(self) -> u32 {
        match self {
            NoticeCode::Stopping => 1,
            NoticeCode::ServerGone => 2,
            NoticeCode::Disconnected => 3,
            NoticeCode::Refused => 4,
            NoticeCode::Other(c) => c,
        }
    }
    pub(crate) fn from_u32(c: u32) -> Self {
        match c {
            1 => NoticeCode::Stopping,
            2 => NoticeCode::ServerGone,
            3 => NoticeCode::Disconnected,
            4 => NoticeCode::Refused,
            c => NoticeCode::Other(c),
        }
    }
}

/// A received frame, borrowing the message it came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole batch carried in the message.
    Inline(&'a [u8]),
    /// Batches in shared memory.
    Descs(Descs<'a>),
    /// The writer closed the stream.
    End,
    /// Something the peer must know, and why.
    Notice(NoticeCode, &'a str),
    /// Segments the reader is done with.
    Releases(Ids<'a>),
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a frame head.
    #[error("frame of {0} bytes is shorter than its head")]
    Short(usize),
    /// A kind this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The count does not match the frame's length.
    #[error("frame announces {count} items but carries {len} bytes")]
    BadCount {
        /// Items announced.
        count: u32,
        /// Bytes after the head.
        len: usize,
    },
    /// A notice whose text is not UTF-8.
    #[error("notice text is not UTF-8")]
    BadText,
    /// A frame of a kind this channel does not carry.
    #[error("unexpected frame kind {0} on this channel")]
    Unexpected(u8),
}

impl Frame<'_> {
    /// The kind byte, for error messages.
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Frame::Inline(_) => KIND_INLINE,
            Frame::Descs(_) => KIND_DESCS,
            Frame::End => KIND_END,
            Frame::Notice(..) => KIND_NOTICE,
            Frame::Releases(_) => KIND_RELEASES,
        }
    }
}

/// Descriptors read in place from a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Descs<'a>(&'a [u8]);

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Iterator for Descs<'_> {
    type Item = Desc;
    fn next(&mut self) -> Option<Desc> {
        let (d, rest) = self.0.split_first_chunk::<DESC_LEN>()?;
        self.0 = rest;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&d[8..16]);
        Some(Desc {
            seg: u32_at(d, 0),
            len: u32_at(d, 4),
            seq: u64::from_le_bytes(seq),
            lost: u32_at(d, 16),
            fresh: u32_at(d, 20) & FLAG_FRESH != 0,
        })
    }
}

/// Segment ids read in place from a release frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ids<'a>(&'a [u8]);

impl Iterator for Ids<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let (id, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*id))
    }
}

/// Reads a frame.
pub(crate) fn parse(msg: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((head, body)) = msg.split_first_chunk::<HEAD_LEN>() else {
        return Err(FrameError::Short(msg.len()));
    };
    let count = u32_at(head, 4);
    let counted = |item: usize| {
        if body.len() == count as usize * item {
            Ok(())
        } else {
            Err(FrameError::BadCount {
                count,
                len: body.len(),
            })
        }
    };
    match head[0] {
        KIND_INLINE => Ok(Frame::Inline(body)),
        KIND_DESCS => counted(DESC_LEN).map(|()| Frame::Descs(Descs(body))),
        KIND_END => Ok(Frame::End),
        KIND_NOTICE => std::str::from_utf8(body)
            .map(|text| Frame::Notice(NoticeCode::from_u32(count), text))
            .map_err(|_| FrameError::BadText),
        KIND_RELEASES => counted(4).map(|()| Frame::Releases(Ids(body))),
        kind => Err(FrameError::UnknownKind(kind)),
    }
}

fn head(kind: u8, count: u32) -> [u8; HEAD_LEN] {
    let c = count.to_le_bytes();
    [kind, 0, 0, 0, c[0], c[1], c[2], c[3]]
}

/// Appends the head of an inline frame; the caller appends the batch.
pub(crate) fn push_inline_head(out: &mut Vec<u8>) {
    out.extend_from_slice(&head(KIND_INLINE, 0));
}

/// Appends a descriptor frame.
pub(crate) fn push_descs(out: &mut Vec<u8>, descs: &[Desc]) {
    out.extend_from_slice(&head(KIND_DESCS, descs.len() as u32));
    for d in descs {
        out.extend_from_slice(&d.seg.to_le_bytes());
        out.extend_from_slice(&d.len.to_le_bytes());
        out.extend_from_slice(&d.seq.to_le_bytes());
        out.extend_from_slice(&d.lost.to_le_bytes());
        let flags = if d.fresh { FLAG_FRESH } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
    }
}

/// Appends the end-of-stream frame.
pub(crate) fn push_end(out: &mut Vec<u8>) {
    out.extend_from_slice(&head(KIND_END, 0));
}

/// Appends a release frame naming `ids`.
pub(crate) fn push_releases(out: &mut Vec<u8>, ids: impl ExactSizeIterator<Item = u32>) {
    out.extend_from_slice(&head(KIND_RELEASES, ids.len() as u32));
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// A reusable buffer that builds one frame at a time.
#[derive(Default)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// Clears the buffer and returns it for a frame to be appended.
    pub(crate) fn start(&mut self) -> &mut Vec<u8> {
        self.buf.clear();
        &mut self.buf
    }

    /// The frame as built.
    pub(crate) fn plain(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn descriptors_round_trip() {
        let descs = [
            Desc {
                seg: 3,
                len: 4096,
                seq: 9,
                lost: 2,
                fresh: true,
            },
            Desc {
                seg: u32::MAX,
                len: 0,
                seq: u64::MAX,
                lost: u32::MAX,
                fresh: false,
            },
        ];
        let mut buf = Vec::new();
        push_descs(&mut buf, &descs);
        assert_eq!(buf.len(), HEAD_LEN + 2 * DESC_LEN);
        match parse(&buf).unwrap() {
            Frame::Descs(d) => assert_eq!(d.collect::<Vec<_>>(), descs),
            other => panic!("{other:?}"),
        }
        buf.clear();
        push_end(&mut buf);
        assert_eq!(parse(&buf).unwrap(), Frame::End);
        buf.clear();
        push_inline_head(&mut buf);
        buf.extend_from_slice(b"abc");
        assert_eq!(parse(&buf).unwrap(), Frame::Inline(b"abc"));
        buf.clear();
        push_releases(&mut buf, [7u32, 1].into_iter());
        match parse(&buf).unwrap() {
            Frame::Releases(ids) => assert_eq!(ids.collect::<Vec<_>>(), [7, 1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(parse(&[1, 0, 0]), Err(FrameError::Short(3)));
        assert_eq!(parse(&head(9, 0)), Err(FrameError::UnknownKind(9)));
        let mut lying = head(KIND_DESCS, 2).to_vec();
        lying.extend_from_slice(&[0; DESC_LEN]);
        assert_eq!(
            parse(&lying),
            Err(FrameError::BadCount {
                count: 2,
                len: DESC_LEN
            })
        );
        let mut rel = head(KIND_RELEASES, 1).to_vec();
        rel.extend_from_slice(&[1, 2, 3]);
        assert!(parse(&rel).is_err());
        let mut text = head(KIND_NOTICE, 1).to_vec();
        text.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(parse(&text), Err(FrameError::BadText));
    }

    proptest! {
        // Fuzzing within the test suite (cargo-fuzz needs a nightly toolchain): many
        // more cases than the default for the decoders of untrusted bytes.
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match parse(&bytes) {
                Ok(Frame::Descs(d)) => prop_assert_eq!(d.count(), (bytes.len() - HEAD_LEN) / DESC_LEN),
                Ok(Frame::Releases(ids)) => prop_assert_eq!(ids.count(), (bytes.len() - HEAD_LEN) / 4),
                _ => {}
            }
        }
    }
}
