//! libpcap, loaded at run time: tcpdump filter expressions ([`Filter`]) and capture from
//! interfaces ([`LiveCapture`]).
//!
//! Nothing is linked against libpcap and nothing needs its headers to build. The library
//! is opened (`dlopen`, through `libloading`) the first time one of these functions needs
//! it: `libpcap.so.0.8` (the soname of Debian's package `libpcap0.8`), else `libpcap.so.1`,
//! else `libpcap.so`; its functions are looked up once for the whole process. Where it is
//! not installed, every entry point returns [`LibpcapError::Missing`], one line that names
//! the package to install. libpcap 1.5 or later is needed (immediate mode and nanosecond
//! time stamps); an older one is [`LibpcapError::TooOld`].
//!
//! The few C types used are declared here, `#[repr(C)]` as in `<pcap/pcap.h>` and
//! `<pcap/bpf.h>`: an opaque `pcap_t`, `struct bpf_program`, `struct pcap_pkthdr` and
//! `struct pcap_stat`.
//!
//! # Capturing into batches
//!
//! A capture loop waits on the handle's descriptor with a timeout, so that it sees a stop
//! flag in time and can flush a partial batch when the traffic pauses, then hands every
//! packet of libpcap's buffer to a closure, as a slice into libpcap's own memory:
//!
//! ```no_run
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use packet_ipc::libpcap::CaptureOptions;
//!
//! static STOP: AtomicBool = AtomicBool::new(false); // set by a SIGINT/SIGTERM handler
//!
//! let mut capture = CaptureOptions::new().filter("udp or tcp").open("eth0")?;
//! let mut batch: Vec<u8> = Vec::new(); // stands for a shared-memory batch
//! while !STOP.load(Ordering::Relaxed) {
//!     if capture.wait(Duration::from_millis(100))? {
//!         capture.dispatch(0, |ts_nanos, data, orig_len| {
//!             // The one copy: from libpcap's ring into the batch.
//!             batch.extend_from_slice(data);
//!             let _ = (ts_nanos, orig_len);
//!         })?;
//!     } else if !batch.is_empty() {
//!         batch.clear(); // idle: send the partial batch
//!     }
//! }
//! println!("{:?}", capture.stats()?);
//! # Ok::<(), packet_ipc::libpcap::CaptureError>(())
//! ```

use std::any::Any;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::fmt;
use std::io;
use std::marker::{PhantomData, PhantomPinned};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use libloading::Library;
use serde::{Deserialize, Serialize};

/// The Debian package that installs the libpcap this module loads.
pub const DEBIAN_PACKAGE: &str = "libpcap0.8";

