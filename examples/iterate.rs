//! Walks one batch of 256 packets of 64 bytes many times: a fixed workload for counting
//! the instructions the reader's walk costs per packet (`valgrind --tool=callgrind`).

use packet_ipc::batch::{encode, BatchView};
use packet_ipc::{AsIpcPacket, Packet};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let packets: Vec<Packet> = (0..256u64)
        .map(|i| Packet::new(packet_ipc::packet::time_from_nanos(i), vec![i as u8; 64]))
        .collect();
    let mut buf = Vec::new();
    encode(&packets, 0, 0, &mut buf).unwrap();
    let mut touched = 0u64;
    for _ in 0..rounds {
        let view = BatchView::unchecked(std::hint::black_box(&buf)).unwrap();
        for p in view.iter() {
            let d = p.data();
            touched = touched
                .wrapping_add(u64::from(d[0]) ^ u64::from(d[d.len() - 1]))
                .wrapping_add(p.timestamp_nanos());
        }
    }
    println!("{touched}");
}
