//! `pipc_packet`: one packet, as producers send it and batches give it.

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
