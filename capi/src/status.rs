//! Status codes and their texts (one table), the thread's last error, and what every
//! exported function is written with: [`guard`] and [`guard_or`], which keep panics from
//! crossing into C, and the argument checks ([`handle_mut`], [`handle_ref`],
//! [`required_str`], [`optional_str`], [`Out`], [`free_handle`]).
//!
//! The body of an exported function returns an [`Outcome`]: `Ok(status)` for a status that
//! is not a failure, `Err(Failed)` for one whose detail is already recorded as the
//! thread's last error. A [`Failed`] is only made by recording a detail, so no error
//! status reaches C without one.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use packet_ipc::libpcap::FilterError;
use packet_ipc::Error;

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
/// A pointer argument is NULL, a string is not UTF-8, a packet has `data == NULL` with
/// `caplen > 0`, an option is out of range (`pipc_subscriber_opts.wait`), or libpcap
/// rejects a filter expression (its message is in the detail).
pub const PIPC_ERR_INVALID_ARGUMENT: c_int = -1;
/// No `packet-ipcd` is running where the client looked (the detail names the
/// rendezvous file; see `PACKET_IPC_RUNTIME_DIR`).
pub const PIPC_ERR_NO_DAEMON: c_int = -2;
/// The daemon has no server of that name (the detail names it and lists the servers).
pub const PIPC_ERR_UNKNOWN_SERVER: c_int = -3;
/// This user may not use that server in that role (its producer or subscriber group).
pub const PIPC_ERR_PERMISSION_DENIED: c_int = -4;
/// The daemon refused the connection (for example: no producer slot free, or a subscriber
/// group name it does not accept).
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
/// `pipc_subscriber_connect_opts`, `pipc_subscriber_set_filter`: a filter was asked for,
/// but libpcap, which compiles filters and is loaded at run time, cannot be used: it is
/// not installed (the detail names the Debian package to install, `libpcap0.8`), too old,
/// or could not make a handle. Nothing was connected or changed. (Added with the filters,
/// after `PIPC_ERR_INTERNAL`, so that no earlier code changed.)
pub const PIPC_ERR_UNAVAILABLE: c_int = -14;

/// Every status code, with its `pipc_strerror` text: the one place they are listed.
pub(crate) const STATUS_TEXT: &[(c_int, &CStr)] = &[
    (PIPC_OK, c"success"),
    (PIPC_END, c"end of stream: the server is gone for good"),
    (PIPC_TIMEOUT, c"timed out"),
    (
        PIPC_ERR_INVALID_ARGUMENT,
        c"invalid argument (NULL pointer, bad value or bad filter expression)",
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
    (
        PIPC_ERR_UNAVAILABLE,
        c"libpcap is unavailable (it compiles the filters)",
    ),
];

/// The status code of a library error.
pub(crate) fn status_of(e: &Error) -> c_int {
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
        Error::Filter(FilterError::Invalid { .. }) => PIPC_ERR_INVALID_ARGUMENT,
        Error::Filter(FilterError::Libpcap(_) | FilterError::NoHandle { .. }) => {
            PIPC_ERR_UNAVAILABLE
        }
        _ => PIPC_ERR_INTERNAL,
    }
}

// ---------------------------------------------------------------------------------------
// The last error of each thread, and failures.

thread_local! {
    /// The detail of the last failure on this thread; what `pipc_last_error` returns.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// A failed call: its status (negative), with its detail recorded as the thread's last
/// error. Made only by [`fail`] and the functions built on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failed(pub(crate) c_int);

/// What the body of an exported function gives: a status that is not a failure
/// (`PIPC_OK`, `PIPC_END`, `PIPC_TIMEOUT`), or a failure.
pub(crate) type Outcome<T = c_int> = Result<T, Failed>;

/// Records `detail` as this thread's last error: a failure with `status`.
pub(crate) fn fail(status: c_int, detail: impl Into<String>) -> Failed {
    let mut text = detail.into().into_bytes();
    text.retain(|&b| b != 0);
    let text = CString::new(text).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down: nothing to keep then.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = Some(text));
    Failed(status)
}

/// Records a library error as this thread's last error: a failure with its status.
pub(crate) fn fail_with(e: &Error) -> Failed {
    fail(status_of(e), e.to_string())
}

/// Records a NULL argument as this thread's last error.
pub(crate) fn null(function: &str, argument: &str) -> Failed {
    fail(
        PIPC_ERR_INVALID_ARGUMENT,
        format!("{function}: {argument} is NULL"),
    )
}

/// Records a bad argument value as this thread's last error.
pub(crate) fn invalid(function: &str, why: impl std::fmt::Display) -> Failed {
    fail(PIPC_ERR_INVALID_ARGUMENT, format!("{function}: {why}"))
}

/// A library result as an [`Outcome`], its error recorded.
pub(crate) trait OrFail<T> {
    /// `Ok` as it is; an error recorded as the thread's last error, with its status.
    fn or_fail(self) -> Outcome<T>;
}

