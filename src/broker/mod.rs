//! The broker: the daemon `packet-ipcd` and what its clients need to find it.
//!
//! - [`config`]: the TOML configuration, its defaults and environment overrides.
//! - [`crate::rendezvous`] (beside it, since clients need it too): the runtime directory,
//!   the rendezvous file and the spool request files.
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
