//! Reader threads: page faults on the VMAs the writers are reshaping. Each fault on an
//! anonymous page goes through `lock_vma_under_rcu` (the per-VMA read lock) and falls
//! back to `mmap_lock` when a writer holds the VMA or has detached it.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use super::{Shared, ops::Op, rng::Rng};

/// Bytes copied out of a guarded page per probe: one cache line is enough to fault it.
const COPY_LEN: usize = 64;

pub fn run(shared: &Shared, sink: &OwnedFd, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng::new(seed);
    let direct = &shared.direct;
    let guarded = &shared.guarded;
    let (mut touches, mut copies, mut efaults) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // Mostly stores into the always-accessible arena; one in four probes the guarded one.
        for _ in 0..64 {
            let page = rng.below(direct.pages());
            let off = rng.below(direct.page / 64) * 64;
            let p = (direct.page_addr(page) + off) as *mut u8;
            // SAFETY: the direct arena is mapped readable and writable for the whole life
            // of the reader threads (writers only swap it between RW/RWX mappings, see
            // `arena`), and no Rust reference points into it.
            unsafe { p.write_volatile(seed as u8) };
            touches += 1;
        }
        for _ in 0..4 {
            let huge = &shared.huge;
            let p = huge.page_addr(rng.below(huge.pages())) as *mut u8;
            // SAFETY: as for the direct arena: the huge arena is only ever replaced by
            // fresh RW mappings, dropped with MADV_DONTNEED, or switched RW/RWX.
            unsafe { p.write_volatile(seed as u8) };
            touches += 1;
        }
        for _ in 0..16 {
            let page = rng.below(guarded.pages());
            let addr = guarded.page_addr(page);
            // SAFETY: pwrite only reads `COPY_LEN` bytes at `addr`; the kernel checks the
            // user range and returns EFAULT for unmapped or PROT_NONE pages. Reading never
            // disturbs whatever is mapped there.
            let r =
                unsafe { libc::pwrite(sink.as_raw_fd(), addr as *const libc::c_void, COPY_LEN, 0) };
            if r < 0 {
                efaults += 1;
            } else {
                copies += 1;
            }
        }
    }
    shared.ops.add(Op::ReaderTouch, touches);
    shared.ops.add(Op::ReaderCopy, copies);
    shared.ops.add(Op::ReaderCopyFault, efaults);
}
