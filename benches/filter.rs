//! The cost per packet of a tcpdump filter matched in this process
//! ([`packet_ipc::libpcap::Filter::matches`]: machine code with the default feature `jit`,
//! the crate's interpreter with `--no-default-features`; each case also in libpcap's
//! interpreter, `_libpcap`): `tcp port 443`
//! on 64-byte Ethernet frames, one that passes (TCP to port 443) and two that do not
//! (TCP to port 80, UDP).
//!
//! Run with `cargo bench -p packet-ipc --bench filter` (`-p`: otherwise the CLI's
//! dependency turns `jit` back on). Needs libpcap at run time
//! (`apt-get install libpcap0.8`); without it the bench prints one `skipped:` line.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use packet_ipc::libpcap::{Filter, FilterError};

const EXPR: &str = "tcp port 443";
const FRAME: usize = 64;

/// A 64-byte Ethernet frame: IPv4, then a TCP (6) or UDP (17) header to `dst_port`,
/// padded with zeros.
fn frame(protocol: u8, dst_port: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let l4 = if protocol == 6 { 20 } else { 8 };
    let total = (20 + l4) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.resize(FRAME, 0);
    if protocol == 6 {
        f[14 + 20 + 12] = 0x50; // data offset: 5 words
    }
    f
}

fn bench(c: &mut Criterion, filter: &Filter) {
    let mut group = c.benchmark_group("filter_tcp_port_443");
    group.throughput(Throughput::Elements(1));
    for (name, data) in [
        ("tcp_443_match", frame(6, 443)),
        ("tcp_80_miss", frame(6, 80)),
        ("udp_miss", frame(17, 443)),
    ] {
        let expected = name.ends_with("match");
        assert_eq!(filter.matches(0, &data, FRAME as u32), expected, "{name}");
        assert_eq!(filter.matches_in_libpcap(0, &data, FRAME as u32), expected);
        group.bench_with_input(BenchmarkId::new(name, FRAME), &data, |b, data| {
            b.iter(|| filter.matches(0, black_box(data), FRAME as u32))
        });
        group.bench_with_input(
            BenchmarkId::new(format!("{name}_libpcap"), FRAME),
            &data,
            |b, data| b.iter(|| filter.matches_in_libpcap(0, black_box(data), FRAME as u32)),
        );
    }
    // A mix in an order nobody can predict: what a subscriber sees.
    let mut mix = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let protocol = if x & 1 == 0 { 6 } else { 17 };
        let port = if x & 6 == 0 {
            443
        } else {
            1024 + (x >> 40) as u16 % 4096
        };
        mix.push(frame(protocol, port));
    }
    let matches = mix
        .iter()
        .filter(|f| filter.matches(0, f, FRAME as u32))
        .count();
    let oracle = mix
        .iter()
        .filter(|f| filter.matches_in_libpcap(0, f, FRAME as u32))
        .count();
    assert_eq!(matches, oracle);
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("mixed", |b| {
        b.iter(|| {
            mix.iter()
                .filter(|f| filter.matches(0, black_box(f), FRAME as u32))
                .count()
        })
    });
    group.bench_function("mixed_libpcap", |b| {
        b.iter(|| {
            mix.iter()
                .filter(|f| filter.matches_in_libpcap(0, black_box(f), FRAME as u32))
                .count()
        })
    });
    group.finish();
}

fn main() {
    let filter = match Filter::compile(EXPR, 1, 65535) {
        Ok(filter) => filter,
        Err(FilterError::Libpcap(e)) => {
            println!("skipped: filter bench: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, &filter);
    c.final_summary();
}