impl<T> OrFail<T> for packet_ipc::Result<T> {
    fn or_fail(self) -> Outcome<T> {
        self.map_err(|e| fail_with(&e))
    }
}

// ---------------------------------------------------------------------------------------
// No panic crosses into C.

/// The message of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs the body `f` of `function`, giving its status; a panic becomes
/// `PIPC_ERR_INTERNAL`: no unwinding crosses into C.
pub(crate) fn guard(function: &str, f: impl FnOnce() -> Outcome) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(status)) | Ok(Err(Failed(status))) => status,
        Err(payload) => {
            fail(
                PIPC_ERR_INTERNAL,
                format!("{function}: panic: {}", panic_text(&*payload)),
            )
            .0
        }
    }
}

/// Runs `f`, returning `fallback` if it panics (for the functions without a status).
pub(crate) fn guard_or<T>(function: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        fail(
            PIPC_ERR_INTERNAL,
            format!("{function}: panic: {}", panic_text(&*payload)),
        );
        fallback
    })
}

// ---------------------------------------------------------------------------------------
// Argument checks.

/// Borrows the handle `name` given by C to `function`, mutably; NULL fails with
/// `PIPC_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `ptr` is NULL or points to a live `T` that nothing else uses while the borrow lasts.
pub(crate) unsafe fn handle_mut<'a, T>(
    function: &str,
    name: &str,
    ptr: *mut T,
) -> Outcome<&'a mut T> {
    // SAFETY: NULL or a live, unshared `T`, per the caller's contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(function, name))
}

/// Borrows the handle `name` given by C to `function`; NULL fails with
/// `PIPC_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `ptr` is NULL or points to a live `T` that nothing changes while the borrow lasts.
pub(crate) unsafe fn handle_ref<'a, T>(
    function: &str,
    name: &str,
    ptr: *const T,
) -> Outcome<&'a T> {
    // SAFETY: NULL or a live `T`, per the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(function, name))
}

/// Reads the string argument `name` given by C to `function`: `None` for NULL; not UTF-8
/// fails with `PIPC_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `s` is NULL or points to a NUL-terminated string that outlives the borrow.
pub(crate) unsafe fn optional_str<'a>(
    function: &str,
    name: &str,
    s: *const c_char,
) -> Outcome<Option<&'a str>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str()
        .map(Some)
        .map_err(|_| invalid(function, format_args!("{name} is not valid UTF-8")))
}

/// Reads the string argument `name` given by C to `function`: NULL or not UTF-8 fails
/// with `PIPC_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// As [`optional_str`].
pub(crate) unsafe fn required_str<'a>(
    function: &str,
    name: &str,
    s: *const c_char,
) -> Outcome<&'a str> {
    // SAFETY: per the caller's contract.
    unsafe { optional_str(function, name, s) }?.ok_or_else(|| null(function, name))
}

/// Where a function hands C the handle it creates (`T **out`). Checked and set to NULL
/// first ([`Out::new`]), so that `*out` is NULL whatever fails afterwards.
pub(crate) struct Out<T>(*mut *mut T);

impl<T> Out<T> {
    /// Checks the argument `out` of `function` (NULL fails with
    /// `PIPC_ERR_INVALID_ARGUMENT`) and sets `*out` to NULL.
    ///
    /// # Safety
    ///
    /// `out` is NULL or points to storage for a pointer, writable until [`Out::put`] or
    /// the end of the call.
    pub(crate) unsafe fn new(function: &str, out: *mut *mut T) -> Outcome<Out<T>> {
        if out.is_null() {
            return Err(null(function, "out"));
        }
        // SAFETY: non-null and writable per the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        Ok(Out(out))
    }

    /// Hands `value` to C, boxed, through `*out` (C frees it with [`free_handle`]):
    /// `PIPC_OK`.
    pub(crate) fn put(self, value: T) -> c_int {
        // SAFETY: `self.0` was checked non-null and is writable, per `Out::new`'s contract.
        unsafe { self.0.write(Box::into_raw(Box::new(value))) };
        PIPC_OK
    }
}

/// Frees a handle that [`Out::put`] gave C: the body of the `_free` functions. NULL does
/// nothing; a panic while dropping is recorded, never unwound into C.
///
/// # Safety
///
/// `ptr` is NULL or a handle from [`Out::put`] not yet freed and used by nothing else.
pub(crate) unsafe fn free_handle<T>(function: &str, ptr: *mut T) {
    if ptr.is_null() {
        return;
    }
    guard_or(function, (), || {
        // SAFETY: from Box::into_raw in Out::put, freed once, per the caller's contract.
        drop(unsafe { Box::from_raw(ptr) });
    });
}

// ---------------------------------------------------------------------------------------
// The two functions of this module.

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
/// names (the server, the rendezvous file, the daemon's reason, libpcap's message...).
/// Returns an empty string (never NULL) when no call has failed on this thread.
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
