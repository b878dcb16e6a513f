//! Writing queued batches into subscribers' rings, and taking back what they released.
//!
//! A subscriber gets what its window (its ring) has room for, all published at once, and
//! is woken only if it sleeps. A pool is announced on the subscriber's socket before the
//! first descriptor that names it. A group member's share is written into its selection
//! ring, as packet indices.

use super::ids::ClientId;
use super::{Cut, Hub, InFlight};
use crate::transport::region::{SubscriberDesc, DESC_REASSIGNED, DESC_SELECTED};

impl Hub {
    /// Takes back what subscribers released; true when something was.
    pub(super) fn collect(&mut self) -> bool {
        let mut any = false;
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(self.subscribers.keys().copied());
        for &id in &keys {
            let Some(sub) = self.subscribers.get_mut(&id) else {
                continue;
            };
            let n = match sub.end.released() {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) => {
                    self.cuts.push((id, Cut::Broken(e.to_string())));
                    continue;
                }
            };
            any = true;
            for _ in 0..n {
                let Some(sub) = self.subscribers.get_mut(&id) else {
                    break;
                };
                let Some(f) = sub.in_flight.pop_front() else {
                    break;
                };
                sub.sel_tail = f.sel_end;
                self.release_slot(f.pool, f.slot);
            }
        }
        self.keys = keys;
        any
    }

    /// Fills every subscriber's window from its queue; true when something was delivered.
    pub(super) fn deliver(&mut self) -> bool {
        let mut any = false;
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(
            self.subscribers
                .iter()
                .filter(|(_, s)| !s.queue.is_empty())
                .map(|(&id, _)| id),
        );
        for &id in &keys {
            match self.deliver_to(id) {
                Ok(true) => any = true,
                Ok(false) => {}
                Err(why) => self.cuts.push((id, Cut::Broken(why))),
            }
        }
        self.keys = keys;
        any
    }

    fn deliver_to(&mut self, id: ClientId) -> Result<bool, String> {
        let Hub {
            subscribers, pools, ..
        } = self;
        let Some(sub) = subscribers.get_mut(&id) else {
            return Ok(false);
        };
        let mut room = sub.end.room();
        let mut delivered = false;
        while room > 0 {
            let Some(&q) = sub.queue.front() else {
                break;
            };
            if q.selected && sub.sel_head - sub.sel_tail + u64::from(q.packets) > sub.end.sel_cap()
            {
                break;
            }
            if !sub.announced.contains(&q.pool) {
                let Some(mem) = pools.memory(q.pool) else {
                    return Err(format!("queued a batch of unknown pool {}", q.pool.0));
                };
                sub.end.announce(mem).map_err(|e| e.to_string())?;
                sub.announced.insert(q.pool);
            }
            let mut flags = 0;
            let sel_start = sub.sel_head;
            if q.selected {
                flags |= DESC_SELECTED;
                for _ in 0..q.packets {
                    let index = sub.sel_pending.pop_front().unwrap_or(u32::MAX);
                    sub.end.write_sel(sub.sel_head, index);
                    sub.sel_head += 1;
                }
            }
            if std::mem::take(&mut sub.reassigned) {
                flags |= DESC_REASSIGNED;
            }
            sub.end.push(&SubscriberDesc {
                pool: q.pool.0,
                slot: q.slot.0,
                len: q.len,
                seq: q.seq,
                count: q.count,
                flags,
                lost_batches: q.lost_batches,
                lost_packets: q.lost_packets,
                sel_start,
                sel_count: q.packets,
            });
            sub.in_flight.push_back(InFlight {
                pool: q.pool,
                slot: q.slot,
                packets: q.packets,
                sel_end: sub.sel_head,
            });
            sub.queue.pop();
            sub.counters.batches_out.add(1);
            sub.counters.packets_out.add(u64::from(q.packets));
            if let Some(g) = &sub.group_counters {
                g.packets_out.add(u64::from(q.packets));
            }
            room -= 1;
            delivered = true;
        }
        if delivered {
            sub.end.publish();
        }
        Ok(delivered)
    }
}
