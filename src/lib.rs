#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`packet`]: the packet model ([`AsIpcPacket`], [`Packet`], [`PacketRef`],
//!   [`SharedPacket`]).
//! - [`batch`]: the batch wire format, written once and read in place (its byte layout is
//!   documented there for C readers).
//! - [`flow`]: a symmetric 32-bit flow hash per packet, for balancing flows over the
//!   workers of a subscriber group.
//! - `transport`: how bytes move. Point to point, over ipc-channel (hand-packed frames,
//!   reused shared-memory segments, the link; nothing outside names an ipc-channel type).
//!   Through the daemon: `SOCK_SEQPACKET` sockets with credentials, sealed memfds, rings
//!   of descriptors in shared memory, futex doorbells, the bootstrap.
//! - [`Server`] / [`ConnectedIpc`] (`server.rs`), [`Client`] (`client.rs`) and
//!   [`TransferIpc`] (`stream.rs`): the point-to-point API of the original crate.
//! - [`rendezvous`]: where the daemon and its clients meet: the runtime directory, the
//!   rendezvous file listing the servers, the spool request files, and safe file access.
//! - [`connect`]: connection options of the daemon's clients, listing servers, stats.
//! - [`Producer`] (`producer.rs`) and [`Subscriber`] (`subscriber.rs`): clients of the
//!   daemon, which find it through the rendezvous file and reconnect by themselves.
//! - [`options`]: options of both the daemon's configuration and its clients
//!   ([`options::WaitMode`]); [`stats`](mod@stats): the daemon's counters as clients read them.
//! - `broker` (feature `daemon`): the daemon `packet-ipcd`: configuration, one hub thread
//!   per named server doing the fan-out, lifecycle, metrics.
//! - [`libpcap`]: libpcap loaded at run time: tcpdump filter expressions ([`libpcap::Filter`])
//!   and capture from interfaces ([`libpcap::LiveCapture`]).
//!
//! The daemon `packet-ipcd` is this package's binary with the `daemon` feature; the other
//! programs (`packet-ipc`, `packet-ipc-extcap`) are the `packet-ipc-cli` package, in
//! `cli/`; the C API is `capi/`.

pub mod batch;
mod bpf;
#[cfg(feature = "daemon")]
pub mod broker;
mod client;
pub mod connect;
pub mod flow;
pub mod libpcap;
pub mod options;
pub mod packet;
mod producer;
pub mod rendezvous;
mod server;
pub mod stats;
mod stream;
mod subscriber;
// The daemon's side of the broker transport is dead code in a client-only build.
#[cfg_attr(not(feature = "daemon"), allow(dead_code, unused_imports))]
mod transport;

pub use client::{Client, ClientOptions, DEFAULT_CONNECT_TIMEOUT};
pub use connect::{list_servers, stats, ConnectOptions, ServerInfo};
pub use options::WaitMode;
pub use packet::{AsIpcPacket, Packet, PacketRef, SharedPacket};
pub use producer::{Producer, ProducerReport};
pub use server::{ConnectedIpc, Server, ServerOptions};
pub use stream::TransferIpc;
pub use subscriber::{Batch, BatchIter, Received, Subscriber};
pub use transport::{
    FrameError, RingError, SegmentError, TransportError, WireError, DEFAULT_INLINE_THRESHOLD,
};

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
    /// No daemon is running where the client looked (the message says where).
    #[error("{0}")]
    NoDaemon(String),
    /// The daemon has no server of that name.
    #[error("unknown server {name:?} (the daemon has: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The servers there are.
        known: Vec<String>,
    },
    /// This user may not use that server in that role.
    #[error("permission denied: cannot {action} server {server}{} ({})", group.as_ref().map(|g| format!(": only members of group {g} may")).unwrap_or_default(), path.display())]
    PermissionDenied {
        /// The server.
        server: String,
        /// "produce to" or "subscribe to".
        action: &'static str,
        /// The group the server requires, if any.
        group: Option<String>,
        /// The spool directory that refused us.
        path: std::path::PathBuf,
    },
    /// The daemon refused the connection.
    #[error("server {server} refused the connection: {reason}")]
    Refused {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The daemon did not answer the request in time.
    #[error("the daemon did not answer a request for server {server} within {waited:?} (is packet-ipcd running?)")]
    NoAnswer {
        /// The server.
        server: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The server was removed from the daemon's configuration.
    #[error("server {server} was removed")]
    ServerGone {
        /// The server.
        server: String,
    },
    /// The daemon cut this client off.
    #[error("disconnected from server {server}: {reason}")]
    Disconnected {
        /// The server.
        server: String,
        /// Why, as the daemon said.
        reason: String,
    },
    /// The daemon stopped and none came back in time.
    #[error("no packet-ipcd came back for server {server} within {waited:?}")]
    DaemonGone {
        /// The server.
        server: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// A batch over the server's `max-batch-bytes`.
    #[error(
        "batch of {bytes} bytes is over the {max} bytes server {server} accepts (max-batch-bytes)"
    )]
    BatchTooLarge {
        /// The server.
        server: String,
        /// The batch's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A request could not be written to the daemon's spool directory.
    #[error("cannot reach the daemon: {0}")]
    Spool(String),
    /// A subscriber's filter expression could not be compiled (or libpcap is missing).
    #[error(transparent)]
    Filter(#[from] libpcap::FilterError),
    /// A blocking call was interrupted through [`ConnectOptions::interrupt`].
    #[error("interrupted")]
    Interrupted,
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
