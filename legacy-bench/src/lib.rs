//! Benchmarks of packet-ipc next to the original packet-ipc 0.15 crate (see `benches/`).
