//! `pipc_producer`: sends batches of packets to a named server of the daemon.

use std::ffi::{c_char, c_int};
use std::time::SystemTime;

use packet_ipc::packet::time_from_nanos;
use packet_ipc::{AsIpcPacket, Producer};

use crate::packet::pipc_packet;
use crate::status::{
    free_handle, guard, handle_mut, invalid, null, required_str, OrFail, Out, PIPC_OK,
};

/// A producer: sends batches of packets to a named server of `packet-ipcd`.
///
/// Created by `pipc_producer_connect`, freed by `pipc_producer_free`.
pub struct pipc_producer {
    producer: Producer,
    /// The packet views of the last send, kept (empty) so that sending allocates nothing.
    scratch: Vec<SendPacket<'static>>,
}

/// A C packet seen as an [`AsIpcPacket`]: the library reads its bytes where the C program
/// keeps them and writes them once, into the batch in shared memory.
pub(crate) struct SendPacket<'a> {
    pub(crate) ts: SystemTime,
    pub(crate) data: &'a [u8],
    pub(crate) orig_len: usize,
}

impl AsIpcPacket for SendPacket<'_> {
    fn timestamp(&self) -> &SystemTime {
        &self.ts
    }
    fn data(&self) -> &[u8] {
        self.data
    }
    fn orig_len(&self) -> usize {
        self.orig_len
    }
}

/// Empties `v` and gives back its allocation with a longer lifetime.
pub(crate) fn recycle(mut v: Vec<SendPacket<'_>>) -> Vec<SendPacket<'static>> {
    v.clear();
    // Collecting an emptied vector into one of a type of the same layout reuses its
    // allocation (in-place iteration); no element is ever mapped.
    v.into_iter()
        .map(|_| -> SendPacket<'static> { unreachable!("the vector is empty") })
        .collect()
}

/// Connects a producer to the named server of the running `packet-ipcd`, found through
/// its rendezvous file (`$PACKET_IPC_RENDEZVOUS`, else `$PACKET_IPC_RUNTIME_DIR`, else
/// `/run/packet-ipc`, `$XDG_RUNTIME_DIR/packet-ipc` or `/tmp/packet-ipc-<uid>`).
///
/// On `PIPC_OK`, `*out` is a new producer to free with `pipc_producer_free`; on an error
/// `*out` is set to NULL (when `out` is not NULL) and `pipc_last_error` says why.
///
/// # Safety
///
/// `server` must be NULL or a NUL-terminated string; `out` must be NULL or point to
/// writable storage for a pointer. NULL for either returns `PIPC_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn pipc_producer_connect(
    server: *const c_char,
    out: *mut *mut pipc_producer,
) -> c_int {
    const F: &str = "pipc_producer_connect";
    guard(F, || {
        // SAFETY: `out` is NULL or writable, per the contract.
        let out = unsafe { Out::new(F, out) }?;
        // SAFETY: `server` is NULL or a string, per the contract.
        let server = unsafe { required_str(F, "server", server) }?;
        let producer = Producer::connect(server).or_fail()?;
        Ok(out.put(pipc_producer {
            producer,
            scratch: Vec::new(),
        }))
    })
}

/// Sends `count` packets as one batch. The packets' bytes are read in place and written
/// once, into shared memory that the subscribers read; nothing of `packets` is kept after
/// the call returns, so the caller may reuse its buffers at once. A packet longer than the
/// server's snaplen is cut to it, its `origlen` kept (as `tcpdump -s` does).
///
/// Returns `PIPC_OK` once the batch is handed to the daemon (`count == 0` sends nothing and
/// returns `PIPC_OK`). Under `overflow = "block"` it waits while the slowest subscriber
/// catches up. When the daemon stops, it waits (up to 30 seconds) for one to come back
/// and sends there; `PIPC_ERR_SERVER_GONE` if none does or the server was removed.
/// `PIPC_ERR_BATCH_TOO_LARGE` if the batch is over the server's `max-batch-bytes`.
///
/// # Safety
///
/// `p` must be NULL or a live producer not used by another thread during the call.
/// `packets` must be NULL or point to `count` readable `pipc_packet`s, each of whose
/// `data` points to `caplen` readable bytes (or is NULL with `caplen == 0`). NULL `p`, or
/// NULL `packets` with `count > 0`, returns `PIPC_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn pipc_producer_send(
    p: *mut pipc_producer,
    packets: *const pipc_packet,
    count: usize,
) -> c_int {
    const F: &str = "pipc_producer_send";
    guard(F, || {
        // SAFETY: per the contract.
        let p = unsafe { handle_mut(F, "p", p) }?;
        if count == 0 {
            return Ok(PIPC_OK);
        }
        if packets.is_null() {
            return Err(null(F, "packets"));
        }
        if count > isize::MAX as usize / std::mem::size_of::<pipc_packet>() {
            return Err(invalid(
                F,
                format_args!("count {count} is larger than any array"),
            ));
        }
        // SAFETY: `packets` points to `count` packets per the contract.
        let packets = unsafe { std::slice::from_raw_parts(packets, count) };
        let mut views: Vec<SendPacket<'_>> = std::mem::take(&mut p.scratch);
        for (i, c) in packets.iter().enumerate() {
            let data: &[u8] = if c.caplen == 0 {
                &[]
            } else if c.data.is_null() {
                p.scratch = recycle(views);
                return Err(invalid(
                    F,
                    format_args!("packets[{i}].data is NULL with caplen {}", c.caplen),
                ));
            } else {
                // SAFETY: `data` points to `caplen` readable bytes per the contract, and
                // they stay untouched until this call returns.
                unsafe { std::slice::from_raw_parts(c.data, c.caplen as usize) }
            };
            views.push(SendPacket {
                ts: time_from_nanos(c.ts_nanos),
                data,
                orig_len: c.origlen as usize,
            });
        }
        let result = p.producer.send(&views);
        p.scratch = recycle(views);
        result.or_fail()?;
        Ok(PIPC_OK)
    })
}

