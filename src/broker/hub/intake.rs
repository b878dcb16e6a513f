//! Taking batches from producers' rings and queueing them for subscribers.
//!
//! Each descriptor a producer wrote is checked against the producer's own pool before
//! anything is done with it: a slot that exists and that no subscriber holds, a length
//! that fits the slot and the server's `max-batch-bytes`, a packet count the length can
//! hold. The batch is then queued for every plain subscriber, and for one member — or, by
//! flow, several members with their share — of every group.

use super::ids::{ClientId, PoolId, Slot};
use super::queue::Offer;
use super::{Cut, Hub, Queued, Sub, INTAKE_BUDGET};
use crate::batch::{BatchView, HEADER_LEN, INDEX_ENTRY_LEN, RECORD_HEAD_LEN};
use crate::broker::config::GroupBalance;
use crate::flow::{self, Balance};
use crate::transport::region::{ProducerDesc, PDESC_INDEXED, PDESC_IPPAIR};

impl Hub {
    /// Takes what every producer published; true when something was taken.
    pub(super) fn intake(&mut self) -> bool {
        let mut any = false;
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(self.producers.keys().copied());
        for &id in &keys {
            let mut took = false;
            for _ in 0..INTAKE_BUDGET {
                let Some(p) = self.producers.get_mut(&id) else {
                    break;
                };
                match p.end.next() {
                    Ok(None) => break,
                    Ok(Some(d)) => {
                        took = true;
                        if let Err(why) = self.accept(id, d) {
                            self.cuts.push((id, Cut::Broken(why)));
                            break;
                        }
                    }
                    Err(e) => {
                        self.cuts.push((id, Cut::Broken(e.to_string())));
                        break;
                    }
                }
            }
            if took {
                any = true;
                if let Some(p) = self.producers.get(&id) {
                    p.end.commit_taken();
                }
            }
        }
        self.keys = keys;
        any
    }

    /// Checks one descriptor of producer `id` and queues its batch.
    fn accept(&mut self, id: ClientId, d: ProducerDesc) -> Result<(), String> {
        let Some(p) = self.producers.get(&id) else {
            return Ok(());
        };
        let pool = p.pool;
        let Some(mem) = self.pools.memory(pool) else {
            return Err("its pool is gone".into());
        };
        let Some((_, slot_size)) = mem.shape.slot(d.slot) else {
            return Err(format!(
                "published slot {} of a pool of {}",
                d.slot,
                mem.shape.slots()
            ));
        };
        let slot = Slot(d.slot);
        if self.pools.is_held(pool, slot) {
            return Err(format!("published slot {} while it is held", d.slot));
        }
        let len = d.len as usize;
        if len > slot_size {
            return Err(format!(
                "published a batch of {len} bytes in slot {} of {slot_size} bytes",
                d.slot
            ));
        }
        let max = self.config.max_batch_bytes;
        if len > max {
            return Err(format!(
                "published a batch of {len} bytes, over max-batch-bytes ({max})"
            ));
        }
        if len < HEADER_LEN || (d.count as usize) > (len - HEADER_LEN) / RECORD_HEAD_LEN {
            return Err(format!(
                "published a batch of {} packets in {len} bytes",
                d.count
            ));
        }
        p.counters.batches.add(1);
        p.counters.packets.add(u64::from(d.count));
        let c = &self.board.counters;
        c.batches_in.add(1);
        c.packets_in.add(u64::from(d.count));
        c.bytes_in.add(d.bytes.min(d.len as u64));
        let item = Queued {
            pool,
            slot,
            len: d.len,
            seq: self.next_seq,
            count: d.count,
            packets: d.count,
            selected: false,
            lost_batches: 0,
            lost_packets: 0,
        };
        self.next_seq += 1;
        let mut refs = 0;
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        plain.extend(
            self.subscribers
                .iter()
                .filter(|(_, s)| s.group.is_none())
                .map(|(&id, _)| id),
        );
        for &sid in &plain {
            refs += self.offer(sid, item, &[]);
        }
        self.plain = plain;
        if !self.groups.is_empty() {
            refs += self.fan_out_groups(&d, item);
        }
        if refs == 0 {
            self.board.counters.unsubscribed_batches.add(1);
            self.pools.hold(pool, slot, 1);
            self.release_slot(pool, slot);
        }
        Ok(())
    }

