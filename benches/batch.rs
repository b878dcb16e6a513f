//! The batch wire format on its own, without any process boundary: encoding 256 packets
//! into a reused buffer, and checking then walking a batch in place.
//!
//! Run with `cargo bench --bench batch`. Throughput is in packets.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use packet_ipc::batch::{encode_into, encoded_len, BatchView};
use packet_ipc::{AsIpcPacket, Packet};

/// Packets per batch, as a capture loop would typically hand over.
const PACKETS: usize = 256;
/// Packet sizes measured: a minimal frame and a full Ethernet MTU.
const SIZES: [usize; 2] = [64, 1500];

fn packets(size: usize) -> Vec<Packet> {
    let now = SystemTime::now();
    (0..PACKETS)
        .map(|i| {
            let data = (0..size).map(|j| (i + j) as u8).collect();
            Packet::new(now, data)
        })
        .collect()
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for size in SIZES {
        let input = packets(size);
        let mut buf = vec![0u8; encoded_len(&input)];
        group.bench_with_input(BenchmarkId::new("256_packets", size), &input, |b, input| {
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                let n = encode_into(black_box(input), seq, 0, &mut buf).expect("batch fits");
                black_box(&buf[..n]);
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_iterate");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for size in SIZES {
        let input = packets(size);
        let mut buf = vec![0u8; encoded_len(&input)];
        encode_into(&input, 1, 0, &mut buf).expect("batch fits");
        group.bench_with_input(BenchmarkId::new("256_packets", size), &buf, |b, buf| {
            b.iter(|| {
                let view = BatchView::parse(black_box(buf)).expect("valid batch");
                for p in &view {
                    let data = p.data();
                    black_box(data.first());
                    black_box(data.last());
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode
}
criterion_main!(benches);
