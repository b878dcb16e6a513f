//! The sending side of the point-to-point API: [`Server`] and [`ConnectedIpc`].

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::thread;

use crate::packet::AsIpcPacket;
use crate::transport::link::{Listener, WriterOptions};
use crate::transport::shm::PoolLimits;
use crate::transport::{TransportError, DEFAULT_INLINE_THRESHOLD};
use crate::{Error, Result};

/// How a [`Server`]'s connection sends batches.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Batches of at most this many bytes (encoded) travel inline in a message; larger
    /// ones are written into reused shared memory and only a descriptor travels.
    pub inline_threshold: usize,
    /// Most shared-memory segments the connection keeps. When the client holds all of
    /// them, batches travel inline until it gives some back.
    pub max_segments: usize,
    /// Most bytes over all of the connection's segments.
    pub max_segment_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let pool = PoolLimits::default();
        ServerOptions {
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            max_segments: pool.max_segments,
            max_segment_bytes: pool.max_bytes,
        }
    }
}

/// A named endpoint that one [`crate::Client`] connects to.
///
/// ```no_run
/// let server = packet_ipc::Server::new()?;
/// println!("connect to {}", server.name());
/// let connection = server.accept()?;
/// # Ok::<(), packet_ipc::Error>(())
/// ```
pub struct Server {
    listener: Listener,
    /// Kept as a `String` so that `name()` reads as in the original crate.
    name: String,
    options: ServerOptions,
}

impl Server {
    /// A new server with a fresh name (a socket in a new directory under `$TMPDIR`).
    pub fn new() -> Result<Server> {
        Server::with_options(ServerOptions::default())
    }

    /// A new server whose connection sends as `options` say.
    pub fn with_options(options: ServerOptions) -> Result<Server> {
        let listener = Listener::new()?;
        let name = listener.name().to_owned();
        Ok(Server {
            listener,
            name,
            options,
        })
    }

    /// The name a client passes to [`crate::Client::new`].
    pub fn name(&self) -> &String {
        &self.name
    }

    /// Waits (blocking) for a client to connect.
    pub fn accept(self) -> Result<ConnectedIpc> {
        let writer = self.listener.accept(WriterOptions {
            inline_threshold: self.options.inline_threshold,
            pool: PoolLimits {
                max_segments: self.options.max_segments,
                max_bytes: self.options.max_segment_bytes,
            },
        })?;
        Ok(ConnectedIpc {
            writer: Mutex::new(writer),
        })
    }

    /// Waits for a client without blocking the caller: the wait runs on a thread of its
    /// own and the future resolves when a client has connected.
    pub fn accept_async(self) -> impl Future<Output = Result<ConnectedIpc>> + Send + 'static {
        let (tx, rx) = futures::channel::oneshot::channel();
        let spawned = thread::Builder::new()
            .name("packet-ipc-accept".into())
            .spawn(move || {
                // The receiver may be gone if the future was dropped; nothing to do then.
                let _ = tx.send(self.accept());
            });
        async move {
            spawned.map_err(|source| TransportError::Io {
                what: "starting the accept thread",
                source,
            })?;
            rx.await.map_err(|_| TransportError::Closed)?
        }
    }
}

/// The server's end of a connection: sends batches of packets to the client.
///
/// Dropping it closes the stream like [`ConnectedIpc::close`].
pub struct ConnectedIpc {
    /// A mutex so that `send` takes `&self`, as in the original crate.
    writer: Mutex<crate::transport::link::LinkWriter>,
}

impl ConnectedIpc {
    /// Sends the packets as one batch. The packets are written once, into shared memory
    /// the client reads in place (or inline in the message for small batches).
    pub fn send<T: AsIpcPacket>(&self, packets: &[T]) -> Result<()> {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(packets)
            .map_err(Error::from)
    }

    /// Ends the stream: the client receives what was sent, then `None`.
    pub fn close(&mut self) -> Result<()> {
        self.writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .close()
            .map_err(Error::from)
    }
}

impl Drop for ConnectedIpc {
    fn drop(&mut self) {
        // A client that is already gone needs no end of stream.
        let _ = self.close();
    }
}
