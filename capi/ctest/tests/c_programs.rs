//! The C API from C: the examples and a C test program, compiled with the system C
//! compiler against the libraries cargo just built, run against a real daemon.
//!
//! How it fits in `cargo test --workspace` without a recursive cargo: this package
//! depends on `packet-ipc-capi`, so cargo builds `libpacket_ipc.so` and `libpacket_ipc.a`
//! (into `target/<profile>/deps/`, beside this test's executable) before it compiles this
//! file. (An integration test inside `capi/` would not do: cargo builds a package's own
//! library for its tests only when it is linkable, and ours is cdylib + staticlib only.)
//! The test then installs them as the README says, into a temporary prefix (libraries,
//! header, `packet_ipc.pc` from `packet_ipc.pc.in`), compiles every program with
//! `cc -Wall -Wextra -Werror $(pkg-config --cflags --libs packet_ipc)`, and runs them
//! against `packet-ipcd`'s own code (`packet_ipc::broker::daemon::run`, what the binary's
//! thin main runs), started in this process on a temporary runtime directory: the C
//! programs are separate processes that find it through `PACKET_IPC_RENDEZVOUS`.
//!
//! Needs, besides a Rust toolchain: a C compiler, pkg-config, libpcap's headers, valgrind
//! and tshark (Debian: `gcc libc6-dev pkg-config libpcap-dev valgrind tshark`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use packet_ipc::broker::config::{self, Source};
use packet_ipc::broker::testing::InProcessDaemon;

/// Generous deadline for one program, valgrind included, on a loaded 2-core machine: a
/// hang fails the test instead of stalling CI.
const DEADLINE: Duration = Duration::from_secs(180);

/// The Debian packages this test needs, for the error messages.
const PACKAGES: &str = "gcc libc6-dev pkg-config libpcap-dev valgrind tshark";

/// `capi/ctest/`: the C test program and the valgrind suppressions.
fn ctest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `capi/`: the header, the examples and the pkg-config template.
fn capi_dir() -> PathBuf {
    ctest_dir().parent().expect("capi/").to_owned()
}

/// Runs a command to its end (failing the test after [`DEADLINE`]).
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (CI installs: {PACKAGES})"));
    wait_output(child, &shown)
}

/// Waits for a child and collects its output, killing it after [`DEADLINE`].
fn wait_output(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait for a child").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect its output");
            panic!(
                "{what} still running after {DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect a child's output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Install and compile, once for all the tests.

/// The libraries installed in a temporary prefix, and the programs compiled against them.
struct Built {
    /// `lib/`, `include/`, `lib/pkgconfig/`, `bin/`.
    prefix: tempfile::TempDir,
}

impl Built {
    fn bin(&self, name: &str) -> PathBuf {
        self.prefix.path().join("bin").join(name)
    }
}

/// Where cargo put this package's libraries for this run: beside this test executable.
fn built_libraries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let deps = exe.parent().expect("the test's directory").to_owned();
    for lib in ["libpacket_ipc.so", "libpacket_ipc.a"] {
        assert!(
            deps.join(lib).exists(),
            "{lib} is not in {} (cargo builds it before this test)",
            deps.display()
        );
    }
    deps
}

