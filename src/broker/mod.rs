//! The broker: the daemon `packet-ipcd` and what its clients need to find it.
//!
//! - [`config`]: the TOML configuration, its defaults and environment overrides.
//! - [`rendezvous`]: the runtime directory and the rendezvous file listing the servers.
//! - [`spool`]: request files, through which a client asks the daemon to connect to it.
//! - `hub`: one thread per named server, fanning batches out to its subscribers.
//! - [`daemon`]: lifecycle: startup, signals, reload, systemd notification, shutdown.
//! - [`metrics`]: the Prometheus endpoint (`[metrics] listen`), read from the hubs' counters.

pub mod config;
pub mod daemon;
pub(crate) mod hub;
pub mod metrics;
#[doc(hidden)]
pub mod testing;

pub use crate::stats::{ServerStats, SubscriberStats};
