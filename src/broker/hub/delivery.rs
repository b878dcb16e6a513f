//! Writing queued batches into subscribers' rings, and taking back what they released.
//!
//! A subscriber gets what its window (its ring) has room for, all published at once, and
//! is woken only if it sleeps. A pool is announced on the subscriber's socket before the
//! first descriptor that names it. A group member's share is written into its selection
//! ring, as packet indices.

use super::ids::ClientId;
use super::{Cut, Hub, InFlight};
use crate::transport::region::{SubscriberDesc, DESC_REASSIGNED, DESC_SELECTED};

/// Entries of a selection ring a member's selections keep to when they can: the ring is
/// sized for the largest batch of the smallest packets (megabytes), and written round and
/// round whole, it would hold all of that in memory and keep nothing in cache.
const SEL_WINDOW: u64 = 1 << 15;

/// Where in a selection ring of `cap` entries, written up to `head` and released up to
/// `tail`, a selection of `n` entries goes: at `head`, or back at the ring's start (the
/// next multiple of `cap`) once `head` passed [`SEL_WINDOW`] and the start is free; `None`
/// when neither fits yet. Positions only grow, and `tail` follows the releases, so what
/// lies between `tail` and the place (skipped positions too) is never overwritten.
fn sel_place(head: u64, tail: u64, n: u32, cap: u64) -> Option<u64> {
    let n = u64::from(n);
    if cap == 0 {
        return None;
    }
    let window = cap.min(SEL_WINDOW);
    if head % cap + n > window && n <= window {
        let start = head.next_multiple_of(cap);
        if start + n - tail <= cap {
            return Some(start);
        }
    }
    (head + n - tail <= cap).then_some(head)
}

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
            let sel_start = if q.selected {
                match sel_place(sub.sel_head, sub.sel_tail, q.packets, sub.end.sel_cap()) {
                    Some(at) => at,
                    None => break,
                }
            } else {
                sub.sel_head
            };
            if !sub.announced.contains(&q.pool) {
                let Some(mem) = pools.memory(q.pool) else {
                    return Err(format!("queued a batch of unknown pool {}", q.pool.0));
                };
                sub.end.announce(mem).map_err(|e| e.to_string())?;
                sub.announced.insert(q.pool);
            }
            let mut flags = 0;
            if q.selected {
                sub.sel_head = sel_start;
                flags |= DESC_SELECTED;
                // The share's indices, at the front of the pending ones, in one or two runs.
                let n = q.packets as usize;
                let (a, b) = sub.sel_pending.as_slices();
                let first = n.min(a.len());
                let rest = (n - first).min(b.len());
                sub.end.write_sels(sub.sel_head, &a[..first]);
                sub.end.write_sels(sub.sel_head + first as u64, &b[..rest]);
                // Never short; were it, the reader would skip the missing entries.
                let missing = vec![u32::MAX; n - first - rest];
                sub.end
                    .write_sels(sub.sel_head + (first + rest) as u64, &missing);
                sub.sel_pending.drain(..first + rest);
                sub.sel_head += n as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_keep_to_the_start_of_the_ring_and_never_overrun_what_is_held() {
        let cap = 1 << 20;
        // Within the window: where the last one ended.
        assert_eq!(sel_place(0, 0, 100, cap), Some(0));
        assert_eq!(sel_place(100, 0, 100, cap), Some(100));
        // Past it: back to the start once the start is free.
        assert_eq!(
            sel_place(SEL_WINDOW - 50, SEL_WINDOW - 50, 100, cap),
            Some(cap)
        );
        assert_eq!(sel_place(SEL_WINDOW - 50, 100, 100, cap), Some(cap));
        // The start still held (released only up to 50): on where it was.
        assert_eq!(
            sel_place(SEL_WINDOW - 50, 50, 100, cap),
            Some(SEL_WINDOW - 50)
        );
        // A selection larger than the window: on where it was, if the ring has room.
        assert_eq!(sel_place(10, 10, SEL_WINDOW as u32 + 1, cap), Some(10));
        assert_eq!(sel_place(cap, 0, 1, cap), None, "the ring is full");
        // A small ring is its own window.
        assert_eq!(sel_place(6, 2, 4, 8), Some(6));
        assert_eq!(sel_place(6, 1, 4, 8), None);
        assert_eq!(sel_place(6, 6, 4, 8), Some(8));
        assert_eq!(sel_place(0, 0, 1, 0), None);
        // Simulated: a member holding up to 40 selections of random sizes; every placed
        // run is disjoint (modulo the ring) from every held one.
        let cap = 1u64 << 16;
        let mut held: std::collections::VecDeque<(u64, u64)> = Default::default();
        let (mut head, mut tail) = (0u64, 0u64);
        let mut x = 12345u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (x >> 33) as u32 % 3000 + 1;
            if held.len() == 40 || (x >> 20).is_multiple_of(3) {
                if let Some((_, end)) = held.pop_front() {
                    tail = end;
                }
                continue;
            }
            let Some(at) = sel_place(head, tail, n, cap) else {
                continue;
            };
            assert!(at >= head && at + u64::from(n) - tail <= cap);
            held.push_back((at, at + u64::from(n)));
            head = at + u64::from(n);
        }
    }
}
