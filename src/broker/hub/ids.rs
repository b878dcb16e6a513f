//! The identities a hub deals in, typed so that one is never taken for another.

use std::fmt;

/// A client (producer or subscriber), unique for the daemon's lifetime: the id `stats`
/// lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClientId(pub u64);

/// A producer's pool of shared memory, unique for the daemon's lifetime: a new producer
/// never gets the id of a departed one, so no descriptor can name the wrong memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PoolId(pub u64);

/// A slot of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Slot(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