/// `pkg-config ARGS packet_ipc` against the temporary prefix.
fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(args)
        .arg("packet_ipc"));
    assert_success(&out, "pkg-config");
    text(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Compiles one C program with warnings as errors.
fn compile(prefix: &Path, source: &Path, out: &Path, flags: &[String], extra: &[&str]) {
    let output = run(Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-g", "-O1", "-pthread"])
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(flags)
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .args(extra));
    assert_success(&output, &format!("cc {}", source.display()));
}

fn build() -> Built {
    let deps = built_libraries();
    let prefix = tempfile::Builder::new()
        .prefix("pipc-capi-prefix")
        .tempdir()
        .expect("a temporary prefix");
    let p = prefix.path();
    for dir in ["lib/pkgconfig", "include", "bin"] {
        std::fs::create_dir_all(p.join(dir)).expect("prefix directories");
    }
    // The README's install recipe, into the temporary prefix.
    for lib in ["libpacket_ipc.so", "libpacket_ipc.a"] {
        std::os::unix::fs::symlink(deps.join(lib), p.join("lib").join(lib)).expect("link");
    }
    std::fs::copy(
        capi_dir().join("include/packet_ipc.h"),
        p.join("include/packet_ipc.h"),
    )
    .expect("install the header");
    let pc = std::fs::read_to_string(capi_dir().join("packet_ipc.pc.in"))
        .expect("packet_ipc.pc.in")
        .replace("@PREFIX@", p.to_str().expect("a UTF-8 temporary path"))
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(p.join("lib/pkgconfig/packet_ipc.pc"), pc).expect("install the .pc");

    let version = pkg_config(p, &["--modversion"]);
    assert_eq!(version, [env!("CARGO_PKG_VERSION")]);
    let flags = pkg_config(p, &["--cflags", "--libs"]);
    let examples = capi_dir().join("examples");
    compile(
        p,
        &examples.join("producer.c"),
        &p.join("bin/producer"),
        &flags,
        &[],
    );
    compile(
        p,
        &examples.join("subscriber.c"),
        &p.join("bin/subscriber"),
        &flags,
        &["-lpcap"],
    );
    let api_test = ctest_dir().join("c/api_test.c");
    compile(p, &api_test, &p.join("bin/api_test"), &flags, &[]);

    // Static: the archive itself, then what it needs (Libs.private).
    let cflags = pkg_config(p, &["--cflags"]);
    let private: Vec<String> = pkg_config(p, &["--static", "--libs-only-l"])
        .into_iter()
        .filter(|l| l != "-lpacket_ipc")
        .collect();
    let output = run(Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-pthread"])
        .arg(&api_test)
        .arg("-o")
        .arg(p.join("bin/api_test_static"))
        .args(&cflags)
        .arg(p.join("lib/libpacket_ipc.a"))
        .args(&private));
    assert_success(&output, "cc api_test.c with libpacket_ipc.a");
    for program in ["producer", "subscriber", "api_test"] {
        let ldd = run(c_program("ldd").arg(p.join("bin").join(program)));
        let want = format!(
            "libpacket_ipc.so => {}",
            p.join("lib/libpacket_ipc.so").display()
        );
        assert!(
            text(&ldd.stdout).contains(&want),
            "{program} does not load the library just built: {}",
            text(&ldd.stdout)
        );
    }
    Built { prefix }
}

/// A command running a program compiled here: without cargo's `LD_LIBRARY_PATH`, which
/// lists `target/<profile>/` (where an older `libpacket_ipc.so` may lie, from a
/// `cargo build -p packet-ipc-capi`) and would win over the programs' RUNPATH.
fn c_program(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

/// The programs, compiled once for all the tests of this file.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(build)
}

// ---------------------------------------------------------------------------------------
// The daemon.

/// `SOURCE_DROPS` of `c/api_test.c`: what its producer reports last.
const API_TEST_SOURCE_DROPS: u64 = 1234;

/// The overrides of the test daemon's configuration, as `PACKET_IPC__` variables.
///
/// Valgrind maps no single region of 64 GiB or more, and about 120 GiB in all: the
/// embedded default's server (64 subscribers) gives each producer a pool of 64 GiB of
/// address space (4096 slots of 16 MiB), which every client maps. With 8 subscribers at
/// most, a pool is 776 slots (12 GiB): a program under valgrind can map a few. Everything
/// else is the default (`max-batch-bytes` of 16 MiB, `snaplen` 65535, `group-balance =
/// "flow"`), which `c/api_test.c` relies on.
const TEST_SHAPE: &[(&str, &str)] = &[("PACKET_IPC__SERVERS__DEFAULT__MAX_SUBSCRIBERS", "8")];

/// `packet-ipcd`'s code on the embedded default configuration (one server, `default`,
/// shaped by [`TEST_SHAPE`]), running on a thread of this process in a temporary runtime
/// directory.
struct Daemon(InProcessDaemon);

impl Daemon {
    fn start() -> Daemon {
        let env: Vec<(String, String)> = TEST_SHAPE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let config = config::load_with_env(&Source::Embedded, &env).expect("the embedded default");
        Daemon(InProcessDaemon::start(Source::Embedded, config).expect("the daemon"))
    }

    /// Checks the daemon's stats once `c/api_test.c` is done: the source drops its
    /// producer reported (the last running total, `SOURCE_DROPS` there) are counted for
    /// the server, that producer gone.
    fn assert_source_drops_of_api_test(&self) {
        let stats = packet_ipc::stats(&self.0.options(), Some("default")).expect("the stats");
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(
            stats[0].source_dropped, API_TEST_SOURCE_DROPS,
            "{:?}",
            stats[0]
        );
    }

    /// Stops the daemon; fails the test if it stopped with an error.
    fn stop(self) {
        self.0.stop().expect("the daemon stopped cleanly");
    }

    /// `program` with this daemon in its environment.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = c_program(program);
        cmd.env("PACKET_IPC_RENDEZVOUS", self.0.rendezvous());
        cmd
    }

    /// `program ARGS` under valgrind: any memory error, or any leak that is definite or
    /// indirect, fails it with exit status 99.
    fn valgrind(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command("valgrind");
        cmd.args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
        ])
        .arg(format!(
            "--suppressions={}",
            ctest_dir().join("valgrind.supp").display()
        ))
        .arg(program)
        .args(args);
        cmd
    }
}

