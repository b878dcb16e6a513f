//! The C API of packet-ipc: `libpacket_ipc.so` and `libpacket_ipc.a`, declared by the
//! generated header `capi/include/packet_ipc.h` (DESIGN.md section 1.4).
//!
//! Every exported function checks its pointers, returns a status (or a neutral value for
//! the getters and `_free` functions), and catches panics, so that no unwinding ever
//! crosses into C. The detail of the last failure on a thread is kept in a thread-local
//! string, [`pipc_last_error`].
//!
//! The header's opening comment (thread safety, status codes, the pcap mapping) lives in
//! `capi/cbindgen.toml`; the declarations and their comments come from this file, which is
//! the only file cbindgen reads. `tests/header.rs` regenerates the header and fails when
//! the committed one differs.
#![expect(
    non_camel_case_types,
    reason = "the C types are named as DESIGN.md section 1.4 declares them"
)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, SystemTime};

use packet_ipc::packet::time_from_nanos;
use packet_ipc::{AsIpcPacket, Batch, Error, Producer, Received, Subscriber};

// ---------------------------------------------------------------------------------------
// Status codes.

/// Success.
pub const PIPC_OK: c_int = 0;
/// `pipc_subscriber_recv`: the server is gone for good (removed from the daemon's
/// configuration, or the daemon stopped and none came back within 30 seconds). Every
/// later call returns `PIPC_END` again. Not an error.
pub const PIPC_END: c_int = 1;
/// `pipc_subscriber_recv`: no batch arrived within the timeout. Not an error.
pub const PIPC_TIMEOUT: c_int = 2;
/// A pointer argument is NULL, the server name is not UTF-8, or a packet has
/// `data == NULL` with `caplen > 0`.
pub const PIPC_ERR_INVALID_ARGUMENT: c_int = -1;
/// No `packet-ipcd` is running where the client looked (the detail names the
/// rendezvous file; see `PACKET_IPC_RUNTIME_DIR`).
pub const PIPC_ERR_NO_DAEMON: c_int = -2;
/// The daemon has no server of that name (the detail names it and lists the servers).
pub const PIPC_ERR_UNKNOWN_SERVER: c_int = -3;
/// This user may not use that server in that role (its producer or subscriber group).
pub const PIPC_ERR_PERMISSION_DENIED: c_int = -4;
/// The daemon refused the connection (for example: no producer slot free).
pub const PIPC_ERR_REFUSED: c_int = -5;
/// The daemon did not answer the connection request in time.
pub const PIPC_ERR_NO_ANSWER: c_int = -6;
/// The daemon cut this client off (the detail says why: a refused batch, a subscriber too
/// slow under `overflow = "disconnect"`...). The handle should be freed.
pub const PIPC_ERR_DISCONNECTED: c_int = -7;
/// `pipc_producer_send`: the server is gone for good (removed from the configuration, or
/// the daemon stopped and none came back within 30 seconds). Nothing was sent.
pub const PIPC_ERR_SERVER_GONE: c_int = -8;
/// `pipc_producer_send`: the batch is larger than the server's `max-batch-bytes`. Nothing
/// was sent; send fewer packets at a time.
pub const PIPC_ERR_BATCH_TOO_LARGE: c_int = -9;
/// A batch could not be written or was received malformed.
pub const PIPC_ERR_BAD_BATCH: c_int = -10;
/// The link to the daemon failed (an I/O or transport error; the detail says which).
pub const PIPC_ERR_IO: c_int = -11;
/// `pipc_batch_get`: the index is not below `pipc_batch_len`.
pub const PIPC_ERR_OUT_OF_RANGE: c_int = -12;
/// A bug in packet-ipc: an unexpected error, or a panic that was caught at the boundary.
/// The detail says what happened; please report it.
pub const PIPC_ERR_INTERNAL: c_int = -13;

