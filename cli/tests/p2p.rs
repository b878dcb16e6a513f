//! The point-to-point API across real process boundaries.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::thread;

use futures::executor::block_on;
use packet_ipc::{Client, Error, Packet, Server, ServerOptions, TransferIpc, TransportError};

use crate::util::{
    assert_same_packets, packets, peer, read_batch_file, spawn_client, summary, wait_output,
    within, DEADLINE,
};

fn accept(server: Server) -> packet_ipc::ConnectedIpc {
    within(DEADLINE, move || server.accept().expect("accept"))
}

#[test]
fn one_batch_reaches_a_client_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.batch");
    let server = Server::new().unwrap();
    let child = spawn_client(server.name(), &["--out", out.to_str().unwrap()]);
    let mut conn = accept(server);
    let sent = packets(3, 200, 1);
    conn.send(&sent).unwrap();
    conn.close().unwrap();
    let output = wait_output(child, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    let s = summary(&output);
    assert_eq!(s["packets"], 3);
    assert_eq!(s["end"], "closed");
    assert_same_packets(&read_batch_file(&out), &sent);
}

#[test]
fn many_batches_inline_and_shared_reach_a_bounded_client_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.batch");
    let server = Server::new().unwrap();
    // A buffer of one batch: the client's reader thread waits for the consumer, the
    // socket fills, and the server is paced by the client.
    let child = spawn_client(
        server.name(),
        &["--buffer", "1", "--out", out.to_str().unwrap()],
    );
    let conn = accept(server);
    let mut all = Vec::new();
    for b in 0..300u64 {
        // Small batches travel inline, large ones (over the 16 KiB threshold) through
        // shared memory; alternating checks that order survives both paths.
        let batch = if b % 2 == 0 {
            packets(10, 100, b)
        } else {
            packets(256, 1500, b)
        };
        conn.send(&batch).unwrap();
        all.extend(batch);
    }
    drop(conn); // dropping closes the stream like close()
    let output = wait_output(child, DEADLINE);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(summary(&output)["packets"], all.len());
    assert_same_packets(&read_batch_file(&out), &all);
}

#[test]
fn recv_splits_a_large_batch() {
    let server = Server::new().unwrap();
    let child = spawn_client(server.name(), &["--recv", "64"]);
    let mut conn = accept(server);
    conn.send(&packets(1000, 64, 3)).unwrap();
    conn.close().unwrap();
    let s = summary(&wait_output(child, DEADLINE));
    assert_eq!(s["packets"], 1000);
    assert_eq!(s["max_recv"], 64);
    assert!(s["recv_calls"].as_u64().unwrap() >= 16, "{s}");
}

#[test]
fn a_client_whose_server_never_accepts_fails_within_its_timeout() {
    let server = Server::new().unwrap();
    let child = spawn_client(server.name(), &["--connect-timeout-ms", "300"]);
    let output = wait_output(child, DEADLINE);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("did not accept"), "{err}");
    drop(server);

    let child = spawn_client("/nonexistent/packet-ipc/socket", &[]);
    let output = wait_output(child, DEADLINE);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn a_server_whose_client_dies_gets_an_error() {
    let server = Server::new().unwrap();
    let mut child = spawn_client(server.name(), &["--buffer", "1"]);
    let conn = accept(server);
    let batch = packets(256, 1500, 4);
    conn.send(&batch).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let err = within(DEADLINE, move || loop {
        if let Err(e) = conn.send(&batch) {
            return e;
        }
    });
    assert!(
        matches!(err, Error::Transport(TransportError::Disconnected)),
        "{err:?}"
    );
}

#[test]
fn a_client_sees_a_server_that_dies_without_closing() {
    let mut server = peer()
        .args([
            "serve",
            "--batches",
            "100",
            "--packets",
            "256",
            "--size",
            "64",
        ])
        .args(["--abort-after", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut name = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut name)
        .unwrap();
    let (received, end) = within(DEADLINE, move || {
        let mut client = Client::new(name.trim()).unwrap();
        let mut received = 0;
        loop {
            match client.recv(1000) {
                Ok(Some(p)) => received += p.len(),
                Ok(None) => panic!("a crash is not a clean end"),
                Err(e) => {
                    let after = client.recv(1000).unwrap();
                    return (received, (e, after.is_none()));
                }
            }
        }
    });
    assert_eq!(
        received,
        10 * 256,
        "everything sent before the crash arrives"
    );
    assert!(
        matches!(end.0, Error::Transport(TransportError::Disconnected)),
        "{:?}",
        end.0
    );
    assert!(end.1, "after the error, recv returns None");
    assert_eq!(server.wait().unwrap().code(), Some(3));
}

#[test]
fn held_packets_stay_intact_when_every_segment_is_out() {
    // Two segments only: the client holds every packet, so after two shared batches the
    // server must fall back to inline rather than overwrite what the client still reads.
    let server = Server::with_options(ServerOptions {
        max_segments: 2,
        ..ServerOptions::default()
    })
    .unwrap();
    let name = server.name().clone();
    let client = thread::spawn(move || {
        let mut client = Client::new(name).unwrap();
        let mut held = Vec::new();
        while let Some(p) = client.recv(usize::MAX).unwrap() {
            held.extend(p);
        }
        held.iter().map(Packet::from_packet).collect::<Vec<_>>()
    });
    let mut conn = accept(server);
    let mut all = Vec::new();
    for b in 0..20 {
        let batch = packets(200, 1500, 100 + b);
        conn.send(&batch).unwrap();
        all.extend(batch);
    }
    conn.close().unwrap();
    let got = within(DEADLINE, move || client.join().unwrap());
    assert_same_packets(&got, &all);
}

#[test]
fn released_segments_are_reused() {
    // With one segment, a client that drops what it receives lets every large batch go
    // through shared memory; the data must still be right batch after batch.
    let server = Server::with_options(ServerOptions {
        max_segments: 1,
        ..ServerOptions::default()
    })
    .unwrap();
    let name = server.name().clone();
    let client = thread::spawn(move || {
        let mut client = Client::new_with_size(name, Some(1)).unwrap();
        let mut got = Vec::new();
        while let Some(p) = client.recv(usize::MAX).unwrap() {
            got.extend(p.iter().map(Packet::from_packet));
        }
        got
    });
    let mut conn = accept(server);
    let mut all = Vec::new();
    for b in 0..50 {
        let batch = packets(100, 1500, 200 + b);
        conn.send(&batch).unwrap();
        all.extend(batch);
    }
    conn.close().unwrap();
    assert_same_packets(&within(DEADLINE, move || client.join().unwrap()), &all);
}

#[test]
fn transfer_ipc_sends_a_stream_then_closes() {
    let server = Server::new().unwrap();
    let child = spawn_client(server.name(), &[]);
    let conn = block_on(server.accept_async()).unwrap();
    let batches: Vec<Vec<Packet>> = (0..25).map(|b| packets(40, 300, b)).collect();
    let sent = block_on(futures::stream::iter(batches).transfer_ipc(conn)).unwrap();
    assert_eq!(sent, 1000);
    let s = summary(&wait_output(child, DEADLINE));
    assert_eq!(s["packets"], 1000);
    assert_eq!(s["end"], "closed");
}

#[test]
fn sending_after_close_is_an_error() {
    let server = Server::new().unwrap();
    let child = spawn_client(server.name(), &[]);
    let mut conn = accept(server);
    conn.close().unwrap();
    let err = conn.send(&packets(1, 10, 0)).unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Closed)),
        "{err:?}"
    );
    assert_eq!(summary(&wait_output(child, DEADLINE))["packets"], 0);
}
