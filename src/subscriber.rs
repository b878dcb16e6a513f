//! [`Subscriber`]: receives the batches of a named server of the daemon (all of them, or
//! its share of a group's), read in place in shared memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::batch::{BatchView, Header, Records, INDEX_ENTRY_LEN};
use crate::connect::{self, ConnectOptions, Role, ServerInfo};
use crate::libpcap::Filter;
use crate::packet::{AsIpcPacket, PacketRef};
use crate::transport::region::{DESC_REASSIGNED, DESC_SELECTED};
use crate::transport::slink::{Delivered, SubEvent, SubscriberLink};
use crate::transport::wait::Deadline;
use crate::transport::wire::NoticeCode;
use crate::transport::TransportError;
use crate::{Error, Result};

/// Which of a batch's packets are this subscriber's.
enum Selection {
    /// All of them, walked in order.
    All,
    /// A group member's share: `count` packet indices from `start` in its selection ring,
    /// mapped to records through the batch's index.
    Ring { start: u64, count: u32 },
    /// The records at these offsets (a filter kept them, or a share was resolved by
    /// walking a batch without an index).
    Offsets(Vec<u32>),
}

/// Vectors of offsets, reused from batch to batch.
type Spares = Arc<Mutex<Vec<Vec<u32>>>>;

/// A batch received from the daemon, read in place in shared memory.
///
/// The memory goes back to the producer when the batch is dropped: read what you need,
/// then let it go. Batches may be dropped in any order; one held for long holds this
/// subscriber's window (the server's overflow policy then applies to what waits behind
/// it).
///
/// The batch's header was checked when it was received; the iterator checks every
/// record's bounds as it reads, and stops early at one that would overrun (a producer
/// that wrote a malformed batch, or changed it after sending), so it never reads out of
/// bounds. [`Batch::check`] walks the whole batch at once for a reader that wants an error.
pub struct Batch {
    delivered: Delivered,
    header: Header,
    selection: Selection,
    spares: Spares,
    seq: u64,
    lost: u64,
    lost_packets: u64,
    reconnected: bool,
    reassigned: bool,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Selection::Offsets(v) = std::mem::replace(&mut self.selection, Selection::All) {
            let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
            if spares.len() < 64 {
                spares.push(v);
            }
        }
    }
}

impl Batch {
    /// The server's sequence number of this batch (grows by one per batch the server got).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Batches dropped for this subscriber just before this one (its overflow policy).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The packets in the batches counted by [`Batch::lost`] (this subscriber's share of
    /// them, for a group member).
    pub fn lost_packets(&self) -> u64 {
        self.lost_packets
    }

    /// True on the first batch after a reconnection to a new daemon: packets may have been
    /// missed in between, and how many is not known.
    pub fn reconnected(&self) -> bool {
        self.reconnected
    }

    /// True on the first batch after the group's assignment of flows to members changed
    /// (a member joined or left): flows may have moved to or from this member.
    pub fn reassigned(&self) -> bool {
        self.reassigned
    }

    /// Number of packets for this subscriber (its share for a group member, those that
    /// matched for a filtered subscriber).
    pub fn len(&self) -> usize {
        match &self.selection {
            Selection::All => self.header.count as usize,
            Selection::Ring { count, .. } => *count as usize,
            Selection::Offsets(v) => v.len(),
        }
    }

    /// True when the batch has no packet for this subscriber.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn view(&self) -> BatchView<'_> {
        // The header was checked when the batch was received; the bytes are still there.
        BatchView::unchecked(self.delivered.bytes()).unwrap_or_else(|_| {
            BatchView::unchecked(EMPTY_BATCH).expect("the empty batch is valid")
        })
    }

    /// The packets, borrowed from the batch.
    pub fn iter(&self) -> BatchIter<'_> {
        let view = self.view();
        let inner = match &self.selection {
            Selection::All => Inner::All(view.iter()),
            Selection::Ring { start, count } => {
                // The share's selection and the batch's index, each bounds-checked once.
                let (a, b) = self.delivered.region.sels(*start, *count);
                let at = view.header().index_off as usize;
                let index = match at {
                    0 => &[][..],
                    _ => view
                        .as_bytes()
                        .get(at..at + view.len() * INDEX_ENTRY_LEN)
                        .unwrap_or_default(),
                };
                Inner::Ring {
                    view,
                    index,
                    sels: a.iter().chain(b),
                }
            }
            Selection::Offsets(v) => Inner::Offsets {
                view,
                offsets: v.iter(),
            },
        };
        BatchIter { inner }
    }

    /// Packet `i` of this subscriber's packets, if there is one. Constant time for a
    /// filtered subscriber or a group member; for a plain subscriber, through the batch's
    /// index when it has one, else by walking (sequential calls are cheap to write as
    /// [`Batch::iter`]).
    pub fn get(&self, i: usize) -> Option<PacketRef<'_>> {
        let view = self.view();
        match &self.selection {
            Selection::All => {
                let index = u32::try_from(i).ok()?;
                match view.index_entry(index) {
                    Some((off, _)) => view.record_at(off),
                    None => view.iter().nth(i),
                }
            }
            Selection::Ring { start, count } => {
                if i >= *count as usize {
                    return None;
                }
                let index = self.delivered.region.read_sel(start + i as u64);
                view.index_entry(index)
                    .and_then(|(off, _)| view.record_at(off))
            }
            Selection::Offsets(v) => v.get(i).and_then(|&off| view.record_at(off)),
        }
    }

    /// Checks every record of the batch (see [`BatchView::parse`]): `Ok` means every
    /// record lies within the batch, unless the producer writes to it after this call. One
    /// pass over the batch; readers that only iterate need not call it.
    pub fn check(&self) -> Result<()> {
        BatchView::parse(self.delivered.bytes())?;
        Ok(())
    }

    /// The whole batch's bytes, in the format of [`crate::batch`] (for a group member or a
    /// filtered subscriber, packets that are not its own too).
    pub fn as_bytes(&self) -> &[u8] {
        self.delivered.bytes()
    }
}