/// Every status code, with its `pipc_strerror` text.
const STATUS_TEXT: &[(c_int, &CStr)] = &[
    (PIPC_OK, c"success"),
    (PIPC_END, c"end of stream: the server is gone for good"),
    (PIPC_TIMEOUT, c"timed out"),
    (
        PIPC_ERR_INVALID_ARGUMENT,
        c"invalid argument (NULL pointer or bad value)",
    ),
    (PIPC_ERR_NO_DAEMON, c"no packet-ipcd is running"),
    (PIPC_ERR_UNKNOWN_SERVER, c"unknown server"),
    (PIPC_ERR_PERMISSION_DENIED, c"permission denied"),
    (PIPC_ERR_REFUSED, c"connection refused by the daemon"),
    (PIPC_ERR_NO_ANSWER, c"the daemon did not answer in time"),
    (PIPC_ERR_DISCONNECTED, c"disconnected by the daemon"),
    (PIPC_ERR_SERVER_GONE, c"the server is gone"),
    (
        PIPC_ERR_BATCH_TOO_LARGE,
        c"batch too large for the server (max-batch-bytes)",
    ),
    (PIPC_ERR_BAD_BATCH, c"malformed batch"),
    (PIPC_ERR_IO, c"I/O or transport error"),
    (PIPC_ERR_OUT_OF_RANGE, c"index out of range"),
    (PIPC_ERR_INTERNAL, c"internal error in packet-ipc"),
];

/// The status code of a library error.
fn status_of(e: &Error) -> c_int {
    match e {
        Error::NoDaemon(_) => PIPC_ERR_NO_DAEMON,
        Error::UnknownServer { .. } => PIPC_ERR_UNKNOWN_SERVER,
        Error::PermissionDenied { .. } => PIPC_ERR_PERMISSION_DENIED,
        Error::Refused { .. } => PIPC_ERR_REFUSED,
        Error::NoAnswer { .. } => PIPC_ERR_NO_ANSWER,
        Error::Disconnected { .. } => PIPC_ERR_DISCONNECTED,
        Error::ServerGone { .. } | Error::DaemonGone { .. } => PIPC_ERR_SERVER_GONE,
        Error::BatchTooLarge { .. } => PIPC_ERR_BATCH_TOO_LARGE,
        Error::Batch(_) => PIPC_ERR_BAD_BATCH,
        Error::Transport(_) | Error::Spool(_) => PIPC_ERR_IO,
        _ => PIPC_ERR_INTERNAL,
    }
}

// ---------------------------------------------------------------------------------------
// The last error of each thread.

thread_local! {
    /// The detail of the last failure on this thread; what `pipc_last_error` returns.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `detail` as this thread's last error and returns `status`.
fn fail(status: c_int, detail: impl Into<String>) -> c_int {
    let mut text = detail.into().into_bytes();
    text.retain(|&b| b != 0);
    let text = CString::new(text).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down: nothing to keep then.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = Some(text));
    status
}

/// Records a library error as this thread's last error and returns its status.
fn fail_with(e: &Error) -> c_int {
    fail(status_of(e), e.to_string())
}

/// Records a NULL argument as this thread's last error.
fn null(function: &str, argument: &str) -> c_int {
    fail(
        PIPC_ERR_INVALID_ARGUMENT,
        format!("{function}: {argument} is NULL"),
    )
}

/// The message of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `f`, turning a panic into `PIPC_ERR_INTERNAL`: no unwinding crosses into C.
fn guard(function: &str, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(status) => status,
        Err(payload) => fail(
            PIPC_ERR_INTERNAL,
            format!("{function}: panic: {}", panic_text(&*payload)),
        ),
    }
}

/// Runs `f`, returning `fallback` if it panics (for the functions without a status).
fn guard_or<T>(function: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        fail(
            PIPC_ERR_INTERNAL,
            format!("{function}: panic: {}", panic_text(&*payload)),
        );
        fallback
    })
}

/// Returns a static, human-readable description of a status code (never NULL; "unknown
/// status" for a code this library does not define).
///
/// # Safety
///
/// Always safe to call. The returned string is static and must not be freed or modified.
#[no_mangle]
pub extern "C" fn pipc_strerror(status: c_int) -> *const c_char {
    STATUS_TEXT
        .iter()
        .find(|(code, _)| *code == status)
        .map_or(c"unknown status".as_ptr(), |(_, text)| text.as_ptr())
}

