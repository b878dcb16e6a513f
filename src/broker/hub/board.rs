//! The counters of one server, kept by its hub and read by anyone without asking it.
//!
//! The hub is the only writer; it updates plain atomics as it goes (a relaxed load and
//! store, no locked instruction). `packet-ipc stats` and the metrics endpoint read them
//! from other threads: a scrape never waits for, or slows, a hub. The list of clients
//! changes only when one joins or leaves, under a lock the hub takes then.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ids::ClientId;
use crate::stats::{GroupStats, ProducerStats, ServerStats, SubscriberStats};

/// A counter with one writer.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning hub calls this).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (a gauge).
    #[inline]
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value now.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of a server.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub batches_in: Counter,
    pub packets_in: Counter,
    pub bytes_in: Counter,
    pub unsubscribed_batches: Counter,
    pub refused: Counter,
    pub dropped_clients: Counter,
    pub lost_batches: Counter,
    pub lost_packets: Counter,
    /// Source drops reported by producers that have left.
    pub source_dropped_departed: Counter,
}

/// Counters of a producer.
#[derive(Debug, Default)]
pub(crate) struct ProducerCounters {
    pub batches: Counter,
    pub packets: Counter,
    pub source_dropped: Counter,
}

/// Counters of a subscriber.
#[derive(Debug, Default)]
pub(crate) struct SubscriberCounters {
    pub batches_out: Counter,
    pub packets_out: Counter,
    pub lost_batches: Counter,
    pub lost_packets: Counter,
    pub queued: Counter,
    pub in_flight: Counter,
    pub skipped: Counter,
}

/// Counters of a group.
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    pub members: Counter,
    pub packets_out: Counter,
    pub lost_packets: Counter,
}

/// Who a client is, as the stats show it.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub pid: u32,
}

#[derive(Debug, Default)]
struct Clients {
    producers: BTreeMap<ClientId, (Identity, Arc<ProducerCounters>)>,
    subscribers: BTreeMap<ClientId, (Identity, Option<String>, Arc<SubscriberCounters>)>,
    groups: BTreeMap<String, Arc<GroupCounters>>,
}

/// Who asks for the counters: they see pids only of servers they may use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Viewer {
    /// Sees everything (root, or the daemon's own user).
    pub all: bool,
    /// Its groups (ids).
    pub gids: Vec<u32>,
}

/// Everything a server shows.
#[derive(Debug)]
pub(crate) struct Board {
    /// The server's name.
    pub name: String,
    /// Its counters.
    pub counters: ServerCounters,
    clients: Mutex<Clients>,
    /// The groups allowed to produce and to subscribe (`None`: anyone), for [`Viewer`]s.
    access: Mutex<(Option<u32>, Option<u32>)>,
}

