//! [`Producer`]: sends packets to a named server of the daemon.

use crate::connect::{self, ConnectOptions, ServerInfo};
use crate::packet::AsIpcPacket;
use crate::transport::broker::{ProducerConn, ProducerNotice};
use crate::transport::TransportError;
use crate::{batch, Error, Result};

/// Sends batches of packets to a named server of `packet-ipcd`, which fans them out to
/// every subscriber of that server.
///
/// Each batch is written once, into shared memory the subscribers read in place. When the
/// daemon stops or dies, `send` waits for one to come back (up to
/// [`ConnectOptions::reconnect_wait`]) and sends the batch there.
pub struct Producer {
    server: String,
    options: ConnectOptions,
    conn: Option<ProducerConn>,
    info: ServerInfo,
    /// The daemon this client is connected to (told apart from its successor).
    daemon_pid: u32,
    /// The daemon that said it was stopping, not to be asked again.
    stopped_pid: Option<u32>,
}

impl Producer {
    /// Connects to `server` with the default options.
    pub fn connect(server: impl AsRef<str>) -> Result<Producer> {
        Producer::connect_with(server, ConnectOptions::default())
    }

    /// Connects to `server`.
    pub fn connect_with(server: impl AsRef<str>, options: ConnectOptions) -> Result<Producer> {
        let server = server.as_ref().to_owned();
        let connected = connect::producer_once(&server, &options)?;
        let conn = connected.conn;
        Ok(Producer {
            info: ServerInfo::from(&conn.info),
            server,
            options,
            conn: Some(conn),
            daemon_pid: connected.daemon_pid,
            stopped_pid: None,
        })
    }

    /// The id the daemon gave this client (as `stats` lists it); it changes when the
    /// client reconnects.
    pub fn id(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.id)
    }

    /// The server this producer sends to.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Sends the packets as one batch. Packets longer than the server's snaplen are cut
    /// to it (their original length is kept). Under `overflow = "block"` this waits while
    /// the slowest subscriber catches up.
    pub fn send<T: AsIpcPacket>(&mut self, packets: &[T]) -> Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        let bytes = batch::encoded_len_cut(packets, self.info.snaplen as usize);
        if bytes > self.info.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                server: self.server.clone(),
                bytes,
                max: self.info.max_batch_bytes,
            });
        }
        loop {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => self.reconnect()?,
            };
            match conn.send(packets) {
                Ok(None) => return Ok(()),
                Ok(Some(ProducerNotice::ServerGone)) => {
                    self.conn = None;
                    return Err(Error::ServerGone {
                        server: self.server.clone(),
                    });
                }
                Ok(Some(ProducerNotice::Refused(reason))) => {
                    self.conn = None;
                    return Err(Error::Disconnected {
                        server: self.server.clone(),
                        reason,
                    });
                }
                Ok(Some(ProducerNotice::Stopping)) => {
                    self.stopped_pid = Some(self.daemon_pid);
                    self.conn = None;
                }
                Err(TransportError::Disconnected) => self.conn = None,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn reconnect(&mut self) -> Result<&mut ProducerConn> {
        let found = connect::reconnect(
            &self.server,
            &self.options,
            self.stopped_pid.take(),
            connect::producer_once,
        )?;
        let Some(conn) = found else {
            return Err(Error::DaemonGone {
                server: self.server.clone(),
                waited: self.options.reconnect_wait,
            });
        };
        self.info = ServerInfo::from(&conn.conn.info);
        self.daemon_pid = conn.daemon_pid;
        Ok(self.conn.insert(conn.conn))
    }
}