    /// Queues a batch for the groups; returns the references taken.
    fn fan_out_groups(&mut self, d: &ProducerDesc, item: Queued) -> u32 {
        let mut refs = 0;
        let mut names = std::mem::take(&mut self.group_names);
        names.clear();
        names.extend(self.groups.keys().cloned());
        let mut hashed = false;
        for name in &names {
            let balance = self.config.group_balance;
            if balance == GroupBalance::Batch {
                let member = match self.groups.get_mut(name) {
                    Some(g) => g.next_member(),
                    None => continue,
                };
                refs += self.offer(ClientId(member), item, &[]);
                continue;
            }
            if !hashed {
                self.hash_batch(d, item.pool, balance);
                hashed = true;
            }
            refs += self.split(name, item, None);
        }
        self.group_names = names;
        refs
    }

    /// Puts each packet's flow hash in `self.hashes`: from the batch's index when the
    /// producer wrote one of the right kind, else computed here from the packets.
    fn hash_batch(&mut self, d: &ProducerDesc, pool: PoolId, balance: GroupBalance) {
        self.hashes.clear();
        let count = d.count as usize;
        let want_ippair = balance == GroupBalance::IpPair;
        let bytes = self
            .pools
            .memory(pool)
            .and_then(|m| m.slot(d.slot, d.len as usize));
        let view = bytes.and_then(|b| BatchView::unchecked(b).ok());
        let Some(view) = view else {
            self.hashes.resize(count, 0);
            return;
        };
        let indexed = d.flags & PDESC_INDEXED != 0
            && (d.flags & PDESC_IPPAIR != 0) == want_ippair
            && view.header().index_off != 0;
        if indexed {
            // The hashes, read straight from the index (its place was checked with the
            // header): each entry is the record's offset, then the hash.
            let at = view.header().index_off as usize;
            let index = view
                .as_bytes()
                .get(at..at + count * INDEX_ENTRY_LEN)
                .unwrap_or_default();
            self.hashes.extend(
                index
                    .chunks_exact(INDEX_ENTRY_LEN)
                    .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]])),
            );
        } else {
            let mode = if want_ippair {
                Balance::IpPair
            } else {
                Balance::Flow
            };
            let linktype = self.config.linktype;
            self.hashes
                .extend(view.iter().map(|p| flow::hash(linktype, p.bytes(), mode)));
        }
        self.hashes.resize(count, 0);
    }

    /// Splits a batch over the members of group `name` by the hashes in `self.hashes`
    /// (or only over `only`, the packet indices of a departed member's share); returns the
    /// references taken.
    pub(super) fn split(&mut self, name: &str, item: Queued, only: Option<&[u32]>) -> u32 {
        let Some(g) = self.groups.get(name) else {
            return 0;
        };
        let mut members = std::mem::take(&mut self.members);
        members.clear();
        members.extend_from_slice(g.assignment.members());
        let mut shares = std::mem::take(&mut self.shares);
        shares.resize_with(members.len(), Vec::new);
        for s in shares.iter_mut() {
            s.clear();
        }
        match only {
            None => {
                for (i, &h) in self.hashes.iter().enumerate() {
                    shares[g.assignment.member_of(h)].push(i as u32);
                }
            }
            Some(indices) => {
                for &i in indices {
                    let h = self.hashes.get(i as usize).copied().unwrap_or(0);
                    shares[g.assignment.member_of(h)].push(i);
                }
            }
        }
        let mut refs = 0;
        for (m, share) in members.iter().zip(&shares) {
            if share.is_empty() {
                continue;
            }
            let mut mine = item;
            mine.packets = share.len() as u32;
            mine.selected = true;
            refs += self.offer(ClientId(*m), mine, share);
        }
        self.shares = shares;
        self.members = members;
        refs
    }

    /// Gives a departed member's queued batch to the group's remaining members.
    pub(super) fn redistribute(&mut self, name: &str, item: Queued, indices: &[u32]) {
        // The losses it carries were the departed member's (counted for it already): the
        // members it goes to lost nothing.
        let item = Queued {
            lost_batches: 0,
            lost_packets: 0,
            ..item
        };
        let balance = self.config.group_balance;
        let taken = if !item.selected || balance == GroupBalance::Batch {
            let member = match self.groups.get_mut(name) {
                Some(g) => g.next_member(),
                None => return,
            };
            let mut all = item;
            all.selected = false;
            all.packets = all.count;
            self.offer(ClientId(member), all, &[])
        } else {
            // The hashes of the whole batch, again (the batch is still in its slot).
            let d = ProducerDesc {
                slot: item.slot.0,
                len: item.len,
                count: item.count,
                flags: 0,
                seq: 0,
                bytes: 0,
            };
            self.hash_batch(&d, item.pool, balance);
            self.split(name, item, Some(indices))
        };
        let _ = taken;
    }

    /// Offers a batch to subscriber `sid` (with its selection, for a group member's share);
    /// returns the references taken (1 or 0).
    pub(super) fn offer(&mut self, sid: ClientId, mut item: Queued, selection: &[u32]) -> u32 {
        let Some(sub) = self.subscribers.get_mut(&sid) else {
            return 0;
        };
        item.lost_batches += std::mem::take(&mut sub.lost_batches);
        item.lost_packets += std::mem::take(&mut sub.lost_packets);
        if item.selected && u64::from(item.packets) > sub.end.sel_cap() {
            // A share its selection ring can never hold (`max-batch-bytes` was raised by a
            // reload after it joined): lost for it, whatever the policy, never waited for.
            sub.lost_batches += item.lost_batches + 1;
            sub.lost_packets += item.lost_packets + u64::from(item.packets);
            if !std::mem::replace(&mut sub.outgrown, true) {
                tracing::warn!(
                    server = %self.name,
                    subscriber = %sid,
                    packets = item.packets,
                    "a group member's share is larger than it joined for (max-batch-bytes \
                     was raised): such batches are lost for it until it reconnects"
                );
            }
            self.count_drop(sid, (1, u64::from(item.packets)));
            return 0;
        }
        sub.sel_pending.extend(selection.iter().copied());
        match sub.queue.offer(item) {
            Offer::Queued => {
                self.pools.hold(item.pool, item.slot, 1);
                1
            }
            Offer::DroppedOldest(old) => {
                self.pools.hold(item.pool, item.slot, 1);
                let sub = self.subscribers.get_mut(&sid).expect("looked up above");
                if old.selected {
                    sub.sel_pending.drain(..old.packets as usize);
                }
                if let Some(next) = sub.queue.front_mut() {
                    next.lost_batches += old.lost_batches + 1;
                    next.lost_packets += old.lost_packets + u64::from(old.packets);
                }
                let lost = (1, u64::from(old.packets));
                self.count_drop(sid, lost);
                self.release_slot(old.pool, old.slot);
                1
            }
            Offer::DroppedNewest(new) => {
                let sub = self.subscribers.get_mut(&sid).expect("looked up above");
                if new.selected {
                    let keep = sub.sel_pending.len() - new.packets as usize;
                    sub.sel_pending.truncate(keep);
                }
                sub.lost_batches += new.lost_batches + 1;
                sub.lost_packets += new.lost_packets + u64::from(new.packets);
                self.count_drop(sid, (1, u64::from(new.packets)));
                0
            }
            Offer::Cut(new) => {
                let sub = self.subscribers.get_mut(&sid).expect("looked up above");
                if new.selected {
                    let keep = sub.sel_pending.len() - new.packets as usize;
                    sub.sel_pending.truncate(keep);
                }
                let why = format!(
                    "its queue of {} batches was full (overflow = disconnect)",
                    self.config.queue_depth
                );
                if !self.cuts.iter().any(|(c, _)| *c == sid) {
                    self.cuts.push((sid, Cut::Policy(why)));
                }
                0
            }
        }
    }

    fn count_drop(&self, sid: ClientId, (batches, packets): (u64, u64)) {
        if let Some(sub) = self.subscribers.get(&sid) {
            count(sub, &self.board, batches, packets);
        }
    }
}

fn count(sub: &Sub, board: &super::Board, batches: u64, packets: u64) {
    sub.counters.lost_batches.add(batches);
    sub.counters.lost_packets.add(packets);
    board.counters.lost_batches.add(batches);
    board.counters.lost_packets.add(packets);
    if let Some(g) = &sub.group_counters {
        g.lost_packets.add(packets);
    }
}