/// The names tried, in order, to load libpcap.
const SONAMES: &[&str] = &["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];

/// libpcap's largest snapshot length (`MAXIMUM_SNAPLEN`), used where 0 is given.
const MAXIMUM_SNAPLEN: u32 = 262_144;

const PCAP_ERRBUF_SIZE: usize = 256;
const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;
const PCAP_ERROR_BREAK: c_int = -2;
const PCAP_ERROR_NO_SUCH_DEVICE: c_int = -5;
const PCAP_ERROR_PERM_DENIED: c_int = -8;
const PCAP_ERROR_PROMISC_PERM_DENIED: c_int = -11;
const PCAP_TSTAMP_PRECISION_NANO: c_int = 1;

/// `pcap_t`: opaque, only ever behind a pointer.
#[repr(C)]
struct Pcap {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `struct bpf_insn`.
#[repr(C)]
struct BpfInsn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct bpf_program`: a compiled filter, allocated by `pcap_compile`.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut BpfInsn,
}

/// `struct pcap_pkthdr`. With nanosecond precision `ts.tv_usec` holds nanoseconds.
#[repr(C)]
struct PcapPkthdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

/// `struct pcap_stat` (the Unix one: three `u_int`s).
#[repr(C)]
#[derive(Default)]
struct PcapStat {
    ps_recv: c_uint,
    ps_drop: c_uint,
    ps_ifdrop: c_uint,
}

/// `pcap_handler`.
type PcapHandler = extern "C" fn(*mut u8, *const PcapPkthdr, *const u8);

/// libpcap could not be used at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LibpcapError {
    /// No libpcap shared library could be loaded; holds the loader's error.
    #[error("libpcap is not installed (apt-get install {DEBIAN_PACKAGE}): {0}")]
    Missing(String),
    /// A libpcap was loaded but lacks a function this module needs.
    #[error("{soname} lacks {symbol}: libpcap 1.5 or later is needed (apt-get install {DEBIAN_PACKAGE})")]
    TooOld {
        /// The library loaded.
        soname: &'static str,
        /// The function it lacks.
        symbol: &'static str,
    },
}

/// A filter expression could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// libpcap is missing.
    #[error(transparent)]
    Libpcap(#[from] LibpcapError),
    /// The expression is not a valid filter for that link type (libpcap's own message).
    #[error("invalid filter {expr:?}: {message}")]
    Invalid {
        /// The expression.
        expr: String,
        /// Why, in libpcap's words.
        message: String,
    },
    /// libpcap could not make a handle to compile with (out of memory).
    #[error("libpcap could not open a handle for link type {linktype}")]
    NoHandle {
        /// The link type asked for.
        linktype: u32,
    },
}

/// A capture could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// libpcap is missing.
    #[error(transparent)]
    Libpcap(#[from] LibpcapError),
    /// There is no such interface.
    #[error("no such capture device {iface:?}: {message}")]
    NoSuchDevice {
        /// The interface named.
        iface: String,
        /// libpcap's message.
        message: String,
    },
    /// This process may not capture (it needs root or the CAP_NET_RAW capability).
    #[error(
        "permission denied capturing on {iface}: {message} (capturing needs root or CAP_NET_RAW)"
    )]
    PermissionDenied {
        /// The interface named.
        iface: String,
        /// libpcap's message.
        message: String,
    },
    /// The capture filter could not be compiled.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Any other failure, in libpcap's words.
    #[error("capture on {iface}: {message}")]
    Other {
        /// The interface.
        iface: String,
        /// libpcap's message (or the system's).
        message: String,
    },
}

/// The loaded library and the functions looked up in it, for the whole process.
struct Lib {
    soname: &'static str,
    lib_version: unsafe extern "C" fn() -> *const c_char,
    open_dead: unsafe extern "C" fn(c_int, c_int) -> *mut Pcap,
    compile: unsafe extern "C" fn(*mut Pcap, *mut BpfProgram, *const c_char, c_int, u32) -> c_int,
    freecode: unsafe extern "C" fn(*mut BpfProgram),
    geterr: unsafe extern "C" fn(*mut Pcap) -> *mut c_char,
    statustostr: unsafe extern "C" fn(c_int) -> *const c_char,
    close: unsafe extern "C" fn(*mut Pcap),
    offline_filter: unsafe extern "C" fn(*const BpfProgram, *const PcapPkthdr, *const u8) -> c_int,
    create: unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut Pcap,
    set_snaplen: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_promisc: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_timeout: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_buffer_size: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_immediate_mode: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_tstamp_precision: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    get_tstamp_precision: unsafe extern "C" fn(*mut Pcap) -> c_int,
    activate: unsafe extern "C" fn(*mut Pcap) -> c_int,
    setfilter: unsafe extern "C" fn(*mut Pcap, *mut BpfProgram) -> c_int,
    setnonblock: unsafe extern "C" fn(*mut Pcap, c_int, *mut c_char) -> c_int,
    get_selectable_fd: unsafe extern "C" fn(*mut Pcap) -> c_int,
    dispatch: unsafe extern "C" fn(*mut Pcap, c_int, PcapHandler, *mut u8) -> c_int,
    breakloop: unsafe extern "C" fn(*mut Pcap),
    datalink: unsafe extern "C" fn(*mut Pcap) -> c_int,
    snapshot: unsafe extern "C" fn(*mut Pcap) -> c_int,
    stats: unsafe extern "C" fn(*mut Pcap, *mut PcapStat) -> c_int,
    /// libpcap before 1.8 had a non-reentrant filter compiler: compile one at a time.
    compile_lock: Mutex<()>,
    /// Keeps the functions above loaded (never dropped: the `Lib` lives in a static).
    _library: Library,
}

static LIB: OnceLock<Result<Lib, LibpcapError>> = OnceLock::new();

/// The process's libpcap, loaded on first use.
fn lib() -> Result<&'static Lib, LibpcapError> {
    LIB.get_or_init(|| load(SONAMES))
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads the first of `sonames` that the dynamic loader finds.
fn load(sonames: &[&'static str]) -> Result<Lib, LibpcapError> {
    let mut first_error = None;
    for &soname in sonames {
        // SAFETY: loading runs the library's initialisers; libpcap's only set up its own
        // state and it depends on nothing but libc. It is loaded with RTLD_LOCAL, so its
        // symbols do not interpose on anything of this process.
        match unsafe { Library::new(soname) } {
            Ok(library) => return Lib::resolve(soname, library),
            Err(e) => {
                // dlerror's text ("NAME: cannot open shared object file: ..."), which
                // libloading keeps as the source of its "dlopen failed".
                let detail = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                first_error.get_or_insert_with(|| one_line(&detail));
            }
        }
    }
    Err(LibpcapError::Missing(
        first_error.unwrap_or_else(|| "no library name to try".to_owned()),
    ))
}

/// Copies the function `name` out of `library`.
///
/// # Safety
///
/// `T` must be the function pointer type of `name` as libpcap declares it, and the
/// pointer must not be called after `library` is unloaded.
unsafe fn symbol<T: Copy>(
    library: &Library,
    soname: &'static str,
    name: &'static str,
) -> Result<T, LibpcapError> {
    // SAFETY: the caller vouches for `T`.
    let found = unsafe { library.get::<T>(name) };
    found.map(|s| *s).map_err(|_| LibpcapError::TooOld {
        soname,
        symbol: name,
    })
}

impl Lib {
    fn resolve(soname: &'static str, library: Library) -> Result<Lib, LibpcapError> {
        macro_rules! get {
            ($name:literal) => {
                // SAFETY: each field's type is the declaration of that function in
                // <pcap/pcap.h>; `library` is kept in the same `Lib`, which is never
                // dropped (it lives in a static).
                unsafe { symbol(&library, soname, $name)? }
            };
        }
        Ok(Lib {
            soname,
            lib_version: get!("pcap_lib_version"),
            open_dead: get!("pcap_open_dead"),
            compile: get!("pcap_compile"),
            freecode: get!("pcap_freecode"),
            geterr: get!("pcap_geterr"),
            statustostr: get!("pcap_statustostr"),
            close: get!("pcap_close"),
            offline_filter: get!("pcap_offline_filter"),
            create: get!("pcap_create"),
            set_snaplen: get!("pcap_set_snaplen"),
            set_promisc: get!("pcap_set_promisc"),
            set_timeout: get!("pcap_set_timeout"),
            set_buffer_size: get!("pcap_set_buffer_size"),
            set_immediate_mode: get!("pcap_set_immediate_mode"),
            set_tstamp_precision: get!("pcap_set_tstamp_precision"),
            get_tstamp_precision: get!("pcap_get_tstamp_precision"),
            activate: get!("pcap_activate"),
            setfilter: get!("pcap_setfilter"),
            setnonblock: get!("pcap_setnonblock"),
            get_selectable_fd: get!("pcap_get_selectable_fd"),
            dispatch: get!("pcap_dispatch"),
            breakloop: get!("pcap_breakloop"),
            datalink: get!("pcap_datalink"),
            snapshot: get!("pcap_snapshot"),
            stats: get!("pcap_stats"),
            compile_lock: Mutex::new(()),
            _library: library,
        })
    }

    /// The last error libpcap recorded on `p`.
    fn error_of(&self, p: NonNull<Pcap>) -> String {
        // SAFETY: `p` is an open handle; pcap_geterr returns its NUL-terminated error
        // buffer, which lives as long as the handle and is copied out here.
        unsafe { c_message((self.geterr)(p.as_ptr())) }
    }

    /// libpcap's description of a status code.
    fn status_message(&self, status: c_int) -> String {
        // SAFETY: pcap_statustostr takes any value and returns a NUL-terminated string,
        // static or in a buffer of libpcap's, copied out here.
        unsafe { c_message((self.statustostr)(status)) }
    }

    /// Compiles `expr` for the link type and snapshot length of `p`, optimised, with an
    /// unknown netmask. The program must be freed with `pcap_freecode`.
    fn compile_on(&self, p: NonNull<Pcap>, expr: &CStr) -> Result<BpfProgram, String> {
        let mut program = BpfProgram {
            bf_len: 0,
            bf_insns: ptr::null_mut(),
        };
        let _one_at_a_time = self
            .compile_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: `p` is an open handle used by this thread alone, `program` is a valid
        // out-parameter and `expr` a NUL-terminated string, both alive for the call.
        let status = unsafe {
            (self.compile)(
                p.as_ptr(),
                &mut program,
                expr.as_ptr(),
                1,
                PCAP_NETMASK_UNKNOWN,
            )
        };
        if status != 0 {
            let message = self.error_of(p);
            return Err(if message.is_empty() {
                self.status_message(status)
            } else {
                message
            });
        }
        Ok(program)
    }
}

/// Copies a C string of libpcap's into one line of text.
///
/// # Safety
///
/// `s` is NULL or points at a NUL-terminated string.
unsafe fn c_message(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: per the contract, a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(s) };
    one_line(&text.to_string_lossy())
}

/// The text of an error buffer filled by libpcap (NUL-terminated within its size).
fn errbuf_message(buf: &[c_char; PCAP_ERRBUF_SIZE]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    one_line(&String::from_utf8_lossy(&bytes))
}

/// `s` on one line: control characters become spaces, ends trimmed.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The version string of the libpcap loaded, such as `libpcap version 1.10.3 (with
/// TPACKET_V3)`; loads it if that was not done yet.
pub fn version() -> Result<String, LibpcapError> {
    let lib = lib()?;
    // SAFETY: pcap_lib_version returns a static NUL-terminated string.
    Ok(unsafe { c_message((lib.lib_version)()) })
}

/// The pcap `LINKTYPE_` value (what pcap files and [`Filter::compile`] use) of a Linux
/// `DLT_` value (what `pcap_datalink` returns).
///
/// On Linux the two are equal for nearly every link type, Ethernet (`DLT_EN10MB` = 1) and
/// Linux cooked capture (`DLT_LINUX_SLL` = 113, `DLT_LINUX_SLL2` = 276) among them; the
/// exceptions are the few `DLT_` values below 100 whose meaning differs between systems:
/// raw IP (`DLT_RAW` 12 is `LINKTYPE_RAW` 101, as on a tun interface), LLC-encapsulated
/// ATM (11, 100), BSD/OS SLIP and PPP (15, 102 and 16, 103) and classical IP over ATM
/// (19, 106).
pub fn linktype_of_dlt(dlt: u32) -> u32 {
    match dlt {
        11 => 100,
        12 => 101,
        15 => 102,
        16 => 103,
        19 => 106,
        other => other,
    }
}

/// The Linux `DLT_` value of a pcap `LINKTYPE_` value: the inverse of
/// [`linktype_of_dlt`].
fn dlt_of_linktype(linktype: u32) -> u32 {
    match linktype {
        100 => 11,
        101 => 12,
        102 => 15,
        103 => 16,
        106 => 19,
        other => other,
    }
}

/// A snapshot length as libpcap takes it: 0 and anything larger than
/// [`MAXIMUM_SNAPLEN`] mean that maximum.
fn snaplen_arg(snaplen: u32) -> c_int {
    let snaplen = if snaplen == 0 || snaplen > MAXIMUM_SNAPLEN {
        MAXIMUM_SNAPLEN
    } else {
        snaplen
    };
    snaplen as c_int
}

/// Nanoseconds since the epoch of a libpcap time stamp (0 before the epoch).
fn ts_nanos(ts: &libc::timeval, nanosecond: bool) -> u64 {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let frac = u64::try_from(ts.tv_usec).unwrap_or(0);
    let frac = if nanosecond {
        frac
    } else {
        frac.saturating_mul(1_000)
    };
    secs.saturating_mul(1_000_000_000).saturating_add(frac)
}

/// A compiled tcpdump filter expression, matched against packets in this process.
///
/// Compiled once with libpcap's optimiser, then read-only: one `Filter` may be shared by
/// any number of threads, and matching allocates nothing.
pub struct Filter {
    lib: &'static Lib,
    program: BpfProgram,
    /// The same program, run by this crate (machine code or its interpreter; `None`:
    /// libpcap's interpreter runs it).
    fast: Option<crate::bpf::Program>,
    expr: String,
    linktype: u32,
}

// SAFETY: a `Filter` owns its program (allocated by pcap_compile, freed once, on drop)
// and owns no handle. The program is only read after it is built: pcap_offline_filter
// runs libpcap's BPF interpreter over the instructions, keeping its scratch memory on its
// own stack, so moving the program to another thread and reading it from several
// threads at once are both sound.
unsafe impl Send for Filter {}
// SAFETY: see `Send`: `matches`, the only use through `&self`, reads the program only.
unsafe impl Sync for Filter {}

impl Filter {
    /// Compiles `expr` (tcpdump syntax, see pcap-filter(7)) for packets of the pcap
    /// `LINKTYPE_` `linktype` (1 for Ethernet) captured with the snapshot length `snaplen`
    /// (0 means libpcap's maximum, 262144), optimised and with an unknown netmask (so
    /// `ip broadcast` is refused).
    ///
    /// An expression libpcap rejects, or that contains a NUL byte, is
    /// [`FilterError::Invalid`] with libpcap's message.
    pub fn compile(expr: &str, linktype: u32, snaplen: u32) -> Result<Filter, FilterError> {
        let lib = lib()?;
        let invalid = |message: &str| FilterError::Invalid {
            expr: expr.to_owned(),
            message: message.to_owned(),
        };
        let c_expr =
            CString::new(expr).map_err(|_| invalid("the expression contains a NUL byte"))?;
        let dlt = c_int::try_from(dlt_of_linktype(linktype))
            .map_err(|_| invalid(&format!("unknown link type {linktype}")))?;
        // SAFETY: plain values in; the result is NULL or a handle this function owns.
        let dead = unsafe { (lib.open_dead)(dlt, snaplen_arg(snaplen)) };
        let dead = NonNull::new(dead).ok_or(FilterError::NoHandle { linktype })?;
        let compiled = lib.compile_on(dead, &c_expr);
        // SAFETY: `dead` was opened above and is not used after this: the program does
        // not refer to the handle it was compiled on.
        unsafe { (lib.close)(dead.as_ptr()) };
        let program = compiled.map_err(|message| invalid(&message))?;
        let insns: Vec<crate::bpf::Insn> = if program.bf_insns.is_null() {
            Vec::new()
        } else {
            // SAFETY: pcap_compile made `bf_len` instructions at `bf_insns`, owned by
            // `program` and alive while it is.
            unsafe { std::slice::from_raw_parts(program.bf_insns, program.bf_len as usize) }
                .iter()
                .map(|i| crate::bpf::Insn {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect()
        };
        Ok(Filter {
            lib,
            program,
            fast: crate::bpf::Program::decode(&insns),
            expr: expr.to_owned(),
            linktype,
        })
    }

    /// The expression this filter was compiled from.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The link type it was compiled for.
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// True when the packet passes the filter. `data` is what was captured of it (its
    /// first bytes: the link-layer header on), `orig_len` its length on the wire (what
    /// `len` tests); the time stamp is not looked at by any filter.
    ///
    /// Any bytes are safe: a filter that reads past `data` rejects the packet. The
    /// program runs as machine code (feature `jit`) or in this crate's interpreter
    /// (`bpf`), or in libpcap's for a program those do not take; all give libpcap's
    /// results.
    #[inline]
    pub fn matches(&self, ts_nanos: u64, data: &[u8], orig_len: u32) -> bool {
        match &self.fast {
            Some(program) => program.run(data, orig_len) != 0,
            None => self.matches_in_libpcap(ts_nanos, data, orig_len),
        }
    }

    /// [`Filter::matches`] by libpcap's interpreter (`pcap_offline_filter`), whichever
    /// `matches` uses: for tests and benches that compare the two.
    #[doc(hidden)]
    pub fn matches_in_libpcap(&self, ts_nanos: u64, data: &[u8], orig_len: u32) -> bool {
        let header = PcapPkthdr {
            ts: libc::timeval {
                tv_sec: (ts_nanos / 1_000_000_000) as libc::time_t,
                tv_usec: ((ts_nanos % 1_000_000_000) / 1_000) as libc::suseconds_t,
            },
            // Never more than `data` holds: a longer packet is seen truncated.
            caplen: u32::try_from(data.len()).unwrap_or(u32::MAX),
            len: orig_len,
        };
        // SAFETY: the program is a valid compiled one, owned by `self`; the header and
        // `data` are alive for the call; libpcap's interpreter reads at most `caplen`
        // bytes of `data` (a load beyond them rejects the packet) and writes nothing.
        unsafe { (self.lib.offline_filter)(&self.program, &header, data.as_ptr()) != 0 }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // SAFETY: the program was allocated by pcap_compile and is freed once, here.
        unsafe { (self.lib.freecode)(&mut self.program) };
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("expr", &self.expr)
            .field("linktype", &self.linktype)
            .field("instructions", &self.program.bf_len)
            .field(
                "runs as",
                &match &self.fast {
                    Some(p) if p.is_native() => "machine code",
                    Some(_) => "packet-ipc's interpreter",
                    None => "libpcap's interpreter",
                },
            )
            .finish()
    }
}

/// How long the kernel holds a partly filled block of the capture ring before it hands it
/// over, in milliseconds, when not in immediate mode: the most a packet waits there.
pub const BLOCK_TIMEOUT_MS: c_int = 10;

/// How to open a [`LiveCapture`]: builder-style, each method returns the options.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    snaplen: u32,
    promisc: bool,
    buffer_mib: Option<u32>,
    immediate: bool,
    nanosecond: bool,
    filter: Option<String>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            snaplen: MAXIMUM_SNAPLEN,
            promisc: true,
            buffer_mib: None,
            immediate: false,
            nanosecond: true,
            filter: None,
        }
    }
}

impl CaptureOptions {
    /// The defaults: whole packets (snapshot length 262144), promiscuous, libpcap's
    /// buffer size (2 MiB on Linux), blocks handed over when full or [`BLOCK_TIMEOUT_MS`]
    /// after their first packet (not immediate mode), nanosecond time stamps, no filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes kept of each packet, at most (0 means the maximum, 262144).
    pub fn snaplen(mut self, snaplen: u32) -> Self {
        self.snaplen = snaplen;
        self
    }

    /// Whether to put the interface in promiscuous mode (default on).
    pub fn promisc(mut self, on: bool) -> Self {
        self.promisc = on;
        self
    }

    /// The size of the kernel's ring buffer, in MiB (default libpcap's, 2 MiB on Linux).
    pub fn buffer_mib(mut self, mib: u32) -> Self {
        self.buffer_mib = Some(mib);
        self
    }

    /// Immediate mode (default off): packets are handed over as they arrive, not when a
    /// block of the ring fills or [`BLOCK_TIMEOUT_MS`] pass. On Linux libpcap then uses a
    /// TPACKET_V2 ring, where every packet takes a slot of the snapshot length (64 KiB on
    /// an interface with offloads): libpcap's default 2 MiB buffer holds about 32 packets,
    /// and a burst is dropped where the TPACKET_V3 blocks of the default hold thousands.
    pub fn immediate(mut self, on: bool) -> Self {
        self.immediate = on;
        self
    }

    /// Ask for nanosecond time stamps (default on); where the interface refuses, they are
    /// microseconds (see [`LiveCapture::nanosecond`]).
    pub fn nanosecond(mut self, on: bool) -> Self {
        self.nanosecond = on;
        self
    }

    /// A tcpdump filter expression applied in the kernel: only packets that pass it are
    /// copied to the capture's buffer. Compiled on the open handle, for its link type.
    pub fn filter(mut self, expr: impl Into<String>) -> Self {
        self.filter = Some(expr.into());
        self
    }

    /// Opens the interface `iface` (`any` for all of them) and starts capturing.
    pub fn open(&self, iface: &str) -> Result<LiveCapture, CaptureError> {
        let lib = lib()?;
        let c_iface = CString::new(iface).map_err(|_| CaptureError::NoSuchDevice {
            iface: iface.to_owned(),
            message: "the name contains a NUL byte".to_owned(),
        })?;
        let mut errbuf = [0 as c_char; PCAP_ERRBUF_SIZE];
        // SAFETY: a NUL-terminated name and an error buffer of PCAP_ERRBUF_SIZE, both
        // alive for the call; the result is NULL or a handle this function owns.
        let handle = unsafe { (lib.create)(c_iface.as_ptr(), errbuf.as_mut_ptr()) };
        let Some(handle) = NonNull::new(handle) else {
            return Err(CaptureError::Other {
                iface: iface.to_owned(),
                message: errbuf_message(&errbuf),
            });
        };
        // From here the handle is closed by `capture`'s drop, whatever fails.
        let mut capture = LiveCapture {
            lib,
            handle,
            iface: iface.to_owned(),
            fd: -1,
            linktype: 0,
            snaplen: 0,
            nanosecond: false,
            last: Cell::new(PcapStatRaw::default()),
            totals: Cell::new(CaptureStats::default()),
        };
        capture.start(self)?;
        Ok(capture)
    }
}

/// The counters of [`LiveCapture::stats`], cumulative since the capture was opened.
///
/// On Linux (libpcap's `pcap_stats` over the kernel's `PACKET_STATISTICS`):
/// - `received` counts the packets that passed the capture filter, *including* those
///   then dropped for want of room in the ring (`ps_recv`). On `lo` every packet is seen
///   twice by the kernel, outgoing and incoming, and counted twice, but libpcap hands
///   over only the incoming copy.
/// - `dropped_kernel` counts the packets that passed the filter but found the ring full
///   (`ps_drop`): the capture did not read fast enough.
/// - `dropped_interface` counts what the interface itself dropped since the capture was
///   opened (`ps_ifdrop`, from the interface's statistics): all of its traffic, not only
///   what the filter would pass; 0 where unknown (as on `any`).
///
/// libpcap keeps these in 32 bits; they are widened here, so that they do not wrap as long
/// as `stats` is called at least once every 2^32 packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStats {
    /// Packets that passed the filter, dropped ones included.
    pub received: u64,
    /// Packets dropped because the capture's buffer was full.
    pub dropped_kernel: u64,
    /// Packets dropped by the interface.
    pub dropped_interface: u64,
}

#[derive(Clone, Copy, Default)]
struct PcapStatRaw {
    recv: u32,
    drop: u32,
    ifdrop: u32,
}

/// A capture from a network interface, non-blocking, read with [`LiveCapture::wait`] and
/// [`LiveCapture::dispatch`]. Closed on drop.
pub struct LiveCapture {
    lib: &'static Lib,
    handle: NonNull<Pcap>,
    iface: String,
    fd: RawFd,
    linktype: u32,
    snaplen: u32,
    nanosecond: bool,
    last: Cell<PcapStatRaw>,
    totals: Cell<CaptureStats>,
}

// SAFETY: libpcap lets a handle be used from any thread, one thread at a time; a
// `LiveCapture` owns its handle and, being !Sync, is only used through one thread at a
// time.
unsafe impl Send for LiveCapture {}

impl LiveCapture {
    /// Opens `iface` with the default [`CaptureOptions`].
    pub fn open(iface: &str) -> Result<LiveCapture, CaptureError> {
        CaptureOptions::new().open(iface)
    }

    fn other(&self, message: String) -> CaptureError {
        CaptureError::Other {
            iface: self.iface.clone(),
            message,
        }
    }

    /// libpcap's message after a call on the handle returned `status`.
    fn message(&self, status: c_int) -> String {
        let message = self.lib.error_of(self.handle);
        if message.is_empty() {
            self.lib.status_message(status)
        } else {
            message
        }
    }

    /// The error of a failed call that returned `status` on the handle.
    fn failed(&self, what: &str, status: c_int) -> CaptureError {
        self.other(format!("{what}: {}", self.message(status)))
    }

    /// Sets the options, activates the handle, installs the filter and makes it
    /// non-blocking.
    fn start(&mut self, options: &CaptureOptions) -> Result<(), CaptureError> {
        let lib = self.lib;
        let p = self.handle.as_ptr();
        // Each setter only records a value in the handle, not yet activated; they can
        // fail only on an activated one.
        // SAFETY: `p` is the open, not yet activated handle of `self` (and likewise for
        // the setters below).
        let status = unsafe { (lib.set_snaplen)(p, snaplen_arg(options.snaplen)) };
        if status != 0 {
            return Err(self.failed("pcap_set_snaplen", status));
        }
        // SAFETY: as above.
        let status = unsafe { (lib.set_promisc)(p, c_int::from(options.promisc)) };
        if status != 0 {
            return Err(self.failed("pcap_set_promisc", status));
        }
        // Without immediate mode, how long the kernel holds a partly filled block.
        // SAFETY: as above.
        let status = unsafe { (lib.set_timeout)(p, BLOCK_TIMEOUT_MS) };
        if status != 0 {
            return Err(self.failed("pcap_set_timeout", status));
        }
        if let Some(mib) = options.buffer_mib {
            let bytes = c_int::try_from(u64::from(mib) << 20).unwrap_or(c_int::MAX);
            // SAFETY: as above.
            let status = unsafe { (lib.set_buffer_size)(p, bytes) };
            if status != 0 {
                return Err(self.failed("pcap_set_buffer_size", status));
            }
        }
        // SAFETY: as above.
        let status = unsafe { (lib.set_immediate_mode)(p, c_int::from(options.immediate)) };
        if status != 0 {
            return Err(self.failed("pcap_set_immediate_mode", status));
        }
        if options.nanosecond {
            // Refused (PCAP_ERROR_TSTAMP_PRECISION_NOTSUP): microseconds, the default.
            // SAFETY: as above.
            let _ = unsafe { (lib.set_tstamp_precision)(p, PCAP_TSTAMP_PRECISION_NANO) };
        }

        // SAFETY: `p` is the open handle of `self`, configured above.
        let status = unsafe { (lib.activate)(p) };
        if status < 0 {
            return Err(self.activate_error(status));
        }
        if status > 0 {
            tracing::warn!("capture on {}: {}", self.iface, self.message(status));
        }

        // SAFETY: `p` is the activated handle of `self` (and likewise below).
        let precision = unsafe { (lib.get_tstamp_precision)(p) };
        self.nanosecond = precision == PCAP_TSTAMP_PRECISION_NANO;
        // SAFETY: as above.
        let dlt = unsafe { (lib.datalink)(p) };
        self.linktype = match u32::try_from(dlt) {
            Ok(dlt) => linktype_of_dlt(dlt),
            Err(_) => return Err(self.failed("pcap_datalink", dlt)),
        };
        // SAFETY: as above.
        let snaplen = unsafe { (lib.snapshot)(p) };
        self.snaplen = match u32::try_from(snaplen) {
            Ok(snaplen) => snaplen,
            Err(_) => return Err(self.failed("pcap_snapshot", snaplen)),
        };

        if let Some(expr) = &options.filter {
            self.set_filter(expr)?;
        }

        let mut errbuf = [0 as c_char; PCAP_ERRBUF_SIZE];
        // SAFETY: `p` is the activated handle of `self`; the error buffer has
        // PCAP_ERRBUF_SIZE bytes and is alive for the call.
        if unsafe { (lib.setnonblock)(p, 1, errbuf.as_mut_ptr()) } < 0 {
            return Err(self.other(format!("pcap_setnonblock: {}", errbuf_message(&errbuf))));
        }
        // SAFETY: `p` is the activated handle of `self`.
        self.fd = unsafe { (lib.get_selectable_fd)(p) };
        if self.fd < 0 {
            return Err(self.other("libpcap gives no descriptor to wait on".to_owned()));
        }
        Ok(())
    }

    fn activate_error(&self, status: c_int) -> CaptureError {
        let message = self.message(status);
        let iface = self.iface.clone();
        let eperm = |m: &str| {
            m.contains(&io::Error::from_raw_os_error(libc::EPERM).to_string())
                || m.contains(&io::Error::from_raw_os_error(libc::EACCES).to_string())
        };
        match status {
            PCAP_ERROR_NO_SUCH_DEVICE => CaptureError::NoSuchDevice { iface, message },
            PCAP_ERROR_PERM_DENIED | PCAP_ERROR_PROMISC_PERM_DENIED => {
                CaptureError::PermissionDenied { iface, message }
            }
            _ if eperm(&message) => CaptureError::PermissionDenied { iface, message },
            _ => CaptureError::Other { iface, message },
        }
    }

    /// Compiles `expr` on the live handle (its link type and snapshot length) and makes
    /// it the kernel's filter.
    fn set_filter(&mut self, expr: &str) -> Result<(), CaptureError> {
        let invalid = |message: String| FilterError::Invalid {
            expr: expr.to_owned(),
            message,
        };
        let c_expr = CString::new(expr)
            .map_err(|_| invalid("the expression contains a NUL byte".to_owned()))?;
        let mut program = self.lib.compile_on(self.handle, &c_expr).map_err(invalid)?;
        // SAFETY: the handle is activated and `program` a valid compiled program, which
        // pcap_setfilter copies (into the kernel, or libpcap's own memory where the
        // kernel refuses it).
        let status = unsafe { (self.lib.setfilter)(self.handle.as_ptr(), &mut program) };
        // SAFETY: the program was allocated by pcap_compile above, is no longer needed
        // once set, and is freed once, here.
        unsafe { (self.lib.freecode)(&mut program) };
        if status != 0 {
            return Err(self.failed("pcap_setfilter", status));
        }
        Ok(())
    }

    /// The interface captured.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The pcap `LINKTYPE_` value of the packets (1 for Ethernet, 113 for Linux cooked
    /// capture on `any`): see [`linktype_of_dlt`].
    pub fn datalink(&self) -> u32 {
        self.linktype
    }

    /// The snapshot length in force: no packet has more bytes than this.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Whether the time stamps were taken with nanosecond precision (else microseconds,
    /// still reported in nanoseconds).
    pub fn nanosecond(&self) -> bool {
        self.nanosecond
    }

    /// Waits at most `timeout` for packets to read; true when [`LiveCapture::dispatch`]
    /// has something to do (packets, or an error to report), false after the timeout or a
    /// signal. Does not spin: the thread sleeps in `poll`.
    pub fn wait(&self, timeout: Duration) -> Result<bool, CaptureError> {
        let mut pollfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = c_int::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX);
        // SAFETY: one pollfd, alive for the call, on the handle's descriptor, which stays
        // open as long as `self`.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(self.other(format!("poll: {error}")));
        }
        Ok(ready > 0)
    }

    /// Calls `f(ts_nanos, data, orig_len)` for each packet of libpcap's current buffer, at
    /// most `max` of them (0: all of it), and returns how many; 0 when none is waiting
    /// (the handle does not block).
    ///
    /// `data` is a slice into libpcap's memory (the kernel's ring), valid only during
    /// the call of `f`: copy out of it what is kept. A panic in `f` stops the dispatch and
    /// is resumed once libpcap has returned.
    pub fn dispatch<F>(&mut self, max: usize, f: F) -> Result<usize, CaptureError>
    where
        F: FnMut(u64, &[u8], u32),
    {
        let mut state = DispatchState {
            f,
            nanosecond: self.nanosecond,
            lib: self.lib,
            handle: self.handle,
            panic: None,
        };
        let count = if max == 0 {
            -1
        } else {
            c_int::try_from(max).unwrap_or(c_int::MAX)
        };
        // SAFETY: the handle is activated and used by this thread alone (`&mut self`);
        // `trampoline::<F>` is given a pointer to `state`, of the type it expects, which
        // outlives the call; libpcap calls it only during this call.
        let status = unsafe {
            (self.lib.dispatch)(
                self.handle.as_ptr(),
                count,
                trampoline::<F>,
                ptr::from_mut(&mut state).cast(),
            )
        };
        if let Some(payload) = state.panic {
            panic::resume_unwind(payload);
        }
        match status {
            n if n >= 0 => Ok(n as usize),
            PCAP_ERROR_BREAK => Ok(0),
            _ => Err(self.failed("pcap_dispatch", status)),
        }
    }

    /// The capture's counters: see [`CaptureStats`] for what they count on Linux.
    pub fn stats(&self) -> Result<CaptureStats, CaptureError> {
        let mut raw = PcapStat::default();
        // SAFETY: the handle is activated and not used by another thread (`LiveCapture`
        // is !Sync); `raw` is a valid out-parameter alive for the call.
        let status = unsafe { (self.lib.stats)(self.handle.as_ptr(), &mut raw) };
        if status != 0 {
            return Err(self.failed("pcap_stats", status));
        }
        let now = PcapStatRaw {
            recv: raw.ps_recv,
            drop: raw.ps_drop,
            ifdrop: raw.ps_ifdrop,
        };
        let last = self.last.replace(now);
        let mut totals = self.totals.get();
        totals.received += u64::from(now.recv.wrapping_sub(last.recv));
        totals.dropped_kernel += u64::from(now.drop.wrapping_sub(last.drop));
        totals.dropped_interface += u64::from(now.ifdrop.wrapping_sub(last.ifdrop));
        self.totals.set(totals);
        Ok(totals)
    }
}

