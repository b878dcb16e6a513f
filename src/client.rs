//! The receiving side of the point-to-point API: [`Client`].

use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchError, Records};
use crate::packet::{BatchStorage, SharedPacket};
use crate::transport::link::{Incoming, LinkReader};
use crate::transport::TransportError;
use crate::Result;

/// How long [`Client::new`] waits for the server to accept the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`Client`] connects and buffers.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// `Some(n)`: the server keeps at most `n` batches for this client in shared memory
    /// (then it sends inline, and the connection's socket buffer is the bound: the server
    /// is paced by the client), and `recv` reads the connection itself. `None`: a thread
    /// of the client receives everything as it comes into an unbounded queue, so the
    /// server never waits for this client.
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
    /// Records in the batch.
    storage_count: u32,
    /// Where the records end.
    end: usize,
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
/// Either a thread of the client receives batches as they come and queues them, or
/// `recv` reads them itself (see [`ClientOptions::buffer`]); [`Client::recv`] hands out
/// their packets.
pub struct Client {
    reader: LinkReader,
    current: Option<Cursor>,
    ended: Option<Ended>,
    /// A corrupt batch met after packets were already taken, reported next.
    corrupt: Option<BatchError>,
}

impl Client {
    /// Connects to the server of that name, buffering without bound.
    pub fn new(server_name: impl AsRef<str>) -> Result<Client> {
        Client::new_with_size(server_name, None)
    }

    /// Connects to the server of that name, buffering at most `size` batches in shared
    /// memory (`None`: without bound). See [`ClientOptions::buffer`].
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
            corrupt: None,
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
        self.reader.flush_some_releases();
        if let Some(e) = self.corrupt.take() {
            return Err(e.into());
        }
        let mut out = Vec::new();
        if size == 0 {
            return Ok(Some(out));
        }
        loop {
            if let Err(e) = self.take(&mut out, size) {
                // A corrupt batch: what came before it was handed out; report it now, or
                // on the next call if packets are already taken.
                if out.is_empty() {
                    return Err(e.into());
                }
                self.corrupt = Some(e);
                break;
            }
            if out.len() == size || self.ended.is_some() {
                break;
            }
            let Some(next) = self.reader.next(out.is_empty()) else {
                break;
            };
            match next {
                Incoming::Batch(storage, header) => {
                    self.current = Some(Cursor {
                        storage,
                        storage_count: header.count,
                        end: header.records_end(),
                        off: usize::from(header.header_len),
                        left: header.count,
                    })
                }
                Incoming::End => self.ended = Some(Ended::Closed),
                Incoming::Failed(e) => self.ended = Some(Ended::Failed(Some(e))),
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

    /// Moves up to `size - out.len()` packets of the current batch into `out`, checking
    /// each record as it goes (the batch's header was checked on receipt).
    fn take(&mut self, out: &mut Vec<SharedPacket>, size: usize) -> Result<(), BatchError> {
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        let want = (size - out.len()).min(cur.left as usize);
        out.reserve(want);
        let mut records = Records::resume(&cur.storage.bytes()[..cur.end], cur.off, cur.left);
        for _ in 0..want {
            let Some(p) = records.next() else {
                let (offset, left) = records.position();
                let index = cur.storage_count - left;
                self.current = None;
                return Err(BatchError::RecordOverrun { index, offset });
            };
            out.push(SharedPacket::new(Arc::clone(&cur.storage), &p));
        }
        (cur.off, cur.left) = records.position();
        if cur.left == 0 {
            self.current = None;
        }
        Ok(())
    }
}
