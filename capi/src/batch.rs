//! `pipc_batch`: a received batch, read in place in shared memory.

use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use packet_ipc::{AsIpcPacket, Batch};

use crate::packet::pipc_packet;
use crate::status::{
    fail, free_handle, guard, guard_or, handle_ref, null, PIPC_ERR_INTERNAL, PIPC_ERR_OUT_OF_RANGE,
    PIPC_OK,
};

/// A received batch of packets, read in place in shared memory.
///
/// Created by `pipc_subscriber_recv`, freed by `pipc_batch_free`. Its memory goes back to
/// the producer when it is freed: read what you need, then free it. A subscriber holding
/// 64 batches unfreed (256 under `overflow = "block"`) is sent nothing more until it frees
/// one; what waits for it meanwhile is subject to the server's overflow policy (see
/// `pipc_batch_lost`).
pub struct pipc_batch {
    batch: Batch,
    /// Where each of this subscriber's packets lies in the batch, found in one pass on the
    /// first access (`pipc_batch_len` or `pipc_batch_get`): then `pipc_batch_get` is O(1)
    /// for any index, whatever the batch (`Batch::get` walks a plain batch that has no
    /// index from its start, which a C loop over the indices would make quadratic).
    records: OnceLock<Vec<Record>>,
    /// Where the vector of `records` comes from and goes back to when the batch is freed.
    pub(crate) spares: Spares,
}

/// A record of a batch: its head, and where its bytes start in the batch.
#[derive(Clone, Copy)]
pub(crate) struct Record {
    ts_nanos: u64,
    caplen: u32,
    origlen: u32,
    offset: u32,
}

/// The vectors of records of a subscriber's batches, reused from batch to batch (no
/// allocation per batch once the subscriber runs, none per packet ever). Shared by the
/// subscriber and its batches, which may outlive it.
pub(crate) type Spares = Arc<Mutex<Vec<Vec<Record>>>>;

/// Spare vectors kept at most, per subscriber: as many as the batches it may hold at
/// once under the drop policies.
const MAX_SPARES: usize = 64;

impl pipc_batch {
    /// The handle of a batch received by a subscriber whose vectors are `spares`.
    pub(crate) fn new(batch: Batch, spares: &Spares) -> pipc_batch {
        pipc_batch {
            batch,
            records: OnceLock::new(),
            spares: Arc::clone(spares),
        }
    }

    /// Where this subscriber's packets lie, found on the first call (from any thread).
    fn records(&self) -> &[Record] {
        self.records.get_or_init(|| self.find_records())
    }

    /// Walks the batch once, into a spare vector.
    fn find_records(&self) -> Vec<Record> {
        let mut records = lock(&self.spares).pop().unwrap_or_default();
        records.clear();
        let whole = self.batch.as_bytes();
        let base = whole.as_ptr() as usize;
        records.extend(self.batch.iter().map(|p| {
            let bytes = p.bytes();
            // Where the bytes lie in the batch (whose length is a u32, by its format). An
            // empty packet may be any empty slice: it then points at the start. A
            // non-empty one outside the batch cannot happen; `pipc_batch_get` would
            // report it as an internal error rather than read elsewhere.
            let offset = (bytes.as_ptr() as usize)
                .checked_sub(base)
                .filter(|&o| o + bytes.len() <= whole.len())
                .and_then(|o| u32::try_from(o).ok())
                .unwrap_or(if bytes.is_empty() { 0 } else { u32::MAX });
            Record {
                ts_nanos: p.timestamp_nanos(),
                caplen: bytes.len() as u32,
                origlen: u32::try_from(p.orig_len()).unwrap_or(u32::MAX),
                offset,
            }
        }));
        records
    }
}

impl Drop for pipc_batch {
    /// Gives the vector of records back to the subscriber's spares.
    fn drop(&mut self) {
        if let Some(records) = self.records.take() {
            let mut spares = lock(&self.spares);
            if spares.len() < MAX_SPARES {
                spares.push(records);
            }
        }
    }
}

/// The spares, even if a panic poisoned their lock (a vector of vectors has no invariant
/// a panic could break).
fn lock(spares: &Spares) -> MutexGuard<'_, Vec<Vec<Record>>> {
    spares.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads a value of the batch `b` given by C to `function`: `fallback` for NULL (or a
/// panic). The body of the getters without a status.
///
/// # Safety
///
/// `b` is NULL or a live batch.
unsafe fn read<T: Copy>(
    function: &str,
    b: *const pipc_batch,
    fallback: T,
    f: impl FnOnce(&pipc_batch) -> T,
) -> T {
    // SAFETY: NULL or a live batch, per the caller's contract.
    guard_or(function, fallback, || match unsafe { b.as_ref() } {
        Some(b) => f(b),
        None => fallback,
    })
}

/// The number of packets in the batch for this subscriber (0 for NULL): all of them, or
/// for a group member its share, for a filtered subscriber those that matched.
///
/// The first call of `pipc_batch_len` or `pipc_batch_get` on a batch finds where its
/// packets lie, in one pass over the batch's record heads (copying no packet).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_len(b: *const pipc_batch) -> usize {
    // SAFETY: per the contract.
    unsafe { read("pipc_batch_len", b, 0, |b| b.records().len()) }
}

