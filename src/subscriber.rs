//! [`Subscriber`]: receives every batch a named server of the daemon gets.

use std::time::Duration;

use crate::batch::{BatchView, Header, Records};
use crate::connect::{self, ConnectOptions, ServerInfo};
use crate::transport::broker::{SubEvent, SubscriberConn};
use crate::transport::frame::NoticeCode;
use crate::transport::shm::Lease;
use crate::transport::TransportError;
use crate::{Error, Result};

/// A batch received from the daemon, read in place in shared memory.
///
/// The memory goes back to the producer when the batch is dropped: read what you need,
/// then let it go.
///
/// The daemon checked the batch's header; the iterator checks every record's bounds as it
/// reads, and stops early at one that would overrun (a producer that wrote a malformed
/// batch, or changed it after sending), so it never reads out of bounds.
/// [`Batch::check`] walks the whole batch at once for a reader that wants an error instead.
pub struct Batch {
    lease: Lease,
    count: usize,
    seq: u64,
    lost: u64,
    reconnected: bool,
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

    /// True on the first batch after a reconnection to a new daemon: packets may have been
    /// missed in between, and how many is not known.
    pub fn reconnected(&self) -> bool {
        self.reconnected
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the batch has no packet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The packets, borrowed from the batch.
    pub fn iter(&self) -> Records<'_> {
        Records::resume(
            self.lease.bytes(),
            crate::batch::HEADER_LEN,
            self.count as u32,
        )
    }

    /// Checks every record of the batch (see [`BatchView::parse`]): `Ok` means iterating
    /// yields exactly [`Batch::len`] packets, unless the producer writes to the batch
    /// after this call. One pass over the batch; readers that only iterate need not call it.
    pub fn check(&self) -> Result<()> {
        BatchView::parse(self.lease.bytes())?;
        Ok(())
    }

    /// The batch's bytes, in the format of [`crate::batch`].
    pub fn as_bytes(&self) -> &[u8] {
        self.lease.bytes()
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = crate::PacketRef<'a>;
    type IntoIter = Records<'a>;
    fn into_iter(self) -> Records<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("seq", &self.seq)
            .field("lost", &self.lost)
            .field("len", &self.count)
            .field("reconnected", &self.reconnected)
            .finish()
    }
}

/// What [`Subscriber::recv_timeout`] got.
#[derive(Debug)]
pub enum Received {
    /// A batch.
    Batch(Batch),
    /// Nothing within the timeout.
    Timeout,
    /// The server is gone for good (removed, or no daemon came back in time).
    End,
}

/// Receives every batch sent to a named server of `packet-ipcd` after `connect` returned.
///
/// When the daemon stops or dies, the subscriber waits for one to come back (up to
/// [`ConnectOptions::reconnect_wait`]) and goes on; the first batch after that says
/// [`Batch::reconnected`].
pub struct Subscriber {
    server: String,
    options: ConnectOptions,
    conn: Option<SubscriberConn>,
    info: ServerInfo,
    /// The daemon this client is connected to (told apart from its successor).
    daemon_pid: u32,
    /// The next batch follows a reconnection.
    gap: bool,
    /// The server is gone for good.
    ended: bool,
}

impl Subscriber {
    /// Connects to `server` with the default options.
    pub fn connect(server: impl AsRef<str>) -> Result<Subscriber> {
        Subscriber::connect_with(server, ConnectOptions::default())
    }

    /// Connects to `server`. Once this returns, every batch the server gets is delivered.
    pub fn connect_with(server: impl AsRef<str>, options: ConnectOptions) -> Result<Subscriber> {
        let server = server.as_ref().to_owned();
        let connected = connect::subscriber_once(&server, &options)?;
        let conn = connected.conn;
        Ok(Subscriber {
            info: ServerInfo::from(&conn.info),
            server,
            options,
            conn: Some(conn),
            daemon_pid: connected.daemon_pid,
            gap: false,
            ended: false,
        })
    }

    /// The id the daemon gave this client (as `stats` lists it); it changes when the
    /// client reconnects.
    pub fn id(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.id)
    }

    /// The server this subscriber receives from.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The next batch; `None` once the server is gone for good.
    pub fn recv(&mut self) -> Result<Option<Batch>> {
        match self.next(None)? {
            Received::Batch(b) => Ok(Some(b)),
            Received::End => Ok(None),
            Received::Timeout => unreachable_timeout(),
        }
    }

    /// The next batch, waiting at most `timeout` (a reconnection may take longer).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received> {
        self.next(Some(timeout))
    }

    fn next(&mut self, timeout: Option<Duration>) -> Result<Received> {
        loop {
            if self.ended {
                return Ok(Received::End);
            }
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => match self.reconnect(None)? {
                    Some(conn) => conn,
                    None => return Ok(Received::End),
                },
            };
            match conn.next(timeout) {
                Ok(SubEvent::Batch(lease, d)) => {
                    // Only the header is checked here: the walk checks every record's
                    // bounds as it reads (`Batch::check` walks them all at once).
                    let header = Header::parse(lease.bytes())?;
                    return Ok(Received::Batch(Batch {
                        count: header.count as usize,
                        lease,
                        seq: d.seq,
                        lost: u64::from(d.lost),
                        reconnected: std::mem::take(&mut self.gap),
                    }));
                }
                Ok(SubEvent::Timeout) => return Ok(Received::Timeout),
                Ok(SubEvent::Notice(NoticeCode::ServerGone, _)) => {
                    self.conn = None;
                    self.ended = true;
                }
                Ok(SubEvent::Notice(NoticeCode::Stopping, _)) => {
                    let pid = Some(self.daemon_pid);
                    self.conn = None;
                    if self.reconnect(pid)?.is_none() {
                        return Ok(Received::End);
                    }
                }
                Ok(SubEvent::Notice(_, reason)) => {
                    self.conn = None;
                    self.ended = true;
                    return Err(Error::Disconnected {
                        server: self.server.clone(),
                        reason,
                    });
                }
                Err(TransportError::Disconnected) => {
                    self.conn = None;
                    if self.reconnect(None)?.is_none() {
                        return Ok(Received::End);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for a daemon to let us in again; `None` (and the end) if none does in time.
    fn reconnect(&mut self, stopped_pid: Option<u32>) -> Result<Option<&mut SubscriberConn>> {
        self.gap = true;
        let found = connect::reconnect(
            &self.server,
            &self.options,
            stopped_pid,
            connect::subscriber_once,
        )?;
        match found {
            Some(conn) => {
                self.info = ServerInfo::from(&conn.conn.info);
                self.daemon_pid = conn.daemon_pid;
                Ok(Some(self.conn.insert(conn.conn)))
            }
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }
}

fn unreachable_timeout() -> Result<Option<Batch>> {
    Err(TransportError::Protocol("a wait without timeout timed out".into()).into())
}