/// What [`trampoline`] is given by [`LiveCapture::dispatch`].
struct DispatchState<F> {
    f: F,
    nanosecond: bool,
    lib: &'static Lib,
    handle: NonNull<Pcap>,
    panic: Option<Box<dyn Any + Send>>,
}

/// The `pcap_handler` of [`LiveCapture::dispatch`]: calls the closure with safe values.
/// No panic leaves it: one is kept to be resumed after pcap_dispatch returns.
extern "C" fn trampoline<F: FnMut(u64, &[u8], u32)>(
    user: *mut u8,
    header: *const PcapPkthdr,
    bytes: *const u8,
) {
    // SAFETY: `user` is the `DispatchState<F>` that `dispatch` passed, alive and not
    // otherwise borrowed while pcap_dispatch runs.
    let state = unsafe { &mut *user.cast::<DispatchState<F>>() };
    if state.panic.is_some() || header.is_null() {
        return;
    }
    // SAFETY: libpcap passes a valid header for each packet, alive during the callback.
    let header = unsafe { &*header };
    let data: &[u8] = if bytes.is_null() {
        &[]
    } else {
        // SAFETY: libpcap passes `caplen` readable bytes at `bytes`, left untouched
        // until the callback returns; the slice does not outlive it (`f` takes it for
        // any lifetime, so cannot keep it).
        unsafe { std::slice::from_raw_parts(bytes, header.caplen as usize) }
    };
    let ts = ts_nanos(&header.ts, state.nanosecond);
    let len = header.len;
    let f = &mut state.f;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(ts, data, len))) {
        state.panic = Some(payload);
        // SAFETY: the handle is the one being dispatched; pcap_breakloop is meant to be
        // called from its callback, and only sets a flag.
        unsafe { (state.lib.breakloop)(state.handle.as_ptr()) };
    }
}