/// A batch with no packet, for views of a batch whose bytes changed under the reader.
const EMPTY_BATCH: &[u8] = &[
    b'P', b'K', b'T', b'B', 2, 0, 40, 0, 0, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

impl<'a> IntoIterator for &'a Batch {
    type Item = PacketRef<'a>;
    type IntoIter = BatchIter<'a>;
    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

enum Inner<'a> {
    All(Records<'a>),
    Ring {
        view: BatchView<'a>,
        /// The batch's index: (record offset, hash) per packet.
        index: &'a [u8],
        /// This member's packet indices.
        sels: std::iter::Chain<std::slice::Iter<'a, AtomicU32>, std::slice::Iter<'a, AtomicU32>>,
    },
    Offsets {
        view: BatchView<'a>,
        offsets: std::slice::Iter<'a, u32>,
    },
}

/// The packets of a [`Batch`] for this subscriber.
pub struct BatchIter<'a> {
    inner: Inner<'a>,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = PacketRef<'a>;
    #[inline]
    fn next(&mut self) -> Option<PacketRef<'a>> {
        match &mut self.inner {
            Inner::All(records) => records.next(),
            Inner::Ring { view, index, sels } => {
                for sel in sels.by_ref() {
                    let i = sel.load(Ordering::Relaxed) as usize;
                    // An index the producer's memory does not back (it changed the batch)
                    // is skipped, never read.
                    if i >= index.len() / INDEX_ENTRY_LEN {
                        continue;
                    }
                    let entry = &index[i * INDEX_ENTRY_LEN..i * INDEX_ENTRY_LEN + 4];
                    let off = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                    if let Some(p) = view.record_at(off) {
                        return Some(p);
                    }
                }
                None
            }
            Inner::Offsets { view, offsets } => {
                for &off in offsets.by_ref() {
                    if let Some(p) = view.record_at(off) {
                        return Some(p);
                    }
                }
                None
            }
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("seq", &self.seq)
            .field("lost", &self.lost)
            .field("len", &self.len())
            .field("reconnected", &self.reconnected)
            .field("reassigned", &self.reassigned)
            .finish()
    }
}

/// What [`Subscriber::recv_timeout`] got.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per batch; boxing the batch would cost an allocation per batch"
)]
pub enum Received {
    /// A batch.
    Batch(Batch),
    /// Nothing within the timeout.
    Timeout,
    /// The server is gone for good (removed, or no daemon came back in time).
    End,
}

/// What a batch carries over to the next one when it is not handed out (all its packets
/// filtered out, or malformed).
#[derive(Default)]
struct Carry {
    lost: u64,
    lost_packets: u64,
    reconnected: bool,
    reassigned: bool,
}

/// Receives the batches sent to a named server of `packet-ipcd` after `connect` returned:
/// every packet, or with [`ConnectOptions::group`] this member's share of the group's, and
/// with [`ConnectOptions::filter`] only those that match.
///
/// When the daemon stops or dies, the subscriber waits for one to come back (up to
/// [`ConnectOptions::reconnect_wait`]) and goes on; the first batch after that says
/// [`Batch::reconnected`].
pub struct Subscriber {
    server: String,
    options: ConnectOptions,
    link: Option<SubscriberLink>,
    info: ServerInfo,
    /// The daemon this client is connected to (told apart from its successor).
    daemon_pid: u32,
    /// The server is gone for good.
    ended: bool,
    filter: Option<Arc<Filter>>,
    filtered_out: u64,
    skipped: u64,
    reconnects: u64,
    carry: Carry,
    spares: Spares,
}

