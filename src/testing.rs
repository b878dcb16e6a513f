//! Hooks for tests of the daemon's defences: a producer that misbehaves on purpose.
//!
//! Not part of the API: hidden from the documentation, and of no use outside tests.

use crate::broker::connect::{self, ConnectOptions};
use crate::transport::broker::ProducerConn;
use crate::Result;

/// A producer connection that can send what the library never would.
pub struct HostileProducer {
    conn: ProducerConn,
}

impl HostileProducer {
    /// Connects to `server` as a producer.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileProducer> {
        Ok(HostileProducer {
            conn: connect::producer_once(server, options)?.conn,
        })
    }

    /// The id the daemon gave this producer.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Sends `bytes` as a data frame (`sealed`: in the envelope the daemon unwraps).
    pub fn frame(&mut self, bytes: &[u8], sealed: bool) -> Result<()> {
        Ok(self.conn.raw_frame(bytes, sealed)?)
    }

    /// Writes `bytes` into shared memory and sends a descriptor claiming `claimed_len`.
    pub fn batch(&mut self, bytes: &[u8], claimed_len: u32) -> Result<()> {
        Ok(self.conn.raw_batch(bytes, claimed_len)?)
    }

    /// Announces `n` segments (each a file descriptor) with ids from `first`.
    pub fn flood(&mut self, first: u32, n: u32) -> Result<()> {
        Ok(self.conn.announce_flood(first, n)?)
    }

    /// The reason the daemon gave when it cut this producer off, once it has.
    pub fn cut_off(&mut self) -> Result<Option<String>> {
        Ok(self.conn.cut_off()?)
    }
}
