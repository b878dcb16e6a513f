//! Shared memory that cannot shrink under a reader: sealed memfds and their mappings.
//!
//! Every piece of memory the broker shares is a memfd the daemon creates and seals
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before anyone else sees it. Nobody can
//! then truncate it, so no process that maps it can die of `SIGBUS` because another one
//! shrank the file under it; and the size a receiver finds with `fstat` is the size for
//! good. A receiver checks the seals before it maps ([`check_sealed`]): memory without
//! them is refused.
//!
//! A reader that must not write gets a read-only descriptor of the same memory
//! ([`read_only`]), which cannot be mapped writable: a subscriber cannot rewrite the
//! batches the other subscribers read.

use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// The seals every shared object carries.
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Creates a sealed memfd of `len` bytes (zero-filled; pages are allocated when touched).
pub(crate) fn create(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("memory too large"))?;
    nix::unistd::ftruncate(&fd, size)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(fd)
}

/// A read-only descriptor of the memory behind `fd` (a new open file description: it
/// cannot be mapped writable, and cannot be turned back into a writable one).
pub(crate) fn read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    let path = CStr::from_bytes_with_nul(path.as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is NUL-terminated; open returns a new descriptor or -1.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Checks that `fd` is sealed shared memory and returns its size.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other("not shared memory"));
    }
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
        return Err(io::Error::other("shared memory that is not sealed"));
    }
    usize::try_from(st.st_size).map_err(|_| io::Error::other("negative size"))
}

/// How a mapping may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// A shared mapping of a whole memfd, unmapped on drop.
///
/// The memory is shared with other processes, which may write to it at any time: the
/// broker reads what other processes write only through atomics or by copying values out
/// and checking them before use, never by trusting a reference into it to stay unchanged.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
}

// SAFETY: a Mapping is a region of shared memory owned by this value; other threads may
// read it as other processes do (all shared accesses go through atomics or raw copies).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` hands out only raw pointers and atomic views.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the whole of `fd` (`len` bytes, as [`check_sealed`] or [`create`] said).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, access: Access) -> io::Result<Mapping> {
        let size = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty memory"))?;
        let prot = match access {
            Access::Read => ProtFlags::PROT_READ,
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        };
        // SAFETY: a fresh shared mapping of `fd` at an address the kernel chooses; it
        // aliases no Rust object. The memory is sealed against shrinking, so accesses
        // within `len` cannot fault.
        let ptr = unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0)? };
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            access,
        })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// How it was mapped.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// `len` bytes at `offset` as a shared slice, if they lie within the mapping.
    ///
    /// # Safety
    ///
    /// Another process may write these bytes while the slice lives: the caller reads
    /// them as data that may change (never trusting a value read twice to be the same).
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: within the mapping (checked above), which lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows the mapping
        // once its owner is dropped.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memory_cannot_shrink_and_read_only_cannot_be_written() {
        let fd = create(c"test", 8192).unwrap();
        assert_eq!(check_sealed(fd.as_fd()).unwrap(), 8192);
        // Nobody can truncate it, not even its creator.
        assert!(nix::unistd::ftruncate(&fd, 0).is_err());
        assert!(nix::unistd::ftruncate(&fd, 1 << 20).is_err());
        let rw = Mapping::new(fd.as_fd(), 8192, Access::ReadWrite).unwrap();
        // SAFETY: a fresh private test mapping.
        unsafe { *rw.as_ptr().add(100) = 42 };
        let ro_fd = read_only(fd.as_fd()).unwrap();
        assert_eq!(check_sealed(ro_fd.as_fd()).unwrap(), 8192);
        assert!(
            Mapping::new(ro_fd.as_fd(), 8192, Access::ReadWrite).is_err(),
            "a read-only descriptor cannot be mapped writable"
        );
        let ro = Mapping::new(ro_fd.as_fd(), 8192, Access::Read).unwrap();
        // SAFETY: within the mapping.
        assert_eq!(unsafe { ro.bytes(100, 1) }.unwrap(), &[42]);
        // SAFETY: out of range is refused, not read.
        assert!(unsafe { ro.bytes(8000, 1000) }.is_none());
        assert_eq!(ro.access(), Access::Read);
    }

    #[test]
    fn unsealed_memory_is_refused() {
        let fd = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        assert!(check_sealed(fd.as_fd()).is_err());
        let file = tempfile::tempfile().unwrap();
        assert!(check_sealed(file.as_fd()).is_err());
    }
}
