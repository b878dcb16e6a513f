//! The daemon's live counters, as `packet-ipc stats` and [`crate::stats`] return them.

use serde::{Deserialize, Serialize};

/// Counters of one subscriber, cumulative since it connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberStats {
    /// The subscriber's id.
    pub id: u64,
    /// Its process id.
    pub pid: u32,
    /// Batches delivered.
    pub batches_out: u64,
    /// Packets delivered.
    pub packets_out: u64,
    /// Batches dropped for it.
    pub lost_batches: u64,
    /// Packets in the batches dropped for it.
    pub lost_packets: u64,
    /// Batches waiting in its queue.
    pub queued: u64,
    /// Batches delivered and not yet released.
    pub in_flight: u64,
}

/// Counters of one server, cumulative since it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// The server's name.
    pub name: String,
    /// Producers connected now.
    pub producers: u64,
    /// Batches received from producers.
    pub batches_in: u64,
    /// Packets received from producers.
    pub packets_in: u64,
    /// Batches that reached no subscriber (none was connected).
    pub unsubscribed_batches: u64,
    /// Connections refused (limits, bad requests).
    pub refused: u64,
    /// Clients dropped for misbehaving or by the `disconnect` policy.
    pub dropped_clients: u64,
    /// The subscribers connected now.
    pub subscribers: Vec<SubscriberStats>,
}