/// The valgrind summary lines of a run, for the test's output.
fn valgrind_summary(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| {
            l.contains("definitely lost")
                || l.contains("indirectly lost")
                || l.contains("ERROR SUMMARY")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn header_compiles_alone_in_strict_c_and_cpp() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = dir.path().join("only_header.c");
    // Every type usable without `struct`, every declaration with its exact C type.
    std::fs::write(
        &source,
        "#include <packet_ipc.h>\n\
         static int (*const connect_p)(const char *, pipc_producer **) = pipc_producer_connect;\n\
         static int (*const send)(pipc_producer *, const pipc_packet *, size_t) = pipc_producer_send;\n\
         static int (*const recv)(pipc_subscriber *, int, pipc_batch **) = pipc_subscriber_recv;\n\
         static int (*const get)(const pipc_batch *, size_t, pipc_packet *) = pipc_batch_get;\n\
         static uint64_t (*const seq)(const pipc_batch *) = pipc_batch_seq;\n\
         static int (*const connect_o)(const char *, const pipc_subscriber_opts *,\n\
                                       pipc_subscriber **) = pipc_subscriber_connect_opts;\n\
         static int (*const filter)(pipc_subscriber *, const char *) = pipc_subscriber_set_filter;\n\
         static int (*const drops)(pipc_producer *, uint64_t) = pipc_producer_report_source_drops;\n\
         static int (*const moved)(const pipc_batch *) = pipc_batch_reassigned;\n\
         static uint64_t (*const lostp)(const pipc_batch *) = pipc_batch_lost_packets;\n\
         int main(void) {\n\
           pipc_packet p = {0, 0, 0, 0};\n\
           pipc_subscriber_opts o = {0, 0, PIPC_WAIT_ADAPTIVE, -1};\n\
           (void)connect_p; (void)send; (void)recv; (void)get; (void)seq;\n\
           (void)connect_o; (void)filter; (void)drops; (void)moved; (void)lostp;\n\
           return (int)p.caplen + o.wait + (PIPC_OK == 0 && PIPC_END > 0 && PIPC_TIMEOUT > 0 \n\
                                   && PIPC_ERR_INVALID_ARGUMENT < 0 \n\
                                   && PIPC_ERR_UNAVAILABLE < 0 && PIPC_WAIT_SPIN != PIPC_WAIT_PARK ? 0 : 1);\n\
         }\n",
    )
    .expect("write the test source");
    let include = capi_dir().join("include");
    for (compiler, lang, std) in [
        ("cc", "c", "-std=c99"),
        ("cc", "c", "-std=c11"),
        ("c++", "c++", "-std=c++11"),
    ] {
        if compiler == "c++" && Command::new("c++").arg("--version").output().is_err() {
            eprintln!("no C++ compiler: the header's C++ guards are not checked");
            continue;
        }
        let out = run(Command::new(compiler)
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only"])
            .args(["-x", lang, std])
            .arg("-I")
            .arg(&include)
            .arg(&source));
        assert_success(&out, &format!("{compiler} {std} on the header"));
    }
}

#[test]
fn c_test_program_under_valgrind() {
    let built = built();
    let daemon = Daemon::start();
    let out = run(&mut daemon.valgrind(&built.bin("api_test"), &["default"]));
    let stderr = text(&out.stderr);
    assert_success(&out, "api_test under valgrind");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    println!("{}", stdout.trim());
    println!("valgrind:\n{}", valgrind_summary(&stderr));
    daemon.assert_source_drops_of_api_test();
    daemon.stop();
}

#[test]
fn c_test_program_linked_statically() {
    let built = built();
    let daemon = Daemon::start();
    let out = run(daemon.command(built.bin("api_test_static")).arg("default"));
    assert_success(&out, "api_test linked with libpacket_ipc.a");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    daemon.assert_source_drops_of_api_test();
    // It does not need the shared library.
    let ldd = run(c_program("ldd").arg(built.bin("api_test_static")));
    assert!(!text(&ldd.stdout).contains("libpacket_ipc"), "{ldd:?}");
    daemon.stop();
}

/// Packet `i` as `examples/producer.c` makes it: (ts_nanos, origlen, bytes).
fn example_packet(i: u64) -> (u64, u32, Vec<u8>) {
    let caplen = 14 + ((i * 37) % 1500) as u32;
    let mut bytes = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5];
    bytes.extend((14..caplen).map(|k| (i.wrapping_mul(31).wrapping_add(u64::from(k))) as u8));
    let origlen = caplen + if i.is_multiple_of(5) { 100 } else { 0 };
    (1_700_000_000_123_456_789 + i * 1_000_001, origlen, bytes)
}

