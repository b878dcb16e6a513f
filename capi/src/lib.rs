//! The C API of packet-ipc: `libpacket_ipc.so` and `libpacket_ipc.a`, declared by the
//! generated header `capi/include/packet_ipc.h` (committed; `capi/tests/header.rs` checks
//! that it is current and that it declares the C API's contract as C programs use it).
//!
//! Every exported function checks its pointers, returns a status (or a neutral value for
//! the getters and `_free` functions), and catches panics, so that no unwinding ever
//! crosses into C. The detail of the last failure on a thread is kept in a thread-local
//! string, [`pipc_last_error`].
//!
//! One module per object of the API:
//!
//! - `status`: the status codes and their texts, `pipc_strerror`, `pipc_last_error`,
//!   and the helpers every exported function is written with (the panic guard, the
//!   argument checks);
//! - `packet`: `pipc_packet`;
//! - `producer`: `pipc_producer` and its functions;
//! - `subscriber`: `pipc_subscriber`, its options and its functions;
//! - `batch`: `pipc_batch` and its functions.
//!
//! cbindgen reads this file and the modules it declares, in this order, which is the
//! order of the header's declarations. The header's opening comment (thread safety,
//! status codes, the pcap mapping) lives in `capi/cbindgen.toml`. `tests/header.rs`
//! regenerates the header and fails when the committed one differs.
#![expect(
    non_camel_case_types,
    reason = "the C types are named as C programs know them: pipc_producer, pipc_batch..."
)]

mod status;

mod packet;

mod producer;

mod subscriber;

mod batch;

pub use batch::{
    pipc_batch, pipc_batch_free, pipc_batch_get, pipc_batch_len, pipc_batch_lost,
    pipc_batch_lost_packets, pipc_batch_reassigned, pipc_batch_seq,
};
pub use packet::pipc_packet;
pub use producer::{
    pipc_producer, pipc_producer_connect, pipc_producer_free, pipc_producer_report_source_drops,
    pipc_producer_send,
};
pub use status::{
    pipc_last_error, pipc_strerror, PIPC_END, PIPC_ERR_BAD_BATCH, PIPC_ERR_BATCH_TOO_LARGE,
    PIPC_ERR_DISCONNECTED, PIPC_ERR_INTERNAL, PIPC_ERR_INVALID_ARGUMENT, PIPC_ERR_IO,
    PIPC_ERR_NO_ANSWER, PIPC_ERR_NO_DAEMON, PIPC_ERR_OUT_OF_RANGE, PIPC_ERR_PERMISSION_DENIED,
    PIPC_ERR_REFUSED, PIPC_ERR_SERVER_GONE, PIPC_ERR_UNAVAILABLE, PIPC_ERR_UNKNOWN_SERVER, PIPC_OK,
    PIPC_TIMEOUT,
};
pub use subscriber::{
    pipc_subscriber, pipc_subscriber_connect, pipc_subscriber_connect_opts, pipc_subscriber_free,
    pipc_subscriber_opts, pipc_subscriber_recv, pipc_subscriber_set_filter, PIPC_WAIT_ADAPTIVE,
    PIPC_WAIT_PARK, PIPC_WAIT_SPIN,
};

#[cfg(test)]
mod tests;
