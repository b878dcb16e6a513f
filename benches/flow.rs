//! The flow hash on its own: [`packet_ipc::flow::hash`] over a mix of 256 Ethernet
//! frames (IPv4 and IPv6, TCP and UDP, a quarter of them behind a VLAN tag), as a
//! producer would compute it per packet while the bytes are hot.
//!
//! Run with `cargo bench --bench flow`. Throughput is in packets; the time per packet is
//! the time per iteration divided by 256.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use packet_ipc::flow::{hash, Balance};

/// Frames per iteration.
const FRAMES: usize = 256;

/// A reproducible mix of frames: IPv4/IPv6 × TCP/UDP in turn, varied addresses and ports,
/// every fourth frame 802.1Q-tagged, 64 to 1500 bytes.
fn frames() -> Vec<Vec<u8>> {
    let mut state = 0x5EED_u64;
    (0..FRAMES)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = state;
            let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
            if i % 4 == 3 {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
            }
            let protocol = if i % 2 == 0 { 6u8 } else { 17 };
            let l4_len = if protocol == 6 { 20 } else { 8 };
            let mut l4 = vec![0u8; l4_len];
            l4[..2].copy_from_slice(&((r >> 16) as u16 | 1024).to_be_bytes());
            l4[2..4].copy_from_slice(&[443u16, 80, 53, 8080][(r >> 40) as usize % 4].to_be_bytes());
            if (i / 2) % 2 == 0 {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
                ip.extend_from_slice(&(r as u32).to_be_bytes());
                ip.extend_from_slice(&((r >> 32) as u32).to_be_bytes());
                f.extend_from_slice(&ip);
            } else {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                let mut ip = vec![0x60, 0, 0, 0, 0, 0, protocol, 64];
                ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0]);
                ip.extend_from_slice(&r.to_be_bytes());
                ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1]);
                ip.extend_from_slice(&r.rotate_left(17).to_be_bytes());
                f.extend_from_slice(&ip);
            }
            f.extend_from_slice(&l4);
            let size = [64, 128, 576, 1500][(r >> 50) as usize % 4];
            f.resize(size.max(f.len()), 0);
            f
        })
        .collect()
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn flow_hash(c: &mut Criterion) {
    let frames = frames();
    let mut group = c.benchmark_group("flow_hash");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (name, balance) in [
        ("flow_256_frames", Balance::Flow),
        ("ip_pair_256_frames", Balance::IpPair),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for frame in black_box(&frames) {
                    acc = acc.wrapping_add(hash(1, frame, balance));
                }
                black_box(acc)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = flow_hash
}
criterion_main!(benches);
