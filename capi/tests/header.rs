//! The committed header `include/packet_ipc.h` is what cbindgen generates from `src/`
//! (`lib.rs` and the modules it declares) with `cbindgen.toml`. CI runs this test, so a
//! stale header fails the build.
//!
//! To update the header after changing the API:
//!
//! ```sh
//! PIPC_UPDATE_HEADER=1 cargo test -p packet-ipc-capi --test header
//! ```

use std::path::Path;

/// Generates the header from the crate's source.
fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // `with_src` reads lib.rs (and the modules it declares) without running cargo, which
    // a test must not do while cargo holds the build lock.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_path = dir.join("include/packet_ipc.h");
    let generated = generate();
    if std::env::var_os("PIPC_UPDATE_HEADER").is_some() {
        std::fs::write(&committed_path, &generated).expect("write include/packet_ipc.h");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != generated {
        let fresh = std::env::temp_dir().join(format!("packet_ipc.{}.h", std::process::id()));
        std::fs::write(&fresh, &generated).expect("write the generated header");
        panic!(
            "capi/include/packet_ipc.h is not what cbindgen generates from capi/src/.\n\
             See the difference:  diff -u {} {}\n\
             Update it:           PIPC_UPDATE_HEADER=1 cargo test -p packet-ipc-capi --test header",
            committed_path.display(),
            fresh.display()
        );
    }
}

#[test]
fn header_declares_the_contract() {
    let header = generate();
    // cbindgen (style "both": a tag and a typedef for each struct) names the structs with
    // their tag in prototypes, `struct pipc_producer **out`: the same type as the contract's
    // `pipc_producer **out`. Compared without it; the typedefs are checked as they are.
    // Whitespace runs are compared as one space: cbindgen wraps long prototypes.
    let plain = header
        .replace("struct pipc_", "pipc_")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(");
    for typedef in [
        "typedef struct pipc_producer pipc_producer;",
        "typedef struct pipc_subscriber pipc_subscriber;",
        "typedef struct pipc_batch pipc_batch;",
        "typedef struct pipc_packet {",
        "} pipc_packet;",
        "typedef struct pipc_subscriber_opts {",
        "} pipc_subscriber_opts;",
    ] {
        assert!(
            header.contains(typedef),
            "the header lacks `{typedef}`:\n{header}"
        );
    }
    // The C API's contract, as it must read in C (cbindgen's spacing).
    for line in [
        "#define PIPC_OK 0",
        "const char *pipc_strerror(int status);",
        "const char *pipc_last_error(void);",
        "int pipc_producer_connect(const char *server, pipc_producer **out);",
        "int pipc_producer_send(pipc_producer *p, const pipc_packet *packets, size_t count);",
        "void pipc_producer_free(pipc_producer *p);",
        "int pipc_subscriber_connect(const char *server, pipc_subscriber **out);",
        "int pipc_subscriber_recv(pipc_subscriber *s, int timeout_ms, pipc_batch **out);",
        "void pipc_subscriber_free(pipc_subscriber *s);",
        "size_t pipc_batch_len(const pipc_batch *b);",
        "int pipc_batch_get(const pipc_batch *b, size_t i, pipc_packet *out);",
        "uint64_t pipc_batch_seq(const pipc_batch *b);",
        "uint64_t pipc_batch_lost(const pipc_batch *b);",
        "void pipc_batch_free(pipc_batch *b);",
        // Added with the broker on rings: options, filters, groups, source drops.
        "#define PIPC_ERR_UNAVAILABLE -14",
        "#define PIPC_WAIT_ADAPTIVE 0",
        "#define PIPC_WAIT_SPIN 1",
        "#define PIPC_WAIT_PARK 2",
        "int pipc_subscriber_connect_opts(const char *server, const pipc_subscriber_opts *opts, \
         pipc_subscriber **out);",
        "int pipc_subscriber_set_filter(pipc_subscriber *s, const char *expr);",
        "int pipc_producer_report_source_drops(pipc_producer *p, uint64_t total);",
        "int pipc_batch_reassigned(const pipc_batch *b);",
        "uint64_t pipc_batch_lost_packets(const pipc_batch *b);",
    ] {
        assert!(plain.contains(line), "the header lacks `{line}`:\n{header}");
    }
    for field in [
        "uint64_t ts_nanos;",
        "uint32_t caplen;",
        "uint32_t origlen;",
        "const uint8_t *data;",
        "const char *group;",
        "const char *filter;",
        "int wait;",
        "int reconnect_wait_ms;",
    ] {
        assert!(header.contains(field), "a struct lacks `{field}`");
    }
    assert!(
        header.contains("pcap_pkthdr"),
        "the pcap mapping is documented"
    );
}
