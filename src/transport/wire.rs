//! The frames of a broker connection: what daemon and client say to each other on the
//! socket, beside the rings in shared memory.
//!
//! ```text
//! every frame starts with an 8-byte head:
//!   0  u8   kind
//!   1  [u8; 3]      zero
//!   4  u32  arg     kind-specific (a notice code, a length), else 0
//!
//! daemon -> client
//!   1 WELCOME  JSON body (`Welcome`); descriptors: the client's region, and for a
//!              producer its pool
//!   2 REFUSED  UTF-8 body: why the client is not let in
//!   3 NOTICE   arg: code (1 stopping, 2 server gone, 3 disconnected); UTF-8 body: why
//!   4 POOL     body: pool id u64, then u32s: small slots, their size, large slots, their
//!              size; descriptor: the pool, read-only
//!   5 RETIRE   body: pool id u64: no descriptor names that pool any more
//!   7 STATS    arg: length of the JSON in the attached memory; descriptor: sealed memory
//!   6 WAKE     the daemon published something while the client slept (unused: the daemon
//!              wakes clients with their futex)
//! client -> daemon
//!   8 READY    the welcome was received and mapped (a client that never says so is
//!              dropped after a while, and counts against its user's pending limit)
//!   6 WAKE     the client published something while the daemon slept
//! ```
//! All integers little-endian. A client sends nothing else, never with descriptors, and
//! never more than [`MAX_CLIENT_FRAME`] bytes: anything else cuts it off.

use serde::{Deserialize, Serialize};

pub(crate) use super::frame::NoticeCode;
use super::region::{ProducerLayout, SubscriberLayout};
use crate::options::WaitMode;

/// Version of the broker protocol; a welcome of another version is refused.
pub(crate) const PROTOCOL: u32 = 2;
/// The longest frame a client may send.
pub(crate) const MAX_CLIENT_FRAME: usize = 64;
/// The longest frame the daemon sends.
pub(crate) const MAX_DAEMON_FRAME: usize = 64 * 1024;
/// Length of a frame's head.
pub(crate) const HEAD_LEN: usize = 8;

const WELCOME: u8 = 1;
const REFUSED: u8 = 2;
const NOTICE: u8 = 3;
const POOL: u8 = 4;
const RETIRE: u8 = 5;
const WAKE: u8 = 6;
const STATS: u8 = 7;
const READY: u8 = 8;

/// What a client learns of its server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireInfo {
    /// The server's name.
    pub name: String,
    /// pcap link type of its packets.
    pub linktype: u32,
    /// Longest captured length.
    pub snaplen: u32,
    /// Largest batch a producer may send, in bytes.
    pub max_batch_bytes: u64,
}

/// The welcome: who the client is and how its memory is laid out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Welcome {
    /// [`PROTOCOL`].
    pub version: u32,
    /// The id the daemon gave the client (as `stats` lists it).
    pub id: u64,
    /// The server.
    pub server: WireInfo,
    /// What the attached memory holds.
    pub role: WelcomeRole,
}

/// The role-specific part of a welcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WelcomeRole {
    /// A producer: its region, then its pool of `slots` slots of `slot_size` bytes.
    Producer {
        /// The region's sizes.
        layout: ProducerLayout,
        /// The pool's id (as subscribers' descriptors name it).
        pool: u64,
        /// How the pool is cut into slots.
        shape: PoolShape,
    },
    /// A subscriber: its region.
    Subscriber {
        /// The region's sizes.
        layout: SubscriberLayout,
        /// The group it joined, if any.
        group: Option<String>,
        /// The server's default wait mode.
        wait: WaitMode,
    },
}

/// How a pool is cut into slots: many small ones (most batches fit in one), then a few
/// large ones for batches up to the server's `max-batch-bytes`. Slot `i` is small when
/// `i < small_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolShape {
    /// Small slots, first in the pool.
    pub small_slots: u32,
    /// Bytes per small slot.
    pub small_size: u32,
    /// Large slots, after the small ones.
    pub large_slots: u32,
    /// Bytes per large slot (0 when there are none).
    pub large_size: u32,
}

