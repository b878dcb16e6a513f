//! The daemon's live counters, as `packet-ipc stats` and [`crate::connect::stats`] return
//! them (and as `packet-ipc stats --json` prints them).

use serde::{Deserialize, Serialize};

/// Counters of one subscriber, cumulative since it connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberStats {
    /// The subscriber's id.
    pub id: u64,
    /// Its process id; `null` for a user who is not in the server's groups.
    pub pid: Option<u32>,
    /// The group it belongs to (`null` for a plain subscriber).
    pub group: Option<String>,
    /// Batches delivered.
    pub batches_out: u64,
    /// Packets delivered (for a group member: the packets of its share).
    pub packets_out: u64,
    /// Batches dropped for it.
    pub lost_batches: u64,
    /// Packets in the batches dropped for it.
    pub lost_packets: u64,
    /// Batches waiting in its queue.
    pub queued: u64,
    /// Batches delivered and not yet released.
    pub in_flight: u64,
    /// Batches it skipped as malformed (a producer that wrote a broken batch, or changed
    /// it while it was read), as it reports them.
    pub skipped: u64,
}

/// Counters of one producer, cumulative since it connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStats {
    /// The producer's id.
    pub id: u64,
    /// Its process id; `null` for a user who is not in the server's groups.
    pub pid: Option<u32>,
    /// Batches it sent.
    pub batches: u64,
    /// Packets it sent.
    pub packets: u64,
    /// Packets its source lost before they reached it (a capture that cannot keep up),
    /// as it reports them.
    pub source_dropped: u64,
}

/// Counters of one subscriber group, cumulative since it formed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Members now.
    pub members: u64,
    /// Packets delivered to its members, departed ones included.
    pub packets_out: u64,
    /// Packets lost by its members, departed ones included.
    pub lost_packets: u64,
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
    /// Captured bytes received from producers.
    pub bytes_in: u64,
    /// Batches that reached no subscriber (none was connected).
    pub unsubscribed_batches: u64,
    /// Connections refused (limits, bad requests).
    pub refused: u64,
    /// Clients dropped for misbehaving or by the `disconnect` policy.
    pub dropped_clients: u64,
    /// Batches lost by subscribers, departed ones included.
    pub lost_batches: u64,
    /// Packets lost by subscribers, departed ones included.
    pub lost_packets: u64,
    /// Packets the producers' sources lost, departed producers included.
    pub source_dropped: u64,
    /// The producers connected now.
    pub producer_list: Vec<ProducerStats>,
    /// The subscriber groups.
    pub groups: Vec<GroupStats>,
    /// The subscribers connected now.
    pub subscribers: Vec<SubscriberStats>,
}

/// The answer to a stats request: every server's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The servers, by name.
    pub servers: Vec<ServerStats>,
}
