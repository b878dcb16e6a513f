//! Hooks for tests of the daemon's defences: a producer that misbehaves on purpose.
//!
//! Not part of the API: hidden from the documentation, and of no use outside tests.

use crate::broker::connect::{self, ConnectOptions};
use crate::transport::broker::{ProducerConn, SubEvent, SubscriberConn};
use crate::transport::frame::NoticeCode;
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

/// A subscriber connection that can send what the library never would.
pub struct HostileSubscriber {
    conn: SubscriberConn,
}

impl HostileSubscriber {
    /// Connects to `server` as a subscriber.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileSubscriber> {
        Ok(HostileSubscriber {
            conn: connect::subscriber_once(server, options)?.conn,
        })
    }

    /// The id the daemon gave this subscriber.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Sends `bytes` on the release channel (`sealed`: in the envelope).
    pub fn release(&mut self, bytes: &[u8], sealed: bool) -> Result<()> {
        Ok(self.conn.raw_release(bytes, sealed)?)
    }

    /// Waits up to `timeout` for the daemon's word: the reason it cut this subscriber
    /// off, if it did (batches received meanwhile are dropped).
    pub fn cut_off(&mut self, timeout: std::time::Duration) -> Result<Option<String>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.conn.next(Some(left)) {
                Ok(SubEvent::Notice(NoticeCode::Disconnected, why)) => return Ok(Some(why)),
                Ok(SubEvent::Timeout) => return Ok(None),
                Ok(_) => {}
                Err(crate::TransportError::Disconnected) => {
                    return Ok(Some("the daemon closed the connection".into()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