impl Board {
    /// An empty board for server `name`.
    pub(crate) fn new(name: &str) -> Board {
        Board {
            name: name.to_owned(),
            counters: ServerCounters::default(),
            clients: Mutex::new(Clients::default()),
            access: Mutex::new((None, None)),
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets who may produce and subscribe (group ids; `None`: anyone).
    pub(crate) fn set_access(&self, producers: Option<u32>, subscribers: Option<u32>) {
        *self.access.lock().unwrap_or_else(|e| e.into_inner()) = (producers, subscribers);
    }

    /// Lists a producer.
    pub(crate) fn add_producer(&self, id: ClientId, who: Identity) -> Arc<ProducerCounters> {
        let c = Arc::new(ProducerCounters::default());
        self.clients().producers.insert(id, (who, Arc::clone(&c)));
        c
    }

    /// Unlists a producer (its source drops stay in the server's total).
    pub(crate) fn remove_producer(&self, id: ClientId) {
        if let Some((_, c)) = self.clients().producers.remove(&id) {
            self.counters
                .source_dropped_departed
                .add(c.source_dropped.get());
        }
    }

    /// Lists a subscriber (in `group`, if any).
    pub(crate) fn add_subscriber(
        &self,
        id: ClientId,
        who: Identity,
        group: Option<String>,
    ) -> (Arc<SubscriberCounters>, Option<Arc<GroupCounters>>) {
        let c = Arc::new(SubscriberCounters::default());
        let mut clients = self.clients();
        let g = group.as_ref().map(|name| {
            let g = Arc::clone(clients.groups.entry(name.clone()).or_default());
            g.members.add(1);
            g
        });
        clients.subscribers.insert(id, (who, group, Arc::clone(&c)));
        (c, g)
    }

    /// Unlists a subscriber.
    pub(crate) fn remove_subscriber(&self, id: ClientId) {
        let mut clients = self.clients();
        if let Some((_, Some(group), _)) = clients.subscribers.remove(&id) {
            if let Some(g) = clients.groups.get(&group) {
                g.members.set(g.members.get().saturating_sub(1));
            }
        }
    }

    /// A snapshot of every counter, as `viewer` may see it.
    pub(crate) fn snapshot(&self, viewer: &Viewer) -> ServerStats {
        let (prod_gid, sub_gid) = *self.access.lock().unwrap_or_else(|e| e.into_inner());
        let open = prod_gid.is_none() && sub_gid.is_none();
        let member = |g: Option<u32>| g.is_some_and(|g| viewer.gids.contains(&g));
        let sees = viewer.all || open || member(prod_gid) || member(sub_gid);
        let pid = |who: &Identity| sees.then_some(who.pid);
        let c = &self.counters;
        let clients = self.clients();
        let producer_list: Vec<ProducerStats> = clients
            .producers
            .iter()
            .map(|(id, (who, p))| ProducerStats {
                id: id.0,
                pid: pid(who),
                batches: p.batches.get(),
                packets: p.packets.get(),
                source_dropped: p.source_dropped.get(),
            })
            .collect();
        let source_dropped = c.source_dropped_departed.get()
            + producer_list.iter().map(|p| p.source_dropped).sum::<u64>();
        ServerStats {
            name: self.name.clone(),
            producers: producer_list.len() as u64,
            batches_in: c.batches_in.get(),
            packets_in: c.packets_in.get(),
            bytes_in: c.bytes_in.get(),
            unsubscribed_batches: c.unsubscribed_batches.get(),
            refused: c.refused.get(),
            dropped_clients: c.dropped_clients.get(),
            lost_batches: c.lost_batches.get(),
            lost_packets: c.lost_packets.get(),
            source_dropped,
            producer_list,
            groups: clients
                .groups
                .iter()
                .map(|(name, g)| GroupStats {
                    name: name.clone(),
                    members: g.members.get(),
                    packets_out: g.packets_out.get(),
                    lost_packets: g.lost_packets.get(),
                })
                .collect(),
            subscribers: clients
                .subscribers
                .iter()
                .map(|(id, (who, group, s))| SubscriberStats {
                    id: id.0,
                    pid: pid(who),
                    group: group.clone(),
                    batches_out: s.batches_out.get(),
                    packets_out: s.packets_out.get(),
                    lost_batches: s.lost_batches.get(),
                    lost_packets: s.lost_packets.get(),
                    queued: s.queued.get(),
                    in_flight: s.in_flight.get(),
                    skipped: s.skipped.get(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_shown_to_members_and_totals_keep_departed_clients() {
        let board = Board::new("s");
        let who = Identity { pid: 42 };
        let p = board.add_producer(ClientId(1), who.clone());
        p.source_dropped.set(5);
        let (s, g) = board.add_subscriber(ClientId(2), who, Some("ids".into()));
        s.packets_out.add(10);
        g.as_ref().unwrap().packets_out.add(10);
        board.counters.lost_packets.add(3);

        let open = board.snapshot(&Viewer::default());
        assert_eq!(
            open.producer_list[0].pid,
            Some(42),
            "an open server shows pids"
        );
        assert_eq!(open.source_dropped, 5);
        assert_eq!(open.groups[0].members, 1);
        assert_eq!(open.subscribers[0].group.as_deref(), Some("ids"));

        board.set_access(None, Some(900));
        let outsider = board.snapshot(&Viewer::default());
        assert_eq!(outsider.subscribers[0].pid, None);
        assert_eq!(
            outsider.subscribers[0].packets_out, 10,
            "counts are for all"
        );
        let member = board.snapshot(&Viewer {
            all: false,
            gids: vec![900],
        });
        assert_eq!(member.subscribers[0].pid, Some(42));

        board.remove_producer(ClientId(1));
        board.remove_subscriber(ClientId(2));
        let after = board.snapshot(&Viewer::default());
        assert_eq!(after.source_dropped, 5, "a departed producer's drops stay");
        assert_eq!(after.producers, 0);
        assert_eq!(after.groups[0].members, 0);
        assert_eq!(after.groups[0].packets_out, 10);
        assert_eq!(after.lost_packets, 3);
    }
}