impl AsFd for LiveCapture {
    /// The descriptor [`LiveCapture::wait`] polls, for a caller's own event loop.
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the handle, open until `self` is dropped,
        // which the borrow prevents.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by pcap_create, is owned by `self` alone and is
        // closed once, here.
        unsafe { (self.lib.close)(self.handle.as_ptr()) };
    }
}

impl fmt::Debug for LiveCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCapture")
            .field("iface", &self.iface)
            .field("linktype", &self.linktype)
            .field("snaplen", &self.snaplen)
            .field("nanosecond", &self.nanosecond)
            .field("libpcap", &self.lib.soname)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;

    /// Whether a test needing `needs` may go on: when it is missing, prints one
    /// `skipped:` line and returns false, unless PACKET_IPC_REQUIRE_TOOLS=1, which makes
    /// the test fail instead.
    fn available(what: &str, needs: &str, missing: Option<String>) -> bool {
        let Some(why) = missing else {
            return true;
        };
        if std::env::var_os("PACKET_IPC_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
            panic!("{what}: needs {needs}, and PACKET_IPC_REQUIRE_TOOLS=1: {why}");
        }
        eprintln!("skipped: {what}: needs {needs}");
        false
    }

    /// [`available`] for libpcap.
    fn libpcap(what: &str) -> bool {
        let needs = format!("libpcap (apt-get install {DEBIAN_PACKAGE})");
        available(what, &needs, version().err().map(|e| e.to_string()))
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An IPv4 header (don't-fragment set, no options) and its payload.
    fn ipv4(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
        packet.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        packet.extend_from_slice(payload);
        packet
    }

    fn udp_frame(dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut udp = 40000u16.to_be_bytes().to_vec();
        udp.extend_from_slice(&dst_port.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        ethernet(0x0800, &ipv4(17, &udp))
    }

    fn tcp_syn_frame(dst_port: u16) -> Vec<u8> {
        let mut tcp = 40001u16.to_be_bytes().to_vec();
        tcp.extend_from_slice(&dst_port.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        ethernet(0x0800, &ipv4(6, &tcp))
    }

    fn arp_frame() -> Vec<u8> {
        let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 1]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        ethernet(0x0806, &arp)
    }

    fn now_nanos() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    #[test]
    fn missing_library_is_one_line_naming_the_package() {
        let Err(error) = load(&["libpcap-that-does-not-exist.so.9"]) else {
            panic!("a library that does not exist was loaded");
        };
        let text = error.to_string();
        assert!(matches!(error, LibpcapError::Missing(_)), "{error:?}");
        assert!(
            text.starts_with("libpcap is not installed (apt-get install libpcap0.8): "),
            "{text}"
        );
        assert!(text.contains("libpcap-that-does-not-exist.so.9"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn version_names_libpcap() {
        if !libpcap("libpcap version") {
            return;
        }
        let version = version().unwrap();
        assert!(version.starts_with("libpcap version "), "{version}");
    }

    #[test]
    fn filters_compile() {
        if !libpcap("filter compilation") {
            return;
        }
        for expr in [
            "udp",
            "tcp port 443",
            "vlan and ip",
            "ip6",
            "ip[6:2] & 0x3fff != 0",
            "not arp",
            "len > 100",
        ] {
            let filter = Filter::compile(expr, 1, 65535).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(filter.expr(), expr);
            assert_eq!(filter.linktype(), 1);
        }
    }

    #[test]
    fn bad_filters_are_invalid_with_libpcaps_message() {
        if !libpcap("invalid filters") {
            return;
        }
        let error = Filter::compile("tcp port", 1, 65535).unwrap_err();
        let FilterError::Invalid { expr, message } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(expr, "tcp port");
        assert!(message.contains("syntax error"), "{message}");
        assert!(!error.to_string().contains('\n'));

        let error = Filter::compile("no such keyword", 1, 65535).unwrap_err();
        assert!(matches!(error, FilterError::Invalid { .. }), "{error:?}");

        let error = Filter::compile("udp\0 or tcp", 1, 65535).unwrap_err();
        let FilterError::Invalid { message, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(message.contains("NUL"), "{message}");

        // A link type libpcap does not know.
        let error = Filter::compile("ip", 0xfff0, 65535).unwrap_err();
        assert!(matches!(error, FilterError::Invalid { .. }), "{error:?}");
        let error = Filter::compile("ip", u32::MAX, 65535).unwrap_err();
        assert!(matches!(error, FilterError::Invalid { .. }), "{error:?}");
    }

    #[test]
    fn filters_match_hand_built_frames() {
        if !libpcap("filter matching") {
            return;
        }
        let udp = udp_frame(53, b"query");
        let tcp = tcp_syn_frame(443);
        let arp = arp_frame();
        let ts = now_nanos();
        let frames = [&udp, &tcp, &arp];
        let matching = |expr: &str| -> Vec<bool> {
            let filter = Filter::compile(expr, 1, 65535).unwrap();
            frames
                .iter()
                .map(|f| filter.matches(ts, f, f.len() as u32))
                .collect()
        };
        assert_eq!(matching("udp"), [true, false, false]);
        assert_eq!(matching("tcp port 443"), [false, true, false]);
        assert_eq!(matching("not arp"), [true, true, false]);
        assert_eq!(matching("ip"), [true, true, false]);
        assert_eq!(matching("ip6"), [false, false, false]);
        // Not a fragment: the don't-fragment bit alone is set.
        assert_eq!(matching("ip[6:2] & 0x3fff != 0"), [false, false, false]);

        // `len` is the length on the wire, not what was captured.
        let long = Filter::compile("len > 100", 1, 65535).unwrap();
        assert!(!long.matches(ts, &udp, udp.len() as u32));
        assert!(long.matches(ts, &udp, 1500));
        assert!(!long.matches(ts, &udp, 100));
        assert!(long.matches(ts, &udp, 101));
    }

    /// Frames of many kinds, whole and cut anywhere, and random bytes: what the filters
    /// of the differential test run over.
    fn assorted_frames() -> Vec<(Vec<u8>, u32)> {
        let mut frames = vec![
            udp_frame(53, b"query"),
            udp_frame(443, &[7; 300]),
            tcp_syn_frame(443),
            tcp_syn_frame(80),
            arp_frame(),
        ];
        // IPv6 TCP and UDP, a VLAN-tagged IPv4 UDP, an IPv4 fragment, ICMP.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 28, 6, 64];
        v6.extend_from_slice(&[0x20, 1, 0x0d, 0xb8].repeat(8));
        v6.extend_from_slice(&[0x9c, 0x41, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        v6.resize(40 + 28, 0);
        frames.push(ethernet(0x86dd, &v6));
        v6[6] = 17;
        frames.push(ethernet(0x86dd, &v6));
        let inner = udp_frame(5353, b"mdns");
        let mut tagged = inner[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&inner[12..]);
        frames.push(tagged);
        let mut fragment = udp_frame(53, &[1; 64]);
        fragment[14 + 6] = 0x20; // more fragments
        frames.push(fragment.clone());
        fragment[14 + 6] = 0x00;
        fragment[14 + 7] = 0x08; // a later one
        frames.push(fragment);
        frames.push(ethernet(0x0800, &ipv4(1, &[8, 0, 0, 0, 0, 1, 0, 1])));
        let mut out: Vec<(Vec<u8>, u32)> = Vec::new();
        for f in frames {
            let wire = f.len() as u32;
            for cut in (0..f.len()).step_by(3) {
                out.push((f[..cut].to_vec(), wire));
            }
            out.push((f.clone(), wire));
            out.push((f, wire + 1000));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|k| (x >> (k % 56)) as u8).collect();
            if len > 13 && x.is_multiple_of(3) {
                bytes[12..14].copy_from_slice(&[0x08, 0x00]);
                bytes[14] = 0x40 | (x % 16) as u8;
            }
            out.push((bytes, (x >> 20) as u32 % 2000));
        }
        out
    }

    #[test]
    fn the_crates_interpreter_gives_libpcaps_results() {
        if !libpcap("filters run by both interpreters") {
            return;
        }
        let frames = assorted_frames();
        for expr in [
            "tcp port 443",
            "udp",
            "ip6",
            "not arp",
            "tcp or udp",
            "(tcp or udp) and port 53",
            "portrange 1000-6000",
            "icmp",
            "vlan and udp",
            "vlan 100 and port 5353",
            "ip[6:2] & 0x1fff != 0",
            "ip[2:2] > 60",
            "len > 100",
            "greater 200",
            "less 64",
            "tcp[tcpflags] & tcp-syn != 0",
            "net 10.0.0.0/8 and dst host 10.0.0.2",
            "ether host 02:00:00:00:00:01",
            "ip and not tcp",
            "ip6 and tcp dst port 443",
            "ip proto 47 or ip6 proto 47",
            "udp[8:4] = 0x71756572",
            "ip[0] & 0xf != 5",
            "tcp[((tcp[12] & 0xf0) >> 2):4] = 0",
            "len % 7 = 3",
            "len * 3 - 10 > 200 or len / 4 < 5",
        ] {
            let filter = Filter::compile(expr, 1, 65535).unwrap();
            let program = filter
                .fast
                .as_ref()
                .unwrap_or_else(|| panic!("{expr}: {filter:?}"));
            #[cfg(all(feature = "jit", any(target_arch = "x86_64", target_arch = "aarch64")))]
            assert!(program.is_native(), "{expr}: {filter:?}");
            for (n, (data, wire)) in frames.iter().enumerate() {
                assert_eq!(
                    filter.matches(0, data, *wire),
                    filter.matches_in_libpcap(0, data, *wire),
                    "{expr}: frame {n} ({} of {wire} bytes) {data:02x?}",
                    data.len()
                );
                assert_eq!(
                    program.run(data, *wire),
                    program.interpret(data, *wire),
                    "{expr}: frame {n}: machine code and interpreter"
                );
            }
        }
        // Other link types.
        for (expr, linktype) in [("udp", 101), ("ip and udp", 113), ("udp", 228)] {
            let filter = Filter::compile(expr, linktype, 0).unwrap();
            for (data, wire) in &frames {
                assert_eq!(
                    filter.matches(0, data, *wire),
                    filter.matches_in_libpcap(0, data, *wire),
                    "{expr} on {linktype}"
                );
            }
        }
    }

    /// Random programs of every kind of instruction (forward jumps, loads near and past
    /// the end, every ALU operation by K and by X, scratch cells) give the same results
    /// in the crate's interpreter, as machine code (feature `jit`) and in libpcap's
    /// interpreter, on random packets: what no compiled filter covers.
    #[test]
    fn random_programs_give_libpcaps_results() {
        if !libpcap("random programs run by both interpreters") {
            return;
        }
        let filter = Filter::compile("udp", 1, 0).unwrap();
        let lib = &filter.lib;
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let codes: [u16; 40] = [
            0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0x00, 0x60, 0x80, // LD
            0x01, 0x61, 0x81, 0xb1, // LDX
            0x02, 0x03, // ST, STX
            0x04, 0x14, 0x24, 0x34, 0x44, 0x54, 0x64, 0x74, 0x94, 0xa4, // ALU K
            0x0c, 0x1c, 0x2c, 0x3c, 0x4c, 0x5c, 0x6c, 0x7c, 0x9c, 0xac, 0x84, // ALU X, NEG
            0x15, 0x25, 0x35, 0x45, // JMP K
        ];
        let more: [u16; 8] = [0x1d, 0x2d, 0x3d, 0x4d, 0x05, 0x07, 0x87, 0x16]; // JMP X, JA, TAX, TXA, RET A
        let mut decoded = 0;
        for _ in 0..1500 {
            let len = 2 + (next() % 30) as usize;
            // libpcap leaves its scratch cells uninitialised (a compiled filter writes one
            // before it reads it): the program starts by zeroing all 16.
            let mut prog: Vec<_> = (0..16)
                .map(|k| crate::bpf::Insn {
                    code: 0x02,
                    jt: 0,
                    jf: 0,
                    k,
                })
                .collect();
            for pc in 0..len - 1 {
                let r = next();
                let code = if r % 5 == 0 {
                    more[(r >> 8) as usize % more.len()]
                } else {
                    codes[(r >> 8) as usize % codes.len()]
                };
                let room = (len - pc - 2) as u64;
                let (jt, jf) = if room == 0 {
                    (0, 0)
                } else {
                    ((next() % (room + 1)) as u8, (next() % (room + 1)) as u8)
                };
                let k = match code & 0x07 {
                    0x05 if code & 0xf0 == 0 => (next() % (room + 1)) as u32, // ja
                    0x00 | 0x01 if code & 0xe0 == 0x60 => (next() % 16) as u32,
                    0x02 | 0x03 => (next() % 16) as u32,
                    0x04 if matches!(code & 0xf0, 0x30 | 0x90) => 1 + (next() % 7) as u32,
                    0x04 if matches!(code & 0xf0, 0x60 | 0x70) => (next() % 32) as u32,
                    0x00 | 0x01 => (next() % 80) as u32,
                    _ => next() as u32 % 1000,
                };
                prog.push(crate::bpf::Insn { code, jt, jf, k });
            }
            let code = if next() % 2 == 0 { 0x16 } else { 0x06 };
            prog.push(crate::bpf::Insn {
                code,
                jt: 0,
                jf: 0,
                k: 99,
            });
            // libpcap's interpreter checks nothing (a jump out of the program, a division
            // by a constant 0 are undefined there): only what the crate's decoder takes,
            // which refuses all of those, is run by both.
            let Some(p) = crate::bpf::Program::decode(&prog) else {
                continue;
            };
            decoded += 1;
            #[cfg(all(feature = "jit", any(target_arch = "x86_64", target_arch = "aarch64")))]
            assert!(p.is_native(), "{prog:?}");
            let mut insns: Vec<BpfInsn> = prog
                .iter()
                .map(|i| BpfInsn {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect();
            let program = BpfProgram {
                bf_len: insns.len() as c_uint,
                bf_insns: insns.as_mut_ptr(),
            };
            for _ in 0..30 {
                let n = (next() % 90) as usize;
                let data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                let wire = (next() % 3000) as u32;
                let header = PcapPkthdr {
                    ts: libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    },
                    caplen: data.len() as u32,
                    len: wire,
                };
                // SAFETY: a program the decoder took (every jump and scratch cell inside,
                // no division by a constant 0, no ancillary load), alive with `insns`;
                // the header tells libpcap how many bytes `data` holds.
                let theirs = unsafe { (lib.offline_filter)(&program, &header, data.as_ptr()) };
                assert_eq!(
                    p.interpret(&data, wire),
                    theirs as u32,
                    "interpreted: {prog:?} on {data:02x?} ({wire})"
                );
                assert_eq!(
                    p.run(&data, wire),
                    theirs as u32,
                    "machine code: {prog:?} on {data:02x?} ({wire})"
                );
            }
        }
        assert!(decoded > 1100, "{decoded} programs decoded");
    }

    #[test]
    fn matching_is_safe_on_any_bytes() {
        if !libpcap("filter matching on short packets") {
            return;
        }
        let filter = Filter::compile("tcp port 443 or udp", 1, 65535).unwrap();
        let tcp = tcp_syn_frame(443);
        // Truncated anywhere, the frame no longer holds the port: rejected, no read past.
        for cut in 0..tcp.len() - 18 {
            assert!(
                !filter.matches(0, &tcp[..cut], tcp.len() as u32),
                "cut {cut}"
            );
        }
        assert!(!filter.matches(0, &[], 0));
        assert!(!filter.matches(u64::MAX, &[0xff; 3], u32::MAX));
    }

    #[test]
    fn raw_ip_link_type_is_mapped() {
        if !libpcap("filters for raw IP") {
            return;
        }
        // LINKTYPE_RAW (101) is DLT_RAW (12) on Linux.
        let filter = Filter::compile("udp", 101, 0).unwrap();
        let frame = udp_frame(53, b"x");
        assert!(filter.matches(0, &frame[14..], (frame.len() - 14) as u32));
        assert!(!filter.matches(0, &frame, frame.len() as u32));
        assert_eq!(linktype_of_dlt(12), 101);
        assert_eq!(linktype_of_dlt(1), 1);
        assert_eq!(linktype_of_dlt(113), 113);
        assert_eq!(dlt_of_linktype(linktype_of_dlt(12)), 12);
    }

    #[test]
    fn one_filter_is_shared_by_threads() {
        if !libpcap("filters shared by threads") {
            return;
        }
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Filter>();
        let filter = Filter::compile("tcp port 443", 1, 65535).unwrap();
        let tcp = tcp_syn_frame(443);
        let udp = udp_frame(443, b"");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        assert!(filter.matches(0, &tcp, tcp.len() as u32));
                        assert!(!filter.matches(0, &udp, udp.len() as u32));
                    }
                });
            }
        });
    }

    #[test]
    fn timestamps_convert_to_nanoseconds() {
        let ts = libc::timeval {
            tv_sec: 1_700_000_000,
            tv_usec: 123_456,
        };
        assert_eq!(ts_nanos(&ts, false), 1_700_000_000_123_456_000);
        assert_eq!(ts_nanos(&ts, true), 1_700_000_000_000_123_456);
        let before_epoch = libc::timeval {
            tv_sec: -1,
            tv_usec: -5,
        };
        assert_eq!(ts_nanos(&before_epoch, true), 0);
    }

    #[test]
    fn no_such_device_is_clear() {
        if !libpcap("capture on a missing device") {
            return;
        }
        let error = LiveCapture::open("nosuchif0").unwrap_err();
        match &error {
            CaptureError::NoSuchDevice { iface, .. } => assert_eq!(iface, "nosuchif0"),
            // Unprivileged, libpcap may fail to make its socket before looking.
            CaptureError::PermissionDenied { .. } if !is_root() => {}
            other => panic!("{other:?}"),
        }
        let text = error.to_string();
        assert!(!text.contains('\n'), "{text}");
        eprintln!("{text}");

        let error = LiveCapture::open("lo\0").unwrap_err();
        assert!(
            matches!(error, CaptureError::NoSuchDevice { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn bad_capture_filter_is_invalid() {
        if !libpcap("capture with an invalid filter") {
            return;
        }
        if !is_root() {
            eprintln!("skipped: capture with an invalid filter: needs root");
            return;
        }
        let error = CaptureOptions::new()
            .filter("udp port")
            .open("lo")
            .unwrap_err();
        assert!(
            matches!(error, CaptureError::Filter(FilterError::Invalid { .. })),
            "{error:?}"
        );
    }

    /// Captures UDP datagrams sent to a port of this test on `lo`; unprivileged, the open
    /// must be refused with PermissionDenied.
    #[test]
    fn live_capture_on_lo() {
        if !libpcap("live capture on lo") {
            return;
        }
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let opened = CaptureOptions::new()
            .snaplen(65535)
            .buffer_mib(4)
            .filter(format!("udp dst port {port}"))
            .open("lo");
        if !is_root() {
            match opened {
                Err(CaptureError::PermissionDenied { ref iface, .. }) => {
                    assert_eq!(iface, "lo");
                    eprintln!("unprivileged: {}", opened.unwrap_err());
                    return;
                }
                other => panic!("unprivileged, expected PermissionDenied: {other:?}"),
            }
        }
        assert!(
            std::env::var_os(UNPRIVILEGED_CHILD).is_none(),
            "running as root in the unprivileged child"
        );
        let mut capture = opened.unwrap();
        assert_eq!(capture.datalink(), 1);
        assert_eq!(capture.snaplen(), 65535);
        assert_eq!(capture.iface(), "lo");
        // Nothing sent yet: neither waiting nor reading blocks.
        let started = Instant::now();
        assert!(!capture.wait(Duration::from_millis(20)).unwrap());
        assert_eq!(
            capture
                .dispatch(0, |_, _, _| panic!("no packet yet"))
                .unwrap(),
            0
        );
        assert!(started.elapsed() < Duration::from_secs(2));

        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Traffic to another port, which the kernel filter leaves out.
        let decoy = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"decoy", decoy.local_addr().unwrap())
            .unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                (0..10 + 300 * usize::from(i))
                    .map(|j| j as u8 ^ i)
                    .collect()
            })
            .collect();
        let sent_at = now_nanos();
        for payload in &payloads {
            sender.send_to(payload, ("127.0.0.1", port)).unwrap();
        }

        let mut captured: Vec<(u64, Vec<u8>, u32)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while captured.len() < payloads.len() && Instant::now() < deadline {
            if capture.wait(Duration::from_millis(100)).unwrap() {
                capture
                    .dispatch(0, |ts, data, orig_len| {
                        captured.push((ts, data.to_vec(), orig_len))
                    })
                    .unwrap();
            }
        }
        assert_eq!(captured.len(), payloads.len(), "{captured:?}");
        for ((ts, data, orig_len), payload) in captured.iter().zip(&payloads) {
            assert_eq!(data.len(), 14 + 20 + 8 + payload.len());
            assert_eq!(*orig_len as usize, data.len());
            assert_eq!(&data[12..14], &[0x08, 0x00], "IPv4 in Ethernet");
            assert_eq!(data[23], 17, "UDP");
            assert_eq!(&data[26..30], &[127, 0, 0, 1]);
            assert_eq!(&data[30..34], &[127, 0, 0, 1]);
            assert_eq!(&data[36..38], &port.to_be_bytes());
            assert_eq!(&data[42..], payload);
            let skew = ts.abs_diff(sent_at);
            assert!(skew < 5_000_000_000, "time stamp {ts} vs {sent_at}");
        }
        let stats = capture.stats().unwrap();
        // On lo the kernel counts each packet going out and coming in.
        assert!(
            stats.received >= captured.len() as u64,
            "{stats:?} for {} captured",
            captured.len()
        );
        assert_eq!(stats.dropped_kernel, 0, "{stats:?}");
        eprintln!("{capture:?}: {stats:?}");
    }

    /// Set in the copy of the test binary run as `nobody`.
    const UNPRIVILEGED_CHILD: &str = "PACKET_IPC_TEST_UNPRIVILEGED_CHILD";

    /// As root, runs [`live_capture_on_lo`] again as `nobody` (through setpriv, with no
    /// capabilities left), where it expects PermissionDenied.
    #[test]
    fn live_capture_unprivileged_is_permission_denied() {
        if !libpcap("unprivileged capture") || !is_root() {
            return; // unprivileged, live_capture_on_lo tests this itself
        }
        let setpriv = Command::new("setpriv").arg("--version").output();
        let missing = setpriv.err().map(|e| format!("setpriv: {e}"));
        if !available("unprivileged capture", "setpriv (util-linux)", missing) {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&exe)
            .args([
                "libpcap::tests::live_capture_on_lo",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(UNPRIVILEGED_CHILD, "1")
            .env("PACKET_IPC_REQUIRE_TOOLS", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(
            stderr.contains("unprivileged: permission denied"),
            "{stderr}"
        );
        eprintln!(
            "{}",
            stderr
                .lines()
                .find(|l| l.starts_with("unprivileged"))
                .unwrap_or("")
        );
    }
}
