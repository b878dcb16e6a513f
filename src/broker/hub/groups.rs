//! Subscriber groups: which member of a group gets which flow.
//!
//! A group spreads one stream over its members: every packet goes to exactly one of them,
//! and every packet of a flow (both directions, as the producer's flow hash is symmetric)
//! to the same one. Packets are mapped to one of [`BUCKETS`] buckets by their hash, and
//! buckets to members by rendezvous hashing (highest random weight): each bucket goes to
//! the member whose (bucket, member) weight is highest. When a member joins or leaves, only
//! the buckets it wins or held move — about 1/N of the flows — where `hash % N` would move
//! almost all of them.

use crate::broker::config::GroupBalance;

/// Buckets of a group's table (a power of two).
pub(crate) const BUCKETS: usize = 4096;

/// A 64-bit mixer (a multiply-xorshift finalizer) for rendezvous weights.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Which member gets which bucket.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    /// Member keys, in the order members joined.
    members: Vec<u64>,
    /// For each bucket, the index of its member in `members`.
    table: Vec<u16>,
}

impl Assignment {
    /// The assignment of buckets to `members` (keys that stay the same while a member
    /// lives: its subscriber id).
    pub(crate) fn new(members: &[u64]) -> Assignment {
        let mut table = vec![0u16; BUCKETS];
        if members.len() > 1 {
            for (b, slot) in table.iter_mut().enumerate() {
                let mut best = (0u64, 0u16);
                for (i, &m) in members.iter().enumerate() {
                    let w = mix(mix(m) ^ b as u64);
                    if i == 0 || w > best.0 {
                        best = (w, i as u16);
                    }
                }
                *slot = best.1;
            }
        }
        Assignment {
            members: members.to_vec(),
            table,
        }
    }

    /// The members, in the order they joined.
    pub(crate) fn members(&self) -> &[u64] {
        &self.members
    }

    /// The index (in [`Assignment::members`]) of the member that gets a packet of this
    /// hash. There must be at least one member.
    #[inline]
    pub(crate) fn member_of(&self, hash: u32) -> usize {
        usize::from(self.table[hash as usize & (BUCKETS - 1)])
    }
}

/// A group of one server.
#[derive(Debug)]
pub(crate) struct Group {
    /// How it spreads packets.
    pub balance: GroupBalance,
    /// Who gets what.
    pub assignment: Assignment,
    /// The next member to get a whole batch (`batch` balancing).
    pub next: usize,
}

impl Group {
    /// A group with one member.
    pub(crate) fn new(balance: GroupBalance, first: u64) -> Group {
        Group {
            balance,
            assignment: Assignment::new(&[first]),
            next: 0,
        }
    }

    /// Adds a member.
    pub(crate) fn join(&mut self, member: u64) {
        let mut members = self.assignment.members.clone();
        members.push(member);
        self.assignment = Assignment::new(&members);
    }

    /// Removes a member; false when it was the last.
    pub(crate) fn leave(&mut self, member: u64) -> bool {
        let members: Vec<u64> = self
            .assignment
            .members
            .iter()
            .copied()
            .filter(|&m| m != member)
            .collect();
        self.assignment = Assignment::new(&members);
        !members.is_empty()
    }

    /// The member that gets the next whole batch (`batch` balancing).
    pub(crate) fn next_member(&mut self) -> u64 {
        let members = &self.assignment.members;
        let m = members[self.next % members.len()];
        self.next = self.next.wrapping_add(1);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(a: &Assignment) -> Vec<u64> {
        (0..BUCKETS as u32)
            .map(|b| a.members()[a.member_of(b)])
            .collect()
    }

    #[test]
    fn buckets_spread_evenly() {
        for n in [2u64, 3, 5, 8, 16] {
            let members: Vec<u64> = (100..100 + n).collect();
            let a = Assignment::new(&members);
            let owners = owners(&a);
            let fair = BUCKETS as f64 / n as f64;
            for m in &members {
                let got = owners.iter().filter(|o| *o == m).count() as f64;
                assert!(
                    got > fair * 0.75 && got < fair * 1.25,
                    "{n} members: member {m} has {got} buckets, fair is {fair}"
                );
            }
        }
    }

    #[test]
    fn a_join_or_a_leave_moves_about_one_nth() {
        let members: Vec<u64> = (1..=8).collect();
        let before = owners(&Assignment::new(&members));
        let mut nine = members.clone();
        nine.push(77);
        let after = owners(&Assignment::new(&nine));
        let moved: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        // Only buckets the newcomer wins move, about 1/9 of them.
        assert!(moved.iter().all(|(_, b)| **b == 77));
        let share = moved.len() as f64 / BUCKETS as f64;
        assert!((0.08..0.15).contains(&share), "moved {share}");

        let seven: Vec<u64> = members.iter().copied().filter(|&m| m != 3).collect();
        let after = owners(&Assignment::new(&seven));
        for (a, b) in before.iter().zip(&after) {
            if *a != 3 {
                assert_eq!(a, b, "a bucket of a member that stays does not move");
            }
        }
    }

    #[test]
    fn batches_go_round_robin_and_the_last_member_is_known() {
        let mut g = Group::new(GroupBalance::Batch, 1);
        g.join(2);
        g.join(3);
        let got: Vec<u64> = (0..6).map(|_| g.next_member()).collect();
        assert_eq!(got, [1, 2, 3, 1, 2, 3]);
        assert!(g.leave(2));
        assert!(g.leave(1));
        assert!(!g.leave(3), "the last member left");
        let single = Assignment::new(&[42]);
        assert_eq!(single.member_of(u32::MAX), 0);
    }
}
