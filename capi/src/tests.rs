//! The exported functions called from Rust: argument checks, status codes, last error.
//! (The C programs run against the built libraries in `tests/c_programs.rs`.)

use std::ffi::{c_int, CStr};
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use packet_ipc::broker::config::{self, Source};
use packet_ipc::broker::testing::InProcessDaemon;
use packet_ipc::libpcap::{FilterError, LibpcapError};
use packet_ipc::packet::time_from_nanos;
use packet_ipc::rendezvous::{Rendezvous, ServerEntry, RENDEZVOUS_VERSION};

use super::*;
use crate::producer::{recycle, SendPacket};
use crate::status::{fail_with, guard, guard_or, status_of, STATUS_TEXT};

fn last_error() -> String {
    // SAFETY: pipc_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(pipc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn strerror(status: c_int) -> String {
    // SAFETY: pipc_strerror returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(pipc_strerror(status)) }
        .to_string_lossy()
        .into_owned()
}

/// A pointer value no function may keep when it fails.
fn dangling<T>() -> *mut T {
    ptr::NonNull::dangling().as_ptr()
}

/// Held by the tests that read or change the environment (`PACKET_IPC_RENDEZVOUS`, which
/// the exported functions read to find the daemon).
static ENV: Mutex<()> = Mutex::new(());

/// The environment, for this test alone.
fn environment() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `packet-ipcd`'s code on its embedded default configuration (one server, `default`),
/// running in this process, and the environment pointing at it while this lives.
struct Daemon {
    daemon: Option<InProcessDaemon>,
    _env: MutexGuard<'static, ()>,
}