/// Returns the detail of the last error on the calling thread: what failed and why, with
/// names (the server, the rendezvous file, the daemon's reason...). Returns an empty string
/// (never NULL) when no call has failed on this thread.
///
/// Successful calls do not clear it: read it right after a call returned a negative status.
///
/// # Safety
///
/// Always safe to call. The returned string belongs to the library: it must not be freed
/// or modified, and it is valid until the next failing call on the same thread (or the
/// thread's end); copy it to keep it longer.
#[no_mangle]
pub extern "C" fn pipc_last_error() -> *const c_char {
    let found = catch_unwind(|| {
        LAST_ERROR
            .try_with(|last| last.borrow().as_ref().map(|s| s.as_ptr()))
            .ok()
            .flatten()
    });
    match found {
        Ok(Some(ptr)) => ptr,
        _ => c"".as_ptr(),
    }
}

// ---------------------------------------------------------------------------------------
// Types.

/// One packet, as `pipc_producer_send` takes it and `pipc_batch_get` gives it.
///
/// It maps onto libpcap's `struct pcap_pkthdr` without surprises:
/// `ts.tv_sec = ts_nanos / 1000000000`, `ts.tv_usec = (ts_nanos % 1000000000) / 1000`,
/// `caplen = caplen`, `len = origlen` (and the other way:
/// `ts_nanos = tv_sec * 1000000000ULL + tv_usec * 1000ULL`). Timestamps are kept to the
/// nanosecond, so a nanosecond-precision pcap (`pcap_open_dead_with_tstamp_precision`)
/// loses nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pipc_packet {
    /// Capture time in nanoseconds since 1970-01-01T00:00:00Z.
    pub ts_nanos: u64,
    /// Number of captured bytes at `data`.
    pub caplen: u32,
    /// Length of the packet on the wire: at least `caplen`, more when the capture cut it
    /// (a sent `origlen` below `caplen` is raised to `caplen`; a sent packet longer than
    /// the server's snaplen is cut to it and keeps its `origlen`).
    pub origlen: u32,
    /// The captured bytes. Received: points into the batch's shared memory, valid until
    /// `pipc_batch_free`, read-only. Sent: read during `pipc_producer_send` only; may be
    /// NULL when `caplen` is 0.
    pub data: *const u8,
}

/// A producer: sends batches of packets to a named server of `packet-ipcd`.
///
/// Created by `pipc_producer_connect`, freed by `pipc_producer_free`.
pub struct pipc_producer {
    producer: Producer,
    /// The packet views of the last send, kept (empty) so that sending allocates nothing.
    scratch: Vec<SendPacket<'static>>,
}

/// A subscriber: receives every batch sent to a named server after it connected.
///
/// Created by `pipc_subscriber_connect`, freed by `pipc_subscriber_free`.
pub struct pipc_subscriber {
    subscriber: Subscriber,
}

/// A received batch of packets, read in place in shared memory.
///
/// Created by `pipc_subscriber_recv`, freed by `pipc_batch_free`. Its memory goes back to
/// the producer when it is freed: read what you need, then free it. A subscriber holding
/// 32 batches unfreed is sent nothing more until it frees one; what waits for it
/// meanwhile is subject to the server's overflow policy (see `pipc_batch_lost`).
pub struct pipc_batch {
    batch: Batch,
    /// Where each record is, so that `pipc_batch_get` is O(1) for any index.
    index: Vec<Record>,
}

/// A record of a batch: its head, and where its bytes start in the batch.
#[derive(Clone, Copy)]
struct Record {
    ts_nanos: u64,
    caplen: u32,
    origlen: u32,
    offset: u32,
}

