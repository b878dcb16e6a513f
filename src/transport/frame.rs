//! The frames of the hot path, hand-packed on raw byte channels.
//!
//! Typed ipc-channel messages serialize into a fresh buffer per send and copy on receive;
//! the data path instead sends bytes laid out here, read in place by the receiver.
//!
//! ```text
//! data frame (writer -> reader), 8-byte head:
//!   0  u8   kind    1 = inline batch, 2 = descriptors, 3 = end of stream
//!   1  [u8; 3]      zero
//!   4  u32  count   number of descriptors (kind 2), else 0
//! kind 1: the batch follows (see `crate::batch`)
//! kind 2: `count` descriptors of 16 bytes follow:
//!   0  u32  segment id; bit 31 set when the segment was just announced on the control
//!           channel (new, or replaced by a larger one): read that announcement first
//!   4  u32  length of the batch at the start of that segment
//!   8  u64  sequence number of the batch
//! release frame (reader -> writer): any number of u32 segment ids the reader is done with
//! ```
//! All integers little-endian.

/// Length of a data frame's head.
pub(crate) const HEAD_LEN: usize = 8;
/// Length of one descriptor.
pub(crate) const DESC_LEN: usize = 16;

const KIND_INLINE: u8 = 1;
const KIND_DESCS: u8 = 2;
const KIND_END: u8 = 3;

/// Says where a batch lies in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Which segment.
    pub seg: u32,
    /// Length of the batch, from the start of the segment.
    pub len: u32,
    /// Sequence number of the batch.
    pub seq: u64,
    /// The segment was announced just before this descriptor.
    pub fresh: bool,
}

const FRESH: u32 = 1 << 31;

/// A received data frame, borrowing the message it came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole batch carried in the message.
    Inline(&'a [u8]),
    /// Batches in shared memory.
    Descs(Descs<'a>),
    /// The writer closed the stream.
    End,
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
    /// The descriptor count does not match the frame's length.
    #[error("frame announces {count} descriptors but carries {len} bytes")]
    BadCount {
        /// Descriptors announced.
        count: u32,
        /// Bytes after the head.
        len: usize,
    },
    /// A release frame whose length is not a multiple of 4.
    #[error("release frame of {0} bytes")]
    BadRelease(usize),
}

/// Descriptors read in place from a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Descs<'a>(&'a [u8]);

impl Iterator for Descs<'_> {
    type Item = Desc;
    fn next(&mut self) -> Option<Desc> {
        let (d, rest) = self.0.split_first_chunk::<DESC_LEN>()?;
        self.0 = rest;
        let (seg, d) = d.split_first_chunk::<4>()?;
        let (len, seq) = d.split_first_chunk::<4>()?;
        let seq: [u8; 8] = seq.try_into().ok()?;
        let seg = u32::from_le_bytes(*seg);
        Some(Desc {
            seg: seg & !FRESH,
            fresh: seg & FRESH != 0,
            len: u32::from_le_bytes(*len),
            seq: u64::from_le_bytes(seq),
        })
    }
}

/// Reads a data frame.
pub(crate) fn parse(msg: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((head, body)) = msg.split_first_chunk::<HEAD_LEN>() else {
        return Err(FrameError::Short(msg.len()));
    };
    let count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    match head[0] {
        KIND_INLINE => Ok(Frame::Inline(body)),
        KIND_DESCS if body.len() == count as usize * DESC_LEN => Ok(Frame::Descs(Descs(body))),
        KIND_DESCS => Err(FrameError::BadCount {
            count,
            len: body.len(),
        }),
        KIND_END => Ok(Frame::End),
        kind => Err(FrameError::UnknownKind(kind)),
    }
}

fn head(kind: u8, count: u32) -> [u8; HEAD_LEN] {
    let c = count.to_le_bytes();
    [kind, 0, 0, 0, c[0], c[1], c[2], c[3]]
}

/// Starts an inline frame in `out` (cleared first); the caller appends the batch.
pub(crate) fn start_inline(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&head(KIND_INLINE, 0));
}

/// Writes a descriptor frame into `out` (cleared first).
pub(crate) fn write_descs(out: &mut Vec<u8>, descs: &[Desc]) {
    out.clear();
    out.extend_from_slice(&head(KIND_DESCS, descs.len() as u32));
    for d in descs {
        let seg = if d.fresh { d.seg | FRESH } else { d.seg };
        out.extend_from_slice(&seg.to_le_bytes());
        out.extend_from_slice(&d.len.to_le_bytes());
        out.extend_from_slice(&d.seq.to_le_bytes());
    }
}

/// The end-of-stream frame.
pub(crate) fn end() -> [u8; HEAD_LEN] {
    head(KIND_END, 0)
}

/// Reads a release frame: the segment ids it names.
pub(crate) fn parse_releases(msg: &[u8]) -> Result<impl Iterator<Item = u32> + '_, FrameError> {
    if msg.len() % 4 != 0 {
        return Err(FrameError::BadRelease(msg.len()));
    }
    Ok(msg
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
}

/// Appends a segment id to a release frame being built.
pub(crate) fn push_release(out: &mut Vec<u8>, seg: u32) {
    out.extend_from_slice(&seg.to_le_bytes());
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
                fresh: true,
            },
            Desc {
                seg: FRESH - 1,
                len: 0,
                seq: u64::MAX,
                fresh: false,
            },
        ];
        let mut buf = Vec::new();
        write_descs(&mut buf, &descs);
        assert_eq!(buf.len(), HEAD_LEN + 2 * DESC_LEN);
        match parse(&buf).unwrap() {
            Frame::Descs(d) => assert_eq!(d.collect::<Vec<_>>(), descs),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&end()).unwrap(), Frame::End);
        start_inline(&mut buf);
        buf.extend_from_slice(b"abc");
        assert_eq!(parse(&buf).unwrap(), Frame::Inline(b"abc"));
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
        assert!(parse_releases(&[1, 2, 3]).is_err());
        let mut rel = Vec::new();
        push_release(&mut rel, 7);
        push_release(&mut rel, 1);
        assert_eq!(parse_releases(&rel).unwrap().collect::<Vec<_>>(), [7, 1]);
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Frame::Descs(d)) = parse(&bytes) {
                prop_assert_eq!(d.count(), (bytes.len() - HEAD_LEN) / DESC_LEN);
            }
            if let Ok(ids) = parse_releases(&bytes) {
                prop_assert_eq!(ids.count(), bytes.len() / 4);
            }
        }
    }
}