fn connect_link(server: &str, options: &ConnectOptions) -> Result<(SubscriberLink, u32)> {
    let c = connect::connect_once(server, Role::Subscriber, options)?;
    let mut link = SubscriberLink::new(
        c.conn,
        c.welcome.id,
        c.welcome.server,
        c.welcome.role,
        c.fds,
        options.wait,
        options.interrupt.clone(),
    )?;
    link.ready()?;
    Ok((link, c.daemon_pid))
}

fn compile(expr: &str, info: &ServerInfo) -> Result<Arc<Filter>> {
    Ok(Arc::new(Filter::compile(
        expr,
        info.linktype,
        info.snaplen,
    )?))
}

impl Subscriber {
    /// Connects to `server` with the default options.
    pub fn connect(server: impl AsRef<str>) -> Result<Subscriber> {
        Subscriber::connect_with(server, ConnectOptions::default())
    }

    /// Connects to `server`. Once this returns, every batch the server gets is delivered
    /// (this subscriber's share of it, in a group).
    pub fn connect_with(server: impl AsRef<str>, options: ConnectOptions) -> Result<Subscriber> {
        let server = server.as_ref().to_owned();
        let (link, daemon_pid) = connect_link(&server, &options)?;
        let info = ServerInfo::from(&link.info);
        let filter = match &options.filter {
            Some(expr) => Some(compile(expr, &info)?),
            None => None,
        };
        Ok(Subscriber {
            info,
            server,
            options,
            link: Some(link),
            daemon_pid,
            ended: false,
            filter,
            filtered_out: 0,
            skipped: 0,
            reconnects: 0,
            carry: Carry::default(),
            spares: Arc::default(),
        })
    }

    /// The id the daemon gave this client (as `stats` lists it); it changes when the
    /// client reconnects.
    pub fn id(&self) -> Option<u64> {
        self.link.as_ref().map(|c| c.id)
    }

    /// The server this subscriber receives from.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The group this subscriber is a member of.
    pub fn group(&self) -> Option<&str> {
        self.options.group.as_deref()
    }

    /// Keeps only the packets that match `expr` (tcpdump's syntax) from the next batch on;
    /// `None` keeps every packet. A bad expression is [`Error::Filter`] and changes nothing.
    pub fn set_filter(&mut self, expr: Option<&str>) -> Result<()> {
        self.filter = match expr {
            Some(e) => Some(compile(e, &self.info)?),
            None => None,
        };
        self.options.filter = expr.map(str::to_owned);
        Ok(())
    }

    /// Packets the filter left out so far.
    pub fn filtered_out(&self) -> u64 {
        self.filtered_out
    }

    /// Batches skipped so far because they were malformed (a producer that wrote a broken
    /// batch, or rewrote it while it was read); the daemon's `stats` counts them too.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Times this subscriber connected again to a daemon after one stopped or died.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next batch; `None` once the server is gone for good.
    pub fn recv(&mut self) -> Result<Option<Batch>> {
        match self.next(None)? {
            Received::Batch(b) => Ok(Some(b)),
            Received::End => Ok(None),
            Received::Timeout => {
                Err(TransportError::Protocol("a wait without timeout timed out".into()).into())
            }
        }
    }

