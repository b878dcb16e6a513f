//! How bytes move between processes: everything that knows sockets, shared memory and
//! ipc-channel.
//!
//! - The broker's connections: [`sock`] (packet sockets with descriptors and peer
//!   credentials), [`bootstrap`] (how a client and the daemon meet), [`wire`] (what they
//!   say on the socket), [`memfd`] (sealed shared memory), [`region`] (the rings in it),
//!   [`wait`] (spinning, yielding and futex sleeping), [`plink`] and [`slink`] (a
//!   producer's and a subscriber's end), [`ends`] and [`poller`] (the daemon's side).
//! - The point-to-point API over ipc-channel: [`frame`], [`shm`], [`link`].
//!
//! Nothing above this module names an ipc-channel type or a socket; it sees batches,
//! descriptors and [`TransportError`]s.

pub(crate) mod bootstrap;
pub(crate) mod ends;
pub(crate) mod frame;
pub(crate) mod link;
pub(crate) mod memfd;
pub(crate) mod plink;
pub(crate) mod poller;
pub(crate) mod region;
pub(crate) mod shm;
pub(crate) mod slink;
pub(crate) mod sock;
pub(crate) mod wait;
pub(crate) mod wire;

use std::io;
use std::time::Duration;

pub use frame::FrameError;
pub use link::DEFAULT_INLINE_THRESHOLD;
pub use region::RingError;
pub use shm::SegmentError;
pub use wire::WireError;

use crate::batch::BatchError;

/// Maps an I/O error to a [`TransportError`] saying what was being done.
/// Maps a client's region (producer or subscriber) the daemon made: it must be sealed and
/// hold `len` bytes, the size its layout (`valid`) needs; `region` then checks its words.
pub(crate) fn map_region<R>(
    fd: &std::os::fd::OwnedFd,
    valid: bool,
    len: usize,
    region: impl FnOnce(std::sync::Arc<memfd::Mapping>) -> Option<R>,
) -> Result<R, TransportError> {
    use std::os::fd::AsFd;
    let wrong = || TransportError::Protocol("a region of the wrong size".into());
    let size = memfd::check_sealed(fd.as_fd()).map_err(io_err("checking the region"))?;
    if !valid || size < len {
        return Err(wrong());
    }
    let map = memfd::Mapping::new(fd.as_fd(), size, memfd::Access::ReadWrite)
        .map_err(io_err("mapping the region"))?;
    region(std::sync::Arc::new(map)).ok_or_else(wrong)
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Io { what, source }
}

/// Maps an ipc-channel error: a closed peer is [`TransportError::Disconnected`].
pub(crate) fn ipc_err(what: &'static str, e: ipc_channel::IpcError) -> TransportError {
    match e {
        ipc_channel::IpcError::Disconnected => TransportError::Disconnected,
        ipc_channel::IpcError::Io(source) => TransportError::Io { what, source },
        ipc_channel::IpcError::SerializationError(e) => {
            TransportError::Protocol(format!("{what}: {e}"))
        }
    }
}

/// Maps a failed send: a peer that is gone is [`TransportError::Disconnected`].
pub(crate) fn send_err(e: io::Error) -> TransportError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::NotConnected => TransportError::Disconnected,
        _ => TransportError::Io {
            what: "sending a frame",
            source: e,
        },
    }
}

/// True when a blocking call was only interrupted by a signal.
fn interrupted(e: &ipc_channel::IpcError) -> bool {
    matches!(e, ipc_channel::IpcError::Io(io) if io.kind() == io::ErrorKind::Interrupted)
}

/// Runs a blocking receive again when a signal interrupts it (a program with signal
/// handlers must not see `EINTR` as a failure of the link).
pub(crate) fn retry<T>(
    mut f: impl FnMut() -> Result<T, ipc_channel::IpcError>,
) -> Result<T, ipc_channel::IpcError> {
    loop {
        match f() {
            Err(e) if interrupted(&e) => continue,
            r => return r,
        }
    }
}

/// Like [`retry`] for a receive with a timeout: after an interruption, waits only for
/// what is left of `timeout`.
pub(crate) fn retry_timeout<T>(
    timeout: Duration,
    mut f: impl FnMut(Duration) -> Result<T, ipc_channel::TryRecvError>,
) -> Result<T, ipc_channel::TryRecvError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match f(left) {
            Err(ipc_channel::TryRecvError::IpcError(e)) if interrupted(&e) => continue,
            r => return r,
        }
    }
}

/// A failure of the link between two processes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing listens under that name (or it cannot be reached).
    #[error("cannot connect to {name}: {source}")]
    Connect {
        /// The server name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// The server exists but did not accept the connection in time.
    #[error("{name} did not accept the connection within {waited:?}")]
    AcceptTimeout {
        /// The server name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// An operating-system error.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The peer went away without closing the stream.
    #[error("the peer disconnected")]
    Disconnected,
    /// This end was closed already.
    #[error("the connection is closed")]
    Closed,
    /// The peer sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A malformed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A descriptor that does not fit the segments.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A malformed batch.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A malformed broker frame.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// A ring the peer writes that does not hold up.
    #[error(transparent)]
    Ring(#[from] region::RingError),
    /// A wait was interrupted (the caller's interrupt flag was raised).
    #[error("interrupted")]
    Interrupted,
}