impl Daemon {
    fn start() -> Daemon {
        let env = environment();
        let config = config::load_with_env(&Source::Embedded, &[]).expect("the embedded default");
        let daemon = InProcessDaemon::start(Source::Embedded, config).expect("the daemon");
        std::env::set_var("PACKET_IPC_RENDEZVOUS", daemon.rendezvous());
        Daemon {
            daemon: Some(daemon),
            _env: env,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        std::env::remove_var("PACKET_IPC_RENDEZVOUS");
        if let Some(daemon) = self.daemon.take() {
            let stopped = daemon.stop();
            if !std::thread::panicking() {
                stopped.expect("the daemon stopped cleanly");
            }
        }
    }
}

/// A producer and a subscriber of `default`, connected through the C functions.
fn connect_both() -> (*mut pipc_producer, *mut pipc_subscriber) {
    let mut s: *mut pipc_subscriber = ptr::null_mut();
    let mut p: *mut pipc_producer = ptr::null_mut();
    // SAFETY: a valid server name and out slots.
    unsafe {
        let status = pipc_subscriber_connect(c"default".as_ptr(), &mut s);
        assert_eq!(status, PIPC_OK, "{}", last_error());
        let status = pipc_producer_connect(c"default".as_ptr(), &mut p);
        assert_eq!(status, PIPC_OK, "{}", last_error());
    }
    (p, s)
}

/// Sends `n` packets of 60 bytes as one batch, packet `i` holding `i` in its first byte.
fn send(p: *mut pipc_producer, n: u8) {
    let frames: Vec<[u8; 60]> = (0..n).map(|i| [i; 60]).collect();
    let packets: Vec<pipc_packet> = frames
        .iter()
        .map(|f| pipc_packet {
            ts_nanos: 1,
            caplen: 60,
            origlen: 60,
            data: f.as_ptr(),
        })
        .collect();
    // SAFETY: a live producer and `n` packets whose bytes live through the call.
    let status = unsafe { pipc_producer_send(p, packets.as_ptr(), packets.len()) };
    assert_eq!(status, PIPC_OK, "{}", last_error());
}

/// The next batch of `s`, within 10 seconds.
fn recv(s: *mut pipc_subscriber) -> *mut pipc_batch {
    let mut b: *mut pipc_batch = ptr::null_mut();
    // SAFETY: a live subscriber and an out slot.
    let status = unsafe { pipc_subscriber_recv(s, 10_000, &mut b) };
    assert_eq!(status, PIPC_OK, "{}", last_error());
    b
}

#[test]
fn null_pointers_are_rejected_with_a_status() {
    let server = c"default".as_ptr();
    // SAFETY: every pointer passed below is NULL, a valid string, or a valid out slot.
    unsafe {
        let mut producer: *mut pipc_producer = dangling();
        assert_eq!(
            pipc_producer_connect(ptr::null(), &mut producer),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(producer.is_null(), "*out is NULL after a failure");
        assert!(last_error().contains("server is NULL"), "{}", last_error());
        assert_eq!(
            pipc_producer_connect(server, ptr::null_mut()),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("out is NULL"), "{}", last_error());

        let packet = pipc_packet {
            ts_nanos: 1,
            caplen: 0,
            origlen: 0,
            data: ptr::null(),
        };
        assert_eq!(
            pipc_producer_send(ptr::null_mut(), &packet, 1),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("p is NULL"), "{}", last_error());

        let mut subscriber: *mut pipc_subscriber = dangling();
        assert_eq!(
            pipc_subscriber_connect(ptr::null(), &mut subscriber),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(subscriber.is_null());
        assert_eq!(
            pipc_subscriber_connect(server, ptr::null_mut()),
            PIPC_ERR_INVALID_ARGUMENT
        );

        let mut batch: *mut pipc_batch = dangling();
        assert_eq!(
            pipc_subscriber_recv(ptr::null_mut(), 0, &mut batch),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(batch.is_null());
        assert!(last_error().contains("s is NULL"), "{}", last_error());
        assert_eq!(
            pipc_subscriber_recv(dangling(), -1, ptr::null_mut()),
            PIPC_ERR_INVALID_ARGUMENT,
            "out is checked before the subscriber is touched"
        );

        let mut out = packet;
        assert_eq!(
            pipc_batch_get(ptr::null(), 0, &mut out),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(out.ts_nanos, 1, "*out is untouched");
        assert_eq!(pipc_batch_len(ptr::null()), 0);
        assert_eq!(pipc_batch_seq(ptr::null()), 0);
        assert_eq!(pipc_batch_lost(ptr::null()), 0);
    }
}

#[test]
fn free_accepts_null() {
    // SAFETY: NULL is accepted by every _free.
    unsafe {
        pipc_producer_free(ptr::null_mut());
        pipc_subscriber_free(ptr::null_mut());
        pipc_batch_free(ptr::null_mut());
    }
}

#[test]
fn every_status_has_its_own_text() {
    let codes: Vec<c_int> = STATUS_TEXT.iter().map(|(c, _)| *c).collect();
    // Success and the two non-errors are positive or zero, the errors negative and
    // numbered from -1 without holes.
    assert_eq!(&codes[..3], &[PIPC_OK, PIPC_END, PIPC_TIMEOUT]);
    const { assert!(PIPC_END > 0 && PIPC_TIMEOUT > 0) };
    let errors: Vec<c_int> = codes[3..].to_vec();
    let want: Vec<c_int> = (1..=errors.len() as c_int).map(|n| -n).collect();
    assert_eq!(errors, want);
    // Codes are only ever added, after the last one.
    assert_eq!(errors[12..], [PIPC_ERR_INTERNAL, PIPC_ERR_UNAVAILABLE]);
    let mut texts: Vec<String> = codes.iter().map(|&c| strerror(c)).collect();
    assert!(texts.iter().all(|t| !t.is_empty() && t != "unknown status"));
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), codes.len(), "two codes share a text");
    assert_eq!(strerror(-1000), "unknown status");
    assert_eq!(strerror(3), "unknown status");
}

#[test]
fn last_error_is_per_thread() {
    std::thread::spawn(|| {
        assert_eq!(last_error(), "", "no error yet on a new thread");
        // SAFETY: NULL is an accepted argument.
        let status = unsafe { pipc_producer_send(ptr::null_mut(), ptr::null(), 0) };
        assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT);
        let here = last_error();
        assert!(here.contains("pipc_producer_send"), "{here}");
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        assert_eq!(last_error(), here, "another thread left it alone");
    })
    .join()
    .unwrap();
}

#[test]
fn a_panic_becomes_an_internal_error() {
    std::thread::spawn(|| {
        let status = guard("pipc_test", || panic!("boom"));
        assert_eq!(status, PIPC_ERR_INTERNAL);
        assert_eq!(last_error(), "pipc_test: panic: boom");
        assert_eq!(guard_or("pipc_test", 7u64, || panic!("again")), 7);
        assert_eq!(last_error(), "pipc_test: panic: again");
    })
    .join()
    .unwrap();
}

#[test]
fn sending_reuses_its_scratch_vector() {
    let data = [1u8, 2, 3];
    let mut v: Vec<SendPacket<'_>> = Vec::with_capacity(64);
    v.push(SendPacket {
        ts: time_from_nanos(5),
        data: &data,
        orig_len: 3,
    });
    let ptr = v.as_ptr() as usize;
    let back = recycle(v);
    assert!(back.is_empty());
    assert_eq!(back.capacity(), 64);
    assert_eq!(back.as_ptr() as usize, ptr);
}

/// Connection failures, with the environment pointing at a rendezvous file this test
/// writes.
#[test]
fn connection_failures_name_what_is_wrong() {
    let _env = environment();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendezvous.json");
    std::env::set_var("PACKET_IPC_RENDEZVOUS", &path);
    let name = c"default".as_ptr();
    let mut producer: *mut pipc_producer = dangling();
    let mut subscriber: *mut pipc_subscriber = dangling();

    // No daemon: nothing at the rendezvous path.
    // SAFETY: valid string and out slots (also below).
    let status = unsafe { pipc_producer_connect(name, &mut producer) };
    assert_eq!(status, PIPC_ERR_NO_DAEMON, "{}", last_error());
    assert!(producer.is_null());
    assert!(
        last_error().contains(path.to_str().unwrap()),
        "the detail names the rendezvous file: {}",
        last_error()
    );
    // SAFETY: as above.
    let status = unsafe { pipc_subscriber_connect(name, &mut subscriber) };
    assert_eq!(status, PIPC_ERR_NO_DAEMON);
    assert!(subscriber.is_null());

    // A daemon (this process, as far as the file says) without that server.
    let spool = dir.path().join("srv");
    Rendezvous {
        version: RENDEZVOUS_VERSION,
        generation: 1,
        pid: std::process::id(),
        runtime_dir: dir.path().to_owned(),
        control: dir.path().join("ctl"),
        servers: vec![ServerEntry {
            name: "default".into(),
            linktype: 1,
            snaplen: 65535,
            overflow: "drop-oldest".into(),
            producers: spool.join("pub"),
            subscribers: spool.join("sub"),
            producer_group: None,
            subscriber_group: None,
        }],
        owner: 0,
    }
    .write(&path)
    .unwrap();
    // SAFETY: as above.
    let status = unsafe { pipc_subscriber_connect(c"capture9".as_ptr(), &mut subscriber) };
    assert_eq!(status, PIPC_ERR_UNKNOWN_SERVER, "{}", last_error());
    assert!(subscriber.is_null());
    let detail = last_error();
    assert!(
        detail.contains("capture9") && detail.contains("default"),
        "the detail names the server and those there are: {detail}"
    );
    // SAFETY: as above.
    let status = unsafe { pipc_producer_connect(c"capture9".as_ptr(), &mut producer) };
    assert_eq!(status, PIPC_ERR_UNKNOWN_SERVER);

    // A name that is not UTF-8.
    // SAFETY: as above.
    let status = unsafe { pipc_producer_connect(c"\xff\xfe".as_ptr(), &mut producer) };
    assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("UTF-8"), "{}", last_error());
    std::env::remove_var("PACKET_IPC_RENDEZVOUS");
}

#[test]
fn batches_reuse_one_vector_of_records() {
    let _daemon = Daemon::start();
    let (p, s) = connect_both();
    for n in [40, 30] {
        send(p, n);
    }
    // SAFETY: live handles, each freed once; packets read before their batch is freed.
    unsafe {
        let spares = || (*s).spares.lock().unwrap().len();
        let b = recv(s);
        assert_eq!(spares(), 0);
        assert_eq!(pipc_batch_len(b), 40);
        let mut packet = pipc_packet {
            ts_nanos: 0,
            caplen: 0,
            origlen: 0,
            data: ptr::null(),
        };
        for i in (0..40).rev() {
            assert_eq!(pipc_batch_get(b, i, &mut packet), PIPC_OK);
            assert_eq!((packet.caplen, *packet.data), (60, i as u8));
        }
        pipc_batch_free(b);
        assert_eq!(spares(), 1, "the batch gave its vector back");
        let first = (*s).spares.lock().unwrap()[0].as_ptr();

        let b = recv(s);
        assert_eq!(pipc_batch_get(b, 29, &mut packet), PIPC_OK);
        assert_eq!(*packet.data, 29);
        assert_eq!(spares(), 0, "the next batch took it");
        pipc_subscriber_free(s);
        assert_eq!(pipc_batch_len(b), 30, "a batch outlives its subscriber");
        let spares = std::sync::Arc::clone(&(*b).spares);
        pipc_batch_free(b);
        let back = spares.lock().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].as_ptr(),
            first,
            "the same vector, batch after batch"
        );
        pipc_producer_free(p);
    }
}

