//! `pipc_subscriber`: receives the batches of a named server of the daemon.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use packet_ipc::{Received, Subscriber};

use crate::batch::{pipc_batch, Spares};
use crate::status::{
    free_handle, guard, handle_mut, required_str, OrFail, Out, PIPC_END, PIPC_TIMEOUT,
};

/// A subscriber: receives every batch sent to a named server after it connected.
///
/// Created by `pipc_subscriber_connect`, freed by `pipc_subscriber_free`.
pub struct pipc_subscriber {
    subscriber: Subscriber,
    /// The vectors of its batches' records, reused from batch to batch.
    pub(crate) spares: Spares,
}

/// Connects a subscriber to the named server of the running `packet-ipcd` (found as
/// `pipc_producer_connect` says). Once it returns `PIPC_OK`, every batch the server gets
/// after that is delivered to this subscriber.
///
/// On `PIPC_OK`, `*out` is a new subscriber to free with `pipc_subscriber_free`; on an
/// error `*out` is set to NULL (when `out` is not NULL) and `pipc_last_error` says why.
///
/// # Safety
///
/// `server` must be NULL or a NUL-terminated string; `out` must be NULL or point to
/// writable storage for a pointer. NULL for either returns `PIPC_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn pipc_subscriber_connect(
    server: *const c_char,
    out: *mut *mut pipc_subscriber,
) -> c_int {
    const F: &str = "pipc_subscriber_connect";
    guard(F, || {
        // SAFETY: `out` is NULL or writable, per the contract.
        let out = unsafe { Out::new(F, out) }?;
        // SAFETY: `server` is NULL or a string, per the contract.
        let server = unsafe { required_str(F, "server", server) }?;
        let subscriber = Subscriber::connect(server).or_fail()?;
        Ok(out.put(pipc_subscriber {
            subscriber,
            spares: Spares::default(),
        }))
    })
}

/// Receives the next batch, waiting at most `timeout_ms` milliseconds (a negative
/// `timeout_ms` waits as long as it takes; 0 only takes a batch that is already there).
///
/// Returns `PIPC_OK` with `*out` set to a batch to free with `pipc_batch_free`,
/// `PIPC_TIMEOUT` if none came in time, or `PIPC_END` once the server is gone for good;
/// `*out` is NULL whenever the status is not `PIPC_OK`. When the daemon stops, the
/// subscriber waits (up to 30 seconds, which may exceed `timeout_ms`) for one to come back
/// and goes on: packets sent meanwhile may be missing.
///
/// # Safety
///
/// `s` must be NULL or a live subscriber not used by another thread during the call; `out`
/// must be NULL or point to writable storage for a pointer. NULL for either returns
/// `PIPC_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn pipc_subscriber_recv(
    s: *mut pipc_subscriber,
    timeout_ms: c_int,
    out: *mut *mut pipc_batch,
) -> c_int {
    const F: &str = "pipc_subscriber_recv";
    guard(F, || {
        // `out` first: it is NULL on any failure, a NULL `s` included.
        // SAFETY: `out` is NULL or writable, per the contract.
        let out = unsafe { Out::new(F, out) }?;
        // SAFETY: `s` is NULL or a live subscriber used by this thread only.
        let s = unsafe { handle_mut(F, "s", s) }?;
        let received = match u64::try_from(timeout_ms) {
            Ok(ms) => s.subscriber.recv_timeout(Duration::from_millis(ms)),
            Err(_) => s
                .subscriber
                .recv()
                .map(|b| b.map_or(Received::End, Received::Batch)),
        };
        match received.or_fail()? {
            Received::Batch(batch) => Ok(out.put(pipc_batch::new(batch, &s.spares))),
            Received::Timeout => Ok(PIPC_TIMEOUT),
            Received::End => Ok(PIPC_END),
        }
    })
}

/// Disconnects the subscriber and frees it. Batches it received stay valid until they are
/// freed. NULL is accepted and does nothing.
///
/// # Safety
///
/// `s` must be NULL or a subscriber from `pipc_subscriber_connect` not yet freed, and not
/// used by another thread during or after the call. Freeing it twice is undefined
/// behaviour.
#[no_mangle]
pub unsafe extern "C" fn pipc_subscriber_free(s: *mut pipc_subscriber) {
    // SAFETY: per the contract.
    unsafe { free_handle("pipc_subscriber_free", s) }
}

// A subscriber may move between threads (one at a time), as the header promises.
const _: () = {
    const fn send<T: Send>() {}
    send::<pipc_subscriber>();
};