/// A C packet seen as an [`AsIpcPacket`]: the library reads its bytes where the C program
/// keeps them and writes them once, into the batch in shared memory.
struct SendPacket<'a> {
    ts: SystemTime,
    data: &'a [u8],
    orig_len: usize,
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
fn recycle(mut v: Vec<SendPacket<'_>>) -> Vec<SendPacket<'static>> {
    v.clear();
    // Collecting an emptied vector into one of a type of the same layout reuses its
    // allocation (in-place iteration); no element is ever mapped.
    v.into_iter()
        .map(|_| -> SendPacket<'static> { unreachable!("the vector is empty") })
        .collect()
}

// The thread-safety the header promises: handles may move between threads, batches may
// also be read from several threads at once.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<pipc_producer>();
    send::<pipc_subscriber>();
    send_sync::<pipc_batch>();
};

/// Reads a server name given by C.
///
/// # Safety
///
/// `name` is NULL or points to a NUL-terminated string.
unsafe fn server_name<'a>(function: &str, name: *const c_char) -> Result<&'a str, c_int> {
    if name.is_null() {
        return Err(null(function, "server"));
    }
    // SAFETY: non-null, and NUL-terminated per the caller's contract.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_str().map_err(|_| {
        fail(
            PIPC_ERR_INVALID_ARGUMENT,
            format!("{function}: the server name is not valid UTF-8"),
        )
    })
}

// ---------------------------------------------------------------------------------------
// Producer.

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
        if out.is_null() {
            return null(F, "out");
        }
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: per the contract.
        let name = match unsafe { server_name(F, server) } {
            Ok(name) => name,
            Err(status) => return status,
        };
        match Producer::connect(name) {
            Ok(producer) => {
                let handle = Box::new(pipc_producer {
                    producer,
                    scratch: Vec::new(),
                });
                // SAFETY: as above.
                unsafe { out.write(Box::into_raw(handle)) };
                PIPC_OK
            }
            Err(e) => fail_with(&e),
        }
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
        // SAFETY: NULL or a live producer used by this thread only, per the contract.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return null(F, "p");
        };
        if count == 0 {
            return PIPC_OK;
        }
        if packets.is_null() {
            return null(F, "packets");
        }
        if count > isize::MAX as usize / std::mem::size_of::<pipc_packet>() {
            return fail(
                PIPC_ERR_INVALID_ARGUMENT,
                format!("{F}: count {count} is larger than any array"),
            );
        }
        // SAFETY: `packets` points to `count` packets per the contract.
        let packets = unsafe { std::slice::from_raw_parts(packets, count) };
        let mut views: Vec<SendPacket<'_>> = std::mem::take(&mut p.scratch);
        for (i, c) in packets.iter().enumerate() {
            let data: &[u8] = if c.caplen == 0 {
                &[]
            } else if c.data.is_null() {
                p.scratch = recycle(views);
                return fail(
                    PIPC_ERR_INVALID_ARGUMENT,
                    format!("{F}: packets[{i}].data is NULL with caplen {}", c.caplen),
                );
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
        match result {
            Ok(()) => PIPC_OK,
            Err(e) => fail_with(&e),
        }
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
    if p.is_null() {
        return;
    }
    guard_or("pipc_producer_free", (), || {
        // SAFETY: `p` came from Box::into_raw in pipc_producer_connect and is freed once.
        drop(unsafe { Box::from_raw(p) });
    });
}

// ---------------------------------------------------------------------------------------
// Subscriber.

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
        if out.is_null() {
            return null(F, "out");
        }
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: per the contract.
        let name = match unsafe { server_name(F, server) } {
            Ok(name) => name,
            Err(status) => return status,
        };
        match Subscriber::connect(name) {
            Ok(subscriber) => {
                let handle = Box::new(pipc_subscriber { subscriber });
                // SAFETY: as above.
                unsafe { out.write(Box::into_raw(handle)) };
                PIPC_OK
            }
            Err(e) => fail_with(&e),
        }
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
        if out.is_null() {
            return null(F, "out");
        }
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live subscriber used by this thread only, per the contract.
        let Some(s) = (unsafe { s.as_mut() }) else {
            return null(F, "s");
        };
        let received = match u64::try_from(timeout_ms) {
            Ok(ms) => s.subscriber.recv_timeout(Duration::from_millis(ms)),
            Err(_) => s
                .subscriber
                .recv()
                .map(|b| b.map_or(Received::End, Received::Batch)),
        };
        match received {
            Ok(Received::Batch(batch)) => {
                let handle = Box::new(pipc_batch::new(batch));
                // SAFETY: as above.
                unsafe { out.write(Box::into_raw(handle)) };
                PIPC_OK
            }
            Ok(Received::Timeout) => PIPC_TIMEOUT,
            Ok(Received::End) => PIPC_END,
            Err(e) => fail_with(&e),
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
    if s.is_null() {
        return;
    }
    guard_or("pipc_subscriber_free", (), || {
        // SAFETY: `s` came from Box::into_raw in pipc_subscriber_connect and is freed once.
        drop(unsafe { Box::from_raw(s) });
    });
}

// ---------------------------------------------------------------------------------------
// Batch.

impl pipc_batch {
    fn new(batch: Batch) -> pipc_batch {
        let whole = batch.as_bytes();
        let base = whole.as_ptr() as usize;
        let index = batch
            .iter()
            .map(|p| {
                let bytes = p.bytes();
                // Where the bytes lie in the batch (whose length is a u32, by its format).
                // An empty packet may be any empty slice: it then points at the start. A
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
            })
            .collect();
        pipc_batch { batch, index }
    }
}

/// Borrows a batch given by C.
///
/// # Safety
///
/// `b` is NULL or a live batch.
unsafe fn batch_ref<'a>(b: *const pipc_batch) -> Option<&'a pipc_batch> {
    // SAFETY: per the caller's contract.
    unsafe { b.as_ref() }
}

/// The number of packets in the batch (0 for NULL).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_len(b: *const pipc_batch) -> usize {
    // SAFETY: per the contract.
    guard_or("pipc_batch_len", 0, || match unsafe { batch_ref(b) } {
        Some(b) => b.index.len(),
        None => 0,
    })
}