/// Options with every field set: a plain subscriber, no filter, adaptive waiting, no
/// reconnection.
fn plain_opts() -> pipc_subscriber_opts {
    pipc_subscriber_opts {
        group: ptr::null(),
        filter: ptr::null(),
        wait: PIPC_WAIT_ADAPTIVE,
        reconnect_wait_ms: 0,
    }
}

#[test]
fn new_functions_reject_null_pointers() {
    let opts = plain_opts();
    // SAFETY: every pointer passed below is NULL, a valid string, or a valid out slot.
    unsafe {
        let mut s: *mut pipc_subscriber = dangling();
        assert_eq!(
            pipc_subscriber_connect_opts(ptr::null(), &opts, &mut s),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert!(s.is_null(), "*out is NULL after a failure");
        assert!(last_error().contains("server is NULL"), "{}", last_error());
        assert_eq!(
            pipc_subscriber_connect_opts(c"default".as_ptr(), &opts, ptr::null_mut()),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_error(), "pipc_subscriber_connect_opts: out is NULL");

        assert_eq!(
            pipc_subscriber_set_filter(ptr::null_mut(), c"udp".as_ptr()),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_error(), "pipc_subscriber_set_filter: s is NULL");
        assert_eq!(
            pipc_subscriber_set_filter(ptr::null_mut(), ptr::null()),
            PIPC_ERR_INVALID_ARGUMENT,
            "NULL expr is allowed, a NULL subscriber is not"
        );

        assert_eq!(
            pipc_producer_report_source_drops(ptr::null_mut(), 5),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_error(), "pipc_producer_report_source_drops: p is NULL");

        assert_eq!(pipc_batch_reassigned(ptr::null()), 0);
        assert_eq!(pipc_batch_lost_packets(ptr::null()), 0);
    }
}

#[test]
fn bad_options_are_rejected_before_connecting() {
    // Nothing here reads the environment: the options are checked first.
    for wait in [3, -1, c_int::MAX, c_int::MIN] {
        let opts = pipc_subscriber_opts {
            wait,
            ..plain_opts()
        };
        let mut s: *mut pipc_subscriber = dangling();
        // SAFETY: valid options, server name and out slot.
        let status = unsafe { pipc_subscriber_connect_opts(c"default".as_ptr(), &opts, &mut s) };
        assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT, "wait {wait}");
        assert!(s.is_null());
        let detail = last_error();
        assert!(
            detail.starts_with("pipc_subscriber_connect_opts: opts->wait is ")
                && detail.contains(&wait.to_string())
                && detail.contains("PIPC_WAIT_PARK"),
            "{detail}"
        );
    }
    for (group, filter, name) in [
        (c"\xff".as_ptr(), ptr::null(), "opts->group"),
        (ptr::null(), c"udp \xfe".as_ptr(), "opts->filter"),
    ] {
        let opts = pipc_subscriber_opts {
            group,
            filter,
            ..plain_opts()
        };
        let mut s: *mut pipc_subscriber = dangling();
        // SAFETY: valid options, server name and out slot.
        let status = unsafe { pipc_subscriber_connect_opts(c"default".as_ptr(), &opts, &mut s) };
        assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT);
        assert!(s.is_null());
        assert_eq!(
            last_error(),
            format!("pipc_subscriber_connect_opts: {name} is not valid UTF-8")
        );
    }
}