/// Tells the daemon how many packets this producer's source has lost so far: a running
/// total since the producer connected, not an increment (for a libpcap capture, the sum
/// of `pcap_stats`' `ps_drop` and `ps_ifdrop`, which wrap at 2^32: keep your own 64-bit
/// total). The daemon reads it about every tenth of a second; `packet-ipc stats` shows it
/// per producer and per server (where departed producers' drops stay counted), so that a
/// source that cannot keep up is told apart from a subscriber that cannot. A producer
/// that reconnects to a new daemon reports its last total there again.
///
/// Returns `PIPC_OK`, or `PIPC_ERR_INVALID_ARGUMENT` if `p` is NULL.
///
/// # Safety
///
/// `p` must be NULL or a live producer not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn pipc_producer_report_source_drops(
    p: *mut pipc_producer,
    total: u64,
) -> c_int {
    const F: &str = "pipc_producer_report_source_drops";
    guard(F, || {
        // SAFETY: `p` is NULL or a live producer used by this thread only.
        let p = unsafe { handle_mut(F, "p", p) }?;
        p.producer.report_source_drops(total);
        Ok(PIPC_OK)
    })
}

/// Closes the producer and frees it. Every batch `pipc_producer_send` accepted has been
/// handed to the daemon, which delivers it to the subscribers after the producer is gone.
/// NULL is accepted and does nothing.
///
/// # Safety
///
/// `p` must be NULL or a producer from `pipc_producer_connect` not yet freed, and not used
/// by another thread during or after the call. Freeing it twice is undefined behaviour.
#[no_mangle]
pub unsafe extern "C" fn pipc_producer_free(p: *mut pipc_producer) {
    // SAFETY: per the contract.
    unsafe { free_handle("pipc_producer_free", p) }
}

// A producer may move between threads (one at a time), as the header promises.
const _: () = {
    const fn send<T: Send>() {}
    send::<pipc_producer>();
};