    /// The next batch, waiting at most `timeout` (a reconnection may take longer).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received> {
        self.next(Some(timeout))
    }

    fn next(&mut self, timeout: Option<Duration>) -> Result<Received> {
        // No clock is read unless a wait is needed.
        let mut deadline = Deadline::after(timeout);
        loop {
            if self.ended {
                return Ok(Received::End);
            }
            let link = match &mut self.link {
                Some(link) => link,
                None => match self.reconnect(None)? {
                    Some(link) => link,
                    None => return Ok(Received::End),
                },
            };
            match link.next(&mut deadline) {
                Ok(SubEvent::Batch(d)) => {
                    if let Some(batch) = self.make(d) {
                        return Ok(Received::Batch(batch));
                    }
                    if deadline.passed() {
                        return Ok(Received::Timeout);
                    }
                }
                Ok(SubEvent::Timeout) => return Ok(Received::Timeout),
                Ok(SubEvent::Notice(NoticeCode::ServerGone, _)) => {
                    self.link = None;
                    self.ended = true;
                }
                Ok(SubEvent::Notice(NoticeCode::Stopping, _)) => {
                    let pid = Some(self.daemon_pid);
                    self.link = None;
                    if self.reconnect(pid)?.is_none() {
                        return Ok(Received::End);
                    }
                }
                Ok(SubEvent::Notice(_, reason)) => {
                    self.link = None;
                    self.ended = true;
                    return Err(Error::Disconnected {
                        server: self.server.clone(),
                        reason,
                    });
                }
                Err(TransportError::Disconnected) => {
                    self.link = None;
                    if self.reconnect(None)?.is_none() {
                        return Ok(Received::End);
                    }
                }
                Err(TransportError::Interrupted) => return Err(Error::Interrupted),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A batch of what was delivered, or `None` when it is skipped (malformed, or every
    /// packet filtered out; what it says carries over to the next batch).
    fn make(&mut self, d: Delivered) -> Option<Batch> {
        let desc = d.desc;
        self.carry.lost += desc.lost_batches;
        self.carry.lost_packets += desc.lost_packets;
        self.carry.reassigned |= desc.flags & DESC_REASSIGNED != 0;
        let header = match Header::parse(d.bytes()) {
            Ok(h) if h.total_len == desc.len && h.count == desc.count => h,
            _ => {
                // A producer that wrote a broken batch, or rewrote it while it was read:
                // skipped, and counted here and in the daemon's stats.
                self.skipped += 1;
                d.report(true);
                return None;
            }
        };
        let mut selection = if desc.flags & DESC_SELECTED != 0 {
            Selection::Ring {
                start: desc.sel_start,
                count: desc.sel_count,
            }
        } else {
            Selection::All
        };
        let needs_offsets = matches!(selection, Selection::Ring { .. }) && header.index_off == 0;
        if self.filter.is_some() || needs_offsets {
            let mut offsets = self
                .spares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            offsets.clear();
            let view = BatchView::unchecked(d.bytes()).ok()?;
            let filtered_out = select(&view, &d, &selection, self.filter.as_deref(), &mut offsets);
            self.filtered_out += filtered_out;
            selection = Selection::Offsets(offsets);
        }
        let batch = Batch {
            delivered: d,
            header,
            selection,
            spares: Arc::clone(&self.spares),
            seq: desc.seq,
            lost: std::mem::take(&mut self.carry.lost),
            lost_packets: std::mem::take(&mut self.carry.lost_packets),
            reconnected: std::mem::take(&mut self.carry.reconnected),
            reassigned: std::mem::take(&mut self.carry.reassigned),
        };
        if batch.is_empty() && self.filter.is_some() {
            // Nothing for this reader: what the batch says goes on the next one.
            self.carry.lost = batch.lost;
            self.carry.lost_packets = batch.lost_packets;
            self.carry.reconnected = batch.reconnected;
            self.carry.reassigned = batch.reassigned;
            return None;
        }
        Some(batch)
    }

    /// Waits for a daemon to let us in again; `None` (and the end) if none does in time.
    fn reconnect(&mut self, stopped_pid: Option<u32>) -> Result<Option<&mut SubscriberLink>> {
        self.carry.reconnected = true;
        let found = connect::reconnect(&self.server, &self.options, stopped_pid, connect_link)?;
        match found {
            Some((link, pid)) => {
                self.reconnects += 1;
                self.info = ServerInfo::from(&link.info);
                self.daemon_pid = pid;
                Ok(Some(self.link.insert(link)))
            }
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }

    /// Testing: the subscriber's link, to write what the library never would.
    #[cfg(feature = "daemon")]
    pub(crate) fn link_mut(&mut self) -> Option<&mut SubscriberLink> {
        self.link.as_mut()
    }
}

/// Puts the offsets of the records this subscriber keeps into `out` (its share, the ones
/// the filter matches); returns how many the filter left out.
fn select(
    view: &BatchView<'_>,
    d: &Delivered,
    selection: &Selection,
    filter: Option<&Filter>,
    out: &mut Vec<u32>,
) -> u64 {
    let mut dropped = 0;
    let mut keep = |off: u32, p: &PacketRef<'_>| {
        if filter.is_none_or(|f| f.matches(p.timestamp_nanos(), p.bytes(), p.orig_len() as u32)) {
            out.push(off);
        } else {
            dropped += 1;
        }
    };
    match selection {
        Selection::Ring { start, count } if view.header().index_off != 0 => {
            for k in 0..u64::from(*count) {
                let index = d.region.read_sel(start + k);
                if let Some((off, _)) = view.index_entry(index) {
                    if let Some(p) = view.record_at(off) {
                        keep(off, &p);
                    }
                }
            }
        }
        Selection::Ring { start, count } => {
            // No index: walk the records once, keeping the selected ones (the selection
            // lists packet indices in increasing order).
            let mut wanted = (0..u64::from(*count))
                .map(|k| d.region.read_sel(start + k))
                .peekable();
            let mut records = view.iter_offsets();
            let mut i = 0u32;
            while let Some(&w) = wanted.peek() {
                let Some((off, p)) = records.next() else {
                    break;
                };
                if i == w {
                    keep(off, &p);
                    wanted.next();
                }
                i += 1;
            }
        }
        _ => {
            for (off, p) in view.iter_offsets() {
                keep(off, &p);
            }
        }
    }
    dropped
}