/// Reads packet `i` of the batch into `*out`, without copying: `out->data` points into the
/// batch's shared memory and stays valid until `pipc_batch_free(b)`. O(1) for any `i`.
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
        // SAFETY: per the contract.
        let Some(b) = (unsafe { batch_ref(b) }) else {
            return null(F, "b");
        };
        if out.is_null() {
            return null(F, "out");
        }
        let Some(r) = b.index.get(i) else {
            return fail(
                PIPC_ERR_OUT_OF_RANGE,
                format!(
                    "{F}: index {i} is out of range: the batch has {} packets",
                    b.index.len()
                ),
            );
        };
        let bytes = b.batch.as_bytes();
        let start = r.offset as usize;
        let Some(data) = bytes.get(start..start + r.caplen as usize) else {
            return fail(
                PIPC_ERR_INTERNAL,
                format!("{F}: record {i} is out of its batch"),
            );
        };
        let packet = pipc_packet {
            ts_nanos: r.ts_nanos,
            caplen: r.caplen,
            origlen: r.origlen,
            data: data.as_ptr(),
        };
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(packet) };
        PIPC_OK
    })
}

/// The server's sequence number of this batch: it grows by one per batch the server got,
/// so a gap shows batches this subscriber missed (0 for NULL).
///
/// # Safety
///
/// `b` must be NULL or a live batch from `pipc_subscriber_recv`.
#[no_mangle]
pub unsafe extern "C" fn pipc_batch_seq(b: *const pipc_batch) -> u64 {
    // SAFETY: per the contract.
    guard_or("pipc_batch_seq", 0, || match unsafe { batch_ref(b) } {
        Some(b) => b.batch.seq(),
        None => 0,
    })
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
    guard_or("pipc_batch_lost", 0, || match unsafe { batch_ref(b) } {
        Some(b) => b.batch.lost(),
        None => 0,
    })
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
    if b.is_null() {
        return;
    }
    guard_or("pipc_batch_free", (), || {
        // SAFETY: `b` came from Box::into_raw in pipc_subscriber_recv and is freed once.
        drop(unsafe { Box::from_raw(b) });
    });
}

#[cfg(test)]
mod tests;
