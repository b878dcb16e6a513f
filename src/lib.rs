#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`packet`]: the packet model ([`AsIpcPacket`], [`Packet`], [`PacketRef`],
//!   [`SharedPacket`]).
//! - [`batch`]: the batch wire format, written once and read in place (its byte layout is
//!   documented there for C readers).
//! - `transport`: everything that knows ipc-channel: hand-packed frames, reused
//!   shared-memory segments, the point-to-point link. Nothing outside it names an
//!   ipc-channel type.
//! - [`Server`] / [`ConnectedIpc`] (`server.rs`), [`Client`] (`client.rs`) and
//!   [`TransferIpc`] (`stream.rs`): the point-to-point API of the original crate.
//! - `src/bin/`: the `packet-ipcd` daemon and the `packet-ipc` tool, thin mains.

pub mod batch;
mod client;
pub mod packet;
mod server;
mod stream;
mod transport;

pub use client::{Client, ClientOptions, DEFAULT_CONNECT_TIMEOUT};
pub use packet::{AsIpcPacket, Packet, PacketRef, SharedPacket};
pub use server::{ConnectedIpc, Server, ServerOptions};
pub use stream::TransferIpc;
pub use transport::{FrameError, SegmentError, TransportError, DEFAULT_INLINE_THRESHOLD};

/// Every error of the crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The link between the processes failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A batch could not be written or read.
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_and_errors_are_send() {
        assert_send::<super::Client>();
        assert_send::<super::ConnectedIpc>();
        assert_send::<super::Server>();
        assert_send::<super::Error>();
        assert_send::<super::SharedPacket>();
    }
}
