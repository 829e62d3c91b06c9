//! Thin wrappers over the memory-map system calls the workload uses. They only ever act
//! on ranges the workload itself mapped (see `arena`), and report failures as
//! `io::Error` rather than panicking.

use std::io;

use libc::{c_int, c_void};

pub const RW: c_int = libc::PROT_READ | libc::PROT_WRITE;
/// A second accessible protection, so `mprotect` splits VMAs without ever making the
/// range inaccessible to the threads that store into it.
pub const RWX: c_int = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn check(r: c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Anonymous private mapping. `at` with `MAP_FIXED`/`MAP_FIXED_NOREPLACE` in `extra`
/// places it exactly; the caller owns whatever it replaces.
pub fn mmap_anon(at: usize, len: usize, prot: c_int, extra: c_int) -> io::Result<usize> {
    // SAFETY: an anonymous mapping; with MAP_FIXED the range belongs to the workload's
    // arena (callers guarantee it), so no Rust object is unmapped under anyone's feet.
    let p = unsafe {
        libc::mmap(
            at as *mut c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

pub fn munmap(at: usize, len: usize) -> io::Result<()> {
    // SAFETY: the range is workload-owned memory no Rust reference points into.
    check(unsafe { libc::munmap(at as *mut c_void, len) })
}

pub fn mprotect(at: usize, len: usize, prot: c_int) -> io::Result<()> {
    // SAFETY: as for munmap; readers only touch the arena through raw volatile accesses
    // or system calls, and the protections used keep the direct arena accessible.
    check(unsafe { libc::mprotect(at as *mut c_void, len, prot) })
}

pub fn madvise_dontneed(at: usize, len: usize) -> io::Result<()> {
    // SAFETY: dropping anonymous pages of workload-owned memory; they read back as zero.
    check(unsafe { libc::madvise(at as *mut c_void, len, libc::MADV_DONTNEED) })
}

/// Ask for transparent huge pages. Kernels without THP refuse (EINVAL); the workload
/// then simply faults small pages there.
pub fn madvise_hugepage(at: usize, len: usize) {
    // SAFETY: a hint on workload-owned memory; no contents change.
    let _ = unsafe { libc::madvise(at as *mut c_void, len, libc::MADV_HUGEPAGE) };
}

/// Move `len` bytes at `from` over `to` (replacing what is there).
pub fn mremap_fixed(from: usize, len: usize, to: usize) -> io::Result<()> {
    // SAFETY: both ranges are workload-owned.
    let p = unsafe {
        libc::mremap(
            from as *mut c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut c_void,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Grow a mapping, letting the kernel move it; returns the new address.
pub fn mremap_grow(from: usize, old_len: usize, new_len: usize) -> io::Result<usize> {
    // SAFETY: the range is a workload-owned scratch mapping.
    let p = unsafe { libc::mremap(from as *mut c_void, old_len, new_len, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

/// Minor page faults of this process so far.
pub fn minor_faults() -> u64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0 {
            ru.ru_minflt.max(0) as u64
        } else {
            0
        }
    }
}
