//! `pipc_subscriber`: receives the batches of a named server of the daemon.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use packet_ipc::{ConnectOptions, Received, Subscriber, WaitMode};

use crate::batch::{pipc_batch, Spares};
use crate::status::{
    free_handle, guard, handle_mut, invalid, optional_str, required_str, OrFail, Out, Outcome,
    PIPC_END, PIPC_OK, PIPC_TIMEOUT,
};

/// `pipc_subscriber_opts.wait`: spin for a short while, then sleep until woken: low
/// latency while data flows, little CPU when it does not.
pub const PIPC_WAIT_ADAPTIVE: c_int = 0;
/// `pipc_subscriber_opts.wait`: never sleep: the lowest latency, for a whole CPU core.
pub const PIPC_WAIT_SPIN: c_int = 1;
/// `pipc_subscriber_opts.wait`: sleep until woken: the least CPU, for the latency of a
/// wake-up.
pub const PIPC_WAIT_PARK: c_int = 2;

/// How a subscriber connects, for `pipc_subscriber_connect_opts`.
///
/// Set every field: a zero-filled struct asks for adaptive waiting and no reconnection at
/// all. (`pipc_subscriber_connect_opts` with NULL options takes the defaults: no group, no
/// filter, the server's `wait` setting, 30 seconds to reconnect.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pipc_subscriber_opts {
    /// NULL: a plain subscriber, which receives every packet. Else the name of a group to
    /// join (up to 64 letters, digits, `.`, `_` or `-`): the server spreads its packets
    /// over the members, each getting its share (by flow, address pair or whole batch, as
    /// the server's `group-balance` says), every packet going to one member.
    pub group: *const c_char,
    /// NULL: no filter. Else a tcpdump filter expression (`"udp"`, `"tcp port 80"`...):
    /// only the packets that match are received. It is compiled with libpcap, loaded at
    /// run time, for the server's link type.
    pub filter: *const c_char,
    /// How to wait for batches: `PIPC_WAIT_ADAPTIVE`, `PIPC_WAIT_SPIN` or `PIPC_WAIT_PARK`.
    pub wait: c_int,
    /// How long to wait for a daemon to come back when it stops or dies, in milliseconds:
    /// 0 not at all (`pipc_subscriber_recv` then returns `PIPC_END` at once); negative, the
    /// default (30 seconds).
    pub reconnect_wait_ms: c_int,
}

impl pipc_subscriber_opts {
    /// The library's options these ask for, read for `function`.
    ///
    /// # Safety
    ///
    /// `group` and `filter` are NULL or NUL-terminated strings.
    unsafe fn options(&self, function: &str) -> Outcome<ConnectOptions> {
        // SAFETY: NULL or a string, per the caller's contract (both).
        let group = unsafe { optional_str(function, "opts->group", self.group) }?;
        // SAFETY: as above.
        let filter = unsafe { optional_str(function, "opts->filter", self.filter) }?;
        let wait = match self.wait {
            PIPC_WAIT_ADAPTIVE => WaitMode::Adaptive,
            PIPC_WAIT_SPIN => WaitMode::Spin,
            PIPC_WAIT_PARK => WaitMode::Park,
            other => {
                return Err(invalid(
                    function,
                    format_args!(
                        "opts->wait is {other}: PIPC_WAIT_ADAPTIVE (0), PIPC_WAIT_SPIN (1) \
                         or PIPC_WAIT_PARK (2) expected"
                    ),
                ))
            }
        };
        let defaults = ConnectOptions::default();
        let reconnect_wait = u64::try_from(self.reconnect_wait_ms)
            .map_or(defaults.reconnect_wait, Duration::from_millis);
        Ok(ConnectOptions {
            group: group.map(str::to_owned),
            filter: filter.map(str::to_owned),
            wait: Some(wait),
            reconnect_wait,
            ..defaults
        })
    }
}

/// A subscriber: receives the batches sent to a named server after it connected (every
/// packet, or its share of a group's, and only those its filter matches).
///
/// Created by `pipc_subscriber_connect` or `pipc_subscriber_connect_opts`, freed by
/// `pipc_subscriber_free`.
pub struct pipc_subscriber {
    subscriber: Subscriber,
    /// The vectors of its batches' records, reused from batch to batch.
    pub(crate) spares: Spares,
}

/// The body of the connect functions: `opts` NULL takes the defaults.
///
/// # Safety
///
/// As `pipc_subscriber_connect_opts`'s contract.
unsafe fn connect(
    function: &str,
    server: *const c_char,
    opts: *const pipc_subscriber_opts,
    out: *mut *mut pipc_subscriber,
) -> c_int {
    guard(function, || {
        // SAFETY: `out` is NULL or writable, per the contract.
        let out = unsafe { Out::new(function, out) }?;
        // SAFETY: `server` is NULL or a string, per the contract.
        let server = unsafe { required_str(function, "server", server) }?;
        // SAFETY: `opts` is NULL or readable options, per the contract.
        let options = match unsafe { opts.as_ref() } {
            // SAFETY: their strings are NULL or strings, per the contract.
            Some(opts) => unsafe { opts.options(function) }?,
            None => ConnectOptions::default(),
        };
        let subscriber = Subscriber::connect_with(server, options).or_fail()?;
        Ok(out.put(pipc_subscriber {
            subscriber,
            spares: Spares::default(),
        }))
    })
}