impl PoolShape {
    /// Slots in all.
    pub(crate) fn slots(&self) -> u32 {
        self.small_slots.saturating_add(self.large_slots)
    }

    /// Bytes of the whole pool, if that fits in memory at all.
    pub(crate) fn len(&self) -> Option<usize> {
        let small = (self.small_slots as usize).checked_mul(self.small_size as usize)?;
        let large = (self.large_slots as usize).checked_mul(self.large_size as usize)?;
        small.checked_add(large)
    }

    /// Where slot `slot` starts in the pool, and its size.
    #[inline]
    pub(crate) fn slot(&self, slot: u32) -> Option<(usize, usize)> {
        if slot < self.small_slots {
            Some((
                slot as usize * self.small_size as usize,
                self.small_size as usize,
            ))
        } else if slot < self.slots() {
            let base = self.small_slots as usize * self.small_size as usize;
            let i = (slot - self.small_slots) as usize;
            Some((
                base + i * self.large_size as usize,
                self.large_size as usize,
            ))
        } else {
            None
        }
    }

    /// The largest batch a slot holds.
    pub(crate) fn max_batch(&self) -> usize {
        self.small_size.max(self.large_size) as usize
    }
}

/// A pool announced to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolInfo {
    /// Its id.
    pub pool: u64,
    /// How it is cut into slots.
    pub shape: PoolShape,
}

/// A received frame, borrowing the message it came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// The welcome's JSON.
    Welcome(&'a [u8]),
    /// Why the client was refused.
    Refused(&'a str),
    /// Something the client must know, and why.
    Notice(NoticeCode, &'a str),
    /// A pool (its memory attached).
    Pool(PoolInfo),
    /// A pool no longer named.
    Retire(u64),
    /// A wake-up.
    Wake,
    /// The daemon's counters: this many bytes of JSON in the attached memory.
    Stats(u32),
    /// The client is ready.
    Ready,
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its kind needs.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// A kind this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A text that is not UTF-8.
    #[error("frame text is not UTF-8")]
    BadText,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads a frame.
pub(crate) fn parse(msg: &[u8]) -> Result<Frame<'_>, WireError> {
    let Some((head, body)) = msg.split_first_chunk::<HEAD_LEN>() else {
        return Err(WireError::Short(msg.len()));
    };
    let arg = u32_at(head, 4);
    fn text(b: &[u8]) -> Result<&str, WireError> {
        std::str::from_utf8(b).map_err(|_| WireError::BadText)
    }
    let need = |n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::Short(msg.len()))
        }
    };
    match head[0] {
        WELCOME => Ok(Frame::Welcome(body)),
        REFUSED => Ok(Frame::Refused(text(body)?)),
        NOTICE => Ok(Frame::Notice(NoticeCode::from_u32(arg), text(body)?)),
        POOL => need(24).map(|()| {
            Frame::Pool(PoolInfo {
                pool: u64_at(body, 0),
                shape: PoolShape {
                    small_slots: u32_at(body, 8),
                    small_size: u32_at(body, 12),
                    large_slots: u32_at(body, 16),
                    large_size: u32_at(body, 20),
                },
            })
        }),
        RETIRE => need(8).map(|()| Frame::Retire(u64_at(body, 0))),
        WAKE => need(0).map(|()| Frame::Wake),
        STATS => need(0).map(|()| Frame::Stats(arg)),
        READY => need(0).map(|()| Frame::Ready),
        kind => Err(WireError::UnknownKind(kind)),
    }
}

fn head(out: &mut Vec<u8>, kind: u8, arg: u32) {
    out.clear();
    let a = arg.to_le_bytes();
    out.extend_from_slice(&[kind, 0, 0, 0, a[0], a[1], a[2], a[3]]);
}

/// A welcome frame.
pub(crate) fn welcome(out: &mut Vec<u8>, w: &Welcome) {
    head(out, WELCOME, 0);
    // Serializing plain data to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, w);
}

