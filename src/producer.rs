//! [`Producer`]: sends packets to a named server of the daemon.

use std::time::Duration;

use crate::batch::{self, EncodeOptions};
use crate::connect::{self, ConnectOptions, Role, ServerInfo};
use crate::flow::{self, Balance};
use crate::packet::AsIpcPacket;
use crate::transport::plink::{IndexWanted, ProducerLink, ProducerNotice};
use crate::transport::TransportError;
use crate::{Error, Result};

/// What a producer knows of its own history: whether batches may have been lost with a
/// daemon that died.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerReport {
    /// Times it connected again to a daemon (after one stopped or died).
    pub reconnects: u64,
    /// Batches it had published that the daemon that went away may not have delivered to
    /// every subscriber (it died holding them, or had not taken them yet).
    pub uncertain_batches: u64,
    /// The packets in those batches.
    pub uncertain_packets: u64,
}

/// Sends batches of packets to a named server of `packet-ipcd`, which fans them out to
/// every subscriber of that server.
///
/// Each batch is written once, into shared memory the subscribers read in place. When the
/// daemon stops or dies, `send` waits for one to come back (up to
/// [`ConnectOptions::reconnect_wait`]) and sends the batch there; [`Producer::report`]
/// then says which batches the old one may have swallowed.
pub struct Producer {
    server: String,
    options: ConnectOptions,
    link: Option<ProducerLink>,
    info: ServerInfo,
    /// The daemon this client is connected to (told apart from its successor).
    daemon_pid: u32,
    /// The daemon that said it was stopping, not to be asked again.
    stopped_pid: Option<u32>,
    report: ProducerReport,
    /// The last total of source drops reported (sent again after a reconnection).
    source_dropped: u64,
}

fn link(c: connect::Connected, options: &ConnectOptions) -> Result<(ProducerLink, u32)> {
    let mut link = ProducerLink::new(
        c.conn,
        c.welcome.id,
        c.welcome.server,
        c.welcome.role,
        c.fds,
        options.wait.unwrap_or_default(),
        options.interrupt.clone(),
    )?;
    link.ready()?;
    Ok((link, c.daemon_pid))
}

fn connect_link(server: &str, options: &ConnectOptions) -> Result<(ProducerLink, u32)> {
    link(
        connect::connect_once(server, Role::Producer, options)?,
        options,
    )
}

impl Producer {
    /// Connects to `server` with the default options.
    pub fn connect(server: impl AsRef<str>) -> Result<Producer> {
        Producer::connect_with(server, ConnectOptions::default())
    }

    /// Connects to `server`.
    pub fn connect_with(server: impl AsRef<str>, options: ConnectOptions) -> Result<Producer> {
        let server = server.as_ref().to_owned();
        let (link, daemon_pid) = connect_link(&server, &options)?;
        Ok(Producer {
            info: ServerInfo::from(&link.info),
            server,
            options,
            link: Some(link),
            daemon_pid,
            stopped_pid: None,
            report: ProducerReport::default(),
            source_dropped: 0,
        })
    }

    /// The id the daemon gave this client (as `stats` lists it); it changes when the
    /// client reconnects.
    pub fn id(&self) -> Option<u64> {
        self.link.as_ref().map(|c| c.id)
    }

    /// The server this producer sends to.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Reconnections, and the batches a daemon that went away may have swallowed.
    pub fn report(&self) -> ProducerReport {
        self.report
    }

    /// Tells the daemon how many packets this producer's source has lost so far (a running
    /// total: a capture's kernel drops, say). `packet-ipc stats` shows it per producer and
    /// per server, so that a source that cannot keep up is told apart from a subscriber
    /// that cannot.
    pub fn report_source_drops(&mut self, total: u64) {
        self.source_dropped = total;
        if let Some(link) = &self.link {
            link.report_source_drops(total);
        }
    }