/// Connects a subscriber to the named server of the running `packet-ipcd` (found as
/// `pipc_producer_connect` says). Once it returns `PIPC_OK`, every batch the server gets
/// after that is delivered to this subscriber. The same as
/// `pipc_subscriber_connect_opts(server, NULL, out)`.
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
    // SAFETY: per the contract (no options).
    unsafe { connect("pipc_subscriber_connect", server, std::ptr::null(), out) }
}

/// Connects a subscriber as `pipc_subscriber_connect` does, with options: a group to
/// join, a filter, how to wait, how long to wait for a daemon to come back (see
/// `pipc_subscriber_opts`). NULL `opts` takes the defaults. Once it returns `PIPC_OK`,
/// every batch the server gets after that is delivered to this subscriber (its share of
/// it, in a group; the packets its filter matches).
///
/// On `PIPC_OK`, `*out` is a new subscriber to free with `pipc_subscriber_free`; on an
/// error `*out` is set to NULL (when `out` is not NULL) and `pipc_last_error` says why:
/// `PIPC_ERR_INVALID_ARGUMENT` for a bad `opts->wait`, a string that is not UTF-8, or a
/// filter expression libpcap rejects (with libpcap's message); `PIPC_ERR_UNAVAILABLE` if
/// a filter is asked for and libpcap cannot be loaded; `PIPC_ERR_REFUSED` for a group name
/// the daemon does not accept; the errors of `pipc_subscriber_connect` otherwise.
///
/// # Safety
///
/// `server` must be NULL or a NUL-terminated string; `out` must be NULL or point to
/// writable storage for a pointer (NULL for either returns `PIPC_ERR_INVALID_ARGUMENT`).
/// `opts` must be NULL or point to a readable `pipc_subscriber_opts` whose `group` and
/// `filter` are each NULL or a NUL-terminated string; they are read during the call only.
#[no_mangle]
pub unsafe extern "C" fn pipc_subscriber_connect_opts(
    server: *const c_char,
    opts: *const pipc_subscriber_opts,
    out: *mut *mut pipc_subscriber,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { connect("pipc_subscriber_connect_opts", server, opts, out) }
}

/// Sets the subscriber's filter, at any time after it connected: from the next batch
/// `pipc_subscriber_recv` gives, only the packets that match the tcpdump filter
/// expression `expr` are received (batches already received keep their packets). NULL
/// `expr` removes the filter: every packet (of its share, in a group) is received again.
///
/// Returns `PIPC_OK`; `PIPC_ERR_INVALID_ARGUMENT` if `s` is NULL, `expr` is not UTF-8, or
/// libpcap rejects the expression (its message is in `pipc_last_error`);
/// `PIPC_ERR_UNAVAILABLE` if libpcap cannot be loaded. On an error the filter is left as
/// it was.
///
/// # Safety
///
/// `s` must be NULL or a live subscriber not used by another thread during the call;
/// `expr` must be NULL or a NUL-terminated string (read during the call only).
#[no_mangle]
pub unsafe extern "C" fn pipc_subscriber_set_filter(
    s: *mut pipc_subscriber,
    expr: *const c_char,
) -> c_int {
    const F: &str = "pipc_subscriber_set_filter";
    guard(F, || {
        // SAFETY: `s` is NULL or a live subscriber used by this thread only.
        let s = unsafe { handle_mut(F, "s", s) }?;
        // SAFETY: `expr` is NULL or a string, per the contract.
        let expr = unsafe { optional_str(F, "expr", expr) }?;
        s.subscriber.set_filter(expr).or_fail()?;
        Ok(PIPC_OK)
    })
}

/// Receives the next batch, waiting at most `timeout_ms` milliseconds (a negative
/// `timeout_ms` waits as long as it takes; 0 only takes a batch that is already there).
///
/// Returns `PIPC_OK` with `*out` set to a batch to free with `pipc_batch_free`,
/// `PIPC_TIMEOUT` if none came in time, or `PIPC_END` once the server is gone for good;
/// `*out` is NULL whenever the status is not `PIPC_OK`. When the daemon stops, the
/// subscriber waits (up to 30 seconds, or `opts.reconnect_wait_ms`; this may exceed
/// `timeout_ms`) for one to come back and goes on: packets sent meanwhile may be missing.
/// A batch with no packet for this subscriber (all filtered out) is not given: the call
/// goes on waiting for one, within `timeout_ms`.
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