/// A refusal.
pub(crate) fn refused(out: &mut Vec<u8>, why: &str) {
    head(out, REFUSED, 0);
    out.extend_from_slice(why.as_bytes());
}

/// A notice.
pub(crate) fn notice(out: &mut Vec<u8>, code: NoticeCode, why: &str) {
    head(out, NOTICE, code.to_u32());
    out.extend_from_slice(why.as_bytes());
}

/// A pool announcement (send the pool's read-only descriptor with it).
pub(crate) fn pool(out: &mut Vec<u8>, p: &PoolInfo) {
    head(out, POOL, 0);
    out.extend_from_slice(&p.pool.to_le_bytes());
    for n in [
        p.shape.small_slots,
        p.shape.small_size,
        p.shape.large_slots,
        p.shape.large_size,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// A pool retirement.
pub(crate) fn retire(out: &mut Vec<u8>, pool: u64) {
    head(out, RETIRE, 0);
    out.extend_from_slice(&pool.to_le_bytes());
}

/// A wake-up.
pub(crate) fn wake(out: &mut Vec<u8>) {
    head(out, WAKE, 0);
}

/// The client's "ready".
pub(crate) fn ready(out: &mut Vec<u8>) {
    head(out, READY, 0);
}

/// A stats answer of `len` bytes of JSON (send the memory holding it with it).
pub(crate) fn stats(out: &mut Vec<u8>, len: u32) {
    head(out, STATS, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let w = Welcome {
            version: PROTOCOL,
            id: 7,
            server: WireInfo {
                name: "cap".into(),
                linktype: 1,
                snaplen: 100,
                max_batch_bytes: 1 << 20,
            },
            role: WelcomeRole::Subscriber {
                layout: SubscriberLayout {
                    desc_cap: 64,
                    sel_cap: 0,
                },
                group: Some("ids".into()),
                wait: WaitMode::Park,
            },
        };
        welcome(&mut buf, &w);
        match parse(&buf).unwrap() {
            Frame::Welcome(json) => {
                assert_eq!(serde_json::from_slice::<Welcome>(json).unwrap(), w)
            }
            other => panic!("{other:?}"),
        }
        notice(&mut buf, NoticeCode::Disconnected, "queue full");
        assert_eq!(
            parse(&buf).unwrap(),
            Frame::Notice(NoticeCode::Disconnected, "queue full")
        );
        let p = PoolInfo {
            pool: 1 << 33,
            shape: PoolShape {
                small_slots: 300,
                small_size: 1 << 19,
                large_slots: 8,
                large_size: 1 << 24,
            },
        };
        assert_eq!(p.shape.slot(299), Some((299 << 19, 1 << 19)));
        assert_eq!(p.shape.slot(301), Some(((300 << 19) + (1 << 24), 1 << 24)));
        assert_eq!(p.shape.slot(308), None);
        assert_eq!(p.shape.len(), Some((300 << 19) + (8 << 24)));
        pool(&mut buf, &p);
        assert_eq!(parse(&buf).unwrap(), Frame::Pool(p));
        retire(&mut buf, 9);
        assert_eq!(parse(&buf).unwrap(), Frame::Retire(9));
        wake(&mut buf);
        assert_eq!(parse(&buf).unwrap(), Frame::Wake);
        ready(&mut buf);
        assert_eq!(parse(&buf).unwrap(), Frame::Ready);
        stats(&mut buf, 1234);
        assert_eq!(parse(&buf).unwrap(), Frame::Stats(1234));
        refused(&mut buf, "full");
        assert_eq!(parse(&buf).unwrap(), Frame::Refused("full"));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(parse(&[1, 0]), Err(WireError::Short(2)));
        assert_eq!(
            parse(&[99, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::UnknownKind(99))
        );
        assert!(parse(&[WAKE, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(parse(&[RETIRE, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]).is_err());
        assert_eq!(
            parse(&[REFUSED, 0, 0, 0, 0, 0, 0, 0, 0xff]),
            Err(WireError::BadText)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }
    }
}
