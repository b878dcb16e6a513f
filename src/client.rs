//! The receiving side of the point-to-point API: [`Client`].

use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::Records;
use crate::packet::{BatchStorage, SharedPacket};
use crate::transport::link::{Incoming, LinkReader};
use crate::transport::TransportError;
use crate::Result;

/// How long [`Client::new`] waits for the server to accept the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`Client`] connects and buffers.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Most batches received and waiting for [`Client::recv`]; `None` for no bound (the
    /// server then never waits for this client).
    pub buffer: Option<usize>,
    /// How long to wait for the server to accept.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            buffer: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// The batch being handed out, and where in it we are.
struct Cursor {
    storage: Arc<dyn BatchStorage>,
    off: usize,
    left: u32,
}

/// How the stream ended.
enum Ended {
    /// The server closed it.
    Closed,
    /// It failed; the error is returned once, then `None`.
    Failed(Option<TransportError>),
}

/// Receives the packets a [`crate::Server`] sends.
///
/// A thread of the client receives batches as they come and queues them (see
/// [`ClientOptions::buffer`]); [`Client::recv`] hands out their packets.
pub struct Client {
    reader: LinkReader,
    current: Option<Cursor>,
    ended: Option<Ended>,
}

impl Client {
    /// Connects to the server of that name, buffering without bound.
    pub fn new(server_name: impl AsRef<str>) -> Result<Client> {
        Client::new_with_size(server_name, None)
    }

    /// Connects to the server of that name, buffering at most `size` batches
    /// (`None`: without bound).
    pub fn new_with_size(server_name: impl AsRef<str>, size: Option<usize>) -> Result<Client> {
        Client::with_options(
            server_name,
            ClientOptions {
                buffer: size,
                ..ClientOptions::default()
            },
        )
    }

    /// Connects with explicit options.
    pub fn with_options(server_name: impl AsRef<str>, options: ClientOptions) -> Result<Client> {
        let reader = LinkReader::connect(
            server_name.as_ref(),
            options.buffer,
            options.connect_timeout,
        )?;
        Ok(Client {
            reader,
            current: None,
            ended: None,
        })
    }

    /// Up to `size` packets: blocks until at least one is there, then takes what has
    /// arrived, without waiting for more. `None` once the server closed the stream and
    /// every packet was taken. If the server vanished without closing, the error comes
    /// once after the last packet, then `None`.
    ///
    /// The packets share the batches they came in (no copy); those batches are given back
    /// to the server when their last packet is dropped.
    pub fn recv(&mut self, size: usize) -> Result<Option<Vec<SharedPacket>>> {
        self.reader.flush_releases();
        let mut out = Vec::new();
        if size == 0 {
            return Ok(Some(out));
        }
        loop {
            self.take(&mut out, size);
            if out.len() == size || self.ended.is_some() {
                break;
            }
            let next = if out.is_empty() {
                self.reader.incoming.recv().ok()
            } else {
                match self.reader.incoming.try_recv() {
                    Ok(next) => Some(next),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(Incoming::Batch(storage, left)) => {
                    self.current = Some(Cursor {
                        storage,
                        off: crate::batch::HEADER_LEN,
                        left,
                    })
                }
                Some(Incoming::End) => self.ended = Some(Ended::Closed),
                Some(Incoming::Failed(e)) => self.ended = Some(Ended::Failed(Some(e))),
                None => {
                    self.ended = Some(Ended::Failed(Some(TransportError::Disconnected)));
                }
            }
        }
        if !out.is_empty() {
            return Ok(Some(out));
        }
        match &mut self.ended {
            Some(Ended::Failed(e)) => match e.take() {
                Some(e) => Err(e.into()),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// Moves up to `size - out.len()` packets of the current batch into `out`.
    fn take(&mut self, out: &mut Vec<SharedPacket>, size: usize) {
        let Some(cur) = &mut self.current else { return };
        let want = (size - out.len()).min(cur.left as usize);
        out.reserve(want);
        let mut records = Records::resume(cur.storage.bytes(), cur.off, cur.left);
        for _ in 0..want {
            let Some((p, at)) = records.next_with_offset() else {
                break;
            };
            out.push(SharedPacket::new(Arc::clone(&cur.storage), &p, at as u32));
        }
        (cur.off, cur.left) = records.position();
        if cur.left == 0 {
            self.current = None;
        }
    }
}