/// Reads packet `i` of the batch into `*out`, without copying: `out->data` points into the
/// batch's shared memory and stays valid until `pipc_batch_free(b)`. O(1) for any `i`
/// (after the one pass of the batch's first `pipc_batch_len` or `pipc_batch_get`).
///
/// Returns `PIPC_OK`, `PIPC_ERR_OUT_OF_RANGE` if `i >= pipc_batch_len(b)`, or
/// `PIPC_ERR_INVALID_ARGUMENT` if `b` or `out` is NULL (`*out` is left as it was on an
/// error).
///
/// # Safety
///
/// `b` must be NULL or a live batch; `out` must be NULL or point to a writable
/// `pipc_packet`. The bytes at `out->data` must not be written, nor read after the batch
/// is freed.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_get(
    b: *const pipc_batch,
    i: usize,
    out: *mut pipc_packet,
) -> c_int {
    const F: &str = "pipc_batch_get";
    guard(F, || {
        // SAFETY: `b` is NULL or a live batch, per the contract.
        let b = unsafe { handle_ref(F, "b", b) }?;
        if out.is_null() {
            return Err(null(F, "out"));
        }
        let records = b.records();
        let Some(r) = records.get(i) else {
            return Err(fail(
                PIPC_ERR_OUT_OF_RANGE,
                format!(
                    "{F}: index {i} is out of range: the batch has {} packets",
                    records.len()
                ),
            ));
        };
        let bytes = b.batch.as_bytes();
        let start = r.offset as usize;
        let Some(data) = bytes.get(start..start + r.caplen as usize) else {
            return Err(fail(
                PIPC_ERR_INTERNAL,
                format!("{F}: record {i} is out of its batch"),
            ));
        };
        let packet = pipc_packet {
            ts_nanos: r.ts_nanos,
            caplen: r.caplen,
            origlen: r.origlen,
            data: data.as_ptr(),
        };
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(packet) };
        Ok(PIPC_OK)
    })
}

/// The server's sequence number of this batch: it grows by one per batch the server got,
/// so a gap shows batches this subscriber was not given: lost ones (`pipc_batch_lost`
/// counts them), and, for a filtered subscriber or a group member, batches with none of
/// its packets (0 for NULL).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_seq(b: *const pipc_batch) -> u64 {
    // SAFETY: per the contract.
    unsafe { read("pipc_batch_seq", b, 0, |b| b.batch.seq()) }
}

/// The number of batches dropped for this subscriber just before this one, by the
/// server's overflow policy when the subscriber was too slow (0 for NULL).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_lost(b: *const pipc_batch) -> u64 {
    // SAFETY: per the contract.
    unsafe { read("pipc_batch_lost", b, 0, |b| b.batch.lost()) }
}

/// The number of packets in the batches `pipc_batch_lost` counts (this subscriber's share
/// of them, for a group member); 0 for NULL. (An addition to the designed C API, which
/// counts lost batches only.)
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_lost_packets(b: *const pipc_batch) -> u64 {
    // SAFETY: per the contract.
    unsafe { read("pipc_batch_lost_packets", b, 0, |b| b.batch.lost_packets()) }
}

/// 1 when the group's flows moved between its members before this batch (a member joined
/// or left): flows may have moved to or from this member, so per-flow state may be
/// incomplete from here on; else 0 (always 0 outside a group, and for NULL).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_reassigned(b: *const pipc_batch) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        read("pipc_batch_reassigned", b, 0, |b| {
            c_int::from(b.batch.reassigned())
        })
    }
}

/// Frees the batch and gives its shared memory back to the producer; the `data` pointers
/// read from it are invalid afterwards. NULL is accepted and does nothing.
///
/// # Safety
///
/// `b` must be NULL or a batch from `pipc_subscriber_recv` not yet freed, and not used by
/// another thread during or after the call. Freeing it twice is undefined behaviour.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_free(b: *mut pipc_batch) {
    // SAFETY: per the contract.
    unsafe { free_handle("pipc_batch_free", b) }
}

// A batch may move between threads and be read from several at once, as the header
// promises.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<pipc_batch>();
};
