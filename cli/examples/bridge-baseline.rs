//! The baseline of `packet-ipc bridge export`'s figures: a plain async-nats JetStream
//! publisher, and the captures the measurement feeds the bridge with.
//!
//! ```text
//! bridge-baseline publish URL STREAM SUBJECT SIZE MESSAGES [WINDOW]
//!     publishes MESSAGES messages of SIZE bytes (prepared once), at most WINDOW (64)
//!     awaiting their acknowledgement, to a file stream it creates; prints messages/s
//!     and MB/s as JSON
//! bridge-baseline pcap FILE PACKET_SIZE COUNT
//!     writes a pcap (Ethernet, nanoseconds) of COUNT packets of PACKET_SIZE bytes
//! ```
//!
//! The README's "Beyond one host" section gives the commands and the figures.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let num = |i: usize| -> usize { arg(i).parse().unwrap_or_else(|_| usage()) };
    match arg(0) {
        "publish" => {
            let window = args.get(6).map_or(64, |_| num(6));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(publish(arg(1), arg(2), arg(3), num(4), num(5), window));
        }
        "pcap" => pcap(arg(1), num(2), num(3)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bridge-baseline publish URL STREAM SUBJECT SIZE MESSAGES [WINDOW]\n       \
         bridge-baseline pcap FILE PACKET_SIZE COUNT"
    );
    std::process::exit(64)
}

async fn publish(url: &str, name: &str, subject: &str, size: usize, count: usize, window: usize) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the stream");
    let payload = bytes::Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
    let started = Instant::now();
    let mut inflight = VecDeque::new();
    for i in 0..count {
        if inflight.len() >= window {
            let ack: jetstream::context::PublishAckFuture =
                inflight.pop_front().expect("in flight");
            ack.await.expect("stored");
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("baseline/{i}"));
        inflight.push_back(
            js.send_publish(subject.to_owned(), message)
                .await
                .expect("publish"),
        );
    }
    for ack in inflight {
        ack.await.expect("stored");
    }
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_nanos(1).as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "messages": count,
            "message_bytes": size,
            "seconds": secs,
            "messages_per_second": count as f64 / secs,
            "megabytes_per_second": (count * size) as f64 / secs / 1e6,
        })
    );
    let _ = js.delete_stream(name).await;
}

fn pcap(path: &str, size: usize, count: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create the pcap"));
    let mut header = Vec::new();
    header.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    out.write_all(&header).expect("write");
    for i in 0..count {
        let ts = 1_700_000_000_000_000_000u64 + i as u64 * 1000;
        let mut record = Vec::with_capacity(16 + size);
        record.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&(size as u32).to_le_bytes());
        record.extend_from_slice(&(size as u32).to_le_bytes());
        record.extend((0..size).map(|k| (k ^ i) as u8));
        out.write_all(&record).expect("write");
    }
    out.flush().expect("write");
}