#[test]
fn missing_libpcap_has_its_own_status_naming_the_package() {
    let missing = packet_ipc::Error::Filter(FilterError::Libpcap(LibpcapError::Missing(
        "libpcap.so.0.8: cannot open shared object file".into(),
    )));
    assert_eq!(status_of(&missing), PIPC_ERR_UNAVAILABLE);
    std::thread::spawn(move || {
        assert_eq!(fail_with(&missing).0, PIPC_ERR_UNAVAILABLE);
        assert!(last_error().contains("libpcap0.8"), "{}", last_error());
    })
    .join()
    .unwrap();
    let invalid = packet_ipc::Error::Filter(FilterError::Invalid {
        expr: "udp and".into(),
        message: "syntax error".into(),
    });
    assert_eq!(status_of(&invalid), PIPC_ERR_INVALID_ARGUMENT);
    assert!(strerror(PIPC_ERR_UNAVAILABLE).contains("libpcap"));
}

/// An Ethernet frame of IPv4 with a UDP (17) or TCP (6) header, flow `flow`, carrying `id`.
fn frame(proto: u8, flow: u16, id: u8) -> Vec<u8> {
    let l4 = if proto == 17 { 8 } else { 20 };
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + l4 + 1) as u16;
    f.extend([0x45, 0]);
    f.extend(total.to_be_bytes());
    f.extend([0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend((1000 + flow).to_be_bytes());
    f.extend(80u16.to_be_bytes());
    if proto == 17 {
        f.extend(((8 + 1) as u16).to_be_bytes());
        f.extend([0, 0]);
    } else {
        f.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    }
    f.push(id);
    f
}

/// Sends `frames` as one batch.
fn send_frames(p: *mut pipc_producer, frames: &[Vec<u8>]) {
    let packets: Vec<pipc_packet> = frames
        .iter()
        .map(|f| pipc_packet {
            ts_nanos: 1,
            caplen: f.len() as u32,
            origlen: f.len() as u32,
            data: f.as_ptr(),
        })
        .collect();
    // SAFETY: a live producer, and packets whose bytes live through the call.
    let status = unsafe { pipc_producer_send(p, packets.as_ptr(), packets.len()) };
    assert_eq!(status, PIPC_OK, "{}", last_error());
}

/// The ids (last byte) of the packets of the next batch of `s`.
fn recv_ids(s: *mut pipc_subscriber) -> Vec<u8> {
    let b = recv(s);
    let mut ids = Vec::new();
    // SAFETY: a live batch, read before it is freed.
    unsafe {
        for i in 0..pipc_batch_len(b) {
            let mut packet = pipc_packet {
                ts_nanos: 0,
                caplen: 0,
                origlen: 0,
                data: ptr::null(),
            };
            assert_eq!(pipc_batch_get(b, i, &mut packet), PIPC_OK);
            ids.push(*packet.data.add(packet.caplen as usize - 1));
        }
        pipc_batch_free(b);
    }
    ids
}

#[test]
fn bad_filters_are_invalid_arguments_with_libpcap_s_message() {
    let _daemon = Daemon::start();
    let bad = plain_opts();
    let bad = pipc_subscriber_opts {
        filter: c"udp and and".as_ptr(),
        ..bad
    };
    let mut s: *mut pipc_subscriber = dangling();
    // SAFETY: valid options, server name and out slot.
    let status = unsafe { pipc_subscriber_connect_opts(c"default".as_ptr(), &bad, &mut s) };
    assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT, "{}", last_error());
    assert!(s.is_null());
    let detail = last_error();
    assert!(
        detail.contains("udp and and") && detail.contains("syntax error"),
        "the expression and libpcap's message: {detail}"
    );

    // A filtered subscriber; a bad expression later changes nothing.
    let udp = pipc_subscriber_opts {
        filter: c"udp".as_ptr(),
        ..plain_opts()
    };
    // SAFETY: valid options, server name and out slot.
    let status = unsafe { pipc_subscriber_connect_opts(c"default".as_ptr(), &udp, &mut s) };
    assert_eq!(status, PIPC_OK, "{}", last_error());
    let mut p: *mut pipc_producer = ptr::null_mut();
    // SAFETY: a valid server name and out slot.
    let status = unsafe { pipc_producer_connect(c"default".as_ptr(), &mut p) };
    assert_eq!(status, PIPC_OK, "{}", last_error());
    let mixed: Vec<Vec<u8>> = (0..8)
        .map(|i| frame(if i % 2 == 0 { 17 } else { 6 }, i.into(), i))
        .collect();
    send_frames(p, &mixed);
    assert_eq!(recv_ids(s), [0, 2, 4, 6], "only UDP");
    // SAFETY: a live subscriber, NULL or valid strings.
    unsafe {
        let status = pipc_subscriber_set_filter(s, c"tcp port".as_ptr());
        assert_eq!(status, PIPC_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("tcp port"), "{}", last_error());
        assert_eq!(
            pipc_subscriber_set_filter(s, c"\xff".as_ptr()),
            PIPC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            last_error(),
            "pipc_subscriber_set_filter: expr is not valid UTF-8"
        );
    }
    send_frames(p, &mixed);
    assert_eq!(recv_ids(s), [0, 2, 4, 6], "still UDP only");
    // SAFETY: a live subscriber, valid strings or NULL.
    unsafe {
        assert_eq!(pipc_subscriber_set_filter(s, c"tcp".as_ptr()), PIPC_OK);
        send_frames(p, &mixed);
        assert_eq!(recv_ids(s), [1, 3, 5, 7], "TCP now");
        assert_eq!(pipc_subscriber_set_filter(s, ptr::null()), PIPC_OK);
        send_frames(p, &mixed);
        assert_eq!(recv_ids(s), [0, 1, 2, 3, 4, 5, 6, 7], "no filter");
        pipc_producer_free(p);
        pipc_subscriber_free(s);
    }
}