/// The records of a classic microsecond pcap: (ts_sec, ts_usec, orig_len, bytes).
fn read_pcap(path: &Path) -> Vec<(u32, u32, u32, Vec<u8>)> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read the pcap");
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "a microsecond pcap, little-endian");
    assert_eq!(u32_at(20), 1, "link type Ethernet");
    let mut records = Vec::new();
    let mut at = 24;
    while at < data.len() {
        let (sec, usec, caplen, len) =
            (u32_at(at), u32_at(at + 4), u32_at(at + 8), u32_at(at + 12));
        let bytes = data[at + 16..at + 16 + caplen as usize].to_vec();
        records.push((sec, usec, len, bytes));
        at += 16 + caplen as usize;
    }
    records
}

#[test]
fn example_producer_to_example_subscriber_under_valgrind() {
    let built = built();
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pcap = dir.path().join("out.pcap");
    let pcap_arg = pcap.to_str().expect("a UTF-8 path");
    // 1000 packets in batches of 64; the subscriber stops after 900, inside batch 15. Its
    // filter keeps every packet (all of the producer's ethertype): the filtered path,
    // whose batches are lists of the packets that matched.
    let (sent, wanted) = (1000u64, 900usize);

    let mut subscriber = daemon
        .valgrind(
            &built.bin("subscriber"),
            &[
                "default",
                &wanted.to_string(),
                pcap_arg,
                "ether proto 0x88b5",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run valgrind: {e} (CI installs: {PACKAGES})"));
    // Its stderr, read by a thread: the producer starts once it says it is subscribed.
    let stderr = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready) = mpsc::channel();
    let reader = {
        let stderr = Arc::clone(&stderr);
        let pipe = subscriber.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("subscribed to default") {
                    let _ = ready_tx.send(());
                }
                let mut all = stderr.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    if ready.recv_timeout(DEADLINE).is_err() {
        let _ = subscriber.kill();
        let _ = subscriber.wait();
        panic!(
            "the subscriber never subscribed:\n{}",
            stderr.lock().unwrap()
        );
    }

    let producer =
        run(daemon
            .command(built.bin("producer"))
            .args(["default", &sent.to_string(), "64"]));
    assert_success(&producer, "producer");
    assert!(
        text(&producer.stdout).contains("sent 1000 packets"),
        "{producer:?}"
    );

    let out = wait_output(subscriber, "the subscriber under valgrind");
    reader.join().expect("the stderr reader");
    let stderr = stderr.lock().unwrap().clone();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the subscriber under valgrind failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("batch seq="))
            .count(),
        15,
        "a line per batch: 14 of 64 packets, then the 15th cut at 900:\n{stdout}"
    );
    assert!(
        stdout.contains("received 900 packets") && stdout.contains("0 batches lost"),
        "{stdout}"
    );
    println!("valgrind (subscriber):\n{}", valgrind_summary(&stderr));

    // Every packet in the pcap, as the producer made it, pcap_pkthdr mapped as documented.
    let records = read_pcap(&pcap);
    assert_eq!(records.len(), wanted);
    for (i, (sec, usec, len, bytes)) in records.iter().enumerate() {
        let (ts, origlen, want) = example_packet(i as u64);
        assert_eq!(u64::from(*sec), ts / 1_000_000_000, "seconds of packet {i}");
        assert_eq!(
            u64::from(*usec),
            ts % 1_000_000_000 / 1000,
            "µs of packet {i}"
        );
        assert_eq!(*len, origlen, "original length of packet {i}");
        assert_eq!(bytes, &want, "bytes of packet {i}");
    }

    daemon.stop();

    // And tshark reads it the same way.
    let tshark = run(Command::new("tshark")
        .args(["-n", "-r", pcap_arg, "-T", "fields"])
        .args([
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.len",
        ]));
    assert_success(&tshark, "tshark");
    let lines: Vec<String> = text(&tshark.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), wanted, "tshark counts every packet");
    for (i, line) in lines.iter().enumerate() {
        let (ts, origlen, bytes) = example_packet(i as u64);
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        let (sec, frac) = fields[0].split_once('.').unwrap_or((fields[0], "0"));
        let nanos: u64 = format!("{frac:0<9}")[..9].parse().expect("a fraction");
        assert_eq!(sec.parse::<u64>().ok(), Some(ts / 1_000_000_000), "{line}");
        assert_eq!(nanos / 1000, ts % 1_000_000_000 / 1000, "{line}");
        assert_eq!(fields[1].parse::<usize>().ok(), Some(bytes.len()), "{line}");
        assert_eq!(fields[2].parse::<u32>().ok(), Some(origlen), "{line}");
    }
}
