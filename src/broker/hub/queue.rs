//! A subscriber's queue under its overflow policy: the pure core of the fan-out.
//!
//! [`PolicyQueue::offer`] takes an item and says what became of it, under the server's
//! policy and depth: queued, queued in place of the oldest (returned), refused (returned),
//! or refused with the subscriber to be cut off. The hub does the rest (reference counts,
//! loss accounting); this file does nothing but decide, so every case is a unit test.

use std::collections::VecDeque;

use crate::broker::config::Overflow;

/// What [`PolicyQueue::offer`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<T> {
    /// The item is at the back of the queue.
    Queued,
    /// The item is at the back of the queue; the oldest one was dropped to make room.
    DroppedOldest(T),
    /// The queue is full: the new item was dropped (`drop-newest`).
    DroppedNewest(T),
    /// The queue is full and the policy cuts the subscriber off (`disconnect`).
    Cut(T),
}

/// A bounded queue with an overflow policy.
#[derive(Debug)]
pub(crate) struct PolicyQueue<T> {
    items: VecDeque<T>,
    depth: usize,
    policy: Overflow,
}

impl<T> PolicyQueue<T> {
    /// An empty queue of `depth` items (at least 1) under `policy`.
    pub(crate) fn new(depth: usize, policy: Overflow) -> Self {
        PolicyQueue {
            items: VecDeque::new(),
            depth: depth.max(1),
            policy,
        }
    }

    /// Offers `item` (see [`Offer`]). Under `block` nothing is ever dropped: the queue may
    /// grow past its depth, and what bounds it is the producer's pool (the producer waits
    /// for a free slot).
    pub(crate) fn offer(&mut self, item: T) -> Offer<T> {
        if self.items.len() < self.depth {
            self.items.push_back(item);
            return Offer::Queued;
        }
        match self.policy {
            Overflow::Block => {
                self.items.push_back(item);
                Offer::Queued
            }
            Overflow::DropNewest => Offer::DroppedNewest(item),
            Overflow::Disconnect => Offer::Cut(item),
            Overflow::DropOldest => {
                let old = self.items.pop_front();
                self.items.push_back(item);
                match old {
                    Some(old) => Offer::DroppedOldest(old),
                    None => Offer::Queued,
                }
            }
        }
    }

    /// New settings (a reload): items beyond a smaller depth stay until delivered.
    pub(crate) fn reconfigure(&mut self, depth: usize, policy: Overflow) {
        self.depth = depth.max(1);
        self.policy = policy;
    }

    /// The oldest item.
    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// The oldest item, to change it.
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.items.front_mut()
    }

    /// Takes the oldest item.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every item, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(policy: Overflow) -> PolicyQueue<u32> {
        let mut q = PolicyQueue::new(2, policy);
        assert_eq!(q.offer(1), Offer::Queued);
        assert_eq!(q.offer(2), Offer::Queued);
        q
    }

    #[test]
    fn below_its_depth_every_policy_queues() {
        for policy in [
            Overflow::Block,
            Overflow::DropNewest,
            Overflow::DropOldest,
            Overflow::Disconnect,
        ] {
            let q = full(policy);
            assert_eq!(q.len(), 2);
            assert_eq!(q.front(), Some(&1));
        }
    }

    #[test]
    fn drop_oldest_makes_room_and_returns_the_oldest() {
        let mut q = full(Overflow::DropOldest);
        assert_eq!(q.offer(3), Offer::DroppedOldest(1));
        assert_eq!(q.offer(4), Offer::DroppedOldest(2));
        assert_eq!(q.drain().collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn drop_newest_refuses_the_new_one() {
        let mut q = full(Overflow::DropNewest);
        assert_eq!(q.offer(3), Offer::DroppedNewest(3));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.offer(4), Offer::Queued, "room again");
        assert_eq!(q.drain().collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn disconnect_cuts_when_full() {
        let mut q = full(Overflow::Disconnect);
        assert_eq!(q.offer(3), Offer::Cut(3));
        assert_eq!(q.len(), 2, "nothing was queued");
    }

    #[test]
    fn block_never_drops() {
        let mut q = full(Overflow::Block);
        for i in 3..100 {
            assert_eq!(q.offer(i), Offer::Queued);
        }
        assert_eq!(q.len(), 99);
    }

    #[test]
    fn a_reload_changes_depth_and_policy_keeping_what_waits() {
        let mut q = full(Overflow::Block);
        q.offer(3);
        q.reconfigure(1, Overflow::DropNewest);
        assert_eq!(q.len(), 3);
        assert_eq!(q.offer(4), Offer::DroppedNewest(4));
        *q.front_mut().unwrap() = 10;
        assert_eq!(q.pop(), Some(10));
        assert!(!q.is_empty());
        let mut zero = PolicyQueue::new(0, Overflow::DropNewest);
        assert_eq!(zero.offer(1), Offer::Queued, "a depth of 0 means 1");
    }
}
