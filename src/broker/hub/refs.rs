//! Reference counts on the slots of producers' pools.
//!
//! A batch's slot is held once for every subscriber that has it queued or delivered and
//! not yet released. When the last one lets go, the slot goes back to its producer — or,
//! when the producer has left, nowhere; and when the last slot of a departed producer's
//! pool is let go, the pool is retired (subscribers unmap it).

use std::collections::HashMap;
use std::sync::Arc;

use super::ids::{ClientId, PoolId, Slot};
use crate::transport::ends::PoolMemory;

struct Entry {
    mem: Arc<PoolMemory>,
    refs: Vec<u32>,
    /// Slots with at least one reference.
    live: u32,
    producer: Option<ClientId>,
}

/// What letting go of a reference did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unref {
    /// Others still hold the slot.
    Held,
    /// The slot is free: give it back to this producer.
    Free(ClientId, Slot),
    /// The slot is free and its producer is gone.
    Orphan,
    /// The last slot of a departed producer's pool is free: retire the pool.
    Retire(PoolId),
}

/// Every pool a hub knows, live or draining.
#[derive(Default)]
pub(crate) struct Pools {
    map: HashMap<PoolId, Entry>,
}

impl Pools {
    /// A producer's new pool.
    pub(crate) fn insert(&mut self, id: PoolId, mem: Arc<PoolMemory>, producer: ClientId) {
        let slots = mem.shape.slots() as usize;
        self.map.insert(
            id,
            Entry {
                mem,
                refs: vec![0; slots],
                live: 0,
                producer: Some(producer),
            },
        );
    }

    /// The pool's memory.
    pub(crate) fn memory(&self, id: PoolId) -> Option<&Arc<PoolMemory>> {
        self.map.get(&id).map(|e| &e.mem)
    }

    /// True when `slot` is held by some subscriber (a producer must not publish it).
    pub(crate) fn is_held(&self, id: PoolId, slot: Slot) -> bool {
        self.map
            .get(&id)
            .and_then(|e| e.refs.get(slot.0 as usize))
            .is_some_and(|&n| n > 0)
    }

    /// Takes `n` more references to `slot`.
    pub(crate) fn hold(&mut self, id: PoolId, slot: Slot, n: u32) {
        if n == 0 {
            return;
        }
        if let Some(e) = self.map.get_mut(&id) {
            if let Some(r) = e.refs.get_mut(slot.0 as usize) {
                if *r == 0 {
                    e.live += 1;
                }
                *r += n;
            }
        }
    }

    /// Lets go of one reference to `slot`.
    pub(crate) fn release(&mut self, id: PoolId, slot: Slot) -> Unref {
        let Some(e) = self.map.get_mut(&id) else {
            return Unref::Held;
        };
        let Some(r) = e.refs.get_mut(slot.0 as usize) else {
            return Unref::Held;
        };
        if *r == 0 {
            return Unref::Held;
        }
        *r -= 1;
        if *r > 0 {
            return Unref::Held;
        }
        e.live -= 1;
        match e.producer {
            Some(p) => Unref::Free(p, slot),
            None if e.live == 0 => {
                self.map.remove(&id);
                Unref::Retire(id)
            }
            None => Unref::Orphan,
        }
    }

    /// The producer of pool `id` left: true when nothing holds the pool any more (retire
    /// it now; otherwise [`Pools::release`] says so when the last slot is let go).
    pub(crate) fn producer_left(&mut self, id: PoolId) -> bool {
        let Some(e) = self.map.get_mut(&id) else {
            return false;
        };
        e.producer = None;
        if e.live == 0 {
            self.map.remove(&id);
            true
        } else {
            false
        }
    }

    /// Number of pools.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools_with(id: u64, slots: u32) -> Pools {
        let mut pools = Pools::default();
        pools.insert(
            PoolId(id),
            crate::transport::ends::test_pool(id, slots),
            ClientId(7),
        );
        pools
    }

    #[test]
    fn the_last_reference_frees_the_slot_for_its_producer() {
        let mut pools = pools_with(1, 4);
        let (p, s) = (PoolId(1), Slot(2));
        assert!(!pools.is_held(p, s));
        pools.hold(p, s, 2);
        assert!(pools.is_held(p, s));
        assert_eq!(pools.release(p, s), Unref::Held);
        assert_eq!(pools.release(p, s), Unref::Free(ClientId(7), s));
        assert_eq!(
            pools.release(p, s),
            Unref::Held,
            "a release too many is ignored"
        );
        assert!(!pools.is_held(p, Slot(99)), "out of range is never held");
    }

    #[test]
    fn a_departed_producers_pool_is_retired_when_the_last_slot_goes() {
        let mut pools = pools_with(1, 4);
        let p = PoolId(1);
        pools.hold(p, Slot(0), 1);
        pools.hold(p, Slot(3), 1);
        assert!(!pools.producer_left(p), "still held");
        assert_eq!(pools.release(p, Slot(0)), Unref::Orphan);
        assert_eq!(pools.release(p, Slot(3)), Unref::Retire(p));
        assert_eq!(pools.len(), 0);
        let mut idle = pools_with(2, 4);
        assert!(
            idle.producer_left(PoolId(2)),
            "nothing held: retired at once"
        );
    }
}