    /// Sends the packets as one batch. Packets longer than the server's snaplen are cut
    /// to it (their original length is kept). Under `overflow = "block"` this waits while
    /// the slowest subscriber catches up.
    pub fn send<T: AsIpcPacket>(&mut self, packets: &[T]) -> Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        let snaplen = self.info.snaplen as usize;
        let bytes = batch::encoded_len_cut(packets, snaplen);
        if bytes > self.info.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                server: self.server.clone(),
                bytes,
                max: self.info.max_batch_bytes,
            });
        }
        let linktype = self.info.linktype;
        loop {
            let link = match &mut self.link {
                Some(link) => link,
                None => self.reconnect()?,
            };
            let mut options = EncodeOptions {
                snaplen,
                ..EncodeOptions::default()
            };
            let balance = match link.index_wanted() {
                IndexWanted::No => None,
                IndexWanted::Flow => Some(Balance::Flow),
                IndexWanted::IpPair => Some(Balance::IpPair),
            };
            // The index must fit in the slot too; a batch that fills its slot goes without
            // one (the daemon then hashes its packets itself).
            let with_index = bytes + packets.len() * batch::INDEX_ENTRY_LEN;
            if let Some(b) = balance.filter(|_| with_index <= link.max_batch()) {
                options.index = true;
                if b == Balance::IpPair {
                    options.flags = batch::FLAG_INDEX_IPPAIR;
                }
            }
            let mode = balance.unwrap_or(Balance::Flow);
            let sent = link.send(packets, &options, |data| flow::hash(linktype, data, mode));
            match sent {
                Ok(None) => return Ok(()),
                Ok(Some(ProducerNotice::ServerGone)) => {
                    self.link = None;
                    return Err(Error::ServerGone {
                        server: self.server.clone(),
                    });
                }
                Ok(Some(ProducerNotice::Refused(reason))) => {
                    self.link = None;
                    return Err(Error::Disconnected {
                        server: self.server.clone(),
                        reason,
                    });
                }
                Ok(Some(ProducerNotice::Stopping)) => {
                    // A daemon that stops takes what was published before it goes.
                    self.lose_link(false);
                    self.stopped_pid = Some(self.daemon_pid);
                }
                Err(TransportError::Disconnected) => self.lose_link(true),
                Err(TransportError::Interrupted) => return Err(Error::Interrupted),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until the daemon has taken every batch sent (at most `timeout`); true if it
    /// has. Dropping a producer does not wait: what it published stays in its ring for
    /// the daemon to take.
    pub fn flush(&mut self, timeout: Duration) -> bool {
        self.link.as_mut().is_none_or(|l| l.flush(timeout))
    }

    fn lose_link(&mut self, died: bool) {
        if let Some(mut link) = self.link.take() {
            let (batches, packets) = if died {
                link.in_flight()
            } else {
                // Given a moment, a stopping daemon takes what was published.
                let taken = link.flush(Duration::from_millis(200));
                if taken {
                    (0, 0)
                } else {
                    link.in_flight()
                }
            };
            self.report.uncertain_batches += batches;
            self.report.uncertain_packets += packets;
        }
    }

    fn reconnect(&mut self) -> Result<&mut ProducerLink> {
        let found = connect::reconnect(
            &self.server,
            &self.options,
            self.stopped_pid.take(),
            connect_link,
        )?;
        let Some((link, pid)) = found else {
            return Err(Error::DaemonGone {
                server: self.server.clone(),
                waited: self.options.reconnect_wait,
            });
        };
        self.report.reconnects += 1;
        self.info = ServerInfo::from(&link.info);
        self.daemon_pid = pid;
        link.report_source_drops(self.source_dropped);
        Ok(self.link.insert(link))
    }

    /// Testing: the producer's link, to write what the library never would.
    #[cfg(feature = "daemon")]
    pub(crate) fn link_mut(&mut self) -> Option<&mut ProducerLink> {
        self.link.as_mut()
    }
}
